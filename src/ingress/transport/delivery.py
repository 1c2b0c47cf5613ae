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

Dead letters (directories 0700, files 0600; ingress.transport.deadletter keeps the area
under a per-tenant size cap and age limit and picks up replays)::

    <data_dir>/deadletter/<tenant>/<output>/<batch id hex>.batch   the payload, as sent; sealed with
                                                                   the tenant's key when its spool
                                                                   encrypts (ingress.security.crypto)
    <data_dir>/deadletter/<tenant>/<output>/<batch id hex>.json    {"batch_id", "tenant", "output",
        "host", "sample_count", "error", "reason", "time",         reason = the error's first line
        "encrypted"}
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ingress._fs import fsync_dir, write_atomic
from ingress.logs import RateLimiter, get_logger
from ingress.transport import deadletter as dlmod
from ingress.transport.base import OutgoingBatch, Output
from ingress.transport.breaker import CLOSED, CircuitBreaker
from ingress.transport.retry import Backoff, is_retryable, retry_after_of
from ingress.errors import TenantCheckError
from ingress.transport.validate import CATEGORIES, TenantChecker

log = get_logger("ingress.delivery")

_LATENCY_WINDOW = 1024
_LOG_EVERY_S = 60.0
_MAINTAIN_EVERY_S = 5.0  # how often a worker looks for replays and applies the dead-letter limits
CREDENTIAL_REFUSED = "credential_refused"
# Upper bounds (seconds) of the send-latency histogram (submit -> the output's answer); +Inf last.
SEND_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _audit(action: str, outcome: str, **fields: Any) -> None:
    """One audit line (a no-op when no audit log is open); never raises."""
    try:
        from ingress.security import audit

        audit.record(action, outcome, actor="agent", **fields)
    except Exception:  # noqa: BLE001 - auditing must not stop delivery
        log.debug("audit record failed", action=action, error=traceback.format_exc(limit=3))


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error message, at most 300 characters."""
    text = str(err)
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(err).__name__ if isinstance(err, BaseException) else ""


def _percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


@dataclass
class PairStats:
    """Counters of one (tenant, output) pair; read them through :meth:`Delivery.stats`."""

    sent_batches: int = 0
    sent_samples: int = 0
    retries: int = 0
    failures: int = 0
    dead_letters: int = 0
    in_flight: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock, seconds since epoch
    tenant_check_failures: dict = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    latencies: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    credential_refusals: int = 0
    send_buckets: list = field(default_factory=lambda: [0] * (len(SEND_LATENCY_BUCKETS) + 1))
    send_sum_s: float = 0.0


def _is_check_error(err: BaseException) -> bool:
    """A tenant check failure (the checker's, or a credential resolver's raised by an output)."""
    return isinstance(err, TenantCheckError)


def _key(rec: Any) -> Any:
    """Identity of a spool record: its ref (the same batch id may be spooled twice)."""
    try:
        hash(rec.ref)
        return ("ref", rec.ref)
    except TypeError:
        return ("id", bytes(rec.batch_id))


@dataclass
class _Flight:
    key: Any
    rec: Any
    batch: OutgoingBatch
    t0: float  # monotonic time of this submission
    reported: bool = False


class _Pair:
    """The worker of one (tenant, output) pair."""

    def __init__(self, d: "Delivery", tenant: str, output: Output) -> None:
        self.d = d
        self.tenant = tenant
        self.output = output
        self.needs_credential = bool(getattr(output, "needs_credential", False))
        self.cond = threading.Condition()
        self.results: deque[tuple[_Flight, BaseException | None]] = deque()
        self.wake = False
        self.inflight: dict[Any, _Flight] = {}
        self.first_seen: dict[Any, float] = {}
        self.attempts = 0
        self.retry_at = 0.0
        self.blocked: str | None = None  # tenant check category while blocked
        self.refused: int | None = None  # HTTP status while the backend refuses the credential
        self.last_refused_log = -1e18
        self.next_maintain = 0.0
        self.breaker = d._breaker_factory()
        self.backoff = d._backoff_factory()
        self.stats = PairStats()
        self.stats_lock = threading.Lock()
        self.log_limiter = RateLimiter(d.clock)  # retry lines: one a minute per pair, by its clock
        self.closed = False
        self.retiring = False  # set by Delivery.set_tenants: finish what is in flight, then end
        self.retire_deadline = 0.0
        self.thread = threading.Thread(target=self.run, name=f"deliver-{tenant}-{output.name}", daemon=True)

    # -- callbacks from outputs (any thread) ----------------------------------
    def _done_for(self, flight: _Flight) -> Callable[[OutgoingBatch, BaseException | None], None]:
        def done(batch: OutgoingBatch, err: BaseException | None) -> None:
            with self.cond:
                if flight.reported or self.closed:
                    return  # exactly once; after stop the spool keeps the batch
                flight.reported = True
                self.results.append((flight, err))
                self.cond.notify()

        return done

    def notify(self) -> None:
        with self.cond:
            self.wake = True
            self.cond.notify()

    # -- the loop ------------------------------------------------------------
    def run(self) -> None:
        d = self.d
        while True:
            try:
                with self.cond:
                    results = list(self.results)
                    self.results.clear()
                for flight, err in results:
                    try:
                        self._complete(flight, err)
                    except Exception as e:  # noqa: BLE001 - the batch is still in the spool
                        self.inflight.pop(flight.key, None)
                        log.exception("delivery: completing a batch failed",
                                      tenant=self.tenant, output=self.output.name)
                        self._note_error(f"internal: {first_line(e)}")
                if d._stopping.is_set() or self.retiring:
                    remaining = (d._stop_deadline if d._stopping.is_set() else self.retire_deadline) - d.clock()
                    if not self.inflight or remaining <= 0:
                        break
                    self._wait(min(remaining, 0.1))
                    continue
                self._wait(self._step())
            except Exception as e:  # noqa: BLE001 - a worker must survive anything and keep the spool
                log.exception("delivery: unexpected error", tenant=self.tenant, output=self.output.name)
                self._note_error(f"internal: {first_line(e)}")
                self._wait(d.idle_poll_s)
        with self.cond:
            self.closed = True
        with self.stats_lock:
            self.stats.in_flight = len(self.inflight)

    def _wait(self, timeout: float | None) -> None:
        with self.cond:
            if self.results or self.wake:
                self.wake = False
                return
            self.cond.wait(self.d.idle_poll_s if timeout is None else max(0.0, timeout))
            self.wake = False

    def _window(self) -> int:
        if self.attempts > 0 or self.breaker.state != CLOSED:
            return 1
        return self.d.window

    def _fetch(self, n: int) -> list:
        d = self.d
        with d.spool_lock:
            it = d.spool.pending(self.tenant, self.output.name, limit=n)
            return list(itertools.islice(it, n))

    def _step(self) -> float | None:
        """Submit what may be submitted now; return how long to sleep (None: default idle)."""
        d = self.d
        now = d.clock()
        if now >= self.next_maintain:
            self.next_maintain = now + _MAINTAIN_EVERY_S
            self._maintain()
        if now < self.retry_at:
            return self.retry_at - now
        free = self._window() - len(self.inflight)
        if free <= 0:
            return d.idle_poll_s
        recs = self._fetch(len(self.inflight) + free)
        fresh = [r for r in recs if _key(r) not in self.inflight][:free]
        if not fresh:
            self.blocked = None
            return d.idle_poll_s
        for rec in fresh:
            # Look without taking the half-open probe: a probe taken and then not
            # sent (tenant check failed) would keep the breaker waiting forever.
            wait = self.breaker.retry_in()
            if wait > 0:
                return min(wait, d.idle_poll_s * 10)
            if d.tenant_checker is not None:
                try:
                    d.tenant_checker.check(self.tenant, needs_credential=self.needs_credential,
                                           samples=int(rec.sample_count))
                except TenantCheckError as e:
                    self._blocked_by(e)
                    return self.retry_at - d.clock()
            if self.blocked is not None:
                log.info("delivery: tenant check passes again", tenant=self.tenant, output=self.output.name)
                self.blocked = None
            if not self.breaker.allow():
                return d.idle_poll_s
            self._submit(rec)
            if self._window() == 1:
                break
        return None

    def _submit(self, rec: Any) -> None:
        d = self.d
        key = _key(rec)
        batch = OutgoingBatch(tenant=self.tenant, batch_id=bytes(rec.batch_id), payload=bytes(rec.payload),
                              sample_count=int(rec.sample_count), host=d.host_of(rec))
        flight = _Flight(key, rec, batch, d.clock())
        self.first_seen.setdefault(key, flight.t0)
        self.inflight[key] = flight
        with self.stats_lock:
            self.stats.in_flight = len(self.inflight)
        try:
            self.output.submit(batch, self._done_for(flight))
        except Exception as e:  # noqa: BLE001 - a submit that raises is a failed attempt
            self._done_for(flight)(batch, e)

    def _complete(self, flight: _Flight, err: BaseException | None) -> None:
        d = self.d
        self.inflight.pop(flight.key, None)
        now = d.clock()
        if err is None:
            if not self._ack(flight):
                return
            self.breaker.record_success()
            if self.refused is not None:
                log.warning("delivery: credential accepted again; the held batches flow",
                            tenant=self.tenant, output=self.output.name)
                _audit("credential_accepted", "ok", tenant=self.tenant, output=self.output.name)
                self.refused = None
            if self.attempts:
                log.info(f"delivery: recovered after {self.attempts} failed attempts",
                         tenant=self.tenant, output=self.output.name, attempts=self.attempts)
            self.attempts = 0
            self.retry_at = 0.0
            with self.stats_lock:
                s = self.stats
                s.sent_batches += 1
                s.sent_samples += flight.batch.sample_count
                s.latencies.append(self._latency(flight, now))
                sent = max(0.0, now - flight.t0)
                s.send_buckets[bisect.bisect_left(SEND_LATENCY_BUCKETS, sent)] += 1
                s.send_sum_s += sent
                s.in_flight = len(self.inflight)
            return
        if getattr(err, "credential_refused", False):
            self._credential_refused(err, now)
            return
        if _is_check_error(err):
            self._blocked_by(err)
            with self.stats_lock:
                self.stats.in_flight = len(self.inflight)
            return
        if is_retryable(err):
            self._retry_later(flight, err, now)
            return
        # Permanent: set it aside, then let it leave the spool.
        try:
            self._dead_letter(flight, err)
        except OSError as e:
            self._retry_later(flight, e, now, note=f"dead letter not written ({e}); kept in spool")
            return
        if not self._ack(flight):
            return
        with self.stats_lock:
            self.stats.dead_letters += 1
            self.stats.failures += 1
            self.stats.in_flight = len(self.inflight)
        self._note_error(first_line(err))
        self.first_seen.pop(flight.key, None)
        log.warning(f"delivery: batch set aside as a dead letter: {first_line(err)}", tenant=self.tenant,
                    output=self.output.name, batch_id=flight.batch.batch_id.hex())
        _audit("batch_dead_lettered", "ok", tenant=self.tenant, output=self.output.name,
               batch_id=flight.batch.batch_id.hex(), samples=flight.batch.sample_count, reason=first_line(err))

    def _credential_refused(self, err: BaseException, now: float) -> None:
        """HTTP 401/403: hold the pair (breaker open, reason credential_refused); the batch stays
        in the spool and goes out again with the probe, which reads the credential anew."""
        self.breaker.trip(CREDENTIAL_REFUSED)
        first = self.refused is None
        self.refused = int(getattr(err, "status", 0) or 0)
        with self.stats_lock:
            self.stats.failures += 1
            self.stats.credential_refusals += 1
            self.stats.in_flight = len(self.inflight)
        self._note_error(first_line(err))
        if first:
            _audit("credential_refused", "refused", tenant=self.tenant, output=self.output.name,
                   status=self.refused, reason=first_line(err))
        if first or now - self.last_refused_log >= _LOG_EVERY_S:
            self.last_refused_log = now
            log.warning(f"delivery: the backend refuses the tenant's credential ({first_line(err)}); batches "
                        f"stay in the spool, probing again in {self.breaker.retry_in():.0f}s with the credential "
                        "read anew", tenant=self.tenant, output=self.output.name)

    def _maintain(self) -> None:
        """Replays queued by `ingress deadletter replay`, then the dead-letter limits (rate-limited)."""
        d = self.d
        area = d.deadletters
        try:
            replays = area.replays(self.tenant, self.output.name)
        except Exception:  # noqa: BLE001
            replays = []
        for dl in replays:
            outs = getattr(d.spool, "outputs_for", None)
            try:
                with d.spool_lock:
                    dlmod.requeue(d.spool, dl, outs(self.tenant) if outs else [self.output.name])
            except Exception as e:  # noqa: BLE001 - reported once; the dead letter stays
                try:
                    os.unlink(dl.path.with_suffix(".replay"))
                except OSError:
                    pass
                log.error(f"delivery: dead letter not replayed: {first_line(e)}", tenant=self.tenant,
                          output=self.output.name, batch_id=dl.batch_id)
                _audit("deadletter_replayed", "failed", tenant=self.tenant, output=self.output.name,
                       batch_id=dl.batch_id, reason=first_line(e))
                continue
            log.info("delivery: dead letter back in the spool", tenant=self.tenant, output=self.output.name,
                     batch_id=dl.batch_id)
            _audit("deadletter_replayed", "ok", tenant=self.tenant, output=self.output.name, batch_id=dl.batch_id)
            self.wake = True
        try:
            area.enforce(self.tenant)
        except Exception:  # noqa: BLE001
            log.exception("delivery: dead-letter limits not applied", tenant=self.tenant)

    def _retry_later(self, flight: _Flight, err: BaseException, now: float, note: str | None = None) -> None:
        self.breaker.record_failure()
        self.attempts += 1
        delay = self.backoff.delay(self.attempts, retry_after_of(err))
        self.retry_at = max(self.retry_at, now + delay)
        msg = note or first_line(err)
        with self.stats_lock:
            self.stats.failures += 1
            self.stats.retries += 1
            self.stats.in_flight = len(self.inflight)
        self._note_error(msg)
        log.every("retry", _LOG_EVERY_S, force=self.attempts == 1, limiter=self.log_limiter).warning(
            f"delivery: batch failed (attempt {self.attempts}, retry in {delay:.1f}s, breaker "
            f"{self.breaker.state}): {msg}", tenant=self.tenant, output=self.output.name,
            batch_id=flight.batch.batch_id.hex(), attempt=self.attempts, retry_in_s=round(delay, 3))

    def _blocked_by(self, e: BaseException) -> None:
        d = self.d
        ra = getattr(e, "retry_after", None)
        self.retry_at = d.clock() + (ra if ra is not None else d.check_retry_s)
        with self.stats_lock:
            c = self.stats.tenant_check_failures
            c[e.category] = c.get(e.category, 0) + 1
        self._note_error(str(e))
        if self.blocked != e.category:
            log.warning(f"delivery: held in the spool: {e}", tenant=self.tenant, output=self.output.name)
        self.blocked = e.category

    def _ack(self, flight: _Flight) -> bool:
        d = self.d
        try:
            with d.spool_lock:
                d.spool.ack(self.tenant, self.output.name, flight.rec.ref)
        except Exception as e:  # noqa: BLE001 - the batch stays pending and is sent again (same id)
            log.error(f"delivery: spool ack failed: {e}", tenant=self.tenant, output=self.output.name,
                      batch_id=flight.batch.batch_id.hex())
            self._note_error(f"spool ack failed: {first_line(e)}")
            return False
        return True

    def _latency(self, flight: _Flight, now: float) -> float:
        # The spool stamps each record when appended, right after the batch closed.
        closed_ns = getattr(flight.rec, "closed_ns", None) or getattr(flight.rec, "append_ns", None)
        t0 = self.first_seen.pop(flight.key, flight.t0)
        if closed_ns:
            return max(0.0, (self.d.wall_ns() - int(closed_ns)) / 1e9)
        return max(0.0, now - t0)

    def _note_error(self, msg: str) -> None:
        with self.stats_lock:
            self.stats.last_error = msg
            self.stats.last_error_at = time.time()

    def _dead_letter(self, flight: _Flight, err: BaseException) -> None:
        d = self.d
        name = flight.batch.batch_id.hex()
        payload = flight.batch.payload
        get_cipher = getattr(d.spool, "cipher_for", None)
        cipher = get_cipher(self.tenant) if get_cipher is not None else None
        if cipher is not None:  # the tenant's data is encrypted at rest: so is its dead letter
            from ingress.security.crypto import seal_dead_letter

            payload = seal_dead_letter(cipher, flight.batch.batch_id, payload)
        reason = {
            "batch_id": name,
            "tenant": self.tenant,
            "output": self.output.name,
            "host": flight.batch.host,
            "sample_count": flight.batch.sample_count,
            "error": type(err).__name__,
            "reason": first_line(err),
            "time": time.time(),
            "encrypted": cipher is not None,
        }
        d.deadletters.write(self.tenant, self.output.name, flight.batch.batch_id, payload, reason)

    def snapshot(self) -> dict:
        with self.stats_lock:
            s = self.stats
            lat = sorted(s.latencies)
            out = {
                "sent_batches": s.sent_batches,
                "sent_samples": s.sent_samples,
                "retries": s.retries,
                "failures": s.failures,
                "dead_letters": s.dead_letters,
                "in_flight": s.in_flight,
                "last_error": s.last_error,
                "last_error_at": s.last_error_at,
                "tenant_check_failures": dict(s.tenant_check_failures),
                "latency_p50_s": _percentile(lat, 0.50),
                "latency_p99_s": _percentile(lat, 0.99),
                "credential_refusals": s.credential_refusals,
                "send_latency": {"bounds": SEND_LATENCY_BUCKETS, "counts": list(s.send_buckets),
                                 "sum_s": s.send_sum_s},
            }
        out["breaker"] = self.breaker.snapshot()
        out["blocked"] = self.blocked
        refused = self.refused is not None and out["breaker"]["state"] != CLOSED
        out["credential_refused"] = self.refused if refused else None
        out["state"] = ("blocked" if self.blocked else
                        CREDENTIAL_REFUSED if refused else
                        out["breaker"]["state"] if out["breaker"]["state"] != CLOSED else
                        "retrying" if self.attempts else "ok")
        return out


_private_dirs = dlmod.private_dirs  # kept for callers of the old name


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
        :class:`ingress.transport.deadletter.Area`.
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
        self._pairs: dict[tuple[str, str], _Pair] = {}
        for t in self.tenants:
            for o in self.outputs:
                if o.serves(t):
                    self._pairs[(t, o.name)] = _Pair(self, t, o)
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
                    p = _Pair(self, t, o)
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
    _audit("deadletter_dropped", "dropped", tenant=dl.tenant, output=dl.output, batch_id=dl.batch_id,
           bytes=dl.size, reason=why)
