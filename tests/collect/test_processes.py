"""processes collector: golden /proc/PID trees (two passes), pid reuse, vanished and denied reads."""
import json
import math
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from collect_helpers import FIXTURES, SEC, T0, clk_tck, key, live_settings, samples

from ingress.collect.processes import STATES, ProcessesCollector
from ingress.errors import ConfigError

PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_tags(t, pid, name, ppid, **extra):
    user = pwd.getpwuid(os.stat(t.proc / str(pid) / "stat").st_uid).pw_name
    return dict(pid=str(pid), name=name, ppid=str(ppid), user=user, **extra)


def named(s, metric):
    return {dict(k[1])["pid"]: v for k, v in s.items() if k[0] == metric}


def test_first_pass_selection_values_groups_totals(tree):
    t = tree("procs-a")
    hz = clk_tck()
    c = ProcessesCollector(t.settings(match=["nginx"], top=2, slow_every=1))
    s = samples(c, c.collect(T0))
    # match: nginx 10 and 11; top 2 by rss: postgres (20000 pages) and nginx 10 (5000); no CPU rates yet
    assert set(named(s, "processes.memory.rss")) == {"10", "11", "20"}
    n10 = proc_tags(t, 10, "nginx", 1)
    assert s[key("processes.cpu.time", **n10)] == pytest.approx(1500 / hz)  # utime 1000 + stime 500
    assert s[key("processes.memory.rss", **n10)] == 5000 * PAGE
    assert s[key("processes.memory.vms", **n10)] == 200_000_000
    assert s[key("processes.threads", **n10)] == 4
    assert s[key("processes.state", **n10)] == STATES.index("sleeping")
    # btime 1699990000 + starttime 50000 ticks; the injected clock says 1700000000
    assert s[key("processes.age", **n10)] == pytest.approx(1_700_000_000 - (1_699_990_000 + 50000 / hz))
    assert s[key("processes.open_fds", **n10)] == 12
    assert s[key("processes.io.bytes", direction="read", **n10)] == 1_000_000
    assert s[key("processes.io.bytes", direction="write", **n10)] == 2_000_000
    assert s[key("processes.context_switches", type="voluntary", **n10)] == 100
    assert s[key("processes.context_switches", type="involuntary", **n10)] == 7
    assert key("processes.cpu.utilization", **n10) not in s
    assert key("processes.io.bytes_rate", direction="read", **n10) not in s
    assert s[key("processes.cpu.time", **proc_tags(t, 11, "nginx", 10))] == pytest.approx(400 / hz)
    # per-name sums over every non-kernel process
    assert s[key("processes.group.count", name="nginx")] == 2
    assert s[key("processes.group.memory.rss", name="nginx")] == 8000 * PAGE
    assert s[key("processes.group.threads", name="nginx")] == 6
    assert s[key("processes.group.count", name="my (weird) app")] == 1
    assert key("processes.group.count", name="kthreadd") not in s
    assert key("processes.group.cpu.utilization", name="nginx") not in s
    # totals over every process: S x5 (1, 2, 10, 11, 20), R x1 (30), Z x1 (40); pid 50 had no stat
    assert s[key("processes.total.count", state="sleeping")] == 5
    assert s[key("processes.total.count", state="running")] == 1
    assert s[key("processes.total.count", state="zombie")] == 1
    assert s[key("processes.total.count", state="idle")] == 0
    assert s[key("processes.total.threads")] == 1 + 1 + 4 + 2 + 1 + 1 + 1
    assert s[key("processes.skipped", reason="vanished")] == 1
    assert s[key("processes.skipped", reason="denied")] == 0


