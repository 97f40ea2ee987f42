/* test_cnf.c: continuous normalizing flows (core/cnf.c): the generic layer
 * checks for every solver, trace and gradient method, adjoint against
 * backprop, the Hutchinson estimator's mean, the regularisers' gradients,
 * the density's integral, per-row independence, step limits and bad specs. */
#include "../test.h"
#include "layercheck.h"
#include "../../core/kern.h"

/* Tolerances whose solver error is below each build's round-trip check
 * (layercheck: 1e-8 in float64, 2e-3 in float32). */
#ifdef NF_DOUBLE
#define TIGHT "\"rtol\":1e-11,\"atol\":1e-11"
#else
#define TIGHT "\"rtol\":1e-6,\"atol\":1e-6"
#endif

static nf_flow *mk(const char *spec) {
    nf_flow *f = NULL;
    char err[300] = "";
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", spec, err);
    return f;
}

TEST(cnf_generic_dopri5) {
    lc_opts o = {.D = 3, .B = 5, .seed = 1};
    CHECK(lc_check_layer("{\"type\":\"cnf\",\"hidden\":[8,8]," TIGHT "}", &o) == 0);
    /* context, softplus */
    lc_opts oc = {.D = 2, .C = 2, .B = 4, .seed = 2};
    CHECK(lc_check_layer("{\"type\":\"cnf\",\"hidden\":[7],\"activation\":\"softplus\"," TIGHT "}", &oc) == 0);
    /* adjoint gradients (the continuous gradient, within the tolerance) */
    lc_opts oa = {.D = 3, .C = 1, .B = 4, .seed = 3};
    CHECK(lc_check_layer("{\"type\":\"cnf\",\"hidden\":[6,5],\"gradient\":\"adjoint\"," TIGHT "}", &oa) == 0);
    /* Hutchinson in training (gradients checked with training = 1 and 0) */
    lc_opts oh = {.D = 3, .B = 4, .seed = 4, .training = 1};
    CHECK(lc_check_layer("{\"type\":\"cnf\",\"hidden\":[6],\"trace\":\"hutchinson\"," TIGHT "}", &oh) == 0);
    CHECK(lc_check_layer("{\"type\":\"cnf\",\"hidden\":[6],\"trace\":\"hutchinson\",\"probe\":\"gaussian\",\"gradient\":\"adjoint\"," TIGHT "}", &oh) == 0);
    /* composed with other layers */
    lc_opts o2 = {.D = 2, .B = 3, .seed = 5};
    CHECK(lc_check_layer("{\"type\":\"actnorm\"},{\"type\":\"cnf\",\"hidden\":[5]," TIGHT "},{\"type\":\"affine_coupling\",\"hidden\":[4]}", &o2) == 0);
}

/* RK4 is not exactly invertible: its round trip errs by O(h^4), so the
 * generic round trip is replaced by the order check; the gradient is that of
 * the discrete map, exact to finite differences. */
TEST(cnf_rk4) {
    nf_real x[4 * 3], z[4 * 3], x2[4 * 3], ld[4];
    nf_rng r;
    nf_rng_seed(&r, 9);
    lc_randn(&r, x, 12, 1, 0);
    double errs[2];
    for (int s = 0; s < 2; s++) {
        char spec[200];
        snprintf(spec, sizeof spec, "{\"dim\":3,\"layers\":[{\"type\":\"cnf\",\"hidden\":[8],\"solver\":\"rk4\",\"steps\":%d}]}", s ? 16 : 8);
        nf_flow *f = mk(spec);
        REQUIRE(f);
        lc_perturb(f, 0.4, 1);
        nf_ws *w = NULL;
        REQUIRE(nf_ws_create(f, 4, &w) == 0);
        CHECK(nf_flow_encode(f, w, x, NULL, 4, z, ld) == 0);
        CHECK(nf_flow_decode(f, w, z, NULL, 4, x2, ld) == 0);
        errs[s] = 0;
        for (int i = 0; i < 12; i++) errs[s] = fmax(errs[s], fabs((double)x2[i] - x[i]));
        nf_ode_stats st;
        nf_ws_ode_stats(w, &st);
        CHECK_EQ_INT(st.nfe, 2 * 4 * (s ? 16 : 8)); /* 4 stages a step, two solves */
        if (s == 0) CHECK(lc_check_grads(f, x, NULL, 4, 0, 1e-5) == 0);
        nf_ws_free(w);
        nf_flow_free(f);
    }
#ifdef NF_DOUBLE
    /* halving h divides a 4th-order method's error by 16 or more (the
     * round trip's leading terms partly cancel: about 32 here) */
    CHECK_MSG(errs[1] < errs[0] / 12, "round trip %g at 8 steps, %g at 16", errs[0], errs[1]);
#endif
    CHECK(errs[1] < 1e-3);
}

