"""Secret output options from the environment or a file: { env = "NAME" } / { file = "/path" }."""
from __future__ import annotations

import io
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress import logs
from ingress.config import ConfigError, loads
from ingress.errors import TenantCheckError
from ingress.secretref import SecretRef, parse_ref
from ingress.tenants import TenantSet
from ingress.outputs.plugin import build_outputs

TENANT = '[[tenants]]\nid = "acme"\napi_key_env = "ACME_KEY"\n\n'


def kafka(value: str) -> str:
    return TENANT + ('[[outputs]]\ntype = "kafka"\nbrokers = "127.0.0.1:9092"\n'
                     f'[outputs.options]\n"sasl.password" = {value}\n"ssl.key.password" = "inline-pw-4444"\n')


def http(value: str) -> str:
    return TENANT + ('[[outputs]]\ntype = "http"\nurl = "http://127.0.0.1:1/in"\n'
                     f'[outputs.headers]\nX-Api-Token = {value}\n')


def _capture():
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf)
    return buf


def test_kafka_option_from_env_is_resolved_built_and_never_logged(monkeypatch):
    monkeypatch.setenv("KAFKA_PW", "planted-kafka-secret-1")
    s = loads(kafka('{ env = "KAFKA_PW" }'))
    opt = s.outputs[0].options["sasl.password"]
    assert isinstance(opt, SecretRef) and opt.value == "planted-kafka-secret-1"
    assert "planted-kafka-secret-1" not in repr(s)
    out = build_outputs(s, None)[0]
    assert out.options["sasl.password"] == "planted-kafka-secret-1"
    buf = _capture()
    logging.getLogger("ingress.test").warning("conf %s %r", out.options, s)
    logging.getLogger("ingress.test").warning("inline %s", "inline-pw-4444")  # a secret key, even inline
    text = buf.getvalue()
    assert "planted-kafka-secret-1" not in text and "inline-pw-4444" not in text and "[redacted]" in text


def test_header_from_file_is_resolved_and_reread_at_each_load(tmp_path):
    f = tmp_path / "token"
    f.write_text("planted-header-secret-1\n")
    f.chmod(0o600)
    text = http(f'{{ file = "{f}" }}')
    s = loads(text)
    out = build_outputs(s, lambda t: "k")[0]
    assert out.extra_headers["X-Api-Token"] == "planted-header-secret-1"
    f.write_text("planted-header-secret-2\n")  # a reload loads again: the new value, a changed output
    s2 = loads(text)
    assert s2.outputs[0] != s.outputs[0]
    assert build_outputs(s2, lambda t: "k")[0].extra_headers["X-Api-Token"] == "planted-header-secret-2"
    buf = _capture()
    logging.getLogger("ingress.test").error("boom %s", "planted-header-secret-2")
    assert "planted-header-secret-2" not in buf.getvalue()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_secret_file_readable_by_others_is_refused_with_the_fix(tmp_path, mode):
    f = tmp_path / "pw"
    f.write_text("planted-secret-mode\n")
    f.chmod(mode)
    with pytest.raises(ConfigError) as e:
        loads(kafka(f'{{ file = "{f}" }}'), "a.toml")
    msg = str(e.value)
    assert msg.startswith('a.toml:9: outputs[0].options."sasl.password": ') or msg.startswith("a.toml:9: ")
    assert f"chmod 600 {f}" in msg and "planted-secret-mode" not in msg and "\n" not in msg


@pytest.mark.parametrize("value,want", [
    ('{ env = "NOT_SET_ANYWHERE_X" }', "environment variable NOT_SET_ANYWHERE_X is not set"),
    ('{ file = "/nonexistent/pw" }', "file /nonexistent/pw does not exist"),
    ('{ file = "relative" }', "is not an absolute path"),
    ('{ env = "A-B" }', "is not an environment variable name"),
    ('{ env = "A", file = "/x" }', "a secret reference is"),
    ('{ path = "/x" }', "a secret reference is"),
])
def test_bad_references_are_one_line_naming_the_key(value, want):
    for text in (kafka(value), http(value)):
        with pytest.raises(ConfigError) as e:
            loads(text, "a.toml")
        assert want in str(e.value) and str(e.value).startswith("a.toml:") and "\n" not in str(e.value)


def test_header_secret_must_still_be_a_valid_header_value(monkeypatch):
    monkeypatch.setenv("HDR", "planted\x01bad-header")
    with pytest.raises(ConfigError) as e:
        loads(http('{ env = "HDR" }'), "a.toml")
    assert "environment variable HDR" in str(e.value) and "planted" not in str(e.value)


def test_api_key_file_readable_by_others_is_refused(tmp_path):
    key = tmp_path / "acme.key"
    key.write_text("planted-api-key-1\n")
    key.chmod(0o644)
    ts = TenantSet(loads(f'[[tenants]]\nid = "a"\napi_key_file = "{key}"\n[[outputs]]\ntype = "file"\n').tenants)
    with pytest.raises(TenantCheckError) as e:
        ts.credential("a")
    assert f"chmod 600 {key}" in str(e.value) and "planted-api-key-1" not in str(e.value)
    key.chmod(0o600)
    assert ts.credential("a") == "planted-api-key-1"


_name = st.text(st.characters(codec="ascii"), max_size=12)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=6), st.one_of(_name, st.integers(), st.none()), max_size=3))
def test_any_table_is_a_reference_or_refused_with_one_line(table):
    try:
        ref = parse_ref(table)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert ref.source in ("env", "file") and ref.value is None and ref.name in repr(ref)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=4, max_size=40)
       .map(lambda v: "ZQ-" + v).filter(lambda v: v.strip() == v and "\x00" not in v))
def test_any_env_secret_is_refused_or_used_never_quoted(monkeypatch, value):
    monkeypatch.setenv("HYPO_SECRET", value)
    for text in (kafka('{ env = "HYPO_SECRET" }'), http('{ env = "HYPO_SECRET" }')):
        try:
            s = loads(text, "a.toml")
        except ConfigError as e:
            assert "\n" not in str(e) and value not in str(e)
            continue
        v = s.outputs[0].values.get("options", s.outputs[0].values.get("headers"))
        got = [x for x in v.values() if isinstance(x, SecretRef)][0]
        assert got.value == value and value not in repr(s)
