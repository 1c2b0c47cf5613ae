"""Control-API keys: hashing, lifecycle, file modes, reload (docs/keys.md)."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from ingress.security.keys import KEY_RE, KeyError_, KeyStore, parse_expiry, redact_keys


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    return KeyStore(tmp_path / "data", clock=Clock())


def test_only_a_salted_hash_is_stored_and_modes_are_private(store):
    rec, key = store.create("acme", "tenant", name="ci")
    assert KEY_RE.fullmatch(key) and rec.id in key
    secret = key.split("_", 2)[2]
    for p in store.dir.iterdir():
        assert secret.encode() not in p.read_bytes()
        assert p.stat().st_mode & 0o077 == 0, p
    assert store.dir.stat().st_mode & 0o777 == 0o700
    doc = json.loads(store.path.read_text())
    assert set(doc["keys"][0]) >= {"id", "tenant", "scope", "salt", "hash"} and "secret" not in doc["keys"][0]
    assert store.verify(key).ok and store.verify(key).record.tenant == "acme"
    r2, k2 = store.create("acme")
    assert r2.salt != rec.salt and store.verify(k2).ok


def test_expiry_revocation_and_rotation_grace(store):
    clock = store.clock
    rec, key = store.create("acme", expires_s=60)
    clock.t += 61
    assert store.verify(key).outcome == "expired"
    rec, key = store.create("acme", "admin")
    old, new, k2 = store.rotate(rec.id, grace_s=100)
    assert new.scope == "admin" and new.rotated_from == rec.id and old.rotated_to == new.id
    assert store.verify(key).ok and store.verify(k2).ok  # both during the grace period
    clock.t += 101
    assert store.verify(key).outcome == "revoked" and store.verify(k2).ok
    store.revoke(new.id)
    assert store.verify(k2).outcome == "revoked"
    with pytest.raises(KeyError_, match="only an active key can be rotated"):
        store.rotate(new.id)
    with pytest.raises(KeyError_, match="no key with id"):
        store.revoke("ffffffffffff")


def test_running_reader_sees_changes_without_restart(tmp_path):
    writer, reader = KeyStore(tmp_path / "d"), KeyStore(tmp_path / "d")
    assert reader.verify("ingk_000000000000_" + "A" * 43).outcome == "unknown"
    rec, key = writer.create("acme")
    assert reader.verify(key).ok
    writer.revoke(rec.id)
    assert reader.verify(key).outcome == "revoked"


def test_loose_modes_are_refused_with_the_fix(store):
    rec, key = store.create("acme")
    os.chmod(store.path, 0o640)
    with pytest.raises(KeyError_) as e:
        store.records()
    assert str(e.value) == f"{store.path}: mode 0640 lets group or others in; run: chmod 600 {store.path}"
    assert store.verify(key).outcome == "unknown" and "chmod 600" in store.error  # fail closed
    os.chmod(store.path, 0o600)
    os.chmod(store.dir, 0o755)
    with pytest.raises(KeyError_, match=f"run: chmod 700 {store.dir}$"):
        store.create("acme")
    os.chmod(store.dir, 0o700)
    assert store.verify(key).ok


def test_corrupt_key_file_fails_closed(store):
    rec, key = store.create("acme")
    store.path.write_text("{not json")
    assert store.verify(key).outcome == "unknown" and "not a valid key file" in store.error


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120),
                 st.builds(lambda i, s: f"ingk_{i}_{s}", st.text("0123456789abcdef", min_size=12, max_size=12),
                           st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                                   min_size=43, max_size=43))))
def test_no_forged_token_verifies(tmp_path_factory, token):
    global _FUZZ
    try:
        s, real = _FUZZ
    except NameError:
        s = KeyStore(tmp_path_factory.mktemp("fuzz") / "d")
        real = s.create("acme")[1]
        _FUZZ = (s, real)
    v = s.verify(token)
    assert v.ok == (token == real)
    assert v.outcome in ("ok", "malformed", "unknown")


@given(st.text(max_size=200))
def test_redaction_never_leaves_a_full_key(prefix):
    key = "ingk_0123456789ab_" + "Z" * 43
    out = redact_keys(prefix + key + prefix)
    assert "Z" * 43 not in out and "0123456789ab" in out


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("2w", 14 * 86400), ("12h", 43200),
                                          ("90m", 5400), ("1s", 1)])
def test_parse_expiry(text, seconds):
    assert parse_expiry(text) == seconds


@given(st.text(max_size=20).filter(lambda t: not any(c.isdigit() for c in t)))
def test_parse_expiry_refuses_non_durations_in_one_message(text):
    with pytest.raises(KeyError_, match=r"^--expires: .* is not a duration"):
        parse_expiry(text)
