"""The cython set: every op of the MLP as an optimised, OpenMP-parallel Cython kernel, no BLAS.

This file is compiled once per instruction-set path (fast_avx512.pyx, fast_avx2.pyx,
fast_neon.pyx, fast_generic.pyx include it; setup.py gives each its path's -m flags), and
kernels/cython_set.py imports the module kernels._isa selects for this CPU: one build runs at
its best on any CPU, with no -march=native. What differs between the paths (vector width,
register tile, cache blocks) is in isa/<path>.h; this file and microkernel.h are written
once for all of them in their terms (VL, MR, NR, KC, MC, NC). ``ISA`` names the module's
path and ``OPENMP`` says whether it was built with OpenMP (without it, every loop is serial).

Design note (after scikit-learn's ``_loss.pyx``; the matmul after bluss's matrixmultiply):

* The Python layer checks and allocates, this module only computes. kernels/_front.py checks
  every argument and allocates every output; the def functions here receive C-contiguous
  arrays of one float dtype and outputs that do not overlap their inputs, take their data
  pointers, release the GIL and call nogil C-level kernels. Nothing unchecked reaches them,
  so they run with bounds checks, wraparound and initialisation checks off and C division
  (setup.py's directives).
* One ``ctypedef fused floating`` covers float32 and float64. The def functions pick the
  specialisation from the array's item size by hand, which skips a fused def function's
  signature matching on every call (the trainer calls these ops thousands of times per
  epoch, at batch sizes where a call is a few microseconds).
* matmul is BLIS: the five loops around a micro-kernel, written out and labelled in
  ``gemm_packed``; one ``pack`` function absorbs trans_a / trans_b (no transposed copies);
  edges go through one masked path (``store_edge``: a full tile into a small buffer, then
  the valid part out). The MR x NR micro-kernel and every blocking constant live in
  microkernel.h, next to the cache arithmetic behind them. Small products (all of the MLP's
  shapes) take ``gemm_direct``: the same micro-kernel reading A and B in place over the
  whole of k, because there packing costs more than it saves; its last rows run 4/2/1-row
  kernels rather than padding a batch of 1 to MR rows. A C at most half a strip wide with
  op(A) transposed (the 10 classes' x^T g) runs on its transpose (``gemm_small``).
* linear and linear_backward reuse that matmul: bias and ReLU run in the micro-kernel's
  epilogue while the C tile is in registers; the backward fuses the ReLU mask with the
  bias gradient in one pass and gets x^T g and g w^T from the packing, with no transposes.
* softmax-cross-entropy: numerically careful row helpers in vecmath.h (max-shifted exp in
  vectors of the path's width; libm's scalar expf cannot be vectorised without -ffast-math), the loss
  accumulated in double.
* Threads: ``set_threads(n)`` stores n here; every parallel loop is a ``prange`` with
  ``num_threads`` set from it, one parallel loop per loop nest (matmul: over row blocks of
  LOOP 3 or runs of tiles, handed out dynamically; elementwise ops: over equal chunks), and
  only when the work pays for waking threads (PAR_MIN_FLOPS, PAR_MIN_ELEMS).
* No allocation per call: packing buffers and the like come from one scratch buffer kept
  between calls (``scratch_take`` / ``scratch_give``), handed out under the GIL.
* ``train_steps`` runs kernels/_steps.py's training step many times in one call, without the
  GIL, on these same kernels in the same order (the per-op path's results, bit for bit); a
  weight's gradient goes straight into its update, a chunk at a time, never to memory. The
  input layer's products skip the exact zeros of the batch (microkernel.h's UKR_SKIP: the
  same sums without their zero terms), and the batch's gather is split between threads. At
  a batch of one it sweeps each layer's weights once a step instead (sweep.h): the update of
  one step fused with the next step's forward pass, the first layer split by rows between
  threads; the same arithmetic, summed in another order.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cython.parallel cimport prange, threadid
from libc.math cimport exp, log, sqrt, sqrtf
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from "microkernel.h" nogil:
    const char *KERNELS_ISA_NAME
    enum:
        KERNELS_OPENMP
        MR_F32
        NR_F32
        KC_F32
        MC_F32
        NC_F32
        MR_F64
        NR_F64
        KC_F64
        MC_F64
        NC_F64
        TILE_MAX
        DIRECT_MAX_B_BYTES
        PAR_MIN_FLOPS
        PAR_MIN_ELEMS
        BLOCKED_NB
        BLOCKED_KB
        BLOCKS_PER_THREAD
        MIN_BLOCK_ROWS
        UPDATE_CHUNK_BYTES
        GATHER_PAR_MIN_BYTES
        SKIP_MR_F32
        SKIP_NR_F32
        SKIP_MR_F64
        SKIP_NR_F64
        SKIP_MR_MAX
        VL_F32
        VL_F64
    void *kernels_alloc(size_t nbytes)
    void kernels_free(void *p)
    void transpose_f32(const float *src, long lds, float *dst, long ldd)
    void transpose_f64(const double *src, long lds, double *dst, long ldd)
    void ukr_float_packed(long kc, const float *a, const float *b, float *c, long ldc,
                          int accumulate, const float *bias, int relu)
    void ukr_double_packed(long kc, const double *a, const double *b, double *c, long ldc,
                           int accumulate, const double *bias, int relu)
    void ukr_float_direct(long kc, const float *a, long rsa, long csa, const float *b, long rsb,
                          float *c, long ldc, int accumulate, const float *bias, int relu)
    void ukr_double_direct(long kc, const double *a, long rsa, long csa, const double *b,
                           long rsb, double *c, long ldc, int accumulate, const double *bias,
                           int relu)
    void ukr_float_narrow_direct(long kc, const float *a, long rsa, long csa, const float *b,
                                 long rsb, float *c, long ldc, int accumulate, const float *bias,
                                 int relu)
    void ukr_double_narrow_direct(long kc, const double *a, long rsa, long csa, const double *b,
                                  long rsb, double *c, long ldc, int accumulate,
                                  const double *bias, int relu)
    # rows < MR (the small-size path's last row strip)
    void ukr_float_r4_direct(long kc, const float *a, long rsa, long csa, const float *b, long rsb,
                            float *c, long ldc, int accumulate, const float *bias, int relu)
    void ukr_float_r2_direct(long kc, const float *a, long rsa, long csa, const float *b, long rsb,
                            float *c, long ldc, int accumulate, const float *bias, int relu)
    void ukr_float_r1_direct(long kc, const float *a, long rsa, long csa, const float *b, long rsb,
                            float *c, long ldc, int accumulate, const float *bias, int relu)
    void ukr_double_r4_direct(long kc, const double *a, long rsa, long csa, const double *b, long rsb,
                            double *c, long ldc, int accumulate, const double *bias, int relu)
    void ukr_double_r2_direct(long kc, const double *a, long rsa, long csa, const double *b, long rsb,
                            double *c, long ldc, int accumulate, const double *bias, int relu)
    void ukr_double_r1_direct(long kc, const double *a, long rsa, long csa, const double *b, long rsb,
                            double *c, long ldc, int accumulate, const double *bias, int relu)
    # tiles over the listed k steps only: those whose SKIP_MR values of A are not all zero
    long ukr_double_skip_rows(const double *x, long ldx, long batch, int *idx)
    long ukr_double_skip_cols(const double **rows, long k, int *idx)
    long skip_cols_f32(const float **rows, long k, int *idx)
    void skip_masks_f32(const float *x, long ldx, long batch, int width, unsigned *masks)
    long skip_samples_f32(const unsigned *masks, long batch, unsigned group, int *idx)
    void ukr_float_skip(long nk, const int *idx, const float *a, long rsa, long csa,
                        const float *b, long rsb, float *c, long ldc, const float *bias,
                        int relu)
    void ukr_double_skip(long nk, const int *idx, const double *a, long rsa, long csa,
                         const double *b, long rsb, double *c, long ldc, const double *bias,
                         int relu)
    # the same tile with its rows anywhere: A(i, p) = arow[i][p], C's row i at crow[i]
    void ukr_float_skip_scattered(long nk, const int *idx, const float **arow, const float *b,
                                  long rsb, float **crow, const float *bias, int relu)
    void ukr_double_skip_scattered(long nk, const int *idx, const double **arow,
                                   const double *b, long rsb, double **crow,
                                   const double *bias, int relu)

cdef extern from "sweep.h" nogil:
    enum:
        SWEEP_PAR_MIN
    ctypedef struct Update:            # the optimizer step of kernels._steps.Optimizer at step t
        bint adam
        long t
        double lr, momentum, weight_decay, beta1, beta2, eps
        double step_size, inv_bc2_sqrt  # Adam's, at t (adam_scales)
    void sweep_f32_rows(const Update *u, const float *xp, const float *g, float *w,
                        float *s1, float *s2, const float *xn, float *h, long n_out, long r0,
                        long r1)
    void sweep_f64_rows(const Update *u, const double *xp, const double *g, double *w,
                        double *s1, double *s2, const double *xn, double *h, long n_out,
                        long r0, long r1)
    void sweep_f32_backward(const float *w, const float *g, float *out, long n_in, long n_out)
    void sweep_f64_backward(const double *w, const double *g, double *out, long n_in,
                            long n_out)

cdef extern from "microkernel.h" nogil:  # (with vtanh.h: tanh a vector at a time)
    enum:
        ACT_NONE
        ACT_RELU
        ACT_TANH
    float tanh_scalar_f32(float x)
    double tanh_scalar_f64(double x)
    void tanh_f32(const float *x, float *out, long n)
    void tanh_f64(const double *x, double *out, long n)

cdef extern from "vecmath.h" nogil:
    enum:
        SOFTMAX_BLOCK_ROWS
        SOFTMAX_SMALL_ROWS_MAX
    double softmax_xent_small_rows_f32(const float *z, const int64_t *labels, float *g,
                                       long rows, long classes, double inv_batch)
    float row_max_f32(const float *z, long n)
    double exp_minus_max_f32(const float *z, float zmax, float *out, long n)

ctypedef fused floating:
    float
    double

ISA = KERNELS_ISA_NAME.decode()     # the path this module was built for (isa/<path>.h)
OPENMP = bool(KERNELS_OPENMP)       # False: built without OpenMP, every prange runs serially

cdef int _threads = 1


def set_threads(int n):
    """Thread count for every prange in this module (kernels/_front.py calls it on change)."""
    global _threads
    _threads = n if n > 0 else 1


cdef inline int threads_for(double work, double min_work, Py_ssize_t max_parts) noexcept nogil:
    """Threads worth waking for ``work`` units when each thread needs ``min_work`` of them."""
    cdef int nt = _threads
    if work < min_work * 2:
        return 1
    if nt > work / min_work:
        nt = <int>(work / min_work)
    if nt > max_parts:
        nt = <int>max_parts
    return nt if nt > 0 else 1


# ====================================================================================== scratch
#
# Packing buffers and the backward's masked gradient need scratch memory on every call.
# Allocating it per call is slow: glibc serves a large request with a fresh mmap, so each call
# paid page faults and zeroing (an epoch at batch 128 ran at ~155K samples/s instead of
# ~220K). One buffer is kept instead and only grows. Kernels run without the GIL and may be
# called from several Python threads, so it is handed out under the GIL: a def function
# takes it before ``with nogil`` (the slot is then empty, and a second caller meanwhile gets
# a buffer of its own) and gives it back after. A kernel carves its buffers out of it, each
# starting on a cache line; a parallel region gives every thread a slice of its own.

cdef struct Scratch:
    char *data
    size_t nbytes

cdef Scratch _spare                 # the buffer no call holds now ({NULL, 0} when one does)


cdef Scratch scratch_take(size_t nbytes) except *:
    """At least nbytes of 64-byte aligned memory: the spare buffer, grown if too small."""
    global _spare
    cdef Scratch s = _spare
    _spare.data = NULL
    _spare.nbytes = 0
    if s.nbytes < nbytes:
        kernels_free(s.data)
        s.data = <char *>kernels_alloc(nbytes)
        s.nbytes = nbytes if s.data != NULL else 0
        if s.data == NULL:
            raise MemoryError(f"cannot allocate {nbytes} bytes of scratch memory")
    return s


cdef void scratch_give(Scratch s) noexcept:
    """Back into the spare slot; when another caller has put one there, keep the larger."""
    global _spare
    if s.nbytes < _spare.nbytes:
        kernels_free(s.data)
    else:
        kernels_free(_spare.data)
        _spare = s


cdef inline Py_ssize_t lines(Py_ssize_t n, size_t itemsize) noexcept nogil:
    """n elements rounded up to whole 64-byte lines, so the next buffer carved starts on one."""
    cdef Py_ssize_t per_line = 64 // itemsize
    return (n + per_line - 1) // per_line * per_line


# The ops, one family to a file, in this order (each file uses what the ones before it define):
include "matmul.pxi"
include "elementwise.pxi"
include "softmax.pxi"
include "linear.pxi"
include "optim.pxi"
include "train_steps.pxi"
