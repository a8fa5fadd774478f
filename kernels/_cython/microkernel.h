/* microkernel.h: the register-blocked micro-kernels of kernels/_cython/fast.pxi and the
 * constants of its BLIS loops that do not depend on the CPU.
 *
 * Written with GCC vector extensions (a vector of VL_F32 floats / VL_F64 doubles = one
 * register of the path: zmm, ymm or a 16-byte xmm / q register) so that every `acc += a * b`
 * becomes one FMA on a whole register with the A element broadcast (from memory, on x86).
 * GCC and clang both take these extensions. What differs between CPUs, the vector width,
 * the register tile (MR x NR) and the cache blocks (KC, MC, NC), lives in the path's table,
 * isa/<path>.h, which isa.h picks for this build: setup.py compiles these kernels once per
 * path with that path's flags, and the set loads the one kernels._isa picks at run time.
 *
 *   MR x NR  the C tile held in registers: MR rows x NR / VL vectors, with room left for
 *            B's vectors and a broadcast of A, and enough independent accumulators to cover
 *            the FMA latency (4 cycles) times the FMA units.
 *   KC       depth of one packed block (the A and B micro-panels' length).
 *   MC       rows of one packed A block, which stays in L2 while loop 2 sweeps the B
 *            micro-panels past it; each thread packs its own block.
 *   NC       columns of one packed B block, shared by the threads from L3.
 * The small-size path (no packing) is taken while op(B) fits in half of L2
 * (DIRECT_MAX_B_BYTES); there B is read in place by every row strip and packing it cannot
 * pay for itself.
 */
#ifndef KERNELS_MICROKERNEL_H
#define KERNELS_MICROKERNEL_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "isa.h"
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* The edge buffer: a whole tile of either dtype. */
#define TILE_MAX (MR_F32 * NR_F32 > MR_F64 * NR_F64 ? MR_F32 * NR_F32 : MR_F64 * NR_F64)
#define PAR_MIN_FLOPS (1L << 19)           /* below ~0.5 MFLOP a matmul runs on one thread */
#define PAR_MIN_ELEMS (1L << 16)           /* elementwise ops go parallel from 64 Ki elements */
#define BLOCKS_PER_THREAD 4                /* matmul work items per thread, handed out dynamically */
/* ... but no row block (LOOP 3) under 64 rows, rounded up to whole MR-row strips */
#define MIN_BLOCK_ROWS ((64 + MR_F32 - 1) / MR_F32 * MR_F32)
_Static_assert(MR_F32 == MR_F64, "MIN_BLOCK_ROWS assumes one MR for both dtypes");
_Static_assert(MC_F32 % MR_F32 == 0 && MC_F64 % MR_F64 == 0, "MC is whole MR-row strips");
_Static_assert(NR_F32 % (2 * VL_F32) == 0 && NR_F64 % (2 * VL_F64) == 0,
               "NR and the narrow kernels' NR / 2 are whole vectors");
#define UPDATE_CHUNK_BYTES (16 * 1024)     /* train_steps: a chunk of dW, in L1 for the update */
#define GATHER_PAR_MIN_BYTES (16 * 1024)   /* train_steps: its batch gather splits from 32 KiB */

/* Blocked (ladder step 2): cache blocks of plain loops, no packing, no micro-kernel. */
#define BLOCKED_NB 256                     /* C / B columns per block: a 1 KiB row of C in L1 */
#define BLOCKED_KB 128                     /* depth per block: KB rows of B (128 KiB) in L2 */

/* Unaligned vectors of the path's width (aligned(4) lets the compiler use vmovups on any
 * address). */
typedef float vf32 __attribute__((vector_size(VECTOR_BYTES), aligned(4)));
typedef double vf64 __attribute__((vector_size(VECTOR_BYTES), aligned(8)));
typedef int vi32 __attribute__((vector_size(VECTOR_BYTES), aligned(4)));
typedef long long vi64 __attribute__((vector_size(VECTOR_BYTES), aligned(8)));

