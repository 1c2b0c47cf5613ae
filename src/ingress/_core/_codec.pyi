"""Stub for ingress._core._codec (batch format v1; see ext/ingress/_core/_codec.pyx)."""
from typing import Iterable, Mapping

import numpy as np
import numpy.typing as npt

LZ4_MAX_RATIO: int

def encode_dictionary(series: Iterable[tuple[str, Mapping[str, str]]]) -> tuple[bytes, int]: ...
def decode_dictionary(raw: bytes | memoryview, n_series: int) -> tuple[list[tuple[str, dict[str, str]]], int]: ...
def encode_body(dictionary: bytes, series_index: npt.NDArray[np.uint32], timestamps: npt.NDArray[np.int64],
                values: npt.NDArray[np.float64], n_series: int) -> tuple[npt.NDArray[np.uint8], int]: ...
def decode_columns(raw: bytes | memoryview, pos: int, n: int, n_series: int) -> tuple[
    npt.NDArray[np.uint32], npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
