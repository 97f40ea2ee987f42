/* autoregressive.c: MAF and IAF, affine autoregressive layers on a MADE.
 *
 * Both layers share one "fast" map, a single MADE pass over u (D):
 *     [h_i, t_i] = MADE(u, ctx) outputs i*2+0, i*2+1; they depend only on
 *                  u_j with deg(j) < deg(i) (degrees from net.degrees)
 *     s_i = S tanh(h_i / S)              S = NF_SCALE_BOUND, s(0) = 0
 *     F(u)_i = u_i exp(s_i) + t_i        log|det dF/du| = sum_i s_i(u)
 * F^-1(y) is sequential: u_i = (y_i - t_i) exp(-s_i) in degree order, where
 * s_i, t_i need every u_j of lower degree.  The incremental MADE (made_inc.h)
 * computes each hidden unit once, as soon as the inputs of its degree are
 * known, so the whole inversion costs about one MADE pass.  The naive
 * reference (nf_ar_solve_naive) runs D full passes from u = 0; after pass k
 * every dim of degree <= k is exact.
 *
 *   maf: inverse (density)  z = F(x),     logdet += sum s(x)   1 pass
 *        forward (sampling) x = F^-1(z),  logdet -= sum s(x)   1 incremental pass
 *   iaf: forward (sampling) x = F(z),     logdet += sum s(z)   1 pass
 *        inverse (density)  z = F^-1(x),  logdet -= sum s(z)   1 incremental pass
 *
 * A fresh layer has a zero final MADE layer, so h = t = 0 and F is the
 * identity.  The layer's impl begins with its nf_net (tests read degrees).
 */
#include "alloc.h"
#include "nf_internal.h"
#include "kern.h"
#include "made_inc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef NF_DOUBLE
#define AR_EXP exp
#define AR_TANH tanh
#else
#define AR_EXP expf
#define AR_TANH tanhf
#endif

typedef struct ar_layer {
    nf_net net; /* MADE over D inputs, P = 2 outputs per input; keep first */
    int iaf;    /* 0: maf, 1: iaf */
} ar_layer;

static const int ar_def_hidden[2] = {64, 64};

/* s = S tanh(h/S), ds/dh = 1 - (s/S)^2 */
static inline nf_real ar_scale(nf_real h, nf_real *dsdh) {
    const nf_real S = (nf_real)NF_SCALE_BOUND;
    nf_real s = S * AR_TANH(h / S);
    if (dsdh) *dsdh = (nf_real)1 - (s / S) * (s / S);
    return s;
}

/* ws layout: [net or incremental-MADE scratch][out (B,2D)][dout (B,2D)][g (B,D)]
 * [v (B,D)][w (B,D)]; ar_fast leaves exp(s) in g and ds/dh in v for MAF's
 * backward (IAF's backward reuses them as its own scratch) */
static size_t ar_net_ws(const ar_layer *A, int B) {
    size_t a = nf_net_ws_size(&A->net, B), b = nf_made_inc_ws_size(&A->net, B);
    return a > b ? a : b;
}

static size_t ar_ws_size(const nf_layer *L, int B) {
    return ar_net_ws(L->impl, B) + (size_t)4 * B * L->D + (size_t)3 * B * L->D;
}

static nf_real *ar_out(const nf_layer *L, const nf_ctx *c) {
    return c->ws + ar_net_ws(L->impl, c->B);
}

/* Rows of y (B,D) with a non-finite value: logdet -INFINITY when mark_ld. */
static int ar_check(const nf_layer *L, int B, const nf_real *y, nf_real *logdet, int mark_ld) {
    int bad = 0;
    for (int b = 0; b < B; b++) {
        int row_bad = 0;
        for (int i = 0; i < L->D; i++)
            if (!isfinite((double)y[(size_t)b * L->D + i])) row_bad = 1;
        if (row_bad) {
            bad = 1;
            if (mark_ld && logdet) logdet[b] = (nf_real)-INFINITY;
        }
    }
    return bad ? NF_ENONFINITE : 0;
}

/* y = F(u) (B,D), one MADE pass; logdet (B) += sign * sum_i s_i(u).
 * Leaves exp(s) and ds/dh in the ws's (B,D) areas "e" and "dsdh" (where
 * backward keeps g and v), so MAF's backward computes no exp or tanh. */
