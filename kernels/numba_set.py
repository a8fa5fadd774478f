"""The numba set: the ops as hand-optimised Numba kernels, no BLAS anywhere.

Design note
-----------
* One file on purpose. Numba's on-disk cache (``cache=True``) keys a function on its own
  source file only, so a jitted function that calls into another module would keep stale
  machine code when that module changed. Everything jitted that this set runs lives here;
  the ladder's bottom rung is borrowed, uncompiled-into-anything, from ``numba_naive``.
* matmul is BLIS in the shape of bluss's matrixmultiply: five labelled loops around an
  MR x NR register-blocked micro-kernel, one packing function per operand that absorbs
  trans_a / trans_b (no transposed copies), edges through one masked path (the micro-kernel
  always computes a full MR x NR tile into a small buffer; the epilogue writes the valid part).
* One table of constants per instruction-set path (``TILES``: avx512, avx2, neon, generic;
  BLIS's config/<arch>): the vector width, the MR x NR register tile and the cache blocks. The
  path is the one Numba compiles for (``kernels._isa.configure_numba``: the host's best, or
  KERNELS_ISA's, which sets NUMBA_CPU_NAME and NUMBA_CPU_FEATURES before anything compiles, or
  the user's own NUMBA_CPU_FEATURES), read once at import; ``isa()`` returns it. The constants
  are compiled in, and Numba's cache keys each entry on the target's CPU name and features, from
  which the path follows, so cached code never meets another path's tile.
* The micro-kernel is an ``@intrinsic`` that emits LLVM IR with explicit vectors: MR x NR/W
  accumulators (W lanes: one vector register of the path) held in SSA values across the k
  loop, one broadcast of A per row and one ``llvm.fmuladd`` per accumulator: on avx512 24
  ``vfmadd231ps`` on zmm registers per k step, on avx2 12 on ymm, on generic (SSE2, no FMA) 8
  mulps + addps on xmm; no spills in the loop (tests/test_numba_internals.py checks the asm).
  Written as plain Python loops the same kernel is fully unrolled by LLVM before its loop
  vectoriser runs, and Numba leaves the SLP vectoriser off, so the unrolled code stays scalar
  (5 GFLOP/s measured); the intrinsic runs at the FMA units' peak (113 GFLOP/s per core,
  float32, Zen 4). A half-width variant (half the vector registers per row) takes narrow edge
  panels (n % NR <= that width, n = 10 logits on avx512).
* The epilogue (bias, ReLU or tanh, accumulate-into-C across k blocks) is applied while the tile is
  in L1, so linear's bias and ReLU cost no second pass over the output.
* Packing and the epilogue index flat arrays with unsigned indices (``U``): Numba's
  negative-index fix-up on signed indices, and the reference counting of per-row views, each
  kept those loops scalar and slow (the whole matmul ran at a quarter of the kernel's speed).
* Small problems skip packing where it pays: the micro-kernel takes strides, so it reads a
  transposed A (contiguous along i, as a packed panel is) and a non-transposed B in place;
  only an edge micro-panel (which the full-width kernel would read past) is packed, zero
  padded. Past PACK_MIN_FMAS, or with A not transposed (12 rows k apart), it packs.
* Skinny products skip the tiles: with a few rows (a batch of one sample) or a short k (the
  outer product of its weight gradient) the MR x NR tile would be mostly padding, and
  ``_gemm_rows`` computes one row of C at a time with loops LLVM vectorises.
* Threads split the output into row (or column) ranges, one task per thread, each running the
  five loops on its own range with its own packing buffers (``prange`` over tasks, the one
  parallel loop of the matmul, in ``_gemm`` itself). Problems under PARALLEL_MIN_FMAS run on
  one thread: the OpenMP fork/join costs more than it saves. The thread count is passed down
  from Python (``_threads``): Numba's get_num_threads inside jitted code defeats ``cache=True``.
* Compile time: Numba links each jitted callee's LLVM module into its caller and optimises
  and code-generates it again there, so the matmul was compiled once per jitted function on
  the way from ``_train_steps`` down to ``_gemm_range``. The task loop therefore sits in
  ``_gemm`` itself, not in a parallel function of its own (``_gemm_threads`` is the ladder's
  rung only): one unit and one parfor fewer, 2.5-6 s of a cold start on 2 cores (see _gemm).
* Directives: ``@njit(cache=True)`` everywhere; ``fastmath=True`` on the matmul, the
  elementwise ops and the optimizers (reassociation and contraction are harmless there);
  softmax-cross-entropy keeps IEEE semantics (``nnan``/``ninf`` would break its +-inf logic)
  and allows contraction, and reassociation in its row sums. Its float32 exp is Cephes' expf
  written as arithmetic (``_exp_shifted``, as cython's vecmath.h): libm's expf is a call,
  which keeps a loop scalar, and Numba has no vector math library of its own to call; its
  loss takes one log per run of rows (the log of a product of the rows' sums).
  ``error_model="numpy"`` where a kernel divides: Python's zero-division check otherwise
  blocks vectorisation (Adam ran scalar). ``parallel=True``
  only where it pays: the matmul's task loop, softmax over rows and the elementwise ops, each
  taken only above a size threshold.
* Specialisations: one per dtype (train_steps: per dtype and layer count, its layers held in
  homogeneous tuples). Jitted entry points take only C-contiguous arrays, tuples of them, Python
  bools and floats; constants are never passed as literals between jitted functions (a
  literal False compiles a second copy of the callee): they go through ``_runtime``. Thin
  Python wrappers exist only where the protocol passes None (linear_backward's grad_x, sgd's
  velocity) or lists (train_steps), and for the thread count and scratch memory.
* No allocation per call: packing buffers and other scratch come from arrays that persist
  between calls and only grow (``_scratch_for``), passed down by the Python wrappers. They are
  per Python thread: Numba releases the GIL in its parallel regions, so calls from several
  threads overlap, each with its own buffers, and each gets its single-threaded answer.
* train_steps is kernels/_steps.py's per_op compiled: one jitted loop over the steps calls the
  kernels above directly, with no Python between ops and no allocation inside the loop.
* Kernels receive checked, C-contiguous arrays (kernels/_front.py); no bounds checks. Loss,
  softmax row sums and bias gradients accumulate in float64.
"""

import math
import threading
from collections import OrderedDict

from . import _isa

# The path Numba compiles for, settled before anything compiles: a forced KERNELS_ISA sets
# NUMBA_CPU_NAME / NUMBA_CPU_FEATURES (see kernels._isa.configure_numba).
_ISA_PATH = _isa.configure_numba()

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import get_num_threads, njit, prange, set_num_threads, types  # noqa: E402
from numba.core import cgutils, errors  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

from . import numba_naive  # noqa: E402
from ._layers import ACT_NONE, ACT_RELU, ACT_TANH  # noqa: E402

THREADS_KEY = "numba"
CHECKS_LABELS = True   # softmax_cross_entropy checks the label range itself (-1 if one is out)


def set_threads(n):
    set_num_threads(n)
    _threads[0] = n


# ---------------------------------------------------------------- matmul: blocking, per ISA path
#
# One entry per instruction-set path (kernels._isa; BLIS's config/<arch>): the vector width,
# the register tile and the cache blocks. PATH is the path Numba compiles for in this process
# (the host's best, KERNELS_ISA's, or the user's NUMBA_CPU_FEATURES'), read once at import; the
# constants below are baked into the machine code as it compiles. Numba's on-disk cache keys
# every entry on the target's CPU name and features, and PATH is a function of those features,
# so a cached entry is always used with the tile it was compiled for.
#
#   vector   bytes in one vector register: the micro-kernel's accumulators are that wide
#   MR x NR  register tile: MR rows x NR columns (NR / lanes vector registers per row), so
#            MR * NR / lanes accumulators, NR / lanes registers of B and one broadcast of A
#            live across the k loop; all within the register file, no spills (inspect_asm).
#            The FMA latency (4-5) times the FMA ports (2) needs >= 8-10 accumulators.
#   KC       depth of a k block. Each k block reads and writes all of C once more, so KC is as
#            deep as the caches allow: the A micro-panel (MR * KC * itemsize) is streamed, the
#            B micro-panel (KC * NR * itemsize) is reused by every A micro-panel from L1/L2.
#   MC       rows of the packed A block, kept in L2 beside the B micro-panel. MC % MR == 0.
#   NC       columns of the packed B panel, kept in L3 (KC * NC * itemsize per thread).
#
# avx512: 32 zmm of 64 bytes. 12 rows x 2 zmm (32 float32 / 16 float64 columns) = 24
#   accumulators + 2 of B + 1 broadcast (folded into the FMA's memory operand) = 27 of 32.
#   Tuned on AMD EPYC Zen 4 (L1d 32 KiB, L2 1 MiB, L3 32 MiB; one 512-bit FMA a cycle, latency
#   4). Measured per core, float32: 12x32 111, 6x64 113, 8x32 85, 16x16 77 GFLOP/s. KC, single
#   thread, float32 2048^3: 128 79, 256 90, 512 102 GF/s; float64 128 38, 512 49 GF/s (the C
#   passes cost more than an L1-resident B micro-panel saves). MC: 384 * 512 * 4 = 768 KiB of
#   the 1 MiB L2 (float64 192 * 512 * 8 likewise); NC: 512 * 4096 * 4 = 8 MiB of L3 per thread.
# avx2: 16 ymm of 32 bytes. 6 rows x 2 ymm (16 float32 / 8 float64 columns) = 12 accumulators
#   + 2 of B + 1 broadcast = 15 of 16: BLIS's haswell sgemm tile (6 x 16). Two FMA ports of
#   latency 4-5 need 8-10 in flight; 12 do. Measured on the AVX-512 Xeon here with the path
#   forced (KERNELS_ISA=avx2), float32 2048^3 on one thread, x OpenBLAS's Haswell kernel in
#   alternating turns: 6x16 KC 256 0.67, KC 512 0.75; 4x24 (12 accumulators + 3 of B + 1 = 16)
#   0.68 and 0.74; MC 96, 192, 384 at KC 512 within the noise. KC 512: the B micro-panel (32 KiB)
#   streams from L2 as avx512's does; MC 192 * 512 * 4 = 384 KiB of a Zen 3's 512 KiB L2 (float64
#   96 * 512 * 8 likewise); NC: 512 * 4096 * 4 = 8 MiB of L3 per thread.
# generic: x86-64's baseline, 16 xmm of 16 bytes, SSE2 and no FMA: a multiply-add is a mulps
#   into a temporary and an addps. 4 rows x 2 xmm (8 float32 / 4 float64 columns) = 8
#   accumulators + 2 of B + 1 broadcast + 1 product = 12 of 16 (6 rows would need all 16).
#   Cache blocks as avx2's (not tuned: this path is the fallback, not a target).
# neon: aarch64, 32 q registers of 16 bytes. 8 rows x 3 q (12 float32 / 6 float64 columns) =
#   24 accumulators + 3 of B + 1 broadcast = 28 of 32: BLIS's armv8a sgemm tile (8 x 12).
#   Cache blocks as avx2's. No ARM machine here: never run nor measured; the micro-kernel,
#   cross-compiled for aarch64 by llvmlite, is 24 fmla by element a step with no spills (a test).

