/* evaluate.c: sample quality and test likelihood of a model (see
 * evaluate.h for the figures, their formulas and the choices made).
 *
 * Every distance is a double-precision GEMM block: rows are gathered (from
 * nf_real, optionally through an index list) into double blocks with their
 * squared norms, G = A B^T, and d^2 = |a|^2 + |b|^2 - 2 G clamped at 0.  The
 * blocks have fixed sizes, so memory does not grow with the row counts. */
#include "alloc.h"
#include "data.h"
#include "evaluate.h"
#include "nf_internal.h"
#include "train.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>
#include <time.h>

/* Block sizes: small enough that the GEMM output blocks (QB x RB doubles,
 * 256 KiB; QB x N for MMD) stay cheap to fault in, large enough for GEMM
 * to run near its peak at image widths. */
#define QB 128 /* query rows per block */
#define RB 256 /* reference rows per block */

void nf_eval_opts_default(nf_eval_opts *o) {
    o->samples = 1000;
    o->temperature = 1.0;
    o->seed = 0;
    o->max_rows = 1000;
    o->max_ref_rows = 10000;
}

void nf_eval_result_init(nf_eval_result *r) {
    memset(r, 0, sizeof *r);
    r->mean_log_prob = r->bits_per_dim = NAN;
    r->nonfinite_share = r->sample_min = r->sample_max = NAN;
    r->mmd2 = r->mmd_bandwidth = NAN;
    r->nn_sample_mean = r->nn_test_mean = r->nn_ratio = NAN;
}

/* n rows of x (row i0 + r, or idx[i0 + r] when idx is given) into dst
 * (n,D) as double, and their squared norms into norm (n) */
static void gather(const nf_real *x, int D, const int64_t *idx, int64_t i0, int n, double *dst,
                   double *norm) {
    for (int r = 0; r < n; r++) {
        int64_t row = idx ? idx[i0 + r] : i0 + r;
        const nf_real *src = x + (size_t)row * D;
        double *d = dst + (size_t)r * D, s = 0;
        for (int k = 0; k < D; k++) {
            d[k] = (double)src[k];
            s += d[k] * d[k];
        }
        norm[r] = s;
    }
}

/* G (na,nb) = A (na,D) B (nb,D)^T */
static void gram(const double *A, int na, const double *B, int nb, int D, double *G) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, na, nb, D, 1.0, A, D, B, D, 0.0, G, nb);
}

/* ||a-b||^2 from the norms and a.b.  The GEMM's rounding error is at most
 * ~D eps (|a|^2 + |b|^2) (tol, from tol_of), so anything below that is a
 * duplicate row: 0 exactly, whatever order BLAS summed in. */
static inline double sqdist(double na, double nb, double g, double tol) {
    double d2 = na + nb - 2 * g;
    return d2 > tol * (na + nb) ? d2 : 0;
}

static double tol_of(int D) { return 2.0 * (D + 2) * DBL_EPSILON; }

/* ---- nearest neighbours --------------------------------------------------------- */
/* min_d2 (nq) = min_j ||q_i - ref_j||^2 for the rows of q (through qidx
 * when given) against the rows of ref (through ridx when given). */
