/* elementwise.c: the simple (per-dimension or permutation) layers.
 *
 *   actnorm             z = (x - bias) * exp(-log_scale), data-dependent init
 *   permute             z = x[perm]
 *   leaky_relu          z = x >= 0 ? x : x / alpha
 *   batchnorm           z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta
 *   logit               y = alpha + (1 - 2 alpha) x, z = log y - log(1 - y)
 *   elementwise_affine  z = (x - shift) / scale, fixed (no parameters)
 *
 * Formulas are written in the density direction (inverse, x -> z) with the
 * log-det log|det dz/dx| per row; forward is the exact inverse map and adds
 * the negated log-det.  None of these layers reads the context: a flow with
 * C > 0 may hold them, they ignore ctx and leave dctx untouched.
 * Per-row sums are accumulated in double; the layers allocate only in create.
 */
#include "alloc.h"
#include "nf_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared helpers ------------------------------------------------------ */

static void destroy_impl(nf_layer *L) {
    nf_free(L->impl);
    L->impl = NULL;
}

static size_t ws_none(const nf_layer *L, int B) {
    (void)L;
    (void)B;
    return 0;
}

/* softplus(t) = log(1 + e^t), stable for large |t| */
static double softplus(double t) {
    return t > 0 ? t + log1p(exp(-t)) : log1p(exp(t));
}

/* ===========================================================================
 * actnorm
 *   params: log_scale (D), bias (D); buffers: initialised flag (1)
 *   inverse: z = (x - bias) * exp(-log_scale), logdet = -sum_d log_scale_d
 *   forward: x = z * exp(log_scale) + bias,    logdet = +sum_d log_scale_d
 * data_init (only while the flag is 0) sets bias = mean(x), log_scale =
 * log(std(x) + 1e-6) so the batch leaves with zero mean and unit variance.
 * ======================================================================== */
typedef struct { int data_init; } actnorm_impl;

static void actnorm_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    const actnorm_impl *a = L->impl;
    (void)rng;
    memset(params, 0, 2 * (size_t)L->D * sizeof *params);
    buffers[0] = a->data_init ? (nf_real)0 : (nf_real)1;
}

static int actnorm_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                           nf_real *logdet) {
    int D = L->D;
    const nf_real *ls = c->params, *bias = c->params + D;
    double ld = 0;
    for (int d = 0; d < D; d++) ld -= ls[d];
    for (int b = 0; b < c->B; b++) {
        const nf_real *xr = x + (size_t)b * D;
        nf_real *zr = z + (size_t)b * D;
        for (int d = 0; d < D; d++) zr[d] = (nf_real)((xr[d] - bias[d]) * exp(-(double)ls[d]));
        if (logdet) logdet[b] += (nf_real)ld;
    }
    return 0;
}

static int actnorm_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                           nf_real *logdet) {
    int D = L->D;
    const nf_real *ls = c->params, *bias = c->params + D;
    double ld = 0;
    for (int d = 0; d < D; d++) ld += ls[d];
    for (int b = 0; b < c->B; b++) {
        const nf_real *zr = z + (size_t)b * D;
        nf_real *xr = x + (size_t)b * D;
        for (int d = 0; d < D; d++) xr[d] = (nf_real)(zr[d] * exp((double)ls[d]) + bias[d]);
        if (logdet) logdet[b] += (nf_real)ld;
    }
    return 0;
}

/* dz/dx = exp(-ls); dz/dbias = -exp(-ls); dz/dls = -z; dlogdet/dls = -1 */
static void actnorm_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                             const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    int D = L->D;
    const nf_real *ls = c->params;
    (void)x;
    for (int d = 0; d < D; d++) {
        nf_real s = (nf_real)exp(-(double)ls[d]);
        double gls = 0, gb = 0;
        for (int b = 0; b < c->B; b++) {
            size_t i = (size_t)b * D + d;
            if (dx) dx[i] = dz[i] * s;
            gls -= (double)dz[i] * z[i];
            gb -= (double)dz[i] * s;
            if (dlogdet) gls -= dlogdet[b];
        }
        if (c->grad) {
            c->grad[d] += (nf_real)gls;
            c->grad[D + d] += (nf_real)gb;
        }
    }
}

