# cython: language_level=3
"""Compiled readers for the per-process files under /proc.

Why compiled: a host runs hundreds to thousands of processes, and the
Python way (psutil, or open()/split() per file) builds dozens of objects per
process per pass. Here every pid's ``stat`` is opened relative to one
directory fd, read into a stack buffer, parsed in C and written into numpy
columns the caller owns, all without the GIL.

Failure is a per-pid status, never an exception: ``err[i]`` is 0 or the
``errno`` of the failed open/read (``ENOENT``/``ESRCH``: the process exited
between listing and reading; ``EACCES``/``EPERM``: not ours to read). Only a
root directory that cannot be opened at all raises ``OSError``.

/proc/PID/stat layout (man 5 proc), the parts read here::

    pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt
    majflt cmajflt utime stime cutime cstime priority nice num_threads
    itrealvalue starttime vsize rss ...

``comm`` may contain spaces and parentheses, so it runs from the first ``(``
to the *last* ``)``.
"""
from libc.errno cimport errno, ENOENT
from libc.stdint cimport int64_t, int32_t, uint8_t
from libc.stdio cimport snprintf
from libc.string cimport memset, memcpy, strlen
from posix.fcntl cimport O_RDONLY, openat, open as c_open
from posix.unistd cimport read, close
from posix.stat cimport struct_stat, fstat

cdef extern from "<fcntl.h>" nogil:
    enum: O_DIRECTORY
    enum: O_CLOEXEC

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        char d_name[256]
    DIR* fdopendir(int fd)
    dirent* readdir(DIR* d)
    int closedir(DIR* d)

DEF BUF = 4096

ST_STATE = <int>SF_STATE
ST_PPID = <int>SF_PPID
ST_FLAGS = <int>SF_FLAGS
ST_MINFLT = <int>SF_MINFLT
ST_MAJFLT = <int>SF_MAJFLT
ST_UTIME = <int>SF_UTIME
ST_STIME = <int>SF_STIME
ST_NICE = <int>SF_NICE
ST_NUM_THREADS = <int>SF_NUM_THREADS
ST_STARTTIME = <int>SF_STARTTIME
ST_VSIZE = <int>SF_VSIZE
ST_RSS = <int>SF_RSS
ST_UID = <int>SF_UID
ST_NFIELDS = <int>SF_NFIELDS
COMM_LEN_ = <int>COMM_LEN

IO_FIELDS = ("rchar", "wchar", "read_bytes", "write_bytes")
STATUS_FIELDS = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")

cdef const char* _IO_KEYS[4]
_IO_KEYS[0] = b"rchar:"
_IO_KEYS[1] = b"wchar:"
_IO_KEYS[2] = b"read_bytes:"
_IO_KEYS[3] = b"write_bytes:"
cdef const char* _STATUS_KEYS[2]
_STATUS_KEYS[0] = b"voluntary_ctxt_switches:"
_STATUS_KEYS[1] = b"nonvoluntary_ctxt_switches:"

# stat field number (1-based, man 5 proc) -> column, for the fields after "(comm)".
cdef int _COL_OF[25]
for _i in range(25):
    _COL_OF[_i] = -1
_COL_OF[4] = SF_PPID
_COL_OF[9] = SF_FLAGS
_COL_OF[10] = SF_MINFLT
_COL_OF[12] = SF_MAJFLT
_COL_OF[14] = SF_UTIME
_COL_OF[15] = SF_STIME
_COL_OF[19] = SF_NICE
_COL_OF[20] = SF_NUM_THREADS
_COL_OF[22] = SF_STARTTIME
_COL_OF[23] = SF_VSIZE
_COL_OF[24] = SF_RSS


cdef inline const char* _parse_int(const char* p, const char* end, int64_t* v) noexcept nogil:
    cdef int neg = 0
    cdef int64_t x = 0
    while p < end and (p[0] == c' ' or p[0] == c'\t'):
        p += 1
    if p < end and p[0] == c'-':
        neg = 1
        p += 1
    while p < end and p[0] >= c'0' and p[0] <= c'9':
        x = x * 10 + (p[0] - c'0')
        p += 1
    v[0] = -x if neg else x
    return p


