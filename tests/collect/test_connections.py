"""connections collector: golden /proc/net files, the sock_diag parser, and real sockets on loopback."""
import socket
import struct

import numpy as np
import pytest
from collect_helpers import T0, key, live_settings, samples

from ingress._core import _procfs as pf
from ingress.collect.connections import TCP_STATES, ConnectionsCollector
from ingress.errors import ConfigError


def test_counts_states_listeners_services(tree):
    c = ConnectionsCollector(tree("host-a").settings(top_remotes=2))
    s = samples(c, c.collect(T0))
    assert s[key("connections.count", protocol="tcp")] == 10
    assert s[key("connections.count", protocol="tcp6")] == 3
    assert s[key("connections.count", protocol="udp")] == 2
    assert s[key("connections.count", protocol="udp6")] == 0
    assert s[key("connections.count", protocol="unix")] == 3
    want_states = dict(listen=3, established=8, time_wait=1, close_wait=1)
    for st in TCP_STATES:
        assert s[key("connections.tcp.state", state=st)] == want_states.get(st, 0), st
    # listening on 22 and 5432 (IPv4) and 80 (IPv6, dual stack)
    assert s[key("connections.listen.inbound", port="22")] == 3
    assert s[key("connections.listen.inbound", port="5432")] == 1
    assert s[key("connections.listen.inbound", port="80")] == 1
    assert s[key("connections.listen.queue", port="5432")] == 3
    assert s[key("connections.listen.queue", port="22")] == 0
    assert key("connections.listen.queue_max", port="22") not in s  # /proc does not show the backlog
    assert not [k for k in s if k[0].startswith("connections.listen") and ("port", "40000") in k[1]]
    svc = {tuple(dict(k[1]).values()): v for k, v in s.items() if k[0] == "connections.service.count" and v}
    assert svc == {("out", "dns"): 1, ("out", "http"): 2, ("in", "http"): 1, ("out", "https"): 2,
                   ("in", "postgres"): 1, ("out", "postgres"): 1, ("in", "ssh"): 3}
    remotes = {dict(k[1])["remote"] + "/" + dict(k[1])["direction"]: v
               for k, v in s.items() if k[0] == "connections.remote.count"}
    assert remotes == {"10.0.0.100/in": 2, "8.8.8.8:443/out": 2}


def test_all_remotes_formatting(tree):
    c = ConnectionsCollector(tree("host-a").settings(top_remotes=50))
    s = samples(c, c.collect(T0))
    remotes = {dict(k[1])["remote"] + "/" + dict(k[1])["direction"]: v
               for k, v in s.items() if k[0] == "connections.remote.count"}
    assert remotes == {"10.0.0.100/in": 2, "10.0.0.101/in": 1, "127.0.0.1/in": 1, "10.0.0.11/in": 1,
                       "127.0.0.1:5432/out": 1, "8.8.8.8:443/out": 2, "8.7.6.5:80/out": 1,
                       "[2001:db8::2]:8080/out": 1, "8.8.8.8:53/out": 1}


def test_ports_option_extends_and_overrides(tree):
    t = tree("host-a")
    c = ConnectionsCollector(t.settings(ports={"web": [8080, 80], "admin": 22}))
    s = samples(c, c.collect(T0))
    # a configured name wins a port over a default one: "web" takes 80 and 8080 from "http", "admin" 22
    assert s[key("connections.service.count", service="web", direction="out")] == 2
    assert s[key("connections.service.count", service="web", direction="in")] == 1
    assert s[key("connections.service.count", service="http", direction="out")] == 0
    assert s[key("connections.service.count", service="admin", direction="in")] == 3
    assert key("connections.service.count", service="ssh", direction="in") in s  # still declared, now 0
    assert s[key("connections.service.count", service="ssh", direction="in")] == 0
    for bad, msg in (({"x": 70000}, "70000 is not a port"), ({"x": "80"}, "'80' is not a port"),
                     ([80], "is not a table")):
        with pytest.raises(ConfigError, match=msg):
            ConnectionsCollector(t.settings(ports=bad))
    with pytest.raises(ConfigError, match="option source: 'ss' is not one of"):
        ConnectionsCollector(t.settings(source="ss"))


