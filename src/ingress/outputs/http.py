"""The HTTP output: one POST per batch.

Request (schema ``ingress-batch/1``)::

    POST <url with {tenant} expanded>
    Content-Type: application/vnd.ingress.batch.v1   (format json: application/x-ndjson)
    Content-Length: <bytes>
    X-Tenant-ID: <tenant id>
    Authorization: Bearer <the tenant's credential>
    Idempotency-Key: <batch id, 32 lowercase hex>
    User-Agent: ingress/<version>

    <one encoded batch>

Responses are classified here, once:

=====================================  ===================================
2xx                                    acknowledged: the spool forgets it
408, 429, 5xx, timeouts, network       :class:`RetryableError`, with
errors                                 ``retry_after`` from ``Retry-After``
                                       (seconds or an HTTP date)
401, 403                               :class:`HttpCredentialRefused`: the
                                       pair is held (breaker open, reason
                                       ``credential_refused``), not a dead letter
any other status (other 4xx, 3xx)      :class:`PermanentError` carrying the
                                       status and the body's first line
=====================================  ===================================

Isolation: every tenant gets its own small set of worker threads (at most
``concurrency``), each holding one keep-alive connection, so a tenant whose
endpoint hangs only ties up its own threads until ``timeout_s``; ``submit``
never blocks. Threads exit after ``idle_s`` without work.

``timeout_s`` is a deadline for the whole request: connect (itself at most
``connect_timeout_s``), TLS handshake, sending, the answer's headers and body.
Every socket operation gets the time left as its timeout, so a server that
drips a byte at a time is cut at the deadline, not kept alive by each byte.
A request cut at its deadline is a :class:`RetryableError` (the breaker counts
it) and a warning naming the output, tenant and deadline. The client side
(deadline sockets, proxy, answer classification) is
:mod:`ingress.outputs.httpclient`.
"""
from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from collections import deque
from types import MappingProxyType
from typing import Callable, Mapping
from urllib.parse import urlsplit

from ingress.errors import ConfigError, PermanentError, RetryableError, TransportError, WireError
from ingress.logs import get_logger, register_secret
from ingress.names import header_value_problem
from ingress.options import Bool, Duration, Headers, Option, PathKind, REQUIRED, Str, Url
from ingress.outputs.base import Done, OutgoingBatch, Output
from ingress.outputs.httpclient import DeadlineSocket, MAX_BODY, classify, gzip_body, open_connection
from ingress.outputs.plugin import OutputPlugin, construct


log = get_logger("ingress.outputs.http")

CONTENT_TYPE = "application/vnd.ingress.batch.v1"
NDJSON_CONTENT_TYPE = "application/x-ndjson"


class _Lane:
    """The queue and worker threads of one tenant."""

    __slots__ = ("queue", "threads", "idle", "busy")

    def __init__(self) -> None:
        self.queue: deque[tuple[OutgoingBatch, Done]] = deque()
        self.threads = 0
        self.idle = 0
        self.busy = 0


