"""The agent's lifecycle and its pipeline, wired from :class:`~ingress.config.Settings`.

Pipeline (docs/architecture.md draws it)::

    collectors --Columns--> FanOut --per tenant--> RingSet --drain--> wire.encode --> Spool
       (scheduler threads)    (one lock)              (flush, main thread)          |
                                                                                 Delivery
                                                                          (thread per tenant x output)
                                                                                    |
                                                                                 outputs

Start downstream first, stop upstream first: ``start`` opens the spool, starts
the outputs and the delivery loops, then the collectors, so the first sample
already has somewhere to go. ``stop`` stops the collectors, flushes every ring
into the spool (every accepted sample is persisted), then gives the outputs
``agent.shutdown_timeout`` to acknowledge what is in flight, closes them and
closes the spool. Whatever is not acknowledged is sent again on the next start.

Threads: each collector runs on its scheduler worker and calls
:meth:`Pipeline.on_columns`, which fans out and pushes under one lock (the work
is a few vectorised numpy calls per tenant). Only the main thread drains rings,
encodes and appends to the spool, so no two drains ever race.

Collectors are shared: tenants that ask for the same collector with the same
options get one instance and one pass ("collect once, fan out"); a collector
whose options differ per tenant (``processes``, ``health``) gets one instance
per distinct option set.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ingress.config import Settings, TenantSettings, locate
from ingress.control import statusline
from ingress.errors import ConfigError, IngressError, SpoolError
from ingress.fanout import FanOut
from ingress.logs import get_logger
from ingress.tenants import Tenant, TenantSet
from ingress.transport.jsonfmt import sample_json  # noqa: F401 - its home; kept importable from here

__all__ = ["Agent", "Pipeline", "Binding", "plan_collectors", "build_collectors", "build_outputs",
           "collector_options", "sample_json", "make_scheduler"]

MIB = 1 << 20
EVICT_EVERY_S = 60.0
HELD_LOG_EVERY_S = 60.0
log = get_logger("ingress.agent")


# --------------------------------------------------------------------------- collectors

def collector_options(name: str, t: TenantSettings) -> dict:
    """The ``CollectorSettings.options`` a tenant's configuration asks of collector ``name``."""
    if name == "processes":
        p = t.processes
        return {"match": list(p.match), "top": p.top, "users": list(p.users), "cmdline": p.cmdline}
    if name == "health":
        checks = []
        for h in t.health:
            c: dict[str, Any] = {"name": h.name, h.kind: getattr(h, h.kind), "timeout": h.timeout_s}
            if h.expect_status is not None:
                c["expect_status"] = h.expect_status
            if h.insecure:
                c["insecure"] = True
            checks.append(c)
        return {"checks": checks}
    if name == "agent":
        # One instance per tenant: its figures name tenants and collectors, and a
        # tenant may only see its own.
        return {"for_tenant": t.id}
    return {}


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


@dataclass
class Binding:
    """One collector instance, the tenants it serves and its scheduler name."""

    key: str
    name: str
    options: dict
    tenants: tuple[Tenant, ...]
    collector: Any = None


def plan_collectors(tenants: Sequence[Tenant]) -> dict[str, Binding]:
    """Group enabled tenants by (collector, options): one instance per group.

    ``processes`` is the exception: one instance reads /proc once for every
    tenant, with each tenant's selection (match, users, cmdline, top) as a view.

    The scheduler name is the collector's name when one instance serves every
    tenant that wants it, else ``name:<first tenant id>`` per instance.
    """
    groups: dict[tuple[str, Any], Binding] = {}
    for t in tenants:
        for name in t.collectors:
            opts = collector_options(name, t.settings)
            if name == "processes":
                # One pass serves every tenant; each tenant's selection is a view of it
                # (the collector marks per pass which series each view leaves out).
                b = groups.get((name, None))
                if b is None:
                    groups[(name, None)] = Binding(name, name, {"views": {t.id: opts}}, (t,))
                else:
                    b.options["views"][t.id] = opts
                    b.tenants += (t,)
                continue
            k = (name, _freeze(opts))
            b = groups.get(k)
            if b is None:
                groups[k] = Binding(name, name, opts, (t,))
            else:
                b.tenants += (t,)
    per_name: dict[str, int] = {}
    for name, _ in groups:
        per_name[name] = per_name.get(name, 0) + 1
    out: dict[str, Binding] = {}
    for (name, _), b in groups.items():
        b.key = name if per_name[name] == 1 else f"{name}:{b.tenants[0].id}"
        out[b.key] = b
    return out


