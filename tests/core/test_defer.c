/* test_defer.c: deferred weight gradients (nf_internal.h).  A net's
 * backward over rows cut into parts, each part recording its products
 * (nf_defer_begin), then nf_defer_run for every thread slice, gives the
 * plain backward's parameter gradient over all rows: dense layers, MADE
 * byte masks (masked entries exactly zero), staircases (split by tiles),
 * context columns, residual nets, on 2, 3 and 5 slices.  Records cover
 * exactly the products they name (nf_defer_ranges); a part that cannot
 * grow its arena computes in place and says so, and a threaded gradient
 * call still gives the plain gradient then. */
#include "../test.h"
#include "../../core/alloc.h"
#include "layercheck.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum { DF_B = 23, DF_D = 12, DF_C = 3 };

/* kind 0: MLP, 1: resnet, 2: MADE ascending (stairs), 3: MADE random
 * (byte masks), 4: MADE descending (stairs but the first layer) */
static int df_net(nf_net *n, int kind, int C) {
    static const int h[] = {20, 24};
    nf_stair_tile = kind == 3 ? 1 << 20 : 4; /* one tile saves nothing: byte masks */
    int rc = kind == 0   ? nf_net_mlp(n, DF_D, C, 10, h, 2, NF_ACT_TANH)
             : kind == 1 ? nf_net_resnet(n, DF_D, C, 10, 16, 2, NF_ACT_ELU)
                         : nf_net_made(n, DF_D, C, 2, h, 2, NF_ACT_RELU,
                                       kind == 2   ? NF_ORDER_ASC
                                       : kind == 3 ? NF_ORDER_RANDOM
                                                   : NF_ORDER_DESC,
                                       5);
    nf_stair_tile = NF_STAIR_TILE;
    return rc;
}

TEST(defer_net_matches_plain) {
    nf_defer_min = 0;
    for (int kind = 0; kind < 5; kind++)
        for (int C = 0; C <= DF_C; C += DF_C)
            for (int np = 2; np <= 5; np += np == 3 ? 2 : 1) {
                nf_net n;
                REQUIRE(df_net(&n, kind, C) == 0);
                int stairs = 0, masks = 0;
                for (int l = 0; l < n.nlin; l++) stairs += n.lin[l].stair != NULL, masks += n.lin[l].mask != NULL;
                if (kind == 2) CHECK(stairs == n.nlin);
                if (kind == 3) CHECK(masks == n.nlin);
                if (kind == 4) CHECK(stairs >= 1 && stairs < n.nlin);
                const int O = n.out, B = DF_B;
                size_t P = n.nparams, wsn = nf_net_ws_size(&n, B);
                nf_real *p = malloc(P * sizeof *p), *ga = calloc(P, sizeof *ga),
                        *gb = calloc(P, sizeof *gb), *ws = malloc(wsn * sizeof *ws);
                nf_real in[DF_B * DF_D], cx[DF_B * DF_C], out[DF_B * 24], dout[DF_B * 24];
                nf_real dia[DF_B * DF_D], dib[DF_B * DF_D], dca[DF_B * DF_C], dcb[DF_B * DF_C];
                REQUIRE(p && ga && gb && ws && O <= 24);
                nf_rng r;
                nf_rng_seed(&r, 17 + kind * 10 + np + C);
                lc_randn(&r, p, P, 0.3, 0);
                nf_net_constrain(&n, p);
                lc_randn(&r, in, (size_t)B * DF_D, 1, 0);
                lc_randn(&r, cx, (size_t)B * DF_C, 1, 0);
                lc_randn(&r, dout, (size_t)B * O, 1, 0);
                for (size_t i = 0; i < P; i++) ga[i] = gb[i] = (nf_real)(0.01 * (double)(i % 7)); /* += */
                const nf_real *cp = C ? cx : NULL;
                memset(dca, 0, sizeof dca);
                memset(dcb, 0, sizeof dcb);
                nf_net_forward(&n, p, in, cp, out, B, ws, NULL);
                nf_net_backward(&n, p, ga, in, cp, dout, dia, C ? dca : NULL, B, ws);
                /* the parts: uneven rows, each its own workspace and record */
                nf_defer parts[5];
                nf_defer *pp[5];
                memset(parts, 0, sizeof parts);
                for (int t = 0, s0 = 0; t < np; t++) {
                    int m = B / np + (t < B % np);
                    pp[t] = &parts[t];
                    nf_net_forward(&n, p, in + (size_t)s0 * DF_D, C ? cx + (size_t)s0 * C : NULL,
                                   out, m, ws, NULL);
                    nf_defer_begin(pp[t], gb);
                    nf_net_backward(&n, p, gb, in + (size_t)s0 * DF_D,
                                    C ? cx + (size_t)s0 * C : NULL, dout + (size_t)s0 * O,
                                    dib + (size_t)s0 * DF_D, C ? dcb + (size_t)s0 * C : NULL, m,
                                    ws);
                    nf_defer_cur = NULL;
                    CHECK_EQ_INT(parts[t].n, n.nlin); /* every product recorded ... */
                    CHECK(!parts[t].failed);
                    s0 += m;
                }
                for (size_t i = 0; i < P; i++) /* ... and none computed */
                    CHECK(gb[i] == (nf_real)(0.01 * (double)(i % 7)));
                size_t rg[4 * 5 * 8];
                CHECK_EQ_INT(nf_defer_ranges(pp, np, rg, (int)(sizeof rg / sizeof *rg)), 1);
                CHECK(rg[0] == 0 && rg[1] == P);
                CHECK_EQ_INT(nf_defer_ranges(pp, np, rg, 4), -1);
                for (int t = np - 1; t >= 0; t--) nf_defer_run(pp, np, gb, t, np);
                for (size_t i = 0; i < P; i++) {
                    CHECK_MSG(fabs((double)ga[i] - (double)gb[i]) <= 1e-5 * (1 + fabs((double)ga[i])),
                              "kind %d ctx %d np %d grad[%zu]: deferred %.9g, plain %.9g", kind, C,
                              np, i, (double)gb[i], (double)ga[i]);
                    if (p[i] == 0 && ga[i] == (nf_real)(0.01 * (double)(i % 7)))
                        CHECK(gb[i] == ga[i]); /* masked entries: left exactly */
                }
                for (int i = 0; i < B * DF_D; i++) CHECK_CLOSE(dia[i], dib[i], 1e-5, 1e-5);
                for (int i = 0; i < B * C; i++) CHECK_CLOSE(dca[i], dcb[i], 1e-5, 1e-5);
                for (int t = 0; t < np; t++) nf_defer_free(&parts[t]);
                free(p), free(ga), free(gb), free(ws);
                nf_net_free(&n);
            }
    nf_defer_min = NF_DEFER_MIN;
}

