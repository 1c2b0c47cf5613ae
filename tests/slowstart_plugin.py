"""A collector whose construction waits for a file: it holds ``ingress run`` in the
middle of building the agent, so a test can send signals in that window.

Run with ``PYTHONPATH=tests INGRESS_PLUGINS=slowstart_plugin``::

    [tenants.slowstart]
    ready_file = "/tmp/x.ready"   # written when the construction starts waiting
    go_file = "/tmp/x.go"         # the construction returns once it exists (at most 60 s)
"""
from __future__ import annotations

import time
from pathlib import Path

from ingress.collect import COLLECTORS
from ingress.collect.base import GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.options import PathKind


class SlowStartCollector(Collector):
    name = "slowstart"
    metrics = (MetricSpec("slowstart.value", "1", "Always 1", GAUGE, ()),)
    options = (
        OptionSpec("ready_file", None, "Written when the construction starts waiting.", PathKind()),
        OptionSpec("go_file", None, "The construction waits (at most 60 s) until this file exists.", PathKind()),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self._out = ColumnBuilder(1)
        ready, go = self.opts["ready_file"], self.opts["go_file"]
        if ready is not None and go is not None:
            Path(ready).write_text("waiting")
            end = time.monotonic() + 60
            while not Path(go).exists() and time.monotonic() < end:
                time.sleep(0.01)

    def collect(self, now_ns: int) -> Columns:
        self._out.reset()
        self._out.put(self.series_ids([("slowstart.value", {})]), [1.0])
        return self._out.finish(now_ns)


if "slowstart" not in COLLECTORS.names():
    COLLECTORS.register("slowstart", SlowStartCollector)
