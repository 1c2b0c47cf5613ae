"""Live reload: load the configuration again and switch a running agent to it (docs/operations.md).

Triggered by SIGHUP (``ingress run``) or ``POST /v1/reload`` (admin key); both
end up in :meth:`ingress.agent.Agent.reload`, on the agent's main thread (the
only thread that drains rings), which calls :func:`reload`.

1. **Load and check**, as start-up does: :func:`ingress.config.load` plus the
   checks ``check-config`` runs (every collector built with its options, the
   ``[control]`` table). Then :func:`diff` against the running settings. A key
   that only a restart can apply (``agent.data_dir``, ``[control]``, the spool's
   fsync, ...) refuses the reload. Any failure up to here leaves the agent
   exactly as it was: one error line, an audit line ``config.reload`` failed.
2. **Prepare** what can fail without touching what runs: credentials of the
   tenants that outputs needing one serve, the outputs added or changed (built
   and started), the collection side when it changed (tenant set, series
   registry, rings, collectors: instances whose name, options and tenants are
   unchanged are kept, so their counters and rates carry on).
3. **Switch** (cannot fail half-way; a failing step is logged and the next one runs):
   tenant checker rules; spool: tenants added are opened, policies and
   each tenant's outputs updated (after the delivery of a removed or changed
   output stopped, before the new one starts; the ack ledgers keep each
   output's position); collection: old scheduler stopped, its rings flushed into
   the spool, new scheduler started; delivery: running outputs learn their new
   (tenant) pairs; the new outputs' deliveries start.

A tenant removed from the configuration stops being collected at once. Its
spool stays open and keeps draining to the outputs that still serve it (an
output serving every tenant); if none does, its spool is an *orphan*:
:func:`sweep_orphans` purges it ``agent.spool.orphan_retention`` after it was
first found so (marker file ``spool/<tenant>/orphaned``), counting and auditing
what it held. A tenant directory left by an earlier run is found the same way.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ingress import assembly
from ingress.errors import ConfigError, IngressError
from ingress.logs import get_logger

if TYPE_CHECKING:
    from ingress.agent import Agent
    from ingress.config import Settings, TenantSettings

__all__ = ["ReloadError", "load_checked", "diff", "reload", "sweep_orphans", "LIVE_AGENT_KEYS",
           "ORPHAN_MARKER"]

log = get_logger("ingress.reload")
MIB = 1 << 20
ORPHAN_MARKER = "orphaned"

# [agent] keys a reload applies; every other [agent] or [control] key needs a restart.
LIVE_AGENT_KEYS = frozenset({
    "agent.hostname", "agent.interval", "agent.shutdown_timeout",
    "agent.limits.cpu_percent", "agent.limits.ring_mb", "agent.limits.ring_policy",
    "agent.collect.min_interval", "agent.collect.max_interval", "agent.collect.jitter",
    "agent.batch.max_samples", "agent.batch.max_bytes", "agent.batch.max_delay",
    "agent.spool.orphan_retention",
})
# [agent] keys the collection side is built from (a change rebuilds it).
_COLLECT_AGENT_KEYS = frozenset({
    "agent.hostname", "agent.interval", "agent.limits.cpu_percent", "agent.limits.ring_mb",
    "agent.limits.ring_policy", "agent.collect.min_interval", "agent.collect.max_interval",
    "agent.collect.jitter", "agent.batch.max_samples", "agent.batch.max_bytes",
})
# Tenant fields the collection side is built from; the others are credentials and spool policy.
_COLLECT_TENANT_FIELDS = ("enabled", "collectors", "include", "exclude", "interval_s", "tags",
                          "max_series", "collector_tables")


class ReloadError(IngressError):
    """A reload was refused; the running configuration is kept. ``str()`` is the one line."""


# --------------------------------------------------------------------------- load, check, diff

def load_checked(source: str) -> Settings:
    """The settings in ``source`` after the checks start-up and ``check-config`` make.

    Raises
    ------
    ConfigError
        ``FILE:LINE: key: message``, as ``ingress run`` and ``check-config`` say it.
    """
    from ingress import config
    from ingress.collect.plan import build_collectors, plan_collectors
    from ingress.control import validate as validate_control
    from ingress.tenants import TenantSet

    settings = config.default_settings() if source == config.DEFAULT_SOURCE else config.load(source)
    build_collectors(plan_collectors(TenantSet(settings.tenants).enabled), settings)
    validate_control(settings)
    return settings


def _key_name(prefix: str, field: str) -> str:
    return f"{prefix}.{field[:-2] if field.endswith('_s') else field}"


def _changed_keys(prefix: str, old: Any, new: Any) -> list[str]:
    """Dotted config keys whose values differ between two settings dataclasses."""
    out: list[str] = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name, None)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += _changed_keys(f"{prefix}.{f.name}", a, b)
        elif a != b:
            out.append(_key_name(prefix, f.name))
    return out


def _tenant_fields(old: TenantSettings, new: TenantSettings) -> list[str]:
    out = []
    for f in dataclasses.fields(old):
        if getattr(old, f.name) != getattr(new, f.name):
            out.append(f.name[:-2] if f.name.endswith("_s") else f.name)
    return out


def diff(old: Settings, new: Settings) -> dict:
    """What a switch from ``old`` to ``new`` changes, as a JSON-able summary::

        {"tenants": {"added": [...], "removed": [...], "changed": {id: [fields]}},
         "outputs": {"added": [...], "removed": [...], "changed": {name: [fields]}},
         "agent": [keys applied live], "restart_needed": [keys only a restart applies],
         "collection": bool (the collection side is rebuilt)}
    """
    ot, nt = {t.id: t for t in old.tenants}, {t.id: t for t in new.tenants}
    oo, no = {o.name: o for o in old.outputs}, {o.name: o for o in new.outputs}
    changed_t = {tid: _tenant_fields(ot[tid], nt[tid]) for tid in nt if tid in ot and ot[tid] != nt[tid]}
    changed_o = {}
    for name in no:
        if name in oo and oo[name] != no[name]:
            changed_o[name] = [f.name for f in dataclasses.fields(oo[name])
                               if getattr(oo[name], f.name) != getattr(no[name], f.name)]
    agent_keys = _changed_keys("agent", old.agent, new.agent)
    control_keys = _changed_keys("control", old.control, new.control)
    restart = sorted(k for k in agent_keys if k not in LIVE_AGENT_KEYS) + sorted(control_keys)
    live = sorted(k for k in agent_keys if k in LIVE_AGENT_KEYS)
    old_enabled = [t for t in old.tenants if t.enabled]
    new_enabled = [t for t in new.tenants if t.enabled]
    collection = (any(k in _COLLECT_AGENT_KEYS for k in live)
                  or [t.id for t in old_enabled] != [t.id for t in new_enabled]
                  or any(getattr(a, f) != getattr(b, f) for a, b in zip(old_enabled, new_enabled)
                         for f in _COLLECT_TENANT_FIELDS))
    return {
        "tenants": {"added": [t for t in nt if t not in ot], "removed": [t for t in ot if t not in nt],
                    "changed": changed_t},
        "outputs": {"added": [o for o in no if o not in oo], "removed": [o for o in oo if o not in no],
                    "changed": changed_o},
        "agent": live,
        "restart_needed": restart,
        "collection": collection,
    }


def unchanged(changes: Mapping) -> bool:
    t, o = changes["tenants"], changes["outputs"]
    return not (t["added"] or t["removed"] or t["changed"] or o["added"] or o["removed"] or o["changed"]
                or changes["agent"])


# --------------------------------------------------------------------------- the switch

def _policy(t: TenantSettings) -> Any:
    from ingress.spool import TenantPolicy

    return TenantPolicy(max_bytes=t.spool.max_mb * MIB, retention_s=t.spool.retention_s, encrypt=t.spool.encrypt)


def _build_outputs(settings: Settings, names: set[str], credential: Any) -> list:
    """The outputs of ``settings`` named in ``names``, built by their plugins (not started);
    what :func:`ingress.outputs.plugin.build_outputs` does for all of them."""
    from ingress.config import locate
    from ingress.outputs import OUTPUTS
    from ingress.outputs.plugin import BuildContext

    with_credential = {t.id for t in settings.tenants if t.api_key_env is not None or t.api_key_file is not None}
    outs = []
    for i, o in enumerate(settings.outputs):
        if o.name not in names:
            continue
        ctx = BuildContext(settings.agent.data_dir, credential, lambda k, i=i: locate(settings, ("outputs", i, k)),
                           lambda tid: tid in with_credential)
        outs.append(OUTPUTS[o.type].build(o, ctx))
    return outs


def _only_tenants_differ(a: Any, b: Any) -> bool:
    return dataclasses.replace(a, tenants=b.tenants) == b


class _Collection:
    """The collection side built for new settings, not yet running."""

    def __init__(self, agent: Agent, new: Settings) -> None:
        from ingress.buffer import RingSet, SeriesRegistry
        from ingress.collect.plan import build_collectors, plan_collectors
        from ingress.pipeline import Pipeline
        from ingress.tenants import TenantSet

        tenants = TenantSet(new.tenants)
        enabled = tenants.enabled
        n = max(1, len(enabled))
        self.tenants = tenants
        self.registry = SeriesRegistry(n, [t.settings.max_series for t in enabled] or [1],
                                       names=[t.id for t in enabled] or ["-"])
        self.rings = RingSet(n, new.agent.limits.ring_mb * MIB, new.agent.limits.ring_policy)
        plan = plan_collectors(enabled)
        old = agent.pipeline.bindings
        fresh = {}
        self.kept: list[str] = []
        for k, b in plan.items():
            ob = old.get(k)
            if (ob is not None and ob.name == b.name and ob.options == b.options
                    and [t.id for t in ob.tenants] == [t.id for t in b.tenants] and b.name != "agent"):
                b.collector = ob.collector  # same instance: its series table, counters and rates carry on
                self.kept.append(k)
            else:
                fresh[k] = b
        build_collectors(fresh, new, agent._stats_provider)
        a = new.agent
        self.pipeline = Pipeline(enabled, plan, self.registry, self.rings, a.hostname, a.batch.max_samples,
                                 a.batch.max_bytes, None)


def reload(agent: Agent, actor: str = "agent", remote: str | None = None, trigger: str = "SIGHUP") -> dict:
    """Load the configuration again and switch ``agent`` to it; returns :func:`diff`'s summary
    plus ``pause_ms`` (collection paused by the switch, 0 when not rebuilt).

    Raises
    ------
    ReloadError
        The file is invalid, needs a restart for a key it changes, or an output
        or credential it needs is unusable; the running configuration is kept,
        one error line is logged and ``config.reload`` failed audited.
    """
    source = str(agent.settings.source)
    try:
        new = load_checked(source)
        containment = getattr(agent, "containment", None)
        if containment is not None:  # the cgroup's tighter limits apply to the new file as at start
            new = containment.effective(new)
        changes = diff(agent.settings, new)
        if changes["restart_needed"]:
            keys = ", ".join(changes["restart_needed"])
            raise ReloadError(f"{source}: {keys}: only a restart applies a change to "
                              f"{'this key' if len(changes['restart_needed']) == 1 else 'these keys'}")
        result = _switch(agent, new, changes)
    except (ConfigError, IngressError) as e:
        msg = _one_line(str(e))
        log.error(f"reload refused, the running configuration is kept: {msg}", source=source, trigger=trigger)
        _audit("failed", actor, remote, source=source, trigger=trigger, reason=msg)
        raise ReloadError(msg) from None
    summary = {k: result[k] for k in ("tenants", "outputs", "agent", "collection", "pause_ms")}
    log.info("configuration reloaded", source=source, trigger=trigger, **_log_summary(result))
    _audit("ok", actor, remote, source=source, trigger=trigger, changes=summary)
    return result


def _one_line(text: str) -> str:
    return "; ".join(x.strip() for x in text.splitlines() if x.strip()) or "invalid configuration"


def _log_summary(r: Mapping) -> dict:
    t, o = r["tenants"], r["outputs"]
    out = {k: v for k, v in (("tenants_added", t["added"]), ("tenants_removed", t["removed"]),
                             ("tenants_changed", t["changed"]), ("outputs_added", o["added"]),
                             ("outputs_removed", o["removed"]), ("outputs_changed", o["changed"]),
                             ("agent", r["agent"])) if v}
    if r["collection"]:
        out["pause_ms"] = r["pause_ms"]
    return out or {"changes": "none"}


def _audit(outcome: str, actor: str, remote: str | None, **fields: Any) -> None:
    try:
        from ingress.security import audit

        if remote is not None:
            fields["remote"] = remote
        audit.record("config.reload", outcome, actor=actor, **fields)
    except Exception:  # noqa: BLE001 - auditing must not break the reload
        log.exception("audit record failed", action="config.reload")


def _served(settings: Settings, tid: str) -> list[str]:
    return [o.name for o in settings.outputs if o.serves(tid)]


def _switch(agent: Agent, new: Settings, changes: dict) -> dict:
    from ingress.outputs import OUTPUTS
    from ingress.tenants import TenantSet

    old = agent.settings
    if agent.held_tenants and any(t in {x.id for x in new.tenants} for t in agent.held_tenants):
        changes["collection"] = True  # a held tenant is tried again; if it opens, it is collected
    result = dict(changes, pause_ms=0.0)
    if unchanged(changes) and not changes["collection"]:
        return result
    new_tenants = TenantSet(new.tenants)
    # ---- prepare: nothing running is touched until every step here passed
    for o in new.outputs:
        if OUTPUTS[o.type].needs_credential:
            new_tenants.check_credentials([t.id for t in new_tenants.enabled if o.serves(t.id)])
    coll = _Collection(agent, new) if changes["collection"] else None
    oc = changes["outputs"]
    tenants_only = {n for n in oc["changed"] if _only_tenants_differ(_by_name(old, n), _by_name(new, n))}
    restart_outs = set(oc["added"]) | (set(oc["changed"]) - tenants_only)
    checker = agent.checker if agent.checker is not None else assembly.tenant_checker(agent)
    started: list = []
    if agent._outputs_given is None and restart_outs:
        built = _build_outputs(new, restart_outs, checker.credential)
        try:
            for o in built:
                try:
                    o.start()
                except IngressError as e:
                    raise IngressError(f"output {o.name!r} is not usable: {e}") from None
                started.append(o)
        except BaseException:
            for o in started:
                _quietly(o.close)
            raise
    # ---- switch
    removed = set(changes["tenants"]["removed"])
    draining = dict(agent.draining)
    for tid in removed:
        draining[tid] = agent.settings.tenant(tid)
    for tid in list(draining):
        if tid in new_tenants:
            draining.pop(tid)  # configured again
    for tid in list(draining):
        if not _served(new, tid):
            draining.pop(tid)  # no output left for it: an orphan from now on
    checker.update(_rules(new_tenants, draining))
    dl_limits = {t.id: (t.spool.deadletter_max_mb * MIB, t.spool.deadletter_retention_s) for t in new.tenants}
    from ingress.outputs import deadletter as dlmod

    dlmod.shared_area(new.agent.data_dir, dl_limits, None)
    # Deliveries of outputs removed or rebuilt: drain what is in flight, then stop.
    timeout = new.agent.shutdown_timeout_s
    keep_d, keep_o = [], []
    gone = set(oc["removed"]) | (set(oc["changed"]) - tenants_only)
    for d, o in zip(list(agent.deliveries), list(agent.outputs)) if len(agent.deliveries) == len(agent.outputs) \
            else [(d, None) for d in agent.deliveries]:
        name = _delivery_name(d, o)
        if name in gone and agent._outputs_given is None:
            _quietly(lambda: d.stop(timeout=timeout))
            if o is not None:
                _quietly(lambda: (o.flush(timeout), o.close()))
        else:
            keep_d.append(d)
            if o is not None:
                keep_o.append(o)
    # The spool: tenants added are opened, policies and outputs follow the new settings.
    spool = agent.spool
    held = dict(agent.held_tenants)
    for t in new.tenants:
        outs = _served(new, t.id)
        if t.id not in spool.tenants:
            try:
                reason = spool.add_tenant(t.id, _policy(t), outs)
            except (IngressError, OSError, ValueError) as e:  # held, like a tenant open cannot load
                reason = _one_line(str(e))
                log.error(f"tenant {t.id!r} is held: {reason}", tenant=t.id)
            if reason is not None:
                held[t.id] = reason
            else:
                held.pop(t.id, None)
        else:
            _quietly(lambda: spool.set_policy(t.id, _policy(t)))
            _quietly(lambda: spool.set_outputs(t.id, outs))
        _clear_orphan(spool, t.id)
    for tid in removed | set(agent.draining):
        if tid in new_tenants or tid not in spool.tenants:
            continue
        outs = _served(new, tid) if tid in draining else []
        _quietly(lambda: spool.set_outputs(tid, outs))
        if not outs:
            _mark_orphan(spool, tid)
            log.warning("tenant removed: no output serves it any more; its spool is kept for "
                        f"agent.spool.orphan_retention ({new.agent.spool.orphan_retention_s:g} s), then purged",
                        tenant=tid)
    for tid in list(held):
        if tid not in new_tenants:
            held.pop(tid)
    # Collection: stop the old side, flush it into the spool, start the new one.
    if coll is not None:
        if held:
            coll.pipeline.leave_out(held)
        t0 = time.perf_counter()
        if agent.scheduler is not None:
            agent.scheduler.stop(timeout=max(timeout, 1.0))
        agent.flush()  # the old rings into the spool: every accepted sample is kept
        kept = {id(b.collector) for b in coll.pipeline.bindings.values()}
        for b in agent.pipeline.bindings.values():
            if id(b.collector) not in kept and hasattr(b.collector, "close"):
                _quietly(b.collector.close)
        old_stats = agent.pipeline.stats
        for tid, st in old_stats.items():
            # Cumulative counters carry on; a removed tenant's stay, so the `stopped` line
            # still accounts for what it collected in this run.
            coll.pipeline.stats[tid] = st
        agent.pipeline, agent.registry, agent.rings = coll.pipeline, coll.registry, coll.rings
        agent.tenants = coll.tenants
        agent.settings = new
        agent.held_tenants = held
        agent.scheduler = agent._scheduler_factory(new, agent.pipeline.bindings, agent.pipeline.on_columns)
        agent.scheduler.start()
        result["pause_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        result["collectors_kept"] = coll.kept
    else:
        agent.tenants = new_tenants
        agent.settings = new
        agent.held_tenants = held
    # Delivery: running outputs learn their pairs; new outputs start delivering.
    agent.draining = draining
    deliver_for = [t.id for t in new.tenants if t.id not in held] + list(draining)
    by_name = {o.name: o for o in new.outputs}
    for d, o in zip(keep_d, keep_o) if len(keep_d) == len(keep_o) else []:
        if o.name in tenants_only:
            cfg = by_name[o.name]
            o.tenants = None if cfg.tenants is None else frozenset(cfg.tenants)
        if hasattr(d, "host"):
            d.host = new.agent.hostname
        set_tenants = getattr(d, "set_tenants", None)
        if set_tenants is not None:
            _quietly(lambda: set_tenants(deliver_for, timeout=timeout))
    agent.deliveries, agent.outputs = keep_d, keep_o
    if started:
        make = (assembly.delivery_factory(agent, checker) if agent._delivery_factory is None
                else agent._delivery_factory)
        for o in started:
            d = make(o)
            agent.outputs.append(o)
            agent.deliveries.append(d)
            d.start()
    agent._summary = all(OUTPUTS[o.type].local for o in new.outputs)
    return result


def _by_name(s: Settings, name: str) -> Any:
    return next(o for o in s.outputs if o.name == name)


def _delivery_name(d: Any, o: Any) -> str | None:
    if o is not None:
        return o.name
    outs = getattr(d, "outputs", None) or []
    return outs[0].name if outs else None


def _rules(tenants: Any, draining: Mapping[str, TenantSettings]) -> dict:
    from ingress.tenants import Tenant
    from ingress.outputs.validate import TenantRule

    rules = {t.id: TenantRule(enabled=t.enabled, credential=t.credential if t.has_credential else None)
             for t in tenants}
    for tid, ts in draining.items():
        t = Tenant.from_settings(ts, None)
        rules[tid] = TenantRule(enabled=True, credential=t.credential if t.has_credential else None)
    return rules


def _quietly(step: Any) -> None:
    try:
        step()
    except Exception as e:  # noqa: BLE001 - a switch step failing must not stop the others
        log.exception("reload step failed", error=str(e))


# --------------------------------------------------------------------------- orphans

def _marker(spool: Any, tid: str) -> Path:
    return Path(spool.dir) / tid / ORPHAN_MARKER


def _mark_orphan(spool: Any, tid: str, now: float | None = None) -> float:
    """When ``tid``'s spool became an orphan (written now when not yet marked)."""
    p = _marker(spool, tid)
    try:
        return float(p.read_text().strip())
    except (OSError, ValueError):
        pass
    t = time.time() if now is None else now
    try:
        from ingress._fs import write_atomic

        write_atomic(p, f"{t:.3f}\n".encode())
    except Exception as e:  # noqa: BLE001 - without a marker the clock restarts at the next start
        log.warning(f"{p}: cannot write the orphan marker: {e}", tenant=tid)
    return t


