"""Processes collector: per-process CPU, memory, threads, fds, I/O for a selection; per-name sums.

How a pass works, and why it is cheap:

1. ``_procfs.list_pids`` lists the numeric entries of /proc and
   ``_procfs.PidFiles.read_stat`` reads every pid's ``stat`` (state, ppid,
   flags, utime, stime, nice, threads, starttime, vsize, rss, and the effective
   uid from the open file) in compiled code without the GIL, into numpy
   columns owned by the collector. Nothing per process is a Python object.
   The ``stat`` (and ``io`` and ``status``) files stay open between passes and are re-read
   in place with ``pread``: opening a /proc file costs more than reading it
   (12.9 us against 5.1 us per process for ``stat`` on Linux 6.18). A held
   file belongs to its process, so once that process is gone the read fails
   and the pid is opened afresh; ``held_files`` bounds how many are held.
2. A process is identified by ``(pid, starttime)`` packed into one ``uint64``
   key, so a pid the kernel hands to a new process is never mistaken for the
   old one: its CPU rate starts afresh and its cached metadata is not reused.
   CPU rates are matched to the previous pass with one ``searchsorted``.
3. Selection (vectorised, ``ingress.collect.procview``): processes whose name matches a ``match`` glob, whose
   user is in ``users`` and whose command line matches the ``cmdline`` regex
   (every filter that is set must pass), plus the ``top`` N by CPU and the top
   N by resident memory. Kernel threads are left out unless
   ``kernel_threads`` is set.
4. Only selected processes get series of their own. The expensive fields
   (``fd`` count, ``/proc/PID/io``, context switches from ``status``) are read
   for them only, every ``slow_every`` passes; their values (and the I/O rates,
   taken between two such reads) appear on those passes only.
5. Per-name sums (``processes.group.*``) cover every non-kernel process, and
   ``processes.total.*`` every process.
6. Tenants: the agent builds one processes collector for all of them, with
   each tenant's selection (``match``, ``users``, ``cmdline``, ``top``) as a
   *view* (the ``views`` option). A pass selects the union of the views, and
   its columns carry, per view that left some of them out, a boolean table of
   the local ids that view does not see (``Columns.drop``); the fan-out
   excludes those for that tenant only. Sums and totals are every view's.

The ``name`` tag is the kernel's process name (``comm``, as ``top`` and
``ps -o comm`` show it; up to 15 characters for user processes). The ``user``
tag is the effective user. A process that exits, or whose files cannot be read,
between listing and reading is skipped and counted in ``processes.skipped``;
it never raises.

``processes.state`` is a number: 0 other, 1 running, 2 sleeping, 3 disk_sleep
(uninterruptible), 4 stopped, 5 tracing_stop, 6 zombie, 7 dead, 8 idle,
9 parked.
"""
from __future__ import annotations

import errno
import logging
import os
import pwd
from collections import OrderedDict

import numpy as np

from ingress._core import _procfs as pf
from ingress.collect._util import fd_budget, read_bytes
from ingress.collect.base import COUNTER, GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.collect.procview import SELECTORS, View, make_view, select
from ingress.errors import ConfigError
from ingress.options import Bool, Int, Regex, Str, StrList

log = logging.getLogger(__name__)

# One pass, as docs/collectors.md draws it.
DIAGRAM = """
flowchart TD
    L["list_pids: readdir /proc"] --> R["PidFiles.read_stat: every pid's stat, nogil,<br/>held fds re-read with pread<br/>-> int64 columns + comm + euid"]
    R --> K["key = starttime << 22 | pid"]
    K --> RT["CPU rate: searchsorted against last pass's keys"]
    K --> X["exited keys: drop cached cmdline, I/O history, series"]
    RT --> S["select: match / users / cmdline, + top N CPU, top N RSS"]
    S --> F["selected: 7 series every pass"]
    S --> SL["every slow_every-th pass, selected only:<br/>count_fds (size of PID/fd), io and status (held)"]
    RT --> G["np.unique(comm) + bincount: per-name sums"]
    R --> T["totals by state; tree snapshot"]
"""