def test_parse_inet_rows():
    data = (b"  sl  local_address rem_address   st tx_queue rx_queue\n"
            b"   0: 0100007F:1F90 0200007F:D431 01 0000000A:0000000B 00:00000000 0 0 1 1\n"
            b"garbage line\n"
            b"   1: B80D0120000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000002\n")
    out = np.zeros((data.count(b"\n"), pf.NI_NCOLS), np.uint32)
    assert pf.parse_inet(data, out) == 2
    assert out[0].tolist() == [0x0100007F, 0, 0, 0, 8080, 0x0200007F, 0, 0, 0, 54321, 1, 10, 11]
    assert out[1, :5].tolist() == [0xB80D0120, 0, 0, 0x01000000, 22]
    assert out[1, pf.NI_STATE] == 0x0A and out[1, pf.NI_RXQ] == 2
    assert pf.parse_inet(b"", out) == 0


def _diag_msg(sport, dport, src, dst, state, rq, wq, attrs=b""):
    body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0)
    body += struct.pack("!HH", sport, dport) + socket.inet_aton(src) + bytes(12) + socket.inet_aton(dst) + bytes(12)
    body += struct.pack("=III", 0, 0, 0) + struct.pack("=IIIII", 0, rq, wq, 0, 1234) + attrs
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_parse_diag_messages():
    attr = struct.pack("=HHB", 5, 8, 0) + b"\0\0\0"  # an INET_DIAG_SHUTDOWN attribute, padded
    chunk = (_diag_msg(22, 5000, "10.0.0.1", "10.0.0.2", 1, 3, 7, attr)
             + _diag_msg(80, 0, "0.0.0.0", "0.0.0.0", 10, 1, 128))
    out = np.zeros((8, pf.NI_NCOLS), np.uint32)
    row, status = pf.parse_diag(bytearray(chunk), len(chunk), out, 0)
    assert (row, status) == (2, 0)
    want = np.zeros(pf.NI_NCOLS, np.uint32)
    want[pf.NI_LADDR] = struct.unpack("=I", socket.inet_aton("10.0.0.1"))[0]
    want[pf.NI_RADDR] = struct.unpack("=I", socket.inet_aton("10.0.0.2"))[0]
    want[pf.NI_LPORT], want[pf.NI_RPORT], want[pf.NI_STATE], want[pf.NI_RXQ], want[pf.NI_TXQ] = 22, 5000, 1, 3, 7
    assert out[0].tolist() == want.tolist()
    assert out[1, pf.NI_LPORT] == 80 and out[1, pf.NI_STATE] == 10 and out[1, pf.NI_TXQ] == 128
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4
    assert pf.parse_diag(done, len(done), out, 2) == (2, 1)
    err = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -95) + bytes(16)
    assert pf.parse_diag(err, len(err), out, 2) == (2, -95)
    truncated = chunk[:50]
    assert pf.parse_diag(truncated, len(truncated), out, 0)[1] == -22


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(7)
    clients = [socket.create_connection(srv.getsockname()) for _ in range(2)]  # never accepted
    yield srv.getsockname()[1], clients
    for c in clients:
        c.close()
    srv.close()


@pytest.mark.parametrize("source", ["netlink", "proc"])
def test_live_listener_queue_and_inbound(listener, source):
    port, clients = listener
    c = ConnectionsCollector(live_settings(source=source, top_remotes=100))
    try:
        s = samples(c, c.collect(T0))
    finally:
        c.close()
    p = str(port)
    assert s[key("connections.listen.inbound", port=p)] == 2
    assert s[key("connections.listen.queue", port=p)] == 2  # two handshakes done, none accepted
    if source == "netlink":
        assert s[key("connections.listen.queue_max", port=p)] == 7
    out_peer = f"127.0.0.1:{port}"
    assert s[key("connections.remote.count", remote=out_peer, direction="out")] == 2
    assert s[key("connections.tcp.state", state="listen")] >= 1
    assert s[key("connections.count", protocol="tcp")] >= 5


def test_netlink_and_proc_agree_on_listeners(listener):
    got = []
    for source in ("netlink", "proc"):
        c = ConnectionsCollector(live_settings(source=source))
        s = samples(c, c.collect(T0))
        c.close()
        got.append({k for k in s if k[0] == "connections.listen.inbound"})
    assert got[0] == got[1]
