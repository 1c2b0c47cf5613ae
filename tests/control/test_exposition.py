"""``ingress.control.exposition`` writes what ``prometheus_client`` writes, byte for byte.

The agent renders ``/metrics`` with its own small encoder (prometheus_client's
import costs 8 MB of RSS; see the module). These tests hold it to the reference
library on the agent's real collector and on generated families.
"""
import math
import time

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest, metrics_core
from prometheus_client.parser import text_string_to_metric_families

from ingress import config
from ingress.agent import Agent
from ingress.control import exposition
from ingress.control.metrics import AgentCollector
from ingress.control.status import AgentView


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def reference(families) -> bytes:
    r = CollectorRegistry(auto_describe=False)
    r.register(_Fixed(families))
    return generate_latest(r)


def build(mc, spec):
    """The same families built through ``mc`` (exposition or prometheus_client.metrics_core)."""
    out = []
    for kind, name, doc, labels, rows in spec:
        if kind == "info":
            f = mc.InfoMetricFamily(name, doc, labels=labels)
            for lv, value in rows:
                f.add_metric(lv, value)
        else:
            cls = mc.CounterMetricFamily if kind == "counter" else mc.GaugeMetricFamily
            f = cls(name, doc, labels=labels)
            for lv, value in rows:
                f.add_metric(lv, value)
        out.append(f)
    return out


names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(lambda s: not s.endswith("_total"))
label_names = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), max_size=3, unique=True)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**12, 10**12).map(float)


@st.composite
def family(draw):
    kind = draw(st.sampled_from(["counter", "gauge", "info"]))
    labels = draw(label_names)
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        lv = [draw(text) for _ in labels]
        if kind == "info":
            keys = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), max_size=2,
                                 unique=True).filter(lambda ks: not set(ks) & set(labels)))
            rows.append((lv, {k: draw(text) for k in keys}))
        else:
            rows.append((lv, draw(floats)))
    return kind, draw(names), draw(text), labels, rows


@settings(max_examples=300, deadline=None)
@given(st.lists(family(), max_size=4, unique_by=lambda f: f[1]))
def test_generated_families_render_byte_identical(spec):
    assert exposition.render(build(exposition, spec)) == reference(build(metrics_core, spec))


@pytest.mark.parametrize("v", [0.0, -0.0, 1.0, 1e7, 12345678.9, 1e22, 5e-324, -1e22, math.inf, -math.inf,
                               math.nan, 0.1, 123456.0, 1234567.0])
def test_floats_as_go_writes_them(v):
    from prometheus_client.utils import floatToGoString

    assert exposition.go_float(v) == floatToGoString(v)


def test_the_agents_collector_renders_byte_identical_and_parses(tmp_path):
    text_cfg = f"""
[agent]
data_dir = "{tmp_path / 'data'}"
interval = "1s"
[agent.limits]
memory_mb = 65536  # in process: the memory guard would read the test runner's RSS
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["cpu", "memory", "agent"]
[[tenants]]
id = "globex"
collectors = ["cpu"]
[[outputs]]
type = "file"
"""
    agent = Agent(config.loads(text_cfg))
    agent.start()
    try:
        agent.run(duration=1.5)
        view = AgentView(agent)
        ours = exposition.render(AgentCollector(view, exposition).collect())
        ref = reference(list(AgentCollector(view, metrics_core).collect()))
    finally:
        agent.stop()

    # Scrape-time figures (CPU seconds, RSS, uptime) move between the two renders:
    # compare with those lines' values masked, then every line's name and labels.
    def masked(page: bytes) -> list[str]:
        return [line.rpartition(" ")[0] if not line.startswith("#") else line
                for line in page.decode().splitlines()]

    assert masked(ours) == masked(ref)
    fams = {f.name: f for f in text_string_to_metric_families(ours.decode())}
    assert "ingress_samples_collected" in fams and fams["ingress_samples_collected"].type == "counter"
    tenants = {s.labels.get("tenant") for s in fams["ingress_samples_collected"].samples}
    assert tenants == {"acme", "globex"}
    assert any(s.value > 0 for s in fams["ingress_samples_collected"].samples)


