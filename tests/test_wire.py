"""ingress.wire: round trips, the reference oracle, input validation, hostile bytes."""
from __future__ import annotations

import struct
import zlib

import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire_reference as ref
from ingress import errors, wire

BID = bytes(range(16))
F64 = np.float64


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float64).view(np.uint64)


def make(series, idx, ts, vals, **kw):
    kw.setdefault("batch_id", BID)
    return wire.encode(kw.pop("tenant", "acme"), kw.pop("host", "web-1"), series,
                       np.asarray(idx, np.uint32), np.asarray(ts, np.int64),
                       np.asarray(vals, F64), **kw)


def assert_same(b, series, idx, ts, vals):
    assert b.series == [(n, dict(t)) for n, t in series]
    assert b.series_index.dtype == np.uint32 and b.timestamps.dtype == np.int64
    assert b.values.dtype == np.float64
    np.testing.assert_array_equal(b.series_index, np.asarray(idx, np.uint32))
    np.testing.assert_array_equal(b.timestamps, np.asarray(ts, np.int64))
    np.testing.assert_array_equal(bits(b.values), bits(vals))


def roundtrip(series, idx, ts, vals, **kw):
    data = make(series, idx, ts, vals, **kw)
    b = wire.decode(data)
    assert_same(b, series, idx, ts, vals)
    return data, b


def tick_major(n_series=50, n_ticks=20, seed=1):
    rng = np.random.default_rng(seed)
    series = [(f"m{s % 7}", {"cpu": str(s), "mode": "user"}) for s in range(n_series)]
    idx = np.tile(np.arange(n_series, dtype=np.uint32), n_ticks)
    ts = np.repeat(1_700_000_000_000_000_000 + np.arange(n_ticks) * 1_000_000_000
                   + rng.integers(0, 5_000_000, n_ticks), n_series)
    vals = np.round(rng.random(n_series * n_ticks) * 100, 2)
    vals[idx % 3 == 0] = np.cumsum(rng.integers(0, 1000, n_ticks * n_series))[idx % 3 == 0]
    vals[idx % 5 == 0] = 42.0
    vals[idx % 7 == 0] = rng.random((idx % 7 == 0).sum())
    return series, idx, ts, vals


# ------------------------------------------------------------------ round trips
def test_api_shape_and_header():
    series = [("cpu.usage", {"cpu": "0", "mode": "user"}), ("mem.used", {})]
    data, b = roundtrip(series, [0, 1, 0], [5, 5, 9], [1.5, 2.0, 3.25])
    assert (b.tenant, b.host, b.batch_id) == ("acme", "web-1", BID)
    assert len(b) == 3
    assert wire.peek(data) == ("acme", "web-1", BID, 3)
    assert wire.peek(data).sample_count == 3
    assert data[:4] == b"INGB" and data[4] == wire.VERSION
    assert wire.WireError is errors.WireError


def test_random_batch_id_when_none():
    a = make([("m", {})], [0], [1], [1.0], batch_id=None)
    b = make([("m", {})], [0], [1], [1.0], batch_id=None)
    ida, idb = wire.peek(a).batch_id, wire.peek(b).batch_id
    assert len(ida) == 16 and ida != idb


def test_empty_batch():
    roundtrip([], [], [], [])
    # a dictionary entry no sample uses still round-trips
    roundtrip([("unused", {"k": "v"})], [], [], [])


def test_special_float_bit_patterns():
    specials = [0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, 2.2250738585072014e-308,
                1.7976931348623157e308, np.nan]
    payload_nans = np.array([0x7FF8000000000001, 0xFFF8DEADBEEF0001, 0x7FF0000000000001,
                             0xFFFFFFFFFFFFFFFF], np.uint64).view(F64)
    vals = np.concatenate([specials, payload_nans, specials[::-1]])
    n = len(vals)
    # one series (XOR path) and each value its own series (single-sample path)
    roundtrip([("x", {})], np.zeros(n), np.arange(n), vals)
    roundtrip([(f"s{i}", {}) for i in range(n)], np.arange(n), np.zeros(n), vals)


def test_negative_zero_in_decimal_series_survives():
    vals = [1.0, 2.0, -0.0, 3.0, 0.0]
    roundtrip([("x", {})], [0] * 5, [1, 2, 3, 4, 5], vals)


