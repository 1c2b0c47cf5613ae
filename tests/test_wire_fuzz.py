"""Mutation fuzzing of ingress.wire.decode: every mutant decodes or raises WireError.

Mutants come from valid batches by bit flips, truncations, splices and
rewritten length/count fields. Flipping framed bytes mostly exercises the
checksums, so most mutants are made on the RAW body and framed again with valid
checksums (wire_reference.frame), which drives them into the column parsers.
Whatever ingress.wire makes of a mutant, the pure-Python reference must make
the same: both decode it to the same batch, or both refuse it.

Decode limits (issue 8): hand-built batches whose counts are backed by bytes
(millions of samples in a few KB of hand-made lz4) under random limits decode
or raise WireError, and decode's traced allocation stays within the bound the
limits promise.
"""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire_reference as ref
from ingress import errors, wire
from ingress.errors import WireError

SEED = int(os.environ.get("INGRESS_FUZZ_SEED", "20240601"))
ROUNDS = int(os.environ.get("INGRESS_FUZZ_ROUNDS", "10000"))
BID = b"\x5a" * 16


def corpus(rng) -> list[bytes]:
    out = []
    # tick-major: runs of timestamps, mixed codecs
    ns, nt = 12, 6
    series = [("cpu", {"cpu": str(i), "mode": "user"}) for i in range(ns)]
    idx = np.tile(np.arange(ns, dtype=np.uint32), nt)
    ts = np.repeat(10**18 + np.arange(nt) * 10**9, ns)
    vals = np.round(rng.random(ns * nt) * 100, 1)
    vals[idx % 3 == 0] = rng.random((idx % 3 == 0).sum())       # XOR
    vals[idx % 4 == 1] = 7.0                                       # CONST
    out.append(wire.encode("acme", "web-1", series, idx, ts, vals, BID))
    # per-sample timestamps, special floats, UTF-8
    n = 20
    specials = np.array([np.nan, -0.0, np.inf, 5e-324, 1.5, -2.25, 1e300, 0.0] * 3)[:n]
    out.append(wire.encode("t-1", "hôte", [("é", {"ключ": "🙂"}), ("b", {})],
                           rng.integers(0, 2, n).astype(np.uint32),
                           rng.integers(-2**62, 2**62, n), specials, BID))
    # single sample, uncompressed body
    out.append(wire.encode("a", "", [("m", {})], [0], [5], [1.0], BID))
    # empty with an unused series
    out.append(wire.encode("z9", "h", [("unused", {"k": "v"})], [], [], [], BID))
    return out


def mutate_bytes(rng, data: bytes, others: list[bytes]) -> bytes:
    kind = rng.integers(0, 5)
    b = bytearray(data)
    if kind == 0 and b:  # bit flips
        for _ in range(rng.integers(1, 4)):
            pos = rng.integers(0, len(b))
            b[pos] ^= 1 << rng.integers(0, 8)
    elif kind == 1:  # truncation
        del b[rng.integers(0, len(b) + 1):]
    elif kind == 2:  # splice with another sample
        other = others[rng.integers(0, len(others))]
        cut = rng.integers(0, len(b) + 1)
        b = b[:cut] + other[rng.integers(0, len(other) + 1):]
    elif kind == 3 and b:  # overwrite a run with random or extreme bytes
        pos = rng.integers(0, len(b))
        fill = rng.choice([0x00, 0xFF, 0x80, int(rng.integers(0, 256))])
        b[pos:pos + rng.integers(1, 12)] = bytes([fill]) * int(rng.integers(1, 12))
    else:  # insert random bytes
        pos = rng.integers(0, len(b) + 1)
        b[pos:pos] = rng.bytes(int(rng.integers(1, 8)))
    return bytes(b)


