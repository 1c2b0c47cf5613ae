"""Write errors in the record-file writer (file output and sink): injected ENOSPC/EIO at every step.

The failures are injected by replacing the ``os`` module that
``ingress.outputs.file`` sees with a proxy that fails chosen calls; the
real-disk version of the same story is in test_file_diskfull.py.
"""
from __future__ import annotations

import errno
import os
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ingress.outputs.file as filemod
from ingress.errors import RetryableError
from ingress.sink_store.files import SinkStore
from ingress.outputs.file import FileOutput, RecordFile, read_batches

ENOSPC, EIO = errno.ENOSPC, errno.EIO


class FaultyOs:
    """``os`` with chosen calls failing: ``plan[op] = {call index: errno}``, counted from :meth:`arm`.

    ``partial``: a failing ``pwrite`` first writes that many bytes (a short
    write, as the kernel does when the disk fills up) and fails on the call
    after. A failing ``close`` closes the descriptor, then raises.
    """

    def __init__(self) -> None:
        self.plan: dict[str, dict[int, int]] = {}
        self.calls: Counter = Counter()
        self.partial = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def arm(self, plan=None, partial=0):
        self.plan = {op: dict(v) for op, v in (plan or {}).items()}
        self.calls = Counter()
        self.partial = partial

    def _fault(self, op):
        i = self.calls[op]
        self.calls[op] += 1
        return self.plan.get(op, {}).get(i)

    @staticmethod
    def _raise(code, filename=None):
        raise OSError(code, os.strerror(code), filename)

    def open(self, path, *a, **k):
        code = self._fault("open")
        if code:
            self._raise(code, str(path))
        return os.open(path, *a, **k)

    def pwrite(self, fd, data, off):
        code = self._fault("pwrite")
        if code:
            if self.partial and len(data) > 1:
                n = min(self.partial, len(data) - 1)
                self.partial = 0
                self.plan["pwrite"][self.calls["pwrite"]] = code  # the error comes on the next call
                return os.pwrite(fd, bytes(data[:n]), off)
            self._raise(code)
        return os.pwrite(fd, data, off)

    def pread(self, fd, n, off):
        code = self._fault("pread")
        if code:
            self._raise(code)
        return os.pread(fd, n, off)

    def fsync(self, fd):
        code = self._fault("fsync")
        if code:
            self._raise(code)
        return os.fsync(fd)

    def ftruncate(self, fd, n):
        code = self._fault("ftruncate")
        if code:
            self._raise(code)
        return os.ftruncate(fd, n)

    def close(self, fd):
        code = self._fault("close")
        os.close(fd)
        if code:
            self._raise(code)


@pytest.fixture
def fos(monkeypatch):
    f = FaultyOs()
    monkeypatch.setattr(filemod, "os", f)
    return f


def _records(out, tenant="acme", strict=True):
    return [b for p in out.files(tenant) for b in read_batches(p, strict=strict)]


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


# -- RecordFile ------------------------------------------------------------------


def _rf(path):
    return RecordFile(path, lambda fd, size: size - size % 4)


@pytest.mark.parametrize("code", [ENOSPC, EIO])
@pytest.mark.parametrize("step", ["pwrite", "short pwrite", "fsync"])
def test_a_failed_append_is_cut_off_and_the_next_one_succeeds(tmp_path, fos, code, step):
    rf = _rf(tmp_path / "r")
    rf.append(b"aaaa")
    op = "fsync" if step == "fsync" else "pwrite"
    fos.arm({op: {0: code}}, partial=2 if step == "short pwrite" else 0)
    with pytest.raises(OSError) as ei:
        rf.append(b"bbbbbbbb")
    assert ei.value.errno == code
    assert (tmp_path / "r").read_bytes() == b"aaaa"  # cut off at once, the descriptor still open
    assert rf.fd is not None
    rf.append(b"cccc")
    assert (tmp_path / "r").read_bytes() == b"aaaacccc"
    rf.close()


