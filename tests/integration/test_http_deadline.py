"""HttpOutput's ``timeout`` is a deadline for the whole request, against real dripping servers."""
import logging
import os
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.errors import RetryableError
from ingress.outputs.delivery import Delivery
from ingress.outputs.http import HttpOutput

from outputs.fakes import FakeSpool, wait_for

from .test_http import Results, batch

pytestmark = pytest.mark.integration

GUARD = 60.0  # hang guard for waiting on results, never an expectation


class DripServer:
    """Reads each request whole, then sends ``answer`` one byte every ``every`` seconds
    (after ``head`` at once). ``sent`` counts the bytes sent so far, ``done`` the answers sent whole."""

    def __init__(self, head: bytes, answer: bytes, every: float = 0.5) -> None:
        self.head, self.answer, self.every = head, answer, every
        self.sent = 0
        self.done = 0
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.url = "http://127.0.0.1:%d/" % self.lsock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                got = c.recv(65536)
                if not got:
                    return
                data += got
            head, _, body = data.partition(b"\r\n\r\n")
            n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            while len(body) < n:
                got = c.recv(65536)
                if not got:
                    return
                body += got
            try:
                c.sendall(self.head)
                for i in range(len(self.answer)):
                    if self.stop.is_set():
                        return
                    c.sendall(self.answer[i:i + 1])
                    self.sent += 1
                    time.sleep(self.every)
                self.done += 1
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.lsock.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SHAPES = {
    "status-and-headers": (b"", OK),  # the answer's head drips
    "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", b"x" * 40),  # its body drips
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dripping_server_is_cut_at_the_deadline(shape, caplog):
    head, answer = SHAPES[shape]
    srv = DripServer(head, answer, every=0.5)
    out = HttpOutput("drip", srv.url, timeout_s=1.0)
    caplog.set_level(logging.WARNING, logger="ingress.outputs.http")
    try:
        r = Results()
        b = batch("acme")
        out.submit(b, r)
        err = r.wait(1, GUARD)[b.batch_id]
        sent_then = srv.sent
        assert isinstance(err, RetryableError), err
        assert "timed out after 1s" in str(err)
        assert srv.done == 0 and sent_then < len(answer)  # it ended before the drip would have
        [w] = [rec for rec in caplog.records if rec.name == "ingress.outputs.http"]
        assert w.levelno == logging.WARNING
        assert "drip" in w.getMessage() and "acme" in w.getMessage() and "1s deadline" in w.getMessage()
    finally:
        out.close()
        srv.close()


def test_deadline_hit_counts_as_a_breaker_failure(tmp_path):
    srv = DripServer(b"", OK, every=0.5)
    out = HttpOutput("drip", srv.url, timeout_s=1.0)
    spool = FakeSpool(["drip"])
    bid = os.urandom(16)
    spool.append("acme", bid, b"payload", 1)
    d = Delivery(spool, [out], None, tenants=["acme"], data_dir=tmp_path, idle_poll_s=0.05)
    d.start()
    try:
        breaker = d.breaker("acme", "drip")
        assert wait_for(lambda: breaker.snapshot()["failures"] >= 1, GUARD)
        assert breaker.snapshot()["successes"] == 0
        assert spool.unacked("acme", "drip")  # still spooled, to be retried
        assert srv.done == 0
    finally:
        d.stop(2)
        out.close()
        srv.close()


def test_answers_within_the_deadline_still_arrive_on_a_kept_alive_connection(http_server):
    """Requests one after another on one connection, each answered in time: the deadline is per request."""
    out = HttpOutput("h", http_server.url, timeout_s=1.0)
    r = Results()
    for i in range(3):
        out.submit(batch(), r)
        r.wait(i + 1, GUARD)
    assert all(e is None for e in r.got.values())
    assert out.connections_opened == 1 and out.requests == 3
    out.close()


FULL = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n" + b"{" + b" " * 38 + b"}"


@settings(max_examples=12, deadline=None)
@given(k=st.integers(0, len(FULL) - 12), every=st.sampled_from([0.05, 0.1, 0.2]))
def test_a_drip_starting_anywhere_in_the_answer_is_cut(k, every):
    """Whatever byte the server starts dripping at (status line, headers, body), the request
    fails as retryable once its deadline passes, never waiting for the rest of the drip."""
    srv = DripServer(FULL[:k], FULL[k:], every=every)
    out = HttpOutput("drip", srv.url, timeout_s=0.3)
    try:
        r = Results()
        b = batch("acme")
        out.submit(b, r)
        err = r.wait(1, GUARD)[b.batch_id]
        assert isinstance(err, RetryableError), (k, err)
        assert srv.done == 0
    finally:
        out.close()
        srv.close()
