/* spline.c: rational-quadratic spline transforms (Durkan et al. 2019, "Neural
 * Spline Flows") as a coupling layer ("spline_coupling") and as a MADE
 * autoregressive layer ("spline_ar").
 *
 * One scalar spline g maps [-B,B] onto [-B,B] through K bins; outside that
 * interval it is the identity (slope 1 at both ends keeps g' continuous).
 * Per transformed dimension the conditioner emits P = 3K-1 numbers
 *   theta = [uw (K), uh (K), ud (K-1)]
 *   bin widths  w_k = 2B (min_w + (1 - K min_w) softmax(uw)_k), heights alike,
 *   derivatives d_0 = d_K = 1, d_k = min_d + softplus(ud_{k-1} + c),
 *   c = log(exp(1 - min_d) - 1),
 * so theta = 0 gives equal bins and d_k = 1: g is exactly the identity, which
 * a freshly initialised (zero final layer) conditioner produces.
 *
 * Density direction (inverse, x -> z) evaluates g in closed form; sampling
 * (forward, z -> x) solves g's quadratic with the cancellation-free root.
 * All spline arithmetic is done in double and rounded once at the end.
 * Building a spline's knots takes 3K-1 exps and K-1 log1ps; on AVX2 CPUs
 * they go four at a time through glibc's vector maths (libmvec, linked as
 * -lmvec; nf_rqs_vector), within a few ulp of libm's scalar calls.
 * The layers evaluate and solve their splines through nf_rqs_run: on AVX2
 * CPUs four splines side by side, one per lane (bin found by counting knots,
 * only the bin's two end derivatives computed, one log for log g'), within
 * a few ulp of building each spline's knots and evaluating it alone, which
 * other CPUs do.
 * The scalar spline (nf_rqs_*) is declared in rqs.h for the image coupling
 * (conv_coupling.c), which applies it per pixel.
 */
#include "alloc.h"
#include "nf_internal.h"
#include "made_inc.h"
#include "rqs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double softplus(double v) { return v > 0 ? v + log1p(exp(-v)) : log1p(exp(v)); }
static double sigmoid(double v) {
    if (v >= 0) return 1.0 / (1.0 + exp(-v));
    double e = exp(v);
    return e / (1.0 + e);
}

void nf_rqs_cfg_set(nf_rqs_cfg *cf, int K, double B, double min_w, double min_h, double min_d) {
    cf->K = K;
    cf->B = B;
    cf->min_w = min_w;
    cf->min_h = min_h;
    cf->min_d = min_d;
    cf->dconst = log(expm1(1.0 - min_d));
}

/* sm (K) = softmax(u); knots (K+1) from -B to B with bin sizes
 * 2B (mn + (1 - K mn) sm_k); the end knots are pinned exactly. */
static void rqs_cumknots(const nf_real *u, int K, double B, double mn, double *sm,
                         double *knots) {
    double mx = u[0], sum = 0;
    for (int k = 1; k < K; k++) mx = u[k] > mx ? u[k] : mx;
    for (int k = 0; k < K; k++) sum += sm[k] = exp((double)u[k] - mx);
    knots[0] = -B;
    for (int k = 0; k < K; k++) {
        sm[k] /= sum;
        knots[k + 1] = knots[k] + 2.0 * B * (mn + (1.0 - K * mn) * sm[k]);
    }
    knots[K] = B;
}

#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__)
/* The knots' exps and softpluses, four doubles at a time through glibc's
 * vector maths (libmvec, AVX2 variants; within 4 ulp of libm), on CPUs
 * with AVX2.  A spline's 3K-1 exps and K-1 log1ps were a quarter of a W3
 * log_prob (30 scalar libm calls per transformed entry). */
#include <immintrin.h>
__attribute__((target("avx2"))) __m256d _ZGVdN4v_exp(__m256d);
__attribute__((target("avx2"))) __m256d _ZGVdN4v_log1p(__m256d);

/* e[k] = exp(u[k] - mx), k < K (u read as nf_real; e has room for K + 3) */
__attribute__((target("avx2"))) static void exp_shift4(const nf_real *u, int K, double mx, double *e) {
    double t[NF_RQS_KMAX + 4];
    int k = 0;
    for (; k < K; k++) t[k] = (double)u[k] - mx;
    for (; k % 4; k++) t[k] = -1e3; /* padding: exp gives 0 */
    for (int j = 0; j < k; j += 4) _mm256_storeu_pd(e + j, _ZGVdN4v_exp(_mm256_loadu_pd(t + j)));
}

/* sm, knots as rqs_cumknots, the exps from exp_shift4 */
__attribute__((target("avx2"))) static void rqs_cumknots4(const nf_real *u, int K, double B, double mn,
                                                         double *sm, double *knots) {
    double e[NF_RQS_KMAX + 4], mx = u[0], sum = 0;
    for (int k = 1; k < K; k++) mx = u[k] > mx ? u[k] : mx;
    exp_shift4(u, K, mx, e);
    for (int k = 0; k < K; k++) sum += e[k];
    /* one division, then products (within an ulp of the quotients) */
    double inv = 1.0 / sum, a = 2.0 * B * mn, b = 2.0 * B * (1.0 - K * mn);
    for (int k = 0; k < K; k++) sm[k] = e[k] * inv;
    knots[0] = -B;
    for (int k = 0; k < K; k++) knots[k + 1] = knots[k] + (a + b * sm[k]);
    knots[K] = B;
}

/* ds[1..K-1] = min_d + softplus(ud + c): max(v, 0) + log1p(exp(-|v|)) */
__attribute__((target("avx2"))) static void rqs_derivs4(const nf_rqs_cfg *cf, const nf_real *ud, double *ds) {
    int K = cf->K, n = K - 1, k = 0;
    double v[NF_RQS_KMAX + 4];
    for (; k < n; k++) v[k] = (double)ud[k] + cf->dconst;
    for (; k % 4; k++) v[k] = 0;
    const __m256d sign = _mm256_set1_pd(-0.0), zero = _mm256_setzero_pd(), md = _mm256_set1_pd(cf->min_d);
    for (int j = 0; j < k; j += 4) {
        __m256d x = _mm256_loadu_pd(v + j);
        __m256d a = _mm256_or_pd(x, sign); /* -|x| */
        __m256d sp = _mm256_add_pd(_mm256_max_pd(x, zero), _ZGVdN4v_log1p(_ZGVdN4v_exp(a)));
        _mm256_storeu_pd(v + j, _mm256_add_pd(md, sp));
    }
    memcpy(ds + 1, v, (size_t)n * sizeof *ds);
}

__attribute__((target("avx2"))) __m256d _ZGVdN4v_log(__m256d);

/* Four splines side by side, one per lane, as nf_rqs_build followed by
 * nf_rqs_eval / nf_rqs_solve / nf_rqs_backward compute them, with these
 * differences:
 *   - the bin is found by counting the knots at or below the input and its
 *     ends picked with blends, not by a binary search;
 *   - only the two derivatives at the bin's ends are computed (2 softpluses
 *     a spline instead of K-1);
 *   - log g' is one log of s^2 N / den^2 instead of three logs (within a few
 *     ulp: every factor lies in [1e-8, 1e8] for the allowed minimum widths).
 * The knots use the same operations in the same order as rqs_cumknots4 and
 * rqs_derivs4 (no FMA: the core is built -std=c11, which does not contract),
 * so they are identical; the results differ from the one-spline path only
 * by the logs.  Lane l's parameter q is th[off[l] + q*qs]. */
