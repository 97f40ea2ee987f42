/* test_conditional.c: conditional flows p(x | c) end to end in the core:
 * the convolutional coupling's context (gradients against finite
 * differences), a conditional Gaussian learnt to its known conditional
 * entropy by a job with context_columns, a class-conditional job on a toy
 * set that separates its classes, the raw-row layout (context.h), and the
 * scorer's stable per-row noise and importance-weighted estimate
 * (model.h). */
#include "../test.h"
#include "layercheck.h"
#include "../../core/context.h"
#include "../../core/job.h"
#include "../../core/model.h"
#include "../../core/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the convolutional coupling reads the context ------------------------------ */
TEST(conditional_conv_coupling_generic) {
    const char *specs[] = {
        "{\"type\":\"conv_coupling\",\"hidden_channels\":4}",
        "{\"type\":\"conv_coupling\",\"mask\":\"checkerboard\",\"transform\":\"affine\",\"scale\":\"exp\",\"hidden_channels\":3}",
        "{\"type\":\"conv_coupling\",\"mask\":\"channel_odd\",\"net\":\"resnet\",\"blocks\":1,\"hidden_channels\":3,\"transform\":\"additive\"}",
        "{\"type\":\"conv_coupling\",\"mask\":\"checkerboard_odd\",\"transform\":\"spline\",\"bins\":4,\"hidden_channels\":3}",
    };
    for (int i = 0; i < 4; i++) {
        /* Glow's sigmoid scale underflows for rows of size 1e3 in sampling
         * (as test_conv_coupling.c says): skip_large for it; the spline at a
         * lower noise for float32 (the same reason as there) */
        lc_opts o = {.shape = {2, 4, 4}, .C = 3, .B = 5, .seed = 40 + (uint64_t)i,
                     .param_noise = i == 3 ? 0.1 : 0.3, .skip_large = i == 0};
        CHECK_MSG(lc_check_layer(specs[i], &o) == 0, "%s with context", specs[i]);
    }
}

/* Glow's split prior reads the context too: p(z2 | z1, c).  skip_large:
 * split's raw logs (Glow's) overflow exp() on rows of 1e3, as
 * tests/core/test_image.c says */
TEST(conditional_split_prior_generic) {
    lc_opts o = {.shape = {4, 2, 2}, .C = 2, .B = 5, .seed = 61, .param_noise = 0.3, .skip_large = 1};
    CHECK(lc_check_layer("{\"type\":\"split\"}", &o) == 0);
    lc_opts o3 = {.shape = {3, 3, 2}, .C = 1, .B = 4, .seed = 62, .param_noise = 0.3, .skip_large = 1};
    CHECK(lc_check_layer("{\"type\":\"split\"}", &o3) == 0);
}

/* The context changes the density (it is read), and the gradient with
 * respect to it reaches it: a whole conditional Glow against central
 * differences (float64 build). */
TEST(conditional_glow_preset_grads) {
    nf_flow *f = NULL;
    char err[300] = "";
    REQUIRE(nf_flow_create("{\"shape\":[1,4,4],\"context_dim\":2,\"preset\":\"glow\",\"depth\":1,"
                           "\"levels\":2,\"hidden_channels\":4,\"seed\":3}",
                           &f, err, sizeof err) == 0);
    CHECK_EQ_INT(nf_flow_context_dim(f), 2);
    nf_rng r;
    nf_rng_seed(&r, 5);
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] += (nf_real)(0.2 * nf_rng_normal(&r));
    enum { B = 3, D = 16 };
    nf_real x[B * D], c[B * 2], c2[B * 2], lp[B], lp2[B];
    lc_randn(&r, x, B * D, 1, 0);
    lc_randn(&r, c, B * 2, 1, 0);
    for (int i = 0; i < B * 2; i++) c2[i] = c[i] + 1;
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create(f, B, &w) == 0);
    CHECK(nf_flow_log_prob(f, w, x, c, B, lp) == 0);
    CHECK(nf_flow_log_prob(f, w, x, c2, B, lp2) == 0);
    for (int b = 0; b < B; b++) CHECK(fabs((double)lp[b] - lp2[b]) > 1e-4);
