"""tanh and dropout, every set: tanh / tanh_backward against a float64 reference (hypothesis
shapes, infinities, large |x|, NaN, signed zeros), tanh in linear's epilogue and its backward,
and dropout's masks bit for bit against kernels/_layers.py's scalar definition.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DTYPES, SET_NAMES, assert_close, kernel_set
from kernels import _layers

SIZES = st.sampled_from([1, 2, 3, 5, 8, 17, 31, 64, 129, 257])
SEEDS = st.integers(0, 2**32 - 1)
PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ulps(got, want64, dtype):
    """|got - want| in units of the dtype's spacing at want (float64 reference)."""
    want = want64.astype(dtype)
    spacing = np.spacing(np.abs(want)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want64) / spacing


# ---------------------------------------------------------------- tanh


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@PROPERTY
@given(rows=SIZES, cols=SIZES, seed=SEEDS, scale=st.sampled_from([1e-3, 0.3, 1.0, 4.0, 30.0]))
def test_tanh_and_backward_match_reference(name, dtype, rows, cols, seed, scale):
    ks = kernel_set(name)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * scale).astype(dtype)
    y = ks.to_numpy(ks.tanh(ks.asarray(x)))
    assert y.dtype == dtype and y.shape == x.shape
    err = ulps(y, np.tanh(x.astype(np.float64)), dtype)
    assert err.max() <= 4, f"tanh is {err.max():.1f} ulp off at x = {x.flat[err.argmax()]!r}"
    g = rng.standard_normal((rows, cols)).astype(dtype)
    got = ks.to_numpy(ks.tanh_backward(ks.asarray(g), ks.asarray(y)))
    want = g.astype(np.float64) * (1 - y.astype(np.float64) ** 2)
    assert_close(got, want, dtype, scale=float(np.abs(g).max()), what="tanh_backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_special_values(ks, dtype):
    big = np.finfo(dtype).max
    exact = np.array([np.inf, -np.inf, 1e4, -1e4, big, -big, 0.0, -0.0], dtype)
    y = ks.to_numpy(ks.tanh(ks.asarray(exact)))
    np.testing.assert_array_equal(y, [1, -1, 1, -1, 1, -1, 0, 0])
    assert np.signbit(y[7]) and not np.signbit(y[6]), "tanh(-0) is -0, tanh(0) is 0"
    near = np.array([20.0, -20.0, 9.1, -19.5, 1e-30, -1e-30, 0.625, -0.625, 0.6249, 3.0], dtype)
    err = ulps(ks.to_numpy(ks.tanh(ks.asarray(near))), np.tanh(near.astype(np.float64)), dtype)
    assert err.max() <= 4, f"tanh is {err.max():.1f} ulp off at x = {near[err.argmax()]!r}"
    nan = ks.to_numpy(ks.tanh(ks.asarray(np.array([np.nan, 1.0, -np.nan], dtype))))
    assert np.isnan(nan[0]) and np.isnan(nan[2]) and not np.isnan(nan[1]), "NaN propagates, lane by lane"
    # NaN through the backward, either argument; and the gradient at saturation is 0
    g = ks.to_numpy(ks.tanh_backward(ks.asarray(np.array([np.nan, 1, 2], dtype)),
                                     ks.asarray(np.array([0.5, np.nan, 1.0], dtype))))
    assert np.isnan(g[0]) and np.isnan(g[1]) and g[2] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_strided_out_and_in_place(ks, dtype):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((9, 17)) * 2).astype(dtype)
    want = np.tanh(x.astype(np.float64))
    big = ks.asarray(np.zeros((9, 34), dtype))
    big[:, ::2] = ks.asarray(x)
    assert ulps(ks.to_numpy(ks.tanh(big[:, ::2])), want, dtype).max() <= 4
    inplace = ks.asarray(x.copy())
    assert ks.tanh(inplace, out=inplace) is inplace
    assert ulps(ks.to_numpy(inplace), want, dtype).max() <= 4
    grad = ks.asarray(x.copy())
    assert ks.tanh_backward(grad, inplace, out=grad) is grad
    assert_close(ks.to_numpy(grad), x * (1 - ks.to_numpy(inplace).astype(np.float64) ** 2), dtype, what="in place")


