"""Compiled readers for /proc/PID files (ext/ingress/_core/_procfs.pyx)."""
import numpy as np
import numpy.typing as npt

ST_STATE: int
ST_PPID: int
ST_FLAGS: int
ST_MINFLT: int
ST_MAJFLT: int
ST_UTIME: int
ST_STIME: int
ST_NICE: int
ST_NUM_THREADS: int
ST_STARTTIME: int
ST_VSIZE: int
ST_RSS: int
ST_UID: int
ST_NFIELDS: int
COMM_LEN_: int
IO_FIELDS: tuple[str, str, str, str]
STATUS_FIELDS: tuple[str, str]

def list_pids(root: bytes, out: npt.NDArray[np.int32]) -> int: ...
def read_stat(root: bytes, pids: npt.NDArray[np.int32], out: npt.NDArray[np.int64],
              comm: npt.NDArray[np.uint8], err: npt.NDArray[np.int32]) -> int: ...
def read_io(root: bytes, pids: npt.NDArray[np.int32], out: npt.NDArray[np.int64],
            err: npt.NDArray[np.int32]) -> int: ...
def read_status(root: bytes, pids: npt.NDArray[np.int32], out: npt.NDArray[np.int64],
                err: npt.NDArray[np.int32]) -> int: ...
def count_fds(root: bytes, pids: npt.NDArray[np.int32], out: npt.NDArray[np.int64],
              err: npt.NDArray[np.int32]) -> int: ...
def parse_stat_bytes(data: bytes) -> tuple[tuple[int, ...], bytes]: ...

class PidFiles:
    """``<root>/<pid>/<leaf>`` kept open between passes and re-read in place with ``pread``."""

    leaf: bytes
    max_open: int
    holding: bool
    held: int
    def __init__(self, root: bytes, leaf: bytes, max_open: int = 4096) -> None: ...
    def read_stat(self, pids: npt.NDArray[np.int32], out: npt.NDArray[np.int64],
                  comm: npt.NDArray[np.uint8], err: npt.NDArray[np.int32]) -> int: ...
    def read_keyed(self, pids: npt.NDArray[np.int32], out: npt.NDArray[np.int64],
                   err: npt.NDArray[np.int32]) -> int: ...
    def read_comm(self, pids: npt.NDArray[np.int32], comm: npt.NDArray[np.uint8],
                  err: npt.NDArray[np.int32]) -> int: ...
    def close(self) -> None: ...

NI_LADDR: int
NI_LPORT: int
NI_RADDR: int
NI_RPORT: int
NI_STATE: int
NI_TXQ: int
NI_RXQ: int
NI_NCOLS: int

def parse_inet(data: bytes, out: npt.NDArray[np.uint32]) -> int: ...
def parse_diag(data: bytes | bytearray | memoryview, nbytes: int, out: npt.NDArray[np.uint32],
               row: int) -> tuple[int, int]: ...
