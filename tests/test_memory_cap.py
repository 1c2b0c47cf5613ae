"""The memory cap under a flood: a real `ingress run` flooded with new series stays
UNDER `agent.limits.memory_mb`, sheds load (counted, shown in /metrics and
/readyz), evicts the flood's idle series and keeps running. Behaviour only;
benchmarks/bench_memory_cap.py measures.

The margin. The guard does not wait for its once-a-second read: the series
registry calls its growth check every 64 KB of new series it accounts (about
130 of this flood's), and the scheduler before every pass, so
`pause_collectors` (85 % of 64 MB = 54.4 MB) and `refuse_series` (95 % =
60.8 MB) engage within the pass that grows. What can still come on top of the
95 % step: one check's worth of series (64 KB) and what the collector itself
allocates in one pass before any of its series reach the registry (its own
table; for this flood, 20,000 series, a few MB, which a pass started below
85 % cannot push past 95 %). MARGIN_MB = 1 MB below the cap is the headroom
this test asserts: the peak (VmHWM, the highest RSS the process ever had) must
stay under 63 MB. Measured peaks are in docs/benchmarks.md. Without the growth
checks the same flood passed 63 MB in most runs (63.3 to 69.8 MB), so the
assertion tells the two apart.

Recovery. Once the flood has ended the agent must resume: the paused flood
collector drops its caches (its last pass), and the guard releases a level
that held with the RSS flat under its top step's share for its probation wait,
the highest step first. The agent's default wait is 30 s; this test shortens
it to PROBATION_S through INGRESS_MEMGUARD_PROBATION_S (docs/operations.md).
Asserted: every costly step (refuse_series, cap_queues, pause_collectors) is
released within the wait, and the flood collector then runs again (no paused
pass after that). Not asserted: level 0. At this cap the RSS rests at 50 to
53 MB after the flood (36 MB before it), above the 48 MB share of `flush`
(docs/benchmarks.md), so `flush` and sometimes `shrink_rings` hold, which the
guard must not release above their shares.
"""
from __future__ import annotations

import pytest

from memflood import CAP_MB, FloodAgent

MARGIN_MB = 1.0  # the peak stays this far under the cap; see the docstring
SERIES_PER_PASS = 20000
PROBATION_S = 2.0  # the guard's probation wait for this test (the agent's default is 30 s)
RECOVER_WAIT_S = 20.0
SETTLE_S = 4.0  # after the costly steps are released: two probation waits in which they must stay released


@pytest.mark.integration  # a real agent process
def test_flood_stays_under_the_cap_sheds_evicts_and_keeps_running(tmp_path):
    r = FloodAgent(tmp_path, series=SERIES_PER_PASS, probation_s=PROBATION_S).start().run(
        flood_s=8.0, recover_wait_s=RECOVER_WAIT_S, settle_s=SETTLE_S)
    print(f"peak RSS {r.peak_rss_mb:.1f} MB (cap {CAP_MB} MB, headroom {CAP_MB - r.peak_rss_mb:.1f} MB); "
          f"costly steps released after {r.resumed_s} s, level 0 after {r.recovery_s} s; trace {r.level_trace}; dropped {r.dropped}")
    assert r.peak_rss_mb < CAP_MB - MARGIN_MB, (
        f"peak RSS {r.peak_rss_mb:.1f} MB not under the {CAP_MB} MB cap - {MARGIN_MB} MB margin; "
        f"trace {r.level_trace}")
    # Shedding engaged, and shows: the level and step counters in /metrics, 503 memory_shedding in /readyz.
    assert r.max_level >= 1, r.level_trace
    assert r.steps.get("flush", 0) >= 1, r.steps
    assert r.readyz_shedding
    # The flood collector (lowest priority) was paused or its new series refused: the growth was stopped, counted.
    assert r.dropped["collector_paused_passes"] + r.dropped["series_refused_memory"] > 0, r.dropped
    # Once the flood ended, its idle series were evicted from the registry while the guard shed load,
    # and the level came down from where the flood took it.
    assert r.dropped["series_evicted_memory"] > 0, r.dropped
    # ... and it resumed: every costly step released within the wait and still released at the end,
    # and the flood's collector runs again (no paused pass after pause_collectors was released).
    assert r.resumed_s is not None, f"pause_collectors not released within {RECOVER_WAIT_S} s: {r.level_trace}"
    assert r.level_trace[-1][1] < 3, r.level_trace
    assert r.ready_after, "/readyz not 200 once only flush/shrink_rings held"
    assert r.dropped["collector_paused_passes"] == r.paused_at_resume, (r.dropped, r.paused_at_resume)
    # The agent kept running and collecting (the cpu collector) after the flood, and stopped cleanly.
    assert r.alive_after and r.collected_after
    assert r.exit_code == 0
