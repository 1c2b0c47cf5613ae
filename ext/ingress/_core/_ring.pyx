# cython: language_level=3
"""Sample pool and per-tenant rings: the agent's in-memory buffer.

Layout
------
One pool of ``Sample`` structs (24 bytes each, see ``_sample.pxd``) is allocated
once, when the ``RingSet`` is built, and carved into one bounded ring per tenant::

    pool:  | tenant 0: cap[0] samples | tenant 1: cap[1] samples | ... |
             ^off[0]                    ^off[1]
    ring t: slots off[t] .. off[t]+cap[t]-1, oldest at head[t], size[t] live

Nothing is allocated after construction. A push copies whole columns into the
ring in at most two contiguous segments (the tail up to the end of the slice,
then the rest from its start); a drain copies them back out into columns the
caller owns. No Python object is created per sample.

Concurrency
-----------
Every tenant has its own lock, so pushes and drains of different tenants never
wait on each other. Small blocks are copied with the GIL held: releasing and
re-taking the GIL costs more than copying a few thousand samples, and re-taking
it can stall for a whole switch interval when another thread is busy. Blocks of
``NOGIL_MIN`` samples or more release the GIL for the copy. A lock is never
waited for while the GIL is held, and the GIL is never waited for while a lock
is held, so the two cannot deadlock.
"""
cimport cython
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.pythread cimport (
    NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock, PyThread_allocate_lock,
    PyThread_free_lock, PyThread_release_lock, PyThread_type_lock,
)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from ingress._core._sample cimport INGRESS_LE, Sample, gather, scatter

import numpy as _np

# Blocks at least this long are copied with the GIL released (see module doc).
cdef enum:
    _NOGIL_MIN = 65536
NOGIL_MIN = _NOGIL_MIN

POLICIES = ("drop_oldest", "drop_newest")

cdef object _np_integer = _np.integer


def sample_size():
    """Size in bytes of one pooled sample (the C ``Sample`` struct): 24."""
    return sizeof(Sample)


cdef inline bint _is_scalar(object x):
    return isinstance(x, int) or isinstance(x, _np_integer)


cdef inline bint _format_ok(const char* f, char cls) noexcept:
    # Struct-module format of a 1-d buffer: an optional native/little-endian
    # prefix, then one type character of the right class (the itemsize is
    # checked separately, so 'L' on a 4-byte-long platform is fine too).
    if f == NULL:
        return cls == b'u'  # PyBUF_FORMAT not honoured: bytes, treat as uint8
    if f[0] == b'@' or f[0] == b'=' or (f[0] == b'<' and INGRESS_LE) or (
            (f[0] == b'>' or f[0] == b'!') and not INGRESS_LE):
        f += 1
    if f[0] == 0 or f[1] != 0:
        return False
    if cls == b'u':
        return f[0] == b'B' or f[0] == b'H' or f[0] == b'I' or f[0] == b'L' or f[0] == b'Q'
    if cls == b's':
        return f[0] == b'b' or f[0] == b'h' or f[0] == b'i' or f[0] == b'l' or f[0] == b'q'
    return f[0] == b'd'


cdef dict _DTYPES = {(ord('u'), 4): "uint32", (ord('u'), 1): "uint8",
                     (ord('s'), 8): "int64", (ord('f'), 8): "float64"}


cdef int _acquire(object obj, Py_buffer* view, bint writable, char cls,
                  Py_ssize_t itemsize, str name) except -1:
    """The one bridge from a caller's column to a raw pointer.

    A typed memoryview costs ~250 ns to set up per argument, as much as copying a
    few hundred samples; the buffer protocol with our own checks costs a fraction
    of that and lets every refusal name the argument.
    """
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    try:
        PyObject_GetBuffer(obj, view, flags)
    except BufferError as e:
        memset(view, 0, sizeof(Py_buffer))
        raise ValueError(f"{name}: {e}") from None
    except (TypeError, ValueError) as e:
        memset(view, 0, sizeof(Py_buffer))
        raise type(e)(f"{name}: {e}") from None
    if view.ndim != 1 or view.itemsize != itemsize or not _format_ok(view.format, cls):
        dtype = getattr(obj, "dtype", None)
        if dtype is not None:
            got = f"dtype {dtype}, {view.ndim}-d"
        elif view.format != NULL:
            got = f"format {(<bytes> view.format).decode()!r}, {view.ndim}-d"
        else:
            got = f"bytes, {view.ndim}-d"
        PyBuffer_Release(view)
        raise ValueError(f"{name}: expected a 1-d {_DTYPES[(cls, itemsize)]} array, got {got}")
    return 0


