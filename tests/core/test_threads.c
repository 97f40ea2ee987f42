/* test_threads.c: threaded workspaces (nf_ws_create_threads) give what a
 * plain workspace gives: per-row results to BLAS rounding, the same samples
 * for a seed, gradients equal to rounding of the part sums; the optimizer's
 * threaded step is the plain step; batch-norm flows stay on one thread. */
#include "../test.h"
#include "layercheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *specs[] = {
    "{\"dim\":4,\"preset\":\"realnvp\",\"depth\":3,\"hidden\":[16]}",
    "{\"dim\":5,\"preset\":\"maf\",\"depth\":2,\"hidden\":[16]}",
    "{\"dim\":4,\"preset\":\"nsf\",\"depth\":2,\"hidden\":[16],\"bins\":4}",
    "{\"dim\":4,\"preset\":\"glow\",\"depth\":2,\"hidden\":[16]}",
    "{\"dim\":4,\"preset\":\"nsf_ar\",\"depth\":2,\"hidden\":[16],\"bins\":4}",
    /* MADEs on byte masks and on stairs (make builds with 4-row tiles), with context */
    "{\"dim\":5,\"context_dim\":2,\"layers\":[{\"type\":\"maf\",\"hidden\":[12,16],"
    "\"order\":\"random\"},{\"type\":\"iaf\",\"hidden\":[16]}]}",
    "{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8],\"context_dim\":2,"
    "\"base\":{\"type\":\"mixture\",\"components\":3}}",
    /* image layers (dim 4 as the others' at most 5), a split's tail */
    "{\"shape\":[1,2,2],\"layers\":[{\"type\":\"squeeze\"},{\"type\":\"channel_actnorm\"},"
    "{\"type\":\"invconv\"},{\"type\":\"split\"},{\"type\":\"invconv\",\"seed\":1},"
    "{\"type\":\"channel_actnorm\"}]}",
};
#define NSPECS (int)(sizeof specs / sizeof specs[0])

static nf_flow *make(const char *spec, uint64_t seed) {
    nf_flow *f = NULL;
    char err[300] = "";
    nf_stair_tile = 4; /* MADEs on staircases of 4-row tiles */
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    nf_stair_tile = NF_STAIR_TILE;
    CHECK_MSG(rc == 0, "nf_flow_create(%s): %s", spec, err);
    if (!f) return NULL;
    nf_rng r;
    nf_rng_seed(&r, seed);
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] += (nf_real)(0.2 * nf_rng_normal(&r));
    nf_flow_constrain(f);
    return f;
}

#define CLOSE(a, b, what, i)                                                               \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= 1e-4 * (1 + fabs((double)(b))),           \
              "%s %s[%d]: threaded %.9g, plain %.9g", specs[s], what, (int)(i), (double)(a), \
              (double)(b))

/* rows x (N,D) and context (N,2) ~ N(0,1), outputs a, b (N,D), la, lb (N) */
typedef struct {
    nf_real *x, *ctx, *a, *b, *la, *lb;
} bufs;

static int bufs_init(bufs *u, int N, int D, uint64_t seed) {
    u->x = malloc(sizeof(nf_real) * N * D), u->ctx = malloc(sizeof(nf_real) * N * 2);
    u->a = malloc(sizeof(nf_real) * N * D), u->b = malloc(sizeof(nf_real) * N * D);
    u->la = malloc(sizeof(nf_real) * N), u->lb = malloc(sizeof(nf_real) * N);
    if (!u->x || !u->ctx || !u->a || !u->b || !u->la || !u->lb) return -1;
    nf_rng r;
    nf_rng_seed(&r, seed);
    lc_randn(&r, u->x, (size_t)N * D, 1, 0);
    lc_randn(&r, u->ctx, (size_t)N * 2, 1, 0);
    return 0;
}

static void bufs_free(bufs *u) {
    free(u->x), free(u->ctx), free(u->a), free(u->b), free(u->la), free(u->lb);
}

/* log_prob, encode, decode and sample of B rows on workspace w against the
 * plain workspace wp (a, b: (B,D) scratch; la, lb: (B)) */
