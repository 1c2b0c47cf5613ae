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
            from ingress.collect.loadsource import PressureSample
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


# --------------------------------------------------------------------------- checks at growth

def test_check_engages_at_growth_and_only_tick_releases():
    g, calls = guard([50 * MIB, 86 * MIB, 96 * MIB, 10 * MIB, 10 * MIB])
    assert g.check() == 0 and calls == []
    assert g.check() == 3
    assert calls == [("on", "flush"), ("on", "shrink_rings"), ("on", "pause_collectors")]
    calls.clear()
    assert g.check() == 5 and calls == [("on", "cap_queues"), ("on", "refuse_series")]  # no repeated flush
    calls.clear()
    assert g.check() == 5 and calls == []  # at 10 %: a growth check never releases
    assert g.tick() == 0 and calls[0] == ("off", "refuse_series") and g.checks == 4


def test_check_never_waits_for_a_guard_that_is_moving():
    reads = []
    g = MemGuard(100 * MIB, {}, rss=lambda: reads.append(1) or 99 * MIB)
    g._lock.acquire()  # a tick (flushing) in the main loop
    try:
        assert g.check() == 0 and reads == []
    finally:
        g._lock.release()
    assert g.check() == 5 and reads == [1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200)), min_size=1, max_size=60))
def test_any_mix_of_ticks_and_growth_checks_keeps_the_ladder_consistent(ops):
    g, calls = guard([p * MIB for _, p in ops])
    for is_tick, p in ops:
        before = g.level
        level = g.tick() if is_tick else g.check()
        assert [s.active for s in g.steps] == [True] * level + [False] * (len(STEPS) - level)
        share = p / 100
        assert all(s.active for s in g.steps if share >= s.share)  # reached: engaged
        if not is_tick:
            assert level >= before  # a growth check never releases
    ons = [n for a, n in calls if a == "on" and n != "flush"]
    offs = [n for a, n in calls if a == "off"]
    for name, _ in STEPS[1:]:
        assert 0 <= ons.count(name) - offs.count(name) <= 1
    assert g.counts()["refuse_series"] == ons.count("refuse_series")


def _agent_with_registry(reg, rings=None, calls=None):
    calls = calls if calls is not None else []
    wanted = __import__("threading").Event()

    def evict(now_ns, ttl_s=None):
        out = reg.evict(now_ns) if ttl_s is None else reg.evict(now_ns, ttl_s=ttl_s)
        return sum(len(v) for v in out.values())

    pipeline = SimpleNamespace(flush_wanted=wanted, evict=evict)
    sched = SimpleNamespace(lowest_priority=lambda: ["flood"], pause=lambda n: calls.append(("pause", n)),
                            resume=lambda: calls.append(("resume",)), before_pass=None,
                            effective_intervals=lambda: {"flood": 1.0, "cpu": 1.0})
    return SimpleNamespace(rings=rings or RingSet(1, 24 * 800), registry=reg, scheduler=sched, outputs=[],
                           spool=object(), pipeline=pipeline, settings=None,
                           flush=lambda: calls.append(("flush", __import__("threading").get_ident())),
                           tenants=None), calls


def _contain(agent, rss, cap_mb=100):
    c = Containment(agent, cgroup=lambda: CgroupLimits(), rss=rss)
    c.adopt(dataclasses.replace(BASE, agent=dataclasses.replace(
        BASE.agent, limits=dataclasses.replace(BASE.agent.limits, memory_mb=cap_mb))))
    return c


def test_registry_growth_reaches_the_guard_in_a_collector_thread_which_never_flushes():
    """refuse_series and pause_collectors engage within the pass that grows (a collector
    thread); the flush, which only the main loop may run, is asked for, not run there."""
    import threading

    reg = SeriesRegistry(1, 10_000_000, names=["acme"])
    base = 60 * MIB
    agent, calls = _agent_with_registry(reg)
    c = _contain(agent, rss=lambda: base + reg.accounted_bytes())
    c.every_second()  # the main loop: wires the hooks, level 0
    assert reg.on_growth is not None and agent.scheduler.before_pass is not None and c.guard.level == 0
    out = {}

    def a_pass():
        out["ids"] = [reg.intern(0, "flood.value", (("key", str(k)),)) for k in range(80_000)]

    th = threading.Thread(target=a_pass)
    th.start()
    th.join()
    assert c.guard.level == 5 and reg.refusing_new
    assert ("pause", ["flood"]) in calls
    assert not any(x[0] == "flush" for x in calls) and agent.pipeline.flush_wanted.is_set()
    assert base + reg.accounted_bytes() < 0.95 * 100 * MIB + reg.check_every_bytes + 1024
    assert reg.refused_memory == sum(i < 0 for i in out["ids"]) > 0
    c.every_second()  # back in the main loop: the repeated flush runs here
    assert ("flush", threading.get_ident()) in calls


