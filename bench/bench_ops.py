"""Every other op of the interface on every set, beside PyTorch's idiomatic equivalents.

* relu, relu_backward: memory-bound passes, at 32x10 .. 4096x1000; tanh, tanh_backward at the
  same shapes (tanh: np.tanh on the numpy set, torch.tanh on torch, a vectorised tanh on the
  compiled sets).
* softmax_cross_entropy at the same shapes, beside ``torch-autograd``: what a PyTorch user
  writes, F.cross_entropy on a leaf tensor and .backward() (grad set to None first, as
  zero_grad does).
* linear, with the bias only and with the fused ReLU or tanh, at the MLP's forward shapes: set
  beside the bare matmul of the same shape (bench_matmul, case b*-fwd*) it shows what bias and
  activation cost.
* linear_backward as the MLP's backward pass calls it.
* sgd_step and adam_step over six arrays shaped like the MLP's parameters, beside
  ``torch-optim``: torch.optim.SGD / torch.optim.Adam .step() over tensors of the same shapes.

Every op writes preallocated outputs (out=), as the trainer does, so allocation is not timed.
"""

import pytest

from bench import cases as C
from bench.conftest import skip_unless_available, torch_threads
from bench.inputs import (autograd_cross_entropy, empty, linear_inputs, native, normal, relu_backward_inputs,
                          softmax_inputs, tanh_backward_inputs)

AUTOGRAD_REFS = (C.TORCH_AUTOGRAD, C.TORCH_AUTOGRAD + "-cuda")
OPTIM_REFS = (C.TORCH_OPTIM, C.TORCH_OPTIM + "-cuda")


@pytest.mark.cases(C.elementwise_cases("relu"))
def test_relu(ks, case, dtype, measure):
    shape = (case.params["rows"], case.params["cols"])
    x, out = native(ks, shape, dtype), empty(ks, shape, dtype)
    measure(lambda: ks.relu(x, out=out))


@pytest.mark.cases(C.elementwise_cases("relu_backward"))
def test_relu_backward(ks, case, dtype, measure):
    shape = (case.params["rows"], case.params["cols"])
    grad_y, y, out = relu_backward_inputs(ks, shape, dtype)
    measure(lambda: ks.relu_backward(grad_y, y, out=out))


@pytest.mark.cases(C.elementwise_cases("tanh"))
def test_tanh(ks, case, dtype, measure):
    shape = (case.params["rows"], case.params["cols"])
    x, out = native(ks, shape, dtype, scale=2.0), empty(ks, shape, dtype)
    measure(lambda: ks.tanh(x, out=out))


@pytest.mark.cases(C.elementwise_cases("tanh_backward"))
def test_tanh_backward(ks, case, dtype, measure):
    shape = (case.params["rows"], case.params["cols"])
    grad_y, y, out = tanh_backward_inputs(ks, shape, dtype)
    measure(lambda: ks.tanh_backward(grad_y, y, out=out))


# ---------------------------------------------------------------- softmax_cross_entropy


@pytest.mark.cases(C.softmax_cases(), refs=AUTOGRAD_REFS)
def test_softmax_cross_entropy(set_name, case, dtype, threads, measure):
    batch, classes = case.params["batch"], case.params["classes"]
    if set_name in AUTOGRAD_REFS:
        device = skip_unless_available(set_name)
        measure(autograd_cross_entropy(torch_threads(threads), batch, classes, dtype, device))
        return
    from bench.conftest import get_set

    ks = get_set(set_name, threads)
    logits, target, grad = softmax_inputs(ks, batch, classes, dtype)
    measure(lambda: ks.softmax_cross_entropy(logits, target, out=grad))


# ---------------------------------------------------------------- linear


@pytest.mark.cases(C.linear_cases())
def test_linear(ks, case, dtype, measure):
    x, w, b, out = linear_inputs(ks, case, dtype)
    activation = case.params["activation"]
    measure(lambda: ks.linear(x, w, b, activation=activation, out=out))


@pytest.mark.cases(C.linear_backward_cases())
def test_linear_backward(ks, case, dtype, measure):
    p = case.params
    batch, n_in, n_out, relu, need_grad_x = p["batch"], p["n_in"], p["n_out"], p["relu"], p["need_grad_x"]
    x = native(ks, (batch, n_in), dtype, seed=1)
    w = native(ks, (n_in, n_out), dtype, seed=2, scale=0.05)
    b = native(ks, (n_out,), dtype, seed=3)
    y = ks.linear(x, w, b, relu=relu)
    grad_y = native(ks, (batch, n_out), dtype, seed=4)
    out = (empty(ks, (batch, n_in), dtype) if need_grad_x else None,
           empty(ks, (n_in, n_out), dtype), empty(ks, (n_out,), dtype))
    measure(lambda: ks.linear_backward(x, w, y, grad_y, relu=relu, need_grad_x=need_grad_x, out=out))


# ---------------------------------------------------------------- optimizers


def _params_and_grads(make):
    shapes = C.mlp_param_shapes()
    params = [make(s, seed=10 + i, scale=0.05) for i, s in enumerate(shapes)]
    grads = [make(s, seed=20 + i, scale=0.01) for i, s in enumerate(shapes)]
    return params, grads


def _torch_optimizer(set_name, dtype, threads, make_optimizer):
    """torch.optim over tensors shaped like the MLP's parameters, their .grad already set."""
    device = skip_unless_available(set_name)
    torch = torch_threads(threads)
    params, grads = _params_and_grads(
        lambda s, seed, scale: torch.from_numpy(normal(s, dtype, seed, scale)).to(device))
    for p, g in zip(params, grads):
        p.requires_grad_(True)
        p.grad = g
    return make_optimizer(torch.optim, params).step


@pytest.mark.cases([c for c in C.optimizer_cases() if c.op == "sgd_step"], refs=OPTIM_REFS)
def test_sgd_step(set_name, case, dtype, threads, measure):
    if set_name in OPTIM_REFS:
        measure(_torch_optimizer(set_name, dtype, threads, lambda optim, ps: optim.SGD(ps, lr=1e-3)))
        return
    from bench.conftest import get_set

    ks = get_set(set_name, threads)
    params, grads = _params_and_grads(lambda s, seed, scale: native(ks, s, dtype, seed, scale))

    def step():
        for p, g in zip(params, grads):
            ks.sgd_step(p, g, lr=1e-3)

    measure(step)


@pytest.mark.cases([c for c in C.optimizer_cases() if c.op == "adam_step"], refs=OPTIM_REFS)
def test_adam_step(set_name, case, dtype, threads, measure):
    if set_name in OPTIM_REFS:
        measure(_torch_optimizer(set_name, dtype, threads, lambda optim, ps: optim.Adam(ps, lr=1e-3)))
        return
    from bench.conftest import get_set

    ks = get_set(set_name, threads)
    params, grads = _params_and_grads(lambda s, seed, scale: native(ks, s, dtype, seed, scale))
    ms = [empty(ks, p.shape, dtype) for p in params]
    vs = [empty(ks, p.shape, dtype) for p in params]
    count = [0]

    def step():
        count[0] += 1
        t = count[0]
        for p, g, m, v in zip(params, grads, ms, vs):
            ks.adam_step(p, g, m, v, step=t, lr=1e-3)

    measure(step)