def test_timestamps_any_order_and_extremes():
    i64 = np.iinfo(np.int64)
    ts = [i64.max, i64.min, 0, -1, 1, i64.max, i64.max, i64.min, 123, -5_000_000_000]
    n = len(ts)
    roundtrip([("x", {})], [0] * n, ts, np.arange(n, dtype=F64))
    # the same timestamps as runs (mode 0) and shuffled
    ts2 = np.repeat(np.array(ts, np.int64), 7)
    roundtrip([("x", {}), ("y", {})], np.arange(len(ts2)) % 2, ts2, np.ones(len(ts2)))
    rng = np.random.default_rng(3)
    roundtrip([("x", {})], np.zeros(len(ts2)), rng.permutation(ts2), np.ones(len(ts2)))


def test_utf8_everywhere():
    series = [("température.°C", {"ключ": "значение", "emoji": "🙂🚀", "": ""}),
              ("名前", {"a\x00b": "\U0010ffff"})]
    roundtrip(series, [1, 0, 1], [3, 2, 1], [1.0, 2.0, 3.0], host="hôte-ü")


def test_tick_major_roundtrip_and_sample_order():
    series, idx, ts, vals = tick_major()
    roundtrip(series, idx, ts, vals)
    rng = np.random.default_rng(7)
    perm = rng.permutation(len(idx))
    roundtrip(series, idx[perm], ts[perm], vals[perm])


def test_hundred_thousand_series():
    n = 100_000
    series = [(f"proc.cpu", {"pid": str(i)}) for i in range(n)]
    rng = np.random.default_rng(5)
    idx = rng.permutation(n).astype(np.uint32)
    data, _ = roundtrip(series, idx, np.full(n, 10**18), np.round(rng.random(n), 3))
    assert wire.peek(data).sample_count == n


def test_tags_as_pairs_are_accepted():
    data = make([("m", (("a", "1"), ("b", "2")))], [0], [1], [1.0])
    assert wire.decode(data).series == [("m", {"a": "1", "b": "2"})]


def test_codecs_are_chosen_per_series():
    # counters/decimals must come out far smaller than full-entropy doubles
    n = 1000
    rng = np.random.default_rng(11)
    dec = np.round(np.cumsum(rng.random(n) * 10), 2)
    full = rng.random(n)
    size_dec = len(make([("x", {})], np.zeros(n), np.zeros(n), dec))
    size_full = len(make([("x", {})], np.zeros(n), np.zeros(n), full))
    assert size_dec * 2.5 < size_full
    const = len(make([("x", {})], np.zeros(n), np.zeros(n), np.full(n, np.pi)))
    assert const < 100


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_roundtrip_matches_reference(data):
    n_series = data.draw(st.integers(1, 6), label="n_series")
    text = st.text(max_size=8)
    series = data.draw(st.lists(st.tuples(text, st.dictionaries(text, text, max_size=3)),
                                min_size=n_series, max_size=n_series), label="series")
    n = data.draw(st.integers(0, 60), label="n")
    idx = data.draw(st.lists(st.integers(0, n_series - 1), min_size=n, max_size=n))
    ts_el = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 10**18, 10**18 + 1]))
    ts = data.draw(st.lists(ts_el, min_size=n, max_size=n))
    val_el = st.one_of(
        st.integers(0, 2**64 - 1).map(lambda b: float(np.uint64(b).view(F64))),
        st.floats(allow_nan=True),
        st.integers(-10**6, 10**6).map(lambda m: m / 100),
        st.sampled_from([0.0, -0.0, 1.0]))
    vals = data.draw(st.lists(val_el, min_size=n, max_size=n))
    # build value arrays from bit patterns so NaN payloads survive list handling
    v = np.array(vals, F64)
    raw_bits = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    if n:
        v[mask] = np.array(raw_bits, np.uint64)[mask].view(F64)
    encoded, b = roundtrip(series, idx, ts, v)
    expected = ref.encode("acme", "web-1", series, idx, ts, v.tolist(), BID)
    assert encoded == expected
    r = ref.decode(encoded)
    assert r["series"] == b.series
    assert r["series_index"] == b.series_index.tolist()
    assert r["timestamps"] == b.timestamps.tolist()
    np.testing.assert_array_equal(bits(r["values"]), bits(b.values))


