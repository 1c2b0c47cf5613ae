"""The control API of a real agent process, over loopback (docs/control-api.md)."""
from __future__ import annotations

import json
import os
import http.client
import socket
import subprocess
import sys
import threading
import time

import pytest

from control_helpers import create_key, get, get_json, ingress, wait_for

pytestmark = pytest.mark.integration


def test_auth_matrix_and_identical_forbidden_bodies(agent_factory):
    a = agent_factory()
    _, acme = create_key(a.cfg, "acme")
    _, globex = create_key(a.cfg, "globex")
    _, admin = create_key(a.cfg, "acme", "--scope", "admin")
    expired_id, expired = create_key(a.cfg, "acme", "--expires", "1s")
    revoked_id, revoked = create_key(a.cfg, "acme")
    a.start()
    ingress("keys", "revoke", revoked_id, "-c", str(a.cfg))  # while the agent runs: no restart
    time.sleep(1.1)  # let the 1 s key expire (a lifetime, not a duration assert)
    unknown = acme[:-4] + ("AAAA" if not acme.endswith("AAAA") else "BBBB")

    s401 = [get(a.url, "/v1/tenants/acme", k) for k in (None, "garbage", unknown, expired, revoked)]
    assert {s for s, _, _ in s401} == {401}
    assert len({b for _, _, b in s401}) == 1  # one body: nothing tells an expired key from a wrong one
    assert json.loads(s401[0][2])["error"]["code"] == "unauthorized"

    st, body = get_json(a.url, "/v1/tenants/acme", acme)
    assert st == 200 and body["tenant"] == "acme"
    other = get(a.url, "/v1/tenants/globex", acme)
    missing = get(a.url, "/v1/tenants/no-such-tenant", acme)
    listing = get(a.url, "/v1/tenants", acme)
    assert other[0] == missing[0] == listing[0] == 403
    assert other[2] == missing[2] == listing[2]  # byte-identical: tenant ids cannot be probed
    assert set(json.loads(other[2])["error"]) == {"code", "message"}

    assert get_json(a.url, "/v1/tenants/globex", globex)[0] == 200
    st, body = get_json(a.url, "/v1/tenants", admin)
    assert st == 200 and [t["tenant"] for t in body["tenants"]] == ["acme", "globex"]
    assert get_json(a.url, "/v1/tenants/globex", admin)[0] == 200
    assert get_json(a.url, "/v1/tenants/no-such-tenant", admin)[0] == 404

    audit = a.audit()
    denied = [e for e in audit if e["action"] == "api_access"]
    assert {e["outcome"] for e in denied} == {"unauthorized", "forbidden"}
    assert sum(e["outcome"] == "unauthorized" for e in denied) == 5
    assert sum(e["outcome"] == "forbidden" for e in denied) == 3
    assert {e.get("reason") for e in denied if e["outcome"] == "unauthorized"} >= {"no_key", "expired", "revoked"}
    assert all(e["remote"] == "127.0.0.1" for e in denied)
    used = [e for e in audit if e["action"] == "key_used"]
    assert len(used) == 3  # first use per key per hour, not one per request
    assert any(e["action"] == "config_loaded" for e in audit)
    assert any(e["action"] == "key_revoked" and e["key_id"] == revoked_id for e in audit)
    for line in (a.data / "audit.log").read_text().splitlines():
        for k in (acme, globex, admin, expired, revoked):
            assert k not in line and k.split("_", 2)[2] not in line


def test_status_document_has_the_contract_fields(agent_factory):
    a = agent_factory()
    _, acme = create_key(a.cfg, "acme")
    a.start()
    st, doc = wait_for(lambda: (lambda r: r if r[1]["outputs"]["file-0"]["sent_batches"] else None)(
        get_json(a.url, "/v1/tenants/acme", acme)), what="a batch sent")
    assert doc["samples"]["collected"] > 0 and doc["samples"]["sent"]["file-0"] > 0
    assert set(doc["samples"]["dropped"]) == {"ring_full", "spool_refused", "spool_quota_or_retention"}
    assert {"bytes", "oldest_pending_age_s", "quota_bytes", "segments"} <= set(doc["spool"])
    assert doc["outputs"]["file-0"]["breaker"] == "closed"
    assert doc["dead_letters"] == 0 and doc["last_error"] is None and "refused" in doc["series"]


