/* coupling.c: additive (NICE, Dinh et al. 2014) and affine (RealNVP, Dinh et
 * al. 2016) coupling layers.
 *
 * A mask splits the D dims into pass-through dims I (mask 1) and transformed
 * dims J (mask 0).  A conditioner net reads x_I (and the context) and emits,
 * for each transformed dim j (in index order m = 0..|J|-1), P numbers at
 * out[m*P + p].  Density direction (x -> z):
 *   additive (P=1): z_J = x_J + t,                        logdet = 0
 *   affine   (P=2): z_J = x_J * exp(s) + t, s = b tanh(h/b), logdet = sum s
 * with the soft clamp b = NF_SCALE_BOUND keeping |s| < b so training cannot
 * blow the scale up; s(0) = 0, so a zero net output is the identity.
 * Sampling inverts it: x_J = (z_J - t) * exp(-s), z_I = x_I.
 *
 * Backward (density direction), per transformed dim j:
 *   dx_j = dz_j e^{s_j};  dt_j = dz_j;  dh_j = (dz_j x_j e^{s_j} + dlogdet) ds/dh
 * and dx_I = dz_I + (net input gradient). */
#include "alloc.h"
#include "nf_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int affine;       /* 0 additive, 1 affine */
    int P;
    int nid, nt;      /* pass-through and transformed counts */
    int *mask;        /* (D) */
    int *id, *tr;     /* (nid), (nt) indices */
    nf_net net;
} coupling;

/* ws: xid (B,nid) | out (B,nt*P) | dout (B,nt*P) | din (B,nid) | net ws */
static size_t cp_ws_size(const nf_layer *L, int B) {
    const coupling *c = L->impl;
    return (size_t)B * (2 * c->nid + 2 * (size_t)c->nt * c->P) + nf_net_ws_size(&c->net, B);
}

static void cp_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)buffers;
    const coupling *c = L->impl;
    nf_net_init(&c->net, params, rng);
}

typedef struct { nf_real *xid, *out, *dout, *din, *nws; } cp_bufs;

static cp_bufs bufs(const coupling *c, nf_real *ws, int B) {
    cp_bufs b;
    b.xid = ws;
    b.out = b.xid + (size_t)B * c->nid;
    b.dout = b.out + (size_t)B * c->nt * c->P;
    b.din = b.dout + (size_t)B * c->nt * c->P;
    b.nws = b.din + (size_t)B * c->nid;
    return b;
}

/* gather pass-through dims of u into xid, copy them to v, run the net */
static void cp_condition(const coupling *c, nf_ctx *ctx, const nf_real *u, nf_real *v,
                         cp_bufs *b, int D) {
    int B = ctx->B;
    for (int r = 0; r < B; r++) {
        const nf_real *ur = u + (size_t)r * D;
        nf_real *vr = v + (size_t)r * D, *xr = b->xid + (size_t)r * c->nid;
        for (int i = 0; i < c->nid; i++) {
            xr[i] = ur[c->id[i]];
            vr[c->id[i]] = ur[c->id[i]];
        }
    }
    nf_net_forward(&c->net, ctx->params, b->xid, ctx->ctx, b->out, B, b->nws, ctx->wt);
}

static inline double clamp_s(double h) { return NF_SCALE_BOUND * tanh(h / NF_SCALE_BOUND); }

static int cp_inverse(const nf_layer *L, nf_ctx *ctx, const nf_real *x, nf_real *z,
                      nf_real *logdet) {
    const coupling *c = L->impl;
    int D = L->D, P = c->P;
    cp_bufs b = bufs(c, ctx->ws, ctx->B);
    cp_condition(c, ctx, x, z, &b, D);
    for (int r = 0; r < ctx->B; r++) {
        const nf_real *xr = x + (size_t)r * D, *o = b.out + (size_t)r * c->nt * P;
        nf_real *zr = z + (size_t)r * D;
        double ld = 0;
        for (int m = 0; m < c->nt; m++) {
            int j = c->tr[m];
            if (c->affine) {
                double s = clamp_s(o[2 * m]);
                zr[j] = (nf_real)(xr[j] * exp(s) + o[2 * m + 1]);
                ld += s;
            } else {
                zr[j] = xr[j] + o[m];
            }
        }
        logdet[r] += (nf_real)ld;
    }
    return 0;
}

static int cp_forward(const nf_layer *L, nf_ctx *ctx, const nf_real *z, nf_real *x,
                      nf_real *logdet) {
    const coupling *c = L->impl;
    int D = L->D, P = c->P;
    cp_bufs b = bufs(c, ctx->ws, ctx->B);
    cp_condition(c, ctx, z, x, &b, D);
    for (int r = 0; r < ctx->B; r++) {
        const nf_real *zr = z + (size_t)r * D, *o = b.out + (size_t)r * c->nt * P;
        nf_real *xr = x + (size_t)r * D;
        double ld = 0;
        for (int m = 0; m < c->nt; m++) {
            int j = c->tr[m];
            if (c->affine) {
                double s = clamp_s(o[2 * m]);
                xr[j] = (nf_real)(((double)zr[j] - o[2 * m + 1]) * exp(-s));
                ld -= s;
            } else {
                xr[j] = zr[j] - o[m];
            }
        }
        logdet[r] += (nf_real)ld;
    }
    return 0;
}

