"""The adaptive collection scheduler: when each collector runs, and for whom.

Design (docs/scheduling.md has the long form and the state diagram)::

    dispatcher thread                       one worker thread per collector
    -----------------                       -------------------------------
    loop:                                   loop:
      now = clock()                           due = queue.get()
      due = tick(now)   # pure decisions      cols = collector.collect(wall_ns)
      dispatch(due)     # hand to workers     on_columns(name, cols, due.tenants)
      wait(until the next pass is due)        mark idle

* Every collector has a nominal grid ``phase + k * interval``; each pass fires at
  its grid point plus a small random offset (``jitter`` x interval) and the
  phase is random per collector, so a fleet of agents started together does not
  read /proc in step. The grid, not the jittered fire time, decides which
  tenants a pass is for, so jitter never makes a tenant miss a pass.
* A collector whose previous pass is still running when the next one is due
  skips it and counts an *overrun*; passes never queue up behind a slow one, and
  a slow one never delays another collector (each has its own worker).
* Every ``sample_every`` seconds ``tick`` reads the load source. Above any high
  threshold (agent CPU over its budget, host CPU, CPU pressure, load per core)
  the scheduler doubles the interval of one priority class, lowest priority
  first (:class:`~ingress.collect.stretch.StretchLadder`); once every reading is below its low threshold
  it undoes the most recent step. Stretching waits ``stretch_dwell_s`` after any
  change and restoring waits ``restore_dwell_s``, so a load hovering around a
  threshold does not make the intervals flip-flop.

Everything time- and load-dependent is injected (clock, wait, load, rng), so
tests drive ``tick`` with scripted time and load and never sleep.
"""
from __future__ import annotations

import inspect
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ingress.collect.base import Collector, Columns
from ingress.collect.loadsource import LoadSource, PressureSample, ProcPressure
from ingress.collect.stretch import NS, Governor, StretchLadder, Thresholds

log = logging.getLogger("ingress.collect")

__all__ = ["Scheduler", "Due"]

FIRST_PASS_WITHIN_NS = NS  # the first pass of a started agent comes within this
HANDOFF_WAIT_S = 0.05  # how long one pass of a grid point may hold up the next (see _dispatch_in_turn)


@dataclass(frozen=True)
class Due:
    """One pass to run: which collector, its grid time, and the tenants it is for."""

    name: str
    nominal_ns: int
    tenants: tuple[str, ...]


class _Slot:
    """Per-collector schedule state; fields change under ``Scheduler._lock``."""

    __slots__ = (
        "name", "collector", "base_ns", "interval_ns", "next_nominal", "offset", "last_nominal",
        "tenant_ns", "tenant_due", "busy", "idle", "queue", "thread", "overruns", "overrunning",
        "errors", "failing", "passes", "busy_s", "last_s",
    )

    def __init__(self, name: str, collector: Collector, base_ns: int, tenant_ns: dict[str, int]) -> None:
        self.name = name
        self.collector = collector
        self.base_ns = base_ns
        self.interval_ns = base_ns
        self.next_nominal = 0
        self.offset = 0
        self.last_nominal: int | None = None
        self.tenant_ns = tenant_ns
        self.tenant_due: dict[str, int | None] = {t: None for t in tenant_ns}
        self.busy = False
        self.idle = threading.Event()
        self.idle.set()
        self.queue: queue.SimpleQueue[Due | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.overruns = 0
        self.overrunning = False
        self.errors = 0
        self.failing = False
        self.passes = 0
        self.busy_s = 0.0  # seconds spent in collect + on_columns, all passes
        self.last_s: float | None = None  # the last pass's


def _seconds_ns(what: str, v: float) -> int:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"{what}: {v!r} is not a positive number of seconds")
    return int(round(v * NS))


