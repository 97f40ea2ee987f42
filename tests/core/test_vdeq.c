/* test_vdeq.c: variational dequantization (Flow++): the transform-only
 * gradient, the joint bound's gradient, the bound against uniform noise,
 * the model file with a dequantizer, resume, and the job's "variational". */
#include "../test.h"
#include "layercheck.h"
#include "../../core/job.h"
#include "../../core/model.h"
#include "../../core/nf_internal.h"
#include "../../core/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static nf_flow *make(const char *spec) {
    nf_flow *f = NULL;
    char err[300] = "";
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "nf_flow_create: %s", err);
    return f;
}

/* every parameter random (a fresh flow is the identity, which hides bugs) */
static void randomize(nf_flow *f, uint64_t seed, double scale) {
    nf_rng r;
    nf_rng_seed(&r, seed);
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] = (nf_real)(scale * nf_rng_normal(&r));
    nf_flow_constrain(f);
}

static const char *Q3 =
    "{\"dim\":3,\"context_dim\":3,\"layers\":["
    "{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[8]},"
    "{\"type\":\"maf\",\"hidden\":[8]},"
    "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[8],\"activation\":\"tanh\"},"
    "{\"type\":\"elementwise_affine\",\"shift\":[0.1,0,-0.2],\"scale\":[0.625,0.7,0.625]}]}";

/* L = sum_b dout_b . out_b + w_b logdet_b */
static double transform_loss(nf_flow *q, nf_ws *w, const nf_real *x, const nf_real *c, int B,
                             const nf_real *dout, const nf_real *dlw) {
    int D = nf_flow_dim(q);
    nf_real out[64], ld[16];
    CHECK(nf_flow_transform_grad(q, w, x, c, B, 0, NULL, NULL, out, ld, NULL, NULL) == 0);
    double L = 0;
    for (int i = 0; i < B * D; i++) L += (double)dout[i] * out[i];
    for (int b = 0; b < B; b++) L += (double)dlw[b] * ld[b];
    return L;
}

/* nf_flow_transform_grad's parameter, input and context gradients against
 * central differences (double build: float differences are noise) */
TEST(vdeq_transform_grad_finite_differences) {
#ifndef NF_DOUBLE
    return;
#endif
    enum { B = 4, D = 3 };
    nf_flow *q = make(Q3);
    REQUIRE(q);
    randomize(q, 7, 0.3);
    nf_ws *w;
    REQUIRE(nf_ws_create(q, B, &w) == 0);
    nf_rng r;
    nf_rng_seed(&r, 3);
    nf_real x[B * D], c[B * D], dout[B * D], dlw[B];
    for (int i = 0; i < B * D; i++) {
        x[i] = (nf_real)nf_rng_normal(&r);
        c[i] = (nf_real)(nf_rng_uniform(&r) - 0.5);
        dout[i] = (nf_real)nf_rng_normal(&r);
    }
    for (int b = 0; b < B; b++) dlw[b] = (nf_real)nf_rng_normal(&r);
    size_t P = nf_flow_num_params(q);
    nf_real out[B * D], ld[B], dx[B * D], dc[B * D] = {0};
    nf_flow_zero_grad(q);
    REQUIRE(nf_flow_transform_grad(q, w, x, c, B, 0, dout, dlw, out, ld, dx, dc) == 0);
    nf_real *g = malloc(P * sizeof *g);
    memcpy(g, nf_flow_grad(q), P * sizeof *g);
    /* the split call (forward, then backward alone) gives the same */
    nf_real dx2[B * D], dc2[B * D] = {0};
    nf_flow_zero_grad(q);
    REQUIRE(nf_flow_transform_grad(q, w, x, c, B, 0, NULL, NULL, out, ld, NULL, NULL) == 0);
    REQUIRE(nf_flow_transform_backward(q, w, x, c, B, 0, dout, dlw, dx2, dc2) == 0);
    CHECK(memcmp(g, nf_flow_grad(q), P * sizeof *g) == 0);
    CHECK(memcmp(dx, dx2, sizeof dx) == 0);
    CHECK(memcmp(dc, dc2, sizeof dc) == 0);
    const double h = 1e-6;
    int bad = 0;
    nf_real *p = nf_flow_params(q);
    for (size_t i = 0; i < P; i++) {
        if (p[i] == 0) continue; /* a MADE mask's structural zero: not a free parameter */
        nf_real keep = p[i];
        p[i] = keep + h;
        double lp = transform_loss(q, w, x, c, B, dout, dlw);
        p[i] = keep - h;
        double lm = transform_loss(q, w, x, c, B, dout, dlw);
        p[i] = keep;
        double fd = (lp - lm) / (2 * h);
        if (!(fabs(fd - g[i]) <= 1e-6 + 1e-5 * fabs(fd)) && bad++ < 5)
            CHECK_MSG(0, "param %zu: analytic %.10g, numeric %.10g", i, (double)g[i], fd);
    }
    for (int i = 0; i < B * D; i++)
        for (int which = 0; which < 2; which++) {
            nf_real *v = which ? c : x, keep = v[i];
            v[i] = keep + h;
            double lp = transform_loss(q, w, x, c, B, dout, dlw);
            v[i] = keep - h;
            double lm = transform_loss(q, w, x, c, B, dout, dlw);
            v[i] = keep;
            double fd = (lp - lm) / (2 * h), an = which ? dc[i] : dx[i];
            CHECK_MSG(fabs(fd - an) <= 1e-6 + 1e-5 * fabs(fd), "%s[%d]: analytic %.10g, numeric %.10g",
                      which ? "dctx" : "dx", i, an, fd);
        }
    free(g);
    nf_ws_free(w);
    nf_flow_free(q);
}

