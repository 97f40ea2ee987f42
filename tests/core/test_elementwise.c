/* test_elementwise.c: actnorm, permute, leaky_relu, batchnorm, logit and
 * elementwise_affine.  The generic checks (round trip, dense Jacobian,
 * finite-difference gradients in the double build, large inputs) run through
 * lc_check_layer; the rest drive a single nf_layer directly to test
 * data-dependent init, running statistics, out-of-support rows and to_json
 * round trips. */
#include "../test.h"
#include "layercheck.h"

/* ---- a single layer driven without a flow ------------------------------- */
typedef struct {
    nf_layer L;
    nf_real *params, *grad, *buf, *ws;
} tl;

static int tl_make(tl *t, nf_layer_ctor ctor, const char *spec, int D, int C, int maxB) {
    char err[256] = "";
    memset(t, 0, sizeof *t);
    t->L.D = D;
    t->L.C = C;
    cJSON *j = cJSON_Parse(spec);
    if (!j) return NF_EINVAL;
    int rc = ctor(&t->L, j, err, sizeof err);
    cJSON_Delete(j);
    if (rc < 0) return rc;
    t->params = calloc(t->L.nparams + 1, sizeof(nf_real));
    t->grad = calloc(t->L.nparams + 1, sizeof(nf_real));
    t->buf = calloc(t->L.nbuffers + 1, sizeof(nf_real));
    t->ws = calloc(t->L.ops->ws_size(&t->L, maxB) + 1, sizeof(nf_real));
    nf_rng r;
    nf_rng_seed(&r, 1);
    t->L.ops->init(&t->L, t->params, t->buf, &r);
    return 0;
}

static void tl_free(tl *t) {
    t->L.ops->destroy(&t->L);
    free(t->params);
    free(t->grad);
    free(t->buf);
    free(t->ws);
}

static nf_ctx tl_ctx(tl *t, int B, int training) {
    nf_ctx c = {.params = t->params, .grad = t->grad, .buffers = t->buf, .ws = t->ws, .B = B,
                .training = training};
    return c;
}

/* canonical JSON of a layer, caller frees */
static char *tl_json(tl *t, const char *type) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    t->L.ops->to_json(&t->L, o);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ---- generic checks -------------------------------------------------------- */
static void check_dims(const char *spec, int training) {
    static const int Ds[] = {1, 3, 6};
    for (int k = 0; k < 3; k++) {
        lc_opts o = {.D = Ds[k], .C = k == 1 ? 2 : 0, .training = training, .seed = 11 + k};
        CHECK_MSG(lc_check_layer(spec, &o) == 0, "%s D=%d", spec, Ds[k]);
    }
}

TEST(elementwise_actnorm_layercheck) {
    check_dims("{\"type\":\"actnorm\"}", 0);
    check_dims("{\"type\":\"actnorm\",\"data_init\":false}", 0);
}

TEST(elementwise_permute_layercheck) {
    check_dims("{\"type\":\"permute\"}", 0);
    check_dims("{\"type\":\"permute\",\"order\":\"random\",\"seed\":7}", 0);
    lc_opts o = {.D = 3, .C = 2};
    CHECK(lc_check_layer("{\"type\":\"permute\",\"order\":[1,2,0]}", &o) == 0);
}

TEST(elementwise_leaky_relu_layercheck) {
    check_dims("{\"type\":\"leaky_relu\"}", 0);
    check_dims("{\"type\":\"leaky_relu\",\"alpha\":0.3}", 0);
}

TEST(elementwise_batchnorm_layercheck) {
    check_dims("{\"type\":\"batchnorm\"}", 1);
    check_dims("{\"type\":\"batchnorm\"}", 0);
    check_dims("{\"type\":\"batchnorm\",\"momentum\":0.2,\"eps\":0.001}", 1);
}

TEST(elementwise_logit_layercheck) {
    static const int Ds[] = {1, 3, 6};
    for (int k = 0; k < 3; k++) {
        lc_opts o = {.D = Ds[k], .C = k == 1 ? 2 : 0, .in_scale = 0.1, .in_offset = 0.5,
                     .skip_large = 1, .seed = 5 + k};
        CHECK_MSG(lc_check_layer("{\"type\":\"logit\"}", &o) == 0, "D=%d", Ds[k]);
        CHECK_MSG(lc_check_layer("{\"type\":\"logit\",\"alpha\":0.05}", &o) == 0, "D=%d", Ds[k]);
    }
}

