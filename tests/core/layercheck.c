/* layercheck.c: the generic transform checks (see layercheck.h). */
#include "layercheck.h"

#include "../test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef NF_DOUBLE
#define RT_TOL 1e-8  /* round trip, relative */
#define JAC_H 1e-5
#define JAC_TOL 1e-6
#else
#define RT_TOL 2e-3
#define JAC_H 2e-3
#define JAC_TOL 2e-2 /* float32: FD error ~ eps/h per entry, summed over D */
#endif

void lc_randn(nf_rng *rng, nf_real *buf, size_t n, double scale, double offset) {
    for (size_t i = 0; i < n; i++) buf[i] = (nf_real)(scale * nf_rng_normal(rng) + offset);
}

void lc_perturb(nf_flow *f, double s, uint64_t seed) {
    nf_rng r;
    nf_rng_seed(&r, seed);
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] += (nf_real)(s * nf_rng_normal(&r));
    nf_flow_constrain(f);
}

static int first_type_fail;
static const char *cur_type = "?";

#define LC_FAIL(...)                                                                  \
    do {                                                                              \
        char m_[400];                                                                 \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                         \
        test_fail_at(__FILE__, __LINE__, "[%s] %s", cur_type, m_);                    \
        fails++;                                                                      \
    } while (0)

int lc_check_roundtrip(nf_flow *f, const nf_real *x, const nf_real *ctx, int B, double tol) {
    int D = nf_flow_dim(f), fails = 0;
    nf_ws *w = NULL;
    if (nf_ws_create(f, B, &w)) return 1;
    size_t n = (size_t)B * D;
    nf_real *z = malloc(n * sizeof *z), *x2 = malloc(n * sizeof *z), *z2 = malloc(n * sizeof *z);
    nf_real *l1 = malloc(B * sizeof *l1), *l2 = malloc(B * sizeof *l1);
    int rc = nf_flow_encode(f, w, x, ctx, B, z, l1);
    if (rc) LC_FAIL("encode failed: %s", nf_strerror(rc));
    rc = nf_flow_decode(f, w, z, ctx, B, x2, l2);
    if (rc) LC_FAIL("decode failed: %s", nf_strerror(rc));
    for (size_t i = 0; i < n && fails < 5; i++)
        if (!(fabs((double)x2[i] - x[i]) <= tol * (1 + fabs((double)x[i]))))
            LC_FAIL("decode(encode(x)) != x at %zu: %.10g vs %.10g", i, (double)x2[i], (double)x[i]);
    for (int r = 0; r < B && fails < 5; r++)
        if (!(fabs((double)l1[r] + l2[r]) <= tol * (1 + fabs((double)l1[r]))))
            LC_FAIL("log-dets do not cancel, row %d: %.10g + %.10g", r, (double)l1[r], (double)l2[r]);
    /* and the other way round, from z */
    rc = nf_flow_decode(f, w, x, ctx, B, z, l1);
    if (rc) LC_FAIL("decode failed: %s", nf_strerror(rc));
    rc = nf_flow_encode(f, w, z, ctx, B, z2, l2);
    if (rc) LC_FAIL("encode failed: %s", nf_strerror(rc));
    for (size_t i = 0; i < n && fails < 5; i++)
        if (!(fabs((double)z2[i] - x[i]) <= tol * (1 + fabs((double)x[i]))))
            LC_FAIL("encode(decode(z)) != z at %zu: %.10g vs %.10g", i, (double)z2[i], (double)x[i]);
    for (int r = 0; r < B && fails < 5; r++)
        if (!(fabs((double)l1[r] + l2[r]) <= tol * (1 + fabs((double)l1[r]))))
            LC_FAIL("log-dets do not cancel (z side), row %d", r);
    free(z);
    free(x2);
    free(z2);
    free(l1);
    free(l2);
    nf_ws_free(w);
    return fails;
}

