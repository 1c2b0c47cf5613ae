"""``ingress sink --from-kafka``: two sinks in one consumer group on a real Tansu broker.

Tansu's group subscribe takes ~20 s to settle (shared/facts.md), so one test
covers sharing, header checks, both schemas and a SIGKILL of a sink mid-stream.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ingress import wire
from ingress.sink_store.kafka_input import KafkaInput, _Refuse

from integration.conftest import Tansu
from sink_store.conftest import make_batch, run_cli

pytestmark = pytest.mark.integration

TENANTS = ("acme", "zeta", "umbra")


def _sink(tmp_path, name, bootstrap, topic, group):
    p = subprocess.Popen([sys.executable, "-m", "ingress", "sink", "--listen", "127.0.0.1:0", "--store",
                          str(tmp_path / name), "--from-kafka", bootstrap, "--topic", topic, "--group", group],
                         stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line + p.stderr.read()
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    return p, port


def _metric(port, name):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    except OSError:
        return {}
    out = {}
    for m in re.finditer(rf'^{name}{{([^}}]*)}} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def _stored(port):
    return sum(_metric(port, "ingress_sink_samples_stored_total").values())


def _rows(store, tenant):
    r = run_cli("sink", "query", "--store", str(store), "--tenant", tenant, "--metric", "cpu.user")
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]


def test_two_sinks_share_the_partitions_refuse_mismatches_and_survive_a_kill(tmp_path):
    from confluent_kafka import Producer

    broker = Tansu(tmp_path).start()
    procs = []
    try:
        base = f"ik-{os.urandom(3).hex()}"
        prod = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all"})
        sent = {t: 0 for t in TENANTS}
        seq = [0]

        def produce(n_each):
            for i in range(n_each):
                for t in TENANTS:
                    b = make_batch(t, n=5, t0=time.time_ns() + seq[0])
                    seq[0] += 1
                    prod.produce(f"{base}.{t}", value=b, key=t, partition=i % 4, headers=[
                        ("tenant-id", t), ("batch-id", wire.peek(b).batch_id.hex()),
                        ("schema", "ingress-batch/1"), ("host", "web-1"), ("sample-count", "5")])
                    sent[t] += 5
            assert prod.flush(30) == 0

        produce(8)
        # Refused, never stored: a zeta header on an acme batch, garbage, an unknown schema.
        bad = make_batch("acme", n=5)
        prod.produce(f"{base}.zeta", value=bad, key="zeta", partition=0,
                     headers=[("tenant-id", "zeta"), ("schema", "ingress-batch/1")])
        prod.produce(f"{base}.acme", value=b"\x00garbage", key="acme", partition=1,
                     headers=[("tenant-id", "acme"), ("schema", "ingress-batch/1")])
        prod.produce(f"{base}.acme", value=b"{}", key="acme", partition=2,
                     headers=[("tenant-id", "acme"), ("schema", "avro/9")])
        # One sample in the json schema.
        js = {"tenant": "umbra", "name": "cpu.user", "tags": {"cpu": "0"}, "ts": time.time_ns(), "value": 9.0,
              "host": "web-1", "batch_id": "ab" * 16}
        prod.produce(f"{base}.umbra", value=json.dumps(js).encode(), key="umbra", partition=3,
                     headers=[("tenant-id", "umbra"), ("batch-id", "ab" * 16), ("schema", "ingress-json/1")])
        assert prod.flush(30) == 0
        sent["umbra"] += 1

        topic, group = f"^{base}\\..*", f"g-{base}"
        procs = [_sink(tmp_path, "s1", broker.bootstrap, topic, group),
                 _sink(tmp_path, "s2", broker.bootstrap, topic, group)]
        total = sum(sent.values())
        end = time.monotonic() + 120
        while time.monotonic() < end and sum(_stored(port) for _, port in procs) < total // 3:
            time.sleep(0.5)
        # SIGKILL one sink mid-stream and restart it; keep producing meanwhile.
        victim, _ = procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        produce(4)
        total = sum(sent.values())
        procs[0] = _sink(tmp_path, "s1", broker.bootstrap, topic, group)
        end = time.monotonic() + 150
        while time.monotonic() < end:  # the refused messages are counted by whichever sink owns them
            rej = {}
            for _, port in procs:
                for k, v in _metric(port, "ingress_sink_rejected_total").items():
                    rej[k] = rej.get(k, 0) + v
            if all(rej.get(f'reason="{r}"') for r in ("tenant_mismatch", "bad_batch", "unknown_schema")):
                break
            time.sleep(0.5)
        _wait_quiet(procs)
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0
        got = {t: _rows(tmp_path / "s1", t) + _rows(tmp_path / "s2", t) for t in TENANTS}

        def keys(rows):
            return [(r["name"], tuple(sorted(r["tags"].items())), r["ts"]) for r in rows]

        for t in TENANTS:
            # Each embedded store holds a sample at most once. Across the two stores a
            # batch redelivered after the SIGKILL may be stored by both: each process has
            # its own embedded database (chDB opens a directory in one process only), so
            # only a shared ClickHouse server deduplicates across sinks (docs/aggregator.md).
            for s in ("s1", "s2"):
                mine = keys(_rows(tmp_path / s, t))
                assert len(set(mine)) == len(mine), (t, s)  # no duplicate within a store
            assert len(set(keys(got[t]))) == sent[t], (t, len(set(keys(got[t]))), sent[t])  # no loss
            assert {r["tenant"] for r in got[t]} == {t}
            assert all(r["tags"] == {"cpu": "0"} and r["host"] == "web-1" for r in got[t])
        shares = [sum(len(_rows(tmp_path / s, t)) for t in TENANTS) for s in ("s1", "s2")]
        assert all(shares), shares  # both members of the group took partitions
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        broker.stop()


def _wait_quiet(procs, quiet_s=6.0, limit_s=120.0):
    last, since, end = -1.0, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < end:
        now = sum(_stored(port) for _, port in procs)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


class _Store:
    def __init__(self):
        self.puts = []
        self.counts = {}

    def put(self, *a, **k):
        self.puts.append(a)
        return True

    def put_rows(self, *a, **k):
        self.puts.append(a)
        return True


class _Metrics:
    def __init__(self):
        self.rejects = []

    def reject(self, r):
        self.rejects.append(r)

    def stored(self, *a):
        pass

    def duplicate(self, *a):
        pass


from hypothesis import given, strategies as st  # noqa: E402


@given(tenant=st.text(max_size=70), schema=st.sampled_from(["ingress-batch/1", "ingress-json/1", "x"]),
       value=st.binary(max_size=200))
def test_any_message_is_stored_or_refused_with_a_reason_never_raises_otherwise(tenant, schema, value):
    """Unit: header and value checks over arbitrary messages (fake store)."""
    k = KafkaInput("x", "t", "g", _Store(), _Metrics())
    try:
        k.handle("t", [("tenant-id", tenant.encode()), ("schema", schema.encode())], value)
    except _Refuse as r:
        assert r.reason in {"bad_tenant", "unknown_schema", "bad_batch", "tenant_mismatch", "batch_id_mismatch"}
    else:  # only a real batch or sample of that very tenant gets through
        assert k.store.puts


def test_a_mismatched_tenant_header_is_refused_unit():
    k = KafkaInput("x", "t", "g", _Store(), _Metrics())
    with pytest.raises(_Refuse) as e:
        k.handle("t", [("tenant-id", b"zeta"), ("schema", b"ingress-batch/1")], make_batch("acme"))
    assert e.value.reason == "tenant_mismatch" and not k.store.puts
    with pytest.raises(_Refuse) as e:
        k.handle("t", [("tenant-id", b"zeta"), ("schema", b"ingress-json/1"), ("batch-id", b"ab" * 16)],
                 json.dumps({"tenant": "acme", "name": "m", "tags": {}, "ts": 1, "value": 1}).encode())
    assert e.value.reason == "tenant_mismatch" and not k.store.puts
