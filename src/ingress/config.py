"""TOML configuration -> frozen, typed settings.

Every key is declared once, in :data:`OPTIONS`, with its type, default and help
text (fluent-bit's ``config_map`` habit). The parser, the defaults and
docs/configuration.md all come from that table; a test checks the page against
it. Unknown keys are errors. Every error is a :class:`~ingress.errors.ConfigError`
whose message reads ``FILE:LINE: path: message``; :mod:`tomllib` reports no line
numbers for values, so :class:`Locator` finds them by scanning the source text.

Durations are strings with a unit (``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``,
or sums such as ``"1m30s"``); bare numbers are refused, so ``interval = 10``
cannot silently mean ten milliseconds in one reader's head and ten seconds in
another's.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import socket
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from ingress import names
from ingress.errors import ConfigError
from ingress.logs import register_secret

__all__ = [
    "Settings", "AgentSettings", "Limits", "CollectSettings", "AgentSpoolSettings",
    "BatchSettings", "ControlSettings", "TenantSettings", "ProcessesSettings",
    "HealthCheck", "TenantSpoolSettings", "OutputSettings", "RetrySettings",
    "BreakerSettings", "OPTIONS", "SECTIONS", "TENANT_ID_RE", "KNOWN_COLLECTORS",
    "load", "loads", "default_settings", "parse_duration", "reference_markdown",
    "Locator", "locate",
]

# Unanchored, applied as full matches only (ingress.names): "acme\n" is not a tenant id.
TENANT_ID_RE = names.TENANT_ID_RE
OUTPUT_NAME_RE = names.OUTPUT_NAME_RE
CHECK_NAME_RE = names.CHECK_NAME_RE
TAG_KEY_RE = names.TAG_KEY_RE
KAFKA_TOPIC_RE = names.KAFKA_TOPIC_RE
MAX_DEPTH = 32  # arrays and tables nested deeper than this are refused (no config needs 5)
MAX_HOSTNAME_BYTES = 255  # what the batch header holds
# Header values registered as secrets (never logged): names that say they carry one.
_SECRET_HEADER = re.compile(r"(?i).*(auth|key|token|secret|passw|cookie|session|signature|credential).*")
KNOWN_COLLECTORS = ("cpu", "memory", "disk", "network", "connections", "processes", "health", "agent")
OUTPUT_TYPES = ("kafka", "http", "file")
# Headers whose meaning the contract fixes; an output may not override them.
RESERVED_HEADERS = frozenset({"authorization", "x-tenant-id", "content-type", "idempotency-key"})
MIB = 1024 * 1024


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_percent: float
    disk_write_mb_s: float
    ring_mb: int
    ring_policy: str


@dataclass(frozen=True)
class CollectSettings:
    min_interval_s: float
    max_interval_s: float
    jitter: float


@dataclass(frozen=True)
class AgentSpoolSettings:
    fsync: str | float  # "batch" or seconds between fsyncs
    segment_mb: int


@dataclass(frozen=True)
class BatchSettings:
    max_samples: int
    max_bytes: int
    max_delay_s: float


@dataclass(frozen=True)
class AgentSettings:
    data_dir: Path
    hostname: str
    interval_s: float
    shutdown_timeout_s: float
    log_format: str
    log_level: str
    limits: Limits
    collect: CollectSettings
    spool: AgentSpoolSettings
    batch: BatchSettings


@dataclass(frozen=True)
class ControlSettings:
    listen: str
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    audit_max_mb: int = 10
    audit_keep: int = 5

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.listen)[1]


@dataclass(frozen=True)
class ProcessesSettings:
    match: tuple[str, ...]
    top: int
    users: tuple[str, ...]
    cmdline: str


@dataclass(frozen=True)
class HealthCheck:
    name: str
    url: str | None
    tcp: str | None
    process: str | None
    timeout_s: float
    expect_status: int | None
    insecure: bool

    @property
    def kind(self) -> str:
        return "url" if self.url else "tcp" if self.tcp else "process"


@dataclass(frozen=True)
class TenantSpoolSettings:
    max_mb: int
    retention_s: float
    encrypt: bool
    deadletter_max_mb: int = 64
    deadletter_retention_s: float = 7 * 86400.0


@dataclass(frozen=True)
class TenantSettings:
    id: str
    enabled: bool
    collectors: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    interval_s: float
    tags: Mapping[str, str]
    api_key_env: str | None
    api_key_file: Path | None
    max_series: int
    processes: ProcessesSettings
    health: tuple[HealthCheck, ...]
    spool: TenantSpoolSettings


@dataclass(frozen=True)
class RetrySettings:
    backoff_initial_s: float
    backoff_max_s: float


@dataclass(frozen=True)
class BreakerSettings:
    failures: int
    reset_s: float


@dataclass(frozen=True)
class OutputSettings:
    type: str
    name: str
    tenants: tuple[str, ...] | None  # None: every tenant
    format: str
    # kafka
    brokers: str | None
    topic: str | None
    options: Mapping[str, Any]
    # http
    url: str | None
    timeout_s: float | None
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    verify: bool | None
    headers: Mapping[str, str]
    # file
    path: Path | None
    max_mb: int | None
    retry: RetrySettings
    breaker: BreakerSettings

    def serves(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def topic_for(self, tenant: str) -> str:
        """The Kafka topic of ``tenant`` (``{tenant}`` expanded)."""
        return (self.topic or "").replace("{tenant}", tenant)


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings
    control: ControlSettings
    tenants: tuple[TenantSettings, ...]
    outputs: tuple[OutputSettings, ...]
    source: str = "<string>"

    def tenant(self, tenant_id: str) -> TenantSettings:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise KeyError(tenant_id)


# --------------------------------------------------------------------------- value kinds

class _Bad(Exception):
    """A value is wrong; ``sub`` is the path below the key (list index, table key)."""

    def __init__(self, message: str, sub: tuple = ()) -> None:
        super().__init__(message)
        self.message = message
        self.sub = sub


def _toml_repr(v: Any, _depth: int = 0) -> str:
    """``v`` as TOML text for a message: one line, at most about 80 characters."""
    if isinstance(v, bool):
        out = "true" if v else "false"
    elif isinstance(v, str):
        out = json.dumps(v[:100], ensure_ascii=False)  # escapes line breaks: one line
    elif _depth >= 3 and isinstance(v, (list, tuple, dict)):
        out = "[...]" if isinstance(v, (list, tuple)) else "{...}"
    elif isinstance(v, (list, tuple)):
        out = "[" + ", ".join(_toml_repr(x, _depth + 1) for x in v[:8]) + (", ...]" if len(v) > 8 else "]")
    elif isinstance(v, dict):
        items = list(v.items())
        out = "{" + ", ".join(f"{_show_key(k)} = {_toml_repr(x, _depth + 1)}" for k, x in items[:8]) \
            + (", ...}" if len(items) > 8 else "}")
    else:
        out = repr(v)
    return out if len(out) <= 80 else out[:76] + " ..."


def _show_key(k: str) -> str:
    return k if names.fullmatch(_BARE, k) and len(k) <= 40 else json.dumps(k[:40], ensure_ascii=False)


def _show(v: str) -> str:
    """A user's string in a message: quoted, escaped onto one line, cut at 100 characters."""
    return repr(v) if len(v) <= 100 else repr(v[:100]) + "..."


