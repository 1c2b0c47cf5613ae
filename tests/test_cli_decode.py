"""``ingress decode`` over every kind of file ingress writes, ``--format table`` and ``--stats``."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress import wire
from ingress.cli import main
from ingress.sink_store.files import SinkStore
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.file import FileOutput

from test_cli import ingress_cmd, one_error_line

SERIES = [("cpu.time", {"cpu": "0", "mode": "user"}), ("memory.used", {})]


def batch(tenant="acme", n=4, t0=1_700_000_000_000_000_000, host="web-1"):
    idx = [i % 2 for i in range(n)]
    ts = [t0 + i * 1_000_000_000 for i in range(n)]
    vals = [float(i) + 0.5 for i in range(n)]
    p = wire.encode(tenant, host, SERIES, idx, ts, vals)
    return OutgoingBatch(tenant, wire.peek(p).batch_id, p, n, host), list(zip(idx, ts, vals))


def run(*args, tty=False):
    out, err = io.StringIO(), io.StringIO()
    out.isatty = lambda: tty  # type: ignore[method-assign]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["decode", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def rows_of(b, samples):
    bid = b.batch_id.hex()
    return [{"tenant": b.tenant, "name": SERIES[s][0], "tags": SERIES[s][1], "ts": t, "value": v, "batch_id": bid,
             "host": b.host} for s, t, v in samples]


def ibatch_file(tmp_path, k=3):
    out = FileOutput("f", tmp_path)
    made = [batch(n=2 + i, t0=1_700_000_000_000_000_000 + i * 10**10) for i in range(k)]
    for b, _ in made:
        out.write(b)
    out.close()
    [f] = out.files("acme")
    return f, made


def test_file_output_ibatch_decodes_every_record(tmp_path):
    f, made = ibatch_file(tmp_path)
    assert f.suffix == ".ibatch"
    rc, out, err = run(f)
    assert (rc, err) == (0, "")
    assert [json.loads(x) for x in out.splitlines()] == [r for b, s in made for r in rows_of(b, s)]


def test_sink_batch_files_decode(tmp_path):
    store = SinkStore(tmp_path / "sink")
    made = [batch(tenant="zeta", n=3, t0=1_700_000_000_000_000_000 + i) for i in range(2)]
    for b, _ in made:
        assert store.put(b.tenant, b.batch_id, b.payload, b.sample_count, b.host)
    [f] = store.files.files("zeta")
    rc, out, _ = run(f)
    assert rc == 0
    assert [json.loads(x) for x in out.splitlines()] == [r for b, s in made for r in rows_of(b, s)]


def test_single_batch_and_stdin_as_before(tmp_path):
    b, samples = batch()
    p = tmp_path / "x.batch"
    p.write_bytes(b.payload)
    rc, out, _ = run(p)
    assert rc == 0 and [json.loads(x) for x in out.splitlines()] == rows_of(b, samples)
    d = ingress_cmd("decode", "-", input=b.payload)
    assert d.returncode == 0 and [json.loads(x) for x in d.stdout.decode().splitlines()] == rows_of(b, samples)
    f, made = ibatch_file(tmp_path / "f")
    d = ingress_cmd("decode", "-", input=f.read_bytes())
    assert d.returncode == 0 and len(d.stdout.decode().splitlines()) == sum(len(s) for _, s in made)


def test_a_torn_tail_prints_the_whole_records_then_one_error_line(tmp_path):
    f, made = ibatch_file(tmp_path)
    data = f.read_bytes()
    f.write_bytes(data[:-5])
    rc, out, err = run(f)
    assert rc == 2
    assert [json.loads(x) for x in out.splitlines()] == [r for b, s in made[:2] for r in rows_of(b, s)]
    assert err.count("\n") == 1 and "record 3 is cut short" in err and str(f) in err


def test_a_damaged_record_names_its_number(tmp_path):
    f, made = ibatch_file(tmp_path)
    data = bytearray(f.read_bytes())
    second = 4 + len(made[0][0].payload)
    data[second + 4 + 60] ^= 0xFF  # inside the second batch's body
    f.write_bytes(bytes(data))
    rc, out, err = run(f)
    assert rc == 2 and f"{f}: record 2: not a valid batch: " in err and err.count("\n") == 1
    assert len(out.splitlines()) == len(made[0][1])


def test_json_and_unknown_files_are_one_clear_line(tmp_path):
    j = tmp_path / "x.jsonl"
    j.write_text('{"tenant": "acme"}\n')
    p = ingress_cmd("decode", j)
    assert p.returncode == 2 and "holds JSON" in one_error_line(p)
    p = ingress_cmd("decode", "-", input=b"")
    assert p.returncode == 2 and one_error_line(p) == "<stdin>: empty input: no batch"
    p = ingress_cmd("decode", "-", input=b"hello world")
    assert p.returncode == 2 and "not a batch, a dead letter or a file of length-prefixed batches" in one_error_line(p)


def test_table_on_a_terminal_json_when_piped(tmp_path):
    b, samples = batch(n=2)
    p = tmp_path / "x.batch"
    p.write_bytes(b.payload)
    rc, out, _ = run(p, tty=True)
    lines = out.splitlines()
    assert rc == 0 and lines[0] == f"batch {b.batch_id.hex()}  tenant acme  host web-1  samples 2"
    assert lines[1].split() == ["time", "(UTC)", "name", "tags", "value"]
    assert lines[2].split() == ["2023-11-14T22:13:20.000000000Z", "cpu.time", "cpu=0,mode=user", "0.5"]
    assert lines[3].split() == ["2023-11-14T22:13:21.000000000Z", "memory.used", "1.5"]
    assert run(p, "--format", "json", tty=True)[1].startswith("{")
    assert run(p, "--format", "table")[1] == out


def test_stats_per_batch_and_total(tmp_path):
    f, made = ibatch_file(tmp_path)
    rc, out, _ = run(f, "--stats")
    assert rc == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == 4
    for r, (b, s) in zip(rows, made):
        assert r == {"batch_id": b.batch_id.hex(), "tenant": "acme", "host": "web-1", "samples": len(s),
                     "series": len({x[0] for x in s}), "bytes": len(b.payload),
                     "bytes_per_sample": round(len(b.payload) / len(s), 3),
                     "ts_min": min(x[1] for x in s), "ts_max": max(x[1] for x in s)}
    total = rows[-1]
    n = sum(len(s) for _, s in made)
    size = sum(len(b.payload) for b, _ in made)
    assert total == {"batch_id": "total", "tenant": "acme", "host": "web-1", "batches": 3, "samples": n,
                     "series": 2, "bytes": size, "bytes_per_sample": round(size / n, 3),
                     "ts_min": made[0][1][0][1], "ts_max": made[-1][1][-1][1]}
    rc, table, _ = run(f, "--stats", "--format", "table")
    lines = table.splitlines()
    assert rc == 0 and lines[0].split()[:6] == ["batch", "tenant", "host", "samples", "series", "bytes"]
    assert lines[-1].split()[:6] == ["total", "acme", "web-1", str(n), "2", str(size)]
    assert len(lines) == 5


def test_nan_prints_as_null(tmp_path):
    p = wire.encode("acme", "h", [("memory.used", {})], [0], [1], [math.nan])
    f = tmp_path / "n.batch"
    f.write_bytes(p)
    assert json.loads(run(f)[1])["value"] is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_damage_to_any_kind_of_file_is_exit_2_and_one_line(tmp_path, data):
    kind = data.draw(st.sampled_from(["ibatch", "single", "random"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=300))
    else:
        bs = [batch(n=data.draw(st.integers(0, 5)))[0] for _ in range(data.draw(st.integers(1, 3)))]
        blob = bs[0].payload if kind == "single" else b"".join(len(b.payload).to_bytes(4, "big") + b.payload
                                                                for b in bs)
        cut = data.draw(st.integers(0, len(blob)))
        flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)), max_size=3))
        arr = bytearray(blob)
        for i, x in flips:
            arr[i] ^= x
        blob = bytes(arr[:cut] if data.draw(st.booleans()) else arr)
    f = tmp_path / f"fuzz-{os.getpid()}.bin"
    f.write_bytes(blob)
    rc, out, err = run(f)
    assert rc in (0, 2)
    if rc == 2:
        assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(str(f))
    else:
        assert err == ""
    for line in out.splitlines():
        json.loads(line)
