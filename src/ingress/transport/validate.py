"""Tenant checks made before a batch leaves the host.

The delivery loop asks :meth:`TenantChecker.check` before every submit. A batch
whose tenant fails a check is not sent and not dropped: it stays in the spool,
the failure is counted per tenant and category, and the worker checks again
later (a tenant re-enabled, a credential file fixed or a quota refilled lets
the backlog flow without a restart).

Categories (``TenantCheckError.category``):

``tenant_unknown``
    The tenant is not (or no longer) configured.
``tenant_disabled``
    ``enabled = false`` in its configuration.
``credential_missing``
    The output sends a credential (HTTP) and the tenant's ``api_key_env`` is
    unset/empty or its ``api_key_file`` is missing, unreadable or empty.
``quota_exceeded``
    The tenant has sent more than its outgoing quota (samples per second,
    token bucket); ``retry_after`` says when enough has refilled.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ingress.errors import IngressError

CATEGORIES = ("tenant_unknown", "tenant_disabled", "credential_missing", "quota_exceeded")


class TenantCheckError(IngressError):
    """A batch may not leave now because of its tenant; the batch stays in the spool.

    Attributes
    ----------
    category
        One of :data:`CATEGORIES`.
    tenant
        The tenant id.
    retry_after
        Seconds after which checking again can succeed, when known (quota).
    """

    def __init__(self, category: str, tenant: str, message: str, retry_after: float | None = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown tenant check category {category!r}")
        super().__init__(f"{category}: tenant {tenant}: {message}")
        self.category = category
        self.tenant = tenant
        self.message = message
        self.retry_after = retry_after


class CredentialMissing(IngressError):
    """A tenant credential cannot be resolved; the message says from where."""


Credential = Callable[[], str]


def env_credential(var: str) -> Credential:
    """A credential read from environment variable ``var`` at each call."""

    def get() -> str:
        v = os.environ.get(var, "")
        if not v.strip():
            raise CredentialMissing(f"api_key_env {var} is not set" if var not in os.environ
                                    else f"api_key_env {var} is empty")
        return v.strip()

    get.source = f"env:{var}"  # type: ignore[attr-defined]
    return get


def file_credential(path: str | os.PathLike, cache_s: float = 5.0,
                    clock: Callable[[], float] = time.monotonic) -> Credential:
    """A credential read from a file (first line, stripped), re-read at most every ``cache_s``.

    Re-reading lets an operator rotate a key by rewriting the file.
    """
    p = Path(path)
    cache: list = [None, -1e18]
    lock = threading.Lock()

    def get() -> str:
        with lock:
            now = clock()
            if cache[0] is not None and now - cache[1] < cache_s:
                return cache[0]
            try:
                text = p.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise CredentialMissing(f"api_key_file {p} does not exist") from None
            except PermissionError:
                raise CredentialMissing(f"api_key_file {p} is not readable (permission denied)") from None
            except (OSError, UnicodeDecodeError) as e:
                raise CredentialMissing(f"api_key_file {p} cannot be read: {e}") from None
            lines = text.splitlines()
            v = lines[0].strip() if lines else ""
            if not v:
                raise CredentialMissing(f"api_key_file {p} is empty")
            cache[0], cache[1] = v, now
            return v

    get.source = f"file:{p}"  # type: ignore[attr-defined]
    return get


@dataclass
class TenantRule:
    """What the checker knows of one tenant.

    Parameters
    ----------
    enabled
        ``enabled`` from the tenant's configuration.
    credential
        Resolves the tenant's credential (:func:`env_credential`,
        :func:`file_credential`, or any ``() -> str`` such as
        ``ingress.tenants.Tenant.credential``; whatever it raises counts as
        ``credential_missing``); ``None`` when none is configured.
    max_samples_per_s
        Outgoing quota in samples per second; ``None`` for no quota.
    burst_samples
        Bucket size of the quota; default ten seconds' worth.
    """

    enabled: bool = True
    credential: Credential | None = None
    max_samples_per_s: float | None = None
    burst_samples: float | None = None


class _Bucket:
    __slots__ = ("rate", "capacity", "tokens", "at")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity, self.tokens, self.at = rate, capacity, capacity, now

    def take(self, n: float, now: float) -> float | None:
        """Take ``n`` tokens; return None on success, else seconds until possible."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        # A batch bigger than the bucket passes when the bucket is full, so an
        # oversized batch slows the tenant down instead of blocking it forever.
        need = min(n, self.capacity)
        if self.tokens >= need:
            self.tokens -= n
            return None
        return (need - self.tokens) / self.rate