static int nn_min_d2(const nf_real *q, const int64_t *qidx, int nq, const nf_real *ref,
                     const int64_t *ridx, int64_t nref, int D, double *min_d2) {
    double *qb = nf_malloc(((size_t)QB * D + QB) * sizeof *qb);
    double *rb = nf_malloc(((size_t)RB * D + RB) * sizeof *rb);
    double *G = nf_malloc((size_t)QB * RB * sizeof *G);
    if (!qb || !rb || !G) {
        nf_free(qb);
        nf_free(rb);
        nf_free(G);
        return NF_ENOMEM;
    }
    double *qn = qb + (size_t)QB * D, *rn = rb + (size_t)RB * D, tol = tol_of(D);
    for (int i = 0; i < nq; i++) min_d2[i] = INFINITY;
    for (int64_t r0 = 0; r0 < nref; r0 += RB) {
        int rm = nref - r0 < RB ? (int)(nref - r0) : RB;
        gather(ref, D, ridx, r0, rm, rb, rn);
        for (int q0 = 0; q0 < nq; q0 += QB) {
            int qm = nq - q0 < QB ? nq - q0 : QB;
            gather(q, D, qidx, q0, qm, qb, qn);
            gram(qb, qm, rb, rm, D, G);
            for (int i = 0; i < qm; i++) {
                double best = min_d2[q0 + i];
                const double *g = G + (size_t)i * rm;
                for (int j = 0; j < rm; j++) {
                    double d2 = sqdist(qn[i], rn[j], g[j], tol);
                    if (d2 < best) best = d2;
                }
                min_d2[q0 + i] = best;
            }
        }
    }
    nf_free(qb);
    nf_free(rb);
    nf_free(G);
    return 0;
}

int nf_eval_nn_mean(const nf_real *q, int nq, const nf_real *ref, int64_t nref, int D,
                    double *mean, double *min_dist) {
    if (nq < 1 || nref < 1 || D < 1) return NF_EINVAL;
    double *d2 = nf_malloc((size_t)nq * sizeof *d2);
    if (!d2) return NF_ENOMEM;
    int rc = nn_min_d2(q, NULL, nq, ref, NULL, nref, D, d2);
    if (!rc) {
        double s = 0;
        for (int i = 0; i < nq; i++) {
            double d = sqrt(d2[i]);
            if (min_dist) min_dist[i] = d;
            s += d;
        }
        *mean = s / nq;
    }
    nf_free(d2);
    return rc;
}

/* ---- MMD ---------------------------------------------------------------------------- */
static void swap_f(float *a, float *b) {
    float t = *a;
    *a = *b;
    *b = t;
}

/* Rearranges a (n) so that a[k] is the k-th smallest, smaller ones before
 * it and larger ones after (quickselect, median-of-three pivots). */
static void select_kth(float *a, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1;
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < a[lo]) swap_f(&a[mid], &a[lo]);
        if (a[hi] < a[lo]) swap_f(&a[hi], &a[lo]);
        if (a[hi] < a[mid]) swap_f(&a[hi], &a[mid]);
        float p = a[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < p) i++;
            while (a[j] > p) j--;
            if (i <= j) {
                swap_f(&a[i], &a[j]);
                i++;
                if (j == 0) break;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return; /* j < k < i: a[k] == p, in place */
    }
}

/* The bandwidth: the median pairwise distance of the rows P (S,D) (S >= 2,
 * squared norms pn).  The median is taken of the squared distances, kept
 * as float (half the memory; the bandwidth is a heuristic, good to 1e-7),
 * and the square root of the middle one(s) taken last: the distance's
 * median is the root of the squared distance's (the mean of two roots for
 * an even count).  G is scratch for QB x S doubles. */
static int bandwidth_of(const double *P, const double *pn, int S, int D, double *G, double *bw) {
    size_t npairs = (size_t)S * (S - 1) / 2, k = 0;
    float *d2 = nf_malloc(npairs * sizeof *d2);
    if (!d2) return NF_ENOMEM;
    double tol = tol_of(D);
    for (int i0 = 0; i0 < S; i0 += QB) {
        int im = S - i0 < QB ? S - i0 : QB, w = S - i0;
        gram(P + (size_t)i0 * D, im, P + (size_t)i0 * D, w, D, G);
        for (int i = 0; i < im; i++)
            for (int j = i + 1; j < w; j++) d2[k++] = (float)sqdist(pn[i0 + i], pn[i0 + j], G[(size_t)i * w + j], tol);
    }
    size_t h = npairs / 2;
    select_kth(d2, npairs, h);
    double med = sqrt((double)d2[h]);
    if (npairs % 2 == 0) { /* and the largest below it */
        float lower = d2[0];
        for (size_t i = 1; i < h; i++)
            if (d2[i] > lower) lower = d2[i];
        med = 0.5 * (med + sqrt((double)lower));
    }
    if (!(med > 0)) { /* most pairs are duplicates: the mean distance */
        double sum = 0;
        for (size_t i = 0; i < npairs; i++) sum += sqrt((double)d2[i]);
        med = sum / (double)npairs;
    }
    *bw = med > 0 ? med : 1.0;
    nf_free(d2);
    return 0;
}

