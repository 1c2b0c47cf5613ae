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
plugins (:func:`ingress.outputs.plugin.build_outputs`).

Start downstream first, stop upstream first: ``start`` opens the spool, starts
the outputs and the delivery loops, then the collectors, so the first sample
already has somewhere to go. ``stop`` stops the collectors, flushes every ring
into the spool (every accepted sample is persisted), then gives the outputs
``agent.shutdown_timeout`` to acknowledge what is in flight, closes them and
closes the spool. Whatever is not acknowledged is sent again on the next start.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ingress import assembly, held, selfstats
from ingress.collect.plan import Binding, build_collectors, make_scheduler, plan_collectors
from ingress.control import statusline
from ingress.errors import SpoolError
from ingress.logs import get_logger
from ingress.pipeline import Pipeline
from ingress.reloadqueue import ReloadQueue, ReloadTicket
from ingress.settings import Settings
from ingress.stages import DeliveryStage, Encoder, OutputStage, Registry, Rings, SchedulerStage, SpoolStage
from ingress.tenants import Tenant, TenantSet

EVICT_EVERY_S = 60.0
log = get_logger("ingress.agent")


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
        ``notify(tenant)``; default one :class:`ingress.outputs.delivery.Delivery`
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
        self.registry: Registry = assembly.make_registry(enabled) if registry is None else registry
        self.rings: Rings = assembly.make_rings(settings, enabled) if rings is None else rings
        if bindings is None:
            bindings = build_collectors(plan_collectors(enabled), settings, self._stats_provider)
        a = settings.agent
        self.pipeline = Pipeline(enabled, bindings, self.registry, self.rings, a.hostname,
                                 a.batch.max_samples, a.batch.max_bytes, encoder)
        self._spool_factory = spool_factory or assembly.open_spool
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
        self.checker: Any = None  # the tenant checker every Delivery shares (ingress.assembly)
        self._reloads = ReloadQueue()
        self.draining: dict[str, Any] = {}  # removed tenants still drained: {id: their last TenantSettings}
        self.orphans_purged: dict[str, tuple[int, int]] = {}  # {tenant: (batches, samples)} purged

    # -- self metrics ---------------------------------------------------------------------

    def _stats_provider(self, b: Binding) -> Callable[[], dict]:
        return selfstats.provider(self, b)

    def stats_for(self, tenant_ids: Iterable[str]) -> dict:
        """Pipeline figures for the ``agent`` collector, limited to ``tenant_ids`` (:mod:`ingress.selfstats`)."""
        return selfstats.stats_for(self, tenant_ids)

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
        self.settings = self.containment.adopt(self.settings)  # tighter cgroup limits win
        s, a = self.settings, self.settings.agent
        try:
            self._summary = assembly.check_credentials(self)
            assembly.make_data_dir(a.data_dir)
            self.spool = self._spool_factory(s)
            held.hold(self, dict(getattr(self.spool, "held", None) or {}))
            assembly.start_outputs(self)
            from ingress.control import start as start_control

            self.control = start_control(self)  # health, readiness, metrics, tenant API
            self.scheduler = self._scheduler_factory(s, self.pipeline.bindings, self.pipeline.on_columns)
            self.scheduler.start()
        except BaseException:
            self._shutdown(timeout=0.0, flush=False)
            raise
        self._started = True
        assembly.freeze_heap()
        log.info("started", tenants=[t.id for t in self.tenants.enabled],
                 collectors=sorted(self.pipeline.bindings), outputs=[o.name for o in self.outputs],
                 data_dir=str(a.data_dir), host=a.hostname, control=self.control.url,
                 limits=self.containment.limits_note,
                 destinations=list(a.allow_destinations) if a.allow_destinations else "any",
                 **({"hardening": self.containment.hardening} if self.containment.hardening else {}))
        self.containment.started()  # READY=1 to systemd

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (signal handlers call this)."""
        self._stop.set()

    # -- live reload (the switching itself is ingress.reload) --------------------------------

    def request_reload(self, actor: str = "agent", remote: str | None = None,
                       trigger: str = "SIGHUP") -> ReloadTicket:
        """Queue a reload for :meth:`run`'s thread (safe in a signal handler); wait on the ticket."""
        return self._reloads.request(actor, remote, trigger)

    def reload(self, actor: str = "agent", remote: str | None = None, trigger: str = "SIGHUP") -> dict:
        """Load the configuration file again and switch to it (see :func:`ingress.reload.reload`).

        Call from the thread that runs :meth:`run` (or before it runs). Raises
        :class:`ingress.reload.ReloadError` with one line when the running
        configuration is kept.
        """
        from ingress import reload as reload_mod

        return reload_mod.reload(self, actor=actor, remote=remote, trigger=trigger)

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
                self._reloads.run(self.reload)
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
                held.log_held(self.held_tenants)  # rate-limited: one line per tenant per minute
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
        self._reloads.refuse_all("the agent is stopping")  # asked for while stopping: answered, not run

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
