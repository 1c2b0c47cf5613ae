"""HttpOutput against a real HTTP server on loopback."""
import email.utils
import os
import subprocess
import threading
import time

import pytest

from ingress.errors import PermanentError, RetryableError
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.http import HttpOutput
from ingress.errors import TenantCheckError

from .conftest import HANG, Reply

pytestmark = pytest.mark.integration


def batch(tenant="acme", payload=None):
    return OutgoingBatch(tenant, os.urandom(16), payload or os.urandom(100), 7, "web-1")


class Results:
    def __init__(self):
        self.cond = threading.Condition()
        self.got = {}

    def __call__(self, b, err):
        with self.cond:
            assert b.batch_id not in self.got, "done called twice"
            self.got[b.batch_id] = err
            self.cond.notify_all()

    def wait(self, n, timeout=15):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, timeout), f"{len(self.got)} of {n} reported"
        return self.got


def send(out, b, timeout=15):
    r = Results()
    out.submit(b, r)
    return r.wait(1, timeout)[b.batch_id]


def test_request_carries_the_contract_headers(http_server):
    out = HttpOutput("h", http_server.url + "/v1/{tenant}/batches", credential=lambda t: f"key-of-{t}")
    b = batch("acme")
    assert send(out, b) is None
    [req] = http_server.requests
    assert req.method == "POST" and req.path == "/v1/acme/batches"
    h = req.headers
    assert h["content-type"] == "application/vnd.ingress.batch.v1"
    assert h["x-tenant-id"] == "acme"
    assert h["authorization"] == "Bearer key-of-acme"
    assert h["idempotency-key"] == b.batch_id.hex()
    assert h["content-length"] == str(len(b.payload))
    assert h["user-agent"].startswith("ingress/")
    assert req.body == b.payload
    out.close()


def test_credential_per_tenant_mapping(http_server):
    out = HttpOutput("h", http_server.url, credential={"acme": lambda: "a1", "zeta": lambda: "z1"})
    send(out, batch("acme"))
    send(out, batch("zeta"))
    assert [r.headers["authorization"] for r in http_server.requests] == ["Bearer a1", "Bearer z1"]
    out.close()


def test_credential_failure_is_passed_to_done_and_nothing_is_sent(http_server):
    def cred(t):
        raise TenantCheckError("credential_missing", t, "api_key_env ACME_KEY is not set")

    out = HttpOutput("h", http_server.url, credential=cred)
    err = send(out, batch())
    assert isinstance(err, TenantCheckError) and err.category == "credential_missing"
    assert http_server.requests == []
    out.close()


def test_keep_alive_reuses_one_connection(http_server):
    out = HttpOutput("h", http_server.url, concurrency=1)
    for _ in range(20):
        assert send(out, batch()) is None
    assert out.connections_opened == 1
    assert len({r.connection for r in http_server.requests}) == 1
    out.close()


def test_server_closing_an_idle_connection_is_not_a_failure(http_server):
    out = HttpOutput("h", http_server.url, concurrency=1)
    http_server.replies(Reply(200, headers={"Connection": "close"}))
    assert send(out, batch()) is None
    assert send(out, batch()) is None
    assert out.connections_opened == 2
    out.close()


@pytest.mark.parametrize("status", [500, 503, 408])
def test_retryable_status(http_server, status):
    http_server.replies(Reply(status, b"upstream unavailable\nat line 2"))
    out = HttpOutput("h", http_server.url)
    err = send(out, batch())
    assert isinstance(err, RetryableError) and err.status == status
    assert str(err) == f"HTTP {status}: upstream unavailable"
    assert send(out, batch()) is None  # the next one is fine
    out.close()


def test_429_retry_after_seconds_and_date(http_server):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    http_server.replies(Reply(429, b"slow down", {"Retry-After": "17"}),
                        Reply(429, b"slow down", {"Retry-After": when}))
    out = HttpOutput("h", http_server.url)
    e1, e2 = send(out, batch()), send(out, batch())
    assert isinstance(e1, RetryableError) and e1.retry_after == 17.0
    assert isinstance(e2, RetryableError) and 100 < e2.retry_after <= 120
    out.close()


@pytest.mark.parametrize("status", [400, 404, 413])
def test_other_4xx_are_permanent_with_first_line(http_server, status):
    http_server.replies(Reply(status, b'{"error": {"code": "unauthorized", "message": "bad key"}}\n'))
    out = HttpOutput("h", http_server.url)
    err = send(out, batch())
    assert isinstance(err, PermanentError) and err.status == status
    assert err.first_line == '{"error": {"code": "unauthorized", "message": "bad key"}}'
    out.close()


def test_timeout_is_retryable(http_server):
    http_server.behave = lambda req: HANG
    out = HttpOutput("h", http_server.url, timeout_s=0.5)
    err = send(out, batch())
    assert isinstance(err, RetryableError) and "timed out after 0.5s" in str(err)
    out.close()


def test_connection_refused_is_retryable():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        out = HttpOutput("h", f"http://127.0.0.1:{port}/")
        err = send(out, batch())
        assert isinstance(err, RetryableError) and "ConnectionRefusedError" in str(err)
    finally:
        s.close()


def test_submit_never_blocks_and_hung_tenant_does_not_stop_others(http_server):
    http_server.behave = lambda req: HANG if req.headers["x-tenant-id"] == "slow" else Reply()
    out = HttpOutput("h", http_server.url, concurrency=2, timeout_s=30)
    r = Results()
    slow = [batch("slow") for _ in range(10)]
    for b in slow:
        out.submit(b, r)  # returns at once although the server answers none of them
    fast = [batch("fast") for _ in range(10)]
    for b in fast:
        out.submit(b, r)
    got = r.wait(10)
    assert set(got) == {b.batch_id for b in fast} and all(e is None for e in got.values())
    assert http_server.hanging == 2  # the slow tenant ties up only its own two workers
    assert len(http_server.of_tenant("slow")) == 2
    assert out.in_flight() == 10
    http_server.release()
    out.close()


# -- TLS ---------------------------------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=ingress test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


def _tls_sink(tmp_path, pki, client_ca=None):
    from ingress.sink import SinkServer

    (tmp_path / "keys.toml").write_text('[tenants]\nacme = "k1"\n')
    return SinkServer("127.0.0.1:0", tmp_path / "sink", tmp_path / "keys.toml",
                      tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                      client_ca=client_ca, verify_batches=False).start()



def test_tls_verification_on_by_default(tmp_path, pki):
    sink = _tls_sink(tmp_path, pki)
    try:
        out = HttpOutput("h", sink.url, credential=lambda t: "k1")
        err = send(out, batch())
        assert isinstance(err, RetryableError) and "certificate" in str(err).lower()
        out.close()
    finally:
        sink.stop()


def test_mutual_tls_with_ca_file_and_client_cert(tmp_path, pki):
    from ingress import wire

    sink = _tls_sink(tmp_path, pki, client_ca=str(pki / "ca.pem"))
    try:
        payload = wire.encode("acme", "web-1", [("cpu", {})], [0], [1], [1.0])
        without = HttpOutput("h", sink.url, credential=lambda t: "k1", ca_file=str(pki / "ca.pem"))
        assert isinstance(send(without, batch(payload=payload)), RetryableError)
        without.close()
        out = HttpOutput("h", sink.url, credential=lambda t: "k1", ca_file=str(pki / "ca.pem"),
                         cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key"))
        b = OutgoingBatch("acme", wire.peek(payload).batch_id, payload, 1, "web-1")
        assert send(out, b) is None
        assert sink.store.seen("acme") == {b.batch_id}
        out.close()
    finally:
        sink.stop()
