"""A backend that refuses the tenant's credential (401/403), end to end with a real agent.

The agent runs as `ingress run` against a real loopback HTTP receiver that
answers 401 (or 403) to the old key and 200 to the rotated one. Nothing may be
dead-lettered; /readyz must say ``credential_refused`` (503) and turn 200 once
the key file is rotated; every batch the receiver refused must arrive after
the rotation; the audit log, the metrics and one warning line must tell it.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_helpers import get, get_json, ingress, wait_for


class KeyedBackend:
    """200 for ``Bearer <good>``, ``status`` for anything else; records batch ids by outcome."""

    def __init__(self, good: str, status: int) -> None:
        self.good, self.status = good, status
        self.accepted: set[str] = set()
        self.refused: set[str] = set()
        self.refusals = 0  # requests refused (a probe resends the same batch)
        self.lock = threading.Lock()
        backend = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bid = self.headers.get("Idempotency-Key", "")
                ok = self.headers.get("Authorization") == f"Bearer {backend.good}"
                with backend.lock:
                    (backend.accepted if ok else backend.refused).add(bid)
                    backend.refusals += not ok
                body = b"" if ok else b'{"error": {"code": "unauthorized", "message": "unknown key"}}'
                self.send_response(200 if ok else backend.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def metric(url: str, name: str, **labels) -> float | None:
    _, _, body = get(url, "/metrics")
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credential_holds_the_pair_until_the_key_file_is_rotated(agent_factory, tmp_path, status):
    backend = KeyedBackend("new-key", status)
    keyfile = tmp_path / "acme.key"
    keyfile.write_text("old-key\n")
    keyfile.chmod(0o600)
    keyfile.chmod(0o600)
    outputs = f"""
[[outputs]]
type = "http"
name = "web"
url = "{backend.url}"
tenants = ["acme"]
[outputs.breaker]
reset = "1s"
[[outputs]]
type = "file"
tenants = ["globex"]
"""
    a = agent_factory(acme=f'api_key_file = "{keyfile}"\ncollectors = ["cpu", "memory"]', outputs=outputs)
    try:
        a.start()

        def refused_reason():
            code, doc = get_json(a.url, "/readyz")
            hits = [r for r in doc["reasons"] if r["reason"] == "credential_refused"]
            return (code, hits[0]) if hits else None

        code, reason = wait_for(refused_reason, 60, what="readiness to report credential_refused")
        assert code == 503 and reason["tenant"] == "acme" and reason["output"] == "web"
        assert reason["status"] == status and "old-key" not in json.dumps(reason)
        # Probes keep coming (the credential is re-read each time) and nothing is set aside.
        n = backend.refusals
        wait_for(lambda: backend.refusals > n, 60, what="another refused probe")
        assert metric(a.url, "ingress_output_credential_refused", tenant="acme", output="web") == 1.0
        assert metric(a.url, "ingress_credential_refusals_total", tenant="acme", output="web") >= 1
        assert metric(a.url, "ingress_batches_dead_lettered_total", tenant="acme", output="web") == 0
        assert not (a.data / "deadletter").exists()
        refused_before = set(backend.refused)

        keyfile.write_text("new-key\n")  # rotated in place: the next probe reads it
        wait_for(lambda: get(a.url, "/readyz")[0] == 200, 60, what="readiness back to 200")
        wait_for(lambda: refused_before <= backend.accepted, 60, what="every refused batch delivered")
        assert metric(a.url, "ingress_output_credential_refused", tenant="acme", output="web") == 0.0
    finally:
        assert a.stop() == 0
        backend.close()

    assert not (a.data / "deadletter").exists()
    stats = json.loads(ingress("spool", "stats", "-c", str(a.cfg), "--json").stdout)
    assert stats["acme"]["dead_letters"] == 0
    audit = a.audit()
    refused = [e for e in audit if e["action"] == "credential_refused"]
    assert len(refused) == 1 and refused[0]["tenant"] == "acme" and refused[0]["output"] == "web"
    assert refused[0]["outcome"] == "refused" and refused[0]["status"] == status
    assert any(e["action"] == "credential_accepted" and e["tenant"] == "acme" for e in audit)
    assert "old-key" not in (a.data / "audit.log").read_text()
    warnings = [e for e in a.events() if e.get("level") == "warning" and "refuses the tenant's credential" in e["msg"]]
    assert len(warnings) == 1  # one per minute per pair, not one per probe
    final = [e for e in a.events() if e["msg"] == "status" and e.get("final")]
    assert len(final) == 1 and final[0]["outputs"]["web"]["acme"] == "ok"
    assert final[0]["tenants"]["acme"]["sent"]["web"] > 0 and final[0]["tenants"]["acme"]["pending"] == 0
