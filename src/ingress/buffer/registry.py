"""Series registry: per-tenant interning of (name, sorted tags) to compact ids.

Every tenant has its own id space, so one tenant's cardinality can never take
ids (or slots under the cap) from another. An id is a dense ``uint32`` index
into per-tenant numpy arrays; the ring stores only the id, the registry keeps
the key once.

Life of an id::

    intern ──> live ──(unseen for ttl; evict)──> quarantined ──(release)──> free ──> intern ...

A quarantined id is no longer found by ``intern`` (the same key gets a new id),
but its key is kept, so batches that still hold samples with it can be encoded
(``dictionary``). It becomes reusable only after ``release``, which the pipeline
calls once every sample pushed before the eviction has been encoded. So an id
is never reused while a batch still refers to it.

Memory accounting: every new series adds an estimate of what it holds
(``SERIES_OVERHEAD`` plus its strings) to :attr:`SeriesRegistry.accounted_bytes`;
every ``check_every_bytes`` of such growth the registry calls ``on_growth``
(the agent's memory guard, :meth:`ingress.memguard.MemGuard.check`), outside
its lock. A known series costs nothing: the accounting is per *new* series.

Thread safety: ``intern`` hits are a plain dict lookup; every mutation and
``dictionary`` run under one lock, so a collector thread may intern and touch
while the flushing thread builds dictionaries and releases ids.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ingress._core._codec import SeriesDictionary
from ingress.logs import RateLimiter, get_logger

__all__ = ["SeriesRegistry", "Tags", "SERIES_OVERHEAD", "CHECK_EVERY_BYTES"]

log = get_logger("ingress.buffer")

Tags = tuple[tuple[str, str], ...]

# last_seen of a series interned without a time: the next evict() stamps it, so a
# new series always gets a full ttl before it can be evicted.
NEVER = np.int64(-1)
_INITIAL_IDS = 1024
#: Bytes a new series holds besides its strings' characters: the key tuples, the
#: id dict's entry, the string objects, the C dictionary's entry and the arrays'
#: slots (measured: about 520 bytes for a series with one short tag).
SERIES_OVERHEAD = 480
#: on_growth is called every this many accounted bytes of new series (about
#: 130 new series of that size; one /proc/self/statm read each time).
CHECK_EVERY_BYTES = 64 << 10


class _Tenant:
    """One tenant's id space. Arrays are indexed by id and grow by doubling."""

    __slots__ = ("cap", "ids", "keys", "sdict", "last_seen", "alive", "mark", "remap",
                 "iota", "free", "quarantine", "live", "refused", "refused_since_log", "bytes", "dead")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.ids: dict[tuple[str, Tags], int] = {}
        self.keys: list[tuple[str, Tags] | None] = []
        # The same series, taken apart once into string ids: a batch's dictionary
        # section is written from here in C (encoded_dictionary). No (name, dict)
        # is kept per series: at about 400 bytes each, per tenant, that was 2.7 MB
        # of the agent's RSS at 370 processes and two tenants.
        self.sdict = SeriesDictionary()
        n = max(1, min(cap, _INITIAL_IDS))
        self.last_seen = np.full(n, NEVER, np.int64)
        self.alive = np.zeros(n, np.bool_)
        self.mark = np.zeros(n, np.bool_)
        self.remap = np.zeros(n, np.uint32)
        self.iota = np.arange(n, dtype=np.uint32)
        self.free = _IdStack()
        self.quarantine: list[tuple[int, np.ndarray]] = []  # (evict epoch, ids)
        self.live = 0
        self.refused = 0
        self.refused_since_log = 0
        self.bytes = 0  # accounted bytes of live and quarantined series
        self.dead = 0  # entries deleted from `ids` since it was last compacted

    def grow(self) -> None:
        n = len(self.last_seen) * 2
        self.last_seen = np.concatenate([self.last_seen, np.full(n - len(self.last_seen), NEVER, np.int64)])
        self.alive = np.concatenate([self.alive, np.zeros(n - len(self.alive), np.bool_)])
        self.mark = np.zeros(n, np.bool_)
        self.remap = np.zeros(n, np.uint32)
        self.iota = np.arange(n, dtype=np.uint32)


