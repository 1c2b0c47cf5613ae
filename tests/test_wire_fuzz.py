"""Mutation fuzzing of ingress.wire.decode: every mutant decodes or raises WireError.

Mutants come from valid batches by bit flips, truncations, splices and
rewritten length/count fields. Flipping framed bytes mostly exercises the
checksums, so most mutants are made on the RAW body and framed again with valid
checksums (wire_reference.frame), which drives them into the column parsers.
Whatever ingress.wire makes of a mutant, the pure-Python reference must make
the same: both decode it to the same batch, or both refuse it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import wire_reference as ref
from ingress import wire
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