TEST(elementwise_affine_layercheck) {
    lc_opts o1 = {.D = 1};
    CHECK(lc_check_layer("{\"type\":\"elementwise_affine\",\"shift\":[0.5],\"scale\":[2]}",
                         &o1) == 0);
    lc_opts o3 = {.D = 3, .C = 2};
    CHECK(lc_check_layer("{\"type\":\"elementwise_affine\",\"shift\":[0.5,-1,2],"
                         "\"scale\":[2,0.25,3]}", &o3) == 0);
    lc_opts o6 = {.D = 6};
    CHECK(lc_check_layer("{\"type\":\"elementwise_affine\",\"shift\":[1,2,3,4,5,6],"
                         "\"scale\":[0.1,0.2,0.5,1,2,10]}", &o6) == 0);
    CHECK(lc_check_layer("{\"type\":\"elementwise_affine\"}", &o6) == 0);
}

/* ---- finite-difference gradient of L = sum r1 z + sum r2 logdet --------- */
#ifdef NF_DOUBLE
static double fd_loss(tl *t, const nf_real *x, int B, int training, const nf_real *r1,
                      const nf_real *r2, nf_real *z, nf_real *ld) {
    nf_ctx c = tl_ctx(t, B, training);
    memset(ld, 0, (size_t)B * sizeof *ld);
    t->L.ops->inverse(&t->L, &c, x, z, ld);
    double s = 0;
    for (int i = 0; i < B * t->L.D; i++) s += r1[i] * z[i];
    for (int b = 0; b < B; b++) s += r2[b] * ld[b];
    return s;
}

/* returns the number of mismatching entries */
static int fd_check(tl *t, nf_real *x, int B, int training) {
    int D = t->L.D, bad = 0;
    size_t n = (size_t)B * D;
    nf_real *r1 = malloc(n * sizeof *r1), *r2 = malloc(B * sizeof *r2), *z = malloc(n * sizeof *z),
            *ld = malloc(B * sizeof *ld), *dx = malloc(n * sizeof *dx);
    nf_rng r;
    nf_rng_seed(&r, 3);
    lc_randn(&r, r1, n, 1, 0);
    lc_randn(&r, r2, B, 1, 0);
    fd_loss(t, x, B, training, r1, r2, z, ld);
    memset(t->grad, 0, t->L.nparams * sizeof(nf_real));
    nf_ctx c = tl_ctx(t, B, training);
    t->L.ops->backward(&t->L, &c, x, z, r1, r2, dx);
    const double h = 1e-6;
    for (size_t i = 0; i < n + t->L.nparams; i++) {
        nf_real *p = i < n ? &x[i] : &t->params[i - n];
        nf_real keep = *p;
        *p = keep + h;
        double lp = fd_loss(t, x, B, training, r1, r2, z, ld);
        *p = keep - h;
        double lm = fd_loss(t, x, B, training, r1, r2, z, ld);
        *p = keep;
        double fd = (lp - lm) / (2 * h), an = i < n ? dx[i] : t->grad[i - n];
        if (!(fabs(fd - an) <= 1e-6 + 1e-5 * fabs(fd))) {
            test_fail_at(__FILE__, __LINE__, "%s grad %zu: analytic %.10g fd %.10g",
                         t->L.ops->type, i, an, fd);
            bad++;
        }
    }
    free(r1), free(r2), free(z), free(ld), free(dx);
    return bad;
}
#endif

/* Inputs kept at least 0.1 away from the kink at 0 so central differences
 * never straddle it. */
