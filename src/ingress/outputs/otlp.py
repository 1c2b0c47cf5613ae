"""The OTLP output: OTLP/HTTP metrics (protobuf), one POST per batch.

Request::

    POST <url, "{tenant}" expanded>            e.g. http://collector:4318/v1/metrics
    Content-Type: application/x-protobuf
    Content-Encoding: gzip                      (``compression = "gzip"``, the default; level 1)
    X-Scope-OrgID: <tenant id>                  (``tenant_header``; "" sends none)
    Authorization: Bearer <tenant credential>   (when a credential is configured)
    User-Agent: ingress/<version>

    ExportMetricsServiceRequest

One ``ResourceMetrics`` per request, resource attributes ``host.name`` and
``tenant.id``, one ``ScopeMetrics`` (scope ``ingress``, the agent's version),
one ``Metric`` per metric name with the description and unit its collector
declares: counters as ``Sum`` (monotonic, cumulative), everything else as
``Gauge``; one ``NumberDataPoint`` per sample (``time_unix_nano``, ``as_double``,
the tags as string attributes). The message is written by
``ingress._core._otlp`` from the batch's columns; metric heads and series
attributes are encoded once per tenant and reused (``_TenantCache``).

Answers (the OTLP/HTTP specification): 2xx acknowledges; a 2xx whose
``ExportMetricsServiceResponse`` carries ``partial_success`` is still
acknowledged (the server will not take those points on a retry either), and
the rejected points are counted (``rejected_points``) and logged; 429, 502,
503 and 504 are retried honouring ``Retry-After``, as are timeouts and network
errors; 401 and 403 hold the (tenant, output) pair as for the http output
(breaker open, reason ``credential_refused``, the batch stays spooled); every
other status is permanent (dead letter).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping

import numpy as np

from ingress.errors import ConfigError, TransportError
from ingress.options import Enum, Option
from ingress.outputs.http import protocol_plugin
from ingress.outputs.httpclient import classify as http_classify
from ingress.outputs.httpclient import gzip_body
from ingress.outputs.metricinfo import info
from ingress.outputs.protobuf import field, fields
from ingress.outputs.protocol import ProtocolOutput, check_tenant_header

log = logging.getLogger("ingress.outputs.otlp")

CONTENT_TYPE = "application/x-protobuf"
RETRYABLE = frozenset({429, 502, 503, 504})
SCOPE_NAME = "ingress"
# gzip level 1: the OTLP message repeats each series' attributes per data point, and
# level 6 spends 2.5x the CPU of level 1 for ~8% fewer bytes (benchmarks/bench_protocols.py).
GZIP_LEVEL = 1


def key_value(key: str, value: str) -> bytes:
    """``KeyValue{key = 1, value = 2: AnyValue{string_value = 1}}`` (the message, no tag)."""
    return field(0x0A, key.encode()) + field(0x12, field(0x0A, value.encode()))


def resource_field(host: str, tenant: str) -> bytes:
    """``ResourceMetrics.resource`` (field 1) with ``host.name`` and ``tenant.id``."""
    attrs = field(0x0A, key_value("host.name", host)) + field(0x0A, key_value("tenant.id", tenant))
    return field(0x0A, attrs)


def scope_field(version: str) -> bytes:
    """``ScopeMetrics.scope`` (field 1): ``InstrumentationScope{name, version}``."""
    return field(0x0A, field(0x0A, SCOPE_NAME.encode()) + field(0x12, version.encode()))


def metric_head(name: str) -> tuple[bytes, int]:
    """(``Metric`` name/description/unit fields, kind 0 gauge or 1 sum) from the declarations."""
    mi = info(name)
    head = field(0x0A, name.encode())
    if mi.description:
        head += field(0x12, mi.description.encode())
    if mi.unit:
        head += field(0x1A, mi.unit.encode())
    return head, (1 if mi.kind == "counter" else 0)


def series_attributes(tags: Mapping[str, str]) -> bytes:
    """``NumberDataPoint.attributes`` entries (field 7), one string attribute per tag, key order."""
    return b"".join(field(0x3A, key_value(k, v)) for k, v in tags.items())


class _TenantCache:
    """One tenant's encoded metric heads and series attributes, reused across batches."""

    MAX = 200_000  # series kept before the cache starts afresh

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.metric_ids: dict[str, int] = {}
        self.heads: list[bytes] = []
        self.kinds = bytearray()
        self.series: dict[tuple, tuple[bytes, int]] = {}
        self._heads_blob: tuple[bytes, np.ndarray, np.ndarray] | None = None

    def tables(self, series) -> tuple:
        """(heads, head offsets, kinds, attributes, attribute offsets, series metric) for ``series``."""
        with self.lock:
            if len(self.series) > self.MAX:
                self._reset()
            attrs = []
            metric = np.empty(len(series), np.uint32)
            for i, (name, tags) in enumerate(series):
                key = (name, tuple(tags.items()))
                hit = self.series.get(key)
                if hit is None:
                    m = self.metric_ids.get(name)
                    if m is None:
                        head, kind = metric_head(name)
                        m = self.metric_ids[name] = len(self.heads)
                        self.heads.append(head)
                        self.kinds.append(kind)
                        self._heads_blob = None
                    hit = self.series[key] = (series_attributes(tags), m)
                attrs.append(hit[0])
                metric[i] = hit[1]
            if self._heads_blob is None:
                off = np.zeros(len(self.heads) + 1, np.int64)
                np.cumsum([len(h) for h in self.heads], out=off[1:])
                self._heads_blob = (b"".join(self.heads), off, np.frombuffer(bytes(self.kinds), np.uint8))
            heads, head_off, kinds = self._heads_blob
        attr_off = np.zeros(len(attrs) + 1, np.int64)
        if attrs:
            np.cumsum([len(a) for a in attrs], out=attr_off[1:])
        return heads, head_off, kinds, b"".join(attrs), attr_off, metric


