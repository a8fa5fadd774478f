"""The numba-naive set: every op as the plain loops a textbook would write, compiled by Numba.

Design note
-----------
* This is the bottom rung of the ladder the optimised set (``numba_set``) climbs: the same ops
  in the same order, with nothing done for speed beyond compiling the loops. The matmul is the
  textbook triple loop; trans_a / trans_b are handled by indexing, never by a transposed copy.
* Directives: ``@njit(cache=True)`` only. No ``parallel``, no ``fastmath`` (so every sum is
  evaluated in program order and LLVM may not reassociate it), no BLAS, no ``np.dot``.
* Kernels receive checked, C-contiguous arrays and preallocated outputs (kernels/_front.py).
  Elementwise ops and optimizer steps take any shape; the Python wrappers flatten them to 1-D
  views (free for contiguous arrays) so that one compiled specialisation serves every shape.
* Sums that decide a result (softmax's row sums, the loss, the bias gradient) accumulate in
  float64 whatever the dtype.
"""

import math

import numpy as np

from . import _isa

_isa.configure_numba()   # before anything compiles: the path KERNELS_ISA forces, for every Numba set

from numba import njit, set_num_threads  # noqa: E402

from ._layers import ACT_RELU, ACT_TANH

THREADS_KEY = "numba"


def set_threads(n):
    # Nothing here runs in parallel; the count is still applied so that Numba's runtime agrees
    # with what the set reports.
    set_num_threads(n)


# ---------------------------------------------------------------- matmul


@njit(cache=True)
def _matmul(a, b, out, trans_a, trans_b):
    # a is (m, k), or (k, m) when trans_a; b is (k, n), or (n, k) when trans_b; out is (m, n)
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    for i in range(m):
        for j in range(n):
            acc = 0.0
            for p in range(k):
                a_ip = a[p, i] if trans_a else a[i, p]
                b_pj = b[j, p] if trans_b else b[p, j]
                acc += a_ip * b_pj
            out[i, j] = acc


def matmul(a, b, out, trans_a, trans_b):
    _matmul(a, b, out, trans_a, trans_b)


# ---------------------------------------------------------------- relu


@njit(cache=True)
def _relu(x, out):
    # x, out are (size,)
    for i in range(x.shape[0]):
        out[i] = x[i] if x[i] > 0 else 0.0


def relu(x, out):
    _relu(x.reshape(-1), out.reshape(-1))


@njit(cache=True)
def _relu_backward(grad_y, y, out):
    # grad_y, y, out are (size,); out = grad_y * (y > 0)
    for i in range(y.shape[0]):
        out[i] = grad_y[i] if y[i] > 0 else 0.0