typedef struct rqs4 {
    __m256d T[3 * NF_RQS_KMAX];                   /* parameters */
    __m256d xs[NF_RQS_KMAX + 1], ys[NF_RQS_KMAX + 1]; /* knots */
    __m256d smw[NF_RQS_KMAX], smh[NF_RQS_KMAX];     /* softmaxes */
    __m256d in, xc;           /* x inside [-B, B]; x there, else 0 */
    __m256d xk, xk1, yk, yk1; /* the bin's ends */
    __m256d kf;               /* the bin, as a double */
    __m256d first, last;      /* bin 0, bin K-1 */
    __m256d d0, d1, e0, e1;   /* end derivatives; exp(-|ud + c|) of each */
    __m256d v0, v1;           /* ud + c at the ends (sigmoid's sign) */
} rqs4;

__attribute__((target("avx2"), always_inline)) static inline void
rqs_front4(const nf_rqs_cfg *cf, const nf_real *th, const int *off, size_t qs, __m256d x, int dir, rqs4 *o) {
    const int K = cf->K, P = 3 * K - 1;
    const double B = cf->B;
    int q = 0;
#ifndef NF_DOUBLE
    if (qs == 1) {
        /* each lane's parameters are contiguous: 4x4 blocks transposed */
        const float *r0 = th + off[0], *r1 = th + off[1], *r2 = th + off[2], *r3 = th + off[3];
        for (; q + 4 <= P; q += 4) {
            __m128 a = _mm_loadu_ps(r0 + q), b = _mm_loadu_ps(r1 + q);
            __m128 c = _mm_loadu_ps(r2 + q), d = _mm_loadu_ps(r3 + q);
            _MM_TRANSPOSE4_PS(a, b, c, d);
            o->T[q] = _mm256_cvtps_pd(a), o->T[q + 1] = _mm256_cvtps_pd(b);
            o->T[q + 2] = _mm256_cvtps_pd(c), o->T[q + 3] = _mm256_cvtps_pd(d);
        }
        for (; q < P; q++) o->T[q] = _mm256_setr_pd(r0[q], r1[q], r2[q], r3[q]);
    }
#endif
    __m128i idx = _mm_loadu_si128((const __m128i *)off);
    for (; q < P; q++)
#ifdef NF_DOUBLE
        o->T[q] = _mm256_i32gather_pd(th + q * qs, idx, 8);
#else
        o->T[q] = _mm256_cvtps_pd(_mm_i32gather_ps(th + q * qs, idx, 4));
#endif
    /* knots: softmax of T[0..K-1] (widths) and T[K..2K-1] (heights) */
    for (int side = 0; side < 2; side++) {
        const __m256d *u = o->T + side * K;
        __m256d *kn = side ? o->ys : o->xs, *sm = side ? o->smh : o->smw, e[NF_RQS_KMAX];
        double mn = side ? cf->min_h : cf->min_w;
        __m256d mx = u[0], sum = _mm256_setzero_pd();
        for (int k = 1; k < K; k++) mx = _mm256_max_pd(u[k], mx);
        for (int k = 0; k < K; k++) sum = _mm256_add_pd(sum, e[k] = _ZGVdN4v_exp(_mm256_sub_pd(u[k], mx)));
        __m256d inv = _mm256_div_pd(_mm256_set1_pd(1.0), sum);
        __m256d a = _mm256_set1_pd(2.0 * B * mn), b = _mm256_set1_pd(2.0 * B * (1.0 - K * mn));
        __m256d run = kn[0] = _mm256_set1_pd(-B); /* the sum kept in a register */
        for (int k = 0; k < K; k++)
            kn[k + 1] = run = _mm256_add_pd(run, _mm256_add_pd(a, _mm256_mul_pd(b, sm[k] = _mm256_mul_pd(e[k], inv))));
        kn[K] = _mm256_set1_pd(B);
    }
    /* inside [-B, B] (NaN is not); outside lanes compute at 0 */
    o->in = _mm256_and_pd(_mm256_cmp_pd(x, _mm256_set1_pd(-B), _CMP_GE_OQ),
                          _mm256_cmp_pd(x, _mm256_set1_pd(B), _CMP_LE_OQ));
    __m256d xc = o->xc = _mm256_and_pd(x, o->in);
    const __m256d *by = dir ? o->ys : o->xs, one = _mm256_set1_pd(1.0);
    /* bin k = #{j in 1..K-1 : v >= knot_j}: blend in the ends as j passes */
    __m256d xk = o->xs[0], xk1 = o->xs[1], yk = o->ys[0], yk1 = o->ys[1], kf = _mm256_setzero_pd();
    __m256d u0 = o->T[2 * K], u1 = o->T[2 * K]; /* ud_{k-1}, ud_k (meaningful where interior) */
    __m256d first = _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), last = _mm256_setzero_pd();
    for (int j = 1; j < K; j++) {
        __m256d m = _mm256_cmp_pd(xc, by[j], _CMP_GE_OQ);
        xk = _mm256_blendv_pd(xk, o->xs[j], m);
        xk1 = _mm256_blendv_pd(xk1, o->xs[j + 1], m);
        yk = _mm256_blendv_pd(yk, o->ys[j], m);
        yk1 = _mm256_blendv_pd(yk1, o->ys[j + 1], m);
        u0 = _mm256_blendv_pd(u0, o->T[2 * K + j - 1], m);
        if (j + 1 < K) u1 = _mm256_blendv_pd(u1, o->T[2 * K + j], m);
        kf = _mm256_add_pd(kf, _mm256_and_pd(m, one));
        if (j == 1) first = _mm256_andnot_pd(m, first);
        if (j == K - 1) last = m;
    }
    o->xk = xk, o->xk1 = xk1, o->yk = yk, o->yk1 = yk1, o->kf = kf, o->first = first, o->last = last;
    /* d = min_d + softplus(v), v = ud + c, as rqs_derivs4; 1 at the outer knots */
    const __m256d zero = _mm256_setzero_pd(), sign = _mm256_set1_pd(-0.0);
    const __m256d dc = _mm256_set1_pd(cf->dconst), md = _mm256_set1_pd(cf->min_d);
    __m256d v0 = o->v0 = _mm256_add_pd(u0, dc), v1 = o->v1 = _mm256_add_pd(u1, dc);
    __m256d e0 = o->e0 = _ZGVdN4v_exp(_mm256_or_pd(v0, sign)), e1 = o->e1 = _ZGVdN4v_exp(_mm256_or_pd(v1, sign));
    __m256d d0 = _mm256_add_pd(md, _mm256_add_pd(_mm256_max_pd(v0, zero), _ZGVdN4v_log1p(e0)));
    __m256d d1 = _mm256_add_pd(md, _mm256_add_pd(_mm256_max_pd(v1, zero), _ZGVdN4v_log1p(e1)));
    o->d0 = _mm256_blendv_pd(d0, one, first);
    o->d1 = _mm256_blendv_pd(d1, one, last);
}

/* v clamped to [lo, hi], NaN kept (as clamp01 and clampr) */
__attribute__((target("avx2"), always_inline)) static inline __m256d clamp4(__m256d v, __m256d lo, __m256d hi) {
    v = _mm256_blendv_pd(v, lo, _mm256_cmp_pd(v, lo, _CMP_LT_OQ));
    return _mm256_blendv_pd(v, hi, _mm256_cmp_pd(v, hi, _CMP_GT_OQ));
}

