/* image.c: the layers of image flows (Glow, Kingma & Dhariwal 2018, on
 * RealNVP's multiscale architecture).  They need the flow's "shape".
 *
 *   squeeze          2x2 space-to-depth, (C,H,W) -> (4C, H/2, W/2)
 *   split            factors out half the channels under a learned prior
 *   channel_actnorm  a scale and bias per channel, data-dependent init
 *   invconv          the invertible 1x1 convolution, LU-parameterised
 *
 * Every layer acts on the image at its position in the flow: L->shape =
 * (C,H,W), the first C*H*W entries of each row, stored C-H-W.  The entries
 * after it (channels an earlier split factored out) are copied unchanged
 * with log-det 0, and their gradient passes straight through.  Formulas are
 * in the density direction (inverse, x -> z) with log|det dz/dx| per row;
 * forward is the exact inverse map.  Only split reads the context (its
 * prior, below).
 * Allocation happens in the constructors only; scratch comes from ws_size.
 */
#include "alloc.h"
#include "conv.h"
#include "nf_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- shared helpers ------------------------------------------------------ */

/* the image at the layer's position: channels, pixels per channel, entries */
typedef struct img_dims {
    int c, h, w, p;
    size_t n;
} img_dims;

static img_dims dims_of(const nf_layer *L) {
    img_dims d = {L->shape[0], L->shape[1], L->shape[2], L->shape[1] * L->shape[2], 0};
    d.n = (size_t)d.c * d.p;
    return d;
}

/* entries [n, D) of every row: the channels factored out before this layer */
static void copy_tail(const nf_layer *L, int B, size_t n, const nf_real *src, nf_real *dst) {
    size_t D = (size_t)L->D;
    if (n == D) return;
    for (int b = 0; b < B; b++)
        memcpy(dst + (size_t)b * D + n, src + (size_t)b * D + n, (D - n) * sizeof *dst);
}

static void add_logdet(nf_real *logdet, int B, double ld) {
    if (logdet)
        for (int b = 0; b < B; b++) logdet[b] += (nf_real)ld;
}

static double sum_logdet_weights(const nf_real *dlogdet, int B) {
    double s = 0;
    for (int b = 0; dlogdet && b < B; b++) s += dlogdet[b];
    return s;
}

static size_t ws_none(const nf_layer *L, int B) {
    (void)L, (void)B;
    return 0;
}

static void init_none(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)L, (void)params, (void)buffers, (void)rng;
}

static void destroy_impl(nf_layer *L) {
    nf_free(L->impl);
    L->impl = NULL;
}

/* The "shape x" of messages: "1x7x7" */
static const char *shape_str(const int s[3], char *buf, size_t len) {
    snprintf(buf, len, "%dx%dx%d", s[0], s[1], s[2]);
    return buf;
}

/* ===========================================================================
 * squeeze: (C,H,W) -> (4C, H/2, W/2) in Glow's order, out channel
 * c*4 + di*2 + dj holding x[c][2i+di][2j+dj].  A permutation: log-det 0, no
 * parameters.  H and W must be even.
 * ======================================================================== */

/* One image: squeeze (unsqueeze = 0, src -> dst as above) or its inverse. */
static void squeeze_image(const img_dims *d, const nf_real *src, nf_real *dst, int unsqueeze) {
    const int h2 = d->h / 2, w2 = d->w / 2, p2 = h2 * w2;
    for (int c = 0; c < d->c; c++)
        for (int di = 0; di < 2; di++)
            for (int dj = 0; dj < 2; dj++) {
                const size_t big = (size_t)c * d->p + (size_t)di * d->w + dj;
                const size_t small = (size_t)(c * 4 + di * 2 + dj) * p2;
                for (int i = 0; i < h2; i++)
                    for (int j = 0; j < w2; j++) {
                        size_t a = big + (size_t)2 * i * d->w + 2 * j;
                        size_t s = small + (size_t)i * w2 + j;
                        if (unsqueeze) dst[a] = src[s];
                        else dst[s] = src[a];
                    }
            }
}

static void squeeze_rows(const nf_layer *L, int B, const nf_real *src, nf_real *dst,
                         int unsqueeze) {
    img_dims d = dims_of(L);
    for (int b = 0; b < B; b++)
        squeeze_image(&d, src + (size_t)b * L->D, dst + (size_t)b * L->D, unsqueeze);
    copy_tail(L, B, d.n, src, dst);
}

static int squeeze_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                           nf_real *logdet) {
    (void)logdet;
    squeeze_rows(L, c->B, x, z, 0);
    return 0;
}

static int squeeze_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                           nf_real *logdet) {
    (void)logdet;
    squeeze_rows(L, c->B, z, x, 1);
    return 0;
}

