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


# ---------------------------------------------------------------- one case's inputs
# Shared by the suite (bench_*.py) and bench.paired, so both time the same call on the same data.


def matmul_operands(ks, case, dtype):
    """(a, b, out) of a matmul case, a and b stored transposed where the case says so."""
    p = case.params
    m, k, n = p["m"], p["k"], p["n"]
    a = native(ks, (k, m) if p["trans_a"] else (m, k), dtype, seed=1)
    b = native(ks, (n, k) if p["trans_b"] else (k, n), dtype, seed=2)
    return a, b, empty(ks, (m, n), dtype)


def linear_inputs(ks, case, dtype):
    """(x, w, b, out) of a linear case."""
    p = case.params
    x = native(ks, (p["batch"], p["n_in"]), dtype, seed=1)
    w = native(ks, (p["n_in"], p["n_out"]), dtype, seed=2, scale=0.05)
    b = native(ks, (p["n_out"],), dtype, seed=3)
    return x, w, b, empty(ks, (p["batch"], p["n_out"]), dtype)


def relu_backward_inputs(ks, shape, dtype):
    """(grad_y, y, out): y is a ReLU output, about half of it zero."""
    grad_y = native(ks, shape, dtype, seed=1)
    y = ks.asarray(np.maximum(normal(shape, dtype, seed=2), 0))
    return grad_y, y, empty(ks, shape, dtype)


def tanh_backward_inputs(ks, shape, dtype):
    """(grad_y, y, out): y is a tanh output, in (-1, 1)."""
    grad_y = native(ks, shape, dtype, seed=1)
    y = ks.asarray(np.tanh(normal(shape, dtype, seed=2)))
    return grad_y, y, empty(ks, shape, dtype)


def softmax_inputs(ks, batch, classes, dtype):
    """(logits, labels, grad) of a softmax_cross_entropy case."""
    return (native(ks, (batch, classes), dtype, scale=3.0), labels(ks, batch, classes),
            empty(ks, (batch, classes), dtype))


def autograd_cross_entropy(torch, batch, classes, dtype, device="cpu"):
    """PyTorch's way, as a step to time: loss = F.cross_entropy(logits, labels); loss.backward(),
    on a leaf tensor whose grad is set to None first (as zero_grad does)."""
    import torch.nn.functional as F

    logits = torch.from_numpy(normal((batch, classes), dtype, scale=3.0)).to(device).requires_grad_(True)
    target = torch.from_numpy(rng(0).integers(0, classes, size=batch, dtype=np.int64)).to(device)

    def step():
        logits.grad = None
        F.cross_entropy(logits, target).backward()

    return step
