/* test_conv_coupling.c: the image coupling layer (core/conv_coupling.c).
 * The generic layer checks on every transform x mask x network on small
 * images; a row longer than the image (the tail after a split) against the
 * same layer without it; which channels and pixels each mask transforms;
 * the identity (or fixed scale) at initialisation; the spec round trip and
 * bad specs; threads. */
#include "../test.h"
#include "../../core/conv.h"
#include "../../core/kern.h"
#include "layercheck.h"

#include <math.h>
#include <string.h>

/* ---- generic checks ------------------------------------------------------------------ */

static const char *const transforms[] = {
    "\"transform\":\"affine\"",                 /* scale sigmoid, the default */
    "\"transform\":\"affine\",\"scale\":\"exp\"",
    "\"transform\":\"additive\"",
    "\"transform\":\"spline\",\"bins\":4,\"tail_bound\":2.5",
};
static const char *const nets[] = {
    "\"hidden_channels\":4",
    "\"net\":\"resnet\",\"hidden_channels\":4,\"blocks\":1",
};

/* every mask and network with one transform; the images: channel masks on
 * 2x4x4, 4x2x2 and 3x3x2 (odd C: the halves differ), checkerboards on
 * 1x4x4 and 2x3x3 (odd sides) */
static void check_transform(int ti) {
    static const char *const masks[] = {"channel", "channel_odd", "checkerboard",
                                        "checkerboard_odd"};
    static const int chan_shapes[3][3] = {{2, 4, 4}, {4, 2, 2}, {3, 3, 2}};
    static const int cb_shapes[2][3] = {{1, 4, 4}, {2, 3, 3}};
    int k = 0;
    for (int m = 0; m < 4; m++)
        for (int n = 0; n < 2; n++, k++) {
            char spec[400];
            snprintf(spec, sizeof spec, "{\"type\":\"conv_coupling\",%s,\"mask\":\"%s\",%s}",
                     transforms[ti], masks[m], nets[n]);
            lc_opts o = {.B = 5, .seed = (uint64_t)(100 * ti + k)};
            const int *sh = m < 2 ? chan_shapes[(m + n + ti) % 3] : cb_shapes[(m + n + ti) % 2];
            memcpy(o.shape, sh, sizeof o.shape);
            if (ti == 3) {
                o.in_scale = 2.0; /* some inputs in the spline's tails */
                /* a conv net's outputs sum many taps: at noise 0.3 theta
                 * reaches bins whose slope is ~1e-5 inside, where float32
                 * z rounding alone moves the inverse by 1e-2 (float64
                 * passes either way) */
                o.param_noise = 0.1;
            }
            /* sampling divides by s = sigmoid(h + 2), which underflows for
             * the h that rows of size 1e3 give (Glow's layer does the same):
             * conv_coupling_sigmoid_large_rows checks the density direction */
            o.skip_large = ti == 0;
            CHECK_MSG(lc_check_layer(spec, &o) == 0, "%s on %dx%dx%d", spec, sh[0], sh[1], sh[2]);
        }
}

TEST(conv_coupling_affine_sigmoid_generic) { check_transform(0); }
TEST(conv_coupling_affine_exp_generic) { check_transform(1); }
TEST(conv_coupling_additive_generic) { check_transform(2); }
TEST(conv_coupling_spline_generic) { check_transform(3); }

/* ---- helpers ---------------------------------------------------------------------------- */

static nf_flow *make_flow(const char *spec) {
    nf_flow *f = NULL;
    char err[256] = "";
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", spec, err);
    return rc ? NULL : f;
}

/* The density direction of the sigmoid scale stays finite on rows of size
 * 1e3: log s = log sigmoid(h + 2) is computed without overflow. */
TEST(conv_coupling_sigmoid_large_rows) {
    nf_flow *f = make_flow("{\"shape\":[2,4,4],\"layers\":[{\"type\":\"conv_coupling\","
                           "\"hidden_channels\":4},{\"type\":\"conv_coupling\","
                           "\"mask\":\"checkerboard\",\"hidden_channels\":4}]}");
    REQUIRE(f);
    lc_perturb(f, 0.3, 6);
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create(f, 8, &w) == 0);
    nf_real x[8 * 32], z[8 * 32], ld[8];
    for (int i = 0; i < 8 * 32; i++) x[i] = (nf_real)((i % 2 ? 1e3 : -1e3) * ((i * 7) % 11) / 10.0);
    CHECK(nf_flow_encode(f, w, x, NULL, 8, z, ld) == 0);
    for (int i = 0; i < 8 * 32; i++) CHECK(isfinite(z[i]));
    for (int b = 0; b < 8; b++) CHECK(isfinite(ld[b]));
    nf_ws_free(w);
    nf_flow_free(f);
}

