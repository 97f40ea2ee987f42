/* test_evaluate.c: core/evaluate.c against known answers and naive twins:
 * MMD^2 of two samples of one Gaussian is ~0 and of shifted Gaussians
 * clearly positive, and both match a plain O(n^2) double loop (direct
 * distances, qsort median) to 1e-6 relative; the nearest-neighbour means
 * match a plain loop; the NN ratio of copies of training rows is ~0 and of
 * fresh draws ~1; non-finite samples are counted and left out; a model
 * whose samples overflow gives the right non-finite share; the likelihood
 * figures are flowd eval's. */
#include "../test.h"
#include "../../core/evaluate.h"
#include "../../core/train.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* n rows of N(mu, I_D) */
static nf_real *gauss_rows(int n, int D, double mu, uint64_t seed) {
    nf_real *x = malloc((size_t)n * D * sizeof *x);
    nf_rng g;
    nf_rng_seed(&g, seed);
    for (size_t i = 0; i < (size_t)n * D; i++) x[i] = (nf_real)(mu + nf_rng_normal(&g));
    return x;
}

static double dist(const nf_real *a, const nf_real *b, int D) {
    double s = 0;
    for (int k = 0; k < D; k++) {
        double d = (double)a[k] - (double)b[k];
        s += d * d;
    }
    return sqrt(s);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the estimator of evaluate.h written out: direct distances, the median
 * over the first NF_EVAL_MEDIAN_ROWS rows of each side by sorting, every
 * ordered pair summed */
static double naive_mmd2(const nf_real *x, int nx, const nf_real *y, int ny, int D, double *bw) {
    int sx = nx < NF_EVAL_MEDIAN_ROWS ? nx : NF_EVAL_MEDIAN_ROWS;
    int sy = ny < NF_EVAL_MEDIAN_ROWS ? ny : NF_EVAL_MEDIAN_ROWS, S = sx + sy;
    const nf_real **rows = malloc((size_t)S * sizeof *rows);
    for (int i = 0; i < sx; i++) rows[i] = x + (size_t)i * D;
    for (int i = 0; i < sy; i++) rows[sx + i] = y + (size_t)i * D;
    size_t np = (size_t)S * (S - 1) / 2, k = 0;
    double *d = malloc(np * sizeof *d), mean = 0;
    /* the squared distances are ranked as float (evaluate.h) */
    for (int i = 0; i < S; i++)
        for (int j = i + 1; j < S; j++) {
            double dd = dist(rows[i], rows[j], D);
            d[k++] = (float)(dd * dd);
            mean += dd;
        }
    mean /= (double)np;
    qsort(d, np, sizeof *d, cmp_d);
    double med = np % 2 ? sqrt(d[np / 2]) : 0.5 * (sqrt(d[np / 2 - 1]) + sqrt(d[np / 2]));
    *bw = med > 0 ? med : mean > 0 ? mean : 1;
    free(d);
    free(rows);
    double g = 1 / (2 * *bw * *bw), kxx = 0, kyy = 0, kxy = 0;
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < nx; j++)
            if (i != j) kxx += exp(-g * pow(dist(x + (size_t)i * D, x + (size_t)j * D, D), 2));
    for (int i = 0; i < ny; i++)
        for (int j = 0; j < ny; j++)
            if (i != j) kyy += exp(-g * pow(dist(y + (size_t)i * D, y + (size_t)j * D, D), 2));
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < ny; j++) kxy += exp(-g * pow(dist(x + (size_t)i * D, y + (size_t)j * D, D), 2));
    return kxx / ((double)nx * (nx - 1)) + kyy / ((double)ny * (ny - 1)) - 2 * kxy / ((double)nx * ny);
}

