"""Crash and corruption recovery: torn tails, flipped bytes, ledgers, leftovers, crash points, kill -9."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from spool_helpers import T0, bid, fill, ids, payload

from ingress.spool import Spool, TenantPolicy
from ingress.spool.ledger import ACK_ENTRY_SIZE, ACK_HEADER_SIZE, ledger_name
from ingress.spool.segment import REC_HEADER_SIZE, segment_name

SIZE = 150


def _open(d, **kw):
    kw.setdefault("write_mb_s", None)
    kw.setdefault("clock", lambda: T0)
    kw.setdefault("maintain_every_s", None)
    return Spool(d, {"acme": TenantPolicy()}, ["out"], **kw)


@pytest.fixture
def golden(tmp_path):
    """A closed spool with records 0, 1, 2 (150-byte payloads) in one segment."""
    d = tmp_path / "golden"
    sp = _open(d)
    refs = fill(sp, "acme", 3, size=SIZE)
    sp.close()
    seg = d / "spool" / "acme" / segment_name(refs[0].segment)
    return d, refs, seg.relative_to(d)


def _copy(golden, dst):
    shutil.copytree(golden[0], dst)
    return dst, dst / golden[2]


def test_truncating_the_last_record_at_every_offset(golden, tmp_path):
    _, refs, _ = golden
    last = refs[2].offset
    end = last + REC_HEADER_SIZE + SIZE
    for cut in range(last, end):
        d, seg = _copy(golden, tmp_path / f"cut{cut}")
        os.truncate(seg, cut)
        sp = _open(d)
        assert ids(sp.pending("acme", "out", limit=10)) == [0, 1], cut
        assert sp.stats()["acme"]["corrupt_records"] == (1 if cut > last else 0), cut
        assert os.path.getsize(seg) == last, cut  # the torn tail is gone
        sp.append("acme", bid(9), payload(9), 1, T0)
        sp.close()
        sp = _open(d)
        assert ids(sp.pending("acme", "out", limit=10)) == [0, 1, 9], cut
        # the loss stays visible after the truncation and a reopen, and is not counted twice
        assert sp.stats()["acme"]["corrupt_records"] == (1 if cut > last else 0), cut
        sp.close()
        shutil.rmtree(d)


def test_a_flipped_byte_anywhere_in_a_middle_record_skips_only_that_record(golden, tmp_path):
    _, refs, _ = golden
    start = refs[1].offset
    for pos in range(start, start + REC_HEADER_SIZE + SIZE):
        d, seg = _copy(golden, tmp_path / f"flip{pos}")
        with open(seg, "r+b") as f:
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x5A]))
        sp = _open(d)
        recs = sp.pending("acme", "out", limit=10)
        assert ids(recs) == [0, 2], pos
        assert recs[1].payload == payload(2, SIZE)
        assert sp.stats()["acme"]["corrupt_records"] == 1, pos
        sp.append("acme", bid(9), payload(9), 1, T0)
        assert ids(sp.pending("acme", "out", limit=10)) == [0, 2, 9], pos
        sp.close()
        shutil.rmtree(d)


def test_a_damaged_segment_header_keeps_its_records(golden, tmp_path):
    for pos in range(0, 52):  # bytes 52..55 are padding outside the header CRC
        d, seg = _copy(golden, tmp_path / f"hdr{pos}")
        with open(seg, "r+b") as f:
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x01]))
        sp = _open(d)
        assert ids(sp.pending("acme", "out", limit=10)) == [0, 1, 2], pos
        assert sp.stats()["acme"]["corrupt_records"] == 1, pos
        sp.close()
        shutil.rmtree(d)


def test_garbage_between_records_is_skipped(golden, tmp_path):
    d, seg = _copy(golden, tmp_path / "g")
    _, refs, _ = golden
    data = seg.read_bytes()
    cut = refs[1].offset
    seg.write_bytes(data[:cut] + b"ISPR" + os.urandom(300) + data[cut:])
    sp = _open(d)
    assert ids(sp.pending("acme", "out", limit=10)) == [0, 1, 2]
    assert sp.stats()["acme"]["corrupt_records"] == 1
    sp.close()


def test_bit_rot_after_open_is_caught_on_read(golden, tmp_path):
    d, seg = _copy(golden, tmp_path / "rot")
    _, refs, _ = golden
    sp = _open(d)
    with open(seg, "r+b") as f:
        f.seek(refs[1].offset + REC_HEADER_SIZE + 10)
        f.write(b"\xff\xfe")
    assert ids(sp.pending("acme", "out", limit=10)) == [0, 2]
    st = sp.stats()["acme"]
    assert st["corrupt_records"] == 1 and st["batches_pending"] == 2
    assert ids(sp.pending("acme", "out", limit=10)) == [0, 2]  # counted once, never returned
    assert sp.stats()["acme"]["corrupt_records"] == 1
    sp.close()


def test_torn_and_damaged_ledger_entries(tmp_path):
    d = tmp_path / "d"
    sp = _open(d)
    refs = fill(sp, "acme", 5)
    for r in refs[:4]:
        sp.ack("acme", "out", r)
    sp.close()
    led = d / "spool" / "acme" / ledger_name(refs[0].segment, "out")
    size = os.path.getsize(led)
    assert size == ACK_HEADER_SIZE + 4 * ACK_ENTRY_SIZE
    with open(led, "ab") as f:
        f.write(b"\x01\x02\x03\x04\x05")  # a torn fifth entry
    with open(led, "r+b") as f:  # damage the second entry: that ack is lost
        f.seek(ACK_HEADER_SIZE + ACK_ENTRY_SIZE + 2)
        f.write(b"\xee")
    sp = _open(d)
    assert ids(sp.pending("acme", "out", limit=10)) == [1, 4]  # redelivered, never lost
    assert os.path.getsize(led) == size  # the torn entry was cut off
    sp.ack("acme", "out", refs[1])
    sp.close()
    sp = _open(d)
    assert ids(sp.pending("acme", "out", limit=10)) == [4]
    sp.close()


def test_a_ledger_of_another_segment_is_ignored_and_removed(tmp_path):
    d = tmp_path / "d"
    sp = _open(d)
    refs = fill(sp, "acme", 2)
    sp.close()
    led = d / "spool" / "acme" / ledger_name(refs[0].segment, "out")
    from ingress.spool.ledger import pack_entry
    stale_uid = b"\x00stale\x00\x00"
    led.write_bytes(b"ISAK\x01\x00\x00\x00" + stale_uid + pack_entry(stale_uid, refs[0].offset))
    sp = _open(d)
    assert ids(sp.pending("acme", "out", limit=10)) == [0, 1]
    assert not led.exists()
    sp.close()


def test_open_removes_crash_leftovers(tmp_path):
    d = tmp_path / "d"
    sp = _open(d)
    fill(sp, "acme", 2)
    sp.close()
    tdir = d / "spool" / "acme"
    (tdir / f"{98:020d}.seg.deleting").write_bytes(b"half deleted")
    (tdir / ledger_name(99, "out")).write_bytes(b"ISAK orphan")
    (tdir / "counters.json.tmp").write_text("{")
    (d / "keys").mkdir(mode=0o700)
    (d / "keys" / "acme.key.1234.tmp").write_bytes(b"k")
    (tdir / segment_name(100)).write_bytes(b"")  # crashed right after create
    (tdir / segment_name(101)).write_bytes(b"INGSPSEG\x01")  # crashed inside the header
    sp = _open(d)
    left = sorted(p.name for p in tdir.iterdir())
    assert left == [segment_name(1)]
    assert list((d / "keys").iterdir()) == []
    assert sp.stats()["acme"]["corrupt_records"] == 0
    ref = sp.append("acme", bid(5), b"x", 1, T0)
    assert ref.segment == 102  # never reuses a number a leftover had
    assert ids(sp.pending("acme", "out", limit=10)) == [0, 1, 5]
    sp.close()


class Crash(BaseException):
    """The process dies here (not an OSError: no handler may swallow it)."""


CRASHABLE = ("writev", "write", "fdatasync", "fsync", "rename", "unlink", "ftruncate", "replace")


def _arm(monkeypatch, k):
    """Let the first k-1 calls of the crashable syscalls through, crash on the k-th."""
    calls = [0]
    for name in CRASHABLE:
        real = getattr(os, name)

        def wrapper(*a, _real=real, **kw):
            calls[0] += 1
            if calls[0] == k:
                raise Crash
            return _real(*a, **kw)

        monkeypatch.setattr(os, name, wrapper)


def test_crash_at_every_syscall_of_rotation_ack_deletion_and_quota(tmp_path, monkeypatch):
    """Crash at the k-th write/sync/rename/unlink for every k; reopen must show every
    returned append that no returned ack removed, and nothing else broken."""
    k = 0
    while True:
        k += 1
        d = tmp_path / f"k{k}"
        # 1 KiB segments of 4 records each and a quota of about 5 segments
        sp = _open(d, segment_bytes=1024)
        sp2 = None
        base = fill(sp, "acme", 6, size=SIZE)  # segments 1 and 2
        attempted, returned, acking, acked = set(range(6)), set(range(6)), set(), set()
        quota = TenantPolicy(max_bytes=5000)
        _arm(monkeypatch, k)
        finished = False
        try:
            for i, r in enumerate(base):  # all of segment 1: it is deleted
                if r.segment == base[0].segment:
                    acking.add(i)  # an ack cut short by the crash may or may not have landed
                    sp.ack("acme", "out", r)
                    acked.add(i)
            for i in range(6, 12):  # rotation to new segments
                attempted.add(i)
                sp.append("acme", bid(i), payload(i, SIZE), 1, T0)
                returned.add(i)
            sp.close()
            sp2 = Spool(d, {"acme": quota}, ["out"], write_mb_s=None, segment_bytes=1024, clock=lambda: T0)
            for i in range(12, 32):  # past the quota: oldest segments dropped
                attempted.add(i)
                sp2.append("acme", bid(i), payload(i, SIZE), 1, T0)
                returned.add(i)
            sp2.close()
            finished = True
        except Crash:
            pass
        finally:
            monkeypatch.undo()
            for s in (sp, sp2):
                if s is not None:
                    s._abandon()
        re = Spool(d, {"acme": quota}, ["out"], write_mb_s=None, segment_bytes=1024, clock=lambda: T0)
        got = set(ids(re.pending("acme", "out", limit=100)))
        st = re.stats()["acme"]
        dropped = st["dropped_batches"]
        assert got <= attempted - acked, k
        assert len(returned - acking - got) <= dropped, k  # only quota drops may remove a returned append
        assert st["corrupt_records"] <= 1, k  # at most the one record torn by the crash
        names = [p.name for p in (d / "spool" / "acme").iterdir()]
        assert not [n for n in names if n.endswith((".deleting", ".tmp"))], (k, names)
        segs = {int(n[:20]) for n in names if n.endswith(".seg")}
        assert {int(n[:20]) for n in names if n.endswith(".ack")} <= segs, (k, names)
        re.append("acme", bid(99), b"after", 1, T0)
        assert 99 in ids(re.pending("acme", "out", limit=100))
        re.close()
        shutil.rmtree(d)
        if finished:
            assert dropped > 0 and got == returned - acked - set(range(dropped + len(acked)))
            break
    assert k > 50  # the scenario really went through many crash points


CHILD = textwrap.dedent(r"""
    import os, random, sys, time
    from ingress.spool import Spool, TenantPolicy
    sp = Spool(sys.argv[1], {"acme": TenantPolicy(), "beta": TenantPolicy(encrypt=True)}, ["out"],
               write_mb_s=None, segment_bytes=16384)
    i = 0
    while True:
        t = "acme" if i % 2 == 0 else "beta"
        ref = sp.append(t, i.to_bytes(16, "big"), random.Random(i).randbytes(900), 1, time.time_ns())
        print("a", i, flush=True)
        if i % 3 == 0:
            sp.ack(t, "out", ref)
            print("k", i, flush=True)
        i += 1
""")


def test_kill_9_while_appending_loses_no_returned_append(tmp_path):
    d = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d)], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.split())
            if len(lines) >= 400:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lines.extend(l.split() for l in proc.stdout.read().splitlines() if l.strip())
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    appended = {int(i) for op, i in lines if op == "a"}
    acked = {int(i) for op, i in lines if op == "k"}
    assert len(appended) >= 250
    sp = Spool(d, {"acme": TenantPolicy(), "beta": TenantPolicy(encrypt=True)}, ["out"], write_mb_s=None)
    got = {}
    for t in ("acme", "beta"):
        for r in sp.pending(t, "out", limit=10_000):
            got[int.from_bytes(r.batch_id, "big")] = r
    assert appended - acked <= set(got)
    assert not (acked & set(got))
    top = max(appended)
    assert set(got) <= set(range(top + 2))  # at most the one append that had not returned yet
    for i, r in got.items():
        assert r.payload == __import__("random").Random(i).randbytes(900)
    sp.close()
