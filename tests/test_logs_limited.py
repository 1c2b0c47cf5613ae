"""``Logger.every`` with ``force`` and a caller's own ``RateLimiter`` (the one rate-limited log helper)."""
from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from ingress.logs import RateLimiter, get_logger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_own_limiter_follows_its_clock_and_force_starts_a_new_interval(caplog):
    c = Clock()
    lim = RateLimiter(c)
    log = get_logger("ingress.test.limited")
    with caplog.at_level(logging.INFO, logger="ingress.test.limited"):
        sent = [log.every("k", 60.0, limiter=lim).warning("x", n=i) for i in range(3)]
        c.now = 30.0
        sent.append(log.every("k", 60.0, limiter=lim, force=True).warning("x", n=3))
        c.now = 89.0
        sent.append(log.every("k", 60.0, limiter=lim).warning("x", n=4))
        c.now = 90.0
        sent.append(log.every("k", 60.0, limiter=lim).warning("x", n=5))
    assert sent == [True, False, False, True, False, True]
    fields = [r.fields for r in caplog.records]
    assert fields == [{"n": 0}, {"n": 3, "suppressed": 2}, {"n": 5, "suppressed": 1}]


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=40))
def test_at_most_one_line_per_interval_unless_forced(steps):
    c = Clock()
    lim = RateLimiter(c)
    last = None
    suppressed = 0
    for dt, force in steps:
        c.now += dt
        got = lim.allow("k", 10.0, force)
        if force or last is None or c.now >= last + 10.0:
            assert got == suppressed
            last, suppressed = c.now, 0
        else:
            assert got is None
            suppressed += 1