@pytest.mark.parametrize("code", [ENOSPC, EIO])
def test_when_the_cut_fails_too_the_next_append_reopens_and_repairs(tmp_path, fos, code):
    rf = _rf(tmp_path / "r")
    rf.append(b"aaaa")
    # The record is written whole, the fsync fails, and cutting it off fails as well.
    fos.arm({"fsync": {0: code}, "ftruncate": {0: code}, "close": {0: code}})
    with pytest.raises(OSError):
        rf.append(b"bbbb")
    assert rf.fd is None  # closed without raising
    assert (tmp_path / "r").read_bytes() == b"aaaabbbb"
    fos.arm()
    rf.append(b"cccc")  # reopened; the unacknowledged whole record is cut off too
    assert (tmp_path / "r").read_bytes() == b"aaaacccc"
    rf.close()


def test_close_cuts_off_what_a_failed_cut_left(tmp_path, fos):
    rf = _rf(tmp_path / "r")
    rf.append(b"aaaa")
    fos.arm({"pwrite": {0: ENOSPC}, "ftruncate": {0: ENOSPC}}, partial=3)
    with pytest.raises(OSError):
        rf.append(b"bbbbbbbb")
    assert (tmp_path / "r").read_bytes() == b"aaaabbb"
    rf.close()
    assert (tmp_path / "r").read_bytes() == b"aaaa"
    rf.close()  # a second close does nothing (and does not create a removed file)
    (tmp_path / "r").unlink()
    rf.close()
    assert not (tmp_path / "r").exists()


def test_a_failed_reopen_is_retried(tmp_path, fos):
    rf = _rf(tmp_path / "r")
    rf.append(b"aaaa")
    fos.arm({"fsync": {0: EIO}, "ftruncate": {0: EIO, 1: EIO}})
    with pytest.raises(OSError):
        rf.append(b"bbbb")
    with pytest.raises(OSError):  # reopened, but the repair fails: closed again
        rf.append(b"cccc")
    assert rf.fd is None
    rf.append(b"dddd")
    assert (tmp_path / "r").read_bytes() == b"aaaadddd"
    rf.close()


# -- FileOutput -------------------------------------------------------------------


@pytest.mark.parametrize("code", [ENOSPC, EIO])
@pytest.mark.parametrize("plan", [
    {"pwrite": {0: "X"}},
    {"fsync": {0: "X"}},
    {"pwrite": {0: "X"}, "ftruncate": {0: "X"}},
    {"fsync": {0: "X"}, "ftruncate": {0: "X"}, "close": {0: "X"}},
], ids=["write", "fsync", "write+truncate", "fsync+truncate+close"])
def test_file_output_keeps_working_after_a_write_error(tmp_path, fos, batch_factory, code, plan):
    out = FileOutput("f", tmp_path)
    out.write(batch_factory(payload=b"first"))
    fos.arm({op: {i: code for i in v} for op, v in plan.items()}, partial=3)
    with pytest.raises(RetryableError, match=r"f-000001\.ibatch: " + os.strerror(code)):
        out.write(batch_factory(payload=b"second, never acknowledged"))
    fos.arm()
    out.write(batch_factory(payload=b"third"))
    assert _records(out) == [b"first", b"third"]
    out.close()


@pytest.mark.parametrize("code", [ENOSPC, EIO])
def test_a_failed_rotation_keeps_the_current_file(tmp_path, fos, batch_factory, code):
    out = FileOutput("f", tmp_path, max_bytes=20)
    out.write(batch_factory(payload=b"a" * 8))
    fos.arm({"open": {0: code}})  # opening f-000002 fails
    with pytest.raises(RetryableError, match=r"f-000002\.ibatch: " + os.strerror(code)):
        out.write(batch_factory(payload=b"b" * 8))
    out.write(batch_factory(payload=b"c" * 4))  # still fits the current file, which is still open
    out.write(batch_factory(payload=b"d" * 8))  # the rotation is tried again
    assert [p.name for p in out.files("acme")] == ["f-000001.ibatch", "f-000002.ibatch"]
    assert [list(read_batches(p, strict=True)) for p in out.files("acme")] == [[b"a" * 8, b"c" * 4], [b"d" * 8]]
    out.close()


