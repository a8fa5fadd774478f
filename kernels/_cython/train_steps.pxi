# Train_steps: the whole training loop in one call, without the GIL.
# (Part of fast.pxi, which includes it; compiled once per instruction-set path.)

# ====================================================================================== train_steps
#
# Many training steps in one call, none of them leaving C: kernels/_steps.py's step (gather,
# forward, loss, backward, update) on the same kernels as the per-op path, so the two agree
# bit for bit. The def function takes every pointer out of the Python lists once, with the
# GIL; the loop over steps then runs without it and allocates nothing: the batch, the
# activations, the gradients and the products' scratch are carved once per call from the
# module's scratch buffer. Each op keeps its own threading (a prange inside the kernel, only
# when the work pays for waking threads), so a batch of one runs on one thread.
#
# One fusion: a weight's gradient is never stored. dW = x^T g is computed a chunk of rows at
# a time and the optimizer's step applied to that chunk of w while it is still in L1 (at
# batch 1 writing dW1 and reading it back cost more than computing it). The update moves
# into the backward pass, after dx (which needs the old w), which changes no value: every
# update is elementwise on its own arrays. Each chunk of the input layer's x^T g skips the
# samples whose SKIP_MR values of x are all zero (chunk_product): half of an image's pixels
# are background, and at batch 128 that cut the first layer's gradient and update from 150
# to 124 us a step; its forward pass skips likewise (forward_skip). Both skip in groups of 4
# (SKIP_MR, half the dense kernel's 8 rows) with their lists built 16 entries at a time
# (microkernel.h): against groups of 8 and scalar lists, the whole step ran 1.10x as fast
# at batch 128, 1.06x at 32 and 1.10x at 512 (the two builds in alternating turns, 40
# rounds, medians). The batch's gather, the step's one memory-bound pass (its rows come from
# anywhere in x), is split between the threads.
#
# At a batch of one, a second: the update of step k moves on into step k + 1's forward pass,
# the first thing that reads the new weights, and the two run as one sweep over each layer's
# weights and state (sweep_layer; the last step's updates are swept at the end of the call).
# A step then reads and writes the weights once instead of reading them three times (forward,
# dx, update) and writing them once; the first layer's sweep, the step's largest memory
# traffic, is split by rows between the cores, each keeping its half in its own L2 from one
# step to the next. dx = g w^T becomes four dot products at a time (sweep_backward), where a
# product of one row packed w^T first. Measured, 784-128-64-10 float32 SGD, 2 threads: 19 us
# a step before, 7.8 us after (5.3 of them the first layer's sweep). The sums run in another
# order than the micro-kernel's, so this path matches the per-op one to rounding, not to the
# bit (tests/test_cython_internals.py checks both).



cdef inline void update_range(const Update *u, floating *param, const floating *grad,
                              floating *s1, floating *s2, Py_ssize_t i0,
                              Py_ssize_t i1) noexcept nogil:
    """u's step on param[i0:i1]; s1 the velocity (or NULL) or Adam's m, s2 Adam's v."""
    if u.adam:
        adam_range(param, grad, s1, s2, <floating>u.step_size, <floating>u.inv_bc2_sqrt,
                   <floating>u.beta1, <floating>u.beta2, <floating>u.eps,
                   <floating>u.weight_decay, i0, i1)
    else:
        sgd_range(param, grad, s1, <floating>u.lr, <floating>u.momentum,
                  <floating>u.weight_decay, i0, i1)


cdef inline void update_op(const Update *u, floating *param, const floating *grad,
                           floating *s1, floating *s2, Py_ssize_t size) noexcept nogil:
    """u's step on a whole parameter: sgd_step's or adam_step's op, threads included."""
    if u.adam:
        adam_op(param, grad, s1, s2, size, u.t, u.lr, u.beta1, u.beta2, u.eps, u.weight_decay)
    else:
        sgd_op(param, grad, s1, size, u.lr, u.momentum, u.weight_decay)


cdef inline Py_ssize_t chunk_rows(Py_ssize_t n_out, size_t itemsize) noexcept nogil:
    """Rows of dW per chunk: about UPDATE_CHUNK_BYTES, a multiple of MR."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    cdef Py_ssize_t rows = UPDATE_CHUNK_BYTES // (n_out * itemsize) // MR * MR
    return rows if rows > MR else MR


cdef inline Py_ssize_t int_lines(Py_ssize_t count, size_t itemsize) noexcept nogil:
    """Elements (of itemsize) that hold ``count`` ints, on whole cache lines."""
    return lines((count * sizeof(int) + itemsize - 1) // itemsize, itemsize)


cdef inline Py_ssize_t int_stride(Py_ssize_t count, size_t itemsize) noexcept nogil:
    """The same room counted in ints: from one such block of ints to the next."""
    return int_lines(count, itemsize) * itemsize // sizeof(int)


cdef inline Py_ssize_t chunk_scratch(Py_ssize_t batch, Py_ssize_t n_out,
                                     size_t itemsize) noexcept nogil:
    """One thread's scratch in weight_grad_update: its chunk of dW, gemm_small's scratch,
    then chunk_product's lists (skip_list_room)."""
    return (lines(chunk_rows(n_out, itemsize) * n_out, itemsize)
            + gemm_scratch(chunk_rows(n_out, itemsize), n_out, batch, False, 1, itemsize)
            + int_lines(skip_list_room(batch), itemsize))