/* The epilogue's activation (the kernels' ``relu`` argument; kernels/_layers.py's codes):
 * 0 none, 1 ReLU, 2 tanh (vtanh.h). */
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_TANH 2
#include "vtanh.h"

/* 64-byte aligned scratch (packing buffers); free with kernels_free. */
static inline void *kernels_alloc(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
}
static inline void kernels_free(void *p) { free(p); }

/* Loops over an array of vectors meant to live in registers (the micro-kernels' tile of
 * accumulators, the transpose's rows) must be unrolled before GCC's scalar replacement pass,
 * or the array stays in memory: for the tile, zeroed on the stack, kept in registers only
 * inside the k loop and stored back for the epilogue, which at kc = 1 (a batch of 1) doubled
 * a tile's cost. GCC unrolls the tile's other loops in time by itself. */
#define UNROLL _Pragma("GCC unroll 8")
#define UNROLL_ALL _Pragma("GCC unroll 16")

/* TRANSPOSE: defines NAME(src, lds, dst, ldd), dst[c * ldd + r] = src[r * lds + c] for one
 * VL x VL block, through registers: VL row loads, log2(VL) rounds of two-source shuffles (the
 * round for b swaps the b-element blocks between rows i and i + b: row i keeps the first
 * block of every pair, row i + b the second), VL stores. For pack()'s transposes: one
 * element at a time, the panel's stores land NR elements apart, a line each. */
#if defined(__clang__)
/* clang has no two-source shuffle with a run-time index vector (GCC's __builtin_shuffle;
 * clang's __builtin_shufflevector takes constants only): the block a lane at a time, which
 * clang vectorises as far as it can. pack()'s transposes are a small part of a product. */
#define TRANSPOSE(NAME, T, V, VI, VL, IOTA)                                               \
static inline void NAME(const T *restrict src, long lds, T *restrict dst, long ldd)       \
{                                                                                         \
    for (int c = 0; c < VL; ++c)                                                          \
        for (int r = 0; r < VL; ++r)                                                      \
            dst[c * ldd + r] = src[r * lds + c];                                          \
}
#else
#define TRANSPOSE(NAME, T, V, VI, VL, IOTA)                                               \
static inline void NAME(const T *restrict src, long lds, T *restrict dst, long ldd)       \
{                                                                                         \
    V r[VL];                                                                              \
    UNROLL_ALL for (int i = 0; i < VL; ++i)                                               \
        r[i] = *(const V *)(src + i * lds);                                               \
    UNROLL_ALL for (int b = VL / 2; b; b /= 2) {                                          \
        /* lane e of row i: its own lane e, or lane e - b of row i + b; of row i + b: */  \
        /* lane e + b of row i, or its own lane e (an index >= VL picks the 2nd vector) */\
        const VI e = IOTA, from_second = (e & b) != 0;                                    \
        const VI lo = e + (from_second & (VL - b)), hi = lo + b;                          \
        UNROLL_ALL for (int i = 0; i < VL; ++i)                                           \
            if (!(i & b)) {                                                               \
                V x = r[i], y = r[i + b];                                                 \
                r[i] = __builtin_shuffle(x, y, lo);                                       \
                r[i + b] = __builtin_shuffle(x, y, hi);                                   \
            }                                                                             \
    }                                                                                     \
    UNROLL_ALL for (int i = 0; i < VL; ++i)                                               \
        *(V *)(dst + i * ldd) = r[i];                                                     \
}
#endif


