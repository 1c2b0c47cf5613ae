"""What every collector is: a name, declared metrics, and ``collect(now_ns)``.

A collector never builds a Python object per sample in steady state. It keeps a
:class:`SeriesTable` of the series it has ever emitted (name + sorted tags,
interned once to a small *local* id) and hands over whole columns per pass:
local ids and values as numpy arrays (:class:`Columns`). The fan-out maps local
ids to each tenant's series ids with one vectorised lookup per tenant.

Conventions every collector follows (checked when a subclass is defined):

* metric names are dotted, lower case, and their first segment is the
  collector's ``name`` (``cpu.time``, ``disk.io.bytes``), so a tenant's
  ``include = ["cpu.*"]`` selects exactly one collector's output;
* a cumulative counter and the per-second rate derived from it are two metrics,
  ``x`` (``COUNTER``) and ``x_rate`` (``GAUGE``); where the rate is a share of
  time (CPU seconds per second, busy time per second) it is ``x.utilization``
  instead, 1 meaning one whole CPU or device;
* the tags a series carries are exactly the tag keys its :class:`MetricSpec`
  declares (checked when the series is interned, never per sample);
* a ``NaN`` value in a pass means "no sample for this series this time" (the
  first pass of a rate, a counter that went backwards): :class:`ColumnBuilder`
  drops it, so nothing downstream ever sees it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import numpy as np

from ingress.errors import ConfigError
from ingress.options import Option, Section

if TYPE_CHECKING:
    from ingress.config import TenantSettings
    from ingress.options import ErrorAt, Kind

GAUGE = 0
COUNTER = 1

Tags = tuple[tuple[str, str], ...]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9][a-z0-9_]*)+$")


@dataclass(frozen=True)
class MetricSpec:
    """One metric a collector emits, declared once: docs are generated from it."""

    name: str
    unit: str
    description: str
    kind: int = GAUGE
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptionSpec:
    """One option a collector accepts, with its default and help, declared once.

    ``kind`` (a :class:`ingress.options.Kind`) makes it a configuration key of
    the collector's table, ``[tenants.<collector>]``; ``None`` means the agent
    sets it (``views``, ``stats_provider``, ``checks``) and a file cannot.
    """

    name: str
    default: Any
    help: str
    kind: Kind | None = None


_ROOTS = {"proc": "/proc", "sys": "/sys"}


def set_roots(procfs: str = "/proc", sysfs: str = "/sys") -> None:
    """Point the collectors at another /proc and /sys (``agent.procfs`` / ``agent.sysfs``)."""
    _ROOTS["proc"], _ROOTS["sys"] = procfs, sysfs


def proc_root() -> str:
    """The /proc root: ``agent.procfs`` (default ``/proc``).

    ``INGRESS_PROCFS`` (a test hook: golden fixtures) overrides it.
    """
    return os.environ.get("INGRESS_PROCFS") or _ROOTS["proc"]


def sys_root() -> str:
    """The /sys root: ``agent.sysfs`` (default ``/sys``); ``INGRESS_SYSFS`` overrides it."""
    return os.environ.get("INGRESS_SYSFS") or _ROOTS["sys"]


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

    def live(self) -> int:
        """How many ids currently name a series (interned and not retired)."""
        return len(self._ids)

    def compact(self) -> None:
        """Give back what retired series left behind: the retired top of the id space and
        the id dict's table (a dict never shrinks on deletion). Ids stay as they are; a
        trimmed id comes back through ``intern`` with a new generation, as a reused one does.
        """
        keys = self.keys
        while keys and keys[-1] is None:
            keys.pop()
        n = len(keys)
        self._free = [i for i in self._free if i < n]
        self._ids = dict(self._ids)


@dataclass
class Columns:
    """One collector pass: aligned columns, no Python object per sample."""

    local_ids: np.ndarray  # uint32, index into the collector's SeriesTable
    values: np.ndarray  # float64
    ts: int  # ns since the epoch, one timestamp for the whole pass
    # Per tenant id, a boolean table over local ids: True = not in that tenant's view
    # this pass (a process another tenant selected). None: every tenant sees everything.
    drop: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.values)


class ColumnBuilder:
    """Preallocated, growable id/value columns that a collector fills per pass.

    ``put`` copies whole arrays in (one numpy slice assignment per entity or per
    block, not per sample); ``finish`` hands out a compact copy with every
    ``NaN`` dropped, so the buffers can be reused on the next pass while the
    consumer still holds the previous :class:`Columns`.
    """

    __slots__ = ("ids", "values", "n")

    def __init__(self, capacity: int = 256) -> None:
        self.ids = np.empty(capacity, np.uint32)
        self.values = np.empty(capacity, np.float64)
        self.n = 0

    def reset(self) -> None:
        self.n = 0

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * len(self.ids))
        ids = np.empty(cap, np.uint32)
        vals = np.empty(cap, np.float64)
        ids[: self.n] = self.ids[: self.n]
        vals[: self.n] = self.values[: self.n]
        self.ids, self.values = ids, vals

    def put(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Append aligned ``ids`` and ``values`` (same length)."""
        k = len(ids)
        end = self.n + k
        if end > len(self.ids):
            self._grow(end)
        self.ids[self.n:end] = ids
        self.values[self.n:end] = values
        self.n = end

    def put1(self, sid: int, value: float) -> None:
        """Append one sample (for the few scalar series a collector has)."""
        if self.n >= len(self.ids):
            self._grow(self.n + 1)
        self.ids[self.n] = sid
        self.values[self.n] = value
        self.n += 1

    def finish(self, ts: int) -> Columns:
        vals = self.values[: self.n]
        ids = self.ids[: self.n]
        keep = ~np.isnan(vals)
        if keep.all():
            return Columns(ids.copy(), vals.copy(), int(ts))
        return Columns(ids[keep], vals[keep], int(ts))


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

    ``options`` declares the keys accepted in ``CollectorSettings.options``
    with their defaults; an unknown key is a :class:`~ingress.errors.ConfigError`
    naming it. The resolved values are in ``self.opts``.

    Configuration (the class methods below, used by :mod:`ingress.config` and
    :mod:`ingress.collect.plan`): the options that have a ``kind`` are the keys
    of the tenant table ``[tenants.<name>]``; :meth:`table` declares it,
    :meth:`check_table` checks it beyond each key's kind, :meth:`tenant_options`
    turns a tenant's table into the options asked of an instance. Tenants asking
    for equal options share one instance; ``per_tenant`` names an option that
    is instead merged across tenants (``processes``: each tenant's view).
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 4
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    options: ClassVar[tuple[OptionSpec, ...]] = ()
    _specs: ClassVar[dict[str, MetricSpec]] = {}
    per_tenant: ClassVar[str | None] = None
    table_help: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        specs: dict[str, MetricSpec] = {}
        for m in cls.metrics:
            if m.name in specs:
                raise TypeError(f"{cls.__name__}: metric {m.name!r} declared twice")
            if cls.name and not (_NAME_RE.match(m.name) and m.name.split(".", 1)[0] == cls.name):
                raise TypeError(f"{cls.__name__}: metric {m.name!r} must be dotted lower case "
                                f"and start with {cls.name + '.'!r}")
            specs[m.name] = m
        cls._specs = specs

    def __init__(self, settings: CollectorSettings | None = None) -> None:
        self.settings = settings or CollectorSettings()
        self.table = SeriesTable()
        self.opts = self._resolve_options(self.settings.options or {})
        # (key, value) pairs shared by the series that carry them: a process's fourteen
        # series hold one ("pid", "4242") between them, not fourteen.
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    @classmethod
    def _resolve_options(cls, given: dict) -> dict:
        known = {o.name: o for o in cls.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"collector {cls.name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(sorted(known)) or 'none'}")
        out = {k: o.default for k, o in known.items()}
        out.update(given)
        return out

    # -- configuration ------------------------------------------------------------------
    @classmethod
    def table(cls) -> tuple[Section, tuple[Option, ...]] | None:
        """The tenant table configuring this collector and its rows, or None without one."""
        sec = f"tenants.{cls.name}"
        rows = tuple(Option(sec, o.name, o.kind, o.default, o.help, default_doc=None if o.default is not None
                            else "none") for o in cls.options if o.kind is not None)
        if not rows:
            return None
        help = cls.table_help or f"Options of the `{cls.name}` collector for this tenant."
        return Section(sec, False, help), rows

    @classmethod
    def check_table(cls, at: ErrorAt, path: tuple, values: Any, raw: Any, listed: bool) -> None:
        """Checks across keys of this tenant's table (``path``); each key's kind is already checked.

        ``values``: the converted table; ``raw``: the TOML value (None when absent);
        ``listed``: the collector is in the tenant's ``collectors``.
        """
        if raw is not None and not listed:
            sec = cls.table()[0]
            head = f"[[{sec.name}]]" if sec.array else f"[{sec.name}]"
            raise at.error(path, f"{head} is configured but {cls.name!r} is not in this tenant's collectors")

    @classmethod
    def tenant_options(cls, tenant: TenantSettings) -> dict:
        """The options ``tenant`` asks of this collector: the keys its table sets."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in tenant.collector_tables.get(cls.name, {}).items()}

    def series(self, metric: str, /, **tags: str) -> int:
        """Intern one declared series; its tag keys must be exactly the declared ones."""
        spec = self._specs.get(metric)
        if spec is None:
            raise KeyError(f"{type(self).__name__}: metric {metric!r} is not declared")
        if set(tags) != set(spec.tags):
            raise KeyError(f"{type(self).__name__}: {metric} takes tags {sorted(spec.tags)}, got {sorted(tags)}")
        pairs = self._pairs
        if len(pairs) > 65536:  # pids come and go; the next series start sharing afresh
            pairs.clear()
        tagt = tuple(sorted(pairs.setdefault(p, p) for p in ((k, str(v)) for k, v in tags.items())))
        return self.table.intern(metric, tagt, spec.kind)

    def series_ids(self, items: Iterable[tuple[str, dict[str, str]]]) -> np.ndarray:
        """Intern several series at once; their local ids as a ``uint32`` array."""
        return np.fromiter((self.series(n, **t) for n, t in items), np.uint32)

    def drop_caches(self) -> None:
        """Let go of what is kept only to make the next pass cheaper (the memory guard, while paused).

        Here: the shared tag pairs (up to 65,536), and the room its series table
        kept for series already retired (:meth:`SeriesTable.compact`). Called
        from the main loop while no pass of this collector runs; a subclass may
        drop more (and then call this). The next pass builds the pairs again.
        """
        self._pairs = {}
        self.table.compact()

    def collect(self, now_ns: int) -> Columns:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release threads or files the collector holds; safe to call twice."""
