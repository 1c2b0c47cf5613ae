"""``ingress deadletter``: list, replay, purge (docs/delivery.md#dead-letters)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ingress.cli.common import audit_log, load_settings, one_line, when
from ingress.errors import ConfigError, IngressError


def add_parser(sub: Any) -> None:
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
    from ingress.outputs.deadletter import scan

    settings = load_settings(args.config)
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
        rows.append([d.tenant, d.output, d.batch_id, str(d.size), when(d.time), "queued" if d.replay else "",
                     d.reason])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip())
    return 0


def _record(audit: Any, event: str, outcome: str, d: Any, **extra: Any) -> None:
    """One audit record about one dead letter, by the local user."""
    from ingress.security.audit import local_actor

    audit.record(event, outcome, actor=local_actor(), tenant=d.tenant, output=d.output, batch_id=d.batch_id, **extra)


def cmd_deadletter_replay(args: argparse.Namespace) -> int:
    """Queue the selection for replay; when no agent holds the spool, put them back in it now."""
    from ingress.errors import SpoolError
    from ingress.outputs.deadletter import mark_replay, requeue

    settings, dls = _dead_letter_selection(args)
    audit = audit_log(settings)
    for d in dls:
        mark_replay(d)
        _record(audit, "deadletter_replay_requested", "ok", d)
    if not dls:
        print("no dead letters selected")
        return 0
    configured = {t.id for t in settings.tenants}
    try:
        from ingress.assembly import open_spool

        spool = open_spool(settings)
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
                print(one_line(str(e)), file=sys.stderr)
                _record(audit, "deadletter_replayed", "failed", d, reason=one_line(str(e)))
                continue
            _record(audit, "deadletter_replayed", "ok", d)
    finally:
        spool.close()
    print(f"{len(dls) - failed} dead letters back in the spool; the agent sends them at its next start"
          + (f"; {failed} could not be replayed (see above)" if failed else ""))
    return 1 if failed else 0


def cmd_deadletter_purge(args: argparse.Namespace) -> int:
    from ingress.outputs.deadletter import remove

    settings, dls = _dead_letter_selection(args)
    audit = audit_log(settings)
    for d in dls:
        remove(d)
        _record(audit, "deadletter_purged", "ok", d, bytes=d.size)
    print(f"{len(dls)} dead letters removed")
    return 0