int nf_eval_mmd2(const nf_real *x, int nx, const nf_real *y, int ny, int D, double *mmd2,
                 double *bandwidth) {
    if (nx < 2 || ny < 2 || D < 1) return NF_EINVAL;
    int N = nx + ny;
    int sx = nx < NF_EVAL_MEDIAN_ROWS ? nx : NF_EVAL_MEDIAN_ROWS;
    int sy = ny < NF_EVAL_MEDIAN_ROWS ? ny : NF_EVAL_MEDIAN_ROWS;
    double *P = nf_malloc(((size_t)N * D + N) * sizeof *P);
    double *S = sx + sy < N ? nf_malloc(((size_t)(sx + sy) * D + sx + sy) * sizeof *S) : NULL;
    double *G = nf_malloc((size_t)QB * N * sizeof *G); /* both passes */
    int rc = NF_ENOMEM;
    if (!P || !G || (sx + sy < N && !S)) goto out;
    double *pn = P + (size_t)N * D;
    gather(x, D, NULL, 0, nx, P, pn);
    gather(y, D, NULL, 0, ny, P + (size_t)nx * D, pn + nx);
    /* the bandwidth from the first sx and sy rows of each side */
    double bw;
    if (S) {
        double *sn = S + (size_t)(sx + sy) * D;
        memcpy(S, P, (size_t)sx * D * sizeof *S);
        memcpy(S + (size_t)sx * D, P + (size_t)nx * D, (size_t)sy * D * sizeof *S);
        memcpy(sn, pn, (size_t)sx * sizeof *sn);
        memcpy(sn + sx, pn + nx, (size_t)sy * sizeof *sn);
        rc = bandwidth_of(S, sn, sx + sy, D, G, &bw);
    } else {
        rc = bandwidth_of(P, pn, N, D, G, &bw);
    }
    if (rc) goto out;
    /* kernel sums over the pairs i < j of the pooled rows, by block of i:
     * G = P[i0..i0+im) P[i0..N)^T */
    double gamma = 1 / (2 * bw * bw), kxx = 0, kyy = 0, kxy = 0, tol = tol_of(D);
    for (int i0 = 0; i0 < N; i0 += QB) {
        int im = N - i0 < QB ? N - i0 : QB, w = N - i0;
        gram(P + (size_t)i0 * D, im, P + (size_t)i0 * D, w, D, G);
        for (int i = 0; i < im; i++) {
            int gi = i0 + i;
            const double *g = G + (size_t)i * w;
            for (int j = i + 1; j < w; j++) {
                int gj = i0 + j;
                double k = exp(-gamma * sqdist(pn[gi], pn[gj], g[j], tol));
                if (gj < nx) kxx += k;         /* both in x (gi < gj) */
                else if (gi >= nx) kyy += k;   /* both in y */
                else kxy += k;
            }
        }
    }
    /* each unordered pair counted once: the sums over i != j are twice that */
    *mmd2 = 2 * kxx / ((double)nx * (nx - 1)) + 2 * kyy / ((double)ny * (ny - 1)) -
            2 * kxy / ((double)nx * ny);
    *bandwidth = bw;
    rc = 0;
out:
    nf_free(P);
    nf_free(S);
    nf_free(G);
    return rc;
}

