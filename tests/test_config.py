"""ingress.config: every refusal names file, line, key and value; defaults; docs match the table."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from ingress import config
from ingress.config import ConfigError, Locator, loads, parse_duration

DOCS = Path(__file__).resolve().parents[1] / "docs"

# A valid base every bad case below changes one thing in. Line numbers in the
# expectations count from the first line of the dedented text.
BASE = """\
[agent]
interval = "10s"

[[tenants]]
id = "acme"
api_key_env = "ACME_KEY"

[[outputs]]
type = "file"
"""


def cfg(text: str) -> str:
    return textwrap.dedent(text)


BAD = [
    # (config text, expected error message)
    (BASE + '[[tenants]]\nid = "Acme!"\n',
     "agent.toml:11: tenants[1].id: 'Acme!' is not a valid tenant id (expected ^[a-z0-9][a-z0-9_-]{0,62}$)"),
    (BASE + '[[tenants]]\nid = "acme"\n',
     "agent.toml:11: tenants[1].id: 'acme' is already the id of tenants[0]"),
    (BASE.replace('interval = "10s"', 'intervall = "10s"'),
     "agent.toml:2: agent.intervall: unknown key in [agent] (did you mean 'interval'?)"),
    (BASE + "[extra]\n", "agent.toml:10: extra: unknown key in the top level"),
    (BASE.replace('interval = "10s"', "interval = 10"),
     'agent.toml:2: agent.interval: expected a duration string such as "10s" (units ms, s, m, h), got an integer 10'),
    (BASE.replace('interval = "10s"', 'interval = "10 sec"'),
     "agent.toml:2: agent.interval: '10 sec' is not a duration (use a number with a unit: ms, s, m, h)"),
    (BASE.replace('interval = "10s"', 'interval = "0s"'),
     "agent.toml:2: agent.interval: '0s' must be longer than 0s"),
    (BASE.replace('interval = "10s"', 'interval = "500ms"'),
     "agent.toml:2: agent.interval: 500ms is shorter than agent.collect.min_interval (1s)"),
    (BASE + '[[outputs]]\ntype = "kafka"\n',
     "agent.toml:10: outputs[1].brokers: missing: required for a kafka output"),
    (BASE + '[[outputs]]\ntype = "http"\n',
     "agent.toml:10: outputs[1].url: missing: required for a http output"),
    (BASE + '[[outputs]]\ntype = "smtp"\n',
     "agent.toml:11: outputs[1].type: \"smtp\" is not one of 'kafka', 'http', 'file', 'otlp', 'remote_write'"),
    (BASE + '[[outputs]]\nurl = "http://x"\n',
     "agent.toml:10: outputs[1].type: missing: required (kafka, http, file, otlp, remote_write)"),
    (BASE + '[[outputs]]\ntype = "file"\nbrokers = "a:1"\n',
     "agent.toml:12: outputs[1].brokers: not a key of a file output (kafka only)"),
    (BASE + '[[outputs]]\ntype = "kafka"\nbrokers = "localhost"\n',
     "agent.toml:12: outputs[1].brokers: 'localhost' in 'localhost' is not host:port"),
    (BASE + '[[outputs]]\ntype = "file"\ntenants = ["acme", "globex"]\n',
     "agent.toml:12: outputs[1].tenants[1]: 'globex' is not a configured tenant"),
    (BASE.replace('api_key_env = "ACME_KEY"', 'api_key_env = "ACME_KEY"\napi_key_file = "/k"'),
     "agent.toml:7: tenants[0].api_key_file: give api_key_env or api_key_file, not both"),
    (BASE.replace('api_key_env = "ACME_KEY"\n', '') + '[[outputs]]\ntype = "http"\nurl = "https://x/in"\n',
     "agent.toml:9: outputs[1]: http output 'http-1' serves tenant 'acme', which has no api_key_env or api_key_file"),
    (BASE + '[[outputs]]\ntype = "file"\nname = "file-0"\n',
     "agent.toml:12: outputs[1].name: 'file-0' is already the name of outputs[0]"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["cpu", "gpu"]'),
     "agent.toml:6: tenants[0].collectors[1]: 'gpu' is not a collector; known: "
     "cpu, memory, disk, network, connections, processes, health, agent (did you mean 'cpu'?)"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["cpu", "cpu"]'),
     "agent.toml:6: tenants[0].collectors[1]: 'cpu' is listed twice (also at [0])"),
    (BASE.replace('id = "acme"', 'id = "acme"\ntags = { team = 5 }'),
     "agent.toml:6: tenants[0].tags.team: expected a string, got an integer 5"),
    (BASE.replace('id = "acme"', 'id = "acme"\ntags = { team = "a", "bad key" = "b" }'),
     "agent.toml:6: tenants[0].tags.\"bad key\": 'bad key' is not a valid name (expected ^[A-Za-z_][A-Za-z0-9_.-]{0,127}$)"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["health"]'),
     "agent.toml:6: tenants[0].collectors: the health collector needs at least one [[tenants.health]] check"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["health"]') +
     '[[tenants.health]]\nname = "api"\nurl = "http://127.0.0.1/h"\ntcp = "127.0.0.1:1"\n',
     "agent.toml:14: tenants[0].health[0].tcp: give one of url, tcp, process, not url and tcp"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["health"]') +
     '[[tenants.health]]\nname = "api"\ntcp = "127.0.0.1:1"\nexpect_status = 200\n',
     "agent.toml:14: tenants[0].health[0].expect_status: applies to url checks only"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["health"]') +
     '[[tenants.health]]\nname = "api"\ntcp = "127.0.0.1:1"\n[[tenants.health]]\nname = "api"\nprocess = "x"\n',
     "agent.toml:15: tenants[0].health[1].name: 'api' is already the name of tenants[0].health[0]"),
    (BASE + '[tenants.processes]\ntop = 3\n',
     "agent.toml:10: tenants[0].processes: [tenants.processes] is configured but 'processes' is not in this tenant's collectors"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["processes"]') +
     '[tenants.processes]\ncmdline = "bad("\n',
     "agent.toml:12: tenants[0].processes.cmdline: 'bad(' is not a valid regular expression: "
     "missing ), unterminated subpattern at position 3"),
    (BASE.replace('id = "acme"', 'id = "acme"\ncollectors = ["health"]') +
     '[[tenants.health]]\nname = "db"\ntcp = "127.0.0.1:1"\ninsecure = false\n',
     "agent.toml:14: tenants[0].health[0].insecure: applies to url checks only"),
    (BASE + '[tenants.spool]\nmax_mb = 0\n',
     "agent.toml:11: tenants[0].spool.max_mb: 0 is below the minimum 1"),
    (BASE + '[tenants.spool]\nencrypt = "yes"\n',
     "agent.toml:11: tenants[0].spool.encrypt: expected true or false, got a string \"yes\""),
    ("[agent.spool]\nfsync = \"sometimes\"\n" + BASE.replace("[agent]\n", "[agent]\n", 1),
     'agent.toml:2: agent.spool.fsync: expected "batch" or a duration such as "1s", got "sometimes"'),
    (BASE + '[agent.collect]\njitter = 0.7\n',
     "agent.toml:11: agent.collect.jitter: 0.7 is above the maximum 0.5"),
    (BASE.replace("[agent]", "[agent]\nlimits.memory_mb = 1.5"),
     "agent.toml:2: agent.limits.memory_mb: expected an integer, got a float 1.5"),
    (BASE + '[[outputs]]\ntype = "kafka"\nbrokers = "a:1"\n[outputs.options]\n"enable.idempotence" = false\n',
     "agent.toml:14: outputs[1].options.\"enable.idempotence\": ingress producers are always idempotent"),
    (BASE + '[[outputs]]\ntype = "kafka"\nbrokers = "a:1"\noptions = { acks = "1" }\n',
     "agent.toml:13: outputs[1].options.acks: ingress producers always use acks=all"),
    (BASE + '[[outputs]]\ntype = "kafka"\nbrokers = "a:1"\ntopic = "metrics/{tenant}"\n',
     "agent.toml:13: outputs[1].topic: 'metrics/{tenant}' is not a valid Kafka topic "
     "(letters, digits, '.', '_', '-'; '{tenant}' expands)"),
    (BASE + '[[outputs]]\ntype = "http"\nurl = "https://x/in"\nheaders = { Authorization = "x" }\n',
     "agent.toml:13: outputs[1].headers.Authorization: set by ingress; cannot be overridden"),
    (BASE + '[[outputs]]\ntype = "http"\nurl = "https://x/in"\ncert_file = "/c.pem"\n',
     "agent.toml:10: outputs[1].key_file: cert_file and key_file go together"),
    (BASE + '[[outputs]]\ntype = "http"\nurl = "ftp://x/in"\n',
     "agent.toml:12: outputs[1].url: 'ftp://x/in' is not an http:// or https:// URL"),
    (BASE + '[outputs.retry]\nbackoff_initial = "2m"\n',
     "agent.toml:11: outputs[0].retry.backoff_initial: is longer than backoff_max"),
    (BASE + '[control]\nlisten = "8787"\n',
     "agent.toml:11: control.listen: '8787' is not host:port (e.g. \"127.0.0.1:8787\")"),
    ('[agent.collect]\nmin_interval = "10s"\nmax_interval = "5s"\n' + BASE.replace('[agent]\ninterval = "10s"\n', ""),
     "agent.toml:2: agent.collect.min_interval: 10s is longer than agent.collect.max_interval (5s)"),
    (BASE.replace('[[outputs]]\ntype = "file"\n', ''),
     "agent.toml: outputs: at least one [[outputs]] table is required"),
    ('[[outputs]]\ntype = "file"\n', "agent.toml: tenants: at least one [[tenants]] table is required"),
    (BASE.replace('type = "file"\n', 'type = "file"\ntenants = ["acme"]\n') + '[[tenants]]\nid = "globex"\n',
     "agent.toml:12: tenants[1].id: tenant 'globex' is served by no output; its samples would never leave the host"),
    (BASE.replace('[[tenants]]\nid = "acme"', '[tenants]\nid = "acme"'),
     "agent.toml:4: tenants: expected an array of tables [[tenants]], got a table (write [[tenants]])"),
    ("[agent\n", "agent.toml:1: invalid TOML: Expected ']' at the end of a table declaration (column 7)"),
    (BASE + 'x = [1,\n', "agent.toml:10: invalid TOML: Invalid value (at end of document)"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ", 1)[1][:60] for _, m in BAD])
def test_bad_configs_name_file_line_key(text, message):
    with pytest.raises(ConfigError) as e:
        loads(text, "agent.toml")
    assert str(e.value) == message


def test_base_is_valid_and_defaults_apply():
    s = loads(BASE, "agent.toml")
    t = s.tenants[0]
    assert (t.id, t.enabled, t.collectors, t.include, t.exclude) == ("acme", True, ("cpu", "memory"), ("*",), ())
    assert t.interval_s == 10.0 and t.max_series == 10000 and dict(t.tags) == {}
    assert (t.spool.max_mb, t.spool.retention_s, t.spool.encrypt) == (256, 86400.0, False)
    assert dict(t.collector_tables) == {}  # neither cpu nor memory takes options
    a = s.agent
    assert a.data_dir == Path("./ingress-data") and a.shutdown_timeout_s == 10.0
    assert (a.limits.memory_mb, a.limits.cpu_percent, a.limits.disk_write_mb_s, a.limits.ring_mb) == (256, 5.0, 20.0, 32)
    assert (a.batch.max_samples, a.batch.max_bytes, a.batch.max_delay_s) == (50000, 1 << 20, 1.0)
    assert (a.spool.fsync, a.spool.segment_mb) == ("batch", 8)
    assert (a.collect.min_interval_s, a.collect.max_interval_s, a.collect.jitter) == (1.0, 300.0, 0.1)
    assert a.hostname  # the system's
    assert s.control.listen == "127.0.0.1:8787" and s.control.port == 8787
    o = s.outputs[0]
    assert (o.type, o.name, o.tenants, o.format, o.path, o.max_mb) == (
        "file", "file-0", None, "batch", Path("./ingress-data/out"), 64)
    assert (o.retry.backoff_initial_s, o.retry.backoff_max_s, o.breaker.failures, o.breaker.reset_s) == (0.5, 60.0, 5, 30.0)


def test_full_contract_example_loads():
    text = cfg("""\
        [agent]
        data_dir = "/var/lib/ingress"
        hostname = "web-1"
        interval = "10s"
        shutdown_timeout = "10s"

        [agent.limits]
        memory_mb = 256
        cpu_percent = 5.0
        disk_write_mb_s = 20

        [control]
        listen = "127.0.0.1:8787"

        [[tenants]]
        id = "acme"
        collectors = ["cpu", "memory", "disk", "network", "connections", "processes", "health"]
        include = ["*"]
        exclude = []
        interval = "5s"
        tags = { team = "infra" }
        api_key_env = "ACME_INGEST_KEY"

        [tenants.processes]
        match = ["nginx*", "postgres"]
        top = 20

        [[tenants.health]]
        name = "api"
        url = "http://127.0.0.1:8080/health"

        [[tenants.health]]
        name = "db"
        tcp = "127.0.0.1:5432"

        [tenants.spool]
        max_mb = 256
        retention = "24h"
        encrypt = true

        [[outputs]]
        type = "kafka"
        brokers = "127.0.0.1:9092"
        topic = "ingress.{tenant}"
        tenants = ["acme"]
        format = "batch"
        [outputs.options]
        "linger.ms" = 50

        [[outputs]]
        type = "http"
        url = "https://sink.example/v1/batches"
        timeout = "3s"
        [outputs.headers]
        X-Region = "eu"
        """)
    s = loads(text, "full.toml")
    t = s.tenants[0]
    assert t.interval_s == 5.0 and dict(t.tags) == {"team": "infra"} and t.api_key_env == "ACME_INGEST_KEY"
    p = t.collector_tables["processes"]
    assert p["match"] == ("nginx*", "postgres") and p["top"] == 20
    assert [(h["name"], h["url"] or h["tcp"], h["timeout"]) for h in t.collector_tables["health"]] == [
        ("api", "http://127.0.0.1:8080/health", 2.0), ("db", "127.0.0.1:5432", 2.0)]
    assert t.spool.encrypt is True
    k, h = s.outputs
    assert (k.name, k.topic, k.tenants, dict(k.options)) == (
        "kafka-0", "ingress.{tenant}", ("acme",), {"linger.ms": 50})
    assert (h.name, h.timeout_s, h.verify, dict(h.headers)) == ("http-1", 3.0, True, {"X-Region": "eu"})
    assert s.agent.hostname == "web-1" and s.agent.limits.disk_write_mb_s == 20.0


def test_settings_are_frozen():
    s = loads(BASE)
    with pytest.raises(AttributeError):
        s.agent.interval_s = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.tenants[0].tags["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("10s", 10.0), ("1.5s", 1.5), ("5m", 300.0), ("24h", 86400.0), ("1m30s", 90.0),
    ("1h0m5s", 3605.0), ("0s", 0.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10", "s", "10 s", "-1s", "1d", "1s2", "1.s", 10, 1.5, True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_embedded_default_loads():
    s = config.default_settings()
    assert [t.id for t in s.tenants] == ["default"]
    assert s.tenants[0].collectors == ("cpu", "memory")
    assert [o.type for o in s.outputs] == ["file"]
    assert s.agent.data_dir == Path("./ingress-data")
    assert s.source == "<embedded default.toml>"
    # shipped inside the installed package, next to config.py
    assert (Path(config.__file__).parent / "default.toml").is_file()


def test_load_reads_file_and_names_it(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text(BASE + '[[tenants]]\nid = "Acme!"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{p}:11: tenants[1].id: 'Acme!'")):
        config.load(p)
    p.write_bytes(b'[agent]\nhostname = "\xff"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{p}:2: not UTF-8 text")):
        config.load(p)
    with pytest.raises(OSError):
        config.load(tmp_path / "missing.toml")


def test_disabled_tenant_and_output_name_and_file_path():
    s = loads(BASE.replace('id = "acme"', 'id = "acme"\nenabled = false')
              + '[[outputs]]\ntype = "file"\nname = "archive"\npath = "/tmp/x"\n')
    assert s.tenants[0].enabled is False
    assert [(o.name, o.path) for o in s.outputs] == [("file-0", Path("ingress-data/out")), ("archive", Path("/tmp/x"))]


# --------------------------------------------------------------------------- locator

LOC = cfg("""\
    # comment [[tenants]]
    [agent]
    interval = "10s"   # [not.a.table]
    limits.memory_mb = 5
    note = '''
    id = "not a key"
    [[tenants]]
    '''

    [[tenants]]
    id = "a"
    tags = { team = "x", "odd key" = "y" }
    include = [
      "x = 1",
      "[[tenants]]",
    ]
    [tenants.processes]
    top = 1
    [[tenants.health]]
    name = "h0"
    [[tenants.health]]
    name = "h1"

    [[tenants]]
    id = "b"
    [[tenants.health]]
    name = "b0"
    [[outputs]]
    type = "file"
    [outputs.retry]
    backoff_max = "1s"
    """)


@pytest.mark.parametrize("path,line", [
    (("agent",), 2),
    (("agent", "interval"), 3),
    (("agent", "limits", "memory_mb"), 4),
    (("agent", "note"), 5),
    (("tenants", 0), 10),
    (("tenants", 0, "id"), 11),
    (("tenants", 0, "tags", "team"), 12),
    (("tenants", 0, "tags", "odd key"), 12),
    (("tenants", 0, "include", 1), 13),
    (("tenants", 0, "processes", "top"), 18),
    (("tenants", 0, "health", 1, "name"), 22),
    (("tenants", 1, "id"), 25),
    (("tenants", 1, "health", 0, "name"), 27),
    (("tenants", 1, "health", 0, "url"), 26),
    (("outputs", 0, "retry", "backoff_max"), 31),
    (("control", "listen"), None),
])
def test_locator(path, line):
    assert Locator(LOC).line(path) == line


# --------------------------------------------------------------------------- docs

def _doc_keys(md: str) -> set[str]:
    keys, section = set(), None
    for line in md.splitlines():
        m = re.match(r"^### `\[\[?([a-z.]+)\]\]?`", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^\| `([a-z_]+)` \|", line)
        if m and section:
            keys.add(f"{section}.{m.group(1)}")
    return keys


def test_docs_list_every_key_and_nothing_else():
    md = (DOCS / "configuration.md").read_text()
    assert _doc_keys(md) == {o.name for _, rows, _ in config.all_tables() for o in rows}


def test_docs_reference_is_generated_from_the_table():
    md = (DOCS / "configuration.md").read_text()
    m = re.search(r"<!-- BEGIN reference.*?-->\n(.*?)<!-- END reference -->", md, re.S)
    assert m, "docs/configuration.md lost its generated reference markers"
    assert m.group(1) == config.reference_markdown(), \
        "docs/configuration.md is stale: regenerate with `python -m ingress.config`"


def test_every_default_in_the_table_is_valid():
    for o in (o for _, rows, _ in config.all_tables() for o in rows):
        if o.default not in (config.REQUIRED, config.COMPUTED, None):
            o.kind.convert(o.default)
