"""The few protobuf wire-format pieces the protocol outputs write and read in Python.

The per-sample encoding is compiled (``ingress._core._otlp``, ``_remote_write``);
what is left in Python is small and per series or per response: length-delimited
fields of strings and sub-messages, and reading the top-level fields of a
response (OTLP's ``partial_success``). Wire format: a field is a varint key
``(number << 3) | wire type``, then a varint (type 0), 8 bytes (1), a varint
length and that many bytes (2), or 4 bytes (5).
"""
from __future__ import annotations

from typing import Iterator

__all__ = ["varint", "field", "fields"]


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, data: bytes) -> bytes:
    """A length-delimited field: ``tag`` is the whole key byte (number << 3 | 2)."""
    return bytes((tag,)) + varint(len(data)) + data


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    n = len(buf)
    while True:
        if i >= n or shift > 63:
            raise ValueError("truncated or overlong varint")
        c = buf[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def fields(buf: bytes) -> Iterator[tuple[int, int | bytes | None]]:
    """``(field number, value)`` of each top-level field: an int for varints, the
    bytes of length-delimited fields, None for fixed-size ones.

    Raises
    ------
    ValueError
        ``buf`` is not a protobuf message (truncated, unknown wire type).
    """
    i, n = 0, len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
            yield num, v
        elif wt == 2:
            ln, i = _read_varint(buf, i)
            if i + ln > n:
                raise ValueError("length-delimited field past the end")
            yield num, buf[i:i + ln]
            i += ln
        elif wt in (1, 5):
            i += 8 if wt == 1 else 4
            if i > n:
                raise ValueError("fixed-size field past the end")
            yield num, None
        else:
            raise ValueError(f"wire type {wt}")
