/* isa.h: the one place a build picks its instruction-set path's table (isa/<path>.h), as
 * BLIS's config/ does. setup.py compiles the kernels once per path, each with the path's
 * -m flags and -DKERNELS_ISA_<PATH>; kernels/cython_set.py imports the one kernels._isa
 * selects for this CPU at run time. Every path's table defines the same names: the vector
 * width (VECTOR_BYTES, VL_F32, VL_F64, IOTA_F32, IOTA_F64), the register tile and cache
 * blocks per dtype (MR, NR, KC, MC, NC), DIRECT_MAX_B_BYTES and SWEEP_BLOCK. A new path is
 * one more header and one more line here and in setup.py's ISA_FLAGS.
 */
#ifndef KERNELS_ISA_H
#define KERNELS_ISA_H

#if defined(KERNELS_ISA_AVX512)
#  if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) \
      || !defined(__AVX512VL__) || !defined(__FMA__)
#    error "the avx512 path needs -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma"
#  endif
#  include "isa/avx512.h"
#elif defined(KERNELS_ISA_AVX2)
#  if !defined(__AVX2__) || !defined(__FMA__)
#    error "the avx2 path needs -mavx2 -mfma"
#  endif
#  include "isa/avx2.h"
#elif defined(KERNELS_ISA_NEON)
#  if !defined(__aarch64__)
#    error "the neon path is for aarch64"
#  endif
#  include "isa/neon.h"
#else
#  include "isa/generic.h"
#endif

#if defined(_OPENMP)
#  define KERNELS_OPENMP 1
#else
#  define KERNELS_OPENMP 0              /* a compiler without OpenMP: every prange is serial */
#endif

#endif
