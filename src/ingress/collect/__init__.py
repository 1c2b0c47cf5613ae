"""Host collectors: one module per collector, registered by name in ``COLLECTORS``.

See ``docs/collectors.md`` (generated from the declarations by
:func:`ingress.collect.docs.render`) for every metric, unit, tag and option.
"""
from ingress.collect.agent_self import AgentCollector
from ingress.collect.base import Collector, CollectorSettings, Columns, MetricSpec, OptionSpec
from ingress.collect.connections import ConnectionsCollector
from ingress.collect.cpu import CpuCollector
from ingress.collect.disk import DiskCollector
from ingress.collect.health import HealthCollector
from ingress.collect.memory import MemoryCollector
from ingress.collect.network import NetworkCollector
from ingress.collect.processes import ProcessesCollector

COLLECTORS: dict[str, type[Collector]] = {
    "cpu": CpuCollector,
    "memory": MemoryCollector,
    "disk": DiskCollector,
    "network": NetworkCollector,
    "processes": ProcessesCollector,
    "connections": ConnectionsCollector,
    "health": HealthCollector,
    "agent": AgentCollector,
}

__all__ = ["COLLECTORS", "Collector", "CollectorSettings", "Columns", "MetricSpec", "OptionSpec",
           "CpuCollector", "MemoryCollector",
           "DiskCollector", "NetworkCollector", "ProcessesCollector",
           "ConnectionsCollector", "HealthCollector",
           "AgentCollector"]
