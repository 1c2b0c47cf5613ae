"""Append, pending, ack, replay, paging, outputs, rotation, locking, stats."""
from __future__ import annotations

import os
import threading

import pytest
from spool_helpers import T0, bid, fill, ids, payload

from ingress.errors import SpoolError
from ingress.spool import RecordRef, Spool, TenantPolicy, stats_for
from ingress.spool.segment import REC_HEADER_SIZE, SEG_HEADER_SIZE


def test_append_then_pending_returns_the_batches_oldest_first(open_spool):
    sp = open_spool()
    refs = fill(sp, "acme", 5, samples=7)
    recs = sp.pending("acme", "out", limit=100)
    assert ids(recs) == [0, 1, 2, 3, 4]
    assert [r.ref for r in recs] == refs
    assert recs[2].payload == payload(2)
    assert recs[2].sample_count == 7 and recs[2].first_ts_ns == T0
    assert refs == sorted(refs)


def test_limit_and_after_page_through_without_acks(open_spool):
    sp = open_spool()
    fill(sp, "acme", 10)
    first = sp.pending("acme", "out", limit=4)
    assert ids(first) == [0, 1, 2, 3]
    second = sp.pending("acme", "out", limit=4, after=first[-1].ref)
    assert ids(second) == [4, 5, 6, 7]
    # without ``after`` nothing moved: nothing was acknowledged
    assert ids(sp.pending("acme", "out", limit=2)) == [0, 1]


def test_out_of_order_acks_leave_exactly_the_unacked(open_spool):
    sp = open_spool()
    refs = fill(sp, "acme", 8)
    for i in (5, 0, 7, 2):
        assert sp.ack("acme", "out", refs[i]) is True
    assert ids(sp.pending("acme", "out", limit=100)) == [1, 3, 4, 6]
    assert sp.ack("acme", "out", refs[5]) is False  # twice: no effect
    st = sp.stats()["acme"]
    assert st["batches_pending"] == 4 and st["samples_pending"] == 40


def test_acks_survive_reopen_and_unacked_come_back(open_spool):
    sp = open_spool()
    refs = fill(sp, "acme", 6)
    for i in (4, 1, 2):
        sp.ack("acme", "out", refs[i])
    sp.close()
    sp2 = open_spool()
    recs = sp2.pending("acme", "out", limit=100)
    assert ids(recs) == [0, 3, 5]
    assert [r.ref for r in recs] == [refs[0], refs[3], refs[5]]  # refs stay valid across opens
    assert sp2.stats()["acme"]["corrupt_records"] == 0


def test_each_output_has_its_own_view(open_spool):
    sp = open_spool(outputs=["kafka", "http"])
    refs = fill(sp, "acme", 4)
    sp.ack("acme", "kafka", refs[0])
    sp.ack("acme", "kafka", refs[1])
    sp.ack("acme", "http", refs[3])
    assert ids(sp.pending("acme", "kafka")) == [2, 3]
    assert ids(sp.pending("acme", "http")) == [0, 1, 2]
    st = sp.stats()["acme"]
    assert st["pending_by_output"] == {"kafka": {"batches": 2, "samples": 20},
                                       "http": {"batches": 3, "samples": 30}}
    assert st["batches_pending"] == 4  # none is delivered everywhere yet
    sp.ack("acme", "http", refs[0])
    assert sp.stats()["acme"]["batches_pending"] == 3


def test_outputs_per_tenant_mapping(open_spool):
    sp = open_spool(tenants={"acme": TenantPolicy(), "beta": TenantPolicy()},
                    outputs={"acme": ["k"], "beta": ["k", "h"]})
    fill(sp, "acme", 1)
    fill(sp, "beta", 1)
    assert sp.outputs_for("acme") == ("k",)
    with pytest.raises(SpoolError, match="output 'h' does not serve tenant 'acme'"):
        sp.pending("acme", "h")
    assert len(sp.pending("beta", "h")) == 1