/* nf_rqs_eval (dir 0) or nf_rqs_solve (dir 1) of four splines: y, ld */
__attribute__((target("avx2"))) static void rqs_run4(const nf_rqs_cfg *cf, const nf_real *th,
                                                    const int *off, size_t qs, __m256d x,
                                                    double *yo, double *ldo, int dir) {
    rqs4 o;
    rqs_front4(cf, th, off, qs, x, dir, &o);
    const __m256d one = _mm256_set1_pd(1.0), zero = _mm256_setzero_pd(), two = _mm256_set1_pd(2.0);
    __m256d d0 = o.d0, d1 = o.d1, xc = o.xc;
    __m256d w = _mm256_sub_pd(o.xk1, o.xk), h = _mm256_sub_pd(o.yk1, o.yk), s = _mm256_div_pd(h, w);
    __m256d delta = _mm256_sub_pd(_mm256_add_pd(d0, d1), _mm256_mul_pd(two, s));
    __m256d xi, out;
    if (!dir) {
        xi = _mm256_div_pd(_mm256_sub_pd(xc, o.xk), w);
    } else {
        /* a xi^2 + b xi + c = 0, xi = 2c / (-b - sqrt(b^2 - 4ac)) */
        __m256d dy = _mm256_sub_pd(xc, o.yk);
        __m256d a = _mm256_add_pd(_mm256_mul_pd(h, _mm256_sub_pd(s, d0)), _mm256_mul_pd(dy, delta));
        __m256d b = _mm256_sub_pd(_mm256_mul_pd(h, d0), _mm256_mul_pd(dy, delta));
        __m256d c = _mm256_mul_pd(_mm256_sub_pd(zero, s), dy);
        __m256d disc = _mm256_sub_pd(_mm256_mul_pd(b, b), _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(4.0), a), c));
        disc = _mm256_blendv_pd(zero, disc, _mm256_cmp_pd(disc, zero, _CMP_GT_OQ));
        __m256d q = _mm256_sub_pd(_mm256_sub_pd(zero, b), _mm256_sqrt_pd(disc));
        __m256d nz = _mm256_cmp_pd(q, zero, _CMP_NEQ_UQ);
        xi = _mm256_and_pd(_mm256_div_pd(_mm256_mul_pd(two, c), q), nz);
    }
    xi = clamp4(xi, zero, one);
    __m256d om = _mm256_sub_pd(one, xi), t = _mm256_mul_pd(xi, om), xx = _mm256_mul_pd(xi, xi);
    __m256d den = _mm256_add_pd(s, _mm256_mul_pd(delta, t));
    __m256d n2 = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(d1, xx), _mm256_mul_pd(_mm256_mul_pd(two, s), t)),
                               _mm256_mul_pd(d0, _mm256_mul_pd(om, om)));
    __m256d lg = _ZGVdN4v_log(_mm256_div_pd(_mm256_mul_pd(_mm256_mul_pd(s, s), n2), _mm256_mul_pd(den, den)));
    if (!dir) {
        out = _mm256_add_pd(o.yk, _mm256_div_pd(_mm256_mul_pd(h, _mm256_add_pd(_mm256_mul_pd(s, xx),
                                                                                _mm256_mul_pd(d0, t))), den));
        out = clamp4(out, o.yk, o.yk1);
    } else {
        out = clamp4(_mm256_add_pd(o.xk, _mm256_mul_pd(xi, w)), o.xk, o.xk1);
        lg = _mm256_sub_pd(zero, lg);
    }
    _mm256_storeu_pd(yo, _mm256_blendv_pd(x, out, o.in));
    _mm256_storeu_pd(ldo, _mm256_and_pd(lg, o.in));
}