def test_reference_agrees_on_realistic_batch():
    series, idx, ts, vals = tick_major(n_series=200, n_ticks=30)
    data = make(series, idx, ts, vals)
    assert data == ref.encode("acme", "web-1", series, idx, ts, vals, BID)
    r = ref.decode(data)
    assert r["timestamps"] == ts.tolist()
    np.testing.assert_array_equal(bits(r["values"]), bits(vals))


# ------------------------------------------------------------------ encode validation
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(tenant="Acme!"), ValueError, "tenant 'Acme!'"),
    (dict(tenant=""), ValueError, "tenant ''"),
    (dict(tenant="a" * 64), ValueError, "tenant"),
    (dict(tenant=5), TypeError, "tenant must be str"),
    (dict(host="h" * 256), ValueError, "host is 256 bytes"),
    (dict(host="\ud800"), ValueError, "host"),
    (dict(batch_id=b"short"), ValueError, "batch_id must be 16 bytes"),
    (dict(batch_id="0123456789abcdef"), ValueError, "batch_id"),
    (dict(series_index=[0, 0]), ValueError, "differ in length"),
    (dict(series_index=[0, 2, 0]), ValueError, "series_index[1] = 2 is out of range for 2 series"),
    (dict(series_index=[0, -1, 0]), ValueError, "series_index holds -1"),
    (dict(series_index=[0.0, 1.0, 0.0]), TypeError, "series_index must be uint32"),
    (dict(series_index=[[0, 1, 0]]), ValueError, "series_index must be 1-D"),
    (dict(timestamps=[1.5, 2, 3]), TypeError, "timestamps must be int64"),
    (dict(timestamps=np.array([2**64 - 1, 0, 0], np.uint64)), ValueError, "timestamps holds"),
    (dict(values=["a", "b", "c"]), TypeError, "values must be float64"),
    (dict(series=[("m", {}), "oops"]), ValueError, "series[1] must be a (name, tags) pair"),
    (dict(series=[("m", {}), (3, {})]), TypeError, "series[1] name must be str"),
    (dict(series=[("m", {}), ("n", {"k": 1})]), TypeError, "series[1] tag 'k' value must be str"),
    (dict(series=[("m", {}), ("n", {2: "v"})]), TypeError, "series[1] tag key must be str"),
    (dict(series=[("m", {}), ("n", 7)]), TypeError, "series[1] tags must be a mapping"),
    (dict(series=[("m", {}), ("\udc80", {})]), ValueError, "series[1] name"),
])
def test_encode_validation_names_the_argument(kwargs, exc, words):
    args = dict(tenant="acme", host="h", series=[("m", {}), ("n", {})],
                series_index=[0, 1, 0], timestamps=[1, 2, 3], values=[1.0, 2.0, 3.0])
    args.update(kwargs)
    with pytest.raises(exc) as info:
        wire.encode(**args)
    assert words in str(info.value)


# ------------------------------------------------------------------ hostile bytes
V = ref.varint
DICT = V(1) + V(1) + b"m" + V(0) + V(0)       # strings ["m"], series [("m", {})]
INDEX = V(0)                                   # one sample of series 0
TS = b"\x01" + V(ref.zigzag(5))                # per-sample mode, ts 5
VALUES = b"\x20" + V(ref.zigzag(1))            # DEC d=0, value 1.0


def hostile(dictionary=DICT, index=INDEX, ts=TS, values=VALUES, n=1, nser=1,
            tenant="acme", host="h", **kw) -> bytes:
    return ref.frame(dictionary + index + ts + values, tenant, host, BID, n, nser, **kw)


def test_hostile_builder_is_valid():
    b = wire.decode(hostile())
    assert b.series == [("m", {})] and b.timestamps.tolist() == [5] and b.values.tolist() == [1.0]
    assert wire.decode(hostile(compress=False)).values.tolist() == [1.0]


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]


GOOD = hostile()
TWO = V(3) + V(1) + b"m" + V(1) + b"k" + V(1) + b"v"