TEST(eval_mmd_same_gaussian_near_zero_shifted_positive) {
    enum { N = 500, D = 3 };
    nf_real *a = gauss_rows(N, D, 0, 1), *b = gauss_rows(N, D, 0, 2), *c = gauss_rows(N, D, 1, 3);
    double same, shifted, bw1, bw2, ref, rbw;
    REQUIRE(nf_eval_mmd2(a, N, b, N, D, &same, &bw1) == 0);
    REQUIRE(nf_eval_mmd2(a, N, c, N, D, &shifted, &bw2) == 0);
    /* the unbiased estimator's spread under the null is O(1/N) */
    CHECK_MSG(fabs(same) < 0.005, "same distribution: mmd2 %g", same);
    CHECK_MSG(shifted > 0.1, "shifted by 1 per dim: mmd2 %g", shifted);
    /* the median distance of two standard normals in 3-D is ~2.2 */
    CHECK_MSG(bw1 > 1.8 && bw1 < 2.6, "bandwidth %g", bw1);
    ref = naive_mmd2(a, N, b, N, D, &rbw);
    CHECK_CLOSE(bw1, rbw, 0, 1e-7);
    CHECK_CLOSE(same, ref, 1e-9, 1e-6);
    ref = naive_mmd2(a, N, c, N, D, &rbw);
    CHECK_CLOSE(bw2, rbw, 0, 1e-7);
    CHECK_CLOSE(shifted, ref, 0, 1e-6);
    free(a);
    free(b);
    free(c);
}

/* more rows than NF_EVAL_MEDIAN_ROWS on one side (the bandwidth from a
 * subset), unequal sizes, rows not multiples of the GEMM blocks */
TEST(eval_mmd_matches_naive_past_the_median_rows) {
    enum { NX = NF_EVAL_MEDIAN_ROWS + 77, NY = 301, D = 5 };
    nf_real *a = gauss_rows(NX, D, 0, 4), *b = gauss_rows(NY, D, 0.5, 5);
    double m, bw, rbw;
    REQUIRE(nf_eval_mmd2(a, NX, b, NY, D, &m, &bw) == 0);
    double ref = naive_mmd2(a, NX, b, NY, D, &rbw);
    CHECK_CLOSE(bw, rbw, 0, 1e-7);
    CHECK_CLOSE(m, ref, 0, 1e-6);
    CHECK(m > 0.02);
    /* symmetric in its two sets */
    double m2, bw2;
    REQUIRE(nf_eval_mmd2(b, NY, a, NX, D, &m2, &bw2) == 0);
    CHECK_CLOSE(m2, m, 1e-12, 1e-9);
    free(a);
    free(b);
}

TEST(eval_mmd_degenerate_sets) {
    enum { D = 2 };
    nf_real same[8] = {1, 2, 1, 2, 1, 2, 1, 2};
    double m, bw;
    /* every row equal: k = 1 everywhere, MMD 0, bandwidth 1 */
    REQUIRE(nf_eval_mmd2(same, 2, same + 4, 2, D, &m, &bw) == 0);
    CHECK_CLOSE(m, 0, 1e-12, 0);
    CHECK_CLOSE(bw, 1, 0, 0);
    /* mostly duplicates: the median distance is 0, the mean is used */
    nf_real x[10] = {0, 0, 0, 0, 0, 0, 0, 0, 3, 4};
    double ref, rbw;
    REQUIRE(nf_eval_mmd2(x, 3, x + 6, 2, D, &m, &bw) == 0);
    ref = naive_mmd2(x, 3, x + 6, 2, D, &rbw);
    CHECK_CLOSE(bw, 2.0, 1e-12, 0); /* 4 of the 10 pairs are 5 apart */
    CHECK_CLOSE(bw, rbw, 0, 1e-12);
    CHECK_CLOSE(m, ref, 1e-12, 1e-9);
    CHECK(nf_eval_mmd2(x, 1, x, 3, D, &m, &bw) == NF_EINVAL);
}

TEST(eval_nn_mean_matches_naive) {
    enum { NQ = 300, NR = 1300, D = 7 }; /* past one reference block of 512 */
    nf_real *q = gauss_rows(NQ, D, 0, 6), *r = gauss_rows(NR, D, 0, 7);
    double mean, *md = malloc(NQ * sizeof *md);
    REQUIRE(nf_eval_nn_mean(q, NQ, r, NR, D, &mean, md) == 0);
    double s = 0;
    for (int i = 0; i < NQ; i++) {
        double best = INFINITY;
        for (int j = 0; j < NR; j++) best = fmin(best, dist(q + (size_t)i * D, r + (size_t)j * D, D));
        CHECK_CLOSE(md[i], best, 1e-9, 1e-7);
        s += best;
    }
    CHECK_CLOSE(mean, s / NQ, 0, 1e-9);
    free(md);
    free(q);
    free(r);
}

