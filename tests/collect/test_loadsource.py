"""ProcPressure: agent CPU from process times, host CPU from /proc/stat, PSI, load."""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from ingress.collect.loadsource import (
    PressureSample,
    ProcPressure,
    read_cgroup_throttling,
    read_host_cpu,
    read_psi_cpu_some_avg10,
)

NS = 1_000_000_000

# user nice system idle iowait irq softirq steal guest guest_nice
STAT_0 = "cpu  1000 0 500 8000 500 0 0 0 300 0\ncpu0 500 0 250 4000 250 0 0 0 150 0\nintr 1 2 3\n"
# +300 busy (200 user, 100 system), +600 idle, +100 iowait over the window; guest +50
# is already counted in user and must not be added again.
STAT_1 = "cpu  1200 0 600 8600 600 0 0 0 350 0\ncpu0 600 0 300 4300 300 0 0 0 175 0\nintr 1 2 3\n"
PSI = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


class Script:
    """Scripted clock and process times."""

    def __init__(self) -> None:
        self.now = 10 * NS
        self.cpu_s = 1.0

    def clock(self) -> int:
        return self.now

    def times(self):
        return SimpleNamespace(user=self.cpu_s * 0.75, system=self.cpu_s * 0.25)


def write_proc(root, stat: str, psi: str | None = PSI) -> None:
    (root / "stat").write_text(stat)
    if psi is not None:
        (root / "pressure").mkdir(exist_ok=True)
        (root / "pressure" / "cpu").write_text(psi)


def make(root, script: Script, **kw) -> ProcPressure:
    kw.setdefault("loadavg", lambda: (3.0, 2.0, 1.0))
    kw.setdefault("cpu_count", 2)
    return ProcPressure(clock=script.clock, times=script.times, root=str(root), **kw)


def test_sample_is_the_window_since_the_previous_one(tmp_path):
    write_proc(tmp_path, STAT_0)
    s = Script()
    src = make(tmp_path, s)
    write_proc(tmp_path, STAT_1)
    s.now += 2 * NS
    s.cpu_s += 0.1  # 0.1 s of CPU in a 2 s window: 5 % of one core
    got = src()
    assert got == PressureSample(
        agent_cpu_percent=pytest.approx(5.0),
        host_cpu_percent=pytest.approx(30.0),  # 300 busy of 1000 jiffies
        psi_cpu_some_avg10=12.5,
        load_per_core=1.5,
    )
    # The next window starts where this one ended: no CPU used, no jiffies busy.
    s.now += 2 * NS
    assert src().agent_cpu_percent == 0.0


def test_agent_cpu_is_percent_of_one_core_and_can_exceed_100(tmp_path):
    write_proc(tmp_path, STAT_0)
    s = Script()
    src = make(tmp_path, s)
    s.now += 1 * NS
    s.cpu_s += 1.5  # two threads busy for most of a second
    assert src().agent_cpu_percent == pytest.approx(150.0)


def test_short_window_returns_the_previous_sample(tmp_path):
    write_proc(tmp_path, STAT_0)
    s = Script()
    src = make(tmp_path, s, min_window_s=1.0)
    s.now += 2 * NS
    s.cpu_s += 0.2
    first = src()
    s.now += NS // 10
    s.cpu_s += 5.0
    assert src() is first
    s.now += NS
    assert src().agent_cpu_percent > first.agent_cpu_percent


def test_no_psi_file_means_none(tmp_path):
    write_proc(tmp_path, STAT_0, psi=None)
    s = Script()
    src = make(tmp_path, s)
    s.now += NS
    assert src().psi_cpu_some_avg10 is None
    assert read_psi_cpu_some_avg10(str(tmp_path)) is None


def test_malformed_psi_is_ignored_with_one_warning(tmp_path, caplog):
    write_proc(tmp_path, STAT_0, psi="garbage\n")
    s = Script()
    src = make(tmp_path, s)
    with caplog.at_level(logging.WARNING, logger="ingress.collect"):
        for _ in range(3):
            s.now += 2 * NS
            assert src().psi_cpu_some_avg10 is None
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "pressure" in msgs[0] and "cpu" in msgs[0]


def test_unreadable_stat_counts_as_idle_with_one_warning(tmp_path, caplog):
    s = Script()
    with caplog.at_level(logging.WARNING, logger="ingress.collect"):
        src = make(tmp_path, s)
        for _ in range(3):
            s.now += 2 * NS
            assert src().host_cpu_percent == 0.0
    assert len(caplog.records) == 1
    assert str(tmp_path / "stat") in caplog.records[0].getMessage()


