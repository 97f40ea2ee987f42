/* test_made_inc.c: the incremental MADE evaluator (core/net.c, made_inc.h) and
 * the sampling paths built on it (MAF forward, IAF inverse, spline_ar
 * forward), each against the naive D-pass reference.  Sums are taken in a
 * different order, so results agree to rounding, not bit for bit. */
#include "../test.h"
#include "layercheck.h"
#include "../../core/made_inc.h"

#include <stdlib.h>

#ifdef NF_DOUBLE
#define MI_TOL 1e-12
#else
#define MI_TOL 1e-5
#endif

static const char *mi_orders[3] = {"asc", "desc", "random"};
static const int mi_dims[4] = {1, 2, 5, 13};
/* one and two hidden layers; [3] and [4,7] leave degrees without units at
 * D = 5 and 13 */
static const char *mi_hidden[4] = {"[3]", "[16]", "[4,7]", "[24,24]"};

static double mi_relerr(const nf_real *a, const nf_real *b, size_t n) {
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / (1 + fabs((double)b[i]));
        if (!(d <= e)) e = d; /* NaN propagates */
    }
    return e;
}

/* Feeding the inputs of a fixed x in degree order, every step's outputs equal
 * those of the dense forward pass on x. */
TEST(made_inc_outputs_match_forward) {
    static const nf_act acts[3] = {NF_ACT_RELU, NF_ACT_TANH, NF_ACT_ELU};
    static const int hid[4][2] = {{3, 0}, {16, 0}, {4, 7}, {24, 24}};
    const int B = 6, P = 3;
    for (int d = 0; d < 4; d++)
        for (int h = 0; h < 4; h++)
            for (int o = 0; o < 3; o++)
                for (int C = 0; C <= 2; C += 2) {
                    const int D = mi_dims[d];
                    nf_net net;
                    REQUIRE(nf_net_made(&net, D, C, P, hid[h], hid[h][1] ? 2 : 1, acts[o],
                                        (nf_order)o, 17 + d) == 0);
                    nf_rng rng;
                    nf_rng_seed(&rng, 31 + d * 16 + h * 4 + o + C);
                    nf_real *par = malloc(net.nparams * sizeof *par);
                    nf_real *ws = malloc(nf_net_ws_size(&net, B) * sizeof *ws);
                    nf_real *iws = malloc(nf_made_inc_ws_size(&net, B) * sizeof *iws);
                    nf_real x[6 * 13], ctx[6 * 2], out[6 * 13 * 3], step[6 * 3];
                    REQUIRE(par && ws && iws);
                    lc_randn(&rng, par, net.nparams, 0.5, 0.0);
                    nf_net_constrain(&net, par);
                    lc_randn(&rng, x, (size_t)B * D, 1.0, 0.0);
                    lc_randn(&rng, ctx, (size_t)B * C, 1.0, 0.0);
                    nf_net_forward(&net, par, x, C ? ctx : NULL, out, B, ws, NULL);
                    nf_made_inc st;
                    nf_made_inc_begin(&st, &net, par, C ? ctx : NULL, B, iws);
                    double err = 0;
                    for (int j = 1; j <= D; j++) {
                        int i = nf_made_inc_input(&st, j);
                        CHECK_EQ_INT(net.degrees[i], j);
                        nf_made_inc_outputs(&st, j, step);
                        for (int b = 0; b < B; b++) {
                            double e = mi_relerr(step + b * P, out + ((size_t)b * D + i) * P, P);
                            err = e > err ? e : err;
                        }
                        nf_made_inc_feed(&st, j, x + i, D);
                    }
                    CHECK_MSG(err <= MI_TOL, "D=%d hidden=%s order=%s C=%d: rel err %g", D,
                              mi_hidden[h], mi_orders[o], C, err);
                    free(par);
                    free(ws);
                    free(iws);
                    nf_net_free(&net);
                }
}

/* Runs the layer's fast sequential direction and the naive reference on the
 * same input and compares outputs and log-dets. */
static void mi_check_layer(const char *type, const char *extra) {
    const int B = 7;
    for (int d = 0; d < 4; d++)
        for (int h = 0; h < 4; h++)
            for (int o = 0; o < 3; o++)
                for (int C = 0; C <= 3; C += 3) {
                    const int D = mi_dims[d];
                    char spec[512], err[256];
                    snprintf(spec, sizeof spec,
                             "{\"dim\":%d,\"context_dim\":%d,\"layers\":[{\"type\":\"%s\","
                             "\"hidden\":%s,\"activation\":\"tanh\",\"order\":\"%s\","
                             "\"order_seed\":%d%s}]}",
                             D, C, type, mi_hidden[h], mi_orders[o], 5 + d, extra);
                    nf_flow *f = NULL;
                    int rc = nf_flow_create(spec, &f, err, sizeof err);
                    CHECK_MSG(rc == 0, "create %s: %s", spec, err);
                    if (rc) return;
                    nf_rng rng;
                    nf_rng_seed(&rng, 400 + 32 * d + 8 * h + 2 * o + C);
                    lc_randn(&rng, nf_flow_params(f), nf_flow_num_params(f), 0.3, 0.0);
                    nf_flow_constrain(f);
                    const nf_layer *L = &f->layers[0];
                    nf_real *ws = malloc(L->ops->ws_size(L, B) * sizeof *ws);
                    nf_real in[7 * 13], ctx[7 * 3], a[7 * 13], r[7 * 13], lda[7], ldr[7];
                    REQUIRE(ws);
                    lc_randn(&rng, in, (size_t)B * D, 1.5, 0.0);
                    lc_randn(&rng, ctx, (size_t)B * C, 1.0, 0.0);
                    for (int b = 0; b < B; b++) lda[b] = ldr[b] = (nf_real)0.25 * b;
                    nf_ctx c = {0};
                    c.params = f->params + L->param_off;
                    c.buffers = f->buffers + L->buf_off;
                    c.ctx = C ? ctx : NULL;
                    c.ws = ws;
                    c.B = B;
                    if (!strcmp(type, "iaf")) {
                        L->ops->inverse(L, &c, in, a, lda);
                        nf_ar_solve_naive(L, &c, in, r, ldr);
                    } else if (!strcmp(type, "maf")) {
                        L->ops->forward(L, &c, in, a, lda);
                        nf_ar_solve_naive(L, &c, in, r, ldr);
                    } else {
                        L->ops->forward(L, &c, in, a, lda);
                        nf_spline_ar_forward_naive(L, &c, in, r, ldr);
                    }
                    double ex = mi_relerr(a, r, (size_t)B * D), el = mi_relerr(lda, ldr, B);
                    CHECK_MSG(ex <= MI_TOL && el <= MI_TOL,
                              "%s D=%d hidden=%s order=%s C=%d: rel err x %g logdet %g", type,
                              D, mi_hidden[h], mi_orders[o], C, ex, el);
                    free(ws);
                    nf_flow_free(f);
                }
}

TEST(made_inc_maf_sample_matches_naive) { mi_check_layer("maf", ""); }
TEST(made_inc_iaf_density_matches_naive) { mi_check_layer("iaf", ""); }
TEST(made_inc_spline_ar_sample_matches_naive) { mi_check_layer("spline_ar", ",\"bins\":5"); }
