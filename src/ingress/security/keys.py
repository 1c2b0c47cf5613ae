"""Control-API keys: created, listed, revoked and rotated by ``ingress keys``; checked by the agent.

Files (docs/keys.md)
--------------------
``<data_dir>/api_keys.json``
    ``{"version": 1, "keys": [record, ...]}``, mode 0600. A record holds the key
    id, tenant, scope, note, times and ``salt`` + ``hash``; never the secret.
``<data_dir>/api_keys.secret``
    32 random bytes, mode 0600: the server secret of the HMAC.
``<data_dir>/api_keys.lock``
    ``flock`` target that serialises writers (two ``ingress keys`` at once).

A key reads ``ingk_<id>_<secret>``: ``id`` is 12 hex digits (public, written in
``keys list`` and the audit log), ``secret`` is 32 random bytes, base64url. The
file stores ``HMAC-SHA-256(server secret, salt || secret)`` with a per-key
16-byte salt, compared with :func:`hmac.compare_digest`.

Every write goes to a temporary file that is fsynced and renamed over the old
one, so the agent never reads half a file; the agent notices a change by the
file's (inode, mtime, size) at the next request and reloads it, so created and
revoked keys take effect without a restart. A key file or data directory that
group or others may access is refused (fail closed: no key is accepted).
"""
from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ingress.errors import IngressError

__all__ = ["KeyStore", "KeyRecord", "KeyError_", "KEY_RE", "ROTATE_GRACE_S", "parse_expiry",
           "redact_keys", "check_private"]