TILES = {   # path -> (vector bytes, {itemsize: (MR, NR, KC, MC, NC)})
    "avx512": (64, {4: (12, 32, 512, 384, 4096), 8: (12, 16, 512, 192, 2048)}),
    "avx2": (32, {4: (6, 16, 512, 192, 4096), 8: (6, 8, 512, 96, 2048)}),
    "generic": (16, {4: (4, 8, 512, 192, 4096), 8: (4, 4, 512, 96, 2048)}),
    "neon": (16, {4: (8, 12, 512, 192, 4096), 8: (8, 6, 512, 96, 2048)}),
}
PATH = _ISA_PATH
VECTOR_BYTES, BLOCKING = TILES[PATH]  # BLOCKING: itemsize -> (MR, NR, KC, MC, NC)


def isa():
    """The instruction-set path this set's code is compiled for (kernels._isa)."""
    return PATH


# Below this many multiply-adds a matmul runs on one thread (fork/join costs ~5 us).
PARALLEL_MIN_FMAS = 1 << 19
# Below this many multiply-adds a transposed A (x^T g, a weight gradient) and B are read in
# place; A not transposed, and a transposed B, are always packed (the kernel needs B contiguous
# along j). Measured, float32, in place vs packed, one thread: x^T g 784x128x128 243 vs 270
# us, 784x512x128 0.95 vs 1.05 ms, 1024^3 24.5 vs 22.1 ms; two threads, 784x128x128 140 vs
# 168 us. A not transposed: 32x784x128 98 vs 87 us, 128x784x128 384 vs 320, on two threads
# 512x784x128 1.1 vs 0.6 ms (its rows, k apart, did not scale).
PACK_MIN_FMAS = 1 << 26
# Skinny problems run one row of C at a time (_gemm_rows): up to this many rows of C, or this
# deep a k. Measured, float32, rows vs tiles: 1x784x128 4.9 vs 27 us, 4x784x128 19 vs 26,
# 6x784x128 26 vs 26; g w^T 1x64x128 1.0 vs 5.5, 8x64x128 5.2 vs 5.6; x^T g 784x1x128 13 vs
# 22, 784x2x128 20 vs 23, 784x3x128 26 vs 26 (the tiles waste 11 of 12 rows on one sample).
ROWS_MAX_M = 4
ROWS_MAX_K = 2


def _blocking(c):  # (MR, NR, KC, MC, NC) for c's dtype, as compile-time constants
    raise NotImplementedError


