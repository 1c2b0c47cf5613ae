"""The frozen, typed settings :func:`ingress.config.load` returns.

Nothing here parses or checks: :mod:`ingress.config` builds these from the
TOML text after every key passed its :class:`~ingress.options.Kind`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ingress.options import split_host_port as _split_host_port

__all__ = ["Settings", "AgentSettings", "Limits", "CollectSettings", "AgentSpoolSettings",
           "BatchSettings", "ControlSettings", "TenantSettings", "TenantSpoolSettings",
           "OutputSettings", "RetrySettings", "BreakerSettings"]


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_percent: float
    disk_write_mb_s: float
    ring_mb: int
    ring_policy: str


@dataclass(frozen=True)
class CollectSettings:
    min_interval_s: float
    max_interval_s: float
    jitter: float


@dataclass(frozen=True)
class AgentSpoolSettings:
    fsync: str | float  # "batch" or seconds between fsyncs
    segment_mb: int
    orphan_retention_s: float = 7 * 86400.0  # a removed tenant's spool that no output takes


@dataclass(frozen=True)
class BatchSettings:
    max_samples: int
    max_bytes: int
    max_delay_s: float


@dataclass(frozen=True)
class AgentSettings:
    data_dir: Path
    hostname: str
    interval_s: float
    shutdown_timeout_s: float
    log_format: str
    log_level: str
    limits: Limits
    collect: CollectSettings
    spool: AgentSpoolSettings
    batch: BatchSettings
    user: str | None = None
    group: str | None = None
    procfs: str = "/proc"
    sysfs: str = "/sys"
    log_file: Path | None = None
    log_max_mb: int = 10
    log_keep: int = 5
    allow_destinations: tuple[str, ...] = ()


@dataclass(frozen=True)
class ControlSettings:
    listen: str
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    audit_max_mb: int = 10
    audit_keep: int = 5

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.listen)[1]


@dataclass(frozen=True)
class TenantSpoolSettings:
    max_mb: int
    retention_s: float
    encrypt: bool
    deadletter_max_mb: int = 64
    deadletter_retention_s: float = 7 * 86400.0


@dataclass(frozen=True)
class TenantSettings:
    id: str
    enabled: bool
    collectors: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    interval_s: float
    tags: Mapping[str, str]
    api_key_env: str | None
    api_key_file: Path | None
    max_series: int
    spool: TenantSpoolSettings
    # Per collector in `collectors`, its tenant table ([tenants.<collector>]) converted, by key:
    # for a table the keys set that differ from the default; for an array (health) every table whole.
    collector_tables: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class RetrySettings:
    backoff_initial_s: float
    backoff_max_s: float


@dataclass(frozen=True)
class BreakerSettings:
    failures: int
    reset_s: float


@dataclass(frozen=True)
class OutputSettings:
    """One ``[[outputs]]`` table: the keys every output takes, and its type's own in ``values``.

    Its type's keys read as attributes too (``o.url``, ``o.timeout_s``), by field name.
    """

    type: str
    name: str
    tenants: tuple[str, ...] | None  # None: every tenant
    format: str
    retry: RetrySettings
    breaker: BreakerSettings
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def serves(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and key in values:
            return values[key]
        raise AttributeError(f"{self.type} output has no setting {key!r}")


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings
    control: ControlSettings
    tenants: tuple[TenantSettings, ...]
    outputs: tuple[OutputSettings, ...]
    source: str = "<string>"

    def tenant(self, tenant_id: str) -> TenantSettings:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise KeyError(tenant_id)
