"""The agent-wide configuration tables, declared once: every section and every key.

:data:`SECTIONS` and :data:`OPTIONS` are the tables of the file that belong to
no plugin (``[agent]``, ``[control]``, ``[[tenants]]``, the keys every
``[[outputs]]`` takes, ...), each key an :class:`~ingress.options.Option` row
with its type, default and help. :func:`all_tables` adds the rows the plugins
declare next to their code (each collector's ``[tenants.<collector>]``, each
output type's keys), gathered from ``ingress.collect.COLLECTORS`` and
``ingress.outputs.OUTPUTS``. :mod:`ingress.config` parses and checks a file
against these rows and generates docs/configuration.md's reference from them.
"""
from __future__ import annotations

import re
from typing import Any

from ingress import names
from ingress.options import (COMPUTED, REQUIRED, Bool, Duration, Enum, Float, Fsync, Hostname, HostPort, Int,
                             Kind, Option, PathKind, Section, Str, StrList, StrMap, _Bad)

# Unanchored, applied as full matches only (ingress.names): "acme\n" is not a tenant id.
TENANT_ID_RE = names.TENANT_ID_RE
OUTPUT_NAME_RE = names.OUTPUT_NAME_RE
TAG_KEY_RE = names.TAG_KEY_RE
_ABS_PATH_RE = re.compile(r"/[^\x00]*")
MIB = 1024 * 1024


class _OutputType(Kind):
    """The ``type`` of an output: a name registered in ``ingress.outputs.OUTPUTS``."""

    @property
    def doc(self) -> str:  # type: ignore[override]
        return Enum(*_outputs().names()).doc

    def convert(self, v: Any) -> str:
        return Enum(*_outputs().names()).convert(v)


class _Destination(Str):
    """One ``agent.allow_destinations`` entry: ``host:port`` pattern or CIDR (:mod:`ingress.destinations`)."""

    def __init__(self) -> None:
        super().__init__(doc="host:port pattern or CIDR")

    def convert(self, v: Any) -> str:
        from ingress import destinations

        s = super().convert(v)
        problem = destinations.pattern_problem(s)
        if problem:
            raise _Bad(problem)
        return s


def _outputs():
    from ingress.outputs import OUTPUTS

    return OUTPUTS


def _collectors():
    from ingress.collect import COLLECTORS

    return COLLECTORS


SECTIONS: tuple[Section, ...] = (
    Section("agent", False, "The agent process itself."),
    Section("agent.limits", False, "The agent's own resource budget."),
    Section("agent.collect", False, "How the collection scheduler may space collections."),
    Section("agent.spool", False, "The on-disk spool shared by every tenant."),
    Section("agent.batch", False, "When samples leave the in-memory rings as an encoded batch."),
    Section("control", False, "The control API: health, readiness, metrics, tenant status."),
    Section("tenants", True, "One table per tenant. A tenant's samples never mix with another's."),
    Section("tenants.spool", False, "This tenant's share of the spool."),
    Section("outputs", True,
            "Where batches go: the keys every output takes. Each output type adds its own keys, "
            "listed after these."),
    Section("outputs.retry", False, "How a failed delivery is retried."),
    Section("outputs.breaker", False,
            "The circuit breaker: after `failures` consecutive failures the output is "
            "left alone for `reset`, then probed with one batch."),
)


_SECTION = {s.name: s for s in SECTIONS}

