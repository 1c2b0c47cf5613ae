import pytest

from ingress.transport.validate import (
    CredentialMissing, TenantCheckError, TenantChecker, TenantRule, env_credential, file_credential)


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
        "ghost": {"tenant_unknown": 1, "tenant_disabled": 0, "credential_missing": 0, "quota_exceeded": 0},
        "off": {"tenant_unknown": 0, "tenant_disabled": 2, "credential_missing": 0, "quota_exceeded": 0},
    }
    assert ch.last_error("off") == "tenant_disabled: enabled = false"


def test_credential_from_env(monkeypatch):
    monkeypatch.delenv("T_KEY", raising=False)
    ch = TenantChecker({"acme": TenantRule(credential=env_credential("T_KEY")), "nokey": TenantRule()})
    ch.check("acme")  # no credential needed: passes
    e = _err(ch.check, "acme", needs_credential=True)
    assert e.category == "credential_missing" and "T_KEY is not set" in str(e)
    monkeypatch.setenv("T_KEY", "  ")
    assert "T_KEY is empty" in str(_err(ch.check, "acme", needs_credential=True))
    monkeypatch.setenv("T_KEY", "s3cret\n")
    ch.check("acme", needs_credential=True)
    assert ch.credential("acme") == "s3cret"
    assert "neither api_key_env" in str(_err(ch.check, "nokey", needs_credential=True))


def test_credential_from_file_is_reread_after_cache(tmp_path):
    c = Clock()
    p = tmp_path / "key"
    get = file_credential(p, cache_s=5, clock=c)
    with pytest.raises(CredentialMissing, match="does not exist"):
        get()
    p.write_text("")
    with pytest.raises(CredentialMissing, match="is empty"):
        get()
    p.write_text("k1\nignored\n")
    assert get() == "k1"
    p.write_text("k2\n")
    assert get() == "k1"  # cached
    c.t = 6
    assert get() == "k2"
    p.unlink()
    c.t = 12
    with pytest.raises(CredentialMissing, match=str(p)):
        get()


def test_unreadable_credential_file(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    # A directory where the key file should be fails the same way on every uid.
    with pytest.raises(CredentialMissing, match="cannot be read|not readable"):
        file_credential(d)()


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


def test_any_resolver_failure_is_credential_missing():
    class OtherCheckError(Exception):
        def __init__(self):
            super().__init__("tenant 'acme': credential_unreadable: key file /k: Permission denied")
            self.category, self.tenant, self.detail = "credential_unreadable", "acme", "key file /k: Permission denied"

    def resolver():
        raise OtherCheckError()

    ch = TenantChecker({"acme": TenantRule(credential=resolver)})
    e = _err(ch.check, "acme", needs_credential=True)
    assert e.category == "credential_missing" and e.message == "key file /k: Permission denied"
