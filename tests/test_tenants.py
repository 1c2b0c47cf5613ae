"""ingress.tenants: rules, tag merging, indices, credential resolution and its categories."""
from __future__ import annotations

import pytest

from ingress.config import loads
from ingress.tenants import Rules, TenantCheckError, TenantSet


def tenant_set(extra: str = "") -> TenantSet:
    return TenantSet(loads(f"""
[[tenants]]
id = "a"
{extra}
[[tenants]]
id = "b"
enabled = false
[[tenants]]
id = "c"
[[outputs]]
type = "file"
""").tenants)


@pytest.mark.parametrize("include,exclude,name,kept", [
    (["*"], [], "cpu.user", True),
    (["cpu.*"], [], "cpu.user", True),
    (["cpu.*"], [], "memory.used", False),
    (["cpu.*", "memory.*"], ["memory.free"], "memory.free", False),
    (["cpu.*", "memory.*"], ["memory.free"], "memory.used", True),
    (["*"], ["*.guest*"], "cpu.guest_nice", False),
    ([], [], "cpu.user", False),  # an empty include keeps nothing
    (["cpu.[us]*"], [], "cpu.system", True),
    (["cpu.?ser"], [], "cpu.user", True),
    (["CPU.*"], [], "cpu.user", False),  # case matters
    (["cpu"], [], "cpu.user", False),  # a glob matches the whole name
])
def test_rules(include, exclude, name, kept):
    assert Rules(include, exclude).match(name) is kept


def test_indices_skip_disabled_tenants():
    ts = tenant_set()
    assert [(t.id, t.index, t.enabled) for t in ts] == [("a", 0, True), ("b", None, False), ("c", 1, True)]
    assert [t.id for t in ts.enabled] == ["a", "c"] and ts["c"].index == 1 and "b" in ts


def test_merge_tags_series_wins():
    t = tenant_set('tags = { team = "infra", host = "tenant" }')["a"]
    assert t.merge_tags((("host", "h1"), ("cpu", "0"))) == (("cpu", "0"), ("host", "h1"), ("team", "infra"))
    assert tenant_set()["a"].merge_tags((("x", "1"),)) == (("x", "1"),)


def test_credential_from_env(monkeypatch):
    ts = tenant_set('api_key_env = "INGRESS_TEST_KEY_A"')
    monkeypatch.delenv("INGRESS_TEST_KEY_A", raising=False)
    with pytest.raises(TenantCheckError) as e:
        ts.credential("a")
    assert (e.value.category, e.value.tenant) == ("credential_missing", "a")
    assert str(e.value) == "tenant 'a': credential_missing: environment variable INGRESS_TEST_KEY_A is not set"
    monkeypatch.setenv("INGRESS_TEST_KEY_A", "  ")
    with pytest.raises(TenantCheckError, match="credential_empty: environment variable INGRESS_TEST_KEY_A is empty"):
        ts.credential("a")
    monkeypatch.setenv("INGRESS_TEST_KEY_A", "s3cret\n")
    assert ts.credential("a") == "s3cret"


def test_credential_from_file_is_read_at_every_use(tmp_path):
    key = tmp_path / "key"
    ts = tenant_set(f'api_key_file = "{key}"')
    with pytest.raises(TenantCheckError, match=f"credential_missing: key file {key} does not exist"):
        ts.check_credentials(["a"])
    key.write_text("one\n")
    key.chmod(0o600)
    assert ts.credential("a") == "one"
    key.write_text("two")  # rotated
    assert ts.credential("a") == "two"
    key.write_text("")
    with pytest.raises(TenantCheckError, match="credential_empty"):
        ts.credential("a")


def test_directory_as_key_file_is_unreadable(tmp_path):
    with pytest.raises(TenantCheckError) as e:
        tenant_set(f'api_key_file = "{tmp_path}"').credential("a")
    assert e.value.category == "credential_unreadable"


def test_no_credential_configured():
    with pytest.raises(TenantCheckError, match="credential_missing: no api_key_env or api_key_file"):
        tenant_set().credential("c")
