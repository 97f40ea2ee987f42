/* conv_coupling.c: the coupling layer of image flows ("conv_coupling";
 * RealNVP, Dinh et al. 2016, and Glow, Kingma & Dhariwal 2018), with a
 * convolutional conditioner (conv.h) over the image at the layer's position.
 *
 * The layer acts on the first C*H*W entries of each row, an image (C, H, W)
 * stored C-H-W (L->shape); the rest of the row (channels factored out by an
 * earlier split) is copied unchanged with log-det 0.  A mask splits the
 * image into a part that passes through and conditions the network, and a
 * part transformed element by element:
 *   "channel"           channels [0, C/2) pass, [C/2, C) are transformed
 *   "channel_odd"       the complement: [C/2, C) pass, [0, C/2) transformed
 *                       (C/2 rounded down; both need C >= 2)
 *   "checkerboard"      pixels with (i + j) even pass, all channels; the
 *                       network sees every channel with the transformed
 *                       pixels zeroed and emits parameters for every pixel,
 *                       of which the transformed pixels' are used
 *   "checkerboard_odd"  pixels with (i + j) odd pass
 * So nt channels are transformed (nt = C for checkerboards) and the network
 * maps the passing channels (all C for checkerboards) to Q*nt channels:
 * parameter q of transformed channel j is output channel q*nt + j.
 * Transforms, density direction (x -> z), per transformed element:
 *   affine (Q = 2, t = parameter 0, h = parameter 1):
 *     "scale":"sigmoid" (Glow)  z = (x + t) s, s = sigmoid(h + 2), log-det log s
 *     "scale":"exp" (flowd's affine coupling)  z = x e^s + t, s = 3 tanh(h/3),
 *                      log-det s
 *   additive (Q = 1): z = x + t
 *   spline (Q = 3K-1): z = g(x; theta), the rational-quadratic spline of rqs.h
 * The network's last convolution starts at zero, so a fresh layer is the
 * identity, except "sigmoid", which starts as the fixed scale sigmoid(2).
 *
 * Context (a flow with context_dim C > 0): the network reads C more input
 * planes, plane k constant at c_k over the image (the context broadcast
 * over pixels, as conditional Glow does), so its first convolution adds a
 * learnt, position-dependent function of c to every pixel.  Backward:
 * dL/dc_k = sum over pixels of the network's input gradient on plane k.
 *
 * Backward, per transformed element (dz, dl = dL/dz, dL/dlogdet):
 *   sigmoid: dt = dz s, dh = dz (x + t) s (1 - s) + dl (1 - s), dx = dz s
 *   exp:     dt = dz, dh = (dz x e^s + dl)(1 - (s/3)^2), dx = dz e^s
 *   additive: dt = dz, dx = dz;  spline: nf_rqs_backward
 * and passing elements get dx = dz + (the network's input gradient).
 */
#include "alloc.h"
#include "conv.h"
#include "kern.h"
#include "nf_internal.h"
#include "rqs.h"

#include <math.h>
#include <string.h>

typedef enum { CC_AFFINE = 0, CC_ADDITIVE, CC_SPLINE } cc_transform;
typedef enum { CC_CHANNEL = 0, CC_CHANNEL_ODD, CC_CHECKER, CC_CHECKER_ODD } cc_mask;
typedef enum { CC_SIGMOID = 0, CC_EXP } cc_scale;

static const char *const transform_names[] = {"affine", "additive", "spline", NULL};
static const char *const mask_names[] = {"channel", "channel_odd", "checkerboard",
                                         "checkerboard_odd", NULL};
static const char *const scale_names[] = {"sigmoid", "exp", NULL};

typedef struct conv_coupling {
    cc_transform transform;
    cc_mask mask;
    cc_scale scale;        /* affine */
    nf_rqs_cfg cf;         /* spline */
    int C, P;              /* image channels, pixels */
    int pc0, cin;          /* passing channels [pc0, pc0 + cin): the network's input */
    int cc;                /* context planes after them (the flow's context_dim) */
    int tc0, nt;           /* transformed channels [tc0, tc0 + nt) */
    int Q;                 /* network outputs per transformed element */
    unsigned char *pass;   /* (P) checkerboards: 1 where the pixel passes; else NULL */
    nf_cnet net;
} conv_coupling;

