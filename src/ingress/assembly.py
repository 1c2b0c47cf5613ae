"""Building the agent's parts from its settings: buffers, data directory, spool, tenant checker, deliveries.

:class:`ingress.agent.Agent` calls these while it is built and started, and
:mod:`ingress.reload` when a new configuration brings new tenants or outputs;
``ingress deadletter replay`` opens the spool the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ingress.settings import Settings
from ingress.stages import DeliveryStage, OutputStage, Registry, Rings

if TYPE_CHECKING:
    from ingress.agent import Agent
    from ingress.tenants import Tenant

MIB = 1 << 20


def make_registry(enabled: Sequence[Tenant]) -> Registry:
    """The series registry: one slot per enabled tenant (at least one), each with its ``max_series``."""
    from ingress.buffer import SeriesRegistry

    caps = [t.settings.max_series for t in enabled] or [1]
    return SeriesRegistry(max(1, len(enabled)), caps, names=[t.id for t in enabled] or ["-"])


def make_rings(settings: Settings, enabled: Sequence[Tenant]) -> Rings:
    """The rings: one per enabled tenant (at least one), ``agent.limits.ring_mb`` in all."""
    from ingress.buffer import RingSet

    return RingSet(max(1, len(enabled)), settings.agent.limits.ring_mb * MIB, settings.agent.limits.ring_policy)


def make_data_dir(path: Path) -> None:
    created = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def open_spool(settings: Settings) -> Any:
    from ingress.security.audit import spool_dropped
    from ingress.spool import Spool, TenantPolicy

    a = settings.agent
    policies = {t.id: TenantPolicy(max_bytes=t.spool.max_mb * MIB, retention_s=t.spool.retention_s,
                                   encrypt=t.spool.encrypt) for t in settings.tenants}
    served = {t.id: [o.name for o in settings.outputs if o.serves(t.id)] for t in settings.tenants}
    return Spool(a.data_dir, policies, served, fsync=a.spool.fsync, write_mb_s=a.limits.disk_write_mb_s,
                 segment_bytes=a.spool.segment_mb * MIB, on_drop=spool_dropped)


def deadletter_limits(settings: Settings) -> dict[str, tuple[float, float]]:
    return {t.id: (t.spool.deadletter_max_mb * MIB, t.spool.deadletter_retention_s) for t in settings.tenants}


def tenant_checker(agent: Agent) -> Any:
    """The tenant checker every Delivery of ``agent`` shares (kept as ``agent.checker``)."""
    from ingress.outputs.validate import TenantChecker, TenantRule

    # Credentials are resolved by ingress.tenants at every use (a key file can
    # be rotated); the checker counts failures per tenant and category.
    agent.checker = TenantChecker({t.id: TenantRule(enabled=t.enabled,
                                                    credential=t.credential if t.has_credential else None)
                                   for t in agent.tenants})
    return agent.checker


def delivery_factory(agent: Agent, checker: Any) -> Callable[[OutputStage], DeliveryStage]:
    """``make(output)``: one Delivery per output, so each keeps its own retry and breaker settings.

    The spool, the held tenants and the tenants an output serves are read when
    ``make`` is called.
    """
    from ingress.outputs.breaker import CircuitBreaker
    from ingress.outputs.delivery import Delivery
    from ingress.outputs.retry import Backoff

    if checker is None:
        checker = tenant_checker(agent)
    by_name = {o.name: o for o in agent.settings.outputs}

    def make(out: OutputStage) -> DeliveryStage:
        s = agent.settings
        cfg = by_name.get(out.name)
        kw: dict[str, Any] = {}
        if cfg is not None:
            r, br = cfg.retry, cfg.breaker
            kw["backoff"] = lambda: Backoff(base_s=r.backoff_initial_s, cap_s=r.backoff_max_s)
            kw["breaker_factory"] = lambda: CircuitBreaker(br.failures, br.reset_s)
        tenants = [t.id for t in s.tenants if out.serves(t.id) and t.id not in agent.held_tenants]
        return Delivery(agent.spool, [out], checker, tenants=tenants, data_dir=s.agent.data_dir,
                        host=s.agent.hostname, deadletter_limits=deadletter_limits(s), **kw)

    return make


def check_credentials(agent: Agent) -> bool:
    """Every tenant an output that needs a credential serves has one (IngressError naming it
    otherwise); returns whether every output is local (the agent then logs a summary)."""
    from ingress.outputs import OUTPUTS

    s = agent.settings
    plugins = [OUTPUTS[o.type] for o in s.outputs]
    for o, plugin in zip(s.outputs, plugins):
        if plugin.needs_credential:
            agent.tenants.check_credentials([t.id for t in agent.tenants.enabled if o.serves(t.id)])
    return all(p.local for p in plugins)


def start_outputs(agent: Agent) -> None:
    """Build the outputs (unless the agent was given them), start them, then one delivery each.

    What was built or started stays on ``agent.outputs`` / ``agent.deliveries``,
    so a failure part-way is stopped again by the agent's shutdown.
    """
    from ingress.errors import IngressError
    from ingress.outputs.plugin import build_outputs

    checker = None
    if agent._outputs_given is None:
        checker = tenant_checker(agent)
        agent.outputs = build_outputs(agent.settings, checker.credential)
    else:
        agent.outputs = list(agent._outputs_given)
    for o in agent.outputs:
        try:
            o.start()
        except IngressError as e:
            raise IngressError(f"output {o.name!r} is not usable at start-up: {e}") from None
    make = agent._delivery_factory or delivery_factory(agent, checker)
    for o in agent.outputs:
        d = make(o)
        agent.deliveries.append(d)
        d.start()


def freeze_heap() -> None:
    from ingress.buffer import freeze_long_lived

    freeze_long_lived()