@overload(_blocking)
def _blocking_impl(c):
    consts = BLOCKING[c.dtype.bitwidth // 8]
    return lambda c: consts


def _lanes(itemsize):  # elements in one vector register of the path
    return VECTOR_BYTES // itemsize


def _half_nr(itemsize):
    # columns of the half-width micro-kernel: half the tile's vectors (at least one)
    nr = BLOCKING[itemsize][1]
    lanes = _lanes(itemsize)
    return max(1, nr // lanes // 2) * lanes


def _edge_widths(c):  # (NR, half NR) for c's dtype, as compile-time constants
    raise NotImplementedError


@overload(_edge_widths)
def _edge_widths_impl(c):
    itemsize = c.dtype.bitwidth // 8
    consts = (BLOCKING[itemsize][1], _half_nr(itemsize))
    return lambda c: consts


def _runtime(x):  # x, typed as a run-time value, for constant arguments of jitted calls
    return x


@overload(_runtime)
def _runtime_impl(x):
    # A constant argument (True, 0) is typed as a literal, and Numba compiles the callee once
    # more for each literal it is called with; passed through here it is a plain bool or int.
    return lambda x: x


# ---------------------------------------------------------------- matmul: the micro-kernel


def _make_micro_kernel(half):
    """The micro-kernel as an intrinsic; half=True computes only the tile's first _half_nr
    columns (half the vector registers per row), for narrow edge panels (n % NR <= that)."""

    @intrinsic
    def micro_kernel(typingctx, kc, a, a0, a_sp, a_si, b, b0, b_sp, tile):
        return _micro_kernel_codegen(half, kc, a, a0, a_sp, a_si, b, b0, b_sp, tile)

    return micro_kernel


def _micro_kernel_codegen(half, kc, a, a0, a_sp, a_si, b, b0, b_sp, tile):
    """tile[i * NR + j] = sum_p A(i, p) B(p, j) for the MR x NR tile, i < MR, j < NR, p < kc.

    A(i, p) = a[a0 + p * a_sp + i * a_si] (any strides: packed is a_sp = MR, a_si = 1);
    B(p, j) = b[b0 + p * b_sp + j] (unit stride in j: packed is b_sp = NR). a, b, tile are 1-D.
    """
    sig = types.void(kc, a, a0, a_sp, a_si, b, b0, b_sp, tile)
    dtype = a.dtype
    itemsize = dtype.bitwidth // 8
    mr, nr = BLOCKING[itemsize][0], BLOCKING[itemsize][1]
    width = _lanes(itemsize)                                    # lanes in one vector register
    nv = (_half_nr(itemsize) if half else nr) // width          # vector registers per tile row

    def codegen(context, builder, sig, args):
        kc, a, a0, a_sp, a_si, b, b0, b_sp, tile = args
        elt = context.get_value_type(dtype)
        vec = ir.VectorType(elt, width)
        intp = context.get_value_type(types.intp)

        def const(v):
            return ir.Constant(intp, v)

        a_data = context.make_array(sig.args[1])(context, builder, a).data
        b_data = context.make_array(sig.args[5])(context, builder, b).data
        t_data = context.make_array(sig.args[8])(context, builder, tile).data
        a_base = builder.gep(a_data, [a0])
        b_base = builder.gep(b_data, [b0])
        # llvm.fmuladd: one fused multiply-add where the target has FMA (avx512, avx2, neon),
        # a multiply and an add where it has not (x86-64's baseline); llvm.fma would be a libm
        # call per lane there.
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3),
            f"llvm.fmuladd.v{width}{'f32' if itemsize == 4 else 'f64'}")
        zero = ir.Constant(vec, None)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), None)
        # a's row offsets i * a_si, hoisted out of the k loop
        a_rows = [builder.mul(const(i), a_si) for i in range(mr)]

        entry = builder.basic_block
        loop = builder.append_basic_block("micro.loop")
        done = builder.append_basic_block("micro.done")
        builder.cbranch(builder.icmp_signed(">", kc, const(0)), loop, done)

        # for p in range(kc): acc[i][v] += broadcast(A(i, p)) * B(p, v*W : v*W + W)
        builder.position_at_end(loop)
        p = builder.phi(intp)
        p.add_incoming(const(0), entry)
        acc = []
        for _ in range(mr * nv):
            phi = builder.phi(vec)
            phi.add_incoming(zero, entry)
            acc.append(phi)
        b_row = builder.gep(b_base, [builder.mul(p, b_sp)])
        b_vecs = [
            builder.load(builder.bitcast(builder.gep(b_row, [const(v * width)]), vec.as_pointer()),
                         align=itemsize)
            for v in range(nv)
        ]
        a_col = builder.gep(a_base, [builder.mul(p, a_sp)])
        new = []
        for i in range(mr):
            a_ip = builder.load(builder.gep(a_col, [a_rows[i]]))
            a_vec = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vec, ir.Undefined), a_ip, ir.Constant(ir.IntType(32), 0)),
                ir.Constant(vec, ir.Undefined), splat)
            for v in range(nv):
                new.append(builder.call(fma, [a_vec, b_vecs[v], acc[i * nv + v]]))
        p_next = builder.add(p, const(1))
        body_end = builder.basic_block
        p.add_incoming(p_next, body_end)
        for phi, value in zip(acc, new):
            phi.add_incoming(value, body_end)
        builder.cbranch(builder.icmp_signed("<", p_next, kc), loop, done)

        # write the accumulators to the tile buffer (row-major, NR wide)
        builder.position_at_end(done)
        final = []
        for t in range(mr * nv):
            phi = builder.phi(vec)
            phi.add_incoming(zero, entry)
            phi.add_incoming(new[t], body_end)
            final.append(phi)
        for i in range(mr):
            for v in range(nv):
                ptr = builder.gep(t_data, [const(i * nr + v * width)])
                builder.store(final[i * nv + v], builder.bitcast(ptr, vec.as_pointer()), align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


_micro_kernel = _make_micro_kernel(half=False)
_micro_kernel_half = _make_micro_kernel(half=True)


# ---------------------------------------------------------------- matmul: packing and epilogue


# Indices in the packing and epilogue loops are cast to unsigned (U): Numba then drops its
# negative-index fix-up (a compare and add per access that blocked vectorisation), and indexing
# flat arrays needs no per-row views (a view costs two reference-count updates, which made
# packing 1.3 ns per element; flat, it streams).
U = np.uintp


@njit(cache=True)
def _pack_a(a, trans_a, i0, rows, p0, kc, ap):
    # op(A)[i0 : i0+rows, p0 : p0+kc] -> ap, as ceil(rows / MR) micro-panels of (kc, MR), zero
    # padded. a is (m, k), or (k, m) when trans_a: the transpose is absorbed here.
    mr_, _, _, _, _ = _blocking(ap)
    af = a.reshape(a.size)
    lda = a.shape[1]
    for ir_ in range(0, rows, mr_):
        mr = min(mr_, rows - ir_)
        panel = ir_ * kc
        if trans_a:     # A(i, p) = a[p, i]: contiguous along i
            for p in range(kc):
                src = (p0 + p) * lda + i0 + ir_
                dst = panel + p * mr_
                for r in range(mr):
                    ap[U(dst + r)] = af[U(src + r)]
                for r in range(mr, mr_):
                    ap[U(dst + r)] = 0
        elif mr == mr_:  # A(i, p) = a[i, p]: MR rows read side by side, one p at a time
            src = (i0 + ir_) * lda + p0
            for p in range(kc):
                dst = panel + p * mr_
                for r in range(mr_):   # constant trip count: unrolled, MR loads and stores
                    ap[U(dst + r)] = af[U(src + r * lda + p)]
        else:           # the edge panel: fewer rows, zero padded
            for r in range(mr_):
                src = (i0 + ir_ + r) * lda + p0
                if r < mr:
                    for p in range(kc):
                        ap[U(panel + p * mr_ + r)] = af[U(src + p)]
                else:
                    for p in range(kc):
                        ap[U(panel + p * mr_ + r)] = 0


@njit(cache=True)
def _pack_b(b, trans_b, p0, kc, j0, cols, bp):
    # op(B)[p0 : p0+kc, j0 : j0+cols] -> bp, as ceil(cols / NR) micro-panels of (kc, NR), zero
    # padded. b is (k, n), or (n, k) when trans_b: the transpose is absorbed here, as in _pack_a.
    _, nr_, _, _, _ = _blocking(bp)
    bf = b.reshape(b.size)
    ldb = b.shape[1]
    for jr in range(0, cols, nr_):
        nr = min(nr_, cols - jr)
        panel = jr * kc
        if trans_b and nr == nr_:  # B(p, j) = b[j, p]: NR rows read side by side
            src = (j0 + jr) * ldb + p0
            for p in range(kc):
                dst = panel + p * nr_
                for r in range(nr_):
                    bp[U(dst + r)] = bf[U(src + r * ldb + p)]
        elif trans_b:   # the edge panel: fewer columns, zero padded
            for r in range(nr_):
                src = (j0 + jr + r) * ldb + p0
                if r < nr:
                    for p in range(kc):
                        bp[U(panel + p * nr_ + r)] = bf[U(src + p)]
                else:
                    for p in range(kc):
                        bp[U(panel + p * nr_ + r)] = 0
        else:           # B(p, j) = b[p, j]: contiguous along j
            for p in range(kc):
                src = (p0 + p) * ldb + j0 + jr
                dst = panel + p * nr_
                for r in range(nr):
                    bp[U(dst + r)] = bf[U(src + r)]
                for r in range(nr, nr_):
                    bp[U(dst + r)] = 0


@njit(cache=True, fastmath=True)
def _store_tile(tile, c, i0, j0, mr, nr, first, last, bias, relu):
    # The epilogue, while the tile is hot: C[i0:i0+mr, j0:j0+nr] = tile (+ bias on the first k
    # block when bias is not empty, + C on later ones), then max(., 0) on the last k block when
    # relu (an activation code: ACT_RELU max(., 0), ACT_TANH tanh, ACT_NONE
    # neither; always an int, so that one compiled specialisation serves every caller).
    # mr <= MR, nr <= NR: the one masked path every edge goes through.
    _, nr_, _, _, _ = _blocking(tile)
    cf = c.reshape(c.size)
    ldc = c.shape[1]
    add_bias = first and bias.size > 0
    clamp = relu == ACT_RELU and last
    squash = relu == ACT_TANH and last
    for i in range(mr):
        t = i * nr_
        row = (i0 + i) * ldc + j0
        if not first:
            for j in range(nr):
                cf[U(row + j)] += tile[U(t + j)]
        elif add_bias:
            for j in range(nr):
                cf[U(row + j)] = tile[U(t + j)] + bias[U(j0 + j)]
        else:
            for j in range(nr):
                cf[U(row + j)] = tile[U(t + j)]
        if clamp:
            for j in range(nr):
                cf[U(row + j)] = max(cf[U(row + j)], 0)
        elif squash:    # (a call, not inlined: its loop keeps its own fastmath flags)
            tanh_span(cf, row, nr)


# ---------------------------------------------------------------- matmul: the five loops


@njit(cache=True, fastmath=True)
def _gemm_range(a, b, c, trans_a, trans_b, bias, relu, i_lo, i_hi, j_lo, j_hi, pack, work):
    # c[i_lo:i_hi, j_lo:j_hi] = op(a) @ op(b) (+ bias) (then ReLU), on one thread.
    # a is (m, k) or (k, m) with trans_a; b is (k, n) or (n, k) with trans_b; c is (m, n);
    # bias is (n,) or empty. pack=False reads A and a non-transposed B in place (small sizes).
    # work (flat, c's dtype) holds the packed A block, the packed B panel and the tile: at
    # least _gemm_work_size(m, n, k) elements (see there).
    mr_, nr_, kc_, mc_, nc_ = _blocking(c)
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
    direct_b = not pack and not trans_b
    kc_max = min(kc_, k)
    a_len = min(mc_, i_hi - i_lo + mr_) * kc_max
    b_len = min(nc_, j_hi - j_lo + nr_) * kc_max
    if work.size < a_len + b_len + mr_ * nr_:
        raise ValueError("_gemm_range: work is too small")
    ap, bp, tile = work[:a_len], work[a_len:a_len + b_len], work[a_len + b_len:a_len + b_len + mr_ * nr_]
    _, half_nr = _edge_widths(c)
    # LOOP 5: split n into nc parts
    for jc in range(j_lo, j_hi, nc_):
        nc = min(nc_, j_hi - jc)
        nc_full = nc - nc % nr_
        # LOOP 4: split k into kc parts; pack B
        for pc in range(0, k, kc_):
            kc = min(kc_, k - pc)
            first = pc == 0
            last = pc + kc == k
            if direct_b:  # only the edge micro-panel, which the kernel would read past
                _pack_b(b, trans_b, pc, kc, jc + nc_full, nc - nc_full, bp)
            else:
                _pack_b(b, trans_b, pc, kc, jc, nc, bp)
            # LOOP 3: split m into mc parts; pack A
            for ic in range(i_lo, i_hi, mc_):
                mc = min(mc_, i_hi - ic)
                mc_full = mc - mc % mr_
                if pack:
                    _pack_a(a, trans_a, ic, mc, pc, kc, ap)
                else:     # only the edge micro-panel
                    _pack_a(a, trans_a, ic + mc_full, mc - mc_full, pc, kc, ap)
                # LOOP 2: micro-panels of B, nr columns each
                for jr in range(0, nc, nr_):
                    nr = min(nr_, nc - jr)
                    if direct_b and nr == nr_:
                        bsrc, b0, b_sp = bf, pc * n + jc + jr, n
                    else:
                        bsrc, b0, b_sp = bp, (0 if direct_b else jr * kc), nr_
                    # LOOP 1: micro-panels of A, mr rows each
                    for ir_ in range(0, mc, mr_):
                        mr = min(mr_, mc - ir_)
                        # the MR x NR micro-kernel (one call site per layout of A, so that
                        # LLVM sees the packed strides as constants), then the epilogue
                        if nr <= half_nr:   # a narrow edge: half the kernel's width
                            if pack or mr < mr_:
                                _micro_kernel_half(kc, ap, ir_ * kc if pack else 0, mr_, 1, bsrc, b0, b_sp, tile)
                            elif trans_a:
                                _micro_kernel_half(kc, af, pc * m + ic + ir_, m, 1, bsrc, b0, b_sp, tile)
                            else:
                                _micro_kernel_half(kc, af, (ic + ir_) * k + pc, 1, k, bsrc, b0, b_sp, tile)
                        elif pack or mr < mr_:
                            _micro_kernel(kc, ap, ir_ * kc if pack else 0, mr_, 1, bsrc, b0, b_sp, tile)
                        elif trans_a:
                            _micro_kernel(kc, af, pc * m + ic + ir_, m, 1, bsrc, b0, b_sp, tile)
                        else:
                            _micro_kernel(kc, af, (ic + ir_) * k + pc, 1, k, bsrc, b0, b_sp, tile)
                        _store_tile(tile, c, ic + ir_, jc + jr, mr, nr, first, last, bias, relu)


# ---------------------------------------------------------------- matmul: calling it by address
#
# Numba compiles a call between jitted functions by linking the callee's LLVM module into the
# caller's and optimising and code-generating the whole again, so every function above the
# matmul held its own copy of it: _gemm_range, the parallel loop's body inside _gemm, _gemm
# itself, _linear_backward and _train_steps each spent seconds of a cold compile on the same
# packing loops and micro-kernels (the trainer's first run compiled them four times). Here
# _gemm_range is compiled once, on its own, and _gemm calls it through its address, which the
# Python wrappers look up (_gemm_range_address) and pass down as an integer. The address is an
# argument, not a constant in the code, so every caller stays cacheable; the call is Numba's
# own calling convention, so an exception raised inside still propagates. Its cost, one
# indirect call per task, is a few nanoseconds. Measured, cold cache, idle, 2 cores: the
# trainer's warm-up (train_steps, linear, softmax_cross_entropy) compiled in 26 s, 14 s so.


def _gemm_range_types(dtype):
    # the one signature _gemm_range is compiled for and called with by address
    c2, c1 = types.Array(dtype, 2, "C"), types.Array(dtype, 1, "C")
    i = types.int64
    return (c2, c2, c2, types.boolean, types.boolean, c1, i, i, i, i, i, types.boolean, c1)


_GEMM_RANGE_ADDRESS = {}   # numpy dtype -> address of _gemm_range compiled for it


def _gemm_range_address(dtype):
    """The address of _gemm_range's machine code for arrays of ``dtype`` (compiled, or loaded
    from the cache, on first use), for _gemm's calls through _call_gemm_range."""
    address = _GEMM_RANGE_ADDRESS.get(dtype)
    if address is None:
        sig = _gemm_range_types(numba.from_dtype(dtype))
        _gemm_range.compile(sig)
        result = _gemm_range.overloads[sig]
        address = _GEMM_RANGE_ADDRESS[dtype] = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
    return address


@intrinsic
def _call_gemm_range(typingctx, address, a, b, c, trans_a, trans_b, bias, relu, i_lo, i_hi, j_lo, j_hi,
                     pack, work):
    # _gemm_range(a, ..., work) through the address of its machine code. The argument types
    # must be the ones it was compiled for (checked here, when the caller is compiled: a
    # mismatch is a TypingError, never a call with the wrong layout).
    args = (a, b, c, trans_a, trans_b, bias, relu, i_lo, i_hi, j_lo, j_hi, pack, work)
    expected = _gemm_range_types(c.dtype)
    if tuple(types.unliteral(t) for t in args) != expected:
        raise errors.TypingError(f"_call_gemm_range: arguments {args}, expected {expected}")
    if not isinstance(address, types.Integer):
        raise errors.TypingError(f"_call_gemm_range: the address must be an integer, got {address}")

    def codegen(context, builder, sig, llargs):
        fnty = context.call_conv.get_function_type(types.none, expected)
        callee = builder.inttoptr(llargs[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, callee, types.none, expected, llargs[1:])
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, *expected), codegen


@njit(cache=True, inline="always")
def _a_at(af, lda, trans_a, i, p):
    # A(i, p) of a flat a: a[i, p], or a[p, i] when trans_a
    return af[U(p * lda + i)] if trans_a else af[U(i * lda + p)]


@njit(cache=True, fastmath=True)
def _gemm_rows(a, b, c, trans_a, trans_b, bias, relu):
    # c = op(a) @ op(b) (+ bias) (then ReLU), one row of c at a time, for skinny problems where
    # the MR x NR tile would be mostly padding or overhead: a few rows (a batch of a sample or
    # two) or a short k (the outer product of a weight gradient at such a batch). The loops
    # run along rows of B (or, with trans_b, dot products along rows of both), which LLVM
    # vectorises; nothing is packed. One thread: these problems are too small to split.
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    af, bf, cf = a.reshape(a.size), b.reshape(b.size), c.reshape(c.size)
    lda = a.shape[1]
    for i in range(m):
        row = i * n
        if trans_b:     # c[i, j] = A(i, :) . b[j, :]
            for j in range(n):
                s = c.dtype.type(0)
                for p in range(k):
                    s += _a_at(af, lda, trans_a, i, p) * bf[U(j * k + p)]
                cf[U(row + j)] = s
        else:           # c[i, :] = sum over p of A(i, p) b[p, :], four rows of B per pass
            for j in range(n):        # over c's row, which then loads and stores a quarter
                cf[U(row + j)] = 0    # as often (measured 784x128: 5.1 us -> 3.9, one row)
            for p in range(0, k - k % 4, 4):
                a0, a1, a2, a3 = _a_at(af, lda, trans_a, i, p), _a_at(af, lda, trans_a, i, p + 1), \
                    _a_at(af, lda, trans_a, i, p + 2), _a_at(af, lda, trans_a, i, p + 3)
                b0 = p * n
                for j in range(n):
                    cf[U(row + j)] += (a0 * bf[U(b0 + j)] + a1 * bf[U(b0 + n + j)]
                                       + a2 * bf[U(b0 + 2 * n + j)] + a3 * bf[U(b0 + 3 * n + j)])
            for p in range(k - k % 4, k):
                a_ip = _a_at(af, lda, trans_a, i, p)
                for j in range(n):
                    cf[U(row + j)] += a_ip * bf[U(p * n + j)]
        if bias.size > 0:
            for j in range(n):
                cf[U(row + j)] += bias[U(j)]
        if relu == ACT_RELU:
            for j in range(n):
                cf[U(row + j)] = max(cf[U(row + j)], 0)
        elif relu == ACT_TANH:
            tanh_span(cf, row, n)


@njit(cache=True, inline="always")
def _task_split(c, tasks):
    # How `tasks` tasks share c: by rows, or by columns when c is wide (the longer side,
    # counted in micro-tiles), in steps of whole micro-tiles. (by_rows, size, step).
    mr_, nr_, _, _, _ = _blocking(c)
    m, n = c.shape
    by_rows = m * nr_ >= n * mr_
    size = m if by_rows else n
    unit = mr_ if by_rows else nr_
    return by_rows, size, ((size + tasks - 1) // tasks + unit - 1) // unit * unit


@njit(cache=True, inline="always")
def _gemm_task(a, b, c, trans_a, trans_b, bias, relu, tasks, pack, work, t, by_rows, size, step, far):
    # Task t of _task_split's split: its rows (or columns) of c, packing into its own 1/tasks
    # of work; far: _gemm_range's address
    lo = min(size, t * step)
    hi = min(size, lo + step)
    share = work.size // tasks
    mine = work[t * share:(t + 1) * share]
    if lo < hi:
        m, n = c.shape
        zero = _runtime(0)
        i_lo, i_hi, j_lo, j_hi = (lo, hi, zero, n) if by_rows else (zero, m, lo, hi)
        _call_gemm_range(far, a, b, c, trans_a, trans_b, bias, relu, i_lo, i_hi, j_lo, j_hi, pack, mine)


@njit(cache=True, parallel=True)
def _gemm_threads(a, b, c, trans_a, trans_b, bias, relu, tasks, pack, work, far):
    # c = op(a) @ op(b) (+ bias) (ReLU) as `tasks` tasks, one per thread, each on its own rows
    # of c (or columns): the ladder's threaded rung (_gemm has the same loop inside it).
    by_rows, size, step = _task_split(c, tasks)
    for t in prange(tasks):
        _gemm_task(a, b, c, trans_a, trans_b, bias, relu, tasks, pack, work, t, by_rows, size, step, far)


@njit(cache=True, parallel=True)
def _gemm(a, b, c, trans_a, trans_b, bias, relu, threads, work, far):
    # c = op(a) @ op(b) (+ bias unless empty) (ReLU if relu): the set's one matmul entry point.
    # Picks packing and the thread count from the problem's size. work: see _gemm_work_size.
    # far: _gemm_range_address(c.dtype), through which the one thread's range and each task's
    # are called (see "calling it by address": this function then holds no copy of the matmul,
    # and neither do its callers). A raise inlined into the prange loop would make it serial.
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    fmas = m * n * k
    pack = trans_b or not trans_a or fmas >= PACK_MIN_FMAS
    if m <= ROWS_MAX_M or k <= ROWS_MAX_K:
        _gemm_rows(a, b, c, trans_a, trans_b, bias, relu)
    elif threads == 1 or fmas < PARALLEL_MIN_FMAS:
        zero = _runtime(0)
        _call_gemm_range(far, a, b, c, trans_a, trans_b, bias, relu, zero, m, zero, n, pack, work)
    else:   # one task per thread, each on its own rows (or columns) of c
        by_rows, size, step = _task_split(c, threads)
        for t in prange(threads):
            _gemm_task(a, b, c, trans_a, trans_b, bias, relu, threads, pack, work, t, by_rows, size, step, far)


# ---------------------------------------------------------------- scratch memory
#
# The packing buffers (and linear_backward's masked gradient, train_steps' float64 sums) come
# from flat arrays that persist between calls and only grow. Allocating them per call cost more
# than the work at small sizes: a large np.empty is an mmap, so every call paid its page faults
# and zeroing (an epoch at batch 128 ran at half the speed with glibc's mmap threshold at 128
# KiB). The Python wrappers grow them and pass them down; each matmul task gets its own slice.
#
# They are per Python thread (threading.local). The jitted code holds the GIL, except inside
# its parallel regions (the matmul's tasks, the large elementwise ops, softmax over 4096 rows
# and more, the batch gather), where Numba releases it; so calls from two Python threads do
# overlap there, and one scratch array shared between them gave wrong answers (up to 90
# absolute on a 300^3 linear_backward; tests/test_threads.py). Per thread, no call ever sees
# another's buffers, and no lock serialises them. The cost: each thread that calls the set keeps
# its own buffers (a few MiB at the MLP's sizes) until it ends.

_scratch = threading.local()   # .arrays: (use, dtype) -> flat array, for this thread


def _scratch_for(use, dtype, size):
    # A flat array of at least size elements, this thread's, reused from its last call when
    # large enough
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = {}
    a = arrays.get((use, dtype))
    if a is None or a.size < size:
        a = arrays[use, dtype] = np.empty(size, dtype)
    return a


def _gemm_work_size(dtype, m, n, k, tasks):
    # Elements of work that _gemm needs for an (m, n) = (m, k) @ (k, n) product on up to
    # `tasks` tasks: per task, the packed A block, the packed B panel and one tile, each sized
    # for the whole problem (a bound on what any task's rows or columns need).
    mr, nr, kc, mc, nc = BLOCKING[dtype.itemsize]
    kc = min(kc, k)
    return tasks * ((min(mc, m + mr) + min(nc, n + nr)) * kc + mr * nr)


# The thread count set_threads last applied, passed down to the jitted code (Numba's
# get_num_threads, called from jitted code, would make every caller uncacheable: it reaches
# the runtime through a ctypes pointer). The front applies a set's count before every op.
_threads = [get_num_threads()]
# The empty bias, per dtype: a matmul without one
_NO_BIAS = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def matmul(a, b, out, trans_a, trans_b):
    # a (m, k) or (k, m) with trans_a; b (k, n) or (n, k) with trans_b; out (m, n)
    (m, n), k, threads = out.shape, a.shape[0 if trans_a else 1], _threads[0]
    work = _scratch_for("work", out.dtype, _gemm_work_size(out.dtype, m, n, k, threads))
    _gemm(a, b, out, trans_a, trans_b, _NO_BIAS[out.dtype], ACT_NONE, threads, work, _gemm_range_address(out.dtype))


# ---------------------------------------------------------------- matmul: the ladder


@njit(cache=True, fastmath=True)
def _matmul_blocked(a, b, out, trans_a, trans_b):
    # Rung 2: the loops blocked for the caches (NC, KC, MC of the packed version), i-p-j order
    # so that the inner loop runs along rows of B and C and vectorises (flat, unsigned indices,
    # as in the packed path); no packing, no register tile: C's row is loaded and stored for
    # every p. With trans_b the inner loop walks a column of b (strided; correct, slow).
    _, _, kc_, mc_, nc_ = _blocking(out)
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    af, bf, cf = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    lda, ldb = a.shape[1], b.shape[1]
    cf[:] = 0
    for jc in range(0, n, nc_):
        nc = min(n - jc, nc_)
        for pc in range(0, k, kc_):
            p_hi = min(k, pc + kc_)
            for ic in range(0, m, mc_):
                for i in range(ic, min(m, ic + mc_)):
                    c_row = i * n + jc
                    for p in range(pc, p_hi):
                        a_ip = af[U(p * lda + i)] if trans_a else af[U(i * lda + p)]
                        if trans_b:
                            for j in range(nc):
                                cf[U(c_row + j)] += a_ip * bf[U((jc + j) * ldb + p)]
                        else:
                            b_row = p * ldb + jc
                            for j in range(nc):
                                cf[U(c_row + j)] += a_ip * bf[U(b_row + j)]


def _matmul_packed(a, b, out, trans_a, trans_b):
    # Rung 3: both operands packed, the register-blocked micro-kernel, one thread
    (m, n), k = out.shape, a.shape[0 if trans_a else 1]
    work = _scratch_for("work", out.dtype, _gemm_work_size(out.dtype, m, n, k, 1))
    _gemm_range(a, b, out, trans_a, trans_b, _NO_BIAS[out.dtype], ACT_NONE, 0, m, 0, n, True, work)


def _matmul_threaded(a, b, out, trans_a, trans_b):
    # Rung 4: rung 3 on every thread (Numba's current count), each on its own rows or columns
    (m, n), k, tasks = out.shape, a.shape[0 if trans_a else 1], get_num_threads()
    work = _scratch_for("work", out.dtype, _gemm_work_size(out.dtype, m, n, k, tasks))
    _gemm_threads(a, b, out, trans_a, trans_b, _NO_BIAS[out.dtype], ACT_NONE, tasks, True, work,
                  _gemm_range_address(out.dtype))


# The matmul at each optimisation step, for the benchmarks: {step: callable(a, b, out, trans_a,
# trans_b)}, each complete and correct. "tuned" is the set's matmul: rung 4 plus the small-size
# path (operands read in place, no packing) and the one-thread cut-off for small problems.
MATMUL_LADDER = OrderedDict([
    ("naive", numba_naive.matmul),
    ("blocked", _matmul_blocked),
    ("packed", _matmul_packed),
    ("threaded", _matmul_threaded),
    ("tuned", matmul),
])


# ---------------------------------------------------------------- relu

# Elementwise ops are memory-bound: a second thread only pays once the arrays outgrow what
# one core streams in the time a fork/join costs.
PARALLEL_MIN_ELEMENTS = 1 << 17


@njit(cache=True, fastmath=True)
def _relu_serial(x, out):
    # x, out are (size,)
    for i in range(x.shape[0]):
        out[i] = max(x[i], 0)


@njit(cache=True, fastmath=True, parallel=True)
def _relu_parallel(x, out):
    # x, out are (size,)
    for i in prange(x.shape[0]):
        out[i] = max(x[i], 0)


@njit(cache=True)
def relu(x, out):
    # x, out: one shape, any ndim (flattened: both are C-contiguous)
    xf, of = x.reshape(x.size), out.reshape(out.size)
    if x.size >= PARALLEL_MIN_ELEMENTS:
        _relu_parallel(xf, of)
    else:
        _relu_serial(xf, of)


@njit(cache=True, fastmath=True)
def _relu_backward_serial(grad_y, y, out):
    # grad_y, y, out are (size,): out = grad_y * (y > 0)
    for i in range(y.shape[0]):
        out[i] = grad_y[i] if y[i] > 0 else 0


@njit(cache=True, fastmath=True, parallel=True)
def _relu_backward_parallel(grad_y, y, out):
    # grad_y, y, out are (size,): out = grad_y * (y > 0)
    for i in prange(y.shape[0]):
        out[i] = grad_y[i] if y[i] > 0 else 0


@njit(cache=True)
def relu_backward(grad_y, y, out):
    # grad_y, y, out: one shape, any ndim
    gf, yf, of = grad_y.reshape(grad_y.size), y.reshape(y.size), out.reshape(out.size)
    if y.size >= PARALLEL_MIN_ELEMENTS:
        _relu_backward_parallel(gf, yf, of)
    else:
        _relu_backward_serial(gf, yf, of)


# ---------------------------------------------------------------- tanh and dropout: the pieces
#
# kernels/_layers.py's dropout mask, and a tanh that vectorises (vtanh.h as Numba arithmetic),
# for both Numba sets and the fused loop: here, not in a module of their own, because Numba's
# cache keys a function on its own file (the design note) and the fused loop compiles these in.
# Numba types arithmetic on two uint32 as uint64 (at least the machine word), so every product
# is reduced mod 2^32 by hand; the results are kernels/_layers.py's bits exactly (tests hold
# them to it).

M32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B9)
_FMIX_1 = np.uint64(0x85EBCA6B)
_FMIX_2 = np.uint64(0xC2B2AE35)


@njit(cache=True, inline="always")
def fmix32(h):
    # MurmurHash3's finaliser on h in [0, 2^32), held in a uint64
    h ^= h >> np.uint64(16)
    h = (h * _FMIX_1) & M32
    h ^= h >> np.uint64(13)
    h = (h * _FMIX_2) & M32
    h ^= h >> np.uint64(16)
    return h


@njit(cache=True)
def mask_key(seed, step, layer):
    # kernels._layers.mask_key: seed < 2^64, step < 2^63, layer < 2^32, folded 32 bits at a time
    s, t = np.uint64(seed), np.uint64(step)
    h = fmix32(s & M32)
    h = fmix32(h ^ (s >> np.uint64(32)))
    h = fmix32(h ^ (t & M32))
    h = fmix32(h ^ (t >> np.uint64(32)))
    return fmix32(h ^ (np.uint64(layer) & M32))


@njit(cache=True, inline="always")
def keep(key, e, threshold):
    # whether element e (row * units + unit) of the mask of ``key`` is kept
    return fmix32((np.uint64(key) + (np.uint64(e) & M32) * _GOLDEN) & M32) >= threshold


@njit(cache=True)
def dropout_flat(x, out, key, threshold, scale):
    # x, out (rows * units,), flattened rows; out = x * scale where kept, else 0 (out may be x)
    key, threshold = np.uint64(key), np.uint64(threshold)
    for e in range(x.shape[0]):
        out[e] = x[e] * scale if keep(key, e, threshold) else 0.0


# ---------------------------------------------------------------- tanh without libm
#
# math.tanh in Numba is a libm call per element, which keeps a loop scalar. tanh_one is
# kernels/_cython/vtanh.h line for line (Cephes' tanhf / tanh on |x|, both ranges computed and
# one kept, the sign put back): plain arithmetic and bitcasts, which LLVM's loop vectoriser runs
# a whole register at a time. The loops that use it are compiled with fastmath={"contract"}
# only: "nnan" would let LLVM drop the NaN lanes' path, "reassoc" reorder the polynomials.


@intrinsic
def _f64_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


def tanh_one(x):
    return math.tanh(x)


@overload(tanh_one, inline="always")
def _tanh_one_impl(x):
    if x == types.float32:
        f = np.float32

        def impl(x):
            ax = abs(x)
            z = ax * ax                             # |x| < 0.625: Cephes' tanhf polynomial
            p = f(-5.70498872745E-3)
            p = p * z + f(2.06390887954E-2)
            p = p * z - f(5.37397155531E-2)
            p = p * z + f(1.33314422036E-1)
            p = p * z - f(3.33332819422E-1)
            small = p * z * ax + ax
            e = _exp_shifted(f(-2.0) * ax)          # otherwise (1 - e) / (1 + e), e = exp(-2|x|)
                                                    # (softmax's expf, below)
            large = (f(1.0) - e) / (f(1.0) + e)
            return math.copysign(small if ax < f(0.625) else large, x)

        return impl
    if x == types.float64:
        lo, rnd = -708.39, 6755399441055744.0       # exp(lo) > DBL_MIN; 1.5 * 2^52

        def impl(x):
            ax = abs(x)
            s = ax * ax                             # |x| < 0.625: Cephes' rational tanh
            p = -9.64399179425052238628E-1
            p = p * s - 9.92877231001918586564E1
            p = p * s - 1.61468768441708447952E3
            q = s + 1.12811678491632931402E2
            q = q * s + 2.23548839060100448583E3
            q = q * s + 4.84406305325125486048E3
            e = -2.0 * ax                           # exp(-2|x|): Taylor, degree 13
            e = lo if e < lo else e
            t = e * 1.4426950408889634073599 + rnd
            n = t - rnd
            r = e - n * 6.93145751953125E-1
            r = r - n * 1.42860682030941723212E-6
            c = 1.0 / 6227020800.0
            c = c * r + 1.0 / 479001600.0
            c = c * r + 1.0 / 39916800.0
            c = c * r + 1.0 / 3628800.0
            c = c * r + 1.0 / 362880.0
            c = c * r + 1.0 / 40320.0
            c = c * r + 1.0 / 5040.0
            c = c * r + 1.0 / 720.0
            c = c * r + 1.0 / 120.0
            c = c * r + 1.0 / 24.0
            c = c * r + 1.0 / 6.0
            c = c * r + 0.5
            c = c * (r * r) + r + 1.0
            e = c * _f64_from_bits((np.int64(n) + np.int64(1023)) << np.int64(52))
            if ax < 0.625:                          # one division for both ranges
                num, den = ax * q + ax * s * p, q
            else:
                num, den = 1.0 - e, 1.0 + e
            return math.copysign(num / den, x)

        return impl


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def tanh_span(a, start, n):
    # a[start:start+n] = tanh(a[start:start+n]) in place, a flat (an epilogue's row of C). The
    # index is unsigned: with a signed one Numba's negative-index wraparound kept the loop
    # scalar (4.2 ns an element, float32; 0.65 so).
    s = np.uintp(start)
    for i in range(np.uintp(n)):
        a[s + i] = tanh_one(a[s + i])


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def tanh_flat(x, out):
    # out = tanh(x), x and out (size,) (out may be x)
    for i in range(x.shape[0]):
        out[i] = tanh_one(x[i])


# ---------------------------------------------------------------- tanh and dropout

# tanh is arithmetic-bound (about 35 vector operations a vector where relu has one): threads
# pay from a quarter of the elementwise ops' size (32 Ki elements, as the cython set's tanh).
PARALLEL_MIN_TANH = PARALLEL_MIN_ELEMENTS // 4


@njit(cache=True, parallel=True)
def _tanh_parallel(x, out, parts):
    per = (x.shape[0] + parts - 1) // parts
    for part in prange(parts):
        lo, hi = min(part * per, x.shape[0]), min((part + 1) * per, x.shape[0])
        tanh_flat(x[lo:hi], out[lo:hi])


def tanh(x, out):
    # x, out: one shape, any ndim; tanh_flat is tanh_one above, which vectorises
    xf, of, threads = x.reshape(-1), out.reshape(-1), _threads[0]
    if x.size >= PARALLEL_MIN_TANH and threads > 1:
        _tanh_parallel(xf, of, threads)
    else:
        tanh_flat(xf, of)


@njit(cache=True, fastmath={"contract"})
def _tanh_backward_span(grad_y, y, out):
    # grad_y, y, out (size,): out = grad_y * (1 - y^2)
    for i in range(y.shape[0]):
        out[i] = grad_y[i] * (1 - y[i] * y[i])


def tanh_backward(grad_y, y, out):
    # grad_y, y, out: one shape, any ndim
    _tanh_backward_span(grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


def dropout(x, out, key, threshold, scale):
    # x, out (rows, units): x * scale where the unit's hash >= threshold, else 0 (kernels/_layers.py)
    dropout_flat(x.reshape(-1), out.reshape(-1), key, threshold, x.dtype.type(scale))


# ---------------------------------------------------------------- softmax cross-entropy

# Rows (of 10 classes) are cheap: threads pay only for large batches.
PARALLEL_MIN_ROWS = 4096
# Rows per block: about 2048 logits (8 KiB of float32), which the three passes over a block
# find in L1; at 10 classes that is 204 rows, at 1000 classes 2.
BLOCK_ELEMS = 2048


@intrinsic
def _f32_from_bits(typingctx, bits):
    # The float32 whose bit pattern is the low 32 bits of the integer ``bits`` (a bitcast,
    # which Python has no operator for; LLVM vectorises it for free).
    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


def _exp_shifted(x):  # exp(x) for x <= 0 (softmax's shifted logits; tanh's exp(-2|x|)), in x's dtype
    return math.exp(x)


@overload(_exp_shifted, inline="always", fastmath={"contract"})
def _exp_shifted_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)   # float64: libm's exp, a call per element

    # float32: Cephes' expf as arithmetic, vecmath.h's vexp_nonpositive_f32 line for line
    # (range reduction by ln 2, degree-5 polynomial, about 1 ulp). libm's expf is a call,
    # which keeps a loop scalar; this is plain arithmetic and a bitcast, so LLVM's loop
    # vectoriser runs it 16 lanes wide.
    f = np.float32
    lo, rnd = f(-87.33654), f(12582912.0)   # exp(lo) = FLT_MIN; 1.5 * 2^23 rounds to integer

    def impl(x):
        if x < lo:                              # NaN stays NaN
            x = lo
        t = x * f(1.44269504088896341) + rnd    # n = rint(x / ln 2), in t's low bits
        n = t - rnd
        r = x - n * f(0.693359375)              # r = x - n ln 2, in two steps (Cody-Waite)
        r = r - n * f(-2.12194440e-4)
        p = f(1.9875691500e-4)
        p = p * r + f(1.3981999507e-3)
        p = p * r + f(8.3334519073e-3)
        p = p * r + f(4.1665795894e-2)
        p = p * r + f(1.6666665459e-1)
        p = p * r + f(5.0000001201e-1)
        p = p * (r * r) + r + f(1.0)            # exp(r), |r| <= ln 2 / 2
        return p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))   # * 2^n

    return impl


