"""Collect once, fan out: one collector pass -> per-tenant series ids and values.

A collector reports *local* series ids (its :class:`~ingress.collect.base.SeriesTable`).
Each tenant that asked for that collector needs its own series ids (the
:class:`~ingress.buffer.SeriesRegistry` interns name + tags per tenant, tenant tags
included) and only the samples its include/exclude rules keep.

Per (collector, tenant) a :class:`Route` keeps a numpy map ``local id -> tenant
series id``, with three sentinels at the top of the uint32 range::

    UNMAPPED  0xFFFFFFFF   not decided yet (new local id, reused id, evicted series)
    EXCLUDED  0xFFFFFFFE   the tenant's rules drop this series
    REFUSED   0xFFFFFFFD   the tenant's cardinality cap refused it (retried after evictions)

A pass is then one ``take`` per tenant and, only when a sentinel shows up, one
mask. Rules and ``registry.intern`` run once per new series, never per sample.

Invalidation:

* **Reused local ids.** ``SeriesTable`` bumps ``generation`` on every intern and
  records the generation of each id; ids interned since the route last looked
  are set back to ``UNMAPPED`` (one vectorised compare).
* **Registry evictions.** :meth:`FanOut.invalidate` takes ``registry.evict()``'s
  ``{tenant index: evicted ids}`` and unmaps those ids (and the refused ones,
  since evictions free room under the cap) in that tenant's routes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Protocol

import numpy as np

from ingress.tenants import Tenant

__all__ = ["FanOut", "Route", "Share", "UNMAPPED", "EXCLUDED", "REFUSED"]

UNMAPPED = np.uint32(0xFFFFFFFF)
EXCLUDED = np.uint32(0xFFFFFFFE)
REFUSED = np.uint32(0xFFFFFFFD)
_FIRST_SENTINEL = REFUSED


class Registry(Protocol):
    def intern(self, t: int, name: str, tags: tuple) -> int: ...


@dataclass
class Share:
    """What one tenant gets from one pass: aligned columns ready for ``RingSet.push``."""

    tenant: Tenant
    series: np.ndarray  # uint32 tenant series ids
    values: np.ndarray  # float64
    kinds: np.ndarray  # uint8
    ts: int


@dataclass
class TenantCounts:
    """Per-tenant fan-out counters (samples, cumulative)."""

    delivered: int = 0
    excluded: int = 0
    refused: int = 0


class Route:
    """The local id -> tenant series id map of one (collector, tenant)."""

    __slots__ = ("map", "seen_generation")

    def __init__(self) -> None:
        self.map = np.full(64, UNMAPPED, np.uint32)
        self.seen_generation = -1

    def sync(self, table: Any) -> None:
        """Grow to the table's size; unmap ids interned since the last look."""
        n = len(table)
        if n > len(self.map):
            grown = np.full(max(n, 2 * len(self.map)), UNMAPPED, np.uint32)
            grown[:len(self.map)] = self.map
            self.map = grown
        gen = table.generation
        if gen == self.seen_generation:
            return
        gens = getattr(table, "_gen", None)
        if gens is None or self.seen_generation < 0:
            # No per-id generations to compare: forget everything (correct, slower).
            self.map[:] = UNMAPPED
        else:
            changed = np.flatnonzero(gens[:n] > self.seen_generation)
            self.map[changed] = UNMAPPED
        self.seen_generation = gen


class FanOut:
    """Maps collector passes to per-tenant shares.

    Parameters
    ----------
    registry
        Per-tenant series interning: ``intern(t, name, tags) -> sid`` (``-1``
        when refused by the tenant's cardinality cap), ``t`` being
        :attr:`Tenant.index`.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._routes: dict[tuple[Hashable, int], Route] = {}
        self.counts: dict[str, TenantCounts] = {}
        self.new_series = 0  # rule evaluations + interns so far (for tests and metrics)

    def route(self, source: Hashable, table: Any, local_ids: np.ndarray, values: np.ndarray,
              ts: int, tenants: Iterable[Tenant], drop: Mapping[str, np.ndarray] | None = None) -> list[Share]:
        """Fan one pass of ``source`` (a collector) out to ``tenants``.

        ``local_ids`` index ``table`` (the collector's SeriesTable); ``values`` is
        aligned with it. ``drop`` (:attr:`Columns.drop`) maps a tenant id to a
        boolean table over local ids of the series outside that tenant's view
        this pass; they are excluded for that tenant only. Returns one
        :class:`Share` per tenant with at least one sample kept.
        """
        out: list[Share] = []
        if len(local_ids) == 0:
            return out
        kinds_all = table.kinds[local_ids]
        for tenant in tenants:
            r = self._routes.get((source, tenant.index))
            if r is None:
                r = self._routes[(source, tenant.index)] = Route()
            r.sync(table)
            m = r.map[local_ids]
            counts = self.counts.get(tenant.id)
            if counts is None:
                counts = self.counts[tenant.id] = TenantCounts()
            lut = drop.get(tenant.id) if drop else None
            hide = lut[local_ids] if lut is not None else None
            if hide is None and m.max() < _FIRST_SENTINEL:  # steady state: every series known and kept
                counts.delivered += len(m)
                out.append(Share(tenant, m, values, kinds_all, ts))
                continue
            unmapped = m == UNMAPPED
            if hide is not None:
                unmapped &= ~hide  # a series outside the view is neither decided nor interned
            if unmapped.any():
                self._decide(r, table, np.unique(local_ids[unmapped]), tenant)
                m = r.map[local_ids]
            keep = m < _FIRST_SENTINEL
            if hide is not None:
                keep &= ~hide
                m = np.where(hide, EXCLUDED, m)
            n_keep = int(np.count_nonzero(keep))
            refused = int(np.count_nonzero(m == REFUSED))
            counts.refused += refused
            counts.excluded += len(m) - n_keep - refused
            counts.delivered += n_keep
            if n_keep:
                out.append(Share(tenant, m[keep], values[keep], kinds_all[keep], ts))
        return out

    def _decide(self, r: Route, table: Any, ids: np.ndarray, tenant: Tenant) -> None:
        # Once per new (collector series, tenant): rules, tags, intern.
        keys = table.keys
        for lid in ids.tolist():
            self.new_series += 1
            key = keys[lid]
            if key is None:  # retired id still emitted: nothing to map it to
                r.map[lid] = EXCLUDED
                continue
            name, tags = key
            if not tenant.rules.match(name):
                r.map[lid] = EXCLUDED
                continue
            sid = self.registry.intern(tenant.index, name, tenant.merge_tags(tags))
            r.map[lid] = REFUSED if sid < 0 else sid

    def invalidate(self, evicted: Mapping[int, np.ndarray]) -> None:
        """Forget series the registry evicted (``{tenant index: ids}``).

        Refused series of those tenants are retried too: evictions made room.
        """
        for (source, t), r in self._routes.items():
            ids = evicted.get(t)
            if ids is None or len(ids) == 0:
                continue
            stale = np.isin(r.map, np.asarray(ids, np.uint32)) | (r.map == REFUSED)
            r.map[stale] = UNMAPPED

    def retry_refused(self) -> int:
        """Decide every refused series again at its next pass (the memory guard stopped refusing)."""
        n = 0
        for r in self._routes.values():
            refused = r.map == REFUSED
            n += int(np.count_nonzero(refused))
            r.map[refused] = UNMAPPED
        return n

    def forget(self, source: Hashable) -> None:
        """Drop every route of ``source`` (a collector that was removed)."""
        for key in [k for k in self._routes if k[0] == source]:
            del self._routes[key]