class SeriesRegistry:
    """Interns series per tenant, caps their number, evicts the stale ones.

    Parameters
    ----------
    n_tenants : int
        Tenants are addressed by index ``0 <= t < n_tenants``.
    max_series : int or sequence of int
        Cap on live series per tenant (one int for all, or one per tenant). Past it,
        ``intern`` of a new series returns -1 and is counted in ``refused``.
    ttl_s : float
        A series not touched for this long is evicted by ``evict``.
    names : sequence of str, optional
        Tenant ids, used in log lines only.
    clock : callable returning seconds, optional
        Monotonic clock for the log rate limit (injectable for tests).
    log_interval_s : float
        At most one cardinality log line per tenant per this many seconds.
    """

    def __init__(self, n_tenants: int, max_series: int | Sequence[int] = 10000,
                 ttl_s: float = 600.0, *, names: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 log_interval_s: float = 60.0) -> None:
        if n_tenants < 1:
            raise ValueError(f"n_tenants: {n_tenants} is not a positive number")
        if isinstance(max_series, int):
            caps = [max_series] * n_tenants
        else:
            caps = [int(c) for c in max_series]
            if len(caps) != n_tenants:
                raise ValueError(f"max_series: {len(caps)} caps for {n_tenants} tenants")
        for t, c in enumerate(caps):
            if c < 1 or c > 2**32 - 1:
                raise ValueError(f"max_series[{t}]: {c} is not in 1..{2**32 - 1}")
        if names is not None and len(names) != n_tenants:
            raise ValueError(f"names: {len(names)} names for {n_tenants} tenants")
        self._t = [_Tenant(c) for c in caps]
        self._names = list(names) if names is not None else [str(t) for t in range(n_tenants)]
        self._ttl_ns = _ttl_ns(ttl_s)
        self._log_limiter = RateLimiter(clock)  # one refusal line per tenant per interval
        self._log_interval = float(log_interval_s)
        self._lock = threading.Lock()
        self._epoch = 0
        # Set by the memory guard near the agent's cap: every new series is refused
        # (counted in `refused` of its tenant and in `refused_memory`); known ones go on.
        self.refusing_new = False
        self.refused_memory = 0
        # The memory guard's growth check (MemGuard.check), called outside the lock
        # every `check_every_bytes` of accounted new series; None: no check.
        self.on_growth: Callable[[], object] | None = None
        self.check_every_bytes = CHECK_EVERY_BYTES
        self._grown = 0  # accounted bytes since the last on_growth call
        self.evicted_memory = 0  # series evicted early by evict(ttl_s=...) (the memory guard)

    # -- interning --------------------------------------------------------------------

    def _tenant(self, t: int) -> _Tenant:
        if not 0 <= t < len(self._t):
            raise IndexError(f"t: tenant index {t} is not in 0..{len(self._t) - 1}")
        return self._t[t]

    def intern(self, t: int, name: str, tags: Tags | Mapping[str, str] = (),
               now_ns: int | None = None) -> int:
        """Id of series ``(name, tags)`` in tenant ``t``; -1 when refused by the cap.

        Parameters
        ----------
        t : int
            Tenant index.
        name : str
            Metric name.
        tags : tuple of (key, value) pairs, or mapping
            The series' tags; pairs are sorted here if they are not already.
        now_ns : int, optional
            Marks the new series as seen now; without it, the next ``evict`` does.

        Returns
        -------
        int
            The id (``0 <= id < 2**32``), or -1 when the tenant is at its cap: the
            refusal is counted and logged at most once per ``log_interval_s``.
        """
        st = self._tenant(t)
        if isinstance(tags, tuple):
            sid = st.ids.get((name, tags))
            if sid is not None:
                return sid
            # Already sorted (the fan-out's merged tags are): keep the caller's tuple.
            in_order = all(a[0] < b[0] for a, b in zip(tags, tags[1:]))
            key = (name, tags if in_order else tuple(sorted(tags)))
        else:
            key = (name, tuple(sorted(tags.items())))
        with self._lock:
            sid = st.ids.get(key)
            if sid is not None:
                return sid
            if self.refusing_new:  # the memory guard's last step: known series only
                st.refused += 1
                self.refused_memory += 1
                return -1
            if st.live >= st.cap:
                st.refused += 1
                st.refused_since_log += 1
                self._log_refusal(t, st, key)
                return -1
            if st.free.n:
                sid = st.free.top()
                st.sdict.set(sid, name, key[1])  # refuses a non-str or non-UTF-8 string, naming it
                st.free.pop()
                st.keys[sid] = key
            else:
                sid = len(st.keys)
                if sid >= 2**32:
                    st.refused += 1
                    return -1
                st.sdict.set(sid, name, key[1])
                if sid >= len(st.last_seen):
                    st.grow()
                st.keys.append(key)
            st.ids[key] = sid
            st.alive[sid] = True
            st.last_seen[sid] = NEVER if now_ns is None else now_ns
            st.live += 1
            size = _series_bytes(key)
            st.bytes += size
            self._grown += size
            check = self._grown >= self.check_every_bytes and self.on_growth is not None
            if check:
                self._grown = 0
        if check:  # outside the lock: the guard's actions may flush, which releases ids
            self.on_growth()
        return sid

    def _log_refusal(self, t: int, st: _Tenant, key: tuple[str, Tags]) -> None:
        if self._log_limiter.allow(t, self._log_interval) is None:
            return
        name, example = self._names[t], key[0] + "{" + ",".join(f"{k}={v}" for k, v in key[1]) + "}"
        log.warning(f"tenant {name}: series limit {st.cap} reached; refused {st.refused_since_log} new series "
                    f"since the last report ({st.refused} in total), e.g. {example}",
                    tenant=name, limit=st.cap, refused_since_last=st.refused_since_log, refused_total=st.refused)
        st.refused_since_log = 0

    def key(self, t: int, sid: int) -> tuple[str, Tags]:
        """The ``(name, tags)`` of a live or quarantined id; KeyError for a free one."""
        st = self._tenant(t)
        k = st.keys[sid] if 0 <= sid < len(st.keys) else None
        if k is None:
            raise KeyError(f"tenant {self._names[t]}: series id {sid} is not in use")
        return k

    # -- liveness -----------------------------------------------------------------------

    def touch(self, t: int, sids: np.ndarray, now_ns: int) -> None:
        """Mark every id in ``sids`` as seen at ``now_ns`` (one vectorised store)."""
        st = self._tenant(t)
        sids = np.asarray(sids)
        if sids.dtype.kind != "u" and sids.size and sids.min() < 0:
            raise ValueError(f"sids: negative id {int(sids.min())} (a refused series?)")
        with self._lock:  # intern may swap in a grown array
            st.last_seen[sids] = now_ns

    @property
    def epoch(self) -> int:
        """Number of ``evict`` calls so far; ids quarantined by call k carry epoch k."""
        return self._epoch

    def evict(self, now_ns: int, ttl_s: float | None = None) -> dict[int, np.ndarray]:
        """Quarantine every live series not touched for ``ttl_s``.

        Parameters
        ----------
        now_ns : int
        ttl_s : float, optional
            Idle time past which a series goes, instead of the registry's ttl: the
            memory guard's shorter one while it sheds load. Those evictions are
            counted in ``evicted_memory``.

        Returns
        -------
        dict
            ``{t: uint32 array of evicted ids}`` for the tenants that lost any. Callers
            that cache ids (the collectors' fan-out) must forget these.
        """
        cutoff = max(now_ns - (self._ttl_ns if ttl_s is None else _ttl_ns(ttl_s)), -(2**63) + 1)
        out: dict[int, np.ndarray] = {}
        with self._lock:
            self._epoch += 1
            for t, st in enumerate(self._t):
                n = len(st.keys)
                if n == 0:
                    continue
                ls = st.last_seen[:n]
                alive = st.alive[:n]
                ls[alive & (ls == NEVER)] = now_ns
                stale = np.flatnonzero(alive & (ls <= cutoff)).astype(np.uint32)
                if stale.size == 0:
                    continue
                alive[stale] = False
                ids, keys = st.ids, st.keys
                for sid in stale.tolist():
                    del ids[keys[sid]]
                st.live -= stale.size
                st.dead += stale.size
                if st.dead > st.live:
                    # A dict never gives back the room of deleted entries; copied, it is
                    # sized for what is left (a flood's series gone: megabytes back).
                    st.ids = dict(ids)
                    st.dead = 0
                st.quarantine.append((self._epoch, stale))
                out[t] = stale
                if ttl_s is not None:
                    self.evicted_memory += stale.size
        return out

    def release(self, t: int | None = None, upto: int | None = None) -> int:
        """Make quarantined ids reusable; returns how many were released.

        Parameters
        ----------
        t : int, optional
            Only this tenant (default: every tenant).
        upto : int, optional
            Only ids quarantined by ``evict`` calls with epoch ``<= upto`` (see
            ``epoch``); default: all. The pipeline passes the epoch it read before its
            last complete drain, so ids still referenced by pending samples stay put.
        """
        tenants = range(len(self._t)) if t is None else (t,)
        released = 0
        with self._lock:
            for i in tenants:
                st = self._tenant(i)
                if not st.quarantine:
                    continue
                keep = []
                for epoch, ids in st.quarantine:
                    if upto is not None and epoch > upto:
                        keep.append((epoch, ids))
                        continue
                    lst = ids.tolist()
                    keys = st.keys
                    for sid in lst:
                        st.bytes -= _series_bytes(keys[sid])
                        keys[sid] = None
                        st.sdict.clear(sid)
                    st.last_seen[ids] = NEVER
                    st.free.push(ids)
                    released += len(lst)
                st.quarantine = keep
                _trim_free_tail(st)
        return released

    # -- encoding -----------------------------------------------------------------------

    def dictionary(self, t: int, sids: np.ndarray,
                   out: np.ndarray | None = None) -> tuple[list[tuple[str, dict[str, str]]], np.ndarray]:
        """Dense remap of a batch's series ids for ``wire.encode``.

        Parameters
        ----------
        t : int
            Tenant index.
        sids : uint32 array
            Series id per sample.
        out : uint32 array, optional
            Where to write the index (same length as ``sids``); a new array otherwise.

        Returns
        -------
        series : list of (name, tags dict)
            The distinct series, in id order, built for this call (the agent itself
            encodes through :meth:`encoded_dictionary`, which builds no objects).
        index : uint32 array
            Per sample, the position of its series in ``series``.

        Raises
        ------
        ValueError
            An id is not live or quarantined (a sample outlived its series' release).
        """
        st = self._tenant(t)
        sids = np.asarray(sids)
        if sids.size == 0:
            return [], (out[:0] if out is not None else np.empty(0, np.uint32))
        with self._lock:
            uniq, index = self._remap(t, st, sids, out)
            keys = st.keys
            series = [None if k is None else (k[0], dict(k[1])) for k in map(keys.__getitem__, uniq.tolist())]
        if None in series:
            bad = int(uniq[series.index(None)])
            raise ValueError(f"sids: id {bad} is not in use in tenant {self._names[t]}")
        return series, index

    def encoded_dictionary(self, t: int, sids: np.ndarray,
                           out: np.ndarray | None = None) -> tuple[bytes, int, np.ndarray]:
        """As :meth:`dictionary`, with the dictionary section already encoded.

        Returns
        -------
        dictionary : bytes
            The wire dictionary section for the batch's distinct series in id
            order: the bytes ``_codec.encode_dictionary(series)`` gives, written
            in C from the string ids kept since each series was interned.
        n_series : int
        index : uint32 array
            Per sample, the position of its series in the dictionary.

        Raises
        ------
        ValueError
            An id is not live or quarantined.
        """
        st = self._tenant(t)
        sids = np.asarray(sids)
        if sids.size == 0:
            return b"\x00", 0, (out[:0] if out is not None else np.empty(0, np.uint32))
        with self._lock:
            uniq, index = self._remap(t, st, sids, out)
            try:
                data, n = st.sdict.encode(uniq.astype(np.uint32, copy=False))
            except ValueError:
                bad = next(i for i in uniq.tolist() if st.keys[i] is None)
                raise ValueError(f"sids: id {bad} is not in use in tenant {self._names[t]}") from None
        return data, n, index

    def _remap(self, t: int, st: _Tenant, sids: np.ndarray, out: np.ndarray | None):
        n = len(st.keys)
        hi = int(sids.max())
        if hi >= n or (sids.dtype.kind != "u" and int(sids.min()) < 0):
            bad = hi if hi >= n else int(sids.min())
            raise ValueError(f"sids: id {bad} was never issued in tenant {self._names[t]}")
        # A scratch mark/remap pair over the id space: O(samples + ids), no sort.
        mark = st.mark
        mark[sids] = True
        uniq = np.flatnonzero(mark[:n])
        mark[uniq] = False
        remap = st.remap
        remap[uniq] = st.iota[:uniq.size]
        return uniq, np.take(remap, sids, out=out)

    # -- counters -----------------------------------------------------------------------

    def count(self, t: int) -> int:
        """Live series of tenant ``t`` (quarantined ones excluded)."""
        return self._tenant(t).live

    def refused(self, t: int) -> int:
        """``intern`` calls refused by tenant ``t``'s cap (cumulative)."""
        return self._tenant(t).refused

    def quarantined(self, t: int) -> int:
        """Ids of tenant ``t`` evicted but not yet released."""
        return sum(len(ids) for _, ids in self._tenant(t).quarantine)

    def accounted_bytes(self, t: int | None = None) -> int:
        """Estimated bytes held by the series of tenant ``t`` (default: every tenant), live or quarantined."""
        if t is not None:
            return self._tenant(t).bytes
        return sum(st.bytes for st in self._t)

    def max_series(self, t: int) -> int:
        """Tenant ``t``'s cap on live series."""
        return self._tenant(t).cap

    @property
    def n_tenants(self) -> int:
        return len(self._t)


