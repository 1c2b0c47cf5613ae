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
``credential_missing`` / ``credential_unreadable`` / ``credential_empty``
    The output sends a credential (HTTP) and the tenant's credential cannot be
    had: nothing configured, ``api_key_env`` unset or ``api_key_file`` absent;
    the key file unreadable; the value empty. The resolver
    (:meth:`ingress.tenants.Tenant.credential`) classifies; any other failure of
    a resolver counts as ``credential_missing``.
``quota_exceeded``
    The tenant has sent more than its outgoing quota (samples per second,
    token bucket); ``retry_after`` says when enough has refilled.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Mapping

from ingress.errors import TENANT_CHECK_CATEGORIES, TenantCheckError
from ingress.tokenbucket import TokenBucket

CATEGORIES = TENANT_CHECK_CATEGORIES

Credential = Callable[[], str]


@dataclass
class TenantRule:
    """What the checker knows of one tenant.

    Parameters
    ----------
    enabled
        ``enabled`` from the tenant's configuration.
    credential
        Resolves the tenant's credential, e.g. ``ingress.tenants.Tenant.credential``
        (a :class:`TenantCheckError` it raises keeps its category; anything
        else counts as ``credential_missing``); ``None`` when none is configured.
    max_samples_per_s
        Outgoing quota in samples per second; ``None`` for no quota.
    burst_samples
        Bucket size of the quota; default ten seconds' worth.
    """

    enabled: bool = True
    credential: Credential | None = None
    max_samples_per_s: float | None = None
    burst_samples: float | None = None


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
        self._buckets: dict[str, TokenBucket] = {}
        self._failures: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
        self._last: dict[str, str] = {}
        self.update(tenants)

    def update(self, tenants: Mapping[str, TenantRule]) -> None:
        """Swap in a new rule set (configuration reload); quota buckets of kept tenants persist."""
        with self._lock:
            self._rules = dict(tenants)
            buckets = {}
            for t, r in self._rules.items():
                if r.max_samples_per_s:
                    cap = r.burst_samples or r.max_samples_per_s * 10
                    old = self._buckets.get(t)
                    if old is not None and old.rate == r.max_samples_per_s and old.burst == cap:
                        buckets[t] = old
                    else:
                        buckets[t] = TokenBucket(r.max_samples_per_s, cap, clock=self.clock)
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
        except TenantCheckError as e:
            self._fail(e.category, tenant, e.detail)
        except Exception as e:  # noqa: BLE001 - a resolver's own failure keeps the batch spooled
            self._fail("credential_missing", tenant, str(e))
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
                wait = b.try_take(samples) if b is not None else None
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
