"""``ingress sink --from-kafka``: two sinks in one consumer group on a real Tansu broker.

A group's first settling takes seconds on Tansu (shared/facts.md), so one test
covers sharing, header checks, both schemas and a SIGKILL of a sink mid-stream.
The sinks run with a 3 s group session (sink_store/procs.py) so the killed
member's partitions move on sooner; the waits end when the group has committed
every message (the sink commits only what it stored or refused for good).
"""
import json
import os
import signal
import time

import pytest

from ingress import wire
from ingress.sink_store.kafka_input import KafkaInput, _Refuse

from integration.conftest import Tansu
from sink_store.conftest import make_batch
from sink_store.procs import dump_store, kill, metric, start_sink, start_sinks, stop, stored, wait_consumed, wait_for

pytestmark = pytest.mark.integration

TENANTS = ("acme", "zeta", "umbra")
REFUSED = ("tenant_mismatch", "bad_batch", "unknown_schema")


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
        # One sample in the json schema.
        js = {"tenant": "umbra", "name": "cpu.user", "tags": {"cpu": "0"}, "ts": time.time_ns(), "value": 9.0,
              "host": "web-1", "batch_id": "ab" * 16}
        prod.produce(f"{base}.umbra", value=json.dumps(js).encode(), key="umbra", partition=3,
                     headers=[("tenant-id", "umbra"), ("batch-id", "ab" * 16), ("schema", "ingress-json/1")])
        assert prod.flush(30) == 0
        sent["umbra"] += 1

        topic, group = f"^{base}\\..*", f"g-{base}"
        args = ("--from-kafka", broker.bootstrap, "--topic", topic, "--group", group)
        procs = start_sinks((tmp_path / "s1", args, 0), (tmp_path / "s2", args, 0))
        # Both members share the partitions: keep producing (every partition) until each has stored
        # some; a member that joins late would otherwise find everything taken by the other.
        end = time.monotonic() + 120
        while not all(stored(port) > 0 for _, port in procs):
            assert time.monotonic() < end, "the two sinks never both stored: the group did not share"
            produce(4)
            time.sleep(1)
        total = sum(sent.values())
        wait_for(lambda: sum(stored(port) for _, port in procs) >= total // 3, 120, "a third stored")
        # SIGKILL one sink mid-stream and restart it; keep producing meanwhile.
        victim, _ = procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        produce(4)
        procs[0] = start_sink(tmp_path / "s1", *args)
        # Refused, never stored (sent while both sinks live, so the member that owns each counts it):
        # a zeta header on an acme batch, garbage, an unknown schema.
        prod.produce(f"{base}.zeta", value=make_batch("acme", n=5), key="zeta", partition=0,
                     headers=[("tenant-id", "zeta"), ("schema", "ingress-batch/1")])
        prod.produce(f"{base}.acme", value=b"\x00garbage", key="acme", partition=1,
                     headers=[("tenant-id", "acme"), ("schema", "ingress-batch/1")])
        prod.produce(f"{base}.acme", value=b"{}", key="acme", partition=2,
                     headers=[("tenant-id", "acme"), ("schema", "avro/9")])
        assert prod.flush(30) == 0

        def refused():
            rej = {}
            for _, port in procs:
                for k, v in metric(port, "ingress_sink_rejected_total").items():
                    rej[k] = rej.get(k, 0) + v
            return rej

        wait_consumed(broker.bootstrap, group, f"{base}.", limit_s=150)
        wait_for(lambda: all(refused().get(f'reason="{r}"') for r in REFUSED), 30, "the three refusals counted")
        assert stop(p for p, _ in procs) == [0, 0]
        dumps = {s: dump_store(tmp_path / s, samples=True) for s in ("s1", "s2")}

        def keys(rows):
            return [(r["name"], tuple(sorted(r["tags"].items())), r["ts"]) for r in rows]

        for t in TENANTS:
            mine = {s: [r for r in d["samples"] if r["tenant"] == t] for s, d in dumps.items()}
            # Each embedded store holds a sample at most once. Across the two stores a
            # batch redelivered after the SIGKILL may be stored by both: each process has
            # its own embedded database (chDB opens a directory in one process only), so
            # only a shared ClickHouse server deduplicates across sinks (docs/aggregator.md).
            for s, rows in mine.items():
                assert len(set(keys(rows))) == len(rows), (t, s)  # no duplicate within a store
            both = mine["s1"] + mine["s2"]
            assert len(set(keys(both))) == sent[t], (t, len(set(keys(both))), sent[t])  # no loss
            assert all(r["tags"] == {"cpu": "0"} and r["host"] == "web-1" for r in both)
        for d in dumps.values():  # the refused messages are nowhere: only the three tenants' own rows
            assert {r["tenant"] for r in d["samples"]} <= set(TENANTS) and d["dups"] == 0
        assert all(d["samples"] for d in dumps.values())  # both members of the group took partitions
    finally:
        kill(p for p, _ in procs)
        broker.stop()


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