def test_while_shedding_idle_series_are_evicted_and_memory_comes_back(monkeypatch):
    import ingress.containment as containment

    reg = SeriesRegistry(1, 10_000_000, ttl_s=600, names=["acme"])
    now = [1_000 * 10**9]
    monkeypatch.setattr(containment.time, "time_ns", lambda: now[0])
    trims = []
    monkeypatch.setattr(containment, "_malloc_trim", lambda: trims.append(1) or True)
    agent, calls = _agent_with_registry(reg)
    agent.flush = lambda: reg.release()  # the flush releases what was evicted before it
    c = _contain(agent, rss=lambda: 67 * MIB + reg.accounted_bytes())  # 20,000 series: about 76 %
    cpu = [reg.intern(0, "cpu", (("core", str(i)),), now_ns=now[0]) for i in range(4)]
    for k in range(20_000):
        reg.intern(0, "flood.value", (("key", str(k)),), now_ns=now[0])
    assert c.shed_ttl_s() == containment.SHED_TTL_MIN_S  # 1 s collectors: 2 passes < 5 s minimum
    c.every_second()
    assert c.guard.level >= 1 and reg.count(0) == 20_004  # nothing idle long enough yet
    for _ in range(6):  # the cpu collector goes on; the flood has stopped
        now[0] += 10**9
        reg.touch(0, np.array(cpu, np.uint32), now[0])
        c.every_second()
    assert reg.count(0) == 4 and reg.evicted_memory == 20_000
    for _ in range(3):
        now[0] += 10**9
        c.every_second()
    assert c.guard.level == 0 and c.guard.last_recovery_s is not None
    assert reg.accounted_bytes() < 4 * 1000 and trims == [1] and c.trims == 1
    assert [reg.key(0, i)[0] for i in cpu] == ["cpu"] * 4  # what is still collected stays


def test_no_early_eviction_below_the_first_step(monkeypatch):
    reg = SeriesRegistry(1, 100, ttl_s=600, names=["acme"])
    agent, _ = _agent_with_registry(reg)
    c = _contain(agent, rss=lambda: 10 * MIB)
    reg.intern(0, "m", now_ns=0)
    for _ in range(3):
        c.every_second()
    assert reg.count(0) == 1 and reg.evicted_memory == 0


def test_shed_ttl_follows_the_longest_interval():
    reg = SeriesRegistry(1, 100, names=["acme"])
    agent, _ = _agent_with_registry(reg)
    agent.scheduler.effective_intervals = lambda: {"processes": 30.0, "cpu": 10.0}
    c = _contain(agent, rss=lambda: 10 * MIB)
    assert c.shed_ttl_s() == 60.0
    agent.settings = SimpleNamespace(tenants=[SimpleNamespace(interval_s=45.0)])
    assert c.shed_ttl_s() == 90.0


def test_a_reloaded_registry_and_scheduler_are_hooked_and_keep_the_steps():
    reg = SeriesRegistry(1, 100, names=["acme"])
    agent, calls = _agent_with_registry(reg)
    c = _contain(agent, rss=lambda: 99 * MIB)
    c.every_second()
    assert reg.refusing_new and ("pause", ["flood"]) in calls
    calls.clear()
    agent.registry = SeriesRegistry(1, 100, names=["acme"])  # a reload built new ones
    agent.scheduler = SimpleNamespace(**{**vars(agent.scheduler), "before_pass": None})
    c.every_second()
    assert agent.registry.refusing_new and agent.registry.on_growth is not None
    assert agent.scheduler.before_pass is not None and ("pause", ["flood"]) in calls


