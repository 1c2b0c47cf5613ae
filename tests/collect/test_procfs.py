"""ingress._core._procfs: behaviour, stub, and a differential test against a pure-Python reader."""
import ast
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from collect_helpers import FIXTURES

from ingress._core import _procfs as pf

# -- the reference: plain Python, obviously right, slow ------------------------------------------
_COLS = {4: "ST_PPID", 9: "ST_FLAGS", 10: "ST_MINFLT", 12: "ST_MAJFLT", 14: "ST_UTIME", 15: "ST_STIME",
         19: "ST_NICE", 20: "ST_NUM_THREADS", 22: "ST_STARTTIME", 23: "ST_VSIZE", 24: "ST_RSS"}


def ref_parse_stat(data: bytes):
    left, right = data.index(b"("), data.rindex(b")")
    comm = data[left + 1:right][: pf.COMM_LEN_ - 1]
    rest = data[right + 2:].split()
    fields = [-1] * pf.ST_NFIELDS
    fields[pf.ST_STATE] = rest[0][0]
    for num, name in _COLS.items():
        fields[getattr(pf, name)] = int(rest[num - 3])
    return tuple(fields), comm


def ref_keyed(data: bytes, keys):
    vals = dict(line.split(":", 1) for line in data.decode().splitlines())
    return [int(vals[k].split()[0]) for k in keys]


def read_all(root: str, pids):
    n = len(pids)
    out = np.full((n, pf.ST_NFIELDS), -7, np.int64)
    comm = np.zeros((n, pf.COMM_LEN_), np.uint8)
    err = np.full(n, -1, np.int32)
    ok = pf.read_stat(os.fsencode(root), np.asarray(pids, np.int32), out, comm, err)
    return ok, out, comm.view(f"S{pf.COMM_LEN_}").ravel(), err


# -- behaviour on the golden tree ----------------------------------------------------------------
def test_list_pids_only_numeric_and_grows():
    root = os.fsencode(FIXTURES / "proc" / "procs-a")
    big = np.zeros(64, np.int32)
    n = pf.list_pids(root, big)
    assert sorted(big[:n].tolist()) == [1, 2, 10, 11, 20, 30, 40, 50]  # not "self", "stat"
    small = np.zeros(3, np.int32)
    assert pf.list_pids(root, small) == 8  # says how many there are; stored only 3
    assert set(small.tolist()) <= {1, 2, 10, 11, 20, 30, 40, 50}


def test_read_stat_matches_reference_on_fixtures():
    root = FIXTURES / "proc" / "procs-a"
    pids = [1, 2, 10, 11, 20, 30, 40, 50, 77777]
    ok, out, comm, err = read_all(str(root), pids)
    assert ok == 7
    assert err[-2] == errno.ENOENT and err[-1] == errno.ENOENT  # no stat; no such pid at all
    for i, pid in enumerate(pids[:7]):
        assert err[i] == 0
        data = (root / str(pid) / "stat").read_bytes()
        fields, name = ref_parse_stat(data)
        assert tuple(out[i, : pf.ST_UID].tolist()) == fields[: pf.ST_UID]
        assert comm[i] == name
        assert out[i, pf.ST_UID] == os.stat(root / str(pid) / "stat").st_uid
    assert comm[pids.index(30)] == b"my (weird) app"
    assert chr(out[pids.index(40), pf.ST_STATE]) == "Z"


def test_read_stat_matches_reference_on_live_proc():
    ok, out, comm, err = read_all("/proc", [1, os.getpid()])
    assert ok == 2
    for i, pid in enumerate([1, os.getpid()]):
        fields, name = ref_parse_stat(Path(f"/proc/{pid}/stat").read_bytes())
        for col in ("ST_PPID", "ST_STARTTIME", "ST_FLAGS"):  # the fields that cannot move between reads
            assert out[i, getattr(pf, col)] == fields[getattr(pf, col)], col
        assert comm[i] == name
    assert out[1, pf.ST_PPID] == os.getppid()
    assert out[1, pf.ST_UID] == os.geteuid()


def test_parse_stat_bytes_edge_cases():
    fields, comm = pf.parse_stat_bytes(b"5 (a) b) c) R 1 5 5 0 -1 64 1 0 2 0 3 4 0 0 20 -5 1 0 9 100 7\n")
    assert comm == b"a) b) c"
    assert fields[pf.ST_STATE] == ord("R") and fields[pf.ST_NICE] == -5 and fields[pf.ST_RSS] == 7
    assert fields[pf.ST_UID] == -1
    long = b"9 (" + b"x" * 100 + b") S 1 " + b"0 " * 30 + b"\n"
    _, comm = pf.parse_stat_bytes(long)
    assert comm == b"x" * (pf.COMM_LEN_ - 1)
    for bad in (b"", b"1 (no close S 1", b"1 (x) S 1 2"):
        with pytest.raises(ValueError, match="not a /proc/PID/stat line"):
            pf.parse_stat_bytes(bad)


