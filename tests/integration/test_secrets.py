"""Issue 8, item 7: planted credentials never appear in a log line, a file the agent writes,
or `spool stats`.

The real `ingress run` runs in a subprocess against a real HTTP server on
loopback. Shapes planted: a normal credential that the server refuses with an
error echoing it back (500, 400 and 401, each quoting the Authorization
header), a key file with two lines (at start, and rotated in while running),
an environment key containing CR, and a header value ending in a newline.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import Reply


def write_config(tmp_path: Path, url: str, cred: str, headers: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "secret-host"
interval = "200ms"
shutdown_timeout = "2s"

[agent.collect]
min_interval = "100ms"

[agent.batch]
max_delay = "100ms"

[[tenants]]
id = "acme"
collectors = ["memory"]
{cred}

[[outputs]]
type = "http"
url = "{url}"
{headers}
[outputs.retry]
backoff_initial = "50ms"
backoff_max = "200ms"
[outputs.breaker]
failures = 50
reset = "100ms"

[control]
listen = "127.0.0.1:0"
""")
    return cfg


def ingress(*args, env_extra=None, timeout=90):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ingress", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def pieces(secret: str) -> list[str]:
    return [p.strip() for p in [secret, *secret.splitlines()] if len(p.strip()) >= 4]


def everything_visible(cfg: Path, data_dir: Path, stderr: str) -> str:
    """The agent's stderr, every text file under data_dir, and `spool stats` (table and JSON)."""
    out = [stderr]
    for args in (("spool", "stats", "-c", cfg), ("spool", "stats", "-c", cfg, "--json")):
        p = ingress(*args)
        out += [p.stdout, p.stderr]
    if data_dir.exists():
        for f in data_dir.rglob("*"):
            if f.is_file() and f.suffix in (".json", ".log", ".jsonl", ".txt", ""):
                out.append(f.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


def assert_hidden(secret: str, text: str) -> None:
    for p in pieces(secret):
        for form in {p, repr(p)[1:-1], repr(p.encode())[2:-1]}:
            assert form not in text, f"{form!r} leaked: ...{text[max(0, text.find(form) - 200):][:400]}"


def test_credential_echoed_back_by_the_server_is_in_no_log_line_file_or_stats(tmp_path, http_server):
    secret = "echo-secret-" + os.urandom(6).hex()

    def echo(status):
        def reply(req):
            auth = req.headers.get("authorization", "")
            return Reply(status, f'{{"error": {{"code": "no", "message": "key {auth} refused"}}}}'.encode())
        return reply

    script = [echo(500), echo(500), echo(400), echo(401)]

    def behave(req):
        with http_server.lock:
            n = len(http_server.requests)
        return script[n - 1](req) if n <= len(script) else Reply(200)

    http_server.behave = behave
    cfg = write_config(tmp_path, http_server.url + "/in", 'api_key_env = "ACME_INGEST_KEY"')
    p = ingress("run", "-c", cfg, "--duration", "4", env_extra={"ACME_INGEST_KEY": secret})
    assert p.returncode == 0, p.stderr
    with http_server.lock:
        sent = [r.headers.get("authorization") for r in http_server.requests]
    assert len(sent) >= 4 and set(sent) == {f"Bearer {secret}"}  # the secret was really used
    assert "[redacted]" in p.stderr  # and the echoes reached the log, scrubbed
    assert_hidden(secret, everything_visible(cfg, tmp_path / "data", p.stderr))
    reasons = [f.read_text() for f in (tmp_path / "data").rglob("*.json") if '"reason"' in f.read_text()]
    assert reasons and all("[redacted]" in r for r in reasons)  # the 400 became a dead letter


def test_env_key_with_cr_is_refused_at_start_without_the_value(tmp_path, http_server):
    secret = "cr-secret-aaaa\rcr-secret-bbbb"
    cfg = write_config(tmp_path, http_server.url + "/in", 'api_key_env = "ACME_INGEST_KEY"')
    p = ingress("run", "-c", cfg, "--duration", "2", env_extra={"ACME_INGEST_KEY": secret})
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        "tenant 'acme': credential_unreadable: environment variable ACME_INGEST_KEY holds more than one "
        "line; a credential is a single line"]
    assert not http_server.requests
    assert_hidden(secret, everything_visible(cfg, tmp_path / "data", p.stderr))


