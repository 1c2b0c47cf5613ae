"""The write side: appending a record, rotating segments, group commit, a full disk.

Life of a record. ``append`` seals the payload when the tenant encrypts, waits
for the shared write throttle, then writes header and payload with one
``writev`` to the tenant's active segment and (fsync policy ``"batch"``, the
default) ``fdatasync``s it before returning: "accepted" means "on disk". With a
float policy the write returns at once and a flusher thread syncs every
interval (group commit; a power loss may cost the last interval). Only then is
the record published to ``pending``. Record and segment formats are in
:mod:`ingress.spool.segment`.

Rotation. The active segment is the newest file the running process created;
it is sealed when the next record would take it past the segment size or when
its first record is older than the segment age (see :mod:`ingress.spool.index`).
Sealing closes the descriptor and changes nothing on disk, so rotation has no
crash window. At open every existing segment counts as sealed and the first
append creates a new one (created with O_EXCL, header written, directory
synced; the header reaches the disk with the first record's sync).

A full disk (ENOSPC/EDQUOT on write or sync) cuts the partial record off
(``ftruncate`` back to the last whole record), logs one error on
``ingress.spool`` per episode and raises :class:`SpoolFull`; the next append
that fits succeeds again and says so. A record that cannot be cut off seals its
segment; recovery at the next open truncates the tail.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ingress._fs import fsync_dir, unlink_quiet, write_all
from ingress.errors import SpoolError
from ingress.logs import get_logger
from ingress.spool.index import (
    _I64_MAX,
    _I64_MIN,
    _U32,
    RecordRef,
    SpoolFull,
    _Segment,
    _Tenant,
)
from ingress.spool.segment import (
    FLAG_SEALED,
    MAX_PAYLOAD,
    REC_HEADER_SIZE,
    SEG_HEADER_SIZE,
    pack_record_header,
    pack_segment_header,
    segment_name,
)

log = get_logger("ingress.spool")

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _write_all(fd: int, header: bytes, payload) -> None:
    total = len(header) + len(payload)
    n = os.writev(fd, (header, payload))
    if n < total:  # short write (e.g. the disk filled up mid-record): finish or fail
        write_all(fd, memoryview(header + bytes(payload))[n:])


class _Appender:
    """Spool mixin: ``append``, segment creation and sealing, group-commit ``flush``."""

    def append(self, tenant: str, batch_id: bytes, payload: bytes, sample_count: int,
               first_ts_ns: int) -> RecordRef:
        """Store one encoded batch durably (per the fsync policy) and return its ref.

        Parameters
        ----------
        tenant : str
            A tenant given at construction.
        batch_id : bytes
            The batch's 16-byte id.
        payload : bytes-like
            The encoded batch.
        sample_count : int
            Samples in the batch (0 .. 2**32-1).
        first_ts_ns : int
            Timestamp of its first sample, ns since the epoch; retention uses it.

        Raises
        ------
        SpoolFull
            The disk is full (nothing of this batch stays on disk), or the batch
            alone is larger than the tenant's quota.
        SpoolError
            Unknown tenant, spool closed, or another I/O error.
        """
        t = self._writable(tenant)
        if not isinstance(batch_id, (bytes, bytearray)) or len(batch_id) != 16:
            raise ValueError(f"tenant {tenant!r}: batch_id must be 16 bytes, got {batch_id!r}")
        if not 0 <= sample_count < _U32:
            raise ValueError(f"tenant {tenant!r}: sample_count {sample_count!r} out of range")
        if not _I64_MIN <= first_ts_ns <= _I64_MAX:
            raise ValueError(f"tenant {tenant!r}: first_ts_ns {first_ts_ns!r} out of range")
        batch_id = bytes(batch_id)
        flags, stored = 0, payload
        if t.policy.encrypt:
            stored = t.cipher.seal(batch_id, payload, sample_count, first_ts_ns)
            flags = FLAG_SEALED
        if len(stored) > MAX_PAYLOAD:
            raise SpoolError(f"tenant {tenant!r}: batch {batch_id.hex()} is {len(stored)} bytes, "
                             f"larger than the spool's record limit of {MAX_PAYLOAD}")
        rec_len = REC_HEADER_SIZE + len(stored)
        if rec_len + SEG_HEADER_SIZE > t.policy.max_bytes:
            raise SpoolFull(f"tenant {tenant!r}: batch {batch_id.hex()} needs {rec_len + SEG_HEADER_SIZE} "
                            f"bytes, more than the tenant's whole spool quota of {t.policy.max_bytes}")
        if self._throttle is not None:
            self._throttle.acquire(rec_len)
        with t.wlock:
            self._check_open()
            now = self._clock()
            self._expire(t, now)
            act = t.active
            if act is not None and act.n and (act.size + rec_len > t.seg_target
                                              or now - act.first_append_ns > t.seg_max_age_ns):
                self._seal(t)
            self._make_room(t, rec_len)
            seg = t.active or self._new_segment(t, now)
            offset = seg.size
            header = pack_record_header(flags, stored, sample_count, first_ts_ns, now, batch_id)
            try:
                _write_all(seg.fd, header, stored)
                if self._sync_each:
                    os.fdatasync(seg.fd)
                else:
                    seg.dirty = True
            except OSError as e:
                self._undo_write(t, seg, offset)
                raise self._io_error(t, seg.path, e, f"batch {batch_id.hex()} ({rec_len} bytes)") from e
            with t.mlock:
                if seg.n == 0:
                    seg.first_append_ns = now
                seg.add(offset, len(stored), sample_count, first_ts_ns)
                seg.size = offset + rec_len
                t.bytes += rec_len
                for o in t.outputs:
                    t.pend_b[o] += 1
                    t.pend_s[o] += sample_count
                t.union_b += 1
                t.union_s += sample_count
        if self._full:
            self._full = False
            log.warning(f"spool: writes succeed again (tenant {tenant!r}); accepting batches", tenant=tenant)
        return RecordRef(seg.seq, offset)

    def _new_segment(self, t: _Tenant, now: int) -> _Segment:
        while True:
            seq = t.next_seq
            t.next_seq += 1
            path = t.dir / segment_name(seq)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise self._io_error(t, path, e, "new segment") from e
        uid = os.urandom(8)
        fp = t.cipher.fingerprint if (t.policy.encrypt and t.cipher) else None
        try:
            _write_all(fd, pack_segment_header(seq, uid, now, fp), b"")
            # The name must be durable before a record in the file is reported durable;
            # the header itself reaches the disk with the first record's sync (a file
            # torn before that has no record and is removed at open).
            fsync_dir(t.dir)
        except OSError as e:
            os.close(fd)
            unlink_quiet(path)
            raise self._io_error(t, path, e, "new segment") from e
        seg = _Segment(seq, uid, path, SEG_HEADER_SIZE, t.outputs)
        seg.sealed = False
        seg.fd = fd
        seg.first_append_ns = now
        with t.mlock:
            t.segments.append(seg)
            t.by_seq[seq] = seg
            t.bytes += SEG_HEADER_SIZE
        return seg

    def _undo_write(self, t: _Tenant, seg: _Segment, offset: int) -> None:
        """Cut a failed record off so the segment ends on a whole record."""
        try:
            os.ftruncate(seg.fd, offset)
            if self._sync_each:
                os.fdatasync(seg.fd)
        except OSError as e:
            # The tail stays on disk; recovery at the next open truncates it. Stop writing here.
            log.error(f"{seg.path}: cannot cut off a failed record at {offset}: {e}; sealing the segment",
                      tenant=t.id, path=str(seg.path))
            self._seal(t)

    def _io_error(self, t: _Tenant, path: Path, e: OSError, what: str) -> SpoolError:
        if e.errno in _FULL_ERRNOS:
            msg = (f"{path}: spool full: cannot write tenant {t.id!r} {what}: {e.strerror}; "
                   f"refusing new batches until space returns")
            if not self._full:
                self._full = True
                log.error(msg, tenant=t.id, path=str(path))
            return SpoolFull(msg)
        msg = f"{path}: cannot write tenant {t.id!r} {what}: {e.strerror or e}"
        log.error(msg, tenant=t.id, path=str(path))
        return SpoolError(msg)

    def _seal(self, t: _Tenant) -> None:
        seg = t.active
        if seg is None:
            return
        self._close_fd(t, seg, "sync on seal")
        with t.mlock:
            seg.sealed = True
            if seg.n == 0 or seg.fully_acked():
                self._delete_segment(t, seg, reason=None)

    @staticmethod
    def _close_fd(t: _Tenant, seg: _Segment, what: str) -> None:
        """Sync what group commit left unsynced, then close the segment's descriptor."""
        with seg.fd_lock:
            if seg.fd >= 0:
                try:
                    if seg.dirty:
                        os.fdatasync(seg.fd)
                except OSError as e:
                    log.error(f"{seg.path}: {what} failed: {e}", tenant=t.id, path=str(seg.path))
                finally:
                    os.close(seg.fd)
                    seg.fd, seg.dirty = -1, False

    def flush(self) -> None:
        """Sync what group commit has not synced yet: active segments and ledgers."""
        for t in list(self._tenants.values()):
            with t.mlock:
                seg = t.active
            if seg is not None:
                with seg.fd_lock:
                    if seg.fd >= 0 and seg.dirty:
                        seg.dirty = False
                        try:
                            os.fdatasync(seg.fd)
                        except OSError as e:
                            log.error(f"{seg.path}: group-commit sync failed: {e}", tenant=t.id, path=str(seg.path))
            with t.mlock:
                for led in t.ledgers.values():
                    try:
                        led.sync()
                    except OSError as e:
                        log.warning(f"tenant {t.id!r}: ledger sync failed: {e}", tenant=t.id)