def build_collectors(plan: Mapping[str, Binding], settings: Settings,
                     stats_provider: Callable[[Binding], Callable[[], dict]] | None = None) -> dict[str, Binding]:
    """Instantiate the planned collectors from ``ingress.collect.COLLECTORS``.

    ``stats_provider(binding)`` returns the figures callable handed to an
    ``agent`` collector (see :meth:`Agent.stats_for`).

    Raises
    ------
    ConfigError
        A collector is not part of this build, or rejects its options; the
        message points at the first tenant's ``collectors`` entry.
    """
    from ingress.collect import COLLECTORS
    from ingress.collect.base import CollectorSettings

    ids = [t.id for t in settings.tenants]
    for b in plan.values():
        options = dict(b.options)
        if b.name == "agent":
            del options["for_tenant"]
            options["stats_provider"] = stats_provider(b) if stats_provider is not None else None
        first = b.tenants[0]
        where = locate(settings, ("tenants", ids.index(first.id), "collectors",
                                  first.collectors.index(b.name)))
        cls = COLLECTORS.get(b.name)
        if cls is None:
            raise ConfigError(f"{where}: collector {b.name!r} is not available in this build "
                              f"(available: {', '.join(sorted(COLLECTORS))})")
        try:
            b.collector = cls(CollectorSettings(options=options))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return dict(plan)


# --------------------------------------------------------------------------- outputs

def _construct(cls: type, where: tuple, settings: Settings, args: dict, optional: dict) -> Any:
    """``cls(**args, **optional)``, refusing settings the class cannot take.

    ``optional`` holds settings at non-default values; one the constructor does
    not accept is a ConfigError rather than silently ignored.
    """
    import inspect

    params = inspect.signature(cls).parameters
    for k, v in optional.items():
        if k not in params:
            raise ConfigError(f"{locate(settings, where + (k,))}: {v!r} is not supported by this "
                              f"build's {cls.type} output")
    return cls(**args, **optional)


def build_outputs(settings: Settings, credential: Callable[[str], str] | None) -> list:
    """One :class:`~ingress.transport.base.Output` per ``[[outputs]]`` table (not started)."""
    outs = []
    for i, o in enumerate(settings.outputs):
        where = ("outputs", i)
        tenants = frozenset(o.tenants) if o.tenants is not None else None
        if o.type == "file":
            from ingress.transport.file import FileOutput

            outs.append(_construct(FileOutput, where, settings, dict(name=o.name, data_dir=settings.agent.data_dir,
                                                           max_bytes=o.max_mb * MIB, format=o.format,
                                                           tenants=tenants, path=o.path), {}))
        elif o.type == "http":
            from ingress.transport.http import HttpOutput

            opt: dict[str, Any] = {"headers": dict(o.headers)} if o.headers else {}
            if o.format != "batch":
                opt["format"] = o.format
            outs.append(_construct(HttpOutput, where, settings, dict(
                name=o.name, url=o.url, credential=credential, tenants=tenants, timeout_s=o.timeout_s,
                verify=o.verify, ca_file=_s(o.ca_file), cert_file=_s(o.cert_file), key_file=_s(o.key_file)), opt))
        elif o.type == "kafka":
            from ingress.transport.kafka import KafkaOutput

            outs.append(_construct(KafkaOutput, where, settings, dict(
                name=o.name, brokers=o.brokers, topic=o.topic, tenants=tenants, format=o.format,
                options=dict(o.options)), {}))
        else:  # pragma: no cover - config refuses other types
            raise ConfigError(f"{locate(settings, where + ('type',))}: {o.type!r} is not an output type")
    return outs


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


# --------------------------------------------------------------------------- pipeline

@dataclass
class TenantStats:
    """Per-tenant pipeline counters (samples unless named otherwise), cumulative."""

    collected: int = 0  # pushed into the ring
    ring_dropped: int = 0
    spooled: int = 0
    spooled_batches: int = 0
    spool_dropped: int = 0  # refused by the spool (disk full, quota)