/* adjoint and backprop agree on the parameter and input gradients of
 * mean log p, both with the exact and with the Hutchinson trace */
TEST(cnf_adjoint_matches_backprop) {
    const char *traces[] = {"exact", "hutchinson"};
    for (int t = 0; t < 2; t++) {
        nf_real *g[2], dx[2][6 * 2];
        size_t P = 0;
        for (int m = 0; m < 2; m++) {
            char spec[300];
            snprintf(spec, sizeof spec, "{\"dim\":2,\"context_dim\":1,\"layers\":[{\"type\":\"cnf\",\"hidden\":[8,8],"
                     "\"trace\":\"%s\",\"gradient\":\"%s\"," TIGHT "}]}", traces[t], m ? "adjoint" : "backprop");
            nf_flow *f = mk(spec);
            REQUIRE(f);
            lc_perturb(f, 0.5, 2);
            P = nf_flow_num_params(f);
            nf_real x[12], ctx[6], dlogp[6];
            nf_rng r;
            nf_rng_seed(&r, 5);
            lc_randn(&r, x, 12, 1, 0);
            lc_randn(&r, ctx, 6, 1, 0);
            for (int i = 0; i < 6; i++) dlogp[i] = (nf_real)(-1.0 / 6);
            nf_ws *w = NULL;
            REQUIRE(nf_ws_create(f, 6, &w) == 0);
            nf_flow_zero_grad(f);
            CHECK(nf_flow_log_prob_grad(f, w, x, ctx, 6, 1, dlogp, NULL, dx[m], NULL) == 0);
            g[m] = malloc(P * sizeof(nf_real));
            memcpy(g[m], nf_flow_grad(f), P * sizeof(nf_real));
            nf_ws_free(w);
            nf_flow_free(f);
        }
#ifdef NF_DOUBLE
        double tol = 1e-7;
#else
        double tol = 2e-3;
#endif
        double gmax = 0;
        for (size_t i = 0; i < P; i++) gmax = fmax(gmax, fabs((double)g[0][i]));
        for (size_t i = 0; i < P; i++)
            CHECK_MSG(fabs((double)g[0][i] - g[1][i]) <= tol * (gmax + 1), "%s: param %zu backprop %.10g adjoint %.10g",
                      traces[t], i, (double)g[0][i], (double)g[1][i]);
        for (int i = 0; i < 12; i++) CHECK_CLOSE(dx[1][i], dx[0][i], tol, tol);
        free(g[0]);
        free(g[1]);
    }
}

/* The Hutchinson log-det (training trace) averaged over many probe seeds is
 * the exact log-det: the mean is within 4 standard errors (and the
 * Gaussian probe's spread is the larger one, as its variance 2||J||_F^2
 * exceeds Rademacher's 2 sum_{i!=j} J_ij^2). */
