"""End to end: agent -> HTTP -> sink and agent -> Tansu -> sink --from-kafka, both into embedded stores.

One run of real processes goes through every fault of the path and a tenant
switch, with data flowing all along (one scenario: each process start-up
costs seconds, and every step builds on the data of the one before):

1. three tenants with different collectors, tags and credentials;
2. both sinks SIGKILLed mid-stream and restarted on the same stores;
3. the broker paused (SIGSTOP) while the agent keeps collecting, then resumed;
4. the agent SIGKILLed mid-stream and restarted on the same spool (it replays);
5. a reload (SIGHUP) that adds a tenant, removes one and changes one's collectors;
6. a second reload whose rules match nothing: the outputs hand over all that
   is spooled (the agent's /metrics shows nothing pending), then a graceful stop.

The witness of what the agent accepted is a third output, ``file``: every
spooled batch reaches it at least once, so its distinct batches are the
spooled batches. Afterwards, per tenant and per store: the stored batch ids
are the witness's, the rows are its samples (no loss, no duplicate), every
row carries its tenant's tag and the agent's host. The agent's own counts:
the run that stopped gracefully printed ``spooled``, which equals the
witness's samples collected in that run; the killed run's count read from
/metrics just before the kill is a lower bound of what it left. No topic,
key, header or file of one tenant carries another tenant's data, and the
stored data follows each change of the reload from the time it applied.
"""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from ingress import wire
from ingress.outputs.file import read_batches

from integration.conftest import Tansu, TopicReader, free_port
from sink_store.procs import dump_store, kill, metric, start_sinks, stop, stored, wait_consumed, wait_for

pytestmark = pytest.mark.integration

# tenant: (collectors, team, sink key)
TENANTS = {"acme": (["cpu", "memory"], "infra", "ka"), "globex": (["memory"], "ops", "kg"),
           "initech": (["cpu"], "lab", "ki"), "hooli": (["cpu"], "dev", "kh")}
BEFORE = {"acme": ["cpu", "memory"], "globex": ["memory"], "initech": ["cpu"]}
AFTER = {"acme": ["cpu", "memory"], "initech": ["memory"], "hooli": ["cpu"]}  # -globex +hooli, initech changed
INTERVAL_NS = 200 * 10**6
HOST = "e2e-host"


def _config(tmp_path, tenants, http_port, bootstrap, topic, control_port, include='["*"]'):
    ts = "".join(f"""
[[tenants]]
id = "{t}"
collectors = {json.dumps(c)}
include = {include}
tags = {{ team = "{TENANTS[t][1]}" }}
api_key_env = "E2E_KEY_{t.upper()}"
""" for t, c in tenants.items())
    return f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "{HOST}"
interval = "200ms"
shutdown_timeout = "30s"

[agent.collect]
min_interval = "100ms"

[agent.batch]
max_delay = "1s"  # fewer, larger batches: the embedded store's cost is per batch

[control]
listen = "127.0.0.1:{control_port}"
{ts}
[[outputs]]
type = "http"
name = "web"
url = "http://127.0.0.1:{http_port}/"
[outputs.retry]
backoff_initial = "50ms"
backoff_max = "500ms"

[[outputs]]
type = "kafka"
name = "bus"
brokers = "{bootstrap}"
topic = "{topic}.{{tenant}}"

[[outputs]]
type = "file"
name = "witness"
"""


def _events(log):
    out = []
    for line in Path(log).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _ns(iso):
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)


def _agent_counter(port, name):
    """{tenant: value} of one of the agent's /metrics counters."""
    return {k.split('tenant="')[1].split('"')[0]: v for k, v in metric(port, name).items() if 'tenant="' in k}


def _witness(data_dir):
    """{tenant: {batch id: (samples, last ts)}} from the file output; checks no file holds another tenant."""
    out = {}
    for d in sorted((data_dir / "out").iterdir()):
        for f in sorted(d.glob("*.ibatch")):
            for b in read_batches(f, strict=True):
                h = wire.peek(b)
                assert h.tenant == d.name and h.host == HOST, (f, h.tenant, h.host)
                out.setdefault(d.name, {})[h.batch_id.hex()] = (h.sample_count, int(wire.decode(b).timestamps.max()))
    return out


