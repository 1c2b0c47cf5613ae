"""The audit log: JSON lines, rotation, no secrets, concurrent writers (docs/audit.md)."""
from __future__ import annotations

import json
import threading

from hypothesis import given, settings, strategies as st

from ingress.security.audit import AuditLog


def lines(p):
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_fields_mode_and_remote_only_when_given(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    log.record("key_created", "ok", actor="user:me", tenant="acme", key_id="0123456789ab")
    log.record("api_access", "unauthorized", actor="anonymous", remote="127.0.0.1")
    a, b = lines(tmp_path / "audit.log")
    assert list(a)[:5] == ["ts", "actor", "tenant", "action", "outcome"] and "remote" not in a
    assert a["ts"].endswith("Z") and a["key_id"] == "0123456789ab"
    assert b["remote"] == "127.0.0.1" and b["tenant"] is None
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o600


def test_rotation_keeps_the_configured_count(tmp_path):
    log = AuditLog(tmp_path / "audit.log", max_bytes=2048, keep=2)
    for i in range(200):
        log.record("x", "ok", n=i)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2048
    newest = lines(tmp_path / "audit.log")[-1]["n"]
    assert newest == 199
    got = sorted(e["n"] for n in names for e in lines(tmp_path / n))
    assert got == list(range(got[0], 200))  # nothing lost between the kept files


def test_concurrent_writers_never_interleave(tmp_path):
    logs = [AuditLog(tmp_path / "audit.log", max_bytes=4096, keep=50) for _ in range(4)]

    def write(log, k):
        for i in range(100):
            log.record("x", "ok", writer=k, n=i, pad="p" * 50)

    ts = [threading.Thread(target=write, args=(log, k)) for k, log in enumerate(logs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    all_ = [e for p in tmp_path.iterdir() for e in lines(p)]
    assert len(all_) == 400


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["message", "path", "detail"]), st.text(max_size=50), max_size=3))
def test_a_full_key_never_reaches_the_file(tmp_path_factory, fields):
    p = tmp_path_factory.mktemp("a") / "audit.log"
    key = "ingk_0123456789ab_" + "Q" * 43
    AuditLog(p).record("api_access", "unauthorized", **{k: v + key for k, v in fields.items()}, extra=[key])
    text = p.read_text()
    assert "Q" * 43 not in text and json.loads(text)