/* Pieces of every micro-kernel below, written once. They use the enclosing kernel's
 * operands by name: a, rsa, csa (A(i, p) = a[i * rsa + p * csa]), b, rsb (B rows b + p * rsb),
 * c, ldc, bias and relu (the activation code: ACT_NONE, ACT_RELU or ACT_TANH).
 * TILE_STEP(T, V, VL, MR, NR, ACC, P, A_AT): one k step, ACC[i][:] += A(i, P) B(P, :), with
 * A(i, p) = A_AT(i, p): A_STRIDED, or A_ROWS for a tile whose rows are scattered (arow[i]).
 * TILE_EPILOGUE(V, VI, VL, MR, NR, ACC, C_ROW): bias, then ReLU or tanh, then the store of ACC into
 * the rows C_ROW(i) of C (C_STRIDED or C_ROWS), one branch per step for the whole tile: with
 * the branches inside the element loop GCC spilled all 16 accumulators to the stack to share
 * them between paths, which doubled the cost of a tile at small kc (a batch of 1's
 * dW = x^T g). */
#define A_STRIDED(i, p) a[(i) * rsa + (p) * csa]
#define A_ROWS(i, p) arow[i][p]
#define C_STRIDED(i) (c + (i) * ldc)
#define C_ROWS(i) (crow[i])
#define TILE_STEP(T, V, VL, MR, NR, ACC, P, A_AT)                                          \
    do {                                                                                  \
        V brow[NR / VL];                                                                  \
        for (int v = 0; v < NR / VL; ++v)                                                 \
            brow[v] = *(const V *)(b + (P) * rsb + v * VL);                               \
        UNROLL for (int i = 0; i < MR; ++i) {                                             \
            T aip = A_AT(i, (P));                                                         \
            for (int v = 0; v < NR / VL; ++v)                                             \
                ACC[i][v] += aip * brow[v];                                               \
        }                                                                                 \
    } while (0)
#define TILE_EPILOGUE(V, VI, VL, MR, NR, ACC, C_ROW)                                       \
    do {                                                                                  \
        if (bias)                                                                         \
            UNROLL for (int i = 0; i < MR; ++i)                                           \
                for (int v = 0; v < NR / VL; ++v)                                         \
                    ACC[i][v] += *(const V *)(bias + v * VL);                             \
        if (relu == ACT_RELU)                                                             \
            UNROLL for (int i = 0; i < MR; ++i)                                           \
                for (int v = 0; v < NR / VL; ++v)                                         \
                    ACC[i][v] = (V)((VI)ACC[i][v] & (VI)(ACC[i][v] > 0));                 \
        else if (relu == ACT_TANH)                                                        \
            UNROLL for (int i = 0; i < MR; ++i)                                           \
                for (int v = 0; v < NR / VL; ++v)                                         \
                    ACC[i][v] = VTANH(ACC[i][v]);                                         \
        UNROLL for (int i = 0; i < MR; ++i)                                               \
            for (int v = 0; v < NR / VL; ++v)                                             \
                *(V *)(C_ROW(i) + v * VL) = ACC[i][v];                                    \
    } while (0)

/* UKR(T, V, VL, MR, NR): defines ukr_<T>_strided, the MR x NR micro-kernel
 *
 *     C[0:MR, 0:NR] = (accumulate ? C : 0) + sum_{p < kc} A(:, p) B(p, :)   (+ bias) (ReLU)
 *
 * with A(i, p) = a[i * rsa + p * csa] (any strides: packed, row-major or transposed) and
 * B(p, j) = b[p * rsb + j] (rows of NR contiguous elements: a packed micro-panel, or a
 * row-major matrix read in place). C has row stride ldc. bias (NR elements) is NULL or
 * added in the epilogue, before the ReLU, while the tile is still in registers.
 * KU > 1 splits k into KU interleaved sums, for tiles too small (1 or 2 rows) to keep enough
 * independent FMAs in flight to cover their 4-cycle latency otherwise. */