def test_keyed_readers_and_fd_count():
    root = FIXTURES / "proc" / "procs-a"
    pids = np.array([10, 11, 50], np.int32)
    err = np.empty(3, np.int32)
    io = np.zeros((3, 4), np.int64)
    assert pf.read_io(os.fsencode(root), pids, io, err) == 2
    for i, pid in enumerate((10, 11)):
        assert io[i].tolist() == ref_keyed((root / str(pid) / "io").read_bytes(), pf.IO_FIELDS)
    assert err.tolist()[2] == errno.ENOENT and io[2].tolist() == [-1] * 4
    st = np.zeros((3, 2), np.int64)
    assert pf.read_status(os.fsencode(root), pids, st, err) == 2
    assert st[0].tolist() == ref_keyed((root / "10" / "status").read_bytes(), pf.STATUS_FIELDS) == [100, 7]
    fds = np.zeros(3, np.int64)
    assert pf.count_fds(os.fsencode(root), pids, fds, err) == 2  # not a procfs: listed, never st_size
    assert fds.tolist() == [12, 5, -1]


def test_fd_count_on_live_proc_follows_opened_fds():
    me = np.array([os.getpid()], np.int32)
    fds, err = np.zeros(1, np.int64), np.zeros(1, np.int32)
    pf.count_fds(b"/proc", me, fds, err)
    before = int(fds[0])
    pipes = [os.pipe() for _ in range(7)]
    try:
        pf.count_fds(b"/proc", me, fds, err)
        assert err[0] == 0 and fds[0] == before + 14
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    pf.count_fds(b"/proc", me, fds, err)
    assert fds[0] == before


def test_shape_checks_and_missing_root():
    pids = np.array([1, 2], np.int32)
    with pytest.raises(ValueError, match="a row per pid"):
        pf.read_stat(b"/proc", pids, np.zeros((1, pf.ST_NFIELDS), np.int64), np.zeros((2, pf.COMM_LEN_), np.uint8),
                     np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="columns"):
        pf.read_io(b"/proc", pids, np.zeros((2, 3), np.int64), np.zeros(2, np.int32))
    with pytest.raises(FileNotFoundError):
        pf.list_pids(b"/nonexistent-proc-root", np.zeros(4, np.int32))


