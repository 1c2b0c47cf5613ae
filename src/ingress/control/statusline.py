"""The agent's status line: one log line every minute, and one at stop, whatever the outputs.

::

    {"msg": "status", "tenants": {"acme": {"collected": 3801, "sent": {"web": 3600}, "pending": 100,
                                           "dropped": 0, "dead_letters": 0}},
     "outputs": {"web": {"acme": "ok"}}, "final": false}

Per tenant, cumulative since the agent started: samples ``collected``, ``sent``
per output, ``pending`` in the spool (not yet delivered everywhere), ``dropped``
(ring full, refused by the spool, dropped by spool quota or retention) and
batches set aside as ``dead_letters``. Per output, the state of each tenant's
pair: ``ok``, ``retrying``, ``open``, ``half_open``, ``blocked`` (a tenant
check holds it) or ``credential_refused``. The figures are the ones the control
API serves (:class:`ingress.control.status.AgentView`); the line is a warning
when some pair is not ``ok`` or ``retrying``, else info.

:func:`tick` is called on every turn of :meth:`ingress.agent.Agent.run` and
logs when the interval has passed; :func:`final` logs once at stop.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ingress.logs import get_logger

__all__ = ["StatusLine", "tick", "final", "INTERVAL_S"]

INTERVAL_S = 60.0
log = get_logger("ingress.status")
_HEALTHY = ("ok", "retrying")


class StatusLine:
    """The status line of one agent; :meth:`tick` logs once per ``interval_s``."""

    def __init__(self, agent: Any, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from ingress.control.status import AgentView

        self.agent = agent
        self.view = AgentView(agent)
        self.interval_s = interval_s
        self.clock = clock
        self.next = clock() + interval_s
        self.lines = 0

    def figures(self) -> tuple[dict, dict]:
        """``(tenants, outputs)`` as the line shows them."""
        v = self.view
        delivery = v.delivery_stats()
        spool = v.spool_stats()
        stats = self.agent.pipeline.stats
        tenants: dict[str, dict] = {}
        outputs: dict[str, dict[str, str]] = {}
        draining = [t for t in getattr(self.agent, "draining", None) or () if t not in v.tenant_ids()]
        for tid in v.tenant_ids() + draining:  # removed tenants still drained by a reload's choice
            pst = stats.get(tid)
            sp = spool.get(tid, {})
            per = delivery.get(tid, {})
            tenants[tid] = {
                "collected": getattr(pst, "collected", 0),
                "sent": {o: st.get("sent_samples", 0) for o, st in sorted(per.items())},
                "pending": sp.get("samples_pending", 0),
                "dropped": (getattr(pst, "ring_dropped", 0) + getattr(pst, "spool_dropped", 0)
                            + sp.get("dropped_samples", 0)),
                "dead_letters": sum(st.get("dead_letters", 0) for st in per.values()),
            }
            for o, st in sorted(per.items()):
                outputs.setdefault(o, {})[tid] = st.get("state", "ok")
        return tenants, outputs

    def emit(self, final: bool = False) -> None:
        tenants, outputs = self.figures()
        bad = any(s not in _HEALTHY for per in outputs.values() for s in per.values())
        (log.warning if bad else log.info)("status", tenants=tenants, outputs=outputs, final=final)
        self.lines += 1

    def tick(self) -> bool:
        """Log when the interval has passed; True when a line was written."""
        now = self.clock()
        if now < self.next:
            return False
        self.next = now + self.interval_s
        self.emit()
        return True


def _of(agent: Any) -> StatusLine:
    sl = agent.__dict__.get("_statusline")
    if sl is None:
        sl = agent.__dict__["_statusline"] = StatusLine(agent)
    return sl


def tick(agent: Any) -> None:
    """One turn of the agent's run loop: a status line when a minute has passed. Never raises."""
    try:
        _of(agent).tick()
    except Exception:  # noqa: BLE001 - a report must not stop the agent
        log.every("status line failed", 60.0).exception("status line failed")


def final(agent: Any) -> None:
    """The status line at stop (only for an agent that started)."""
    if not getattr(agent, "_started", False):
        return
    try:
        _of(agent).emit(final=True)
    except Exception:  # noqa: BLE001
        log.exception("status line failed")
