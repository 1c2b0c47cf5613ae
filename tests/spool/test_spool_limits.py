"""Per-tenant quota and retention: only the offending tenant's oldest segments go."""
from __future__ import annotations

import time

import pytest
from spool_helpers import T0, bid, fill, ids, payload

from ingress.spool import SpoolFull, TenantPolicy


def test_quota_drops_only_that_tenants_oldest_segments(open_spool, data_dir):
    policies = {"acme": TenantPolicy(max_bytes=16384), "beta": TenantPolicy(max_bytes=1 << 20)}
    sp = open_spool(tenants=policies)
    fill(sp, "beta", 50, start=1000)
    fill(sp, "acme", 200, samples=3)  # 256 bytes each: three times the quota
    st = sp.stats()
    a, b = st["acme"], st["beta"]
    assert a["bytes"] <= 16384
    assert sum(p.stat().st_size for p in (data_dir / "spool" / "acme").glob("*.seg")) == a["bytes"]
    kept = ids(sp.pending("acme", "out", limit=1000))
    assert kept == list(range(200 - len(kept), 200))  # a suffix: the oldest went first
    assert a["dropped_batches"] == 200 - len(kept) > 0
    assert a["dropped_samples"] == 3 * a["dropped_batches"]
    assert b["dropped_batches"] == 0
    assert ids(sp.pending("beta", "out", limit=1000)) == list(range(1000, 1050))
    sp.close()
    sp2 = open_spool(tenants=policies)
    assert sp2.stats()["acme"]["dropped_batches"] == a["dropped_batches"]  # persisted
    assert ids(sp2.pending("acme", "out", limit=1000)) == kept


def test_delivered_batches_are_not_counted_as_dropped(open_spool):
    sp = open_spool(tenants={"acme": TenantPolicy(max_bytes=16384)})
    refs = fill(sp, "acme", 15)  # exactly the first 4 KiB segment
    assert {r.segment for r in refs} == {refs[0].segment}
    for r in refs[:5]:
        sp.ack("acme", "out", r)
    fill(sp, "acme", 49, start=15)  # pushes segment 1 out
    st = sp.stats()["acme"]
    assert ids(sp.pending("acme", "out", limit=1000)) == list(range(15, 64))
    assert st["dropped_batches"] == 10  # 15 in the segment, 5 of them already delivered


def test_a_batch_larger_than_the_quota_is_refused_by_name(open_spool):
    sp = open_spool(tenants={"acme": TenantPolicy(max_bytes=4096)})
    fill(sp, "acme", 3)
    with pytest.raises(SpoolFull, match=r"tenant 'acme': batch 0+63 needs 5112 bytes, more than the "
                                         r"tenant's whole spool quota of 4096"):
        sp.append("acme", bid(99), payload(99, 5000), 1, T0)
    assert ids(sp.pending("acme", "out")) == [0, 1, 2]  # nothing else was touched


def test_retention_by_first_timestamp(open_spool, clock):
    policies = {"acme": TenantPolicy(retention_s=60), "beta": TenantPolicy(retention_s=3600)}
    sp = open_spool(tenants=policies)
    for i in range(3):
        sp.append("acme", bid(i), payload(i), 2, clock.now)
    sp.append("beta", bid(100), payload(100), 2, clock.now)
    clock.advance(10)  # older than 60/8 s: the next append rotates
    for i in range(3, 6):
        sp.append("acme", bid(i), payload(i), 2, clock.now)
    clock.advance(55)
    sp.maintain()
    assert ids(sp.pending("acme", "out")) == [3, 4, 5]
    st = sp.stats()
    assert st["acme"]["dropped_batches"] == 3 and st["acme"]["dropped_samples"] == 6
    assert st["beta"]["dropped_batches"] == 0 and ids(sp.pending("beta", "out")) == [100]
    clock.advance(60)  # now the active segment has expired too
    sp.maintain()
    assert sp.pending("acme", "out") == []
    assert sp.stats()["acme"]["segments"] == 0
    assert sp.stats()["acme"]["dropped_batches"] == 6
    sp.append("acme", bid(7), payload(7), 2, clock.now)
    assert ids(sp.pending("acme", "out")) == [7]


def test_whole_segments_expire_by_their_newest_first_timestamp(open_spool, clock):
    sp = open_spool(tenants={"acme": TenantPolicy(retention_s=60)})
    sp.append("acme", bid(1), payload(1), 1, clock.now)
    sp.append("acme", bid(2), payload(2), 1, clock.now - 120 * 10**9)  # late, already too old
    clock.advance(1)
    sp.maintain()
    assert ids(sp.pending("acme", "out")) == [1, 2]  # its segment holds a fresh record
    clock.advance(60)
    sp.maintain()
    assert sp.pending("acme", "out") == []
    sp.append("acme", bid(3), payload(3), 1, clock.now - 120 * 10**9)
    sp.append("acme", bid(4), payload(4), 1, clock.now)  # the old one's segment goes first
    assert ids(sp.pending("acme", "out")) == [4]
    assert sp.stats()["acme"]["dropped_batches"] == 3


def test_retention_applies_at_open(open_spool, clock):
    sp = open_spool(tenants={"acme": TenantPolicy(retention_s=60)})
    fill(sp, "acme", 3, ts=clock.now)
    sp.close()
    clock.advance(3600)
    sp2 = open_spool(tenants={"acme": TenantPolicy(retention_s=60)})
    assert sp2.pending("acme", "out") == []
    assert sp2.stats()["acme"]["dropped_batches"] == 3


def test_the_background_thread_applies_retention_without_appends(open_spool, clock):
    sp = open_spool(tenants={"acme": TenantPolicy(retention_s=60)}, maintain_every_s=0.01)
    fill(sp, "acme", 2, ts=clock.now)
    clock.advance(120)
    deadline = time.monotonic() + 30
    while sp.stats()["acme"]["segments"] and time.monotonic() < deadline:
        time.sleep(0.01)
    st = sp.stats()["acme"]
    assert st["segments"] == 0 and st["dropped_batches"] == 2
