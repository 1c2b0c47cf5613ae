"""Plugins own their configuration: per-tenant collector tables, output declarations,
the registries, and a plugin added from outside (tests/plugin_example.py) with nothing else edited."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress import config, plugins
from ingress.collect import COLLECTORS
from ingress.collect.plan import build_collectors, plan_collectors
from ingress.config import ConfigError, loads
from ingress.tenants import TenantSet
from ingress.outputs import OUTPUTS

HERE = Path(__file__).resolve().parent

OUT = '[[outputs]]\ntype = "file"\n'


def tenant(tid: str, collectors: str, extra: str = "") -> str:
    return f'[[tenants]]\nid = "{tid}"\ncollectors = {collectors}\n{extra}'


# --------------------------------------------------------------------------- per-tenant collector options

def test_documented_collector_options_are_settable_per_tenant_and_split_instances():
    # Before: `[tenants.disk]` was an unknown key, so fstypes_include could not be set at all.
    s = loads(tenant("a", '["disk", "network"]', '[tenants.disk]\nfstypes_include = ["tmpfs"]\n'
                                                   '[tenants.network]\ninterfaces_exclude = ["lo"]\n')
              + tenant("b", '["disk", "network"]', '[tenants.network]\ninterfaces_exclude = ["lo"]\n')
              + tenant("c", '["disk"]', '[tenants.disk]\nfstypes_include = ["zfs"]\n')  # the default
              + OUT)
    assert dict(s.tenants[0].collector_tables["disk"]) == {"fstypes_include": ("tmpfs",)}
    plan = build_collectors(plan_collectors(TenantSet(s.tenants).enabled), s)
    got = {k: ([t.id for t in b.tenants], b.options) for k, b in plan.items()}
    assert got == {"disk:a": (["a"], {"fstypes_include": ["tmpfs"]}),
                   "disk:b": (["b", "c"], {}),  # asking for the default is asking for nothing
                   "network": (["a", "b"], {"interfaces_exclude": ["lo"]})}
    assert plan["disk:a"].collector.opts["fstypes_include"] == ["tmpfs"]
    assert plan["disk:b"].collector.opts["fstypes_include"] == ["zfs"]
    assert plan["network"].collector.opts["interfaces_exclude"] == ["lo"]


def test_processes_instance_options_split_but_views_are_shared():
    s = loads(tenant("a", '["processes"]', '[tenants.processes]\nmatch = ["x*"]\n')
              + tenant("b", '["processes"]', '[tenants.processes]\ntop = 2\n')
              + tenant("c", '["processes"]', '[tenants.processes]\nslow_every = 2\n') + OUT)
    plan = plan_collectors(TenantSet(s.tenants).enabled)
    assert {k: sorted(b.options["views"]) for k, b in plan.items()} == {
        "processes:a": ["a", "b"], "processes:c": ["c"]}
    assert plan["processes:c"].options["slow_every"] == 2


@pytest.mark.parametrize("extra,message", [
    ('[tenants.disk]\nfstypes_include = "tmpfs"\n',
     'agent.toml:5: tenants[0].disk.fstypes_include: expected an array, got a string "tmpfs"'),
    ('[tenants.disk]\nfstype_include = []\n',
     "agent.toml:5: tenants[0].disk.fstype_include: unknown key in [tenants.disk] "
     "(did you mean 'fstypes_include'?)"),
    ('[tenants.network]\ninterfaces_exclude = ["lo"]\n',
     "agent.toml:4: tenants[0].network: [tenants.network] is configured but 'network' is not "
     "in this tenant's collectors"),
    ('[tenants.cpu]\nx = 1\n', "agent.toml:4: tenants[0].cpu: unknown key in [[tenants]]"),
    ('[tenants.disks]\n', "agent.toml:4: tenants[0].disks: unknown key in [[tenants]] (did you mean 'disk'?)"),
    ('[tenants.connections]\nports = { grpc = 70000 }\n',
     "agent.toml:5: tenants[0].connections.ports.grpc: 70000 is not a port number 1..65535"),
    ('[tenants.processes]\nviews = {}\n',
     "agent.toml:5: tenants[0].processes.views: unknown key in [tenants.processes]"),
])
def test_bad_collector_tables_name_file_line_key(extra, message):
    text = tenant("a", '["disk", "connections", "processes"]', extra) + OUT
    with pytest.raises(ConfigError) as e:
        loads(text, "agent.toml")
    assert str(e.value) == message


def _tables():
    out = []
    for name in COLLECTORS:
        decl = COLLECTORS[name].table()
        if decl is not None and not decl[0].array:
            out += [(name, o) for o in decl[1]]
    return out


TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), kids,
                                                              max_size=3),
    max_leaves=6)


def toml_str(v: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7f or c in '"\\' else c
                         for c in v) + '"'


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{" + ", ".join(f"{_toml(k)} = {_toml(x)}" for k, x in v.items()) + "}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=st.sampled_from(_tables()), value=TOML_VALUES)
def test_any_collector_option_value_is_taken_or_refused_in_one_line(row, value):
    """Every key of every collector table: a value is what its kind converts, or one FILE:LINE line."""
    name, opt = row
    text = (f'[[tenants]]\nid = "a"\ncollectors = ["{name}"]\n[tenants.{name}]\n{opt.key} = {_toml(value)}\n'
            + OUT)
    try:
        expected = opt.kind.convert(value)
    except Exception:  # noqa: BLE001 - the kind refuses: so must the file
        expected = None
    try:
        s = loads(text, "agent.toml")
    except ConfigError as e:
        msg = str(e)
        assert expected is None, msg
        assert "\n" not in msg and msg.startswith(f"agent.toml:5: tenants[0].{name}.{opt.key}"), msg
        return
    assert expected is not None
    got = s.tenants[0].collector_tables.get(name, {})
    if opt.key in got:
        assert got[opt.key] == expected
    else:  # dropped because it equals the default
        assert expected == opt.kind.convert(opt.default)
    plan = plan_collectors(TenantSet(s.tenants).enabled)
    try:
        build_collectors(plan, s)
    except ConfigError as e:  # a collector's own stricter check: still one line naming the tenant's entry
        assert "\n" not in str(e) and str(e).startswith("<string>: tenants[0].collectors[0]")
    finally:
        for b in plan.values():
            if b.collector is not None:
                b.collector.close()


# --------------------------------------------------------------------------- outputs

@settings(max_examples=300, deadline=None)
@given(topic=st.text(st.sampled_from("ab.-_{}/ tenant") | st.characters(blacklist_categories=("Cs",)), max_size=260)
       | st.text("a", min_size=240, max_size=260))
def test_kafka_topic_rule_is_one_rule(topic):
    """The configuration and the Kafka output accept exactly the same topics.

    Before, config.py and kafka.py each had a rule: a 250-character topic passed the
    output's and failed the configuration's, "{tenant" the other way round.
    """
    from ingress.outputs.kafka import KafkaOutput

    text = f'[[tenants]]\nid = "a"\n[[outputs]]\ntype = "kafka"\nbrokers = "h:1"\ntopic = {toml_str(topic)}\n'
    try:
        loads(text, "agent.toml")
        config_ok = True
    except ConfigError as e:
        config_ok = False
        assert "\n" not in str(e) and str(e).startswith("agent.toml:6: outputs[0].topic: ")
    try:
        KafkaOutput("k", "h:1", topic)
        output_ok = True
    except ConfigError:
        output_ok = False
    assert config_ok == output_ok


def test_output_keys_are_declared_by_their_plugin_only():
    for name in OUTPUTS:
        p = OUTPUTS[name]
        assert p.type == name
        assert all(o.section == "outputs" for o in p.options)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.url: not a key of a kafka output \(http/otlp/remote_write only\)"):
        loads('[[tenants]]\nid = "a"\n[[outputs]]\ntype = "kafka"\nbrokers = "h:1"\nurl = "http://x"\n')


def test_declaring_outputs_imports_no_client_library():
    code = ("import sys; from ingress import config; "
            "config.loads('[[tenants]]\\nid = \"a\"\\n[[outputs]]\\ntype = \"file\"\\n'); "
            "from ingress.outputs import OUTPUTS; OUTPUTS['kafka'].options; "
            "print(sorted(m for m in ('confluent_kafka', 'ingress.outputs.kafka', 'ingress.outputs.http', "
            "'ingress.collect.processes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=HERE)
    assert out.returncode == 0, out.stderr
    # kafka's declaration is loaded (asked for), its client library is not; nothing unused is
    assert out.stdout.strip() == "['ingress.outputs.kafka']"


# --------------------------------------------------------------------------- INGRESS_PLUGINS

@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=30))
def test_any_plugins_value_imports_or_fails_in_one_line(value):
    old = os.environ.get(plugins.PLUGINS_ENV)
    os.environ[plugins.PLUGINS_ENV] = value.replace("\0", "")
    try:
        try:
            plugins.load_external()
        except ConfigError as e:
            assert "\n" not in str(e) and str(e).startswith("INGRESS_PLUGINS: ")
    finally:
        if old is None:
            os.environ.pop(plugins.PLUGINS_ENV, None)
        else:
            os.environ[plugins.PLUGINS_ENV] = old
        plugins.load_external()


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def ingress(*args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "ingress", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=HERE)


def test_bad_plugins_variable_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(tenant("a", '["cpu"]') + OUT)
    for value, want in [("no_such_module_xyz", "cannot import plugin module 'no_such_module_xyz'"),
                        ("os;rm", "'os;rm' is not a module name")]:
        p = ingress("check-config", "-c", cfg, env=_env(INGRESS_PLUGINS=value))
        assert p.returncode == 2
        assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
        assert want in p.stderr


# --------------------------------------------------------------------------- the example plugin

@pytest.fixture
def example():
    import plugin_example

    plugin_example.register()
    yield plugin_example
    plugin_example.unregister()


def test_example_plugin_is_in_the_generated_docs(example):
    from ingress.collect.docs import render

    ref = config.reference_markdown()
    assert "### `[tenants.random]`" in ref and "| `streams` | integer | `3` |" in ref
    assert '### `[[outputs]]` with `type = "memory"`' in ref and "| `record` | path | none |" in ref
    assert "\n## random\n" in render() and "| `random.value` | gauge |" in render()


def test_example_plugin_errors_name_file_line(example):
    base = tenant("a", '["random"]', "[tenants.random]\nstreams = 0\n") + '[[outputs]]\ntype = "memory"\n'
    with pytest.raises(ConfigError, match=re.escape("a.toml:5: tenants[0].random.streams: 0 is below the minimum 1")):
        loads(base, "a.toml")
    with pytest.raises(ConfigError, match=re.escape("a.toml:6: outputs[0].record: '/x.txt' must end in .jsonl")):
        loads(tenant("a", '["random"]') + '[[outputs]]\ntype = "memory"\nrecord = "/x.txt"\n', "a.toml")


def test_example_plugin_runs_in_process(example, tmp_path):
    from ingress.agent import Agent

    s = loads(f'[agent]\ndata_dir = "{tmp_path}"\n' + tenant("a", '["random"]', "[tenants.random]\nstreams = 4\n")
              + '[[outputs]]\ntype = "memory"\n')
    agent = Agent(s)
    rows = list(agent.collect_once())
    assert sorted(r[2]["stream"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r[0] == "a" and r[1] == "random.value" and 0 <= r[4] < 1 for r in rows)


def test_example_plugin_through_the_command_line(tmp_path):
    """check-config, run --once and run --duration with the example plugin: nothing in ingress edited."""
    record = tmp_path / "batches.jsonl"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path / "data"}"\ninterval = "1s"\n\n[agent.batch]\nmax_delay = "200ms"\n\n'
                   '[control]\nlisten = "127.0.0.1:0"\n\n'
                   + tenant("acme", '["random", "cpu"]', "[tenants.random]\nstreams = 5\nscale = 10.0\n")
                   + f'\n[[outputs]]\ntype = "memory"\nrecord = "{record}"\n')
    env = _env(INGRESS_PLUGINS="plugin_example")
    p = ingress("check-config", "-c", cfg, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, "ok\n", "")
    p = ingress("run", "-c", cfg, "--once", env=env)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    rand = [r for r in rows if r["name"] == "random.value"]
    assert sorted(r["tags"]["stream"] for r in rand) == ["0", "1", "2", "3", "4"]
    assert all(0 <= r["value"] < 10 and r["tenant"] == "acme" for r in rand)
    assert any(r["name"].startswith("cpu.") for r in rows)
    # Without the variable the same file names a collector this build does not know.
    p = ingress("check-config", "-c", cfg, env=_env(INGRESS_PLUGINS=""))
    assert p.returncode == 2 and "tenants[0].random: unknown key in [[tenants]]" in p.stderr
    p = ingress("run", "-c", cfg, "--duration", "3", env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    batches = [json.loads(line) for line in record.read_text().splitlines()]
    assert batches and all(b["tenant"] == "acme" and re.fullmatch(r"[0-9a-f]{32}", b["batch_id"]) for b in batches)
    assert sum(b["samples"] for b in batches) >= 5