#define UKR(NAME, T, V, VI, VL, MR, NR, KU)                                                 \
static inline __attribute__((always_inline)) void                                         \
NAME##_strided(long kc, const T *restrict a, long rsa, long csa,                          \
               const T *restrict b, long rsb, T *restrict c, long ldc,                    \
               int accumulate, const T *restrict bias, int relu)                          \
{                                                                                         \
    V acc[KU][MR][NR / VL];                                                               \
    /* C's rows are needed only after the k loop: ask for their lines now (BLIS's kernels */ \
    /* do), so that a tile's loads and stores of C do not wait on misses at the end. */    \
    UNROLL for (int i = 0; i < MR; ++i) {                                                 \
        __builtin_prefetch(c + i * ldc, 1);                                               \
        __builtin_prefetch(c + i * ldc + NR - 1, 1);                                      \
    }                                                                                     \
    UNROLL for (int u = 0; u < KU; ++u)                                                          \
        UNROLL for (int i = 0; i < MR; ++i)                                                      \
            for (int v = 0; v < NR / VL; ++v)                                             \
                acc[u][i][v] = (V){0};                                                    \
    long p = 0;                                                                           \
    for (; p + KU <= kc; p += KU)                                                         \
        UNROLL for (int u = 0; u < KU; ++u)                                               \
            TILE_STEP(T, V, VL, MR, NR, acc[u], p + u, A_STRIDED);                        \
    for (; p < kc; ++p)                                                                   \
        TILE_STEP(T, V, VL, MR, NR, acc[0], p, A_STRIDED);                                \
    UNROLL for (int u = 1; u < KU; ++u)                                                          \
        UNROLL for (int i = 0; i < MR; ++i)                                                      \
            for (int v = 0; v < NR / VL; ++v)                                             \
                acc[0][i][v] += acc[u][i][v];                                             \
    if (accumulate)                                                                       \
        UNROLL for (int i = 0; i < MR; ++i)                                               \
            for (int v = 0; v < NR / VL; ++v)                                             \
                acc[0][i][v] += *(const V *)(c + i * ldc + v * VL);                       \
    TILE_EPILOGUE(V, VI, VL, MR, NR, acc[0], C_STRIDED);                                  \
}                                                                                         \
/* A and B packed by matmul.pxi's pack(): A micro-panel kc x MR, B micro-panel kc x NR. */  \
static __attribute__((unused)) void NAME##_packed(long kc, const T *restrict a, const T *restrict b,         \
                             T *restrict c, long ldc, int accumulate,                     \
                             const T *restrict bias, int relu)                            \
{                                                                                         \
    NAME##_strided(kc, a, 1, MR, b, NR, c, ldc, accumulate, bias, relu);               \
}                                                                                         \
/* A and B read in place (the small-size path): any A strides, B rows of stride rsb. */   \
static __attribute__((unused)) void NAME##_direct(long kc, const T *restrict a, long rsa, long csa,           \
                             const T *restrict b, long rsb, T *restrict c, long ldc,      \
                             int accumulate, const T *restrict bias, int relu)            \
{                                                                                         \
    NAME##_strided(kc, a, rsa, csa, b, rsb, c, ldc, accumulate, bias, relu);           \
}

UKR(ukr_float, float, vf32, vi32, VL_F32, MR_F32, NR_F32, 1)
UKR(ukr_double, double, vf64, vi64, VL_F64, MR_F64, NR_F64, 1)
/* Half-width tiles (MR x NR/2, one vector per row) for a last column strip at most NR/2 wide,
 * such as the MLP's 10 output classes: 37% of the lanes wasted instead of 69%. */
UKR(ukr_float_narrow, float, vf32, vi32, VL_F32, MR_F32, NR_F32 / 2, 1)
UKR(ukr_double_narrow, double, vf64, vi64, VL_F64, MR_F64, NR_F64 / 2, 1)
/* 4-, 2- and 1-row tiles for the last rows of the small-size path (mr < MR: the batch of 1 a
 * trainer sees at inference, or 7 = 4 + 2 + 1 left over): padding those rows to MR would do
 * MR / mr times the work, and a batch of one would run eight times the FMAs it needs. */
