"""ingress.reload: what a reload sees as changed, and that a refused reload changes nothing.

The agent here is the real one, in process, with real collectors, spool and file
output under tmp_path; tests/integration/test_reload.py drives `ingress run` by SIGHUP.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.agent import Agent
from ingress.config import load, loads
from ingress.reload import ReloadError, diff

BASE = """
[agent]
data_dir = "{data}"
interval = "1s"
[agent.limits]
memory_mb = 65536  # in process: the memory guard would read the test runner's RSS
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["memory"]
[[tenants]]
id = "globex"
collectors = ["memory", "cpu"]
[[outputs]]
type = "file"
"""


def cfg_text(tmp: Path, extra: str = "", **swap: str) -> str:
    text = BASE.format(data=tmp / "data") + extra
    for a, b in swap.items():
        text = text.replace(a.replace("_", " "), b)
    return text


def test_diff_names_what_changed():
    old = loads(BASE.format(data="/d"))
    new = loads(BASE.format(data="/d").replace('collectors = ["memory"]\n', 'collectors = ["memory"]\n'
                                               'include = ["memory.*"]\n[tenants.spool]\nmax_mb = 9\n')
                + '[[tenants]]\nid = "initech"\ncollectors = ["cpu"]\n[[outputs]]\ntype = "file"\nname = "f2"\n'
                  'tenants = ["initech"]\n')
    d = diff(old, new)
    assert d["tenants"] == {"added": ["initech"], "removed": [], "changed": {"acme": ["include", "spool"]}}
    assert d["outputs"] == {"added": ["f2"], "removed": [], "changed": {}}
    assert d["collection"] and d["restart_needed"] == [] and d["agent"] == []
    # credentials and spool policy alone leave the collection side as it is
    only_quota = loads(BASE.format(data="/d").replace('id = "globex"\n', 'id = "globex"\napi_key_env = "K"\n'))
    assert diff(old, only_quota)["collection"] is False
    # keys only a restart applies are named, dotted as in the file
    moved = loads(BASE.format(data="/elsewhere").replace('interval = "1s"', 'interval = "2s"')
                  .replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"'))
    d = diff(old, moved)
    assert d["restart_needed"] == ["agent.data_dir", "control.listen"] and d["agent"] == ["agent.interval"]


@pytest.fixture
def agent(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(cfg_text(tmp_path))
    a = Agent(load(cfg))
    a.start()
    yield a, cfg
    a.stop()


def test_reload_switches_tenants_and_keeps_what_did_not_change(agent, tmp_path):
    a, cfg = agent
    a.flush()
    memory = a.pipeline.bindings["memory"].collector
    deliveries = list(a.deliveries)
    cfg.write_text(cfg_text(tmp_path) + '[[tenants]]\nid = "initech"\ncollectors = ["cpu"]\n'
                   '[tenants.spool]\nmax_mb = 5\n')
    r = a.reload()
    assert r["tenants"]["added"] == ["initech"] and r["collection"]
    assert a.deliveries == deliveries  # the file output was not restarted
    assert "initech" in a.spool.tenants and ("initech", "file-0") in a.deliveries[0].pairs()
    assert a.pipeline.bindings["memory"].collector is memory  # same options and tenants: kept
    # only a tenant's quota: no collection switch, the spool's policy follows
    pipeline = a.pipeline
    cfg.write_text(cfg.read_text().replace("max_mb = 5", "max_mb = 6"))
    r = a.reload()
    assert r["tenants"]["changed"] == {"initech": ["spool"]} and not r["collection"] and r["pause_ms"] == 0
    assert a.pipeline is pipeline and a.spool._tenants["initech"].policy.max_bytes == 6 << 20


def _mutations():
    junk = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
    return st.one_of(
        st.tuples(st.just("append"), junk),
        st.tuples(st.just("truncate"), st.integers(0, len(BASE) + 60)),
        st.tuples(st.just("value"), junk),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=_mutations())
def test_a_refused_reload_changes_nothing_and_says_one_line(agent, tmp_path, m):
    a, cfg = agent
    good = cfg_text(tmp_path)
    kind, arg = m
    if kind == "append":
        text = good + "\n" + arg + "\n"
    elif kind == "truncate":
        text = good[:arg]
    else:
        text = good.replace('collectors = ["memory", "cpu"]', f"collectors = {arg}")
    cfg.write_text(text)
    before = (a.settings, a.pipeline, a.scheduler, list(a.deliveries), list(a.outputs), a.spool)
    try:
        a.reload()
    except ReloadError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg
        assert (a.settings, a.pipeline, a.scheduler, list(a.deliveries), list(a.outputs), a.spool) == before
    finally:
        cfg.write_text(good)
        a.reload()  # back to the start for the next example (a no-op when nothing changed)
    assert a.scheduler is not None and a.spool is not None and a.deliveries
    assert os.path.isdir(tmp_path / "data" / "spool" / "acme")


def test_a_held_tenant_fixed_meanwhile_runs_after_a_reload(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(cfg_text(tmp_path))
    blocker = tmp_path / "data" / "spool" / "globex" / "counters.json"
    blocker.mkdir(parents=True)  # a directory where the spool keeps a file: globex is held
    a = Agent(load(cfg))
    a.start()
    try:
        served = lambda: {t.id for b in a.pipeline.bindings.values() for t in b.tenants}  # noqa: E731
        assert "globex" in a.held_tenants and served() == {"acme"}
        blocker.rmdir()
        r = a.reload()  # the same file: only the held tenant is tried again
        assert r["tenants"] == {"added": [], "removed": [], "changed": {}} and r["collection"]
        assert a.held_tenants == {} and "globex" in a.spool.tenants
        assert served() == {"acme", "globex"}
        assert ("globex", "file-0") in a.deliveries[0].pairs()
    finally:
        a.stop()


def test_a_reload_to_a_refused_destination_is_refused_and_audited(agent, tmp_path):
    import json

    a, cfg = agent
    good = cfg_text(tmp_path)
    cfg.write_text(good.replace("[agent]\n", '[agent]\nallow_destinations = ["*.corp:9092"]\n', 1)
                   + '[[outputs]]\ntype = "kafka"\nbrokers = "10.9.9.9:9092"\ntenants = ["acme"]\n')
    before = (a.settings, list(a.outputs))
    try:
        with pytest.raises(ReloadError, match=r"outputs\[1\]\.brokers: output 'kafka-1': destination "
                                              r"'10\.9\.9\.9:9092' is not in agent\.allow_destinations"):
            a.reload()
        assert (a.settings, list(a.outputs)) == before
    finally:
        cfg.write_text(good)
    events = [json.loads(x) for x in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    refused = [e for e in events if e["action"] == "security.destination_refused"]
    assert refused and refused[-1]["destination"] == "10.9.9.9:9092"
