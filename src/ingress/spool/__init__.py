"""The on-disk, per-tenant spool between the batcher and the outputs.

Every closed batch is appended here before any output sees it; outputs read it
back with :meth:`Spool.pending` and acknowledge with :meth:`Spool.ack`. The
design is divided among the package's modules, each of which opens with its
part of the byte layout and of the recovery rules; :mod:`ingress.spool.store`
lists them. docs/spool.md has the whole picture.
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
from ingress.tokenbucket import TokenBucket

__all__ = ["RecordRef", "Spool", "SpoolFull", "SpoolRecord", "TenantPolicy", "TokenBucket", "stats_for"]