def test_faults_and_tenant_switching_keep_spooled_equal_to_stored(tmp_path):
    broker = Tansu(tmp_path).start()
    topic = f"e2e{os.urandom(3).hex()}"
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"tenants": {t: k for t, (_, _, k) in TENANTS.items()}}))
    http_port, control = free_port(), free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_config(tmp_path, BEFORE, http_port, broker.bootstrap, topic, control))
    env = dict(os.environ, **{f"E2E_KEY_{t.upper()}": k for t, (_, _, k) in TENANTS.items()})
    store_h, store_k = tmp_path / "store-http", tmp_path / "store-kafka"
    group = f"g-{topic}"
    kafka_args = ("--from-kafka", broker.bootstrap, "--topic", f"^{topic}\\..*", "--group", group)
    sinks, agent = [], None

    def both_sinks():
        return start_sinks((store_h, ("--keys", str(keys)), http_port), (store_k, kafka_args, 0))

    def start_agent(name):
        with open(tmp_path / name, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "ingress", "run", "-c", str(cfg)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)

    def alive(what):
        assert agent.poll() is None, (what, (tmp_path / agent_log).read_text()[-3000:])
        return True

    def grows(port, by, tenant=None):
        def now():
            if tenant is None:
                return stored(port)
            return sum(v for k, v in metric(port, "ingress_sink_samples_stored_total").items() if f'"{tenant}"' in k)
        base = now()
        return lambda: alive("sink") and now() >= base + by

    def spooled_grows(by):
        base = sum(_agent_counter(control, "ingress_batches_spooled_total").values())
        return lambda: alive("agent") and sum(_agent_counter(control, "ingress_batches_spooled_total").values()) >= base + by

    try:
        # Every tenant's topic exists before the Kafka sink subscribes (the test is about the agent's
        # switch, not the consumer group's discovery of a new topic, which takes a rebalance).
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        fs = admin.create_topics(
            [NewTopic(f"{topic}.{t}", num_partitions=4, replication_factor=1) for t in TENANTS])
        for f in fs.values():
            f.result(30)
        del admin, fs
        sinks = both_sinks()
        agent_log = "run1.log"
        agent = start_agent(agent_log)
        wait_for(lambda: alive("start") and all(stored(p) > 0 for _, p in sinks), 90, "first rows in both sinks")

        # 2. Both sinks die mid-stream; the agent keeps collecting (HTTP retries, Kafka buffers).
        kill(p for p, _ in sinks)
        wait_for(spooled_grows(6), 30, "batches spooled while the sinks are down")
        sinks = both_sinks()
        wait_for(lambda: alive("sinks back") and all(stored(p) > 0 for _, p in sinks), 90, "sinks back")

        # 3. The broker stops answering; HTTP delivery goes on, the agent keeps collecting.
        broker.pause()
        try:
            wait_for(grows(sinks[0][1], 30), 30, "HTTP delivery while the broker is paused")
            wait_for(spooled_grows(9), 30, "batches spooled while the broker is paused")
        finally:
            broker.resume()
        wait_for(grows(sinks[1][1], 30), 90, "Kafka delivery after the broker resumed")

        # 4. The agent dies mid-stream; what its spool holds is replayed by the next run.
        at_least = _agent_counter(control, "ingress_samples_spooled_total")
        os.kill(agent.pid, signal.SIGKILL)
        assert agent.wait(10) == -signal.SIGKILL
        killed_ns = time.time_ns()
        assert set(at_least) == set(BEFORE) and all(at_least.values()), at_least
        agent_log = "run2.log"
        agent = start_agent(agent_log)
        # Signals before its handlers are set would kill it: wait for its "started" line.
        wait_for(lambda: alive("restart") and any(e.get("msg") == "started" for e in _events(tmp_path / agent_log)),
                 60, "the restarted agent's started line")
        conds = [grows(p, 30) for _, p in sinks]
        wait_for(lambda: all(c() for c in conds), 60, "delivery after the agent's restart")

        # 5. Tenant switching with data flowing: -globex, +hooli, initech cpu -> memory.
        cfg.write_text(_config(tmp_path, AFTER, http_port, broker.bootstrap, topic, control))
        hup_ns = time.time_ns()
        agent.send_signal(signal.SIGHUP)
        wait_for(lambda: alive("reload") and any(e.get("logger") == "ingress.reload" for e in _events(tmp_path / agent_log)),
                 60, "reload line")
        r = next(e for e in _events(tmp_path / agent_log) if e.get("logger") == "ingress.reload")
        assert r["msg"] == "configuration reloaded", r
        assert (r["tenants_added"], r["tenants_removed"]) == (["hooli"], ["globex"]), r
        assert "collectors" in r["tenants_changed"]["initech"], r
        applied_ns = _ns(r["ts"])
        wait_for(lambda: alive("after reload") and any(
            'tenant="hooli"' in k for k in metric(sinks[0][1], "ingress_sink_samples_stored_total")),
            60, "the added tenant's rows over HTTP")
        wait_for(grows(sinks[0][1], 30, "initech"), 60, "the changed tenant's rows over HTTP")

        # 6. Collection goes quiet (a second reload whose rules match nothing), the outputs hand over
        # everything spooled, and the agent stops: its stop has nothing left to deliver.
        cfg.write_text(_config(tmp_path, AFTER, http_port, broker.bootstrap, topic, control, '["quiet.none"]'))
        agent.send_signal(signal.SIGHUP)
        wait_for(lambda: alive("quiet") and len([e for e in _events(tmp_path / agent_log)
                                                 if e.get("logger") == "ingress.reload"]) == 2, 60, "second reload")
        wait_for(lambda: alive("drain") and (lambda p: p and not any(p.values()))(
            _agent_counter(control, "ingress_spool_pending_samples")), 240, "the spool handed over")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(90) == 0, (tmp_path / agent_log).read_text()[-3000:]
        stopped = [e for e in _events(tmp_path / agent_log) if e.get("msg") == "stopped"]
        assert len(stopped) == 1, stopped
        spooled = stopped[0]["spooled"]
        # The operator's view agrees, the removed tenant's spool included: nothing pending.
        st = subprocess.run([sys.executable, "-m", "ingress", "spool", "stats", "-c", str(cfg), "--json"],
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stderr
        assert {t: v["samples_pending"] for t, v in json.loads(st.stdout).items()} == dict.fromkeys(TENANTS, 0)
        wait_consumed(broker.bootstrap, group, f"{topic}.")
        assert stop(p for p, _ in sinks) == [0, 0]
        sinks = []

        # What leaves the host: each tenant's topic, key and headers carry that tenant's batches only.
        witness = _witness(tmp_path / "data")
        assert set(witness) == set(TENANTS), witness.keys()
        reader = TopicReader(broker.bootstrap)
        try:
            reader.assign([f"{topic}.{t}" for t in TENANTS])
            want, seen = sum(len(w) for w in witness.values()), set()

            def complete(m):
                seen.update(wire.peek(x.value()).batch_id for x in m[complete.n:])
                complete.n = len(m)
                return len(seen) >= want
            complete.n = 0
            msgs = reader.read(complete, timeout=60)
        finally:
            reader.close()
        on_topic = {}
        for m in msgs:
            h, hd = wire.peek(m.value()), {k: v.decode() for k, v in m.headers()}
            t = m.topic().rsplit(".", 1)[1]
            assert (m.key().decode(), hd["tenant-id"], h.tenant) == (t, t, t), (m.topic(), hd)
            assert (hd["batch-id"], hd["sample-count"], hd["host"]) == (h.batch_id.hex(), str(h.sample_count), HOST)
            on_topic.setdefault(t, set()).add(h.batch_id.hex())
        assert on_topic == {t: set(w) for t, w in witness.items()}, "the topics hold other batches than the spool"
    finally:
        kill([agent] if agent is not None else [])
        kill(p for p, _ in sinks)
        broker.stop()

    # The agent's own counts: exact for the runs that stopped, a lower bound for the killed one.
    run1 = {t: sum(n for n, last in w.values() if last < killed_ns) for t, w in witness.items()}
    later = {t: sum(n for n, last in w.values() if last > killed_ns) for t, w in witness.items()}
    assert {t: n for t, n in later.items() if n} == {t: n for t, n in spooled.items() if n}, (later, spooled)
    assert all(run1[t] >= n for t, n in at_least.items()), (run1, at_least)

    for store in (store_h, store_k):
        got = dump_store(store)
        assert got["dups"] == 0, (store.name, got["dups"])
        ids = {}
        for b in got["batches"]:
            ids.setdefault(b["tenant"], {})[b["id"]] = int(b["n"])
        assert ids == {t: {i: n for i, (n, _) in w.items()} for t, w in witness.items()}, store.name
        rows = {}
        for x in got["names"]:
            rows[x["tenant"]] = rows.get(x["tenant"], 0) + x["n"]
            assert x["teams"] == [TENANTS[x["tenant"]][1]] and x["hosts"] == [HOST], (store.name, x)
        assert rows == {t: sum(n for n, _ in w.values()) for t, w in witness.items()}, (store.name, rows)

        # The reload, from the time it applied (one interval of slack for a cycle already running).
        span = {}  # (tenant, collector): first and last ts over its metric names
        for x in got["names"]:
            k = (x["tenant"], x["name"].split(".")[0])
            lo, hi = span.get(k, (x["t0"], x["t1"]))
            span[k] = (min(lo, x["t0"]), max(hi, x["t1"]))
        assert span[("globex", "memory")][1] <= applied_ns + INTERVAL_NS, store.name  # removed: nothing after
        assert span[("hooli", "cpu")][0] >= hup_ns, store.name  # added: nothing before
        assert span[("initech", "cpu")][1] <= applied_ns + INTERVAL_NS, store.name  # changed: old names stop
        assert span[("initech", "memory")][0] >= hup_ns, store.name  # ... and the new ones start
        assert ("hooli", "memory") not in span and ("globex", "cpu") not in span, store.name
        assert span[("acme", "cpu")][1] > applied_ns and span[("acme", "memory")][1] > applied_ns, store.name
