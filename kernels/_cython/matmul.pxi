# Matmul: the five loops around the micro-kernel, the small-size paths, the ladder.
# (Part of fast.pxi, which includes it; compiled once per instruction-set path.)

# ====================================================================================== matmul
#
# C (m, n) = op(A) (m, k) @ op(B) (k, n); op(A)[i, p] = a[i*lda + p], or a[p*lda + i] when
# trans_a; op(B)[p, j] = b[p*ldb + j], or b[j*ldb + p] when trans_b. Optional epilogue: + bias
# (n,), then ReLU. Every function below takes raw pointers and runs without the GIL.


cdef inline void ukr_packed(long kc, const floating *a, const floating *b, floating *c, long ldc,
                            bint accumulate, const floating *bias, int act) noexcept nogil:
    if floating is float:
        ukr_float_packed(kc, a, b, c, ldc, accumulate, bias, act)
    else:
        ukr_double_packed(kc, a, b, c, ldc, accumulate, bias, act)


cdef inline void ukr_direct(long kc, const floating *a, long rsa, long csa, const floating *b,
                            long rsb, floating *c, long ldc, bint accumulate,
                            const floating *bias, int act) noexcept nogil:
    if floating is float:
        ukr_float_direct(kc, a, rsa, csa, b, rsb, c, ldc, accumulate, bias, act)
    else:
        ukr_double_direct(kc, a, rsa, csa, b, rsb, c, ldc, accumulate, bias, act)


cdef inline void ukr_narrow(long kc, const floating *a, long rsa, long csa, const floating *b,
                            long rsb, floating *c, long ldc) noexcept nogil:
    """The MR x NR/2 kernel, for a last column strip at most NR/2 wide (into a tile buffer)."""
    if floating is float:
        ukr_float_narrow_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, NULL, False)
    else:
        ukr_double_narrow_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, NULL, False)


cdef inline void ukr_rows(int rows, long kc, const floating *a, long rsa, long csa,
                          const floating *b, long rsb, floating *c, long ldc,
                          const floating *bias, int act) noexcept nogil:
    """The 4-, 2- or 1-row x NR kernel, for the rows left under MR (A read in place)."""
    if floating is float:
        if rows == 4:
            ukr_float_r4_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        elif rows == 2:
            ukr_float_r2_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        else:
            ukr_float_r1_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
    else:
        if rows == 4:
            ukr_double_r4_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        elif rows == 2:
            ukr_double_r2_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)
        else:
            ukr_double_r1_direct(kc, a, rsa, csa, b, rsb, c, ldc, False, bias, act)


cdef inline void transpose(const floating *src, Py_ssize_t lds, floating *dst,
                           Py_ssize_t ldd) noexcept nogil:
    """dst[c * ldd + r] = src[r * lds + c] for one VL x VL block (microkernel.h)."""
    if floating is float:
        transpose_f32(src, lds, dst, ldd)
    else:
        transpose_f64(src, lds, dst, ldd)


