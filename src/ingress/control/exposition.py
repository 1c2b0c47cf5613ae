"""The Prometheus text format (0.0.4) for the agent's ``/metrics``, written here.

Why not ``prometheus_client`` in the agent: importing it pulls in ``ssl``,
``http.server``, ``urllib.request`` and ``wsgiref`` through its exposition
module, about 8 MB of RSS in an agent whose whole budget is 55 MB (measured
with ``bench_agent``: 44.9 -> 53.2 MB). The agent only needs three metric
families and the text encoder, so this module offers the same constructor and
``add_metric`` API as ``prometheus_client.metrics_core`` for those three, and
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
        self.samples: list[tuple[tuple[str, ...], tuple[str, ...], float]] = []
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append((self.labels, tuple(labels), float(value)))


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
        self.samples.append((names, tuple(labels) + tuple(value.values()), 1.0))


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
        for names, values, value in f.samples:
            if names:
                pairs = sorted(zip(names, values))
                labels = "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in pairs) + "}"
            else:
                labels = ""
            out.append(f"{name}{labels} {go_float(value)}\n")
    return "".join(out).encode("utf-8")
