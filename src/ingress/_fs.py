"""Filesystem helpers shared by everything that must survive a crash on disk.

The one atomic write of the project is :func:`write_atomic`: the spool's
counters, the control-API key file, tenant at-rest keys and dead letters all go
through it, so each of them is on disk whole or not at all.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so a file created, renamed or unlinked in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quiet(path: str | os.PathLike) -> None:
    """Remove a file; one that is already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_all(fd: int, data) -> None:
    """``os.write`` until every byte of ``data`` is written (a short write is continued)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if n <= 0:  # a regular file that takes nothing more: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def write_atomic(path: str | os.PathLike, data, *, mode: int = 0o600, replace: bool = True,
                 sync_dir: bool = True) -> None:
    """Put ``data`` at ``path`` whole or not at all, and durably.

    Writes a new temporary file ``.<name>.<random>.tmp`` beside ``path`` (mode
    ``mode`` exactly, whatever the umask), fsyncs it, renames it over ``path``
    (``replace=False``: hard-links it instead, so an existing ``path`` is never
    replaced and :class:`FileExistsError` is raised), then fsyncs the
    directory (``sync_dir=False`` leaves that to a caller that writes several
    files). Whatever fails, the temporary file is removed and ``path`` keeps
    what it held before; the OSError is raised. Names ending in ``.tmp`` are
    what the spool and the key store remove at start-up as crash leftovers.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        unlink_quiet(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)