/* nf_rqs_backward of four splines: gth (P x 4, parameter-major) and gx */
__attribute__((target("avx2"))) static void rqs_back4(const nf_rqs_cfg *cf, const nf_real *th, const int *off,
                                                     size_t qs, __m256d x, __m256d gz, __m256d gl,
                                                     __m256d *gth, double *gxo) {
    const int K = cf->K;
    rqs4 o;
    rqs_front4(cf, th, off, qs, x, 0, &o);
    const __m256d one = _mm256_set1_pd(1.0), zero = _mm256_setzero_pd(), two = _mm256_set1_pd(2.0);
    __m256d d0 = o.d0, d1 = o.d1;
    __m256d w = _mm256_sub_pd(o.xk1, o.xk), h = _mm256_sub_pd(o.yk1, o.yk), s = _mm256_div_pd(h, w);
    __m256d xi = clamp4(_mm256_div_pd(_mm256_sub_pd(o.xc, o.xk), w), zero, one);
    __m256d om = _mm256_sub_pd(one, xi), t = _mm256_mul_pd(xi, om), xx = _mm256_mul_pd(xi, xi);
    __m256d delta = _mm256_sub_pd(_mm256_add_pd(d0, d1), _mm256_mul_pd(two, s));
    __m256d den = _mm256_add_pd(s, _mm256_mul_pd(delta, t));
    __m256d num = _mm256_add_pd(_mm256_mul_pd(s, xx), _mm256_mul_pd(d0, t));
    __m256d n2 = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(d1, xx), _mm256_mul_pd(_mm256_mul_pd(two, s), t)),
                               _mm256_mul_pd(d0, _mm256_mul_pd(om, om)));
    __m256d den2 = _mm256_mul_pd(den, den);
    __m256d gp = _mm256_div_pd(_mm256_mul_pd(_mm256_mul_pd(s, s), n2), den2);
    __m256d omt2 = _mm256_sub_pd(one, _mm256_mul_pd(two, t)); /* 1 - 2t */
    __m256d omx2 = _mm256_sub_pd(one, _mm256_mul_pd(two, xi)); /* 1 - 2 xi */
    __m256d t2den = _mm256_div_pd(_mm256_mul_pd(two, t), den);
    __m256d dz_ds = _mm256_div_pd(_mm256_mul_pd(h, _mm256_sub_pd(_mm256_mul_pd(xx, den), _mm256_mul_pd(num, omt2))), den2);
    __m256d dz_dd0 = _mm256_div_pd(_mm256_mul_pd(_mm256_mul_pd(h, t), _mm256_sub_pd(den, num)), den2);
    __m256d dz_dd1 = _mm256_div_pd(_mm256_mul_pd(_mm256_sub_pd(zero, h), _mm256_mul_pd(num, t)), den2);
    __m256d dz_dxi = _mm256_mul_pd(gp, w);
    __m256d dl_ds = _mm256_sub_pd(_mm256_add_pd(_mm256_div_pd(two, s), _mm256_div_pd(_mm256_mul_pd(two, t), n2)),
                                  _mm256_div_pd(_mm256_mul_pd(two, omt2), den));
    __m256d dl_dd0 = _mm256_sub_pd(_mm256_div_pd(_mm256_mul_pd(om, om), n2), t2den);
    __m256d dl_dd1 = _mm256_sub_pd(_mm256_div_pd(xx, n2), t2den);
    __m256d dl_dxi = _mm256_sub_pd(
        _mm256_div_pd(_mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_mul_pd(two, d1), xi),
                                                  _mm256_mul_pd(_mm256_mul_pd(two, s), omx2)),
                                    _mm256_mul_pd(_mm256_mul_pd(two, d0), om)),
                      n2),
        _mm256_div_pd(_mm256_mul_pd(_mm256_mul_pd(two, delta), omx2), den));
    __m256d gs = _mm256_add_pd(_mm256_mul_pd(gz, dz_ds), _mm256_mul_pd(gl, dl_ds));
    __m256d gxi = _mm256_add_pd(_mm256_mul_pd(gz, dz_dxi), _mm256_mul_pd(gl, dl_dxi));
    __m256d gd0 = _mm256_add_pd(_mm256_mul_pd(gz, dz_dd0), _mm256_mul_pd(gl, dl_dd0));
    __m256d gd1 = _mm256_add_pd(_mm256_mul_pd(gz, dz_dd1), _mm256_mul_pd(gl, dl_dd1));
    __m256d gh = _mm256_add_pd(_mm256_div_pd(_mm256_mul_pd(gz, num), den), _mm256_div_pd(gs, w));
    __m256d gw = _mm256_div_pd(_mm256_sub_pd(zero, _mm256_add_pd(_mm256_mul_pd(gs, s), _mm256_mul_pd(gxi, xi))), w);
    __m256d gx = _mm256_div_pd(gxi, w);
    /* knot gradients; knots 0 and K are constants */
    __m256d gxk = _mm256_andnot_pd(o.first, _mm256_sub_pd(_mm256_sub_pd(zero, gx), gw));
    __m256d gxk1 = _mm256_andnot_pd(o.last, gw);
    __m256d gyk = _mm256_andnot_pd(o.first, _mm256_sub_pd(gz, gh));
    __m256d gyk1 = _mm256_andnot_pd(o.last, gh);
    /* knot j's bin sizes: d knot_j / d sm_i = 2B(1-K mn) [i<j]; softmax back */
    __m256d cw = _mm256_set1_pd(2 * cf->B * (1 - K * cf->min_w)), ch = _mm256_set1_pd(2 * cf->B * (1 - K * cf->min_h));
    __m256d dotw = zero, doth = zero, gwv[NF_RQS_KMAX], ghv[NF_RQS_KMAX];
    for (int i = 0; i < K; i++) {
        __m256d iv = _mm256_set1_pd(i);
        __m256d lt = _mm256_cmp_pd(iv, o.kf, _CMP_LT_OQ), le = _mm256_cmp_pd(iv, o.kf, _CMP_LE_OQ);
        gwv[i] = _mm256_mul_pd(cw, _mm256_add_pd(_mm256_and_pd(lt, gxk), _mm256_and_pd(le, gxk1)));
        ghv[i] = _mm256_mul_pd(ch, _mm256_add_pd(_mm256_and_pd(lt, gyk), _mm256_and_pd(le, gyk1)));
        dotw = _mm256_add_pd(dotw, _mm256_mul_pd(o.smw[i], gwv[i]));
        doth = _mm256_add_pd(doth, _mm256_mul_pd(o.smh[i], ghv[i]));
    }
    /* sigmoid(v) from e = exp(-|v|): 1/(1+e) for v >= 0, e/(1+e) below */
    __m256d s0 = _mm256_div_pd(_mm256_blendv_pd(one, o.e0, _mm256_cmp_pd(o.v0, zero, _CMP_LT_OQ)),
                               _mm256_add_pd(one, o.e0));
    __m256d s1 = _mm256_div_pd(_mm256_blendv_pd(one, o.e1, _mm256_cmp_pd(o.v1, zero, _CMP_LT_OQ)),
                               _mm256_add_pd(one, o.e1));
    __m256d g0 = _mm256_andnot_pd(o.first, _mm256_mul_pd(gd0, s0)), g1 = _mm256_andnot_pd(o.last, _mm256_mul_pd(gd1, s1));
    for (int i = 0; i < K; i++) {
        gth[i] = _mm256_and_pd(o.in, _mm256_mul_pd(o.smw[i], _mm256_sub_pd(gwv[i], dotw)));
        gth[K + i] = _mm256_and_pd(o.in, _mm256_mul_pd(o.smh[i], _mm256_sub_pd(ghv[i], doth)));
    }
    /* interior derivative j = q+1 sits at 2K + q: d0 is knot k (q = k-1), d1 knot k+1 (q = k) */
    for (int q = 0; q < K - 1; q++) {
        __m256d qv = _mm256_set1_pd(q);
        __m256d at0 = _mm256_cmp_pd(_mm256_add_pd(qv, one), o.kf, _CMP_EQ_OQ), at1 = _mm256_cmp_pd(qv, o.kf, _CMP_EQ_OQ);
        gth[2 * K + q] = _mm256_and_pd(o.in, _mm256_add_pd(_mm256_and_pd(at0, g0), _mm256_and_pd(at1, g1)));
    }
    _mm256_storeu_pd(gxo, _mm256_blendv_pd(gz, gx, o.in));
}

/* The lanes of a group of four starting with `left` splines to go: lane i
 * takes spline l[i] of the group, a short last group repeating its last
 * spline in the spare lanes; returns how many lanes are real. */
static int rqs_lanes(int left, int l[4]) {
    int r = left < 4 ? left : 4;
    for (int i = 0; i < 4; i++) l[i] = i < r ? i : r - 1;
    return r;
}

/* nf_rqs_run four splines at a time; a short last group repeats its last
 * spline in the spare lanes */
__attribute__((target("avx2"))) static void rqs_run_avx2(const nf_rqs_cfg *cf, const nf_real *th,
                                                        size_t es, size_t qs, int n, const double *x,
                                                        double *y, double *ld, int dir) {
    for (int e = 0; e < n; e += 4) {
        int l[4], r = rqs_lanes(n - e, l);
        const int off[4] = {0, (int)(l[1] * es), (int)(l[2] * es), (int)(l[3] * es)};
        __m256d xv = _mm256_setr_pd(x[e], x[e + l[1]], x[e + l[2]], x[e + l[3]]);
        double yv[4], lv[4];
        rqs_run4(cf, th + e * es, off, qs, xv, yv, lv, dir);
        for (int i = 0; i < r; i++) y[e + i] = yv[i], ld[e + i] = lv[i];
    }
}

/* nf_rqs_run_backward four splines at a time, spare lanes as above */
__attribute__((target("avx2"))) static void rqs_back_avx2(const nf_rqs_cfg *cf, const nf_real *th,
                                                         size_t es, size_t qs, int n, const double *x,
                                                         const double *gz, const double *gl,
                                                         nf_real *gth, double *gx) {
    const int P = nf_rqs_P(cf);
    __m256d g[3 * NF_RQS_KMAX];
    for (int e = 0; e < n; e += 4) {
        int l[4], r = rqs_lanes(n - e, l);
        const int off[4] = {0, (int)(l[1] * es), (int)(l[2] * es), (int)(l[3] * es)};
        __m256d xv = _mm256_setr_pd(x[e], x[e + l[1]], x[e + l[2]], x[e + l[3]]);
        __m256d gzv = gz ? _mm256_setr_pd(gz[e], gz[e + l[1]], gz[e + l[2]], gz[e + l[3]]) : _mm256_setzero_pd();
        __m256d glv = _mm256_setr_pd(gl[e], gl[e + l[1]], gl[e + l[2]], gl[e + l[3]]);
        double gv[4] __attribute__((aligned(32))), gxv[4];
        rqs_back4(cf, th + e * es, off, qs, xv, gzv, glv, g, gxv);
        for (int i = 0; i < r; i++) gx[e + i] = gxv[i];
        for (int q = 0; q < P; q++) {
            _mm256_store_pd(gv, g[q]);
            nf_real *o = gth + e * es + q * qs;
            for (int i = 0; i < r; i++) o[i * es] = (nf_real)gv[i];
        }
    }
}

/* __builtin_cpu_supports reads the bits libgcc set at start-up: no cache
 * of our own (one written from several threads would be a data race) */
