/* test_spline.c: rational-quadratic spline layers (core/spline.c).
 * Generic layer checks on spline_coupling and spline_ar (tails included via
 * in_scale 2 against tail_bound 3), the identity at initialisation, and the
 * scalar spline against a plain reference built here from the definition. */
#include "../test.h"
#include "layercheck.h"
#include "../../core/rqs.h"

/* ---- generic checks -------------------------------------------------------- */

static void check(const char *spec, int D, int C, uint64_t seed) {
    lc_opts o = {0};
    o.D = D;
    o.C = C;
    o.B = 9;
    o.in_scale = 2.0;
    o.seed = seed;
    CHECK_MSG(lc_check_layer(spec, &o) == 0, "%s D=%d C=%d", spec, D, C);
}

TEST(spline_coupling_d2) { check("{\"type\":\"spline_coupling\",\"hidden\":[8]}", 2, 0, 1); }
TEST(spline_coupling_d3_ctx) {
    check("{\"type\":\"spline_coupling\",\"hidden\":[8,8],\"bins\":5,\"mask\":\"odd\"}", 3, 2, 2);
}
TEST(spline_coupling_d5) {
    check("{\"type\":\"spline_coupling\",\"hidden\":[10],\"net\":\"resnet\",\"activation\":\"tanh\","
          "\"tail_bound\":2.5}", 5, 0, 3);
}
TEST(spline_coupling_d5_ctx) {
    check("{\"type\":\"spline_coupling\",\"hidden\":[8],\"mask\":[1,0,0,1,0]}", 5, 2, 4);
}
TEST(spline_ar_d2) { check("{\"type\":\"spline_ar\",\"hidden\":[8]}", 2, 0, 5); }
TEST(spline_ar_d3_ctx) { check("{\"type\":\"spline_ar\",\"hidden\":[8,8],\"bins\":4}", 3, 2, 6); }
TEST(spline_ar_d5) {
    check("{\"type\":\"spline_ar\",\"hidden\":[12],\"order\":\"random\",\"order_seed\":7,"
          "\"activation\":\"tanh\"}", 5, 0, 7);
}
TEST(spline_ar_d5_ctx_desc) {
    check("{\"type\":\"spline_ar\",\"hidden\":[12],\"order\":\"desc\"}", 5, 2, 8);
}

/* ---- a fresh layer is exactly the identity ----------------------------------- */

static void check_identity(const char *spec) {
    char err[256] = "";
    nf_flow *f = NULL;
    nf_ws *w = NULL;
    int B = 64, D = 4;
    nf_real x[64 * 4], z[64 * 4], x2[64 * 4], ld[64], ld2[64];
    CHECK_MSG(nf_flow_create(spec, &f, err, sizeof err) == 0, "%s: %s", spec, err);
    REQUIRE(f);
    REQUIRE(nf_ws_create(f, B, &w) == 0);
    nf_rng r;
    nf_rng_seed(&r, 11);
    for (int i = 0; i < B * D; i++) x[i] = (nf_real)(2.5 * nf_rng_normal(&r));
    x[0] = 3; /* the tail bound itself */
    x[1] = -3;
    REQUIRE(nf_flow_encode(f, w, x, NULL, B, z, ld) == 0);
    REQUIRE(nf_flow_decode(f, w, x, NULL, B, x2, ld2) == 0);
    for (int i = 0; i < B * D; i++) {
        CHECK_CLOSE(z[i], x[i], 1e-6, 1e-6);
        CHECK_CLOSE(x2[i], x[i], 1e-6, 1e-6);
    }
    for (int b = 0; b < B; b++) {
        CHECK_CLOSE(ld[b], 0, 1e-6, 0);
        CHECK_CLOSE(ld2[b], 0, 1e-6, 0);
    }
    nf_ws_free(w);
    nf_flow_free(f);
}

TEST(spline_fresh_identity) {
    check_identity("{\"dim\":4,\"layers\":[{\"type\":\"spline_coupling\",\"hidden\":[16]}]}");
    check_identity("{\"dim\":4,\"layers\":[{\"type\":\"spline_ar\",\"hidden\":[16]}]}");
    check_identity("{\"dim\":4,\"layers\":[{\"type\":\"spline_ar\",\"bins\":3,"
                   "\"min_derivative\":0.1,\"min_bin_width\":0.2,\"min_bin_height\":0.05}]}");
}

/* ---- the scalar spline against a plain reference ----------------------------- */

