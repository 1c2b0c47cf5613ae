"""ingress.agent: start/stop order, nothing accepted is lost, batching, collector planning.

The buffer, spool, outputs and delivery are small fakes of their documented
interfaces here (their own suites test them); tests/test_cli.py runs the real
thing end to end.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from ingress.agent import Agent
from ingress.collect.plan import Binding, plan_collectors
from ingress.outputs.jsonfmt import sample_json
from ingress.collect.base import COUNTER, GAUGE, Columns, SeriesTable
from ingress.config import loads
from ingress.errors import IngressError, RetryableError
from ingress.tenants import TenantCheckError, TenantSet


# --------------------------------------------------------------------------- fakes

class FakeRegistry:
    def __init__(self, n, cap=1000):
        self.ids = [dict() for _ in range(n)]
        self.keys = [dict() for _ in range(n)]
        self.cap = cap
        self.epoch = 0
        self.quarantine: list[tuple[int, int, list]] = []
        self.released_upto: list = []
        self.touched = 0

    def intern(self, t, name, tags):
        k = (name, tags)
        if k in self.ids[t]:
            return self.ids[t][k]
        if len(self.ids[t]) >= self.cap:
            return -1
        sid = len(self.keys[t])
        self.ids[t][k], self.keys[t][sid] = sid, k
        return sid

    def key(self, t, sid):
        return self.keys[t][sid]

    def touch(self, t, sids, now_ns):
        self.touched += len(sids)

    def count(self, t):
        return len(self.ids[t])

    def evict(self, now_ns, ttl_s=None):
        self.epoch += 1
        return {}

    def release(self, t=None, upto=None):
        self.released_upto.append(upto)
        return 0

    def dictionary(self, t, sids):
        uniq = sorted(set(sids.tolist()))
        pos = {s: i for i, s in enumerate(uniq)}
        series = [(self.keys[t][s][0], dict(self.keys[t][s][1])) for s in uniq]
        return series, np.array([pos[s] for s in sids.tolist()], np.uint32)


class FakeRings:
    def __init__(self, n):
        self.rings = [[] for _ in range(n)]

    def push(self, t, series, ts, values, kinds):
        self.rings[t].extend(zip(series.tolist(), [ts] * len(series), values.tolist()))
        return 0

    def size(self, t):
        return len(self.rings[t])

    def drain(self, t, s, ts, v, k):
        n = min(len(s), len(self.rings[t]))
        for i, (a, b, c) in enumerate(self.rings[t][:n]):
            s[i], ts[i], v[i] = a, b, c
        del self.rings[t][:n]
        return n


def fake_encode(tenant, host, series, index, ts, values, batch_id):
    rows = [(series[i][0], series[i][1], int(t), float(v)) for i, t, v in zip(index.tolist(), ts.tolist(), values.tolist())]
    return json.dumps({"tenant": tenant, "host": host, "rows": rows}).encode()


class FakeEncoder:
    """A stages.Encoder writing JSON rows from the registry's plain dictionary (readable in asserts)."""

    def __init__(self, registry, host):
        self.registry, self.host = registry, host

    def encode(self, tenant, sids, ts, values, batch_id):
        series, index = self.registry.dictionary(tenant.index, sids)
        return fake_encode(tenant.id, self.host, series, index, ts, values, batch_id)


class FakeCollector:
    def __init__(self, name, series, events=None):
        self.name = name
        self.table = SeriesTable()
        self.ids = np.array([self.table.intern(n, tags, k) for n, tags, k in series], np.uint32)
        self.passes = 0
        self.events = events

    def collect(self, now_ns):
        self.passes += 1
        return Columns(self.ids.copy(), np.arange(len(self.ids), dtype=np.float64) + self.passes, now_ns)


class Recorder:
    def __init__(self):
        self.events: list[str] = []

    def __call__(self, e):
        self.events.append(e)


class FakeSpool:
    def __init__(self, rec):
        rec("spool open")
        self.rec = rec
        self.batches = []

    def append(self, tenant, batch_id, payload, n, first_ts):
        self.rec("spool append")
        self.batches.append((tenant, batch_id, json.loads(payload), n, first_ts))

    def close(self):
        self.rec("spool close")


