"""The Cython set's internals: every rung of its matmul ladder, against a float64 reference.

The conformance suite reaches only the set's dispatching matmul; here each step of
MATMUL_LADDER (naive, blocked, packed, threaded, dispatch) is checked on its own, at sizes that
straddle the micro-kernel's tile (MR x NR) and the cache blocks, with both transposes.
"""

import itertools

import numpy as np
import pytest

import kernels
from kernels._layers import ACT_RELU

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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_path_of_few_rows_splits_columns_to_the_same_bits(dtype):
    """A product of one row block (m <= MIN_BLOCK_ROWS) past the small-size threshold runs its
    threads over B's micro-panels: the same result on one thread and on two, bit for bit, with
    the bias and activation applied on the last k block only."""
    backend = kernels.backend_module("cython")
    ks = kernels.get("cython")
    rng = np.random.default_rng(2)
    for m, k, n in [(1, 300, 700), (5, 600, 1030), (32, 784, 1024), (64, 257, 999)]:
        x, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        want = np.maximum(x.astype(np.float64) @ w + bias, 0)
        outs = []
        for threads in (1, 2):
            backend.set_threads(threads)
            out = np.full((m, n), np.nan, dtype)
            backend.linear(x, w, bias, out, ACT_RELU)
            outs.append(out)
        tol = 2e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(outs[1], want, rtol=tol, atol=tol * 4 * np.sqrt(k), err_msg=f"{m}x{k}x{n}")
        np.testing.assert_array_equal(outs[0], outs[1])
    backend.set_threads(ks.threads)


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


# ---------------------------------------------------------------------------- fused train_steps


def _steps_problem(sizes, dtype, samples, seed, misaligned=False):
    """Parameters, data and an order for a train_steps call. misaligned: every parameter a view
    16 bytes past a 64-byte line, as NumPy's large arrays are (the fused loop copies those)."""
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        params += [(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype),
                   (0.1 * rng.standard_normal(n_out)).astype(dtype)]
    if misaligned:
        params = [_at_offset(p, 16) for p in params]
    x = rng.standard_normal((60, sizes[0])).astype(dtype)
    labels = rng.integers(0, sizes[-1], 60).astype(np.int64)
    order = rng.integers(0, 60, samples).astype(np.int64)
    return params, x, labels, order


