/* test_stair.c: MADE layers multiplied over their staircase (nf_stair) give
 * what the dense masked product gives: outputs, parameter gradients (with
 * masked entries exactly zero), input and context gradients; and MADE-based
 * layers on stairs pass the generic layer checks (inverse, log-det against
 * the dense Jacobian, gradients against finite differences in the double
 * build). */
#include "../test.h"
#include "layercheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int count_stairs(const nf_net *n) {
    int c = 0;
    for (int l = 0; l < n->nlin; l++) c += n->lin[l].stair != NULL;
    return c;
}

/* build the same MADE twice: small tiles (stairs) and one tile (no saving,
 * so the byte masks stay) */
static int made_pair(nf_net *a, nf_net *b, int D, int ctx, const int *hidden, int nh,
                     nf_order order) {
    nf_stair_tile = 8;
    int rc = nf_net_made(a, D, ctx, 2, hidden, nh, NF_ACT_RELU, order, 77);
    nf_stair_tile = 1 << 20;
    if (!rc) rc = nf_net_made(b, D, ctx, 2, hidden, nh, NF_ACT_RELU, order, 77);
    nf_stair_tile = NF_STAIR_TILE;
    return rc;
}

TEST(stair_made_matches_dense_mask) {
    static const int h1[] = {96}, h2[] = {80, 72};
    for (int order = 0; order < NF_ORDER_COUNT; order++)
        for (int ci = 0; ci < 2; ci++)
            for (int hi = 0; hi < 2; hi++) {
                const int D = 40, C = ci ? 3 : 0, B = 13, nh = hi ? 2 : 1;
                const int *hid = hi ? h2 : h1;
                nf_net a, b;
                REQUIRE(made_pair(&a, &b, D, C, hid, nh, (nf_order)order) == 0);
                REQUIRE(a.nparams == b.nparams);
                CHECK_EQ_INT(count_stairs(&b), 0);
                /* ascending inputs: every layer is a staircase; descending:
                 * all but the first (its columns are D runs of one); random:
                 * only hidden-to-hidden layers (outputs in random degree
                 * order give tiles with no saving) */
                CHECK_EQ_INT(count_stairs(&a), order == NF_ORDER_ASC    ? nh + 1
                                               : order == NF_ORDER_DESC ? nh
                                                                        : nh - 1);
                nf_rng r;
                nf_rng_seed(&r, 3 + order);
                size_t P = a.nparams;
                nf_real *pa = malloc(P * sizeof *pa), *pb = malloc(P * sizeof *pb);
                nf_real *ga = calloc(P, sizeof *ga), *gb = calloc(P, sizeof *gb);
                size_t wsn = nf_net_ws_size(&a, B);
                nf_real *wa = malloc(wsn * sizeof *wa), *wb = malloc(wsn * sizeof *wb);
                REQUIRE(pa && pb && ga && gb && wa && wb && nf_net_ws_size(&b, B) == wsn);
                lc_randn(&r, pa, P, 0.3, 0);
                memcpy(pb, pa, P * sizeof *pa);
                /* the staircase zeroes exactly what the byte mask zeroes */
                nf_net_constrain(&a, pa);
                nf_net_constrain(&b, pb);
                CHECK_MSG(memcmp(pa, pb, P * sizeof *pa) == 0, "order %d ctx %d hidden %d: "
                          "constrained parameters differ", order, C, nh);
                nf_real in[B * D], cx[B * 3], oa[B * D * 2], ob[B * D * 2], dout[B * D * 2];
                nf_real dia[B * D], dib[B * D], dca[B * 3], dcb[B * 3];
                lc_randn(&r, in, (size_t)B * D, 1, 0);
                lc_randn(&r, cx, (size_t)B * 3, 1, 0);
                lc_randn(&r, dout, (size_t)B * D * 2, 1, 0);
                const nf_real *cp = C ? cx : NULL;
                nf_net_forward(&a, pa, in, cp, oa, B, wa, NULL);
                nf_net_forward(&b, pb, in, cp, ob, B, wb, NULL);
                for (int i = 0; i < B * D * 2; i++) CHECK_CLOSE(oa[i], ob[i], 1e-5, 1e-5);
                memset(dca, 0, sizeof dca);
                memset(dcb, 0, sizeof dcb);
                nf_net_backward(&a, pa, ga, in, cp, dout, dia, C ? dca : NULL, B, wa);
                nf_net_backward(&b, pb, gb, in, cp, dout, dib, C ? dcb : NULL, B, wb);
                for (size_t i = 0; i < P; i++) {
                    CHECK_CLOSE(ga[i], gb[i], 1e-5, 1e-5);
                    /* masked weights: zero gradient on both paths */
                    if (pb[i] == 0 && gb[i] == 0) CHECK(ga[i] == 0);
                }
                for (int i = 0; i < B * D; i++) CHECK_CLOSE(dia[i], dib[i], 1e-5, 1e-5);
                for (int i = 0; i < B * C; i++) CHECK_CLOSE(dca[i], dcb[i], 1e-5, 1e-5);
                /* backward again accumulates, without din */
                nf_net_backward(&a, pa, ga, in, cp, dout, NULL, NULL, B, wa);
                nf_net_backward(&b, pb, gb, in, cp, dout, NULL, NULL, B, wb);
                for (size_t i = 0; i < P; i++) CHECK_CLOSE(ga[i], gb[i], 1e-5, 1e-5);
                free(pa), free(pb), free(ga), free(gb), free(wa), free(wb);
                nf_net_free(&a);
                nf_net_free(&b);
            }
}

