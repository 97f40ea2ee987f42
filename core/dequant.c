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
};

static void deq_ws_free(void *p) {
    nf_deq_ws *d = p;
    if (!d) return;
    nf_ws_free(d->wq);
    nf_free(d->y);
    nf_free(d->lq);
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
    int rc = !d->y || (q && !d->lq) ? NF_ENOMEM : q ? nf_ws_create_inference(q, rows, &d->wq) : 0;
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
        const nf_real *xs = x + (size_t)s * D;
        for (size_t i = 0; i < (size_t)m * D; i++) d->eps[i] = (nf_real)nf_rng_normal(rng);
        vdeq_context(xs, (size_t)m * D, levels, d->c);
        rc = nf_flow_encode(q, d->wq, d->eps, d->c, m, d->y, d->ld);
        if (rc && rc != NF_ENONFINITE) break;
        vdeq_finish(xs, d->eps, d->ld, m, D, d->y, d->y, d->lq);
        rc = nf_flow_log_prob(f, wf, d->y, ctx ? ctx + (size_t)s * C : NULL, m, out + s);
        for (int r = 0; r < m; r++) {
            double b = (double)out[s + r] - d->lq[r];
            out[s + r] = isnan(b) || d->ld[r] == -INFINITY ? (nf_real)-INFINITY : (nf_real)b;
        }
    }
    return rc;
}

double nf_eval_nll_vdeq(const nf_flow *f, const nf_flow *q, const nf_real *x, int64_t n,
                        int levels, uint64_t seed) {
    if (n <= 0) return NAN;
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
        failed = nf_vdeq_log_prob(f, w, q, x + s * D, NULL, m, levels, &r, lp) != 0;
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

int nf_model_log_prob(const nf_model *m, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                      nf_real *out) {
    if (!m->dequantize) return nf_flow_log_prob(m->flow, w, x, ctx, B, out);
    nf_rng r;
    nf_rng_seed(&r, 0x5eed);
    if (m->dequantizer)
        return nf_vdeq_log_prob(m->flow, w, m->dequantizer, x, ctx, B, m->levels, &r, out);
    int rc;
    nf_deq_ws *d = nf_deq_attach(m->flow, w, NULL, &rc);
    if (!d) return rc;
    int D = nf_flow_dim(m->flow), C = nf_flow_context_dim(m->flow);
    for (int s = 0; s < B && !rc; s += d->rows) {
        int n = B - s < d->rows ? B - s : d->rows;
        nf_deq_uniform(x + (size_t)s * D, (size_t)n * D, &r, d->y);
        rc = nf_flow_log_prob(m->flow, w, d->y, ctx ? ctx + (size_t)s * C : NULL, n, out + s);
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
    int D = nf_flow_dim(f);
    if (nf_flow_dim(q) != D || nf_flow_context_dim(q) != D || nf_flow_context_dim(f) != 0 ||
        levels < 1 || B < 1)
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
    if (training) nf_flow_data_init(f, wf, y, NULL, B); /* no-op once act-norms are initialised */
    nf_real *logdet = ld; /* q's log-det is in l now */
    rc = nf_flow_log_prob_grad_ex(f, wf, y, NULL, B, training, w, jacobian_l2 / B, logp, logdet,
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
