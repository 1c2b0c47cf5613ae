"""One error hierarchy for the whole agent.

Every failure a user or a backend can cause is one of these. Transport errors
are classified once, here: retryable (try again later, keep the batch) or
permanent (set the batch aside as a dead letter).
"""
from __future__ import annotations


class IngressError(Exception):
    """Base of every error raised on purpose by ingress."""


class ConfigError(IngressError, ValueError):
    """The configuration is invalid; the message names the file, line and key."""


class WireError(IngressError, ValueError):
    """Bytes that claim to be a batch are not a valid batch; says what was wrong."""


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
