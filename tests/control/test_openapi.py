"""docs/control-api.openapi.json against a live agent: every documented path and status is
produced and matches its schema; every served path is documented."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from control_helpers import create_key, get, wait_for
from ingress.control.api import ROUTES

pytestmark = pytest.mark.integration

DOC = json.loads((Path(__file__).parents[2] / "docs" / "control-api.openapi.json").read_text())


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def check(value, schema: dict, where: str = "$") -> None:
    """The subset of OpenAPI 3.0 schema the document uses."""
    s = resolve(schema)
    if value is None:
        assert s.get("nullable"), f"{where}: null where not nullable"
        return
    t = s.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool}
    if t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} not an integer"
    elif t == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} not a number"
    elif t:
        assert isinstance(value, types[t]), f"{where}: {value!r} is not {t}"
    if "enum" in s:
        assert value in s["enum"], f"{where}: {value!r} not in {s['enum']}"
    if t == "object":
        for k in s.get("required", []):
            assert k in value, f"{where}: {k} missing"
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                check(v, props[k], f"{where}.{k}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected {k}")
            elif isinstance(extra, dict):
                check(v, extra, f"{where}.{k}")
    if t == "array":
        for i, v in enumerate(value):
            check(v, s["items"], f"{where}[{i}]")


def test_every_served_path_is_documented():
    assert set(ROUTES) == set(DOC["paths"])


def test_live_server_matches_the_document(agent_factory, backend):
    outputs = f"""
[[outputs]]
type = "file"
[[outputs]]
type = "http"
name = "web"
url = "{backend.url}"
tenants = ["globex"]
[outputs.retry]
backoff_initial = "100ms"
backoff_max = "200ms"
[outputs.breaker]
failures = 1
reset = "1s"
"""
    a = agent_factory(globex='api_key_env = "INGRESS_TEST_OPENAPI"', outputs=outputs,
                      env={"INGRESS_TEST_OPENAPI": "openapi-cred"})
    _, acme = create_key(a.cfg, "acme")
    _, admin = create_key(a.cfg, "acme", "--scope", "admin")
    a.start()
    seen: dict[tuple[str, str, str], list] = {}

    def call(path: str, doc_path: str, key=None, method: str = "GET"):
        status, headers, body = get(a.url, path, key, method=method)
        assert headers["x-request-id"] and headers["connection"] == "close"
        seen.setdefault((doc_path, method.lower(), str(status)), []).append((headers, body))
        return status

    wait_for(lambda: call("/readyz", "/readyz") == 200 and backend.posts, what="ready")
    call("/healthz", "/healthz")
    call("/metrics", "/metrics")
    call("/v1/tenants", "/v1/tenants", admin)
    call("/v1/tenants", "/v1/tenants", acme)
    call("/v1/tenants/acme", "/v1/tenants/{id}", acme)
    call("/v1/tenants/globex", "/v1/tenants/{id}", acme)
    call("/v1/tenants/nope", "/v1/tenants/{id}", admin)
    good = a.cfg.read_text()
    a.cfg.write_text(good + '\n[[tenants]]\nid = "initech"\ncollectors = ["memory"]\n')
    assert call("/v1/reload", "/v1/reload", admin, "POST") == 200
    a.cfg.write_text(good)
    assert call("/v1/reload", "/v1/reload", admin, "POST") == 200
    call("/v1/reload", "/v1/reload", acme, "POST")
    a.cfg.write_text(good + "\n[agent.nope]\n")
    assert call("/v1/reload", "/v1/reload", admin, "POST") == 422
    a.cfg.write_text(good)
    call("/v1/reload", "/v1/reload", None, "POST")
    backend.down()
    wait_for(lambda: call("/readyz", "/readyz") == 503, what="not ready")
    call("/v1/tenants/globex", "/v1/tenants/{id}", admin)  # with a last error and an open breaker
    call("/v1/tenants/acme", "/v1/tenants/{id}", "bad")
    for _ in range(9):
        call("/v1/tenants", "/v1/tenants", "bad")
    call("/v1/tenants", "/v1/tenants", admin)  # now 429
    call("/v1/tenants/acme", "/v1/tenants/{id}", acme)
    call("/v1/tenants/acme", "/v1/tenants/{id}", None)  # 429 too: the address is blocked
    call("/v1/reload", "/v1/reload", admin, "POST")
    # every documented status was produced and matches
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            for status, spec in op["responses"].items():
                if status == "default":
                    continue
                hits = seen.get((path, method, status))
                assert hits, f"{method} {path} {status} never produced"
                ctype, media = next(iter(spec["content"].items()))
                for headers, body in hits:
                    assert headers["content-type"] == ctype
                    if ctype == "application/json":
                        check(json.loads(body), media["schema"])
    # and nothing undocumented was answered (other than the error documents)
    for (path, method, status) in seen:
        assert status in DOC["paths"][path][method]["responses"], (path, method, status)
    assert get(a.url, "/v2/anything")[0] == 404 and get(a.url, "/healthz/x")[0] == 404
