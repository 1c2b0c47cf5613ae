# cython: language_level=3
# Over 600 lines on purpose: one compilation unit, so the C compiler inlines the helpers into the hot loops.
"""Batch format v1: the compiled encoder/decoder behind ``ingress.wire``.

One batch carries the samples of ONE tenant. All integers are little-endian.

    Batch =>
      header (48 + T + H bytes, never compressed, readable by wire.peek)
        0   magic         4    b"INGB"
        4   version       u8   1
        5   flags         u8   bit 0: body is one lz4 block; bits 1-7: zero
        6   tenant_len T  u8   1..63 (contract regex)
        7   host_len H    u8   0..255
        8   batch_id      16   random bytes
        24  sample_count  u32  N
        28  series_count  u32  S
        32  raw_len       u32  body length before compression
        36  body_len      u32  body length as stored (after the header)
        40  body_crc      u32  CRC-32 (zlib) of the stored body
        44  tenant        T    ASCII
        44+T host         H    UTF-8
        44+T+H header_crc u32  CRC-32 (zlib) of header bytes [0, 44+T+H)
      body (body_len bytes; lz4.block without size prefix when flags bit 0)

    raw body =>
      dictionary
        n_strings        varint
        n_strings x      (len varint, UTF-8 bytes)   # first-appearance order:
                                                     # name, then tag key, tag value
        names            S x varint string id
        tag counts       S x varint
        tag keys         (sum of tag counts) x varint string id
        tag values       (sum of tag counts) x zigzag varint of
                         value id - last value id of the same key (starts at 0)
      index column       N x zigzag varint of series_index[i] - series_index[i-1]
                         (series_index[-1] = 0)
      timestamps         mode u8
        mode 0 (runs)    n_runs varint, n_runs x (run_len varint >= 1,
                                                  zigzag varint delta-of-delta)
        mode 1 (samples) N x zigzag varint delta-of-delta
                         (deltas wrap modulo 2**64; previous ts and delta start at 0;
                          mode 1 iff 2 * n_runs > N)
      values
        codec column     one byte per series with c >= 1 samples, in series order
        streams          per such series, its c values in sample order:
          0x00 CONST     u64 bit pattern (all c >= 2 values identical)
          0x2d DEC       c x zigzag varint of m[j] - m[j-1] (m[-1] = 0)
          0x3d DEC_FOR   zigzag varint m[0]; if c >= 2: zigzag varint lo,
                         u8 w, (c-1) x w bits of (m[j] - m[j-1] - lo)
                         DEC*: value = float64(m) / 10**d exactly, bit for bit,
                         d = 0..15 the fewest decimals that hold every value
          0x10 XOR       c x (ctrl u8, n bytes): x = bits ^ previous bits
                         (previous starts at 0); ctrl = tz << 4 | n with tz the
                         trailing zero BYTES of x and n its significant bytes,
                         x == 0 is ctrl 0x00 alone
          0x40 XOR_FOR   u64 bits[0]; if c >= 2: u8 tz, u8 w,
                         (c-1) x w bits of (bits[j] ^ bits[j-1]) >> tz
                         (tz, w: shared trailing zeros and width of those XORs)
        w-bit fields are packed least significant bit first, the last byte
        zero-padded. DEC vs DEC_FOR and XOR vs XOR_FOR: the smaller stream wins
        (ties: DEC, XOR); CONST beats both, DEC* beat XOR*.

Decode scatters the per-series value streams back into sample order through the
index column, so the original order returns without a stored permutation.
The hot loops run without the GIL on raw pointers into buffers allocated once
per call; the series dictionary (strings) is per series and uses Python objects.
"""
import numpy as np
cimport numpy as cnp

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport fabs, rint
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from ingress._core._pbutil cimport put_varint, require_little_endian
from ingress.errors import DecodeLimitError, WireError

cnp.import_array()
require_little_endian(__name__)  # the XOR codec stores words with memcpy

cdef extern from *:
    """
    static inline int ingress_clz64(unsigned long long x) { return __builtin_clzll(x); }
    static inline int ingress_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    static inline uint64_t ingress_bits(double v) { uint64_t b; memcpy(&b, &v, 8); return b; }
    static inline double ingress_float(uint64_t b) { double v; memcpy(&v, &b, 8); return v; }
    """
    int ingress_clz64(unsigned long long x) nogil
    int ingress_ctz64(unsigned long long x) nogil
    uint64_t ingress_bits(double v) nogil
    double ingress_float(uint64_t b) nogil

cdef enum:
    MAX_DECIMALS = 15
# A raw body can exceed its lz4 block by at most 255:1 (each length byte adds 255).
LZ4_MAX_RATIO = 255

cdef enum:
    CODEC_CONST = 0x00
    CODEC_XOR = 0x10
    CODEC_DEC = 0x20
    CODEC_DEC_FOR = 0x30
    CODEC_XOR_FOR = 0x40
    TS_RUNS = 0
    TS_SAMPLES = 1

cdef double P10[16]
P10[:] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15]
cdef double TWO53 = 9007199254740992.0


# ---------------------------------------------------------------- varints
cdef inline uint64_t zz(int64_t v) noexcept nogil:
    return (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)


cdef inline int64_t unzz(uint64_t u) noexcept nogil:
    return <int64_t>((u >> 1) ^ (0 - (u & 1)))


# Status codes of the nogil decoder; _raise() below is the one bridge to WireError.
cdef enum:
    OK = 0
    E_TRUNC = 1           # input ends inside a field
    E_VARINT = 2          # varint longer than 10 bytes / over 64 bits
    E_INDEX = 3           # series index out of range
    E_TS_MODE = 4
    E_RUNS = 5            # run lengths do not add up to N
    E_CODEC = 6
    E_XOR = 7             # malformed XOR control byte
    E_TRAILING = 8
    E_COUNT = 9           # a count promises more than the input holds
    E_WIDTH = 10          # bit width or shift beyond 64


cdef struct Err:
    int code
    const char* section
    Py_ssize_t offset     # byte offset in the raw body
    int64_t a
    int64_t b


