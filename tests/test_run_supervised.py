"""`ingress run` under a supervisor: systemd notify over a real socket, hardening, log file, procfs
(real subprocesses of the installed package)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingress.config import loads
from ingress.errors import ConfigError


def config(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "test-host"
interval = "1s"
{extra}
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["cpu"]
[[outputs]]
type = "file"
""")
    return p


def test_systemd_ready_watchdog_stopping_from_a_real_run(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="2000000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(config(tmp_path))], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        first = s.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=collecting for 1 tenant(s)"), first
        pings = [s.recv(4096) for _ in range(2)]  # at half of WATCHDOG_USEC: keeps coming
        assert pings == [b"WATCHDOG=1", b"WATCHDOG=1"]
        proc.send_signal(signal.SIGTERM)
        while (msg := s.recv(4096)) == b"WATCHDOG=1":
            pass
        assert msg == b"STOPPING=1"
        assert proc.wait(60) == 0
        lines = [json.loads(x) for x in proc.stderr.read().decode().splitlines()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        s.close()
    started = next(e for e in lines if e["msg"] == "started")
    # hardening applied before anything was opened, and said so
    assert started["hardening"]["umask"] == "077" and started["hardening"]["core_dumps"] == "off"
    assert set(started["limits"]) == {"memory_mb", "cpu_percent"}
    assert lines[-1]["msg"] == "stopped"
    data = tmp_path / "data"
    modes = {p: p.stat().st_mode & 0o077 for p in data.rglob("*")}
    assert modes and not any(modes.values()), modes  # umask 077: nothing for group or others


def test_without_notify_socket_nothing_is_sent_and_run_works(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(config(tmp_path)), "--duration", "1"],
                       env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert [json.loads(x)["msg"] for x in r.stderr.decode().splitlines()][-1] == "stopped"


def test_log_file_gets_the_lines_and_rotates(tmp_path):
    log = tmp_path / "logs" / "agent.log"
    log.parent.mkdir()
    cfg = config(tmp_path, f'log_file = "{log}"\nlog_max_mb = 1\nlog_keep = 2\nlog_level = "debug"')
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "1"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    msgs = [json.loads(x)["msg"] for x in log.read_text().splitlines()]
    assert "started" in msgs and msgs[-1] == "stopped"
    assert log.stat().st_mode & 0o077 == 0


def test_log_file_rotation_keeps_the_count(tmp_path):
    import logging

    from ingress import logs

    path = tmp_path / "a.log"
    try:
        logs.configure("json", "info", file=path, max_bytes=2000, keep=2)
        lg = logging.getLogger("ingress.test")
        for i in range(200):
            lg.info("line %d", i)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "a.log.1", "a.log.2"]
        assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
        assert '"line 199"' in path.read_text()
        logs.configure("json", "info", file=tmp_path / "b.log", max_bytes=500, keep=0)
        for i in range(50):
            lg.info("line %d", i)
        assert not (tmp_path / "b.log.1").exists() and (tmp_path / "b.log").stat().st_size <= 500
    finally:
        logs.configure("json", "info")


def test_unwritable_log_file_is_one_line(tmp_path):
    cfg = config(tmp_path, f'log_file = "{tmp_path / "no" / "such" / "dir.log"}"')
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "1"],
                       capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "dir.log" in err


def test_unknown_agent_user_is_one_line(tmp_path):
    cfg = config(tmp_path, 'user = "no-such-user-ingress"')
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "1"],
                       capture_output=True, timeout=60)
    err = r.stderr.decode().splitlines()
    assert r.returncode == 1 and not any("Traceback" in x for x in err)
    assert err[-1] == "agent.user: no user 'no-such-user-ingress'", err


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_drop_to_agent_user_after_opening(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    cfg = config(tmp_path, 'user = "nobody"')
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "2"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(x) for x in r.stderr.decode().splitlines()]
    dropped = next(e for e in lines if e["msg"] == "privileges dropped")
    assert dropped["now"] == f"uid={nobody.pw_uid} gid={nobody.pw_gid}"
    assert lines[-1]["msg"] == "stopped"
    assert {p.stat().st_uid for p in (tmp_path / "data").rglob("*")} == {nobody.pw_uid}


def test_procfs_sysfs_keys_point_the_collectors(tmp_path):
    proc = Path(__file__).parent / "fixtures" / "proc" / "host-a"
    cfg = config(tmp_path, f'procfs = "{proc}"\nsysfs = "/nonexistent-sys"')
    env = {k: v for k, v in os.environ.items() if k not in ("INGRESS_PROCFS", "INGRESS_SYSFS")}
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--once"], env=env,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    ours = {json.loads(x)["name"] for x in r.stdout.decode().splitlines()}
    counts = [json.loads(x)["value"] for x in r.stdout.decode().splitlines() if json.loads(x)["name"] == "cpu.count"]
    cpus = sum(1 for ln in (proc / "stat").read_text().splitlines() if ln[:3] == "cpu" and ln[3:4].isdigit())
    assert ours and counts == [float(cpus)]  # read from the fixture, not this machine's /proc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=20))
def test_any_procfs_value_is_a_path_or_one_config_error(value):
    quoted = '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in value) + '"'
    text = f'[agent]\nprocfs = {quoted}\n[[tenants]]\nid = "a"\n[[outputs]]\ntype = "file"\n'
    try:
        s = loads(text, "agent.toml")
    except ConfigError as e:
        assert str(e).startswith("agent.toml:2: agent.procfs: ") and "\n" not in str(e)
        return
    assert s.agent.procfs == value and value.startswith("/") and "\0" not in value