/* the autoregressive layers on stairs: inverse (one pass and the
 * incremental inversion), Jacobian log-det, and (double build) gradients */
TEST(stair_layers_pass_layer_checks) {
    static const char *layers[] = {
        "{\"type\":\"maf\",\"hidden\":[40]}",
        "{\"type\":\"maf\",\"hidden\":[36,30],\"activation\":\"tanh\"}",
        "{\"type\":\"iaf\",\"hidden\":[40]}",
        "{\"type\":\"spline_ar\",\"hidden\":[40],\"bins\":4}",
        "{\"type\":\"maf\",\"hidden\":[40],\"order\":\"desc\"}",
    };
    for (size_t i = 0; i < sizeof layers / sizeof *layers; i++)
        for (int C = 0; C < 3; C += 2) {
            nf_stair_tile = 4;
            char spec[300];
            snprintf(spec, sizeof spec, "{\"dim\":14,\"context_dim\":%d,\"layers\":[%s]}", C,
                     layers[i]);
            nf_flow *f = NULL;
            char err[200];
            REQUIRE(nf_flow_create(spec, &f, err, sizeof err) == 0);
            if (strstr(layers[i], "spline_ar") == NULL) {
                /* maf/iaf: the layer's impl begins with its MADE */
                const nf_net *n = f->layers[0].impl;
                CHECK_MSG(count_stairs(n) >= 1, "%s: no staircase", layers[i]);
            }
            nf_flow_free(f);
            lc_opts o = {.D = 14, .C = C, .B = 9, .seed = 21 + i};
            CHECK_MSG(lc_check_layer(layers[i], &o) == 0, "%s with context %d on stairs",
                      layers[i], C);
            nf_stair_tile = NF_STAIR_TILE;
        }
}

/* nf_flow_macs_per_row: dense products per row, with and without the
 * staircases' savings */
TEST(stair_macs_per_row) {
    nf_flow *f = NULL;
    char err[200];
    /* 2 MADEs 256 -> 512 -> 2x256 (and a permutation between) + 2 LU layers */
    REQUIRE(nf_flow_create("{\"dim\":256,\"layers\":[{\"type\":\"maf\",\"hidden\":[512]},"
                           "{\"type\":\"permute\",\"order\":\"reverse\"},{\"type\":\"maf\","
                           "\"hidden\":[512]},{\"type\":\"lu_linear\"},{\"type\":\"lu_linear\"}]}",
                           &f, err, sizeof err) == 0);
    double dense = nf_flow_macs_per_row(f, 0), exec = nf_flow_macs_per_row(f, 1);
    double made = 256.0 * 512 + 512.0 * 512, lu = 2 * 256.0 * 256;
    CHECK_MSG(dense == 2 * made + lu, "dense %.0f", dense);
    /* each MADE's weights are half masked; 64-row tiles give some back */
    CHECK_MSG(exec > lu + 2 * 0.5 * made && exec < lu + 2 * 0.7 * made, "executed %.0f of %.0f",
              exec, dense);
    nf_flow_free(f);
    /* no MADE: both counts equal (RealNVP, 2 couplings 1 -> [16,16] -> 2) */
    REQUIRE(nf_flow_create("{\"dim\":2,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16,16]}", &f,
                           err, sizeof err) == 0);
    CHECK(nf_flow_macs_per_row(f, 0) == 2 * (16.0 + 256 + 32));
    CHECK(nf_flow_macs_per_row(f, 1) == nf_flow_macs_per_row(f, 0));
    nf_flow_free(f);
}
