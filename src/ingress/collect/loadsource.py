"""How loaded the agent and its host are: the input of the adaptive scheduler.

One :class:`PressureSample` holds four readings, each averaged over the window
since the previous sample:

========================  ====================================================
``agent_cpu_percent``     the agent's own CPU time (every thread, user+system,
                          from :func:`os.times`) per wall second, in % of one
                          core: 5.0 is a twentieth of a core, 150.0 is 1.5 cores
``host_cpu_percent``      share of all CPUs' time that was not idle or iowait,
                          from the first line of ``/proc/stat``, 0-100
``psi_cpu_some_avg10``    ``some avg10`` of ``/proc/pressure/cpu``: % of the last
                          10 s in which at least one task waited for a CPU;
                          ``None`` where the kernel has no PSI
``load_per_core``         1-minute load average over the number of CPUs
``cgroup_throttled_``     share of the CPU periods of the agent's own cgroup
``percent``               (v2) in which its CPU quota ran out and it was
                          throttled, 0-100; ``None`` when the cgroup has no
                          quota (``cpu.max`` is ``max``) or is not readable
========================  ====================================================

Inside a container with a CPU quota, the host's CPU can be idle while the
container is starved: the kernel stops its tasks for the rest of each period
once the quota is used. That is saturation as far as the agent is concerned,
and only the cgroup's ``cpu.stat`` shows it.

:class:`ProcPressure` is the real source. Everything it reads is injectable
(clock, ``times``, ``loadavg``, CPU count, /proc root) so tests feed it golden
files and scripted counters.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ingress.collect.base import proc_root

log = logging.getLogger("ingress.collect")

__all__ = ["PressureSample", "LoadSource", "ProcPressure", "read_cgroup_throttling", "read_host_cpu",
           "read_psi_cpu_some_avg10"]


@dataclass(frozen=True)
class PressureSample:
    """One reading of agent and host load (see the module docstring for units)."""

    agent_cpu_percent: float
    host_cpu_percent: float
    psi_cpu_some_avg10: float | None
    load_per_core: float
    cgroup_throttled_percent: float | None = None


class LoadSource(Protocol):
    """Anything that returns a fresh :class:`PressureSample` when called."""

    def __call__(self) -> PressureSample: ...


def read_host_cpu(root: str | None = None) -> tuple[int, int]:
    """Cumulative (busy, total) jiffies of all CPUs from ``<root>/stat``.

    ``total`` sums user..steal; guest time is already inside user/nice, so the
    guest columns are not added twice. Idle and iowait count as not busy: a CPU
    waiting on the disk could run the agent.
    """
    path = os.path.join(root or proc_root(), "stat")
    with open(path, "rb") as f:
        first = f.readline().split()
    if not first or first[0] != b"cpu" or len(first) < 5:
        raise ValueError(f"{path}:1: expected the aggregate 'cpu' line, got {b' '.join(first[:3])!r}")
    fields = [int(x) for x in first[1:9]]
    total = sum(fields)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def read_psi_cpu_some_avg10(root: str | None = None) -> float | None:
    """``some avg10`` of ``<root>/pressure/cpu``, or ``None`` without PSI.

    Kernels built without PSI have no file; kernels booted with ``psi=0`` have
    the file but refuse to read it (EOPNOTSUPP). Both mean "no reading".
    """
    path = os.path.join(root or proc_root(), "pressure", "cpu")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == b"some":
            for kv in parts[1:]:
                if kv.startswith(b"avg10="):
                    return float(kv[6:])
    raise ValueError(f"{path}: no 'some avg10=' field in {text[:80]!r}")


def read_cgroup_throttling(proc: str | None = None, cgroup_fs: str | None = None) -> tuple[int, int] | None:
    """Cumulative ``(nr_periods, nr_throttled)`` of this process's cgroup v2, or ``None``.

    The cgroup is the ``0::`` line of ``<proc>/self/cgroup``; its files are under
    ``<cgroup_fs>`` (default ``<sys root>/fs/cgroup``). ``None`` when there is no
    cgroup v2, no CPU controller or no quota (``cpu.max`` starts with ``max``):
    without a quota there is nothing to be throttled by.
    """
    from ingress.cgroup import own_cgroup_dir

    base = own_cgroup_dir(proc, cgroup_fs)
    if base is None:
        return None
    try:
        with open(os.path.join(base, "cpu.max"), "rb") as f:
            if f.read().split()[:1] in ([b"max"], []):
                return None
        with open(os.path.join(base, "cpu.stat"), "rb") as f:
            text = f.read()
    except OSError:
        return None
    vals = dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)
    try:
        return int(vals[b"nr_periods"]), int(vals[b"nr_throttled"])
    except (KeyError, ValueError):
        raise ValueError(f"{os.path.join(base, 'cpu.stat')}: no nr_periods / nr_throttled in {text[:80]!r}")


class ProcPressure:
    """The real load source: deltas of process and host CPU counters.

    Each call measures the window since the previous call (the first window
    starts at construction). A call that comes sooner than ``min_window_s``
    after the previous one returns that previous sample again: windows of a few
    milliseconds say more about scheduler granularity than about load.

    Parameters
    ----------
    clock
        Monotonic nanoseconds.
    times
        Returns an object with ``user`` and ``system`` seconds of this process
        (:func:`os.times`).
    loadavg
        Returns the (1, 5, 15) minute load averages (:func:`os.getloadavg`).
    cpu_count
        CPUs the load average is divided by; default :func:`os.cpu_count`.
    root
        The /proc root; default :func:`ingress.collect.base.proc_root`, read at
        every call so ``INGRESS_PROCFS`` set later still applies.
    cgroup_fs
        Where cgroup v2 is mounted; default ``<sys root>/fs/cgroup``.
    min_window_s
        Shortest window a new sample is computed over.

    Notes
    -----
    /proc/stat is parsed here rather than through ``psutil.cpu_times`` because
    psutil's procfs override is one process-wide global, while the agent's
    collectors and tests point each reader at their own root.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        times: Callable[[], object] = os.times,
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        cpu_count: int | None = None,
        root: str | None = None,
        cgroup_fs: str | None = None,
        min_window_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._times = times
        self._loadavg = loadavg
        self._cpus = max(1, cpu_count or os.cpu_count() or 1)
        self._root = root
        self._cgroup_fs = cgroup_fs
        self._min_window_ns = int(min_window_s * 1e9)
        self._warned: set[str] = set()
        self._last: PressureSample | None = None
        self._t0 = clock()
        self._cpu0 = self._agent_cpu_s()
        self._host0 = self._host()
        self._thr0 = self._throttling()

    def _agent_cpu_s(self) -> float:
        t = self._times()
        return float(t.user) + float(t.system)

    def _host(self) -> tuple[int, int] | None:
        try:
            return read_host_cpu(self._root)
        except (OSError, ValueError) as e:
            self._warn_once("host_cpu", "host CPU unreadable, counted as idle: %s", e)
            return None

    def _throttling(self) -> tuple[int, int] | None:
        try:
            return read_cgroup_throttling(self._root, self._cgroup_fs)
        except ValueError as e:
            self._warn_once("cgroup", "cgroup CPU throttling unreadable, ignored: %s", e)
            return None

    def _psi(self) -> float | None:
        try:
            return read_psi_cpu_some_avg10(self._root)
        except ValueError as e:
            self._warn_once("psi", "CPU pressure unreadable, ignored: %s", e)
            return None

    def _warn_once(self, key: str, msg: str, err: Exception) -> None:
        # A broken /proc stays broken; one line says so, not one per sample.
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, err, extra={"source": key})

    def __call__(self) -> PressureSample:
        now = self._clock()
        dt_ns = now - self._t0
        if self._last is not None and dt_ns < self._min_window_ns:
            return self._last
        cpu = self._agent_cpu_s()
        host = self._host()
        agent_pct = 0.0
        if dt_ns > 0:
            agent_pct = max(0.0, (cpu - self._cpu0) * 1e9 / dt_ns * 100.0)
        host_pct = self._last.host_cpu_percent if self._last is not None else 0.0
        if host is not None and self._host0 is not None:
            d_busy, d_total = host[0] - self._host0[0], host[1] - self._host0[1]
            if d_total > 0:
                host_pct = min(100.0, max(0.0, d_busy * 100.0 / d_total))
        try:
            load1 = float(self._loadavg()[0])
        except OSError:
            load1 = 0.0
        thr = self._throttling()
        throttled = None
        if thr is not None and self._thr0 is not None:
            d_periods, d_thr = thr[0] - self._thr0[0], thr[1] - self._thr0[1]
            throttled = min(100.0, max(0.0, d_thr * 100.0 / d_periods)) if d_periods > 0 else 0.0
        sample = PressureSample(
            agent_cpu_percent=agent_pct,
            host_cpu_percent=host_pct,
            psi_cpu_some_avg10=self._psi(),
            load_per_core=load1 / self._cpus,
            cgroup_throttled_percent=throttled,
        )
        self._t0, self._cpu0, self._host0 = now, cpu, host if host is not None else self._host0
        self._thr0 = thr
        self._last = sample
        return sample
