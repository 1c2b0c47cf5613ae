"""The value kinds of the configuration and the rows that declare keys.

A key is declared once, as an :class:`Option` row: where it lives (its
:class:`Section`), its :class:`Kind` (how the TOML value is checked and
converted), its default and its help text. :mod:`ingress.config` holds the
agent-wide rows; every collector and output declares its own rows next to its
code with these same kinds, and imports this module, not :mod:`ingress.config`
(which gathers them all).

A kind raises :class:`Bad` for a wrong value; the parser turns that into a
``FILE:LINE: path: message`` :class:`~ingress.errors.ConfigError`. A plugin's
own cross-key checks report through the :class:`ErrorAt` they are handed.

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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

from ingress import names
from ingress.errors import ConfigError

__all__ = [
    "Bad", "Kind", "Str", "PathKind", "Hostname", "Bool", "Int", "Float", "Duration", "Fsync",
    "Enum", "StrList", "Regex", "HostPort", "Brokers", "Url", "StrMap", "Headers", "Scalars",
    "Option", "Section", "REQUIRED", "COMPUTED", "ErrorAt", "parse_duration", "format_duration",
    "split_host_port", "url_problem", "check_hostname", "toml_repr", "typename",
]

MAX_HOSTNAME_BYTES = 255  # what the batch header holds
_BARE = re.compile(r"[A-Za-z0-9_-]+")


class ErrorAt(Protocol):
    """Where a plugin's checks report: ``error(path, message)`` returns the
    ``FILE:LINE: path: message`` error to raise (the line found from ``path``)."""

    def error(self, path: tuple, message: str) -> ConfigError: ...


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


def _secret_ref(x: Any, k: str) -> Any:
    """A ``{ env = ... }`` / ``{ file = ... }`` table -> an unresolved SecretRef (:mod:`ingress.secretref`)."""
    from ingress.secretref import parse_ref

    try:
        return parse_ref(x)
    except ValueError as e:
        raise _Bad(str(e), (k,)) from None


class StrMap(Kind):
    def __init__(self, key: re.Pattern, doc: str = "table of strings", what: str = "name",
                 secrets: bool = False) -> None:
        self.key, self.doc, self.what, self.secrets = key, doc, what, secrets

    def convert(self, v: Any) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise _Bad(f"expected a table, got {_typename(v)} {_toml_repr(v)}")
        out = dict(v)
        for k, x in v.items():
            if not names.fullmatch(self.key, k):
                raise _Bad(f"{_show(k)} is not a valid {self.what} (expected {names.text(self.key)})", (k,))
            if self.secrets and isinstance(x, dict):
                out[k] = _secret_ref(x, k)
                continue
            if not isinstance(x, str):
                raise _Bad(f"expected a string, got {_typename(x)} {_toml_repr(x)}", (k,))
            self.check_value(k, x)
        return MappingProxyType(out)

    def check_value(self, key: str, value: str) -> None:
        pass


class Headers(StrMap):
    """HTTP header fields: token names; one-line, Latin-1 values (never quoted in errors)."""

    def __init__(self) -> None:
        super().__init__(names.HEADER_NAME_RE, doc="table of strings or secret references",
                         what="header name", secrets=True)

    def check_value(self, key: str, value: str) -> None:
        problem = names.header_value_problem(value)
        if problem:
            raise _Bad(f"the value {problem}", (key,))


class Scalars(Kind):
    """A table of strings, numbers and booleans; a value may be a secret reference
    (``{ env = "NAME" }`` or ``{ file = "/path" }``, resolved by the output's check)."""

    doc = "table"

    def convert(self, v: Any) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise _Bad(f"expected a table, got {_typename(v)} {_toml_repr(v)}")
        out = dict(v)
        for k, x in v.items():
            if isinstance(x, dict):
                out[k] = _secret_ref(x, k)
            elif not isinstance(x, (str, int, float, bool)):
                raise _Bad(f"expected a string, number, boolean or secret reference, got {_typename(x)}", (k,))
        return MappingProxyType(out)


# --------------------------------------------------------------------------- rows

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
    """A table of the file (``array``: an array of tables, ``[[name]]``) with its help."""

    name: str
    array: bool
    help: str


Bad = _Bad
toml_repr = _toml_repr
typename = _typename
split_host_port = _split_host_port
