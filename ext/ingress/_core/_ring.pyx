# cython: language_level=3
"""Placeholder replaced by the ring implementation."""
from ingress._core._sample cimport Sample

def sample_size():
    return sizeof(Sample)