# ---------------------------------------------------------------- tanh in linear


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@PROPERTY
@given(batch=SIZES, n_in=SIZES, n_out=SIZES, seed=SEEDS)
def test_linear_tanh_and_backward_match_reference(name, dtype, batch, n_in, n_out, seed):
    ks = kernel_set(name)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    y = ks.linear(ks.asarray(x), ks.asarray(w), ks.asarray(b), activation="tanh")
    y_np = ks.to_numpy(y)
    assert y_np.dtype == dtype
    pre = x.astype(np.float64) @ w + b
    assert_close(y_np, np.tanh(pre), dtype, scale=4.0, what="linear tanh")
    grad_y = rng.standard_normal((batch, n_out)).astype(dtype)
    gx, gw, gb = ks.linear_backward(ks.asarray(x), ks.asarray(w), y, ks.asarray(grad_y), activation="tanh")
    g = grad_y * (1 - y_np.astype(np.float64) ** 2)
    assert_close(ks.to_numpy(gx), g @ w.T.astype(np.float64), dtype, scale=4 * np.sqrt(n_out), what="grad_x")
    assert_close(ks.to_numpy(gw), x.T.astype(np.float64) @ g, dtype, scale=4 * np.sqrt(batch), what="grad_w")
    assert_close(ks.to_numpy(gb), g.sum(axis=0), dtype, scale=4 * np.sqrt(batch), what="grad_b")


def test_linear_tanh_is_tanh_of_linear_and_relu_flag_still_works(ks):
    """The epilogue's tanh is the set's own tanh op of the plain product, to rounding; relu=True
    is activation="relu"; the two together must agree."""
    rng = np.random.default_rng(5)
    x, w, b = (ks.asarray(rng.standard_normal(s).astype(np.float32)) for s in [(33, 40), (40, 70), (70,)])
    fused = ks.to_numpy(ks.linear(x, w, b, activation="tanh"))
    apart = ks.to_numpy(ks.tanh(ks.linear(x, w, b)))
    np.testing.assert_allclose(fused, apart, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ks.to_numpy(ks.linear(x, w, b, relu=True)),
                                  ks.to_numpy(ks.linear(x, w, b, activation="relu")))
    np.testing.assert_array_equal(ks.to_numpy(ks.linear(x, w, b, relu=True, activation="relu")),
                                  ks.to_numpy(ks.linear(x, w, b, activation="relu")))
    with pytest.raises(ValueError, match="disagree"):
        ks.linear(x, w, b, relu=True, activation="tanh")
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'tanh'"):
        ks.linear(x, w, b, activation="sigmoid")
    with pytest.raises(ValueError, match="activation must be"):
        ks.linear_backward(x, w, ks.linear(x, w, b), ks.linear(x, w, b), activation=1)


