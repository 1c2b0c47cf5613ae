"""The spool: every closed batch is written here before any output sees it.

Layout under ``data_dir`` (created 0700)::

    spool/.lock                          flock(LOCK_EX) of the one writer process; holds its pid
    spool/<tenant>/<seq:020d>.seg        segment files, format in ingress.spool.segment
    spool/<tenant>/<seq:020d>.<out>.ack  one ack ledger per segment and output (ingress.spool.ledger)
    spool/<tenant>/counters.json         cumulative dropped batches/samples, torn tails (tmp + rename)
    keys/<tenant>.key                    at-rest key of an encrypting tenant (ingress.security.crypto)

Life of a record. ``append`` seals the payload when the tenant encrypts, waits
for the shared write throttle, then writes header and payload with one
``writev`` to the tenant's active segment and (fsync policy ``"batch"``, the
default) ``fdatasync``s it before returning: "accepted" means "on disk". With a
float policy the write returns at once and a flusher thread syncs every
interval (group commit; a power loss may cost the last interval). Only then is
the record published to ``pending``. An output acknowledges with ``ack``, one
12-byte append to its ledger, in any order. A sealed segment acknowledged by
every output that serves the tenant is deleted.

Rotation. The active segment is the newest file the running process created;
it is sealed when the next record would take it past the segment size (an
eighth of the tenant quota, at most ``segment_bytes``) or when its first record
is older than an eighth of the retention. Sealing closes the descriptor and
changes nothing on disk, so rotation has no crash window. At open every
existing segment counts as sealed and the first append creates a new one
(created with O_EXCL, header written, directory synced; the header reaches the
disk with the first record's sync).

Deletion is crash-safe: rename ``X.seg`` to ``X.seg.deleting``, fsync the
directory, unlink the ledgers of X, unlink ``X.seg.deleting``. A crash at any
point leaves either the whole segment (deleted again later) or a ``.deleting``
file and perhaps orphan ledgers, which open removes.

Recovery at open (writer). Remove ``*.tmp`` and ``*.deleting``; scan every
segment (ingress.spool.segment.scan): corrupt regions in the middle are
skipped and counted, a torn or corrupt tail is counted and truncated; segment
files shorter than their header (a crash while creating) are removed. Then
replay each output's ledger (ledger recovery rule in ingress.spool.ledger),
remove ledgers of segments that no longer exist, delete segments that are
empty or fully acknowledged, and apply retention. Whatever is not acknowledged
by an output is returned by ``pending`` for that output again.

Limits. Past ``max_bytes`` or ``retention_s`` (by the record's first sample
timestamp) a tenant's oldest segments are deleted first and their
undelivered batches and samples counted as dropped; no other tenant is
touched. A full disk (ENOSPC/EDQUOT on write or sync) cuts the partial record
off, logs one error on ``ingress.spool`` and raises :class:`SpoolFull`; the
next append that fits succeeds again.

Locks. Per tenant: ``wlock`` orders writers (append, rotation, retention,
close) and is held across the write and its sync; ``mlock`` guards the
in-memory index and ledgers and is only held briefly, so delivery threads
calling ``pending``/``ack`` never wait for an fsync. Order: wlock before mlock.
``pending`` reads payloads outside every lock through its own descriptor; a
segment deleted meanwhile is simply gone (POSIX keeps an opened file
readable), and a published record is never rewritten.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from ingress._fs import fsync_dir
from ingress.errors import SpoolError
from ingress.names import is_tenant_id
from ingress.security.crypto import DecryptError, KeyFileError, KeyStore, TenantCipher, fingerprint
from ingress.spool.ledger import AckLedger, parse_ledger_name, read_ledger
from ingress.spool.segment import (
    FLAG_SEALED,
    MAX_PAYLOAD,
    REC_HEADER_SIZE,
    SEG_HEADER_SIZE,
    check_record,
    pack_record_header,
    pack_segment_header,
    parse_segment_name,
    scan,
    segment_name,
)
from ingress.spool.throttle import TokenBucket

log = logging.getLogger("ingress.spool")

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NS = 1_000_000_000
_U32 = 1 << 32
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
COUNTERS = "counters.json"
DAMAGED_SUFFIX = ".damaged"  # a state file set aside: never read again, kept for whoever investigates
_COUNTERS_MAX = 1 << 20
_COUNTER_KEYS = ("dropped_batches", "dropped_samples", "torn_tails", "corrupt_records", "damaged_files")


def _sane_count(v: object) -> bool:
    return type(v) is int and 0 <= v <= _I64_MAX


def _set_aside(path: Path) -> None:
    """Rename a damaged state file to ``<name>.damaged`` (replacing an older one)."""
    try:
        os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
    except FileNotFoundError:
        pass


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


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_all(fd: int, header: bytes, payload) -> None:
    total = len(header) + len(payload)
    n = os.writev(fd, (header, payload))
    if n < total:  # short write (e.g. the disk filled up mid-record): finish or fail
        rest = memoryview(header + bytes(payload))[n:]
        while rest:
            k = os.write(fd, rest)
            if k <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            rest = rest[k:]


class Spool:
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

        Every tenant directory found is read. Without ``outputs``, a tenant's
        outputs are the ones that have ledgers on disk. A torn tail is not
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
            log.warning("%s: data directory is accessible to group or others; chmod 700 recommended", self.data_dir)
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
                log.error("tenant %r is held (not collected, not sent, its spool left as it is): %s",
                          tid, reason)

    def _open_readonly(self, _tenants, outputs) -> None:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for tid in names:
            if is_tenant_id(tid) and (self.dir / tid).is_dir():
                outs = _outputs_for(outputs, tid) if outputs is not _DISCOVER else None
                self._open_tenant(tid, TenantPolicy(), outs, 8 << 20)

    def _clean_leftovers(self, skip: set[str]) -> None:
        """Temp files and half-deleted segments of a previous crash in the directories of
        tenants that are not configured (a configured tenant's are removed by its load)."""
        for entry in os.scandir(self.dir):
            if entry.name in skip or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                with os.scandir(entry.path) as it:
                    for f in it:
                        if (f.name.endswith(".tmp") or f.name.endswith(".deleting")) \
                                and f.is_file(follow_symlinks=False):
                            _unlink_quiet(Path(f.path))
            except OSError as e:
                log.warning("%s: cannot clean leftovers: %s", entry.path, e.strerror or e)

    def _load_tenant(self, tid: str, policy: TenantPolicy, outputs: tuple[str, ...] | None,
                     segment_bytes: int) -> _Tenant:
        """Read one tenant's directory, then (writer) repair it.

        First everything is read and judged without changing a byte: entry
        types, segments (scan), counters, and the key. A problem that makes the
        tenant unusable raises (SpoolError or OSError) before anything on disk
        changed, so a held tenant's spool stays exactly as it was. Only then
        does the writer remove leftovers, truncate torn tails and set damaged
        state files aside.
        """
        ro = self._readonly
        d = self.dir / tid
        try:
            st = os.stat(d)  # a symlink to a directory elsewhere is fine
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"{d}: the tenant's spool path is not a directory; move it away")
        if st is None and not ro:
            d.mkdir(mode=0o700)
        seg_names: dict[int, str] = {}
        ledgers: list[tuple[int, str, str]] = []
        leftovers: list[str] = []
        odd: list[str] = []
        max_seq = 0
        entries = []
        if st is not None:
            with os.scandir(d) as it:
                entries = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
        for name, regular in entries:
            if name.endswith(DAMAGED_SUFFIX):
                continue  # set aside earlier; kept for whoever investigates
            leftover = name.endswith(".tmp") or name.endswith(".deleting")
            ours = leftover or name == COUNTERS or name.endswith(".seg") or name.endswith(".ack")
            if not ours:
                continue  # not a name the spool uses: left alone
            if not regular:
                raise SpoolError(f"{d / name}: is a directory or another non-regular file where the "
                                 f"spool keeps a file; move it away")
            if leftover:
                leftovers.append(name)
                if name.endswith(".seg.deleting"):
                    seq = parse_segment_name(name[:-len(".deleting")])
                    if seq is not None:
                        max_seq = max(max_seq, seq)
                continue
            if name == COUNTERS:
                continue
            seq = parse_segment_name(name)
            if seq is not None:
                seg_names[seq] = name
                max_seq = max(max_seq, seq)
                continue
            led = parse_ledger_name(name)
            if led is not None:
                ledgers.append((led[0], led[1], name))
            else:
                odd.append(name)  # a .seg or .ack name that is not one the spool writes
        if outputs is None:  # read-only discovery
            outputs = tuple(sorted({o for _, o, _ in ledgers}))
        t = _Tenant(tid, policy, d, outputs, segment_bytes)
        t.next_seq = max_seq + 1
        counters, counters_damage = self._read_counters(t)
        seen = counters.get("corrupt_by_segment", {})
        encrypted_segs: list[tuple[_Segment, bytes, Path]] = []
        any_sealed_records = False
        torn_created: list[Path] = []
        truncations: list[tuple[Path, int]] = []
        regions_now: dict[int, int] = {}
        new_corrupt = 0
        for seq in sorted(seg_names):
            path = d / seg_names[seq]
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue  # deleted by the writer while a read-only view looked
            if len(data) < SEG_HEADER_SIZE:
                torn_created.append(path)
                continue
            res = scan(data)
            size = len(data)
            already = seen.get(seq, 0)
            if res.corrupt_regions:
                regions_now[seq] = res.corrupt_regions
                fresh = max(0, res.corrupt_regions - already)
                new_corrupt += fresh
                log.warning("%s: skipped %d corrupt region(s)%s; the other records stay usable", path,
                            res.corrupt_regions, "" if fresh == res.corrupt_regions else
                            f" ({res.corrupt_regions - fresh} counted before)")
            if res.tail_bytes and not ro:
                # A region this segment's count already holds (found on read) is not counted twice.
                if already <= res.corrupt_regions:
                    new_corrupt += 1
                t.new_torn += 1
                truncations.append((path, res.valid_end))
                size = res.valid_end
            uid = res.header.uid if res.header is not None else bytes(8)
            seg = _Segment(seq, uid, path, size, outputs)
            for k in range(len(res.offsets)):
                seg.add(res.offsets[k], res.lengths[k], res.samples[k], res.first_ts[k])
                any_sealed_records = any_sealed_records or bool(res.flags[k] & FLAG_SEALED)
            if res.header is not None:
                seg.first_append_ns = res.header.created_ns
                if res.header.encrypted:
                    encrypted_segs.append((seg, res.header.key_fp, path))
            t.segments.append(seg)
            t.by_seq[seq] = seg
            t.bytes += size
        self._setup_cipher(t, encrypted_segs, any_sealed_records)
        # ---- from here on the writer changes the directory; nothing above did
        t.dropped_b = counters.get("dropped_batches", 0)
        t.dropped_s = counters.get("dropped_samples", 0)
        t.torn_tails = counters.get("torn_tails", 0)
        t.corrupt = counters.get("corrupt_records", 0) + new_corrupt
        t.damaged = counters.get("damaged_files", 0) + counters_damage + len(odd)
        t.corrupt_seen = regions_now
        for name in odd:
            log.warning("%s: not a name the spool writes (segment number out of range or malformed)%s",
                        d / name, "" if ro else f"; set aside as {name}{DAMAGED_SUFFIX}")
        if not ro:
            for name in leftovers:
                _unlink_quiet(d / name)
            for path in torn_created:
                log.info("%s: removing segment torn while it was created", path)
                _unlink_quiet(path)
            for path, end in truncations:
                log.warning("%s: torn or corrupt tail after offset %d: truncated", path, end)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, end)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            for name in odd:
                _set_aside(d / name)
            if counters_damage:
                _set_aside(d / COUNTERS)
        self._replay_ledgers(t, ledgers)
        for seg in t.segments:
            for i in range(seg.n):
                full = True
                for o in outputs:
                    if not seg.is_acked(o, i):
                        t.pend_b[o] += 1
                        t.pend_s[o] += seg.samples[i]
                        full = False
                if full and outputs:
                    seg.nfull += 1
                else:
                    t.union_b += 1
                    t.union_s += seg.samples[i]
        t.torn_tails += t.new_torn
        t.new_torn = 0
        if not ro:
            was = {k: counters.get(k, 0) for k in _COUNTER_KEYS}
            if counters.get("corrupt_by_segment"):
                was["corrupt_by_segment"] = counters["corrupt_by_segment"]
            if counters_damage or was != self._counters_of(t):
                self._save_counters(t)
            with t.wlock, t.mlock:
                for seg in list(t.segments):
                    if seg.n == 0 or seg.fully_acked():
                        self._delete_segment(t, seg, reason=None)
                self._expire(t, self._clock())
            fsync_dir(d)
        return t

    def _setup_cipher(self, t: _Tenant, encrypted_segs, any_sealed_records: bool) -> None:
        """Load (writer: create when allowed) the tenant's key and check it against its segments.

        The read-only view only checks, by fingerprint, and never imports the AES bindings.
        """
        if not (t.policy.encrypt or encrypted_segs or any_sealed_records):
            return
        key_path = self._keys.path(t.id)
        if self._keys.exists(t.id):
            if self._readonly:
                fp = fingerprint(self._keys.load(t.id))
            else:
                t.cipher = self._keys.cipher(t.id)
                fp = t.cipher.fingerprint
        elif encrypted_segs or any_sealed_records:
            raise KeyFileError(
                f"{key_path}: tenant {t.id!r}: key file is missing, but the tenant's spool in {t.dir} "
                f"holds encrypted records; restore the key or move that directory away")
        elif self._readonly:
            return
        else:
            t.cipher = self._keys.cipher(t.id, create=True)
            log.info("%s: created the at-rest key of tenant %r", key_path, t.id)
            fp = t.cipher.fingerprint
        for seg, sfp, path in encrypted_segs:
            if sfp != fp:
                raise KeyFileError(
                    f"{key_path}: tenant {t.id!r}: this key (fingerprint {fp.hex()}) is not "
                    f"the key {path} was written with (fingerprint {sfp.hex()})")

    def _replay_ledgers(self, t: _Tenant, ledgers: list[tuple[int, str, str]]) -> None:
        ro = self._readonly
        for seq, out, name in ledgers:
            path = t.dir / name
            seg = t.by_seq.get(seq)
            if seg is None:
                if not ro:
                    _unlink_quiet(path)  # orphan of a segment deleted by a crashed process
                continue
            if out not in seg.acked:
                continue  # an output not configured now: its ledger waits for it
            got = read_ledger(path, seg.uid)
            if got is None:
                t.damaged += 1
                log.warning("%s: ledger is damaged or belongs to another segment; %s", path,
                            "its acks are lost (batches go out again)" if ro else
                            "removed, its acks are lost (batches go out again)")
                if not ro:
                    _unlink_quiet(path)
                continue
            offsets, whole = got
            if not ro and whole < os.path.getsize(path):
                os.truncate(path, whole)
            for off in offsets:
                i = seg.index(off)
                if i >= 0:
                    seg.set_acked(out, i)

    def _read_counters(self, t: _Tenant) -> tuple[dict, int]:
        """The persisted counters, each checked; and 1 when the file is damaged (else 0).

        Never raises for the file's content: arbitrary bytes, a JSON value of
        the wrong type, a non-integer, NaN, ``1e999`` or deep nesting make the
        file damaged; every field that is still a sane count is kept.
        """
        p = t.dir / COUNTERS
        try:
            with open(p, "rb") as f:
                raw = f.read(_COUNTERS_MAX + 1)
        except FileNotFoundError:
            return {}, 0
        problem = None
        out: dict = {}
        c: object = None
        if len(raw) > _COUNTERS_MAX:
            problem = f"larger than {_COUNTERS_MAX} bytes"
        else:
            try:
                c = json.loads(raw)
            except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                problem = f"not JSON ({type(e).__name__})"
        if problem is None and not isinstance(c, dict):
            problem = f"a JSON {type(c).__name__}, not an object"
        if problem is None:
            bad = []
            for k in _COUNTER_KEYS:
                if k not in c:
                    continue
                v = c[k]
                if _sane_count(v):
                    out[k] = v
                else:
                    bad.append(k)
            by_seg = c.get("corrupt_by_segment", {})
            if isinstance(by_seg, dict) and all(isinstance(k, str) and k.isascii() and k.isdigit()
                                                and len(k) <= 20 and _sane_count(v)
                                                for k, v in by_seg.items()):
                out["corrupt_by_segment"] = {int(k): v for k, v in by_seg.items()}
            else:
                bad.append("corrupt_by_segment")
            if bad:
                problem = f"field(s) {', '.join(bad)} not a count"
        if problem is not None:
            log.warning("%s: damaged counters (%s); %s; the counts it held are lost", p, problem,
                        f"set aside as {COUNTERS}{DAMAGED_SUFFIX}" if not self._readonly else "counted")
            return out, 1
        return out, 0

    @staticmethod
    def _counters_of(t: _Tenant) -> dict:
        c = {"dropped_batches": t.dropped_b, "dropped_samples": t.dropped_s, "torn_tails": t.torn_tails,
             "corrupt_records": t.corrupt, "damaged_files": t.damaged}
        if t.corrupt_seen:
            c["corrupt_by_segment"] = dict(t.corrupt_seen)
        return c

    def _save_counters(self, t: _Tenant) -> None:
        p = t.dir / COUNTERS
        tmp = t.dir / (COUNTERS + ".tmp")
        c = self._counters_of(t)
        if "corrupt_by_segment" in c:
            c["corrupt_by_segment"] = {str(k): v for k, v in c["corrupt_by_segment"].items()}
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(c).encode())
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, p)
            fsync_dir(t.dir)
        except OSError as e:
            log.error("%s: cannot save the loss counters: %s", p, e)

    # ---------------------------------------------------------------- writes
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
            log.warning("spool: writes succeed again (tenant %r); accepting batches", tenant)
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
            _unlink_quiet(path)
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
            log.error("%s: cannot cut off a failed record at %d: %s; sealing the segment",
                      seg.path, offset, e)
            self._seal(t)

    def _io_error(self, t: _Tenant, path: Path, e: OSError, what: str) -> SpoolError:
        if e.errno in _FULL_ERRNOS:
            msg = (f"{path}: spool full: cannot write tenant {t.id!r} {what}: {e.strerror}; "
                   f"refusing new batches until space returns")
            if not self._full:
                self._full = True
                log.error("%s", msg)
            return SpoolFull(msg)
        msg = f"{path}: cannot write tenant {t.id!r} {what}: {e.strerror or e}"
        log.error("%s", msg)
        return SpoolError(msg)

    def _seal(self, t: _Tenant) -> None:
        seg = t.active
        if seg is None:
            return
        with seg.fd_lock:
            if seg.fd >= 0:
                try:
                    if seg.dirty:
                        os.fdatasync(seg.fd)
                except OSError as e:
                    log.error("%s: sync on seal failed: %s", seg.path, e)
                finally:
                    os.close(seg.fd)
                    seg.fd, seg.dirty = -1, False
        with t.mlock:
            seg.sealed = True
            if seg.n == 0 or seg.fully_acked():
                self._delete_segment(t, seg, reason=None)

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
            log.warning("tenant %r: %s: dropped segment %s with %d undelivered batches (%d samples)",
                        t.id, reason, seg.path.name, lost_b, lost_s)
            self._save_counters(t)
            if self._on_drop is not None:
                try:
                    self._on_drop(t.id, reason, lost_b, lost_s)
                except Exception:  # noqa: BLE001 - reporting must not stop the spool
                    log.exception("tenant %r: on_drop callback failed", t.id)
        doomed = seg.path.with_name(seg.path.name + ".deleting")
        try:
            os.rename(seg.path, doomed)
            fsync_dir(t.dir)
            prefix = f"{seg.seq:020d}."
            for name in os.listdir(t.dir):
                if name.startswith(prefix) and name.endswith(".ack"):
                    _unlink_quiet(t.dir / name)
            os.unlink(doomed)
        except OSError as e:
            log.error("%s: cannot delete segment: %s (the next open finishes the job)", seg.path, e)

    # ---------------------------------------------------------------- reads
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
        log.error("%s@%d: tenant %r: %s; record skipped", seg.path, off, t.id, problem)
        with t.mlock:
            if t.by_seq.get(seg.seq) is seg and not seg.full(i):
                t.corrupt += 1
                t.corrupt_seen[seg.seq] = t.corrupt_seen.get(seg.seq, 0) + 1
                # Acked for good (persisted), so it is never read, or counted, again.
                for o in t.outputs:
                    self._mark(t, seg, o, i, persist=not self._readonly)
                if not self._readonly:
                    self._save_counters(t)
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
                log.warning("%s: cannot record ack: %s", t.ledgers[output].path(seg.seq), e)
        return True

    # ----------------------------------------------------------- maintenance
    def maintain(self) -> None:
        """Apply retention to every tenant now (the background thread does it every
        ``maintain_every_s``; appends do it for their tenant)."""
        for t in list(self._tenants.values()):
            with t.wlock:
                if not self._closed:
                    self._expire(t, self._clock())

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
                            log.error("%s: group-commit sync failed: %s", seg.path, e)
            with t.mlock:
                for led in t.ledgers.values():
                    try:
                        led.sync()
                    except OSError as e:
                        log.warning("tenant %r: ledger sync failed: %s", t.id, e)

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
                    log.error("spool maintenance failed: %s", e)

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
                    with seg.fd_lock:
                        if seg.fd >= 0:
                            try:
                                if seg.dirty:
                                    os.fdatasync(seg.fd)
                            except OSError as e:
                                log.error("%s: final sync failed: %s", seg.path, e)
                            os.close(seg.fd)
                            seg.fd, seg.dirty = -1, False
                for led in t.ledgers.values():
                    try:
                        led.close()
                    except OSError as e:
                        log.warning("tenant %r: ledger close failed: %s", t.id, e)
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
            seg = t.active
            if seg is not None and seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1
            for led in t.ledgers.values():
                led.close(sync=False)
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