/* ---- a row longer than the image ---------------------------------------------------------
 * After a split the image is the front of the row.  No layer before this
 * one changes the shape here, so the layer is built by hand on rows of
 * 18 + 3 entries and compared with the same layer (same parameters) in a
 * flow on 18: the image part equal, the tail copied with gradient dz. */
TEST(conv_coupling_row_tail) {
    const char *layers[] = {
        "{\"type\":\"conv_coupling\",\"hidden_channels\":3}",
        "{\"type\":\"conv_coupling\",\"mask\":\"checkerboard_odd\",\"transform\":\"spline\","
        "\"bins\":3,\"hidden_channels\":3}",
    };
    for (int li = 0; li < 2; li++) {
        char spec[400], err[256] = "";
        snprintf(spec, sizeof spec, "{\"shape\":[2,3,3],\"layers\":[%s],\"seed\":5}", layers[li]);
        nf_flow *f = make_flow(spec);
        REQUIRE(f);
        lc_perturb(f, 0.3, 7);
        const int B = 4, n = 18, D = n + 3;
        cJSON *ls = cJSON_Parse(layers[li]);
        nf_layer L = {.D = D, .shape = {2, 3, 3}, .out_shape = {2, 3, 3}};
        REQUIRE(nf_conv_coupling_create(&L, ls, err, sizeof err) == 0);
        nf_layer *Lf = &f->layers[0];
        REQUIRE(L.nparams == Lf->nparams);
        nf_real *ws = calloc(L.ops->ws_size(&L, B) + 1, sizeof *ws);
        nf_real *wsf = calloc(Lf->ops->ws_size(Lf, B) + 1, sizeof *wsf);
        nf_real x[4 * 21], z[4 * 21], x2[4 * 21], dz[4 * 21], dx[4 * 21];
        nf_real xs[4 * 18], zs[4 * 18], dzs[4 * 18], dxs[4 * 18];
        nf_real ld[4] = {0}, ld2[4] = {0}, lds[4] = {0}, dl[4] = {0.5, -1, 2, 0.25};
        nf_rng r;
        nf_rng_seed(&r, 3);
        lc_randn(&r, x, (size_t)B * D, 1, 0);
        lc_randn(&r, dz, (size_t)B * D, 1, 0);
        for (int b = 0; b < B; b++) {
            memcpy(xs + b * n, x + b * D, n * sizeof *xs);
            memcpy(dzs + b * n, dz + b * D, n * sizeof *xs);
        }
        nf_real *grad = calloc(L.nparams, sizeof *grad), *gradf = calloc(L.nparams, sizeof *grad);
        nf_ctx c = {.params = f->params, .grad = grad, .ws = ws, .B = B};
        nf_ctx cf = {.params = f->params, .grad = gradf, .ws = wsf, .B = B};
        CHECK(L.ops->inverse(&L, &c, x, z, ld) == 0);
        CHECK(Lf->ops->inverse(Lf, &cf, xs, zs, lds) == 0);
        for (int b = 0; b < B; b++) {
            CHECK(ld[b] == lds[b]);
            for (int i = 0; i < D; i++)
                CHECK(z[b * D + i] == (i < n ? zs[b * n + i] : x[b * D + i]));
        }
        L.ops->backward(&L, &c, x, z, dz, dl, dx);
        Lf->ops->backward(Lf, &cf, xs, zs, dzs, dl, dxs);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < D; i++)
                CHECK(dx[b * D + i] == (i < n ? dxs[b * n + i] : dz[b * D + i]));
        CHECK(!memcmp(grad, gradf, L.nparams * sizeof *grad));
        CHECK(L.ops->forward(&L, &c, z, x2, ld2) == 0);
        for (int b = 0; b < B; b++) {
            CHECK_CLOSE(ld[b] + ld2[b], 0, 1e-5, 1e-5);
            for (int i = 0; i < D; i++) CHECK_CLOSE(x2[b * D + i], x[b * D + i], 1e-5, 1e-5);
        }
        L.ops->destroy(&L);
        cJSON_Delete(ls);
        free(ws);
        free(wsf);
        free(grad);
        free(gradf);
        nf_flow_free(f);
    }
}

