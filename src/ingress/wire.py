"""The batch format v1: one tenant's samples as columnar, checksummed, lz4 bytes.

``encode`` lays the columns out in Cython (``ingress._core._codec``, whose top
comment draws the format byte by byte; docs/wire-format.md walks a real example),
compresses the body with one ``lz4.block`` call and frames it with a header that
``peek`` reads without decompressing.
"""
from __future__ import annotations

import operator
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

import lz4.block
import numpy as np

from ingress._core import _codec
from ingress.errors import DecodeLimitError, DecodeMemoryError, WireError
from ingress.names import TENANT_ID_RE

__all__ = ["Batch", "DecodeLimitError", "DecodeLimits", "DecodeMemoryError", "Encoder", "Header", "WireError",
           "decode", "encode", "peek", "MAGIC", "VERSION"]

MAGIC = b"INGB"
VERSION = 1
FLAG_LZ4 = 0x01
# magic, version, flags, tenant_len, host_len, batch_id, sample_count, series_count,
# raw_len, body_len, body_crc; then tenant, host and the header CRC.
_FIXED = struct.Struct("<4sBBBB16sIIIII")
_CRC = struct.Struct("<I")
HEADER_MIN = _FIXED.size + 1 + _CRC.size
_TENANT_RE = TENANT_ID_RE  # ingress.names; applied with fullmatch only
_U32 = 0xFFFFFFFF
# Every declared size is checked against the bytes present before anything is
# allocated: raw_len <= LZ4_MAX_RATIO * body_len (lz4 cannot expand further).
LZ4_MAX_RATIO = _codec.LZ4_MAX_RATIO


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """How much one batch may make ``decode`` allocate; past a limit, ``DecodeLimitError``.

    A batch is small on the wire and large in memory (lz4 expands up to 255:1,
    and every sample costs 36 bytes of columns), so a reader of untrusted
    batches bounds what the header and the dictionary may declare. Each limit is
    checked once per count, before anything is allocated for it (never per
    sample). The defaults are far above what the agent writes (its batches hold
    at most ``agent.batch.max_samples``, default 50,000, and are split past
    ``agent.batch.max_bytes``, default 1 MiB); ``ingress sink`` sets them with
    ``--max-batch-*`` flags. docs/wire-format.md, "Decode limits", has the table.

    Attributes
    ----------
    max_samples : int
        Samples (header ``sample_count``). Default 1,000,000.
    max_series : int
        Series in the dictionary (header ``series_count``). Default 250,000.
    max_tags : int
        Tags over all series of the dictionary. Default 1,000,000.
    max_strings : int
        Distinct strings of the dictionary. Default 500,000.
    max_string_bytes : int
        Bytes of UTF-8 over all those strings. Default 16 MiB.
    max_raw_bytes : int
        Body length after decompression (header ``raw_len``). Default 64 MiB.
    max_ratio : float
        ``raw_len / body_len`` of an lz4 body. Default 255, lz4's own ceiling:
        an idle tenant batched over many passes legitimately reaches ~190:1.
    """

    max_samples: int = 1_000_000
    max_series: int = 250_000
    max_tags: int = 1_000_000
    max_strings: int = 500_000
    max_string_bytes: int = 16 << 20
    max_raw_bytes: int = 64 << 20
    max_ratio: float = LZ4_MAX_RATIO

    def __post_init__(self) -> None:
        for name in self.__slots__:
            v = getattr(self, name)
            if name == "max_ratio":
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= LZ4_MAX_RATIO
                want = f"a number from 1 to {LZ4_MAX_RATIO}"
            else:
                ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63
                want = "an integer >= 0"
            if not ok:
                raise ValueError(f"DecodeLimits.{name} must be {want}, got {v!r}")


DEFAULT_LIMITS = DecodeLimits()