def test_rate_limit_after_repeated_failures_one_security_event(agent_factory):
    a = agent_factory()
    _, acme = create_key(a.cfg, "acme")
    a.start()
    statuses = [get(a.url, "/v1/tenants/acme", "ingk_000000000000_" + "A" * 43)[0] for _ in range(15)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429] * 5
    s, h, _ = get(a.url, "/v1/tenants/acme", acme)  # blocked for the window, even with a good key
    assert s == 429 and int(h["retry-after"]) >= 1
    assert get(a.url, "/healthz")[0] == 200  # unauthenticated endpoints still answer
    events = [e for e in a.audit() if e["action"] == "auth_rate_limited"]
    assert len(events) == 1 and events[0]["remote"] == "127.0.0.1"
    warnings = [e for e in a.events() if e.get("msg", "").startswith("security:")]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    metrics = get(a.url, "/metrics")[2].decode()
    assert 'ingress_security_events_total{kind="auth_rate_limited"} 1.0' in metrics


def test_key_rotation_while_requests_flow(agent_factory):
    a = agent_factory()
    old_id, old = create_key(a.cfg, "acme")
    a.start()
    stop = threading.Event()
    results: list[int] = []

    def poll():
        while not stop.is_set():
            try:
                results.append(get(a.url, "/v1/tenants/acme", old)[0])
            except OSError as e:  # a dropped connection is a failure of the test, not of the poller
                results.append(repr(e))

    t = threading.Thread(target=poll)
    t.start()
    try:
        wait_for(lambda: len(results) >= 5, what="requests before the rotation")
        out = ingress("keys", "rotate", old_id, "-c", str(a.cfg), "--grace", "1h").stdout
        new = out.strip().splitlines()[-1].split()[-1]
        n = len(results)
        wait_for(lambda: len(results) >= n + 5, what="requests after the rotation")
        assert get(a.url, "/v1/tenants/acme", new)[0] == 200
        ingress("keys", "revoke", old_id, "-c", str(a.cfg))
        wait_for(lambda: results[-1] in (401, 429), what="the revoked key refused")
    finally:
        stop.set()
        t.join()
    # every answer was 200 until the revocation, then 401 (429 once the address has failed
    # ten times: the poller keeps presenting a revoked key); never a 500 or a dropped connection
    first401 = results.index(401)
    assert set(results[:first401]) == {200} and set(results[first401:]) <= {401, 429}
    listed = json.loads(ingress("keys", "list", "--json", "-c", str(a.cfg)).stdout)
    assert {r["id"]: r["state"] for r in listed}[old_id] == "revoked"
    assert any(e["action"] == "key_rotated" and e["key_id"] == old_id for e in a.audit())


