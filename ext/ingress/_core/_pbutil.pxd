# Shared by the compiled encoders (_otlp, _remote_write; _codec for its varints
# and the byte-order guard): protobuf varints and fields, the output message,
# and the grouping of a batch's samples by series, each series in time order.
# The loops run without the GIL on raw pointers; only the allocations
# (new_message, groups_alloc/groups_free) and the guard need it.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy


cdef inline int varint_size(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t field_len(Py_ssize_t body) noexcept nogil:
    """Bytes of a one-byte-tag length-delimited field holding ``body`` bytes."""
    return 1 + varint_size(<uint64_t>body) + body


cdef inline bytes new_message(Py_ssize_t size, uint8_t** p):
    """The bytes object an encoder fills, at its exact size; ``p[0]``: its first byte."""
    out = PyBytes_FromStringAndSize(NULL, size)
    p[0] = <uint8_t*>PyBytes_AS_STRING(out)
    return out


cdef inline uint8_t* put_varint(uint8_t* p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>(v | 0x80)
        v >>= 7
        p += 1
    p[0] = <uint8_t>v
    return p + 1


cdef inline uint8_t* put_bytes(uint8_t* p, const uint8_t* src, Py_ssize_t n) noexcept nogil:
    if n > 0:
        memcpy(p, src, n)
    return p + n


cdef inline int require_little_endian(str module) except -1:
    """Called at import by every module that stores words with memcpy."""
    import sys
    if sys.byteorder != "little":
        raise ImportError(f"{module} supports little-endian machines only")
    return 0


cdef inline uint8_t* put_fixed64(uint8_t* p, uint64_t v) noexcept nogil:
    # little-endian hosts only (require_little_endian at import)
    memcpy(p, &v, 8)
    return p + 8


cdef inline uint64_t bits_of(double v) noexcept nogil:
    cdef uint64_t b
    memcpy(&b, &v, 8)
    return b


cdef struct TsPos:
    int64_t ts
    uint32_t pos


cdef inline int _cmp_tspos(const void* a, const void* b) noexcept nogil:
    cdef const TsPos* x = <const TsPos*>a
    cdef const TsPos* y = <const TsPos*>b
    if x.ts < y.ts:
        return -1
    if x.ts > y.ts:
        return 1
    if x.pos < y.pos:
        return -1
    return x.pos > y.pos


cdef inline Py_ssize_t counting_sort(const uint32_t* key, Py_ssize_t n, Py_ssize_t n_keys,
                                     int64_t* start, int64_t* cursor, uint32_t* order) noexcept nogil:
    """Positions 0..n-1 grouped by key (``order[start[k]:start[k+1]]``), each group in
    position order. ``start`` and ``cursor`` hold n_keys + 1 entries, ``order`` n.
    Returns -1, or the first position whose key is out of range.
    """
    cdef Py_ssize_t i, k
    for k in range(n_keys + 1):
        start[k] = 0
    for i in range(n):
        if key[i] >= <uint64_t>n_keys:
            return i
        start[key[i] + 1] += 1
    for k in range(n_keys):
        start[k + 1] += start[k]
        cursor[k] = start[k]
    for i in range(n):
        k = key[i]
        order[cursor[k]] = <uint32_t>i
        cursor[k] += 1
    return -1


cdef struct Groups:
    # A batch's sample positions by series: ``order[start[s]:start[s+1]]``, each
    # series in time order (ties in sample order). One block: groups_alloc, groups_free.
    int64_t* start      # n_series + 1
    int64_t* cursor     # n_series + 1; the caller's to reuse once grouped
    int64_t* extra      # as many as the caller asked for, uninitialised
    TsPos* scratch      # n
    uint32_t* order     # n


cdef inline int groups_alloc(Groups* g, Py_ssize_t n, Py_ssize_t n_series,
                             Py_ssize_t extra) except -1:
    """One block for ``g``; the caller frees it with groups_free, whatever happens."""
    g.start = <int64_t*>PyMem_Malloc((2 * (n_series + 1) + extra) * sizeof(int64_t)
                                     + n * (sizeof(TsPos) + sizeof(uint32_t)))
    if g.start == NULL:
        raise MemoryError()
    g.cursor = g.start + (n_series + 1)
    g.extra = g.cursor + (n_series + 1)
    g.scratch = <TsPos*>(g.extra + extra)
    g.order = <uint32_t*>(g.scratch + n)
    return 0


cdef inline void groups_free(Groups* g) noexcept:
    PyMem_Free(g.start)
    g.start = NULL


cdef inline Py_ssize_t group_by_series(Groups* g, const uint32_t* idx, const int64_t* ts,
                                       Py_ssize_t n, Py_ssize_t n_series) noexcept nogil:
    """Fills ``g`` (from groups_alloc with the same n and n_series). Returns -1, or
    the position of the first series index out of range.
    """
    cdef Py_ssize_t s, a, b, k
    cdef bint sorted_
    cdef TsPos* scratch = g.scratch
    cdef uint32_t* order = g.order
    cdef Py_ssize_t bad = counting_sort(idx, n, n_series, g.start, g.cursor, order)
    if bad >= 0:
        return bad
    for s in range(n_series):
        a = g.start[s]
        b = g.start[s + 1]
        sorted_ = True
        for k in range(a + 1, b):
            if ts[order[k]] < ts[order[k - 1]]:
                sorted_ = False
                break
        if sorted_:
            continue
        for k in range(a, b):
            scratch[k - a].ts = ts[order[k]]
            scratch[k - a].pos = order[k]
        qsort(scratch, b - a, sizeof(TsPos), _cmp_tspos)
        for k in range(a, b):
            order[k] = scratch[k - a].pos
    return -1
