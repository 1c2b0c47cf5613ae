"""The stage boundaries of the agent, as types.

A batch's way through the agent, by the types it passes::

    CollectorStage.collect(now_ns) -> Columns
      -> Pipeline.on_columns            (ingress.pipeline: fan-out per tenant)
      -> Rings.push / Rings.drain       (per-tenant ring, flushed on the main thread)
      -> Encoder.encode                 (one tenant's samples -> batch bytes; its series
                                         dictionary from SeriesDictionaries)
      -> SpoolAppend(tenant, id, payload, samples, first_ts) = Agent._spool_append
      -> SpoolStage.append              (durable; the batch is accepted)
      -> DeliveryStage (notify)         (reads the spool, per tenant x output)
      -> OutputStage.submit(OutgoingBatch, done)

The real classes (``ingress.buffer.RingSet``, ``SeriesRegistry``,
``ingress.wire.Encoder``, ``ingress.spool.Spool``,
``ingress.outputs.delivery.Delivery``, the outputs) satisfy these
structurally; tests pass fakes that do too. Nothing here is imported at run
time by the hot path: the protocols are for readers and type checkers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ingress.collect.base import Columns, SeriesTable
    from ingress.tenants import Tenant
    from ingress.outputs.base import OutgoingBatch

__all__ = ["CollectorStage", "Rings", "SeriesDictionaries", "Registry", "Encoder", "SpoolAppend",
           "SpoolStage", "DeliveryStage", "OutputStage", "SchedulerStage"]


class CollectorStage(Protocol):
    """A collector instance: its series table and one pass as columns."""

    table: SeriesTable

    def collect(self, now_ns: int) -> Columns: ...


class Rings(Protocol):
    """Per-tenant sample rings (``ingress.buffer.RingSet``), indexed by tenant slot."""

    def push(self, t: int, series: np.ndarray, ts: int, values: np.ndarray, kinds: np.ndarray) -> int: ...

    def drain(self, t: int, series: np.ndarray, ts: np.ndarray, values: np.ndarray,
              kinds: Optional[np.ndarray]) -> int: ...

    def size(self, t: int) -> int: ...

    def capacity(self, t: int) -> int: ...

    def dropped(self, t: int) -> int: ...


class SeriesDictionaries(Protocol):
    """Where the encoder takes a tenant's series dictionary from (the registry)."""

    def encoded_dictionary(self, t: int, sids: np.ndarray) -> tuple[bytes, int, np.ndarray]: ...


class Registry(SeriesDictionaries, Protocol):
    """Per-tenant series ids (``ingress.buffer.SeriesRegistry``)."""

    epoch: int

    def touch(self, t: int, sids: np.ndarray, now_ns: int) -> None: ...

    def evict(self, now_ns: int, ttl_s: float | None = None) -> dict[int, np.ndarray]: ...

    def release(self, t: int | None = None, upto: int | None = None) -> int: ...

    def key(self, t: int, sid: int) -> tuple[str, Any]: ...

    def count(self, t: int) -> int: ...

    def refused(self, t: int) -> int: ...


class Encoder(Protocol):
    """One tenant's drained samples -> one batch (``ingress.wire.Encoder``)."""

    def encode(self, tenant: Tenant, sids: np.ndarray, ts: np.ndarray, values: np.ndarray,
               batch_id: bytes) -> bytes: ...


# append(tenant, batch_id, payload, sample_count, first_ts_ns): where Pipeline.flush hands batches.
SpoolAppend = Callable[["Tenant", bytes, bytes, int, int], None]


class SpoolStage(Protocol):
    """The durable queue between the pipeline and delivery (``ingress.spool.Spool``)."""

    def append(self, tenant: str, batch_id: bytes, payload: bytes, sample_count: int,
               first_ts_ns: int) -> Any: ...

    def close(self) -> None: ...


class DeliveryStage(Protocol):
    """Moves spooled batches of its tenants to one output (``ingress.outputs.delivery.Delivery``)."""

    def start(self) -> None: ...

    def notify(self, tenant: str | None = None) -> None: ...

    def stop(self, timeout: float = 10.0) -> Any: ...


class OutputStage(Protocol):
    """Where batches leave the host (``ingress.outputs.base.Output``)."""

    name: str
    type: str

    def serves(self, tenant: str) -> bool: ...

    def start(self) -> None: ...

    def submit(self, batch: OutgoingBatch,
               done: Callable[[OutgoingBatch, Optional[BaseException]], None]) -> None: ...

    def flush(self, timeout: float) -> int: ...

    def close(self) -> None: ...


class SchedulerStage(Protocol):
    """Runs the collectors (``ingress.collect.scheduler.Scheduler``)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> Any: ...

    def effective_intervals(self) -> Mapping[str, float]: ...
