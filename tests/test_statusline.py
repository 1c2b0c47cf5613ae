"""The status line: every interval and at stop, for every output type, per tenant and per output."""
import logging
import socket

from ingress import config
from ingress.agent import Agent
from ingress.control import statusline


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_status_lines_name_every_tenant_and_every_output_state(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("ACME_KEY_T", "secret-key-1")
    cfg = config.loads(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
interval = "1s"
[agent.batch]
max_delay = "200ms"
[agent.limits]
memory_mb = 65536  # in process: the memory guard would read the test runner's RSS (chDB and all)
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["cpu"]
api_key_env = "ACME_KEY_T"
[[tenants]]
id = "globex"
collectors = ["memory"]
[[outputs]]
type = "file"
name = "disk"
[[outputs]]
type = "http"
name = "web"
url = "http://127.0.0.1:{closed_port()}/"
tenants = ["acme"]
[outputs.breaker]
failures = 1
reset = "30s"
""")
    agent = Agent(cfg)
    agent.start()
    agent.__dict__["_statusline"] = statusline.StatusLine(agent, interval_s=0.3)
    caplog.set_level(logging.INFO, logger="ingress.status")
    try:
        agent.run(duration=4.0)  # room for two passes of each collector on a loaded machine
    finally:
        agent.stop()
    lines = [r for r in caplog.records if r.name == "ingress.status" and r.getMessage() == "status"]
    periodic = [r.fields for r in lines if not r.fields["final"]]
    final = [r.fields for r in lines if r.fields["final"]]
    assert len(periodic) >= 2 and len(final) == 1
    f = final[0]
    assert set(f["tenants"]) == {"acme", "globex"}
    for t in ("acme", "globex"):
        assert set(f["tenants"][t]) == {"collected", "sent", "pending", "dropped", "dead_letters"}
        assert f["tenants"][t]["collected"] > 0
    assert f["tenants"]["globex"]["sent"]["disk"] > 0 and "web" not in f["tenants"]["globex"]["sent"]
    assert f["outputs"]["disk"] == {"acme": "ok", "globex": "ok"}
    assert f["outputs"]["web"]["acme"] in ("open", "half_open")  # unreachable: breaker opened
    assert f["tenants"]["acme"]["pending"] > 0  # held in the spool for web
    assert any(r.levelno == logging.WARNING for r in lines)  # a pair that is not ok makes it a warning
    assert "secret-key-1" not in caplog.text