TEST(eval_nn_ratio_copies_zero_fresh_one) {
    enum { NTR = 3000, NT = 600, NS = 600, D = 4 };
    nf_real *tr = gauss_rows(NTR, D, 0, 8), *te = gauss_rows(NT, D, 0, 9);
    nf_real *copies = malloc((size_t)NS * D * sizeof *copies);
    for (int i = 0; i < NS; i++)
        memcpy(copies + (size_t)i * D, tr + (size_t)((i * 7919) % NTR) * D, D * sizeof *copies);
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    nf_eval_result r;
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(copies, NS, 0, te, NT, tr, NTR, D, &o, &r) == 0);
    CHECK_EQ_INT(r.samples, NS);
    CHECK_EQ_INT(r.nonfinite, 0);
    CHECK_EQ_INT(r.nn_ref_rows, NTR);
    CHECK_MSG(r.nn_ratio == 0, "copies: ratio %g", r.nn_ratio); /* duplicates are 0 apart */
    CHECK(r.nn_test_mean > 0.1);
    /* copies of training rows are the data distribution too: MMD small */
    CHECK_MSG(fabs(r.mmd2) < 0.01, "mmd2 %g", r.mmd2);

    nf_real *fresh = gauss_rows(NS, D, 0, 10);
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(fresh, NS, 0, te, NT, tr, NTR, D, &o, &r) == 0);
    CHECK_MSG(r.nn_ratio > 0.85 && r.nn_ratio < 1.15, "fresh draws: ratio %g", r.nn_ratio);
    /* samples off the data: above 1 */
    nf_real *off = gauss_rows(NS, D, 2, 11);
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(off, NS, 0, te, NT, tr, NTR, D, &o, &r) == 0);
    CHECK_MSG(r.nn_ratio > 1.5, "shifted draws: ratio %g", r.nn_ratio);
    CHECK(r.mmd2 > 0.2);
    /* no reference: the NN figures are NAN, the rest is there */
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(off, NS, 0, te, NT, NULL, 0, D, &o, &r) == 0);
    CHECK(isnan(r.nn_ratio) && isnan(r.nn_sample_mean) && r.nn_ref_rows == 0);
    CHECK(r.mmd2 > 0.2);
    /* test rows among the reference rows: the denominator is 0, no ratio */
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(fresh, NS, 0, tr, NTR, tr, NTR, D, &o, &r) == 0);
    CHECK(r.nn_test_mean == 0 && isnan(r.nn_ratio));
    free(tr);
    free(te);
    free(copies);
    free(fresh);
    free(off);
}

/* the reference cap and the subsample of M rows per side */
TEST(eval_caps_and_subsamples) {
    enum { NTR = 2000, NT = 900, NS = 700, D = 3 };
    nf_real *tr = gauss_rows(NTR, D, 0, 12), *te = gauss_rows(NT, D, 0, 13);
    nf_real *s = gauss_rows(NS, D, 0, 14);
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    o.max_rows = 250;
    o.max_ref_rows = 600;
    nf_eval_result r, r2;
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, tr, NTR, D, &o, &r) == 0);
    CHECK_EQ_INT(r.mmd_samples, 250);
    CHECK_EQ_INT(r.mmd_test_rows, 250);
    CHECK_EQ_INT(r.nn_ref_rows, 600);
    CHECK(r.nn_ratio > 0.8 && r.nn_ratio < 1.25);
    /* fewer reference rows: every nearest row is farther */
    nf_eval_opts_default(&o);
    nf_eval_result_init(&r2);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, tr, NTR, D, &o, &r2) == 0);
    CHECK(r2.nn_test_mean < r.nn_test_mean);
    /* the same seed, the same figures; another seed, other subsamples */
    o.max_rows = 250;
    o.max_ref_rows = 600;
    nf_eval_result_init(&r2);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, tr, NTR, D, &o, &r2) == 0);
    CHECK(r2.mmd2 == r.mmd2 && r2.nn_ratio == r.nn_ratio);
    o.seed = 99;
    nf_eval_result_init(&r2);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, tr, NTR, D, &o, &r2) == 0);
    CHECK(r2.nn_test_mean != r.nn_test_mean);
    free(tr);
    free(te);
    free(s);
}