/* a permutation's gradient is the inverse permutation of dz */
static void squeeze_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                             const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    (void)x, (void)z, (void)dlogdet;
    if (dx) squeeze_rows(L, c->B, dz, dx, 1);
}

static const nf_layer_ops squeeze_ops = {
    .type = "squeeze",
    .ws_size = ws_none,
    .init = init_none,
    .inverse = squeeze_inverse,
    .forward = squeeze_forward,
    .backward = squeeze_backward,
    .destroy = destroy_impl,
};

int nf_squeeze_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", NULL};
    int rc = nf_layer_need_shape(L, err, errlen);
    if (rc || (rc = nf_json_check_keys(spec, keys, err, errlen))) return rc;
    if (L->shape[1] % 2 || L->shape[2] % 2) {
        char s[48];
        nf_set_err(err, errlen, "squeeze needs an even height and width, the image here is %s",
                   shape_str(L->shape, s, sizeof s));
        return NF_EINVAL;
    }
    L->ops = &squeeze_ops;
    L->out_shape[0] = 4 * L->shape[0];
    L->out_shape[1] = L->shape[1] / 2;
    L->out_shape[2] = L->shape[2] / 2;
    return 0;
}

/* ===========================================================================
 * split: Glow's multiscale factor-out with a learned prior.  Of the C
 * channels, the first keep = C/2 (z1, the first keep*H*W entries) stay in
 * the flow, and later layers see the image (keep, H, W); the other C - keep
 * (z2) leave it here.  A zero-initialised 3x3 convolution of z1 gives
 * [mu, logs] (its first C - keep output channels mu, the next logs, logs
 * raw as in Glow), and
 *     inverse: z2' = (z2 - mu) * exp(-logs),  logdet = -sum logs
 *     forward: z2 = mu + exp(logs) * z2'
 * with z2' written in place of z2.  The base distribution scores z2' as
 * N(0,1), so z2 ~ N(mu, exp(logs)^2): Glow's split prior.  Sampling draws
 * z2' from the base already scaled by the temperature.  z1 and the entries
 * after the image are copied unchanged.  A conditional flow (context_dim
 * Cc > 0) gives the convolution Cc more input planes, plane k constant at
 * c_k (as conv_coupling does), so the prior of the factored-out channels
 * is p(z2 | z1, c); dL/dc_k sums the input gradient of plane k.
 *   params: the convolution's W (2(C-keep), keep + Cc, 3, 3) and bias (2(C-keep))
 *   ws: z1's planes and the [mu, logs] planes (kept for backward), the
 *       gradient planes of both, the im2col buffer.
 * ======================================================================== */
typedef struct split_impl {
    nf_conv cv;
    int keep, rest; /* channels staying, channels factored out */
    int cc;         /* context planes after z1's (the flow's context_dim) */
} split_impl;

typedef struct split_ws {
    nf_real *in, *out, *dout, *din, *col;
} split_ws;

static size_t split_ws_size(const nf_layer *L, int B) {
    const split_impl *S = L->impl;
    size_t P = (size_t)L->shape[1] * L->shape[2];
    return 2 * (size_t)B * P * (S->keep + S->cc + 2 * S->rest) + nf_conv_col_size(&S->cv, B);
}

static split_ws split_scratch(const nf_layer *L, nf_real *ws, int B) {
    const split_impl *S = L->impl;
    size_t P = (size_t)L->shape[1] * L->shape[2];
    size_t nin = (size_t)B * P * (S->keep + S->cc), nout = (size_t)B * P * 2 * S->rest;
    split_ws s = {ws, ws + nin, ws + nin + nout, ws + nin + 2 * nout, ws + 2 * nin + 2 * nout};
    return s;
}

static void split_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)buffers;
    nf_conv_init(&((const split_impl *)L->impl)->cv, params, rng, 1);
}

/* [mu, logs] planes of the rows' z1 (the first keep channels of each row)
 * and context rows ctx (B, cc); z1's and the context's planes stay in s->in */
static void split_prior(const nf_layer *L, const nf_real *params, const nf_real *rows,
                        const nf_real *ctx, int B, const split_ws *s) {
    const split_impl *S = L->impl;
    const int P = L->shape[1] * L->shape[2];
    nf_rows_to_planes(rows, L->D, 0, S->keep, P, B, s->in);
    for (int k = 0; k < S->cc; k++)
        for (int b = 0; b < B; b++) {
            nf_real *pl = s->in + ((size_t)(S->keep + k) * B + b) * P, v = ctx[(size_t)b * S->cc + k];
            for (int q = 0; q < P; q++) pl[q] = v;
        }
    nf_conv_forward(&S->cv, params, s->in, s->out, B, s->col);
}

/* One row's z2 <-> z2' given the prior's planes (row b of B); dir 0 is the
 * density direction.  Returns sum logs of the row. */
