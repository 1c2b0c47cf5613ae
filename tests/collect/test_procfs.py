"""ingress._core._procfs: behaviour, stub, and a differential test against a pure-Python reader."""
import ast
import errno
import os
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
    assert pf.count_fds(os.fsencode(root), pids, fds, err) == 2
    assert fds.tolist() == [12, 5, -1]
    me = np.array([os.getpid()], np.int32)
    pf.count_fds(b"/proc", me, fds, err)
    # while counting, the reader holds two fds of its own (the /proc root and the fd dir), listdir one
    assert fds[0] == len(os.listdir("/proc/self/fd")) + 1


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
    public = {n for n in dir(pf) if not n.startswith("_")} | {"COMM_LEN_"}
    public.discard("COMM_LEN")
    assert declared == public