/* The joint objective (model + dequantizer) against central differences of
 * its own loss, and the loss against nf_vdeq_log_prob with the same eps. */
TEST(vdeq_bound_grad_finite_differences) {
#ifndef NF_DOUBLE
    return;
#endif
    enum { B = 5, D = 2, LV = 16 };
    nf_flow *f = make("{\"dim\":2,\"layers\":["
                      "{\"type\":\"elementwise_affine\",\"shift\":[8,8],\"scale\":[4,4]},"
                      "{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[8]},"
                      "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[8]}],"
                      "\"base\":{\"type\":\"diag_normal\"}}");
    nf_flow *q = make("{\"dim\":2,\"context_dim\":2,\"layers\":["
                      "{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[8]},"
                      "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[8]},"
                      "{\"type\":\"elementwise_affine\",\"shift\":[0,0],\"scale\":[0.625,0.625]}]}");
    REQUIRE(f && q);
    randomize(f, 1, 0.2);
    randomize(q, 2, 0.3);
    nf_ws *wf, *wq;
    REQUIRE(nf_ws_create(f, B, &wf) == 0 && nf_ws_create(q, B, &wq) == 0);
    nf_real x[B * D], eps[B * D];
    nf_rng r;
    nf_rng_seed(&r, 9);
    for (int i = 0; i < B * D; i++) x[i] = (nf_real)(int)(nf_rng_uniform(&r) * LV);
    nf_rng_seed(&r, 10);
    for (int i = 0; i < B * D; i++) eps[i] = (nf_real)nf_rng_normal(&r);
    nf_real *scratch = malloc(nf_vdeq_scratch_size(B, D) * sizeof *scratch);
    /* lambda 0: the loss is minus the mean bound nf_vdeq_log_prob computes
     * from the same draws (it takes eps from the rng row by row) */
    double loss;
    nf_flow_zero_grad(f);
    nf_flow_zero_grad(q);
    REQUIRE(nf_vdeq_grad(f, wf, q, wq, x, eps, B, LV, 0, 0, scratch, &loss) == 0);
    nf_real lp[B];
    nf_rng_seed(&r, 10);
    REQUIRE(nf_vdeq_log_prob(f, wf, q, x, NULL, B, LV, &r, lp) == 0);
    double mean = 0;
    for (int b = 0; b < B; b++) mean -= lp[b] / B;
    CHECK_CLOSE(loss, mean, 1e-10, 1e-10);
    /* lambda > 0: gradients of both flows */
    const double lam = 0.01, h = 1e-6;
    nf_flow_zero_grad(f);
    nf_flow_zero_grad(q);
    REQUIRE(nf_vdeq_grad(f, wf, q, wq, x, eps, B, LV, 0, lam, scratch, &loss) == 0);
    /* the difference calls accumulate into both gradients: copy first */
    nf_real *grads[2];
    for (int which = 0; which < 2; which++) {
        nf_flow *g = which ? q : f;
        grads[which] = malloc(nf_flow_num_params(g) * sizeof(nf_real));
        memcpy(grads[which], nf_flow_grad(g), nf_flow_num_params(g) * sizeof(nf_real));
    }
    for (int which = 0; which < 2; which++) {
        nf_flow *g = which ? q : f;
        size_t P = nf_flow_num_params(g);
        nf_real *an = grads[which], *p = nf_flow_params(g);
        int bad = 0;
        for (size_t i = 0; i < P; i++) {
            nf_real keep = p[i];
            double lpl, lmi;
            p[i] = keep + h;
            CHECK(nf_vdeq_grad(f, wf, q, wq, x, eps, B, LV, 0, lam, scratch, &lpl) == 0);
            p[i] = keep - h;
            CHECK(nf_vdeq_grad(f, wf, q, wq, x, eps, B, LV, 0, lam, scratch, &lmi) == 0);
            p[i] = keep;
            double fd = (lpl - lmi) / (2 * h);
            if (!(fabs(fd - an[i]) <= 1e-6 + 1e-5 * fabs(fd)) && bad++ < 5)
                CHECK_MSG(0, "%s param %zu: analytic %.10g, numeric %.10g", which ? "q" : "model", i,
                          (double)an[i], fd);
        }
        free(an);
    }
    free(scratch);
    nf_ws_free(wf);
    nf_ws_free(wq);
    nf_flow_free(f);
    nf_flow_free(q);
}