def test_read_host_cpu_names_a_bad_file(tmp_path):
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match=r"stat:1: expected the aggregate 'cpu' line"):
        read_host_cpu(str(tmp_path))


def test_read_host_cpu_excludes_idle_iowait_and_guest(tmp_path):
    write_proc(tmp_path, STAT_0)
    busy, total = read_host_cpu(str(tmp_path))
    assert (busy, total) == (1500, 10000)


def test_proc_root_comes_from_the_environment(tmp_path, monkeypatch):
    write_proc(tmp_path, STAT_0)
    monkeypatch.setenv("INGRESS_PROCFS", str(tmp_path))
    assert read_host_cpu() == (1500, 10000)
    assert read_psi_cpu_some_avg10() == 12.5


def test_real_proc_gives_sane_readings():
    src = ProcPressure(min_window_s=0.0)
    sum(i * i for i in range(20000))  # some CPU so the window is not empty
    got = src()
    assert got.agent_cpu_percent >= 0.0
    assert 0.0 <= got.host_cpu_percent <= 100.0
    assert got.load_per_core >= 0.0
    assert got.load_per_core == pytest.approx(os.getloadavg()[0] / os.cpu_count(), abs=0.5)
    assert got.psi_cpu_some_avg10 is None or got.psi_cpu_some_avg10 >= 0.0


# ---------------------------------------------------------------- cgroup v2 CPU quota


def write_cgroup(tmp_path, rel="/system.slice/ingress.service", cpu_max="50000 100000",
                 periods=100, throttled=10, cgroup_line=None):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "cgroup").write_text(cgroup_line if cgroup_line is not None else f"0::{rel}\n")
    cg = tmp_path / "cgroup" / rel.lstrip("/")
    cg.mkdir(parents=True, exist_ok=True)
    (cg / "cpu.max").write_text(cpu_max + "\n")
    (cg / "cpu.stat").write_text(f"usage_usec 123\nuser_usec 100\nsystem_usec 23\nnr_periods {periods}\n"
                                 f"nr_throttled {throttled}\nthrottled_usec 4567\n")
    return str(proc), str(tmp_path / "cgroup")


def test_read_cgroup_throttling_from_the_own_cgroup(tmp_path):
    proc, fs = write_cgroup(tmp_path)
    assert read_cgroup_throttling(proc, fs) == (100, 10)


@pytest.mark.parametrize("kw", [
    {"cpu_max": "max 100000"},                       # no quota: nothing to be throttled by
    {"cgroup_line": "1:cpu:/\n2:memory:/x\n"},       # cgroup v1 only
])
def test_no_quota_or_no_cgroup_v2_means_none(tmp_path, kw):
    proc, fs = write_cgroup(tmp_path, **kw)
    assert read_cgroup_throttling(proc, fs) is None
    assert read_cgroup_throttling(str(tmp_path / "nowhere"), fs) is None


def test_read_cgroup_throttling_names_a_bad_file(tmp_path):
    proc, fs = write_cgroup(tmp_path)
    bad = tmp_path / "cgroup" / "system.slice" / "ingress.service" / "cpu.stat"
    bad.write_text("usage_usec 1\n")
    with pytest.raises(ValueError, match="ingress.service/cpu.stat: no nr_periods / nr_throttled"):
        read_cgroup_throttling(proc, fs)


def test_throttled_share_is_over_the_window(tmp_path):
    proc, fs = write_cgroup(tmp_path, periods=100, throttled=10)
    write_proc(tmp_path / "proc", STAT_0)
    s = Script()
    src = ProcPressure(clock=s.clock, times=s.times, root=proc, cgroup_fs=fs, loadavg=lambda: (0.1, 0, 0),
                       cpu_count=2)
    write_cgroup(tmp_path, periods=160, throttled=40)  # 30 of the window's 60 periods throttled
    s.now += 2 * NS
    assert src().cgroup_throttled_percent == pytest.approx(50.0)
    s.now += 2 * NS  # no period ran in this window: nothing was throttled
    assert src().cgroup_throttled_percent == 0.0


def test_without_a_quota_the_reading_is_absent(tmp_path):
    proc, fs = write_cgroup(tmp_path, cpu_max="max 100000")
    write_proc(tmp_path / "proc", STAT_0)
    s = Script()
    src = ProcPressure(clock=s.clock, times=s.times, root=proc, cgroup_fs=fs)
    s.now += 2 * NS
    assert src().cgroup_throttled_percent is None