enum { RK = 6 };
static const double RB = 3.0, RMW = 1e-3, RMH = 1e-3, RMD = 1e-3;

typedef struct { double xs[RK + 1], ys[RK + 1], ds[RK + 1]; } ref_knots;

/* Knots straight from the definition in core/spline.c's header comment. */
static void ref_build(const nf_real *th, ref_knots *k) {
    double ew[RK], eh[RK], sw = 0, sh = 0;
    for (int i = 0; i < RK; i++) {
        sw += ew[i] = exp(th[i]);
        sh += eh[i] = exp(th[RK + i]);
    }
    k->xs[0] = k->ys[0] = -RB;
    for (int i = 0; i < RK; i++) {
        k->xs[i + 1] = k->xs[i] + 2 * RB * (RMW + (1 - RK * RMW) * ew[i] / sw);
        k->ys[i + 1] = k->ys[i] + 2 * RB * (RMH + (1 - RK * RMH) * eh[i] / sh);
    }
    k->ds[0] = k->ds[RK] = 1;
    for (int i = 1; i < RK; i++)
        k->ds[i] = RMD + log(1 + exp(th[2 * RK + i - 1] + log(exp(1 - RMD) - 1)));
}

/* g(x) by the Gregory-Delbourgo formula, with a linear bin search. */
static double ref_g(const ref_knots *k, double x) {
    if (x < -RB || x > RB) return x;
    int b = 0;
    while (b < RK - 1 && x >= k->xs[b + 1]) b++;
    double w = k->xs[b + 1] - k->xs[b], h = k->ys[b + 1] - k->ys[b], s = h / w;
    double xi = (x - k->xs[b]) / w;
    return k->ys[b] + h * (s * xi * xi + k->ds[b] * xi * (1 - xi)) /
                          (s + (k->ds[b] + k->ds[b + 1] - 2 * s) * xi * (1 - xi));
}

static double rqs(const nf_real *th, double in, int dir, double *ld) {
    return nf_rqs_apply(th, RK, RB, RMW, RMH, RMD, in, dir, ld);
}

TEST(spline_scalar_reference) {
    nf_rng r;
    nf_rng_seed(&r, 3);
    for (int trial = 0; trial < 20; trial++) {
        nf_real th[3 * RK - 1];
        for (int p = 0; p < 3 * RK - 1; p++) th[p] = (nf_real)(1.5 * nf_rng_normal(&r));
        ref_knots k;
        ref_build(th, &k);
        double ld;
        /* knots map to knots with slope d_k */
        for (int i = 0; i <= RK; i++) {
            double z = rqs(th, k.xs[i], 0, &ld);
            CHECK_CLOSE(z, k.ys[i], 1e-9, 1e-9);
            CHECK_CLOSE(ld, log(k.ds[i]), 1e-6, 1e-6);
        }
        double prev = -INFINITY;
        for (int n = 0; n < 1000; n++) {
            double x = -2 * RB + 4 * RB * (n + 0.5) / 1000; /* a third in the tails */
            double z = rqs(th, x, 0, &ld);
            CHECK_MSG(z > prev, "not monotone at x=%g", x);
            prev = z;
            CHECK_CLOSE(z, ref_g(&k, x), 1e-9, 1e-9);
            /* log g' against a central difference of the reference */
            double e = 1e-6, fd = (ref_g(&k, x + e) - ref_g(&k, x - e)) / (2 * e);
            int near_knot = 0;
            for (int i = 0; i <= RK; i++) near_knot |= fabs(x - k.xs[i]) < 2 * e;
            if (!near_knot) CHECK_CLOSE(ld, log(fd), 1e-5, 1e-5);
            double ld2, x2 = rqs(th, z, 1, &ld2);
            CHECK_CLOSE(x2, x, 1e-9, 1e-9);
            CHECK_CLOSE(ld + ld2, 0, 1e-9, 0);
            if (fabs(x) > RB) {
                CHECK(z == x);
                CHECK(ld == 0);
            }
        }
        for (int s = -1; s <= 1; s += 2) {
            double z = rqs(th, s * 1e3, 0, &ld), x2 = rqs(th, s * 1e3, 1, &ld);
            CHECK(z == s * 1e3 && x2 == s * 1e3 && isfinite(ld));
        }
    }
}

/* Extreme conditioner outputs (very peaked softmax, huge/small slopes) stay
 * finite and invertible. */