#ifdef NF_DOUBLE
    CHECK(lc_check_grads(f, x, c, B, 0, 1e-5) == 0);
#endif
    nf_ws_free(w);
    nf_flow_free(f);
}

/* ---- the raw-row layout ----------------------------------------------------------- */
TEST(conditional_context_split_and_json) {
    nf_context_spec s = {.kind = NF_CTX_COLUMNS, .width = 4, .ncols = 2, .cols = {3, 1}};
    char err[200] = "";
    CHECK(nf_context_check(&s, err, sizeof err) == 0);
    const nf_real rows[8] = {0, 1, 2, 3, 10, 11, 12, 13};
    nf_real x[4], c[4];
    CHECK(nf_context_split(&s, rows, 2, x, c, NULL, err, sizeof err) == 0);
    CHECK(x[0] == 0 && x[1] == 2 && x[2] == 10 && x[3] == 12);
    CHECK(c[0] == 3 && c[1] == 1 && c[2] == 13 && c[3] == 11); /* in the listed order */
    cJSON *j = nf_context_to_json(&s);
    nf_context_spec t;
    CHECK(nf_context_from_json(j, &t, err, sizeof err) == 0);
    CHECK(t.kind == NF_CTX_COLUMNS && t.width == 4 && t.ncols == 2 && t.cols[0] == 3 && t.cols[1] == 1);
    cJSON_Delete(j);
    /* labels: one-hot; a label out of range names its row */
    nf_context_spec l = {.kind = NF_CTX_LABELS, .width = 3, .ncols = 1, .cols = {0}, .classes = 3};
    const nf_real lr[6] = {2, 5, 6, 1, 7, 8};
    nf_real lx[4], lc[6];
    CHECK(nf_context_split(&l, lr, 2, lx, lc, NULL, err, sizeof err) == 0);
    CHECK(lc[0] == 0 && lc[1] == 0 && lc[2] == 1 && lc[3] == 0 && lc[4] == 1 && lc[5] == 0);
    CHECK(lx[0] == 5 && lx[1] == 6 && lx[2] == 7 && lx[3] == 8);
    const nf_real bad[6] = {0, 1, 1, 3, 1, 1};
    int64_t row = -1;
    CHECK(nf_context_split(&l, bad, 2, lx, lc, &row, err, sizeof err) == NF_ERANGE);
    CHECK(row == 1 && strstr(err, "row 1"));
    /* refused layouts */
    nf_context_spec dup = {.kind = NF_CTX_COLUMNS, .width = 4, .ncols = 2, .cols = {1, 1}};
    CHECK(nf_context_check(&dup, err, sizeof err) == NF_EINVAL && strstr(err, "twice"));
    nf_context_spec out = {.kind = NF_CTX_COLUMNS, .width = 4, .ncols = 1, .cols = {4}};
    CHECK(nf_context_check(&out, err, sizeof err) == NF_EINVAL && strstr(err, "outside"));
    nf_context_spec all = {.kind = NF_CTX_COLUMNS, .width = 2, .ncols = 2, .cols = {0, 1}};
    CHECK(nf_context_check(&all, err, sizeof err) == NF_EINVAL && strstr(err, "no data"));
}

