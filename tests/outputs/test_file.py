import json
import struct

import pytest

from ingress.errors import ConfigError, PermanentError, RetryableError
from ingress.outputs.file import FileOutput, read_batches


def _submit(out, batch):
    got = []
    out.submit(batch, lambda b, e: got.append((b, e)))
    assert len(got) == 1 and got[0][0] is batch
    return got[0][1]


def test_batch_format_is_length_prefixed_per_tenant(tmp_path, batch_factory):
    out = FileOutput("f", tmp_path)
    out.start()
    a1, a2 = batch_factory("acme", payload=b"one"), batch_factory("acme", payload=b"\x00two\xff")
    z = batch_factory("zeta", payload=b"zz")
    for b in (a1, z, a2):
        assert _submit(out, b) is None
    files = out.files("acme")
    assert [p.name for p in files] == ["f-000001.ibatch"]
    raw = files[0].read_bytes()
    assert raw == struct.pack(">I", 3) + b"one" + struct.pack(">I", 5) + b"\x00two\xff"
    assert list(read_batches(out.files("zeta")[0])) == [b"zz"]
    assert files[0].parent == tmp_path / "out" / "acme"
    out.close()


def test_rotation_by_size(tmp_path, batch_factory):
    out = FileOutput("f", tmp_path, max_bytes=20)
    payloads = [bytes([i]) * 8 for i in range(5)]  # 12 bytes per record: one per file
    for p in payloads:
        assert _submit(out, batch_factory(payload=p)) is None
    files = out.files("acme")
    assert len(files) == 5
    assert [b for f in files for b in read_batches(f)] == payloads
    assert all(f.stat().st_size <= 20 for f in files)
    # A record larger than max_bytes still goes out, in a file of its own.
    assert _submit(out, batch_factory(payload=b"x" * 50)) is None
    assert list(read_batches(out.files("acme")[-1])) == [b"x" * 50]
    out.close()


def test_two_records_share_a_file_until_full(tmp_path, batch_factory):
    out = FileOutput("f", tmp_path, max_bytes=24)
    for p in (b"a" * 8, b"b" * 8, b"c" * 8):
        _submit(out, batch_factory(payload=p))
    assert [list(read_batches(f)) for f in out.files("acme")] == [[b"a" * 8, b"b" * 8], [b"c" * 8]]


def test_max_files_deletes_oldest(tmp_path, batch_factory):
    out = FileOutput("f", tmp_path, max_bytes=10, max_files=2)
    for i in range(4):
        _submit(out, batch_factory(payload=bytes([i]) * 8))
    files = out.files("acme")
    assert [f.name for f in files] == ["f-000003.ibatch", "f-000004.ibatch"]


def test_reopen_appends_and_cuts_torn_tail(tmp_path, batch_factory):
    out = FileOutput("f", tmp_path)
    _submit(out, batch_factory(payload=b"first"))
    out.close()
    p = FileOutput("f", tmp_path).files("acme")[0]
    with open(p, "ab") as f:  # a crash in the middle of the next record
        f.write(struct.pack(">I", 100) + b"partial")
    with pytest.raises(Exception):
        list(read_batches(p, strict=True))
    out2 = FileOutput("f", tmp_path)
    _submit(out2, batch_factory(payload=b"second"))
    assert list(read_batches(p, strict=True)) == [b"first", b"second"]


def test_json_format_one_object_per_sample(tmp_path, batch_factory, fake_wire):
    out = FileOutput("j", tmp_path, format="json")
    b = batch_factory("acme", n=3)
    assert _submit(out, b) is None
    [f] = out.files("acme")
    assert f.suffix == ".jsonl"
    lines = [json.loads(x) for x in f.read_text().splitlines()]
    assert lines == [
        {"tenant": "acme", "name": "cpu.user", "tags": {"cpu": "0"}, "ts": 1000, "value": 0.0,
         "batch_id": b.batch_id.hex(), "host": "web-1"},
        {"tenant": "acme", "name": "mem.used", "tags": {}, "ts": 1001, "value": 1.0,
         "batch_id": b.batch_id.hex(), "host": "web-1"},
        {"tenant": "acme", "name": "cpu.user", "tags": {"cpu": "0"}, "ts": 1002, "value": 2.0,
         "batch_id": b.batch_id.hex(), "host": "web-1"},
    ]


def test_json_torn_line_is_cut_on_reopen(tmp_path, batch_factory, fake_wire):
    out = FileOutput("j", tmp_path, format="json")
    _submit(out, batch_factory(n=1))
    out.close()
    [f] = out.files("acme")
    with open(f, "ab") as fh:
        fh.write(b'{"tenant": "ac')
    out2 = FileOutput("j", tmp_path, format="json")
    _submit(out2, batch_factory(n=1))
    assert all(json.loads(x)["tenant"] == "acme" for x in f.read_text().splitlines())
    assert len(f.read_text().splitlines()) == 2


def test_json_undecodable_batch_is_permanent(tmp_path, batch_factory, fake_wire):
    out = FileOutput("j", tmp_path, format="json")
    err = _submit(out, batch_factory(payload=b"not a batch"))
    assert isinstance(err, PermanentError)
    assert "cannot be decoded" in str(err)


def test_write_error_is_retryable_and_names_file(tmp_path, batch_factory):
    # A regular file where the tenant directory should be: works as root too.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "acme").write_text("in the way")
    out = FileOutput("f", tmp_path)
    err = _submit(out, batch_factory())
    assert isinstance(err, RetryableError)
    assert "acme" in str(err)


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="format: 'xml'"):
        FileOutput("f", tmp_path, format="xml")
    with pytest.raises(ConfigError, match="max_bytes"):
        FileOutput("f", tmp_path, max_bytes=0)
    with pytest.raises(ConfigError, match="needs data_dir"):
        FileOutput("f")
