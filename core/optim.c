/* optim.c: Adam / AdamW, global gradient-norm clipping, and the optimizer
 * state blob (see nf.h for the layout).
 *
 * One step, t counted from 1, bias corrections computed in double:
 *   Adam:  g' = g + wd p                (L2 penalty folded into the gradient)
 *   AdamW: p -= lr wd p, g' = g         (decoupled decay, before the update)
 *   m = b1 m + (1 - b1) g',  v = b2 v + (1 - b2) g'^2
 *   p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * The moments are stored as nf_real; each element's update is done in double.
 */
#include "alloc.h"
#include "blob.h"
#include "nf.h"
#include "nf_internal.h"
#include "kern.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int nf_adam_init(nf_adam *o, nf_opt_kind kind, size_t n, double weight_decay) {
    if (!o) return NF_EINVAL;
    memset(o, 0, sizeof *o);
    if ((int)kind < 0 || kind >= NF_OPT_COUNT || !(weight_decay >= 0) || !isfinite(weight_decay))
        return NF_EINVAL;
    o->m = nf_calloc(n ? n : 1, sizeof *o->m);
    o->v = nf_calloc(n ? n : 1, sizeof *o->v);
    if (!o->m || !o->v) {
        nf_adam_free(o);
        return NF_ENOMEM;
    }
    o->kind = kind;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->weight_decay = weight_decay;
    o->n = n;
    o->t = 0;
    return 0;
}

void nf_adam_free(nf_adam *o) {
    if (!o) return;
    nf_free(o->m);
    nf_free(o->v);
    o->m = o->v = NULL;
    o->n = 0;
}

#ifdef NF_DOUBLE
#define NF_SQRT sqrt
#else
#define NF_SQRT sqrtf
#endif

/* The update in nf_real arithmetic, one branch-free loop per optimizer kind
 * so the compiler vectorises it (it touches every parameter once; in double
 * with a branch inside it took a quarter of a W2 training step).  The bias
 * corrections are folded into two scalars computed in double:
 *   p -= (lr / bc1) * m / (sqrt(v / bc2) + eps). */
typedef struct adam_consts {
    nf_real b1, b2, c1, c2, step, ibc2, eps, wd, decay;
    int adamw;
} adam_consts;

static adam_consts adam_begin(nf_adam *o, double lr) {
    o->t++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->t), bc2 = 1.0 - pow(o->beta2, (double)o->t);
    adam_consts k = {
        .b1 = (nf_real)o->beta1, .b2 = (nf_real)o->beta2,
        .c1 = (nf_real)(1 - o->beta1), .c2 = (nf_real)(1 - o->beta2),
        .step = (nf_real)(lr / bc1), .ibc2 = (nf_real)(1.0 / bc2), .eps = (nf_real)o->eps,
        .wd = (nf_real)o->weight_decay, .decay = (nf_real)(1.0 - lr * o->weight_decay),
        .adamw = o->kind == NF_OPT_ADAMW,
    };
    return k;
}

/* elements [i0, i1).  fused (nf_adam_step_scaled_ws): the gradient is
 * first scaled by s, rounded to nf_real as the clip's scale_range does
 * (s = 1 leaves it), and zeroed behind, so clip + step + the next zeroing
 * are one pass; g is written only then. */
NF_VEC static void adam_range(const adam_consts *k, nf_real *restrict m, nf_real *restrict v,
                              nf_real *restrict p, nf_real *restrict g, size_t i0, size_t i1,
                              double s, int fused) {
    const nf_real b1 = k->b1, b2 = k->b2, c1 = k->c1, c2 = k->c2, step = k->step;
    const nf_real ibc2 = k->ibc2, eps = k->eps, wd = k->wd, decay = k->decay;
    const int scale = fused && s != 1.0;
    if (k->adamw) {
        for (size_t i = i0; i < i1; i++) {
            nf_real gi = scale ? (nf_real)(g[i] * s) : g[i], pi = p[i] * decay; /* decoupled decay first */
            if (fused) g[i] = 0;
            nf_real mi = b1 * m[i] + c1 * gi, vi = b2 * v[i] + c2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step * mi / (NF_SQRT(vi * ibc2) + eps);
        }
    } else {
        for (size_t i = i0; i < i1; i++) {
            nf_real gi = (scale ? (nf_real)(g[i] * s) : g[i]) + wd * p[i]; /* L2 in the gradient */
            if (fused) g[i] = 0;
            nf_real mi = b1 * m[i] + c1 * gi, vi = b2 * v[i] + c2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] - step * mi / (NF_SQRT(vi * ibc2) + eps);
        }
    }
}

