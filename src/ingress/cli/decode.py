"""``ingress decode``: batches, dead letters and .ibatch files to JSON lines or a table."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ingress.cli.common import iso, table
from ingress.errors import WireError


def _decode_records(name: str, data: bytes, path: Path | None) -> tuple[list[bytes], str | None]:
    """The batches in ``data`` and, when its tail is damaged, one line saying so.

    A single batch (magic ``INGB``), a dead letter (sealed or not), or a file of
    length-prefixed records (``u32`` big-endian length, then a batch): the file
    output's and the sink's ``.ibatch`` files.
    """
    from ingress import wire
    from ingress.errors import SpoolError
    from ingress.security.crypto import dead_letter_header, open_dead_letter

    if data[:4] == wire.MAGIC:
        return [data], None
    if dead_letter_header(data) is not None:
        try:  # a dead letter of an encrypting tenant is sealed
            return [open_dead_letter(data, path)], None
        except SpoolError as e:
            raise WireError(f"{name}: cannot decrypt: {e}") from None
    if not data:
        raise WireError(f"{name}: empty input: no batch")
    if len(data) >= 8 and data[4:8] == wire.MAGIC:
        out, off = [], 0
        while off < len(data):
            if len(data) - off < 4:
                return out, f"{name}: offset {off}: truncated length prefix ({len(data) - off} of 4 bytes)"
            n = int.from_bytes(data[off:off + 4], "big")
            if len(data) - off - 4 < n:
                return out, (f"{name}: offset {off}: record {len(out) + 1} is cut short "
                             f"({len(data) - off - 4} of {n} bytes)")
            out.append(data[off + 4:off + 4 + n])
            off += 4 + n
        return out, None
    if data.lstrip()[:1] == b"{":
        raise WireError(f"{name}: holds JSON (format json output or a dead letter's .json): nothing to decode")
    raise WireError(f"{name}: not a batch, a dead letter or a file of length-prefixed batches "
                    f"(starts with {bytes(data[:8])!r})")


def add_parser(sub: Any) -> None:
    """``decode``."""
    d = sub.add_parser("decode", help="decode a batch or a file of batches to JSON lines or a table",
                       description="Decode what ingress writes: a single batch, a file output's or the "
                                   "sink's .ibatch file (every length-prefixed record), a dead letter.")
    d.add_argument("file", nargs="?", default="-", metavar="FILE", help="the file; - or nothing: stdin")
    d.add_argument("--format", choices=("json", "table"), default=None,
                   help="json: one JSON line per sample (default when stdout is not a terminal); "
                        "table: aligned columns (default on a terminal)")
    d.add_argument("--stats", action="store_true",
                   help="per batch and in total: samples, series, bytes, bytes per sample, time range "
                        "(instead of the samples)")
    d.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> int:
    from ingress import wire
    from ingress.outputs.jsonfmt import batch_rows

    name = "<stdin>" if args.file == "-" else args.file
    path = None if args.file == "-" else Path(args.file)
    data = sys.stdin.buffer.read() if path is None else path.read_bytes()
    records, damage = _decode_records(name, data, path)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    out = sys.stdout
    stats = []
    for i, rec in enumerate(records):
        where = name if len(records) == 1 and damage is None else f"{name}: record {i + 1}"
        try:
            b = wire.decode(rec)
        except WireError as e:
            out.flush()
            raise WireError(f"{where}: not a valid batch: {e}") from None
        bid = b.batch_id.hex()
        idx, tss, vals = b.series_index.tolist(), b.timestamps.tolist(), b.values.tolist()
        series = b.series
        if args.stats:
            stats.append((bid, b.tenant, b.host, len(idx), len(set(idx)), len(rec),
                          min(tss) if tss else None, max(tss) if tss else None,
                          {(series[s][0], tuple(sorted(series[s][1].items()))) for s in set(idx)}))
            continue
        if fmt == "json":
            for row in batch_rows(b):
                out.write(json.dumps(row) + "\n")
        else:
            out.write(f"batch {bid}  tenant {b.tenant}  host {b.host}  samples {len(idx)}\n")
            rows = [["time (UTC)", "name", "tags", "value"]]
            for s, ts, v in zip(idx, tss, vals):
                metric, tags = series[s]
                rows.append([iso(ts), metric, ",".join(f"{k}={t}" for k, t in tags.items()), repr(v)])
            table(rows, {3}, out)
            out.write("\n")
    if args.stats:
        _print_stats(stats, fmt, out)
    out.flush()
    if damage:
        raise WireError(damage)
    return 0


def _print_stats(stats: list, fmt: str, out) -> None:
    n = sum(x[3] for x in stats)
    size = sum(x[5] for x in stats)
    lo = [x[6] for x in stats if x[6] is not None]
    hi = [x[7] for x in stats if x[7] is not None]
    every = set().union(*(x[8] for x in stats)) if stats else set()
    per = [dict(batch_id=x[0], tenant=x[1], host=x[2], samples=x[3], series=x[4], bytes=x[5],
                bytes_per_sample=round(x[5] / x[3], 3) if x[3] else None, ts_min=x[6], ts_max=x[7])
           for x in stats]
    total = dict(batch_id="total", tenant=",".join(sorted({x[1] for x in stats})),
                 host=",".join(sorted({x[2] for x in stats})), batches=len(stats), samples=n, series=len(every),
                 bytes=size, bytes_per_sample=round(size / n, 3) if n else None,
                 ts_min=min(lo) if lo else None, ts_max=max(hi) if hi else None)
    if fmt == "json":
        for row in per + [total]:
            out.write(json.dumps(row) + "\n")
        return
    rows = [["batch", "tenant", "host", "samples", "series", "bytes", "bytes/sample", "first (UTC)", "last (UTC)"]]
    for r in per + [total]:
        rows.append([r["batch_id"], r["tenant"], r["host"], str(r["samples"]), str(r["series"]), str(r["bytes"]),
                     "-" if r["bytes_per_sample"] is None else f"{r['bytes_per_sample']:.2f}",
                     "-" if r["ts_min"] is None else iso(r["ts_min"]),
                     "-" if r["ts_max"] is None else iso(r["ts_max"])])
    table(rows, {3, 4, 5, 6}, out)
