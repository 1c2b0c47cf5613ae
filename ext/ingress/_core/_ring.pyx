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

from ingress._core._sample cimport Sample, SampleWords

import numpy as _np

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define INGRESS_RING_LE 1
    #else
    #define INGRESS_RING_LE 0
    #endif
    """
    const bint INGRESS_RING_LE

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
    if f[0] == b'@' or f[0] == b'=' or (f[0] == b'<' and INGRESS_RING_LE) or (
            (f[0] == b'>' or f[0] == b'!') and not INGRESS_RING_LE):
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


cdef void _scatter(Sample* dst, Py_ssize_t n,
                   const uint32_t* s, const int64_t* ts, Py_ssize_t ts_step,
                   const double* v, const uint8_t* k, Py_ssize_t k_step,
                   uint16_t tenant) noexcept nogil:
    cdef Py_ssize_t i
    cdef SampleWords* w = <SampleWords*> dst
    cdef uint64_t tt = (<uint64_t> tenant) << 32
    if INGRESS_RING_LE:
        # Field-by-field stores are four narrow writes per sample and the compiler
        # will not merge them; one word for series/tenant/kind runs ~2x faster.
        for i in range(n):
            w[i].ts = ts[i * ts_step]
            w[i].value = v[i]
            w[i].tail = (<uint64_t> s[i]) | tt | ((<uint64_t> k[i * k_step]) << 48)
    else:
        for i in range(n):
            dst[i].ts = ts[i * ts_step]
            dst[i].value = v[i]
            dst[i].series = s[i]
            dst[i].tenant = tenant
            dst[i].kind = k[i * k_step]
            dst[i]._pad = 0


cdef void _gather(const Sample* src, Py_ssize_t n,
                  uint32_t* s, int64_t* ts, double* v, uint8_t* k) noexcept nogil:
    cdef Py_ssize_t i
    cdef const SampleWords* w = <const SampleWords*> src
    cdef uint64_t tail
    if INGRESS_RING_LE:
        if k != NULL:
            for i in range(n):
                tail = w[i].tail
                s[i] = <uint32_t> tail
                ts[i] = w[i].ts
                v[i] = w[i].value
                k[i] = <uint8_t> (tail >> 48)
        else:
            for i in range(n):
                s[i] = <uint32_t> w[i].tail
                ts[i] = w[i].ts
                v[i] = w[i].value
    else:
        for i in range(n):
            s[i] = src[i].series
            ts[i] = src[i].ts
            v[i] = src[i].value
        if k != NULL:
            for i in range(n):
                k[i] = src[i].kind


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
    cdef Py_ssize_t _n
    cdef Py_ssize_t _total
    cdef int64_t* _cap
    cdef int64_t* _limit
    cdef int64_t* _off
    cdef int64_t* _head
    cdef int64_t* _size
    cdef uint64_t* _dropped
    cdef uint64_t* _pushed
    cdef uint64_t* _drained
    cdef PyThread_type_lock* _locks
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
        self._n = n_tenants
        self._drop_newest = policy == "drop_newest"
        self._cap = <int64_t*> PyMem_Calloc(n_tenants, sizeof(int64_t))
        self._limit = <int64_t*> PyMem_Calloc(n_tenants, sizeof(int64_t))
        self._off = <int64_t*> PyMem_Calloc(n_tenants, sizeof(int64_t))
        self._head = <int64_t*> PyMem_Calloc(n_tenants, sizeof(int64_t))
        self._size = <int64_t*> PyMem_Calloc(n_tenants, sizeof(int64_t))
        self._dropped = <uint64_t*> PyMem_Calloc(n_tenants, sizeof(uint64_t))
        self._pushed = <uint64_t*> PyMem_Calloc(n_tenants, sizeof(uint64_t))
        self._drained = <uint64_t*> PyMem_Calloc(n_tenants, sizeof(uint64_t))
        self._locks = <PyThread_type_lock*> PyMem_Calloc(n_tenants, sizeof(PyThread_type_lock))
        if (self._cap == NULL or self._limit == NULL or self._off == NULL or self._head == NULL or self._size == NULL
                or self._dropped == NULL or self._pushed == NULL or self._drained == NULL
                or self._locks == NULL):
            raise MemoryError()
        off = 0
        for t in range(n_tenants):
            self._cap[t] = caps[t]
            self._limit[t] = caps[t]
            self._off[t] = off
            off += caps[t]
        self._total = off
        # calloc: pages are mapped lazily but the address space and the limit are
        # fixed here, once; the struct's padding byte starts (and stays) zero.
        self._pool = <Sample*> PyMem_Calloc(self._total, sizeof(Sample))
        if self._pool == NULL:
            raise MemoryError(f"budget_bytes: cannot allocate {self._total * sizeof(Sample)} bytes")
        for t in range(n_tenants):
            self._locks[t] = PyThread_allocate_lock()
            if self._locks[t] == NULL:
                raise MemoryError("cannot allocate a ring lock")

    def __dealloc__(self):
        cdef Py_ssize_t t
        if self._locks != NULL:
            for t in range(self._n):
                if self._locks[t] != NULL:
                    PyThread_free_lock(self._locks[t])
        PyMem_Free(self._locks)
        PyMem_Free(self._pool)
        PyMem_Free(self._cap)
        PyMem_Free(self._limit)
        PyMem_Free(self._off)
        PyMem_Free(self._head)
        PyMem_Free(self._size)
        PyMem_Free(self._dropped)
        PyMem_Free(self._pushed)
        PyMem_Free(self._drained)

    # -- the hot path -------------------------------------------------------------

    cdef inline int _check_tenant(self, Py_ssize_t t) except -1:
        if <size_t> t >= <size_t> self._n:
            raise IndexError(f"t: tenant index {t} is not in 0..{self._n - 1}")
        return 0

    cdef int64_t _push_locked(self, Py_ssize_t t, Py_ssize_t n,
                              const uint32_t* s, const int64_t* ts, Py_ssize_t ts_step,
                              const double* v, const uint8_t* k, Py_ssize_t k_step) noexcept nogil:
        # `cap` is the ring's size (positions wrap at it); `lim` (<= cap) is how many
        # samples it may hold now: the soft limit the memory guard lowers.
        cdef int64_t cap = self._cap[t]
        cdef int64_t lim = self._limit[t]
        cdef int64_t head = self._head[t]
        cdef int64_t size = self._size[t]
        cdef int64_t dropped = 0
        cdef int64_t over, tail, first, room
        cdef Sample* ring = self._pool + self._off[t]
        cdef uint16_t tenant = <uint16_t> t
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
            _scatter(ring + tail, first, s, ts, ts_step, v, k, k_step, tenant)
            if n > first:
                _scatter(ring, n - first, s + first, ts + first * ts_step, ts_step,
                         v + first, k + first * k_step, k_step, tenant)
        self._head[t] = head
        self._size[t] = size + n
        self._dropped[t] += <uint64_t> dropped
        self._pushed[t] += <uint64_t> n
        return dropped

    cdef int64_t _drain_locked(self, Py_ssize_t t, Py_ssize_t room,
                               uint32_t* s, int64_t* ts, double* v, uint8_t* k) noexcept nogil:
        cdef int64_t cap = self._cap[t]
        cdef int64_t head = self._head[t]
        cdef int64_t n = self._size[t]
        cdef int64_t first
        cdef Sample* ring = self._pool + self._off[t]
        if n > room:
            n = room
        if n <= 0:
            return 0
        first = cap - head
        if first > n:
            first = n
        _gather(ring + head, first, s, ts, v, k)
        if n > first:
            _gather(ring, n - first, s + first, ts + first, v + first,
                    k + first if k != NULL else NULL)
        head += n
        if head >= cap:
            head -= cap
        self._size[t] -= n
        if self._size[t] == 0:
            # An emptied ring starts again at its first slot: a ring that is
            # drained every flush then only ever touches the pages one flush
            # interval needs, so its resident memory stays at that, not at the
            # whole budget, and those pages stay warm in the cache.
            head = 0
        self._head[t] = head
        self._drained[t] += <uint64_t> n
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
        cdef Py_buffer sb, tb, vb, kb
        cdef int64_t ts_scalar = 0
        cdef uint8_t k_scalar = 0
        cdef const int64_t* ts_p = &ts_scalar
        cdef const uint8_t* k_p = &k_scalar
        cdef Py_ssize_t ts_step = 0, k_step = 0, n
        cdef int64_t dropped
        cdef PyThread_type_lock lk
        self._check_tenant(t)
        # Zeroed views make PyBuffer_Release a no-op for the ones never acquired.
        memset(&sb, 0, sizeof(Py_buffer))
        memset(&tb, 0, sizeof(Py_buffer))
        memset(&vb, 0, sizeof(Py_buffer))
        memset(&kb, 0, sizeof(Py_buffer))
        try:
            _acquire(series, &sb, False, b'u', 4, "series")
            n = sb.len >> 2
            _acquire(values, &vb, False, b'f', 8, "values")
            if vb.len >> 3 != n:
                raise ValueError(f"values: length {vb.len >> 3} != len(series) {n}")
            if _is_scalar(ts):
                try:
                    ts_scalar = ts
                except OverflowError:
                    raise ValueError(f"ts: {ts} does not fit in int64") from None
            else:
                _acquire(ts, &tb, False, b's', 8, "ts")
                if tb.len >> 3 != n:
                    raise ValueError(f"ts: length {tb.len >> 3} != len(series) {n}")
                ts_p = <const int64_t*> tb.buf
                ts_step = 1
            if _is_scalar(kinds):
                if not 0 <= kinds <= 255:
                    raise ValueError(f"kinds: {kinds} does not fit in uint8")
                k_scalar = kinds
            else:
                _acquire(kinds, &kb, False, b'u', 1, "kinds")
                if kb.len != n:
                    raise ValueError(f"kinds: length {kb.len} != len(series) {n}")
                k_p = <const uint8_t*> kb.buf
                k_step = 1
            if n == 0:
                return 0
            lk = self._locks[t]
            if n >= _NOGIL_MIN:
                with nogil:
                    PyThread_acquire_lock(lk, WAIT_LOCK)
                    dropped = self._push_locked(t, n, <const uint32_t*> sb.buf, ts_p, ts_step,
                                                <const double*> vb.buf, k_p, k_step)
                    PyThread_release_lock(lk)
            else:
                _lock(lk)
                dropped = self._push_locked(t, n, <const uint32_t*> sb.buf, ts_p, ts_step,
                                            <const double*> vb.buf, k_p, k_step)
                PyThread_release_lock(lk)
            return dropped
        finally:
            PyBuffer_Release(&sb)
            PyBuffer_Release(&tb)
            PyBuffer_Release(&vb)
            PyBuffer_Release(&kb)

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
        cdef Py_buffer sb, tb, vb, kb
        cdef uint8_t* k_p = NULL
        cdef Py_ssize_t room, length
        cdef int64_t n
        cdef PyThread_type_lock lk
        self._check_tenant(t)
        # Zeroed views make PyBuffer_Release a no-op for the ones never acquired.
        memset(&sb, 0, sizeof(Py_buffer))
        memset(&tb, 0, sizeof(Py_buffer))
        memset(&vb, 0, sizeof(Py_buffer))
        memset(&kb, 0, sizeof(Py_buffer))
        try:
            _acquire(out_series, &sb, True, b'u', 4, "out_series")
            length = sb.len >> 2
            _acquire(out_ts, &tb, True, b's', 8, "out_ts")
            if tb.len >> 3 != length:
                raise ValueError(f"out_ts: length {tb.len >> 3} != len(out_series) {length}")
            _acquire(out_values, &vb, True, b'f', 8, "out_values")
            if vb.len >> 3 != length:
                raise ValueError(f"out_values: length {vb.len >> 3} != len(out_series) {length}")
            if out_kinds is not None:
                _acquire(out_kinds, &kb, True, b'u', 1, "out_kinds")
                if kb.len != length:
                    raise ValueError(f"out_kinds: length {kb.len} != len(out_series) {length}")
                k_p = (<uint8_t*> kb.buf) + start
            if start < 0 or start > length:
                raise ValueError(f"start: {start} is not in 0..{length}")
            room = length - start
            if room == 0 or self._size[t] == 0:
                return 0
            lk = self._locks[t]
            if room >= _NOGIL_MIN and self._size[t] >= _NOGIL_MIN:
                with nogil:
                    PyThread_acquire_lock(lk, WAIT_LOCK)
                    n = self._drain_locked(t, room, (<uint32_t*> sb.buf) + start,
                                           (<int64_t*> tb.buf) + start,
                                           (<double*> vb.buf) + start, k_p)
                    PyThread_release_lock(lk)
            else:
                _lock(lk)
                n = self._drain_locked(t, room, (<uint32_t*> sb.buf) + start,
                                       (<int64_t*> tb.buf) + start,
                                       (<double*> vb.buf) + start, k_p)
                PyThread_release_lock(lk)
            return n
        finally:
            PyBuffer_Release(&sb)
            PyBuffer_Release(&tb)
            PyBuffer_Release(&vb)
            PyBuffer_Release(&kb)

    # -- state ----------------------------------------------------------------------

    def size(self, Py_ssize_t t):
        """Samples waiting in tenant ``t``'s ring."""
        self._check_tenant(t)
        return self._size[t]

    def set_limit(self, Py_ssize_t t, int64_t n):
        """Let tenant ``t``'s ring hold at most ``n`` samples (clamped to 1..capacity).

        A soft limit: the ring keeps its slots; pushes past the limit drop by
        the policy (counted in ``dropped``). Samples already held above a
        lowered limit stay until drained. Returns the limit in force.
        """
        self._check_tenant(t)
        if n < 1:
            n = 1
        if n > self._cap[t]:
            n = self._cap[t]
        _lock(self._locks[t])
        self._limit[t] = n
        PyThread_release_lock(self._locks[t])
        return n

    def limit(self, Py_ssize_t t):
        """Samples tenant ``t``'s ring may hold now (its capacity unless lowered)."""
        self._check_tenant(t)
        return self._limit[t]

    def capacity(self, Py_ssize_t t):
        """Slots in tenant ``t``'s ring (fixed at construction)."""
        self._check_tenant(t)
        return self._cap[t]

    def dropped(self, Py_ssize_t t):
        """Samples tenant ``t``'s ring has dropped since construction (cumulative)."""
        self._check_tenant(t)
        return self._dropped[t]

    def pushed(self, Py_ssize_t t):
        """Samples accepted into tenant ``t``'s ring since construction (cumulative)."""
        self._check_tenant(t)
        return self._pushed[t]

    def drained(self, Py_ssize_t t):
        """Samples drained from tenant ``t``'s ring since construction (cumulative)."""
        self._check_tenant(t)
        return self._drained[t]

    def clear(self, Py_ssize_t t):
        """Forget every sample waiting in tenant ``t``'s ring; returns how many (not counted as dropped)."""
        cdef int64_t n
        self._check_tenant(t)
        _lock(self._locks[t])
        n = self._size[t]
        self._size[t] = 0
        self._head[t] = 0
        PyThread_release_lock(self._locks[t])
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