@pytest.mark.parametrize("data, words", [
    # framing
    (b"", "shorter than the smallest header"),
    (GOOD[:30], "shorter than the smallest header"),
    (b"XXXX" + GOOD[4:], "not an ingress batch: magic b'XXXX'"),
    (hostile(version=2), "unsupported batch version 2"),
    (_flip(GOOD, 10), "header checksum mismatch"),
    (_flip(GOOD, len(GOOD) - 1), "body checksum mismatch"),
    (GOOD[:-2], "header says the body is"),
    (GOOD + b"\x00", "header says the body is"),
    (hostile(host_len=200), "header needs"),
    (hostile(compress=False, flags=0x04), "unknown flags 0x04"),
    (hostile(tenant="Bad!"), "tenant id 'Bad!' is not valid"),
    (hostile(host=b"\xff\xfe"), "host is not valid UTF-8"),
    (hostile(compress=True, raw_len=10**9), "more than lz4 can expand"),
    (ref.frame(b"\xff" * 12, "acme", "h", BID, 1, 1, compress=False, flags=1, raw_len=100),
     "not a valid lz4 block"),
    (hostile(compress=True, raw_len=len(DICT + INDEX + TS + VALUES) + 5), "decompresses to"),
    (hostile(compress=False, raw_len=3), "uncompressed body is"),
    # dictionary
    (hostile(dictionary=b"\xff" * 11), "dictionary: varint of string count at body offset 0 runs past 64 bits"),
    (hostile(dictionary=b"\x80", index=b"", ts=b"", values=b""), "input ends inside the varint of string count"),
    (hostile(dictionary=V(10**6)), "dictionary: 1000000 strings promised"),
    (hostile(dictionary=V(1) + V(127) + b"m"), "string 0 at body offset 2 is 127 bytes"),
    (hostile(dictionary=V(1) + V(2) + b"\xff\xfe" + V(0) + V(0)), "string 0 at body offset 2 is not valid UTF-8"),
    (hostile(dictionary=V(1) + V(1) + b"m" + V(5) + V(0)), "series 0 names string 5 but there are 1"),
    (hostile(dictionary=V(1) + V(1) + b"m" + V(0) + V(100)), "series 0 promises 100 tags"),
    (hostile(dictionary=TWO + V(0) + V(1) + V(1) + V(ref.zigzag(9))), "tag value 0 refers to string 9"),
    (hostile(dictionary=TWO + V(0) + V(1) + V(1) + V(ref.zigzag(-1))), "tag value 0 refers to string -1"),
    (hostile(dictionary=TWO + V(0) + V(1) + V(7) + V(0)), "tag key 0 refers to string 7 but there are 3"),
    (hostile(dictionary=TWO + V(0) + V(2) + V(1) + V(1) + V(4) + V(0)), "series 0 repeats a tag key"),
    (hostile(dictionary=TWO + V(0) + V(2**40)), "series 0 promises 1099511627776 tags"),
    (hostile(nser=200_000), "header promises 200000 series"),
    # index column
    (hostile(n=900_000), "index column: header promises 900000 samples"),
    (hostile(index=V(ref.zigzag(3))), "index column: sample 0 refers to series 3, outside the dictionary"),
    (hostile(index=V(ref.zigzag(-1))), "sample 0 refers to series -1"),
    (hostile(index=b"\xff" * 10 + b"\x7f"), "index column: varint runs past 64 bits"),
    (hostile(index=b"\x80\x80", ts=b"", values=b""), "index column: input ends inside a field"),
    # timestamps
    (hostile(ts=b"\x07"), "timestamps: unknown timestamp mode 7"),
    (hostile(ts=b"", values=b""), "timestamps: input ends inside a field"),
    (hostile(ts=b"\x00" + V(1000)), "timestamps: 1000 runs promised for 1 samples"),
    (hostile(ts=b"\x00" + V(1) + V(5) + V(0)), "timestamps: run 0 has length 5"),
    (hostile(ts=b"\x00" + V(1) + V(0) + V(0)), "timestamps: run 0 has length 0"),
    (hostile(ts=b"\x00" + V(1) + V(2**64 - 1) + V(0)), f"run 0 has length {2**64 - 1}"),
    (hostile(ts=b"\x00" + V(2**64 - 1)), f"{2**64 - 1} runs promised"),
    (hostile(index=V(0) + V(0), n=2, ts=b"\x00" + V(1) + V(1) + V(0)),
     "timestamps: runs cover 1 samples but the header says 2"),
    # values
    (hostile(values=b"\x50\x02"), "values: series 0 has unknown codec byte 0x50"),
    (hostile(values=b"\x10\x09" + bytes(9)), "values: series 0: malformed XOR control byte"),
    (hostile(values=b"\x10\x70"), "values: series 0: malformed XOR control byte"),
    (hostile(index=V(0) * 2, n=2, ts=TS + V(0), values=b"\x30" + V(2) + V(0) + b"\x41"), "series 0: packed bit width beyond 64"),
    (hostile(index=V(0) * 2, n=2, ts=TS + V(0), values=b"\x40" + bytes(8) + b"\x20\x21"), "series 0: packed bit width beyond 64"),
    (hostile(index=V(0) * 2, n=2, ts=TS + V(0), values=b"\x30" + V(2) + V(0) + b"\x10\x01"), "values: input ends inside a field"),
    (hostile(index=V(0) * 2, n=2, ts=TS + V(0), values=b"\x40" + bytes(8) + b"\x00"), "values: input ends inside a field"),
    (hostile(values=b"\x10\x08\x01\x02"), "values: input ends inside a field"),
    (hostile(values=b"\x00\x01\x02"), "values: input ends inside a field"),
    (hostile(values=b""), "values: input ends inside a field"),
    (hostile(values=VALUES + b"\x00\x00"), "values: 2 bytes left over after the last value"),
], ids=lambda v: v[:40] if isinstance(v, str) else "data")
def test_hostile_input_raises_wire_error_saying_what(data, words):
    with pytest.raises(errors.WireError) as info:
        wire.decode(data)
    assert words in str(info.value)
    with pytest.raises(ref.RefError):
        ref.decode(data)


