"""A synthetic collector for the scale benchmarks: ``synth`` emits N series per pass.

Loaded as a plugin (docs/contributing-plugins.md)::

    PYTHONPATH=benchmarks INGRESS_PLUGINS=synth_plugin ingress run -c agent.toml

    [[tenants]]
    id = "t000"
    collectors = ["synth"]
    interval = "100ms"
    [tenants.synth]
    series = 10000          # samples per pass; rate per tenant = series / interval

Every pass stamps all its samples with the pass's collection time (the
``now_ns`` the scheduler hands the collector), so stored time minus ``ts`` is
the latency from collection to stored. The value of series ``i`` is ``i`` plus
a pass counter: cheap to make, and not a constant the encoder would fold away.

Tenants asking for the same ``series`` share one instance (one pass, fanned out
to each tenant), as tenants share a real collector; ``group`` (any string) gives
a tenant an instance of its own.
"""
from __future__ import annotations

import numpy as np

from ingress.collect import COLLECTORS
from ingress.collect.base import GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.options import Int, Str


class SynthCollector(Collector):
    name = "synth"
    priority = 4
    metrics = (
        MetricSpec("synth.value", "1", "Synthetic value of series `s` (its index plus a pass counter)",
                   GAUGE, ("s",)),
    )
    options = (
        OptionSpec("series", 100, "Series (samples) per pass.", Int(1, 100_000)),
        OptionSpec("group", "", "Tenants with different groups get separate instances.", Str()),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        n = self.opts["series"]
        self._ids = self.series_ids(("synth.value", {"s": str(i)}) for i in range(n))
        self._base = np.arange(n, dtype=np.float64)
        self._pass = 0
        self._out = ColumnBuilder(n)

    def collect(self, now_ns: int) -> Columns:
        self._pass += 1
        self._out.reset()
        self._out.put(self._ids, self._base + self._pass)
        return self._out.finish(now_ns)


if "synth" not in COLLECTORS.names():
    COLLECTORS.register("synth", SynthCollector)
