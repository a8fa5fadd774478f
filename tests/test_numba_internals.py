"""The numba set's internals: every rung of MATMUL_LADDER, the packed path's edges, the fused
epilogue. The conformance suite tests the set through the interface; these reach past it to
the steps the benchmarks time, so that a rung that is fast because it is wrong cannot hide.
"""

import numpy as np
import pytest

from conftest import assert_close

numba_set = pytest.importorskip("kernels.numba_set")

DTYPES = [np.float32, np.float64]
# Sizes around the blocking: 1 and 3 (smaller than a tile), 17 (NR/2 < 17 < NR for float32),
# 129 (KC + 1), 257 (2 KC + 1). The micro-tile is 12 x 32 (float32) or 12 x 16 (float64).
ODD = [(1, 1, 1), (3, 17, 5), (17, 129, 3), (13, 3, 33), (129, 257, 17), (257, 129, 129), (25, 40, 784 // 8)]


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", list(numba_set.MATMUL_LADDER))
def test_every_ladder_step_matches_reference(step, dtype):
    matmul = numba_set.MATMUL_LADDER[step]
    rng = np.random.default_rng(0)
    for m, k, n in ODD:
        if step == "naive" and m * k * n > 2e6:
            continue
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = _rand(rng, (k, m) if trans_a else (m, k), dtype)
                b = _rand(rng, (n, k) if trans_b else (k, n), dtype)
                want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
                out = np.full((m, n), np.nan, dtype)
                matmul(a, b, out, trans_a, trans_b)
                assert_close(out, want, dtype, scale=4 * np.sqrt(k),
                             what=f"{step} {m}x{k}x{n} trans_a={trans_a} trans_b={trans_b}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_both_paths_and_thread_splits(dtype, threads):
    """The small path (operands read in place) and the packed path, on one thread and split
    by rows or by columns, all give the same product."""
    rng = np.random.default_rng(1)
    no_bias = np.empty(0, dtype)
    for m, k, n in [(700, 33, 40), (40, 33, 700), (100, 300, 70)]:
        a, b = _rand(rng, (m, k), dtype), _rand(rng, (k, n), dtype)
        want = a.astype(np.float64) @ b
        # scratch of exactly the size asked for (and NaN filled), so that a task reading or
        # writing past its share would show
        work = np.full(numba_set._gemm_work_size(np.dtype(dtype), m, n, k, threads), np.nan, dtype)
        for pack in (False, True):
            out = np.full((m, n), np.nan, dtype)
            numba_set._gemm_range(a, b, out, False, False, no_bias, False, 0, m, 0, n, pack, work)
            assert_close(out, want, dtype, scale=4 * np.sqrt(k), what=f"range pack={pack}")
            out = np.full((m, n), np.nan, dtype)
            numba_set._gemm_threads(a, b, out, False, False, no_bias, False, threads, pack, work)
            assert_close(out, want, dtype, scale=4 * np.sqrt(k), what=f"threads={threads} pack={pack}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_bias_and_relu_span_k_blocks(dtype):
    """Bias is added once (first k block) and ReLU applied once (last), however many k blocks."""
    rng = np.random.default_rng(2)
    m, k, n = 37, 3 * 128 + 5, 45  # several KC blocks
    x, w, b = _rand(rng, (m, k), dtype), _rand(rng, (k, n), dtype), _rand(rng, (n,), dtype)
    for relu in (False, True):
        out = np.full((m, n), np.nan, dtype)
        numba_set.linear(x, w, b, out, relu)
        want = x.astype(np.float64) @ w + b
        if relu:
            want = np.maximum(want, 0)
        assert_close(out, want, dtype, scale=4 * np.sqrt(k), what=f"linear relu={relu}")
