"""ingress.logs: JSON and logfmt lines with fields; rate limiting per key."""
from __future__ import annotations

import io
import json

import pytest

from ingress import logs


@pytest.fixture
def stream():
    s = io.StringIO()
    logs.configure("json", "info", s)
    yield s
    logs.configure("json", "info")


def lines(s: io.StringIO) -> list[str]:
    return s.getvalue().splitlines()


def test_json_lines_carry_fields(stream):
    log = logs.get_logger("ingress.test")
    log.info("cycle", tenant="acme", samples={"acme": 3}, msg_extra=None)
    log.debug("hidden")
    (line,) = lines(stream)
    ev = json.loads(line)
    assert ev["level"] == "info" and ev["logger"] == "ingress.test" and ev["msg"] == "cycle"
    assert ev["tenant"] == "acme" and ev["samples"] == {"acme": 3} and ev["ts"].endswith("Z")


def test_logfmt_quotes_and_flattens():
    s = io.StringIO()
    logs.configure("logfmt", "debug", s)
    try:
        logs.get_logger("ingress.test").warning("disk slow", path="/a b", n=3, ok=True, samples={"a": 1, "b": 2})
    finally:
        logs.configure("json", "info")
    (line,) = lines(s)
    assert line.split(" ", 1)[1] == ('level=warning logger=ingress.test msg="disk slow" '
                                     'path="/a b" n=3 ok=true samples.a=1 samples.b=2')


def test_exceptions_are_one_event(stream):
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logs.get_logger("ingress.test").exception("collector failed", collector="cpu")
    (line,) = lines(stream)
    assert "RuntimeError: boom" in json.loads(line)["exc"]


def test_rate_limited_once_per_key_per_interval():
    now = [100.0]
    limiter = logs.RateLimiter(clock=lambda: now[0])
    s = io.StringIO()
    logs.configure("json", "info", s)
    try:
        log = logs.Logger("ingress.rl", limiter)
        results = [log.every("k", 60).warning("refused", n=i) for i in range(5)]
        assert results == [True, False, False, False, False]
        assert log.every("other", 60).warning("other key") is True
        now[0] += 60
        assert log.every("k", 60).warning("refused", n=5) is True
    finally:
        logs.configure("json", "info")
    evs = [json.loads(x) for x in lines(s)]
    assert [(e["msg"], e.get("n"), e.get("suppressed")) for e in evs] == [
        ("refused", 0, None), ("other key", None, None), ("refused", 5, 4)]


def test_stdlib_extra_becomes_fields(stream):
    import logging
    logging.getLogger("ingress.collect").warning("collector %s slow", "cpu", extra={"collector": "cpu"})
    ev = json.loads(lines(stream)[0])
    assert ev["msg"] == "collector cpu slow" and ev["collector"] == "cpu" and "args" not in ev
