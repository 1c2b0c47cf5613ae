"""The ``ingress`` command (docs/cli.md).

Every error a user can cause ends as one line on stderr and a non-zero exit,
never a traceback: configuration and corrupt input exit 2, everything else the
agent refuses (an output unusable at start-up, a missing credential, a locked
spool, an unreadable file) exits 1.
"""
from __future__ import annotations

import argparse
import json
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
    c.add_argument("-c", "--config", metavar="FILE", required=True)
    c.set_defaults(func=cmd_check_config)

    d = sub.add_parser("decode", help="decode one batch to JSON lines")
    d.add_argument("file", nargs="?", default="-", metavar="FILE", help="the batch; - or nothing: stdin")
    d.set_defaults(func=cmd_decode)

    s = sub.add_parser("spool", help="inspect the on-disk spool")
    ss = s.add_subparsers(dest="spool_command", metavar="COMMAND", required=True)
    st = ss.add_parser("stats", help="per tenant: segments, bytes, oldest sample age, samples pending")
    st.add_argument("-c", "--config", metavar="FILE", required=True)
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_spool_stats)

    _add_keys_parser(sub)

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
    from ingress import logs
    from ingress.agent import Agent, sample_json

    settings = _settings(args.config)
    logs.configure(settings.agent.log_format, settings.agent.log_level)
    logs.install_excepthook()
    agent = Agent(settings)
    if args.once:
        out = sys.stdout
        for row in agent.collect_once():
            out.write(sample_json(*row) + "\n")
        out.flush()
        return 0

    def on_signal(signum: int, _frame: Any) -> None:
        agent.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.start()
        try:
            agent.run(duration=args.duration)
        finally:
            agent.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from ingress.agent import build_collectors, plan_collectors
    from ingress.tenants import TenantSet

    settings = _settings(args.config)
    # Also what only the build can tell: every collector exists and takes its options.
    build_collectors(plan_collectors(TenantSet(settings.tenants).enabled), settings)
    from ingress.control import validate as validate_control

    validate_control(settings)  # [control]: TLS off loopback, allow-list CIDRs
    print("ok")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from ingress import wire
    from ingress.agent import sample_json

    name = "<stdin>" if args.file == "-" else args.file
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    from ingress.errors import SpoolError
    from ingress.security.crypto import open_dead_letter

    try:  # a dead letter of an encrypting tenant is sealed; anything else passes through as is
        data = open_dead_letter(data, None if args.file == "-" else Path(args.file))
    except SpoolError as e:
        raise WireError(f"{name}: cannot decrypt: {e}") from None
    try:
        b = wire.decode(data)
    except WireError as e:
        raise WireError(f"{name}: not a valid batch: {e}") from None
    bid = b.batch_id.hex()
    out = sys.stdout
    series = b.series
    for i, ts, v in zip(b.series_index.tolist(), b.timestamps.tolist(), b.values.tolist()):
        metric, tags = series[i]
        out.write(sample_json(b.tenant, metric, tags, ts, v, batch_id=bid, host=b.host) + "\n")
    out.flush()
    return 0


STATS_COLUMNS = (("tenant", "tenant"), ("segments", "segments"), ("bytes", "bytes"),
                 ("oldest_age_s", "oldest age (s)"), ("samples_pending", "samples pending"),
                 ("batches_pending", "batches pending"), ("dropped_batches", "dropped batches"),
                 ("dropped_samples", "dropped samples"), ("corrupt_records", "corrupt records"),
                 ("torn_tails", "torn tails"), ("damaged_files", "damaged files"),
                 ("dead_letters", "dead letters"))


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
    for tid, st in stats.items():
        st["dead_letters"] = _dead_letters(Path(settings.agent.data_dir), tid)
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
        p.add_argument("-c", "--config", metavar="FILE", required=True)


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


# --------------------------------------------------------------------------- entry point

def _one_line(text: str) -> str:
    from ingress.logs import redact

    return redact("; ".join(x.strip() for x in str(text).splitlines() if x.strip()) or "error")


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename else what


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