/* ---- scratch --------------------------------------------------------------
 * The rows are processed in chunks of m rows (cc_chunk_rows): the network's
 * activations of 256 rows of a 4x14x14 image at 64 hidden channels are
 * ~30 MB, far out of cache, so one GEMM over the whole batch after another
 * streams every activation through memory several times (measured: a third
 * more time than chunks whose activations stay in the caches, which
 * nf_cc_chunk_floats sizes).  In planes layout of a chunk's m rows:
 *   kept:   in (cin + cc planes) | theta (Q*nt planes) | the network's activations
 *   shared: dtheta (Q*nt planes) | din (cin + cc planes) | the network's scratch
 * A forward-only workspace holds one of each (ws_size_infer), reused by
 * every chunk; otherwise ws = shared | kept block 0 | kept block 1 ..., one
 * kept block per chunk, which backward reads, and the shared part reused
 * (it stays in the caches, and the scratch is half the size). */
typedef struct { nf_real *in, *th, *act, *dth, *din, *scr; } cc_bufs;

size_t nf_cc_chunk_floats = (size_t)1 << 19;

static size_t cc_kept(const conv_coupling *S, int m) {
    size_t pl = (size_t)m * S->P;
    return ((size_t)S->cin + S->cc + (size_t)S->Q * S->nt) * pl + nf_cnet_act_size(&S->net, m);
}

static size_t cc_shared(const conv_coupling *S, int m) {
    size_t pl = (size_t)m * S->P;
    return ((size_t)S->cin + S->cc + (size_t)S->Q * S->nt) * pl + nf_cnet_scratch_size(&S->net, m);
}

/* the working set of a chunk of m rows */
static size_t cc_block(const conv_coupling *S, int m) { return cc_kept(S, m) + cc_shared(S, m); }

/* n rows' buffers in a kept block and the shared part */
static cc_bufs cc_layout(const conv_coupling *S, nf_real *kept, nf_real *shared, int n) {
    size_t pl = (size_t)n * S->P, nin = ((size_t)S->cin + S->cc) * pl,
           nth = (size_t)S->Q * S->nt * pl;
    cc_bufs b;
    b.in = kept;
    b.th = b.in + nin;
    b.act = b.th + nth;
    b.dth = shared;
    b.din = b.dth + nth;
    b.scr = b.din + nin;
    return b;
}

/* rows per chunk for a call of B rows: as many as nf_cc_chunk_floats hold,
 * at least one */
static int cc_chunk_rows(const conv_coupling *S, int B) {
    if (B <= 1) return 1;
    size_t one = cc_block(S, 1), per = cc_block(S, 2) - one, fixed = one > per ? one - per : 0;
    size_t room = nf_cc_chunk_floats > fixed ? nf_cc_chunk_floats - fixed : 0;
    size_t m = room / (per ? per : 1);
    if (m < 1) m = 1;
    while (m > 1 && m < (size_t)B && cc_block(S, (int)m) > nf_cc_chunk_floats) m--;
    return m >= (size_t)B ? B : (int)m;
}

int nf_conv_coupling_chunk_rows(const nf_layer *L, int B) {
    return cc_chunk_rows(L->impl, B);
}

static size_t cc_ws_size(const nf_layer *L, int B) {
    const conv_coupling *S = L->impl;
    if (B < 1) return 0;
    int m = cc_chunk_rows(S, B);
    return cc_shared(S, m) + (size_t)((B + m - 1) / m) * cc_kept(S, m);
}

static size_t cc_ws_size_infer(const nf_layer *L, int B) {
    const conv_coupling *S = L->impl;
    return B < 1 ? 0 : cc_block(S, cc_chunk_rows(S, B));
}

/* the buffers of the chunk of n rows starting at row b0 (m rows per chunk) */
static cc_bufs cc_chunk(const conv_coupling *S, const nf_ctx *c, int m, int b0, int n) {
    nf_real *kept = c->ws + cc_shared(S, m);
    if (!c->infer) kept += (size_t)(b0 / m) * cc_kept(S, m);
    return cc_layout(S, kept, c->ws, n);
}

static void cc_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)buffers;
    nf_cnet_init(&((const conv_coupling *)L->impl)->net, params, rng);
}

/* The network's input from u (the chunk's rows of x, or z: their passing
 * parts are equal) and ctx (the chunk's context rows, (n,cc)), and its
 * output theta, in b. */