cdef inline Py_ssize_t skip_list_room(Py_ssize_t k) noexcept nogil:
    """Ints that skip_strips needs for a strip's list of up to k steps: the list, and for
    x^T g the samples' nonzero masks (skip_masks_f32)."""
    return 2 * k


cdef inline Py_ssize_t skip_mr(size_t itemsize) noexcept nogil:
    return SKIP_MR_F32 if itemsize == 4 else SKIP_MR_F64


cdef inline Py_ssize_t skip_nr(size_t itemsize) noexcept nogil:
    return SKIP_NR_F32 if itemsize == 4 else SKIP_NR_F64


cdef inline Py_ssize_t skip_rows(Py_ssize_t m, size_t itemsize) noexcept nogil:
    """The rows of C that the skip kernels compute: the dense kernel's full MR-row strips
    (the rows under them are the dense path's, see microkernel.h)."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    return m // MR * MR


cdef void skip_strips(const floating *x, Py_ssize_t ldx, const floating *b, Py_ssize_t ldb,
                      floating *c, Py_ssize_t ldc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s0,
                      Py_ssize_t s1, int *idx) noexcept nogil:
    """Row strips s0:s1 (of SKIP_MR rows) of C = x^T B (x (k, ldx) read in place from its
    first column, as A), B read in place: their full SKIP_MR x SKIP_NR tiles only, each over
    the samples p at which its SKIP_MR columns of x are not all zero (microkernel.h's
    UKR_SKIP: the same sums, in the same order, without their zero terms). idx: room for
    skip_list_room(k) ints. skip_edges does the rest of C."""
    cdef Py_ssize_t MR = skip_mr(sizeof(floating)), NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t st, u, nk, group = 32 // MR, first = s0
    cdef const floating *at
    cdef unsigned *masks = <unsigned *>(idx + k)
    for st in range(s0, s1):
        at = x + st * MR
        if floating is float:   # the samples' masks, once for every `group` strips of x
            if (st - s0) % group == 0:
                first = st
                skip_masks_f32(at, ldx, k, min(group, s1 - st) * MR, masks)
            nk = skip_samples_f32(masks, k, ((<unsigned>1 << MR) - 1) << ((st - first) * MR),
                                  idx)
        else:
            nk = ukr_double_skip_rows(at, ldx, k, idx)
        for u in range(n // NR):
            if floating is float:
                ukr_float_skip(nk, idx, at, 1, ldx, b + u * NR, ldb, c + st * MR * ldc + u * NR,
                               ldc, NULL, False)
            else:
                ukr_double_skip(nk, idx, at, 1, ldx, b + u * NR, ldb, c + st * MR * ldc + u * NR,
                                ldc, NULL, False)


cdef void forward_strips(const floating *x, Py_ssize_t ldx, const int *perm,
                         const floating *w, Py_ssize_t ldw, floating *h, Py_ssize_t ldh,
                         Py_ssize_t n, Py_ssize_t k, const floating *bias, int act,
                         Py_ssize_t s0, Py_ssize_t s1, int *idx) noexcept nogil:
    """Row strips s0:s1 of h = x @ w (+ bias, activated by act), w read in place: strip st
    is rows perm[st * SKIP_MR:(st + 1) * SKIP_MR] of x and of h, and of it the full SKIP_MR x
    SKIP_NR tiles only, each over the columns at which those rows of x are not all zero
    (UKR_SKIP's scattered tile). idx: room for k ints. skip_edges does the rest of h."""
    cdef Py_ssize_t MR = skip_mr(sizeof(floating)), NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t st, u, i, nk
    cdef const floating *arow[SKIP_MR_MAX]
    cdef floating *crow[SKIP_MR_MAX]
    for st in range(s0, s1):
        for i in range(MR):
            arow[i] = x + perm[st * MR + i] * ldx
        if floating is float:
            nk = skip_cols_f32(arow, k, idx)
        else:
            nk = ukr_double_skip_cols(arow, k, idx)
        for u in range(n // NR):
            for i in range(MR):
                crow[i] = h + perm[st * MR + i] * ldh + u * NR
            if floating is float:
                ukr_float_skip_scattered(nk, idx, arow, w + u * NR, ldw, crow,
                                         bias + u * NR if bias != NULL else NULL, act)
            else:
                ukr_double_skip_scattered(nk, idx, arow, w + u * NR, ldw, crow,
                                          bias + u * NR if bias != NULL else NULL, act)


cdef void rows_by_label(const int64_t *labels, Py_ssize_t rows, Py_ssize_t classes, int *perm,
                        int *counts) noexcept nogil:
    """perm[0:rows] = the rows 0..rows-1 in order of their labels, stably (a counting sort,
    counts: classes + 1 ints; a label outside [0, classes) sorts last)."""
    cdef Py_ssize_t r, c, at = 0, t
    for c in range(classes + 1):
        counts[c] = 0
    for r in range(rows):
        counts[label_bucket(labels[r], classes)] += 1
    for c in range(classes + 1):
        t = counts[c]
        counts[c] = at
        at += t
    for r in range(rows):
        c = label_bucket(labels[r], classes)
        perm[counts[c]] = <int>r
        counts[c] += 1


cdef inline Py_ssize_t label_bucket(int64_t label, Py_ssize_t classes) noexcept nogil:
    return label if 0 <= label < classes else classes


cdef void skip_edges(const floating *a, Py_ssize_t lda, bint trans_a, const floating *b,
                     Py_ssize_t ldb, floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n,
                     Py_ssize_t k, const floating *bias, int act, floating *ws,
                     int nthreads, bint rows_done=False) noexcept nogil:
    """What skip_strips leaves of C = op(A) B: the last columns (under a SKIP_NR tile) and
    (unless ``rows_done``: edge_row_tiles did them) the rows under the dense kernel's last
    full strip, gemm_direct's as in the whole product."""
    cdef Py_ssize_t NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t full_rows = skip_rows(m, sizeof(floating)), full_cols = n // NR * NR
    if full_cols < n:
        gemm_direct(a, lda, trans_a, b + full_cols, ldb, False, c + full_cols, ldc, m,
                    n - full_cols, k, bias + full_cols if bias != NULL else NULL, act, ws,
                    nthreads)
    if full_rows < m and not rows_done:
        gemm_direct(a + full_rows * (1 if trans_a else lda), lda, trans_a, b, ldb, False,
                    c + full_rows * ldc, ldc, m - full_rows, full_cols, k, bias, act, ws,
                    nthreads)


cdef void chunk_product(const floating *x, Py_ssize_t n_in, const floating *g,
                        Py_ssize_t n_out, floating *c, Py_ssize_t rows, Py_ssize_t batch,
                        floating *ws, int *idx, bint skip) noexcept nogil:
    """c (rows, n_out) = x[:, :rows]^T g: x (batch, n_in) from a chunk's first column, g
    (batch, n_out). gemm_small's product, except that with ``skip`` each full SKIP_MR x
    SKIP_NR tile leaves out the samples whose SKIP_MR values of x are all zero (UKR_SKIP in
    microkernel.h: the same sums, in the same order, without their zero terms). A
    Fashion-MNIST image is half background, exact zeros: at batch 128, 38% of the (sample,
    4 pixels) steps of the first layer's x^T g are zero. The hidden layers' ReLU zeros
    seldom fill a sample's group of columns, and there the lists cost more than they skip
    (64 -> 128: 15 -> 17.5 us a step, with 8-wide groups), so the loop asks for it on the
    input only. The last rows and columns (under a tile) are gemm_direct's, as in the whole
    product."""
    cdef Py_ssize_t MR = MR_F32 if floating is float else MR_F64
    if (not skip or is_narrow(n_out, sizeof(floating)) or rows < MR
            or n_out < skip_nr(sizeof(floating))):
        gemm_small(x, n_in, True, g, n_out, False, c, n_out, rows, n_out, batch, NULL, False,
                   ws, 1)
        return
    skip_strips(x, n_in, g, n_out, c, n_out, n_out, batch, 0,
                skip_rows(rows, sizeof(floating)) // skip_mr(sizeof(floating)), idx)
    skip_edges(x, n_in, True, g, n_out, c, n_out, rows, n_out, batch, NULL, False, ws, 1)


cdef inline void grad_update_chunk(const floating *x, const floating *g, floating *w,
                                   floating *s1, floating *s2, const Update *u,
                                   Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                                   Py_ssize_t c, floating *ws, bint skip) noexcept nogil:
    """Rows r0:r1 of dW = x^T g into ws (A = x^T read in place from column r0; chunk_product,
    skipping zeros of x when ``skip``), then u's step on the same rows of w."""
    cdef Py_ssize_t rows = chunk_rows(n_out, sizeof(floating))
    cdef Py_ssize_t r0 = c * rows, r1 = r0 + rows if r0 + rows < n_in else n_in
    cdef Py_ssize_t at = r0 * n_out, i, j
    cdef floating xi
    if batch == 1:
        # dW is the outer product x g: row by row, each row updated while in L1. A tile at
        # kc = 1 did 16 FMAs for a call's and a tile's bookkeeping; and its fma(x_i, g_j, 0)
        # is the product x_i * g_j rounded once, as here. (The row goes through ws so that
        # the compiler cannot contract the product into the update's arithmetic.)
        for i in range(r0, r1):
            xi = x[i]
            for j in range(n_out):
                ws[j] = xi * g[j]
            update_range(u, w + i * n_out, ws, s1 + i * n_out if s1 != NULL else NULL,
                         s2 + i * n_out if s2 != NULL else NULL, 0, n_out)
        return
    cdef floating *gws = ws + lines(rows * n_out, sizeof(floating))
    chunk_product(x + r0, n_in, g, n_out, ws, r1 - r0, batch, gws,
                  <int *>(gws + gemm_scratch(rows, n_out, batch, False, 1, sizeof(floating))),
                  skip)
    update_range(u, w + at, ws, s1 + at if s1 != NULL else NULL,
                 s2 + at if s2 != NULL else NULL, 0, (r1 - r0) * n_out)


cdef void weight_grad_update(const floating *x, const floating *g, floating *w, floating *s1,
                             floating *s2, const Update *u, Py_ssize_t batch, Py_ssize_t n_in,
                             Py_ssize_t n_out, floating *ws, int nthreads,
                             bint skip) noexcept nogil:
    """dW = x^T g (x (B, in), g (B, out)) and u's step on w (in, out), a chunk of rows at a
    time, each thread with its own chunk_scratch in ws. Chunks start on multiples of MR, so
    every tile is the one the whole product computes: the same values, bit for bit (``skip``:
    zeros of x skipped, see chunk_product). For the small-size path only (g, the product's
    B, is read in place). The threads take every other chunk: with the skips, a chunk's work
    is the number of its samples that are not background there, which varies from the
    image's top to its bottom, and a split into two runs of chunks left one thread waiting
    for the other. Measured on the avx2 path (alternating runs, the same bits): the
    batch-128 step 378 -> 359 us; handing chunks out dynamically did as well there but cost
    2% at batch 32, where a chunk is a microsecond or two."""
    cdef Py_ssize_t rows = chunk_rows(n_out, sizeof(floating)), c
    cdef Py_ssize_t n_chunks = (n_in + rows - 1) // rows
    cdef Py_ssize_t per_thread = chunk_scratch(batch, n_out, sizeof(floating))
    cdef int nt = threads_for(2.0 * n_in * n_out * batch, PAR_MIN_FLOPS,
                              n_chunks if n_chunks < nthreads else nthreads)
    if nt == 1:
        for c in range(n_chunks):
            grad_update_chunk(x, g, w, s1, s2, u, batch, n_in, n_out, c, ws, skip)
    else:
        for c in prange(n_chunks, num_threads=nt, schedule="static", chunksize=1):
            grad_update_chunk(x, g, w, s1, s2, u, batch, n_in, n_out, c,
                              ws + threadid() * per_thread, skip)


cdef inline int sweep_parts(Py_ssize_t n_in, Py_ssize_t n_out, int nthreads) noexcept nogil:
    """Threads that share sweep_layer: each needs a block of rows worth the wake-up."""
    if n_in * n_out < SWEEP_PAR_MIN or nthreads < 2:
        return 1
    return nthreads if nthreads < n_in else <int>n_in


cdef void sweep_layer(const Update *u, const floating *xp, const floating *g, floating *w,
                      floating *s1, floating *s2, const floating *xn, const floating *b,
                      floating *h, int act, Py_ssize_t n_in, Py_ssize_t n_out,
                      int parts, floating *partial) noexcept nogil:
    """sweep.h's one pass over a layer's w (n_in, n_out) at a batch of one: u's step with the
    gradient xp^T g when xp is not NULL, then h = xn @ w + b (activated by act) when xn is
    not NULL. ``parts`` threads take a contiguous block of rows each and write their partial
    sum of the product into ``partial`` (parts rows of lines(n_out)); h is their sum, plus b."""
    cdef Py_ssize_t per = (n_in + parts - 1) // parts, stride = lines(n_out, sizeof(floating))
    cdef Py_ssize_t part, j
    cdef floating s
    if parts == 1:
        sweep_rows(u, xp, g, w, s1, s2, xn, partial, n_out, 0, n_in)
    else:
        for part in prange(parts, num_threads=parts, schedule="static"):
            sweep_rows(u, xp, g, w, s1, s2, xn, partial + part * stride, n_out,
                       part * per, min((part + 1) * per, n_in))
    if xn == NULL:
        return
    for j in range(n_out):
        s = partial[j]
        for part in range(1, parts):
            s = s + partial[part * stride + j]
        s = s + b[j]
        if act == ACT_RELU:
            s = s if s > 0 else 0
        elif act == ACT_TANH:
            s = tanh_scalar(s)
        h[j] = s


cdef inline void sweep_rows(const Update *u, const floating *xp, const floating *g,
                            floating *w, floating *s1, floating *s2, const floating *xn,
                            floating *h, Py_ssize_t n_out, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil:
    if floating is float:
        sweep_f32_rows(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1)
    else:
        sweep_f64_rows(u, xp, g, w, s1, s2, xn, h, n_out, r0, r1)


cdef inline void sweep_backward(const floating *w, const floating *g, floating *out,
                                Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """out = g w^T for one row g (n_out,): sweep.h's, four dot products at a time."""
    if floating is float:
        sweep_f32_backward(w, g, out, n_in, n_out)
    else:
        sweep_f64_backward(w, g, out, n_in, n_out)


cdef void gather_rows(const floating *x, Py_ssize_t n_in, const int64_t *rows_of,
                      Py_ssize_t r0, Py_ssize_t r1, floating *out) noexcept nogil:
    """Rows r0:r1 of the batch: out[r] = x[rows_of[r]], a row copy each."""
    cdef Py_ssize_t r
    for r in range(r0, r1):
        memcpy(out + r * n_in, x + rows_of[r] * n_in, n_in * sizeof(floating))


cdef void gather(const floating *x, Py_ssize_t n_in, const int64_t *rows_of, Py_ssize_t rows,
                 floating *out, int nthreads) noexcept nogil:
    """out (rows, n_in) = x[rows_of[:rows]], split between threads from GATHER_PAR_MIN_BYTES
    each. The rows come from anywhere in x, mostly from DRAM, and one core's copy waits on
    one row's misses after another: at batch 128 a step's gather took 65 us on one thread
    (6 GB/s) and 40 us on two, which have twice the misses in flight."""
    cdef int parts = threads_for(<double>rows * n_in * sizeof(floating), GATHER_PAR_MIN_BYTES,
                                 min(rows, nthreads))
    cdef Py_ssize_t per = (rows + parts - 1) // parts, part
    if parts == 1:
        gather_rows(x, n_in, rows_of, 0, rows, out)
    else:
        for part in prange(parts, num_threads=parts, schedule="static"):
            gather_rows(x, n_in, rows_of, part * per, min((part + 1) * per, rows), out)


cdef void forward_skip(const floating *x, Py_ssize_t m, Py_ssize_t k, const floating *w,
                       Py_ssize_t n, const floating *bias, int act, floating *h,
                       const int64_t *labels, Py_ssize_t classes, floating *ws,
                       int nthreads) noexcept nogil:
    """h (m, n) = x (m, k) @ w (k, n) + bias (activated by act), for the input layer's
    forward pass: gemm_direct's product (w read in place), except that each full SKIP_MR x
    SKIP_NR tile runs over the columns in which its SKIP_MR rows of x are not all zero only
    (forward_strips): the same sums without their zero terms. A strip's rows are samples of
    one label where it can (rows_by_label): images of a class share their background, and of
    a batch of 128 Fashion-MNIST images, 21% of the pixels are zero in all of a strip's 4
    samples taken in the batch's order, 31% taken by label, and the whole step ran 1.04x as
    fast at batch 128 (alternating turns against the batch's order). Threads take a run of
    strips each, with its list (taking every other strip instead, so that each thread has a
    share of every class, measured slower). ws: gemm_scratch's elements for the product,
    then nthreads lists (skip_list_room(k) ints each), the order of the rows and the sort's
    counts (forward_scratch)."""
    cdef Py_ssize_t MR = skip_mr(sizeof(floating)), NR = skip_nr(sizeof(floating))
    cdef Py_ssize_t full = skip_rows(m, sizeof(floating)), strips = full // MR, per, part
    cdef int *lists = <int *>(ws + gemm_scratch(m, n, k, False, nthreads, sizeof(floating)))
    cdef Py_ssize_t stride = int_stride(skip_list_room(k), sizeof(floating))
    cdef int *perm = lists + nthreads * stride
    rows_by_label(labels, full, classes, perm, perm + int_stride(m, sizeof(floating)))
    cdef int parts = threads_for(2.0 * full * (n // NR * NR) * k, PAR_MIN_FLOPS,
                                 min(strips, nthreads))
    # The rows under the last full strip (128 = 21 * 6 + 2 on the avx2 path) are the dense
    # kernel's, one small product that on its own would run on one thread (too few FLOPs to
    # wake another) while the other waited: the threads share its tiles after their strips.
    cdef Py_ssize_t edge_tiles = edge_row_tiles(m, n, sizeof(floating)), edge_per = 0
    if parts == 1:
        forward_strips(x, k, perm, w, n, h, n, n, k, bias, act, 0, strips, lists)
    elif parts > 1:
        per = (strips + parts - 1) // parts
        edge_per = (edge_tiles + parts - 1) // parts
        for part in prange(parts, num_threads=parts, schedule="static"):
            forward_strips(x, k, perm, w, n, h, n, n, k, bias, act, part * per,
                           min((part + 1) * per, strips), lists + threadid() * stride)
            edge_rows(x, w, h, m, n, k, bias, act, part * edge_per,
                      min((part + 1) * edge_per, edge_tiles))
    skip_edges(x, k, False, w, n, h, n, m, n, k, bias, act, ws, nthreads, parts > 1)


cdef inline Py_ssize_t edge_row_tiles(Py_ssize_t m, Py_ssize_t n, size_t itemsize) noexcept nogil:
    """The dense tiles of the rows under the skip kernels' last full strip, over the columns
    of full SKIP_NR tiles (whole dense NR strips: SKIP_NR is a multiple of NR), that
    edge_rows computes: gemm_direct's tiles of that product, in its order."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    cdef Py_ssize_t NR = NR_F32 if itemsize == 4 else NR_F64
    cdef Py_ssize_t full = skip_rows(m, itemsize), full_cols = n // skip_nr(itemsize) * skip_nr(itemsize)
    return (m - full + MR - 1) // MR * (full_cols // NR)


cdef inline void edge_rows(const floating *x, const floating *w, floating *h, Py_ssize_t m,
                           Py_ssize_t n, Py_ssize_t k, const floating *bias, int act,
                           Py_ssize_t t0, Py_ssize_t t1) noexcept nogil:
    """Tiles t0:t1 of edge_row_tiles' product, for h (m, n) = x (m, k) @ w (k, n), all three
    row-major and contiguous: direct_tiles as gemm_direct runs them (w read in place, no
    partial column strip), so the same bits."""
    cdef Py_ssize_t NR = NR_F32 if floating is float else NR_F64
    cdef Py_ssize_t full = skip_rows(m, sizeof(floating))
    cdef Py_ssize_t full_cols = n // skip_nr(sizeof(floating)) * skip_nr(sizeof(floating))
    if t0 < t1:
        direct_tiles(x + full * k, k, False, w, n, NR, NULL, NR, h + full * n, n, m - full,
                     full_cols, k, bias, act, t0, t1)


cdef inline Py_ssize_t forward_scratch(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                       Py_ssize_t classes, int nthreads,
                                       size_t itemsize) noexcept nogil:
    """Elements of scratch forward_skip needs."""
    return (gemm_scratch(m, n, k, False, nthreads, itemsize)
            + nthreads * int_lines(skip_list_room(k), itemsize)
            + int_lines(m, itemsize) + int_lines(classes + 1, itemsize))


cdef inline bint skips_forward(Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                               size_t itemsize) noexcept nogil:
    """_train_steps's choice for the input layer's forward pass: forward_skip while the
    product takes the small-size path and has full tiles."""
    cdef Py_ssize_t MR = MR_F32 if itemsize == 4 else MR_F64
    return is_small(n_out, n_in, itemsize) and rows >= MR and n_out >= skip_nr(itemsize)


cdef Py_ssize_t step_scratch(const Py_ssize_t *n, Py_ssize_t n_layers, Py_ssize_t rows,
                             int nthreads, size_t itemsize) noexcept nogil:
    """Elements of scratch one step of ``rows`` rows needs for its products (the most any
    one needs: they run one after another)."""
    cdef Py_ssize_t i, size = 0
    for i in range(n_layers):
        size = max(size, gemm_scratch(rows, n[i + 1], n[i], False, nthreads, itemsize),
                   linear_backward_scratch(rows, n[i], n[i + 1], nthreads, itemsize),
                   nthreads * chunk_scratch(rows, n[i + 1], itemsize))
    return max(size, forward_scratch(rows, n[1], n[0], n[n_layers], nthreads, itemsize))


cdef inline bint is_aligned(const void *ptr) noexcept nogil:
    """NULL, or a start on a 64-byte line."""
    return <size_t>ptr % 64 == 0


cdef inline Py_ssize_t param_size(const Py_ssize_t *n, Py_ssize_t j) noexcept nogil:
    """Elements of parameter j of [w1, b1, w2, ...]: w_i is (n[i-1], n[i]), b_i (n[i],)."""
    return n[j // 2] * n[j // 2 + 1] if j % 2 == 0 else n[j // 2 + 1]


cdef void _train_steps(list params, const floating[:, ::1] x, const int64_t[::1] labels,
                       const int64_t[::1] order, Py_ssize_t batch, floating[::1] losses,
                       opt, hidden) except *:
    # params [w1, b1, ..., wL, bL] (w_i (n_{i-1}, n_i), b_i (n_i,)), x (N, n_0), labels (N,),
    # order (S,) rows of x, losses (ceil(S / batch),); opt: kernels._steps.Optimizer; hidden:
    # kernels._steps.Hidden (the hidden layers' activation code, and dropout's rate and seed).
    cdef Py_ssize_t L = len(params) // 2, n_params = len(params)
    cdef Py_ssize_t total = order.shape[0], n_steps = losses.shape[0]
    cdef Py_ssize_t i, j, k, q, r, r0, rows, size, used
    cdef size_t f = sizeof(floating)
    cdef int nt = _threads              # read once: the scratch is sized for it
    cdef Update u
    u.adam = opt.kind == "adam"
    u.lr, u.momentum, u.weight_decay = opt.lr, opt.momentum, opt.weight_decay
    u.beta1, u.beta2, u.eps = opt.beta1, opt.beta2, opt.eps
    cdef long step0 = opt.step, t
    cdef int activation = hidden.act
    cdef bint drop = hidden.p > 0
    cdef uint64_t seed = hidden.seed
    cdef uint32_t threshold = hidden.threshold
    cdef double keep_scale = hidden.scale
    cdef Scratch ws
    ws.data = NULL
    ws.nbytes = 0
    # Tables, per layer i: n[i] the widths; act[i] the activations (act[0] the gathered
    # batch, act[L] the logits), gact[i] their gradients; with dropout, pre[i] a hidden
    # layer's output before it (y_i of kernels/_steps.py; act[i] is then d_i). Per parameter j (w1, b1, w2, ...):
    # p[j] itself, s1[j] and s2[j] its optimizer state (velocity or NULL; Adam's m and v),
    # grad[j] its gradient (for the biases, and weights too large for the chunked update).
    # p, s1 and s2 are one table of 3 * n_params arrays updated in place, which the loop uses
    # where they are when 64-byte aligned and otherwise as aligned copies in the scratch,
    # copied back at the end: NumPy's large arrays start 16 bytes past a line, and then
    # every vector load and store of a row spans two lines (a batch of 1 ran 30% slower).
    cdef Py_ssize_t *n = <Py_ssize_t *>PyMem_Malloc((L + 1) * sizeof(Py_ssize_t))
    cdef floating **tables = <floating **>PyMem_Malloc((7 * n_params + 4 * (L + 1))
                                                       * sizeof(floating *))
    if n == NULL or tables == NULL:
        PyMem_Free(n)
        PyMem_Free(tables)
        raise MemoryError()
    cdef floating **home = tables                   # the caller's arrays: p, s1, s2
    cdef floating **p = tables + 3 * n_params       # what the loop updates: p, s1, s2
    cdef floating **s1 = p + n_params
    cdef floating **s2 = p + 2 * n_params
    cdef floating **grad = tables + 6 * n_params
    cdef floating **act = tables + 7 * n_params
    cdef floating **gact = act + L + 1
    cdef floating **before = gact + L + 1          # at batch 1: the last step's activations
    cdef floating **pre = before + L + 1
    cdef floating **swap
    cdef int64_t *yb
    cdef floating *work
    cdef floating *g
    # At batch 1 each layer's weights are swept once a step (sweep_layer): the update of
    # step k waits for step k + 1's forward pass, the first thing that reads the new weights,
    # and needs step k's activations (``before``, swapped with ``act`` every step) and
    # gradients; partial: the threads' partial products. (Not with dropout, whose pass
    # between a layer's output and the next layer's input the sweep has no place for.)
    cdef bint one = batch == 1 and not drop, pending = False
    cdef Update u_pending = u
    cdef floating *partial = NULL
    cdef Py_ssize_t n_partial = 0
    try:
        n[0] = x.shape[1]
        for i in range(L):
            n[i + 1] = params[2 * i].shape[1]
        for j in range(n_params):
            home[j] = _ptr1[floating](params[j].reshape(-1))
            home[n_params + j] = home[2 * n_params + j] = NULL
            if u.adam:
                home[n_params + j] = _ptr1[floating](opt.state[0][j].reshape(-1))
                home[2 * n_params + j] = _ptr1[floating](opt.state[1][j].reshape(-1))
            elif opt.state is not None:
                home[n_params + j] = _ptr1[floating](opt.state[j].reshape(-1))

        # Scratch, in elements, every piece on whole cache lines: the batch's labels, the
        # activations and their gradients, the parameters' gradients, the aligned copies,
        # then the products' scratch.
        used = lines((batch * sizeof(int64_t) + f - 1) // f, f)
        for i in range(L + 1):
            used += lines(batch * n[i], f) * (2 if i > 0 else 1)
            if drop and 0 < i < L:
                used += lines(batch * n[i], f)
        for j in range(n_params):
            used += lines(param_size(n, j), f)
        for q in range(3 * n_params):
            if not is_aligned(home[q]):
                used += lines(param_size(n, q % n_params), f)
        if one:
            for i in range(L):
                used += lines(n[i], f)
                n_partial = max(n_partial, sweep_parts(n[i], n[i + 1], nt) * lines(n[i + 1], f))
            used += n_partial
        size = max(step_scratch(n, L, batch, nt, f),                              # full batches
                   step_scratch(n, L, total - (n_steps - 1) * batch, nt, f))      # the last
        ws = scratch_take((used + size) * f)
        yb = <int64_t *>ws.data
        used = lines((batch * sizeof(int64_t) + f - 1) // f, f)
        for i in range(L + 1):
            act[i] = <floating *>ws.data + used
            used += lines(batch * n[i], f)
            gact[i] = NULL                  # the input needs no gradient
            if i > 0:
                gact[i] = <floating *>ws.data + used
                used += lines(batch * n[i], f)
            pre[i] = NULL
            if drop and 0 < i < L:
                pre[i] = <floating *>ws.data + used
                used += lines(batch * n[i], f)
        for j in range(n_params):
            grad[j] = <floating *>ws.data + used
            used += lines(param_size(n, j), f)
        for q in range(3 * n_params):
            p[q] = home[q]
            if not is_aligned(home[q]):
                p[q] = <floating *>ws.data + used
                used += lines(param_size(n, q % n_params), f)
                memcpy(p[q], home[q], param_size(n, q % n_params) * f)
        if one:
            for i in range(L):
                before[i] = <floating *>ws.data + used
                used += lines(n[i], f)
            before[L] = act[L]                      # (the logits are not kept)
            partial = <floating *>ws.data + used
            used += n_partial
        work = <floating *>ws.data + used

        with nogil:
            for k in range(n_steps):
                t = step0 + k + 1
                r0 = k * batch
                rows = batch if total - r0 >= batch else total - r0
                if one:
                    swap = act
                    act = before
                    before = swap
                gather(&x[0, 0], n[0], &order[r0], rows, act[0], nt)
                for r in range(rows):
                    yb[r] = labels[order[r0 + r]]
                for i in range(L):                          # forward; act on hidden layers
                    if one:                                 # (with the last step's update)
                        sweep_layer(&u_pending, before[i] if pending else NULL, gact[i + 1],
                                    p[2 * i], s1[2 * i], s2[2 * i], act[i], p[2 * i + 1],
                                    act[i + 1], activation if i < L - 1 else ACT_NONE, n[i],
                                    n[i + 1], sweep_parts(n[i], n[i + 1], nt), partial)
                        continue
                    if i == 0 and skips_forward(rows, n[0], n[1], f):  # (zeros of x skipped)
                        forward_skip(act[0], rows, n[0], p[0], n[1], p[1],
                                     activation if L > 1 else ACT_NONE,
                                     pre[1] if drop and L > 1 else act[1], yb, n[L], work, nt)
                    else:
                        gemm(act[i], n[i], False, p[2 * i], n[i + 1], False,
                             pre[i + 1] if drop and i < L - 1 else act[i + 1], n[i + 1], rows,
                             n[i + 1], n[i], p[2 * i + 1],
                             activation if i < L - 1 else ACT_NONE, work, nt)
                    if drop and i < L - 1:                  # d = dropout(y), the next input
                        dropout_op(pre[i + 1], act[i + 1], rows * n[i + 1],
                                   mask_key(seed, t, i + 1), threshold, keep_scale)
                losses[k] = <floating>softmax_cross_entropy_op(act[L], yb, gact[L], rows, n[L])
                u.t = t
                if u.adam:
                    adam_scales(u.t, u.lr, u.beta1, u.beta2, &u.step_size, &u.inv_bc2_sqrt)
                for i in range(L - 1, -1, -1):              # backward and update, layer by layer
                    # g = grad_y * act'(y) in place (through dropout's mask first), db;
                    # dx = g w^T while w is the old one
                    g = gact[i + 1]
                    if drop and i < L - 1:
                        dropout_op(g, g, rows * n[i + 1], mask_key(seed, t, i + 1), threshold,
                                   keep_scale)
                    mask_and_bias_grad(pre[i + 1] if drop and i < L - 1 else act[i + 1], g, g,
                                       grad[2 * i + 1], rows, n[i + 1],
                                       activation if i < L - 1 else ACT_NONE)
                    if i > 0 and one:
                        sweep_backward(p[2 * i], g, gact[i], n[i], n[i + 1])
                    elif i > 0:
                        gemm(g, n[i + 1], False, p[2 * i], n[i + 1], True, gact[i], n[i],
                             rows, n[i], n[i + 1], NULL, False, work, nt)
                    if one:                                 # w's update: the next sweep's
                        u_pending = u
                        pending = True
                    elif is_small(n[i + 1], rows, f):       # dW = x^T g, chunk by chunk into w
                        weight_grad_update(act[i], g, p[2 * i], s1[2 * i], s2[2 * i], &u, rows,
                                           n[i], n[i + 1], work, nt, i == 0)
                    else:                                   # (too large a product to chunk)
                        gemm(act[i], n[i], True, g, n[i + 1], False, grad[2 * i], n[i + 1],
                             n[i], n[i + 1], rows, NULL, False, work, nt)
                        update_op(&u, p[2 * i], grad[2 * i], s1[2 * i], s2[2 * i],
                                  param_size(n, 2 * i))
                    update_op(&u, p[2 * i + 1], grad[2 * i + 1], s1[2 * i + 1], s2[2 * i + 1],
                              n[i + 1])
            if pending:                                     # the last step's updates
                for i in range(L):
                    sweep_layer(&u_pending, act[i], gact[i + 1], p[2 * i], s1[2 * i],
                                s2[2 * i], NULL, NULL, NULL, False, n[i], n[i + 1],
                                sweep_parts(n[i], n[i + 1], nt), partial)
            for q in range(3 * n_params):                   # the copies back where they live
                if p[q] != home[q]:
                    memcpy(home[q], p[q], param_size(n, q % n_params) * f)
    finally:
        scratch_give(ws)
        PyMem_Free(n)
        PyMem_Free(tables)


def train_steps(list params, x, labels, order, Py_ssize_t batch, losses, opt, hidden):
    """kernels/_steps.py's training step, once per ``batch`` rows of ``order``, in one call.

    Arguments checked by kernels/_front.py: params [w1, b1, ..., wL, bL] and x C-contiguous,
    of one float dtype; labels and order int64; losses (ceil(len(order) / batch),) receives
    each step's loss; opt a kernels._steps.Optimizer (sgd or adam, and its state arrays);
    hidden a kernels._steps.Hidden (activation; dropout rate, seed, threshold and scale).
    """
    if x.itemsize == 4:
        _train_steps[float](params, x, labels, order, batch, losses, opt, hidden)
    else:
        _train_steps[double](params, x, labels, order, batch, losses, opt, hidden)