/* 2-D integer data with structure inside the bins: x = floor(4 y) + 8 for y
 * from a correlated Gaussian (sd 1.6 bins per axis, correlation 0.9, so
 * the conditional sd is 0.7 bins), clamped to [0, 15]; levels 16. */
static void pixel_rows(nf_data *d, int64_t n, uint64_t seed) {
    char err[200];
    nf_data_alloc(d, n, 2, err, sizeof err);
    nf_rng r;
    nf_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) {
        double a = nf_rng_normal(&r), b = nf_rng_normal(&r);
        double y0 = 0.4 * a, y1 = 0.4 * (0.9 * a + 0.4359 * b);
        for (int k = 0; k < 2; k++) {
            double v = floor(4 * (k ? y1 : y0)) + 8;
            d->x[i * 2 + k] = (nf_real)(v < 0 ? 0 : v > 15 ? 15 : v);
        }
    }
    nf_data_summarize(d, err, sizeof err);
}

static const char *job_json(const char *kind, int epochs) {
    static char s[800];
    snprintf(s, sizeof s,
             "{\"model\":\"px\",\"dataset\":{\"builtin\":\"moons\"},"
             "\"flow\":{\"layers\":[{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[32,32]},"
             "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[32,32]},"
             "{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[32,32]},"
             "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[32,32]}]},"
             "\"train\":{\"epochs\":%d,\"batch_size\":128,\"lr\":3e-3,\"schedule\":\"cosine\","
             "\"val_fraction\":0.2,\"seed\":4,\"log_every\":1000},"
             "\"preprocess\":{\"dequantize\":{\"kind\":\"%s\",\"levels\":16}}}",
             epochs, kind);
    return s;
}

static double run_bpd(const char *kind, const nf_data *all, int epochs, nf_job_result *res) {
    nf_job j;
    char err[300] = "";
    const char *js = job_json(kind, epochs);
    int rc = nf_job_parse(js, strlen(js), 0, &j, err, sizeof err);
    CHECK_MSG(rc == 0, "parse: %s", err);
    if (rc) return NAN;
    rc = nf_job_run(&j, all, NULL, NULL, 0, res, err, sizeof err);
    CHECK_MSG(rc == 0, "%s run: %s", kind, err);
    nf_job_free(&j);
    if (rc) return NAN;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(res->metrics, "val_bits_per_dim");
    return cJSON_IsNumber(b) ? b->valuedouble : NAN;
}