cdef inline int fail(Err* err, int code, Py_ssize_t offset, int64_t a=0, int64_t b=0) noexcept nogil:
    """Records where and why the body is bad (a, b: details for _raise); returns code."""
    err.code = code
    err.offset = offset
    err.a = a
    err.b = b
    return code


cdef inline int rd_varint(const uint8_t** pp, const uint8_t* end, uint64_t* out) noexcept nogil:
    cdef const uint8_t* p = pp[0]
    cdef uint64_t r = 0
    cdef uint64_t b
    cdef int shift = 0
    if p < end and p[0] < 0x80:
        out[0] = p[0]
        pp[0] = p + 1
        return OK
    while True:
        if p >= end:
            return E_TRUNC
        b = p[0]
        p += 1
        if shift == 63 and b > 1:
            return E_VARINT
        r |= (b & 0x7F) << shift
        if b < 0x80:
            out[0] = r
            pp[0] = p
            return OK
        shift += 7


# ---------------------------------------------------------------- growable buffer
cdef struct Buf:
    uint8_t* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef uint8_t* d
    if b.size + extra <= b.cap:
        return 0
    cap = max(b.cap * 2, b.size + extra, 256)
    d = <uint8_t*>realloc(b.data, cap)
    if d == NULL:
        raise MemoryError()
    b.data = d
    b.cap = cap
    return 0


cdef inline void buf_varint(Buf* b, uint64_t v) noexcept:
    # caller reserved 10 bytes
    b.size = put_varint(b.data + b.size, v) - b.data


# ---------------------------------------------------------------- dictionary
cdef dict _as_tags(object tags, str who):
    """``tags`` as a dict; ``TypeError`` naming ``who`` when it is not a mapping of pairs."""
    if type(tags) is dict:
        return <dict>tags
    try:
        return dict(tags)
    except (TypeError, ValueError):
        raise TypeError(f"{who} tags must be a mapping of str to str, got {type(tags).__name__}") from None


cdef str _what(Py_ssize_t i, object key):
    if key is None:
        return f"series[{i}] name"
    if key is _KEY:
        return f"series[{i}] tag key"
    return f"series[{i}] tag {key!r} value"


_KEY = object()


cdef Py_ssize_t _intern(dict table, list order, object s, Py_ssize_t i, object key) except -1:
    cdef object sid
    cdef Py_ssize_t n
    if type(s) is not str and not isinstance(s, str):
        raise TypeError(f"{_what(i, key)} must be str, got {type(s).__name__}")
    sid = table.get(s)
    if sid is not None:
        return <Py_ssize_t>sid
    try:
        PyUnicode_AsUTF8AndSize(s, &n)
    except UnicodeError as exc:
        raise ValueError(f"{_what(i, key)}: {s!r} is not encodable as UTF-8 ({exc.reason})") from None
    sid = len(order)
    table[s] = sid
    order.append(s)
    return <Py_ssize_t>sid


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


def encode_dictionary(series):
    """Encode the series dictionary section; returns (bytes, series count).

    Strings are interned in first-appearance order (name, then each tag key and
    value); the series are then written as four columns of string ids, the tag
    values as deltas from the last value of the same key, so that a dictionary
    of many similar series repeats itself and lz4 takes the repeats.
    """
    cdef dict table = {}
    cdef list order = []
    cdef list names = [], ntags = [], keys = [], vals = []
    cdef Py_ssize_t i = 0, j, n, total
    cdef Buf b
    cdef const char* u
    cdef int64_t* last = NULL
    cdef int64_t ks, vs
    cdef object name, tags, k, v, entry
    for entry in series:
        try:
            name, tags = entry
        except (TypeError, ValueError):
            raise ValueError(f"series[{i}] must be a (name, tags) pair, got {entry!r}") from None
        tags = _as_tags(tags, f"series[{i}]")
        names.append(_intern(table, order, name, i, None))
        ntags.append(len(<dict>tags))
        for k, v in (<dict>tags).items():
            keys.append(_intern(table, order, k, i, _KEY))
            vals.append(_intern(table, order, v, i, k))
        i += 1
    b.data = NULL
    b.size = 0
    b.cap = 0
    total = len(keys)
    try:
        buf_reserve(&b, 10)
        buf_varint(&b, len(order))
        for s in order:
            u = PyUnicode_AsUTF8AndSize(s, &n)
            buf_reserve(&b, 10 + n)
            buf_varint(&b, <uint64_t>n)
            memcpy(b.data + b.size, u, n)
            b.size += n
        buf_reserve(&b, 20 * i + 20 * total)
        for v in names:
            buf_varint(&b, <uint64_t>(<Py_ssize_t>v))
        for v in ntags:
            buf_varint(&b, <uint64_t>(<Py_ssize_t>v))
        for v in keys:
            buf_varint(&b, <uint64_t>(<Py_ssize_t>v))
        last = <int64_t*>calloc(len(order) + 1, sizeof(int64_t))
        if last == NULL:
            raise MemoryError()
        for j in range(total):
            ks = <Py_ssize_t>keys[j]
            vs = <Py_ssize_t>vals[j]
            buf_varint(&b, zz(vs - last[ks]))
            last[ks] = vs
        return PyBytes_FromStringAndSize(<char*>b.data, b.size), i
    finally:
        free(b.data)
        free(last)


cdef void* _realloc(void* p, size_t n) except NULL:
    """``realloc`` that raises ``MemoryError``; on failure ``p`` is still valid (and still owned)."""
    cdef void* q = realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


cdef str _slot_what(Py_ssize_t slot, Py_ssize_t j, list strings):
    if j == 0:
        return f"series {slot} name"
    if j % 2:
        return f"series {slot} tag key"
    return f"series {slot} tag {strings[j - 1]!r} value"