def test_fully_acked_sealed_segments_are_deleted_with_their_ledgers(open_spool, data_dir):
    # 4 KiB segments: each holds 15 records of 256 bytes.
    sp = open_spool(outputs=["a", "b"], segment_bytes=4096)
    refs = fill(sp, "acme", 40)
    tdir = data_dir / "spool" / "acme"
    segs = sorted(p.name for p in tdir.glob("*.seg"))
    assert len(segs) == 3
    first_seg = refs[0].segment
    in_first = [r for r in refs if r.segment == first_seg]
    for r in in_first:
        sp.ack("acme", "a", r)
    assert (tdir / segs[0]).exists()  # output b has not acked yet
    for r in in_first:
        sp.ack("acme", "b", r)
    assert not (tdir / segs[0]).exists()
    assert not list(tdir.glob(f"{first_seg:020d}.*"))  # ledgers gone too
    assert sp.stats()["acme"]["segments"] == 2
    assert ids(sp.pending("acme", "a", limit=1)) == [len(in_first)]
    # acks of a deleted record are harmless
    assert sp.ack("acme", "a", in_first[0]) is False


def test_active_segment_fully_acked_is_deleted_on_next_open(open_spool, data_dir):
    sp = open_spool()
    for r in fill(sp, "acme", 3):
        sp.ack("acme", "out", r)
    assert sp.stats()["acme"]["segments"] == 1  # active, kept until sealed
    sp.close()
    sp2 = open_spool()
    assert sp2.stats()["acme"]["segments"] == 0
    assert list((data_dir / "spool" / "acme").glob("*.seg")) == []


def test_segment_bytes_and_record_layout_on_disk(open_spool, data_dir):
    sp = open_spool()
    refs = fill(sp, "acme", 3, size=100)
    assert [r.offset for r in refs] == [SEG_HEADER_SIZE + k * (REC_HEADER_SIZE + 100) for k in range(3)]
    seg = data_dir / "spool" / "acme" / f"{refs[0].segment:020d}.seg"
    data = seg.read_bytes()
    assert data[:8] == b"INGSPSEG"
    assert data[SEG_HEADER_SIZE:SEG_HEADER_SIZE + 4] == b"ISPR"
    assert data[refs[1].offset + 32:refs[1].offset + 48] == bid(1)
    assert data[refs[1].offset + REC_HEADER_SIZE:refs[1].offset + REC_HEADER_SIZE + 100] == payload(1, 100)
    assert sp.stats()["acme"]["bytes"] == len(data)


def test_second_writer_is_refused_while_readonly_stats_work(open_spool, data_dir):
    sp = open_spool(outputs=["k"])
    refs = fill(sp, "acme", 3, samples=4)
    sp.ack("acme", "k", refs[0])
    with pytest.raises(SpoolError, match=r"spool is in use by another process \(pid %d\)" % os.getpid()):
        Spool(data_dir, {"acme": TenantPolicy()}, ["k"])
    st = stats_for(data_dir)  # outputs discovered from the ledgers on disk
    assert st["acme"]["batches_pending"] == 2 and st["acme"]["samples_pending"] == 8
    assert st["acme"]["segments"] == 1
    st2 = stats_for(data_dir, outputs=["k", "other"])
    assert st2["acme"]["pending_by_output"]["other"]["batches"] == 3
    ro = Spool.open_readonly(data_dir)
    with pytest.raises(SpoolError, match="read-only"):
        ro.append("acme", bid(9), b"x", 1, T0)
    ro._abandon()


def test_stats_for_missing_dir_is_empty(tmp_path):
    assert stats_for(tmp_path / "nothing") == {}
    assert not (tmp_path / "nothing").exists()


def test_oldest_age_follows_the_oldest_undelivered_batch(open_spool, clock):
    sp = open_spool()
    refs = [sp.append("acme", bid(i), b"p", 1, T0 + i * 10**9) for i in range(3)]
    clock.advance(100)
    assert sp.stats()["acme"]["oldest_age_s"] == pytest.approx(100.0)
    sp.ack("acme", "out", refs[0])
    assert sp.stats()["acme"]["oldest_age_s"] == pytest.approx(99.0)
    sp.ack("acme", "out", refs[2])
    sp.ack("acme", "out", refs[1])
    assert sp.stats()["acme"]["oldest_age_s"] == 0.0