static void rows_agree(const char *spec, const char *what, nf_flow *f, nf_ws *w, nf_ws *wp,
                       const nf_real *x, const nf_real *cx, int B, uint64_t seed, nf_real *a,
                       nf_real *b, nf_real *la, nf_real *lb) {
    int D = nf_flow_dim(f);
#define AGREE(p, q, n, name)                                                                 \
    for (int i = 0; i < (n); i++)                                                           \
        CHECK_MSG(fabs((double)(p)[i] - (double)(q)[i]) <= 1e-4 * (1 + fabs((double)(q)[i])), \
                  "%s %s %s[%d] (B=%d): %.9g vs plain %.9g", spec, what, name, i, B,         \
                  (double)(p)[i], (double)(q)[i])
    CHECK(nf_flow_log_prob(f, w, x, cx, B, la) == 0);
    CHECK(nf_flow_log_prob(f, wp, x, cx, B, lb) == 0);
    AGREE(la, lb, B, "log_prob");
    CHECK(nf_flow_encode(f, w, x, cx, B, a, la) == 0);
    CHECK(nf_flow_encode(f, wp, x, cx, B, b, lb) == 0);
    AGREE(a, b, B * D, "encode z");
    AGREE(la, lb, B, "encode logdet");
    CHECK(nf_flow_decode(f, w, x, cx, B, a, la) == 0);
    CHECK(nf_flow_decode(f, wp, x, cx, B, b, lb) == 0);
    AGREE(a, b, B * D, "decode x");
    AGREE(la, lb, B, "decode logdet");
    CHECK(nf_flow_sample(f, w, B, 0.8, seed, cx, a, la) == 0);
    CHECK(nf_flow_sample(f, wp, B, 0.8, seed, cx, b, lb) == 0);
    AGREE(a, b, B * D, "sample x");
    AGREE(la, lb, B, "sample log_prob");
    CHECK(nf_flow_sample(f, w, B, 0.8, seed, cx, a, NULL) == 0);
    AGREE(a, b, B * D, "sample x (no log_prob)");
#undef AGREE
}

/* log_prob, encode, decode and sample over several row counts (one part,
 * uneven parts, more rows than the workspace holds) */
TEST(threads_rows_match_plain) {
    enum { N = 203, WS = 64 };
    for (int s = 0; s < NSPECS; s++) {
        nf_flow *f = make(specs[s], 3 + s);
        if (!f) continue;
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
        nf_ws *wp, *wt;
        REQUIRE(nf_ws_create(f, WS, &wp) == 0);
        REQUIRE(nf_ws_create_threads(f, WS, 3, &wt) == 0);
        CHECK_EQ_INT(nf_ws_threads(wt), 3);
        CHECK_EQ_INT(nf_ws_max_batch(wt), WS);
        bufs u;
        REQUIRE(bufs_init(&u, N, D, 11) == 0);
        const nf_real *cx = C ? u.ctx : NULL;
        static const int Bs[] = {1, 7, 16, 25, 64, N};
        for (size_t k = 0; k < sizeof Bs / sizeof *Bs; k++)
            rows_agree(specs[s], "threaded", f, wt, wp, u.x, cx, Bs[k], 42 + k, u.a, u.b, u.la, u.lb);
        bufs_free(&u);
        nf_ws_free(wp);
        nf_ws_free(wt);
        nf_flow_free(f);
    }
}

/* mode 0: log_prob_grad_ex (weights w, log-det penalty 0.3); mode 1:
 * transform_grad then transform_backward with dout and log-det weights w */
static int grad_call(nf_flow *f, nf_ws *ws, int mode, const nf_real *x, const nf_real *cx, int B,
                     const nf_real *w, const nf_real *dout, nf_real *lp, nf_real *ld,
                     nf_real *dx, nf_real *dc) {
    if (mode == 0) return nf_flow_log_prob_grad_ex(f, ws, x, cx, B, 1, w, 0.3, lp, ld, dx, dc);
    int rc = nf_flow_transform_grad(f, ws, x, cx, B, 1, NULL, NULL, dx, ld, NULL, NULL);
    return rc ? rc : nf_flow_transform_backward(f, ws, x, cx, B, 1, dout, w, dx, dc);
}

/* log_prob_grad_ex (with the log-det penalty, dx and dctx) and the
 * transform pair: the threaded gradient is the plain one, summed in parts */