static double split_row(const split_impl *S, int P, int B, int b, const nf_real *prior,
                        const nf_real *src, nf_real *dst, int dir) {
    double sum = 0;
    for (int c = 0; c < S->rest; c++) {
        const nf_real *mu = prior + ((size_t)c * B + b) * P;
        const nf_real *ls = prior + ((size_t)(S->rest + c) * B + b) * P;
        const nf_real *a = src + (size_t)c * P;
        nf_real *o = dst + (size_t)c * P;
        for (int q = 0; q < P; q++) {
            o[q] = dir ? (nf_real)(mu[q] + exp((double)ls[q]) * a[q])
                       : (nf_real)((a[q] - mu[q]) * exp(-(double)ls[q]));
            sum += ls[q];
        }
    }
    return sum;
}

/* in -> out through z2 <-> z2' (dir as split_row), z1 and the tail copied */
static void split_apply(const nf_layer *L, nf_ctx *c, const nf_real *in, nf_real *out,
                        nf_real *logdet, int dir) {
    const split_impl *S = L->impl;
    const int B = c->B, P = L->shape[1] * L->shape[2];
    const size_t n1 = (size_t)S->keep * P, D = (size_t)L->D;
    split_ws s = split_scratch(L, c->ws, B);
    split_prior(L, c->params, in, c->ctx, B, &s);
    for (int b = 0; b < B; b++) {
        memcpy(out + b * D, in + b * D, n1 * sizeof *out);
        double sum = split_row(S, P, B, b, s.out, in + b * D + n1, out + b * D + n1, dir);
        if (logdet) logdet[b] += (nf_real)(dir ? sum : -sum);
    }
    copy_tail(L, B, (size_t)L->shape[0] * P, in, out);
}

static int split_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                         nf_real *logdet) {
    split_apply(L, c, x, z, logdet, 0);
    return 0;
}

static int split_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                         nf_real *logdet) {
    split_apply(L, c, z, x, logdet, 1);
    return 0;
}

/* With e = exp(-logs) and z2' the output:
 *   dz2'/dz2 = e,  dz2'/dmu = -e,  dz2'/dlogs = -z2',  dlogdet/dlogs = -1,
 * so dx2 = dz2' e, dmu = -dz2' e, dlogs = -dz2' z2' - dlogdet; the conv's
 * backward takes [dmu, dlogs] to its weights and to z1 (dx1 = dz1 + that).
 * z1's planes and [mu, logs] are still in ws from the inverse pass. */
static void split_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                           const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const split_impl *S = L->impl;
    const int B = c->B, P = L->shape[1] * L->shape[2];
    const size_t n1 = (size_t)S->keep * P, D = (size_t)L->D;
    split_ws s = split_scratch(L, c->ws, B);
    (void)x;
    for (int ch = 0; ch < S->rest; ch++)
        for (int b = 0; b < B; b++) {
            size_t pm = ((size_t)ch * B + b) * P, pl = ((size_t)(S->rest + ch) * B + b) * P;
            size_t r = b * D + n1 + (size_t)ch * P;
            const nf_real wl = dlogdet ? dlogdet[b] : 0;
            for (int q = 0; q < P; q++) {
                nf_real e = (nf_real)exp(-(double)s.out[pl + q]), g = dz[r + q];
                s.dout[pm + q] = -g * e;
                s.dout[pl + q] = -g * z[r + q] - wl;
                if (dx) dx[r + q] = g * e;
            }
        }
    int want_dctx = S->cc && c->dctx;
    nf_conv_backward(&S->cv, c->params, c->grad, s.in, s.dout, dx || want_dctx ? s.din : NULL, B,
                     s.col);
    for (int k = 0; want_dctx && k < S->cc; k++)
        for (int b = 0; b < B; b++) {
            const nf_real *g = s.din + ((size_t)(S->keep + k) * B + b) * P;
            double acc = 0;
            for (int q = 0; q < P; q++) acc += g[q];
            c->dctx[(size_t)b * S->cc + k] += (nf_real)acc;
        }
    if (!dx) return;
    nf_planes_to_rows(s.din, S->keep, P, B, dx, L->D, 0);
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < n1; i++) dx[b * D + i] += dz[b * D + i];
    copy_tail(L, B, (size_t)L->shape[0] * P, dz, dx);
}

static double split_macs(const nf_layer *L, int executed) {
    (void)executed;
    return nf_conv_macs(&((const split_impl *)L->impl)->cv);
}

static const nf_layer_ops split_ops = {
    .type = "split",
    .ws_size = split_ws_size,
    .init = split_init,
    .inverse = split_inverse,
    .forward = split_forward,
    .backward = split_backward,
    .destroy = destroy_impl,
    .macs = split_macs,
};

