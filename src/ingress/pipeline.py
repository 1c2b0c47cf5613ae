"""The batcher: collector passes -> per-tenant rings -> encoded batches -> the spool.

Collector side (scheduler threads): :meth:`Pipeline.on_columns` fans a pass
out per tenant and pushes each share into that tenant's ring, under one lock
(a few vectorised numpy calls per tenant). Flush side (the main thread only):
:meth:`Pipeline.flush` drains every ring, has the :class:`~ingress.stages.Encoder`
make single-tenant batches of at most ``max_samples`` samples and ``max_bytes``
bytes, and hands each to a :data:`~ingress.stages.SpoolAppend` (the agent's
spool append), so no two drains ever race.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ingress.fanout import FanOut
from ingress.logs import get_logger

if TYPE_CHECKING:
    from ingress.collect.base import Columns
    from ingress.collect.plan import Binding
    from ingress.stages import SpoolAppend, Encoder, Registry, Rings
    from ingress.tenants import Tenant

__all__ = ["Pipeline", "TenantStats"]

log = get_logger("ingress.agent")


@dataclass
class TenantStats:
    """Per-tenant pipeline counters (samples unless named otherwise), cumulative."""

    collected: int = 0  # pushed into the ring
    ring_dropped: int = 0
    spooled: int = 0
    spooled_batches: int = 0
    spool_dropped: int = 0  # refused by the spool (disk full, quota)


class Pipeline:
    """Fan-out -> rings on the collector side; rings -> batches -> the spool on the flush side.

    Parameters
    ----------
    tenants
        Enabled tenants, ``tenants[i].index == i``.
    bindings
        ``{scheduler name: Binding}``.
    registry, rings
        :class:`~ingress.buffer.SeriesRegistry` and :class:`~ingress.buffer.RingSet`
        sized for ``tenants``.
    host
        Written into every batch.
    max_samples, max_bytes
        Batch limits (``[agent.batch]``); a batch encoding to more than
        ``max_bytes`` is split in halves until it fits.
    encoder
        Turns one tenant's drained samples into a batch; default
        :class:`ingress.wire.Encoder` over ``registry`` (tests inject another).
    """

    def __init__(self, tenants: Sequence[Tenant], bindings: Mapping[str, Binding], registry: Registry,
                 rings: Rings, host: str, max_samples: int, max_bytes: int,
                 encoder: Encoder | None = None) -> None:
        self.tenants = tuple(tenants)
        self.bindings = dict(bindings)
        self.registry = registry
        self.rings = rings
        self.fanout = FanOut(registry)
        self.host = host
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        if encoder is None:
            from ingress.wire import Encoder as WireEncoder

            encoder = WireEncoder(registry, host)
        self.encoder: Encoder = encoder
        self.stats = {t.id: TenantStats() for t in self.tenants}
        self.flush_wanted = threading.Event()
        self.last_samples: dict[str, int] = {}
        self._by_id = {t.id: t for t in self.tenants}
        self._lock = threading.Lock()
        self._s = np.empty(max_samples, np.uint32)
        self._ts = np.empty(max_samples, np.int64)
        self._v = np.empty(max_samples, np.float64)

    def route(self, name: str, cols: Columns, tenant_ids: Iterable[str] = ()) -> list:
        """Fan one pass out; returns the per-tenant shares (no ring involved)."""
        b = self.bindings[name]
        ids = tuple(tenant_ids)
        tenants = [self._by_id[t] for t in ids if t in self._by_id] if ids else b.tenants
        return self.fanout.route(b.collector, b.collector.table, cols.local_ids, cols.values, cols.ts, tenants,
                                 getattr(cols, "drop", None))

    def on_columns(self, name: str, cols: Columns, tenant_ids: Iterable[str] = ()) -> None:
        """Scheduler callback: fan a pass out and push each tenant's share into its ring."""
        self.last_samples[name] = len(cols)
        if len(cols) == 0:
            return
        with self._lock:
            for d in self.route(name, cols, tenant_ids):
                t = d.tenant.index
                dropped = self.rings.push(t, d.series, d.ts, np.ascontiguousarray(d.values),
                                          np.ascontiguousarray(d.kinds))
                self.registry.touch(t, d.series, d.ts)
                st = self.stats[d.tenant.id]
                st.collected += len(d.series)
                if dropped:
                    st.ring_dropped += dropped
                    log.every(("ring full", d.tenant.id), 60.0).warning(
                        "ring full: oldest samples dropped", tenant=d.tenant.id, dropped=st.ring_dropped)
                if self.rings.size(t) >= self.max_samples:
                    self.flush_wanted.set()

    def collect_once(self, now_ns: int) -> Iterator[tuple[str, str, dict, int, float]]:
        """One pass of every collector, routed: ``(tenant, name, tags, ts, value)`` per sample.

        Nothing is buffered, spooled or sent (``ingress run --once``).
        """
        for key, b in self.bindings.items():
            cols = b.collector.collect(now_ns)
            for d in self.route(key, cols):
                t = d.tenant.index
                for sid, v in zip(d.series.tolist(), d.values.tolist()):
                    name, tags = self.registry.key(t, sid)
                    yield d.tenant.id, name, dict(tags), d.ts, v

    def leave_out(self, tenant_ids: Iterable[str]) -> None:
        """Serve ``tenant_ids`` no more: bindings left with no tenant are dropped."""
        gone = set(tenant_ids)
        bindings = {}
        for k, b in self.bindings.items():
            keep = tuple(t for t in b.tenants if t.id not in gone)
            if keep:
                bindings[k] = b if len(keep) == len(b.tenants) else replace(b, tenants=keep)
        self.bindings = bindings
        self._by_id = {tid: t for tid, t in self._by_id.items() if tid not in gone}

    def log_summary(self, last: dict[str, tuple[int, int]]) -> None:
        """One ``collected`` line: samples and batches per tenant since ``last`` (updated)."""
        samples, batches = {}, {}
        for tid, st in self.stats.items():
            was = last.get(tid, (0, 0))
            samples[tid] = st.collected - was[0]
            batches[tid] = st.spooled_batches - was[1]
            last[tid] = (st.collected, st.spooled_batches)
        if any(samples.values()):
            log.info("collected", samples=samples, batches=batches,
                     series={t.id: self.registry.count(t.index) for t in self._by_id.values()})

    def evict(self, now_ns: int, ttl_s: float | None = None) -> int:
        """Evict idle series from the registry and forget them in the fan-out.

        ``ttl_s``: a shorter idle time than the registry's (the memory guard's).
        """
        evicted = self.registry.evict(now_ns, ttl_s=ttl_s)
        if evicted:
            with self._lock:
                self.fanout.invalidate(evicted)
        return sum(len(v) for v in evicted.values())

    def retry_refused(self) -> int:
        """Refused series are decided again at their next pass (the memory guard stopped refusing)."""
        with self._lock:
            return self.fanout.retry_refused()

    def flush(self, append: SpoolAppend) -> int:
        """Drain every ring into batches and hand each to ``append`` (the spool); returns batches made.

        ``append(tenant, batch_id, payload, sample_count, first_ts_ns)``. Only one
        thread may flush. Ids the registry evicted before this drain began are
        released afterwards: no later batch can refer to them.
        """
        epoch = self.registry.epoch
        made = 0
        cap = len(self._s)
        for t in self.tenants:
            while True:
                n = self.rings.drain(t.index, self._s, self._ts, self._v, None)
                if n == 0:
                    break
                made += self._encode(t, self._s[:n], self._ts[:n], self._v[:n], append)
                if n < cap:
                    break
        self.registry.release(upto=epoch)
        self.flush_wanted.clear()
        return made

    def _encode(self, t: Tenant, sids: np.ndarray, ts: np.ndarray, vals: np.ndarray,
                append: SpoolAppend) -> int:
        batch_id = os.urandom(16)
        payload = self.encoder.encode(t, sids, ts, vals, batch_id)
        if len(payload) > self.max_bytes and len(sids) > 1:
            h = len(sids) // 2
            return (self._encode(t, sids[:h], ts[:h], vals[:h], append)
                    + self._encode(t, sids[h:], ts[h:], vals[h:], append))
        append(t, batch_id, payload, len(sids), int(ts.min()))
        return 1