def test_peek_checks_header_only():
    assert wire.peek(GOOD) == ("acme", "h", BID, 1)
    # peek skips the body checksum (outputs call it on bytes they just made) ...
    assert wire.peek(_flip(GOOD, len(GOOD) - 1)).sample_count == 1
    # ... but not the header's
    for bad, words in [(_flip(GOOD, 25), "header checksum"), (GOOD[:-1], "body is"),
                       (b"INGB\x09" + GOOD[5:], "version 9")]:
        with pytest.raises(errors.WireError, match=words):
            wire.peek(bad)


def test_decode_accepts_bytes_like_and_refuses_other_types():
    data = make(*tick_major(5, 3))
    for form in (bytearray(data), memoryview(data)):
        assert wire.decode(form).series_index.tolist() == wire.decode(data).series_index.tolist()
        assert wire.peek(form) == wire.peek(data)
    with pytest.raises(TypeError, match="data must be bytes"):
        wire.decode("INGB")


def test_hostile_counts_do_not_allocate():
    import tracemalloc
    cases = [hostile(n=2**32 - 1), hostile(nser=2**32 - 1), hostile(dictionary=V(2**62)),
             hostile(compress=True, raw_len=2**32 - 1), hostile(ts=b"\x00" + V(2**40))]
    tracemalloc.start()
    try:
        for data in cases:
            with pytest.raises(errors.WireError):
                wire.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000


@pytest.mark.parametrize("kind, codec", [
    ("constant", 0x00), ("counter_with_reset", 0x20), ("smooth_counter", 0x30),
    ("percent_1dp", 0x31), ("step_changes", 0x10), ("mixed_exponents", 0x40), ("noisy_full_precision", 0x40)])