int nf_split_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", NULL};
    int rc = nf_layer_need_shape(L, err, errlen);
    if (rc || (rc = nf_json_check_keys(spec, keys, err, errlen))) return rc;
    if (L->shape[0] < 2) {
        char s[48];
        nf_set_err(err, errlen, "split needs at least 2 channels, the image here is %s",
                   shape_str(L->shape, s, sizeof s));
        return NF_EINVAL;
    }
    split_impl *S = nf_calloc(1, sizeof *S);
    if (!S) return NF_ENOMEM;
    S->keep = L->shape[0] / 2;
    S->rest = L->shape[0] - S->keep;
    S->cc = L->C;
    nf_conv *cv = &S->cv;
    cv->cin = S->keep + S->cc;
    cv->cout = 2 * S->rest;
    cv->k = 3;
    cv->h = L->shape[1];
    cv->w = L->shape[2];
    cv->w_off = 0;
    cv->b_off = (size_t)cv->cout * cv->cin * 9;
    L->ops = &split_ops;
    L->impl = S;
    L->nparams = cv->b_off + (size_t)cv->cout;
    L->out_shape[0] = S->keep;
    return 0;
}

/* ===========================================================================
 * channel_actnorm: actnorm with one scale and bias per channel, shared by
 * the pixels (Glow's actnorm).
 *   params: log_scale (C), bias (C); buffers: initialised flag (1)
 *   inverse: z = (x - bias_c) * exp(-log_scale_c), logdet = -H W sum_c log_scale_c
 *   forward: x = z * exp(log_scale_c) + bias_c,    logdet = +H W sum_c log_scale_c
 * data_init (only while the flag is 0) sets bias_c and log_scale_c to the
 * mean and log(std + 1e-6) of channel c over the batch and the pixels, so
 * the batch leaves with zero mean and unit variance per channel.
 * ======================================================================== */
typedef struct { int data_init; } cactnorm_impl;

static void cactnorm_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    const cactnorm_impl *a = L->impl;
    (void)rng;
    memset(params, 0, L->nparams * sizeof *params);
    buffers[0] = a->data_init ? (nf_real)0 : (nf_real)1;
}

static double cactnorm_sum_logs(const nf_real *ls, const img_dims *d) {
    double s = 0;
    for (int ch = 0; ch < d->c; ch++) s += ls[ch];
    return s * d->p;
}

/* y = (x - shift_c) * scale_c over the image of every row; the tail copied */
static void cactnorm_apply(const nf_layer *L, int B, const nf_real *scale, const nf_real *shift,
                           const nf_real *post, const nf_real *in, nf_real *out) {
    img_dims d = dims_of(L);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < d.c; ch++) {
            size_t o = (size_t)b * L->D + (size_t)ch * d.p;
            const nf_real s = scale[ch], m = shift ? shift[ch] : 0, a = post ? post[ch] : 0;
            for (int q = 0; q < d.p; q++) out[o + q] = (in[o + q] - m) * s + a;
        }
    copy_tail(L, B, d.n, in, out);
}

static int cactnorm_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                            nf_real *logdet) {
    img_dims d = dims_of(L);
    const nf_real *ls = c->params, *bias = c->params + d.c;
    nf_real *scale = c->ws;
    for (int ch = 0; ch < d.c; ch++) scale[ch] = (nf_real)exp(-(double)ls[ch]);
    cactnorm_apply(L, c->B, scale, bias, NULL, x, z);
    add_logdet(logdet, c->B, -cactnorm_sum_logs(ls, &d));
    return 0;
}

static int cactnorm_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                            nf_real *logdet) {
    img_dims d = dims_of(L);
    const nf_real *ls = c->params, *bias = c->params + d.c;
    nf_real *scale = c->ws;
    for (int ch = 0; ch < d.c; ch++) scale[ch] = (nf_real)exp((double)ls[ch]);
    cactnorm_apply(L, c->B, scale, NULL, bias, z, x);
    add_logdet(logdet, c->B, cactnorm_sum_logs(ls, &d));
    return 0;
}

/* dz/dx = exp(-ls_c); dz/dbias_c = -exp(-ls_c); dz/dls_c = -z;
 * dlogdet/dls_c = -H W */
static void cactnorm_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                              const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    img_dims d = dims_of(L);
    const nf_real *ls = c->params;
    const double wsum = sum_logdet_weights(dlogdet, c->B);
    (void)x;
    for (int ch = 0; ch < d.c; ch++) {
        const nf_real s = (nf_real)exp(-(double)ls[ch]);
        double gls = -wsum * d.p, gdz = 0;
        for (int b = 0; b < c->B; b++) {
            size_t o = (size_t)b * L->D + (size_t)ch * d.p;
            for (int q = 0; q < d.p; q++) {
                gls -= (double)dz[o + q] * z[o + q];
                gdz += dz[o + q];
                if (dx) dx[o + q] = dz[o + q] * s;
            }
        }
        if (c->grad) {
            c->grad[ch] += (nf_real)gls;
            c->grad[d.c + ch] -= (nf_real)(gdz * s);
        }
    }
    if (dx) copy_tail(L, c->B, d.n, dz, dx);
}

