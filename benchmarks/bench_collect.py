"""What does one collection pass cost, next to the obvious psutil loop? (CPU time, same run)

A host with 300 extra idle processes (``sleep 600`` children, killed at the
end). Our pass is every collector: processes, cpu, memory, disk, network,
connections, health (a TCP check against a local listener that accepts, and a
process-alive check) and agent, with the processes collector configured as a tenant would (top 10 by CPU and
by memory, a couple of name globs, expensive fields every 5th pass). The
baseline is what a first implementation would write: ``psutil.process_iter``
and, per process under ``oneshot()``, every field the processes collector
offers (cpu_times, memory_info, num_threads, num_fds, io_counters,
num_ctx_switches, status, create_time, name, username, cmdline).

CPU time is user + system of this process from ``getrusage`` around N passes
(system time matters: most of the cost of reading /proc is in the kernel).
The goal is our pass at no more than 1/4 of the baseline; the floor asserted
is set well under it.
"""
from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.conftest import record_ratio
from ingress.collect import COLLECTORS
from ingress.collect.base import CollectorSettings

EXTRA_PROCS = 300
ORDER = ("processes", "cpu", "memory", "disk", "network", "connections", "health", "agent")
PROC_OPTS = {"top": 10, "match": ["sshd", "nginx*", "postgres"], "slow_every": 5}


@pytest.fixture(scope="module")
def idle_processes():
    procs = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(EXTRA_PROCS)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def cpu_s() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def make_collectors(port, proc_opts=PROC_OPTS):
    opts = {"processes": proc_opts,
            "health": {"checks": [{"name": "listener", "tcp": f"127.0.0.1:{port}"},
                                  {"name": "sleepers", "process": "sleep"}]}}
    return {n: COLLECTORS[n](CollectorSettings(options=opts.get(n, {}))) for n in ORDER}


def our_pass(cols, now_ns):
    return sum(len(c.collect(now_ns)) for c in cols.values())


def naive_psutil_pass():
    n = 0
    for p in psutil.process_iter():
        try:
            with p.oneshot():
                p.cpu_times()
                p.memory_info()
                p.num_threads()
                p.num_fds()
                p.io_counters()
                p.num_ctx_switches()
                p.status()
                p.create_time()
                p.name()
                p.username()
                p.cmdline()
            n += 1
        except psutil.Error:
            pass
    return n


def measure(fn, passes):
    u0, s0 = cpu_s()
    for i in range(passes):
        fn(i)
    u1, s1 = cpu_s()
    return (u1 - u0) / passes, (s1 - s0) / passes


def test_full_pass_cpu_ratio_vs_psutil(idle_processes, listener, bench_short):
    ours_n = 20 if bench_short else 100  # a multiple of slow_every: the slow passes are in the mean
    base_n = 4 if bench_short else 20
    cols = make_collectors(listener)
    clock = [time.time_ns()]

    def ours(i):
        clock[0] += 1_000_000_000
        our_pass(cols, clock[0])

    ours(0)  # first pass interns every series: not the steady state
    naive_psutil_pass()
    rows = []
    for name in ORDER:  # per collector, each alone
        c = cols[name]
        u, s = measure(lambda i, c=c: c.collect(clock[0] + i), ours_n)
        rows.append((name, u, s))
    ou, os_ = measure(ours, ours_n)
    bu, bs = measure(lambda i: naive_psutil_pass(), base_n)
    ratio = (bu + bs) / (ou + os_)
    nproc = len(psutil.pids())
    lines = [f"host: {nproc} processes ({EXTRA_PROCS} extra idle), {os.cpu_count()} cpus; "
             f"ours {ours_n} passes, psutil {base_n} passes",
             f"{'collector':<14}{'user ms':>10}{'sys ms':>10}{'total ms':>10}"]
    lines += [f"{n:<14}{u * 1e3:>10.3f}{s * 1e3:>10.3f}{(u + s) * 1e3:>10.3f}" for n, u, s in rows]
    lines.append(f"{'full pass':<14}{ou * 1e3:>10.3f}{os_ * 1e3:>10.3f}{(ou + os_) * 1e3:>10.3f}")
    lines.append(f"{'naive psutil':<14}{bu * 1e3:>10.3f}{bs * 1e3:>10.3f}{(bu + bs) * 1e3:>10.3f}")
    lines.append(f"ratio naive / ours: {ratio:.2f}x")
    report = "\n".join(lines)
    print("\n" + report)
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / "collect-cost.txt").write_text(report + "\n")
    for c in cols.values():
        c.close()
    record_ratio("collect: naive psutil loop CPU / our full pass CPU", ratio, 2.0)


def test_every_process_selected_cpu_ratio(idle_processes, bench_short):
    # The worst case for us: every sleep selected, expensive fields on every pass.
    n = 5 if bench_short else 20
    c = COLLECTORS["processes"](CollectorSettings(options={"match": ["*"], "top": 0, "slow_every": 1}))
    clock = [time.time_ns()]

    def ours(i):
        clock[0] += 1_000_000_000
        c.collect(clock[0])

    ours(0)
    naive_psutil_pass()
    ou, os_ = measure(ours, n)
    bu, bs = measure(lambda i: naive_psutil_pass(), n)
    ratio = (bu + bs) / (ou + os_)
    print(f"\nevery process, every field: ours {(ou + os_) * 1e3:.2f} ms, psutil {(bu + bs) * 1e3:.2f} ms, "
          f"{ratio:.2f}x")
    record_ratio("collect: psutil / processes with every process selected, every field", ratio, 2.0)


def test_full_pass_wall(idle_processes, listener, bench):
    cols = make_collectors(listener)
    clock = [time.time_ns()]

    def one():
        clock[0] += 1_000_000_000
        return our_pass(cols, clock[0])

    n, median = bench(one)
    assert n > 100
    for c in cols.values():
        c.close()