static void cp_backward(const nf_layer *L, nf_ctx *ctx, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    (void)z;
    const coupling *c = L->impl;
    int D = L->D, P = c->P, B = ctx->B;
    cp_bufs b = bufs(c, ctx->ws, B);
    for (int r = 0; r < B; r++) {
        const nf_real *xr = x + (size_t)r * D, *dzr = dz + (size_t)r * D;
        const nf_real *o = b.out + (size_t)r * c->nt * P;
        nf_real *d = b.dout + (size_t)r * c->nt * P;
        for (int m = 0; m < c->nt; m++) {
            int j = c->tr[m];
            if (c->affine) {
                double s = clamp_s(o[2 * m]), e = exp(s), q = s / NF_SCALE_BOUND;
                d[2 * m] = (nf_real)(((double)dzr[j] * xr[j] * e + dlogdet[r]) * (1 - q * q));
                d[2 * m + 1] = dzr[j];
                if (dx) dx[(size_t)r * D + j] = (nf_real)(dzr[j] * e);
            } else {
                d[m] = dzr[j];
                if (dx) dx[(size_t)r * D + j] = dzr[j];
            }
        }
    }
    nf_net_backward(&c->net, ctx->params, ctx->grad, b.xid, ctx->ctx, b.dout, dx ? b.din : NULL,
                    ctx->dctx, B, b.nws);
    if (!dx) return;
    for (int r = 0; r < B; r++)
        for (int i = 0; i < c->nid; i++) {
            int j = c->id[i];
            dx[(size_t)r * D + j] = dz[(size_t)r * D + j] + b.din[(size_t)r * c->nid + i];
        }
}

static void cp_to_json(const nf_layer *L, cJSON *obj) {
    const coupling *c = L->impl;
    nf_mask_to_json(c->mask, L->D, obj);
    nf_net_to_json(&c->net, obj);
}

static void cp_destroy(nf_layer *L) {
    coupling *c = L->impl;
    if (!c) return;
    nf_net_free(&c->net);
    nf_free(c->mask);
    nf_free(c->id);
    nf_free(c->tr);
    nf_free(c);
    L->impl = NULL;
}

static double cp_macs(const nf_layer *L, int executed) {
    return nf_net_macs(&((const coupling *)L->impl)->net, executed);
}
static nf_net *cp_net(const nf_layer *L) { return &((coupling *)L->impl)->net; }

static const nf_layer_ops additive_ops = {
    .type = "additive_coupling", .ws_size = cp_ws_size, .init = cp_init,
    .inverse = cp_inverse, .forward = cp_forward, .backward = cp_backward,
    .to_json = cp_to_json, .destroy = cp_destroy, .macs = cp_macs,
    .net = cp_net,
};
static const nf_layer_ops affine_ops = {
    .type = "affine_coupling", .ws_size = cp_ws_size, .init = cp_init,
    .inverse = cp_inverse, .forward = cp_forward, .backward = cp_backward,
    .to_json = cp_to_json, .destroy = cp_destroy, .macs = cp_macs,
    .net = cp_net,
};

static int cp_create(nf_layer *L, const cJSON *spec, int affine, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "mask", NF_NET_KEYS, NULL};
    static const int def_hidden[] = {64, 64};
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    coupling *c = nf_calloc(1, sizeof *c);
    if (!c) return NF_ENOMEM;
    L->impl = c;
    L->ops = affine ? &affine_ops : &additive_ops;
    c->affine = affine;
    c->P = affine ? 2 : 1;
    c->mask = nf_malloc((size_t)L->D * sizeof *c->mask);
    c->id = nf_malloc((size_t)L->D * sizeof *c->id);
    c->tr = nf_malloc((size_t)L->D * sizeof *c->tr);
    if (!c->mask || !c->id || !c->tr) return NF_ENOMEM;
    if ((rc = nf_mask_parse(spec, L->D, c->mask, err, errlen))) return rc;
    for (int i = 0; i < L->D; i++) {
        if (c->mask[i]) c->id[c->nid++] = i;
        else c->tr[c->nt++] = i;
    }
    rc = nf_net_from_spec(&c->net, spec, c->nid, L->C, c->nt * c->P, def_hidden, 2, err, errlen);
    if (rc) return rc;
    L->nparams = c->net.nparams;
    return 0;
}

int nf_additive_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    return cp_create(L, spec, 0, err, errlen);
}

int nf_affine_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    return cp_create(L, spec, 1, err, errlen);
}
