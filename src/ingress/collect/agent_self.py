"""Agent collector: the agent's own CPU and memory, and the pipeline's figures through a hook.

The agent measures itself here (``/proc/self`` through psutil: CPU time,
resident memory, threads, open fds). The rest of the figures belong to the
pipeline (rings, series registry, scheduler), which hands them over through
the ``stats_provider`` option: a callable, called once per pass, returning
``{metric name: (tags, value)}`` or ``{metric name: [(tags, value), ...]}``
for the ``agent.*`` metrics declared below. A name that is not declared, or
tags that do not fit its declaration, are skipped with one log line per name:
the provider is code, and a typo there should not stop the agent's metrics.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import psutil

from ingress.collect._util import counter_rate
from ingress.collect.base import COUNTER, GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec

log = logging.getLogger(__name__)

_OWN = ("agent.cpu.time", "agent.cpu.utilization", "agent.memory.rss", "agent.threads", "agent.open_fds")


class AgentCollector(Collector):
    """The agent's own resource use, plus ring, registry and collector figures from the pipeline."""

    name = "agent"
    priority = 4
    metrics = (
        MetricSpec("agent.cpu.time", "s", "CPU time (user + system) the agent used since it started", COUNTER),
        MetricSpec("agent.cpu.utilization", "1", "CPU seconds per second the agent used (1 = one core)"),
        MetricSpec("agent.memory.rss", "By", "The agent's resident memory"),
        MetricSpec("agent.threads", "1", "The agent's threads"),
        MetricSpec("agent.open_fds", "1", "The agent's open file descriptors"),
        MetricSpec("agent.ring.fill", "1", "Share (0..1) of the tenant's ring in use", GAUGE, ("tenant",)),
        MetricSpec("agent.ring.dropped", "1", "Samples the tenant's ring dropped since start", COUNTER,
                   ("tenant",)),
        MetricSpec("agent.series.count", "1", "Series the tenant has registered", GAUGE, ("tenant",)),
        MetricSpec("agent.series.refused", "1", "Series refused past the tenant's cardinality cap", COUNTER,
                   ("tenant",)),
        MetricSpec("agent.collector.duration", "s", "How long the collector's last pass took", GAUGE,
                   ("collector",)),
        MetricSpec("agent.collector.interval", "s", "The collector's effective interval after any stretching",
                   GAUGE, ("collector",)),
        MetricSpec("agent.collector.samples", "1", "Samples the collector's last pass produced", GAUGE,
                   ("collector",)),
    )
    options = (
        OptionSpec("stats_provider", None, "Callable returning {metric: (tags, value) or [(tags, value), ...]}"),
        OptionSpec("for_tenant", None, "The one tenant this instance serves: the figures name tenants and "
                   "collectors, and a tenant may only see its own"),
    )

    @classmethod
    def tenant_options(cls, tenant) -> dict:
        return {"for_tenant": tenant.id}  # one instance per tenant, never shared

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self._proc = psutil.Process(os.getpid())
        self._own_ids = self.series_ids((n, {}) for n in _OWN)
        self._own = np.empty(len(_OWN))
        self._prev_cpu: np.ndarray | None = None
        self._prev_ns = 0
        self._hook_ids: dict[tuple[str, tuple], int] = {}
        self._warned: set[str] = set()
        self.provider_errors = 0
        self._out = ColumnBuilder(64)

    def _num_fds(self) -> int:
        # Linux 6.2+ reports the count as the size of /proc/self/fd: one stat, where listing costs
        # a readdir over every fd (the processes collector holds about three per process). Older
        # kernels report 0 there.
        try:
            n = os.stat(f"/proc/{self._proc.pid}/fd").st_size
        except OSError:
            n = 0
        return n if n > 0 else self._proc.num_fds()

    def _hook_id(self, name: str, tags: dict) -> int | None:
        k = (name, tuple(sorted(tags.items())))
        sid = self._hook_ids.get(k)
        if sid is None:
            try:
                sid = self.series(name, **tags)
            except (KeyError, TypeError) as e:
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("agent: stats_provider gave %r, which does not fit the declared metrics: %s", name, e)
                return None
            self._hook_ids[k] = sid
        return sid

    def collect(self, now_ns: int) -> Columns:
        out = self._out
        out.reset()
        p = self._proc
        with p.oneshot():
            t = p.cpu_times()
            cpu = np.array([t.user + t.system])
            v = self._own
            v[0] = cpu[0]
            v[1] = counter_rate(cpu, self._prev_cpu, (now_ns - self._prev_ns) / 1e9)[0]
            v[2] = p.memory_info().rss
            v[3] = p.num_threads()
            v[4] = self._num_fds()
        self._prev_cpu, self._prev_ns = cpu, now_ns
        out.put(self._own_ids, v)
        provider = self.opts["stats_provider"]
        if provider is not None:
            try:
                stats = provider() or {}
            except Exception:  # the pipeline's hook failing must not take the agent's own metrics down
                self.provider_errors += 1
                log.exception("agent: stats_provider raised")
                stats = {}
            for name, entries in stats.items():
                if isinstance(entries, tuple):
                    entries = [entries]
                for tags, value in entries:
                    sid = self._hook_id(name, dict(tags or {}))
                    if sid is not None:
                        out.put1(sid, float(value))
        return out.finish(now_ns)
