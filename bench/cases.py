"""What the suite measures: the shapes, the sets, and each op's work (FLOPs and bytes moved).

Shared by the benchmark files (which write it into each result's ``extra_info``) and by
``bench.report`` (which reads it back). Every size is written once, here.

Work model: ``flops`` counts the floating-point operations an op must do (2mnk for a matmul;
one per element for elementwise passes; a small constant per element for softmax and the
optimizers), ``bytes`` the least memory traffic it must cause: every input read once and every
output written once. An op is *compute-bound* when its arithmetic intensity (flops / bytes) is
above the machine's ridge point (peak FLOP/s / copy bandwidth), *memory-bound* otherwise; the
suite reports GFLOP/s for the first and GB/s for the second, each as a fraction of this
machine's measured peak (``bench.peak``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The MLP: 784 -> 128 -> 64 -> 10, ReLU after the two hidden layers.
LAYERS = ((784, 128), (128, 64), (64, 10))
BATCHES = (1, 32, 128, 512)
SQUARE = (64, 128, 256, 512, 1024, 2048)
# Elementwise ops and softmax_cross_entropy, from the MLP's logits to a large layer.
ELEMENTWISE = ((32, 10), (128, 10), (128, 128), (512, 784), (4096, 1000))

# The naive sets are textbook loops (the ladder's bottom rung): at large sizes one call takes
# seconds, so they are measured only up to this much work (the FLOPs of a 256^3 matmul).
NAIVE_MAX_FLOPS = 2 * 256**3
NAIVE_SETS = ("numba-naive", "cython-naive")
COMPILED_SETS = ("numba", "cython")
# The ladder's steps: the first (naive) up to 256, the second up to 1024, the rest everywhere.
LADDER_MAX_SIZE = (256, 1024)

CUDA = "torch-cuda"              # the torch set on device="cuda"
TORCH_AUTOGRAD = "torch-autograd"  # F.cross_entropy + .backward() on a leaf tensor
TORCH_OPTIM = "torch-optim"        # torch.optim.SGD / Adam .step()


def mlp_param_shapes():
    """(784, 128), (128,), (128, 64), (64,), (64, 10), (10,): the MLP's weights and biases."""
    shapes = []
    for n_in, n_out in LAYERS:
        shapes += [(n_in, n_out), (n_out,)]
    return shapes


@dataclass(frozen=True, repr=False)
class Case:
    """One benchmark shape of one op: its id, the group name parts, and its work."""

    op: str
    id: str                      # test-id part, e.g. "b128-fwd1" or "512"
    label: str                   # human shape, e.g. "(128,784)@(784,128)"
    flops: float                 # per call, for float32 and float64 alike
    elems: float                 # array elements that must be moved (bytes = elems * itemsize)
    params: dict = field(default_factory=dict)
    extra_bytes: float = 0.0     # dtype-independent bytes (int64 labels)

    def __repr__(self) -> str:  # what pytest-benchmark's JSON shows under "params"
        return f"{self.op}:{self.id}"

    def bytes(self, dtype) -> float:
        return self.elems * np.dtype(dtype).itemsize + self.extra_bytes

    def group(self, dtype) -> str:
        return f"{self.op} {self.label} {np.dtype(dtype).name}"

    def naive_ok(self) -> bool:
        return self.flops <= NAIVE_MAX_FLOPS


# ---------------------------------------------------------------- matmul


def matmul_case(m, k, n, trans_a=False, trans_b=False, id=None, kind="square", batch=None):
    a = f"({k},{m})^T" if trans_a else f"({m},{k})"
    b = f"({n},{k})^T" if trans_b else f"({k},{n})"
    return Case(
        op="matmul",
        id=id or f"{m}x{k}x{n}",
        label=f"{a}@{b}",
        flops=2.0 * m * k * n,
        elems=m * k + k * n + m * n,
        params=dict(m=m, k=k, n=n, trans_a=trans_a, trans_b=trans_b, kind=kind, batch=batch),
    )


def square_matmul_cases():
    return [matmul_case(n, n, n, id=str(n)) for n in SQUARE]


def mlp_matmul_cases():
    """The products of one training step: forward x@w per layer, and in the backward pass
    grad_w = x^T g per layer and grad_x = g w^T for every layer but the first."""
    cases = []
    for batch in BATCHES:
        for layer, (n_in, n_out) in enumerate(LAYERS, start=1):
            cases.append(matmul_case(batch, n_in, n_out, id=f"b{batch}-fwd{layer}", kind="fwd", batch=batch))
            cases.append(matmul_case(n_in, batch, n_out, trans_a=True, id=f"b{batch}-dw{layer}", kind="dw", batch=batch))
            if layer > 1:
                cases.append(matmul_case(batch, n_out, n_in, trans_b=True, id=f"b{batch}-dx{layer}", kind="dx", batch=batch))
    return cases


# ---------------------------------------------------------------- the other ops


