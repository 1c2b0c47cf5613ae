"""/readyz and the memory guard: 503 ``memory_shedding`` while a step that holds back work is
engaged (pause_collectors, cap_queues, refuse_series); the light steps (flush, shrink_rings),
which the allocator's leftovers can keep engaged after a flood, leave the agent ready."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingress import config
from ingress.agent import Agent
from ingress.control.status import AgentView
from ingress.memguard import LIGHT_STEPS, STEPS


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ready")
    agent = Agent(config.loads(f"""
[agent]
data_dir = "{tmp / 'data'}"
interval = "1s"
[agent.limits]
memory_mb = 65536  # in process: the memory guard would read the test runner's RSS
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["cpu"]
[[outputs]]
type = "file"
"""))
    agent.start()
    agent.run(duration=1.2)  # every collector has run once: ready
    try:
        yield AgentView(agent)
    finally:
        agent.stop()


def test_light_steps_are_what_the_docs_name():
    assert LIGHT_STEPS == {"flush", "shrink_rings"}
    assert LIGHT_STEPS <= {name for name, _ in STEPS}


@given(active=st.lists(st.sampled_from([name for name, _ in STEPS]), unique=True))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_memory_shedding_is_a_reason_exactly_while_work_is_held_back(view, active):
    view.memory_shedding = lambda: {"level": len(active), "active": active, "engaged": {}, "rss": 1, "cap": 2}
    try:
        reasons = [r for r in view.readiness() if r["reason"] == "memory_shedding"]
    finally:
        del view.memory_shedding
    heavy = [s for s in active if s not in LIGHT_STEPS]
    assert bool(reasons) == bool(heavy), (active, reasons)
    if reasons:
        assert reasons[0]["steps"] == active
    assert not [r for r in view.readiness() if r["reason"] == "memory_shedding"]  # the real guard: nothing held
