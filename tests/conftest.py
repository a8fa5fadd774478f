"""Shared fixtures: the kernel sets under test and a float64 NumPy reference to hold them to.

Every registered set is tested. A set that cannot run here is skipped with its reason, unless
KERNELS_REQUIRE_ALL=1 (as in .ci/run), where an unavailable CPU set fails the suite instead:
CI must not pass because the Cython build silently went missing.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels

REQUIRE_ALL = os.environ.get("KERNELS_REQUIRE_ALL", "") not in ("", "0")
ROOT = Path(__file__).resolve().parent.parent
# The real MNIST test files, in the shared/ folder that sits beside the repository (CI too).
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def requires_mnist():
    """A module mark: skip without ../shared/data/mnist, except in CI, where it must be there
    and its absence fails the run rather than silently skipping every test that reads it."""
    present = (MNIST / "t10k-images-idx3-ubyte.gz").exists()
    if not present and os.environ.get("CI"):
        pytest.fail(f"CI is set but the MNIST test files are not in {MNIST}", pytrace=False)
    return pytest.mark.skipif(not present, reason=f"the MNIST test files are not in {MNIST}")
SET_NAMES = kernels.names()
DTYPES = [np.float32, np.float64]


@functools.lru_cache(maxsize=None)
def kernel_set(name: str):
    """The set ``name`` on the CPU, or a skip (a failure under KERNELS_REQUIRE_ALL)."""
    reason = kernels.available().get(name)
    if reason is not None:
        if REQUIRE_ALL:
            pytest.fail(f"KERNELS_REQUIRE_ALL is set but {reason}")
        pytest.skip(reason)
    return kernels.get(name)


@pytest.fixture(params=SET_NAMES)
def ks(request):
    return kernel_set(request.param)


def tolerance(dtype) -> float:
    return 2e-4 if np.dtype(dtype) == np.float32 else 1e-10


def assert_close(got, want, dtype, scale=None, what=""):
    """got (any set's result, as NumPy) is want (float64 reference) to the dtype's precision."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(want).max(initial=0.0))) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=tolerance(dtype), atol=tolerance(dtype) * scale, err_msg=what)


# ---------------------------------------------------------------- float64 reference


def ref_softmax_cross_entropy(logits, labels):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    batch = z.shape[0]
    loss = -log_probs[np.arange(batch), labels].mean()
    grad = np.exp(log_probs)
    grad[np.arange(batch), labels] -= 1.0
    return loss, grad / batch


def ref_linear(x, w, b, relu):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    return np.maximum(y, 0.0) if relu else y


def ref_linear_backward(x, w, y, grad_y, relu):
    x, w, y, grad_y = (np.asarray(a, np.float64) for a in (x, w, y, grad_y))
    g = grad_y * (y > 0) if relu else grad_y
    return g @ w.T, x.T @ g, g.sum(axis=0)


def assert_cli_refuses(module, args, message, out):
    """``python -m module *args --out out`` exits 2 with ``message`` on stderr and no
    traceback, and writes nothing to ``out``: how every bench command meets a bad option."""
    proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not Path(out).exists()
