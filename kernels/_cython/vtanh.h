/* vtanh.h: tanh a vector at a time, in float32 and float64 vectors of the path's width
 * (vf32 / vf64, microkernel.h), for fast.pxi's tanh op and linear's epilogue.
 *
 * libm's tanh is a scalar call that GCC cannot vectorise; this is Cephes' tanh / tanhf (as
 * vecmath.h's expf is Cephes' expf), branch-free: every lane computes both of Cephes' ranges
 * and keeps one, on |x|, with the sign put back at the end (so tanh(-x) = -tanh(x) to the bit,
 * and -0 stays -0):
 *   |x| < 0.625: an odd polynomial (float32, degree 11) or rational function (float64) in x;
 *   otherwise:   (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.287 (Cephes writes
 *                1 - 2 / (exp(2|x|) + 1); this form needs exp only of arguments <= 0, and for
 *                |x| > 9 (float32) or 19 (float64) it rounds to exactly 1).
 * float64 divides once for both ranges (vdivpd is 16 cycles a zmm): 1.7 -> 1.2 ns an element
 * in L1 on this Rocket Lake core, float32 0.4.
 * Measured over 4 million arguments against libm's tanh in double (float32) and tanhl
 * (float64): at most 1.5 ulp in either (tests/c/check.sh holds every path and compiler to 2,
 * tests/test_tanh_dropout.py every set to 4). NaN
 * propagates (every comparison with a NaN lane is false, so it takes the exp branch, whose
 * arithmetic keeps it); tanh(+-inf) = +-1.
 */
#ifndef KERNELS_VTANH_H
#define KERNELS_VTANH_H

#include <stdint.h>
#include "vexp.h"


/* exp(x) for x <= 0 in float64: n = rint(x / ln 2), r = x - n ln 2 (|r| <= ln 2 / 2, in two
 * steps), exp(r) as its Taylor polynomial of degree 13 (the first term left out is under
 * 2e-16 of it), times 2^n. Where Cephes' exp divides (a Pade form), this multiplies: vdivpd
 * is 16 cycles a zmm, and tanh divides once already. */
static inline vf64 vtanh_exp_nonpositive_f64(vf64 x)
{
    const vf64 lo = (vf64){0} - 708.39;              /* exp(lo) > DBL_MIN: stays normal */
    const vf64 round = (vf64){0} + 6755399441055744.0;   /* 1.5 * 2^52 */
    vi64 below = x < lo;
    x = (vf64)(((vi64)lo & below) | ((vi64)x & ~below));
    vf64 t = x * 1.4426950408889634073599 + round;
    vf64 n = t - round;
    vf64 r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    vf64 p = (vf64){0} + 1.0 / 6227020800.0;         /* 1 / 13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * (r * r) + r + 1.0;
    vi64 ni = (vi64)t - (vi64)round;
    return p * (vf64)((ni + 1023) << 52);
}

static inline vf32 vtanh_f32(vf32 x)
{
    const vi32 sign = (vi32){0} + (int32_t)0x80000000;
    vf32 ax = (vf32)((vi32)x & ~sign);
    vf32 z = ax * ax;                                /* |x| < 0.625: Cephes' tanhf polynomial */
    vf32 p = (vf32){0} - 5.70498872745E-3f;
    p = p * z + 2.06390887954E-2f;
    p = p * z - 5.37397155531E-2f;
    p = p * z + 1.33314422036E-1f;
    p = p * z - 3.33332819422E-1f;
    vf32 small = p * z * ax + ax;
    vf32 e = vexp_nonpositive_f32(-2.0f * ax);  /* otherwise (NaN lanes too) */
    vf32 large = (1.0f - e) / (1.0f + e);
    vi32 is_small = ax < (vf32){0} + 0.625f;
    vi32 r = ((vi32)small & is_small) | ((vi32)large & ~is_small);
    return (vf32)(r | ((vi32)x & sign));
}

static inline vf64 vtanh_f64(vf64 x)
{
    const vi64 sign = (vi64){0} + (long long)0x8000000000000000ULL;
    vf64 ax = (vf64)((vi64)x & ~sign);
    vf64 s = ax * ax;                                /* |x| < 0.625: Cephes' rational tanh */
    vf64 p = (vf64){0} - 9.64399179425052238628E-1;
    p = p * s - 9.92877231001918586564E1;
    p = p * s - 1.61468768441708447952E3;
    vf64 q = s + 1.12811678491632931402E2;
    q = q * s + 2.23548839060100448583E3;
    q = q * s + 4.84406305325125486048E3;
    vf64 e = vtanh_exp_nonpositive_f64(-2.0 * ax);
    /* one division for both ranges: small = ax + ax s p / q = (ax q + ax s p) / q */
    vi64 is_small = ax < (vf64){0} + 0.625;
    vf64 num_small = ax * q + ax * s * p, num_large = 1.0 - e, den_large = 1.0 + e;
    vf64 num = (vf64)(((vi64)num_small & is_small) | ((vi64)num_large & ~is_small));
    vf64 den = (vf64)(((vi64)q & is_small) | ((vi64)den_large & ~is_small));
    vi64 r = (vi64)(num / den);
    return (vf64)(r | ((vi64)x & sign));
}

/* One element through the vector code (the epilogue's edges): the same bits as a full tile.
 * (x - 0 broadcasts x to every lane exactly, -0 included; 0 + x would make -0 into +0.) */
static inline float tanh_scalar_f32(float x)
{
    return vtanh_f32(x - (vf32){0})[0];
}

static inline double tanh_scalar_f64(double x)
{
    return vtanh_f64(x - (vf64){0})[0];
}

/* The vector tanh of either width, for code written once for both (microkernel.h's epilogue). */
#define VTANH(v) _Generic((v), vf32: vtanh_f32, vf64: vtanh_f64)(v)

/* out[i] = tanh(x[i]) for i < n (out may be x). */
static inline void tanh_f32(const float *x, float *out, long n)
{
    long i = 0;
    for (; i + VL_F32 <= n; i += VL_F32)
        *(vf32 *)(out + i) = vtanh_f32(*(const vf32 *)(x + i));
    for (; i < n; ++i)
        out[i] = tanh_scalar_f32(x[i]);
}

static inline void tanh_f64(const double *x, double *out, long n)
{
    long i = 0;
    for (; i + VL_F64 <= n; i += VL_F64)
        *(vf64 *)(out + i) = vtanh_f64(*(const vf64 *)(x + i));
    for (; i < n; ++i)
        out[i] = tanh_scalar_f64(x[i]);
}

#endif
