/* dequant.c: dequantization of integer-valued rows, shared by the trainer
 * (train.c) and the model's scorer (model.c).
 *
 * Uniform: y = x + u, u ~ U[0,1)^D drawn element by element in row order.
 * Variational (train.h): u = sigmoid(v), v = q^-1(eps | c), eps ~ N(0,I),
 * c = x/levels - 1/2, and the bound log p(x+u) - log q(u|x).  Scoring runs
 * q through its forward-only entry point (nf_flow_encode: the density pass
 * as a plain map with its log-det) on a forward-only workspace; the
 * trainer's nf_vdeq_grad runs the same pass with gradients.
 *
 * Scoring allocates nothing per call: the rows, q's workspace and the
 * bound's scratch live in a nf_deq_ws attached to the caller's workspace of
 * the model (nf_deq_attach: once, when the workspace is created for the
 * model or on its first dequantized call) and freed with it. */
#include "alloc.h"
#include "model.h"
#include "train.h"

#include "nf_internal.h"

#include <math.h>
#include <string.h>

void nf_deq_uniform(const nf_real *x, size_t n, nf_rng *r, nf_real *y) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] + (nf_real)nf_rng_uniform(r);
}

/* log(s(1-s)) for s = sigmoid(v): -softplus(-v) - softplus(v) */
static double log_dsigmoid(double v) {
    double a = fabs(v);
    return -a - 2 * log1p(exp(-a));
}

static double sigmoid(double v) {
    return v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v));
}

/* q's context c (BD) = x/levels - 1/2 */
static void vdeq_context(const nf_real *x, size_t BD, int levels, nf_real *c) {
    for (size_t i = 0; i < BD; i++) c[i] = (nf_real)((double)x[i] / levels - 0.5);
}

/* after q's pass (v, ld): y (B,D) = x + sigmoid(v) (y may alias v), and per row
 * lq (B) = log q(u|x) = log N(eps) - ld - sum_d log s(1-s) */
static void vdeq_finish(const nf_real *x, const nf_real *eps, const nf_real *ld, int B, int D,
                        const nf_real *v, nf_real *y, double *lq) {
    for (int r = 0; r < B; r++) {
        double acc = -0.5 * D * log(2 * 3.141592653589793) - (double)ld[r];
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)r * D + d;
            double e = eps[i], vv = v[i];
            acc += -0.5 * e * e - log_dsigmoid(vv);
            y[i] = (nf_real)((double)x[i] + sigmoid(vv));
        }
        lq[r] = isnan(acc) ? INFINITY : acc;
    }
}

/* ---- per-workspace state of the scorer ------------------------------------ */
struct nf_deq_ws {
    const nf_flow *q; /* the dequantizer it was made for, NULL: uniform */
    int rows, D;
    nf_ws *wq;        /* q's forward-only workspace (rows) */
    nf_real *y;       /* (rows,D) dequantized rows, or q's output v */
    nf_real *eps, *c; /* (rows,D) q's input and context */
    nf_real *ld;      /* (rows) q's log-det */
    double *lq;       /* (rows) log q(u|x) */
    double *mx, *sm;  /* (rows) the importance-weighted estimate's running max and sum */
};

static void deq_ws_free(void *p) {
    nf_deq_ws *d = p;
    if (!d) return;
    nf_ws_free(d->wq);
    nf_free(d->y);
    nf_free(d->lq);
    nf_free(d->mx);
    nf_free(d);
}

static int deq_ws_create(const nf_flow *f, const nf_flow *q, int rows, nf_deq_ws **out) {
    int D = nf_flow_dim(f);
    size_t BD = (size_t)rows * D;
    nf_deq_ws *d = nf_calloc(1, sizeof *d);
    if (!d) return NF_ENOMEM;
    d->q = q;
    d->rows = rows;
    d->D = D;
    /* y (BD); with q also eps, c (BD) and ld (rows) */
    d->y = nf_malloc((q ? 3 * BD + rows : BD) * sizeof *d->y + 1);
    d->lq = q ? nf_malloc((size_t)rows * sizeof *d->lq) : NULL;
    d->mx = nf_malloc(2 * (size_t)rows * sizeof *d->mx);
    d->sm = d->mx ? d->mx + rows : NULL;
    int rc = !d->y || !d->mx || (q && !d->lq) ? NF_ENOMEM : q ? nf_ws_create_inference(q, rows, &d->wq) : 0;
    if (rc) {
        deq_ws_free(d);
        return rc;
    }
    d->eps = d->y + BD;
    d->c = d->eps + BD;
    d->ld = d->c + BD;
    *out = d;
    return 0;
}