TEST(cnf_hutchinson_unbiased) {
    for (int pr = 0; pr < 2; pr++) {
        char spec[300];
        snprintf(spec, sizeof spec, "{\"dim\":3,\"layers\":[{\"type\":\"cnf\",\"hidden\":[8],\"trace\":\"hutchinson\","
                 "\"probe\":\"%s\",\"rtol\":1e-6,\"atol\":1e-6}]}", pr ? "gaussian" : "rademacher");
        nf_flow *f = mk(spec);
        REQUIRE(f);
        lc_perturb(f, 0.6, 3);
        nf_real x[3] = {0.3f, -0.7f, 1.1f}, z[3], exact, ld;
        nf_ws *w = NULL;
        REQUIRE(nf_ws_create(f, 1, &w) == 0);
        CHECK(nf_flow_encode(f, w, x, NULL, 1, z, &exact) == 0); /* scoring: exact */
        int N = 1500;
        double s = 0, s2 = 0;
        for (int i = 0; i < N; i++) {
            nf_ws_set_noise_seed(w, (uint64_t)i + 1);
            CHECK(nf_flow_transform_grad(f, w, x, NULL, 1, 1, NULL, NULL, z, &ld, NULL, NULL) == 0);
            s += ld;
            s2 += (double)ld * ld;
        }
        double mean = s / N, var = s2 / N - mean * mean;
                CHECK(var > 1e-6); /* a real estimator, not the exact trace again */
        CHECK_MSG(fabs(mean - exact) < 4 * sqrt(var / N), "mean %g exact %g sd %g", mean, (double)exact, sqrt(var));
        printf("    %s: mean %.5f exact %.5f sd %.4f\n", pr ? "gaussian" : "rademacher", mean, (double)exact, sqrt(var));
        nf_ws_free(w);
        nf_flow_free(f);
    }
}

#ifdef NF_DOUBLE
/* The regularisers' gradient: nf_flow_log_prob_grad with training set
 * differentiates sum_b dlogp_b (log p_b - λ_K K_b - λ_J J_b); K and J come
 * from the workspace counters.  Both gradient methods against central
 * differences. */
static double reg_objective(nf_flow *f, nf_ws *w, const nf_real *x, int B, const nf_real *dlogp,
                            double lk, double lj) {
    nf_real lp[8];
    nf_ws_ode_stats_reset(w);
    nf_flow_log_prob_grad(f, w, x, NULL, B, 1, NULL, lp, NULL, NULL);
    nf_ode_stats st;
    nf_ws_ode_stats(w, &st);
    double s = 0;
    for (int r = 0; r < B; r++) s += dlogp[r] * lp[r];
    return s - dlogp[0] * (lk * st.kinetic + lj * st.jacobian); /* uniform weights */
}

TEST(cnf_regulariser_gradients) {
    const char *grads[] = {"backprop", "adjoint"};
    for (int m = 0; m < 2; m++) {
        char spec[300];
        snprintf(spec, sizeof spec, "{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"hidden\":[6],\"reg_kinetic\":0.7,"
                 "\"reg_jacobian\":0.3,\"gradient\":\"%s\"," TIGHT "}]}", grads[m]);
        nf_flow *f = mk(spec);
        REQUIRE(f);
        lc_perturb(f, 0.5, 7);
        int B = 4;
        nf_real x[8], dlogp[4];
        nf_rng r;
        nf_rng_seed(&r, 1);
        lc_randn(&r, x, 8, 1, 0);
        for (int i = 0; i < B; i++) dlogp[i] = (nf_real)(-1.0 / B);
        nf_ws *w = NULL;
        REQUIRE(nf_ws_create(f, B, &w) == 0);
        nf_flow_zero_grad(f);
        CHECK(nf_flow_log_prob_grad(f, w, x, NULL, B, 1, dlogp, NULL, NULL, NULL) == 0);
        nf_ode_stats st;
        nf_ws_ode_stats(w, &st);
        CHECK(st.kinetic > 0 && st.jacobian > 0);
        CHECK_EQ_INT(st.reg_rows, B);
        nf_real *p = nf_flow_params(f), *g = nf_flow_grad(f);
        double h = 1e-6;
        for (size_t i = 0; i < nf_flow_num_params(f); i += 3) {
            nf_real keep = p[i];
            p[i] = keep + h;
            double lp = reg_objective(f, w, x, B, dlogp, 0.7, 0.3);
            p[i] = keep - h;
            double lm = reg_objective(f, w, x, B, dlogp, 0.7, 0.3);
            p[i] = keep;
            double fd = (lp - lm) / (2 * h);
            CHECK_MSG(fabs(fd - g[i]) <= 1e-5 * (1 + fabs(fd)), "%s param %zu: analytic %.10g fd %.10g", grads[m], i,
                      (double)g[i], fd);
        }
        nf_ws_free(w);
        nf_flow_free(f);
    }
}
#endif