static void cactnorm_data_init(const nf_layer *L, nf_real *params, nf_real *buffers,
                               const nf_real *x, int B) {
    img_dims d = dims_of(L);
    if (buffers[0] != 0 || B <= 0) return;
    const double cnt = (double)B * d.p;
    for (int ch = 0; ch < d.c; ch++) {
        double s = 0, ss = 0;
        for (int b = 0; b < B; b++) {
            const nf_real *r = x + (size_t)b * L->D + (size_t)ch * d.p;
            for (int q = 0; q < d.p; q++) s += r[q];
        }
        double mean = s / cnt;
        for (int b = 0; b < B; b++) {
            const nf_real *r = x + (size_t)b * L->D + (size_t)ch * d.p;
            for (int q = 0; q < d.p; q++) ss += (r[q] - mean) * (r[q] - mean);
        }
        params[ch] = (nf_real)log(sqrt(ss / cnt) + 1e-6);
        params[d.c + ch] = (nf_real)mean;
    }
    buffers[0] = 1;
}

static size_t cactnorm_ws_size(const nf_layer *L, int B) {
    (void)B;
    return (size_t)L->shape[0]; /* the per-channel factors of one call */
}

static void cactnorm_to_json(const nf_layer *L, cJSON *obj) {
    const cactnorm_impl *a = L->impl;
    cJSON_AddBoolToObject(obj, "data_init", a->data_init);
}

static const nf_layer_ops cactnorm_ops = {
    .type = "channel_actnorm",
    .ws_size = cactnorm_ws_size,
    .init = cactnorm_init,
    .inverse = cactnorm_inverse,
    .forward = cactnorm_forward,
    .backward = cactnorm_backward,
    .data_init = cactnorm_data_init,
    .to_json = cactnorm_to_json,
    .destroy = destroy_impl,
};

int nf_channel_actnorm_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "data_init", NULL};
    int di, rc = nf_layer_need_shape(L, err, errlen);
    if (rc || (rc = nf_json_check_keys(spec, keys, err, errlen))) return rc;
    if ((rc = nf_json_bool(spec, "data_init", 1, &di, err, errlen))) return rc;
    cactnorm_impl *a = nf_malloc(sizeof *a);
    if (!a) return NF_ENOMEM;
    a->data_init = di;
    L->ops = &cactnorm_ops;
    L->impl = a;
    L->nparams = 2 * (size_t)L->shape[0];
    L->nbuffers = 1;
    return 0;
}

/* ===========================================================================
 * invconv: Glow's invertible 1x1 convolution.  At every pixel the C channel
 * values are multiplied by one (C,C) matrix
 *     W = P L (U + diag(sign * exp(log_s)))
 *     inverse: z = W x (per pixel),  logdet = H W sum_k log_s_k
 *     forward: x = W^-1 z,           logdet = -H W sum_k log_s_k
 * L unit lower and U strictly upper triangular are trained with log_s
 * (parameters: l, u, log_s packed as nf_lu_factors reads them, C*C in all);
 * the permutation P and the signs are fixed.  All come from the spec's
 * "seed": a Gaussian (C,C) matrix drawn from it, the Q of its QR
 * factorisation (a random rotation, as Glow), and Q's LU factorisation with
 * partial pivoting, Q = P L U, s = diag(U).  The constructor computes them,
 * so a model file rebuilds P and the signs from its seed, and init writes
 * L, U and log_s of Q: a fresh layer is the rotation Q (log-det 0).
 *
 * Per row, the image is a (C, H*W) matrix X and Z = W X is one GEMM with
 * many columns.  With fewer than INVCONV_ROW_MIN_PIXELS pixels per channel
 * that GEMM is too thin, and the batch is instead gathered into planes
 * (C, B*H*W) for one GEMM over all rows (measured, OpenBLAS sgemm on one
 * thread, B = 256: per row beats planes 2x at C = 12, H*W = 256 and 1.4x at
 * C = 96, H*W = 8; planes beat per row 1.8x at C = 192, H*W = 4 and 1.6x
 * at C = 48, H*W = 1).
 * ======================================================================== */
#define INVCONV_ROW_MIN_PIXELS 8
/* C*C parameters, and the constructor's QR and LU are O(C^3) in plain loops
 * (measured: 7 ms at 192 channels, 0.11 s at 512, 0.8 s at 1024), run at
 * every build of the flow (a job's dry run, each model load).  Glow's
 * multiscale flows stay far below: 3 * 2^(L+1) channels at level L with
 * splits, 192 for a 128x128 image (NF_MAX_DIM) in five levels. */