static void ar_fast(const nf_layer *L, nf_ctx *c, const nf_real *u, nf_real *y,
                    nf_real *logdet, nf_real sign) {
    const ar_layer *A = L->impl;
    const int D = L->D, B = c->B;
    nf_real *out = ar_out(L, c); /* (B,2D) */
    nf_real *e = out + (size_t)4 * B * D, *dsdh = e + (size_t)B * D;
    nf_net_forward(&A->net, c->params, u, c->ctx, out, B, c->ws, c->wt);
    for (int b = 0; b < B; b++) {
        const nf_real *ur = u + (size_t)b * D, *o = out + (size_t)b * 2 * D;
        nf_real *yr = y + (size_t)b * D, *er = e + (size_t)b * D, *dr = dsdh + (size_t)b * D;
        nf_real acc = 0;
#ifndef NF_DOUBLE
        /* nothing kept for a backward in a forward-only workspace */
        acc = nf_maf_row(D, (float)NF_SCALE_BOUND, o, ur, yr, c->infer ? NULL : er,
                         c->infer ? NULL : dr);
#else
        if (c->infer) /* nothing kept for a backward */
            for (int i = 0; i < D; i++) {
                nf_real s = ar_scale(o[2 * i], NULL);
                yr[i] = ur[i] * AR_EXP(s) + o[2 * i + 1];
                acc += s;
            }
        else
            for (int i = 0; i < D; i++) {
                nf_real s = ar_scale(o[2 * i], &dr[i]);
                er[i] = AR_EXP(s);
                yr[i] = ur[i] * er[i] + o[2 * i + 1];
                acc += s;
            }
#endif
        if (logdet) logdet[b] += sign * acc;
    }
}

/* u = F^-1(y) (B,D) in one incremental MADE pass; logdet (B) += sign *
 * sum_i s_i(u).  Step j: [h_i, t_i] of the input i of degree j, then
 * u_i = (y_i - t_i) exp(-s_i), then feed u_i to the MADE. */
static void ar_solve(const nf_layer *L, nf_ctx *c, const nf_real *y, nf_real *u,
                     nf_real *logdet, nf_real sign) {
    const ar_layer *A = L->impl;
    const int D = L->D, B = c->B;
    nf_real *o = ar_out(L, c);            /* (B,2) */
    nf_real *acc = o + (size_t)B * 2 * D; /* (B) */
    nf_made_inc st;
    nf_made_inc_begin(&st, &A->net, c->params, c->ctx, B, c->ws);
    memset(acc, 0, sizeof(nf_real) * (size_t)B);
    for (int j = 1; j <= D; j++) {
        int i = nf_made_inc_input(&st, j);
        nf_made_inc_outputs(&st, j, o);
        for (int b = 0; b < B; b++) {
            nf_real s = ar_scale(o[2 * b], NULL);
            size_t n = (size_t)b * D + i;
            u[n] = (y[n] - o[2 * b + 1]) * AR_EXP(-s);
            acc[b] += s;
        }
        if (j < D) nf_made_inc_feed(&st, j, u + i, D);
    }
    if (logdet)
        for (int b = 0; b < B; b++) logdet[b] += sign * acc[b];
}

/* The naive reference: u = F^-1(y) by D MADE passes; logdet (B) -= sum_i
 * s_i(u).  The last pass's s is s(u): it read u with every degree < D exact,
 * and the final update only changes the degree-D dim, which no output
 * depends on. */
void nf_ar_solve_naive(const nf_layer *L, nf_ctx *c, const nf_real *y, nf_real *u,
                       nf_real *logdet) {
    const nf_real sign = -1;
    const ar_layer *A = L->impl;
    const int D = L->D, B = c->B;
    nf_real *out = ar_out(L, c); /* (B,2D) */
    memset(u, 0, sizeof(nf_real) * (size_t)B * D);
    for (int k = 0; k < D; k++) {
        nf_net_forward(&A->net, c->params, u, c->ctx, out, B, c->ws, c->wt);
        for (size_t n = 0; n < (size_t)B * D; n++) {
            nf_real s = ar_scale(out[2 * n], NULL);
            u[n] = (y[n] - out[2 * n + 1]) * AR_EXP(-s);
        }
    }
    if (!logdet) return;
    for (int b = 0; b < B; b++) {
        const nf_real *o = out + (size_t)b * 2 * D;
        nf_real acc = 0;
        for (int i = 0; i < D; i++) acc += ar_scale(o[2 * i], NULL);
        logdet[b] += sign * acc;
    }
}

