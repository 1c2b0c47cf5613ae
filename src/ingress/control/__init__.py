"""The control plane: health, readiness, metrics and tenant status over HTTP (docs/control-api.md).

:func:`validate` checks the ``[control]`` table against what the server can do
(cheap, no imports beyond the standard library); :func:`start` builds and starts
the server for a running :class:`~ingress.agent.Agent` and returns a
:class:`ControlPlane` whose ``stop()`` the agent calls at shutdown.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Any

from ingress.errors import ConfigError, IngressError

__all__ = ["validate", "start", "ControlPlane", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(settings: Any) -> list:
    """Check ``[control]``; returns the allowed networks.

    Raises
    ------
    ConfigError
        ``FILE:LINE: control.<key>: ...``: a non-loopback ``listen`` without
        ``tls_cert``, a ``tls_key`` without ``tls_cert``, a certificate file
        that cannot be read, an ``allow`` entry that is not a CIDR.
    """
    from ingress.config import locate

    c = settings.control
    nets = []
    for i, a in enumerate(c.allow):
        try:
            nets.append(ipaddress.ip_network(a, strict=False))
        except ValueError:
            raise ConfigError(f"{locate(settings, ('control', 'allow', i))}: {a!r} is not a network "
                              "(CIDR such as \"10.0.0.0/8\" or an address)") from None
    if c.tls_key is not None and c.tls_cert is None:
        raise ConfigError(f"{locate(settings, ('control', 'tls_key'))}: given without tls_cert")
    if not is_loopback(c.host) and c.tls_cert is None:
        raise ConfigError(f"{locate(settings, ('control', 'listen'))}: {c.listen!r} is not a loopback "
                          "address; the control API serves keys and tenant data, so it needs TLS there: "
                          "set control.tls_cert (and control.tls_key), or listen on 127.0.0.1")
    for key in ("tls_cert", "tls_key"):
        p = getattr(c, key)
        if p is not None and not os.access(p, os.R_OK):
            raise ConfigError(f"{locate(settings, ('control', key))}: {p}: cannot be read")
    return nets


class ControlPlane:
    """The running control server and what it owns; ``address`` is ``host:port`` as bound."""

    def __init__(self, server: Any, audit: Any) -> None:
        self.server = server
        self.audit = audit

    @property
    def address(self) -> str:
        host, port = self.server.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
        from ingress.security import audit

        if audit.default() is self.audit:
            audit.close_default()


def start(agent: Any) -> ControlPlane:
    """Validate ``[control]``, open the audit log, start the server for ``agent``.

    Raises
    ------
    ConfigError
        See :func:`validate`; also a certificate the TLS library refuses.
    IngressError
        The address cannot be bound (in use, not local); one line naming it.
    """
    settings = agent.settings
    nets = validate(settings)
    c = settings.control
    from ingress.control.api import ControlApp
    from ingress.control.auth import Authenticator
    from ingress.control.metrics import ControlCounters, make_renderer
    from ingress.control.server import ControlServer
    from ingress.control.status import AgentView
    from ingress.security import audit as audit_mod
    from ingress.security.keys import KeyStore

    data_dir = settings.agent.data_dir
    audit = audit_mod.open_default(data_dir, c.audit_max_mb << 20, c.audit_keep)
    ctx = None
    if c.tls_cert is not None:
        import ssl

        from ingress.config import locate

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(c.tls_cert), None if c.tls_key is None else str(c.tls_key))
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"{locate(settings, ('control', 'tls_cert'))}: {c.tls_cert}: "
                              f"not a usable certificate and key: {e}") from None
    view = AgentView(agent)
    store = KeyStore(data_dir)
    store.refresh()
    if store.error:
        from ingress.logs import get_logger

        get_logger("ingress.control").error("control API keys refused; no key is accepted until fixed",
                                            error=store.error)
    auth = Authenticator(store, audit)
    counters = ControlCounters()
    app = ControlApp(view, auth, make_renderer(view, counters, auth, audit))
    try:
        server = ControlServer(c.host, c.port, app, allow=nets, ssl_context=ctx,
                               on_event=counters.event, on_response=counters.response)
    except OSError as e:
        raise IngressError(f"control.listen {c.listen}: cannot listen: {e.strerror or e} "
                           "(another agent on this port? set [control] listen; port 0 picks a free one)") from None
    server.start()
    audit.record("config_loaded", "ok", actor="agent", source=str(settings.source),
                 tenants=[t.id for t in settings.tenants], outputs=[o.name for o in settings.outputs])
    return ControlPlane(server, audit)
