"""Shared helpers for the output unit tests.

``fake_wire`` stands in for :mod:`ingress.wire` where a test is about an
output's framing, not about the codec: its "batch" is a JSON document, so the
test can see exactly which samples went in. Tests of the real codec round trip
live in tests/integration (they import ``ingress.wire`` itself).
"""
from __future__ import annotations

import json
import os
import types
from dataclasses import dataclass

import pytest

from ingress.outputs.base import OutgoingBatch


@dataclass
class FakeBatch:
    tenant: str
    host: str
    batch_id: bytes
    series: list
    series_index: list
    timestamps: list
    values: list


def fake_encode(tenant, host, series, series_index, timestamps, values, batch_id=None):
    batch_id = batch_id or os.urandom(16)
    return json.dumps({"tenant": tenant, "host": host, "batch_id": batch_id.hex(), "series": series,
                       "series_index": list(series_index), "timestamps": list(timestamps),
                       "values": list(values)}).encode()


def fake_decode(data):
    from ingress.errors import WireError

    try:
        d = json.loads(data)
    except ValueError as e:
        raise WireError(f"not a batch: {e}") from None
    return FakeBatch(d["tenant"], d["host"], bytes.fromhex(d["batch_id"]),
                     [(n, t) for n, t in d["series"]], d["series_index"], d["timestamps"], d["values"])


def fake_peek(data):
    b = fake_decode(data)
    return types.SimpleNamespace(tenant=b.tenant, host=b.host, batch_id=b.batch_id,
                                 sample_count=len(b.values))


@pytest.fixture
def fake_wire(monkeypatch):
    mod = types.SimpleNamespace(encode=fake_encode, decode=fake_decode, peek=fake_peek)
    import ingress.outputs.jsonfmt as jf

    monkeypatch.setattr(jf, "_wire", lambda: mod)
    return mod


def make_batch(tenant="acme", n=3, host="web-1", payload=None, batch_id=None):
    bid = batch_id or os.urandom(16)
    if payload is None:
        payload = fake_encode(tenant, host, [["cpu.user", {"cpu": "0"}], ["mem.used", {}]],
                              [i % 2 for i in range(n)], [1_000 + i for i in range(n)],
                              [float(i) for i in range(n)], batch_id=bid)
    return OutgoingBatch(tenant=tenant, batch_id=bid, payload=payload, sample_count=n, host=host)


@pytest.fixture
def batch_factory():
    return make_batch
