"""A synthetic high-cardinality collector for the memory-cap benchmark and test.

``flood`` emits ``flood.value`` for ``series`` brand-new series every pass (tag
``key`` = a counter that never repeats), as a host whose containers or pids
churn without end would. It retires the previous pass's series from its own
table, so the collector itself stays small and what grows is the agent's
series registry and rings: what the memory guard must contain. Once the file
``stop_file`` exists it emits nothing (the flood has ended). Its priority is 0,
the lowest class, so the guard's ``pause_collectors`` step pauses it; while
paused, its ``drop_caches`` retires its last pass's series at once.

Run with ``PYTHONPATH=tests INGRESS_PLUGINS=flood_plugin``::

    [[tenants]]
    id = "acme"
    collectors = ["flood"]
    [tenants.flood]
    series = 20000
    stop_file = "/tmp/flood.stop"
"""
from __future__ import annotations

import os

import numpy as np

from ingress.collect import COLLECTORS
from ingress.collect.base import GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.options import Int, PathKind


class FloodCollector(Collector):
    name = "flood"
    priority = 0
    metrics = (MetricSpec("flood.value", "1", "A synthetic value of a never-repeating series", GAUGE, ("key",)),)
    options = (
        OptionSpec("series", 20000, "New series per pass.", Int(1, 10_000_000)),
        OptionSpec("stop_file", None, "When this file exists, the flood has ended: nothing is emitted.",
                   PathKind()),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self._next = 0
        self._prev = np.zeros(0, np.uint32)
        self._out = ColumnBuilder(self.opts["series"])

    def drop_caches(self) -> None:
        """Paused: retire the last pass's series from the table now rather than at the next pass."""
        for sid in self._prev.tolist():
            self.table.retire(sid)
        self._prev = np.zeros(0, np.uint32)
        super().drop_caches()

    def collect(self, now_ns: int) -> Columns:
        self._out.reset()
        for sid in self._prev.tolist():
            self.table.retire(sid)
        self._prev = np.zeros(0, np.uint32)
        stop = self.opts["stop_file"]
        if stop is not None and os.path.exists(stop):
            return self._out.finish(now_ns)
        n = self.opts["series"]
        start, self._next = self._next, self._next + n
        ids = self.series_ids(("flood.value", {"key": str(k)}) for k in range(start, start + n))
        self._out.put(ids, np.arange(start, start + n, dtype=np.float64))
        self._prev = ids
        return self._out.finish(now_ns)


if "flood" not in COLLECTORS.names():
    COLLECTORS.register("flood", FloodCollector)
