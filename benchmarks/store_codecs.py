"""Codec and throughput figures of the sink's store (docs/aggregator.md, "Numbers").

Run: ``.venv/bin/python benchmarks/store_codecs.py [DIR]`` (not a pytest
benchmark: it takes a minute and prints a table).

1. Codecs: one synthetic day of 200 series at a 10 s interval (1.73 M
   samples: gauges as 2-decimal random walks, counters as growing integers,
   timestamps on the interval with millisecond jitter, as an agent makes
   them) is written into one table per codec pair; bytes per sample per
   column after OPTIMIZE FINAL.
2. The chosen schema through ClickHouseStore.put: batches of 1,000 samples
   (HTTP/Kafka path, exactly-once check included): batches/s and samples/s,
   and bytes per stored sample of the whole row.
"""
from __future__ import annotations

import sys
import tempfile
import time

import numpy as np


def synthetic(n_series=200, n_steps=8640, seed=1):
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000 * 10**9
    steps = np.arange(n_steps, dtype=np.int64) * 10 * 10**9
    ts, val, sid = [], [], []
    for s in range(n_series):
        jitter = rng.integers(0, 5_000_000, n_steps)  # up to 5 ms late
        ts.append(t0 + steps + jitter)
        if s % 2:
            val.append(np.cumsum(rng.integers(0, 5000, n_steps)).astype(np.float64))  # a counter
        else:
            val.append(np.round(np.clip(50 + np.cumsum(rng.normal(0, 1, n_steps)), 0, 100), 2))  # a gauge
        sid.append(np.full(n_steps, s))
    return np.concatenate(ts), np.concatenate(val), np.concatenate(sid)


def main(root: str) -> None:
    import pyarrow as pa
    from chdb import session

    s = session.Session(root)
    ts, val, sid = synthetic()
    n = len(ts)
    tbl = pa.table({"series": pa.array(sid, pa.uint32()), "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
                    "value": pa.array(val, pa.float64())})  # noqa: F841 (read by chDB by name)
    print(f"codecs: {n} samples, 200 series, 10 s interval, one day\n")
    print(f"{'ts codec':28} {'bytes/sample':>12}   {'value codec':28} {'bytes/sample':>12}")
    if "--put-only" not in sys.argv:
        codecs(s, tbl, n)
    s.close()
    put(root, val, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)


def codecs(s, tbl, n):
    pairs = [("DoubleDelta, ZSTD(1)", "Gorilla, ZSTD(1)"), ("Delta, ZSTD(1)", "ZSTD(1)"),
             ("ZSTD(1)", "FPC, ZSTD(1)"), ("T64, ZSTD(1)", "Gorilla"), ("DoubleDelta", "ZSTD(3)")]
    for i, (tc, vc) in enumerate(pairs):
        s.query(f"DROP TABLE IF EXISTS c{i}")
        s.query(f"CREATE TABLE c{i} (series UInt32, ts DateTime64(9, 'UTC') CODEC({tc}), value Float64 CODEC({vc})) "
                f"ENGINE = MergeTree ORDER BY (series, ts)")
        s.query(f"INSERT INTO c{i} SELECT * FROM Python(tbl)")
        s.query(f"OPTIMIZE TABLE c{i} FINAL")
        r = s.query(f"SELECT name, data_compressed_bytes FROM system.columns WHERE table = 'c{i}' "
                    f"AND database = currentDatabase()", "CSV").bytes().decode()
        got = {line.split(",")[0].strip('"'): int(line.split(",")[1]) for line in r.splitlines() if line}
        print(f"{tc:28} {got['ts'] / n:12.3f}   {vc:28} {got['value'] / n:12.3f}")


def put(root, val, per):
    from ingress import wire
    from ingress.sink_store import open_store

    store = open_store(f"chdb://{root}?db=bench")
    names = [f"m{i % 20}" for i in range(200)]
    series = [(names[i], {"host_role": "web", "cpu": str(i % 8), "dev": f"d{i}"}) for i in range(200)]
    batches = []
    for k in range(0, 200 * 300 - per + 1, per):  # time-major, like an agent's batches
        idx = np.arange(k, k + per)
        s_i = (idx % 200).astype(np.uint32)
        step = idx // 200
        batches.append(wire.encode("acme", "web-1", series, s_i, 1_700_000_000 * 10**9 + step * 10**10,
                                   val[(s_i.astype(np.int64) * 8640 + step)]))
    t = time.perf_counter()
    for b in batches:
        h = wire.peek(b)
        store.put("acme", h.batch_id, b, h.sample_count, h.host)
    dt = time.perf_counter() - t
    total = per * len(batches)
    store.backend.command("OPTIMIZE TABLE `bench`.samples FINAL")
    r = store.rows("SELECT sum(bytes_on_disk) AS b FROM system.parts WHERE database = 'bench' "
                   "AND table = 'samples' AND active", {})
    print(f"\nput: {len(batches)} batches of {per} samples in {dt:.2f} s: {len(batches) / dt:.0f} batches/s, "
          f"{total / dt:,.0f} samples/s (one insert + dedup check + batches row each, fsync on)")
    print(f"whole row on disk (tenant, name, host, tags, ts, value, series; parts included): "
          f"{int(r[0]['b']) / total:.2f} bytes/sample")
    store.close()


if __name__ == "__main__":
    # benchmarks/store_codecs.py [DIR [SAMPLES_PER_BATCH]] [--put-only]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sys.argv = [sys.argv[0], *args] + [a for a in sys.argv[1:] if a.startswith("--")]
    main(args[0] if args else tempfile.mkdtemp(prefix="ingress-store-bench-"))
