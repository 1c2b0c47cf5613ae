"""`ingress deadletter list|replay|purge` against dead letters a real HTTP server caused.

Replay goes through the spool: while an agent holds the spool the command queues
the batch and the running delivery loop puts it back (and sends it); with no
agent running the command puts it back itself, for that output only.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingress import cli, wire
from ingress.spool import Spool, TenantPolicy
from ingress.outputs import deadletter as dl
from ingress.outputs.breaker import CircuitBreaker
from ingress.outputs.delivery import Delivery
from ingress.outputs.http import HttpOutput
from ingress.outputs.retry import Backoff

from outputs.fakes import wait_for

from .conftest import Reply

pytestmark = pytest.mark.integration


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "ingress", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def batch(tenant="acme"):
    bid = os.urandom(16)
    now = time.time_ns()
    ts = np.array([now, now + 1_000_000_000], np.int64)
    payload = wire.encode(tenant, "web-1", [("cpu.usage", {"core": "0"})], np.zeros(2, np.uint32), ts,
                          np.array([1.0, 2.0]), bid)
    return bid, payload


def config(tmp_path, url):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
[[tenants]]
id = "acme"
api_key_env = "NOPE_UNUSED"
[tenants.spool]
encrypt = true
[[outputs]]
type = "http"
name = "h"
url = "{url}"
[[outputs]]
type = "file"
name = "other"
""")
    return cfg


def open_spool(data):
    return Spool(data, {"acme": TenantPolicy(encrypt=True)}, {"acme": ["h", "other"]})


def deliver(spool, server, data):
    out = HttpOutput("h", server.url, credential=lambda t: "k")
    d = Delivery(spool, [out], None, tenants=["acme"], data_dir=data, host="web-1", idle_poll_s=0.05,
                 backoff=lambda: Backoff(base_s=0.05, cap_s=0.2),
                 breaker_factory=lambda: CircuitBreaker(5, 0.2))
    d.start()
    return d, out


def test_list_replay_while_running_and_stopped_then_purge(http_server, tmp_path):
    data = tmp_path / "data"
    cfg = config(tmp_path, http_server.url)
    http_server.behave = lambda req: Reply(400, b'{"error": {"code": "bad_batch"}}')
    sp = open_spool(data)
    ids = []
    for _ in range(3):
        bid, payload = batch()
        ref = sp.append("acme", bid, payload, 2, time.time_ns())
        sp.ack("acme", "other", ref)  # the other output already has them
        ids.append(bid.hex())
    d, out = deliver(sp, http_server, data)
    try:
        assert wait_for(lambda: len(dl.scan(data, "acme")) == 3, 30)
        code, stdout, err = run_cli("deadletter", "list", "-c", str(cfg), "--json")
        assert code == 0, err
        rows = [json.loads(x) for x in stdout.splitlines()]
        assert sorted(r["batch_id"] for r in rows) == sorted(ids)
        for r in rows:
            assert r["tenant"] == "acme" and r["output"] == "h" and r["encrypted"] is True
            assert r["reason"].startswith("HTTP 400") and r["size"] > 0 and r["time"] > 0
        code, table, _ = run_cli("deadletter", "list", "-c", str(cfg))
        assert code == 0 and "batch id" in table and all(i in table for i in ids)

        # The agent holds the spool: the command queues, the running delivery loop replays.
        http_server.behave = lambda req: Reply()
        code, stdout, err = run_cli("deadletter", "replay", "-c", str(cfg), "--batch", ids[0])
        assert code == 0 and "queued" in stdout, err
        assert wait_for(lambda: ids[0] in {r.headers["idempotency-key"] for r in http_server.requests}, 30)
        assert wait_for(lambda: ids[0] not in {x.batch_id for x in dl.scan(data, "acme")}, 30)
    finally:
        d.stop(5)
        out.close()
        sp.close()

    # No agent: the command puts them back into the spool itself, for output h only.
    code, stdout, err = run_cli("deadletter", "replay", "-c", str(cfg), "--tenant", "acme")
    assert code == 0 and "2 dead letters back in the spool" in stdout, err
    assert dl.scan(data, "acme") == []
    sp = open_spool(data)
    try:
        assert sorted(r.batch_id.hex() for r in sp.pending("acme", "h", limit=10)) == sorted(ids[1:])
        assert list(sp.pending("acme", "other", limit=10)) == []
        d, out = deliver(sp, http_server, data)
        try:
            assert wait_for(lambda: not list(sp.pending("acme", "h", limit=10)), 30)
        finally:
            d.stop(5)
            out.close()
    finally:
        sp.close()
    assert set(ids) <= {r.headers["idempotency-key"] for r in http_server.requests}

    # purge: removed, audited with who did it
    dl.write(data, "acme", "h", bytes(16), b"junk", {"time": 1.0, "reason": "HTTP 400"})
    code, stdout, _ = run_cli("deadletter", "purge", "-c", str(cfg), "--tenant", "acme")
    assert code == 0 and "1 dead letters removed" in stdout and dl.scan(data) == []
    audit = [json.loads(x) for x in (data / "audit.log").read_text().splitlines()]
    acts = [(e["action"], e["outcome"]) for e in audit]
    assert acts.count(("deadletter_replayed", "ok")) == 2  # by the command (the running pick-up had no log)
    purged = [e for e in audit if e["action"] == "deadletter_purged"]
    assert len(purged) == 1 and purged[0]["actor"].startswith("user:") and purged[0]["batch_id"] == "00" * 16


def test_a_dead_letter_of_another_tenant_is_not_replayed_under_this_one(tmp_path):
    data = tmp_path / "data"
    cfg = config(tmp_path, "http://127.0.0.1:9/")
    data.mkdir(mode=0o700)
    bid, payload = batch("globex")  # a globex batch planted in acme's area
    dl.write(data, "acme", "h", bid, payload, {"time": 1.0, "reason": "x"})
    code, stdout, err = run_cli("deadletter", "replay", "-c", str(cfg))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "not replayed" in err and "Traceback" not in err
    assert [x.batch_id for x in dl.scan(data)] == [bid.hex()] and not dl.scan(data)[0].replay


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["list", "replay", "purge"]), st.sampled_from(["--tenant", "--batch"]),
       st.text(min_size=1, max_size=40).filter(lambda s: not s.startswith("-")))
def test_bad_selectors_are_one_line_never_a_traceback(tmp_path, capsys, command, flag, value):
    cfg = config(tmp_path, "http://127.0.0.1:9/")
    try:
        code = cli.main(["deadletter", command, "-c", str(cfg), flag, value])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code in (0, 2)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and (flag in err or "argument" in err)
    assert not (tmp_path / "outside").exists()