TEST(elementwise_leaky_relu_away_from_kink) {
    tl t;
    REQUIRE(tl_make(&t, nf_leaky_relu_create, "{\"type\":\"leaky_relu\",\"alpha\":0.2}", 4, 0,
                    8) == 0);
    nf_real x[32], z[32], x2[32], ld[8] = {0}, ld2[8] = {0};
    nf_rng r;
    nf_rng_seed(&r, 9);
    for (int i = 0; i < 32; i++) {
        double u = nf_rng_normal(&r);
        x[i] = (nf_real)(u >= 0 ? u + 0.1 : u - 0.1);
    }
    nf_ctx c = tl_ctx(&t, 8, 0);
    CHECK(t.L.ops->inverse(&t.L, &c, x, z, ld) == 0);
    CHECK(t.L.ops->forward(&t.L, &c, z, x2, ld2) == 0);
    for (int b = 0; b < 8; b++) {
        int neg = 0;
        for (int d = 0; d < 4; d++) neg += x[b * 4 + d] < 0;
        CHECK_CLOSE(ld[b], -neg * log(0.2), 1e-5, 1e-5);
        CHECK_CLOSE(ld[b] + ld2[b], 0, 1e-5, 0);
    }
    for (int i = 0; i < 32; i++) {
        CHECK_CLOSE(x2[i], x[i], 1e-6, 1e-6);
        CHECK_CLOSE(z[i], x[i] >= 0 ? x[i] : x[i] / 0.2, 1e-6, 1e-6);
    }
#ifdef NF_DOUBLE
    CHECK(fd_check(&t, x, 8, 0) == 0);
#endif
    tl_free(&t);
}

/* The hand-written training-mode backward (gradients through the batch mean
 * and variance and the log-det's variance term) against finite differences
 * of the inverse call, independent of layercheck. */
TEST(elementwise_batchnorm_training_grad) {
#ifdef NF_DOUBLE
    tl t;
    REQUIRE(tl_make(&t, nf_batchnorm_create, "{\"type\":\"batchnorm\"}", 3, 0, 6) == 0);
    nf_real x[18];
    nf_rng r;
    nf_rng_seed(&r, 4);
    lc_randn(&r, x, 18, 2, 1);
    lc_randn(&r, t.params, 6, 0.3, 0);
    CHECK(fd_check(&t, x, 6, 1) == 0);
    t.buf[0] = 0.5, t.buf[3] = 2.0;
    CHECK(fd_check(&t, x, 6, 0) == 0);
    tl_free(&t);
#endif
}

TEST(elementwise_actnorm_data_init) {
    enum { B = 64, D = 3 };
    tl t;
    REQUIRE(tl_make(&t, nf_actnorm_create, "{\"type\":\"actnorm\"}", D, 0, B) == 0);
    CHECK(t.buf[0] == 0);
    nf_real x[B * D], z[B * D], ld[B] = {0};
    nf_rng r;
    nf_rng_seed(&r, 2);
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++)
            x[b * D + d] = (nf_real)(nf_rng_normal(&r) * (d + 0.5) * 3 + 10 * d - 4);
    t.L.ops->data_init(&t.L, t.params, t.buf, x, B);
    CHECK(t.buf[0] == 1);
    nf_ctx c = tl_ctx(&t, B, 0);
    CHECK(t.L.ops->inverse(&t.L, &c, x, z, ld) == 0);
    for (int d = 0; d < D; d++) {
        double s = 0, ss = 0;
        for (int b = 0; b < B; b++) s += z[b * D + d];
        for (int b = 0; b < B; b++) ss += (z[b * D + d] - s / B) * (z[b * D + d] - s / B);
        CHECK_CLOSE(s / B, 0, 1e-5, 0);
        CHECK_CLOSE(ss / B, 1, 1e-4, 0);
    }
    /* already initialised: a second batch changes nothing */
    nf_real keep[2 * D];
    memcpy(keep, t.params, sizeof keep);
    for (int i = 0; i < B * D; i++) x[i] *= 5;
    t.L.ops->data_init(&t.L, t.params, t.buf, x, B);
    CHECK(memcmp(keep, t.params, sizeof keep) == 0);
    tl_free(&t);

    /* "data_init":false starts initialised; to_json keeps the field */
    REQUIRE(tl_make(&t, nf_actnorm_create, "{\"type\":\"actnorm\",\"data_init\":false}", D, 0,
                    B) == 0);
    CHECK(t.buf[0] == 1);
    char *s = tl_json(&t, "actnorm");
    CHECK_MSG(strstr(s, "\"data_init\":false") != NULL, "%s", s);
    free(s);
    tl_free(&t);
}

