"""Host collectors: one module per collector, registered by name in ``COLLECTORS``.

Adding a collector is one module here (a :class:`~ingress.collect.base.Collector`
subclass declaring its metrics and options) plus one registration line below;
docs/contributing-plugins.md walks through it. ``COLLECTORS`` imports a
collector's module the first time its name is looked up (see
:mod:`ingress.plugins`). See ``docs/collectors.md`` (generated from the
declarations by :func:`ingress.collect.docs.render`) for every metric, unit,
tag and option.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ingress.plugins import Registry

if TYPE_CHECKING:
    from ingress.collect.base import Collector

COLLECTORS: Registry[type[Collector]] = Registry("collector")
COLLECTORS.register("cpu", "ingress.collect.cpu:CpuCollector")
COLLECTORS.register("memory", "ingress.collect.memory:MemoryCollector")
COLLECTORS.register("disk", "ingress.collect.disk:DiskCollector")
COLLECTORS.register("network", "ingress.collect.network:NetworkCollector")
COLLECTORS.register("connections", "ingress.collect.connections:ConnectionsCollector")
COLLECTORS.register("processes", "ingress.collect.processes:ProcessesCollector")
COLLECTORS.register("health", "ingress.collect.healthchecks:HealthCollector")
COLLECTORS.register("agent", "ingress.collect.agent_self:AgentCollector")

__all__ = ["COLLECTORS"]
