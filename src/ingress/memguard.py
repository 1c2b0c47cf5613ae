"""The memory cap that holds: watch the agent's own RSS and shed load in steps.

The guard reads ``/proc/self/statm`` (one small read, no allocation worth the
name) and compares the resident set with the cap (``agent.limits.memory_mb``,
or a tighter cgroup ``memory.max`` the agent adopted at start). It reads it at
two kinds of moments:

* :meth:`MemGuard.tick`, once a second from the agent's main loop: engages,
  releases, repeats the flush;
* :meth:`MemGuard.check`, *at growth*, from whichever thread grows: the series
  registry calls it every ``check_every_bytes`` of series it accounts (about
  every hundred new series, never for a known one) and the scheduler before
  each collector pass. It only engages (never releases), so a pass that grows
  the agent meets ``pause_collectors`` and ``refuse_series`` within that pass,
  not at the next second.

Nearing the cap it engages the steps of a ladder, each at its share of the cap:

=====  ===================  ==================================================
share  step                 what the agent does (callbacks it provides)
=====  ===================  ==================================================
75 %   ``flush``            move every ring into the spool, every second
80 %   ``shrink_rings``     lower every tenant's ring to a quarter of its
                            slots (the ring drops by its policy, counted)
85 %   ``pause_collectors`` pause the collectors of the lowest priority class
90 %   ``cap_queues``       lower the outputs' in-memory queues (librdkafka):
                            batches wait in the spool instead
95 %   ``refuse_series``    refuse new series (counted per tenant)
=====  ===================  ==================================================

A step is released (by ``tick`` only) when the RSS falls ``HYSTERESIS`` (5 %
of the cap) below the share it engaged at, last engaged first. Every
engagement is counted per step; the level changes are logged once each (not
once a second).

**Release on probation.** The RSS does not always fall below that threshold
once the load is gone: a paused collector still holds its last pass until it
runs again, and the interpreter keeps arenas a few live objects still use. So
when the ladder has held at one level for ``probation_s`` (30 s by default)
with the RSS under the top step's share all that time and never more than
``GROWTH_TOLERANCE`` of the cap above its lowest reading of that time, the top step is released *on
probation* (logged once, counted in ``released_probation``). If the RSS climbs
back to its share before another ``probation_s`` has passed, the step
re-engages at once (the ordinary engagement, at growth or at the tick) and the
wait doubles, up to ``probation_max_s``; a probation that passes clean resets
the wait. One step at a time, the highest first, so a step that frees memory
when released (``pause_collectors``: the paused collectors run again and drop
their last pass) comes before the cheap ones below it.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ingress.logs import get_logger

__all__ = ["MemGuard", "Step", "STEPS", "LIGHT_STEPS", "HYSTERESIS", "GROWTH_TOLERANCE", "PROBATION_S", "PROBATION_MAX_S",
           "read_rss"]

log = get_logger("ingress.memguard")

HYSTERESIS = 0.05
#: Release on probation: the ladder held this long at one level without the RSS growing.
PROBATION_S = 30.0
#: The probation wait doubles after each failed probation, up to this many times PROBATION_S.
PROBATION_MAX_FACTOR = 16
PROBATION_MAX_S = PROBATION_S * PROBATION_MAX_FACTOR
#: RSS within this share of the cap above where the hold began counts as "not grown" (page noise).
GROWTH_TOLERANCE = 0.01
#: (name, share of the cap at which it engages), in order.
STEPS: tuple[tuple[str, float], ...] = (
    ("flush", 0.75),
    ("shrink_rings", 0.80),
    ("pause_collectors", 0.85),
    ("cap_queues", 0.90),
    ("refuse_series", 0.95),
)
#: Steps that hold back no work: the rings are flushed more often and kept smaller. While only
#: these hold, the agent collects and sends everything and /readyz answers 200 (the level shows in
#: /metrics); they are what the allocator's leftovers can keep engaged after a flood.
LIGHT_STEPS = frozenset({"flush", "shrink_rings"})
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss(path: str = "/proc/self/statm") -> int:
    """Resident bytes of this process (0 when unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.read(fd, 128)
        finally:
            os.close(fd)
        return int(raw.split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Step:
    """One step of the ladder: ``engage()`` on the way up, ``release()`` on the way down.

    ``repeat``: ``engage`` is called again at every tick while the step holds
    (the flush: new samples keep arriving).
    """

    name: str
    share: float
    engage: Callable[[], object]
    release: Callable[[], object] = lambda: None
    repeat: bool = False
    engaged: int = 0  # times this step was engaged (counter)
    active: bool = False


class MemGuard:
    """Sheds load as the RSS nears ``cap_bytes``; resumes as it falls.

    Parameters
    ----------
    cap_bytes
        The cap. 0 or less disables every step.
    actions
        ``{step name: (engage, release)}`` for the names in :data:`STEPS`;
        a name left out does nothing at its share.
    rss
        Reads the resident bytes (default :func:`read_rss`); tests pass fakes.
    clock
        Monotonic seconds (default :func:`time.monotonic`); tests pass fakes.
    probation_s
        How long a level holds, the RSS not growing, before its top step is
        released on probation; 0 or less: never (only the hysteresis releases).
    probation_max_s
        The cap of the doubling wait (default ``PROBATION_MAX_FACTOR`` times ``probation_s``).
    """

    def __init__(self, cap_bytes: int, actions: Mapping[str, tuple[Callable[[], object], Callable[[], object]]],
                 rss: Callable[[], int] = read_rss, clock: Callable[[], float] = time.monotonic,
                 probation_s: float = PROBATION_S, probation_max_s: float | None = None) -> None:
        self.cap = int(cap_bytes)
        self.steps = [Step(name, share, *actions.get(name, (lambda: None, lambda: None)), repeat=name == "flush")
                      for name, share in STEPS]
        self._rss = rss
        self._clock = clock
        self.level = 0  # steps engaged now
        self.last_rss = 0
        self.peak_rss = 0
        self.over_since: float | None = None  # first tick at level > 0
        self.last_recovery_s: float | None = None  # level > 0 -> 0, seconds
        self.checks = 0  # check() calls that read the RSS (growth checks)
        self.probation_s = float(probation_s)
        self.probation_max_s = (float(probation_max_s) if probation_max_s is not None
                                else self.probation_s * PROBATION_MAX_FACTOR)
        self.probation_wait = self.probation_s  # the wait now: doubles on a failed probation
        self.released_probation = 0  # steps released on probation (counter)
        self.failed_probation = 0  # of those, re-engaged within their probation (counter)
        self._hold_since: float | None = None  # the level (and the RSS, within tolerance) held since
        self._hold_rss = 0  # the lowest RSS since the hold began
        self._probation: tuple[int, float] | None = None  # (step index released on probation, until)
        # tick() and check() move the ladder under this lock; actions run under it.
        self._lock = threading.Lock()

    @property
    def active(self) -> list[str]:
        return [s.name for s in self.steps if s.active]

    def counts(self) -> dict[str, int]:
        """``{step: times engaged}``."""
        return {s.name: s.engaged for s in self.steps}

    def tick(self) -> int:
        """Read the RSS once, engage or release steps; returns the level (the main loop, once a second)."""
        with self._lock:
            return self._move(self._rss(), release=True)

    def check(self) -> int:
        """Read the RSS once and engage the steps it has reached; returns the level.

        For the moments memory grows (a batch of new series, a collector pass
        about to run), from any thread. It never releases a step nor repeats
        the flush (``tick`` does), and it never waits: while another thread is
        moving the ladder it returns the current level at once.
        """
        if not self._lock.acquire(blocking=False):
            return self.level
        try:
            self.checks += 1
            return self._move(self._rss(), release=False)
        finally:
            self._lock.release()

    def _move(self, rss: int, release: bool) -> int:
        self.last_rss = rss
        self.peak_rss = max(self.peak_rss, rss)
        if self.cap <= 0 or rss <= 0:
            return self.level
        share = rss / self.cap
        old = self.level
        level = old
        while level < len(self.steps) and share >= self.steps[level].share:
            level += 1
        if release:
            while level > 0 and share < self.steps[level - 1].share - HYSTERESIS and level <= old:
                level -= 1
        now = self._clock()
        failed = self._probation is not None and level > old and level > self._probation[0]
        if failed:  # the step released on probation is reached again: wait longer next time
            self.failed_probation += 1
            self.probation_wait = min(self.probation_wait * 2, self.probation_max_s)
            self._probation = None
        elif release and self._probation is not None and now >= self._probation[1]:
            self._probation = None  # a clean probation: back to the base wait
            self.probation_wait = self.probation_s
        on_probation = False
        if (level != old or self._hold_since is None or rss > self._hold_rss + GROWTH_TOLERANCE * self.cap
                or (level > 0 and share >= self.steps[level - 1].share)):
            # the hold starts (again) here: a new level, growth, or the top step still needed
            self._hold_since, self._hold_rss = now, rss
        else:
            self._hold_rss = min(self._hold_rss, rss)  # growth is measured from the lowest reading
            if release and level > 0 and self.probation_s > 0 and now - self._hold_since >= self.probation_wait:
                level -= 1
                on_probation = True
                self.released_probation += 1
                self._probation = (level, now + self.probation_wait)
                self._hold_since, self._hold_rss = now, rss
        for i in range(old, level):  # up: engage in order
            s = self.steps[i]
            s.active = True
            s.engaged += 1
            self._call(s, s.engage)
        for i in range(old - 1, level - 1, -1):  # down: release last engaged first
            s = self.steps[i]
            s.active = False
            self._call(s, s.release)
        if release:
            for s in self.steps[:min(old, level)]:
                if s.repeat:
                    self._call(s, s.engage)
        self.level = level
        if level != old:
            if old == 0:
                self.over_since = now
            if level == 0 and self.over_since is not None:
                self.last_recovery_s = now - self.over_since
                self.over_since = None
            fields = dict(rss_mb=round(rss / (1 << 20), 1), cap_mb=round(self.cap / (1 << 20), 1),
                          share=round(share, 3), level=level, steps=self.active)
            if level > old:
                if failed:
                    fields["probation_wait_s"] = self.probation_wait
                log.warning("memory near its cap: shedding load" if not failed else
                            "memory near its cap again after a probation: shedding load, next wait doubled",
                            step=self.steps[level - 1].name, at="tick" if release else "growth", **fields)
            elif on_probation:
                log.info("memory steady: step released on probation", step=self.steps[old - 1].name,
                         held_s=self.probation_wait, released_probation=self.released_probation, **fields)
            else:
                log.info("memory eased: load shedding released" if level else "memory back under its cap: "
                         "every shed step released", step=self.steps[old - 1].name, **fields)
        return level

    def _call(self, s: Step, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # a failing action must not stop the main loop
            log.every(("memguard action failed", s.name), 60.0).error(
                "memory guard step failed", step=s.name, error=f"{type(e).__name__}: {e}")
