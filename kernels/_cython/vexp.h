/* vexp.h: exp of float32 vectors of the path's width (vf32, microkernel.h), for arguments
 * <= 0: Cephes' expf (range reduction by ln 2, degree-5 polynomial, about 1 ulp) as vector
 * arithmetic, branch-free. libm's expf is a scalar call GCC cannot vectorise without
 * -ffast-math. Shared by vecmath.h's softmax and vtanh.h's tanh.
 */
#ifndef KERNELS_VEXP_H
#define KERNELS_VEXP_H

/* exp(x) for x <= 0, lane by lane (softmax's shifted logits; larger x are not expected). */
static inline vf32 vexp_nonpositive_f32(vf32 x)
{
    const vf32 lo = (vf32){0} - 87.33654f;          /* exp(lo) = FLT_MIN: stays normal */
    const vf32 round = (vf32){0} + 12582912.0f;     /* 1.5 * 2^23: adding it rounds to integer */
    vi32 below = x < lo;
    x = (vf32)(((vi32)lo & below) | ((vi32)x & ~below));
    vf32 t = x * 1.44269504088896341f + round;      /* n = rint(x / ln 2), in t's low bits */
    vf32 n = t - round;
    vf32 r = x - n * 0.693359375f;                  /* r = x - n ln 2, in two steps (Cody-Waite) */
    r = r - n * -2.12194440e-4f;
    vf32 p = (vf32){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;                      /* exp(r), |r| <= ln 2 / 2 */
    vi32 ni = (vi32)t - (vi32)round;                 /* n as an integer */
    vi32 scale = (ni + 127) << 23;                  /* 2^n as float bits */
    return p * (vf32)scale;
}

#endif
