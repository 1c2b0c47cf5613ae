"""The agent's lifecycle: build the stages from :class:`~ingress.config.Settings`, then
start, run, stop and drain them.

Stages (docs/architecture.md draws them; :mod:`ingress.stages` types each boundary)::

    collectors --Columns--> FanOut --per tenant--> RingSet --drain--> Encoder --> Spool
       (scheduler threads)    (one lock)              (flush, main thread)          |
                                                                                 Delivery
                                                                          (thread per tenant x output)
                                                                                    |
                                                                                 outputs

Which collectors run for which tenants is :mod:`ingress.collect.plan`; the
batcher is :class:`ingress.pipeline.Pipeline`; outputs are built by their
plugins (:func:`ingress.transport.plugin.build_outputs`).

Start downstream first, stop upstream first: ``start`` opens the spool, starts
the outputs and the delivery loops, then the collectors, so the first sample
already has somewhere to go. ``stop`` stops the collectors, flushes every ring
into the spool (every accepted sample is persisted), then gives the outputs
``agent.shutdown_timeout`` to acknowledge what is in flight, closes them and
closes the spool. Whatever is not acknowledged is sent again on the next start.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ingress.collect.plan import Binding, build_collectors, collector_options, make_scheduler, plan_collectors
from ingress.config import Settings
from ingress.control import statusline
from ingress.errors import IngressError, SpoolError
from ingress.logs import get_logger
from ingress.pipeline import Pipeline, TenantStats, sample_json
from ingress.stages import (DeliveryStage, Encoder, OutputStage, Registry, Rings, SchedulerStage,
                            SpoolStage)
from ingress.tenants import Tenant, TenantSet
from ingress.transport.plugin import build_outputs

# The old homes of what moved out (kept for importers): plan_collectors & co., Pipeline, sample_json.
__all__ = ["Agent", "Pipeline", "TenantStats", "Binding", "plan_collectors", "build_collectors",
           "build_outputs", "collector_options", "sample_json", "make_scheduler"]

MIB = 1 << 20
EVICT_EVERY_S = 60.0
HELD_LOG_EVERY_S = 60.0
log = get_logger("ingress.agent")


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
    registry, rings, encoder
        The buffer and the encoder (default: ``ingress.buffer``, :class:`ingress.wire.Encoder`).
    """

    def __init__(self, settings: Settings, *, bindings: Mapping[str, Binding] | None = None,
                 outputs: Sequence[OutputStage] | None = None,
                 scheduler_factory: Callable[..., SchedulerStage] | None = None,
                 spool_factory: Callable[[Settings], SpoolStage] | None = None,
                 delivery_factory: Callable[[OutputStage], DeliveryStage] | None = None,
                 registry: Registry | None = None, rings: Rings | None = None,
                 encoder: Encoder | None = None) -> None:
        self.settings = settings
        from ingress.collect.base import set_roots

        set_roots(settings.agent.procfs, settings.agent.sysfs)  # agent.procfs / agent.sysfs
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
        self.registry: Registry = registry
        self.rings: Rings = rings
        if bindings is None:
            bindings = build_collectors(plan_collectors(enabled), settings, self._stats_provider)
        a = settings.agent
        self.pipeline = Pipeline(enabled, bindings, self.registry, self.rings, a.hostname,
                                 a.batch.max_samples, a.batch.max_bytes, encoder)
        self._spool_factory = spool_factory or _open_spool
        self._delivery_factory = delivery_factory
        self._outputs_given = outputs
        self.outputs: list[OutputStage] = []
        self.deliveries: list[DeliveryStage] = []
        self.spool: SpoolStage | None = None
        # {tenant: reason} of tenants whose spool could not be opened: not collected, not sent,
        # their spool untouched, while every other tenant runs (readiness and metrics read it).
        self.held_tenants: dict[str, str] = {}
        self.scheduler: SchedulerStage | None = None
        self._scheduler_factory = scheduler_factory or make_scheduler
        self._stop = threading.Event()
        self._started = False
        self._summary = False  # only local outputs: a summary line per interval (set at start)
        self.control: Any = None  # the control API (ingress.control), while started
        self._last_summary: dict[str, tuple[int, int]] = {}
        from ingress.containment import Containment

        # cgroup limits, the memory guard, systemd notify (ingress.containment)
        self.containment = Containment(self)
        # Live reload (ingress.reload): requests queued by SIGHUP or POST /v1/reload, run by `run`.
        self._checker: Any = None  # the tenant checker every Delivery shares
        self._reloads: deque[_ReloadTicket] = deque()
        self.draining: dict[str, Any] = {}  # removed tenants still drained: {id: their last TenantSettings}
        self.orphans_purged: dict[str, tuple[int, int]] = {}  # {tenant: (batches, samples)} purged

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
        return self.pipeline.collect_once(time.time_ns() if now_ns is None else now_ns)

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
        from ingress.transport import OUTPUTS

        self.settings = self.containment.adopt(self.settings)  # tighter cgroup limits win
        s, a = self.settings, self.settings.agent
        try:
            plugins = [OUTPUTS[o.type] for o in s.outputs]
            self._summary = all(p.local for p in plugins)
            for o, plugin in zip(s.outputs, plugins):
                if plugin.needs_credential:
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
                 data_dir=str(a.data_dir), host=a.hostname, control=self.control.url,
                 limits=self.containment.limits_note,
                 destinations=list(a.allow_destinations) if a.allow_destinations else "any",
                 **({"hardening": self.containment.hardening} if self.containment.hardening else {}))
        self.containment.started()  # READY=1 to systemd

    def _hold(self, held: Mapping[str, str]) -> None:
        """Leave the held tenants out of collection and delivery; refuse to run with none left."""
        self.held_tenants = dict(held)
        if not held:
            return
        enabled = [t.id for t in self.tenants.enabled]
        if enabled and all(t in held for t in enabled):
            raise IngressError("every tenant is held, nothing to run: " + "; ".join(
                f"tenant {t!r}: {held[t]}" for t in enabled))
        self.pipeline.leave_out(held)  # before the scheduler is built from its bindings
        self._log_held()

    def _log_held(self) -> None:
        for tid, reason in self.held_tenants.items():
            log.every(("tenant held", tid), HELD_LOG_EVERY_S).error(
                "tenant held: not collected, not sent, its spool left as it is; fix the reason and restart "
                "or reload",
                tenant=tid, reason=reason)

    def _tenant_checker(self) -> Any:
        from ingress.transport.validate import TenantChecker, TenantRule

        # Credentials are resolved by ingress.tenants at every use (a key file can
        # be rotated); the checker counts failures per tenant and category.
        self._checker = TenantChecker({t.id: TenantRule(enabled=t.enabled,
                                                        credential=t.credential if t.has_credential else None)
                                       for t in self.tenants})
        return self._checker

    def _default_delivery(self, checker: Any) -> Callable[[OutputStage], DeliveryStage]:
        from ingress.transport.breaker import CircuitBreaker
        from ingress.transport.delivery import Delivery
        from ingress.transport.retry import Backoff

        if checker is None:
            checker = self._tenant_checker()
        by_name = {o.name: o for o in self.settings.outputs}

        def make(out: OutputStage) -> DeliveryStage:
            # One Delivery per output, so each output keeps its own retry and breaker settings.
            cfg = by_name.get(out.name)
            kw: dict[str, Any] = {}
            if cfg is not None:
                r, br = cfg.retry, cfg.breaker
                kw["backoff"] = lambda: Backoff(base_s=r.backoff_initial_s, cap_s=r.backoff_max_s)
                kw["breaker_factory"] = lambda: CircuitBreaker(br.failures, br.reset_s)
            tenants = [t.id for t in self.settings.tenants if out.serves(t.id) and t.id not in self.held_tenants]
            return Delivery(self.spool, [out], checker, tenants=tenants, data_dir=self.settings.agent.data_dir,
                            host=self.settings.agent.hostname, deadletter_limits=_deadletter_limits(self.settings),
                            **kw)

        return make

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (signal handlers call this)."""
        self._stop.set()

    # -- live reload (the switching itself is ingress.reload) --------------------------------

    def request_reload(self, actor: str = "agent", remote: str | None = None,
                       trigger: str = "SIGHUP") -> _ReloadTicket:
        """Queue a reload for :meth:`run`'s thread (safe in a signal handler); wait on the ticket."""
        ticket = _ReloadTicket(actor, remote, trigger)
        self._reloads.append(ticket)
        return ticket

    def reload(self, actor: str = "agent", remote: str | None = None, trigger: str = "SIGHUP") -> dict:
        """Load the configuration file again and switch to it (see :func:`ingress.reload.reload`).

        Call from the thread that runs :meth:`run` (or before it runs). Raises
        :class:`ingress.reload.ReloadError` with one line when the running
        configuration is kept.
        """
        from ingress import reload as reload_mod

        return reload_mod.reload(self, actor=actor, remote=remote, trigger=trigger)

    def _checker_for_reload(self) -> Any:
        return self._checker if self._checker is not None else self._tenant_checker()

    def _run_reloads(self) -> None:
        while self._reloads:
            ticket = self._reloads.popleft()
            try:
                ticket.result = self.reload(ticket.actor, ticket.remote, ticket.trigger)
            except IngressError as e:
                ticket.error = str(e)
            except Exception as e:  # noqa: BLE001 - a bug in the switch must not end the agent
                log.exception("reload failed", error=str(e))
                ticket.error = f"internal error: {e}"
            finally:
                ticket.done.set()

    def run(self, duration: float | None = None) -> None:
        """Flush, evict and report until :meth:`request_stop` or ``duration`` seconds."""
        a = self.settings.agent
        end = None if duration is None else time.monotonic() + duration
        next_flush = time.monotonic() + a.batch.max_delay_s
        next_evict = time.monotonic() + EVICT_EVERY_S
        next_summary = time.monotonic() + a.interval_s
        next_second = time.monotonic()
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            if self._reloads:
                self._run_reloads()
                a = self.settings.agent
            wanted = self.pipeline.flush_wanted  # a reload may have swapped the pipeline
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + max(1.0, min(EVICT_EVERY_S, a.spool.orphan_retention_s / 4))
                self._sweep_orphans()
            if end is not None and now >= end:
                break
            if now >= next_second:
                self.containment.every_second()  # memory guard, systemd watchdog
                next_second = now + 1.0
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
        for ticket in list(self._reloads):  # asked for while stopping: answered, not run
            ticket.error = "the agent is stopping"
            ticket.done.set()
        self._reloads.clear()

    def _sweep_orphans(self) -> None:
        try:
            from ingress.reload import sweep_orphans

            sweep_orphans(self)
        except Exception as e:  # noqa: BLE001 - tried again at the next sweep
            log.exception("orphan sweep failed", error=str(e))

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
        # One line per interval while only local outputs run (`make run`).
        self.pipeline.log_summary(self._last_summary)

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
        pairs = self._draining()
        if pairs and time.monotonic() < deadline:
            log.info("draining", pairs=[f"{t}/{o}" for t, o in pairs],
                     timeout_s=round(deadline - time.monotonic(), 3))
        while time.monotonic() < deadline and self._draining():
            time.sleep(0.05)

    def _shutdown(self, timeout: float, flush: bool) -> None:
        deadline = time.monotonic() + timeout
        if self._started:
            self.containment.stopping()  # STOPPING=1 to systemd

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


class _ReloadTicket:
    """One queued reload: who asked, then its result (a change summary) or its one-line error."""

    def __init__(self, actor: str, remote: str | None, trigger: str) -> None:
        self.actor, self.remote, self.trigger = actor, remote, trigger
        self.done = threading.Event()
        self.result: dict | None = None
        self.error: str | None = None