TEST(elementwise_batchnorm_running_stats) {
    enum { B = 32, D = 2 };
    tl t;
    REQUIRE(tl_make(&t, nf_batchnorm_create, "{\"type\":\"batchnorm\",\"momentum\":0.1}", D, 0,
                    B) == 0);
    CHECK(t.buf[0] == 0 && t.buf[1] == 0 && t.buf[2] == 1 && t.buf[3] == 1);
    nf_real x[B * D], z[B * D], ld[B];
    nf_rng r;
    nf_rng_seed(&r, 8);
    for (int b = 0; b < B; b++) {
        x[b * D] = (nf_real)(3 + 2 * nf_rng_normal(&r));
        x[b * D + 1] = (nf_real)(-1 + 0.5 * nf_rng_normal(&r));
    }
    double mean[D] = {0}, var[D] = {0};
    for (int d = 0; d < D; d++) {
        for (int b = 0; b < B; b++) mean[d] += x[b * D + d] / (double)B;
        for (int b = 0; b < B; b++)
            var[d] += (x[b * D + d] - mean[d]) * (x[b * D + d] - mean[d]) / B;
    }
    /* one step: r = 0.9 r + 0.1 batch */
    nf_ctx c = tl_ctx(&t, B, 1);
    memset(ld, 0, sizeof ld);
    CHECK(t.L.ops->inverse(&t.L, &c, x, z, ld) == 0);
    for (int d = 0; d < D; d++) {
        CHECK_CLOSE(t.buf[d], 0.1 * mean[d], 1e-5, 1e-5);
        CHECK_CLOSE(t.buf[D + d], 0.9 + 0.1 * var[d], 1e-5, 1e-5);
    }
    /* training output is standardised with the batch stats */
    for (int d = 0; d < D; d++) {
        double s = 0, ss = 0;
        for (int b = 0; b < B; b++) s += z[b * D + d], ss += z[b * D + d] * z[b * D + d];
        CHECK_CLOSE(s / B, 0, 1e-5, 0);
        CHECK_CLOSE(ss / B, 1, 1e-3, 0);
    }
    CHECK_CLOSE(ld[0], -0.5 * (log(var[0] + 1e-5) + log(var[1] + 1e-5)), 1e-4, 1e-5);
    /* many steps converge to the batch stats; eval leaves them alone */
    for (int it = 0; it < 300; it++) t.L.ops->inverse(&t.L, &c, x, z, NULL);
    for (int d = 0; d < D; d++) {
        CHECK_CLOSE(t.buf[d], mean[d], 1e-4, 1e-4);
        CHECK_CLOSE(t.buf[D + d], var[d], 1e-4, 1e-4);
    }
    nf_real keep[2 * D];
    memcpy(keep, t.buf, sizeof keep);
    nf_ctx ce = tl_ctx(&t, B, 0);
    t.L.ops->inverse(&t.L, &ce, x, z, NULL);
    CHECK(memcmp(keep, t.buf, sizeof keep) == 0);
    tl_free(&t);
}

TEST(elementwise_logit_out_of_support) {
    enum { B = 4, D = 2 };
    tl t;
    REQUIRE(tl_make(&t, nf_logit_create, "{\"type\":\"logit\",\"alpha\":0.01}", D, 0, B) == 0);
    nf_real x[B * D] = {0.2f, 0.7f, 1.5f, 0.3f, 0.5f, -0.2f, 0.9f, 0.1f};
    nf_real z[B * D], ld[B] = {0}, dx[B * D], dz[B * D], dl[B];
    nf_ctx c = tl_ctx(&t, B, 0);
    CHECK_EQ_INT(t.L.ops->inverse(&t.L, &c, x, z, ld), NF_ENONFINITE);
    CHECK(isinf(ld[1]) && ld[1] < 0);
    CHECK(isinf(ld[2]) && ld[2] < 0);
    CHECK(z[2] == 0 && z[5] == 0);
    for (int b = 0; b < B; b += 3) {
        double e = 0;
        for (int d = 0; d < D; d++) {
            double y = 0.01 + 0.98 * x[b * D + d];
            CHECK_CLOSE(z[b * D + d], log(y / (1 - y)), 1e-5, 1e-5);
            e += log(0.98 / (y * (1 - y)));
        }
        CHECK(isfinite(ld[b]));
        CHECK_CLOSE(ld[b], e, 1e-5, 1e-5);
    }
    for (int i = 0; i < B * D; i++) dz[i] = 1;
    for (int b = 0; b < B; b++) dl[b] = 1;
    t.L.ops->backward(&t.L, &c, x, z, dz, dl, dx);
    for (int i = 0; i < B * D; i++) {
        CHECK(isfinite(dx[i]));
        if (i >= 2 && i < 6) CHECK(dx[i] == 0);
    }
    tl_free(&t);
}

