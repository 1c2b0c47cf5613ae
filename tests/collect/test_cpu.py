"""cpu collector: golden /proc/stat numbers worked out by hand, rates over two passes."""
import math

import pytest
from collect_helpers import SEC, T0, clk_tck, key, live_settings, samples

from ingress.collect.cpu import MODES, CpuCollector


def test_first_pass_times_load_counters(tree):
    t = tree("host-a")
    c = CpuCollector(t.settings())
    s = samples(c, c.collect(T0))
    hz = clk_tck()
    # cpu0 line: 600 100 250 3900 60 30 20 10 (ticks)
    assert s[key("cpu.time", cpu="0", mode="user")] == pytest.approx(600 / hz)
    assert s[key("cpu.time", cpu="0", mode="idle")] == pytest.approx(3900 / hz)
    assert s[key("cpu.time", cpu="1", mode="steal")] == pytest.approx(10 / hz)
    assert s[key("cpu.time", cpu="total", mode="system")] == pytest.approx(500 / hz)
    assert s[key("cpu.time", cpu="total", mode="iowait")] == pytest.approx(100 / hz)
    assert len([k for k in s if k[0] == "cpu.time"]) == 3 * 8
    assert s[key("cpu.load.1m")] == 0.5
    assert s[key("cpu.load.5m")] == 1.25
    assert s[key("cpu.load.15m")] == 2.0
    assert s[key("cpu.count")] == 2
    assert s[key("cpu.context_switches")] == 100000
    assert s[key("cpu.interrupts")] == 50000
    assert s[key("cpu.forks")] == 2000
    assert s[key("cpu.procs_running")] == 3
    assert s[key("cpu.procs_blocked")] == 1
    # nothing to compare with yet: no utilisation, no rates
    assert not [k for k in s if k[0] in ("cpu.utilization", "cpu.busy") or k[0].endswith("_rate")]
    # PSI: some avg10=1.50 avg60=2.25 avg300=3.00 total=4500000 (us)
    assert s[key("cpu.pressure.avg", scope="some", window="60s")] == 2.25
    assert s[key("cpu.pressure.stall_time", scope="some")] == 4.5
    assert s[key("cpu.pressure.stall_time", scope="full")] == 0.0


def test_second_pass_utilization_and_rates(tree):
    t = tree("host-a")
    c = CpuCollector(t.settings())
    c.collect(T0)
    t.overlay("host-a-later")
    s = samples(c, c.collect(T0 + 5 * SEC))
    # total deltas: user 300 nice 0 system 100 idle 550 iowait 20 irq 10 softirq 10 steal 10 = 1000
    want_total = dict(user=0.30, nice=0.0, system=0.10, idle=0.55, iowait=0.02, irq=0.01, softirq=0.01, steal=0.01)
    # cpu0 deltas: 200 0 50 230 10 5 5 0 = 500; cpu1: 100 0 50 320 10 5 5 10 = 500
    want0 = dict(user=0.40, nice=0.0, system=0.10, idle=0.46, iowait=0.02, irq=0.01, softirq=0.01, steal=0.0)
    want1 = dict(user=0.20, nice=0.0, system=0.10, idle=0.64, iowait=0.02, irq=0.01, softirq=0.01, steal=0.02)
    for cpu, want in (("total", want_total), ("0", want0), ("1", want1)):
        for mode in MODES:
            assert s[key("cpu.utilization", cpu=cpu, mode=mode)] == pytest.approx(want[mode]), (cpu, mode)
    assert s[key("cpu.busy", cpu="total")] == pytest.approx(0.43)
    assert s[key("cpu.busy", cpu="0")] == pytest.approx(0.52)
    assert s[key("cpu.busy", cpu="1")] == pytest.approx(0.34)
    # ctxt 100000 -> 100500, intr 50000 -> 51000, processes 2000 -> 2010 over 5 s
    assert s[key("cpu.context_switches_rate")] == pytest.approx(100.0)
    assert s[key("cpu.interrupts_rate")] == pytest.approx(200.0)
    assert s[key("cpu.forks_rate")] == pytest.approx(2.0)
    assert s[key("cpu.load.1m")] == 0.75
    assert s[key("cpu.procs_running")] == 2


def test_steady_state_interns_nothing_new(tree):
    t = tree("host-a")
    c = CpuCollector(t.settings())
    c.collect(T0)
    t.overlay("host-a-later")
    c.collect(T0 + SEC)
    n = len(c.table)
    gen = c.table.generation
    cols = c.collect(T0 + 2 * SEC)
    assert len(c.table) == n and c.table.generation == gen
    assert cols.ts == T0 + 2 * SEC


def test_counter_going_backwards_gives_no_rate(tree):
    t = tree("host-a")
    c = CpuCollector(t.settings())
    t.overlay("host-a-later")
    c.collect(T0)
    t.overlay("host-a")  # every counter is now lower: a reset, not a negative rate
    s = samples(c, c.collect(T0 + SEC))
    assert key("cpu.context_switches_rate") not in s
    assert key("cpu.utilization", cpu="0", mode="user") not in s
    assert s[key("cpu.context_switches")] == 100000


def test_core_going_offline_changes_layout(tree):
    t = tree("host-a")
    c = CpuCollector(t.settings())
    c.collect(T0)
    stat = t.proc / "stat"
    stat.write_text("\n".join(ln for ln in stat.read_text().splitlines() if not ln.startswith("cpu1")) + "\n")
    s = samples(c, c.collect(T0 + SEC))
    assert s[key("cpu.count")] == 1
    assert key("cpu.time", cpu="1", mode="user") not in s
    assert key("cpu.time", cpu="0", mode="user") in s


def test_no_psi_no_pressure_series(tree):
    c = CpuCollector(tree("host-b").settings())
    s = samples(c, c.collect(T0))
    assert not [k for k in s if k[0].startswith("cpu.pressure")]
    assert s[key("cpu.count")] == 1


def test_live_host_sanity():
    c = CpuCollector(live_settings())
    c.collect(T0)
    import time

    time.sleep(0.2)
    s = samples(c, c.collect(T0 + SEC // 5))
    import os

    assert 1 <= s[key("cpu.count")] <= os.cpu_count()
    for (name, tags), v in s.items():
        assert math.isfinite(v), name
        if name in ("cpu.utilization", "cpu.busy"):
            assert -1e-9 <= v <= 1 + 1e-9, (name, tags, v)
        else:
            assert v >= 0, (name, tags, v)
    total = sum(v for (n, tags), v in s.items() if n == "cpu.utilization" and ("cpu", "total") in tags)
    assert total == pytest.approx(1.0)
