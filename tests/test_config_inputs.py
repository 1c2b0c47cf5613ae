"""Issue 8, items 5 and 6: values `check-config` accepted and `run` then crashed on or lost data with.

Every value is validated once, at load: a bad one is one line on stderr with
FILE:LINE and exit 2, from `check-config` and from `run` alike, never a
traceback. The property tests push arbitrary strings through `check-config`
(in-process, so any exception escaping `main` fails the test) and check the
answer against the contract's patterns, both ways.
"""
from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingress import cli
from ingress.errors import ConfigError

CONTRACT_TENANT = r"[a-z0-9][a-z0-9_-]{0,62}"  # docs: ^[a-z0-9][a-z0-9_-]{0,62}$, whole value
OUTPUT_NAME = r"[a-z0-9][a-z0-9_.-]{0,62}"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,254}"
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}"
RESERVED = {"authorization", "x-tenant-id", "content-type", "idempotency-key"}
PROPS = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def toml_str(s: str) -> str:
    """``s`` as a TOML basic string, whatever it holds."""
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def config(data_dir: Path, *, tenant: str = '"acme"', hostname: str = '"h1"', tenant_extra: str = "",
           output: str = 'type = "file"', name: str | None = None) -> str:
    return (f'[agent]\ndata_dir = {toml_str(str(data_dir))}\nhostname = {hostname}\n\n'
            f'[[tenants]]\nid = {tenant}\ncollectors = ["cpu"]\n{tenant_extra}\n'
            f'[[outputs]]\n{output}\n' + (f"name = {name}\n" if name is not None else ""))


def http_output(url: str = '"http://127.0.0.1:9/in"', headers: str = "") -> str:
    return f'type = "http"\nurl = {url}\n' + (f"headers = {{ {headers} }}\n" if headers else "")