def test_scheduler_skips_a_pass_its_before_pass_hook_paused():
    from ingress.collect.scheduler import Due, Scheduler

    ran = []

    class C:
        def __init__(self, p):
            self.priority = p

        def collect(self, now):
            ran.append(now)
            raise RuntimeError("not reached")

    s = Scheduler({"flood": C(0), "cpu": C(4)}, {"flood": 1.0, "cpu": 1.0}, jitter=0.0, rng=1)
    s.before_pass = lambda: s.pause(s.lowest_priority())
    s._run(s._slot("flood"), Due("flood", 0, ("acme",)))
    assert ran == [] and s.paused_passes == 1
    s._run(s._slot("cpu"), Due("cpu", 0, ("acme",)))
    assert len(ran) == 1 and s.paused_passes == 1


# --------------------------------------------------------------------------- release on probation (issue 11)

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def probation_guard(probation_s=30.0, probation_max_s=None, cap=100 * MIB):
    """A guard on a fake clock and a settable RSS (``box[0]``, in % of the cap)."""
    box = [0]
    clock = Clock()
    calls: list[tuple[str, str]] = []
    actions = {name: (lambda n=name: calls.append(("on", n)), lambda n=name: calls.append(("off", n)))
               for name, _ in STEPS}
    g = MemGuard(cap, actions, rss=lambda: box[0] * cap // 100, clock=clock, probation_s=probation_s,
                 probation_max_s=probation_max_s)
    return g, box, clock, calls


def run(g, box, clock, pct, seconds):
    """Tick once a second for ``seconds`` with the RSS at ``pct`` %; the levels seen."""
    box[0] = pct
    out = []
    for _ in range(int(seconds)):
        clock.t += 1
        out.append(g.tick())
    return out


def test_a_level_held_flat_is_released_on_probation_highest_first():
    """The flood's end state: level 4 at 86 % (above every hysteresis threshold), RSS flat."""
    g, box, clock, calls = probation_guard()
    box[0] = 91
    assert g.tick() == 4
    levels = run(g, box, clock, 86, 29)
    assert levels == [4] * 29 and g.released_probation == 0  # held 29 s: not yet
    calls.clear()
    assert run(g, box, clock, 86, 1) == [3]  # held 30 s, not grown, under cap_queues' 90 %: released
    assert ("off", "cap_queues") in calls and g.released_probation == 1
    # 86 % is above pause_collectors' share (85 %): it is never released on probation there
    assert set(run(g, box, clock, 86, 120)) == {3} and g.released_probation == 1
    # the paused collector let go of its pass: 82 %, still above every hysteresis threshold
    levels = run(g, box, clock, 82, 30)
    assert levels[:-1] == [3] * 29 and levels[-1] == 2 and g.steps[2].active is False
    assert set(run(g, box, clock, 82, 90)) == {2}  # 82 % >= shrink_rings' 80 %: it holds
    assert run(g, box, clock, 78, 30)[-1] == 1
    assert run(g, box, clock, 72, 30)[-1] == 0  # 72 %: above flush's hysteresis threshold (70 %)
    assert g.released_probation == 4 and g.failed_probation == 0
    assert [c for c in calls if c[0] == "off"] == [("off", "cap_queues"), ("off", "pause_collectors"),
                                                   ("off", "shrink_rings"), ("off", "flush")]
    assert g.last_recovery_s is not None and g.over_since is None


def test_growth_restarts_the_hold_and_noise_does_not():
    g, box, clock, _ = probation_guard()
    box[0] = 91
    g.tick()
    run(g, box, clock, 86, 20)
    assert run(g, box, clock, 88, 20) == [4] * 20  # grew by 2 % of the cap at 20 s: the hold starts again
    assert run(g, box, clock, 88, 11) == [4] * 10 + [3]  # 30 s after the growth (its tick is the start)
    g2, box2, clock2, _ = probation_guard()
    box2[0] = 91
    g2.tick()
    # within GROWTH_TOLERANCE (1 % of the cap): page noise, not growth
    levels = [run(g2, box2, clock2, 86 + (i % 2), 1)[0] for i in range(30)]
    assert levels[-1] == 3


