"""The processes collector's views: which processes each tenant's selection takes.

A view is one tenant's ``match`` (name globs), ``users``, ``cmdline`` (a
regex) and ``top`` (the N busiest by CPU and by memory); without views the
collector's own options are its one view. :func:`select` runs every view over
one pass's columns, vectorised, and returns their union and each view's share
of it (docs/collectors.md#processes, point 6 of :mod:`ingress.collect.processes`).
"""
from __future__ import annotations

import logging
import pwd
import re
from fnmatch import fnmatchcase
from typing import Callable

import numpy as np

from ingress._core import _procfs as pf
from ingress.errors import ConfigError

log = logging.getLogger("ingress.collect.processes")
SELECTORS = ("match", "users", "cmdline", "top")


class View:
    """One tenant's selection (or the collector's own, without views)."""

    __slots__ = ("name", "globs", "uids", "users", "cmd_re", "top", "name_ok", "index")

    def __init__(self, index, name, globs, uids, users, cmd_re, top) -> None:
        self.index, self.name = index, name
        self.globs, self.uids, self.users, self.cmd_re, self.top = globs, uids, users, cmd_re, top
        self.name_ok: dict[bytes, bool] = {}


def make_view(index: int, name: str | None, sel, defaults: dict) -> View:
    """One selection from its table (``match``, ``users``, ``cmdline``, ``top``); ConfigError naming it."""
    where = "collector 'processes'" + ("" if name is None else f": view {name!r}")
    if not isinstance(sel, dict):
        raise ConfigError(f"{where}: {sel!r} is not a table of {', '.join(SELECTORS)}")
    unknown = sorted(set(sel) - set(SELECTORS))
    if unknown:
        raise ConfigError(f"{where}: unknown selector(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(SELECTORS)}")
    sel = {**{k: defaults[k] for k in SELECTORS}, **sel}
    top = sel["top"]
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ConfigError(f"{where}: option top: {top!r} is not a non-negative integer")
    try:
        cmd_re = re.compile(sel["cmdline"]) if sel["cmdline"] else None
    except re.error as e:
        raise ConfigError(f"{where}: option cmdline: {sel['cmdline']!r} is not a valid "
                          f"regular expression: {e}") from None
    return View(index, None if name is None else str(name), [str(g) for g in sel["match"]],
                 resolve_users(sel["users"]), bool(sel["users"]), cmd_re, top)


def resolve_users(users) -> np.ndarray:
    uids = []
    for u in users:
        s = str(u)
        if s.isdigit():
            uids.append(int(s))
            continue
        try:
            uids.append(pwd.getpwnam(s).pw_uid)
        except KeyError:
            # A user that does not exist on this host matches nothing here; not an error,
            # since one tenant configuration serves many hosts.
            log.warning("processes: user %r does not exist on this host; it matches no process", s)
    return np.array(uids, np.int64)


def select(views: list[View], keys, comm, st, rate, eligible, cmd_ok: Callable[[View, int], bool]) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The union of every view's selection (indices), and per view its share of it.

    With one view the second item is ``None``. Otherwise it holds, per view, a
    boolean mask over the union: the processes that view selected.
    """
    names = np.unique(comm, return_inverse=True) if any(v.globs for v in views) else None
    masks = [_select_view(v, keys, names, st, rate, eligible, cmd_ok) for v in views]
    union = masks[0] if len(masks) == 1 else np.logical_or.reduce(masks)
    sel = np.flatnonzero(union)
    if len(masks) == 1:
        return sel, None
    return sel, [m[sel] for m in masks]


def _select_view(v: View, keys, names, st, rate, eligible, cmd_ok: Callable[[View, int], bool]) -> np.ndarray:
    n = len(keys)
    filters = bool(v.globs) or v.users or v.cmd_re is not None
    matched = np.zeros(n, bool)
    if filters:
        matched = eligible.copy()
        if v.globs:
            uniq, inv = names  # np.unique(comm, return_inverse=True), once per pass
            ok = np.fromiter((_name_matches(v, u) for u in uniq.tolist()), bool, len(uniq))
            matched &= ok[inv]
        if v.users:  # configured users that do not exist here leave uids empty: nothing matches
            matched &= np.isin(st[:, pf.ST_UID], v.uids)
        if v.cmd_re is not None:
            for i in np.flatnonzero(matched).tolist():
                matched[i] = cmd_ok(v, int(keys[i]))
    top = v.top
    sel = matched
    if top > 0:
        cand = np.flatnonzero(eligible & (np.nan_to_num(rate) > 0))
        if len(cand) > top:
            cand = cand[np.argpartition(-rate[cand], top - 1)[:top]]
        sel[cand] = True
        rss = st[:, pf.ST_RSS]
        cand = np.flatnonzero(eligible & (rss > 0))
        if len(cand) > top:
            cand = cand[np.argpartition(-rss[cand], top - 1)[:top]]
        sel[cand] = True
    return sel


def _name_matches(v: View, name: bytes) -> bool:
    hit = v.name_ok.get(name)
    if hit is None:
        s = name.decode("utf-8", "replace")
        hit = any(fnmatchcase(s, g) for g in v.globs)
        if len(v.name_ok) > 65536:  # names come and go on busy build hosts
            v.name_ok.clear()
        v.name_ok[name] = hit
    return hit
