"""The spool: every closed batch is written here before any output sees it.

Layout under ``data_dir`` (created 0700)::

    spool/.lock                          flock(LOCK_EX) of the one writer process; holds its pid
    spool/<tenant>/<seq:020d>.seg        segment files, format in ingress.spool.segment
    spool/<tenant>/<seq:020d>.<out>.ack  one ack ledger per segment and output (ingress.spool.ledger)
    spool/<tenant>/counters.json         cumulative loss counters (ingress.spool.counters)
    keys/<tenant>.key                    at-rest key of an encrypting tenant (ingress.security.crypto)

The :class:`Spool` is put together from one room per concern, each of which
opens with its part of the design and of the on-disk rules:

==================================  =============================================
:mod:`ingress.spool.appender`       append, rotation, group commit, a full disk
:mod:`ingress.spool.reader`         pending, ack, stats
:mod:`ingress.spool.retention`      quota, retention, crash-safe segment deletion
:mod:`ingress.spool.recovery`       what open does with what a crash left
:mod:`ingress.spool.reconfigure`    tenants added, re-policied, re-routed, dropped while open
:mod:`ingress.spool.counters`       ``counters.json`` and damaged state files
:mod:`ingress.spool.index`          the in-memory index every call works on
:mod:`ingress.spool.segment`        segment and record format, the scan
:mod:`ingress.spool.ledger`         acknowledgement ledgers
==================================  =============================================

This module keeps the life cycle: open (the writer lock, then every tenant,
a tenant that cannot be opened is held), the background thread, close.

Locks. One writer process: an exclusive ``flock`` on ``spool/.lock``. Per
tenant: ``wlock`` orders writers (append, rotation, retention, close) and is
held across the write and its sync; ``mlock`` guards the in-memory index and
ledgers and is only held briefly, so delivery threads calling
``pending``/``ack`` never wait for an fsync. Order: wlock before mlock.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

from ingress._fs import fsync_dir
from ingress.errors import SpoolError
from ingress.logs import get_logger
from ingress.names import is_tenant_id
from ingress.security.crypto import KeyStore, TenantCipher
from ingress.spool.appender import _Appender
from ingress.spool.index import RecordRef, SpoolFull, SpoolRecord, TenantPolicy, _Tenant
from ingress.spool.reader import _Reader
from ingress.spool.reconfigure import _Reconfigure
from ingress.spool.recovery import _Recovery
from ingress.spool.retention import _Retention
from ingress.tokenbucket import TokenBucket

__all__ = ["RecordRef", "Spool", "SpoolFull", "SpoolRecord", "TenantPolicy", "stats_for"]

log = get_logger("ingress.spool")


class Spool(_Appender, _Reader, _Retention, _Recovery, _Reconfigure):
    """Per-tenant, append-only, crash-safe store of encoded batches.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        The agent's data directory; the spool lives in ``data_dir/spool``.
    tenants : mapping of str to TenantPolicy
        Every tenant that may append, with its limits.
    outputs : sequence of str, or mapping of tenant to sequence of str
        Output names. A sequence serves every tenant; a mapping lists the
        outputs of each tenant (a tenant missing from it has none, and its
        records then only leave by quota or retention).
    fsync : "batch" or float
        ``"batch"``: every append is synced before it returns (default).
        A positive float: group commit, a flusher thread syncs every so many
        seconds.
    write_mb_s : float, TokenBucket or None
        Disk write throttle in MB/s (10^6 bytes); a :class:`TokenBucket` to
        share one with other writers; None or 0 for no limit.
    segment_bytes : int
        Upper bound of a segment file's size (default 8 MiB).
    maintain_every_s : float or None
        How often a background thread applies retention (default 1 s); None:
        only appends and :meth:`maintain` do.
    clock : callable returning int ns, optional
        Wall clock, injected by tests (retention, ages, append times).
    on_drop : callable, optional
        ``on_drop(tenant, reason, batches, samples)`` after quota or retention
        dropped undelivered batches (the agent writes an audit line); its
        errors are ignored.

    Raises
    ------
    SpoolError
        The spool is locked by another process, or its directory cannot be
        created or read. A problem of one tenant alone (its key missing,
        malformed or not the key its segments were written with; a directory
        where its spool keeps a file) does not raise: that tenant is held,
        see :attr:`held`.
    """

    def __init__(self, data_dir: str | os.PathLike, tenants: Mapping[str, TenantPolicy],
                 outputs: Sequence[str] | Mapping[str, Sequence[str]] = (),
                 fsync: str | float = "batch", write_mb_s: float | TokenBucket | None = 20.0,
                 *, segment_bytes: int = 8 << 20, maintain_every_s: float | None = 1.0,
                 clock: Callable[[], int] = time.time_ns, _readonly: bool = False,
                 on_drop: Callable[[str, str, int, int], None] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._on_drop = on_drop
        self.dir = self.data_dir / "spool"
        self._readonly = _readonly
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._closed = False
        self._full = False
        self._lock_fd = -1
        self._tenants: dict[str, _Tenant] = {}
        self._held: dict[str, str] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if fsync == "batch":
            self._sync_each, self._interval = True, 0.0
        elif isinstance(fsync, (int, float)) and not isinstance(fsync, bool) and fsync > 0:
            self._sync_each, self._interval = False, float(fsync)
        else:
            raise ValueError(f"fsync: {fsync!r} is neither 'batch' nor a positive number of seconds")
        if isinstance(write_mb_s, TokenBucket) or write_mb_s is None:
            self._throttle = write_mb_s
        else:
            self._throttle = TokenBucket.from_mb_s(write_mb_s)
        self._keys = KeyStore(self.data_dir)
        for tid in tenants:
            if not is_tenant_id(tid):
                raise ValueError(f"{tid!r} is not a valid tenant id")
        self._maintain_every = maintain_every_s
        try:
            if _readonly:
                self._open_readonly(tenants, outputs)
            else:
                self._open_writer(tenants, outputs, segment_bytes)
        except OSError as e:
            self._abandon()
            where = e.filename if e.filename is not None else self.dir
            raise SpoolError(f"{where}: cannot open the spool: {e.strerror or e}") from e
        except BaseException:
            self._abandon()
            raise
        if not _readonly and (not self._sync_each or maintain_every_s):
            self._flusher = threading.Thread(target=self._background, name="ingress-spool", daemon=True)
            self._flusher.start()

    # ------------------------------------------------------------------ open
    @classmethod
    def open_readonly(cls, data_dir: str | os.PathLike, outputs: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                      *, clock: Callable[[], int] = time.time_ns) -> "Spool":
        """A view for :meth:`stats` that takes no lock and changes nothing on disk.

        Every tenant directory found is read. Without ``outputs`` (or for a
        tenant a mapping does not name), a tenant's outputs are the ones that
        have ledgers on disk. A torn tail is not
        counted (a running writer may be in the middle of that record).
        """
        return cls(data_dir, {}, outputs if outputs is not None else _DISCOVER, write_mb_s=None,
                   clock=clock, _readonly=True)

    def _open_writer(self, tenants: Mapping[str, TenantPolicy], outputs, segment_bytes: int) -> None:
        created = not self.data_dir.exists()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            os.chmod(self.data_dir, 0o700)  # mkdir's mode is filtered by the umask
        elif os.stat(self.data_dir).st_mode & 0o077:
            log.warning(f"{self.data_dir}: data directory is accessible to group or others; chmod 700 recommended",
                        path=str(self.data_dir))
        self.dir.mkdir(mode=0o700, exist_ok=True)
        lock_path = self.dir / ".lock"
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise SpoolError(f"{lock_path}: spool is in use by another process (pid {holder})") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        self._keys.clean_temp()
        for tid, policy in tenants.items():
            if not isinstance(policy, TenantPolicy):
                raise TypeError(f"tenant {tid!r}: policy must be a TenantPolicy, got {type(policy).__name__}")
        self._clean_leftovers(skip=set(tenants))
        for tid, policy in tenants.items():
            outs = _outputs_for(outputs, tid)
            self._open_tenant(tid, policy, outs, segment_bytes)
        fsync_dir(self.dir)

    def _open_tenant(self, tid: str, policy: TenantPolicy, outputs: tuple[str, ...] | None,
                     segment_bytes: int) -> None:
        """Load one tenant; a problem of this tenant alone holds it instead of failing the spool."""
        try:
            self._tenants[tid] = self._load_tenant(tid, policy, outputs, segment_bytes)
        except (SpoolError, OSError) as e:  # KeyFileError is a SpoolError
            if isinstance(e, OSError):
                reason = f"{e.filename}: {e.strerror or e}" if e.filename else str(e.strerror or e)
            else:
                reason = str(e)
            reason = "; ".join(x.strip() for x in reason.splitlines() if x.strip()) or type(e).__name__
            self._held[tid] = reason
            if not self._readonly:
                log.error(f"tenant {tid!r} is held (not collected, not sent, its spool left as it is): {reason}",
                          tenant=tid)

    def _open_readonly(self, _tenants, outputs) -> None:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for tid in names:
            if is_tenant_id(tid) and (self.dir / tid).is_dir():
                # A tenant the mapping does not name (one removed from the configuration) is measured
                # against the outputs whose ledgers it has, not against none (all of it pending).
                discover = outputs is _DISCOVER or (isinstance(outputs, Mapping) and tid not in outputs)
                outs = None if discover else _outputs_for(outputs, tid)
                self._open_tenant(tid, TenantPolicy(), outs, 8 << 20)

    def _background(self) -> None:
        """Group commit every fsync interval, and retention every ``maintain_every_s``."""
        period = self._interval if not self._sync_each else self._maintain_every
        if self._maintain_every:
            period = min(period, self._maintain_every)
        last_maint = time.monotonic()
        while not self._stop.wait(period):
            if not self._sync_each:
                self.flush()
            if self._maintain_every and time.monotonic() - last_maint >= self._maintain_every:
                last_maint = time.monotonic()
                try:
                    self.maintain()
                except Exception as e:  # keep the thread alive; the next round tries again
                    log.error(f"spool maintenance failed: {e}")

    # -------------------------------------------------------------- plumbing
    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(self._tenants)

    def outputs_for(self, tenant: str) -> tuple[str, ...]:
        return self._tenant(tenant).outputs

    @property
    def held(self) -> dict[str, str]:
        """``{tenant: reason}`` of the tenants this spool could not open (a missing or
        wrong key, an unreadable directory, a directory where the spool keeps a
        file). A held tenant's directory was not changed; append, pending and ack
        raise SpoolError for it; every other tenant works as usual."""
        return dict(self._held)

    def cipher_for(self, tenant: str) -> TenantCipher | None:
        """The tenant's at-rest cipher when its policy encrypts, else None (dead letters use it)."""
        t = self._tenant(tenant)
        return t.cipher if t.policy.encrypt else None

    def _tenant(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            if tenant in self._held:
                raise SpoolError(f"tenant {tenant!r} is held: {self._held[tenant]}")
            raise SpoolError(f"tenant {tenant!r} has no spool (known: {', '.join(self._tenants) or 'none'})")
        return t

    def _writable(self, tenant: str) -> _Tenant:
        if self._readonly:
            raise SpoolError(f"{self.dir}: opened read-only")
        self._check_open()
        return self._tenant(tenant)

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"{self.dir}: spool is closed")

    def _check_output(self, t: _Tenant, output: str) -> None:
        if output not in t.ledgers:
            raise SpoolError(f"output {output!r} does not serve tenant {t.id!r} "
                             f"(its outputs: {', '.join(t.outputs) or 'none'})")

    def close(self) -> None:
        """Sync and close everything, release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True  # first: a writer or ack waiting for a lock sees it once it gets in
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        for t in self._tenants.values():
            with t.wlock, t.mlock:
                seg = t.active
                if seg is not None:
                    self._close_fd(t, seg, "final sync")
                for led in t.ledgers.values():
                    try:
                        led.close()
                    except OSError as e:
                        log.warning(f"tenant {t.id!r}: ledger close failed: {e}", tenant=t.id)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    def _abandon(self) -> None:
        """Drop every descriptor without syncing, as a killed process would (tests, failed open)."""
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        for t in self._tenants.values():
            t.drop_descriptors()
        self._closed = True
        self._release_lock()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DISCOVER = object()


def _outputs_for(outputs, tenant: str) -> tuple[str, ...]:
    if isinstance(outputs, Mapping):
        names = tuple(outputs.get(tenant, ()))
    elif isinstance(outputs, str):
        raise TypeError("outputs must be a sequence of names, not one string")
    else:
        names = tuple(outputs)
    for o in names:
        if not isinstance(o, str) or not o or "\0" in o:
            raise ValueError(f"tenant {tenant!r}: invalid output name {o!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"tenant {tenant!r}: duplicate output names in {names!r}")
    return names


def stats_for(data_dir: str | os.PathLike, outputs: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
              *, clock: Callable[[], int] = time.time_ns) -> dict[str, dict]:
    """:meth:`Spool.stats` of a spool on disk without taking its lock (``ingress spool stats``).

    A tenant the agent would hold is ``{"held": reason}``."""
    sp = Spool.open_readonly(data_dir, outputs, clock=clock)
    try:
        out = sp.stats()
        for tid, reason in sp.held.items():
            out[tid] = {"held": reason}
        return out
    finally:
        sp._abandon()