/* ---- subsamples ------------------------------------------------------------------- */
/* k of the n indices 0..n-1, uniformly without replacement (selection
 * sampling, Knuth's algorithm S: O(n) time, no O(n) memory), then shuffled
 * so that any prefix is a uniform subset too.  idx (k), k <= n. */
static void choose(int64_t n, int64_t k, nf_rng *g, int64_t *idx) {
    int64_t got = 0;
    for (int64_t i = 0; i < n && got < k; i++)
        if ((double)(n - i) * nf_rng_uniform(g) < (double)(k - got)) idx[got++] = i;
    nf_data_shuffle_index(idx, k, g);
}

/* ---- the sample figures ------------------------------------------------------------------ */
int nf_eval_sample_set(const nf_real *s, int ns, int levels, const nf_real *test, int64_t nt,
                       const nf_real *ref, int64_t nref, int D, const nf_eval_opts *o,
                       nf_eval_result *r) {
    if (ns < 0 || nt < 1 || D < 1 || levels < 0 || o->max_rows < 2 || o->max_ref_rows < 1 ||
        (ns > 0 && !s) || !test)
        return NF_EINVAL;
    r->samples = ns;
    r->nonfinite = 0;
    if (ns == 0) return 0;
    int M = o->max_rows;
    int nts = nt < M ? (int)nt : M;
    int64_t nr = ref && nref > 0 ? (nref < o->max_ref_rows ? nref : o->max_ref_rows) : 0;
    nf_real *fs = nf_malloc((size_t)(ns < M ? ns : M) * D * sizeof *fs);
    nf_real *ts = nf_malloc((size_t)nts * D * sizeof *ts);
    int64_t *tidx = nf_malloc((size_t)nts * sizeof *tidx);
    int64_t *ridx = nr < nref ? nf_malloc((size_t)nr * sizeof *ridx) : NULL;
    double *d2 = nr ? nf_malloc(((size_t)(ns < M ? ns : M) + nts) * sizeof *d2) : NULL;
    int rc = NF_ENOMEM;
    if (!fs || !ts || !tidx || (nr < nref && nr && !ridx) || (nr && !d2)) goto out;
    /* non-finite rows out, the first M finite ones kept (floored for a
     * dequantized model) */
    double lo = INFINITY, hi = -INFINITY;
    int nfs = 0;
    for (int i = 0; i < ns; i++) {
        const nf_real *row = s + (size_t)i * D;
        int ok = 1;
        for (int k = 0; k < D && ok; k++) ok = isfinite(row[k]);
        if (!ok) {
            r->nonfinite++;
            continue;
        }
        for (int k = 0; k < D; k++) {
            if (row[k] < lo) lo = row[k];
            if (row[k] > hi) hi = row[k];
        }
        if (nfs == M) continue;
        nf_real *dst = fs + (size_t)nfs++ * D;
        for (int k = 0; k < D; k++) {
            double v = row[k];
            if (levels > 0) v = fmin(fmax(floor(v), 0), levels - 1);
            dst[k] = (nf_real)v;
        }
    }
    r->nonfinite_share = (double)r->nonfinite / ns;
    r->sample_min = nfs ? lo : NAN;
    r->sample_max = nfs ? hi : NAN;
    /* a seeded random nts of the test rows */
    nf_rng g;
    nf_rng_seed(&g, o->seed ^ 0xE7A1C0DE5A3B1E5DULL);
    choose(nt, nts, &g, tidx);
    for (int i = 0; i < nts; i++)
        memcpy(ts + (size_t)i * D, test + (size_t)tidx[i] * D, (size_t)D * sizeof *ts);
    r->mmd_samples = nfs;
    r->mmd_test_rows = nts;
    if (nfs >= 2 && nts >= 2 && (rc = nf_eval_mmd2(fs, nfs, ts, nts, D, &r->mmd2, &r->mmd_bandwidth)))
        goto out;
    if (nr) {
        if (ridx) choose(nref, nr, &g, ridx);
        r->nn_ref_rows = nr;
        if (nfs && (rc = nn_min_d2(fs, NULL, nfs, ref, ridx, nr, D, d2))) goto out;
        if ((rc = nn_min_d2(ts, NULL, nts, ref, ridx, nr, D, d2 + nfs))) goto out;
        double ss = 0, st = 0;
        for (int i = 0; i < nfs; i++) ss += sqrt(d2[i]);
        for (int i = 0; i < nts; i++) st += sqrt(d2[nfs + i]);
        r->nn_sample_mean = nfs ? ss / nfs : NAN;
        r->nn_test_mean = st / nts;
        r->nn_ratio = r->nn_test_mean > 0 ? r->nn_sample_mean / r->nn_test_mean : NAN;
    }
    rc = 0;
out:
    nf_free(fs);
    nf_free(ts);
    nf_free(tidx);
    nf_free(ridx);
    nf_free(d2);
    return rc;
}