static void actnorm_data_init(const nf_layer *L, nf_real *params, nf_real *buffers,
                              const nf_real *x, int B) {
    int D = L->D;
    if (buffers[0] != 0 || B <= 0) return;
    for (int d = 0; d < D; d++) {
        double s = 0, ss = 0;
        for (int b = 0; b < B; b++) s += x[(size_t)b * D + d];
        double mean = s / B;
        for (int b = 0; b < B; b++) {
            double t = x[(size_t)b * D + d] - mean;
            ss += t * t;
        }
        params[d] = (nf_real)log(sqrt(ss / B) + 1e-6);
        params[D + d] = (nf_real)mean;
    }
    buffers[0] = 1;
}

static void actnorm_to_json(const nf_layer *L, cJSON *obj) {
    const actnorm_impl *a = L->impl;
    cJSON_AddBoolToObject(obj, "data_init", a->data_init);
}

static const nf_layer_ops actnorm_ops = {
    .type = "actnorm",
    .ws_size = ws_none,
    .init = actnorm_init,
    .inverse = actnorm_inverse,
    .forward = actnorm_forward,
    .backward = actnorm_backward,
    .data_init = actnorm_data_init,
    .to_json = actnorm_to_json,
    .destroy = destroy_impl,
};

int nf_actnorm_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "data_init", NULL};
    int di, rc;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen)) < 0) return rc;
    if ((rc = nf_json_bool(spec, "data_init", 1, &di, err, errlen)) < 0) return rc;
    actnorm_impl *a = nf_malloc(sizeof *a);
    if (!a) return NF_ENOMEM;
    a->data_init = di;
    L->ops = &actnorm_ops;
    L->impl = a;
    L->nparams = 2 * (size_t)L->D;
    L->nbuffers = 1;
    return 0;
}

/* ===========================================================================
 * permute: z_i = x_{perm_i}, logdet 0.  "order": "reverse" (default),
 * "random" (Fisher-Yates from "seed") or an explicit list of 0..D-1.
 * to_json always writes the explicit list, so it round-trips exactly.
 * ======================================================================== */
typedef struct { int *perm; } permute_impl; /* perm (D) */

static void permute_destroy(nf_layer *L) {
    permute_impl *p = L->impl;
    if (p) nf_free(p->perm);
    destroy_impl(L);
}

static void init_none(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)L, (void)params, (void)buffers, (void)rng;
}

static int permute_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                           nf_real *logdet) {
    const int *perm = ((const permute_impl *)L->impl)->perm;
    int D = L->D;
    (void)logdet;
    for (int b = 0; b < c->B; b++)
        for (int i = 0; i < D; i++) z[(size_t)b * D + i] = x[(size_t)b * D + perm[i]];
    return 0;
}

static int permute_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                           nf_real *logdet) {
    const int *perm = ((const permute_impl *)L->impl)->perm;
    int D = L->D;
    (void)logdet;
    for (int b = 0; b < c->B; b++)
        for (int i = 0; i < D; i++) x[(size_t)b * D + perm[i]] = z[(size_t)b * D + i];
    return 0;
}

static void permute_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                             const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const int *perm = ((const permute_impl *)L->impl)->perm;
    int D = L->D;
    (void)x, (void)z, (void)dlogdet;
    if (!dx) return;
    for (int b = 0; b < c->B; b++)
        for (int i = 0; i < D; i++) dx[(size_t)b * D + perm[i]] = dz[(size_t)b * D + i];
}

static void permute_to_json(const nf_layer *L, cJSON *obj) {
    const permute_impl *p = L->impl;
    nf_json_attach(obj, "order", cJSON_CreateIntArray(p->perm, L->D));
}

static const nf_layer_ops permute_ops = {
    .type = "permute",
    .ws_size = ws_none,
    .init = init_none,
    .inverse = permute_inverse,
    .forward = permute_forward,
    .backward = permute_backward,
    .to_json = permute_to_json,
    .destroy = permute_destroy,
};