/* The density of a 2-D model integrates to 1: a trapezoid sum of p on a
 * grid over [-7, 7]^2 (the tails beyond hold < 1e-9 of the mass for a
 * mildly perturbed flow of a standard normal). */
TEST(cnf_density_integrates_to_one) {
    nf_flow *f = mk("{\"dim\":2,\"preset\":\"ffjord\",\"hidden\":[16,16],\"rtol\":1e-6,\"atol\":1e-6}");
    REQUIRE(f);
    lc_perturb(f, 0.3, 11);
    const int n = 141;
    const double lo = -7, step = 14.0 / (n - 1);
    nf_real *x = malloc((size_t)n * n * 2 * sizeof *x), *lp = malloc((size_t)n * n * sizeof *lp);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            x[((size_t)i * n + j) * 2] = (nf_real)(lo + i * step);
            x[((size_t)i * n + j) * 2 + 1] = (nf_real)(lo + j * step);
        }
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create_inference(f, 512, &w) == 0);
    CHECK(nf_flow_log_prob(f, w, x, NULL, n * n, lp) == 0);
    double s = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double wt = (i == 0 || i == n - 1 ? 0.5 : 1) * (j == 0 || j == n - 1 ? 0.5 : 1);
            s += wt * exp(lp[(size_t)i * n + j]);
        }
    s *= step * step;
    CHECK_MSG(fabs(s - 1) < 2e-3, "integral %.6f", s);
    CHECK(nf_flow_log_prob_exact(f) == 1);
    nf_ws_free(w);
    nf_flow_free(f);
    free(x);
    free(lp);
}

/* Per-row steps: a row's result does not depend on its batch.  Scoring in
 * chunks of 3 rows, in one batch and on 2 threads gives the same log p
 * (to the BLAS rounding of different batch shapes) */
TEST(cnf_rows_independent) {
    nf_flow *f = mk("{\"dim\":2,\"preset\":\"ffjord\",\"hidden\":[8,8],\"depth\":2}");
    REQUIRE(f);
    lc_perturb(f, 0.5, 12);
    nf_real x[40 * 2], a[40], b[40], c[40];
    nf_rng r;
    nf_rng_seed(&r, 3);
    lc_randn(&r, x, 80, 2, 0);
    x[0] = 40; /* a far row takes more steps than the others */
    nf_ws *w1 = NULL, *w2 = NULL, *w3 = NULL;
    REQUIRE(nf_ws_create(f, 3, &w1) == 0 && nf_ws_create(f, 40, &w2) == 0);
    REQUIRE(nf_ws_create_threads(f, 40, 2, &w3) == 0);
    CHECK(nf_flow_log_prob(f, w1, x, NULL, 40, a) == 0);
    CHECK(nf_flow_log_prob(f, w2, x, NULL, 40, b) == 0);
    CHECK(nf_flow_log_prob(f, w3, x, NULL, 40, c) == 0);
    for (int i = 0; i < 40; i++) {
        CHECK_CLOSE(a[i], b[i], 1e-5, 1e-5);
        CHECK_CLOSE(c[i], b[i], 1e-5, 1e-5);
    }
    nf_ode_stats s1, s3;
    nf_ws_ode_stats(w1, &s1);
    nf_ws_ode_stats(w3, &s3);
    CHECK_EQ_INT(s1.rows, 80); /* two cnf layers */
    CHECK_EQ_INT(s3.rows, 80);
    CHECK(s1.nfe > 0 && s1.row_nfe >= s1.nfe);
    nf_ws_ode_stats_reset(w3);
    nf_ws_ode_stats(w3, &s3);
    CHECK_EQ_INT(s3.nfe, 0);
    nf_ws_free(w1);
    nf_ws_free(w2);
    nf_ws_free(w3);
    nf_flow_free(f);
}

/* Sampling without log p integrates z alone (no trace tangents, ℓ out of the
 * error norm): the same samples to the solver's tolerance, fewer row
 * evaluations' worth of work, and decode with a log-det still exact. */
