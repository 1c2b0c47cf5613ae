"""The one token bucket of the agent.

Two ways to take from it:

- :meth:`TokenBucket.acquire` / :meth:`TokenBucket.reserve` *pace*: the spool's
  disk write throttle (``agent.limits.disk_write_mb_s``) shares one bucket
  between every writer, so the limit holds for the sum of them. A caller
  reserves its bytes under a lock and then sleeps *outside* the lock for as
  long as the bucket is in debt: reservations queue up in the order they were
  made and no thread holds the lock while it waits. A request larger than the
  burst is allowed (it simply runs the bucket into debt), so no write is ever
  refused for being big.
- :meth:`TokenBucket.try_take` *polices*: a tenant's outgoing quota
  (:mod:`ingress.outputs.validate`) takes its samples only when the bucket
  holds them and otherwise says how long until it would; nothing is taken on a
  refusal. A request larger than the burst passes when the bucket is full, so an
  oversized batch slows its tenant down instead of blocking it for ever.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class TokenBucket:
    """Thread-safe byte-rate limiter.

    Parameters
    ----------
    rate_bytes_s : float
        Sustained rate in bytes per second; must be positive.
    burst_bytes : float, optional
        Bucket size: how many bytes may go out at once after an idle period.
        Default: one second worth of ``rate_bytes_s``, at least 1 MiB.
    clock, sleep : callables, optional
        Injected for tests (monotonic seconds, and a sleep of seconds).
    """

    def __init__(self, rate_bytes_s: float, burst_bytes: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate_bytes_s > 0:
            raise ValueError(f"write rate must be positive, got {rate_bytes_s!r}")
        self.rate = float(rate_bytes_s)
        self.burst = float(burst_bytes) if burst_bytes is not None else max(self.rate, 1 << 20)
        if not self.burst > 0:
            raise ValueError(f"burst must be positive, got {burst_bytes!r}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()
        self.waited_s = 0.0  # total time callers were held back, for self-metrics

    @classmethod
    def from_mb_s(cls, mb_s: float | None, **kw) -> "TokenBucket | None":
        """A bucket for ``mb_s`` MB/s (10^6 bytes), or ``None`` for no limit (None or 0)."""
        if mb_s is None or mb_s == 0:
            return None
        return cls(float(mb_s) * 1e6, **kw)

    def _refill(self) -> None:  # caller holds self._lock
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes from the bucket; return how long the caller must wait (s)."""
        with self._lock:
            self._refill()
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            self.waited_s += wait
            return wait

    def acquire(self, n: int) -> float:
        """Reserve ``n`` bytes and sleep until they may be written; returns the wait (s)."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_take(self, n: float) -> float | None:
        """Take ``n`` tokens if the bucket holds them (all of its burst, for an ``n``
        larger than the burst): None. Else take nothing and return the seconds until
        the same request would pass."""
        with self._lock:
            self._refill()
            need = min(n, self.burst)
            if self._tokens >= need:
                self._tokens -= n
                return None
            return (need - self._tokens) / self.rate
