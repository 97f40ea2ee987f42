/* kern.c: see kern.h. */
#include "kern.h"

#include <stddef.h>
#include <string.h>

#ifndef NF_DOUBLE

void nf_gemv_rows_ref(int N, int K, const float *W, int ld, const float *x, float *y, int acc) {
    for (int o = 0; o < N; o++) {
        const float *w = W + (size_t)o * ld;
        float s = 0;
        for (int i = 0; i < K; i++) s += w[i] * x[i];
        y[o] = acc ? y[o] + s : s;
    }
}

size_t nf_packed_floats(int N, int K) { return (size_t)((N + 15) / 16) * 16 * (size_t)K; }

void nf_pack_panels(int N, int K, const float *W, int ldw, float *WT) {
    for (int n0 = 0; n0 < N; n0 += 16) {
        float *P = WT + (size_t)n0 * K;
        for (int k = 0; k < K; k++)
            for (int j = 0; j < 16; j++)
                P[(size_t)k * 16 + j] = n0 + j < N ? W[(size_t)(n0 + j) * ldw + k] : 0.0f;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* The K < 8 tail of row w against x, and a short row's whole sum. */
AVX2 static inline float tail_dot(const float *w, const float *x, int i, int K) {
    float s = 0;
    for (; i < K; i++) s += w[i] * x[i];
    return s;
}

AVX2 static void gemv_avx2(int N, int K, const float *W, int ld, const float *x, float *y,
                           int acc) {
    int o = 0;
    const int K8 = K & ~7;
    for (; o + 4 <= N; o += 4) {
        const float *w0 = W + (size_t)o * ld, *w1 = w0 + ld, *w2 = w1 + ld, *w3 = w2 + ld;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < K8; i += 8) {
            __m256 xv = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xv, a3);
        }
        float s0 = hsum8(a0) + tail_dot(w0, x, K8, K), s1 = hsum8(a1) + tail_dot(w1, x, K8, K);
        float s2 = hsum8(a2) + tail_dot(w2, x, K8, K), s3 = hsum8(a3) + tail_dot(w3, x, K8, K);
        if (acc) {
            s0 += y[o];
            s1 += y[o + 1];
            s2 += y[o + 2];
            s3 += y[o + 3];
        }
        y[o] = s0;
        y[o + 1] = s1;
        y[o + 2] = s2;
        y[o + 3] = s3;
    }
    for (; o < N; o++) {
        const float *w = W + (size_t)o * ld;
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < K8; i += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a);
        float s = hsum8(a) + tail_dot(w, x, K8, K);
        y[o] = acc ? y[o] + s : s;
    }
}

/* nf_gemm_nt_small: C = A W^T (+ C) for N < 8, four rows of A at a time
 * against two rows of W (eight 8-lane accumulators along k), each sum
 * reduced horizontally at the end; an odd last row of W against the four
 * rows of A, and a last 1-3 rows of A, through gemv_avx2. */
