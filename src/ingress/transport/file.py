"""The file output: per-tenant files on the local disk, rotated by size.

Layout (``base`` is ``<data_dir>/out`` unless ``path`` is given)::

    <base>/<tenant>/<output-name>-000001.ibatch     format "batch"
    <base>/<tenant>/<output-name>-000001.jsonl      format "json"

Format ``batch`` is a sequence of length-prefixed records, nothing else (no file
header, so files can be concatenated)::

    record => length:u32 (big-endian, bytes that follow) | batch:bytes[length]

``batch`` is one encoded batch exactly as it would be sent to Kafka or HTTP;
``ingress decode`` and :func:`read_batches` read it back. Format ``json`` writes
one JSON object per sample per line (see :mod:`ingress.transport.jsonfmt`).

A file is closed and the next sequence number opened when the next record
would take it past ``max_bytes`` (a record larger than ``max_bytes`` gets a
file of its own). ``done(batch, None)`` is called only after the record is
written, flushed and, unless ``fsync=False``, fsynced: the spool forgets the
batch on that acknowledgement, so the file must already hold it.

Recovery rule: on (re)opening the newest file, a torn tail left by a crash in
the middle of a write (an incomplete record, or a JSON line without its
newline) is cut off, so every later record starts at a record boundary. The
torn batch is still in the spool (it was never acknowledged) and is written
again whole.
"""
from __future__ import annotations

import os
import re
import struct
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

from ingress.errors import ConfigError, PermanentError, RetryableError, WireError
from ingress.transport.base import Done, OutgoingBatch, Output
from ingress.transport.jsonfmt import FORMATS, sample_lines

_LEN = struct.Struct(">I")
_EXT = {"batch": ".ibatch", "json": ".jsonl"}
MAX_RECORD = 0xFFFFFFFF


def read_batches(path: str | os.PathLike, strict: bool = False) -> Iterator[bytes]:
    """Yield every batch of a ``batch``-format file, oldest first.

    Parameters
    ----------
    path
        A ``.ibatch`` file.
    strict
        When true an incomplete trailing record raises :class:`WireError`;
        by default it is ignored (the writer may be in the middle of it).
    """
    with open(path, "rb") as f:
        off = 0
        while True:
            head = f.read(4)
            if not head:
                return
            if len(head) < 4:
                if strict:
                    raise WireError(f"{path}: offset {off}: truncated length prefix")
                return
            (n,) = _LEN.unpack(head)
            body = f.read(n)
            if len(body) < n:
                if strict:
                    raise WireError(f"{path}: offset {off}: record of {n} bytes truncated at {len(body)}")
                return
            yield body
            off += 4 + n


