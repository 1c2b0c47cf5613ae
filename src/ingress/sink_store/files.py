"""The sink's original file store (``--data-dir DIR`` or ``--store file://DIR``).

Each tenant's batches in its own files::

    <data_dir>/<tenant>/batches-000001.ibatch   length-prefixed batches (see ingress.outputs.file)
    <data_dir>/<tenant>/seen.ids                16-byte batch ids already stored, append-only

A batch is recorded as seen only after it is written and fsynced, so a crash
in between causes at most a duplicate, never a loss. Storage errors (disk
full, EIO) leave only whole records in both files: the partial record is cut
off at once (see :class:`ingress.outputs.file.RecordFile`), and the
tenant's next batch is stored as soon as space returns. If the batch was
stored but its id could not be written, the id is kept in memory (a resend is
a duplicate) and written with the tenant's next id.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path


log = logging.getLogger("ingress.sink")
_ID = 16


class _SeenIds:
    """The persisted set of batch ids one tenant has stored.

    ``seen.ids`` is a :class:`~ingress.outputs.file.RecordFile` of 16-byte
    records, so a failed append (disk full) is cut off at once and a torn tail
    left by a crash is cut on open. An id is added only after its batch is
    stored and fsynced. If writing it fails, the id is still seen in memory (a
    resend is a duplicate) and stays pending: the next add writes it together
    with its own id, all or nothing.
    """

    def __init__(self, path: Path) -> None:
        from ingress.outputs.file import RecordFile

        self.path = path
        self.file = RecordFile(path, lambda fd, size: size - size % _ID)
        self.file.open()
        with open(path, "rb") as f:
            data = f.read(self.file.size)
        self.ids: set[bytes] = {data[i:i + _ID] for i in range(0, len(data) - len(data) % _ID, _ID)}
        self.pending: list[bytes] = []

    def add(self, bid: bytes) -> None:
        """Record ``bid`` as stored; a failed write keeps it pending (logged), never raises OSError."""
        self.ids.add(bid)
        self.pending.append(bid)
        self.flush()

    def flush(self) -> bool:
        """Write the pending ids; True when none is left."""
        if not self.pending:
            return True
        try:
            self.file.append(b"".join(self.pending))
        except OSError as e:
            log.warning("sink: %s: cannot record %d stored batch id(s) yet: %s (kept in memory, written "
                        "with the next one)", self.path, len(self.pending), e.strerror or e)
            return False
        self.pending.clear()
        return True

    def close(self) -> None:
        self.flush()
        self.file.close()


class SinkStore:
    """Per-tenant batch files and seen-id sets under ``data_dir``.

    Both are written through :class:`~ingress.outputs.file.RecordFile`: a
    storage error (disk full, EIO) leaves only whole records behind, is raised
    to the caller (the server answers 503 ``storage_unavailable``), and the
    tenant's next batch is stored as soon as space returns.
    """

    def __init__(self, data_dir: str | os.PathLike, max_file_bytes: int = 64 << 20) -> None:
        from ingress.outputs.file import FileOutput

        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files = FileOutput("batches", path=self.dir, max_bytes=max_file_bytes)
        self._lock = threading.Lock()
        self._tenants: dict[str, tuple[threading.Lock, _SeenIds]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def _tenant(self, tenant: str) -> tuple[threading.Lock, _SeenIds]:
        with self._lock:
            t = self._tenants.get(tenant)
            if t is None:
                d = self.dir / tenant
                d.mkdir(exist_ok=True, mode=0o700)
                t = self._tenants[tenant] = (threading.Lock(), _SeenIds(d / "seen.ids"))
                self.counts[tenant] = {"stored": 0, "duplicates": 0, "samples": 0}
            return t

    def put(self, tenant: str, batch_id: bytes, payload: bytes, sample_count: int, host: str) -> bool:
        """Store a batch unless its id was stored before; True when stored.

        Raises :class:`~ingress.errors.RetryableError` (or OSError) when the
        batch cannot be stored; nothing of it is left behind then.
        """
        from ingress.outputs.base import OutgoingBatch

        lock, seen = self._tenant(tenant)
        with lock:
            if batch_id in seen.ids:
                self.counts[tenant]["duplicates"] += 1
                return False
            self.files.write(OutgoingBatch(tenant, batch_id, payload, sample_count, host))
            seen.add(batch_id)  # only after the batch is written and fsynced
            c = self.counts[tenant]
            c["stored"] += 1
            c["samples"] += sample_count
            return True

    def seen(self, tenant: str) -> set[bytes]:
        return set(self._tenant(tenant)[1].ids)

    def close(self) -> None:
        self.files.close()
        with self._lock:
            for _, s in self._tenants.values():
                s.close()
            self._tenants.clear()
