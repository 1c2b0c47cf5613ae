"""The compiled OTLP and remote-write encoders against their pure-Python references.

Every generated batch is encoded both ways and decoded with the official
protobuf messages (opentelemetry-proto; prompb built from descriptors); the
messages must be identical, and so must the bytes. Naming rules and bad inputs
are property-tested too.
"""
from __future__ import annotations

import math
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocols_reference as ref
from ingress import wire
from ingress._core import _otlp, _remote_write
from ingress.errors import PermanentError, WireError
from ingress.outputs import otlp, remote_write as rw
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.metricinfo import metric_table

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc

WriteRequest = ref.prompb()[0]
DECLARED = sorted(metric_table())
PROM_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
PROM_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
names = st.one_of(st.sampled_from(DECLARED), texts.filter(bool))
tag_maps = st.dictionaries(texts, texts, max_size=4)
floats = st.builds(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0], st.integers(0, 2**64 - 1)) | st.floats()
timestamps = st.integers(-(2**63), 2**63 - 1) | st.integers(1_700_000_000_000_000_000, 1_700_000_000_010_000_000)


@st.composite
def batches(draw, max_series=6, max_samples=40):
    series = draw(st.lists(st.tuples(names, tag_maps), min_size=1, max_size=max_series))
    n = draw(st.integers(0, max_samples))
    idx = draw(st.lists(st.integers(0, len(series) - 1), min_size=n, max_size=n))
    ts = draw(st.lists(timestamps, min_size=n, max_size=n))
    vals = draw(st.lists(floats, min_size=n, max_size=n))
    return (series, np.array(idx, np.uint32), np.array(ts, np.int64), np.array(vals, np.float64))


def _same(a, b) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


# -- remote write ----------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from([None, "tenant"]))
def test_remote_write_encoder_matches_reference(b, tenant_label):
    series, idx, ts, vals = b
    blob, off = rw._SeriesCache().blobs(series, "web-1", "acme", tenant_label)
    got, n = _remote_write.encode_write_request(blob, off, idx, ts, vals)
    want, n_want = ref.ref_write_request(blob, off, idx, ts, vals)
    assert _same(WriteRequest.FromString(got), WriteRequest.FromString(want))
    assert got == want and n == n_want


@settings(max_examples=200, deadline=None)
@given(batches())
def test_remote_write_series_are_sorted_unique_and_in_time_order(b):
    series, idx, ts, vals = b
    payload = wire.encode("acme", "web-1", series, idx, ts, vals)
    msg, n = rw.encode_batch(payload, compress=False)
    wr = WriteRequest.FromString(msg)
    assert len(wr.timeseries) == len(set(idx.tolist()))
    total = 0
    for t in wr.timeseries:
        names_ = [l.name for l in t.labels]
        assert names_ == sorted(names_, key=str.encode) and len(set(names_)) == len(names_)
        assert "__name__" in names_ and all(l.value for l in t.labels)
        assert all(PROM_LABEL.match(x) for x in names_ if x != "__name__")
        assert PROM_NAME.match(dict((l.name, l.value) for l in t.labels)["__name__"])
        stamps = [s.timestamp for s in t.samples]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        total += len(stamps)
    assert total == n


def test_remote_write_snappy_body_round_trips():
    import cramjam

    payload = wire.encode("acme", "web-1", [("cpu.time", {"cpu": "0", "mode": "user"})], [0, 0],
                          [2_000_000_000, 1_000_000_000], [2.5, 1.5])
    body, n = rw.encode_batch(payload)
    wr = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    [t] = wr.timeseries
    assert [(l.name, l.value) for l in t.labels] == [
        ("__name__", "cpu_time_seconds_total"), ("cpu", "0"), ("host", "web-1"), ("mode", "user")]
    assert [(s.timestamp, s.value) for s in t.samples] == [(1000, 1.5), (2000, 2.5)] and n == 2


def test_samples_in_one_millisecond_collapse_to_the_last():
    payload = wire.encode("acme", "h", [("memory.used", {})], [0, 0, 0], [1_000_100, 1_000_900, 1_000_500],
                          [1.0, 3.0, 2.0])
    msg, n = rw.encode_batch(payload, compress=False)
    [t] = WriteRequest.FromString(msg).timeseries
    assert [(s.timestamp, s.value) for s in t.samples] == [(1, 3.0)] and n == 1


