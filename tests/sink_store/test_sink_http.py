"""``ingress sink`` over HTTP into the ClickHouse store: real sinks on loopback."""
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ingress import wire
from ingress.sink import CONTENT_TYPE, SinkServer

from sink_store.conftest import make_batch, run_cli

pytestmark = pytest.mark.integration

KEYS = {"acme": hashlib.sha256(b"ka").digest(), "zeta": hashlib.sha256(b"kz").digest()}
SECRET = {"acme": "ka", "zeta": "kz"}


def post(url_or_addr, body, tenant="acme", key=None):
    host, port = url_or_addr
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("POST", "/", body, {"Content-Type": CONTENT_TYPE, "X-Tenant-ID": tenant,
                                  "Authorization": f"Bearer {key or SECRET[tenant]}"})
    r = c.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    c.close()
    return out


def test_http_batches_are_stored_once_and_counted_in_metrics(store_url):
    from ingress.sink_store.query import Query, run

    sink = SinkServer("127.0.0.1:0", None, KEYS, store=store_url).start()
    try:
        b = make_batch("acme", n=4)
        s1, _, r1 = post(sink.address, b)
        s2, _, r2 = post(sink.address, b)
        assert (s1, json.loads(r1)["status"]) == (200, "stored")
        assert (s2, json.loads(r2)["status"]) == (200, "duplicate")
        assert post(sink.address, make_batch("zeta", n=1), tenant="acme")[0] == 400  # tenant_mismatch
        assert len(run(sink.store, Query("acme", "cpu.user"))) == 4
        assert run(sink.store, Query("zeta", "cpu.user")) == []
        c = http.client.HTTPConnection(*sink.address, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        assert 'ingress_sink_batches_stored_total{input="http",tenant="acme"} 1.0' in text
        assert 'ingress_sink_samples_stored_total{input="http",tenant="acme"} 4.0' in text
        assert 'ingress_sink_batches_duplicate_total{input="http",tenant="acme"} 1.0' in text
        assert 'ingress_sink_rejected_total{reason="tenant_mismatch"} 1.0' in text
        assert "ingress_sink_insert_seconds_count 1.0" in text
    finally:
        sink.stop()


class SlowStore:
    """Unit-level fake: put blocks until released (the queue bound is the sink's, not the store's)."""

    def __init__(self):
        self.go = threading.Event()
        self.entered = threading.Event()
        self.counts = {}

    def put(self, *a, **k):
        self.entered.set()
        self.go.wait(30)
        return True

    def close(self):
        pass


def test_full_queue_answers_503_with_retry_after_before_reading_the_body():
    slow = SlowStore()
    sink = SinkServer("127.0.0.1:0", None, KEYS, store=slow, max_pending=1).start()
    try:
        first = threading.Thread(target=post, args=(sink.address, make_batch()))
        first.start()
        assert slow.entered.wait(10)
        status, headers, body = post(sink.address, make_batch())
        assert status == 503 and headers.get("Retry-After") == "1"
        assert json.loads(body)["error"]["code"] == "queue_full"
        slow.go.set()
        first.join(10)
        assert post(sink.address, make_batch())[0] == 200  # room again
        assert sink.rejects == {"queue_full": 1}
    finally:
        slow.go.set()
        sink.stop()


def test_storage_failure_answers_503_with_retry_after(store_url):
    from ingress.sink_store.clickhouse import StoreError

    sink = SinkServer("127.0.0.1:0", None, KEYS, store=store_url).start()
    try:
        real = sink.store.backend.insert_arrow

        def broken(*a, **k):
            raise StoreError("disk on fire")
        sink.store.backend.insert_arrow = broken
        b = make_batch()
        status, headers, body = post(sink.address, b)
        assert (status, headers.get("Retry-After")) == (503, "1")
        assert json.loads(body)["error"]["code"] == "storage_unavailable"
        sink.store.backend.insert_arrow = real
        assert json.loads(post(sink.address, b)[2])["status"] == "stored"  # nothing was recorded before
    finally:
        sink.stop()


def _start_sink(tmp_path, store, *extra, env=None):
    (tmp_path / "keys.json").write_text(json.dumps({"tenants": SECRET}))
    p = subprocess.Popen([sys.executable, *extra, "sink", "--listen", "127.0.0.1:0", "--keys",
                          str(tmp_path / "keys.json"), "--store", str(store)],
                         stderr=subprocess.PIPE, text=True, env=env)
    line = p.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line + p.stderr.read()
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    return p, ("127.0.0.1", port)


_KILL_BETWEEN = ("import os, signal, sys; import ingress.sink_store.clickhouse as c; "
                 "c.ClickHouseStore._after_samples = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
                 "from ingress.cli import main; sys.exit(main(sys.argv[1:]))")


def test_sink_killed_between_insert_and_ack_stores_the_resent_batch_once(tmp_path):
    """SIGKILL after the samples insert, before the batches row and the answer; resend: one copy."""
    store = tmp_path / "store"
    p, addr = _start_sink(tmp_path, store, "-c", _KILL_BETWEEN)
    b = make_batch("acme", n=7)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        post(addr, b)  # the sink dies before it answers: the agent would resend
    assert p.wait(30) == -signal.SIGKILL
    p, addr = _start_sink(tmp_path, store, "-m", "ingress")
    try:
        status, _, body = post(addr, b)
        assert (status, json.loads(body)["status"]) == (200, "stored")
        assert json.loads(post(addr, b)[2])["status"] == "duplicate"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    r = run_cli("sink", "query", "--store", str(store), "--tenant", "acme", "--metric", "cpu.user")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 7 and sorted(x["value"] for x in rows) == [float(i) for i in range(7)]
    assert all(x["tenant"] == "acme" and x["host"] == "web-1" and x["tags"] == {"cpu": "0"} for x in rows)


def test_query_cli_json_lines_agg_and_terminal_table(tmp_path):
    store = tmp_path / "store"
    p, addr = _start_sink(tmp_path, store, "-m", "ingress")
    t0 = (time.time_ns() // (60 * 10**9)) * 60 * 10**9 - 3600 * 10**9  # a minute boundary, an hour ago
    try:
        series = (("net.bytes", {"if": "eth0"}), ("net.bytes", {"if": "lo"}))
        assert post(addr, make_batch("acme", series=series, n=6, t0=t0))[0] == 200
        assert post(addr, make_batch("zeta", series=series, n=6, t0=t0), tenant="zeta")[0] == 200
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    base = ["sink", "query", "--store", str(store), "--tenant", "acme", "--metric", "net.bytes"]
    r = run_cli(*base, "--tag", "if=eth0", "--since", "2h")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["value"] for x in rows] == [0.0, 2.0, 4.0] and {x["tenant"] for x in rows} == {"acme"}
    assert set(rows[0]) == {"tenant", "name", "tags", "ts", "value", "host"}
    r = run_cli(*base, "--tag", "if=eth0", "--from", str(t0), "--to", str(t0 + 2 * 10**9))  # exclusive
    assert [json.loads(x)["value"] for x in r.stdout.splitlines()] == [0.0]
    r = run_cli(*base, "--since", "2h", "--agg", "sum", "--step", "1m")
    assert sorted((json.loads(x)["tags"]["if"], json.loads(x)["value"]) for x in r.stdout.splitlines()) == \
        [("eth0", 6.0), ("lo", 9.0)]
    r = run_cli(*base, "--since", "2h", "--agg", "rate", "--step", "1m", "--tag", "if=lo")
    assert [json.loads(x)["value"] for x in r.stdout.splitlines()] == [1.0]  # (5-1)/(4s)
    import pty

    master, slave = pty.openpty()
    r = subprocess.run([sys.executable, "-m", "ingress", *base, "--since", "2h"], stdout=slave,
                       stderr=subprocess.PIPE, timeout=60)
    os.close(slave)
    out = os.read(master, 65536).decode()
    os.close(master)
    assert r.returncode == 0 and "acme net.bytes: 6 rows" in out and "if=eth0" in out and "{" not in out


@pytest.mark.parametrize("args,msg", [
    (["sink", "--store", "x"], "--keys FILE is required"),
    (["sink", "--keys", "k", "--retention", "5x"], "--retention: '5x' is not a duration"),
    (["sink", "--keys", "k", "--tenant-retention", "Acme=1d"], "not a valid tenant id"),
    (["sink", "--from-kafka", "127.0.0.1:1"], "--topic TOPIC"),
    (["sink", "--keys", "k", "--store", "clickhouse://h:0x/db"], "--store"),
    (["sink", "query", "--tenant", "Bad!", "--metric", "m"], "not a valid tenant id"),
    (["sink", "query", "--tenant", "a", "--metric", "m", "--tag", "novalue"], "--tag"),
    (["sink", "query", "--tenant", "a", "--metric", "m", "--since", "1h", "--from", "1"], "not both"),
    (["sink", "query", "--tenant", "a", "--metric", "m", "--from", "yesterday"], "--from"),
])
def test_bad_sink_arguments_are_one_line_exit_2(tmp_path, args, msg):
    (tmp_path / "k").write_text('[tenants]\nacme = "x"\n')
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
