"""The Cython set's internals: every rung of its matmul ladder, against a float64 reference.

The conformance suite reaches only the set's dispatching matmul; here each step of
MATMUL_LADDER (naive, blocked, packed, threaded, dispatch) is checked on its own, at sizes that
straddle the micro-kernel's tile (MR x NR) and the cache blocks, with both transposes.
"""

import itertools

import numpy as np
import pytest

import kernels

reason = kernels.available().get("cython")
pytestmark = pytest.mark.skipif(reason is not None, reason=str(reason))

SIZES = [1, 3, 17, 129, 257]


@pytest.fixture(autouse=True)
def front_reapplies_threads():
    """These tests set the extension's thread count directly; make the front re-apply its own."""
    yield
    from kernels import _front

    _front._applied_threads.pop(getattr(kernels.backend_module("cython"), "THREADS_KEY", "cython"), None)


def ladder():
    return kernels.backend_module("cython").MATMUL_LADDER


def test_ladder_steps_in_order():
    assert list(ladder()) == ["naive", "blocked", "packed", "threaded", "dispatch"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step", ["naive", "blocked", "packed", "threaded", "dispatch"])
@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product([False, True], repeat=2)))
def test_ladder_step_matches_reference(step, dtype, trans_a, trans_b):
    fn = ladder()[step]
    backend = kernels.backend_module("cython")
    backend.set_threads(2)
    rng = np.random.default_rng(0)
    shapes = [(m, k, n) for m, k, n in itertools.product(SIZES, repeat=3) if m * k * n <= 257 * 257 * 17]
    for m, k, n in shapes[:: 3 if step == "naive" else 1]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
        want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
        out = np.full((m, n), np.nan, dtype)
        fn(a, b, out, trans_a, trans_b)
        tol = 2e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 4 * np.sqrt(k), err_msg=f"{step} {m}x{k}x{n}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_path_across_blocks(dtype, threads):
    """Shapes past KC, MC and the small-size threshold, so every BLIS loop runs more than once."""
    backend = kernels.backend_module("cython")
    backend.set_threads(threads)
    rng = np.random.default_rng(1)
    for m, k, n, ta, tb in [(600, 300, 1100, False, False), (517, 257, 700, True, True), (9, 1030, 520, False, True)]:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        for step in ["packed", "threaded", "dispatch"]:
            out = np.full((m, n), np.nan, dtype)
            ladder()[step](a, b, out, ta, tb)
            tol = 2e-4 if dtype == np.float32 else 1e-10
            np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 4 * np.sqrt(k), err_msg=f"{step} {m}x{k}x{n}")


def test_missing_extension_gives_a_hint(monkeypatch):
    """An unbuilt extension fails with the one-line fix that kernels.available() shows."""
    from kernels._cython import _import

    with pytest.raises(ImportError) as info:
        _import.load("no_such_extension")
    assert "pip install -e ." in info.value.kernels_hint


def test_scratch_is_not_shared_between_python_threads():
    """Kernels take the module's scratch buffer under the GIL and run without it: callers in
    several Python threads at once must each get their own (small and packed products)."""
    from concurrent.futures import ThreadPoolExecutor

    backend = kernels.backend_module("cython")
    backend.set_threads(2)
    rng = np.random.default_rng(2)
    cases = []
    for m, k, n in [(64, 300, 130), (300, 700, 520), (9, 33, 10)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
        y = np.maximum(x @ w, 0)
        gy = rng.standard_normal((m, n)).astype(np.float32)
        cases.append((x, w, y, gy))

    def run(case):
        x, w, y, gy = case
        out = (np.empty_like(x), np.empty_like(w), np.empty(w.shape[1], np.float32))
        backend.linear_backward(x, w, y, gy, *out, True)
        return out

    want = [run(case) for case in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            for got, expected in zip(pool.map(run, cases * 4), want * 4):
                for g, e in zip(got, expected):
                    np.testing.assert_array_equal(g, e)
