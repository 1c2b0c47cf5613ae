"""TOML configuration -> frozen, typed settings.

Every key is declared once, as an :class:`~ingress.options.Option` row with its
type, default and help text (fluent-bit's ``config_map`` habit). The agent-wide
rows are :data:`ingress.tables.OPTIONS`; each collector declares the rows of its
tenant table (``[tenants.<collector>]``) and each output type the rows it adds
to ``[[outputs]]``, next to their code, and :mod:`ingress.tables` gathers them
from the two registries, ``ingress.collect.COLLECTORS`` and ``ingress.outputs.OUTPUTS``.
The parser, the defaults and docs/configuration.md all come from those rows; a
test checks the page against them. Unknown keys are errors. Every error is a
:class:`~ingress.errors.ConfigError` whose message reads
``FILE:LINE: path: message`` (:mod:`ingress.locator` finds the line).

This module loads a file and checks it against those rows.
The value kinds (durations, URLs, ...) are in :mod:`ingress.options`.
"""
from __future__ import annotations

import difflib
import socket
import tomllib  # noqa: F401 - tests reach it as config.tomllib
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable

from ingress.errors import ConfigError
from ingress.locator import Ctx as _Ctx
from ingress.locator import Locator, format_path, read_toml
from ingress.locator import unknown as _unknown
from ingress.options import (COMPUTED, REQUIRED, Option, _Bad, _typename, check_hostname, format_duration,
                             parse_duration, url_problem)
from ingress.settings import (AgentSettings, AgentSpoolSettings, BatchSettings, BreakerSettings,
                              CollectSettings, ControlSettings, Limits, OutputSettings, RetrySettings,
                              Settings, TenantSettings, TenantSpoolSettings)
from ingress.tables import (OPTIONS, SECTIONS, TENANT_ID_RE, _OUTPUT_COMMON, _SECTION, _children,
                            _collector_table, _collectors, _options, _OutputType, _outputs, all_tables)

__all__ = [
    "Settings", "AgentSettings", "Limits", "CollectSettings", "AgentSpoolSettings",
    "BatchSettings", "ControlSettings", "TenantSettings", "TenantSpoolSettings", "OutputSettings",
    "RetrySettings", "BreakerSettings", "OPTIONS", "SECTIONS", "TENANT_ID_RE", "all_tables",
    "load", "loads", "default_settings", "parse_duration", "reference_markdown",
    "Locator", "locate", "ConfigError", "REQUIRED", "COMPUTED", "url_problem", "check_hostname",
]

MAX_DEPTH = 32  # arrays and tables nested deeper than this are refused (no config needs 5)


# --------------------------------------------------------------------------- parsing

def _parse_table(ctx: _Ctx, raw: Any, path: tuple, label: str, rows: Iterable[Option],
                 known: Iterable[str] = (), by_key: bool = False, given_only: bool = False,
                 required_for: str | None = None) -> dict[str, Any]:
    """Check one table against ``rows`` (plus ``known`` sub-keys); converted values by field.

    ``by_key``: keyed by the TOML key (collector options) instead of the field.
    ``given_only``: only the keys given at a value other than their default.
    """
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a table, got {_typename(raw)}")
    rows = list(rows)
    _unknown(ctx, raw, [o.key for o in rows] + list(known), path, label)
    out: dict[str, Any] = {}
    for o in rows:
        name = o.key if by_key else o.field
        if o.key in raw:
            try:
                v = o.kind.convert(raw[o.key])
            except _Bad as e:
                raise ctx.error(path + (o.key,) + e.sub, e.message) from None
            if given_only and o.default not in (None, REQUIRED, COMPUTED) and v == o.kind.convert(o.default):
                continue
            out[name] = v
        elif given_only:
            continue
        elif o.default is REQUIRED:
            what = f"required for a {required_for} output" if required_for else "required"
            raise ctx.error(path + (o.key,), f"missing: {what}")
        elif o.default is COMPUTED or o.default is None:
            out[name] = None
        else:
            out[name] = o.kind.convert(o.default)
    return out


