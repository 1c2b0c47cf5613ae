"""Network collector: per-interface traffic, errors, drops, bandwidth, link state.

Counters come from ``/proc/net/dev`` (the columns after ``name:`` are receive
bytes, packets, errs, drop, fifo, frame, compressed, multicast, then transmit
bytes, packets, errs, drop, fifo, colls, carrier, compressed). ``direction``
is ``in`` (received) or ``out`` (transmitted). Link state, speed and MTU come
from ``/sys/class/net/<interface>/``; an interface whose driver reports no
speed (virtual ones) simply has no ``network.interface.speed`` sample.
"""
from __future__ import annotations

import os

import numpy as np

from ingress.collect._util import counter_rate, glob_filter, read_bytes, realign
from ingress.collect.base import COUNTER, GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.options import Str, StrList

_IO = ("bytes", "packets", "errors", "drops")
# /proc/net/dev column of each _IO counter: receive side, transmit side.
_RX_COL = (0, 1, 2, 3)
_TX_COL = (8, 9, 10, 11)
_IFF_UP = 0x1
_IT = ("interface", "direction")


class NetworkCollector(Collector):
    """Bytes, packets, errors and drops in/out per interface, as totals and per-second rates."""

    name = "network"
    priority = 2
    metrics = (
        MetricSpec("network.io.bytes", "By", "Bytes received (in) / sent (out)", COUNTER, _IT),
        MetricSpec("network.io.bytes_rate", "By/s", "Bandwidth: bytes per second in/out", GAUGE, _IT),
        MetricSpec("network.io.packets", "1", "Packets received/sent", COUNTER, _IT),
        MetricSpec("network.io.packets_rate", "1/s", "Packets per second in/out", GAUGE, _IT),
        MetricSpec("network.io.errors", "1", "Receive/transmit errors", COUNTER, _IT),
        MetricSpec("network.io.errors_rate", "1/s", "Errors per second in/out", GAUGE, _IT),
        MetricSpec("network.io.drops", "1", "Packets dropped on receive/transmit", COUNTER, _IT),
        MetricSpec("network.io.drops_rate", "1/s", "Drops per second in/out", GAUGE, _IT),
        MetricSpec("network.interface.up", "1",
                   "1 when the interface is operationally up (operstate up, or unknown but administratively up "
                   "as for loopback), else 0", GAUGE, ("interface",)),
        MetricSpec("network.interface.speed", "bit/s", "Negotiated link speed, where the driver reports one",
                   GAUGE, ("interface",)),
        MetricSpec("network.interface.mtu", "By", "Maximum transmission unit", GAUGE, ("interface",)),
    )
    options = (
        OptionSpec("interfaces_include", ["*"], "Interface name globs reported", StrList(Str(), doc="list of globs")),
        OptionSpec("interfaces_exclude", [], "Interface name globs not reported, e.g. [\"lo\", \"veth*\"]",
                   StrList(Str(), doc="list of globs")),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self._all: tuple[str, ...] = ()
        self._sel: tuple[str, ...] = ()
        self._rows = np.empty(0, np.intp)
        self._ids = np.empty(0, np.uint32)
        self._link_ids = np.empty(0, np.uint32)
        self._prev: np.ndarray | None = None
        self._prev_ns = 0
        self._out = ColumnBuilder(128)

    def _layout(self, names: tuple[str, ...]) -> None:
        sel = tuple(glob_filter(names, self.opts["interfaces_include"], self.opts["interfaces_exclude"]))
        self._prev = realign(self._prev, self._sel, sel)
        self._rows = np.array([names.index(n) for n in sel], np.intp)
        ids = []
        for itf in sel:
            per = []
            for what in _IO:
                per += [self.series(f"network.io.{what}", interface=itf, direction=d) for d in ("in", "out")]
            for what in _IO:
                per += [self.series(f"network.io.{what}_rate", interface=itf, direction=d) for d in ("in", "out")]
            ids.append(per)
        self._ids = np.array(ids, np.uint32).reshape(len(sel), 16)
        self._link_ids = np.array([[self.series(f"network.interface.{n}", interface=i)
                                    for n in ("up", "speed", "mtu")] for i in sel], np.uint32).reshape(len(sel), 3)
        self._sel, self._all = sel, names

    def _link(self, itf: str, out: np.ndarray) -> None:
        base = os.path.join(self.settings.sys_root, "class", "net", itf)
        state = (read_bytes(os.path.join(base, "operstate")) or b"").strip()
        if state == b"up":
            out[0] = 1.0
        elif state == b"unknown":
            flags = read_bytes(os.path.join(base, "flags"))
            out[0] = float(bool(int(flags, 16) & _IFF_UP)) if flags else np.nan
        else:
            out[0] = 0.0 if state else np.nan
        speed = read_bytes(os.path.join(base, "speed"))
        try:
            mbit = float(speed) if speed else np.nan
        except ValueError:
            mbit = np.nan
        out[1] = mbit * 1e6 if mbit > 0 else np.nan
        mtu = read_bytes(os.path.join(base, "mtu"))
        out[2] = float(mtu) if mtu else np.nan

    def collect(self, now_ns: int) -> Columns:
        out = self._out
        out.reset()
        data = read_bytes(os.path.join(self.settings.proc_root, "net", "dev"))
        if not data:
            return out.finish(now_ns)
        names: list[str] = []
        cells: list[bytes] = []
        for line in data.split(b"\n")[2:]:
            name, sep, rest = line.partition(b":")
            if not sep:
                continue
            parts = rest.split()
            if len(parts) < 16:
                continue
            names.append(name.strip().decode())
            cells += parts[:16]
        nt = tuple(names)
        if nt != self._all:
            self._layout(nt)
        raw = np.array(cells, np.float64).reshape(len(names), 16)[self._rows]
        cur = np.empty((len(raw), 8))
        cur[:, 0::2] = raw[:, _RX_COL]
        cur[:, 1::2] = raw[:, _TX_COL]
        rates = counter_rate(cur, self._prev, (now_ns - self._prev_ns) / 1e9)
        self._prev, self._prev_ns = cur, now_ns
        out.put(self._ids.ravel(), np.hstack([cur, rates]).ravel())
        link = np.empty(3)
        for i, itf in enumerate(self._sel):
            self._link(itf, link)
            out.put(self._link_ids[i], link)
        return out.finish(now_ns)
