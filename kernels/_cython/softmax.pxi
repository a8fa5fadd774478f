# Softmax-cross-entropy: loss and gradient in one pass over the logits.
# (Part of fast.pxi, which includes it; compiled once per instruction-set path.)

# ====================================================================================== softmax-CE

cdef inline double softmax_cross_entropy_row(const floating *z, Py_ssize_t label, floating *g,
                                             Py_ssize_t classes, double inv_batch) noexcept nogil:
    """One row in one sweep: max, then exp(z - max) into g while summing, then scale g.

    Returns log(sum_j exp(z_j - max)) - (z_label - max), the row's loss; leaves
    g = (softmax(z) - onehot(label)) / batch. Shifting by the max keeps exp from overflowing.
    """
    cdef Py_ssize_t j
    cdef floating zmax, e, scale
    cdef double total = 0.0
    if floating is float:                       # a vector at a time (vecmath.h)
        zmax = row_max_f32(z, classes)
        total = exp_minus_max_f32(z, zmax, g, classes)
    else:
        zmax = z[0]
        for j in range(1, classes):
            if z[j] > zmax:
                zmax = z[j]
        for j in range(classes):
            e = exp(z[j] - zmax)
            g[j] = e
            total += e
    scale = <floating>(inv_batch / total)
    for j in range(classes):
        g[j] *= scale
    g[label] -= <floating>inv_batch
    return log(total) - (<double>z[label] - <double>zmax)


cdef double softmax_cross_entropy_rows(const floating *z, const int64_t *labels, floating *g,
                                       Py_ssize_t rows, Py_ssize_t classes,
                                       double inv_batch) noexcept nogil:
    """A block of rows; the sum of their losses. Rows of few classes (the MLP's 10; up to
    SOFTMAX_SMALL_ROWS_MAX) go through vecmath.h's block kernel, which vectorises across rows."""
    cdef Py_ssize_t i
    cdef double loss = 0.0
    if floating is float:
        if classes <= SOFTMAX_SMALL_ROWS_MAX:
            return softmax_xent_small_rows_f32(z, labels, g, rows, classes, inv_batch)
    for i in range(rows):
        loss += softmax_cross_entropy_row(z + i * classes, labels[i], g + i * classes, classes,
                                          inv_batch)
    return loss


cdef double softmax_cross_entropy_op(const floating *z, const int64_t *labels, floating *g,
                                     Py_ssize_t batch, Py_ssize_t classes) noexcept nogil:
    """The op on raw pointers (z, g (batch, classes)): the mean loss, accumulated in double.
    Threads over blocks of rows when the batch is large enough to pay for them.

    The loss is summed block by block in the blocks' order, whatever the threads: each
    block's sum goes to its own slot and the slots are added up after. A reduction over a
    dynamic schedule added the blocks in whichever order the threads took them, so the same
    call could give a loss a few ulp apart from run to run (seen in float64 when calls from
    several Python threads overlapped)."""
    cdef Py_ssize_t n_blocks = (batch + SOFTMAX_BLOCK_ROWS - 1) // SOFTMAX_BLOCK_ROWS, blk
    cdef double inv_batch = 1.0 / batch, loss = 0.0
    cdef int nt = threads_for(batch * classes, PAR_MIN_ELEMS // 4, n_blocks)
    cdef double *block_loss = NULL
    if nt > 1:
        block_loss = <double *>malloc(n_blocks * sizeof(double))
    if block_loss == NULL:              # one thread (or no memory for the slots): in order
        for blk in range(n_blocks):
            loss += softmax_xent_block(z, labels, g, batch, classes, inv_batch, blk)
        return loss * inv_batch
    for blk in prange(n_blocks, num_threads=nt, schedule="dynamic"):
        block_loss[blk] = softmax_xent_block(z, labels, g, batch, classes, inv_batch, blk)
    for blk in range(n_blocks):
        loss += block_loss[blk]
    free(block_loss)
    return loss * inv_batch


cdef inline double softmax_xent_block(const floating *z, const int64_t *labels, floating *g,
                                      Py_ssize_t batch, Py_ssize_t classes, double inv_batch,
                                      Py_ssize_t blk) noexcept nogil:
    """Block blk's SOFTMAX_BLOCK_ROWS rows (fewer at the end): the sum of their losses."""
    cdef Py_ssize_t r0 = blk * SOFTMAX_BLOCK_ROWS
    return softmax_cross_entropy_rows(
        z + r0 * classes, labels + r0, g + r0 * classes,
        SOFTMAX_BLOCK_ROWS if batch - r0 >= SOFTMAX_BLOCK_ROWS else batch - r0, classes, inv_batch)


cdef double _softmax_cross_entropy(const floating *z, const int64_t *labels, floating *g,
                                   Py_ssize_t batch, Py_ssize_t classes) noexcept nogil:
    # z and g (batch, classes), labels (batch,) int64; returns the mean loss, or -1 if a label
    # is outside [0, C) (CHECKS_LABELS in cython_set.py: the front does not check the range,
    # since one compare per row here is cheaper than a NumPy reduction there)
    cdef Py_ssize_t i
    for i in range(batch):
        if <uint64_t>labels[i] >= <uint64_t>classes:   # a negative label wraps to huge
            return -1.0
    return softmax_cross_entropy_op(z, labels, g, batch, classes)


def softmax_cross_entropy(logits, labels, grad):
    # The arrays' memory through the buffer protocol rather than typed memoryviews: at the
    # MLP's 128x10 the whole kernel takes about 1.5 us, and making three memoryviews took
    # another 0.3 us. (The front passes C-contiguous arrays, which PyBUF_SIMPLE asks for.)
    cdef Py_buffer z, y, g
    cdef Py_ssize_t batch, classes
    cdef double loss
    cdef bint single = logits.itemsize == 4
    PyObject_GetBuffer(logits, &z, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(labels, &y, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(grad, &g, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                batch = y.len // <Py_ssize_t>sizeof(int64_t)
                classes = z.len // (batch * (4 if single else 8))
                with nogil:
                    if single:
                        loss = _softmax_cross_entropy[float](<const float *>z.buf, <const int64_t *>y.buf,
                                                             <float *>g.buf, batch, classes)
                    else:
                        loss = _softmax_cross_entropy[double](<const double *>z.buf, <const int64_t *>y.buf,
                                                              <double *>g.buf, batch, classes)
            finally:
                PyBuffer_Release(&g)
        finally:
            PyBuffer_Release(&y)
    finally:
        PyBuffer_Release(&z)
    return loss