/* ---- what each mask transforms ------------------------------------------------------------ */

/* changed[c*P + p] = 1 where some row's z differs from x */
static void changed_entries(const char *mask, const int shape[3], int *changed) {
    char spec[300];
    int n = shape[0] * shape[1] * shape[2], B = 3;
    snprintf(spec, sizeof spec,
             "{\"shape\":[%d,%d,%d],\"layers\":[{\"type\":\"conv_coupling\",\"mask\":\"%s\","
             "\"transform\":\"additive\",\"hidden_channels\":3}]}",
             shape[0], shape[1], shape[2], mask);
    nf_flow *f = make_flow(spec);
    nf_ws *w = NULL;
    memset(changed, 0, (size_t)n * sizeof *changed);
    if (!f || nf_ws_create(f, B, &w)) return;
    lc_perturb(f, 0.5, 1);
    nf_real *x = malloc((size_t)B * n * sizeof *x), *z = malloc((size_t)B * n * sizeof *z);
    nf_rng r;
    nf_rng_seed(&r, 2);
    lc_randn(&r, x, (size_t)B * n, 1, 0);
    CHECK(nf_flow_encode(f, w, x, NULL, B, z, NULL) == 0);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++) changed[i] |= z[b * n + i] != x[b * n + i];
    free(x);
    free(z);
    nf_ws_free(w);
    nf_flow_free(f);
}

TEST(conv_coupling_mask_layouts) {
    const int s3[3] = {3, 2, 3}, s2[3] = {2, 3, 3};
    int ch[18], odd[18];
    /* C = 3: "channel" passes channel 0 and transforms 1, 2; "channel_odd"
     * passes 1, 2 and transforms 0 */
    changed_entries("channel", s3, ch);
    changed_entries("channel_odd", s3, odd);
    for (int i = 0; i < 18; i++) {
        CHECK_EQ_INT(ch[i], i >= 6);
        CHECK_EQ_INT(odd[i], i < 6);
    }
    /* checkerboards: pixel (i, j) of every channel passes when i + j is even
     * (odd for "checkerboard_odd") */
    changed_entries("checkerboard", s2, ch);
    changed_entries("checkerboard_odd", s2, odd);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                int e = c * 9 + i * 3 + j;
                CHECK_EQ_INT(ch[e], (i + j) % 2 == 1);
                CHECK_EQ_INT(odd[e], (i + j) % 2 == 0);
            }
}

/* ---- initialisation ------------------------------------------------------------------------ */

/* A fresh layer: additive and "exp" are exactly the identity (the zero
 * last convolution gives t = 0, s = 0), spline the identity up to rounding,
 * "sigmoid" the fixed scale sigmoid(2) of the transformed entries. */
