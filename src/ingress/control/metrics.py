"""``/metrics``: the agent's own figures in the Prometheus text format.

One collector reads, at scrape time, counters the
agent already keeps (pipeline, rings, registry, spool, delivery, scheduler,
control API, audit log); no hot path is instrumented. Names follow Prometheus
conventions: ``ingress_`` prefix, ``_total`` on counters, base units
(seconds, bytes, ratios). Labels are ``tenant``, ``output`` and ``collector``,
whose values come from the configuration, plus a few fixed enumerations
(``reason``, ``state``, ``category``, ``code``, ``generation``): never values
taken from the data. docs/control-api.md lists every family.

The families and the text encoder come from :mod:`ingress.control.exposition`,
which has ``prometheus_client.metrics_core``'s API for the four family types
used here and writes byte-for-byte what ``prometheus_client`` writes, without
importing it (8 MB of RSS; docs/benchmarks.md). The test suite renders the same
collector through ``prometheus_client`` and compares.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, Iterator

from ingress import __version__
from ingress.control.status import AgentView, rss_bytes

__all__ = ["AgentCollector", "make_renderer", "ControlCounters"]

BREAKER_STATES = ("closed", "open", "half_open")
C, G, H = "counter", "gauge", "histogram"

#: Per-tenant families, in exposition order: (key, type, name, help, labels after ``tenant``).
TENANT_FAMILIES = (
    ("collected", C, "ingress_samples_collected", "Samples collected into the tenant's ring", ()),
    ("spooled", C, "ingress_samples_spooled", "Samples written to the tenant's spool", ()),
    ("batches_spooled", C, "ingress_batches_spooled", "Batches written to the tenant's spool", ()),
    ("dropped", C, "ingress_samples_dropped", "Samples dropped, by reason", ("reason",)),
    ("series_refused", C, "ingress_series_refused", "Series refused past the tenant's cardinality cap", ()),
    ("series", G, "ingress_series", "Series the tenant has registered", ()),
    ("ring_fill", G, "ingress_ring_fill_ratio", "Share (0..1) of the tenant's ring in use", ()),
    ("ring_dropped", C, "ingress_ring_dropped_samples", "Samples the tenant's full ring dropped", ()),
    ("spool_bytes", G, "ingress_spool_bytes", "Bytes in the tenant's spool", ()),
    ("spool_quota", G, "ingress_spool_quota_bytes", "The tenant's spool quota", ()),
    ("spool_segments", G, "ingress_spool_segments", "Segment files in the tenant's spool", ()),
    ("spool_oldest_age_s", G, "ingress_spool_oldest_pending_age_seconds",
     "Age of the oldest sample not yet delivered everywhere", ()),
    ("spool_samples_pending", G, "ingress_spool_pending_samples", "Samples not yet delivered by every output", ()),
    ("spool_dropped_batches", C, "ingress_spool_dropped_batches",
     "Batches the spool dropped by quota or retention", ()),
    ("spool_corrupt_records", C, "ingress_spool_corrupt_records", "Damaged spool records found since open", ()),
    ("held", G, "ingress_tenant_held", "1 while the tenant is held (not collected or sent)", ()),
    ("deadletters_count", G, "ingress_deadletters", "Dead letters of the tenant on disk", ()),
    ("deadletters_bytes", G, "ingress_deadletter_bytes", "Bytes of the tenant's dead letters on disk", ()),
    ("deadletters_dropped", C, "ingress_deadletters_dropped",
     "Dead letters removed by the tenant's dead-letter cap or age limit", ()),
)
#: Keys of the spool's stats and the ring/registry figures read into the families of the same key.
SPOOL_KEYS = ("bytes", "segments", "oldest_age_s", "samples_pending", "dropped_batches", "corrupt_records")
RING_KEYS = ("series_refused", "series", "ring_fill", "ring_dropped")

#: Per (tenant, output) families, in exposition order: labels after ``tenant``, ``output``.
PAIR_FAMILIES = (
    ("sent_samples", C, "ingress_samples_sent", "Samples the output acknowledged", ()),
    ("sent_batches", C, "ingress_batches_sent", "Batches the output acknowledged", ()),
    ("retries", C, "ingress_batches_retried", "Retryable failures, each followed by a retry", ()),
    ("failures", C, "ingress_delivery_failures", "Failed delivery attempts", ()),
    ("dead_letters", C, "ingress_batches_dead_lettered", "Batches set aside as dead letters", ()),
    ("in_flight", G, "ingress_batches_in_flight", "Batches submitted and not yet answered", ()),
    ("tenant_check_failures", C, "ingress_tenant_check_failures",
     "Batches held back by a tenant check, by category", ("category",)),
    ("breaker", G, "ingress_breaker_state", "1 for the breaker's current state", ("state",)),
    ("breaker_opened", C, "ingress_breaker_opened", "Times the breaker opened", ()),
    ("held", G, "ingress_output_held", "1 while the pair is held by a failed tenant check", ()),
    ("latency", G, "ingress_delivery_latency_seconds",
     "Batch close to acknowledgement, quantile over the last 1024 batches", ("quantile",)),
    ("send_latency", H, "ingress_send_latency_seconds", "Submit to the output's answer, per acknowledged batch",
     ()),
    ("credential_refusals", C, "ingress_credential_refusals",
     "Answers 401/403: the backend refused the credential", ()),
    ("credential_refused", G, "ingress_output_credential_refused",
     "1 while the pair is held because the backend refuses the credential", ()),
)
#: Keys of a pair's delivery stats read as they are into the families of the same key.
PAIR_KEYS = ("sent_samples", "sent_batches", "retries", "failures", "dead_letters", "in_flight")

#: Per-collector families (label ``collector``); keys name the scheduler's figures.
COLLECTOR_FAMILIES = (
    ("effective_intervals", G, "ingress_collector_interval_seconds",
     "The collector's effective interval after any stretching", ()),
    ("passes", C, "ingress_collector_passes", "Passes dispatched", ()),
    ("errors", C, "ingress_collector_errors", "Passes whose collection raised", ()),
    ("overruns", C, "ingress_collector_overruns", "Passes skipped: the previous one still ran", ()),
    ("last_samples", G, "ingress_collector_last_pass_samples", "Samples the collector's last pass produced", ()),
    ("pass_seconds", C, "ingress_collector_pass_seconds",
     "Time spent in the collector's passes (collection and fan-out)", ()),
    ("last_pass_seconds", G, "ingress_collector_last_pass_seconds", "Duration of the collector's last pass", ()),
)


class ControlCounters:
    """The control server's own counters (requests by status, rejected connections)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: dict[int, int] = {}
        self.rejected: dict[str, int] = {}

    def response(self, _req: Any, status: int) -> None:
        with self._lock:
            self.responses[status] = self.responses.get(status, 0) + 1

    def event(self, kind: str) -> None:
        with self._lock:
            self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def snapshot(self) -> tuple[dict[int, int], dict[str, int]]:
        with self._lock:
            return dict(self.responses), dict(self.rejected)


