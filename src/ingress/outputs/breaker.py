"""Circuit breaker, one per (tenant, output).

While an endpoint keeps failing, the breaker stops the delivery worker from
hammering it: after ``failure_threshold`` consecutive retryable failures it
*opens*; no batch is sent until ``reset_timeout_s`` has passed, then it is
*half-open* and lets exactly one probe batch through. The probe's success
closes it; its failure opens it again for another ``reset_timeout_s``.

Permanent failures (a 400) say the endpoint is up and answering, so they do not
count. A refused credential (HTTP 401/403) opens the breaker at once through
:meth:`CircuitBreaker.trip` with reason ``credential_refused``: nothing is sent
for that pair until the reset time, then one probe (with the credential read
anew) decides. The state is exported through :meth:`CircuitBreaker.snapshot`
for the control API's /readyz and /metrics.

State machine (see docs/delivery.md for the diagram)::

    closed --N consecutive failures--> open --reset timeout--> half_open
    half_open --probe succeeds--> closed
    half_open --probe fails--> open
"""
from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe.

    Parameters
    ----------
    failure_threshold
        Consecutive failures that open the breaker.
    reset_timeout_s
        How long it stays open before allowing a probe.
    clock
        Monotonic seconds; inject a fake in tests.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s < 0:
            raise ValueError(f"breaker: failure_threshold={failure_threshold} must be >= 1 and "
                             f"reset_timeout_s={reset_timeout_s} >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._reason: str | None = None
        self.consecutive_failures = 0
        self.failures = 0
        self.successes = 0
        self.times_opened = 0

    def _advance(self) -> None:
        if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout_s:
            self._state = HALF_OPEN
            self._probe_in_flight = False

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open turns half-open once its time is up)."""
        with self._lock:
            self._advance()
            return self._state

    @property
    def opened_at(self) -> float | None:
        """Clock time the breaker last opened; ``None`` while closed."""
        with self._lock:
            return self._opened_at if self._state != CLOSED else None

    def allow(self) -> bool:
        """May a batch be sent now? In half-open, True once (the probe) until its outcome is recorded."""
        with self._lock:
            self._advance()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until :meth:`allow` can return True again (0 when it can now)."""
        with self._lock:
            self._advance()
            if self._state == OPEN:
                return max(0.0, self._opened_at + self.reset_timeout_s - self.clock())
            if self._state == HALF_OPEN and self._probe_in_flight:
                return self.reset_timeout_s  # until the probe reports; a wake-up comes earlier
            return 0.0

    @property
    def reason(self) -> str | None:
        """Why the breaker is not closed: ``"failures"`` or the reason given to :meth:`trip`."""
        with self._lock:
            return self._reason if self._state != CLOSED else None

    def trip(self, reason: str) -> None:
        """Open now, whatever the failure count (a refused credential); one probe after the reset time."""
        with self._lock:
            self._advance()
            self.failures += 1
            self.consecutive_failures += 1
            if self._state != OPEN:
                self.times_opened += 1
            self._state = OPEN
            self._opened_at = self.clock()
            self._probe_in_flight = False
            self._reason = reason

    def record_success(self) -> None:
        with self._lock:
            self.successes += 1
            self.consecutive_failures = 0
            self._state = CLOSED
            self._opened_at = None
            self._probe_in_flight = False
            self._reason = None

    def record_failure(self) -> None:
        with self._lock:
            self._advance()
            self.failures += 1
            self.consecutive_failures += 1
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self.consecutive_failures >= self.failure_threshold
            ):
                self._state = OPEN
                self._opened_at = self.clock()
                self._probe_in_flight = False
                self._reason = "failures"
                self.times_opened += 1

    def snapshot(self) -> dict:
        """State and counters as plain data (for /readyz and /metrics)."""
        with self._lock:
            self._advance()
            return {
                "state": self._state,
                "opened_at": self._opened_at if self._state != CLOSED else None,
                "consecutive_failures": self.consecutive_failures,
                "failures": self.failures,
                "successes": self.successes,
                "times_opened": self.times_opened,
                "reason": self._reason if self._state != CLOSED else None,
            }
