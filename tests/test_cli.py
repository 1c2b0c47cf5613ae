"""The ``ingress`` command end to end, as a user runs it (subprocess, installed package, real /proc)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ingress

SAMPLE_KEYS = ["tenant", "name", "tags", "ts", "value"]


def ingress_cmd(*args, cwd=None, input=None, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "ingress", *map(str, args)], capture_output=True,
                          cwd=cwd, input=input, timeout=timeout, env=env)


def one_error_line(p) -> str:
    err = p.stderr.decode()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write_config(tmp_path: Path, body: str, name: str = "agent.toml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def two_tenants(tmp_path: Path, extra_agent: str = "") -> Path:
    return write_config(tmp_path, f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "test-host"
interval = "1s"
{extra_agent}
[agent.batch]
max_delay = "200ms"

[control]
listen = "127.0.0.1:0"

[[tenants]]
id = "acme"
collectors = ["cpu", "memory"]
tags = {{ team = "infra" }}

[[tenants]]
id = "globex"
collectors = ["cpu", "memory"]
exclude = ["cpu.*"]

[[outputs]]
type = "file"
""")


def test_version():
    p = ingress_cmd("--version")
    assert p.returncode == 0 and p.stdout.decode().strip() == f"ingress {ingress.__version__}"


def test_usage_error_is_one_line():
    p = ingress_cmd("run", "--duration", "soon")
    assert p.returncode == 2
    assert one_error_line(p) == ("ingress run: argument --duration: 'soon' is not a number of seconds "
                                 "(see ingress run --help)")


def test_check_config_ok(tmp_path):
    p = ingress_cmd("check-config", "-c", two_tenants(tmp_path))
    assert (p.returncode, p.stdout.decode(), p.stderr.decode()) == (0, "ok\n", "")


def test_check_config_names_file_line_and_key(tmp_path):
    cfg = write_config(tmp_path, '[[tenants]]\nid = "acme"\n\n[[tenants]]\nid = "Acme!"\n\n[[outputs]]\ntype = "file"\n')
    p = ingress_cmd("check-config", "-c", cfg)
    assert p.returncode == 2 and p.stdout == b""
    assert one_error_line(p) == (f"{cfg}:5: tenants[1].id: 'Acme!' is not a valid tenant id "
                                 "(expected ^[a-z0-9][a-z0-9_-]{0,62}$)")


def test_missing_config_file_is_one_line(tmp_path):
    p = ingress_cmd("check-config", "-c", tmp_path / "nope.toml")
    assert p.returncode == 1
    assert one_error_line(p) == f"{tmp_path / 'nope.toml'}: No such file or directory"


def test_run_once_embedded_default_prints_contract_lines_and_writes_nothing(tmp_path):
    p = ingress_cmd("run", "--once", cwd=tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    rows = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert rows, "no samples"
    now = time.time_ns()
    for r in rows:
        assert list(r) == SAMPLE_KEYS
        assert r["tenant"] == "default" and r["name"].split(".")[0] in ("cpu", "memory")
        assert isinstance(r["value"], float) and isinstance(r["ts"], int) and abs(now - r["ts"]) < 300e9
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in r["tags"].items())
    assert {r["name"].split(".")[0] for r in rows} == {"cpu", "memory"}
    assert list(tmp_path.iterdir()) == []  # sends nothing, spools nothing


def test_run_once_applies_each_tenants_rules_and_tags(tmp_path):
    p = ingress_cmd("run", "--once", "-c", two_tenants(tmp_path))
    assert p.returncode == 0, p.stderr.decode()
    rows = [json.loads(x) for x in p.stdout.decode().splitlines()]
    acme = [r for r in rows if r["tenant"] == "acme"]
    globex = [r for r in rows if r["tenant"] == "globex"]
    assert acme and globex and len(rows) == len(acme) + len(globex)
    assert not [r for r in globex if r["name"].startswith("cpu.")]  # excluded, never delivered
    assert all(r["tags"].get("team") == "infra" for r in acme)
    assert not [r for r in globex if "team" in r["tags"]]
    # one collection, fanned out: both tenants see the same memory values at the same time
    mem = lambda rs: {(r["name"], tuple(sorted((k, v) for k, v in r["tags"].items() if k != "team")), r["ts"], r["value"])
                      for r in rs if r["name"].startswith("memory.")}
    assert mem(acme) == mem(globex)
    assert not (tmp_path / "data").exists()


def test_run_duration_spools_delivers_decodes_and_reports(tmp_path):
    cfg = two_tenants(tmp_path)
    p = ingress_cmd("run", "-c", cfg, "--duration", "3", timeout=90)
    assert p.returncode == 0, p.stderr.decode()
    events = [json.loads(x) for x in p.stderr.decode().splitlines()]
    msgs = [e["msg"] for e in events]
    assert msgs[0] == "started" and msgs[-1] == "stopped" and "collected" in msgs
    assert events[0]["destinations"] == "any"  # agent.allow_destinations not set: no restriction
    summary = next(e for e in events if e["msg"] == "collected")
    assert set(summary["samples"]) == {"acme", "globex"}
    data = tmp_path / "data"
    assert data.stat().st_mode & 0o777 == 0o700

    # The file output wrote acme's batches; decode one with the CLI.
    from ingress.outputs.file import read_batches

    files = sorted((data / "out" / "acme").iterdir())
    assert files
    batch = next(iter(read_batches(files[0])))
    bpath = tmp_path / "one.batch"
    bpath.write_bytes(batch)
    d = ingress_cmd("decode", bpath)
    assert d.returncode == 0, d.stderr.decode()
    rows = [json.loads(x) for x in d.stdout.decode().splitlines()]
    assert rows and all(list(r) == SAMPLE_KEYS + ["batch_id", "host"] for r in rows)
    assert {(r["tenant"], r["host"], r["tags"]["team"]) for r in rows} == {("acme", "test-host", "infra")}
    assert len({r["batch_id"] for r in rows}) == 1 and len(rows[0]["batch_id"]) == 32
    # the same from stdin
    d2 = ingress_cmd("decode", "-", input=batch)
    assert d2.stdout == d.stdout

    st = ingress_cmd("spool", "stats", "-c", cfg, "--json")
    assert st.returncode == 0, st.stderr.decode()
    stats = json.loads(st.stdout)
    assert set(stats) == {"acme", "globex"}
    # the stop let the healthy file output take everything, the last flush included
    assert [v["samples_pending"] for v in stats.values()] == [0, 0]
    assert all({"segments", "bytes", "oldest_age_s", "samples_pending"} <= set(v) for v in stats.values())
    table = ingress_cmd("spool", "stats", "-c", cfg).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["tenant", "segments", "bytes"] and [r.split()[0] for r in table[1:]] == ["acme", "globex"]


