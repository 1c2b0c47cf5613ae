"""Disk collector: space and inodes per mounted filesystem, I/O per block device.

Filesystems come from ``/proc/mounts``; a filesystem type the kernel lists as
``nodev`` in ``/proc/filesystems`` (proc, sysfs, cgroup, tmpfs, overlay, ...)
is a pseudo filesystem and is left out unless ``all_filesystems`` is set or
its type is in ``fstypes_include``. Space is measured with ``statvfs`` like
``df``: ``free`` is what unprivileged users may still write, and
``utilization`` is ``used / (used + free)``.

I/O comes from ``/proc/diskstats``, whose sector counts are always 512-byte
units whatever the device's own sector size. ``disk.io.utilization`` is the
share of wall time the device had I/O in flight (``iostat``'s ``%util``).
I/O pressure (PSI, ``/proc/pressure/io``) is reported here as ``disk.pressure.*``.
"""
from __future__ import annotations

import os

import numpy as np

from ingress.collect._util import PsiBlock, counter_rate, glob_filter, psi_metrics, read_bytes, realign
from ingress.collect.base import COUNTER, GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.options import Bool, Str, StrList

_DIRS = ("read", "write")
# Columns taken from each /proc/diskstats line (0-based after major, minor, name):
# reads, reads merged, sectors read, ms reading, writes, writes merged, sectors written,
# ms writing, in flight, ms busy.
_NCOL = 10
_USAGE = ("disk.usage.total", "disk.usage.used", "disk.usage.free", "disk.usage.utilization",
          "disk.inodes.total", "disk.inodes.used", "disk.inodes.free")


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape")


