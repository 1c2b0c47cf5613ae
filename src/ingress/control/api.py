"""The control API's routes (docs/control-api.md, docs/control-api.openapi.json)."""
from __future__ import annotations

import re
from typing import Callable

from ingress.control.auth import Authenticator, Principal
from ingress.control.server import Request, Response, error_response, json_response
from ingress.control.status import AgentView

__all__ = ["ControlApp", "ROUTES"]

# Every path the server answers (the OpenAPI test checks the document against this).
ROUTES = ("/healthz", "/readyz", "/metrics", "/v1/tenants", "/v1/tenants/{id}", "/v1/reload")
RELOAD_WAIT_S = 120.0  # how long POST /v1/reload waits for the agent's main thread to switch
_TENANT = re.compile(r"^/v1/tenants/([^/]{1,256})$")


class ControlApp:
    """``app(request) -> Response``: routing, authentication and the JSON documents."""

    def __init__(self, view: AgentView, auth: Authenticator, render_metrics: Callable[[], tuple[bytes, str]]) -> None:
        self.view = view
        self.auth = auth
        self.render_metrics = render_metrics

    def __call__(self, req: Request) -> Response:
        path = req.path
        known = path in ("/healthz", "/readyz", "/metrics", "/v1/tenants") or _TENANT.match(path) is not None
        if path == "/v1/reload":
            return self._reload(req)
        if not known:
            return error_response(404, "not_found", "no such endpoint")
        if req.method not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", "only GET is served", Allow="GET, HEAD")
        if path == "/healthz":
            return json_response(200, {"status": "ok"})
        if path == "/readyz":
            reasons = self.view.readiness()
            if reasons:
                return json_response(503, {"status": "not_ready", "reasons": reasons})
            return json_response(200, {"status": "ready", "reasons": []})
        if path == "/metrics":
            body, ctype = self.render_metrics()
            return Response(200, body, ctype)
        who = self.auth.authenticate(req)
        if isinstance(who, Response):
            return who
        if path == "/v1/tenants":
            if not who.admin:
                return self.auth.forbid(req, who, None)
            self.auth.allowed()
            return json_response(200, {"tenants": self.view.all_status()})
        tid = _TENANT.match(path).group(1)
        return self._tenant(req, who, tid)

    def _tenant(self, req: Request, who: Principal, tid: str) -> Response:
        exists = tid in self.view.tenant_settings
        if not who.admin and (who.tenant != tid or not exists):
            return self.auth.forbid(req, who, tid)  # one body for "not yours" and "no such tenant"
        if not exists:
            return error_response(404, "not_found", "no such tenant")
        self.auth.allowed()
        return json_response(200, self.view.tenant_status(tid))


    def _reload(self, req: Request) -> Response:
        """``POST /v1/reload`` (admin key): load the configuration file again and switch to it."""
        if req.method != "POST":
            return error_response(405, "method_not_allowed", "only POST is served", Allow="POST")
        who = self.auth.authenticate(req)
        if isinstance(who, Response):
            return who
        if not who.admin:
            return self.auth.forbid(req, who, None)
        self.auth.allowed()
        agent = self.view.agent
        request = getattr(agent, "request_reload", None)
        if request is None or not getattr(agent, "_started", False):
            return error_response(503, "not_running", "the agent is starting or stopping; try again")
        ticket = request(actor=f"key:{who.key_id}", remote=req.remote, trigger="api")
        if not ticket.done.wait(RELOAD_WAIT_S):
            return error_response(503, "reload_pending", "the reload is still running; see the agent's log")
        if ticket.error is not None:
            if ticket.error == "the agent is stopping":
                return error_response(503, "not_running", ticket.error)
            if ticket.error.startswith("internal error"):
                return error_response(500, "internal", ticket.error)
            return error_response(422, "invalid_config", ticket.error)
        return json_response(200, {"status": "reloaded", "changes": _public(ticket.result or {})})


def _public(result: dict) -> dict:
    keys = ("tenants", "outputs", "agent", "collection", "pause_ms")
    return {k: result[k] for k in keys if k in result}