cdef class SeriesDictionary:
    """One tenant's series, held in the form the dictionary section is written from.

    ``encode_dictionary`` walks Python objects: per series a tuple, a dict and a
    hash lookup per string, about 0.3 us per series, which at a few thousand
    series per batch was most of what the agent's flushing thread spent. Here
    each series is checked and taken apart once, when it is registered
    (:meth:`set`), into string ids of a per-tenant table; :meth:`encode` then
    writes a batch's dictionary in C without the GIL, byte for byte what
    ``encode_dictionary`` writes for the same series in the same order (strings
    are renumbered per batch in first-appearance order). Strings are
    reference-counted and freed with the last series using them, so a host
    whose pids keep changing does not grow the table without bound. Freed
    string ids wait in a C array (not a list of int objects, which would pin
    the interpreter's memory arenas after a flood of series is released), and
    the string table is rebuilt once it holds more deleted entries than live
    ones, so the memory of a released flood goes back.

    Slots are the caller's series ids (the registry's). Not thread-safe: the
    registry calls it under its lock.
    """
    cdef dict sid_of            # str -> string id
    cdef list strs              # string id -> str (None when free); keeps the UTF-8 alive
    cdef int32_t* free_ids      # free string ids (a stack; capacity scap)
    cdef Py_ssize_t nfree
    cdef Py_ssize_t ndead       # entries deleted from sid_of since it was rebuilt
    cdef int32_t* refs
    cdef const char** sptr
    cdef Py_ssize_t* slen
    cdef uint32_t* stamp        # encode's per-batch renumbering, by generation stamp
    cdef int32_t* loc
    cdef int32_t* order
    cdef Py_ssize_t scap
    cdef uint32_t gen
    cdef int32_t** ent          # per slot: [name, ntags, k1, v1, k2, v2, ...] or NULL
    cdef Py_ssize_t ncap
    cdef readonly Py_ssize_t count

    def __cinit__(self):
        self.sid_of = {}
        self.strs = []
        self.free_ids = NULL
        self.nfree = 0
        self.ndead = 0
        self.refs = NULL
        self.sptr = NULL
        self.slen = NULL
        self.stamp = NULL
        self.loc = NULL
        self.order = NULL
        self.scap = 0
        self.gen = 0
        self.ent = NULL
        self.ncap = 0
        self.count = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.ent != NULL:
            for i in range(self.ncap):
                free(self.ent[i])
        free(self.ent)
        free(self.refs)
        free(self.sptr)
        free(self.slen)
        free(self.stamp)
        free(self.loc)
        free(self.order)
        free(self.free_ids)

    @property
    def strings(self) -> int:
        """Distinct strings held (names, tag keys and values of the series held)."""
        return len(self.sid_of)

    cdef int _grow_strings(self) except -1:
        cdef Py_ssize_t cap = max(256, self.scap * 2)
        self.refs = <int32_t*>_realloc(self.refs, cap * sizeof(int32_t))
        self.sptr = <const char**>_realloc(<void*>self.sptr, cap * sizeof(char*))
        self.slen = <Py_ssize_t*>_realloc(self.slen, cap * sizeof(Py_ssize_t))
        self.stamp = <uint32_t*>_realloc(self.stamp, cap * sizeof(uint32_t))
        memset(self.stamp + self.scap, 0, (cap - self.scap) * sizeof(uint32_t))
        self.loc = <int32_t*>_realloc(self.loc, cap * sizeof(int32_t))
        self.order = <int32_t*>_realloc(self.order, cap * sizeof(int32_t))
        self.free_ids = <int32_t*>_realloc(self.free_ids, cap * sizeof(int32_t))
        self.scap = cap
        return 0

    cdef int32_t _ref(self, str s) except -1:
        cdef object got = self.sid_of.get(s)
        cdef Py_ssize_t g, n
        cdef const char* u
        if got is not None:
            g = <Py_ssize_t>got
            self.refs[g] += 1
            return <int32_t>g
        u = PyUnicode_AsUTF8AndSize(s, &n)
        if self.nfree:
            self.nfree -= 1
            g = self.free_ids[self.nfree]
            self.strs[g] = s
        else:
            g = len(self.strs)
            if g >= 2**31 - 1:
                raise OverflowError("more than 2**31 distinct strings")
            if g >= self.scap:
                self._grow_strings()
            self.strs.append(s)
        self.sid_of[s] = g
        self.sptr[g] = u
        self.slen[g] = n
        self.refs[g] = 1
        return <int32_t>g

    cdef void _unref(self, int32_t g):
        self.refs[g] -= 1
        if self.refs[g] == 0:
            del self.sid_of[self.strs[g]]
            self.strs[g] = None
            self.sptr[g] = NULL
            self.free_ids[self.nfree] = g
            self.nfree += 1
            self.ndead += 1
            if self.ndead > 1024 and self.ndead > len(self.sid_of):
                self.sid_of = dict(self.sid_of)  # sized for what is left: a dict never shrinks
                self.ndead = 0

    def set(self, Py_ssize_t slot, name, tags) -> None:
        """Hold series ``(name, tags)`` at ``slot``, replacing what was there.

        Raises ``TypeError``/``ValueError`` (naming the string) for a name, tag
        key or value that is not a str or not encodable as UTF-8, and leaves
        the slot as it was.
        """
        cdef Py_ssize_t nt, j, cap
        cdef int32_t* e
        cdef void* p
        cdef list strings
        if slot < 0 or slot >= 2**32:
            raise ValueError(f"slot {slot} is not in 0..{2**32 - 1}")
        tags = _as_tags(tags, f"series {slot}")
        strings = [name]
        for k, v in (<dict>tags).items():
            strings.append(k)
            strings.append(v)
        # check every string before touching anything
        for j in range(len(strings)):
            st = strings[j]
            if not isinstance(st, str):
                raise TypeError(f"{_slot_what(slot, j, strings)} must be str, got {type(st).__name__}")
            try:
                PyUnicode_AsUTF8AndSize(st, &nt)
            except UnicodeError as exc:
                raise ValueError(f"{_slot_what(slot, j, strings)}: {st!r} is not encodable as UTF-8 "
                                 f"({exc.reason})") from None
        nt = len(<dict>tags)
        if slot >= self.ncap:
            cap = max(1024, self.ncap * 2)
            while cap <= slot:
                cap *= 2
            p = realloc(self.ent, cap * sizeof(int32_t*))
            if p == NULL:
                raise MemoryError()
            self.ent = <int32_t**>p
            memset(self.ent + self.ncap, 0, (cap - self.ncap) * sizeof(int32_t*))
            self.ncap = cap
        e = <int32_t*>malloc((2 + 2 * nt) * sizeof(int32_t))
        if e == NULL:
            raise MemoryError()
        e[1] = <int32_t>nt
        e[0] = self._ref(strings[0])
        for j in range(nt):
            e[2 + 2 * j] = self._ref(strings[1 + 2 * j])
            e[3 + 2 * j] = self._ref(strings[2 + 2 * j])
        self.clear(slot)
        self.ent[slot] = e
        self.count += 1

    def clear(self, Py_ssize_t slot) -> None:
        """Forget the series at ``slot`` (nothing happens if there is none)."""
        cdef int32_t* e
        cdef Py_ssize_t j
        if slot < 0 or slot >= self.ncap or self.ent[slot] == NULL:
            return
        e = self.ent[slot]
        self.ent[slot] = NULL
        self._unref(e[0])
        for j in range(2 * e[1]):
            self._unref(e[2 + j])
        free(e)
        self.count -= 1

    def encode(self, const uint32_t[::1] slots):
        """The dictionary section for the series at ``slots``, in that order: ``(bytes, count)``.

        The same bytes ``encode_dictionary`` returns for those series.
        ``ValueError`` names a slot that holds no series.
        """
        cdef Py_ssize_t n = slots.shape[0], i, j, nloc = 0, total = 0, sbytes = 0, size
        cdef int32_t* e
        cdef int32_t g, kl
        cdef uint32_t s, gen
        cdef int64_t bad = -1
        cdef uint8_t* out = NULL
        cdef uint8_t* p
        cdef int32_t* last = NULL
        with nogil:
            for i in range(n):
                s = slots[i]
                if s >= self.ncap or self.ent[s] == NULL:
                    bad = s
                    break
        if bad >= 0:
            raise ValueError(f"slot {bad} holds no series")
        self.gen += 1
        if self.gen == 0:  # wrapped: every stamp could look current
            memset(self.stamp, 0, self.scap * sizeof(uint32_t))
            self.gen = 1
        gen = self.gen
        with nogil:
            for i in range(n):
                e = self.ent[slots[i]]
                total += e[1]
                for j in range(-1, 2 * e[1]):
                    g = e[0] if j < 0 else e[2 + j]
                    if self.stamp[g] != gen:
                        self.stamp[g] = gen
                        self.loc[g] = <int32_t>nloc
                        self.order[nloc] = g
                        nloc += 1
                        sbytes += self.slen[g]
            size = 10 + 10 * nloc + sbytes + 10 * (2 * n + 2 * total)
            out = <uint8_t*>malloc(size)
            last = <int32_t*>calloc(nloc + 1, sizeof(int32_t))
            if out != NULL and last != NULL:
                p = put_varint(out, <uint64_t>nloc)
                for i in range(nloc):
                    g = self.order[i]
                    p = put_varint(p, <uint64_t>self.slen[g])
                    memcpy(p, self.sptr[g], self.slen[g])
                    p += self.slen[g]
                for i in range(n):
                    p = put_varint(p, <uint64_t>self.loc[self.ent[slots[i]][0]])
                for i in range(n):
                    p = put_varint(p, <uint64_t>self.ent[slots[i]][1])
                for i in range(n):
                    e = self.ent[slots[i]]
                    for j in range(e[1]):
                        p = put_varint(p, <uint64_t>self.loc[e[2 + 2 * j]])
                for i in range(n):
                    e = self.ent[slots[i]]
                    for j in range(e[1]):
                        kl = self.loc[e[2 + 2 * j]]
                        g = self.loc[e[3 + 2 * j]]
                        p = put_varint(p, zz(<int64_t>g - last[kl]))
                        last[kl] = g
                size = p - out
        try:
            if out == NULL or last == NULL:
                raise MemoryError()
            return PyBytes_FromStringAndSize(<char*>out, size), n
        finally:
            free(out)
            free(last)


