"""The reference receiver: ``ingress sink``, the log aggregator's side of the HTTP output.

It accepts batches POSTed by the HTTP output (and, with ``--from-kafka``, reads
the agent's Kafka topics: :mod:`ingress.sink_store.kafka_input`), checks the
tenant's key, drops duplicate batch ids and stores the samples in the
ClickHouse schema of :mod:`ingress.sink_store` (embedded chDB by default,
docs/aggregator.md). A 2xx answer comes only after the insert returned (the
tables fsync their parts). With ``--data-dir DIR`` (or ``--store file://DIR``)
it keeps the original file store instead: each tenant's batches in its own files::

    <data_dir>/<tenant>/batches-000001.ibatch   length-prefixed batches (see ingress.transport.file)
    <data_dir>/<tenant>/seen.ids                16-byte batch ids already stored, append-only

Request checks, in order, each failure a JSON error ``{"error": {"code", "message"}}``:

====  =========================  ==============================================
411   length_required            no Content-Length, one that is not a decimal
                                 number, several that differ, or a
                                 Transfer-Encoding
413   too_large                  body larger than ``max_body``
415   unsupported_media_type     Content-Type is not application/vnd.ingress.batch.v1
401   unauthorized               no ``Authorization: Bearer``, no ``X-Tenant-ID``
                                 known to the sink, or a key that is not the
                                 tenant's (one answer for all three, so tenant
                                 ids cannot be probed)
408   request_timeout            the body did not arrive within ``body_timeout``
400   bad_batch                  the body is not a valid batch (wire error text)
400   tenant_mismatch            the batch's tenant is not X-Tenant-ID
400   idempotency_key_mismatch   Idempotency-Key is not the batch's id
400   bad_batch                  also: a batch the store can never take (its
                                 samples span more than 100 days)
503   queue_full                 ``max_pending`` batches are being stored
                                 already (``Retry-After: 1``; checked before the
                                 body is read)
503   storage_unavailable        the batch could not be stored, or decoding it ran
                                 out of memory (retry later; never a dead letter;
                                 ``Retry-After: 1``)
====  =========================  ==============================================

``GET /metrics``: the sink's own metrics (:mod:`ingress.sink_store.metrics`).

The checks down to 401 need only the headers and come before a byte of the
body is read: such an answer carries ``Connection: close``, the sink discards
at most 1 MiB or 1 s of whatever the client still sends (so the client reads
the answer rather than a reset) and closes. ``Expect: 100-continue`` is
answered only once the headers passed. A 408 also closes the connection.

Connections (each served on its own thread) are bounded by
``max_connections``; one more is answered ``503 busy`` with ``Retry-After: 1``
at once and closed, so a flood cannot take threads or memory without bound.
Time is bounded per phase, each a deadline, not a per-read timeout, so a
client dripping a byte at a time is cut too: ``header_timeout`` for the TLS
handshake and the request line and headers (from the accept, or from the
first byte of a kept-alive connection's next request), ``idle_timeout``
between requests on a kept-alive connection, ``body_timeout`` for an
accepted request's body. A header deadline, an idle timeout or a client that
disconnects ends the connection without an answer and with one debug line.

A stored batch answers ``200 {"status": "stored", ...}``; a batch id already
stored answers ``200 {"status": "duplicate", ...}`` (2xx, so the agent forgets
it) and is not stored twice. A batch is recorded as seen only after it is
written and fsynced, so a crash in between causes at most a duplicate, never a
loss.

Storage errors (disk full, EIO) answer ``503 storage_unavailable`` and leave
only whole records in both files: the partial record is cut off at once (see
:class:`ingress.transport.file.RecordFile`), and the tenant's next batch is
stored as soon as space returns. If the batch was stored but its id could not
be written, the answer is still ``stored``: the id is kept in memory (a resend
is a duplicate) and written with the tenant's next id.

Keys file (TOML, or JSON when the name ends in ``.json``): tenant id to key,
either the key itself or ``"sha256:<64 hex>"`` of it::

    [tenants]
    acme = "k-3f9a..."
    zeta = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ingress import names
from ingress.errors import ConfigError, DecodeMemoryError, IngressError, WireError
from ingress.logs import RateLimiter

log = logging.getLogger("ingress.sink")

CONTENT_TYPE = "application/vnd.ingress.batch.v1"
_ID = 16


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(path: str | os.PathLike) -> dict[str, bytes]:
    """Read a keys file into ``{tenant: sha256(key)}``; errors name the file and tenant."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read keys file: {e.strerror or e}") from None
    try:
        if p.suffix == ".json":
            data = json.loads(raw)
        else:
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a valid keys file: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not a valid keys file: nested too deeply") from None
    if isinstance(data, dict) and isinstance(data.get("tenants"), dict):
        data = data["tenants"]
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a table of tenant = key")
    keys: dict[str, bytes] = {}
    for tenant, key in data.items():
        if not names.is_tenant_id(tenant):
            shown = repr(tenant[:100]) + ("..." if len(tenant) > 100 else "")
            where = tenant if tenant.isprintable() and len(tenant) <= 100 else shown
            raise ConfigError(f"{p}: tenants.{where}: {shown} is not a valid tenant id "
                              f"({names.text(names.TENANT_ID_RE)})")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{p}: tenants.{tenant}: the key must be a non-empty string")
        bad = names.control_char_name(key)
        if bad or not key.isascii() or key != key.strip():
            # Never quote the key: it is a secret.
            raise ConfigError(f"{p}: tenants.{tenant}: the key must be one line of printable "
                              f"ASCII without surrounding spaces"
                              + (f" (it contains {bad})" if bad else ""))
        if key.startswith("sha256:"):
            hexd = key[7:]
            if not re.fullmatch(r"[0-9a-fA-F]{64}", hexd):
                raise ConfigError(f"{p}: tenants.{tenant}: 'sha256:' must be followed by 64 hex characters")
            keys[tenant] = bytes.fromhex(hexd)
        else:
            keys[tenant] = _hash(key)
    return keys