int nf_permute_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "order", "seed", NULL};
    int D = L->D, rc, seed;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen)) < 0) return rc;
    if ((rc = nf_json_int(spec, "seed", 0, 0, 2147483647, &seed, err, errlen)) < 0) return rc;
    permute_impl *p = nf_calloc(1, sizeof *p);
    int *seen = nf_calloc((size_t)D + 1, sizeof *seen);
    if (!p || !seen || !(p->perm = nf_malloc(((size_t)D + 1) * sizeof *p->perm))) {
        if (p) nf_free(p->perm);
        nf_free(p);
        nf_free(seen);
        return NF_ENOMEM;
    }
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(spec, "order");
    rc = 0;
    if (!o || (cJSON_IsString(o) && !strcmp(o->valuestring, "reverse"))) {
        for (int i = 0; i < D; i++) p->perm[i] = D - 1 - i;
    } else if (cJSON_IsString(o) && !strcmp(o->valuestring, "random")) {
        nf_rng r;
        nf_rng_seed(&r, (uint64_t)seed);
        for (int i = 0; i < D; i++) p->perm[i] = i;
        for (int i = D - 1; i > 0; i--) {
            int j = (int)(nf_rng_u64(&r) % (uint64_t)(i + 1));
            int t = p->perm[i];
            p->perm[i] = p->perm[j];
            p->perm[j] = t;
        }
    } else if (cJSON_IsArray(o) && cJSON_GetArraySize(o) == D) {
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, o) {
            double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (v != floor(v) || v < 0 || v >= D || seen[(int)v]) {
                nf_set_err(err, errlen, "permute: \"order\" must be a permutation of 0..%d",
                           D - 1);
                rc = NF_EINVAL;
                break;
            }
            seen[(int)v] = 1;
            p->perm[i++] = (int)v;
        }
    } else {
        nf_set_err(err, errlen,
                   "permute: \"order\" must be \"reverse\", \"random\" or a list of %d indices",
                   D);
        rc = NF_EINVAL;
    }
    nf_free(seen);
    if (rc < 0) {
        nf_free(p->perm);
        nf_free(p);
        return rc;
    }
    L->ops = &permute_ops;
    L->impl = p;
    L->nparams = 0;
    L->nbuffers = 0;
    return 0;
}

/* ===========================================================================
 * leaky_relu: forward x = z >= 0 ? z : alpha z (alpha > 0, so sign is kept)
 *   inverse z = x >= 0 ? x : x / alpha, logdet = -log(alpha) * #{x_d < 0}
 * The kink at 0 has measure zero; its derivative is taken from the right.
 * ======================================================================== */
typedef struct { double alpha; } leaky_impl;

static int leaky_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                         nf_real *logdet) {
    double a = ((const leaky_impl *)L->impl)->alpha, la = log(a);
    nf_real inva = (nf_real)(1.0 / a);
    int D = L->D;
    for (int b = 0; b < c->B; b++) {
        int neg = 0;
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            if (x[i] >= 0) {
                z[i] = x[i];
            } else {
                z[i] = x[i] * inva;
                neg++;
            }
        }
        if (logdet) logdet[b] += (nf_real)(-la * neg);
    }
    return 0;
}

static int leaky_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                         nf_real *logdet) {
    double a = ((const leaky_impl *)L->impl)->alpha, la = log(a);
    int D = L->D;
    for (int b = 0; b < c->B; b++) {
        int neg = 0;
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            if (z[i] >= 0) {
                x[i] = z[i];
            } else {
                x[i] = (nf_real)(z[i] * a);
                neg++;
            }
        }
        if (logdet) logdet[b] += (nf_real)(la * neg);
    }
    return 0;
}

static void leaky_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                           const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    nf_real inva = (nf_real)(1.0 / ((const leaky_impl *)L->impl)->alpha);
    size_t n = (size_t)c->B * L->D;
    (void)z, (void)dlogdet;
    if (!dx) return;
    for (size_t i = 0; i < n; i++) dx[i] = x[i] >= 0 ? dz[i] : dz[i] * inva;
}

static void leaky_to_json(const nf_layer *L, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "alpha", ((const leaky_impl *)L->impl)->alpha);
}

static const nf_layer_ops leaky_ops = {
    .type = "leaky_relu",
    .ws_size = ws_none,
    .init = init_none,
    .inverse = leaky_inverse,
    .forward = leaky_forward,
    .backward = leaky_backward,
    .to_json = leaky_to_json,
    .destroy = destroy_impl,
};

