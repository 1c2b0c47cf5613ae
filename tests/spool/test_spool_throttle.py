"""The disk write token bucket, driven by an injected clock (no timing assertions)."""
from __future__ import annotations

import threading

import pytest
from spool_helpers import T0, bid, payload

from ingress.spool import Spool, TenantPolicy, TokenBucket
from ingress.spool.segment import REC_HEADER_SIZE


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_burst_then_rate():
    ft = FakeTime()
    b = TokenBucket(1000, burst_bytes=1000, clock=ft.clock, sleep=ft.sleep)
    assert b.acquire(600) == 0
    assert b.acquire(600) == pytest.approx(0.2)  # 200 bytes of debt at 1000 B/s
    assert ft.now == pytest.approx(0.2)
    assert b.acquire(500) == pytest.approx(0.5)  # the bucket was empty
    ft.now += 100  # a long idle period refills only up to the burst
    assert b.acquire(1000) == 0
    assert b.acquire(1) == pytest.approx(0.001)
    assert ft.sleeps == pytest.approx([0.2, 0.5, 0.001])


def test_a_request_larger_than_the_burst_is_allowed_and_paid_for():
    ft = FakeTime()
    b = TokenBucket(1000, burst_bytes=100, clock=ft.clock, sleep=ft.sleep)
    assert b.acquire(5100) == pytest.approx(5.0)
    assert b.acquire(100) == pytest.approx(0.1)


def test_concurrent_reservations_queue_up_without_losing_bytes():
    frozen = FakeTime()  # time never moves: every reservation adds to the debt
    b = TokenBucket(100, burst_bytes=100, clock=frozen.clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(50):
            w = b.reserve(100)
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == [float(i) for i in range(400)]


def test_from_mb_s():
    assert TokenBucket.from_mb_s(None) is None
    assert TokenBucket.from_mb_s(0) is None
    assert TokenBucket.from_mb_s(20).rate == 20e6
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(-1)


def test_spools_sharing_one_bucket_are_paced_together(tmp_path):
    ft = FakeTime()
    rate, burst = 10_000.0, 1000.0
    bucket = TokenBucket(rate, burst_bytes=burst, clock=ft.clock, sleep=ft.sleep)
    a = Spool(tmp_path / "a", {"acme": TenantPolicy()}, ["out"], write_mb_s=bucket, clock=lambda: T0)
    b = Spool(tmp_path / "b", {"beta": TenantPolicy()}, ["out"], write_mb_s=bucket, clock=lambda: T0)
    total = 0
    for i in range(20):
        a.append("acme", bid(i), payload(i, 300), 1, T0)
        b.append("beta", bid(i), payload(i, 500), 1, T0)
        total += 2 * REC_HEADER_SIZE + 800
    # every byte beyond the burst cost exactly 1/rate seconds, whoever wrote it
    assert ft.now == pytest.approx((total - burst) / rate)
    a.close()
    b.close()
