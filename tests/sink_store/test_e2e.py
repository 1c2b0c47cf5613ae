"""End to end: agent -> HTTP -> sink and agent -> Tansu -> sink --from-kafka, both into embedded stores.

Three tenants with different collectors, tags and credentials. Both sinks are
SIGKILLed mid-stream and restarted on the same stores. Afterwards, per tenant,
the samples the agent counts as spooled (its "stopped" line) equal the rows
in each store: no loss, no duplicate; every row has its tenant's tags and no
row of one tenant is stored under another.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from integration.conftest import Tansu, free_port
from sink_store.test_kafka_input import _stored, _wait_quiet

pytestmark = pytest.mark.integration

TENANTS = {"acme": (["cpu", "memory"], "infra", "ka"), "globex": (["memory"], "ops", "kg"),
           "initech": (["cpu"], "lab", "ki")}

_COUNT = """
import json, sys
from ingress.sink_store import open_store
s = open_store(sys.argv[1])
rows = s.rows("SELECT tenant, count() AS n, groupUniqArray(tags['team']) AS teams, groupUniqArray(host) AS hosts "
              "FROM `ingress`.samples GROUP BY tenant", {})
dup = s.rows("SELECT count() AS n FROM (SELECT tenant, name, series, ts, count() AS c FROM `ingress`.samples "
             "GROUP BY tenant, name, series, ts HAVING c > 1)", {})
print(json.dumps({"rows": rows, "dups": int(dup[0]["n"])}))
s.close()
"""


def _sink(store, port, *extra):
    p = subprocess.Popen([sys.executable, "-m", "ingress", "sink", "--listen", f"127.0.0.1:{port}", "--store",
                          str(store), *extra], stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line + p.stderr.read()
    return p, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def _count(store):
    r = subprocess.run([sys.executable, "-c", _COUNT, str(store)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_agent_to_both_sinks_with_sink_kills_keeps_spooled_equal_to_stored(tmp_path):
    broker = Tansu(tmp_path).start()
    topic = f"e2e{os.urandom(3).hex()}"
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"tenants": {t: k for t, (_, _, k) in TENANTS.items()}}))
    http_port = free_port()
    tenants = "".join(f"""
[[tenants]]
id = "{t}"
collectors = {json.dumps(c)}
tags = {{ team = "{team}" }}
api_key_env = "E2E_KEY_{t.upper()}"
""" for t, (c, team, _) in TENANTS.items())
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "e2e-host"
interval = "200ms"
shutdown_timeout = "30s"

[agent.collect]
min_interval = "100ms"

[agent.batch]
max_delay = "200ms"

[control]
listen = "127.0.0.1:{free_port()}"
{tenants}
[[outputs]]
type = "http"
url = "http://127.0.0.1:{http_port}/"
[outputs.retry]
backoff_initial = "50ms"
backoff_max = "500ms"

[[outputs]]
type = "kafka"
brokers = "{broker.bootstrap}"
topic = "{topic}.{{tenant}}"
""")
    env = dict(os.environ, **{f"E2E_KEY_{t.upper()}": k for t, (_, _, k) in TENANTS.items()})
    store_h, store_k = tmp_path / "store-http", tmp_path / "store-kafka"
    kafka_args = ("--from-kafka", broker.bootstrap, "--topic", f"^{topic}\\..*", "--group", f"g-{topic}")
    sinks, agent = [], None
    try:
        sinks = [_sink(store_h, http_port, "--keys", str(keys)), _sink(store_k, 0, *kafka_args)]
        agent = subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 90
        while time.monotonic() < end and not all(_stored(port) > 0 for _, port in sinks):
            assert agent.poll() is None, agent.stderr.read()
            time.sleep(0.5)
        assert all(_stored(port) > 0 for _, port in sinks), "nothing stored before the kill"
        for p, _ in sinks:  # both sinks die mid-stream
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        time.sleep(2)  # the agent keeps collecting; its HTTP output retries, Kafka buffers
        sinks = [_sink(store_h, http_port, "--keys", str(keys)), _sink(store_k, 0, *kafka_args)]
        time.sleep(3)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=90)
        assert agent.returncode == 0, err[-3000:]
        stopped = [json.loads(x) for x in err.splitlines() if '"stopped"' in x]
        assert stopped, err[-3000:]
        spooled = stopped[-1]["spooled"]
        assert set(spooled) == set(TENANTS) and all(spooled.values()), spooled
        # What the graceful stop could not hand over in time stays spooled (never lost): further
        # short runs deliver it; their own samples count as spooled too.
        for _ in range(4):
            pending = subprocess.run([sys.executable, "-m", "ingress", "spool", "stats", "-c", str(cfg), "--json"],
                                     capture_output=True, text=True, timeout=60)
            left = {t: v["samples_pending"] for t, v in json.loads(pending.stdout).items()}
            if not any(left.values()):
                break
            r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "3"],
                               env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-3000:]
            more = [json.loads(x) for x in r.stderr.splitlines() if '"stopped"' in x][-1]["spooled"]
            spooled = {t: spooled[t] + more.get(t, 0) for t in spooled}
        assert not any(left.values()), left
        _wait_quiet(sinks, quiet_s=8.0, limit_s=150.0)
        for p, _ in sinks:
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0
        sinks = []
        for store in (store_h, store_k):
            got = _count(store)
            by_tenant = {r["tenant"]: r for r in got["rows"]}
            assert got["dups"] == 0, (store.name, got)
            assert {t: int(r["n"]) for t, r in by_tenant.items()} == spooled, (store.name, got, spooled)
            for t, (_, team, _) in TENANTS.items():
                assert by_tenant[t]["teams"] == [team] and by_tenant[t]["hosts"] == ["e2e-host"], (store.name, t)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(10)
        for p, _ in sinks:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        broker.stop()
