"""Fan-out steady state: vectorised id maps vs. a per-sample Python baseline, same run.

Question: once every series is known, what does one collector pass cost to fan
out to several tenants? The baseline does what a straightforward agent does per
sample: look the series up in a dict per tenant and append to lists.
"""
from __future__ import annotations

import numpy as np

from benchmarks.conftest import record_ratio
from ingress.collect.base import COUNTER, SeriesTable
from ingress.config import loads
from ingress.fanout import FanOut
from ingress.tenants import TenantSet


class DictRegistry:
    def __init__(self, n):
        self.ids = [dict() for _ in range(n)]

    def intern(self, t, name, tags):
        return self.ids[t].setdefault((name, tags), len(self.ids[t]))


def setup(n_series: int, n_tenants: int):
    toml = "".join(f'[[tenants]]\nid = "t{i}"\ntags = {{ team = "x{i}" }}\n'
                   + ('exclude = ["proc.cpu*"]\n' if i % 2 else "") for i in range(n_tenants))
    tenants = TenantSet(loads(toml + '[[outputs]]\ntype = "file"\n').tenants).enabled
    table = SeriesTable()
    names = ("proc.cpu", "proc.mem", "proc.io")
    ids = np.array([table.intern(names[i % 3], {"pid": str(i)}, COUNTER) for i in range(n_series)], np.uint32)
    values = np.random.default_rng(1).random(n_series)
    fan = FanOut(DictRegistry(n_tenants))
    fan.route("c", table, ids, values, 0, tenants)  # warm: every series decided once
    # The baseline's per-tenant dict, built the same way (not timed).
    maps = []
    for t in tenants:
        m = {}
        for lid in ids.tolist():
            name, tags = table.keys[lid]
            if t.rules.match(name):
                m[lid] = fan.registry.intern(t.index, name, t.merge_tags(tags))
        maps.append(m)
    return fan, table, ids, values, tenants, maps


def per_sample(ids, values, tenants, maps):
    out = []
    for t, m in zip(tenants, maps):
        s, v = [], []
        for lid, x in zip(ids.tolist(), values.tolist()):
            sid = m.get(lid)
            if sid is not None:
                s.append(sid)
                v.append(x)
        out.append((t, np.array(s, np.uint32), np.array(v)))
    return out


def test_fanout_steady_state_vs_per_sample(bench, bench_short):
    n = 5000 if bench_short else 50000
    fan, table, ids, values, tenants, maps = setup(n, 4)
    vec = lambda: fan.route("c", table, ids, values, 0, tenants)
    got, t_vec = bench(vec)
    want = per_sample(ids, values, tenants, maps)
    for d, (t, s, v) in zip(got, want):  # same answer before comparing speed
        assert d.tenant is t and np.array_equal(d.series, s) and np.array_equal(d.values, v)
    import time
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        per_sample(ids, values, tenants, maps)
    t_py = (time.perf_counter() - t0) / reps
    record_ratio(f"fanout {n} samples x 4 tenants: per-sample Python / vectorised", t_py / t_vec, 5.0)
