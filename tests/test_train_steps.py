"""train_steps, for every set, against an independent reference: the same MLP in float64
PyTorch (nn.Linear-free: plain tensors, autograd, torch.optim), trained on the same batches.

The compiled sets run their own fused loop and every other set the op-by-op composition in
kernels/_steps.py; both must be the training that torch does.
"""

import numpy as np
import pytest
import torch

import kernels
from conftest import DTYPES, tolerance
from kernels import _layers
from kernels._steps import Hidden, Optimizer, n_steps, per_op

OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=0.05),
    "momentum+wd": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": dict(optimizer="adam", lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6),
    "adam+wd": dict(optimizer="adam", lr=1e-2, weight_decay=1e-2),
}


def make_problem(sizes, samples, seed):
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in), rng.standard_normal(fan_out) * 0.1]
    x = rng.standard_normal((samples, sizes[0]))
    y = rng.integers(0, sizes[-1], samples)
    return params, x, y


def torch_reference(params, x, y, order, batch, hyper, activation="relu", dropout=0.0, seed=0):
    """(losses, params) after training float64 copies with autograd and torch.optim; hidden
    layers ``activation``, and dropout of rate ``dropout`` with kernels/_layers.py's masks
    (for step t counted from 1, hidden layer i counted from 1)."""
    ps = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    kind = hyper["optimizer"]
    if kind == "sgd":
        opt = torch.optim.SGD(ps, lr=hyper["lr"], momentum=hyper.get("momentum", 0.0),
                              weight_decay=hyper.get("weight_decay", 0.0))
    else:
        opt = torch.optim.Adam(ps, lr=hyper["lr"], betas=(hyper.get("beta1", 0.9), hyper.get("beta2", 0.999)),
                               eps=hyper.get("eps", 1e-8), weight_decay=hyper.get("weight_decay", 0.0))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for t, start in enumerate(range(0, len(order), batch), start=1):
        rows = torch.from_numpy(order[start:start + batch])
        h = xt[rows]
        for i in range(len(ps) // 2):
            h = h @ ps[2 * i] + ps[2 * i + 1]
            if i < len(ps) // 2 - 1:
                h = torch.tanh(h) if activation == "tanh" else torch.relu(h)
                if dropout:
                    keep = _layers.hash_numpy(_layers.mask_key(seed, t, i + 1), *h.shape) >= _layers.threshold(dropout)
                    h = h * torch.from_numpy(np.where(keep, _layers.scale(dropout), 0.0))
        loss = torch.nn.functional.cross_entropy(h, yt[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses), [p.detach().numpy() for p in ps]


def run_set(ks, params, x, y, order, batch, hyper, dtype, **hidden):
    """(losses, params) after ks.train_steps on copies in ``dtype``."""
    native = [ks.asarray(np.ascontiguousarray(p, dtype)) for p in params]
    kwargs = dict(hyper, **hidden)
    zeros = lambda: [ks.asarray(np.zeros(p.shape, dtype)) for p in params]  # noqa: E731
    if hyper["optimizer"] == "adam":
        kwargs.update(m=zeros(), v=zeros())
    elif hyper.get("momentum"):
        kwargs.update(velocity=zeros())
    losses = ks.train_steps(native, ks.asarray(x.astype(dtype)), ks.asarray(y), ks.asarray(order),
                            batch=batch, **kwargs)
    return ks.to_numpy(losses), [ks.to_numpy(p) for p in native]


def check(got_losses, got_params, want_losses, want_params, dtype, what):
    # float32 errors compound over steps; a few steps of a small net stay well inside 20x the
    # single-op tolerance, while a wrong gradient or update is off by orders of magnitude more
    tol = tolerance(dtype) * (20 if np.dtype(dtype) == np.float32 else 100)
    assert got_losses.shape == want_losses.shape, f"{what}: {got_losses.shape} losses, expected {want_losses.shape}"
    np.testing.assert_allclose(got_losses, want_losses, rtol=tol, atol=tol, err_msg=f"{what}: losses")
    for i, (g, w) in enumerate(zip(got_params, want_params)):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{what}: param {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("sizes, batch", [
    ([20, 16, 8, 5], 16),        # three layers; 50 samples: the last batch has 2 rows
    ([33, 17, 10], 1),           # batch 1: the path a per-sample epoch takes
    ([300, 130, 10], 1),         # ... with a first layer that the compiled sets split by threads
    ([7, 3], 8),                 # one layer: logistic regression, no hidden ReLU
    ([130, 65, 10], 50),         # one batch covers every sample
])
def test_train_steps_is_torch_training(ks, dtype, opt, sizes, batch):
    params, x, y = make_problem(sizes, 50, seed=len(sizes) * 100 + batch)
    order = np.random.default_rng(batch).permutation(50)[: 50 if batch > 1 else 12]
    hyper = OPTIMIZERS[opt]
    want_losses, want_params = torch_reference(params, x, y, order, batch, hyper)
    got_losses, got_params = run_set(ks, params, x, y, order, batch, hyper, dtype)
    check(got_losses, got_params, want_losses, want_params, dtype, f"{ks.name} {opt} b{batch}")


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_two_calls_are_one(ks, kind):
    """Splitting the steps over two calls (state and Adam's step count carried) changes nothing."""
    params, x, y = make_problem([12, 9, 4], 40, seed=5)
    order = ks.asarray(np.random.default_rng(6).permutation(40))
    hyper = dict(optimizer="sgd", lr=0.1, momentum=0.9) if kind == "momentum" else dict(optimizer="adam", lr=0.01)
    runs = []
    for split in (None, 24):        # 24 = three batches of 8
        p = [ks.asarray(a.copy()) for a in params]
        z = lambda: [ks.asarray(np.zeros_like(a)) for a in params]  # noqa: E731
        state = dict(velocity=z()) if kind == "momentum" else dict(m=z(), v=z())
        xs, ys = ks.asarray(x), ks.asarray(y)
        if split is None:
            losses = ks.to_numpy(ks.train_steps(p, xs, ys, order, batch=8, **hyper, **state))
        else:
            first = ks.train_steps(p, xs, ys, order[:split], batch=8, **hyper, **state)
            second = ks.train_steps(p, xs, ys, order[split:], batch=8, step=split // 8, **hyper, **state)
            losses = np.concatenate([ks.to_numpy(first), ks.to_numpy(second)])
        runs.append((losses, [ks.to_numpy(a) for a in p]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-12)
    for a, b in zip(runs[1][1], runs[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_out_is_written_and_returned(ks):
    params, x, y = make_problem([6, 4, 3], 10, seed=7)
    p = [ks.asarray(a.astype(np.float32)) for a in params]
    out = ks.asarray(np.full(4, np.nan, np.float32))
    got = ks.train_steps(p, ks.asarray(x.astype(np.float32)), ks.asarray(y), ks.asarray(np.arange(10)),
                         batch=3, lr=0.1, out=out)
    assert got is out
    values = ks.to_numpy(out)
    assert np.all(np.isfinite(values)) and np.all(values > 0), values


def test_labels_of_any_integer_dtype_and_strided_x(ks):
    """x that is not contiguous is read as its values; int8 labels train as int64 ones."""
    params, x, y = make_problem([10, 6, 3], 20, seed=8)
    order = np.arange(20)
    want_losses, want_params = torch_reference(params, x, y, order, 5, OPTIMIZERS["sgd"])
    wide = np.zeros((20, 20))
    wide[:, ::2] = x
    p = [ks.asarray(a.copy()) for a in params]
    losses = ks.train_steps(p, ks.asarray(wide)[:, ::2], ks.asarray(y.astype(np.int8)), ks.asarray(order),
                            batch=5, **OPTIMIZERS["sgd"])
    check(ks.to_numpy(losses), [ks.to_numpy(a) for a in p], want_losses, want_params, np.float64, ks.name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation, dropout", [("tanh", 0.0), ("relu", 0.3), ("tanh", 0.1)])
@pytest.mark.parametrize("sizes, batch", [([20, 16, 8, 5], 16), ([33, 17, 10], 1), ([130, 65, 10], 50)])
def test_tanh_and_dropout_train_as_torch_does(ks, dtype, activation, dropout, sizes, batch):
    """tanh hidden layers and dropout, against autograd on the same masks (step t from 1)."""
    params, x, y = make_problem(sizes, 50, seed=len(sizes) * 10 + batch)
    order = np.random.default_rng(batch).permutation(50)[: 50 if batch > 1 else 12]
    hyper = OPTIMIZERS["adam"]
    hidden = dict(activation=activation, dropout=dropout, seed=2**33 + 7)
    want_losses, want_params = torch_reference(params, x, y, order, batch, hyper, **hidden)
    got_losses, got_params = run_set(ks, params, x, y, order, batch, hyper, dtype, **hidden)
    check(got_losses, got_params, want_losses, want_params, dtype, f"{ks.name} {activation} p={dropout} b{batch}")


FUSED = [name for name in kernels.names() if hasattr(kernels.backend_module(name) if kernels.available()[name] is None
                                                     else None, "train_steps")]


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation, dropout", [("relu", 0.0), ("tanh", 0.0), ("relu", 0.2), ("tanh", 0.2)])
@pytest.mark.parametrize("sizes, batch", [([784, 128, 64, 10], 32), ([40, 24, 12, 3], 7), ([33, 17, 10], 1)])
def test_fused_train_steps_is_the_per_op_step(name, dtype, activation, dropout, sizes, batch):
    """A set's fused train_steps against kernels/_steps.py's per_op on the same set's kernels:
    the fused loop must be the per-op step (dropout included, its masks from the same seed
    and step numbers), to rounding; over two calls, with Adam's step carried."""
    ks = kernels.get(name)
    backend = kernels.backend_module(name)
    params, x, y = make_problem(sizes, 100, seed=batch)
    x[x < 0.3] = 0.0            # zeros, as in images, for the sets that skip them
    order = np.random.default_rng(batch).permutation(100)[: 100 if batch > 1 else 20]
    hidden = dict(activation=activation, dropout=dropout, seed=11)
    results = []
    for fused in (True, False):
        p = [np.array(a, dtype) for a in params]        # copies: both runs start alike
        m, v = [np.zeros_like(a) for a in p], [np.zeros_like(a) for a in p]
        xs, losses, step = x.astype(dtype), [], 0
        for part in np.array_split(order, 2):
            if fused:
                got = ks.train_steps(p, xs, y, part, batch=batch, optimizer="adam", lr=1e-2, m=m, v=v, step=step,
                                     **hidden)
            else:
                got = np.empty(n_steps(len(part), batch), dtype)
                opt = Optimizer(kind="adam", lr=1e-2, step=step, state=(m, v))
                h = Hidden(act=_layers.ACTIVATIONS[activation], p=dropout, seed=11,
                           threshold=_layers.threshold(dropout), scale=_layers.scale(dropout))
                per_op(backend, ks._arrays, p, xs, y, part, batch, got, opt, h)
            losses.append(np.array(got))
            step += len(got)
        results.append((np.concatenate(losses), p))
    (fused_losses, fused_params), (op_losses, op_params) = results
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fused_losses, op_losses, rtol=tol, atol=tol, err_msg="losses")
    for i, (a, b) in enumerate(zip(fused_params, op_params)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"param {i}")
