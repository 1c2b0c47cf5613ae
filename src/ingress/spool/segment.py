"""Segment files: the on-disk format of the spool and how a damaged one is read.

A tenant's spool is a directory of append-only segment files
``<data_dir>/spool/<tenant>/<seq:020d>.seg``. ``seq`` grows by one per new
segment; the file with the highest ``seq`` written by the running process is
the *active* one, every other is sealed and never written again (a process
that opens the spool seals everything it finds and starts a new segment at its
first append, so only files left by a crash can have a torn tail). All
integers are little-endian; CRCs are CRC-32C (Castagnoli, as in iSCSI, ext4
and Kafka; computed by google-crc32c, in hardware where the CPU has it).

Segment header (56 bytes, at offset 0)::

    off len field
      0   8  magic        b"INGSPSEG"
      8   2  version      u16 = 1
     10   2  flags        u16, 0 (reserved)
     12   4  reserved     0
     16   8  seq          u64, equal to the number in the file name
     24   8  uid          8 random bytes; ack ledger files carry it too, so a
                          ledger can never be applied to another segment that
                          later reuses the same seq
     32   8  created_ns   i64, wall clock
     40   8  key_fp       fingerprint of the tenant key the records are sealed
                          with (ingress.security.crypto.fingerprint), zeros
                          when the segment is not encrypted
     48   4  header_crc   CRC-32C of bytes 0..47
     52   4  reserved     0

Records follow back to back from offset 56. Record (56-byte header + payload)::

    off len field
      0   4  magic        b"ISPR"
      4   2  flags        u16: bit 0 = payload is sealed (AES-256-GCM, see
                          ingress.security.crypto), other bits 0
      6   2  reserved     0
      8   4  length       u32, bytes of stored payload (<= MAX_PAYLOAD)
     12   4  sample_count u32
     16   8  first_ts_ns  i64, timestamp of the batch's first sample
     24   8  append_ns    i64, wall clock when the spool accepted it
     32  16  batch_id     the batch's 16-byte id
     48   4  payload_crc  CRC-32C of the stored payload bytes
     52   4  header_crc   CRC-32C of bytes 0..51 of this header
     56   n  payload      the encoded batch, or nonce||ciphertext||tag

Recovery rule (``scan``): walk records from offset 56. A record is valid when
its magic matches, its header CRC matches, its length is within bounds and
inside the file, and its payload CRC matches. At the first invalid position,
search forward for the next offset where a *valid* record starts (magic, then
both CRCs); if one exists, the bytes in between are one corrupt region: counted
and skipped, and the walk continues there. If none exists, everything from the
end of the last valid record on is a torn or corrupt tail: counted once and
truncated by the writer. A damaged segment header is counted too, and its
records are still read. Nothing here ever raises for bad bytes: the spool never
gets stuck on a record.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

import google_crc32c

from ingress.logs import get_logger

SEG_MAGIC = b"INGSPSEG"
SEG_VERSION = 1
REC_MAGIC = b"ISPR"
FLAG_SEALED = 0x0001
MAX_PAYLOAD = 64 << 20

_SEG = struct.Struct("<8sHHIQ8sq8sI4x")
_REC = struct.Struct("<4sHHIIqq16sII")
SEG_HEADER_SIZE = _SEG.size
REC_HEADER_SIZE = _REC.size
assert SEG_HEADER_SIZE == 56 and REC_HEADER_SIZE == 56
_NO_KEY = bytes(8)
_crc_value = google_crc32c.value
if google_crc32c.implementation != "c":  # pragma: no cover - depends on the wheel
    get_logger("ingress.spool").warning(
        "google-crc32c runs without its C extension here; spool checksums will be slow")


def crc32c(data) -> int:
    """CRC-32C of any bytes-like object."""
    return _crc_value(data if type(data) is bytes else bytes(data))


_crc = crc32c


def segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


MAX_SEQ = (1 << 63) - 1  # the spool never writes more; larger names are not its own


def parse_segment_name(name: str) -> int | None:
    """The sequence number in a segment file name, or None when it is not one the spool writes."""
    stem, dot, ext = name.partition(".")
    if ext != "seg" or len(stem) != 20 or not (stem.isascii() and stem.isdigit()):
        return None
    seq = int(stem)
    return seq if seq <= MAX_SEQ else None


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    seq: int
    uid: bytes
    created_ns: int
    key_fp: bytes  # 8 zero bytes: not encrypted

    @property
    def encrypted(self) -> bool:
        return self.key_fp != _NO_KEY


def pack_segment_header(seq: int, uid: bytes, created_ns: int, key_fp: bytes | None) -> bytes:
    fp = key_fp or _NO_KEY
    body = _SEG.pack(SEG_MAGIC, SEG_VERSION, 0, 0, seq, uid, created_ns, fp, 0)[:48]
    return _SEG.pack(SEG_MAGIC, SEG_VERSION, 0, 0, seq, uid, created_ns, fp, _crc(body))


def unpack_segment_header(buf: bytes) -> SegmentHeader | None:
    """The header at the start of ``buf``, or None when it is short or damaged."""
    if len(buf) < SEG_HEADER_SIZE:
        return None
    magic, version, _flags, _r, seq, uid, created, fp, crc = _SEG.unpack_from(buf, 0)
    if magic != SEG_MAGIC or version != SEG_VERSION or _crc(buf[:48]) != crc:
        return None
    return SegmentHeader(seq, uid, created, fp)


def pack_record_header(flags: int, payload: bytes, sample_count: int, first_ts_ns: int,
                       append_ns: int, batch_id: bytes) -> bytes:
    pcrc = _crc(payload)
    body = _REC.pack(REC_MAGIC, flags, 0, len(payload), sample_count, first_ts_ns,
                     append_ns, batch_id, pcrc, 0)[:52]
    return body + struct.pack("<I", _crc(body))


@dataclass(frozen=True, slots=True)
class RecordHeader:
    flags: int
    length: int
    sample_count: int
    first_ts_ns: int
    append_ns: int
    batch_id: bytes
    payload_crc: int


def unpack_record_header(buf, pos: int = 0) -> RecordHeader | None:
    """A header whose magic and CRC check out, or None. Does not check the payload."""
    if len(buf) - pos < REC_HEADER_SIZE or buf[pos:pos + 4] != REC_MAGIC:
        return None
    (_m, flags, _r, length, samples, first_ts, append_ns, bid, pcrc, hcrc) = _REC.unpack_from(buf, pos)
    if _crc(buf[pos:pos + 52]) != hcrc or length > MAX_PAYLOAD:
        return None
    return RecordHeader(flags, length, samples, first_ts, append_ns, bid, pcrc)


def check_record(buf, pos: int, end: int) -> RecordHeader | None:
    """The record starting at ``pos`` if it is whole and valid within ``buf[:end]``."""
    h = unpack_record_header(buf, pos)
    if h is None:
        return None
    start = pos + REC_HEADER_SIZE
    stop = start + h.length
    if stop > end or _crc(buf[start:stop]) != h.payload_crc:
        return None
    return h


@dataclass
class ScanResult:
    """What ``scan`` found in one segment file."""

    header: SegmentHeader | None
    offsets: array = field(default_factory=lambda: array("Q"))
    lengths: array = field(default_factory=lambda: array("I"))
    samples: array = field(default_factory=lambda: array("I"))
    first_ts: array = field(default_factory=lambda: array("q"))
    flags: list[int] = field(default_factory=list)
    corrupt_regions: int = 0  # damaged header + skipped middle regions
    valid_end: int = SEG_HEADER_SIZE  # end of the last valid record: the writer truncates here
    tail_bytes: int = 0  # bytes after valid_end (a torn or corrupt tail)


def scan(buf: bytes) -> ScanResult:
    """Walk a whole segment file image and apply the recovery rule (see module doc)."""
    n = len(buf)
    res = ScanResult(unpack_segment_header(buf))
    if n < SEG_HEADER_SIZE:
        # Torn while being created: it never held a record, nothing is lost.
        res.valid_end = n
        return res
    if res.header is None:
        res.corrupt_regions += 1
    pos = SEG_HEADER_SIZE
    while pos < n:
        h = check_record(buf, pos, n)
        if h is None:
            nxt = _resync(buf, pos + 1, n)
            if nxt < 0:
                break
            res.corrupt_regions += 1
            pos = nxt
            continue
        res.offsets.append(pos)
        res.lengths.append(h.length)
        res.samples.append(h.sample_count)
        res.first_ts.append(h.first_ts_ns)
        res.flags.append(h.flags)
        pos += REC_HEADER_SIZE + h.length
        res.valid_end = pos
    res.tail_bytes = n - res.valid_end
    return res


def _resync(buf: bytes, start: int, n: int) -> int:
    pos = buf.find(REC_MAGIC, start)
    while pos >= 0:
        if check_record(buf, pos, n) is not None:
            return pos
        pos = buf.find(REC_MAGIC, pos + 1)
    return -1
