"""What a hidden layer does after its product, in the terms every set shares: the activation
codes of ``linear``'s epilogue, and the dropout mask.

Activations. The front takes ``activation=None | "relu" | "tanh"`` (or the older
``relu=True``) and hands backends one small integer, ``ACT_NONE``, ``ACT_RELU`` or
``ACT_TANH``: the compiled kernels branch on it once per tile, and ``True`` / ``False`` still
mean ReLU / none.

Dropout (inverted: a kept unit is scaled by 1 / (1 - p) in training, nothing at evaluation).
The mask is not drawn from a random generator but computed from a counter-based hash, after
Triton's "low-memory dropout" and the Philox generators cuDNN and JAX use: unit j of row i of
hidden layer l at training step t is kept when

    key  = mask_key(seed, step=t, layer=l)                 (one 32-bit key per step and layer)
    u    = fmix32(key + (i * units + j) * 0x9E3779B9)      (mod 2^32; MurmurHash3's finaliser)
    keep = u >= threshold(p)                               (threshold = round(p * 2^32))

Why a hash rather than masks drawn once in NumPy and passed in: every set (NumPy, Numba, C,
torch on any device) computes the same bits from four integers, so every set trains on the
same masks without a mask array per step crossing into the fused loops (an epoch's masks for
784-128-64-10 would be 11 MB); the backward pass recomputes the mask instead of storing it; a
resumed run draws the masks an uninterrupted one would, from the step count that checkpoints
already keep; and the torch-autograd reference can apply the very same masks. The hash is
uint32 arithmetic (multiply, xor, shift) that vectorises in every language here. fmix32 is a
bijection with full avalanche, so neighbouring units get independent-looking bits; a kept
fraction of 1 - p is exact to 2^-32.

``dropout_numpy`` / ``dropout_torch`` below are the two array implementations; the compiled
sets carry the same few lines (tests/test_conformance.py holds every set to these bits).
"""

from __future__ import annotations

import numpy as np

ACT_NONE, ACT_RELU, ACT_TANH = 0, 1, 2
ACTIVATIONS = {None: ACT_NONE, "relu": ACT_RELU, "tanh": ACT_TANH}
ACTIVATION_NAMES = ("relu", "tanh")          # what a hidden layer may use (the trainer's choice)

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9                          # 2^32 / golden ratio: the Weyl step between units
FMIX_1, FMIX_2 = 0x85EBCA6B, 0xC2B2AE35      # MurmurHash3's fmix32 multipliers


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser on a Python int (the scalar every implementation copies)."""
    h &= M32
    h ^= h >> 16
    h = (h * FMIX_1) & M32
    h ^= h >> 13
    h = (h * FMIX_2) & M32
    h ^= h >> 16
    return h


def mask_key(seed: int, step: int, layer: int) -> int:
    """The 32-bit key of one step's mask on one hidden layer: seed (< 2^64), step (< 2^63)
    and layer folded in one 32-bit word at a time."""
    h = fmix32(seed & M32)
    h = fmix32(h ^ (seed >> 32) & M32)
    h = fmix32(h ^ (step & M32))
    h = fmix32(h ^ (step >> 32) & M32)
    return fmix32(h ^ (layer & M32))


def threshold(p: float) -> int:
    """The uint32 at and above which a unit is kept: round(p 2^32), p in [0, 1)."""
    return min(int(round(p * 2.0**32)), M32)


def scale(p: float) -> float:
    """What a kept unit is multiplied by: 1 / (1 - p) (rounded to the array's dtype by the kernel)."""
    return 1.0 / (1.0 - p)


def hash_numpy(key: int, rows: int, units: int) -> np.ndarray:
    """The (rows, units) uint32 hashes of ``key``'s mask (a unit is kept where one is >=
    threshold(p)), in NumPy uint32 arithmetic, which wraps mod 2^32."""
    h = np.arange(rows * units, dtype=np.uint32)
    h *= np.uint32(GOLDEN)
    h += np.uint32(key)
    h ^= h >> np.uint32(16)
    h *= np.uint32(FMIX_1)
    h ^= h >> np.uint32(13)
    h *= np.uint32(FMIX_2)
    h ^= h >> np.uint32(16)
    return h.reshape(rows, units)


def dropout_numpy(x: np.ndarray, out: np.ndarray, key: int, thresh: int, factor: float) -> None:
    """out = x * factor where the unit is kept, else 0 (x, out (rows, units), one dtype)."""
    u = hash_numpy(key, x.shape[0], x.shape[1])
    np.multiply(x, x.dtype.type(factor), out=out)
    out[u < np.uint32(thresh)] = 0


def _mul32_torch(h, c: int):
    """(h * c) mod 2^32 for int64 tensors h in [0, 2^32): in two 16-bit halves of c, so no
    product leaves int64 (torch has no uint32 arithmetic on every device)."""
    lo = h * (c & 0xFFFF)
    hi = ((h * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def keep_torch(key: int, thresh: int, rows: int, units: int, device):
    """hash_numpy(...) >= thresh as a (rows, units) bool tensor, in torch int64 arithmetic on
    ``device`` (CPU or CUDA)."""
    import torch

    h = torch.arange(rows * units, dtype=torch.int64, device=device)
    h = (_mul32_torch(h, GOLDEN) + key) & M32
    h ^= h >> 16
    h = _mul32_torch(h, FMIX_1)
    h ^= h >> 13
    h = _mul32_torch(h, FMIX_2)
    h ^= h >> 16
    return (h >= thresh).reshape(rows, units)


def dropout_torch(x, out, key: int, thresh: int, factor: float) -> None:
    """dropout_numpy in torch, on x's device."""
    import torch

    keep = keep_torch(key, thresh, x.shape[0], x.shape[1], x.device)
    torch.mul(x, torch.tensor(factor, dtype=x.dtype, device=x.device), out=out)  # in x's dtype
    out.masked_fill_(~keep, 0)