class DiskCollector(Collector):
    """Space and inodes per mount (pseudo filesystems excluded), I/O counters and rates per device."""

    name = "disk"
    priority = 2
    _MT = ("mountpoint", "device", "fstype")
    metrics = (
        MetricSpec("disk.usage.total", "By", "Size of the filesystem", GAUGE, _MT),
        MetricSpec("disk.usage.used", "By", "Space in use", GAUGE, _MT),
        MetricSpec("disk.usage.free", "By", "Space still available to unprivileged users", GAUGE, _MT),
        MetricSpec("disk.usage.utilization", "1", "Used share (0..1): used / (used + free), as df shows",
                   GAUGE, _MT),
        MetricSpec("disk.inodes.total", "1", "Inodes of the filesystem (absent where it has none)", GAUGE, _MT),
        MetricSpec("disk.inodes.used", "1", "Inodes in use", GAUGE, _MT),
        MetricSpec("disk.inodes.free", "1", "Inodes available to unprivileged users", GAUGE, _MT),
        MetricSpec("disk.io.ops", "1", "Completed read/write requests", COUNTER, ("device", "direction")),
        MetricSpec("disk.io.ops_rate", "1/s", "Completed read/write requests per second", GAUGE,
                   ("device", "direction")),
        MetricSpec("disk.io.merged", "1", "Requests merged with a queued one", COUNTER, ("device", "direction")),
        MetricSpec("disk.io.bytes", "By", "Bytes read/written", COUNTER, ("device", "direction")),
        MetricSpec("disk.io.bytes_rate", "By/s", "Bytes read/written per second", GAUGE, ("device", "direction")),
        MetricSpec("disk.io.time", "s", "Time spent on read/write requests (summed over requests)", COUNTER,
                   ("device", "direction")),
        MetricSpec("disk.io.busy_time", "s", "Wall time the device had requests in flight", COUNTER, ("device",)),
        MetricSpec("disk.io.utilization", "1", "Share (0..1) of the interval the device was busy", GAUGE,
                   ("device",)),
        MetricSpec("disk.io.in_progress", "1", "Requests in flight now", GAUGE, ("device",)),
    ) + psi_metrics("disk", "I/O")
    options = (
        OptionSpec("all_filesystems", False, "Report pseudo (nodev) filesystems too", Bool()),
        OptionSpec("fstypes_include", ["zfs"],
                   "Filesystem types reported even though the kernel lists them nodev (zfs, nfs, tmpfs...)",
                   StrList(Str())),
        OptionSpec("fstypes_exclude", [], "Filesystem types never reported", StrList(Str())),
        OptionSpec("mountpoints_exclude", [], "Mount point globs never reported", StrList(Str(), doc="list of globs")),
        OptionSpec("devices_include", ["*"], "Block device globs whose I/O is reported", StrList(Str(), doc="list of globs")),
        OptionSpec("devices_exclude", ["loop*", "ram*"], "Block device globs whose I/O is not reported",
                   StrList(Str(), doc="list of globs")),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        # Tests replace this with a table of golden statvfs results.
        self.statvfs = os.statvfs
        self._mounts_key: bytes | None = None
        self._mounts: list[tuple[str, str, str]] = []
        self._usage_ids = np.empty((0, len(_USAGE)), np.uint32)
        self._usage_vals = np.empty(len(_USAGE))
        self._devs: tuple[str, ...] = ()  # every device in diskstats, to notice changes
        self._sel: tuple[str, ...] = ()  # the reported ones, in emission order
        self._rows = np.empty(0, np.intp)
        self._io_ids = np.empty(0, np.uint32)
        self._prev: np.ndarray | None = None
        self._prev_ns = 0
        self._psi = PsiBlock(self, "disk", "io")
        self._out = ColumnBuilder(256)

    # -- filesystems -------------------------------------------------------------------------
    def _nodev(self) -> set[str]:
        data = read_bytes(os.path.join(self.settings.proc_root, "filesystems")) or b""
        return {ln.split()[1].decode() for ln in data.splitlines() if ln.startswith(b"nodev") and len(ln.split()) > 1}

    def _select_mounts(self, data: bytes) -> None:
        o = self.opts
        nodev = set() if o["all_filesystems"] else self._nodev()
        keep_types = set(o["fstypes_include"])
        drop_types = set(o["fstypes_exclude"])
        seen: set[str] = set()
        mounts = []
        for line in data.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            dev, mp, fstype = _unescape(parts[0]), _unescape(parts[1]), parts[2]
            if fstype in drop_types or (fstype in nodev and fstype not in keep_types):
                continue
            if mp in seen or glob_filter([mp], ["*"], o["mountpoints_exclude"]) == []:
                continue
            seen.add(mp)  # a mount point mounted over twice: the last one is visible, report it once
            mounts.append((mp, dev, fstype))
        self._mounts = mounts
        self._usage_ids = np.array(
            [[self.series(n, mountpoint=mp, device=dev, fstype=fs) for n in _USAGE] for mp, dev, fs in mounts],
            np.uint32).reshape(len(mounts), len(_USAGE))

    def _usage(self, out: ColumnBuilder) -> None:
        data = read_bytes(os.path.join(self.settings.proc_root, "mounts"))
        if data is None:
            return
        if data != self._mounts_key:  # mounts change rarely: re-select only then
            self._select_mounts(data)
            self._mounts_key = data
        v = self._usage_vals
        for i, (mp, _, _) in enumerate(self._mounts):
            try:
                st = self.statvfs(mp)
            except OSError:  # unmounted under us, stale NFS, no permission: no sample this pass
                continue
            fr = st.f_frsize or st.f_bsize
            total = st.f_blocks * fr
            used = (st.f_blocks - st.f_bfree) * fr
            free = st.f_bavail * fr
            v[0], v[1], v[2] = total, used, free
            v[3] = used / (used + free) if used + free > 0 else np.nan
            if st.f_files > 0:
                v[4], v[5], v[6] = st.f_files, st.f_files - st.f_ffree, st.f_favail
            else:
                v[4] = v[5] = v[6] = np.nan
            out.put(self._usage_ids[i], v)

    # -- block devices -----------------------------------------------------------------------
    def _io(self, out: ColumnBuilder, now_ns: int) -> None:
        data = read_bytes(os.path.join(self.settings.proc_root, "diskstats"))
        if data is None:
            return
        names: list[str] = []
        cells: list[bytes] = []
        for line in data.split(b"\n"):
            parts = line.split()
            if len(parts) < 3 + _NCOL:
                continue
            names.append(parts[2].decode())
            cells += parts[3:3 + _NCOL]
        raw = np.array(cells, np.float64).reshape(len(names), _NCOL)
        devs = tuple(names)
        if devs != self._devs:
            chosen = set(glob_filter(names, self.opts["devices_include"], self.opts["devices_exclude"]))
            self._rows = np.array([i for i, n in enumerate(names) if n in chosen], np.intp)
            sel = tuple(n for n in names if n in chosen)
            self._prev = realign(self._prev, self._sel, sel) if self._devs else None
            self._sel = sel
            ids = []
            for d in sel:
                per = []
                for n in ("disk.io.ops", "disk.io.merged", "disk.io.bytes", "disk.io.time",
                          "disk.io.ops_rate", "disk.io.bytes_rate"):
                    per += [self.series(n, device=d, direction=x) for x in _DIRS]
                per += [self.series(n, device=d) for n in ("disk.io.busy_time", "disk.io.in_progress",
                                                           "disk.io.utilization")]
                ids.append(per)
            self._io_ids = np.array(ids, np.uint32).reshape(len(sel), 15)
            self._devs = devs
        r = raw[self._rows]
        # per device: ops r/w, merged r/w, bytes r/w, time r/w | busy | in flight
        cur = np.column_stack([r[:, 0], r[:, 4], r[:, 1], r[:, 5], r[:, 2] * 512.0, r[:, 6] * 512.0,
                               r[:, 3] / 1e3, r[:, 7] / 1e3, r[:, 9] / 1e3])
        dt = (now_ns - self._prev_ns) / 1e9
        prev = self._prev
        rates = counter_rate(cur, prev, dt)
        vals = np.empty((len(r), 15))
        vals[:, 0:8] = cur[:, 0:8]
        vals[:, 8:10] = rates[:, 0:2]
        vals[:, 10:12] = rates[:, 4:6]
        vals[:, 12] = cur[:, 8]
        vals[:, 13] = r[:, 8]
        vals[:, 14] = np.minimum(rates[:, 8], 1.0)  # busy seconds per second; jiffy rounding can exceed 1
        self._prev, self._prev_ns = cur, now_ns
        out.put(self._io_ids.ravel(), vals.ravel())

    def collect(self, now_ns: int) -> Columns:
        out = self._out
        out.reset()
        self._usage(out)
        self._io(out, now_ns)
        self._psi.emit(out)
        return out.finish(now_ns)
