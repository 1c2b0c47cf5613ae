"""The delivery loop: from the spool to the outputs, per (tenant, output) pair.

Every pair gets its own worker thread, its own backoff state and its own
circuit breaker, so a tenant whose endpoint hangs or fails only ever waits on
itself: other tenants on the same output, and the same tenant on other
outputs, keep flowing.

One worker does, in a loop::

    pending = spool.pending(tenant, output, limit=window)   # oldest first, unacked
    for each record not already in flight:
        tenant_checker.check(tenant)     # fails -> stays in the spool, check again later
        breaker.allow()                  # open -> wait for the reset timeout
        output.submit(batch, done)       # asynchronous; done() wakes the worker
    on done(batch, None)                 -> spool.ack
    on done(batch, retryable error)      -> backoff (honouring Retry-After), breaker.record_failure
    on done(batch, permanent error)      -> dead letter on disk, then spool.ack
    on done(batch, credential refused)   -> (HTTP 401/403) breaker tripped open, reason
                                            credential_refused; the batch stays in the spool

Nothing is kept only in memory: a batch leaves the spool only after its output
acknowledged it or it was written to the dead-letter directory, so a new
:class:`Delivery` over the same spool (after a crash or restart) resumes where
the last one stopped. Delivery is at least once: a batch acknowledged by the
backend whose ack did not reach the spool is sent again with the same batch id.

While a pair is retrying (or its breaker is not closed) it sends one batch at a
time, the oldest, so a recovering endpoint is probed gently and the backlog
drains in order; otherwise up to ``window`` batches are in flight.

Dead letters (directories 0700, files 0600; ingress.outputs.deadletter keeps the area
under a per-tenant size cap and age limit and picks up replays)::

    <data_dir>/deadletter/<tenant>/<output>/<batch id hex>.batch   the payload, as sent; sealed with
                                                                   the tenant's key when its spool
                                                                   encrypts (ingress.security.crypto)
    <data_dir>/deadletter/<tenant>/<output>/<batch id hex>.json    {"batch_id", "tenant", "output",
        "host", "sample_count", "error", "reason", "time",         reason = the error's first line
        "encrypted"}

One pair's worker is :class:`ingress.outputs.pair.Pair`; this module owns the pairs,
their threads and the dead-letter area.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ingress.logs import get_logger
from ingress.outputs import deadletter as dlmod
from ingress.outputs.base import Output
from ingress.outputs.breaker import CircuitBreaker, CLOSED
from ingress.outputs.pair import CREDENTIAL_REFUSED, Pair, audit_event
from ingress.outputs.retry import Backoff
from ingress.outputs.validate import TenantChecker


log = get_logger("ingress.delivery")


class Delivery:
    """Moves spooled batches to the outputs, one worker thread per (tenant, output).

    Parameters
    ----------
    spool
        Anything with ``pending(tenant, output, limit=N)`` (records with ``ref``,
        ``batch_id``, ``payload``, ``sample_count``) and ``ack(tenant, output, ref)``,
        i.e. :class:`ingress.spool.Spool`.
    outputs
        Started outputs; each serves the tenants its ``serves()`` accepts.
    tenant_checker
        Checks each batch's tenant before it is sent; ``None`` skips the checks.
    tenants
        Tenant ids to deliver for.
    data_dir
        The agent's data directory (dead letters go to ``<data_dir>/deadletter``).
    host
        Host name put on outgoing batches (Kafka ``host`` header); a record with
        a ``host`` attribute overrides it.
    window
        Batches in flight per pair while healthy.
    backoff
        A :class:`Backoff`, or a factory returning one per pair.
    breaker_factory
        Returns a new :class:`CircuitBreaker` per pair.
    check_retry_s
        How soon a pair held back by a failed tenant check looks again.
    idle_poll_s
        How often an idle worker looks at the spool when not woken by :meth:`notify`.
    clock, wall_ns
        Monotonic seconds and wall-clock nanoseconds; injectable for tests.
    deadletter_limits
        ``{tenant: (max_bytes, max_age_s)}`` of the dead-letter area (0: no limit);
        every Delivery over one data directory shares one
        :class:`ingress.outputs.deadletter.Area`.
    spool_lock
        A lock to hold around every call into the spool; by default none, as
        :class:`ingress.spool.Spool` is thread-safe (workers call ``pending``
        and ``ack`` concurrently).
    """

    def __init__(
        self,
        spool: Any,
        outputs: Sequence[Output],
        tenant_checker: TenantChecker | None = None,
        *,
        tenants: Iterable[str],
        data_dir: str | os.PathLike,
        host: str = "",
        window: int = 4,
        backoff: Backoff | Callable[[], Backoff] | None = None,
        breaker_factory: Callable[[], CircuitBreaker] | None = None,
        check_retry_s: float = 5.0,
        idle_poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        spool_lock: Any = None,
        deadletter_limits: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"delivery window={window} must be at least 1")
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        self.spool = spool
        self.outputs = list(outputs)
        self.tenant_checker = tenant_checker
        self.tenants = list(dict.fromkeys(tenants))
        self.deadletter_dir = Path(data_dir) / "deadletter"
        self.deadletters = dlmod.shared_area(data_dir, deadletter_limits, _deadletter_dropped)
        self.host = host
        self.window = window
        if backoff is None:
            self._backoff_factory: Callable[[], Backoff] = Backoff
        elif isinstance(backoff, Backoff):
            self._backoff_factory = lambda: backoff
        else:
            self._backoff_factory = backoff
        self._breaker_factory = breaker_factory or CircuitBreaker
        self.check_retry_s = check_retry_s
        self.idle_poll_s = idle_poll_s
        self.clock = clock
        self.wall_ns = wall_ns
        self.spool_lock = spool_lock if spool_lock is not None else contextlib.nullcontext()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._pairs: dict[tuple[str, str], Pair] = {}
        for t in self.tenants:
            for o in self.outputs:
                if o.serves(t):
                    self._pairs[(t, o.name)] = Pair(self, t, o)
        self._pollers: list[threading.Thread] = []
        self._started = False

    def host_of(self, rec: Any) -> str:
        return getattr(rec, "host", None) or self.host

    def start(self) -> None:
        """Start one worker per pair, plus a poll thread per output that needs one."""
        if self._started:
            raise RuntimeError("Delivery.start() called twice; build a new Delivery to restart")
        self._started = True
        for o in self.outputs:
            # Outputs whose completions come from poll() (Kafka delivery reports) get a thread.
            if type(o).poll is not Output.poll:
                t = threading.Thread(target=self._poll_loop, args=(o,), name=f"poll-{o.name}", daemon=True)
                self._pollers.append(t)
                t.start()
        for p in list(self._pairs.values()):
            p.thread.start()

    def _poll_loop(self, o: Output) -> None:
        while not self._stopping.is_set() or any(
            p.thread.is_alive() for (t, n), p in list(self._pairs.items()) if n == o.name
        ):
            try:
                o.poll(0.1)
            except Exception:  # noqa: BLE001
                log.exception("output poll failed", output=o.name)
                time.sleep(0.1)

    def notify(self, tenant: str | None = None) -> None:
        """Wake the workers of ``tenant`` (all when None): new batches are in the spool."""
        for (t, _), p in list(self._pairs.items()):
            if tenant is None or t == tenant:
                p.notify()

    def stop(self, timeout: float = 10.0) -> int:
        """Stop sending; wait up to ``timeout`` s for in-flight batches.

        Returns the number of batches still in flight; they stay in the spool
        and go out again on the next start. Outputs are not closed here.
        """
        self._stop_deadline = self.clock() + timeout
        self._stopping.set()
        self.notify()
        end = time.monotonic() + timeout + 1.0
        for p in list(self._pairs.values()):
            if p.thread.is_alive():
                p.thread.join(max(0.0, end - time.monotonic()))
        for t in self._pollers:
            t.join(max(0.0, end - time.monotonic()))
        left = 0
        for p in list(self._pairs.values()):
            with p.cond:
                p.closed = True
                left += sum(1 for f in p.inflight.values() if not f.reported)
        return left

    def set_tenants(self, tenants: Iterable[str], timeout: float = 10.0) -> tuple[list, list]:
        """Deliver for ``tenants`` from now on (a configuration reload); returns (added, removed) pairs.

        A pair whose tenant is no longer listed (or whose output no longer
        ``serves()`` it) finishes the batches it has in
        flight (up to ``timeout`` s), then its worker ends; whatever it had not
        sent stays in the spool. Workers of new pairs start at once when this
        Delivery is running. The pairs of the other tenants are not touched.
        """
        wanted = list(dict.fromkeys(tenants))
        keep = set(wanted)
        by_name = {o.name: o for o in self.outputs}
        removed = [k for k in list(self._pairs) if k[0] not in keep or not by_name[k[1]].serves(k[0])]
        end = self.clock() + timeout
        for k in removed:
            p = self._pairs[k]
            p.retire_deadline = end
            p.retiring = True
            p.notify()
        wall_end = time.monotonic() + timeout + 1.0
        for k in removed:
            p = self._pairs.pop(k)
            if p.thread.is_alive():
                p.thread.join(max(0.0, wall_end - time.monotonic()))
            with p.cond:
                p.closed = True
        added = []
        for t in wanted:
            for o in self.outputs:
                if o.serves(t) and (t, o.name) not in self._pairs:
                    p = Pair(self, t, o)
                    self._pairs[(t, o.name)] = p
                    added.append((t, o.name))
                    if self._started and not self._stopping.is_set():
                        p.thread.start()
        self.tenants = wanted
        return added, removed

    def pairs(self) -> list[tuple[str, str]]:
        """The (tenant, output name) pairs being delivered."""
        return list(self._pairs)

    def breaker(self, tenant: str, output: str) -> CircuitBreaker:
        return self._pairs[(tenant, output)].breaker

    def stats(self) -> dict[str, dict[str, dict]]:
        """``{tenant: {output: counters}}``: sent_batches, sent_samples, retries, failures,
        dead_letters, in_flight, last_error, last_error_at, tenant_check_failures,
        latency_p50_s, latency_p99_s (close -> ack), breaker, blocked, state."""
        out: dict[str, dict[str, dict]] = {}
        for (t, n), p in list(self._pairs.items()):
            out.setdefault(t, {})[n] = p.snapshot()
        return out

    def failing(self) -> set[tuple[str, str]]:
        """The (tenant, output name) pairs that cannot deliver now: breaker not closed, or blocked."""
        return {k for k, p in list(self._pairs.items()) if p.breaker.state != CLOSED or p.blocked}

    def problems(self) -> list[str]:
        """Reasons an output is not usable right now (for /readyz); empty when all is well."""
        reasons = []
        for (t, n), p in list(self._pairs.items()):
            st = p.breaker.state
            if st != CLOSED and p.refused is not None:
                reasons.append(f"output {n}: tenant {t}: {CREDENTIAL_REFUSED} (HTTP {p.refused}): "
                               f"{p.stats.last_error}")
            elif st != CLOSED:
                reasons.append(f"output {n}: tenant {t}: circuit breaker {st}: {p.stats.last_error}")
            elif p.blocked:
                reasons.append(f"output {n}: tenant {t}: {p.stats.last_error}")
        return reasons


def _deadletter_dropped(dl: "dlmod.DeadLetter", why: str) -> None:
    log.warning(f"dead letter removed: {why}", tenant=dl.tenant, output=dl.output, batch_id=dl.batch_id)
    audit_event("deadletter_dropped", "dropped", tenant=dl.tenant, output=dl.output, batch_id=dl.batch_id,
           bytes=dl.size, reason=why)
