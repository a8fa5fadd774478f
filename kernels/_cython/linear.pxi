# Linear and linear_backward: the matmul with its epilogue, and the fused backward.
# (Part of fast.pxi, which includes it; compiled once per instruction-set path.)

# ====================================================================================== linear

cdef void _linear(const floating[:, ::1] x, const floating[:, ::1] w, const floating[::1] b,
                  floating[:, ::1] out, int act):
    # x (B, in), w (in, out), b (out,), out (B, out): out = x @ w + b, activated by act; the
    # bias and the ReLU run in the micro-kernel's epilogue, on the tile still in registers.
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    cdef int nt = _threads
    cdef Scratch ws = scratch_take(
        gemm_scratch(batch, n_out, n_in, False, nt, sizeof(floating)) * sizeof(floating))
    with nogil:
        gemm(&x[0, 0], n_in, False, &w[0, 0], n_out, False, &out[0, 0], n_out,
             batch, n_out, n_in, &b[0], act, <floating *>ws.data, nt)
    scratch_give(ws)


def linear(x, w, b, out, int act):
    if x.itemsize == 4:
        _linear[float](x, w, b, out, act)
    else:
        _linear[double](x, w, b, out, act)


cdef void mask_and_bias_grad(const floating *y, const floating *grad_y, floating *g,
                             floating *grad_b, Py_ssize_t batch, Py_ssize_t n_out,
                             int act) noexcept nogil:
    """One pass over grad_y: g = grad_y * act'(y) (ReLU: grad_y * (y > 0); tanh:
    grad_y * (1 - y^2)) unless act is ACT_NONE, and grad_b = sum over rows of g.

    Backward of out = act(x @ w + b): the activation's derivative first, then db = sum_rows g.
    The column sums accumulate row by row into grad_b (contiguous, so the loop vectorises)."""
    cdef Py_ssize_t i, j
    cdef const floating *gy
    cdef const floating *yr
    cdef floating *gr
    memset(grad_b, 0, n_out * sizeof(floating))
    for i in range(batch):
        gy = grad_y + i * n_out
        yr = y + i * n_out
        gr = g + i * n_out
        if act == ACT_RELU:
            for j in range(n_out):
                gr[j] = gy[j] if yr[j] > 0 else 0
                grad_b[j] += gr[j]
        elif act == ACT_TANH:
            for j in range(n_out):
                gr[j] = gy[j] * (1 - yr[j] * yr[j])
                grad_b[j] += gr[j]
        else:
            for j in range(n_out):
                grad_b[j] += gy[j]


cdef Py_ssize_t linear_backward_scratch(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                                        int nthreads, size_t itemsize) noexcept nogil:
    """Elements of scratch linear_backward_op's two products need (they run one after the other)."""
    return max(gemm_scratch(n_in, n_out, batch, False, nthreads, itemsize),
               gemm_scratch(batch, n_in, n_out, True, nthreads, itemsize))


cdef void linear_backward_op(const floating *x, const floating *w, const floating *y,
                             const floating *grad_y, floating *g, floating *grad_x,
                             floating *grad_w, floating *grad_b, Py_ssize_t batch,
                             Py_ssize_t n_in, Py_ssize_t n_out, int act, floating *ws,
                             int nthreads) noexcept nogil:
    """The op on raw pointers. x (B, in), w (in, out), y and grad_y (B, out); grad_x (B, in) or
    NULL, grad_w (in, out), grad_b (out,). Forward: y = act(x @ w + b). With g = grad_y * act'(y)
    (or grad_y when act is ACT_NONE):
      dw = x^T g  (B is k: trans_a absorbed by packing x),  db = sum_rows g,
      dx = g w^T  (trans_b absorbed by packing w).
    g (B, out) receives that gradient unless ACT_NONE: scratch, or grad_y itself (masked in
    place). ws: linear_backward_scratch(...) elements."""
    cdef const floating *gsrc = grad_y
    if act != ACT_NONE:
        gsrc = g
    mask_and_bias_grad(y, grad_y, g, grad_b, batch, n_out, act)
    gemm(x, n_in, True, gsrc, n_out, False, grad_w, n_out, n_in, n_out, batch, NULL, False,
         ws, nthreads)
    if grad_x != NULL:
        gemm(gsrc, n_out, False, w, n_out, True, grad_x, n_in, batch, n_in, n_out, NULL, False,
             ws, nthreads)


cdef void _linear_backward(const floating[:, ::1] x, const floating[:, ::1] w,
                           const floating[:, ::1] y, const floating[:, ::1] grad_y,
                           floating *grad_x, floating[:, ::1] grad_w,
                           floating[::1] grad_b, int act):
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[1]
    cdef int nt = _threads
    # Scratch: g (unless ACT_NONE: grad_y is the caller's, not to be written), then the products'.
    cdef Py_ssize_t g_size = lines(batch * n_out, sizeof(floating)) if act != ACT_NONE else 0
    cdef Scratch ws = scratch_take(
        (g_size + linear_backward_scratch(batch, n_in, n_out, nt, sizeof(floating)))
        * sizeof(floating))
    cdef floating *g = <floating *>ws.data
    with nogil:
        linear_backward_op(&x[0, 0], &w[0, 0], &y[0, 0], &grad_y[0, 0], g, grad_x,
                           &grad_w[0, 0], &grad_b[0], batch, n_in, n_out, act, g + g_size, nt)
    scratch_give(ws)


cdef floating *_ptr(floating[:, ::1] a) noexcept:
    return &a[0, 0]


def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, int act):
    if x.itemsize == 4:
        _linear_backward[float](x, w, y, grad_y,
                                _ptr[float](grad_x) if grad_x is not None else NULL,
                                grad_w, grad_b, act)
    else:
        _linear_backward[double](x, w, y, grad_y,
                                 _ptr[double](grad_x) if grad_x is not None else NULL,
                                 grad_w, grad_b, act)