static void cc_condition(const nf_layer *L, const nf_real *params, const cc_bufs *b, int n,
                         const nf_real *u, const nf_real *ctx) {
    const conv_coupling *S = L->impl;
    int P = S->P;
    nf_rows_to_planes(u, L->D, S->pc0, S->cin, P, n, b->in);
    if (S->pass) /* checkerboards: the transformed pixels read as 0 */
        for (size_t r = 0; r < (size_t)S->cin * n; r++) {
            nf_real *pl = b->in + r * P;
            for (int p = 0; p < P; p++) pl[p] = S->pass[p] ? pl[p] : 0;
        }
    for (int k = 0; k < S->cc; k++) /* context plane k of row r: c_rk everywhere */
        for (int r = 0; r < n; r++) {
            nf_real *pl = b->in + ((size_t)(S->cin + k) * n + r) * P, v = ctx[(size_t)r * S->cc + k];
            for (int p = 0; p < P; p++) pl[p] = v;
        }
    nf_cnet_forward_ex(&S->net, params, b->in, b->th, n, b->act, b->scr);
}

/* ---- the element-wise transforms ----------------------------------------------- */

static double exp_scale(double h) { return NF_SCALE_BOUND * tanh(h / NF_SCALE_BOUND); }

/* Glow's sigmoid scale, pixels in blocks of CC_BLK: s = sigmoid(a) for
 * the block at once (nf_sigmoid_parts: vectorised, in double), and the
 * log-det sum log s = sum min(a, 0) - log prod (1 + exp(-|a|)), one log per
 * block (the factors are in [1, 2], their product under 2^CC_BLK). */
#define CC_BLK 256

/* v = (u + t) s (dir 0) or u / s - t (dir 1) over n pixels: vectorised */
NF_VEC static void sigmoid_apply(const nf_real *u, const nf_real *t, const double *s, int n,
                                 nf_real *v, int dir) {
    if (dir)
        for (int i = 0; i < n; i++) v[i] = (nf_real)((double)u[i] / s[i] - (double)t[i]);
    else
        for (int i = 0; i < n; i++) v[i] = (nf_real)(((double)u[i] + (double)t[i]) * s[i]);
}

static double cc_row_sigmoid(const conv_coupling *S, const nf_real *u, const nf_real *th,
                             size_t qs, nf_real *v, int dir) {
    const unsigned char *pass = S->pass;
    double sb[CC_BLK], db[CC_BLK], ld = 0;
    for (int p0 = 0; p0 < S->P; p0 += CC_BLK) {
        int n = S->P - p0 < CC_BLK ? S->P - p0 : CC_BLK;
        const nf_real *h = th + qs + p0;
        nf_sigmoid_parts(h, 2, n, sb, db);
        /* four running products and sums: no chain of dependent multiplies */
        double prod[4] = {1, 1, 1, 1}, neg[4] = {0, 0, 0, 0};
        if (!pass) {
            sigmoid_apply(u + p0, th + p0, sb, n, v + p0, dir);
            for (int i = 0; i < n; i++) {
                double a = (double)h[i] + 2;
                prod[i & 3] *= db[i];
                neg[i & 3] += a < 0 ? a : 0;
            }
        } else {
            for (int i = 0; i < n; i++) {
                int p = p0 + i;
                if (pass[p]) continue;
                double x = u[p], t = th[p], s = sb[i], a = (double)h[i] + 2;
                v[p] = (nf_real)(dir ? x / s - t : (x + t) * s);
                prod[i & 3] *= db[i];
                neg[i & 3] += a < 0 ? a : 0;
            }
        }
        ld += (neg[0] + neg[1]) + (neg[2] + neg[3]) - log((prod[0] * prod[1]) * (prod[2] * prod[3]));
    }
    return dir ? -ld : ld;
}

/* One transformed channel of one row (P pixels): u in, v out, parameters q
 * at th + q*qs; returns the log-det (dir 0: density, 1: sampling). */
static double cc_row(const conv_coupling *S, const nf_real *u, const nf_real *th, size_t qs,
                     nf_real *v, int dir) {
    const unsigned char *pass = S->pass;
    double ld = 0;
    if (S->transform == CC_AFFINE && S->scale == CC_SIGMOID)
        return cc_row_sigmoid(S, u, th, qs, v, dir);
    if (S->transform == CC_SPLINE) {
        /* every pixel through nf_rqs_run (four at a time), the passing ones dropped */
        double xb[CC_BLK], yb[CC_BLK], lb[CC_BLK];
        for (int p0 = 0; p0 < S->P; p0 += CC_BLK) {
            int n = S->P - p0 < CC_BLK ? S->P - p0 : CC_BLK;
            for (int i = 0; i < n; i++) xb[i] = u[p0 + i];
            nf_rqs_run(&S->cf, th + p0, 1, qs, n, xb, yb, lb, dir);
            for (int i = 0; i < n; i++) {
                if (pass && pass[p0 + i]) continue;
                v[p0 + i] = (nf_real)yb[i];
                ld += dir ? -lb[i] : lb[i]; /* nf_rqs_run's dir 1 gives -log g' */
            }
        }
        return dir ? -ld : ld;
    }
    for (int p = 0; p < S->P; p++) {
        if (pass && pass[p]) continue;
        double x = u[p], t = th[p], l = 0, y;
        if (S->transform == CC_ADDITIVE) {
            y = dir ? x - t : x + t;
        } else { /* affine, exp scale */
            l = exp_scale(th[qs + p]);
            y = dir ? (x - t) * exp(-l) : x * exp(l) + t;
        }
        v[p] = (nf_real)y;
        ld += l;
    }
    return dir ? -ld : ld;
}

