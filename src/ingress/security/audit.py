"""The audit log: ``<data_dir>/audit.log``, append-only JSON lines (docs/audit.md).

One line per event::

    {"ts": "2025-01-01T00:00:00.000Z", "actor": "key:0a1b2c3d4e5f", "tenant": "acme",
     "action": "api_access", "outcome": "denied", "remote": "127.0.0.1", ...}

``actor`` is ``key:<id>``, ``user:<local user>`` or ``agent``; ``tenant`` is null
when the event concerns no one tenant; ``remote`` appears only when there is a
remote address. Any other keyword becomes a field. A full control-API key is
never written: every string passes :func:`ingress.security.keys.redact_keys`,
and callers pass key ids, never secrets.

The file is opened ``O_APPEND`` with mode 0600; each line is one ``write``
under an ``flock``, so the agent and an ``ingress keys`` command can write at
once. Past ``max_bytes`` the file is renamed ``audit.log.1`` (``.1`` to ``.2``,
and so on) and ``keep`` rotated files are kept.

Features record through the process-wide log::

    from ingress.security import audit
    audit.record("deadletter", "ok", tenant="acme", output="http-0", batch_id=...)

which is a no-op until :func:`open_default` (the agent's start, or a CLI command)
has set it.
"""
from __future__ import annotations

import getpass
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "record", "open_default", "close_default", "local_actor", "AUDIT_FILE"]

AUDIT_FILE = "audit.log"


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_actor() -> str:
    """``user:<name>`` of whoever runs this command."""
    try:
        return f"user:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        return f"user:{os.getuid()}"


def _clean(v: Any) -> Any:
    from ingress.security.keys import redact_keys

    if isinstance(v, str):
        return redact_keys(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class AuditLog:
    """An append-only JSON-lines file rotated by size.

    Parameters
    ----------
    path
        The log file (``<data_dir>/audit.log``).
    max_bytes
        Size past which the file is rotated.
    keep
        Rotated files kept (``audit.log.1`` .. ``audit.log.<keep>``); 0 keeps none.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int = 10 << 20, keep: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max(1024, int(max_bytes))
        self.keep = max(0, int(keep))
        self._lock = threading.Lock()
        self.errors = 0
        self.lines = 0

    def record(self, action: str, outcome: str, *, actor: str = "agent", tenant: str | None = None,
               remote: str | None = None, **fields: Any) -> None:
        """Append one event. An I/O failure is counted and logged, never raised."""
        ev: dict[str, Any] = {"ts": _ts(time.time()), "actor": actor, "tenant": tenant,
                              "action": action, "outcome": outcome}
        if remote is not None:
            ev["remote"] = remote
        for k, v in fields.items():
            if k not in ev:
                ev[k] = v
        line = (json.dumps(_clean(ev), separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                self._append(line)
                self.lines += 1
            except OSError as e:
                self.errors += 1
                from ingress.logs import get_logger

                get_logger("ingress.audit").every("audit write", 60.0).error(
                    "audit log not written", path=str(self.path), error=str(e))

    def _open_locked(self) -> int:
        """An fd of the current file, flock-ed; retried when another writer rotated it meanwhile."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _append(self, line: bytes) -> None:
        fd = self._open_locked()
        try:
            size = os.fstat(fd).st_size
            if size and size + len(line) > self.max_bytes:
                self._rotate()  # under the lock of the file being rotated
                os.close(fd)
                fd = -1
                fd = self._open_locked()
            os.write(fd, line)
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self) -> None:
        p = self.path
        if self.keep == 0:
            p.unlink(missing_ok=True)
            return
        oldest = p.with_name(f"{p.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = p.with_name(f"{p.name}.{i}")
            if src.exists():
                os.replace(src, p.with_name(f"{p.name}.{i + 1}"))
        os.replace(p, p.with_name(f"{p.name}.1"))


_default: AuditLog | None = None


def open_default(data_dir: str | os.PathLike, max_bytes: int = 10 << 20, keep: int = 5) -> AuditLog:
    """Set (and return) the process-wide audit log of ``data_dir``."""
    global _default
    _default = AuditLog(Path(data_dir) / AUDIT_FILE, max_bytes, keep)
    return _default


def close_default() -> None:
    global _default
    _default = None


def default() -> AuditLog | None:
    return _default


def record(action: str, outcome: str, **kw: Any) -> None:
    """Append to the process-wide audit log; nothing happens before :func:`open_default`."""
    log = _default
    if log is not None:
        log.record(action, outcome, **kw)


def spool_dropped(tenant: str, reason: str, batches: int, samples: int) -> None:
    """The spool's ``on_drop`` hook: one ``spool_dropped`` line per dropped segment."""
    record("spool_dropped", "dropped", actor="agent", tenant=tenant, reason=reason, batches=batches,
           samples=samples)