/* below nf_defer_min, or where the rows outnumber the weights, nothing is
 * recorded */
TEST(defer_min_leaves_small_products) {
    nf_net n;
    REQUIRE(df_net(&n, 0, 0) == 0);
    size_t P = n.nparams, wsn = nf_net_ws_size(&n, 4);
    nf_real *p = calloc(P, sizeof *p), *g = calloc(P, sizeof *g), *ws = calloc(wsn, sizeof *ws);
    nf_real in[4 * DF_D] = {1}, out[4 * 10], dout[4 * 10] = {1};
    REQUIRE(p && g && ws);
    nf_defer d;
    memset(&d, 0, sizeof d);
    nf_net_forward(&n, p, in, NULL, out, 4, ws, NULL);
    nf_defer_begin(&d, g);
    nf_net_backward(&n, p, g, in, NULL, dout, NULL, NULL, 4, ws);
    nf_defer_cur = NULL;
    CHECK_EQ_INT(d.n, 0); /* 12x20, 20x24, 24x10: all under NF_DEFER_MIN */
    double s = 0;
    for (size_t i = 0; i < P; i++) s += fabs((double)g[i]);
    CHECK(s > 0); /* computed in place */
    nf_defer_free(&d);
    free(p), free(g), free(ws);
    nf_net_free(&n);
    /* 128 x 128 products (NF_DEFER_MIN weights): recorded for 32 rows, not
     * for 256 (their inputs and outputs, 256 x 256, outnumber the weights) */
    static const int h[] = {128};
    REQUIRE(nf_net_mlp(&n, 128, 0, 128, h, 1, NF_ACT_RELU) == 0);
    P = n.nparams;
    wsn = nf_net_ws_size(&n, 256);
    p = calloc(P, sizeof *p), g = calloc(P, sizeof *g), ws = calloc(wsn, sizeof *ws);
    nf_real *x = calloc(256 * 128, sizeof *x), *y = calloc(256 * 128, sizeof *y);
    REQUIRE(p && g && ws && x && y);
    for (int B = 32; B <= 256; B *= 8) {
        nf_net_forward(&n, p, x, NULL, y, B, ws, NULL);
        nf_defer_begin(&d, g);
        nf_net_backward(&n, p, g, x, NULL, y, NULL, NULL, B, ws);
        nf_defer_cur = NULL;
        CHECK_MSG(d.n == (B == 32 ? 2 : 0), "%d rows: %d recorded", B, d.n);
    }
    nf_defer_free(&d);
    free(p), free(g), free(ws), free(x), free(y);
    nf_net_free(&n);
}