TEST(eval_nonfinite_samples_counted_and_left_out) {
    enum { NS = 40, NT = 50, D = 2 };
    nf_real *s = gauss_rows(NS, D, 0, 15), *te = gauss_rows(NT, D, 0, 16);
    /* rows 3, 10 and 31 bad: NaN, +Inf in the second column, -Inf */
    s[3 * D] = NAN;
    s[10 * D + 1] = INFINITY;
    s[31 * D] = -INFINITY;
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    nf_eval_result r;
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, te, NT, D, &o, &r) == 0);
    CHECK_EQ_INT(r.samples, NS);
    CHECK_EQ_INT(r.nonfinite, 3);
    CHECK_CLOSE(r.nonfinite_share, 3.0 / NS, 0, 1e-15);
    CHECK_EQ_INT(r.mmd_samples, NS - 3);
    /* the same figures as the finite rows alone */
    nf_real *fin = malloc((size_t)NS * D * sizeof *fin);
    int k = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < NS; i++) {
        if (i == 3 || i == 10 || i == 31) continue;
        for (int d = 0; d < D; d++) {
            lo = fmin(lo, s[i * D + d]);
            hi = fmax(hi, s[i * D + d]);
        }
        memcpy(fin + (size_t)k++ * D, s + (size_t)i * D, D * sizeof *fin);
    }
    CHECK(r.sample_min == lo && r.sample_max == hi);
    nf_eval_result r2;
    nf_eval_result_init(&r2);
    REQUIRE(nf_eval_sample_set(fin, k, 0, te, NT, te, NT, D, &o, &r2) == 0);
    CHECK_EQ_INT(r2.nonfinite, 0);
    CHECK(r.mmd2 == r2.mmd2 && r.nn_sample_mean == r2.nn_sample_mean);
    /* all bad: no MMD, no distances, share 1 */
    for (int i = 0; i < NS; i++) s[i * D] = NAN;
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, te, NT, D, &o, &r) == 0);
    CHECK_CLOSE(r.nonfinite_share, 1, 0, 0);
    CHECK(isnan(r.mmd2) && isnan(r.nn_ratio) && isnan(r.sample_min));
    free(s);
    free(te);
    free(fin);
}

/* dequantized samples are floored into levels: a training row plus noise
 * in [0,1) is that row again */
TEST(eval_dequantized_samples_floored) {
    enum { NTR = 400, NT = 200, NS = 300, D = 6, L = 16 };
    nf_rng g;
    nf_rng_seed(&g, 17);
    nf_real *tr = malloc((size_t)NTR * D * sizeof *tr), *te = malloc((size_t)NT * D * sizeof *te);
    nf_real *s = malloc((size_t)NS * D * sizeof *s);
    for (int i = 0; i < NTR * D; i++) tr[i] = (nf_real)(nf_rng_u64(&g) % L);
    for (int i = 0; i < NT * D; i++) te[i] = (nf_real)(nf_rng_u64(&g) % L);
    for (int i = 0; i < NS; i++)
        for (int d = 0; d < D; d++)
            s[i * D + d] = (nf_real)(tr[(i % NTR) * D + d] + 0.999 * nf_rng_uniform(&g));
    s[5] = -3.5;    /* outside the levels: clamped to 0 ... */
    s[D + 2] = 40;  /* ... and to L-1, but shown in the range */
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    nf_eval_result r;
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(s, NS, L, te, NT, tr, NTR, D, &o, &r) == 0);
    CHECK(r.sample_min == (nf_real)-3.5 && r.sample_max == 40);
    /* two samples were moved off their rows by the clamp */
    CHECK_MSG(r.nn_ratio < 0.02, "floored copies: ratio %g", r.nn_ratio);
    nf_eval_result_init(&r);
    REQUIRE(nf_eval_sample_set(s, NS, 0, te, NT, tr, NTR, D, &o, &r) == 0);
    CHECK_MSG(r.nn_ratio > 0.05, "continuous copies: ratio %g", r.nn_ratio);
    free(tr);
    free(te);
    free(s);
}

static nf_model *model_of(const char *spec, const char *preprocess) {
    nf_flow *f = NULL;
    char err[300] = "";
    if (nf_flow_create(spec, &f, err, sizeof err)) {
        fprintf(stderr, "flow: %s\n", err);
        return NULL;
    }
    cJSON *pp = preprocess ? cJSON_Parse(preprocess) : NULL;
    void *buf = NULL;
    size_t len = 0;
    nf_model *m = NULL;
    if (!nf_model_save(f, pp, NULL, NULL, &buf, &len)) nf_model_load(buf, len, &m, err, sizeof err);
    free(buf);
    cJSON_Delete(pp);
    nf_flow_free(f);
    return m;
}

