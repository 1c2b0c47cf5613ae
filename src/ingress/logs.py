"""Structured logs: one event per line on stderr, JSON (default) or logfmt.

Every module logs through :func:`get_logger`, whose methods take the message and
structured fields as keyword arguments::

    log = get_logger("ingress.spool")
    log.warning("segment corrupt", tenant="acme", path=str(p), offset=1234)

A hot or failure-prone path uses a rate-limited view so one broken disk or one
tenant over its cardinality cap writes one line per interval, not one per pass;
the next line that gets through carries how many were suppressed::

    log.every(("refused", tenant), 60.0).warning("series refused", tenant=tenant)

It is plain :mod:`logging` underneath (logger ``ingress`` and its children), so
third-party handlers and pytest's ``caplog`` work unchanged.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Hashable, TextIO

__all__ = ["configure", "get_logger", "Logger", "RateLimiter", "StructuredFormatter"]

ROOT = "ingress"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _ts(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _flatten(prefix: str, v: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _flatten(f"{prefix}.{k}", x, out)
    else:
        out.append((prefix, v))


def _logfmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (int, float)):
        return repr(v)
    s = v if isinstance(v, str) else (json.dumps(v, default=str) if isinstance(v, (list, tuple)) else str(v))
    if s == "" or any(c in s for c in ' "=\\\n\t'):
        return json.dumps(s)
    return s


class StructuredFormatter(logging.Formatter):
    """Formats a record and its ``fields`` as one JSON object or one logfmt line."""

    def __init__(self, fmt: str = "json") -> None:
        super().__init__()
        if fmt not in ("json", "logfmt"):
            raise ValueError(f"unknown log format {fmt!r}")
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"ts": _ts(record.created), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields is None:  # a stdlib call with extra={...}: its keys are the fields
            fields = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        for k, v in fields.items():
            event[k if k not in ("ts", "level", "logger", "msg") else f"field.{k}"] = v
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        if self.fmt == "json":
            return json.dumps(event, default=str, separators=(",", ":"))
        flat: list[tuple[str, Any]] = []
        for k, v in event.items():
            _flatten(k, v, flat)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in flat)


_handler: logging.Handler | None = None


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Send the ``ingress`` loggers to ``stream`` (stderr) in ``fmt`` at ``level``.

    Calling it again replaces the previous configuration (``run`` calls it once
    the settings are known; ``--once`` keeps stdout for samples only).
    """
    global _handler
    root = logging.getLogger(ROOT)
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    _handler.setFormatter(StructuredFormatter(fmt))
    root.addHandler(_handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False


class RateLimiter:
    """Lets one event per key through per ``interval_s``; counts the rest.

    Thread-safe; the clock is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[Hashable, list] = {}  # key -> [next allowed time, suppressed]

    def allow(self, key: Hashable, interval_s: float) -> int | None:
        """``None`` when suppressed, else how many were suppressed since the last one."""
        now = self._clock()
        with self._lock:
            st = self._state.get(key)
            if st is None or now >= st[0]:
                n = st[1] if st else 0
                self._state[key] = [now + interval_s, 0]
                return n
            st[1] += 1
            return None


class Logger:
    """A :mod:`logging` logger whose calls take structured fields as keywords."""

    __slots__ = ("_l", "_limiter")

    def __init__(self, name: str, limiter: RateLimiter | None = None) -> None:
        self._l = logging.getLogger(name)
        self._limiter = limiter or RateLimiter()

    @property
    def name(self) -> str:
        return self._l.name

    def _log(self, level: int, msg: str, fields: dict, exc_info: bool = False) -> None:
        if self._l.isEnabledFor(level):
            self._l.log(level, msg, extra={"fields": fields}, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, fields, exc_info=True)

    def every(self, key: Hashable, interval_s: float = 60.0) -> "_Limited":
        """A view that logs at most once per ``interval_s`` for ``key``."""
        return _Limited(self, key, interval_s)


class _Limited:
    __slots__ = ("_log", "_key", "_interval")

    def __init__(self, log: Logger, key: Hashable, interval_s: float) -> None:
        self._log, self._key, self._interval = log, key, interval_s

    def _emit(self, level: int, msg: str, fields: dict, exc_info: bool = False) -> bool:
        if not self._log._l.isEnabledFor(level):
            return False
        n = self._log._limiter.allow((self._log.name, self._key), self._interval)
        if n is None:
            return False
        if n:
            fields["suppressed"] = n
        self._log._l.log(level, msg, extra={"fields": fields}, exc_info=exc_info, stacklevel=3)
        return True

    def debug(self, msg: str, **fields: Any) -> bool:
        return self._emit(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> bool:
        return self._emit(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> bool:
        return self._emit(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> bool:
        return self._emit(logging.ERROR, msg, fields)

    def exception(self, msg: str, **fields: Any) -> bool:
        return self._emit(logging.ERROR, msg, fields, exc_info=True)


_loggers: dict[str, Logger] = {}
_shared_limiter = RateLimiter()


def get_logger(name: str = ROOT) -> Logger:
    """The structured logger ``name`` (one instance per name, sharing one rate limiter)."""
    log = _loggers.get(name)
    if log is None:
        log = _loggers.setdefault(name, Logger(name, _shared_limiter))
    return log