class Header(NamedTuple):
    """What ``peek`` returns: the header fields an output needs for its metadata."""

    tenant: str
    host: str
    batch_id: bytes
    sample_count: int


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """A decoded batch; the columns are in the original sample order.

    Attributes
    ----------
    tenant, host : str
    batch_id : bytes
        16 bytes.
    series : list of (str, dict[str, str])
        The batch's series dictionary, in the order it was encoded.
    series_index : numpy.ndarray of uint32
        Per sample, its position in ``series``.
    timestamps : numpy.ndarray of int64
        Per sample, ns since the epoch.
    values : numpy.ndarray of float64
        Per sample, bit for bit as encoded.
    """

    tenant: str
    host: str
    batch_id: bytes
    series: list
    series_index: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.series_index)


def encode(tenant: str, host: str, series: Iterable[tuple[str, Mapping[str, str]]],
           series_index: Any, timestamps: Any, values: Any,
           batch_id: bytes | None = None, *, dictionary: tuple[bytes, int] | None = None) -> bytes:
    """Encode one tenant's batch.

    Parameters
    ----------
    tenant : str
        Tenant id, ``^[a-z0-9][a-z0-9_-]{0,62}$``.
    host : str
        Host name, at most 255 bytes of UTF-8.
    series : iterable of (name, tags)
        The dictionary: ``name`` a str, ``tags`` a mapping of str to str.
    series_index : array_like of uint32
        Per sample, the position of its series in ``series``.
    timestamps : array_like of int64
        Per sample, ns since the epoch, in any order.
    values : array_like of float64
        Per sample; every bit pattern survives (NaN payloads, -0.0, inf).
    batch_id : bytes, optional
        16 bytes; ``os.urandom(16)`` when None.
    dictionary : (bytes, int), optional
        The dictionary section already encoded, with its series count, as
        ``SeriesRegistry.encoded_dictionary`` or ``_codec.SeriesDictionary``
        give it; ``series`` is then not read (pass ``None``). The batch is the
        same bytes either way.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError, TypeError
        An argument is invalid; the message names it.
    """
    tb = _check_tenant(tenant, ValueError)
    if not isinstance(host, str):
        raise TypeError(f"host must be str, got {type(host).__name__}")
    try:
        hb = host.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"host {host!r} is not encodable as UTF-8 ({exc.reason})") from None
    if len(hb) > 255:
        raise ValueError(f"host is {len(hb)} bytes of UTF-8; at most 255 fit the header")
    if batch_id is None:
        batch_id = os.urandom(16)
    elif not isinstance(batch_id, (bytes, bytearray, memoryview)) or len(bytes(batch_id)) != 16:
        raise ValueError(f"batch_id must be 16 bytes, got {batch_id!r}")
    batch_id = bytes(batch_id)
    idx = _column("series_index", series_index, np.uint32, "iu")
    ts = _column("timestamps", timestamps, np.int64, "iu")
    vals = _column("values", values, np.float64, "fiu")
    if not len(idx) == len(ts) == len(vals):
        raise ValueError(f"series_index, timestamps and values differ in length: "
                         f"{len(idx)}, {len(ts)}, {len(vals)}")
    if len(idx) > _U32:
        raise ValueError(f"a batch holds at most {_U32} samples, got {len(idx)}")
    if dictionary is None:
        dictionary, n_series = _codec.encode_dictionary(series)
    else:
        dictionary, n_series = dictionary
        if not isinstance(dictionary, bytes) or not isinstance(n_series, int) or n_series < 0:
            raise TypeError("dictionary must be a (bytes, series count) pair")
    if n_series > _U32:
        raise ValueError(f"a batch holds at most {_U32} series, got {n_series}")
    buf, raw_len = _codec.encode_body(dictionary, idx, ts, vals, n_series)
    if raw_len > _U32:
        raise ValueError(f"batch body is {raw_len} bytes, more than 4 GiB: split the batch")
    raw = memoryview(buf)[:raw_len]
    flags = 0
    body: bytes | memoryview = raw
    if raw_len:
        packed = lz4.block.compress(raw, store_size=False)
        if len(packed) < raw_len:
            body, flags = packed, FLAG_LZ4
    head = _FIXED.pack(MAGIC, VERSION, flags, len(tb), len(hb), batch_id, len(idx), n_series,
                       raw_len, len(body), zlib.crc32(body)) + tb + hb
    return b"".join((head, _CRC.pack(zlib.crc32(head)), body))


