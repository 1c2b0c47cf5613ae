"""A second SIGTERM/SIGINT during the graceful stop exits at once; the spool stays consistent.

A real ``ingress run`` sends to a real HTTP receiver that hangs every request, so the
graceful stop's drain waits (``shutdown_timeout`` is long). The first SIGTERM starts
the stop; a second one mid-drain must end the process at once with 128 + signal.
Restarted against a working receiver, the agent then delivers every batch that was
in the spool at the kill: nothing accepted is lost.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ingress.spool import Spool, TenantPolicy

from outputs.fakes import wait_for

from .conftest import HANG, Reply

pytestmark = pytest.mark.integration

OUTPUT = "http-0"


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
interval = "200ms"
shutdown_timeout = "120s"

[agent.collect]
min_interval = "100ms"

[agent.batch]
max_delay = "100ms"

[[tenants]]
id = "acme"
collectors = ["cpu", "memory"]
api_key_env = "INGRESS_TEST_KEY"

[[outputs]]
type = "http"
url = "{url}"
timeout = "120s"
""")
    return cfg


class StderrReader:
    def __init__(self, p: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._run, args=(p,), daemon=True)
        self.t.start()

    def _run(self, p) -> None:
        for raw in p.stderr:
            with self.lock:
                self.lines.append(raw.decode(errors="replace"))

    def has(self, word: str) -> bool:
        with self.lock:
            return any(word in x for x in self.lines)

    def text(self) -> str:
        self.t.join(10)
        with self.lock:
            return "".join(self.lines)


def start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, INGRESS_TEST_KEY="k"))


def spooled(data_dir: Path) -> set[str]:
    policy = TenantPolicy(max_bytes=256 << 20, retention_s=86400, encrypt=False)
    sp = Spool(data_dir, {"acme": policy}, {"acme": [OUTPUT]}, write_mb_s=None, maintain_every_s=None)
    try:
        return {r.batch_id.hex() for r in sp.pending("acme", OUTPUT, limit=1_000_000)}
    finally:
        sp.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_mid_drain_exits_at_once_and_loses_nothing(tmp_path, http_server, sig):
    acked: set[str] = set()
    lock = threading.Lock()
    hang = threading.Event()
    hang.set()

    def behave(req):
        if hang.is_set():
            return HANG
        with lock:
            acked.add(req.headers["idempotency-key"])
        return Reply(200)

    http_server.behave = behave
    cfg = write_config(tmp_path, http_server.url + "/in")
    p = start(cfg)
    err = StderrReader(p)
    try:
        assert wait_for(lambda: err.has('"started"'), 60), err.text()
        assert wait_for(lambda: http_server.hanging >= 1, 60), "the agent never sent"
        p.send_signal(sig)
        assert wait_for(lambda: err.has('"draining"'), 60), err.text()  # the stop waits on the drain
        assert p.poll() is None
        p.send_signal(sig)
        rc = p.wait(timeout=30)  # far less than the 120 s the drain would wait
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = err.text()
    assert rc == 128 + sig, (rc, text)
    assert "Traceback" not in text and '"stopped"' not in text
    assert f"{signal.Signals(sig).name} again during the graceful stop: exiting at once" in text

    pending = spooled(tmp_path / "data")  # the spool opens cleanly after the exit
    assert pending, "nothing was spooled before the kill"

    hang.clear()
    http_server.release()  # let the old hanging handlers go; new requests are answered
    p = start(cfg)
    err = StderrReader(p)
    try:
        ok = wait_for(lambda: pending <= set(acked), 60)
        assert ok, f"spooled batches never delivered after the restart: {sorted(pending - set(acked))}"
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
    assert rc == 0 and "Traceback" not in err.text()