TEST(spline_scalar_extreme) {
    nf_rng r;
    nf_rng_seed(&r, 9);
    for (int trial = 0; trial < 20; trial++) {
        nf_real th[3 * RK - 1];
        for (int p = 0; p < 3 * RK - 1; p++) th[p] = (nf_real)(30 * nf_rng_normal(&r));
        for (int n = 0; n < 200; n++) {
            double x = -RB + 2 * RB * n / 199.0, ld, ld2;
            double z = rqs(th, x, 0, &ld), x2 = rqs(th, z, 1, &ld2);
            CHECK(isfinite(z) && isfinite(ld) && isfinite(x2) && isfinite(ld2));
            CHECK(z >= -RB && z <= RB);
        }
    }
}

/* ---- large inputs through a perturbed layer ----------------------------------- */

TEST(spline_large_inputs) {
    const char *specs[] = {
        "{\"dim\":3,\"context_dim\":2,\"layers\":[{\"type\":\"spline_coupling\",\"hidden\":[8]}]}",
        "{\"dim\":3,\"context_dim\":2,\"layers\":[{\"type\":\"spline_ar\",\"hidden\":[8]}]}"};
    for (int s = 0; s < 2; s++) {
        char err[256] = "";
        nf_flow *f = NULL;
        nf_ws *w = NULL;
        REQUIRE(nf_flow_create(specs[s], &f, err, sizeof err) == 0);
        REQUIRE(nf_ws_create(f, 4, &w) == 0);
        nf_rng r;
        nf_rng_seed(&r, 5);
        nf_real *p = nf_flow_params(f);
        for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] += (nf_real)nf_rng_normal(&r);
        nf_flow_constrain(f);
        nf_real x[12] = {1e3, -1e3, 1e3, -1e3, 1e3, 0.5, 0.1, -1e3, 2, 1e3, 1e3, 1e3};
        nf_real ctx[8] = {1e3, -1e3, 0, 1, -1e3, 1e3, 2, 3};
        nf_real z[12], x2[12], ld[4], ld2[4];
        REQUIRE(nf_flow_encode(f, w, x, ctx, 4, z, ld) == 0);
        REQUIRE(nf_flow_decode(f, w, x, ctx, 4, x2, ld2) == 0);
        for (int i = 0; i < 12; i++) CHECK(isfinite(z[i]) && isfinite(x2[i]));
        for (int b = 0; b < 4; b++) CHECK(isfinite(ld[b]) && isfinite(ld2[b]));
        nf_ws_free(w);
        nf_flow_free(f);
    }
}

/* ---- config ------------------------------------------------------------------ */

TEST(spline_config_roundtrip) {
    const char *specs[] = {
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_coupling\",\"bins\":5,\"tail_bound\":4,"
        "\"min_derivative\":0.01,\"mask\":\"odd\"}]}",
        "{\"dim\":3,\"context_dim\":1,\"layers\":[{\"type\":\"spline_ar\",\"bins\":12,"
        "\"min_bin_width\":0.01,\"order\":\"desc\"}]}"};
    for (int s = 0; s < 2; s++) {
        char err[256] = "";
        nf_flow *f = NULL, *g = NULL;
        REQUIRE(nf_flow_create(specs[s], &f, err, sizeof err) == 0);
        char *j1 = nf_flow_config_json(f);
        REQUIRE(j1);
        CHECK_MSG(nf_flow_create(j1, &g, err, sizeof err) == 0, "%s: %s", j1, err);
        if (g) {
            char *j2 = nf_flow_config_json(g);
            CHECK_MSG(j2 && strcmp(j1, j2) == 0, "%s vs %s", j1, j2 ? j2 : "(null)");
            CHECK_EQ_INT(nf_flow_num_params(f), nf_flow_num_params(g));
            free(j2);
        }
        CHECK(strstr(j1, "\"bins\"") && strstr(j1, "\"tail_bound\"") &&
              strstr(j1, "\"min_bin_width\"") && strstr(j1, "\"min_bin_height\"") &&
              strstr(j1, "\"min_derivative\""));
        free(j1);
        nf_flow_free(g);
        nf_flow_free(f);
    }
}

