"""The tenant's loss counters, ``spool/<tenant>/counters.json``, and damaged state files.

Format: one JSON object, at most 1 MiB, with the cumulative counts
``dropped_batches``, ``dropped_samples``, ``torn_tails``, ``corrupt_records``
and ``damaged_files`` (integers, 0 .. 2**63-1) and ``corrupt_by_segment``
(``{"<seq>": regions}``: damaged regions of a live segment already counted, so
reopening does not count them again). It is written whole or not at all
(:func:`ingress._fs.write_atomic`: temp file, fsync, rename, fsync of the
directory) whenever a count changes.

Recovery rule: the file is read and every field checked; arbitrary bytes, a
JSON value of the wrong type, a non-integer, NaN, ``1e999`` or deep nesting
make it *damaged*: the writer renames it to ``counters.json.damaged`` (kept for
whoever investigates, never read again), counts it in ``damaged_files`` and
keeps every field that was still a sane count. A damaged file never holds the
tenant.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ingress._fs import write_atomic
from ingress.logs import get_logger
from ingress.spool.index import _I64_MAX, _Tenant

log = get_logger("ingress.spool")

COUNTERS = "counters.json"
DAMAGED_SUFFIX = ".damaged"  # a state file set aside: never read again, kept for whoever investigates
_COUNTERS_MAX = 1 << 20
_COUNTER_KEYS = ("dropped_batches", "dropped_samples", "torn_tails", "corrupt_records", "damaged_files")


def _sane_count(v: object) -> bool:
    return type(v) is int and 0 <= v <= _I64_MAX


def _set_aside(path: Path) -> None:
    """Rename a damaged state file to ``<name>.damaged`` (replacing an older one)."""
    try:
        os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
    except FileNotFoundError:
        pass


def read_counters(t: _Tenant, readonly: bool) -> tuple[dict, int]:
    """The persisted counters, each checked; and 1 when the file is damaged (else 0).

    Never raises for the file's content: arbitrary bytes, a JSON value of
    the wrong type, a non-integer, NaN, ``1e999`` or deep nesting make the
    file damaged; every field that is still a sane count is kept.
    """
    p = t.dir / COUNTERS
    try:
        with open(p, "rb") as f:
            raw = f.read(_COUNTERS_MAX + 1)
    except FileNotFoundError:
        return {}, 0
    problem = None
    out: dict = {}
    c: object = None
    if len(raw) > _COUNTERS_MAX:
        problem = f"larger than {_COUNTERS_MAX} bytes"
    else:
        try:
            c = json.loads(raw)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            problem = f"not JSON ({type(e).__name__})"
    if problem is None and not isinstance(c, dict):
        problem = f"a JSON {type(c).__name__}, not an object"
    if problem is None:
        bad = []
        for k in _COUNTER_KEYS:
            if k not in c:
                continue
            v = c[k]
            if _sane_count(v):
                out[k] = v
            else:
                bad.append(k)
        by_seg = c.get("corrupt_by_segment", {})
        if isinstance(by_seg, dict) and all(isinstance(k, str) and k.isascii() and k.isdigit()
                                            and len(k) <= 20 and _sane_count(v)
                                            for k, v in by_seg.items()):
            out["corrupt_by_segment"] = {int(k): v for k, v in by_seg.items()}
        else:
            bad.append("corrupt_by_segment")
        if bad:
            problem = f"field(s) {', '.join(bad)} not a count"
    if problem is not None:
        aside = f"set aside as {COUNTERS}{DAMAGED_SUFFIX}" if not readonly else "counted"
        log.warning(f"{p}: damaged counters ({problem}); {aside}; the counts it held are lost",
                    tenant=t.id, path=str(p))
        return out, 1
    return out, 0


def counters_of(t: _Tenant) -> dict:
    c = {"dropped_batches": t.dropped_b, "dropped_samples": t.dropped_s, "torn_tails": t.torn_tails,
         "corrupt_records": t.corrupt, "damaged_files": t.damaged}
    if t.corrupt_seen:
        c["corrupt_by_segment"] = dict(t.corrupt_seen)
    return c


def save_counters(t: _Tenant) -> None:
    p = t.dir / COUNTERS
    c = counters_of(t)
    if "corrupt_by_segment" in c:
        c["corrupt_by_segment"] = {str(k): v for k, v in c["corrupt_by_segment"].items()}
    try:
        write_atomic(p, json.dumps(c).encode())
    except OSError as e:
        log.error(f"{p}: cannot save the loss counters: {e}", tenant=t.id, path=str(p))
