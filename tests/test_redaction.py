"""Issue 8, item 7 (unit level): credentials are checked when read and never reach a log line.

Agent-level checks with a real agent and a real HTTP server are in
integration/test_secrets.py.
"""
from __future__ import annotations

import io
import json
import logging
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ingress import logs
from ingress.config import loads
from ingress.errors import IngressError, RetryableError, TenantCheckError
from ingress.tenants import Tenant

SECRET = "tok-7f3a9c51e2"


@pytest.fixture(autouse=True)
def _registry():
    if hasattr(logs, "SECRETS"):
        logs.SECRETS.clear()
    yield
    if hasattr(logs, "SECRETS"):
        logs.SECRETS.clear()


@pytest.fixture
def stream():
    buf = io.StringIO()
    logs.configure("json", "debug", buf)
    yield buf
    logs.configure("json", "info")


def lines(buf) -> list[str]:
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("secret", [SECRET, "two-line-aaaa\ntwo-line-bbbb", "cr-secret-aaaa\rcr-secret-bbbb",
                                    "trailing-secret-cccc\n", "quo'te\"back\\slash-dddd", "ünïcode-sécret"])
def test_every_shape_of_a_registered_secret_is_redacted_everywhere_in_a_log_line(stream, secret):
    logs.register_secret(secret, "acme: test")
    log = logs.get_logger("ingress.test")
    std = logging.getLogger("ingress.test.std")
    header = f"Bearer {secret}"
    log.warning(f"send failed: Invalid header value {header.encode('utf-8', 'backslashreplace')!r}",
                error=f"Invalid header value {header!r}", nested={"deep": [header]})
    std.warning("stdlib %s and %r", header, header, extra={"why": header})
    try:
        raise ValueError(f"Invalid header value {header.encode('utf-8', 'backslashreplace')!r}")
    except ValueError:
        log.exception("with a traceback")
        std.exception("stdlib traceback: %s", header)
    for fmt in ("json", "logfmt"):
        logs.configure(fmt, "debug", stream)
        log.error("again %s" % json.dumps(header), field=header)
    out = stream.getvalue()
    assert out.count(logs.REDACTED) >= 8
    for piece in [secret.strip()] + [p.strip() for p in secret.splitlines()]:
        for form in {piece, repr(piece)[1:-1], json.dumps(piece)[1:-1], json.dumps(json.dumps(piece))[1:-1],
                     repr(piece.encode("utf-8", "backslashreplace"))[2:-1]}:
            assert form not in out, (form, out)


def test_unregistered_text_is_left_alone(stream):
    logs.register_secret(SECRET)
    logs.get_logger("ingress.test").info("nothing secret here", value="tok-7f3a")
    assert json.loads(lines(stream)[0])["value"] == "tok-7f3a"


def test_last_resort_handler_redacts_too():
    assert any(isinstance(f, logs.RedactingFilter) for f in logging.lastResort.filters)
    logs.register_secret(SECRET)
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "key %s", (SECRET,), None)
    assert logging.lastResort.filter(rec) and rec.getMessage() == f"key {logs.REDACTED}"


def test_ingress_errors_redact_their_message():
    logs.register_secret(SECRET)
    assert str(IngressError(f"echo {SECRET}")) == f"echo {logs.REDACTED}"
    assert str(RetryableError(f"HTTP 500: Bearer {SECRET}")) == f"HTTP 500: Bearer {logs.REDACTED}"
    e = TenantCheckError("credential_missing", "acme", f"resolver said {SECRET}")
    assert SECRET not in str(e) and SECRET not in e.detail


def test_a_server_echoing_the_key_is_redacted_in_the_classified_error():
    from ingress.outputs.httpclient import classify

    logs.register_secret(SECRET)
    err = classify(401, f'{{"error": "bad key Bearer {SECRET}"}}'.encode(), None)
    assert SECRET not in str(err) and logs.REDACTED in str(err)


def test_registry_keeps_a_few_values_per_source():
    for i in range(10):
        logs.register_secret(f"rotated-key-{i:04d}", "acme: key file /k")
    assert logs.redact("rotated-key-0009 rotated-key-0006") == f"{logs.REDACTED} {logs.REDACTED}"
    assert logs.redact("rotated-key-0000") == "rotated-key-0000"