void nf_adam_step(nf_adam *o, nf_real *params, const nf_real *grad, double lr) {
    adam_consts k = adam_begin(o, lr);
    adam_range(&k, o->m, o->v, params, (nf_real *)grad, 0, o->n, 1.0, 0); /* not written */
}

typedef struct adam_job {
    const adam_consts *k;
    nf_adam *o;
    nf_real *p, *g;
    double s;
    int fused;
} adam_job;

static void adam_part(void *arg, size_t i0, size_t i1, int t) {
    (void)t;
    adam_job *a = arg;
    adam_range(a->k, a->o->m, a->o->v, a->p, a->g, i0, i1, a->s, a->fused);
}

void nf_adam_step_ws(nf_adam *o, nf_ws *w, nf_real *params, const nf_real *grad, double lr) {
    adam_consts k = adam_begin(o, lr);
    adam_job a = {&k, o, params, (nf_real *)grad, 1.0, 0}; /* not written */
    nf_ws_parallel_for(w, o->n, adam_part, &a);
}

double nf_grad_norm_ws(nf_ws *w, nf_real *grad, size_t n) {
    double ss;
    if (nf_ws_grad_sumsq(w, grad, n, &ss)) return isfinite(ss) ? sqrt(ss) : NAN;
    return nf_clip_grad_norm_ws(w, grad, n, 0);
}

void nf_adam_step_scaled_ws(nf_adam *o, nf_ws *w, nf_real *params, nf_real *grad, double lr,
                            double gscale) {
    adam_consts k = adam_begin(o, lr);
    adam_job a = {&k, o, params, grad, gscale, 1};
    nf_ws_parallel_for(w, o->n, adam_part, &a);
    nf_ws_grad_changed(w);
}

/* sum of squares of [i0, i1): four partial sums (packed into one vector by
 * the compiler), added in a fixed order */
NF_VEC static double sumsq_range(const nf_real *grad, size_t i0, size_t i1) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = i0;
    for (; i + 4 <= i1; i += 4) {
        s0 += (double)grad[i] * grad[i];
        s1 += (double)grad[i + 1] * grad[i + 1];
        s2 += (double)grad[i + 2] * grad[i + 2];
        s3 += (double)grad[i + 3] * grad[i + 3];
    }
    for (; i < i1; i++) s0 += (double)grad[i] * grad[i];
    return (s0 + s1) + (s2 + s3);
}

NF_VEC static void scale_range(nf_real *grad, size_t i0, size_t i1, double s) {
    for (size_t i = i0; i < i1; i++) grad[i] = (nf_real)(grad[i] * s);
}

double nf_clip_grad_norm(nf_real *grad, size_t n, double max_norm) {
    return nf_clip_grad_norm_ws(NULL, grad, n, max_norm);
}

typedef struct clip_job {
    nf_real *g;
    double scale;
    double part[NF_PAR_MAX];
} clip_job;

static void clip_sum_part(void *arg, size_t i0, size_t i1, int t) {
    clip_job *c = arg;
    c->part[t] = sumsq_range(c->g, i0, i1);
}

static void clip_scale_part(void *arg, size_t i0, size_t i1, int t) {
    (void)t;
    clip_job *c = arg;
    scale_range(c->g, i0, i1, c->scale);
}

/* With a threaded workspace the sum is taken in one part per thread and the
 * parts added in order: the same norm for the same gradient and thread
 * count (the last bits may differ between thread counts). */
double nf_clip_grad_norm_ws(nf_ws *w, nf_real *grad, size_t n, double max_norm) {
    clip_job c;
    memset(&c, 0, sizeof c);
    c.g = grad;
    int np = nf_ws_parallel_for(w, n, clip_sum_part, &c);
    double ss = 0;
    for (int t = 0; t < np; t++) ss += c.part[t];
    double norm = sqrt(ss);
    if (!isfinite(norm)) return NAN;
    if (max_norm > 0 && norm > max_norm) {
        c.scale = max_norm / norm;
        nf_ws_parallel_for(w, n, clip_scale_part, &c);
        nf_ws_grad_changed(w);
    }
    return norm;
}

/* ---- state blob ----------------------------------------------------------
 * "NFOP" u32 version=1 u32 kind f64 b1 b2 eps wd u64 n i64 t f32 m[n] f32 v[n]
 * u32 crc32 (of every byte before it), all little-endian. */
