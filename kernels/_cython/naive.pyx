# cython: language_level=3
"""The cython-naive set: every op as the plain typed loops a first Cython port would have.

Design note (after scikit-learn's ``_loss.pyx``):

* kernels/_front.py checks every argument and allocates every output; the functions here
  receive C-contiguous arrays of one float dtype (float32 or float64) and outputs that do not
  overlap their inputs. They only compute, with the GIL released.
* One ``ctypedef fused floating`` covers both dtypes; the def functions below pick the
  specialisation from the array's dtype.
* Nothing clever on purpose: no parallelism, no blocking, no BLAS. ``matmul`` is the textbook
  triple loop with ``trans_a`` / ``trans_b`` handled by indexing. This module is the bottom
  rung of the ladder that kernels/_cython/fast.pyx climbs.
* Compiler directives (setup.py): boundscheck, wraparound, initializedcheck off; cdivision on.
"""

from libc.math cimport exp, log, sqrt, tanh as c_tanh
from libc.stdint cimport int64_t, uint32_t

# kernels/_layers.py's activation codes
cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_TANH = 2

ctypedef fused floating:
    float
    double


def set_threads(n):
    """This set runs on one thread; the count is accepted and ignored."""
    pass


# ---------------------------------------------------------------------------------- matmul

cdef void _matmul(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                  bint trans_a, bint trans_b) noexcept:
    # a is (m, k), or (k, m) when trans_a; b is (k, n), or (n, k) when trans_b; out is (m, n)
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t i, j, p
    cdef double acc, av, bv
    with nogil:
        for i in range(m):
            for j in range(n):
                acc = 0.0
                for p in range(k):
                    av = a[p, i] if trans_a else a[i, p]
                    bv = b[j, p] if trans_b else b[p, j]
                    acc += av * bv
                out[i, j] = <floating>acc


def matmul(a, b, out, bint trans_a, bint trans_b):
    if a.dtype.itemsize == 4:
        _matmul[float](a, b, out, trans_a, trans_b)
    else:
        _matmul[double](a, b, out, trans_a, trans_b)


# ---------------------------------------------------------------------------------- relu

cdef void _relu(const floating[::1] x, floating[::1] out) noexcept:
    # x and out are (size,): out = max(x, 0)
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = x[i] if x[i] > 0 else 0


def relu(x, out):
    if x.dtype.itemsize == 4:
        _relu[float](x.reshape(-1), out.reshape(-1))
    else:
        _relu[double](x.reshape(-1), out.reshape(-1))


cdef void _relu_backward(const floating[::1] grad_y, const floating[::1] y,
                         floating[::1] out) noexcept:
    # grad_y, y, out are (size,): out = grad_y * (y > 0)
    cdef Py_ssize_t i
    with nogil:
        for i in range(y.shape[0]):
            out[i] = grad_y[i] if y[i] > 0 else 0