def test_a_failed_probation_reengages_at_once_and_doubles_the_wait_up_to_its_cap():
    g, box, clock, calls = probation_guard(probation_s=10, probation_max_s=40)
    box[0] = 91
    g.tick()
    waits = []
    for _ in range(5):
        for held in range(1, 100):
            if run(g, box, clock, 86, 1) == [3]:
                break
        waits.append(held)
        box[0] = 90  # the released step's share is reached again: at the next growth check
        assert g.check() == 4 and g.steps[3].active
    assert waits == [10, 20, 40, 40, 40]  # doubled after each failure, capped
    assert g.failed_probation == 5 and g.counts()["cap_queues"] == 6
    # a clean probation (it stays under the share for the wait) resets the wait
    run(g, box, clock, 86, 40)
    assert g.level == 3
    run(g, box, clock, 86, 40)  # probation of cap_queues over, clean
    assert g.probation_wait == 10


def test_probation_off_and_growth_checks_never_release():
    g, box, clock, _ = probation_guard(probation_s=0)
    box[0] = 91
    g.tick()
    assert set(run(g, box, clock, 86, 600)) == {4} and g.released_probation == 0
    g2, box2, clock2, _ = probation_guard(probation_s=1)
    box2[0] = 91
    g2.check()
    for _ in range(10):
        clock2.t += 5
        box2[0] = 86
        assert g2.check() == 4  # only the tick releases


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 110), st.booleans()), min_size=1, max_size=80),
       st.integers(1, 74), st.sampled_from([1.0, 3.0, 30.0]))  # 0 % reads as unreadable: moves nothing
def test_any_rss_sequence_probation_keeps_its_promises(readings, low, probation_s):
    """Over any RSS sequence (seconds elapsed, % of cap, tick or growth check):

    * a step is never released while the RSS is at or above its share, and every share
      reached is engaged (the ladder re-engages at once);
    * a release either passes the hysteresis or comes after a hold of the probation wait;
    * then, with the RSS low and flat long enough, the ladder comes back to level 0.
    """
    g, box, clock, calls = probation_guard(probation_s=probation_s)
    for dt, pct, is_tick in readings:
        clock.t += dt
        box[0] = pct
        before, held = g.level, g._hold_since
        wait = g.probation_wait
        level = g.tick() if is_tick else g.check()
        share = pct / 100
        assert [s.active for s in g.steps] == [True] * level + [False] * (len(STEPS) - level)
        assert all(s.active for s in g.steps if share >= s.share), (pct, level)
        if level < before:
            assert is_tick
            dropped = g.steps[before - 1]
            assert share < dropped.share  # never released at or above its share
            by_hysteresis = share < dropped.share - HYSTERESIS
            assert by_hysteresis or (before - level == 1 and clock.t - held >= wait)
    limit = 5 * (g.probation_max_s + 2)
    for _ in range(int(limit)):
        clock.t += 1
        box[0] = low
        if g.tick() == 0:
            break
    assert g.level == 0 and not g.active, (low, g.level)
    ons = [n for a, n in calls if a == "on" and n != "flush"]
    offs = [n for a, n in calls if a == "off"]
    for name, _ in STEPS[1:]:
        assert ons.count(name) == offs.count(name)  # every engagement released once


def test_probation_wait_comes_from_the_environment_or_defaults(monkeypatch, caplog):
    from ingress.containment import PROBATION_ENV, _probation_s
    from ingress.memguard import PROBATION_S

    monkeypatch.setenv(PROBATION_ENV, "2.5")
    assert _probation_s() == 2.5
    monkeypatch.delenv(PROBATION_ENV)
    assert _probation_s() == PROBATION_S == 30.0
    agent, _ = _agent_with_registry(SeriesRegistry(1, 10, names=["a"]))
    monkeypatch.setenv(PROBATION_ENV, "0")
    assert _contain(agent, rss=lambda: 0).guard.probation_s == 0


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
                 st.sampled_from(["-1", "nan", "inf", "-inf", "1e999", "3s", " ", "0x10"])))