TEST(cnf_sample_without_log_prob) {
    nf_flow *f = mk("{\"dim\":2,\"preset\":\"ffjord\",\"hidden\":[8,8]," TIGHT "}");
    REQUIRE(f);
    lc_perturb(f, 0.5, 21);
    enum { N = 64 };
    nf_real xa[N * 2], xb[N * 2], lp[N], lpx[N];
    for (int th = 1; th <= 2; th++) {
        nf_ws *w = NULL;
        REQUIRE(nf_ws_create_threads(f, N, th, &w) == 0);
        CHECK(nf_flow_sample(f, w, N, 1.0, 7, NULL, xa, lp) == 0);
        CHECK(nf_flow_sample(f, w, N, 1.0, 7, NULL, xb, NULL) == 0);
        double worst = 0;
        for (int i = 0; i < 2 * N; i++) worst = fmax(worst, fabs((double)xa[i] - xb[i]));
#ifdef NF_DOUBLE
        CHECK_MSG(worst < 1e-8, "%d thread(s): samples differ by %g", th, worst);
#else
        CHECK_MSG(worst < 1e-4, "%d thread(s): samples differ by %g", th, worst);
#endif
        /* the log p returned with the samples is the density's at them */
        CHECK(nf_flow_log_prob(f, w, xa, NULL, N, lpx) == 0);
        for (int i = 0; i < N; i++) CHECK_CLOSE(lp[i], lpx[i], 1e-3, 1e-3);
        nf_ws_free(w);
    }
    nf_flow_free(f);
}

#ifndef NF_DOUBLE
/* The float concat-squash row (core/kern.h nf_cs_row) against libm in
 * double, over gate and activation arguments up to a few hundred, both
 * signs, and the series/exp switch of tanh at |p| = 0.2. */
TEST(cnf_float_row_kernel) {
    enum { H = 203 };
    float a[H], c[H], b[H], d[H], y[H], y0[H], g[H], p[H], o[H], s[H];
    memset(c, 0, sizeof c);
    double worst_g = 0, worst_o = 0, worst_s = 0;
    nf_rng r;
    nf_rng_seed(&r, 5);
    for (int rep = 0; rep < 400; rep++) {
        double scale = rep < 100 ? 0.1 : rep < 200 ? 1 : rep < 300 ? 10 : 60;
        /* t = ±1 and c = 0: the gate's argument a t + c is exact in float,
         * so what is measured is the kernel's error, not the argument's
         * rounding (which the layer has in any float evaluation) */
        float t = rep % 2 ? 1.0f : -1.0f;
        for (int j = 0; j < H; j++) {
            a[j] = (float)(scale * nf_rng_normal(&r));
            c[j] = 0;
            b[j] = (float)(0.1 * nf_rng_normal(&r));
            d[j] = (float)(0.1 * nf_rng_normal(&r));
            y[j] = y0[j] = (float)(scale * nf_rng_normal(&r));
        }
        y[0] = y0[0] = 0.2f - b[0]; /* near the switch */
        for (int act = 0; act < 2; act++) {
            memcpy(y, y0, sizeof y);
            nf_cs_row(H, t, a, c, b, d, y, g, p, o, s, act);
            for (int j = 0; j < H; j++) {
                double za = (double)a[j] * t + c[j], gj = 1 / (1 + exp(-za));
                double u = (double)y0[j] + b[j], pj = u * gj + (double)d[j] * t;
                CHECK_CLOSE(y[j], u, 1e-6, 1e-6);
                worst_g = fmax(worst_g, fabs(g[j] - gj) / fmax(gj, 1e-30));
                /* p: the product's float rounding, relative to |u g| + |d t| */
                CHECK_CLOSE(p[j], pj, 1e-6, 1e-6 * (fabs(u * gj) + fabs(d[j] * t)));
                double po = act ? tanh((double)p[j]) : p[j];
                worst_o = fmax(worst_o, fabs(o[j] - po) / fmax(fabs(po), 1e-30));
                double ps = act ? (1 - po * po) * g[j] : g[j];
                worst_s = fmax(worst_s, fabs(s[j] - ps));
            }
        }
    }
    printf("    sigmoid rel %.2e, tanh rel %.2e, act' g abs %.2e\n", worst_g, worst_o, worst_s);
    CHECK_MSG(worst_g < 4e-7, "sigmoid: %.3g relative", worst_g);
    CHECK_MSG(worst_o < 4e-7, "tanh: %.3g relative", worst_o);
    CHECK_MSG(worst_s < 1e-6, "act' g: %.3g absolute", worst_s);
}
#endif