static int rqs_mvec(void) { return nf_rqs_vector && __builtin_cpu_supports("avx2"); }
#define RQS_MVEC 1
#endif
int nf_rqs_vector = 1;

void nf_rqs_build(const nf_rqs_cfg *cf, const nf_real *theta, nf_rqs_knots *kn) {
    int K = cf->K;
    kn->ds[0] = kn->ds[K] = 1.0;
#ifdef RQS_MVEC
    if (rqs_mvec()) {
        rqs_cumknots4(theta, K, cf->B, cf->min_w, kn->smw, kn->xs);
        rqs_cumknots4(theta + K, K, cf->B, cf->min_h, kn->smh, kn->ys);
        rqs_derivs4(cf, theta + 2 * K, kn->ds);
        return;
    }
#endif
    rqs_cumknots(theta, K, cf->B, cf->min_w, kn->smw, kn->xs);
    rqs_cumknots(theta + K, K, cf->B, cf->min_h, kn->smh, kn->ys);
    for (int k = 1; k < K; k++) kn->ds[k] = cf->min_d + softplus((double)theta[2 * K + k - 1] + cf->dconst);
}

/* The bin k with knots[k] <= v < knots[k+1] (v == B gives K-1). */
static int rqs_bin(const double *knots, int K, double v) {
    int lo = 0, hi = K - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (v >= knots[mid]) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }
static double clampr(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

/* log g' in bin with slope s = h/w, end derivatives d0, d1, at xi in [0,1]:
 *   g' = s^2 (d1 xi^2 + 2 s xi(1-xi) + d0 (1-xi)^2) / (s + (d0+d1-2s) xi(1-xi))^2 */
static double rqs_logderiv(double s, double d0, double d1, double xi) {
    double t = xi * (1 - xi), om = 1 - xi;
    double den = s + (d0 + d1 - 2 * s) * t;
    double n2 = d1 * xi * xi + 2 * s * t + d0 * om * om;
    return 2 * log(s) + log(n2) - 2 * log(den);
}

/* Density direction: z = g(x) = y_k + h (s xi^2 + d0 xi(1-xi)) / (s + (d0+d1-2s) xi(1-xi)),
 * xi = (x - x_k)/w; *ld = log g'(x).  Identity outside [-B,B]. */
double nf_rqs_eval(const nf_rqs_cfg *cf, const nf_rqs_knots *kn, double x, double *ld) {
    if (!(x >= -cf->B && x <= cf->B)) {
        *ld = 0;
        return x;
    }
    int k = rqs_bin(kn->xs, cf->K, x);
    double w = kn->xs[k + 1] - kn->xs[k], h = kn->ys[k + 1] - kn->ys[k];
    double d0 = kn->ds[k], d1 = kn->ds[k + 1], s = h / w;
    double xi = clamp01((x - kn->xs[k]) / w), t = xi * (1 - xi);
    double den = s + (d0 + d1 - 2 * s) * t;
    *ld = rqs_logderiv(s, d0, d1, xi);
    /* the clamp only absorbs rounding, keeping z inside its bin (so |z| <= B) */
    return clampr(kn->ys[k] + h * (s * xi * xi + d0 * t) / den, kn->ys[k], kn->ys[k + 1]);
}

/* Sampling direction: x = g^-1(y).  In bin k, with dy = y - y_k and
 * delta = d0 + d1 - 2s, xi solves a xi^2 + b xi + c = 0 where
 *   a = h (s - d0) + dy delta,  b = h d0 - dy delta,  c = -s dy,
 * taken as xi = 2c / (-b - sqrt(b^2 - 4ac)) (no cancellation).
 * *ld = -log g'(x).  Identity outside [-B,B]. */
double nf_rqs_solve(const nf_rqs_cfg *cf, const nf_rqs_knots *kn, double y, double *ld) {
    if (!(y >= -cf->B && y <= cf->B)) {
        *ld = 0;
        return y;
    }
    int k = rqs_bin(kn->ys, cf->K, y);
    double w = kn->xs[k + 1] - kn->xs[k], h = kn->ys[k + 1] - kn->ys[k];
    double d0 = kn->ds[k], d1 = kn->ds[k + 1], s = h / w;
    double dy = y - kn->ys[k], delta = d0 + d1 - 2 * s;
    double a = h * (s - d0) + dy * delta, b = h * d0 - dy * delta, c = -s * dy;
    double disc = b * b - 4 * a * c;
    double q = -b - sqrt(disc > 0 ? disc : 0);
    double xi = q != 0 ? clamp01(2 * c / q) : 0;
    *ld = -rqs_logderiv(s, d0, d1, xi);
    return clampr(kn->xs[k] + xi * w, kn->xs[k], kn->xs[k + 1]);
}

void nf_rqs_run(const nf_rqs_cfg *cf, const nf_real *th, size_t es, size_t qs, int n,
                const double *x, double *y, double *ld, int dir) {
#ifdef RQS_MVEC
    if (rqs_mvec() && es <= 0x7fffffff / 4) {
        rqs_run_avx2(cf, th, es, qs, n, x, y, ld, dir);
        return;
    }
#endif
    nf_real tq[3 * NF_RQS_KMAX];
    nf_rqs_knots kn;
    for (int e = 0; e < n; e++) {
        const nf_real *t = th + e * es;
        if (qs != 1) {
            for (int q = 0; q < nf_rqs_P(cf); q++) tq[q] = t[q * qs];
            t = tq;
        }
        nf_rqs_build(cf, t, &kn);
        y[e] = dir ? nf_rqs_solve(cf, &kn, x[e], ld + e) : nf_rqs_eval(cf, &kn, x[e], ld + e);
    }
}

void nf_rqs_run_backward(const nf_rqs_cfg *cf, const nf_real *th, size_t es, size_t qs, int n,
                         const double *x, const double *gz, const double *gl, nf_real *gth,
                         double *gx) {
#ifdef RQS_MVEC
    if (rqs_mvec() && es <= 0x7fffffff / 4) {
        rqs_back_avx2(cf, th, es, qs, n, x, gz, gl, gth, gx);
        return;
    }
#endif
    const int P = nf_rqs_P(cf);
    nf_real tq[3 * NF_RQS_KMAX];
    double g[3 * NF_RQS_KMAX];
    nf_rqs_knots kn;
    for (int e = 0; e < n; e++) {
        const nf_real *t = th + e * es;
        for (int q = 0; q < P; q++) tq[q] = t[q * qs];
        nf_rqs_build(cf, tq, &kn);
        gx[e] = nf_rqs_backward(cf, &kn, tq, x[e], gz ? gz[e] : 0, gl[e], g);
        for (int q = 0; q < P; q++) gth[e * es + q * qs] = (nf_real)g[q];
    }
}

/* Backward of the density direction at x: with gz = dJ/dz and gl = dJ/d(log g'),
 * writes gth (P) = dJ/dtheta (=) and returns dJ/dx.
 * Inside bin k (xi, s as above, t = xi(1-xi), num = s xi^2 + d0 t,
 * den = s + (d0+d1-2s) t, N = d1 xi^2 + 2 s t + d0 (1-xi)^2):
 *   z = y_k + h num/den,  log g' = 2 log s + log N - 2 log den,
 * differentiated in (xi, s, h, y_k, d0, d1), then xi = (x-x_k)/w, s = h/w, the
 * knots as cumulative sums of the bin sizes, softmax and softplus. */
double nf_rqs_backward(const nf_rqs_cfg *cf, const nf_rqs_knots *kn, const nf_real *theta,
                           double x, double gz, double gl, double *gth) {
    int K = cf->K, P = 3 * K - 1;
    for (int p = 0; p < P; p++) gth[p] = 0;
    if (!(x >= -cf->B && x <= cf->B)) return gz;
    int k = rqs_bin(kn->xs, K, x);
    double w = kn->xs[k + 1] - kn->xs[k], h = kn->ys[k + 1] - kn->ys[k];
    double d0 = kn->ds[k], d1 = kn->ds[k + 1], s = h / w;
    double xi = clamp01((x - kn->xs[k]) / w), om = 1 - xi, t = xi * om;
    double den = s + (d0 + d1 - 2 * s) * t;
    double num = s * xi * xi + d0 * t;
    double n2 = d1 * xi * xi + 2 * s * t + d0 * om * om;
    double gp = s * s * n2 / (den * den); /* g' */
    double den2 = den * den;

    double dz_ds = h * (xi * xi * den - num * (1 - 2 * t)) / den2;
    double dz_dd0 = h * t * (den - num) / den2;
    double dz_dd1 = -h * num * t / den2;
    double dz_dxi = gp * w;
    double dl_ds = 2 / s + 2 * t / n2 - 2 * (1 - 2 * t) / den;
    double dl_dd0 = om * om / n2 - 2 * t / den;
    double dl_dd1 = xi * xi / n2 - 2 * t / den;
    double dl_dxi = (2 * d1 * xi + 2 * s * (1 - 2 * xi) - 2 * d0 * om) / n2 -
                    2 * (d0 + d1 - 2 * s) * (1 - 2 * xi) / den;

    double gs = gz * dz_ds + gl * dl_ds;
    double gxi = gz * dz_dxi + gl * dl_dxi;
    double gd0 = gz * dz_dd0 + gl * dl_dd0, gd1 = gz * dz_dd1 + gl * dl_dd1;
    double gh = gz * num / den + gs / w;
    double gw = -(gs * s + gxi * xi) / w;
    double gx = gxi / w;
    /* knot gradients: x_k gets -gx - gw, x_{k+1} gets gw; y_k gets gz - gh,
     * y_{k+1} gets gh.  Knots 0 and K are constants. */
    double gxk = k > 0 ? -gx - gw : 0, gxk1 = k + 1 < K ? gw : 0;
    double gyk = k > 0 ? gz - gh : 0, gyk1 = k + 1 < K ? gh : 0;
    /* knot j = -B + 2B sum_{i<j} (mn + (1-K mn) sm_i): d knot_j / d sm_i = 2B(1-K mn) [i<j];
     * softmax: d/du_i = sm_i (g_i - sum_j sm_j g_j). */
    double cw = 2 * cf->B * (1 - K * cf->min_w), ch = 2 * cf->B * (1 - K * cf->min_h);
    double dotw = 0, doth = 0;
    for (int i = 0; i < K; i++) {
        double gwi = cw * ((i < k ? gxk : 0) + (i < k + 1 ? gxk1 : 0));
        double ghi = ch * ((i < k ? gyk : 0) + (i < k + 1 ? gyk1 : 0));
        gth[i] = gwi;
        gth[K + i] = ghi;
        dotw += kn->smw[i] * gwi;
        doth += kn->smh[i] * ghi;
    }
    for (int i = 0; i < K; i++) {
        gth[i] = kn->smw[i] * (gth[i] - dotw);
        gth[K + i] = kn->smh[i] * (gth[K + i] - doth);
    }
    /* d_j = min_d + softplus(ud_{j-1} + c), interior j only */
    if (k > 0) gth[2 * K + k - 1] += gd0 * sigmoid((double)theta[2 * K + k - 1] + cf->dconst);
    if (k + 1 < K) gth[2 * K + k] += gd1 * sigmoid((double)theta[2 * K + k] + cf->dconst);
    return gx;
}

double nf_rqs_apply(const nf_real *theta, int K, double B, double min_w, double min_h,
                    double min_d, double in, int dir, double *ld) {
    nf_rqs_cfg cf;
    nf_rqs_knots kn;
    nf_rqs_cfg_set(&cf, K, B, min_w, min_h, min_d);
    nf_rqs_build(&cf, theta, &kn);
    return dir ? nf_rqs_solve(&cf, &kn, in, ld) : nf_rqs_eval(&cf, &kn, in, ld);
}

/* ---- shared spec parsing -------------------------------------------------- */

int nf_rqs_parse(nf_rqs_cfg *cf, const cJSON *spec, char *err, size_t errlen) {
    int K;
    double B, mw, mh, md;
    if (nf_json_int(spec, "bins", 8, 2, NF_RQS_KMAX, &K, err, errlen) ||
        nf_json_num(spec, "tail_bound", 3.0, 1e-6, 1e6, &B, err, errlen) ||
        nf_json_num(spec, "min_bin_width", 1e-3, 0, 1, &mw, err, errlen) ||
        nf_json_num(spec, "min_bin_height", 1e-3, 0, 1, &mh, err, errlen) ||
        nf_json_num(spec, "min_derivative", 1e-3, 0, 0.999, &md, err, errlen))
        return NF_EINVAL;
    if (mw * K >= 1 || mh * K >= 1) {
        nf_set_err(err, errlen, "\"min_bin_width\" and \"min_bin_height\" must be below 1/bins");
        return NF_EINVAL;
    }
    nf_rqs_cfg_set(cf, K, B, mw, mh, md);
    return 0;
}

void nf_rqs_to_json(const nf_rqs_cfg *cf, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "bins", cf->K);
    cJSON_AddNumberToObject(obj, "tail_bound", cf->B);
    cJSON_AddNumberToObject(obj, "min_bin_width", cf->min_w);
    cJSON_AddNumberToObject(obj, "min_bin_height", cf->min_h);
    cJSON_AddNumberToObject(obj, "min_derivative", cf->min_d);
}