class FakeOutput:
    type = "file"

    def __init__(self, name, rec, fail=None):
        self.name, self.rec, self.fail = name, rec, fail

    def serves(self, tenant):
        return True

    def start(self):
        self.rec(f"output start {self.name}")
        if self.fail:
            raise self.fail

    def flush(self, timeout):
        self.rec(f"output flush {self.name}")
        return 0

    def close(self):
        self.rec(f"output close {self.name}")


class FakeDelivery:
    def __init__(self, out, rec):
        self.out, self.rec, self.notified = out, rec, []

    def start(self):
        self.rec(f"delivery start {self.out.name}")

    def notify(self, tenant=None):
        self.notified.append(tenant)

    def stop(self, timeout=10.0):
        self.rec(f"delivery stop {self.out.name}")
        return 0


class FakeScheduler:
    def __init__(self, rec, bindings, on_columns):
        self.rec, self.bindings, self.on_columns = rec, bindings, on_columns

    def start(self):
        self.rec("collectors start")

    def stop(self, timeout=10.0):
        self.rec("collectors stop")
        return True

    def run_pass(self, now_ns=1_000):
        for key, b in self.bindings.items():
            self.on_columns(key, b.collector.collect(now_ns), tuple(t.id for t in b.tenants))


CONFIG = """
[agent]
data_dir = "{data}"
hostname = "h1"
[agent.batch]
max_samples = {max_samples}
[agent.limits]
memory_mb = 65536  # in process: the memory guard would read the test runner's RSS
[control]
listen = "127.0.0.1:0"

[[tenants]]
id = "acme"
tags = {{ team = "infra" }}

[[tenants]]
id = "globex"
exclude = ["memory.*"]

[[outputs]]
type = "file"
"""

SERIES = [("cpu.time", {"cpu": "0", "mode": "user"}, COUNTER), ("cpu.time", {"cpu": "0", "mode": "system"}, COUNTER),
          ("memory.used", {}, GAUGE)]


def make_agent(tmp_path, rec, max_samples=50000, fail=None):
    s = loads(CONFIG.format(data=tmp_path / "data", max_samples=max_samples))
    ts = TenantSet(s.tenants)
    bindings = {"cpu": Binding("cpu", "cpu", {}, ts.enabled, FakeCollector("cpu", SERIES[:2])),
                "memory": Binding("memory", "memory", {}, ts.enabled, FakeCollector("memory", SERIES[2:]))}
    holder = {}

    def sched(settings, b, on_columns):
        holder["s"] = FakeScheduler(rec, b, on_columns)
        return holder["s"]

    agent = Agent(s, bindings=bindings, outputs=[FakeOutput("file-0", rec, fail)],
                  scheduler_factory=sched, spool_factory=lambda _: FakeSpool(rec),
                  delivery_factory=lambda o: FakeDelivery(o, rec),
                  registry=(reg := FakeRegistry(2)), rings=FakeRings(2),
                  encoder=FakeEncoder(reg, s.agent.hostname))
    return agent, holder


# --------------------------------------------------------------------------- lifecycle

def test_start_downstream_first_stop_upstream_first_and_nothing_is_lost(tmp_path):
    rec = Recorder()
    agent, holder = make_agent(tmp_path, rec)
    agent.start()
    assert rec.events == ["spool open", "output start file-0", "delivery start file-0", "collectors start"]
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    holder["s"].run_pass()
    holder["s"].run_pass()
    rec.events.clear()
    spool = agent.spool
    agent.stop()
    # every sample pushed before stop reached the spool before outputs were closed
    assert rec.events == ["collectors stop", "spool append", "spool append", "delivery stop file-0",
                          "output flush file-0", "output close file-0", "spool close"]
    got = {t: sum(b[3] for b in spool.batches if b[0] == t) for t in ("acme", "globex")}
    assert got == {"acme": 6, "globex": 4}  # globex excludes memory.*
    acme = next(b for b in spool.batches if b[0] == "acme")[2]
    assert acme["host"] == "h1" and acme["tenant"] == "acme"
    assert {tuple(sorted(r[1].items())) for r in acme["rows"]} >= {(("cpu", "0"), ("mode", "user"), ("team", "infra"))}


