"""Real processes for the scale benchmarks: the agent, Tansu and ``ingress sink``, measured from outside.

Nothing here imports the agent: CPU and peak RSS come from /proc/PID, counts
from the agent's and the sink's /metrics and from the agent's ``stopped``
line, stored rows and latency from the sink's store once the sink has stopped
(chDB opens a store directory in one process at a time).
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
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def status_mb(pid: int, key: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def agent_env() -> dict:
    """The environment that loads benchmarks/synth_plugin.py into the agent."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, INGRESS_PLUGINS="synth_plugin")


def scrape(url: str, name: str) -> dict[tuple, float]:
    """``{labels tuple: value}`` of one metric family on a Prometheus text page; {} when unreachable."""
    m = re.match(r"http://([^:/]+):(\d+)", url)
    try:
        c = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return {}
    out: dict[tuple, float] = {}
    for mm in re.finditer(rf'^{name}{{([^}}]*)}} ([0-9.e+]+)$', text, re.M):
        labels = tuple(re.findall(r'(\w+)="([^"]*)"', mm.group(1)))
        out[labels] = out.get(labels, 0.0) + float(mm.group(2))
    return out


def per_tenant(values: dict[tuple, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in values.items():
        t = dict(labels).get("tenant")
        if t is not None:
            out[t] = out.get(t, 0.0) + v
    return out


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:4]} exited {proc.returncode}: {text[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} in {path} after {timeout} s: {path.read_text(errors='replace')[-3000:]}")


class Sink:
    """``ingress sink --from-kafka`` into an embedded store, its stderr in a file."""

    def __init__(self, tmp: Path, bootstrap: str, topic_regex: str, group: str) -> None:
        self.store = tmp / "sink-store"
        self.log_path = tmp / "sink.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingress", "sink", "--listen", "127.0.0.1:0", "--store", str(self.store),
             "--from-kafka", bootstrap, "--topic", topic_regex, "--group", group],
            stderr=self._log, stdout=subprocess.DEVNULL)
        line = wait_for_line(self.log_path, "listening on http://127.0.0.1:", self.proc, 60)
        self.url = "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split("/")[0]

    def stored(self) -> dict[str, float]:
        return per_tenant(scrape(self.url, "ingress_sink_samples_stored_total"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


_READ_STORE = """
import json, sys
from ingress.sink_store import open_store
s = open_store(sys.argv[1])
passes = s.rows("SELECT tenant, toString(toUnixTimestamp64Nano(ts)) AS t, count() AS n FROM `ingress`.samples "
                "GROUP BY tenant, t ORDER BY tenant, t", {})
batches = s.rows("SELECT tenant, toString(toUnixTimestamp64Milli(stored_at)) AS at, toString(samples) AS n "
                 "FROM `ingress`.batches FINAL ORDER BY tenant, at", {})
print(json.dumps({"passes": passes, "batches": batches}))
s.close()
"""


def read_store(store: Path) -> tuple[dict, dict]:
    """Per tenant: (pass timestamps ns, samples per pass) and (batch stored-at ns, samples per batch)."""
    r = subprocess.run([sys.executable, "-c", _READ_STORE, str(store)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    passes: dict[str, list] = {}
    for row in got["passes"]:
        passes.setdefault(row["tenant"], []).append((int(row["t"]), int(row["n"])))
    batches: dict[str, list] = {}
    for row in got["batches"]:
        batches.setdefault(row["tenant"], []).append((int(row["at"]) * 1_000_000, int(row["n"])))
    return ({t: np.array(v, np.int64).T for t, v in passes.items()},
            {t: np.array(v, np.int64).T for t, v in batches.items()})


def latencies(passes: np.ndarray, batches: np.ndarray, since_ns: int, until_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(latency ns, weight) of one tenant's samples collected in [since, until).

    A tenant's batches hold its samples in collection order (one ring drained in
    order, one Kafka partition per tenant, consumed in order), so the k-th
    sample by time is in the batch where the running count of stored samples
    (by stored time) passes k. The store keeps no batch id per sample; this
    mapping is exact as long as that order holds.
    """
    ts, n_ts = passes
    at, n_b = batches
    cs, cb = np.cumsum(n_ts), np.cumsum(n_b)
    total = min(int(cs[-1]), int(cb[-1]))
    cuts = np.unique(np.concatenate([[0], cs, cb]))
    cuts = cuts[cuts <= total]
    lo, hi = cuts[:-1], cuts[1:]
    t = ts[np.searchsorted(cs, lo, side="right")]
    s = at[np.searchsorted(cb, lo, side="right")]
    keep = (t >= since_ns) & (t < until_ns)
    return (s - t)[keep], (hi - lo)[keep]


def percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    if len(values) == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cw = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cw, q * cw[-1])])


class Agent:
    """``python -m ingress run -c FILE`` with the synthetic collector loaded."""

    def __init__(self, cfg: Path, log_path: Path) -> None:
        self.cfg, self.log_path = cfg, log_path
        self._log = open(log_path, "ab")
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)], env=agent_env(),
                                     stdout=subprocess.DEVNULL, stderr=self._log)

    def wait_started(self, timeout: float = 300) -> dict:
        line = wait_for_line(self.log_path, '"started"', self.proc, timeout)
        self.t_started = time.monotonic()
        rec = json.loads(line)
        self.url = rec["control"]
        return rec

    def metric(self, name: str) -> dict[str, float]:
        return per_tenant(scrape(self.url, name))

    def stop(self, timeout: float = 120) -> dict:
        """SIGTERM, wait; returns the ``stopped`` record (samples and spooled per tenant)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()
        text = self.log_path.read_text(errors="replace")
        assert self.proc.returncode == 0, text[-3000:]
        stopped = [json.loads(x) for x in text.splitlines() if '"stopped"' in x]
        assert stopped, text[-3000:]
        return stopped[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def spool_pending(cfg: Path) -> dict[str, int]:
    r = subprocess.run([sys.executable, "-m", "ingress", "spool", "stats", "-c", str(cfg), "--json"],
                       env=agent_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return {t: int(v["samples_pending"]) for t, v in json.loads(r.stdout).items()}
