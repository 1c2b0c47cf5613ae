"""``ingress sink --from-kafka BROKERS --topic TOPIC|^REGEX --group G``.

A consumer in group G reads the agent's topics (a topic starting with ``^``
is a regular expression, librdkafka's convention) and, per message:

1. takes the ``tenant-id`` and ``schema`` headers (``ingress-batch/1``: the
   value is a batch; ``ingress-json/1``: one sample as a JSON object);
2. refuses, counts (``ingress_sink_rejected_total{reason}``) and commits past
   a message that can never be stored: no or an invalid ``tenant-id``
   (``bad_tenant``), a tenant not in ``--keys`` when a keys file is given
   (``unknown_tenant``), an unknown schema (``unknown_schema``), a value that
   does not decode (``bad_batch``), a batch or sample whose tenant is not the
   header's (``tenant_mismatch``: stored under neither tenant), a
   ``batch-id`` header that is not the batch's (``batch_id_mismatch``);
3. stores it (a batch exactly once by its id; a json sample once by its batch
   id and a hash of the message);
4. then commits the message's offset (synchronously).

When the store fails, the message is not committed: the consumer seeks back
to it and tries again a second later, so nothing is skipped. A sink killed
between 3 and 4 sees the message again after restart (or another group
member does); step 3 makes it a duplicate.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from typing import Any

from ingress import names
from ingress.errors import IngressError, WireError

log = logging.getLogger("ingress.sink")

SCHEMA_BATCH = "ingress-batch/1"
SCHEMA_JSON = "ingress-json/1"
_HEX32 = re.compile(r"[0-9a-f]{32}")


class _Refuse(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KafkaInput:
    """One consumer thread; ``start()``, ``stop()``; counts in ``stored`` and ``rejects``."""

    def __init__(self, brokers: str, topic: str, group: str, store: Any, metrics: Any, *,
                 tenants: set[str] | None = None, decode_limits: Any = None,
                 count_reject: Any = None, options: dict | None = None) -> None:
        self.brokers, self.topic, self.group = brokers, topic, group
        self.store = store
        self.metrics = metrics
        self.tenants = tenants
        self.decode_limits = decode_limits
        self._count_reject = count_reject
        self.options = dict(options or {})
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.stored = 0
        self.assigned: list[tuple[str, int]] = []
        self.error: str | None = None

    def start(self) -> "KafkaInput":
        from confluent_kafka import Consumer

        conf = {"bootstrap.servers": self.brokers, "group.id": self.group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "enable.partition.eof": False,
                "topic.metadata.refresh.interval.ms": 5000,
                # A killed member's partitions move on after 10 s instead of librdkafka's 45 s.
                "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000, **self.options}
        self.consumer = Consumer(conf, logger=logging.getLogger("ingress.sink.kafka"))
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.thread = threading.Thread(target=self._loop, name="sink-kafka", daemon=True)
        self.thread.start()
        return self

    def _on_assign(self, _c: Any, parts: list) -> None:
        self.assigned = sorted((p.topic, p.partition) for p in parts)
        log.info("sink: kafka: assigned %s", ", ".join(f"{t}[{p}]" for t, p in self.assigned) or "nothing")

    def _on_revoke(self, _c: Any, parts: list) -> None:
        self.assigned = []

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(30)
        try:
            self.consumer.close()
        except Exception:
            pass

    def _reject(self, reason: str, message: str) -> None:
        log.warning("sink: kafka: refused (%s): %s", reason, message)
        if self._count_reject is not None:
            self._count_reject(reason)
        else:
            self.metrics.reject(reason)

    def _loop(self) -> None:
        from confluent_kafka import TopicPartition

        c = self.consumer
        while not self.stop_event.is_set():
            try:
                msg = c.poll(0.5)
            except Exception as e:  # a closed consumer or a fatal client error
                self.error = str(e)
                log.error("sink: kafka: %s", e)
                time.sleep(1)
                continue
            if msg is None:
                continue
            if msg.error():
                self.error = str(msg.error())
                log.debug("sink: kafka: %s", msg.error())
                continue
            try:
                self.handle(msg.topic(), msg.headers() or [], msg.value() or b"")
            except _Refuse as r:
                self._reject(r.reason, f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {r}")
            except (IngressError, OSError) as e:  # the store cannot now: read it again later
                log.error("sink: kafka: cannot store %s[%d]@%d: %s; retrying", msg.topic(), msg.partition(),
                          msg.offset(), e)
                try:
                    c.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                except Exception as e2:
                    log.debug("sink: kafka: seek: %s", e2)
                self.stop_event.wait(1.0)
                continue
            try:
                c.commit(message=msg, asynchronous=False)
            except Exception as e:  # a rebalance took the partition: its next owner sees a duplicate
                log.info("sink: kafka: commit of %s[%d]@%d failed: %s", msg.topic(), msg.partition(),
                         msg.offset(), e)

    def handle(self, topic: str, headers: list, value: bytes) -> bool:
        """Check and store one message; True when stored, False for a duplicate; _Refuse otherwise."""
        h: dict[str, str] = {}
        for k, v in headers:
            try:
                h[k] = (v or b"").decode("utf-8")
            except UnicodeDecodeError:
                h[k] = "\ufffd"
        tenant = h.get("tenant-id", "")
        if not names.is_tenant_id(tenant):
            raise _Refuse("bad_tenant", f"tenant-id header {tenant[:80]!r} is missing or not a valid tenant id")
        if self.tenants is not None and tenant not in self.tenants:
            raise _Refuse("unknown_tenant", f"tenant {tenant!r} is not in the sink's keys file")
        schema = h.get("schema", SCHEMA_BATCH)
        if schema == SCHEMA_BATCH:
            return self._batch(tenant, h, value)
        if schema == SCHEMA_JSON:
            return self._json(tenant, h, value)
        raise _Refuse("unknown_schema", f"schema header {schema[:80]!r} is not {SCHEMA_BATCH} or {SCHEMA_JSON}")

    def _batch(self, tenant: str, h: dict, value: bytes) -> bool:
        from ingress import wire
        from ingress.sink_store.clickhouse import BadBatch
        from ingress.sink_store.metrics import store_put

        try:
            b = wire.decode(value, self.decode_limits or wire.DEFAULT_LIMITS)
        except (WireError, ValueError) as e:
            raise _Refuse("bad_batch", f"not a valid batch: {e}") from None
        if b.tenant != tenant:
            raise _Refuse("tenant_mismatch", f"the batch belongs to tenant {b.tenant!r}, tenant-id says {tenant!r}")
        bid = h.get("batch-id")
        if bid is not None and bid != b.batch_id.hex():
            raise _Refuse("batch_id_mismatch", f"batch-id header {bid[:40]!r} is not the batch id {b.batch_id.hex()}")
        t0 = time.monotonic()
        try:
            stored = store_put(self.store, tenant, b.batch_id, value, len(b), b.host, b, "kafka")
        except BadBatch as e:
            raise _Refuse("bad_batch", str(e)) from None
        if stored:
            self.stored += 1
            self.metrics.stored(tenant, "kafka", len(b), time.monotonic() - t0)
        else:
            self.metrics.duplicate(tenant, "kafka")
        return stored

    def _json(self, tenant: str, h: dict, value: bytes) -> bool:
        bid = h.get("batch-id", "")
        if not _HEX32.fullmatch(bid):
            raise _Refuse("bad_batch", "a json message needs a batch-id header of 32 lowercase hex characters")
        try:
            obj = json.loads(value)
        except (ValueError, RecursionError) as e:
            raise _Refuse("bad_batch", f"not a JSON object: {str(e)[:120]}") from None
        row = _sample(obj)
        if obj.get("tenant") != tenant:
            raise _Refuse("tenant_mismatch",
                          f"the sample belongs to tenant {str(obj.get('tenant'))[:80]!r}, tenant-id says {tenant!r}")
        if not hasattr(self.store, "put_rows"):
            raise _Refuse("unknown_schema", "the file store takes batches only")
        row.setdefault("host", h.get("host", ""))
        token = f"{bid}/{hashlib.sha256(value).hexdigest()[:32]}"
        t0 = time.monotonic()
        self.store.put_rows(tenant, token, [row])
        self.stored += 1
        self.metrics.stored(tenant, "kafka", 1, time.monotonic() - t0)
        return True


def _sample(obj: Any) -> dict:
    """One json-schema sample checked field by field; _Refuse naming the first bad one."""
    if not isinstance(obj, dict):
        raise _Refuse("bad_batch", "a json message must be one JSON object")
    name, tags, ts, value = obj.get("name"), obj.get("tags", {}), obj.get("ts"), obj.get("value")
    if not isinstance(name, str) or not name:
        raise _Refuse("bad_batch", "name: must be a non-empty string")
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise _Refuse("bad_batch", "tags: must be an object of strings")
    if not isinstance(ts, int) or isinstance(ts, bool) or not -(2**63) <= ts < 2**63:
        raise _Refuse("bad_batch", "ts: must be an integer (ns since the epoch)")
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise _Refuse("bad_batch", "value: must be a number or null")
    host = obj.get("host", "")
    if not isinstance(host, str):
        raise _Refuse("bad_batch", "host: must be a string")
    try:
        fvalue = None if value is None else float(value)
    except OverflowError:
        raise _Refuse("bad_batch", "value: out of the range of a float") from None
    row = {"name": name, "tags": tags, "ts": ts, "value": fvalue}
    if host:
        row["host"] = host
    return row
