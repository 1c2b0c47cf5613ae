"""Per-tenant batcher: drains each tenant's ring into closed, encoded batches.

A batch holds samples of exactly one tenant. It closes at whichever comes first:

- ``max_samples`` samples (default 50,000);
- ``max_bytes`` encoded bytes (default 1 MiB), estimated before encoding from the
  tenant's last batch (encoded bytes / samples), so the batch is cut before the
  encoder runs; the limit is a target, a batch of unusual content can exceed it;
- ``max_age_ms`` since its first sample entered it (default 1000 ms, measured on a
  monotonic clock, so wall-clock jumps neither hold nor rush a batch).

A closed batch gets its 16-byte id (``os.urandom``) and is encoded at once with
``ingress.wire.encode``; what leaves is a :class:`ClosedBatch`.

Series ids and release
----------------------
Samples carry registry ids, not names; ``SeriesRegistry.dictionary`` maps them
at close time. An evicted id stays quarantined (still resolvable) until the
registry is told that no sample pushed before its eviction is still waiting.
The batcher knows when: it reads ``registry.epoch`` before a drain loop that
empties the ring, and once the batch holding those samples is encoded, every id
quarantined at or before that epoch is safe to reuse (``release(t, upto)``).

A ``Batcher`` is driven by one thread (``poll`` / ``flush``); rings and registry
may be fed concurrently by others.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ingress.buffer.registry import SeriesRegistry
from ingress.buffer.rings import RingSet

__all__ = ["Batcher", "ClosedBatch", "REASONS"]

log = logging.getLogger("ingress.buffer")

#: Why a batch closed, as counted in ``Batcher.stats()``.
REASONS = ("samples", "bytes", "age", "flush")

Encoder = Callable[..., bytes]


@dataclass(frozen=True, slots=True)
class ClosedBatch:
    """One encoded single-tenant batch, ready for the spool.

    ``first_ts`` / ``last_ts`` are the smallest and largest sample timestamps
    (ns since the epoch) in it.
    """

    tenant: str
    batch_id: bytes
    payload: bytes
    sample_count: int
    first_ts: int
    last_ts: int


class _Pending:
    """A tenant's open batch: preallocated columns, filled by ring drains."""

    __slots__ = ("series", "ts", "values", "index", "n", "first_ns", "bytes_per_sample",
                 "complete_epoch", "releasable", "released", "batches", "samples", "bytes",
                 "closed_by", "encode_errors", "samples_lost", "last_error_log")

    def __init__(self, cap: int, bytes_per_sample: float) -> None:
        self.series = np.zeros(cap, np.uint32)
        self.ts = np.zeros(cap, np.int64)
        self.values = np.zeros(cap, np.float64)
        self.index = np.zeros(cap, np.uint32)
        self.n = 0
        self.first_ns = 0
        self.bytes_per_sample = bytes_per_sample
        self.complete_epoch = 0   # registry epoch read before the last drain that emptied the ring
        self.releasable = 0       # quarantine epochs whose samples are all encoded
        self.released = 0
        self.batches = 0
        self.samples = 0
        self.bytes = 0
        self.closed_by = dict.fromkeys(REASONS, 0)
        self.encode_errors = 0
        self.samples_lost = 0
        self.last_error_log: float | None = None