/* ---- spline coupling ------------------------------------------------------
 * x = [x_p, x_t] by mask (1 = passes through).  theta = net(x_p, ctx) (Dt*P),
 * spline j's parameters at j*P.  z_p = x_p, z_t = g(x_t; theta),
 * log|det dz/dx| = sum_j log g'(x_tj). */

typedef struct spline_coupling {
    nf_rqs_cfg cf;
    int *mask;      /* (D) */
    int *pass, *tr; /* (Dp), (Dt) dimension indices */
    int Dp, Dt;
    nf_net net;
} spline_coupling;

/* B rows of n splines each: spline (b, j) has its parameters at
 * th + (b n + j) P and maps in[b ld + col[j]] to out[b ld + col[j]] (col NULL:
 * j), adding its log-det to logdet[b] (when given) in j order, the sum
 * taken in double.  Through nf_rqs_run in chunks of RQS_CHUNK splines. */
#define RQS_CHUNK 64
static void rqs_rows(const nf_rqs_cfg *cf, const nf_real *th, int P, int B, int n, const int *col,
                     const nf_real *in, nf_real *out, int ld, nf_real *logdet, int dir) {
    double xb[RQS_CHUNK], yb[RQS_CHUNK], lb[RQS_CHUNK], acc = 0;
    size_t total = (size_t)B * n;
    int b = 0, j = 0;
    for (size_t e0 = 0; e0 < total; e0 += RQS_CHUNK) {
        int m = total - e0 < RQS_CHUNK ? (int)(total - e0) : RQS_CHUNK, bb = b, jj = j;
        for (int i = 0; i < m; i++) {
            xb[i] = in[(size_t)bb * ld + (col ? col[jj] : jj)];
            if (++jj == n) jj = 0, bb++;
        }
        nf_rqs_run(cf, th + e0 * P, (size_t)P, 1, m, xb, yb, lb, dir);
        for (int i = 0; i < m; i++) {
            out[(size_t)b * ld + (col ? col[j] : j)] = (nf_real)yb[i];
            acc += lb[i];
            if (++j == n) {
                if (logdet) logdet[b] += (nf_real)acc;
                acc = 0, j = 0, b++;
            }
        }
    }
}

