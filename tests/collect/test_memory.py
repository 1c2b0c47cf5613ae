"""memory collector: golden /proc/meminfo and /proc/vmstat numbers worked out by hand."""
import math

import pytest
from collect_helpers import SEC, T0, key, live_settings, samples

from ingress.collect.memory import MemoryCollector

KB = 1024


def test_meminfo_bytes_and_derived(tree):
    c = MemoryCollector(tree("host-a").settings())
    s = samples(c, c.collect(T0))
    assert s[key("memory.total")] == 16000000 * KB
    assert s[key("memory.free")] == 4000000 * KB
    assert s[key("memory.available")] == 10000000 * KB
    assert s[key("memory.used")] == 6000000 * KB
    assert s[key("memory.utilization")] == pytest.approx(0.375)
    assert s[key("memory.buffers")] == 200000 * KB
    assert s[key("memory.cached")] == 5000000 * KB
    assert s[key("memory.dirty")] == 1234 * KB
    assert s[key("memory.writeback")] == 0
    assert s[key("memory.shared")] == 300000 * KB
    assert s[key("memory.slab_reclaimable")] == 400000 * KB
    assert s[key("memory.slab_unreclaimable")] == 100000 * KB
    assert s[key("memory.swap.total")] == 2000000 * KB
    assert s[key("memory.swap.used")] == 500000 * KB
    assert s[key("memory.swap.utilization")] == pytest.approx(0.25)
    assert s[key("memory.swap.cached")] == 1000 * KB
    assert s[key("memory.pressure.avg", scope="full", window="300s")] == 0.15
    assert s[key("memory.pressure.stall_time", scope="some")] == 1.0
    assert s[key("memory.major_faults")] == 300
    assert key("memory.major_faults_rate") not in s


def test_swap_traffic_rates(tree):
    t = tree("host-a")
    c = MemoryCollector(t.settings())
    page = c.page_size
    s1 = samples(c, c.collect(T0))
    assert s1[key("memory.swap.io", direction="in")] == 100 * page
    assert s1[key("memory.swap.io", direction="out")] == 200 * page
    t.overlay("host-a-later")
    s = samples(c, c.collect(T0 + 5 * SEC))
    # pswpin 100 -> 150, pswpout 200 -> 400, pgmajfault 300 -> 350, over 5 s
    assert s[key("memory.swap.io_rate", direction="in")] == pytest.approx(50 * page / 5)
    assert s[key("memory.swap.io_rate", direction="out")] == pytest.approx(200 * page / 5)
    assert s[key("memory.major_faults_rate")] == pytest.approx(10.0)


def test_no_swap_no_psi_no_vmstat(tree):
    c = MemoryCollector(tree("host-b").settings())
    s = samples(c, c.collect(T0))
    assert s[key("memory.swap.total")] == 0
    assert key("memory.swap.utilization") not in s  # 0/0 is not a sample
    assert not [k for k in s if "pressure" in k[0] or k[0].startswith("memory.swap.io")]
    assert s[key("memory.utilization")] == pytest.approx(0.2)


def test_live_host_sanity():
    c = MemoryCollector(live_settings())
    s = samples(c, c.collect(T0))
    total = s[key("memory.total")]
    assert total > 64 * 1024 * 1024
    for (name, tags), v in s.items():
        assert math.isfinite(v) and v >= 0, (name, tags, v)
        if c._specs[name].unit == "By" and not name.startswith("memory.swap"):
            assert v <= total, name
    assert 0 < s[key("memory.utilization")] < 1
