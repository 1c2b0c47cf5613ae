"""The in-memory buffer: per-tenant sample rings, the series registry, the batcher.

Collectors push whole columns into a tenant's ring (``RingSet``), with series
ids from that tenant's ``SeriesRegistry``; the ``Batcher`` drains each ring into
single-tenant batches and encodes them. See docs/buffer.md.
"""
from __future__ import annotations

from ingress.buffer.batcher import Batcher, ClosedBatch
from ingress.buffer.gcstats import freeze_long_lived, gc_pause_stats
from ingress.buffer.registry import SeriesRegistry
from ingress.buffer.rings import SAMPLE_BYTES, RingSet

__all__ = ["SAMPLE_BYTES", "Batcher", "ClosedBatch", "RingSet", "SeriesRegistry",
           "freeze_long_lived", "gc_pause_stats"]