cdef _over(str section, str what, uint64_t value, str limit, Py_ssize_t maximum):
    raise DecodeLimitError(f"{section}: {what}, over the decode limit {limit} = {maximum}",
                           limit, value, maximum)


def decode_dictionary(const uint8_t[::1] raw, Py_ssize_t n_series, Py_ssize_t max_strings=-1,
                      Py_ssize_t max_string_bytes=-1, Py_ssize_t max_tags=-1):
    """Parse the dictionary at the start of ``raw``; returns (series, end offset).

    ``max_strings``, ``max_string_bytes`` and ``max_tags`` (-1: none) are the
    decode limits (``wire.DecodeLimits``): each is checked once per count read,
    before anything is allocated for it, and raises ``DecodeLimitError``.
    """
    cdef const uint8_t* base = &raw[0] if raw.shape[0] else NULL
    cdef const uint8_t* p = base
    cdef const uint8_t* end = base + raw.shape[0]
    cdef uint64_t n_strings, ln, u
    cdef Py_ssize_t i, j, t, total = 0
    cdef int rc
    cdef list strings, series
    cdef dict tags
    cdef uint64_t* cols = NULL
    cdef int64_t* last = NULL
    cdef int64_t vs
    cdef const uint8_t* keyp
    cdef uint64_t string_bytes = 0
    rc = rd_varint(&p, end, &n_strings)
    if rc:
        _raise_varint(rc, "dictionary", p - base, "string count")
    # every string costs at least its length byte, every series two bytes
    if n_strings > <uint64_t>(end - p):
        raise WireError(f"dictionary: {n_strings} strings promised but only {end - p} body bytes remain")
    if n_strings > <uint64_t>max_strings:
        _over("dictionary", f"{n_strings} strings", n_strings, "max_strings", max_strings)
    strings = [None] * n_strings
    for i in range(<Py_ssize_t>n_strings):
        rc = rd_varint(&p, end, &ln)
        if rc:
            _raise_varint(rc, "dictionary", p - base, f"length of string {i}")
        if ln > <uint64_t>(end - p):
            raise WireError(f"dictionary: string {i} at body offset {p - base} is {ln} bytes "
                            f"but only {end - p} remain")
        string_bytes += ln
        if string_bytes > <uint64_t>max_string_bytes:
            _over("dictionary", f"strings 0..{i} hold {string_bytes} bytes", string_bytes,
                  "max_string_bytes", max_string_bytes)
        try:
            strings[i] = PyUnicode_DecodeUTF8(<const char*>p, <Py_ssize_t>ln, "strict")
        except UnicodeDecodeError as exc:
            raise WireError(f"dictionary: string {i} at body offset {p - base} is not valid UTF-8 "
                            f"({exc.reason} at byte {exc.start})") from None
        p += ln
    if <uint64_t>n_series > <uint64_t>(end - p) // 2:
        raise WireError(f"dictionary: header promises {n_series} series but only {end - p} body bytes "
                        f"remain (each needs at least 2)")
    try:
        # names and tag counts first: they bound the key and value columns
        cols = <uint64_t*>malloc((2 * n_series + 1) * sizeof(uint64_t))
        if cols == NULL:
            raise MemoryError()
        for i in range(2 * n_series):
            rc = rd_varint(&p, end, &cols[i])
            if rc:
                _raise_varint(rc, "dictionary", p - base,
                              f"{'name' if i < n_series else 'tag count'} of series {i % n_series}")
            if i < n_series and cols[i] >= n_strings:
                raise WireError(f"dictionary: series {i} names string {cols[i]} but there are {n_strings}")
            if i >= n_series:
                if cols[i] > <uint64_t>(end - p) // 2:
                    raise WireError(f"dictionary: series {i - n_series} promises {cols[i]} tags but only "
                                    f"{end - p} body bytes remain")
                total += <Py_ssize_t>cols[i]
                if <uint64_t>total > <uint64_t>(end - p) // 2:
                    raise WireError(f"dictionary: the series promise {total} tags but only "
                                    f"{end - p} body bytes remain")
                if <uint64_t>total > <uint64_t>max_tags:
                    _over("dictionary", f"series 0..{i - n_series} hold {total} tags", total,
                          "max_tags", max_tags)
        last = <int64_t*>calloc(n_strings + 1, sizeof(int64_t))
        if last == NULL:
            raise MemoryError()
        # keys (total varints) then values (total zigzag deltas per key)
        keyp = p
        for t in range(total):
            rc = rd_varint(&p, end, &u)
            if rc:
                _raise_varint(rc, "dictionary", p - base, f"tag key {t}")
            if u >= n_strings:
                raise WireError(f"dictionary: tag key {t} refers to string {u} but there are {n_strings}")
        series = [None] * n_series
        t = 0
        for i in range(n_series):
            tags = {}
            for j in range(<Py_ssize_t>cols[n_series + i]):
                rd_varint(&keyp, end, &u)   # validated above
                rc = rd_varint(&p, end, &ln)
                if rc:
                    _raise_varint(rc, "dictionary", p - base, f"tag value {t}")
                vs = <int64_t>(<uint64_t>last[u] + <uint64_t>unzz(ln))
                if vs < 0 or <uint64_t>vs >= n_strings:
                    raise WireError(f"dictionary: tag value {t} refers to string {vs} but there are {n_strings}")
                last[u] = vs
                tags[strings[u]] = strings[vs]
                t += 1
            if len(tags) != <Py_ssize_t>cols[n_series + i]:
                raise WireError(f"dictionary: series {i} repeats a tag key")
            series[i] = (strings[cols[i]], tags)
    finally:
        free(cols)
        free(last)
    return series, p - base