TEST(conv_coupling_fresh_layer) {
    const char *kinds[] = {"\"transform\":\"additive\"", "\"scale\":\"exp\"",
                           "\"transform\":\"spline\"", "\"scale\":\"sigmoid\""};
    const int B = 4, n = 4 * 3 * 3;
    for (int k = 0; k < 4; k++)
        for (int cb = 0; cb < 2; cb++) {
            char spec[300];
            snprintf(spec, sizeof spec,
                     "{\"shape\":[4,3,3],\"layers\":[{\"type\":\"conv_coupling\",%s,"
                     "\"mask\":\"%s\",\"hidden_channels\":5}],\"seed\":%d}",
                     kinds[k], cb ? "checkerboard" : "channel_odd", k);
            nf_flow *f = make_flow(spec);
            nf_ws *w = NULL;
            REQUIRE(f && nf_ws_create(f, B, &w) == 0);
            nf_real x[4 * 36], z[4 * 36], ld[4];
            nf_rng r;
            nf_rng_seed(&r, 9);
            lc_randn(&r, x, (size_t)B * n, 2, 0);
            REQUIRE(nf_flow_encode(f, w, x, NULL, B, z, ld) == 0);
            double s = 1 / (1 + exp(-2.0));
            int ntr = 0;
            for (int i = 0; i < n; i++) {
                int c = i / 9, p = i % 9, tr = cb ? (p / 3 + p % 3) % 2 == 1 : c < 2;
                ntr += tr;
                for (int b = 0; b < B; b++) {
                    nf_real xi = x[b * n + i], zi = z[b * n + i];
                    if (k < 2 || !tr) CHECK(zi == xi);
                    else if (k == 2) CHECK_CLOSE(zi, xi, 1e-6, 1e-6);
                    else CHECK_CLOSE(zi, xi * s, 1e-6, 1e-6);
                }
            }
            for (int b = 0; b < B; b++) {
                if (k < 2) CHECK(ld[b] == 0);
                else if (k == 2) CHECK_CLOSE(ld[b], 0, 1e-5, 0);
                else CHECK_CLOSE(ld[b], ntr * log(s), 1e-5, 1e-6);
            }
            nf_ws_free(w);
            nf_flow_free(f);
        }
}

/* ---- spec ---------------------------------------------------------------------------------- */

TEST(conv_coupling_spec_round_trip) {
    const char *specs[] = {
        "{\"shape\":[2,4,4],\"layers\":[{\"type\":\"conv_coupling\"}]}",
        "{\"shape\":[2,4,4],\"layers\":[{\"type\":\"conv_coupling\",\"transform\":\"spline\","
        "\"mask\":\"checkerboard_odd\",\"bins\":5,\"tail_bound\":4,\"net\":\"resnet\","
        "\"hidden_channels\":6,\"blocks\":3}]}",
        "{\"shape\":[3,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"transform\":\"additive\","
        "\"mask\":\"channel_odd\",\"hidden_channels\":7}]}",
        "{\"shape\":[3,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"scale\":\"exp\","
        "\"mask\":\"checkerboard\"}]}",
    };
    for (int i = 0; i < 4; i++) {
        nf_flow *f = make_flow(specs[i]);
        REQUIRE(f);
        char *cfg = nf_flow_config_json(f);
        REQUIRE(cfg);
        nf_flow *g = make_flow(cfg);
        REQUIRE(g);
        char *cfg2 = nf_flow_config_json(g);
        CHECK_MSG(cfg2 && !strcmp(cfg, cfg2), "%s\n vs %s", cfg, cfg2);
        CHECK(nf_flow_num_params(f) == nf_flow_num_params(g));
        /* every field is written out */
        cJSON *o = cJSON_Parse(cfg), *l = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "layers"), 0);
        const char *tr = cJSON_GetStringValue(cJSON_GetObjectItem(l, "transform"));
        REQUIRE(tr);
        CHECK(cJSON_GetObjectItem(l, "mask") && cJSON_GetObjectItem(l, "net") &&
              cJSON_GetObjectItem(l, "hidden_channels"));
        CHECK((cJSON_GetObjectItem(l, "scale") != NULL) == !strcmp(tr, "affine"));
        CHECK((cJSON_GetObjectItem(l, "bins") != NULL) == !strcmp(tr, "spline"));
        CHECK(cJSON_GetObjectItem(l, "min_derivative") ? !strcmp(tr, "spline") : 1);
        cJSON_Delete(o);
        free(cfg);
        free(cfg2);
        nf_flow_free(f);
        nf_flow_free(g);
    }
}

TEST(conv_coupling_macs) {
    nf_flow *f = make_flow("{\"shape\":[4,6,5],\"layers\":[{\"type\":\"conv_coupling\","
                           "\"hidden_channels\":8}]}");
    REQUIRE(f);
    /* glow, 2 -> 8 -> 8 -> 4 channels, on 30 pixels */
    double m = 30.0 * (2 * 9 * 8 + 8 * 8 + 8 * 9 * 4);
    CHECK_CLOSE(nf_flow_macs_per_row(f, 1), m, 0, 1e-12);
    CHECK_CLOSE(nf_flow_macs_per_row(f, 0), m, 0, 1e-12);
    nf_flow_free(f);
}