/* Same data, flow and budget: the variational bound is never worse than
 * uniform noise (a small noise margin), and here clearly better, since a
 * smooth flow cannot make the blocky density uniform noise needs. */
TEST_T(vdeq_beats_uniform_bits_per_dim, 120) {
#ifdef NF_DOUBLE
    return; /* a float32 product test */
#endif
    nf_data all = {0};
    pixel_rows(&all, 6000, 11);
    nf_job_result ru, rv;
    double bu = run_bpd("uniform", &all, 15, &ru);
    double bv = run_bpd("variational", &all, 15, &rv);
    /* the discrete entropy of the rows, for reference */
    double H = 0;
    {
        static int cnt[16 * 16];
        memset(cnt, 0, sizeof cnt);
        for (int64_t i = 0; i < all.n; i++) cnt[(int)all.x[2 * i] * 16 + (int)all.x[2 * i + 1]]++;
        for (int k = 0; k < 16 * 16; k++)
            if (cnt[k]) H -= cnt[k] / (double)all.n * log2(cnt[k] / (double)all.n) / 2;
    }
    printf("    val bits/dim: uniform %.4f, variational %.4f (empirical entropy %.4f)\n", bu, bv, H);
    CHECK_MSG(bv <= bu + 0.01, "variational %.4f worse than uniform %.4f", bv, bu);
    /* here it is clearly better (about 0.06 bits/dim) */
    CHECK_MSG(bv < bu - 0.02, "variational %.4f not clearly better than uniform %.4f", bv, bu);
    CHECK_MSG(bv > H - 0.1, "variational %.4f below the entropy %.4f", bv, H);
    const cJSON *dq = rv.metrics ? cJSON_GetObjectItemCaseSensitive(rv.metrics, "dequantize") : NULL;
    const cJSON *k = dq ? cJSON_GetObjectItemCaseSensitive(dq, "kind") : NULL;
    CHECK(cJSON_IsString(k) && !strcmp(k->valuestring, "variational"));
    nf_job_result_free(&ru);
    nf_job_result_free(&rv);
    nf_data_free(&all);
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Model file with a dequantizer: version 2, header fields, scores equal to
 * the bound with the fixed seed, identical after reload and re-save,
 * corruption refused; uniform models stay version 1. */
TEST(vdeq_model_file_round_trip) {
    nf_data all = {0};
    pixel_rows(&all, 800, 12);
    nf_job_result res;
    run_bpd("variational", &all, 1, &res);
    REQUIRE(res.model);
    const unsigned char *b = res.model;
    CHECK_EQ_INT(le32(b + 4), 2);
    nf_model *m = NULL;
    char err[300] = "";
    REQUIRE(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
    REQUIRE(m->dequantizer);
    CHECK(m->dequantize == 1 && m->levels == 16);
    CHECK_EQ_INT(nf_flow_dim(m->dequantizer), 2);
    CHECK_EQ_INT(nf_flow_context_dim(m->dequantizer), 2);
    const cJSON *h = m->header;
    const cJSON *fv = cJSON_GetObjectItemCaseSensitive(h, "format_version");
    CHECK(cJSON_IsNumber(fv) && fv->valuedouble == 2);
    const cJSON *dqr = cJSON_GetObjectItemCaseSensitive(h, "dequantizer");
    CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(dqr, "flow")));
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(h, "preprocess");
    const cJSON *dq = cJSON_GetObjectItemCaseSensitive(pp, "dequantize");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(dq, "kind");
    CHECK(cJSON_IsString(kind) && !strcmp(kind->valuestring, "variational"));
    const cJSON *lk = cJSON_GetObjectItemCaseSensitive(h, "likelihood");
    CHECK(cJSON_IsString(lk) && !strcmp(lk->valuestring, "dequantized_lower_bound"));
    /* scores: the bound, each row's eps seeded by nf_model_row_seed (model.h),
     * reproducible, whatever the chunk */
    enum { N = 100 };
    nf_ws *w, *w7;
    REQUIRE(nf_ws_create(m->flow, 64, &w) == 0 && nf_ws_create(m->flow, 7, &w7) == 0);
    nf_real lp1[N], lp2[N], lp3[N];
    CHECK(nf_model_log_prob(m, w, all.x, NULL, N, lp1) == 0);
    CHECK(nf_model_log_prob(m, w7, all.x, NULL, N, lp3) == 0);
    for (int i = 0; i < N; i++) {
        nf_rng r;
        nf_rng_seed(&r, nf_model_row_seed(m, all.x + 2 * i, NULL, 0));
        CHECK(nf_vdeq_log_prob(m->flow, w, m->dequantizer, all.x + 2 * i, NULL, 1, 16, &r, lp2 + i) == 0);
        CHECK_CLOSE(lp2[i], lp1[i], 1e-4, 1e-5); /* one row: the GEMV path's rounding */
    }
    for (int i = 0; i < N; i++) {
        CHECK(isfinite(lp1[i]));
        CHECK_CLOSE(lp3[i], lp1[i], 1e-4, 1e-5);
    }
    /* reload: identical scores; re-save: identical bytes */
    nf_model *m2 = NULL;
    REQUIRE(nf_model_load(res.model, res.model_len, &m2, err, sizeof err) == 0);
    CHECK(nf_model_log_prob(m2, w, all.x, NULL, N, lp2) == 0);
    CHECK(memcmp(lp1, lp2, sizeof lp1) == 0);
    void *again = NULL;
    size_t alen = 0;
    const cJSON *ca = cJSON_GetObjectItemCaseSensitive(h, "created_at");
    REQUIRE(nf_model_save_ex(m2->flow, m2->dequantizer, pp, cJSON_GetObjectItemCaseSensitive(h, "metrics"),
                             cJSON_IsString(ca) ? ca->valuestring : NULL, &again, &alen) == 0);
    CHECK(alen == res.model_len && memcmp(again, res.model, alen) == 0);
    free(again);
    /* corruption anywhere is refused */
    unsigned char *mb = res.model;
    for (size_t pos = 0; pos < res.model_len; pos += res.model_len / 9 + 1) {
        mb[pos] ^= 0x20;
        nf_model *bad = NULL;
        int rc = nf_model_load(mb, res.model_len, &bad, err, sizeof err);
        CHECK_MSG(rc == NF_ECORRUPT || rc == NF_EFORMAT, "flip at %zu: rc %d", pos, rc);
        CHECK(bad == NULL);
        mb[pos] ^= 0x20;
    }
    nf_model *bad = NULL;
    CHECK(nf_model_load(mb, res.model_len - 5, &bad, err, sizeof err) != 0);
    /* uniform models are still written (and read) as version 1 */
    nf_job_result ru;
    run_bpd("uniform", &all, 1, &ru);
    REQUIRE(ru.model);
    CHECK_EQ_INT(le32((const unsigned char *)ru.model + 4), 1);
    nf_model *mu = NULL;
    REQUIRE(nf_model_load(ru.model, ru.model_len, &mu, err, sizeof err) == 0);
    CHECK(mu->dequantizer == NULL && mu->dequantize == 1);
    nf_model_free(mu);
    nf_job_result_free(&ru);
    nf_ws_free(w);
    nf_ws_free(w7);
    nf_model_free(m);
    nf_model_free(m2);
    nf_job_result_free(&res);
    nf_data_free(&all);
}

