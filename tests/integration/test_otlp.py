"""OtlpOutput against a real loopback HTTP receiver that decodes with the official opentelemetry-proto messages."""
from __future__ import annotations

import gzip
import struct
import time

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc

from ingress import __version__, wire
from ingress.errors import PermanentError, RetryableError
from ingress.spool import Spool, TenantPolicy
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.delivery import Delivery
from ingress.outputs.metricinfo import metric_table
from ingress.outputs.otlp import OtlpOutput

from outputs.fakes import wait_for

from .conftest import Reply
from .test_http import send

pytestmark = pytest.mark.integration

SERIES = [("cpu.time", {"cpu": "0", "mode": "user"}), ("cpu.time", {"cpu": "1", "mode": "idle"}),
          ("memory.used", {}), ("custom.thing", {"k": "v", "": "empty key"})]


def columns(t0, ticks, seed=0):
    idx, ts, vals = [], [], []
    for k in range(ticks):
        for s in reversed(range(len(SERIES))):
            idx.append(s)
            ts.append(t0 + k * 1_000_000_000 + s)
            vals.append(seed * 100 + k + s / 4)
    return idx, ts, vals


def decode_request(req) -> svc.ExportMetricsServiceRequest:
    body = gzip.decompress(req.body) if req.headers.get("content-encoding") == "gzip" else req.body
    return svc.ExportMetricsServiceRequest.FromString(body)


def points_of(msg, host, tenant):
    """[(metric, attrs, ts, value bits)] of every data point, after checking resource, scope and kinds."""
    [rm] = msg.resource_metrics
    assert {a.key: a.value.string_value for a in rm.resource.attributes} == {"host.name": host, "tenant.id": tenant}
    [sm] = rm.scope_metrics
    assert (sm.scope.name, sm.scope.version) == ("ingress", __version__)
    table = metric_table()
    out = []
    assert len({m.name for m in sm.metrics}) == len(sm.metrics)  # one Metric per name
    for m in sm.metrics:
        mi = table.get(m.name)
        assert m.unit == (mi.unit if mi else "") and m.description == (mi.description if mi else "")
        if mi is not None and mi.kind == "counter":
            assert m.WhichOneof("data") == "sum"
            assert m.sum.is_monotonic and m.sum.aggregation_temporality == 2  # CUMULATIVE
            points = m.sum.data_points
        else:
            assert m.WhichOneof("data") == "gauge"
            points = m.gauge.data_points
        for p in points:
            assert p.WhichOneof("value") == "as_double"
            out.append((m.name, tuple(sorted((a.key, a.value.string_value) for a in p.attributes)),
                        p.time_unix_nano, struct.pack("<d", p.as_double)))
    return out


def expected(idx, ts, vals):
    return sorted((SERIES[s][0], tuple(sorted(SERIES[s][1].items())), t, struct.pack("<d", v))
                  for s, t, v in zip(idx, ts, vals))


def batch(tenant, idx, ts, vals, host="web-1"):
    p = wire.encode(tenant, host, SERIES, idx, ts, vals)
    return OutgoingBatch(tenant, wire.peek(p).batch_id, p, len(idx), host)


def test_every_data_point_resource_attribute_and_header(http_server):
    out = OtlpOutput("o", http_server.url + "/v1/metrics", credential=lambda t: "tok-" + t)
    idx, ts, vals = columns(1_700_000_000_000_000_000, 4)
    for tenant in ("acme", "zeta"):
        assert send(out, batch(tenant, idx, ts, vals)) is None
    assert len(http_server.requests) == 2
    for req, tenant in zip(http_server.requests, ("acme", "zeta")):
        h = req.headers
        assert req.path == "/v1/metrics"
        assert h["content-type"] == "application/x-protobuf" and h["content-encoding"] == "gzip"
        assert h["x-scope-orgid"] == tenant and h["authorization"] == f"Bearer tok-{tenant}"
        assert h["user-agent"] == f"ingress/{__version__}"
        assert sorted(points_of(decode_request(req), "web-1", tenant)) == expected(idx, ts, vals)
    out.close()