TEST(elementwise_permute_json_roundtrip) {
    tl a, b;
    REQUIRE(tl_make(&a, nf_permute_create, "{\"type\":\"permute\",\"order\":\"random\",\"seed\":3}",
                    9, 0, 1) == 0);
    char *s = tl_json(&a, "permute");
    REQUIRE(tl_make(&b, nf_permute_create, s, 9, 0, 1) == 0);
    nf_real x[9], za[9], zb[9];
    for (int i = 0; i < 9; i++) x[i] = (nf_real)i;
    nf_ctx ca = tl_ctx(&a, 1, 0), cb = tl_ctx(&b, 1, 0);
    a.L.ops->inverse(&a.L, &ca, x, za, NULL);
    b.L.ops->inverse(&b.L, &cb, x, zb, NULL);
    CHECK(memcmp(za, zb, sizeof za) == 0);
    int ident = 1;
    for (int i = 0; i < 9; i++) ident &= za[i] == x[i];
    CHECK(!ident);
    char *s2 = tl_json(&b, "permute");
    CHECK_MSG(strcmp(s, s2) == 0, "%s vs %s", s, s2);
    free(s), free(s2);
    tl_free(&a), tl_free(&b);

    REQUIRE(tl_make(&a, nf_permute_create, "{\"type\":\"permute\"}", 4, 0, 1) == 0);
    s = tl_json(&a, "permute");
    CHECK_MSG(strstr(s, "\"order\":[3,2,1,0]") != NULL, "%s", s);
    free(s);
    tl_free(&a);
}

TEST(elementwise_affine_json_exact) {
    const char *spec = "{\"type\":\"elementwise_affine\",\"shift\":[0.1,-3.0000000000000004],"
                       "\"scale\":[1e-7,0.30000000000000004]}";
    tl a, b;
    REQUIRE(tl_make(&a, nf_elementwise_affine_create, spec, 2, 0, 1) == 0);
    CHECK_EQ_INT(a.L.nparams, 0);
    char *s = tl_json(&a, "elementwise_affine");
    REQUIRE(tl_make(&b, nf_elementwise_affine_create, s, 2, 0, 1) == 0);
    char *s2 = tl_json(&b, "elementwise_affine");
    CHECK_MSG(strcmp(s, s2) == 0, "%s vs %s", s, s2);
    cJSON *j = cJSON_Parse(s);
    const cJSON *sh = cJSON_GetObjectItem(j, "shift"), *sc = cJSON_GetObjectItem(j, "scale");
    CHECK(cJSON_GetArrayItem(sh, 1)->valuedouble == -3.0000000000000004);
    CHECK(cJSON_GetArrayItem(sc, 0)->valuedouble == 1e-7);
    CHECK(cJSON_GetArrayItem(sc, 1)->valuedouble == 0.30000000000000004);
    cJSON_Delete(j);
    free(s), free(s2);
    tl_free(&a), tl_free(&b);
}

