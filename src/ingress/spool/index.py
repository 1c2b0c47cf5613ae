"""The spool's in-memory index: what open builds from the files and every call reads.

Nothing in this module touches the disk. A tenant (:class:`_Tenant`) holds its
segments oldest first; each segment (:class:`_Segment`) holds one column per
record field (offset, stored length, sample count, first sample timestamp, in
``array`` form, 24 bytes a record) and, per output, an ack bitmap, a count of
set bits and a low-water mark below which every record is acknowledged. A
record is *full* when every output of its tenant has acknowledged it; a sealed
segment whose records are all full is deleted. The pending totals
(``pend_b``/``pend_s`` per output, ``union_b``/``union_s`` over all) are kept
in step by every append, ack and deletion, so :meth:`Spool.stats` is O(1) per
tenant.

Segment size. An eighth of the tenant quota (at most ``segment_bytes``, at
least 4 KiB) per segment bounds what one quota drop throws away; a segment is
also sealed once its first record is older than an eighth of the retention.
"""
from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ingress.errors import SpoolError
from ingress.security.crypto import TenantCipher
from ingress.spool.ledger import AckLedger

_NS = 1_000_000_000
_U32 = 1 << 32
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


class SpoolFull(SpoolError):
    """The spool cannot take this batch: the disk is full, or the batch alone is
    larger than the tenant's quota. The message says which and where."""


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """Spool limits of one tenant (config ``[tenants.spool]``).

    Parameters
    ----------
    max_bytes : int
        Quota for the tenant's segment files; past it the oldest segments go.
    retention_s : float
        Records whose first sample is older than this are dropped.
    encrypt : bool
        Seal new records with the tenant's AES-256-GCM key.
    """

    max_bytes: int = 256 << 20
    retention_s: float = 86400.0
    encrypt: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or self.max_bytes <= 0:
            raise ValueError(f"max_bytes: {self.max_bytes!r} is not a positive number of bytes")
        if not self.retention_s > 0:
            raise ValueError(f"retention_s: {self.retention_s!r} is not a positive number of seconds")


class RecordRef(NamedTuple):
    """Where a record lives: segment sequence number and byte offset. Orders like the log."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled batch as returned by :meth:`Spool.pending` (payload in clear)."""

    ref: RecordRef
    batch_id: bytes
    payload: bytes
    sample_count: int
    first_ts_ns: int
    append_ns: int


class _Segment:
    """In-memory index of one segment: record columns and per-output ack bitmaps."""

    __slots__ = ("seq", "uid", "path", "size", "sealed", "offsets", "lengths", "samples",
                 "first_ts", "max_first_ts", "first_append_ns", "acked", "nacked", "low",
                 "nfull", "fd", "fd_lock", "dirty")

    def __init__(self, seq: int, uid: bytes, path: Path, size: int, outputs: Sequence[str]) -> None:
        self.seq, self.uid, self.path, self.size = seq, uid, path, size
        self.sealed = True
        self.offsets, self.lengths = array("Q"), array("I")
        self.samples, self.first_ts = array("I"), array("q")
        self.max_first_ts = _I64_MIN
        self.first_append_ns = 0
        self.acked = {o: bytearray() for o in outputs}
        self.nacked = dict.fromkeys(outputs, 0)
        self.low = dict.fromkeys(outputs, 0)
        self.nfull = 0
        self.fd = -1
        self.fd_lock = threading.Lock()
        self.dirty = False

    @property
    def n(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, length: int, samples: int, first_ts: int) -> int:
        i = len(self.offsets)
        self.offsets.append(offset)
        self.lengths.append(length)
        self.samples.append(samples)
        self.first_ts.append(first_ts)
        if first_ts > self.max_first_ts:
            self.max_first_ts = first_ts
        if i % 8 == 0:
            for bm in self.acked.values():
                bm.append(0)
        return i

    def index(self, offset: int) -> int:
        i = bisect_left(self.offsets, offset)
        return i if i < len(self.offsets) and self.offsets[i] == offset else -1

    def is_acked(self, out: str, i: int) -> bool:
        return bool(self.acked[out][i >> 3] & (1 << (i & 7)))

    def full(self, i: int) -> bool:
        return all(bm[i >> 3] & (1 << (i & 7)) for bm in self.acked.values()) if self.acked else False

    def set_acked(self, out: str, i: int) -> bool:
        bm = self.acked[out]
        bit = 1 << (i & 7)
        if bm[i >> 3] & bit:
            return False
        bm[i >> 3] |= bit
        self.nacked[out] += 1
        return True

    def advance_low(self, out: str) -> int:
        i, n, bm = self.low[out], len(self.offsets), self.acked[out]
        while i < n and bm[i >> 3] & (1 << (i & 7)):
            i += 1
        self.low[out] = i
        return i

    def fully_acked(self) -> bool:
        return bool(self.acked) and self.nfull == len(self.offsets)


class _Tenant:
    __slots__ = ("id", "policy", "dir", "outputs", "cipher", "segments", "by_seq", "wlock", "mlock",
                 "bytes", "pend_b", "pend_s", "union_b", "union_s", "dropped_b", "dropped_s",
                 "corrupt", "torn_tails", "new_torn", "damaged", "corrupt_seen", "ledgers", "next_seq",
                 "seg_target", "seg_max_age_ns")

    def __init__(self, tid: str, policy: TenantPolicy, d: Path, outputs: tuple[str, ...],
                 segment_bytes: int) -> None:
        self.id, self.policy, self.dir, self.outputs = tid, policy, d, outputs
        self.cipher: TenantCipher | None = None
        self.segments: list[_Segment] = []
        self.by_seq: dict[int, _Segment] = {}
        self.wlock = threading.RLock()
        self.mlock = threading.RLock()
        self.bytes = 0
        self.pend_b = dict.fromkeys(outputs, 0)
        self.pend_s = dict.fromkeys(outputs, 0)
        self.union_b = self.union_s = 0
        self.dropped_b = self.dropped_s = 0
        self.corrupt = 0  # cumulative, persisted: damaged regions and records, each counted once
        self.torn_tails = 0  # cumulative, persisted: torn tails truncated at open
        self.new_torn = 0
        self.damaged = 0  # cumulative, persisted: damaged state files set aside
        self.corrupt_seen: dict[int, int] = {}  # seq -> damaged regions of it already counted
        self.ledgers = {o: AckLedger(d, o) for o in outputs}
        self.next_seq = 1
        # An eighth of the quota per segment bounds what one quota drop throws away.
        self.seg_target = min(segment_bytes, max(4096, policy.max_bytes // 8))
        self.seg_max_age_ns = max(1 * _NS, int(policy.retention_s * _NS) // 8)

    @property
    def active(self) -> _Segment | None:
        if self.segments and not self.segments[-1].sealed:
            return self.segments[-1]
        return None

    def drop_descriptors(self) -> None:
        """Close the active segment's descriptor and the ack ledgers without syncing,
        as a killed process would (the tenant is dropped, or the spool abandoned)."""
        seg = self.active
        if seg is not None and seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        for led in self.ledgers.values():
            led.close(sync=False)
