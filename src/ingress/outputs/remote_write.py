"""The Prometheus remote-write output (protocol 1.0): one POST per batch.

Request::

    POST <url, "{tenant}" expanded>            e.g. http://mimir:9009/api/v1/push
    Content-Type: application/x-protobuf
    Content-Encoding: snappy                    (block format, as the protocol wants)
    X-Prometheus-Remote-Write-Version: 0.1.0
    X-Scope-OrgID: <tenant id>                  (``tenant_header``; "" sends none)
    Authorization: Bearer <tenant credential>   (when a credential is configured)
    User-Agent: ingress/<version>

    snappy(WriteRequest)

The ``WriteRequest`` is written by ``ingress._core._remote_write`` from the
batch's columns; each series' labels are encoded once per tenant and reused
(``_SeriesCache``). Names follow the OpenTelemetry-to-Prometheus rules
(:func:`metric_name`, :func:`label_name`, :func:`series_labels`; the table
is in docs/outputs.md).

Answers (the remote-write specification): 2xx acknowledges; 5xx and 429 are
retried with backoff, honouring ``Retry-After``; 401 and 403 hold the
(tenant, output) pair as for the http output (breaker open, reason
``credential_refused``, the batch stays spooled); any other status (400 for an
out-of-order or duplicate sample, 404...) is permanent and sets the batch
aside as a dead letter. Timeouts and network errors are retried.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from ingress.errors import ConfigError, TransportError
from ingress.options import Option, Str
from ingress.outputs.http import HttpOutput, protocol_plugin
from ingress.outputs.httpclient import classify as http_classify
from ingress.outputs.metricinfo import info
from ingress.outputs.protobuf import field
from ingress.outputs.protocol import ProtocolOutput, check_tenant_header

CONTENT_TYPE = "application/x-protobuf"
VERSION_HEADER = ("X-Prometheus-Remote-Write-Version", "0.1.0")

# -- names (OpenTelemetry-to-Prometheus) ----------------------------------------------
_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
    "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
    "TBy": "terabytes", "bit": "bits", "m": "meters", "V": "volts", "A": "amperes", "J": "joules",
    "W": "watts", "g": "grams", "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_]")
_BRACES = re.compile(r"\{[^}]*\}")


def _unit_tokens(unit: str) -> tuple[list[str], list[str]]:
    """(main unit tokens, per-unit tokens) of a UCUM-style unit: "By/s" -> (["bytes"], ["second"])."""
    unit = _BRACES.sub("", unit or "").strip()
    main, _, per = unit.partition("/")
    main = main.strip()
    per = per.strip()
    m = _UNITS.get(main, main)
    p = _PER_UNITS.get(per, per) if per else ""
    return _TOKEN.findall(m), _TOKEN.findall(p)


def metric_name(name: str, kind: str = "gauge", unit: str = "") -> str:
    """The Prometheus name of a metric: ``cpu.time`` (counter, "s") -> ``cpu_time_seconds_total``.

    Split into ASCII letter/digit runs joined by ``_``; the unit's suffix
    appended unless already a token (``By`` -> ``bytes``, ``s`` -> ``seconds``,
    ``By/s`` -> ``bytes_per_second``, ``%`` -> ``percent``); a gauge of unit
    ``1`` ends in ``_ratio``; a counter ends in ``_total``; a leading digit gets
    ``_`` in front. The result matches ``[a-zA-Z_:][a-zA-Z0-9_:]*``.
    """
    tokens = _TOKEN.findall(name)
    main, per = _unit_tokens(unit)
    for t in main:
        if t not in tokens:
            tokens.append(t)
    if per and not all(t in tokens for t in per):
        tokens += ["per", *per]
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    elif (unit or "").strip() == "1":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    out = "_".join(tokens) or "_"
    return "_" + out if out[0].isdigit() else out


def label_name(key: str) -> str:
    """The Prometheus label name of a tag key (``[a-zA-Z_][a-zA-Z0-9_]*``, never ``__...``).

    Every character other than an ASCII letter, digit or ``_`` becomes ``_``; a
    leading digit gets ``key_`` in front, a leading ``_`` gets ``key`` (names
    starting with ``__`` are Prometheus's own); the empty key is ``key_``.
    """
    out = _NOT_LABEL.sub("_", key)
    if not out:
        return "key_"
    if out[0].isdigit():
        return "key_" + out
    if out[0] == "_":
        return "key" + out
    return out


def series_labels(name: str, tags: Mapping[str, str], host: str, tenant: str | None = None,
                  tenant_label: str | None = None) -> list[tuple[str, str]]:
    """Every label of one series, sorted by name (byte order), ``__name__`` included.

    Tags whose keys sanitise to the same name are merged, their values joined
    with ``;`` in the order of the original keys. A tag whose name is one the
    agent sets (``__name__``, ``host``, the tenant label) is kept as
    ``exported_<name>``. Labels with an empty value are left out (Prometheus
    treats them as absent).
    """
    mi = info(name)
    own = {"__name__": metric_name(name, mi.kind, mi.unit)}
    if host:
        own["host"] = host
    if tenant_label and tenant:
        own[tenant_label] = tenant
    merged: dict[str, list[str]] = {}
    for k in sorted(tags):
        v = tags[k]
        if v == "":
            continue
        ln = label_name(k)
        while ln in own:
            ln = "exported_" + ln
        merged.setdefault(ln, []).append(v)
    labels = dict(own)
    for ln, vs in merged.items():
        labels[ln] = ";".join(vs)
    return sorted(labels.items(), key=lambda kv: kv[0].encode())


def encode_labels(labels: list[tuple[str, str]]) -> bytes:
    """``TimeSeries.labels`` entries (field 1, each a ``Label{name=1, value=2}``)."""
    return b"".join(field(0x0A, field(0x0A, k.encode()) + field(0x12, v.encode())) for k, v in labels)


class _SeriesCache:
    """One tenant's encoded labels per (name, tags), reused across batches."""

    MAX = 200_000  # series kept before the cache starts afresh

    def __init__(self) -> None:
        self.labels: dict[tuple, bytes] = {}

    def blobs(self, series, host: str, tenant: str, tenant_label: str | None) -> tuple[bytes, np.ndarray]:
        cache = self.labels
        if len(cache) > self.MAX:
            cache.clear()
        parts = []
        for name, tags in series:
            key = (host, name, tuple(tags.items()))
            blob = cache.get(key)
            if blob is None:
                blob = cache[key] = encode_labels(series_labels(name, tags, host, tenant, tenant_label))
            parts.append(blob)
        offsets = np.zeros(len(parts) + 1, np.int64)
        if parts:
            np.cumsum([len(p) for p in parts], out=offsets[1:])
        return b"".join(parts), offsets


def encode_batch(payload: bytes, cache: _SeriesCache | None = None, tenant_label: str | None = None,
                 compress: bool = True) -> tuple[bytes, int]:
    """One ingress batch as a remote-write body: (snappy(WriteRequest) or the raw message, samples)."""
    from ingress import wire
    from ingress._core import _remote_write

    b = wire.decode(payload)
    cache = cache if cache is not None else _SeriesCache()
    blob, offsets = cache.blobs(b.series, b.host, b.tenant, tenant_label)
    msg, n = _remote_write.encode_write_request(blob, offsets, b.series_index, b.timestamps, b.values)
    if compress:
        import cramjam

        msg = bytes(cramjam.snappy.compress_raw(msg))
    return msg, n


def classify(status: int, body: bytes, retry_after: str | None) -> TransportError | None:
    """The remote-write specification's reading of an answer: 2xx ok, 5xx/429 retry, else permanent."""
    return http_classify(status, body, retry_after, lambda s: s == 429 or s >= 500)


class RemoteWriteOutput(ProtocolOutput):
    """Prometheus remote write 1.0 to ``url``, one request per batch.

    Parameters
    ----------
    name, url, credential, tenants
        As :class:`~ingress.outputs.http.HttpOutput` (``url`` is the
        receiver's write endpoint, e.g. ``http://127.0.0.1:9090/api/v1/write``).
    tenant_header
        Header carrying the tenant id (default ``X-Scope-OrgID``, how Mimir and
        Cortex separate tenants); ``""`` sends none.
    tenant_label
        When set (e.g. ``"tenant"``), every series also gets this label with the
        tenant id.
    timeout_s, connect_timeout_s, verify, ca_file, cert_file, key_file, concurrency, idle_s, headers
        As :class:`~ingress.outputs.http.HttpOutput`.
    """

    type = "remote_write"
    cache_class = _SeriesCache

    def __init__(self, name: str, url: str,
                 credential: Callable[[str], str] | Mapping[str, Callable[[], str]] | None = None,
                 tenants: frozenset[str] | None = None, *, tenant_header: str = "X-Scope-OrgID",
                 tenant_label: str | None = None, **http) -> None:
        if "format" in http or "gzip" in http:
            raise ConfigError(f"outputs.{name}: remote_write has no format or gzip option "
                              f"(the body is protobuf + snappy)")
        tenant_header = check_tenant_header(name, tenant_header)
        if tenant_label and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", tenant_label):
            raise ConfigError(f"outputs.{name}.tenant_label: {tenant_label!r} is not a Prometheus label name "
                              f"([a-zA-Z][a-zA-Z0-9_]*)")
        if tenant_label in ("host",):
            raise ConfigError(f"outputs.{name}.tenant_label: {tenant_label!r} is the host label")
        self.tenant_header = tenant_header
        self.tenant_label = tenant_label or None
        super().__init__(name, url, credential, tenants, **http)
        self.samples_sent = 0

    reserved_headers = HttpOutput.reserved_headers | {"x-prometheus-remote-write-version"}

    def encode(self, payload: bytes, cache: _SeriesCache) -> tuple[bytes, dict[str, str]]:
        body, _ = encode_batch(payload, cache, self.tenant_label)
        return body, {"Content-Type": CONTENT_TYPE, "Content-Encoding": "snappy",
                      VERSION_HEADER[0]: VERSION_HEADER[1]}

    def response_error(self, batch, status, body, header):
        return classify(status, body, header("Retry-After"))


# --------------------------------------------------------------------------- plugin declaration

PLUGIN = protocol_plugin(
    "remote_write", RemoteWriteOutput, "remote-write protobuf + snappy",
    "The receiver's remote-write endpoint, e.g. `http://127.0.0.1:9090/api/v1/write`; `{tenant}` expands "
    "to the tenant id. A tenant's credential, when it configures one, goes as a bearer token.",
    options=(Option("outputs", "tenant_label", Str(empty=True), "",
                    "When set (e.g. `\"tenant\"`), a label with the tenant id on every series."),),
    args=lambda o: {"tenant_label": o.tenant_label or None})
