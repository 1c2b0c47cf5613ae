import pytest

from ingress.outputs.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_opens_after_threshold_consecutive_failures():
    c = Clock()
    br = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=c)
    br.record_failure()
    br.record_failure()
    br.record_success()  # resets the consecutive count
    br.record_failure()
    br.record_failure()
    assert br.state == CLOSED and br.allow()
    br.record_failure()
    assert br.state == OPEN
    assert br.opened_at == 100.0
    assert not br.allow()
    assert br.retry_in() == 10.0
    s = br.snapshot()
    assert s["times_opened"] == 1 and s["failures"] == 5 and s["successes"] == 1
    assert s["consecutive_failures"] == 3


def test_half_open_allows_one_probe_then_closes_on_success():
    c = Clock()
    br = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=c)
    br.record_failure()
    c.t += 4.9
    assert not br.allow()
    assert br.retry_in() == pytest.approx(0.1)
    c.t += 0.1
    assert br.state == HALF_OPEN
    assert br.allow()
    assert not br.allow()  # only one probe at a time
    br.record_success()
    assert br.state == CLOSED and br.opened_at is None and br.allow()


def test_failed_probe_reopens_for_another_period():
    c = Clock()
    br = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=c)
    br.record_failure()
    br.record_failure()
    c.t += 5
    assert br.allow()
    br.record_failure()
    assert br.state == OPEN and br.opened_at == c.t
    assert br.snapshot()["times_opened"] == 2
    c.t += 5
    assert br.state == HALF_OPEN


def test_failures_while_open_do_not_extend_it():
    c = Clock()
    br = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=c)
    br.record_failure()
    c.t += 3
    br.record_failure()  # a late report from a batch sent before it opened
    assert br.opened_at == 100.0
    assert br.snapshot()["times_opened"] == 1


def test_invalid_parameters():
    with pytest.raises(ValueError, match="failure_threshold=0"):
        CircuitBreaker(failure_threshold=0)