KEY_FILE = "api_keys.json"
SECRET_FILE = "api_keys.secret"
LOCK_FILE = "api_keys.lock"
KEY_RE = re.compile(r"ingk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_ID_RE = re.compile(r"^[0-9a-f]{12}$")
SCOPES = ("tenant", "admin")
ROTATE_GRACE_S = 24 * 3600.0  # the old key of a rotation stays valid this long (docs/keys.md)


class KeyError_(IngressError):
    """A key file problem or a bad ``ingress keys`` request; the message names the file or key."""


def check_private(path: Path, want: int) -> None:
    """Refuse ``path`` when group or others have any access; the message says how to fix it."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyError_(f"{path}: mode {mode:04o} lets group or others in; "
                        f"run: chmod {want:o} {path}")


def parse_expiry(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` (or any agent duration) -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([dw])\s*", text or "")
    if m:
        return int(m.group(1)) * (86400 if m.group(2) == "d" else 7 * 86400)
    from ingress.config import parse_duration

    try:
        v = parse_duration(text)
    except Exception:  # noqa: BLE001 - config's own message names what it accepts
        v = None
    if v is None or not v > 0:
        raise KeyError_(f"--expires: {text!r} is not a duration (e.g. 30d, 12h, 90m)")
    return v


def redact_keys(text: str) -> str:
    """Replace every full key in ``text`` with its id (``ingk_<id>_…``)."""
    return KEY_RE.sub(lambda m: f"ingk_{m.group(1)}_[redacted]", text)


@dataclass
class KeyRecord:
    id: str
    tenant: str
    scope: str
    salt: str
    hash: str
    created: float
    name: str = ""
    expires: float | None = None
    revoked: float | None = None
    rotated_to: str | None = None
    rotated_from: str | None = None
    extra: dict = field(default_factory=dict)

    def state(self, now: float) -> str:
        if self.revoked is not None and self.revoked <= now:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def public(self, now: float) -> dict:
        """What ``keys list`` and the control API may show: never salt, hash or secret."""
        return {"id": self.id, "tenant": self.tenant, "scope": self.scope, "name": self.name,
                "created": self.created, "expires": self.expires, "revoked": self.revoked,
                "rotated_to": self.rotated_to, "rotated_from": self.rotated_from, "state": self.state(now)}


@dataclass(frozen=True)
class Verdict:
    """Outcome of :meth:`KeyStore.verify`: ``ok``, or why not (``malformed``, ``unknown``,
    ``expired``, ``revoked``); ``record`` is set when the id was known."""

    outcome: str
    record: KeyRecord | None = None
    key_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class KeyStore:
    """The key file of one data directory.

    Parameters
    ----------
    data_dir
        The agent's ``agent.data_dir``.
    clock
        Wall-clock seconds (injectable for tests).
    """

    def __init__(self, data_dir: str | os.PathLike, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / KEY_FILE
        self.secret_path = self.dir / SECRET_FILE
        self.clock = clock
        self._lock = threading.Lock()
        self._sig: tuple | None = None
        self._keys: dict[str, KeyRecord] = {}
        self._secret: bytes | None = None
        self._error: str | None = None

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict[str, KeyRecord]:
        if not self.path.exists():
            return {}
        check_private(self.dir, 0o700)
        check_private(self.path, 0o600)
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            recs = {}
            for r in doc["keys"]:
                known = {k: r[k] for k in KeyRecord.__dataclass_fields__ if k in r and k != "extra"}
                rec = KeyRecord(**known)
                recs[rec.id] = rec
        except (ValueError, KeyError, TypeError) as e:
            raise KeyError_(f"{self.path}: not a valid key file ({type(e).__name__}: {e})") from None
        return recs

    def _read_secret(self, create: bool) -> bytes:
        if not self.secret_path.exists():
            if not create:
                raise KeyError_(f"{self.secret_path}: missing; create a key with `ingress keys create`")
            _write_private(self.secret_path, os.urandom(32))
        check_private(self.secret_path, 0o600)
        data = self.secret_path.read_bytes()
        if len(data) != 32:
            raise KeyError_(f"{self.secret_path}: expected 32 bytes, found {len(data)}")
        return data

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, stat.S_IMODE(st.st_mode))

    def refresh(self) -> None:
        """Reload the key file if it changed since the last look (one ``stat``)."""
        sig = self._signature()
        if sig == self._sig and self._error is None:
            return
        with self._lock:
            sig = self._signature()
            if sig == self._sig and self._error is None:
                return
            try:
                self._keys = self._read()
                self._secret = self._read_secret(create=False) if self._keys else None
                self._error = None
            except (KeyError_, OSError) as e:
                self._keys, self._secret = {}, None  # fail closed
                self._error = str(e)
            self._sig = sig

    @property
    def error(self) -> str | None:
        """Why no key is accepted right now (a refused or corrupt key file), else None."""
        return self._error

    def records(self) -> list[KeyRecord]:
        """Every key, oldest first (reads the file)."""
        return sorted(self._read().values(), key=lambda r: (r.created, r.id))

    # ------------------------------------------------------------------ checking
    def verify(self, token: str) -> Verdict:
        """Check a presented key against the file as it is now."""
        m = KEY_RE.fullmatch(token or "")
        if not m:
            return Verdict("malformed")
        self.refresh()
        kid, secret = m.group(1), m.group(2)
        rec = self._keys.get(kid)
        if rec is None or self._secret is None:
            return Verdict("unknown", key_id=kid)
        import hmac

        try:
            raw = base64.urlsafe_b64decode(secret + "=")
        except ValueError:
            return Verdict("malformed", key_id=kid)
        want = bytes.fromhex(rec.hash)
        got = hmac.digest(self._secret, bytes.fromhex(rec.salt) + raw, "sha256")
        if not hmac.compare_digest(want, got):
            return Verdict("unknown", key_id=kid)
        st = rec.state(self.clock())
        return Verdict("ok" if st == "active" else st, rec, kid)

    # ------------------------------------------------------------------ writing
    def _locked(self) -> "_FileLock":
        self._ensure_dir()
        return _FileLock(self.dir / LOCK_FILE)

    def _ensure_dir(self) -> None:
        created = not self.dir.exists()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            os.chmod(self.dir, 0o700)
        check_private(self.dir, 0o700)

    def _write(self, recs: dict[str, KeyRecord]) -> None:
        doc = {"version": 1, "keys": [{k: v for k, v in asdict(r).items() if k != "extra"}
                                      for r in sorted(recs.values(), key=lambda r: (r.created, r.id))]}
        _write_private(self.path, (json.dumps(doc, indent=1) + "\n").encode())

    def _new(self, recs: dict, secret: bytes, tenant: str, scope: str, expires_s: float | None,
             name: str, now: float) -> tuple[KeyRecord, str]:
        import hmac

        if scope not in SCOPES:
            raise KeyError_(f"--scope: {scope!r} is not one of {', '.join(SCOPES)}")
        while True:
            kid = os.urandom(6).hex()
            if kid not in recs:
                break
        raw = os.urandom(32)
        salt = os.urandom(16)
        digest = hmac.digest(secret, salt + raw, "sha256")
        rec = KeyRecord(id=kid, tenant=tenant, scope=scope, salt=salt.hex(), hash=digest.hex(),
                        created=now, name=name, expires=None if expires_s is None else now + expires_s)
        token = f"ingk_{kid}_{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"
        return rec, token

    def create(self, tenant: str, scope: str = "tenant", expires_s: float | None = None,
               name: str = "") -> tuple[KeyRecord, str]:
        """A new key: returns its record and the full key (shown once, never stored)."""
        with self._locked():
            recs = self._read()
            secret = self._read_secret(create=True)
            rec, token = self._new(recs, secret, tenant, scope, expires_s, name, self.clock())
            recs[rec.id] = rec
            self._write(recs)
        return rec, token

    def _get(self, recs: dict, kid: str) -> KeyRecord:
        kid = kid.removeprefix("ingk_")
        if not _ID_RE.match(kid) or kid not in recs:
            raise KeyError_(f"no key with id {kid[:40]!r} in {self.path} (see `ingress keys list`)")
        return recs[kid]

    def revoke(self, kid: str) -> KeyRecord:
        """Revoke a key now; revoking a revoked key changes nothing."""
        with self._locked():
            recs = self._read()
            rec = self._get(recs, kid)
            if rec.revoked is None or rec.revoked > self.clock():
                rec.revoked = self.clock()
                self._write(recs)
        return rec

    def rotate(self, kid: str, grace_s: float = ROTATE_GRACE_S) -> tuple[KeyRecord, KeyRecord, str]:
        """Issue a successor of ``kid`` (same tenant, scope, note and lifetime); the old key
        stays valid ``grace_s`` more seconds. Returns (old record, new record, new key)."""
        with self._locked():
            recs = self._read()
            old = self._get(recs, kid)
            now = self.clock()
            if old.state(now) != "active":
                raise KeyError_(f"key {old.id} is {old.state(now)}; only an active key can be rotated "
                                "(create a new one with `ingress keys create`)")
            life = None if old.expires is None else max(old.expires - old.created, 1.0)
            secret = self._read_secret(create=True)
            new, token = self._new(recs, secret, old.tenant, old.scope, life, old.name, now)
            new.rotated_from = old.id
            old.rotated_to = new.id
            end = now + grace_s
            old.revoked = end if old.revoked is None else min(old.revoked, end)
            recs[new.id] = new
            self._write(recs)
        return old, new, token

    def iter_public(self) -> Iterator[dict]:
        now = self.clock()
        for r in self.records():
            yield r.public(now)


def _write_private(path: Path, data: bytes) -> None:
    from ingress._fs import write_atomic

    write_atomic(path, data, mode=0o600)


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_FileLock":
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock
