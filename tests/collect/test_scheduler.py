"""The adaptive scheduler, driven by scripted time and load; nothing here sleeps to wait."""
from __future__ import annotations

import logging
import queue
import random
import threading
import time

import numpy as np
import pytest

from ingress.collect.base import Collector, Columns
from ingress.collect.loadsource import PressureSample
from ingress.collect.scheduler import Scheduler
from ingress.collect.stretch import HIGH, HOLD, LOW, StretchLadder, Thresholds, classify

NS = 1_000_000_000
SAFETY = 10.0  # seconds a test waits for a thread before it fails; never a timing assertion

PRIORITIES = {"processes": 0, "connections": 1, "disk": 2, "network": 2, "memory": 3, "cpu": 4, "health": 4}


class Fake(Collector):
    """A collector that returns an empty pass; optionally blocks on a gate."""

    def __init__(self, name: str, priority: int, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.name = name
        self.priority = priority
        self.gate = gate
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.fail = False

    def collect(self, now_ns: int) -> Columns:
        self.calls.append(now_ns)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(SAFETY)
        if self.fail:
            raise OSError("proc went away")
        return Columns(np.zeros(0, np.uint32), np.zeros(0, np.float64), now_ns)


class Load:
    """A scripted load source; ``set`` changes what the next reading returns."""

    def __init__(self, agent=1.0, host=10.0, psi=None, load=0.1) -> None:
        self.set(agent, host, psi, load)
        self.calls = 0

    def set(self, agent=1.0, host=10.0, psi=None, load=0.1) -> None:
        self.sample = PressureSample(agent, host, psi, load)

    def __call__(self) -> PressureSample:
        self.calls += 1
        return self.sample


class NoPhase(random.Random):
    """Phase 0 for every collector, so thread tests know when passes fall due."""

    def random(self) -> float:
        return 0.0


def collectors(names=PRIORITIES) -> dict[str, Fake]:
    return {n: Fake(n, PRIORITIES.get(n, 4)) for n in names}


def make(cols=None, base=5.0, load=None, **kw) -> Scheduler:
    cols = cols if cols is not None else collectors()
    kw.setdefault("thresholds", Thresholds(stretch_dwell_s=0.0, restore_dwell_s=0.0))
    kw.setdefault("rng", 1)
    kw.setdefault("sample_every", 5.0)
    kw.setdefault("clock", lambda: 0)
    return Scheduler(cols, {n: base for n in cols}, load=load or Load(), **kw)


def evaluations(sched: Scheduler, load: Load, n: int, start_s: float = 5.0, every_s: float = 5.0):
    """Tick at each load reading; yield (time_ns, intervals after the reading)."""
    for i in range(n):
        now = int((start_s + i * every_s) * NS)
        sched.tick(now)
        yield now, sched.effective_intervals()


def changed(before: dict, after: dict) -> list[str]:
    return sorted(n for n in after if after[n] != before[n])


# ---------------------------------------------------------------- classification


def test_classify_high_low_hold_with_reasons():
    th = Thresholds()
    assert classify(PressureSample(6.0, 10.0, None, 0.1), 5.0, th)[0] == HIGH
    verdict, reason = classify(PressureSample(1.0, 97.0, 60.0, 3.0), 5.0, th)
    assert verdict == HIGH
    assert "host cpu 97.0% > 95%" in reason and "cpu pressure" in reason and "load per core" in reason
    assert "agent cpu" not in reason
    assert classify(PressureSample(1.0, 10.0, None, 0.1), 5.0, th)[0] == LOW
    # Each reading between its low and high threshold holds; PSI counts only when present.
    assert classify(PressureSample(4.0, 10.0, None, 0.1), 5.0, th)[0] == HOLD
    assert classify(PressureSample(1.0, 90.0, None, 0.1), 5.0, th)[0] == HOLD
    assert classify(PressureSample(1.0, 10.0, 30.0, 0.1), 5.0, th)[0] == HOLD
    assert classify(PressureSample(1.0, 10.0, None, 1.5), 5.0, th)[0] == HOLD
    # A starved container: the host is idle, the agent's cgroup hits its CPU quota.
    verdict, reason = classify(PressureSample(1.0, 10.0, None, 0.1, 40.0), 5.0, th)
    assert verdict == HIGH and reason == "cgroup throttled in 40.0% of periods > 20%"
    assert classify(PressureSample(1.0, 10.0, None, 0.1, 10.0), 5.0, th)[0] == HOLD
    assert classify(PressureSample(1.0, 10.0, None, 0.1, 1.0), 5.0, th)[0] == LOW


def test_thresholds_refuse_an_inverted_band():
    with pytest.raises(ValueError, match="host_cpu_low=96"):
        Thresholds(host_cpu_low=96.0)


# ---------------------------------------------------------------- stretch and restore


def test_ladder_order_lowest_priority_first_and_most():
    lad = StretchLadder({"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}, dict.fromkeys("abcde", NS), NS, 1000 * NS)
    assert [lad.stretch() for _ in range(11)] == [0, 1, 0, 2, 1, 0, 3, 2, 1, 0, 4]
    assert lad.exponent == {0: 4, 1: 3, 2: 2, 3: 1, 4: 1}
    assert [lad.restore() for _ in range(11)] == [4, 0, 1, 2, 3, 0, 1, 2, 0, 1, 0]
    assert lad.restore() is None
    assert set(lad.exponent.values()) == {0}


def test_stretch_order_under_agent_cpu_pressure():
    load = Load(agent=8.0)  # budget 5 %
    sched = make(load=load, cpu_budget_percent=5.0)
    sched.tick(0)
    prev = sched.effective_intervals()
    assert set(prev.values()) == {5.0}
    order = []
    for _, now in evaluations(sched, load, 11):
        order.append(changed(prev, now))
        prev = now
    assert order == [
        ["processes"], ["connections"], ["processes"], ["disk", "network"], ["connections"], ["processes"],
        ["memory"], ["disk", "network"], ["connections"], ["processes"], ["cpu", "health"],
    ]
    assert prev == {"processes": 80.0, "connections": 40.0, "disk": 20.0, "network": 20.0,
                    "memory": 10.0, "cpu": 10.0, "health": 10.0}
    assert sched.stretch_level() == 11


@pytest.mark.parametrize("sample", [
    PressureSample(1.0, 99.0, None, 0.1),   # host CPU saturated
    PressureSample(1.0, 10.0, 80.0, 0.1),   # tasks waiting for a CPU
    PressureSample(1.0, 10.0, None, 4.0),   # run queue four deep per core
])
def test_host_saturation_also_stretches_processes_first(sample):
    load = Load()
    load.sample = sample
    sched = make(load=load)
    sched.tick(0)
    before = sched.effective_intervals()
    sched.tick(5 * NS)
    assert changed(before, sched.effective_intervals()) == ["processes"]


def test_restore_is_the_reverse_of_stretch():
    load = Load(agent=8.0)
    sched = make(load=load)
    sched.tick(0)
    prev = sched.effective_intervals()
    stretched = []
    for _, now in evaluations(sched, load, 6):
        stretched.append(changed(prev, now))
        prev = now
    load.set(agent=0.5)
    restored = []
    for _, now in evaluations(sched, load, 8, start_s=40.0):
        if now != prev:
            restored.append(changed(prev, now))
        prev = now
    assert restored == stretched[::-1]
    assert set(prev.values()) == {5.0}
    assert sched.stretch_level() == 0


def test_hovering_around_the_high_threshold_only_ever_stretches():
    load = Load()
    sched = make(load=load, cpu_budget_percent=5.0,
                 thresholds=Thresholds(stretch_dwell_s=0.0, restore_dwell_s=0.0))
    sched.tick(0)
    levels = []
    for i in range(40):
        load.set(agent=5.2 if i % 2 else 4.8)
        sched.tick((5 + 5 * i) * NS)
        levels.append(sched.stretch_level())
    assert levels == sorted(levels)  # never a restore
    assert levels[-1] == 20  # one step per reading above the budget


def test_hovering_around_the_low_threshold_only_ever_restores():
    load = Load(agent=8.0)
    sched = make(load=load)
    sched.tick(0)
    list(evaluations(sched, load, 6))
    levels = []
    for i in range(20):
        load.set(agent=3.1 if i % 2 else 2.9)  # low threshold: 0.6 x 5 % = 3 %
        sched.tick((100 + 5 * i) * NS)
        levels.append(sched.stretch_level())
    assert levels == sorted(levels, reverse=True)  # never a stretch
    assert levels[-1] == 0


def test_between_the_thresholds_nothing_changes():
    load = Load(agent=8.0)
    sched = make(load=load)
    sched.tick(0)
    list(evaluations(sched, load, 3))
    held = sched.effective_intervals()
    load.set(agent=4.0)
    for _, now in evaluations(sched, load, 20, start_s=50.0):
        assert now == held


def test_dwell_time_spaces_changes():
    load = Load(agent=8.0)
    sched = make(load=load, thresholds=Thresholds(stretch_dwell_s=15.0, restore_dwell_s=60.0))
    sched.tick(0)
    change_times = []
    prev = sched.effective_intervals()
    for t, now in evaluations(sched, load, 12):  # readings at 5, 10, ... 60 s
        if now != prev:
            change_times.append(t // NS)
        prev = now
    assert change_times == [5, 20, 35, 50]
    # Restoring waits the longer restore dwell after the last change (50 s).
    load.set(agent=0.5)
    change_times = []
    for t, now in evaluations(sched, load, 50, start_s=65.0):
        if now != prev:
            change_times.append(t // NS)
        prev = now
    assert change_times == [110, 170, 230, 290]


def test_bounds_are_never_left_and_saturation_is_logged_once(caplog):
    cols = collectors(["processes", "cpu"])
    load = Load(agent=50.0)
    sched = make(cols, load=load, min_interval=1.0, max_interval=20.0)
    sched.tick(0)
    seen = []
    with caplog.at_level(logging.WARNING, logger="ingress.collect"):
        for _, now in evaluations(sched, load, 15):
            seen.append(now)
    assert all(1.0 <= v <= 20.0 for snap in seen for v in snap.values())
    assert seen[-1] == {"processes": 20.0, "cpu": 20.0}
    assert sched.stretch_level() == 4  # 5 -> 10 -> 20 for each class, then nothing can grow
    sat = [r for r in caplog.records if "max_interval" in r.getMessage()]
    assert len(sat) == 1
    # Once pressure has eased, saturating again is news again.
    load.set(agent=0.5)
    sched.tick(100 * NS)
    load.set(agent=50.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ingress.collect"):
        list(evaluations(sched, load, 5, start_s=105.0))
    assert len([r for r in caplog.records if "max_interval" in r.getMessage()]) == 1


def test_base_interval_is_clamped_and_the_clamp_logged(caplog):
    cols = collectors(["processes", "cpu", "memory"])
    with caplog.at_level(logging.INFO, logger="ingress.collect"):
        sched = Scheduler(cols, {"processes": 0.2, "cpu": 5.0, "memory": 900.0}, min_interval=1.0,
                          max_interval=300.0, load=Load(), rng=1)
    assert sched.effective_intervals() == {"processes": 1.0, "cpu": 5.0, "memory": 300.0}
    recs = {r.collector: r for r in caplog.records}
    assert set(recs) == {"processes", "memory"}
    assert (recs["processes"].old, recs["processes"].new) == (0.2, 1.0)
    assert "min_interval" in recs["processes"].reason
    assert "max_interval" in recs["memory"].reason


def test_a_class_at_max_is_skipped_for_the_next():
    cols = collectors(["processes", "connections", "cpu"])
    load = Load(agent=50.0)
    sched = Scheduler(cols, {"processes": 40.0, "connections": 5.0, "cpu": 5.0}, max_interval=60.0,
                      load=load, rng=1, thresholds=Thresholds(stretch_dwell_s=0.0))
    sched.tick(0)
    prev = sched.effective_intervals()
    order = []
    for _, now in evaluations(sched, load, 4):
        order.append(changed(prev, now))
        prev = now
    # processes reaches 60 (the max) at once; from then on the ladder passes it by.
    assert order == [["processes"], ["connections"], ["cpu"], ["connections"]]
    assert prev == {"processes": 60.0, "connections": 20.0, "cpu": 10.0}


def test_every_change_is_logged_once_with_its_fields(caplog):
    load = Load(agent=8.0)
    sched = make(load=load)
    sched.tick(0)
    with caplog.at_level(logging.INFO, logger="ingress.collect"):
        list(evaluations(sched, load, 4))  # processes, connections, processes, disk+network
        load.set(agent=4.0)  # hold: no new record
        list(evaluations(sched, load, 5, start_s=25.0))
    recs = [r for r in caplog.records if hasattr(r, "old")]
    assert [(r.collector, r.old, r.new) for r in recs] == [
        ("processes", 5.0, 10.0), ("connections", 5.0, 10.0), ("processes", 10.0, 20.0),
        ("disk", 5.0, 10.0), ("network", 5.0, 10.0),
    ]
    assert all("agent cpu 8.0% > budget 5.0%" in r.reason for r in recs)
    assert all(r.levelno == logging.WARNING for r in recs)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ingress.collect"):
        load.set(agent=0.5)
        list(evaluations(sched, load, 1, start_s=60.0))
    recs = [r for r in caplog.records if hasattr(r, "old")]
    assert [(r.collector, r.old, r.new) for r in recs] == [("disk", 10.0, 5.0), ("network", 10.0, 5.0)]
    assert recs[0].levelno == logging.INFO and "pressure eased" in recs[0].reason


def test_a_failing_load_source_holds_intervals_and_logs_once(caplog):
    def broken():
        raise OSError("no /proc")

    sched = make(load=broken)
    with caplog.at_level(logging.WARNING, logger="ingress.collect"):
        for i in range(5):
            sched.tick(i * 5 * NS)
    assert set(sched.effective_intervals().values()) == {5.0}
    assert len([r for r in caplog.records if "load source failed" in r.getMessage()]) == 1


# ---------------------------------------------------------------- timing of passes


def run_until(sched: Scheduler, end_ns: int) -> list[tuple[int, str, int, tuple]]:
    """Tick exactly at each wake-up until ``end_ns``: (fire time, name, grid time, tenants)."""
    out = []
    while (now := sched.next_wakeup_ns()) <= end_ns:
        out += [(now, d.name, d.nominal_ns, d.tenants) for d in sched.tick(now)]
    return out


def test_each_collector_runs_at_its_own_interval():
    cols = collectors(["cpu", "memory", "disk"])
    sched = Scheduler(cols, {"cpu": 5.0, "memory": 10.0, "disk": 30.0}, load=Load(), rng=3, clock=lambda: 0)
    passes = run_until(sched, 330 * NS)
    for n, every in (("cpu", 5), ("memory", 10), ("disk", 30)):
        grid = [p[2] for p in passes if p[1] == n]
        assert 0 <= grid[0] < every * NS  # the random phase lies within the first interval
        assert {b - a for a, b in zip(grid, grid[1:])} == {every * NS}
        assert len([g for g in grid if g < grid[0] + 300 * NS]) == 300 // every


def test_jitter_spreads_agents_and_passes():
    # A fleet: 40 agents (seeds) that a deploy starts at the same instant.
    first, offsets = [], []
    for seed in range(40):
        sched = Scheduler(collectors(["cpu"]), {"cpu": 10.0}, load=Load(), rng=seed, jitter=0.1, clock=lambda: 0)
        passes = run_until(sched, 100 * NS)
        first.append(passes[0][0])
        offsets += [fire - grid for fire, _, grid, _ in passes]
    # The first pass comes at start: within the first second (plus the grid point's
    # jitter, at most 0.1 x 10 s), not one interval later ...
    assert max(first) <= 2 * NS
    # ... and the fleet's first reads are still spread, not all at one instant.
    assert len({p // (NS // 10) for p in first}) >= 8  # at least 8 distinct 100 ms buckets
    # Each pass fires within jitter x interval of its grid point, and not on it.
    assert all(abs(o) <= NS for o in offsets)
    assert len(set(offsets)) > len(offsets) // 2


def test_one_agents_collectors_share_grid_points_and_wake_ups():
    names = ["cpu", "memory", "disk", "network", "processes"]
    sched = Scheduler(collectors(names), {"cpu": 1.0, "memory": 1.0, "disk": 1.0, "network": 2.0,
                                          "processes": 10.0}, load=Load(), rng=5, jitter=0.1, clock=lambda: 0)
    passes = run_until(sched, 60 * NS)
    by_fire: dict[int, set] = {}
    for fire, name, grid, _ in passes:
        by_fire.setdefault(fire, set()).add(name)
        assert abs(fire - grid) <= NS // 10  # jitter is a fraction of the shortest interval
    wakeups = sorted(by_fire)
    # one wake-up per second serves every collector due then
    assert len(wakeups) == len({g for _, _, g, _ in passes})
    assert 59 <= len(wakeups) <= 61
    assert all({"cpu", "memory", "disk"} <= names_ for names_ in by_fire.values())
    assert sum("processes" in n for n in by_fire.values()) in (6, 7)
    assert sum("network" in n for n in by_fire.values()) in (30, 31)


def test_same_seed_same_schedule_other_seed_other_schedule():
    def schedule(seed):
        cols = collectors(["cpu", "memory", "processes"])
        sched = Scheduler(cols, dict.fromkeys(cols, 5.0), load=Load(), rng=seed, clock=lambda: 0)
        return run_until(sched, 60 * NS)

    assert schedule(11) == schedule(11)
    assert schedule(11) != schedule(12)


def test_a_late_dispatcher_resumes_on_the_grid_without_a_burst():
    cols = collectors(["cpu"])
    sched = Scheduler(cols, {"cpu": 5.0}, load=Load(), rng=NoPhase(), jitter=0.0, clock=lambda: 0)
    assert [d.nominal_ns for d in sched.tick(0)] == [0]
    # Suspended for 23 s: one pass now, standing for the 20 s grid point, then
    # back on the 5 s grid at 25 s.
    assert [d.nominal_ns for d in sched.tick(23 * NS)] == [20 * NS]
    assert sched.next_wakeup_ns() == 25 * NS


def test_a_tenant_that_fell_behind_does_not_catch_up_in_a_burst():
    cols = collectors(["cpu"])
    sched = Scheduler(cols, {"cpu": 5.0}, tenant_intervals={"cpu": {"a": 5.0, "b": 10.0}},
                      load=Load(), rng=NoPhase(), jitter=0.0, clock=lambda: 0)
    assert sched.tick(0)[0].tenants == ("a", "b")
    # 47 s later: b is long overdue and gets this pass, then every second one again.
    assert sched.tick(47 * NS)[0].tenants == ("a", "b")
    got = [sched.tick(t * NS)[0].tenants for t in (50, 55, 60, 65)]
    assert got == [("a",), ("a", "b"), ("a",), ("a", "b")]


# ---------------------------------------------------------------- tenants


def test_due_tenants_follow_each_tenants_interval():
    cols = collectors(["cpu"])
    sched = Scheduler(cols, {"cpu": 5.0}, tenant_intervals={"cpu": {"a": 5.0, "b": 10.0, "c": 15.0}},
                      load=Load(), rng=5, jitter=0.1, clock=lambda: 0)
    passes = run_until(sched, 100 * NS)[:12]
    got = {t: [i for i, p in enumerate(passes) if t in p[3]] for t in "abc"}
    assert got == {"a": list(range(12)), "b": list(range(0, 12, 2)), "c": list(range(0, 12, 3))}


def test_a_tenant_between_passes_gets_the_nearest_pass_at_its_rate():
    cols = collectors(["cpu"])
    sched = Scheduler(cols, {"cpu": 5.0}, tenant_intervals={"cpu": {"a": 7.0}},
                      load=Load(), rng=NoPhase(), jitter=0.0, clock=lambda: 0)
    served = [p[2] for p in run_until(sched, 700 * NS) if p[3]]
    gaps = {b - a for a, b in zip(served, served[1:])}
    assert gaps == {5 * NS, 10 * NS}  # never two passes late, never every pass
    mean = (served[-1] - served[0]) / (len(served) - 1) / NS
    assert 7.0 <= mean <= 7.5


def test_due_tenants_is_a_query_and_tick_consumes_it():
    cols = collectors(["cpu"])
    sched = Scheduler(cols, {"cpu": 5.0}, tenant_intervals={"cpu": {"a": 5.0, "b": 10.0}},
                      load=Load(), rng=NoPhase(), jitter=0.0, clock=lambda: 0)
    assert sched.due_tenants("cpu", 0) == ("a", "b")
    assert sched.due_tenants("cpu", 0) == ("a", "b")
    assert sched.tick(0)[0].tenants == ("a", "b")
    assert sched.due_tenants("cpu", 5 * NS) == ("a",)
    assert sched.tick(5 * NS)[0].tenants == ("a",)
    assert sched.tick(10 * NS)[0].tenants == ("a", "b")
    with pytest.raises(KeyError, match="no collector 'disk'"):
        sched.due_tenants("disk", 0)


def test_a_stretched_collector_serves_every_tenant_each_pass():
    cols = collectors(["processes"])
    load = Load(agent=8.0)
    sched = Scheduler(cols, {"processes": 5.0}, tenant_intervals={"processes": {"a": 5.0, "b": 10.0}},
                      load=load, rng=NoPhase(), jitter=0.0, clock=lambda: 0, sample_every=1000.0,
                      thresholds=Thresholds(stretch_dwell_s=0.0))
    assert sched.tick(0)[0].tenants == ("a", "b")
    # The 1000 s reading stretches processes 5 -> 10 s (the next pass is due at 1000 s anyway).
    passes = run_until(sched, 1005 * NS)
    assert sched.effective_intervals() == {"processes": 10.0}
    # Re-anchored on the last pass (995 s): the next one comes at 1005 s, for both tenants.
    assert [p for p in passes if p[0] >= 1000 * NS] == [(1005 * NS, "processes", 1005 * NS, ("a", "b"))]
    more = run_until(sched, 1100 * NS)
    assert more and all(p[3] == ("a", "b") for p in more)
    assert {b[2] - a[2] for a, b in zip(more, more[1:])} == {10 * NS}


# ---------------------------------------------------------------- threads


class SteppedTime:
    """Clock and wait for the dispatcher thread: each ``advance`` runs one loop turn.

    While the test holds control the dispatcher is parked in ``wait``; ``advance``
    moves the clock, lets exactly one turn run and returns once it parks again.
    """

    def __init__(self) -> None:
        self.now = 0
        self._parked = threading.Semaphore(0)
        self._go = threading.Semaphore(0)
        self._open = False

    def clock(self) -> int:
        return self.now

    def wait(self, timeout: float) -> None:
        if self._open:
            time.sleep(0.001)  # stopping: let stop() see the thread leave
            return
        self._parked.release()
        self._go.acquire()

    def parked(self) -> None:
        assert self._parked.acquire(timeout=SAFETY), "dispatcher did not park"

    def advance(self, to_ns: int) -> None:
        self.now = to_ns
        self._go.release()
        self.parked()

    def release(self) -> None:
        self._open = True
        self._go.release()


def threaded(cols, base=5.0, wrap_clock=lambda clock: clock, **kw):
    t = SteppedTime()
    got: queue.Queue = queue.Queue()
    sched = Scheduler(cols, dict.fromkeys(cols, base), clock=wrap_clock(t.clock), wait=t.wait, load=Load(), rng=NoPhase(),
                      jitter=0.0, wall_clock=lambda: 1_700_000_000 * NS,
                      on_columns=lambda name, columns, tenants: got.put((name, columns, tenants)), **kw)
    return sched, t, got


def test_a_blocked_collector_neither_delays_others_nor_piles_up(caplog):
    gate = threading.Event()
    slow, fast = Fake("health", 4, gate=gate), Fake("cpu", 4)
    sched, t, got = threaded({"health": slow, "cpu": fast})
    with caplog.at_level(logging.WARNING, logger="ingress.collect"):
        sched.start()
        try:
            t.parked()
            assert slow.entered.wait(SAFETY)
            for k in range(1, 5):
                assert got.get(timeout=SAFETY)[0] == "cpu"
                assert sched.wait_idle(["cpu"], SAFETY)
                t.advance(k * 5 * NS)
            assert got.get(timeout=SAFETY)[0] == "cpu"
            assert len(fast.calls) == 5 and len(slow.calls) == 1  # health never entered twice
            assert sched.overruns() == {"health": 4, "cpu": 0}
            gate.set()
            name, cols, _ = got.get(timeout=SAFETY)
            assert name == "health" and cols.ts == 1_700_000_000 * NS
            assert sched.wait_idle(timeout=SAFETY)
            t.advance(25 * NS)
            assert sorted(got.get(timeout=SAFETY)[0] for _ in range(2)) == ["cpu", "health"]
            assert sched.overruns() == {"health": 4, "cpu": 0}
            assert sched.passes() == {"health": 2, "cpu": 6}
        finally:
            gate.set()
            t.release()
            assert sched.stop(SAFETY)
    overrun_logs = [r for r in caplog.records if getattr(r, "reason", "") == "overrun"]
    assert len(overrun_logs) == 1 and overrun_logs[0].collector == "health"


def test_tenants_reach_on_columns():
    sched, t, got = threaded({"cpu": Fake("cpu", 4)}, tenant_intervals={"cpu": {"acme": 5.0, "beta": 10.0}})
    sched.start()
    try:
        t.parked()
        assert got.get(timeout=SAFETY)[2] == ("acme", "beta")
        assert sched.wait_idle(timeout=SAFETY)
        t.advance(5 * NS)
        assert got.get(timeout=SAFETY)[2] == ("acme",)
    finally:
        t.release()
        assert sched.stop(SAFETY)


def test_a_failing_decision_step_is_logged_and_collection_goes_on(caplog):
    boom = {"on": False}

    def flaky(clock):
        def read():
            if boom["on"]:
                boom["on"] = False
                raise RuntimeError("clock went backwards")
            return clock()
        return read

    sched, t, got = threaded({"cpu": Fake("cpu", 4)}, wrap_clock=flaky)
    with caplog.at_level(logging.ERROR, logger="ingress.collect"):
        sched.start()
        try:
            t.parked()
            assert got.get(timeout=SAFETY)[0] == "cpu"
            assert sched.wait_idle(timeout=SAFETY)
            boom["on"] = True
            t.advance(5 * NS)  # this turn fails
            t.advance(10 * NS)  # this one collects again
            assert got.get(timeout=SAFETY)[0] == "cpu"
        finally:
            t.release()
            assert sched.stop(SAFETY)
    assert [r.getMessage() for r in caplog.records] == ["scheduler tick failed; retrying"]


def test_collector_errors_are_counted_and_logged_once_per_streak(caplog):
    bad = Fake("disk", 2)
    bad.fail = True
    sched, t, got = threaded({"disk": bad})
    with caplog.at_level(logging.INFO, logger="ingress.collect"):
        sched.start()
        try:
            t.parked()
            for k in range(1, 4):
                assert sched.wait_idle(timeout=SAFETY)
                t.advance(k * 5 * NS)
            assert sched.wait_idle(timeout=SAFETY)
            assert sched.errors() == {"disk": 4} and got.empty()
            bad.fail = False
            t.advance(20 * NS)
            assert got.get(timeout=SAFETY)[0] == "disk"
        finally:
            t.release()
            assert sched.stop(SAFETY)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("pass failed" in m for m in msgs) == 1
    assert sum("recovered" in m for m in msgs) == 1


def test_stop_gives_up_on_a_stuck_collector_and_says_which(caplog):
    gate = threading.Event()
    stuck = Fake("health", 4, gate=gate)
    sched = Scheduler({"health": stuck}, {"health": 5.0}, load=Load(), rng=NoPhase(), jitter=0.0)
    sched.start()
    try:
        assert stuck.entered.wait(SAFETY)
        with caplog.at_level(logging.WARNING, logger="ingress.collect"):
            assert sched.stop(0.05) is False
        assert any("health" in r.getMessage() and "abandoned" in r.getMessage() for r in caplog.records)
    finally:
        gate.set()


class Overlap(Collector):
    """Records the order of passes and how many ran at the same time."""

    state = {"active": 0, "most": 0, "order": []}
    lock = threading.Lock()

    def __init__(self, name: str, priority: int, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.name, self.priority, self.gate = name, priority, gate

    def collect(self, now_ns: int) -> Columns:
        with self.lock:
            self.state["active"] += 1
            self.state["most"] = max(self.state["most"], self.state["active"])
            self.state["order"].append(self.name)
        if self.gate is not None:
            self.gate.wait(SAFETY)
        with self.lock:
            self.state["active"] -= 1
        return Columns(np.zeros(0, np.uint32), np.zeros(0, np.float64), now_ns)


def test_passes_of_one_grid_point_run_in_turn_most_important_first():
    Overlap.state = {"active": 0, "most": 0, "order": []}
    cols = {n: Overlap(n, p) for n, p in (("processes", 0), ("connections", 1), ("disk", 2), ("cpu", 4))}
    got: queue.Queue = queue.Queue()
    sched = Scheduler(cols, dict.fromkeys(cols, 1.0), load=Load(), rng=NoPhase(), jitter=0.0,
                      on_columns=lambda n, c, t: got.put(n))
    sched.start()
    try:
        assert [got.get(timeout=SAFETY) for _ in range(4)] == ["cpu", "disk", "connections", "processes"]
    finally:
        assert sched.stop(SAFETY)
    assert Overlap.state["most"] == 1  # never two at once
    assert Overlap.state["order"][:4] == ["cpu", "disk", "connections", "processes"]


def test_a_stuck_pass_holds_up_the_others_only_briefly():
    Overlap.state = {"active": 0, "most": 0, "order": []}
    gate = threading.Event()
    cols = {"health": Overlap("health", 4, gate=gate), "cpu": Overlap("cpu", 3), "disk": Overlap("disk", 2)}
    got: queue.Queue = queue.Queue()
    sched = Scheduler(cols, dict.fromkeys(cols, 1.0), load=Load(), rng=NoPhase(), jitter=0.0,
                      on_columns=lambda n, c, t: got.put(n))
    sched.start()
    try:
        # health goes first and hangs; cpu and disk are handed their passes anyway
        assert sorted(got.get(timeout=SAFETY) for _ in range(2)) == ["cpu", "disk"]
        assert Overlap.state["order"][0] == "health" and Overlap.state["active"] >= 1
    finally:
        gate.set()
        assert sched.stop(SAFETY)


def test_real_clock_start_and_stop():
    cols = collectors(["cpu", "memory"])
    got: queue.Queue = queue.Queue()
    sched = Scheduler(cols, dict.fromkeys(cols, 1.0), load=Load(), rng=NoPhase(), jitter=0.0,
                      on_columns=lambda n, c, t: got.put(n))
    sched.start()
    try:
        assert sorted(got.get(timeout=SAFETY) for _ in range(2)) == ["cpu", "memory"]
        with pytest.raises(RuntimeError, match="already started"):
            sched.start()
    finally:
        assert sched.stop(SAFETY)


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("kw, match", [
    ({"base_intervals": {"cpu": 5.0}}, "no interval for collector 'memory'"),
    ({"base_intervals": {"cpu": 5.0, "memory": 5.0, "gpu": 1.0}}, "'gpu' is not one of the collectors"),
    ({"base_intervals": {"cpu": 0.0, "memory": 5.0}}, r"base_intervals\['cpu'\]: 0.0 is not a positive"),
    ({"min_interval": 10.0, "max_interval": 5.0}, "min_interval: 10.0 is above max_interval 5.0"),
    ({"jitter": 0.9}, "jitter: 0.9"),
    ({"cpu_budget_percent": 0}, "cpu_budget_percent: 0"),
    ({"tenant_intervals": {"cpu": {"acme": -1}}}, r"tenant_intervals\['cpu'\]\['acme'\]: -1"),
])
def test_construction_names_what_is_wrong(kw, match):
    args = {"collectors": collectors(["cpu", "memory"]), "base_intervals": {"cpu": 5.0, "memory": 5.0}}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        Scheduler(load=Load(), **args)


def test_on_columns_must_take_tenants():
    with pytest.raises(TypeError, match=r"on_columns must accept \(name, columns, tenants\)"):
        Scheduler(collectors(["cpu"]), {"cpu": 5.0}, load=Load(), on_columns=lambda name, columns: None)


def test_priorities_default_to_the_collector_and_can_be_overridden():
    cols = collectors(["processes", "cpu"])
    load = Load(agent=8.0)
    sched = Scheduler(cols, dict.fromkeys(cols, 5.0), priorities={"cpu": -1}, load=load, rng=1,
                      thresholds=Thresholds(stretch_dwell_s=0.0), clock=lambda: 0)
    sched.tick(0)
    sched.tick(5 * NS)
    assert sched.effective_intervals() == {"processes": 5.0, "cpu": 10.0}


# ---------------------------------------------------------------- the docs tell the truth

DOC = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "scheduling.md"


def test_documented_thresholds_are_the_defaults():
    import dataclasses
    import re

    text = DOC.read_text()
    documented = {k: float(v) for k, v in re.findall(r"`(\w+)`[^*|`]*\*\*([\d.]+)", text)}
    assert documented == {k: float(v) for k, v in dataclasses.asdict(Thresholds()).items()}


def test_documented_stretch_table_is_what_the_scheduler_does():
    text = DOC.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(12))
    load = Load(agent=8.0)
    sched = make(load=load)
    sched.tick(0)
    snaps = [sched.effective_intervals()] + [now for _, now in evaluations(sched, load, 11)]
    for row, snap in zip(rows, snaps):
        cells = [float(c) for c in row[2:]]
        assert cells == [snap["processes"], snap["connections"], snap["disk"], snap["memory"], snap["cpu"]]
        assert snap["disk"] == snap["network"] and snap["cpu"] == snap["health"]
