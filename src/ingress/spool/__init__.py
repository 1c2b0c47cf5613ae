"""The on-disk, per-tenant spool between the batcher and the outputs.

Every closed batch is appended here before any output sees it; outputs read it
back with :meth:`Spool.pending` and acknowledge with :meth:`Spool.ack`. The
design, the byte layout and the recovery rules are at the top of
:mod:`ingress.spool.store`, :mod:`ingress.spool.segment` and
:mod:`ingress.spool.ledger`, and in docs/spool.md.
"""
from __future__ import annotations

from ingress.spool.store import (
    RecordRef,
    Spool,
    SpoolFull,
    SpoolRecord,
    TenantPolicy,
    stats_for,
)
from ingress.spool.throttle import TokenBucket

__all__ = ["RecordRef", "Spool", "SpoolFull", "SpoolRecord", "TenantPolicy", "TokenBucket", "stats_for"]