typedef struct {
    void *blob;
    size_t len;
    int64_t at;
} ckpt;

static int on_ckpt(void *u, void *state, size_t len, int64_t step) {
    ckpt *c = u;
    if (step != c->at) return 0;
    c->blob = malloc(len);
    memcpy(c->blob, state, len);
    c->len = len;
    return NF_ECANCELLED;
}

static const char *F2 = "{\"dim\":2,\"layers\":["
                        "{\"type\":\"elementwise_affine\",\"shift\":[8.5,8.5],\"scale\":[2,2]},"
                        "{\"type\":\"actnorm\"},"
                        "{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[16]},"
                        "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[16]}]}";
static const char *QQ2 = "{\"dim\":2,\"context_dim\":2,\"layers\":["
                         "{\"type\":\"affine_coupling\",\"mask\":\"even\",\"hidden\":[16]},"
                         "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[16]}]}";

static nf_trainer *vtrainer(nf_flow *f, nf_flow *q, const nf_train_config *c, const nf_data *d) {
    nf_trainer *t = NULL;
    char err[200] = "";
    CHECK(nf_trainer_create(f, c, d->x, 1000, d->x + 2000, 200, &t, err, sizeof err) == 0);
    if (t && q) CHECK_MSG(nf_trainer_set_dequantizer(t, q, err, sizeof err) == 0, "%s", err);
    return t;
}

