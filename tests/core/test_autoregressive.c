/* test_autoregressive.c: MAF and IAF layers (core/autoregressive.c). */
#include "../test.h"
#include "../../core/kern.h"
#include "layercheck.h"

static const char *ar_orders[3] = {"asc", "desc", "random"};

static void ar_check_all(const char *type) {
    static const int dims[3] = {2, 5, 8};
    char spec[256];
    for (int d = 0; d < 3; d++)
        for (int o = 0; o < 3; o++)
            for (int C = 0; C <= 3; C += 3) {
                snprintf(spec, sizeof spec,
                         "{\"type\":\"%s\",\"hidden\":[16,16],\"activation\":\"tanh\","
                         "\"order\":\"%s\",\"order_seed\":%d}",
                         type, ar_orders[o], 7 + d);
                lc_opts opts = {0};
                opts.D = dims[d];
                opts.C = C;
                opts.seed = 100 + 10 * d + o + C;
                int bad = lc_check_layer(spec, &opts);
                CHECK_MSG(bad == 0, "%s D=%d C=%d: %d failed checks", spec, dims[d], C, bad);
            }
}

TEST(ar_maf_layercheck) { ar_check_all("maf"); }
TEST(ar_iaf_layercheck) { ar_check_all("iaf"); }

TEST(ar_maf_default_relu_layercheck) {
    lc_opts opts = {0};
    opts.D = 4;
    opts.C = 2;
    CHECK(lc_check_layer("{\"type\":\"maf\"}", &opts) == 0);
    CHECK(lc_check_layer("{\"type\":\"iaf\"}", &opts) == 0);
}

/* A one-layer flow with its parameters perturbed (masks re-applied). */
static nf_flow *ar_flow(const char *type, const char *order, int D, int C, uint64_t seed) {
    char spec[512], err[256];
    snprintf(spec, sizeof spec,
             "{\"dim\":%d,\"context_dim\":%d,\"layers\":[{\"type\":\"%s\",\"hidden\":[24,24],"
             "\"activation\":\"tanh\",\"order\":\"%s\",\"order_seed\":3}]}",
             D, C, type, order);
    nf_flow *f = NULL;
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "create %s: %s", spec, err);
    if (rc) return NULL;
    nf_rng rng;
    nf_rng_seed(&rng, seed);
    lc_randn(&rng, nf_flow_params(f), nf_flow_num_params(f), 0.4, 0.0);
    nf_flow_constrain(f);
    return f;
}

/* MAF sampling (D sequential passes) inverts the one-pass density map. */
TEST(ar_maf_sample_inverts_density) {
    const int B = 16, C = 3;
    static const int dims[3] = {1, 3, 8};
    for (int d = 0; d < 3; d++) {
        const int D = dims[d];
        for (int o = 0; o < 3; o++) {
            nf_flow *f = ar_flow("maf", ar_orders[o], D, C, 11 + D);
            REQUIRE(f);
            nf_ws *w = NULL;
            REQUIRE(nf_ws_create(f, B, &w) == 0);
            nf_real x[16 * 8], z[16 * 8], x2[16 * 8], ctx[16 * 3], ld1[16], ld2[16];
            nf_rng rng;
            nf_rng_seed(&rng, 5);
            lc_randn(&rng, x, (size_t)B * D, 1.5, 0.0);
            lc_randn(&rng, ctx, (size_t)B * C, 1.0, 0.0);
            REQUIRE(nf_flow_encode(f, w, x, ctx, B, z, ld1) == 0);
            REQUIRE(nf_flow_decode(f, w, z, ctx, B, x2, ld2) == 0);
            double maxerr = 0;
            for (int n = 0; n < B * D; n++) maxerr = fmax(maxerr, fabs((double)x2[n] - x[n]));
            CHECK_MSG(maxerr < 1e-4, "D=%d order=%s max |x - F^-1(F(x))| = %g", D,
                      ar_orders[o], maxerr);
            for (int b = 0; b < B; b++) CHECK_CLOSE(ld1[b] + ld2[b], 0.0, 1e-4, 0);
            nf_ws_free(w);
            nf_flow_free(f);
        }
    }
}

/* Autoregressive structure of the density map x -> z for both layers:
 * changing x_j changes z_i only when i == j or deg(i) > deg(j).  Masked
 * weights are exactly zero, so unreachable outputs must not move at all. */
static void ar_check_structure(const char *type) {
    const int D = 6, C = 2;
    for (int o = 0; o < 3; o++) {
        nf_flow *f = ar_flow(type, ar_orders[o], D, C, 21 + o);
        REQUIRE(f);
        const nf_net *net = (const nf_net *)f->layers[0].impl; /* impl starts with its net */
        nf_ws *w = NULL;
        REQUIRE(nf_ws_create(f, 1, &w) == 0);
        nf_real x[6], xp[6], z[6], zp[6], ctx[2];
        nf_rng rng;
        nf_rng_seed(&rng, 9 + o);
        lc_randn(&rng, x, D, 1.0, 0.0);
        lc_randn(&rng, ctx, C, 1.0, 0.0);
        REQUIRE(nf_flow_encode(f, w, x, ctx, 1, z, NULL) == 0);
        int offdiag_moved = 0;
        for (int j = 0; j < D; j++) {
            memcpy(xp, x, sizeof x);
            xp[j] += (nf_real)0.7;
            REQUIRE(nf_flow_encode(f, w, xp, ctx, 1, zp, NULL) == 0);
            for (int i = 0; i < D; i++) {
                int may = i == j || net->degrees[i] > net->degrees[j];
                if (!may)
                    CHECK_MSG(zp[i] == z[i], "%s %s: z_%d (deg %d) moved with x_%d (deg %d)",
                              type, ar_orders[o], i, net->degrees[i], j, net->degrees[j]);
                else if (i == j)
                    CHECK_MSG(zp[i] != z[i], "%s: z_%d did not move with x_%d", type, i, j);
                else if (zp[i] != z[i])
                    offdiag_moved++;
            }
        }
        CHECK_MSG(offdiag_moved > 0, "%s %s: no off-diagonal dependence at all", type,
                  ar_orders[o]);
        nf_ws_free(w);
        nf_flow_free(f);
    }
}