@intrinsic
def _vector_max(typingctx, z, start, n_vec):
    # max of z[start : start + n_vec * W] (W lanes to a zmm register), n_vec >= 1: one
    # vector of running maxima, reduced across its lanes at the end. Numba's loops cannot
    # say this: LLVM vectorises a max reduction only under fast-math flags Numba does not
    # put on the compare (nnan, nsz), and an unrolled loop over W lanes stays scalar, as
    # the micro-kernel found. A NaN is passed over (compare and select, as the scalar
    # loop does); the loss is NaN all the same, since exp of that logit is NaN.
    dtype = z.dtype
    width = _lanes(dtype.bitwidth // 8)

    def codegen(context, builder, sig, args):
        z, start, n_vec = args
        elt = context.get_value_type(dtype)
        vec = ir.VectorType(elt, width)
        intp = context.get_value_type(types.intp)
        base = builder.gep(context.make_array(sig.args[0])(context, builder, z).data, [start])

        def load(i):
            ptr = builder.gep(base, [builder.mul(i, ir.Constant(intp, width))])
            return builder.load(builder.bitcast(ptr, vec.as_pointer()), align=dtype.bitwidth // 8)

        def vmax(a, b):
            return builder.select(builder.fcmp_ordered(">", b, a), b, a)

        first = load(ir.Constant(intp, 0))
        entry = builder.basic_block
        loop = builder.append_basic_block("vmax.loop")
        done = builder.append_basic_block("vmax.done")
        builder.cbranch(builder.icmp_signed(">", n_vec, ir.Constant(intp, 1)), loop, done)
        builder.position_at_end(loop)
        i = builder.phi(intp)
        i.add_incoming(ir.Constant(intp, 1), entry)
        acc = builder.phi(vec)
        acc.add_incoming(first, entry)
        new = vmax(acc, load(i))
        i_next = builder.add(i, ir.Constant(intp, 1))
        i.add_incoming(i_next, loop)
        acc.add_incoming(new, loop)
        builder.cbranch(builder.icmp_signed("<", i_next, n_vec), loop, done)
        builder.position_at_end(done)
        result = builder.phi(vec)
        result.add_incoming(first, entry)
        result.add_incoming(new, loop)
        m = builder.extract_element(result, ir.Constant(ir.IntType(32), 0))
        for lane in range(1, width):
            m = vmax(m, builder.extract_element(result, ir.Constant(ir.IntType(32), lane)))
        return m

    return dtype(z, start, n_vec), codegen


@njit(cache=True)
def _row_max(z, start, n):
    # max of z[start : start+n]: whole vectors through _vector_max, the rest one by one
    width = VECTOR_BYTES // z.itemsize
    mx = z[U(start)]
    n_vec = n // width
    if n_vec > 0:
        v = _vector_max(z, start, n_vec)
        mx = v if v > mx else mx
    for j in range(start + n_vec * width, start + n):
        v = z[U(j)]
        mx = v if v > mx else mx
    return mx


@njit(cache=True, fastmath={"reassoc", "contract"})
def _row_sum(g, start, n):
    # sum of g[start : start+n] in float64, in vector lanes (reassociated: the order of the
    # additions is the vectoriser's, as in cython's exp_minus_max_f32)
    s = 0.0
    for j in range(start, start + n):
        s += g[U(j)]
    return s


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _softmax_ce_block(logits, labels, grad, r0, r1, inv_batch):
    # Rows r0..r1, in three passes over the block while it is in L1: shift each row by its
    # max into grad; exp over the block as one flat array (16 lanes a step however few the
    # classes: a row of 10 is too short to vectorise); then per row the sum, the scaled
    # gradient and the loss. Row i's loss is log(sum_j exp(z_ij - max)) - (z_i,label - max);
    # returns the block's sum of them in float64. The logs are summed as the log of a product,
    # one log call per ``per_log`` rows (cython's trick): each sum is in [1, classes], so the
    # product of per_log of them stays under 2^1000. At 128x10 a log per row (libm's, a call
    # that no loop vectorises) took 0.7 us of the call's 3.5.
    classes = logits.shape[1]
    z = logits.reshape(logits.size)
    g = grad.reshape(grad.size)
    per_log = max(1, int(1000.0 / math.log2(max(classes, 2))))
    loss, product, in_product = 0.0, 1.0, 0
    short = classes < VECTOR_BYTES // z.itemsize     # a row shorter than one vector
    for i in range(r0, r1):
        row = i * classes
        if short:   # written out: through _row_max, 128 rows of 10 took 0.9 us, not 0.2
            mx = z[U(row)]
            for j in range(row + 1, row + classes):
                v = z[U(j)]
                mx = v if v > mx else mx
        else:
            mx = _row_max(z, row, classes)
        for j in range(classes):
            g[U(row + j)] = z[U(row + j)] - mx  # shifted by the max: exp cannot overflow
        loss -= g[U(row + labels[i])]
    for e in range(r0 * classes, r1 * classes):
        g[U(e)] = _exp_shifted(g[U(e)])
    for i in range(r0, r1):
        row = i * classes
        s = _row_sum(g, row, classes)
        scale = inv_batch / s
        for j in range(classes):
            g[U(row + j)] *= scale              # softmax / B
        g[U(row + labels[i])] -= inv_batch      # - onehot / B
        product *= s
        in_product += 1
        if in_product == per_log:
            loss += math.log(product)
            product, in_product = 1.0, 0
    return loss + math.log(product)


@njit(cache=True, parallel=True, error_model="numpy")
def _softmax_ce_parallel(logits, labels, grad, block):
    # logits (B, C), labels (B,) int64, grad (B, C); one block of rows per iteration
    batch = logits.shape[0]
    inv_batch = 1.0 / batch
    total = 0.0
    for k in prange((batch + block - 1) // block):
        total += _softmax_ce_block(logits, labels, grad, k * block, min(batch, (k + 1) * block), inv_batch)
    return total * inv_batch


@njit(cache=True, error_model="numpy")
def softmax_cross_entropy(logits, labels, grad):
    # logits (B, C), labels (B,) int64, grad (B, C); returns the mean loss (float64), or -1
    # if a label is outside [0, C) (CHECKS_LABELS: the front leaves the range to this loop,
    # one compare a row, cheaper than a NumPy reduction)
    batch, classes = logits.shape
    for i in range(batch):
        if labels[i] < 0 or labels[i] >= classes:
            return -1.0
    block = max(1, BLOCK_ELEMS // classes)
    if batch >= PARALLEL_MIN_ROWS:
        return _softmax_ce_parallel(logits, labels, grad, block)
    inv_batch = 1.0 / batch
    total = 0.0
    for r0 in range(0, batch, block):
        total += _softmax_ce_block(logits, labels, grad, r0, min(batch, r0 + block), inv_batch)
    return total * inv_batch


# ---------------------------------------------------------------- linear and its backward


def linear(x, w, b, out, act):
    # x (B, in), w (in, out), b (out,), out (B, out): out = act(x @ w + b) (act: kernels._layers'
    # code), bias and activation applied in the matmul's epilogue while each tile is in L1
    (batch, n_in), n_out, threads = x.shape, w.shape[1], _threads[0]
    work = _scratch_for("work", out.dtype, _gemm_work_size(out.dtype, batch, n_out, n_in, threads))
    _gemm(x, w, out, False, False, b, int(act), threads, work, _gemm_range_address(out.dtype))


@njit(cache=True, fastmath=True)
def _bias_grad(grad_y, y, grad_b, relu, g, sums):
    # grad_y, y, g (B, out), grad_b (out,), sums (>= out,) float64 scratch. Writes the gradient
    # at the pre-activation, g = grad_y * (y > 0) (relu ACT_RELU or True) or grad_y * (1 - y^2)
    # (ACT_TANH), and grad_b = sum over rows of g, in one pass over grad_y; returns g, or grad_y
    # with no activation (g is then untouched). g should not be grad_y: in place, the
    # vectoriser's run-time overlap check fails and the loop runs scalar, 3x slower.
    batch, n_out = grad_y.shape
    sums[:n_out] = 0
    for i in range(batch):
        if relu == ACT_RELU:
            for j in range(n_out):
                v = grad_y[i, j] if y[i, j] > 0 else 0
                g[i, j] = v
                sums[j] += v
        elif relu == ACT_TANH:
            for j in range(n_out):
                v = grad_y[i, j] * (1 - y[i, j] * y[i, j])
                g[i, j] = v
                sums[j] += v
        else:
            for j in range(n_out):
                sums[j] += grad_y[i, j]
    for j in range(n_out):
        grad_b[j] = sums[j]
    return grad_y if relu == ACT_NONE else g


@njit(cache=True)
def _linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, relu, need_grad_x, g, sums, threads, work, far):
    # linear_backward, with its scratch: g (B, out) for the masked gradient, sums (>= out,)
    # float64, work for the matmuls. grad_x is written only when need_grad_x.
    g = _bias_grad(grad_y, y, grad_b, relu, g, sums)     # gradient at the pre-activation, and db
    no_bias, yes, no, none = grad_b[:0], _runtime(True), _runtime(False), _runtime(ACT_NONE)
    # y = x @ w + b  ->  grad_w = x^T g    (the transpose absorbed by packing A)
    _gemm(x, g, grad_w, yes, no, no_bias, none, threads, work, far)
    #                   grad_x = g w^T    (the transpose absorbed by packing B)
    if need_grad_x:
        _gemm(g, w, grad_x, no, yes, no_bias, none, threads, work, far)


def _backward_work_size(dtype, batch, n_in, n_out, threads):
    # work for _linear_backward's two matmuls (they run one after the other)
    return max(_gemm_work_size(dtype, n_in, n_out, batch, threads),
               _gemm_work_size(dtype, batch, n_in, n_out, threads))


def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, act):
    # x (B, in), w (in, out), y and grad_y (B, out); grad_x (B, in), grad_w (in, out), grad_b (out,)
    (batch, n_in), n_out, dtype, threads = x.shape, w.shape[1], x.dtype, _threads[0]
    # one scratch array: g (the gradient past the activation, if any) then the matmuls' buffers
    act = int(act)
    g_size = batch * n_out if act != ACT_NONE else 0
    scratch = _scratch_for("work", dtype, g_size + _backward_work_size(dtype, batch, n_in, n_out, threads))
    g = scratch[:g_size].reshape(batch, n_out) if act != ACT_NONE else grad_y
    sums = _scratch_for("sums", np.dtype(np.float64), n_out)
    _linear_backward(x, w, y, grad_y, grad_w if grad_x is None else grad_x, grad_w, grad_b, act,
                     grad_x is not None, g, sums, threads, scratch[g_size:], _gemm_range_address(dtype))


# ---------------------------------------------------------------- optimizers


# Each optimizer is an element function on scalars (inline, shared by every loop that applies
# it: given arrays instead, its reference counting kept _outer_update's loop scalar, 4x slower),
# the loops over flat arrays, one thread or several, and an entry point. The hyperparameters
# reach the loops as a tuple in the arrays' dtype (_sgd_hyper, _adam_hyper), so float32 runs
# 16 lanes wide: an int or float64 constant in the element function would promote the whole
# expression to float64 (SGD ran 2x slower so, Adam scalar).


@njit(cache=True, fastmath=True, inline="always")
def _sgd_one(p, v, grad, h, use_velocity):
    # torch.optim.SGD on one element p (velocity v) whose gradient is grad: g' = grad + wd * p;
    # v = momentum * v + g'; p -= lr * v (without velocity: p -= lr * g'). The new (p, v).
    lr, momentum, weight_decay = h
    d = grad + weight_decay * p
    if use_velocity:
        d = momentum * v + d
    return p - lr * d, d


@njit(cache=True)
def _sgd_hyper(p, lr, momentum, weight_decay):
    f = p.dtype.type
    return f(lr), f(momentum), f(weight_decay)


@njit(cache=True, fastmath=True)
def _sgd_serial(p, g, v, h, use_velocity):
    # p, g, v are (size,)
    for i in range(p.shape[0]):
        p[i], d = _sgd_one(p[i], v[i], g[i], h, use_velocity)
        if use_velocity:
            v[i] = d


@njit(cache=True, fastmath=True, parallel=True)
def _sgd_parallel(p, g, v, h, use_velocity):
    # p, g, v are (size,); as _sgd_serial
    for i in prange(p.shape[0]):
        p[i], d = _sgd_one(p[i], v[i], g[i], h, use_velocity)
        if use_velocity:
            v[i] = d


@njit(cache=True)
def _sgd_update(param, grad, velocity, h, use_velocity):
    # param, grad, velocity: one shape, any ndim (velocity is param when unused)
    p, g, v = param.reshape(param.size), grad.reshape(grad.size), velocity.reshape(velocity.size)
    if p.size >= PARALLEL_MIN_ELEMENTS:
        _sgd_parallel(p, g, v, h, use_velocity)
    else:
        _sgd_serial(p, g, v, h, use_velocity)


@njit(cache=True)
def _sgd_step(param, grad, velocity, lr, momentum, weight_decay, use_velocity):
    _sgd_update(param, grad, velocity, _sgd_hyper(param, lr, momentum, weight_decay), use_velocity)


def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    if velocity is None:
        _sgd_step(param, grad, param, lr, momentum, weight_decay, False)
    else:
        _sgd_step(param, grad, velocity, lr, momentum, weight_decay, True)


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _adam_one(p, m, v, grad, h):
    # torch.optim.Adam on one element p (moments m, v) whose gradient is grad: g' = grad + wd p;
    # m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
    # p -= step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps), step_size = lr / (1 - b1^t).
    # The new (p, m, v).
    step_size, bias2_sqrt, beta1, beta2, one_m_b1, one_m_b2, eps, weight_decay = h
    d = grad + weight_decay * p
    m = beta1 * m + one_m_b1 * d
    v = beta2 * v + one_m_b2 * (d * d)
    return p - step_size * (m / (math.sqrt(v) / bias2_sqrt + eps)), m, v


@njit(cache=True)
def _adam_hyper(p, step, lr, beta1, beta2, eps, weight_decay):
    # step t's constants for _adam_one, with 1 - b1 and 1 - b2, in p's dtype
    f = p.dtype.type
    return (f(lr / (1.0 - beta1**step)), f(math.sqrt(1.0 - beta2**step)), f(beta1), f(beta2),
            f(1.0 - beta1), f(1.0 - beta2), f(eps), f(weight_decay))


@njit(cache=True, fastmath=True, error_model="numpy")
def _adam_serial(p, g, m, v, h):
    # p, g, m, v are (size,): one fused pass
    for i in range(p.shape[0]):
        p[i], m[i], v[i] = _adam_one(p[i], m[i], v[i], g[i], h)


@njit(cache=True, fastmath=True, error_model="numpy", parallel=True)
def _adam_parallel(p, g, m, v, h):
    # p, g, m, v are (size,): one fused pass, split over threads
    for i in prange(p.shape[0]):
        p[i], m[i], v[i] = _adam_one(p[i], m[i], v[i], g[i], h)


@njit(cache=True)
def _adam_update(param, grad, m, v, h):
    # param, grad, m, v: one shape, any ndim; in place on param, m and v
    pf, gf, mf, vf = param.reshape(param.size), grad.reshape(grad.size), m.reshape(m.size), v.reshape(v.size)
    if pf.size >= PARALLEL_MIN_ELEMENTS:
        _adam_parallel(pf, gf, mf, vf, h)
    else:
        _adam_serial(pf, gf, mf, vf, h)


@njit(cache=True)
def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _adam_update(param, grad, m, v, _adam_hyper(param, step, lr, beta1, beta2, eps, weight_decay))


# ---------------------------------------------------------------- train_steps: the fused loop
#
# kernels/_steps.py's per_op, compiled: every step (gather, forward, loss, backward, update)
# calls the kernels above from jitted code, so a step at batch 1 costs its arithmetic and no
# Python. The layers are homogeneous tuples (one for weights, one for biases), indexed in
# loops; the activations and gradients are flat buffers, viewed at the step's row count (the
# last batch may be partial). Nothing is allocated inside the loop.
#
# One change of order, which changes no result: each layer's parameters are updated as soon
# as the backward pass is done with them (after its grad_x, which reads w), not all at the end;
# every update reads only its own parameter, gradient and state. That lets a step of one
# sample update the weights without writing their gradient at all (_outer_update).


@njit(cache=True, fastmath=True, error_model="numpy")
def _outer_update(a, g, p, s1, s2, adam, sgd_h, adam_h, use_velocity):
    # The optimizer's step on p (n_in, n_out) for one sample: its gradient is the outer
    # product a^T g (a (1, n_in), g (1, n_out)), each element computed where it is applied, so
    # the gradient is never written out. At a batch of one the weights are the step's largest
    # memory traffic: this reads and writes them once, where x^T g and then the update pass
    # write the gradient, read it back and read and write the weights. s1, s2: the state
    # shaped like p (velocity or Adam's m; Adam's v).
    # Measured, 784x128 float32, one thread: 7 us; x^T g then the update: 13 + 10 us. (A row of
    # the gradient summed over a batch of a few samples into an L1 buffer first ran at 10 to
    # 20 us: the stores to it and the loads of p that follow alias, depending on where the
    # buffer falls. Computing the next step's x @ w in the same pass did not pay either.)
    n_in, n_out = p.shape
    af, gf = a.reshape(a.size), g.reshape(g.size)
    pf, s1f, s2f = p.reshape(p.size), s1.reshape(s1.size), s2.reshape(s2.size)
    for i in range(n_in):
        a_i = af[U(i)]
        base = i * n_out
        if adam:
            for j in range(n_out):
                e = U(base + j)
                pf[e], s1f[e], s2f[e] = _adam_one(pf[e], s1f[e], s2f[e], a_i * gf[U(j)], adam_h)
        else:
            for j in range(n_out):
                e = U(base + j)
                pf[e], d = _sgd_one(pf[e], s1f[e], a_i * gf[U(j)], sgd_h, use_velocity)
                if use_velocity:
                    s1f[e] = d


@njit(cache=True)
def _update(param, grad, s1, s2, adam, sgd_h, adam_h, use_velocity):
    # the optimizer's step on one parameter, given its gradient
    if adam:
        _adam_update(param, grad, s1, s2, adam_h)
    else:
        _sgd_update(param, grad, s1, sgd_h, use_velocity)


GATHER_PARALLEL_MIN_BYTES = 32 * 1024  # a batch's gather splits between threads from here


@njit(cache=True)
def _gather_rows(x, labels, order, lo, r0, r1, xb, yb):
    # rows r0:r1 of the batch: xb (flat) [r] = x[order[lo + r]], yb[r] = labels[order[lo + r]]
    n = x.shape[1]
    xf = x.reshape(x.size)
    for i in range(r0, r1):
        src = order[lo + i]
        yb[i] = labels[src]
        for j in range(n):
            xb[U(i * n + j)] = xf[U(src * n + j)]


@njit(cache=True, parallel=True)
def _gather_parallel(x, labels, order, lo, rows, xb, yb, parts):
    per = (rows + parts - 1) // parts
    for part in prange(parts):
        _gather_rows(x, labels, order, lo, part * per, min((part + 1) * per, rows), xb, yb)


@njit(cache=True)
def _gather(x, labels, order, lo, rows, xb, yb, threads):
    # xb (flat) = x[order[lo : lo+rows]], yb = labels[order[lo : lo+rows]]. The rows come from
    # anywhere in x, mostly from DRAM, and one core's copy waits on one row's misses after
    # another, so from GATHER_PARALLEL_MIN_BYTES the threads split them: twice the misses in
    # flight (at batch 128, 65 us a step on one thread, 40 us on two; cython's measure).
    if threads > 1 and rows * x.shape[1] * x.itemsize >= GATHER_PARALLEL_MIN_BYTES:
        _gather_parallel(x, labels, order, lo, rows, xb, yb, min(threads, rows))
    else:
        _gather_rows(x, labels, order, lo, _runtime(0), rows, xb, yb)


@njit(cache=True, inline="always")
def _flat(a):
    # a C-contiguous array as 1-D: the update kernels are then compiled for one array type,
    # not once for the weights (2-D) and again for the biases (1-D)
    return a.reshape(a.size)


@njit(cache=True)
def _rows(buf, rows, n):
    # the first rows * n elements of a flat buffer, as a (rows, n) array
    return buf[:rows * n].reshape(rows, n)


@njit(cache=True)
def _train_steps(ws, bs, x, labels, order, batch, losses, adam, hyper, step, s1w, s1b, s2w, s2b,
                 use_velocity, xb, yb, acts, grads, gmask, gws, gbs, sums, threads, work,
                 act, drop, seed, threshold, scale, pres, far):
    # ws, bs: the layers' weights and biases; s1 (velocity, or Adam's m) and s2 (Adam's v) the
    # optimizer state shaped like them (ws and bs stand in where unused). xb, yb, acts[i],
    # grads[i]: flat buffers for one batch: its rows, labels, layer outputs and their gradients;
    # gmask: a layer's gradient through its activation; gws, gbs: the parameters' gradients.
    # act: the hidden layers' activation code; with drop, dropout (kernels/_layers.py's masks
    # from seed, threshold, scale) after each, pres[i] the output before it (acts[i] after).
    lr, momentum, weight_decay, beta1, beta2, eps = hyper
    sgd_h = _sgd_hyper(xb, lr, momentum, weight_decay)
    n_layers = len(ws)
    last = n_layers - 1
    n0 = x.shape[1]
    total = order.shape[0]
    yes, no, none = _runtime(True), _runtime(False), _runtime(ACT_NONE)
    no_bias = xb[:0]
    for k in range(losses.shape[0]):
        lo = k * batch
        rows = min(batch, total - lo)
        t = step + k + 1
        adam_h = _adam_hyper(xb, t, lr, beta1, beta2, eps, weight_decay)
        _gather(x, labels, order, lo, rows, xb, yb, threads)
        # forward: a_i = act(a_{i-1} @ w_i + b_i) (then dropout), the last layer without either
        a = _rows(xb, rows, n0)
        for i in range(n_layers):
            n_out = ws[i].shape[1]
            if drop and i < last:   # y_i into pres[i], d_i = dropout(y_i) into acts[i]
                _gemm(a, ws[i], _rows(pres[i], rows, n_out), no, no, bs[i], act, threads, work, far)
                dropout_flat(pres[i][:rows * n_out], acts[i][:rows * n_out], mask_key(seed, t, i + 1),
                             threshold, scale)
            else:
                _gemm(a, ws[i], _rows(acts[i], rows, n_out), no, no, bs[i], act if i < last else ACT_NONE,
                      threads, work, far)
            a = _rows(acts[i], rows, n_out)
        losses[k] = softmax_cross_entropy(a, yb[:rows], _rows(grads[last], rows, ws[last].shape[1]))
        # backward, last layer first, each layer's update as soon as it is done with
        for i in range(last, -1, -1):
            n_in, n_out = ws[i].shape
            a = _rows(xb, rows, n0) if i == 0 else _rows(acts[i - 1], rows, n_in)
            # the gradient at the pre-activation (through dropout's mask in place, then into
            # gmask past the activation), and db
            y = _rows(acts[i], rows, n_out)
            if drop and i < last:
                dropout_flat(grads[i][:rows * n_out], grads[i][:rows * n_out], mask_key(seed, t, i + 1),
                             threshold, scale)
                y = _rows(pres[i], rows, n_out)
            g = _bias_grad(_rows(grads[i], rows, n_out), y, gbs[i], act if i < last else ACT_NONE,
                           _rows(gmask, rows, n_out), sums)
            if i > 0:   # grad_x = g w^T, into the previous layer's gradient
                _gemm(g, ws[i], _rows(grads[i - 1], rows, n_in), no, yes, no_bias, none, threads, work, far)
            if rows == 1:
                _outer_update(a, g, ws[i], s1w[i], s2w[i], adam, sgd_h, adam_h, use_velocity)
            else:       # grad_w = a^T g, then the step
                _gemm(a, g, gws[i], yes, no, no_bias, none, threads, work, far)
                _update(_flat(ws[i]), _flat(gws[i]), _flat(s1w[i]), _flat(s2w[i]), adam, sgd_h, adam_h,
                        use_velocity)
            _update(bs[i], gbs[i], s1b[i], s2b[i], adam, sgd_h, adam_h, use_velocity)


def train_steps(params, x, labels, order, batch, losses, opt, hidden):
    # params [w1, b1, ..., wL, bL]; opt a kernels._steps.Optimizer; hidden a kernels._steps.Hidden
    # (activation code; dropout rate, seed, threshold, scale). The lists become tuples,
    # of one type per dtype and layer count whatever the optimizer: the parameters stand in
    # for state that is not there. The buffers for one batch are allocated once per call.
    if opt.kind == "adam":
        s1, s2 = opt.state                     # m, v
    elif opt.state is not None:
        s1, s2 = opt.state, params             # the velocities
    else:
        s1, s2 = params, params
    dtype, threads = x.dtype, _threads[0]
    rows = min(batch, order.shape[0])          # of the largest step
    sizes = [x.shape[1]] + [p.shape[1] for p in params[0::2]]
    xb, yb = np.empty(rows * sizes[0], dtype), np.empty(rows, np.int64)
    acts = tuple(np.empty(rows * n, dtype) for n in sizes[1:])
    drop = hidden.p > 0    # then each hidden layer's output before dropout has a buffer too
    pres = tuple(np.empty(rows * n, dtype) for n in sizes[1:]) if drop else acts
    grads = tuple(np.empty(rows * n, dtype) for n in sizes[1:])
    gmask = np.empty(rows * max(sizes[1:]), dtype)
    grad_params = [np.empty_like(p) for p in params]
    sums = _scratch_for("sums", np.dtype(np.float64), max(sizes))
    work = _scratch_for("work", dtype, max(
        max(_gemm_work_size(dtype, rows, n_out, n_in, threads),
            _backward_work_size(dtype, rows, n_in, n_out, threads))
        for n_in, n_out in zip(sizes, sizes[1:])))
    hyper = (opt.lr, opt.momentum, opt.weight_decay, opt.beta1, opt.beta2, opt.eps)
    _train_steps(tuple(params[0::2]), tuple(params[1::2]), x, labels, order, batch, losses,
                 opt.kind == "adam", hyper, opt.step, tuple(s1[0::2]), tuple(s1[1::2]),
                 tuple(s2[0::2]), tuple(s2[1::2]), opt.state is not None, xb, yb, acts, grads, gmask,
                 tuple(grad_params[0::2]), tuple(grad_params[1::2]), sums, threads, work,
                 int(hidden.act), drop, np.uint64(hidden.seed), np.uint64(hidden.threshold),
                 dtype.type(hidden.scale), pres, _gemm_range_address(dtype))