/* N steps straight equal N/2 steps, state blob, fresh flows and trainer,
 * the rest: both flows bit for bit (float build, see test_train.c). */
TEST(vdeq_resume_is_bit_identical) {
#ifdef NF_DOUBLE
    return;
#endif
    nf_data d = {0};
    pixel_rows(&d, 1200, 13);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 3;
    c.batch_size = 64;
    c.lr = 2e-3;
    c.schedule = NF_SCHED_COSINE;
    c.warmup_steps = 5;
    c.clip_grad_norm = 2; /* clipping by the global norm over both flows is exercised */
    c.dequantize = 1;
    c.levels = 16;
    c.log_every = 0;
    c.seed = 5;
    nf_flow *fa = make(F2), *qa = make(QQ2);
    REQUIRE(fa && qa);
    nf_trainer *ta = vtrainer(fa, qa, &c, &d);
    REQUIRE(ta);
    CHECK(nf_trainer_run(ta, NULL) == 0);
    /* interrupted at step 20 (15 steps per epoch) */
    nf_flow *fb = make(F2), *qb = make(QQ2);
    nf_trainer *tb = vtrainer(fb, qb, &c, &d);
    REQUIRE(tb);
    ckpt k = {.at = 20};
    nf_train_hooks h = {.user = &k, .checkpoint = on_ckpt, .checkpoint_every = 1};
    CHECK(nf_trainer_run(tb, &h) == NF_ECANCELLED);
    REQUIRE(k.blob);
    nf_trainer_free(tb);
    nf_flow_free(fb);
    nf_flow_free(qb);
    nf_flow *fd = make(F2), *qd = make(QQ2);
    nf_trainer *td = vtrainer(fd, qd, &c, &d);
    REQUIRE(td);
    CHECK(nf_trainer_load_state(td, k.blob, k.len) == 0);
    CHECK(nf_trainer_run(td, NULL) == 0);
    CHECK(memcmp(nf_flow_params(fa), nf_flow_params(fd), nf_flow_num_params(fa) * sizeof(nf_real)) == 0);
    CHECK(memcmp(nf_flow_params(qa), nf_flow_params(qd), nf_flow_num_params(qa) * sizeof(nf_real)) == 0);
    nf_train_metrics ma, md;
    nf_trainer_metrics(ta, &ma);
    nf_trainer_metrics(td, &md);
    CHECK(ma.best_val_loss == md.best_val_loss && isfinite(ma.best_val_loss));
    CHECK(ma.skipped_batches == 0);
    /* the q was trained: no longer the identity */
    double s = 0;
    for (size_t i = 0; i < nf_flow_num_params(qa); i++) s += fabs(nf_flow_params(qa)[i]);
    CHECK(s > 0);
    /* a trainer without a dequantizer refuses the blob, and vice versa */
    nf_flow *fe = make(F2);
    nf_trainer *te = vtrainer(fe, NULL, &c, &d);
    CHECK(nf_trainer_load_state(te, k.blob, k.len) == NF_EFORMAT);
    void *ub;
    size_t ul;
    REQUIRE(nf_trainer_save_state(te, &ub, &ul) == 0);
    CHECK(nf_trainer_load_state(td, ub, ul) == NF_EFORMAT);
    free(ub);
    ((unsigned char *)k.blob)[k.len - 100] ^= 1;
    CHECK(nf_trainer_load_state(td, k.blob, k.len) == NF_ECORRUPT);
    free(k.blob);
    nf_trainer_free(te);
    nf_flow_free(fe);
    nf_trainer_free(ta);
    nf_trainer_free(td);
    nf_flow_free(fa);
    nf_flow_free(qa);
    nf_flow_free(fd);
    nf_flow_free(qd);
    nf_data_free(&d);
}