TEST(spline_bad_specs) {
    const char *bad[] = {
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_coupling\",\"bins\":1}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_coupling\",\"bins\":8,\"min_bin_width\":0.2}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_ar\",\"min_derivative\":1}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_ar\",\"tail_bound\":0}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_ar\",\"mask\":\"even\"}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"spline_coupling\",\"order\":\"asc\"}]}",
        "{\"dim\":1,\"layers\":[{\"type\":\"spline_coupling\"}]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        nf_flow *f = NULL;
        CHECK_MSG(nf_flow_create(bad[i], &f, err, sizeof err) < 0 && !f && err[0], "accepted %s",
                  bad[i]);
        nf_flow_free(f);
    }
}

/* nf_rqs_build's vector path (libmvec's exp and log1p, four at a time)
 * against its scalar path (libm): every knot, derivative and softmax
 * within 1e-13 relative, the end knots pinned exactly, knots increasing;
 * bins 2..64, parameters from tiny to saturating */
TEST(spline_knots_vector_matches_scalar) {
    if (!__builtin_cpu_supports("avx2")) printf("    (no AVX2: both sides are the scalar path)\n");
    nf_rng r;
    nf_rng_seed(&r, 41);
    static const double scales[] = {1e-3, 1, 8, 40};
    for (int K = 2; K <= NF_RQS_KMAX; K += K < 10 ? 1 : 9)
        for (int si = 0; si < 4; si++) {
            nf_rqs_cfg cf;
            nf_rqs_cfg_set(&cf, K, 3.0, 1e-3, 1e-3, 1e-3);
            nf_real th[3 * NF_RQS_KMAX];
            for (int i = 0; i < 3 * K - 1; i++) th[i] = (nf_real)(scales[si] * nf_rng_normal(&r));
            nf_rqs_knots a, b;
            nf_rqs_vector = 1;
            nf_rqs_build(&cf, th, &a);
            nf_rqs_vector = 0;
            nf_rqs_build(&cf, th, &b);
            nf_rqs_vector = 1;
#define NEAR(p, q, what, k)                                                                    \
    CHECK_MSG(fabs((p) - (q)) <= 1e-13 * (1 + fabs(q)), "K %d scale %g %s[%d]: vector %.17g, " \
              "scalar %.17g", K, scales[si], what, k, (p), (q))
            for (int k = 0; k <= K; k++) {
                NEAR(a.xs[k], b.xs[k], "xs", k);
                NEAR(a.ys[k], b.ys[k], "ys", k);
                NEAR(a.ds[k], b.ds[k], "ds", k);
                if (k < K) NEAR(a.smw[k], b.smw[k], "smw", k);
                if (k < K) NEAR(a.smh[k], b.smh[k], "smh", k);
                if (k < K) CHECK(a.xs[k + 1] > a.xs[k] && a.ys[k + 1] > a.ys[k] && a.ds[k] > 0);
            }
#undef NEAR
            CHECK(a.xs[0] == -3.0 && a.xs[K] == 3.0 && a.ys[0] == -3.0 && a.ys[K] == 3.0);
            CHECK(a.ds[0] == 1.0 && a.ds[K] == 1.0);
        }
}

/* nf_rqs_run four splines side by side (AVX2) against nf_rqs_build (whose
 * vector and scalar knots spline_knots_vector_matches_scalar compares)
 * followed by nf_rqs_eval / nf_rqs_solve one spline at a time: outputs and
 * log-dets within 1e-12, identical bins (inputs on the knots themselves,
 * both ends, the tails, NaN and infinities), counts that leave 1-3 spare
 * lanes, and parameters strided as the image coupling lays them out (qs = N);
 * with nf_rqs_vector 0 nf_rqs_run must be that reference exactly */
static int run_near(double p, double q) {
    if (isnan(q)) return isnan(p);
    if (isinf(q)) return p == q;
    return fabs(p - q) <= 1e-12 * (1 + fabs(q));
}