def test_metrics_names_labels_and_types(agent_factory):
    from prometheus_client.parser import text_string_to_metric_families

    a = agent_factory()
    a.start()
    wait_for(lambda: get_json(a.url, "/readyz")[0] == 200, what="ready")
    status, headers, body = get(a.url, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for f in fams.values():
        assert f.name.startswith("ingress_"), f.name
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith("_total") or s.name.endswith("_created"), s.name
            assert set(s.labels) <= {"tenant", "output", "collector", "reason", "state", "category", "code",
                                     "generation", "quantile", "kind", "outcome", "version", "python", "le"}, s
            if "tenant" in s.labels:
                assert s.labels["tenant"] in ("acme", "globex")
            if "output" in s.labels:
                assert s.labels["output"] == "file-0"
    wanted = {"ingress_samples_collected": "counter", "ingress_samples_spooled": "counter",
              "ingress_samples_sent": "counter", "ingress_samples_dropped": "counter",
              "ingress_series_refused": "counter", "ingress_batches_sent": "counter",
              "ingress_batches_retried": "counter", "ingress_batches_dead_lettered": "counter",
              "ingress_breaker_state": "gauge", "ingress_spool_bytes": "gauge", "ingress_spool_segments": "gauge",
              "ingress_spool_oldest_pending_age_seconds": "gauge", "ingress_collector_interval_seconds": "gauge",
              "ingress_ring_fill_ratio": "gauge", "ingress_ring_dropped_samples": "counter",
              "ingress_process_cpu_seconds": "counter", "ingress_process_resident_memory_bytes": "gauge",
              "ingress_process_open_fds": "gauge", "ingress_gc_pause_seconds": "counter",
              "ingress_build_info": "gauge", "ingress_ready": "gauge"}
    for name, typ in wanted.items():
        assert name in fams and fams[name].type == typ, name
    collected = {s.labels["tenant"]: s.value for s in fams["ingress_samples_collected"].samples}
    assert set(collected) == {"acme", "globex"} and all(v > 0 for v in collected.values())
    intervals = {s.labels["collector"]: s.value for s in fams["ingress_collector_interval_seconds"].samples}
    assert intervals and all(v >= 1.0 for v in intervals.values())
    states = [s for s in fams["ingress_breaker_state"].samples if s.value == 1.0]
    assert {(s.labels["tenant"], s.labels["state"]) for s in states} == {("acme", "closed"), ("globex", "closed")}
    assert fams["ingress_ready"].samples[0].value == 1.0


PLANTED = "PLANTED-cred-7f3a9c1e5d"


def test_readiness_follows_an_http_backend_and_a_planted_credential_never_leaks(agent_factory, backend):
    outputs = f"""
[[outputs]]
type = "http"
name = "web"
url = "{backend.url}"
timeout = "2s"
[outputs.retry]
backoff_initial = "100ms"
backoff_max = "300ms"
[outputs.breaker]
failures = 2
reset = "1s"
"""
    a = agent_factory(acme='api_key_env = "INGRESS_TEST_PLANTED"', globex='api_key_env = "INGRESS_TEST_PLANTED"',
                      outputs=outputs, env={"INGRESS_TEST_PLANTED": PLANTED})
    _, admin = create_key(a.cfg, "acme", "--scope", "admin")
    a.start()
    wait_for(lambda: get(a.url, "/readyz")[0] == 200 and backend.posts, what="ready with the backend up")
    assert f"Bearer {PLANTED}" in backend.auth_seen
    backend.down()
    st, doc = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get_json(a.url, "/readyz")),
                       what="not ready with the backend gone")
    assert doc["status"] == "not_ready"
    assert {(r["reason"], r["output"]) for r in doc["reasons"]} <= {("breaker_open", "web")}
    assert {r["tenant"] for r in doc["reasons"]} <= {"acme", "globex"} and doc["reasons"]
    pages = [json.dumps(doc), get(a.url, "/metrics")[2].decode(), get(a.url, "/v1/tenants", admin)[2].decode()]
    status = json.loads(pages[-1])
    assert any(o["last_error"] for t in status["tenants"] for o in t["outputs"].values())
    backend.up()
    wait_for(lambda: get(a.url, "/readyz")[0] == 200, what="ready again with the backend back")
    pages += [get(a.url, "/readyz")[2].decode(), get(a.url, "/metrics")[2].decode(),
              get(a.url, "/v1/tenants", admin)[2].decode()]
    assert a.stop() == 0
    pages += [a.log.read_text(), (a.data / "audit.log").read_text()]
    for p in pages:
        assert PLANTED not in p and admin not in p