nf_deq_ws *nf_deq_attach(const nf_flow *f, nf_ws *w, const nf_flow *q, int *rc) {
    nf_deq_ws *d = nf_ws_aux(w);
    *rc = 0;
    if (d && d->q == q && d->D == nf_flow_dim(f)) return d;
    nf_ws_set_aux(w, NULL, NULL); /* made for another dequantizer: replace */
    d = NULL;
    *rc = deq_ws_create(f, q, nf_ws_max_batch(w), &d);
    if (!*rc) nf_ws_set_aux(w, d, deq_ws_free);
    return d;
}

/* ---- variational bound ------------------------------------------------------ */
/* The bound of m rows xs (m,D) with q's input already in d->eps:
 * out (m) = log p(xs + u | cs) - log q(u | xs), -inf outside the support. */
static int vdeq_chunk(const nf_flow *f, nf_ws *wf, const nf_flow *q, nf_deq_ws *d,
                      const nf_real *xs, const nf_real *cs, int m, int levels, nf_real *out) {
    int D = nf_flow_dim(f);
    vdeq_context(xs, (size_t)m * D, levels, d->c);
    int rc = nf_flow_encode(q, d->wq, d->eps, d->c, m, d->y, d->ld);
    if (rc && rc != NF_ENONFINITE) return rc;
    vdeq_finish(xs, d->eps, d->ld, m, D, d->y, d->y, d->lq);
    rc = nf_flow_log_prob(f, wf, d->y, cs, m, out);
    for (int r = 0; r < m; r++) {
        double b = (double)out[r] - d->lq[r];
        out[r] = isnan(b) || d->ld[r] == -INFINITY ? (nf_real)-INFINITY : (nf_real)b;
    }
    return rc;
}

int nf_vdeq_log_prob(const nf_flow *f, nf_ws *wf, const nf_flow *q, const nf_real *x,
                     const nf_real *ctx, int64_t n, int levels, nf_rng *rng, nf_real *out) {
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    if (nf_flow_dim(q) != D || nf_flow_context_dim(q) != D || levels < 1) return NF_EINVAL;
    if (n <= 0) return n < 0 ? NF_EINVAL : 0;
    int rc;
    nf_deq_ws *d = nf_deq_attach(f, wf, q, &rc);
    if (!d) return rc;
    int chunk = n < d->rows ? (int)n : d->rows;
    for (int64_t s = 0; s < n && !rc; s += chunk) {
        int m = n - s < chunk ? (int)(n - s) : chunk;
        for (size_t i = 0; i < (size_t)m * D; i++) d->eps[i] = (nf_real)nf_rng_normal(rng);
        rc = vdeq_chunk(f, wf, q, d, x + (size_t)s * D, ctx ? ctx + (size_t)s * C : NULL, m, levels,
                        out + s);
    }
    return rc;
}

double nf_eval_nll_vdeq(const nf_flow *f, const nf_flow *q, const nf_real *x, int64_t n,
                        int levels, uint64_t seed) {
    return nf_eval_nll_vdeq_ctx(f, q, x, NULL, n, levels, seed);
}

double nf_eval_nll_vdeq_ctx(const nf_flow *f, const nf_flow *q, const nf_real *x,
                            const nf_real *ctx, int64_t n, int levels, uint64_t seed) {
    if (n <= 0) return NAN;
    int C = nf_flow_context_dim(f);
    if (C > 0 && !ctx) return NAN;
    int chunk = n < 1024 ? (int)n : 1024;
    nf_ws *w = NULL;
    nf_real *lp = nf_malloc((size_t)chunk * sizeof *lp);
    if (!lp || nf_ws_create_inference(f, chunk, &w)) {
        nf_free(lp);
        return NAN;
    }
    nf_rng r;
    nf_rng_seed(&r, seed ^ 0xD1B54A32D192ED03ULL);
    double tot = 0;
    int D = nf_flow_dim(f), failed = 0;
    for (int64_t s = 0; s < n && !failed; s += chunk) {
        int m = n - s < chunk ? (int)(n - s) : chunk;
        failed = nf_vdeq_log_prob(f, w, q, x + s * D, ctx ? ctx + s * C : NULL, m, levels, &r,
                                  lp) != 0;
        for (int i = 0; i < m && !failed; i++) tot -= lp[i];
    }
    nf_free(lp);
    nf_ws_free(w);
    return failed ? NAN : isnan(tot) ? INFINITY : tot / n;
}

