"""The steady state allocates nothing per sample: memory stays flat under load.

Each check warms up, then runs 1,000 blocks of 1,000 samples (1,000,000 samples)
and asserts that traced memory and live allocator blocks grew by at most a
small constant, independent of the number of samples.
"""
from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np
import pytest

from ingress.buffer import (SAMPLE_BYTES, RingSet, SeriesRegistry, freeze_long_lived,
                            gc_pause_stats)

BLOCKS, N = 1000, 1000
SLACK_BYTES = 8 * 1024    # observed: a few hundred bytes (tracemalloc bookkeeping)
SLACK_BLOCKS = 64        # one leaked object per block would be 1,000


class Flat:
    """Measure traced bytes and live blocks around a block of work."""

    def __enter__(self):
        gc.collect()
        tracemalloc.start()
        self.bytes0 = tracemalloc.get_traced_memory()[0]
        self.blocks0 = sys.getallocatedblocks()
        return self

    def __exit__(self, *exc):
        gc.collect()
        self.grew_bytes = tracemalloc.get_traced_memory()[0] - self.bytes0
        self.grew_blocks = sys.getallocatedblocks() - self.blocks0
        tracemalloc.stop()
        return False

    def check(self):
        assert self.grew_bytes <= SLACK_BYTES, f"traced memory grew by {self.grew_bytes} bytes"
        assert self.grew_blocks <= SLACK_BLOCKS, f"{self.grew_blocks} more live blocks"


def columns(n=N):
    return (np.arange(n, dtype=np.uint32), np.arange(n, dtype=np.int64),
            np.random.default_rng(1).random(n), np.zeros(n, np.uint8))


def outputs(n=N):
    return (np.empty(n, np.uint32), np.empty(n, np.int64), np.empty(n, np.float64),
            np.empty(n, np.uint8))


def test_million_pushes_and_drains_stay_flat():
    rings = RingSet(2, SAMPLE_BYTES * 8 * N)
    s, ts, v, k = columns()
    o = outputs()
    for _ in range(50):
        rings.push(0, s, ts, v, k)
        rings.drain(0, *o)
    with Flat() as f:
        for _ in range(BLOCKS):
            rings.push(0, s, ts, v, k)
            rings.drain(0, *o)
    f.check()
    assert rings.drained(0) == (BLOCKS + 50) * N


def test_full_ring_with_scalar_columns_stays_flat():
    # The drop path and the broadcast path, ring always full.
    rings = RingSet(1, SAMPLE_BYTES * (N // 2), "drop_oldest")
    s, _, v, _ = columns()
    for _ in range(50):
        rings.push(0, s, 123, v, 1)
    with Flat() as f:
        for _ in range(BLOCKS):
            rings.push(0, s, 123, v, 1)
    f.check()
    assert rings.dropped(0) == (BLOCKS + 50) * N - rings.capacity(0)


def test_registry_touch_and_dictionary_stay_flat():
    reg = SeriesRegistry(1, max_series=N)
    for i in range(N):
        reg.intern(0, f"m{i}", (("core", str(i % 8)),), now_ns=0)
    sids = np.random.default_rng(2).integers(0, N, 50 * N).astype(np.uint32)
    index = np.empty(sids.size, np.uint32)
    for i in range(20):
        reg.touch(0, sids[:N], i)
        reg.dictionary(0, sids, out=index)
    with Flat() as f:
        for i in range(BLOCKS):
            reg.touch(0, sids[:N], i)
            if i % 20 == 0:  # one dictionary per 50,000-sample batch
                reg.dictionary(0, sids, out=index)
    f.check()


# -- collector pauses ------------------------------------------------------------------


def test_gc_pause_stats_records_collections():
    before = gc_pause_stats()
    gc.collect(0)
    gc.collect()
    after = gc_pause_stats()
    assert after[0]["count"] >= before[0]["count"] + 1
    assert after[2]["count"] >= before[2]["count"] + 1
    assert after[2]["total_s"] > before[2]["total_s"]
    assert after[2]["max_s"] > 0 and after[2]["max_s"] <= after[2]["total_s"]


@pytest.fixture
def unfreeze():
    yield
    gc.unfreeze()


def test_freeze_long_lived_moves_the_heap_out_of_collections(unfreeze):
    marker = ["long-lived"]  # a tracked container, alive across the freeze
    assert any(o is marker for o in gc.get_objects())
    frozen = freeze_long_lived()
    assert frozen == gc.get_freeze_count() and frozen > 0
    # Frozen objects sit in the permanent generation: no collection walks them.
    assert not any(o is marker for o in gc.get_objects())
    assert gc_pause_stats()[2]["count"] >= 1