TEST(spline_run_vector_matches_scalar) {
    if (!__builtin_cpu_supports("avx2")) printf("    (no AVX2: both sides are the scalar path)\n");
    nf_rng r;
    nf_rng_seed(&r, 43);
    static const double scales[] = {1e-3, 1, 8, 30};
    enum { N = 23 };
    for (int K = 2; K <= NF_RQS_KMAX; K += K < 10 ? 1 : 9)
        for (int si = 0; si < 4; si++)
            for (int qs = 1; qs <= N; qs += N - 1) { /* image layout: qs = N pixels */
                int P = 3 * K - 1;
                size_t es = qs == 1 ? (size_t)P : 1;
                nf_rqs_cfg cf;
                nf_rqs_cfg_set(&cf, K, 3.0, 1e-3, 1e-3, 1e-3);
                nf_real th[N * 3 * NF_RQS_KMAX];
                for (int i = 0; i < N * P; i++) th[i] = (nf_real)(scales[si] * nf_rng_normal(&r));
                for (int dir = 0; dir < 2; dir++) {
                    double x[N], y[2][N], ld[2][N];
                    for (int e = 0; e < N; e++) {
                        /* spline e's own knots, for inputs exactly on them */
                        nf_real t[3 * NF_RQS_KMAX];
                        for (int q = 0; q < P; q++) t[q] = th[e * es + q * qs];
                        nf_rqs_knots kn;
                        nf_rqs_build(&cf, t, &kn);
                        const double *knots = dir ? kn.ys : kn.xs;
                        switch (e % 8) {
                        case 0: x[e] = knots[(e / 8) % (K + 1)]; break;
                        case 1: x[e] = e % 16 == 1 ? 3.0 : -3.0; break;
                        case 2: x[e] = e == 2 ? NAN : e == 10 ? INFINITY : -4.5; break;
                        case 3: x[e] = knots[1 + (e / 8) % (K - 1)] * (1 + 1e-15); break;
                        default: x[e] = 3.2 * (2 * nf_rng_uniform(&r) - 1);
                        }
                    }
                    double ysr[N], lsr[N]; /* the same with scalar knots */
                    for (int e = 0; e < N; e++) {
                        nf_real t[3 * NF_RQS_KMAX];
                        for (int q = 0; q < P; q++) t[q] = th[e * es + q * qs];
                        nf_rqs_knots kn;
                        nf_rqs_build(&cf, t, &kn);
                        y[1][e] = dir ? nf_rqs_solve(&cf, &kn, x[e], &ld[1][e])
                                      : nf_rqs_eval(&cf, &kn, x[e], &ld[1][e]);
                        nf_rqs_vector = 0;
                        nf_rqs_build(&cf, t, &kn);
                        nf_rqs_vector = 1;
                        ysr[e] = dir ? nf_rqs_solve(&cf, &kn, x[e], &lsr[e]) : nf_rqs_eval(&cf, &kn, x[e], &lsr[e]);
                    }
                    for (int n = 1; n <= N; n += n < 8 ? 1 : 15) {
                        double ys[N], ls[N];
                        for (int e = 0; e < N; e++) y[0][e] = ld[0][e] = ys[e] = ls[e] = -7;
                        nf_rqs_run(&cf, th, es, (size_t)qs, n, x, y[0], ld[0], dir);
                        nf_rqs_vector = 0;
                        nf_rqs_run(&cf, th, es, (size_t)qs, n, x, ys, ls, dir);
                        nf_rqs_vector = 1;
                        for (int e = n; e < N; e++)
                            CHECK_MSG(y[0][e] == -7 && ld[0][e] == -7 && ys[e] == -7 && ls[e] == -7,
                                      "wrote past n=%d", n);
                        /* nf_rqs_vector 0: exactly the scalar reference */
                        for (int e = 0; e < n; e++)
                            CHECK_MSG((ys[e] == ysr[e] || (isnan(ys[e]) && isnan(ysr[e]))) &&
                                          (ls[e] == lsr[e] || (isnan(ls[e]) && isnan(lsr[e]))),
                                      "scalar run K %d dir %d e %d", K, dir, e);
                    }
                    for (int e = 0; e < N; e++)
                        CHECK_MSG(run_near(y[0][e], y[1][e]) && run_near(ld[0][e], ld[1][e]),
                                  "K %d scale %g qs %d dir %d e %d x %.17g: vector %.17g %.17g, "
                                  "scalar %.17g %.17g", K, scales[si], qs, dir, e, x[e], y[0][e],
                                  ld[0][e], y[1][e], ld[1][e]);
                }
            }
}

/* nf_rqs_run_backward against nf_rqs_build + nf_rqs_backward one spline at
 * a time: every parameter gradient and dJ/dx within 1e-11 of the largest
 * gradient of that spline (inputs on knots, both ends, tails, NaN), with
 * and without dJ/dy, spare lanes and strided parameters as above; with
 * nf_rqs_vector 0 exactly the reference with scalar knots */