# --------------------------------------------------------------------------- credentials when read

def tenant(tmp_path, **cred) -> Tenant:
    key = next(iter(cred))
    line = f'{key} = "{cred[key]}"'
    s = loads(f'[[tenants]]\nid = "acme"\n{line}\n[[outputs]]\ntype = "file"\npath = "{tmp_path}"\n')
    return Tenant.from_settings(s.tenants[0], 0)


@pytest.mark.parametrize("value,problem", [
    ("env-secret-aaaa\renv-secret-bbbb", "holds more than one line"),
    ("env-secret-aaaa\nenv-secret-bbbb", "holds more than one line"),
    ("env-secret-aaaa\x7fbbbb", "contains a DEL character"),
    ("env-secret-aaaa\x1bbbbb", r"contains a control character \(U\+001B\)"),
    ("env-secret-ääää", "contains characters outside ASCII"),
])
def test_env_credential_must_be_one_printable_line(tmp_path, monkeypatch, value, problem):
    monkeypatch.setenv("ACME_KEY", value)
    t = tenant(tmp_path, api_key_env="ACME_KEY")
    with pytest.raises(TenantCheckError) as e:
        t.credential()
    assert e.value.category == "credential_unreadable"
    assert re.fullmatch(rf"tenant 'acme': credential_unreadable: environment variable ACME_KEY {problem}.*",
                        str(e.value)), str(e.value)
    assert "env-secret" not in str(e.value)
    assert "env-secret-aaaa" not in logs.redact(f"echo {value!r} {value}")  # registered when read


def test_key_file_with_two_lines_is_refused_naming_the_file(tmp_path):
    kf = tmp_path / "acme.key"
    kf.write_text("file-secret-aaaa\nfile-secret-bbbb\n")
    kf.chmod(0o600)
    t = tenant(tmp_path, api_key_file=str(kf))
    with pytest.raises(TenantCheckError) as e:
        t.credential()
    assert str(e.value) == (f"tenant 'acme': credential_unreadable: key file {kf} holds more than one line; "
                            "a credential is a single line")
    assert logs.redact("file-secret-bbbb") == logs.REDACTED


def test_one_line_key_file_with_its_newline_is_fine(tmp_path):
    kf = tmp_path / "acme.key"
    kf.write_text("file-secret-aaaa\r\n")
    kf.chmod(0o600)
    assert tenant(tmp_path, api_key_file=str(kf)).credential() == "file-secret-aaaa"
    assert logs.redact("Bearer file-secret-aaaa") == f"Bearer {logs.REDACTED}"


TEMPLATES = ("tenant 'acme': credential_empty: credential_unreadable: environment variable ACME_KEY is empty "
             "holds more than one line; a credential is a single line contains a carriage return (CR) "
             "a line feed (LF) a NUL byte a tab a DEL character a control character (U+) 0123456789ABCDEF; "
             "a credential is printable characters only contains characters outside ASCII, which an "
             "Authorization header cannot carry")


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(), st.text(alphabet="ab\r\n\t\x00 \x7f\x85é", max_size=10)))
def test_any_env_credential_is_one_clean_line_or_a_message_without_it(tmp_path_factory, value):
    # The value's pieces must not occur in the message templates, or redaction would (rightly) cut them.
    assume(all(len(p.strip()) < 4 or p.strip() not in TEMPLATES for p in [value] + value.splitlines()))
    logs.SECRETS.clear()
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("ACME_KEY", value) if "\x00" not in value else mp.delenv("ACME_KEY", raising=False)
        t = tenant(tmp_path_factory.getbasetemp(), api_key_env="ACME_KEY")
        try:
            got = t.credential()
        except TenantCheckError as e:
            assert e.category in ("credential_empty", "credential_unreadable", "credential_missing")
            assert len(str(e).splitlines()) == 1
            assert re.fullmatch(r"tenant 'acme': credential_\w+: environment variable ACME_KEY [^\n]*", str(e))
            assert logs.REDACTED not in str(e)  # nothing of the value was in it to cut
            return
        assert got == value.strip() and got and got.isascii() and got.isprintable()
        import http.client

        assert not http.client._is_illegal_header_value(f"Bearer {got}".encode("latin-1"))
    finally:
        mp.undo()
