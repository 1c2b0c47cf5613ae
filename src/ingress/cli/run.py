"""``ingress run``: the agent in the foreground, its signals and the privilege drop."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from ingress.cli.common import load_settings, seconds
from ingress.errors import IngressError


def add_parser(sub: Any) -> None:
    """``run``."""
    r = sub.add_parser("run", help="run the agent in the foreground",
                       description="Run the agent until SIGTERM/SIGINT, then stop gracefully.")
    r.add_argument("-c", "--config", metavar="FILE", help="configuration file (default: the embedded default)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true",
                   help="one collection cycle for every tenant, printed as JSON lines; sends nothing")
    g.add_argument("--duration", type=seconds, metavar="S", help="run S seconds, then stop gracefully")
    r.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    # Until the agent can act on them, SIGHUP/SIGTERM/SIGINT are noted, not acted on: SIGHUP's
    # default action would kill an agent that is still starting (seconds on a loaded host), and
    # a stop or reload asked for now is carried out once the agent runs.
    early: list[int] = []
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = {} if args.once else {s: signal.signal(s, lambda n, _f: early.append(n)) for s in watched}
    try:
        return _run(args, early)
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def _run(args: argparse.Namespace, early: list[int]) -> int:
    from ingress import hardening, logs
    from ingress.agent import Agent
    from ingress.outputs.jsonfmt import sample_json

    # Before anything is opened: umask 077, no core dumps, no new privileges.
    hardened = hardening.harden() if not args.once else None
    settings = load_settings(args.config)
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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    for signum in early:  # what arrived while the agent was being built
        (on_hup if signum == signal.SIGHUP else on_signal)(signum, None)
    early.clear()
    agent.start()
    try:
        # The spool, the control port and the outputs are open: privilege is no longer needed.
        if a.user is not None or a.group is not None:
            _drop_privileges(a, log)
        agent.run(duration=args.duration)
    finally:
        stopping.append(0)  # the graceful stop (signal or --duration): a signal now exits at once
        agent.stop()
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