cdef _raise_varint(int rc, str section, Py_ssize_t offset, str what):
    if rc == E_TRUNC:
        raise WireError(f"{section}: input ends inside the varint of {what} (body offset {offset})")
    raise WireError(f"{section}: varint of {what} at body offset {offset} runs past 64 bits")


# ---------------------------------------------------------------- body encode
cdef inline bint dec_ok(double v, double scale) noexcept nogil:
    cdef double x = v * scale
    cdef int64_t m
    if not (fabs(x) < TWO53):  # also refuses NaN and inf
        return False
    m = <int64_t>rint(x)
    return ingress_bits(<double>m / scale) == ingress_bits(v)


cdef inline int varint_len(uint64_t v) noexcept nogil:
    return (70 - ingress_clz64(v | 1)) // 7


cdef inline int bit_width(uint64_t v) noexcept nogil:
    return 0 if v == 0 else 64 - ingress_clz64(v)


cdef uint8_t* put_packed(uint8_t* p, const uint64_t* r, Py_ssize_t c, int w) noexcept nogil:
    """Pack c values of w bits, least significant bit first; returns the new end."""
    cdef uint64_t acc = 0, v
    cdef int nb = 0
    cdef Py_ssize_t j
    if w == 0:
        return p
    for j in range(c):
        v = r[j]
        acc |= v << nb
        if nb + w >= 64:
            memcpy(p, &acc, 8)
            p += 8
            acc = (v >> (64 - nb)) if nb else 0
            nb = nb + w - 64
        else:
            nb += w
    memcpy(p, &acc, 8)  # buffer has slack; only the used bytes count
    return p + ((nb + 7) >> 3)


