"""Question: what do 1,000 configured tenants cost the agent, next to 10?

The real agent (``python -m ingress run``) with N tenants, each with small rules
of its own (``cpu`` and ``memory`` collectors, an include and an exclude glob,
a tag, a 1 s interval) and a file output, run once with N = 10 and once with
N = 1,000. Measured from outside:

- start-up: process spawn to the ``started`` line, and to every tenant's first
  batch in its output file;
- peak RSS (``VmHWM``) at the end of the window;
- CPU per pass: agent CPU (``/proc/PID/stat``) over a window after a warm-up,
  divided by the passes the scheduler dispatched in it (``cpu`` collector,
  from the agent's /metrics).

Checked: every tenant's spooled samples (the ``stopped`` line) are in its
output file, none left pending. The per-tenant ratios (1,000-tenant figure over
100x the 10-tenant figure) are reported; the floor catches super-linear growth
(a cost quadratic in tenants would make the 1,000-tenant pass 100x dearer per
tenant). ``--bench-short`` (CI): 2 s warm-up, 5 s window.
"""
from __future__ import annotations

import time

import pytest

from benchmarks.conftest import record_ratio
from benchmarks.scale_harness import Agent, cpu_seconds, spool_pending, status_mb, wait_for_line

pytestmark = pytest.mark.integration


def config(data_dir, n: int) -> str:
    out = [f"""
[agent]
data_dir = "{data_dir}"
hostname = "tenants-host"
interval = "1s"
shutdown_timeout = "60s"

[agent.limits]
memory_mb = 2048
cpu_percent = 400.0

[agent.collect]
max_interval = "1s"  # pinned: no stretching under host CPU pressure, so passes are comparable

[control]
listen = "127.0.0.1:0"
"""]
    for i in range(n):
        out.append(f"""
[[tenants]]
id = "t{i:04d}"
collectors = ["cpu", "memory"]
include = ["cpu.*", "memory.{'*' if i % 2 else 'used*'}"]
exclude = ["cpu.guest*"]
tags = {{ team = "team-{i % 7}" }}
""")
    out.append('\n[[outputs]]\ntype = "file"\n')
    return "".join(out)


def run_tenants(tmp, n: int, warm: float, window: float) -> dict:
    from ingress import wire
    from ingress.outputs.file import read_batches

    data = tmp / f"data-{n}"
    cfg = tmp / f"agent-{n}.toml"
    cfg.write_text(config(data, n))
    agent = Agent(cfg, tmp / f"agent-{n}.log")
    tenants = [f"t{i:04d}" for i in range(n)]
    try:
        agent.wait_started()
        started_s = agent.t_started - agent.t_spawn
        end = time.monotonic() + 120
        while time.monotonic() < end:  # every tenant's first batch written by the file output
            if all(any(f.stat().st_size > 0 for f in (data / "out" / t).glob("*.ibatch"))
                   for t in tenants if (data / "out" / t).is_dir()) and \
                    sum(1 for _ in (data / "out").iterdir()) == n:
                break
            assert agent.proc.poll() is None
            time.sleep(0.05)
        first_s = time.monotonic() - agent.t_spawn
        time.sleep(warm)
        passes0 = _passes(agent)
        c0, w0 = cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(window)
        c1, w = cpu_seconds(agent.proc.pid), time.monotonic() - w0
        passes1 = _passes(agent)
        hwm = status_mb(agent.proc.pid)
        stopped = agent.stop()
    finally:
        agent.kill()
    pending = spool_pending(cfg)
    stored = {}
    for t in tenants:
        stored[t] = sum(wire.peek(b).sample_count for f in sorted((data / "out" / t).glob("*.ibatch"))
                        for b in read_batches(f))
    spooled = {t: int(stopped["spooled"].get(t, 0)) for t in tenants}
    assert all(v > 0 for v in spooled.values()), [t for t, v in spooled.items() if not v][:10]
    assert not any(pending.get(t, 0) for t in tenants), {t: v for t, v in pending.items() if v}
    assert stored == spooled, [(t, stored[t], spooled[t]) for t in tenants if stored[t] != spooled[t]][:10]
    passes = passes1 - passes0
    assert passes > 0
    return {"n": n, "started_s": started_s, "first_batch_s": first_s, "hwm_mb": hwm,
            "cpu": (c1 - c0) / w, "passes": passes, "cpu_ms_per_pass": (c1 - c0) * 1000 / passes,
            "samples": sum(spooled.values())}


def _passes(agent) -> float:
    from benchmarks.scale_harness import scrape

    got = scrape(agent.url, "ingress_collector_passes_total")
    return next((v for labels, v in got.items() if dict(labels).get("collector") == "cpu"), 0.0)


def test_thousand_tenants_vs_ten(benchmark, tmp_path, bench_short):
    warm, window = (2.0, 5.0) if bench_short else (5.0, 30.0)
    res = {}

    def go():
        for n in (10, 1000):
            res[n] = run_tenants(tmp_path, n, warm, window)
        return res

    benchmark.pedantic(go, rounds=1, iterations=1)
    print(f"\ntenants ({'short' if bench_short else 'full'} mode, {window:.0f} s window)")
    print(f"{'tenants':>8}{'started s':>10}{'1st batch s':>12}{'RSS MB':>8}{'cpu %':>7}{'ms/pass':>9}{'samples':>10}")
    for n, r in res.items():
        print(f"{n:>8}{r['started_s']:>10.2f}{r['first_batch_s']:>12.2f}{r['hwm_mb']:>8.1f}{r['cpu'] * 100:>7.1f}"
              f"{r['cpu_ms_per_pass']:>9.1f}{r['samples']:>10,}")
        benchmark.extra_info[str(n)] = r
    a, b = res[10], res[1000]
    # Per tenant, 1,000 tenants should cost no more than 10 do (linear): report 100 x (10-tenant
    # figure) / (1,000-tenant figure); 1.0 is linear, above it the fixed costs amortise.
    record_ratio("tenants: 100 x ms/pass@10 / ms/pass@1000 (1 = linear)",
                 100 * a["cpu_ms_per_pass"] / b["cpu_ms_per_pass"], 0.25)
    record_ratio("tenants: 100 x start-up@10 / start-up@1000 (1 = linear)",
                 100 * a["started_s"] / b["started_s"], 0.25)