def mutate_framed(rng, data: bytes, others: list[bytes]) -> bytes:
    fields, raw = ref.unframe(data)
    choice = rng.integers(0, 4)
    override = {}
    if choice == 0:  # raw body mutations behind valid checksums
        raw = mutate_bytes(rng, raw, [ref.unframe(o)[1] for o in others])
    elif choice == 1:  # rewrite a count in the header
        key = ["n", "nser"][rng.integers(0, 2)]
        fields[key] = int(rng.choice([0, 1, fields[key] + 1, max(fields[key] - 1, 0),
                                      2**31, 2**32 - 1, int(rng.integers(0, 1000))]))
    elif choice == 2:  # rewrite a length in the header
        key = ["raw_len", "body_len", "host_len", "tenant_len"][rng.integers(0, 4)]
        override[key] = int(rng.choice([0, 1, 2**32 - 1, 255, int(rng.integers(0, 300))]))
        if key in ("host_len", "tenant_len"):
            override[key] = min(override[key], 255)
    else:  # a varint somewhere in the raw body made long or huge
        b = bytearray(raw)
        pos = rng.integers(0, len(b) + 1)
        b[pos:pos] = rng.choice([b"\xff" * 10 + b"\x01", b"\xff" * 11, b"\x80" * 3 + b"\x00",
                                 ref.varint(2**63), b"\x80"])
        raw = bytes(b)
    return ref.frame(raw, fields["tenant"], fields["host"], fields["batch_id"],
                     fields["n"], fields["nser"], compress=bool(rng.integers(0, 2)) or None,
                     **override)


def same_as_reference(data: bytes) -> tuple[str, object]:
    try:
        b = wire.decode(data)
    except WireError:
        outcome = "error"
        got = None
    else:
        outcome = "ok"
        got = b
    try:
        r = ref.decode(data)
    except ref.RefError:
        assert outcome == "error", f"reference refuses what wire decoded: {data.hex()}"
        return outcome, got
    assert outcome == "ok", f"wire refuses what the reference decodes: {data.hex()}"
    assert r["series"] == got.series
    assert r["series_index"] == got.series_index.tolist()
    assert r["timestamps"] == got.timestamps.tolist()
    assert np.array_equal(np.array(r["values"], np.float64).view(np.uint64),
                          got.values.view(np.uint64))
    return outcome, got


def test_fuzz_mutants_decode_or_raise_wire_error():
    print(f"fuzz seed {SEED} (INGRESS_FUZZ_SEED), {ROUNDS} rounds")
    rng = np.random.default_rng(SEED)
    seeds = corpus(rng)
    for data in seeds:
        assert same_as_reference(data)[0] == "ok"
    outcomes = {"ok": 0, "error": 0}
    for i in range(ROUNDS):
        base = seeds[rng.integers(0, len(seeds))]
        framed = rng.random() < 0.7
        mutant = mutate_framed(rng, base, seeds) if framed else mutate_bytes(rng, base, seeds)
        try:
            outcome, _ = same_as_reference(mutant)
        except WireError:
            raise
        except AssertionError:
            raise
        except Exception as exc:  # anything but WireError is a bug
            pytest.fail(f"round {i}: {type(exc).__name__}: {exc} for {mutant.hex()}")
        outcomes[outcome] += 1
    print(outcomes)
    # the mutator must reach past the checksums, or this test proves little
    assert outcomes["ok"] > ROUNDS // 50 and outcomes["error"] > ROUNDS // 2


# ------------------------------------------------------------------ decode limits (issue 8)
def _small_or_large(small: int, large: int):
    return st.integers(0, small) | st.integers(0, large) | st.just(large)