/* log|det A| for a D x D row-major matrix, LU with partial pivoting */
static double logabsdet(double *A, int D) {
    double s = 0;
    for (int k = 0; k < D; k++) {
        int p = k;
        for (int i = k + 1; i < D; i++)
            if (fabs(A[i * D + k]) > fabs(A[p * D + k])) p = i;
        if (p != k)
            for (int j = 0; j < D; j++) {
                double t = A[k * D + j];
                A[k * D + j] = A[p * D + j];
                A[p * D + j] = t;
            }
        double piv = A[k * D + k];
        if (piv == 0) return -INFINITY;
        s += log(fabs(piv));
        for (int i = k + 1; i < D; i++) {
            double m = A[i * D + k] / piv;
            for (int j = k; j < D; j++) A[i * D + j] -= m * A[k * D + j];
        }
    }
    return s;
}

int lc_check_jacobian(nf_flow *f, const nf_real *x, const nf_real *ctx, int B, double tol) {
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f), fails = 0;
    nf_ws *w = NULL;
    if (nf_ws_create(f, 1, &w)) return 1;
    nf_real *xp = malloc(D * sizeof *xp), *zp = malloc(D * sizeof *zp), *zm = malloc(D * sizeof *zm);
    double *J = malloc((size_t)D * D * sizeof *J);
    for (int r = 0; r < B && r < 4; r++) {
        const nf_real *xr = x + (size_t)r * D, *cr = C ? ctx + (size_t)r * C : NULL;
        nf_real ld;
        nf_flow_encode(f, w, xr, cr, 1, zp, &ld);
        for (int j = 0; j < D; j++) {
            double h = JAC_H * (1 + fabs((double)xr[j]));
            memcpy(xp, xr, D * sizeof *xp);
            xp[j] = (nf_real)(xr[j] + h);
            double hp = (double)xp[j] - xr[j];
            nf_flow_encode(f, w, xp, cr, 1, zp, NULL);
            xp[j] = (nf_real)(xr[j] - h);
            double hm = (double)xr[j] - xp[j];
            nf_flow_encode(f, w, xp, cr, 1, zm, NULL);
            for (int i = 0; i < D; i++) J[i * D + j] = ((double)zp[i] - zm[i]) / (hp + hm);
        }
        double fd = logabsdet(J, D);
        if (!(fabs(fd - ld) <= tol * (1 + fabs(fd))))
            LC_FAIL("row %d: analytic log-det %.10g, dense finite-difference Jacobian %.10g", r,
                    (double)ld, fd);
    }
    free(xp);
    free(zp);
    free(zm);
    free(J);
    nf_ws_free(w);
    return fails;
}

#ifdef NF_DOUBLE
/* L = sum r1 .* z + sum r2 .* logdet through the flow's layers, the density
 * pass used as a plain map (nf_flow_transform_grad: no base distribution) */
static double chain_loss(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                         int training, const nf_real *r1, const nf_real *r2, nf_real *z,
                         nf_real *ld) {
    nf_flow_transform_grad(f, w, x, ctx, B, training, NULL, NULL, z, ld, NULL, NULL);
    double s = 0;
    for (size_t i = 0; i < (size_t)B * f->D; i++) s += (double)r1[i] * z[i];
    for (int r = 0; r < B; r++) s += (double)r2[r] * ld[r];
    return s;
}
#endif