AVX2 static void nt_small_avx2(int M, int N, int K, const float *A, int lda, const float *W,
                               int ldw, float *C, int ldc, int acc) {
    const int K8 = K & ~7;
    int m = 0;
    for (; m + 4 <= M; m += 4) {
        const float *a0 = A + (size_t)m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = C + (size_t)m * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        int o = 0;
        for (; o + 2 <= N; o += 2) {
            const float *w0 = W + (size_t)o * ldw, *w1 = w0 + ldw;
            __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00,
                   s21 = s00, s30 = s00, s31 = s00;
            for (int k = 0; k < K8; k += 8) {
                __m256 v0 = _mm256_loadu_ps(w0 + k), v1 = _mm256_loadu_ps(w1 + k);
                __m256 x = _mm256_loadu_ps(a0 + k);
                s00 = _mm256_fmadd_ps(x, v0, s00);
                s01 = _mm256_fmadd_ps(x, v1, s01);
                x = _mm256_loadu_ps(a1 + k);
                s10 = _mm256_fmadd_ps(x, v0, s10);
                s11 = _mm256_fmadd_ps(x, v1, s11);
                x = _mm256_loadu_ps(a2 + k);
                s20 = _mm256_fmadd_ps(x, v0, s20);
                s21 = _mm256_fmadd_ps(x, v1, s21);
                x = _mm256_loadu_ps(a3 + k);
                s30 = _mm256_fmadd_ps(x, v0, s30);
                s31 = _mm256_fmadd_ps(x, v1, s31);
            }
            float r[8] = {hsum8(s00) + tail_dot(w0, a0, K8, K), hsum8(s01) + tail_dot(w1, a0, K8, K),
                          hsum8(s10) + tail_dot(w0, a1, K8, K), hsum8(s11) + tail_dot(w1, a1, K8, K),
                          hsum8(s20) + tail_dot(w0, a2, K8, K), hsum8(s21) + tail_dot(w1, a2, K8, K),
                          hsum8(s30) + tail_dot(w0, a3, K8, K), hsum8(s31) + tail_dot(w1, a3, K8, K)};
            float *cr[4] = {c0, c1, c2, c3};
            for (int i = 0; i < 4; i++) {
                cr[i][o] = acc ? cr[i][o] + r[2 * i] : r[2 * i];
                cr[i][o + 1] = acc ? cr[i][o + 1] + r[2 * i + 1] : r[2 * i + 1];
            }
        }
        for (; o < N; o++) { /* one row of W against the four of A: gemv_avx2's block */
            float r[4];
            gemv_avx2(4, K, a0, lda, W + (size_t)o * ldw, r, 0);
            c0[o] = acc ? c0[o] + r[0] : r[0];
            c1[o] = acc ? c1[o] + r[1] : r[1];
            c2[o] = acc ? c2[o] + r[2] : r[2];
            c3[o] = acc ? c3[o] + r[3] : r[3];
        }
    }
    for (; m < M; m++)
        gemv_avx2(N, K, W, ldw, A + (size_t)m * lda, C + (size_t)m * ldc, acc);
}

/* K = 1 (the first layer of a 2-D coupling's net reads one input): a
 * column, y = x0 W[:,0], vectorised along the rows when it is contiguous */
AVX2 static void gemv_column_avx2(int N, const float *W, int ld, float x0, float *y, int acc) {
    if (ld == 1)
        for (int o = 0; o < N; o++) y[o] = (acc ? y[o] : 0.0f) + W[o] * x0;
    else
        for (int o = 0; o < N; o++) y[o] = (acc ? y[o] : 0.0f) + W[(size_t)o * ld] * x0;
}

/* ---- nf_gemm_bias_act: C = act(A B + bias), 6x16 tiles ----------------------
 * Rows of C in sixes (twelve 8-lane accumulators), columns in sixteens, the
 * last columns under a lane mask; B and C read and written in place
 * (no packing: a 16-column strip of B over K rows is reused from L1 by
 * every six rows of A), the bias and the ReLU applied as each tile is
 * stored.  For the conv networks' GEMMs (a few dozen rows, K up to a few
 * hundred, ~1000 columns): faster than OpenBLAS's sgemm (which packs B and
 * zeroes C first) followed by a bias/ReLU pass over C. */
AVX2 static inline __attribute__((always_inline)) void gba_tile(
    int mr, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
    const float *bias, int relu, int accum, int nr) {
    __m256 acc[6][2];
    __m256i m0 = _mm256_setzero_si256(), m1 = m0;
    if (nr < 16) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
        m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    }
    /* accum: the sums start from C (C + A B, the products added in k order) */
    for (int i = 0; i < 6; i++) {
        const float *c = C + (size_t)i * ldc;
        if (i >= mr || !accum) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        else if (nr == 16) acc[i][0] = _mm256_loadu_ps(c), acc[i][1] = _mm256_loadu_ps(c + 8);
        else acc[i][0] = _mm256_maskload_ps(c, m0), acc[i][1] = _mm256_maskload_ps(c + 8, m1);
    }
    for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb;
        __m256 b0, b1;
        if (nr == 16) {
            b0 = _mm256_loadu_ps(b);
            b1 = _mm256_loadu_ps(b + 8);
        } else {
            b0 = _mm256_maskload_ps(b, m0);
            b1 = _mm256_maskload_ps(b + 8, m1);
        }
        for (int i = 0; i < 6; i++)
            if (i < mr) {
                __m256 a = _mm256_broadcast_ss(A + (size_t)i * lda + k);
                acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
            }
    }
    const __m256 z = _mm256_setzero_ps();
    for (int i = 0; i < 6; i++)
        if (i < mr) {
            __m256 x0 = acc[i][0], x1 = acc[i][1];
            float *c = C + (size_t)i * ldc;
            if (bias) {
                __m256 bb = _mm256_set1_ps(bias[i]);
                x0 = _mm256_add_ps(x0, bb);
                x1 = _mm256_add_ps(x1, bb);
            }
            if (relu) {
                x0 = _mm256_max_ps(x0, z);
                x1 = _mm256_max_ps(x1, z);
            }
            if (nr == 16) {
                _mm256_storeu_ps(c, x0);
                _mm256_storeu_ps(c + 8, x1);
            } else {
                _mm256_maskstore_ps(c, m0, x0);
                _mm256_maskstore_ps(c + 8, m1, x1);
            }
        }
}

