"""Behaviour of the per-tenant batcher (ingress.buffer.batcher), with a fake encoder."""
from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest

import ingress
from ingress.buffer import SAMPLE_BYTES, RingSet, SeriesRegistry
from ingress.buffer.batcher import Batcher, ClosedBatch

MS = 1_000_000
S = 1000 * MS


class FakeEncoder:
    """Records what it was given (copied: the batcher reuses its buffers).

    The payload is ``bytes_per_sample`` bytes per sample, so byte-limit
    arithmetic is exact; ``decoded(payload)`` returns the recorded call.
    """

    def __init__(self, bytes_per_sample: int = 8, fail_for: str | None = None) -> None:
        self.bps = bytes_per_sample
        self.fail_for = fail_for
        self.calls: list[dict] = []

    def __call__(self, tenant, host, series, series_index, timestamps, values, batch_id):
        if tenant == self.fail_for:
            raise ValueError(f"tenant {tenant}: cannot encode")
        call = dict(tenant=tenant, host=host, series=list(series),
                    index=np.array(series_index), ts=np.array(timestamps),
                    values=np.array(values), batch_id=batch_id)
        self.calls.append(call)
        return len(self.calls).to_bytes(4, "little") + b"\0" * (self.bps * len(values) - 4)

    def decoded(self, payload: bytes) -> dict:
        return self.calls[int.from_bytes(payload[:4], "little") - 1]


def setup(n_tenants=1, cap=10_000, **kw):
    rings = RingSet(n_tenants, SAMPLE_BYTES * cap * n_tenants)
    reg = SeriesRegistry(n_tenants, ttl_s=60)
    enc = kw.pop("encode", None) or FakeEncoder()
    names = [f"t{i}" for i in range(n_tenants)]
    clock = [0]
    b = Batcher(rings, reg, names, "web-1", encode=enc, clock_ns=lambda: clock[0], **kw)
    return rings, reg, enc, b, clock


def push(rings, reg, t, names, ts0=0, value0=0.0):
    sids = np.array([reg.intern(t, n) for n in names], np.uint32)
    n = len(names)
    rings.push(t, sids, np.arange(ts0, ts0 + n, dtype=np.int64),
               value0 + np.arange(n, dtype=np.float64), 0)
    return sids


def names_of(enc: FakeEncoder, batch: ClosedBatch) -> list[str]:
    call = enc.decoded(batch.payload)
    return [call["series"][i][0] for i in call["index"].tolist()]


# -- closing rules -------------------------------------------------------------------


def test_closes_at_max_samples_and_resolves_series():
    rings, reg, enc, b, _ = setup(max_samples=100, initial_bytes_per_sample=1.0)
    names = [f"m{i % 7}" for i in range(250)]
    push(rings, reg, 0, names, ts0=1000)
    out = b.poll()
    assert [x.sample_count for x in out] == [100, 100]
    assert b.pending(0) == 50 and rings.size(0) == 0
    assert names_of(enc, out[0]) == names[:100]
    assert names_of(enc, out[1]) == names[100:200]
    call = enc.decoded(out[1].payload)
    assert call["tenant"] == "t0" and call["host"] == "web-1"
    assert call["ts"].tolist() == list(range(1100, 1200))
    assert call["values"].tolist() == [float(i) for i in range(100, 200)]
    assert (out[1].first_ts, out[1].last_ts) == (1100, 1199)
    assert b.stats()["t0"]["closed_by"]["samples"] == 2


def test_closes_by_age_of_first_sample():
    rings, reg, enc, b, clock = setup()
    push(rings, reg, 0, ["a"] * 3)
    clock[0] = 5 * S
    assert b.poll() == []
    assert b.next_deadline_ns() == 5 * S + 1000 * MS
    clock[0] = 5 * S + 600 * MS
    push(rings, reg, 0, ["b"] * 2)
    assert b.poll() == [] and b.pending(0) == 5
    clock[0] = 5 * S + 999 * MS
    assert b.poll() == []
    clock[0] = 5 * S + 1000 * MS
    (batch,) = b.poll()
    assert batch.sample_count == 5 and names_of(enc, batch) == ["a"] * 3 + ["b"] * 2
    assert b.stats()["t0"]["closed_by"]["age"] == 1
    assert b.next_deadline_ns() is None