def test_a_failed_first_open_names_the_file_and_is_retried(tmp_path, fos, batch_factory):
    out = FileOutput("f", tmp_path)
    fos.arm({"open": {0: ENOSPC}})
    with pytest.raises(RetryableError, match=r"acme/f-000001\.ibatch: No space left on device"):
        out.write(batch_factory(payload=b"x"))
    out.write(batch_factory(payload=b"y"))
    assert _records(out) == [b"y"]


def test_a_failed_repair_on_reopen_is_retried(tmp_path, fos, batch_factory):
    out = FileOutput("f", tmp_path)
    out.write(batch_factory(payload=b"first"))
    out.close()
    p = out.files("acme")[0]
    with open(p, "ab") as f:
        f.write(struct.pack(">I", 100) + b"torn")
    out2 = FileOutput("f", tmp_path)
    fos.arm({"pread": {1: EIO}})
    with pytest.raises(RetryableError, match="Input/output error"):
        out2.write(batch_factory(payload=b"second"))
    out2.write(batch_factory(payload=b"third"))
    assert _records(out2) == [b"first", b"third"]
    out2.close()


def test_a_rotation_after_a_failed_cut_repairs_the_old_file_first(tmp_path, fos, batch_factory):
    out = FileOutput("f", tmp_path, max_bytes=20)
    out.write(batch_factory(payload=b"a" * 4))
    fos.arm({"fsync": {0: EIO}, "ftruncate": {0: EIO}})
    with pytest.raises(RetryableError):
        out.write(batch_factory(payload=b"b" * 4))  # whole in the file, unacknowledged, not cut
    fos.arm()
    out.write(batch_factory(payload=b"c" * 12))  # 8 + 16 > 20: rotates
    assert [list(read_batches(p, strict=True)) for p in out.files("acme")] == [[b"a" * 4], [b"c" * 12]]


def test_json_format_is_cut_back_to_the_last_whole_batch(tmp_path, fos, batch_factory, fake_wire):
    out = FileOutput("j", tmp_path, format="json")
    out.write(batch_factory(n=2))
    before = out.files("acme")[0].read_bytes()
    fos.arm({"pwrite": {0: ENOSPC}}, partial=40)  # cuts a line in half
    with pytest.raises(RetryableError):
        out.write(batch_factory(n=3))
    assert out.files("acme")[0].read_bytes() == before
    fos.arm()
    out.write(batch_factory(n=1))
    assert len(out.files("acme")[0].read_text().splitlines()) == 3


FAULT_OPS = ["open", "pread", "pwrite", "fsync", "ftruncate", "close"]
step_st = st.tuples(
    st.binary(min_size=0, max_size=40),  # payload
    st.dictionaries(st.sampled_from(FAULT_OPS),
                    st.dictionaries(st.integers(0, 2), st.sampled_from([ENOSPC, EIO, errno.EDQUOT]), max_size=2),
                    max_size=3),
    st.integers(0, 30),  # bytes of a short write before a pwrite fails
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step_st, max_size=25), max_bytes=st.sampled_from([30, 64, 1 << 20]))
def test_property_files_hold_exactly_the_acknowledged_batches(tmp_path_factory, monkeypatch, batch_factory,
                                                              steps, max_bytes):
    fos = FaultyOs()
    monkeypatch.setattr(filemod, "os", fos)
    d = tmp_path_factory.mktemp("out")
    fds = _open_fds()
    out = FileOutput("f", d, max_bytes=max_bytes)
    acked, failed, cut_failed = [], [], False
    for payload, plan, partial in steps:
        fos.arm(plan, partial)
        try:
            out.write(batch_factory(payload=payload))
        except RetryableError:
            failed.append(payload)
            cut_failed = cut_failed or "ftruncate" in plan
            if not cut_failed:
                assert _records(out) == acked  # cut off at once
            else:  # a cut failed: what is left is cut when the file is next opened (or closed)
                recs = _records(out, strict=False)
                assert recs[:len(acked)] == acked and len(recs) <= len(acked) + 1
                assert recs[len(acked):] == [] or recs[-1] in failed
        else:
            acked.append(payload)
            failed.clear()
            cut_failed = False
            assert _records(out) == acked
        fos.arm()
    out.write(batch_factory(payload=b"after"))  # works again once the faults are gone
    assert _records(out) == acked + [b"after"]
    out.close()
    assert _open_fds() == fds
    # A new writer over the same files sees the same, and appends after them.
    out2 = FileOutput("f", d, max_bytes=max_bytes)
    out2.write(batch_factory(payload=b"reopened"))
    assert _records(out2) == acked + [b"after", b"reopened"]
    out2.close()