OPTIONS: tuple[Option, ...] = (
    # [agent]
    Option("agent", "data_dir", PathKind(), "./ingress-data",
           "Directory for the spool, keys and audit log; created with mode 0700. "
           "Relative paths are relative to the working directory."),
    Option("agent", "hostname", Hostname(), COMPUTED,
           "The `host` written into every batch: 1 to 255 bytes of UTF-8, no control characters.",
           default_doc="the system's host name"),
    Option("agent", "interval", Duration(positive=True), "10s",
           "Default collection interval of every tenant."),
    Option("agent", "shutdown_timeout", Duration(), "10s",
           "How long a graceful stop may wait for outputs to acknowledge in-flight "
           "batches; what is not acknowledged stays in the spool."),
    Option("agent", "allow_destinations", StrList(_Destination(), doc="list of host:port patterns and CIDRs"), [],
           "Where outputs (Kafka brokers, the host:port of an HTTP-style `url`) and health checks "
           "(`url`, `tcp`) may connect: `HOST:PORT` patterns (HOST an fnmatch glob such as `*.corp`, "
           "PORT a number or `*`) and CIDRs (matching IP literals, any port). Any other destination is "
           "refused when the configuration is loaded (start, reload, `check-config`). "
           "Empty: any destination."),
    Option("agent", "log_format", Enum("json", "logfmt"), "json",
           "Format of the agent's own log lines on stderr."),
    Option("agent", "log_level", Enum("debug", "info", "warning", "error"), "info",
           "Least severe level that is logged."),
    Option("agent", "log_file", PathKind(), None,
           "Write the agent's own log to this file instead of stderr, rotated by size "
           "(`FILE.1` ... `FILE.<log_keep>`). Default: stderr (journald keeps it under systemd)."),
    Option("agent", "log_max_mb", Int(1, 1024), 10, "Size at which `log_file` is rotated, MiB."),
    Option("agent", "log_keep", Int(0, 100), 5, "Rotated log files kept besides `log_file`."),
    Option("agent", "user", Str(doc="user name or uid"), None,
           "After the spool, the control port and the outputs are open, `ingress run` switches to "
           "this user (needs to start as root). See docs/security.md for what reading other users' "
           "processes then needs."),
    Option("agent", "group", Str(doc="group name or gid"), None,
           "The group to switch to with `user` (default: that user's primary group)."),
    Option("agent", "procfs", Str(_ABS_PATH_RE, "absolute path", doc="path"), "/proc",
           "Where the host's /proc is: in a container, the host's /proc mounted read-only "
           "(e.g. `/host/proc`, with the host PID namespace)."),
    Option("agent", "sysfs", Str(_ABS_PATH_RE, "absolute path", doc="path"), "/sys",
           "Where the host's /sys is: in a container, e.g. `/host/sys`."),
    # [agent.limits]
    Option("agent.limits", "memory_mb", Int(16), 256,
           "The agent's own RSS cap, MiB. Nearing it the agent sheds load in steps (docs/operations.md); "
           "a tighter cgroup v2 `memory.max` is adopted instead."),
    Option("agent.limits", "cpu_percent", Float(0.0, 100.0 * 1024, above=True), 5.0,
           "The agent's own CPU budget, percent of one core; the scheduler stretches "
           "intervals to stay under it. A tighter cgroup v2 `cpu.max` quota is adopted instead."),
    Option("agent.limits", "disk_write_mb_s", Float(0.0, above=True), 20.0,
           "Spool write throttle, MiB/s."),
    Option("agent.limits", "ring_mb", Int(1), 32,
           "Memory for the per-tenant sample rings, MiB, shared out between enabled tenants."),
    Option("agent.limits", "ring_policy", Enum("drop_oldest", "drop_newest"), "drop_oldest",
           "What a full ring gives up: its oldest samples (default: fresh data wins) or "
           "the samples being pushed; either way the drops are counted per tenant."),
    # [agent.collect]
    Option("agent.collect", "min_interval", Duration(positive=True), "1s",
           "Shortest collection interval a tenant may ask for."),
    Option("agent.collect", "max_interval", Duration(positive=True), "5m",
           "Longest interval: a tenant may not ask for more, and the scheduler never "
           "stretches an interval past it under CPU pressure."),
    Option("agent.collect", "jitter", Float(0.0, 0.5), 0.1,
           "Random offset of each pass, as a fraction of its interval (0 to 0.5), so "
           "agents started together do not read /proc in step."),
    # [agent.spool]
    Option("agent.spool", "fsync", Fsync(), "batch",
           "`\"batch\"`: every batch is fsynced before it counts as accepted; a duration: "
           "fsync at most that often (faster, loses up to that much on power loss)."),
    Option("agent.spool", "segment_mb", Int(1, 1024), 8, "Size at which a spool segment file is closed, MiB."),
    Option("agent.spool", "orphan_retention", Duration(positive=True), "168h",
           "How long the spool of a tenant removed from the configuration is kept for outputs "
           "that no longer exist for it; then it is purged (counted, audited)."),
    # [agent.batch]
    Option("agent.batch", "max_samples", Int(1, 10_000_000), 50000, "Most samples in one batch."),
    Option("agent.batch", "max_bytes", Int(1024), MIB,
           "Most bytes in one encoded batch; a larger one is split.",
           default_doc="`1048576` (1 MiB)"),
    Option("agent.batch", "max_delay", Duration(positive=True), "1s",
           "Longest a sample waits in its ring before it is batched and spooled."),
    # [control]
    Option("control", "listen", HostPort(), "127.0.0.1:8787",
           "Address of the control API (health, readiness, metrics, tenant status); "
           "port 0 picks a free port. A non-loopback address needs `tls_cert`."),
    Option("control", "allow", StrList(Str(), doc="list of CIDRs"), ["127.0.0.0/8", "::1/128"],
           "Client networks that may connect; anyone else is disconnected unanswered."),
    Option("control", "tls_cert", PathKind(), None,
           "Serve the control API over HTTPS with this certificate (PEM); required when "
           "`listen` is not a loopback address.", default_doc="none"),
    Option("control", "tls_key", PathKind(), None, "Private key of `tls_cert`.",
           default_doc="in `tls_cert`"),
    Option("control", "audit_max_mb", Int(1, 1024), 10,
           "`<data_dir>/audit.log` is rotated past this size, MiB."),
    Option("control", "audit_keep", Int(0, 100), 5, "Rotated audit logs kept (`audit.log.1` ...)."),
    # [[tenants]]
    Option("tenants", "id", Str(TENANT_ID_RE, "tenant id", doc="tenant id"), REQUIRED,
           f"The tenant's id, `{names.text(TENANT_ID_RE)}` (the whole value); appears unchanged in topics, "
           "headers, paths and logs."),
    Option("tenants", "enabled", Bool(), True,
           "A disabled tenant is neither collected nor sent; what it already spooled stays "
           "in the spool until it is enabled again."),
    Option("tenants", "collectors", StrList(Str(), nonempty=True), ["cpu", "memory"],
           "Collectors this tenant receives samples of, by name: any collector docs/collectors.md "
           "lists (`agent`: the agent's own figures, this tenant's only). A collector's options are "
           "set in the tenant's table named after it, such as `[tenants.disk]` (below)."),
    Option("tenants", "include", StrList(Str(), doc="list of globs"), ["*"],
           "Metric-name globs; a sample is kept when its name matches one."),
    Option("tenants", "exclude", StrList(Str(), doc="list of globs"), [],
           "Metric-name globs; a matching sample is dropped even when included."),
    Option("tenants", "interval", Duration(positive=True), COMPUTED,
           "This tenant's collection interval.", default_doc="`agent.interval`"),
    Option("tenants", "tags", StrMap(TAG_KEY_RE), {},
           "Tags added to every sample of this tenant; a tag the collector sets itself "
           "keeps the collector's value."),
    Option("tenants", "api_key_env", Str(names.ENV_VAR_RE, "environment variable name"), None,
           "Environment variable holding the credential sent to HTTP outputs.",
           default_doc="none"),
    Option("tenants", "api_key_file", PathKind(), None,
           "File holding the credential sent to HTTP outputs (read at every use, "
           "so it can be rotated). At most one of `api_key_env` and `api_key_file`.",
           default_doc="none"),
    Option("tenants", "max_series", Int(1, 10_000_000), 10000,
           "Cardinality cap: series past it are refused and counted."),
    # [tenants.spool]
    Option("tenants.spool", "max_mb", Int(1), 256,
           "Spool quota, MiB: past it the tenant's oldest data goes first."),
    Option("tenants.spool", "retention", Duration(positive=True), "24h",
           "Spooled data older than this is dropped (and counted)."),
    Option("tenants.spool", "encrypt", Bool(), False, "Encrypt this tenant's spool at rest."),
    Option("tenants.spool", "deadletter_max_mb", Int(1), 64,
           "Cap of the tenant's dead letters on disk, MiB: past it the oldest are removed (counted, audited)."),
    Option("tenants.spool", "deadletter_retention", Duration(positive=True), "168h",
           "Dead letters older than this are removed (counted, audited)."),
    # [[outputs]]
    Option("outputs", "type", _OutputType(), REQUIRED, "The output type."),
    Option("outputs", "name", Str(OUTPUT_NAME_RE, "output name"), COMPUTED,
           "Unique name: in logs, metrics and the spool's delivery cursors.",
           default_doc='`"<type>-<index>"`, e.g. `"kafka-0"`'),
    Option("outputs", "tenants", StrList(Str(TENANT_ID_RE, "tenant id"), doc="list of tenant ids",
                                         nonempty=True),
           None, "Tenants this output serves.", default_doc="every tenant"),
    Option("outputs", "format", Enum("batch", "json"), "batch",
           "`\"batch\"`: the binary batch (`ingress-batch/1`); `\"json\"`: one JSON object "
           "per sample (`ingress-json/1`)."),
    # [outputs.retry]
    Option("outputs.retry", "backoff_initial", Duration(positive=True), "500ms",
           "First wait after a retryable failure; doubled (with jitter) on each further one."),
    Option("outputs.retry", "backoff_max", Duration(positive=True), "60s",
           "Longest wait between retries; a server's `Retry-After` may ask for more."),
    # [outputs.breaker]
    Option("outputs.breaker", "failures", Int(1), 5, "Consecutive failures that open the breaker."),
    Option("outputs.breaker", "reset", Duration(positive=True), "30s",
           "How long an open breaker waits before one probe."),
)


