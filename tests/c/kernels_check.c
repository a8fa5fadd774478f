/* kernels_check.c: the cython set's C kernels (kernels/_cython/microkernel.h, vecmath.h,
 * vtanh.h, sweep.h) checked on their own, without Python, for any path and compiler: built by
 * tests/c/check.sh (and tests/test_c_kernels.py) once per path this machine can run, with gcc
 * and clang, and for aarch64 under qemu-user, where no Python of that architecture is at
 * hand. Every kernel is compared with a plain double-precision loop over the same inputs.
 *
 *   cc -O2 -std=c11 -DKERNELS_ISA_AVX2=1 -mavx2 -mfma -Ikernels/_cython tests/c/kernels_check.c -lm
 *
 * Prints one line per failed check and "N passed, M failed"; exits 1 on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microkernel.h"
#include "sweep.h"
#include "vecmath.h"

static int passed, failed;

static void check(int ok, const char *what, const char *detail)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s: %s\n", what, detail);
    }
}

static unsigned long long rng_state = 88172645463325252ull;
static double uniform(void)        /* in [-1, 1): xorshift64, the same numbers everywhere */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / (double)(1ull << 52) - 1.0;
}

/* C (mr x nr, ldc) vs sum_p A(i, p) B(p, j) (+ bias) (relu: 1 ReLU, 2 tanh), within
 * tol * (k + 1). */
#define REFERENCE_CHECK(T, NAME)                                                            \
static int NAME(const T *a, long rsa, long csa, const T *b, long rsb, const T *c, long ldc, \
                long mr, long nr, long k, const T *bias, int relu, double tol)              \
{                                                                                           \
    for (long i = 0; i < mr; i++)                                                           \
        for (long j = 0; j < nr; j++) {                                                     \
            double s = bias ? bias[j] : 0.0;                                                \
            for (long p = 0; p < k; p++)                                                    \
                s += (double)a[i * rsa + p * csa] * (double)b[p * rsb + j];                 \
            if (relu == ACT_RELU && !(s > 0)) s = 0;                                        \
            if (relu == ACT_TANH) s = tanh(s);                                              \
            if (fabs(c[i * ldc + j] - s) > tol * (k + 1)) return 0;                         \
        }                                                                                   \
    return 1;                                                                               \
}
REFERENCE_CHECK(float, matches_f32)
REFERENCE_CHECK(double, matches_f64)

/* The dense kernels of one dtype: full, narrow and 4/2/1-row tiles, packed and strided,
 * with and without bias and ReLU or tanh, k from 0 (an empty sum) to past a vector's lanes. */
