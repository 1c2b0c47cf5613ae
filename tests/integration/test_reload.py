"""Live reload of a real ``ingress run`` (SIGHUP) while data flows to real HTTP receivers on loopback.

One agent goes through: a tenant added, a tenant removed (its spool drains to
the output that still serves it), a tenant's include rules and its output
changed (the output moves to another receiver: the old one is drain-stopped,
the new one started, the spool's ack ledgers keep the position), its
credential file rotated (a new path in the configuration, a new key), and an
invalid file (kept running, one log line, one audit line). Afterwards, per
tenant: samples collected == samples received + samples dropped by a counted
policy, nothing left pending, and no batch id received twice.
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

from ingress import wire

from outputs.fakes import wait_for

from .conftest import Reply, ScriptedServer

pytestmark = pytest.mark.integration


class Receiver:
    """Checks each tenant's bearer key against the ones it accepts; decodes and keeps every batch."""

    def __init__(self, keys: dict[str, set[str]]) -> None:
        self.keys = keys
        self.lock = threading.Lock()
        self.batches: list[tuple[str, str, wire.Batch, str]] = []  # (receiver, tenant, batch, key)
        self.servers = {"a": ScriptedServer(), "b": ScriptedServer(), "c": ScriptedServer()}
        for name, s in self.servers.items():
            s.behave = lambda req, name=name: self.behave(name, req)

    def behave(self, name: str, req) -> Reply:
        tenant = req.headers.get("x-tenant-id", "")
        key = req.headers.get("authorization", "").removeprefix("Bearer ")
        with self.lock:
            if key not in self.keys.get(tenant, ()):
                return Reply(401, b'{"error": "bad key"}')
            b = wire.decode(req.body)
            assert b.tenant == tenant and b.batch_id.hex() == req.headers["idempotency-key"]
            self.batches.append((name, tenant, b, key))
        return Reply(200)

    def url(self, name: str) -> str:
        return self.servers[name].url

    def of(self, tenant: str, where: str | None = None) -> list:
        with self.lock:
            return [x for x in self.batches if x[1] == tenant and (where is None or x[0] == where)]

    def samples(self, tenant: str) -> int:
        return sum(len(b.timestamps) for _, _, b, _ in self.of(tenant))

    def close(self) -> None:
        for s in self.servers.values():
            s.close()


def tenant(tid: str, collectors: str, key_file: Path, extra: str = "") -> str:
    return f"""
[[tenants]]
id = "{tid}"
collectors = [{collectors}]
api_key_file = "{key_file}"
{extra}
"""


def config(tmp: Path, tenants: str, outputs: str) -> str:
    return f"""
[agent]
data_dir = "{tmp / 'data'}"
hostname = "reload-host"
interval = "300ms"
shutdown_timeout = "10s"
[agent.collect]
min_interval = "100ms"
[agent.batch]
max_delay = "100ms"
[control]
listen = "127.0.0.1:0"
{tenants}
{outputs}
"""


def http(name: str, url: str, tenants: str | None = None) -> str:
    scope = f"tenants = [{tenants}]\n" if tenants is not None else ""
    return f"""
[[outputs]]
type = "http"
name = "{name}"
url = "{url}"
{scope}[outputs.retry]
backoff_initial = "50ms"
backoff_max = "200ms"
"""


def key_file(tmp: Path, name: str, value: str) -> Path:
    p = tmp / name
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return p


def events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def reloads(log: Path) -> list[dict]:
    return [e for e in events(log) if e.get("logger") == "ingress.reload"]


def audit(tmp: Path) -> list[dict]:
    p = tmp / "data" / "audit.log"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def sighup_and_wait(p: subprocess.Popen, log: Path) -> dict:
    n = len(reloads(log))
    p.send_signal(signal.SIGHUP)
    assert wait_for(lambda: len(reloads(log)) > n or p.poll() is not None, 60), "no reload line"
    assert p.poll() is None, log.read_text()[-3000:]
    return reloads(log)[n]


@pytest.fixture
def receiver():
    keys = {"acme": {"acme-1"}, "globex": {"globex-1"}, "initech": {"initech-1"}}
    r = Receiver(keys)
    yield r
    r.close()


