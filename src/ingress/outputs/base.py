"""The contract between the delivery loop and an output (kafka, http, file).

An output is asynchronous by design: ``submit`` queues a batch and returns at
once; ``done(batch, error)`` is called exactly once per submitted batch, with
``None`` when the backend acknowledged it (Kafka delivery report, HTTP 2xx, file
written and flushed) or with a :class:`~ingress.errors.TransportError` whose
``retryable`` flag decides between retrying and the dead-letter directory.
``done`` may be called from ``poll``/``flush`` or from a worker thread of the
output; it must be cheap and must not block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional


@dataclass(frozen=True)
class OutgoingBatch:
    tenant: str
    batch_id: bytes  # 16 bytes; hex() wherever it appears as text
    payload: bytes  # one encoded batch (schema ingress-batch/1)
    sample_count: int
    host: str


Done = Callable[[OutgoingBatch, Optional[BaseException]], None]


class Output:
    """Base class of every output. Subclasses set ``type`` and implement ``submit``."""

    type: ClassVar[str] = ""

    def __init__(self, name: str, tenants: frozenset[str] | None = None) -> None:
        self.name = name
        self.tenants = tenants  # None: every tenant

    def serves(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def start(self) -> None:
        """Connect; raise TransportError when unusable at start-up."""

    def submit(self, batch: OutgoingBatch, done: Done) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def poll(self, timeout: float = 0.0) -> None:
        """Serve pending callbacks (Kafka delivery reports); no-op by default."""

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for in-flight batches; return how many are still in flight."""
        return 0

    def close(self) -> None:
        """Release connections; in-flight batches not yet acknowledged stay in the spool."""
