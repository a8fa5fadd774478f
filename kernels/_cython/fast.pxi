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


# ====================================================================================== matmul
#
# C (m, n) = op(A) (m, k) @ op(B) (k, n); op(A)[i, p] = a[i*lda + p], or a[p*lda + i] when
# trans_a; op(B)[p, j] = b[p*ldb + j], or b[j*ldb + p] when trans_b. Optional epilogue: + bias
# (n,), then ReLU. Every function below takes raw pointers and runs without the GIL.


cdef inline void ukr_packed(long kc, const floating *a, const floating *b, floating *c, long ldc,
                            bint accumulate, const floating *bias, int act) noexcept nogil:
    if floating is float:
        ukr_float_packed(kc, a, b, c, ldc, accumulate, bias, act)
    else:
        ukr_double_packed(kc, a, b, c, ldc, accumulate, bias, act)


cdef inline void ukr_direct(long kc, const floating *a, long rsa, long csa, const floating *b,
                            long rsb, floating *c, long ldc, bint accumulate,
                            const floating *bias, int act) noexcept nogil:
    if floating is float:
        ukr_float_direct(kc, a, rsa, csa, b, rsb, c, ldc, accumulate, bias, act)
    else:
        ukr_double_direct(kc, a, rsa, csa, b, rsb, c, ldc, accumulate, bias, act)


cdef inline void ukr_narrow(long kc, const floating *a, long rsa, long csa, const floating *b,
                            long rsb, floating *c, long ldc) noexcept nogil:
    """The MR x NR/2 kernel, for a last column strip at most NR/2 wide (into a tile buffer)."""
    if floating is float:
        ukr_float_narrow_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, NULL, False)
    else:
        ukr_double_narrow_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, NULL, False)


cdef inline void ukr_rows(int rows, long kc, const floating *a, long rsa, long csa,
                          const floating *b, long rsb, floating *c, long ldc,
                          const floating *bias, int act) noexcept nogil:
    """The 4-, 2- or 1-row x NR kernel, for the rows left under MR (A read in place)."""
    if floating is float:
        if rows == 4:
            ukr_float_r4_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        elif rows == 2:
            ukr_float_r2_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        else:
            ukr_float_r1_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
    else:
        if rows == 4:
            ukr_double_r4_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        elif rows == 2:
            ukr_double_r2_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        else:
            ukr_double_r1_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)


cdef inline void transpose(const floating *src, Py_ssize_t lds, floating *dst,
                           Py_ssize_t ldd) noexcept nogil:
    """dst[c * ldd + r] = src[r * lds + c] for one VL x VL block (microkernel.h)."""
    if floating is float:
        transpose_f32(src, lds, dst, ldd)
    else:
        transpose_f64(src, lds, dst, ldd)


