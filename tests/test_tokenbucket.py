"""The one token bucket: ``try_take`` (tenant quota) on top of the pacing bucket."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingress.tokenbucket import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@given(rate=st.floats(0.5, 1e6), burst=st.floats(1.0, 1e6),
       steps=st.lists(st.tuples(st.floats(0, 100), st.floats(0, 2e6)), max_size=30))
def test_try_take_refuses_without_taking_and_its_wait_is_enough(rate, burst, steps):
    c = Clock()
    b = TokenBucket(rate, burst, clock=c)
    for dt, n in steps:
        c.t += dt
        before = b._tokens
        wait = b.try_take(n)
        if wait is None:
            continue
        assert wait > 0
        after = b._tokens
        assert after >= before  # a refusal takes nothing (it only refills)
        c.t += wait * (1 + 1e-9) + 1e-9
        assert b.try_take(n) is None  # waiting as long as it said is enough


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_and_runs_it_into_debt():
    c = Clock()
    b = TokenBucket(10.0, 100.0, clock=c)
    assert b.try_take(250) is None
    assert b.try_take(1) == (1 - (-150)) / 10.0
