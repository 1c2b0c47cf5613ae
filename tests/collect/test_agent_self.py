"""agent collector: own resource use measured live, pipeline figures through the stats hook."""
import os

import psutil
from collect_helpers import SEC, T0, key, samples

from ingress.collect.agent_self import AgentCollector
from ingress.collect.base import CollectorSettings


def test_own_usage_matches_psutil():
    c = AgentCollector()
    c.collect(T0)
    # Burn CPU until the kernel's accounting (10 ms ticks) has seen some, so the
    # second pass has something to measure however fast this machine is.
    start = sum(os.times()[:2])
    x = 0
    while sum(os.times()[:2]) < start + 0.03:
        for i in range(10_000):
            x += i * i
    s = samples(c, c.collect(T0 + SEC))
    me = psutil.Process()
    # Threads and fds of the test process can come and go between the two readings (threads
    # left by earlier tests ending): compare readings taken back to back, a few times if need be.
    seen = []
    for attempt in range(5):
        got = samples(c, c.collect(T0 + (2 + attempt) * SEC)) if attempt else s
        ref = (me.num_threads(), me.num_fds() - 1)  # psutil counts the fd its own listing opens
        seen.append(((got[key("agent.threads")], got[key("agent.open_fds")]), ref))
        if seen[-1][0] == ref:
            break
    else:
        raise AssertionError(f"(threads, fds) never matched psutil: {seen}")
    rss = me.memory_info().rss
    assert 0.5 * rss < s[key("agent.memory.rss")] < 2 * rss
    assert 0 < s[key("agent.cpu.time")] <= sum(os.times()[:2]) + 0.01
    assert s[key("agent.cpu.utilization")] > 0


def test_open_fds_follow_what_the_agent_opens():
    c = AgentCollector()
    before = samples(c, c.collect(T0))[key("agent.open_fds")]
    pipes = [os.pipe() for _ in range(6)]
    try:
        assert samples(c, c.collect(T0 + SEC))[key("agent.open_fds")] == before + 12
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert samples(c, c.collect(T0 + 2 * SEC))[key("agent.open_fds")] == before


def test_stats_provider_figures_are_emitted_with_tags():
    stats = {
        "agent.ring.fill": [({"tenant": "acme"}, 0.25), ({"tenant": "beta"}, 0.5)],
        "agent.ring.dropped": ({"tenant": "acme"}, 7),
        "agent.collector.duration": [({"collector": "cpu"}, 0.002)],
        "agent.nonsense": ({}, 1),  # not declared: skipped, logged once
        "agent.series.count": ({"tenant": "acme", "extra": "x"}, 3),  # wrong tags: skipped
    }
    c = AgentCollector(CollectorSettings(options={"stats_provider": lambda: stats}))
    s = samples(c, c.collect(T0))
    assert s[key("agent.ring.fill", tenant="acme")] == 0.25
    assert s[key("agent.ring.fill", tenant="beta")] == 0.5
    assert s[key("agent.ring.dropped", tenant="acme")] == 7
    assert s[key("agent.collector.duration", collector="cpu")] == 0.002
    assert not [k for k in s if k[0] in ("agent.nonsense", "agent.series.count")]
    n = len(c.table)
    s2 = samples(c, c.collect(T0 + SEC))
    assert len(c.table) == n  # the hook's series are interned once
    assert s2[key("agent.ring.fill", tenant="acme")] == 0.25


def test_failing_provider_keeps_own_metrics():
    def boom():
        raise RuntimeError("pipeline not ready")

    c = AgentCollector(CollectorSettings(options={"stats_provider": boom}))
    s = samples(c, c.collect(T0))
    assert key("agent.memory.rss") in s
    assert c.provider_errors == 1
