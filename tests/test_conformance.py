"""One conformance suite that every kernel set must pass, against a float64 NumPy reference.

Parametrised over every registered set (see conftest.py). Shapes are drawn by hypothesis from
sizes that catch edge handling in blocked kernels: 1, 3, 17, 129 and 257 beside round ones.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    DTYPES,
    SET_NAMES,
    assert_close,
    kernel_set,
    ref_linear,
    ref_linear_backward,
    ref_softmax_cross_entropy,
    tolerance,
)

SIZES = st.sampled_from([1, 2, 3, 5, 8, 17, 31, 64, 129, 257])
SMALL = st.sampled_from([1, 2, 3, 5, 8, 17, 33])
SEEDS = st.integers(0, 2**32 - 1)
PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def native(ks, a):
    return ks.asarray(a)


def as_np(ks, x):
    return ks.to_numpy(x)


def layout_view(ks, a, layout):
    """A native 2-D array with a's values in a non-C-contiguous layout (works for any set)."""
    if layout == "fortran":
        return ks.asarray(np.ascontiguousarray(a.T)).T
    if layout == "strided":
        big = ks.asarray(np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype))
        big[:, ::2] = ks.asarray(a)
        return big[:, ::2]
    if layout == "reversed":  # columns in reverse memory order: a negative stride
        if ks.name == "torch":  # torch has no negative strides; a step of 2 stands in
            return layout_view(ks, a, "strided")
        return np.ascontiguousarray(a[:, ::-1])[:, ::-1]
    raise ValueError(layout)


