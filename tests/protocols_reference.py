"""Pure-Python references of the compiled protocol encoders, and the remote-write messages.

``ref_write_request`` and ``ref_export_request`` take exactly what
``ingress._core._remote_write.encode_write_request`` and
``ingress._core._otlp.encode_export_request`` take and build the same message
the slow, obvious way (dicts, ``sorted``, ``struct``). The differential tests
decode both with the official protobuf messages and compare.

``prompb()`` builds Prometheus's ``WriteRequest`` message classes (prompb
remote.proto / types.proto, the fields remote write 1.0 uses) with protobuf's
descriptor API, so no generated file or protoc is needed. The benchmarks use
them as the protobuf-in-Python baseline.
"""
from __future__ import annotations

import struct
from collections import defaultdict
from functools import lru_cache


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + varint(len(data)) + data


def _bits(v: float) -> bytes:
    return struct.pack("<d", v)


def _by_series(idx, ts, vals):
    groups = defaultdict(list)
    for i, (s, t, v) in enumerate(zip(idx, ts, vals)):
        groups[int(s)].append((int(t), i, float(v)))
    for s in groups:
        groups[s].sort(key=lambda x: (x[0], x[1]))
    return groups


def ref_write_request(labels: bytes, offsets, idx, ts, vals) -> tuple[bytes, int]:
    """WriteRequest bytes and sample count, as the compiled encoder documents them."""
    groups = _by_series(list(idx), list(ts), list(vals))
    out = b""
    count = 0
    for s in sorted(groups):
        kept: list[list] = []
        for t, _, v in groups[s]:
            ms = t // 1_000_000
            if kept and kept[-1][0] == ms:
                kept[-1][1] = v  # the last sample of a millisecond wins
            else:
                kept.append([ms, v])
        body = bytes(labels[offsets[s]:offsets[s + 1]])
        for ms, v in kept:
            smp = b""
            if _bits(v) != b"\0" * 8:
                smp += b"\x09" + _bits(v)
            if ms:
                smp += b"\x10" + varint(ms)
            body += field(0x12, smp)
        out += field(0x0A, body)
        count += len(kept)
    return out, count


def ref_export_request(resource: bytes, scope: bytes, heads: bytes, head_off, kinds, attrs: bytes, attr_off,
                       series_metric, idx, ts, vals) -> bytes:
    """ExportMetricsServiceRequest bytes, as the compiled encoder documents them."""
    groups = _by_series(list(idx), list(ts), list(vals))
    metrics = b""
    for m in range(len(head_off) - 1):
        points = b""
        for s in range(len(attr_off) - 1):
            if int(series_metric[s]) != m:
                continue
            a = bytes(attrs[attr_off[s]:attr_off[s + 1]])
            for t, _, v in groups.get(s, []):
                points += field(0x0A, b"\x19" + struct.pack("<Q", t & ((1 << 64) - 1)) + b"\x21" + _bits(v) + a)
        if not points:
            continue
        if kinds[m] == 1:
            data = field(0x3A, points + b"\x10\x02\x18\x01")
        else:
            data = field(0x2A, points)
        metrics += field(0x12, bytes(heads[head_off[m]:head_off[m + 1]]) + data)
    return field(0x0A, bytes(resource) + field(0x12, bytes(scope) + metrics))


@lru_cache(maxsize=1)
def prompb():
    """(WriteRequest, TimeSeries, Label, Sample) message classes of remote write 1.0."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="ingress_test_prompb.proto", package="prometheus",
                                            syntax="proto3")

    def msg(name, *fields):
        m = fd.message_type.add(name=name)
        for num, fname, ftype, label, tname in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                f.type_name = tname

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("Sample", (1, "value", F.TYPE_DOUBLE, opt, None), (2, "timestamp", F.TYPE_INT64, opt, None))
    msg("Label", (1, "name", F.TYPE_STRING, opt, None), (2, "value", F.TYPE_STRING, opt, None))
    msg("TimeSeries", (1, "labels", F.TYPE_MESSAGE, rep, ".prometheus.Label"),
        (2, "samples", F.TYPE_MESSAGE, rep, ".prometheus.Sample"))
    msg("WriteRequest", (1, "timeseries", F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = message_factory.GetMessageClass
    return tuple(get(pool.FindMessageTypeByName(f"prometheus.{n}"))
                 for n in ("WriteRequest", "TimeSeries", "Label", "Sample"))