def test_any_bad_probation_variable_is_one_line_and_the_default(raw):
    from ingress.containment import PROBATION_ENV, _probation_s
    from ingress.memguard import PROBATION_S

    try:
        good = float(raw)
        good = good if good == good and 0 <= good < float("inf") else None
    except ValueError:
        good = None
    os_env = __import__("os").environ
    old = os_env.get(PROBATION_ENV)
    lines = []
    import ingress.containment as cm

    real = cm.log
    cm.log = SimpleNamespace(warning=lambda msg, **kw: lines.append(msg))
    try:
        os_env[PROBATION_ENV] = raw
        v = _probation_s()
    finally:
        cm.log = real
        if old is None:
            os_env.pop(PROBATION_ENV, None)
        else:
            os_env[PROBATION_ENV] = old
    if raw == "":
        assert v == PROBATION_S and not lines
    elif good is not None:
        assert v == good and not lines
    else:
        assert v == PROBATION_S and len(lines) == 1 and PROBATION_ENV in lines[0] and "\n" not in lines[0]


# --------------------------------------------------------------------------- what comes back on release

def test_series_refused_while_shedding_are_accepted_at_their_next_pass_after_release():
    """Before: the fan-out kept REFUSED for them until their tenant next had an eviction."""
    from ingress.collect.base import GAUGE, SeriesTable
    from ingress.fanout import FanOut
    from ingress.tenants import TenantSet

    reg = SeriesRegistry(1, 1000, names=["acme"])
    fan = FanOut(reg)
    tenants = TenantSet(BASE.tenants).enabled
    table = SeriesTable()
    ids = np.array([table.intern("flood.value", (("key", str(i)),), GAUGE) for i in range(10)], np.uint32)
    pipeline = SimpleNamespace(retry_refused=fan.retry_refused, evict=lambda *a, **k: 0)
    agent = SimpleNamespace(rings=RingSet(1, 24 * 800), registry=reg, scheduler=None, outputs=[], spool=None,
                            pipeline=pipeline, settings=None, flush=lambda: None, tenants=None)
    pct = [96]
    c = _contain(agent, rss=lambda: pct[0] * MIB)
    c.every_second()
    assert reg.refusing_new
    assert fan.route("flood", table, ids, np.ones(10), 0, tenants) == []  # every one refused
    assert reg.count(0) == 0 and fan.counts["acme"].refused == 10
    pct[0] = 10
    c.every_second()
    assert not reg.refusing_new and c.guard.level == 0
    out = fan.route("flood", table, ids, np.ones(10), 0, tenants)
    assert len(out) == 1 and len(out[0].series) == 10 and reg.count(0) == 10


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=12))
def test_any_refuse_and_release_sequence_leaves_no_series_refused_once_released(passes):
    """Passes of new and known series while refuse_series holds or not: once it is released,
    the next pass of every series routes it (nothing stays refused without a cardinality cap)."""
    from ingress.collect.base import GAUGE, SeriesTable
    from ingress.fanout import FanOut
    from ingress.tenants import TenantSet

    reg = SeriesRegistry(1, 100_000, names=["acme"])
    fan = FanOut(reg)
    tenants = TenantSet(BASE.tenants).enabled
    table = SeriesTable()
    agent = SimpleNamespace(rings=RingSet(1, 24 * 800), registry=reg, scheduler=None, outputs=[], spool=None,
                            pipeline=SimpleNamespace(retry_refused=fan.retry_refused, evict=lambda *a, **k: 0),
                            settings=None, flush=lambda: None, tenants=None)
    pct = [10]
    c = _contain(agent, rss=lambda: pct[0] * MIB)
    seen: list[int] = []
    for n, refusing in passes:
        seen += [table.intern("flood.value", (("key", str(len(seen) + i)),), GAUGE) for i in range(n)]
        pct[0] = 96 if refusing else 10
        c.every_second()
        fan.route("flood", table, np.array(seen, np.uint32), np.ones(len(seen)), 0, tenants)
    pct[0] = 10
    c.every_second()
    out = fan.route("flood", table, np.array(seen, np.uint32), np.ones(len(seen)), 0, tenants)
    assert len(out) == 1 and len(out[0].series) == len(seen) == reg.count(0)


