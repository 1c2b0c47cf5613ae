"""What the control API reports about a running agent, read from counters it already keeps.

Sources: the pipeline's per-tenant counters (collected, ring and spool drops),
the rings and series registry, the spool's :meth:`stats`, each
:class:`~ingress.outputs.delivery.Delivery`'s :meth:`stats`, the scheduler's
effective intervals, and ``agent.held_tenants`` when present. Nothing here takes
a lock the collectors or delivery loops hold for long, and every figure is read
at request time.

Every message that leaves through the API passes :meth:`AgentView.redact`:
the tenants' outgoing credentials and any control-API key are replaced, so a
backend echoing a credential in its error body cannot carry it to a reader.
"""
from __future__ import annotations

import os
import time
from typing import Any

from ingress.memguard import LIGHT_STEPS
from ingress.security.keys import redact_keys

__all__ = ["AgentView", "SPOOL_READY_FRACTION"]

MIB = 1 << 20
SPOOL_READY_FRACTION = 0.9  # a tenant's spool above this share of its quota makes /readyz 503


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class AgentView:
    """Read-only view of an :class:`~ingress.agent.Agent` for the control API and metrics."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.started_at = time.time()

    @property
    def settings(self) -> Any:
        """The agent's settings now (a reload replaces them)."""
        return self.agent.settings

    @property
    def tenant_settings(self) -> dict[str, Any]:
        s = self.agent.settings
        if getattr(self, "_ts_of", None) is not s:
            self._ts_cache = {t.id: t for t in s.tenants}
            self._ts_of = s
        return self._ts_cache

    # ------------------------------------------------------------------ sources
    def tenant_ids(self) -> list[str]:
        return [t.id for t in self.settings.tenants]

    def delivery_stats(self) -> dict[str, dict[str, dict]]:
        out: dict[str, dict[str, dict]] = {}
        for d in list(getattr(self.agent, "deliveries", ()) or ()):
            stats = getattr(d, "stats", None)
            if stats is None:
                continue
            for t, per in stats().items():
                out.setdefault(t, {}).update(per)
        return out

    def spool_stats(self) -> dict[str, dict]:
        sp = getattr(self.agent, "spool", None)
        stats = getattr(sp, "stats", None)
        if stats is None:
            return {}
        try:
            return stats()
        except Exception:  # noqa: BLE001 - a closing spool: report nothing rather than fail
            return {}

    def deadletter_usage(self, tid: str) -> dict:
        """The tenant's dead letters on disk now: ``count``, ``bytes``, ``replay_queued``, ``dropped``."""
        from ingress.outputs.deadletter import usage

        try:
            return usage(self.settings.agent.data_dir, tid)
        except Exception:  # noqa: BLE001 - an unreadable area: report nothing rather than fail
            return {"count": 0, "bytes": 0, "replay_queued": 0, "dropped": 0}

    def held(self) -> dict[str, str]:
        h = getattr(self.agent, "held_tenants", None)
        return dict(h) if isinstance(h, dict) else {}

    def ring_and_series(self) -> dict[str, dict[str, float]]:
        p = self.agent.pipeline
        out = {}
        for t in p.tenants:
            i = t.index
            try:
                cap = self.agent.rings.capacity(i)
                out[t.id] = {"ring_fill": self.agent.rings.size(i) / cap if cap else 0.0,
                             "ring_dropped": float(self.agent.rings.dropped(i)),
                             "series": float(self.agent.registry.count(i)),
                             "series_refused": float(self.agent.registry.refused(i))}
            except Exception:  # noqa: BLE001 - test doubles without these figures
                continue
        return out

    def redact(self, text: Any) -> Any:
        if not isinstance(text, str) or not text:
            return text
        for t in getattr(self.agent, "tenants", ()):
            try:
                cred = t.credential() if t.has_credential else ""
            except Exception:  # noqa: BLE001 - a missing credential has nothing to hide
                cred = ""
            if cred and len(cred) >= 4 and cred in text:
                text = text.replace(cred, "[redacted]")
        return redact_keys(text)

    # ------------------------------------------------------------------ readiness
    def readiness(self) -> list[dict]:
        """Why the agent is not ready; empty when it is."""
        a = self.agent
        reasons: list[dict] = []
        if not getattr(a, "_started", False):
            reasons.append({"reason": "not_started", "message": "the agent is starting or stopping"})
        p = a.pipeline
        for name in p.bindings:
            if name not in p.last_samples:
                reasons.append({"reason": "collector_not_run", "collector": name,
                                "message": f"collector {name} has not completed a pass yet"})
        for t, outs in self.delivery_stats().items():
            for o, st in outs.items():
                state = st.get("state")
                if state == "blocked":
                    reasons.append({"reason": st.get("blocked") or "blocked", "tenant": t, "output": o,
                                    "message": self.redact(st.get("last_error") or "held")})
                elif state == "credential_refused":
                    reasons.append({"reason": "credential_refused", "tenant": t, "output": o,
                                    "breaker": st.get("breaker", {}).get("state", "open"),
                                    "status": st.get("credential_refused"),
                                    "message": self.redact(st.get("last_error") or "credential refused")})
                elif st.get("breaker", {}).get("state", "closed") != "closed":
                    reasons.append({"reason": "breaker_open", "tenant": t, "output": o,
                                    "breaker": st["breaker"]["state"],
                                    "message": self.redact(st.get("last_error") or "")})
        spool = self.spool_stats()
        for t, st in spool.items():
            ts = self.tenant_settings.get(t)
            if ts is None:
                continue
            quota = ts.spool.max_mb * MIB
            if st.get("bytes", 0) > SPOOL_READY_FRACTION * quota:
                reasons.append({"reason": "spool_near_quota", "tenant": t,
                                "message": f"spool holds {st['bytes']} bytes of a {quota}-byte quota"})
        for t, why in self.held().items():
            reasons.append({"reason": "tenant_held", "tenant": t, "message": self.redact(str(why))})
        cap = self.settings.agent.limits.memory_mb * MIB
        rss = rss_bytes()
        if rss > cap:
            reasons.append({"reason": "memory_over_cap",
                            "message": f"resident memory {rss} bytes is over agent.limits.memory_mb ({cap} bytes)"})
        shed = self.memory_shedding()
        if any(step not in LIGHT_STEPS for step in shed["active"]):  # work is paused, held back or refused
            reasons.append({"reason": "memory_shedding", "steps": shed["active"],
                            "message": f"resident memory {shed['rss']} bytes is near its {shed['cap']}-byte cap; "
                                       f"shedding load: {', '.join(shed['active'])}"})
        return reasons

    def memory_shedding(self) -> dict:
        """The memory guard's state (ingress.containment): level, steps active, counts."""
        c = getattr(self.agent, "containment", None)
        if c is None:
            return {"level": 0, "active": [], "engaged": {}, "rss": 0, "cap": 0}
        return c.status()

    # ------------------------------------------------------------------ tenant status
    def tenant_status(self, tid: str, delivery: dict | None = None, spool: dict | None = None,
                      rings: dict | None = None) -> dict:
        """One tenant's status document (docs/control-api.md); ``tid`` must be configured."""
        ts = self.tenant_settings[tid]
        delivery = self.delivery_stats() if delivery is None else delivery
        spool = self.spool_stats() if spool is None else spool
        rings = self.ring_and_series() if rings is None else rings
        pst = self.agent.pipeline.stats.get(tid)
        sp = spool.get(tid, {})
        rs = rings.get(tid, {})
        outputs: dict[str, dict] = {}
        last: tuple[float, str, str] | None = None
        dead = 0
        for o, st in sorted(delivery.get(tid, {}).items()):
            err = st.get("last_error")
            at = st.get("last_error_at")
            pend = sp.get("pending_by_output", {}).get(o, {})
            outputs[o] = {"state": st.get("state", "ok"), "breaker": st.get("breaker", {}).get("state", "closed"),
                          "sent_batches": st.get("sent_batches", 0), "sent_samples": st.get("sent_samples", 0),
                          "retries": st.get("retries", 0), "failures": st.get("failures", 0),
                          "dead_letters": st.get("dead_letters", 0), "in_flight": st.get("in_flight", 0),
                          "credential_refusals": st.get("credential_refusals", 0),
                          "pending_batches": pend.get("batches", 0), "pending_samples": pend.get("samples", 0),
                          "latency_p50_s": st.get("latency_p50_s"), "latency_p99_s": st.get("latency_p99_s"),
                          "last_error": None if err is None else {
                              "category": _category(st), "message": self.redact(err), "time": at}}
            dead += st.get("dead_letters", 0)
            if err is not None and at is not None and (last is None or at > last[0]):
                last = (at, _category(st), self.redact(err))
        quota = ts.spool.max_mb * MIB
        area = self.deadletter_usage(tid)
        return {
            "tenant": tid,
            "enabled": ts.enabled,
            "held": self.held().get(tid),
            "samples": {
                "collected": getattr(pst, "collected", 0),
                "spooled": getattr(pst, "spooled", 0),
                "sent": {o: v["sent_samples"] for o, v in outputs.items()},
                "dropped": {"ring_full": getattr(pst, "ring_dropped", 0),
                            "spool_refused": getattr(pst, "spool_dropped", 0),
                            "spool_quota_or_retention": sp.get("dropped_samples", 0)},
            },
            "series": {"count": int(rs.get("series", 0)), "refused": int(rs.get("series_refused", 0)),
                       "max": ts.max_series},
            "spool": {"bytes": sp.get("bytes", 0), "quota_bytes": quota, "segments": sp.get("segments", 0),
                      "oldest_pending_age_s": sp.get("oldest_age_s", 0.0),
                      "samples_pending": sp.get("samples_pending", 0),
                      "batches_pending": sp.get("batches_pending", 0),
                      "dropped_batches": sp.get("dropped_batches", 0)},
            "dead_letters": dead,
            "dead_letter_area": area,
            "outputs": outputs,
            "last_error": None if last is None else {"category": last[1], "message": last[2], "time": last[0]},
        }

    def all_status(self) -> list[dict]:
        delivery, spool, rings = self.delivery_stats(), self.spool_stats(), self.ring_and_series()
        return [self.tenant_status(t, delivery, spool, rings) for t in self.tenant_ids()]


def _category(st: dict) -> str:
    """A short class of a pair's last error: the tenant-check category while held,
    ``credential_refused`` while the backend refuses the credential, ``internal``,
    ``unreachable`` while the breaker is open, ``delivery`` otherwise."""
    if st.get("blocked"):
        return str(st["blocked"])
    if st.get("state") == "credential_refused":
        return "credential_refused"
    err = st.get("last_error") or ""
    if err.startswith("internal:"):
        return "internal"
    if st.get("breaker", {}).get("state", "closed") != "closed":
        return "unreachable"
    return "delivery"