def _clear_orphan(spool: Any, tid: str) -> None:
    try:
        os.unlink(_marker(spool, tid))
    except OSError:
        pass


def sweep_orphans(agent: Agent, now: float | None = None) -> dict[str, tuple[int, int]]:
    """Purge the spools of tenants neither configured nor drained to any output, once
    ``agent.spool.orphan_retention`` has passed since they were first found so.

    Returns ``{tenant: (batches, samples)}`` purged; each is logged, audited
    (``tenant.orphan_purged``) and added to ``agent.orphans_purged``.
    """
    from ingress.names import is_tenant_id
    from ingress.spool import TenantPolicy

    spool = agent.spool
    if spool is None or not hasattr(spool, "drop_tenant"):
        return {}
    now = time.time() if now is None else now
    keep = {t.id for t in agent.settings.tenants} | set(agent.draining)
    retention = agent.settings.agent.spool.orphan_retention_s
    purged: dict[str, tuple[int, int]] = {}
    try:
        names = sorted(os.listdir(spool.dir))
    except OSError:
        return {}
    for tid in names:
        if tid in keep or not is_tenant_id(tid) or not (Path(spool.dir) / tid).is_dir():
            continue
        since = _mark_orphan(spool, tid, now)
        if now - since < retention:
            continue
        try:
            if tid not in spool.tenants:  # left by an earlier run: open it to count what it holds
                spool.add_tenant(tid, TenantPolicy(), ())
            batches, samples = spool.drop_tenant(tid)
        except Exception as e:  # noqa: BLE001 - tried again at the next sweep
            log.error(f"orphaned spool of tenant {tid!r} not purged: {e}", tenant=tid)
            continue
        purged[tid] = (batches, samples)
        b0, s0 = agent.orphans_purged.get(tid, (0, 0))
        agent.orphans_purged[tid] = (b0 + batches, s0 + samples)
        log.warning(f"orphaned spool purged after agent.spool.orphan_retention ({retention:g} s): no output "
                    "took it", tenant=tid, dropped_batches=batches, dropped_samples=samples)
        try:
            from ingress.security import audit

            audit.record("tenant.orphan_purged", "dropped", actor="agent", tenant=tid, batches=batches,
                         samples=samples, orphan_since=since, retention_s=retention)
        except Exception:  # noqa: BLE001
            log.exception("audit record failed", action="tenant.orphan_purged")
    return purged
