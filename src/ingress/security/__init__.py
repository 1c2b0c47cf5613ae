"""Security building blocks: per-tenant keys and encryption at rest.

See docs/security.md (spool encryption), docs/keys.md (control-API keys, ``keys``)
and docs/audit.md (``audit``).
"""
from __future__ import annotations

from ingress.security.crypto import (
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    DecryptError,
    KeyFileError,
    KeyStore,
    TenantCipher,
)

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "DecryptError",
    "KeyFileError",
    "KeyStore",
    "TenantCipher",
]
