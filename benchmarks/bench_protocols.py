"""The protocol encoders against the usual Python ways of writing the same messages.

One seeded workload (benchmarks/generate_data.py: ~1,000 series), 10 passes per
batch. Every path starts from the same decoded batch (series dictionary plus
columns, what ``ingress.wire.decode`` gives an output) and ends with the bytes
that go on the wire, in this run:

- otlp            ingress: per-tenant cache of metric heads and series attributes,
                  ``_otlp.encode_export_request`` (compiled), gzip (level 1, as the output sends)
- otlp_sdk        the OpenTelemetry Python SDK's exporter path: the batch as SDK
                  ``MetricsData`` (one ``NumberDataPoint`` per sample), then
                  ``opentelemetry.exporter.otlp.proto.common`` ``encode_metrics``
                  and ``SerializeToString``, gzip
- remote_write    ingress: per-tenant label cache, ``_remote_write.encode_write_request``
                  (compiled), snappy (cramjam)
- rw_protobuf     protobuf-in-Python: the ``WriteRequest`` built with the message
                  classes (labels per series computed once, as ingress caches them),
                  samples sorted per series, ``SerializeToString``, snappy (cramjam)

Both sides of each pair use the same gzip level / the same snappy, so the ratio
is the encoders'. Bytes on the wire are printed per path.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cramjam
import numpy as np
import pytest

from benchmarks.conftest import record_ratio
from benchmarks.generate_data import workload
from ingress import __version__, wire
from ingress._core import _otlp, _remote_write
from ingress.outputs import otlp, remote_write as rw
from ingress.outputs.httpclient import gzip_body
from ingress.outputs.metricinfo import info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import protocols_reference  # noqa: E402  (the prompb message classes, built from descriptors)

PER = 10
RESULTS: dict[str, dict] = {}


class Case:
    def __init__(self, w, short: bool):
        n_series = 250 if short else w.n_series
        keep = np.asarray(w.ticks(0, PER)[0]) < n_series
        idx, ts, vals = (np.ascontiguousarray(np.asarray(c)[keep]) for c in w.ticks(0, PER))
        payload = wire.encode("acme", "web-1", w.series[:n_series], idx, ts, vals, b"\x42" * 16)
        self.batch = wire.decode(payload)
        self.payload_len = len(payload)
        self.n = len(self.batch)


@pytest.fixture(scope="module")
def case(bench_short):
    return Case(workload(), bench_short)


# -------------------------------------------------------------------- OTLP
def make_otlp(case):
    cache = otlp._TenantCache()
    b = case.batch
    cache.tables(b.series)  # steady state: the tenant's series are known

    def run():
        heads, hoff, kinds, attrs, aoff, metric = cache.tables(b.series)
        msg = _otlp.encode_export_request(otlp.resource_field(b.host, b.tenant), otlp.scope_field(__version__),
                                          heads, hoff, kinds, attrs, aoff, metric,
                                          b.series_index, b.timestamps, b.values)
        return gzip_body(msg, otlp.GZIP_LEVEL)

    return run


def make_otlp_sdk(case):
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics.export import (AggregationTemporality, Gauge, Metric, MetricsData,
                                                  NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    b = case.batch

    def run():
        by_name: dict[str, list] = {}
        series = b.series
        for s, t, v in zip(b.series_index.tolist(), b.timestamps.tolist(), b.values.tolist()):
            name, tags = series[s]
            by_name.setdefault(name, []).append(NumberDataPoint(attributes=tags, start_time_unix_nano=0,
                                                                time_unix_nano=t, value=v))
        metrics = []
        for name, points in by_name.items():
            mi = info(name)
            data = (Sum(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE,
                        is_monotonic=True) if mi.kind == "counter" else Gauge(data_points=points))
            metrics.append(Metric(name=name, description=mi.description, unit=mi.unit, data=data))
        md = MetricsData(resource_metrics=[ResourceMetrics(
            resource=Resource({"host.name": b.host, "tenant.id": b.tenant}),
            scope_metrics=[ScopeMetrics(scope=InstrumentationScope("ingress", __version__), metrics=metrics,
                                        schema_url="")], schema_url="")])
        return gzip_body(encode_metrics(md).SerializeToString(), otlp.GZIP_LEVEL)

    return run


# -------------------------------------------------------------------- remote write
def make_remote_write(case):
    cache = rw._SeriesCache()
    b = case.batch
    cache.blobs(b.series, b.host, b.tenant, None)

    def run():
        blob, off = cache.blobs(b.series, b.host, b.tenant, None)
        msg, _ = _remote_write.encode_write_request(blob, off, b.series_index, b.timestamps, b.values)
        return bytes(cramjam.snappy.compress_raw(msg))

    return run


def make_rw_protobuf(case):
    WriteRequest, TimeSeries, Label, Sample = protocols_reference.prompb()
    b = case.batch
    labels = [rw.series_labels(n, t, b.host, b.tenant, None) for n, t in b.series]  # cached, as ingress does

    def run():
        per: dict[int, list] = {}
        for s, t, v in zip(b.series_index.tolist(), b.timestamps.tolist(), b.values.tolist()):
            per.setdefault(s, []).append((t // 1_000_000, v))
        req = WriteRequest()
        for s in sorted(per):
            ts = req.timeseries.add()
            ts.labels.extend(Label(name=k, value=v) for k, v in labels[s])
            ts.samples.extend(Sample(value=v, timestamp=t) for t, v in sorted(per[s], key=lambda x: x[0]))
        return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))

    return run


PATHS = {"otlp": make_otlp, "otlp_sdk": make_otlp_sdk, "remote_write": make_remote_write,
         "rw_protobuf": make_rw_protobuf}


@pytest.mark.parametrize("path", list(PATHS))
def test_encode(bench, benchmark, case, path):
    run = PATHS[path](case)
    data, median = bench(run)
    RESULTS[path] = {"s": median, "bytes": len(data), "n": case.n}
    benchmark.extra_info.update(samples=case.n, wire_bytes=len(data), bytes_per_sample=len(data) / case.n,
                                ingress_batch_bytes=case.payload_len)
    print(f"\n{path}: {case.n} samples, {len(data)} bytes on the wire ({len(data) / case.n:.2f} B/sample; "
          f"the ingress batch: {case.payload_len} bytes), {case.n / median / 1e6:.2f} M samples/s")


def test_same_messages(case):
    """Both sides of each pair carry the same points (decoded and compared, not just timed)."""
    import gzip

    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc

    WriteRequest = protocols_reference.prompb()[0]

    def otlp_points(body):
        req = svc.ExportMetricsServiceRequest.FromString(gzip.decompress(body))
        return sorted((m.name, p.time_unix_nano, p.as_double, tuple(sorted((a.key, a.value.string_value)
                                                                         for a in p.attributes)))
                      for m in req.resource_metrics[0].scope_metrics[0].metrics
                      for p in (m.sum.data_points if m.WhichOneof("data") == "sum" else m.gauge.data_points))

    assert otlp_points(make_otlp(case)()) == otlp_points(make_otlp_sdk(case)())
    a = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(make_remote_write(case)())))
    b = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(make_rw_protobuf(case)())))
    assert a == b


def test_ratios_same_run(bench_short):
    if len(RESULTS) < len(PATHS):
        pytest.skip("needs every test_encode of this module in the same run")
    floor = 4.0  # the goal is 10x; the floor leaves room for a noisy shared machine
    for ours, base in (("otlp", "otlp_sdk"), ("remote_write", "rw_protobuf")):
        record_ratio(f"{ours} encode vs {base} (samples/s)", RESULTS[base]["s"] / RESULTS[ours]["s"], floor)
