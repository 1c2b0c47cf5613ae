"""The scheduler's answer to load: the CPU budget and pressure thresholds, and the stretch ladder.

:func:`classify` reads one :class:`~ingress.collect.loadsource.PressureSample`
against the agent's CPU budget and the :class:`Thresholds`: ``HIGH`` (stretch
one step), ``LOW`` (restore one step) or ``HOLD``. :class:`StretchLadder`
doubles the interval of one priority class per step, lowest priority first,
and undoes the most recent step on the way back. The scheduling loop that
applies them (with its dwell times) is :class:`ingress.collect.scheduler.Scheduler`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ingress.collect.loadsource import LoadSource, PressureSample

log = logging.getLogger("ingress.collect")

NS = 1_000_000_000
HIGH = "high"
LOW = "low"
HOLD = "hold"


@dataclass(frozen=True)
class Thresholds:
    """When load counts as high (stretch) or low (restore), and how long to dwell.

    The agent CPU thresholds are fractions of ``cpu_budget_percent``
    (``agent.limits.cpu_percent``); the others are absolute. Between a pair's
    low and high value the scheduler holds what it has: that band is the
    hysteresis.

    Attributes
    ----------
    agent_cpu_high, agent_cpu_low
        Agent CPU above ``high x budget`` is pressure; below ``low x budget`` is calm.
    host_cpu_high, host_cpu_low
        Host CPU busy %, 0-100.
    psi_high, psi_low
        ``/proc/pressure/cpu`` ``some avg10`` %; ignored where the kernel has no PSI.
    load_high, load_low
        1-minute load average per CPU.
    throttled_high, throttled_low
        % of the agent's cgroup CPU periods throttled by its quota; ignored
        without a quota.
    stretch_dwell_s
        Minimum time after any change before the next stretch step.
    restore_dwell_s
        Minimum time after any change before the next restore step; longer than
        ``stretch_dwell_s`` so that the agent backs off fast and returns slowly.
    """

    agent_cpu_high: float = 1.0
    agent_cpu_low: float = 0.6
    host_cpu_high: float = 95.0
    host_cpu_low: float = 85.0
    psi_high: float = 50.0
    psi_low: float = 25.0
    load_high: float = 2.0
    load_low: float = 1.25
    throttled_high: float = 20.0
    throttled_low: float = 5.0
    stretch_dwell_s: float = 15.0
    restore_dwell_s: float = 60.0

    def __post_init__(self) -> None:
        for key in ("agent_cpu", "host_cpu", "psi", "load", "throttled"):
            lo, hi = getattr(self, f"{key}_low"), getattr(self, f"{key}_high")
            if not 0 <= lo < hi:
                raise ValueError(f"thresholds: {key}_low={lo} must be >= 0 and below {key}_high={hi}")
        for key in ("stretch_dwell_s", "restore_dwell_s"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"thresholds: {key}={getattr(self, key)} must be >= 0")


def classify(sample: PressureSample, cpu_budget_percent: float, th: Thresholds) -> tuple[str, str]:
    """Classify one sample as ``HIGH``, ``LOW`` or ``HOLD``, with a reason.

    High when any reading is above its high threshold (the reason lists each
    one); low only when every reading is below its low threshold; otherwise hold.
    """
    a_hi, a_lo = cpu_budget_percent * th.agent_cpu_high, cpu_budget_percent * th.agent_cpu_low
    s = sample
    high = []
    if s.agent_cpu_percent > a_hi:
        high.append(f"agent cpu {s.agent_cpu_percent:.1f}% > budget {a_hi:.1f}%")
    if s.host_cpu_percent > th.host_cpu_high:
        high.append(f"host cpu {s.host_cpu_percent:.1f}% > {th.host_cpu_high:g}%")
    if s.psi_cpu_some_avg10 is not None and s.psi_cpu_some_avg10 > th.psi_high:
        high.append(f"cpu pressure {s.psi_cpu_some_avg10:.1f}% > {th.psi_high:g}%")
    if s.load_per_core > th.load_high:
        high.append(f"load per core {s.load_per_core:.2f} > {th.load_high:g}")
    thr = s.cgroup_throttled_percent
    if thr is not None and thr > th.throttled_high:
        high.append(f"cgroup throttled in {thr:.1f}% of periods > {th.throttled_high:g}%")
    if high:
        return HIGH, "; ".join(high)
    calm = (
        s.agent_cpu_percent < a_lo
        and s.host_cpu_percent < th.host_cpu_low
        and (s.psi_cpu_some_avg10 is None or s.psi_cpu_some_avg10 < th.psi_low)
        and s.load_per_core < th.load_low
        and (thr is None or thr < th.throttled_low)
    )
    if calm:
        return LOW, (
            f"pressure eased: agent cpu {s.agent_cpu_percent:.1f}% < {a_lo:.1f}%, "
            f"host cpu {s.host_cpu_percent:.1f}% < {th.host_cpu_low:g}%, "
            f"load per core {s.load_per_core:.2f} < {th.load_low:g}"
        )
    return HOLD, "between the low and high thresholds"


class StretchLadder:
    """Which priority class the next stretch step doubles, and how to undo it.

    Every priority class has an exponent ``e``: its collectors run every
    ``base x 2**e`` seconds, clamped to ``[min_ns, max_ns]``. A stretch step
    doubles the lowest-priority class that is not yet at ``max`` everywhere and
    not already a doubling ahead of the next higher class that can still grow.
    With classes 0..4 the steps go 0, 1, 0, 2, 1, 0, 3, 2, 1, 0, 4, ...: the
    lowest priority is always stretched the most, and the highest (health, cpu)
    only once every other class has been doubled. Restoring undoes the steps in
    reverse (last in, first out), so the highest priority comes back first.
    """

    def __init__(self, priorities: Mapping[str, int], base_ns: Mapping[str, int], min_ns: int, max_ns: int) -> None:
        self._prio = dict(priorities)
        self._base = {n: min(max(int(b), min_ns), max_ns) for n, b in base_ns.items()}
        self._min, self._max = min_ns, max_ns
        self.classes = sorted(set(self._prio.values()))
        self._members = {p: sorted(n for n, q in self._prio.items() if q == p) for p in self.classes}
        self.exponent = {p: 0 for p in self.classes}
        self.steps: list[int] = []

    def interval_ns(self, name: str) -> int:
        """The current interval of one collector, in nanoseconds."""
        v = self._base[name] << self.exponent[self._prio[name]]
        return min(max(v, self._min), self._max)

    def _capped(self, p: int) -> bool:
        e = self.exponent[p]
        return all((self._base[n] << e) >= self._max for n in self._members[p])

    def next_class(self) -> int | None:
        """The class the next stretch would double, or ``None`` when all are at max."""
        open_ = [p for p in self.classes if not self._capped(p)]
        for i, p in enumerate(open_):
            above = open_[i + 1] if i + 1 < len(open_) else None
            if above is None or self.exponent[p] <= self.exponent[above]:
                return p
        return None

    def stretch(self) -> int | None:
        """Take one step; return the class doubled, or ``None`` if nothing can grow."""
        p = self.next_class()
        if p is not None:
            self.exponent[p] += 1
            self.steps.append(p)
        return p

    def restore(self) -> int | None:
        """Undo the most recent step; return its class, or ``None`` at base."""
        if not self.steps:
            return None
        p = self.steps.pop()
        self.exponent[p] -= 1
        return p


class Governor:
    """Reads the load every ``sample_every`` and decides one ladder step at a time.

    ``evaluate(now_ns)`` classifies a fresh reading and moves the ladder by at
    most one step, after ``stretch_dwell_s`` (stretch) or ``restore_dwell_s``
    (restore) since the last change; it returns ``(reason, log level)`` when
    the intervals changed, for the scheduler to apply to its collectors. A
    failing load source holds the intervals (one warning).
    """

    def __init__(self, load: LoadSource, cpu_budget_percent: float, thresholds: Thresholds,
                 ladder: StretchLadder) -> None:
        self.load = load
        self.budget = float(cpu_budget_percent)
        self.th = thresholds
        self.ladder = ladder
        self.last_change: int | None = None
        self.saturated = False
        self.load_failing = False
        self.last_sample: PressureSample | None = None
        self.verdict = HOLD

    def evaluate(self, now_ns: int) -> tuple[str, int] | None:
        try:
            sample = self.load()
        except Exception as e:  # a broken load source must not stop collection
            if not self.load_failing:
                self.load_failing = True
                log.warning("load source failed, intervals held: %s", e, extra={"reason": "load source failed"})
            return None
        self.load_failing = False
        self.last_sample = sample
        verdict, reason = classify(sample, self.budget, self.th)
        self.verdict = verdict
        since = math.inf if self.last_change is None else (now_ns - self.last_change) / NS
        if verdict == HIGH:
            if since < self.th.stretch_dwell_s:
                return None
            p = self.ladder.stretch()
            if p is None:
                if not self.saturated:
                    self.saturated = True
                    log.warning("every collector is at max_interval and pressure persists: %s", reason,
                                extra={"reason": reason})
                return None
            self.last_change = now_ns
            return f"stretch priority {p}: {reason}", logging.WARNING
        if verdict == LOW:
            self.saturated = False
            if not self.ladder.steps or since < self.th.restore_dwell_s:
                return None
            p = self.ladder.restore()
            self.last_change = now_ns
            return f"restore priority {p}: {reason}", logging.INFO
        return None
