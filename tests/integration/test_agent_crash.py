"""The whole agent killed with SIGKILL mid-stream and restarted: nothing the spool accepted is lost.

The real ``ingress run`` runs in a subprocess against a real HTTP receiver on
loopback. "Accepted" means appended to the spool (fsync per batch, the
default), so after the kill the spool on disk is the record of what the agent
promised to deliver: every batch in it must reach the receiver once the agent
is back (duplicates are allowed and dropped by batch id; a missing one is not).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ingress.spool import Spool, TenantPolicy

from outputs.fakes import wait_for

from .conftest import Reply

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex")
OUTPUT = "http-0"  # the default name of the first output


class Receiver:
    """Answers 503 for the tenants in ``down``, 200 otherwise; remembers what it acknowledged."""

    def __init__(self, server) -> None:
        self.server = server
        self.down: set[str] = set(TENANTS)
        self.acked: dict[str, set[str]] = {t: set() for t in TENANTS}
        self.lock = threading.Lock()
        server.behave = self.behave

    def behave(self, req):
        tenant = req.headers.get("x-tenant-id", "")
        if tenant in self.down:
            return Reply(503, b'{"error": {"code": "unavailable", "message": "down for the test"}}')
        with self.lock:
            self.acked.setdefault(tenant, set()).add(req.headers["idempotency-key"])
        return Reply(200)

    def seen(self, tenant: str) -> set[str]:
        with self.lock:
            return set(self.acked.get(tenant, ()))


def write_config(tmp_path: Path, url: str, extra_tenant: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "crash-host"
interval = "200ms"
shutdown_timeout = "2s"

[agent.collect]
min_interval = "100ms"

[agent.batch]
max_delay = "100ms"

[control]
listen = "127.0.0.1:0"

[[tenants]]
id = "acme"
collectors = ["cpu", "memory"]
api_key_env = "INGRESS_TEST_KEY"
{extra_tenant}
[[tenants]]
id = "globex"
collectors = ["memory"]
api_key_env = "INGRESS_TEST_KEY"

[[outputs]]
type = "http"
url = "{url}"
[outputs.retry]
backoff_initial = "50ms"
backoff_max = "300ms"
[outputs.breaker]
failures = 3
reset = "300ms"
""")
    return cfg