def test_failed_output_start_names_it_and_unwinds(tmp_path):
    rec = Recorder()
    agent, _ = make_agent(tmp_path, rec, fail=RetryableError("connection refused"))
    with pytest.raises(IngressError) as e:
        agent.start()
    assert str(e.value) == "output 'file-0' is not usable at start-up: connection refused"
    assert "collectors start" not in rec.events and rec.events[-1] == "spool close"


def test_missing_credential_stops_start_before_anything_opens(tmp_path, monkeypatch):
    monkeypatch.delenv("INGRESS_TEST_NO_SUCH_KEY", raising=False)
    s = loads(f"""
[agent]
data_dir = "{tmp_path}"
[[tenants]]
id = "acme"
api_key_env = "INGRESS_TEST_NO_SUCH_KEY"
[[outputs]]
type = "http"
url = "http://127.0.0.1:9/in"
""")
    rec = Recorder()
    agent = Agent(s, bindings={}, outputs=[], spool_factory=lambda _: FakeSpool(rec),
                  registry=(reg := FakeRegistry(1)), rings=FakeRings(1),
                  encoder=FakeEncoder(reg, s.agent.hostname))
    with pytest.raises(TenantCheckError, match="tenant 'acme': credential_missing: environment variable "
                                               "INGRESS_TEST_NO_SUCH_KEY is not set"):
        agent.start()
    assert rec.events == []


def test_run_flushes_on_max_delay_and_stops_after_duration(tmp_path):
    rec = Recorder()
    agent, holder = make_agent(tmp_path, rec)
    agent.start()
    holder["s"].run_pass()
    t = threading.Thread(target=agent.run, kwargs={"duration": 30.0})
    t.start()
    deadline = time.monotonic() + 10
    while not agent.spool.batches and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.request_stop()
    t.join(10)
    assert not t.is_alive()
    assert {b[0] for b in agent.spool.batches} == {"acme", "globex"}
    assert agent.deliveries[0].notified  # delivery is woken per spooled batch
    agent.stop()


# --------------------------------------------------------------------------- batching

def test_batches_respect_max_samples(tmp_path):
    rec = Recorder()
    agent, holder = make_agent(tmp_path, rec, max_samples=4)
    agent.start()
    for _ in range(5):
        holder["s"].run_pass()  # acme: 15 samples, globex: 10
    assert agent.pipeline.flush_wanted.is_set()  # a ring reached max_samples
    agent.flush()
    sizes = [(b[0], b[3]) for b in agent.spool.batches]
    assert sizes == [("acme", 4), ("acme", 4), ("acme", 4), ("acme", 3), ("globex", 4), ("globex", 4), ("globex", 2)]
    assert agent.registry.released_upto == [0]  # ids evicted before the drain are released after it
    agent.stop()


def test_oversized_batches_are_split(tmp_path):
    rec = Recorder()
    agent, holder = make_agent(tmp_path, rec)
    agent.pipeline.max_bytes = 400  # fake_encode makes ~70 bytes per row
    agent.start()
    for _ in range(4):
        holder["s"].run_pass()
    agent.flush()
    acme = [b for b in agent.spool.batches if b[0] == "acme"]
    assert sum(b[3] for b in acme) == 12 and len(acme) > 1
    assert all(len(json.dumps(b[2]).encode()) <= 400 or b[3] == 1 for b in acme)
    # order inside a tenant is kept across the split
    vals = [r[3] for b in acme for r in b[2]["rows"]]
    assert vals == [1.0, 2.0, 1.0, 2.0, 3.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 4.0]
    agent.stop()


# --------------------------------------------------------------------------- planning and --once

PLAN = """
[[tenants]]
id = "a"
collectors = ["cpu", "processes", "agent"]
[tenants.processes]
match = ["nginx*"]
[[tenants]]
id = "b"
collectors = ["cpu", "processes", "agent"]
[tenants.processes]
match = ["nginx*"]
[[tenants]]
id = "c"
collectors = ["processes", "memory"]
[tenants.processes]
match = ["postgres"]
top = 3
[[tenants]]
id = "d"
enabled = false
collectors = ["disk"]
[[outputs]]
type = "file"
"""