@st.composite
def limited_batches(draw):
    """(batch bytes, DecodeLimits): hand-built batches whose counts are all backed by bytes.

    One string table, series that all name string 0 with the same tag keys,
    ``n`` samples of series 0 (an index column of zero bytes), one timestamp
    run and a CONST value. The index column goes into a hand-made lz4 block
    (``ref.lz4_run_block``), so millions of samples cost a few KB and the
    raw/compressed ratio nears lz4's 255; or the body is stored, or compressed
    by lz4 itself. Sometimes a header count or raw_len is rewritten.
    """
    limits = wire.DecodeLimits(
        max_samples=draw(_small_or_large(3_000, 40_000)),
        max_series=draw(_small_or_large(100, 600)),
        max_tags=draw(_small_or_large(200, 3_000)),
        max_strings=draw(_small_or_large(100, 900)),
        max_string_bytes=draw(_small_or_large(2_000, 60_000)),
        max_raw_bytes=draw(_small_or_large(20_000, 400_000)),
        max_ratio=draw(st.integers(1, 255) | st.floats(1, 255)))
    # each count either within its limit or anywhere, so every check is reached
    n_strings = draw(st.integers(1, max(1, min(limits.max_strings, 1_000))) | st.integers(1, 1_000))
    pad = draw(st.integers(0, 80))
    n_series = draw(st.integers(1, max(1, min(limits.max_series, 700))) | st.integers(1, 700))
    most = min(n_strings, 40)
    n_tags = draw(st.integers(0, min(most, limits.max_tags // n_series)) | st.integers(0, most)
                  | st.just(most))
    n = draw(st.integers(0, min(limits.max_samples, 200_000)) | st.integers(0, 4_000_000))
    strings = [format(i, "x").encode() + b"a" * pad for i in range(n_strings)]
    V = ref.varint
    dictionary = (V(n_strings) + b"".join(V(len(s)) + s for s in strings) + V(0) * n_series
                  + V(n_tags) * n_series + b"".join(V(k) for k in range(n_tags)) * n_series
                  + V(0) * (n_tags * n_series))
    if n:
        suffix = b"\x00" + V(1) + V(n) + V(ref.zigzag(7)) + b"\x00" + b"\x00\x00\x00\x00\x00\x00\xf0\x3f"
    else:
        suffix = b"\x00" + V(0)
    raw_len = len(dictionary) + n + len(suffix)
    body = draw(st.sampled_from(["handmade", "stored", "lz4"] if n <= 200_000 else ["handmade"]))
    fields = dict(n=n, nser=n_series)
    override = {}
    which = draw(st.sampled_from([None, None, None, "n", "nser", "raw_len"]))
    if which in ("n", "nser"):
        fields[which] = draw(st.sampled_from([0, 1, fields[which] + 1, 2**31, 2**32 - 1])
                             | st.integers(0, 2**32 - 1))
    elif which == "raw_len":
        override["raw_len"] = draw(st.integers(0, 2**32 - 1))
    if body == "handmade":
        block = ref.lz4_run_block(dictionary, 0, n, suffix)
        override.setdefault("raw_len", raw_len)
        data = ref.frame(block, "acme", "h", BID, fields["n"], fields["nser"],
                         compress=False, flags=1, **override)
    else:
        raw = dictionary + bytes(n) + suffix
        data = ref.frame(raw, "acme", "h", BID, fields["n"], fields["nser"],
                         compress=body == "lz4", **override)
    return data, limits


def _bound(lim: wire.DecodeLimits) -> int:
    """What decode may allocate within ``lim`` (docs/wire-format.md, "Decode limits")."""
    return (64 * 1024 + 2 * lim.max_raw_bytes + 36 * lim.max_samples + 16 * lim.max_series
            + 240 * lim.max_series + 100 * lim.max_tags + 120 * lim.max_strings
            + 4 * lim.max_string_bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(limited_batches())
def test_property_decode_within_limits_returns_or_raises_wire_error_and_stays_bounded(case):
    import tracemalloc

    data, limits = case
    tracemalloc.start()
    try:
        try:
            out = wire.decode(data, limits)  # anything but a Batch or a WireError fails here
        except WireError as exc:
            out = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= _bound(limits), (peak, _bound(limits), out)
    if isinstance(out, wire.Batch):
        assert len(out) <= limits.max_samples and len(out.series) <= limits.max_series
        assert sum(len(t) for _, t in out.series) <= limits.max_tags
    elif isinstance(out, errors.DecodeLimitError):
        assert out.limit in wire.DecodeLimits.__slots__ and out.limit in str(out)
        assert out.value > getattr(limits, out.limit) * (
            1 if out.limit != "max_ratio" else struct.unpack_from("<I", data, 36)[0])


def test_limited_batches_reach_every_limit_and_success():
    """The property above sees successes and every limit, or it proves little."""
    seen = set()

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(limited_batches())
    def run(case):
        data, limits = case
        try:
            wire.decode(data, limits)
            seen.add("ok")
        except errors.DecodeLimitError as exc:
            seen.add(exc.limit)
        except WireError:
            seen.add("error")

    run()
    assert seen >= {"ok", "error", *wire.DecodeLimits.__slots__}, seen