TEST(conv_coupling_rejects_bad_specs) {
    struct {
        const char *spec, *msg;
    } bad[] = {
        {"{\"dim\":8,\"layers\":[{\"type\":\"conv_coupling\"}]}", "\"shape\""},
        {"{\"shape\":[1,28,28],\"layers\":[{\"type\":\"conv_coupling\"}]}",
         "mask \"channel\" needs at least 2 channels, the image here is 1x28x28: use "
         "\"checkerboard\" or a squeeze first"},
        {"{\"shape\":[1,4,4],\"layers\":[{\"type\":\"conv_coupling\",\"mask\":\"channel_odd\"}]}",
         "needs at least 2 channels"},
        {"{\"shape\":[3,1,1],\"layers\":[{\"type\":\"conv_coupling\",\"mask\":\"checkerboard\"}]}",
         "needs at least 2 pixels"},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"transform\":\"cubic\"}]}",
         "\"transform\" must be \"affine\", \"additive\" or \"spline\""},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"mask\":\"even\"}]}",
         "\"mask\" must be"},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"scale\":\"tanh\"}]}",
         "\"scale\" must be \"sigmoid\" or \"exp\""},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"transform\":\"additive\","
         "\"scale\":\"exp\"}]}",
         "\"scale\" applies to \"transform\": \"affine\" only"},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"bins\":4}]}",
         "\"bins\" applies to \"transform\": \"spline\" only"},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"transform\":\"spline\","
         "\"bins\":1}]}",
         "\"bins\""},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"net\":\"mlp\"}]}",
         "\"glow\" or \"resnet\""},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"hidden_channels\":0}]}",
         "\"hidden_channels\""},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"blocks\":2}]}",
         "\"resnet\" only"},
        {"{\"shape\":[2,2,2],\"layers\":[{\"type\":\"conv_coupling\",\"hidden\":[8]}]}",
         "hidden"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nf_flow *f = (nf_flow *)1;
        char err[300] = "";
        CHECK_MSG(nf_flow_create(bad[i].spec, &f, err, sizeof err) == NF_EINVAL, "%s accepted",
                  bad[i].spec);
        CHECK(f == NULL);
        CHECK_MSG(strstr(err, bad[i].msg) != NULL, "%s: message \"%s\"", bad[i].spec, err);
    }
}

/* ---- threads --------------------------------------------------------------------------------
 * A threaded workspace splits the rows; each part runs its own network
 * pass (the B of a call is that part's): the same results as one thread. */
TEST(conv_coupling_threads_match) {
    nf_flow *f = make_flow("{\"shape\":[2,4,4],\"layers\":[{\"type\":\"conv_coupling\","
                           "\"hidden_channels\":4},{\"type\":\"conv_coupling\","
                           "\"mask\":\"checkerboard\",\"net\":\"resnet\",\"hidden_channels\":4,"
                           "\"blocks\":1}]}");
    REQUIRE(f);
    lc_perturb(f, 0.2, 4);
    const int B = 64, D = 32;
    nf_ws *w1 = NULL, *w3 = NULL;
    REQUIRE(nf_ws_create(f, B, &w1) == 0);
    REQUIRE(nf_ws_create_threads(f, B, 3, &w3) == 0);
    nf_real *x = malloc((size_t)B * D * sizeof *x), lp1[64], lp3[64];
    nf_rng r;
    nf_rng_seed(&r, 8);
    lc_randn(&r, x, (size_t)B * D, 1, 0);
    CHECK(nf_flow_log_prob(f, w1, x, NULL, B, lp1) == 0);
    CHECK(nf_flow_log_prob(f, w3, x, NULL, B, lp3) == 0);
    for (int b = 0; b < B; b++) CHECK_CLOSE(lp1[b], lp3[b], 1e-5, 1e-5);
    free(x);
    nf_ws_free(w1);
    nf_ws_free(w3);
    nf_flow_free(f);
}

/* ---- chunks of rows -------------------------------------------------------------------------
 * A pass runs the rows in chunks whose scratch fits nf_cc_chunk_floats:
 * chunks of 3 rows (the last one shorter) against the whole batch in one
 * chunk, the layout of every call before chunking.  Log p, encode, decode
 * and sampling on plain and forward-only workspaces, and the gradients, to
 * BLAS's rounding (the chunks' GEMMs are narrower; dW sums chunk by
 * chunk). */