class Batcher:
    """Cuts each tenant's ring into encoded batches.

    Parameters
    ----------
    rings : RingSet
        The per-tenant rings to drain.
    registry : SeriesRegistry
        Resolves series ids at close time; told when quarantined ids are free.
    tenants : sequence of str
        Tenant id per tenant index (``len == rings.n_tenants``).
    host : str
        Host name written into every batch.
    encode : callable, optional
        ``encode(tenant, host, series, series_index, timestamps, values, batch_id) -> bytes``;
        default ``ingress.wire.encode``, looked up at the first close. The arrays it
        gets are views of reused buffers, valid during the call only.
    max_samples, max_bytes, max_age_ms
        Close rules (see the module doc).
    initial_bytes_per_sample : float
        Byte estimate before a tenant's first batch: the raw sample size, so a first
        batch errs small.
    clock_ns : callable, optional
        Monotonic clock in ns (injectable for tests).
    """

    def __init__(self, rings: RingSet, registry: SeriesRegistry, tenants: Sequence[str],
                 host: str, *, encode: Encoder | None = None, max_samples: int = 50_000,
                 max_bytes: int = 1 << 20, max_age_ms: float = 1000.0,
                 initial_bytes_per_sample: float = 24.0,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        if len(tenants) != rings.n_tenants:
            raise ValueError(f"tenants: {len(tenants)} ids for {rings.n_tenants} rings")
        if registry.n_tenants != rings.n_tenants:
            raise ValueError(f"registry: {registry.n_tenants} tenants for {rings.n_tenants} rings")
        if max_samples < 1:
            raise ValueError(f"max_samples: {max_samples} is not a positive number")
        if max_bytes < 1:
            raise ValueError(f"max_bytes: {max_bytes} is not a positive number")
        if not max_age_ms > 0:
            raise ValueError(f"max_age_ms: {max_age_ms!r} is not a positive number")
        if not initial_bytes_per_sample > 0:
            raise ValueError(f"initial_bytes_per_sample: {initial_bytes_per_sample!r} is not positive")
        self.rings = rings
        self.registry = registry
        self.tenants = list(tenants)
        self.host = host
        self._encode = encode
        self.max_samples = int(max_samples)
        self.max_bytes = int(max_bytes)
        self.max_age_ns = int(max_age_ms * 1_000_000)
        self._clock = clock_ns
        self._p = [_Pending(self.max_samples, float(initial_bytes_per_sample))
                   for _ in self.tenants]

    # -- driving -------------------------------------------------------------------------

    def poll(self, now_ns: int | None = None) -> list[ClosedBatch]:
        """Drain every ring; return the batches that closed (by size, bytes or age)."""
        now = self._clock() if now_ns is None else now_ns
        out: list[ClosedBatch] = []
        for t in range(len(self._p)):
            self._drain(t, now, out)
            p = self._p[t]
            if p.n and now - p.first_ns >= self.max_age_ns:
                self._close(t, "age", out)
        self._release()
        return out

    def flush(self, now_ns: int | None = None) -> list[ClosedBatch]:
        """Drain every ring and close every pending batch (shutdown)."""
        now = self._clock() if now_ns is None else now_ns
        out: list[ClosedBatch] = []
        for t in range(len(self._p)):
            self._drain(t, now, out)
            if self._p[t].n:
                self._close(t, "flush", out)
        self._release()
        return out

    def next_deadline_ns(self) -> int | None:
        """When the oldest pending batch closes by age (monotonic ns), or None if none is pending."""
        due = [p.first_ns + self.max_age_ns for p in self._p if p.n]
        return min(due) if due else None

    # -- internals ---------------------------------------------------------------------

    def _limit(self, p: _Pending) -> tuple[int, str]:
        by_bytes = int(self.max_bytes / p.bytes_per_sample)
        if by_bytes < self.max_samples:
            return max(1, by_bytes), "bytes"
        return self.max_samples, "samples"

    def _drain(self, t: int, now: int, out: list[ClosedBatch]) -> None:
        p = self._p[t]
        rings = self.rings
        epoch = self.registry.epoch
        while True:
            lim, reason = self._limit(p)
            if p.n < lim:
                got = rings.drain(t, p.series[:lim], p.ts[:lim], p.values[:lim], None, p.n)
                if got and p.n == 0:
                    p.first_ns = now
                p.n += got
                if p.n < lim:
                    break  # the ring ran dry before the batch filled
            self._close(t, reason, out)
        # Every sample pushed before `epoch` was read is now encoded or in p.
        p.complete_epoch = epoch
        if p.n == 0:
            p.releasable = epoch

    def _close(self, t: int, reason: str, out: list[ClosedBatch]) -> None:
        p = self._p[t]
        n = p.n
        ts = p.ts[:n]
        batch_id = os.urandom(16)
        try:
            series, index = self.registry.dictionary(t, p.series[:n], out=p.index[:n])
            encode = self._encode
            if encode is None:
                from ingress import wire  # written in parallel; resolved on first use
                encode = self._encode = wire.encode
            payload = encode(self.tenants[t], self.host, series, index, ts, p.values[:n], batch_id)
        except Exception:
            # Count, don't raise: one bad batch must not stop the other tenants or
            # lose the batches already closed in this round.
            p.encode_errors += 1
            p.samples_lost += n
            now = time.monotonic()
            if p.last_error_log is None or now - p.last_error_log >= 60.0:
                p.last_error_log = now
                log.exception("tenant %s: cannot encode a batch of %d samples; dropped it "
                              "(%d batches dropped so far)", self.tenants[t], n, p.encode_errors)
        else:
            out.append(ClosedBatch(self.tenants[t], batch_id, payload, n,
                                   int(ts.min()), int(ts.max())))
            p.bytes_per_sample = max(len(payload) / n, 1e-3)
            p.batches += 1
            p.samples += n
            p.bytes += len(payload)
            p.closed_by[reason] += 1
        p.n = 0
        # Samples drained before the last complete drain are all encoded now.
        p.releasable = p.complete_epoch

    def _release(self) -> None:
        for t, p in enumerate(self._p):
            if p.releasable > p.released:
                self.registry.release(t, upto=p.releasable)
                p.released = p.releasable

    # -- introspection -----------------------------------------------------------------

    def pending(self, t: int) -> int:
        """Samples waiting in tenant ``t``'s open batch (not counting its ring)."""
        return self._p[t].n

    def stats(self) -> dict[str, dict]:
        """Per tenant id: batches, samples, bytes, closed_by, encode_errors, samples_lost, pending."""
        return {self.tenants[t]: {"batches": p.batches, "samples": p.samples, "bytes": p.bytes,
                                  "closed_by": dict(p.closed_by), "encode_errors": p.encode_errors,
                                  "samples_lost": p.samples_lost, "pending": p.n,
                                  "bytes_per_sample": p.bytes_per_sample}
                for t, p in enumerate(self._p)}