def test_sigterm_stops_gracefully(tmp_path):
    cfg = two_tenants(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        first = json.loads(proc.stderr.readline())
        assert first["msg"] == "started"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        rest = [json.loads(x) for x in proc.stderr.read().decode().splitlines()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0
    msgs = [e["msg"] for e in rest]
    assert "stopping" in msgs and msgs[-1] == "stopped"
    stopped = rest[-1]
    # every sample collected was persisted before the stop completed
    assert stopped["samples"] == stopped["spooled"]


def test_decode_corrupt_input_is_one_line(tmp_path):
    p = ingress_cmd("decode", "-", input=b"INGB\x01garbage")
    assert p.returncode == 2 and p.stdout == b""
    assert one_error_line(p).startswith("<stdin>: not a valid batch: ")


def test_start_up_error_is_one_line(tmp_path):
    cfg = write_config(tmp_path, f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
[control]
listen = "127.0.0.1:0"

[[tenants]]
id = "acme"
api_key_env = "INGRESS_TEST_UNSET_KEY"
[[outputs]]
type = "http"
url = "http://127.0.0.1:9/in"
""")
    env = {k: v for k, v in os.environ.items() if k != "INGRESS_TEST_UNSET_KEY"}
    p = ingress_cmd("run", "-c", cfg, "--duration", "1", env=env)
    assert p.returncode == 1
    assert one_error_line(p) == ("tenant 'acme': credential_missing: environment variable "
                                 "INGRESS_TEST_UNSET_KEY is not set")


@pytest.mark.integration
def test_run_delivers_to_the_reference_sink_with_each_tenants_credential(tmp_path):
    """Agent -> HTTP output -> sink over loopback; credentials from env and from a key file."""
    from ingress import wire
    from ingress.sink import SinkServer
    from ingress.outputs.file import read_batches

    keys = tmp_path / "keys.toml"
    keys.write_text('[tenants]\nacme = "acme-key"\nglobex = "globex-key"\n')
    (tmp_path / "globex.key").write_text("globex-key\n")
    (tmp_path / "globex.key").chmod(0o600)  # a key file readable by others is refused
    sink = SinkServer("127.0.0.1:0", tmp_path / "sink", keys).start()
    try:
        cfg = write_config(tmp_path, f"""\
[agent]
data_dir = "{tmp_path / 'data'}"
interval = "1s"
[agent.batch]
max_delay = "200ms"

[control]
listen = "127.0.0.1:0"

[[tenants]]
id = "acme"
api_key_env = "INGRESS_TEST_ACME_KEY"

[[tenants]]
id = "globex"
collectors = ["memory"]
api_key_file = "{tmp_path / 'globex.key'}"

[[outputs]]
type = "http"
url = "{sink.url}v1/batches"
""")
        env = dict(os.environ, INGRESS_TEST_ACME_KEY="acme-key")
        p = ingress_cmd("run", "-c", cfg, "--duration", "3", env=env, timeout=90)
        assert p.returncode == 0, p.stderr.decode()
        stats = json.loads(ingress_cmd("spool", "stats", "-c", cfg, "--json").stdout)
    finally:
        sink.stop()
    for tenant in ("acme", "globex"):
        files = sorted((tmp_path / "sink" / tenant).glob("*.ibatch"))
        batches = [wire.decode(b) for f in files for b in read_batches(f)]
        assert batches and {b.tenant for b in batches} == {tenant}
        assert stats[tenant]["samples_pending"] == 0  # every spooled batch was acknowledged
    globex_names = {b.series[i][0] for f in sorted((tmp_path / "sink" / "globex").glob("*.ibatch"))
                    for b in map(wire.decode, read_batches(f)) for i in b.series_index.tolist()}
    assert globex_names and all(n.startswith("memory.") for n in globex_names)


def test_commands_without_c_use_the_embedded_default(tmp_path):
    """`spool stats`, `check-config` and `keys list` fall back to the default config like `run`."""
    import subprocess
    import sys

    from ingress.spool import Spool, TenantPolicy

    sp = Spool(tmp_path / "ingress-data", {"default": TenantPolicy()}, ["file-0"], write_mb_s=None,
               maintain_every_s=None)
    sp.append("default", b"\x01" * 16, b"one batch", 7, 1)
    sp.close()
    for args, want in ((["spool", "stats", "--json"], '"default"'), (["check-config"], "ok"),
                       (["keys", "list"], "tenant")):
        r = subprocess.run([sys.executable, "-m", "ingress", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, (args, r.stderr)
        assert want in r.stdout, (args, r.stdout)
    r = subprocess.run([sys.executable, "-m", "ingress", "spool", "stats", "--json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    import json

    assert json.loads(r.stdout)["default"]["samples_pending"] == 7
