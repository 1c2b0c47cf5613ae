"""Faults end to end: the delivery loop over real outputs against failing servers and brokers.

Every test checks the same promise: each spooled batch ends up delivered (or,
for a permanent refusal, in the dead-letter directory), none is lost, and a
failing tenant never holds up another.
"""
import json
import os
import threading
import time

import pytest

from ingress.outputs.breaker import CircuitBreaker
from ingress.outputs.delivery import Delivery
from ingress.outputs.file import FileOutput, read_batches
from ingress.outputs.http import HttpOutput
from ingress.outputs.kafka import KafkaOutput
from ingress.outputs.retry import Backoff

from outputs.fakes import FakeSpool, fill, wait_for

from .conftest import HANG, Reply, TopicReader

pytestmark = pytest.mark.integration

# Outage length for the broker tests; `INGRESS_FAULT_OUTAGE_S=30 make bench`-style runs can stretch it.
OUTAGE_S = float(os.environ.get("INGRESS_FAULT_OUTAGE_S", "5"))


def delivery(spool, outputs, tmp_path, tenants, **kw):
    kw.setdefault("backoff", lambda: Backoff(base_s=0.05, cap_s=0.5))
    kw.setdefault("idle_poll_s", 0.05)
    kw.setdefault("breaker_factory", lambda: CircuitBreaker(failure_threshold=5, reset_timeout_s=0.5))
    d = Delivery(spool, outputs, None, tenants=tenants, data_dir=tmp_path, host="web-1", **kw)
    d.start()
    return d


def http_out(server, **kw):
    return HttpOutput("h", server.url + "/{tenant}", credential=lambda t: "k-" + t, **kw)


def delivered_ids(server, tenant):
    return {bytes.fromhex(r.headers["idempotency-key"]) for r in server.of_tenant(tenant)}


def test_http_500_is_retried_until_delivered(http_server, tmp_path):
    http_server.replies(*[Reply(500, b"internal error")] * 5)
    sp = FakeSpool(["h"])
    ids = fill(sp, "acme", 10)
    d = delivery(sp, [http_out(http_server)], tmp_path, ["acme"])
    try:
        assert wait_for(lambda: not sp.unacked("acme", "h"), 30)
    finally:
        d.stop(5)
    assert delivered_ids(http_server, "acme") == set(ids)
    st = d.stats()["acme"]["h"]
    assert st["retries"] == 5 and st["dead_letters"] == 0 and st["sent_batches"] == 10
    assert st["last_error"] == "HTTP 500: internal error"


def test_http_429_retry_after_is_honoured(http_server, tmp_path):
    http_server.replies(Reply(429, b"quota", {"Retry-After": "1"}))
    sp = FakeSpool(["h"])
    fill(sp, "acme", 1)
    d = delivery(sp, [http_out(http_server)], tmp_path, ["acme"])
    try:
        assert wait_for(lambda: not sp.unacked("acme", "h"), 30)
    finally:
        d.stop(5)
    first, second = http_server.requests[:2]
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert second.t - first.t >= 1.0


def test_http_400_becomes_a_dead_letter(http_server, tmp_path):
    http_server.behave = lambda req: (Reply(400, b'{"error": {"code": "bad_batch"}}\nx')
                                      if req.headers["x-tenant-id"] == "bad" else Reply())
    sp = FakeSpool(["h"])
    bad = fill(sp, "bad", 3)
    good = fill(sp, "good", 3)
    d = delivery(sp, [http_out(http_server)], tmp_path, ["bad", "good"])
    try:
        assert wait_for(lambda: not sp.unacked("bad", "h") and not sp.unacked("good", "h"), 30)
    finally:
        d.stop(5)
    folder = tmp_path / "deadletter" / "bad" / "h"
    assert sorted(p.name for p in folder.glob("*.batch")) == sorted(b.hex() + ".batch" for b in bad)
    for b in bad:
        reason = json.loads((folder / f"{b.hex()}.json").read_text())
        assert reason["reason"] == 'HTTP 400: {"error": {"code": "bad_batch"}}'
    assert delivered_ids(http_server, "good") == set(good)
    st = d.stats()
    assert st["bad"]["h"]["dead_letters"] == 3 and st["bad"]["h"]["retries"] == 0
    assert st["good"]["h"]["dead_letters"] == 0 and not (tmp_path / "deadletter" / "good").exists()


