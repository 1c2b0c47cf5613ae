"""The memory cap under a flood: a real `ingress run` flooded with new series stays near
`agent.limits.memory_mb`, sheds load (counted, shown in /metrics and /readyz)
and keeps running. Behaviour only; benchmarks/bench_memory_cap.py measures.

The margin. The guard reads the agent's RSS once a second (docs/operations.md,
"Resource caps"); it cannot act on growth it has not read. The last read below
the final step (95 % of 64 MB = 60.8 MB) can be followed by one second of
flood before the next read engages every step at once. MARGIN_MB = 8 MB (cap
+ 8 = 72 MB) is one such second of this flood (20,000 new series) as first
estimated (5 to 10 MB). Measured since: up to 15 MB in one of the first
seconds (an unguarded agent: 34 -> 64 -> 116 MB at 0, 2 and 10 s), and peaks
of 63.3, 65.1 and 69.8 MB with the guard, so the cap itself is passed and a
read just under a step followed by a full pass could pass 72 MB too. The
margin is kept, not widened, to show that (docs/benchmarks.md). Without the
guard the same flood passes 72 MB within about 4 s, so the assertion tells
the two apart.
"""
from __future__ import annotations

import pytest

from memflood import CAP_MB, FloodAgent

MARGIN_MB = 8.0  # one guard tick of growth above the 95 % step, as estimated; see the docstring
SERIES_PER_PASS = 20000


@pytest.mark.integration  # a real agent process
def test_flood_stays_under_the_cap_sheds_and_keeps_running(tmp_path):
    r = FloodAgent(tmp_path, series=SERIES_PER_PASS).start().run(flood_s=8.0, recover_wait_s=0.0)
    assert r.peak_rss_mb < CAP_MB + MARGIN_MB, (
        f"peak RSS {r.peak_rss_mb:.1f} MB over the {CAP_MB} MB cap + {MARGIN_MB} MB margin; trace {r.level_trace}")
    # Shedding engaged, and shows: the level and step counters in /metrics, 503 memory_shedding in /readyz.
    assert r.max_level >= 1, r.level_trace
    assert r.steps.get("flush", 0) >= 1, r.steps
    assert r.readyz_shedding
    # The flood collector (lowest priority) was paused or its new series refused: the growth was stopped, counted.
    assert r.dropped["collector_paused_passes"] + r.dropped["series_refused_memory"] > 0, r.dropped
    # The agent kept running and collecting (the cpu collector) after the flood, and stopped cleanly.
    assert r.alive_after and r.collected_after
    assert r.exit_code == 0