def test_two_line_key_file_is_refused_at_start_without_the_value(tmp_path, http_server):
    secret = "file-secret-aaaa\nfile-secret-bbbb\n"
    kf = tmp_path / "acme.key"
    kf.write_text(secret)
    kf.chmod(0o600)
    cfg = write_config(tmp_path, http_server.url + "/in", f'api_key_file = "{kf}"')
    p = ingress("run", "-c", cfg, "--duration", "2")
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        f"tenant 'acme': credential_unreadable: key file {kf} holds more than one line; "
        "a credential is a single line"]
    assert_hidden(secret, everything_visible(cfg, tmp_path / "data", p.stderr))


def test_key_file_rotated_to_two_lines_while_running_is_held_without_the_value(tmp_path, http_server):
    kf = tmp_path / "acme.key"
    kf.write_text("good-secret-0001\n")
    kf.chmod(0o600)
    cfg = write_config(tmp_path, http_server.url + "/in", f'api_key_file = "{kf}"')
    proc = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    bad = "rotated-secret-aaaa\nrotated-secret-bbbb\n"
    try:
        deadline = time.monotonic() + 30
        while not http_server.requests and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert http_server.requests, "the agent never sent"
        tmp = kf.with_suffix(".tmp")
        tmp.write_text(bad)
        tmp.chmod(0o600)
        tmp.replace(kf)
        with http_server.lock:
            n = len(http_server.requests)
        time.sleep(2)  # a few collection intervals: the agent reads the key at each send
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "credential_unreadable" in err and f"key file {kf} holds more than one line" in err
    with http_server.lock:
        after = http_server.requests[n:]
    assert all(r.headers.get("authorization") == "Bearer good-secret-0001" for r in after)
    assert_hidden(bad, everything_visible(cfg, tmp_path / "data", err))


def test_header_value_ending_in_newline_is_refused_by_check_config_and_run(tmp_path, http_server):
    secret = "hdr-secret-" + os.urandom(6).hex()
    cfg = write_config(tmp_path, http_server.url + "/in", 'api_key_env = "ACME_INGEST_KEY"',
                       headers=f'headers = {{ X-Api-Key = "{secret}\\n" }}')
    for args in (("check-config", "-c", cfg), ("run", "-c", cfg, "--duration", "2")):
        p = ingress(*args, env_extra={"ACME_INGEST_KEY": "fine-key-1234"})
        assert p.returncode == 2, p.stderr
        assert p.stderr.splitlines() == [f"{cfg}:21: outputs[0].headers.X-Api-Key: the value contains a line "
                                         "feed (LF); a header value is one line without control characters"]
        assert_hidden(secret, everything_visible(cfg, tmp_path / "data", p.stderr))
    assert not http_server.requests


def test_header_secret_from_a_file_is_sent_and_never_visible_even_when_echoed(tmp_path, http_server):
    secret = "file-header-secret-" + os.urandom(6).hex()
    tf = tmp_path / "token"
    tf.write_text(secret + "\n")
    tf.chmod(0o600)

    def echo(req):  # the first answers echo the header back in an error body
        with http_server.lock:
            n = len(http_server.requests)
        if n <= 3:
            return Reply(500, f'{{"error": {{"code": "no", "message": "token {req.headers.get("x-api-token")} bad"}}}}'
                         .encode())
        return Reply(200)

    http_server.behave = echo
    cfg = write_config(tmp_path, http_server.url + "/in", 'api_key_env = "ACME_INGEST_KEY"',
                       f'[outputs.headers]\nX-Api-Token = {{ file = "{tf}" }}\n')
    cfg.write_text(cfg.read_text().replace("[agent]\n", '[agent]\nlog_level = "debug"\n', 1))
    p = ingress("run", "-c", cfg, "--duration", "3", env_extra={"ACME_INGEST_KEY": "k-aaaa"})
    assert p.returncode == 0, p.stderr
    with http_server.lock:
        sent = {r.headers.get("x-api-token") for r in http_server.requests}
    assert sent == {secret}  # resolved from the file, final newline dropped
    assert "[redacted]" in p.stderr
    assert_hidden(secret, everything_visible(cfg, tmp_path / "data", p.stderr))
    assert secret not in cfg.read_text()  # only the reference is in the TOML

    tf.chmod(0o644)  # readable by others: refused, with the fix, never the value
    p = ingress("check-config", "-c", cfg)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert f"chmod 600 {tf}" in p.stderr and "outputs[0].headers.X-Api-Token" in p.stderr
    assert_hidden(secret, p.stderr + p.stdout)
