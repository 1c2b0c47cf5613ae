"""POST /v1/reload on a real agent, and what becomes of a removed tenant no output serves any more."""
from __future__ import annotations

import json

import pytest

from control_helpers import create_key, get, wait_for

pytestmark = pytest.mark.integration

# globex's own output never answers (nothing listens on port 9): everything it collects stays spooled.
OUTPUTS = ('[[outputs]]\ntype = "file"\ntenants = ["acme"]\n'
           '[[outputs]]\ntype = "http"\nname = "gx"\nurl = "http://127.0.0.1:9/"\ntenants = ["globex"]\n')
SHORT_ORPHANS = '\n[agent.spool]\norphan_retention = "1s"\n'  # after [control]: a table of its own


def reloads(a) -> list[dict]:
    return [x for x in a.audit() if x["action"] == "config.reload"]


def test_reload_needs_an_admin_key_and_is_audited(agent_factory):
    a = agent_factory(acme='collectors = ["memory"]', globex='collectors = ["memory"]')
    kid_t, tenant_key = create_key(a.cfg, "acme")
    kid_a, admin_key = create_key(a.cfg, "acme", "--scope", "admin")
    a.start()
    status, _, body = get(a.url, "/v1/reload", None, method="POST")
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    status, _, body = get(a.url, "/v1/reload", tenant_key, method="POST")
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
    assert get(a.url, "/v1/reload", admin_key)[0] == 405  # GET
    assert reloads(a) == []  # refused requests reload nothing
    denied = [x for x in a.audit() if x["action"] == "api_access" and x.get("path") == "/v1/reload"]
    assert [x["outcome"] for x in denied] == ["unauthorized", "forbidden"]

    # an unchanged file: 200, nothing changed
    status, _, body = get(a.url, "/v1/reload", admin_key, method="POST")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "reloaded", doc
    assert doc["changes"]["tenants"] == {"added": [], "removed": [], "changed": {}}

    # a tenant's interval changed: applied, said in the answer and the audit line
    text = a.cfg.read_text()
    a.cfg.write_text(text.replace('id = "globex"\n', 'id = "globex"\ninterval = "2s"\n'))
    status, _, body = get(a.url, "/v1/reload", admin_key, method="POST")
    doc = json.loads(body)
    assert status == 200 and doc["changes"]["tenants"]["changed"] == {"globex": ["interval"]}, doc
    assert doc["changes"]["collection"] is True and doc["changes"]["pause_ms"] > 0

    # an invalid file: 422 with the one-line error; the agent keeps its configuration and runs on
    a.cfg.write_text(text + '\n[[tenants]]\nid = "Acme!"\n')
    status, _, body = get(a.url, "/v1/reload", admin_key, method="POST")
    err = json.loads(body)["error"]
    assert status == 422 and err["code"] == "invalid_config", err
    assert "Acme!" in err["message"] and "\n" not in err["message"] and str(a.cfg) in err["message"]
    # a key only a restart applies: refused the same way, naming it
    a.cfg.write_text(text.replace('interval = "1s"', 'interval = "1s"\nhostname = "other"\nshutdown_timeout = "3s"')
                     .replace("[control]", '[control]\naudit_keep = 3'))
    status, _, body = get(a.url, "/v1/reload", admin_key, method="POST")
    err = json.loads(body)["error"]
    assert status == 422 and "control.audit_keep" in err["message"] and "restart" in err["message"], err
    assert get(a.url, "/healthz")[0] == 200
    got = reloads(a)
    assert [x["outcome"] for x in got] == ["ok", "ok", "failed", "failed"], got
    assert all(x["actor"] == f"key:{kid_a}" and x["remote"] == "127.0.0.1" and x["trigger"] == "api" for x in got)
    assert got[1]["changes"]["tenants"]["changed"] == {"globex": ["interval"]}
    assert "Acme!" in got[2]["reason"]
    errors = [e for e in a.events() if e.get("logger") == "ingress.reload" and e.get("level") == "error"]
    assert len(errors) == 2 and all("reload refused" in e["msg"] for e in errors)
    assert a.stop() == 0


def test_removed_tenant_that_no_output_serves_is_purged_after_orphan_retention(agent_factory):
    a = agent_factory(control=SHORT_ORPHANS, acme='collectors = ["memory"]',
                      globex='collectors = ["memory"]\napi_key_env = "GX_KEY"', outputs=OUTPUTS, env={"GX_KEY": "k"})
    _, admin_key = create_key(a.cfg, "acme", "--scope", "admin")
    a.start()
    spool = a.data / "spool"

    def pending(tid):
        st = get(a.url, f"/v1/tenants/{tid}", admin_key)
        return json.loads(st[2])["spool"]["samples_pending"] if st[0] == 200 else None

    wait_for(lambda: (pending("globex") or 0) > 0, what="globex samples in its spool")
    text = a.cfg.read_text()
    start, end = text.index('[[tenants]]\nid = "globex"'), text.index("[[outputs]]")
    gx = text.index('[[outputs]]\ntype = "http"')
    a.cfg.write_text(text[:start] + text[end:gx])  # globex and its output go; nothing serves it now
    status, _, body = get(a.url, "/v1/reload", admin_key, method="POST")
    changes = json.loads(body)["changes"]
    assert status == 200 and changes["tenants"]["removed"] == ["globex"] and changes["outputs"]["removed"] == ["gx"]
    assert (spool / "globex" / "orphaned").is_file()
    # kept for orphan_retention, then purged, counted and audited
    purged = wait_for(lambda: [x for x in a.audit() if x["action"] == "tenant.orphan_purged"], 30,
                      what="the orphaned spool purged")
    assert not (spool / "globex").exists() and (spool / "acme").is_dir()
    assert len(purged) == 1 and purged[0]["tenant"] == "globex" and purged[0]["outcome"] == "dropped"
    assert a.stop() == 0
    ev = a.events()
    stopped = next(e for e in ev if e.get("msg") == "stopped")
    # every sample globex collected was either still in its spool at the purge, and counted there
    assert purged[0]["samples"] == stopped["samples"]["globex"] > 0, (purged, stopped)
    line = [e for e in ev if "orphaned spool purged" in e.get("msg", "")]
    assert len(line) == 1 and line[0]["dropped_samples"] == purged[0]["samples"]