#define CHECK_DENSE(T, SUFFIX, MR, NR, TOL, MATCHES)                                        \
static void check_dense_##SUFFIX(void)                                                      \
{                                                                                           \
    enum { K = 37 };                                                                        \
    static T a[MR * K], b[K * NR], c[MR * NR], bias[NR];                                    \
    char what[96];                                                                          \
    for (int i = 0; i < MR * K; i++) a[i] = (T)uniform();                                   \
    for (int i = 0; i < K * NR; i++) b[i] = (T)uniform();                                   \
    for (int i = 0; i < NR; i++) bias[i] = (T)uniform();                                    \
    for (long k = 0; k <= K; k += (k < 3 ? 1 : 17)) {                                       \
        for (int relu = ACT_NONE; relu <= ACT_TANH; relu++) {                               \
            const T *bs = relu ? bias : NULL;                                               \
            /* packed: A micro-panel k x MR (a[p * MR + i]), B micro-panel k x NR */        \
            ukr_##SUFFIX##_packed(k, a, b, c, NR, 0, bs, relu);                             \
            snprintf(what, sizeof what, #SUFFIX " packed %dx%d k=%ld relu=%d", MR, NR, k, relu); \
            check(MATCHES(a, 1, MR, b, NR, c, NR, MR, NR, k, bs, relu, TOL), what, "wrong sums"); \
            /* strided: A row-major (rsa = K), the narrow tile's half of the columns */     \
            ukr_##SUFFIX##_narrow_direct(k, a, K, 1, b, NR, c, NR, 0, bs, relu);            \
            snprintf(what, sizeof what, #SUFFIX " narrow k=%ld relu=%d", k, relu);          \
            check(MATCHES(a, K, 1, b, NR, c, NR, MR, NR / 2, k, bs, relu, TOL), what, "wrong sums"); \
            ukr_##SUFFIX##_r4_direct(k, a, K, 1, b, NR, c, NR, 0, bs, relu);                \
            snprintf(what, sizeof what, #SUFFIX " r4 k=%ld relu=%d", k, relu);              \
            check(MATCHES(a, K, 1, b, NR, c, NR, 4, NR, k, bs, relu, TOL), what, "wrong sums"); \
            ukr_##SUFFIX##_r2_direct(k, a, K, 1, b, NR, c, NR, 0, bs, relu);                \
            snprintf(what, sizeof what, #SUFFIX " r2 k=%ld relu=%d", k, relu);              \
            check(MATCHES(a, K, 1, b, NR, c, NR, 2, NR, k, bs, relu, TOL), what, "wrong sums"); \
            ukr_##SUFFIX##_r1_direct(k, a, K, 1, b, NR, c, NR, 0, bs, relu);                \
            snprintf(what, sizeof what, #SUFFIX " r1 k=%ld relu=%d", k, relu);              \
            check(MATCHES(a, K, 1, b, NR, c, NR, 1, NR, k, bs, relu, TOL), what, "wrong sums"); \
        }                                                                                   \
    }                                                                                       \
    /* accumulate: C += A B on top of the last result */                                    \
    ukr_##SUFFIX##_direct(K, a, K, 1, b, NR, c, NR, 0, NULL, 0);                            \
    ukr_##SUFFIX##_direct(K, a, K, 1, b, NR, c, NR, 1, NULL, 0);                            \
    for (int i = 0; i < MR * NR; i++) c[i] /= 2;                                            \
    check(MATCHES(a, K, 1, b, NR, c, NR, MR, NR, K, NULL, 0, TOL), #SUFFIX " accumulate",   \
          "C + AB != 2 AB");                                                                \
}
CHECK_DENSE(float, float, MR_F32, NR_F32, 1e-5, matches_f32)
CHECK_DENSE(double, double, MR_F64, NR_F64, 1e-13, matches_f64)

/* The zero-skipping tiles: a list leaves out only the steps whose SKIP_MR values of A are
 * all zero, and the tile over the list is the dense tile's sums, bit for bit. */
static void check_skip_f32(void)
{
    enum { K = 67, MR = SKIP_MR_F32, NR = SKIP_NR_F32 };
    static float x[K * MR], xt[MR * K], b[K * NR], skip[MR * NR];
    static int idx[2 * K];
    for (int p = 0; p < K; p++)                      /* x (K samples, MR pixels): a third zero */
        for (int i = 0; i < MR; i++)
            x[p * MR + i] = xt[i * K + p] = (p % 3 == 0) ? 0.0f : (float)uniform();
    for (int i = 0; i < K * NR; i++) b[i] = (float)uniform();
    /* A = x^T (the weight gradient's), A(i, p) = x[p * MR + i] */
    long nk = ukr_float_skip_rows(x, MR, K, idx);
    check(nk == K - (K + 2) / 3, "f32 skip rows", "the list keeps a step that is all zero");
    ukr_float_skip(nk, idx, x, 1, MR, b, NR, skip, NR, NULL, 0);
    int same = matches_f32(x, 1, MR, b, NR, skip, NR, MR, NR, K, NULL, 0, 1e-5);
    check(same, "f32 skip tile (x^T g)", "wrong sums");
    /* A = x (the forward pass's), rows scattered: the columns where no row is nonzero */
    const float *rows[SKIP_MR_MAX];
    for (int i = 0; i < MR; i++) rows[i] = xt + i * K;
    nk = skip_cols_f32(rows, K, idx);
    check(nk == K - (K + 2) / 3, "f32 skip cols", "the list keeps a column that is all zero");
    float *crow[SKIP_MR_MAX];
    for (int i = 0; i < MR; i++) crow[i] = skip + i * NR;
    ukr_float_skip_scattered(nk, idx, rows, b, NR, crow, NULL, 0);
    check(matches_f32(xt, K, 1, b, NR, skip, NR, MR, NR, K, NULL, 0, 1e-5),
          "f32 skip tile (x w, scattered)", "wrong sums");
    /* the sample masks of x^T g, 32 pixels of a sample at a time */
    unsigned masks[K];
    skip_masks_f32(x, MR, K, MR, masks);
    nk = skip_samples_f32(masks, K, (1u << MR) - 1, idx);
    check(nk == K - (K + 2) / 3, "f32 skip masks", "the masks keep a sample that is all zero");
}

/* The sample masks of x^T g over a strip group's 32 columns (or fewer at the end of x): for
 * every group of SKIP_MR_F32 columns, the samples listed are those with a nonzero value in it. */
static void check_skip_masks_f32(void)
{
    enum { K = 45, W = 32 };
    static float x[K * W];
    static int idx[K];
    static unsigned masks[K];
    char what[96];
    for (int p = 0; p < K; p++)
        for (int j = 0; j < W; j++)       /* mostly zero, so that many groups are all zero */
            x[p * W + j] = uniform() > 0.6 ? (float)uniform() : (p % 2 ? 0.0f : -0.0f);
    for (int width = W; width >= 5; width -= 9) {
        skip_masks_f32(x, W, K, width, masks);
        for (int j = 0; j + SKIP_MR_F32 <= width; j += SKIP_MR_F32) {
            long nk = skip_samples_f32(masks, K, ((1u << SKIP_MR_F32) - 1) << j, idx), want = 0;
            int ok = 1;
            for (int p = 0; p < K; p++) {
                int any = 0;
                for (int i = j; i < j + SKIP_MR_F32; i++) any |= x[p * W + i] != 0.0f;
                if (any) ok &= want < nk && idx[want++] == p;
            }
            snprintf(what, sizeof what, "f32 skip masks width %d, group at column %d", width, j);
            check(ok && nk == want, what, "a sample listed or left out wrongly");
        }
    }
}

static void check_transpose(void)
{
    float src[VL_F32 * VL_F32], dst[VL_F32 * VL_F32];
    double srcd[VL_F64 * VL_F64], dstd[VL_F64 * VL_F64];
    for (int i = 0; i < VL_F32 * VL_F32; i++) src[i] = (float)i;
    for (int i = 0; i < VL_F64 * VL_F64; i++) srcd[i] = (double)i;
    transpose_f32(src, VL_F32, dst, VL_F32);
    transpose_f64(srcd, VL_F64, dstd, VL_F64);
    int ok = 1;
    for (int r = 0; r < VL_F32; r++)
        for (int c = 0; c < VL_F32; c++) ok &= dst[c * VL_F32 + r] == src[r * VL_F32 + c];
    check(ok, "transpose f32", "a lane in the wrong place");
    ok = 1;
    for (int r = 0; r < VL_F64; r++)
        for (int c = 0; c < VL_F64; c++) ok &= dstd[c * VL_F64 + r] == srcd[r * VL_F64 + c];
    check(ok, "transpose f64", "a lane in the wrong place");
}

static void check_exp(void)
{
    enum { N = 1000 };
    static float z[N], out[N];
    double worst = 0;
    for (int i = 0; i < N; i++) z[i] = (float)(-100.0 * (i / (double)N));  /* 0 .. -100 */
    double sum = exp_minus_max_f32(z, 0.0f, out, N), want = 0;
    for (int i = 0; i < N; i++) {
        double e = exp((double)z[i]);
        want += e;
        double rel = e > 1e-37 ? fabs(out[i] - e) / e : fabs(out[i] - e);
        if (rel > worst) worst = rel;
    }
    check(worst < 4e-7, "exp_minus_max_f32", "more than a few ulp from exp");
    check(fabs(sum - want) < 1e-5 * want, "exp_minus_max_f32 sum", "wrong sum");
    check(row_max_f32(z, N) == 0.0f && row_max_f32(z + 1, N - 1) == z[1], "row_max_f32", "wrong max");
}

/* vtanh.h: float32 within 2 ulp of tanh in double, float64 within 2 ulp of tanhl (long
 * double: 80 or 128 bits), over |x| from 1e-30 to 30 (both of Cephes' ranges and the
 * saturation to 1), and the special values exactly. */
static void check_tanh(void)
{
    enum { N = 20000 };
    static float xf[N], yf[N];
    static double xd[N], yd[N];
    for (int i = 0; i < N; i++) {
        double mag = i % 2 ? 30.0 * fabs(uniform()) : pow(10.0, -30.0 * fabs(uniform()));
        xd[i] = (i % 4 < 2 ? 1 : -1) * mag;
        xf[i] = (float)xd[i];
    }
    tanh_f32(xf, yf, N);            /* N is no multiple of a vector: the tail goes one by one */
    tanh_f64(xd, yd, N - 3);
    double worst_f = 0, worst_d = 0;
    for (int i = 0; i < N; i++) {
        double want = tanh((double)xf[i]);
        double ulp = nextafterf((float)fabs(want), INFINITY) - (float)fabs(want);
        if (fabs(yf[i] - want) / ulp > worst_f) worst_f = fabs(yf[i] - want) / ulp;
    }
    for (int i = 0; i < N - 3; i++) {
        long double want = tanhl((long double)xd[i]);
        double ulp = nextafter(fabs((double)want), INFINITY) - fabs((double)want);
        if ((double)fabsl(yd[i] - want) / ulp > worst_d) worst_d = (double)fabsl(yd[i] - want) / ulp;
    }
    char detail[64];
    snprintf(detail, sizeof detail, "%.2f ulp from tanh", worst_f);
    check(worst_f <= 2.0, "tanh_f32", detail);
    snprintf(detail, sizeof detail, "%.2f ulp from tanhl", worst_d);
    check(worst_d <= 2.0, "tanh_f64", detail);
    float sf[] = {INFINITY, -INFINITY, 1e4f, -0.0f, 0.0f, NAN};
    double sd[] = {INFINITY, -INFINITY, 1e4, -0.0, 0.0, NAN};
    tanh_f32(sf, sf, 6);
    tanh_f64(sd, sd, 6);
    check(sf[0] == 1 && sf[1] == -1 && sf[2] == 1 && sf[3] == 0 && signbit(sf[3]) && !signbit(sf[4])
          && isnan(sf[5]), "tanh_f32 special values", "inf, -0 or NaN wrong");
    check(sd[0] == 1 && sd[1] == -1 && sd[2] == 1 && sd[3] == 0 && signbit(sd[3]) && !signbit(sd[4])
          && isnan(sd[5]), "tanh_f64 special values", "inf, -0 or NaN wrong");
}

/* sweep.h at a batch of one: the update x_prev^T g_prev, then h = x_next @ w. */
static void check_sweep(void)
{
    enum { IN = 13, OUT = 3 * VL_F32 + 5 };
    static float w[IN * OUT], w0[IN * OUT], xp[IN], g[OUT], xn[IN], h[OUT], dx[IN];
    for (int i = 0; i < IN * OUT; i++) w[i] = w0[i] = (float)uniform();
    for (int i = 0; i < IN; i++) { xp[i] = (float)uniform(); xn[i] = (float)uniform(); }
    for (int j = 0; j < OUT; j++) g[j] = (float)uniform();
    Update u = {0};
    u.lr = 0.1;
    sweep_f32_rows(&u, xp, g, w, NULL, NULL, xn, h, OUT, 0, IN);
    int ok_w = 1, ok_h = 1;
    for (int i = 0; i < IN; i++)
        for (int j = 0; j < OUT; j++)
            ok_w &= fabs(w[i * OUT + j] - (w0[i * OUT + j] - 0.1 * xp[i] * g[j])) < 1e-6;
    for (int j = 0; j < OUT; j++) {
        double s = 0;
        for (int i = 0; i < IN; i++) s += (double)xn[i] * w[i * OUT + j];
        ok_h &= fabs(h[j] - s) < 1e-5;
    }
    check(ok_w, "sweep update (SGD)", "wrong weights");
    check(ok_h, "sweep forward product", "wrong sums");
    sweep_f32_backward(w, g, dx, IN, OUT);
    int ok_dx = 1;
    for (int i = 0; i < IN; i++) {
        double s = 0;
        for (int j = 0; j < OUT; j++) s += (double)w[i * OUT + j] * g[j];
        ok_dx &= fabs(dx[i] - s) < 1e-5;
    }
    check(ok_dx, "sweep backward (g w^T)", "wrong sums");
}

/* vecmath.h's block kernel for rows of few classes (up to SOFTMAX_SMALL_ROWS_MAX, wider than
 * one vector on avx2 and neon): the summed loss and the gradient, against double loops, over
 * more rows than one block. */
static void check_softmax_small_rows(void)
{
    enum { ROWS = SOFTMAX_BLOCK_ROWS + 72 };
    static float z[ROWS * SOFTMAX_SMALL_ROWS_MAX], g[ROWS * SOFTMAX_SMALL_ROWS_MAX];
    static int64_t labels[ROWS];
    const long widths[] = {3, 10, SOFTMAX_SMALL_ROWS_MAX};
    for (int w = 0; w < 3; w++) {
        long classes = widths[w];
        for (long i = 0; i < ROWS * classes; i++) z[i] = (float)(8.0 * uniform());
        for (long i = 0; i < ROWS; i++) labels[i] = (int64_t)((uniform() + 1.0) / 2.0 * classes) % classes;
        double inv_batch = 1.0 / ROWS;
        double loss = softmax_xent_small_rows_f32(z, labels, g, ROWS, classes, inv_batch);
        double want = 0.0, worst = 0.0;
        for (long i = 0; i < ROWS; i++) {
            const float *zi = z + i * classes;
            double m = zi[0], total = 0.0;
            for (long j = 1; j < classes; j++) m = zi[j] > m ? zi[j] : m;
            for (long j = 0; j < classes; j++) total += exp(zi[j] - m);
            want += log(total) - (zi[labels[i]] - m);
            for (long j = 0; j < classes; j++) {
                double gj = (exp(zi[j] - m) / total - (j == labels[i])) * inv_batch;
                double err = fabs(g[i * classes + j] - gj);
                worst = err > worst ? err : worst;
            }
        }
        char detail[96];
        snprintf(detail, sizeof detail, "%ld classes: loss %.7g, want %.7g; gradient off by %.3g", classes,
                 loss, want, worst);
        check(fabs(loss - want) <= 1e-5 * fabs(want) && worst <= 1e-6 * inv_batch * 10, "softmax small rows",
              detail);
    }
}

int main(void)
{
    printf("path %s: %d-byte vectors, float32 tile %d x %d, float64 tile %d x %d\n",
           KERNELS_ISA_NAME, VECTOR_BYTES, MR_F32, NR_F32, MR_F64, NR_F64);
    check_dense_float();
    check_dense_double();
    check_skip_f32();
    check_skip_masks_f32();
    check_transpose();
    check_exp();
    check_tanh();
    check_sweep();
    check_softmax_small_rows();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
