"""The sink's decode limits (issue 8): over-limit batches are 400, the tenant's next batch is stored.

Real servers on loopback: ``SinkServer`` in process, and ``ingress sink`` as a
subprocess for the command-line flags.
"""
import hashlib
import http.client
import json
import signal
import subprocess
import sys

import numpy as np
import pytest

import wire_reference as ref
from ingress import wire
from ingress.cli import sink as sink_cli
from ingress.sink import SinkServer

pytestmark = pytest.mark.integration

KEYS = {"acme": hashlib.sha256(b"acme-key").digest()}
HDRS = {"Content-Type": "application/vnd.ingress.batch.v1", "X-Tenant-ID": "acme",
        "Authorization": "Bearer acme-key"}


def small(n=3):
    return wire.encode("acme", "web-1", [("cpu.user", {"cpu": "0"})], [0] * n, list(range(n)),
                       [float(i) for i in range(n)])


def big():
    """A tick-major batch of 40 series x 30 passes with tags, lz4-compressed."""
    ns, nt = 40, 30
    series = [(f"m{s % 7}", {"cpu": str(s), "mode": "user"}) for s in range(ns)]
    idx = np.tile(np.arange(ns, dtype=np.uint32), nt)
    ts = np.repeat(10**18 + np.arange(nt) * 10**9, ns)
    return wire.encode("acme", "web-1", series, idx, ts, np.round(np.arange(ns * nt) * 0.1, 1))


def post(address, body):
    c = http.client.HTTPConnection(*address, timeout=30)
    c.request("POST", "/v1/batches", body=body, headers=HDRS)
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    c.close()
    return out


def assert_refused_then_next_stored(sink, address, bad, flag):
    st, body = post(address, bad)
    assert st == 400 and body["error"]["code"] == "bad_batch", body
    assert f"over the sink's limit {flag}" in body["error"]["message"], body
    good = small()
    st, body = post(address, good)
    assert (st, body["status"]) == (200, "stored")
    assert sink.store.seen("acme") == {wire.peek(good).batch_id}


@pytest.fixture
def sink_with(tmp_path):
    made = []

    def start(**kw):
        s = SinkServer("127.0.0.1:0", tmp_path / f"sink{len(made)}", KEYS, **kw).start()
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


def test_decompression_bomb_is_400_and_the_tenants_next_batch_is_stored(sink_with):
    sink = sink_with()  # the default limits
    bomb = ref.bomb(50_000_000)
    assert len(bomb) < 210_000
    st, body = post(sink.address, bomb)
    assert st == 400 and body["error"]["code"] == "bad_batch"
    assert body["error"]["message"] == (
        "batch over the sink's limit --max-batch-samples: "
        "header: 50000000 samples, over the decode limit max_samples = 1000000")
    assert_refused_then_next_stored(sink, sink.address, bomb, "--max-batch-samples")
    assert sink.rejects == {"bad_batch": 2}


def test_bomb_is_refused_on_the_header_even_without_full_verification(sink_with):
    sink = sink_with(verify_batches=False)
    assert_refused_then_next_stored(sink, sink.address, ref.bomb(50_000_000), "--max-batch-samples")


@pytest.mark.parametrize("limit", wire.DecodeLimits.__slots__)
def test_a_batch_over_any_limit_is_400_naming_it(sink_with, limit):
    data = big()
    q = ref.quantities(data)
    under = q[limit] - 1 if limit != "max_ratio" else q[limit] * 0.99
    sink = sink_with(decode_limits=wire.DecodeLimits(**{limit: under}))
    flag = "--max-batch-" + limit[4:].replace("_", "-")
    assert flag in {f for f, *_ in sink_cli._SINK_LIMITS}
    assert_refused_then_next_stored(sink, sink.address, data, flag)
    # at the limit itself the same batch is stored
    at = sink_with(decode_limits=wire.DecodeLimits(**{limit: q[limit]}))
    assert post(at.address, data)[1]["status"] == "stored"


def test_sink_refuses_a_decode_limits_of_the_wrong_type(tmp_path):
    with pytest.raises(TypeError, match="decode_limits must be a wire.DecodeLimits"):
        SinkServer("127.0.0.1:0", tmp_path, KEYS, decode_limits={"max_samples": 1})


def test_cli_flag_defaults_are_the_decode_limits_defaults():
    d = wire.DecodeLimits()
    assert {f for _, f, *_ in sink_cli._SINK_LIMITS} == set(wire.DecodeLimits.__slots__)
    for flag, field, _, _, default in sink_cli._SINK_LIMITS:
        assert default == str(getattr(d, field)), flag


def test_ingress_sink_flags_set_the_limits(tmp_path):
    (tmp_path / "keys.toml").write_text('acme = "acme-key"\n')
    proc = subprocess.Popen([sys.executable, "-m", "ingress", "sink", "--listen", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "d"), "--keys", str(tmp_path / "keys.toml"),
                             "--max-batch-samples", "10", "--max-batch-series", "5"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line
        address = ("127.0.0.1", int(line.split("127.0.0.1:")[1].split("/")[0]))
        st, body = post(address, small(11))
        assert st == 400 and "over the sink's limit --max-batch-samples" in body["error"]["message"]
        assert "11 samples, over the decode limit max_samples = 10" in body["error"]["message"]
        six = wire.encode("acme", "h", [(f"m{i}", {}) for i in range(6)], [0], [1], [1.0])
        st, body = post(address, six)
        assert st == 400 and "--max-batch-series" in body["error"]["message"]
        st, body = post(address, small(10))
        assert (st, body["status"]) == (200, "stored")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args, words", [
    (["--max-batch-ratio", "0"], "argument --max-batch-ratio: '0' is not a number from 1 to 255"),
    (["--max-batch-ratio", "nan"], "argument --max-batch-ratio: 'nan' is not a number from 1 to 255"),
    (["--max-batch-samples", "-3"], "argument --max-batch-samples: '-3' is not a whole number >= 0"),
    (["--max-batch-tags", "1e6"], "argument --max-batch-tags: '1e6' is not a whole number >= 0"),
])
def test_bad_limit_flags_exit_2_with_one_line(tmp_path, args, words):
    r = subprocess.run([sys.executable, "-m", "ingress", "sink", "--data-dir", str(tmp_path / "d"),
                        "--keys", str(tmp_path / "k.toml"), *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


def test_out_of_memory_while_decoding_is_503_and_the_batch_is_stored_on_retry(sink_with, monkeypatch):
    """A valid batch that meets a sink short of memory is "retry later", never a dead letter."""
    from ingress._core import _codec

    sink = sink_with()
    real = _codec.decode_columns

    def no_memory(*a, **kw):
        raise MemoryError()

    batch = big()
    monkeypatch.setattr(_codec, "decode_columns", no_memory)
    st, body = post(sink.address, batch)
    assert st == 503 and body["error"]["code"] == "storage_unavailable", body
    assert "out of memory allocating the columns" in body["error"]["message"]
    assert sink.store.seen("acme") == set()
    monkeypatch.setattr(_codec, "decode_columns", real)
    st, body = post(sink.address, batch)
    assert (st, body["status"]) == (200, "stored")
