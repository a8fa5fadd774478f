/* sweep.h: train_steps' one pass over a layer's weights a step, at a batch of one sample.
 *
 * At batch 1 the arithmetic of a step is tiny (0.45 MFLOP for 784-128-64-10) and what costs
 * is memory: the weights (the first layer's are 784 x 128 float32, 401 KB) and the
 * optimizer's state beside them (SGD's velocity, or Adam's m and v). Done op by op, the
 * forward pass reads w, dx = g w^T reads it again, and the update reads and writes w and its
 * state. Here one sweep does the update and the forward pass: for each row of w it applies
 * the previous sample's update (the weight gradient is the outer product x_prev^T g_prev,
 * each element computed where it is used and never stored) and accumulates the next
 * sample's x_next @ w from the updated row while it is still in L1, in registers that stay
 * there for the whole sweep. The update of step k is deferred to step k + 1's forward pass,
 * the first thing that reads the new w.
 *
 * The sweep is over a range of rows [r0, r1), so that threads can share it: each gets a
 * contiguous block of rows, kept in its own core's L2 from one step to the next, and writes a
 * partial sum of the forward product (the caller adds them). Measured, 784 x 128 float32
 * SGD on this machine: this sweep, one thread, 7.6 us; two threads, 5.2 us (SGD momentum: 11
 * and 8 us); the forward pass then the update, one thread, 14 us. Splitting by columns
 * instead (each thread a half of every row) ran at 10 to 190 us: the cores' prefetchers then
 * pull lines that the other core is writing, and the lines go back and forth between the
 * two L2 caches.
 *
 * The update's arithmetic is sgd_range's and adam_range's (optim.pxi), on the gradient
 * element x_prev[i] * g_prev[j]; the forward sums run in another order than the
 * micro-kernel's, so the results match the op-by-op path to rounding.
 */
#ifndef KERNELS_SWEEP_H
#define KERNELS_SWEEP_H

#include <math.h>
#include "microkernel.h"

/* The optimizer step of kernels._steps.Optimizer at step t (train_steps.pxi fills it). */
typedef struct {
    int adam;                            /* else SGD */
    long t;                              /* the step, counted from 1 (Adam's bias corrections) */
    double lr, momentum, weight_decay;   /* SGD's; weight_decay is Adam's too */
    double beta1, beta2, eps;            /* Adam's */
    double step_size, inv_bc2_sqrt;      /* Adam's at t: lr / (1 - b1^t), 1 / sqrt(1 - b2^t) */
} Update;

/* SWEEP_BLOCK, the vectors of the forward product held in registers, is the path's
 * (isa/<path>.h): with g's vectors beside them, two per register file's 16 or 32. */
#define SWEEP_PAR_MIN (1L << 15)         /* weights (elements) from which the sweep is split */

/* NAME##_rows(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1): for the rows i in [r0, r1) of w
 * (row-major, n_out wide): when xp is not NULL, u's step on w[i, :] with the gradient
 * xp[i] * g[:] (s1: SGD's velocity or NULL, or Adam's m; s2: Adam's v); then, when xn is
 * not NULL, h[:] = sum over the rows of xn[i] * w[i, :] (h: n_out, written, not added to).
 * Columns go in blocks of SWEEP_BLOCK vectors, one sweep over the rows each, the block's
 * product in registers; the columns past the last whole vector are summed in scalars.
 * SGD's whole vectors take a path with every vector in registers and the loop over a row's
 * vectors unrolled; the general loops cost 1.5x at 784 x 128, where the per-row overhead is
 * paid 784 times for 8 vectors of work.
 *
 * NAME##_backward(w, g, out, n_in, n_out): out[r] = w[r, :] . g for r < n_in: the gradient
 * through a layer at a batch of one (g w^T), four rows at a time. */
/* The scalar part of u's step on row i of w, columns [j0, c1) (all of a row for Adam). */
#define SWEEP_SCALAR_UPDATE(T, SQRT)                                                        \
    if (u->adam) {                                                                           \
        T *restrict mr = s1 + i * n_out, *restrict vr = s2 + i * n_out;                      \
        for (long j = j0; j < c1; j++) {                                                     \
            T d = a * g[j] + wd * wr[j];                                                     \
            mr[j] = beta1 * mr[j] + (1 - beta1) * d;                                         \
            vr[j] = beta2 * vr[j] + (1 - beta2) * (d * d);                                   \
            wr[j] -= step_size * (mr[j] / (SQRT(vr[j]) * inv_bc2_sqrt + eps));               \
        }                                                                                    \
    } else if (s1 != NULL) {                                                                 \
        T *restrict vr = s1 + i * n_out;                                                     \
        for (long j = j0; j < c1; j++) {                                                     \
            vr[j] = momentum * vr[j] + (a * g[j] + wd * wr[j]);                              \
            wr[j] -= lr * vr[j];                                                             \
        }                                                                                    \
    } else {                                                                                 \
        for (long j = j0; j < c1; j++)                                                       \
            wr[j] -= lr * (a * g[j] + wd * wr[j]);                                           \
    }