static void grads_match_plain(int threads) {
    enum { B = 40 };
    for (int s = 0; s < NSPECS; s++) {
        nf_flow *f = make(specs[s], 7 + s);
        if (!f) continue;
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
        size_t P = nf_flow_num_params(f);
        nf_ws *wp, *wt;
        REQUIRE(nf_ws_create(f, B, &wp) == 0);
        REQUIRE(nf_ws_create_threads(f, B, threads, &wt) == 0);
        nf_real x[B * 5], ctx[B * 2], w[B], dout[B * 5];
        nf_real lpa[B], lpb[B], lda[B], ldb[B], dxa[B * 5], dxb[B * 5], dca[B * 2], dcb[B * 2];
        nf_real *ga = malloc(sizeof(nf_real) * P);
        REQUIRE(ga);
        nf_rng r;
        nf_rng_seed(&r, 5);
        lc_randn(&r, x, (size_t)B * D, 1, 0);
        lc_randn(&r, ctx, (size_t)B * 2, 1, 0);
        lc_randn(&r, w, B, 1, 0);
        lc_randn(&r, dout, (size_t)B * D, 1, 0);
        const nf_real *cx = C ? ctx : NULL;
        /* glow's act-norms initialise from the first batch: do it once, on
         * the plain workspace, so both runs see the same parameters */
        CHECK(nf_flow_data_init(f, wp, x, cx, B) == 0);
        for (int mode = 0; mode < 2; mode++) {
            memset(dca, 0, sizeof dca);
            memset(dcb, 0, sizeof dcb);
            REQUIRE(nf_flow_zero_grad_ws(f, wt) == 0);
            CHECK(grad_call(f, wt, mode, x, cx, B, w, dout, lpa, lda, dxa, C ? dca : NULL) == 0);
            memcpy(ga, nf_flow_grad(f), sizeof(nf_real) * P);
            REQUIRE(nf_flow_zero_grad(f) == 0);
            CHECK(grad_call(f, wp, mode, x, cx, B, w, dout, lpb, ldb, dxb, C ? dcb : NULL) == 0);
            const nf_real *gb = nf_flow_grad(f);
            double gmax = 0;
            for (size_t i = 0; i < P; i++) gmax = fmax(gmax, fabs((double)gb[i]));
            for (size_t i = 0; i < P; i++)
                CHECK_MSG(fabs((double)ga[i] - (double)gb[i]) <= 1e-4 * (1 + gmax),
                          "%s mode %d grad[%zu]: threaded %.9g, plain %.9g", specs[s], mode, i,
                          (double)ga[i], (double)gb[i]);
            for (int i = 0; i < B; i++) CLOSE(lda[i], ldb[i], "logdet", i);
            if (mode == 0)
                for (int i = 0; i < B; i++) CLOSE(lpa[i], lpb[i], "logp", i);
            for (int i = 0; i < B * D; i++) CLOSE(dxa[i], dxb[i], "dx", i);
            for (int i = 0; i < B * 2 && C; i++) CLOSE(dca[i], dcb[i], "dctx", i);
            /* the threaded call again, without zeroing: the sum doubles (the
             * parts' own gradient buffers were left at zero) */
            REQUIRE(nf_flow_zero_grad(f) == 0);
            for (int rep = 0; rep < 2; rep++) {
                if (mode == 0)
                    CHECK(nf_flow_log_prob_grad_ex(f, wt, x, cx, B, 1, w, 0.3, NULL, NULL, NULL,
                                                   NULL) == 0);
                else {
                    CHECK(nf_flow_transform_grad(f, wt, x, cx, B, 1, NULL, NULL, dxa, NULL,
                                                 NULL, NULL) == 0);
                    CHECK(nf_flow_transform_backward(f, wt, x, cx, B, 1, dout, w, NULL, NULL) ==
                          0);
                }
            }
            for (size_t i = 0; i < P; i++)
                CHECK_MSG(fabs((double)nf_flow_grad(f)[i] - 2 * (double)ga[i]) <=
                              2e-4 * (1 + gmax),
                          "%s mode %d: accumulated grad[%zu] %.9g, twice the first %.9g", specs[s],
                          mode, i, (double)nf_flow_grad(f)[i], 2 * (double)ga[i]);
        }
        /* without weights: log p only, no gradient touched */
        REQUIRE(nf_flow_zero_grad(f) == 0);
        CHECK(nf_flow_log_prob_grad_ex(f, wt, x, cx, B, 0, NULL, 0, lpa, NULL, NULL, NULL) == 0);
        for (size_t i = 0; i < P; i++) CHECK(nf_flow_grad(f)[i] == 0);
        free(ga);
        nf_ws_free(wp);
        nf_ws_free(wt);
        nf_flow_free(f);
    }
}