/* reallocations refused from the k-th on, on the calling thread (part 0,
 * which adds into the flow's gradient) or on the pool's (part 1, into its
 * own buffer) */
static _Thread_local int df_caller;
static atomic_long df_reallocs, df_fail_from;
static atomic_int df_fail_caller;
static void *df_malloc(size_t n) { return malloc(n ? n : 1); }
static void *df_calloc(size_t n, size_t s) { return calloc(n ? n : 1, s ? s : 1); }
static void *df_realloc(void *p, size_t n) {
    if (df_caller == atomic_load(&df_fail_caller) &&
        atomic_fetch_add(&df_reallocs, 1) + 1 >= atomic_load(&df_fail_from))
        return NULL;
    return realloc(p, n);
}
static const nf_alloc_hooks df_hooks = {df_malloc, df_calloc, df_realloc, free};

/* a part whose record cannot grow computes in place; the call's gradient
 * is still the plain one (then every part's copy is summed) */
TEST(defer_out_of_memory_computes_in_place) {
    nf_defer_min = 0;
    nf_flow *f = NULL;
    char err[200];
    REQUIRE(nf_flow_create("{\"dim\":6,\"context_dim\":2,\"layers\":[{\"type\":\"maf\","
                           "\"hidden\":[16,16]},{\"type\":\"affine_coupling\",\"hidden\":[8]}]}",
                           &f, err, sizeof err) == 0);
    enum { B = 30 };
    const size_t P = nf_flow_num_params(f);
    nf_real x[B * 6], c[B * 2], dl[B];
    nf_real *gp = malloc(P * sizeof *gp);
    REQUIRE(gp);
    nf_rng r;
    nf_rng_seed(&r, 9);
    lc_randn(&r, nf_flow_params(f), P, 0.2, 0);
    nf_flow_constrain(f);
    lc_randn(&r, x, B * 6, 1, 0);
    lc_randn(&r, c, B * 2, 1, 0);
    for (int i = 0; i < B; i++) dl[i] = (nf_real)(1.0 / B);
    nf_ws *wp;
    REQUIRE(nf_ws_create(f, B, &wp) == 0);
    REQUIRE(nf_flow_zero_grad(f) == 0);
    REQUIRE(nf_flow_log_prob_grad(f, wp, x, c, B, 1, dl, NULL, NULL, NULL) == 0);
    memcpy(gp, nf_flow_grad(f), P * sizeof *gp);
    df_caller = 1;
    for (long k = 1; k <= 6; k++) {
        nf_ws *wt;
        REQUIRE(nf_ws_create_threads(f, B, 2, &wt) == 0);
        REQUIRE(nf_flow_zero_grad_ws(f, wt) == 0);
        atomic_store(&df_reallocs, 0);
        atomic_store(&df_fail_from, (k + 1) / 2);
        atomic_store(&df_fail_caller, (int)(k % 2));
        nf_alloc_hook = &df_hooks;
        int rc = nf_flow_log_prob_grad(f, wt, x, c, B, 1, dl, NULL, NULL, NULL);
        nf_alloc_hook = NULL;
        CHECK_EQ_INT(rc, 0);
        const nf_real *g = nf_flow_grad(f);
        for (size_t i = 0; i < P; i++)
            CHECK_MSG(fabs((double)g[i] - (double)gp[i]) <= 1e-5 * (1 + fabs((double)gp[i])),
                      "refusing from realloc %ld on the %s: grad[%zu] %.9g, plain %.9g",
                      (k + 1) / 2, k % 2 ? "caller" : "pool", i, (double)g[i], (double)gp[i]);
        /* and the norm the call took is this gradient's */
        double ss = 0, ref = 0;
        CHECK(nf_ws_grad_sumsq(wt, nf_flow_grad(f), P, &ss) == 1);
        for (size_t i = 0; i < P; i++) ref += (double)g[i] * g[i];
        CHECK(fabs(ss - ref) <= 1e-9 * ref);
        nf_ws_free(wt);
    }
    free(gp);
    nf_ws_free(wp);
    nf_flow_free(f);
    nf_defer_min = NF_DEFER_MIN;
}