cdef int parse_stat(const char* buf, Py_ssize_t n, int64_t* out, uint8_t* comm) noexcept nogil:
    """Parse one stat file into ``out[0:SF_UID]`` and ``comm``; 0 on success, -1 if malformed."""
    cdef const char* end = buf + n
    cdef const char* open_p = buf
    cdef const char* close_p = NULL
    cdef const char* p
    cdef Py_ssize_t k, clen
    cdef int field
    cdef int64_t v
    while open_p < end and open_p[0] != c'(':
        open_p += 1
    p = end - 1
    while p > open_p:
        if p[0] == c')':
            close_p = p
            break
        p -= 1
    if open_p >= end or close_p == NULL or close_p + 2 >= end:
        return -1
    clen = close_p - open_p - 1
    if clen > COMM_LEN - 1:
        clen = COMM_LEN - 1
    memset(comm, 0, COMM_LEN)
    memcpy(comm, open_p + 1, clen)
    p = close_p + 2  # the state letter
    out[<int>SF_STATE] = <unsigned char>p[0]
    p += 1
    field = 4
    while field <= 24:
        if p >= end or p[0] != c' ':
            return -1
        p = _parse_int(p + 1, end, &v)
        if _COL_OF[field] >= 0:
            out[_COL_OF[field]] = v
        field += 1
    return 0


cdef int parse_keyed(const char* buf, Py_ssize_t n, const char** keys, int nkeys, int64_t* out) noexcept nogil:
    """Parse ``key: value`` lines; each key found fills its slot. Returns how many were found."""
    cdef const char* p = buf
    cdef const char* end = buf + n
    cdef const char* line
    cdef int j, found = 0
    cdef Py_ssize_t kl, i
    cdef int64_t v
    while p < end:
        line = p
        for j in range(nkeys):
            kl = strlen(keys[j])
            if line + kl <= end:
                i = 0
                while i < kl and line[i] == keys[j][i]:
                    i += 1
                if i == kl:
                    _parse_int(line + kl, end, &v)
                    out[j] = v
                    found += 1
                    break
        while p < end and p[0] != c'\n':
            p += 1
        p += 1
    return found


