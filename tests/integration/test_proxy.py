"""HTTP-based outputs and URL health checks through a real forward proxy on loopback.

The proxy below is a small real one: ``CONNECT host:port`` opens a tunnel and
copies bytes both ways; an absolute-form request (``POST http://host:port/path``)
is forwarded to its target and the answer copied back. It records what it saw.
"""
from __future__ import annotations

import base64
import os
import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st

from ingress.proxy import proxy_for
from ingress.outputs.http import HttpOutput

from .test_http import _tls_sink, batch, pki, send  # noqa: F401 - pki is a fixture

pytestmark = pytest.mark.integration


class ForwardProxy:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, str, dict]] = []  # (method, target, headers)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _head(c: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, c: socket.socket) -> None:
        data = self._head(c)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        self.seen.append((method, target, headers))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up = socket.create_connection((host, int(port)))
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # absolute form: forward the request, with the path only, to the target
            hostport = target.split("://", 1)[1].split("/", 1)[0]
            path = "/" + target.split("://", 1)[1].split("/", 1)[1] if "/" in target.split("://", 1)[1] else "/"
            host, port = hostport.rsplit(":", 1)
            up = socket.create_connection((host, int(port)))
            fwd = [f"{method} {path} HTTP/1.1"] + [ln for ln in lines[1:] if not ln.lower().startswith("proxy-")]
            up.sendall(("\r\n".join(fwd) + "\r\n\r\n").encode("latin-1") + rest)
        t = threading.Thread(target=self._pipe, args=(up, c), daemon=True)
        t.start()
        self._pipe(c, up)
        t.join(10)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy():
    p = ForwardProxy()
    yield p
    p.close()


def test_http_output_goes_through_http_proxy(http_server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    out = HttpOutput("h", http_server.url + "/in", credential=lambda t: "k1")
    assert send(out, batch()) is None
    out.close()
    [(method, target, headers)] = proxy.seen
    assert method == "POST" and target == http_server.url + "/in"
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    [req] = http_server.requests
    assert req.path == "/in" and "proxy-authorization" not in req.headers


def test_https_output_tunnels_with_connect_and_still_verifies_the_target(tmp_path, pki, proxy, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sink = _tls_sink(tmp_path, pki)
    try:
        from ingress import wire
        from ingress.outputs.base import OutgoingBatch

        bid = os.urandom(16)
        real = OutgoingBatch("acme", bid, wire.encode("acme", "web-1", [("cpu.user", {})], [0], [1], [1.0], bid),
                             1, "web-1")
        out = HttpOutput("h", sink.url, credential=lambda t: "k1", ca_file=str(pki / "ca.pem"))
        assert send(out, real) is None
        out.close()
        host_port = sink.url.split("://")[1].rstrip("/")
        assert [(m, t) for m, t, _ in proxy.seen] == [("CONNECT", host_port)]
        assert len(sink.store.seen("acme")) == 1
        # without the CA the target's certificate is refused: TLS ends at the target, not the proxy
        out = HttpOutput("h", sink.url, credential=lambda t: "k1")
        err = send(out, batch())
        assert err is not None and "certificate" in str(err).lower()
        out.close()
    finally:
        sink.stop()


def test_no_proxy_and_proxy_false_connect_directly(http_server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.0/8")
    out = HttpOutput("h", http_server.url + "/in", credential=lambda t: "k1")
    assert send(out, batch()) is None
    out.close()
    monkeypatch.delenv("NO_PROXY")
    out = HttpOutput("h", http_server.url + "/in", credential=lambda t: "k1", proxy=False)
    assert send(out, batch()) is None
    out.close()
    assert proxy.seen == [] and len(http_server.requests) == 2


def test_a_bad_proxy_variable_keeps_the_batch_and_names_the_variable(http_server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "https://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    out = HttpOutput("h", http_server.url + "/in", credential=lambda t: "k1")
    err = send(out, batch())
    out.close()
    assert err is not None and "HTTP_PROXY: only http:// proxies are supported" in str(err)
    assert not http_server.requests


def test_url_health_check_goes_through_the_proxy(proxy, monkeypatch):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ingress.collect.healthchecks import parse_checks

    class Health(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/health"
    try:
        monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        [check] = parse_checks([{"name": "api", "url": url}])
        ok, _latency, status = check.run()
        assert ok and status == 200, check.last_error
        assert [(m, t) for m, t, _ in proxy.seen] == [("GET", url)]
    finally:
        srv.shutdown()


@pytest.mark.parametrize("no_proxy, host, port, bypass", [
    ("*", "example.com", 443, True),
    ("example.com", "api.example.com", 443, True),
    (".example.com", "example.com", 443, True),
    ("example.com", "notexample.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
    ("example.com:8443", "example.com", 443, False),
    ("example.com:8443", "example.com", 8443, True),
    ("[::1]", "::1", 80, True),
    ("", "example.com", 80, False),
])
def test_no_proxy_rules(no_proxy, host, port, bypass):
    env = {"HTTPS_PROXY": "proxy:3128", "HTTP_PROXY": "proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy_for("https", host, port, env) is None) == bypass


def test_lower_case_wins_and_port_defaults_to_80():
    env = {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2", "HTTP_PROXY": "up-plain"}
    assert proxy_for("https", "t", 443, env)[:2] == ("low", 1)
    assert proxy_for("http", "t", 80, env)[:2] == ("up-plain", 80)
    assert proxy_for("http", "t", 80, {}) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20), st.integers(1, 65535))
def test_any_environment_gives_a_proxy_none_or_a_value_error_naming_the_variable(value, no_proxy, host, port):
    env = {"HTTPS_PROXY": value, "NO_PROXY": no_proxy}
    try:
        got = proxy_for("https", host or "h", port, env)
    except ValueError as e:
        assert str(e).startswith("HTTPS_PROXY: ")
        return
    assert got is None or (isinstance(got[0], str) and 1 <= got[1] <= 65535)
