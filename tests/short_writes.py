"""Short writes for the files a test cares about: ``os.write`` on a descriptor opened
for a ``*.tmp`` path (every atomic write's temporary file, before and after
``ingress._fs.write_atomic``) takes at most ``chunk`` bytes per call, as a write
interrupted by a signal or cut short by a filling disk may."""
from __future__ import annotations

import os


def shorten_tmp_writes(monkeypatch, chunk: int = 5) -> list[int]:
    """Arm the short writes; returns the list of sizes os.write was asked for (to check it was hit)."""
    real_open, real_write, real_close = os.open, os.write, os.close
    tmp_fds: set[int] = set()
    asked: list[int] = []

    def open_(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        if os.fspath(path).endswith(".tmp"):
            tmp_fds.add(fd)
        return fd

    def write(fd, data):
        if fd in tmp_fds:
            asked.append(len(data))
            return real_write(fd, memoryview(data)[:chunk])
        return real_write(fd, data)

    def close(fd):
        tmp_fds.discard(fd)
        return real_close(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "close", close)
    return asked
