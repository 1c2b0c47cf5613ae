"""Connections collector: sockets by protocol and TCP state, listeners, services, top remote peers.

Reads TCP sockets through the kernel's sock_diag netlink interface (what
``ss`` uses; parsed by the compiled ``_procfs.parse_diag``), or from
``/proc/net/tcp`` and ``tcp6`` when netlink is not available or ``proc_root``
is not the real /proc; UDP from ``/proc/net/udp`` and ``udp6`` (parsed by
``_procfs.parse_inet``), and counts the lines of ``/proc/net/unix``. It never
walks processes' file descriptors (which is what ``psutil.net_connections``
does, and why it costs milliseconds per hundred processes): the price is that
connections are not attributed to processes. The files describe the network
namespace of the agent, so in a container run it with the host's network to
see the host's sockets.

Definitions:

* *inbound*: a TCP socket, not listening, whose local port is a port some TCP
  socket listens on (we are the server); *outbound*: every other connected
  socket (we are the client).
* ``connections.listen.*`` has one series per listening TCP port. The accept
  queue of a listener (``queue``) growing towards its limit (``queue_max``,
  the backlog; known only when read through netlink) means the server does
  not accept fast enough.
* ``connections.service.count`` classifies connected TCP and UDP sockets by a
  well-known port: the local port for inbound, the remote port for outbound
  (``direction`` in/out). The table is extended or overridden with the
  ``ports`` option, e.g. ``{"ports": {"grpc": 50051, "http": [80, 8000]}}``.
* ``connections.remote.count`` has the ``top_remotes`` peers with the most
  connections: ``address:port`` for outbound (the service we use),
  the bare address for inbound (a client, whose source port varies).
"""
from __future__ import annotations

import os
import socket
import struct

import logging

import numpy as np

from ingress._core import _procfs as pf
from ingress.collect._util import read_bytes
from ingress.collect.base import GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.errors import ConfigError
from ingress.options import Bad, Enum, Int, Kind, typename


class PortTable(Kind):
    """``name = port`` or ``name = [ports]``, ports 1..65535: the ``ports`` option."""

    doc = "table of ports"

    def convert(self, v):
        if not isinstance(v, dict):
            raise Bad(f"expected a table of name = port or [ports], got {typename(v)}")
        out = {}
        for name, val in v.items():
            vals = val if isinstance(val, list) else [val]
            for p in vals:
                if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536:
                    raise Bad(f"{p!r} is not a port number 1..65535", (name,))
            out[name] = list(vals)
        return out

log = logging.getLogger(__name__)

TCP_STATES = ("established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close",
              "close_wait", "last_ack", "listen", "closing", "new_syn_recv")
_LISTEN = 0x0A
_PROTOCOLS = ("tcp", "tcp6", "udp", "udp6", "unix")

DEFAULT_PORTS: dict[str, list[int]] = {
    "http": [80, 8080], "https": [443, 8443], "dns": [53], "ssh": [22], "smtp": [25, 587],
    "postgres": [5432], "mysql": [3306], "redis": [6379], "memcached": [11211], "mongodb": [27017],
    "kafka": [9092], "zookeeper": [2181], "amqp": [5672], "elasticsearch": [9200], "ldap": [389],
    "nats": [4222], "etcd": [2379],
}


def _ports_table(extra) -> tuple[tuple[str, ...], np.ndarray]:
    ports = {k: list(v) for k, v in DEFAULT_PORTS.items()}
    if not isinstance(extra, dict):
        raise ConfigError(f"collector 'connections': option ports: {extra!r} is not a table of name = port(s)")
    for name, val in extra.items():
        vals = val if isinstance(val, (list, tuple)) else [val]
        for p in vals:
            if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536:
                raise ConfigError(f"collector 'connections': option ports: {name} = {val!r}: "
                                  f"{p!r} is not a port number 1..65535")
        ports[str(name)] = list(vals)  # a name given here replaces the default ports of that name
    names = tuple(sorted(ports))
    table = np.full(65536, -1, np.int32)
    # A port claimed twice goes to the configured name over a default one (the operator
    # knows what runs there), and among equals to the name later in sorted order.
    for name in sorted(ports, key=lambda nm: (nm in extra, nm)):
        for p in ports[name]:
            table[p] = names.index(name)
    return names, table


def _fmt_addr(words: np.ndarray) -> str:
    raw = struct.pack("=4I", *(int(w) for w in words))
    if raw[4:] == b"\0" * 12:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped IPv6: show it as the IPv4 it is
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return "[" + socket.inet_ntop(socket.AF_INET6, raw) + "]"


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_DIAG_MSG = 88  # nlmsghdr + inet_diag_msg: the smallest message that carries a socket


