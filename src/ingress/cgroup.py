"""The cgroup v2 limits the agent runs under, read once at start.

A container runtime or a systemd unit (``MemoryMax=``, ``CPUQuota=``) caps
the agent through its cgroup. When such a cap is tighter than the agent's own
``agent.limits.memory_mb`` / ``cpu_percent`` the agent adopts it, so it sheds
load before the kernel's OOM killer or the CPU throttle would act, and says so
in its ``started`` line.

The agent's cgroup is the ``0::PATH`` line of ``/proc/self/cgroup``; its files
are ``<cgroup fs>/PATH/memory.max`` (bytes or ``max``) and ``cpu.max``
(``QUOTA PERIOD`` in microseconds, or ``max PERIOD``). The limits of parent
cgroups bind too: the tightest along the path counts. cgroup v1 is not read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ingress.collect.base import proc_root, sys_root

__all__ = ["CgroupLimits", "own_cgroup_dir", "read_limits"]


def own_cgroup_dir(proc: str | None = None, cgroup_fs: str | None = None) -> str | None:
    """The directory of this process's cgroup v2, or ``None`` without cgroup v2."""
    try:
        with open(os.path.join(proc or proc_root(), "self", "cgroup"), "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    rel = next((ln[3:].decode("utf-8", "replace") for ln in lines if ln.startswith(b"0::")), None)
    if rel is None:
        return None
    return os.path.join(cgroup_fs or os.path.join(sys_root(), "fs", "cgroup"), rel.lstrip("/"))


@dataclass(frozen=True)
class CgroupLimits:
    """Tightest limits along the agent's cgroup path; ``None`` where unlimited or unknown."""

    memory_bytes: int | None = None
    cpu_percent: float | None = None  # percent of one core: quota / period * 100
    path: str | None = None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(256)
    except OSError:
        return None


def read_limits(proc: str | None = None, cgroup_fs: str | None = None) -> CgroupLimits:
    """Read ``memory.max`` and ``cpu.max`` from the agent's cgroup up to the root."""
    d = own_cgroup_dir(proc, cgroup_fs)
    if d is None:
        return CgroupLimits()
    root = os.path.normpath(cgroup_fs or os.path.join(sys_root(), "fs", "cgroup"))
    mem: int | None = None
    cpu: float | None = None
    cur = os.path.normpath(d)
    while True:
        raw = _read(os.path.join(cur, "memory.max"))
        if raw is not None:
            v = raw.strip()
            if v.isdigit():
                mem = int(v) if mem is None else min(mem, int(v))
        raw = _read(os.path.join(cur, "cpu.max"))
        if raw is not None:
            parts = raw.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0:
                pct = int(parts[0]) / int(parts[1]) * 100.0
                cpu = pct if cpu is None else min(cpu, pct)
        if cur == root or len(cur) <= len(root):
            break
        cur = os.path.dirname(cur)
    return CgroupLimits(memory_bytes=mem, cpu_percent=cpu, path=d)
