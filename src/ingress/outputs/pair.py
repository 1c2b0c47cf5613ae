"""One (tenant, output) pair of the delivery loop: its worker, flights, retries, breaker and counters.

:class:`ingress.outputs.delivery.Delivery` owns one :class:`Pair` per
(tenant, output) and their threads; everything one pair does on its own
thread is here: fetch what is pending, check the tenant, ask the breaker,
submit, and on the answer ack, back off (:mod:`ingress.outputs.retry`),
hold on a refused credential or write a dead letter. The loop is described
in :mod:`ingress.outputs.delivery`.
"""
from __future__ import annotations

import bisect
import itertools
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ingress.errors import TenantCheckError
from ingress.logs import RateLimiter, get_logger
from ingress.outputs import deadletter as dlmod
from ingress.outputs.base import OutgoingBatch, Output
from ingress.outputs.breaker import CLOSED
from ingress.outputs.retry import is_retryable, retry_after_of
from ingress.outputs.validate import CATEGORIES


if TYPE_CHECKING:
    from ingress.outputs.delivery import Delivery

log = get_logger("ingress.delivery")

_LATENCY_WINDOW = 1024
_LOG_EVERY_S = 60.0
_MAINTAIN_EVERY_S = 5.0  # how often a worker looks for replays and applies the dead-letter limits
CREDENTIAL_REFUSED = "credential_refused"
# Upper bounds (seconds) of the send-latency histogram (submit -> the output's answer); +Inf last.
SEND_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def audit_event(action: str, outcome: str, **fields: Any) -> None:
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


class Pair:
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
                audit_event("credential_accepted", "ok", tenant=self.tenant, output=self.output.name)
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
        audit_event("batch_dead_lettered", "ok", tenant=self.tenant, output=self.output.name,
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
            audit_event("credential_refused", "refused", tenant=self.tenant, output=self.output.name,
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
                audit_event("deadletter_replayed", "failed", tenant=self.tenant, output=self.output.name,
                       batch_id=dl.batch_id, reason=first_line(e))
                continue
            log.info("delivery: dead letter back in the spool", tenant=self.tenant, output=self.output.name,
                     batch_id=dl.batch_id)
            audit_event("deadletter_replayed", "ok", tenant=self.tenant, output=self.output.name, batch_id=dl.batch_id)
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
