"""kernels/_layers.py's dropout mask in Numba, for both Numba sets (and their fused loop).

Numba types arithmetic on two uint32 as uint64 (at least the machine word), so every product
is reduced mod 2^32 by hand; the results are kernels/_layers.py's bits exactly (tests hold
them to it).
"""

import numpy as np
from numba import njit

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