PF_KTHREAD = 0x00200000
STATES = ("other", "running", "sleeping", "disk_sleep", "stopped", "tracing_stop", "zombie", "dead",
          "idle", "parked")
_STATE_CODE = np.zeros(256, np.int64)
for _c, _code in (("R", 1), ("S", 2), ("D", 3), ("T", 4), ("t", 5), ("Z", 6), ("X", 7), ("x", 7),
                  ("I", 8), ("P", 9)):
    _STATE_CODE[ord(_c)] = _code
_PID_BITS = 22  # pid_max is at most 2**22
_SKIP_REASONS = ("vanished", "denied", "unreadable")

_PT = ("pid", "name", "ppid", "user")
# Per-process series in column order: fast (every pass), then slow (every slow_every passes).
_FAST = (("processes.cpu.time", {}), ("processes.cpu.utilization", {}), ("processes.memory.rss", {}),
         ("processes.memory.vms", {}), ("processes.threads", {}), ("processes.state", {}),
         ("processes.age", {}))
_SLOW = (("processes.open_fds", {}),
         ("processes.io.bytes", {"direction": "read"}), ("processes.io.bytes", {"direction": "write"}),
         ("processes.io.bytes_rate", {"direction": "read"}), ("processes.io.bytes_rate", {"direction": "write"}),
         ("processes.context_switches", {"type": "voluntary"}),
         ("processes.context_switches", {"type": "involuntary"}))
_NF, _NS = len(_FAST), len(_SLOW)
_GROUP = ("processes.group.count", "processes.group.cpu.utilization", "processes.group.memory.rss",
          "processes.group.threads")


_DENIED = (errno.EACCES, errno.EPERM)


def _skip_reason(e: int) -> int:
    if e in (errno.ENOENT, errno.ESRCH):
        return 0
    if e in (errno.EACCES, errno.EPERM):
        return 1
    return 2