/* ldb 0: B is in panels (nf_gemm_packed) */
AVX2 static void gba_rows(int mr, int N, int K, const float *A, int lda, const float *B, int ldb,
                          float *C, int ldc, const float *bias, int relu, int accum) {
#define GBA_CASE(R)                                                                          \
    case R:                                                                                  \
        for (int n0 = 0; n0 < N; n0 += 16)                                                   \
            gba_tile(R, K, A, lda, ldb ? B + n0 : B + (size_t)n0 * K, ldb ? ldb : 16,        \
                     C + n0, ldc, bias, relu, accum, N - n0 < 16 ? N - n0 : 16);             \
        break;
    switch (mr) {
        GBA_CASE(1) GBA_CASE(2) GBA_CASE(3) GBA_CASE(4) GBA_CASE(5) GBA_CASE(6)
    }
#undef GBA_CASE
}

AVX2 static void gemm_bias_act_avx2(int M, int N, int K, const float *A, int lda, const float *B,
                                    int ldb, float *C, int ldc, const float *bias, int relu,
                                    int accum) {
    for (int m0 = 0; m0 < M; m0 += 6)
        gba_rows(M - m0 < 6 ? M - m0 : 6, N, K, A + (size_t)m0 * lda, lda, B, ldb,
                 C + (size_t)m0 * ldc, ldc, bias ? bias + m0 : NULL, relu, accum);
}

/* libgcc fills the CPU model in a constructor that runs before main */
int nf_kern_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

void nf_gemv_rows(int N, int K, const float *W, int ld, const float *x, float *y, int acc) {
    if (!nf_kern_avx2() || (K > 1 && K < 8)) nf_gemv_rows_ref(N, K, W, ld, x, y, acc);
    else if (K == 1) gemv_column_avx2(N, W, ld, x[0], y, acc);
    else gemv_avx2(N, K, W, ld, x, y, acc);
}

int nf_gemm_bias_act(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float *C, int ldc, const float *bias, int relu) {
    if (!nf_kern_avx2() || K < 1) return 0;
    gemm_bias_act_avx2(M, N, K, A, lda, B, ldb, C, ldc, bias, relu, 0);
    return 1;
}

int nf_gemm_nt_small(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                     float *C, int ldc, int acc) {
    if (!nf_kern_avx2() || K < 8 || N < 1 || N >= 8) return 0;
    nt_small_avx2(M, N, K, A, lda, W, ldw, C, ldc, acc);
    return 1;
}

int nf_gemm_packed(int M, int N, int K, const float *A, int lda, const float *WT, float *C,
                   int ldc, int acc) {
    if (!nf_kern_avx2() || K < 1) return 0;
    gemm_bias_act_avx2(M, N, K, A, lda, WT, 0, C, ldc, NULL, 0, acc);
    return 1;
}

/* OpenBLAS names the kernels it runs; these use AVX-512 */
char *openblas_get_corename(void);

int nf_kern_fused_gemm_wins(void) {
    static int wins = -1; /* the same answer whichever thread computes it first */
    if (wins < 0) {
        const char *c = openblas_get_corename();
        int avx512 = 0;
        static const char *const names[] = {"skylakex", "cooperlake", "sapphire"};
        for (int i = 0; c && i < 3; i++)
            if (strcasestr(c, names[i])) avx512 = 1;
        wins = nf_kern_avx2() && !avx512;
    }
    return wins;
}

#else /* not x86-64 */

