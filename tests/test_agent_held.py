"""A tenant the spool holds is left out of collection and delivery; the others run."""
from __future__ import annotations

import logging

import pytest

from ingress.errors import IngressError

import test_agent as ta


def held_agent(tmp_path, held):
    rec = ta.Recorder()
    agent, holder = ta.make_agent(tmp_path, rec)

    def spool(_settings):
        sp = ta.FakeSpool(rec)
        sp.held = dict(held)
        return sp

    agent._spool_factory = spool
    return agent, holder, rec


def test_a_held_tenant_is_not_collected_and_is_reported(tmp_path, caplog):
    agent, holder, _ = held_agent(tmp_path, {"globex": "keys/globex.key: key file is missing"})
    with caplog.at_level(logging.ERROR, logger="ingress.agent"):
        agent.start()
    try:
        assert agent.held_tenants == {"globex": "keys/globex.key: key file is missing"}
        assert {t.id for b in holder["s"].bindings.values() for t in b.tenants} == {"acme"}
        holder["s"].run_pass()
        agent.flush()
        assert {b[0] for b in agent.spool.batches} == {"acme"}
        held = [r for r in caplog.records if r.getMessage().startswith("tenant held")]
        assert len(held) == 1 and held[0].fields == {"tenant": "globex",
                                                     "reason": "keys/globex.key: key file is missing"}
    finally:
        agent.stop()


def test_every_tenant_held_is_a_start_up_error_naming_each(tmp_path):
    agent, _, rec = held_agent(tmp_path, {"acme": "r1", "globex": "r2"})
    with pytest.raises(IngressError, match=r"^every tenant is held, nothing to run: tenant 'acme': r1; "
                                           r"tenant 'globex': r2$"):
        agent.start()
    assert "collectors start" not in rec.events and rec.events[-1] == "spool close"
