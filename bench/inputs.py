"""Inputs for the benchmarks, made before (never inside) the timed region.

Values are drawn from a fixed seed so every set sees the same numbers, then converted to the
set's native array (a NumPy array, or a torch tensor on the set's device) with ``ks.asarray``.
"""

from __future__ import annotations

import numpy as np


def rng(seed=0):
    return np.random.default_rng(seed)


def normal(shape, dtype, seed=0, scale=1.0):
    return (rng(seed).standard_normal(shape) * scale).astype(dtype)


def native(ks, shape, dtype, seed=0, scale=1.0):
    """A standard-normal array of ``shape`` as ks's native array."""
    return ks.asarray(normal(shape, dtype, seed, scale))


def empty(ks, shape, dtype):
    """An output buffer for ``out=`` (zeros, so its pages are touched before timing)."""
    return ks.asarray(np.zeros(shape, dtype))


def labels(ks, batch, classes, seed=0):
    return ks.asarray(rng(seed).integers(0, classes, size=batch, dtype=np.int64))
