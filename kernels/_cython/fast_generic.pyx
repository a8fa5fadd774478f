# cython: language_level=3
# The cython set built for the generic path: fast.pxi, compiled by setup.py with the path's
# flags and -DKERNELS_ISA_GENERIC (isa/generic.h has its vector width, tile and blocks).
include "fast.pxi"