def test_each_value_codec_round_trips(kind, codec):
    rng = np.random.default_rng(42)
    n = 200
    vals = {
        "constant": np.full(n, 3.5),
        "counter_with_reset": np.concatenate([np.arange(100) * 1e6 + 5e12, np.arange(100.0)]),
        "smooth_counter": 10**9 + np.cumsum(rng.integers(1000, 1200, n)).astype(F64),
        "percent_1dp": np.round(50 + np.cumsum(rng.normal(0, 1, n)), 1),
        "step_changes": np.repeat(rng.random(n // 10), 10),
        "mixed_exponents": rng.random(n) * 10.0 ** rng.integers(-300, 300, n),
        "noisy_full_precision": 0.5 + rng.normal(0, 0.01, n),
    }[kind]
    assert ref.encode_series(vals.tolist())[0] == codec
    roundtrip([("x", {})], np.zeros(n), np.arange(n), vals)


def test_docs_example_is_what_the_encoder_makes():
    # docs/wire-format.md walks this batch byte by byte; the hex there must be real.
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "wire-format.md").read_text()
    block = doc.split("<!-- example-hex -->")[1].split("```text")[1].split("```")[0]
    documented = bytes.fromhex("".join(line[6:] for line in block.strip().splitlines()))
    series = [("cpu.time", {"cpu": "0", "state": "user"}),
              ("cpu.time", {"cpu": "0", "state": "system"}), ("mem.used", {})]
    data = wire.encode("acme", "web-1", series, np.array([0, 1, 2, 0, 1, 2], np.uint32),
                       np.array([1717171717000000000] * 3 + [1717171718000250000] * 3),
                       np.array([1234.56, 88.01, 8.0e9, 1234.81, 88.02, 8.0e9]),
                       batch_id=bytes(range(16)))
    assert data == documented


def test_series_dictionary_writes_what_encode_dictionary_writes():
    from ingress._core._codec import SeriesDictionary, encode_dictionary

    series = [("cpu.time", {"cpu": "0", "mode": "user"}), ("mem.used", {}),
              ("cpu.time", {"cpu": "1", "mode": "user"}), ("net.bytes", {"if": "é0", "direction": "rx"})]
    d = SeriesDictionary()
    for i, (name, tags) in enumerate(series):
        d.set(10 + i, name, tags)
    assert d.count == 4 and d.strings == 12
    for order in ([10, 11, 12, 13], [13, 10], [12], []):
        got = d.encode(np.array(order, np.uint32))
        assert got == encode_dictionary([series[i - 10] for i in order])
    # a whole batch through wire.encode: the same bytes as from the series list
    idx = np.array([0, 1, 0], np.uint32)
    ts = np.array([1, 1, 2], np.int64)
    vals = np.array([1.0, 2.0, 3.0])
    bid = b"\x01" * 16
    plain = wire.encode("acme", "h", series[:2], idx, ts, vals, bid)
    assert wire.encode("acme", "h", None, idx, ts, vals, bid,
                       dictionary=d.encode(np.array([10, 11], np.uint32))) == plain
    with pytest.raises(TypeError, match="dictionary must be a"):
        wire.encode("acme", "h", None, idx, ts, vals, bid, dictionary=("x", 2))


def test_series_dictionary_replaces_clears_and_frees_strings():
    from ingress._core._codec import SeriesDictionary, encode_dictionary

    d = SeriesDictionary()
    d.set(0, "a.b", {"pid": "41"})
    d.set(1, "a.b", {"pid": "42"})
    assert d.strings == 4
    d.set(0, "a.c", {"pid": "42"})  # replaced: "a.b" still used by slot 1, "41" freed
    assert d.count == 2 and d.strings == 4
    assert d.encode(np.array([0, 1], np.uint32)) == encode_dictionary([("a.c", {"pid": "42"}),
                                                                        ("a.b", {"pid": "42"})])
    d.clear(0)
    d.clear(0)  # nothing there: nothing happens
    d.clear(99)
    assert d.count == 1 and d.strings == 3
    with pytest.raises(ValueError, match="slot 0 holds no series"):
        d.encode(np.array([1, 0], np.uint32))
    with pytest.raises(ValueError, match="slot 5000 holds no series"):
        d.encode(np.array([5000], np.uint32))
    d.clear(1)
    assert d.count == 0 and d.strings == 0
    # freed string ids are reused and the bytes stay right
    for i in range(300):
        d.set(i, f"m.{i % 7}", {"k": str(i)})
    assert d.encode(np.arange(300, dtype=np.uint32)) == encode_dictionary(
        [(f"m.{i % 7}", {"k": str(i)}) for i in range(300)])


def test_series_dictionary_refuses_bad_strings_and_keeps_the_slot():
    from ingress._core._codec import SeriesDictionary, encode_dictionary

    d = SeriesDictionary()
    d.set(3, "ok.metric", {"a": "1"})
    with pytest.raises(TypeError, match="series 3 name must be str, got int"):
        d.set(3, 7, {})
    with pytest.raises(TypeError, match="series 3 tag 'a' value must be str, got int"):
        d.set(3, "x.y", {"a": 1})
    with pytest.raises(TypeError, match="series 3 tag key must be str, got int"):
        d.set(3, "x.y", {1: "a"})
    with pytest.raises(ValueError, match="series 3 name: .* is not encodable as UTF-8"):
        d.set(3, "bad\ud800", {})
    with pytest.raises(TypeError, match="series 3 tags must be a mapping"):
        d.set(3, "x.y", 5)
    with pytest.raises(ValueError, match="slot -1 is not in"):
        d.set(-1, "x.y", {})
    assert d.count == 1 and d.encode(np.array([3], np.uint32)) == encode_dictionary([("ok.metric", {"a": "1"})])


_names = st.sampled_from(["cpu.time", "mem.used", "net.bytes", "é.x", ""])
_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 40), _names, st.dictionaries(_texts, _texts, max_size=4)),
                max_size=60),
       st.lists(st.integers(0, 40), max_size=30), st.randoms())
