"""Helpers shared by the spool tests (a uniquely named module, importable from any test file)."""
from __future__ import annotations

import random

T0 = 1_700_000_000 * 1_000_000_000  # a fixed wall clock, ns


class FakeClock:
    """Wall clock in ns that only moves when told to."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def bid(i: int) -> bytes:
    """A readable, unique 16-byte batch id."""
    return i.to_bytes(16, "big")


def payload(i: int, size: int = 200) -> bytes:
    return random.Random(i).randbytes(size)


def fill(sp, tenant, n, start=0, size=200, samples=10, ts=T0):
    """Append n batches; returns their refs."""
    return [sp.append(tenant, bid(i), payload(i, size), samples, ts) for i in range(start, start + n)]


def ids(records):
    return [int.from_bytes(r.batch_id, "big") for r in records]
