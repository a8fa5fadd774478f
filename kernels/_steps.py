"""train_steps, op by op: the reference every set runs unless it has a fused one of its own.

``KernelSet.train_steps`` trains a ReLU MLP for many steps in one call. A backend that defines
``train_steps`` (numba, cython) runs the whole loop (gather, forward, loss, backward, update)
in compiled code, with no Python between ops. Every other backend (numpy, torch, the naive
sets) gets ``per_op`` below: the same step written as calls to its own kernels, one by one,
exactly as ``nn.model.MLP.train_step`` makes them. It calls the backend directly, past the
front's checks (done once for the whole call), so it costs the set what its kernels cost and
nothing more: the fair baseline for a fused step.

The step (k counts the steps of one call from 0; B = batch; L layers; params
[w1, b1, ..., wL, bL], w_i (n_{i-1}, n_i)):

    rows      = order[k*B : (k+1)*B]                   (the last step may have fewer rows)
    a_0       = x[rows]
    a_i       = relu(a_{i-1} @ w_i + b_i)   i < L     (linear, relu=True)
    a_L       = a_{L-1} @ w_L + b_L                    (the logits)
    losses[k], g_L = softmax_cross_entropy(a_L, labels[rows])
    for i = L .. 1: g_{i-1}, dw_i, db_i = linear_backward(a_{i-1}, w_i, a_i, g_i,
                                                          relu=i < L, need_grad_x=i > 1)
    then each parameter in order w1, b1, w2, ...: sgd_step or adam_step (Adam's t = step + k + 1)

Every loss is the loss of its batch before that batch's update.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Optimizer(NamedTuple):
    """The update a train_steps call applies after each step's backward pass.

    kind "sgd": torch.optim.SGD; state is a list of velocity arrays aligned with params when
    momentum != 0, else None. kind "adam": torch.optim.Adam; state is (m list, v list) aligned
    with params, and step counts the steps already taken (the call's first step has t = step + 1).
    """

    kind: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 0
    state: object = None


def n_steps(samples: int, batch: int) -> int:
    """Steps in a call over ``samples`` samples: the last batch may be partial."""
    return -(-samples // batch)


def per_op(backend, arrays, params, x, labels, order, batch, losses, opt: Optimizer) -> None:
    """``backend``'s kernels, one call per op, in the order the module docstring gives.

    Arguments as the backend protocol's train_steps: checked, C-contiguous, ``labels`` and
    ``order`` int64 native arrays, ``losses`` (n_steps,) of x's dtype, written in place.
    """
    dtype = arrays.dtype(x)
    n_layers = len(params) // 2
    sizes = [int(x.shape[1])] + [int(params[2 * i].shape[1]) for i in range(n_layers)]
    grads = [arrays.empty(tuple(p.shape), dtype) for p in params]
    buffers = {}  # rows -> (x, labels, activations, their gradients): at most two sizes

    def buffers_for(rows):
        if rows not in buffers:
            buffers[rows] = (
                arrays.empty((rows, sizes[0]), dtype),
                arrays.empty((rows,), np.int64),
                [arrays.empty((rows, n), dtype) for n in sizes[1:]],
                [arrays.empty((rows, n), dtype) for n in sizes[1:]],
            )
        return buffers[rows]

    total = int(order.shape[0])
    for k in range(n_steps(total, batch)):
        idx = order[k * batch:(k + 1) * batch]
        xb, yb, acts, grad_acts = buffers_for(int(idx.shape[0]))
        arrays.take_rows(x, idx, xb)
        arrays.take_rows(labels, idx, yb)
        inp = xb
        for i in range(n_layers):
            backend.linear(inp, params[2 * i], params[2 * i + 1], acts[i], i < n_layers - 1)
            inp = acts[i]
        losses[k] = backend.softmax_cross_entropy(acts[-1], yb, grad_acts[-1])
        for i in reversed(range(n_layers)):
            inp = acts[i - 1] if i > 0 else xb
            backend.linear_backward(inp, params[2 * i], acts[i], grad_acts[i],
                                    grad_acts[i - 1] if i > 0 else None, grads[2 * i], grads[2 * i + 1],
                                    i < n_layers - 1)
        _update(backend, params, grads, opt, opt.step + k + 1)


def _update(backend, params, grads, opt: Optimizer, t: int) -> None:
    for j, (p, g) in enumerate(zip(params, grads)):
        if opt.kind == "adam":
            m, v = opt.state
            backend.adam_step(p, g, m[j], v[j], t, opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)
        else:
            velocity = opt.state[j] if opt.state is not None else None
            backend.sgd_step(p, g, velocity, opt.lr, opt.momentum, opt.weight_decay)