def relu_backward(grad_y, y, out):
    if y.dtype.itemsize == 4:
        _relu_backward[float](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))
    else:
        _relu_backward[double](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ---------------------------------------------------------------------------------- tanh

cdef void _tanh(const floating[::1] x, floating[::1] out) noexcept:
    # x and out are (size,): out = tanh(x), libm's, in double
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = <floating>c_tanh(x[i])


def tanh(x, out):
    if x.dtype.itemsize == 4:
        _tanh[float](x.reshape(-1), out.reshape(-1))
    else:
        _tanh[double](x.reshape(-1), out.reshape(-1))


cdef void _tanh_backward(const floating[::1] grad_y, const floating[::1] y,
                         floating[::1] out) noexcept:
    # grad_y, y, out are (size,): out = grad_y * (1 - y^2)
    cdef Py_ssize_t i
    with nogil:
        for i in range(y.shape[0]):
            out[i] = grad_y[i] * (1 - y[i] * y[i])


def tanh_backward(grad_y, y, out):
    if y.dtype.itemsize == 4:
        _tanh_backward[float](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))
    else:
        _tanh_backward[double](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ---------------------------------------------------------------------------------- dropout

cdef inline uint32_t fmix32(uint32_t h) noexcept nogil:
    # MurmurHash3's finaliser (kernels/_layers.py)
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6B
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35
    h ^= h >> 16
    return h


cdef void _dropout(const floating[::1] x, floating[::1] out, uint32_t key, uint32_t threshold,
                   double scale) noexcept:
    # x, out are the (rows, units) arrays flattened: element e is unit e % units of row
    # e // units, whose hash is fmix32(key + e * golden) (kernels/_layers.py)
    cdef Py_ssize_t e
    cdef floating s = <floating>scale
    with nogil:
        for e in range(x.shape[0]):
            if fmix32(key + <uint32_t>e * <uint32_t>0x9E3779B9) >= threshold:
                out[e] = x[e] * s
            else:
                out[e] = 0


def dropout(x, out, uint32_t key, uint32_t threshold, double scale):
    if x.dtype.itemsize == 4:
        _dropout[float](x.reshape(-1), out.reshape(-1), key, threshold, scale)
    else:
        _dropout[double](x.reshape(-1), out.reshape(-1), key, threshold, scale)


# ---------------------------------------------------------------------------------- softmax-CE

cdef double _softmax_cross_entropy(const floating[:, ::1] logits, const int64_t[::1] labels,
                                   floating[:, ::1] grad) noexcept:
    # logits (B, C), labels (B,), grad (B, C); returns the mean loss over the batch
    cdef Py_ssize_t batch = logits.shape[0], classes = logits.shape[1]
    cdef Py_ssize_t i, j
    cdef double zmax, total, loss = 0.0
    with nogil:
        for i in range(batch):
            zmax = logits[i, 0]
            for j in range(1, classes):
                if logits[i, j] > zmax:
                    zmax = logits[i, j]
            total = 0.0
            for j in range(classes):
                total += exp(logits[i, j] - zmax)
            # loss_i = log(sum_j exp(z_ij - max)) - (z_i,label - max)
            loss += log(total) - (logits[i, labels[i]] - zmax)
            for j in range(classes):
                grad[i, j] = <floating>(exp(logits[i, j] - zmax) / total / batch)
            grad[i, labels[i]] -= <floating>(1.0 / batch)
        return loss / batch


def softmax_cross_entropy(logits, labels, grad):
    if logits.dtype.itemsize == 4:
        loss = _softmax_cross_entropy[float](logits, labels, grad)
    else:
        loss = _softmax_cross_entropy[double](logits, labels, grad)
    return loss


# ---------------------------------------------------------------------------------- linear

cdef void _linear(const floating[:, ::1] x, const floating[:, ::1] w, const floating[::1] b,
                  floating[:, ::1] out, int act) noexcept:
    # x (B, in), w (in, out), b (out,), out (B, out): out = act(x @ w + b)
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    cdef Py_ssize_t i, j, p
    cdef double acc
    with nogil:
        for i in range(batch):
            for j in range(n_out):
                acc = b[j]
                for p in range(n_in):
                    acc += x[i, p] * w[p, j]
                if act == ACT_RELU and acc < 0:
                    acc = 0.0
                elif act == ACT_TANH:
                    acc = c_tanh(acc)
                out[i, j] = <floating>acc


def linear(x, w, b, out, int act):
    if x.dtype.itemsize == 4:
        _linear[float](x, w, b, out, act)
    else:
        _linear[double](x, w, b, out, act)


cdef inline double act_grad(double grad_y, double y, int act) noexcept nogil:
    """The gradient at the pre-activation from the one at the output y."""
    if act == ACT_RELU:
        return grad_y if y > 0 else 0.0
    if act == ACT_TANH:
        return grad_y * (1 - y * y)
    return grad_y


cdef void _linear_backward(const floating[:, ::1] x, const floating[:, ::1] w,
                           const floating[:, ::1] y, const floating[:, ::1] grad_y,
                           floating[:, ::1] grad_x, floating[:, ::1] grad_w, floating[::1] grad_b,
                           int act, bint need_grad_x) noexcept:
    # x (B, in), w (in, out), y and grad_y (B, out); grad_x (B, in), grad_w (in, out), grad_b (out,)
    # with g = act_grad(grad_y, y) (the gradient at the pre-activation):
    #   dx = g w^T,  dw = x^T g,  db = sum_rows g
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    cdef Py_ssize_t i, j, p
    cdef double acc
    with nogil:
        for j in range(n_out):
            acc = 0.0
            for i in range(batch):
                acc += act_grad(grad_y[i, j], y[i, j], act)
            grad_b[j] = <floating>acc
        for p in range(n_in):
            for j in range(n_out):
                acc = 0.0
                for i in range(batch):
                    acc += x[i, p] * act_grad(grad_y[i, j], y[i, j], act)
                grad_w[p, j] = <floating>acc
        if need_grad_x:
            for i in range(batch):
                for p in range(n_in):
                    acc = 0.0
                    for j in range(n_out):
                        acc += act_grad(grad_y[i, j], y[i, j], act) * w[p, j]
                    grad_x[i, p] = <floating>acc


def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, int act):
    cdef bint need_grad_x = grad_x is not None
    if grad_x is None:
        grad_x = grad_w  # never written when need_grad_x is False; stands in for the view
    if x.dtype.itemsize == 4:
        _linear_backward[float](x, w, y, grad_y, grad_x, grad_w, grad_b, act, need_grad_x)
    else:
        _linear_backward[double](x, w, y, grad_y, grad_x, grad_w, grad_b, act, need_grad_x)