class ProcessesCollector(Collector):
    """Per-process metrics for selected processes, per-name sums, totals by state; keeps the process tree."""

    name = "processes"
    priority = 0
    metrics = (
        MetricSpec("processes.cpu.time", "s", "CPU time (user + system) used since the process started",
                   COUNTER, _PT),
        MetricSpec("processes.cpu.utilization", "1",
                   "CPU seconds per second over the last interval (1 = one full core)", GAUGE, _PT),
        MetricSpec("processes.memory.rss", "By", "Resident set size", GAUGE, _PT),
        MetricSpec("processes.memory.vms", "By", "Virtual memory size", GAUGE, _PT),
        MetricSpec("processes.threads", "1", "Threads", GAUGE, _PT),
        MetricSpec("processes.state", "1", "Scheduler state as a number (codes listed above)", GAUGE, _PT),
        MetricSpec("processes.age", "s", "Time since the process started", GAUGE, _PT),
        MetricSpec("processes.open_fds", "1", "Open file descriptors (slow cadence)", GAUGE, _PT),
        MetricSpec("processes.io.bytes", "By", "Bytes read from / written to storage (slow cadence)", COUNTER,
                   _PT + ("direction",)),
        MetricSpec("processes.io.bytes_rate", "By/s",
                   "Storage bytes read/written per second between two slow-cadence reads", GAUGE,
                   _PT + ("direction",)),
        MetricSpec("processes.context_switches", "1", "Voluntary/involuntary context switches (slow cadence)",
                   COUNTER, _PT + ("type",)),
        MetricSpec("processes.group.count", "1", "Processes with this name (kernel threads excluded)", GAUGE,
                   ("name",)),
        MetricSpec("processes.group.cpu.utilization", "1", "Summed CPU seconds per second of the processes "
                   "with this name", GAUGE, ("name",)),
        MetricSpec("processes.group.memory.rss", "By", "Summed resident set size of the processes with this "
                   "name (shared pages counted once per process)", GAUGE, ("name",)),
        MetricSpec("processes.group.threads", "1", "Summed threads of the processes with this name", GAUGE,
                   ("name",)),
        MetricSpec("processes.total.count", "1", "Processes (kernel threads included) by state", GAUGE,
                   ("state",)),
        MetricSpec("processes.total.threads", "1", "Threads of every process", GAUGE),
        MetricSpec("processes.skipped", "1",
                   "Reads skipped since start because the process exited (vanished), access was refused "
                   "(denied) or the file was malformed (unreadable)", COUNTER, ("reason",)),
    )
    options = (
        OptionSpec("match", [], "Process-name globs (the kernel's `comm`) of processes reported individually; "
                   "empty: none, only the top N.", StrList(Str(), doc="list of globs")),
        OptionSpec("top", 10, "Also report the top N processes by CPU and the top N by resident memory.",
                   Int(0, 1000)),
        OptionSpec("users", [], "When not empty, a matched process must also run as one of these users "
                   "(names or uids).", StrList(Str())),
        OptionSpec("cmdline", "", "When not empty, a matched process's command line must also contain this "
                   "regular expression (`re.search`).", Regex(doc="regex", empty=True)),
        OptionSpec("slow_every", 5, "Read fds, /proc/PID/io and context switches every Nth pass.",
                   Int(1, 1000)),
        OptionSpec("kernel_threads", False, "Consider kernel threads for selection and per-name sums.", Bool()),
        OptionSpec("groups", True, "Emit per-name sums (processes.group.*).", Bool()),
        OptionSpec("meta_cache", 4096, "Command lines cached, keyed by (pid, start time), least recently used "
                   "dropped first.", Int(1, 1_000_000)),
        OptionSpec("views", {}, "Per-tenant selections served by this one pass: {tenant id: {match, users, "
                   "cmdline, top}}, from each tenant's [tenants.processes], and then used "
                   "instead of those four options"),
        OptionSpec("held_files", 4096, "Per-process files (stat, io, status) kept open between passes and re-read "
                   "in place, at most this many of each (bounded by the fd limit); 0 opens every file every pass.",
                   Int(0, 1_000_000)),
    )
    # Tenants share one pass: match, users, cmdline and top are each tenant's view of it;
    # tenants whose other options differ get separate instances.
    per_tenant = "views"
    table_help = ("Options of the `processes` collector for this tenant: which processes it reports "
                  "(`match`, `users`, `cmdline`, `top`: this tenant's view of a pass shared with other "
                  "tenants) and how it reads them.")

    @classmethod
    def tenant_options(cls, tenant) -> dict:
        given = super().tenant_options(tenant)
        view = {o.name: given.pop(o.name, o.default) for o in cls.options if o.name in SELECTORS}
        return {**given, "views": {tenant.id: view}}

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        o = self.opts
        self._defaults = {spec.name: spec.default for spec in self.options}
        for k in ("top", "slow_every", "meta_cache", "held_files"):
            low = 0 if k in ("top", "held_files") else 1
            if not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < low:
                raise ConfigError(f"collector 'processes': option {k}: {o[k]!r} is not a "
                                  f"{'non-negative' if low == 0 else 'positive'} integer")
        if not isinstance(o["views"], dict):
            raise ConfigError(f"collector 'processes': option views: {o['views']!r} is not a table")
        views = sorted(o["views"].items()) if o["views"] else [(None, {k: o[k] for k in SELECTORS})]
        self._views = [make_view(i, name, sel, self._defaults) for i, (name, sel) in enumerate(views)]
        self.hz = float(os.sysconf("SC_CLK_TCK"))
        self.page_size = float(os.sysconf("SC_PAGE_SIZE"))
        self._root = os.fsencode(self.settings.proc_root)
        self.btime = self._read_btime()
        held = min(o["held_files"], fd_budget() // 4) if o["held_files"] else 0  # 3 kinds; health gets 1/4
        self._statf = pf.PidFiles(self._root, b"stat", held)
        self._iof = pf.PidFiles(self._root, b"io", held)
        self._statusf = pf.PidFiles(self._root, b"status", held)
        self._alloc(512)
        self._pass = 0
        # previous pass, sorted by key, for CPU rates and exit detection
        self._pkeys = np.empty(0, np.uint64)
        self._pcpu = np.empty(0, np.float64)
        self._pns = 0
        # per selected process: key -> (identity, local ids); identity = (ppid, comm, uid)
        self._proc_ids: dict[int, tuple[tuple, np.ndarray]] = {}
        self._sel_sig: tuple | None = None
        self._sel_ids = np.empty((0, _NF + _NS), np.uint32)
        self._io_prev: dict[int, tuple[int, float, float]] = {}
        self._io_denied_said = False  # the CAP_SYS_PTRACE line, once
        self._meta: OrderedDict[int, tuple[str, dict[int, bool]]] = OrderedDict()  # cmdline, per-view match
        self._users: dict[int, str] = {}
        self._g_names = np.empty(0, "S64")
        self._g_ids = np.empty((0, len(_GROUP)), np.uint32)
        self._g_cache: dict[bytes, np.ndarray] = {}
        self._skipped = np.zeros(len(_SKIP_REASONS))
        self._tot_ids = self.series_ids(
            [("processes.total.count", {"state": s}) for s in STATES] + [("processes.total.threads", {})]
            + [("processes.skipped", {"reason": r}) for r in _SKIP_REASONS])
        self._tot = np.empty(len(STATES) + 1 + len(_SKIP_REASONS))
        self._snap: tuple = (np.empty(0, np.int32),) * 7
        self._out = ColumnBuilder(1024)

    # -- setup -------------------------------------------------------------------------------
    def _read_btime(self) -> float:
        data = read_bytes(os.path.join(self.settings.proc_root, "stat")) or b""
        for line in data.split(b"\n"):
            if line.startswith(b"btime "):
                return float(line[6:])
        return float("nan")

    def _alloc(self, cap: int) -> None:
        self._pids = np.empty(cap, np.int32)
        self._stat = np.empty((cap, pf.ST_NFIELDS), np.int64)
        self._comm = np.zeros((cap, pf.COMM_LEN_), np.uint8)
        self._err = np.empty(cap, np.int32)

    def _user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def _count_skips(self, errs: np.ndarray) -> None:
        for e in errs.tolist():  # only the failures: usually none or a handful
            self._skipped[_skip_reason(e)] += 1

    # -- metadata (command line), cached by (pid, starttime) ---------------------------------
    def cmdline(self, key: int) -> str | None:
        """The command line of the process with this key; cached, ``None`` if it is gone."""
        hit = self._meta.get(key)
        if hit is not None:
            self._meta.move_to_end(key)
            return hit[0]
        pid = key & ((1 << _PID_BITS) - 1)
        raw = read_bytes(os.path.join(self.settings.proc_root, str(pid), "cmdline"))
        if raw is None:
            return None
        cmd = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        self._meta[key] = (cmd, {})
        if len(self._meta) > self.opts["meta_cache"]:
            self._meta.popitem(last=False)
        return cmd

    def _cmd_ok(self, view: View, key: int) -> bool:
        cmd = self.cmdline(key)
        if cmd is None:
            return False
        oks = self._meta[key][1]  # per view, so a regex runs once per process and view
        ok = oks.get(view.index)
        if ok is None:
            ok = oks[view.index] = bool(view.cmd_re.search(cmd))
        return ok

    def _forget(self, gone: np.ndarray) -> None:
        """Processes that exited: drop their metadata, I/O history and series."""
        for k in gone.tolist():
            self._meta.pop(k, None)
            self._io_prev.pop(k, None)
            ent = self._proc_ids.pop(k, None)
            if ent is not None:
                for sid in ent[1].tolist():
                    self.table.retire(sid)

    # -- one pass ----------------------------------------------------------------------------
    def _read(self):
        n = pf.list_pids(self._root, self._pids)
        while n > len(self._pids):
            self._alloc(2 * n)
            n = pf.list_pids(self._root, self._pids)
        pids = self._pids[:n]
        self._statf.read_stat(pids, self._stat, self._comm, self._err)
        err = self._err[:n]
        ok = err == 0
        if not ok.all():
            self._count_skips(err[~ok])
            return pids[ok], self._stat[:n][ok], self._comm[:n][ok].view(f"S{pf.COMM_LEN_}").ravel()
        return pids.copy(), self._stat[:n].copy(), self._comm[:n].view(f"S{pf.COMM_LEN_}").ravel().copy()

    def _ids_for(self, skeys, sppid, scomm, suid) -> np.ndarray:
        sig = (skeys, sppid, scomm, suid)
        old = self._sel_sig
        if old is not None and all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(sig, old)):
            return self._sel_ids
        rows = []
        keep = set()
        for k, ppid, comm, uid in zip(skeys.tolist(), sppid.tolist(), scomm.tolist(), suid.tolist()):
            ident = (ppid, comm, uid)
            ent = self._proc_ids.get(k)
            if ent is None or ent[0] != ident:
                if ent is not None:  # re-parented, exec'd or changed user: new series identity
                    for sid in ent[1].tolist():
                        self.table.retire(sid)
                tags = {"pid": str(k & ((1 << _PID_BITS) - 1)), "name": comm.decode("utf-8", "replace"),
                        "ppid": str(ppid), "user": self._user(uid)}
                ids = self.series_ids([(n, {**tags, **t}) for n, t in _FAST + _SLOW])
                ent = (ident, ids)
                self._proc_ids[k] = ent
            rows.append(ent[1])
            keep.add(k)
        for k in [k for k in self._proc_ids if k not in keep]:  # deselected: their series end here
            for sid in self._proc_ids.pop(k)[1].tolist():
                self.table.retire(sid)
        self._sel_ids = np.array(rows, np.uint32).reshape(len(rows), _NF + _NS)
        self._sel_sig = tuple(a.copy() for a in sig)
        return self._sel_ids

    def _slow(self, spids, skeys, now_ns) -> np.ndarray:
        n = len(spids)
        vals = np.full((n, _NS), np.nan)
        if n == 0:
            return vals
        err = np.empty(n, np.int32)
        fds = np.empty(n, np.int64)
        pf.count_fds(self._root, spids, fds, err)
        good = err == 0
        self._count_skips(err[~good])
        vals[good, 0] = fds[good]
        io = np.empty((n, 4), np.int64)
        self._iof.read_keyed(spids, io, err)
        good = err == 0
        self._count_skips(err[~good])
        if not self._io_denied_said and bool(np.isin(err, _DENIED).any()):
            self._io_denied_said = True  # once per collector: the reason does not change
            log.warning("processes: /proc/PID/io of processes of other users is not readable (%d denied this pass); "
                        "their processes.io.* series are left out. Reading them needs CAP_SYS_PTRACE "
                        "(or running as root); see docs/security.md", int(np.isin(err, _DENIED).sum()),
                        extra={"reason": "io denied", "capability": "CAP_SYS_PTRACE"})
        vals[good, 1] = io[good, 2]
        vals[good, 2] = io[good, 3]
        for i in np.flatnonzero(good).tolist():
            k = int(skeys[i])
            prev = self._io_prev.get(k)
            rb, wb = float(io[i, 2]), float(io[i, 3])
            if prev is not None and now_ns > prev[0] and rb >= prev[1] and wb >= prev[2]:
                dt = (now_ns - prev[0]) / 1e9
                vals[i, 3] = (rb - prev[1]) / dt
                vals[i, 4] = (wb - prev[2]) / dt
            self._io_prev[k] = (now_ns, rb, wb)
        cs = np.empty((n, 2), np.int64)
        self._statusf.read_keyed(spids, cs, err)
        good = err == 0
        self._count_skips(err[~good])
        vals[good, 5] = cs[good, 0]
        vals[good, 6] = cs[good, 1]
        return vals

    def _groups(self, comm, st, rate, eligible, out: ColumnBuilder) -> None:
        e = np.flatnonzero(eligible)
        if len(e) == 0:
            return
        names, inv = np.unique(comm[e], return_inverse=True)
        if len(names) != len(self._g_names) or not np.array_equal(names, self._g_names):
            rows = []
            live = set(names.tolist())
            for nm in names.tolist():
                ids = self._g_cache.get(nm)
                if ids is None:
                    s = nm.decode("utf-8", "replace")
                    ids = self.series_ids((m, {"name": s}) for m in _GROUP)
                    self._g_cache[nm] = ids
                rows.append(ids)
            for nm in [nm for nm in self._g_cache if nm not in live]:  # no process of that name is left
                for sid in self._g_cache.pop(nm).tolist():
                    self.table.retire(sid)
            self._g_ids = np.array(rows, np.uint32).reshape(len(names), len(_GROUP))
            self._g_names = names
        g = len(names)
        r = rate[e]
        has_rate = np.bincount(inv, weights=~np.isnan(r), minlength=g) > 0
        vals = np.empty((g, len(_GROUP)))
        vals[:, 0] = np.bincount(inv, minlength=g)
        vals[:, 1] = np.where(has_rate, np.bincount(inv, weights=np.nan_to_num(r), minlength=g), np.nan)
        vals[:, 2] = np.bincount(inv, weights=st[e, pf.ST_RSS] * self.page_size, minlength=g)
        vals[:, 3] = np.bincount(inv, weights=st[e, pf.ST_NUM_THREADS], minlength=g)
        out.put(self._g_ids.ravel(), vals.ravel())

    def collect(self, now_ns: int) -> Columns:
        out = self._out
        out.reset()
        pids, st, comm = self._read()
        keys = (st[:, pf.ST_STARTTIME].astype(np.uint64) << np.uint64(_PID_BITS)) | pids.astype(np.uint64)
        ticks = (st[:, pf.ST_UTIME] + st[:, pf.ST_STIME]).astype(np.float64)

        # CPU rates against the previous pass, matched by (pid, starttime)
        rate = np.full(len(keys), np.nan)
        dt = (now_ns - self._pns) / 1e9
        pk = self._pkeys
        if len(pk) and dt > 0:
            idx = np.minimum(np.searchsorted(pk, keys), len(pk) - 1)
            d = ticks - self._pcpu[idx]
            found = (pk[idx] == keys) & (d >= 0)
            rate[found] = d[found] / self.hz / dt
        order = np.argsort(keys)
        skeys_all = keys[order]
        if len(pk):
            gone = pk[~np.isin(pk, skeys_all, assume_unique=True)]
            if len(gone):
                self._forget(gone)
        self._pkeys, self._pcpu, self._pns = skeys_all, ticks[order], now_ns

        kthread = (st[:, pf.ST_FLAGS] & PF_KTHREAD) != 0
        eligible = np.ones(len(keys), bool) if self.opts["kernel_threads"] else ~kthread
        sel, shares = select(self._views, keys, comm, st, rate, eligible, self._cmd_ok)
        drop = None

        # per-process series of the selection
        if len(sel):
            s = st[sel]
            ids = self._ids_for(keys[sel], s[:, pf.ST_PPID], comm[sel], s[:, pf.ST_UID])
            vals = np.empty((len(sel), _NF + _NS))
            vals[:, 0] = ticks[sel] / self.hz
            vals[:, 1] = rate[sel]
            vals[:, 2] = s[:, pf.ST_RSS] * self.page_size
            vals[:, 3] = s[:, pf.ST_VSIZE]
            vals[:, 4] = s[:, pf.ST_NUM_THREADS]
            vals[:, 5] = _STATE_CODE[s[:, pf.ST_STATE]]
            vals[:, 6] = np.maximum(now_ns / 1e9 - (self.btime + s[:, pf.ST_STARTTIME] / self.hz), 0.0)
            if self._pass % self.opts["slow_every"] == 0:
                vals[:, _NF:] = self._slow(pids[sel], keys[sel], now_ns)
            else:
                vals[:, _NF:] = np.nan
            out.put(ids.ravel(), vals.ravel())
            if shares is not None:
                drop = (ids, shares)
        else:
            self._ids_for(keys[:0], st[:0, pf.ST_PPID], comm[:0], st[:0, pf.ST_UID])
        self._pass += 1

        if self.opts["groups"]:
            self._groups(comm, st, rate, eligible, out)
        t = self._tot
        t[: len(STATES)] = np.bincount(_STATE_CODE[st[:, pf.ST_STATE]], minlength=len(STATES))
        t[len(STATES)] = st[:, pf.ST_NUM_THREADS].sum()
        t[len(STATES) + 1:] = self._skipped
        out.put(self._tot_ids, t)
        # the tree snapshot: replaced whole, so a reader in another thread sees one pass
        self._snap = (pids, st[:, pf.ST_PPID].copy(), comm, st[:, pf.ST_UID].copy(), rate,
                      st[:, pf.ST_RSS] * self.page_size, keys)
        cols = out.finish(now_ns)
        if drop is not None:  # built last: every series of this pass is interned by now
            cols.drop = self._drops(*drop)
        return cols

    def _drops(self, ids: np.ndarray, shares: list[np.ndarray]) -> dict[str, np.ndarray] | None:
        """Per view that left out some selected processes: a table of the local ids it does not see."""
        drop = {}
        for v, mine in zip(self._views, shares):
            if mine.all():
                continue
            lut = np.zeros(len(self.table), bool)
            lut[ids[~mine].ravel()] = True
            drop[v.name] = lut
        return drop or None

    # -- the process tree --------------------------------------------------------------------
    def tree(self, pid: int | None = None, cmdline: bool = False) -> list[dict]:
        """The process tree of the last pass as JSON-able data.

        Parameters
        ----------
        pid : int, optional
            Return only the subtree rooted at this pid (empty list if unknown).
        cmdline : bool
            Include each process's command line (read once per process, cached).

        Returns
        -------
        list of dict
            Roots (processes whose parent is not listed, e.g. pid 1 and kthreadd),
            each ``{"pid", "ppid", "name", "user", "cpu", "rss", "children": [...]}``
            with ``cpu`` in CPU seconds per second (``None`` before a second pass).
        """
        pids, ppids, comm, uids, rate, rss, keys = self._snap
        nodes: dict[int, dict] = {}
        for i, p in enumerate(pids.tolist()):
            r = float(rate[i])
            node = {"pid": p, "ppid": int(ppids[i]), "name": comm[i].decode("utf-8", "replace"),
                    "user": self._user(int(uids[i])), "cpu": None if r != r else r, "rss": float(rss[i]),
                    "children": []}
            if cmdline:
                node["cmdline"] = self.cmdline(int(keys[i]))
            nodes[p] = node
        roots = []
        for node in nodes.values():
            parent = nodes.get(node["ppid"])
            if parent is not None and parent is not node:
                parent["children"].append(node)
            else:
                roots.append(node)
        if pid is not None:
            return [nodes[pid]] if pid in nodes else []
        return roots

    def children(self, pid: int) -> list[int]:
        """Pids whose parent was ``pid`` in the last pass."""
        pids, ppids = self._snap[0], self._snap[1]
        return pids[ppids == pid].tolist()

    def parent(self, pid: int) -> int | None:
        """The parent pid of ``pid`` in the last pass, ``None`` if it was not seen."""
        pids, ppids = self._snap[0], self._snap[1]
        hit = np.flatnonzero(pids == pid)
        return int(ppids[hit[0]]) if len(hit) else None
