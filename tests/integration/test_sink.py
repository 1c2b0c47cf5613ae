"""The reference receiver (ingress.sink) with real batches, fed by the real HTTP output."""
import hashlib
import http.client
import json
import signal
import subprocess
import sys

import pytest

from ingress.errors import ConfigError, PermanentError
from ingress.sink import SinkServer, load_keys
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.delivery import Delivery
from ingress.outputs.file import read_batches
from ingress.outputs.http import HttpOutput

from outputs.fakes import FakeSpool, wait_for

pytestmark = pytest.mark.integration


def real_batch(tenant="acme", n=3):
    from ingress import wire

    payload = wire.encode(tenant, "web-1", [("cpu.user", {"cpu": "0"})], [0] * n,
                          list(range(n)), [float(i) for i in range(n)])
    return OutgoingBatch(tenant, wire.peek(payload).batch_id, payload, n, "web-1")


@pytest.fixture
def sink(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[tenants]\nacme = "acme-key"\n'
                    f'zeta = "sha256:{hashlib.sha256(b"zeta-key").hexdigest()}"\n')
    s = SinkServer("127.0.0.1:0", tmp_path / "sink", keys).start()
    yield s
    s.stop()


def post(sink, body, headers):
    host, port = sink.address
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("POST", "/v1/batches", body=body, headers=headers)
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    c.close()
    return out


def hdrs(tenant="acme", key="acme-key", b=None, **extra):
    h = {"Content-Type": "application/vnd.ingress.batch.v1", "X-Tenant-ID": tenant,
         "Authorization": f"Bearer {key}"}
    if b is not None:
        h["Idempotency-Key"] = b.batch_id.hex()
    h.update(extra)
    return h


def test_stores_per_tenant_and_drops_duplicates(sink, tmp_path):
    a, z = real_batch("acme"), real_batch("zeta", 5)
    assert post(sink, a.payload, hdrs(b=a)) == (200, {"status": "stored", "batch_id": a.batch_id.hex(),
                                                       "tenant": "acme", "samples": 3})
    assert post(sink, z.payload, hdrs("zeta", "zeta-key", z))[1]["status"] == "stored"
    assert post(sink, a.payload, hdrs(b=a))[1]["status"] == "duplicate"
    [fa] = sorted((tmp_path / "sink" / "acme").glob("*.ibatch"))
    assert list(read_batches(fa)) == [a.payload]
    assert sink.store.counts["acme"] == {"stored": 1, "duplicates": 1, "samples": 3}
    assert sink.store.seen("zeta") == {z.batch_id}


def test_seen_ids_survive_a_restart(tmp_path):
    keys = {"acme": hashlib.sha256(b"k").digest()}
    b = real_batch()
    s1 = SinkServer("127.0.0.1:0", tmp_path / "s", keys).start()
    assert post(s1, b.payload, hdrs(key="k"))[1]["status"] == "stored"
    s1.stop()
    s2 = SinkServer("127.0.0.1:0", tmp_path / "s", keys).start()
    try:
        assert post(s2, b.payload, hdrs(key="k"))[1]["status"] == "duplicate"
    finally:
        s2.stop()


@pytest.mark.parametrize("headers,status,code", [
    (hdrs(key="wrong"), 401, "unauthorized"),
    (hdrs(tenant="ghost"), 401, "unauthorized"),  # unknown tenant: same answer as a wrong key
    ({k: v for k, v in hdrs().items() if k != "Authorization"}, 401, "unauthorized"),
    (hdrs(**{"Content-Type": "application/json"}), 415, "unsupported_media_type"),
    (hdrs("zeta", "zeta-key"), 400, "tenant_mismatch"),
    (hdrs(**{"Idempotency-Key": "00" * 16}), 400, "idempotency_key_mismatch"),
])
def test_refusals_are_json_errors(sink, headers, status, code):
    b = real_batch("acme")
    st, body = post(sink, b.payload, headers)
    assert st == status
    assert body["error"]["code"] == code and body["error"]["message"]
    assert sink.store.seen("acme") == set()


def test_corrupt_batch_is_400(sink):
    b = real_batch()
    bad = bytearray(b.payload)
    bad[-1] ^= 0xFF
    st, body = post(sink, bytes(bad), hdrs())
    assert st == 400 and body["error"]["code"] == "bad_batch"


def test_http_output_to_sink_end_to_end(sink, tmp_path):
    spool = FakeSpool(["h"])
    batches = [real_batch(t, 2) for t in ("acme", "zeta", "acme")]
    for b in batches:
        spool.append(b.tenant, b.batch_id, b.payload, b.sample_count)
    # The same acme batch again, as after a crash between send and ack: dropped by id.
    spool.append("acme", batches[0].batch_id, batches[0].payload, 2)
    creds = {"acme": lambda: "acme-key", "zeta": lambda: "zeta-key"}
    out = HttpOutput("h", sink.url, credential=creds)
    d = Delivery(spool, [out], None, tenants=["acme", "zeta"], data_dir=tmp_path, idle_poll_s=0.05)
    d.start()
    try:
        assert wait_for(lambda: not spool.unacked("acme", "h") and not spool.unacked("zeta", "h"), 20)
    finally:
        d.stop(5)
        out.close()
    assert sink.store.seen("acme") == {batches[0].batch_id, batches[2].batch_id}
    assert sink.store.counts["acme"]["duplicates"] == 1
    assert sink.store.seen("zeta") == {batches[1].batch_id}


def test_wrong_key_through_the_output_is_a_credential_refusal(sink):
    """The sink's 401 holds the pair (ingress.errors.CredentialRefusedError), it is no dead letter."""
    from ingress.errors import CredentialRefusedError

    out = HttpOutput("h", sink.url, credential=lambda t: "nope")
    got = []
    out.submit(real_batch(), lambda b, e: got.append(e))
    assert wait_for(lambda: got, 10)
    assert isinstance(got[0], CredentialRefusedError) and not isinstance(got[0], PermanentError)
    assert got[0].status == 401
    assert got[0].first_line.startswith('{"error": {"code": "unauthorized"')
    out.close()


def test_keys_file_errors_name_the_problem(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text('[tenants]\n"Acme!" = "x"\n')
    with pytest.raises(ConfigError, match=r"k.toml: tenants.Acme!: 'Acme!' is not a valid tenant id"):
        load_keys(p)
    p.write_text('[tenants]\nacme = "sha256:abc"\n')
    with pytest.raises(ConfigError, match="64 hex"):
        load_keys(p)
    with pytest.raises(ConfigError, match="cannot read keys file"):
        load_keys(tmp_path / "missing.toml")
    j = tmp_path / "k.json"
    j.write_text(json.dumps({"acme": "k1"}))
    assert load_keys(j) == {"acme": hashlib.sha256(b"k1").digest()}


def test_run_serves_until_sigterm(tmp_path):
    """`ingress sink` serves until SIGTERM, then exits 0."""
    (tmp_path / "keys.toml").write_text('acme = "k"\n')
    proc = subprocess.Popen([sys.executable, "-m", "ingress", "sink", "--listen", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "d"), "--keys", str(tmp_path / "keys.toml")],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line and "(1 tenants)" in line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_with_a_bad_keys_file_exits_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ingress", "sink", "--data-dir", str(tmp_path / "d"),
                        "--keys", str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "nope.toml: cannot read keys file" in r.stderr