int nf_leaky_relu_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "alpha", NULL};
    double a;
    int rc;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen)) < 0) return rc;
    if ((rc = nf_json_num(spec, "alpha", 0.01, 0, 1e30, &a, err, errlen)) < 0) return rc;
    if (!(a > 0) || !isfinite(a)) {
        nf_set_err(err, errlen, "leaky_relu: \"alpha\" must be > 0");
        return NF_EINVAL;
    }
    leaky_impl *p = nf_malloc(sizeof *p);
    if (!p) return NF_ENOMEM;
    p->alpha = a;
    L->ops = &leaky_ops;
    L->impl = p;
    L->nparams = 0;
    L->nbuffers = 0;
    return 0;
}

/* ===========================================================================
 * batchnorm
 *   params: log_gamma (D), beta (D); buffers: running_mean (D), running_var (D)
 *   inverse: z = (x - m) / s * exp(log_gamma) + beta, s = sqrt(v + eps)
 *            logdet = sum_d (log_gamma_d - 0.5 log(v_d + eps))
 *   training: m, v are the batch mean and biased variance, and running stats
 *   move as r = (1 - momentum) r + momentum * batch.  Eval (and forward,
 *   always): m, v are the running stats.
 * The log-det is the per-row Jacobian with m, v held fixed (the usual
 * convention); backward in training mode differentiates through m and v,
 * including the log-det's dependence on v.  ws: m (D), v (D) as used.
 * ======================================================================== */
typedef struct { double momentum, eps; } bn_impl;

static size_t bn_ws_size(const nf_layer *L, int B) {
    (void)B;
    return 2 * (size_t)L->D;
}

static void bn_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    int D = L->D;
    (void)rng;
    memset(params, 0, 2 * (size_t)D * sizeof *params);
    for (int d = 0; d < D; d++) {
        buffers[d] = 0;
        buffers[D + d] = 1;
    }
}

static int bn_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                      nf_real *logdet) {
    const bn_impl *p = L->impl;
    int D = L->D, B = c->B;
    const nf_real *lg = c->params, *beta = c->params + D;
    nf_real *m = c->ws, *v = c->ws + D; /* (D), (D) */
    double ld = 0;
    for (int d = 0; d < D; d++) {
        if (c->training && B > 0) {
            double s = 0, ss = 0;
            for (int b = 0; b < B; b++) s += x[(size_t)b * D + d];
            double mean = s / B;
            for (int b = 0; b < B; b++) {
                double t = x[(size_t)b * D + d] - mean;
                ss += t * t;
            }
            m[d] = (nf_real)mean;
            v[d] = (nf_real)(ss / B);
            if (c->buffers) {
                c->buffers[d] = (nf_real)((1 - p->momentum) * c->buffers[d] + p->momentum * m[d]);
                c->buffers[D + d] =
                    (nf_real)((1 - p->momentum) * c->buffers[D + d] + p->momentum * v[d]);
            }
        } else {
            m[d] = c->buffers[d];
            v[d] = c->buffers[D + d];
        }
        double sc = exp((double)lg[d]) / sqrt((double)v[d] + p->eps);
        for (int b = 0; b < B; b++) {
            size_t i = (size_t)b * D + d;
            z[i] = (nf_real)((x[i] - m[d]) * sc + beta[d]);
        }
        ld += lg[d] - 0.5 * log((double)v[d] + p->eps);
    }
    if (logdet)
        for (int b = 0; b < B; b++) logdet[b] += (nf_real)ld;
    return 0;
}

/* x = (z - beta) * exp(-log_gamma) * sqrt(rv + eps) + rm, running stats only */
static int bn_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                      nf_real *logdet) {
    const bn_impl *p = L->impl;
    int D = L->D, B = c->B;
    const nf_real *lg = c->params, *beta = c->params + D;
    const nf_real *rm = c->buffers, *rv = c->buffers + D;
    double ld = 0;
    for (int d = 0; d < D; d++) {
        double sc = exp(-(double)lg[d]) * sqrt((double)rv[d] + p->eps);
        for (int b = 0; b < B; b++) {
            size_t i = (size_t)b * D + d;
            x[i] = (nf_real)((z[i] - beta[d]) * sc + rm[d]);
        }
        ld += -lg[d] + 0.5 * log((double)rv[d] + p->eps);
    }
    if (logdet)
        for (int b = 0; b < B; b++) logdet[b] += (nf_real)ld;
    return 0;
}

