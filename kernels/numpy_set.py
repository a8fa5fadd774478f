"""The numpy set: every op as vectorised NumPy. The baseline the compiled sets are measured
against. Its matmul is NumPy's own, so it runs on whatever BLAS NumPy links (OpenBLAS in the
wheels); its thread count is set through threadpoolctl.

Kernels receive checked, C-contiguous arrays and preallocated outputs (see kernels/_front.py).
"""

import math

import numpy as np
from threadpoolctl import threadpool_limits

from ._layers import ACT_RELU, ACT_TANH, dropout_numpy

THREADS_KEY = "blas"


def set_threads(n):
    threadpool_limits(limits=n, user_api="blas")


def isa():
    """NumPy's BLAS and the kernel it picked for this CPU, as threadpoolctl reports them
    (for example ``openblas:SkylakeX``; OPENBLAS_CORETYPE=Haswell forces the AVX2 one)."""
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return f"{lib.get('internal_api')}:{lib.get('architecture') or 'unknown'}"
    return "unknown"


def matmul(a, b, out, trans_a, trans_b):
    # a (m, k) or (k, m) with trans_a; b (k, n) or (n, k) with trans_b; out (m, n)
    np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


def relu(x, out):
    np.maximum(x, 0, out=out)


def relu_backward(grad_y, y, out):
    # grad_y, y, out all of one shape: out = grad_y * (y > 0)
    np.multiply(grad_y, y > 0, out=out)


def tanh(x, out):
    np.tanh(x, out=out)


def tanh_backward(grad_y, y, out):
    # out = grad_y * (1 - y^2), rounded op by op as written (out may be grad_y or y itself)
    t = y * y
    np.subtract(1, t, out=t)
    np.multiply(grad_y, t, out=out)


def dropout(x, out, key, threshold, scale):
    # x, out (rows, units): x * scale where the unit's hash >= threshold, else 0 (kernels/_layers.py)
    dropout_numpy(x, out, key, threshold, scale)


def softmax_cross_entropy(logits, labels, grad):
    # logits (B, C), labels (B,) int64, grad (B, C)
    batch = logits.shape[0]
    rows = np.arange(batch)
    maxes = logits.max(axis=1, keepdims=True)
    np.subtract(logits, maxes, out=grad)              # shift by the row max: exp cannot overflow
    label_shifted = grad[rows, labels]                # logit[label] - max, before exp overwrites it
    np.exp(grad, out=grad)
    sums = grad.sum(axis=1, keepdims=True)
    # loss_i = log(sum_j exp(z_ij - max_i)) - (z_i,label - max_i)
    loss = np.mean(np.log(sums[:, 0]) - label_shifted, dtype=np.float64)
    grad /= sums * batch                              # softmax / B
    grad[rows, labels] -= 1.0 / batch                 # - onehot / B
    return loss


def linear(x, w, b, out, act):
    # x (B, in), w (in, out), b (out,), out (B, out)
    np.matmul(x, w, out=out)
    out += b
    if act == ACT_RELU:
        np.maximum(out, 0, out=out)
    elif act == ACT_TANH:
        np.tanh(out, out=out)


def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, act):
    # x (B, in), w (in, out), y and grad_y (B, out); grad_x (B, in), grad_w (in, out), grad_b (out,)
    g = grad_y                                        # the gradient at the pre-activation:
    if act == ACT_RELU:
        g = grad_y * (y > 0)
    elif act == ACT_TANH:
        g = np.empty_like(grad_y)
        tanh_backward(grad_y, y, g)
    np.matmul(x.T, g, out=grad_w)                     # y = x @ w + b  ->  dw = x^T g
    np.sum(g, axis=0, out=grad_b)                     #                    db = sum_rows g
    if grad_x is not None:
        np.matmul(g, w.T, out=grad_x)                 #                    dx = g w^T


def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    # torch.optim.SGD: g = grad + wd * p; v = momentum * v + g; p -= lr * v
    g = grad + weight_decay * param if weight_decay else grad
    if velocity is not None:
        velocity *= momentum
        velocity += g
        g = velocity
    param -= lr * g


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    # torch.optim.Adam: g = grad + wd * p; m, v = moving averages of g and g^2;
    # p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    g = grad + weight_decay * param if weight_decay else grad
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    step_size = lr / (1.0 - beta1**step)
    denom = np.sqrt(v) / math.sqrt(1.0 - beta2**step) + eps
    param -= step_size * (m / denom)