cdef void pack(const floating *x, Py_ssize_t ldx, bint trans, Py_ssize_t r0, Py_ssize_t nrows,
               Py_ssize_t c0, Py_ssize_t ncols, Py_ssize_t w, floating *dst) noexcept nogil:
    """Pack rows r0:r0+nrows, columns c0:c0+ncols of M into micro-panels of w rows.

    M[r, c] = x[r*ldx + c], or x[c*ldx + r] when trans. Panel q holds rows q*w:(q+1)*w,
    column by column: dst[q*ncols*w + c*w + r], zero-padded past nrows. A is packed as
    M = op(A) with w = MR; B as M = op(B)^T with w = NR (so trans = not trans_b). This is
    the one place transposes are absorbed.
    """
    cdef Py_ssize_t q, q_i, r, r_i, c, c_i, rows, done
    cdef Py_ssize_t VL = VL_F32 if floating is float else VL_F64
    cdef floating *panel
    cdef const floating *src
    for q_i in range((nrows + w - 1) // w):
        q = q_i * w
        rows = w if nrows - q >= w else nrows - q
        panel = dst + q * ncols
        if rows < w:
            memset(panel, 0, ncols * w * sizeof(floating))
        if trans:                       # M's rows are contiguous down x's columns
            for c in range(ncols):
                src = x + (c0 + c) * ldx + r0 + q
                for r in range(rows):
                    panel[c * w + r] = src[r]
        else:                           # M's rows are x's rows: a transpose
            done = 0
            if rows == w and w % VL == 0:   # VL x VL blocks through registers
                done = ncols // VL * VL
                for c_i in range(ncols // VL):
                    for r_i in range(w // VL):
                        transpose(x + (r0 + q + r_i * VL) * ldx + c0 + c_i * VL, ldx,
                                  panel + c_i * VL * w + r_i * VL, w)
            for r in range(rows):       # the rest an element at a time
                src = x + (r0 + q + r) * ldx + c0
                for c in range(done, ncols):
                    panel[c * w + r] = src[c]


cdef inline void store_edge(const floating *tile, Py_ssize_t ldt, floating *c, Py_ssize_t ldc,
                            Py_ssize_t mr, Py_ssize_t nr, bint accumulate, const floating *bias,
                            int act) noexcept nogil:
    """The masked path's second half: the valid mr x nr corner of a full tile into C."""
    cdef Py_ssize_t i, j
    cdef floating v
    for i in range(mr):
        for j in range(nr):
            v = tile[i * ldt + j]
            if accumulate:
                v = v + c[i * ldc + j]
            if bias != NULL:
                v = v + bias[j]
            if act == ACT_RELU and not v > 0:
                v = 0
            elif act == ACT_TANH:
                v = tanh_scalar(v)
            c[i * ldc + j] = v


cdef void macro_kernel(const floating *ap, const floating *bp, floating *c, Py_ssize_t ldc,
                       Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, bint accumulate,
                       const floating *bias, int act) noexcept nogil:
    """LOOPS 2 and 1 over packed micro-panels: C[0:mc, 0:nc] (+)= Ap (mc x kc) @ Bp (kc x nc)."""
    cdef Py_ssize_t MR, NR, jr, jr_i, ir, ir_i, mr, nr
    cdef floating tile[TILE_MAX]
    if floating is float:
        MR = MR_F32
        NR = NR_F32
    else:
        MR = MR_F64
        NR = NR_F64
    for jr_i in range((nc + NR - 1) // NR):                         # LOOP 2: NR-wide micro-panels of B
        jr = jr_i * NR
        nr = NR if nc - jr >= NR else nc - jr
        for ir_i in range((mc + MR - 1) // MR):                     # LOOP 1: MR-tall micro-panels of A
            ir = ir_i * MR
            mr = MR if mc - ir >= MR else mc - ir
            if mr == MR and nr == NR:                   # full tile: straight into C
                ukr_packed(kc, ap + ir * kc, bp + jr * kc, c + ir * ldc + jr, ldc, accumulate,
                           bias + jr if bias != NULL else NULL, act)
            else:                                       # edge: the one masked path
                ukr_packed(kc, ap + ir * kc, bp + jr * kc, tile, NR, False, NULL, False)
                store_edge(tile, NR, c + ir * ldc + jr, ldc, mr, nr, accumulate,
                           bias + jr if bias != NULL else NULL, act)


cdef Py_ssize_t packed_blocks(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int nthreads,
                              size_t itemsize, Py_ssize_t *b_size,
                              Py_ssize_t *a_size) noexcept nogil:
    """gemm_packed's row block height (returned) and scratch: b_size elements for the packed
    B block, then a_size for each thread's packed A block, sized to this product (a small
    one must not pay for KC x NC). a_size holds MC rows, whatever the thread count: a caller
    sizing the scratch for nthreads threads covers a run on fewer (whose blocks are taller)."""
    cdef bint f32 = itemsize == 4
    cdef Py_ssize_t MR = MR_F32 if f32 else MR_F64, NR = NR_F32 if f32 else NR_F64
    cdef Py_ssize_t KC = KC_F32 if f32 else KC_F64, MC = MC_F32 if f32 else MC_F64
    cdef Py_ssize_t NC = NC_F32 if f32 else NC_F64
    # Row blocks: MC rows each, but at least BLOCKS_PER_THREAD per thread when m allows, handed
    # out dynamically: on a shared 2-core box one thread is often slowed down, and a static
    # split would leave the other waiting at the barrier.
    cdef Py_ssize_t mcb = MC
    if nthreads > 1:
        mcb = (m + nthreads * BLOCKS_PER_THREAD - 1) // (nthreads * BLOCKS_PER_THREAD)
        mcb = (mcb + MR - 1) // MR * MR
        if mcb > MC:
            mcb = MC
        if mcb < MIN_BLOCK_ROWS:
            mcb = MIN_BLOCK_ROWS
    cdef Py_ssize_t kcap = KC if k > KC else k
    cdef Py_ssize_t ncap = ((NC if n > NC else n) + NR - 1) // NR * NR
    cdef Py_ssize_t mcap = ((MC if m > MC else m) + MR - 1) // MR * MR    # mcb <= MC
    b_size[0] = lines(kcap * ncap, itemsize)
    a_size[0] = lines(kcap * mcap, itemsize)
    return mcb


cdef void gemm_packed(const floating *a, Py_ssize_t lda, bint trans_a,
                      const floating *b, Py_ssize_t ldb, bint trans_b,
                      floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """BLIS: the five loops around the micro-kernel, threads over LOOP 3 (blocks of rows).

    ws: gemm_scratch(m, n, k, trans_b, nthreads) elements."""
    cdef Py_ssize_t MR, NR, KC, NC
    if floating is float:
        MR = MR_F32
        NR = NR_F32
        KC = KC_F32
        NC = NC_F32
    else:
        MR = MR_F64
        NR = NR_F64
        KC = KC_F64
        NC = NC_F64
    cdef Py_ssize_t jc, jc_i, nc, pc, pc_i, kc, ib, ic, mc, jp, n_bpanels, n_blocks
    cdef Py_ssize_t part, n_parts, per, j0
    cdef bint first, last, by_columns
    cdef int nt, tid
    cdef floating *ap
    cdef Py_ssize_t b_size, a_size
    cdef Py_ssize_t mcb = packed_blocks(m, n, k, nthreads, sizeof(floating), &b_size, &a_size)
    cdef floating *bp = ws
    cdef floating *ap_all = ws + b_size             # then one A block per thread
    n_blocks = (m + mcb - 1) // mcb
    nt = nthreads if nthreads < n_blocks else <int>n_blocks
    # One row block (m <= MIN_BLOCK_ROWS: a batch of 32 against a 1024-wide layer) would leave
    # every thread but one idle: the threads then split LOOP 2 instead, each on its own runs of
    # B's micro-panels, A packed once. The same tiles with the same sums, so the same bits.
    # Measured, 2 threads, (32, 1024) @ (1024, 1024) float32: 84 -> 142 GFLOP/s (numba 174, OpenBLAS
    # 167 in the same runs); (32, 784) @ (784, 1024): 74 -> 142.
    by_columns = n_blocks == 1 and nthreads > 1
    for jc_i in range((n + NC - 1) // NC):                          # LOOP 5: split n into NC parts
        jc = jc_i * NC
        nc = NC if n - jc >= NC else n - jc
        n_bpanels = (nc + NR - 1) // NR
        for pc_i in range((k + KC - 1) // KC):                      # LOOP 4: split k into KC parts; pack B
            pc = pc_i * KC
            kc = KC if k - pc >= KC else k - pc
            first = pc == 0
            last = pc + kc == k
            if nt > 1 or by_columns:
                for jp in prange(n_bpanels, num_threads=nthreads, schedule="dynamic"):
                    pack(b, ldb, not trans_b, jc + jp * NR, NR if nc - jp * NR >= NR else nc - jp * NR,
                         pc, kc, NR, bp + jp * NR * kc)
            else:
                pack(b, ldb, not trans_b, jc, nc, pc, kc, NR, bp)
            if by_columns:
                pack(a, lda, trans_a, 0, m, pc, kc, MR, ap_all)
                n_parts = nthreads * BLOCKS_PER_THREAD if nthreads * BLOCKS_PER_THREAD < n_bpanels else n_bpanels
                per = (n_bpanels + n_parts - 1) // n_parts              # micro-panels a part
                n_parts = (n_bpanels + per - 1) // per
                for part in prange(n_parts, num_threads=nthreads, schedule="dynamic"):
                    j0 = part * per * NR
                    macro_kernel(ap_all, bp + j0 * kc, c + jc + j0, ldc, m,
                                 per * NR if nc - j0 >= per * NR else nc - j0, kc, not first,
                                 bias + jc + j0 if (last and bias != NULL) else NULL, act if last else ACT_NONE)
                continue
            for ib in prange(n_blocks, num_threads=nt, schedule="dynamic"):
                ic = ib * mcb                           # LOOP 3: split m into MC parts; pack A
                mc = mcb if m - ic >= mcb else m - ic
                tid = threadid()
                ap = ap_all + tid * a_size
                pack(a, lda, trans_a, ic, mc, pc, kc, MR, ap)
                macro_kernel(ap, bp, c + ic * ldc + jc, ldc, mc, nc, kc, not first,
                             bias + jc if (last and bias != NULL) else NULL, act if last else ACT_NONE)


cdef void direct_tiles(const floating *a, Py_ssize_t lda, bint trans_a,
                       const floating *b, Py_ssize_t rsb, Py_ssize_t bstep,
                       const floating *b_edge, Py_ssize_t nre, floating *c, Py_ssize_t ldc,
                       Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating *bias, int act,
                       Py_ssize_t t0, Py_ssize_t t1) noexcept nogil:
    """Tiles t0:t1 (row strip major) of the small-size path: A and B read in place.

    B strip jt starts at b + jt*bstep, rows of stride rsb: op(B) in place (bstep NR, rsb ldb)
    or packed micro-panels (bstep NR*k, rsb NR). The last, partial column strip was packed,
    zero-padded, into b_edge, nre = NR or NR/2 wide (then the half-width kernel computes it).
    The rows left under MR in the last row strip run the 4-, 2- and 1-row kernels on A in
    place. Column edges take the masked path: a full tile into a buffer, the valid part out.
    """
    cdef Py_ssize_t MR, NR, t, it, jt, mr, nr, n_ntiles, r0
    cdef long rsa, csa, rsb_t
    cdef int rows
    cdef const floating *at
    cdef const floating *bt
    cdef const floating *bias_t
    cdef floating *ct
    cdef floating tile[TILE_MAX]
    if floating is float:
        MR = MR_F32
        NR = NR_F32
    else:
        MR = MR_F64
        NR = NR_F64
    rsa = 1 if trans_a else lda
    csa = lda if trans_a else 1
    n_ntiles = (n + NR - 1) // NR
    for t in range(t0, t1):
        it = t // n_ntiles
        jt = t - it * n_ntiles
        mr = MR if m - it * MR >= MR else m - it * MR
        nr = NR if n - jt * NR >= NR else n - jt * NR
        at = a + it * MR * rsa
        ct = c + it * MR * ldc + jt * NR
        bias_t = bias + jt * NR if bias != NULL else NULL
        if nr == NR:
            bt, rsb_t = b + jt * bstep, rsb
        else:
            bt, rsb_t = b_edge, nre
        if mr == MR:
            if nr == NR:                                # full tile: straight into C
                ukr_direct(k, at, rsa, csa, bt, rsb_t, ct, ldc, False, bias_t, act)
            else:                                       # column edge: the masked path
                if nre < NR:
                    ukr_narrow(k, at, rsa, csa, bt, rsb_t, tile, nre)
                else:
                    ukr_direct(k, at, rsa, csa, bt, rsb_t, tile, NR, False, NULL, False)
                store_edge(tile, nre if nre < NR else NR, ct, ldc, mr, nr, False, bias_t, act)
        else:                                           # last rows: mr = 4a + 2b + c
            r0 = 0
            rows = 4
            while rows >= 1:
                if mr & rows:
                    if nr == NR:
                        ukr_rows(rows, k, at + r0 * rsa, rsa, csa, bt, rsb_t, ct + r0 * ldc, ldc,
                                 bias_t, act)
                    else:                               # (b_edge is padded for this NR-wide read)
                        ukr_rows(rows, k, at + r0 * rsa, rsa, csa, bt, rsb_t, tile, NR, NULL, False)
                        store_edge(tile, NR, ct + r0 * ldc, ldc, rows, nr, False, bias_t, act)
                    r0 += rows
                rows = rows // 2


cdef Py_ssize_t direct_panels(Py_ssize_t n, Py_ssize_t k, bint trans_b,
                              size_t itemsize) noexcept nogil:
    """gemm_direct's scratch for op(B)'s full column strips packed (0 unless trans_b); the
    packed last, partial strip follows, NR * k + NR elements at most (direct_edge)."""
    cdef Py_ssize_t NR = NR_F32 if itemsize == 4 else NR_F64
    return lines((n // NR * NR + NR) * k, itemsize) if trans_b else 0


cdef inline Py_ssize_t direct_edge(Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil:
    cdef Py_ssize_t NR = NR_F32 if itemsize == 4 else NR_F64
    # + NR: the row kernels read NR columns from rows nre wide (the extra ones discarded)
    return lines(NR * k + NR, itemsize) if n % NR else 0


cdef void gemm_direct(const floating *a, Py_ssize_t lda, bint trans_a,
                      const floating *b, Py_ssize_t ldb, bint trans_b,
                      floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """The small-size path: no blocking, no packing of A; the micro-kernels over whole k.

    op(B) is read in place when it is row-major (trans_b False); a transposed B is packed once
    (k x n, the size of the weights at most), into ws. Threads split the list of tiles.
    """
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = MR_F32
        NR = NR_F32
    else:
        MR = MR_F64
        NR = NR_F64
    cdef Py_ssize_t n_mtiles = (m + MR - 1) // MR, n_ntiles = (n + NR - 1) // NR
    cdef Py_ssize_t n_tiles = n_mtiles * n_ntiles, per, part, n_parts, rsb, bstep, last_n, nre = NR
    cdef floating *b_edge = NULL
    cdef floating *b_packed = NULL
    cdef const floating *bsrc = b
    last_n = n // NR * NR                              # where the partial strip starts
    if trans_b:
        # Packed micro-panels, k x NR each, for the full strips: read with rsb = NR.
        b_packed = ws
        pack(b, ldb, False, 0, last_n, 0, k, NR, b_packed)
        bsrc, rsb, bstep = b_packed, NR, NR * k
    else:
        rsb, bstep = ldb, NR
    if n % NR:
        nre = NR // 2 if n % NR <= NR // 2 else NR
        b_edge = ws + direct_panels(n, k, trans_b, sizeof(floating))
        pack(b, ldb, not trans_b, last_n, n - last_n, 0, k, nre, b_edge)
    nthreads = threads_for(2.0 * m * n * k, PAR_MIN_FLOPS,
                           n_tiles if n_tiles < nthreads else nthreads)
    if nthreads == 1:
        direct_tiles(a, lda, trans_a, bsrc, rsb, bstep, b_edge, nre, c, ldc, m, n, k, bias,
                     act, 0, n_tiles)
    else:
        # Runs of consecutive tiles (sharing A strips), BLOCKS_PER_THREAD per thread, dynamic.
        n_parts = nthreads * BLOCKS_PER_THREAD if nthreads * BLOCKS_PER_THREAD < n_tiles else n_tiles
        per = (n_tiles + n_parts - 1) // n_parts
        n_parts = (n_tiles + per - 1) // per
        for part in prange(n_parts, num_threads=nthreads, schedule="dynamic"):
            direct_tiles(a, lda, trans_a, bsrc, rsb, bstep, b_edge, nre, c, ldc, m, n, k,
                         bias, act, part * per, min((part + 1) * per, n_tiles))


cdef inline bint is_small(Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil:
    """gemm's choice: the small-size path while op(B) fits in half of L2."""
    return <size_t>(k * n) * itemsize <= DIRECT_MAX_B_BYTES


cdef inline bint is_narrow(Py_ssize_t n, size_t itemsize) noexcept nogil:
    """C at most half a column strip wide (the MLP's 10 classes): see gemm_small."""
    return n <= (NR_F32 if itemsize == 4 else NR_F64) // 2


cdef void gemm_small(const floating *a, Py_ssize_t lda, bint trans_a,
                     const floating *b, Py_ssize_t ldb, bint trans_b,
                     floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                     const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """The small-size path (gemm_direct), on C or on its transpose.

    A narrow C (is_narrow) fills the half-width tiles' vectors only in part: 10 columns use
    10 of 16 lanes. When op(A) is transposed in memory (x^T g, the last layer's weight
    gradient) the path runs instead on C^T = op(B)^T op(A)^T, whose rows are the m wide ones
    and whose B is A as it lies: every lane used, nothing packed, then C^T copied back
    transposed (BLIS transposes a problem the same way when its kernel prefers the other
    orientation). Each element is the same sum in the same order either way, except for the
    columns of C that fall in C^T's last rows (the 2- and 1-row kernels split their sums).
    Measured, (512x64)^T @ 512x10 float32, one thread: 11.3 us before, 9.1 after (3.6 and
    2.6 us at 128 rows). No epilogue on this route (no caller has one with op(A) transposed).
    ws: gemm_scratch's."""
    cdef Py_ssize_t i, j
    if trans_a and is_narrow(n, sizeof(floating)) and bias == NULL and act == ACT_NONE:
        gemm_direct(b, ldb, not trans_b, a, lda, False, ws, m, n, m, k, NULL, False,
                    ws + lines(m * n, sizeof(floating)), nthreads)
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = ws[j * m + i]
        return
    gemm_direct(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, bias, act, ws, nthreads)


cdef Py_ssize_t gemm_scratch(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint trans_b,
                             int nthreads, size_t itemsize) noexcept nogil:
    """Elements of scratch that gemm (or gemm_packed) needs for this product on nthreads."""
    cdef Py_ssize_t b_size, a_size, size
    if is_small(n, k, itemsize):
        size = direct_panels(n, k, trans_b, itemsize) + direct_edge(n, k, itemsize)
        if is_narrow(n, itemsize):      # gemm_small may run on C^T: C^T, then its scratch
            size = max(size, lines(m * n, itemsize) + direct_edge(m, k, itemsize))
        return size
    packed_blocks(m, n, k, nthreads, itemsize, &b_size, &a_size)
    return b_size + nthreads * a_size


cdef void gemm(const floating *a, Py_ssize_t lda, bint trans_a,
               const floating *b, Py_ssize_t ldb, bint trans_b,
               floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
               const floating *bias, int act, floating *ws, int nthreads) noexcept nogil:
    """The matmul every op uses: the small-size path while op(B) fits in half of L2, else BLIS.

    At most nthreads threads; ws: gemm_scratch(m, n, k, trans_b, nthreads) elements."""
    if is_small(n, k, sizeof(floating)):
        gemm_small(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, bias, act, ws, nthreads)
    else:
        gemm_packed(a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, bias, act, ws,
                    threads_for(2.0 * m * n * k, PAR_MIN_FLOPS, nthreads))


cdef void gemm_blocked(const floating *a, Py_ssize_t lda, bint trans_a,
                       const floating *b, Py_ssize_t ldb, bint trans_b,
                       floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n,
                       Py_ssize_t k) noexcept nogil:
    """Ladder step 2: loops reordered (i, p, j: the inner loop runs along rows of B and C, so it
    vectorises) and blocked so a block of B stays in cache; no packing, no micro-kernel."""
    cdef Py_ssize_t jj, jj_i, pp, pp_i, i, p, j, j1, p1
    cdef floating aip
    cdef floating *crow
    cdef const floating *brow
    for i in range(m):
        memset(c + i * ldc, 0, n * sizeof(floating))
    for jj_i in range((n + BLOCKED_NB - 1) // BLOCKED_NB):
        jj = jj_i * BLOCKED_NB
        j1 = jj + BLOCKED_NB if jj + BLOCKED_NB < n else n
        for pp_i in range((k + BLOCKED_KB - 1) // BLOCKED_KB):
            pp = pp_i * BLOCKED_KB
            p1 = pp + BLOCKED_KB if pp + BLOCKED_KB < k else k
            for i in range(m):
                crow = c + i * ldc
                for p in range(pp, p1):
                    aip = a[p * lda + i] if trans_a else a[i * lda + p]
                    if trans_b:
                        for j in range(jj, j1):
                            crow[j] += aip * b[j * ldb + p]
                    else:
                        brow = b + p * ldb
                        for j in range(jj, j1):
                            crow[j] += aip * brow[j]


# The def functions: dtype dispatch and data pointers only. Arrays are C-contiguous (checked
# by kernels/_front.py), so a typed memoryview's first element is the start of the data.

cdef int MATMUL_AUTO = 0, MATMUL_BLOCKED = 1, MATMUL_PACKED = 2, MATMUL_THREADED = 3


cdef void _matmul(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                  bint trans_a, bint trans_b, int variant):
    # a (m, k) or (k, m) with trans_a; b (k, n) or (n, k) with trans_b; out (m, n)
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t lda = a.shape[1], ldb = b.shape[1], size = 0, b_size, a_size
    cdef int nt = _threads              # read once: the scratch is sized for it
    if variant == MATMUL_PACKED:
        nt = 1
    elif variant == MATMUL_THREADED:
        nt = threads_for(2.0 * m * n * k, PAR_MIN_FLOPS, nt)
    if variant == MATMUL_AUTO:
        size = gemm_scratch(m, n, k, trans_b, nt, sizeof(floating))
    elif variant != MATMUL_BLOCKED:
        packed_blocks(m, n, k, nt, sizeof(floating), &b_size, &a_size)
        size = b_size + nt * a_size
    cdef Scratch ws = scratch_take(size * sizeof(floating))
    cdef floating *w = <floating *>ws.data
    with nogil:
        if variant == MATMUL_AUTO:
            gemm(&a[0, 0], lda, trans_a, &b[0, 0], ldb, trans_b, &out[0, 0], n, m, n, k, NULL, False,
                 w, nt)
        elif variant == MATMUL_BLOCKED:
            gemm_blocked(&a[0, 0], lda, trans_a, &b[0, 0], ldb, trans_b, &out[0, 0], n, m, n, k)
        else:
            gemm_packed(&a[0, 0], lda, trans_a, &b[0, 0], ldb, trans_b, &out[0, 0], n, m, n, k,
                        NULL, False, w, nt)
    scratch_give(ws)


cdef void _matmul_variant(a, b, out, bint trans_a, bint trans_b, int variant) except *:
    # the dtype dispatch that every matmul entry point below shares
    if a.itemsize == 4:
        _matmul[float](a, b, out, trans_a, trans_b, variant)
    else:
        _matmul[double](a, b, out, trans_a, trans_b, variant)


def matmul(a, b, out, bint trans_a, bint trans_b):
    """out = op(a) @ op(b): the small-size path or threaded BLIS, whichever fits the shape."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_AUTO)


def matmul_blocked(a, b, out, bint trans_a, bint trans_b):
    """Ladder step: cache-blocked loops, one thread."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_BLOCKED)


def matmul_packed(a, b, out, bint trans_a, bint trans_b):
    """Ladder step: BLIS packing + the register-blocked micro-kernel, one thread."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_PACKED)


def matmul_threaded(a, b, out, bint trans_a, bint trans_b):
    """Ladder step: BLIS with OpenMP threads over row blocks (LOOP 3), whatever the size."""
    _matmul_variant(a, b, out, trans_a, trans_b, MATMUL_THREADED)
