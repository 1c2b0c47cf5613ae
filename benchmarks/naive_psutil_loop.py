"""The baseline of bench_agent: a naive psutil loop, every process, every field, once a second.

This is what an agent written the obvious way costs: one psutil.Process per
process and pass, each field read through psutil (several /proc files per
process), values kept in a list of dicts. Run as a script: ``--duration S``.
"""
from __future__ import annotations

import argparse
import time

import psutil

FIELDS = ("cpu_times", "memory_info", "num_threads", "num_fds", "io_counters", "num_ctx_switches",
          "status", "create_time", "name", "username", "cmdline")


def one_pass() -> int:
    values = []
    for p in psutil.process_iter():
        try:
            with p.oneshot():
                values.append({f: getattr(p, f)() for f in FIELDS})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sum(len(v) for v in values)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args()
    end = time.monotonic() + a.duration
    nxt = time.monotonic()
    while time.monotonic() < end:
        one_pass()
        nxt += a.interval
        time.sleep(max(0.0, nxt - time.monotonic()))


if __name__ == "__main__":
    main()
