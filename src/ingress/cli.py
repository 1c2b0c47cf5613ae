"""The ``ingress`` command (docs/cli.md).

Every error a user can cause ends as one line on stderr and a non-zero exit,
never a traceback: configuration and corrupt input exit 2, everything else the
agent refuses (an output unusable at start-up, a missing credential, a locked
spool, an unreadable file) exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ingress import __version__
from ingress.errors import ConfigError, IngressError, WireError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the contract's error rule)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ingress", description="multi-tenant host metrics agent")
    p.add_argument("--version", action="version", version=f"ingress {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run the agent in the foreground",
                       description="Run the agent until SIGTERM/SIGINT, then stop gracefully.")
    r.add_argument("-c", "--config", metavar="FILE", help="configuration file (default: the embedded default)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true",
                   help="one collection cycle for every tenant, printed as JSON lines; sends nothing")
    g.add_argument("--duration", type=_seconds, metavar="S", help="run S seconds, then stop gracefully")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a configuration file; prints ok")
    c.add_argument("-c", "--config", metavar="FILE", help="configuration (default: the embedded one)")
    c.add_argument("--connect", action="store_true",
                   help="also probe every output once; one line per output; exit 1 unless all are reachable")
    c.set_defaults(func=cmd_check_config)

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

    s = sub.add_parser("spool", help="inspect the on-disk spool")
    ss = s.add_subparsers(dest="spool_command", metavar="COMMAND", required=True)
    st = ss.add_parser("stats", help="per tenant: segments, bytes, oldest sample age, samples pending")
    st.add_argument("-c", "--config", metavar="FILE", help="configuration (default: the embedded one)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_spool_stats)

    _add_keys_parser(sub)
    _add_tenants_parser(sub)
    _add_deadletter_parser(sub)

    k = sub.add_parser(
        "sink", help="run the reference receiver (HTTP and/or Kafka into a ClickHouse store)",
        description="Accept batches POSTed by ingress HTTP outputs (and/or read the agent's Kafka topics), "
                    "check each tenant, drop duplicate batch ids and store the samples in a "
                    "tenant-partitioned ClickHouse schema (docs/aggregator.md).")
    k.add_argument("--listen", default="127.0.0.1:8088", metavar="HOST:PORT",
                   help="address to listen on (default: %(default)s)")
    k.add_argument("--max-connections", type=int, metavar="N",
                   help="connections served at once; more are answered 503 (default: 128)")
    k.add_argument("--max-pending", type=int, metavar="N",
                   help="batches being stored at once; more are answered 503 with Retry-After (default: 32)")
    k.add_argument("--header-timeout", type=_seconds, metavar="S",
                   help="seconds a connection has for its request headers (default: 10)")
    k.add_argument("--idle-timeout", type=_seconds, metavar="S",
                   help="seconds a kept-alive connection waits for its next request (default: 30)")
    k.add_argument("--body-timeout", type=_seconds, metavar="S",
                   help="seconds an accepted request has for its body (default: 60)")
    k.add_argument("--store", metavar="URL",
                   help="PATH or chdb://PATH (embedded, the default: ./sink-data), clickhouse://HOST:PORT/DB, "
                        "or file://DIR (batch files, no queries)")
    k.add_argument("--data-dir", metavar="DIR", help="the file store in DIR (same as --store file://DIR)")
    k.add_argument("--keys", metavar="FILE",
                   help="TOML/JSON file: tenant = key (or \"sha256:<hex>\"); required for HTTP input")
    k.add_argument("--retention", metavar="DURATION",
                   help="keep samples this long, e.g. 30d (default: for ever); a TTL on the store")
    k.add_argument("--tenant-retention", action="append", metavar="T=DURATION",
                   help="this tenant's retention instead of --retention (repeat per tenant)")
    k.add_argument("--from-kafka", metavar="BROKERS", help="also consume the agent's Kafka topics from BROKERS")
    k.add_argument("--topic", metavar="TOPIC", help="with --from-kafka: the topic, or ^REGEX for several")
    k.add_argument("--group", default="ingress-sink", metavar="G",
                   help="with --from-kafka: the consumer group (default: %(default)s)")
    k.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    k.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert, if not in the same file")
    k.add_argument("--client-ca", metavar="FILE", help="require client certificates from this CA")
    # Decode limits (wire.DecodeLimits): a batch over one is refused with 400 bad_batch.
    for flag, field, kind, what, default in _SINK_LIMITS:
        k.add_argument(flag, dest=field, type=kind, metavar="N",
                       help=f"refuse a batch {what} (default: {default})")
    kq = k.add_subparsers(dest="sink_command", metavar="COMMAND")
    q = kq.add_parser("query", help="print one tenant's stored samples of one metric",
                      description="Print one tenant's stored samples of one metric: a table on a terminal, "
                                  "JSON lines (the --once fields plus host) otherwise.")
    q.add_argument("--store", default=argparse.SUPPRESS, metavar="URL",
                   help="the store (default: ./sink-data, as for ingress sink)")
    q.add_argument("--tenant", required=True, metavar="T")
    q.add_argument("--metric", required=True, metavar="NAME")
    q.add_argument("--tag", action="append", default=[], metavar="K=V", help="only series with this tag (repeat)")
    q.add_argument("--since", metavar="D", help="the last D (e.g. 10m, 2h, 7d)")
    q.add_argument("--from", dest="t_from", metavar="TS", help="from TS (ns since the epoch, or ISO 8601)")
    q.add_argument("--to", dest="t_to", metavar="TS", help="to TS, exclusive (default: now)")
    q.add_argument("--agg", choices=("avg", "sum", "max", "rate"), help="aggregate per series and --step")
    q.add_argument("--step", default="1m", metavar="D", help="with --agg: bucket width (default: %(default)s)")
    q.add_argument("--limit", type=int, default=100000, metavar="N", help="at most N rows (default: %(default)s)")
    q.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    q.set_defaults(func=cmd_sink_query)
    k.set_defaults(func=cmd_sink)
    return p


def _limit_count(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _limit_ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 1 <= v <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 255")
    return v


# flag, DecodeLimits field, type, help, default (the DecodeLimits default;
# tests/integration/test_sink_limits.py holds the two together)
_SINK_LIMITS = (
    ("--max-batch-samples", "max_samples", _limit_count, "of more than N samples", "1000000"),
    ("--max-batch-series", "max_series", _limit_count, "of more than N series", "250000"),
    ("--max-batch-tags", "max_tags", _limit_count, "of more than N tags over all its series",
     "1000000"),
    ("--max-batch-strings", "max_strings", _limit_count,
     "of more than N distinct strings in its dictionary", "500000"),
    ("--max-batch-string-bytes", "max_string_bytes", _limit_count,
     "whose dictionary strings hold more than N bytes", "16777216"),
    ("--max-batch-raw-bytes", "max_raw_bytes", _limit_count,
     "whose body decompresses to more than N bytes", "67108864"),
    ("--max-batch-ratio", "max_ratio", _limit_ratio,
     "whose lz4 body decompresses to more than N times its size (1 to 255)", "255"),
)


def _ts_arg(text: str, what: str) -> int:
    """ns since the epoch from digits or an ISO 8601 time (UTC unless it says otherwise)."""
    import datetime

    if text.strip().lstrip("-").isdigit():
        return int(text)
    try:
        d = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {text[:100]!r} is neither ns since the epoch nor an ISO 8601 time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return int(d.timestamp()) * 10**9 + d.microsecond * 1000


def cmd_sink_query(args: argparse.Namespace) -> int:
    import time

    from ingress.sink import parse_duration_s
    from ingress.sink_store import DEFAULT_STORE, open_store
    from ingress.sink_store.query import Query, run

    tags = {}
    for t in args.tag:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise ConfigError(f"--tag: {t[:100]!r} is not KEY=VALUE")
        tags[k] = v
    if args.since and (args.t_from or args.t_to):
        raise ConfigError("--since: give --since or --from/--to, not both")
    now = time.time_ns()
    t_from = now - parse_duration_s(args.since, "--since") * 10**9 if args.since else (
        _ts_arg(args.t_from, "--from") if args.t_from else None)
    t_to = _ts_arg(args.t_to, "--to") if args.t_to else None
    step = parse_duration_s(args.step, "--step")
    if args.limit < 1:
        raise ConfigError(f"--limit: {args.limit} must be at least 1")
    q = Query(args.tenant, args.metric, tags, t_from, t_to, args.agg, step, args.limit)
    from ingress.sink_store.query import build

    build(q)  # a bad tenant or step is a usage error before the store is opened
    store = open_store(getattr(args, "store", None) or DEFAULT_STORE)
    try:
        if not hasattr(store, "rows"):
            raise ConfigError("--store: the file store cannot be queried (use ingress decode on its files)")
        rows = run(store, q)
    finally:
        store.close()
    out = sys.stdout
    if args.json or not out.isatty():
        from ingress.agent import sample_json

        for r in rows:
            v = float("nan") if r["value"] is None else r["value"]
            out.write(sample_json(r["tenant"], r["name"], r["tags"], r["ts"], v, host=r["host"]) + "\n")
        out.flush()
        return 0
    table = [["time (UTC)", "host", "tags", "value"]]
    import datetime

    for r in rows:
        t = datetime.datetime.fromtimestamp(r["ts"] / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        tg = ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items()))
        table.append([t, r["host"], tg, "null" if r["value"] is None else f"{r['value']:g}"])
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    print(f"{args.tenant} {args.metric}" + (f" {args.agg} per {args.step}" if args.agg else "")
          + f": {len(rows)} rows")
    for row in table:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    # Imported here: the sink's HTTP server and TLS modules are no part of `ingress run`.
    from ingress import sink, wire

    given = {f: getattr(args, f) for _, f, *_ in _SINK_LIMITS if getattr(args, f) is not None}
    args.decode_limits = wire.DecodeLimits(**given)
    return sink.run(args)


def _settings(path: str | None):
    from ingress import config

    return config.load(path) if path else config.default_settings()


# --------------------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace) -> int:
    from ingress import hardening, logs
    from ingress.agent import Agent
    from ingress.transport.jsonfmt import sample_json

    # Before anything is opened: umask 077, no core dumps, no new privileges.
    hardened = hardening.harden() if not args.once else None
    settings = _settings(args.config)
    a = settings.agent
    if args.once:
        logs.configure(a.log_format, a.log_level)
    else:
        logs.configure(a.log_format, a.log_level, file=a.log_file, max_bytes=a.log_max_mb << 20, keep=a.log_keep)
    logs.install_excepthook()
    agent = Agent(settings)
    if args.once:
        out = sys.stdout
        for row in agent.collect_once():
            out.write(sample_json(*row) + "\n")
        out.flush()
        return 0
    log = logs.get_logger("ingress.cli")
    agent.containment.hardening = hardened or {}  # reported in the `started` line

    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping:  # a second SIGTERM/SIGINT during the graceful stop: exit now
            _exit_now(signum, log)
        stopping.append(signum)
        agent.request_stop()

    def on_hup(signum: int, _frame: Any) -> None:
        agent.request_reload(trigger="SIGHUP")  # run() reloads on its own thread

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.start()
        try:
            # The spool, the control port and the outputs are open: privilege is no longer needed.
            if a.user is not None or a.group is not None:
                _drop_privileges(a, log)
            agent.run(duration=args.duration)
        finally:
            stopping.append(0)  # the graceful stop (signal or --duration): a signal now exits at once
            agent.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _exit_now(signum: int, log: Any) -> None:
    """Leave at once, as a kill would: no drain, no closing. The spool stays consistent
    because it is built to survive a killed process (every accepted batch is on disk,
    a torn tail is truncated at the next open, delivery cursors are replaced atomically),
    so what was not acknowledged is sent after the next start. Exit status 128 + signal."""
    import logging

    name = signal.Signals(signum).name
    log.warning(f"{name} again during the graceful stop: exiting at once; what was not delivered "
                "stays in the spool for the next start", signal=name)
    for h in logging.getLogger("ingress").handlers:
        try:
            h.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(128 + signum)


def _drop_privileges(a: Any, log: Any) -> None:
    """Switch to ``agent.user`` / ``agent.group``; the data directory becomes theirs first."""
    import grp
    import pwd

    from ingress import hardening

    try:
        pw = None
        if a.user is not None:
            try:
                pw = pwd.getpwuid(int(a.user)) if a.user.isdigit() else pwd.getpwnam(a.user)
            except KeyError:
                raise KeyError(f"agent.user: no user {a.user!r}") from None
        gid = -1 if pw is None else pw.pw_gid
        if a.group is not None:
            try:
                gid = (grp.getgrgid(int(a.group)) if a.group.isdigit() else grp.getgrnam(a.group)).gr_gid
            except KeyError:
                raise KeyError(f"agent.group: no group {a.group!r}") from None
        if os.geteuid() == 0:
            uid = -1 if pw is None else pw.pw_uid
            # The spool keeps creating segments after the switch: its tree must belong to the new user.
            for root, dirs, files in os.walk(a.data_dir):
                for name in [root, *(os.path.join(root, f) for f in dirs + files)]:
                    os.chown(name, uid, gid, follow_symlinks=False)
        done = hardening.drop_privileges(a.user, a.group)
    except KeyError as e:
        raise IngressError(str(e.args[0]) if e.args else "agent.user: unknown") from None
    except PermissionError as e:
        raise IngressError(f"agent.user: {e}") from None
    log.info("privileges dropped", user=a.user, group=a.group, now=done)

def cmd_check_config(args: argparse.Namespace) -> int:
    from ingress.agent import build_collectors, plan_collectors
    from ingress.tenants import TenantSet

    settings = _settings(args.config)
    # Also what only the build can tell: every collector exists and takes its options.
    build_collectors(plan_collectors(TenantSet(settings.tenants).enabled), settings)
    from ingress.control import validate as validate_control

    validate_control(settings)  # [control]: TLS off loopback, allow-list CIDRs
    from ingress.config import locate
    from ingress.transport import OUTPUTS

    for i, o in enumerate(settings.outputs):  # what only the client library can tell (librdkafka keys)
        validate = OUTPUTS[o.type].validate
        if validate is not None:
            validate(o, lambda keys, i=i: locate(settings, ("outputs", i, *keys)))
    print("ok")
    if not args.connect:
        return 0
    return 0 if _probe_outputs(settings) else 1


def _probe_outputs(settings) -> bool:
    """``check-config --connect``: each output probed once, one line each; whether all answered."""
    from ingress.logs import redact
    from ingress.transport.plugin import build_outputs

    import logging

    # The outputs' own log lines (a Kafka client reporting its brokers down) would repeat the
    # probe lines on stderr: each output's answer is its one line below.
    logging.getLogger("ingress").setLevel(logging.CRITICAL)
    outs = build_outputs(settings, lambda tenant: "")  # probes send nothing, so no credential
    ok = True
    for i, out in enumerate(outs):
        label = f"outputs[{i}] {out.name}"
        probe = getattr(out, "connect_probe", None)
        if probe is None:
            print(f"{label}: not probed ({settings.outputs[i].type} outputs have no probe)", flush=True)
            continue
        try:
            probe()
            print(f"{label}: reachable", flush=True)
        except Exception as e:  # noqa: BLE001 - any failure is this output's answer
            ok = False
            why = " ".join((str(e) or type(e).__name__).split())
            print(f"{label}: unreachable: {redact(why)}", flush=True)
        finally:
            try:
                out.close()
            except Exception:  # noqa: BLE001
                pass
    return ok


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


def _iso(ts_ns: int) -> str:
    import datetime as _dt

    try:
        t = _dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts_ns)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ns % 1_000_000_000:09d}Z"


def _table(rows: list[list[str]], right: set[int], out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.rjust(w) if i in right else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip() + "\n")


def cmd_decode(args: argparse.Namespace) -> int:
    from ingress import wire
    from ingress.transport.jsonfmt import batch_rows

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
                rows.append([_iso(ts), metric, ",".join(f"{k}={t}" for k, t in tags.items()), repr(v)])
            _table(rows, {3}, out)
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
                     "-" if r["ts_min"] is None else _iso(r["ts_min"]),
                     "-" if r["ts_max"] is None else _iso(r["ts_max"])])
    _table(rows, {3, 4, 5, 6}, out)


STATS_COLUMNS = (("tenant", "tenant"), ("segments", "segments"), ("bytes", "bytes"),
                 ("oldest_age_s", "oldest age (s)"), ("samples_pending", "samples pending"),
                 ("batches_pending", "batches pending"), ("dropped_batches", "dropped batches"),
                 ("dropped_samples", "dropped samples"), ("corrupt_records", "corrupt records"),
                 ("torn_tails", "torn tails"), ("damaged_files", "damaged files"),
                 ("dead_letters", "dead letters"), ("dead_letter_bytes", "dead letter bytes"),
                 ("dead_letters_dropped", "dead letters dropped"))


def _dead_letters(data_dir: Path, tenant: str) -> int:
    """Dead letters of a tenant on disk: ``deadletter/<tenant>/<output>/<batch id>.batch``."""
    n = 0
    try:
        for out in (data_dir / "deadletter" / tenant).iterdir():
            if out.is_dir():
                n += sum(1 for f in out.iterdir() if f.name.endswith(".batch") and not f.name.startswith("."))
    except OSError:
        pass
    return n


def cmd_spool_stats(args: argparse.Namespace) -> int:
    from ingress.spool import stats_for

    settings = _settings(args.config)
    outputs = {t.id: [o.name for o in settings.outputs if o.serves(t.id)] for t in settings.tenants}
    # Read-only: takes no lock and changes nothing, so it is safe next to a running agent.
    stats = stats_for(settings.agent.data_dir, outputs)
    for t in settings.tenants:  # a tenant that never spooled has no directory yet
        stats.setdefault(t.id, {k: 0 for k, _ in STATS_COLUMNS[1:]} | {"oldest_age_s": 0.0})
    from ingress.transport.deadletter import usage

    for tid, st in stats.items():
        area = usage(settings.agent.data_dir, tid)
        st["dead_letters"] = _dead_letters(Path(settings.agent.data_dir), tid)
        st["dead_letter_bytes"], st["dead_letters_dropped"] = area["bytes"], area["dropped"]
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    rows = [[h for _, h in STATS_COLUMNS]]
    held = []
    for tid in sorted(stats):
        st = stats[tid]
        if "held" in st:
            held.append(f"{tid}: held: {st['held']}")
        row = [tid]
        for key, _ in STATS_COLUMNS[1:]:
            v = st.get(key, "-" if "held" in st else 0)
            row.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    for line in held:  # the agent does not collect or send for these until the reason is fixed
        print(line)
    return 0


# --------------------------------------------------------------------------- keys (control API)

def _add_keys_parser(sub: Any) -> None:
    k = sub.add_parser("keys", help="control-API keys: create, list, revoke, rotate",
                       description="Manage the keys of the control API (docs/keys.md). Only a salted "
                                   "hash of each key is stored; a new key is printed once.")
    ks = k.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    c = ks.add_parser("create", help="create a key; prints it once, as the last word of the last line")
    c.add_argument("--tenant", required=True, metavar="T", help="the tenant the key reads (admin: any)")
    c.add_argument("--scope", choices=("tenant", "admin"), default="tenant",
                   help="tenant: that tenant only (default); admin: every tenant")
    c.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 30d, 12h (default: none)")
    c.add_argument("--name", default="", metavar="NOTE", help="a note shown by `keys list`")
    c.set_defaults(func=cmd_keys_create)
    ls = ks.add_parser("list", help="list keys (never the secret)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_keys_list)
    r = ks.add_parser("revoke", help="revoke a key now")
    r.add_argument("key_id", metavar="KEY_ID")
    r.set_defaults(func=cmd_keys_revoke)
    o = ks.add_parser("rotate", help="issue a successor; the old key stays valid for a grace period")
    o.add_argument("key_id", metavar="KEY_ID")
    o.add_argument("--grace", default="24h", metavar="DURATION",
                   help="how long the old key stays valid (default: %(default)s)")
    o.set_defaults(func=cmd_keys_rotate)
    for p in (c, ls, r, o):
        p.add_argument("-c", "--config", metavar="FILE", help="configuration (default: the embedded one)")


def _keystore(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from ingress.security import audit
    from ingress.security.keys import KeyStore

    settings = _settings(args.config)
    store = KeyStore(settings.agent.data_dir)
    store._ensure_dir()
    log = audit.AuditLog(settings.agent.data_dir / audit.AUDIT_FILE, settings.control.audit_max_mb << 20,
                         settings.control.audit_keep)
    return settings, store, log


def cmd_keys_create(args: argparse.Namespace) -> int:
    from ingress.security.audit import local_actor
    from ingress.security.keys import parse_expiry

    settings, store, audit = _keystore(args)
    expires = parse_expiry(args.expires) if args.expires else None
    if args.tenant not in {t.id for t in settings.tenants}:
        raise ConfigError(f"--tenant: {args.tenant!r} is not a tenant of {settings.source}")
    rec, token = store.create(args.tenant, args.scope, expires, args.name)
    audit.record("key_created", "ok", actor=local_actor(), tenant=rec.tenant, key_id=rec.id, scope=rec.scope,
                 expires=rec.expires)
    print(f"created key {rec.id} (tenant {rec.tenant}, scope {rec.scope}"
          + (f", expires {_when(rec.expires)}" if rec.expires else "") + ")")
    print("store it now; it is not shown again:")
    print(token)
    return 0


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_keys_list(args: argparse.Namespace) -> int:
    _settings_, store, _ = _keystore(args)
    rows = list(store.iter_public())
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    table = [["id", "tenant", "scope", "state", "created", "expires", "revoked", "name"]]
    for r in rows:
        table.append([r["id"], r["tenant"], r["scope"], r["state"], _when(r["created"]), _when(r["expires"]),
                      _when(r["revoked"]), r["name"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from ingress.security.audit import local_actor

    _s, store, audit = _keystore(args)
    rec = store.revoke(args.key_id)
    audit.record("key_revoked", "ok", actor=local_actor(), tenant=rec.tenant, key_id=rec.id)
    print(f"revoked key {rec.id} (tenant {rec.tenant})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from ingress.security.audit import local_actor
    from ingress.security.keys import parse_expiry

    _s, store, audit = _keystore(args)
    grace = parse_expiry(args.grace) if args.grace not in ("0", "0s") else 0.0
    old, new, token = store.rotate(args.key_id, grace)
    audit.record("key_rotated", "ok", actor=local_actor(), tenant=new.tenant, key_id=old.id, successor=new.id,
                 old_valid_until=old.revoked)
    print(f"key {old.id} rotated: it stays valid until {_when(old.revoked)}; successor {new.id}")
    print("store it now; it is not shown again:")
    print(token)
    return 0


# --------------------------------------------------------------------------- dead letters

def _add_deadletter_parser(sub: Any) -> None:
    d = sub.add_parser("deadletter", help="dead letters: list, replay, purge",
                       description="Batches a backend refused for good (docs/delivery.md#dead-letters).")
    ds = d.add_subparsers(dest="deadletter_command", metavar="COMMAND", required=True)
    ls = ds.add_parser("list", help="tenant, output, batch id, reason, size, time of each dead letter")
    ls.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    ls.set_defaults(func=cmd_deadletter_list)
    r = ds.add_parser("replay", help="send them again through the spool (the running agent picks them up)")
    r.set_defaults(func=cmd_deadletter_replay)
    p = ds.add_parser("purge", help="remove them for good (audited)")
    p.set_defaults(func=cmd_deadletter_purge)
    for x in (ls, r, p):
        x.add_argument("-c", "--config", metavar="FILE", required=True)
        x.add_argument("--tenant", metavar="T", help="only this tenant's")
        x.add_argument("--output", metavar="NAME", help="only those of this output")
        x.add_argument("--batch", metavar="ID", help="only this batch id (32 hex digits)")


def _dead_letter_selection(args: argparse.Namespace) -> tuple[Any, list]:
    from ingress.transport.deadletter import scan

    settings = _settings(args.config)
    if args.tenant is not None and args.tenant not in {t.id for t in settings.tenants}:
        from ingress.names import is_tenant_id

        if not is_tenant_id(args.tenant):
            raise ConfigError(f"--tenant: {args.tenant!r} is not a valid tenant id")
    if args.batch is not None and (len(args.batch) != 32 or any(c not in "0123456789abcdef" for c in args.batch)):
        raise ConfigError(f"--batch: {args.batch!r} is not a batch id (32 lowercase hex digits)")
    dls = [d for d in scan(settings.agent.data_dir, args.tenant)
           if (args.output is None or d.output == args.output) and (args.batch is None or d.batch_id == args.batch)]
    return settings, dls


def cmd_deadletter_list(args: argparse.Namespace) -> int:
    _s, dls = _dead_letter_selection(args)
    if args.json:
        for d in dls:
            print(json.dumps(d.row(), sort_keys=True))
        return 0
    rows = [["tenant", "output", "batch id", "size", "time", "replay", "reason"]]
    for d in dls:
        rows.append([d.tenant, d.output, d.batch_id, str(d.size), _when(d.time), "queued" if d.replay else "",
                     d.reason])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip())
    return 0


def _cli_audit(settings: Any) -> Any:
    from ingress.security import audit

    return audit.AuditLog(settings.agent.data_dir / audit.AUDIT_FILE, settings.control.audit_max_mb << 20,
                          settings.control.audit_keep)


def cmd_deadletter_replay(args: argparse.Namespace) -> int:
    """Queue the selection for replay; when no agent holds the spool, put them back in it now."""
    from ingress.errors import SpoolError
    from ingress.security.audit import local_actor
    from ingress.transport.deadletter import mark_replay, requeue

    settings, dls = _dead_letter_selection(args)
    audit = _cli_audit(settings)
    for d in dls:
        mark_replay(d)
        audit.record("deadletter_replay_requested", "ok", actor=local_actor(), tenant=d.tenant, output=d.output,
                     batch_id=d.batch_id)
    if not dls:
        print("no dead letters selected")
        return 0
    configured = {t.id for t in settings.tenants}
    try:
        from ingress.agent import _open_spool

        spool = _open_spool(settings)
    except SpoolError as e:
        if "in use by another process" not in str(e):
            raise
        print(f"{len(dls)} dead letters queued for replay; the running agent puts them back in its spool "
              "within a few seconds")
        return 0
    failed = 0
    try:
        for d in dls:
            try:
                if d.tenant not in configured:
                    raise IngressError(f"{d.path}: tenant {d.tenant!r} is not configured")
                requeue(spool, d, spool.outputs_for(d.tenant))
            except IngressError as e:
                failed += 1
                d.path.with_suffix(".replay").unlink(missing_ok=True)
                print(_one_line(str(e)), file=sys.stderr)
                audit.record("deadletter_replayed", "failed", actor=local_actor(), tenant=d.tenant,
                             output=d.output, batch_id=d.batch_id, reason=_one_line(str(e)))
                continue
            audit.record("deadletter_replayed", "ok", actor=local_actor(), tenant=d.tenant, output=d.output,
                         batch_id=d.batch_id)
    finally:
        spool.close()
    print(f"{len(dls) - failed} dead letters back in the spool; the agent sends them at its next start"
          + (f"; {failed} could not be replayed (see above)" if failed else ""))
    return 1 if failed else 0


def cmd_deadletter_purge(args: argparse.Namespace) -> int:
    from ingress.security.audit import local_actor
    from ingress.transport.deadletter import remove

    settings, dls = _dead_letter_selection(args)
    audit = _cli_audit(settings)
    for d in dls:
        remove(d)
        audit.record("deadletter_purged", "ok", actor=local_actor(), tenant=d.tenant, output=d.output,
                     batch_id=d.batch_id, bytes=d.size)
    print(f"{len(dls)} dead letters removed")
    return 0


# --------------------------------------------------------------------------- entry point

def _one_line(text: str) -> str:
    from ingress.logs import redact

    return redact("; ".join(x.strip() for x in str(text).splitlines() if x.strip()) or "error")


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename else what


# --------------------------------------------------------------------------- tenants purge

def _add_tenants_parser(sub: Any) -> None:
    t = sub.add_parser("tenants", help="manage tenants' data: purge a removed tenant")
    ts = t.add_subparsers(dest="tenants_command", metavar="COMMAND", required=True)
    pg = ts.add_parser("purge", help="remove a tenant that is no longer configured, for good",
                       description="Removes the tenant's data key first (its encrypted data becomes "
                                   "unreadable), then its spool, dead letters and file outputs. Refused "
                                   "while the tenant is configured or an agent holds the spool. Audited.")
    pg.add_argument("tenant", metavar="T")
    pg.add_argument("-c", "--config", metavar="FILE", help="configuration (default: the embedded one)")
    pg.add_argument("--yes", action="store_true", help="really remove; without it, list what would go")
    pg.set_defaults(func=cmd_tenants_purge)


def cmd_tenants_purge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ingress import purge
    from ingress.names import is_tenant_id
    from ingress.security import audit
    from ingress.security.audit import local_actor

    settings = _settings(args.config)
    if not is_tenant_id(args.tenant):
        raise ConfigError(f"{args.tenant!r} is not a valid tenant id")
    if not args.yes:
        for what, p in purge.tenant_paths(settings, args.tenant):
            if Path(p).exists():
                print(f"would remove {what}: {p}")
        print(f"nothing removed: add --yes to purge tenant {args.tenant!r} for good", file=sys.stderr)
        return 2
    log = audit.AuditLog(settings.agent.data_dir / audit.AUDIT_FILE, settings.control.audit_max_mb << 20,
                         settings.control.audit_keep)
    report = purge.purge_tenant(settings, args.tenant, audit=log, actor=local_actor())
    for what, p, n in report.removed:
        print(f"removed {what}: {p} ({n} bytes)")
    print(f"tenant {args.tenant!r} purged: {report.bytes} bytes removed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, WireError) as e:
        print(_one_line(str(e)), file=sys.stderr)
        return 2
    except IngressError as e:
        print(_one_line(str(e)), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `ingress run --once | head`: the reader left; that is not an error.
        try:
            sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - silence the interpreter's final flush
        except OSError:
            pass
        return 0
    except OSError as e:
        print(_one_line(_os_error(e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
