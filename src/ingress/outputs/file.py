"""The file output: per-tenant files on the local disk, rotated by size.

Layout (``base`` is ``<data_dir>/out`` unless ``path`` is given)::

    <base>/<tenant>/<output-name>-000001.ibatch     format "batch"
    <base>/<tenant>/<output-name>-000001.jsonl      format "json"

Format ``batch`` is a sequence of length-prefixed records, nothing else (no file
header, so files can be concatenated)::

    record => length:u32 (big-endian, bytes that follow) | batch:bytes[length]

``batch`` is one encoded batch exactly as it would be sent to Kafka or HTTP;
``ingress decode`` and :func:`read_batches` read it back. Format ``json`` writes
one JSON object per sample per line (see :mod:`ingress.outputs.jsonfmt`).

A file is closed and the next sequence number opened when the next record
would take it past ``max_bytes`` (a record larger than ``max_bytes`` gets a
file of its own). ``done(batch, None)`` is called only after the record is
written and, unless ``fsync=False``, fsynced: the spool forgets the
batch on that acknowledgement, so the file must already hold it.

Recovery rule: on (re)opening the newest file, a torn tail left by a crash in
the middle of a write (an incomplete record, or a JSON line without its
newline) is cut off, so every later record starts at a record boundary. The
torn batch is still in the spool (it was never acknowledged) and is written
again whole.

Write errors: every file is written through one :class:`RecordFile`
(unbuffered ``pwrite`` at the end of the last whole record). A failed write or
fsync (disk full, EIO) cuts the partial record off at once and is reported as
a :class:`RetryableError`; the output keeps working and the first write after
space returns succeeds. A failed rotation keeps the current file in use. The
sink's file store (:mod:`ingress.sink_store.files`) stores its batches and seen ids the same way.
"""
from __future__ import annotations

import errno
import os
import re
import struct
import threading
from pathlib import Path
from typing import Callable, Iterator

from ingress.errors import ConfigError, PermanentError, RetryableError, WireError
from ingress.logs import get_logger
from ingress.outputs.base import Done, OutgoingBatch, Output
from ingress.outputs.jsonfmt import FORMATS, sample_lines
from ingress.options import Int, Option, PathKind
from ingress.outputs.plugin import OutputPlugin

log = get_logger("ingress.outputs.file")

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


