# Compiled /proc readers shared by the collectors. The parse routines work on a
# caller's buffer and write C integers only: no Python object per process.
from libc.stdint cimport int64_t, int32_t, uint8_t

# Columns of the int64 matrix read_stat() fills, one row per pid.
cdef enum StatField:
    SF_STATE = 0        # the state letter as its ASCII code (R, S, D, Z, T, t, X, I, P, ...)
    SF_PPID = 1
    SF_FLAGS = 2        # PF_* flags; PF_KTHREAD (0x00200000) marks kernel threads
    SF_MINFLT = 3
    SF_MAJFLT = 4
    SF_UTIME = 5        # clock ticks
    SF_STIME = 6        # clock ticks
    SF_NICE = 7
    SF_NUM_THREADS = 8
    SF_STARTTIME = 9    # clock ticks after boot
    SF_VSIZE = 10       # bytes
    SF_RSS = 11         # pages
    SF_UID = 12         # owner of /proc/PID/stat: the effective uid, as ps shows it
    SF_NFIELDS = 13

cdef enum:
    COMM_LEN = 64  # /proc/PID/stat shows up to 63 characters (workqueue names of kworkers)

cdef int parse_stat(const char* buf, Py_ssize_t n, int64_t* out, uint8_t* comm) noexcept nogil
cdef int parse_keyed(const char* buf, Py_ssize_t n, const char** keys, int nkeys, int64_t* out) noexcept nogil

# Columns of the uint32 matrix parse_inet() / parse_diag() fill, one row per socket.
cdef enum NetField:
    NC_LADDR = 0    # 0..3: local address words (IPv4: word 0 only)
    NC_LPORT = 4
    NC_RADDR = 5    # 5..8: remote address words
    NC_RPORT = 9
    NC_STATE = 10
    NC_TXQ = 11     # LISTEN: the backlog limit
    NC_RXQ = 12     # LISTEN: connections waiting to be accepted
    NC_NCOLS = 13
