"""``ingress check-config`` [--connect]."""
from __future__ import annotations

import argparse
from typing import Any

from ingress.cli.common import load_settings


def add_parser(sub: Any) -> None:
    """``check-config``."""
    c = sub.add_parser("check-config", help="validate a configuration file; prints ok")
    c.add_argument("-c", "--config", metavar="FILE", help="configuration (default: the embedded one)")
    c.add_argument("--connect", action="store_true",
                   help="also probe every output once; one line per output; exit 1 unless all are reachable")
    c.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from ingress.collect.plan import build_collectors, plan_collectors
    from ingress.tenants import TenantSet

    settings = load_settings(args.config)
    # Also what only the build can tell: every collector exists and takes its options.
    build_collectors(plan_collectors(TenantSet(settings.tenants).enabled), settings)
    from ingress.control import validate as validate_control

    validate_control(settings)  # [control]: TLS off loopback, allow-list CIDRs
    from ingress.config import locate
    from ingress.outputs import OUTPUTS

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
    from ingress.outputs.plugin import build_outputs

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