TEST(spline_run_backward_vector_matches_scalar) {
    nf_rng r;
    nf_rng_seed(&r, 47);
    static const double scales[] = {1e-3, 1, 8};
    enum { N = 13, PM = 3 * NF_RQS_KMAX };
    for (int K = 2; K <= NF_RQS_KMAX; K += K < 10 ? 1 : 9)
        for (int si = 0; si < 3; si++)
            for (int qs = 1; qs <= N; qs += N - 1)
                for (int withz = 0; withz < 2; withz++) {
                    int P = 3 * K - 1;
                    size_t es = qs == 1 ? (size_t)P : 1, span = (size_t)N * P;
                    nf_rqs_cfg cf;
                    nf_rqs_cfg_set(&cf, K, 3.0, 1e-3, 1e-3, 1e-3);
                    nf_real th[N * PM], gv[N * PM], gs[N * PM];
                    double x[N], gz[N], gl[N], gxv[N], gxs[N], ref[N][PM + 1], refs[N][PM + 1];
                    for (size_t i = 0; i < span; i++) th[i] = (nf_real)(scales[si] * nf_rng_normal(&r));
                    for (int e = 0; e < N; e++) {
                        nf_real t[PM];
                        for (int q = 0; q < P; q++) t[q] = th[e * es + q * qs];
                        nf_rqs_knots kn;
                        nf_rqs_build(&cf, t, &kn);
                        switch (e % 5) {
                        case 0: x[e] = kn.xs[(e / 5) % (K + 1)]; break;
                        case 1: x[e] = e == 1 ? 3.0 : e == 6 ? -3.0 : NAN; break;
                        case 2: x[e] = 4.1; break;
                        default: x[e] = 3.2 * (2 * nf_rng_uniform(&r) - 1);
                        }
                        gz[e] = nf_rng_normal(&r);
                        gl[e] = nf_rng_normal(&r);
                        double g[PM];
                        ref[e][P] = nf_rqs_backward(&cf, &kn, t, x[e], withz ? gz[e] : 0, gl[e], g);
                        for (int q = 0; q < P; q++) ref[e][q] = (nf_real)g[q];
                        nf_rqs_vector = 0;
                        nf_rqs_build(&cf, t, &kn);
                        nf_rqs_vector = 1;
                        refs[e][P] = nf_rqs_backward(&cf, &kn, t, x[e], withz ? gz[e] : 0, gl[e], g);
                        for (int q = 0; q < P; q++) refs[e][q] = (nf_real)g[q];
                    }
                    for (int n = 1; n <= N; n += n < 6 ? 1 : 7) {
                        for (size_t i = 0; i < span; i++) gv[i] = gs[i] = -7;
                        for (int e = 0; e < N; e++) gxv[e] = gxs[e] = -7;
                        nf_rqs_run_backward(&cf, th, es, (size_t)qs, n, x, withz ? gz : NULL, gl, gv, gxv);
                        nf_rqs_vector = 0;
                        nf_rqs_run_backward(&cf, th, es, (size_t)qs, n, x, withz ? gz : NULL, gl, gs, gxs);
                        nf_rqs_vector = 1;
                        for (int e = 0; e < N; e++) {
                            if (e >= n) {
                                CHECK_MSG(gxv[e] == -7 && gxs[e] == -7, "dx written past n=%d", n);
                                continue;
                            }
                            double big = 1;
                            for (int q = 0; q <= P; q++) big = fmax(big, fabs(ref[e][q]));
                            for (int q = 0; q <= P; q++) {
                                double a = q < P ? gv[e * es + q * qs] : gxv[e];
                                double b = q < P ? gs[e * es + q * qs] : gxs[e];
                                int ok = isnan(ref[e][q]) ? isnan(a) : fabs(a - ref[e][q]) <= 1e-11 * big;
                                CHECK_MSG(ok, "K %d scale %g qs %d dz %d n %d e %d q %d x %.17g: vector "
                                          "%.17g, reference %.17g", K, scales[si], qs, withz, n, e, q,
                                          x[e], a, ref[e][q]);
                                CHECK_MSG(b == refs[e][q] || (isnan(b) && isnan(refs[e][q])),
                                          "scalar run K %d e %d q %d", K, e, q);
                            }
                        }
                        /* nothing outside the n splines' parameters */
                        for (size_t i = 0; i < span; i++)
                            if ((int)(qs == 1 ? i / (size_t)P : i % (size_t)N) >= n)
                                CHECK_MSG(gv[i] == -7 && gs[i] == -7, "gradient past n=%d", n);
                    }
                }
}