# Flops an element: relu's max, relu_backward's select, tanh_backward's g * (1 - y^2); tanh
# counted as the arithmetic of kernels/_cython/vtanh.h's float32 (its two ranges, exp's
# polynomial, a division): about 25.
ELEMENTWISE_FLOPS = {"relu": 1, "relu_backward": 1, "tanh": 25, "tanh_backward": 3}


def elementwise_cases(op):
    """relu and tanh read x and write y; their backwards read grad_y and y and write grad_x."""
    arrays = {"relu": 2, "relu_backward": 3, "tanh": 2, "tanh_backward": 3}[op]
    return [
        Case(op=op, id=f"{r}x{c}", label=f"({r},{c})", flops=ELEMENTWISE_FLOPS[op] * r * c, elems=arrays * r * c,
             params=dict(rows=r, cols=c))
        for r, c in ELEMENTWISE
    ]


def softmax_cases():
    # Per element: max, subtract, exp, sum, divide (and the label's log): about 5 flops.
    # Traffic: read logits, write grad, read labels (int64).
    return [
        Case(op="softmax_cross_entropy", id=f"{b}x{c}", label=f"({b},{c})", flops=5.0 * b * c, elems=2 * b * c,
             extra_bytes=8.0 * b, params=dict(batch=b, classes=c))
        for b, c in ELEMENTWISE
    ]


def linear_cases():
    """linear at the MLP's forward shapes, with the bias only and (hidden layers) with the fused
    ReLU or tanh, so that each can be set beside the bare matmul of the same shape (group
    ``matmul`` case ``b*-fwd*``). params: ``activation`` None, "relu" or "tanh"; ``relu``
    whether it is "relu"."""
    cases = []
    for batch in BATCHES:
        for layer, (n_in, n_out) in enumerate(LAYERS, start=1):
            for act in ((None, "relu", "tanh") if layer < len(LAYERS) else (None,)):
                cases.append(Case(
                    op="linear",
                    id=f"b{batch}-l{layer}-{act or 'bias'}",
                    label=f"({batch},{n_in})@({n_in},{n_out})+b{'+' + act if act else ''}",
                    flops=2.0 * batch * n_in * n_out + batch * n_out * (1 + ELEMENTWISE_FLOPS.get(act, 0)),
                    elems=batch * n_in + n_in * n_out + n_out + batch * n_out,
                    params=dict(batch=batch, n_in=n_in, n_out=n_out, relu=act == "relu", activation=act,
                                layer=layer),
                ))
    return cases


def linear_backward_cases():
    """linear_backward as the MLP's backward pass calls it: hidden layers through their ReLU,
    the first layer without grad_x (nothing needs the gradient of the images)."""
    cases = []
    for batch in BATCHES:
        for layer, (n_in, n_out) in enumerate(LAYERS, start=1):
            relu = layer < len(LAYERS)
            need_grad_x = layer > 1
            products = 2 if need_grad_x else 1
            cases.append(Case(
                op="linear_backward",
                id=f"b{batch}-l{layer}",
                label=f"({batch},{n_in})x({n_in},{n_out}){' relu' if relu else ''}{' dx' if need_grad_x else ''}",
                flops=products * 2.0 * batch * n_in * n_out + batch * n_out * (2 if relu else 1),
                # read x, w, y, grad_y; write grad_w, grad_b and (maybe) grad_x
                elems=(batch * n_in + n_in * n_out + 2 * batch * n_out
                       + n_in * n_out + n_out + (batch * n_in if need_grad_x else 0)),
                params=dict(batch=batch, n_in=n_in, n_out=n_out, relu=relu, need_grad_x=need_grad_x, layer=layer),
            ))
    return cases


def optimizer_cases():
    """One step over all six of the MLP's parameter arrays (109,386 numbers)."""
    n = sum(math.prod(s) for s in mlp_param_shapes())
    return [
        # SGD (no momentum): p -= lr * g; read p and g, write p.
        Case(op="sgd_step", id="mlp", label="mlp-params", flops=2.0 * n, elems=3 * n, params=dict(numbers=n)),
        # Adam: m, v updated, p updated; read p, g, m, v, write p, m, v; about 12 flops each.
        Case(op="adam_step", id="mlp", label="mlp-params", flops=12.0 * n, elems=7 * n, params=dict(numbers=n)),
    ]


def ladder_case(n, step_index, step):
    c = matmul_case(n, n, n, id=str(n), kind="ladder")
    return Case(op="matmul-ladder", id=c.id, label=c.label, flops=c.flops, elems=c.elems,
                params=dict(c.params, step=step, step_index=step_index))


def ladder_sizes(step_index, n_steps):
    """The square sizes a ladder step is measured at (slow early steps stop sooner)."""
    if step_index < len(LADDER_MAX_SIZE) and step_index < n_steps - 1:
        return [n for n in SQUARE if n <= LADDER_MAX_SIZE[step_index]]
    return list(SQUARE)
