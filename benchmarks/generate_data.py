"""A seeded, realistic host-metrics workload shared by the benchmarks.

About 1,000 series shaped like what the collectors emit: per-CPU mode counters,
per-interface and per-device counters, filesystem and memory gauges, per-process
gauges and counters, TCP state gauges, health-check latencies. Values carry the
precision the kernel reports them with (jiffies as centiseconds, bytes and
packets as integers, percentages with one decimal), except the share listed
in ``FULL_PRECISION_KINDS``, which are computed ratios or timings stored as
full-entropy doubles. Every collector pass stamps all its samples with one
timestamp; the pass starts 1 s after the previous one, with a jitter per pass.
Samples come out tick-major, the order in which the rings drain.

``python -m benchmarks.generate_data`` prints the mix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SEED = int(os.environ.get("INGRESS_BENCH_SEED", "1234"))
T0 = 1_717_171_717_000_000_000  # ns since the epoch
KINDS = ("counter", "gauge_slow", "gauge_noisy", "constant", "full_precision")
FULL_PRECISION_KINDS = ("full_precision",)


@dataclass(frozen=True)
class Workload:
    seed: int
    series: list            # (name, tags) per series
    kinds: list             # kind of each series, one of KINDS
    series_index: np.ndarray  # uint32, tick-major
    timestamps: np.ndarray    # int64
    values: np.ndarray        # float64
    n_ticks: int

    @property
    def n_series(self) -> int:
        return len(self.series)

    def ticks(self, first: int, count: int) -> tuple:
        """The columns of ``count`` collector passes starting at pass ``first``."""
        s = self.n_series
        sl = slice(first * s, (first + count) * s)
        return self.series_index[sl], self.timestamps[sl], self.values[sl]

    def share(self, kinds=FULL_PRECISION_KINDS) -> float:
        return sum(k in kinds for k in self.kinds) / len(self.kinds)


def _catalogue(rng) -> list[tuple[str, dict, str, dict]]:
    """(name, tags, kind, parameters) for every series."""
    out = []
    modes = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    for cpu in range(8):
        for mode in modes:
            share = {"idle": 0.6, "user": 0.25, "system": 0.08}.get(mode, 0.01)
            # seconds with jiffy (1/100 s) resolution; at most 1 s per second per CPU
            out.append(("system.cpu.time", {"cpu": f"cpu{cpu}", "state": mode}, "counter",
                        dict(start=rng.integers(10**5, 10**7), rate=share, scale=100)))
            out.append(("system.cpu.utilization", {"cpu": f"cpu{cpu}", "state": mode},
                        "full_precision", dict(level=share, noise=share / 5)))
    for i, name in enumerate(["total", "available", "used", "free", "buffers", "cached",
                              "shared", "slab", "swap.used", "swap.free"]):
        out.append((f"system.memory.{name}" if "swap" not in name else f"system.{name}", {},
                    "gauge_slow", dict(level=rng.integers(2**28, 2**34), step=4096,
                                       move=0.3 if name != "total" else 0.0)))
    out.append(("system.memory.utilization", {}, "full_precision", dict(level=0.42, noise=0.001)))
    for m in ("1m", "5m", "15m"):
        out.append(("system.cpu.load_average", {"window": m}, "gauge_noisy",
                    dict(level=1.5, noise=0.2, decimals=2)))
    for dev in ["nvme0n1", "nvme1n1", "sda", "sdb"]:
        for d in ["read", "write"]:
            out.append(("system.disk.io", {"device": dev, "direction": d}, "counter",
                        dict(start=rng.integers(10**9, 10**12), rate=rng.integers(10**4, 10**7), scale=1)))
            out.append(("system.disk.operations", {"device": dev, "direction": d}, "counter",
                        dict(start=rng.integers(10**5, 10**8), rate=rng.integers(1, 500), scale=1)))
            out.append(("system.disk.merged", {"device": dev, "direction": d}, "counter",
                        dict(start=rng.integers(10**3, 10**6), rate=rng.integers(0, 20), scale=1)))
            out.append(("system.disk.operation_time", {"device": dev, "direction": d}, "counter",
                        dict(start=rng.integers(10**4, 10**8), rate=rng.integers(1, 300), scale=1)))
        out.append(("system.disk.io_time", {"device": dev}, "counter",
                    dict(start=rng.integers(10**4, 10**8), rate=rng.integers(1, 900), scale=1)))
        out.append(("system.disk.pending_operations", {"device": dev}, "gauge_noisy",
                    dict(level=2, noise=2, decimals=0)))
    for iface in ["lo", "eth0", "eth1", "docker0", "veth1a2b3c", "wg0"]:
        for d in ["receive", "transmit"]:
            out.append(("system.network.io", {"device": iface, "direction": d}, "counter",
                        dict(start=rng.integers(10**9, 10**13), rate=rng.integers(10**3, 10**7), scale=1)))
            out.append(("system.network.packets", {"device": iface, "direction": d}, "counter",
                        dict(start=rng.integers(10**6, 10**10), rate=rng.integers(10, 10**4), scale=1)))
            for what in ["errors", "dropped"]:
                out.append((f"system.network.{what}", {"device": iface, "direction": d}, "constant",
                            dict(level=float(rng.integers(0, 3)))))
    for mnt, dev in [("/", "nvme0n1p2"), ("/boot", "nvme0n1p1"), ("/home", "nvme1n1p1"),
                     ("/var/lib/docker", "sda1"), ("/data", "sdb1")]:
        for state in ["used", "free", "reserved"]:
            out.append(("system.filesystem.usage", {"device": dev, "mountpoint": mnt, "state": state},
                        "gauge_slow" if state != "reserved" else "constant",
                        dict(level=rng.integers(2**30, 2**40), step=4096, move=0.5)))
        out.append(("system.filesystem.inodes.usage", {"device": dev, "mountpoint": mnt, "state": "used"},
                    "gauge_slow", dict(level=rng.integers(10**4, 10**7), step=1, move=0.3)))
    for state in ["established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
                  "close", "close_wait", "last_ack", "listen", "closing"]:
        out.append(("system.network.connections", {"protocol": "tcp", "state": state},
                    "gauge_noisy", dict(level=rng.integers(0, 400), noise=3, decimals=0)))
    for h in ["api", "db", "cache", "queue", "auth"]:
        out.append(("health.latency", {"check": h}, "full_precision", dict(level=0.004, noise=0.001)))
        out.append(("health.up", {"check": h}, "constant", dict(level=1.0)))
    names = ["nginx", "postgres", "redis-server", "python3", "node", "java", "sshd", "systemd",
             "containerd", "dockerd", "kubelet", "chrome", "gunicorn", "celery", "envoy"]
    n_proc = 0
    while len(out) < 1000:
        name = names[n_proc % len(names)]
        pid = str(int(rng.integers(300, 4_000_000)))
        tags = {"process": name, "pid": pid}
        out += [
            ("process.cpu.time", tags, "counter",
             dict(start=rng.integers(10, 10**6), rate=rng.random() * 0.3, scale=100)),
            ("process.cpu.utilization", tags, "gauge_noisy", dict(level=rng.random() * 30, noise=2, decimals=1)),
            ("process.memory.rss", tags, "gauge_slow", dict(level=rng.integers(2**20, 2**32), step=4096, move=0.4)),
            ("process.memory.vms", tags, "gauge_slow", dict(level=rng.integers(2**24, 2**36), step=4096, move=0.1)),
            ("process.threads", tags, "constant", dict(level=float(rng.integers(1, 64)))),
            ("process.open_file_descriptors", tags, "gauge_noisy",
             dict(level=rng.integers(8, 500), noise=1, decimals=0)),
            ("process.disk.io", {**tags, "direction": "read"}, "counter",
             dict(start=rng.integers(0, 10**10), rate=rng.integers(0, 10**5), scale=1)),
            ("process.disk.io", {**tags, "direction": "write"}, "counter",
             dict(start=rng.integers(0, 10**10), rate=rng.integers(0, 10**5), scale=1)),
            ("process.context_switches", {**tags, "type": "voluntary"}, "counter",
             dict(start=rng.integers(0, 10**8), rate=rng.integers(0, 2000), scale=1)),
            ("process.memory.utilization", tags, "full_precision", dict(level=rng.random() * 0.05, noise=0.0005)),
        ]
        n_proc += 1
    return out[:1000]


def _values(rng, kind: str, p: dict, n: int) -> np.ndarray:
    if kind == "counter":
        # bursty: the rate itself wanders (lognormal per pass), then Poisson arrivals
        burst = np.exp(rng.normal(0, 0.5, n))
        inc = rng.poisson(max(float(p["rate"]), 0.01) * p.get("scale", 1) * burst)
        return (p["start"] + np.cumsum(inc)) / p.get("scale", 1)
    if kind == "gauge_slow":
        moves = (rng.random(n) < p["move"]) * rng.integers(-64, 65, n) * p["step"]
        return np.maximum(p["level"] + np.cumsum(moves), 0).astype(np.float64)
    if kind == "gauge_noisy":
        walk = p["level"] + np.cumsum(rng.normal(0, p["noise"], n)) * 0.3
        return np.round(np.abs(walk), p["decimals"])
    if kind == "constant":
        return np.full(n, float(p["level"]))
    if kind == "full_precision":
        return np.abs(p["level"] + rng.normal(0, p["noise"], n))
    raise ValueError(kind)


def workload(n_ticks: int = 100, seed: int = SEED) -> Workload:
    """~1,000 series x ``n_ticks`` passes at 1 s, tick-major."""
    rng = np.random.default_rng(seed)
    cat = _catalogue(rng)
    s = len(cat)
    vals = np.empty((n_ticks, s), np.float64)
    for j, (_, _, kind, p) in enumerate(cat):
        vals[:, j] = _values(rng, kind, p, n_ticks)
    # one stamp per pass: 1 s apart, a few ms of scheduling jitter, ns resolution
    jitter = rng.normal(0, 3e6, n_ticks).astype(np.int64) + rng.integers(0, 1000, n_ticks)
    ts = T0 + np.arange(n_ticks, dtype=np.int64) * 1_000_000_000 + jitter
    return Workload(
        seed=seed,
        series=[(name, tags) for name, tags, _, _ in cat],
        kinds=[kind for _, _, kind, _ in cat],
        series_index=np.tile(np.arange(s, dtype=np.uint32), n_ticks),
        timestamps=np.repeat(ts, s),
        values=vals.reshape(-1),
        n_ticks=n_ticks,
    )


if __name__ == "__main__":
    w = workload()
    print(f"seed {w.seed}: {w.n_series} series x {w.n_ticks} ticks = {len(w.values)} samples")
    for k in KINDS:
        print(f"  {k:<15} {sum(x == k for x in w.kinds):4d} series ({w.share((k,)):.0%})")
