"""The sink under hostile clients: unauthenticated uploads, slow and idle connections, floods,
clients that vanish mid-body, and every shape of request headers. Real sockets over loopback."""
import hashlib
import http.client
import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress.sink import CONTENT_TYPE, SinkServer

from outputs.fakes import wait_for

from .test_sink import real_batch

pytestmark = pytest.mark.integration

KEYS = {"acme": hashlib.sha256(b"acme-key").digest(), "zeta": hashlib.sha256(b"zeta-key").digest()}
GUARD = 15.0  # a client-side hang guard, never an expectation


def start_sink(tmp_path, **kw):
    return SinkServer("127.0.0.1:0", tmp_path / "sink", dict(KEYS), **kw).start()


def request_head(headers, method="POST", path="/v1/batches"):
    """Request line and headers as bytes; ``headers`` is a list of (name, value) str pairs."""
    lines = [f"{method} {path} HTTP/1.1", "Host: sink"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def batch_headers(tenant="acme", key="acme-key", length=None):
    h = [("Content-Type", CONTENT_TYPE), ("X-Tenant-ID", tenant), ("Authorization", f"Bearer {key}")]
    if length is not None:
        h.append(("Content-Length", str(length)))
    return h


def read_response(sock):
    """(status, headers, parsed JSON body) of one response read from ``sock``."""
    r = http.client.HTTPResponse(sock, method="POST")
    r.begin()
    body = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(body) if body else None


def closed_by_server(sock):
    """True when the server closed the connection (EOF or reset), False if bytes came instead."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def connect(sink):
    s = socket.create_connection(sink.address, timeout=GUARD)
    return s


def post_ok(conn, b):
    conn.request("POST", "/v1/batches", body=b.payload,
                 headers=dict(batch_headers(b.tenant, f"{b.tenant}-key")))
    r = conn.getresponse()
    body = json.loads(r.read())
    return r.status, body


# -- (a) unauthenticated uploads are answered from the headers ------------------


@pytest.mark.parametrize("headers", [
    batch_headers(key="wrong", length=48 << 20),
    batch_headers(tenant="ghost", length=48 << 20),
    [("Content-Type", CONTENT_TYPE), ("X-Tenant-ID", "acme"), ("Content-Length", str(48 << 20))],
    batch_headers(key="wrong", length=48 << 20) + [("Expect", "100-continue")],
], ids=["wrong-key", "unknown-tenant", "no-authorization", "expect-100"])
def test_unauthenticated_upload_is_answered_before_its_body(tmp_path, headers):
    sink = start_sink(tmp_path)
    try:
        s = connect(sink)
        s.sendall(request_head(headers))  # and not one byte of the 48 MiB announced
        status, h, body = read_response(s)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert h["connection"] == "close"
        assert closed_by_server(s)
        s.close()
        assert sink.rejects == {"unauthorized": 1}
    finally:
        sink.stop()


def _peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def sink_process(tmp_path, request):
    (tmp_path / "keys.toml").write_text('acme = "acme-key"\n')
    extra = getattr(request, "param", [])
    proc = subprocess.Popen([sys.executable, "-m", "ingress", "sink", "--listen", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "d"), "--keys", str(tmp_path / "keys.toml"), *extra],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        yield proc, int(line.split("127.0.0.1:")[1].split("/")[0])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_unauthenticated_uploads_do_not_grow_the_sink(sink_process):
    """Six concurrent 32 MiB uploads with a wrong key: the sink's peak RSS does not take them in."""
    proc, port = sink_process
    size = 32 << 20
    body = b"\0" * size
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD)  # warm up: threads, imports
    c.request("POST", "/", body=b"x", headers=dict(batch_headers(key="wrong", length=1)))
    assert c.getresponse().status == 401
    c.close()
    before = _peak_rss(proc.pid)

    def upload(key):
        s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        try:
            s.sendall(request_head(batch_headers(key=key, length=size)) + body)
            read_response(s)
        except OSError:  # the sink closed on us, as it should: the body is not wanted
            pass
        finally:
            s.close()

    threads = [threading.Thread(target=upload, args=(k,)) for k in ["wrong", "", "x" * 40] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    grown = _peak_rss(proc.pid) - before
    assert grown < size, f"peak RSS grew by {grown >> 20} MiB for unauthenticated uploads"
    assert proc.poll() is None


@pytest.mark.parametrize("sink_process", [["--max-connections", "1", "--header-timeout", "30"]], indirect=True)
def test_cli_limits_take_effect(sink_process):
    proc, port = sink_process
    held = socket.create_connection(("127.0.0.1", port), timeout=GUARD)  # takes the only slot
    s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    status, h, body = read_response(s)
    assert status == 503 and body["error"]["code"] == "busy" and h["retry-after"] == "1"
    s.close()
    held.close()


@pytest.mark.parametrize("flag,value,message", [
    ("--max-connections", "0", "sink max_connections: 0 must be a positive number"),
    ("--header-timeout", "-1", "must be a positive number of seconds"),
    ("--body-timeout", "soon", "is not a number of seconds"),
])
def test_cli_bad_limit_is_one_line_and_exit_2(tmp_path, flag, value, message):
    (tmp_path / "keys.toml").write_text('acme = "k"\n')
    r = subprocess.run([sys.executable, "-m", "ingress", "sink", "--listen", "127.0.0.1:0", "--data-dir",
                        str(tmp_path / "d"), "--keys", str(tmp_path / "keys.toml"), flag, value],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


# -- (b) slow, idle and flooding connections ------------------------------------


def _drip(sock, data, every, out):
    """Send ``data`` a byte at a time; out['cut'] when the server closed before the end."""
    try:
        for i in range(len(data)):
            sock.send(data[i:i + 1])
            out["sent"] = i + 1
            time.sleep(every)
            sock.setblocking(False)
            try:
                got = sock.recv(4096)
            except BlockingIOError:
                got = None
            finally:
                sock.setblocking(True)
            if got is not None:
                out["answer"] = got
                out["cut"] = True
                return
        out["cut"] = False
    except OSError:
        out["cut"] = True


def test_slow_loris_is_cut_while_a_tenant_is_served(tmp_path):
    sink = start_sink(tmp_path, header_timeout=1.0)
    try:
        b = real_batch()
        loris = connect(sink)
        head = request_head(batch_headers(length=len(b.payload)))
        out = {}
        t = threading.Thread(target=_drip, args=(loris, head, 0.2, out))
        t.start()
        stored = []
        conn = http.client.HTTPConnection(*sink.address, timeout=GUARD)
        while t.is_alive() and len(stored) < 200:
            nb = real_batch()
            assert post_ok(conn, nb)[0] == 200
            stored.append(nb.batch_id)
            time.sleep(0.05)
        t.join(GUARD)
        assert not t.is_alive()
        assert out["cut"] is True and out["sent"] < len(head), out  # the server hung up, mid-headers
        assert out.get("answer", b"") == b""  # with no answer
        assert sink.store.seen("acme") == set(stored) and stored
        conn.close()
        loris.close()
    finally:
        sink.stop()


def test_flood_of_idle_and_dripping_connections_past_the_bound(tmp_path):
    bound, flood = 4, 12
    sink = start_sink(tmp_path, max_connections=bound, header_timeout=1.0, idle_timeout=10.0)
    try:
        keep = http.client.HTTPConnection(*sink.address, timeout=GUARD)
        first = real_batch()
        assert post_ok(keep, first) == (200, {"status": "stored", "batch_id": first.batch_id.hex(),
                                              "tenant": "acme", "samples": 3})
        stored = [first.batch_id]
        socks = [connect(sink) for _ in range(flood)]
        outs = [{} for _ in socks]
        drippers = []
        for i, (s, out) in enumerate(zip(socks, outs)):
            if i % 2:  # half drip a request, half send nothing
                t = threading.Thread(target=_drip, args=(s, request_head(batch_headers(length=10)), 0.2, out))
                t.start()
                drippers.append(t)
        # The kept-alive tenant connection holds its slot: it keeps being served meanwhile.
        for _ in range(5):
            b = real_batch()
            assert post_ok(keep, b)[0] == 200
            stored.append(b.batch_id)
        results = []
        for i, s in enumerate(socks):
            if i % 2:
                continue
            try:
                got = s.recv(65536)
            except ConnectionResetError:
                got = b""
            results.append(got)  # a 503 at once, or the header deadline closing it
        for t in drippers:
            t.join(GUARD)
            assert not t.is_alive()
        results += [o.get("answer", b"") if o["cut"] else None for o in outs[1::2]]
        assert None not in results  # every flooding connection ended, none is still held
        busy = [r for r in results if r.startswith(b"HTTP/1.1 503 ")]
        assert all(r == b"" or r.startswith(b"HTTP/1.1 503 ") for r in results), results
        assert len(busy) >= flood - (bound - 1)
        assert all(b'"code": "busy"' in r and b"Retry-After: 1" in r for r in busy)
        assert sink.rejects["busy"] == len(busy)
        for _ in range(3):  # and once the flood is gone, new connections are served again
            b = real_batch()
            c = http.client.HTTPConnection(*sink.address, timeout=GUARD)
            assert post_ok(c, b)[0] == 200
            c.close()
            stored.append(b.batch_id)
        b = real_batch()
        assert post_ok(keep, b)[0] == 200
        stored.append(b.batch_id)
        assert sink.store.seen("acme") == set(stored)
        keep.close()
        for s in socks:
            s.close()
    finally:
        sink.stop()


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(tmp_path):
    sink = start_sink(tmp_path, idle_timeout=0.5)
    try:
        s = connect(sink)
        b = real_batch()
        s.sendall(request_head(batch_headers(length=len(b.payload))) + b.payload)
        status, h, body = read_response(s)
        assert status == 200 and "connection" not in h
        assert closed_by_server(s)  # nothing sent: the sink hangs up once idle_timeout is over
        s.close()
    finally:
        sink.stop()


def test_body_that_stalls_is_answered_408_and_closed(tmp_path):
    sink = start_sink(tmp_path, body_timeout=0.5)
    try:
        s = connect(sink)
        b = real_batch()
        s.sendall(request_head(batch_headers(length=len(b.payload))) + b.payload[:10])
        status, h, body = read_response(s)
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert h["connection"] == "close" and closed_by_server(s)
        s.close()
        assert sink.store.seen("acme") == set()
    finally:
        sink.stop()


# -- (d) a client that vanishes mid-body ----------------------------------------


@pytest.mark.parametrize("abort", [False, True], ids=["close", "reset"])
def test_client_disconnecting_mid_body_is_one_debug_line(tmp_path, caplog, capfd, abort):
    caplog.set_level(logging.DEBUG, logger="ingress.sink")
    sink = start_sink(tmp_path)
    try:
        b = real_batch()
        s = connect(sink)
        s.sendall(request_head(batch_headers(length=len(b.payload))) + b.payload[:len(b.payload) // 2])
        time.sleep(0.2)  # let the sink start on the body
        if abort:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        s.close()

        def gone():
            return [r for r in caplog.records if r.name == "ingress.sink"
                    and ("body bytes" in r.getMessage() or "while reading the body" in r.getMessage())]
        assert wait_for(lambda: gone(), GUARD), [r.getMessage() for r in caplog.records]
        assert len(gone()) == 1 and gone()[0].levelno == logging.DEBUG
        c = http.client.HTTPConnection(*sink.address, timeout=GUARD)  # and it still serves
        assert post_ok(c, b)[0] == 200
        c.close()
    finally:
        sink.stop()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err
    assert sink.store.seen("acme") == {b.batch_id}


# -- every shape of request headers: one documented answer ----------------------

DOCUMENTED = {200: {None}, 400: {"bad_batch", "tenant_mismatch", "idempotency_key_mismatch"},
              401: {"unauthorized"}, 408: {"request_timeout"}, 411: {"length_required"},
              413: {"too_large"}, 415: {"unsupported_media_type"}, 503: {"storage_unavailable", "busy"}}
_MAX_BODY = 1 << 20
_LATIN1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                  max_size=30)
_LENGTHS = ["absent", "exact", "zeros", "spaces", "short", "zero", "over", "huge", "negative", "plus",
            "alpha", "unicode", "empty", "float", "hex", "two-same", "two-differ", "chunked"]


def _header_shapes():
    return st.fixed_dictionaries({
        "length": st.sampled_from(_LENGTHS),
        "auth": st.one_of(st.none(), st.sampled_from(
            ["Bearer acme-key", "bearer acme-key", "BEARER  acme-key ", "Bearer wrong", "Bearer", "Bearer ",
             "Basic YWNtZTphY21lLWtleQ==", "acme-key", "Bearer zeta-key", "Bearer acme-key extra"]), _LATIN1),
        "tenant": st.one_of(st.none(), st.sampled_from(["acme", "zeta", "ghost", "ACME", "", "acme-"]), _LATIN1),
        "ctype": st.one_of(st.none(), st.sampled_from(
            [CONTENT_TYPE, CONTENT_TYPE + "; v=1", CONTENT_TYPE.upper(), "application/json", ""])),
        "body": st.sampled_from(["acme", "zeta", "garbage"]),
        "expect": st.booleans(),
    })


def _c1(shape):
    return any(v and any("\x80" <= ch <= "\x9f" for ch in v) for v in (shape["auth"], shape["tenant"]))


def _expected(shape, payload_len):
    """The status the module's table says, for the checks made from the headers; None: 200 or 400."""
    length = shape["length"]
    valid_lengths = {"exact": payload_len, "zeros": payload_len, "spaces": payload_len,
                     "short": payload_len // 2, "zero": 0, "over": _MAX_BODY + 1, "huge": _MAX_BODY + 1,
                     "two-same": payload_len}
    if length not in valid_lengths:
        return 411, None
    if valid_lengths[length] > _MAX_BODY:
        return 413, None
    if shape["ctype"] is None or shape["ctype"].split(";")[0].strip().lower() != CONTENT_TYPE:
        return 415, None
    auth = shape["auth"]
    scheme, _, key = (auth or "").strip().partition(" ")
    tenant = shape["tenant"]
    tenant = tenant.lstrip(" \t") if tenant is not None else None  # as an HTTP header parser reads it
    if scheme.lower() != "bearer" or (tenant, key.strip()) not in {("acme", "acme-key"), ("zeta", "zeta-key")}:
        return 401, None
    return None, valid_lengths[length]


def _length_headers(length, n):
    return {
        "absent": [], "exact": [str(n)], "zeros": ["000" + str(n)], "spaces": [f"  {n}  "],
        "short": [str(n // 2)], "zero": ["0"], "over": [str(_MAX_BODY + 1)], "huge": ["9" * 40],
        "negative": ["-1"], "plus": [f"+{n}"], "alpha": ["ten"], "unicode": ["\u00b2\u00b3"], "empty": [""],
        "float": [f"{n}.0"], "hex": [hex(n)], "two-same": [str(n), str(n)], "two-differ": [str(n), str(n + 1)],
        "chunked": [str(n)],
    }[length]


def test_every_header_shape_gets_one_documented_answer(tmp_path):
    sink = start_sink(tmp_path, max_body=_MAX_BODY, header_timeout=5.0, body_timeout=5.0)
    bodies = {"acme": real_batch("acme").payload, "zeta": real_batch("zeta").payload,
              "garbage": b"\x00not a batch" * 20}

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shape=_header_shapes())
    def check(shape):
        payload = bodies[shape["body"]]
        headers = [(k, v) for k, v in (("Content-Type", shape["ctype"]), ("X-Tenant-ID", shape["tenant"]),
                                       ("Authorization", shape["auth"])) if v is not None]
        headers += [("Content-Length", v) for v in _length_headers(shape["length"], len(payload))]
        if shape["length"] == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        if shape["expect"]:
            headers.append(("Expect", "100-continue"))
        early, n = _expected(shape, len(payload))
        body = payload if early is not None else (payload * 2)[:n]
        s = connect(sink)
        try:
            s.sendall(request_head(headers) + body)  # a client need not wait for "100 Continue"
            r = http.client.HTTPResponse(s, method="POST")
            r.begin()  # skips a "100 Continue"
            status = r.status
            raw = r.read()
        except (OSError, http.client.HTTPException) as e:
            raise AssertionError(f"no answer for {shape}: {type(e).__name__}: {e}") from None
        finally:
            s.close()
        payload_json = json.loads(raw)
        code = payload_json.get("error", {}).get("code") if isinstance(payload_json, dict) else None
        assert status in DOCUMENTED and code in DOCUMENTED[status], (shape, status, raw)
        if _c1(shape):
            return  # the stdlib's header parser breaks lines at some C1 characters: any documented answer
        if early is not None:
            assert status == early, (shape, status, raw)
        else:
            assert status in (200, 400), (shape, status, raw)
            if status == 200:
                assert shape["body"] == shape["tenant"].lstrip(" \t") and n == len(payload), shape

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shape=_header_shapes().filter(lambda s: s["expect"]))
    def check_continue(shape):
        """With ``Expect: 100-continue`` the answer to the headers comes first: 100, or the refusal."""
        payload = bodies[shape["body"]]
        headers = [(k, v) for k, v in (("Content-Type", shape["ctype"]), ("X-Tenant-ID", shape["tenant"]),
                                       ("Authorization", shape["auth"])) if v is not None]
        headers += [("Content-Length", v) for v in _length_headers(shape["length"], len(payload))]
        if shape["length"] == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Expect", "100-continue"))
        early, n = _expected(shape, len(payload))
        s = connect(sink)
        try:
            s.sendall(request_head(headers))
            f = s.makefile("rb")
            line = f.readline()
            f.close()
        finally:
            s.close()
        want = b"HTTP/1.1 100 " if early is None else b"HTTP/1.1 %d " % early
        assert line.startswith(want) or _c1(shape) and line[:13] in {b"HTTP/1.1 %d " % c for c in DOCUMENTED} | {
            b"HTTP/1.1 100 "}, (shape, line)

    try:
        check()
        check_continue()
    finally:
        sink.stop()
    assert sink.rejects.get("busy", 0) == 0