/* The backward of rqs_rows' dir 0: spline (b, j) gets dJ/dz from dz (NULL:
 * none) at its place and dJ/d(log-det) from dlogdet[b] (NULL: none); its
 * parameters' gradient goes to dth + (b n + j) P, dJ/dx to dx (when given)
 * at its place. */
static void rqs_rows_back(const nf_rqs_cfg *cf, const nf_real *th, int P, int B, int n, const int *col,
                          const nf_real *x, const nf_real *dz, const nf_real *dlogdet, int ld,
                          nf_real *dth, nf_real *dx) {
    double xb[RQS_CHUNK], gzb[RQS_CHUNK], glb[RQS_CHUNK], gxb[RQS_CHUNK];
    size_t total = (size_t)B * n;
    int b = 0, j = 0;
    for (size_t e0 = 0; e0 < total; e0 += RQS_CHUNK) {
        int m = total - e0 < RQS_CHUNK ? (int)(total - e0) : RQS_CHUNK, bb = b, jj = j;
        for (int i = 0; i < m; i++) {
            size_t at = (size_t)bb * ld + (col ? col[jj] : jj);
            xb[i] = x[at];
            gzb[i] = dz ? dz[at] : 0;
            glb[i] = dlogdet ? dlogdet[bb] : 0;
            if (++jj == n) jj = 0, bb++;
        }
        nf_rqs_run_backward(cf, th + e0 * P, (size_t)P, 1, m, xb, dz ? gzb : NULL, glb, dth + e0 * P, gxb);
        for (int i = 0; i < m; i++) {
            if (dx) dx[(size_t)b * ld + (col ? col[j] : j)] = (nf_real)gxb[i];
            if (++j == n) j = 0, b++;
        }
    }
}

/* ws: xp (B,Dp) | theta (B,Dt*P) | dtheta (B,Dt*P) | dxp (B,Dp) | net */
static size_t sc_ws_size(const nf_layer *L, int B) {
    const spline_coupling *S = L->impl;
    size_t P = (size_t)nf_rqs_P(&S->cf);
    return (size_t)B * (2 * S->Dp + 2 * S->Dt * P) + nf_net_ws_size(&S->net, B);
}

static void sc_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    const spline_coupling *S = L->impl;
    (void)buffers;
    nf_net_init(&S->net, params, rng);
}

/* Gathers x_p and runs the conditioner; returns theta (B,Dt*P) in ws. */
static nf_real *sc_condition(const nf_layer *L, nf_ctx *c, const nf_real *in) {
    const spline_coupling *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    nf_real *xp = c->ws, *th = xp + (size_t)B * S->Dp;
    nf_real *nws = th + (size_t)B * (2 * S->Dt * P) + (size_t)B * S->Dp;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S->Dp; j++) xp[(size_t)b * S->Dp + j] = in[(size_t)b * D + S->pass[j]];
    nf_net_forward(&S->net, c->params, xp, c->ctx, th, B, nws, c->wt);
    return th;
}

static int sc_run(const nf_layer *L, nf_ctx *c, const nf_real *in, nf_real *out,
                  nf_real *logdet, int dir) {
    const spline_coupling *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    const nf_real *th = sc_condition(L, c, in);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S->Dp; j++) out[(size_t)b * D + S->pass[j]] = in[(size_t)b * D + S->pass[j]];
    rqs_rows(&S->cf, th, P, B, S->Dt, S->tr, in, out, D, logdet, dir);
    return 0;
}

static int sc_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z, nf_real *logdet) {
    return sc_run(L, c, x, z, logdet, 0);
}

static int sc_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x, nf_real *logdet) {
    return sc_run(L, c, z, x, logdet, 1);
}

/* dx_t = dJ/dx_t through the spline; dx_p = dz_p + (net input gradient). */
static void sc_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const spline_coupling *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    nf_real *xp = c->ws, *th = xp + (size_t)B * S->Dp, *dth = th + (size_t)B * S->Dt * P;
    nf_real *dxp = dth + (size_t)B * S->Dt * P, *nws = dxp + (size_t)B * S->Dp;
    (void)z;
    rqs_rows_back(&S->cf, th, P, B, S->Dt, S->tr, x, dz, dlogdet, D, dth, dx);
    nf_net_backward(&S->net, c->params, c->grad, xp, c->ctx, dth, dx ? dxp : NULL, c->dctx, B, nws);
    if (dx)
        for (int b = 0; b < B; b++)
            for (int j = 0; j < S->Dp; j++) {
                size_t i = (size_t)b * D + S->pass[j];
                dx[i] = (dz ? dz[i] : 0) + dxp[(size_t)b * S->Dp + j];
            }
}

static void sc_to_json(const nf_layer *L, cJSON *obj) {
    const spline_coupling *S = L->impl;
    nf_rqs_to_json(&S->cf, obj);
    nf_mask_to_json(S->mask, L->D, obj);
    nf_net_to_json(&S->net, obj);
}

static void sc_destroy(nf_layer *L) {
    spline_coupling *S = L->impl;
    if (!S) return;
    nf_net_free(&S->net);
    nf_free(S->mask);
    nf_free(S);
    L->impl = NULL;
}

static double sc_macs(const nf_layer *L, int executed) {
    return nf_net_macs(&((const spline_coupling *)L->impl)->net, executed);
}
static nf_net *sc_net(const nf_layer *L) { return &((spline_coupling *)L->impl)->net; }

static const nf_layer_ops sc_ops = {
    .type = "spline_coupling",
    .ws_size = sc_ws_size,
    .init = sc_init,
    .inverse = sc_inverse,
    .forward = sc_forward,
    .backward = sc_backward,
    .to_json = sc_to_json,
    .destroy = sc_destroy,
    .macs = sc_macs,
    .net = sc_net,
};

int nf_spline_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", NF_RQS_KEYS, "mask", NF_NET_KEYS, NULL};
    static const int def_hidden[] = {64, 64};
    int D = L->D;
    if (nf_json_check_keys(spec, keys, err, errlen)) return NF_EINVAL;
    spline_coupling *S = nf_calloc(1, sizeof *S);
    if (!S) return NF_ENOMEM;
    if (nf_rqs_parse(&S->cf, spec, err, errlen)) goto bad;
    S->mask = nf_calloc((size_t)(2 * D + 1), sizeof *S->mask);
    if (!S->mask) {
        nf_free(S);
        return NF_ENOMEM;
    }
    if (nf_mask_parse(spec, D, S->mask, err, errlen)) goto bad;
    S->pass = S->mask + D;
    for (int i = 0; i < D; i++)
        if (S->mask[i]) S->pass[S->Dp++] = i;
    S->tr = S->pass + S->Dp;
    for (int i = 0; i < D; i++)
        if (!S->mask[i]) S->tr[S->Dt++] = i;
    int rc = nf_net_from_spec(&S->net, spec, S->Dp, L->C, S->Dt * nf_rqs_P(&S->cf), def_hidden, 2,
                              err, errlen);
    if (rc) {
        nf_free(S->mask);
        nf_free(S);
        return rc;
    }
    L->ops = &sc_ops;
    L->impl = S;
    L->nparams = S->net.nparams;
    L->nbuffers = 0;
    return 0;