/* x = a b z with a b the largest finite value: a row overflows to
 * infinity exactly when |z_0| > 1, P = 2 (1 - Phi(1)) = 0.3173.  (Two
 * layers: a single scale of DBL_MAX does not survive the model header's
 * cJSON round trip, which prints it rounded up to infinity.) */
TEST(eval_model_overflowing_samples_share) {
    char spec[400];
    double big = sizeof(nf_real) == 4 ? (double)FLT_MAX : DBL_MAX, a = sizeof(nf_real) == 4 ? 1e30 : 1e300;
    snprintf(spec, sizeof spec,
             "{\"dim\":2,\"layers\":[{\"type\":\"elementwise_affine\",\"scale\":[%.17g,1]},"
             "{\"type\":\"elementwise_affine\",\"scale\":[%.17g,1]}]}",
             big / a, a);
    nf_model *m = model_of(spec, NULL);
    REQUIRE(m);
    enum { NT = 400 };
    nf_real *te = gauss_rows(NT, 2, 0, 18);
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    o.samples = 20000;
    o.seed = 5;
    nf_eval_result r;
    REQUIRE(nf_model_evaluate(m, te, NT, te, NT, &o, &r) == 0);
    CHECK_EQ_INT(r.samples, 20000);
    CHECK_MSG(fabs(r.nonfinite_share - 0.31731) < 0.015, "share %g", r.nonfinite_share);
    CHECK_EQ_INT(r.nonfinite, (int)lround(r.nonfinite_share * 20000));
    CHECK(isfinite(r.sample_max) && isfinite(r.mmd2) && r.mmd_samples == 1000);
    CHECK(isfinite(r.mean_log_prob) && r.outside_support == 0);
    CHECK(isnan(r.bits_per_dim)); /* not a dequantized model */
    CHECK(r.seconds >= 0);
    free(te);
    nf_model_free(m);
}

/* the likelihood figures are those of flowd eval: the mean of
 * nf_model_log_prob over all rows in one call, bits/dim for a dequantized
 * model by nf_bits_per_dim */
TEST(eval_model_likelihood_as_flowd_eval) {
    enum { NT = 300, D = 3, L = 8 };
    nf_model *m = model_of("{\"dim\":3,\"layers\":[{\"type\":\"elementwise_affine\","
                           "\"shift\":[4,4,4],\"scale\":[2,2.5,3]}]}",
                           "{\"dequantize\":{\"kind\":\"uniform\",\"levels\":8}}");
    REQUIRE(m && m->dequantize && m->levels == L);
    nf_rng g;
    nf_rng_seed(&g, 19);
    nf_real *te = malloc((size_t)NT * D * sizeof *te), *lp = malloc(NT * sizeof *lp);
    for (int i = 0; i < NT * D; i++) te[i] = (nf_real)(nf_rng_u64(&g) % L);
    nf_ws *w = NULL;
    REQUIRE(nf_model_ws_create(m, 64, &w) == 0);
    REQUIRE(nf_model_log_prob(m, w, te, NULL, NT, lp) == 0);
    double s = 0;
    for (int i = 0; i < NT; i++) s += lp[i];
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    o.samples = 500;
    nf_eval_result r;
    REQUIRE(nf_model_evaluate(m, te, NT, NULL, 0, &o, &r) == 0);
    CHECK_EQ_INT(r.test_rows, NT);
    CHECK_CLOSE(r.mean_log_prob, s / NT, 1e-9, 1e-9);
    CHECK_CLOSE(r.bits_per_dim, nf_bits_per_dim(-s / NT, D), 1e-12, 1e-12);
    CHECK(r.samples == 500 && r.mmd_samples == 500 && isfinite(r.mmd2) && isnan(r.nn_ratio));
    /* floored samples are levels 0..L-1, the range is before flooring */
    CHECK(r.sample_min < 0 && r.sample_max > L);
    /* samples 0: the likelihood alone */
    o.samples = 0;
    REQUIRE(nf_model_evaluate(m, te, NT, te, NT, &o, &r) == 0);
    CHECK(r.samples == 0 && isnan(r.mmd2) && isnan(r.nonfinite_share) && isfinite(r.mean_log_prob));
    /* bad options */
    o.samples = 10;
    o.temperature = 0;
    CHECK(nf_model_evaluate(m, te, NT, NULL, 0, &o, &r) == NF_EINVAL);
    nf_ws_free(w);
    free(te);
    free(lp);
    nf_model_free(m);
}
