"""Flood a real ``ingress run`` with new series under a memory cap; shared by
tests/test_memory_cap.py and benchmarks/bench_memory_cap.py.

The agent runs with ``tests/flood_plugin.py`` (``INGRESS_PLUGINS=flood_plugin``),
``agent.limits.memory_mb = 64``, a cardinality cap far above the flood (so the
memory guard, not ``max_series``, is what stops it) and the control API on a
free port. ``probation_s`` sets the guard's release on probation through
``INGRESS_MEMGUARD_PROBATION_S`` (None: the agent's default, 30 s). Everything is read from outside: VmHWM/VmRSS and CPU time from
/proc/PID, the guard from ``/metrics`` and ``/readyz``.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
TICK = os.sysconf("SC_CLK_TCK")
CAP_MB = 64

CONFIG = """
[agent]
data_dir = "{data}"
interval = "1s"
[agent.limits]
memory_mb = {cap}
cpu_percent = {cpu}
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["flood", "cpu"]
interval = "1s"
max_series = 10000000
[tenants.flood]
series = {series}
stop_file = "{stop}"
[[outputs]]
type = "file"
"""

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """``{(name, '{labels}'): value}`` of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


@dataclass
class FloodResult:
    peak_rss_mb: float = 0.0  # VmHWM at the end: the highest RSS the agent ever had
    max_level: int = 0  # highest ingress_memory_shed_level seen
    readyz_shedding: bool = False  # /readyz answered 503 with reason memory_shedding at least once
    ready_after: bool = False  # /readyz answered 200 after the costly steps were released
    recovery_s: float | None = None  # flood ended -> shed level 0 (None: not within the wait)
    resumed_s: float | None = None  # flood ended -> level under 3 (pause_collectors and above released)
    paused_at_resume: float | None = None  # ingress_collector_paused_passes_total at that moment
    steps: dict[str, float] = field(default_factory=dict)  # ingress_memory_shed_steps_total by step
    dropped: dict[str, float] = field(default_factory=dict)  # samples/series dropped by reason
    alive_after: bool = False  # the agent still ran when the flood had ended
    collected_after: bool = False  # it still collected (samples counter moved) after the flood
    exit_code: int | None = None
    level_trace: list[tuple[float, int, float]] = field(default_factory=list)  # (t, level, rss MB)