/* in -> out over B rows: the row copied (passing parts and tail), then the
 * transformed elements overwritten; logdet += */
static void cc_apply(const nf_layer *L, int B, const nf_real *theta, const nf_real *in,
                     nf_real *out, nf_real *logdet, int dir) {
    const conv_coupling *S = L->impl;
    size_t P = (size_t)S->P, qs = (size_t)S->nt * B * P; /* parameter q's planes */
    memcpy(out, in, (size_t)B * L->D * sizeof *out);
    for (int b = 0; b < B; b++) {
        double ld = 0;
        for (int j = 0; j < S->nt; j++) {
            size_t e = (size_t)b * L->D + (size_t)(S->tc0 + j) * P;
            ld += cc_row(S, in + e, theta + ((size_t)j * B + b) * P, qs, out + e, dir);
        }
        logdet[b] += (nf_real)ld;
    }
}

/* in -> out chunk by chunk (dir 0: density, 1: sampling) */
static void cc_pass(const nf_layer *L, nf_ctx *c, const nf_real *in, nf_real *out,
                    nf_real *logdet, int dir) {
    const conv_coupling *S = L->impl;
    const size_t D = (size_t)L->D;
    int m = cc_chunk_rows(S, c->B);
    for (int b0 = 0; b0 < c->B; b0 += m) {
        int n = c->B - b0 < m ? c->B - b0 : m;
        cc_bufs b = cc_chunk(S, c, m, b0, n);
        cc_condition(L, c->params, &b, n, in + b0 * D, S->cc ? c->ctx + (size_t)b0 * S->cc : NULL);
        cc_apply(L, n, b.th, in + b0 * D, out + b0 * D, logdet + b0, dir);
    }
}

static int cc_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                      nf_real *logdet) {
    cc_pass(L, c, x, z, logdet, 0);
    return 0;
}

static int cc_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                      nf_real *logdet) {
    cc_pass(L, c, z, x, logdet, 1);
    return 0;
}

/* dtheta (parameters q at dth + q*qs) and dx of one transformed channel of
 * one row; passing pixels get dtheta 0 and keep their dx. */
static void cc_row_backward(const conv_coupling *S, const nf_real *x, const nf_real *th,
                            size_t qs, const nf_real *dz, double dl, nf_real *dth, nf_real *dx) {
    if (S->transform == CC_AFFINE && S->scale == CC_SIGMOID) {
        double sb[CC_BLK], db[CC_BLK];
        for (int p0 = 0; p0 < S->P; p0 += CC_BLK) {
            int n = S->P - p0 < CC_BLK ? S->P - p0 : CC_BLK;
            nf_sigmoid_parts(th + qs + p0, 2, n, sb, db);
            for (int i = 0; i < n; i++) {
                int p = p0 + i;
                if (S->pass && S->pass[p]) {
                    dth[p] = dth[qs + p] = 0;
                    continue;
                }
                double g = dz[p], t = th[p], s = sb[i];
                dth[p] = (nf_real)(g * s);
                dth[qs + p] = (nf_real)((g * ((double)x[p] + t) * s + dl) * (1 - s));
                if (dx) dx[p] = (nf_real)(g * s);
            }
        }
        return;
    }
    if (S->transform == CC_SPLINE) {
        double xb[CC_BLK], gzb[CC_BLK], glb[CC_BLK], gxb[CC_BLK];
        for (int p0 = 0; p0 < S->P; p0 += CC_BLK) {
            int n = S->P - p0 < CC_BLK ? S->P - p0 : CC_BLK;
            for (int i = 0; i < n; i++) xb[i] = x[p0 + i], gzb[i] = dz[p0 + i], glb[i] = dl;
            nf_rqs_run_backward(&S->cf, th + p0, 1, qs, n, xb, gzb, glb, dth + p0, gxb);
            for (int i = 0; i < n; i++) {
                int p = p0 + i;
                if (S->pass && S->pass[p])
                    for (int q = 0; q < S->Q; q++) dth[q * qs + p] = 0;
                else if (dx)
                    dx[p] = (nf_real)gxb[i];
            }
        }
        return;
    }
    for (int p = 0; p < S->P; p++) {
        if (S->pass && S->pass[p]) {
            for (int q = 0; q < S->Q; q++) dth[q * qs + p] = 0;
            continue;
        }
        double g = dz[p], gx;
        if (S->transform == CC_ADDITIVE) {
            dth[p] = (nf_real)g;
            gx = g;
        } else { /* affine, exp scale */
            double s = exp_scale(th[qs + p]), e = exp(s), r = s / NF_SCALE_BOUND;
            dth[p] = (nf_real)g;
            dth[qs + p] = (nf_real)((g * x[p] * e + dl) * (1 - r * r));
            gx = g * e;
        }
        if (dx) dx[p] = (nf_real)gx;
    }
}