TEST(elementwise_bad_specs) {
    static const struct { nf_layer_ctor ctor; const char *spec; } bad[] = {
        {nf_leaky_relu_create, "{\"type\":\"leaky_relu\",\"alpha\":0}"},
        {nf_leaky_relu_create, "{\"type\":\"leaky_relu\",\"alpha\":-1}"},
        {nf_leaky_relu_create, "{\"type\":\"leaky_relu\",\"slope\":1}"},
        {nf_permute_create, "{\"type\":\"permute\",\"order\":[0,0,1]}"},
        {nf_permute_create, "{\"type\":\"permute\",\"order\":[0,1]}"},
        {nf_permute_create, "{\"type\":\"permute\",\"order\":\"sideways\"}"},
        {nf_batchnorm_create, "{\"type\":\"batchnorm\",\"eps\":0}"},
        {nf_batchnorm_create, "{\"type\":\"batchnorm\",\"momentum\":2}"},
        {nf_logit_create, "{\"type\":\"logit\",\"alpha\":0.5}"},
        {nf_actnorm_create, "{\"type\":\"actnorm\",\"data_init\":1}"},
        {nf_elementwise_affine_create, "{\"type\":\"elementwise_affine\",\"scale\":[1,0,1]}"},
        {nf_elementwise_affine_create, "{\"type\":\"elementwise_affine\",\"shift\":[1,2]}"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tl t;
        int rc = tl_make(&t, bad[i].ctor, bad[i].spec, 3, 0, 1);
        CHECK_MSG(rc == NF_EINVAL, "%s accepted (rc %d)", bad[i].spec, rc);
        if (rc == 0) tl_free(&t);
    }
}

/* Through the flow: every layer's canonical config recreates the same flow
 * (same config text, same log-densities), and nf_flow_data_init drives
 * actnorm. */
TEST(elementwise_flow_config_roundtrip) {
    const char *spec =
        "{\"dim\":3,\"layers\":[{\"type\":\"elementwise_affine\",\"shift\":[0.1,0.2,0.3],"
        "\"scale\":[0.30000000000000004,2,4]},{\"type\":\"actnorm\"},"
        "{\"type\":\"permute\",\"order\":\"random\",\"seed\":5},"
        "{\"type\":\"leaky_relu\",\"alpha\":0.2},{\"type\":\"batchnorm\"}]}";
    char err[256] = "";
    nf_flow *f = NULL, *g = NULL;
    nf_ws *w = NULL, *wg = NULL;
    REQUIRE(nf_flow_create(spec, &f, err, sizeof err) == 0);
    char *cfg = nf_flow_config_json(f);
    REQUIRE(cfg != NULL);
    REQUIRE(nf_flow_create(cfg, &g, err, sizeof err) == 0);
    char *cfg2 = nf_flow_config_json(g);
    CHECK_MSG(strcmp(cfg, cfg2) == 0, "%s\nvs\n%s", cfg, cfg2);
    enum { B = 40 };
    nf_real x[B * 3], lp1[B], lp2[B], z[B * 3];
    nf_rng r;
    nf_rng_seed(&r, 6);
    lc_randn(&r, x, B * 3, 3, 2);
    REQUIRE(nf_ws_create(f, B, &w) == 0 && nf_ws_create(g, B, &wg) == 0);
    CHECK(nf_flow_data_init(f, w, x, NULL, B) == 0);
    CHECK(nf_flow_data_init(g, wg, x, NULL, B) == 0);
    CHECK(nf_flow_log_prob(f, w, x, NULL, B, lp1) == 0);
    CHECK(nf_flow_log_prob(g, wg, x, NULL, B, lp2) == 0);
    for (int b = 0; b < B; b++) CHECK(lp1[b] == lp2[b] && isfinite(lp1[b]));
    /* actnorm (layer 1) saw the standardised batch: its output after the
     * first two layers is zero mean, unit variance */
    nf_flow *h = NULL;
    nf_ws *wh = NULL;
    REQUIRE(nf_flow_create("{\"dim\":3,\"layers\":[{\"type\":\"actnorm\"}]}", &h, err,
                           sizeof err) == 0);
    REQUIRE(nf_ws_create(h, B, &wh) == 0);
    CHECK(nf_flow_data_init(h, wh, x, NULL, B) == 0);
    CHECK(nf_flow_encode(h, wh, x, NULL, B, z, NULL) == 0);
    for (int d = 0; d < 3; d++) {
        double s = 0, ss = 0;
        for (int b = 0; b < B; b++) s += z[b * 3 + d], ss += z[b * 3 + d] * z[b * 3 + d];
        CHECK_CLOSE(s / B, 0, 1e-5, 0);
        CHECK_CLOSE(ss / B, 1, 1e-4, 0);
    }
    free(cfg), free(cfg2);
    nf_ws_free(w), nf_ws_free(wg), nf_ws_free(wh);
    nf_flow_free(f), nf_flow_free(g), nf_flow_free(h);
}

/* An out-of-support row of a logit flow gets -inf, the others stay finite. */
TEST(elementwise_flow_logit_support) {
    char err[256] = "";
    nf_flow *f = NULL;
    nf_ws *w = NULL;
    REQUIRE(nf_flow_create("{\"dim\":2,\"layers\":[{\"type\":\"logit\"}]}", &f, err,
                           sizeof err) == 0);
    REQUIRE(nf_ws_create(f, 4, &w) == 0);
    nf_real x[6] = {0.3f, 0.6f, 1.2f, 0.5f, 0.1f, 0.9f}, lp[3];
    CHECK(nf_flow_log_prob(f, w, x, NULL, 3, lp) == 0);
    CHECK(isfinite(lp[0]) && isfinite(lp[2]));
    CHECK(isinf(lp[1]) && lp[1] < 0);
    nf_ws_free(w);
    nf_flow_free(f);
}