class HttpOutput(Output):
    """POST batches to an HTTP(S) endpoint, one request per batch.

    Parameters
    ----------
    name
        The output's name.
    url
        ``http://`` or ``https://`` URL; ``{tenant}`` in it expands to the tenant id.
    credential
        ``credential(tenant) -> str`` (or ``{tenant: callable()}``), the
        tenant's bearer token, resolved for every request; may raise
        :class:`~ingress.errors.TenantCheckError`, which is passed
        to ``done`` so the batch stays in the spool. ``None`` sends no
        Authorization header.
    tenants
        Tenants this output serves; ``None`` for every tenant.
    timeout_s
        Deadline for the whole request: connect, TLS handshake, sending it, and
        reading the answer's headers and body.
    connect_timeout_s
        Timeout of the TCP connect, within ``timeout_s``.
    verify
        Verify the server's certificate and host name (default).
    ca_file
        CA bundle to verify against instead of the system's.
    cert_file, key_file
        Client certificate and key for mutual TLS.
    concurrency
        Requests in flight per tenant (threads, each with a keep-alive connection).
    idle_s
        A worker thread with nothing to do for this long closes its connection and exits.
    headers
        Extra request headers (they cannot replace the contract's headers).
    format
        ``"batch"`` (the encoded batch, the default) or ``"json"``: the batch's
        samples as newline-delimited ``ingress-json/1`` lines,
        ``Content-Type: application/x-ndjson``, one request per batch.
    gzip
        Format ``json`` only: compress the body (``Content-Encoding: gzip``).
    proxy
        Honour ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (:mod:`ingress.proxy`);
        False connects directly.

    Subclasses (the ``otlp`` and ``remote_write`` outputs) reuse the workers,
    connections and deadline, and override :meth:`request` (body and headers)
    and :meth:`response_error` (what an answer means).
    """

    type = "http"
    needs_credential = True
    # Headers ingress sets on every request; ``headers`` cannot replace them.
    reserved_headers = frozenset({"content-type", "content-length", "content-encoding", "x-tenant-id",
                                  "authorization", "idempotency-key", "host"})

    def tenant_header_names(self) -> tuple[str, ...]:
        """Further headers this output sets per tenant (reserved too)."""
        return ()

    def __init__(
        self,
        name: str,
        url: str,
        credential: Callable[[str], str] | Mapping[str, Callable[[], str]] | None = None,
        tenants: frozenset[str] | None = None,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        verify: bool = True,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        concurrency: int = 4,
        idle_s: float = 60.0,
        headers: dict[str, str] | None = None,
        format: str = "batch",
        gzip: bool = False,
        proxy: bool = True,
    ) -> None:
        super().__init__(name, tenants)
        if format not in ("batch", "json"):
            raise ConfigError(f"outputs.{name}.format: {format!r} is not \"batch\" or \"json\"")
        if gzip and format != "json":
            raise ConfigError(f"outputs.{name}.gzip: applies to format \"json\" only (a batch is lz4 already)")
        self.format = format
        self.gzip = bool(gzip)
        self.proxy = bool(proxy)
        parts = urlsplit(url.replace("{tenant}", "tenant"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"outputs.{name}.url: {url!r} is not an http:// or https:// URL")
        if (cert_file is None) != (key_file is None) and key_file is not None:
            raise ConfigError(f"outputs.{name}.key_file: given without cert_file")
        if concurrency < 1:
            raise ConfigError(f"outputs.{name}.concurrency: {concurrency!r} must be at least 1")
        if isinstance(credential, Mapping):
            creds = dict(credential)

            def credential(tenant: str, _c=creds) -> str:
                return _c[tenant]()

        self.url = url
        self.credential = credential
        self.needs_credential = credential is not None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.verify = verify
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.concurrency = concurrency
        self.idle_s = idle_s
        reserved = self.reserved_headers | {h.lower() for h in self.tenant_header_names()}
        bad = [k for k in (headers or {}) if k.lower() in reserved]
        if bad:
            raise ConfigError(f"outputs.{name}.headers: {bad[0]!r} is set by ingress and cannot be overridden")
        self.extra_headers = dict(headers or {})
        from ingress import __version__

        self.user_agent = f"ingress/{__version__}"
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._lanes: dict[str, _Lane] = {}
        self._closed = False
        self.connections_opened = 0
        self.requests = 0

    # -- set-up ---------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context (built once); file problems are ConfigErrors naming the file."""
        if self._ssl is None:
            try:
                ctx = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"outputs.{self.name}.ca_file: {self.ca_file}: {e}") from e
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.cert_file:
                try:
                    ctx.load_cert_chain(self.cert_file, self.key_file)
                except (OSError, ssl.SSLError) as e:
                    raise ConfigError(f"outputs.{self.name}.cert_file: {self.cert_file}: {e}") from e
            self._ssl = ctx
        return self._ssl

    def start(self) -> None:
        if urlsplit(self.url).scheme == "https":
            self.ssl_context()

    def connect_probe(self, timeout: float | None = None) -> None:
        """``check-config --connect``: a TCP connection (and the TLS handshake for https)
        to the URL's host within ``timeout`` (default: the output's); raises on failure."""
        tenant = next(iter(sorted(self.tenants))) if self.tenants else "tenant"
        scheme, host, port, _ = self.target(tenant)
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        try:
            conn = self._connect(scheme, host, port, deadline)
        except (OSError, ssl.SSLError) as e:
            raise OSError(f"{host}:{port}: {e.strerror or e if isinstance(e, OSError) else e}") from None
        conn.close()

    def target(self, tenant: str) -> tuple[str, str, int, str]:
        """(scheme, host, port, path with query) of ``tenant``'s URL."""
        p = urlsplit(self.url.replace("{tenant}", tenant))
        port = p.port or (443 if p.scheme == "https" else 80)
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        return p.scheme, p.hostname, port, path

    # -- the output contract ----------------------------------------------------
    def submit(self, batch: OutgoingBatch, done: Done) -> None:
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                lane = self._lanes.get(batch.tenant)
                if lane is None:
                    lane = self._lanes[batch.tenant] = _Lane()
                lane.queue.append((batch, done))
                spawn = len(lane.queue) > lane.idle and lane.threads < self.concurrency
                if spawn:
                    lane.threads += 1
                else:
                    self._cond.notify_all()
        if closed:
            done(batch, RetryableError(f"http output {self.name} is closed"))
            return
        if spawn:
            threading.Thread(target=self._worker, args=(batch.tenant, lane),
                             name=f"http-{self.name}-{batch.tenant}", daemon=True).start()

    def _worker(self, tenant: str, lane: _Lane) -> None:
        conn: http.client.HTTPConnection | None = None
        key = None
        try:
            while True:
                with self._lock:
                    lane.idle += 1
                    deadline = time.monotonic() + self.idle_s
                    while not lane.queue and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    lane.idle -= 1
                    if not lane.queue:
                        lane.threads -= 1
                        self._cond.notify_all()
                        return
                    batch, done = lane.queue.popleft()
                    lane.busy += 1
                try:
                    conn, key, err = self._send(batch, conn, key)
                except Exception as e:  # noqa: BLE001 - reported through done, never lost
                    err = RetryableError(f"http output {self.name}: {type(e).__name__}: {e}")
                    conn = self._drop(conn)
                with self._lock:
                    lane.busy -= 1
                    self._cond.notify_all()
                try:
                    done(batch, err)
                except Exception:  # noqa: BLE001
                    log.exception(f"http output {self.name}: done callback failed", output=self.name)
        finally:
            self._drop(conn)

    @staticmethod
    def _drop(conn: http.client.HTTPConnection | None) -> None:
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        return None

    def _connect(self, scheme: str, host: str, port: int, deadline: float) -> http.client.HTTPConnection:
        conn = open_connection(scheme, host, port, deadline, self.connect_timeout_s,
                               self.ssl_context if scheme == "https" else None, self.proxy)
        with self._lock:
            self.connections_opened += 1
        return conn

    def _send(self, batch: OutgoingBatch, conn, key):
        """One request; returns (connection to keep or None, its key, error or None)."""
        scheme, host, port, path = self.target(batch.tenant)
        headers = dict(self.extra_headers)
        try:
            body, own = self.request(batch)
        except TransportError as e:
            return conn, key, e
        headers.update(own)
        headers["User-Agent"] = self.user_agent
        if self.credential is not None:
            try:
                token = self.credential(batch.tenant)
                if token is not None:  # None: this tenant sends no credential (otlp, remote_write)
                    headers["Authorization"] = f"Bearer {token}"
            except TransportError as e:
                return self._drop(conn), None, e
            except Exception as e:  # noqa: BLE001 - TenantCheckError and friends: keep the batch
                return conn, key, e
        want = (scheme, host, port)
        if conn is not None and key != want:
            conn = self._drop(conn)
        where = f"{scheme}://{host}:{port}{path}"
        deadline = time.monotonic() + self.timeout_s  # for the whole request, a retried connection included
        for fresh_try in (False, True):
            if conn is not None and not isinstance(conn.sock, DeadlineSocket):
                conn = self._drop(conn)  # closed underneath: never let http.client reconnect unbounded
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(scheme, host, port, deadline)
                conn.sock.deadline = deadline
                if getattr(conn, "proxy_headers", None) is not None:
                    conn.request("POST", f"http://{host}:{port}{path}", body=body,
                                 headers={**headers, **conn.proxy_headers})
                else:
                    conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                answer = resp.read(MAX_BODY)
                with self._lock:
                    self.requests += 1
                if resp.will_close or not resp.isclosed():  # not closed: unread body left over
                    conn = self._drop(conn)
                return conn, want, self.response_error(batch, resp.status, answer, resp.getheader)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn = self._drop(conn)
                # A keep-alive connection the server closed while idle: try once on a new one.
                if reused and not fresh_try:
                    continue
                return None, None, RetryableError(f"{where}: connection lost: {e}")
            except TimeoutError:
                conn = self._drop(conn)
                if time.monotonic() < deadline - 0.05:  # the connect's own, shorter timeout
                    return None, None, RetryableError(
                        f"{where}: connect timed out after {min(self.connect_timeout_s, self.timeout_s):g}s")
                log.warning(f"http output {self.name}: tenant {batch.tenant}: request to {where} cut at its "
                            f"{self.timeout_s:g}s deadline (timeout)", tenant=batch.tenant, output=self.name)
                return None, None, RetryableError(
                    f"{where}: timed out after {self.timeout_s:g}s (the deadline for the whole request)")
            except ssl.SSLCertVerificationError as e:
                conn = self._drop(conn)
                return None, None, RetryableError(f"{where}: TLS certificate not trusted: {e.verify_message}")
            except (OSError, http.client.HTTPException) as e:
                conn = self._drop(conn)
                return None, None, RetryableError(f"{where}: {type(e).__name__}: {e}")
        raise AssertionError("unreachable")

    # -- what a request carries: the hooks of the protocol outputs (otlp, remote_write) --
    def request(self, batch: OutgoingBatch) -> tuple[bytes, dict[str, str]]:
        """The body of ``batch``'s request and the headers ingress sets (not Authorization).

        Runs on the tenant's worker thread. Raise a :class:`TransportError` when
        the batch cannot be encoded (a :class:`PermanentError` sets it aside).
        """
        headers = {"X-Tenant-ID": batch.tenant, "Idempotency-Key": batch.batch_id.hex()}
        if self.format == "batch":
            headers["Content-Type"] = CONTENT_TYPE
            return batch.payload, headers
        from ingress.outputs.jsonfmt import ndjson_body

        try:
            body = ndjson_body(batch.payload)
        except WireError as e:
            raise PermanentError(f"http output {self.name}: batch {batch.batch_id.hex()} "
                                 f"cannot be decoded for format json: {e}") from None
        headers["Content-Type"] = NDJSON_CONTENT_TYPE
        if self.gzip:
            body = gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    def response_error(self, batch: OutgoingBatch, status: int, body: bytes,
                       header: Callable[[str], str | None]) -> TransportError | None:
        """None when the answer acknowledges ``batch``, else the error it means (the module table)."""
        return classify(status, body, header("Retry-After"))

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(l.queue) + l.busy for l in self._lanes.values())

    def flush(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                n = sum(len(l.queue) + l.busy for l in self._lanes.values())
                left = end - time.monotonic()
                if n == 0 or left <= 0:
                    return n
                self._cond.wait(min(left, 0.1))

    def close(self) -> None:
        """Stop the workers; batches still queued are reported failed (they stay in the spool)."""
        with self._lock:
            self._closed = True
            queued = [item for l in self._lanes.values() for item in l.queue]
            for l in self._lanes.values():
                l.queue.clear()
            self._cond.notify_all()
        for batch, done in queued:
            done(batch, RetryableError(f"http output {self.name} closed before sending"))


# Headers whose meaning the contract fixes; an output may not override them.
RESERVED_HEADERS = frozenset({"authorization", "x-tenant-id", "content-type", "idempotency-key"})

# Header values registered as secrets (never logged): names that say they carry one.
_SECRET_HEADER = re.compile(r"(?i).*(auth|key|token|secret|passw|cookie|session|signature|credential).*")


def _check(at, path: tuple, o: dict, agent) -> None:
    from ingress.secretref import SecretRef, resolve

    headers = dict(o["headers"])
    for k, v in headers.items():
        if k.lower() in RESERVED_HEADERS:
            raise at.error(path + ("headers", k), "set by ingress; cannot be overridden")
        if isinstance(v, SecretRef):  # read now: start-up, check-config and every reload
            try:
                headers[k] = ref = resolve(v, f"outputs.{o['name']}.headers.{k}")
            except ValueError as e:
                raise at.error(path + ("headers", k), str(e)) from None
            problem = header_value_problem(ref.value)
            if problem:
                raise at.error(path + ("headers", k), f"the value of {ref.where()} {problem}")
        elif _SECRET_HEADER.fullmatch(k):
            register_secret(v, f"outputs.{o['name']}.headers.{k}")
    o["headers"] = MappingProxyType(headers)
    password = urlsplit(o["url"]).password
    if password:
        register_secret(password, f"outputs.{o['name']}.url")
    if o.get("gzip") and o["format"] != "json":
        raise at.error(path + ("gzip",), "applies to format \"json\" only (a batch is lz4-compressed already)")
    if (o["cert_file"] is None) != (o["key_file"] is None):
        missing = "key_file" if o["key_file"] is None else "cert_file"
        raise at.error(path + (missing,), "cert_file and key_file go together")


def _common_args(o, ctx, credential) -> dict:
    """Constructor arguments every HTTP-based output takes, from its settings."""
    def s(p):
        return None if p is None else str(p)

    return dict(name=o.name, url=o.url, credential=credential,
                tenants=None if o.tenants is None else frozenset(o.tenants), timeout_s=o.timeout_s,
                verify=o.verify, ca_file=s(o.ca_file), cert_file=s(o.cert_file), key_file=s(o.key_file))


def _plain_headers(o) -> dict[str, str]:
    from ingress.secretref import plain

    return {k: plain(v) for k, v in o.headers.items()}


def _url_destinations(o) -> list[tuple[str, str]]:
    from ingress.destinations import url_destination

    return [("url", url_destination(o.url))]


def _build(o, ctx):
    opt: dict = {"headers": _plain_headers(o)} if o.headers else {}
    if o.format != "batch":
        opt["format"] = o.format
    if o.gzip:
        opt["gzip"] = True
    if not o.proxy:
        opt["proxy"] = False
    return construct(HttpOutput, ctx, _common_args(o, ctx, ctx.credential), opt)


_O = "outputs"

PLUGIN = OutputPlugin(
    type="http",
    options=(
        Option(_O, "url", Url(), REQUIRED, "Endpoint batches are POSTed to."),
        Option(_O, "timeout", Duration(positive=True), "10s",
               "Deadline for the whole request: connect, TLS handshake, sending, and the answer's headers "
               "and body; past it the request fails as retryable (the breaker counts it)."),
        Option(_O, "ca_file", PathKind(), None, "CA bundle to verify the server with.",
               default_doc="the system's"),
        Option(_O, "cert_file", PathKind(), None,
               "Client certificate (PEM) for mutual TLS; needs `key_file`.", default_doc="none"),
        Option(_O, "key_file", PathKind(), None, "Private key of `cert_file`.", default_doc="none"),
        Option(_O, "verify", Bool(), True, "Verify the server's certificate."),
        Option(_O, "headers", Headers(), {},
               "Extra request headers; the contract's headers (`Authorization`, `X-Tenant-ID`, "
               "`Content-Type`, `Idempotency-Key`) cannot be overridden. Names are HTTP tokens; "
               "values one line of Latin-1 without control characters. Values of headers whose "
               "name mentions auth, key, token, secret, password, cookie, session, signature or "
               "credential are treated as secrets: never logged."),
        Option(_O, "proxy", Bool(), True,
               "Honour `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (docs/outputs.md, Proxies); "
               "`false` connects directly whatever the environment says."),
        Option(_O, "gzip", Bool(), False,
               "Format `json` only: send the NDJSON body gzip-compressed (`Content-Encoding: gzip`)."),
    ),
    check=_check, build=_build, needs_credential=True, destinations=_url_destinations)


def protocol_plugin(type: str, cls: type, what: str, url_help: str, options: tuple = (),
                    args: Callable[[object], dict] = lambda o: {}) -> OutputPlugin:
    """The declaration of an output that speaks another protocol over this output's
    connections (otlp, remote_write): the http keys but ``gzip``, a ``url`` of its
    own, ``tenant_header``, its ``options``; ``format`` does not apply; a tenant's
    credential is optional (none configured: no ``Authorization``)."""
    def check(at, path: tuple, o: dict, agent) -> None:
        if o["format"] != "batch":
            raise at.error(path + ("format",), f"{type} outputs send {what}; format does not apply")
        if o["tenant_header"] and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", o["tenant_header"]):
            raise at.error(path + ("tenant_header",), f"{o['tenant_header']!r} is not a valid header name")
        _check(at, path, o, agent)

    def build(o, ctx):
        opt: dict = {"headers": _plain_headers(o)} if o.headers else {}
        if not o.proxy:
            opt["proxy"] = False
        return construct(cls, ctx, dict(_common_args(o, ctx, ctx.optional_credential()),
                                        tenant_header=o.tenant_header, **args(o)), opt)

    return OutputPlugin(
        type=type,
        options=(Option(_O, "url", Url(), REQUIRED, url_help),
                 *(opt for opt in PLUGIN.options if opt.key not in ("url", "gzip")),
                 Option(_O, "tenant_header", Str(empty=True), "X-Scope-OrgID",
                        "Header carrying the tenant id on every request; `\"\"` sends none."),
                 *options),
        check=check, build=build, destinations=_url_destinations)