def encode_batch(payload: bytes, cache: _TenantCache | None = None, version: str | None = None) -> bytes:
    """One ingress batch as an ``ExportMetricsServiceRequest`` (not compressed)."""
    from ingress import __version__, wire
    from ingress._core import _otlp

    b = wire.decode(payload)
    cache = cache if cache is not None else _TenantCache()
    heads, head_off, kinds, attrs, attr_off, metric = cache.tables(b.series)
    return _otlp.encode_export_request(resource_field(b.host, b.tenant), scope_field(version or __version__),
                                       heads, head_off, kinds, attrs, attr_off, metric,
                                       b.series_index, b.timestamps, b.values)


def partial_success(body: bytes) -> tuple[int, str] | None:
    """``(rejected_data_points, error_message)`` of an ``ExportMetricsServiceResponse``, if it has one.

    A body that is not such a message (empty, JSON, garbage) gives None.
    """

    try:
        for num, v in fields(body):
            if num == 1 and isinstance(v, bytes):
                rejected, message = 0, ""
                for n2, v2 in fields(v):
                    if n2 == 1 and isinstance(v2, int):
                        rejected = v2 - (1 << 64) if v2 >= 1 << 63 else v2
                    elif n2 == 2 and isinstance(v2, bytes):
                        message = v2.decode("utf-8", "replace")
                if rejected or message:
                    return rejected, message
    except ValueError:
        return None
    return None


def classify(status: int, body: bytes, retry_after: str | None) -> TransportError | None:
    """The OTLP/HTTP specification's reading of an answer (see the module docstring)."""
    return http_classify(status, body, retry_after, lambda s: s in RETRYABLE)


class OtlpOutput(ProtocolOutput):
    """OTLP/HTTP metrics (protobuf) to ``url``, one request per batch.

    Parameters
    ----------
    name, url, credential, tenants
        As :class:`~ingress.outputs.http.HttpOutput` (``url`` is the full
        endpoint, e.g. ``http://127.0.0.1:4318/v1/metrics``).
    tenant_header
        Header carrying the tenant id (default ``X-Scope-OrgID``); ``""`` sends none.
    compression
        ``"gzip"`` (default) or ``"none"``.
    timeout_s, connect_timeout_s, verify, ca_file, cert_file, key_file, concurrency, idle_s, headers
        As :class:`~ingress.outputs.http.HttpOutput`.
    """

    type = "otlp"
    cache_class = _TenantCache

    def __init__(self, name: str, url: str,
                 credential: Callable[[str], str] | Mapping[str, Callable[[], str]] | None = None,
                 tenants: frozenset[str] | None = None, *, tenant_header: str = "X-Scope-OrgID",
                 compression: str = "gzip", **http) -> None:
        if "format" in http or "gzip" in http:
            raise ConfigError(f"outputs.{name}: otlp has no format or gzip option (see compression)")
        if compression not in ("gzip", "none"):
            raise ConfigError(f"outputs.{name}.compression: {compression!r} is not \"gzip\" or \"none\"")
        self.tenant_header = check_tenant_header(name, tenant_header)
        self.compression = compression
        super().__init__(name, url, credential, tenants, **http)
        self.rejected_points = 0
        self.partial_successes = 0

    def encode(self, payload: bytes, cache: _TenantCache) -> tuple[bytes, dict[str, str]]:
        body = encode_batch(payload, cache)
        headers = {"Content-Type": CONTENT_TYPE}
        if self.compression == "gzip":
            body = gzip_body(body, GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    def response_error(self, batch, status, body, header):
        err = classify(status, body, header("Retry-After"))
        if err is None and body:
            ps = partial_success(body)
            if ps is not None:
                rejected, message = ps
                with self._lock:
                    self.partial_successes += 1
                    self.rejected_points += max(0, rejected)
                log.warning("otlp output %s: tenant %s: batch %s: the receiver rejected %d of %d data points: %s",
                            self.name, batch.tenant, batch.batch_id.hex(), rejected, batch.sample_count,
                            message or "(no message)")
        return err


# --------------------------------------------------------------------------- plugin declaration

PLUGIN = protocol_plugin(
    "otlp", OtlpOutput, "OTLP protobuf",
    "The OTLP/HTTP metrics endpoint, e.g. `http://127.0.0.1:4318/v1/metrics`; `{tenant}` expands to the "
    "tenant id. A tenant's credential, when it configures one, goes as a bearer token.",
    options=(Option("outputs", "compression", Enum("gzip", "none"), "gzip", "Request body compression (gzip level 1)."),),
    args=lambda o: {"compression": o.compression})