static int ar_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                      nf_real *logdet) {
    const ar_layer *A = L->impl;
    if (A->iaf)
        ar_solve(L, c, x, z, logdet, (nf_real)-1);
    else
        ar_fast(L, c, x, z, logdet, (nf_real)1);
    return ar_check(L, c->B, z, logdet, 1);
}

static int ar_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                      nf_real *logdet) {
    const ar_layer *A = L->impl;
    if (A->iaf)
        ar_fast(L, c, z, x, logdet, (nf_real)1);
    else
        ar_solve(L, c, z, x, logdet, (nf_real)-1);
    return ar_check(L, c->B, x, logdet, 0);
}

/* MAF backward of z = F(x), logdet = sum s(x), L = <dz, z> + <dl, logdet>:
 *   dL/dx_i (direct) = dz_i exp(s_i)
 *   dL/dh_i = (dz_i x_i exp(s_i) + dl) ds/dh,   dL/dt_i = dz_i
 * and one MADE VJP carries dh, dt to x, ctx and the parameters. */
static void maf_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *dz,
                         const nf_real *dlogdet, nf_real *dx) {
    const ar_layer *A = L->impl;
    const int D = L->D, B = c->B;
    nf_real *out = ar_out(L, c);                  /* (B,2D) */
    nf_real *dout = out + (size_t)B * 2 * D;      /* (B,2D) */
    const nf_real *e = dout + (size_t)B * 2 * D, *dsdh = e + (size_t)B * D;
    /* out, exp(s), ds/dh and the MADE activations are still in ws from the
     * inverse pass on this x (ar_fast): no second forward pass */
    for (int b = 0; b < B; b++) {
        nf_real dl = dlogdet ? dlogdet[b] : 0;
        for (int i = 0; i < D; i++) {
            size_t n = (size_t)b * D + i;
            nf_real dzi = dz ? dz[n] : 0;
            dout[2 * n] = (dzi * x[n] * e[n] + dl) * dsdh[n];
            dout[2 * n + 1] = dzi;
        }
    }
    nf_net_backward(&A->net, c->params, c->grad, x, c->ctx, dout, dx, c->dctx, B, c->ws);
    if (!dx) return;
    for (size_t n = 0; n < (size_t)B * D; n++) dx[n] += (dz ? dz[n] : 0) * e[n];
}

/* IAF backward of z = F^-1(x), logdet = -sum s(z), by the implicit function
 * theorem.  F(z; θ, ctx) = x, J = dF/dz = E + N with E = diag(exp(s)) and N
 * strictly lower triangular in degree order, so
 *   g = dz + d(-dl sum s)/dz                        (one MADE VJP)
 *   J^T v = g  ->  v = E^-1 (g - N^T v)             (fixed point, exact after
 *                                                    D steps: E^-1 N^T nilpotent)
 *   dx = v,  dθ = -(dF/dθ)^T v + d(-dl sum s)/dθ     (one MADE VJP)
 * N^T v is the MADE VJP with dh_i = v_i z_i exp(s_i) ds/dh, dt_i = v_i. */