int lc_check_grads(nf_flow *f, const nf_real *x, const nf_real *ctx, int B, int training,
                   double tol) {
#ifndef NF_DOUBLE
    (void)f, (void)x, (void)ctx, (void)B, (void)training, (void)tol;
    return 0; /* float32 build: see layercheck.h */
#else
    int fails = 0, D = f->D, C = f->C;
    nf_ws *w = NULL;
    if (nf_ws_create(f, B, &w)) {
        LC_FAIL("cannot create a workspace of %d rows", B);
        return fails;
    }
    size_t n = (size_t)B * D;
    nf_real *z = malloc(n * sizeof *z), *ld = malloc(B * sizeof *ld);
    nf_real *r1 = malloc(n * sizeof *r1), *r2 = malloc(B * sizeof *r2);
    nf_real *dx = malloc(n * sizeof *dx), *dctx = calloc((size_t)B * C + 1, sizeof *dctx);
    nf_real *xx = malloc(n * sizeof *xx), *cc = malloc(((size_t)B * C + 1) * sizeof *cc);
    const nf_real *cx = C ? cc : NULL;
    nf_rng rng;
    nf_rng_seed(&rng, 99);
    lc_randn(&rng, r1, n, 1, 0);
    lc_randn(&rng, r2, B, 1, 0);
    memcpy(xx, x, n * sizeof *xx);
    if (C) memcpy(cc, ctx, (size_t)B * C * sizeof *cc);
    /* analytic: every layer's backward, chained */
    nf_flow_zero_grad(f);
    int rc = nf_flow_transform_grad(f, w, xx, cx, B, training, r1, r2, z, ld, dx, C ? dctx : NULL);
    if (rc) LC_FAIL("transform_grad failed: %s", nf_strerror(rc));
    const double h = 1e-6;
    /* the layers' parameters (the base's come last and take no part): all
     * of them when few, else a seeded sample of 400 */
    size_t np = f->base.param_off, nchk = np <= 400 ? np : 400;
    for (size_t q = 0; q < nchk && fails < 8; q++) {
        size_t i = np <= 400 ? q : (size_t)(nf_rng_u64(&rng) % np);
        nf_real *p = f->params + i, keep = *p;
        *p = keep + h;
        nf_flow_constrain(f);
        double lp = chain_loss(f, w, xx, cx, B, training, r1, r2, z, ld);
        *p = keep - h;
        nf_flow_constrain(f);
        double lm = chain_loss(f, w, xx, cx, B, training, r1, r2, z, ld);
        *p = keep;
        double fd = (lp - lm) / (2 * h), an = f->grad[i];
        if (!(fabs(fd - an) <= tol * (1 + fabs(fd))))
            LC_FAIL("param %zu of %zu: analytic %.10g, finite difference %.10g", i, np, an, fd);
    }
    for (size_t i = 0; i < n && fails < 8; i++) {
        nf_real keep = xx[i];
        xx[i] = keep + h;
        double lp = chain_loss(f, w, xx, cx, B, training, r1, r2, z, ld);
        xx[i] = keep - h;
        double lm = chain_loss(f, w, xx, cx, B, training, r1, r2, z, ld);
        xx[i] = keep;
        double fd = (lp - lm) / (2 * h);
        if (!(fabs(fd - dx[i]) <= tol * (1 + fabs(fd))))
            LC_FAIL("dx[%zu]: analytic %.10g, finite difference %.10g", i, (double)dx[i], fd);
    }
    for (size_t i = 0; i < (size_t)B * C && fails < 8; i++) {
        nf_real keep = cc[i];
        cc[i] = keep + h;
        double lp = chain_loss(f, w, xx, cc, B, training, r1, r2, z, ld);
        cc[i] = keep - h;
        double lm = chain_loss(f, w, xx, cc, B, training, r1, r2, z, ld);
        cc[i] = keep;
        double fd = (lp - lm) / (2 * h);
        if (!(fabs(fd - dctx[i]) <= tol * (1 + fabs(fd))))
            LC_FAIL("dctx[%zu]: analytic %.10g, finite difference %.10g", i, (double)dctx[i], fd);
    }
    nf_ws_free(w);
    free(z);
    free(ld);
    free(r1);
    free(r2);
    free(dx);
    free(dctx);
    free(xx);
    free(cc);
    return fails;
#endif
}