def _proc_stat() -> tuple[float, int, float]:
    """(CPU seconds user+system, threads, start time since boot in seconds)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick, int(fields[17]), int(fields[19]) / tick
    except (OSError, ValueError, IndexError):
        t = os.times()
        return t.user + t.system, threading.active_count(), 0.0


def _open_fds() -> int:
    try:
        n = os.stat("/proc/self/fd").st_size  # Linux 6.2+: the count, one stat
        return n if n > 0 else len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0.0


class AgentCollector:
    """A collector over an :class:`AgentView` (see the module doc).

    ``mc`` provides ``CounterMetricFamily``, ``GaugeMetricFamily`` and
    ``InfoMetricFamily``: :mod:`ingress.control.exposition`, or
    ``prometheus_client.metrics_core`` (the tests' reference).
    """

    def __init__(self, view: AgentView, mc: Any, control: ControlCounters | None = None,
                 auth: Any = None, audit: Any = None) -> None:
        self.view = view
        self.mc = mc
        self.control = control
        self.auth = auth
        self.audit = audit
        self._btime = _boot_time()

    def _c(self, name: str, doc: str, labels: list[str]) -> Any:
        return self.mc.CounterMetricFamily(name, doc, labels=labels)

    def _g(self, name: str, doc: str, labels: list[str]) -> Any:
        return self.mc.GaugeMetricFamily(name, doc, labels=labels)

    def _families(self, table: tuple, labels: list[str]) -> dict[str, Any]:
        """``{key: family}`` for the rows of ``table``, in the table's (exposition) order."""
        kinds = {C: self.mc.CounterMetricFamily, G: self.mc.GaugeMetricFamily, H: self.mc.HistogramMetricFamily}
        return {key: kinds[kind](name, doc, labels=labels + list(extra)) for key, kind, name, doc, extra in table}

    def collect(self) -> Iterator[Any]:
        v = self.view
        a = v.agent
        tenants = v.tenant_ids()
        stats = a.pipeline.stats
        delivery = v.delivery_stats()
        spool = v.spool_stats()
        rings = v.ring_and_series()

        f = self._families(TENANT_FAMILIES, ["tenant"])
        for t in tenants:
            st = stats.get(t)
            if st is not None:
                for key, n in (("collected", st.collected), ("spooled", st.spooled),
                               ("batches_spooled", st.spooled_batches)):
                    f[key].add_metric([t], n)
                f["dropped"].add_metric([t, "ring_full"], st.ring_dropped)
                f["dropped"].add_metric([t, "spool_refused"], st.spool_dropped)
            s = spool.get(t)
            if s is not None:
                f["dropped"].add_metric([t, "spool_quota_or_retention"], s.get("dropped_samples", 0))
                for key in SPOOL_KEYS:
                    f["spool_" + key].add_metric([t], s.get(key, 0.0 if key == "oldest_age_s" else 0))
            ts = v.tenant_settings.get(t)
            if ts is not None:
                f["spool_quota"].add_metric([t], ts.spool.max_mb * (1 << 20))
            r = rings.get(t)
            if r is not None:
                for key in RING_KEYS:
                    f[key].add_metric([t], r[key])
            f["held"].add_metric([t], 1.0 if t in v.held() else 0.0)
            area = v.deadletter_usage(t)
            for key in ("count", "bytes", "dropped"):
                f["deadletters_" + key].add_metric([t], area[key])
        yield from f.values()

        f = self._families(PAIR_FAMILIES, ["tenant", "output"])
        for t in tenants:
            for o, st in sorted(delivery.get(t, {}).items()):
                lv = [t, o]
                for key in PAIR_KEYS:
                    f[key].add_metric(lv, st.get(key, 0))
                for cat, n in sorted((st.get("tenant_check_failures") or {}).items()):
                    f["tenant_check_failures"].add_metric(lv + [cat], n)
                b = st.get("breaker") or {}
                for state in BREAKER_STATES:
                    f["breaker"].add_metric(lv + [state], 1.0 if b.get("state", "closed") == state else 0.0)
                f["breaker_opened"].add_metric(lv, b.get("times_opened", 0))
                f["held"].add_metric(lv, 1.0 if st.get("blocked") else 0.0)
                for q, key in (("0.5", "latency_p50_s"), ("0.99", "latency_p99_s")):
                    if st.get(key) is not None:
                        f["latency"].add_metric(lv + [q], st[key])
                h = st.get("send_latency")
                if h:
                    acc, buckets = 0, []
                    for le, n in zip(tuple(h["bounds"]) + (float("inf"),), h["counts"]):
                        acc += n
                        buckets.append((_le(le), acc))
                    f["send_latency"].add_metric(lv, buckets, h["sum_s"])
                f["credential_refusals"].add_metric(lv, st.get("credential_refusals", 0))
                f["credential_refused"].add_metric(lv, 1.0 if st.get("state") == "credential_refused" else 0.0)
        yield from f.values()

        sched = getattr(a, "scheduler", None)
        f = self._families(COLLECTOR_FAMILIES, ["collector"])
        names = list(a.pipeline.bindings)
        for key in ("effective_intervals", "passes", "errors", "overruns", "pass_seconds", "last_pass_seconds"):
            got = getattr(sched, key, None)
            vals = got() if callable(got) else {}
            for k in names:
                if k in vals:
                    f[key].add_metric([k], vals[k])
        for k in names:
            if k in a.pipeline.last_samples:
                f["last_samples"].add_metric([k], a.pipeline.last_samples[k])
        yield from f.values()

        cpu, threads, start = _proc_stat()
        yield self._single_c("ingress_process_cpu_seconds", "CPU time (user + system) the agent used", cpu)
        yield self._single_g("ingress_process_resident_memory_bytes", "The agent's resident memory", rss_bytes())
        yield self._single_g("ingress_process_memory_limit_bytes", "agent.limits.memory_mb",
                             v.settings.agent.limits.memory_mb * (1 << 20))
        shed_of = getattr(v, "memory_shedding", None)
        shed = shed_of() if shed_of is not None else {"level": 0, "engaged": {}}
        yield self._single_g("ingress_memory_shed_level", "Memory guard steps engaged now (0: none)", shed["level"])
        steps = self._c("ingress_memory_shed_steps", "Times each memory guard step was engaged, by step",
                        ["reason"])
        for k, n in shed["engaged"].items():
            steps.add_metric([k], n)
        yield steps
        probation = self._c("ingress_memory_probation", "Steps released on probation (the RSS held flat under "
                            "the step's share), by outcome", ["outcome"])
        probation.add_metric(["released"], shed.get("released_probation", 0))
        probation.add_metric(["failed"], shed.get("failed_probation", 0))
        yield probation
        reg = getattr(v.agent, "registry", None)
        yield self._single_c("ingress_series_refused_memory", "New series refused while memory was near its cap",
                             getattr(reg, "refused_memory", 0))
        yield self._single_c("ingress_series_evicted_memory", "Idle series evicted early while memory was near "
                             "its cap", getattr(reg, "evicted_memory", 0))
        paused = getattr(getattr(v.agent, "scheduler", None), "paused_passes", 0)
        yield self._single_c("ingress_collector_paused_passes", "Collector passes skipped while memory was near "
                             "its cap", paused)
        yield self._single_g("ingress_process_open_fds", "The agent's open file descriptors", _open_fds())
        yield self._single_g("ingress_process_threads", "The agent's threads", threads)
        yield self._single_g("ingress_process_start_time_seconds", "Start time, seconds since the epoch",
                             self._btime + start if self._btime else v.started_at)
        from ingress.buffer.gcstats import gc_pause_stats

        gcs = gc_pause_stats()
        gc_n = self._c("ingress_gc_collections", "Cyclic garbage collections, by generation", ["generation"])
        gc_s = self._c("ingress_gc_pause_seconds", "Time spent in cyclic garbage collections", ["generation"])
        gc_max = self._g("ingress_gc_pause_max_seconds", "Longest garbage collection pause", ["generation"])
        for g, d in sorted(gcs.items()):
            gc_n.add_metric([str(g)], d["count"])
            gc_s.add_metric([str(g)], d["total_s"])
            gc_max.add_metric([str(g)], d["max_s"])
        yield from (gc_n, gc_s, gc_max)
        info = self.mc.InfoMetricFamily("ingress_build", "Version of the running agent",
                                        value={"version": __version__,
                                               "python": ".".join(map(str, sys.version_info[:3]))})
        yield info
        reasons = v.readiness()
        yield self._single_g("ingress_ready", "1 when /readyz answers 200", 0.0 if reasons else 1.0)
        rr = self._g("ingress_not_ready_reasons", "Reasons /readyz gives, by kind", ["reason"])
        kinds: dict[str, int] = {}
        for r in reasons:
            kinds[r["reason"]] = kinds.get(r["reason"], 0) + 1
        for k, n in sorted(kinds.items()):
            rr.add_metric([k], n)
        yield rr

        if self.control is not None:
            resp, rej = self.control.snapshot()
            req = self._c("ingress_control_responses", "Control API responses, by status code", ["code"])
            for code, n in sorted(resp.items()):
                req.add_metric([str(code)], n)
            rc = self._c("ingress_control_rejected", "Control API connections or requests refused, by reason",
                         ["reason"])
            for kind, n in sorted(rej.items()):
                rc.add_metric([kind], n)
            yield from (req, rc)
        if self.auth is not None:
            au = self._c("ingress_control_auth", "Control API authentication outcomes", ["outcome"])
            for k, n in sorted(self.auth.counts.items()):
                au.add_metric([k], n)
            yield au
            se = self._c("ingress_security_events", "Security events raised, by kind", ["kind"])
            se.add_metric(["auth_rate_limited"], self.auth.security_events)
            yield se
        if self.audit is not None:
            yield self._single_c("ingress_audit_lines", "Lines written to the audit log", self.audit.lines)
            yield self._single_c("ingress_audit_write_errors", "Audit lines that could not be written",
                                 self.audit.errors)

    def _single_c(self, name: str, doc: str, value: float) -> Any:
        return self.mc.CounterMetricFamily(name, doc, value=value)

    def _single_g(self, name: str, doc: str, value: float) -> Any:
        return self.mc.GaugeMetricFamily(name, doc, value=value)


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes ``le`` (``"0.005"``, ``"1.0"``, ``"+Inf"``)."""
    from ingress.control.exposition import go_float

    return go_float(float(bound))


def make_renderer(view: AgentView, control: ControlCounters | None = None, auth: Any = None,
                  audit: Any = None) -> Callable[[], tuple[bytes, str]]:
    """``render() -> (body, content type)``: the Prometheus text format of :class:`AgentCollector`.

    Written by :mod:`ingress.control.exposition` (byte-identical to
    ``prometheus_client.generate_latest``, without its 8 MB of imports).
    """
    from ingress.control import exposition

    collector = AgentCollector(view, exposition, control, auth, audit)
    lock = threading.Lock()

    def render() -> tuple[bytes, str]:
        with lock:  # one scrape at a time: a scrape is cheap, concurrent ones add nothing
            return exposition.render(collector.collect()), exposition.CONTENT_TYPE

    return render
