"""The sink's /metrics (prometheus-client, a registry per sink).

=============================================  ========================================
ingress_sink_batches_stored_total{tenant,input}  batches stored (input: http, kafka)
ingress_sink_samples_stored_total{tenant,input}  samples stored
ingress_sink_batches_duplicate_total{tenant,input}  batches dropped as already stored
ingress_sink_rejected_total{reason}              requests or messages refused, by reason
ingress_sink_insert_seconds                      histogram of one batch's store time
=============================================  ========================================

The ``tenant`` label takes only tenants that passed the sink's checks (a key
in ``--keys``, or for Kafka a valid tenant id whose header matched its batch).
"""
from __future__ import annotations

from typing import Any


class SinkMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batches = Counter("ingress_sink_batches_stored", "Batches stored", ["tenant", "input"], registry=r)
        self.samples = Counter("ingress_sink_samples_stored", "Samples stored", ["tenant", "input"], registry=r)
        self.duplicates = Counter("ingress_sink_batches_duplicate", "Batches dropped as already stored",
                                  ["tenant", "input"], registry=r)
        self.rejected = Counter("ingress_sink_rejected", "Requests or messages refused, by reason", ["reason"],
                                registry=r)
        self.insert = Histogram("ingress_sink_insert_seconds", "Time to store one batch", registry=r,
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

    def stored(self, tenant: str, input_: str, samples: int, seconds: float) -> None:
        self.batches.labels(tenant, input_).inc()
        self.samples.labels(tenant, input_).inc(samples)
        self.insert.observe(seconds)

    def duplicate(self, tenant: str, input_: str) -> None:
        self.duplicates.labels(tenant, input_).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def store_put(store: Any, tenant: str, batch_id: bytes, payload: bytes, count: int, host: str, batch: Any,
              source: str) -> bool:
    """``store.put`` for either store: the ClickHouse store takes the decoded batch too."""
    from ingress.sink_store.clickhouse import ClickHouseStore

    if isinstance(store, ClickHouseStore):
        return store.put(tenant, batch_id, payload, count, host, batch=batch, source=source)
    return store.put(tenant, batch_id, payload, count, host)
