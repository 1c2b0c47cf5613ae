"""Question: what does the whole agent cost on a busy host, next to a naive psutil loop?

Issue 3's goal, measured side by side in the same run: 300 extra idle processes
are started; the real agent (``python -m ingress run``) with two tenants, every
collector, every process selected, a 1 s interval and a file output, runs next to
``naive_psutil_loop.py`` (every process, every field, 1 s). Each one's CPU time
(user + system, from /proc/PID/stat) is read twice after a warm-up, so start-up
and imports are left out; RSS is read at the end of the window. The goal: the
agent uses at most a quarter of the naive loop's CPU, and at most 55 MB RSS.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.conftest import record_ratio

HERE = Path(__file__).parent
TICK = os.sysconf("SC_CLK_TCK")
RSS_CAP_MB = 55.0  # the goal of issue 3
COLLECTORS = '["cpu", "memory", "disk", "network", "connections", "processes", "health", "agent"]'


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def tenant(tid: str, port: int) -> str:
    return f"""
[[tenants]]
id = "{tid}"
collectors = {COLLECTORS}
interval = "1s"
tags = {{ tenant_tag = "{tid}" }}
[tenants.processes]
match = ["*"]
[[tenants.health]]
name = "listener"
tcp = "127.0.0.1:{port}"
"""


@pytest.fixture(scope="module")
def idle_processes():
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(300)]
    yield procs
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def test_whole_agent_vs_naive_psutil_loop(benchmark, idle_processes, listener, tmp_path, bench_short):
    warm, window = (5.0, 10.0) if bench_short else (10.0, 40.0)
    duration = warm + window + 3.0
    cfg = tmp_path / "agent.toml"
    # The control API runs as it does by default (its cost is part of the agent's), on a free port.
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path / "data"}"\ninterval = "1s"\n'
                   + '[control]\nlisten = "127.0.0.1:0"\n'
                   + tenant("acme", listener) + tenant("globex", listener)
                   + '\n[[outputs]]\ntype = "file"\n')
    result = {}

    def run():
        log = open(tmp_path / "agent.log", "wb")  # a file, not a pipe nobody reads
        agent = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg),
                                  "--duration", str(duration)], stderr=log)
        naive = subprocess.Popen([sys.executable, str(HERE / "naive_psutil_loop.py"),
                                  "--duration", str(duration)])
        try:
            time.sleep(warm)
            a0, n0 = cpu_seconds(agent.pid), cpu_seconds(naive.pid)
            time.sleep(window)
            a1, n1 = cpu_seconds(agent.pid), cpu_seconds(naive.pid)
            result.update(agent_cpu=(a1 - a0) / window, naive_cpu=(n1 - n0) / window,
                          agent_rss=rss_mb(agent.pid), naive_rss=rss_mb(naive.pid))
        finally:
            agent.wait(timeout=60)
            naive.wait(timeout=60)
            log.close()
        assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-2000:]
        return result

    benchmark.pedantic(run, rounds=1, iterations=1)
    r = result
    benchmark.extra_info.update(r)
    print(f"\nwhole agent: {r['agent_cpu'] * 100:.2f}% of a core, {r['agent_rss']:.1f} MB RSS; "
          f"naive psutil loop: {r['naive_cpu'] * 100:.2f}%, {r['naive_rss']:.1f} MB "
          f"({len(idle_processes)} extra idle processes, {window:.0f} s window)")
    record_ratio("whole agent CPU: naive psutil loop / agent", r["naive_cpu"] / max(r["agent_cpu"], 1 / TICK / window), 3.0)
    # RSS is a size, not a time: the goal holds on any machine.
    assert r["agent_rss"] <= RSS_CAP_MB, f"agent RSS {r['agent_rss']:.1f} MB over the {RSS_CAP_MB} MB cap"
