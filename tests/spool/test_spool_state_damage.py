"""Damaged state files and stray entries: counted, reported, set aside, or the tenant held;
never a traceback, never another tenant's problem. And losses stay visible after a drain."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spool_helpers import T0, bid, fill, ids, payload

from ingress import cli
from ingress.errors import SpoolError
from ingress.spool import Spool, TenantPolicy, stats_for
from ingress.spool.ledger import ledger_name
from ingress.spool.segment import REC_HEADER_SIZE, segment_name

TENANTS = {"acme": TenantPolicy(), "beta": TenantPolicy()}


def _open(d, tenants=TENANTS):
    return Spool(d, tenants, ["out"], write_mb_s=None, maintain_every_s=None, clock=lambda: T0)


def _tree(d: Path):
    return {p.relative_to(d): (p.is_dir(), p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def _seeded(d):
    sp = _open(d)
    fill(sp, "acme", 3, size=150)
    fill(sp, "beta", 2, start=10)
    sp.close()
    return d / "spool" / "acme"


def _table(d: Path) -> str:
    cfg = d.parent / "agent.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{d}"\n[[tenants]]\nid = "acme"\n[[tenants]]\nid = "beta"\n'
                   f'[[outputs]]\ntype = "file"\nname = "out"\n')
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["spool", "stats", "-c", str(cfg)])
    assert rc == 0 and err.getvalue() == "", err.getvalue()
    return out.getvalue()


# ---------------------------------------------------------------- item 3: a stray directory holds one tenant

@pytest.mark.parametrize("name", [segment_name(9), ledger_name(1, "out"), "counters.json", "x.tmp",
                                  segment_name(4) + ".deleting"])
def test_a_directory_where_the_spool_keeps_a_file_holds_only_that_tenant(tmp_path, name):
    d = tmp_path / "data"
    tdir = _seeded(d)
    (tdir / name).mkdir()
    (tdir / name / "inside").write_bytes(b"keep me")
    before = _tree(tdir)
    sp = _open(d)
    try:
        assert list(sp.held) == ["acme"] and f"acme/{name}: is a directory" in sp.held["acme"]
        with pytest.raises(SpoolError, match="tenant 'acme' is held"):
            sp.append("acme", bid(5), b"x", 1, T0)
        assert ids(sp.pending("beta", "out")) == [10, 11]  # beta runs
        sp.append("beta", bid(12), b"x", 1, T0)
        assert set(sp.stats()) == {"beta"}
    finally:
        sp.close()
    assert _tree(tdir) == before  # nothing of the held tenant changed
    assert stats_for(d, ["out"])["acme"]["held"].endswith("move it away")
    table = _table(d)
    assert "acme: held: " in table and "Traceback" not in table


def test_a_directory_with_an_unrelated_name_is_left_alone(tmp_path):
    d = tmp_path / "data"
    tdir = _seeded(d)
    (tdir / "notes").mkdir()
    sp = _open(d)
    assert sp.held == {} and ids(sp.pending("acme", "out")) == [0, 1, 2]
    sp.close()
    assert (tdir / "notes").is_dir()


# ---------------------------------------------------------------- item 4: losses stay visible

def test_corrupt_records_stay_counted_after_the_rest_drained_and_a_reopen(tmp_path):
    d = tmp_path / "data"
    tdir = _seeded(d)
    seg = next(tdir.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[56 + REC_HEADER_SIZE + 150 + REC_HEADER_SIZE + 3] ^= 0xFF  # inside record 1's payload
    seg.write_bytes(bytes(data))
    sp = _open(d)
    recs = sp.pending("acme", "out")
    assert ids(recs) == [0, 2] and sp.stats()["acme"]["corrupt_records"] == 1
    sp.close()
    sp = _open(d)  # the damaged region is still on disk: not counted a second time
    assert sp.stats()["acme"]["corrupt_records"] == 1
    for r in sp.pending("acme", "out"):
        sp.ack("acme", "out", r.ref)  # the rest drains; the segment goes
    assert sp.stats()["acme"]["segments"] == 0
    sp.close()
    sp = _open(d)
    assert sp.stats()["acme"]["corrupt_records"] == 1
    sp.close()
    assert stats_for(d, ["out"])["acme"]["corrupt_records"] == 1
    row = next(line.split() for line in _table(d).splitlines() if line.startswith("acme"))
    head = _table(d).splitlines()[0]
    for col in ("corrupt records", "torn tails", "dropped samples", "damaged files", "dead letters"):
        assert col in head
    assert row[8] == "1"  # corrupt records


def test_a_record_failing_on_read_is_counted_once_across_reopens(tmp_path):
    d = tmp_path / "data"
    tdir = _seeded(d)
    sp = _open(d)
    seg = next(tdir.glob("*.seg"))
    with open(seg, "r+b") as f:  # bit rot after open, in the last record: a "tail" at the next open
        f.seek(56 + 2 * (REC_HEADER_SIZE + 150) + REC_HEADER_SIZE + 5)
        f.write(b"\x00\x01")
    assert ids(sp.pending("acme", "out")) == [0, 1]
    assert sp.stats()["acme"]["corrupt_records"] == 1
    sp.close()
    for _ in range(2):
        sp = _open(d)
        assert sp.stats()["acme"]["corrupt_records"] == 1
        assert ids(sp.pending("acme", "out")) == [0, 1]
        sp.close()


# ---------------------------------------------------------------- item 6: damaged state files

@pytest.mark.parametrize("content", [b'{"dropped_batches": 1e999, "dropped_samples": 2}',
                                     b'{"dropped_batches": NaN}', b"[" * 100_000 + b"]" * 100_000,
                                     b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, b"\xff\xfe", b"[1, 2]",
                                     b'{"torn_tails": -1}', b'{"dropped_batches": true}'])
def test_damaged_counters_are_counted_and_set_aside(tmp_path, content):
    d = tmp_path / "data"
    tdir = _seeded(d)
    (tdir / "counters.json").write_bytes(content)
    sp = _open(d)
    assert sp.held == {}
    s = sp.stats()["acme"]
    assert s["damaged_files"] == 1 and s["batches_pending"] == 3
    sp.append("acme", bid(7), payload(7), 1, T0)
    sp.close()
    assert (tdir / "counters.json.damaged").read_bytes() == content
    assert json.loads((tdir / "counters.json").read_text())["damaged_files"] == 1
    sp = _open(d)
    assert sp.stats()["acme"]["damaged_files"] == 1  # counted once
    sp.close()
    assert "acme" in _table(d)


@pytest.mark.parametrize("name", ["99999999999999999999.seg", "18446744073709551616.seg",
                                  "9223372036854775808.seg".rjust(24, "0"), "²" * 20 + ".seg",
                                  "abc.seg", "00000000000000000001.ack"])
def test_a_segment_name_the_spool_never_writes_is_set_aside(tmp_path, name):
    d = tmp_path / "data"
    tdir = _seeded(d)
    (tdir / name).write_bytes(b"x" * 100)
    sp = _open(d)
    assert sp.held == {} and sp.stats()["acme"]["damaged_files"] == 1
    ref = sp.append("acme", bid(7), payload(7), 1, T0)  # struct.error before: seq past 64 bits
    assert ids(sp.pending("acme", "out")) == [0, 1, 2, 7] and ref.segment < 1 << 63
    sp.close()
    assert not (tdir / name).exists() and (tdir / (name + ".damaged")).exists()


def test_a_damaged_ledger_is_counted(tmp_path):
    d = tmp_path / "data"
    tdir = _seeded(d)
    sp = _open(d)
    recs = sp.pending("acme", "out")
    sp.ack("acme", "out", recs[0].ref)
    sp.close()
    led = next(tdir.glob("*.ack"))
    led.write_bytes(b"ISAK" + os.urandom(20))
    sp = _open(d)
    assert sp.stats()["acme"]["damaged_files"] == 1
    assert ids(sp.pending("acme", "out")) == [0, 1, 2]  # the ack is lost: sent again, not lost
    sp.close()


# ---------------------------------------------------------------- fuzz: any damage, never a traceback

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["dropped_batches", "dropped_samples", "torn_tails", "corrupt_records",
                         "damaged_files", "corrupt_by_segment", "1", "x"]), inner, max_size=6),
    max_leaves=20)
counters_bytes = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"1e999", b'{"dropped_batches": 1e999}', b'{"dropped_batches": -1e999}', b"NaN",
                     b'{"corrupt_by_segment": {"1": 1e999}}', b'{"corrupt_by_segment": {"99999999999999999999999": 1}}']))
odd_names = st.one_of(
    st.integers(0, 10 ** 20 - 1).map(lambda n: f"{n:020d}.seg"),
    st.integers(0, 10 ** 20 - 1).map(lambda n: f"{n:020d}.out.ack"),
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=20)
    .map(lambda s: s + ".seg"),
    st.sampled_from(["counters.json.tmp", "00000000000000000001.seg.deleting", "x.damaged"]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(counters=st.none() | counters_bytes, ledger=st.none() | st.binary(max_size=64),
       names=st.lists(st.tuples(odd_names, st.binary(max_size=120)), max_size=3))
def test_any_damaged_state_opens_counts_and_prints_one_table(tmp_path_factory, counters, ledger, names):
    d = tmp_path_factory.mktemp("fz") / "data"
    tdir = _seeded(d)
    if counters is not None:
        (tdir / "counters.json").write_bytes(counters)
    if ledger is not None:
        (tdir / ledger_name(1, "out")).write_bytes(ledger)
    for name, content in names:
        if name in (".seg", "..seg") or len(name.encode()) > 250:
            continue
        (tdir / name).write_bytes(content)
    ro = stats_for(d, ["out"])  # the read-only view first: it changes nothing
    assert "held" not in ro["acme"] and ro["beta"]["batches_pending"] == 2
    sp = _open(d)
    try:
        assert sp.held == {}
        s = sp.stats()["acme"]
        assert all(type(s[k]) is int and s[k] >= 0 for k in
                   ("dropped_batches", "dropped_samples", "corrupt_records", "torn_tails", "damaged_files"))
        sp.append("acme", bid(99), payload(99), 1, T0)
        assert 99 in ids(sp.pending("acme", "out", limit=1000))
        assert ids(sp.pending("beta", "out")) == [10, 11]
    finally:
        sp.close()
    table = _table(d).splitlines()
    assert table[0].startswith("tenant") and [r.split()[0] for r in table[1:]] == ["acme", "beta"]
    shutil.rmtree(d.parent)