int nf_kern_avx2(void) { return 0; }
void nf_gemv_rows(int N, int K, const float *W, int ld, const float *x, float *y, int acc) {
    nf_gemv_rows_ref(N, K, W, ld, x, y, acc);
}
int nf_gemm_bias_act(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float *C, int ldc, const float *bias, int relu) {
    (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)C, (void)ldc,
        (void)bias, (void)relu;
    return 0;
}
int nf_gemm_packed(int M, int N, int K, const float *A, int lda, const float *WT, float *C,
                   int ldc, int acc) {
    (void)M, (void)N, (void)K, (void)A, (void)lda, (void)WT, (void)C, (void)ldc, (void)acc;
    return 0;
}
int nf_gemm_nt_small(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                     float *C, int ldc, int acc) {
    (void)M, (void)N, (void)K, (void)A, (void)lda, (void)W, (void)ldw, (void)C, (void)ldc,
        (void)acc;
    return 0;
}
int nf_kern_fused_gemm_wins(void) { return 0; }

#endif
#endif /* NF_DOUBLE */

/* ---- sigmoid parts ------------------------------------------------------------
 * exp(v) for v in [-700, 0] (NaN passes through): v = k ln2 + r, |r| <=
 * ln2/2, exp(r) by its Taylor series to r^11 (relative error < 3e-14) and
 * 2^k built in the exponent bits.  Branch-free, so the loop below
 * vectorises (4 doubles per AVX2 vector: the float -> double conversion,
 * 64-bit integer add and shift are all AVX2). */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline double exp_nonpos(double v) {
    const double shift = 0x1.8p52, inv_ln2 = 0x1.71547652b82fep0;
    const double ln2_hi = 0x1.62e42fefa39efp-1, ln2_lo = 0x1.abc9e3b39803fp-56;
    double kd = v * inv_ln2 + shift;
    uint64_t ki;
    memcpy(&ki, &kd, sizeof ki);
    kd -= shift;
    double r = v - kd * ln2_hi - kd * ln2_lo;
    double p = 1.0 / 39916800;
    p = p * r + 1.0 / 3628800;
    p = p * r + 1.0 / 362880;
    p = p * r + 1.0 / 40320;
    p = p * r + 1.0 / 5040;
    p = p * r + 1.0 / 720;
    p = p * r + 1.0 / 120;
    p = p * r + 1.0 / 24;
    p = p * r + 1.0 / 6;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t sb = (ki + 1023) << 52;
    double scale;
    memcpy(&scale, &sb, sizeof scale);
    return scale * p;
}

NF_VEC static int sigmoid_parts_vec(const nf_real *h, double c, int n, double *s, double *d) {
    int out = 0;
    for (int i = 0; i < n; i++) {
        /* |a| > 700, inf and NaN give garbage here: nf_sigmoid_parts
         * redoes them */
        double a = (double)h[i] + c, e = exp_nonpos(-fabs(a)), q = 1 + e;
        /* the numerator: 1 for a >= 0, e below (a bit select: GCC turns
         * a conditional here into a branch, which stops the vectoriser) */
        uint64_t ue, one, m = (uint64_t)0 - (uint64_t)(a >= 0);
        const double d1 = 1;
        memcpy(&ue, &e, sizeof ue);
        memcpy(&one, &d1, sizeof one);
        ue = (ue & ~m) | (one & m);
        double num;
        memcpy(&num, &ue, sizeof num);
        s[i] = num / q;
        d[i] = q;
        out |= !(fabs(a) <= 700);
    }
    return out;
}

void nf_sigmoid_parts(const nf_real *h, double c, int n, double *s, double *d) {
    if (!sigmoid_parts_vec(h, c, n, s, d)) return;
    /* beyond the polynomial's range (and inf, NaN): libm, as before */
    for (int i = 0; i < n; i++) {
        double a = (double)h[i] + c;
        if (fabs(a) <= 700) continue;
        double e = exp(-fabs(a));
        s[i] = a >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        d[i] = 1.0 + e;
    }
}

#ifndef NF_DOUBLE
/* exp(v) for v in [-87, 0] in float (exp_nonpos's method: the shift puts
 * round(v / ln 2) in the low bits; ln 2 split so k ln2_hi is exact) */
static inline float expf_nonpos(float v) {
    const float shift = 0x1.8p23f, inv_ln2 = 0x1.715476p0f;
    const float ln2_hi = 0x1.62e4p-1f, ln2_lo = 0x1.7f7d1cp-20f;
    float kf = v * inv_ln2 + shift;
    uint32_t ki;
    memcpy(&ki, &kf, sizeof ki);
    kf -= shift;
    float r = v - kf * ln2_hi - kf * ln2_lo;
    float q = 1.0f / 5040;
    q = q * r + 1.0f / 720;
    q = q * r + 1.0f / 120;
    q = q * r + 1.0f / 24;
    q = q * r + 1.0f / 6;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    uint32_t sb = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    return scale * q;
}

