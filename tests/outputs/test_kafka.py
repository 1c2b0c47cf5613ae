"""KafkaOutput without a broker: configuration, memory bound, error classification.

Messages to a real broker are in tests/integration/test_kafka.py.
"""
import socket
import threading

import pytest

from ingress.errors import ConfigError, PermanentError, RetryableError
from ingress.outputs.kafka import KafkaOutput, budget_options, classify


def dead_port():
    # Bound but never listening: connects are refused, nothing answers.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, f"127.0.0.1:{s.getsockname()[1]}"


def test_unknown_option_names_the_key():
    o = KafkaOutput("k", "127.0.0.1:1", "t", options={"linger.ms": 5, "no.such.thing": 1})
    with pytest.raises(ConfigError, match=r"outputs\.k\.options\.no\.such\.thing: No such configuration property"):
        o.start()


def test_invalid_value_names_the_users_key_not_the_alias():
    o = KafkaOutput("k", "127.0.0.1:1", "t", options={"linger.ms": "soon"})
    with pytest.raises(ConfigError, match=r"outputs\.k\.options\.linger\.ms: Invalid value"):
        o.start()


def test_idempotence_and_acks_cannot_be_turned_off():
    with pytest.raises(ConfigError, match="options.acks: ingress producers always use acks=all"):
        KafkaOutput("k", "b:1", "t", options={"acks": "1"})
    with pytest.raises(ConfigError, match="enable.idempotence"):
        KafkaOutput("k", "b:1", "t", options={"enable.idempotence": False})
    with pytest.raises(ConfigError, match="bootstrap.servers: set by ingress"):
        KafkaOutput("k", "b:1", "t", options={"bootstrap.servers": "x:1"})
    KafkaOutput("k", "b:1", "t", options={"acks": "all", "enable.idempotence": True})


def test_topic_and_format_validation():
    with pytest.raises(ConfigError, match="topic: 'a b' is not a valid Kafka topic"):
        KafkaOutput("k", "b:1", "a b")
    with pytest.raises(ConfigError, match=r"topic: 'x\.\{host\}'"):
        KafkaOutput("k", "b:1", "x.{host}")
    with pytest.raises(ConfigError, match="format: 'avro'"):
        KafkaOutput("k", "b:1", "t", format="avro")
    with pytest.raises(ConfigError, match="brokers"):
        KafkaOutput("k", "", "t")
    assert KafkaOutput("k", "b:1", "m.{tenant}.v1").topic_for("acme") == "m.acme.v1"


def test_memory_budget_sets_librdkafka_bounds():
    assert budget_options(32) == {"queue.buffering.max.kbytes": 16384,
                                  "queue.buffering.max.messages": 65536,
                                  "message.max.bytes": 4 << 20}
    conf = KafkaOutput("k", "b:1", "t", memory_budget_mb=8, options={"message.max.bytes": 2000000}).config()
    assert conf["queue.buffering.max.kbytes"] == 4096  # far below librdkafka's 1 GiB default
    assert conf["message.max.bytes"] == 2000000  # explicit options win
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        budget_options(0.5)


def test_local_queue_full_is_retryable_and_bounded(batch_factory):
    """With the broker unreachable, produce stops at the budget instead of growing."""
    sock, addr = dead_port()
    try:
        o = KafkaOutput("k", addr, "t", memory_budget_mb=2, options={"message.timeout.ms": 60000})
        o.start()
        payload = b"x" * (64 << 10)
        results = []
        for i in range(64):  # 4 MiB offered against a 1 MiB queue
            o.submit(batch_factory(payload=payload), lambda b, e: results.append(e))
        full = [e for e in results if e is not None]
        assert full and all(isinstance(e, RetryableError) and "local queue full" in str(e) for e in full)
        accepted = 64 - len(full)
        assert accepted >= 1
        assert accepted * len(payload) <= (1 << 20) + len(payload)
        o.close()
    finally:
        sock.close()


def test_every_batch_is_reported_once_on_close(batch_factory):
    sock, addr = dead_port()
    try:
        o = KafkaOutput("k", addr, "t")
        o.start()
        lock = threading.Lock()
        seen = {}

        def done(b, e):
            with lock:
                seen[b.batch_id] = seen.get(b.batch_id, 0) + 1

        batches = [batch_factory(payload=b"p") for _ in range(5)]
        for b in batches:
            o.submit(b, done)
        assert seen == {}  # nothing is delivered without a broker
        o.close()  # purged: reported failed, they stay in the spool
        assert seen == {b.batch_id: 1 for b in batches}
    finally:
        sock.close()


def test_json_format_undecodable_batch_is_permanent(batch_factory, fake_wire):
    o = KafkaOutput("k", "127.0.0.1:1", "t", format="json")
    got = []
    o.submit(batch_factory(payload=b"garbage"), lambda b, e: got.append(e))
    assert len(got) == 1 and isinstance(got[0], PermanentError)
    o.close()


def test_error_classification():
    from confluent_kafka import KafkaError

    assert isinstance(classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), PermanentError)
    assert isinstance(classify(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), PermanentError)
    assert isinstance(classify(KafkaError(KafkaError._MSG_TIMED_OUT)), RetryableError)
    assert isinstance(classify(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS)), RetryableError)
    assert isinstance(classify(KafkaError(KafkaError._TRANSPORT)), RetryableError)
    # A fatal error is the producer's problem, not the batch's: retry with a new producer.
    assert isinstance(classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, fatal=True)), RetryableError)


def test_docs_list_the_permanent_errors():
    """docs/outputs.md names exactly the codes the output treats as permanent."""
    import pathlib
    import re

    from ingress.outputs.kafka import PERMANENT_ERRORS

    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "outputs.md"
    text = doc.read_text()
    para = text[text.index("**Errors.**"):text.index("**Producer replacement.**")]
    named = set(re.findall(r"`(_?[A-Z][A-Z_]+)`", para))
    assert named == set(PERMANENT_ERRORS)