TEST(conditional_job_parse) {
    nf_job j;
    char err[300] = "";
    const char *ok = "{\"model\":\"m\",\"dataset\":{\"path\":\"p.csv\",\"context_columns\":[2,3]},"
                     "\"flow\":{\"preset\":\"maf\"}}";
    REQUIRE(nf_job_parse(ok, strlen(ok), 1, &j, err, sizeof err) == 0);
    CHECK(j.ctx_kind == NF_CTX_COLUMNS && j.nctx == 2 && j.ctx_cols[1] == 3);
    CHECK_MSG(nf_job_check(&j, 4, NULL, 0, -1, 1, err, sizeof err) == 0, "%s", err);
    CHECK(nf_job_check(&j, 3, NULL, 0, -1, 1, err, sizeof err) == NF_EINVAL && strstr(err, "context_columns"));
    nf_job_free(&j);
    const char *lb = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"labels\":true},"
                     "\"flow\":{\"preset\":\"realnvp\"}}";
    REQUIRE(nf_job_parse(lb, strlen(lb), 0, &j, err, sizeof err) == 0);
    CHECK(j.ctx_kind == NF_CTX_LABELS && j.labels_src == NF_LABELS_BUILTIN);
    CHECK_MSG(nf_job_check(&j, 0, NULL, 0, 0, 0, err, sizeof err) == 0, "%s", err);
    nf_job_free(&j);
    const struct { const char *js, *msg; } bad[] = {
        {"{\"model\":\"m\",\"dataset\":{\"id\":\"ds_1\",\"context_columns\":[1],\"labels\":{\"column\":0}},\"flow\":{\"preset\":\"maf\"}}", "not both"},
        {"{\"model\":\"m\",\"dataset\":{\"id\":\"ds_1\",\"context_columns\":[-1]},\"flow\":{\"preset\":\"maf\"}}", "context_columns"},
        {"{\"model\":\"m\",\"dataset\":{\"id\":\"ds_1\",\"context_columns\":[]},\"flow\":{\"preset\":\"maf\"}}", "context_columns"},
        {"{\"model\":\"m\",\"dataset\":{\"id\":\"ds_1\",\"labels\":{\"column\":0,\"id\":\"ds_2\"}},\"flow\":{\"preset\":\"maf\"}}", "labels"},
        {"{\"model\":\"m\",\"dataset\":{\"id\":\"ds_1\",\"labels\":{\"column\":0,\"classes\":0}},\"flow\":{\"preset\":\"maf\"}}", "classes"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"labels\":{\"column\":2}},\"flow\":{\"preset\":\"maf\"}}", "built-in"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\",\"context_dim\":2}}", "context_dim"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_MSG(nf_job_parse(bad[i].js, strlen(bad[i].js), 0, &j, err, sizeof err) == NF_EINVAL,
                  "%s accepted", bad[i].js);
        CHECK_MSG(strstr(err, bad[i].msg) != NULL, "%s: \"%s\"", bad[i].js, err);
    }
}

/* the job JSON js (offline paths allowed) into j; REQUIREd to parse */
static int parse(const char *js, nf_job *j) {
    char err[300] = "";
    int rc = nf_job_parse(js, strlen(js), 1, j, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", js, err);
    return rc;
}

/* ---- a conditional Gaussian learnt to its conditional entropy --------------------
 * c ~ N(0, I_2), x = A c + b + L eps, eps ~ N(0, I_2), so x | c ~ N(A c + b, L L^T)
 * and H(X | C) = log(2 pi e) + log|det L| (D = 2) = 0.7176 nats with
 * L = [[0.3, 0], [0.2, 0.4]].  A MAF with the context as an input can
 * represent it exactly, so the held-out NLL must come to within 0.1 nats
 * (the estimate's standard error on 1600 test rows is about 0.025: the NLL
 * of a Gaussian row has variance D/2).  Without the context the best
 * possible is H(X) = 1/2 log det(2 pi e (A A^T + L L^T)) = 2.10 nats, so
 * the figure also shows the context is used. */
static void conditional_gaussian(nf_data *all, int64_t n, uint64_t seed) {
    REQUIRE(nf_data_alloc(all, n, 4, NULL, 0) == 0);
    nf_rng r;
    nf_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) {
        double c0 = nf_rng_normal(&r), c1 = nf_rng_normal(&r), e0 = nf_rng_normal(&r),
               e1 = nf_rng_normal(&r);
        nf_real *row = all->x + i * 4;
        row[0] = (nf_real)(1.5 * c0 + 0.5 * c1 + 1 + 0.3 * e0);
        row[1] = (nf_real)(-1.0 * c0 + 1.0 * c1 - 2 + 0.2 * e0 + 0.4 * e1);
        row[2] = (nf_real)c0; /* the context: the last two columns, given as [2, 3] */
        row[3] = (nf_real)c1;
    }
    REQUIRE(nf_data_summarize(all, NULL, 0) == 0);
}

TEST_T(conditional_gaussian_entropy, 300) {
#ifdef NF_DOUBLE
    return; /* training figures: the float build's */
#endif
    const double H = log(2 * 3.141592653589793 * exp(1.0)) + log(0.3 * 0.4);
    nf_data all = {0};
    conditional_gaussian(&all, 8000, 11);
    const char *js = "{\"model\":\"cg\",\"dataset\":{\"path\":\"unused\",\"context_columns\":[2,3]},"
                     "\"flow\":{\"preset\":\"maf\",\"depth\":2,\"hidden\":[32,32]},"
                     "\"train\":{\"epochs\":40,\"batch_size\":256,\"lr\":0.003,\"val_fraction\":0.1,"
                     "\"test_fraction\":0.2,\"seed\":2,\"log_every\":1000}}";
    nf_job j;
    char err[300] = "";
    REQUIRE(parse(js, &j) == 0);
    nf_job_result res;
    int rc = nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err);
    CHECK_MSG(rc == 0, "run: %s", err);
    if (!rc) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(res.metrics, "test_nll");
        const cJSON *cd = cJSON_GetObjectItemCaseSensitive(res.metrics, "context_dim");
        CHECK(cJSON_IsNumber(cd) && cd->valuedouble == 2);
        REQUIRE(cJSON_IsNumber(t));
        CHECK_MSG(fabs(t->valuedouble - H) < 0.1, "test NLL %.4f, H(X|C) %.4f", t->valuedouble, H);
        /* the model file keeps the layout; scoring raw rows split by it
         * gives the same figure */
        nf_model *m = NULL;
        REQUIRE(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
        CHECK(m->context.kind == NF_CTX_COLUMNS && m->context.width == 4 && m->context.cols[0] == 2);
        CHECK_EQ_INT(nf_flow_context_dim(m->flow), 2);
        nf_data fresh = {0};
        conditional_gaussian(&fresh, 2000, 99);
        nf_real *x = malloc(2000 * 2 * sizeof *x), *c = malloc(2000 * 2 * sizeof *c),
                *lp = malloc(2000 * sizeof *lp);
        REQUIRE(x && c && lp);
        CHECK(nf_context_split(&m->context, fresh.x, 2000, x, c, NULL, err, sizeof err) == 0);
        nf_ws *w = NULL;
        REQUIRE(nf_model_ws_create(m, 256, &w) == 0);
        CHECK(nf_model_log_prob(m, w, x, c, 2000, lp) == 0);
        double nll = 0;
        for (int i = 0; i < 2000; i++) nll -= lp[i];
        nll /= 2000;
        CHECK_MSG(fabs(nll - H) < 0.1, "fresh rows: NLL %.4f, H(X|C) %.4f", nll, H);
        nf_ws_free(w);
        nf_model_free(m);
        free(x);
        free(c);
        free(lp);
        nf_data_free(&fresh);
    }
    nf_job_result_free(&res);
    nf_job_free(&j);
    nf_data_free(&all);
}

