"""Per-tenant sample rings over one preallocated pool (compiled: ``ingress._core._ring``).

Sizing: the pool holds ``budget_bytes // SAMPLE_BYTES`` samples, split across
tenants in proportion to their weights and rounded down, so the pool never
exceeds the budget. See docs/buffer.md for the maths and the drop policies.
"""
from __future__ import annotations

from ingress._core._ring import NOGIL_MIN, POLICIES, RingSet, sample_size

__all__ = ["NOGIL_MIN", "POLICIES", "SAMPLE_BYTES", "RingSet"]

#: Bytes per pooled sample (the C ``Sample`` struct).
SAMPLE_BYTES: int = sample_size()
