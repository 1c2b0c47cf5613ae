"""The sink's HTTP connection layer: bounded connections, per-phase deadlines, early answers.

What a request means is :class:`ingress.sink.SinkServer`'s (``handle``); this
module only serves connections: one thread each up to ``max_connections``
(one more is answered ``503 busy`` at once), a deadline per phase (TLS
handshake and headers, idle keep-alive, body), ``Expect: 100-continue``
answered only once the headers passed, and after an early answer a bounded
discard of what the client still sends (so it reads the answer, not a reset).
"""
from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ingress.logs import RateLimiter

if TYPE_CHECKING:
    from ingress.sink import SinkServer

log = logging.getLogger("ingress.sink")


class Reject(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client left or stalled while sending its body; there is nobody to answer."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


_LINGER_S = 1.0  # after an early answer: how long, and how much, of the unread request is discarded
_LINGER_BYTES = 1 << 20


def _busy_response() -> bytes:
    body = json.dumps({"error": {"code": "busy", "message": "too many connections; retry later"}}).encode() + b"\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" % len(body)) + body


_BUSY = _busy_response()


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each with the time left before ``deadline`` as its timeout.

    A per-read timeout alone lets a client that drips one byte at a time hold
    the connection forever; a deadline per phase (headers, idle, body) does not.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = float("inf")  # time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(b)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def setup(self) -> None:
        super().setup()
        self._in = _DeadlineReader(self.connection)
        self._in.deadline = time.monotonic() + self.server.sink.header_timeout
        self.rfile.close()
        self.rfile = io.BufferedReader(self._in, 65536)
        self._served = False
        self._linger = False
        self._body_read = False
        self._expect_continue = False

    def handle_one_request(self) -> None:
        sink: SinkServer = self.server.sink
        self._body_read = self._expect_continue = False
        if self._served:  # a kept-alive connection: wait up to idle_timeout for the next request
            self._in.deadline = time.monotonic() + sink.idle_timeout
            try:
                first = self.rfile.peek(1)
            except TimeoutError:
                log.debug("sink: %s: idle for %gs, closing", self.address_string(), sink.idle_timeout)
                first = b""
            if not first:
                self.close_connection = True
                return
            self._in.deadline = time.monotonic() + sink.header_timeout
        self._served = True
        super().handle_one_request()  # a header deadline is logged (debug) and closes there

    def handle_expect_100(self) -> bool:
        # "100 Continue" only once the headers passed every check (see read_body):
        # a refused client learns it before it sends a byte of the body.
        self._expect_continue = True
        return True

    def read_body(self, n: int) -> bytes:
        """The request body, read within ``body_timeout``; :class:`ClientGone` if it does not arrive."""
        sink: SinkServer = self.server.sink
        self._body_read = True
        if self._expect_continue:
            self.send_response_only(100)
            self.end_headers()
        self._in.deadline = time.monotonic() + sink.body_timeout
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            raise ClientGone(f"body of {n} bytes not received within {sink.body_timeout:g}s",
                             timed_out=True) from None
        except OSError as e:
            raise ClientGone(f"connection lost while reading the body: {e}") from None
        if len(body) < n:
            raise ClientGone(f"client closed the connection after {len(body)} of {n} body bytes")
        return body

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._discard_rest()

    def _discard_rest(self) -> None:
        """Half-close after an early answer, then drop what the client still sends.

        Closing with unread bytes would send a reset, which can destroy the
        answer on its way; the discarding is bounded by _LINGER_S and
        _LINGER_BYTES and keeps nothing.
        """
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        end, left, buf = time.monotonic() + _LINGER_S, _LINGER_BYTES, bytearray(65536)
        try:
            while left > 0:
                t = end - time.monotonic()
                if t <= 0:
                    break
                sock.settimeout(t)
                n = sock.recv_into(buf, min(len(buf), left))
                if not n:
                    break
                left -= n
        except OSError:
            pass

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, status: int, obj: dict | bytes, retry_after: int | None = None,
               ctype: str = "application/json") -> None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        self.connection.settimeout(self.server.sink.header_timeout)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        self._reply(status, {"error": {"code": code, "message": message}}, retry_after)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        elif self.path == "/metrics":
            body, ctype = self.server.sink.metrics.exposition()
            self._reply(200, body, ctype=ctype)
        else:
            self._error(404, "not_found", f"no such endpoint: GET {self.path}")

    def do_PUT(self) -> None:
        self.close_connection = True
        self._linger = True
        self._error(405, "method_not_allowed", "batches are POSTed")

    do_DELETE = do_PUT

    def do_POST(self) -> None:
        sink: SinkServer = self.server.sink
        try:
            status, obj = sink.handle(self)
        except Reject as r:
            sink.count_reject(r.code)
            if not self._body_read:  # answered from the headers: the body is never read
                self.close_connection = True
                self._linger = True
            self._error(r.status, r.code, r.message, r.retry_after)
            return
        except ClientGone as e:
            log.debug("sink: %s: %s", self.address_string(), e)
            self.close_connection = True
            if e.timed_out:
                sink.count_reject("request_timeout")
                try:
                    self._error(408, "request_timeout", str(e))
                except OSError:
                    pass
            return
        self._reply(status, obj)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog
    sink: "SinkServer"
    tls: ssl.SSLContext | None = None

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refused_log = RateLimiter()  # one "all busy" line per 10 s
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs in the accept loop: never block here.
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: Any, client_address: Any) -> None:
        """Every connection slot is taken: 503 at once (plain HTTP), then close."""
        self.sink.count_reject("busy")
        if self._refused_log.allow("busy", 10.0) is not None:
            log.warning("sink: all %d connections busy; refusing new ones (503) from %s",
                        self.sink.max_connections, client_address[0])
        if self.tls is None:
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, (OSError, ssl.SSLError)):  # the client went away or stalled
            log.debug("sink: connection from %s ended: %s: %s", client_address[0], type(e).__name__, e)
        else:
            log.exception("sink: request from %s failed", client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread: wrapping
        # the listening socket would run it in the accept loop, where one
        # silent client could stall every other.
        if self.tls is not None:
            try:
                request.settimeout(self.sink.header_timeout)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ssl.SSLError) as e:
                log.info("sink: TLS handshake with %s failed: %s", client_address[0], e)
                return
            try:
                super().finish_request(request, client_address)
            finally:
                request.close()  # the server closes the raw socket, which the wrapper detached
            return
        super().finish_request(request, client_address)
