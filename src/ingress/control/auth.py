"""Who may read what on the control API (docs/control-api.md, "Authentication").

- ``Authorization: Bearer <key>``; no key, a malformed, unknown, expired or
  revoked key: ``401`` (one body for all of them).
- An admin key reads every tenant; a tenant key reads its own tenant only. A
  tenant key asking for another tenant, for a tenant that does not exist, or
  for the list: ``403`` with one body for all, so tenant ids cannot be probed.
- An address with ``max_failures`` 401s inside ``window_s`` gets ``429`` for
  the rest of that window, and raises one ``security`` event per window (a
  warning, an audit line, a counter), not one per request.

Audited: every 401 and 403, a key's first successful use per hour, each
rate-limit event.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ingress.control.server import Request, Response, error_response
from ingress.logs import get_logger

log = get_logger("ingress.control")

UNAUTHORIZED = error_response(401, "unauthorized", "a valid API key is required (Authorization: Bearer <key>)",
                              **{"WWW-Authenticate": 'Bearer realm="ingress"'})
FORBIDDEN = error_response(403, "forbidden", "this key may not read that resource")
USED_AUDIT_EVERY_S = 3600.0
_MAX_ADDRESSES = 4096


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    scope: str

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


def _copy(r: Response) -> Response:
    return Response(r.status, r.body, r.content_type, dict(r.headers))


class Authenticator:
    """Checks keys against a :class:`~ingress.security.keys.KeyStore`, audits, rate-limits."""

    def __init__(self, store: Any, audit: Any, *, max_failures: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.audit = audit
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._fail: dict[str, list] = {}  # remote -> [window start, failures, event raised]
        self._used: dict[str, float] = {}
        self.counts = {"ok": 0, "unauthorized": 0, "forbidden": 0, "rate_limited": 0}
        self.security_events = 0

    # ------------------------------------------------------------------ rate limit
    def _window(self, remote: str, now: float) -> list:
        st = self._fail.get(remote)
        if st is None or now - st[0] >= self.window_s:
            if len(self._fail) >= _MAX_ADDRESSES:
                for k in [k for k, v in self._fail.items() if now - v[0] >= self.window_s]:
                    del self._fail[k]
                if len(self._fail) >= _MAX_ADDRESSES:
                    self._fail.pop(next(iter(self._fail)))
            st = self._fail[remote] = [now, 0, False]
        return st

    def _limited(self, remote: str) -> float | None:
        """Seconds left in the block of ``remote``, or None when it may try."""
        now = self.clock()
        with self._lock:
            st = self._window(remote, now)
            if st[1] >= self.max_failures:
                return max(1.0, st[0] + self.window_s - now)
        return None

    def _failed(self, remote: str) -> None:
        now = self.clock()
        with self._lock:
            st = self._window(remote, now)
            st[1] += 1
            raise_event = st[1] >= self.max_failures and not st[2]
            if raise_event:
                st[2] = True
                self.security_events += 1
        if raise_event:
            log.warning("security: repeated authentication failures; address blocked for the window",
                        remote=remote, failures=self.max_failures, window_s=self.window_s)
            self.audit.record("auth_rate_limited", "blocked", actor="agent", remote=remote,
                              failures=self.max_failures, window_s=self.window_s)

    # ------------------------------------------------------------------ checking
    def authenticate(self, req: Request) -> Principal | Response:
        """The principal behind the request's key, or the 401/429 to answer."""
        left = self._limited(req.remote)
        if left is not None:
            with self._lock:
                self.counts["rate_limited"] += 1
            r = error_response(429, "rate_limited", "too many failed authentications from this address",
                               **{"Retry-After": str(int(left + 0.999))})
            return r
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth or scheme.lower() != "bearer":
            return self._deny401(req, None, "no_key")
        v = self.store.verify(token.strip())
        if not v.ok:
            return self._deny401(req, v.key_id, v.outcome)
        rec = v.record
        now = self.clock()
        with self._lock:
            last = self._used.get(rec.id)
            first_use = last is None or now - last >= USED_AUDIT_EVERY_S
            if first_use:
                self._used[rec.id] = now
        if first_use:
            self.audit.record("key_used", "ok", actor=f"key:{rec.id}", tenant=rec.tenant, remote=req.remote,
                              scope=rec.scope, path=req.path)
        return Principal(rec.id, rec.tenant, rec.scope)

    def _deny401(self, req: Request, key_id: str | None, reason: str) -> Response:
        with self._lock:
            self.counts["unauthorized"] += 1
        self.audit.record("api_access", "unauthorized", actor=f"key:{key_id}" if key_id else "anonymous",
                          tenant=None, remote=req.remote, path=req.path[:200], reason=reason,
                          request_id=req.request_id)
        self._failed(req.remote)
        return _copy(UNAUTHORIZED)

    def forbid(self, req: Request, who: Principal, wanted: str | None) -> Response:
        with self._lock:
            self.counts["forbidden"] += 1
        self.audit.record("api_access", "forbidden", actor=f"key:{who.key_id}", tenant=who.tenant,
                          remote=req.remote, path=req.path[:200], requested=wanted, request_id=req.request_id)
        return _copy(FORBIDDEN)

    def allowed(self) -> None:
        with self._lock:
            self.counts["ok"] += 1