# ---------------------------------------------------------------------------------- optimizers

cdef void _sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] velocity,
                    bint has_velocity, double lr, double momentum, double weight_decay) noexcept:
    # param, grad, velocity are (size,). torch.optim.SGD: g = grad + wd * p; v = momentum * v + g; p -= lr * v
    cdef Py_ssize_t i
    cdef double g
    with nogil:
        for i in range(param.shape[0]):
            g = grad[i] + weight_decay * param[i]
            if has_velocity:
                velocity[i] = <floating>(momentum * velocity[i] + g)
                g = velocity[i]
            param[i] = <floating>(param[i] - lr * g)


def sgd_step(param, grad, velocity, double lr, double momentum, double weight_decay):
    cdef bint has_velocity = velocity is not None
    if not has_velocity:
        velocity = param  # never written without momentum; stands in for the view
    if param.dtype.itemsize == 4:
        _sgd_step[float](param.reshape(-1), grad.reshape(-1), velocity.reshape(-1), has_velocity,
                         lr, momentum, weight_decay)
    else:
        _sgd_step[double](param.reshape(-1), grad.reshape(-1), velocity.reshape(-1), has_velocity,
                          lr, momentum, weight_decay)


cdef void _adam_step(floating[::1] param, const floating[::1] grad, floating[::1] m, floating[::1] v,
                     double step_size, double bc2_sqrt, double beta1, double beta2, double eps,
                     double weight_decay) noexcept:
    # param, grad, m, v are (size,). torch.optim.Adam: g = grad + wd * p; m, v = moving averages
    # of g and g^2; p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    cdef Py_ssize_t i
    cdef double g
    with nogil:
        for i in range(param.shape[0]):
            g = grad[i] + weight_decay * param[i]
            m[i] = <floating>(beta1 * m[i] + (1.0 - beta1) * g)
            v[i] = <floating>(beta2 * v[i] + (1.0 - beta2) * g * g)
            param[i] = <floating>(param[i] - step_size * m[i] / (sqrt(v[i]) / bc2_sqrt + eps))


def adam_step(param, grad, m, v, long step, double lr, double beta1, double beta2, double eps,
              double weight_decay):
    cdef double step_size = lr / (1.0 - beta1 ** step)
    cdef double bc2_sqrt = sqrt(1.0 - beta2 ** step)
    if param.dtype.itemsize == 4:
        _adam_step[float](param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                          step_size, bc2_sqrt, beta1, beta2, eps, weight_decay)
    else:
        _adam_step[double](param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                           step_size, bc2_sqrt, beta1, beta2, eps, weight_decay)