#define INVCONV_MAX_CHANNELS 512

typedef struct invconv_impl {
    uint64_t seed;
    int *perm;       /* (C) row i of L U is row perm[i] of W */
    nf_real *sign;   /* (C) +-1 */
    nf_real *start;  /* (C*C) the parameters of the rotation, for init */
} invconv_impl;

typedef struct invconv_ws {
    nf_real *W, *Lf, *Ut, *t1, *t2; /* (C,C) each */
    nf_real *xp, *yp, *gp;          /* planes (C, B*P) each, or NULL (per-row GEMMs) */
} invconv_ws;

static int invconv_planes(const img_dims *d) { return d->p < INVCONV_ROW_MIN_PIXELS; }

static size_t invconv_ws_size(const nf_layer *L, int B) {
    img_dims d = dims_of(L);
    size_t cc = (size_t)d.c * d.c;
    return 5 * cc + (invconv_planes(&d) ? 3 * (size_t)B * d.n : 0);
}

static invconv_ws invconv_scratch(const nf_layer *L, nf_real *ws, int B) {
    img_dims d = dims_of(L);
    size_t cc = (size_t)d.c * d.c, pl = (size_t)B * d.n;
    invconv_ws s = {ws, ws + cc, ws + 2 * cc, ws + 3 * cc, ws + 4 * cc, NULL, NULL, NULL};
    if (invconv_planes(&d)) {
        s.xp = ws + 5 * cc;
        s.yp = s.xp + pl;
        s.gp = s.yp + pl;
    }
    return s;
}

typedef struct {
    const nf_real *l, *u, *log_s;
} invconv_view;

static invconv_view invconv_params(const nf_layer *L, const nf_real *p) {
    size_t ntri = (size_t)L->shape[0] * (L->shape[0] - 1) / 2;
    invconv_view v = {p, p + ntri, p + 2 * ntri};
    return v;
}

/* out = op(A) in at every pixel of every row (op(A) = A, or A^T with
 * trans); the tail copied.  The planes path leaves in's planes in s->xp,
 * or finds them there already when gathered is set. */
static void invconv_mul(const nf_layer *L, int B, const nf_real *A, int trans, const nf_real *in,
                        nf_real *out, const invconv_ws *s, int gathered) {
    img_dims d = dims_of(L);
    const int C = d.c, P = d.p, D = L->D;
    if (s->xp) {
        if (!gathered) nf_rows_to_planes(in, D, 0, C, P, B, s->xp);
        nf_gemm(trans, 0, C, B * P, C, (nf_real)1, A, C, s->xp, B * P, (nf_real)0, s->yp, B * P);
        nf_planes_to_rows(s->yp, C, P, B, out, D, 0);
    } else {
        for (int b = 0; b < B; b++)
            nf_gemm(trans, 0, C, P, C, (nf_real)1, A, C, in + (size_t)b * D, P, (nf_real)0,
                    out + (size_t)b * D, P);
    }
    copy_tail(L, B, d.n, in, out);
}

/* W into s->W, with Lf and Ut (kept for backward); s->t1 holds L U */
static void invconv_build(const nf_layer *L, const nf_real *params, const invconv_ws *s) {
    const invconv_impl *A = L->impl;
    const int C = L->shape[0];
    invconv_view v = invconv_params(L, params);
    nf_lu_factors(C, v.l, v.u, v.log_s, A->sign, s->Lf, s->Ut);
    nf_gemm(0, 0, C, C, C, (nf_real)1, s->Lf, C, s->Ut, C, (nf_real)0, s->t1, C);
    for (int i = 0; i < C; i++)
        memcpy(s->W + (size_t)A->perm[i] * C, s->t1 + (size_t)i * C, (size_t)C * sizeof *s->W);
}

static double invconv_logdet(const nf_layer *L, const nf_real *params) {
    invconv_view v = invconv_params(L, params);
    double acc = 0;
    for (int k = 0; k < L->shape[0]; k++) acc += v.log_s[k];
    return acc * L->shape[1] * L->shape[2];
}

static int invconv_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                           nf_real *logdet) {
    invconv_ws s = invconv_scratch(L, c->ws, c->B);
    invconv_build(L, c->params, &s);
    invconv_mul(L, c->B, s.W, 0, x, z, &s, 0);
    add_logdet(logdet, c->B, invconv_logdet(L, c->params));
    return 0;
}

/* W^-1 = Ut^-1 Lf^-1 P^T, formed once per call as its transpose
 * P Lf^-T Ut^-T: two triangular solves on the rows of P (C^3, against the
 * B*H*W*C^2 of the product). */