/* ---- the model's scorer ------------------------------------------------------ */
int nf_model_ws_create(const nf_model *m, int max_batch, nf_ws **out) {
    int rc = nf_ws_create_inference(m->flow, max_batch, out);
    if (rc || !m->dequantize) return rc;
    nf_deq_attach(m->flow, *out, m->dequantizer, &rc);
    if (rc) {
        nf_ws_free(*out);
        *out = NULL;
    }
    return rc;
}

/* A row's own noise (model.h): its generator is seeded from a hash of the
 * row's values (as float32, -0 as 0), its context row's, the model's key
 * and the draw k, so a row scores the same at any index, in any batch. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t hash_values(uint64_t h, const nf_real *v, int n) {
    for (int i = 0; i < n; i++) {
        float f = (float)v[i];
        uint32_t b;
        if (f == 0) f = 0; /* -0 and 0 are the same value */
        memcpy(&b, &f, sizeof b);
        h = (h ^ b) * 1099511628211ULL; /* FNV-1a, a word at a time */
    }
    return h;
}

uint64_t nf_model_row_seed(const nf_model *m, const nf_real *x, const nf_real *ctx, int k) {
    uint64_t h = 1469598103934665603ULL ^ mix64(m->noise_key);
    h = hash_values(h, x, nf_flow_dim(m->flow));
    if (ctx) h = hash_values(h ^ 0x43, ctx, nf_flow_context_dim(m->flow));
    return mix64(h + 0x9E3779B97F4A7C15ULL * (uint64_t)(k + 1));
}

/* the noise of draw k for n rows x (n,D): u into y = x + u (uniform), or
 * eps into d->eps (variational) */
static void row_noise(const nf_model *m, nf_deq_ws *d, const nf_real *x, const nf_real *ctx, int n,
                      int k) {
    int D = d->D, C = nf_flow_context_dim(m->flow);
    for (int r = 0; r < n; r++) {
        nf_rng g;
        const nf_real *xr = x + (size_t)r * D;
        nf_rng_seed(&g, nf_model_row_seed(m, xr, ctx ? ctx + (size_t)r * C : NULL, k));
        if (m->dequantizer)
            for (int i = 0; i < D; i++) d->eps[(size_t)r * D + i] = (nf_real)nf_rng_normal(&g);
        else
            nf_deq_uniform(xr, (size_t)D, &g, d->y + (size_t)r * D);
    }
}

int nf_model_log_prob(const nf_model *m, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                      nf_real *out) {
    return nf_model_log_prob_iw(m, w, x, ctx, B, 1, out);
}

int nf_model_log_prob_iw(const nf_model *m, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                         int K, nf_real *out) {
    if (K < 1 || K > NF_MODEL_MAX_IW_SAMPLES || B < 0) return NF_EINVAL;
    if (!m->dequantize) return nf_flow_log_prob(m->flow, w, x, ctx, B, out);
    int rc;
    nf_deq_ws *d = nf_deq_attach(m->flow, w, m->dequantizer, &rc);
    if (!d) return rc;
    int D = nf_flow_dim(m->flow), C = nf_flow_context_dim(m->flow);
    for (int s = 0; s < B && !rc; s += d->rows) {
        int n = B - s < d->rows ? B - s : d->rows;
        const nf_real *xs = x + (size_t)s * D, *cs = ctx ? ctx + (size_t)s * C : NULL;
        nf_real *o = out + s;
        for (int k = 0; k < K && !rc; k++) {
            /* log w_k = log p(x + u_k) - log q(u_k | x) (log q = 0 for uniform noise) */
            row_noise(m, d, xs, cs, n, k);
            rc = m->dequantizer ? vdeq_chunk(m->flow, w, m->dequantizer, d, xs, cs, n, m->levels, o)
                                : nf_flow_log_prob(m->flow, w, d->y, cs, n, o);
            if (K == 1) break; /* the bound itself */
            /* streaming log-sum-exp: mx the largest log w so far, sm = sum exp(log w - mx) */
            for (int r = 0; r < n; r++) {
                double v = o[r];
                if (k == 0) d->mx[r] = -INFINITY, d->sm[r] = 0;
                if (!(v > -INFINITY)) continue; /* outside the support: weight 0 */
                if (v > d->mx[r]) {
                    d->sm[r] = d->sm[r] * exp(d->mx[r] - v) + 1;
                    d->mx[r] = v;
                } else {
                    d->sm[r] += exp(v - d->mx[r]);
                }
            }
        }
        if (K > 1 && !rc)
            for (int r = 0; r < n; r++)
                o[r] = d->sm[r] > 0 ? (nf_real)(d->mx[r] + log(d->sm[r]) - log((double)K))
                                    : (nf_real)-INFINITY;
    }
    return rc;
}