/* these nets are below nf_defer_min: the parts sum private copies */
TEST(threads_gradients_match_plain) { grads_match_plain(2); }

/* every dense product and staircase deferred (nf_internal.h): computed by
 * the threads in output slices after the parts, on 2 and 3 threads */
TEST(threads_gradients_match_plain_deferred) {
    nf_defer_min = 0;
    grads_match_plain(2);
    grads_match_plain(3);
    nf_defer_min = NF_DEFER_MIN;
}

/* a row outside the support (logit of a value > 1): log_prob says -inf for
 * that row only; the gradient call refuses the batch and leaves the
 * gradient as it was */
TEST(threads_out_of_support_rows) {
    nf_flow *f = make("{\"dim\":2,\"layers\":[{\"type\":\"logit\"},{\"type\":\"affine_coupling\","
                      "\"hidden\":[8]}]}", 1);
    REQUIRE(f);
    enum { B = 32 };
    nf_ws *wt;
    REQUIRE(nf_ws_create_threads(f, B, 2, &wt) == 0);
    nf_real x[2 * B], lp[B], w[B];
    for (int i = 0; i < 2 * B; i++) x[i] = (nf_real)(0.1 + 0.8 * (i % 7) / 7.0);
    for (int i = 0; i < B; i++) w[i] = (nf_real)(-1.0 / B);
    x[2 * 29] = 1.5; /* row 29, in the second part */
    CHECK(nf_flow_log_prob(f, wt, x, NULL, B, lp) == 0);
    for (int i = 0; i < B; i++)
        CHECK_MSG(i == 29 ? lp[i] == -INFINITY : isfinite(lp[i]), "row %d: %g", i, (double)lp[i]);
    REQUIRE(nf_flow_zero_grad(f) == 0);
    CHECK(nf_flow_log_prob_grad(f, wt, x, NULL, B, 1, w, NULL, NULL, NULL) == NF_ENONFINITE);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) CHECK(nf_flow_grad(f)[i] == 0);
    nf_ws_free(wt);
    nf_flow_free(f);
}

/* batch statistics span the batch: a batch-norm flow gets one thread */
TEST(threads_batchnorm_stays_plain) {
    nf_flow *f = make("{\"dim\":3,\"layers\":[{\"type\":\"batchnorm\"},{\"type\":\"affine_coupling\","
                      "\"hidden\":[8]}]}", 2);
    REQUIRE(f);
    nf_ws *w;
    REQUIRE(nf_ws_create_threads(f, 64, 4, &w) == 0);
    CHECK_EQ_INT(nf_ws_threads(w), 1);
    nf_ws_free(w);
    /* more threads than rows: at most one per row */
    nf_flow *g = make("{\"dim\":2,\"preset\":\"realnvp\",\"depth\":1,\"hidden\":[4]}", 3);
    REQUIRE(g);
    REQUIRE(nf_ws_create_threads(g, 2, 8, &w) == 0);
    CHECK_EQ_INT(nf_ws_threads(w), 2);
    nf_ws_free(w);
    CHECK(nf_ws_create_threads(g, 16, 0, &w) == NF_ERANGE);
    nf_flow_free(f);
    nf_flow_free(g);
}

/* the optimizer's threaded step is the plain step, element for element;
 * the threaded norm equals the plain one to rounding and clips the same */