TEST(ar_maf_autoregressive_structure) { ar_check_structure("maf"); }
TEST(ar_iaf_autoregressive_structure) { ar_check_structure("iaf"); }

/* A fresh layer is the identity, and the canonical config round-trips. */
TEST(ar_fresh_identity_and_config) {
    const char *types[2] = {"maf", "iaf"};
    for (int t = 0; t < 2; t++) {
        char spec[256], err[256];
        snprintf(spec, sizeof spec,
                 "{\"dim\":4,\"layers\":[{\"type\":\"%s\",\"order\":\"random\",\"order_seed\":5}]}",
                 types[t]);
        nf_flow *f = NULL;
        REQUIRE(nf_flow_create(spec, &f, err, sizeof err) == 0);
        nf_ws *w = NULL;
        REQUIRE(nf_ws_create(f, 3, &w) == 0);
        nf_real x[12], z[12], ld[3];
        nf_rng rng;
        nf_rng_seed(&rng, 1);
        lc_randn(&rng, x, 12, 2.0, 0.0);
        REQUIRE(nf_flow_encode(f, w, x, NULL, 3, z, ld) == 0);
        for (int n = 0; n < 12; n++) CHECK(z[n] == x[n]);
        for (int b = 0; b < 3; b++) CHECK(ld[b] == 0);
        char *cfg = nf_flow_config_json(f);
        REQUIRE(cfg);
        CHECK_MSG(strstr(cfg, "\"order_seed\"") != NULL, "config lacks order_seed: %s", cfg);
        nf_flow *g = NULL;
        CHECK_MSG(nf_flow_create(cfg, &g, err, sizeof err) == 0, "recreate: %s", err);
        if (g) {
            char *cfg2 = nf_flow_config_json(g);
            CHECK(cfg2 && strcmp(cfg, cfg2) == 0);
            free(cfg2);
            nf_flow_free(g);
        }
        free(cfg);
        nf_ws_free(w);
        nf_flow_free(f);
    }
}

TEST(ar_rejects_unknown_key) {
    char err[256];
    nf_flow *f = NULL;
    CHECK(nf_flow_create("{\"dim\":3,\"layers\":[{\"type\":\"maf\",\"mask\":\"even\"}]}", &f, err,
                         sizeof err) != 0);
    CHECK(f == NULL);
}

/* MAF's vectorised affine step (core/kern.h nf_maf_row) against libm:
 * s = 3 tanh(h/3) from deep in the tails through the series' range near
 * zero, exp(s), ds/dh, y and the sum of s, with and without the values a
 * backward keeps; every length around the vector width */
TEST(ar_maf_row_kernel_matches_libm) {
#ifdef NF_DOUBLE
    return; /* float32 only: the double build keeps libm */
#else
    nf_rng r;
    nf_rng_seed(&r, 21);
    enum { DM = 37 };
    float o[2 * DM], u[DM], y[DM], e[DM], d[DM], y2[DM];
    for (int D = 1; D <= DM; D++)
        for (int rep = 0; rep < 20; rep++) {
            for (int i = 0; i < D; i++) {
                double k = nf_rng_uniform(&r);
                /* tails, the series' range (|h/3| < 0.2) and zero */
                o[2 * i] = (float)(rep % 4 == 0 ? 40 * (k - 0.5) : rep % 4 == 1 ? 1.2 * (k - 0.5)
                                   : rep % 4 == 2 ? 6 * (k - 0.5) : (i % 3 == 0 ? 0.0 : 1e-4 * k));
                o[2 * i + 1] = (float)nf_rng_normal(&r);
                u[i] = (float)nf_rng_normal(&r);
            }
            float sum = nf_maf_row(D, 3.0f, o, u, y, e, d);
            float sum2 = nf_maf_row(D, 3.0f, o, u, y2, NULL, NULL);
            double ref_sum = 0;
            for (int i = 0; i < D; i++) {
                double t = tanh((double)o[2 * i] / 3), s = 3 * t, es = exp(s);
                double yr = (double)u[i] * es + (double)o[2 * i + 1];
                ref_sum += s;
                CHECK_MSG(fabs(e[i] - es) <= 1e-6 * es, "D=%d h=%g: exp(s) %g vs %g", D,
                          (double)o[2 * i], (double)e[i], es);
                CHECK_MSG(fabs(d[i] - (1 - t * t)) <= 1e-6, "D=%d h=%g: ds/dh %g vs %g", D,
                          (double)o[2 * i], (double)d[i], 1 - t * t);
                CHECK_MSG(fabs(y[i] - yr) <= 2e-6 * (fabs(u[i]) * es + fabs(o[2 * i + 1])),
                          "D=%d h=%g: y %g vs %g", D, (double)o[2 * i], (double)y[i], yr);
                CHECK(y2[i] == y[i]);
            }
            CHECK_MSG(fabs(sum - ref_sum) <= 1e-6 * (1 + 3.0 * D), "D=%d: sum %g vs %g", D,
                      (double)sum, ref_sum);
            CHECK(sum2 == sum);
        }
#endif
}
