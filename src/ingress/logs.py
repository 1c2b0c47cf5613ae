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

Secrets never reach a log line: every credential is registered with
:func:`register_secret` as it is read, and :class:`RedactingFilter` (on the
handler :func:`configure` installs and on :data:`logging.lastResort`) replaces
each registered secret, and the escaped forms it takes inside a ``repr`` or
JSON, by ``[redacted]`` in the message, the structured fields, the exception
text and the traceback. :func:`redact` is the same for any other text
(:class:`ingress.errors.IngressError` passes its message through it).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Hashable, TextIO

__all__ = ["configure", "get_logger", "Logger", "RateLimiter", "StructuredFormatter",
           "register_secret", "redact", "RedactingFilter", "REDACTED",
           "install_excepthook"]

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


# --------------------------------------------------------------------------- secrets

REDACTED = "[redacted]"
# Shorter fragments are not redacted: replacing every "ab" in every line would
# destroy the logs and hide nothing worth hiding.
MIN_SECRET_CHARS = 4
_PER_SOURCE = 4  # values kept per source (a rotated key stays redacted for a while)


def _variants(value: str) -> set[str]:
    """``value``, its lines, and the escaped forms each takes in a repr or in JSON."""
    parts = {value, value.strip()}
    parts.update(line.strip() for line in value.splitlines())
    out: set[str] = set()
    for p in parts:
        if len(p) < MIN_SECRET_CHARS:
            continue
        out.add(p)
        out.add(repr(p)[1:-1])
        out.add(json.dumps(p)[1:-1])
        out.add(json.dumps(p, ensure_ascii=False)[1:-1])
        out.add(p.encode("unicode_escape").decode("ascii"))
        out.add(repr(p.encode("utf-8", "backslashreplace"))[2:-1])
        out.add(repr(p.encode("latin-1", "backslashreplace"))[2:-1])
    return {v for v in out if len(v) >= MIN_SECRET_CHARS}


class SecretRegistry:
    """The secrets known to this process, and one regular expression that finds them all.

    Thread-safe. Each ``source`` (say ``"acme: environment variable ACME_KEY"``)
    keeps its last few values, so re-reading a rotated key file at every use does
    not grow the registry without bound.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_source: dict[str, deque[str]] = {}
        self._rx: re.Pattern | None = None

    def add(self, value: str, source: str = "") -> None:
        if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_CHARS:
            return
        with self._lock:
            q = self._by_source.setdefault(source, deque(maxlen=_PER_SOURCE if source else 256))
            if value in q:
                return
            q.append(value)
            found: set[str] = set()
            for vals in self._by_source.values():
                for v in vals:
                    found |= _variants(v)
            # Longest first, so a whole secret wins over one of its lines.
            self._rx = re.compile("|".join(map(re.escape, sorted(found, key=len, reverse=True))))

    def clear(self) -> None:
        with self._lock:
            self._by_source.clear()
            self._rx = None

    def __bool__(self) -> bool:
        return self._rx is not None

    def redact(self, text: str) -> str:
        rx = self._rx
        if rx is None or not isinstance(text, str):
            return text
        return rx.sub(REDACTED, text)

    def redact_value(self, v: Any, _depth: int = 0) -> Any:
        """``v`` with every string in it redacted (dicts, lists and tuples are walked)."""
        if self._rx is None:
            return v
        if isinstance(v, str):
            return self.redact(v)
        if _depth > 16:
            return v if isinstance(v, (int, float, bool, type(None))) else self.redact(str(v))
        if isinstance(v, dict):
            return {self.redact_value(k, _depth + 1): self.redact_value(x, _depth + 1) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(self.redact_value(x, _depth + 1) for x in v)
        if isinstance(v, (int, float, bool, type(None))):
            return v
        return self.redact(str(v))


SECRETS = SecretRegistry()


def register_secret(value: str, source: str = "") -> None:
    """Make ``value`` (and each of its lines) unprintable in every log line from now on."""
    SECRETS.add(value, source)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    return SECRETS.redact(text)


class RedactingFilter(logging.Filter):
    """Redacts registered secrets from a record: message, fields, exception and stack text.

    It rewrites the record in place (``msg`` becomes the formatted, redacted
    message and ``args`` is cleared; the traceback is formatted once into
    ``exc_text``), so every handler after it sees the redacted record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not SECRETS:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log what there is
            msg = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = SECRETS.redact(msg), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = SECRETS.redact_value(fields)
        else:
            for k, v in list(record.__dict__.items()):
                if k not in _RECORD_ATTRS:
                    setattr(record, k, SECRETS.redact_value(v))
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = SECRETS.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = SECRETS.redact(record.stack_info)
        return True


