"""The reference receiver: ``ingress sink``, the log aggregator's side of the HTTP output.

It accepts batches POSTed by the HTTP output (and, with ``--from-kafka``, reads
the agent's Kafka topics: :mod:`ingress.sink_store.kafka_input`), checks the
tenant's key, drops duplicate batch ids and stores the samples in the
ClickHouse schema of :mod:`ingress.sink_store` (embedded chDB by default,
docs/aggregator.md). A 2xx answer comes only after the insert returned (the
tables fsync their parts). With ``--data-dir DIR`` (or ``--store file://DIR``)
it keeps the original file store instead (:mod:`ingress.sink_store.files`).
The connection layer (threads, deadlines, early answers) is
:mod:`ingress.sink_http`; the command line is :mod:`ingress.cli.sink`.

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
:class:`ingress.outputs.file.RecordFile`), and the tenant's next batch is
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

import hashlib
import hmac
import json
import logging
import os
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from ingress import names
from ingress.errors import ConfigError, DecodeMemoryError, IngressError, WireError
from ingress.sink_http import Handler, Reject, Server
from ingress.sink_store.files import SinkStore


log = logging.getLogger("ingress.sink")

CONTENT_TYPE = "application/vnd.ingress.batch.v1"


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
        self._httpd: Server | None = None
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
            httpd = Server(self.listen, Handler, self.max_connections)
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

    def handle(self, req: Handler) -> tuple[int, dict]:
        """Check and store one POSTed batch; raise Reject with the error to send.

        Every check the headers allow comes before the body is read, so a
        refused request costs no body memory (the handler closes the connection).
        """
        from ingress import wire

        h = req.headers
        ctype = (h.get("Content-Type") or "").split(";")[0].strip().lower()
        lengths = {v.strip() for v in h.get_all("Content-Length") or ()}
        length = lengths.pop() if len(lengths) == 1 else ""
        if "Transfer-Encoding" in h or not re.fullmatch(r"[0-9]+", length):
            raise Reject(411, "length_required",
                         "one decimal Content-Length is required (and no Transfer-Encoding)")
        digits = length.lstrip("0") or "0"
        n = int(digits) if len(digits) <= 18 else self.max_body + 1
        if n > self.max_body:
            raise Reject(413, "too_large", f"body of {digits[:24]} bytes is over the limit of {self.max_body}")
        if ctype != CONTENT_TYPE:
            raise Reject(415, "unsupported_media_type",
                         f"Content-Type must be {CONTENT_TYPE}, got {ctype or 'none'}")
        tenant = h.get("X-Tenant-ID")
        if not self._authorised(tenant, h.get("Authorization")):
            raise Reject(401, "unauthorized", "missing or unknown key for this tenant")
        # The queue bound comes before the body: a refused batch costs no memory.
        if not self._pending.acquire(blocking=False):
            raise Reject(503, "queue_full", f"{self.max_pending} batches are being stored; retry later",
                         retry_after=1)
        try:
            return self._receive(req, n, tenant)
        finally:
            self._pending.release()

    def _receive(self, req: Handler, n: int, tenant: str) -> tuple[int, dict]:
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
            raise Reject(503, "storage_unavailable", f"cannot decode the batch now: {e}") from None
        except wire.DecodeLimitError as e:
            flag = "--max-batch-" + e.limit.removeprefix("max_").replace("_", "-")
            raise Reject(400, "bad_batch", f"batch over the sink's limit {flag}: {e}") from None
        except (WireError, ValueError) as e:
            raise Reject(400, "bad_batch", f"not a valid batch: {e}") from None
        b_tenant, b_host, b_id, b_count = _peek_fields(info)
        if b_tenant != tenant:
            raise Reject(400, "tenant_mismatch",
                         f"the batch belongs to tenant {b_tenant!r}, X-Tenant-ID says {tenant!r}")
        idem = h.get("Idempotency-Key")
        if idem is not None and idem.strip().lower() != b_id.hex():
            raise Reject(400, "idempotency_key_mismatch",
                         f"Idempotency-Key {idem!r} is not the batch id {b_id.hex()}")
        t0 = time.monotonic()
        try:
            stored = store_put(self.store, tenant, b_id, body, b_count, b_host, batch, "http")
        except BadBatch as e:
            raise Reject(400, "bad_batch", f"the store cannot take this batch: {e}") from None
        except (OSError, IngressError) as e:
            log.error("sink: cannot store batch %s of %s: %s", b_id.hex(), tenant, e)
            raise Reject(503, "storage_unavailable", "the batch could not be stored; retry later",
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
