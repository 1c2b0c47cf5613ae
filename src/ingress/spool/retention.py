"""Retention and quota: how a tenant's oldest data leaves the spool, and crash-safe deletion.

Limits. Past ``max_bytes`` (the tenant's quota, checked before each append) or
``retention_s`` (by the first sample timestamp of a segment's newest record;
checked by each append, by :meth:`Spool.maintain` and every
``maintain_every_s`` by the background thread) a tenant's oldest segments are
deleted first, the active one last, and their undelivered batches and samples
counted as dropped (persisted in ``counters.json``); no other tenant is
touched. A sealed segment acknowledged by every output of its tenant is
deleted the same way, with nothing counted.

Deletion is crash-safe: rename ``X.seg`` to ``X.seg.deleting``, fsync the
directory, unlink the ledgers of X, unlink ``X.seg.deleting``. A crash at any
point leaves either the whole segment (deleted again later) or a ``.deleting``
file and perhaps orphan ledgers, which open removes.
"""
from __future__ import annotations

import os

from ingress._fs import fsync_dir, unlink_quiet
from ingress.logs import get_logger
from ingress.spool.counters import save_counters
from ingress.spool.index import _NS, _Segment, _Tenant
from ingress.spool.segment import SEG_HEADER_SIZE

log = get_logger("ingress.spool")


class _Retention:
    """Spool mixin: quota, retention and the deletion of whole segments."""

    def _make_room(self, t: _Tenant, rec_len: int) -> None:
        limit = t.policy.max_bytes
        while t.segments and t.bytes + rec_len + (0 if t.active else SEG_HEADER_SIZE) > limit:
            victim = t.segments[0]
            if not victim.sealed:
                self._seal(t)  # only the active segment is left: it goes too
                continue
            with t.mlock:
                self._delete_segment(t, victim, reason=f"quota of {limit} bytes reached")

    def _expire(self, t: _Tenant, now: int) -> None:
        cutoff = now - int(t.policy.retention_s * _NS)
        while t.segments:
            seg = t.segments[0]
            if seg.n == 0 or seg.max_first_ts >= cutoff:
                return
            if not seg.sealed:
                self._seal(t)
                continue
            with t.mlock:
                self._delete_segment(t, seg, reason=f"retention of {t.policy.retention_s:g} s passed")

    def _delete_segment(self, t: _Tenant, seg: _Segment, reason: str | None) -> None:
        """Forget a sealed segment and remove its files. Caller holds t.mlock.

        ``reason`` None: fully acknowledged (or empty). Otherwise its
        undelivered records are counted as dropped.
        """
        lost_b = lost_s = 0
        for i in range(seg.n):
            s = seg.samples[i]
            full = True
            for o in t.outputs:
                if not seg.is_acked(o, i):
                    t.pend_b[o] -= 1
                    t.pend_s[o] -= s
                    full = False
            if not (full and t.outputs):
                lost_b += 1
                lost_s += s
        t.union_b -= lost_b
        t.union_s -= lost_s
        t.segments.remove(seg)
        del t.by_seq[seg.seq]
        t.corrupt_seen.pop(seg.seq, None)
        t.bytes -= seg.size
        for led in t.ledgers.values():
            led.forget(seg.seq)
        if reason is not None and lost_b:
            t.dropped_b += lost_b
            t.dropped_s += lost_s
            log.warning(f"tenant {t.id!r}: {reason}: dropped segment {seg.path.name} with {lost_b} undelivered "
                        f"batches ({lost_s} samples)", tenant=t.id, path=str(seg.path),
                        dropped_batches=lost_b, dropped_samples=lost_s)
            save_counters(t)
            on_drop = getattr(self, "_on_drop", None)
            if on_drop is not None:
                try:
                    on_drop(t.id, reason, lost_b, lost_s)
                except Exception:  # noqa: BLE001 - reporting must not stop the spool
                    log.exception("on_drop callback failed", tenant=t.id)
        doomed = seg.path.with_name(seg.path.name + ".deleting")
        try:
            os.rename(seg.path, doomed)
            fsync_dir(t.dir)
            prefix = f"{seg.seq:020d}."
            for name in os.listdir(t.dir):
                if name.startswith(prefix) and name.endswith(".ack"):
                    unlink_quiet(t.dir / name)
            os.unlink(doomed)
        except OSError as e:
            log.error(f"{seg.path}: cannot delete segment: {e} (the next open finishes the job)", tenant=t.id,
                      path=str(seg.path))

    def maintain(self) -> None:
        """Apply retention to every tenant now (the background thread does it every
        ``maintain_every_s``; appends do it for their tenant)."""
        for t in list(self._tenants.values()):
            with t.wlock:
                if not self._closed:
                    self._expire(t, self._clock())

