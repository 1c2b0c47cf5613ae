"""Behaviour of the compiled per-tenant rings (ingress._core._ring via ingress.buffer)."""
from __future__ import annotations

import array
import collections
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.buffer import SAMPLE_BYTES, RingSet
from ingress.buffer.rings import NOGIL_MIN


class RefRing:
    """Pure-Python oracle: one sample at a time, the obvious way."""

    def __init__(self, cap: int, policy: str) -> None:
        self.cap = cap
        self.policy = policy
        self.q: collections.deque = collections.deque()
        self.dropped = 0

    def push(self, rows) -> int:
        before = self.dropped
        for row in rows:
            if len(self.q) == self.cap:
                self.dropped += 1
                if self.policy == "drop_newest":
                    continue
                self.q.popleft()
            self.q.append(row)
        return self.dropped - before

    def drain(self, m: int) -> list:
        return [self.q.popleft() for _ in range(min(m, len(self.q)))]


def cols(series, ts, values, kinds):
    return (np.asarray(series, np.uint32), np.asarray(ts, np.int64),
            np.asarray(values, np.float64), np.asarray(kinds, np.uint8))


def block(start: int, n: int):
    i = np.arange(start, start + n)
    return cols(i, i * 10, i * 0.5, i % 2)


def outs(n: int):
    return (np.zeros(n, np.uint32), np.zeros(n, np.int64), np.zeros(n, np.float64),
            np.zeros(n, np.uint8))


def drain_all(r: RingSet, t: int, n: int | None = None):
    o = outs(r.size(t) if n is None else n)
    k = r.drain(t, *o)
    return tuple(a[:k] for a in o)


def ring_with_caps(*caps, policy="drop_oldest"):
    r = RingSet(len(caps), SAMPLE_BYTES * sum(caps), policy, weights=caps)
    assert [r.capacity(t) for t in range(len(caps))] == list(caps)
    return r


# -- sizing -------------------------------------------------------------------------


def test_sample_is_24_bytes():
    assert SAMPLE_BYTES == 24


def test_budget_split_equally_and_rounded_down():
    r = RingSet(3, 24 * 100 + 23)
    assert [r.capacity(t) for t in range(3)] == [33, 33, 33]
    assert r.total_capacity == 99
    assert r.nbytes == 99 * 24 <= 24 * 100 + 23
    assert r.n_tenants == 3 and r.policy == "drop_oldest"


def test_budget_split_by_weight():
    r = RingSet(3, 24 * 1000, weights=[1, 2, 1])
    assert [r.capacity(t) for t in range(3)] == [250, 500, 250]


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_tenants=4, budget_bytes=24 * 3), "budget_bytes"),
    (dict(n_tenants=0, budget_bytes=2400), "n_tenants"),
    (dict(n_tenants=1, budget_bytes=-1), "budget_bytes"),
    (dict(n_tenants=1, budget_bytes=2400, policy="drop_random"), "policy"),
    (dict(n_tenants=2, budget_bytes=2400, weights=[1]), "weights"),
    (dict(n_tenants=2, budget_bytes=2400, weights=[1, 0]), "weights[1]"),
    (dict(n_tenants=2, budget_bytes=2400, weights=[1, "x"]), "weights"),
    (dict(n_tenants=2, budget_bytes="lots"), "budget_bytes"),
])
def test_bad_construction_names_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word.replace("[", r"\[")):
        RingSet(**kwargs)


# -- push and drain -----------------------------------------------------------------


def test_roundtrip_oldest_first():
    r = ring_with_caps(10)
    assert r.push(0, *block(0, 4)) == 0
    assert r.push(0, *block(4, 3)) == 0
    assert r.size(0) == 7
    s, ts, v, k = drain_all(r, 0)
    np.testing.assert_array_equal(s, np.arange(7))
    np.testing.assert_array_equal(ts, np.arange(7) * 10)
    np.testing.assert_array_equal(v, np.arange(7) * 0.5)
    np.testing.assert_array_equal(k, np.arange(7) % 2)
    assert r.size(0) == 0 and r.pushed(0) == 7 and r.drained(0) == 7 and r.dropped(0) == 0


