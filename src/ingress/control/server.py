"""The control API's HTTP server: one acceptor thread, a fixed pool of workers.

Deliberately small HTTP/1.1 (docs/control-api.md, "Limits"): ``GET`` requests (and
``POST /v1/reload``, whose body is read and ignored),
no keep-alive (every response says ``Connection: close``), no chunked bodies.
What keeps a hostile or broken client from hurting the agent:

- the acceptor only accepts, checks the peer against ``control.allow`` and
  queues the connection; a full queue is answered ``503`` at once and closed;
- a worker gives each connection one deadline (``read_timeout_s``) for the TLS
  handshake, request line, headers and body together, so a client trickling
  one byte at a time (slow loris) holds a worker for that long at most;
- request line, header block, header count and body are size-limited
  (414, 431, 413);
- a handler that raises answers ``500`` with the error shape and a request id;
  the worker lives on.

Nothing here touches the agent's locks: handlers read counters the pipeline
already keeps.
"""
from __future__ import annotations

import ipaddress
import json
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ingress.logs import get_logger

__all__ = ["ControlServer", "Request", "Response", "error_response", "Limits"]

log = get_logger("ingress.control")

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}


@dataclass(frozen=True)
class Limits:
    """Bounds of the server (documented in docs/control-api.md)."""

    workers: int = 4
    queue: int = 32
    read_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    max_request_line: int = 2048
    max_header_bytes: int = 8192
    max_headers: int = 50
    max_body: int = 65536


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    remote: str
    request_id: str


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, doc: Any, **headers: str) -> Response:
    return Response(status, (json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode(),
                    headers=dict(headers))


def error_response(status: int, code: str, message: str, **headers: str) -> Response:
    """The contract's error shape: ``{"error": {"code": ..., "message": ...}}``."""
    return json_response(status, {"error": {"code": code, "message": message}}, **headers)


class _Reject(Exception):
    def __init__(self, resp: Response | None, reason: str) -> None:
        super().__init__(reason)
        self.resp = resp
        self.reason = reason


def _peer_ip(addr: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except (ValueError, IndexError, TypeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ControlServer:
    """Serve ``app(request) -> Response`` on ``host:port``.

    Parameters
    ----------
    host, port
        Where to listen; port 0 picks a free port (see :attr:`address`).
    app
        The request handler; runs on a worker thread.
    allow
        Client networks (``ipaddress`` networks); others are closed unanswered.
    ssl_context
        Serve HTTPS with this server-side context; None: plain HTTP.
    limits
        :class:`Limits`.
    on_event
        ``on_event(kind)`` for counters: ``not_allowed``, ``overload``,
        ``timeout``, ``too_large``, ``bad_request``, ``tls_error``.
    """

    def __init__(self, host: str, port: int, app: Callable[[Request], Response], *,
                 allow: Sequence[Any] = (), ssl_context: Any = None, limits: Limits = Limits(),
                 on_event: Callable[[str], None] | None = None,
                 on_response: Callable[[Request | None, int], None] | None = None) -> None:
        self.app = app
        self.allow = list(allow)
        self.ssl_context = ssl_context
        self.limits = limits
        self._on_event = on_event or (lambda kind: None)
        self._on_response = on_response or (lambda req, status: None)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(64)
        except OSError:
            self._sock.close()
            raise
        # accept() blocks (no polling wake-ups in an idle agent); stop() shuts the
        # socket down, which wakes it with an error.
        self.address = self._sock.getsockname()[:2]
        self._queue: queue.Queue = queue.Queue(maxsize=limits.queue)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.address
        h = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl_context else 'http'}://{h}:{port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        t = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self._threads.append(t)
        for i in range(self.limits.workers):
            self._threads.append(threading.Thread(target=self._work_loop, name=f"control-worker-{i}", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, let workers finish their request (bounded by ``timeout``)."""
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        for _ in range(self.limits.workers):
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        try:
            self._sock.close()
        except OSError:
            pass
        while True:  # connections queued but never served
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _close(item[0])

    # ------------------------------------------------------------------ accepting
    def _allowed(self, addr: Any) -> bool:
        ip = _peer_ip(addr)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.allow)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError as e:
                if self._stop.is_set():
                    return
                log.every("control accept", 60.0).warning("control API: accept failed", error=str(e))
                time.sleep(0.05)
                continue
            if not self._allowed(addr):
                self._on_event("not_allowed")
                log.every(("control not allowed", addr[0]), 60.0).warning(
                    "control API: connection from outside control.allow closed", remote=str(addr[0]))
                _close(conn)
                continue
            try:
                self._queue.put_nowait((conn, addr, time.monotonic()))
            except queue.Full:
                self._on_event("overload")
                conn.setblocking(False)
                try:
                    conn.send(_raw(error_response(503, "overloaded", "too many connections; try again"), ""))
                except OSError:
                    pass
                _close(conn)

    # ------------------------------------------------------------------ serving
    def _work_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stop.is_set():
                if item is not None:
                    _close(item[0])
                return
            conn, addr, _queued = item
            try:
                self._serve(conn, addr)
            except Exception as e:  # noqa: BLE001 - a worker never dies
                log.exception("control API: connection failed", error=str(e))
            finally:
                _close(conn)

    def _serve(self, conn: socket.socket, addr: Any) -> None:
        lim = self.limits
        deadline = time.monotonic() + lim.read_timeout_s
        rid = os.urandom(8).hex()
        req: Request | None = None
        try:
            if self.ssl_context is not None:
                conn = self._handshake(conn, deadline)
            req = self._read(conn, addr, deadline, rid)
            try:
                resp = self.app(req)
            except Exception as e:  # noqa: BLE001 - answered as 500, the server keeps serving
                log.exception("control API: handler failed", request_id=rid, method=req.method, path=req.path,
                              tenant=_tenant_of(req.path), error=type(e).__name__)
                resp = error_response(500, "internal", f"internal error (request id {rid})")
        except _Reject as r:
            self._on_event(r.reason)
            if r.resp is None:
                return
            resp = r.resp
        resp.headers.setdefault("X-Request-Id", rid)
        self._on_response(req, resp.status)
        conn.settimeout(lim.write_timeout_s)
        try:
            conn.sendall(_raw(resp, "" if req is None else req.method))
        except OSError:
            return

    def _handshake(self, conn: socket.socket, deadline: float) -> Any:
        tls = self.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(max(0.001, deadline - time.monotonic()))
            tls.do_handshake()
        except (OSError, ValueError) as e:
            _close(tls)
            raise _Reject(None, "timeout" if isinstance(e, socket.timeout) else "tls_error") from None
        return tls

    def _read(self, conn: socket.socket, addr: Any, deadline: float, rid: str) -> Request:
        lim = self.limits
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            first = buf.find(b"\r\n")
            if (first < 0 and len(buf) > lim.max_request_line) or first > lim.max_request_line:
                raise _Reject(error_response(414, "uri_too_long", "request line too long"), "too_large")
            if len(buf) > lim.max_header_bytes:
                raise _Reject(error_response(431, "headers_too_large", "request headers too large"),
                              "too_large")
            buf += self._recv(conn, deadline)
        head = bytes(buf[:end])
        rest = bytes(buf[end + 4:])
        if len(head) > lim.max_header_bytes:
            raise _Reject(error_response(431, "headers_too_large", "request headers too large"), "too_large")
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
            raise _Reject(error_response(400, "bad_request", "undecodable request"), "bad_request") from None
        lines = text.split("\r\n")
        if len(lines[0]) > lim.max_request_line:
            raise _Reject(error_response(414, "uri_too_long", "request line too long"), "too_large")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
            raise _Reject(error_response(400, "bad_request", "malformed request line"), "bad_request")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _Reject(error_response(505, "http_version", "HTTP/1.0 or HTTP/1.1 only"), "bad_request")
        if len(lines) - 1 > lim.max_headers:
            raise _Reject(error_response(431, "headers_too_large", "too many request headers"), "too_large")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
                raise _Reject(error_response(400, "bad_request", "malformed header line"), "bad_request")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _Reject(error_response(501, "not_implemented", "chunked bodies are not accepted"),
                          "bad_request")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise _Reject(error_response(400, "bad_request", "bad Content-Length"), "bad_request")
        n = int(length)
        if n > lim.max_body:
            raise _Reject(error_response(413, "body_too_large", f"request body over {lim.max_body} bytes"),
                          "too_large")
        while len(rest) < n:  # read (and ignore) the body, under the same deadline
            rest += self._recv(conn, deadline)
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, str(_peer_ip(addr) or addr[0]), rid)

    def _recv(self, conn: socket.socket, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Reject(error_response(408, "timeout", "request not received in time"), "timeout")
        conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            raise _Reject(error_response(408, "timeout", "request not received in time"), "timeout") from None
        except OSError:
            raise _Reject(None, "bad_request") from None
        if not chunk:
            raise _Reject(None, "bad_request")
        return chunk


def _tenant_of(path: str) -> str | None:
    if path.startswith("/v1/tenants/"):
        return path[len("/v1/tenants/"):][:64] or None
    return None


def _raw(resp: Response, method: str) -> bytes:
    body = b"" if method == "HEAD" else resp.body
    head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}",
            f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(resp.body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in resp.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _close(conn: Any) -> None:
    try:
        conn.close()
    except OSError:
        pass