def _valid_length(path: Path, fmt: str) -> int:
    """Length of the longest prefix of ``path`` made of whole records."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if fmt == "json":
            # Scan back from the end for the last newline.
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                k = chunk.rfind(b"\n")
                if k >= 0:
                    return pos - step + k + 1
                pos -= step
            return 0
        off = 0
        while off + 4 <= size:
            f.seek(off)
            (n,) = _LEN.unpack(f.read(4))
            if off + 4 + n > size:
                break
            off += 4 + n
        return off


class _TenantFile:
    """The open file of one tenant; all access under ``lock``."""

    __slots__ = ("dir", "seq", "fh", "size", "lock")

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.seq = 0
        self.fh: BinaryIO | None = None
        self.size = 0
        self.lock = threading.Lock()


class FileOutput(Output):
    """Write batches to per-tenant files under ``<data_dir>/out/<tenant>/``.

    Parameters
    ----------
    name
        The output's name; also the file name prefix, so two file outputs can
        share a directory.
    data_dir
        The agent's data directory; files go to ``<data_dir>/out``.
    max_bytes
        Rotate when the next record would take the file past this size.
    format
        ``"batch"`` (length-prefixed encoded batches) or ``"json"`` (one JSON
        object per sample per line).
    tenants
        Tenants this output serves; ``None`` for every tenant.
    path
        Base directory to use instead of ``<data_dir>/out``.
    fsync
        fsync each record before acknowledging it (default). Without it a
        power loss can lose batches the spool has already forgotten.
    max_files
        Keep at most this many files per tenant, deleting the oldest on
        rotation; ``None`` (default) keeps every file.
    """

    type = "file"

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike | None = None,
        max_bytes: int = 64 << 20,
        format: str = "batch",
        tenants: frozenset[str] | None = None,
        *,
        path: str | os.PathLike | None = None,
        fsync: bool = True,
        max_files: int | None = None,
    ) -> None:
        super().__init__(name, tenants)
        if format not in FORMATS:
            raise ConfigError(f"outputs.{name}.format: {format!r} is not one of {', '.join(FORMATS)}")
        if max_bytes <= 0:
            raise ConfigError(f"outputs.{name}.max_bytes: {max_bytes!r} must be positive")
        if max_files is not None and max_files < 1:
            raise ConfigError(f"outputs.{name}.max_files: {max_files!r} must be at least 1")
        if path is None:
            if data_dir is None:
                raise ConfigError(f"outputs.{name}: a file output needs data_dir or path")
            path = Path(data_dir) / "out"
        self.base = Path(path)
        self.max_bytes = int(max_bytes)
        self.format = format
        self.fsync = fsync
        self.max_files = max_files
        self._ext = _EXT[format]
        self._pat = re.compile(re.escape(name) + r"-(\d{6,})" + re.escape(self._ext) + "$")
        self._files: dict[str, _TenantFile] = {}
        self._files_lock = threading.Lock()
        self._closed = False

    # -- files -----------------------------------------------------------
    def file_path(self, tenant: str, seq: int) -> Path:
        """Path of file number ``seq`` of ``tenant``."""
        return self.base / tenant / f"{self.name}-{seq:06d}{self._ext}"

    def files(self, tenant: str) -> list[Path]:
        """This output's files for ``tenant``, oldest first."""
        d = self.base / tenant
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            m = self._pat.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def start(self) -> None:
        try:
            self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise RetryableError(f"file output {self.name}: cannot create {self.base}: {e.strerror}") from e
        if not os.access(self.base, os.W_OK | os.X_OK):
            raise RetryableError(f"file output {self.name}: {self.base} is not writable")

    def _tenant(self, tenant: str) -> _TenantFile:
        with self._files_lock:
            tf = self._files.get(tenant)
            if tf is None:
                tf = self._files[tenant] = _TenantFile(self.base / tenant)
            return tf

    def _open_latest(self, tenant: str, tf: _TenantFile) -> None:
        tf.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        existing = self.files(tenant)
        if existing:
            last = existing[-1]
            tf.seq = int(self._pat.match(last.name).group(1))
            good = _valid_length(last, self.format)
            fh = open(last, "r+b")
            if good != last.stat().st_size:
                fh.truncate(good)
            fh.seek(good)
            tf.fh, tf.size = fh, good
        else:
            self._open_seq(tenant, tf, 1)

    def _open_seq(self, tenant: str, tf: _TenantFile, seq: int) -> None:
        p = self.file_path(tenant, seq)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
        fh = os.fdopen(fd, "r+b")
        fh.seek(0, os.SEEK_END)
        tf.fh, tf.seq, tf.size = fh, seq, fh.tell()
        if self.max_files is not None:
            old = self.files(tenant)
            for q in old[: max(0, len(old) - self.max_files)]:
                try:
                    q.unlink()
                except FileNotFoundError:
                    pass

    def _rotate(self, tenant: str, tf: _TenantFile) -> None:
        assert tf.fh is not None
        tf.fh.close()
        self._open_seq(tenant, tf, tf.seq + 1)

    # -- the output contract -------------------------------------------------
    def _record(self, batch: OutgoingBatch) -> bytes:
        if self.format == "json":
            lines = sample_lines(batch.payload)
            return b"".join(line + b"\n" for line in lines)
        n = len(batch.payload)
        if n > MAX_RECORD:
            raise PermanentError(f"batch {batch.batch_id.hex()} of {n} bytes does not fit a u32 length prefix")
        return _LEN.pack(n) + batch.payload

    def write(self, batch: OutgoingBatch) -> None:
        """Write one batch synchronously; raise a TransportError on failure."""
        if self._closed:
            raise RetryableError(f"file output {self.name} is closed")
        try:
            rec = self._record(batch)
        except WireError as e:
            raise PermanentError(f"batch {batch.batch_id.hex()} cannot be decoded for json: {e}") from e
        tf = self._tenant(batch.tenant)
        with tf.lock:
            start = None
            try:
                if tf.fh is None:
                    self._open_latest(batch.tenant, tf)
                if tf.size > 0 and tf.size + len(rec) > self.max_bytes:
                    self._rotate(batch.tenant, tf)
                fh = tf.fh
                start = tf.size
                fh.write(rec)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                tf.size = start + len(rec)
            except OSError as e:
                where = self.file_path(batch.tenant, tf.seq) if tf.seq else tf.dir
                # Cut a half-written record off so the next one starts on a boundary.
                if tf.fh is not None and start is not None:
                    try:
                        tf.fh.seek(start)
                        tf.fh.truncate(start)
                    except OSError:
                        tf.fh.close()
                        tf.fh = None  # reopen (and repair) on the next write
                raise RetryableError(f"file output {self.name}: {where}: {e.strerror or e}") from e

    def submit(self, batch: OutgoingBatch, done: Done) -> None:
        try:
            self.write(batch)
        except Exception as e:  # noqa: BLE001 - every failure is reported through done
            done(batch, e)
            return
        done(batch, None)

    def close(self) -> None:
        self._closed = True
        with self._files_lock:
            files = list(self._files.values())
        for tf in files:
            with tf.lock:
                if tf.fh is not None:
                    tf.fh.close()
                    tf.fh = None