def test_closes_by_estimated_bytes():
    # 10 bytes/sample once measured; the first batch is cut by the initial estimate.
    rings, reg, enc, b, _ = setup(encode=FakeEncoder(10), max_samples=1000, max_bytes=1000,
                                  initial_bytes_per_sample=24.0)
    push(rings, reg, 0, ["x"] * 300)
    out = b.poll()
    assert [x.sample_count for x in out] == [41, 100, 100]
    assert b.pending(0) == 59
    assert all(len(x.payload) <= 1000 for x in out)
    st = b.stats()["t0"]
    assert st["closed_by"]["bytes"] == 3 and st["bytes_per_sample"] == 10.0
    assert st["samples"] == 241 and st["bytes"] == 2410


def test_batch_accumulates_across_polls():
    rings, reg, enc, b, clock = setup(max_samples=10, initial_bytes_per_sample=1.0)
    for i in range(4):
        push(rings, reg, 0, [f"s{i}"] * 3)
        clock[0] += 100 * MS
        out = b.poll()
        assert out == [] if i < 3 else [x.sample_count for x in out] == [10]
    assert b.pending(0) == 2


def test_never_mixes_tenants():
    rings, reg, enc, b, _ = setup(n_tenants=3, max_samples=4, initial_bytes_per_sample=1.0)
    push(rings, reg, 0, ["a0"] * 5)
    push(rings, reg, 2, ["c0"] * 9)
    out = b.poll() + b.flush()
    assert [(x.tenant, x.sample_count) for x in out] == [
        ("t0", 4), ("t2", 4), ("t2", 4), ("t0", 1), ("t2", 1)]
    for x in out:
        assert enc.decoded(x.payload)["tenant"] == x.tenant
        assert set(names_of(enc, x)) == {"a0" if x.tenant == "t0" else "c0"}


def test_batch_ids_are_16_random_bytes():
    rings, reg, enc, b, _ = setup(max_samples=1, initial_bytes_per_sample=1.0)
    push(rings, reg, 0, ["a"] * 50)
    out = b.poll()
    ids = [x.batch_id for x in out]
    assert len(ids) == 50 and all(len(i) == 16 for i in ids) and len(set(ids)) == 50
    assert [enc.decoded(x.payload)["batch_id"] for x in out] == ids


def test_flush_closes_everything():
    rings, reg, enc, b, _ = setup(n_tenants=2)
    push(rings, reg, 0, ["a"] * 3)
    b.poll()
    push(rings, reg, 0, ["b"] * 2)
    push(rings, reg, 1, ["c"])
    out = b.flush()
    assert [(x.tenant, x.sample_count) for x in out] == [("t0", 5), ("t1", 1)]
    assert b.pending(0) == b.pending(1) == 0 and rings.size(0) == rings.size(1) == 0
    assert b.stats()["t0"]["closed_by"]["flush"] == 1
    assert b.flush() == [] and b.poll() == []


def test_first_and_last_ts_are_the_span():
    rings, reg, enc, b, _ = setup()
    sids = np.array([reg.intern(0, "a")] * 4, np.uint32)
    rings.push(0, sids, np.array([50, 10, 90, 30], np.int64), np.zeros(4), 0)
    (batch,) = b.flush()
    assert (batch.first_ts, batch.last_ts) == (10, 90)


# -- encoder failures and the default encoder ----------------------------------------------


def test_encode_failure_is_counted_and_other_tenants_go_on(caplog):
    rings, reg, enc, b, _ = setup(n_tenants=2, encode=FakeEncoder(fail_for="t0"))
    push(rings, reg, 0, ["a"] * 3)
    push(rings, reg, 1, ["b"] * 2)
    with caplog.at_level(logging.ERROR, logger="ingress.buffer"):
        out = b.flush()
    assert [(x.tenant, x.sample_count) for x in out] == [("t1", 2)]
    st = b.stats()["t0"]
    assert st["encode_errors"] == 1 and st["samples_lost"] == 3 and st["pending"] == 0
    assert len(caplog.records) == 1 and "tenant t0: cannot encode" in caplog.records[0].getMessage()