def test_second_pass_rates_pid_reuse_and_exits(tree):
    t = tree("procs-a")
    hz = clk_tck()
    c = ProcessesCollector(t.settings(match=["nginx"], top=2, slow_every=1))
    first = samples(c, c.collect(T0))
    pg = proc_tags(t, 20, "postgres", 1)
    pg_id = c.table.intern("processes.cpu.time", tuple(sorted(pg.items())))
    assert key("processes.cpu.time", **pg) in first
    k20_old = next(k for k in c._pkeys.tolist() if k & 0x3FFFFF == 20)
    assert "postgres" in c.cmdline(k20_old)
    t.replace("procs-a-later")
    s = samples(c, c.collect(T0 + 5 * SEC))
    n10 = proc_tags(t, 10, "nginx", 1)
    # nginx 10: 1500 -> 1750 ticks over 5 s; nginx 11: 400 -> 450
    assert s[key("processes.cpu.utilization", **n10)] == pytest.approx(250 / hz / 5)
    assert s[key("processes.cpu.utilization", **proc_tags(t, 11, "nginx", 10))] == pytest.approx(50 / hz / 5)
    assert s[key("processes.io.bytes_rate", direction="read", **n10)] == pytest.approx(100_000)
    assert s[key("processes.io.bytes_rate", direction="write", **n10)] == 0
    assert s[key("processes.context_switches", type="voluntary", **n10)] == 160
    # pid 20 now belongs to redis-server (another start time): a new process, no rate carried over,
    # the postgres series are retired, and its cached command line is not reused
    redis = proc_tags(t, 20, "redis-server", 1)
    assert s[key("processes.cpu.time", **redis)] == pytest.approx(30 / hz)
    assert key("processes.cpu.utilization", **redis) not in s
    assert not [k for k in s if ("name", "postgres") in k[1]]
    assert c.table.keys[pg_id] is None or c.table.keys[pg_id][1] != tuple(sorted(pg.items()))
    assert k20_old not in c._meta
    k20_new = next(k for k in c._pkeys.tolist() if k & 0x3FFFFF == 20)
    assert c.cmdline(k20_new) == "redis-server *:6379"
    # groups: rates where a member has one; the exited app's group is gone
    assert s[key("processes.group.cpu.utilization", name="nginx")] == pytest.approx(300 / hz / 5)
    assert s[key("processes.group.cpu.utilization", name="systemd")] == pytest.approx(15 / hz / 5)
    assert s[key("processes.group.cpu.utilization", name="defunct")] == 0
    assert key("processes.group.cpu.utilization", name="redis-server") not in s
    assert s[key("processes.group.count", name="sleep")] == 1
    assert key("processes.group.count", name="my (weird) app") not in s
    assert s[key("processes.skipped", reason="vanished")] == 1  # cumulative: still the one from pass 1


def test_tree_structure(tree):
    t = tree("procs-a")
    c = ProcessesCollector(t.settings())
    c.collect(T0)
    roots = c.tree()
    json.dumps(roots)  # JSON-able as it is
    by_pid = {r["pid"]: r for r in roots}
    assert set(by_pid) == {1, 2}  # init and kthreadd have parent 0
    init = by_pid[1]
    assert sorted(ch["pid"] for ch in init["children"]) == [10, 20, 30]
    nginx = next(ch for ch in init["children"] if ch["pid"] == 10)
    assert [ch["pid"] for ch in nginx["children"]] == [11]
    app = next(ch for ch in init["children"] if ch["pid"] == 30)
    assert app["name"] == "my (weird) app" and [ch["pid"] for ch in app["children"]] == [40]
    assert app["cpu"] is None
    assert sorted(c.children(1)) == [10, 20, 30]
    assert c.parent(11) == 10 and c.parent(999) is None
    sub = c.tree(pid=10, cmdline=True)
    assert sub[0]["cmdline"] == "nginx: master process /usr/sbin/nginx"
    assert c.tree(pid=999) == []


def test_filters_users_cmdline_kernel_threads(tree):
    t = tree("procs-a")
    me = pwd.getpwuid(os.stat(t.proc / "1" / "stat").st_uid).pw_name
    c = ProcessesCollector(t.settings(users=[me], top=0))
    s = samples(c, c.collect(T0))
    assert set(named(s, "processes.threads")) == {"1", "10", "11", "20", "30", "40"}  # no kernel thread
    c = ProcessesCollector(t.settings(users=["no-such-user-here"], top=0))
    assert named(samples(c, c.collect(T0)), "processes.threads") == {}
    c = ProcessesCollector(t.settings(cmdline=r"^nginx: worker", top=0))
    assert set(named(samples(c, c.collect(T0)), "processes.threads")) == {"11"}
    c = ProcessesCollector(t.settings(match=["k*", "nginx"], cmdline="master", top=0, kernel_threads=True))
    assert set(named(samples(c, c.collect(T0)), "processes.threads")) == {"10"}
    c = ProcessesCollector(t.settings(match=["k*"], top=0, kernel_threads=True))
    s = samples(c, c.collect(T0))
    assert set(named(s, "processes.threads")) == {"2"}
    assert s[key("processes.group.count", name="kthreadd")] == 1
    c = ProcessesCollector(t.settings(top=0, groups=False))
    s = samples(c, c.collect(T0))
    assert not [k for k in s if k[0].startswith("processes.group") or ("pid", "1") in k[1]]