def _parse_section(ctx: _Ctx, raw: Any, section: str, path: tuple, extra: Iterable[Option] = (),
                   known: Iterable[str] = (), required_for: str | None = None) -> dict[str, Any]:
    """One agent-wide table (plus ``extra`` rows); its sub-tables under their last name, parsed too."""
    sec = _SECTION[section]
    kids = _children(section)
    label = f"[[{section}]]" if sec.array else f"[{section}]"
    out = _parse_table(ctx, raw, path, label, _options(section) + list(extra),
                       [c.name.rpartition(".")[2] for c in kids] + list(known), required_for=required_for)
    for c in kids:
        short = c.name.rpartition(".")[2]
        sub = raw.get(short, [] if c.array else {})
        if c.array:
            if not isinstance(sub, list):
                raise ctx.error(path + (short,), f"expected an array of tables [[{c.name}]], "
                                                 f"got {_typename(sub)}")
            out[short] = [_parse_section(ctx, x, c.name, path + (short, i)) for i, x in enumerate(sub)]
        else:
            out[short] = _parse_section(ctx, sub, c.name, path + (short,))
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
    try:
        return _loads(ctx, read_toml(ctx, MAX_DEPTH))
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None


def _loads(ctx: _Ctx, raw: dict) -> Settings:
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
                        tenants=tenants, outputs=outputs, source=ctx.source)
    _cross_check(ctx, settings)
    return settings


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
        spool=AgentSpoolSettings(**a["spool"]), batch=BatchSettings(**a["batch"]),
        user=a["user"], group=a["group"], procfs=a["procfs"], sysfs=a["sysfs"],
        log_file=a["log_file"], log_max_mb=a["log_max_mb"], log_keep=a["log_keep"],
        allow_destinations=a["allow_destinations"])


def _check_interval(ctx: _Ctx, path: tuple, s: float, c: CollectSettings) -> None:
    if s < c.min_interval_s:
        raise ctx.error(path, f"{format_duration(s)} is shorter than agent.collect.min_interval "
                              f"({format_duration(c.min_interval_s)})")
    if s > c.max_interval_s:
        raise ctx.error(path, f"{format_duration(s)} is longer than agent.collect.max_interval "
                              f"({format_duration(c.max_interval_s)})")


def _near(word: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), 1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _build_tenant(ctx: _Ctx, raw: Any, i: int, agent: AgentSettings) -> TenantSettings:
    path = ("tenants", i)
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a table, got {_typename(raw)}")
    collectors = _collectors()
    own = [o.key for o in _options("tenants")] + [c.name.rpartition(".")[2] for c in _children("tenants")]
    tables = [k for k in raw if k not in own and k in collectors and _collector_table(k) is not None]
    for k in raw:
        if k not in own and k not in tables:
            choices = own + [n for n in collectors if _collector_table(n) is not None]
            raise ctx.error(path + (k,), f"unknown key in [[tenants]]{_near(k, choices)}")
    t = _parse_section(ctx, raw, "tenants", path, known=tables)
    for j, c in enumerate(t["collectors"]):
        if c not in collectors:
            raise ctx.error(path + ("collectors", j), f"{c!r} is not a collector; known: "
                                                      f"{', '.join(collectors)}{_near(c, collectors)}")
    if t["api_key_env"] is not None and t["api_key_file"] is not None:
        raise ctx.error(path + ("api_key_file",), "give api_key_env or api_key_file, not both")
    if t["interval_s"] is None:
        t["interval_s"] = agent.interval_s
    else:
        _check_interval(ctx, path + ("interval",), t["interval_s"], agent.collect)
    options: dict[str, Any] = {}
    for name in dict.fromkeys(list(t["collectors"]) + tables):
        decl = _collector_table(name)
        if decl is None:
            continue
        sec, rows = decl
        tp, given = path + (name,), raw.get(name)
        if sec.array:
            if given is not None and not isinstance(given, list):
                raise ctx.error(tp, f"expected an array of tables [[{sec.name}]], got {_typename(given)}")
            values: Any = tuple(MappingProxyType(_parse_table(ctx, x, tp + (j,), f"[[{sec.name}]]", rows,
                                                              by_key=True))
                                for j, x in enumerate(given or ()))
        else:
            values = MappingProxyType(_parse_table(ctx, {} if given is None else given, tp, f"[{sec.name}]",
                                                   rows, by_key=True, given_only=True))
        collectors[name].check_table(ctx, tp, values, given, name in t["collectors"])
        if name in t["collectors"]:
            options[name] = values
    return TenantSettings(
        id=t["id"], enabled=t["enabled"], collectors=t["collectors"], include=t["include"],
        exclude=t["exclude"], interval_s=t["interval_s"], tags=t["tags"],
        api_key_env=t["api_key_env"], api_key_file=t["api_key_file"],
        max_series=t["max_series"], spool=TenantSpoolSettings(**t["spool"]),
        collector_tables=MappingProxyType(options))