def _typename(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


class Kind:
    """How one key's TOML value is checked and converted; ``doc`` names it in the docs."""

    doc = "value"

    def convert(self, v: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class Str(Kind):
    def __init__(self, pattern: re.Pattern | None = None, what: str | None = None,
                 doc: str = "string", empty: bool = False) -> None:
        self.pattern, self.what, self.doc, self.empty = pattern, what, doc, empty

    def convert(self, v: Any) -> str:
        if not isinstance(v, str):
            raise _Bad(f"expected a string, got {_typename(v)} {_toml_repr(v)}")
        if not v and not self.empty:
            raise _Bad("must not be empty")
        if self.pattern is not None and not names.fullmatch(self.pattern, v):
            raise _Bad(f"{_show(v)} is not a valid {self.what} (expected {names.text(self.pattern)})")
        return v


class PathKind(Str):
    doc = "path"

    def __init__(self) -> None:
        super().__init__(doc="path")

    def convert(self, v: Any) -> Path:
        s = super().convert(v)
        if "\0" in s:
            raise _Bad(f"{_show(s)} contains a NUL character, which no path can hold")
        return Path(s).expanduser()


class Hostname(Str):
    """The ``host`` of every batch: any text of 1-255 UTF-8 bytes without control characters."""

    def __init__(self) -> None:
        super().__init__(doc="string")

    def convert(self, v: Any) -> str:
        s = super().convert(v)
        return check_hostname(s)


def check_hostname(s: str) -> str:
    bad = names.control_char_name(s)
    if bad:
        raise _Bad(f"{_show(s)} contains {bad}")
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Bad(f"{_show(s)} is not encodable as UTF-8") from None
    if n > MAX_HOSTNAME_BYTES:
        raise _Bad(f"is {n} bytes of UTF-8; at most {MAX_HOSTNAME_BYTES} fit a batch header")
    return s


class Bool(Kind):
    doc = "boolean"

    def convert(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Bad(f"expected true or false, got {_typename(v)} {_toml_repr(v)}")
        return v


class Int(Kind):
    doc = "integer"

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected an integer, got {_typename(v)} {_toml_repr(v)}")
        _check_range(v, self.lo, self.hi)
        return v


class Float(Kind):
    doc = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, above: bool = False) -> None:
        self.lo, self.hi, self.above = lo, hi, above

    def convert(self, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad(f"expected a number, got {_typename(v)} {_toml_repr(v)}")
        if self.above and self.lo is not None and v <= self.lo:
            raise _Bad(f"{v!r} must be above {self.lo!r}")
        _check_range(v, None if self.above else self.lo, self.hi)
        return float(v)


def _check_range(v, lo, hi) -> None:
    if lo is not None and v < lo:
        raise _Bad(f"{v!r} is below the minimum {lo!r}")
    if hi is not None and v > hi:
        raise _Bad(f"{v!r} is above the maximum {hi!r}")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"1m30s"`` -> 90.0 seconds. Units ``ms``, ``s``, ``m``, ``h``; strings only.

    Raises
    ------
    ValueError
        When ``text`` is not a duration; the message says what is expected.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"expected a duration string such as \"10s\" (units ms, s, m, h), got "
            f"{_typename(text)} {_toml_repr(text)}")
    s = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration (use a number with a unit: ms, s, m, h)")
    return total


def format_duration(seconds: float) -> str:
    """The shortest of ``ms``/``s``/``m``/``h`` that shows ``seconds`` exactly."""
    for unit in ("h", "m", "s"):
        n = seconds / _UNIT_S[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    ms = seconds * 1000
    return f"{int(ms)}ms" if ms == int(ms) else f"{seconds}s"


class Duration(Kind):
    doc = "duration"

    def __init__(self, lo: float = 0.0, positive: bool = False) -> None:
        self.lo, self.positive = lo, positive

    def convert(self, v: Any) -> float:
        try:
            s = parse_duration(v)
        except ValueError as e:
            raise _Bad(str(e)) from None
        if self.positive and s <= 0:
            raise _Bad(f"{v!r} must be longer than 0s")
        if s < self.lo:
            raise _Bad(f"{v!r} is shorter than the minimum {format_duration(self.lo)}")
        return s


class Fsync(Kind):
    doc = '`"batch"` or duration'

    def convert(self, v: Any) -> str | float:
        if v == "batch":
            return "batch"
        try:
            s = parse_duration(v)
        except ValueError:
            raise _Bad(f"expected \"batch\" or a duration such as \"1s\", got {_toml_repr(v)}") from None
        if s <= 0:
            raise _Bad(f"{v!r} must be longer than 0s (use \"batch\" to fsync every batch)")
        return s


class Enum(Kind):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.doc = " or ".join(f'`"{c}"`' for c in choices)

    def convert(self, v: Any) -> str:
        if v not in self.choices or not isinstance(v, str):
            near = difflib.get_close_matches(str(v), self.choices, 1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _Bad(f"{_toml_repr(v)} is not one of {', '.join(map(repr, self.choices))}{hint}")
        return v


class StrList(Kind):
    def __init__(self, item: Kind | None = None, doc: str = "list of strings",
                 unique: bool = True, nonempty: bool = False) -> None:
        self.item = item or Str()
        self.doc, self.unique, self.nonempty = doc, unique, nonempty

    def convert(self, v: Any) -> tuple:
        if not isinstance(v, list):
            raise _Bad(f"expected an array, got {_typename(v)} {_toml_repr(v)}")
        if self.nonempty and not v:
            raise _Bad("must not be empty")
        out, seen = [], {}
        for i, x in enumerate(v):
            try:
                y = self.item.convert(x)
            except _Bad as e:
                raise _Bad(e.message, (i,) + e.sub) from None
            if self.unique and y in seen:
                raise _Bad(f"{x!r} is listed twice (also at [{seen[y]}])", (i,))
            seen[y] = i
            out.append(y)
        return tuple(out)


class Regex(Str):
    def convert(self, v: Any) -> str:
        s = super().convert(v)
        try:
            re.compile(s)
        except re.error as e:
            raise _Bad(f"{s!r} is not a valid regular expression: {e}") from None
        return s


class HostPort(Str):
    def __init__(self) -> None:
        super().__init__(doc='`"host:port"`')

    def convert(self, v: Any) -> str:
        s = super().convert(v)
        try:
            _split_host_port(s)
        except ValueError as e:
            raise _Bad(str(e)) from None
        return s


def _split_host_port(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (not sep or not names.is_host(host) or not names.fullmatch(names.PORT_RE, port)
            or not 0 <= int(port) <= 65535):
        raise ValueError(f"{_show(s)} is not host:port (e.g. \"127.0.0.1:8787\")")
    return host, int(port)


class Brokers(Str):
    def __init__(self) -> None:
        super().__init__(doc='`"host:port[,host:port...]"`')

    def convert(self, v: Any) -> str:
        s = super().convert(v)
        for b in s.split(","):
            try:
                _split_host_port(b.strip())
            except ValueError:
                raise _Bad(f"{_show(b.strip())} in {_show(s)} is not host:port") from None
        return s


class Url(Str):
    def __init__(self) -> None:
        super().__init__(doc="URL")

    def convert(self, v: Any) -> str:
        s = super().convert(v)
        problem = url_problem(s)
        if problem == _NOT_HTTP:
            raise _Bad(f"{_show(s)} is not an http:// or https:// URL")
        if problem:
            raise _Bad(f"{_show(s)} is not a usable URL: {problem}")
        return s


_URL_CHARS = re.compile(r"[!-~]+")  # printable ASCII, no space
_NOT_HTTP = "the scheme must be http or https"


def url_problem(s: str) -> str | None:
    """What keeps ``s`` from being POSTed to / fetched by :mod:`http.client`, or None.

    ``{tenant}`` may appear anywhere; it is checked with a tenant id put in.
    """
    u = s.replace("{tenant}", "t")
    if not re.match(r"https?://", u):
        return _NOT_HTTP
    if not names.fullmatch(_URL_CHARS, u):
        bad = names.control_char_name(u)
        return (f"it contains {bad}" if bad else
                "it contains a space or a character outside ASCII (percent-encode it; "
                "write international host names in punycode)")
    try:
        p = urlsplit(u)
        port = p.port
    except ValueError as e:
        return str(e)
    if not p.hostname or not names.is_host(p.hostname):
        return "it has no valid host"
    if port == 0:
        return "port 0 cannot be connected to"
    return None


class StrMap(Kind):
    def __init__(self, key: re.Pattern, doc: str = "table of strings", what: str = "name") -> None:
        self.key, self.doc, self.what = key, doc, what

    def convert(self, v: Any) -> Mapping[str, str]:
        if not isinstance(v, dict):
            raise _Bad(f"expected a table, got {_typename(v)} {_toml_repr(v)}")
        for k, x in v.items():
            if not names.fullmatch(self.key, k):
                raise _Bad(f"{_show(k)} is not a valid {self.what} (expected {names.text(self.key)})", (k,))
            if not isinstance(x, str):
                raise _Bad(f"expected a string, got {_typename(x)} {_toml_repr(x)}", (k,))
            self.check_value(k, x)
        return MappingProxyType(dict(v))

    def check_value(self, key: str, value: str) -> None:
        pass


class Headers(StrMap):
    """HTTP header fields: token names; one-line, Latin-1 values (never quoted in errors)."""

    def __init__(self) -> None:
        super().__init__(names.HEADER_NAME_RE, doc="table of strings", what="header name")

    def check_value(self, key: str, value: str) -> None:
        problem = names.header_value_problem(value)
        if problem:
            raise _Bad(f"the value {problem}", (key,))


class Scalars(Kind):
    doc = "table"

    def convert(self, v: Any) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise _Bad(f"expected a table, got {_typename(v)} {_toml_repr(v)}")
        for k, x in v.items():
            if not isinstance(x, (str, int, float, bool)):
                raise _Bad(f"expected a string, number or boolean, got {_typename(x)}", (k,))
        return MappingProxyType(dict(v))


# --------------------------------------------------------------------------- the table

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
COMPUTED = object()  # default worked out at load time; ``default_doc`` says how


@dataclass(frozen=True)
class Option:
    """One configuration key: where it lives, its kind, default and help, declared once."""

    section: str
    key: str
    kind: Kind
    default: Any
    help: str
    default_doc: str | None = None
    types: tuple[str, ...] | None = None  # outputs only: the output types that take it

    @property
    def field(self) -> str:
        return self.key + "_s" if isinstance(self.kind, Duration) else self.key

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def default_text(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.default is REQUIRED:
            return "required"
        return f"`{_toml_repr(self.default)}`"


@dataclass(frozen=True)
class Section:
    name: str
    array: bool
    help: str


SECTIONS: tuple[Section, ...] = (
    Section("agent", False, "The agent process itself."),
    Section("agent.limits", False, "The agent's own resource budget."),
    Section("agent.collect", False, "How the collection scheduler may space collections."),
    Section("agent.spool", False, "The on-disk spool shared by every tenant."),
    Section("agent.batch", False, "When samples leave the in-memory rings as an encoded batch."),
    Section("control", False, "The control API: health, readiness, metrics, tenant status."),
    Section("tenants", True, "One table per tenant. A tenant's samples never mix with another's."),
    Section("tenants.processes", False,
            "Which processes the `processes` collector reports for this tenant."),
    Section("tenants.health", True,
            "Health checks run by the `health` collector; each has exactly one of "
            "`url`, `tcp`, `process`."),
    Section("tenants.spool", False, "This tenant's share of the spool."),
    Section("outputs", True,
            "Where batches go. Keys marked with a type apply to that output type only."),
    Section("outputs.retry", False, "How a failed delivery is retried."),
    Section("outputs.breaker", False,
            "The circuit breaker: after `failures` consecutive failures the output is "
            "left alone for `reset`, then probed with one batch."),
)
_SECTION = {s.name: s for s in SECTIONS}

K, H, F = ("kafka",), ("http",), ("file",)

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
    Option("agent", "log_format", Enum("json", "logfmt"), "json",
           "Format of the agent's own log lines on stderr."),
    Option("agent", "log_level", Enum("debug", "info", "warning", "error"), "info",
           "Least severe level that is logged."),
    # [agent.limits]
    Option("agent.limits", "memory_mb", Int(16), 256, "The agent's own RSS cap, MiB."),
    Option("agent.limits", "cpu_percent", Float(0.0, 100.0 * 1024, above=True), 5.0,
           "The agent's own CPU budget, percent of one core; the scheduler stretches "
           "intervals to stay under it."),
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
           "Collectors this tenant receives samples of: "
           + ", ".join(f"`{c}`" for c in KNOWN_COLLECTORS)
           + " (`agent`: the agent's own figures, this tenant's only). docs/collectors.md lists "
           "their metrics."),
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
    # [tenants.processes]
    Option("tenants.processes", "match", StrList(Str(), doc="list of globs"), [],
           "Process-name globs (the kernel's `comm`) of processes reported individually; "
           "empty: none, only the top N."),
    Option("tenants.processes", "top", Int(0, 1000), 10,
           "Also report the top N processes by CPU and the top N by resident memory."),
    Option("tenants.processes", "users", StrList(Str()), [],
           "When not empty, a matched process must also run as one of these users (names or uids)."),
    Option("tenants.processes", "cmdline", Regex(doc="regex", empty=True), "",
           "When not empty, a matched process's command line must also contain this regular "
           "expression (`re.search`)."),
    # [[tenants.health]]
    Option("tenants.health", "name", Str(CHECK_NAME_RE, "check name"), REQUIRED,
           "The check's name, unique within the tenant; the `check` tag of its samples."),
    Option("tenants.health", "url", Url(), None, "HTTP(S) URL to GET.", default_doc="none"),
    Option("tenants.health", "tcp", HostPort(), None, "Address to open a TCP connection to.",
           default_doc="none"),
    Option("tenants.health", "process", Str(), None,
           "Process-name glob; healthy while a matching process runs.", default_doc="none"),
    Option("tenants.health", "timeout", Duration(positive=True), "2s", "Time limit of one check."),
    Option("tenants.health", "expect_status", Int(100, 599), None,
           "HTTP status that counts as healthy (url checks only).", default_doc="any 2xx"),
    Option("tenants.health", "insecure", Bool(), False,
           "Skip TLS certificate verification (https url checks only)."),
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
    Option("outputs", "type", Enum(*OUTPUT_TYPES), REQUIRED, "The output type."),
    Option("outputs", "name", Str(OUTPUT_NAME_RE, "output name"), COMPUTED,
           "Unique name: in logs, metrics and the spool's delivery cursors.",
           default_doc='`"<type>-<index>"`, e.g. `"kafka-0"`'),
    Option("outputs", "tenants", StrList(Str(TENANT_ID_RE, "tenant id"), doc="list of tenant ids",
                                         nonempty=True),
           None, "Tenants this output serves.", default_doc="every tenant"),
    Option("outputs", "format", Enum("batch", "json"), "batch",
           "`\"batch\"`: the binary batch (`ingress-batch/1`); `\"json\"`: one JSON object "
           "per sample (`ingress-json/1`)."),
    Option("outputs", "brokers", Brokers(), REQUIRED, "Bootstrap brokers.", types=K),
    Option("outputs", "topic", Str(), "ingress.metrics",
           "Topic; `{tenant}` in it expands to the tenant id.", types=K),
    Option("outputs", "options", Scalars(), {},
           "Passed to the client as is (librdkafka settings). `enable.idempotence` and "
           "`acks` are fixed by ingress.", types=K),
    Option("outputs", "url", Url(), REQUIRED, "Endpoint batches are POSTed to.", types=H),
    Option("outputs", "timeout", Duration(positive=True), "10s",
           "Deadline for the whole request: connect, TLS handshake, sending, and the answer's headers "
           "and body; past it the request fails as retryable (the breaker counts it).", types=H),
    Option("outputs", "ca_file", PathKind(), None, "CA bundle to verify the server with.",
           default_doc="the system's", types=H),
    Option("outputs", "cert_file", PathKind(), None,
           "Client certificate (PEM) for mutual TLS; needs `key_file`.", default_doc="none",
           types=H),
    Option("outputs", "key_file", PathKind(), None, "Private key of `cert_file`.",
           default_doc="none", types=H),
    Option("outputs", "verify", Bool(), True, "Verify the server's certificate.", types=H),
    Option("outputs", "headers", Headers(), {},
           "Extra request headers; the contract's headers (`Authorization`, `X-Tenant-ID`, "
           "`Content-Type`, `Idempotency-Key`) cannot be overridden. Names are HTTP tokens; "
           "values one line of Latin-1 without control characters. Values of headers whose "
           "name mentions auth, key, token, secret, password, cookie, session, signature or "
           "credential are treated as secrets: never logged.", types=H),
    Option("outputs", "path", PathKind(), None, "Directory of the per-tenant files.",
           default_doc="`agent.data_dir`/out", types=F),
    Option("outputs", "max_mb", Int(1), 64, "A tenant's file is rotated past this size, MiB.",
           types=F),
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


def _options(section: str) -> list[Option]:
    return [o for o in OPTIONS if o.section == section]


def _children(section: str | None) -> list[Section]:
    def parent(name: str) -> str | None:
        return name.rpartition(".")[0] or None
    return [s for s in SECTIONS if parent(s.name) == section]


# --------------------------------------------------------------------------- locator

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _parse_key(s: str, i: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) TOML key starting at ``s[i]``; return (parts, index after it)."""
    parts: list[str] = []
    n = len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return None
        if s[i] == '"':
            j = i + 1
            buf = []
            while j < n and s[j] != '"':
                if s[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(s[j])
                j += 1
            if j >= n:
                return None
            parts.append("".join(buf))
            i = j + 1
        elif s[i] == "'":
            j = s.find("'", i + 1)
            if j < 0:
                return None
            parts.append(s[i + 1:j])
            i = j + 1
        else:
            m = _BARE.match(s, i)
            if not m:
                return None
            parts.append(m.group())
            i = m.end()
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == ".":
            i += 1
            continue
        return parts, i


class Locator:
    """Maps setting paths such as ``("tenants", 1, "id")`` to 1-based source lines.

    tomllib gives values without positions, so this walks the text once: table
    headers (``[a.b]``, ``[[a]]`` with their array indices), ``key = value`` lines
    and the keys of one-line inline tables. Strings, comments and multi-line
    arrays are skipped over so text inside them is never taken for a key.
    :meth:`line` falls back to the nearest enclosing path it knows (an element
    of an inline array is reported at the array's key).
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple, int] = {}
        self._scan(text)

    def line(self, path: Iterable) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    def _mark(self, path: tuple, lineno: int) -> None:
        self.lines.setdefault(path, lineno)

    def _scan(self, text: str) -> None:
        arrays: dict[tuple, int] = {}  # array-of-tables path -> index of its last element
        table: tuple = ()
        in_ml: str | None = None  # closing delimiter of an open multi-line string
        depth = 0  # open [ and { of a value spanning lines
        for lineno, line in enumerate(text.splitlines(), 1):
            i = 0
            if in_ml is None and depth == 0:
                s = line.lstrip()
                i = len(line) - len(s)
                if s.startswith("["):
                    dbl = s.startswith("[[")
                    got = _parse_key(s, 2 if dbl else 1)
                    if got is None:
                        continue
                    resolved: tuple = ()
                    parts = got[0]
                    for k, part in enumerate(parts):
                        resolved += (part,)
                        last = k == len(parts) - 1
                        if last and dbl:
                            arrays[resolved] = arrays.get(resolved, -1) + 1
                            self._mark(resolved, lineno)
                            resolved += (arrays[resolved],)
                        elif resolved in arrays:
                            resolved += (arrays[resolved],)
                        self._mark(resolved, lineno)  # [a.b] also locates a
                    table = resolved
                    self._mark(table, lineno)
                    continue
                got = _parse_key(line, i)
                if got is None or got[1] >= len(line) or line[got[1]] != "=":
                    continue
                key = table + tuple(got[0])
                for k in range(len(table) + 1, len(key) + 1):
                    self._mark(key[:k], lineno)
                i = got[1] + 1
                rest = line[i:].lstrip()
                if rest.startswith("{"):
                    self._inline_keys(rest, key, lineno)
            in_ml, depth = self._skip_value(line, i, in_ml, depth)

    def _inline_keys(self, s: str, prefix: tuple, lineno: int) -> None:
        # Keys of a one-line inline table, first level only: `tags = { team = "x" }`.
        i, d = 1, 1
        expect_key = True
        while i < len(s) and d > 0:
            c = s[i]
            if expect_key and d == 1 and c not in " \t,":
                got = _parse_key(s, i)
                if got and got[1] < len(s) and s[got[1]] == "=":
                    self._mark(prefix + tuple(got[0]), lineno)
                    i = got[1] + 1
                    expect_key = False
                    continue
                expect_key = False
            if c in "\"'":
                j = s.find(c, i + 1) if c == "'" else self._end_basic(s, i + 1)
                i = (j if j >= 0 else len(s)) + 1
                continue
            if c in "[{":
                d += 1
            elif c in "]}":
                d -= 1
            elif c == "," and d == 1:
                expect_key = True
            i += 1

    @staticmethod
    def _end_basic(s: str, i: int) -> int:
        while i < len(s):
            if s[i] == "\\":
                i += 2
                continue
            if s[i] == '"':
                return i
            i += 1
        return -1

    def _skip_value(self, s: str, i: int, in_ml: str | None, depth: int) -> tuple[str | None, int]:
        n = len(s)
        while i < n:
            if in_ml is not None:
                j = s.find(in_ml, i)
                if in_ml == '"""':
                    while j > 0 and s[j - 1] == "\\":  # escaped quote
                        j = s.find(in_ml, j + 1)
                if j < 0:
                    return in_ml, depth
                i = j + 3
                in_ml = None
                continue
            c = s[i]
            if c == "#":
                break
            if s.startswith('"""', i) or s.startswith("'''", i):
                in_ml = s[i:i + 3]
                i += 3
                continue
            if c == '"':
                j = self._end_basic(s, i + 1)
                i = (j if j >= 0 else n) + 1
                continue
            if c == "'":
                j = s.find("'", i + 1)
                i = (j if j >= 0 else n) + 1
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth = max(0, depth - 1)
            i += 1
        return in_ml, depth


def format_path(path: Iterable) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            s = p if _BARE.fullmatch(p) else json.dumps(p, ensure_ascii=False)  # one line
            out += ("." if out else "") + s
    return out


# --------------------------------------------------------------------------- parsing

class _Ctx:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        self._loc: Locator | None = None

    def error(self, path: tuple, message: str) -> ConfigError:
        if self._loc is None:
            self._loc = Locator(self.text)
        line = self._loc.line(path)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {format_path(path)}: {message}" if path else f"{where}: {message}")


def _unknown(ctx: _Ctx, raw: dict, known: Iterable[str], path: tuple, where: str) -> None:
    known = list(known)
    for k in raw:
        if k not in known:
            near = difflib.get_close_matches(k, known, 1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ctx.error(path + (k,), f"unknown key in {where}{hint}")


def _parse_section(ctx: _Ctx, raw: Any, section: str, path: tuple,
                   output_type: str | None = None) -> dict[str, Any]:
    """Check one table against its declared options; return converted values by field.

    Sub-sections are returned under their last name component, parsed too.
    """
    sec = _SECTION[section]
    label = f"[[{section}]]" if sec.array else f"[{section}]"
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a table, got {_typename(raw)}")
    opts = _options(section)
    kids = _children(section)
    _unknown(ctx, raw, [o.key for o in opts] + [c.name.rpartition(".")[2] for c in kids], path, label)
    out: dict[str, Any] = {}
    for o in opts:
        applies = o.types is None or output_type in o.types
        if o.key in raw and not applies:
            raise ctx.error(path + (o.key,),
                            f"not a key of a {output_type} output ({'/'.join(o.types)} only)")
        if o.key in raw:
            try:
                out[o.field] = o.kind.convert(raw[o.key])
            except _Bad as e:
                raise ctx.error(path + (o.key,) + e.sub, e.message) from None
        elif not applies:
            out[o.field] = None
        elif o.default is REQUIRED:
            what = f"required for a {output_type} output" if o.types else "required"
            raise ctx.error(path + (o.key,), f"missing: {what}")
        elif o.default is COMPUTED or o.default is None:
            out[o.field] = None
        else:
            out[o.field] = o.kind.convert(o.default)
    for c in kids:
        short = c.name.rpartition(".")[2]
        sub = raw.get(short, [] if c.array else {})
        if c.array:
            if not isinstance(sub, list):
                raise ctx.error(path + (short,), f"expected an array of tables [[{c.name}]], "
                                                 f"got {_typename(sub)}")
            out[short] = [_parse_section(ctx, x, c.name, path + (short, i), output_type)
                          for i, x in enumerate(sub)]
        else:
            out[short] = _parse_section(ctx, sub, c.name, path + (short,), output_type)
    return out


def loads(text: str, source: str = "<string>") -> Settings:
    """Parse and validate configuration text.

    Parameters
    ----------
    text : str
        TOML source.
    source : str
        Name used in error messages (normally the file path).

    Raises
    ------
    ConfigError
        ``source:LINE: path: message`` for the first problem found.
    """
    ctx = _Ctx(text, source)
    deep = _too_deep_line(text, MAX_DEPTH)
    if deep:
        raise ConfigError(f"{source}:{deep}: invalid TOML: arrays or tables nested more than "
                          f"{MAX_DEPTH} levels deep")
    try:
        return _loads(ctx, text, source)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None


def _loads(ctx: "_Ctx", text: str, source: str) -> "Settings":
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m:
            raise ConfigError(f"{source}:{m.group(1)}: invalid TOML: {msg[:m.start()]} "
                              f"(column {m.group(2)})") from None
        m = re.search(r"\s*\(at end of document\)$", msg)
        if m:
            n = text.count("\n") + (0 if text.endswith("\n") else 1)
            raise ConfigError(f"{source}:{n}: invalid TOML: {msg[:m.start()]} "
                              "(at end of document)") from None
        raise ConfigError(f"{source}: invalid TOML: {msg}") from None
    deep = _deep_path(raw, MAX_DEPTH)
    if deep is not None:
        raise ctx.error(deep, f"nested more than {MAX_DEPTH} levels deep")
    top = [s.name for s in _children(None)]
    _unknown(ctx, raw, top, (), "the top level")
    for name in top:
        if name in raw and _SECTION[name].array and not isinstance(raw[name], list):
            raise ctx.error((name,), f"expected an array of tables [[{name}]], got "
                                     f"{_typename(raw[name])} (write [[{name}]])")
    agent = _parse_section(ctx, raw.get("agent", {}), "agent", ("agent",))
    control = _parse_section(ctx, raw.get("control", {}), "control", ("control",))
    agent_s = _build_agent(ctx, agent)
    tenants = tuple(_build_tenant(ctx, x, i, agent_s)
                    for i, x in enumerate(raw.get("tenants", [])))
    outputs = tuple(_build_output(ctx, x, i, agent_s)
                    for i, x in enumerate(raw.get("outputs", [])))
    settings = Settings(agent=agent_s, control=ControlSettings(**control),
                        tenants=tenants, outputs=outputs, source=source)
    _cross_check(ctx, settings)
    return settings


def _too_deep_line(text: str, limit: int) -> int | None:
    """The first line where ``[``/``{`` outside strings and comments nest past ``limit``.

    tomllib parses nesting by recursion; past a few hundred levels it raises
    RecursionError, so such text is refused before it gets there.
    """
    if text.count("[") + text.count("{") <= limit:
        return None
    depth, i, n, line = 0, 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            triple = text.startswith(c * 3, i)
            end = c * 3 if triple else c
            j = i + len(end)
            while j < n:
                if c == '"' and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(end, j) or (not triple and text[j] == "\n"):
                    break
                j += 1
            if triple:  # """"" closes with up to two more quotes
                while j + 3 < n and text[j + 3] == c:
                    j += 1
            line += text.count("\n", i, min(j, n))
            i = j + len(end) if j < n and text[j] != "\n" else j
            continue
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _deep_path(raw: Any, limit: int) -> tuple | None:
    """The path of the first value nested more than ``limit`` levels deep (dotted keys
    such as ``a.b.c...`` nest without brackets), or None; iterative."""
    stack: list[tuple[Any, tuple]] = [(raw, ())]
    while stack:
        v, path = stack.pop()
        if len(path) > limit:
            return path[:limit]
        if isinstance(v, dict):
            stack.extend((x, path + (k,)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, path + (i,)) for i, x in enumerate(v))
    return None


def _build_agent(ctx: _Ctx, a: dict) -> AgentSettings:
    collect = CollectSettings(**a.pop("collect"))
    if collect.min_interval_s > collect.max_interval_s:
        raise ctx.error(("agent", "collect", "min_interval"),
                        f"{format_duration(collect.min_interval_s)} is longer than "
                        f"agent.collect.max_interval ({format_duration(collect.max_interval_s)})")
    interval = a["interval_s"]
    _check_interval(ctx, ("agent", "interval"), interval, collect)
    hostname = a["hostname"]
    if hostname is None:
        hostname = socket.gethostname()
        try:
            check_hostname(hostname)
        except _Bad as e:
            raise ctx.error(("agent",), f"the system's host name {e.message}; set agent.hostname") from None
    return AgentSettings(
        data_dir=a["data_dir"], hostname=hostname,
        interval_s=interval, shutdown_timeout_s=a["shutdown_timeout_s"],
        log_format=a["log_format"], log_level=a["log_level"],
        limits=Limits(**a["limits"]), collect=collect,
        spool=AgentSpoolSettings(**a["spool"]), batch=BatchSettings(**a["batch"]))


def _check_interval(ctx: _Ctx, path: tuple, s: float, c: CollectSettings) -> None:
    if s < c.min_interval_s:
        raise ctx.error(path, f"{format_duration(s)} is shorter than agent.collect.min_interval "
                              f"({format_duration(c.min_interval_s)})")
    if s > c.max_interval_s:
        raise ctx.error(path, f"{format_duration(s)} is longer than agent.collect.max_interval "
                              f"({format_duration(c.max_interval_s)})")


def _build_tenant(ctx: _Ctx, raw: Any, i: int, agent: AgentSettings) -> TenantSettings:
    path = ("tenants", i)
    t = _parse_section(ctx, raw, "tenants", path)
    for j, c in enumerate(t["collectors"]):
        if c not in KNOWN_COLLECTORS:
            near = difflib.get_close_matches(c, KNOWN_COLLECTORS, 1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ctx.error(path + ("collectors", j), f"{c!r} is not a collector; known: "
                                                      f"{', '.join(KNOWN_COLLECTORS)}{hint}")
    if t["api_key_env"] is not None and t["api_key_file"] is not None:
        raise ctx.error(path + ("api_key_file",), "give api_key_env or api_key_file, not both")
    if t["interval_s"] is None:
        t["interval_s"] = agent.interval_s
    else:
        _check_interval(ctx, path + ("interval",), t["interval_s"], agent.collect)
    checks = []
    names: dict[str, int] = {}
    raw_checks = raw.get("health", [])
    for j, h in enumerate(t.pop("health")):
        hp = path + ("health", j)
        given = [k for k in ("url", "tcp", "process") if h[k] is not None]
        if len(given) != 1:
            msg = ("needs one of url, tcp, process" if not given
                   else f"give one of url, tcp, process, not {' and '.join(given)}")
            raise ctx.error(hp + ((given[1],) if len(given) > 1 else ()), msg)
        for k in ("expect_status", "insecure"):
            if k in raw_checks[j] and h["url"] is None:
                raise ctx.error(hp + (k,), "applies to url checks only")
        if h["name"] in names:
            raise ctx.error(hp + ("name",), f"{h['name']!r} is already the name of "
                                            f"{format_path(path + ('health', names[h['name']]))}")
        names[h["name"]] = j
        checks.append(HealthCheck(**h))
    if "health" in t["collectors"] and not checks:
        raise ctx.error(path + ("collectors",), "the health collector needs at least one "
                                                "[[tenants.health]] check")
    if checks and "health" not in t["collectors"]:
        raise ctx.error(path + ("health",), "checks are configured but 'health' is not "
                                            "in this tenant's collectors")
    if "processes" in raw and "processes" not in t["collectors"]:
        raise ctx.error(path + ("processes",), "[tenants.processes] is configured but "
                                               "'processes' is not in this tenant's collectors")
    return TenantSettings(
        id=t["id"], enabled=t["enabled"], collectors=t["collectors"], include=t["include"],
        exclude=t["exclude"], interval_s=t["interval_s"], tags=t["tags"],
        api_key_env=t["api_key_env"], api_key_file=t["api_key_file"],
        max_series=t["max_series"], processes=ProcessesSettings(**t["processes"]),
        health=tuple(checks), spool=TenantSpoolSettings(**t["spool"]))


def _build_output(ctx: _Ctx, raw: Any, i: int, agent: AgentSettings) -> OutputSettings:
    path = ("outputs", i)
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a table, got {_typename(raw)}")
    if "type" not in raw:
        raise ctx.error(path + ("type",), f"missing: required ({', '.join(OUTPUT_TYPES)})")
    try:
        otype = _SECTION_TYPE.convert(raw["type"])
    except _Bad as e:
        raise ctx.error(path + ("type",), e.message) from None
    o = _parse_section(ctx, raw, "outputs", path, otype)
    if o["name"] is None:
        o["name"] = f"{otype}-{i}"
    if otype == "kafka":
        topic = o["topic"]
        bare = topic.replace("{tenant}", "x")
        if not names.fullmatch(KAFKA_TOPIC_RE, bare):
            raise ctx.error(path + ("topic",), f"{topic!r} is not a valid Kafka topic "
                                               "(letters, digits, '.', '_', '-'; '{tenant}' expands)")
        for k, v in o["options"].items():
            if k == "enable.idempotence" and v not in (True, "true"):
                raise ctx.error(path + ("options", k), "ingress producers are always idempotent")
            if k == "acks" and v not in ("all", -1, "-1"):
                raise ctx.error(path + ("options", k), "ingress producers always use acks=all")
    if otype == "http":
        for k, v in o["headers"].items():
            if k.lower() in RESERVED_HEADERS:
                raise ctx.error(path + ("headers", k), "set by ingress; cannot be overridden")
            if _SECRET_HEADER.fullmatch(k):
                register_secret(v, f"outputs.{o['name']}.headers.{k}")
        password = urlsplit(o["url"]).password
        if password:
            register_secret(password, f"outputs.{o['name']}.url")
        if (o["cert_file"] is None) != (o["key_file"] is None):
            missing = "key_file" if o["key_file"] is None else "cert_file"
            raise ctx.error(path + (missing,), "cert_file and key_file go together")
    if otype == "file" and o["path"] is None:
        o["path"] = agent.data_dir / "out"
    o["retry"] = RetrySettings(**o["retry"])
    o["breaker"] = BreakerSettings(**o["breaker"])
    if o["retry"].backoff_initial_s > o["retry"].backoff_max_s:
        raise ctx.error(path + ("retry", "backoff_initial"), "is longer than backoff_max")
    for k in ("options", "headers"):
        if o[k] is None:
            o[k] = MappingProxyType({})
    return OutputSettings(**o)


_SECTION_TYPE = Enum(*OUTPUT_TYPES)


def _cross_check(ctx: _Ctx, s: Settings) -> None:
    if not s.tenants:
        raise ctx.error(("tenants",), "at least one [[tenants]] table is required")
    if not s.outputs:
        raise ctx.error(("outputs",), "at least one [[outputs]] table is required")
    ids: dict[str, int] = {}
    for i, t in enumerate(s.tenants):
        if t.id in ids:
            raise ctx.error(("tenants", i, "id"), f"{t.id!r} is already the id of tenants[{ids[t.id]}]")
        ids[t.id] = i
    names: dict[str, int] = {}
    for i, o in enumerate(s.outputs):
        if o.name in names:
            raise ctx.error(("outputs", i, "name"),
                            f"{o.name!r} is already the name of outputs[{names[o.name]}]")
        names[o.name] = i
        for j, tid in enumerate(o.tenants or ()):
            if tid not in ids:
                raise ctx.error(("outputs", i, "tenants", j), f"{tid!r} is not a configured tenant")
        if o.type == "http":
            for tid in (o.tenants or tuple(ids)):
                t = s.tenants[ids[tid]]
                if t.api_key_env is None and t.api_key_file is None:
                    where = ("outputs", i, "tenants", o.tenants.index(tid)) if o.tenants else ("outputs", i)
                    raise ctx.error(where, f"http output {o.name!r} serves tenant {tid!r}, which has "
                                           "no api_key_env or api_key_file")
    for i, t in enumerate(s.tenants):
        if not any(o.serves(t.id) for o in s.outputs):
            raise ctx.error(("tenants", i, "id"), f"tenant {t.id!r} is served by no output; "
                                                  "its samples would never leave the host")


def load(path: str | Path) -> Settings:
    """Read and validate a configuration file.

    Raises
    ------
    ConfigError
        Invalid content, with file, line and key in the message.
    OSError
        The file cannot be read.
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
    return loads(text, str(path))


DEFAULT_SOURCE = "<embedded default.toml>"


def default_text() -> str:
    """The embedded default configuration, as shipped in the wheel."""
    return resources.files("ingress").joinpath("default.toml").read_text("utf-8")


def default_settings() -> Settings:
    """Settings of the embedded default configuration (``ingress run`` without ``-c``)."""
    return loads(default_text(), DEFAULT_SOURCE)


def locate(settings: Settings, path: Iterable) -> str:
    """``FILE:LINE: path`` of a key in the file ``settings`` came from.

    For errors found after loading (a collector missing from this build, an
    output setting a transport does not support). The line is omitted when the
    source cannot be read again.
    """
    p = tuple(path)
    try:
        text = default_text() if settings.source == DEFAULT_SOURCE else Path(settings.source).read_text("utf-8")
        line = Locator(text).line(p)
    except (OSError, UnicodeDecodeError):
        line = None
    where = f"{settings.source}:{line}" if line else settings.source
    return f"{where}: {format_path(p)}"


# --------------------------------------------------------------------------- docs

def reference_markdown() -> str:
    """The key reference of docs/configuration.md, generated from :data:`OPTIONS`."""
    out: list[str] = []
    for sec in SECTIONS:
        head = f"[[{sec.name}]]" if sec.array else f"[{sec.name}]"
        out += [f"### `{head}`", "", sec.help, "",
                "| key | type | default | description |", "|---|---|---|---|"]
        for o in _options(sec.name):
            desc = o.help.replace("|", "\\|")
            if o.types:
                desc = f"({'/'.join(o.types)}) " + desc
            out.append(f"| `{o.key}` | {o.kind.doc} | {o.default_text()} | {desc} |")
        out.append("")
    return "\n".join(out)


REFERENCE_BEGIN = "<!-- BEGIN reference (generated: python -m ingress.config --write FILE) -->\n"
REFERENCE_END = "<!-- END reference -->"


def write_reference(path: str | Path) -> None:
    """Replace the generated reference between the markers of ``path`` (docs/configuration.md)."""
    p = Path(path)
    text = p.read_text("utf-8")
    start = text.index(REFERENCE_BEGIN) + len(REFERENCE_BEGIN)
    end = text.index(REFERENCE_END, start)
    p.write_text(text[:start] + reference_markdown() + text[end:], "utf-8")


if __name__ == "__main__":  # python -m ingress.config [--write docs/configuration.md]
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write_reference(sys.argv[2])
    else:
        print(reference_markdown(), end="")
