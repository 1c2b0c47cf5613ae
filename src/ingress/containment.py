"""What keeps the running agent inside its limits and tells its supervisor how it is.

The agent calls three hooks (``ingress.agent.Agent``): :meth:`Containment.adopt`
at the very start of ``start`` (before the scheduler and the control API are
built, so both see the effective limits), :meth:`Containment.started` once
everything runs, :meth:`Containment.every_second` from its main loop, and
:meth:`Containment.stopping` when the graceful stop begins.

* **cgroup adoption**: a cgroup v2 ``memory.max`` / ``cpu.max`` tighter than
  ``agent.limits.memory_mb`` / ``cpu_percent`` replaces it (the ``started``
  line says which); the scheduler's CPU budget and the memory guard use the
  effective values.
* **memory guard**: :class:`ingress.memguard.MemGuard` with the agent's
  actions as its steps. Besides its tick once a second it checks at growth:
  the series registry calls :meth:`MemGuard.check` every
  ``check_every_bytes`` of new series and the scheduler before each
  collector pass (hooks set by :meth:`Containment.every_second`, again after a
  reload builds new ones). While any step holds, series idle for longer than
  :meth:`Containment.shed_ttl_s` are evicted every second (counted in
  ``evicted_memory``), and after a release that freed many series the C heap
  is trimmed (``malloc_trim``), so the RSS, and the agent, come back. While
  ``pause_collectors`` holds, each paused collector drops its caches once
  (``Collector.drop_caches``, when no pass of it runs); when ``refuse_series``
  is released, the refused series are decided again at their next pass. The
  guard's release on probation waits ``INGRESS_MEMGUARD_PROBATION_S`` (default
  30 s; tests and drills shorten it).
* **systemd**: ``READY=1`` with a ``STATUS=`` line after start, ``WATCHDOG=1``
  at half ``WATCHDOG_USEC`` from the main loop, ``STOPPING=1`` at stop
  (:mod:`ingress.sdnotify`; no-ops without ``NOTIFY_SOCKET``).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable

from ingress.logs import get_logger
from ingress.memguard import PROBATION_S, MemGuard, read_rss
from ingress.sdnotify import Notifier

__all__ = ["Containment", "adopt_limits", "SHRUNK_RING_SHARE", "QUEUE_CAP_SHARE", "SHED_TTL_MIN_S",
           "SHED_TTL_PASSES"]

log = get_logger("ingress.containment")
MIB = 1 << 20
SHRUNK_RING_SHARE = 4  # shrink_rings: each ring holds a quarter of its slots
QUEUE_CAP_SHARE = 0.25  # cap_queues: outputs' local queues at a quarter of their bound
# While shedding, a series not seen for SHED_TTL_PASSES of the longest interval it can be
# collected at (and at least SHED_TTL_MIN_S) is evicted: a series that is still collected
# is seen at every pass, so only those that stopped (a flood's, a gone pid's) go.
SHED_TTL_MIN_S = 5.0
SHED_TTL_PASSES = 2
TRIM_AFTER_RELEASED = 1000  # malloc_trim once at least this many series were released


def adopt_limits(settings: Any, cgroup: Any) -> tuple[Any, dict[str, str]]:
    """``settings`` with the cgroup's limits where they are tighter, and what was adopted.

    ``cgroup`` is an :class:`ingress.cgroup.CgroupLimits`. Returns
    ``(settings, {"memory_mb": "...", "cpu_percent": "..."})``: one entry per
    limit, saying where its value comes from.
    """
    lim = settings.agent.limits
    mem, cpu = lim.memory_mb, lim.cpu_percent
    note = {"memory_mb": f"{mem} (agent.limits)", "cpu_percent": f"{cpu:g} (agent.limits)"}
    if cgroup.memory_bytes is not None and cgroup.memory_bytes < mem * MIB:
        mem = max(1, cgroup.memory_bytes // MIB)
        note["memory_mb"] = f"{mem} (cgroup memory.max, tighter than agent.limits.memory_mb={lim.memory_mb})"
    if cgroup.cpu_percent is not None and cgroup.cpu_percent < cpu:
        cpu = cgroup.cpu_percent
        note["cpu_percent"] = f"{cpu:g} (cgroup cpu.max, tighter than agent.limits.cpu_percent={lim.cpu_percent:g})"
    if (mem, cpu) == (lim.memory_mb, lim.cpu_percent):
        return settings, note
    agent = dataclasses.replace(settings.agent, limits=dataclasses.replace(lim, memory_mb=mem, cpu_percent=cpu))
    return dataclasses.replace(settings, agent=agent), note


def _own_cgroup_limits() -> Any:
    # The agent's own cgroup is always under this container's /proc and /sys, even when
    # agent.procfs / agent.sysfs point the collectors at the host's.
    from ingress.cgroup import read_limits

    return read_limits(proc="/proc", cgroup_fs="/sys/fs/cgroup")


class Containment:
    """The agent's limits, memory guard and systemd notification.

    Parameters
    ----------
    agent
        The :class:`ingress.agent.Agent`.
    notifier
        Default :class:`ingress.sdnotify.Notifier` from the environment.
    cgroup
        ``() -> CgroupLimits``; default reads the agent's own cgroup v2.
    rss
        ``() -> resident bytes`` for the memory guard; default ``/proc/self/statm``.
    """

    def __init__(self, agent: Any, notifier: Notifier | None = None,
                 cgroup: Callable[[], Any] | None = None, rss: Callable[[], int] = read_rss,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.notifier = notifier if notifier is not None else Notifier()
        self._cgroup = cgroup or _own_cgroup_limits
        self._rss = rss
        self._clock = clock
        self.limits_note: dict[str, str] = {}
        self.hardening: dict[str, str] = {}  # ingress.hardening.harden()'s outcome, set by `ingress run`
        self.guard: MemGuard | None = None
        self._next_watchdog = 0.0
        self._queues_capped: list[Any] = []
        self._loop_thread: int | None = None  # the thread of every_second: the one that may flush
        self._pending_trim = 0  # series evicted by the guard since the last malloc_trim
        self.trims = 0  # malloc_trim calls
        self._dropped: set[str] = set()  # paused collectors whose caches were dropped (this pause)
        self.probation_s = _probation_s()  # the guard's release on probation (INGRESS_MEMGUARD_PROBATION_S)
        from ingress.security.events import ConfigWatch

        self.config_watch = ConfigWatch()  # the config file changing on disk: a security event

    # -- hooks ------------------------------------------------------------------------

    def effective(self, settings: Any) -> Any:
        """``settings`` with the cgroup's limits where tighter (a reload compares these)."""
        try:
            cg = self._cgroup()
        except Exception as e:  # never fatal: run on the configured limits
            log.warning("cgroup limits unreadable; running on agent.limits", error=str(e))
            cg = None
        if cg is not None:
            settings, self.limits_note = adopt_limits(settings, cg)
        else:
            _, self.limits_note = adopt_limits(settings, _NoLimits())
        return settings

    def adopt(self, settings: Any) -> Any:
        """Effective settings: the cgroup's limits where tighter; builds the memory guard."""
        settings = self.effective(settings)
        self.guard = MemGuard(settings.agent.limits.memory_mb * MIB, self._actions(), rss=self._rss,
                              clock=self._clock, probation_s=self.probation_s)
        return settings

    def started(self) -> None:
        a = self.agent
        self.notifier.ready(f"collecting for {len(a.tenants.enabled)} tenant(s) to {len(a.outputs)} output(s)")
        if self.notifier.watchdog_s:
            self._next_watchdog = self._clock()  # first ping at the next tick

    def every_second(self) -> None:
        self._loop_thread = threading.get_ident()
        if self.guard is not None:
            self._wire()
            level = self.guard.tick()
            if self._pending_trim >= TRIM_AFTER_RELEASED and not self._quarantined():
                # the tick's flush released what the guard evicted: hand the C heap back
                self._pending_trim = 0
                if _malloc_trim():
                    self.trims += 1
            if level:
                self._shed_evict()
            if "pause_collectors" in self.guard.active:
                self._drop_paused_caches()
        self.config_watch.check(getattr(self.agent, "settings", None), self._clock())
        w = self.notifier.watchdog_s
        if w:
            now = self._clock()
            if now >= self._next_watchdog:
                self.notifier.watchdog()
                self._next_watchdog = now + w / 2

    def stopping(self) -> None:
        self.notifier.stopping()

    def shed_ttl_s(self) -> float:
        """Idle time past which the guard evicts a series while it sheds (see SHED_TTL_PASSES)."""
        longest = 0.0
        s = self.agent.scheduler
        intervals = getattr(s, "effective_intervals", None)
        if intervals is not None:
            longest = max(intervals().values(), default=0.0)
        settings = getattr(self.agent, "settings", None)
        for t in getattr(settings, "tenants", ()) or ():
            longest = max(longest, float(getattr(t, "interval_s", 0.0) or 0.0))
        return max(SHED_TTL_MIN_S, SHED_TTL_PASSES * longest)

    def _shed_evict(self) -> None:
        p = getattr(self.agent, "pipeline", None)
        if p is None or not hasattr(p, "evict"):
            return
        try:
            self._pending_trim += p.evict(time.time_ns(), ttl_s=self.shed_ttl_s())
        except Exception as e:  # never fatal: the regular eviction still runs
            log.every("shed eviction failed", 60.0).error("memory guard: eviction failed",
                                                          error=f"{type(e).__name__}: {e}")

    def _drop_paused_caches(self) -> None:
        """Once per pause, each paused collector lets go of its caches (when no pass of it runs)."""
        s = self.agent.scheduler
        idle = getattr(s, "idle_collector", None)
        if idle is None:
            return
        for name in s.paused():
            if name in self._dropped:
                continue
            c = idle(name)
            if c is None or not hasattr(c, "drop_caches"):
                continue  # a pass still runs: next second
            try:
                c.drop_caches()
                if _malloc_trim():  # what the caches held in the C heap goes back now
                    self.trims += 1
            except Exception as e:  # never fatal: the caches only cost memory
                log.every(("drop caches failed", name), 60.0).error(
                    "memory guard: dropping a paused collector's caches failed", collector=name,
                    error=f"{type(e).__name__}: {e}")
            self._dropped.add(name)

    def _quarantined(self) -> int:
        r = self.agent.registry
        q = getattr(r, "quarantined", None)
        if q is None:
            return 0
        return sum(q(t) for t in range(getattr(r, "n_tenants", 0)))

    def _wire(self) -> None:
        """Hook the guard's growth check into the registry and the scheduler (again after a reload)."""
        r, s = self.agent.registry, self.agent.scheduler
        check = self.guard.check
        if hasattr(r, "on_growth") and r.on_growth != check:
            r.on_growth = check
            if hasattr(r, "refusing_new"):  # a reload's new registry: the step still holds
                r.refusing_new = "refuse_series" in self.guard.active
        if s is not None and hasattr(s, "before_pass") and s.before_pass != check:
            s.before_pass = check
            if "pause_collectors" in self.guard.active:
                self._pause()

    def status(self) -> dict[str, Any]:
        """For /readyz and /metrics: the guard's level, steps engaged and counts."""
        g = self.guard
        if g is None:
            return {"level": 0, "active": [], "engaged": {}, "rss": 0, "cap": 0}
        return {"level": g.level, "active": g.active, "engaged": g.counts(), "rss": g.last_rss, "cap": g.cap,
                "released_probation": g.released_probation, "failed_probation": g.failed_probation}

    # -- the shed ladder's actions ----------------------------------------------------

    def _actions(self) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
        return {
            "flush": (self._flush, _nothing),
            "shrink_rings": (self._shrink_rings, self._restore_rings),
            "pause_collectors": (self._pause, self._resume),
            "cap_queues": (self._cap_queues, self._lift_queues),
            "refuse_series": (lambda: self._refuse(True), lambda: self._refuse(False)),
        }

    def _flush(self) -> None:
        if self.agent.spool is None:
            return
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            self.agent.flush()
        else:  # a growth check in a collector thread: only the main loop flushes; wake it
            wanted = getattr(getattr(self.agent, "pipeline", None), "flush_wanted", None)
            if wanted is not None:
                wanted.set()

    def _ring_tenants(self) -> range:
        rings = self.agent.rings
        return range(getattr(rings, "n_tenants", 0))

    def _shrink_rings(self) -> None:
        rings = self.agent.rings
        if hasattr(rings, "set_limit"):
            for t in self._ring_tenants():
                rings.set_limit(t, max(1, rings.capacity(t) // SHRUNK_RING_SHARE))
        self._flush()  # what is above the new limit leaves now

    def _restore_rings(self) -> None:
        rings = self.agent.rings
        if hasattr(rings, "set_limit"):
            for t in self._ring_tenants():
                rings.set_limit(t, rings.capacity(t))

    def _pause(self) -> None:
        s = self.agent.scheduler
        if s is not None and hasattr(s, "pause"):
            low = s.lowest_priority()
            if low:
                s.pause(low)

    def _resume(self) -> None:
        self._dropped = set()
        s = self.agent.scheduler
        if s is not None and hasattr(s, "resume"):
            s.resume()

    def _cap_queues(self) -> None:
        self._queues_capped = [o for o in self.agent.outputs if hasattr(o, "limit_queue")]
        for o in self._queues_capped:
            o.limit_queue(QUEUE_CAP_SHARE)

    def _lift_queues(self) -> None:
        for o in self._queues_capped:
            o.limit_queue(None)
        self._queues_capped = []

    def _refuse(self, on: bool) -> None:
        r = self.agent.registry
        if hasattr(r, "refusing_new"):
            r.refusing_new = on
        p = getattr(self.agent, "pipeline", None)
        if not on and p is not None and hasattr(p, "retry_refused"):
            # the fan-out remembers each refused series; without this they stayed refused
            # until their tenant next had an eviction
            p.retry_refused()


_libc: Any = None


def _malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: return the free pages of the C heap to the system.

    Freed series leave whole pages free in the heap (numpy buffers, the C
    dictionary, large Python objects); glibc keeps them resident until it
    trims. False where there is no glibc (musl, other systems).
    """
    global _libc
    if _libc is None:
        try:
            import ctypes  # only once the guard has evicted a flood: not on the start path

            _libc = ctypes.CDLL(None).malloc_trim  # the process's own libc
        except (OSError, AttributeError, ImportError):
            _libc = False
    if not _libc:
        return False
    try:
        _libc(0)
    except Exception:  # noqa: BLE001 - an optimisation only
        return False
    return True


PROBATION_ENV = "INGRESS_MEMGUARD_PROBATION_S"


def _probation_s() -> float:
    """The guard's probation wait: ``INGRESS_MEMGUARD_PROBATION_S`` (tests, drills) or 30 s."""
    raw = os.environ.get(PROBATION_ENV)
    if raw is None or raw == "":
        return PROBATION_S
    try:
        v = float(raw)
        if v != v or v < 0 or v == float("inf"):
            raise ValueError
    except ValueError:
        log.warning(f"{PROBATION_ENV}={raw[:40]!r} is not a number of seconds >= 0; using {PROBATION_S:g} s",
                    variable=PROBATION_ENV)
        return PROBATION_S
    return v


class _NoLimits:
    memory_bytes = None
    cpu_percent = None


def _nothing() -> None:
    return None
