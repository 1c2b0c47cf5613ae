"""Helpers of the control-plane tests: a real agent process, a loopback HTTP client, the keys CLI."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def get(url: str, path: str, key: str | None = None, method: str = "GET", timeout: float = 30.0):
    """``(status, headers, body)`` of one request to the control API at ``url``."""
    hostport = url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(url: str, path: str, key: str | None = None):
    status, _, body = get(url, path, key)
    return status, json.loads(body)


def ingress(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "ingress", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    if check:
        assert p.returncode == 0, p.stderr
    return p


def create_key(cfg: Path, tenant: str, *extra: str) -> tuple[str, str]:
    """(key id, full key) from `ingress keys create`: the key is the last word of the last line."""
    out = ingress("keys", "create", "--tenant", tenant, "-c", str(cfg), *extra).stdout
    key = out.strip().splitlines()[-1].split()[-1]
    return key.split("_")[1], key


def wait_for(pred, timeout: float = 60.0, step: float = 0.1, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


BASE = """
[agent]
data_dir = "{data}"
interval = "1s"
[agent.batch]
max_delay = "200ms"
[control]
listen = "127.0.0.1:0"
{control}
[[tenants]]
id = "acme"
{acme}
[[tenants]]
id = "globex"
{globex}
{outputs}
"""


class AgentProc:
    """``ingress run`` in a subprocess; ``url`` is the control API address from its `started` line."""

    def __init__(self, tmp: Path, *, control: str = "", acme: str = "", globex: str = "",
                 outputs: str = '[[outputs]]\ntype = "file"\n', env: dict | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.data = tmp / "data"
        self.cfg = tmp / "agent.toml"
        self.cfg.write_text(BASE.format(data=self.data, control=control, acme=acme, globex=globex,
                                        outputs=outputs))
        self.log = tmp / "agent.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "AgentProc":
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(self.cfg)],
                                     stderr=self._logf, stdout=subprocess.DEVNULL, env=self.env)

        def started():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            for line in self.log.read_text().splitlines():
                if '"msg":"started"' in line:
                    return json.loads(line)
            return None

        ev = wait_for(started, 90, what="the agent's started line")
        self.url = ev["control"]
        return self

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def audit(self) -> list[dict]:
        p = self.data / "audit.log"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode


@pytest.fixture
def agent_factory(tmp_path):
    made: list[AgentProc] = []

    def make(**kw) -> AgentProc:
        a = AgentProc(tmp_path / f"a{len(made)}", **kw)

        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


class Backend:
    """A real HTTP receiver on loopback: 200 for every POST, counts them; can go away and come back."""

    def __init__(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.posts = 0
        self.auth_seen: set[str] = set()
        self.server: ThreadingHTTPServer | None = None
        self.up()

    def up(self) -> None:
        backend = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                backend.posts += 1
                backend.auth_seen.add(self.headers.get("Authorization", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.down()