cdef inline void _lock(PyThread_type_lock lk) noexcept:
    # Called with the GIL held: never block while holding it.
    if not PyThread_acquire_lock(lk, NOWAIT_LOCK):
        with nogil:
            PyThread_acquire_lock(lk, WAIT_LOCK)


cdef struct Ring:
    # One tenant's ring: slots off .. off+cap-1 of the pool, oldest at head, size live.
    int64_t cap         # slots; positions wrap at it
    int64_t limit       # how many it may hold now (<= cap): the memory guard lowers it
    int64_t off
    int64_t head
    int64_t size
    uint64_t dropped    # cumulative counters since construction
    uint64_t pushed
    uint64_t drained
    PyThread_type_lock lock


cdef struct Block:
    # The columns of one push (read) or drain (written), already offset by ``start``;
    # a step of 0 broadcasts a scalar. ``n``: samples to push, or room to drain into.
    uint32_t* s
    int64_t* ts
    double* v
    uint8_t* k          # NULL: a drain without kinds
    Py_ssize_t ts_step
    Py_ssize_t k_step
    Py_ssize_t n
    bint push


cdef struct Views:
    # The argument buffers of one push or drain (see _views_init, _release).
    Py_buffer s
    Py_buffer ts
    Py_buffer v
    Py_buffer k


cdef extern from *:
    """
    static inline void ingress_buffer_unset(Py_buffer* v) { v->obj = NULL; }
    """
    void _unset "ingress_buffer_unset"(Py_buffer* v) noexcept


cdef inline void _views_init(Views* b) noexcept:
    # Each view's obj cleared (zeroing all 320 bytes costs a rep stos per
    # call): releasing a view never acquired is then a no-op.
    _unset(&b.s)
    _unset(&b.ts)
    _unset(&b.v)
    _unset(&b.k)


cdef inline void _release(Views* b) noexcept:
    PyBuffer_Release(&b.s)
    PyBuffer_Release(&b.ts)
    PyBuffer_Release(&b.v)
    PyBuffer_Release(&b.k)


