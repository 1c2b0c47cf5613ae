"""Security building blocks: per-tenant keys and encryption at rest.

See docs/security.md. Today the spool is the only user of at-rest keys.
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
