/* test_lu.c: the LU-decomposed invertible linear layer (core/lu.c). */
#include "../test.h"
#include "layercheck.h"

TEST(lu_layercheck) {
    static const int dims[4] = {1, 2, 5, 8};
    for (int d = 0; d < 4; d++)
        for (int s = 0; s < 2; s++) {
            char spec[64];
            snprintf(spec, sizeof spec, "{\"type\":\"lu_linear\",\"seed\":%d}", s * 17);
            lc_opts opts = {0};
            opts.D = dims[d];
            opts.seed = 40 + d + s;
            int bad = lc_check_layer(spec, &opts);
            CHECK_MSG(bad == 0, "%s D=%d: %d failed checks", spec, dims[d], bad);
        }
}

/* The gemm path (encode) against W built here from the parameters with
 * plain loops and z = x W^T + b by nf_gemm_ref. */
TEST(lu_gemm_matches_reference) {
    const int D = 7, B = 9;
    char err[256];
    nf_flow *f = NULL;
    REQUIRE(nf_flow_create("{\"dim\":7,\"layers\":[{\"type\":\"lu_linear\",\"seed\":3}]}", &f,
                           err, sizeof err) == 0);
    REQUIRE(nf_flow_num_params(f) >= (size_t)(D * (D + 1)));
    nf_rng rng;
    nf_rng_seed(&rng, 77);
    nf_real *p = nf_flow_params(f);
    lc_randn(&rng, p, (size_t)D * (D + 1), 0.5, 0.0);
    const int *perm = *(int *const *)f->layers[0].impl; /* impl starts with perm */
    const nf_real *pl = p + f->layers[0].param_off;
    const nf_real *lo = pl, *up = pl + D * (D - 1) / 2, *ls = pl + D * (D - 1), *bias = ls + D;

    double Lm[7][7] = {{0}}, Um[7][7] = {{0}}, M[7][7] = {{0}};
    int kl = 0, ku = 0;
    for (int i = 0; i < D; i++) {
        Lm[i][i] = 1;
        for (int j = 0; j < i; j++) Lm[i][j] = lo[kl++];
    }
    for (int i = 0; i < D; i++) {
        Um[i][i] = exp((double)ls[i]);
        for (int j = i + 1; j < D; j++) Um[i][j] = up[ku++];
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++)
            for (int k = 0; k < D; k++) M[i][j] += Lm[i][k] * Um[k][j];
    nf_real W[49];
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) W[i * D + j] = (nf_real)M[perm[i]][perm[j]];

    nf_real x[63], z[63], zr[63], ld[9];
    lc_randn(&rng, x, (size_t)B * D, 1.0, 0.0);
    nf_gemm_ref(0, 1, B, D, D, 1, x, D, W, D, 0, zr, D);
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create(f, B, &w) == 0);
    for (int b = 0; b < B; b++) ld[b] = 0;
    REQUIRE(nf_flow_encode(f, w, x, NULL, B, z, ld) == 0);
    double sls = 0;
    for (int i = 0; i < D; i++) sls += ls[i];
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < D; i++)
            CHECK_CLOSE(z[b * D + i], zr[b * D + i] + bias[i], 1e-5, 1e-5);
        CHECK_CLOSE(ld[b], sls, 1e-5, 1e-5);
    }
    nf_ws_free(w);
    nf_flow_free(f);
}

/* Zero parameters give W = I whatever the permutation. */
TEST(lu_fresh_identity) {
    char err[256];
    nf_flow *f = NULL;
    REQUIRE(nf_flow_create("{\"dim\":5,\"layers\":[{\"type\":\"lu_linear\",\"seed\":9}]}", &f,
                           err, sizeof err) == 0);
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create(f, 2, &w) == 0);
    nf_real x[10], z[10], ld[2];
    nf_rng rng;
    nf_rng_seed(&rng, 2);
    lc_randn(&rng, x, 10, 1.0, 0.0);
    REQUIRE(nf_flow_encode(f, w, x, NULL, 2, z, ld) == 0);
    for (int n = 0; n < 10; n++) CHECK(z[n] == x[n]);
    CHECK(ld[0] == 0 && ld[1] == 0);
    char *cfg = nf_flow_config_json(f);
    REQUIRE(cfg);
    nf_flow *g = NULL;
    CHECK_MSG(nf_flow_create(cfg, &g, err, sizeof err) == 0, "recreate: %s", err);
    if (g) {
        char *cfg2 = nf_flow_config_json(g);
        CHECK(cfg2 && strcmp(cfg, cfg2) == 0);
        CHECK(*(int *const *)g->layers[0].impl != NULL);
        free(cfg2);
        nf_flow_free(g);
    }
    free(cfg);
    nf_ws_free(w);
    nf_flow_free(f);
}

TEST(lu_rejects_bad_spec) {
    char err[256];
    nf_flow *f = NULL;
    CHECK(nf_flow_create("{\"dim\":3,\"layers\":[{\"type\":\"lu_linear\",\"seed\":1.5}]}", &f, err,
                         sizeof err) != 0);
    CHECK(nf_flow_create("{\"dim\":3,\"layers\":[{\"type\":\"lu_linear\",\"hidden\":4}]}", &f,
                         err, sizeof err) != 0);
}
