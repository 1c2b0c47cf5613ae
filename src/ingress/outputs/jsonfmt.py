"""The ``json`` output format: one JSON object per sample.

For consumers that cannot decode batches, the file and Kafka outputs can write
every sample as one object of the contract's line format plus the batch id and
host::

    {"tenant": "acme", "name": "cpu.time", "tags": {"cpu": "0", "mode": "user"},
     "ts": 1700000000000000000, "value": 1.5, "batch_id": "<32 hex>", "host": "web-1",
     "kind": "counter", "unit": "s"}

``kind`` (``"gauge"`` or ``"counter"``) and ``unit`` come from the collectors'
declarations (:mod:`ingress.outputs.metricinfo`); both are left out for a
metric no collector declares, and ``unit`` for a metric declared without one.
docs/ingress-json-1.schema.json is the JSON Schema of one line.

Non-finite values (NaN, +-inf) are written as ``null``: JSON has no literal for
them and a strict consumer would reject the whole line.

``ndjson_body`` joins a batch's lines with newlines (each line ends with one):
the body of an HTTP request, or of one Kafka message, in format ``json`` with
one message per batch.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterator, Mapping

SCHEMA_BATCH = "ingress-batch/1"
SCHEMA_JSON = "ingress-json/1"
FORMATS = ("batch", "json")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _wire() -> Any:
    # Imported lazily: the codec is only needed by the json format and the
    # batch format must work without touching it.
    from ingress import wire

    return wire


def batch_id_hex(batch_id: bytes | str) -> str:
    """The batch id as 32 lowercase hex characters, whatever form it came in."""
    if isinstance(batch_id, (bytes, bytearray, memoryview)):
        return bytes(batch_id).hex()
    return str(batch_id).lower()


def sample_row(tenant: str, name: str, tags: Mapping[str, str], ts: int, value: float, **extra: Any) -> dict:
    """One sample as the contract's line object: ``tenant``, ``name``, ``tags``, ``ts``
    (int ns), ``value`` (``None`` when not finite), then ``extra`` (``batch_id``, ``host``).

    The one place that builds it: ``ingress run --once``, ``ingress decode`` and
    the json format of the outputs all go through it."""
    v = float(value)
    row = {"tenant": tenant, "name": name, "tags": dict(tags), "ts": int(ts),
           "value": v if math.isfinite(v) else None}
    if extra:
        row.update(extra)
    return row


def sample_json(tenant: str, name: str, tags: Mapping[str, str], ts: int, value: float, **extra: Any) -> str:
    """:func:`sample_row` as the command line prints it (``json.dumps``, no newline)."""
    return json.dumps(sample_row(tenant, name, tags, ts, value, **extra))


def batch_rows(b: Any, kinds: bool = False) -> Iterator[dict]:
    """Every sample of a decoded batch (:func:`ingress.wire.decode`) as a
    :func:`sample_row` with the batch's ``batch_id`` and ``host``; with ``kinds``
    also ``kind`` and ``unit`` where a collector declares them (the json output
    format; ``ingress decode`` keeps the contract's line)."""
    bid = batch_id_hex(b.batch_id)
    series = b.series
    extra: dict[str, dict] = {}  # per metric name: the kind/unit keys, looked up once
    if kinds:
        from ingress.outputs.metricinfo import metric_table

        table = metric_table()
        for name, _ in series:
            if name not in extra:
                mi = table.get(name)
                extra[name] = {} if mi is None else ({"kind": mi.kind, "unit": mi.unit} if mi.unit
                                                      else {"kind": mi.kind})
    idx = b.series_index
    ts = b.timestamps
    vals = b.values
    # Convert the columns once; per-element numpy scalar access is much slower.
    idx = idx.tolist() if hasattr(idx, "tolist") else list(idx)
    ts = ts.tolist() if hasattr(ts, "tolist") else list(ts)
    vals = vals.tolist() if hasattr(vals, "tolist") else list(vals)
    tenant, host = b.tenant, b.host
    for i in range(len(vals)):
        name, tags = series[idx[i]]
        yield sample_row(tenant, name, tags, ts[i], vals[i], batch_id=bid, host=host, **extra.get(name, {}))


def sample_dicts(payload: bytes) -> Iterator[dict]:
    """Decode one batch and yield one dict per sample in the contract line format,
    with ``kind`` and ``unit`` (the json output format).

    Raises
    ------
    ingress.errors.WireError
        The payload is not a valid batch.
    """
    return batch_rows(_wire().decode(payload), kinds=True)


def sample_lines(payload: bytes) -> list[bytes]:
    """Every sample of one batch as one UTF-8 JSON document (no newline)."""
    return [_dumps(d).encode() for d in sample_dicts(payload)]


def ndjson_body(payload: bytes) -> bytes:
    """Every sample of one batch as newline-delimited JSON, each line ending in ``\\n``."""
    lines = sample_lines(payload)
    if not lines:
        return b""
    return b"\n".join(lines) + b"\n"