def test_stub_lists_exactly_the_public_api():
    stub = Path(pf.__file__).with_name("_procfs.pyi")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    declared |= {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    public = {n for n in dir(pf) if not n.startswith("_")} | {"COMM_LEN_"}
    public.discard("COMM_LEN")
    assert declared == public


# -- PidFiles: files held open between passes ----------------------------------------------------
def _sleeper() -> subprocess.Popen:
    """A ``sleep 60`` child that has already exec'd (until then its name is the parent's)."""
    child = subprocess.Popen(["sleep", "60"])
    for _ in range(10_000):
        with open(f"/proc/{child.pid}/comm", "rb") as f:
            if f.read() == b"sleep\n":
                return child
        time.sleep(0.001)
    raise AssertionError("the child never became sleep")


def _my_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _stat_cols(n):
    return (np.zeros((n, pf.ST_NFIELDS), np.int64), np.zeros((n, pf.COMM_LEN_), np.uint8),
            np.full(n, -1, np.int32))


def test_pidfiles_reads_what_the_module_reader_reads_and_holds_the_files():
    pids = np.array([1, os.getpid(), os.getppid()], np.int32)
    f = pf.PidFiles(b"/proc", b"stat", 16)
    assert f.holding and f.held == 0
    a, ca, ea = _stat_cols(3)
    b, cb, eb = _stat_cols(3)
    for _ in range(3):  # the first pass opens, the later ones re-read held files
        assert f.read_stat(pids, a, ca, ea) == 3
        assert f.held == 3
    pf.read_stat(b"/proc", pids, b, cb, eb)
    stable = [pf.ST_PPID, pf.ST_STARTTIME, pf.ST_UID, pf.ST_FLAGS]
    assert ea.tolist() == eb.tolist() == [0, 0, 0]
    assert a[:, stable].tolist() == b[:, stable].tolist() and ca.tolist() == cb.tolist()
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.read_stat(pids, a, ca, ea)


def test_pidfiles_held_file_shows_fresh_content():
    # a child that burns CPU: its utime grows, and a held fd re-read at offset 0 must show it
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        pids = np.array([child.pid], np.int32)
        f = pf.PidFiles(b"/proc", b"stat", 4)
        out, comm, err = _stat_cols(1)
        f.read_stat(pids, out, comm, err)
        first = out[0, pf.ST_UTIME] + out[0, pf.ST_STIME]
        for _ in range(2000):
            f.read_stat(pids, out, comm, err)
            if out[0, pf.ST_UTIME] + out[0, pf.ST_STIME] > first:
                break
            os.sched_yield()
            time.sleep(0.005)
        assert f.held == 1 and err[0] == 0
        assert out[0, pf.ST_UTIME] + out[0, pf.ST_STIME] > first
    finally:
        child.kill()
        child.wait()


def test_pidfiles_exited_process_fails_and_its_file_is_closed():
    child = _sleeper()
    pids = np.array([os.getpid(), child.pid], np.int32)
    f = pf.PidFiles(b"/proc", b"stat", 16)
    out, comm, err = _stat_cols(2)
    assert f.read_stat(pids, out, comm, err) == 2 and f.held == 2
    base = _my_fds()
    child.kill()
    child.wait()  # reaped: the held fd now points at no task
    assert f.read_stat(pids, out, comm, err) == 1
    assert err[0] == 0 and err[1] in (errno.ESRCH, errno.ENOENT)
    assert f.held == 1 and _my_fds() == base - 1
    # pids not asked for any more are let go as well
    f.read_stat(pids[:0], out, comm, err)
    assert f.held == 0 and _my_fds() == base - 2


def test_pidfiles_holds_at_most_max_open_and_still_reads_the_rest():
    procs = [_sleeper() for _ in range(5)]
    try:
        pids = np.array([p.pid for p in procs], np.int32)
        f = pf.PidFiles(b"/proc", b"stat", 2)
        out, comm, err = _stat_cols(5)
        for _ in range(2):
            assert f.read_stat(pids, out, comm, err) == 5
            assert f.held == 2
        assert [bytes(c).rstrip(b"\0") for c in comm] == [b"sleep"] * 5
        none = pf.PidFiles(b"/proc", b"stat", 0)
        assert not none.holding
        assert none.read_stat(pids, out, comm, err) == 5 and none.held == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_pidfiles_io_through_held_files():
    pids = np.array([os.getpid()], np.int32)
    f = pf.PidFiles(b"/proc", b"io", 4)
    io, err = np.zeros((1, 4), np.int64), np.zeros(1, np.int32)
    assert f.read_keyed(pids, io, err) == 1 and f.held == 1
    before = io[0].tolist()
    with open(__file__, "rb") as fh:  # reading a file moves rchar
        fh.read()
    assert f.read_keyed(pids, io, err) == 1
    assert io[0, 0] > before[0]


def test_pidfiles_on_fixtures_never_holds(tmp_path):
    # a directory of golden files: a held file would keep showing a replaced file's old content
    d = tmp_path / "proc" / "42"
    d.mkdir(parents=True)
    line = "42 (first) S 1 42 42 0 -1 4194560 0 0 0 0 10 5 0 0 20 0 1 0 100 1000 50\n"
    (d / "stat").write_text(line)
    f = pf.PidFiles(os.fsencode(tmp_path / "proc"), b"stat", 16)
    assert not f.holding
    out, comm, err = _stat_cols(1)
    pids = np.array([42], np.int32)
    f.read_stat(pids, out, comm, err)
    (d / "stat.new").write_text(line.replace("first", "second"))
    os.replace(d / "stat.new", d / "stat")
    f.read_stat(pids, out, comm, err)
    assert bytes(comm[0]).rstrip(b"\0") == b"second" and f.held == 0


def test_pidfiles_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="leaf b'cmdline' is not one of"):
        pf.PidFiles(b"/proc", b"cmdline", 4)
    with pytest.raises(ValueError, match="max_open -1 is negative"):
        pf.PidFiles(b"/proc", b"stat", -1)
    with pytest.raises(FileNotFoundError):
        pf.PidFiles(b"/nonexistent-proc-root", b"stat", 4)
    io = pf.PidFiles(b"/proc", b"io", 4)
    out, comm, err = _stat_cols(1)
    with pytest.raises(ValueError, match="read_stat needs leaf b'stat'"):
        io.read_stat(np.array([1], np.int32), out, comm, err)
    with pytest.raises(ValueError, match="read_keyed needs leaf b'io' or b'status'"):
        pf.PidFiles(b"/proc", b"stat", 4).read_keyed(np.array([1], np.int32), np.zeros((1, 4), np.int64), err)


def test_pidfiles_comm_is_the_name_stat_shows():
    child = _sleeper()
    try:
        pids = np.array([1, os.getpid(), child.pid], np.int32)
        f = pf.PidFiles(b"/proc", b"comm", 8)
        comm, err = np.zeros((3, pf.COMM_LEN_), np.uint8), np.full(3, -1, np.int32)
        for _ in range(2):  # opened, then re-read through the held files
            assert f.read_comm(pids, comm, err) == 3 and f.held == 3
        out, scomm, serr = _stat_cols(3)
        pf.read_stat(b"/proc", pids, out, scomm, serr)
        assert comm.tolist() == scomm.tolist()
        assert bytes(comm[2]).rstrip(b"\0") == b"sleep"
        child.kill()
        child.wait()
        assert f.read_comm(pids, comm, err) == 2 and err[2] in (errno.ESRCH, errno.ENOENT) and f.held == 2
        with pytest.raises(ValueError, match="read_comm needs leaf b'comm'"):
            pf.PidFiles(b"/proc", b"stat", 1).read_comm(pids, comm, err)
        with pytest.raises(ValueError, match="comm needs 64 columns"):
            f.read_comm(pids, np.zeros((3, 16), np.uint8), err)
    finally:
        child.kill()
        child.wait()
