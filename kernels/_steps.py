"""train_steps, op by op: the reference every set runs unless it has a fused one of its own.

``KernelSet.train_steps`` trains an MLP for many steps in one call. A backend that defines
``train_steps`` (numba, cython) runs the whole loop (gather, forward, loss, backward, update)
in compiled code, with no Python between ops. Every other backend (numpy, torch, the naive
sets) gets ``per_op`` below: the same step written as calls to its own kernels, one by one,
exactly as ``nn.model.MLP.train_step`` makes them. It calls the backend directly, past the
front's checks (done once for the whole call), so it costs the set what its kernels cost and
nothing more: the fair baseline for a fused step.

The step (k counts the steps of one call from 0; t = step + k + 1 counts the run's steps
from 1; B = batch; L layers; params [w1, b1, ..., wL, bL], w_i (n_{i-1}, n_i); act the hidden
layers' activation, relu or tanh; p the dropout rate, s its seed):

    rows      = order[k*B : (k+1)*B]                   (the last step may have fewer rows)
    d_0       = x[rows]
    y_i       = act(d_{i-1} @ w_i + b_i)    i < L     (linear, activation=act)
    d_i       = dropout(y_i, p, s, t, layer=i)         (only when p > 0; else d_i is y_i)
    y_L       = d_{L-1} @ w_L + b_L                    (the logits)
    losses[k], g_L = softmax_cross_entropy(y_L, labels[rows])
    for i = L .. 1: e_{i-1}, dw_i, db_i = linear_backward(d_{i-1}, w_i, y_i, g_i,
                                              activation=act if i < L, need_grad_x=i > 1)
                    g_{i-1} = dropout_backward(e_{i-1}, p, s, t, layer=i-1)   (when p > 0)
    then each parameter in order w1, b1, w2, ...: sgd_step or adam_step (Adam's t)

Every loss is the loss of its batch before that batch's update. g_i is the gradient at y_i,
e_i the one at d_i; the dropout masks are kernels/_layers.py's hash of (s, t, i, row, unit).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._layers import mask_key


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


class Hidden(NamedTuple):
    """What the hidden layers of a train_steps call do after their product: ``act`` the
    activation (kernels._layers' ACT_RELU or ACT_TANH); dropout of rate ``p`` (0: none) with
    masks from ``seed``: a unit is kept when its hash is >= ``threshold``, and then scaled by
    ``scale`` (kernels/_layers.py computes both from p)."""

    act: int
    p: float = 0.0
    seed: int = 0
    threshold: int = 0
    scale: float = 1.0


def n_steps(samples: int, batch: int) -> int:
    """Steps in a call over ``samples`` samples: the last batch may be partial."""
    return -(-samples // batch)


def per_op(backend, arrays, params, x, labels, order, batch, losses, opt: Optimizer,
           hidden: Hidden) -> None:
    """``backend``'s kernels, one call per op, in the order the module docstring gives.

    Arguments as the backend protocol's train_steps: checked, C-contiguous, ``labels`` and
    ``order`` int64 native arrays, ``losses`` (n_steps,) of x's dtype, written in place.
    """
    dtype = arrays.dtype(x)
    n_layers = len(params) // 2
    sizes = [int(x.shape[1])] + [int(params[2 * i].shape[1]) for i in range(n_layers)]
    grads = [arrays.empty(tuple(p.shape), dtype) for p in params]
    drop = hidden.p > 0.0
    buffers = {}  # rows -> (x, labels, y_i, d_i, their gradients): at most two sizes

    def buffers_for(rows):
        if rows not in buffers:
            xb = arrays.empty((rows, sizes[0]), dtype)
            ys = [arrays.empty((rows, n), dtype) for n in sizes[1:]]
            ds = [arrays.empty((rows, n), dtype) for n in sizes[1:-1]] if drop else ys[:-1]
            buffers[rows] = (xb, arrays.empty((rows,), np.int64), [xb] + ds, ys,
                             [arrays.empty((rows, n), dtype) for n in sizes[1:]])
        return buffers[rows]

    total = int(order.shape[0])
    for k in range(n_steps(total, batch)):
        t = opt.step + k + 1
        idx = order[k * batch:(k + 1) * batch]
        xb, yb, ds, ys, grads_y = buffers_for(int(idx.shape[0]))
        arrays.take_rows(x, idx, xb)
        arrays.take_rows(labels, idx, yb)
        for i in range(n_layers):
            last = i == n_layers - 1
            backend.linear(ds[i], params[2 * i], params[2 * i + 1], ys[i], 0 if last else hidden.act)
            if drop and not last:
                backend.dropout(ys[i], ds[i + 1], _mask_key(hidden, t, i + 1), hidden.threshold, hidden.scale)
        losses[k] = backend.softmax_cross_entropy(ys[-1], yb, grads_y[-1])
        for i in reversed(range(n_layers)):
            last = i == n_layers - 1
            backend.linear_backward(ds[i], params[2 * i], ys[i], grads_y[i],
                                    grads_y[i - 1] if i > 0 else None, grads[2 * i], grads[2 * i + 1],
                                    0 if last else hidden.act)
            if drop and i > 0:      # e_{i-1} to g_{i-1}, in place
                backend.dropout(grads_y[i - 1], grads_y[i - 1], _mask_key(hidden, t, i), hidden.threshold,
                                hidden.scale)
        _update(backend, params, grads, opt, t)


def _mask_key(hidden: Hidden, t: int, layer: int) -> int:
    return mask_key(hidden.seed, t, layer)


def _update(backend, params, grads, opt: Optimizer, t: int) -> None:
    for j, (p, g) in enumerate(zip(params, grads)):
        if opt.kind == "adam":
            m, v = opt.state
            backend.adam_step(p, g, m[j], v[j], t, opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)
        else:
            velocity = opt.state[j] if opt.state is not None else None
            backend.sgd_step(p, g, velocity, opt.lr, opt.momentum, opt.weight_decay)