bad:
    nf_free(S->mask);
    nf_free(S);
    return NF_EINVAL;
}

/* ---- spline autoregressive (MADE) ------------------------------------------
 * theta = made(x, ctx) (D*P), spline i's parameters at i*P depend only on x_j
 * with deg(j) < deg(i).  z_i = g(x_i; theta_i), log|det dz/dx| = sum_i log g'(x_i)
 * (triangular Jacobian).  Density: one MADE pass.  Sampling: one incremental
 * MADE pass (made_inc.h): step k takes theta of the dim of degree k, solves
 * its spline and feeds x back, each hidden unit computed once.  The naive
 * reference (nf_spline_ar_forward_naive) recomputes the whole MADE D times. */

typedef struct spline_ar {
    nf_rqs_cfg cf;
    int *order; /* (D) order[k] = the dim with degree k+1 */
    nf_net net;
} spline_ar;

/* ws: theta (B,D*P) | dtheta (B,D*P) | dxm (B,D) | net or incremental MADE */
static size_t sa_ws_size(const nf_layer *L, int B) {
    const spline_ar *S = L->impl;
    size_t P = (size_t)nf_rqs_P(&S->cf);
    size_t a = nf_net_ws_size(&S->net, B), b = nf_made_inc_ws_size(&S->net, B);
    return (size_t)B * (2 * (size_t)L->D * P + (size_t)L->D) + (a > b ? a : b);
}

static void sa_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    const spline_ar *S = L->impl;
    (void)buffers;
    nf_net_init(&S->net, params, rng);
}

static void sa_constrain(const nf_layer *L, nf_real *params) {
    const spline_ar *S = L->impl;
    nf_net_constrain(&S->net, params);
}

static nf_real *sa_net_ws(const nf_layer *L, nf_ctx *c) {
    const spline_ar *S = L->impl;
    return c->ws + (size_t)c->B * (2 * (size_t)L->D * nf_rqs_P(&S->cf) + (size_t)L->D);
}

static int sa_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z, nf_real *logdet) {
    const spline_ar *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    nf_real *th = c->ws;
    nf_net_forward(&S->net, c->params, x, c->ctx, th, B, sa_net_ws(L, c), c->wt);
    rqs_rows(&S->cf, th, P, B, D, NULL, x, z, D, logdet, 0);
    return 0;
}

static int sa_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x, nf_real *logdet) {
    const spline_ar *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    nf_real *th = c->ws; /* (B,P) */
    nf_made_inc st;
    nf_made_inc_begin(&st, &S->net, c->params, c->ctx, B, sa_net_ws(L, c));
    for (int j = 1; j <= D; j++) {
        int i = S->order[j - 1];
        nf_made_inc_outputs(&st, j, th);
        rqs_rows(&S->cf, th, P, B, 1, &i, z, x, D, logdet, 1);
        if (j < D) nf_made_inc_feed(&st, j, x + i, D);
    }
    return 0;
}

int nf_spline_ar_forward_naive(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                               nf_real *logdet) {
    const spline_ar *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    nf_real *th = c->ws;
    nf_rqs_knots kn;
    memset(x, 0, (size_t)B * D * sizeof *x);
    for (int k = 0; k < D; k++) {
        int i = S->order[k];
        nf_net_forward(&S->net, c->params, x, c->ctx, th, B, sa_net_ws(L, c), c->wt);
        for (int b = 0; b < B; b++) {
            double l;
            nf_rqs_build(&S->cf, th + ((size_t)b * D + i) * P, &kn);
            x[(size_t)b * D + i] = (nf_real)nf_rqs_solve(&S->cf, &kn, z[(size_t)b * D + i], &l);
            if (logdet) logdet[b] += (nf_real)l;
        }
    }
    return 0;
}

/* dx = (elementwise spline term) + (MADE input gradient of dtheta). */
static void sa_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const spline_ar *S = L->impl;
    int B = c->B, D = L->D, P = nf_rqs_P(&S->cf);
    nf_real *th = c->ws, *dth = th + (size_t)B * D * P, *dxm = dth + (size_t)B * D * P;
    (void)z;
    rqs_rows_back(&S->cf, th, P, B, D, NULL, x, dz, dlogdet, D, dth, dx);
    nf_net_backward(&S->net, c->params, c->grad, x, c->ctx, dth, dx ? dxm : NULL, c->dctx, B,
                    sa_net_ws(L, c));
    if (dx)
        for (size_t e = 0; e < (size_t)B * D; e++) dx[e] += dxm[e];
}

static void sa_to_json(const nf_layer *L, cJSON *obj) {
    const spline_ar *S = L->impl;
    nf_rqs_to_json(&S->cf, obj);
    nf_net_to_json(&S->net, obj);
}

static void sa_destroy(nf_layer *L) {
    spline_ar *S = L->impl;
    if (!S) return;
    nf_net_free(&S->net);
    nf_free(S->order);
    nf_free(S);
    L->impl = NULL;
}

static double sa_macs(const nf_layer *L, int executed) {
    return nf_net_macs(&((const spline_ar *)L->impl)->net, executed);
}
static nf_net *sa_net(const nf_layer *L) { return &((spline_ar *)L->impl)->net; }

static const nf_layer_ops sa_ops = {
    .type = "spline_ar",
    .ws_size = sa_ws_size,
    .init = sa_init,
    .inverse = sa_inverse,
    .forward = sa_forward,
    .backward = sa_backward,
    .constrain = sa_constrain,
    .to_json = sa_to_json,
    .destroy = sa_destroy,
    .macs = sa_macs,
    .net = sa_net,
};

int nf_spline_ar_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", NF_RQS_KEYS, NF_MADE_KEYS, NULL};
    static const int def_hidden[] = {64, 64};
    int D = L->D;
    if (nf_json_check_keys(spec, keys, err, errlen)) return NF_EINVAL;
    if (D < 1) {
        nf_set_err(err, errlen, "spline_ar needs dim >= 1");
        return NF_EINVAL;
    }
    spline_ar *S = nf_calloc(1, sizeof *S);
    if (!S) return NF_ENOMEM;
    if (nf_rqs_parse(&S->cf, spec, err, errlen)) {
        nf_free(S);
        return NF_EINVAL;
    }
    int rc = nf_net_made_from_spec(&S->net, spec, D, L->C, nf_rqs_P(&S->cf), def_hidden, 2, err, errlen);
    if (rc) {
        nf_free(S);
        return rc;
    }
    S->order = nf_malloc((size_t)D * sizeof *S->order);
    if (!S->order) {
        nf_net_free(&S->net);
        nf_free(S);
        return NF_ENOMEM;
    }
    for (int k = 0; k < D; k++) S->order[k] = -1;
    for (int i = 0; i < D; i++) {
        int dg = S->net.degrees[i];
        if (dg < 1 || dg > D || S->order[dg - 1] >= 0) {
            nf_set_err(err, errlen, "spline_ar: MADE degrees are not a permutation of 1..%d", D);
            nf_net_free(&S->net);
            nf_free(S->order);
            nf_free(S);
            return NF_EINVAL;
        }
        S->order[dg - 1] = i;
    }
    L->ops = &sa_ops;
    L->impl = S;
    L->nparams = S->net.nparams;
    L->nbuffers = 0;
    return 0;
}