int nf_eval_flow_samples(const nf_flow *f, int levels, const nf_real *test, int64_t nt,
                         const nf_real *ref, int64_t nref, const nf_eval_opts *o,
                         nf_eval_result *r) {
    double t0 = nf_mono_s();
    int D = nf_flow_dim(f), n = o->samples;
    if (nf_flow_context_dim(f) > 0) return NF_EUNSUPPORTED;
    if (n < 0 || !(o->temperature > 0) || !isfinite(o->temperature)) return NF_EINVAL;
    nf_ws *w = NULL;
    nf_real *x = n ? nf_malloc((size_t)n * D * sizeof *x) : NULL;
    int rc = n && !x ? NF_ENOMEM : n ? nf_ws_create_inference(f, n < 256 ? n : 256, &w) : 0;
    if (!rc && n) rc = nf_flow_sample(f, w, n, o->temperature, o->seed, NULL, x, NULL);
    nf_ws_free(w);
    if (!rc) rc = nf_eval_sample_set(x, n, levels, test, nt, ref, nref, D, o, r);
    nf_free(x);
    r->seconds = nf_mono_s() - t0;
    return rc;
}

int nf_model_evaluate(const nf_model *m, const nf_real *test, int64_t nt, const nf_real *ref,
                      int64_t nref, const nf_eval_opts *o, nf_eval_result *r) {
    double t0 = nf_mono_s();
    int D = nf_flow_dim(m->flow);
    nf_eval_result_init(r);
    if (nf_flow_context_dim(m->flow) > 0) return NF_EUNSUPPORTED;
    if (nt < 1 || nt > 0x7fffffff || !test) return NF_EINVAL;
    /* the likelihood as `flowd eval` computes it (each row's dequantization
     * noise seeded by the row: model.h) */
    nf_ws *w = NULL;
    nf_real *lp = nf_malloc((size_t)nt * sizeof *lp);
    int rc = !lp ? NF_ENOMEM : nf_model_ws_create(m, nt < 1024 ? (int)nt : 1024, &w);
    if (!rc) rc = nf_model_log_prob(m, w, test, NULL, (int)nt, lp);
    nf_ws_free(w);
    if (!rc) {
        double sum = 0;
        for (int64_t i = 0; i < nt; i++) {
            if (isfinite(lp[i])) sum += lp[i];
            else r->outside_support++;
        }
        int64_t inside = nt - r->outside_support;
        r->test_rows = nt;
        r->mean_log_prob = inside ? sum / (double)inside : NAN;
        if (m->dequantize && inside) r->bits_per_dim = nf_bits_per_dim(-r->mean_log_prob, D);
    }
    nf_free(lp);
    if (!rc && o->samples > 0)
        rc = nf_eval_flow_samples(m->flow, m->dequantize ? m->levels : 0, test, nt, ref, nref, o, r);
    r->seconds = nf_mono_s() - t0;
    return rc;
}