def relu_backward(grad_y, y, out):
    _relu_backward(grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ---------------------------------------------------------------- tanh


@njit(cache=True)
def _tanh(x, out):
    # x, out are (size,)
    for i in range(x.shape[0]):
        out[i] = math.tanh(x[i])


def tanh(x, out):
    _tanh(x.reshape(-1), out.reshape(-1))


@njit(cache=True)
def _tanh_backward(grad_y, y, out):
    # grad_y, y, out are (size,); out = grad_y * (1 - y^2)
    for i in range(y.shape[0]):
        out[i] = grad_y[i] * (1.0 - y[i] * y[i])


def tanh_backward(grad_y, y, out):
    _tanh_backward(grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ---------------------------------------------------------------- dropout


def dropout(x, out, key, threshold, scale):
    # x, out (rows, units): x * scale where the unit's hash >= threshold, else 0 (kernels/_layers.py);
    # the numba set's loop, called from Python (so that no jitted code here embeds another file's)
    from .numba_set import dropout_flat

    dropout_flat(x.reshape(-1), out.reshape(-1), key, threshold, x.dtype.type(scale))


# ---------------------------------------------------------------- softmax cross-entropy


@njit(cache=True)
def _softmax_cross_entropy(logits, labels, grad):
    # logits (B, C), labels (B,) int64, grad (B, C); returns the mean loss (float64)
    batch, classes = logits.shape
    total = 0.0
    for i in range(batch):
        mx = logits[i, 0]
        for j in range(1, classes):
            if logits[i, j] > mx:
                mx = logits[i, j]
        s = 0.0
        for j in range(classes):
            e = math.exp(logits[i, j] - mx)
            grad[i, j] = e
            s += e
        # loss_i = log(sum_j exp(z_ij - max)) - (z_i,label - max)
        total += math.log(s) - (logits[i, labels[i]] - mx)
        for j in range(classes):
            grad[i, j] = grad[i, j] / (s * batch)
        grad[i, labels[i]] -= 1.0 / batch
    return total / batch


def softmax_cross_entropy(logits, labels, grad):
    return _softmax_cross_entropy(logits, labels, grad)


# ---------------------------------------------------------------- linear and its backward


@njit(cache=True)
def _linear(x, w, b, out, act):
    # x (B, in), w (in, out), b (out,), out (B, out): out = act(x @ w + b)
    batch, n_in = x.shape
    n_out = w.shape[1]
    for i in range(batch):
        for j in range(n_out):
            acc = 0.0
            for p in range(n_in):
                acc += x[i, p] * w[p, j]
            acc += b[j]
            if act == ACT_RELU and acc < 0:
                acc = 0.0
            elif act == ACT_TANH:
                acc = math.tanh(acc)
            out[i, j] = acc


def linear(x, w, b, out, act):
    _linear(x, w, b, out, int(act))


@njit(cache=True)
def _linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, act, need_grad_x):
    # x (B, in), w (in, out), y and grad_y (B, out); grad_x (B, in), grad_w (in, out), grad_b (out,)
    batch, n_in = x.shape
    n_out = w.shape[1]
    # g: the gradient at the pre-activation (relu: grad_y * (y > 0); tanh: grad_y * (1 - y^2))
    g = np.empty_like(grad_y)
    for i in range(batch):
        for j in range(n_out):
            if act == ACT_RELU:
                g[i, j] = grad_y[i, j] if y[i, j] > 0 else 0.0
            elif act == ACT_TANH:
                g[i, j] = grad_y[i, j] * (1.0 - y[i, j] * y[i, j])
            else:
                g[i, j] = grad_y[i, j]
    # y = x @ w + b  ->  grad_w = x^T g
    for p in range(n_in):
        for j in range(n_out):
            acc = 0.0
            for i in range(batch):
                acc += x[i, p] * g[i, j]
            grad_w[p, j] = acc
    #                   grad_b = sum over rows of g
    for j in range(n_out):
        acc = 0.0
        for i in range(batch):
            acc += g[i, j]
        grad_b[j] = acc
    #                   grad_x = g w^T
    if need_grad_x:
        for i in range(batch):
            for p in range(n_in):
                acc = 0.0
                for j in range(n_out):
                    acc += g[i, j] * w[p, j]
                grad_x[i, p] = acc


def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, act):
    need = grad_x is not None
    _linear_backward(x, w, y, grad_y, grad_x if need else grad_w, grad_w, grad_b, int(act), need)


# ---------------------------------------------------------------- optimizers


@njit(cache=True)
def _sgd_step(param, grad, velocity, lr, momentum, weight_decay, use_velocity):
    # param, grad, velocity are (size,). torch.optim.SGD:
    # g = grad + wd * p; v = momentum * v + g; p -= lr * v
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0.0:
            g = g + weight_decay * param[i]
        if use_velocity:
            v = momentum * velocity[i] + g
            velocity[i] = v
            g = v
        param[i] = param[i] - lr * g


def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    p = param.reshape(-1)
    use_velocity = velocity is not None
    v = velocity.reshape(-1) if use_velocity else p
    _sgd_step(p, grad.reshape(-1), v, lr, momentum, weight_decay, use_velocity)


@njit(cache=True)
def _adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    # param, grad, m, v are (size,). torch.optim.Adam:
    # g = grad + wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2
    # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    step_size = lr / (1.0 - beta1**step)
    bias2_sqrt = math.sqrt(1.0 - beta2**step)
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0.0:
            g = g + weight_decay * param[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * g
        v[i] = beta2 * v[i] + (1.0 - beta2) * (g * g)
        denom = math.sqrt(v[i]) / bias2_sqrt + eps
        param[i] = param[i] - step_size * (m[i] / denom)


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    _adam_step(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
               step, lr, beta1, beta2, eps, weight_decay)
