"""Stub for ingress._core._remote_write (Prometheus remote write 1.0; see ext/ingress/_core/_remote_write.pyx)."""
import numpy as np
import numpy.typing as npt

def encode_write_request(labels: bytes, label_offsets: npt.NDArray[np.int64],
                         series_index: npt.NDArray[np.uint32], timestamps: npt.NDArray[np.int64],
                         values: npt.NDArray[np.float64]) -> tuple[bytes, int]: ...