def check(path: Path) -> tuple[int, str, str]:
    """`ingress check-config -c path` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["check-config", "-c", str(path)])
    return rc, out.getvalue(), err.getvalue()


def assert_ok_or_one_line(path: Path, rc: int, out: str, err: str) -> bool:
    """True for `ok`; else assert exit 2 and one line that starts with FILE:LINE."""
    if rc == 0:
        assert out == "ok\n" and err == ""
        return True
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.match(re.escape(str(path)) + r":\d+: ", lines[0]), lines[0]
    return False


def ingress(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "ingress", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def one_line(p) -> str:
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cfg")


@pytest.fixture(autouse=True)
def _forget_secrets():
    # Loading a config registers secret-looking header values; keep other tests' logs intact.
    from ingress import logs

    yield
    if hasattr(logs, "SECRETS"):
        logs.SECRETS.clear()


# --------------------------------------------------------------------------- the named cases

NAMED = {
    "tenant id with a trailing newline": (
        dict(tenant='"acme\\n"'), r":6: tenants\[0\]\.id: 'acme\\n' is not a valid tenant id"),
    "output name with a trailing newline": (
        dict(name='"out\\n"'), r":11: outputs\[0\]\.name: 'out\\n' is not a valid output name"),
    "env var name with a trailing newline": (
        dict(tenant_extra='api_key_env = "ACME_KEY\\n"'),
        r":8: tenants\[0\]\.api_key_env: 'ACME_KEY\\n' is not a valid environment variable name"),
    "hostname over 255 bytes": (
        dict(hostname='"' + "h" * 256 + '"'), r":3: agent\.hostname: is 256 bytes of UTF-8; at most 255"),
    "hostname of 129 two-byte characters": (
        dict(hostname='"' + "é" * 129 + '"'), r":3: agent\.hostname: is 258 bytes of UTF-8"),
    "hostname with a line feed": (
        dict(hostname='"web-1\\n"'), r":3: agent\.hostname: 'web-1\\n' contains a line feed"),
    "url with an out-of-range port": (
        dict(tenant_extra='api_key_env = "K"', output=http_output('"http://127.0.0.1:99999/in"')),
        r":11: outputs\[0\]\.url: 'http://127.0.0.1:99999/in' is not a usable URL: Port out of range"),
    "url with a space": (
        dict(tenant_extra='api_key_env = "K"', output=http_output('"http://127.0.0.1:8080/a b"')),
        r":11: outputs\[0\]\.url: 'http://127.0.0.1:8080/a b' is not a usable URL: it contains a space"),
    "url with an empty host label": (
        dict(tenant_extra='api_key_env = "K"', output=http_output('"http://a..b:8080/in"')),
        r":11: outputs\[0\]\.url: .* no valid host"),
    "header name with CR": (
        dict(tenant_extra='api_key_env = "K"', output=http_output(headers='"X-Team\\r" = "infra"')),
        r":12: outputs\[0\]\.headers\.\"X-Team\\r\": 'X-Team\\r' is not a valid header name"),
    "header value with LF": (
        dict(tenant_extra='api_key_env = "K"', output=http_output(headers='X-Team = "in\\nfra"')),
        r":12: outputs\[0\]\.headers\.X-Team: the value contains a line feed \(LF\)"),
    "header value ending in CR LF": (
        dict(tenant_extra='api_key_env = "K"', output=http_output(headers='X-Team = "infra\\r\\n"')),
        r":12: outputs\[0\]\.headers\.X-Team: the value contains a carriage return \(CR\)"),
    "header value with NUL": (
        dict(tenant_extra='api_key_env = "K"', output=http_output(headers='X-Team = "in\\u0000fra"')),
        r":12: outputs\[0\]\.headers\.X-Team: the value contains a NUL byte"),
    "control.listen port in Arabic-Indic digits": (
        dict(output='type = "file"\n[control]\nlisten = "127.0.0.1:\u0661\u0662"'),
        r":12: control\.listen: '127\.0\.0\.1:\u0661\u0662' is not host:port"),
}


@pytest.mark.parametrize("case", list(NAMED))
def test_check_config_refuses_in_one_line_with_file_and_line(case, tmp_path):
    kw, want = NAMED[case]
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path / "data", **kw), "utf-8")
    p = ingress("check-config", "-c", cfg)
    assert p.returncode == 2, p.stdout + p.stderr
    assert re.fullmatch(re.escape(str(cfg)) + want + ".*", one_line(p)), one_line(p)


@pytest.mark.parametrize("case", ["tenant id with a trailing newline", "hostname over 255 bytes",
                                  "url with an out-of-range port", "header value with LF"])
def test_run_refuses_the_same_values(case, tmp_path):
    # Before: `run --duration 2` with tenant "acme\n" exited 0, collected, and spooled nothing.
    kw, want = NAMED[case]
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path / "data", **kw), "utf-8")
    p = ingress("run", "-c", cfg, "--duration", "2", env={"K": "a-key-1234", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stderr
    assert re.fullmatch(re.escape(str(cfg)) + want + ".*", one_line(p))
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_a_header_value_is_never_quoted_in_the_error(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path / "data", tenant_extra='api_key_env = "K"',
                          output=http_output(headers='X-Api-Key = "hdr-secret-6d1f\\n"')))
    p = ingress("check-config", "-c", cfg)
    assert p.returncode == 2
    assert "hdr-secret-6d1f" not in p.stderr and "X-Api-Key" in one_line(p)


@pytest.mark.parametrize("text,line", [
    ("x = " + "[" * 3000 + "]" * 3000 + "\n", 1),
    ("[agent]\nx = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", 2),
    ('[[tenants]]\nid = "a"\ntags = { ' + "a." * 3000 + "b = 1 }\n", 3),
    ("[" + "a." * 3000 + "b]\n", 1),
    ('# [[[[ in a comment\nx = "' + "[" * 100 + '"\n[agent]\ny = ' + "[" * 40 + "]" * 40 + "\n", 4),
])
def test_deeply_nested_toml_is_one_line_not_a_recursion_error(tmp_path, text, line):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    p = ingress("check-config", "-c", cfg)
    assert p.returncode == 2
    assert one_line(p).startswith(f"{cfg}:{line}: "), one_line(p)


def test_long_values_are_cut_in_messages(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path / "data", tenant='"' + "A" * 100_000 + '"'))
    rc, out, err = check(cfg)
    assert rc == 2 and len(err) < 400, err[:500]


# --------------------------------------------------------------------------- properties

def near(pattern: str) -> st.SearchStrategy[str]:
    """Arbitrary text, valid values, and valid values with one bad character added."""
    valid = st.from_regex(pattern, fullmatch=True)
    junk = st.sampled_from(["\n", "\r", "\r\n", "\x00", " ", "\t", "\u2028", "\x85", "é", "$", "/", "\ufeff"])
    return st.one_of(st.text(max_size=80), valid,
                     st.tuples(valid, junk, st.booleans()).map(lambda t: t[0] + t[1] if t[2] else t[1] + t[0]))


@PROPS
@given(s=near(CONTRACT_TENANT))
@example(s="acme\n")
def test_any_tenant_id_is_ok_only_when_the_contract_says_so(work, s):
    cfg = work / "tenant.toml"
    cfg.write_text(config(work / "data", tenant=toml_str(s)), "utf-8")
    ok = assert_ok_or_one_line(cfg, *check(cfg))
    assert ok == bool(re.fullmatch(CONTRACT_TENANT, s)), s


@PROPS
@given(s=near(OUTPUT_NAME))
@example(s="out\n")
def test_any_output_name(work, s):
    cfg = work / "name.toml"
    cfg.write_text(config(work / "data", name=toml_str(s)), "utf-8")
    ok = assert_ok_or_one_line(cfg, *check(cfg))
    assert ok == bool(re.fullmatch(OUTPUT_NAME, s)), s


@PROPS
@given(s=near(ENV_NAME))
@example(s="ACME_KEY\n")
def test_any_env_var_name(work, s):
    cfg = work / "env.toml"
    cfg.write_text(config(work / "data", tenant_extra=f"api_key_env = {toml_str(s)}"), "utf-8")
    ok = assert_ok_or_one_line(cfg, *check(cfg))
    assert ok == bool(re.fullmatch(ENV_NAME, s)), s


@PROPS
@given(s=st.one_of(st.text(max_size=300), st.text(min_size=120, max_size=260),
                   st.from_regex(r"[a-z0-9.-]{250,260}", fullmatch=True)))
@example(s="h" * 256)
def test_any_hostname(work, s):
    cfg = work / "host.toml"
    cfg.write_text(config(work / "data", hostname=toml_str(s)), "utf-8")
    ok = assert_ok_or_one_line(cfg, *check(cfg))
    control = any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s)
    assert ok == (0 < len(s.encode()) <= 255 and not control), s


def urls() -> st.SearchStrategy[str]:
    part = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
    host = st.one_of(st.sampled_from(["127.0.0.1", "[::1]", "example.com", "a..b", "", "x" * 64, "{tenant}.in"]), part)
    port = st.one_of(st.none(), st.integers(-5, 70000).map(str), part, st.sampled_from(["\u0661", "²", "0"]))
    return st.one_of(
        st.text(max_size=60),
        st.builds(lambda sch, h, p, path: f"{sch}://{h}" + (f":{p}" if p is not None else "") + "/" + path,
                  st.sampled_from(["http", "https", "HTTP", "ftp"]), host, port, part))


@PROPS
@given(s=urls())
@example(s="http://127.0.0.1:99999/in")
@example(s="http://127.0.0.1:8080/a b")
def test_any_url(work, s):
    cfg = work / "url.toml"
    cfg.write_text(config(work / "data", tenant_extra='api_key_env = "K"', output=http_output(toml_str(s))),
                   "utf-8")
    if not assert_ok_or_one_line(cfg, *check(cfg)):
        return
    # Accepted: http.client can take it as it is (what run will do with it).
    u = s.replace("{tenant}", "acme")
    assert re.fullmatch(r"https?://[!-~]+", u), s
    p = urlsplit(u)
    assert p.hostname and 0 < (p.port or 80) <= 65535
    p.hostname.encode("idna")  # what socket.getaddrinfo does with it; raises for bad labels


@PROPS
@given(name=near(TOKEN), value=st.one_of(st.text(max_size=40), st.text(alphabet="ab\r\n\t\x00 é\u20ac", max_size=8)))
@example(name="X-Team", value="infra\n")
@example(name="X-Team\r", value="infra")
def test_any_header_name_and_value(work, name, value):
    cfg = work / "hdr.toml"
    cfg.write_text(config(work / "data", tenant_extra='api_key_env = "K"',
                          output=http_output(headers=f"{toml_str(name)} = {toml_str(value)}")), "utf-8")
    ok = assert_ok_or_one_line(cfg, *check(cfg))
    good_name = bool(re.fullmatch(TOKEN, name)) and name.lower() not in RESERVED
    good_value = (all(c == "\t" or 0x20 <= ord(c) < 0x7F or 0xA0 <= ord(c) <= 0xFF for c in value)
                  and value == value.strip(" \t"))
    assert ok == (good_name and good_value), (name, value)
    if ok:  # what http.client would refuse at send time
        import http.client

        assert http.client._is_legal_header_name(name.encode("ascii"))
        assert not http.client._is_illegal_header_value(value.encode("latin-1"))


NEST = st.sampled_from(["array", "inline", "dotted", "header", "mixed"])


def nested(shape: str, depth: int) -> str:
    if shape == "array":
        return "x = " + "[" * depth + "]" * depth
    if shape == "inline":
        return "x = " + "{a = " * depth + "1" + "}" * depth
    if shape == "dotted":
        return "x." + "a." * depth + "b = 1"
    if shape == "header":
        return "[x." + "a." * depth + "b]\nc = 1"
    return "x = [" + "{a = [" * depth + "]}" * depth + "]"


@PROPS
@given(shape=NEST, depth=st.integers(0, 4000), where=st.sampled_from(["", "[agent]\n", "[[tenants]]\n"]))
def test_any_nesting_depth(work, shape, depth, where):
    cfg = work / "deep.toml"
    cfg.write_text(config(work / "data") + "\n" + where + nested(shape, depth) + "\n", "utf-8")
    assert not assert_ok_or_one_line(cfg, *check(cfg))  # x is an unknown key at every depth


def test_loads_turns_a_recursion_error_into_one_config_error(monkeypatch):
    from ingress import config

    def boom(text):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(config.tomllib, "loads", boom)
    with pytest.raises(ConfigError, match=r"^a\.toml: nested too deeply to read$"):
        config.loads("x = 1\n", "a.toml")
