"""``agent.allow_destinations``: which hosts and ports outputs and health checks may reach.

A pattern is either a CIDR (``10.0.0.0/8``, ``::1/128``: an IP literal destination
inside it, any port) or ``HOST:PORT``, where HOST is an :func:`fnmatch` glob
matched case-insensitively against the destination's host as written (``*.corp``,
``10.1.*``, ``[::1]``) and PORT is a number or ``*``. An empty list allows any
destination. Host names are not resolved: a CIDR only matches IP literals.

Kept free of heavy imports: it runs on every configuration load.
"""
from __future__ import annotations

import ipaddress
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

__all__ = ["Pattern", "parse", "pattern_problem", "split", "url_destination", "allowed", "refused"]

_DEFAULT_PORT = {"http": 80, "https": 443}


class Pattern:
    """One parsed entry of ``agent.allow_destinations``."""

    __slots__ = ("text", "net", "host", "port")

    def __init__(self, text: str, net=None, host: str | None = None, port: int | None = None) -> None:
        self.text, self.net, self.host, self.port = text, net, host, port

    def matches(self, host: str, port: int) -> bool:
        if self.net is not None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return False
            return ip.version == self.net.version and ip in self.net
        if self.port is not None and port != self.port:
            return False
        return fnmatchcase(host.lower(), self.host)


def _strip(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def parse(text: str) -> Pattern:
    """Parse one pattern; ``ValueError`` with a message naming what is wrong."""
    if not isinstance(text, str) or not text or any(c.isspace() or ord(c) < 32 for c in text):
        raise ValueError(f"{text!r} is not a host:port pattern or a CIDR")
    if "/" in text:
        try:
            return Pattern(text, net=ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR (e.g. \"10.0.0.0/8\")") from None
    host, sep, port = text.rpartition(":")
    if not sep or not host or (host.count(":") and not (host.startswith("[") and host.endswith("]"))):
        raise ValueError(f"{text!r} is not host:port (port a number or *, e.g. \"*.corp:9092\") or a CIDR")
    if port == "*":
        p = None
    elif port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535:
        p = int(port)
    else:
        raise ValueError(f"{text!r}: port {port!r} is not a number 0-65535 or *")
    return Pattern(text, host=_strip(host).lower(), port=p)


def pattern_problem(text: str) -> str | None:
    try:
        parse(text)
    except ValueError as e:
        return str(e)
    return None


def split(dest: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"``) -> (host, port)."""
    host, _, port = dest.strip().rpartition(":")
    return _strip(host), int(port)


def url_destination(url: str) -> str:
    """``host:port`` an http(s) URL connects to (default port by scheme)."""
    u = urlsplit(url)
    host = u.hostname or ""
    port = u.port or _DEFAULT_PORT.get(u.scheme.lower(), 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed(patterns, dest: str) -> bool:
    """Whether ``dest`` (``host:port``) is allowed by ``patterns`` (strings or Patterns); empty: any."""
    if not patterns:
        return True
    host, port = split(dest)
    return any((p if isinstance(p, Pattern) else parse(p)).matches(host, port) for p in patterns)


def refused(what: str, dest: str) -> None:
    """A refused destination is a security event: logged and audited while the agent runs
    (at a reload); before that (``run`` start-up, ``check-config``) the configuration
    error line is all that is said."""
    import sys

    audit = sys.modules.get("ingress.security.audit")  # not imported: no audit log is open
    if audit is None or audit.default() is None:
        return
    from ingress.logs import get_logger

    get_logger("ingress.security").warning("destination refused", what=what, destination=dest)
    audit.record("security.destination_refused", "refused", actor="agent", what=what, destination=dest)