def _ttl_ns(ttl_s: float) -> int:
    """``ttl_s`` in ns; ValueError naming it unless a positive, finite number of seconds."""
    try:
        ok = bool(ttl_s > 0) and math.isfinite(ttl_s)
    except (TypeError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"ttl_s: {ttl_s!r} is not a positive number of seconds")
    return int(min(float(ttl_s), 4e9) * 1e9)  # past a century: the same (no int64 overflow)


def _series_bytes(key: tuple[str, Tags]) -> int:
    """The accounting estimate of one series: the fixed overhead plus its strings."""
    return SERIES_OVERHEAD + len(key[0]) + sum(len(k) + len(v) for k, v in key[1])


class _IdStack:
    """Free ids, a uint32 stack: no int object per id (those would pin the
    interpreter's memory arenas once a released flood's ids sit in a list)."""

    __slots__ = ("a", "n")

    def __init__(self) -> None:
        self.a = np.empty(0, np.uint32)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def top(self) -> int:
        return int(self.a[self.n - 1])

    def pop(self) -> None:
        """Drop the top id (after :meth:`top` was used)."""
        self.n -= 1

    def push(self, ids: np.ndarray) -> None:
        need = self.n + len(ids)
        if need > len(self.a):
            grown = np.empty(max(need, 2 * len(self.a)), np.uint32)
            grown[:self.n] = self.a[:self.n]
            self.a = grown
        self.a[self.n:need] = ids
        self.n = need

    def keep_below(self, top: int) -> None:
        """Drop the ids >= ``top``; the rest highest first, so the lowest are reused first."""
        kept = self.a[:self.n]
        kept = -np.sort(-kept[kept < top].astype(np.int64))
        self.a = kept.astype(np.uint32)
        self.n = len(self.a)

    def tolist(self) -> list[int]:
        return self.a[:self.n].tolist()


def _trim_free_tail(st: _Tenant) -> None:
    """Give back the top of the id space when its ids are all free.

    After a flood is evicted and released, most ids are free; the highest ones
    (issued last) leave ``keys`` and ``free`` altogether, so neither keeps a
    slot per id the flood ever had. Lower free ids stay and are reused first.
    """
    keys = st.keys
    n = len(keys)
    if n == 0 or keys[-1] is not None:
        return
    top = n
    while top > 0 and keys[top - 1] is None:
        top -= 1
    if n - top < 64 and top:  # not worth a pass over the free list
        return
    del keys[top:]
    st.free.keep_below(top)