class _SeenIds:
    """The persisted set of batch ids one tenant has stored.

    ``seen.ids`` is a :class:`~ingress.transport.file.RecordFile` of 16-byte
    records, so a failed append (disk full) is cut off at once and a torn tail
    left by a crash is cut on open. An id is added only after its batch is
    stored and fsynced. If writing it fails, the id is still seen in memory (a
    resend is a duplicate) and stays pending: the next add writes it together
    with its own id, all or nothing.
    """

    def __init__(self, path: Path) -> None:
        from ingress.transport.file import RecordFile

        self.path = path
        self.file = RecordFile(path, lambda fd, size: size - size % _ID)
        self.file.open()
        with open(path, "rb") as f:
            data = f.read(self.file.size)
        self.ids: set[bytes] = {data[i:i + _ID] for i in range(0, len(data) - len(data) % _ID, _ID)}
        self.pending: list[bytes] = []

    def add(self, bid: bytes) -> None:
        """Record ``bid`` as stored; a failed write keeps it pending (logged), never raises OSError."""
        self.ids.add(bid)
        self.pending.append(bid)
        self.flush()

    def flush(self) -> bool:
        """Write the pending ids; True when none is left."""
        if not self.pending:
            return True
        try:
            self.file.append(b"".join(self.pending))
        except OSError as e:
            log.warning("sink: %s: cannot record %d stored batch id(s) yet: %s (kept in memory, written "
                        "with the next one)", self.path, len(self.pending), e.strerror or e)
            return False
        self.pending.clear()
        return True

    def close(self) -> None:
        self.flush()
        self.file.close()