static void iaf_backward(const nf_layer *L, nf_ctx *c, const nf_real *z, const nf_real *dz,
                         const nf_real *dlogdet, nf_real *dx) {
    const ar_layer *A = L->impl;
    const int D = L->D, B = c->B;
    const size_t BD = (size_t)B * D;
    nf_real *out = ar_out(L, c);       /* (B,2D) */
    nf_real *dout = out + 2 * BD;      /* (B,2D) */
    nf_real *g = dout + 2 * BD;        /* (B,D) */
    nf_real *v = g + BD;               /* (B,D) */
    nf_real *w = v + BD;               /* (B,D) */
    nf_net_forward(&A->net, c->params, z, c->ctx, out, B, c->ws, c->wt);

    for (size_t n = 0; n < BD; n++) {
        nf_real dsdh;
        ar_scale(out[2 * n], &dsdh);
        dout[2 * n] = -(dlogdet ? dlogdet[n / D] : 0) * dsdh;
        dout[2 * n + 1] = 0;
    }
    nf_net_backward(&A->net, c->params, NULL, z, c->ctx, dout, g, NULL, B, c->ws);
    for (size_t n = 0; n < BD; n++) {
        if (dz) g[n] += dz[n];
        v[n] = g[n] * AR_EXP(-ar_scale(out[2 * n], NULL));
    }

    for (int it = 1; it < D; it++) {
        for (size_t n = 0; n < BD; n++) {
            nf_real dsdh, s = ar_scale(out[2 * n], &dsdh);
            dout[2 * n] = v[n] * z[n] * AR_EXP(s) * dsdh;
            dout[2 * n + 1] = v[n];
        }
        nf_net_backward(&A->net, c->params, NULL, z, c->ctx, dout, w, NULL, B, c->ws);
        int changed = 0;
        for (size_t n = 0; n < BD; n++) {
            nf_real vn = (g[n] - w[n]) * AR_EXP(-ar_scale(out[2 * n], NULL));
            if (vn != v[n]) changed = 1;
            v[n] = vn;
        }
        if (!changed) break;
    }

    if (c->grad || c->dctx) {
        for (size_t n = 0; n < BD; n++) {
            nf_real dsdh, s = ar_scale(out[2 * n], &dsdh);
            nf_real dl = dlogdet ? dlogdet[n / D] : 0;
            dout[2 * n] = -(v[n] * z[n] * AR_EXP(s) + dl) * dsdh;
            dout[2 * n + 1] = -v[n];
        }
        nf_net_backward(&A->net, c->params, c->grad, z, c->ctx, dout, NULL, c->dctx, B, c->ws);
    }
    if (dx) memcpy(dx, v, sizeof(nf_real) * BD);
}

static void ar_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const ar_layer *A = L->impl;
    if (A->iaf)
        iaf_backward(L, c, z, dz, dlogdet, dx);
    else
        maf_backward(L, c, x, dz, dlogdet, dx);
}

static void ar_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)buffers;
    const ar_layer *A = L->impl;
    nf_net_init(&A->net, params, rng);
}

static void ar_constrain(const nf_layer *L, nf_real *params) {
    const ar_layer *A = L->impl;
    nf_net_constrain(&A->net, params);
}

static void ar_to_json(const nf_layer *L, cJSON *obj) {
    const ar_layer *A = L->impl;
    nf_net_to_json(&A->net, obj);
}

static void ar_destroy(nf_layer *L) {
    ar_layer *A = L->impl;
    if (!A) return;
    nf_net_free(&A->net);
    nf_free(A);
    L->impl = NULL;
}

static double ar_macs(const nf_layer *L, int executed) {
    return nf_net_macs(&((const ar_layer *)L->impl)->net, executed);
}
static nf_net *ar_net(const nf_layer *L) { return &((ar_layer *)L->impl)->net; }

static const nf_layer_ops maf_ops = {
    .type = "maf",
    .ws_size = ar_ws_size,
    .init = ar_init,
    .inverse = ar_inverse,
    .forward = ar_forward,
    .backward = ar_backward,
    .data_init = NULL,
    .constrain = ar_constrain,
    .to_json = ar_to_json,
    .destroy = ar_destroy,
    .macs = ar_macs,
    .net = ar_net,
};

static const nf_layer_ops iaf_ops = {
    .type = "iaf",
    .ws_size = ar_ws_size,
    .init = ar_init,
    .inverse = ar_inverse,
    .forward = ar_forward,
    .backward = ar_backward,
    .data_init = NULL,
    .constrain = ar_constrain,
    .to_json = ar_to_json,
    .destroy = ar_destroy,
    .macs = ar_macs,
    .net = ar_net,
};

static int ar_create(nf_layer *L, const cJSON *spec, int iaf, char *err, size_t errlen) {
    static const char *const keys[] = {"type", NF_MADE_KEYS, NULL};
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    if (L->D < 1) {
        nf_set_err(err, errlen, "%s needs dim >= 1", iaf ? "iaf" : "maf");
        return NF_EINVAL;
    }
    ar_layer *A = nf_calloc(1, sizeof(*A));
    if (!A) return NF_ENOMEM;
    rc = nf_net_made_from_spec(&A->net, spec, L->D, L->C, 2, ar_def_hidden, 2, err, errlen);
    if (rc) {
        nf_free(A);
        return rc;
    }
    A->iaf = iaf;
    L->ops = iaf ? &iaf_ops : &maf_ops;
    L->nparams = A->net.nparams;
    L->nbuffers = 0;
    L->impl = A;
    return 0;
}

int nf_maf_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    return ar_create(L, spec, 0, err, errlen);
}

int nf_iaf_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    return ar_create(L, spec, 1, err, errlen);
}
