"""What every collector is: a name, declared metrics, and ``collect(now_ns)``.

A collector never builds a Python object per sample in steady state. It keeps a
:class:`SeriesTable` of the series it has ever emitted (name + sorted tags,
interned once to a small *local* id) and hands over whole columns per pass:
local ids and values as numpy arrays (:class:`Columns`). The fan-out maps local
ids to each tenant's series ids with one vectorised lookup per tenant.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

GAUGE = 0
COUNTER = 1

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MetricSpec:
    """One metric a collector emits, declared once: docs are generated from it."""

    name: str
    unit: str
    description: str
    kind: int = GAUGE
    tags: tuple[str, ...] = ()


def proc_root() -> str:
    """The /proc root; tests point ``INGRESS_PROCFS`` at golden fixtures."""
    return os.environ.get("INGRESS_PROCFS", "/proc")


def sys_root() -> str:
    """The /sys root; tests point ``INGRESS_SYSFS`` at golden fixtures."""
    return os.environ.get("INGRESS_SYSFS", "/sys")


class SeriesTable:
    """Interns (name, sorted tags) to a dense local id, stable for the process.

    Ids are assigned once per distinct series. ``retire`` marks ids whose entity
    went away (an exited process); retired ids are reused only through
    ``intern`` after ``generation`` has moved on, so a fan-out that cached the
    old id can notice (``generation_of``).
    """

    __slots__ = ("_ids", "keys", "kinds", "generation", "_gen", "_free")

    def __init__(self) -> None:
        self._ids: dict[tuple[str, Tags], int] = {}
        self.keys: list[tuple[str, Tags] | None] = []
        self.kinds = np.zeros(64, np.uint8)
        self._gen = np.zeros(64, np.uint32)
        self.generation = 0
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def intern(self, name: str, tags: dict[str, str] | Tags, kind: int = GAUGE) -> int:
        t = tuple(sorted(tags.items())) if isinstance(tags, dict) else tags
        key = (name, t)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        if self._free:
            sid = self._free.pop()
            self.keys[sid] = key
        else:
            sid = len(self.keys)
            self.keys.append(key)
            if sid >= len(self.kinds):
                n = len(self.kinds) * 2
                self.kinds = np.resize(self.kinds, n)
                self._gen = np.resize(self._gen, n)
        self.generation += 1
        self._gen[sid] = self.generation
        self.kinds[sid] = kind
        self._ids[key] = sid
        return sid

    def generation_of(self, sid: int) -> int:
        return int(self._gen[sid])

    def retire(self, sid: int) -> None:
        key = self.keys[sid]
        if key is None:
            return
        del self._ids[key]
        self.keys[sid] = None
        self._free.append(sid)


@dataclass
class Columns:
    """One collector pass: aligned columns, no Python object per sample."""

    local_ids: np.ndarray  # uint32, index into the collector's SeriesTable
    values: np.ndarray  # float64
    ts: int  # ns since the epoch, one timestamp for the whole pass

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class CollectorSettings:
    """What a collector is told when it is built: the union of its tenants' needs."""

    proc_root: str = field(default_factory=proc_root)
    sys_root: str = field(default_factory=sys_root)
    options: dict = field(default_factory=dict)


class Collector:
    """Base class. Subclasses set ``name``, ``priority``, ``metrics``; implement ``collect``.

    ``priority``: lower is stretched first under CPU pressure
    (processes 0, connections 1, disk/network 2, memory 3, health/cpu 4).
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 4
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, settings: CollectorSettings | None = None) -> None:
        self.settings = settings or CollectorSettings()
        self.table = SeriesTable()

    def collect(self, now_ns: int) -> Columns:  # pragma: no cover - abstract
        raise NotImplementedError