class Encoder:
    """The agent's encoder: one tenant's drained samples -> one batch.

    The series dictionary of each batch comes from ``dictionaries`` (the
    :class:`~ingress.buffer.SeriesRegistry`): its ``encoded_dictionary`` writes
    the section in C from the ids kept since each series was interned, so no
    Python object is built per series. Tests inject another object with the
    same ``encode`` method (see :class:`ingress.stages.Encoder`).
    """

    __slots__ = ("dictionaries", "host")

    def __init__(self, dictionaries: Any, host: str) -> None:
        self.dictionaries = dictionaries
        self.host = host

    def encode(self, tenant: Any, sids: np.ndarray, ts: np.ndarray, values: np.ndarray,
               batch_id: bytes) -> bytes:
        """``tenant`` (its ``index`` and ``id``): the batch of these samples, as :func:`encode` makes it."""
        d, n, index = self.dictionaries.encoded_dictionary(tenant.index, sids)
        return encode(tenant.id, self.host, None, index, ts, values, batch_id, dictionary=(d, n))


def peek(data: bytes, limits: DecodeLimits | None = None) -> Header:
    """Read and check the header only (no decompression, body CRC not verified).

    With ``limits``, also the limits the header alone can show: samples, series,
    raw length and compression ratio (the outputs call ``peek`` on batches they
    have just built, without limits).

    Raises
    ------
    WireError
        Wrong magic or version, bad header CRC, or a length that does not match;
        ``DecodeLimitError`` for a header over ``limits``.
    """
    h = _header(data)
    if limits is not None:
        _check_header_limits(h, limits)
    return Header(h[0], h[1], h[2], h[3])


