import pytest

import os

from ingress.errors import TenantCheckError
from ingress.outputs.validate import TenantChecker, TenantRule


def env_credential(var):
    """What ingress.tenants.Tenant.credential does for api_key_env (tested in test_tenants)."""

    def get():
        v = os.environ.get(var)
        if v is None:
            raise TenantCheckError("credential_missing", "acme", f"api_key_env {var} is not set")
        if not v.strip():
            raise TenantCheckError("credential_empty", "acme", f"api_key_env {var} is empty")
        return v.strip()

    return get


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _err(fn, *a, **kw):
    with pytest.raises(TenantCheckError) as ei:
        fn(*a, **kw)
    return ei.value


def test_unknown_and_disabled(tmp_path):
    ch = TenantChecker({"acme": TenantRule(), "off": TenantRule(enabled=False)})
    ch.check("acme")
    e = _err(ch.check, "ghost")
    assert (e.category, e.tenant) == ("tenant_unknown", "ghost")
    e = _err(ch.check, "off")
    assert e.category == "tenant_disabled"
    _err(ch.check, "off")
    assert ch.failures() == {
        "ghost": {"tenant_unknown": 1, "tenant_disabled": 0, "credential_missing": 0,
                  "credential_unreadable": 0, "credential_empty": 0, "quota_exceeded": 0},
        "off": {"tenant_unknown": 0, "tenant_disabled": 2, "credential_missing": 0,
                "credential_unreadable": 0, "credential_empty": 0, "quota_exceeded": 0},
    }
    assert ch.last_error("off") == "tenant_disabled: enabled = false"


def test_credential_from_env(monkeypatch):
    monkeypatch.delenv("T_KEY", raising=False)
    ch = TenantChecker({"acme": TenantRule(credential=env_credential("T_KEY")), "nokey": TenantRule()})
    ch.check("acme")  # no credential needed: passes
    e = _err(ch.check, "acme", needs_credential=True)
    assert e.category == "credential_missing" and "T_KEY is not set" in str(e)
    monkeypatch.setenv("T_KEY", "  ")
    e = _err(ch.check, "acme", needs_credential=True)
    assert e.category == "credential_empty" and "T_KEY is empty" in str(e)
    monkeypatch.setenv("T_KEY", "s3cret\n")
    ch.check("acme", needs_credential=True)
    assert ch.credential("acme") == "s3cret"
    assert "neither api_key_env" in str(_err(ch.check, "nokey", needs_credential=True))


def test_a_resolver_failure_of_another_kind_counts_as_credential_missing():
    def broken():
        raise OSError("keyring unavailable")

    ch = TenantChecker({"acme": TenantRule(credential=broken)})
    e = _err(ch.check, "acme", needs_credential=True)
    assert e.category == "credential_missing" and "keyring unavailable" in str(e)
    assert ch.failures()["acme"]["credential_missing"] == 1


def test_quota_token_bucket():
    c = Clock()
    ch = TenantChecker({"acme": TenantRule(max_samples_per_s=100, burst_samples=200)}, clock=c)
    ch.check("acme", samples=150)
    e = _err(ch.check, "acme", samples=100)  # 50 left
    assert e.category == "quota_exceeded"
    assert e.retry_after == pytest.approx(0.5)
    c.t = 0.5
    ch.check("acme", samples=100)
    # Larger than the bucket: passes once the bucket is full, never blocked forever.
    c.t = 100
    ch.check("acme", samples=1000)
    assert _err(ch.check, "acme", samples=1).retry_after == pytest.approx(8.01)
    assert ch.failures()["acme"]["quota_exceeded"] == 2


def test_failed_check_takes_no_quota(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    c = Clock()
    ch = TenantChecker({"acme": TenantRule(credential=env_credential("NOPE"), max_samples_per_s=1,
                                           burst_samples=10)}, clock=c)
    for _ in range(5):
        _err(ch.check, "acme", needs_credential=True, samples=10)
    ch.check("acme", samples=10)


def test_update_replaces_rules():
    ch = TenantChecker({"acme": TenantRule(enabled=False)})
    _err(ch.check, "acme")
    ch.update({"acme": TenantRule()})
    ch.check("acme")
    ch.update({})
    assert _err(ch.check, "acme").category == "tenant_unknown"


def test_a_resolver_keeps_its_finer_category():
    def resolver():
        raise TenantCheckError("credential_unreadable", "acme", "key file /k: Permission denied")

    ch = TenantChecker({"acme": TenantRule(credential=resolver)})
    e = _err(ch.check, "acme", needs_credential=True)
    assert e.category == "credential_unreadable" and e.detail == "key file /k: Permission denied"
    assert ch.failures()["acme"]["credential_unreadable"] == 1
