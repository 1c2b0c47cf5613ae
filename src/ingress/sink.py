"""The reference receiver: ``ingress sink``, the log aggregator's side of the HTTP output.

It accepts batches POSTed by the HTTP output, checks the tenant's key, drops
duplicate batch ids and stores each tenant's batches in its own files::

    <data_dir>/<tenant>/batches-000001.ibatch   length-prefixed batches (see ingress.transport.file)
    <data_dir>/<tenant>/seen.ids                16-byte batch ids already stored, append-only

Request checks, in order, each failure a JSON error ``{"error": {"code", "message"}}``:

====  =========================  ==============================================
411   length_required            no Content-Length
413   too_large                  body larger than ``max_body``
415   unsupported_media_type     Content-Type is not application/vnd.ingress.batch.v1
401   unauthorized               no ``Authorization: Bearer``, no ``X-Tenant-ID``
                                 known to the sink, or a key that is not the
                                 tenant's (one answer for all three, so tenant
                                 ids cannot be probed)
400   bad_batch                  the body is not a valid batch (wire error text)
400   tenant_mismatch            the batch's tenant is not X-Tenant-ID
400   idempotency_key_mismatch   Idempotency-Key is not the batch's id
503   storage_unavailable        the batch could not be stored (retry later)
====  =========================  ==============================================

A stored batch answers ``200 {"status": "stored", ...}``; a batch id already
stored answers ``200 {"status": "duplicate", ...}`` (2xx, so the agent forgets
it) and is not stored twice. A batch is recorded as seen only after it is
written and fsynced, so a crash in between causes at most a duplicate, never a
loss.

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
import json
import logging
import os
import re
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ingress import names
from ingress.errors import ConfigError, IngressError, WireError

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
    """The persisted set of batch ids one tenant has stored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: set[bytes] = set()
        if path.exists():
            data = path.read_bytes()
            whole = len(data) - len(data) % _ID
            if whole != len(data):  # torn tail: that id was never confirmed stored
                with open(path, "r+b") as f:
                    f.truncate(whole)
            self.ids = {data[i:i + _ID] for i in range(0, whole, _ID)}
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def add(self, bid: bytes) -> None:
        os.write(self.fd, bid)
        os.fsync(self.fd)
        self.ids.add(bid)

    def close(self) -> None:
        os.close(self.fd)


class SinkStore:
    """Per-tenant batch files and seen-id sets under ``data_dir``."""

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
        """Store a batch unless its id was stored before; True when stored."""
        from ingress.transport.base import OutgoingBatch

        lock, seen = self._tenant(tenant)
        with lock:
            if batch_id in seen.ids:
                self.counts[tenant]["duplicates"] += 1
                return False
            self.files.write(OutgoingBatch(tenant, batch_id, payload, sample_count, host))
            seen.add(batch_id)
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
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"error": {"code": code, "message": message}})

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        else:
            self._error(404, "not_found", f"no such endpoint: GET {self.path}")

    def do_PUT(self) -> None:
        self.close_connection = True
        self._error(405, "method_not_allowed", "batches are POSTed")

    do_DELETE = do_PUT

    def do_POST(self) -> None:
        sink: SinkServer = self.server.sink
        try:
            status, obj = sink.handle(self)
        except _Reject as r:
            sink.count_reject(r.code)
            self._error(r.status, r.code, r.message)
            return
        self._reply(status, obj)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: "SinkServer"
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread: wrapping
        # the listening socket would run it in the accept loop, where one
        # silent client could stall every other.
        if self.tls is not None:
            try:
                request.settimeout(30)
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
    """

    def __init__(
        self,
        listen: str | tuple[str, int],
        data_dir: str | os.PathLike,
        keys: dict[str, bytes] | str | os.PathLike,
        *,
        max_body: int = 64 << 20,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        verify_batches: bool = True,
    ) -> None:
        self.listen = _parse_listen(listen)
        self.keys = keys if isinstance(keys, dict) else load_keys(keys)
        self.store = SinkStore(data_dir)
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
            httpd = _Server(self.listen, _Handler)
        except OSError as e:
            raise ConfigError(f"sink --listen {self.listen[0]}:{self.listen[1]}: {e.strerror or e}") from None
        httpd.tls = self._ctx
        httpd.sink = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.store.close()

    def count_reject(self, code: str) -> None:
        with self._lock:
            self.rejects[code] = self.rejects.get(code, 0) + 1

    def _authorised(self, tenant: str | None, auth: str | None) -> bool:
        if not tenant or not auth or not auth.startswith("Bearer "):
            return False
        want = self.keys.get(tenant)
        got = _hash(auth[7:].strip())
        # Compare even for unknown tenants so both cases take the same time.
        return hmac.compare_digest(got, want if want is not None else b"\0" * 32) and want is not None

    def handle(self, req: BaseHTTPRequestHandler) -> tuple[int, dict]:
        """Check and store one POSTed batch; raise _Reject with the error to send."""
        from ingress import wire

        h = req.headers
        ctype = (h.get("Content-Type") or "").split(";")[0].strip().lower()
        length = h.get("Content-Length")
        if length is None or not length.isdigit():
            req.close_connection = True
            raise _Reject(411, "length_required", "Content-Length is required")
        n = int(length)
        if n > self.max_body:
            req.close_connection = True
            raise _Reject(413, "too_large", f"body of {n} bytes is over the limit of {self.max_body}")
        body = req.rfile.read(n)
        if ctype != CONTENT_TYPE:
            raise _Reject(415, "unsupported_media_type",
                          f"Content-Type must be {CONTENT_TYPE}, got {ctype or 'none'}")
        tenant = h.get("X-Tenant-ID")
        if not self._authorised(tenant, h.get("Authorization")):
            raise _Reject(401, "unauthorized", "missing or unknown key for this tenant")
        try:
            info = wire.peek(body)
            if self.verify_batches:
                wire.decode(body)
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
        try:
            stored = self.store.put(tenant, b_id, body, b_count, b_host)
        except (OSError, IngressError) as e:
            log.error("sink: cannot store batch %s of %s: %s", b_id.hex(), tenant, e)
            raise _Reject(503, "storage_unavailable", "the batch could not be stored; retry later") from None
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


def run(args: argparse.Namespace) -> int:
    """Run the sink in the foreground until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad setting."""
    try:
        sink = SinkServer(args.listen, args.data_dir, args.keys, tls_cert=args.tls_cert,
                          tls_key=args.tls_key, client_ca=args.client_ca).start()
    except ConfigError as e:
        print(f"ingress sink: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    prev = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"ingress sink: listening on {sink.url} ({len(sink.keys)} tenants)", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        for s, h in prev.items():
            signal.signal(s, h)
        sink.stop()
    return 0