cdef inline Py_ssize_t _slurp(int dfd, int pid, const char* leaf, char* buf, int* err,
                              struct_stat* st) noexcept nogil:
    """Read ``<pid>/<leaf>`` relative to ``dfd`` into ``buf``; -1 and ``err`` set on failure."""
    cdef char path[64]
    cdef int fd
    cdef Py_ssize_t got = 0, r
    snprintf(path, 64, "%d/%s", pid, leaf)
    fd = openat(dfd, path, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        err[0] = errno
        return -1
    if st != NULL and fstat(fd, st) != 0:
        err[0] = errno
        close(fd)
        return -1
    while got < BUF - 1:
        r = read(fd, buf + got, BUF - 1 - got)
        if r < 0:
            err[0] = errno  # ESRCH when the process died after the open
            close(fd)
            return -1
        if r == 0:
            break
        got += r
        if r < BUF - 1 - (got - r):
            # /proc files made by single_open hand out everything in the first read;
            # a short read is the end, and skipping the read that returns 0 saves a syscall.
            break
    close(fd)
    buf[got] = 0
    return got


cdef int _open_root(bytes root) except -1:
    cdef int dfd = c_open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dfd < 0:
        import os
        raise OSError(errno, os.strerror(errno), root.decode(errors="replace"))
    return dfd


def list_pids(bytes root, int32_t[::1] out) -> int:
    """Fill ``out`` with the numeric entries of ``root``; return how many there are.

    When the return value exceeds ``len(out)`` only the first ``len(out)``
    were stored: grow ``out`` and call again.
    """
    cdef int dfd = _open_root(root)
    cdef DIR* d = fdopendir(dfd)
    cdef dirent* e
    cdef Py_ssize_t n = 0, cap = out.shape[0]
    cdef const char* s
    cdef int32_t v
    if d == NULL:
        close(dfd)
        raise OSError(errno, "fdopendir failed", root.decode(errors="replace"))
    with nogil:
        while True:
            e = readdir(d)
            if e == NULL:
                break
            s = e.d_name
            if s[0] < c'0' or s[0] > c'9':
                continue
            v = 0
            while s[0] >= c'0' and s[0] <= c'9':
                v = v * 10 + (s[0] - c'0')
                s += 1
            if s[0] != 0:
                continue
            if n < cap:
                out[n] = v
            n += 1
        closedir(d)
    return n


def read_stat(bytes root, const int32_t[::1] pids, int64_t[:, ::1] out, uint8_t[:, ::1] comm,
              int32_t[::1] err) -> int:
    """Read ``<root>/<pid>/stat`` for every pid into row ``i`` of ``out`` and ``comm``.

    ``out`` has ``ST_NFIELDS`` columns (see the ``ST_*`` constants), ``comm``
    ``COMM_LEN`` bytes per row (NUL-padded). ``err[i]`` is 0 or the errno.
    Returns how many rows were read successfully.
    """
    cdef Py_ssize_t n = pids.shape[0], i, got
    cdef int ok = 0, e
    cdef char buf[BUF]
    cdef struct_stat st
    if out.shape[0] < n or comm.shape[0] < n or err.shape[0] < n:
        raise ValueError("out, comm and err need a row per pid")
    if out.shape[1] < SF_NFIELDS or comm.shape[1] < COMM_LEN:
        raise ValueError(f"out needs {SF_NFIELDS} columns and comm {COMM_LEN}")
    cdef int dfd = _open_root(root)
    with nogil:
        for i in range(n):
            e = 0
            got = _slurp(dfd, pids[i], "stat", buf, &e, &st)
            if got < 0:
                err[i] = e
                continue
            if parse_stat(buf, got, &out[i, 0], &comm[i, 0]) != 0:
                err[i] = ENOENT if got == 0 else 22  # empty: a zombie being reaped; else EINVAL
                continue
            out[i, <int>SF_UID] = st.st_uid
            err[i] = 0
            ok += 1
        close(dfd)
    return ok


cdef int _read_keyed_many(bytes root, const int32_t[::1] pids, const char* leaf, const char** keys,
                          int nkeys, int64_t[:, ::1] out, int32_t[::1] err) except -1:
    cdef Py_ssize_t n = pids.shape[0], i, got
    cdef int ok = 0, e, j
    cdef char buf[BUF]
    if out.shape[0] < n or err.shape[0] < n or out.shape[1] < nkeys:
        raise ValueError(f"out needs {nkeys} columns and out, err a row per pid")
    cdef int dfd = _open_root(root)
    with nogil:
        for i in range(n):
            e = 0
            for j in range(nkeys):
                out[i, j] = -1
            got = _slurp(dfd, pids[i], leaf, buf, &e, NULL)
            if got < 0:
                err[i] = e
                continue
            if parse_keyed(buf, got, keys, nkeys, &out[i, 0]) != nkeys:
                err[i] = ENOENT if got == 0 else 22
                continue
            err[i] = 0
            ok += 1
        close(dfd)
    return ok


def read_io(bytes root, const int32_t[::1] pids, int64_t[:, ::1] out, int32_t[::1] err) -> int:
    """``<pid>/io``: columns ``IO_FIELDS`` (rchar, wchar, read_bytes, write_bytes)."""
    return _read_keyed_many(root, pids, "io", _IO_KEYS, 4, out, err)


def read_status(bytes root, const int32_t[::1] pids, int64_t[:, ::1] out, int32_t[::1] err) -> int:
    """``<pid>/status``: columns ``STATUS_FIELDS`` (voluntary, nonvoluntary context switches)."""
    return _read_keyed_many(root, pids, "status", _STATUS_KEYS, 2, out, err)


def count_fds(bytes root, const int32_t[::1] pids, int64_t[::1] out, int32_t[::1] err) -> int:
    """Number of open file descriptors: the entries of ``<pid>/fd``."""
    cdef Py_ssize_t n = pids.shape[0], i
    cdef int ok = 0, fd
    cdef int64_t c
    cdef char path[64]
    cdef DIR* d
    cdef dirent* e
    if out.shape[0] < n or err.shape[0] < n:
        raise ValueError("out and err need a row per pid")
    cdef int dfd = _open_root(root)
    with nogil:
        for i in range(n):
            out[i] = -1
            snprintf(path, 64, "%d/fd", pids[i])
            fd = openat(dfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0:
                err[i] = errno
                continue
            d = fdopendir(fd)
            if d == NULL:
                err[i] = errno
                close(fd)
                continue
            c = 0
            while True:
                e = readdir(d)
                if e == NULL:
                    break
                if e.d_name[0] != c'.':
                    c += 1
            closedir(d)
            out[i] = c
            err[i] = 0
            ok += 1
        close(dfd)
    return ok


def parse_stat_bytes(bytes data):
    """Parse one stat file's content (for tests and one-off use): ``(fields, comm)``.

    ``fields`` is a tuple of the ``ST_*`` columns (``ST_UID`` is -1: it comes
    from the open file, not the text). Raises ``ValueError`` if malformed.
    """
    cdef int64_t out[SF_NFIELDS]
    cdef uint8_t comm[COMM_LEN]
    cdef int i
    for i in range(SF_NFIELDS):
        out[i] = -1
    if parse_stat(data, len(data), out, comm) != 0:
        raise ValueError(f"not a /proc/PID/stat line: {data[:80]!r}")
    return tuple([out[i] for i in range(<int>SF_NFIELDS)]), bytes(comm).rstrip(b"\0")
