"""Question: how fast do samples move through a tenant ring, in 1,000-sample blocks?

Workload: push a block of 1,000 samples (uint32 series, int64 ts, float64 value,
uint8 kind) into one tenant's ring, drain it into caller-owned columns; repeat.
Goal: >= 100 M samples/s push+drain on the development machine.

Baselines, measured in the same run on the same columns:
- numpy: slice-assign the four columns into preallocated pool arrays and back out
  (a struct-of-arrays ring without wraparound or drop accounting: a lower bound
  on what plain numpy costs per block);
- deque: a Python ``collections.deque`` of per-sample tuples (what a naive pure
  Python buffer does).
Floors are ratios to those baselines, well under what this machine measures, so
a loaded CI box does not flake but a real regression (a per-sample Python object,
a lost fast path) fails.
"""
from __future__ import annotations

import collections
import time

import numpy as np
import pytest

from benchmarks.conftest import record_ratio
from ingress.buffer import SAMPLE_BYTES, RingSet

N = 1000


def columns(n=N):
    rng = np.random.default_rng(7)
    return (rng.integers(0, 5000, n).astype(np.uint32), np.arange(n, dtype=np.int64) * 10**9,
            rng.random(n), (np.arange(n) % 2).astype(np.uint8))


def outputs(n=N):
    return (np.empty(n, np.uint32), np.empty(n, np.int64), np.empty(n, np.float64),
            np.empty(n, np.uint8))


def best_of(fn, rounds):
    """Best wall time of ``rounds`` runs (the baselines are timed by hand, the ring by the fixture)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ring_loop(blocks, n=N):
    rings = RingSet(4, SAMPLE_BYTES * 64 * N * 4)   # 64 blocks per tenant: the ring wraps
    s, ts, v, k = columns(n)
    o = outputs(n)
    push, drain = rings.push, rings.drain

    def run():
        for _ in range(blocks):
            push(1, s, ts, v, k)
            drain(1, o[0], o[1], o[2], o[3])
        return rings
    return run


def numpy_loop(blocks, n=N):
    cap = 64 * N
    pool = (np.empty(cap, np.uint32), np.empty(cap, np.int64), np.empty(cap, np.float64),
            np.empty(cap, np.uint8))
    cols = columns(n)
    o = outputs(n)

    def run():
        pos = 0
        for _ in range(blocks):
            end = pos + n
            pool[0][pos:end] = cols[0]
            pool[1][pos:end] = cols[1]
            pool[2][pos:end] = cols[2]
            pool[3][pos:end] = cols[3]
            o[0][:] = pool[0][pos:end]
            o[1][:] = pool[1][pos:end]
            o[2][:] = pool[2][pos:end]
            o[3][:] = pool[3][pos:end]
            pos = 0 if end + n > cap else end
    return run


def deque_loop(blocks, n=N):
    dq: collections.deque = collections.deque(maxlen=64 * N)
    s, ts, v, k = (c.tolist() for c in columns(n))
    o = outputs(n)

    def run():
        for _ in range(blocks):
            dq.extend(zip(s, ts, v, k))
            rows = [dq.popleft() for _ in range(min(n, len(dq)))]
            a, b, c, d = zip(*rows)
            o[0][:] = a
            o[1][:] = b
            o[2][:] = c
            o[3][:] = d
    return run


@pytest.fixture
def blocks(bench_short):
    return 300 if bench_short else 3000


def test_ring_push_drain_1000_sample_blocks(bench, bench_short, blocks):
    rounds = 5 if bench_short else 30
    numpy_s = best_of(numpy_loop(blocks), rounds)
    deque_blocks = max(blocks // 20, 10)
    deque_s = best_of(deque_loop(deque_blocks), max(rounds // 3, 3)) * (blocks / deque_blocks)
    rings, ring_s = bench(ring_loop(blocks))
    samples = blocks * N
    assert rings.drained(1) == rings.pushed(1) and rings.dropped(1) == 0
    ring_rate, numpy_rate, deque_rate = samples / ring_s, samples / numpy_s, samples / deque_s
    print(f"\nring  push+drain: {ring_rate / 1e6:8.1f} M samples/s ({ring_s / blocks * 1e6:.2f} us/block)"
          f"\nnumpy slice copy: {numpy_rate / 1e6:8.1f} M samples/s ({numpy_s / blocks * 1e6:.2f} us/block)"
          f"\ndeque of tuples : {deque_rate / 1e6:8.1f} M samples/s ({deque_s / blocks * 1e6:.2f} us/block)")
    # Measured ~1.4x numpy and ~110x deque on the 2-core dev box (docs/buffer.md).
    record_ratio("ring push+drain 1k blocks vs numpy slice copy", numpy_s / ring_s, 0.6)
    record_ratio("ring push+drain 1k blocks vs deque of tuples", deque_s / ring_s, 20.0)


def test_ring_call_overhead(bench, bench_short):
    """One-sample blocks: what a push+drain pair costs besides copying."""
    calls = 3000 if bench_short else 30000
    rounds = 5 if bench_short else 30
    numpy_s = best_of(numpy_loop(calls, n=1), rounds)
    _, ring_s = bench(ring_loop(calls, n=1))
    print(f"\nring  push+drain pair overhead: {ring_s / calls * 1e9:7.0f} ns"
          f"\nnumpy 8 slice assignments     : {numpy_s / calls * 1e9:7.0f} ns")
    record_ratio("ring push+drain call overhead vs numpy slice copy", numpy_s / ring_s, 1.0)
