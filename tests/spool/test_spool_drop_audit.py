"""Data the spool drops by quota or retention reaches the audit log through its on_drop hook."""
import json
import os

from ingress.security import audit
from ingress.spool import Spool, TenantPolicy

NS = 1_000_000_000


def test_quota_and_retention_drops_are_reported_and_audited(tmp_path):
    calls = []
    log = audit.open_default(tmp_path, 1 << 20, 2)
    now = [1_000_000 * NS]

    def hook(*a):
        calls.append(a)
        audit.spool_dropped(*a)

    try:
        sp = Spool(tmp_path, {"acme": TenantPolicy(max_bytes=64 << 10, retention_s=60)}, ["web"],
                   segment_bytes=8 << 10, maintain_every_s=None, clock=lambda: now[0], on_drop=hook)
        try:
            for _ in range(40):  # ~80 KiB into a 64 KiB quota: the oldest segments go
                sp.append("acme", os.urandom(16), os.urandom(2000), 5, now[0])
            quota = [c for c in calls if "quota" in c[1]]
            assert quota and all(c[0] == "acme" and c[2] >= 1 and c[3] == 5 * c[2] for c in quota)
            now[0] += 3600 * NS
            sp.maintain()
            assert any("retention" in c[1] for c in calls)
            st = sp.stats()["acme"]
            assert st["dropped_batches"] == sum(c[2] for c in calls)
        finally:
            sp.close()
    finally:
        audit.close_default()
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    drops = [e for e in lines if e["action"] == "spool_dropped"]
    assert len(drops) == len(calls) and all(e["actor"] == "agent" and e["tenant"] == "acme" for e in drops)
    assert sum(e["batches"] for e in drops) == st["dropped_batches"]
    assert {("quota" in e["reason"], "retention" in e["reason"]) for e in drops} == {(True, False), (False, True)}


def test_a_failing_hook_does_not_stop_the_spool(tmp_path):
    def boom(*a):
        raise RuntimeError("reporting failed")

    sp = Spool(tmp_path, {"acme": TenantPolicy(max_bytes=64 << 10)}, ["web"], segment_bytes=8 << 10,
               maintain_every_s=None, on_drop=boom)
    try:
        for _ in range(40):
            sp.append("acme", os.urandom(16), os.urandom(2000), 5, 0 + 1)
        assert sp.stats()["acme"]["dropped_batches"] > 0
    finally:
        sp.close()
