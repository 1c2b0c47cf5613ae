"""The pipeline's own figures for the ``agent`` collector, limited to the tenants it serves.

Ring fill and drops, series counts and refusals per tenant; the effective
interval and last sample count of each collector serving those tenants.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from ingress.agent import Agent
    from ingress.collect.plan import Binding


def provider(agent: Agent, b: Binding) -> Callable[[], dict]:
    """What the ``agent`` collector instance of binding ``b`` calls for its figures."""
    tenant_ids = tuple(t.id for t in b.tenants)
    return lambda: stats_for(agent, tenant_ids)


def stats_for(agent: Agent, tenant_ids: Iterable[str]) -> dict:
    wanted = set(tenant_ids)
    p = getattr(agent, "pipeline", None)
    if p is None:  # called before construction finished
        return {}
    fill, dropped, count, refused = [], [], [], []
    for t in p.tenants:
        if t.id not in wanted:
            continue
        tags = {"tenant": t.id}
        cap = agent.rings.capacity(t.index)
        fill.append((tags, agent.rings.size(t.index) / cap if cap else 0.0))
        dropped.append((tags, float(agent.rings.dropped(t.index))))
        count.append((tags, float(agent.registry.count(t.index))))
        refused.append((tags, float(agent.registry.refused(t.index))))
    out: dict[str, Any] = {"agent.ring.fill": fill, "agent.ring.dropped": dropped,
                           "agent.series.count": count, "agent.series.refused": refused}
    mine = [k for k, b in p.bindings.items() if wanted & {t.id for t in b.tenants}]
    intervals = getattr(agent.scheduler, "effective_intervals", lambda: {})()
    out["agent.collector.interval"] = [({"collector": k}, float(intervals[k])) for k in mine if k in intervals]
    out["agent.collector.samples"] = [({"collector": k}, float(p.last_samples[k]))
                                      for k in mine if k in p.last_samples]
    return out
