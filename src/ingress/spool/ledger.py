"""Acknowledgement ledgers: which records of a segment an output has delivered.

One append-only file per (segment, output), next to the segment::

    <data_dir>/spool/<tenant>/<seq:020d>.<output>.ack

``<output>`` is the output name percent-encoded (``urllib.parse.quote`` with no
safe characters beyond ``A-Za-z0-9_.-~``), so any name is a single path
component. An ack is one 12-byte append, whatever order acks arrive in; replay
reads the file once and sets one bit per entry.

Ledger header (16 bytes)::

    off len field
      0   4  magic   b"ISAK"
      4   2  version u16 = 1
      6   2  reserved 0
      8   8  uid     the segment header's uid

Entry (12 bytes, from offset 16)::

      0   8  offset  u64, byte offset of the acknowledged record in the segment
      8   4  crc     CRC-32C of uid || offset (8 bytes, little-endian)

Recovery rule: a ledger whose header is short, damaged or carries another uid
(a stale file of an older segment with the same seq) is ignored and removed. A
partial entry at the end (torn write) is truncated away. An entry whose CRC
fails or whose offset is not a record of the segment is ignored. An ack that is
lost this way only means the batch is delivered again: delivery is at least
once and receivers drop duplicate batch ids.

Ledgers are written with plain ``write`` (they survive a crash of the process);
they are fsynced by the group-commit flusher, when the spool closes, and never
on the ack path, because a lost ack costs a duplicate, not data.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from urllib.parse import quote, unquote

from ingress.spool.segment import crc32c

ACK_MAGIC = b"ISAK"
ACK_VERSION = 1
_HDR = struct.Struct("<4sHH8s")
_ENT = struct.Struct("<QI")
_OFF = struct.Struct("<Q")
ACK_HEADER_SIZE = _HDR.size
ACK_ENTRY_SIZE = _ENT.size
assert ACK_HEADER_SIZE == 16 and ACK_ENTRY_SIZE == 12


def ledger_name(seq: int, output: str) -> str:
    return f"{seq:020d}.{quote(output, safe='')}.ack"


def parse_ledger_name(name: str) -> tuple[int, str] | None:
    if not name.endswith(".ack") or len(name) < 26 or name[20] != ".":
        return None
    stem = name[:20]
    if not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem), unquote(name[21:-4])


def pack_entry(uid: bytes, offset: int) -> bytes:
    o = _OFF.pack(offset)
    return o + struct.pack("<I", crc32c(uid + o))


def read_ledger(path: Path | str, uid: bytes) -> tuple[list[int], int] | None:
    """Offsets acknowledged in one ledger file, and the length of its whole-entry prefix.

    Returns None when the file is missing or does not belong to ``uid``.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) < ACK_HEADER_SIZE:
        return None
    magic, version, _r, fuid = _HDR.unpack_from(data, 0)
    if magic != ACK_MAGIC or version != ACK_VERSION or fuid != uid:
        return None
    whole = ACK_HEADER_SIZE + (len(data) - ACK_HEADER_SIZE) // ACK_ENTRY_SIZE * ACK_ENTRY_SIZE
    out: list[int] = []
    for off, crc in _ENT.iter_unpack(memoryview(data)[ACK_HEADER_SIZE:whole]):
        if crc32c(uid + _OFF.pack(off)) == crc:
            out.append(off)
    return out, whole


class AckLedger:
    """Appends acks of one output of one tenant; keeps the last ledger file open.

    Acks mostly arrive in segment order, so one open descriptor per output makes
    an ack a single ``write``. Not thread-safe: the spool calls it under the
    tenant's metadata lock.
    """

    def __init__(self, tenant_dir: Path, output: str) -> None:
        self.dir = tenant_dir
        self.output = output
        self._fd = -1
        self._seq: int | None = None
        self._dirty = False

    def path(self, seq: int) -> Path:
        return self.dir / ledger_name(seq, self.output)

    def append(self, seq: int, uid: bytes, offset: int) -> None:
        """Record that the record at ``offset`` of segment ``seq`` was delivered."""
        if self._seq != seq:
            self.close()
            fd = os.open(self.path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                if os.fstat(fd).st_size == 0:
                    os.write(fd, _HDR.pack(ACK_MAGIC, ACK_VERSION, 0, uid))
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._seq = fd, seq
        entry = pack_entry(uid, offset)
        n = os.write(self._fd, entry)
        if n != len(entry):
            # A short write (disk full): cut the partial entry so the file stays aligned.
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - n)
            raise OSError(28, "short write of ack entry")
        self._dirty = True

    def sync(self) -> None:
        if self._fd >= 0 and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def forget(self, seq: int) -> None:
        """Close the descriptor if it belongs to ``seq`` (the segment is being deleted)."""
        if self._seq == seq:
            self.close(sync=False)

    def close(self, sync: bool = True) -> None:
        if self._fd >= 0:
            try:
                if sync and self._dirty:
                    os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                self._fd, self._seq, self._dirty = -1, None, False