def test_wraparound_in_two_segments():
    r = ring_with_caps(10)
    r.push(0, *block(0, 7))
    assert len(drain_all(r, 0, 5)[0]) == 5      # head at 5, two left
    assert r.push(0, *block(7, 6)) == 0         # tail 7..9 then 0..2
    s, ts, _, _ = drain_all(r, 0)
    np.testing.assert_array_equal(s, np.arange(5, 13))
    np.testing.assert_array_equal(ts, np.arange(5, 13) * 10)


def test_drain_itself_wraps():
    r = ring_with_caps(5)
    r.push(0, *block(0, 4))
    drain_all(r, 0, 3)
    r.push(0, *block(4, 4))                      # slots 4,0,1,2
    s = drain_all(r, 0)[0]
    np.testing.assert_array_equal(s, [3, 4, 5, 6, 7])


def test_drop_oldest_counts_and_keeps_newest():
    r = ring_with_caps(10)
    assert r.push(0, *block(0, 8)) == 0
    assert r.push(0, *block(8, 5)) == 3
    assert r.dropped(0) == 3
    np.testing.assert_array_equal(drain_all(r, 0)[0], np.arange(3, 13))


def test_drop_oldest_block_larger_than_ring():
    r = ring_with_caps(10)
    r.push(0, *block(0, 4))
    assert r.push(0, *block(4, 25)) == 4 + 25 - 10
    assert r.size(0) == 10
    np.testing.assert_array_equal(drain_all(r, 0)[0], np.arange(19, 29))


def test_drop_newest_counts_and_keeps_oldest():
    r = ring_with_caps(10, policy="drop_newest")
    assert r.push(0, *block(0, 8)) == 0
    assert r.push(0, *block(8, 5)) == 3
    assert r.push(0, *block(13, 2)) == 2          # full: everything incoming goes
    assert r.dropped(0) == 5 and r.pushed(0) == 10
    np.testing.assert_array_equal(drain_all(r, 0)[0], np.arange(10))


def test_tenants_are_isolated():
    r = ring_with_caps(4, 6, 5)
    assert r.push(1, *block(100, 9)) == 3
    assert r.push(0, *block(0, 2)) == 0
    assert (r.size(0), r.size(1), r.size(2)) == (2, 6, 0)
    assert (r.dropped(0), r.dropped(1), r.dropped(2)) == (0, 3, 0)
    np.testing.assert_array_equal(drain_all(r, 1)[0], np.arange(103, 109))
    np.testing.assert_array_equal(drain_all(r, 0)[0], [0, 1])
    assert drain_all(r, 2)[0].size == 0


def test_drain_into_short_arrays_leaves_the_rest():
    r = ring_with_caps(10)
    r.push(0, *block(0, 10))
    assert r.drain(0, *outs(3)) == 3
    assert r.size(0) == 7
    s = drain_all(r, 0, 100)[0]
    np.testing.assert_array_equal(s, np.arange(3, 10))


def test_drain_at_offset_and_without_kinds():
    r = ring_with_caps(10)
    r.push(0, *block(0, 6))
    o = outs(8)
    o[0][:] = 99
    assert r.drain(0, o[0], o[1], o[2], None, 5) == 3
    np.testing.assert_array_equal(o[0], [99] * 5 + [0, 1, 2])
    assert r.drain(0, o[0], o[1], o[2], None, 8) == 0
    assert r.size(0) == 3
    with pytest.raises(ValueError, match="start"):
        r.drain(0, o[0], o[1], o[2], None, 9)


def test_empty_push_and_drain():
    r = ring_with_caps(4)
    assert r.push(0, *block(0, 0)) == 0
    assert r.push(0, np.empty(0, np.uint32), 5, np.empty(0), 1) == 0
    assert r.size(0) == 0 and r.pushed(0) == 0
    assert r.drain(0, *outs(0)) == 0
    assert r.drain(0, *outs(5)) == 0


def test_scalar_ts_and_kinds_broadcast():
    r = ring_with_caps(10)
    s = np.array([7, 8, 9], np.uint32)
    r.push(0, s, 123, np.array([1.0, 2.0, 3.0]), 1)
    r.push(0, s, np.int64(456), np.array([4.0, 5.0, 6.0]), np.uint8(0))
    got_s, ts, v, k = drain_all(r, 0)
    np.testing.assert_array_equal(ts, [123] * 3 + [456] * 3)
    np.testing.assert_array_equal(k, [1] * 3 + [0] * 3)
    np.testing.assert_array_equal(v, [1, 2, 3, 4, 5, 6])