class Pipeline:
    """Fan-out -> rings on the collector side; rings -> batches -> sink on the flush side.

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
    encode
        ``wire.encode`` (injectable for tests).
    """

    def __init__(self, tenants: Sequence[Tenant], bindings: Mapping[str, Binding], registry: Any,
                 rings: Any, host: str, max_samples: int, max_bytes: int,
                 encode: Callable[..., bytes] | None = None) -> None:
        self.tenants = tuple(tenants)
        self.bindings = dict(bindings)
        self.registry = registry
        self.rings = rings
        self.fanout = FanOut(registry)
        self.host = host
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        # The real encoder takes the dictionary section the registry writes in C;
        # an injected one (tests) gets the contract's arguments: the series list.
        self._native_dictionary = encode is None
        if encode is None:
            from ingress.wire import encode
        self.encode = encode
        self.stats = {t.id: TenantStats() for t in self.tenants}
        self.flush_wanted = threading.Event()
        self.last_samples: dict[str, int] = {}
        self._by_id = {t.id: t for t in self.tenants}
        self._lock = threading.Lock()
        self._s = np.empty(max_samples, np.uint32)
        self._ts = np.empty(max_samples, np.int64)
        self._v = np.empty(max_samples, np.float64)

    def route(self, name: str, cols: Any, tenant_ids: Iterable[str] = ()) -> list:
        """Fan one pass out; returns the per-tenant shares (no ring involved)."""
        b = self.bindings[name]
        ids = tuple(tenant_ids)
        tenants = [self._by_id[t] for t in ids if t in self._by_id] if ids else b.tenants
        return self.fanout.route(b.collector, b.collector.table, cols.local_ids, cols.values, cols.ts, tenants,
                                 getattr(cols, "drop", None))

    def on_columns(self, name: str, cols: Any, tenant_ids: Iterable[str] = ()) -> None:
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

    def evict(self, now_ns: int) -> int:
        """Evict idle series from the registry and forget them in the fan-out."""
        evicted = self.registry.evict(now_ns)
        if evicted:
            with self._lock:
                self.fanout.invalidate(evicted)
        return sum(len(v) for v in evicted.values())

    def flush(self, sink: Callable[[Tenant, bytes, bytes, int, int], None]) -> int:
        """Drain every ring into batches and hand each to ``sink``; returns batches made.

        ``sink(tenant, batch_id, payload, sample_count, first_ts_ns)``. Only one
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
                made += self._encode(t, self._s[:n], self._ts[:n], self._v[:n], sink)
                if n < cap:
                    break
        self.registry.release(upto=epoch)
        self.flush_wanted.clear()
        return made

    def _encode(self, t: Tenant, sids: np.ndarray, ts: np.ndarray, vals: np.ndarray,
                sink: Callable) -> int:
        batch_id = os.urandom(16)
        if self._native_dictionary:
            d, n, index = self.registry.encoded_dictionary(t.index, sids)
            payload = self.encode(t.id, self.host, None, index, ts, vals, batch_id, dictionary=(d, n))
        else:
            series, index = self.registry.dictionary(t.index, sids)
            payload = self.encode(t.id, self.host, series, index, ts, vals, batch_id)
        if len(payload) > self.max_bytes and len(sids) > 1:
            h = len(sids) // 2
            return (self._encode(t, sids[:h], ts[:h], vals[:h], sink)
                    + self._encode(t, sids[h:], ts[h:], vals[h:], sink))
        sink(t, batch_id, payload, len(sids), int(ts.min()))
        return 1




# --------------------------------------------------------------------------- scheduling

def make_scheduler(settings: Settings, bindings: Mapping[str, Binding],
                   on_columns: Callable[[str, Any, tuple[str, ...]], None]) -> Any:
    """The adaptive scheduler over the planned collectors, each tenant at its interval.

    A collector runs at the shortest interval of its tenants; each pass names
    the tenants it is for (see :class:`ingress.collect.scheduler.Scheduler`).
    """
    from ingress.collect.scheduler import Scheduler

    collectors = {k: b.collector for k, b in bindings.items()}
    tenant_intervals = {k: {t.id: t.interval_s for t in b.tenants} for k, b in bindings.items()}
    c = settings.agent.collect
    return Scheduler(collectors, {k: min(v.values()) for k, v in tenant_intervals.items()},
                     min_interval=c.min_interval_s, max_interval=c.max_interval_s,
                     cpu_budget_percent=settings.agent.limits.cpu_percent, on_columns=on_columns,
                     tenant_intervals=tenant_intervals, jitter=c.jitter)


# --------------------------------------------------------------------------- the agent

def _freeze_heap() -> None:
    from ingress.buffer import freeze_long_lived

    freeze_long_lived()


def _open_spool(settings: Settings) -> Any:
    from ingress.spool import Spool, TenantPolicy

    a = settings.agent
    policies = {t.id: TenantPolicy(max_bytes=t.spool.max_mb * MIB, retention_s=t.spool.retention_s,
                                   encrypt=t.spool.encrypt) for t in settings.tenants}
    served = {t.id: [o.name for o in settings.outputs if o.serves(t.id)] for t in settings.tenants}
    from ingress.security.audit import spool_dropped

    return Spool(a.data_dir, policies, served, fsync=a.spool.fsync, write_mb_s=a.limits.disk_write_mb_s,
                 segment_bytes=a.spool.segment_mb * MIB, on_drop=spool_dropped)


def _deadletter_limits(settings: Settings) -> dict[str, tuple[float, float]]:
    return {t.id: (t.spool.deadletter_max_mb * MIB, t.spool.deadletter_retention_s) for t in settings.tenants}


def _make_data_dir(path: Path) -> None:
    created = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


class Agent:
    """The running agent: build from settings, ``start``, ``run``, ``stop``.

    Parameters
    ----------
    settings
        Validated configuration.
    bindings
        Collectors to use instead of building them from ``ingress.collect``
        (tests pass fakes): ``{scheduler name: Binding}`` with ``collector`` set.
    outputs
        Outputs to use instead of building them from ``settings.outputs``.
    scheduler_factory
        ``(settings, bindings, on_columns) -> scheduler`` with ``start()`` and
        ``stop(timeout)``; default :func:`make_scheduler`.
    spool_factory
        ``(settings) -> spool``; default opens :class:`ingress.spool.Spool`.
    delivery_factory
        ``(output) -> delivery`` with ``start()``, ``stop(timeout)``,
        ``notify(tenant)``; default one :class:`ingress.transport.delivery.Delivery`
        per output, with that output's retry and breaker settings.
    registry, rings, encode
        The buffer and the encoder (default: ``ingress.buffer``, ``wire.encode``).
    """

    def __init__(self, settings: Settings, *, bindings: Mapping[str, Binding] | None = None,
                 outputs: Sequence[Any] | None = None,
                 scheduler_factory: Callable[..., Any] | None = None,
                 spool_factory: Callable[[Settings], Any] | None = None,
                 delivery_factory: Callable[[Any], Any] | None = None,
                 registry: Any = None, rings: Any = None,
                 encode: Callable[..., bytes] | None = None) -> None:
        self.settings = settings
        self.tenants = TenantSet(settings.tenants)
        enabled = self.tenants.enabled
        n = max(1, len(enabled))  # the buffer wants at least one slot
        if registry is None or rings is None:
            from ingress.buffer import RingSet, SeriesRegistry
        if registry is None:
            caps = [t.settings.max_series for t in enabled] or [1]
            registry = SeriesRegistry(n, caps, names=[t.id for t in enabled] or ["-"])
        if rings is None:
            rings = RingSet(n, settings.agent.limits.ring_mb * MIB, settings.agent.limits.ring_policy)
        self.registry, self.rings = registry, rings
        if bindings is None:
            bindings = build_collectors(plan_collectors(enabled), settings, self._stats_provider)
        a = settings.agent
        self.pipeline = Pipeline(enabled, bindings, self.registry, self.rings, a.hostname,
                                 a.batch.max_samples, a.batch.max_bytes, encode)
        self._spool_factory = spool_factory or _open_spool
        self._delivery_factory = delivery_factory
        self._outputs_given = outputs
        self.outputs: list = []
        self.deliveries: list = []
        self.spool: Any = None
        # {tenant: reason} of tenants whose spool could not be opened: not collected, not sent,
        # their spool untouched, while every other tenant runs (readiness and metrics read it).
        self.held_tenants: dict[str, str] = {}
        self.scheduler: Any = None
        self._scheduler_factory = scheduler_factory or make_scheduler
        self._stop = threading.Event()
        self._started = False
        self._summary = all(o.type == "file" for o in settings.outputs)
        self.control: Any = None  # the control API (ingress.control), while started
        self._last_summary: dict[str, tuple[int, int]] = {}

    # -- self metrics ---------------------------------------------------------------------

    def _stats_provider(self, b: Binding) -> Callable[[], dict]:
        tenant_ids = tuple(t.id for t in b.tenants)
        return lambda: self.stats_for(tenant_ids)

    def stats_for(self, tenant_ids: Iterable[str]) -> dict:
        """Pipeline figures for the ``agent`` collector, limited to ``tenant_ids``.

        Ring fill and drops, series counts and refusals per tenant; the effective
        interval and last sample count of each collector serving those tenants.
        """
        wanted = set(tenant_ids)
        p = getattr(self, "pipeline", None)
        if p is None:  # called before construction finished
            return {}
        fill, dropped, count, refused = [], [], [], []
        for t in p.tenants:
            if t.id not in wanted:
                continue
            tags = {"tenant": t.id}
            cap = self.rings.capacity(t.index)
            fill.append((tags, self.rings.size(t.index) / cap if cap else 0.0))
            dropped.append((tags, float(self.rings.dropped(t.index))))
            count.append((tags, float(self.registry.count(t.index))))
            refused.append((tags, float(self.registry.refused(t.index))))
        out: dict[str, Any] = {"agent.ring.fill": fill, "agent.ring.dropped": dropped,
                               "agent.series.count": count, "agent.series.refused": refused}
        mine = [k for k, b in p.bindings.items() if wanted & {t.id for t in b.tenants}]
        intervals = getattr(self.scheduler, "effective_intervals", lambda: {})()
        out["agent.collector.interval"] = [({"collector": k}, float(intervals[k])) for k in mine if k in intervals]
        out["agent.collector.samples"] = [({"collector": k}, float(p.last_samples[k]))
                                          for k in mine if k in p.last_samples]
        return out

    # -- one cycle, nothing sent ----------------------------------------------------------

    def collect_once(self, now_ns: int | None = None) -> Iterator[tuple[str, str, dict, int, float]]:
        """One pass of every collector for every enabled tenant, as sample tuples.

        Yields ``(tenant, name, tags, ts, value)``; nothing is buffered, spooled or sent.
        """
        now = time.time_ns() if now_ns is None else now_ns
        for key, b in self.pipeline.bindings.items():
            cols = b.collector.collect(now)
            for d in self.pipeline.route(key, cols):
                t = d.tenant.index
                for sid, v in zip(d.series.tolist(), d.values.tolist()):
                    name, tags = self.registry.key(t, sid)
                    yield d.tenant.id, name, dict(tags), d.ts, v

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool, start outputs and delivery, then the collectors.

        Raises
        ------
        IngressError
            A credential cannot be resolved, an output is unusable, the spool is
            locked by another process, or every enabled tenant is held; what
            was started is stopped again.

        A tenant whose spool cannot be opened (its key file missing or wrong, a
        directory where its spool keeps a file, an unreadable directory) is
        *held*: it is not collected and not sent, its spool stays as it is,
        :attr:`held_tenants` names it with the reason, and an error line says
        so at start and every minute. The other tenants run.
        """
        s, a = self.settings, self.settings.agent
        try:
            for o in s.outputs:
                if o.type == "http":
                    self.tenants.check_credentials([t.id for t in self.tenants.enabled if o.serves(t.id)])
            _make_data_dir(a.data_dir)
            self.spool = self._spool_factory(s)
            self._hold(dict(getattr(self.spool, "held", None) or {}))
            checker = None
            if self._outputs_given is None:
                checker = self._tenant_checker()
                self.outputs = build_outputs(s, checker.credential)
            else:
                self.outputs = list(self._outputs_given)
            for o in self.outputs:
                try:
                    o.start()
                except IngressError as e:
                    raise IngressError(f"output {o.name!r} is not usable at start-up: {e}") from None
            make = self._delivery_factory or self._default_delivery(checker)
            for o in self.outputs:
                d = make(o)
                self.deliveries.append(d)
                d.start()
            from ingress.control import start as start_control

            self.control = start_control(self)  # health, readiness, metrics, tenant API
            self.scheduler = self._scheduler_factory(s, self.pipeline.bindings, self.pipeline.on_columns)
            self.scheduler.start()
        except BaseException:
            self._shutdown(timeout=0.0, flush=False)
            raise
        self._started = True
        _freeze_heap()
        log.info("started", tenants=[t.id for t in self.tenants.enabled],
                 collectors=sorted(self.pipeline.bindings), outputs=[o.name for o in self.outputs],
                 data_dir=str(a.data_dir), host=a.hostname, control=self.control.url)

    def _hold(self, held: Mapping[str, str]) -> None:
        """Leave the held tenants out of collection and delivery; refuse to run with none left."""
        self.held_tenants = dict(held)
        if not held:
            return
        enabled = [t.id for t in self.tenants.enabled]
        if enabled and all(t in held for t in enabled):
            raise IngressError("every tenant is held, nothing to run: " + "; ".join(
                f"tenant {t!r}: {held[t]}" for t in enabled))
        p = self.pipeline
        bindings = {}
        for k, b in p.bindings.items():
            keep = tuple(t for t in b.tenants if t.id not in held)
            if keep:
                bindings[k] = b if len(keep) == len(b.tenants) else replace(b, tenants=keep)
        p.bindings = bindings  # the scheduler is built from these after this point
        p._by_id = {tid: t for tid, t in p._by_id.items() if tid not in held}
        self._log_held()

    def _log_held(self) -> None:
        for tid, reason in self.held_tenants.items():
            log.every(("tenant held", tid), HELD_LOG_EVERY_S).error(
                "tenant held: not collected, not sent, its spool left as it is; fix the reason and restart",
                tenant=tid, reason=reason)

    def _tenant_checker(self) -> Any:
        from ingress.transport.validate import TenantChecker, TenantRule

        # Credentials are resolved by ingress.tenants at every use (a key file can
        # be rotated); the checker counts failures per tenant and category.
        return TenantChecker({t.id: TenantRule(enabled=t.enabled,
                                               credential=t.credential if t.has_credential else None)
                              for t in self.tenants})

    def _default_delivery(self, checker: Any) -> Callable[[Any], Any]:
        from ingress.transport.breaker import CircuitBreaker
        from ingress.transport.delivery import Delivery
        from ingress.transport.retry import Backoff

        if checker is None:
            checker = self._tenant_checker()
        by_name = {o.name: o for o in self.settings.outputs}

        def make(out: Any) -> Any:
            # One Delivery per output, so each output keeps its own retry and breaker settings.
            cfg = by_name.get(out.name)
            kw: dict[str, Any] = {}
            if cfg is not None:
                r, br = cfg.retry, cfg.breaker
                kw["backoff"] = lambda: Backoff(base_s=r.backoff_initial_s, cap_s=r.backoff_max_s)
                kw["breaker_factory"] = lambda: CircuitBreaker(br.failures, br.reset_s)
            tenants = [t.id for t in self.settings.tenants if out.serves(t.id) and t.id not in self.held_tenants]
            return Delivery(self.spool, [out], checker, tenants=tenants, data_dir=self.settings.agent.data_dir,
                            host=self.settings.agent.hostname, deadletter_limits=_deadletter_limits(self.settings), **kw)

        return make

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (signal handlers call this)."""
        self._stop.set()

    def run(self, duration: float | None = None) -> None:
        """Flush, evict and report until :meth:`request_stop` or ``duration`` seconds."""
        a = self.settings.agent
        end = None if duration is None else time.monotonic() + duration
        next_flush = time.monotonic() + a.batch.max_delay_s
        next_evict = time.monotonic() + EVICT_EVERY_S
        next_summary = time.monotonic() + a.interval_s
        wanted = self.pipeline.flush_wanted
        while not self._stop.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if now >= next_evict:
                self.pipeline.evict(time.time_ns())
                next_evict = now + EVICT_EVERY_S
            if wanted.is_set() or now >= next_flush:
                self.flush()
                next_flush = now + a.batch.max_delay_s
            if self.held_tenants:
                self._log_held()  # rate-limited: one line per tenant per minute
            statusline.tick(self)  # one status line a minute (control/statusline.py)
            if self._summary and now >= next_summary:
                self._log_summary()
                next_summary = now + a.interval_s
            wait = min(next_flush, end if end is not None else next_flush) - time.monotonic()
            # Wake for a full ring too: wait on whichever event comes first.
            if wanted.wait(timeout=max(0.0, min(wait, 0.25))):
                continue
        log.info("stopping", reason="duration elapsed" if end is not None and not self._stop.is_set()
                 else "signal")

    def flush(self) -> int:
        """Move everything buffered into the spool; returns batches written."""
        return self.pipeline.flush(self._spool_append)

    def _spool_append(self, t: Tenant, batch_id: bytes, payload: bytes, n: int, first_ts: int) -> None:
        st = self.pipeline.stats[t.id]
        try:
            self.spool.append(t.id, batch_id, payload, n, first_ts)
        except SpoolError as e:  # SpoolFull included: disk full, or the batch exceeds the quota
            st.spool_dropped += n
            log.every(("spool refused", t.id), 60.0).error(
                "spool refused a batch; its samples are dropped", tenant=t.id, samples=n, error=str(e))
            return
        st.spooled += n
        st.spooled_batches += 1
        for d in self.deliveries:
            d.notify(t.id)

    def _log_summary(self) -> None:
        # One line per interval while only file outputs run (`make run`): the
        # samples and batches since the last line, per tenant.
        samples, batches = {}, {}
        for tid, st in self.pipeline.stats.items():
            last = self._last_summary.get(tid, (0, 0))
            samples[tid] = st.collected - last[0]
            batches[tid] = st.spooled_batches - last[1]
            self._last_summary[tid] = (st.collected, st.spooled_batches)
        if any(samples.values()):
            log.info("collected", samples=samples, batches=batches,
                     series={t.id: self.registry.count(t.index) for t in self.tenants.enabled})

    def stop(self) -> None:
        """Graceful stop: collectors, then rings -> spool, then outputs within the timeout."""
        self._shutdown(timeout=self.settings.agent.shutdown_timeout_s, flush=True)

    def _draining(self) -> list[tuple[str, str]]:
        """(tenant, output) pairs with batches in the spool that their output can take now."""
        stats = getattr(self.spool, "stats", None)
        if stats is None:
            return []
        failing: set[tuple[str, str]] = set()
        for d in self.deliveries:
            failing |= getattr(d, "failing", set)()
        return [(t, o) for t, st in stats().items() for o, p in st.get("pending_by_output", {}).items()
                if p["batches"] and (t, o) not in failing]

    def _drain(self, deadline: float) -> None:
        """Let healthy outputs take what is spooled, until ``deadline``.

        A stop should not leave the last batches behind when an output could
        take them. Each (tenant, output) pair is judged alone: one tenant's
        failing backend gets no extra wait (its batches stay in the spool for
        the next start), and it does not cut short another tenant's drain.
        """
        while time.monotonic() < deadline and self._draining():
            time.sleep(0.05)

    def _shutdown(self, timeout: float, flush: bool) -> None:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.control is not None:
            steps.append(("control", self.control.stop))
        if self.scheduler is not None:
            steps.append(("collectors", lambda: self.scheduler.stop(timeout=max(left(), 1.0))))
        if flush and self.spool is not None:
            steps.append(("flush", self.flush))
            steps.append(("drain", lambda: self._drain(deadline)))
            steps.append(("status", lambda: statusline.final(self)))
        for d in self.deliveries:
            steps.append(("delivery", lambda d=d: d.stop(timeout=left())))
        for o in self.outputs:
            steps.append((f"output {o.name}", lambda o=o: (o.flush(left()), o.close())))
        if self.spool is not None:
            steps.append(("spool", self.spool.close))
        for what, step in steps:
            try:
                step()
            except Exception as e:  # keep going: later steps still protect data
                log.exception("stop step failed", step=what, error=str(e))
        self.scheduler, self.deliveries, self.outputs, self.spool = None, [], [], None
        self.control = None
        if self._started:
            self._started = False
            log.info("stopped", **{"samples": {k: v.collected for k, v in self.pipeline.stats.items()},
                                   "spooled": {k: v.spooled for k, v in self.pipeline.stats.items()}})
