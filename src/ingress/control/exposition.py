"""The Prometheus text format (0.0.4) for the agent's ``/metrics``, written here.

Why not ``prometheus_client`` in the agent: importing it pulls in ``ssl``,
``http.server``, ``urllib.request`` and ``wsgiref`` through its exposition
module, about 8 MB of RSS in an agent whose whole budget is 55 MB (measured
with ``bench_agent``: 44.9 -> 53.2 MB). The agent only needs four metric
families (counter, gauge, info, histogram) and the text encoder, so this module
offers the same constructor and ``add_metric`` API as
``prometheus_client.metrics_core`` for those four, and
:func:`render` writes exactly what ``prometheus_client.generate_latest`` writes
for them. ``tests/control/test_exposition.py`` holds the two byte-identical on
the agent's real collector and on hypothesis-generated families, and parses
the page with ``prometheus_client.parser`` (a test dependency).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Family:
    type = "untyped"
    suffix = ""

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        if labels is not None and value is not None:
            raise ValueError("Can only specify at most one of value and labels.")
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels or ())
        # (sample name, label names, label values, value)
        self.samples: list[tuple[str, tuple[str, ...], tuple[str, ...], float]] = []
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append((self.name + self.suffix, self.labels, tuple(labels), float(value)))


class GaugeMetricFamily(_Family):
    type = "gauge"


class CounterMetricFamily(_Family):
    type = "counter"
    suffix = "_total"

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(name.removesuffix("_total"), documentation, value, labels)


class InfoMetricFamily(_Family):
    type = "gauge"  # the text format has no info type: prometheus_client writes a gauge
    suffix = "_info"

    def __init__(self, name: str, documentation: str, value: dict[str, str] | None = None,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(name, documentation, None, labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: dict[str, str]) -> None:  # type: ignore[override]
        names = self.labels + tuple(value)
        self.samples.append((self.name + self.suffix, names, tuple(labels) + tuple(value.values()), 1.0))


class HistogramMetricFamily(_Family):
    """``prometheus_client.metrics_core.HistogramMetricFamily`` without exemplars or units:
    ``buckets`` is ``[(le, cumulative count), ...]`` ending with ``("+Inf", count)``."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, buckets: Sequence[tuple[str, float]] | None = None,
                 sum_value: float | None = None, labels: Sequence[str] | None = None) -> None:
        if sum_value is not None and buckets is None:
            raise ValueError("sum value cannot be provided without buckets.")
        if labels is not None and buckets is not None:
            raise ValueError("Can only specify at most one of buckets and labels.")
        super().__init__(name, documentation, None, labels)
        if buckets is not None:
            self.add_metric([], buckets, sum_value)

    def add_metric(self, labels: Sequence[str], buckets: Sequence[tuple[str, float]],  # type: ignore[override]
                   sum_value: float | None) -> None:
        lv = tuple(labels)[:len(self.labels)]
        # Label pairs as prometheus_client builds them: a dict, so a repeated name keeps its last value.
        for le, count in buckets:
            pairs = dict(list(zip(self.labels, lv)) + [("le", le)])
            self.samples.append((self.name + "_bucket", tuple(pairs), tuple(pairs.values()), float(count)))
        if float(buckets[0][0]) >= 0 and sum_value is not None:  # as prometheus_client: no sum with negative buckets
            pairs = dict(zip(self.labels, lv))
            self.samples.append((self.name + "_count", tuple(pairs), tuple(pairs.values()), float(buckets[-1][1])))
            self.samples.append((self.name + "_sum", tuple(pairs), tuple(pairs.values()), float(sum_value)))


def go_float(d: float) -> str:
    """A float as Prometheus (Go) writes it: ``+Inf``, ``NaN``, ``1e+07``."""
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(families: Iterable[_Family]) -> bytes:
    """The text exposition of ``families``, in order, UTF-8."""
    out: list[str] = []
    for f in families:
        name = f.name + f.suffix
        doc = f.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n")
        out.append(f"# TYPE {name} {f.type}\n")
        for sname, names, values, value in f.samples:
            if names:
                pairs = sorted(dict(zip(names, values)).items())
                labels = "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in pairs) + "}"
            else:
                labels = ""
            out.append(f"{sname}{labels} {go_float(value)}\n")
    return "".join(out).encode("utf-8")
