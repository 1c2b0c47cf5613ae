# cython: language_level=3
"""OTLP metrics: an ``ExportMetricsServiceRequest`` from the columnar batch.

The protobuf written (opentelemetry-proto, field numbers)::

    ExportMetricsServiceRequest { repeated ResourceMetrics resource_metrics = 1; }
    ResourceMetrics { Resource resource = 1; repeated ScopeMetrics scope_metrics = 2; }
    ScopeMetrics    { InstrumentationScope scope = 1; repeated Metric metrics = 2; }
    Metric          { string name = 1; string description = 2; string unit = 3;
                      Gauge gauge = 5 | Sum sum = 7; }
    Gauge           { repeated NumberDataPoint data_points = 1; }
    Sum             { repeated NumberDataPoint data_points = 1;
                      AggregationTemporality aggregation_temporality = 2;  # CUMULATIVE = 2
                      bool is_monotonic = 3; }                             # true
    NumberDataPoint { fixed64 time_unix_nano = 3; double as_double = 4;
                      repeated KeyValue attributes = 7; }

One ResourceMetrics with one ScopeMetrics per request. The caller passes what
does not change between batches already encoded: the ``resource`` and ``scope``
fields (tag and length included), each metric's head (``name``, ``description``,
``unit`` fields) and kind, and each series' attributes (every ``KeyValue``
entry, field 7 of the data point) plus the metric it belongs to. Those are what
the output caches per tenant. This module writes one ``Metric`` per metric that
has samples, in metric order; its data points series by series (series order),
each series in time order (ties in sample order).

The sample loops run without the GIL; the output is one bytes object allocated
at its exact size after a sizing pass.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from ingress._core._pbutil cimport (
    Groups, bits_of, counting_sort, field_len, group_by_series, groups_alloc, groups_free, new_message,
    put_bytes, put_fixed64, put_varint, require_little_endian,
)

require_little_endian(__name__)

cdef enum:
    K_GAUGE = 0
    K_SUM = 1

GAUGE = K_GAUGE
SUM = K_SUM  # monotonic cumulative sum (a counter)


def _check_ranges(const int64_t[::1] off, Py_ssize_t size, str what):
    cdef Py_ssize_t i
    for i in range(off.shape[0] - 1):
        if off[i] < 0 or off[i] > off[i + 1] or off[i + 1] > size:
            raise ValueError(f"{what}[{i}:{i + 2}] = {off[i]}, {off[i + 1]} is not a range "
                             f"within the {size} bytes given")


def encode_export_request(const uint8_t[::1] resource, const uint8_t[::1] scope,
                          const uint8_t[::1] metric_heads, const int64_t[::1] head_offsets,
                          const uint8_t[::1] metric_kinds,
                          const uint8_t[::1] attributes, const int64_t[::1] attr_offsets,
                          const uint32_t[::1] series_metric,
                          const uint32_t[::1] series_index, const int64_t[::1] timestamps,
                          const double[::1] values):
    """The ``ExportMetricsServiceRequest`` protobuf of one batch (not yet gzipped).

    Parameters
    ----------
    resource, scope : bytes
        ``ResourceMetrics.resource`` and ``ScopeMetrics.scope`` as whole fields.
    metric_heads, head_offsets
        Per metric ``m``, ``metric_heads[head_offsets[m]:head_offsets[m + 1]]``:
        its name/description/unit fields.
    metric_kinds : uint8 per metric
        ``GAUGE`` (0) or ``SUM`` (1, monotonic cumulative).
    attributes, attr_offsets
        Per series ``s``, its ``KeyValue`` entries (field 7, tag included).
    series_metric : uint32 per series
        The metric of each series.
    series_index, timestamps, values
        The batch's columns (uint32, int64 ns, float64).

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        Inconsistent lengths or offsets, a series index or metric out of range.
    """
    cdef Py_ssize_t n = series_index.shape[0]
    cdef Py_ssize_t n_series = attr_offsets.shape[0] - 1
    cdef Py_ssize_t n_metrics = head_offsets.shape[0] - 1
    cdef Py_ssize_t s, m, k, a, b, bad, dp, body, total, sm, rm
    if timestamps.shape[0] != n or values.shape[0] != n:
        raise ValueError(f"series_index, timestamps and values differ in length: "
                         f"{n}, {timestamps.shape[0]}, {values.shape[0]}")
    if n_series < 0 or n_metrics < 0:
        raise ValueError("attr_offsets and head_offsets need count + 1 entries")
    if series_metric.shape[0] != n_series:
        raise ValueError(f"series_metric has {series_metric.shape[0]} entries for {n_series} series")
    if metric_kinds.shape[0] != n_metrics:
        raise ValueError(f"metric_kinds has {metric_kinds.shape[0]} entries for {n_metrics} metrics")
    _check_ranges(head_offsets, metric_heads.shape[0], "head_offsets")
    _check_ranges(attr_offsets, attributes.shape[0], "attr_offsets")
    for s in range(n_series):
        if series_metric[s] >= <uint64_t>n_metrics:
            raise ValueError(f"series_metric[{s}] = {series_metric[s]} is out of range for {n_metrics} metrics")
    for m in range(n_metrics):
        if metric_kinds[m] > K_SUM:
            raise ValueError(f"metric_kinds[{m}] = {metric_kinds[m]} is neither GAUGE (0) nor SUM (1)")

    # one block: samples grouped by series; in extra, series grouped by metric and metric bodies
    cdef Groups g
    groups_alloc(&g, n, n_series, 3 * (n_metrics + 1) + (n_series + 1) // 2)
    cdef int64_t* start = g.start
    cdef uint32_t* order = g.order
    cdef int64_t* mstart = g.extra
    cdef int64_t* mcursor = mstart + (n_metrics + 1)
    cdef int64_t* mbody = mcursor + (n_metrics + 1)
    cdef uint32_t* morder = <uint32_t*>(mbody + (n_metrics + 1))
    cdef const uint32_t* ip = &series_index[0] if n else NULL
    cdef const int64_t* tp = &timestamps[0] if n else NULL
    cdef const double* vp = &values[0] if n else NULL
    cdef const uint8_t* hp = &metric_heads[0] if metric_heads.shape[0] else NULL
    cdef const uint8_t* ap = &attributes[0] if attributes.shape[0] else NULL
    cdef const int64_t* ho = &head_offsets[0]
    cdef const int64_t* ao = &attr_offsets[0]
    cdef const uint32_t* smp = &series_metric[0] if n_series else NULL
    cdef const uint8_t* kp = &metric_kinds[0] if n_metrics else NULL
    cdef Py_ssize_t nres = resource.shape[0], nscope = scope.shape[0]
    cdef uint32_t j
    cdef uint8_t* p
    cdef const uint8_t* rp = &resource[0] if nres else NULL
    cdef const uint8_t* scp = &scope[0] if nscope else NULL
    try:
        sm = rm = total = 0
        with nogil:
            bad = group_by_series(&g, ip, tp, n, n_series)
            if bad < 0:
                # series grouped by metric, series order kept (series_metric is checked above)
                counting_sort(smp, n_series, n_metrics, mstart, mcursor, morder)
                sm = nscope
                for m in range(n_metrics):
                    body = 0
                    for k in range(mstart[m], mstart[m + 1]):
                        s = morder[k]
                        dp = (ao[s + 1] - ao[s]) + 18  # attributes, time (1 + 8), value (1 + 8)
                        body += (start[s + 1] - start[s]) * field_len(dp)
                    if body == 0:
                        mbody[m] = -1  # no samples: the metric is left out
                        continue
                    if kp[m] == K_SUM:
                        body += 4  # aggregation_temporality = CUMULATIVE, is_monotonic = true
                    mbody[m] = body
                    sm += field_len((ho[m + 1] - ho[m]) + field_len(body))
                rm = nres + field_len(sm)
                total = field_len(rm)
        if bad >= 0:
            raise ValueError(f"series_index[{bad}] = {series_index[bad]} is out of range for {n_series} series")
        out = new_message(total, &p)
        with nogil:
            p[0] = 0x0a  # ExportMetricsServiceRequest.resource_metrics
            p = put_varint(p + 1, <uint64_t>rm)
            p = put_bytes(p, rp, nres)
            p[0] = 0x12  # ResourceMetrics.scope_metrics
            p = put_varint(p + 1, <uint64_t>sm)
            p = put_bytes(p, scp, nscope)
            for m in range(n_metrics):
                if mbody[m] < 0:
                    continue
                p[0] = 0x12  # ScopeMetrics.metrics
                p = put_varint(p + 1, <uint64_t>((ho[m + 1] - ho[m]) + field_len(mbody[m])))
                p = put_bytes(p, hp + ho[m], ho[m + 1] - ho[m])
                p[0] = 0x3a if kp[m] == K_SUM else 0x2a  # Metric.sum (7) / Metric.gauge (5)
                p = put_varint(p + 1, <uint64_t>mbody[m])
                for k in range(mstart[m], mstart[m + 1]):
                    s = morder[k]
                    dp = (ao[s + 1] - ao[s]) + 18
                    for a in range(start[s], start[s + 1]):
                        j = order[a]
                        p[0] = 0x0a  # data_points
                        p = put_varint(p + 1, <uint64_t>dp)
                        p[0] = 0x19  # time_unix_nano, fixed64
                        p = put_fixed64(p + 1, <uint64_t>tp[j])
                        p[0] = 0x21  # as_double
                        p = put_fixed64(p + 1, bits_of(vp[j]))
                        p = put_bytes(p, ap + ao[s], ao[s + 1] - ao[s])
                if kp[m] == K_SUM:
                    p[0] = 0x10  # aggregation_temporality
                    p[1] = 2     # AGGREGATION_TEMPORALITY_CUMULATIVE
                    p[2] = 0x18  # is_monotonic
                    p[3] = 1
                    p += 4
        return out
    finally:
        groups_free(&g)