cdef void pack(const floating *x, Py_ssize_t ldx, bint trans, Py_ssize_t r0, Py_ssize_t nrows,
               Py_ssize_t c0, Py_ssize_t ncols, Py_ssize_t w, floating *dst) noexcept nogil:
    """Pack rows r0:r0+nrows, columns c0:c0+ncols of M into micro-panels of w rows.

    M[r, c] = x[r*ldx + c], or x[c*ldx + r] when trans. Panel q holds rows q*w:(q+1)*w,
    column by column: dst[q*ncols*w + c*w + r], zero-padded past nrows. A is packed as
    M = op(A) with w = MR; B as M = op(B)^T with w = NR (so trans = not trans_b). This is
    the one place transposes are absorbed.
    """
    cdef Py_ssize_t q, q_i, r, r_i, c, c_i, rows, done
    cdef Py_ssize_t VL = VL_F32 if floating is float else VL_F64
    cdef floating *panel
    cdef const floating *src
    for q_i in range((nrows + w - 1) // w):
        q = q_i * w
        rows = w if nrows - q >= w else nrows - q
        panel = dst + q * ncols
        if rows < w:
            memset(panel, 0, ncols * w * sizeof(floating))
        if trans:                       # M's rows are contiguous down x's columns
            for c in range(ncols):
                src = x + (c0 + c) * ldx + r0 + q
                for r in range(rows):
                    panel[c * w + r] = src[r]
        else:                           # M's rows are x's rows: a transpose
            done = 0
            if rows == w and w % VL == 0:   # VL x VL blocks through registers
                done = ncols // VL * VL
                for c_i in range(ncols // VL):
                    for r_i in range(w // VL):
                        transpose(x + (r0 + q + r_i * VL) * ldx + c0 + c_i * VL, ldx,
                                  panel + c_i * VL * w + r_i * VL, w)
            for r in range(rows):       # the rest an element at a time
                src = x + (r0 + q + r) * ldx + c0
                for c in range(done, ncols):
                    panel[c * w + r] = src[c]


cdef inline void store_edge(const floating *tile, Py_ssize_t ldt, floating *c, Py_ssize_t ldc,
                            Py_ssize_t mr, Py_ssize_t nr, bint accumulate, const floating *bias,
                            int act) noexcept nogil:
    """The masked path's second half: the valid mr x nr corner of a full tile into C."""
    cdef Py_ssize_t i, j
    cdef floating v
    for i in range(mr):
        for j in range(nr):
            v = tile[i * ldt + j]
            if accumulate:
                v = v + c[i * ldc + j]
            if bias != NULL:
                v = v + bias[j]
            if act == ACT_RELU and not v > 0:
                v = 0
            elif act == ACT_TANH:
                v = tanh_scalar(v)
            c[i * ldc + j] = v


cdef void macro_kernel(const floating *ap, const floating *bp, floating *c, Py_ssize_t ldc,
                       Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, bint accumulate,
                       const floating *bias, int act) noexcept nogil:
    """LOOPS 2 and 1 over packed micro-panels: C[0:mc, 0:nc] (+)= Ap (mc x kc) @ Bp (kc x nc)."""
    cdef Py_ssize_t MR, NR, jr, jr_i, ir, ir_i, mr, nr
    cdef floating tile[TILE_MAX]
    if floating is float:
        MR = MR_F32
        NR = NR_F32
    else:
        MR = MR_F64
        NR = NR_F64
    for jr_i in range((nc + NR - 1) // NR):                         # LOOP 2: NR-wide micro-panels of B
        jr = jr_i * NR
        nr = NR if nc - jr >= NR else nc - jr
        for ir_i in range((mc + MR - 1) // MR):                     # LOOP 1: MR-tall micro-panels of A
            ir = ir_i * MR
            mr = MR if mc - ir >= MR else mc - ir
            if mr == MR and nr == NR:                   # full tile: straight into C
                ukr_packed(kc, ap + ir * kc, bp + jr * kc, c + ir * ldc + jr, ldc, accumulate,
                           bias + jr if bias != NULL else NULL, act)
            else:                                       # edge: the one masked path
                ukr_packed(kc, ap + ir * kc, bp + jr * kc, tile, NR, False, NULL, False)
                store_edge(tile, NR, c + ir * ldc + jr, ldc, mr, nr, accumulate,
                           bias + jr if bias != NULL else NULL, act)


cdef Py_ssize_t packed_blocks(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int nthreads,
                              size_t itemsize, Py_ssize_t *b_size,
                              Py_ssize_t *a_size) noexcept nogil:
    """gemm_packed's row block height (returned) and scratch: b_size elements for the packed
    B block, then a_size for each thread's packed A block, sized to this product (a small
    one must not pay for KC x NC). a_size holds MC rows, whatever the thread count: a caller
    sizing the scratch for nthreads threads covers a run on fewer (whose blocks are taller)."""
    cdef bint f32 = itemsize == 4
    cdef Py_ssize_t MR = MR_F32 if f32 else MR_F64, NR = NR_F32 if f32 else NR_F64
    cdef Py_ssize_t KC = KC_F32 if f32 else KC_F64, MC = MC_F32 if f32 else MC_F64
    cdef Py_ssize_t NC = NC_F32 if f32 else NC_F64
    # Row blocks: MC rows each, but at least BLOCKS_PER_THREAD per thread when m allows, handed
    # out dynamically: on a shared 2-core box one thread is often slowed down, and a static
    # split would leave the other waiting at the barrier.
    cdef Py_ssize_t mcb = MC
    if nthreads > 1:
        mcb = (m + nthreads * BLOCKS_PER_THREAD - 1) // (nthreads * BLOCKS_PER_THREAD)
        mcb = (mcb + MR - 1) // MR * MR
        if mcb > MC:
            mcb = MC
        if mcb < MIN_BLOCK_ROWS:
            mcb = MIN_BLOCK_ROWS
    cdef Py_ssize_t kcap = KC if k > KC else k
    cdef Py_ssize_t ncap = ((NC if n > NC else n) + NR - 1) // NR * NR
    cdef Py_ssize_t mcap = ((MC if m > MC else m) + MR - 1) // MR * MR    # mcb <= MC
    b_size[0] = lines(kcap * ncap, itemsize)
    a_size[0] = lines(kcap * mcap, itemsize)
    return mcb


cdef void gemm_packed(const floating *a, Py_ssize_t lda, bint trans_a,
                      const floating *b, Py_ssize_t ldb, bint trans_b,
                      floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """BLIS: the five loops around the micro-kernel, threads over LOOP 3 (blocks of rows).

    ws: gemm_scratch(m, n, k, trans_b, nthreads) elements."""
    cdef Py_ssize_t MR, NR, KC, NC
    if floating is float:
        MR = MR_F32
        NR = NR_F32
        KC = KC_F32
        NC = NC_F32
    else:
        MR = MR_F64
        NR = NR_F64
        KC = KC_F64
        NC = NC_F64
    cdef Py_ssize_t jc, jc_i, nc, pc, pc_i, kc, ib, ic, mc, jp, n_bpanels, n_blocks
    cdef bint first, last
    cdef int nt, tid
    cdef floating *ap
    cdef Py_ssize_t b_size, a_size
    cdef Py_ssize_t mcb = packed_blocks(m, n, k, nthreads, sizeof(floating), &b_size, &a_size)
    cdef floating *bp = ws
    cdef floating *ap_all = ws + b_size             # then one A block per thread
    n_blocks = (m + mcb - 1) // mcb
    nt = nthreads if nthreads < n_blocks else <int>n_blocks
    for jc_i in range((n + NC - 1) // NC):                          # LOOP 5: split n into NC parts
        jc = jc_i * NC
        nc = NC if n - jc >= NC else n - jc
        n_bpanels = (nc + NR - 1) // NR
        for pc_i in range((k + KC - 1) // KC):                      # LOOP 4: split k into KC parts; pack B
            pc = pc_i * KC
            kc = KC if k - pc >= KC else k - pc
            first = pc == 0
            last = pc + kc == k
            if nt > 1:
                for jp in prange(n_bpanels, num_threads=nt, schedule="dynamic"):
                    pack(b, ldb, not trans_b, jc + jp * NR, NR if nc - jp * NR >= NR else nc - jp * NR,
                         pc, kc, NR, bp + jp * NR * kc)
            else:
                pack(b, ldb, not trans_b, jc, nc, pc, kc, NR, bp)
            for ib in prange(n_blocks, num_threads=nt, schedule="dynamic"):
                ic = ib * mcb                           # LOOP 3: split m into MC parts; pack A
                mc = mcb if m - ic >= mcb else m - ic
                tid = threadid()
                ap = ap_all + tid * a_size
                pack(a, lda, trans_a, ic, mc, pc, kc, MR, ap)
                macro_kernel(ap, bp, c + ic * ldc + jc, ldc, mc, nc, kc, not first,
                             bias + jc if (last and bias != NULL) else NULL, act if last else ACT_NONE)


cdef void direct_tiles(const floating *a, Py_ssize_t lda, bint trans_a,
                       const floating *b, Py_ssize_t rsb, Py_ssize_t bstep,
                       const floating *b_edge, Py_ssize_t nre, floating *c, Py_ssize_t ldc,
                       Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating *bias, int act,
                       Py_ssize_t t0, Py_ssize_t t1) noexcept nogil:
    """Tiles t0:t1 (row strip major) of the small-size path: A and B read in place.

    B strip jt starts at b + jt*bstep, rows of stride rsb: op(B) in place (bstep NR, rsb ldb)
    or packed micro-panels (bstep NR*k, rsb NR). The last, partial column strip was packed,
    zero-padded, into b_edge, nre = NR or NR/2 wide (then the half-width kernel computes it).
    The rows left under MR in the last row strip run the 4-, 2- and 1-row kernels on A in
    place. Column edges take the masked path: a full tile into a buffer, the valid part out.
    """
    cdef Py_ssize_t MR, NR, t, it, jt, mr, nr, n_ntiles, r0
    cdef long rsa, csa, rsb_t
    cdef int rows
    cdef const floating *at
    cdef const floating *bt
    cdef const floating *bias_t
    cdef floating *ct
    cdef floating tile[TILE_MAX]
    if floating is float:
        MR = MR_F32
        NR = NR_F32
    else:
        MR = MR_F64
        NR = NR_F64
    rsa = 1 if trans_a else lda
    csa = lda if trans_a else 1
    n_ntiles = (n + NR - 1) // NR
    for t in range(t0, t1):
        it = t // n_ntiles
        jt = t - it * n_ntiles
        mr = MR if m - it * MR >= MR else m - it * MR
        nr = NR if n - jt * NR >= NR else n - jt * NR
        at = a + it * MR * rsa
        ct = c + it * MR * ldc + jt * NR
        bias_t = bias + jt * NR if bias != NULL else NULL
        if nr == NR:
            bt, rsb_t = b + jt * bstep, rsb
        else:
            bt, rsb_t = b_edge, nre
        if mr == MR:
            if nr == NR:                                # full tile: straight into C
                ukr_direct(k, at, rsa, csa, bt, rsb_t, ct, ldc, False, bias_t, act)
            else:                                       # column edge: the masked path
                if nre < NR:
                    ukr_narrow(k, at, rsa, csa, bt, rsb_t, tile, nre)
                else:
                    ukr_direct(k, at, rsa, csa, bt, rsb_t, tile, NR, False, NULL, False)
                store_edge(tile, nre if nre < NR else NR, ct, ldc, mr, nr, False, bias_t, act)
        else:                                           # last rows: mr = 4a + 2b + c
            r0 = 0
            rows = 4
            while rows >= 1:
                if mr & rows:
                    if nr == NR:
                        ukr_rows(rows, k, at + r0 * rsa, rsa, csa, bt, rsb_t, ct + r0 * ldc, ldc,
                                 bias_t, act)
                    else:                               # (b_edge is padded for this NR-wide read)
                        ukr_rows(rows, k, at + r0 * rsa, rsa, csa, bt, rsb_t, tile, NR, NULL, False)
                        store_edge(tile, NR, ct + r0 * ldc, ldc, rows, nr, False, bias_t, act)
                    r0 += rows
                rows = rows // 2


cdef Py_ssize_t direct_panels(Py_ssize_t n, Py_ssize_t k, bint trans_b,
                              size_t itemsize) noexcept nogil:
    """gemm_direct's scratch for op(B)'s full column strips packed (0 unless trans_b); the
    packed last, partial strip follows, NR * k + NR elements at most (direct_edge)."""
    cdef Py_ssize_t NR = NR_F32 if itemsize == 4 else NR_F64
    return lines((n // NR * NR + NR) * k, itemsize) if trans_b else 0


cdef inline Py_ssize_t direct_edge(Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil:
    cdef Py_ssize_t NR = NR_F32 if itemsize == 4 else NR_F64
    # + NR: the row kernels read NR columns from rows nre wide (the extra ones discarded)
    return lines(NR * k + NR, itemsize) if n % NR else 0


cdef void gemm_direct(const floating *a, Py_ssize_t lda, bint trans_a,
                      const floating *b, Py_ssize_t ldb, bint trans_b,
                      floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """The small-size path: no blocking, no packing of A; the micro-kernels over whole k.

    op(B) is read in place when it is row-major (trans_b False); a transposed B is packed once
    (k x n, the size of the weights at most), into ws. Threads split the list of tiles.
    """
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = MR_F32
        NR = NR_F32
    else:
        MR = MR_F64
        NR = NR_F64
    cdef Py_ssize_t n_mtiles = (m + MR - 1) // MR, n_ntiles = (n + NR - 1) // NR
    cdef Py_ssize_t n_tiles = n_mtiles * n_ntiles, per, part, n_parts, rsb, bstep, last_n, nre = NR
    cdef floating *b_edge = NULL
    cdef floating *b_packed = NULL
    cdef const floating *bsrc = b
    last_n = n // NR * NR                              # where the partial strip starts
    if trans_b:
        # Packed micro-panels, k x NR each, for the full strips: read with rsb = NR.
        b_packed = ws
        pack(b, ldb, False, 0, last_n, 0, k, NR, b_packed)
        bsrc, rsb, bstep = b_packed, NR, NR * k
    else:
        rsb, bstep = ldb, NR
    if n % NR:
        nre = NR // 2 if n % NR <= NR // 2 else NR
        b_edge = ws + direct_panels(n, k, trans_b, sizeof(floating))
        pack(b, ldb, not trans_b, last_n, n - last_n, 0, k, nre, b_edge)
    nthreads = threads_for(2.0 * m * n * k, PAR_MIN_FLOPS,
                           n_tiles if n_tiles < nthreads else nthreads)
    if nthreads == 1:
        direct_tiles(a, lda, trans_a, bsrc, rsb, bstep, b_edge, nre, c, ldc, m, n, k, bias,
                     act, 0, n_tiles)
    else:
        # Runs of consecutive tiles (sharing A strips), BLOCKS_PER_THREAD per thread, dynamic.
        n_parts = nthreads * BLOCKS_PER_THREAD if nthreads * BLOCKS_PER_THREAD < n_tiles else n_tiles
        per = (n_tiles + n_parts - 1) // n_parts
        n_parts = (n_tiles + per - 1) // per
        for part in prange(n_parts, num_threads=nthreads, schedule="dynamic"):
            direct_tiles(a, lda, trans_a, bsrc, rsb, bstep, b_edge, nre, c, ldc, m, n, k,
                         bias, act, part * per, min((part + 1) * per, n_tiles))


cdef inline bint is_small(Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil:
    """gemm's choice: the small-size path while op(B) fits in half of L2."""
    return <size_t>(k * n) * itemsize <= DIRECT_MAX_B_BYTES


cdef inline bint is_narrow(Py_ssize_t n, size_t itemsize) noexcept nogil:
    """C at most half a column strip wide (the MLP's 10 classes): see gemm_small."""
    return n <= (NR_F32 if itemsize == 4 else NR_F64) // 2


cdef void gemm_small(const floating *a, Py_ssize_t lda, bint trans_a,
                     const floating *b, Py_ssize_t ldb, bint trans_b,
                     floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                     const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """The small-size path (gemm_direct), on C or on its transpose.

    A narrow C (is_narrow) fills the half-width tiles' vectors only in part: 10 columns use
    10 of 16 lanes. When op(A) is transposed in memory (x^T g, the last layer's weight
    gradient) the path runs instead on C^T = op(B)^T op(A)^T, whose rows are the m wide ones
    and whose B is A as it lies: every lane used, nothing packed, then C^T copied back
    transposed (BLIS transposes a problem the same way when its kernel prefers the other
    orientation). Each element is the same sum in the same order either way, except for the
    columns of C that fall in C^T's last rows (the 2- and 1-row kernels split their sums).
    Measured, (512x64)^T @ 512x10 float32, one thread: 11.3 us before, 9.1 after (3.6 and
    2.6 us at 128 rows). No epilogue on this route (no caller has one with op(A) transposed).
    ws: gemm_scratch's."""
    cdef Py_ssize_t i, j
    if trans_a and is_narrow(n, sizeof(floating)) and bias == NULL and act == ACT_NONE:
        gemm_direct(b, ldb, not trans_b, a, lda, False, ws, m, n, m, k, NULL, False,
                    ws + lines(m * n, sizeof(floating)), nthreads)
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = ws[j * m + i]
        return
    gemm_direct(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, bias, act, ws, nthreads)


cdef Py_ssize_t gemm_scratch(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint trans_b,
                             int nthreads, size_t itemsize) noexcept nogil:
    """Elements of scratch that gemm (or gemm_packed) needs for this product on nthreads."""
    cdef Py_ssize_t b_size, a_size, size
    if is_small(n, k, itemsize):
        size = direct_panels(n, k, trans_b, itemsize) + direct_edge(n, k, itemsize)
        if is_narrow(n, itemsize):      # gemm_small may run on C^T: C^T, then its scratch
            size = max(size, lines(m * n, itemsize) + direct_edge(m, k, itemsize))
        return size
    packed_blocks(m, n, k, nthreads, itemsize, &b_size, &a_size)
    return b_size + nthreads * a_size


cdef void gemm(const floating *a, Py_ssize_t lda, bint trans_a,
               const floating *b, Py_ssize_t ldb, bint trans_b,
               floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
               const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """The matmul every op uses: the small-size path while op(B) fits in half of L2, else BLIS.

    At most nthreads threads; ws: gemm_scratch(m, n, k, trans_b, nthreads) elements."""
    if is_small(n, k, sizeof(floating)):
        gemm_small(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, bias, act, ws, nthreads)
    else:
        gemm_packed(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, bias, act, ws,
                    threads_for(2.0 * m * n * k, PAR_MIN_FLOPS, nthreads))


cdef void gemm_blocked(const floating *a, Py_ssize_t lda, bint trans_a,
                       const floating *b, Py_ssize_t ldb, bint trans_b,
                       floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n,
                       Py_ssize_t k) noexcept nogil:
    """Ladder step 2: loops reordered (i, p, j: the inner loop runs along rows of B and C, so it
    vectorises) and blocked so a block of B stays in cache; no packing, no micro-kernel."""
    cdef Py_ssize_t jj, jj_i, pp, pp_i, i, p, j, j1, p1
    cdef floating aip
    cdef floating *crow
    cdef const floating *brow
    for i in range(m):
        memset(c + i * ldc, 0, n * sizeof(floating))
    for jj_i in range((n + BLOCKED_NB - 1) // BLOCKED_NB):
        jj = jj_i * BLOCKED_NB
        j1 = jj + BLOCKED_NB if jj + BLOCKED_NB < n else n
        for pp_i in range((k + BLOCKED_KB - 1) // BLOCKED_KB):
            pp = pp_i * BLOCKED_KB
            p1 = pp + BLOCKED_KB if pp + BLOCKED_KB < k else k
            for i in range(m):
                crow = c + i * ldc
                for p in range(pp, p1):
                    aip = a[p * lda + i] if trans_a else a[i * lda + p]
                    if trans_b:
                        for j in range(jj, j1):
                            crow[j] += aip * b[j * ldb + p]
                    else:
                        brow = b + p * ldb
                        for j in range(jj, j1):
                            crow[j] += aip * brow[j]


# The def functions: dtype dispatch and data pointers only. Arrays are C-contiguous (checked
# by kernels/_front.py), so a typed memoryview's first element is the start of the data.

cdef int MATMUL_AUTO = 0, MATMUL_BLOCKED = 1, MATMUL_PACKED = 2, MATMUL_THREADED = 3


cdef void _matmul(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                  bint trans_a, bint trans_b, int variant):
    # a (m, k) or (k, m) with trans_a; b (k, n) or (n, k) with trans_b; out (m, n)
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t lda = a.shape[1], ldb = b.shape[1], size = 0, b_size, a_size
    cdef int nt = _threads              # read once: the scratch is sized for it
    if variant == MATMUL_PACKED:
        nt = 1
    elif variant == MATMUL_THREADED:
        nt = threads_for(2.0 * m * n * k, PAR_MIN_FLOPS, nt)
    if variant == MATMUL_AUTO:
        size = gemm_scratch(m, n, k, trans_b, nt, sizeof(floating))
    elif variant != MATMUL_BLOCKED:
        packed_blocks(m, n, k, nt, sizeof(floating), &b_size, &a_size)
        size = b_size + nt * a_size
    cdef Scratch ws = scratch_take(size * sizeof(floating))
    cdef floating *w = <floating *>ws.data
    with nogil:
        if variant == MATMUL_AUTO:
            gemm(&a[0, 0], lda, trans_a, &b[0, 0], ldb, trans_b, &out[0, 0], n, m, n, k, NULL, False,
                 w, nt)
        elif variant == MATMUL_BLOCKED:
            gemm_blocked(&a[0, 0], lda, trans_a, &b[0, 0], ldb, trans_b, &out[0, 0], n, m, n, k)
        else:
            gemm_packed(&a[0, 0], lda, trans_a, &b[0, 0], ldb, trans_b, &out[0, 0], n, m, n, k,
                        NULL, False, w, nt)
    scratch_give(ws)


cdef void _matmul_variant(a, b, out, bint trans_a, bint trans_b, int variant) except *:
    # the dtype dispatch that every matmul entry point below shares
    if a.itemsize == 4:
        _matmul[float](a, b, out, trans_a, trans_b, variant)
    else:
        _matmul[double](a, b, out, trans_a, trans_b, variant)


def matmul(a, b, out, bint trans_a, bint trans_b):
    """out = op(a) @ op(b): the small-size path or threaded BLIS, whichever fits the shape."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_AUTO)


def matmul_blocked(a, b, out, bint trans_a, bint trans_b):
    """Ladder step: cache-blocked loops, one thread."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_BLOCKED)


def matmul_packed(a, b, out, bint trans_a, bint trans_b):
    """Ladder step: BLIS packing + the register-blocked micro-kernel, one thread."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_PACKED)


def matmul_threaded(a, b, out, bint trans_a, bint trans_b):
    """Ladder step: BLIS with OpenMP threads over row blocks (LOOP 3), whatever the size."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_THREADED)


# ====================================================================================== relu

cdef inline void relu_range(const floating *x, floating *out, Py_ssize_t i0,
                            Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        out[i] = x[i] if x[i] > 0 else 0


cdef void _relu(const floating[::1] x, floating[::1] out) noexcept:
    # x and out are (size,), possibly the same array: out = max(x, 0)
    cdef Py_ssize_t size = x.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    with nogil:
        if nt == 1:
            relu_range(&x[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            for part in prange(nt, num_threads=nt, schedule="static"):
                relu_range(&x[0], &out[0], part * per, min((part + 1) * per, size))


def relu(x, out):
    if x.itemsize == 4:
        _relu[float](x.reshape(-1), out.reshape(-1))
    else:
        _relu[double](x.reshape(-1), out.reshape(-1))


cdef inline void relu_backward_range(const floating *grad_y, const floating *y, floating *out,
                                     Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        out[i] = grad_y[i] if y[i] > 0 else 0


cdef void _relu_backward(const floating[::1] grad_y, const floating[::1] y,
                         floating[::1] out) noexcept:
    # grad_y, y, out are (size,); out may be grad_y: out = grad_y * (y > 0)
    cdef Py_ssize_t size = y.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    with nogil:
        if nt == 1:
            relu_backward_range(&grad_y[0], &y[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            for part in prange(nt, num_threads=nt, schedule="static"):
                relu_backward_range(&grad_y[0], &y[0], &out[0], part * per,
                                    min((part + 1) * per, size))


def relu_backward(grad_y, y, out):
    if y.itemsize == 4:
        _relu_backward[float](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))
    else:
        _relu_backward[double](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ====================================================================================== tanh

cdef inline floating tanh_scalar(floating x) noexcept nogil:
    """vtanh.h's tanh of one element: the bits a whole vector of them gets."""
    if floating is float:
        return tanh_scalar_f32(x)
    else:
        return tanh_scalar_f64(x)


cdef inline void tanh_range(const floating *x, floating *out, Py_ssize_t i0,
                            Py_ssize_t i1) noexcept nogil:
    if floating is float:
        tanh_f32(x + i0, out + i0, i1 - i0)
    else:
        tanh_f64(x + i0, out + i0, i1 - i0)


cdef void _tanh(const floating[::1] x, floating[::1] out) noexcept:
    # x and out are (size,), possibly the same array: out = tanh(x), vtanh.h's vectors. About
    # 35 vector operations a vector where relu has one: threads pay from half of relu's size
    # (32 Ki elements, 15 to 40 us of one core's work; at 16 Ki, float64's 21 us, waking a
    # second thread on this shared 2-core machine cost more than it saved). Each thread's
    # part is a whole number of 64-byte vectors.
    cdef Py_ssize_t size = x.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS // 2, size)
    with nogil:
        if nt == 1:
            tanh_range(&x[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            per = (per + 15) // 16 * 16
            for part in prange(nt, num_threads=nt, schedule="static"):
                tanh_range(&x[0], &out[0], min(part * per, size), min((part + 1) * per, size))


def tanh(x, out):
    if x.itemsize == 4:
        _tanh[float](x.reshape(-1), out.reshape(-1))
    else:
        _tanh[double](x.reshape(-1), out.reshape(-1))


cdef inline void tanh_backward_range(const floating *grad_y, const floating *y, floating *out,
                                     Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        out[i] = grad_y[i] * (1 - y[i] * y[i])


cdef void _tanh_backward(const floating[::1] grad_y, const floating[::1] y,
                         floating[::1] out) noexcept:
    # grad_y, y, out are (size,); out may be grad_y or y: out = grad_y * (1 - y^2)
    cdef Py_ssize_t size = y.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    with nogil:
        if nt == 1:
            tanh_backward_range(&grad_y[0], &y[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            for part in prange(nt, num_threads=nt, schedule="static"):
                tanh_backward_range(&grad_y[0], &y[0], &out[0], part * per,
                                    min((part + 1) * per, size))


def tanh_backward(grad_y, y, out):
    if y.itemsize == 4:
        _tanh_backward[float](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))
    else:
        _tanh_backward[double](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ====================================================================================== dropout

cdef inline uint32_t fmix32(uint32_t h) noexcept nogil:
    """MurmurHash3's finaliser (kernels/_layers.py's mask, bit for bit)."""
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6B
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35
    h ^= h >> 16
    return h


cdef inline uint32_t mask_key(uint64_t seed, uint64_t step, uint32_t layer) noexcept nogil:
    """kernels._layers.mask_key: the key of one step's mask on one hidden layer."""
    cdef uint32_t h = fmix32(<uint32_t>seed)
    h = fmix32(h ^ <uint32_t>(seed >> 32))
    h = fmix32(h ^ <uint32_t>step)
    h = fmix32(h ^ <uint32_t>(step >> 32))
    return fmix32(h ^ layer)


cdef inline void dropout_range(const floating *x, floating *out, uint32_t key,
                               uint32_t threshold, floating scale, Py_ssize_t i0,
                               Py_ssize_t i1) noexcept nogil:
    """Elements i0:i1 of a flattened (rows, units) array: element e is kept (and scaled) when
    fmix32(key + e * golden) >= threshold, else 0 (uint32 arithmetic, which vectorises)."""
    cdef Py_ssize_t e
    for e in range(i0, i1):
        out[e] = x[e] * scale if fmix32(key + <uint32_t>e * <uint32_t>0x9E3779B9) >= threshold else 0


cdef void dropout_op(const floating *x, floating *out, Py_ssize_t size, uint32_t key,
                     uint32_t threshold, double scale) noexcept nogil:
    """The op on raw pointers (out may be x), in equal chunks per thread when large enough."""
    cdef Py_ssize_t per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    if nt == 1:
        dropout_range(x, out, key, threshold, <floating>scale, 0, size)
    else:
        per = (size + nt - 1) // nt
        for part in prange(nt, num_threads=nt, schedule="static"):
            dropout_range(x, out, key, threshold, <floating>scale, part * per,
                          min((part + 1) * per, size))


cdef void _dropout(const floating[::1] x, floating[::1] out, uint32_t key, uint32_t threshold,
                   double scale) noexcept:
    with nogil:
        dropout_op(&x[0], &out[0], x.shape[0], key, threshold, scale)


def dropout(x, out, uint32_t key, uint32_t threshold, double scale):
    if x.itemsize == 4:
        _dropout[float](x.reshape(-1), out.reshape(-1), key, threshold, scale)
    else:
        _dropout[double](x.reshape(-1), out.reshape(-1), key, threshold, scale)


# ====================================================================================== softmax-CE

cdef inline double softmax_cross_entropy_row(const floating *z, Py_ssize_t label, floating *g,
                                             Py_ssize_t classes, double inv_batch) noexcept nogil:
    """One row in one sweep: max, then exp(z - max) into g while summing, then scale g.

    Returns log(sum_j exp(z_j - max)) - (z_label - max), the row's loss; leaves
    g = (softmax(z) - onehot(label)) / batch. Shifting by the max keeps exp from overflowing.
    """
    cdef Py_ssize_t j
    cdef floating zmax, e, scale
    cdef double total = 0.0
    if floating is float:                       # a vector at a time (vecmath.h)
        zmax = row_max_f32(z, classes)
        total = exp_minus_max_f32(z, zmax, g, classes)
    else:
        zmax = z[0]
        for j in range(1, classes):
            if z[j] > zmax:
                zmax = z[j]
        for j in range(classes):
            e = exp(z[j] - zmax)
            g[j] = e
            total += e
    scale = <floating>(inv_batch / total)
    for j in range(classes):
        g[j] *= scale
    g[label] -= <floating>inv_batch
    return log(total) - (<double>z[label] - <double>zmax)


cdef double softmax_cross_entropy_rows(const floating *z, const int64_t *labels, floating *g,
                                       Py_ssize_t rows, Py_ssize_t classes,
                                       double inv_batch) noexcept nogil:
    """A block of rows; the sum of their losses. Rows narrower than one float32 vector (the
    MLP's 10 classes) go through vecmath.h's block kernel, which vectorises across rows."""
    cdef Py_ssize_t i
    cdef double loss = 0.0
    if floating is float:
        if classes < VL_F32:
            return softmax_xent_small_rows_f32(z, labels, g, rows, classes, inv_batch)
    for i in range(rows):
        loss += softmax_cross_entropy_row(z + i * classes, labels[i], g + i * classes, classes,
                                          inv_batch)
    return loss


cdef double softmax_cross_entropy_op(const floating *z, const int64_t *labels, floating *g,
                                     Py_ssize_t batch, Py_ssize_t classes) noexcept nogil:
    """The op on raw pointers (z, g (batch, classes)): the mean loss, accumulated in double.
    Threads over blocks of rows when the batch is large enough to pay for them.

    The loss is summed block by block in the blocks' order, whatever the threads: each
    block's sum goes to its own slot and the slots are added up after. A reduction over a
    dynamic schedule added the blocks in whichever order the threads took them, so the same
    call could give a loss a few ulp apart from run to run (seen in float64 when calls from
    several Python threads overlapped)."""
    cdef Py_ssize_t n_blocks = (batch + SOFTMAX_BLOCK_ROWS - 1) // SOFTMAX_BLOCK_ROWS, blk
    cdef double inv_batch = 1.0 / batch, loss = 0.0
    cdef int nt = threads_for(batch * classes, PAR_MIN_ELEMS // 4, n_blocks)
    cdef double *block_loss = NULL
    if nt > 1:
        block_loss = <double *>malloc(n_blocks * sizeof(double))
    if block_loss == NULL:              # one thread (or no memory for the slots): in order
        for blk in range(n_blocks):
            loss += softmax_xent_block(z, labels, g, batch, classes, inv_batch, blk)
        return loss * inv_batch
    for blk in prange(n_blocks, num_threads=nt, schedule="dynamic"):
        block_loss[blk] = softmax_xent_block(z, labels, g, batch, classes, inv_batch, blk)
    for blk in range(n_blocks):
        loss += block_loss[blk]
    free(block_loss)
    return loss * inv_batch


cdef inline double softmax_xent_block(const floating *z, const int64_t *labels, floating *g,
                                      Py_ssize_t batch, Py_ssize_t classes, double inv_batch,
                                      Py_ssize_t blk) noexcept nogil:
    """Block blk's SOFTMAX_BLOCK_ROWS rows (fewer at the end): the sum of their losses."""
    cdef Py_ssize_t r0 = blk * SOFTMAX_BLOCK_ROWS
    return softmax_cross_entropy_rows(
        z + r0 * classes, labels + r0, g + r0 * classes,
        SOFTMAX_BLOCK_ROWS if batch - r0 >= SOFTMAX_BLOCK_ROWS else batch - r0, classes, inv_batch)


cdef double _softmax_cross_entropy(const floating *z, const int64_t *labels, floating *g,
                                   Py_ssize_t batch, Py_ssize_t classes) noexcept nogil:
    # z and g (batch, classes), labels (batch,) int64; returns the mean loss, or -1 if a label
    # is outside [0, C) (CHECKS_LABELS in cython_set.py: the front does not check the range,
    # since one compare per row here is cheaper than a NumPy reduction there)
    cdef Py_ssize_t i
    for i in range(batch):
        if <uint64_t>labels[i] >= <uint64_t>classes:   # a negative label wraps to huge
            return -1.0
    return softmax_cross_entropy_op(z, labels, g, batch, classes)


def softmax_cross_entropy(logits, labels, grad):
    # The arrays' memory through the buffer protocol rather than typed memoryviews: at the
    # MLP's 128x10 the whole kernel takes about 1.5 us, and making three memoryviews took
    # another 0.3 us. (The front passes C-contiguous arrays, which PyBUF_SIMPLE asks for.)
    cdef Py_buffer z, y, g
    cdef Py_ssize_t batch, classes
    cdef double loss
    cdef bint single = logits.itemsize == 4
    PyObject_GetBuffer(logits, &z, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(labels, &y, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(grad, &g, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                batch = y.len // <Py_ssize_t>sizeof(int64_t)
                classes = z.len // (batch * (4 if single else 8))
                with nogil:
                    if single:
                        loss = _softmax_cross_entropy[float](<const float *>z.buf, <const int64_t *>y.buf,
                                                             <float *>g.buf, batch, classes)
                    else:
                        loss = _softmax_cross_entropy[double](<const double *>z.buf, <const int64_t *>y.buf,
                                                              <double *>g.buf, batch, classes)
            finally:
                PyBuffer_Release(&g)
        finally:
            PyBuffer_Release(&y)
    finally:
        PyBuffer_Release(&z)
    return loss


# ====================================================================================== linear

cdef void _linear(const floating[:, ::1] x, const floating[:, ::1] w, const floating[::1] b,
                  floating[:, ::1] out, int act):
    # x (B, in), w (in, out), b (out,), out (B, out): out = x @ w + b, activated by act; the
    # bias and the ReLU run in the micro-kernel's epilogue, on the tile still in registers.
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    cdef int nt = _threads
    cdef Scratch ws = scratch_take(
        gemm_scratch(batch, n_out, n_in, False, nt, sizeof(floating)) * sizeof(floating))
    with nogil:
        gemm(&x[0, 0], n_in, False, &w[0, 0], n_out, False, &out[0, 0], n_out,
             batch, n_out, n_in, &b[0], act, <floating *>ws.data, nt)
    scratch_give(ws)


def linear(x, w, b, out, int act):
    if x.itemsize == 4:
        _linear[float](x, w, b, out, act)
    else:
        _linear[double](x, w, b, out, act)


cdef void mask_and_bias_grad(const floating *y, const floating *grad_y, floating *g,
                             floating *grad_b, Py_ssize_t batch, Py_ssize_t n_out,
                             int act) noexcept nogil:
    """One pass over grad_y: g = grad_y * act'(y) (ReLU: grad_y * (y > 0); tanh:
    grad_y * (1 - y^2)) unless act is ACT_NONE, and grad_b = sum over rows of g.

    Backward of out = act(x @ w + b): the activation's derivative first, then db = sum_rows g.
    The column sums accumulate row by row into grad_b (contiguous, so the loop vectorises)."""
    cdef Py_ssize_t i, j
    cdef const floating *gy
    cdef const floating *yr
    cdef floating *gr
    memset(grad_b, 0, n_out * sizeof(floating))
    for i in range(batch):
        gy = grad_y + i * n_out
        yr = y + i * n_out
        gr = g + i * n_out
        if act == ACT_RELU:
            for j in range(n_out):
                gr[j] = gy[j] if yr[j] > 0 else 0
                grad_b[j] += gr[j]
        elif act == ACT_TANH:
            for j in range(n_out):
                gr[j] = gy[j] * (1 - yr[j] * yr[j])
                grad_b[j] += gr[j]
        else:
            for j in range(n_out):
                grad_b[j] += gy[j]


cdef Py_ssize_t linear_backward_scratch(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                                        int nthreads, size_t itemsize) noexcept nogil:
    """Elements of scratch linear_backward_op's two products need (they run one after the other)."""
    return max(gemm_scratch(n_in, n_out, batch, False, nthreads, itemsize),
               gemm_scratch(batch, n_in, n_out, True, nthreads, itemsize))


cdef void linear_backward_op(const floating *x, const floating *w, const floating *y,
                             const floating *grad_y, floating *g, floating *grad_x,
                             floating *grad_w, floating *grad_b, Py_ssize_t batch,
                             Py_ssize_t n_in, Py_ssize_t n_out, int act, floating *ws,
                             int nthreads) noexcept nogil:
    """The op on raw pointers. x (B, in), w (in, out), y and grad_y (B, out); grad_x (B, in) or
    NULL, grad_w (in, out), grad_b (out,). Forward: y = act(x @ w + b). With g = grad_y * act'(y)
    (or grad_y when act is ACT_NONE):
      dw = x^T g  (B is k: trans_a absorbed by packing x),  db = sum_rows g,
      dx = g w^T  (trans_b absorbed by packing w).
    g (B, out) receives that gradient unless ACT_NONE: scratch, or grad_y itself (masked in
    place). ws: linear_backward_scratch(...) elements."""
    cdef const floating *gsrc = grad_y
    if act != ACT_NONE:
        gsrc = g
    mask_and_bias_grad(y, grad_y, g, grad_b, batch, n_out, act)
    gemm(x, n_in, True, gsrc, n_out, False, grad_w, n_out, n_in, n_out, batch, NULL, False,
         ws, nthreads)
    if grad_x != NULL:
        gemm(gsrc, n_out, False, w, n_out, True, grad_x, n_in, batch, n_in, n_out, NULL, False,
             ws, nthreads)


cdef void _linear_backward(const floating[:, ::1] x, const floating[:, ::1] w,
                           const floating[:, ::1] y, const floating[:, ::1] grad_y,
                           floating *grad_x, floating[:, ::1] grad_w,
                           floating[::1] grad_b, int act):
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    cdef int nt = _threads
    # Scratch: g (unless ACT_NONE: grad_y is the caller's, not to be written), then the products'.
    cdef Py_ssize_t g_size = lines(batch * n_out, sizeof(floating)) if act != ACT_NONE else 0
    cdef Scratch ws = scratch_take(
        (g_size + linear_backward_scratch(batch, n_in, n_out, nt, sizeof(floating)))
        * sizeof(floating))
    cdef floating *g = <floating *>ws.data
    with nogil:
        linear_backward_op(&x[0, 0], &w[0, 0], &y[0, 0], &grad_y[0, 0], g, grad_x,
                           &grad_w[0, 0], &grad_b[0], batch, n_in, n_out, act, g + g_size, nt)
    scratch_give(ws)


cdef floating *_ptr(floating[:, ::1] a) noexcept:
    return &a[0, 0]


def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, int act):
    if x.itemsize == 4:
        _linear_backward[float](x, w, y, grad_y,
                                _ptr[float](grad_x) if grad_x is not None else NULL,
                                grad_w, grad_b, act)
    else:
        _linear_backward[double](x, w, y, grad_y,
                                 _ptr[double](grad_x) if grad_x is not None else NULL,
                                 grad_w, grad_b, act)


# ====================================================================================== optimizers

cdef inline void sgd_range(floating *param, const floating *grad, floating *velocity,
                           floating lr, floating momentum, floating weight_decay,
                           Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g
    if velocity == NULL:
        for i in range(i0, i1):
            g = grad[i] + weight_decay * param[i]
            param[i] -= lr * g
    else:
        for i in range(i0, i1):
            g = grad[i] + weight_decay * param[i]
            velocity[i] = momentum * velocity[i] + g
            param[i] -= lr * velocity[i]


cdef void sgd_op(floating *param, const floating *grad, floating *velocity, Py_ssize_t size,
                 double lr, double momentum, double weight_decay) noexcept nogil:
    """The op on raw pointers: param, grad, velocity (or NULL) are (size,). torch.optim.SGD
    (dampening 0, no Nesterov): g = grad + wd * p; v = momentum * v + g (when momentum);
    p -= lr * (v or g). One pass, in equal chunks per thread when large enough."""
    cdef Py_ssize_t per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    if nt == 1:
        sgd_range(param, grad, velocity, <floating>lr, <floating>momentum,
                  <floating>weight_decay, 0, size)
    else:
        per = (size + nt - 1) // nt
        for part in prange(nt, num_threads=nt, schedule="static"):
            sgd_range(param, grad, velocity, <floating>lr, <floating>momentum,
                      <floating>weight_decay, part * per, min((part + 1) * per, size))


cdef void _sgd_step(floating[::1] param, const floating[::1] grad, floating *velocity,
                    double lr, double momentum, double weight_decay) noexcept:
    with nogil:
        sgd_op(&param[0], &grad[0], velocity, param.shape[0], lr, momentum, weight_decay)


cdef floating *_ptr1(floating[::1] a) noexcept:
    return &a[0]


def sgd_step(param, grad, velocity, double lr, double momentum, double weight_decay):
    if param.itemsize == 4:
        _sgd_step[float](param.reshape(-1), grad.reshape(-1),
                         _ptr1[float](velocity.reshape(-1)) if velocity is not None else NULL,
                         lr, momentum, weight_decay)
    else:
        _sgd_step[double](param.reshape(-1), grad.reshape(-1),
                          _ptr1[double](velocity.reshape(-1)) if velocity is not None else NULL,
                          lr, momentum, weight_decay)


cdef inline void adam_range(floating *param, const floating *grad, floating *m, floating *v,
                            floating step_size, floating inv_bc2_sqrt, floating beta1,
                            floating beta2, floating eps, floating weight_decay,
                            Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, denom
    for i in range(i0, i1):
        g = grad[i] + weight_decay * param[i]
        m[i] = beta1 * m[i] + (1 - beta1) * g
        v[i] = beta2 * v[i] + (1 - beta2) * (g * g)
        if floating is float:
            denom = sqrtf(v[i]) * inv_bc2_sqrt + eps
        else:
            denom = sqrt(v[i]) * inv_bc2_sqrt + eps
        param[i] -= step_size * (m[i] / denom)


cdef inline void adam_scales(long step, double lr, double beta1, double beta2,
                             double *step_size, double *inv_bc2_sqrt) noexcept nogil:
    """Adam's bias corrections at step t, folded into the step size and the sqrt(v) scale."""
    step_size[0] = lr / (1.0 - beta1 ** step)
    inv_bc2_sqrt[0] = 1.0 / sqrt(1.0 - beta2 ** step)


cdef void adam_op(floating *param, const floating *grad, floating *m, floating *v,
                  Py_ssize_t size, long step, double lr, double beta1, double beta2, double eps,
                  double weight_decay) noexcept nogil:
    """The op on raw pointers: param, grad, m, v are (size,). torch.optim.Adam (L2 decay, not
    AdamW), one fused pass: g = grad + wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    cdef Py_ssize_t per, part
    cdef double step_size, inv_bc2_sqrt
    adam_scales(step, lr, beta1, beta2, &step_size, &inv_bc2_sqrt)
    cdef int nt = threads_for(size, PAR_MIN_ELEMS // 4, size)
    if nt == 1:
        adam_range(param, grad, m, v, <floating>step_size, <floating>inv_bc2_sqrt,
                   <floating>beta1, <floating>beta2, <floating>eps, <floating>weight_decay,
                   0, size)
    else:
        per = (size + nt - 1) // nt
        for part in prange(nt, num_threads=nt, schedule="static"):
            adam_range(param, grad, m, v, <floating>step_size, <floating>inv_bc2_sqrt,
                       <floating>beta1, <floating>beta2, <floating>eps, <floating>weight_decay,
                       part * per, min((part + 1) * per, size))


cdef void _adam_step(floating[::1] param, const floating[::1] grad, floating[::1] m,
                     floating[::1] v, long step, double lr, double beta1, double beta2,
                     double eps, double weight_decay) noexcept:
    with nogil:
        adam_op(&param[0], &grad[0], &m[0], &v[0], param.shape[0], step, lr, beta1, beta2, eps,
                weight_decay)


def adam_step(param, grad, m, v, long step, double lr, double beta1, double beta2, double eps,
              double weight_decay):
    if param.itemsize == 4:
        _adam_step[float](param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                          step, lr, beta1, beta2, eps, weight_decay)
    else:
        _adam_step[double](param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                           step, lr, beta1, beta2, eps, weight_decay)




# ====================================================================================== train_steps
#
# Many training steps in one call, none of them leaving C: kernels/_steps.py's step (gather,
# forward, loss, backward, update) on the same kernels as the per-op path, so the two agree
# bit for bit. The def function takes every pointer out of the Python lists once, with the
# GIL; the loop over steps then runs without it and allocates nothing: the batch, the
# activations, the gradients and the products' scratch are carved once per call from the
# module's scratch buffer. Each op keeps its own threading (a prange inside the kernel, only
# when the work pays for waking threads), so a batch of one runs on one thread.
#
# One fusion: a weight's gradient is never stored. dW = x^T g is computed a chunk of rows at
# a time and the optimizer's step applied to that chunk of w while it is still in L1 (at
# batch 1 writing dW1 and reading it back cost more than computing it). The update moves
# into the backward pass, after dx (which needs the old w), which changes no value: every
# update is elementwise on its own arrays. Each chunk of the input layer's x^T g skips the
# samples whose SKIP_MR values of x are all zero (chunk_product): half of an image's pixels
# are background, and at batch 128 that cut the first layer's gradient and update from 150
# to 124 us a step; its forward pass skips likewise (forward_skip). Both skip in groups of 4
# (SKIP_MR, half the dense kernel's 8 rows) with their lists built 16 entries at a time
# (microkernel.h): against groups of 8 and scalar lists, the whole step ran 1.10x as fast
# at batch 128, 1.06x at 32 and 1.10x at 512 (the two builds in alternating turns, 40
# rounds, medians). The batch's gather, the step's one memory-bound pass (its rows come from
# anywhere in x), is split between the threads.
#
# At a batch of one, a second: the update of step k moves on into step k + 1's forward pass,
# the first thing that reads the new weights, and the two run as one sweep over each layer's
# weights and state (sweep_layer; the last step's updates are swept at the end of the call).
# A step then reads and writes the weights once instead of reading them three times (forward,
# dx, update) and writing them once; the first layer's sweep, the step's largest memory
# traffic, is split by rows between the cores, each keeping its half in its own L2 from one
# step to the next. dx = g w^T becomes four dot products at a time (sweep_backward), where a
# product of one row packed w^T first. Measured, 784-128-64-10 float32 SGD, 2 threads: 19 us
# a step before, 7.8 us after (5.3 of them the first layer's sweep). The sums run in another
# order than the micro-kernel's, so this path matches the per-op one to rounding, not to the
# bit (tests/test_cython_internals.py checks both).



cdef inline void update_range(const Update *u, floating *param, const floating *grad,
                              floating *s1, floating *s2, Py_ssize_t i0,
                              Py_ssize_t i1) noexcept nogil:
    """u's step on param[i0:i1]; s1 the velocity (or NULL) or Adam's m, s2 Adam's v."""
    if u.adam:
        adam_range(param, grad, s1, s2, <floating>u.step_size, <floating>u.inv_bc2_sqrt,
                   <floating>u.beta1, <floating>u.beta2, <floating>u.eps,
                   <floating>u.weight_decay, i0, i1)
    else:
        sgd_range(param, grad, s1, <floating>u.lr, <floating>u.momentum,
                  <floating>u.weight_decay, i0, i1)


cdef inline void update_op(const Update *u, floating *param, const floating *grad,
                           floating *s1, floating *s2, Py_ssize_t size) noexcept nogil:
    """u's step on a whole parameter: sgd_step's or adam_step's op, threads included."""
    if u.adam:
        adam_op(param, grad, s1, s2, size, u.t, u.lr, u.beta1, u.beta2, u.eps, u.weight_decay)
    else:
        sgd_op(param, grad, s1, size, u.lr, u.momentum, u.weight_decay)


cdef inline Py_ssize_t chunk_rows(Py_ssize_t n_out, size_t itemsize) noexcept nogil:
    """Rows of dW per chunk: about UPDATE_CHUNK_BYTES, a multiple of MR."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    cdef Py_ssize_t rows = UPDATE_CHUNK_BYTES // (n_out * itemsize) // MR * MR
    return rows if rows > MR else MR


cdef inline Py_ssize_t int_lines(Py_ssize_t count, size_t itemsize) noexcept nogil:
    """Elements (of itemsize) that hold ``count`` ints, on whole cache lines."""
    return lines((count * sizeof(int) + itemsize - 1) // itemsize, itemsize)


cdef inline Py_ssize_t int_stride(Py_ssize_t count, size_t itemsize) noexcept nogil:
    """The same room counted in ints: from one such block of ints to the next."""
    return int_lines(count, itemsize) * itemsize // sizeof(int)


cdef inline Py_ssize_t chunk_scratch(Py_ssize_t batch, Py_ssize_t n_out,
                                     size_t itemsize) noexcept nogil:
    """One thread's scratch in weight_grad_update: its chunk of dW, gemm_small's scratch,
    then chunk_product's lists (skip_list_room)."""
    return (lines(chunk_rows(n_out, itemsize) * n_out, itemsize)
            + gemm_scratch(chunk_rows(n_out, itemsize), n_out, batch, False, 1, itemsize)
            + int_lines(skip_list_room(batch), itemsize))


cdef inline Py_ssize_t skip_list_room(Py_ssize_t k) noexcept nogil:
    """Ints that skip_strips needs for a strip's list of up to k steps: the list, and for
    x^T g the samples' nonzero masks (skip_masks_f32)."""
    return 2 * k


cdef inline Py_ssize_t skip_mr(size_t itemsize) noexcept nogil:
    return SKIP_MR_F32 if itemsize == 4 else SKIP_MR_F64


cdef inline Py_ssize_t skip_nr(size_t itemsize) noexcept nogil:
    return SKIP_NR_F32 if itemsize == 4 else SKIP_NR_F64


cdef inline Py_ssize_t skip_rows(Py_ssize_t m, size_t itemsize) noexcept nogil:
    """The rows of C that the skip kernels compute: the dense kernel's full MR-row strips
    (the rows under them are the dense path's, see microkernel.h)."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    return m // MR * MR


cdef void skip_strips(const floating *x, Py_ssize_t ldx, const floating *b, Py_ssize_t ldb,
                      floating *c, Py_ssize_t ldc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s0,
                      Py_ssize_t s1, int *idx) noexcept nogil:
    """Row strips s0:s1 (of SKIP_MR rows) of C = x^T B (x (k, ldx) read in place from its
    first column, as A), B read in place: their full SKIP_MR x SKIP_NR tiles only, each over
    the samples p at which its SKIP_MR columns of x are not all zero (microkernel.h's
    UKR_SKIP: the same sums, in the same order, without their zero terms). idx: room for
    skip_list_room(k) ints. skip_edges does the rest of C."""
    cdef Py_ssize_t MR = skip_mr(sizeof(floating)), NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t st, u, nk, group = 32 // MR, first = s0
    cdef const floating *at
    cdef unsigned *masks = <unsigned *>(idx + k)
    for st in range(s0, s1):
        at = x + st * MR
        if floating is float:   # the samples' masks, once for every `group` strips of x
            if (st - s0) % group == 0:
                first = st
                skip_masks_f32(at, ldx, k, min(group, s1 - st) * MR, masks)
            nk = skip_samples_f32(masks, k, ((<unsigned>1 << MR) - 1) << ((st - first) * MR),
                                  idx)
        else:
            nk = ukr_double_skip_rows(at, ldx, k, idx)
        for u in range(n // NR):
            if floating is float:
                ukr_float_skip(nk, idx, at, 1, ldx, b + u * NR, ldb, c + st * MR * ldc + u * NR,
                               ldc, NULL, False)
            else:
                ukr_double_skip(nk, idx, at, 1, ldx, b + u * NR, ldb, c + st * MR * ldc + u * NR,
                                ldc, NULL, False)


cdef void forward_strips(const floating *x, Py_ssize_t ldx, const int *perm,
                         const floating *w, Py_ssize_t ldw, floating *h, Py_ssize_t ldh,
                         Py_ssize_t n, Py_ssize_t k, const floating *bias, int act,
                         Py_ssize_t s0, Py_ssize_t s1, int *idx) noexcept nogil:
    """Row strips s0:s1 of h = x @ w (+ bias, activated by act), w read in place: strip st
    is rows perm[st * SKIP_MR:(st + 1) * SKIP_MR] of x and of h, and of it the full SKIP_MR x
    SKIP_NR tiles only, each over the columns at which those rows of x are not all zero
    (UKR_SKIP's scattered tile). idx: room for k ints. skip_edges does the rest of h."""
    cdef Py_ssize_t MR = skip_mr(sizeof(floating)), NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t st, u, i, nk
    cdef const floating *arow[SKIP_MR_MAX]
    cdef floating *crow[SKIP_MR_MAX]
    for st in range(s0, s1):
        for i in range(MR):
            arow[i] = x + perm[st * MR + i] * ldx
        if floating is float:
            nk = skip_cols_f32(arow, k, idx)
        else:
            nk = ukr_double_skip_cols(arow, k, idx)
        for u in range(n // NR):
            for i in range(MR):
                crow[i] = h + perm[st * MR + i] * ldh + u * NR
            if floating is float:
                ukr_float_skip_scattered(nk, idx, arow, w + u * NR, ldw, crow,
                                         bias + u * NR if bias != NULL else NULL, act)
            else:
                ukr_double_skip_scattered(nk, idx, arow, w + u * NR, ldw, crow,
                                          bias + u * NR if bias != NULL else NULL, act)


cdef void rows_by_label(const int64_t *labels, Py_ssize_t rows, Py_ssize_t classes, int *perm,
                        int *counts) noexcept nogil:
    """perm[0:rows] = the rows 0..rows-1 in order of their labels, stably (a counting sort,
    counts: classes + 1 ints; a label outside [0, classes) sorts last)."""
    cdef Py_ssize_t r, c, at = 0, t
    for c in range(classes + 1):
        counts[c] = 0
    for r in range(rows):
        counts[label_bucket(labels[r], classes)] += 1
    for c in range(classes + 1):
        t = counts[c]
        counts[c] = at
        at += t
    for r in range(rows):
        c = label_bucket(labels[r], classes)
        perm[counts[c]] = <int>r
        counts[c] += 1


cdef inline Py_ssize_t label_bucket(int64_t label, Py_ssize_t classes) noexcept nogil:
    return label if 0 <= label < classes else classes


cdef void skip_edges(const floating *a, Py_ssize_t lda, bint trans_a, const floating *b,
                     Py_ssize_t ldb, floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n,
                     Py_ssize_t k, const floating *bias, int act, floating *ws,
                     int nthreads) noexcept nogil:
    """What skip_strips leaves of C = op(A) B: the last columns (under a SKIP_NR tile) and
    the rows under the dense kernel's last full strip, gemm_direct's as in the whole
    product."""
    cdef Py_ssize_t NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t full_rows = skip_rows(m, sizeof(floating)), full_cols = n // NR * NR
    if full_cols < n:
        gemm_direct(a, lda, trans_a, b + full_cols, ldb, False, c + full_cols, ldc, m,
                    n - full_cols, k, bias + full_cols if bias != NULL else NULL, act, ws,
                    nthreads)
    if full_rows < m:
        gemm_direct(a + full_rows * (1 if trans_a else lda), lda, trans_a, b, ldb, False,
                    c + full_rows * ldc, ldc, m - full_rows, full_cols, k, bias, act, ws,
                    nthreads)


cdef void chunk_product(const floating *x, Py_ssize_t n_in, const floating *g,
                        Py_ssize_t n_out, floating *c, Py_ssize_t rows, Py_ssize_t batch,
                        floating *ws, int *idx, bint skip) noexcept nogil:
    """c (rows, n_out) = x[:, :rows]^T g: x (batch, n_in) from a chunk's first column, g
    (batch, n_out). gemm_small's product, except that with ``skip`` each full SKIP_MR x
    SKIP_NR tile leaves out the samples whose SKIP_MR values of x are all zero (UKR_SKIP in
    microkernel.h: the same sums, in the same order, without their zero terms). A
    Fashion-MNIST image is half background, exact zeros: at batch 128, 38% of the (sample,
    4 pixels) steps of the first layer's x^T g are zero. The hidden layers' ReLU zeros
    seldom fill a sample's group of columns, and there the lists cost more than they skip
    (64 -> 128: 15 -> 17.5 us a step, with 8-wide groups), so the loop asks for it on the
    input only. The last rows and columns (under a tile) are gemm_direct's, as in the whole
    product."""
    cdef Py_ssize_t MR = MR_F32 if floating is float else MR_F64
    if (not skip or is_narrow(n_out, sizeof(floating)) or rows < MR
            or n_out < skip_nr(sizeof(floating))):
        gemm_small(x, n_in, True, g, n_out, False, c, n_out, rows, n_out, batch, NULL, False,
                   ws, 1)
        return
    skip_strips(x, n_in, g, n_out, c, n_out, n_out, batch, 0,
                skip_rows(rows, sizeof(floating)) // skip_mr(sizeof(floating)), idx)
    skip_edges(x, n_in, True, g, n_out, c, n_out, rows, n_out, batch, NULL, False, ws, 1)


cdef inline void grad_update_chunk(const floating *x, const floating *g, floating *w,
                                   floating *s1, floating *s2, const Update *u,
                                   Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                                   Py_ssize_t c, floating *ws, bint skip) noexcept nogil:
    """Rows r0:r1 of dW = x^T g into ws (A = x^T read in place from column r0; chunk_product,
    skipping zeros of x when ``skip``), then u's step on the same rows of w."""
    cdef Py_ssize_t rows = chunk_rows(n_out, sizeof(floating))
    cdef Py_ssize_t r0 = c * rows, r1 = r0 + rows if r0 + rows < n_in else n_in
    cdef Py_ssize_t at = r0 * n_out, i, j
    cdef floating xi
    if batch == 1:
        # dW is the outer product x g: row by row, each row updated while in L1. A tile at
        # kc = 1 did 16 FMAs for a call's and a tile's bookkeeping; and its fma(x_i, g_j, 0)
        # is the product x_i * g_j rounded once, as here. (The row goes through ws so that
        # the compiler cannot contract the product into the update's arithmetic.)
        for i in range(r0, r1):
            xi = x[i]
            for j in range(n_out):
                ws[j] = xi * g[j]
            update_range(u, w + i * n_out, ws, s1 + i * n_out if s1 != NULL else NULL,
                         s2 + i * n_out if s2 != NULL else NULL, 0, n_out)
        return
    cdef floating *gws = ws + lines(rows * n_out, sizeof(floating))
    chunk_product(x + r0, n_in, g, n_out, ws, r1 - r0, batch, gws,
                  <int *>(gws + gemm_scratch(rows, n_out, batch, False, 1, sizeof(floating))),
                  skip)
    update_range(u, w + at, ws, s1 + at if s1 != NULL else NULL,
                 s2 + at if s2 != NULL else NULL, 0, (r1 - r0) * n_out)


cdef void weight_grad_update(const floating *x, const floating *g, floating *w, floating *s1,
                             floating *s2, const Update *u, Py_ssize_t batch, Py_ssize_t n_in,
                             Py_ssize_t n_out, floating *ws, int nthreads,
                             bint skip) noexcept nogil:
    """dW = x^T g (x (B, in), g (B, out)) and u's step on w (in, out), a chunk of rows at a
    time, each thread with its own chunk_scratch in ws. Chunks start on multiples of MR, so
    every tile is the one the whole product computes: the same values, bit for bit (``skip``:
    zeros of x skipped, see chunk_product). For the small-size path only (g, the product's
    B, is read in place)."""
    cdef Py_ssize_t rows = chunk_rows(n_out, sizeof(floating)), c
    cdef Py_ssize_t n_chunks = (n_in + rows - 1) // rows
    cdef Py_ssize_t per_thread = chunk_scratch(batch, n_out, sizeof(floating))
    cdef int nt = threads_for(2.0 * n_in * n_out * batch, PAR_MIN_FLOPS,
                              n_chunks if n_chunks < nthreads else nthreads)
    if nt == 1:
        for c in range(n_chunks):
            grad_update_chunk(x, g, w, s1, s2, u, batch, n_in, n_out, c, ws, skip)
    else:
        for c in prange(n_chunks, num_threads=nt, schedule="static"):
            grad_update_chunk(x, g, w, s1, s2, u, batch, n_in, n_out, c,
                              ws + threadid() * per_thread, skip)


cdef inline int sweep_parts(Py_ssize_t n_in, Py_ssize_t n_out, int nthreads) noexcept nogil:
    """Threads that share sweep_layer: each needs a block of rows worth the wake-up."""
    if n_in * n_out < SWEEP_PAR_MIN or nthreads < 2:
        return 1
    return nthreads if nthreads < n_in else <int>n_in


cdef void sweep_layer(const Update *u, const floating *xp, const floating *g, floating *w,
                      floating *s1, floating *s2, const floating *xn, const floating *b,
                      floating *h, int act, Py_ssize_t n_in, Py_ssize_t n_out,
                      int parts, floating *partial) noexcept nogil:
    """sweep.h's one pass over a layer's w (n_in, n_out) at a batch of one: u's step with the
    gradient xp^T g when xp is not NULL, then h = xn @ w + b (activated by act) when xn is
    not NULL. ``parts`` threads take a contiguous block of rows each and write their partial
    sum of the product into ``partial`` (parts rows of lines(n_out)); h is their sum, plus b."""
    cdef Py_ssize_t per = (n_in + parts - 1) // parts, stride = lines(n_out, sizeof(floating))
    cdef Py_ssize_t part, j
    cdef floating s
    if parts == 1:
        sweep_rows(u, xp, g, w, s1, s2, xn, partial, n_out, 0, n_in)
    else:
        for part in prange(parts, num_threads=parts, schedule="static"):
            sweep_rows(u, xp, g, w, s1, s2, xn, partial + part * stride, n_out,
                       part * per, min((part + 1) * per, n_in))
    if xn == NULL:
        return
    for j in range(n_out):
        s = partial[j]
        for part in range(1, parts):
            s = s + partial[part * stride + j]
        s = s + b[j]
        if act == ACT_RELU:
            s = s if s > 0 else 0
        elif act == ACT_TANH:
            s = tanh_scalar(s)
        h[j] = s


cdef inline void sweep_rows(const Update *u, const floating *xp, const floating *g,
                            floating *w, floating *s1, floating *s2, const floating *xn,
                            floating *h, Py_ssize_t n_out, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil:
    if floating is float:
        sweep_f32_rows(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1)
    else:
        sweep_f64_rows(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1)


cdef inline void sweep_backward(const floating *w, const floating *g, floating *out,
                                Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """out = g w^T for one row g (n_out,): sweep.h's, four dot products at a time."""
    if floating is float:
        sweep_f32_backward(w, g, out, n_in, n_out)
    else:
        sweep_f64_backward(w, g, out, n_in, n_out)


cdef void gather_rows(const floating *x, Py_ssize_t n_in, const int64_t *rows_of,
                      Py_ssize_t r0, Py_ssize_t r1, floating *out) noexcept nogil:
    """Rows r0:r1 of the batch: out[r] = x[rows_of[r]], a row copy each."""
    cdef Py_ssize_t r
    for r in range(r0, r1):
        memcpy(out + r * n_in, x + rows_of[r] * n_in, n_in * sizeof(floating))


cdef void gather(const floating *x, Py_ssize_t n_in, const int64_t *rows_of, Py_ssize_t rows,
                 floating *out, int nthreads) noexcept nogil:
    """out (rows, n_in) = x[rows_of[:rows]], split between threads from GATHER_PAR_MIN_BYTES
    each. The rows come from anywhere in x, mostly from DRAM, and one core's copy waits on
    one row's misses after another: at batch 128 a step's gather took 65 us on one thread
    (6 GB/s) and 40 us on two, which have twice the misses in flight."""
    cdef int parts = threads_for(<double>rows * n_in * sizeof(floating), GATHER_PAR_MIN_BYTES,
                                 min(rows, nthreads))
    cdef Py_ssize_t per = (rows + parts - 1) // parts, part
    if parts == 1:
        gather_rows(x, n_in, rows_of, 0, rows, out)
    else:
        for part in prange(parts, num_threads=parts, schedule="static"):
            gather_rows(x, n_in, rows_of, part * per, min((part + 1) * per, rows), out)


cdef void forward_skip(const floating *x, Py_ssize_t m, Py_ssize_t k, const floating *w,
                       Py_ssize_t n, const floating *bias, int act, floating *h,
                       const int64_t *labels, Py_ssize_t classes, floating *ws,
                       int nthreads) noexcept nogil:
    """h (m, n) = x (m, k) @ w (k, n) + bias (activated by act), for the input layer's
    forward pass: gemm_direct's product (w read in place), except that each full SKIP_MR x
    SKIP_NR tile runs over the columns in which its SKIP_MR rows of x are not all zero only
    (forward_strips): the same sums without their zero terms. A strip's rows are samples of
    one label where it can (rows_by_label): images of a class share their background, and of
    a batch of 128 Fashion-MNIST images, 21% of the pixels are zero in all of a strip's 4
    samples taken in the batch's order, 31% taken by label, and the whole step ran 1.04x as
    fast at batch 128 (alternating turns against the batch's order). Threads take a run of
    strips each, with its list (taking every other strip instead, so that each thread has a
    share of every class, measured slower). ws: gemm_scratch's elements for the product,
    then nthreads lists (skip_list_room(k) ints each), the order of the rows and the sort's
    counts (forward_scratch)."""
    cdef Py_ssize_t MR = skip_mr(sizeof(floating)), NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t full = skip_rows(m, sizeof(floating)), strips = full // MR, per, part
    cdef int *lists = <int *>(ws + gemm_scratch(m, n, k, False, nthreads, sizeof(floating)))
    cdef Py_ssize_t stride = int_stride(skip_list_room(k), sizeof(floating))
    cdef int *perm = lists + nthreads * stride
    rows_by_label(labels, full, classes, perm, perm + int_stride(m, sizeof(floating)))
    cdef int parts = threads_for(2.0 * full * (n // NR * NR) * k, PAR_MIN_FLOPS,
                                 min(strips, nthreads))
    if parts == 1:
        forward_strips(x, k, perm, w, n, h, n, n, k, bias, act, 0, strips, lists)
    elif parts > 1:
        per = (strips + parts - 1) // parts
        for part in prange(parts, num_threads=parts, schedule="static"):
            forward_strips(x, k, perm, w, n, h, n, n, k, bias, act, part * per,
                           min((part + 1) * per, strips), lists + threadid() * stride)
    skip_edges(x, k, False, w, n, h, n, m, n, k, bias, act, ws, nthreads)


cdef inline Py_ssize_t forward_scratch(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                       Py_ssize_t classes, int nthreads,
                                       size_t itemsize) noexcept nogil:
    """Elements of scratch forward_skip needs."""
    return (gemm_scratch(m, n, k, False, nthreads, itemsize)
            + nthreads * int_lines(skip_list_room(k), itemsize)
            + int_lines(m, itemsize) + int_lines(classes + 1, itemsize))


cdef inline bint skips_forward(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                               size_t itemsize) noexcept nogil:
    """_train_steps's choice for the input layer's forward pass: forward_skip while the
    product takes the small-size path and has full tiles."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    return is_small(n_out, n_in, itemsize) and rows >= MR and n_out >= skip_nr(itemsize)


cdef Py_ssize_t step_scratch(const Py_ssize_t *n, Py_ssize_t n_layers, Py_ssize_t rows,
                             int nthreads, size_t itemsize) noexcept nogil:
    """Elements of scratch one step of ``rows`` rows needs for its products (the most any
    one needs: they run one after another)."""
    cdef Py_ssize_t i, size = 0
    for i in range(n_layers):
        size = max(size, gemm_scratch(rows, n[i + 1], n[i], False, nthreads, itemsize),
                   linear_backward_scratch(rows, n[i], n[i + 1], nthreads, itemsize),
                   nthreads * chunk_scratch(rows, n[i + 1], itemsize))
    return max(size, forward_scratch(rows, n[1], n[0], n[n_layers], nthreads, itemsize))


cdef inline bint is_aligned(const void *ptr) noexcept nogil:
    """NULL, or a start on a 64-byte line."""
    return <size_t>ptr % 64 == 0


cdef inline Py_ssize_t param_size(const Py_ssize_t *n, Py_ssize_t j) noexcept nogil:
    """Elements of parameter j of [w1, b1, w2, ...]: w_i is (n[i-1], n[i]), b_i (n[i],)."""
    return n[j // 2] * n[j // 2 + 1] if j % 2 == 0 else n[j // 2 + 1]


cdef void _train_steps(list params, const floating[:, ::1] x, const int64_t[::1] labels,
                       const int64_t[::1] order, Py_ssize_t batch, floating[::1] losses,
                       opt, hidden) except *:
    # params [w1, b1, ..., wL, bL] (w_i (n_{i-1}, n_i), b_i (n_i,)), x (N, n_0), labels (N,),
    # order (S,) rows of x, losses (ceil(S / batch),); opt: kernels._steps.Optimizer; hidden:
    # kernels._steps.Hidden (the hidden layers' activation code, and dropout's rate and seed).
    cdef Py_ssize_t L = len(params) // 2, n_params = len(params)
    cdef Py_ssize_t total = order.shape[0], n_steps = losses.shape[0]
    cdef Py_ssize_t i, j, k, q, r, r0, rows, size, used
    cdef size_t f = sizeof(floating)
    cdef int nt = _threads              # read once: the scratch is sized for it
    cdef Update u
    u.adam = opt.kind == "adam"
    u.lr, u.momentum, u.weight_decay = opt.lr, opt.momentum, opt.weight_decay
    u.beta1, u.beta2, u.eps = opt.beta1, opt.beta2, opt.eps
    cdef long step0 = opt.step, t
    cdef int activation = hidden.act
    cdef bint drop = hidden.p > 0
    cdef uint64_t seed = hidden.seed
    cdef uint32_t threshold = hidden.threshold
    cdef double keep_scale = hidden.scale
    cdef Scratch ws
    ws.data = NULL
    ws.nbytes = 0
    # Tables, per layer i: n[i] the widths; act[i] the activations (act[0] the gathered
    # batch, act[L] the logits), gact[i] their gradients; with dropout, pre[i] a hidden
    # layer's output before it (y_i of kernels/_steps.py; act[i] is then d_i). Per parameter j (w1, b1, w2, ...):
    # p[j] itself, s1[j] and s2[j] its optimizer state (velocity or NULL; Adam's m and v),
    # grad[j] its gradient (for the biases, and weights too large for the chunked update).
    # p, s1 and s2 are one table of 3 * n_params arrays updated in place, which the loop uses
    # where they are when 64-byte aligned and otherwise as aligned copies in the scratch,
    # copied back at the end: NumPy's large arrays start 16 bytes past a line, and then
    # every vector load and store of a row spans two lines (a batch of 1 ran 30% slower).
    cdef Py_ssize_t *n = <Py_ssize_t *>PyMem_Malloc((L + 1) * sizeof(Py_ssize_t))
    cdef floating **tables = <floating **>PyMem_Malloc((7 * n_params + 4 * (L + 1))
                                                       * sizeof(floating *))
    if n == NULL or tables == NULL:
        PyMem_Free(n)
        PyMem_Free(tables)
        raise MemoryError()
    cdef floating **home = tables                   # the caller's arrays: p, s1, s2
    cdef floating **p = tables + 3 * n_params       # what the loop updates: p, s1, s2
    cdef floating **s1 = p + n_params
    cdef floating **s2 = p + 2 * n_params
    cdef floating **grad = tables + 6 * n_params
    cdef floating **act = tables + 7 * n_params
    cdef floating **gact = act + L + 1
    cdef floating **before = gact + L + 1          # at batch 1: the last step's activations
    cdef floating **pre = before + L + 1
    cdef floating **swap
    cdef int64_t *yb
    cdef floating *work
    cdef floating *g
    # At batch 1 each layer's weights are swept once a step (sweep_layer): the update of
    # step k waits for step k + 1's forward pass, the first thing that reads the new weights,
    # and needs step k's activations (``before``, swapped with ``act`` every step) and
    # gradients; partial: the threads' partial products. (Not with dropout, whose pass
    # between a layer's output and the next layer's input the sweep has no place for.)
    cdef bint one = batch == 1 and not drop, pending = False
    cdef Update u_pending = u
    cdef floating *partial = NULL
    cdef Py_ssize_t n_partial = 0
    try:
        n[0] = x.shape[1]
        for i in range(L):
            n[i + 1] = params[2 * i].shape[1]
        for j in range(n_params):
            home[j] = _ptr1[floating](params[j].reshape(-1))
            home[n_params + j] = home[2 * n_params + j] = NULL
            if u.adam:
                home[n_params + j] = _ptr1[floating](opt.state[0][j].reshape(-1))
                home[2 * n_params + j] = _ptr1[floating](opt.state[1][j].reshape(-1))
            elif opt.state is not None:
                home[n_params + j] = _ptr1[floating](opt.state[j].reshape(-1))

        # Scratch, in elements, every piece on whole cache lines: the batch's labels, the
        # activations and their gradients, the parameters' gradients, the aligned copies,
        # then the products' scratch.
        used = lines((batch * sizeof(int64_t) + f - 1) // f, f)
        for i in range(L + 1):
            used += lines(batch * n[i], f) * (2 if i > 0 else 1)
            if drop and 0 < i < L:
                used += lines(batch * n[i], f)
        for j in range(n_params):
            used += lines(param_size(n, j), f)
        for q in range(3 * n_params):
            if not is_aligned(home[q]):
                used += lines(param_size(n, q % n_params), f)
        if one:
            for i in range(L):
                used += lines(n[i], f)
                n_partial = max(n_partial, sweep_parts(n[i], n[i + 1], nt) * lines(n[i + 1], f))
            used += n_partial
        size = max(step_scratch(n, L, batch, nt, f),                              # full batches
                   step_scratch(n, L, total - (n_steps - 1) * batch, nt, f))      # the last
        ws = scratch_take((used + size) * f)
        yb = <int64_t *>ws.data
        used = lines((batch * sizeof(int64_t) + f - 1) // f, f)
        for i in range(L + 1):
            act[i] = <floating *>ws.data + used
            used += lines(batch * n[i], f)
            gact[i] = NULL                  # the input needs no gradient
            if i > 0:
                gact[i] = <floating *>ws.data + used
                used += lines(batch * n[i], f)
            pre[i] = NULL
            if drop and 0 < i < L:
                pre[i] = <floating *>ws.data + used
                used += lines(batch * n[i], f)
        for j in range(n_params):
            grad[j] = <floating *>ws.data + used
            used += lines(param_size(n, j), f)
        for q in range(3 * n_params):
            p[q] = home[q]
            if not is_aligned(home[q]):
                p[q] = <floating *>ws.data + used
                used += lines(param_size(n, q % n_params), f)
                memcpy(p[q], home[q], param_size(n, q % n_params) * f)
        if one:
            for i in range(L):
                before[i] = <floating *>ws.data + used
                used += lines(n[i], f)
            before[L] = act[L]                      # (the logits are not kept)
            partial = <floating *>ws.data + used
            used += n_partial
        work = <floating *>ws.data + used

        with nogil:
            for k in range(n_steps):
                t = step0 + k + 1
                r0 = k * batch
                rows = batch if total - r0 >= batch else total - r0
                if one:
                    swap = act
                    act = before
                    before = swap
                gather(&x[0, 0], n[0], &order[r0], rows, act[0], nt)
                for r in range(rows):
                    yb[r] = labels[order[r0 + r]]
                for i in range(L):                          # forward; act on hidden layers
                    if one:                                 # (with the last step's update)
                        sweep_layer(&u_pending, before[i] if pending else NULL, gact[i + 1],
                                    p[2 * i], s1[2 * i], s2[2 * i], act[i], p[2 * i + 1],
                                    act[i + 1], activation if i < L - 1 else ACT_NONE, n[i],
                                    n[i + 1], sweep_parts(n[i], n[i + 1], nt), partial)
                        continue
                    if i == 0 and skips_forward(rows, n[0], n[1], f):  # (zeros of x skipped)
                        forward_skip(act[0], rows, n[0], p[0], n[1], p[1],
                                     activation if L > 1 else ACT_NONE,
                                     pre[1] if drop and L > 1 else act[1], yb, n[L], work, nt)
                    else:
                        gemm(act[i], n[i], False, p[2 * i], n[i + 1], False,
                             pre[i + 1] if drop and i < L - 1 else act[i + 1], n[i + 1], rows,
                             n[i + 1], n[i], p[2 * i + 1],
                             activation if i < L - 1 else ACT_NONE, work, nt)
                    if drop and i < L - 1:                  # d = dropout(y), the next input
                        dropout_op(pre[i + 1], act[i + 1], rows * n[i + 1],
                                   mask_key(seed, t, i + 1), threshold, keep_scale)
                losses[k] = <floating>softmax_cross_entropy_op(act[L], yb, gact[L], rows, n[L])
                u.t = t
                if u.adam:
                    adam_scales(u.t, u.lr, u.beta1, u.beta2, &u.step_size, &u.inv_bc2_sqrt)
                for i in range(L - 1, -1, -1):              # backward and update, layer by layer
                    # g = grad_y * act'(y) in place (through dropout's mask first), db;
                    # dx = g w^T while w is the old one
                    g = gact[i + 1]
                    if drop and i < L - 1:
                        dropout_op(g, g, rows * n[i + 1], mask_key(seed, t, i + 1), threshold,
                                   keep_scale)
                    mask_and_bias_grad(pre[i + 1] if drop and i < L - 1 else act[i + 1], g, g,
                                       grad[2 * i + 1], rows, n[i + 1],
                                       activation if i < L - 1 else ACT_NONE)
                    if i > 0 and one:
                        sweep_backward(p[2 * i], g, gact[i], n[i], n[i + 1])
                    elif i > 0:
                        gemm(g, n[i + 1], False, p[2 * i], n[i + 1], True, gact[i], n[i],
                             rows, n[i], n[i + 1], NULL, False, work, nt)
                    if one:                                 # w's update: the next sweep's
                        u_pending = u
                        pending = True
                    elif is_small(n[i + 1], rows, f):       # dW = x^T g, chunk by chunk into w
                        weight_grad_update(act[i], g, p[2 * i], s1[2 * i], s2[2 * i], &u, rows,
                                           n[i], n[i + 1], work, nt, i == 0)
                    else:                                   # (too large a product to chunk)
                        gemm(act[i], n[i], True, g, n[i + 1], False, grad[2 * i], n[i + 1],
                             n[i], n[i + 1], rows, NULL, False, work, nt)
                        update_op(&u, p[2 * i], grad[2 * i], s1[2 * i], s2[2 * i],
                                  param_size(n, 2 * i))
                    update_op(&u, p[2 * i + 1], grad[2 * i + 1], s1[2 * i + 1], s2[2 * i + 1],
                              n[i + 1])
            if pending:                                     # the last step's updates
                for i in range(L):
                    sweep_layer(&u_pending, act[i], gact[i + 1], p[2 * i], s1[2 * i],
                                s2[2 * i], NULL, NULL, NULL, False, n[i], n[i + 1],
                                sweep_parts(n[i], n[i + 1], nt), partial)
            for q in range(3 * n_params):                   # the copies back where they live
                if p[q] != home[q]:
                    memcpy(home[q], p[q], param_size(n, q % n_params) * f)
    finally:
        scratch_give(ws)
        PyMem_Free(n)
        PyMem_Free(tables)


def train_steps(list params, x, labels, order, Py_ssize_t batch, losses, opt, hidden):
    """kernels/_steps.py's training step, once per ``batch`` rows of ``order``, in one call.

    Arguments checked by kernels/_front.py: params [w1, b1, ..., wL, bL] and x C-contiguous,
    of one float dtype; labels and order int64; losses (ceil(len(order) / batch),) receives
    each step's loss; opt a kernels._steps.Optimizer (sgd or adam, and its state arrays);
    hidden a kernels._steps.Hidden (activation; dropout rate, seed, threshold and scale).
    """
    if x.itemsize == 4:
        _train_steps[float](params, x, labels, order, batch, losses, opt, hidden)
    else:
        _train_steps[double](params, x, labels, order, batch, losses, opt, hidden)
