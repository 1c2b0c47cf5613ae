"""Stub for the compiled sample pool and per-tenant rings (ext/ingress/_core/_ring.pyx)."""
from typing import Final, Literal, Sequence, final

import numpy as np
import numpy.typing as npt

NOGIL_MIN: Final[int]
POLICIES: Final[tuple[str, str]]

def sample_size() -> int: ...
@final
class RingSet:
    def __init__(
        self,
        n_tenants: int,
        budget_bytes: int,
        policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
        weights: Sequence[float] | None = None,
    ) -> None: ...
    def push(
        self,
        t: int,
        series: npt.NDArray[np.uint32],
        ts: npt.NDArray[np.int64] | int,
        values: npt.NDArray[np.float64],
        kinds: npt.NDArray[np.uint8] | int,
    ) -> int: ...
    def drain(
        self,
        t: int,
        out_series: npt.NDArray[np.uint32],
        out_ts: npt.NDArray[np.int64],
        out_values: npt.NDArray[np.float64],
        out_kinds: npt.NDArray[np.uint8] | None,
        start: int = 0,
    ) -> int: ...
    def size(self, t: int) -> int: ...
    def capacity(self, t: int) -> int: ...
    def dropped(self, t: int) -> int: ...
    def pushed(self, t: int) -> int: ...
    def drained(self, t: int) -> int: ...
    def clear(self, t: int) -> int: ...
    @property
    def n_tenants(self) -> int: ...
    @property
    def policy(self) -> Literal["drop_oldest", "drop_newest"]: ...
    @property
    def total_capacity(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