def strided(a):
    """A non-contiguous view of a copy of ``a`` holding the same values (every other column)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    view = big[..., ::2]
    assert not view.flags.c_contiguous or a.shape[-1] == 1
    return view


# ---------------------------------------------------------------- matmul


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@PROPERTY
@given(m=SIZES, k=SIZES, n=SIZES, seed=SEEDS)
def test_matmul_matches_reference(name, dtype, trans_a, trans_b, m, k, n, seed):
    ks = kernel_set(name)
    rng = np.random.default_rng(seed)
    a = rand(rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    got = ks.matmul(native(ks, a), native(ks, b), trans_a=trans_a, trans_b=trans_b)
    assert as_np(ks, got).dtype == dtype
    assert_close(as_np(ks, got), want, dtype, scale=np.sqrt(k) * 4, what=f"matmul {m}x{k}x{n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed"])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_non_contiguous_inputs(ks, dtype, layout, trans):
    rng = np.random.default_rng(1)
    m, k, n = 17, 33, 9
    trans_a, trans_b = trans
    a = rand(rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    got = ks.matmul(layout_view(ks, a, layout), layout_view(ks, b, layout), trans_a=trans_a, trans_b=trans_b)
    assert_close(as_np(ks, got), want, dtype, scale=40, what=f"matmul {layout}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_out_is_written_and_returned(ks, dtype):
    rng = np.random.default_rng(2)
    a, b = rand(rng, (5, 7), dtype), rand(rng, (7, 3), dtype)
    out = native(ks, np.full((5, 3), np.nan, dtype))
    got = ks.matmul(native(ks, a), native(ks, b), out=out)
    assert got is out
    assert_close(as_np(ks, out), a.astype(np.float64) @ b, dtype, scale=10)


def test_matmul_non_contiguous_out_and_aliasing(ks):
    rng = np.random.default_rng(3)
    a = rand(rng, (6, 6), np.float64)
    b = rand(rng, (6, 6), np.float64)
    want = a @ b
    # out that is a strided view
    big = native(ks, np.zeros((6, 12)))
    out = big[:, ::2]
    got = ks.matmul(native(ks, a), native(ks, b), out=out)
    assert got is out
    assert_close(as_np(ks, out), want, np.float64, what="strided out")
    # out that is an input: the result must still be a @ b, not a partially overwritten mix
    a_n = native(ks, a.copy())
    got = ks.matmul(a_n, native(ks, b), out=a_n)
    assert got is a_n
    assert_close(as_np(ks, a_n), want, np.float64, what="out aliasing a")
    # out a contiguous view that overlaps a, shifted by three rows: neither is an owner
    base = native(ks, np.zeros((9, 6)))
    base[:6] = native(ks, a)
    got = ks.matmul(base[:6], native(ks, b), out=base[3:])
    assert_close(as_np(ks, got), want, np.float64, what="out overlapping a, shifted")


# ---------------------------------------------------------------- relu


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@PROPERTY
@given(rows=SIZES, cols=SIZES, seed=SEEDS)
def test_relu_and_backward_match_reference(name, dtype, rows, cols, seed):
    ks = kernel_set(name)
    rng = np.random.default_rng(seed)
    x = rand(rng, (rows, cols), dtype)
    y = as_np(ks, ks.relu(native(ks, x)))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    g = rand(rng, (rows, cols), dtype)
    got = as_np(ks, ks.relu_backward(native(ks, g), native(ks, y)))
    np.testing.assert_array_equal(got, g * (y > 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_strided_and_out(ks, dtype):
    rng = np.random.default_rng(4)
    x = rand(rng, (9, 17), dtype)
    xs = native(ks, np.zeros((9, 34), dtype))
    xs[:, ::2] = native(ks, x)
    view = xs[:, ::2]
    np.testing.assert_array_equal(as_np(ks, ks.relu(view)), np.maximum(x, 0))
    out = native(ks, np.full((9, 17), np.nan, dtype))
    assert ks.relu(native(ks, x), out=out) is out
    np.testing.assert_array_equal(as_np(ks, out), np.maximum(x, 0))
    inplace = native(ks, x.copy())
    assert ks.relu(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(as_np(ks, inplace), np.maximum(x, 0))
    grad = native(ks, x.copy())
    y = native(ks, np.maximum(x, 0))
    assert ks.relu_backward(grad, y, out=grad) is grad
    np.testing.assert_array_equal(as_np(ks, grad), x * (x > 0))
    # Fortran order
    xf = np.asfortranarray(x)
    if ks.name != "torch":
        np.testing.assert_array_equal(ks.relu(xf), np.maximum(x, 0))
        np.testing.assert_array_equal(ks.relu_backward(xf, np.asfortranarray(np.maximum(x, 0))), x * (x > 0))


# ---------------------------------------------------------------- softmax cross-entropy


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@PROPERTY
@given(batch=SIZES, classes=st.sampled_from([1, 2, 3, 10, 17, 129, 257]), seed=SEEDS,
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_softmax_cross_entropy_matches_reference(name, dtype, batch, classes, seed, scale):
    ks = kernel_set(name)
    rng = np.random.default_rng(seed)
    logits = rand(rng, (batch, classes), dtype, scale)
    labels = rng.integers(0, classes, batch)
    want_loss, want_grad = ref_softmax_cross_entropy(logits, labels)
    loss, grad = ks.softmax_cross_entropy(native(ks, logits), native(ks, labels))
    loss_np = as_np(ks, loss)
    assert loss_np.shape == () and loss_np.dtype == dtype
    assert_close(loss_np, want_loss, dtype, what="loss")
    assert_close(as_np(ks, grad), want_grad, dtype, scale=1.0, what="grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8])
def test_softmax_cross_entropy_extreme_logits_and_label_dtypes(ks, dtype, label_dtype):
    rng = np.random.default_rng(5)
    logits = rand(rng, (16, 10), dtype, 1e4)
    logits[0] = 1e4
    logits[1] = -1e4
    logits[2, 3] = 1e4
    logits[2, 4] = -1e4
    labels = rng.integers(0, 10, 16).astype(label_dtype)
    loss, grad = ks.softmax_cross_entropy(native(ks, logits), native(ks, labels))
    loss, grad = as_np(ks, loss), as_np(ks, grad)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    want_loss, want_grad = ref_softmax_cross_entropy(logits, labels)
    assert_close(loss, want_loss, dtype, what="loss at +-1e4")
    assert_close(grad, want_grad, dtype, scale=1.0, what="grad at +-1e4")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_strided_and_out(ks, dtype):
    rng = np.random.default_rng(6)
    logits = rand(rng, (7, 10), dtype)
    labels = rng.integers(0, 10, 7)
    want_loss, want_grad = ref_softmax_cross_entropy(logits, labels)
    big = native(ks, np.zeros((7, 20), dtype))
    big[:, ::2] = native(ks, logits)
    loss, grad = ks.softmax_cross_entropy(big[:, ::2], native(ks, labels))
    assert_close(as_np(ks, grad), want_grad, dtype, what="strided logits")
    out = native(ks, np.full((7, 10), np.nan, dtype))
    loss, grad = ks.softmax_cross_entropy(native(ks, logits), native(ks, labels), out=out)
    assert grad is out
    assert_close(as_np(ks, out), want_grad, dtype, what="out")
    assert_close(as_np(ks, loss), want_loss, dtype, what="loss")


def test_softmax_cross_entropy_gradient_is_the_finite_difference(ks):
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2])
    _, grad = ks.softmax_cross_entropy(native(ks, logits), native(ks, labels))
    grad = as_np(ks, grad)
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[idx] += eps
        minus[idx] -= eps
        lp = float(as_np(ks, ks.softmax_cross_entropy(native(ks, plus), native(ks, labels))[0]))
        lm = float(as_np(ks, ks.softmax_cross_entropy(native(ks, minus), native(ks, labels))[0]))
        numeric[idx] = (lp - lm) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


# ---------------------------------------------------------------- linear and its backward


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@PROPERTY
@given(batch=SIZES, n_in=SIZES, n_out=SIZES, seed=SEEDS)
def test_linear_and_backward_match_reference(name, dtype, relu, batch, n_in, n_out, seed):
    ks = kernel_set(name)
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, (batch, n_in), dtype), rand(rng, (n_in, n_out), dtype), rand(rng, (n_out,), dtype)
    y = ks.linear(native(ks, x), native(ks, w), native(ks, b), relu=relu)
    y_np = as_np(ks, y)
    assert y_np.dtype == dtype
    scale = 4 * np.sqrt(n_in)
    assert_close(y_np, ref_linear(x, w, b, relu), dtype, scale=scale, what="linear")
    grad_y = rand(rng, (batch, n_out), dtype)
    gx, gw, gb = ks.linear_backward(native(ks, x), native(ks, w), y, native(ks, grad_y), relu=relu)
    want = ref_linear_backward(x, w, y_np, grad_y, relu)
    assert_close(as_np(ks, gx), want[0], dtype, scale=4 * np.sqrt(n_out), what="grad_x")
    assert_close(as_np(ks, gw), want[1], dtype, scale=4 * np.sqrt(batch), what="grad_w")
    assert_close(as_np(ks, gb), want[2], dtype, scale=4 * np.sqrt(batch), what="grad_b")
    none, gw2, _ = ks.linear_backward(native(ks, x), native(ks, w), y, native(ks, grad_y), relu=relu, need_grad_x=False)
    assert none is None
    assert_close(as_np(ks, gw2), want[1], dtype, scale=4 * np.sqrt(batch), what="grad_w without grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_strided_fortran_and_out(ks, dtype):
    rng = np.random.default_rng(8)
    x, w, b = rand(rng, (5, 7), dtype), rand(rng, (7, 3), dtype), rand(rng, (3,), dtype)
    want = ref_linear(x, w, b, True)
    if ks.name != "torch":
        got = ks.linear(strided(x), np.asfortranarray(w), strided(b[None])[0], relu=True)
        assert_close(got, want, dtype, scale=20, what="strided/Fortran linear")
    out = native(ks, np.full((5, 3), np.nan, dtype))
    assert ks.linear(native(ks, x), native(ks, w), native(ks, b), relu=True, out=out) is out
    assert_close(as_np(ks, out), want, dtype, scale=20, what="linear out")
    grad_y = rand(rng, (5, 3), dtype)
    bufs = tuple(native(ks, np.full(s, np.nan, dtype)) for s in [(5, 7), (7, 3), (3,)])
    got = ks.linear_backward(native(ks, x), native(ks, w), out, native(ks, grad_y), relu=True, out=bufs)
    assert all(g is o for g, o in zip(got, bufs))
    for g, r, what in zip(got, ref_linear_backward(x, w, as_np(ks, out), grad_y, True), ["gx", "gw", "gb"]):
        assert_close(as_np(ks, g), r, dtype, scale=20, what=what)


@pytest.mark.parametrize("relu", [False, True])
def test_linear_backward_is_the_finite_difference(ks, relu):
    """For L = sum(R * linear(x, w, b)), grad_y = R and the gradients are L's derivatives."""
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    pre = x @ w + b
    b += np.where(np.abs(pre) < 1e-2, 0.1, 0.0).max(axis=0)  # keep away from the ReLU's kink
    r = rng.standard_normal((3, 5))

    def loss(x_, w_, b_):
        y = as_np(ks, ks.linear(native(ks, x_), native(ks, w_), native(ks, b_), relu=relu))
        return float((r * y).sum())

    y = ks.linear(native(ks, x), native(ks, w), native(ks, b), relu=relu)
    grads = ks.linear_backward(native(ks, x), native(ks, w), y, native(ks, r), relu=relu)
    eps = 1e-6
    for which, (arr, analytic) in enumerate(zip((x, w, b), grads)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            args_p = [x.copy(), w.copy(), b.copy()]
            args_m = [x.copy(), w.copy(), b.copy()]
            args_p[which][idx] += eps
            args_m[which][idx] -= eps
            numeric[idx] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        np.testing.assert_allclose(as_np(ks, analytic), numeric, atol=1e-6, err_msg=["x", "w", "b"][which])


# ---------------------------------------------------------------- optimizers against torch.optim


def torch_optimizer_run(kind, param, grads, **hyper):
    p = torch.nn.Parameter(torch.from_numpy(param.astype(np.float64)))
    opt = torch.optim.SGD([p], **hyper) if kind == "sgd" else torch.optim.Adam([p], **hyper)
    for g in grads:
        p.grad = torch.from_numpy(g.astype(np.float64))
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.0, 5e-2)])
@pytest.mark.parametrize("shape", [(1,), (17,), (33, 5), (257, 3)])
def test_sgd_step_follows_torch(ks, dtype, momentum, weight_decay, shape):
    rng = np.random.default_rng(10)
    param = rand(rng, shape, dtype)
    grads = [rand(rng, shape, dtype) for _ in range(5)]
    want = torch_optimizer_run("sgd", param, grads, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    p = native(ks, param.copy())
    vel = native(ks, np.zeros(shape, dtype)) if momentum else None
    for g in grads:
        assert ks.sgd_step(p, native(ks, g), lr=0.1, momentum=momentum, velocity=vel, weight_decay=weight_decay) is None
    assert_close(as_np(ks, p), want, dtype, what="sgd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("shape", [(1,), (17,), (33, 5), (257, 3)])
def test_adam_step_follows_torch(ks, dtype, weight_decay, shape):
    rng = np.random.default_rng(11)
    param = rand(rng, shape, dtype)
    grads = [rand(rng, shape, dtype) for _ in range(6)]
    hyper = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    want = torch_optimizer_run("adam", param, grads, **hyper)
    p, m, v = (native(ks, a) for a in (param.copy(), np.zeros(shape, dtype), np.zeros(shape, dtype)))
    for step, g in enumerate(grads, start=1):
        ks.adam_step(p, native(ks, g), m, v, step=step, lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6,
                     weight_decay=weight_decay)
    assert_close(as_np(ks, p), want, dtype, what="adam")


def test_optimizer_steps_on_non_contiguous_state(ks):
    """In-place updates of strided parameters land in the caller's arrays."""
    rng = np.random.default_rng(12)
    param, grad = rand(rng, (6, 4), np.float64), rand(rng, (6, 4), np.float64)
    want_sgd = torch_optimizer_run("sgd", param, [grad], lr=0.5, momentum=0.9)
    want_adam = torch_optimizer_run("adam", param, [grad], lr=0.5)
    big = native(ks, np.zeros((6, 8)))
    p = big[:, ::2]
    p[...] = native(ks, param)
    vel = native(ks, np.zeros((4, 6))).T
    ks.sgd_step(p, native(ks, grad), lr=0.5, momentum=0.9, velocity=vel)
    assert_close(as_np(ks, big[:, ::2]), want_sgd, np.float64, what="strided sgd param")
    assert_close(as_np(ks, vel), grad, np.float64, what="strided sgd velocity")
    p[...] = native(ks, param)
    m, v = native(ks, np.zeros((4, 6))).T, native(ks, np.zeros((6, 8)))[:, 1::2]
    ks.adam_step(p, native(ks, grad), m, v, step=1, lr=0.5)
    assert_close(as_np(ks, big[:, ::2]), want_adam, np.float64, what="strided adam param")


def test_results_do_not_depend_on_dtype_beyond_precision(ks):
    """float32 and float64 runs of one op agree to float32 precision (no dtype-specific bug)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((33, 20))
    w = rng.standard_normal((20, 7))
    b = rng.standard_normal(7)
    y64 = as_np(ks, ks.linear(*(native(ks, a) for a in (x, w, b)), relu=True))
    y32 = as_np(ks, ks.linear(*(native(ks, a.astype(np.float32)) for a in (x, w, b)), relu=True))
    np.testing.assert_allclose(y32, y64, atol=tolerance(np.float32) * 20)