static void chunk_run(nf_flow *f, const nf_real *x, int B, int D, nf_real *lp, nf_real *z,
                      nf_real *xs, nf_real *lpi, nf_real *grad, nf_real *dx) {
    nf_ws *w = NULL, *wi = NULL;
    nf_real dlogp[64], ld[64];
    REQUIRE(nf_ws_create(f, B, &w) == 0);
    REQUIRE(nf_ws_create_inference(f, B, &wi) == 0);
    for (int b = 0; b < B; b++) dlogp[b] = (nf_real)(1.0 / (b + 1));
    CHECK(nf_flow_log_prob(f, wi, x, NULL, B, lpi) == 0);
    CHECK(nf_flow_encode(f, w, x, NULL, B, z, ld) == 0);
    CHECK(nf_flow_decode(f, wi, z, NULL, B, xs + (size_t)B * D, ld) == 0);
    CHECK(nf_flow_sample(f, wi, B, 0.8, 5, NULL, xs, NULL) == 0);
    CHECK(nf_flow_zero_grad(f) == 0);
    CHECK(nf_flow_log_prob_grad(f, w, x, NULL, B, 1, dlogp, lp, dx, NULL) == 0);
    memcpy(grad, nf_flow_grad(f), nf_flow_num_params(f) * sizeof *grad);
    nf_ws_free(w);
    nf_ws_free(wi);
}

/* the fewest rows per chunk over the flow's conv_coupling layers */
static int min_chunk_rows(const nf_flow *f, int B) {
    int m = B;
    for (int k = 0; k < f->nlayers; k++)
        if (!strcmp(f->layers[k].ops->type, "conv_coupling")) {
            int r = nf_conv_coupling_chunk_rows(&f->layers[k], B);
            m = r < m ? r : m;
        }
    return m;
}

TEST(conv_coupling_chunks_match) {
    static const char *const specs[] = {
        "{\"shape\":[2,4,4],\"layers\":[{\"type\":\"conv_coupling\",\"hidden_channels\":4},"
        "{\"type\":\"conv_coupling\",\"mask\":\"checkerboard\",\"net\":\"resnet\","
        "\"hidden_channels\":4,\"blocks\":1},{\"type\":\"conv_coupling\","
        "\"transform\":\"spline\",\"bins\":4,\"mask\":\"channel_odd\",\"hidden_channels\":3}]}",
        /* a tail after the image: the split's channels */
        "{\"shape\":[4,4,2],\"layers\":[{\"type\":\"split\"},{\"type\":\"conv_coupling\","
        "\"hidden_channels\":5,\"scale\":\"exp\"},{\"type\":\"conv_coupling\","
        "\"mask\":\"checkerboard_odd\",\"transform\":\"additive\",\"hidden_channels\":5}]}",
    };
    size_t keep = nf_cc_chunk_floats;
    for (int s = 0; s < 2; s++) {
        nf_flow *f = make_flow(specs[s]);
        REQUIRE(f);
        lc_perturb(f, 0.2, 40 + s);
        const int B = 17, D = nf_flow_dim(f);
        size_t np = nf_flow_num_params(f), nd = (size_t)B * D;
        nf_real *x = malloc(nd * sizeof *x), *buf = malloc(2 * (6 * nd + 2 * B + np) * sizeof *buf);
        REQUIRE(x && buf);
        nf_real *r[2][6];
        for (int k = 0; k < 2; k++) {
            nf_real *p = buf + (size_t)k * (6 * nd + 2 * B + np);
            r[k][0] = p, r[k][1] = p + B, r[k][2] = p + 2 * B;              /* lp, lpi, z */
            r[k][3] = r[k][2] + nd, r[k][4] = r[k][3] + 2 * nd;           /* xs (2), grad */
            r[k][5] = r[k][4] + np;                                       /* dx */
        }
        nf_rng rng;
        nf_rng_seed(&rng, 9 + s);
        lc_randn(&rng, x, nd, 1, 0);
        for (int k = 0; k < 2; k++) {
            /* k = 0: the whole batch in one chunk; 1: chunks of 3 rows.
             * The block of m rows is affine in m: m = 3 fits, 4 does not. */
            nf_cc_chunk_floats = (size_t)1 << 30;
            if (k) { /* the smallest budget whose chunks hold 3 rows in every layer */
                size_t lo = 1, hi = (size_t)1 << 24;
                while (lo < hi) {
                    size_t mid = (lo + hi) / 2;
                    nf_cc_chunk_floats = mid;
                    if (min_chunk_rows(f, B) >= 3) hi = mid;
                    else lo = mid + 1;
                }
                nf_cc_chunk_floats = lo;
                CHECK(min_chunk_rows(f, B) == 3);
            }
            chunk_run(f, x, B, D, r[k][0], r[k][2], r[k][3], r[k][1], r[k][4], r[k][5]);
        }
        for (int i = 0; i < B; i++) {
            CHECK_CLOSE(r[0][0][i], r[1][0][i], 1e-5, 1e-5);
            CHECK_CLOSE(r[0][1][i], r[1][1][i], 1e-5, 1e-5);
        }
        for (size_t i = 0; i < nd; i++) {
            CHECK_CLOSE(r[0][2][i], r[1][2][i], 1e-4, 1e-4);
            CHECK_CLOSE(r[0][3][i], r[1][3][i], 1e-4, 1e-4);
            CHECK_CLOSE(r[0][3][nd + i], r[1][3][nd + i], 1e-4, 1e-4);
            CHECK_CLOSE(r[0][5][i], r[1][5][i], 1e-4, 1e-4);
        }
        for (size_t i = 0; i < np; i++) CHECK_CLOSE(r[0][4][i], r[1][4][i], 1e-4, 1e-4);
        nf_cc_chunk_floats = keep;
        free(x);
        free(buf);
        nf_flow_free(f);
    }
}