cdef uint8_t* put_series(uint8_t* p, const double* v, Py_ssize_t c, uint8_t* codec,
                         uint64_t* r) noexcept nogil:
    """Write one series' value stream, choosing its codec; returns the new end.

    r is scratch space for c residuals.
    """
    cdef Py_ssize_t j, size_var, size_for
    cdef uint64_t first = ingress_bits(v[0])
    cdef uint64_t bits, prev, x, ored
    cdef int d = 0, w, tz, nb
    cdef double scale
    cdef int64_t m, prev_m, dmin, dmax, delta
    cdef bint same = True
    for j in range(1, c):
        if ingress_bits(v[j]) != first:
            same = False
            break
    if same and c > 1:
        codec[0] = CODEC_CONST
        memcpy(p, &first, 8)
        return p + 8
    # DEC: the fewest decimals that hold every value exactly (d only grows)
    for j in range(c):
        while not dec_ok(v[j], P10[d]):
            d += 1
            if d > MAX_DECIMALS:
                break
        if d > MAX_DECIMALS:
            break
    if d <= MAX_DECIMALS:
        scale = P10[d]
        prev_m = 0
        dmin = 0
        dmax = 0
        size_var = 0
        for j in range(c):
            if not dec_ok(v[j], scale):
                break
            m = <int64_t>rint(v[j] * scale)
            delta = m - prev_m   # |m| < 2**53: no overflow
            r[j] = <uint64_t>delta
            size_var += varint_len(zz(delta))
            if j == 1 or (j > 1 and delta < dmin):
                dmin = delta
            if j == 1 or (j > 1 and delta > dmax):
                dmax = delta
            prev_m = m
        else:
            # varint per delta, or frame of reference: min delta + w-bit offsets
            w = bit_width(<uint64_t>(dmax - dmin))
            size_for = varint_len(zz(<int64_t>r[0])) + varint_len(zz(dmin)) + 1 + ((c - 1) * w + 7) // 8
            if c > 1 and size_for < size_var:
                codec[0] = <uint8_t>(CODEC_DEC_FOR | d)
                p = put_varint(p, zz(<int64_t>r[0]))
                p = put_varint(p, zz(dmin))
                p[0] = <uint8_t>w
                for j in range(1, c):
                    r[j] -= <uint64_t>dmin
                return put_packed(p + 1, r + 1, c - 1, w)
            codec[0] = <uint8_t>(CODEC_DEC | d)
            for j in range(c):
                p = put_varint(p, zz(<int64_t>r[j]))
            return p
    # XOR with the previous value: a control byte per value, or frame of reference
    prev = 0
    ored = 0
    tz = 64
    size_var = 0
    for j in range(c):
        bits = ingress_bits(v[j])
        x = bits ^ prev
        prev = bits
        r[j] = x
        if x:
            nb = ingress_ctz64(x)
            if j and nb < tz:
                tz = nb
            if j:
                ored |= x
            size_var += 1 + 8 - (ingress_clz64(x) >> 3) - (nb >> 3)
        else:
            size_var += 1
    if tz == 64:
        tz = 0
    w = bit_width(ored >> tz)
    size_for = 8 + 2 + ((c - 1) * w + 7) // 8
    if c > 1 and size_for < size_var:
        codec[0] = CODEC_XOR_FOR
        memcpy(p, &r[0], 8)
        p[8] = <uint8_t>tz
        p[9] = <uint8_t>w
        for j in range(1, c):
            r[j] >>= tz
        return put_packed(p + 10, r + 1, c - 1, w)
    codec[0] = CODEC_XOR
    for j in range(c):
        x = r[j]
        if x == 0:
            p[0] = 0
            p += 1
            continue
        tz = ingress_ctz64(x) >> 3
        nb = 8 - (ingress_clz64(x) >> 3) - tz
        p[0] = <uint8_t>((tz << 4) | nb)
        x >>= 8 * tz
        memcpy(p + 1, &x, 8)  # buffer has slack; only nb bytes count
        p += 1 + nb
    return p


cdef Py_ssize_t _encode(const uint32_t* idx, const int64_t* ts, const double* val,
                        Py_ssize_t n, Py_ssize_t nser, int64_t* start, int64_t* cursor,
                        double* tmp, uint64_t* scratch, uint8_t* out, Py_ssize_t* bad) noexcept nogil:
    cdef uint8_t* p = out
    cdef uint8_t* codecs
    cdef Py_ssize_t i, j, s, runs, active
    cdef uint32_t cur, prev = 0
    cdef int64_t t
    cdef uint64_t prev_t = 0, prev_d = 0, d
    # index column, per-series counts
    for i in range(n):
        cur = idx[i]
        if cur >= <uint64_t>nser:
            bad[0] = i
            return -1
        start[cur + 1] += 1
        p = put_varint(p, zz(<int64_t>cur - <int64_t>prev))
        prev = cur
    # timestamps: runs of one pass's stamp, or per sample when runs are short
    runs = 0
    i = 0
    while i < n:
        t = ts[i]
        i += 1
        while i < n and ts[i] == t:
            i += 1
        runs += 1
    if 2 * runs > n:
        p[0] = TS_SAMPLES
        p += 1
        for i in range(n):
            d = <uint64_t>ts[i] - prev_t
            p = put_varint(p, zz(<int64_t>(d - prev_d)))
            prev_t = <uint64_t>ts[i]
            prev_d = d
    else:
        p[0] = TS_RUNS
        p = put_varint(p + 1, <uint64_t>runs)
        i = 0
        while i < n:
            t = ts[i]
            j = i + 1
            while j < n and ts[j] == t:
                j += 1
            p = put_varint(p, <uint64_t>(j - i))
            d = <uint64_t>t - prev_t
            p = put_varint(p, zz(<int64_t>(d - prev_d)))
            prev_t = <uint64_t>t
            prev_d = d
            i = j
    # values: gather each series' values in sample order, then one stream each
    active = 0
    for s in range(nser):
        if start[s + 1]:
            active += 1
        start[s + 1] += start[s]
    memcpy(cursor, start, nser * sizeof(int64_t))
    for i in range(n):
        s = idx[i]
        tmp[cursor[s]] = val[i]
        cursor[s] += 1
    codecs = p
    p += active
    for s in range(nser):
        if start[s + 1] > start[s]:
            p = put_series(p, tmp + start[s], start[s + 1] - start[s], codecs, scratch)
            codecs += 1
    return p - out


def encode_body(const uint8_t[::1] dictionary, const uint32_t[::1] series_index,
                const int64_t[::1] timestamps, const double[::1] values, Py_ssize_t n_series):
    """Lay out the raw body (dictionary + columns) in one buffer.

    Returns (uint8 array, raw_len); ``array[:raw_len]`` is the body to compress.
    Raises ValueError naming the first out-of-range series_index entry.
    """
    cdef Py_ssize_t n = series_index.shape[0]
    cdef Py_ssize_t nd = dictionary.shape[0]
    cdef Py_ssize_t bad = -1, end
    if timestamps.shape[0] != n or values.shape[0] != n:
        raise ValueError(f"series_index, timestamps and values differ in length: "
                         f"{n}, {timestamps.shape[0]}, {values.shape[0]}")
    # worst case: 5 B/index, 10 B/timestamp (+1 mode +10 runs), 9 B/value, 9 B/series, slack
    cdef cnp.ndarray out = np.empty(nd + 24 * n + 9 * n_series + 64, np.uint8)
    cdef cnp.ndarray start = np.zeros(n_series + 1, np.int64)
    cdef cnp.ndarray cursor = np.empty(n_series + 1, np.int64)
    cdef cnp.ndarray tmp = np.empty(n, np.float64)
    cdef cnp.ndarray scratch = np.empty(n, np.uint64)
    cdef uint8_t* o = <uint8_t*>cnp.PyArray_DATA(out)
    if nd:
        memcpy(o, &dictionary[0], nd)
    cdef const uint32_t* ip = &series_index[0] if n else NULL
    cdef const int64_t* tp = &timestamps[0] if n else NULL
    cdef const double* vp = &values[0] if n else NULL
    with nogil:
        end = _encode(ip, tp, vp, n, n_series,
                      <int64_t*>cnp.PyArray_DATA(start), <int64_t*>cnp.PyArray_DATA(cursor),
                      <double*>cnp.PyArray_DATA(tmp), <uint64_t*>cnp.PyArray_DATA(scratch), o + nd, &bad)
    if end < 0:
        raise ValueError(f"series_index[{bad}] = {series_index[bad]} is out of range "
                         f"for {n_series} series")
    return out, nd + end