TEST(threads_adam_and_clip_match_plain) {
    nf_flow *f = make("{\"dim\":2,\"preset\":\"realnvp\",\"depth\":1,\"hidden\":[4]}", 4);
    REQUIRE(f);
    nf_ws *w;
    REQUIRE(nf_ws_create_threads(f, 64, 2, &w) == 0);
    const size_t n = 300007; /* several 64Ki ranges and a ragged end */
    nf_real *p1 = malloc(n * sizeof *p1), *p2 = malloc(n * sizeof *p2);
    nf_real *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    REQUIRE(p1 && p2 && g1 && g2);
    nf_rng r;
    nf_rng_seed(&r, 9);
    lc_randn(&r, p1, n, 1, 0);
    memcpy(p2, p1, n * sizeof *p1);
    for (int kind = 0; kind < 2; kind++) {
        nf_adam a, b;
        REQUIRE(nf_adam_init(&a, kind ? NF_OPT_ADAMW : NF_OPT_ADAM, n, 0.01) == 0);
        REQUIRE(nf_adam_init(&b, kind ? NF_OPT_ADAMW : NF_OPT_ADAM, n, 0.01) == 0);
        for (int step = 0; step < 3; step++) {
            lc_randn(&r, g1, n, 3, 0);
            memcpy(g2, g1, n * sizeof *g1);
            double n1 = nf_clip_grad_norm(g1, n, 100.0);
            double n2 = nf_clip_grad_norm_ws(w, g2, n, 100.0);
            CHECK_MSG(fabs(n1 - n2) <= 1e-12 * n1, "norm %.17g vs %.17g", n1, n2);
            CHECK(n1 > 100.0); /* clipped: the gradients were scaled */
            for (size_t i = 0; i < n; i++)
                if (fabs((double)g1[i] - (double)g2[i]) > 1e-6 * (1 + fabs((double)g1[i]))) {
                    CHECK_MSG(0, "clipped g[%zu] %.9g vs %.9g", i, (double)g1[i], (double)g2[i]);
                    break;
                }
            memcpy(g2, g1, n * sizeof *g1);
            nf_adam_step(&a, p1, g1, 1e-3);
            nf_adam_step_ws(&b, w, p2, g2, 1e-3);
        }
        CHECK(memcmp(p1, p2, n * sizeof *p1) == 0);
        CHECK(memcmp(a.m, b.m, n * sizeof *a.m) == 0 && memcmp(a.v, b.v, n * sizeof *a.v) == 0);
        CHECK(a.t == b.t);
        nf_adam_free(&a);
        nf_adam_free(&b);
    }
    /* NULL workspace: one thread */
    memcpy(g2, g1, n * sizeof *g1);
    CHECK(nf_clip_grad_norm_ws(NULL, g2, n, 0) == nf_clip_grad_norm(g1, n, 0));
    free(p1), free(p2), free(g1), free(g2);
    nf_ws_free(w);
    nf_flow_free(f);
}

/* the trainer's fused passes (nf.h): the threads' reduction takes the
 * gradient's sum of squares bit for bit as the clip would, forgets it when
 * the gradient changes, and the scaled step equals clip + step while
 * leaving the gradient zero */