/* ---- the sigmoid scale's kernel ------------------------------------------------------------
 * nf_sigmoid_parts (core/kern.c: a vectorised polynomial exp) against the
 * libm formulas the layer used before it: s = sigmoid(a) to 1e-13 relative
 * and log s = min(a, 0) - log d to 1e-13 relative + 2^-52 absolute, over the whole range, the switch to libm at
 * |a| = 700, every block length's vector remainder, inf and NaN. */
static double ref_sigmoid(double a) {
    if (a >= 0) return 1.0 / (1.0 + exp(-a));
    double e = exp(a);
    return e / (1.0 + e);
}
static double ref_log_sigmoid(double a) { return a >= 0 ? -log1p(exp(-a)) : a - log1p(exp(a)); }

TEST(conv_coupling_sigmoid_kernel) {
    enum { N = 4000 };
    static nf_real h[N];
    static double s[N], d[N];
    nf_rng r;
    nf_rng_seed(&r, 12);
    for (int i = 0; i < N; i++) {
        double u = nf_rng_uniform(&r);
        /* most in the usual range, some far out, a grid across 0 */
        h[i] = (nf_real)(i % 4 == 0 ? (u - 0.5) * 1600 : i % 4 == 1 ? (i - 2000) * 0.01
                                                                   : (u - 0.5) * 60);
    }
    h[7] = (nf_real)INFINITY, h[11] = (nf_real)-INFINITY, h[13] = (nf_real)NAN;
    h[17] = (nf_real)698, h[19] = (nf_real)-702, h[23] = (nf_real)-2, h[29] = 0;
    for (int n = 1; n <= N; n = n < 40 ? n + 1 : n * 3) {
        nf_sigmoid_parts(h, 2, n, s, d);
        for (int i = 0; i < n; i++) {
            double a = (double)h[i] + 2, rs = ref_sigmoid(a), rl = ref_log_sigmoid(a);
            double ls = (a < 0 ? a : 0) - log(d[i]);
            if (isnan(a)) {
                CHECK(isnan(s[i]) && isnan(ls));
                continue;
            }
            CHECK_MSG(fabs(s[i] - rs) <= 1e-13 * rs, "a=%g: s %.17g vs %.17g", a, s[i], rs);
            /* log d: d = 1 + e rounded, so 2^-52 absolute where e is tiny */
            CHECK_MSG(rl == ls || fabs(ls - rl) <= 1e-13 * fabs(rl) + 2.3e-16,
                      "a=%g: log s %.17g vs %.17g", a, ls, rl);
        }
    }
}
