"""Live reconfiguration: tenants added, re-policied, re-routed or let go while the spool stays open.

A configuration reload (:mod:`ingress.reload`) never closes the spool. It asks it to:

- ``add_tenant``: open one more tenant exactly as open does (same recovery; a
  tenant that cannot be opened is held, every other tenant untouched);
- ``set_policy``: a new quota, retention or encryption for a tenant. The quota
  and retention apply from the next append or maintenance pass; segment size
  targets follow the new quota. Turning encryption on loads (or creates) the
  tenant's key; records already written stay as they were, both kinds are read;
- ``set_outputs``: the outputs a tenant's records wait for. An output added
  gets an ack bitmap per segment, filled from its ledgers when it had served
  the tenant before (its position is kept), else everything held is pending for
  it. An output removed stops counting: its bitmaps are dropped and its ledger
  files stay on disk, as at a restart without it (a later reload or restart
  that brings it back resumes from them). Segments then acknowledged by every
  remaining output are deleted. The caller stops the removed output's delivery
  workers first, so no ``pending``/``ack`` of it races the change.
- ``drop_tenant``: forget a tenant and remove its directory (the orphan purge);
  its undelivered batches and samples are returned so the caller can count them.

Each change is made under the tenant's ``wlock`` then ``mlock``, the order every
writer uses, so appends and delivery of the tenant wait for it (microseconds to
a few milliseconds: it walks the tenant's in-memory index, reading ledgers only
for an output that comes back). Other tenants are not touched.
"""
from __future__ import annotations

import shutil
import threading

from ingress._fs import fsync_dir
from ingress.errors import SpoolError
from ingress.logs import get_logger
from ingress.names import is_tenant_id
from ingress.spool.index import TenantPolicy, _Tenant, _NS
from ingress.spool.ledger import AckLedger, read_ledger

log = get_logger("ingress.spool")

_reconf_lock = threading.Lock()  # one reconfiguration at a time (adds mutate the tenant dict)


class _Reconfigure:
    """Spool mixin: ``add_tenant``, ``set_policy``, ``set_outputs``, ``drop_tenant``."""

    def add_tenant(self, tenant: str, policy: TenantPolicy, outputs: tuple[str, ...] | list[str]) -> str | None:
        """Open ``tenant`` in the running spool; returns the reason when it is held, else None.

        Opening a tenant that is already open only applies ``policy`` and ``outputs``.
        """
        if self._readonly:
            raise SpoolError(f"{self.dir}: opened read-only")
        if not is_tenant_id(tenant):
            raise ValueError(f"{tenant!r} is not a valid tenant id")
        if not isinstance(policy, TenantPolicy):
            raise TypeError(f"tenant {tenant!r}: policy must be a TenantPolicy, got {type(policy).__name__}")
        from ingress.spool.store import _outputs_for

        outs = _outputs_for(tuple(outputs), tenant)
        with _reconf_lock:
            self._check_open()
            if tenant in self._tenants:
                self.set_policy(tenant, policy)
                self.set_outputs(tenant, outs)
                return None
            self._held.pop(tenant, None)  # a held tenant is tried again
            self._open_tenant(tenant, policy, outs, self._segment_bytes)
            fsync_dir(self.dir)
            return self._held.get(tenant)

    def set_policy(self, tenant: str, policy: TenantPolicy) -> None:
        """Apply a new quota, retention or encryption to an open tenant."""
        t = self._writable(tenant)
        with t.wlock, t.mlock:
            if t.policy == policy:
                return
            old = t.policy
            t.policy = policy
            if policy.encrypt and t.cipher is None:
                try:
                    self._setup_cipher(t, [], False)
                except BaseException:
                    t.policy = old
                    raise
            t.seg_target = min(self._segment_bytes, max(4096, policy.max_bytes // 8))
            t.seg_max_age_ns = max(1 * _NS, int(policy.retention_s * _NS) // 8)
            self._expire(t, self._clock())
            limit = policy.max_bytes
            while t.segments and t.bytes > limit:  # a smaller quota applies at once
                victim = t.segments[0]
                if not victim.sealed:
                    self._seal(t)
                    continue
                self._delete_segment(t, victim, reason=f"quota of {limit} bytes reached")

    def set_outputs(self, tenant: str, outputs: tuple[str, ...] | list[str]) -> None:
        """The outputs whose acknowledgement ``tenant``'s records wait for, from now on."""
        from ingress.spool.store import _outputs_for

        new = _outputs_for(tuple(outputs), tenant)
        t = self._writable(tenant)
        with t.wlock, t.mlock:
            if new == t.outputs:
                return
            added = [o for o in new if o not in t.outputs]
            removed = [o for o in t.outputs if o not in new]
            for o in removed:
                t.ledgers.pop(o).close()
                for seg in t.segments:
                    seg.acked.pop(o, None)
                    seg.nacked.pop(o, None)
                    seg.low.pop(o, None)
            for o in added:
                t.ledgers[o] = AckLedger(t.dir, o)
                for seg in t.segments:
                    seg.acked[o] = bytearray((seg.n + 7) // 8)
                    seg.nacked[o] = 0
                    seg.low[o] = 0
                    path = t.ledgers[o].path(seg.seq)
                    if path.exists():  # it served this tenant before: its position is kept
                        got = read_ledger(path, seg.uid)
                        for off in (got[0] if got is not None else ()):
                            i = seg.index(off)
                            if i >= 0:
                                seg.set_acked(o, i)
            t.outputs = new
            self._recount(t)
            for seg in list(t.segments):
                if seg.sealed and seg.fully_acked():
                    self._delete_segment(t, seg, reason=None)

    @staticmethod
    def _recount(t: _Tenant) -> None:
        """Pending totals and per-segment full counts from the bitmaps (after the outputs changed)."""
        t.pend_b = dict.fromkeys(t.outputs, 0)
        t.pend_s = dict.fromkeys(t.outputs, 0)
        t.union_b = t.union_s = 0
        for seg in t.segments:
            seg.nfull = 0
            for i in range(seg.n):
                full = True
                for o in t.outputs:
                    if not seg.is_acked(o, i):
                        t.pend_b[o] += 1
                        t.pend_s[o] += seg.samples[i]
                        full = False
                if full and t.outputs:
                    seg.nfull += 1
                else:
                    t.union_b += 1
                    t.union_s += seg.samples[i]

    def drop_tenant(self, tenant: str) -> tuple[int, int]:
        """Forget ``tenant`` and remove its spool directory; returns the (batches, samples)
        no output had taken. Its key file is left alone (``ingress tenants purge`` removes it)."""
        if self._readonly:
            raise SpoolError(f"{self.dir}: opened read-only")
        with _reconf_lock:
            self._check_open()
            t = self._tenants.get(tenant)
            if t is None:
                self._held.pop(tenant, None)
                batches = samples = 0
            else:
                with t.wlock, t.mlock:
                    t.drop_descriptors()
                    batches, samples = t.union_b, t.union_s
                    t.segments.clear()  # a maintenance pass that already holds it finds nothing
                    t.by_seq.clear()
                    del self._tenants[tenant]
            d = self.dir / tenant
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            elif d.is_symlink():
                d.unlink()
            fsync_dir(self.dir)
            return batches, samples