def test_plan_shares_collectors_with_equal_options():
    plan = plan_collectors(TenantSet(loads(PLAN).tenants).enabled)
    got = {k: ([t.id for t in b.tenants], b.name, b.options) for k, b in plan.items()}
    assert got == {
        "cpu": (["a", "b"], "cpu", {}),
        # one /proc pass for every tenant, each tenant's selection a view of it
        "processes": (["a", "b", "c"], "processes", {"views": {
            "a": {"match": ["nginx*"], "top": 10, "users": [], "cmdline": ""},
            "b": {"match": ["nginx*"], "top": 10, "users": [], "cmdline": ""},
            "c": {"match": ["postgres"], "top": 3, "users": [], "cmdline": ""}}}),
        "memory": (["c"], "memory", {}),
        # the agent's own figures name tenants: one instance per tenant, never shared
        "agent:a": (["a"], "agent", {"for_tenant": "a"}),
        "agent:b": (["b"], "agent", {"for_tenant": "b"}),
    }  # "disk" is only wanted by a disabled tenant: not built at all


def test_health_options_are_the_collectors_check_tables():
    from ingress.collect.plan import collector_options

    s = loads("""
[[tenants]]
id = "a"
collectors = ["health"]
[[tenants.health]]
name = "api"
url = "https://127.0.0.1:8443/h"
expect_status = 204
insecure = true
[[tenants.health]]
name = "db"
tcp = "127.0.0.1:5432"
timeout = "500ms"
[[outputs]]
type = "file"
""")
    assert collector_options("health", s.tenants[0]) == {"checks": [
        {"name": "api", "url": "https://127.0.0.1:8443/h", "timeout": 2.0, "expect_status": 204, "insecure": True},
        {"name": "db", "tcp": "127.0.0.1:5432", "timeout": 0.5}]}


def test_agent_figures_only_name_the_asking_tenant(tmp_path):
    rec = Recorder()
    agent, holder = make_agent(tmp_path, rec)

    class Rings(FakeRings):
        def capacity(self, t):
            return 100

        def dropped(self, t):
            return 7 * (t + 1)

    agent.rings = Rings(2)
    agent.registry.refused = lambda t: 0
    agent.pipeline.on_columns("cpu", agent.pipeline.bindings["cpu"].collector.collect(1))
    figs = agent.stats_for(["globex"])
    assert figs["agent.ring.dropped"] == [({"tenant": "globex"}, 14.0)]
    assert figs["agent.series.count"] == [({"tenant": "globex"}, 2.0)]
    assert figs["agent.collector.samples"] == [({"collector": "cpu"}, 2.0)]
    assert "acme" not in json.dumps(figs)


def test_collect_once_applies_rules_and_tags(tmp_path):
    rec = Recorder()
    agent, _ = make_agent(tmp_path, rec)
    rows = list(agent.collect_once(now_ns=42))
    assert ("acme", "memory.used", {"team": "infra"}, 42, 1.0) in rows
    assert ("globex", "cpu.time", {"cpu": "0", "mode": "system"}, 42, 2.0) in rows
    assert not [r for r in rows if r[0] == "globex" and r[1].startswith("memory.")]
    assert len(rows) == 5 and rec.events == []  # nothing opened, nothing sent


def test_sample_json_is_the_contract_line():
    line = sample_json("acme", "cpu.time", {"cpu": "0"}, 17, 1.5)
    assert line == '{"tenant": "acme", "name": "cpu.time", "tags": {"cpu": "0"}, "ts": 17, "value": 1.5}'
    assert json.loads(sample_json("a", "m", {}, 1, float("nan"), host="h"))["value"] is None


def test_spool_refusal_is_counted_not_raised(tmp_path):
    from ingress.errors import SpoolError

    class FullSpool(FakeSpool):
        def append(self, tenant, *a):
            raise SpoolError("disk full")

    rec = Recorder()
    agent, holder = make_agent(tmp_path, rec)
    agent._spool_factory = lambda _: FullSpool(rec)
    agent.start()
    holder["s"].run_pass()
    agent.flush()
    st = agent.pipeline.stats
    assert (st["acme"].collected, st["acme"].spool_dropped, st["acme"].spooled) == (3, 3, 0)
    agent.stop()
