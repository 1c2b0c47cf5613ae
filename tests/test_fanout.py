"""ingress.fanout: one collector pass -> per-tenant samples, checked against a per-sample oracle."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from ingress.collect.base import COUNTER, GAUGE, SeriesTable
from ingress.config import loads
from ingress.fanout import FanOut
from ingress.tenants import TenantSet


class FakeRegistry:
    """The SeriesRegistry interface, as dictionaries, with a per-tenant cap."""

    def __init__(self, n: int, max_series: list[int]) -> None:
        self.ids = [dict() for _ in range(n)]
        self.keys: list[dict[int, tuple]] = [dict() for _ in range(n)]
        self.free: list[list[int]] = [[] for _ in range(n)]
        self.max_series = max_series
        self.refusals = [0] * n
        self.interns = 0

    def intern(self, t, name, tags):
        self.interns += 1
        key = (name, tags)
        if key in self.ids[t]:
            return self.ids[t][key]
        if len(self.ids[t]) >= self.max_series[t]:
            self.refusals[t] += 1
            return -1
        sid = self.free[t].pop() if self.free[t] else len(self.keys[t])
        self.ids[t][key] = sid
        self.keys[t][sid] = key
        return sid

    def key(self, t, sid):
        return self.keys[t][sid]

    def evict(self, t, sids):
        for s in sids:
            key = self.keys[t].pop(s)
            del self.ids[t][key]
            self.free[t].append(s)
        return {t: np.array(sids, np.uint32)}


def tenants_from(toml_tenants: str):
    text = toml_tenants + '\n[[outputs]]\ntype = "file"\n'
    return TenantSet(loads(text).tenants)


@pytest.fixture
def rng():
    seed = int(os.environ.get("INGRESS_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed={seed} (INGRESS_TEST_SEED={seed} reproduces)")
    return random.Random(seed)


TENANTS = """
[[tenants]]
id = "all"
tags = { team = "infra", cpu = "tenant-value" }

[[tenants]]
id = "cpu-only"
include = ["cpu.*"]
exclude = ["cpu.guest*"]

[[tenants]]
id = "no-cpu"
exclude = ["cpu.*"]
max_series = 5