class FloodAgent:
    def __init__(self, tmp: Path, *, series: int, cpu_percent: float = 5.0, cap_mb: int = CAP_MB,
                 probation_s: float | None = None) -> None:
        self.probation_s = probation_s
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.stop_file = tmp / "flood.stop"
        self.cfg = tmp / "agent.toml"
        self.cfg.write_text(CONFIG.format(data=tmp / "data", cap=cap_mb, cpu=cpu_percent, series=series,
                                          stop=self.stop_file))
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "FloodAgent":
        env = {**os.environ, "INGRESS_PLUGINS": "flood_plugin",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        env.pop("INGRESS_MEMGUARD_PROBATION_S", None)
        if self.probation_s is not None:
            env["INGRESS_MEMGUARD_PROBATION_S"] = str(self.probation_s)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(self.cfg)],
                                     stderr=self._logf, stdout=subprocess.DEVNULL, env=env)
        end = time.monotonic() + 90
        while not self.url:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.tail()}")
            for line in self.log.read_text().splitlines():
                if '"msg":"started"' in line:
                    self.url = json.loads(line)["control"]
            if time.monotonic() > end:
                raise AssertionError("no started line: " + self.tail())
            time.sleep(0.1)
        return self

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def metrics(self) -> dict[tuple[str, str], float]:
        status, body = _get(self.url, "/metrics")
        assert status == 200, body[:500]
        return parse_metrics(body.decode())

    def readyz(self) -> tuple[int, dict]:
        status, body = _get(self.url, "/readyz")
        return status, json.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

    def run(self, flood_s: float, recover_wait_s: float, settle_s: float | None = None) -> FloodResult:
        """Flood for ``flood_s``, end the flood, wait up to ``recover_wait_s`` for level 0, stop.

        ``settle_s``: stop waiting ``settle_s`` after the costly steps were released (level < 3)
        instead of waiting for level 0, which a 64 MB cap does not reach (docs/operations.md).
        """
        r = FloodResult()
        t0 = time.monotonic()

        def sample() -> dict:
            m = self.metrics()
            lvl = int(m.get(("ingress_memory_shed_level", ""), 0))
            r.max_level = max(r.max_level, lvl)
            r.level_trace.append((round(time.monotonic() - t0, 1), lvl,
                                  round(proc_status_kb(self.proc.pid, "VmRSS") / 1024, 1)))
            if lvl >= 3 and not r.readyz_shedding:  # pause_collectors or above: work is held back
                status, doc = self.readyz()
                r.readyz_shedding = status == 503 and any(
                    x.get("reason") == "memory_shedding" for x in doc.get("reasons", []))
            return m

        try:
            while time.monotonic() - t0 < flood_s:
                assert self.proc.poll() is None, f"agent exited during the flood: {self.tail()}"
                sample()
                time.sleep(0.5)
            self.stop_file.touch()
            t_end = time.monotonic()
            before = _collected(sample())
            while time.monotonic() - t_end < recover_wait_s:
                time.sleep(0.5)
                m = sample()
                if r.level_trace[-1][1] < 3 and r.resumed_s is None:
                    r.resumed_s = time.monotonic() - t_end
                    r.paused_at_resume = m.get(("ingress_collector_paused_passes_total", ""), 0)
                if r.level_trace[-1][1] == 0 and r.max_level > 0:
                    r.recovery_s = time.monotonic() - t_end
                    break
                if settle_s is not None and r.resumed_s is not None and \
                        time.monotonic() - t_end > r.resumed_s + settle_s:
                    break
            time.sleep(2.5)  # the cpu collector keeps collecting after the flood
            m = sample()
            r.collected_after = _collected(m) > before
            r.alive_after = self.proc.poll() is None
            if r.level_trace[-1][1] < 3:  # only light steps (if any) hold: ready again
                r.ready_after = self.readyz()[0] == 200
            r.peak_rss_mb = proc_status_kb(self.proc.pid, "VmHWM") / 1024
            r.steps = {_label(k[1], "reason"): v for k, v in m.items() if k[0] == "ingress_memory_shed_steps_total"}
            for (name, labels), v in m.items():
                if name == "ingress_samples_dropped_total":
                    reason = _label(labels, "reason")
                    r.dropped[reason] = r.dropped.get(reason, 0) + v
            r.dropped["series_refused_memory"] = m.get(("ingress_series_refused_memory_total", ""), 0)
            r.dropped["collector_paused_passes"] = m.get(("ingress_collector_paused_passes_total", ""), 0)
            r.dropped["series_evicted_memory"] = m.get(("ingress_series_evicted_memory_total", ""), 0)
        finally:
            r.exit_code = self.stop()
        return r


def cpu_hogs(n: int) -> list[subprocess.Popen]:
    """``n`` busy-loop processes: host load beside the agent (kill them when done)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def agent_cpu_share(agent: FloodAgent, warm_s: float, window_s: float) -> float:
    """The agent's own CPU over ``window_s`` after ``warm_s``, as a share of one core (0.05 = 5 %)."""
    time.sleep(warm_s)
    c0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
    time.sleep(window_s)
    c1, t1 = cpu_seconds(agent.proc.pid), time.monotonic()
    assert agent.proc.poll() is None, agent.tail()
    return (c1 - c0) / (t1 - t0)


def _label(labels: str, key: str) -> str:
    m = re.search(key + r'="([^"]*)"', labels)
    return m.group(1) if m else ""


def _collected(m: dict) -> float:
    return sum(v for (name, _), v in m.items() if name == "ingress_samples_collected_total")