@pytest.mark.parametrize("name, kind, unit, want", [
    ("cpu.time", "counter", "s", "cpu_time_seconds_total"),
    ("memory.used", "gauge", "By", "memory_used_bytes"),
    ("disk.io.bytes", "counter", "By", "disk_io_bytes_total"),
    ("network.rate", "gauge", "By/s", "network_rate_bytes_per_second"),
    ("cpu.utilization", "gauge", "1", "cpu_utilization_ratio"),
    ("agent.ring.dropped", "counter", "1", "agent_ring_dropped_total"),
    ("pressure.avg", "gauge", "%", "pressure_avg_percent"),
    ("requests.total", "counter", "{request}", "requests_total"),
    ("link.speed", "gauge", "bit/s", "link_speed_bits_per_second"),
    ("9lives", "gauge", "", "_9lives"),
    ("héllo wörld", "gauge", "", "h_llo_w_rld"),
])
def test_metric_name_rules(name, kind, unit, want):
    assert rw.metric_name(name, kind, unit) == want


@given(texts, st.sampled_from(["gauge", "counter"]), st.sampled_from(["", "1", "By", "s", "%", "By/s", "{x}", "?/?"]))
def test_metric_name_is_always_a_prometheus_name(name, kind, unit):
    out = rw.metric_name(name, kind, unit)
    assert PROM_NAME.match(out)
    if kind == "counter":
        assert out.endswith("_total") or out == "total"


@given(texts)
def test_label_name_is_always_a_prometheus_label_name(key):
    out = rw.label_name(key)
    assert PROM_LABEL.match(out) and not out.startswith("__")


def test_labels_collide_merge_and_agent_labels_win():
    labels = rw.series_labels("memory.used", {"a.b": "1", "a_b": "2", "host": "spoofed", "empty": ""},
                              "web-1", "acme", "tenant")
    assert labels == [("__name__", "memory_used_bytes"), ("a_b", "1;2"), ("exported_host", "spoofed"),
                      ("host", "web-1"), ("tenant", "acme")]


# -- OTLP --------------------------------------------------------------------------------
def _otlp_args(series, idx, ts, vals):
    heads, head_off, kinds, attrs, attr_off, metric = otlp._TenantCache().tables(series)
    return (otlp.resource_field("web-1", "acme"), otlp.scope_field("9.9"), heads, head_off, kinds, attrs, attr_off,
            metric, idx, ts, vals)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_otlp_encoder_matches_reference(b):
    args = _otlp_args(*b)
    got = _otlp.encode_export_request(*args)
    want = ref.ref_export_request(*args)
    assert _same(svc.ExportMetricsServiceRequest.FromString(got), svc.ExportMetricsServiceRequest.FromString(want))
    assert got == want


@settings(max_examples=150, deadline=None)
@given(batches())
def test_otlp_request_holds_every_sample_with_its_kind_unit_and_attributes(b):
    series, idx, ts, vals = b
    payload = wire.encode("acme", "web-1", series, idx, ts, vals)
    req = svc.ExportMetricsServiceRequest.FromString(otlp.encode_batch(payload))
    [rm] = req.resource_metrics
    assert {a.key: a.value.string_value for a in rm.resource.attributes} == {"host.name": "web-1",
                                                                              "tenant.id": "acme"}
    [sm] = rm.scope_metrics
    assert sm.scope.name == "ingress"
    table = metric_table()
    got = []
    for m in sm.metrics:
        mi = table.get(m.name)
        if mi is not None and mi.kind == "counter":
            assert m.WhichOneof("data") == "sum" and m.sum.is_monotonic
            assert m.sum.aggregation_temporality == 2
            points = m.sum.data_points
        else:
            assert m.WhichOneof("data") == "gauge"
            points = m.gauge.data_points
        assert m.unit == (mi.unit if mi else "")
        for p in points:
            got.append((m.name, tuple(sorted((a.key, a.value.string_value) for a in p.attributes)),
                        p.time_unix_nano, struct.pack("<d", p.as_double)))
    want = [(series[s][0], tuple(sorted(series[s][1].items())), t & (2**64 - 1), struct.pack("<d", v))
            for s, t, v in zip(idx.tolist(), ts.tolist(), vals.tolist())]
    assert sorted(got) == sorted(want)


