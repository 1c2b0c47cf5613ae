"""Where a key is in the TOML text: :class:`Locator`, and the error context built on it.

:mod:`tomllib` reports no line numbers for values, so :class:`Locator` finds
them by scanning the source text; :class:`Ctx` turns a setting path and a
message into the ``FILE:LINE: path: message`` :class:`~ingress.errors.ConfigError`
every configuration error reads as (the :class:`~ingress.options.ErrorAt` that
plugins report through).
"""
from __future__ import annotations

import difflib
import json
import re
import tomllib
from typing import Any, Iterable

from ingress.errors import ConfigError
from ingress.options import _BARE

__all__ = ["Locator", "Ctx", "format_path", "unknown", "read_toml", "too_deep_line", "deep_path"]




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

class Ctx:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        self._loc: Locator | None = None

    def error(self, path: tuple, message: str) -> ConfigError:
        if self._loc is None:
            self._loc = Locator(self.text)
        line = self._loc.line(path)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {format_path(path)}: {message}" if path else f"{where}: {message}")


def unknown(ctx: Ctx, raw: dict, known: Iterable[str], path: tuple, where: str) -> None:
    known = list(known)
    for k in raw:
        if k not in known:
            near = difflib.get_close_matches(k, known, 1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ctx.error(path + (k,), f"unknown key in {where}{hint}")


def too_deep_line(text: str, limit: int) -> int | None:
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


def deep_path(raw: Any, limit: int) -> tuple | None:
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


def read_toml(ctx: Ctx, max_depth: int) -> dict:
    """``ctx.text`` parsed, or a ConfigError with the line: invalid TOML, or nested past ``max_depth``.

    RecursionError passes through (the caller names it); nesting past
    ``max_depth`` is refused before :mod:`tomllib` could recurse that deep.
    """
    text, source = ctx.text, ctx.source
    deep = too_deep_line(text, max_depth)
    if deep:
        raise ConfigError(f"{source}:{deep}: invalid TOML: arrays or tables nested more than "
                          f"{max_depth} levels deep")
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
    path = deep_path(raw, max_depth)
    if path is not None:
        raise ctx.error(path, f"nested more than {max_depth} levels deep")
    return raw
