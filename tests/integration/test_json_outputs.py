"""Format json on every output that has it (http, kafka per sample and per batch, file), each line validated
against the published JSON Schema docs/ingress-json-1.schema.json."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress import wire
from ingress.errors import PermanentError
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.file import FileOutput
from ingress.outputs.http import HttpOutput
from ingress.outputs.jsonfmt import sample_dicts, sample_lines
from ingress.outputs.kafka import KafkaOutput

from .conftest import Reply
from .test_http import send
from .test_kafka import headers, produce_all

pytestmark = pytest.mark.integration

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "ingress-json-1.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
SERIES = [("cpu.time", {"cpu": "0", "mode": "user"}), ("memory.used", {}), ("agent.threads", {}),
          ("custom.thing", {"k": "v"})]


def validate_lines(data: bytes) -> list[dict]:
    assert data.endswith(b"\n")
    rows = [json.loads(line) for line in data.split(b"\n")[:-1]]
    for r in rows:
        VALIDATOR.validate(r)
    return rows


def make(tenant="acme", n=8):
    idx = [i % len(SERIES) for i in range(n)]
    vals = [float(i) if i != 5 else math.nan for i in range(n)]
    p = wire.encode(tenant, "web-1", SERIES, idx, list(range(1000, 1000 + n)), vals)
    return OutgoingBatch(tenant, wire.peek(p).batch_id, p, n, "web-1")


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_samples_carry_kind_and_unit_where_declared():
    rows = list(sample_dicts(make().payload))
    by_name = {r["name"]: r for r in rows}
    assert (by_name["cpu.time"]["kind"], by_name["cpu.time"]["unit"]) == ("counter", "s")
    assert (by_name["memory.used"]["kind"], by_name["memory.used"]["unit"]) == ("gauge", "By")
    assert (by_name["agent.threads"]["kind"], by_name["agent.threads"]["unit"]) == ("gauge", "1")
    assert "kind" not in by_name["custom.thing"] and "unit" not in by_name["custom.thing"]
    for r in rows:
        VALIDATOR.validate(r)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cpu.time", "memory.used", "x"]) | texts.filter(bool),
                          st.dictionaries(texts, texts, max_size=3)), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), st.integers(-(2**63), 2**63 - 1), st.floats()), max_size=20),
       st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True), texts)
def test_every_json_line_of_any_batch_matches_the_schema(series, samples, tenant, host):
    samples = [(s % len(series), t, v) for s, t, v in samples]
    p = wire.encode(tenant, host, series, [s for s, _, _ in samples], [t for _, t, _ in samples],
                    [v for _, _, v in samples])
    lines = sample_lines(p)
    assert len(lines) == len(samples)
    for line in lines:
        VALIDATOR.validate(json.loads(line))


@pytest.mark.parametrize("gz", [False, True])
def test_http_format_json_is_one_ndjson_request_per_batch(http_server, gz):
    out = HttpOutput("h", http_server.url, credential=lambda t: "k", format="json", gzip=gz)
    b1, b2 = make(n=8), make(n=3)
    assert send(out, b1) is None and send(out, b2) is None
    assert len(http_server.requests) == 2
    for req, b in zip(http_server.requests, (b1, b2)):
        h = req.headers
        assert h["content-type"] == "application/x-ndjson"
        assert h["x-tenant-id"] == "acme" and h["idempotency-key"] == b.batch_id.hex()
        assert h.get("content-encoding") == ("gzip" if gz else None)
        rows = validate_lines(gzip.decompress(req.body) if gz else req.body)
        assert rows == [json.loads(x) for x in sample_lines(b.payload)]
        assert len(rows) == b.sample_count
    out.close()


def test_http_format_json_undecodable_batch_is_permanent(http_server):
    out = HttpOutput("h", http_server.url, format="json")
    err = send(out, OutgoingBatch("acme", b"\x01" * 16, b"not a batch", 1, "web-1"))
    assert isinstance(err, PermanentError) and "cannot be decoded" in str(err)
    assert http_server.requests == []
    out.close()


def test_http_format_batch_is_unchanged(http_server):
    http_server.replies(then=Reply(200))
    out = HttpOutput("h", http_server.url)
    b = make()
    assert send(out, b) is None
    [req] = http_server.requests
    assert req.body == b.payload and req.headers["content-type"] == "application/vnd.ingress.batch.v1"
    out.close()


def test_kafka_json_one_message_per_batch(kafka_bootstrap, topic_reader, unique_topic):
    out = KafkaOutput("k", kafka_bootstrap, unique_topic, format="json", json_messages="batch")
    bs = [make(n=8), make(n=5)]
    assert list(produce_all(out, bs).values()) == [None, None]
    topic_reader.assign([unique_topic])
    msgs = topic_reader.read(lambda ms: len(ms) >= 2)
    assert len(msgs) == 2
    by_id = {headers(m)["batch-id"]: m for m in msgs}
    for b in bs:
        m = by_id[b.batch_id.hex()]
        assert headers(m) == {"tenant-id": "acme", "batch-id": b.batch_id.hex(), "schema": "ingress-json/1",
                              "host": "web-1", "sample-count": str(b.sample_count),
                              "content-type": "application/x-ndjson"}
        assert validate_lines(m.value()) == [json.loads(x) for x in sample_lines(b.payload)]
    out.close()


def test_kafka_json_per_sample_lines_match_the_schema(kafka_bootstrap, topic_reader, unique_topic):
    out = KafkaOutput("k", kafka_bootstrap, unique_topic, format="json")
    b = make(n=6)
    assert list(produce_all(out, [b]).values()) == [None]
    topic_reader.assign([unique_topic])
    msgs = topic_reader.read(lambda ms: len(ms) >= 6)
    assert len(msgs) == 6
    for m in msgs:
        VALIDATOR.validate(json.loads(m.value()))
        assert headers(m)["sample-count"] == "1" and "content-type" not in headers(m)
    out.close()


def test_kafka_json_messages_option_is_checked():
    from ingress.errors import ConfigError

    with pytest.raises(ConfigError, match="json_messages"):
        KafkaOutput("k", "127.0.0.1:1", "t", format="json", json_messages="each")


def test_file_json_lines_match_the_schema(tmp_path):
    out = FileOutput("j", tmp_path, format="json")
    b = make(n=7)
    out.write(b)
    out.close()
    [f] = out.files("acme")
    rows = validate_lines(f.read_bytes())
    assert len(rows) == 7


@pytest.mark.parametrize("kw, match", [({"format": "xml"}, "format"), ({"gzip": True}, "gzip")])
def test_http_format_options_are_checked(kw, match):
    from ingress.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        HttpOutput("h", "http://127.0.0.1:9/x", **kw)