/* With xh = (x - m)/s, g = exp(log_gamma), dxh = dz g and S = sum_b dlogdet_b:
 *   dbeta = sum_b dz,  dlog_gamma = sum_b dz xh g + S
 *   eval:     dx = dxh / s
 *   training: dx = (dxh - mean_b(dxh) - xh (sum_b(dxh xh) + S) / B) / s
 * (the S term is the log-det's -0.5 log(v + eps) seen through v). */
static void bn_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const bn_impl *p = L->impl;
    int D = L->D, B = c->B;
    const nf_real *lg = c->params;
    const nf_real *m = c->ws, *v = c->ws + D;
    double S = 0;
    (void)z;
    if (dlogdet)
        for (int b = 0; b < B; b++) S += dlogdet[b];
    for (int d = 0; d < D; d++) {
        double g = exp((double)lg[d]), is = 1.0 / sqrt((double)v[d] + p->eps);
        double sdz = 0, sdzxh = 0;
        for (int b = 0; b < B; b++) {
            size_t i = (size_t)b * D + d;
            sdz += dz[i];
            sdzxh += dz[i] * (x[i] - m[d]) * is;
        }
        if (c->grad) {
            c->grad[d] += (nf_real)(sdzxh * g + S);
            c->grad[D + d] += (nf_real)sdz;
        }
        if (!dx) continue;
        if (c->training && B > 0) {
            double mdxh = sdz * g / B, k = (sdzxh * g + S) / B;
            for (int b = 0; b < B; b++) {
                size_t i = (size_t)b * D + d;
                double xh = (x[i] - m[d]) * is;
                dx[i] = (nf_real)((dz[i] * g - mdxh - xh * k) * is);
            }
        } else {
            for (int b = 0; b < B; b++) {
                size_t i = (size_t)b * D + d;
                dx[i] = (nf_real)(dz[i] * g * is);
            }
        }
    }
}

static void bn_to_json(const nf_layer *L, cJSON *obj) {
    const bn_impl *p = L->impl;
    cJSON_AddNumberToObject(obj, "momentum", p->momentum);
    cJSON_AddNumberToObject(obj, "eps", p->eps);
}

static const nf_layer_ops bn_ops = {
    .type = "batchnorm",
    .ws_size = bn_ws_size,
    .init = bn_init,
    .inverse = bn_inverse,
    .forward = bn_forward,
    .backward = bn_backward,
    .to_json = bn_to_json,
    .destroy = destroy_impl,
};

int nf_batchnorm_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "momentum", "eps", NULL};
    double mom, eps;
    int rc;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen)) < 0) return rc;
    if ((rc = nf_json_num(spec, "momentum", 0.05, 0, 1, &mom, err, errlen)) < 0) return rc;
    if ((rc = nf_json_num(spec, "eps", 1e-5, 0, 1e30, &eps, err, errlen)) < 0) return rc;
    if (!(mom >= 0 && mom <= 1) || !(eps > 0) || !isfinite(eps)) {
        nf_set_err(err, errlen, "batchnorm: need 0 <= momentum <= 1 and eps > 0");
        return NF_EINVAL;
    }
    bn_impl *p = nf_malloc(sizeof *p);
    if (!p) return NF_ENOMEM;
    p->momentum = mom;
    p->eps = eps;
    L->ops = &bn_ops;
    L->impl = p;
    L->nparams = 2 * (size_t)L->D;
    L->nbuffers = 2 * (size_t)L->D;
    return 0;
}

/* ===========================================================================
 * logit, for data in [0,1]:
 *   inverse: y = alpha + (1 - 2 alpha) x, z = log y - log(1 - y)
 *            logdet = sum_d log((1 - 2 alpha) / (y_d (1 - y_d)))
 *   forward: y = sigmoid(z), x = (y - alpha) / (1 - 2 alpha)
 *            logdet = sum_d log(y_d (1 - y_d) / (1 - 2 alpha)),
 *            with log(y (1 - y)) = -softplus(z) - softplus(-z) (no underflow).
 * Out of support: an entry with y outside (0,1) (x outside the squeezed unit
 * interval, or NaN) has no density.  Its z is set to 0, its row's logdet to
 * -INFINITY, and inverse returns NF_ENONFINITE; backward gives that row
 * dx = 0.  Other rows are computed normally.
 * ======================================================================== */
typedef struct { double alpha; } logit_impl;