/* ---- the trainer's joint objective ---------------------------------------------- */
size_t nf_vdeq_scratch_size(int B, int D) {
    return (size_t)B * sizeof(double) / sizeof(nf_real) + 4 * (size_t)B * D + 3 * (size_t)B;
}

/* q's pass gives v and ld, y = x + sigmoid(v) goes through the model, and
 * the model's dL/dy comes back to q as
 *     dL/dv = dL/dy s(1-s) - (1-2s)/B,  dL/dld = -1/B.
 * scratch (malloc'd, so aligned for double): lq (B doubles), then c, v, y,
 * dy (B,D) and ld, w, logp (B); the model's logdet reuses ld once q's
 * log-det is consumed. */
int nf_vdeq_grad(nf_flow *f, nf_ws *wf, nf_flow *q, nf_ws *wq, const nf_real *x,
                 const nf_real *eps, int B, int levels, int training, double jacobian_l2,
                 nf_real *scratch, double *loss) {
    return nf_vdeq_grad_ctx(f, wf, q, wq, x, NULL, eps, B, levels, training, jacobian_l2, scratch,
                            loss);
}

int nf_vdeq_grad_ctx(nf_flow *f, nf_ws *wf, nf_flow *q, nf_ws *wq, const nf_real *x,
                     const nf_real *ctx, const nf_real *eps, int B, int levels, int training,
                     double jacobian_l2, nf_real *scratch, double *loss) {
    int D = nf_flow_dim(f);
    if (nf_flow_dim(q) != D || nf_flow_context_dim(q) != D ||
        (nf_flow_context_dim(f) > 0) != (ctx != NULL) || levels < 1 || B < 1)
        return NF_EINVAL;
    size_t BD = (size_t)B * D;
    double *lq = (double *)(void *)scratch;
    nf_real *c = scratch + (size_t)B * sizeof(double) / sizeof(nf_real), *v = c + BD, *y = v + BD,
            *dy = y + BD, *ld = dy + BD, *w = ld + B, *logp = w + B;
    vdeq_context(x, BD, levels, c);
    int rc = nf_flow_transform_grad(q, wq, eps, c, B, training, NULL, NULL, v, ld, NULL, NULL);
    if (rc) return rc;
    vdeq_finish(x, eps, ld, B, D, v, y, lq);
    double l = 0;
    for (int b = 0; b < B; b++) {
        l += lq[b];
        w[b] = (nf_real)(-1.0 / B);
    }
    if (training) nf_flow_data_init(f, wf, y, ctx, B); /* no-op once act-norms are initialised */
    nf_real *logdet = ld; /* q's log-det is in l now */
    rc = nf_flow_log_prob_grad_ex(f, wf, y, ctx, B, training, w, jacobian_l2 / B, logp, logdet,
                                  dy, NULL);
    if (rc) return rc;
    for (int b = 0; b < B; b++)
        l += -(double)logp[b] + jacobian_l2 * (double)logdet[b] * logdet[b];
    *loss = l / B;
    /* dy holds dL/dy; turn it into dL/dv in place */
    for (size_t i = 0; i < BD; i++) {
        double sg = sigmoid(v[i]);
        dy[i] = (nf_real)((double)dy[i] * sg * (1 - sg) - (1 - 2 * sg) / B);
    }
    return nf_flow_transform_backward(q, wq, eps, c, B, training, dy, w, NULL, NULL);
}