[[tenants]]
id = "off"
enabled = false
"""


def oracle(tenant, registry, table, local_ids, values):
    """Per sample, the obvious way: what the tenant should receive, as (name, tags, value)."""
    out = []
    for lid, v in zip(local_ids.tolist(), values.tolist()):
        name, tags = table.keys[lid]
        if not tenant.rules.match(name):
            continue
        merged = dict(tenant.tags)
        merged.update(tags)
        key = (name, tuple(sorted(merged.items())))
        if key in registry.ids[tenant.index]:
            out.append((key[0], key[1], v, int(table.kinds[lid])))
    return out


def received(registry, share, kinds=False):
    t = share.tenant.index
    rows = zip(share.series.tolist(), share.values.tolist(), share.kinds.tolist())
    return [(*registry.key(t, s), v) + ((k,) if kinds else ()) for s, v, k in rows]


def make_table(rng, n):
    table = SeriesTable()
    names = ["cpu.user", "cpu.guest", "cpu.system", "memory.used", "memory.free", "disk.read"]
    for i in range(n):
        name = rng.choice(names)
        table.intern(name, {"cpu": str(i), "host": "h"}, COUNTER if name.startswith("cpu") else GAUGE)
    return table


def test_matches_per_sample_oracle_over_random_passes(rng):
    ts = tenants_from(TENANTS)
    reg = FakeRegistry(len(ts.enabled), [t.settings.max_series for t in ts.enabled])
    fan = FanOut(reg)
    table = make_table(rng, 40)
    for _ in range(20):
        k = rng.randrange(0, 60)
        ids = np.array([rng.randrange(len(table)) for _ in range(k)], np.uint32)
        vals = np.array([rng.random() for _ in range(k)])
        got = {d.tenant.id: d for d in fan.route("cpu", table, ids, vals, 123, ts.enabled)}
        for t in ts.enabled:
            want = oracle(t, reg, table, ids, vals)
            assert (received(reg, got[t.id], kinds=True) if t.id in got else []) == want
            if t.id in got:
                assert got[t.id].ts == 123 and got[t.id].series.dtype == np.uint32


def test_excluded_tenant_never_receives_and_tags_are_added():
    ts = tenants_from(TENANTS)
    reg = FakeRegistry(3, [100, 100, 100])
    fan = FanOut(reg)
    table = SeriesTable()
    a = table.intern("cpu.user", {"cpu": "0"}, COUNTER)
    b = table.intern("cpu.guest", {"cpu": "0"}, COUNTER)
    c = table.intern("memory.used", {}, GAUGE)
    ids = np.array([a, b, c, a], np.uint32)
    got = {d.tenant.id: received(reg, d)
           for d in fan.route("x", table, ids, np.array([1.0, 2.0, 3.0, 4.0]), 0, ts.enabled)}
    assert got["all"] == [
        ("cpu.user", (("cpu", "0"), ("team", "infra")), 1.0),  # the series' own cpu tag wins
        ("cpu.guest", (("cpu", "0"), ("team", "infra")), 2.0),
        ("memory.used", (("cpu", "tenant-value"), ("team", "infra")), 3.0),
        ("cpu.user", (("cpu", "0"), ("team", "infra")), 4.0),
    ]
    assert got["cpu-only"] == [("cpu.user", (("cpu", "0"),), 1.0), ("cpu.user", (("cpu", "0"),), 4.0)]
    assert got["no-cpu"] == [("memory.used", (), 3.0)]
    assert "off" not in got  # disabled tenants are not in ts.enabled at all
    assert fan.counts["cpu-only"].excluded == 2 and fan.counts["no-cpu"].excluded == 3


def test_rules_and_interning_run_once_per_new_series():
    ts = tenants_from(TENANTS)
    reg = FakeRegistry(3, [100, 100, 100])
    fan = FanOut(reg)
    table = SeriesTable()
    ids = np.array([table.intern("cpu.user", {"cpu": str(i)}) for i in range(10)], np.uint32)
    vals = np.arange(10, dtype=np.float64)
    fan.route("x", table, ids, vals, 0, ts.enabled)
    decided, interned = fan.new_series, reg.interns
    assert decided == 30  # 10 series x 3 tenants
    for _ in range(5):
        out = fan.route("x", table, ids, vals, 0, ts.enabled)
        assert [len(d.series) for d in out] == [10, 10]  # "no-cpu" excludes all of them
    assert (fan.new_series, reg.interns) == (decided, interned)
    # one new series: one more decision per tenant, not a re-scan
    ids2 = np.append(ids, table.intern("memory.used", {}))
    fan.route("x", table, ids2, np.append(vals, 1.0), 0, ts.enabled)
    assert fan.new_series == decided + 3


def test_cardinality_refusals_are_excluded_and_counted():
    ts = tenants_from(TENANTS)
    reg = FakeRegistry(3, [100, 100, 5])  # "no-cpu" capped at 5 series
    fan = FanOut(reg)
    table = SeriesTable()
    ids = np.array([table.intern("memory.used", {"i": str(i)}) for i in range(8)], np.uint32)
    for _ in range(2):
        out = {d.tenant.id: d for d in fan.route("m", table, ids, np.ones(8), 0, ts.enabled)}
    assert len(out["no-cpu"].series) == 5 and len(set(out["no-cpu"].series.tolist())) == 5
    assert fan.counts["no-cpu"].refused == 6  # 3 samples refused in each of 2 passes
    assert reg.refusals[2] == 3  # the registry was asked once per refused series
    assert len(out["all"].series) == 8


def test_evictions_free_room_and_remap():
    ts = tenants_from(TENANTS)
    reg = FakeRegistry(3, [100, 100, 2])
    fan = FanOut(reg)
    table = SeriesTable()
    ids = np.array([table.intern("memory.used", {"i": str(i)}) for i in range(3)], np.uint32)
    first = {d.tenant.id: received(reg, d) for d in fan.route("m", table, ids, np.ones(3), 0, ts.enabled)}
    assert [k[1] for k in first["no-cpu"]] == [(("i", "0"),), (("i", "1"),)]  # the third was refused
    # the registry evicts series i=0 of tenant "no-cpu" (idle); the fan-out must forget it
    evicted = reg.evict(2, [reg.ids[2][("memory.used", (("i", "0"),))]])
    fan.invalidate(evicted)
    # only i=1 and i=2 are still emitted: i=2 is retried and now fits
    out = {d.tenant.id: received(reg, d) for d in fan.route("m", table, ids[1:], np.ones(2), 0, ts.enabled)}
    assert [k[1] for k in out["no-cpu"]] == [(("i", "1"),), (("i", "2"),)]


def test_reused_local_id_maps_to_the_new_series():
    ts = tenants_from(TENANTS)
    reg = FakeRegistry(3, [100, 100, 100])
    fan = FanOut(reg)
    table = SeriesTable()
    old = table.intern("cpu.user", {"pid": "1"})
    keep = table.intern("memory.used", {})
    fan.route("p", table, np.array([old, keep], np.uint32), np.array([1.0, 2.0]), 0, ts.enabled)
    table.retire(old)
    new = table.intern("memory.free", {"pid": "2"})
    assert new == old  # the table reuses the id: the fan-out must notice
    out = {d.tenant.id: received(reg, d)
           for d in fan.route("p", table, np.array([new, keep], np.uint32), np.array([3.0, 4.0]), 0, ts.enabled)}
    assert out["all"][0][:2] == ("memory.free", (("cpu", "tenant-value"), ("pid", "2"), ("team", "infra")))
    assert out["no-cpu"] == [("memory.free", (("pid", "2"),), 3.0), ("memory.used", (), 4.0)]
    assert "cpu-only" not in out


def test_empty_pass_and_unknown_routes():
    ts = tenants_from(TENANTS)
    fan = FanOut(FakeRegistry(3, [1, 1, 1]))
    assert fan.route("x", SeriesTable(), np.array([], np.uint32), np.array([]), 0, ts.enabled) == []
    fan.invalidate({0: np.array([1], np.uint32)})  # nothing routed yet: no error
    fan.forget("x")
