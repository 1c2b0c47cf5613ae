"""The memory cap that holds: the shed ladder, its actions, cgroup adoption (unit tests, fakes)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ingress.buffer import RingSet, SeriesRegistry
from ingress.cgroup import CgroupLimits
from ingress.config import loads
from ingress.containment import Containment, adopt_limits
from ingress.memguard import HYSTERESIS, STEPS, MemGuard

MIB = 1 << 20


def guard(values, cap=100 * MIB):
    it = iter(values)
    calls: list[tuple[str, str]] = []
    actions = {name: (lambda n=name: calls.append(("on", n)), lambda n=name: calls.append(("off", n)))
               for name, _ in STEPS}
    return MemGuard(cap, actions, rss=lambda: next(it)), calls


def test_ladder_engages_in_order_and_releases_last_first():
    g, calls = guard([50 * MIB, 76 * MIB, 96 * MIB, 93 * MIB, 89 * MIB, 10 * MIB])
    assert g.tick() == 0 and calls == []
    assert g.tick() == 1 and calls == [("on", "flush")]
    calls.clear()
    assert g.tick() == 5
    assert calls == [("on", "shrink_rings"), ("on", "pause_collectors"), ("on", "cap_queues"),
                     ("on", "refuse_series"), ("on", "flush")]  # flush repeats while it holds
    calls.clear()
    # 93 %: above 95 % - 5 %, so everything holds (hysteresis)
    assert g.tick() == 5 and ("off", "refuse_series") not in calls
    calls.clear()
    assert g.tick() == 4  # 89 %: refuse_series released (< 90 %); cap_queues holds until < 85 %
    assert calls == [("off", "refuse_series"), ("on", "flush")]
    calls.clear()
    assert g.tick() == 0
    assert [c for c in calls if c[0] == "off"] == [("off", "cap_queues"), ("off", "pause_collectors"), ("off", "shrink_rings"),
                                                   ("off", "flush")]
    assert g.counts() == {n: 1 for n, _ in STEPS}
    assert g.last_recovery_s is not None and g.peak_rss == 96 * MIB


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 200), min_size=1, max_size=60))
def test_any_rss_sequence_keeps_the_ladder_consistent(pcts):
    """Whatever the RSS does: active steps are a prefix, each engage has at most one release."""
    g, calls = guard([p * MIB for p in pcts])
    for p in pcts:
        level = g.tick()
        active = [s.active for s in g.steps]
        assert active == [True] * level + [False] * (len(STEPS) - level)
        share = p / 100
        # never above a step's share without it, never far below it with it
        if p == 0:  # unreadable: nothing changes
            continue
        for i, (name, at) in enumerate(STEPS):
            if share >= at:
                assert active[i], (p, name)
            if active[i]:
                assert share >= at - HYSTERESIS - 1e-9, (p, name)
    ons = sum(1 for c in calls if c[0] == "on" and c[1] != "flush")
    offs = sum(1 for c in calls if c[0] == "off" and c[1] != "flush")
    assert 0 <= ons - offs <= len(STEPS) - 1


def test_unreadable_rss_or_no_cap_changes_nothing():
    g, calls = guard([0, 0])
    assert g.tick() == 0 and g.tick() == 0 and calls == []
    g2, calls2 = guard([10 ** 12], cap=0)
    assert g2.tick() == 0 and calls2 == []


def test_failing_action_is_logged_not_raised(caplog):
    g = MemGuard(100, {"flush": (lambda: 1 / 0, lambda: None)}, rss=lambda: 76)
    assert g.tick() == 1
    assert any("memory guard step failed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the actions

def test_ring_soft_limit_drops_by_policy_and_lifts():
    for policy in ("drop_oldest", "drop_newest"):
        r = RingSet(1, 24 * 1000, policy)
        cap = r.capacity(0)
        assert r.limit(0) == cap and r.set_limit(0, 10) == 10
        ids = np.arange(25, dtype=np.uint32)
        dropped = r.push(0, ids, 1, np.arange(25, dtype=np.float64), 0)
        assert r.size(0) == 10 and dropped == 15 and r.dropped(0) == 15
        out = (np.empty(cap, np.uint32), np.empty(cap, np.int64), np.empty(cap), np.empty(cap, np.uint8))
        n = r.drain(0, *out)
        kept = out[0][:n].tolist()
        assert kept == (list(range(15, 25)) if policy == "drop_oldest" else list(range(10)))
        assert r.set_limit(0, 0) == 1 and r.set_limit(0, 10 ** 9) == cap  # clamped
        assert r.push(0, ids, 1, np.zeros(25), 0) == 0 and r.size(0) == 25


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 50), st.booleans()), min_size=1, max_size=40),
       st.sampled_from(["drop_oldest", "drop_newest"]))
def test_ring_with_any_limit_changes_keeps_its_accounting(ops, policy):
    """Every sample offered is held, drained or dropped (counted); size stays under the limit; FIFO kept."""
    r = RingSet(1, 24 * 40, policy)
    cap = r.capacity(0)
    out = (np.empty(cap, np.uint32), np.empty(cap, np.int64), np.empty(cap), np.empty(cap, np.uint8))
    seq = 0
    last = -1
    for n, lim, drain in ops:
        before = r.size(0)
        r.set_limit(0, lim)
        ids = np.arange(seq, seq + n, dtype=np.uint32)
        seq += n
        r.push(0, ids, 1, np.zeros(n), 0)
        assert r.size(0) <= max(min(lim, cap), before)
        assert seq == r.drained(0) + r.size(0) + r.dropped(0)
        if drain:
            k = r.drain(0, *out)
            got = out[0][:k].tolist()
            assert got == sorted(got) and (not got or got[0] > last)
            last = got[-1] if got else last


def test_registry_refuses_new_series_only_while_told():
    reg = SeriesRegistry(1, 100, names=["acme"])
    known = reg.intern(0, "a.b", {"x": "1"})
    reg.refusing_new = True
    assert reg.intern(0, "a.b", {"x": "1"}) == known
    assert reg.intern(0, "a.b", {"x": "2"}) == -1
    assert reg.refused(0) == 1 and reg.refused_memory == 1
    reg.refusing_new = False
    assert reg.intern(0, "a.b", {"x": "2"}) >= 0


def test_scheduler_pauses_lowest_priority_and_resumes():
    from ingress.collect.scheduler import Scheduler

    class C:
        def __init__(self, p):
            self.priority = p

        def collect(self, now):
            raise AssertionError

    class Calm:
        def __call__(self):
            from ingress.collect.pressure import PressureSample
            return PressureSample(0.0, 0.0, None, 0.0)

    s = Scheduler({"procs": C(0), "cpu": C(4)}, {"procs": 1.0, "cpu": 1.0}, load=Calm(), jitter=0.0, rng=1)
    assert s.lowest_priority() == ["procs"]
    s.pause(["procs"])
    assert s.paused() == ["procs"]
    names = set()
    for k in range(1, 6):
        names |= {d.name for d in s.tick(k * 10 ** 9 + 10 ** 9 // 2)}
    assert names == {"cpu"} and s.paused_passes >= 4
    s.resume()
    assert {d.name for d in s.tick(7 * 10 ** 9 + 10 ** 9 // 2)} == {"procs", "cpu"}
    with pytest.raises(ValueError, match="'nope' is not one of the collectors"):
        s.pause(["nope"])


# --------------------------------------------------------------------------- cgroup adoption

BASE = loads("""\
[agent.limits]
memory_mb = 256
cpu_percent = 5.0
[[tenants]]
id = "acme"
[[outputs]]
type = "file"
""")


def test_tighter_cgroup_limits_are_adopted_and_said():
    s, note = adopt_limits(BASE, CgroupLimits(memory_bytes=64 * MIB, cpu_percent=2.5))
    assert (s.agent.limits.memory_mb, s.agent.limits.cpu_percent) == (64, 2.5)
    assert "cgroup memory.max" in note["memory_mb"] and "cgroup cpu.max" in note["cpu_percent"]
    assert s.agent.limits.ring_mb == BASE.agent.limits.ring_mb  # nothing else changes


def test_looser_or_no_cgroup_limits_keep_the_settings():
    for cg in (CgroupLimits(), CgroupLimits(memory_bytes=1 << 40, cpu_percent=400.0)):
        s, note = adopt_limits(BASE, cg)
        assert s is BASE and note == {"memory_mb": "256 (agent.limits)", "cpu_percent": "5 (agent.limits)"}


@given(st.one_of(st.none(), st.integers(0, 1 << 42)), st.one_of(st.none(), st.floats(0.0, 10000.0)))
def test_adopted_limits_are_never_looser(mem, cpu):
    s, _ = adopt_limits(BASE, CgroupLimits(memory_bytes=mem, cpu_percent=cpu))
    assert s.agent.limits.memory_mb <= 256 and s.agent.limits.cpu_percent <= 5.0
    assert s.agent.limits.memory_mb >= 1


def test_containment_actions_reach_rings_scheduler_outputs_registry():
    calls = []
    rings = RingSet(2, 24 * 800)
    reg = SeriesRegistry(2, 10, names=["a", "b"])
    sched = SimpleNamespace(lowest_priority=lambda: ["procs"], pause=lambda n: calls.append(("pause", n)),
                            resume=lambda: calls.append(("resume",)))
    out = SimpleNamespace(limit_queue=lambda f: calls.append(("queue", f)))
    agent = SimpleNamespace(rings=rings, registry=reg, scheduler=sched, outputs=[out], spool=object(),
                            flush=lambda: calls.append(("flush",)), tenants=None)
    rss = iter([96 * MIB, 10 * MIB])
    c = Containment(agent, cgroup=lambda: CgroupLimits(), rss=lambda: next(rss))
    c.adopt(dataclasses.replace(BASE, agent=dataclasses.replace(
        BASE.agent, limits=dataclasses.replace(BASE.agent.limits, memory_mb=100))))
    c.every_second()
    assert rings.limit(0) == rings.capacity(0) // 4 and reg.refusing_new
    assert ("pause", ["procs"]) in calls and ("queue", 0.25) in calls and ("flush",) in calls
    assert c.status()["active"] == [n for n, _ in STEPS]
    c.every_second()
    assert rings.limit(0) == rings.capacity(0) and not reg.refusing_new
    assert ("resume",) in calls and ("queue", None) in calls and c.status()["level"] == 0