def decode(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Batch:
    """Decode a batch made by ``encode``.

    Memory: every declared size is checked, before it is allocated, against
    the bytes present and against ``limits`` (``DecodeLimits()`` by default):
    samples, series, raw length and ratio from the header before decompressing,
    strings, string bytes and tags as the dictionary declares them. A batch
    within the limits makes decode allocate about ``max_raw_bytes`` + 36 bytes
    per sample + a few hundred per series, tag and string (docs/wire-format.md,
    "Decode limits").

    Raises
    ------
    WireError
        Anything wrong with the bytes; the message says what and where. Also
        when memory runs out (the message names the allocation): no
        ``MemoryError`` leaves decode.
    DecodeLimitError
        (a ``WireError``) The batch is over a limit; the message names it.
    """
    if not isinstance(limits, DecodeLimits):
        raise TypeError(f"limits must be a wire.DecodeLimits, got {type(limits).__name__}")
    h = _header(data)
    tenant, host, batch_id, n, n_series, flags, raw_len, body_len, body_crc, off = h
    _check_header_limits(h, limits)
    body = _as_bytes(data)[off:]
    if zlib.crc32(body) != body_crc:
        raise WireError(f"body checksum mismatch: header says {body_crc:08x}, "
                        f"body has {zlib.crc32(body):08x}")
    if flags & FLAG_LZ4:
        try:
            raw = lz4.block.decompress(body, uncompressed_size=raw_len)
        except lz4.block.LZ4BlockError as exc:
            raise WireError(f"body is not a valid lz4 block of {raw_len} bytes: {exc}") from None
        except MemoryError:
            raise DecodeMemoryError(f"out of memory decompressing the body to {raw_len} bytes") from None
        if len(raw) != raw_len:
            raise WireError(f"body decompresses to {len(raw)} bytes, header says {raw_len}")
    else:
        raw = body
    try:
        series, pos = _codec.decode_dictionary(raw, n_series, limits.max_strings,
                                               limits.max_string_bytes, limits.max_tags)
    except MemoryError:
        raise DecodeMemoryError(f"out of memory building the dictionary of {n_series} series") from None
    try:
        idx, ts, vals = _codec.decode_columns(raw, pos, n, n_series)
    except MemoryError:
        raise DecodeMemoryError(f"out of memory allocating the columns of {n} samples "
                        f"({36 * n + 16 * n_series} bytes)") from None
    return Batch(tenant, host, batch_id, series, idx, ts, vals)


def _over(what: str, value: int, limit: str, maximum: float) -> DecodeLimitError:
    return DecodeLimitError(f"header: {what}, over the decode limit {limit} = {maximum}",
                            limit, value, maximum)


def _check_header_limits(h: tuple, limits: DecodeLimits) -> None:
    """The limits the header shows: O(1), before the body is touched."""
    n, n_series, flags, raw_len, body_len = h[3], h[4], h[5], h[6], h[7]
    if n > limits.max_samples:
        raise _over(f"{n} samples", n, "max_samples", limits.max_samples)
    if n_series > limits.max_series:
        raise _over(f"{n_series} series", n_series, "max_series", limits.max_series)
    if flags & FLAG_LZ4:
        if raw_len > LZ4_MAX_RATIO * body_len:
            raise WireError(f"raw_len {raw_len} is more than lz4 can expand {body_len} stored bytes to")
        if raw_len > limits.max_ratio * body_len:
            raise _over(f"raw_len {raw_len} is {raw_len / body_len:.1f} times body_len {body_len}",
                        raw_len, "max_ratio", limits.max_ratio)
    elif raw_len != body_len:
        raise WireError(f"uncompressed body is {body_len} bytes, header says raw_len {raw_len}")
    if raw_len > limits.max_raw_bytes:
        raise _over(f"raw_len {raw_len} bytes", raw_len, "max_raw_bytes", limits.max_raw_bytes)


def _as_bytes(data) -> memoryview:
    """``data`` as a flat view of bytes; WireError for a buffer that is not contiguous."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise WireError("batch buffer is not contiguous: pass bytes or a C-contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _header(data) -> tuple:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = _as_bytes(data)
    size = len(data)
    if size < HEADER_MIN:
        raise WireError(f"batch is {size} bytes, shorter than the smallest header ({HEADER_MIN})")
    (magic, version, flags, tlen, hlen, batch_id, n, n_series,
     raw_len, body_len, body_crc) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"not an ingress batch: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported batch version {version}; this reader knows {VERSION}")
    off = _FIXED.size + tlen + hlen
    if size < off + _CRC.size:
        raise WireError(f"header needs {off + _CRC.size} bytes, batch has {size}")
    (crc,) = _CRC.unpack_from(data, off)
    actual = zlib.crc32(data[:off])
    if crc != actual:
        raise WireError(f"header checksum mismatch: stored {crc:08x}, computed {actual:08x}")
    if flags & ~FLAG_LZ4:
        raise WireError(f"unknown flags 0x{flags:02x}")
    off += _CRC.size
    if size - off != body_len:
        raise WireError(f"header says the body is {body_len} bytes, {size - off} follow it")
    tenant = _check_tenant(bytes(data[_FIXED.size:_FIXED.size + tlen]), WireError)
    try:
        host = bytes(data[_FIXED.size + tlen:_FIXED.size + tlen + hlen]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"host is not valid UTF-8 ({exc.reason})") from None
    return tenant, host, bytes(batch_id), n, n_series, flags, raw_len, body_len, body_crc, off


def _check_tenant(tenant, error):
    """Return the tenant id as bytes (encode) or str (decode); raise ``error`` when invalid."""
    if isinstance(tenant, bytes):
        text = tenant.decode("ascii", "replace")
        if not _TENANT_RE.fullmatch(text):
            raise error(f"tenant id {text!r} is not valid (^[a-z0-9][a-z0-9_-]{{0,62}}$)")
        return text
    if not isinstance(tenant, str):
        raise TypeError(f"tenant must be str, got {type(tenant).__name__}")
    if not _TENANT_RE.fullmatch(tenant):
        raise error(f"tenant {tenant!r} is not a valid tenant id (^[a-z0-9][a-z0-9_-]{{0,62}}$)")
    return tenant.encode("ascii")


def _column(name: str, obj: Any, dtype, kinds: str) -> np.ndarray:
    arr = np.asarray(obj)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.empty(0, dtype)
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype}")
    if arr.dtype.kind in "iu" and np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise ValueError(f"{name} holds {bad}, outside {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype=dtype)
