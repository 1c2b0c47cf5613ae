"""A full disk: SpoolFull with one clear log line, nothing half-written, resume when space returns."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from spool_helpers import T0, bid, fill, ids, payload

from ingress.errors import SpoolError
from ingress.spool import SpoolFull


def _raise(code):
    def f(*a, **k):
        raise OSError(code, os.strerror(code))
    return f


def _segment_bytes(data_dir):
    return {p.name: p.stat().st_size for p in (data_dir / "spool" / "acme").glob("*.seg")}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_on_write_refuses_logs_once_and_resumes(open_spool, data_dir, monkeypatch, caplog, code):
    sp = open_spool()
    fill(sp, "acme", 3)
    before = _segment_bytes(data_dir)
    monkeypatch.setattr(os, "writev", _raise(code))
    with caplog.at_level(logging.INFO, logger="ingress.spool"):
        for i in range(3):
            with pytest.raises(SpoolFull, match=r"\.seg: spool full: cannot write tenant 'acme' batch [0-9a-f]{32} "
                                                r"\(256 bytes\): .*; refusing new batches until space returns"):
                sp.append("acme", bid(30 + i), payload(30 + i), 1, T0)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "spool full" in errors[0].getMessage()
        assert _segment_bytes(data_dir) == before
        monkeypatch.undo()
        sp.append("acme", bid(9), payload(9), 1, T0)
        assert any("writes succeed again" in r.getMessage() for r in caplog.records)
    assert ids(sp.pending("acme", "out")) == [0, 1, 2, 9]
    sp.close()
    sp2 = open_spool()
    assert ids(sp2.pending("acme", "out")) == [0, 1, 2, 9]
    assert sp2.stats()["acme"]["corrupt_records"] == 0


def test_a_record_cut_short_by_the_full_disk_is_removed(open_spool, data_dir, monkeypatch):
    sp = open_spool()
    fill(sp, "acme", 2)
    before = _segment_bytes(data_dir)
    real_write = os.write

    def half_then_full(fd, bufs):
        data = b"".join(bufs)
        return real_write(fd, data[: len(data) // 2])  # a short write; the rest will fail

    monkeypatch.setattr(os, "writev", half_then_full)
    monkeypatch.setattr(os, "write", _raise(errno.ENOSPC))
    with pytest.raises(SpoolFull):
        sp.append("acme", bid(5), payload(5), 1, T0)
    monkeypatch.undo()
    assert _segment_bytes(data_dir) == before  # the partial record was truncated away
    sp.append("acme", bid(6), payload(6), 1, T0)
    sp.close()
    sp2 = open_spool()
    assert ids(sp2.pending("acme", "out")) == [0, 1, 6]
    assert sp2.stats()["acme"]["corrupt_records"] == 0


def test_full_disk_on_fsync_takes_the_record_back(open_spool, data_dir, monkeypatch):
    sp = open_spool()
    fill(sp, "acme", 2)
    before = _segment_bytes(data_dir)
    real_sync = os.fdatasync
    calls = []

    def fail_first(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", fail_first)
    with pytest.raises(SpoolFull, match="No space left on device"):
        sp.append("acme", bid(5), payload(5), 1, T0)
    monkeypatch.undo()
    assert _segment_bytes(data_dir) == before
    assert ids(sp.pending("acme", "out")) == [0, 1]  # never published
    sp.append("acme", bid(6), payload(6), 1, T0)
    sp.close()
    sp2 = open_spool()
    assert ids(sp2.pending("acme", "out")) == [0, 1, 6]
    assert sp2.stats()["acme"]["corrupt_records"] == 0


def test_full_disk_while_creating_a_segment_leaves_no_file(open_spool, data_dir, monkeypatch):
    sp = open_spool()
    monkeypatch.setattr(os, "writev", _raise(errno.ENOSPC))
    with pytest.raises(SpoolFull, match=r"00000000000000000001\.seg: spool full: cannot write tenant 'acme' new segment"):
        sp.append("acme", bid(1), payload(1), 1, T0)
    monkeypatch.undo()
    assert list((data_dir / "spool" / "acme").iterdir()) == []
    ref = sp.append("acme", bid(2), payload(2), 1, T0)
    assert ids(sp.pending("acme", "out")) == [2]
    assert ref.segment == 2


def test_other_io_errors_are_spool_errors_not_full(open_spool, monkeypatch):
    sp = open_spool()
    fill(sp, "acme", 1)
    monkeypatch.setattr(os, "writev", _raise(errno.EIO))
    with pytest.raises(SpoolError, match="Input/output error") as exc:
        sp.append("acme", bid(5), payload(5), 1, T0)
    assert not isinstance(exc.value, SpoolFull)


def test_ack_that_cannot_be_written_still_holds_in_memory(open_spool, monkeypatch, caplog):
    sp = open_spool()
    refs = fill(sp, "acme", 2)
    monkeypatch.setattr(os, "write", _raise(errno.ENOSPC))
    with caplog.at_level(logging.WARNING, logger="ingress.spool"):
        assert sp.ack("acme", "out", refs[0]) is True
    monkeypatch.undo()
    assert any("cannot record ack" in r.getMessage() for r in caplog.records)
    assert ids(sp.pending("acme", "out")) == [1]


TMPFS_CHILD = textwrap.dedent(r"""
    import json, sys, time
    from ingress.spool import Spool, SpoolFull, TenantPolicy
    d = sys.argv[1]
    def open_():
        return Spool(d, {"acme": TenantPolicy(max_bytes=1 << 30)}, ["out"], write_mb_s=None, segment_bytes=32768)
    sp = open_()
    accepted, msg = [], None
    for i in range(10_000):
        try:
            sp.append("acme", i.to_bytes(16, "big"), bytes([i % 251]) * 8000, 1, time.time_ns())
            accepted.append(i)
        except SpoolFull as e:
            msg = str(e)
            break
    try:
        sp.append("acme", (99999).to_bytes(16, "big"), b"x" * 8000, 1, time.time_ns())
        still_full = False
    except SpoolFull:
        still_full = True
    acked = []
    for r in sp.pending("acme", "out", limit=100_000):  # delivering frees the sealed segments
        sp.ack("acme", "out", r.ref)
        acked.append(int.from_bytes(r.batch_id, "big"))
    sp.append("acme", (77777).to_bytes(16, "big"), b"y" * 8000, 1, time.time_ns())
    sp.close()
    sp = open_()
    recs = sp.pending("acme", "out", limit=100_000)
    ok = all(r.payload == (b"y" * 8000 if r.batch_id == (77777).to_bytes(16, "big")
                           else bytes([int.from_bytes(r.batch_id, "big") % 251]) * 8000) for r in recs)
    print(json.dumps({"accepted": accepted, "msg": msg, "still_full": still_full, "acked": acked,
                      "pending": [int.from_bytes(r.batch_id, "big") for r in recs], "payloads_ok": ok,
                      "corrupt": sp.stats()["acme"]["corrupt_records"]}))
    sp.close()
""")


def test_a_real_tiny_filesystem_fills_up_and_recovers(tmp_path):
    """A 256 KiB tmpfs in an unprivileged user+mount namespace: a real ENOSPC from the kernel."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unprivileged user and mount namespaces are not available on this host")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size=262144 none "$1" && exec "$2" -c "$3" "$1/data"'
    out = subprocess.run([unshare, "-rm", "sh", "-c", script, "sh", str(mnt), sys.executable, TMPFS_CHILD],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert len(res["accepted"]) > 10
    assert "spool full" in res["msg"] and "No space left on device" in res["msg"]
    assert res["still_full"] is True
    assert res["acked"] == res["accepted"]  # every accepted batch was readable
    assert 77777 in res["pending"]
    assert set(res["pending"]) <= set(res["acked"]) | {77777}
    assert res["payloads_ok"] is True
    assert res["corrupt"] == 0
