"""Stub for ingress._core._otlp (OTLP ExportMetricsServiceRequest; see ext/ingress/_core/_otlp.pyx)."""
import numpy as np
import numpy.typing as npt

GAUGE: int
SUM: int

def encode_export_request(resource: bytes, scope: bytes, metric_heads: bytes,
                          head_offsets: npt.NDArray[np.int64], metric_kinds: npt.NDArray[np.uint8],
                          attributes: bytes, attr_offsets: npt.NDArray[np.int64],
                          series_metric: npt.NDArray[np.uint32], series_index: npt.NDArray[np.uint32],
                          timestamps: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> bytes: ...