class SinkStore:
    """Per-tenant batch files and seen-id sets under ``data_dir``.

    Both are written through :class:`~ingress.transport.file.RecordFile`: a
    storage error (disk full, EIO) leaves only whole records behind, is raised
    to the caller (the server answers 503 ``storage_unavailable``), and the
    tenant's next batch is stored as soon as space returns.
    """

    def __init__(self, data_dir: str | os.PathLike, max_file_bytes: int = 64 << 20) -> None:
        from ingress.transport.file import FileOutput

        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files = FileOutput("batches", path=self.dir, max_bytes=max_file_bytes)
        self._lock = threading.Lock()
        self._tenants: dict[str, tuple[threading.Lock, _SeenIds]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def _tenant(self, tenant: str) -> tuple[threading.Lock, _SeenIds]:
        with self._lock:
            t = self._tenants.get(tenant)
            if t is None:
                d = self.dir / tenant
                d.mkdir(exist_ok=True, mode=0o700)
                t = self._tenants[tenant] = (threading.Lock(), _SeenIds(d / "seen.ids"))
                self.counts[tenant] = {"stored": 0, "duplicates": 0, "samples": 0}
            return t

    def put(self, tenant: str, batch_id: bytes, payload: bytes, sample_count: int, host: str) -> bool:
        """Store a batch unless its id was stored before; True when stored.

        Raises :class:`~ingress.errors.RetryableError` (or OSError) when the
        batch cannot be stored; nothing of it is left behind then.
        """
        from ingress.transport.base import OutgoingBatch

        lock, seen = self._tenant(tenant)
        with lock:
            if batch_id in seen.ids:
                self.counts[tenant]["duplicates"] += 1
                return False
            self.files.write(OutgoingBatch(tenant, batch_id, payload, sample_count, host))
            seen.add(batch_id)  # only after the batch is written and fsynced
            c = self.counts[tenant]
            c["stored"] += 1
            c["samples"] += sample_count
            return True

    def seen(self, tenant: str) -> set[bytes]:
        return set(self._tenant(tenant)[1].ids)

    def close(self) -> None:
        self.files.close()
        with self._lock:
            for _, s in self._tenants.values():
                s.close()
            self._tenants.clear()


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


class _ClientGone(Exception):
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

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
        """The request body, read within ``body_timeout``; :class:`_ClientGone` if it does not arrive."""
        sink: SinkServer = self.server.sink
        self._body_read = True
        if self._expect_continue:
            self.send_response_only(100)
            self.end_headers()
        self._in.deadline = time.monotonic() + sink.body_timeout
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            raise _ClientGone(f"body of {n} bytes not received within {sink.body_timeout:g}s",
                              timed_out=True) from None
        except OSError as e:
            raise _ClientGone(f"connection lost while reading the body: {e}") from None
        if len(body) < n:
            raise _ClientGone(f"client closed the connection after {len(body)} of {n} body bytes")
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
        except _Reject as r:
            sink.count_reject(r.code)
            if not self._body_read:  # answered from the headers: the body is never read
                self.close_connection = True
                self._linger = True
            self._error(r.status, r.code, r.message, r.retry_after)
            return
        except _ClientGone as e:
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


class _Server(ThreadingHTTPServer):
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


class SinkServer:
    """The reference receiver as an object: ``start()``, ``url``, ``stop()``.

    Parameters
    ----------
    listen
        ``"HOST:PORT"`` (port 0 picks a free one) or a ``(host, port)`` tuple.
    data_dir
        Where tenants' batches and seen ids are stored.
    keys
        ``{tenant: sha256(key) bytes}`` (see :func:`load_keys`) or a keys file path.
    max_body
        Largest accepted body in bytes.
    tls_cert, tls_key
        Serve HTTPS with this certificate.
    client_ca
        Require client certificates signed by this CA (mutual TLS).
    verify_batches
        Decode every batch fully (checksums) before storing it, not just its header.
    max_connections
        Connections served at once, each on its own thread; one more is
        answered ``503 busy`` (``Retry-After: 1``) and closed at once.
    header_timeout
        Seconds a new connection has to complete its TLS handshake and its
        request line and headers (and a kept-alive one, its next request's
        headers once their first byte came); past it the connection is closed.
    idle_timeout
        Seconds a kept-alive connection may wait for its next request.
    body_timeout
        Seconds an authenticated request has to deliver its whole body; past
        it the sink answers 408 and closes the connection.
    decode_limits
        ``wire.DecodeLimits`` for every batch (default: ``DecodeLimits()``); a
        batch over one answers 400 ``bad_batch`` naming the limit.
    store
        A store URL (see :func:`ingress.sink_store.open_store`) or an open
        store object; None: the file store under ``data_dir``.
    max_pending
        Batches being stored at once; one more is answered ``503
        queue_full`` with ``Retry-After: 1`` before its body is read.
    """

    def __init__(
        self,
        listen: str | tuple[str, int],
        data_dir: str | os.PathLike | None,
        keys: dict[str, bytes] | str | os.PathLike | None,
        *,
        max_body: int = 64 << 20,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        verify_batches: bool = True,
        max_connections: int = 128,
        header_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        body_timeout: float = 60.0,
        decode_limits: Any = None,
        store: Any = None,
        max_pending: int = 32,
        retention_s: int | None = None,
        tenant_retention: dict[str, int] | None = None,
    ) -> None:
        from ingress import wire
        from ingress.sink_store.metrics import SinkMetrics

        if decode_limits is None:
            decode_limits = wire.DecodeLimits()
        elif not isinstance(decode_limits, wire.DecodeLimits):
            raise TypeError(f"decode_limits must be a wire.DecodeLimits, got {type(decode_limits).__name__}")
        self.decode_limits = decode_limits
        for name, v in (("max_connections", max_connections), ("max_pending", max_pending),
                        ("header_timeout", header_timeout),
                        ("idle_timeout", idle_timeout), ("body_timeout", body_timeout)):
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ConfigError(f"sink {name}: {v!r} must be a positive number")
        self.max_connections = int(max_connections)
        self.header_timeout = float(header_timeout)
        self.idle_timeout = float(idle_timeout)
        self.body_timeout = float(body_timeout)
        self.listen = _parse_listen(listen)
        self.keys = keys if isinstance(keys, dict) else ({} if keys is None else load_keys(keys))
        self.metrics = SinkMetrics()
        self.max_pending = int(max_pending)
        self._pending = threading.BoundedSemaphore(self.max_pending)
        if store is None:
            if data_dir is None:
                raise ConfigError("sink: give a store (--store URL) or a data directory")
            self.store = SinkStore(data_dir)
        elif isinstance(store, (str, os.PathLike)):
            from ingress.sink_store import open_store

            self.store = open_store(store, retention_s=retention_s, tenant_retention=tenant_retention)
        else:
            self.store = store
        self.max_body = max_body
        self.verify_batches = verify_batches
        self.rejects: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                ctx.load_cert_chain(tls_cert, tls_key)
                if client_ca:
                    ctx.load_verify_locations(client_ca)
                    ctx.verify_mode = ssl.CERT_REQUIRED
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"sink TLS: {tls_cert}: {e}") from None
            self._ctx = ctx
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{'https' if self._ctx else 'http'}://{host}:{port}/"

    def start(self) -> "SinkServer":
        try:
            httpd = _Server(self.listen, _Handler, self.max_connections)
        except OSError as e:
            raise ConfigError(f"sink --listen {self.listen[0]}:{self.listen[1]}: {e.strerror or e}") from None
        httpd.tls = self._ctx
        httpd.sink = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="sink", daemon=True)
        self._thread.start()
        return self

    def start_kafka(self, brokers: str, topic: str, group: str, options: dict | None = None) -> Any:
        """Also consume the agent's Kafka topics (ingress.sink_store.kafka_input) into the store."""
        from ingress.sink_store.kafka_input import KafkaInput

        if not hasattr(self.store, "put_rows"):
            raise ConfigError("sink --from-kafka: needs the ClickHouse store (--store), not --data-dir")
        self.kafka = KafkaInput(brokers, topic, group, self.store, self.metrics,
                                tenants=set(self.keys) if self.keys else None,
                                decode_limits=self.decode_limits, count_reject=self.count_reject,
                                options=options).start()
        return self.kafka

    def stop(self) -> None:
        k = getattr(self, "kafka", None)
        if k is not None:
            k.stop()
            self.kafka = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.store.close()

    def count_reject(self, code: str) -> None:
        with self._lock:
            self.rejects[code] = self.rejects.get(code, 0) + 1
        self.metrics.reject(code)

    def _authorised(self, tenant: str | None, auth: str | None) -> bool:
        scheme, _, key = (auth or "").strip().partition(" ")
        key = key.strip()
        if not tenant or scheme.lower() != "bearer" or not key:
            return False
        want = self.keys.get(tenant)
        got = _hash(key)
        # Compare even for unknown tenants so both cases take the same time.
        return hmac.compare_digest(got, want if want is not None else b"\0" * 32) and want is not None

    def handle(self, req: _Handler) -> tuple[int, dict]:
        """Check and store one POSTed batch; raise _Reject with the error to send.

        Every check the headers allow comes before the body is read, so a
        refused request costs no body memory (the handler closes the connection).
        """
        from ingress import wire

        h = req.headers
        ctype = (h.get("Content-Type") or "").split(";")[0].strip().lower()
        lengths = {v.strip() for v in h.get_all("Content-Length") or ()}
        length = lengths.pop() if len(lengths) == 1 else ""
        if "Transfer-Encoding" in h or not re.fullmatch(r"[0-9]+", length):
            raise _Reject(411, "length_required",
                          "one decimal Content-Length is required (and no Transfer-Encoding)")
        digits = length.lstrip("0") or "0"
        n = int(digits) if len(digits) <= 18 else self.max_body + 1
        if n > self.max_body:
            raise _Reject(413, "too_large", f"body of {digits[:24]} bytes is over the limit of {self.max_body}")
        if ctype != CONTENT_TYPE:
            raise _Reject(415, "unsupported_media_type",
                          f"Content-Type must be {CONTENT_TYPE}, got {ctype or 'none'}")
        tenant = h.get("X-Tenant-ID")
        if not self._authorised(tenant, h.get("Authorization")):
            raise _Reject(401, "unauthorized", "missing or unknown key for this tenant")
        # The queue bound comes before the body: a refused batch costs no memory.
        if not self._pending.acquire(blocking=False):
            raise _Reject(503, "queue_full", f"{self.max_pending} batches are being stored; retry later",
                          retry_after=1)
        try:
            return self._receive(req, n, tenant)
        finally:
            self._pending.release()

    def _receive(self, req: _Handler, n: int, tenant: str) -> tuple[int, dict]:
        from ingress import wire
        from ingress.sink_store.clickhouse import BadBatch, ClickHouseStore
        from ingress.sink_store.metrics import store_put

        h = req.headers
        body = req.read_body(n)
        batch = None
        try:
            info = wire.peek(body, limits=self.decode_limits)
            if self.verify_batches or isinstance(self.store, ClickHouseStore):
                batch = wire.decode(body, self.decode_limits)
        except DecodeMemoryError as e:  # the sink's trouble, not the batch's: retry later
            raise _Reject(503, "storage_unavailable", f"cannot decode the batch now: {e}") from None
        except wire.DecodeLimitError as e:
            flag = "--max-batch-" + e.limit.removeprefix("max_").replace("_", "-")
            raise _Reject(400, "bad_batch", f"batch over the sink's limit {flag}: {e}") from None
        except (WireError, ValueError) as e:
            raise _Reject(400, "bad_batch", f"not a valid batch: {e}") from None
        b_tenant, b_host, b_id, b_count = _peek_fields(info)
        if b_tenant != tenant:
            raise _Reject(400, "tenant_mismatch",
                          f"the batch belongs to tenant {b_tenant!r}, X-Tenant-ID says {tenant!r}")
        idem = h.get("Idempotency-Key")
        if idem is not None and idem.strip().lower() != b_id.hex():
            raise _Reject(400, "idempotency_key_mismatch",
                          f"Idempotency-Key {idem!r} is not the batch id {b_id.hex()}")
        t0 = time.monotonic()
        try:
            stored = store_put(self.store, tenant, b_id, body, b_count, b_host, batch, "http")
        except BadBatch as e:
            raise _Reject(400, "bad_batch", f"the store cannot take this batch: {e}") from None
        except (OSError, IngressError) as e:
            log.error("sink: cannot store batch %s of %s: %s", b_id.hex(), tenant, e)
            raise _Reject(503, "storage_unavailable", "the batch could not be stored; retry later",
                          retry_after=1) from None
        if stored:
            self.metrics.stored(tenant, "http", b_count, time.monotonic() - t0)
        else:
            self.metrics.duplicate(tenant, "http")
        return 200, {"status": "stored" if stored else "duplicate", "batch_id": b_id.hex(),
                     "tenant": tenant, "samples": b_count}