@cython.final
cdef class RingSet:
    """One preallocated, bounded ring of samples per tenant.

    Parameters
    ----------
    n_tenants : int
        Number of tenants; tenant ``t`` is addressed by its index ``0 <= t < n_tenants``.
    budget_bytes : int
        Memory for all rings together. The pool holds ``budget_bytes // 24`` samples,
        split across tenants in proportion to ``weights`` (rounded down).
    policy : {"drop_oldest", "drop_newest"}
        What a full ring gives up: its oldest samples (default) or the incoming ones.
    weights : sequence of float, optional
        Relative share of the budget per tenant; equal shares by default.

    Raises
    ------
    ValueError
        A parameter is out of range, or the budget leaves some tenant without a slot.
    """

    cdef Sample* _pool
    cdef Ring* _r
    cdef Py_ssize_t _n
    cdef Py_ssize_t _total
    cdef bint _drop_newest

    def __cinit__(self, Py_ssize_t n_tenants, budget_bytes, policy="drop_oldest", weights=None):
        cdef Py_ssize_t t
        if n_tenants < 1 or n_tenants > 65536:
            raise ValueError(f"n_tenants: {n_tenants} is not in 1..65536")
        if policy not in POLICIES:
            raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
        try:
            budget = int(budget_bytes)
        except (TypeError, ValueError):
            raise ValueError(f"budget_bytes: {budget_bytes!r} is not a number of bytes") from None
        if budget < 0:
            raise ValueError(f"budget_bytes: {budget} is negative")
        if weights is None:
            w = [1.0] * n_tenants
        else:
            try:
                w = [float(x) for x in weights]
            except (TypeError, ValueError):
                raise ValueError(f"weights: {weights!r} is not a sequence of numbers") from None
            if len(w) != n_tenants:
                raise ValueError(f"weights: {len(w)} weights for {n_tenants} tenants")
            for t in range(n_tenants):
                if not w[t] > 0.0:
                    raise ValueError(f"weights[{t}]: {w[t]!r} is not a positive number")
        total = budget // sizeof(Sample)
        wsum = sum(w)
        caps = [int(total * (x / wsum)) for x in w]
        for t in range(n_tenants):
            if caps[t] < 1:
                raise ValueError(
                    f"budget_bytes: {budget} leaves tenant {t} no slot "
                    f"({total} samples of {sizeof(Sample)} bytes for {n_tenants} tenants)")
        self._r = <Ring*> PyMem_Calloc(n_tenants, sizeof(Ring))
        if self._r == NULL:
            raise MemoryError()
        self._n = n_tenants
        self._drop_newest = policy == "drop_newest"
        off = 0
        for t in range(n_tenants):
            self._r[t].cap = self._r[t].limit = caps[t]
            self._r[t].off = off
            off += caps[t]
        self._total = off
        # calloc: pages are mapped lazily but the address space and the limit are
        # fixed here, once; the struct's padding byte starts (and stays) zero.
        self._pool = <Sample*> PyMem_Calloc(self._total, sizeof(Sample))
        if self._pool == NULL:
            raise MemoryError(f"budget_bytes: cannot allocate {self._total * sizeof(Sample)} bytes")
        for t in range(n_tenants):
            self._r[t].lock = PyThread_allocate_lock()
            if self._r[t].lock == NULL:
                raise MemoryError("cannot allocate a ring lock")

    def __dealloc__(self):
        cdef Py_ssize_t t
        if self._r != NULL:
            for t in range(self._n):
                if self._r[t].lock != NULL:
                    PyThread_free_lock(self._r[t].lock)
        PyMem_Free(self._r)
        PyMem_Free(self._pool)

    # -- the hot path -------------------------------------------------------------

    cdef inline Ring* _ring(self, Py_ssize_t t) except NULL:
        if <size_t> t >= <size_t> self._n:
            raise IndexError(f"t: tenant index {t} is not in 0..{self._n - 1}")
        return self._r + t

    cdef int64_t _push_locked(self, Ring* r, const Block* b) noexcept nogil:
        cdef const uint32_t* s = b.s
        cdef const int64_t* ts = b.ts
        cdef const double* v = b.v
        cdef const uint8_t* k = b.k
        cdef Py_ssize_t ts_step = b.ts_step, k_step = b.k_step, n = b.n
        cdef int64_t cap = r.cap
        cdef int64_t lim = r.limit
        cdef int64_t head = r.head
        cdef int64_t size = r.size
        cdef int64_t dropped = 0
        cdef int64_t over, tail, first, room
        cdef Sample* ring = self._pool + r.off
        cdef uint16_t tenant = <uint16_t> (r - self._r)
        if self._drop_newest:
            room = lim - size
            if room < 0:
                room = 0
            if n > room:
                dropped = n - room
                n = room
        elif n >= lim:
            # Only the newest `lim` samples of this block survive; the ring restarts.
            dropped = size + (n - lim)
            s += n - lim
            ts += (n - lim) * ts_step
            v += n - lim
            k += (n - lim) * k_step
            n = lim
            head = 0
            size = 0
        else:
            over = size + n - lim
            if over > 0:
                dropped = over
                head += over
                if head >= cap:
                    head -= cap
                size -= over
        if n > 0:
            tail = head + size
            if tail >= cap:
                tail -= cap
            first = cap - tail
            if first > n:
                first = n
            scatter(ring + tail, first, s, ts, ts_step, v, k, k_step, tenant)
            if n > first:
                scatter(ring, n - first, s + first, ts + first * ts_step, ts_step,
                         v + first, k + first * k_step, k_step, tenant)
        r.head = head
        r.size = size + n
        r.dropped += <uint64_t> dropped
        r.pushed += <uint64_t> n
        return dropped

    cdef int64_t _drain_locked(self, Ring* r, const Block* b) noexcept nogil:
        cdef int64_t cap = r.cap
        cdef int64_t head = r.head
        cdef int64_t n = r.size
        cdef int64_t first
        cdef Sample* ring = self._pool + r.off
        if n > b.n:
            n = b.n
        if n <= 0:
            return 0
        first = cap - head
        if first > n:
            first = n
        gather(ring + head, first, b.s, b.ts, b.v, b.k)
        if n > first:
            gather(ring, n - first, b.s + first, b.ts + first, b.v + first,
                    b.k + first if b.k != NULL else NULL)
        head += n
        if head >= cap:
            head -= cap
        r.size -= n
        if r.size == 0:
            # An emptied ring starts again at its first slot: a ring that is
            # drained every flush then only ever touches the pages one flush
            # interval needs, so its resident memory stays at that, not at the
            # whole budget, and those pages stay warm in the cache.
            head = 0
        r.head = head
        r.drained += <uint64_t> n
        return n

    cdef inline int64_t _locked(self, Ring* r, const Block* b) noexcept:
        # The one place a ring's lock is taken for a push or a drain: blocks of
        # _NOGIL_MIN samples or more are copied with the GIL released, smaller
        # ones with it held (see the module doc).
        cdef int64_t n
        if b.n >= _NOGIL_MIN and (b.push or r.size >= _NOGIL_MIN):
            with nogil:
                PyThread_acquire_lock(r.lock, WAIT_LOCK)
                n = self._push_locked(r, b) if b.push else self._drain_locked(r, b)
                PyThread_release_lock(r.lock)
        else:
            _lock(r.lock)
            n = self._push_locked(r, b) if b.push else self._drain_locked(r, b)
            PyThread_release_lock(r.lock)
        return n

    def push(self, Py_ssize_t t, series, ts, values, kinds):
        """Append a block of samples to tenant ``t``'s ring.

        Parameters
        ----------
        t : int
            Tenant index.
        series : uint32 array, 1-d, C-contiguous
            Series ids (from the tenant's ``SeriesRegistry``); its length is the block's.
        ts : int64 array or int
            Timestamps in ns since the epoch; an int applies to the whole block.
        values : float64 array
            Sample values.
        kinds : uint8 array or int
            Sample kinds (0 gauge, 1 counter); an int applies to the whole block.

        Returns
        -------
        int
            How many samples the push dropped (oldest or incoming, per the policy).

        Raises
        ------
        ValueError
            An argument has the wrong dtype or shape, is not contiguous, or its length
            differs from ``len(series)``; the message starts with the argument's name.
        TypeError
            An argument is neither an array nor (for ``ts``/``kinds``) an int.
        IndexError
            ``t`` is not a tenant index.
        """
        cdef Views w
        cdef Block b
        cdef int64_t ts_scalar = 0
        cdef uint8_t k_scalar = 0
        cdef Ring* r = self._ring(t)
        _views_init(&w)
        b.ts, b.ts_step, b.k, b.k_step, b.push = &ts_scalar, 0, &k_scalar, 0, True
        try:
            _acquire(series, &w.s, False, b'u', 4, "series")
            b.n = w.s.len >> 2
            _acquire(values, &w.v, False, b'f', 8, "values")
            if w.v.len >> 3 != b.n:
                raise ValueError(f"values: length {w.v.len >> 3} != len(series) {b.n}")
            if _is_scalar(ts):
                try:
                    ts_scalar = ts
                except OverflowError:
                    raise ValueError(f"ts: {ts} does not fit in int64") from None
            else:
                _acquire(ts, &w.ts, False, b's', 8, "ts")
                if w.ts.len >> 3 != b.n:
                    raise ValueError(f"ts: length {w.ts.len >> 3} != len(series) {b.n}")
                b.ts, b.ts_step = <int64_t*> w.ts.buf, 1
            if _is_scalar(kinds):
                if not 0 <= kinds <= 255:
                    raise ValueError(f"kinds: {kinds} does not fit in uint8")
                k_scalar = kinds
            else:
                _acquire(kinds, &w.k, False, b'u', 1, "kinds")
                if w.k.len != b.n:
                    raise ValueError(f"kinds: length {w.k.len} != len(series) {b.n}")
                b.k, b.k_step = <uint8_t*> w.k.buf, 1
            if b.n == 0:
                return 0
            b.s, b.v = <uint32_t*> w.s.buf, <double*> w.v.buf
            return self._locked(r, &b)
        finally:
            _release(&w)

    def drain(self, Py_ssize_t t, out_series, out_ts, out_values, out_kinds, Py_ssize_t start=0):
        """Move the oldest samples of tenant ``t`` into caller-owned columns.

        Parameters
        ----------
        t : int
            Tenant index.
        out_series, out_ts, out_values : writable uint32, int64, float64 arrays
            Destination columns, 1-d, C-contiguous, all of the same length.
        out_kinds : writable uint8 array or None
            Destination for the kinds; ``None`` skips them.
        start : int, optional
            First index to write in the outputs (lets a caller fill a batch in steps).

        Returns
        -------
        int
            ``n``, the number of samples moved: ``min(size(t), len(out_series) - start)``.
            They are written to ``out[start:start + n]``, oldest first, and leave the ring.

        Raises
        ------
        ValueError
            An output has the wrong dtype or length, is read-only or not contiguous, or
            ``start`` is out of range; the message starts with the argument's name.
        IndexError
            ``t`` is not a tenant index.
        """
        cdef Views w
        cdef Block b
        cdef Py_ssize_t length
        cdef Ring* r = self._ring(t)
        _views_init(&w)
        b.k, b.push = NULL, False
        try:
            _acquire(out_series, &w.s, True, b'u', 4, "out_series")
            length = w.s.len >> 2
            _acquire(out_ts, &w.ts, True, b's', 8, "out_ts")
            if w.ts.len >> 3 != length:
                raise ValueError(f"out_ts: length {w.ts.len >> 3} != len(out_series) {length}")
            _acquire(out_values, &w.v, True, b'f', 8, "out_values")
            if w.v.len >> 3 != length:
                raise ValueError(f"out_values: length {w.v.len >> 3} != len(out_series) {length}")
            if out_kinds is not None:
                _acquire(out_kinds, &w.k, True, b'u', 1, "out_kinds")
                if w.k.len != length:
                    raise ValueError(f"out_kinds: length {w.k.len} != len(out_series) {length}")
                b.k = (<uint8_t*> w.k.buf) + start
            if start < 0 or start > length:
                raise ValueError(f"start: {start} is not in 0..{length}")
            b.n = length - start
            if b.n == 0 or r.size == 0:
                return 0
            b.s, b.ts = (<uint32_t*> w.s.buf) + start, (<int64_t*> w.ts.buf) + start
            b.v = (<double*> w.v.buf) + start
            return self._locked(r, &b)
        finally:
            _release(&w)

    # -- state ----------------------------------------------------------------------

    def size(self, Py_ssize_t t):
        """Samples waiting in tenant ``t``'s ring."""
        return self._ring(t).size

    def set_limit(self, Py_ssize_t t, int64_t n):
        """Let tenant ``t``'s ring hold at most ``n`` samples (clamped to 1..capacity).

        A soft limit: the ring keeps its slots; pushes past the limit drop by
        the policy (counted in ``dropped``). Samples already held above a
        lowered limit stay until drained. Returns the limit in force.
        """
        cdef Ring* r = self._ring(t)
        n = max(1, min(n, r.cap))
        _lock(r.lock)
        r.limit = n
        PyThread_release_lock(r.lock)
        return n

    def limit(self, Py_ssize_t t):
        """Samples tenant ``t``'s ring may hold now (its capacity unless lowered)."""
        return self._ring(t).limit

    def capacity(self, Py_ssize_t t):
        """Slots in tenant ``t``'s ring (fixed at construction)."""
        return self._ring(t).cap

    def dropped(self, Py_ssize_t t):
        """Samples tenant ``t``'s ring has dropped since construction (cumulative)."""
        return self._ring(t).dropped

    def pushed(self, Py_ssize_t t):
        """Samples accepted into tenant ``t``'s ring since construction (cumulative)."""
        return self._ring(t).pushed

    def drained(self, Py_ssize_t t):
        """Samples drained from tenant ``t``'s ring since construction (cumulative)."""
        return self._ring(t).drained

    def clear(self, Py_ssize_t t):
        """Forget every sample waiting in tenant ``t``'s ring; returns how many (not counted as dropped)."""
        cdef Ring* r = self._ring(t)
        _lock(r.lock)
        n = r.size
        r.size = r.head = 0
        PyThread_release_lock(r.lock)
        return n
    @property
    def n_tenants(self):
        """Number of tenants (rings)."""
        return self._n

    @property
    def policy(self):
        """``"drop_oldest"`` or ``"drop_newest"``."""
        return "drop_newest" if self._drop_newest else "drop_oldest"

    @property
    def total_capacity(self):
        """Slots in the whole pool (sum of the rings' capacities)."""
        return self._total

    @property
    def nbytes(self):
        """Bytes held by the pool: ``total_capacity * 24`` (at most the budget)."""
        return self._total * <Py_ssize_t> sizeof(Sample)

    def __repr__(self):
        return (f"RingSet(n_tenants={self._n}, total_capacity={self._total}, "
                f"policy={self.policy!r})")