TEST(threads_fused_step_matches_clip_and_step) {
    /* ~280k parameters: several 64Ki ranges per thread */
    nf_flow *f = make("{\"dim\":8,\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[256,256]}", 5);
    REQUIRE(f);
    const size_t P = nf_flow_num_params(f);
    REQUIRE(P > 4 * 65536);
    const int B = 64;
    nf_real *x = malloc((size_t)B * 8 * sizeof *x), *dl = malloc(B * sizeof *dl);
    nf_real *p0 = malloc(P * sizeof *p0), *ga = malloc(P * sizeof *ga), *pa = malloc(P * sizeof *pa);
    REQUIRE(x && dl && p0 && ga && pa);
    nf_rng r;
    nf_rng_seed(&r, 3);
    lc_randn(&r, x, (size_t)B * 8, 1, 0);
    for (int i = 0; i < B; i++) dl[i] = (nf_real)(-1.0 / B);
    memcpy(p0, nf_flow_params(f), P * sizeof *p0);
    for (int threads = 2; threads <= 3; threads++) {
        nf_ws *w;
        REQUIRE(nf_ws_create_threads(f, B, threads, &w) == 0);
        nf_real *g = nf_flow_grad(f);
        double ss = -1;
        REQUIRE(nf_flow_zero_grad_ws(f, w) == 0);
        g = nf_flow_grad(f);
        CHECK(!nf_ws_grad_sumsq(w, g, P, &ss));
        REQUIRE(nf_flow_log_prob_grad(f, w, x, NULL, B, 1, dl, NULL, NULL, NULL) == 0);
        REQUIRE(nf_ws_grad_sumsq(w, g, P, &ss) == 1);
        CHECK(!nf_ws_grad_sumsq(w, ga, P, &ss)); /* another buffer */
        REQUIRE(nf_ws_grad_sumsq(w, g, P, &ss) == 1);
        CHECK(!nf_ws_grad_sumsq(w, g, P - 1, &ss)); /* another length */
        REQUIRE(nf_ws_grad_sumsq(w, g, P, &ss) == 1);
        double norm = nf_clip_grad_norm_ws(w, g, P, 0); /* a pass over g */
        CHECK_MSG(sqrt(ss) == norm, "threads %d: sqrt(cached) %.17g, clip's norm %.17g", threads, sqrt(ss), norm);
        CHECK(nf_grad_norm_ws(w, g, P) == norm);
        CHECK(norm > 1e-3);
        for (int kind = 0; kind < 2; kind++) {
            for (int scaled = 0; scaled < 2; scaled++) {
                double clip = scaled ? norm / 3 : 0, gs = scaled ? clip / norm : 1.0;
                nf_adam a, b;
                REQUIRE(nf_adam_init(&a, kind ? NF_OPT_ADAMW : NF_OPT_ADAM, P, 0.01) == 0);
                REQUIRE(nf_adam_init(&b, kind ? NF_OPT_ADAMW : NF_OPT_ADAM, P, 0.01) == 0);
                for (int step = 0; step < 2; step++) {
                    /* a: clip in place, then the step, on copies */
                    memcpy(ga, g, P * sizeof *g);
                    memcpy(pa, step ? pa : p0, P * sizeof *pa);
                    if (step == 0) memcpy(nf_flow_params(f), p0, P * sizeof *p0);
                    double na = nf_clip_grad_norm_ws(w, ga, P, clip);
                    CHECK(na == norm);
                    nf_adam_step_ws(&a, NULL, pa, ga, 1e-3);
                    /* b: one fused pass on the flow's own gradient */
                    nf_real *keep = malloc(P * sizeof *keep);
                    REQUIRE(keep);
                    memcpy(keep, g, P * sizeof *g);
                    nf_adam_step_scaled_ws(&b, w, nf_flow_params(f), g, 1e-3, gs);
                    CHECK(!nf_ws_grad_sumsq(w, g, P, &ss));
                    size_t nz = 0;
                    for (size_t i = 0; i < P; i++) nz += g[i] != 0;
                    CHECK_MSG(nz == 0, "%zu gradient entries left non-zero", nz);
                    memcpy(g, keep, P * sizeof *g); /* the same gradient for step 2 */
                    free(keep);
                }
                CHECK_MSG(memcmp(pa, nf_flow_params(f), P * sizeof *pa) == 0,
                          "threads %d kind %d scaled %d: parameters differ", threads, kind, scaled);
                CHECK(memcmp(a.m, b.m, P * sizeof *a.m) == 0 && memcmp(a.v, b.v, P * sizeof *a.v) == 0);
                nf_adam_free(&a);
                nf_adam_free(&b);
            }
        }
        /* zeroing forgets the sum too */
        REQUIRE(nf_flow_log_prob_grad(f, w, x, NULL, B, 1, dl, NULL, NULL, NULL) == 0);
        CHECK(nf_ws_grad_sumsq(w, g, P, &ss) == 1);
        nf_flow_zero_grad_ws(f, w);
        CHECK(!nf_ws_grad_sumsq(w, g, P, &ss));
        /* and a change said by the caller: the norm is then a pass */
        REQUIRE(nf_flow_log_prob_grad(f, w, x, NULL, B, 1, dl, NULL, NULL, NULL) == 0);
        g[0] += 1000;
        nf_ws_grad_changed(w);
        CHECK(!nf_ws_grad_sumsq(w, g, P, &ss));
        CHECK(nf_grad_norm_ws(w, g, P) == nf_clip_grad_norm_ws(w, g, P, 0));
        CHECK(nf_grad_norm_ws(w, g, P) > 999);
        memcpy(nf_flow_params(f), p0, P * sizeof *p0);
        nf_ws_free(w);
    }
    free(x), free(dl), free(p0), free(ga), free(pa);
    nf_flow_free(f);
}

/* forward-only workspaces (one scratch, two row buffers), plain and
 * threaded: the plain workspace's rows; gradients refused */
