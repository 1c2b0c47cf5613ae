"""The ``json`` output format: one JSON object per sample.

For consumers that cannot decode batches, the file and Kafka outputs can write
every sample as one object of the contract's line format plus the batch id and
host::

    {"tenant": "acme", "name": "cpu.user", "tags": {"cpu": "0"},
     "ts": 1700000000000000000, "value": 1.5, "batch_id": "<32 hex>", "host": "web-1"}

Non-finite values (NaN, +-inf) are written as ``null``: JSON has no literal for
them and a strict consumer would reject the whole line.
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
    b = _wire().decode(payload)
    bid = batch_id_hex(b.batch_id)
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
        yield {
            "tenant": b.tenant,
            "name": name,
            "tags": dict(tags),
            "ts": int(ts[i]),
            "value": float(v) if math.isfinite(v) else None,
            "batch_id": bid,
            "host": b.host,
        }


def sample_lines(payload: bytes) -> list[bytes]:
    """Every sample of one batch as one UTF-8 JSON document (no newline)."""
    return [_dumps(d).encode() for d in sample_dicts(payload)]
