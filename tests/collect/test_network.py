"""network collector: golden /proc/net/dev and /sys/class/net, rates over two passes."""
import math

import pytest
from collect_helpers import SEC, T0, key, live_settings, samples

from ingress.collect.network import NetworkCollector


def test_counters_and_link_state(tree):
    c = NetworkCollector(tree("host-a").settings())
    s = samples(c, c.collect(T0))
    # "eth0:123456789012": a counter wider than its column runs into the colon
    assert s[key("network.io.bytes", interface="eth0", direction="in")] == 123456789012
    assert s[key("network.io.bytes", interface="eth0", direction="out")] == 2000000
    assert s[key("network.io.packets", interface="eth0", direction="in")] == 5000
    assert s[key("network.io.packets", interface="eth0", direction="out")] == 4000
    assert s[key("network.io.errors", interface="eth0", direction="in")] == 2
    assert s[key("network.io.drops", interface="eth0", direction="in")] == 1
    assert s[key("network.io.drops", interface="eth0", direction="out")] == 3
    assert s[key("network.io.bytes", interface="lo", direction="in")] == 10000
    assert s[key("network.interface.up", interface="eth0")] == 1
    assert s[key("network.interface.up", interface="lo")] == 1  # operstate unknown, flags 0x9 has IFF_UP
    assert s[key("network.interface.up", interface="docker0")] == 0
    assert s[key("network.interface.speed", interface="eth0")] == 10_000 * 1_000_000
    assert key("network.interface.speed", interface="docker0") not in s  # -1: unknown speed
    assert key("network.interface.speed", interface="lo") not in s  # no speed file
    assert s[key("network.interface.mtu", interface="lo")] == 65536
    assert not [k for k in s if k[0].endswith("_rate")]


def test_bandwidth_rates_and_interface_changes(tree):
    t = tree("host-a")
    c = NetworkCollector(t.settings())
    c.collect(T0)
    t.overlay("host-a-later")
    s = samples(c, c.collect(T0 + 5 * SEC))
    # eth0 over 5 s: +5,000,000 B in, +500,000 B out, +1000 packets in, +500 out
    assert s[key("network.io.bytes_rate", interface="eth0", direction="in")] == pytest.approx(1_000_000)
    assert s[key("network.io.bytes_rate", interface="eth0", direction="out")] == pytest.approx(100_000)
    assert s[key("network.io.packets_rate", interface="eth0", direction="in")] == pytest.approx(200)
    assert s[key("network.io.packets_rate", interface="eth0", direction="out")] == pytest.approx(100)
    assert s[key("network.io.errors_rate", interface="eth0", direction="in")] == 0
    assert s[key("network.io.bytes_rate", interface="lo", direction="out")] == pytest.approx(1000)
    assert s[key("network.io.bytes", interface="veth1", direction="out")] == 800
    assert key("network.io.bytes_rate", interface="veth1", direction="out") not in s
    assert not [k for k in s if ("interface", "docker0") in k[1]]


def test_include_exclude(tree):
    c = NetworkCollector(tree("host-a").settings(interfaces_exclude=["lo", "docker*"]))
    s = samples(c, c.collect(T0))
    assert {dict(k[1])["interface"] for k in s} == {"eth0"}


def test_live_host_sanity():
    c = NetworkCollector(live_settings())
    c.collect(T0)
    s = samples(c, c.collect(T0 + SEC))
    assert s[key("network.interface.up", interface="lo")] == 1
    assert s[key("network.io.bytes", interface="lo", direction="in")] > 0
    for (name, tags), v in s.items():
        assert math.isfinite(v) and v >= 0, (name, tags, v)