def test_series_dictionary_differs_in_nothing_from_encode_dictionary(ops, clears, rnd):
    from ingress._core._codec import SeriesDictionary, encode_dictionary

    d = SeriesDictionary()
    held = {}
    for slot, name, tags in ops:
        d.set(slot, name, tags)
        held[slot] = (name, tags)
    for slot in clears:
        d.clear(slot)
        held.pop(slot, None)
    slots = list(held)
    rnd.shuffle(slots)
    assert d.count == len(held)
    assert d.encode(np.array(slots, np.uint32)) == encode_dictionary([held[s] for s in slots])


# ------------------------------------------------------------------ decode limits (issue 8)
def bomb(n: int) -> bytes:
    """The decompression bomb of issue 8 with n samples: ``wire_reference.bomb``."""
    return ref.bomb(n, "acme", BID)


def _peak(fn, *args, **kw):
    """(outcome, peak bytes traced while running fn): outcome is the result or the WireError."""
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            out = fn(*args, **kw)
        except errors.WireError as exc:
            out = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def test_bomb_builder_makes_valid_batches():
    b = wire.decode(bomb(10_000))
    assert len(b) == 10_000 and b.series == [("m", {})]
    assert set(b.timestamps.tolist()) == {5} and set(b.values.tolist()) == {1.5}
    assert ref.decode(bomb(300))["values"] == [1.5] * 300
    big = bomb(50_000_000)
    fields, raw = ref.unframe(big)  # lz4 itself agrees: 50 MB of body, all index bytes zero
    assert fields["n"] == 50_000_000 and len(raw) == 5 + 50_000_000 + 16
    assert raw.count(b"\x00", 5, 50_000_005) == 50_000_000


def test_decompression_bomb_is_refused_before_allocating():
    data = bomb(50_000_000)
    assert 190_000 < len(data) < 210_000
    out, peak = _peak(wire.decode, data)
    assert isinstance(out, errors.DecodeLimitError), out
    assert out.limit == "max_samples" and out.value == 50_000_000
    assert str(out) == "header: 50000000 samples, over the decode limit max_samples = 1000000"
    assert peak < 64_000
    # every header-level limit stops it on its own, before decompressing
    for limits, name in [(wire.DecodeLimits(max_samples=10**8, max_raw_bytes=10**6), "max_raw_bytes"),
                         (wire.DecodeLimits(max_samples=10**8, max_ratio=100), "max_ratio")]:
        out, peak = _peak(wire.decode, data, limits)
        assert isinstance(out, errors.DecodeLimitError) and out.limit == name and name in str(out)
        assert peak < 64_000
    # peek shows the header as it is, and refuses it when given the limits
    assert wire.peek(data).sample_count == 50_000_000
    with pytest.raises(errors.DecodeLimitError, match="max_samples"):
        wire.peek(data, limits=wire.DecodeLimits())


LIMITED = make(*tick_major(40, 30))


