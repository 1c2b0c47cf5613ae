"""The dead-letter area: ``<data_dir>/deadletter/<tenant>/<output>/`` (docs/delivery.md).

Layout (directories 0700, files 0600)::

    <batch id>.batch    the payload as sent; sealed with the tenant's key when its spool encrypts
    <batch id>.json     why: {"batch_id", "tenant", "output", "host", "sample_count", "error",
                              "reason", "time", "encrypted"}
    <batch id>.replay   marker: `ingress deadletter replay` asked for it to be sent again
    ../counters.json    per tenant: {"dropped": n, "dropped_bytes": b}, cumulative (cap and age drops)

Everything here is plain file work; :class:`ingress.outputs.delivery.Delivery`
writes dead letters with :func:`write` and calls :meth:`Area.maintain` from its
workers, and the ``ingress deadletter`` command lists, replays and purges.

Replay goes through the normal path: the batch is appended to the tenant's
spool again (the same batch id; acknowledged at once for the tenant's other
outputs, which already had their answer) and only then are the dead-letter
files removed, so a crash in between sends it twice at worst, never zero times.
The pair's breaker, backoff and tenant checks apply to it like to any batch.
"""
from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ingress._fs import fsync_dir, write_atomic

__all__ = ["DeadLetter", "Area", "scan", "write", "remove", "mark_replay", "requeue", "counters",
           "private_dirs", "DIR"]

DIR = "deadletter"
_COUNTERS = "counters.json"


@dataclass
class DeadLetter:
    """One dead letter on disk."""

    tenant: str
    output: str
    batch_id: str  # 32 hex digits
    reason: str
    error: str
    size: int  # bytes of the .batch file
    time: float  # when it was set aside, seconds since the epoch
    sample_count: int
    encrypted: bool
    replay: bool  # queued for replay
    path: Path  # the .batch file

    def row(self) -> dict:
        return {"tenant": self.tenant, "output": self.output, "batch_id": self.batch_id,
                "reason": self.reason, "error": self.error, "size": self.size, "time": self.time,
                "sample_count": self.sample_count, "encrypted": self.encrypted, "replay": self.replay}


def private_dirs(base: Path, leaf: Path) -> None:
    """Create every directory below ``base`` down to ``leaf`` as 0700 (mkdir's
    ``parents=True`` would make the intermediate ones 0777 & ~umask); tighten one
    an older version left open to group or others."""
    p = base
    for part in leaf.relative_to(base).parts:
        p = p / part
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            st = os.stat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
                os.chmod(p, 0o700)
            continue
        os.chmod(p, 0o700)  # the umask filters mkdir's mode


def write(data_dir: str | os.PathLike, tenant: str, output: str, batch_id: bytes, payload: bytes,
          meta: Mapping[str, Any]) -> int:
    """Write one dead letter durably (payload first, then its .json, then the directory); returns
    the bytes written. Raises OSError (disk full ...): then nothing counts as set aside."""
    base = Path(data_dir)
    folder = base / DIR / tenant / output
    private_dirs(base, folder)
    name = batch_id.hex()
    doc = json.dumps(dict(meta), indent=1).encode() + b"\n"
    write_atomic(folder / f"{name}.batch", payload, sync_dir=False)
    write_atomic(folder / f"{name}.json", doc, sync_dir=False)
    fsync_dir(folder)  # durable before the spool forgets the batch
    return len(payload) + len(doc)


def _is_id(stem: str) -> bool:
    return len(stem) == 32 and all(c in "0123456789abcdef" for c in stem)


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def scan(data_dir: str | os.PathLike, tenant: str | None = None) -> list[DeadLetter]:
    """Every dead letter (of ``tenant``, or of all), oldest first. Unreadable metadata is
    reported with reason ``"(metadata unreadable)"`` and the file's mtime, never skipped."""
    root = Path(data_dir) / DIR
    tenants = [root / tenant] if tenant is not None else _dirs(root)
    out: list[DeadLetter] = []
    for tdir in tenants:
        for odir in _dirs(tdir):
            try:
                names = os.listdir(odir)
            except OSError:
                continue
            have = set(names)
            for n in names:
                if not n.endswith(".batch") or not _is_id(n[:-6]):
                    continue
                stem = n[:-6]
                p = odir / n
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                meta: dict = {}
                try:
                    meta = json.loads((odir / f"{stem}.json").read_bytes())
                    if not isinstance(meta, dict):
                        meta = {}
                except (OSError, ValueError):
                    meta = {}
                when = meta.get("time")
                sc = meta.get("sample_count", 0)
                out.append(DeadLetter(
                    tenant=tdir.name, output=odir.name, batch_id=stem,
                    reason=str(meta.get("reason", "(metadata unreadable)")), error=str(meta.get("error", "")),
                    size=st.st_size, time=float(when) if isinstance(when, (int, float)) else st.st_mtime,
                    sample_count=sc if isinstance(sc, int) and not isinstance(sc, bool) else 0,
                    encrypted=bool(meta.get("encrypted", False)), replay=f"{stem}.replay" in have, path=p))
    out.sort(key=lambda d: (d.time, d.tenant, d.output, d.batch_id))
    return out


