"""The read side: pending records per output, acknowledgements, and stats.

``pending`` picks candidates under the tenant's ``mlock`` (brief: the index
only) and reads payloads outside every lock through its own descriptor; a
segment deleted meanwhile is simply gone (POSIX keeps an opened file
readable), and a published record is never rewritten. Each record read is
checked again (CRC, and authentication when sealed); one that no longer
verifies is logged, counted once in ``corrupt_records`` and acknowledged for
good by every output, so it is never returned or counted again.

An output acknowledges with ``ack``, in any order: one 12-byte append to the
(segment, output) ledger (format and its recovery rule in
:mod:`ingress.spool.ledger`); the ledger is not synced on this path, a lost ack
costs a duplicate, never data. An ack that cannot be written holds in memory.
"""
from __future__ import annotations

import os
from bisect import bisect_right

from ingress.errors import SpoolError
from ingress.logs import get_logger
from ingress.security.crypto import DecryptError
from ingress.spool.counters import save_counters
from ingress.spool.index import _NS, RecordRef, SpoolRecord, _Segment, _Tenant
from ingress.spool.segment import FLAG_SEALED, REC_HEADER_SIZE, check_record

log = get_logger("ingress.spool")


class _Reader:
    """Spool mixin: ``pending``, ``ack`` and ``stats``."""

    def pending(self, tenant: str, output: str, limit: int = 64,
                after: RecordRef | None = None) -> list[SpoolRecord]:
        """Records of ``tenant`` not yet acknowledged by ``output``, oldest first.

        Parameters
        ----------
        limit : int
            At most this many records.
        after : RecordRef, optional
            Only records after this one: lets a delivery worker page past the
            batches it has in flight without waiting for their acks.

        A record whose bytes no longer verify (CRC, or authentication for an
        encrypted one) is logged, counted in ``corrupt_records`` and skipped
        for good; it is never returned.
        """
        if self._readonly:
            raise SpoolError(f"{self.dir}: opened read-only for stats; pending() needs the writer")
        self._check_open()
        t = self._tenant(tenant)
        self._check_output(t, output)
        out: list[SpoolRecord] = []
        cursor = after
        while len(out) < limit:
            with t.mlock:
                cands = self._candidates(t, output, limit - len(out), cursor)
            if not cands:
                break
            cursor = RecordRef(cands[-1][0].seq, cands[-1][0].offsets[cands[-1][1]])
            out.extend(self._read(t, cands))
        return out

    def _candidates(self, t: _Tenant, output: str, limit: int, cursor: RecordRef | None):
        cands: list[tuple[_Segment, int]] = []
        for seg in t.segments:
            if cursor is not None and seg.seq < cursor.segment:
                continue
            i = seg.advance_low(output)
            if cursor is not None and seg.seq == cursor.segment:
                i = max(i, bisect_right(seg.offsets, cursor.offset))
            n = seg.n
            while i < n:
                if not seg.is_acked(output, i):
                    cands.append((seg, i))
                    if len(cands) >= limit:
                        return cands
                i += 1
        return cands

    def _read(self, t: _Tenant, cands) -> list[SpoolRecord]:
        out: list[SpoolRecord] = []
        fd, fd_seg = -1, None
        try:
            for seg, i in cands:
                if seg is not fd_seg:
                    if fd >= 0:
                        os.close(fd)
                        fd = -1
                    fd_seg = seg
                    try:
                        fd = os.open(seg.path, os.O_RDONLY)
                    except FileNotFoundError:
                        continue  # deleted meanwhile (acked by all, or dropped)
                if fd < 0:
                    continue
                off, length = seg.offsets[i], seg.lengths[i]
                rec = self._verify(t, seg, i, os.pread(fd, REC_HEADER_SIZE + length, off))
                if rec is not None:
                    out.append(rec)
        finally:
            if fd >= 0:
                os.close(fd)
        return out

    def _verify(self, t: _Tenant, seg: _Segment, i: int, data: bytes) -> SpoolRecord | None:
        off = seg.offsets[i]
        h = check_record(data, 0, len(data))
        problem = None
        if h is None or h.length != seg.lengths[i]:
            problem = "record no longer verifies (CRC)"
        else:
            payload = data[REC_HEADER_SIZE:]
            if h.flags & FLAG_SEALED:
                try:
                    if t.cipher is None:
                        raise DecryptError(f"tenant {t.id!r}: no key loaded")
                    payload = t.cipher.open(h.batch_id, payload, h.sample_count, h.first_ts_ns)
                except DecryptError as e:
                    problem = str(e)
        if problem is None:
            return SpoolRecord(RecordRef(seg.seq, off), h.batch_id, payload, h.sample_count,
                               h.first_ts_ns, h.append_ns)
        log.error(f"{seg.path}@{off}: tenant {t.id!r}: {problem}; record skipped", tenant=t.id,
                  path=str(seg.path), offset=off)
        from ingress.security.events import event

        event("security.tamper_suspected", f"spool record failed its check: {problem}", tenant=t.id,
              path=str(seg.path), offset=off)
        with t.mlock:
            if t.by_seq.get(seg.seq) is seg and not seg.full(i):
                t.corrupt += 1
                t.corrupt_seen[seg.seq] = t.corrupt_seen.get(seg.seq, 0) + 1
                # Acked for good (persisted), so it is never read, or counted, again.
                for o in t.outputs:
                    self._mark(t, seg, o, i, persist=not self._readonly)
                if not self._readonly:
                    save_counters(t)
                if seg.sealed and seg.fully_acked():
                    self._delete_segment(t, seg, reason=None)
        return None

    # ------------------------------------------------------------------ acks
    def ack(self, tenant: str, output: str, ref: RecordRef) -> bool:
        """Mark a record delivered by ``output``. Any order; idempotent.

        Returns False when the record is unknown (already deleted or dropped)
        or was already acknowledged by this output.
        """
        t = self._tenant(tenant)
        self._check_output(t, output)
        with t.mlock:
            self._check_open()
            seg = t.by_seq.get(ref[0])
            if seg is None:
                return False
            i = seg.index(ref[1])
            if i < 0 or not self._mark(t, seg, output, i, persist=not self._readonly):
                return False
            if seg.sealed and seg.fully_acked():
                self._delete_segment(t, seg, reason=None)
        return True

    def _mark(self, t: _Tenant, seg: _Segment, output: str, i: int, persist: bool) -> bool:
        if not seg.set_acked(output, i):
            return False
        s = seg.samples[i]
        t.pend_b[output] -= 1
        t.pend_s[output] -= s
        if seg.full(i):
            seg.nfull += 1
            t.union_b -= 1
            t.union_s -= s
        if persist:
            try:
                t.ledgers[output].append(seg.seq, seg.uid, seg.offsets[i])
            except OSError as e:
                # The ack holds in memory; after a restart the batch is sent again (at least once).
                p = t.ledgers[output].path(seg.seq)
                log.warning(f"{p}: cannot record ack: {e}", tenant=t.id, output=output, path=str(p))
        return True

    def stats(self) -> dict[str, dict]:
        """Per tenant: ``segments``, ``bytes``, ``oldest_age_s`` (first sample of the
        oldest batch not yet delivered everywhere; 0.0 when none), ``samples_pending``
        and ``batches_pending`` (not yet delivered by every output),
        ``pending_by_output`` ({output: {batches, samples}}), ``dropped_batches``,
        ``dropped_samples``, ``corrupt_records`` (damaged regions and records,
        each counted once), ``torn_tails`` (torn or corrupt segment tails
        truncated at open: the trace a crash in the middle of a write leaves)
        and ``damaged_files`` (state files found damaged and set aside). Every
        loss counter is cumulative and persisted in ``counters.json``.
        A held tenant (see :attr:`held`) has no entry."""
        now = self._clock()
        out: dict[str, dict] = {}
        for tid, t in self._tenants.items():
            with t.mlock:
                oldest = self._oldest_pending_ts(t)
                out[tid] = {
                    "segments": len(t.segments),
                    "bytes": t.bytes,
                    "oldest_age_s": max(0.0, (now - oldest) / _NS) if oldest is not None else 0.0,
                    "samples_pending": t.union_s,
                    "batches_pending": t.union_b,
                    "pending_by_output": {o: {"batches": t.pend_b[o], "samples": t.pend_s[o]}
                                          for o in t.outputs},
                    "dropped_batches": t.dropped_b,
                    "dropped_samples": t.dropped_s,
                    "corrupt_records": t.corrupt,
                    "torn_tails": t.torn_tails,
                    "damaged_files": t.damaged,
                }
        return out

    def _oldest_pending_ts(self, t: _Tenant) -> int | None:
        for seg in t.segments:
            if seg.fully_acked() or seg.n == 0:
                continue
            i = min((seg.advance_low(o) for o in t.outputs), default=0)
            if i < seg.n:
                return seg.first_ts[i]
        return None

