"""Which collector instances run, for which tenants, and how they are built and scheduled.

Collectors are shared: tenants that ask for the same collector with the same
options get one instance and one pass ("collect once, fan out"); tenants whose
options differ get one instance per distinct option set. A collector may name
one option that is merged across tenants instead (``per_tenant``:
``processes`` reads /proc once and serves each tenant's selection as a view).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ingress.errors import ConfigError

if TYPE_CHECKING:
    from ingress.config import Settings, TenantSettings
    from ingress.stages import CollectorStage, SchedulerStage
    from ingress.tenants import Tenant

__all__ = ["Binding", "plan_collectors", "build_collectors", "collector_options", "make_scheduler"]


def collector_options(name: str, t: TenantSettings) -> dict:
    """The ``CollectorSettings.options`` a tenant's configuration asks of collector ``name``."""
    from ingress.collect import COLLECTORS

    return COLLECTORS[name].tenant_options(t)


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


@dataclass
class Binding:
    """One collector instance, the tenants it serves and its scheduler name."""

    key: str
    name: str
    options: dict
    tenants: tuple[Tenant, ...]
    collector: CollectorStage | None = None


def plan_collectors(tenants: Sequence[Tenant]) -> dict[str, Binding]:
    """Group enabled tenants by (collector, options): one instance per group.

    A collector's ``per_tenant`` option (``processes``: ``views``) is left out
    of the grouping and merged: one instance serves every tenant whose other
    options agree, each with its own entry.

    The scheduler name is the collector's name when one instance serves every
    tenant that wants it, else ``name:<first tenant id>`` per instance.
    """
    from ingress.collect import COLLECTORS

    groups: dict[tuple[str, Any], Binding] = {}
    for t in tenants:
        for name in t.collectors:
            cls = COLLECTORS[name]
            opts = cls.tenant_options(t.settings)
            merged = cls.per_tenant
            k = (name, _freeze({o: v for o, v in opts.items() if o != merged}))
            b = groups.get(k)
            if b is None:
                groups[k] = Binding(name, name, opts, (t,))
                continue
            if merged is not None:
                b.options[merged].update(opts[merged])
            b.tenants += (t,)
    per_name: dict[str, int] = {}
    for name, _ in groups:
        per_name[name] = per_name.get(name, 0) + 1
    out: dict[str, Binding] = {}
    for (name, _), b in groups.items():
        b.key = name if per_name[name] == 1 else f"{name}:{b.tenants[0].id}"
        out[b.key] = b
    return out


def build_collectors(plan: Mapping[str, Binding], settings: Settings,
                     stats_provider: Callable[[Binding], Callable[[], dict]] | None = None) -> dict[str, Binding]:
    """Instantiate the planned collectors from ``ingress.collect.COLLECTORS``.

    ``stats_provider(binding)`` returns the figures callable handed to a
    collector that declares a ``stats_provider`` option (``agent``; see
    :meth:`ingress.agent.Agent.stats_for`).

    Raises
    ------
    ConfigError
        A collector rejects its options; the message points at the first
        tenant's ``collectors`` entry.
    """
    from ingress.collect import COLLECTORS
    from ingress.collect.base import CollectorSettings
    from ingress.config import locate

    ids = [t.id for t in settings.tenants]
    for b in plan.values():
        cls = COLLECTORS[b.name]
        options = dict(b.options)
        if any(o.name == "stats_provider" for o in cls.options):
            options["stats_provider"] = stats_provider(b) if stats_provider is not None else None
        first = b.tenants[0]
        where = locate(settings, ("tenants", ids.index(first.id), "collectors",
                                  first.collectors.index(b.name)))
        try:
            b.collector = cls(CollectorSettings(options=options))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return dict(plan)


def make_scheduler(settings: Settings, bindings: Mapping[str, Binding],
                   on_columns: Callable[[str, Any, tuple[str, ...]], None]) -> SchedulerStage:
    """The adaptive scheduler over the planned collectors, each tenant at its interval.

    A collector runs at the shortest interval of its tenants; each pass names
    the tenants it is for (see :class:`ingress.collect.scheduler.Scheduler`).
    """
    from ingress.collect.scheduler import Scheduler

    collectors = {k: b.collector for k, b in bindings.items()}
    tenant_intervals = {k: {t.id: t.interval_s for t in b.tenants} for k, b in bindings.items()}
    c = settings.agent.collect
    return Scheduler(collectors, {k: min(v.values()) for k, v in tenant_intervals.items()},
                     min_interval=c.min_interval_s, max_interval=c.max_interval_s,
                     cpu_budget_percent=settings.agent.limits.cpu_percent, on_columns=on_columns,
                     tenant_intervals=tenant_intervals, jitter=c.jitter)
