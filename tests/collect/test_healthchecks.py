"""health collector: a real http.server and real sockets on loopback, process checks on a golden /proc."""
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from collect_helpers import T0, key, samples

from ingress.collect.base import CollectorSettings
from ingress.collect.healthchecks import HealthCollector
from ingress.errors import ConfigError


class Server:
    def __init__(self):
        self.arrived = {"a": threading.Event(), "b": threading.Event()}
        self.release = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                p = self.path
                code = 200
                if p in ("/a", "/b"):
                    # each of the pair waits for the other: both pass only if the checks run concurrently
                    me, other = p[1], "b" if p == "/a" else "a"
                    outer.arrived[me].set()
                    code = 200 if outer.arrived[other].wait(5) else 504
                elif p == "/block":
                    outer.release.wait(10)
                elif p == "/fail":
                    code = 503
                elif p == "/moved":
                    code = 301
                self.send_response(code)
                self.send_header("Content-Length", "2")
                if code == 301:
                    self.send_header("Location", "/elsewhere")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def collector(checks, proc_root="/proc"):
    return HealthCollector(CollectorSettings(proc_root=str(proc_root), options={"checks": checks}))


def test_http_checks_status_and_latency(server):
    c = collector([
        {"name": "ok", "url": server.url("/")},
        {"name": "fail", "url": server.url("/fail")},
        {"name": "fail-expected", "url": server.url("/fail"), "expect_status": [503]},
        {"name": "moved", "url": server.url("/moved"), "expect_status": 301, "timeout": "2s"},
        {"name": "tls-on-plain", "url": f"https://127.0.0.1:{server.port}/", "timeout": "500ms"},
    ])
    try:
        s = samples(c, c.collect(T0))
    finally:
        c.close()
    up = {dict(k[1])["check"]: v for k, v in s.items() if k[0] == "health.up"}
    assert up == {"ok": 1, "fail": 0, "fail-expected": 1, "moved": 1, "tls-on-plain": 0}
    assert s[key("health.http.status", check="ok")] == 200
    assert s[key("health.http.status", check="fail")] == 503
    assert s[key("health.http.status", check="moved")] == 301  # not followed
    assert 0 < s[key("health.latency", check="ok", kind="http")] < 2
    assert key("health.latency", check="tls-on-plain", kind="http") not in s  # no answer: no latency
    assert key("health.http.status", check="tls-on-plain") not in s
    st = c.status()
    assert st["fail"]["error"] == "HTTP status 503" and st["ok"]["error"] is None
    assert "SSL" in st["tls-on-plain"]["error"] or "ssl" in st["tls-on-plain"]["error"].lower()


def test_checks_run_concurrently_and_a_hung_one_does_not_hold_the_pass(server):
    # /a and /b each answer only once the other has arrived: sequential checks would time out.
    c = collector([
        {"name": "a", "url": server.url("/a"), "timeout": 3},
        {"name": "b", "url": server.url("/b"), "timeout": 3},
        {"name": "hung", "url": server.url("/block"), "timeout": "300ms"},
    ])
    try:
        s = samples(c, c.collect(T0))
        # the pass returned while /block is still being served
        assert not server.release.is_set()
        assert s[key("health.up", check="a", kind="http")] == 1
        assert s[key("health.up", check="b", kind="http")] == 1
        assert s[key("health.up", check="hung", kind="http")] == 0
        assert "timed out" in c.status()["hung"]["error"]
    finally:
        c.close()


def test_tcp_checks():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    c = collector([{"name": "open", "tcp": f"127.0.0.1:{srv.getsockname()[1]}", "timeout": 2},
                   {"name": "refused", "tcp": f"127.0.0.1:{dead_port}", "timeout": 2}])
    try:
        s = samples(c, c.collect(T0))
    finally:
        c.close()
        srv.close()
    assert s[key("health.up", check="open", kind="tcp")] == 1
    assert s[key("health.latency", check="open", kind="tcp")] >= 0
    assert s[key("health.up", check="refused", kind="tcp")] == 0
    assert key("health.latency", check="refused", kind="tcp") not in s


def test_process_checks_on_fixture(tree):
    t = tree("procs-a")
    c = collector([{"name": "web", "process": "nginx"}, {"name": "pg", "process": "post*"},
                   {"name": "none", "process": "httpd"}], t.proc)
    s = samples(c, c.collect(T0))
    assert s[key("health.up", check="web", kind="process")] == 1
    assert s[key("health.process.count", check="web")] == 2
    assert s[key("health.process.count", check="pg")] == 1
    assert s[key("health.up", check="none", kind="process")] == 0
    assert s[key("health.process.count", check="none")] == 0
    assert c.status()["none"]["error"] == "no matching process"


@pytest.mark.parametrize("checks, msg", [
    ([{"url": "http://x/"}], r"checks\[0\]\.name: None is not a non-empty string"),
    ([{"name": "a", "url": "ftp://x/"}], r"checks\[0\]\.url: 'ftp://x/' is not an http"),
    ([{"name": "a", "tcp": "x"}], r"checks\[0\]\.tcp: 'x' is not host:port"),
    ([{"name": "a", "tcp": "h:1", "url": "http://h/"}], "exactly one of url, tcp, process"),
    ([{"name": "a", "tcp": "h:1"}, {"name": "a", "tcp": "h:2"}], r"checks\[1\]\.name: 'a' is used"),
    ([{"name": "a", "tcp": "h:1", "timeout": "soon"}], r"checks\[0\]\.timeout: 'soon' is not a duration"),
    ([{"name": "a", "url": "http://h/", "expect_status": 42}], r"expect_status: 42 is not an HTTP status"),
    ([{"name": "a", "tcp": "h:1", "retries": 3}], r"checks\[0\]: unknown key\(s\) retries"),
    ({"name": "a"}, "option checks: .* is not a list"),
])
def test_bad_checks_name_what_is_wrong(checks, msg):
    with pytest.raises(ConfigError, match=msg):
        collector(checks)


def test_ipv6_tcp_target_parses():
    c = collector([{"name": "v6", "tcp": "[::1]:9", "timeout": "100ms"}])
    c.close()
    assert c.checks[0].timeout == pytest.approx(0.1)
