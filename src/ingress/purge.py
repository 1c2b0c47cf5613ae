"""``ingress tenants purge T``: remove a tenant that is no longer configured, for good.

Order matters. The tenant's data key goes first: once it is gone (unlinked and
the directory synced), whatever of an encrypting tenant's spool or dead letters
survives on disk, in a backup or in a filesystem snapshot can no longer be
read (crypto-shredding). Then its spool directory, its dead letters and its
file-output directories are removed. Each step is reported; a step that fails
stops the purge with one line, and running it again resumes where it stopped.

A purge needs the spool's writer lock (``<data_dir>/spool/.lock``), so it never
races an agent that still drains the tenant's spool; it is refused while the
tenant is in the configuration (exit 2: remove it, reload or restart, then
purge). Every purge is written to the audit log with the bytes removed.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ingress._fs import fsync_dir
from ingress.errors import ConfigError, IngressError
from ingress.names import is_tenant_id

__all__ = ["PurgeReport", "purge_tenant", "tenant_paths"]


@dataclass
class PurgeReport:
    tenant: str
    removed: list[tuple[str, str, int]] = field(default_factory=list)  # (what, path, bytes)

    @property
    def bytes(self) -> int:
        return sum(n for _, _, n in self.removed)


def _size(p: Path) -> int:
    if p.is_symlink() or p.is_file():
        return p.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def tenant_paths(settings, tenant: str) -> list[tuple[str, Path]]:
    """What a purge of ``tenant`` removes, in order: ``[(what, path)]``."""
    d = Path(settings.agent.data_dir)
    paths = [("data key", d / "keys" / f"{tenant}.key"),
             ("spool", d / "spool" / tenant),
             ("dead letters", d / "deadletter" / tenant)]
    seen = set()
    for o in settings.outputs:
        if o.type != "file":
            continue
        base = Path(getattr(o, "path", None) or d / "out")
        if base not in seen:
            seen.add(base)
            paths.append((f"file output {o.name}", base / tenant))
    return paths


def _lock_spool(data_dir: Path) -> int | None:
    spool = data_dir / "spool"
    if not spool.is_dir():
        return None
    fd = os.open(spool / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise IngressError(f"{spool / '.lock'}: an agent (pid {holder}) is using this data directory; "
                           "stop it before purging a tenant") from None
    return fd


def purge_tenant(settings, tenant: str, audit=None, actor: str = "agent") -> PurgeReport:
    """Remove everything of ``tenant`` under the agent's directories.

    Raises
    ------
    ConfigError
        ``tenant`` is not a valid id, or is still configured.
    IngressError
        An agent holds the spool, or a removal failed (the message names the path).
    """
    if not is_tenant_id(tenant):
        raise ConfigError(f"{tenant!r} is not a valid tenant id")
    if tenant in {t.id for t in settings.tenants}:
        raise ConfigError(f"tenant {tenant!r} is still configured in {settings.source}; remove it from the "
                          "configuration (and reload or restart the agent) before purging it")
    data_dir = Path(settings.agent.data_dir)
    fd = _lock_spool(data_dir)
    report = PurgeReport(tenant)
    try:
        for what, p in tenant_paths(settings, tenant):
            if not p.exists() and not p.is_symlink():
                continue
            n = _size(p)
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                fsync_dir(p.parent)
            except OSError as e:
                if audit is not None:
                    audit.record("tenant.purge", "failed", actor=actor, tenant=tenant, step=what,
                                 path=str(p), error=e.strerror or str(e))
                raise IngressError(f"{p}: cannot remove the {what} of tenant {tenant!r}: "
                                   f"{e.strerror or e}") from None
            report.removed.append((what, str(p), n))
    finally:
        if fd is not None:
            os.close(fd)
    if audit is not None:
        audit.record("tenant.purge", "ok", actor=actor, tenant=tenant, bytes=report.bytes,
                     removed=[w for w, _, _ in report.removed])
    return report