def test_linear_backward_tanh_is_the_finite_difference(ks):
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)) * 0.5, rng.standard_normal(5)
    r = rng.standard_normal((3, 5))

    def loss(x_, w_, b_):
        y = ks.to_numpy(ks.linear(ks.asarray(x_), ks.asarray(w_), ks.asarray(b_), activation="tanh"))
        return float((r * y).sum())

    y = ks.linear(ks.asarray(x), ks.asarray(w), ks.asarray(b), activation="tanh")
    grads = ks.linear_backward(ks.asarray(x), ks.asarray(w), y, ks.asarray(r), activation="tanh")
    eps = 1e-6
    for which, (arr, analytic) in enumerate(zip((x, w, b), grads)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            args_p, args_m = [x.copy(), w.copy(), b.copy()], [x.copy(), w.copy(), b.copy()]
            args_p[which][idx] += eps
            args_m[which][idx] -= eps
            numeric[idx] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        np.testing.assert_allclose(ks.to_numpy(analytic), numeric, atol=1e-6, err_msg=["x", "w", "b"][which])


# ---------------------------------------------------------------- dropout


def scalar_mask(seed, step, layer, rows, units, p):
    """kernels/_layers.py's definition, one Python int at a time (independent of every array
    implementation)."""
    key = _layers.mask_key(seed, step, layer)
    thresh = _layers.threshold(p)
    return np.array([[_layers.fmix32(key + (i * units + j) * _layers.GOLDEN) >= thresh for j in range(units)]
                     for i in range(rows)])


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.sampled_from([1, 3, 17, 64]), units=st.sampled_from([1, 5, 64, 129]),
       seed=st.integers(0, 2**64 - 1), step=st.integers(0, 2**63 - 1), layer=st.integers(0, 5),
       p=st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_dropout_is_the_hash_mask_in_every_set(name, dtype, rows, units, seed, step, layer, p):
    ks = kernel_set(name)
    rng = np.random.default_rng(layer)
    x = rng.standard_normal((rows, units)).astype(dtype)
    keep = scalar_mask(seed, step, layer, rows, units, p)
    want = np.where(keep, x * dtype(1.0 / (1.0 - p)), 0).astype(dtype)
    got = ks.to_numpy(ks.dropout(ks.asarray(x), p=p, seed=seed, step=step, layer=layer))
    np.testing.assert_array_equal(got, want)
    back = ks.to_numpy(ks.dropout_backward(ks.asarray(x), p=p, seed=seed, step=step, layer=layer))
    np.testing.assert_array_equal(back, want)


def test_dropout_keeps_one_minus_p_and_masks_differ(ks):
    x = ks.asarray(np.ones((256, 256), np.float32))
    for p in (0.1, 0.5):
        kept = ks.to_numpy(ks.dropout(x, p=p, seed=3, step=1)) != 0
        # 65536 units: the kept fraction is within 4 standard deviations of 1 - p
        assert abs(kept.mean() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / kept.size), (p, kept.mean())
        assert abs(kept.mean(axis=0) - (1 - p)).max() < 0.2 and abs(kept.mean(axis=1) - (1 - p)).max() < 0.2
    a = ks.to_numpy(ks.dropout(x, p=0.5, seed=3, step=1, layer=1)) != 0
    for other in (dict(seed=4, step=1, layer=1), dict(seed=3, step=2, layer=1), dict(seed=3, step=1, layer=2)):
        b = ks.to_numpy(ks.dropout(x, p=0.5, **other)) != 0
        assert 0.4 < (a == b).mean() < 0.6, f"{other}: masks should be independent"
    np.testing.assert_array_equal(ks.to_numpy(ks.dropout(x, p=0.0, seed=3, step=1)), ks.to_numpy(x))


def test_dropout_strided_out_in_place_and_bad_arguments(ks):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 17))
    want = np.where(scalar_mask(1, 2, 3, 9, 17, 0.3), x * (1.0 / 0.7), 0)   # x times the scale
    big = ks.asarray(np.zeros((9, 34)))
    big[:, ::2] = ks.asarray(x)
    np.testing.assert_array_equal(ks.to_numpy(ks.dropout(big[:, ::2], p=0.3, seed=1, step=2, layer=3)), want)
    inplace = ks.asarray(x.copy())
    assert ks.dropout(inplace, p=0.3, seed=1, step=2, layer=3, out=inplace) is inplace
    np.testing.assert_array_equal(ks.to_numpy(inplace), want)
    xs = ks.asarray(x)
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be a dropout rate in \[0, 1\)"):
            ks.dropout(xs, p=p, seed=0, step=0)
    with pytest.raises(TypeError, match="p must be a real number"):
        ks.dropout(xs, p="0.1", seed=0, step=0)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        ks.dropout(xs, p=0.1, seed=-1, step=0)
    with pytest.raises(TypeError, match="step must be an integer"):
        ks.dropout(xs, p=0.1, seed=0, step=1.5)
    with pytest.raises(ValueError, match="must be 2-D"):
        ks.dropout(ks.asarray(np.ones(5)), p=0.1, seed=0, step=0)


def test_train_steps_refuses_bad_activation_and_dropout(ks):
    rng = np.random.default_rng(1)
    params = [ks.asarray(rng.standard_normal(s)) for s in [(4, 3), (3,), (3, 2), (2,)]]
    x, y, order = ks.asarray(rng.standard_normal((6, 4))), ks.asarray(np.arange(6) % 2), ks.asarray(np.arange(6))

    def call(**kw):
        return ks.train_steps(params, x, y, order, batch=3, lr=0.1, **kw)

    with pytest.raises(ValueError, match="activation must be one of 'relu', 'tanh'"):
        call(activation="sigmoid")
    with pytest.raises(ValueError, match="activation must be one of"):
        call(activation=None)
    for p in (-0.5, 1.0, float("inf")):
        with pytest.raises(ValueError, match=r"dropout must be a dropout rate in \[0, 1\)"):
            call(dropout=p)
    with pytest.raises(TypeError, match="dropout must be a real number"):
        call(dropout="0.1")
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        call(dropout=0.1, seed=2**64)
    before = [ks.to_numpy(p).copy() for p in params]
    assert np.isfinite(ks.to_numpy(call(activation="tanh", dropout=0.5, seed=3))).all()
    assert any(not np.array_equal(ks.to_numpy(p), b) for p, b in zip(params, before))