def test_collector_drop_caches_lets_go_of_the_shared_tag_pairs():
    from ingress.collect.base import GAUGE, Collector, MetricSpec

    class C(Collector):
        name = "c"
        metrics = (MetricSpec("c.v", "1", "v", GAUGE, ("pid",)),)

    c = C()
    for i in range(100):
        c.series("c.v", pid=str(i))
    assert len(c._pairs) == 100
    c.drop_caches()
    assert c._pairs == {}
    assert c.series("c.v", pid="5") == c.series("c.v", pid="5")  # still interns, sharing afresh
    assert len(c._pairs) == 1
    # the table: retired series at the top of the id space go, with their free ids
    c2 = C()
    ids = [c2.series("c.v", pid=str(i)) for i in range(1000)]
    for sid in ids[10:]:
        c2.table.retire(sid)
    assert len(c2.table) == 1000 and len(c2.table._free) == 990
    c2.drop_caches()
    assert len(c2.table) == 10 and c2.table._free == [] and c2.table.live() == 10
    assert c2.series("c.v", pid="3") == ids[3] and c2.series("c.v", pid="new") == 10


def test_paused_collectors_drop_their_caches_once_per_pause_and_only_when_idle():
    dropped = []
    busy = {"flood": True}
    col = SimpleNamespace(drop_caches=lambda: dropped.append("flood"))
    paused: list[str] = []

    def pause(names):
        paused[:] = names

    sched = SimpleNamespace(lowest_priority=lambda: ["flood"], pause=pause, resume=lambda: paused.clear(),
                            paused=lambda: list(paused), before_pass=None,
                            idle_collector=lambda n: None if busy[n] else col,
                            effective_intervals=lambda: {"flood": 1.0})
    agent = SimpleNamespace(rings=RingSet(1, 24 * 800), registry=SeriesRegistry(1, 10, names=["a"]),
                            scheduler=sched, outputs=[], spool=None, pipeline=None, settings=None,
                            flush=lambda: None, tenants=None)
    pct = [86]
    c = _contain(agent, rss=lambda: pct[0] * MIB)
    c.every_second()
    assert paused == ["flood"] and dropped == []  # its pass still runs: not now
    busy["flood"] = False
    c.every_second()
    c.every_second()
    assert dropped == ["flood"]  # once per pause
    pct[0] = 10
    c.every_second()
    assert paused == []
    pct[0] = 86
    c.every_second()
    assert dropped == ["flood", "flood"]  # a new pause: dropped again


def test_scheduler_idle_collector_is_none_while_a_pass_is_handed_over():
    from ingress.collect.scheduler import Scheduler

    class C:
        priority = 0

        def collect(self, now):
            raise AssertionError

    col = C()
    s = Scheduler({"procs": col}, {"procs": 1.0}, jitter=0.0, rng=1)
    assert s.idle_collector("nope") is None
    assert s.idle_collector("procs") is col
    due = []
    for k in range(0, 4):
        due = due or s.tick(k * 10 ** 9 + 10 ** 9 // 2)
    assert [d.name for d in due] == ["procs"]
    s.dispatch(due)  # handed over (no worker started): busy
    assert s.idle_collector("procs") is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("intern"), st.integers(0, 40)), st.tuples(st.just("retire"), st.integers(0, 40)),
                          st.tuples(st.just("compact"), st.just(0))), max_size=80))
def test_series_table_compaction_keeps_ids_and_the_fan_out_right(ops):
    """Any mix of intern / retire / compact (what a paused collector's drop_caches does): a live
    series keeps its id, ids never collide, and the fan-out routes each id to its own series."""
    from ingress.collect.base import GAUGE, SeriesTable
    from ingress.fanout import FanOut
    from ingress.tenants import TenantSet

    table = SeriesTable()
    reg = SeriesRegistry(1, 100_000, names=["acme"])
    fan = FanOut(reg)
    tenants = TenantSet(BASE.tenants).enabled
    live: dict[int, int] = {}  # key number -> local id
    for op, k in ops:
        if op == "intern":
            sid = table.intern("flood.value", (("key", str(k)),), GAUGE)
            assert live.setdefault(k, sid) == sid
        elif op == "retire" and k in live:
            table.retire(live.pop(k))
        elif op == "compact":
            table.compact()
        assert len(set(live.values())) == len(live) and table.live() == len(live)
        assert all(table.keys[sid] == ("flood.value", (("key", str(k)),)) for k, sid in live.items())
        if live:
            ids = np.array(sorted(live.values()), np.uint32)
            (share,) = fan.route("t", table, ids, ids.astype(np.float64), 0, tenants)
            got = {reg.key(0, int(g))[1][0][1]: v for g, v in zip(share.series.tolist(), share.values.tolist())}
            assert got == {str(k): float(sid) for k, sid in live.items()}