# -- the sink's store -------------------------------------------------------------


def _bid(i):
    return i.to_bytes(16, "big")


@pytest.mark.parametrize("code", [ENOSPC, EIO])
def test_sink_store_a_failed_batch_write_is_not_seen_and_the_next_put_succeeds(tmp_path, fos, code):
    st_ = SinkStore(tmp_path)
    assert st_.put("acme", _bid(1), b"one", 1, "h")
    fos.arm({"pwrite": {0: code}}, partial=2)
    with pytest.raises(RetryableError):
        st_.put("acme", _bid(2), b"two", 1, "h")
    assert st_.seen("acme") == {_bid(1)}
    fos.arm()
    assert st_.put("acme", _bid(2), b"two", 1, "h")
    st_.close()
    st2 = SinkStore(tmp_path)
    assert st2.seen("acme") == {_bid(1), _bid(2)}
    assert [b for p in sorted((tmp_path / "acme").glob("*.ibatch")) for b in read_batches(p, strict=True)] \
        == [b"one", b"two"]
    st2.close()


@pytest.mark.parametrize("code", [ENOSPC, EIO])
def test_sink_store_an_id_not_written_stays_seen_and_is_written_with_the_next(tmp_path, fos, code):
    st_ = SinkStore(tmp_path)
    assert st_.put("acme", _bid(1), b"one", 1, "h")
    # pwrite calls: 0 = the batch, 1 = its id (cut short, then fails)
    fos.arm({"pwrite": {1: code}}, partial=5)
    assert st_.put("acme", _bid(2), b"two", 1, "h")  # the batch is stored: answered stored
    assert (tmp_path / "acme" / "seen.ids").stat().st_size == 16  # no torn id left behind
    assert st_.put("acme", _bid(2), b"two", 1, "h") is False  # a resend is a duplicate
    fos.arm()
    assert st_.put("acme", _bid(3), b"three", 1, "h")
    assert (tmp_path / "acme" / "seen.ids").read_bytes() == _bid(1) + _bid(2) + _bid(3)
    st_.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step_st, max_size=20))
def test_property_sink_store_holds_each_stored_batch_once(tmp_path_factory, monkeypatch, steps):
    fos = FaultyOs()
    monkeypatch.setattr(filemod, "os", fos)
    d = tmp_path_factory.mktemp("sink")
    store = SinkStore(d, max_file_bytes=64)
    stored, ids = [], set()
    for i, (payload, plan, partial) in enumerate(steps):
        fos.arm(plan, partial)
        for _ in range(2):  # each batch sent twice, as a retrying client would
            try:
                if store.put("acme", _bid(i), payload, 1, "h"):
                    stored.append(payload)
                    ids.add(_bid(i))
            except (RetryableError, OSError):
                pass
        fos.arm()
    store.close()
    files = sorted((d / "acme").glob("*.ibatch"))
    assert [b for p in files for b in read_batches(p, strict=True)] == stored
    store2 = SinkStore(d)
    assert store2.seen("acme") == ids
    assert len((d / "acme" / "seen.ids").read_bytes()) == 16 * len(ids)
    assert store2.put("acme", _bid(10_000), b"after", 1, "h")
    store2.close()
