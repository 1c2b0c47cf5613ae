"""The name patterns of the contract, written once and always applied as full matches.

``re.match(r"^...$", s)`` accepts ``s`` with one trailing newline (``$`` matches
before it), so a tenant id ``"acme\\n"`` used to pass. Every pattern here is
kept without anchors and only ever used through :func:`fullmatch` (or the
``is_*`` helpers), which match the whole string or nothing.

``text(rx)`` is how a pattern is shown to users: ``^...$`` as the contract
writes it.
"""
from __future__ import annotations

import ipaddress
import re

__all__ = [
    "TENANT_ID_RE", "OUTPUT_NAME_RE", "CHECK_NAME_RE", "TAG_KEY_RE", "KAFKA_TOPIC_RE",
    "ENV_VAR_RE", "HEADER_NAME_RE", "PORT_RE", "fullmatch", "text", "is_tenant_id",
    "is_host", "header_value_problem", "control_char_name",
]

TENANT_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
OUTPUT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
CHECK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
TAG_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
KAFKA_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
ENV_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# RFC 9110 token: the characters a header field name may hold.
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# ASCII digits only: str.isdigit() is true for "²" and "١", which int() refuses or reads.
PORT_RE = re.compile(r"[0-9]{1,5}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def fullmatch(rx: re.Pattern, s: object) -> bool:
    """Whether ``s`` is a string that ``rx`` matches as a whole."""
    return isinstance(s, str) and rx.fullmatch(s) is not None


def text(rx: re.Pattern) -> str:
    """The pattern as users read it: ``^...$``."""
    return f"^{rx.pattern}$"


def is_tenant_id(s: object) -> bool:
    """Whether ``s`` is a tenant id of the contract (``^[a-z0-9][a-z0-9_-]{0,62}$``, whole string)."""
    return fullmatch(TENANT_ID_RE, s)


def is_host(host: object) -> bool:
    """A host name (ASCII labels of 1-63 characters, 253 in all) or an IP address literal.

    What the resolver takes without raising anything but ``OSError``: an empty
    label or one over 63 characters makes :func:`socket.getaddrinfo` raise
    ``UnicodeError`` instead.
    """
    if not isinstance(host, str) or not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    return all(_LABEL_RE.fullmatch(label) for label in name.split("."))


_CONTROL_NAMES = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\0": "a NUL byte",
                  "\t": "a tab", "\x7f": "a DEL character"}


def control_char_name(s: str) -> str | None:
    """The name of the first control character (C0, DEL, C1) in ``s``; None when there is none.

    Never returns any part of ``s`` itself beyond the character's name, so it is
    safe for secrets.
    """
    for c in s:
        o = ord(c)
        if o < 0x20 or 0x7F <= o < 0xA0:
            return _CONTROL_NAMES.get(c, f"a control character (U+{o:04X})")
    return None


def header_value_problem(value: str) -> str | None:
    """What makes ``value`` unfit as an HTTP header value, or None. Never quotes the value.

    One line, no control characters other than tab, encodable as Latin-1 (what
    :mod:`http.client` sends); leading or trailing whitespace is refused too, as
    servers strip it.
    """
    for c in value:
        o = ord(c)
        if (o < 0x20 and c != "\t") or 0x7F <= o < 0xA0:
            return f"contains {_CONTROL_NAMES.get(c, f'a control character (U+{o:04X})')}; " \
                   "a header value is one line without control characters"
        if o > 0xFF:
            return "contains a character outside Latin-1, which an HTTP header cannot carry"
    if value != value.strip(" \t"):
        return "has leading or trailing whitespace, which servers strip"
    return None