def valid_length(fd: int, size: int, fmt: str) -> int:
    """Length of the longest prefix of the open file ``fd`` (``size`` bytes) made of whole records."""
    if fmt == "json":
        # Scan back from the end for the last newline.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            chunk = os.pread(fd, step, pos - step)
            k = chunk.rfind(b"\n")
            if k >= 0:
                return pos - step + k + 1
            pos -= step
        return 0
    off = 0
    while off + 4 <= size:
        head = os.pread(fd, 4, off)
        if len(head) < 4:
            break
        (n,) = _LEN.unpack(head)
        if off + 4 + n > size:
            break
        off += 4 + n
    return off


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class RecordFile:
    """An append-only file of whole records that survives a failed write.

    The one writer behind the file output's ``.ibatch``/``.jsonl`` files and
    the sink's batch and seen-id files. It writes with ``os.pwrite`` at the
    known end of the last whole record, straight to the descriptor: no
    userspace buffer, so nothing is left over to be flushed (and fail) later.

    Any OSError while writing or fsyncing a record (ENOSPC, EDQUOT, EIO)
    truncates the file back to the end of the last whole record with
    ``ftruncate`` on the descriptor, then raises. If even that fails, the
    descriptor is closed without raising; the next :meth:`append` (or
    :meth:`close`) opens the file again and cuts it back to the last record it acknowledged (or, for a
    file it has not written, to the last whole record, see ``valid_length``).
    So a full disk costs the records written while it is full, never the file:
    the first append after space returns succeeds.

    Parameters
    ----------
    path
        The file; created ``0600`` on the first open.
    valid_length
        ``valid_length(fd, size)``: length of the longest prefix of whole
        records of the open file; used to cut a torn tail on (re)open.
    fsync
        fsync every record before :meth:`append` returns.
    """

    __slots__ = ("path", "fsync", "_valid", "fd", "size", "_acked", "_dirty")

    def __init__(self, path: str | os.PathLike, valid_length: Callable[[int, int], int],
                 fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._valid = valid_length
        self.fd: int | None = None
        self.size = 0  # end of the last whole record
        self._acked: int | None = None  # end of the last record append() returned for, or of the repair
        self._dirty = False  # a failed cut left something after the last whole record

    def open(self) -> None:
        """Open (creating) the file and cut it back to whole records; no-op when open."""
        if self.fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            good = self._valid(fd, size)
            if self._acked is not None and self._acked < good:
                good = self._acked  # a record written whole but never acknowledged
            if good != size:
                os.ftruncate(fd, good)
        except BaseException:
            _close_quietly(fd)
            raise
        self.fd, self.size, self._acked, self._dirty = fd, good, good, False

    def append(self, rec: bytes) -> None:
        """Write ``rec`` whole after the last record (and fsync it), or raise OSError leaving the file as before."""
        self.open()
        fd, start = self.fd, self.size
        assert fd is not None
        try:
            view, off = memoryview(rec), 0
            while off < len(view):
                n = os.pwrite(fd, view[off:], start + off)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                off += n
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            self._cut(start)
            raise
        self.size = self._acked = start + len(rec)

    def _cut(self, start: int) -> None:
        try:
            os.ftruncate(self.fd, start)  # type: ignore[arg-type]
        except OSError:
            self._dirty = True
            self._drop()  # the next append (or close) reopens and repairs

    def _drop(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            _close_quietly(fd)

    def close(self) -> None:
        """Close the descriptor, first cutting off what a failed cut left behind if it can; never raises."""
        if self._dirty:
            try:
                self.open()
            except OSError:
                pass
        self._drop()


class _TenantFile:
    """The open file of one tenant; all access under ``lock``."""

    __slots__ = ("dir", "seq", "rf", "lock")

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.seq = 0
        self.rf: RecordFile | None = None
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
    def connect_probe(self, timeout: float | None = None) -> None:
        """``check-config --connect``: the directory (or, not created yet, the nearest
        existing parent, where it would be created) is a directory this process may write in."""
        d = self.base
        while not d.exists() and d != d.parent:
            d = d.parent
        if not d.is_dir():
            raise OSError(f"{d} is not a directory")
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(f"directory {d} is not writable")

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

    def _record_file(self, tenant: str, seq: int) -> RecordFile:
        fmt = self.format
        return RecordFile(self.file_path(tenant, seq), lambda fd, size: valid_length(fd, size, fmt), self.fsync)

    def _open_latest(self, tenant: str, tf: _TenantFile) -> None:
        tf.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        existing = self.files(tenant)
        seq = int(self._pat.match(existing[-1].name).group(1)) if existing else 1
        rf = self._record_file(tenant, seq)
        rf.open()  # cuts a torn tail off
        tf.rf, tf.seq = rf, seq

    def _rotate(self, tenant: str, tf: _TenantFile) -> None:
        """Open the next file, then close the current one: a failure leaves the current one in use."""
        assert tf.rf is not None
        rf = self._record_file(tenant, tf.seq + 1)
        rf.open()
        tf.rf.close()
        tf.rf, tf.seq = rf, tf.seq + 1
        if self.max_files is not None:
            old = self.files(tenant)
            for q in old[: max(0, len(old) - self.max_files)]:
                try:
                    q.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning(f"file output {self.name}: cannot delete old file {q}: {e.strerror or e}", output=self.name,
                                path=str(q))

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
            try:
                if tf.rf is None:
                    self._open_latest(batch.tenant, tf)
                else:
                    tf.rf.open()  # after a failed cut: reopen and repair before anything else
                assert tf.rf is not None
                if tf.rf.size > 0 and tf.rf.size + len(rec) > self.max_bytes:
                    self._rotate(batch.tenant, tf)
                tf.rf.append(rec)  # whole and fsynced, or cut off again
            except OSError as e:
                where = e.filename or (tf.rf.path if tf.rf is not None else tf.dir)
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
                if tf.rf is not None:
                    tf.rf.close()
                    tf.rf = None


# --------------------------------------------------------------------------- plugin declaration

def _check(at, path: tuple, o: dict, agent) -> None:
    if o["path"] is None:
        o["path"] = agent.data_dir / "out"


def _build(o, ctx):
    return FileOutput(o.name, data_dir=ctx.data_dir, max_bytes=o.max_mb << 20, format=o.format,
                      tenants=None if o.tenants is None else frozenset(o.tenants), path=o.path)


PLUGIN = OutputPlugin(
    type="file",
    options=(
        Option("outputs", "path", PathKind(), None, "Directory of the per-tenant files.",
               default_doc="`agent.data_dir`/out"),
        Option("outputs", "max_mb", Int(1), 64, "A tenant's file is rotated past this size, MiB."),
    ),
    check=_check, build=_build, local=True)