def test_values_keep_every_bit_pattern():
    r = ring_with_caps(8)
    v = np.array([np.nan, -0.0, np.inf, -np.inf, 5e-324, 1.7976931348623157e308])
    r.push(0, np.arange(6, dtype=np.uint32), np.iinfo(np.int64).min, v, 255)
    _, ts, got, k = drain_all(r, 0)
    assert got.view(np.uint64).tolist() == v.view(np.uint64).tolist()
    assert (ts == np.iinfo(np.int64).min).all() and (k == 255).all()


def test_other_buffer_exporters_are_accepted():
    r = ring_with_caps(4)
    r.push(0, array.array("I", [1, 2]), array.array("q", [10, 20]), array.array("d", [0.5, 1.5]),
           array.array("B", [0, 1]))
    o = (array.array("I", [0] * 2), array.array("q", [0] * 2), array.array("d", [0] * 2),
         bytearray(2))
    assert r.drain(0, *o) == 2
    assert list(o[0]) == [1, 2] and list(o[1]) == [10, 20] and list(o[3]) == [0, 1]


# -- refusals name the argument -----------------------------------------------------


@pytest.mark.parametrize("pos, name, bad", [
    (0, "series", np.zeros(3, np.int64)),
    (0, "series", np.zeros(3, np.float32)),
    (1, "ts", np.zeros(3, np.int32)),
    (1, "ts", np.zeros(3, np.uint64)),
    (2, "values", np.zeros(3, np.float32)),
    (2, "values", np.zeros(3, np.int64)),
    (3, "kinds", np.zeros(3, np.int8)),
    (3, "kinds", np.zeros(3, np.bool_)),
    (0, "series", np.zeros((3, 1), np.uint32)),
    (1, "ts", np.zeros(6, np.int64)[::2]),
])
def test_push_dtype_or_shape_mismatch_names_argument(pos, name, bad):
    r = ring_with_caps(8)
    args = list(block(0, 3))
    args[pos] = bad
    with pytest.raises(ValueError, match=f"^{name}: "):
        r.push(0, *args)
    assert r.size(0) == 0


@pytest.mark.parametrize("pos, name", [(1, "ts"), (2, "values"), (3, "kinds")])
def test_push_length_mismatch_names_argument(pos, name):
    r = ring_with_caps(8)
    args = list(block(0, 3))
    args[pos] = args[pos][:2]
    with pytest.raises(ValueError, match=f"^{name}: length 2 != len\\(series\\) 3"):
        r.push(0, *args)
    assert r.size(0) == 0


def test_push_bad_scalars_and_objects():
    r = ring_with_caps(8)
    s, ts, v, k = block(0, 3)
    with pytest.raises(ValueError, match="^kinds: 256"):
        r.push(0, s, ts, v, 256)
    with pytest.raises(ValueError, match="^kinds: -1"):
        r.push(0, s, ts, v, -1)
    with pytest.raises(ValueError, match="^ts: "):
        r.push(0, s, 2**63, v, k)
    with pytest.raises(TypeError, match="^series: "):
        r.push(0, [1, 2, 3], ts, v, k)
    with pytest.raises(TypeError, match="^values: "):
        r.push(0, s, ts, None, k)
    with pytest.raises(IndexError, match="^t: "):
        r.push(1, s, ts, v, k)
    with pytest.raises(IndexError, match="^t: "):
        r.push(-1, s, ts, v, k)
    assert r.size(0) == 0


@pytest.mark.parametrize("pos, name, bad", [
    (0, "out_series", np.zeros(4, np.int32)),
    (1, "out_ts", np.zeros(4, np.float64)),
    (2, "out_values", np.zeros(4, np.int64)),
    (3, "out_kinds", np.zeros(4, np.uint16)),
    (1, "out_ts", np.zeros(3, np.int64)),
    (2, "out_values", np.zeros(5, np.float64)),
    (3, "out_kinds", np.zeros(2, np.uint8)),
])
def test_drain_mismatch_names_argument_and_keeps_samples(pos, name, bad):
    r = ring_with_caps(8)
    r.push(0, *block(0, 3))
    o = list(outs(4))
    o[pos] = bad
    with pytest.raises(ValueError, match=f"^{name}: "):
        r.drain(0, *o)
    assert r.size(0) == 3


