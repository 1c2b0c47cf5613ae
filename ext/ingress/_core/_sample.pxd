# The one sample struct every compiled module agrees on. 24 bytes, no padding
# holes that would leak uninitialised memory into a spool or a batch.
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define INGRESS_LE 1
    #else
    #define INGRESS_LE 0
    #endif
    """
    const bint INGRESS_LE

cdef enum SampleKind:
    KIND_GAUGE = 0
    KIND_COUNTER = 1

cdef packed struct Sample:
    int64_t ts          # ns since the epoch
    double value
    uint32_t series     # id from the tenant's series registry
    uint16_t tenant     # index of the tenant in the agent's tenant table
    uint8_t kind        # SampleKind
    uint8_t _pad

# The same 24 bytes seen as three machine words, for copy loops: on a
# little-endian host ``tail`` is ``series | tenant << 32 | kind << 48`` (the pad
# byte, bits 56..63, stays zero). One 8-byte store instead of four narrow ones
# is what lets a ring push run at memory speed.
cdef packed struct SampleWords:
    int64_t ts
    double value
    uint64_t tail


# The ring's copy loops (_ring.pyx): columns into n consecutive samples of one
# tenant (a step of 0 broadcasts one ts or kind), and samples back out into
# columns (k NULL: kinds not wanted). Word stores on little-endian hosts.
cdef inline void scatter(Sample* dst, Py_ssize_t n,
                         const uint32_t* s, const int64_t* ts, Py_ssize_t ts_step,
                         const double* v, const uint8_t* k, Py_ssize_t k_step,
                         uint16_t tenant) noexcept nogil:
    cdef Py_ssize_t i
    cdef SampleWords* w = <SampleWords*> dst
    cdef uint64_t tt = (<uint64_t> tenant) << 32
    if INGRESS_LE:
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


cdef inline void gather(const Sample* src, Py_ssize_t n,
                        uint32_t* s, int64_t* ts, double* v, uint8_t* k) noexcept nogil:
    cdef Py_ssize_t i
    cdef const SampleWords* w = <const SampleWords*> src
    cdef uint64_t tail
    if INGRESS_LE:
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
