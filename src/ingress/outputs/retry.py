"""Retry policy: how long to wait before trying a batch again, and whether to.

Failures are classified once, here. A :class:`~ingress.errors.TransportError`
carries its own ``retryable`` flag; anything else an output raises (a bug, an
unexpected exception from a client library) counts as retryable, because the
batch is still in the spool and losing it would be worse than retrying it.

There is no give-up: a batch is retried for as long as the spool holds it. The
spool's retention and quota are what eventually let go of old data, and they
count what they drop.

Delays use exponential backoff with "full jitter" (a uniformly random wait
between 0 and the capped exponential), which spreads the retries of many agents
hitting the same endpoint instead of synchronising them. A server's
``Retry-After`` is a floor for the wait, itself capped by ``max_retry_after``
so a misconfigured server cannot park a tenant for days.
"""
from __future__ import annotations

import random
from typing import Callable

from ingress.errors import TransportError


def is_retryable(err: BaseException) -> bool:
    """True when a failed batch should stay in the spool and be tried again."""
    if isinstance(err, TransportError):
        return bool(err.retryable)
    return True


def retry_after_of(err: BaseException) -> float | None:
    """The server-requested wait carried by ``err`` (seconds), if any."""
    ra = getattr(err, "retry_after", None)
    if ra is None:
        return None
    try:
        ra = float(ra)
    except (TypeError, ValueError):
        return None
    return ra if ra >= 0 else None


class Backoff:
    """Capped exponential backoff with full jitter.

    Parameters
    ----------
    base_s
        The cap of the first retry's wait; doubles (``multiplier``) per attempt.
    cap_s
        The largest cap; the wait never exceeds it (except to honour Retry-After).
    multiplier
        Growth factor per attempt.
    max_retry_after_s
        Upper bound applied to a server's Retry-After.
    rng
        ``rng() -> float in [0, 1)``; inject a fixed sequence in tests.

    Examples
    --------
    >>> b = Backoff(base_s=1.0, cap_s=8.0, rng=lambda: 0.5)
    >>> [b.delay(a) for a in (1, 2, 3, 4, 5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    """

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 60.0,
        multiplier: float = 2.0,
        max_retry_after_s: float = 600.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base_s <= 0 or cap_s < base_s or multiplier < 1:
            raise ValueError(f"backoff: need 0 < base_s <= cap_s and multiplier >= 1, got "
                             f"base_s={base_s} cap_s={cap_s} multiplier={multiplier}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.multiplier = multiplier
        self.max_retry_after_s = max_retry_after_s
        self.rng = rng

    def ceiling(self, attempt: int) -> float:
        """The cap of the wait before retry number ``attempt`` (1-based)."""
        if attempt <= 0:
            return 0.0
        # Stop multiplying once past the cap: avoids float overflow on long outages.
        c = self.base_s
        for _ in range(attempt - 1):
            c *= self.multiplier
            if c >= self.cap_s:
                return self.cap_s
        return min(c, self.cap_s)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = first retry)."""
        d = self.rng() * self.ceiling(attempt)
        if retry_after is not None:
            d = max(d, min(float(retry_after), self.max_retry_after_s))
        return d