def test_agent_keeps_collecting_under_slow_loris_and_a_connection_flood(agent_factory):
    a = agent_factory()
    a.start()
    wait_for(lambda: get(a.url, "/readyz")[0] == 200, what="ready")
    host, port = a.url.split("://")[1].rsplit(":", 1)

    def collected() -> float:
        from prometheus_client.parser import text_string_to_metric_families

        # Under the flood the bounded queue may answer 503 (overloaded): that is the
        # server protecting itself, so ask again until a scrape is served.
        for _ in range(600):
            try:
                status, _h, body = get(a.url, "/metrics", timeout=60)
            except (OSError, http.client.HTTPException):  # refused or reset while overloaded
                time.sleep(0.1)
                continue
            if status == 200:
                f = next(f for f in text_string_to_metric_families(body.decode())
                         if f.name == "ingress_samples_collected")
                return sum(s.value for s in f.samples)
            assert status == 503, status
            time.sleep(0.1)
        raise AssertionError("no /metrics scrape was served in 60 s of retries")

    before = collected()
    stop = threading.Event()
    socks: list[socket.socket] = []

    def loris():  # many connections, each sending one header byte at a time, never finishing
        for _ in range(12):
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
                socks.append(s)
            except OSError:
                pass
        while not stop.is_set():
            for s in list(socks):
                try:
                    s.sendall(b"X")
                except OSError:
                    socks.remove(s)
            time.sleep(0.5)

    def flood():  # connect and drop, as fast as possible
        while not stop.is_set():
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=loris)] + [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # the server still answers (a worker frees up when a slow client's deadline passes)
        wait_for(lambda: get(a.url, "/healthz", timeout=60)[0] == 200, what="healthz under attack")
        after_attack_start = collected()
        wait_for(lambda: collected() > after_attack_start, what="collection continuing under attack")
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in socks:
            s.close()
    assert collected() > before
    assert a.proc.poll() is None
    rejected = get(a.url, "/metrics")[2].decode()
    assert 'ingress_control_rejected_total{reason="timeout"}' in rejected  # slow clients were cut off
    assert a.stop() == 0


def test_non_loopback_listen_without_tls_is_refused_in_one_line(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path / "d"}"\n[control]\nlisten = "0.0.0.0:0"\n'
                   '[[tenants]]\nid = "acme"\n[[outputs]]\ntype = "file"\n')
    for cmd in (["run", "-c", str(cfg), "--duration", "1"], ["check-config", "-c", str(cfg)]):
        p = ingress(*cmd, check=False)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{cfg}:4: control.listen: '0.0.0.0:0' is not a loopback")
        assert "tls_cert" in lines[0]


def test_port_in_use_is_one_line(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path / "d"}"\n[control]\nlisten = "127.0.0.1:{port}"\n'
                   '[[tenants]]\nid = "acme"\n[[outputs]]\ntype = "file"\n')
    try:
        p = ingress("run", "-c", str(cfg), "--duration", "1", check=False)
    finally:
        s.close()
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"control.listen 127.0.0.1:{port}: cannot listen")


def test_tls_and_allow_list(agent_factory, tmp_path):
    import ssl

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    a = agent_factory(control=f'tls_cert = "{cert}"\ntls_key = "{key}"')
    a.start()
    assert a.url.startswith("https://127.0.0.1:")
    import http.client

    host, port = a.url.split("://")[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(cert))
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    c.request("GET", "/healthz")
    assert c.getresponse().status == 200
    c.close()
    b = agent_factory(control='allow = ["10.0.0.0/8"]')  # loopback not allowed: closed unanswered
    b.start()
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, OSError)):
        get(b.url, "/healthz")
    assert any(e.get("msg") == "control API: connection from outside control.allow closed" for e in b.events())


def test_bad_allow_entry_is_a_config_error(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path / "d"}"\n[control]\nallow = ["10.0.0.0/8", "bogus"]\n'
                   '[[tenants]]\nid = "acme"\n[[outputs]]\ntype = "file"\n')
    p = ingress("check-config", "-c", str(cfg), check=False)
    assert p.returncode == 2 and p.stderr.strip() == f"{cfg}:4: control.allow[1]: 'bogus' is not a network " \
                                                      '(CIDR such as "10.0.0.0/8" or an address)'


def test_loose_key_file_mode_is_refused_naming_the_file_and_fix(agent_factory):
    a = agent_factory()
    _, acme = create_key(a.cfg, "acme")
    a.start()
    assert get(a.url, "/v1/tenants/acme", acme)[0] == 200
    path = a.data / "api_keys.json"
    os.chmod(path, 0o644)
    p = ingress("keys", "list", "-c", str(a.cfg), check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"{path}: mode 0644 lets group or others in; run: chmod 600 {path}"
    assert get(a.url, "/v1/tenants/acme", acme)[0] == 401  # the agent fails closed
    os.chmod(path, 0o600)
    assert get(a.url, "/v1/tenants/acme", acme)[0] == 200