static int logit_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                         nf_real *logdet) {
    double a = ((const logit_impl *)L->impl)->alpha, k = 1 - 2 * a, lk = log(k);
    int D = L->D, rc = 0;
    for (int b = 0; b < c->B; b++) {
        double ld = 0;
        int bad = 0;
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            double y = a + k * x[i];
            if (!(y > 0 && y < 1)) {
                z[i] = 0;
                bad = 1;
                continue;
            }
            z[i] = (nf_real)(log(y) - log1p(-y));
            ld += lk - log(y) - log1p(-y);
        }
        if (bad) rc = NF_ENONFINITE;
        if (logdet) logdet[b] = bad ? (nf_real)-INFINITY : logdet[b] + (nf_real)ld;
    }
    return rc;
}

static int logit_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                         nf_real *logdet) {
    double a = ((const logit_impl *)L->impl)->alpha, k = 1 - 2 * a, lk = log(k);
    int D = L->D;
    for (int b = 0; b < c->B; b++) {
        double ld = 0;
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            double t = z[i];
            double y = t >= 0 ? 1 / (1 + exp(-t)) : exp(t) / (1 + exp(t));
            x[i] = (nf_real)((y - a) / k);
            ld += -softplus(t) - softplus(-t) - lk;
        }
        if (logdet) logdet[b] += (nf_real)ld;
    }
    return 0;
}

/* dz/dx = k / (y (1 - y)); dlogdet/dx = k (2y - 1) / (y (1 - y)), k = 1 - 2 alpha */
static void logit_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                           const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    double a = ((const logit_impl *)L->impl)->alpha, k = 1 - 2 * a;
    int D = L->D;
    (void)z;
    if (!dx) return;
    for (int b = 0; b < c->B; b++) {
        int bad = 0;
        for (int d = 0; d < D; d++) {
            double y = a + k * x[(size_t)b * D + d];
            if (!(y > 0 && y < 1)) bad = 1;
        }
        double wl = dlogdet ? dlogdet[b] : 0;
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            double y = a + k * x[i], j = k / (y * (1 - y));
            dx[i] = bad ? (nf_real)0 : (nf_real)(dz[i] * j + wl * (2 * y - 1) * j);
        }
    }
}

static void logit_to_json(const nf_layer *L, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "alpha", ((const logit_impl *)L->impl)->alpha);
}

static const nf_layer_ops logit_ops = {
    .type = "logit",
    .ws_size = ws_none,
    .init = init_none,
    .inverse = logit_inverse,
    .forward = logit_forward,
    .backward = logit_backward,
    .to_json = logit_to_json,
    .destroy = destroy_impl,
};

int nf_logit_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "alpha", NULL};
    double a;
    int rc;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen)) < 0) return rc;
    if ((rc = nf_json_num(spec, "alpha", 1e-6, 0, 0.5, &a, err, errlen)) < 0) return rc;
    if (!(a >= 0 && a < 0.5)) {
        nf_set_err(err, errlen, "logit: \"alpha\" must be in [0, 0.5)");
        return NF_EINVAL;
    }
    logit_impl *p = nf_malloc(sizeof *p);
    if (!p) return NF_ENOMEM;
    p->alpha = a;
    L->ops = &logit_ops;
    L->impl = p;
    L->nparams = 0;
    L->nbuffers = 0;
    return 0;
}

/* ===========================================================================
 * elementwise_affine: a fixed standardisation, not trained.
 *   inverse: z = (x - shift) / scale, logdet = -sum_d log scale_d
 *   forward: x = z * scale + shift,   logdet = +sum_d log scale_d
 * "shift" (D numbers, default 0) and "scale" (D positive numbers, default 1)
 * are kept in double in the impl and written back at full precision.
 * ======================================================================== */
typedef struct {
    double *shift, *scale; /* (D), (D) */
    double logdet;         /* -sum log scale */
} affine_impl;

static void ewa_destroy(nf_layer *L) {
    affine_impl *p = L->impl;
    if (p) {
        nf_free(p->shift);
        nf_free(p->scale);
    }
    destroy_impl(L);
}

static int ewa_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                       nf_real *logdet) {
    const affine_impl *p = L->impl;
    int D = L->D;
    for (int b = 0; b < c->B; b++) {
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            z[i] = (nf_real)((x[i] - p->shift[d]) / p->scale[d]);
        }
        if (logdet) logdet[b] += (nf_real)p->logdet;
    }
    return 0;
}

