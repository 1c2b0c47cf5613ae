"""The base of the HTTP outputs that speak another protocol over the HTTP output's
connections (otlp, remote_write).

Both send the tenant id in ``tenant_header`` (``""`` sends none), keep one
encoder cache per tenant, and turn a batch that cannot be decoded into a
:class:`~ingress.errors.PermanentError` (a dead letter). A credential is
optional per tenant: delivery does not hold a tenant that has none (no
``Authorization`` is sent); an unreadable one still fails the send. Their
plugin declarations come from :func:`ingress.outputs.http.protocol_plugin`.
"""
from __future__ import annotations

import re
from typing import Any

from ingress.errors import ConfigError, PermanentError, WireError
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.http import HttpOutput


def check_tenant_header(name: str, tenant_header: str) -> str:
    """``tenant_header`` if it is a valid header name (or empty); ConfigError naming the output otherwise."""
    if tenant_header and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", tenant_header):
        raise ConfigError(f"outputs.{name}.tenant_header: {tenant_header!r} is not a valid header name")
    return tenant_header or ""


class ProtocolOutput(HttpOutput):
    """An :class:`HttpOutput` whose body is :meth:`encode`'s, with the tenant in ``tenant_header``.

    A subclass sets ``self.tenant_header`` (through :func:`check_tenant_header`)
    before calling ``__init__``, names its per-tenant cache in ``cache_class``
    and implements ``encode(payload, cache) -> (body, headers)``.
    """

    tenant_header = ""
    cache_class: type = dict

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.needs_credential = False
        self._caches: dict[str, Any] = {}

    def tenant_header_names(self) -> tuple[str, ...]:
        return (self.tenant_header,) if self.tenant_header else ()

    def encode(self, payload: bytes, cache: Any) -> tuple[bytes, dict[str, str]]:
        raise NotImplementedError

    def request(self, batch: OutgoingBatch) -> tuple[bytes, dict[str, str]]:
        with self._lock:
            cache = self._caches.get(batch.tenant)
            if cache is None:
                cache = self._caches[batch.tenant] = self.cache_class()
        try:
            body, headers = self.encode(batch.payload, cache)
        except WireError as e:
            raise PermanentError(f"{self.type} output {self.name}: batch {batch.batch_id.hex()} "
                                 f"cannot be decoded: {e}") from None
        if self.tenant_header:
            headers[self.tenant_header] = batch.tenant
        return body, headers