TEST(ws_inference_matches_plain) {
    enum { N = 150, WS = 48 };
    for (int s = 0; s < NSPECS; s++) {
        nf_flow *f = make(specs[s], 13 + s);
        if (!f) continue;
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
        nf_ws *wp, *wi[2];
        REQUIRE(nf_ws_create(f, WS, &wp) == 0);
        REQUIRE(nf_ws_create_inference(f, WS, &wi[0]) == 0);
        REQUIRE(nf_ws_create_ex(f, WS, 2, NF_WS_INFERENCE, &wi[1]) == 0);
        CHECK_EQ_INT(nf_ws_threads(wi[1]), 2);
        bufs u;
        REQUIRE(bufs_init(&u, N, D, 17) == 0);
        nf_real *x = u.x, *a = u.a, *la = u.la, *lb = u.lb;
        const nf_real *cx = C ? u.ctx : NULL;
        for (int v = 0; v < 2; v++) {
            nf_ws *w = wi[v];
            rows_agree(specs[s], v ? "inference, threaded" : "inference", f, w, wp, x, cx, N, 5, a,
                       u.b, la, lb);
            /* log p through the gradient entry point, without weights */
            CHECK(nf_flow_log_prob(f, wp, x, cx, WS, lb) == 0);
            CHECK(nf_flow_log_prob_grad(f, w, x, cx, WS, 0, NULL, la, NULL, NULL) == 0);
            for (int i = 0; i < WS; i++) CLOSE(la[i], lb[i], "log_prob_grad without weights", i);
            CHECK(nf_flow_log_prob_grad(f, w, x, cx, WS, 1, la, NULL, NULL, NULL) ==
                  NF_EUNSUPPORTED);
            CHECK(nf_flow_transform_grad(f, w, x, cx, WS, 0, a, NULL, NULL, NULL, NULL, NULL) ==
                  NF_EUNSUPPORTED);
            CHECK(nf_flow_transform_backward(f, w, x, cx, WS, 0, a, NULL, NULL, NULL) ==
                  NF_EUNSUPPORTED);
        }
        bufs_free(&u);
        nf_ws_free(wp);
        nf_ws_free(wi[0]);
        nf_ws_free(wi[1]);
        nf_flow_free(f);
    }
}

/* Sampling on a threaded workspace: the parts draw their own base rows from
 * the one stream (core/flow.c, par_sample), each from its first Box-Muller
 * pair, a pair split between two parts where a part starts at an odd value
 * (odd D).  With no layers the samples are the draws: bit for bit those of a
 * plain workspace, for normal and diagonal bases, with and without log p. */
TEST(threads_sample_draws_exact) {
    static const char *const bases[] = {
        "{\"dim\":5,\"layers\":[]}",
        "{\"dim\":7,\"base\":\"diag_normal\",\"layers\":[]}",
        "{\"dim\":4,\"layers\":[]}",
    };
    enum { N = 203, WS = 64 };
    for (int s = 0; s < 3; s++) {
        nf_flow *f = NULL;
        REQUIRE(nf_flow_create(bases[s], &f, NULL, 0) == 0);
        nf_rng r;
        nf_rng_seed(&r, 5);
        nf_real *p = nf_flow_params(f);
        for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] = (nf_real)(0.3 * nf_rng_normal(&r));
        int D = nf_flow_dim(f);
        nf_ws *wp, *wt;
        REQUIRE(nf_ws_create(f, WS, &wp) == 0);
        REQUIRE(nf_ws_create_threads(f, WS, 3, &wt) == 0);
        nf_real *a = malloc(sizeof(nf_real) * N * D), *b = malloc(sizeof(nf_real) * N * D);
        nf_real la[N], lb[N];
        REQUIRE(a && b);
        static const int Bs[] = {1, 16, 25, 64, 100, N};
        for (size_t k = 0; k < sizeof Bs / sizeof *Bs; k++)
            for (int lp = 0; lp < 2; lp++) {
                int B = Bs[k];
                CHECK(nf_flow_sample(f, wt, B, 0.9, 17 + k, NULL, a, lp ? la : NULL) == 0);
                CHECK(nf_flow_sample(f, wp, B, 0.9, 17 + k, NULL, b, lp ? lb : NULL) == 0);
                CHECK_MSG(!memcmp(a, b, sizeof(nf_real) * B * D), "%s B=%d: draws differ",
                          bases[s], B);
                if (lp) CHECK_MSG(!memcmp(la, lb, sizeof(nf_real) * B), "%s B=%d: log p", bases[s], B);
            }
        free(a);
        free(b);
        nf_ws_free(wp);
        nf_ws_free(wt);
        nf_flow_free(f);
    }
}