static int ewa_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                       nf_real *logdet) {
    const affine_impl *p = L->impl;
    int D = L->D;
    for (int b = 0; b < c->B; b++) {
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            x[i] = (nf_real)(z[i] * p->scale[d] + p->shift[d]);
        }
        if (logdet) logdet[b] -= (nf_real)p->logdet;
    }
    return 0;
}

static void ewa_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                         const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const affine_impl *p = L->impl;
    int D = L->D;
    (void)x, (void)z, (void)dlogdet;
    if (!dx) return;
    for (int b = 0; b < c->B; b++)
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)b * D + d;
            dx[i] = (nf_real)(dz[i] / p->scale[d]);
        }
}

/* cJSON (1.7.x) prints numbers with %1.15g unless that is off by more than
 * an epsilon, so values can lose their last bits.  Write the list as a raw
 * JSON array of the shortest %.{15,16,17}g that parses back to the same
 * double; parsing the printed config gives the exact values again. */
static cJSON *exact_double_array(const double *v, int n) {
    size_t cap = 2 + (size_t)n * 26;
    char *s = nf_malloc(cap), *p = s;
    if (!s) return cJSON_CreateDoubleArray(v, n);
    *p++ = '[';
    for (int i = 0; i < n; i++) {
        char num[32];
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(num, sizeof num, "%.*g", prec, v[i]);
            if (strtod(num, NULL) == v[i]) break;
        }
        p += sprintf(p, "%s%s", i ? "," : "", num);
    }
    strcpy(p, "]");
    cJSON *a = cJSON_CreateRaw(s);
    nf_free(s);
    return a;
}

static void ewa_to_json(const nf_layer *L, cJSON *obj) {
    const affine_impl *p = L->impl;
    nf_json_attach(obj, "shift", exact_double_array(p->shift, L->D));
    nf_json_attach(obj, "scale", exact_double_array(p->scale, L->D));
}

static const nf_layer_ops ewa_ops = {
    .type = "elementwise_affine",
    .ws_size = ws_none,
    .init = init_none,
    .inverse = ewa_inverse,
    .forward = ewa_forward,
    .backward = ewa_backward,
    .to_json = ewa_to_json,
    .destroy = ewa_destroy,
};

/* Read key as a list of D finite numbers into out (default def each);
 * positive: every value must be > 0. */
static int read_vec(const cJSON *spec, const char *key, int D, double def, int positive,
                    double *out, char *err, size_t errlen) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(spec, key);
    if (!o) {
        for (int d = 0; d < D; d++) out[d] = def;
        return 0;
    }
    if (!cJSON_IsArray(o) || cJSON_GetArraySize(o) != D) {
        nf_set_err(err, errlen, "elementwise_affine: \"%s\" must be a list of %d numbers", key, D);
        return NF_EINVAL;
    }
    int d = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, o) {
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || (positive && !(e->valuedouble > 0))) {
            nf_set_err(err, errlen, "elementwise_affine: \"%s\"[%d] must be a finite%s number",
                       key, d, positive ? " positive" : "");
            return NF_EINVAL;
        }
        out[d++] = e->valuedouble;
    }
    return 0;
}

int nf_elementwise_affine_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "shift", "scale", NULL};
    int D = L->D, rc;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen)) < 0) return rc;
    affine_impl *p = nf_calloc(1, sizeof *p);
    if (!p || !(p->shift = nf_malloc(((size_t)D + 1) * sizeof(double))) ||
        !(p->scale = nf_malloc(((size_t)D + 1) * sizeof(double)))) {
        rc = NF_ENOMEM;
        goto fail;
    }
    if ((rc = read_vec(spec, "shift", D, 0.0, 0, p->shift, err, errlen)) < 0) goto fail;
    if ((rc = read_vec(spec, "scale", D, 1.0, 1, p->scale, err, errlen)) < 0) goto fail;
    p->logdet = 0;
    for (int d = 0; d < D; d++) p->logdet -= log(p->scale[d]);
    L->ops = &ewa_ops;
    L->impl = p;
    L->nparams = 0;
    L->nbuffers = 0;
    return 0;
fail:
    if (p) {
        nf_free(p->shift);
        nf_free(p->scale);
    }
    nf_free(p);
    return rc;
}