UKR(ukr_float_r4, float, vf32, vi32, VL_F32, 4, NR_F32, 1)
UKR(ukr_float_r2, float, vf32, vi32, VL_F32, 2, NR_F32, 2)
UKR(ukr_float_r1, float, vf32, vi32, VL_F32, 1, NR_F32, 4)
UKR(ukr_double_r4, double, vf64, vi64, VL_F64, 4, NR_F64, 1)
UKR(ukr_double_r2, double, vf64, vi64, VL_F64, 2, NR_F64, 2)
UKR(ukr_double_r1, double, vf64, vi64, VL_F64, 1, NR_F64, 4)

/* UKR_SKIP(NAME, T, UT, V, VI, VL, MR, NR, MAGNITUDE): products that skip the exact zeros
 * of an input (the background pixels of an image), for a training step's first layer.
 *
 * NAME(nk, idx, a, rsa, csa, b, rsb, c, ldc, bias, relu) is the full MR x NR tile
 *
 *     C[0:MR, 0:NR] = sum over p in idx[0:nk] of A(:, p) B(p, :)   (+ bias) (ReLU)
 *
 * with A(i, p) = a[i * rsa + p * csa] and B rows b + p * rsb: the dense micro-kernel's k
 * steps in the same order, those not listed left out. A listing leaves out only steps whose
 * MR values of A are all zero, each of which is acc += 0 * b: every sum stays as it was (up
 * to the sign of a zero sum, and unless b is infinite or NaN, where the dense kernel would
 * make a NaN). The rows of B that the list jumps between are prefetched SKIP_PREFETCH steps
 * ahead: the dense kernel walks B at a fixed stride, which the hardware prefetcher follows,
 * and a list does not (at batch 128 the first layer's x^T g took 150 us a step with the
 * dense kernel, 138 skipping without the prefetch and 124 with it).
 * NAME##_scattered(nk, idx, arow, b, rsb, crow, bias, relu) is the same tile with its rows
 * anywhere: A(i, p) = arow[i][p], row i of C at crow[i]. The forward pass picks its strips'
 * rows (train_steps.pxi's forward_strips): each row's sums are its own, so any grouping of rows
 * gives the same C, and rows alike in their zeros make longer skips.
 *
 * The listings, of the steps p whose MR values are not all zero (of either sign: the bits
 * under MAGNITUDE, one element's):
 *   NAME##_rows(x, ldx, batch, idx): the rows p of x for A = x^T (the weight gradient x^T g,
 *       A(i, p) = x[p * ldx + i]: MR adjacent elements, OR-ed 64 bits at a time);
 *   NAME##_cols(rows, k, idx): the columns p < k at which the MR rows rows[i] are not all
 *       zero, for A = x (the forward product x @ w): a flag per column, in a loop that
 *       vectorises, then the flags compacted into the list in place. */
#define SKIP_PREFETCH 8
/* A skip tile's k step: its MR values of A broadcast first, then B a vector at a time, each
 * used by every row as it is loaded (or read by the FMA from memory). TILE_STEP's order
 * (all of B's row, then a row of A at a time) held 4 vectors of B at once, and in 16 ymm
 * registers the avx2 path's 12 accumulators then spilled one to the stack every step. The
 * same FMAs on the same accumulators: the same sums, bit for bit. */
#define SKIP_STEP(T, V, VL, MR, NR, ACC, P, A_AT)                                          \
    do {                                                                                  \
        T as[MR];                                                                         \
        UNROLL for (int i = 0; i < MR; ++i)                                               \
            as[i] = A_AT(i, (P));                                                         \
        UNROLL for (int v = 0; v < NR / VL; ++v) {                                        \
            const V bv = *(const V *)(b + (P) * rsb + v * VL);                            \
            UNROLL for (int i = 0; i < MR; ++i)                                           \
                ACC[i][v] += as[i] * bv;                                                  \
        }                                                                                 \
    } while (0)