def test_refusals_name_what_was_wrong(open_spool, data_dir):
    sp = open_spool()
    with pytest.raises(SpoolError, match="tenant 'nope' has no spool"):
        sp.append("nope", bid(1), b"x", 1, T0)
    with pytest.raises(ValueError, match="batch_id must be 16 bytes"):
        sp.append("acme", b"short", b"x", 1, T0)
    with pytest.raises(ValueError, match="sample_count"):
        sp.append("acme", bid(1), b"x", -1, T0)
    with pytest.raises(ValueError, match="not a valid tenant id"):
        Spool(data_dir / "x", {"Acme!": TenantPolicy()})
    with pytest.raises(ValueError, match="fsync: 'always'"):
        Spool(data_dir / "y", {"acme": TenantPolicy()}, fsync="always")
    with pytest.raises(ValueError, match="max_bytes"):
        TenantPolicy(max_bytes=0)
    ref = sp.append("acme", bid(1), b"x", 1, T0)
    sp.close()
    for call in (lambda: sp.append("acme", bid(2), b"x", 1, T0), lambda: sp.pending("acme", "out"),
                 lambda: sp.ack("acme", "out", ref)):
        with pytest.raises(SpoolError, match="closed"):
            call()
    (data_dir / "file").write_text("not a directory")
    with pytest.raises(SpoolError, match=r"file: cannot open the spool: "):
        Spool(data_dir / "file", {"acme": TenantPolicy()})


def test_directories_and_files_are_private(open_spool, data_dir):
    sp = open_spool()
    fill(sp, "acme", 1)
    assert (os.stat(data_dir).st_mode & 0o777) == 0o700
    assert (os.stat(data_dir / "spool" / "acme").st_mode & 0o777) == 0o700
    for p in (data_dir / "spool" / "acme").iterdir():
        assert (os.stat(p).st_mode & 0o077) == 0, p


def test_group_commit_defers_sync_to_the_flusher(open_spool, monkeypatch):
    syncs = []
    real = os.fdatasync
    sp = open_spool(fsync=1000.0)  # the flusher thread will not wake during the test
    fill(sp, "acme", 1)  # creates the segment (that is always synced)
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    fill(sp, "acme", 5, start=1)
    assert syncs == []
    sp.flush()
    assert len(syncs) == 1
    sp.close()
    sp2 = open_spool()
    assert ids(sp2.pending("acme", "out", limit=100)) == [0, 1, 2, 3, 4, 5]


def test_batch_policy_syncs_before_append_returns(open_spool, monkeypatch):
    sp = open_spool()
    fill(sp, "acme", 1)
    events = []
    real_writev, real_sync = os.writev, os.fdatasync
    monkeypatch.setattr(os, "writev", lambda fd, bufs: (events.append("write"), real_writev(fd, bufs))[1])
    monkeypatch.setattr(os, "fdatasync", lambda fd: (events.append("sync"), real_sync(fd))[1])
    fill(sp, "acme", 2, start=1)
    assert events == ["write", "sync", "write", "sync"]


def test_concurrent_appender_and_delivery_workers(open_spool):
    """One batcher thread appends while one worker per output pages with ``after`` and acks."""
    outputs = ["k", "h"]
    sp = open_spool(outputs=outputs, segment_bytes=4096)
    n = 300
    done = threading.Event()
    delivered = {o: [] for o in outputs}
    errors = []

    def batcher():
        try:
            for i in range(n):
                sp.append("acme", bid(i), payload(i, 120), 1, T0)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def worker(out):
        try:
            cursor = None
            while True:
                finished = done.is_set()
                recs = sp.pending("acme", out, limit=16, after=cursor)
                for r in reversed(recs):  # acks out of order on purpose
                    assert r.payload == payload(int.from_bytes(r.batch_id, "big"), 120)
                    sp.ack("acme", out, r.ref)
                if recs:
                    cursor = recs[-1].ref
                    delivered[out].extend(ids(recs))
                elif finished:
                    return
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=batcher)] + [threading.Thread(target=worker, args=(o,)) for o in outputs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    for o in outputs:
        assert delivered[o] == list(range(n))
    st = sp.stats()["acme"]
    assert st["batches_pending"] == 0
    assert st["segments"] <= 1  # only the active one may remain


def test_ref_is_a_plain_tuple():
    assert RecordRef(3, 56) == (3, 56)
    assert RecordRef(2, 900) < RecordRef(3, 56)
