"""What the collectors declare about each metric: kind, unit, description.

The protocol outputs (OTLP, remote write) and the JSON format need to know
whether a metric is a gauge or a counter and what its unit is. Both come from
the :class:`~ingress.collect.base.MetricSpec` declarations of the collectors in
``ingress.collect.COLLECTORS``; this module turns them into one table, built
once on first use (the collectors are already imported by a running agent).

A metric no collector declares (a name from a test, or from a future
collector) is a gauge without a unit.
"""
from __future__ import annotations

import threading
from typing import NamedTuple


class MetricInfo(NamedTuple):
    kind: str  # "gauge" or "counter"
    unit: str  # UCUM-style as declared ("By", "s", "1", "%", "By/s"...); "" when none
    description: str


UNKNOWN = MetricInfo("gauge", "", "")

_table: dict[str, MetricInfo] | None = None
_lock = threading.Lock()


def metric_table() -> dict[str, MetricInfo]:
    """name -> :class:`MetricInfo` for every metric a collector declares."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                from ingress.collect import COLLECTORS
                from ingress.collect.base import COUNTER

                t: dict[str, MetricInfo] = {}
                for cls in COLLECTORS.values():
                    for m in cls.metrics:
                        t[m.name] = MetricInfo("counter" if m.kind == COUNTER else "gauge", m.unit or "",
                                               m.description or "")
                _table = t
    return _table


def info(name: str) -> MetricInfo:
    """The declaration of ``name``, or :data:`UNKNOWN` (a gauge without a unit)."""
    return metric_table().get(name, UNKNOWN)