#define SKIP_TILE(T, V, VI, VL, MR, NR, A_AT, C_ROW)                                       \
    do {                                                                                  \
        V acc[MR][NR / VL];                                                               \
        UNROLL for (int i = 0; i < MR; ++i)                                               \
            for (int v = 0; v < NR / VL; ++v)                                             \
                acc[i][v] = (V){0};                                                       \
        for (long q = 0; q < nk; ++q) {                                                   \
            const long p = idx[q];                                                        \
            if (q + SKIP_PREFETCH < nk)                                                   \
                for (int l = 0; l < NR * (int)sizeof(T); l += 64)                         \
                    __builtin_prefetch((const char *)(b + idx[q + SKIP_PREFETCH] * rsb) + l); \
            SKIP_STEP(T, V, VL, MR, NR, acc, p, A_AT);                                    \
        }                                                                                 \
        TILE_EPILOGUE(V, VI, VL, MR, NR, acc, C_ROW);                                     \
    } while (0)
#define UKR_SKIP(NAME, T, UT, V, VI, VL, MR, NR, MAGNITUDE)                                \
static inline long NAME##_rows(const T *restrict x, long ldx, long batch, int *restrict idx) \
{                                                                                         \
    const unsigned long long mask = (unsigned long long)(MAGNITUDE)                       \
                                    | (unsigned long long)(MAGNITUDE) << (8 * sizeof(T) % 64); \
    long nk = 0;                                                                          \
    for (long p = 0; p < batch; ++p) {                                                    \
        unsigned long long bits = 0;                                                      \
        UNROLL for (int i = 0; i < MR * (int)sizeof(T) / 8; ++i) {                        \
            unsigned long long w;                                                         \
            memcpy(&w, (const char *)(x + p * ldx) + 8 * i, 8);                           \
            bits |= w;                                                                    \
        }                                                                                 \
        idx[nk] = (int)p;                       /* kept only if counted */                \
        nk += (bits & mask) != 0;                                                         \
    }                                                                                     \
    return nk;                                                                            \
}                                                                                         \
static inline long NAME##_cols(const T *const *rows, long k, int *restrict idx)           \
{                                                                                         \
    for (long p = 0; p < k; ++p) {                                                        \
        UT bits = 0;                                                                      \
        UNROLL for (int i = 0; i < MR; ++i) {                                             \
            UT w;                                                                         \
            memcpy(&w, rows[i] + p, sizeof w);                                            \
            bits |= w;                                                                    \
        }                                                                                 \
        idx[p] = (bits & (MAGNITUDE)) != 0;                                               \
    }                                                                                     \
    long nk = 0;                                                                          \
    for (long p = 0; p < k; ++p) {              /* nk <= p: idx[p] is read first */       \
        const int keep = idx[p];                                                          \
        idx[nk] = (int)p;                                                                 \
        nk += keep;                                                                       \
    }                                                                                     \
    return nk;                                                                            \
}                                                                                         \
static inline void NAME(long nk, const int *restrict idx, const T *restrict a, long rsa,  \
                        long csa, const T *restrict b, long rsb, T *restrict c, long ldc, \
                        const T *restrict bias, int relu)                                 \
{                                                                                         \
    SKIP_TILE(T, V, VI, VL, MR, NR, A_STRIDED, C_STRIDED);                                \
}                                                                                         \
static inline void NAME##_scattered(long nk, const int *restrict idx,                     \
                                    const T *const *arow, const T *restrict b, long rsb,  \
                                    T *const *crow, const T *restrict bias, int relu)     \
{                                                                                         \
    SKIP_TILE(T, V, VI, VL, MR, NR, A_ROWS, C_ROWS);                                      \
}

/* The skip kernels' tiles are MR/2 rows by 2 NR: as many accumulators as the dense tile's
 * (16 zmm), the same 16 FMAs per k step, but a k step is left out when 4 values of A are
 * zero rather than 8, which happens far more often. Of a batch of 128 Fashion-MNIST images
 * (a random one, averaged over 100): in the forward pass x @ w, 13% of the (8 samples,
 * pixel) steps are all zero and 21% of the (4 samples, pixel) ones; in x^T g, 28% of the
 * (sample, 8 pixels) and 38% of the (sample, 4 pixels). Two rows (33% and 45%) would skip
 * more again, but then a k step loads a 512-byte row of B for its 16 FMAs, 32 bytes a
 * cycle from L2, where the 4-row tile needs 16. The tiles cover only the dense kernel's full
 * strips of MR rows (SKIP_MR divides MR), and their sums run in the dense kernel's order:
 * the rows under MR go to the dense path, whose 2- and 1-row tiles split k into interleaved
 * sums, so that each C element is the dense product's to the bit. */
