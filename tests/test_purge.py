"""``ingress tenants purge``: a removed tenant's key, spool, dead letters and files go; nothing else."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ingress.spool import Spool, TenantPolicy

INGRESS = [sys.executable, "-m", "ingress"]


def config(tmp_path: Path, tenants: list[str]) -> Path:
    cfg = tmp_path / f"agent-{'-'.join(tenants)}.toml"
    body = f'[agent]\ndata_dir = "{tmp_path / "data"}"\n[control]\nlisten = "127.0.0.1:0"\n'
    for t in tenants:
        body += f'[[tenants]]\nid = "{t}"\ncollectors = ["memory"]\n[tenants.spool]\nencrypt = true\n'
    body += '[[outputs]]\ntype = "file"\n'
    cfg.write_text(body)
    return cfg


def populate(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    sp = Spool(data, {t: TenantPolicy(encrypt=True) for t in ("acme", "beta")}, ["file-0"],
               write_mb_s=None, maintain_every_s=None)
    for t in ("acme", "beta"):
        sp.append(t, os.urandom(16), f"{t}'s batch".encode(), 3, time.time_ns())
    sp.close()
    for t in ("acme", "beta"):
        (data / "out" / t).mkdir(parents=True)
        (data / "out" / t / "file-0-000001.ibatch").write_bytes(b"x" * 100)
        (data / "deadletter" / t / "file-0").mkdir(parents=True)
        (data / "deadletter" / t / "file-0" / "00.batch").write_bytes(b"y" * 10)
    return data


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*INGRESS, *args], capture_output=True, text=True, timeout=60)


def test_purge_removes_only_that_tenant_key_first_and_audits(tmp_path):
    data = populate(tmp_path)
    assert (data / "keys" / "beta.key").exists()
    cfg = config(tmp_path, ["acme"])
    r = run("tenants", "purge", "beta", "-c", str(cfg), "--yes")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("removed data key:")  # the key goes first
    for p in ("keys/beta.key", "spool/beta", "deadletter/beta", "out/beta"):
        assert not (data / p).exists(), p
    for p in ("keys/acme.key", "spool/acme", "deadletter/acme", "out/acme/file-0-000001.ibatch"):
        assert (data / p).exists(), p
    audit = [json.loads(x) for x in (data / "audit.log").read_text().splitlines()]
    assert [(a["action"], a["outcome"], a["tenant"]) for a in audit] == [("tenant.purge", "ok", "beta")]
    assert audit[0]["bytes"] > 0
    # acme's spool still opens and holds its batch: its key was not touched.
    sp = Spool(data, {"acme": TenantPolicy(encrypt=True)}, ["file-0"], write_mb_s=None, maintain_every_s=None)
    assert [b.payload for b in sp.pending("acme", "file-0")] == [b"acme's batch"]
    sp.close()


def test_purge_of_a_configured_tenant_is_refused_in_one_line(tmp_path):
    data = populate(tmp_path)
    r = run("tenants", "purge", "beta", "-c", str(config(tmp_path, ["acme", "beta"])), "--yes")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "still configured" in r.stderr
    assert (data / "keys" / "beta.key").exists() and (data / "spool" / "beta").exists()


def test_without_yes_nothing_is_removed(tmp_path):
    data = populate(tmp_path)
    r = run("tenants", "purge", "beta", "-c", str(config(tmp_path, ["acme"])))
    assert r.returncode == 2 and "add --yes" in r.stderr
    assert "would remove data key" in r.stdout
    assert (data / "keys" / "beta.key").exists() and (data / "spool" / "beta").exists()


def test_purge_is_refused_while_an_agent_holds_the_spool(tmp_path):
    data = populate(tmp_path)
    sp = Spool(data, {"acme": TenantPolicy(encrypt=True)}, ["file-0"], write_mb_s=None, maintain_every_s=None)
    try:
        r = run("tenants", "purge", "beta", "-c", str(config(tmp_path, ["acme"])), "--yes")
    finally:
        sp.close()
    assert r.returncode == 1 and f"pid {os.getpid()}" in r.stderr
    assert (data / "keys" / "beta.key").exists()


def test_an_invalid_tenant_id_is_one_line(tmp_path):
    r = run("tenants", "purge", "../etc", "-c", str(config(tmp_path, ["acme"])), "--yes")
    assert r.returncode == 2 and "is not a valid tenant id" in r.stderr