def start_agent(cfg: Path) -> subprocess.Popen:
    env = dict(os.environ, INGRESS_TEST_KEY="k")
    return subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def stop_agent(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode(errors="replace")


def kill9(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)


def spooled(data_dir: Path) -> dict[str, set[str]]:
    """Batch ids the spool holds unacknowledged for the output, read from disk after the kill.

    The agent is dead, so its lock is free: this opens the spool as the restarted
    agent will (same recovery), without maintenance or throttling.
    """
    policy = TenantPolicy(max_bytes=256 << 20, retention_s=86400, encrypt=False)
    sp = Spool(data_dir, {t: policy for t in TENANTS}, {t: [OUTPUT] for t in TENANTS},
               write_mb_s=None, maintain_every_s=None)
    try:
        return {t: {r.batch_id.hex() for r in sp.pending(t, OUTPUT, limit=1_000_000)} for t in TENANTS}
    finally:
        sp.close()


def spool_stats(cfg: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "ingress", "spool", "stats", "-c", str(cfg), "--json"],
                         capture_output=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_sigkill_mid_stream_then_restart_delivers_every_spooled_batch(tmp_path, http_server):
    rx = Receiver(http_server)
    rx.down = set()  # first everything flows
    cfg = write_config(tmp_path, http_server.url)
    data = tmp_path / "data"
    agent = start_agent(cfg)
    try:
        assert wait_for(lambda: all(len(rx.seen(t)) >= 3 for t in TENANTS), 60), "nothing delivered"
        rx.down = {"acme", "globex"}  # the receiver fails: batches pile up in the spool
        first_down = {t: len(rx.seen(t)) for t in TENANTS}
        assert wait_for(lambda: spool_stats(cfg)["acme"]["batches_pending"] >= 5, 60)
        rx.down = {"acme"}  # globex recovers, acme stays down
        assert wait_for(lambda: len(rx.seen("globex")) > first_down["globex"] + 2, 60)
    finally:
        kill9(agent)
    before_kill = {t: rx.seen(t) for t in TENANTS}
    pending = spooled(data)
    assert len(pending["acme"]) >= 5  # a real backlog was on disk at the kill

    rx.down = set()
    agent = start_agent(cfg)
    try:
        ok = wait_for(lambda: all(pending[t] <= rx.seen(t) for t in TENANTS), 60)
        missing = {t: sorted(pending[t] - rx.seen(t)) for t in TENANTS}
        assert ok, f"spooled batches never delivered after the restart: {missing}"
        # The restarted agent goes on collecting and delivering new batches too.
        assert wait_for(lambda: len(rx.seen("acme") - before_kill["acme"] - pending["acme"]) >= 1, 60)
    finally:
        err = stop_agent(agent)
    assert "Traceback" not in err, err
    st = spool_stats(cfg)
    assert all(st[t]["samples_pending"] == 0 for t in TENANTS), st


def test_corrupt_spool_tail_after_a_kill_is_counted_and_the_rest_delivered(tmp_path, http_server):
    rx = Receiver(http_server)
    rx.down = {"acme", "globex"}
    cfg = write_config(tmp_path, http_server.url)
    data = tmp_path / "data"
    agent = start_agent(cfg)
    try:
        assert wait_for(lambda: spool_stats(cfg)["acme"]["batches_pending"] >= 5, 60)
    finally:
        kill9(agent)
    pending = spooled(data)
    # A torn write at the tail: half a record header and garbage after the last record.
    segs = sorted((data / "spool" / "acme").glob("*.seg"))
    assert segs
    with open(segs[-1], "ab") as f:
        f.write(b"\x00INGS\x7f" + os.urandom(37))

    rx.down = set()
    agent = start_agent(cfg)
    try:
        ok = wait_for(lambda: all(pending[t] <= rx.seen(t) for t in TENANTS), 60)
        assert ok, {t: sorted(pending[t] - rx.seen(t)) for t in TENANTS}
    finally:
        err = stop_agent(agent)
    assert "Traceback" not in err, err
    st = spool_stats(cfg)
    assert st["acme"]["torn_tails"] == 1 and st["globex"]["torn_tails"] == 0, st
    assert all(st[t]["samples_pending"] == 0 for t in TENANTS), st


def test_a_failing_tenant_does_not_cut_short_another_tenants_last_drain(tmp_path, http_server):
    # Both backends go down and batches pile up; globex's comes back (slowly: 200 ms a
    # batch) while acme's stays down, and the agent is stopped while globex is still
    # catching up. A graceful stop must let globex take its whole backlog (within the
    # shutdown timeout) although acme is failing; acme's batches stay for the next start.
    import time

    rx = Receiver(http_server)
    rx.down = {"acme", "globex"}
    plain = rx.behave

    def slow_globex(req):
        if req.headers.get("x-tenant-id") == "globex" and "globex" not in rx.down:
            time.sleep(0.2)
        return plain(req)

    http_server.behave = slow_globex
    cfg = write_config(tmp_path, http_server.url)
    cfg.write_text(cfg.read_text().replace('shutdown_timeout = "2s"', 'shutdown_timeout = "30s"'))
    agent = start_agent(cfg)
    try:
        assert wait_for(lambda: spool_stats(cfg)["globex"]["batches_pending"] >= 20, 60)
        rx.down = {"acme"}
        assert wait_for(lambda: len(rx.seen("globex")) >= 1, 60), "globex never recovered"
    finally:
        err = stop_agent(agent)
    assert agent.returncode == 0 and "Traceback" not in err, err
    st = spool_stats(cfg)
    assert st["globex"]["batches_pending"] == 0, st["globex"]
    assert st["acme"]["batches_pending"] >= 20, st["acme"]