#define SKIP_MR_MAX 8                      /* (room for a tile's row pointers) */
#define SKIP_MR_F32 (MR_F32 / 2)
#define SKIP_NR_F32 (NR_F32 * 2)
#define SKIP_MR_F64 (MR_F64 / 2)
#define SKIP_NR_F64 (NR_F64 * 2)
_Static_assert(SKIP_MR_F32 <= SKIP_MR_MAX && SKIP_MR_F64 <= SKIP_MR_MAX, "SKIP_MR_MAX");
UKR_SKIP(ukr_float_skip, float, unsigned int, vf32, vi32, VL_F32, SKIP_MR_F32, SKIP_NR_F32,
         0x7fffffffu)
UKR_SKIP(ukr_double_skip, double, unsigned long long, vf64, vi64, VL_F64, SKIP_MR_F64, SKIP_NR_F64,
         0x7fffffffffffffffull)

/* The float32 lists, 16 values at a time with AVX-512 (a test for nonzero magnitudes, then
 * VPCOMPRESSD packs the kept indices together; a register compress and a masked store, as
 * the compress straight to memory is slow on Zen 4), or one at a time without it. Built the
 * scalar way (the _rows and _cols above), a batch-128 step's lists took 35 us of one core's
 * time in groups of 4 (28 in groups of 8); these take 17, about the time it takes to read
 * the 400 KB batch from L2 twice. Groups are SKIP_MR_F32 wide.
 *   skip_cols_f32(rows, k, idx): the columns p < k at which the rows rows[i] are not all
 *       zero (the forward product's list, as ukr_float_skip_cols);
 *   skip_masks_f32(x, ldx, batch, width, masks): masks[p] bit j set when x[p * ldx + j] is
 *       not zero, for j < width <= 32 (AVX-512: 16 columns a test, AVX2: 8 a compare and
 *       movemask; otherwise only the first bit of each group, set when one of its columns is
 *       not zero): the nonzero pattern of a sample's next 32
 *       pixels, read once for the lists of the strips of x^T g that cover them;
 *   skip_samples_f32(masks, batch, group, idx): the samples p whose masks[p] has a bit of
 *       group set (one strip's list of x^T g, as ukr_float_skip_rows). */
