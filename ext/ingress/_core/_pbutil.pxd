# Shared by the protocol encoders (_otlp, _remote_write): protobuf varints and
# the grouping of a batch's samples by series, each series in time order.
# Everything here runs without the GIL on raw pointers.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy


cdef inline int varint_size(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


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


cdef inline uint8_t* put_fixed64(uint8_t* p, uint64_t v) noexcept nogil:
    # little-endian hosts only (the modules check at import)
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


cdef inline Py_ssize_t group_by_series(const uint32_t* idx, const int64_t* ts, Py_ssize_t n,
                                       Py_ssize_t n_series, int64_t* start, int64_t* cursor,
                                       uint32_t* order, TsPos* scratch) noexcept nogil:
    """Sample positions grouped by series (``order[start[s]:start[s+1]]``), each
    group sorted by timestamp, ties in sample order (stable).

    ``start`` and ``cursor`` hold n_series + 1 entries, ``order`` and ``scratch`` n.
    Returns -1, or the position of the first series index out of range.
    """
    cdef Py_ssize_t i, s, a, b, k
    cdef bint sorted_
    for s in range(n_series + 1):
        start[s] = 0
    for i in range(n):
        if idx[i] >= <uint64_t>n_series:
            return i
        start[idx[i] + 1] += 1
    for s in range(n_series):
        start[s + 1] += start[s]
    for s in range(n_series):
        cursor[s] = start[s]
    for i in range(n):
        s = idx[i]
        order[cursor[s]] = <uint32_t>i
        cursor[s] += 1
    for s in range(n_series):
        a = start[s]
        b = start[s + 1]
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