/* m ? x : y for a mask m of all ones or zeros (a bit select, which the
 * vectoriser keeps; a conditional becomes a branch) */
static inline float fsel(uint32_t m, float x, float y) {
    uint32_t ux, uy;
    memcpy(&ux, &x, sizeof ux);
    memcpy(&uy, &y, sizeof uy);
    ux = (ux & m) | (uy & ~m);
    float r;
    memcpy(&r, &ux, sizeof r);
    return r;
}

NF_VEC static void cs_gate(int H, float t, const float *restrict a, const float *restrict c,
                           const float *restrict b, const float *restrict d, float *restrict y,
                           float *restrict g, float *restrict p) {
    for (int j = 0; j < H; j++) {
        float za = a[j] * t + c[j], na = -fabsf(za);
        float e = expf_nonpos(fsel((uint32_t)0 - (uint32_t)(na > -87.0f), na, -87.0f));
        float gj = fsel((uint32_t)0 - (uint32_t)(za >= 0), 1.0f, e) / (1.0f + e);
        float u = y[j] + b[j];
        y[j] = u;
        g[j] = gj;
        p[j] = u * gj + d[j] * t;
    }
}

/* tanh(x) = (1 - e)/(1 + e), e = exp(-2|x|), the sign put back, and the
 * odd series to x^9 below |x| = 0.2 */
static inline float tanh_vec(float x) {
    float ax = fabsf(x), m2 = -2.0f * ax;
    float e = expf_nonpos(fsel((uint32_t)0 - (uint32_t)(m2 > -87.0f), m2, -87.0f));
    float th = (1.0f - e) / (1.0f + e);
    uint32_t ux, sign;
    memcpy(&ux, &th, sizeof ux);
    memcpy(&sign, &x, sizeof sign);
    ux |= sign & 0x80000000u;
    memcpy(&th, &ux, sizeof th);
    float x2 = x * x;
    float ser = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 +
                                                                   x2 * (62.0f / 2835)))));
    return fsel((uint32_t)0 - (uint32_t)(ax < 0.2f), ser, th);
}

NF_VEC static void cs_tanh(int H, const float *restrict g, const float *restrict p,
                           float *restrict o, float *restrict s) {
    for (int j = 0; j < H; j++) {
        float h = tanh_vec(p[j]);
        o[j] = h;
        s[j] = (1.0f - h * h) * g[j];
    }
}

void nf_cs_row(int H, float t, const float *a, const float *c, const float *b, const float *d,
               float *y, float *g, float *p, float *o, float *s, int act_tanh) {
    cs_gate(H, t, a, c, b, d, y, g, p);
    if (act_tanh) {
        cs_tanh(H, g, p, o, s);
    } else {
        memcpy(o, p, (size_t)H * sizeof *o);
        memcpy(s, g, (size_t)H * sizeof *s);
    }
}

/* ---- MAF's affine step (nf_maf_row) ----------------------------------------- */
/* s = S tanh(h / S) lies in [-S, S] (S = 3): expf_nonpos's reduction holds
 * for positive arguments that far from overflow too */
NF_VEC static float maf_keep(int D, float S, const float *restrict o, const float *restrict u,
                             float *restrict y, float *restrict e, float *restrict dsdh) {
    float acc = 0;
    for (int i = 0; i < D; i++) {
        float t = tanh_vec(o[2 * i] / S), s = S * t, es = expf_nonpos(s);
        dsdh[i] = 1.0f - t * t;
        e[i] = es;
        y[i] = u[i] * es + o[2 * i + 1];
        acc += s;
    }
    return acc;
}

NF_VEC static float maf_only(int D, float S, const float *restrict o, const float *restrict u,
                             float *restrict y) {
    float acc = 0;
    for (int i = 0; i < D; i++) {
        float s = S * tanh_vec(o[2 * i] / S);
        y[i] = u[i] * expf_nonpos(s) + o[2 * i + 1];
        acc += s;
    }
    return acc;
}

float nf_maf_row(int D, float S, const float *o, const float *u, float *y, float *e, float *dsdh) {
    return e ? maf_keep(D, S, o, u, y, e, dsdh) : maf_only(D, S, o, u, y);
}
#endif