def _build_output(ctx: _Ctx, raw: Any, i: int, agent: AgentSettings) -> OutputSettings:
    path = ("outputs", i)
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a table, got {_typename(raw)}")
    outputs = _outputs()
    if "type" not in raw:
        raise ctx.error(path + ("type",), f"missing: required ({', '.join(outputs)})")
    try:
        otype = _OutputType().convert(raw["type"])
    except _Bad as e:
        raise ctx.error(path + ("type",), e.message) from None
    plugin = outputs[otype]
    mine = {o.key for o in plugin.options} | {o.key for o in _options("outputs")} | {"retry", "breaker"}
    for k in raw:
        if k not in mine:  # a key of another output type says so
            others = [n for n in outputs if n != otype and any(o.key == k for o in outputs[n].options)]
            if others:
                raise ctx.error(path + (k,), f"not a key of a {otype} output ({'/'.join(others)} only)")
    o = _parse_section(ctx, raw, "outputs", path, extra=plugin.options, required_for=otype)
    if o["name"] is None:
        o["name"] = f"{otype}-{i}"
    if plugin.check is not None:
        plugin.check(ctx, path, o, agent)
    retry, breaker = RetrySettings(**o["retry"]), BreakerSettings(**o["breaker"])
    if retry.backoff_initial_s > retry.backoff_max_s:
        raise ctx.error(path + ("retry", "backoff_initial"), "is longer than backoff_max")
    return OutputSettings(type=otype, name=o["name"], tenants=o["tenants"], format=o["format"],
                          retry=retry, breaker=breaker,
                          values=MappingProxyType({k: v for k, v in o.items() if k not in _OUTPUT_COMMON}))


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
        if _outputs()[o.type].needs_credential:
            for tid in (o.tenants or tuple(ids)):
                t = s.tenants[ids[tid]]
                if t.api_key_env is None and t.api_key_file is None:
                    where = ("outputs", i, "tenants", o.tenants.index(tid)) if o.tenants else ("outputs", i)
                    raise ctx.error(where, f"{o.type} output {o.name!r} serves tenant {tid!r}, which has "
                                           "no api_key_env or api_key_file")
    _check_destinations(ctx, s)
    for i, t in enumerate(s.tenants):
        if not any(o.serves(t.id) for o in s.outputs):
            raise ctx.error(("tenants", i, "id"), f"tenant {t.id!r} is served by no output; "
                                                  "its samples would never leave the host")


def _check_destinations(ctx: _Ctx, s: Settings) -> None:
    """Every output's and health check's destination must be allowed by agent.allow_destinations."""
    from ingress import destinations

    allow = [destinations.parse(p) for p in s.agent.allow_destinations]
    if not allow:
        return

    def refuse(path: tuple, what: str, dest: str) -> None:
        destinations.refused(what, dest)
        raise ctx.error(path, f"{what}: destination {dest!r} is not in agent.allow_destinations")

    for i, o in enumerate(s.outputs):
        plugin = _outputs()[o.type]
        if plugin.destinations is None:
            continue
        for key, dest in plugin.destinations(o):
            if not destinations.allowed(allow, dest):
                refuse(("outputs", i, key), f"output {o.name!r}", dest)
    for i, t in enumerate(s.tenants):
        for j, h in enumerate(t.collector_tables.get("health", ())):
            if h.get("url") is not None:
                key, dest = "url", destinations.url_destination(h["url"])
            elif h.get("tcp") is not None:
                key, dest = "tcp", h["tcp"]
            else:
                continue
            if not destinations.allowed(allow, dest):
                refuse(("tenants", i, "health", j, key), f"tenant {t.id!r} health check {h.get('name')!r}", dest)


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

    For errors found after loading (a collector refusing its options, an
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
    """The key reference of docs/configuration.md, generated from every table's rows."""
    out: list[str] = []
    for sec, rows, otype in all_tables():
        head = f"[[{sec.name}]]" if sec.array else f"[{sec.name}]"
        if otype is None:
            out += [f"### `{head}`", "", sec.help, ""]
        else:
            out += [f'### `{head}` with `type = "{otype}"`', "",
                    f"The keys a `{otype}` output takes besides the ones above.", ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for o in rows:
            out.append(f"| `{o.key}` | {o.kind.doc} | {o.default_text()} | {o.help.replace('|', chr(92) + '|')} |")
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