_PLAIN = logging.Formatter()
_REDACTING = RedactingFilter()
# Lines logged before configure() (or by a library with no handler) go to lastResort.
if _REDACTING not in logging.lastResort.filters:
    logging.lastResort.addFilter(_REDACTING)


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
        if record.exc_info or record.exc_text:
            event["exc"] = record.exc_text or self.formatException(record.exc_info)
        if SECRETS:  # also when this formatter sits on a handler without the filter
            event = SECRETS.redact_value(event)
        if self.fmt == "json":
            return json.dumps(event, default=str, separators=(",", ":"))
        flat: list[tuple[str, Any]] = []
        for k, v in event.items():
            _flatten(k, v, flat)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in flat)


_handler: logging.Handler | None = None


def _rotating_file(path: str, max_bytes: int, keep: int) -> logging.Handler:
    """Size-based rotation (``FILE.1`` newest ... ``FILE.<keep>``); with ``keep = 0`` the file starts over."""
    import logging.handlers  # only with agent.log_file: not on the default start path

    class RotatingFile(logging.handlers.RotatingFileHandler):
        def doRollover(self) -> None:
            if self.backupCount > 0:
                super().doRollover()
                return
            if self.stream:
                self.stream.close()
            self.stream = open(self.baseFilename, "w", encoding=self.encoding)  # noqa: SIM115

    return RotatingFile(path, maxBytes=max(1, int(max_bytes)), backupCount=max(0, int(keep)), encoding="utf-8")


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None, *,
              file: str | os.PathLike | None = None, max_bytes: int = 10 << 20, keep: int = 5) -> None:
    """Send the ``ingress`` loggers to ``stream`` (stderr) in ``fmt`` at ``level``.

    With ``file`` (``agent.log_file``) the lines go to that file instead,
    rotated when it would pass ``max_bytes`` (``agent.log_max_mb``), keeping
    ``keep`` old files (``agent.log_keep``). Opening it may raise ``OSError``.

    Calling it again replaces the previous configuration (``run`` calls it once
    the settings are known; ``--once`` keeps stdout for samples only).
    """
    global _handler
    root = logging.getLogger(ROOT)
    new: logging.Handler
    if file is not None:
        new = _rotating_file(os.fspath(file), max_bytes, keep)
    else:
        new = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if _handler is not None:
        root.removeHandler(_handler)
        if isinstance(_handler, logging.FileHandler):
            _handler.close()
    _handler = new
    _handler.addFilter(_REDACTING)
    _handler.setFormatter(StructuredFormatter(fmt))
    root.addHandler(_handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False


def install_excepthook() -> None:
    """Route exceptions that escape a thread into the ``ingress`` log (so they are redacted).

    Without it :mod:`threading` prints such a traceback straight to stderr,
    past every handler and filter.
    """
    log = logging.getLogger(ROOT)

    def hook(a: threading.ExceptHookArgs) -> None:
        if a.exc_type is SystemExit:
            return
        name = a.thread.name if a.thread is not None else "?"
        log.error("thread %s stopped by an exception", name,
                  exc_info=(a.exc_type, a.exc_value, a.exc_traceback))

    threading.excepthook = hook


class RateLimiter:
    """Lets one event per key through per ``interval_s``; counts the rest.

    Thread-safe; the clock is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[Hashable, list] = {}  # key -> [next allowed time, suppressed]

    def allow(self, key: Hashable, interval_s: float, force: bool = False) -> int | None:
        """``None`` when suppressed, else how many were suppressed since the last one.

        ``force`` lets this one through whatever the interval (the first failure
        of a new episode, say) and starts a new interval from it."""
        now = self._clock()
        with self._lock:
            st = self._state.get(key)
            if force or st is None or now >= st[0]:
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

    def every(self, key: Hashable, interval_s: float = 60.0, *, force: bool = False,
              limiter: RateLimiter | None = None) -> "_Limited":
        """A view that logs at most once per ``interval_s`` for ``key``.

        ``force``: this line goes out anyway and starts a new interval.
        ``limiter``: a :class:`RateLimiter` of the caller's own (its own clock,
        or state that must not be shared with other instances); default the one
        every logger shares. Each method returns whether the line went out.
        """
        return _Limited(self, key, interval_s, force, limiter or self._limiter)


class _Limited:
    __slots__ = ("_log", "_key", "_interval", "_force", "_limiter")

    def __init__(self, log: Logger, key: Hashable, interval_s: float, force: bool = False,
                 limiter: RateLimiter | None = None) -> None:
        self._log, self._key, self._interval = log, key, interval_s
        self._force, self._limiter = force, limiter or log._limiter

    def _emit(self, level: int, msg: str, fields: dict, exc_info: bool = False) -> bool:
        if not self._log._l.isEnabledFor(level):
            return False
        n = self._limiter.allow((self._log.name, self._key), self._interval, self._force)
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