/* The job accepts "variational" (with an optional flow for q), and the
 * default q for D = 1 and D = 3 is a valid flow that starts as v = 1.6 eps. */
TEST(vdeq_job_parse_accepts_variational) {
    const char *pre = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},"
                      "\"preprocess\":{\"dequantize\":";
    struct { const char *dq; int ok; const char *needle; } cases[] = {
        {"{\"kind\":\"variational\",\"levels\":64}", 1, NULL},
        {"{\"kind\":\"variational\",\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]}}", 1, NULL},
        {"{\"kind\":\"variational\",\"flow\":{\"layers\":[{\"type\":\"maf\"}]}}", 1, NULL},
        {"{\"kind\":\"uniform\",\"flow\":{\"preset\":\"realnvp\"}}", 0, "flow"},
        {"{\"kind\":\"variational\",\"flow\":{\"preset\":\"realnvp\",\"dim\":2}}", 0, "dim"},
        {"{\"kind\":\"variational\",\"flow\":{}}", 0, "flow"},
        {"{\"kind\":\"fancy\"}", 0, "kind"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char js[600], err[300] = "";
        snprintf(js, sizeof js, "%s%s}}", pre, cases[i].dq);
        nf_job j;
        int rc = nf_job_parse(js, strlen(js), 0, &j, err, sizeof err);
        CHECK_MSG((rc == 0) == cases[i].ok, "case %zu: rc %d (%s)", i, rc, err);
        if (rc == 0) {
            CHECK(j.variational == 1 && j.dequantize == 1);
            CHECK_EQ_INT(j.levels, i == 0 ? 64 : 256);
            char *qs = nf_job_dequantizer_spec(&j, 3, err, sizeof err);
            REQUIRE(qs);
            nf_flow *q = make(qs);
            free(qs);
            CHECK(q && nf_flow_dim(q) == 3 && nf_flow_context_dim(q) == 3);
            nf_flow_free(q);
            nf_job_free(&j);
        } else if (cases[i].needle) {
            CHECK_MSG(strstr(err, cases[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                      cases[i].needle);
        }
    }
    /* the default q, D = 1 and 3: a fresh one maps eps to 1.6 eps */
    char js[600], err[300] = "";
    snprintf(js, sizeof js, "%s{\"kind\":\"variational\",\"levels\":8}}}", pre);
    nf_job j;
    REQUIRE(nf_job_parse(js, strlen(js), 0, &j, err, sizeof err) == 0);
    for (int D = 1; D <= 3; D += 2) {
        char *qs = nf_job_dequantizer_spec(&j, D, err, sizeof err);
        REQUIRE(qs);
        nf_flow *q = make(qs);
        free(qs);
        REQUIRE(q);
        CHECK(!strcmp(nf_flow_layer_type(q, 0), D == 1 ? "maf" : "affine_coupling"));
        nf_ws *w;
        REQUIRE(nf_ws_create(q, 4, &w) == 0);
        nf_real eps[12], c[12], v[12], ld[4];
        for (int i = 0; i < 4 * D; i++) {
            eps[i] = (nf_real)(0.3 * i - 1);
            c[i] = (nf_real)(0.1 * i - 0.5);
        }
        REQUIRE(nf_flow_transform_grad(q, w, eps, c, 4, 0, NULL, NULL, v, ld, NULL, NULL) == 0);
        for (int i = 0; i < 4 * D; i++) CHECK_CLOSE(v[i], 1.6 * eps[i], 1e-5, 1e-5);
        for (int b = 0; b < 4; b++) CHECK_CLOSE(ld[b], D * log(1.6), 1e-5, 1e-5);
        nf_ws_free(w);
        nf_flow_free(q);
    }
    nf_job_free(&j);
}