_OUTPUT_COMMON = frozenset({"type", "name", "tenants", "format", "retry", "breaker"})


def _options(section: str) -> list[Option]:
    return [o for o in OPTIONS if o.section == section]


def _children(section: str | None) -> list[Section]:
    def parent(name: str) -> str | None:
        return name.rpartition(".")[0] or None
    return [s for s in SECTIONS if parent(s.name) == section]


def _collector_table(name: str) -> tuple[Section, tuple[Option, ...]] | None:
    """Collector ``name``'s tenant table and rows (imports its module), or None without options."""
    decl = _collectors()[name].table()
    if decl is not None and decl[0].name != f"tenants.{name}":
        raise ValueError(f"collector {name!r}: its table must be tenants.{name}, not {decl[0].name}")
    return decl


def all_tables() -> list[tuple[Section, tuple[Option, ...], str | None]]:
    """Every table with its rows and, for an output type's own keys, that type.

    Agent-wide tables in order, each collector's table after the tenant's own,
    each output type's keys after the keys every output takes. Imports every plugin.
    """
    out: list[tuple[Section, tuple[Option, ...], str | None]] = []
    for sec in SECTIONS:
        if sec.name == "outputs":
            for name in _collectors():
                decl = _collector_table(name)
                if decl is not None:
                    out.append((decl[0], decl[1], None))
        out.append((sec, tuple(_options(sec.name)), None))
    outputs = _outputs()
    for name in outputs:
        out.append((_SECTION["outputs"], outputs[name].options, name))
    return out