static int invconv_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                           nf_real *logdet) {
    const invconv_impl *A = L->impl;
    const int C = L->shape[0];
    invconv_ws s = invconv_scratch(L, c->ws, c->B);
    invconv_view v = invconv_params(L, c->params);
    nf_real *winv_t = s.W;
    nf_lu_factors(C, v.l, v.u, v.log_s, A->sign, s.Lf, s.Ut);
    memset(winv_t, 0, (size_t)C * C * sizeof *winv_t);
    for (int i = 0; i < C; i++) winv_t[(size_t)A->perm[i] * C + i] = 1;
    nf_trsm_rt(0, 1, C, C, s.Lf, C, winv_t, C);
    nf_trsm_rt(1, 0, C, C, s.Ut, C, winv_t, C);
    invconv_mul(L, c->B, winv_t, 1, z, x, &s, 0);
    add_logdet(logdet, c->B, -invconv_logdet(L, c->params));
    return 0;
}

/* dW = sum over rows and pixels of dz x^T into s->t1 (the planes path
 * reads dz's planes in s->gp and x's, which inverse left in s->xp) */
static void invconv_grad_w(const nf_layer *L, int B, const nf_real *x, const nf_real *dz,
                           const invconv_ws *s) {
    img_dims d = dims_of(L);
    const int C = d.c, P = d.p, D = L->D;
    if (s->xp) {
        nf_gemm(0, 1, C, C, B * P, (nf_real)1, s->gp, B * P, s->xp, B * P, (nf_real)0, s->t1, C);
        return;
    }
    memset(s->t1, 0, (size_t)C * C * sizeof *s->t1);
    for (int b = 0; b < B; b++)
        nf_gemm(0, 1, C, C, P, (nf_real)1, dz + (size_t)b * D, P, x + (size_t)b * D, P,
                (nf_real)1, s->t1, C);
}

/* dx = W^T dz per pixel;  dW = sum dz x^T, dM_i = dW_perm[i] (the rows of
 * L U), then through M = Lf Ut (nf_lu_factors_backward) with the log-det's
 * H W sum_b dlogdet_b on every log_s.  W, Lf and Ut are still in ws from the
 * inverse pass on this x (the backward contract in nf_internal.h). */
static void invconv_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                             const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    const invconv_impl *A = L->impl;
    const int C = L->shape[0], B = c->B;
    invconv_ws s = invconv_scratch(L, c->ws, B);
    (void)z;
    /* the planes path: dz's planes once, in gp (x's stay in xp) */
    if (s.xp) nf_rows_to_planes(dz, L->D, 0, C, L->shape[1] * L->shape[2], B, s.gp);
    if (c->grad) invconv_grad_w(L, B, x, dz, &s);
    if (dx) {
        invconv_ws t = s;
        t.xp = s.gp;
        invconv_mul(L, B, s.W, 1, dz, dx, &t, 1);
    }
    if (!c->grad) return;
    nf_real *dM = s.t2;
    for (int i = 0; i < C; i++)
        memcpy(dM + (size_t)i * C, s.t1 + (size_t)A->perm[i] * C, (size_t)C * sizeof *dM);
    invconv_view v = invconv_params(L, c->params);
    size_t ntri = (size_t)C * (C - 1) / 2;
    double dld = sum_logdet_weights(dlogdet, B) * L->shape[1] * L->shape[2];
    /* dLf into W's space and dUt into t1's (both used up) */
    nf_lu_factors_backward(C, s.Lf, s.Ut, dM, v.log_s, A->sign, dld, s.W, s.t1, c->grad,
                           c->grad + ntri, c->grad + 2 * ntri);
}

static void invconv_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    const invconv_impl *A = L->impl;
    (void)buffers, (void)rng;
    memcpy(params, A->start, L->nparams * sizeof *params);
}

static void invconv_to_json(const nf_layer *L, cJSON *obj) {
    const invconv_impl *A = L->impl;
    cJSON_AddNumberToObject(obj, "seed", (double)A->seed);
}

static void invconv_destroy(nf_layer *L) {
    invconv_impl *A = L->impl;
    if (!A) return;
    nf_free(A->perm);
    nf_free(A->sign);
    nf_free(A->start);
    destroy_impl(L);
}

/* z = W x at every pixel */
static double invconv_macs(const nf_layer *L, int executed) {
    (void)executed;
    return (double)L->shape[0] * L->shape[0] * L->shape[1] * L->shape[2];
}

static const nf_layer_ops invconv_ops = {
    .type = "invconv",
    .ws_size = invconv_ws_size,
    .init = invconv_init,
    .inverse = invconv_inverse,
    .forward = invconv_forward,
    .backward = invconv_backward,
    .to_json = invconv_to_json,
    .destroy = invconv_destroy,
    .macs = invconv_macs,
};

