"""A collector and an output added from outside ingress: the example of docs/contributing-plugins.md.

``random`` emits ``random.value`` per stream; ``memory`` keeps what it is sent
and, when it closes, appends one JSON line per acknowledged batch to its
``record`` file. Importing this module registers both (the last lines); run
the agent with ``INGRESS_PLUGINS=plugin_example`` (and this directory on
``PYTHONPATH``) to use them from a configuration file::

    [[tenants]]
    id = "acme"
    collectors = ["random"]
    [tenants.random]
    streams = 5

    [[outputs]]
    type = "memory"
    record = "/tmp/acme-batches.jsonl"
"""
from __future__ import annotations

import json
import threading

import numpy as np

from ingress.collect import COLLECTORS
from ingress.collect.base import GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.options import Float, Int, Option, PathKind
from ingress.outputs import OUTPUTS
from ingress.outputs.base import Output
from ingress.outputs.plugin import OutputPlugin


# --------------------------------------------------------------------------- the collector

class RandomCollector(Collector):
    """Uniform random numbers, one series per stream: a collector in thirty lines."""

    name = "random"  # metric names start with it; the tenant table is [tenants.random]
    priority = 4
    metrics = (
        MetricSpec("random.value", "1", "A uniform random number in [0, scale)", GAUGE, ("stream",)),
    )
    options = (  # with a kind: a key of [tenants.random]; without: set by the agent
        OptionSpec("streams", 3, "How many series (tag `stream` = 0, 1, ...).", Int(1, 1000)),
        OptionSpec("scale", 1.0, "Upper bound of the values.", Float(0.0, above=True)),
    )

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        n = self.opts["streams"]
        self._ids = self.series_ids(("random.value", {"stream": str(i)}) for i in range(n))
        self._rng = np.random.default_rng()
        self._out = ColumnBuilder(n)

    def collect(self, now_ns: int) -> Columns:
        self._out.reset()
        self._out.put(self._ids, self._rng.random(len(self._ids)) * self.opts["scale"])
        return self._out.finish(now_ns)


# --------------------------------------------------------------------------- the output

class MemoryOutput(Output):
    """Acknowledges every batch at once and keeps (tenant, batch id, samples) of each."""

    type = "memory"

    def __init__(self, name: str, tenants: frozenset[str] | None = None, *, record=None) -> None:
        super().__init__(name, tenants)
        self.record = record
        self.batches: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def submit(self, batch, done) -> None:
        with self._lock:
            self.batches.append((batch.tenant, batch.batch_id.hex(), batch.sample_count))
        done(batch, None)

    def close(self) -> None:
        if self.record is not None:
            with self._lock, open(self.record, "a", encoding="utf-8") as f:
                for tenant, bid, n in self.batches:
                    f.write(json.dumps({"tenant": tenant, "batch_id": bid, "samples": n}) + "\n")
                self.batches.clear()


def _check(at, path: tuple, o: dict, agent) -> None:
    # A rule across keys or beyond one key's kind: reported at FILE:LINE through `at`.
    if o["record"] is not None and o["record"].suffix != ".jsonl":
        raise at.error(path + ("record",), f"{str(o['record'])!r} must end in .jsonl")


def _build(o, ctx) -> MemoryOutput:
    return MemoryOutput(o.name, None if o.tenants is None else frozenset(o.tenants), record=o.record)


PLUGIN = OutputPlugin(
    type="memory",
    options=(
        Option("outputs", "record", PathKind(), None,
               "JSON-lines file that gets one line per acknowledged batch when the output closes.",
               default_doc="none"),
    ),
    check=_check, build=_build, local=True)


# --------------------------------------------------------------------------- registration

def register() -> None:
    """The two registration lines (tests call :func:`unregister` to leave the registries as found)."""
    if "random" not in COLLECTORS.names():
        COLLECTORS.register("random", RandomCollector)
    if "memory" not in OUTPUTS.names():
        OUTPUTS.register("memory", PLUGIN)


def unregister() -> None:
    COLLECTORS.unregister("random")
    OUTPUTS.unregister("memory")


register()