def test_default_encoder_is_ingress_wire_encode(monkeypatch):
    fake = FakeEncoder()
    wire = types.ModuleType("ingress.wire")
    wire.encode = fake
    monkeypatch.setitem(sys.modules, "ingress.wire", wire)
    monkeypatch.setattr(ingress, "wire", wire, raising=False)
    rings = RingSet(1, SAMPLE_BYTES * 100)
    reg = SeriesRegistry(1)
    b = Batcher(rings, reg, ["acme"], "h")
    push(rings, reg, 0, ["a", "b"])
    (batch,) = b.flush()
    assert fake.decoded(batch.payload)["tenant"] == "acme"


@pytest.mark.parametrize("kwargs, word", [
    (dict(tenants=["a", "b"]), "tenants"),
    (dict(max_samples=0), "max_samples"),
    (dict(max_bytes=0), "max_bytes"),
    (dict(max_age_ms=0), "max_age_ms"),
])
def test_bad_construction_names_the_argument(kwargs, word):
    rings = RingSet(1, 2400)
    args = dict(tenants=["a"], host="h", encode=FakeEncoder())
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        Batcher(rings, SeriesRegistry(1), **args)
    with pytest.raises(ValueError, match="registry"):
        Batcher(rings, SeriesRegistry(2), ["a"], "h")


# -- quarantined ids are released only once no pending sample uses them --------------------


def test_evicted_id_is_not_reused_while_a_pending_batch_refers_to_it():
    rings, reg, enc, b, clock = setup()
    x = reg.intern(0, "old", now_ns=0)
    push(rings, reg, 0, ["old"] * 3)
    assert {t: ids.tolist() for t, ids in reg.evict(100 * S).items()} == {0: [x]}
    assert b.poll() == [] and b.pending(0) == 3     # drained, batch still open
    assert reg.quarantined(0) == 1
    assert reg.intern(0, "new") != x                 # quarantined id is not handed out
    clock[0] = 2 * S
    (batch,) = b.poll()                             # closes by age, then releases
    assert names_of(enc, batch) == ["old"] * 3
    assert reg.quarantined(0) == 0
    assert reg.intern(0, "newer") == x              # now it may be reused


def test_release_waits_for_the_tail_of_a_split_drain():
    rings, reg, enc, b, clock = setup(max_samples=4, initial_bytes_per_sample=1.0)
    x = reg.intern(0, "old", now_ns=0)
    push(rings, reg, 0, ["old"] * 6)
    reg.evict(100 * S)
    out = b.poll()                                  # one batch of 4 closes mid-drain
    assert [o.sample_count for o in out] == [4] and b.pending(0) == 2
    assert reg.quarantined(0) == 1                  # two samples of `old` still pending
    push(rings, reg, 0, ["fresh"] * 4)
    out = b.poll()                                  # closes [old, old, fresh, fresh]
    assert names_of(enc, out[0]) == ["old", "old", "fresh", "fresh"]
    # The drain loop that emptied the ring before this close read the eviction's
    # epoch, so every `old` sample is encoded and the id is free.
    assert reg.quarantined(0) == 0
    assert reg.intern(0, "again") == x


def test_eviction_during_an_open_batch_is_not_released_by_its_close():
    rings, reg, enc, b, clock = setup(max_samples=4, initial_bytes_per_sample=1.0)
    reg.intern(0, "old", now_ns=0)
    push(rings, reg, 0, ["old"] * 2)
    b.poll()                                        # pending: 2 x old
    reg.evict(100 * S)                              # after the drain read its epoch
    push(rings, reg, 0, ["fresh"] * 2)
    out = b.poll()
    assert [o.sample_count for o in out] == [4]
    # The close happened inside a drain loop that started after the eviction; the
    # loop completed with nothing pending, so the id is free only after it.
    assert reg.quarantined(0) == 0
