"""Spool append throughput with fsync per batch vs plain ``os.write`` + ``os.fsync``.

Question: what does the spool cost on top of the sync it cannot avoid? Both
sides write the same 64 KiB batches to the same file system and sync each one
before the next. Rounds of the two run in random order, and each side's
clean-up (the baseline unlinks its file, the spool deletes acknowledged
segments) is synced before the next timed round, so neither pays for the
other's journal work. Goal: the spool reaches >= 80 % of the baseline's
throughput; the regression floor is set well under that. The encrypted spool
(AES-256-GCM per record) is measured against the same baseline.
"""
from __future__ import annotations

import os
import random
import statistics
import time

import pytest

from benchmarks.conftest import record_ratio
from ingress.spool import Spool, TenantPolicy

BATCH = 64 * 1024
T0 = time.time_ns()


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _baseline_round(path, batches) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        t = time.perf_counter()
        for b in batches:
            os.write(fd, b)
            os.fsync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
        _fsync_dir(path.parent)


def _spool_round(sp, batches) -> float:
    ids = [os.urandom(16) for _ in batches]
    t = time.perf_counter()
    refs = [sp.append("acme", i, b, 1000, T0) for i, b in zip(ids, batches)]
    elapsed = time.perf_counter() - t
    for r in refs:  # delivery frees the segments again, outside the timing
        sp.ack("acme", "out", r)
    _fsync_dir(sp.dir / "acme")
    return elapsed


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_spool_append_vs_write_fsync(benchmark, bench_short, tmp_path, encrypt):
    n = 32
    rounds = 8 if bench_short else 40
    batches = [os.urandom(BATCH) for _ in range(n)]
    sp = Spool(tmp_path / "data", {"acme": TenantPolicy(max_bytes=1 << 30, encrypt=encrypt)}, ["out"],
               fsync="batch", write_mb_s=None)
    times: dict[str, list[float]] = {"baseline": [], "spool": []}
    runs = {"baseline": lambda: _baseline_round(tmp_path / "baseline.bin", batches),
            "spool": lambda: _spool_round(sp, batches)}
    rng = random.Random(1)

    def pair():
        order = list(runs)
        rng.shuffle(order)
        for k in order:
            times[k].append(runs[k]())

    benchmark.pedantic(pair, rounds=rounds, iterations=1, warmup_rounds=1)
    sp.close()
    base, spool = statistics.median(times["baseline"]), statistics.median(times["spool"])
    ratio = base / spool  # spool throughput as a fraction of the baseline's
    benchmark.extra_info.update(
        baseline_mb_s=n * BATCH / base / 1e6, spool_mb_s=n * BATCH / spool / 1e6,
        baseline_us_per_batch=base / n * 1e6, spool_us_per_batch=spool / n * 1e6, ratio=ratio)
    name = "spool append+fsync (encrypted) / write+fsync" if encrypt else "spool append+fsync / write+fsync"
    record_ratio(name, ratio, 0.4 if encrypt else 0.5)
