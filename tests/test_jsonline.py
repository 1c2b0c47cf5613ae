"""The one JSON sample line (ingress.outputs.jsonfmt): ``--once``, ``decode`` and the
json output format build it in one place, so they agree on every sample."""
from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ingress import wire
from ingress.outputs.jsonfmt import batch_rows, sample_json, sample_lines, sample_row

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, blacklist_characters="{}\\\""),
                min_size=1, max_size=12)
values = st.floats(allow_nan=True, allow_infinity=True)


@given(name=names, tags=st.dictionaries(names, names, max_size=3), ts=st.integers(-(1 << 63), (1 << 63) - 1),
       value=values)
def test_every_form_of_one_sample_is_the_same_object(name, tags, ts, value):
    row = sample_row("acme", name, tags, ts, value, host="h")
    assert list(row) == ["tenant", "name", "tags", "ts", "value", "host"]
    assert row["value"] == (value if math.isfinite(value) else None)
    assert json.loads(sample_json("acme", name, tags, ts, value, host="h")) == row


@given(vals=st.lists(values, min_size=1, max_size=20))
def test_the_json_format_and_decode_rows_agree(vals):
    n = len(vals)
    payload = wire.encode("acme", "web-1", [("m", {"k": "v"})], np.zeros(n, np.uint32),
                          np.arange(n, dtype=np.int64), np.array(vals, np.float64), batch_id=bytes(16))
    rows = list(batch_rows(wire.decode(payload)))
    assert [json.loads(line) for line in sample_lines(payload)] == rows
    assert [r["value"] for r in rows] == [v if math.isfinite(v) else None for v in vals]
    assert {(r["batch_id"], r["host"], r["tenant"]) for r in rows} == {("0" * 32, "web-1", "acme")}