@pytest.mark.parametrize("limit", [f for f in wire.DecodeLimits.__slots__])
def test_each_limit_admits_its_value_and_refuses_one_more(limit):
    q = ref.quantities(LIMITED)
    assert LIMITED[5] & wire.FLAG_LZ4 and q["max_ratio"] > 1  # lz4-compressed: the ratio applies
    at = q[limit]
    assert wire.decode(LIMITED, wire.DecodeLimits(**{limit: at})).series_index.size == q["max_samples"]
    under = at - 1 if limit != "max_ratio" else at * 0.99
    with pytest.raises(errors.DecodeLimitError) as info:
        wire.decode(LIMITED, wire.DecodeLimits(**{limit: under}))
    assert info.value.limit == limit and f"over the decode limit {limit} = " in str(info.value)
    assert isinstance(info.value, errors.WireError)


def test_default_limits_are_far_above_what_the_agent_writes():
    from ingress import config

    d = wire.DecodeLimits()
    agent = config.default_settings().agent.batch
    assert d.max_samples >= 20 * agent.max_samples
    assert d.max_raw_bytes >= 32 * agent.max_bytes
    wire.decode(make(*tick_major(1000, 100)))  # a large agent batch: 100,000 samples


@pytest.mark.parametrize("kw, words", [
    (dict(max_samples=-1), "DecodeLimits.max_samples must be an integer >= 0, got -1"),
    (dict(max_tags=1.5), "DecodeLimits.max_tags must be an integer >= 0"),
    (dict(max_series=True), "DecodeLimits.max_series must be an integer >= 0"),
    (dict(max_ratio=0.5), "DecodeLimits.max_ratio must be a number from 1 to 255, got 0.5"),
    (dict(max_ratio=300), "DecodeLimits.max_ratio must be a number from 1 to 255"),
])
def test_decode_limits_refuse_bad_values(kw, words):
    with pytest.raises(ValueError) as info:
        wire.DecodeLimits(**kw)
    assert str(info.value).startswith(words)
    with pytest.raises(TypeError, match="limits must be a wire.DecodeLimits"):
        wire.decode(LIMITED, {"max_samples": 5})


def test_non_contiguous_buffer_is_a_wire_error():
    data = LIMITED
    strided = memoryview(bytes(x for b in data for x in (b, 0)))[::2]
    assert bytes(strided) == data and not strided.c_contiguous
    for fn in (wire.decode, wire.peek):
        with pytest.raises(errors.WireError, match="batch buffer is not contiguous"):
            fn(strided)
    # contiguous views of another shape or item size are read as their bytes
    want = wire.decode(data)
    flat = wire.decode(memoryview(data).cast("B", shape=[1, len(data)]))
    assert flat.series_index.tolist() == want.series_index.tolist()
    for host in ("h", "hh", "hhh", "hhhh"):
        padded = make(*tick_major(5, 3), host=host)
        if len(padded) % 4 == 0:
            break
    assert wire.decode(memoryview(padded).cast("I")).host == host
    assert wire.peek(memoryview(padded).cast("I")).host == host


@pytest.mark.parametrize("where, words", [
    ("lz4.block.decompress", "out of memory decompressing the body to"),
    ("ingress._core._codec.decode_dictionary", "out of memory building the dictionary of 40 series"),
    ("ingress._core._codec.decode_columns", "out of memory allocating the columns of 1200 samples"),
])
def test_memory_error_becomes_wire_error_naming_the_allocation(monkeypatch, where, words):
    def no_memory(*a, **kw):
        raise MemoryError()

    monkeypatch.setattr(where, no_memory)
    with pytest.raises(errors.DecodeMemoryError) as info:  # a WireError a receiver can tell apart
        wire.decode(LIMITED)
    assert isinstance(info.value, errors.WireError)
    assert str(info.value).startswith(words)


def test_out_of_memory_for_real_is_a_wire_error(tmp_path):
    """Under an address-space limit, a batch the (raised) limits admit fails as WireError."""
    import subprocess
    import sys

    path = tmp_path / "bomb.ibatch"
    path.write_bytes(bomb(50_000_000))
    script = f"""
import resource, sys
from ingress import wire
data = open({str(path)!r}, 'rb').read()
with open('/proc/self/status') as f:
    vm = [int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize')][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + (160 << 20), resource.RLIM_INFINITY))
try:
    wire.decode(data, wire.DecodeLimits(max_samples=10**8, max_raw_bytes=10**8))
except wire.WireError as exc:
    print('WireError:', exc)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("WireError: out of memory")