def _peek_fields(info: Any) -> tuple[str, str, bytes, int]:
    """(tenant, host, batch id bytes, sample count) from ``wire.peek``'s answer."""
    if isinstance(info, dict):
        get = info.__getitem__
    else:
        def get(k: str) -> Any:
            return getattr(info, k)
    bid = get("batch_id")
    if isinstance(bid, str):
        bid = bytes.fromhex(bid)
    return get("tenant"), get("host"), bytes(bid), int(get("sample_count"))


def _parse_listen(listen: str | tuple[str, int]) -> tuple[str, int]:
    """``"HOST:PORT"`` -> (host, port); an empty host is 127.0.0.1. ConfigError otherwise.

    The port is ASCII digits (``str.isdigit`` also takes "²", which ``int``
    refuses); the host is an IP address (IPv6 in brackets or bare) or a host
    name the resolver can take (labels of 1-63 characters).
    """
    if isinstance(listen, tuple):
        return listen
    shown = repr(listen[:100]) + ("..." if len(listen) > 100 else "")
    host, sep, port = listen.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    host = host or "127.0.0.1"
    if not sep or not names.fullmatch(names.PORT_RE, port) or int(port) > 65535:
        raise ConfigError(f"sink --listen: {shown} is not HOST:PORT (the port must be 0 to 65535)")
    if not names.is_host(host) or (bracketed and ":" not in host):
        raise ConfigError(f"sink --listen: {shown} is not HOST:PORT (not a valid host name or address)")
    return host, int(port)