def test_bad_options_are_config_errors(tree):
    t = tree("procs-a")
    with pytest.raises(ConfigError, match="option cmdline: '\\(' is not a valid regular expression"):
        ProcessesCollector(t.settings(cmdline="("))
    with pytest.raises(ConfigError, match="option slow_every: 0 is not a positive integer"):
        ProcessesCollector(t.settings(slow_every=0))


def test_slow_fields_only_every_nth_pass(tree):
    t = tree("procs-a")
    c = ProcessesCollector(t.settings(match=["nginx"], top=0, slow_every=3))
    seen = []
    for i in range(4):
        s = samples(c, c.collect(T0 + i * SEC))
        seen.append(bool(named(s, "processes.open_fds")))
        assert set(named(s, "processes.cpu.time")) == {"10", "11"}
    assert seen == [True, False, False, True]


def test_metadata_cache_is_bounded_lru(tree):
    t = tree("procs-a")
    c = ProcessesCollector(t.settings(meta_cache=2))
    c.collect(T0)
    k = {int(x) & 0x3FFFFF: int(x) for x in c._pkeys.tolist()}
    c.cmdline(k[1])
    c.cmdline(k[10])
    c.cmdline(k[1])  # 1 is now the most recent
    c.cmdline(k[11])
    assert list(c._meta) == [k[1], k[11]]
    (t.proc / "1" / "cmdline").write_bytes(b"changed\0")
    assert c.cmdline(k[1]) == "/sbin/init splash"  # served from the cache, no read


def test_process_files_vanishing_mid_pass(tree):
    t = tree("procs-a")
    c = ProcessesCollector(t.settings(match=["nginx"], top=0, slow_every=1))
    (t.proc / "10" / "io").unlink()
    shutil.rmtree(t.proc / "11" / "fd")
    s = samples(c, c.collect(T0))
    assert set(named(s, "processes.cpu.time")) == {"10", "11"}
    assert "10" not in named(s, "processes.io.bytes") and "11" in named(s, "processes.io.bytes")
    assert "11" not in named(s, "processes.open_fds") and named(s, "processes.open_fds")["10"] == 12
    assert s[key("processes.skipped", reason="vanished")] == 1 + 2  # pid 50's stat, 10's io, 11's fd


DENIED_SCRIPT = r"""
import os, sys
from ingress.collect.base import CollectorSettings
from ingress.collect.processes import ProcessesCollector
c = ProcessesCollector(CollectorSettings(proc_root=sys.argv[1], options={"match": ["nginx"], "top": 0}))
if os.geteuid() == 0:  # everything is imported: now become a user the file's mode shuts out
    os.setgid(65534)
    os.setuid(65534)
cols = c.collect(1)
got = {c.table.keys[i]: v for i, v in zip(cols.local_ids.tolist(), cols.values.tolist())}
print(got[("processes.skipped", (("reason", "denied"),))], sum(1 for k in got if k[0] == "processes.io.bytes"))
"""


def test_denied_reads_are_counted_not_raised():
    # A real EACCES needs a user the file's mode shuts out: the pass drops to uid 65534 when we are
    # root, and runs as ourselves otherwise (then we are the shut-out user already).
    tmp = tempfile.mkdtemp(prefix="ingress-denied-")
    try:
        os.chmod(tmp, 0o755)
        root = os.path.join(tmp, "proc")
        shutil.copytree(FIXTURES / "proc" / "procs-a", root)
        for dirpath, _dirs, files in os.walk(root):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        os.chmod(os.path.join(root, "10", "io"), 0o000)
        out = subprocess.run([sys.executable, "-c", DENIED_SCRIPT, root], capture_output=True, text=True,
                             cwd=tmp)
        assert out.returncode == 0, out.stderr
        denied, io_series = out.stdout.split()
        assert float(denied) == 1.0
        assert int(io_series) == 2  # nginx 11's read and write; 10's io was refused
    finally:
        shutil.rmtree(tmp)


def test_steady_state_interns_nothing(tree):
    t = tree("procs-a")
    c = ProcessesCollector(t.settings(match=["nginx"], top=2, slow_every=2))
    c.collect(T0)
    c.collect(T0 + SEC)
    gen = c.table.generation
    ids = c._sel_ids
    c.collect(T0 + 2 * SEC)
    c.collect(T0 + 3 * SEC)
    assert c.table.generation == gen and c._sel_ids is ids