class TenantChecker:
    """Checks a batch's tenant before it is sent; counts failures per tenant and category.

    Parameters
    ----------
    tenants
        ``{tenant id: TenantRule}``; replace with :meth:`update` on reload.
    clock
        Monotonic seconds (quota refill); inject a fake in tests.
    """

    def __init__(self, tenants: Mapping[str, TenantRule], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._rules: dict[str, TenantRule] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._failures: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
        self._last: dict[str, str] = {}
        self.update(tenants)

    def update(self, tenants: Mapping[str, TenantRule]) -> None:
        """Swap in a new rule set (configuration reload); quota buckets of kept tenants persist."""
        now = self.clock()
        with self._lock:
            self._rules = dict(tenants)
            buckets = {}
            for t, r in self._rules.items():
                if r.max_samples_per_s:
                    cap = r.burst_samples or r.max_samples_per_s * 10
                    old = self._buckets.get(t)
                    if old is not None and old.rate == r.max_samples_per_s and old.capacity == cap:
                        buckets[t] = old
                    else:
                        buckets[t] = _Bucket(r.max_samples_per_s, cap, now)
            self._buckets = buckets

    def _fail(self, category: str, tenant: str, message: str, retry_after: float | None = None) -> None:
        with self._lock:
            self._failures[tenant][category] += 1
            self._last[tenant] = f"{category}: {message}"
        raise TenantCheckError(category, tenant, message, retry_after)

    def credential(self, tenant: str) -> str:
        """The tenant's credential; raises :class:`TenantCheckError` (credential_missing)."""
        rule = self._rules.get(tenant)
        if rule is None:
            self._fail("tenant_unknown", tenant, "not in the configuration")
        if rule.credential is None:
            self._fail("credential_missing", tenant, "neither api_key_env nor api_key_file is set")
        try:
            return rule.credential()
        except CredentialMissing as e:
            self._fail("credential_missing", tenant, str(e))
        except Exception as e:  # noqa: BLE001 - any resolver (e.g. ingress.tenants.Tenant.credential)
            # A resolver of its own may classify finer (credential_unreadable, ...);
            # here every such failure is one category, the message keeps the detail.
            self._fail("credential_missing", tenant, getattr(e, "detail", None) or str(e))
        raise AssertionError("unreachable")

    def check(self, tenant: str, needs_credential: bool = False, samples: int = 0) -> None:
        """Raise :class:`TenantCheckError` unless a batch of ``samples`` samples may leave now.

        Quota tokens are taken only when every check passes.
        """
        rule = self._rules.get(tenant)
        if rule is None:
            self._fail("tenant_unknown", tenant, "not in the configuration")
        if not rule.enabled:
            self._fail("tenant_disabled", tenant, "enabled = false")
        if needs_credential:
            self.credential(tenant)
        if rule.max_samples_per_s and samples:
            with self._lock:
                b = self._buckets.get(tenant)
                wait = b.take(samples, self.clock()) if b is not None else None
            if wait is not None:
                self._fail("quota_exceeded", tenant,
                           f"{samples} samples over the quota of {rule.max_samples_per_s:g}/s", wait)

    def failures(self) -> dict[str, dict[str, int]]:
        """``{tenant: {category: count}}`` of every failed check so far."""
        with self._lock:
            return {t: dict(c) for t, c in self._failures.items()}

    def last_error(self, tenant: str) -> str | None:
        with self._lock:
            return self._last.get(tenant)
