"""``ingress spool stats``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ingress.cli.common import load_settings, table


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


def add_parser(sub: Any) -> None:
    """``spool stats``."""
    s = sub.add_parser("spool", help="inspect the on-disk spool")
    ss = s.add_subparsers(dest="spool_command", metavar="COMMAND", required=True)
    st = ss.add_parser("stats", help="per tenant: segments, bytes, oldest sample age, samples pending")
    st.add_argument("-c", "--config", metavar="FILE", help="configuration (default: the embedded one)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_spool_stats)


def cmd_spool_stats(args: argparse.Namespace) -> int:
    from ingress.spool import stats_for

    settings = load_settings(args.config)
    outputs = {t.id: [o.name for o in settings.outputs if o.serves(t.id)] for t in settings.tenants}
    # Read-only: takes no lock and changes nothing, so it is safe next to a running agent.
    stats = stats_for(settings.agent.data_dir, outputs)
    for t in settings.tenants:  # a tenant that never spooled has no directory yet
        stats.setdefault(t.id, {k: 0 for k, _ in STATS_COLUMNS[1:]} | {"oldest_age_s": 0.0})
    from ingress.outputs.deadletter import usage

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
    table(rows, set(range(1, len(rows[0]))), sys.stdout)
    for line in held:  # the agent does not collect or send for these until the reason is fixed
        print(line)
    return 0