/* max_steps ends a solve that needs more with NF_ESTEPS, not a hang */
TEST(cnf_max_steps) {
    nf_flow *f = mk("{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"hidden\":[8],\"rtol\":1e-9,\"atol\":1e-9,\"max_steps\":3}]}");
    REQUIRE(f);
    lc_perturb(f, 1.0, 4);
    nf_real x[4] = {1, 2, -1, 0.5f}, lp[2];
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create(f, 2, &w) == 0);
    CHECK_EQ_INT(nf_flow_log_prob(f, w, x, NULL, 2, lp), NF_ESTEPS);
    CHECK(strstr(nf_strerror(NF_ESTEPS), "max_steps") != NULL);
    nf_ws_free(w);
    nf_flow_free(f);
}

TEST(cnf_rejects_bad_specs) {
    static const struct { const char *spec, *field; } bad[] = {
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"rtol\":-1e-5}]}", "rtol"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"atol\":0}]}", "atol"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"solver\":\"rk4\",\"steps\":0}]}", "steps"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"steps\":5}]}", "steps"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"solver\":\"rk4\",\"rtol\":1e-3}]}", "rtol"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"max_steps\":0}]}", "max_steps"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"solver\":\"euler\"}]}", "solver"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"activation\":\"relu\"}]}", "activation"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"trace\":\"approx\"}]}", "trace"},
        {"{\"dim\":65,\"layers\":[{\"type\":\"cnf\",\"trace\":\"exact\"}]}", "trace"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"probe\":\"uniform\"}]}", "probe"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"gradient\":\"none\"}]}", "gradient"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"reg_kinetic\":-1}]}", "reg_kinetic"},
        {"{\"dim\":2,\"layers\":[{\"type\":\"cnf\",\"bogus\":1}]}", "bogus"},
        {"{\"dim\":2,\"preset\":\"realnvp\",\"rtol\":1e-3}", "rtol"},
        {"{\"dim\":2,\"preset\":\"ffjord\",\"actnorm\":3}", "actnorm"},
        {"{\"dim\":2,\"preset\":\"ffjord\",\"activation\":\"elu\"}", "activation"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nf_flow *f = NULL;
        char err[300] = "";
        CHECK_MSG(nf_flow_create(bad[i].spec, &f, err, sizeof err) == NF_EINVAL, "%s accepted", bad[i].spec);
        CHECK_MSG(strstr(err, bad[i].field) != NULL, "%s: message \"%s\" does not name %s", bad[i].spec, err,
                  bad[i].field);
        nf_flow_free(f);
    }
    /* above NF_CNF_EXACT_MAX the default trace is Hutchinson and scoring is an estimate */
    nf_flow *f = mk("{\"dim\":65,\"layers\":[{\"type\":\"cnf\",\"hidden\":[4]}]}");
    REQUIRE(f);
    CHECK(nf_flow_log_prob_exact(f) == 0);
    char *j = nf_flow_ode_json(f);
    CHECK(j && strstr(j, "\"trace\":\"hutchinson\"") && strstr(j, "\"log_prob_exact\":false"));
    free(j);
    nf_flow_free(f);
}

/* the canonical spec rebuilds the same layer */
TEST(cnf_config_roundtrip) {
    nf_flow *f = mk("{\"dim\":2,\"preset\":\"ffjord\",\"depth\":2,\"hidden\":[5],\"solver\":\"rk4\",\"steps\":7,"
                    "\"trace\":\"hutchinson\",\"probe\":\"gaussian\",\"gradient\":\"adjoint\",\"reg_kinetic\":0.5}");
    REQUIRE(f);
    char *c1 = nf_flow_config_json(f);
    CHECK(strstr(c1, "\"steps\":7") && strstr(c1, "\"gradient\":\"adjoint\"") && strstr(c1, "\"type\":\"actnorm\""));
    nf_flow *g = mk(c1);
    REQUIRE(g);
    char *c2 = nf_flow_config_json(g);
    CHECK(strcmp(c1, c2) == 0);
    char *j = nf_flow_ode_json(f);
    CHECK(j && strstr(j, "\"solver\":\"rk4\"") && strstr(j, "\"trace\":\"exact\""));
    CHECK_EQ_INT(nf_flow_num_ode(f), 2);
    free(j);
    free(c1);
    free(c2);
    nf_flow_free(f);
    nf_flow_free(g);
}

