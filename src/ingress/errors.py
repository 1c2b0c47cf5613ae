"""One error hierarchy for the whole agent.

Every failure a user or a backend can cause is one of these. Transport errors
are classified once, here: retryable (try again later, keep the batch) or
permanent (set the batch aside as a dead letter).
"""
from __future__ import annotations

from ingress.logs import SECRETS


class IngressError(Exception):
    """Base of every error raised on purpose by ingress.

    Its message passes through :func:`ingress.logs.redact`: a credential that a
    server echoes back, or that a library quotes, is replaced by ``[redacted]``
    before the text can reach a log line, a status answer or a dead letter.
    """

    def __init__(self, *args: object) -> None:
        if SECRETS:
            args = tuple(SECRETS.redact(a) if isinstance(a, str) else a for a in args)
        super().__init__(*args)


class ConfigError(IngressError, ValueError):
    """The configuration is invalid; the message names the file, line and key."""


class WireError(IngressError, ValueError):
    """Bytes that claim to be a batch are not a valid batch; says what was wrong."""


class DecodeMemoryError(WireError):
    """A batch that may be valid could not be decoded because memory ran out.

    Not the batch's fault: a receiver should answer "retry later" (the sink: 503),
    never set the batch aside as invalid.
    """


class DecodeLimitError(WireError):
    """A batch is over one of the reader's decode limits (``ingress.wire.DecodeLimits``).

    Attributes
    ----------
    limit
        The name of the limit, a field of ``DecodeLimits`` (``"max_samples"``, ...).
    value, maximum
        What the batch declares and what the limit allows.
    """

    def __init__(self, message: str, limit: str, value: int, maximum: float) -> None:
        super().__init__(message)
        self.limit, self.value, self.maximum = limit, value, maximum


class SpoolError(IngressError):
    """The on-disk spool cannot accept or return a record."""


class TransportError(IngressError):
    """Delivering a batch failed."""

    retryable: bool = True


class RetryableError(TransportError):
    """Worth trying again later (network error, 408, 429, 5xx, broker down)."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(TransportError):
    """Trying again cannot help (other 4xx); the batch becomes a dead letter."""

    retryable = False


class CredentialRefusedError(RetryableError):
    """The backend refused the tenant's credential (HTTP 401 or 403).

    Not a dead letter: the delivery loop holds the (tenant, output) pair, its
    breaker open with reason ``credential_refused``, and probes again (reading
    the credential anew) after the breaker's reset time. Anything that does not
    know this class sees a retryable error, so the batch is never lost.
    """

    credential_refused = True

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


TENANT_CHECK_CATEGORIES = (
    "tenant_unknown",  # not (or no longer) in the configuration
    "tenant_disabled",  # enabled = false
    "credential_missing",  # nothing configured, variable unset, key file absent
    "credential_unreadable",  # key file exists but cannot be read
    "credential_empty",  # variable or key file holds nothing
    "quota_exceeded",  # over the tenant's outgoing quota; retry_after says when
)


class TenantCheckError(IngressError):
    """A batch may not leave now because of its tenant; it stays in the spool.

    Attributes
    ----------
    category
        One of :data:`TENANT_CHECK_CATEGORIES`.
    tenant
        The tenant id.
    detail
        What was wrong, without the tenant and category.
    retry_after
        Seconds after which checking again can succeed, when known (quota).
    """

    def __init__(self, category: str, tenant: str, message: str, retry_after: float | None = None) -> None:
        if category not in TENANT_CHECK_CATEGORIES:
            raise ValueError(f"unknown tenant check category {category!r}")
        super().__init__(f"tenant {tenant!r}: {category}: {message}")
        self.category = category
        self.tenant = tenant
        self.detail = SECRETS.redact(message)
        self.retry_after = retry_after
