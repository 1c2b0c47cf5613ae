"""Per-tenant keys and authenticated encryption at rest (AES-256-GCM).

Key files
---------
One key per tenant in ``<data_dir>/keys/<tenant>.key``: exactly 32 random bytes
(``os.urandom``), nothing else. The directory is created ``0700`` and every key
file ``0600``; a key file that group or others may read is refused, as ssh does,
because a key everyone can read protects nothing. A key is created once, by
writing ``.<tenant>.key.<random>.tmp``, fsyncing it and hard-linking it to the
final name (:func:`ingress._fs.write_atomic` with ``replace=False``: ``link``
fails when the name exists, so two writers can never replace each other's
key), then fsyncing the directory. Stray ``*.tmp`` files
are removed by :meth:`KeyStore.clean_temp` at spool open.

Sealed blob
-----------
``seal`` returns ``nonce (12 bytes, random) || ciphertext || tag (16 bytes)``.
The associated data binds the blob to its place::

    b"ingress-spool/1\\0" || u8 len(tenant) || tenant (ascii)
        || batch_id (16) || u32le sample_count || i64le first_ts_ns

so a record copied to another tenant, or given another batch id, sample count
or first timestamp, fails authentication instead of decrypting to something.

Sealed dead letter
------------------
A dead letter of an encrypting tenant (``<data_dir>/deadletter/<tenant>/<output>/<id>.batch``)
is sealed with the same tenant key, in a self-describing file::

    b"IDLS" || u8 version = 1 || u8 len(tenant) || tenant (ascii) || batch_id (16)
        || key fingerprint (8) || nonce (12) || ciphertext || tag (16)

The associated data is ``b"ingress-deadletter/1\\0"`` followed by every header
byte before the nonce, so the tenant and batch id are bound to the blob and a
dead letter can never pass for a spool record (or the other way round).
:func:`open_dead_letter` reads one back with the key found next to it.

The key fingerprint (first 8 bytes of SHA-256 over a domain prefix and the key)
is written into every encrypted spool segment header; a mismatch at open names
the tenant and the key file rather than producing authentication failures
record by record.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

from ingress._fs import write_atomic
from ingress.errors import SpoolError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
_AAD_PREFIX = b"ingress-spool/1\0"
_FP_PREFIX = b"ingress-spool-key-fingerprint/1\0"
_AAD_TAIL = struct.Struct("<Iq")
DEAD_LETTER_MAGIC = b"IDLS"
_DL_VERSION = 1
_DL_AAD_PREFIX = b"ingress-deadletter/1\0"


class KeyFileError(SpoolError):
    """A tenant's key file is missing, unreadable, malformed, too open or not the
    key the data was written with. The message names the tenant and the file."""


class DecryptError(SpoolError):
    """A sealed blob failed authentication: tampered, truncated, moved from
    another tenant or written under another key."""


def fingerprint(key: bytes) -> bytes:
    """Eight bytes that identify ``key`` without revealing it."""
    import hashlib  # on first use: OpenSSL's libcrypto is ~3.5 MB of RSS an unencrypted agent skips

    return hashlib.sha256(_FP_PREFIX + key).digest()[:8]


def associated_data(tenant: str, batch_id: bytes, sample_count: int, first_ts_ns: int) -> bytes:
    t = tenant.encode("ascii")
    return b"".join((_AAD_PREFIX, bytes((len(t),)), t, batch_id,
                     _AAD_TAIL.pack(sample_count, first_ts_ns)))


class TenantCipher:
    """AES-256-GCM bound to one tenant.

    Parameters
    ----------
    tenant : str
        Tenant id; part of the associated data of every blob.
    key : bytes
        32-byte key.
    key_path : pathlib.Path or str
        Where the key lives; only used in error messages.
    """

    __slots__ = ("tenant", "key_path", "fingerprint", "_aead")

    def __init__(self, tenant: str, key: bytes, key_path: Path | str = "<memory>") -> None:
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"{key_path}: tenant {tenant!r}: key is {len(key)} bytes, expected {KEY_SIZE}")
        self.tenant = tenant
        self.key_path = str(key_path)
        self.fingerprint = fingerprint(key)
        # Imported here: the cryptography bindings cost ~10 MB of RSS, paid only
        # by an agent that has a tenant with encryption on.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def seal(self, batch_id: bytes, plaintext: bytes, sample_count: int, first_ts_ns: int) -> bytes:
        """Encrypt ``plaintext``; returns nonce || ciphertext || tag."""
        nonce = os.urandom(NONCE_SIZE)
        aad = associated_data(self.tenant, batch_id, sample_count, first_ts_ns)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, batch_id: bytes, blob: bytes, sample_count: int, first_ts_ns: int) -> bytes:
        """Decrypt and authenticate a blob from :meth:`seal`.

        Raises
        ------
        DecryptError
            When the blob does not authenticate under this tenant's key and
            these header fields.
        """
        if len(blob) < OVERHEAD:
            raise DecryptError(f"tenant {self.tenant!r}: sealed record is {len(blob)} bytes, shorter than nonce+tag")
        aad = associated_data(self.tenant, batch_id, sample_count, first_ts_ns)
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptError(
                f"tenant {self.tenant!r}: batch {batch_id.hex()} does not authenticate with key "
                f"{self.key_path} (tampered, moved from another tenant, or another key)") from None


def _dead_letter_header(tenant: str, batch_id: bytes, fp: bytes) -> bytes:
    t = tenant.encode("ascii")
    return b"".join((DEAD_LETTER_MAGIC, bytes((_DL_VERSION, len(t))), t, batch_id, fp))


def seal_dead_letter(cipher: TenantCipher, batch_id: bytes, payload: bytes) -> bytes:
    """A dead letter's file content, sealed with the tenant's key (format in the module doc)."""
    head = _dead_letter_header(cipher.tenant, bytes(batch_id), cipher.fingerprint)
    nonce = os.urandom(NONCE_SIZE)
    return head + nonce + cipher._aead.encrypt(nonce, bytes(payload), _DL_AAD_PREFIX + head)


def dead_letter_header(blob: bytes) -> tuple[str, bytes, bytes, int] | None:
    """``(tenant, batch_id, key fingerprint, header length)`` of a sealed dead letter;
    None when ``blob`` is not one (a plaintext dead letter is a plain batch)."""
    if len(blob) < 6 or blob[:4] != DEAD_LETTER_MAGIC or blob[4] != _DL_VERSION:
        return None
    n = blob[5]
    end = 6 + n + 16 + 8
    if len(blob) < end + OVERHEAD:
        return None
    try:
        tenant = bytes(blob[6:6 + n]).decode("ascii")
    except UnicodeDecodeError:
        return None
    return tenant, bytes(blob[6 + n:6 + n + 16]), bytes(blob[end - 8:end]), end


def open_dead_letter(blob: bytes, path: Path | str | None) -> bytes:
    """The batch inside a dead letter: ``blob`` itself when it is not sealed, else decrypted
    with ``<data_dir>/keys/<tenant>.key``, ``data_dir`` found from the file's place
    (``<data_dir>/deadletter/<tenant>/<output>/<id>.batch``).

    Raises
    ------
    KeyFileError
        The file is not where its key can be found (stdin, or moved), or the key
        is missing, unreadable or another key.
    DecryptError
        It does not authenticate (tampered, or another tenant's).
    """
    h = dead_letter_header(blob)
    if h is None:
        return blob
    tenant, batch_id, fp, end = h
    what = f"encrypted dead letter of tenant {tenant!r} (batch {batch_id.hex()})"
    p = Path(path).absolute() if path is not None else None
    if p is None or len(p.parents) < 4 or p.parents[2].name != "deadletter" or p.parents[1].name != tenant:
        raise KeyFileError(f"{what}: its key is found from where it lies, <data_dir>/deadletter/{tenant}/"
                           f"<output>/; give that path (not stdin or a copy elsewhere)")
    ks = KeyStore(p.parents[3])
    cipher = TenantCipher(tenant, ks.load(tenant), ks.path(tenant))
    if cipher.fingerprint != fp:
        raise KeyFileError(f"{ks.path(tenant)}: tenant {tenant!r}: this key (fingerprint "
                           f"{cipher.fingerprint.hex()}) is not the key the {what} was sealed with "
                           f"(fingerprint {fp.hex()})")
    from cryptography.exceptions import InvalidTag

    try:
        return cipher._aead.decrypt(blob[end:end + NONCE_SIZE], bytes(blob[end + NONCE_SIZE:]),
                                    _DL_AAD_PREFIX + bytes(blob[:end]))
    except InvalidTag:
        raise DecryptError(f"{what}: does not authenticate with key {ks.path(tenant)} (damaged or tampered)") from None


class KeyStore:
    """The key files of every tenant under ``<data_dir>/keys``.

    Parameters
    ----------
    data_dir : pathlib.Path or str
        The agent's data directory.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir) / "keys"

    def path(self, tenant: str) -> Path:
        return self.dir / f"{tenant}.key"

    def exists(self, tenant: str) -> bool:
        return self.path(tenant).exists()

    def clean_temp(self) -> int:
        """Remove key files a crash left half-written; returns how many."""
        n = 0
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return 0
        for name in names:
            if name.endswith(".tmp"):
                try:
                    os.unlink(self.dir / name)
                    n += 1
                except FileNotFoundError:
                    pass
        return n

    def load(self, tenant: str) -> bytes:
        """Read a tenant's key, refusing anything that is not a private 32-byte file."""
        p = self.path(tenant)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise KeyFileError(f"{p}: tenant {tenant!r}: key file is missing") from None
        except OSError as e:
            raise KeyFileError(f"{p}: tenant {tenant!r}: cannot open key file: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{p}: tenant {tenant!r}: key file is not a regular file")
            if st.st_mode & 0o077:
                raise KeyFileError(
                    f"{p}: tenant {tenant!r}: key file mode is {stat.S_IMODE(st.st_mode):04o}; "
                    f"it must not be readable by group or others (chmod 600)")
            key = os.read(fd, KEY_SIZE + 1)
        finally:
            os.close(fd)
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"{p}: tenant {tenant!r}: key file holds {len(key)} bytes, expected {KEY_SIZE}")
        return key

    def create(self, tenant: str) -> bytes:
        """Create a new random key; fails when the tenant already has one."""
        self._ensure_dir()
        p = self.path(tenant)
        key = os.urandom(KEY_SIZE)
        try:
            write_atomic(p, key, mode=0o600, replace=False)
        except FileExistsError:
            raise KeyFileError(f"{p}: tenant {tenant!r}: key file already exists; refusing to replace it") from None
        return key

    def load_or_create(self, tenant: str) -> bytes:
        if self.path(tenant).exists():
            return self.load(tenant)
        try:
            return self.create(tenant)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise KeyFileError(f"{self.path(tenant)}: tenant {tenant!r}: cannot create key: {e.strerror}") from None
            raise

    def cipher(self, tenant: str, create: bool = False) -> TenantCipher:
        """A :class:`TenantCipher` for the tenant's key (created first when ``create``)."""
        key = self.load_or_create(tenant) if create else self.load(tenant)
        return TenantCipher(tenant, key, self.path(tenant))

    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(self.dir)
        if st.st_mode & 0o077:
            os.chmod(self.dir, 0o700)