def test_live_host_sanity():
    child = subprocess.Popen(["sleep", "30"])
    try:
        c = ProcessesCollector(live_settings(match=["sleep"], top=5, slow_every=1))
        c.collect(time.time_ns())
        time.sleep(0.2)
        s = samples(c, c.collect(time.time_ns()))
        mine = {dict(k[1])["pid"]: v for k, v in s.items() if k[0] == "processes.memory.rss"}
        assert str(child.pid) in mine and mine[str(child.pid)] > 0
        assert len(mine) >= 5  # the sleep, plus the top 5 by memory (the sleep is not among them)
        for (name, tags), v in s.items():
            assert math.isfinite(v) and v >= 0, (name, tags, v)
            if name == "processes.cpu.utilization":
                assert v <= os.cpu_count() + 0.5
        total = sum(v for k, v in s.items() if k[0] == "processes.total.count")
        assert total >= len(mine)
        assert c.parent(child.pid) == os.getpid()
        assert child.pid in c.children(os.getpid())
    finally:
        child.kill()
        child.wait()


# -- views: one pass, each tenant's selection ----------------------------------------------------

def test_views_share_one_pass_and_each_sees_only_its_selection(tree):
    from ingress.buffer import SeriesRegistry
    from ingress.fanout import FanOut
    from ingress.tenants import TenantSet
    from ingress.config import loads

    t = tree("procs-a")
    c = ProcessesCollector(t.settings(views={"web": {"match": ["nginx"], "top": 0},
                                             "db": {"match": ["postgres"], "top": 0},
                                             "all": {"match": ["*"], "top": 0}}))
    cols = c.collect(T0)
    s = samples(c, cols)
    assert set(named(s, "processes.memory.rss")) == {"1", "10", "11", "20", "30", "40"}  # the union, once
    web, db = cols.drop["web"], cols.drop["db"]
    assert "all" not in cols.drop  # it selected every process of the pass: nothing to leave out

    def seen(lut):
        return {dict(c.table.keys[i][1]).get("pid") for i in cols.local_ids.tolist() if not lut[i]
                and c.table.keys[i][0] == "processes.memory.rss"}

    assert seen(web) == {"10", "11"} and seen(db) == {"20"}
    # sums and totals are everyone's
    g = next(i for i in cols.local_ids.tolist() if c.table.keys[i][0] == "processes.group.count")
    assert not web[g] and not db[g]

    # Through the real fan-out: each tenant gets its processes and the shared sums, nothing else.
    cfg = loads("""
[[tenants]]
id = "web"
collectors = ["processes"]
[[tenants]]
id = "db"
collectors = ["processes"]
[[outputs]]
type = "file"
""")
    tenants = TenantSet(cfg.tenants).enabled
    reg = SeriesRegistry(len(tenants))
    shares = {sh.tenant.id: sh for sh in FanOut(reg).route(c, c.table, cols.local_ids, cols.values, cols.ts,
                                                           tenants, cols.drop)}
    for tid, want in (("web", {"10", "11"}), ("db", {"20"})):
        idx = tenants[[x.id for x in tenants].index(tid)].index
        keys = [reg.key(idx, int(sid)) for sid in shares[tid].series]
        pids = {dict(k[1]).get("pid") for k in keys if k[0].startswith("processes.") and "pid" in dict(k[1])}
        assert pids == want
        assert any(k[0] == "processes.group.count" for k in keys)


def test_views_refuse_bad_selectors_naming_the_view(tree):
    t = tree("procs-a")
    with pytest.raises(ConfigError, match="view 'web': unknown selector\\(s\\) 'slow_every'"):
        ProcessesCollector(t.settings(views={"web": {"slow_every": 2}}))
    with pytest.raises(ConfigError, match="view 'db': option cmdline: '\\(' is not a valid regular expression"):
        ProcessesCollector(t.settings(views={"db": {"cmdline": "("}}))
    with pytest.raises(ConfigError, match="view 'db': option top: -1 is not a non-negative integer"):
        ProcessesCollector(t.settings(views={"db": {"top": -1}}))
    with pytest.raises(ConfigError, match="option views: 3 is not a table"):
        ProcessesCollector(t.settings(views=3))