static void cc_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    (void)z;
    const conv_coupling *S = L->impl;
    const int D = L->D, m = cc_chunk_rows(S, c->B);
    const size_t P = (size_t)S->P;
    if (dx) memcpy(dx, dz, (size_t)c->B * D * sizeof *dx);
    for (int b0 = 0; b0 < c->B; b0 += m) {
        int n = c->B - b0 < m ? c->B - b0 : m;
        size_t qs = (size_t)S->nt * n * P;
        cc_bufs b = cc_chunk(S, c, m, b0, n);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < S->nt; j++) {
                size_t e = (size_t)(b0 + r) * D + (size_t)(S->tc0 + j) * P,
                       o = ((size_t)j * n + r) * P;
                cc_row_backward(S, x + e, b.th + o, qs, dz + e, dlogdet[b0 + r], b.dth + o,
                                dx ? dx + e : NULL);
            }
        int want_dctx = S->cc && c->dctx;
        nf_cnet_backward_ex(&S->net, c->params, c->grad, b.in, b.dth, dx || want_dctx ? b.din : NULL,
                            n, b.act, b.scr);
        for (int k = 0; want_dctx && k < S->cc; k++) /* dL/dc_k: plane k's gradient summed */
            for (int r = 0; r < n; r++) {
                const nf_real *g = b.din + ((size_t)(S->cin + k) * n + r) * P;
                double acc = 0;
                for (size_t p = 0; p < P; p++) acc += g[p];
                c->dctx[(size_t)(b0 + r) * S->cc + k] += (nf_real)acc;
            }
        if (!dx) continue;
        /* passing elements: + the network's input gradient (checkerboards:
         * the transformed pixels' entries multiply the zeroing mask) */
        for (int ch = 0; ch < S->cin; ch++)
            for (int r = 0; r < n; r++) {
                nf_real *d = dx + (size_t)(b0 + r) * D + (size_t)(S->pc0 + ch) * P;
                const nf_real *g = b.din + ((size_t)ch * n + r) * P;
                for (size_t p = 0; p < P; p++)
                    if (!S->pass || S->pass[p]) d[p] += g[p];
            }
    }
}

/* ---- spec ------------------------------------------------------------------------ */

static void cc_to_json(const nf_layer *L, cJSON *obj) {
    const conv_coupling *S = L->impl;
    cJSON_AddStringToObject(obj, "transform", transform_names[S->transform]);
    cJSON_AddStringToObject(obj, "mask", mask_names[S->mask]);
    if (S->transform == CC_AFFINE) cJSON_AddStringToObject(obj, "scale", scale_names[S->scale]);
    if (S->transform == CC_SPLINE) nf_rqs_to_json(&S->cf, obj);
    nf_cnet_to_json(&S->net, obj);
}

static void cc_destroy(nf_layer *L) {
    conv_coupling *S = L->impl;
    if (!S) return;
    nf_free(S->pass);
    nf_free(S);
    L->impl = NULL;
}

static double cc_macs(const nf_layer *L, int executed) {
    (void)executed; /* no masked weights */
    return nf_cnet_macs(&((const conv_coupling *)L->impl)->net);
}

static const nf_layer_ops cc_ops = {
    .type = "conv_coupling",
    .ws_size = cc_ws_size,
    .ws_size_infer = cc_ws_size_infer,
    .init = cc_init,
    .inverse = cc_inverse,
    .forward = cc_forward,
    .backward = cc_backward,
    .to_json = cc_to_json,
    .destroy = cc_destroy,
    .macs = cc_macs,
};

