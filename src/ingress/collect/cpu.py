"""CPU collector: time and utilisation per core and in total, load, scheduler counters.

Reads ``/proc/stat``, ``/proc/loadavg`` and ``/proc/pressure/cpu`` (when the
kernel has PSI). Times are the kernel's tick counters divided by ``USER_HZ``.
Utilisation is the share of each mode in the ticks that passed between two
passes of this collector, so the first pass emits times but no utilisation.
Guest time is counted inside ``user``/``nice`` by the kernel and is not a
mode of its own here, so the eight modes of a cpu add up to its total time.
The ``cpu`` tag is the core number (``"0"``, ``"1"``, ...) or ``"total"``.
"""
from __future__ import annotations

import os

import numpy as np

from ingress.collect._util import PsiBlock, counter_rate, psi_metrics, read_bytes
from ingress.collect.base import COUNTER, GAUGE, Collector, ColumnBuilder, Columns, MetricSpec

MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE = MODES.index("idle")
_IOWAIT = MODES.index("iowait")

# name, kind: the scalar series of one pass, in the order _SCALARS values are filled.
_SCALARS = (
    "cpu.load.1m", "cpu.load.5m", "cpu.load.15m", "cpu.count",
    "cpu.context_switches", "cpu.context_switches_rate",
    "cpu.interrupts", "cpu.interrupts_rate",
    "cpu.forks", "cpu.forks_rate",
    "cpu.procs_running", "cpu.procs_blocked",
)


class CpuCollector(Collector):
    """Per-core and total CPU time/utilisation by mode, load averages, scheduler counters."""

    name = "cpu"
    priority = 4
    metrics = (
        MetricSpec("cpu.time", "s", "CPU time spent in each mode since boot", COUNTER, ("cpu", "mode")),
        MetricSpec("cpu.utilization", "1",
                   "Share (0..1) of the interval since the previous pass spent in each mode",
                   GAUGE, ("cpu", "mode")),
        MetricSpec("cpu.busy", "1", "Share (0..1) of the interval not idle and not waiting for I/O",
                   GAUGE, ("cpu",)),
        MetricSpec("cpu.load.1m", "1", "Load average over 1 minute (runnable + uninterruptible tasks)"),
        MetricSpec("cpu.load.5m", "1", "Load average over 5 minutes"),
        MetricSpec("cpu.load.15m", "1", "Load average over 15 minutes"),
        MetricSpec("cpu.count", "1", "Number of online CPUs listed in /proc/stat"),
        MetricSpec("cpu.context_switches", "1", "Context switches since boot", COUNTER),
        MetricSpec("cpu.context_switches_rate", "1/s", "Context switches per second"),
        MetricSpec("cpu.interrupts", "1", "Interrupts serviced since boot", COUNTER),
        MetricSpec("cpu.interrupts_rate", "1/s", "Interrupts per second"),
        MetricSpec("cpu.forks", "1", "Processes and threads created since boot", COUNTER),
        MetricSpec("cpu.forks_rate", "1/s", "Processes and threads created per second"),
        MetricSpec("cpu.procs_running", "1", "Tasks currently runnable"),
        MetricSpec("cpu.procs_blocked", "1", "Tasks currently blocked on I/O"),
    ) + psi_metrics("cpu", "CPU")

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.hz = float(os.sysconf("SC_CLK_TCK"))
        self._labels: tuple[bytes, ...] = ()
        self._time_ids = self._util_ids = self._busy_ids = np.empty(0, np.uint32)
        self._prev_ticks: np.ndarray | None = None
        self._prev_counters: np.ndarray | None = None
        self._prev_ns = 0
        self._scalar_ids = self.series_ids((n, {}) for n in _SCALARS)
        self._scalars = np.full(len(_SCALARS), np.nan)
        self._psi = PsiBlock(self, "cpu", "cpu")
        self._out = ColumnBuilder(512)

    def _layout(self, labels: tuple[bytes, ...]) -> None:
        # A core came online or went away: intern its series once, forget rates.
        tags = ["total" if lb == b"cpu" else lb[3:].decode() for lb in labels]
        self._time_ids = self.series_ids(("cpu.time", {"cpu": c, "mode": m}) for c in tags for m in MODES)
        self._util_ids = self.series_ids(("cpu.utilization", {"cpu": c, "mode": m}) for c in tags for m in MODES)
        self._busy_ids = self.series_ids(("cpu.busy", {"cpu": c}) for c in tags)
        self._labels = labels
        self._prev_ticks = None

    def collect(self, now_ns: int) -> Columns:
        root = self.settings.proc_root
        out = self._out
        out.reset()
        sc = self._scalars
        sc.fill(np.nan)
        data = read_bytes(os.path.join(root, "stat")) or b""
        labels: list[bytes] = []
        cells: list[bytes] = []
        counters = np.full(3, np.nan)  # ctxt, intr, processes
        for line in data.split(b"\n"):
            if line.startswith(b"cpu"):
                parts = line.split()
                if len(parts) < 9:
                    continue
                labels.append(parts[0])
                cells += parts[1:9]
            elif line.startswith(b"ctxt "):
                counters[0] = float(line[5:])
            elif line.startswith(b"intr "):
                counters[1] = float(line.split(None, 2)[1])
            elif line.startswith(b"processes "):
                counters[2] = float(line[10:])
            elif line.startswith(b"procs_running "):
                sc[10] = float(line[14:])
            elif line.startswith(b"procs_blocked "):
                sc[11] = float(line[14:])
        if labels:
            lt = tuple(labels)
            if lt != self._labels:
                self._layout(lt)
            ticks = np.array(cells, dtype=np.float64).reshape(len(labels), len(MODES))
            out.put(self._time_ids, (ticks / self.hz).ravel())
            prev = self._prev_ticks
            if prev is not None:
                d = ticks - prev
                tot = d.sum(axis=1, keepdims=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    util = np.where((tot > 0) & (d >= 0).all(axis=1, keepdims=True), d / tot, np.nan)
                out.put(self._util_ids, util.ravel())
                out.put(self._busy_ids, 1.0 - util[:, _IDLE] - util[:, _IOWAIT])
            self._prev_ticks = ticks
            sc[3] = sum(1 for lb in labels if lb != b"cpu")
        la = read_bytes(os.path.join(root, "loadavg"))
        if la:
            p = la.split()
            sc[0], sc[1], sc[2] = float(p[0]), float(p[1]), float(p[2])
        rates = counter_rate(counters, self._prev_counters, (now_ns - self._prev_ns) / 1e9)
        sc[4], sc[6], sc[8] = counters
        sc[5], sc[7], sc[9] = rates
        self._prev_counters, self._prev_ns = counters, now_ns
        out.put(self._scalar_ids, sc)
        self._psi.emit(out)
        return out.finish(now_ns)
