"""The tenant model: identity, dense index, tags, metric rules, credentials.

A :class:`Tenant` is built once from its :class:`~ingress.config.TenantSettings`.
Its include/exclude globs are compiled once into one regular expression each
(``fnmatch.translate``), so deciding whether a *new* series belongs to a tenant
is one regex match; samples of known series never reach this module (the
fan-out caches the decision per series).

``index`` is the tenant's slot in the per-tenant structures (rings, series
registry): enabled tenants get 0..n-1 in configuration order, disabled tenants
get ``None`` (they are neither collected nor sent; their spool is kept).
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ingress.config import TenantSettings
from ingress.errors import TenantCheckError
from ingress.logs import register_secret
from ingress.names import control_char_name

__all__ = ["Tenant", "TenantSet", "Rules", "TenantCheckError", "CREDENTIAL_CATEGORIES",
           "credential_problem"]

Tags = tuple[tuple[str, str], ...]

CREDENTIAL_CATEGORIES = ("credential_missing", "credential_unreadable", "credential_empty")


class Rules:
    """Metric-name include/exclude globs, each list compiled into one regex."""

    __slots__ = ("include", "exclude", "_inc", "_exc")

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._inc = self._compile(self.include)
        self._exc = self._compile(self.exclude)

    @staticmethod
    def _compile(globs: Sequence[str]) -> re.Pattern | None:
        if not globs:
            return None
        return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))

    def match(self, name: str) -> bool:
        """Whether a metric called ``name`` is kept: included and not excluded."""
        if self._inc is None or not self._inc.match(name):
            return False
        return self._exc is None or not self._exc.match(name)


@dataclass(frozen=True, eq=False)
class Tenant:
    """One tenant at run time. Compare by ``id``; ``settings`` keeps the full config."""

    id: str
    index: int | None
    enabled: bool
    interval_s: float
    collectors: tuple[str, ...]
    tags: Tags
    rules: Rules
    settings: TenantSettings

    @classmethod
    def from_settings(cls, s: TenantSettings, index: int | None) -> "Tenant":
        return cls(id=s.id, index=index, enabled=s.enabled, interval_s=s.interval_s,
                   collectors=s.collectors, tags=tuple(sorted(s.tags.items())),
                   rules=Rules(s.include, s.exclude), settings=s)

    def merge_tags(self, series_tags: Tags) -> Tags:
        """The series' tags plus this tenant's; a tag the series sets itself wins."""
        if not self.tags:
            return series_tags
        keys = {k for k, _ in series_tags}
        # The pairs themselves are reused, not rebuilt: the registry keeps the result for as
        # long as the series lives, and the collector already holds the series' pairs.
        mine = tuple(p for p in self.tags if p[0] not in keys)
        return tuple(sorted(series_tags + mine))

    @property
    def has_credential(self) -> bool:
        return self.settings.api_key_env is not None or self.settings.api_key_file is not None

    def credential(self) -> str:
        """The credential sent to HTTP outputs, read now (a key file can be rotated).

        The value is registered with :func:`ingress.logs.register_secret` as soon
        as it is read, valid or not, and then checked: one line (a trailing line
        break is fine), no control characters, printable ASCII (what a
        ``Bearer`` token may hold). Errors name the tenant and the source (the
        variable or the file), never the value.

        Raises
        ------
        TenantCheckError
            ``credential_missing`` (nothing configured, variable unset, file absent),
            ``credential_unreadable`` (file exists but cannot be read, or the value
            is not one line of printable characters) or ``credential_empty``.
        """
        s = self.settings
        if s.api_key_env is not None:
            value = os.environ.get(s.api_key_env)
            if value is None:
                raise TenantCheckError("credential_missing", self.id,
                                       f"environment variable {s.api_key_env} is not set")
            where = f"environment variable {s.api_key_env}"
        elif s.api_key_file is not None:
            value = _read_key_file(self.id, s.api_key_file)
            where = f"key file {s.api_key_file}"
        else:
            raise TenantCheckError("credential_missing", self.id,
                                   "no api_key_env or api_key_file is configured")
        register_secret(value, f"{self.id}: {where}")
        value = value.strip()
        if not value:
            raise TenantCheckError("credential_empty", self.id, f"{where} is empty")
        problem = credential_problem(value)
        if problem:
            raise TenantCheckError("credential_unreadable", self.id, f"{where} {problem}")
        return value


def credential_problem(value: str) -> str | None:
    """Why ``value`` (already stripped) cannot be sent as a credential, or None.

    The answer never quotes the value.
    """
    if "\n" in value or "\r" in value:
        return "holds more than one line; a credential is a single line"
    bad = control_char_name(value)
    if bad:
        return f"contains {bad}; a credential is printable characters only"
    if not value.isascii():
        return "contains characters outside ASCII, which an Authorization header cannot carry"
    return None


def _read_key_file(tenant: str, path: Path) -> str:
    from ingress.secretref import file_mode_problem

    problem = file_mode_problem(path)
    if problem:  # checked at every read: a key file rotated with a loose mode is refused too
        raise TenantCheckError("credential_unreadable", tenant, f"key file {problem}")
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise TenantCheckError("credential_missing", tenant, f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TenantCheckError("credential_unreadable", tenant, f"key file {path}: {reason}") from None


class TenantSet:
    """Every configured tenant, by id and by run-time index."""

    def __init__(self, settings: Sequence[TenantSettings]) -> None:
        tenants, n = [], 0
        for s in settings:
            tenants.append(Tenant.from_settings(s, n if s.enabled else None))
            n += s.enabled
        self.all: tuple[Tenant, ...] = tuple(tenants)
        self.enabled: tuple[Tenant, ...] = tuple(t for t in tenants if t.enabled)
        self._by_id = {t.id: t for t in tenants}

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def __getitem__(self, tenant_id: str) -> Tenant:
        return self._by_id[tenant_id]

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._by_id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.all)

    def credential(self, tenant_id: str) -> str:
        """The current credential of ``tenant_id`` (see :meth:`Tenant.credential`)."""
        return self._by_id[tenant_id].credential()

    def check_credentials(self, tenant_ids: Sequence[str]) -> None:
        """Resolve each tenant's credential once; raise the first failure."""
        for tid in tenant_ids:
            self._by_id[tid].credential()