/* Row i's term of the product: acc += xn[i] * w[i, c0:cv], tail += the same past cv. */
#define SWEEP_PRODUCT(T, V, VL)                                                               \
    if (xn != NULL) {                                                                        \
        const T x = xn[i];                                                                   \
        UNROLL for (int k = 0; k < SWEEP_BLOCK; k++)                                         \
            if (k < nv) acc[k] += x * *(const V *)(wr + c0 + k * VL);                        \
        for (long j = cv; j < c1; j++) tail[j - cv] += x * wr[j];                            \
    }

#define SWEEP(NAME, T, V, VL, SQRT)                                                          \
/* One block of columns [c0, c1), nv whole vectors from c0: a constant where it is inlined. \
 * Each case has its own loop over the rows, so that each gets all the registers. */         \
static inline __attribute__((always_inline)) void                                            \
NAME##_block(const Update *u, const T *xp, const T *g, T *w, T *s1, T *s2, const T *xn,     \
             T *h, long n_out, long r0, long r1, long c0, long c1, const int nv)             \
{                                                                                            \
    const T lr = (T)u->lr, momentum = (T)u->momentum, wd = (T)u->weight_decay;              \
    const T beta1 = (T)u->beta1, beta2 = (T)u->beta2, eps = (T)u->eps;                      \
    const T step_size = (T)u->step_size, inv_bc2_sqrt = (T)u->inv_bc2_sqrt;                 \
    const long cv = c0 + nv * VL;                               /* where the scalars start */\
    V acc[SWEEP_BLOCK], gv[SWEEP_BLOCK];                                                     \
    T tail[VL];                                                                              \
    UNROLL for (int k = 0; k < SWEEP_BLOCK; k++) {                                           \
        acc[k] = (V){0};                                                                     \
        gv[k] = xp != NULL && k < nv ? *(const V *)(g + c0 + k * VL) : (V){0};               \
    }                                                                                        \
    for (int k = 0; k < VL; k++) tail[k] = 0;                                                \
    if (xp != NULL && !u->adam && s1 != NULL) {             /* SGD with momentum */          \
        for (long i = r0; i < r1; i++) {                                                     \
            T *restrict wr = w + i * n_out, *restrict vr = s1 + i * n_out;                   \
            const T a = xp[i];                                                               \
            UNROLL for (int k = 0; k < SWEEP_BLOCK; k++) if (k < nv) {                       \
                V wk = *(V *)(wr + c0 + k * VL);                                             \
                V vk = momentum * *(V *)(vr + c0 + k * VL) + (a * gv[k] + wd * wk);          \
                *(V *)(vr + c0 + k * VL) = vk;                                               \
                *(V *)(wr + c0 + k * VL) = wk - lr * vk;                                     \
            }                                                                                \
            const long j0 = cv;                                                              \
            SWEEP_SCALAR_UPDATE(T, SQRT)                                                     \
            SWEEP_PRODUCT(T, V, VL)                                                             \
        }                                                                                    \
    } else if (xp != NULL && !u->adam) {                    /* SGD */                        \
        for (long i = r0; i < r1; i++) {                                                     \
            T *restrict wr = w + i * n_out;                                                  \
            const T a = xp[i];                                                               \
            UNROLL for (int k = 0; k < SWEEP_BLOCK; k++) if (k < nv) {                       \
                V wk = *(V *)(wr + c0 + k * VL);                                             \
                *(V *)(wr + c0 + k * VL) = wk - lr * (a * gv[k] + wd * wk);                  \
            }                                                                                \
            const long j0 = cv;                                                              \
            SWEEP_SCALAR_UPDATE(T, SQRT)                                                     \
            SWEEP_PRODUCT(T, V, VL)                                                             \
        }                                                                                    \
    } else {                                                /* Adam, or no update */         \
        for (long i = r0; i < r1; i++) {                                                     \
            T *restrict wr = w + i * n_out;                                                  \
            if (xp != NULL) {                                                                \
                const T a = xp[i];                                                           \
                const long j0 = c0;                                                          \
                SWEEP_SCALAR_UPDATE(T, SQRT)                                                 \
            }                                                                                \
            SWEEP_PRODUCT(T, V, VL)                                                             \
        }                                                                                    \
    }                                                                                        \
    if (xn != NULL) {                                                                        \
        UNROLL for (int k = 0; k < SWEEP_BLOCK; k++)                                         \
            if (k < nv) *(V *)(h + c0 + k * VL) = acc[k];                                    \
        for (long j = cv; j < c1; j++) h[j] = tail[j - cv];                                  \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static void NAME##_rows(const Update *u, const T *xp, const T *g, T *w, T *s1, T *s2,       \
                        const T *xn, T *h, long n_out, long r0, long r1)                     \
{                                                                                            \
    const long whole = n_out / VL * VL;                                                      \
    for (long c0 = 0; c0 < n_out; c0 += SWEEP_BLOCK * VL) {                                  \
        const long c1 = c0 + SWEEP_BLOCK * VL < n_out ? c0 + SWEEP_BLOCK * VL : n_out;       \
        switch (((c1 < whole ? c1 : whole) - c0) / VL) {   /* whole vectors in the block */  \
        case 8: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 8); break;  \
        case 7: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 7); break;  \
        case 6: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 6); break;  \
        case 5: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 5); break;  \
        case 4: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 4); break;  \
        case 3: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 3); break;  \
        case 2: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 2); break;  \
        case 1: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 1); break;  \
        default: NAME##_block(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1, c0, c1, 0);        \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* The sum of v's lanes, as a tree (each half added to the other, VL/2 lanes, then VL/4, \
 * ...), which the compiler turns into shuffles and vector adds: summed lane after lane it \
 * was a chain of VL dependent scalar adds, and at 784-128-64-10 the second layer's        \
 * backward (128 dot products of 64) took 0.91 us instead of 0.45 (avx512, one core). */    \
static inline T NAME##_sum(V v)                                                              \
{                                                                                            \
    T lanes[VL];                                                                             \
    memcpy(lanes, &v, sizeof v);                                                             \
    for (int half = VL / 2; half >= 1; half /= 2)                                            \
        for (int l = 0; l < half; l++)                                                       \
            lanes[l] += lanes[l + half];                                                     \
    return lanes[0];                                                                         \
}                                                                                            \
                                                                                             \
static void NAME##_backward(const T *w, const T *g, T *out, long n_in, long n_out)          \
{                                                                                            \
    const long whole = n_out / VL * VL;                                                      \
    long r = 0;                                                                              \
    for (; r + 4 <= n_in; r += 4) {                                                          \
        const T *w0 = w + r * n_out;                                                         \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                            \
        for (long j = 0; j < whole; j += VL) {                                               \
            V gj = *(const V *)(g + j);                                                      \
            a0 += *(const V *)(w0 + j) * gj;                                                 \
            a1 += *(const V *)(w0 + n_out + j) * gj;                                         \
            a2 += *(const V *)(w0 + 2 * n_out + j) * gj;                                     \
            a3 += *(const V *)(w0 + 3 * n_out + j) * gj;                                     \
        }                                                                                    \
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                   \
        if (whole) {                        /* (a layer narrower than a vector has none) */ \
            s0 = NAME##_sum(a0);                                                             \
            s1 = NAME##_sum(a1);                                                             \
            s2 = NAME##_sum(a2);                                                             \
            s3 = NAME##_sum(a3);                                                             \
        }                                                                                    \
        for (long j = whole; j < n_out; j++) {                                               \
            s0 += w0[j] * g[j];                                                              \
            s1 += w0[n_out + j] * g[j];                                                      \
            s2 += w0[2 * n_out + j] * g[j];                                                  \
            s3 += w0[3 * n_out + j] * g[j];                                                  \
        }                                                                                    \
        out[r] = s0;                                                                         \
        out[r + 1] = s1;                                                                     \
        out[r + 2] = s2;                                                                     \
        out[r + 3] = s3;                                                                     \
    }                                                                                        \
    for (; r < n_in; r++) {                                                                  \
        T s = 0;                                                                             \
        for (long j = 0; j < n_out; j++) s += w[r * n_out + j] * g[j];                       \
        out[r] = s;                                                                          \
    }                                                                                        \
}

SWEEP(sweep_f32, float, vf32, VL_F32, sqrtf)
SWEEP(sweep_f64, double, vf64, VL_F64, sqrt)

#endif