#define ADAM_MAGIC "NFOP"
#define ADAM_VERSION 1u
#define ADAM_HEADER (4 + 4 + 4 + 4 * 8 + 8 + 8)
/* a step count past 2^53 is not a real run (and t + 1 must not overflow) */
#define NF_ADAM_MAX_STEPS ((int64_t)1 << 53)

size_t nf_adam_blob_size(const nf_adam *o) {
    return o->n > (SIZE_MAX - ADAM_HEADER - 4) / 8 ? SIZE_MAX : ADAM_HEADER + 8 * o->n + 4;
}

void nf_adam_put(const nf_adam *o, nf_blob_writer *w) {
    size_t start = w->n;
    nf_blob_put(w, ADAM_MAGIC, 4);
    nf_blob_put_u32(w, ADAM_VERSION);
    nf_blob_put_u32(w, (uint32_t)o->kind);
    nf_blob_put_f64(w, o->beta1);
    nf_blob_put_f64(w, o->beta2);
    nf_blob_put_f64(w, o->eps);
    nf_blob_put_f64(w, o->weight_decay);
    nf_blob_put_u64(w, (uint64_t)o->n);
    nf_blob_put_u64(w, (uint64_t)o->t);
    nf_blob_put_f32s(w, o->m, o->n);
    nf_blob_put_f32s(w, o->v, o->n);
    nf_blob_put_crc_since(w, start);
}

int nf_adam_save(const nf_adam *o, void **buf, size_t *len) {
    if (!o || !buf || !len) return NF_EINVAL;
    *buf = NULL;
    *len = 0;
    size_t size = nf_adam_blob_size(o);
    if (size == SIZE_MAX) return NF_ENOMEM;
    nf_blob_writer w = nf_blob_writer_init(size);
    nf_adam_put(o, &w);
    if (w.bad) {
        nf_blob_writer_free(&w);
        return NF_ENOMEM;
    }
    *buf = w.p;
    *len = w.n;
    return 0;
}

/* Checks the CRC first (so any damaged or truncated blob is NF_ECORRUPT),
 * then magic, version and fields (NF_EFORMAT), then the length implied by n
 * (NF_ECORRUPT).  o must be zeroed or set up by nf_adam_init; on success its
 * state (kind, betas, eps, wd, n, t, moments) is replaced, reusing the
 * moment arrays when n matches; on failure o is unchanged. */
int nf_adam_load(nf_adam *o, const void *buf, size_t len) {
    const unsigned char *b = buf;
    if (!o || !buf) return NF_EINVAL;
    if (len < ADAM_HEADER + 4) return len >= 4 && memcmp(b, ADAM_MAGIC, 4) ? NF_EFORMAT : NF_ECORRUPT;
    if (!nf_blob_crc_ok(b, len)) return NF_ECORRUPT;
    nf_blob_reader r = nf_blob_reader_init(b, len - 4);
    if (memcmp(nf_blob_bytes(&r, 4), ADAM_MAGIC, 4) || nf_blob_u32(&r) != ADAM_VERSION) return NF_EFORMAT;
    uint32_t kind = nf_blob_u32(&r);
    double b1 = nf_blob_f64(&r), b2 = nf_blob_f64(&r), eps = nf_blob_f64(&r), wd = nf_blob_f64(&r);
    uint64_t n = nf_blob_u64(&r);
    int64_t t = (int64_t)nf_blob_u64(&r);
    if (kind >= NF_OPT_COUNT || !(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1) || !(eps >= 0) ||
        !isfinite(eps) || !(wd >= 0) || !isfinite(wd) || t < 0 || t > NF_ADAM_MAX_STEPS)
        return NF_EFORMAT;
    if (n > (SIZE_MAX - ADAM_HEADER - 4) / 8 || len != ADAM_HEADER + 8 * (size_t)n + 4)
        return NF_ECORRUPT;
    nf_real *m = o->m, *v = o->v;
    if (!(m && v && o->n == n)) {
        m = nf_malloc(n ? (size_t)n * sizeof *m : 1);
        v = nf_malloc(n ? (size_t)n * sizeof *v : 1);
        if (!m || !v) {
            nf_free(m);
            nf_free(v);
            return NF_ENOMEM;
        }
        nf_free(o->m);
        nf_free(o->v);
    }
    nf_blob_f32s(&r, m, (size_t)n);
    nf_blob_f32s(&r, v, (size_t)n);
    o->m = m;
    o->v = v;
    o->kind = (nf_opt_kind)kind;
    o->beta1 = b1;
    o->beta2 = b2;
    o->eps = eps;
    o->weight_decay = wd;
    o->n = (size_t)n;
    o->t = t;
    return 0;
}
