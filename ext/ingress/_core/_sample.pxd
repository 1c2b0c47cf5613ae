# The one sample struct every compiled module agrees on. 24 bytes, no padding
# holes that would leak uninitialised memory into a spool or a batch.
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t

cdef enum SampleKind:
    KIND_GAUGE = 0
    KIND_COUNTER = 1

cdef packed struct Sample:
    int64_t ts          # ns since the epoch
    double value
    uint32_t series     # id from the tenant's series registry
    uint16_t tenant     # index of the tenant in the agent's tenant table
    uint8_t kind        # SampleKind
    uint8_t _pad

# The same 24 bytes seen as three machine words, for copy loops: on a
# little-endian host ``tail`` is ``series | tenant << 32 | kind << 48`` (the pad
# byte, bits 56..63, stays zero). One 8-byte store instead of four narrow ones
# is what lets a ring push run at memory speed.
cdef packed struct SampleWords:
    int64_t ts
    double value
    uint64_t tail
