"""Security events: one warning log line and one audit line each (when the audit log is open).

The agent raises them for what an operator should look at even though the
agent keeps running:

``security.tamper_suspected``
    A spool record or region fails its checksum (CRC32C) or its authentication
    (AES-GCM tag, for encrypting tenants): bit rot, a damaged disk, or someone
    editing the spool. The record is skipped and counted, as before.
``security.config_changed``
    The configuration file changed on disk since the agent loaded it (checked
    once every 10 s): once per change, until a reload (SIGHUP or
    ``POST /v1/reload``) or a restart loads it.
``security.destination_refused``
    A reload named a destination outside ``agent.allow_destinations``
    (:mod:`ingress.destinations`).
"""
from __future__ import annotations

import os
from typing import Any

from ingress.logs import get_logger

__all__ = ["event", "ConfigWatch"]

log = get_logger("ingress.security")


def event(action: str, message: str, *, tenant: str | None = None, **fields: Any) -> None:
    """Log ``message`` at warning (``security`` field = ``action``) and audit it."""
    log.warning(message, security=action, tenant=tenant, **fields)
    try:
        from ingress.security import audit

        audit.record(action, "detected", tenant=tenant, message=message, **fields)
    except Exception:  # noqa: BLE001 - reporting never stops the agent
        pass


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ConfigWatch:
    """Notices the configuration file changing on disk after it was loaded."""

    EVERY_S = 10.0

    def __init__(self) -> None:
        self._settings: Any = None
        self._base: tuple[int, int, int] | None = None
        self._reported: tuple[int, int, int] | None = None
        self._next = 0.0

    def check(self, settings: Any, now: float) -> bool:
        """True when a change was reported now (at most once per change and settings)."""
        source = str(getattr(settings, "source", ""))
        if not source or source.startswith("<") or now < self._next:
            return False
        self._next = now + self.EVERY_S
        cur = _stat(source)
        if settings is not self._settings:  # loaded (or reloaded) since the last look: new baseline
            self._settings, self._base, self._reported = settings, cur, None
            return False
        if cur == self._base or cur == self._reported:
            return False
        self._reported = cur
        event("security.config_changed",
              f"configuration file {source} changed on disk since it was loaded; the running "
              "configuration stays in force until a reload (SIGHUP) or a restart", path=source)
        return True
