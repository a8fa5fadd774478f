# cython: language_level=3
# The cython set built for the avx2 path: fast.pxi, compiled by setup.py with the path's
# flags and -DKERNELS_ISA_AVX2 (isa/avx2.h has its vector width, tile and blocks).
include "fast.pxi"