/* The fields of one transform given to another: refused, not ignored, so a
 * spec never says something the layer does not do. */
static int cc_check_fields(const conv_coupling *S, const cJSON *spec, char *err, size_t errlen) {
    static const char *const spline_keys[] = {NF_RQS_KEYS, NULL};
    if (S->transform != CC_AFFINE && nf_json_get(spec, "scale")) {
        nf_set_err(err, errlen, "\"scale\" applies to \"transform\": \"affine\" only");
        return NF_EINVAL;
    }
    for (int i = 0; S->transform != CC_SPLINE && spline_keys[i]; i++)
        if (nf_json_get(spec, spline_keys[i])) {
            nf_set_err(err, errlen, "\"%s\" applies to \"transform\": \"spline\" only",
                       spline_keys[i]);
            return NF_EINVAL;
        }
    return 0;
}

/* Passing and transformed channels, and the checkerboard's pixels. */
static int cc_set_mask(conv_coupling *S, const int shape[3], char *err, size_t errlen) {
    int C = shape[0], H = shape[1], W = shape[2];
    if (S->mask == CC_CHANNEL || S->mask == CC_CHANNEL_ODD) {
        if (C < 2) {
            nf_set_err(err, errlen,
                       "mask \"%s\" needs at least 2 channels, the image here is %dx%dx%d: "
                       "use \"checkerboard\" or a squeeze first",
                       mask_names[S->mask], C, H, W);
            return NF_EINVAL;
        }
        int lo = C / 2, odd = S->mask == CC_CHANNEL_ODD;
        S->pc0 = odd ? lo : 0;
        S->cin = odd ? C - lo : lo;
        S->tc0 = odd ? 0 : lo;
        S->nt = odd ? lo : C - lo;
        return 0;
    }
    if (S->P < 2) {
        nf_set_err(err, errlen,
                   "mask \"%s\" needs at least 2 pixels, the image here is %dx%dx%d: "
                   "use \"channel\"",
                   mask_names[S->mask], C, H, W);
        return NF_EINVAL;
    }
    S->pass = nf_malloc((size_t)S->P);
    if (!S->pass) return NF_ENOMEM;
    int parity = S->mask == CC_CHECKER_ODD;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) S->pass[i * W + j] = (i + j) % 2 == parity;
    S->pc0 = S->tc0 = 0;
    S->cin = S->nt = C;
    return 0;
}

int nf_conv_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "transform", "mask", "scale", NF_RQS_KEYS,
                                       NF_CNET_KEYS, NULL};
    int rc, tr, mk, sc;
    if ((rc = nf_layer_need_shape(L, err, errlen))) return rc;
    if ((rc = nf_json_check_keys(spec, keys, err, errlen))) return rc;
    if ((rc = nf_json_enum(spec, "transform", transform_names, CC_AFFINE, &tr, err, errlen)) ||
        (rc = nf_json_enum(spec, "mask", mask_names, CC_CHANNEL, &mk, err, errlen)) ||
        (rc = nf_json_enum(spec, "scale", scale_names, CC_SIGMOID, &sc, err, errlen)))
        return rc;
    conv_coupling *S = nf_calloc(1, sizeof *S);
    if (!S) return NF_ENOMEM;
    L->impl = S; /* freed by cc_destroy on every error from here */
    L->ops = &cc_ops;
    S->transform = (cc_transform)tr;
    S->mask = (cc_mask)mk;
    S->scale = (cc_scale)sc;
    S->C = L->shape[0];
    S->P = L->shape[1] * L->shape[2];
    if ((rc = cc_check_fields(S, spec, err, errlen))) return rc;
    if (S->transform == CC_SPLINE && (rc = nf_rqs_parse(&S->cf, spec, err, errlen))) return rc;
    S->Q = S->transform == CC_AFFINE ? 2 : S->transform == CC_ADDITIVE ? 1 : nf_rqs_P(&S->cf);
    if ((rc = cc_set_mask(S, L->shape, err, errlen))) return rc;
    S->cc = L->C;
    rc = nf_cnet_from_spec(&S->net, spec, S->cin + S->cc, S->Q * S->nt, L->shape[1], L->shape[2], 64,
                           err, errlen);
    if (rc) return rc;
    L->nparams = S->net.nparams;
    L->nbuffers = 0;
    return 0;
}
