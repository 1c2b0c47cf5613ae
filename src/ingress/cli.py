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

    k = sub.add_parser(
        "sink", help="run the reference receiver (accepts batches over HTTP)",
        description="Accept batches POSTed by ingress HTTP outputs, check each tenant's key, "
                    "drop duplicate batch ids and store batches per tenant.")
    k.add_argument("--listen", default="127.0.0.1:8088", metavar="HOST:PORT",
                   help="address to listen on (default: %(default)s)")
    k.add_argument("--max-connections", type=int, metavar="N",
                   help="connections served at once; more are answered 503 (default: 128)")
    k.add_argument("--header-timeout", type=_seconds, metavar="S",
                   help="seconds a connection has for its request headers (default: 10)")
    k.add_argument("--idle-timeout", type=_seconds, metavar="S",
                   help="seconds a kept-alive connection waits for its next request (default: 30)")
    k.add_argument("--body-timeout", type=_seconds, metavar="S",
                   help="seconds an accepted request has for its body (default: 60)")
    k.add_argument("--data-dir", required=True, metavar="DIR", help="where batches are stored, per tenant")
    k.add_argument("--keys", required=True, metavar="FILE",
                   help="TOML/JSON file: tenant = key (or \"sha256:<hex>\")")
    k.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    k.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert, if not in the same file")
    k.add_argument("--client-ca", metavar="FILE", help="require client certificates from this CA")
    k.set_defaults(func=cmd_sink)
    return p


def cmd_sink(args: argparse.Namespace) -> int:
    # Imported here: the sink's HTTP server and TLS modules are no part of `ingress run`.
    from ingress import sink

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
    print("ok")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from ingress import wire
    from ingress.agent import sample_json

    name = "<stdin>" if args.file == "-" else args.file
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
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
                 ("corrupt_records", "corrupt records"))


def cmd_spool_stats(args: argparse.Namespace) -> int:
    from ingress.spool import stats_for

    settings = _settings(args.config)
    outputs = {t.id: [o.name for o in settings.outputs if o.serves(t.id)] for t in settings.tenants}
    # Read-only: takes no lock and changes nothing, so it is safe next to a running agent.
    stats = stats_for(settings.agent.data_dir, outputs)
    for t in settings.tenants:  # a tenant that never spooled has no directory yet
        stats.setdefault(t.id, {"segments": 0, "bytes": 0, "oldest_age_s": 0.0, "samples_pending": 0,
                                "batches_pending": 0, "dropped_batches": 0, "corrupt_records": 0})
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    rows = [[h for _, h in STATS_COLUMNS]]
    for tid in sorted(stats):
        st = stats[tid]
        row = [tid]
        for key, _ in STATS_COLUMNS[1:]:
            v = st.get(key, 0)
            row.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
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
