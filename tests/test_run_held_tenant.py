"""``ingress run`` with one tenant whose spool cannot be opened: that tenant is held, the other runs.

A real ``ingress run --duration`` subprocess, a real spool on disk and the file output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingress import wire
from ingress.spool import Spool, TenantPolicy
from ingress.outputs.file import read_batches


def _tree(d: Path):
    return {p.relative_to(d): (p.is_dir(), p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def _config(tmp_path: Path, beta_encrypt: bool) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "held-host"
interval = "200ms"
shutdown_timeout = "2s"

[agent.collect]
min_interval = "100ms"

[agent.batch]
max_delay = "100ms"

[control]
listen = "127.0.0.1:0"

[[tenants]]
id = "acme"
collectors = ["memory"]

[[tenants]]
id = "beta"
collectors = ["memory"]
[tenants.spool]
encrypt = {"true" if beta_encrypt else "false"}

[[outputs]]
type = "file"
""")
    return cfg


def _spool_beta(data: Path, encrypt: bool) -> None:
    sp = Spool(data, {"beta": TenantPolicy(encrypt=encrypt)}, ["file-0"], write_mb_s=None, maintain_every_s=None)
    sp.append("beta", os.urandom(16), b"beta's batch, kept", 3, time.time_ns())
    sp.close()


@pytest.mark.parametrize("damage", ["missing key", "stray directory"])
def test_one_held_tenant_does_not_stop_the_other(tmp_path, damage):
    data = tmp_path / "data"
    encrypt = damage == "missing key"
    _spool_beta(data, encrypt)
    if damage == "missing key":
        os.unlink(data / "keys" / "beta.key")
        expect = "key file is missing"
    else:
        (data / "spool" / "beta" / "00000000000000000009.seg").mkdir()
        expect = "is a directory"
    before = _tree(data / "spool" / "beta")
    cfg = _config(tmp_path, encrypt)
    p = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "3"],
                       capture_output=True, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert "Traceback" not in err
    events = [json.loads(x) for x in err.splitlines()]
    held = [e for e in events if e["msg"].startswith("tenant held")]
    assert held and held[0]["tenant"] == "beta" and expect in held[0]["reason"] and held[0]["level"] == "error"
    # acme ran: collected, spooled and delivered to the file output
    files = sorted((data / "out" / "acme").glob("*.ibatch"))
    batches = [wire.decode(b) for f in files for b in read_batches(f)]
    assert batches and {b.tenant for b in batches} == {"acme"}
    assert not (data / "out" / "beta").exists()
    # beta's spool is exactly as it was, and no key was invented for it
    assert _tree(data / "spool" / "beta") == before
    assert not (data / "keys" / "beta.key").exists()
    st = subprocess.run([sys.executable, "-m", "ingress", "spool", "stats", "-c", str(cfg)],
                        capture_output=True, timeout=60)
    assert st.returncode == 0 and st.stderr == b""
    lines = st.stdout.decode().splitlines()
    assert [r.split()[0] for r in lines[1:3]] == ["acme", "beta"]
    assert lines[-1].startswith("beta: held: ") and expect in lines[-1]


def test_every_tenant_held_exits_1_with_one_line(tmp_path):
    data = tmp_path / "data"
    _spool_beta(data, True)
    os.unlink(data / "keys" / "beta.key")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{data}"\n[control]\nlisten = "127.0.0.1:0"\n[[tenants]]\nid = "beta"\ncollectors = ["memory"]\n'
                   f'[tenants.spool]\nencrypt = true\n[[outputs]]\ntype = "file"\n')
    p = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "1"],
                       capture_output=True, timeout=60)
    assert p.returncode == 1
    last = p.stderr.decode().splitlines()[-1]
    assert last.startswith("every tenant is held, nothing to run: tenant 'beta': ") and "key file is missing" in last
