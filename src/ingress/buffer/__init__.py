"""The in-memory buffer: per-tenant sample rings and the series registry.

Collectors push whole columns into a tenant's ring (``RingSet``), with series
ids from that tenant's ``SeriesRegistry``; the agent's pipeline
(``ingress.pipeline.Pipeline``) drains each ring into single-tenant batches and
encodes them. See docs/buffer.md.
"""
from __future__ import annotations

from ingress.buffer.gcstats import freeze_long_lived, gc_pause_stats
from ingress.buffer.registry import SeriesRegistry
from ingress.buffer.rings import SAMPLE_BYTES, RingSet

__all__ = ["SAMPLE_BYTES", "RingSet", "SeriesRegistry", "freeze_long_lived", "gc_pause_stats"]