# ---------------------------------------------------------------- body decode
cdef inline uint64_t load_le(const uint8_t* p, Py_ssize_t avail) noexcept nogil:
    cdef uint64_t x = 0
    memcpy(&x, p, 8 if avail >= 8 else avail)
    return x


cdef int get_packed(const uint8_t** pp, const uint8_t* end, uint64_t* out,
                    Py_ssize_t c, int w) noexcept nogil:
    """Unpack c values of w bits (see put_packed)."""
    cdef const uint8_t* p = pp[0]
    cdef Py_ssize_t nbytes = (c * w + 7) >> 3
    cdef Py_ssize_t j, bit = 0, byte
    cdef uint64_t mask = (<uint64_t>0 - 1) if w == 64 else ((<uint64_t>1 << w) - 1)
    cdef uint64_t x
    cdef int sh
    if end - p < nbytes:
        return E_TRUNC
    if w == 0:
        for j in range(c):
            out[j] = 0
        return OK
    for j in range(c):
        byte = bit >> 3
        sh = bit & 7
        if byte + 16 <= nbytes:
            memcpy(&x, p + byte, 8)
            x >>= sh
            if sh + w > 64:
                x |= <uint64_t>p[byte + 8] << (64 - sh)
        else:
            x = load_le(p + byte, nbytes - byte) >> sh
            if sh + w > 64:
                x |= <uint64_t>p[byte + 8] << (64 - sh)
        out[j] = x & mask
        bit += w
    pp[0] = p + nbytes
    return OK


cdef int get_series(const uint8_t** pp, const uint8_t* end, uint8_t codec,
                    double* v, Py_ssize_t c, uint64_t* r) noexcept nogil:
    """One series' c values (c >= 1) into v. Returns OK with pp[0] past the stream,
    or a status with pp[0] where the stream went wrong (one exit for both)."""
    cdef const uint8_t* p = pp[0]
    cdef Py_ssize_t j
    cdef uint64_t bits = 0, x, u, dmin = 0
    cdef int64_t m = 0
    cdef double scale = P10[codec & 0x0F]
    cdef int rc = OK, tz, nb, w
    cdef uint8_t ctrl
    if codec == CODEC_CONST:
        if end - p < 8:
            rc = E_TRUNC
        else:
            memcpy(&bits, p, 8)
            p += 8
            for j in range(c):
                v[j] = ingress_float(bits)
    elif codec & 0xF0 == CODEC_DEC:
        for j in range(c):
            rc = rd_varint(&p, end, &u)
            if rc:
                break
            m = <int64_t>(<uint64_t>m + <uint64_t>unzz(u))
            v[j] = <double>m / scale
    elif codec & 0xF0 == CODEC_DEC_FOR:
        rc = rd_varint(&p, end, &u)
        if rc == OK and c > 1:
            rc = rd_varint(&p, end, &dmin)
            if rc == OK and p >= end:
                rc = E_TRUNC
            elif rc == OK and p[0] > 64:
                rc = E_WIDTH
            elif rc == OK:
                w = p[0]
                p += 1
                rc = get_packed(&p, end, r, c - 1, w)
        if rc == OK:
            m = unzz(u)
            v[0] = <double>m / scale
            dmin = <uint64_t>unzz(dmin)
            for j in range(1, c):
                m = <int64_t>(<uint64_t>m + dmin + r[j - 1])
                v[j] = <double>m / scale
    elif codec == CODEC_XOR:
        for j in range(c):
            if p >= end:
                rc = E_TRUNC
                break
            ctrl = p[0]
            p += 1
            if ctrl:
                tz = ctrl >> 4
                nb = ctrl & 0x0F
                if nb == 0 or tz + nb > 8:
                    p -= 1
                    rc = E_XOR
                    break
                if end - p < nb:
                    rc = E_TRUNC
                    break
                x = 0
                memcpy(&x, p, nb)
                p += nb
                bits ^= x << (8 * tz)
            v[j] = ingress_float(bits)
    elif codec == CODEC_XOR_FOR:
        if end - p < (10 if c > 1 else 8):
            rc = E_TRUNC
        else:
            memcpy(&bits, p, 8)
            p += 8
            v[0] = ingress_float(bits)
            if c > 1:
                tz = p[0]
                w = p[1]
                if tz + w > 64:
                    rc = E_WIDTH
                else:
                    p += 2
                    rc = get_packed(&p, end, r, c - 1, w)
                    if rc == OK:
                        for j in range(1, c):
                            bits ^= r[j - 1] << tz
                            v[j] = ingress_float(bits)
    else:
        rc = E_CODEC
    pp[0] = p
    return rc