static int check_large(nf_flow *f, nf_rng *rng, int B) {
    int D = f->D, C = f->C, fails = 0;
    nf_ws *w = NULL;
    if (nf_ws_create(f, B, &w)) return 1;
    size_t n = (size_t)B * D;
    nf_real *x = malloc(n * sizeof *x), *z = malloc(n * sizeof *z), *ld = malloc(B * sizeof *ld);
    nf_real *ctx = malloc(((size_t)B * C + 1) * sizeof *ctx);
    for (size_t i = 0; i < n; i++) x[i] = (nf_real)(i % 2 ? 1e3 : -1e3) * (nf_real)nf_rng_uniform(rng);
    for (int r = 0; r < B; r++) x[(size_t)r * D] = (nf_real)(r % 2 ? 1e3 : -1e3);
    lc_randn(rng, ctx, (size_t)B * C, 1, 0);
    nf_flow_encode(f, w, x, C ? ctx : NULL, B, z, ld);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(z[i])) {
            LC_FAIL("encode of |x| <= 1e3 gave non-finite z[%zu]", i);
            break;
        }
    for (int r = 0; r < B; r++)
        if (!isfinite(ld[r])) {
            LC_FAIL("encode of |x| <= 1e3 gave non-finite log-det, row %d", r);
            break;
        }
    nf_flow_decode(f, w, x, C ? ctx : NULL, B, z, ld);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(z[i])) {
            LC_FAIL("decode of |z| <= 1e3 gave non-finite x[%zu]", i);
            break;
        }
    for (int r = 0; r < B; r++)
        if (!isfinite(ld[r])) {
            LC_FAIL("decode of |z| <= 1e3 gave non-finite log-det, row %d", r);
            break;
        }
    free(x);
    free(z);
    free(ld);
    free(ctx);
    nf_ws_free(w);
    return fails;
}

int lc_check_layer(const char *layer_spec_json, const lc_opts *o) {
    int D = o->D ? o->D : 5, C = o->C, B = o->B ? o->B : 7, fails = 0;
    double scale = o->in_scale ? o->in_scale : 1.0, noise = o->param_noise ? o->param_noise : 0.3;
    char spec[4096], shape[80] = "", err[256] = "";
    if (o->shape[0]) {
        D = o->shape[0] * o->shape[1] * o->shape[2];
        snprintf(shape, sizeof shape, "\"shape\":[%d,%d,%d],", o->shape[0], o->shape[1],
                 o->shape[2]);
    }
    snprintf(spec, sizeof spec,
             "{\"dim\":%d,\"context_dim\":%d,%s\"layers\":[%s],\"seed\":%llu}", D, C, shape,
             layer_spec_json, (unsigned long long)o->seed);
    nf_flow *f = NULL;
    cur_type = layer_spec_json;
    (void)first_type_fail;
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    if (rc) {
        LC_FAIL("cannot create flow: %s", err);
        return fails;
    }
    nf_rng rng;
    nf_rng_seed(&rng, o->seed + 12345);
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] += (nf_real)(noise * nf_rng_normal(&rng));
    nf_flow_constrain(f);
    size_t n = (size_t)B * D;
    nf_real *x = malloc(n * sizeof *x), *ctx = malloc(((size_t)B * C + 1) * sizeof *ctx);
    lc_randn(&rng, x, n, scale, o->in_offset);
    lc_randn(&rng, ctx, (size_t)B * C, 1, 0);
    const nf_real *cx = C ? ctx : NULL;
    fails += lc_check_roundtrip(f, x, cx, B, o->tol ? o->tol : RT_TOL);
    fails += lc_check_jacobian(f, x, cx, B, o->tol ? o->tol * 100 : JAC_TOL);
    fails += lc_check_grads(f, x, cx, B, o->training, 1e-5);
    if (o->training) fails += lc_check_grads(f, x, cx, B, 0, 1e-5);
    if (!o->skip_large) fails += check_large(f, &rng, B);
    free(x);
    free(ctx);
    nf_flow_free(f);
    return fails;
}