@pytest.mark.parametrize("status", [401, 403])
def test_http_credential_refusal_holds_the_pair_and_never_dead_letters(http_server, tmp_path, status):
    """401/403: the batches stay in the spool, the breaker opens with reason credential_refused,
    the credential is read again at each probe, and once it is accepted everything goes out."""
    key = {"bad": "old-key"}
    http_server.behave = lambda req: (Reply(status, b'{"error": {"code": "unauthorized"}}')
                                      if req.headers["authorization"] == "Bearer old-key" else Reply())
    sp = FakeSpool(["h"])
    bad = fill(sp, "bad", 3)
    good = fill(sp, "good", 3)
    out = HttpOutput("h", http_server.url + "/{tenant}", credential=lambda t: key.get(t, "k-" + t))
    d = delivery(sp, [out], tmp_path, ["bad", "good"],
                 breaker_factory=lambda: CircuitBreaker(failure_threshold=5, reset_timeout_s=0.3))
    try:
        assert wait_for(lambda: d.stats()["bad"]["h"]["credential_refusals"] >= 2, 30)  # probed again
        assert wait_for(lambda: not sp.unacked("good", "h"), 30)
        st = d.stats()["bad"]["h"]
        assert st["state"] == "credential_refused" and st["credential_refused"] == status
        assert st["breaker"]["reason"] == "credential_refused" and st["dead_letters"] == 0
        assert len(sp.unacked("bad", "h")) == 3
        assert any("credential_refused" in p for p in d.problems())
        assert not (tmp_path / "deadletter").exists()
        key["bad"] = "new-key"  # rotated: the next probe reads it
        assert wait_for(lambda: not sp.unacked("bad", "h"), 30)
    finally:
        d.stop(5)
    assert delivered_ids(http_server, "bad") >= set(bad)
    st = d.stats()["bad"]["h"]
    assert st["state"] == "ok" and st["breaker"]["state"] == "closed" and st["dead_letters"] == 0
    assert not d.problems() and not (tmp_path / "deadletter").exists()


def test_http_timeout_is_retried(http_server, tmp_path):
    calls = []

    def behave(req):
        calls.append(req)
        return HANG if len(calls) == 1 else Reply()

    http_server.behave = behave
    sp = FakeSpool(["h"])
    ids = fill(sp, "acme", 3)
    d = delivery(sp, [http_out(http_server, timeout_s=0.5)], tmp_path, ["acme"])
    try:
        assert wait_for(lambda: not sp.unacked("acme", "h"), 30)
    finally:
        d.stop(5)
        http_server.release()
    assert delivered_ids(http_server, "acme") == set(ids)
    assert "timed out" in d.stats()["acme"]["h"]["last_error"]


def test_hung_endpoint_of_one_tenant_does_not_delay_the_others(http_server, tmp_path):
    http_server.behave = lambda req: HANG if req.path == "/slow" else Reply()
    sp = FakeSpool(["h", "f"])
    fill(sp, "slow", 10)
    h = http_out(http_server, timeout_s=60)
    f = FileOutput("f", tmp_path)
    d = delivery(sp, [h, f], tmp_path, ["slow", "fast"])
    try:
        assert wait_for(lambda: http_server.hanging >= 1, 10)
        assert wait_for(lambda: not sp.unacked("slow", "f"), 10)  # the same tenant on another output
        fast = fill(sp, "fast", 30)
        d.notify("fast")
        assert wait_for(lambda: not sp.unacked("fast", "h") and not sp.unacked("fast", "f"), 20)
        assert http_server.hanging >= 1  # still hanging while the others went through
        assert delivered_ids(http_server, "fast") == set(fast)
        assert len(sp.unacked("slow", "h")) == 10
        assert [len(list(read_batches(p))) for p in f.files("fast")] == [30]
    finally:
        http_server.release()
        d.stop(2)
        h.close()
        f.close()


def test_breaker_opens_on_a_failing_endpoint_and_recovers(http_server, tmp_path):
    state = {"up": False}
    http_server.behave = lambda req: Reply() if state["up"] else Reply(503, b"down")
    sp = FakeSpool(["h"])
    ids = fill(sp, "acme", 5)
    d = delivery(sp, [http_out(http_server)], tmp_path, ["acme"],
                 backoff=lambda: Backoff(base_s=0.01, cap_s=0.02),
                 breaker_factory=lambda: CircuitBreaker(failure_threshold=3, reset_timeout_s=0.5))
    try:
        assert wait_for(lambda: d.breaker("acme", "h").state == "open", 10)
        assert any("circuit breaker open" in p for p in d.problems())
        state["up"] = True
        assert wait_for(lambda: not sp.unacked("acme", "h"), 20)
        assert d.breaker("acme", "h").state == "closed"
    finally:
        d.stop(5)
    assert delivered_ids(http_server, "acme") == set(ids)


