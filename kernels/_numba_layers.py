"""kernels/_layers.py's dropout mask, and a tanh that vectorises, in Numba, for both Numba sets
(and the numba set's fused loop).

Numba types arithmetic on two uint32 as uint64 (at least the machine word), so every product
is reduced mod 2^32 by hand; the results are kernels/_layers.py's bits exactly (tests hold
them to it).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

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
def _f32_bits(typingctx, x):
    # the float32 x's bit pattern as an int32 (a bitcast)
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


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
        f, i32 = np.float32, np.int32
        lo, rnd = f(-87.33654), f(12582912.0)      # exp(lo) = FLT_MIN; 1.5 * 2^23

        def impl(x):
            ax = abs(x)
            z = ax * ax                             # |x| < 0.625: Cephes' tanhf polynomial
            p = f(-5.70498872745E-3)
            p = p * z + f(2.06390887954E-2)
            p = p * z - f(5.37397155531E-2)
            p = p * z + f(1.33314422036E-1)
            p = p * z - f(3.33332819422E-1)
            small = p * z * ax + ax
            e = f(-2.0) * ax                        # otherwise (1 - e) / (1 + e), e = exp(-2|x|)
            e = lo if e < lo else e                 # (NaN stays NaN)
            t = e * f(1.44269504088896341) + rnd
            n = t - rnd
            r = e - n * f(0.693359375)
            r = r - n * f(-2.12194440e-4)
            q = f(1.9875691500e-4)
            q = q * r + f(1.3981999507e-3)
            q = q * r + f(8.3334519073e-3)
            q = q * r + f(4.1665795894e-2)
            q = q * r + f(1.6666665459e-1)
            q = q * r + f(5.0000001201e-1)
            q = q * (r * r) + r + f(1.0)
            e = q * _f32_from_bits((_f32_bits(t) - _f32_bits(rnd) + i32(127)) << i32(23))
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
