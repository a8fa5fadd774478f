/* vecmath.h: the numerically careful row helpers of softmax.pxi's softmax-cross-entropy, in
 * float32 vectors of the path's width (GCC vector extensions: VL_F32 lanes, isa/<path>.h).
 *
 * libm's expf is a scalar call (~10 ns) that GCC cannot vectorise without -ffast-math, which
 * made exp the whole cost of softmax-cross-entropy. exp_minus_max_f32 computes exp(z - max)
 * a vector at a time with Cephes' expf (range reduction by ln 2, degree-5 polynomial, about
 * 1 ulp), exact enough for float32 and branch-free. float64 keeps libm's exp (softmax.pxi).
 */
#ifndef KERNELS_VECMATH_H
#define KERNELS_VECMATH_H

#include <math.h>
#include <stdint.h>
#include "microkernel.h"
#include "vexp.h"

#define SOFTMAX_BLOCK_ROWS 128   /* rows per block: 2 x 128 x 16 floats = 16 KiB, in L1 */
/* Rows of at most this many classes take softmax_xent_small_rows_f32, whatever the vector
 * width. It was "fewer than one vector", which sent the MLP's 10 classes on avx2 (8 lanes) and
 * neon (4) row by row, two vector exps and a scalar tail a row: 128x10 took 5.4 us there
 * against 1.6 on avx512. */
#define SOFTMAX_SMALL_ROWS_MAX 16

static inline vf32 vmax_f32(vf32 a, vf32 b)
{
    vi32 gt = a > b;
    return (vf32)(((vi32)a & gt) | ((vi32)b & ~gt));
}


/* max_j z[j], for n >= 1. */
static inline float row_max_f32(const float *z, long n)
{
    vf32 m = (vf32){0} + z[0];
    long j = 0;
    for (; j + VL_F32 <= n; j += VL_F32)
        m = vmax_f32(m, *(const vf32 *)(z + j));
    float best = m[0];
    for (int l = 1; l < VL_F32; ++l)
        best = m[l] > best ? m[l] : best;
    for (; j < n; ++j)
        best = z[j] > best ? z[j] : best;
    return best;
}

/* out[j] = exp(z[j] - zmax) for j < n; returns the sum of them (in double). */
static inline double exp_minus_max_f32(const float *z, float zmax, float *out, long n)
{
    vf32 acc = (vf32){0};
    long j = 0;
    for (; j + VL_F32 <= n; j += VL_F32) {
        vf32 e = vexp_nonpositive_f32(*(const vf32 *)(z + j) - zmax);
        *(vf32 *)(out + j) = e;
        acc += e;
    }
    double total = 0.0;
    for (int l = 0; l < VL_F32; ++l)
        total += acc[l];
    if (j < n) {                                     /* the tail through a one-vector buffer */
        float buf[VL_F32];
        long rest = n - j;
        for (long l = 0; l < VL_F32; ++l)
            buf[l] = l < rest ? z[j + l] - zmax : 0.0f;
        vf32 e = vexp_nonpositive_f32(*(const vf32 *)buf);
        for (long l = 0; l < rest; ++l) {
            out[j + l] = e[l];
            total += e[l];
        }
    }
    return total;
}

/* exp in place over a flat array, a vector at a time (every x <= 0). */
static inline void exp_inplace_f32(float *x, long n)
{
    long j = 0;
    for (; j + VL_F32 <= n; j += VL_F32)
        *(vf32 *)(x + j) = vexp_nonpositive_f32(*(const vf32 *)(x + j));
    if (j < n) {
        float buf[VL_F32];
        long rest = n - j;
        for (long l = 0; l < VL_F32; ++l)
            buf[l] = l < rest ? x[j + l] : 0.0f;
        vf32 e = vexp_nonpositive_f32(*(const vf32 *)buf);
        for (long l = 0; l < rest; ++l)
            x[j + l] = e[l];
    }
}

/* Softmax-cross-entropy of a block of rows with few classes (SOFTMAX_SMALL_ROWS_MAX at most):
 * z, g (rows, classes), labels (rows,). Per row the work is too small to fill a vector, so the
 * block is done in three passes that stay in L1: shift every row by its max into g; exp over
 * the whole block as one flat array; then per row the sum, the loss and the scaled gradient.
 * g = (softmax(z) - onehot(label)) * inv_batch. Returns the sum of the rows' losses,
 * log(sum_j exp(z_j - max)) - (z_label - max). */
static inline double softmax_xent_small_rows_f32(const float *z, const int64_t *labels,
                                                 float *g, long rows, long classes,
                                                 double inv_batch)
{
    double loss = 0.0, product = 1.0;
    float zmax[SOFTMAX_BLOCK_ROWS];
    for (long i0 = 0; i0 < rows; i0 += SOFTMAX_BLOCK_ROWS) {
        long n = rows - i0 < SOFTMAX_BLOCK_ROWS ? rows - i0 : SOFTMAX_BLOCK_ROWS;
        for (long i = 0; i < n; ++i) {
            const float *zi = z + (i0 + i) * classes;
            float *gi = g + (i0 + i) * classes;
            float m = zi[0];
            for (long j = 1; j < classes; ++j)
                m = zi[j] > m ? zi[j] : m;
            zmax[i] = m;
            for (long j = 0; j < classes; ++j)
                gi[j] = zi[j] - m;
        }
        exp_inplace_f32(g + i0 * classes, n * classes);
        for (long i = 0; i < n; ++i) {
            const float *zi = z + (i0 + i) * classes;
            float *gi = g + (i0 + i) * classes;
            int64_t label = labels[i0 + i];
            float total = 0.0f;                  /* in [1, classes]: exact enough in float */
            for (long j = 0; j < classes; ++j)
                total += gi[j];
            float scale = (float)(inv_batch / total);
            for (long j = 0; j < classes; ++j)
                gi[j] *= scale;
            gi[label] -= (float)inv_batch;
            /* sum of log(total) as the log of a product: one log per 64 rows instead of one
             * a row (each total is at most SOFTMAX_SMALL_ROWS_MAX = 16 here, so 64 of them
             * stay below 2^256) */
            product *= (double)total;
            if ((i & 63) == 63) {
                loss += log(product);
                product = 1.0;
            }
            loss -= (double)zi[label] - (double)zmax[i];
        }
    }
    return loss + log(product);
}

#endif