cdef int _decode(const uint8_t* base, const uint8_t* p, const uint8_t* end,
                 Py_ssize_t n, Py_ssize_t nser, uint32_t* oidx, int64_t* ots, double* oval,
                 int64_t* start, int64_t* cursor, double* tmp, uint64_t* scratch,
                 Err* err) noexcept nogil:
    cdef Py_ssize_t i, j, s, runs, filled
    cdef uint64_t u, ln
    cdef int64_t cur = 0
    cdef uint64_t prev_t = 0, prev_d = 0
    cdef const uint8_t* codecs
    cdef int rc
    cdef uint8_t mode
    # index column
    err.section = b"index column"
    for i in range(n):
        rc = rd_varint(&p, end, &u)
        if rc:
            return fail(err, rc, p - base)
        cur = <int64_t>(<uint64_t>cur + <uint64_t>unzz(u))
        if cur < 0 or cur >= nser:
            return fail(err, E_INDEX, p - base, i, cur)
        oidx[i] = <uint32_t>cur
        start[cur + 1] += 1
    # timestamps
    err.section = b"timestamps"
    if p >= end:
        return fail(err, E_TRUNC, p - base)
    mode = p[0]
    p += 1
    if mode == TS_SAMPLES:
        for i in range(n):
            rc = rd_varint(&p, end, &u)
            if rc:
                return fail(err, rc, p - base)
            prev_d += <uint64_t>unzz(u)
            prev_t += prev_d
            ots[i] = <int64_t>prev_t
    elif mode == TS_RUNS:
        rc = rd_varint(&p, end, &u)
        if rc:
            return fail(err, rc, p - base)
        if u > <uint64_t>n or u > <uint64_t>(end - p) // 2:
            return fail(err, E_COUNT, p - base, <int64_t>u, n)
        runs = <Py_ssize_t>u
        filled = 0
        for j in range(runs):
            rc = rd_varint(&p, end, &ln)
            if rc == OK:
                rc = rd_varint(&p, end, &u)
            if rc:
                return fail(err, rc, p - base)
            if ln == 0 or ln > <uint64_t>(n - filled):
                return fail(err, E_RUNS, p - base, j, <int64_t>ln)
            prev_d += <uint64_t>unzz(u)
            prev_t += prev_d
            for i in range(filled, filled + <Py_ssize_t>ln):
                ots[i] = <int64_t>prev_t
            filled += <Py_ssize_t>ln
        if filled != n:
            return fail(err, E_RUNS, p - base, -1, filled)
    else:
        return fail(err, E_TS_MODE, p - 1 - base, mode, 0)
    # values
    err.section = b"values"
    filled = 0
    for s in range(nser):
        if start[s + 1]:
            filled += 1
        start[s + 1] += start[s]
    if end - p < filled:
        return fail(err, E_TRUNC, end - base)
    codecs = p
    p += filled
    for s in range(nser):
        if start[s + 1] > start[s]:
            rc = get_series(&p, end, codecs[0], tmp + start[s], start[s + 1] - start[s], scratch)
            if rc:
                return fail(err, rc, p - base, s, codecs[0])
            codecs += 1
    if p != end:
        return fail(err, E_TRAILING, p - base, end - p, 0)
    memcpy(cursor, start, nser * sizeof(int64_t))
    for i in range(n):
        s = oidx[i]
        oval[i] = tmp[cursor[s]]
        cursor[s] += 1
    return OK


cdef _raise(Err* e, Py_ssize_t n):
    """The one bridge from the nogil decoder's status to a WireError message."""
    cdef str where = (<bytes>e.section).decode() + ": "
    cdef str at = f" (body offset {e.offset})"
    if e.code == E_TRUNC:
        msg = "input ends inside a field, the body is truncated"
    elif e.code == E_VARINT:
        msg = "varint runs past 64 bits"
    elif e.code == E_INDEX:
        msg = f"sample {e.a} refers to series {e.b}, outside the dictionary"
    elif e.code == E_TS_MODE:
        msg = f"unknown timestamp mode {e.a}"
    elif e.code == E_RUNS:
        if e.a < 0:
            msg = f"runs cover {e.b} samples but the header says {n}"
        else:
            msg = f"run {e.a} has length {<uint64_t>e.b}, beyond the {n} samples of the batch"
    elif e.code == E_COUNT:
        msg = f"{<uint64_t>e.a} runs promised for {e.b} samples, more than the input holds"
    elif e.code == E_CODEC:
        msg = f"series {e.a} has unknown codec byte 0x{e.b:02x}"
    elif e.code == E_XOR:
        msg = f"series {e.a}: malformed XOR control byte"
    elif e.code == E_WIDTH:
        msg = f"series {e.a}: packed bit width beyond 64 bits"
    elif e.code == E_TRAILING:
        msg = f"{e.a} bytes left over after the last value"
    else:
        msg = f"error {e.code}"
    raise WireError(where + msg + at)


def decode_columns(const uint8_t[::1] raw, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t n_series):
    """Decode index, timestamp and value columns starting at ``raw[pos]``.

    Returns (series_index uint32, timestamps int64, values float64). Every
    sample needs at least one byte of the index column, so ``n`` is checked
    against the bytes present before any column is allocated.
    """
    cdef Py_ssize_t size = raw.shape[0]
    if pos < 0 or pos > size:
        raise ValueError("pos outside raw")
    if n > size - pos:
        raise WireError(f"index column: header promises {n} samples but only {size - pos} body "
                        f"bytes remain (each sample needs at least 1)")
    cdef cnp.ndarray oidx = np.empty(n, np.uint32)
    cdef cnp.ndarray ots = np.empty(n, np.int64)
    cdef cnp.ndarray oval = np.empty(n, np.float64)
    cdef cnp.ndarray start = np.zeros(n_series + 1, np.int64)
    cdef cnp.ndarray cursor = np.empty(n_series + 1, np.int64)
    cdef cnp.ndarray tmp = np.empty(n, np.float64)
    cdef cnp.ndarray scratch = np.empty(n, np.uint64)
    cdef Err err
    cdef int rc
    cdef const uint8_t* base = &raw[0] if size else NULL
    err.code = OK
    err.a = 0
    err.b = 0
    with nogil:
        rc = _decode(base, base + pos, base + size, n, n_series,
                     <uint32_t*>cnp.PyArray_DATA(oidx), <int64_t*>cnp.PyArray_DATA(ots),
                     <double*>cnp.PyArray_DATA(oval), <int64_t*>cnp.PyArray_DATA(start),
                     <int64_t*>cnp.PyArray_DATA(cursor), <double*>cnp.PyArray_DATA(tmp),
                     <uint64_t*>cnp.PyArray_DATA(scratch), &err)
    if rc:
        _raise(&err, n)
    return oidx, ots, oval
