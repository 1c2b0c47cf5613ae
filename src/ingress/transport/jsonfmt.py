"""The ``json`` output format: one JSON object per sample.

For consumers that cannot decode batches, the file and Kafka outputs can write
every sample as one object of the contract's line format plus the batch id and
host::

    {"tenant": "acme", "name": "cpu.time", "tags": {"cpu": "0", "mode": "user"},
     "ts": 1700000000000000000, "value": 1.5, "batch_id": "<32 hex>", "host": "web-1",
     "kind": "counter", "unit": "s"}

``kind`` (``"gauge"`` or ``"counter"``) and ``unit`` come from the collectors'
declarations (:mod:`ingress.transport.metricinfo`); both are left out for a
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
from typing import Any, Iterator

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


def sample_dicts(payload: bytes) -> Iterator[dict]:
    """Decode one batch and yield one dict per sample in the contract line format.

    Raises
    ------
    ingress.errors.WireError
        The payload is not a valid batch.
    """
    from ingress.transport.metricinfo import metric_table

    b = _wire().decode(payload)
    bid = batch_id_hex(b.batch_id)
    table = metric_table()
    extra: dict[str, dict] = {}  # per metric name: the kind/unit keys, looked up once
    for name, _ in b.series:
        if name not in extra:
            mi = table.get(name)
            extra[name] = {} if mi is None else ({"kind": mi.kind, "unit": mi.unit} if mi.unit
                                                  else {"kind": mi.kind})
    series = b.series
    idx = b.series_index
    ts = b.timestamps
    vals = b.values
    # Convert the columns once; per-element numpy scalar access is much slower.
    idx = idx.tolist() if hasattr(idx, "tolist") else list(idx)
    ts = ts.tolist() if hasattr(ts, "tolist") else list(ts)
    vals = vals.tolist() if hasattr(vals, "tolist") else list(vals)
    for i in range(len(vals)):
        name, tags = series[idx[i]]
        v = vals[i]
        d = {
            "tenant": b.tenant,
            "name": name,
            "tags": dict(tags),
            "ts": int(ts[i]),
            "value": float(v) if math.isfinite(v) else None,
            "batch_id": bid,
            "host": b.host,
        }
        d.update(extra[name])
        yield d


def sample_lines(payload: bytes) -> list[bytes]:
    """Every sample of one batch as one UTF-8 JSON document (no newline)."""
    return [_dumps(d).encode() for d in sample_dicts(payload)]


def ndjson_body(payload: bytes) -> bytes:
    """Every sample of one batch as newline-delimited JSON, each line ending in ``\\n``."""
    lines = sample_lines(payload)
    if not lines:
        return b""
    return b"\n".join(lines) + b"\n"
