# The optimizers: SGD (with momentum) and Adam, one fused pass each.
# (Part of fast.pxi, which includes it; compiled once per instruction-set path.)

# ====================================================================================== optimizers

cdef inline void sgd_range(floating *param, const floating *grad, floating *velocity,
                           floating lr, floating momentum, floating weight_decay,
                           Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g
    if velocity == NULL:
        for i in range(i0, i1):
            g = grad[i] + weight_decay * param[i]
            param[i] -= lr * g
    else:
        for i in range(i0, i1):
            g = grad[i] + weight_decay * param[i]
            velocity[i] = momentum * velocity[i] + g
            param[i] -= lr * velocity[i]


cdef void sgd_op(floating *param, const floating *grad, floating *velocity, Py_ssize_t size,
                 double lr, double momentum, double weight_decay) noexcept nogil:
    """The op on raw pointers: param, grad, velocity (or NULL) are (size,). torch.optim.SGD
    (dampening 0, no Nesterov): g = grad + wd * p; v = momentum * v + g (when momentum);
    p -= lr * (v or g). One pass, in equal chunks per thread when large enough."""
    cdef Py_ssize_t per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    if nt == 1:
        sgd_range(param, grad, velocity, <floating>lr, <floating>momentum,
                  <floating>weight_decay, 0, size)
    else:
        per = (size + nt - 1) // nt
        for part in prange(nt, num_threads=nt, schedule="static"):
            sgd_range(param, grad, velocity, <floating>lr, <floating>momentum,
                      <floating>weight_decay, part * per, min((part + 1) * per, size))


cdef void _sgd_step(floating[::1] param, const floating[::1] grad, floating *velocity,
                    double lr, double momentum, double weight_decay) noexcept:
    with nogil:
        sgd_op(&param[0], &grad[0], velocity, param.shape[0], lr, momentum, weight_decay)


cdef floating *_ptr1(floating[::1] a) noexcept:
    return &a[0]


def sgd_step(param, grad, velocity, double lr, double momentum, double weight_decay):
    if param.itemsize == 4:
        _sgd_step[float](param.reshape(-1), grad.reshape(-1),
                         _ptr1[float](velocity.reshape(-1)) if velocity is not None else NULL,
                         lr, momentum, weight_decay)
    else:
        _sgd_step[double](param.reshape(-1), grad.reshape(-1),
                          _ptr1[double](velocity.reshape(-1)) if velocity is not None else NULL,
                          lr, momentum, weight_decay)


cdef inline void adam_range(floating *param, const floating *grad, floating *m, floating *v,
                            floating step_size, floating inv_bc2_sqrt, floating beta1,
                            floating beta2, floating eps, floating weight_decay,
                            Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, denom
    for i in range(i0, i1):
        g = grad[i] + weight_decay * param[i]
        m[i] = beta1 * m[i] + (1 - beta1) * g
        v[i] = beta2 * v[i] + (1 - beta2) * (g * g)
        if floating is float:
            denom = sqrtf(v[i]) * inv_bc2_sqrt + eps
        else:
            denom = sqrt(v[i]) * inv_bc2_sqrt + eps
        param[i] -= step_size * (m[i] / denom)


cdef inline void adam_scales(long step, double lr, double beta1, double beta2,
                             double *step_size, double *inv_bc2_sqrt) noexcept nogil:
    """Adam's bias corrections at step t, folded into the step size and the sqrt(v) scale."""
    step_size[0] = lr / (1.0 - beta1 ** step)
    inv_bc2_sqrt[0] = 1.0 / sqrt(1.0 - beta2 ** step)


cdef void adam_op(floating *param, const floating *grad, floating *m, floating *v,
                  Py_ssize_t size, long step, double lr, double beta1, double beta2, double eps,
                  double weight_decay) noexcept nogil:
    """The op on raw pointers: param, grad, m, v are (size,). torch.optim.Adam (L2 decay, not
    AdamW), one fused pass: g = grad + wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    cdef Py_ssize_t per, part
    cdef double step_size, inv_bc2_sqrt
    adam_scales(step, lr, beta1, beta2, &step_size, &inv_bc2_sqrt)
    cdef int nt = threads_for(size, PAR_MIN_ELEMS // 4, size)
    if nt == 1:
        adam_range(param, grad, m, v, <floating>step_size, <floating>inv_bc2_sqrt,
                   <floating>beta1, <floating>beta2, <floating>eps, <floating>weight_decay,
                   0, size)
    else:
        per = (size + nt - 1) // nt
        for part in prange(nt, num_threads=nt, schedule="static"):
            adam_range(param, grad, m, v, <floating>step_size, <floating>inv_bc2_sqrt,
                       <floating>beta1, <floating>beta2, <floating>eps, <floating>weight_decay,
                       part * per, min((part + 1) * per, size))


cdef void _adam_step(floating[::1] param, const floating[::1] grad, floating[::1] m,
                     floating[::1] v, long step, double lr, double beta1, double beta2,
                     double eps, double weight_decay) noexcept:
    with nogil:
        adam_op(&param[0], &grad[0], &m[0], &v[0], param.shape[0], step, lr, beta1, beta2, eps,
                weight_decay)


def adam_step(param, grad, m, v, long step, double lr, double beta1, double beta2, double eps,
              double weight_decay):
    if param.itemsize == 4:
        _adam_step[float](param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                          step, lr, beta1, beta2, eps, weight_decay)
    else:
        _adam_step[double](param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                           step, lr, beta1, beta2, eps, weight_decay)
