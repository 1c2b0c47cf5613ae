"""What every command group shares: the parser class, argument types, error lines."""
from __future__ import annotations

import argparse
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the contract's error rule)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return v


def load_settings(path: str | None):
    from ingress import config

    return config.load(path) if path else config.default_settings()


def one_line(text: str) -> str:
    from ingress.logs import redact

    return redact("; ".join(x.strip() for x in str(text).splitlines() if x.strip()) or "error")


def os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename else what


def when(t: float | None) -> str:
    if t is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: list[list[str]], right: set[int], out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.rjust(w) if i in right else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip() + "\n")


def audit_log(settings: Any) -> Any:
    from ingress.security import audit

    return audit.AuditLog(settings.agent.data_dir / audit.AUDIT_FILE, settings.control.audit_max_mb << 20,
                          settings.control.audit_keep)


def iso(ts_ns: int) -> str:
    import datetime as _dt

    try:
        t = _dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts_ns)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ns % 1_000_000_000:09d}Z"