def test_drain_into_read_only_array_is_refused():
    r = ring_with_caps(8)
    r.push(0, *block(0, 3))
    o = list(outs(4))
    o[2].flags.writeable = False
    with pytest.raises(ValueError, match="^out_values: "):
        r.drain(0, *o)
    assert r.size(0) == 3


def test_clear_forgets_without_counting_drops():
    r = ring_with_caps(8)
    r.push(0, *block(0, 5))
    assert r.clear(0) == 5
    assert r.size(0) == 0 and r.dropped(0) == 0


# -- large blocks release the GIL; concurrent use stays exact -----------------------


def test_large_blocks_roundtrip():
    n = NOGIL_MIN + 1234
    r = ring_with_caps(n + 10)
    s, ts, v, k = block(0, n)
    assert r.push(0, s, ts, v, k) == 0
    got = drain_all(r, 0)
    np.testing.assert_array_equal(got[0], s)
    np.testing.assert_array_equal(got[1], ts)
    np.testing.assert_array_equal(got[2], v)


def test_concurrent_producers_and_consumer_lose_nothing():
    n, blocks = NOGIL_MIN + 17, 3
    r = RingSet(1, SAMPLE_BYTES * 2 * n * blocks, "drop_newest")
    received = []

    def produce(p):
        for b in range(blocks):
            ids = np.arange(n, dtype=np.uint32) + np.uint32((p * blocks + b) * n)
            assert r.push(0, ids, p, ids.astype(np.float64), p) == 0

    def consume():
        o = outs(50_000)
        total = 0
        while total < 2 * n * blocks:
            k = r.drain(0, *o)
            received.append((o[0][:k].copy(), o[1][:k].copy()))
            total += k

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(2)]
    threads.append(threading.Thread(target=consume))
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    ids = np.concatenate([a for a, _ in received])
    who = np.concatenate([b for _, b in received])
    assert np.array_equal(np.sort(ids), np.arange(2 * n * blocks, dtype=np.uint32))
    for p in range(2):  # each producer's samples come out in its push order
        mine = ids[who == p]
        assert np.all(np.diff(mine.astype(np.int64)) > 0)


# -- differential test against the reference ring ------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 2), st.integers(0, 25)),
    st.tuples(st.just("drain"), st.integers(0, 2), st.integers(0, 25)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(caps=st.lists(st.integers(1, 12), min_size=3, max_size=3),
       policy=st.sampled_from(["drop_oldest", "drop_newest"]), program=ops)
def test_matches_reference_ring(caps, policy, program):
    r = ring_with_caps(*caps, policy=policy)
    refs = [RefRing(c, policy) for c in caps]
    offered = [0, 0, 0]
    nxt = 0
    for op, t, n in program:
        if op == "push":
            s, ts, v, k = block(nxt, n)
            rows = list(zip(s.tolist(), ts.tolist(), v.tolist(), k.tolist()))
            nxt += n
            offered[t] += n
            assert r.push(t, s, ts, v, k) == refs[t].push(rows)
        else:
            o = outs(n)
            got = r.drain(t, *o)
            want = refs[t].drain(n)
            assert got == len(want)
            assert list(zip(*(a[:got].tolist() for a in o))) == want
        for u in range(3):
            assert r.size(u) == len(refs[u].q)
            assert r.dropped(u) == refs[u].dropped
            # Nothing accepted is lost: every offered sample is drained, waiting or counted.
            assert offered[u] == r.drained(u) + r.size(u) + r.dropped(u)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_ring_drained_empty_restarts_at_its_first_slot_and_stays_small_in_memory():
    # 256 MiB of rings, used like the agent uses them: a pass pushed, then drained empty.
    rs = RingSet(1, 256 << 20)
    s = np.arange(1000, dtype=np.uint32)
    ts = np.arange(1000, dtype=np.int64)
    v = np.ones(1000)
    out = (np.empty(1000, np.uint32), np.empty(1000, np.int64), np.empty(1000), None)
    before = _rss_kib()
    for _ in range(20_000):  # 20 M samples: 480 MB through a 256 MiB ring
        rs.push(0, s, ts, v, 0)
        assert rs.drain(0, *out) == 1000
    # Only the first 24 KB of the ring were ever written; without the restart
    # every page of the 256 MiB would have become resident.
    assert _rss_kib() - before < 16 * 1024
    assert (out[0] == s).all() and rs.dropped(0) == 0
