"""``ingress keys``: control-API keys (docs/keys.md)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ingress.cli.common import audit_log, load_settings, table, when
from ingress.errors import ConfigError


def add_parser(sub: Any) -> None:
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
    from ingress.security.keys import KeyStore

    settings = load_settings(args.config)
    store = KeyStore(settings.agent.data_dir)
    store._ensure_dir()
    return settings, store, audit_log(settings)


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
          + (f", expires {when(rec.expires)}" if rec.expires else "") + ")")
    print("store it now; it is not shown again:")
    print(token)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    _settings_, store, _ = _keystore(args)
    rows = list(store.iter_public())
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    lines = [["id", "tenant", "scope", "state", "created", "expires", "revoked", "name"]]
    for r in rows:
        lines.append([r["id"], r["tenant"], r["scope"], r["state"], when(r["created"]), when(r["expires"]),
                      when(r["revoked"]), r["name"]])
    table(lines, set(), sys.stdout)
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
    print(f"key {old.id} rotated: it stays valid until {when(old.revoked)}; successor {new.id}")
    print("store it now; it is not shown again:")
    print(token)
    return 0
