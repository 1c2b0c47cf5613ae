"""``ingress tenants purge``."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ingress.cli.common import audit_log, load_settings
from ingress.errors import ConfigError


def add_parser(sub: Any) -> None:
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
    from ingress.security.audit import local_actor

    settings = load_settings(args.config)
    if not is_tenant_id(args.tenant):
        raise ConfigError(f"{args.tenant!r} is not a valid tenant id")
    if not args.yes:
        for what, p in purge.tenant_paths(settings, args.tenant):
            if Path(p).exists():
                print(f"would remove {what}: {p}")
        print(f"nothing removed: add --yes to purge tenant {args.tenant!r} for good", file=sys.stderr)
        return 2
    report = purge.purge_tenant(settings, args.tenant, audit=audit_log(settings), actor=local_actor())
    for what, p, n in report.removed:
        print(f"removed {what}: {p} ({n} bytes)")
    print(f"tenant {args.tenant!r} purged: {report.bytes} bytes removed")
    return 0
