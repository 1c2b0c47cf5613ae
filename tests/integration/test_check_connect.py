"""`ingress check-config --connect` probes every output once: real Tansu, real HTTP, a closed port."""
from __future__ import annotations

import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import free_port


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "ingress", *map(str, args)], capture_output=True,
                          timeout=timeout)


def write(tmp_path, outputs: str):
    p = tmp_path / "agent.toml"
    p.write_text(f'[agent]\ndata_dir = "{tmp_path / "data"}"\n\n'
                 '[[tenants]]\nid = "acme"\napi_key_env = "ACME_KEY"\n\n' + outputs)
    return p


def test_all_reachable_exit_0(tmp_path, kafka_bootstrap, http_server):
    cfg = write(tmp_path, f'[[outputs]]\ntype = "kafka"\nbrokers = "{kafka_bootstrap}"\n\n'
                          f'[[outputs]]\ntype = "http"\nurl = "{http_server.url}/in"\n\n'
                          '[[outputs]]\ntype = "file"\n')
    p = run("check-config", "-c", cfg, "--connect")
    out = p.stdout.decode().splitlines()
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert out == ["ok", "outputs[0] kafka-0: reachable", "outputs[1] http-1: reachable",
                   "outputs[2] file-2: reachable"], out
    assert "Traceback" not in p.stderr.decode()
    assert not http_server.requests  # a probe connects; it sends nothing


def test_closed_ports_are_unreachable_exit_1(tmp_path, kafka_bootstrap):
    closed = free_port()
    cfg = write(tmp_path, f'[[outputs]]\ntype = "kafka"\nbrokers = "127.0.0.1:{closed}"\n\n'
                          f'[[outputs]]\ntype = "otlp"\nurl = "http://127.0.0.1:{closed}/v1/metrics"\n\n'
                          f'[[outputs]]\ntype = "kafka"\nname = "live"\nbrokers = "{kafka_bootstrap}"\n')
    p = run("check-config", "-c", cfg, "--connect")
    out = p.stdout.decode().splitlines()
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert out[0] == "ok" and len(out) == 4, out
    assert out[1].startswith("outputs[0] kafka-0: unreachable: ") and str(closed) in out[1]
    assert out[2].startswith("outputs[1] otlp-1: unreachable: ")
    assert out[3] == "outputs[2] live: reachable"
    assert p.stderr.decode() == ""  # the probe lines say it all: no client log lines besides


def test_plain_check_config_with_unreachable_kafka_says_only_ok(tmp_path):
    cfg = write(tmp_path, f'[[outputs]]\ntype = "kafka"\nbrokers = "127.0.0.1:{free_port()}"\n')
    p = run("check-config", "-c", cfg)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"ok\n", b"")


def test_file_output_directory_that_cannot_be_made_is_unreachable(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")  # the output's directory would have to be made under a regular file
    cfg = write(tmp_path, f'[[outputs]]\ntype = "file"\npath = "{blocker / "out"}"\n')
    p = run("check-config", "-c", cfg, "--connect")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout.decode().splitlines()[1] == f"outputs[0] file-0: unreachable: {blocker} is not a directory"


def test_without_connect_nothing_is_probed(tmp_path):
    cfg = write(tmp_path, f'[[outputs]]\ntype = "http"\nurl = "http://127.0.0.1:{free_port()}/in"\n')
    p = run("check-config", "-c", cfg)
    assert p.returncode == 0 and p.stdout.decode() == "ok\n"


def test_misspelled_librdkafka_key_is_refused_by_plain_check_config(tmp_path):
    cfg = write(tmp_path, '[[outputs]]\ntype = "kafka"\nbrokers = "127.0.0.1:9"\n'
                          '[outputs.options]\n"linger.mss" = 5\n')
    p = run("check-config", "-c", cfg)
    err = p.stderr.decode()
    assert p.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f'{cfg}:12: outputs[0].options."linger.mss": ') and "linger.mss" in err


_keys = st.text("abcdefghijklmnopqrstuvwxyz.", min_size=3, max_size=20).filter(
    lambda k: "." in k.strip(".") and ".." not in k and not k.startswith(".") and not k.endswith("."))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_keys)
def test_any_unknown_option_is_one_line_naming_it(tmp_path, key):
    from ingress.config import loads
    from ingress.errors import ConfigError
    from ingress.outputs import OUTPUTS

    s = loads('[[tenants]]\nid = "acme"\n[[outputs]]\ntype = "kafka"\nbrokers = "127.0.0.1:9"\n'
              f'[outputs.options]\n"{key}" = "1"\n')
    try:
        OUTPUTS["kafka"].validate(s.outputs[0], lambda keys: ".".join(map(str, keys)))
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(f"options.{key}: "), str(e)