def test_tenant_switching_over_sighup_loses_and_duplicates_nothing(tmp_path, receiver):
    acme1 = key_file(tmp_path, "acme-1.key", "acme-1")
    globex = key_file(tmp_path, "globex.key", "globex-1")
    initech = key_file(tmp_path, "initech.key", "initech-1")
    cfg = tmp_path / "agent.toml"
    t_acme = tenant("acme", '"cpu", "memory"', acme1)
    t_globex = tenant("globex", '"memory"', globex)
    # "web" (receiver a) serves every tenant, so a removed one still drains to it; "acme-out"
    # (receiver b, then c) serves acme alone.
    cfg.write_text(config(tmp_path, t_acme + t_globex,
                          http("web", receiver.url("a")) + http("acme-out", receiver.url("b"), '"acme"')))
    log = tmp_path / "agent.log"
    with open(log, "ab") as logf:
        p = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=logf)
    try:
        assert wait_for(lambda: receiver.of("acme") and receiver.of("globex"), 60), log.read_text()[-3000:]

        # 1. add a tenant
        cfg.write_text(config(tmp_path, t_acme + t_globex + tenant("initech", '"memory"', initech),
                              http("web", receiver.url("a")) + http("acme-out", receiver.url("b"), '"acme"')))
        r = sighup_and_wait(p, log)
        assert r["msg"] == "configuration reloaded" and r["tenants_added"] == ["initech"], r
        assert wait_for(lambda: receiver.of("initech"), 30)

        # 2. remove one: no longer collected, its spool drains to "web", which still serves it
        cfg.write_text(config(tmp_path, t_acme + tenant("initech", '"memory"', initech),
                              http("web", receiver.url("a")) + http("acme-out", receiver.url("b"), '"acme"')))
        r = sighup_and_wait(p, log)
        assert r["tenants_removed"] == ["globex"], r
        removed_ns = _ts_ns(r["ts"])

        # 3. change acme's include rules and its output (acme-out moves to receiver c), and
        # 4. rotate its credential: a new key in a new file (the old key is no longer accepted)
        acme2 = key_file(tmp_path, "acme-2.key", "acme-2")
        receiver.keys["acme"] = {"acme-1", "acme-2"}
        t_acme2 = tenant("acme", '"cpu", "memory"', acme2, 'include = ["memory.*"]')
        cfg.write_text(config(tmp_path, t_acme2 + tenant("initech", '"memory"', initech),
                              http("web", receiver.url("a")) + http("acme-out", receiver.url("c"), '"acme"')))
        r = sighup_and_wait(p, log)
        assert r["msg"] == "configuration reloaded", r
        assert set(r["tenants_changed"]["acme"]) == {"include", "api_key_file"}, r
        assert r["outputs_changed"] == {"acme-out": ["values"]}, r
        switched_ns = _ts_ns(r["ts"])
        receiver.keys["acme"] = {"acme-2"}
        assert wait_for(lambda: any(x[3] == "acme-2" for x in receiver.of("acme", "c")), 30)

        # 5. an invalid file: the agent keeps running with the old configuration
        good = cfg.read_text()
        cfg.write_text(good + "\n[[tenants]]\nid = 'Bad!'\n")
        r = sighup_and_wait(p, log)
        assert r["level"] == "error" and "reload refused" in r["msg"] and "Bad!" in r["msg"], r
        seen = len(receiver.of("acme", "c"))
        assert wait_for(lambda: len(receiver.of("acme", "c")) > seen + 2, 30), "stopped delivering"
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait(60)
    assert p.returncode == 0, log.read_text()[-3000:]
    ev = events(log)
    assert not any("Traceback" in json.dumps(e) for e in ev)
    bad_lines = [e for e in ev if e.get("level") == "error"]
    assert len(bad_lines) == 1 and "reload refused" in bad_lines[0]["msg"], bad_lines
    au = [a for a in audit(tmp_path) if a["action"] == "config.reload"]
    assert [a["outcome"] for a in au] == ["ok", "ok", "ok", "failed"], au
    assert au[0]["changes"]["tenants"]["added"] == ["initech"]
    assert "Bad!" in au[3]["reason"]

    # Accounting per tenant, from the agent's own final lines and what the receivers hold.
    stopped = next(e for e in ev if e.get("msg") == "stopped")
    final = next(e for e in ev if e.get("msg") == "status" and e.get("final"))
    for tid in ("acme", "globex", "initech"):
        collected = stopped["samples"][tid]
        fig = final["tenants"][tid]
        assert fig["pending"] == 0, (tid, fig)
        kept = collected - fig["dropped"]
        got = {w: sum(len(b.timestamps) for _, _, b, _ in receiver.of(tid, w)) for w in "abc"}
        assert got["a"] == kept, (tid, collected, fig, got)  # web serves every tenant
        assert got["b"] + got["c"] == (kept if tid == "acme" else 0), (tid, collected, fig, got)
    # Nothing duplicated: a batch id reaches each receiver once, and acme-out's batches reach
    # b (before the switch) or c (after), never both.
    for w in "abc":
        ids = [b.batch_id for where, _, b, _ in receiver.batches if where == w]
        assert len(ids) == len(set(ids)), w
    b_ids = {b.batch_id for _, _, b, _ in receiver.of("acme", "b")}
    c_ids = {b.batch_id for _, _, b, _ in receiver.of("acme", "c")}
    assert b_ids and c_ids and not b_ids & c_ids
    # globex is not collected after its removal; what it held then was drained (pending 0 above)
    assert not [ts for _, _, b, _ in receiver.of("globex") for _, ts in _samples(b) if ts > removed_ns]
    # acme's new include rules hold for every sample collected after the switch
    late = [name for _, _, b, _ in receiver.of("acme") for (name, _), ts in _samples(b) if ts > switched_ns]
    assert late and all(n.startswith("memory.") for n in late), sorted(set(late))[:10]


def _samples(b: wire.Batch):
    for i, ts in zip(b.series_index.tolist(), b.timestamps.tolist()):
        yield b.series[i], ts


def _ts_ns(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)