# -- bad input ---------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(batches(), st.integers(0, 2**32 - 1), st.integers(0, 39))
def test_compiled_encoders_refuse_an_index_out_of_range(b, bad, where):
    series, idx, ts, vals = b
    if not len(idx):
        return
    idx = idx.copy()
    where %= len(idx)
    idx[where] = max(bad, len(series))
    blob, off = rw._SeriesCache().blobs(series, "h", "acme", None)
    with pytest.raises(ValueError, match="out of range"):
        _remote_write.encode_write_request(blob, off, idx, ts, vals)
    with pytest.raises(ValueError, match="out of range"):
        _otlp.encode_export_request(*_otlp_args(series, idx, ts, vals))


@given(st.lists(st.integers(-5, 50), min_size=1, max_size=5))
def test_compiled_encoders_refuse_offsets_outside_the_blob(offs):
    off = np.array(offs, np.int64)
    ok = all(0 <= a <= b <= 10 for a, b in zip(offs, offs[1:]))
    none = np.empty(0, np.uint32)
    if ok:
        _remote_write.encode_write_request(b"x" * 10, off, none, np.empty(0, np.int64), np.empty(0))
    else:
        with pytest.raises(ValueError, match="label_offsets"):
            _remote_write.encode_write_request(b"x" * 10, off, none, np.empty(0, np.int64), np.empty(0))


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        _remote_write.encode_write_request(b"", np.zeros(2, np.int64), np.zeros(2, np.uint32),
                                           np.zeros(1, np.int64), np.zeros(2))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda p, i, x: p[:i] + bytes([x]) + p[i + 1:],
                                          st.just(wire.encode("acme", "h", [("memory.used", {})], [0], [1], [1.0])),
                                          st.integers(0, 80), st.integers(0, 255)))
def test_an_undecodable_batch_is_a_permanent_error_for_both_outputs(payload):
    try:
        wire.decode(payload)
        return  # a mutation that still decodes is a valid batch
    except WireError:
        pass
    b = OutgoingBatch("acme", b"\x01" * 16, payload, 1, "h")
    for out in (rw.RemoteWriteOutput("rw", "http://127.0.0.1:9/api/v1/write"),
                otlp.OtlpOutput("o", "http://127.0.0.1:9/v1/metrics")):
        with pytest.raises(PermanentError, match="cannot be decoded"):
            out.request(b)


@given(st.binary(max_size=100))
def test_partial_success_parser_takes_any_bytes(body):
    r = otlp.partial_success(body)
    assert r is None or (isinstance(r[0], int) and isinstance(r[1], str))


def test_partial_success_of_a_real_response():
    resp = svc.ExportMetricsServiceResponse()
    resp.partial_success.rejected_data_points = 7
    resp.partial_success.error_message = "too old"
    assert otlp.partial_success(resp.SerializeToString()) == (7, "too old")
    assert otlp.partial_success(svc.ExportMetricsServiceResponse().SerializeToString()) is None


@pytest.mark.parametrize("cls, kw, match", [
    (rw.RemoteWriteOutput, {"tenant_header": "X Bad"}, "tenant_header"),
    (rw.RemoteWriteOutput, {"tenant_label": "9x"}, "tenant_label"),
    (rw.RemoteWriteOutput, {"tenant_label": "host"}, "tenant_label"),
    (rw.RemoteWriteOutput, {"format": "json"}, "no format"),
    (rw.RemoteWriteOutput, {"headers": {"X-Scope-OrgID": "x"}}, "cannot be overridden"),
    (rw.RemoteWriteOutput, {"headers": {"Content-Encoding": "gzip"}}, "cannot be overridden"),
    (otlp.OtlpOutput, {"compression": "zstd"}, "compression"),
    (otlp.OtlpOutput, {"headers": {"x-scope-orgid": "x"}}, "cannot be overridden"),
])
def test_bad_options_are_config_errors(cls, kw, match):
    from ingress.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        cls("o", "http://127.0.0.1:9/x", **kw)


def test_nan_and_negative_zero_survive_remote_write():
    payload = wire.encode("acme", "h", [("memory.used", {})], [0, 0, 0], [1_000_000, 2_000_000, 3_000_000],
                          [math.nan, -0.0, 0.0])
    msg, _ = rw.encode_batch(payload, compress=False)
    [t] = WriteRequest.FromString(msg).timeseries
    got = [struct.pack("<d", s.value) for s in t.samples]
    assert got == [struct.pack("<d", v) for v in (math.nan, -0.0, 0.0)]