#define SKIP_MAGNITUDE_F32 0x7fffffffu
#if defined(__AVX512F__)
/* The first n of 16 lanes (all of them from n = 16). */
static inline __mmask16 first_lanes(long n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}
/* Appends the lanes of ids that keep selects, in order, at idx + nk; the new count. */
static inline long append_kept(int *restrict idx, long nk, __mmask16 keep, __m512i ids)
{
    const int kept = __builtin_popcount(keep);
    _mm512_mask_storeu_epi32(idx + nk, first_lanes(kept), _mm512_maskz_compress_epi32(keep, ids));
    return nk + kept;
}
#endif
static inline long skip_cols_f32(const float *const *rows, long k, int *restrict idx)
{
#if defined(__AVX512F__)
    const __m512i magnitude = _mm512_set1_epi32(SKIP_MAGNITUDE_F32);
    const __m512i sixteen = _mm512_set1_epi32(16);
    __m512i cols = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    long nk = 0;
    for (long p = 0; p < k; p += 16) {
        const __mmask16 lanes = first_lanes(k - p);
        __m512i bits = _mm512_setzero_si512();
        UNROLL for (int i = 0; i < SKIP_MR_F32; ++i)
            bits = _mm512_or_si512(bits, _mm512_maskz_loadu_epi32(lanes, rows[i] + p));
        nk = append_kept(idx, nk, _mm512_test_epi32_mask(bits, magnitude), cols);
        cols = _mm512_add_epi32(cols, sixteen);
    }
    return nk;
#else
    return ukr_float_skip_cols(rows, k, idx);
#endif
}
static inline void skip_masks_f32(const float *restrict x, long ldx, long batch, int width,
                                  unsigned *restrict masks)
{
#if defined(__AVX512F__)
    const __m512i magnitude = _mm512_set1_epi32(SKIP_MAGNITUDE_F32);
    const __mmask16 lo = first_lanes(width), hi = width > 16 ? first_lanes(width - 16) : 0;
    for (long p = 0; p < batch; ++p) {
        const float *row = x + p * ldx;
        const unsigned a = _mm512_test_epi32_mask(_mm512_maskz_loadu_epi32(lo, row), magnitude);
        const unsigned b = _mm512_test_epi32_mask(_mm512_maskz_loadu_epi32(hi, row + 16),
                                                  magnitude);
        masks[p] = a | b << 16;
    }
#elif defined(__AVX2__)                 /* 8 columns a compare, their signs gathered by */
    const __m256i magnitude = _mm256_set1_epi32(SKIP_MAGNITUDE_F32);   /* movemask */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), zero = _mm256_setzero_si256();
    __m256i in_row[4];                  /* the lanes under width: maskload reads no others */
    for (int q = 0; q < 4; ++q)
        in_row[q] = _mm256_cmpgt_epi32(_mm256_set1_epi32(width - 8 * q), lane);
    for (long p = 0; p < batch; ++p) {
        const float *row = x + p * ldx;
        unsigned m = 0;
        for (int q = 0; q < 4 && 8 * q < width; ++q) {
            const __m256i v = _mm256_castps_si256(_mm256_maskload_ps(row + 8 * q, in_row[q]));
            const __m256i is_zero = _mm256_cmpeq_epi32(_mm256_and_si256(v, magnitude), zero);
            m |= (unsigned)(~_mm256_movemask_ps(_mm256_castsi256_ps(is_zero)) & 0xff) << (8 * q);
        }
        masks[p] = m & (width >= 32 ? ~0u : (1u << width) - 1);
    }
#else                                   /* one bit per group: a bit per column costs more */
    for (long p = 0; p < batch; ++p) {  /* than it saves without vectors */
        unsigned m = 0;
        for (int j = 0; j < width; j += SKIP_MR_F32) {
            unsigned bits = 0;
            for (int i = j; i < j + SKIP_MR_F32 && i < width; ++i) {
                unsigned w;
                memcpy(&w, x + p * ldx + i, sizeof w);
                bits |= w;
            }
            m |= (unsigned)((bits & SKIP_MAGNITUDE_F32) != 0) << j;
        }
        masks[p] = m;
    }
#endif
}
static inline long skip_samples_f32(const unsigned *restrict masks, long batch, unsigned group,
                                    int *restrict idx)
{
    long nk = 0;
#if defined(__AVX512F__)
    const __m512i bits = _mm512_set1_epi32((int)group);
    const __m512i sixteen = _mm512_set1_epi32(16);
    __m512i samples = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (long p = 0; p < batch; p += 16) {
        const __m512i m = _mm512_maskz_loadu_epi32(first_lanes(batch - p), masks + p);
        nk = append_kept(idx, nk, _mm512_test_epi32_mask(m, bits), samples);
        samples = _mm512_add_epi32(samples, sixteen);
    }
#else
    for (long p = 0; p < batch; ++p) {
        idx[nk] = (int)p;
        nk += (masks[p] & group) != 0;
    }
#endif
    return nk;
}

TRANSPOSE(transpose_f32, float, vf32, vi32, VL_F32, IOTA_F32)
TRANSPOSE(transpose_f64, double, vf64, vi64, VL_F64, IOTA_F64)

#endif