def remove(dl: DeadLetter) -> None:
    """Remove a dead letter's files (payload last, so a half-removed one still lists)."""
    for suffix in (".replay", ".json", ".batch"):
        try:
            os.unlink(dl.path.with_suffix(suffix))
        except FileNotFoundError:
            pass
    fsync_dir(dl.path.parent)


def mark_replay(dl: DeadLetter) -> None:
    """Queue ``dl`` for replay: the agent (or :func:`requeue`) picks it up."""
    fd = os.open(dl.path.with_suffix(".replay"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    dl.replay = True


def counters(data_dir: str | os.PathLike, tenant: str) -> dict:
    """``{"dropped": n, "dropped_bytes": b}``: dead letters the cap or the age limit removed."""
    try:
        c = json.loads((Path(data_dir) / DIR / tenant / _COUNTERS).read_bytes())
        return {"dropped": int(c.get("dropped", 0)), "dropped_bytes": int(c.get("dropped_bytes", 0))}
    except (OSError, ValueError, TypeError, AttributeError):
        return {"dropped": 0, "dropped_bytes": 0}


def _add_counters(data_dir: Path, tenant: str, n: int, nbytes: int) -> None:
    c = counters(data_dir, tenant)
    c["dropped"] += n
    c["dropped_bytes"] += nbytes
    folder = data_dir / DIR / tenant
    private_dirs(data_dir, folder)
    write_atomic(folder / _COUNTERS, json.dumps(c).encode())


def usage(data_dir: str | os.PathLike, tenant: str) -> dict:
    """See :meth:`Area.usage`."""
    n = nbytes = queued = 0
    for odir in _dirs(Path(data_dir) / DIR / tenant):
        try:
            names = os.listdir(odir)
        except OSError:
            continue
        for name in names:
            if name.endswith(".batch") and _is_id(name[:-6]):
                n += 1
                try:
                    nbytes += os.stat(odir / name).st_size
                except OSError:
                    pass
            elif name.endswith(".replay"):
                queued += 1
    return {"count": n, "bytes": nbytes, "replay_queued": queued,
            "dropped": counters(data_dir, tenant)["dropped"]}


_shared: dict[Path, "Area"] = {}
_shared_lock = threading.Lock()


def shared_area(data_dir: str | os.PathLike, limits: Mapping[str, tuple[float, float]] | None,
                on_drop: Callable[[DeadLetter, str], None] | None) -> "Area":
    """One :class:`Area` per data directory in this process (every Delivery of an agent shares it)."""
    key = Path(data_dir).absolute()
    with _shared_lock:
        a = _shared.get(key)
        if a is None:
            a = _shared[key] = Area(key, limits, on_drop)
        else:
            if limits is not None:
                a.limits.update(limits)
            if on_drop is not None:
                a.on_drop = on_drop
        return a


def requeue(spool: Any, dl: DeadLetter, outputs: Iterable[str], now_ns: int | None = None) -> None:
    """Append ``dl``'s batch to the tenant's spool again for ``dl.output``, then remove it.

    The record is acknowledged at once for the tenant's other ``outputs``. Its
    spool time is now: the tenant's retention counts from the replay.

    Raises
    ------
    ingress.errors.IngressError
        The batch cannot be opened (key missing, tampered), is not a valid batch,
        belongs to another tenant, or the output no longer serves the tenant; the
        dead letter stays where it is.
    """
    from ingress import wire
    from ingress.errors import IngressError, SpoolError, WireError
    from ingress.security.crypto import open_dead_letter

    outs = list(outputs)
    if dl.output not in outs:
        raise IngressError(f"{dl.path}: output {dl.output!r} no longer serves tenant {dl.tenant!r}; "
                           "purge it or configure the output again")
    try:
        payload = open_dead_letter(dl.path.read_bytes(), dl.path)
    except SpoolError as e:
        raise IngressError(f"{dl.path}: cannot decrypt: {e}") from None
    try:
        b = wire.decode(payload)
    except WireError as e:
        raise IngressError(f"{dl.path}: not a valid batch: {e}") from None
    if b.tenant != dl.tenant or b.batch_id.hex() != dl.batch_id:
        raise IngressError(f"{dl.path}: holds batch {b.batch_id.hex()} of tenant {b.tenant!r}, "
                           f"not {dl.batch_id} of {dl.tenant!r}; not replayed")
    ref = spool.append(dl.tenant, bytes(b.batch_id), payload, len(b.timestamps),
                       time.time_ns() if now_ns is None else now_ns)
    for o in outs:
        if o != dl.output:
            spool.ack(dl.tenant, o, ref)
    remove(dl)


class Area:
    """The dead-letter area of a running agent: limits, replay pick-up, counters.

    Parameters
    ----------
    data_dir
        The agent's data directory.
    limits
        ``{tenant: (max_bytes, max_age_s)}``; a tenant without an entry has no limit.
    on_drop
        ``on_drop(dead_letter, why)`` for each dead letter the cap or the age limit removes.
    maintain_every_s
        Shortest time between two limit checks of one tenant.
    """

    def __init__(self, data_dir: str | os.PathLike, limits: Mapping[str, tuple[float, float]] | None = None,
                 on_drop: Callable[[DeadLetter, str], None] | None = None,
                 maintain_every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = Path(data_dir)
        self.limits = dict(limits or {})
        self.on_drop = on_drop
        self.maintain_every_s = maintain_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._bytes: dict[str, int] = {}  # payload bytes per tenant as of the last scan, plus writes since
        self.dropped: dict[str, int] = {}  # since this process started

    def write(self, tenant: str, output: str, batch_id: bytes, payload: bytes, meta: Mapping[str, Any]) -> int:
        n = write(self.data_dir, tenant, output, batch_id, payload, meta)
        lim = self.limits.get(tenant)
        with self._lock:
            known = self._bytes.get(tenant)
            if known is not None:
                self._bytes[tenant] = known + len(payload)
        if lim is not None and (known is None or (lim[0] and known + len(payload) > lim[0])):
            self.enforce(tenant, force=True)  # a scan only when the cap may be crossed
        return n

    def due(self, tenant: str) -> bool:
        with self._lock:
            return self.clock() >= self._next.get(tenant, 0.0)

    def enforce(self, tenant: str, force: bool = False, now: float | None = None) -> list[DeadLetter]:
        """Remove the tenant's dead letters past its age limit, then the oldest past its size cap."""
        lim = self.limits.get(tenant)
        with self._lock:
            if not force and self.clock() < self._next.get(tenant, 0.0):
                return []
            self._next[tenant] = self.clock() + self.maintain_every_s
            if lim is None:
                return []
            max_bytes, max_age = lim
            now = time.time() if now is None else now
            dls = [d for d in scan(self.data_dir, tenant) if not d.replay]
            gone: list[tuple[DeadLetter, str]] = []
            total = sum(d.size for d in dls)
            self._bytes[tenant] = total
            for d in dls:  # oldest first
                if max_age and now - d.time > max_age:
                    why = f"older than the dead-letter age limit of {max_age:g} s"
                elif max_bytes and total > max_bytes:
                    why = f"over the tenant's dead-letter cap of {int(max_bytes)} bytes"
                else:
                    continue
                try:
                    remove(d)
                except OSError:
                    continue
                total -= d.size
                gone.append((d, why))
            self._bytes[tenant] = total
            if gone:
                self.dropped[tenant] = self.dropped.get(tenant, 0) + len(gone)
                try:
                    _add_counters(self.data_dir, tenant, len(gone), sum(d.size for d, _ in gone))
                except OSError:
                    pass
        for d, why in gone:
            if self.on_drop is not None:
                try:
                    self.on_drop(d, why)
                except Exception:  # noqa: BLE001 - a reporting hook must not stop the cleanup
                    pass
        return [d for d, _ in gone]

    def usage(self, tenant: str) -> dict:
        """``{"count", "bytes", "replay_queued", "dropped"}`` of the tenant's area, read now
        (a directory listing and a stat per file; ``dropped`` is the persisted counter)."""
        return usage(self.data_dir, tenant)

    def replays(self, tenant: str, output: str) -> list[DeadLetter]:
        """Dead letters of this pair queued for replay."""
        folder = self.data_dir / DIR / tenant / output
        try:
            if not any(n.endswith(".replay") for n in os.listdir(folder)):
                return []
        except OSError:
            return []
        return [d for d in scan(self.data_dir, tenant) if d.output == output and d.replay]
