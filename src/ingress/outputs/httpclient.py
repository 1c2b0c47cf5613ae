"""The HTTP client under the HTTP-based outputs (http, otlp, remote_write).

One request has one deadline: every socket operation gets the time left as its
timeout (:class:`DeadlineSocket`), so a server that drips a byte at a time is
cut at the deadline. :func:`open_connection` connects, directly or through the
proxy from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (:mod:`ingress.proxy`:
a CONNECT tunnel for https, the absolute form for http). :func:`classify` maps
an answer to acknowledged / retryable / credential refused / permanent, once
for every HTTP-based output.
"""
from __future__ import annotations

import email.utils
import http.client
import io
import socket
import ssl
import time
import zlib
from typing import Callable

from ingress.errors import CredentialRefusedError, PermanentError, RetryableError, TransportError

MAX_BODY = 1 << 20  # response bytes read; past it the connection is dropped instead
_CHUNK = 64 << 10  # bytes per send, each bounded by the time left


class DeadlineSocket:
    """A connected socket whose every send and receive ends by ``deadline``.

    ``deadline`` (``time.monotonic()``) is set before each request; each
    operation gets the time left as its socket timeout, and none starts after
    it, so the whole request is bounded, not just each read.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = float("inf")
        self._readers = 0  # like socket.makefile: close() waits for the response stream
        self._closed = False

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        for i in range(0, len(view), _CHUNK):
            self._arm()
            self._sock.sendall(view[i:i + _CHUNK])

    def recv_into(self, buf, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buf, nbytes)

    def makefile(self, mode: str = "rb", *args, **kw) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineRaw(self))

    def _reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and self._readers <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._readers <= 0:
            self._sock.close()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _DeadlineRaw(io.RawIOBase):
    """The response stream of a :class:`DeadlineSocket`."""

    def __init__(self, sock: DeadlineSocket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._sock.recv_into(b)

    def close(self) -> None:
        if not self.closed:
            self._sock._reader_closed()
        super().close()


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose TLS handshake gets the request's time left, not a timeout of its own."""

    deadline = float("inf")

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # through a proxy: also the CONNECT tunnel
        self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def gzip_body(body: bytes, level: int = 6) -> bytes:
    """``body`` as one gzip member (RFC 1952), as ``Content-Encoding: gzip`` wants it."""
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(body) + c.flush()


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


class HttpRetryableError(RetryableError):
    """A retryable HTTP answer; ``status`` and the body's ``first_line`` are kept."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None,
                 first_line: str = "") -> None:
        super().__init__(message, retry_after)
        self.status = status
        self.first_line = first_line


class HttpPermanentError(PermanentError):
    """A permanent HTTP answer (a 4xx other than 408/429); ``status`` and ``first_line`` kept."""

    def __init__(self, message: str, status: int, first_line: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.first_line = first_line


class HttpCredentialRefused(CredentialRefusedError):
    """401 or 403: the backend refused the tenant's credential; the pair is held, not dead-lettered."""

    def __init__(self, message: str, status: int, first_line: str = "") -> None:
        super().__init__(message, status)
        self.first_line = first_line


def _http_retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def classify(status: int, body: bytes, retry_after: str | None,
             retryable: Callable[[int], bool] = _http_retryable) -> TransportError | None:
    """None for 2xx, else the error that status means (see the module table).

    ``retryable`` is the protocol's rule for which other statuses are retried
    (the otlp and remote_write outputs pass their specifications' own); 401 and
    403 hold the pair for every HTTP-based output.
    """
    if 200 <= status < 300:
        return None
    line = _first_line(body)
    msg = f"HTTP {status}" + (f": {line}" if line else "")
    if status in (401, 403):
        return HttpCredentialRefused(msg, status, line)
    if retryable(status):
        return HttpRetryableError(msg, status, parse_retry_after(retry_after), line)
    return HttpPermanentError(msg, status, line)


def open_connection(scheme: str, host: str, port: int, deadline: float, connect_timeout_s: float,
                    ssl_context: Callable[[], ssl.SSLContext] | None, proxy: bool) -> http.client.HTTPConnection:
    """A connection to ``host:port`` whose socket honours ``deadline``; through the
    environment's proxy when ``proxy`` (a bad proxy variable is an OSError: retryable)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("request deadline passed")
    timeout = min(connect_timeout_s, left)
    px = None
    if proxy:
        from ingress.proxy import proxy_for

        try:
            px = proxy_for(scheme, host, port)
        except ValueError as e:  # a bad proxy variable: retryable, the batch stays spooled
            raise OSError(str(e)) from None
    to_host, to_port = (px[0], px[1]) if px else (host, port)
    if scheme == "https":
        conn: http.client.HTTPConnection = _HTTPSConnection(
            to_host, to_port, timeout=timeout, context=ssl_context())
        if px:
            conn.set_tunnel(host, port, headers=px[2])
        conn.deadline = deadline
    else:
        conn = http.client.HTTPConnection(to_host, to_port, timeout=timeout)
    conn.connect()
    conn.sock = DeadlineSocket(conn.sock)
    # plain http through a proxy: the request line carries the absolute URL
    conn.proxy_headers = px[2] if px and scheme == "http" else None
    return conn