hist_labels = st.lists(st.from_regex(r"[a-k][a-z0-9_]{0,10}", fullmatch=True).filter(lambda s: s != "le"),
                       max_size=3, unique=True)


@st.composite
def histogram(draw):
    labels = draw(hist_labels)
    bounds = sorted(set(draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=6))))
    rows = []
    for _ in range(draw(st.integers(0, 3))):
        counts = draw(st.lists(st.integers(0, 10**9), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
        acc, buckets = 0, []
        for le, n in zip([exposition.go_float(b) for b in bounds] + ["+Inf"], counts):
            acc += n
            buckets.append((le, float(acc)))
        sum_value = draw(st.none() | floats)
        rows.append(([draw(text) for _ in labels], buckets, sum_value))
    return draw(names), draw(text), labels, rows


@settings(max_examples=300, deadline=None)
@given(st.lists(histogram(), max_size=3, unique_by=lambda f: f[0]))
def test_generated_histograms_render_byte_identical(spec):
    def make(mc):
        out = []
        for name, doc, labels, rows in spec:
            f = mc.HistogramMetricFamily(name, doc, labels=labels)
            for lv, buckets, sum_value in rows:
                f.add_metric(lv, buckets, sum_value)
            out.append(f)
        return out

    assert exposition.render(make(exposition)) == reference(make(metrics_core))


def test_send_latency_histogram_parses_with_cumulative_buckets(tmp_path):
    """The agent's ingress_send_latency_seconds, from a delivery that sent batches, parses as a
    Prometheus histogram whose buckets are cumulative and whose count is the batches sent."""
    from types import SimpleNamespace

    from ingress.outputs.pair import SEND_LATENCY_BUCKETS

    counts = [0] * (len(SEND_LATENCY_BUCKETS) + 1)
    counts[0], counts[3], counts[-1] = 2, 5, 1
    st_ = {"sent_samples": 1, "send_latency": {"bounds": SEND_LATENCY_BUCKETS, "counts": counts, "sum_s": 70.5},
           "breaker": {"state": "closed"}}

    class View:
        agent = SimpleNamespace(pipeline=SimpleNamespace(stats={}, bindings={}, last_samples={}), scheduler=None)
        settings = SimpleNamespace(agent=SimpleNamespace(limits=SimpleNamespace(memory_mb=256)))
        tenant_settings: dict = {}
        started_at = 0.0

        def tenant_ids(self):
            return ["acme"]

        def delivery_stats(self):
            return {"acme": {"web": st_}}

        def spool_stats(self):
            return {}

        def ring_and_series(self):
            return {}

        def held(self):
            return {}

        def deadletter_usage(self, t):
            return {"count": 0, "bytes": 0, "replay_queued": 0, "dropped": 0}

        def readiness(self):
            return []

    ours = exposition.render(AgentCollector(View(), exposition).collect())
    ref = reference(list(AgentCollector(View(), metrics_core).collect()))

    # The process's own figures (CPU, RSS, fds, threads, GC) move between the two
    # renders: mask their values; every other line, the histogram's included, must match.
    def masked(page: bytes) -> list[str]:
        return [line.rpartition(" ")[0] if line.startswith(("ingress_process_", "ingress_gc_")) else line
                for line in page.decode().splitlines()]

    assert masked(ours) == masked(ref)
    fam = {f.name: f for f in text_string_to_metric_families(ours.decode())}["ingress_send_latency_seconds"]
    assert fam.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in fam.samples if s.name.endswith("_bucket")]
    assert buckets[-1] == ("+Inf", 8.0) and [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert {s.name: s.value for s in fam.samples if not s.name.endswith("_bucket")} == {
        "ingress_send_latency_seconds_count": 8.0, "ingress_send_latency_seconds_sum": 70.5}
