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
  actions as its steps.
* **systemd**: ``READY=1`` with a ``STATUS=`` line after start, ``WATCHDOG=1``
  at half ``WATCHDOG_USEC`` from the main loop, ``STOPPING=1`` at stop
  (:mod:`ingress.sdnotify`; no-ops without ``NOTIFY_SOCKET``).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from ingress.logs import get_logger
from ingress.memguard import MemGuard, read_rss
from ingress.sdnotify import Notifier

__all__ = ["Containment", "adopt_limits", "SHRUNK_RING_SHARE", "QUEUE_CAP_SHARE"]

log = get_logger("ingress.containment")
MIB = 1 << 20
SHRUNK_RING_SHARE = 4  # shrink_rings: each ring holds a quarter of its slots
QUEUE_CAP_SHARE = 0.25  # cap_queues: outputs' local queues at a quarter of their bound


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
                              clock=self._clock)
        return settings

    def started(self) -> None:
        a = self.agent
        self.notifier.ready(f"collecting for {len(a.tenants.enabled)} tenant(s) to {len(a.outputs)} output(s)")
        if self.notifier.watchdog_s:
            self._next_watchdog = self._clock()  # first ping at the next tick

    def every_second(self) -> None:
        if self.guard is not None:
            self.guard.tick()
        self.config_watch.check(getattr(self.agent, "settings", None), self._clock())
        w = self.notifier.watchdog_s
        if w:
            now = self._clock()
            if now >= self._next_watchdog:
                self.notifier.watchdog()
                self._next_watchdog = now + w / 2

    def stopping(self) -> None:
        self.notifier.stopping()

    def status(self) -> dict[str, Any]:
        """For /readyz and /metrics: the guard's level, steps engaged and counts."""
        g = self.guard
        if g is None:
            return {"level": 0, "active": [], "engaged": {}, "rss": 0, "cap": 0}
        return {"level": g.level, "active": g.active, "engaged": g.counts(), "rss": g.last_rss, "cap": g.cap}

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
        if self.agent.spool is not None:
            self.agent.flush()

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


class _NoLimits:
    memory_bytes = None
    cpu_percent = None


def _nothing() -> None:
    return None