def serve(listen: str, data_dir: str | os.PathLike, keys: str | os.PathLike | dict, **kw: Any) -> SinkServer:
    """Start the sink in a background thread and return it (``.url``, ``.stop()``)."""
    return SinkServer(listen, data_dir, keys, **kw).start()


def parse_duration_s(text: str, what: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` -> whole seconds (at least 1); ConfigError naming ``what``."""
    m = re.fullmatch(r"([0-9]{1,9})(s|m|h|d)", text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"{what}: {text!r} is not a duration (a whole number and s, m, h or d, e.g. 30d)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def retention_from_args(args: argparse.Namespace) -> tuple[int | None, dict[str, int]]:
    """``--retention D`` and ``--tenant-retention T=D`` (repeated) -> (default s, {tenant: s})."""
    default = parse_duration_s(args.retention, "--retention") if getattr(args, "retention", None) else None
    per: dict[str, int] = {}
    for item in getattr(args, "tenant_retention", None) or ():
        tenant, sep, d = item.partition("=")
        if not sep:
            raise ConfigError(f"--tenant-retention: {item[:100]!r} is not TENANT=DURATION")
        if not names.is_tenant_id(tenant):
            raise ConfigError(f"--tenant-retention: {tenant[:100]!r} is not a valid tenant id "
                              f"({names.text(names.TENANT_ID_RE)})")
        per[tenant] = parse_duration_s(d, f"--tenant-retention {tenant}")
    return default, per


def store_url_from_args(args: argparse.Namespace) -> str:
    from ingress.sink_store import DEFAULT_STORE

    data_dir = getattr(args, "data_dir", None)
    store = getattr(args, "store", None)
    if data_dir and store:
        raise ConfigError("sink: give --store or --data-dir, not both")
    if data_dir:
        return f"file://{data_dir}"
    return store or DEFAULT_STORE


def run(args: argparse.Namespace) -> int:
    """Run the sink in the foreground until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad setting."""
    sink = None
    try:
        limits = {k: getattr(args, k) for k in ("max_connections", "header_timeout", "idle_timeout",
                                                "body_timeout", "max_pending") if getattr(args, k, None) is not None}
        kafka = getattr(args, "from_kafka", None)
        if kafka and not getattr(args, "topic", None):
            raise ConfigError("sink --from-kafka: --topic TOPIC (or ^REGEX) is required")
        if getattr(args, "topic", None) and not kafka:
            raise ConfigError("sink --topic: only with --from-kafka BROKERS")
        if not args.keys and not kafka:
            raise ConfigError("sink: --keys FILE is required to take batches over HTTP "
                              "(or give --from-kafka to read Kafka only)")
        retention, per_tenant = retention_from_args(args)
        sink = SinkServer(args.listen, None, args.keys, tls_cert=args.tls_cert,
                          tls_key=args.tls_key, client_ca=args.client_ca,
                          decode_limits=getattr(args, "decode_limits", None), store=store_url_from_args(args),
                          retention_s=retention, tenant_retention=per_tenant, **limits)
        if kafka:
            sink.start_kafka(kafka, args.topic, args.group)
        sink.start()
    except ConfigError as e:
        if sink is not None:
            sink.stop()
        print(f"ingress sink: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    prev = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    where = f" and kafka {kafka} topic {args.topic} group {args.group}" if kafka else ""
    print(f"ingress sink: listening on {sink.url}{where} ({len(sink.keys)} tenants)",
          file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        for s, h in prev.items():
            signal.signal(s, h)
        sink.stop()
    return 0