class Feeder:
    """Appends one batch every ``every`` seconds to the spool and wakes the delivery loop."""

    def __init__(self, spool, d, tenant, n, every):
        self.ids = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(spool, d, tenant, n, every), daemon=True)
        self.thread.start()

    def run(self, spool, d, tenant, n, every):
        for i in range(n):
            if self.stop.is_set():
                return
            self.ids.extend(fill(spool, tenant, 1))
            d.notify(tenant)
            time.sleep(every)


def _batch_ids(msgs):
    return [dict(m.headers())["batch-id"].decode() for m in msgs]


def test_kafka_broker_paused_mid_stream_loses_nothing(private_tansu, tmp_path, unique_topic):
    sp = FakeSpool(["k"])
    out = KafkaOutput("k", private_tansu.bootstrap, unique_topic)
    out.start()
    d = delivery(sp, [out], tmp_path, ["acme"])
    feeder = Feeder(sp, d, "acme", 40, OUTAGE_S / 20)
    reader = TopicReader(private_tansu.bootstrap)
    try:
        assert wait_for(lambda: d.stats()["acme"]["k"]["sent_batches"] >= 5, 30)
        private_tansu.pause()
        try:
            time.sleep(OUTAGE_S)
            sent_during = d.stats()["acme"]["k"]["sent_batches"]
        finally:
            private_tansu.resume()
        feeder.thread.join(60)
        assert wait_for(lambda: not sp.unacked("acme", "k"), 120)
        reader.assign([unique_topic])
        msgs = reader.read(lambda ms: set(_batch_ids(ms)) >= {b.hex() for b in feeder.ids}, 60)
    finally:
        feeder.stop.set()
        d.stop(5)
        out.close()
        reader.close()
    got = _batch_ids(msgs)
    assert set(got) == {b.hex() for b in feeder.ids}  # none missing
    assert len(feeder.ids) == 40
    dups = len(got) - len(set(got))
    print(f"outage {OUTAGE_S:g}s: {len(got)} messages, {dups} duplicate batch ids")
    if OUTAGE_S < 30:  # shorter than message.timeout.ms: librdkafka's own retries, deduplicated
        assert dups == 0
    assert sent_during < 40  # the outage really held delivery back


def test_kafka_broker_killed_and_restarted_loses_nothing(private_tansu, tmp_path, unique_topic):
    """Tansu keeps topics in memory: read everything before the kill, the rest after the restart."""
    sp = FakeSpool(["k"])
    # A short message timeout: the restarted broker has forgotten the producer id,
    # and only a timed-out message makes the output replace its producer.
    out = KafkaOutput("k", private_tansu.bootstrap, unique_topic, options={"message.timeout.ms": 4000})
    out.start()
    d = delivery(sp, [out], tmp_path, ["acme"])
    before, after = TopicReader(private_tansu.bootstrap), None
    try:
        first = fill(sp, "acme", 10)
        d.notify()
        assert wait_for(lambda: not sp.unacked("acme", "k"), 30)
        before.assign([unique_topic])
        msgs1 = before.read(lambda ms: len(set(_batch_ids(ms))) >= 10, 30)
        before.close()
        private_tansu.stop()
        second = fill(sp, "acme", 10)
        d.notify()
        time.sleep(min(OUTAGE_S, 3))
        assert len(sp.unacked("acme", "k")) == 10  # nothing acknowledged while the broker is gone
        private_tansu.start()
        assert wait_for(lambda: not sp.unacked("acme", "k"), 120), d.stats()["acme"]["k"]
        after = TopicReader(private_tansu.bootstrap)
        after.assign([unique_topic])
        msgs2 = after.read(lambda ms: set(_batch_ids(ms)) >= {b.hex() for b in second}, 60)
    finally:
        d.stop(5)
        out.close()
        if after is not None:
            after.close()
    assert {*_batch_ids(msgs1), *_batch_ids(msgs2)} == {b.hex() for b in first + second}
    assert out.replacements >= 1
