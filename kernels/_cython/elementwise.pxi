# Relu, tanh and dropout, and their backwards: one pass each, split over threads.
# (Part of fast.pxi, which includes it; compiled once per instruction-set path.)

# ====================================================================================== relu

cdef inline void relu_range(const floating *x, floating *out, Py_ssize_t i0,
                            Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        out[i] = x[i] if x[i] > 0 else 0


cdef void _relu(const floating[::1] x, floating[::1] out) noexcept:
    # x and out are (size,), possibly the same array: out = max(x, 0)
    cdef Py_ssize_t size = x.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    with nogil:
        if nt == 1:
            relu_range(&x[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            for part in prange(nt, num_threads=nt, schedule="static"):
                relu_range(&x[0], &out[0], part * per, min((part + 1) * per, size))


def relu(x, out):
    if x.itemsize == 4:
        _relu[float](x.reshape(-1), out.reshape(-1))
    else:
        _relu[double](x.reshape(-1), out.reshape(-1))


cdef inline void relu_backward_range(const floating *grad_y, const floating *y, floating *out,
                                     Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        out[i] = grad_y[i] if y[i] > 0 else 0


cdef void _relu_backward(const floating[::1] grad_y, const floating[::1] y,
                         floating[::1] out) noexcept:
    # grad_y, y, out are (size,); out may be grad_y: out = grad_y * (y > 0)
    cdef Py_ssize_t size = y.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    with nogil:
        if nt == 1:
            relu_backward_range(&grad_y[0], &y[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            for part in prange(nt, num_threads=nt, schedule="static"):
                relu_backward_range(&grad_y[0], &y[0], &out[0], part * per,
                                    min((part + 1) * per, size))


def relu_backward(grad_y, y, out):
    if y.itemsize == 4:
        _relu_backward[float](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))
    else:
        _relu_backward[double](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ====================================================================================== tanh

cdef inline floating tanh_scalar(floating x) noexcept nogil:
    """vtanh.h's tanh of one element: the bits a whole vector of them gets."""
    if floating is float:
        return tanh_scalar_f32(x)
    else:
        return tanh_scalar_f64(x)


cdef inline void tanh_range(const floating *x, floating *out, Py_ssize_t i0,
                            Py_ssize_t i1) noexcept nogil:
    if floating is float:
        tanh_f32(x + i0, out + i0, i1 - i0)
    else:
        tanh_f64(x + i0, out + i0, i1 - i0)


cdef void _tanh(const floating[::1] x, floating[::1] out) noexcept:
    # x and out are (size,), possibly the same array: out = tanh(x), vtanh.h's vectors. About
    # 35 vector operations a vector where relu has one: threads pay from half of relu's size
    # (32 Ki elements, 15 to 40 us of one core's work; at 16 Ki, float64's 21 us, waking a
    # second thread on this shared 2-core machine cost more than it saved). Each thread's
    # part is a whole number of 64-byte vectors.
    cdef Py_ssize_t size = x.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS // 2, size)
    with nogil:
        if nt == 1:
            tanh_range(&x[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            per = (per + 15) // 16 * 16
            for part in prange(nt, num_threads=nt, schedule="static"):
                tanh_range(&x[0], &out[0], min(part * per, size), min((part + 1) * per, size))


def tanh(x, out):
    if x.itemsize == 4:
        _tanh[float](x.reshape(-1), out.reshape(-1))
    else:
        _tanh[double](x.reshape(-1), out.reshape(-1))


cdef inline void tanh_backward_range(const floating *grad_y, const floating *y, floating *out,
                                     Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(i0, i1):
        out[i] = grad_y[i] * (1 - y[i] * y[i])


cdef void _tanh_backward(const floating[::1] grad_y, const floating[::1] y,
                         floating[::1] out) noexcept:
    # grad_y, y, out are (size,); out may be grad_y or y: out = grad_y * (1 - y^2)
    cdef Py_ssize_t size = y.shape[0], per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    with nogil:
        if nt == 1:
            tanh_backward_range(&grad_y[0], &y[0], &out[0], 0, size)
        else:
            per = (size + nt - 1) // nt
            for part in prange(nt, num_threads=nt, schedule="static"):
                tanh_backward_range(&grad_y[0], &y[0], &out[0], part * per,
                                    min((part + 1) * per, size))


def tanh_backward(grad_y, y, out):
    if y.itemsize == 4:
        _tanh_backward[float](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))
    else:
        _tanh_backward[double](grad_y.reshape(-1), y.reshape(-1), out.reshape(-1))


# ====================================================================================== dropout

cdef inline uint32_t fmix32(uint32_t h) noexcept nogil:
    """MurmurHash3's finaliser (kernels/_layers.py's mask, bit for bit)."""
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6B
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35
    h ^= h >> 16
    return h


cdef inline uint32_t mask_key(uint64_t seed, uint64_t step, uint32_t layer) noexcept nogil:
    """kernels._layers.mask_key: the key of one step's mask on one hidden layer."""
    cdef uint32_t h = fmix32(<uint32_t>seed)
    h = fmix32(h ^ <uint32_t>(seed >> 32))
    h = fmix32(h ^ <uint32_t>step)
    h = fmix32(h ^ <uint32_t>(step >> 32))
    return fmix32(h ^ layer)


cdef inline void dropout_range(const floating *x, floating *out, uint32_t key,
                               uint32_t threshold, floating scale, Py_ssize_t i0,
                               Py_ssize_t i1) noexcept nogil:
    """Elements i0:i1 of a flattened (rows, units) array: element e is kept (and scaled) when
    fmix32(key + e * golden) >= threshold, else 0 (uint32 arithmetic, which vectorises)."""
    cdef Py_ssize_t e
    for e in range(i0, i1):
        out[e] = x[e] * scale if fmix32(key + <uint32_t>e * <uint32_t>0x9E3779B9) >= threshold else 0


cdef void dropout_op(const floating *x, floating *out, Py_ssize_t size, uint32_t key,
                     uint32_t threshold, double scale) noexcept nogil:
    """The op on raw pointers (out may be x), in equal chunks per thread when large enough."""
    cdef Py_ssize_t per, part
    cdef int nt = threads_for(size, PAR_MIN_ELEMS, size)
    if nt == 1:
        dropout_range(x, out, key, threshold, <floating>scale, 0, size)
    else:
        per = (size + nt - 1) // nt
        for part in prange(nt, num_threads=nt, schedule="static"):
            dropout_range(x, out, key, threshold, <floating>scale, part * per,
                          min((part + 1) * per, size))


cdef void _dropout(const floating[::1] x, floating[::1] out, uint32_t key, uint32_t threshold,
                   double scale) noexcept:
    with nogil:
        dropout_op(&x[0], &out[0], x.shape[0], key, threshold, scale)


def dropout(x, out, uint32_t key, uint32_t threshold, double scale):
    if x.itemsize == 4:
        _dropout[float](x.reshape(-1), out.reshape(-1), key, threshold, scale)
    else:
        _dropout[double](x.reshape(-1), out.reshape(-1), key, threshold, scale)