class _SockDiag:
    """A NETLINK_SOCK_DIAG socket that dumps every TCP socket of one address family.

    Why not /proc/net/tcp: the kernel makes that text by walking the whole
    established-connections hash table on every read, for tcp and again for
    tcp6 (a few ms on a host with a large table, even with no connections);
    the netlink dump skips empty buckets the same way but costs a fraction as
    the rows are fixed binary records, parsed by ``_procfs.parse_diag``.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
        self.sock.settimeout(2.0)
        self.buf = bytearray(65536)  # the kernel caps one dump chunk at 32 KiB
        self.seq = 0

    def dump(self, family: int, proto: int, owner: "ConnectionsCollector", row: int) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        req = struct.pack("=IHHII", 72, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, self.seq, 0)
        req += struct.pack("=BBBBI", family, proto, 0, 0, 0xFFFFFFFF) + bytes(48)
        self.sock.send(req)
        while True:
            n = self.sock.recv_into(self.buf)
            owner._rows(row + n // _DIAG_MSG + 1)
            row, status = pf.parse_diag(self.buf, n, owner._buf, row)
            if status == 1:
                return row
            if status < 0:
                raise OSError(-status, os.strerror(-status))

    def close(self) -> None:
        self.sock.close()


class ConnectionsCollector(Collector):
    """Socket counts by protocol and TCP state, per listening port, per service, and the top peers."""

    name = "connections"
    priority = 1
    metrics = (
        MetricSpec("connections.count", "1", "Sockets per protocol (tcp/tcp6/udp/udp6/unix)", GAUGE,
                   ("protocol",)),
        MetricSpec("connections.tcp.state", "1", "TCP sockets (IPv4 and IPv6) per state", GAUGE, ("state",)),
        MetricSpec("connections.listen.inbound", "1", "Open inbound TCP connections on a listening port", GAUGE,
                   ("port",)),
        MetricSpec("connections.listen.queue", "1", "Connections waiting in the listener's accept queue", GAUGE,
                   ("port",)),
        MetricSpec("connections.listen.queue_max", "1", "The listener's accept queue limit (backlog)", GAUGE,
                   ("port",)),
        MetricSpec("connections.service.count", "1", "Connected TCP/UDP sockets per well-known service port",
                   GAUGE, ("service", "direction")),
        MetricSpec("connections.remote.count", "1", "Connected sockets to/from one of the busiest peers", GAUGE,
                   ("remote", "direction")),
    )
    options = (
        OptionSpec("ports", {}, "Extra or overriding service ports, name = port or [ports]", PortTable()),
        OptionSpec("top_remotes", 10, "How many of the busiest remote peers to report", Int(0, 10000)),
        OptionSpec("source", "auto", "Where TCP sockets are read: netlink (sock_diag, as ss does), proc "
                   "(/proc/net/tcp*), or auto: netlink when proc_root is the real /proc and netlink works",
                   Enum("auto", "netlink", "proc")),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.services, self._port_svc = _ports_table(self.opts["ports"])
        top = self.opts["top_remotes"]
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise ConfigError(f"collector 'connections': option top_remotes: {top!r} is not a non-negative integer")
        self._fixed_ids = self.series_ids(
            [("connections.count", {"protocol": p}) for p in _PROTOCOLS]
            + [("connections.tcp.state", {"state": s}) for s in TCP_STATES]
            + [("connections.service.count", {"service": s, "direction": d})
               for s in self.services for d in ("in", "out")])
        self._fixed = np.empty(len(self._fixed_ids))
        self._buf = np.empty((1024, pf.NI_NCOLS), np.uint32)
        src = self.opts["source"]
        if src not in ("auto", "netlink", "proc"):
            raise ConfigError(f"collector 'connections': option source: {src!r} is not one of auto, netlink, proc")
        real_proc = os.path.realpath(self.settings.proc_root) == "/proc"
        self._diag: _SockDiag | None = None
        if src == "netlink" or (src == "auto" and real_proc):
            try:
                self._diag = _SockDiag()
            except OSError as e:
                if src == "netlink":
                    raise ConfigError(f"collector 'connections': option source: netlink: cannot open a "
                                      f"NETLINK_SOCK_DIAG socket: {e}") from None
                log.info("connections: no sock_diag netlink (%s); reading /proc/net/tcp*", e)
        self._listen_ports = np.empty(0, np.int64)
        self._listen_ids = np.empty((0, 3), np.uint32)
        self._remote_ids: dict[tuple[str, str], int] = {}
        self._out = ColumnBuilder(256)

    def _rows(self, need: int) -> None:
        if need > len(self._buf):
            buf = np.empty((2 * need, pf.NI_NCOLS), np.uint32)
            buf[: len(self._buf)] = self._buf
            self._buf = buf

    def _read_tcp_netlink(self) -> tuple[int, int] | None:
        counts = []
        row = 0
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                start = row
                row = self._diag.dump(family, socket.IPPROTO_TCP, self, row)
                counts.append(row - start)
        except OSError as e:
            log.warning("connections: sock_diag netlink failed (%s); reading /proc/net/tcp* from now on", e)
            self._diag.close()
            self._diag = None
            return None
        return counts[0], counts[1]

    def collect(self, now_ns: int) -> Columns:
        out = self._out
        out.reset()
        f = self._fixed
        tcp_counts = self._read_tcp_netlink() if self._diag is not None else None
        files = ("udp", "udp6") if tcp_counts is not None else ("tcp", "tcp6", "udp", "udp6")
        blobs = [read_bytes(os.path.join(self.settings.proc_root, "net", p)) or b"" for p in files]
        off = sum(tcp_counts) if tcp_counts is not None else 0
        self._rows(off + sum(b.count(b"\n") + 1 for b in blobs))
        counts = list(tcp_counts or ())
        for data in blobs:
            n = pf.parse_inet(data, self._buf[off:]) if data else 0
            counts.append(n)
            off += n
        rows = self._buf[:off]
        n_tcp = counts[0] + counts[1]
        unix = read_bytes(os.path.join(self.settings.proc_root, "net", "unix"))
        f[0:4] = counts
        f[4] = max(unix.count(b"\n") - 1, 0) if unix else np.nan

        tcp = rows[:n_tcp]
        state = tcp[:, pf.NI_STATE].astype(np.int64)
        f[5:5 + len(TCP_STATES)] = np.bincount(state, minlength=len(TCP_STATES) + 1)[1:len(TCP_STATES) + 1]
        listening = state == _LISTEN
        lports = tcp[:, pf.NI_LPORT].astype(np.int64)
        lp, first = np.unique(lports[listening], return_index=True)
        # connected sockets: TCP not listening, UDP with a peer
        udp = rows[n_tcp:]
        conn = np.concatenate([tcp[~listening], udp[udp[:, pf.NI_RPORT] != 0]])
        c_lport = conn[:, pf.NI_LPORT].astype(np.int64)
        c_rport = conn[:, pf.NI_RPORT].astype(np.int64)
        is_tcp = np.zeros(len(conn), bool)
        is_tcp[: int((~listening).sum())] = True
        inbound = is_tcp & np.isin(c_lport, lp)

        ns = len(self.services)
        svc_in = self._port_svc[c_lport[inbound]]
        svc_out = self._port_svc[c_rport[~inbound]]
        svc = np.empty(2 * ns)
        svc[0::2] = np.bincount(svc_in[svc_in >= 0], minlength=ns)
        svc[1::2] = np.bincount(svc_out[svc_out >= 0], minlength=ns)
        f[5 + len(TCP_STATES):] = svc
        out.put(self._fixed_ids, f)

        # per listening port
        if len(lp) != len(self._listen_ports) or not np.array_equal(lp, self._listen_ports):
            for sid in self._listen_ids[~np.isin(self._listen_ports, lp)].ravel().tolist():
                self.table.retire(sid)  # the port is no longer listened on
            self._listen_ids = np.array(
                [[self.series(m, port=str(p)) for m in ("connections.listen.inbound", "connections.listen.queue",
                                                        "connections.listen.queue_max")] for p in lp.tolist()],
                np.uint32).reshape(len(lp), 3)
            self._listen_ports = lp
        if len(lp):
            lv = np.empty((len(lp), 3))
            pos = np.searchsorted(lp, c_lport[inbound])
            lv[:, 0] = np.bincount(pos, minlength=len(lp))
            lrows = tcp[listening][first]
            # several sockets on one port (IPv4 + IPv6, SO_REUSEPORT): the first one's queue
            lv[:, 1] = lrows[:, pf.NI_RXQ]
            # the backlog limit is in sock_diag replies only; /proc/net/tcp shows 0 there
            lv[:, 2] = lrows[:, pf.NI_TXQ] if tcp_counts is not None else np.nan
            out.put(self._listen_ids.ravel(), lv.ravel())

        self._top_remotes(conn, inbound, out)
        return out.finish(now_ns)

    def _top_remotes(self, conn: np.ndarray, inbound: np.ndarray, out: ColumnBuilder) -> None:
        top = self.opts["top_remotes"]
        live: set[tuple[str, str]] = set()
        if top and len(conn):
            # key: 4 address words + port (0 for inbound: the client's port does not identify it) + direction
            keys = np.zeros((len(conn), 6), np.uint32)
            keys[:, 0:4] = conn[:, pf.NI_RADDR:pf.NI_RADDR + 4]
            keys[:, 4] = np.where(inbound, 0, conn[:, pf.NI_RPORT])
            keys[:, 5] = inbound
            uniq, cnt = np.unique(keys, axis=0, return_counts=True)
            k = min(top, len(uniq))
            best = np.argpartition(-cnt, k - 1)[:k] if len(uniq) > k else np.arange(len(uniq))
            for i in best.tolist():  # at most top_remotes peers: formatting them is cheap
                u = uniq[i]
                addr = _fmt_addr(u[0:4])
                remote = addr if u[5] else f"{addr}:{int(u[4])}"
                tag = (remote, "in" if u[5] else "out")
                sid = self._remote_ids.get(tag)
                if sid is None:
                    sid = self._remote_ids[tag] = self.series("connections.remote.count", remote=tag[0],
                                                              direction=tag[1])
                live.add(tag)
                out.put1(sid, float(cnt[i]))
        for tag in [t for t in self._remote_ids if t not in live]:  # fell out of the top: series ends
            self.table.retire(self._remote_ids.pop(tag))

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None
