import pytest

from ingress.errors import PermanentError, RetryableError, TransportError
from ingress.outputs.retry import Backoff, is_retryable, retry_after_of


def test_ceiling_grows_exponentially_and_caps():
    b = Backoff(base_s=0.5, cap_s=10.0)
    assert [b.ceiling(a) for a in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert b.ceiling(10_000) == 10.0  # no overflow on a long outage


def test_full_jitter_uses_rng_over_whole_range():
    seq = iter([0.0, 0.999999, 0.25])
    b = Backoff(base_s=1.0, cap_s=100.0, rng=lambda: next(seq))
    assert b.delay(3) == 0.0
    assert b.delay(3) == pytest.approx(4.0, rel=1e-5)
    assert b.delay(3) == 1.0


def test_retry_after_is_a_floor_and_is_capped():
    b = Backoff(base_s=1.0, cap_s=4.0, max_retry_after_s=30.0, rng=lambda: 0.5)
    assert b.delay(1, retry_after=7.0) == 7.0
    assert b.delay(3, retry_after=0.1) == 2.0
    assert b.delay(1, retry_after=3600.0) == 30.0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=0)
    with pytest.raises(ValueError, match="cap_s=1"):
        Backoff(base_s=2, cap_s=1)


def test_classification():
    assert is_retryable(RetryableError("x"))
    assert not is_retryable(PermanentError("x"))
    assert is_retryable(TransportError("x"))
    assert is_retryable(RuntimeError("client bug"))  # the spool still has it: retry
    assert retry_after_of(RetryableError("x", retry_after=3)) == 3.0
    assert retry_after_of(RetryableError("x")) is None
    assert retry_after_of(ValueError()) is None
