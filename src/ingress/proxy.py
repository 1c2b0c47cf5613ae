"""The proxy an HTTP request goes through, from ``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``.

As curl and most HTTP clients read them (either case; the lower-case one wins
when both are set):

* ``https://`` targets use ``HTTPS_PROXY``, ``http://`` targets ``HTTP_PROXY``;
  a value is ``[http://]HOST[:PORT]`` (port 80 when left out; an ``https://``
  proxy URL is not supported and is ignored with the reason in :func:`proxy_for`'s
  caller's log).
* ``NO_PROXY`` is a comma-separated list: ``*`` (no proxy at all), a host name
  (that host and its subdomains; a leading ``.`` means the same), an IP address,
  or a CIDR; an entry may end in ``:PORT`` to apply to that port only.

Used by the HTTP-based outputs (http, otlp, remote_write), each of which can
ignore the environment with ``proxy = false``, and by URL health checks.
Through a proxy, ``https://`` requests tunnel with ``CONNECT`` (TLS still ends
at the target, which is verified as without a proxy) and ``http://`` requests
are sent to the proxy in absolute form. ``agent.allow_destinations`` is about
the target, so it is checked against the target, not the proxy.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Mapping
from urllib.parse import urlsplit

__all__ = ["proxy_for"]


def _env(environ: Mapping[str, str], name: str) -> str:
    for key in (name.lower(), name.upper()):
        v = environ.get(key)
        if v is not None and v.strip():
            return v.strip()
    return ""


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        want_port = None
        if entry.count(":") == 1 and not entry.endswith("]"):  # host:port (not a bare IPv6 address)
            entry, _, p = entry.partition(":")
            if not (p.isascii() and p.isdigit()):
                continue
            want_port = int(p)
        entry = entry.strip("[]")
        if want_port is not None and want_port != port:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def proxy_for(scheme: str, host: str, port: int,
              environ: Mapping[str, str] | None = None) -> tuple[str, int, dict[str, str]] | None:
    """``(proxy host, proxy port, headers for the proxy)`` for ``scheme://host:port``, or None.

    The headers carry ``Proxy-Authorization: Basic ...`` when the proxy URL has
    ``user:password@`` (the password is registered as a secret, never logged).

    Raises
    ------
    ValueError
        The proxy variable is set but is not ``[http://]HOST[:PORT]`` (the message
        names the variable, never its credentials).
    """
    env = os.environ if environ is None else environ
    if _bypassed(host, port, _env(env, "no_proxy")):
        return None
    name = "https_proxy" if scheme == "https" else "http_proxy"
    value = _env(env, name)
    if not value:
        return None
    try:
        u = urlsplit(value if "://" in value else "http://" + value)
        u.port  # noqa: B018 - parsed now: a bad port is a ValueError here
    except ValueError:
        raise ValueError(f"{name.upper()}: not [http://]HOST[:PORT]") from None
    if u.scheme != "http":
        raise ValueError(f"{name.upper()}: only http:// proxies are supported, not {u.scheme}://")
    try:
        p = u.port or 80
    except ValueError:
        raise ValueError(f"{name.upper()}: the port is not a number from 1 to 65535") from None
    if not u.hostname:
        raise ValueError(f"{name.upper()}: no proxy host")
    headers: dict[str, str] = {}
    if u.username is not None:
        import base64
        from urllib.parse import unquote

        from ingress.logs import register_secret

        user, password = unquote(u.username), unquote(u.password or "")
        if password:
            register_secret(password, f"{name.upper()} password")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        register_secret(token, f"{name.upper()} credentials")
        headers["Proxy-Authorization"] = f"Basic {token}"
    return u.hostname, p, headers
