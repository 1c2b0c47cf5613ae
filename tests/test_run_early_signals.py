"""Signals that reach ``ingress run`` while it is still building the agent (seconds on a loaded
host) are carried out once it runs, instead of SIGHUP's default action killing it.

The agent is held in the middle of its construction by a collector plugin that waits for a
file (tests/slowstart_plugin.py); the signals are sent in that window. Real subprocesses.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
interval = "1s"
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["slowstart"]
[tenants.slowstart]
ready_file = "{ready}"
go_file = "{go}"
[[outputs]]
type = "file"
""")
    env = {**os.environ, "INGRESS_PLUGINS": "slowstart_plugin",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not ready.exists():
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < end, "the agent never reached the collector's construction"
        time.sleep(0.01)
    return p, go


def _lines_until(p: subprocess.Popen, word: str) -> list[str]:
    lines = []
    for line in p.stderr:
        lines.append(line)
        if word in line:
            return lines
    raise AssertionError(f"no {word!r} line; exit {p.wait()}; stderr: {''.join(lines)}")


@pytest.mark.integration
def test_a_sighup_while_starting_is_a_reload_after_the_start_not_a_kill(tmp_path):
    p, go = _start(tmp_path)
    try:
        p.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # let the handler run before the construction goes on (the test holds either way)
        go.write_text("go")
        lines = _lines_until(p, "started")
        lines += _lines_until(p, "reload")
        assert p.poll() is None, "".join(lines)
        p.send_signal(signal.SIGTERM)
        rest = p.stderr.read()
        assert p.wait(timeout=60) == 0, "".join(lines) + rest
        assert "stopped" in rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.integration
def test_a_sigterm_while_starting_stops_gracefully_once_started(tmp_path):
    p, go = _start(tmp_path)
    try:
        p.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        go.write_text("go")
        out = p.stderr.read()
        assert p.wait(timeout=60) == 0, out
        assert "started" in out and "stopped" in out, out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