/* ---- a class-conditional job on a toy set ---------------------------------------
 * 8gaussians with each row's Gaussian as its label: p(x | label) puts its
 * mass on that Gaussian, so a held-out row scores higher under its own
 * label than under any other for nearly every row (the Gaussians barely
 * overlap: we ask 95% against the next-best wrong label). */
TEST_T(conditional_labels_separate_classes, 300) {
#ifdef NF_DOUBLE
    return;
#endif
    const char *js = "{\"model\":\"g8\",\"dataset\":{\"builtin\":\"8gaussians\",\"n\":6000,\"labels\":true},"
                     "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]},"
                     "\"train\":{\"epochs\":15,\"batch_size\":128,\"lr\":0.003,\"seed\":1,\"log_every\":1000}}";
    nf_job j;
    char err[300] = "";
    REQUIRE(nf_job_parse(js, strlen(js), 0, &j, err, sizeof err) == 0);
    nf_data all = {0};
    REQUIRE(nf_job_load_data(&j, &all, err, sizeof err) == 0);
    CHECK_EQ_INT(all.d, 3);
    nf_job_result res;
    int rc = nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err);
    CHECK_MSG(rc == 0, "run: %s", err);
    if (!rc) {
        nf_model *m = NULL;
        REQUIRE(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
        CHECK(m->context.kind == NF_CTX_LABELS && m->context.classes == 8 && m->context.cols[0] == 2);
        enum { N = 500, K = 8 };
        nf_data held = {0};
        REQUIRE(nf_data_builtin_ex("8gaussians", N, -1, 777, 1, &held, err, sizeof err) == 0);
        nf_real x[N * 2], c[N * K], lp[K][N];
        CHECK(nf_context_split(&m->context, held.x, N, x, c, NULL, err, sizeof err) == 0);
        nf_ws *w = NULL;
        REQUIRE(nf_model_ws_create(m, 256, &w) == 0);
        for (int k = 0; k < K; k++) {
            nf_real ck[N * K];
            for (int i = 0; i < N; i++) nf_context_onehot(K, k, ck + i * K);
            CHECK(nf_model_log_prob(m, w, x, ck, N, lp[k]) == 0);
        }
        int right = 0;
        for (int i = 0; i < N; i++) {
            int lab = (int)held.x[i * 3 + 2], best = 1;
            for (int k = 0; k < K; k++)
                if (k != lab && !(lp[lab][i] > lp[k][i])) best = 0;
            right += best;
        }
        CHECK_MSG(right >= N * 95 / 100, "%d of %d held-out rows score highest under their own label",
                  right, N);
        nf_ws_free(w);
        nf_model_free(m);
        nf_data_free(&held);
    }
    nf_job_result_free(&res);
    nf_job_free(&j);
    nf_data_free(&all);
}

