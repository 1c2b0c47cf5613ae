"""Small readers shared by the collectors: whole-file reads, PSI, rates.

The /proc files read here are a few hundred bytes to a few kB; reading them
whole and splitting in Python costs microseconds, and reading them ourselves
(rather than through psutil) honours ``settings.proc_root`` per collector
instead of psutil's process-wide ``PROCFS_PATH``.
"""
from __future__ import annotations

import os
import resource

import numpy as np

_FD_RESERVE = 512  # fds left for sockets, spool segments, logs and outputs


def fd_budget() -> int:
    """How many fds a collector may keep open for its own reading, across all its kinds of file.

    Raises the soft ``RLIMIT_NOFILE`` to the hard limit (at most 65536) first,
    as Go's runtime does for every program: the default soft limit of 1024 is
    a relic of ``select()``, which nothing here uses. The budget is what is
    left of the soft limit after a reserve of 512.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(0, soft - _FD_RESERVE)


def read_bytes(path: str) -> bytes | None:
    """The file's content, or ``None`` when it does not exist or cannot be read."""
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read()
    except OSError:
        return None


def counter_rate(cur: np.ndarray, prev: np.ndarray | None, dt_s: float) -> np.ndarray:
    """Per-second rate of cumulative counters; ``NaN`` where there is no honest answer.

    No previous pass, a non-positive interval, or a counter that went backwards
    (wrapped, device re-plugged, counters reset) yields ``NaN``, which the
    column builder drops instead of emitting a spike or a negative rate.
    """
    if prev is None or dt_s <= 0 or prev.shape != cur.shape:
        return np.full(cur.shape, np.nan)
    d = cur - prev
    out = d / dt_s
    out[d < 0] = np.nan
    return out


PSI_WINDOWS = ("10s", "60s", "300s")


def read_psi(proc_root: str, resource: str) -> tuple[tuple[str, ...], np.ndarray] | None:
    """Parse ``/proc/pressure/<resource>``.

    Returns the scopes present (``some`` and, where the kernel has it, ``full``)
    and a ``(len(scopes), 4)`` array: avg10, avg60, avg300 (percent of wall
    time) and total stall time in seconds. ``None`` when PSI is absent.
    """
    data = read_bytes(os.path.join(proc_root, "pressure", resource))
    if not data:
        return None
    scopes: list[str] = []
    rows: list[list[float]] = []
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        try:
            kv = dict(p.split("=", 1) for p in parts[1:])
            rows.append([float(kv["avg10"]), float(kv["avg60"]), float(kv["avg300"]),
                         int(kv["total"]) / 1e6])
        except (KeyError, ValueError):
            continue
        scopes.append(parts[0])
    if not rows:
        return None
    return tuple(scopes), np.array(rows, np.float64)


def psi_metrics(prefix: str, resource: str):
    """The two :class:`MetricSpec` a collector declares to carry one PSI resource."""
    from ingress.collect.base import COUNTER, GAUGE, MetricSpec

    return (
        MetricSpec(f"{prefix}.pressure.avg", "%",
                   f"Share of wall time some (or all, scope=full) tasks stalled on {resource}, "
                   "kernel running average over the window (/proc/pressure)", GAUGE, ("scope", "window")),
        MetricSpec(f"{prefix}.pressure.stall_time", "s",
                   f"Total time tasks stalled on {resource} since boot (/proc/pressure)", COUNTER, ("scope",)),
    )


class PsiBlock:
    """Emits one PSI resource for a collector; series are interned once per scope set."""

    __slots__ = ("collector", "prefix", "resource", "_scopes", "_ids")

    def __init__(self, collector, prefix: str, resource: str) -> None:
        self.collector = collector
        self.prefix = prefix
        self.resource = resource
        self._scopes: tuple[str, ...] = ()
        self._ids = np.empty(0, np.uint32)

    def emit(self, out) -> None:
        got = read_psi(self.collector.settings.proc_root, self.resource)
        if got is None:
            return
        scopes, rows = got
        if scopes != self._scopes:
            c, p = self.collector, self.prefix
            items = []
            for s in scopes:
                items += [(f"{p}.pressure.avg", {"scope": s, "window": w}) for w in PSI_WINDOWS]
                items.append((f"{p}.pressure.stall_time", {"scope": s}))
            self._ids = c.series_ids(items)
            self._scopes = scopes
        out.put(self._ids, rows.ravel())


def realign(prev: np.ndarray | None, old: tuple, new: tuple) -> np.ndarray | None:
    """Carry per-entity rows of ``prev`` (keyed by ``old``) over to the order of ``new``.

    Entities that appeared get ``NaN`` rows (no rate on their first pass);
    entities that went away are dropped. Used when a device, interface or core
    comes or goes, so the survivors keep their rates.
    """
    if prev is None:
        return None
    out = np.full((len(new),) + prev.shape[1:], np.nan)
    where = {e: i for i, e in enumerate(old)}
    for j, e in enumerate(new):
        i = where.get(e)
        if i is not None:
            out[j] = prev[i]
    return out


def glob_filter(names, include, exclude):
    """Names matching any ``include`` glob and no ``exclude`` glob (``fnmatch`` rules)."""
    from fnmatch import fnmatchcase

    return [n for n in names
            if any(fnmatchcase(n, g) for g in include) and not any(fnmatchcase(n, g) for g in exclude)]
