"""``ingress sink`` and ``ingress sink query``: the reference receiver's command line."""
from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from typing import Any

from ingress.cli.common import seconds, table
from ingress.errors import ConfigError


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


def add_parser(sub: Any) -> None:
    """``sink`` and ``sink query``."""
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
    k.add_argument("--header-timeout", type=seconds, metavar="S",
                   help="seconds a connection has for its request headers (default: 10)")
    k.add_argument("--idle-timeout", type=seconds, metavar="S",
                   help="seconds a kept-alive connection waits for its next request (default: 30)")
    k.add_argument("--body-timeout", type=seconds, metavar="S",
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


def cmd_sink_query(args: argparse.Namespace) -> int:
    import time

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
        from ingress.outputs.jsonfmt import sample_json

        for r in rows:
            v = float("nan") if r["value"] is None else r["value"]
            out.write(sample_json(r["tenant"], r["name"], r["tags"], r["ts"], v, host=r["host"]) + "\n")
        out.flush()
        return 0
    lines = [["time (UTC)", "host", "tags", "value"]]
    import datetime

    for r in rows:
        t = datetime.datetime.fromtimestamp(r["ts"] / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        tg = ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items()))
        lines.append([t, r["host"], tg, "null" if r["value"] is None else f"{r['value']:g}"])
    print(f"{args.tenant} {args.metric}" + (f" {args.agg} per {args.step}" if args.agg else "")
          + f": {len(rows)} rows")
    table(lines, {3}, sys.stdout)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    # Imported here: the sink's HTTP server and TLS modules are no part of `ingress run`.
    from ingress import wire

    given = {f: getattr(args, f) for _, f, *_ in _SINK_LIMITS if getattr(args, f) is not None}
    args.decode_limits = wire.DecodeLimits(**given)
    return serve_foreground(args)


def parse_duration_s(text: str, what: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` -> whole seconds (at least 1); ConfigError naming ``what``."""
    m = re.fullmatch(r"([0-9]{1,9})(s|m|h|d)", text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"{what}: {text!r} is not a duration (a whole number and s, m, h or d, e.g. 30d)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def retention_from_args(args: argparse.Namespace) -> tuple[int | None, dict[str, int]]:
    """``--retention D`` and ``--tenant-retention T=D`` (repeated) -> (default s, {tenant: s})."""
    from ingress import names

    default = parse_duration_s(args.retention, "--retention") if getattr(args, "retention", None) else None
    per: dict[str, int] = {}
    for item in getattr(args, "tenant_retention", None) or ():
        tenant, sep, d = item.partition("=")
        if not sep:
            raise ConfigError(f"--tenant-retention: {item[:100]!r} is not TENANT=DURATION")
        if not names.is_tenant_id(tenant):
            raise ConfigError(f"--tenant-retention: {tenant[:100]!r} is not a valid tenant id "
                              f"({names.text(names.TENANT_ID_RE)})")
        per[tenant] = parse_duration_s(d, f"--tenant-retention {tenant}")
    return default, per


def store_url_from_args(args: argparse.Namespace) -> str:
    from ingress.sink_store import DEFAULT_STORE

    data_dir = getattr(args, "data_dir", None)
    store = getattr(args, "store", None)
    if data_dir and store:
        raise ConfigError("sink: give --store or --data-dir, not both")
    if data_dir:
        return f"file://{data_dir}"
    return store or DEFAULT_STORE


def serve_foreground(args: argparse.Namespace) -> int:
    """Run the sink in the foreground until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad setting."""
    from ingress.sink import SinkServer

    sink = None
    try:
        limits = {k: getattr(args, k) for k in ("max_connections", "header_timeout", "idle_timeout",
                                                "body_timeout", "max_pending") if getattr(args, k, None) is not None}
        kafka = getattr(args, "from_kafka", None)
        if kafka and not getattr(args, "topic", None):
            raise ConfigError("sink --from-kafka: --topic TOPIC (or ^REGEX) is required")
        if getattr(args, "topic", None) and not kafka:
            raise ConfigError("sink --topic: only with --from-kafka BROKERS")
        if not args.keys and not kafka:
            raise ConfigError("sink: --keys FILE is required to take batches over HTTP "
                              "(or give --from-kafka to read Kafka only)")
        retention, per_tenant = retention_from_args(args)
        sink = SinkServer(args.listen, None, args.keys, tls_cert=args.tls_cert,
                          tls_key=args.tls_key, client_ca=args.client_ca,
                          decode_limits=getattr(args, "decode_limits", None), store=store_url_from_args(args),
                          retention_s=retention, tenant_retention=per_tenant, **limits)
        if kafka:
            sink.start_kafka(kafka, args.topic, args.group)
        sink.start()
    except ConfigError as e:
        if sink is not None:
            sink.stop()
        print(f"ingress sink: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    prev = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    where = f" and kafka {kafka} topic {args.topic} group {args.group}" if kafka else ""
    print(f"ingress sink: listening on {sink.url}{where} ({len(sink.keys)} tenants)",
          file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        for s, h in prev.items():
            signal.signal(s, h)
        sink.stop()
    return 0
