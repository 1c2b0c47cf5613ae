"""Security events: a tampered spool record and a configuration file changed on disk."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingress.security import audit
from ingress.security.events import ConfigWatch


@pytest.fixture
def audit_log(tmp_path):
    log = audit.open_default(tmp_path / "auditdir")
    (tmp_path / "auditdir").mkdir(exist_ok=True)
    yield tmp_path / "auditdir" / audit.AUDIT_FILE
    audit.close_default()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_config_changed_on_disk_is_reported_once_per_change_until_reloaded(tmp_path, audit_log, caplog):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("a = 1\n")
    first = SimpleNamespace(source=str(cfg))
    w = ConfigWatch()
    assert not w.check(first, 0.0)  # the baseline
    assert not w.check(first, 100.0)  # unchanged
    cfg.write_text("a = 22\n")
    os.utime(cfg, ns=(1, 10**9))
    assert w.check(first, 200.0)  # changed: one event
    assert not w.check(first, 300.0)  # the same change: not again
    cfg.write_text("a = 333\n")
    assert w.check(first, 400.0)  # a further change: again
    reloaded = SimpleNamespace(source=str(cfg))
    assert not w.check(reloaded, 500.0)  # a reload takes a new baseline
    assert not w.check(reloaded, 600.0)
    got = [x for x in lines(audit_log) if x["action"] == "security.config_changed"]
    assert len(got) == 2 and all(x["outcome"] == "detected" and x["path"] == str(cfg) for x in got)
    assert sum("changed on disk since it was loaded" in r.getMessage() for r in caplog.records) == 2


def test_embedded_default_and_throttle(tmp_path):
    w = ConfigWatch()
    assert not w.check(SimpleNamespace(source="<embedded default.toml>"), 0.0)
    cfg = tmp_path / "a.toml"
    cfg.write_text("x")
    s = SimpleNamespace(source=str(cfg))
    w.check(s, 0.0)
    cfg.write_text("yy")
    assert not w.check(s, 5.0)  # looked at every 10 s at most
    assert w.check(s, 10.0)


def test_tampered_spool_record_is_a_security_event(tmp_path, audit_log):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spool"))
    from spool_helpers import T0, fill
    from test_spool_crypto import ENC, _reseal_tampered

    from ingress.security.crypto import NONCE_SIZE
    from ingress.spool import Spool

    data = tmp_path / "data"
    sp = Spool(data, {"acme": ENC}, ["out"], write_mb_s=None, maintain_every_s=None,
               clock=lambda: T0 + 10**9)
    refs = fill(sp, "acme", 3)
    sp.close()
    seg = next((data / "spool" / "acme").glob("*.seg"))
    _reseal_tampered(seg, refs[1], flip_at=NONCE_SIZE + 7)
    sp = Spool(data, {"acme": ENC}, ["out"], write_mb_s=None, maintain_every_s=None,
               clock=lambda: T0 + 10**9)
    try:
        assert len(sp.pending("acme", "out")) == 2
    finally:
        sp.close()
    [ev] = [x for x in lines(audit_log) if x["action"] == "security.tamper_suspected"]
    assert ev["tenant"] == "acme" and ev["outcome"] == "detected" and ev["path"] == str(seg)
    assert "does not authenticate" in ev["message"]