def _at_offset(a, offset):
    """A C-contiguous copy of a whose data starts ``offset`` bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _hidden(activation="relu", p=0.0):
    from kernels import _layers
    from kernels._steps import Hidden

    return Hidden(act=_layers.ACTIVATIONS[activation], p=p, seed=2**40 + 3,
                  threshold=_layers.threshold(p), scale=_layers.scale(p))


def _run_steps(fused, problem, batch, kind, momentum, weight_decay, step, hidden=None):
    from kernels._steps import Optimizer, n_steps, per_op

    hidden = hidden or _hidden()
    backend = kernels.backend_module("cython")
    params, x, labels, order = problem
    params = [_at_offset(p, p.ctypes.data % 64) for p in params]  # fresh, same alignment
    if kind == "adam":
        state = ([np.zeros_like(p) for p in params], [np.full_like(p, 0.01) for p in params])
    else:
        state = [np.full_like(p, 0.1) for p in params] if momentum else None
    opt = Optimizer(kind, 0.05, momentum, weight_decay, 0.9, 0.99, 1e-8, step, state)
    losses = np.full(n_steps(len(order), batch), np.nan, x.dtype)
    if fused:
        backend.train_steps(params, x, labels, order, batch, losses, opt, hidden)
    else:
        per_op(backend, kernels.get("cython")._arrays, params, x, labels, order, batch, losses, opt, hidden)
    flat_state = [] if state is None else (state[0] + state[1] if kind == "adam" else state)
    return params, flat_state, losses


def _fused_and_per_op(problem, batch, kind, momentum, weight_decay, step, hidden=None):
    """The fused loop's and the per-op path's results on one problem: (the fused losses,
    [(fused, per-op)] for every parameter, every state array and the losses)."""
    got = _run_steps(True, problem, batch, kind, momentum, weight_decay, step, hidden)
    want = _run_steps(False, problem, batch, kind, momentum, weight_decay, step, hidden)
    return got[2], list(zip(got[0] + got[1] + [got[2]], want[0] + want[1] + [want[2]]))


OPTIMIZERS = [("sgd", 0.0, 0.0, 0), ("sgd", 0.9, 1e-3, 0), ("adam", 0.0, 1e-2, 7)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[13, 5], [30, 16, 5], [20, 33, 70, 3], [300, 16, 5]])
@pytest.mark.parametrize("kind, momentum, weight_decay, step", OPTIMIZERS)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_train_steps_match_per_op(dtype, sizes, kind, momentum, weight_decay, step, threads):
    """Above a batch of 1 the fused loop runs the per-op path's kernels in the same order: the
    same bits, for partial last batches and misaligned parameters. (At [300, 16, 5] a batch of
    32 is past GATHER_PAR_MIN_BYTES: the threads split its gather.)"""
    kernels.backend_module("cython").set_threads(threads)
    for batch, samples, misaligned in [(4, 11, True), (32, 70, False), (16, 40, True)]:
        problem = _steps_problem(sizes, dtype, samples, seed=batch, misaligned=misaligned)
        losses, pairs = _fused_and_per_op(problem, batch, kind, momentum, weight_decay, step)
        for g, w in pairs:
            np.testing.assert_array_equal(g, w, err_msg=f"batch {batch} of {samples}")
        assert np.isfinite(losses).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[30, 16, 5], [20, 33, 70, 3], [300, 64, 40, 5]])
@pytest.mark.parametrize("activation, p", [("tanh", 0.0), ("relu", 0.25), ("tanh", 0.25)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_tanh_and_dropout_match_per_op(dtype, sizes, activation, p, threads):
    """tanh in the epilogues (the skip kernels' too: zeros in x) and dropout between layers:
    the fused loop is still the per-op path to the bit, at a batch of 1 as well (dropout turns
    the batch-of-one sweep off; tanh runs in it)."""
    kernels.backend_module("cython").set_threads(threads)
    for batch, samples, misaligned in [(4, 11, True), (32, 70, False), (1, 5, False)]:
        problem = _steps_problem(sizes, dtype, samples, seed=batch, misaligned=misaligned)
        problem[1][problem[1] < 0.2] = 0.0
        _, pairs = _fused_and_per_op(problem, batch, "adam", 0.0, 1e-2, 3, _hidden(activation, p))
        for g, w in pairs:
            if batch == 1 and p == 0.0:      # the sweep: another order of sums, to rounding
                np.testing.assert_allclose(g, w, rtol=1e-4 if dtype == np.float32 else 1e-11, atol=1e-6,
                                           err_msg=f"batch {batch} of {samples}")
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"batch {batch} of {samples}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[40, 70, 3], [300, 64, 40, 5]])
@pytest.mark.parametrize("kind, momentum, weight_decay, step", OPTIMIZERS)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_train_steps_skip_zero_inputs(dtype, sizes, kind, momentum, weight_decay, step, threads):
    """Inputs with exact zeros, as images have: the fused loop's first layer skips them, in
    its forward pass the pixels zero in all of a strip's SKIP_MR samples (forward_skip), in
    its x^T g the samples whose SKIP_MR pixels are all zero (chunk_product), and both are
    still the per-op path's products to the bit (a skipped term is a zero added). Whole zero
    groups and scattered zeros; a partial last column strip (70 outputs); a chunk's last rows
    under a tile (300 inputs); lists whose length is no multiple of the 16 lanes that build
    them (40 inputs, last batches of 8 and 10 samples); and rows under the dense kernel's MR
    (a batch of 10), which stay on the dense path."""
    kernels.backend_module("cython").set_threads(threads)
    for batch, samples in [(16, 40), (32, 70), (20, 50)]:
        problem = _steps_problem(sizes, dtype, samples, seed=batch)
        x = problem[1]
        rng = np.random.default_rng(batch)
        x *= rng.random(x.shape) < 0.5                      # scattered zeros
        x[::2, 8:40] = 0                                    # whole 8-wide groups, every other row
        x[1::2, 44:48] = 0                                  # 4-wide ones on the other rows
        x[4:8, 20:60] = 0                                   # pixels zero in 4 samples in a row
        x[5] = 0                                            # and one sample all zero
        losses, pairs = _fused_and_per_op(problem, batch, kind, momentum, weight_decay, step)
        for g, w in pairs:
            np.testing.assert_array_equal(g, w, err_msg=f"batch {batch} of {samples}")
        assert np.isfinite(losses).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[13, 5], [30, 16, 5], [20, 33, 70, 3], [300, 130, 7], [600, 64, 10]])
@pytest.mark.parametrize("kind, momentum, weight_decay, step", OPTIMIZERS)
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_of_one_sweep_matches_per_op(dtype, sizes, kind, momentum, weight_decay, step, threads):
    """At a batch of 1 each layer's update waits for the next step's forward pass and the two
    run as one sweep over the weights (sweep.h), split by rows between threads from
    SWEEP_PAR_MIN weights on ([300, 130, 7] and [600, 64, 10] are past it, and 130 leaves
    scalar columns). The same training as the per-op path, up to the order of the sums:
    whole vectors and scalar columns, one and two threads, and the last step's update, which
    is applied at the end of the call."""
    kernels.backend_module("cython").set_threads(threads)
    for samples, misaligned in [(1, False), (6, True), (9, False)]:
        problem = _steps_problem(sizes, dtype, samples, seed=samples, misaligned=misaligned)
        losses, pairs = _fused_and_per_op(problem, 1, kind, momentum, weight_decay, step)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        for g, w in pairs:
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{samples} steps")
        assert np.isfinite(losses).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, momentum, weight_decay, step", OPTIMIZERS)
def test_fused_train_steps_past_the_chunked_update(dtype, kind, momentum, weight_decay, step):
    """A product too large for the chunked update (batch x n_out past half of L2) takes the
    plain gradient and update; the partial last batch then takes the chunked one."""
    kernels.backend_module("cython").set_threads(2)
    batch = 450 if dtype == np.float32 else 230
    problem = _steps_problem([20, 300, 4], dtype, batch + 50, seed=3)
    _, pairs = _fused_and_per_op(problem, batch, kind, momentum, weight_decay, step)
    for g, w in pairs:
        np.testing.assert_array_equal(g, w)


def test_fused_train_steps_is_the_set_s_op():
    """KernelSet.train_steps reaches the fused loop (not kernels/_steps.py's per_op)."""
    assert kernels.backend_module("cython").train_steps is not None
    ks = kernels.get("cython")
    problem = _steps_problem([12, 8, 3], np.float32, 9, seed=5)
    params, x, labels, order = problem
    want = _run_steps(True, problem, 4, "sgd", 0.0, 0.0, 0)
    losses = ks.train_steps(params, x, labels, order, batch=4, lr=0.05)
    np.testing.assert_array_equal(losses, want[2])
    for p, w in zip(params, want[0]):
        np.testing.assert_array_equal(p, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_is_the_same_bits_whatever_the_threads(dtype):
    """The loss is summed block by block in the blocks' order: the same bits on one thread or
    two, and from call to call (a reduction over a dynamic schedule added the blocks in the
    order the threads took them)."""
    rng = np.random.default_rng(5)
    z = (4 * rng.standard_normal((1000, 300))).astype(dtype)
    y = rng.integers(0, 300, 1000)
    losses = set()
    for threads in (1, 2, 2, 2, 1):
        loss, grad = kernels.get("cython", threads=threads).softmax_cross_entropy(z, y)
        losses.add(float(loss))
    assert len(losses) == 1, losses
