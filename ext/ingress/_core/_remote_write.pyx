# cython: language_level=3
"""Prometheus remote write 1.0: a ``WriteRequest`` from the columnar batch.

The protobuf written (prompb/remote.proto, types.proto; field numbers)::

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   # ms since the epoch

The labels of a series (every ``Label`` entry, tag and length included) are
encoded once by the caller and passed in as one blob with offsets: they are
what the output caches per tenant. This module writes, per series that has
samples and in series order, ``TimeSeries{labels, samples}`` with the samples
in time order. Timestamps are ns in the batch and ms on the wire (floor
division); samples of one series that fall in the same millisecond are
collapsed to the last of them in time order, because Prometheus refuses a
second, different value for a timestamp it already holds (and the whole
request with it). Fields equal to their proto3 default (a value of +0.0, a
timestamp of 0) are left out, as protobuf's own encoders do.

The sample loops run without the GIL over the columns; the output is one bytes
object allocated at its exact size after a sizing pass.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from ingress._core._pbutil cimport (
    Groups, bits_of, field_len, group_by_series, groups_alloc, groups_free, new_message, put_bytes,
    put_fixed64, put_varint, require_little_endian, varint_size,
)

require_little_endian(__name__)


cdef inline int64_t floor_ms(int64_t ns) noexcept nogil:
    # cdivision is on for every module (CMakeLists.txt): / truncates toward zero
    cdef int64_t q = ns / 1000000
    if ns < 0 and q * 1000000 != ns:
        q -= 1
    return q


cdef inline Py_ssize_t sample_len(double v, int64_t ms) noexcept nogil:
    cdef Py_ssize_t n = 0
    if bits_of(v) != 0:
        n += 9
    if ms != 0:
        n += 1 + varint_size(<uint64_t>ms)
    return n


def encode_write_request(const uint8_t[::1] labels, const int64_t[::1] label_offsets,
                         const uint32_t[::1] series_index, const int64_t[::1] timestamps,
                         const double[::1] values):
    """The ``WriteRequest`` protobuf of one batch (not yet snappy-compressed).

    Parameters
    ----------
    labels : bytes
        Every series' encoded ``Label`` entries (field 1 of ``TimeSeries``), back to back.
    label_offsets : int64 array of n_series + 1
        Series ``s`` owns ``labels[label_offsets[s]:label_offsets[s + 1]]``.
    series_index, timestamps, values
        The batch's columns (uint32, int64 ns, float64).

    Returns
    -------
    (bytes, int)
        The message and the number of samples in it (after collapsing samples
        of one series within the same millisecond).

    Raises
    ------
    ValueError
        Columns of different lengths, offsets out of order or past the blob,
        or a series index out of range (the message names it).
    """
    cdef Py_ssize_t n = series_index.shape[0]
    cdef Py_ssize_t n_series = label_offsets.shape[0] - 1
    cdef Py_ssize_t nl = labels.shape[0]
    cdef Py_ssize_t s, k, a, b, kept, total, body, bad, ts_len, slen
    if timestamps.shape[0] != n or values.shape[0] != n:
        raise ValueError(f"series_index, timestamps and values differ in length: "
                         f"{n}, {timestamps.shape[0]}, {values.shape[0]}")
    if n_series < 0:
        raise ValueError("label_offsets needs n_series + 1 entries")
    for s in range(n_series):
        if label_offsets[s] < 0 or label_offsets[s] > label_offsets[s + 1] or label_offsets[s + 1] > nl:
            raise ValueError(f"label_offsets[{s}:{s + 2}] = {label_offsets[s]}, {label_offsets[s + 1]} "
                             f"is not a range within the {nl} bytes of labels")
    cdef const uint32_t* ip = &series_index[0] if n else NULL
    cdef const int64_t* tp = &timestamps[0] if n else NULL
    cdef const double* vp = &values[0] if n else NULL
    cdef const uint8_t* lp = &labels[0] if nl else NULL
    cdef const int64_t* lo = &label_offsets[0]
    cdef int64_t ms, next_ms
    cdef uint32_t j
    cdef Py_ssize_t samples_out = 0
    cdef Groups g
    cdef double v
    cdef uint8_t* p
    groups_alloc(&g, n, n_series, n_series)
    cdef int64_t* start = g.start
    cdef int64_t* kept_end = g.cursor  # per series, the end of its samples after collapsing
    cdef uint32_t* order = g.order
    cdef int64_t* tslen = g.extra  # per series with samples, its TimeSeries body
    try:
        total = 0
        with nogil:
            bad = group_by_series(&g, ip, tp, n, n_series)
            for s in range(n_series if bad < 0 else 0):
                a = start[s]
                b = start[s + 1]
                # collapse samples in the same millisecond to the last one (in place)
                kept = a
                for k in range(a, b):
                    ms = floor_ms(tp[order[k]])
                    if k + 1 < b:
                        next_ms = floor_ms(tp[order[k + 1]])
                        if next_ms == ms:
                            continue
                    order[kept] = order[k]
                    kept += 1
                kept_end[s] = kept
                if kept == a:
                    continue
                body = lo[s + 1] - lo[s]
                for k in range(a, kept):
                    j = order[k]
                    slen = sample_len(vp[j], floor_ms(tp[j]))
                    body += field_len(slen)
                tslen[s] = body
                total += field_len(body)
                samples_out += kept - a
        if bad >= 0:
            raise ValueError(f"series_index[{bad}] = {series_index[bad]} is out of range for {n_series} series")
        out = new_message(total, &p)
        with nogil:
            for s in range(n_series):
                a = start[s]
                if kept_end[s] == a:
                    continue
                p[0] = 0x0a
                p = put_varint(p + 1, <uint64_t>tslen[s])
                p = put_bytes(p, lp + lo[s], lo[s + 1] - lo[s])
                for k in range(a, kept_end[s]):
                    j = order[k]
                    v = vp[j]
                    ms = floor_ms(tp[j])
                    slen = sample_len(v, ms)
                    p[0] = 0x12
                    p = put_varint(p + 1, <uint64_t>slen)
                    if bits_of(v) != 0:
                        p[0] = 0x09
                        p = put_fixed64(p + 1, bits_of(v))
                    if ms != 0:
                        p[0] = 0x10
                        p = put_varint(p + 1, <uint64_t>ms)
        return out, samples_out
    finally:
        groups_free(&g)