def test_custom_tenant_header_and_no_compression(http_server):
    out = OtlpOutput("o", http_server.url + "/{tenant}/v1/metrics", tenant_header="X-Tenant", compression="none")
    idx, ts, vals = columns(5, 2)
    assert send(out, batch("acme", idx, ts, vals)) is None
    [req] = http_server.requests
    assert req.path == "/acme/v1/metrics" and req.headers["x-tenant"] == "acme"
    assert "x-scope-orgid" not in req.headers and "content-encoding" not in req.headers
    assert "authorization" not in req.headers
    assert sorted(points_of(decode_request(req), "web-1", "acme")) == expected(idx, ts, vals)
    out.close()


@pytest.mark.parametrize("status, retryable", [(429, True), (502, True), (503, True), (504, True),
                                               (500, False), (400, False), (404, False),
                                               (408, False), (413, False)])
def test_retry_classes_follow_the_otlp_specification(http_server, status, retryable):
    http_server.replies(Reply(status, b"nope", {"Retry-After": "2"}))
    out = OtlpOutput("o", http_server.url)
    err = send(out, batch("acme", *columns(5, 1)))
    assert isinstance(err, RetryableError if retryable else PermanentError) and err.status == status
    assert not getattr(err, "credential_refused", False)
    if retryable:
        assert err.retry_after == 2.0
    out.close()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_credential_holds_the_pair_not_a_dead_letter(http_server, status):
    """As for the http output: 401/403 are neither retried blindly nor dead-lettered (issue 10)."""
    http_server.replies(Reply(status, b"bad token"))
    out = OtlpOutput("o", http_server.url)
    err = send(out, batch("acme", *columns(5, 1)))
    assert getattr(err, "credential_refused", False) and err.status == status
    assert not isinstance(err, PermanentError)
    out.close()


def test_partial_success_is_acknowledged_counted_and_logged(http_server, caplog):
    resp = svc.ExportMetricsServiceResponse()
    resp.partial_success.rejected_data_points = 3
    resp.partial_success.error_message = "points too old"
    http_server.replies(Reply(200, resp.SerializeToString(), {"Content-Type": "application/x-protobuf"}))
    out = OtlpOutput("o", http_server.url)
    with caplog.at_level("WARNING", logger="ingress.outputs.otlp"):
        assert send(out, batch("acme", *columns(5, 2))) is None
        assert send(out, batch("acme", *columns(5, 2))) is None  # a plain success: nothing counted
    assert out.rejected_points == 3 and out.partial_successes == 1
    [rec] = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert "rejected 3 of 8 data points: points too old" in rec.getMessage()
    out.close()


def test_network_error_is_retryable():
    out = OtlpOutput("o", "http://127.0.0.1:9/v1/metrics", timeout_s=2)
    err = send(out, batch("acme", *columns(5, 1)))
    assert isinstance(err, RetryableError)
    out.close()


def test_delivery_from_a_real_spool(http_server, tmp_path):
    tenants = ("acme", "zeta")
    sp = Spool(tmp_path / "spool", {t: TenantPolicy(max_bytes=64 << 20, retention_s=3600, encrypt=False)
                                    for t in tenants}, outputs=["o"], write_mb_s=None)
    want = {t: [] for t in tenants}
    t0 = time.time_ns()
    for t in tenants:
        for i in range(3):
            idx, ts, vals = columns(t0 + i * 10**10, 2, seed=i)
            b = batch(t, idx, ts, vals)
            sp.append(t, b.batch_id, b.payload, len(idx), time.time_ns())
            want[t] += expected(idx, ts, vals)
    # the first request of each tenant is refused with 503: retried, nothing lost or doubled
    seen = set()

    def behave(req):
        t = req.headers["x-scope-orgid"]
        if t not in seen:
            seen.add(t)
            return Reply(503, b"warming up", {"Retry-After": "0"})
        return Reply(200, b"")

    http_server.behave = behave
    out = OtlpOutput("o", http_server.url, credential=lambda t: "k")
    d = Delivery(sp, [out], None, tenants=tenants, data_dir=tmp_path, host="web-1", idle_poll_s=0.05)
    d.start()
    try:
        assert wait_for(lambda: all(not sp.pending(t, "o") for t in tenants), 30)
    finally:
        d.stop(5)
        out.close()
        sp.close()
    for t in tenants:
        reqs = [r for r in http_server.requests if r.headers["x-scope-orgid"] == t]
        assert len(reqs) == 4  # the refused one, then each batch once
        got = [p for r in reqs[1:] for p in points_of(decode_request(r), "web-1", t)]
        assert sorted(got) == sorted(want[t])
        assert d.stats()[t]["o"]["sent_batches"] == 3