class Scheduler:
    """Runs collectors at their tenants' intervals, stretching them under load.

    Parameters
    ----------
    collectors
        ``{name: Collector}``; each gets its own worker thread.
    base_intervals
        ``{name: seconds}``: the smallest interval among the tenants using the
        collector. Clamped to ``[min_interval, max_interval]`` (logged).
    priorities
        ``{name: int}``, lower is stretched first; default each collector's
        ``priority`` class attribute.
    min_interval, max_interval
        Bounds (seconds) no effective interval ever leaves.
    cpu_budget_percent
        ``agent.limits.cpu_percent``: the agent's CPU budget in % of one core.
    on_columns
        ``on_columns(name, columns, tenants)``, called on the collector's worker
        after each successful pass; ``tenants`` is the tuple of tenant ids whose
        interval this pass serves (empty when ``tenant_intervals`` is not given).
        At most one pass per collector is in flight, so calls for one collector
        never overlap.
    tenant_intervals
        ``{name: {tenant_id: seconds}}``: which tenants want a collector and how
        often. A tenant receives the pass nearest to its due time, so with a 5 s
        collector a 10 s tenant gets every second pass.
    thresholds
        :class:`Thresholds`; the defaults are documented in docs/scheduling.md.
    sample_every
        Seconds between two readings of ``load``.
    clock
        Monotonic nanoseconds; drives every decision.
    wall_clock
        Nanoseconds since the epoch, handed to ``collect``.
    wait
        ``wait(seconds)`` blocks the dispatcher until the next pass is due; it may
        return early. Default: waits on the stop event, so :meth:`stop` is prompt.
    load
        A :class:`~ingress.collect.loadsource.LoadSource`; default
        :class:`~ingress.collect.loadsource.ProcPressure`.
    rng
        ``random.Random`` or a seed for phases and jitter.
    jitter
        Per-grid-point random offset as a fraction of the shortest interval, in
        ``[0, 0.5]``; every collector firing at that point shares it.
    """

    def __init__(
        self,
        collectors: Mapping[str, Collector],
        base_intervals: Mapping[str, float],
        priorities: Mapping[str, int] | None = None,
        min_interval: float = 1.0,
        max_interval: float = 300.0,
        cpu_budget_percent: float = 5.0,
        on_columns: Callable[[str, Columns, tuple[str, ...]], None] | None = None,
        *,
        tenant_intervals: Mapping[str, Mapping[str, float]] | None = None,
        thresholds: Thresholds | None = None,
        sample_every: float = 5.0,
        clock: Callable[[], int] = time.monotonic_ns,
        wall_clock: Callable[[], int] = time.time_ns,
        wait: Callable[[float], object] | None = None,
        load: LoadSource | None = None,
        rng: random.Random | int | None = None,
        jitter: float = 0.1,
    ) -> None:
        names = set(collectors)
        for what, keys in (("base_intervals", base_intervals), ("tenant_intervals", tenant_intervals or {}),
                           ("priorities", priorities or {})):
            extra = sorted(set(keys) - names)
            if extra:
                raise ValueError(f"{what}: {extra[0]!r} is not one of the collectors {sorted(names)}")
        missing = sorted(names - set(base_intervals))
        if missing:
            raise ValueError(f"base_intervals: no interval for collector {missing[0]!r}")
        self._min_ns = _seconds_ns("min_interval", min_interval)
        self._max_ns = _seconds_ns("max_interval", max_interval)
        if self._min_ns > self._max_ns:
            raise ValueError(f"min_interval: {min_interval} is above max_interval {max_interval}")
        if not (isinstance(cpu_budget_percent, (int, float)) and cpu_budget_percent > 0):
            raise ValueError(f"cpu_budget_percent: {cpu_budget_percent!r} must be > 0")
        if not 0 <= jitter <= 0.5:
            raise ValueError(f"jitter: {jitter!r} must be within [0, 0.5] of the interval")
        _seconds_ns("sample_every", sample_every)
        if on_columns is None:
            on_columns = _discard
        try:
            inspect.signature(on_columns).bind(None, None, None)
        except TypeError:
            raise TypeError("on_columns must accept (name, columns, tenants)") from None
        except ValueError:  # builtins without a signature: trust them
            pass

        prio = {n: int(priorities[n]) if priorities and n in priorities else int(collectors[n].priority)
                for n in names}
        base_ns = {n: _seconds_ns(f"base_intervals[{n!r}]", base_intervals[n]) for n in names}
        self._ladder = StretchLadder(prio, base_ns, self._min_ns, self._max_ns)
        self._slots: dict[str, _Slot] = {}
        for n in sorted(names):
            tenants = {t: _seconds_ns(f"tenant_intervals[{n!r}][{t!r}]", s)
                       for t, s in sorted(((tenant_intervals or {}).get(n) or {}).items())}
            slot = _Slot(n, collectors[n], base_ns[n], tenants)
            slot.interval_ns = self._ladder.interval_ns(n)
            if slot.interval_ns != base_ns[n]:
                bound = "min_interval" if slot.interval_ns > base_ns[n] else "max_interval"
                self._log_change(n, base_ns[n], slot.interval_ns, f"bounded by {bound}", logging.INFO)
            self._slots[n] = slot

        self._priorities = prio
        self._governor = Governor(load if load is not None else ProcPressure(clock=clock), cpu_budget_percent,
                                  thresholds or Thresholds(), self._ladder)
        self._sample_ns = _seconds_ns("sample_every", sample_every)
        self._on_columns = on_columns
        self._clock = clock
        self._wall = wall_clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._jitter = float(jitter)
        # Jitter is a fraction of the shortest base interval, so that collectors
        # with different intervals still meet on shared grid points.
        self._grid_ns = min(self._ladder.interval_ns(n) for n in names) if names else NS
        self._offsets: dict[int, int] = {}
        self._lock = threading.RLock()
        self._armed = False
        self._next_sample = 0
        self._thread: threading.Thread | None = None
        self._paused: frozenset[str] = frozenset()
        self.paused_passes = 0  # passes skipped because their collector was paused
        # Called before every pass (the memory guard's growth check, which may pause
        # collectors): a pass whose collector it paused is skipped, counted as paused.
        self.before_pass: Callable[[], object] | None = None

    # ------------------------------------------------------------------ decisions

    def tick(self, now_ns: int) -> list[Due]:
        """Decide at ``now_ns``: re-evaluate load when due, then return the due passes.

        Runs no collector and starts no thread; :meth:`dispatch` hands the result
        to the workers. Each call advances the schedule: a pass returned (or
        skipped as an overrun) is not returned again.
        """
        with self._lock:
            if not self._armed:
                self._arm(now_ns)
            if now_ns >= self._next_sample:
                self._evaluate(now_ns)
                self._next_sample = now_ns + self._sample_ns
            due: list[Due] = []
            for slot in self._slots.values():
                if now_ns < slot.next_nominal + slot.offset:
                    continue
                nominal = slot.next_nominal
                if now_ns - nominal >= slot.interval_ns:
                    # The dispatcher was late (suspended process, long GC): this
                    # pass stands for the latest grid point, and the schedule goes
                    # on from there rather than firing a burst of catch-up passes.
                    nominal += slot.interval_ns * ((now_ns - nominal) // slot.interval_ns)
                self._advance(slot, nominal)
                if slot.name in self._paused:
                    self.paused_passes += 1
                    continue
                if slot.busy:
                    slot.overruns += 1
                    if not slot.overrunning:
                        slot.overrunning = True
                        log.warning("collector %s still running when its next pass was due; skipping (overrun)",
                                    slot.name, extra={"collector": slot.name, "reason": "overrun"})
                    continue
                slot.overrunning = False
                tenants = self._due_tenants(slot, nominal)
                self._delivered(slot, tenants, nominal)
                slot.passes += 1
                due.append(Due(slot.name, nominal, tenants))
            return due

    def due_tenants(self, name: str, pass_ns: int) -> tuple[str, ...]:
        """Tenants a pass of ``name`` at grid time ``pass_ns`` would serve (no state change).

        A tenant is due when its next due time is at most half the collector's
        current interval after ``pass_ns``: it gets the pass nearest to its due
        time. Every tenant is due on the collector's first pass.
        """
        with self._lock:
            return self._due_tenants(self._slot(name), pass_ns)

    def next_wakeup_ns(self) -> int:
        """Clock time of the earliest pending pass or load reading."""
        with self._lock:
            if not self._armed:
                self._arm(self._clock())
            fire = [s.next_nominal + s.offset for s in self._slots.values()]
            return min([self._next_sample, *fire])

    def _slot(self, name: str) -> _Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise KeyError(f"no collector {name!r}; known: {sorted(self._slots)}") from None

    def _offset_at(self, nominal: int) -> int:
        """The jitter of grid point ``nominal``: one draw per point, shared by every collector on it."""
        off = self._offsets.get(nominal)
        if off is None:
            if len(self._offsets) > 256:
                self._offsets.clear()
            off = int(self._rng.uniform(-self._jitter, self._jitter) * self._grid_ns)
            self._offsets[nominal] = off
        return off

    def _arm(self, now_ns: int) -> None:
        # One random phase for the agent, in [0, min(shortest interval, 1 s)): the
        # first pass comes at start (an operator sees samples at once, and a short
        # `run --duration` collects), agents started by the same deploy still
        # spread their reads, and the per-point jitter spreads them further. The
        # collectors of one agent share grid points (anchor + k x interval), so
        # one wake-up of the dispatcher serves every collector due at that point.
        anchor = now_ns + int(self._rng.random() * min(self._grid_ns, FIRST_PASS_WITHIN_NS))
        for slot in self._slots.values():
            slot.next_nominal = anchor
            slot.offset = self._offset_at(anchor)
        self._next_sample = now_ns + self._sample_ns
        self._armed = True

    def _advance(self, slot: _Slot, nominal: int) -> None:
        slot.last_nominal = nominal
        slot.next_nominal = nominal + slot.interval_ns
        slot.offset = self._offset_at(slot.next_nominal)

    def _due_tenants(self, slot: _Slot, pass_ns: int) -> tuple[str, ...]:
        tol = slot.interval_ns // 2
        return tuple(t for t, due in slot.tenant_due.items() if due is None or due - tol <= pass_ns)

    def _delivered(self, slot: _Slot, tenants: Iterable[str], pass_ns: int) -> None:
        for t in tenants:
            every = slot.tenant_ns[t]
            due = slot.tenant_due[t]
            # Due one tenant interval after the previous due time, which keeps the
            # tenant's rate when a pass came a little early; but never sooner than
            # one interval after this pass, so a tenant that fell behind (overruns,
            # a late dispatcher) does not take several passes in a row to catch up.
            nxt = pass_ns + every if due is None else max(due + every, pass_ns + every)
            slot.tenant_due[t] = nxt

    def _evaluate(self, now_ns: int) -> None:
        change = self._governor.evaluate(now_ns)
        if change is not None:
            self._apply(now_ns, *change)

    def _apply(self, now_ns: int, reason: str, level: int) -> None:
        for slot in self._slots.values():
            new = self._ladder.interval_ns(slot.name)
            if new == slot.interval_ns:
                continue
            self._log_change(slot.name, slot.interval_ns, new, reason, level)
            slot.interval_ns = new
            if slot.last_nominal is not None:
                # Re-anchor on the last pass so a stretch takes effect from the
                # pending pass, and a restore fires at the first point of the new
                # grid that is not in the past (staying on the shared grid).
                nxt = slot.last_nominal + new
                if nxt < now_ns:
                    nxt += new * -(-(now_ns - nxt) // new)
                slot.next_nominal = nxt
                slot.offset = self._offset_at(nxt)

    @staticmethod
    def _log_change(name: str, old_ns: int, new_ns: int, reason: str, level: int) -> None:
        old, new = old_ns / NS, new_ns / NS
        log.log(level, "collector %s interval %gs -> %gs: %s", name, old, new, reason,
                extra={"collector": name, "old": old, "new": new, "reason": reason})

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Start one worker per collector and the dispatcher thread."""
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        with self._lock:
            if not self._armed:
                self._arm(self._clock())
        for slot in self._slots.values():
            # Daemon threads: a collector stuck past every timeout must not keep
            # the process alive after stop() has given up on it.
            slot.thread = threading.Thread(target=self._work, args=(slot,), name=f"ingress-collect-{slot.name}",
                                           daemon=True)
            slot.thread.start()
        self._thread = threading.Thread(target=self._loop, name="ingress-scheduler", daemon=True)
        self._thread.start()

    def dispatch(self, due: Iterable[Due]) -> None:
        """Hand passes returned by :meth:`tick` to their collectors' workers."""
        for d in due:
            slot = self._slot(d.name)
            with self._lock:
                slot.busy = True
                slot.idle.clear()
            slot.queue.put(d)

    def _dispatch_in_turn(self, due: list[Due]) -> None:
        """Hand the passes of one grid point over one after another, most important first.

        Each pass gets up to ``HANDOFF_WAIT_S`` to finish before the next is handed
        over: passes that run one at a time do not fight over the GIL (nine
        collectors woken at once cost about a third more CPU each), and a slow
        collector (a health check on its timeout, a hung mount) delays the others
        by that much at most, a fraction of the jitter.
        """
        for d in sorted(due, key=lambda d: -self._priorities[d.name]):
            if self._stop.is_set():
                return
            self.dispatch((d,))
            self._slot(d.name).idle.wait(HANDOFF_WAIT_S)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                due = self.tick(self._clock())
                if due and not self._stop.is_set():
                    self._dispatch_in_turn(due)
                delay = (self.next_wakeup_ns() - self._clock()) / NS
            except Exception:
                # A bug in a decision must not end collection for good: say so
                # and try again one load period later.
                log.exception("scheduler tick failed; retrying", extra={"reason": "tick failed"})
                delay = self._sample_ns / NS
            self._wait(max(0.0, delay))

    def _work(self, slot: _Slot) -> None:
        while True:
            d = slot.queue.get()
            if d is None:
                return
            try:
                self._run(slot, d)
            finally:
                with self._lock:
                    slot.busy = False
                    slot.idle.set()

    def _run(self, slot: _Slot, d: Due) -> None:
        if self.before_pass is not None:
            self.before_pass()
            if slot.name in self._paused:
                with self._lock:
                    self.paused_passes += 1
                return
        t0 = time.perf_counter()
        try:
            cols = slot.collector.collect(self._wall())
            self._on_columns(slot.name, cols, d.tenants)
        except Exception as e:
            with self._lock:
                slot.errors += 1
                first = not slot.failing
                slot.failing = True
            if first:  # one line per failure streak, not one per pass
                log.warning("collector %s pass failed: %s", slot.name, e, exc_info=True,
                            extra={"collector": slot.name, "reason": "error"})
            return
        if slot.failing:
            with self._lock:
                slot.failing = False
            log.info("collector %s recovered", slot.name, extra={"collector": slot.name, "reason": "recovered"})
        took = time.perf_counter() - t0
        with self._lock:
            slot.busy_s += took
            slot.last_s = took

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop dispatching and wait up to ``timeout`` s for passes in flight.

        Returns ``True`` when every worker finished; a collector still running at
        the deadline is named in a log line and abandoned (its thread is a daemon).
        """
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots.values():
            slot.queue.put(None)
        ok = True
        for slot in self._slots.values():
            if slot.thread is None:
                continue
            slot.thread.join(max(0.0, deadline - time.monotonic()))
            if slot.thread.is_alive():
                ok = False
                log.warning("collector %s still running at stop; abandoned", slot.name,
                            extra={"collector": slot.name, "reason": "stop timeout"})
        return ok

    def wait_idle(self, names: Iterable[str] | None = None, timeout: float | None = None) -> bool:
        """Block until the named collectors (default all) have no pass in flight."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for n in (self._slots if names is None else names):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._slot(n).idle.wait(left):
                return False
        return True

    # ------------------------------------------------------------------ state

    def _per_slot(self, value: Callable[[_Slot], float | None]) -> dict[str, float]:
        with self._lock:
            return {n: v for n, s in self._slots.items() if (v := value(s)) is not None}

    def effective_intervals(self) -> dict[str, float]:
        """``{name: seconds}`` each collector runs at now (for the self-metric)."""
        return self._per_slot(lambda s: s.interval_ns / NS)

    def overruns(self) -> dict[str, int]:
        """``{name: passes skipped because the previous pass was still running}``."""
        return self._per_slot(lambda s: s.overruns)

    def errors(self) -> dict[str, int]:
        """``{name: passes whose collect or on_columns raised}``."""
        return self._per_slot(lambda s: s.errors)

    def passes(self) -> dict[str, int]:
        """``{name: passes dispatched}`` (overruns not included)."""
        return self._per_slot(lambda s: s.passes)

    def pass_seconds(self) -> dict[str, float]:
        """``{name: seconds}`` spent in completed passes (collect and fan-out), cumulative."""
        return self._per_slot(lambda s: s.busy_s)

    def last_pass_seconds(self) -> dict[str, float]:
        """``{name: seconds}`` of each collector's last completed pass."""
        return self._per_slot(lambda s: s.last_s)

    def lowest_priority(self) -> list[str]:
        """The collectors of the lowest priority class (what :meth:`pause` sheds first)."""
        with self._lock:
            if not self._priorities:
                return []
            low = min(self._priorities.values())
            return sorted(n for n, p in self._priorities.items() if p == low)

    def pause(self, names: Iterable[str]) -> None:
        """Skip the passes of ``names`` until :meth:`resume` (the memory guard sheds them).

        Their schedule goes on, so a resumed collector fires at its next grid
        point; a pass already running finishes.
        """
        names = frozenset(names)
        unknown = sorted(names - set(self._slots))
        if unknown:
            raise ValueError(f"pause: {unknown[0]!r} is not one of the collectors {sorted(self._slots)}")
        with self._lock:
            self._paused = self._paused | names
        log.warning("collectors paused: %s", ", ".join(sorted(names)),
                    extra={"collectors": sorted(names), "reason": "memory near its cap"})

    def resume(self, names: Iterable[str] | None = None) -> None:
        """Run the paused collectors (``names``, default all) again."""
        with self._lock:
            back = self._paused if names is None else self._paused & frozenset(names)
            self._paused = self._paused - back
        if back:
            log.info("collectors resumed: %s", ", ".join(sorted(back)), extra={"collectors": sorted(back)})

    def idle_collector(self, name: str) -> Collector | None:
        """Collector ``name`` if none of its passes is running or handed over now, else None."""
        with self._lock:
            slot = self._slots.get(name)
            return slot.collector if slot is not None and not slot.busy else None

    def paused(self) -> list[str]:
        """Collectors paused now."""
        with self._lock:
            return sorted(self._paused)

    def stretch_level(self) -> int:
        """How many stretch steps are in force (0: every collector at its base)."""
        with self._lock:
            return len(self._ladder.steps)

    def pressure(self) -> tuple[PressureSample | None, str]:
        """The last load reading and its verdict (``HIGH``, ``LOW`` or ``HOLD``)."""
        with self._lock:
            return self._governor.last_sample, self._governor.verdict


def _discard(name: str, columns: Columns, tenants: tuple[str, ...]) -> None:
    """Default sink: drop the pass (a scheduler built only to inspect decisions)."""