/* ---- training: exact resume with stochastic probes ------------------------------ */
#include "../../core/train.h"

typedef struct {
    void *blob;
    size_t len;
    int64_t at;
} cnf_ckpt;

static int cnf_on_ckpt(void *u, void *state, size_t len, int64_t step) {
    cnf_ckpt *c = u;
    if (step != c->at) return 0;
    c->blob = malloc(len);
    memcpy(c->blob, state, len);
    c->len = len;
    return NF_ECANCELLED;
}

static nf_trainer *cnf_trainer(nf_flow **f, const nf_real *x, int threads) {
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 3;
    c.batch_size = 32;
    c.lr = 3e-3;
    c.log_every = 0;
    c.seed = 5;
    c.threads = threads;
    *f = mk("{\"dim\":2,\"preset\":\"ffjord\",\"depth\":2,\"hidden\":[8],\"trace\":\"hutchinson\","
            "\"reg_kinetic\":0.1,\"reg_jacobian\":0.1,\"rtol\":1e-4,\"atol\":1e-4}");
    nf_trainer *t = NULL;
    char err[200];
    if (*f) CHECK(nf_trainer_create(*f, &c, x, 160, x + 320, 40, &t, err, sizeof err) == 0);
    return t;
}

/* A run stopped at a checkpoint and resumed gives exactly the parameters of
 * an uninterrupted one: the Hutchinson probes come from (seed, step).
 * Float build only (the state blob keeps float32 moments, as in
 * test_train.c). */
static void cnf_resume(int threads) {
#ifdef NF_DOUBLE
    return;
#endif
    nf_real x[400];
    nf_rng r;
    nf_rng_seed(&r, 8);
    for (int i = 0; i < 200; i++) {
        double t = 3.14159 * nf_rng_uniform(&r);
        x[2 * i] = (nf_real)(cos(t) + 0.1 * nf_rng_normal(&r));
        x[2 * i + 1] = (nf_real)(sin(t) + 0.1 * nf_rng_normal(&r));
    }
    nf_flow *a, *b, *d;
    nf_trainer *ta = cnf_trainer(&a, x, threads), *tb = cnf_trainer(&b, x, threads);
    REQUIRE(ta && tb);
    CHECK(nf_trainer_run(ta, NULL) == 0);
    nf_train_metrics m;
    nf_trainer_metrics(ta, &m);
    CHECK(m.ode == 2 && m.nfe > m.nfe_forward && m.nfe_forward > 0 && m.kinetic > 0 && m.jacobian > 0);
    cnf_ckpt k = {.at = 7};
    nf_train_hooks h = {.user = &k, .checkpoint = cnf_on_ckpt, .checkpoint_every = 1};
    CHECK(nf_trainer_run(tb, &h) == NF_ECANCELLED);
    REQUIRE(k.blob);
    nf_trainer *td = cnf_trainer(&d, x, threads);
    REQUIRE(td);
    CHECK(nf_trainer_load_state(td, k.blob, k.len) == 0);
    CHECK(nf_trainer_run(td, NULL) == 0);
    CHECK(memcmp(nf_flow_params(a), nf_flow_params(d), nf_flow_num_params(a) * sizeof(nf_real)) == 0);
    free(k.blob);
    nf_trainer_free(ta);
    nf_trainer_free(tb);
    nf_trainer_free(td);
    nf_flow_free(a);
    nf_flow_free(b);
    nf_flow_free(d);
}

TEST_T(cnf_train_resume_is_bit_identical, 120) { cnf_resume(1); }
TEST_T(cnf_train_resume_is_bit_identical_2_threads, 120) { cnf_resume(2); }