/* Q (n,n) of A = Q R by Householder reflections, A (n,n) overwritten with R;
 * v, t (n) scratch.  Each reflection H = I - 2 v v^T / v^T v is applied to A
 * from the left (t = v^T A, then A -= v t: both sweep A's rows, which keeps
 * the loops on contiguous memory) and accumulated into Q from the right. */
static void householder_q(int n, double *A, double *Q, double *v, double *t) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) Q[(size_t)i * n + j] = i == j;
    for (int k = 0; k + 1 < n; k++) {
        const int m = n - k;
        double norm = 0;
        for (int i = 0; i < m; i++) {
            v[i] = A[(size_t)(k + i) * n + k];
            norm += v[i] * v[i];
        }
        norm = sqrt(norm);
        /* v = x - alpha e1 with alpha = -sign(x0) |x|: no cancellation */
        v[0] += v[0] >= 0 ? norm : -norm;
        double vv = 0;
        for (int i = 0; i < m; i++) vv += v[i] * v[i];
        if (vv == 0) continue;
        for (int j = k; j < n; j++) t[j] = 0;
        for (int i = 0; i < m; i++) {
            const double *a = A + (size_t)(k + i) * n, vi = v[i] * (2 / vv);
            for (int j = k; j < n; j++) t[j] += vi * a[j];
        }
        for (int i = 0; i < m; i++) {
            double *a = A + (size_t)(k + i) * n;
            for (int j = k; j < n; j++) a[j] -= v[i] * t[j];
        }
        for (int r = 0; r < n; r++) {
            double *q = Q + (size_t)r * n + k, qv = 0;
            for (int i = 0; i < m; i++) qv += q[i] * v[i];
            qv *= 2 / vv;
            for (int i = 0; i < m; i++) q[i] -= qv * v[i];
        }
    }
}

/* The rotation of seed and its factors into A: perm, sign and the
 * parameters l, u, log_s (start).  g, q: (C,C) scratch; v: (2C). */
static int invconv_rotation(invconv_impl *A, int C, double *g, double *q, double *v) {
    nf_rng r;
    nf_rng_seed(&r, A->seed);
    for (size_t i = 0; i < (size_t)C * C; i++) g[i] = nf_rng_normal(&r);
    householder_q(C, g, q, v, v + C);
    if (nf_lu_decompose(C, q, A->perm)) return NF_EINVAL; /* an orthogonal Q never is */
    size_t ntri = (size_t)C * (C - 1) / 2;
    nf_real *l = A->start, *u = l + ntri, *log_s = u + ntri;
    for (int i = 0; i < C; i++) {
        const double *row = q + (size_t)i * C;
        for (int j = 0; j < i; j++) l[nf_lu_lidx(i, j)] = (nf_real)row[j];
        for (int j = i + 1; j < C; j++) u[nf_lu_uidx(C, i, j)] = (nf_real)row[j];
        A->sign[i] = row[i] < 0 ? (nf_real)-1 : (nf_real)1;
        log_s[i] = (nf_real)log(fabs(row[i]));
    }
    return 0;
}

int nf_invconv_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "seed", NULL};
    uint64_t seed;
    int rc = nf_layer_need_shape(L, err, errlen);
    if (rc || (rc = nf_json_check_keys(spec, keys, err, errlen))) return rc;
    if ((rc = nf_json_seed(spec, "seed", 0, &seed, err, errlen))) return rc;
    const int C = L->shape[0];
    if (C > INVCONV_MAX_CHANNELS) {
        char s[48];
        nf_set_err(err, errlen, "invconv takes at most %d channels, the image here is %s",
                   INVCONV_MAX_CHANNELS, shape_str(L->shape, s, sizeof s));
        return NF_EINVAL;
    }
    const size_t cc = (size_t)C * C;
    invconv_impl *A = nf_calloc(1, sizeof *A);
    double *g = nf_malloc(2 * cc * sizeof *g), *v = nf_malloc(2 * (size_t)C * sizeof *v);
    if (A) {
        A->perm = nf_malloc((size_t)C * sizeof *A->perm);
        A->sign = nf_malloc((size_t)C * sizeof *A->sign);
        A->start = nf_malloc(cc * sizeof *A->start);
    }
    rc = A && g && v && A->perm && A->sign && A->start ? 0 : NF_ENOMEM;
    if (!rc) {
        A->seed = seed;
        rc = invconv_rotation(A, C, g, g + cc, v);
        if (rc) nf_set_err(err, errlen, "invconv: the rotation of this seed is singular");
    }
    nf_free(g);
    nf_free(v);
    L->ops = &invconv_ops;
    L->impl = A; /* on failure build() destroys it */
    L->nparams = cc;
    return rc;
}
