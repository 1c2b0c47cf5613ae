"""Memory collector: RAM and swap usage, dirty pages, swap traffic, memory pressure.

Reads ``/proc/meminfo`` (kB, reported here in bytes), ``/proc/vmstat`` (swap
traffic and major faults, pages times the page size) and
``/proc/pressure/memory`` where the kernel has PSI. ``used`` is
``MemTotal - MemAvailable``: what applications hold and the kernel cannot
give back without swapping, the figure alerts usually want.
"""
from __future__ import annotations

import os

import numpy as np

from ingress.collect._util import PsiBlock, counter_rate, psi_metrics, read_bytes
from ingress.collect.base import COUNTER, GAUGE, Collector, ColumnBuilder, Columns, MetricSpec

# metric name -> /proc/meminfo field (kB), emitted as bytes in this order.
_FIELDS = (
    ("memory.total", b"MemTotal"),
    ("memory.free", b"MemFree"),
    ("memory.available", b"MemAvailable"),
    ("memory.buffers", b"Buffers"),
    ("memory.cached", b"Cached"),
    ("memory.dirty", b"Dirty"),
    ("memory.writeback", b"Writeback"),
    ("memory.shared", b"Shmem"),
    ("memory.active", b"Active"),
    ("memory.inactive", b"Inactive"),
    ("memory.slab_reclaimable", b"SReclaimable"),
    ("memory.slab_unreclaimable", b"SUnreclaim"),
    ("memory.swap.total", b"SwapTotal"),
    ("memory.swap.free", b"SwapFree"),
    ("memory.swap.cached", b"SwapCached"),
)
_DERIVED = ("memory.used", "memory.utilization", "memory.swap.used", "memory.swap.utilization")
_VMSTAT = (b"pswpin", b"pswpout", b"pgmajfault")


class MemoryCollector(Collector):
    """RAM and swap: total, available, used, cached, buffers, dirty; swap I/O; PSI."""

    name = "memory"
    priority = 3
    metrics = (
        MetricSpec("memory.total", "By", "Usable RAM (MemTotal)"),
        MetricSpec("memory.free", "By", "RAM not used at all (MemFree)"),
        MetricSpec("memory.available", "By",
                   "RAM available for new work without swapping, caches included (MemAvailable)"),
        MetricSpec("memory.used", "By", "RAM in use: total minus available"),
        MetricSpec("memory.utilization", "1", "Used share (0..1) of total RAM"),
        MetricSpec("memory.buffers", "By", "Block device buffers (Buffers)"),
        MetricSpec("memory.cached", "By", "Page cache (Cached)"),
        MetricSpec("memory.dirty", "By", "Pages waiting to be written back to disk (Dirty)"),
        MetricSpec("memory.writeback", "By", "Pages being written back now (Writeback)"),
        MetricSpec("memory.shared", "By", "Shared memory and tmpfs (Shmem)"),
        MetricSpec("memory.active", "By", "Recently used memory (Active)"),
        MetricSpec("memory.inactive", "By", "Memory not recently used, reclaim candidates (Inactive)"),
        MetricSpec("memory.slab_reclaimable", "By", "Kernel slab caches that can be reclaimed"),
        MetricSpec("memory.slab_unreclaimable", "By", "Kernel slab memory that cannot be reclaimed"),
        MetricSpec("memory.swap.total", "By", "Swap space configured"),
        MetricSpec("memory.swap.free", "By", "Swap space unused"),
        MetricSpec("memory.swap.used", "By", "Swap space in use"),
        MetricSpec("memory.swap.utilization", "1", "Used share (0..1) of swap; absent without swap"),
        MetricSpec("memory.swap.cached", "By", "Swapped-out memory also still in RAM (SwapCached)"),
        MetricSpec("memory.swap.io", "By", "Bytes swapped in/out since boot", COUNTER, ("direction",)),
        MetricSpec("memory.swap.io_rate", "By/s", "Bytes swapped in/out per second", GAUGE, ("direction",)),
        MetricSpec("memory.major_faults", "1", "Page faults that needed disk I/O since boot", COUNTER),
        MetricSpec("memory.major_faults_rate", "1/s", "Major page faults per second"),
    ) + psi_metrics("memory", "memory")

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.page_size = float(os.sysconf("SC_PAGE_SIZE"))
        self._ids = self.series_ids([(n, {}) for n, _ in _FIELDS] + [(n, {}) for n in _DERIVED])
        self._vm_ids = self.series_ids([
            ("memory.swap.io", {"direction": "in"}), ("memory.swap.io", {"direction": "out"}),
            ("memory.major_faults", {}),
            ("memory.swap.io_rate", {"direction": "in"}), ("memory.swap.io_rate", {"direction": "out"}),
            ("memory.major_faults_rate", {})])
        self._vals = np.empty(len(_FIELDS) + len(_DERIVED), np.float64)
        self._vm = np.empty(2 * len(_VMSTAT), np.float64)
        self._prev_vm: np.ndarray | None = None
        self._prev_ns = 0
        self._psi = PsiBlock(self, "memory", "memory")
        self._out = ColumnBuilder(64)

    def collect(self, now_ns: int) -> Columns:
        root = self.settings.proc_root
        out = self._out
        out.reset()
        data = read_bytes(os.path.join(root, "meminfo"))
        if data:
            kb: dict[bytes, bytes] = {}
            for line in data.split(b"\n"):
                k, _, rest = line.partition(b":")
                if rest:
                    kb[k] = rest
            v = self._vals
            for i, (_, key) in enumerate(_FIELDS):
                raw = kb.get(key)
                v[i] = float(raw.split()[0]) * 1024.0 if raw else np.nan
            total, avail, stot, sfree = v[0], v[2], v[12], v[13]
            n = len(_FIELDS)
            v[n] = total - avail
            v[n + 1] = (total - avail) / total if total > 0 else np.nan
            v[n + 2] = stot - sfree
            v[n + 3] = (stot - sfree) / stot if stot > 0 else np.nan
            out.put(self._ids, v)
        vm = read_bytes(os.path.join(root, "vmstat"))
        if vm:
            cur = np.full(len(_VMSTAT), np.nan)
            for line in vm.split(b"\n"):
                k, _, val = line.partition(b" ")
                if k in _VMSTAT:
                    cur[_VMSTAT.index(k)] = float(val)
            cur[:2] *= self.page_size
            k = len(_VMSTAT)
            self._vm[:k] = cur
            self._vm[k:] = counter_rate(cur, self._prev_vm, (now_ns - self._prev_ns) / 1e9)
            self._prev_vm, self._prev_ns = cur, now_ns
            out.put(self._vm_ids, self._vm)
        self._psi.emit(out)
        return out.finish(now_ns)