/* ---- stable scores and the importance-weighted estimate -------------------------- */
/* integer rows in [0, 15]: moons scaled onto 16 levels */
static void integer_moons(nf_data *d, int64_t n, uint64_t seed) {
    REQUIRE(nf_data_builtin("moons", n, -1, seed, d, NULL, 0) == 0);
    for (int64_t i = 0; i < n * 2; i++) {
        double v = floor(((double)d->x[i] + 3) * 2.5);
        d->x[i] = (nf_real)(v < 0 ? 0 : v > 15 ? 15 : v);
    }
    REQUIRE(nf_data_summarize(d, NULL, 0) == 0);
}

static nf_model *train_dequantized(const char *kind, const nf_data *all) {
    char js[600];
    snprintf(js, sizeof js,
             "{\"model\":\"dq\",\"dataset\":{\"builtin\":\"moons\"},"
             "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]},"
             "\"train\":{\"epochs\":6,\"batch_size\":128,\"lr\":0.003,\"seed\":3,\"log_every\":1000,"
             "\"eval_samples\":0},\"preprocess\":{\"dequantize\":{\"kind\":\"%s\",\"levels\":16}}}",
             kind);
    nf_job j;
    char err[300] = "";
    nf_model *m = NULL;
    if (nf_job_parse(js, strlen(js), 0, &j, err, sizeof err)) return NULL;
    nf_job_result res;
    int rc = nf_job_run(&j, all, NULL, NULL, 0, &res, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", kind, err);
    if (!rc) CHECK(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
    nf_job_result_free(&res);
    nf_job_free(&j);
    return m;
}

/* A row's score is a function of the row: the same rows reversed, and
 * scored through workspaces of 7 and 64 rows (other chunks, other
 * positions) get the same scores, to the rounding of BLAS's edge rows.
 * Before, each row's noise came from one generator by position: a moved
 * row got other noise, differing by tenths of a nat. */
TEST_T(conditional_stable_scores_and_iw, 300) {
#ifdef NF_DOUBLE
    return;
#endif
    nf_data all = {0};
    integer_moons(&all, 3000, 5);
    const char *kinds[] = {"uniform", "variational"};
    for (int kk = 0; kk < 2; kk++) {
        nf_model *m = train_dequantized(kinds[kk], &all);
        REQUIRE(m);
        enum { N = 300 };
        nf_real rev[N * 2], a[N], b[N], c[N], one[1];
        for (int i = 0; i < N; i++) memcpy(rev + 2 * i, all.x + 2 * (N - 1 - i), 2 * sizeof(nf_real));
        nf_ws *w64 = NULL, *w7 = NULL;
        REQUIRE(nf_model_ws_create(m, 64, &w64) == 0 && nf_model_ws_create(m, 7, &w7) == 0);
        CHECK(nf_model_log_prob(m, w64, all.x, NULL, N, a) == 0);
        CHECK(nf_model_log_prob(m, w7, rev, NULL, N, b) == 0);
        for (int i = 0; i < N; i++) {
            CHECK_CLOSE(b[N - 1 - i], a[i], 1e-4, 1e-5);
            if (i % 37 == 0) { /* alone */
                CHECK(nf_model_log_prob(m, w7, all.x + 2 * i, NULL, 1, one) == 0);
                CHECK_CLOSE(one[0], a[i], 1e-4, 1e-5);
            }
        }
        /* K = 1 is the bound itself, bit for bit */
        CHECK(nf_model_log_prob_iw(m, w64, all.x, NULL, N, 1, c) == 0);
        CHECK(memcmp(a, c, sizeof a) == 0);
        /* K = 16: the log-mean-exp of the 16 draws' weights, rebuilt row by
         * row from the documented seeds (uniform: log q = 0, the weights are
         * log p(x + u_k); variational: nf_vdeq_log_prob with eps from the
         * seed); and by Jensen at least the mean of the 16 single-draw
         * bounds, row by row: a tighter bound than K = 1 on average */
        CHECK(nf_model_log_prob_iw(m, w64, all.x, NULL, N, 16, c) == 0);
        nf_ws *wf = NULL;
        REQUIRE(nf_ws_create_inference(m->flow, 1, &wf) == 0);
        double m1 = 0, m16 = 0;
        int below = 0;
        for (int i = 0; i < N; i++) {
            double lw[16], mx = -INFINITY, s = 0, mean = 0;
            for (int k = 0; k < 16; k++) {
                nf_rng g;
                nf_real y[2], l;
                nf_rng_seed(&g, nf_model_row_seed(m, all.x + 2 * i, NULL, k));
                if (m->dequantizer) {
                    CHECK(nf_vdeq_log_prob(m->flow, wf, m->dequantizer, all.x + 2 * i, NULL, 1, 16, &g,
                                           &l) == 0);
                } else {
                    for (int d = 0; d < 2; d++) y[d] = all.x[2 * i + d] + (nf_real)nf_rng_uniform(&g);
                    CHECK(nf_flow_log_prob(m->flow, wf, y, NULL, 1, &l) == 0);
                }
                lw[k] = l;
                mean += lw[k] / 16;
                if (lw[k] > mx) mx = lw[k];
            }
            if (i % 29 == 0) CHECK_CLOSE(lw[0], a[i], 1e-4, 1e-5); /* draw 0 is the K = 1 bound */
            for (int k = 0; k < 16; k++) s += exp(lw[k] - mx);
            CHECK_CLOSE(c[i], mx + log(s / 16), 1e-4, 1e-5);
            below += c[i] < mean - 1e-4;
            m1 += mean / N;
            m16 += (double)c[i] / N;
        }
        nf_ws_free(wf);
        CHECK_MSG(below == 0, "%s: %d rows with the K=16 estimate under their mean bound", kinds[kk], below);
        CHECK_MSG(m16 > m1, "%s: mean K=16 %.5f, mean of K=1 bounds %.5f", kinds[kk], m16, m1);
        /* reversed rows: the same K = 16 estimates */
        CHECK(nf_model_log_prob_iw(m, w7, rev, NULL, N, 16, b) == 0);
        for (int i = 0; i < N; i++) CHECK_CLOSE(b[N - 1 - i], c[i], 1e-4, 1e-5);
        CHECK(nf_model_log_prob_iw(m, w64, all.x, NULL, N, 0, c) == NF_EINVAL);
        CHECK(nf_model_log_prob_iw(m, w64, all.x, NULL, N, NF_MODEL_MAX_IW_SAMPLES + 1, c) == NF_EINVAL);
        nf_ws_free(w64);
        nf_ws_free(w7);
        nf_model_free(m);
    }
    nf_data_free(&all);
}

/* ---- a conditional, variationally dequantized job resumes bit for bit ------------ */
typedef struct {
    int64_t at;
    void *blob;
    size_t len;
} cond_ckpt;

static int cond_on_ckpt(void *user, void *state, size_t len, int64_t step) {
    cond_ckpt *k = user;
    if (step < k->at || k->blob) return 0;
    k->blob = malloc(len);
    if (!k->blob) return NF_ENOMEM;
    memcpy(k->blob, state, len);
    k->len = len;
    return NF_ECANCELLED; /* stop here, as a crash would */
}

static nf_model *cond_run(const nf_job *j, const nf_data *all, const nf_train_hooks *h,
                          const void *resume, size_t rlen, int want) {
    nf_job_result res;
    char err[300] = "";
    nf_model *m = NULL;
    int rc = nf_job_run(j, all, h, resume, rlen, &res, err, sizeof err);
    CHECK_MSG(rc == want, "run: %d %s", rc, err);
    if (!rc) CHECK(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
    nf_job_result_free(&res);
    return m;
}

TEST_T(conditional_variational_job_resumes, 300) {
#ifdef NF_DOUBLE
    return;
#endif
    /* integer moons with their label as a third column */
    nf_data all = {0}, lab = {0};
    integer_moons(&all, 1500, 8);
    REQUIRE(nf_data_builtin_ex("moons", 1500, -1, 8, 1, &lab, NULL, 0) == 0);
    nf_data rows = {0};
    REQUIRE(nf_data_alloc(&rows, 1500, 3, NULL, 0) == 0);
    for (int i = 0; i < 1500; i++) {
        rows.x[3 * i] = all.x[2 * i];
        rows.x[3 * i + 1] = all.x[2 * i + 1];
        rows.x[3 * i + 2] = lab.x[3 * i + 2];
    }
    REQUIRE(nf_data_summarize(&rows, NULL, 0) == 0);
    const char *js = "{\"model\":\"cv\",\"dataset\":{\"path\":\"unused\",\"labels\":{\"column\":2}},"
                     "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                     "\"train\":{\"epochs\":2,\"batch_size\":100,\"seed\":6,\"eval_samples\":0},"
                     "\"preprocess\":{\"dequantize\":{\"kind\":\"variational\",\"levels\":16}}}";
    nf_job j;
    REQUIRE(parse(js, &j) == 0);
    nf_model *a = cond_run(&j, &rows, NULL, NULL, 0, 0);
    cond_ckpt k = {.at = 7};
    nf_train_hooks h = {.user = &k, .checkpoint = cond_on_ckpt, .checkpoint_every = 1};
    cond_run(&j, &rows, &h, NULL, 0, NF_ECANCELLED);
    REQUIRE(k.blob);
    nf_model *b = cond_run(&j, &rows, NULL, k.blob, k.len, 0);
    REQUIRE(a && b && a->dequantizer && b->dequantizer);
    CHECK(a->context.kind == NF_CTX_LABELS && a->context.classes == 2);
    CHECK(memcmp(nf_flow_params(a->flow), nf_flow_params(b->flow),
                 nf_flow_num_params(a->flow) * sizeof(nf_real)) == 0);
    CHECK(memcmp(nf_flow_params(a->dequantizer), nf_flow_params(b->dequantizer),
                 nf_flow_num_params(a->dequantizer) * sizeof(nf_real)) == 0);
    /* the labels matter to the trained model: a row scores differently under each */
    nf_ws *w = NULL;
    REQUIRE(nf_model_ws_create(a, 4, &w) == 0);
    nf_real c0[2] = {1, 0}, c1[2] = {0, 1}, l0, l1;
    CHECK(nf_model_log_prob(a, w, all.x, c0, 1, &l0) == 0);
    CHECK(nf_model_log_prob(a, w, all.x, c1, 1, &l1) == 0);
    CHECK(isfinite(l0) && isfinite(l1) && l0 != l1);
    nf_ws_free(w);
    free(k.blob);
    nf_model_free(a);
    nf_model_free(b);
    nf_job_free(&j);
    nf_data_free(&all);
    nf_data_free(&lab);
    nf_data_free(&rows);
}
