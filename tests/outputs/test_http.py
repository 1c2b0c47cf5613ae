"""HttpOutput pieces that need no server; the requests themselves are in tests/integration/test_http.py."""
import email.utils

import pytest
from hypothesis import given, settings, strategies as st

from ingress.errors import ConfigError, PermanentError, RetryableError
from ingress.outputs.http import HttpOutput
from ingress.outputs.httpclient import classify, parse_retry_after


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status):
    e = classify(status, b"busy\nstack trace", "3")
    assert isinstance(e, RetryableError)
    assert e.retry_after == 3.0 and e.status == status
    assert str(e) == f"HTTP {status}: busy"


@pytest.mark.parametrize("status", [301, 400, 404, 409, 413, 415, 422])
def test_permanent_statuses(status):
    e = classify(status, b'\n{"error": {"code": "x"}}\nmore', None)
    assert isinstance(e, PermanentError)
    assert e.first_line == '{"error": {"code": "x"}}'
    assert str(e) == f'HTTP {status}: {{"error": {{"code": "x"}}}}'


@pytest.mark.parametrize("status", [401, 403])
def test_credential_refusals_are_not_permanent(status):
    from ingress.errors import CredentialRefusedError

    e = classify(status, b'{"error": {"code": "unauthorized"}}\n', None)
    assert isinstance(e, CredentialRefusedError) and not isinstance(e, PermanentError)
    assert e.credential_refused and e.status == status
    assert str(e) == f'HTTP {status}: {{"error": {{"code": "unauthorized"}}}}'


@settings(max_examples=300, deadline=None)
@given(st.integers(100, 999), st.binary(max_size=64))
def test_every_status_has_exactly_one_class(status, body):
    """2xx acknowledge; 401/403 hold the pair; 408, 429, 5xx retry; every other status dead-letters."""
    from ingress.errors import CredentialRefusedError

    e = classify(status, body, None)
    if 200 <= status < 300:
        assert e is None
    elif status in (401, 403):
        assert isinstance(e, CredentialRefusedError)
    elif status in (408, 429) or status >= 500:
        assert isinstance(e, RetryableError) and not isinstance(e, CredentialRefusedError)
    else:
        assert isinstance(e, PermanentError)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_success_statuses(status):
    assert classify(status, b"", None) is None


def test_url_and_settings_validation():
    with pytest.raises(ConfigError, match="outputs.h.url: 'ftp://x' is not"):
        HttpOutput("h", "ftp://x")
    with pytest.raises(ConfigError, match="concurrency"):
        HttpOutput("h", "http://x", concurrency=0)
    with pytest.raises(ConfigError, match="'Authorization' is set by ingress"):
        HttpOutput("h", "http://x", headers={"Authorization": "Basic abc"})
    with pytest.raises(ConfigError, match="key_file: given without cert_file"):
        HttpOutput("h", "https://x", key_file="k.pem")


def test_tenant_expansion_in_url():
    o = HttpOutput("h", "https://logs.example:8443/v1/{tenant}/batches?x=1")
    assert o.target("acme") == ("https", "logs.example", 8443, "/v1/acme/batches?x=1")
    assert HttpOutput("h", "http://h").target("a") == ("http", "h", 80, "/")


def test_missing_ca_file_is_a_config_error(tmp_path):
    o = HttpOutput("h", "https://x", ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="outputs.h.ca_file: .*nope.pem"):
        o.start()


def test_submit_after_close_reports_retryable(batch_factory):
    o = HttpOutput("h", "http://127.0.0.1:9")
    o.close()
    got = []
    o.submit(batch_factory(), lambda b, e: got.append(e))
    assert len(got) == 1 and isinstance(got[0], RetryableError)
