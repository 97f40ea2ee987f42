/* train.c: the training loop described in train.h.
 *
 * State that determines parameters (and so lives in the state blob): step,
 * epoch, position in the epoch, parameters, layer buffers, optimizer
 * moments, best parameters, early-stopping and plateau counters, the
 * act-norm-initialised flag (a layer buffer), and the non-finite counters;
 * with a variational dequantizer also its parameters, buffers, best
 * snapshot and Adam moments (state blob version 2; version 1 without).
 * Everything random is re-derived from (seed, epoch) or (seed, step): the
 * epoch permutation, the dequantization noise and the hflip augmentation
 * draws, so they need no state of their own.
 * Reporting accumulators (loss since the last report, timings) are not state:
 * they do not influence parameters. */
#include "alloc.h"
#include "blob.h"
#include "train.h"

#include "nf_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct nf_trainer {
    nf_flow *f;
    nf_train_config cfg;
    void (*pace_fn)(void *, double); /* the run's hooks' pace (set_pace) */
    void *pace_user;
    int64_t held_ns;            /* time threads spent in it this run, summed (atomic) */
    const nf_real *train, *val;
    const nf_real *tctx, *vctx; /* (ntrain,C), (nval,C) context rows, or NULL (C == 0) */
    int64_t ntrain, nval;
    int D, B, C;
    int shape[3];          /* the flow's image shape (hflip) */
    int64_t spe, total_steps; /* steps per epoch, total */
    nf_ws *ws;
    nf_ws *sws;            /* validation's sample check: forward-only, the run's threads,
                              made at the first validation and kept */
    nf_adam opt;
    nf_real *xb, *cb, *dlogp, *logp, *logdet, *keep_buffers;
    nf_real *best_params, *best_buffers;
    int64_t *perm;
    int perm_epoch;
    /* variational dequantizer q (NULL: uniform noise), see train.h */
    nf_flow *q;
    nf_ws *qws;
    nf_adam qopt;
    nf_real *eps, *vscratch, *qkeep_buffers, *qbest_params, *qbest_buffers;
    /* state */
    int64_t step, batch_in_epoch, skipped;
    int epoch, done, have_best, consecutive_bad, es_bad, plateau_bad;
    int grad_zero;     /* f->grad is zero: the last step's fused Adam left it so */
    double gscale;     /* the clip's factor for this step's gradient (1: none) */
    double best_val, plateau_best, lr_scale, val_loss, val_bpd, nonfinite_frac;
    /* reporting */
    double acc_loss, last_lr, last_gn;
    int64_t acc_n, rep_step;
    /* cnf layers: counters of the training passes since the last report */
    int ode;                  /* cnf layers of the flow */
    nf_ode_stats ode_acc;
    double ode_last[4];       /* the last report's nfe, nfe_forward, kinetic, jacobian */
    double rep_time, t_start, last_ckpt;
    /* data parallelism (train.h): this rank's rows [lo, lo + nb) of each
     * batch, and the stop votes of the last step's reduction */
    const nf_train_dist *dist;
    int lo, nb, vote_cancel, vote_time, dist_inited;
    char err[300];
};

static const char *const sched_names[NF_SCHED_COUNT] = {"constant", "cosine", "plateau"};
_Static_assert(sizeof sched_names / sizeof sched_names[0] == NF_SCHED_COUNT, "schedule names");

int nf_sched_parse(const char *s, nf_sched_kind *out) {
    for (int i = 0; s && i < NF_SCHED_COUNT; i++)
        if (!strcmp(s, sched_names[i])) {
            *out = (nf_sched_kind)i;
            return 0;
        }
    return NF_EINVAL;
}
const char *nf_sched_name(nf_sched_kind k) { return k < NF_SCHED_COUNT ? sched_names[k] : "?"; }

void nf_train_config_default(nf_train_config *c) {
    memset(c, 0, sizeof *c);
    c->epochs = 100;
    c->batch_size = 256;
    c->lr = 1e-3;
    c->optimizer = NF_OPT_ADAM;
    c->schedule = NF_SCHED_CONSTANT;
    c->plateau_factor = 0.5;
    c->plateau_patience = 5;
    c->es_min_delta = 1e-4;
    c->max_bad_batches = 10;
    c->log_every = 50;
    c->levels = 256;
    c->threads = 1;
}

double nf_bits_per_dim(double nll, int D) { return nll / (D * 0.6931471805599453); }

/* mean NLL of x on workspace w, in chunks of its size; the dequantization
 * noise is drawn row by row, so the chunk size does not change it */
static double eval_nll_on(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx,
                          int64_t n, int dequantize, uint64_t seed) {
    if (n <= 0) return NAN;
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    int chunk = n < nf_ws_max_batch(w) ? (int)n : nf_ws_max_batch(w);
    nf_real *buf = nf_malloc((size_t)chunk * D * sizeof *buf), *lp = nf_malloc((size_t)chunk * sizeof *lp);
    if (!buf || !lp) {
        nf_free(buf);
        nf_free(lp);
        return NAN;
    }
    nf_rng r;
    nf_rng_seed(&r, seed ^ 0xD1B54A32D192ED03ULL);
    double tot = 0;
    for (int64_t s = 0; s < n; s += chunk) {
        int m = n - s < chunk ? (int)(n - s) : chunk;
        if (dequantize) nf_deq_uniform(x + s * D, (size_t)m * D, &r, buf);
        else memcpy(buf, x + s * D, (size_t)m * D * sizeof *buf);
        nf_flow_log_prob(f, w, buf, ctx ? ctx + s * C : NULL, m, lp);
        for (int i = 0; i < m; i++) tot -= lp[i];
    }
    nf_free(buf);
    nf_free(lp);
    return isnan(tot) ? INFINITY : tot / n;
}

double nf_eval_nll(const nf_flow *f, const nf_real *x, int64_t n, int dequantize, uint64_t seed) {
    return nf_eval_nll_ctx(f, x, NULL, n, dequantize, seed);
}

double nf_eval_nll_ctx(const nf_flow *f, const nf_real *x, const nf_real *ctx, int64_t n,
                       int dequantize, uint64_t seed) {
    if (n <= 0) return NAN;
    if (nf_flow_context_dim(f) > 0 && !ctx) return NAN;
    nf_ws *w = NULL;
    if (nf_ws_create_inference(f, n < 1024 ? (int)n : 1024, &w)) return NAN;
    double v = eval_nll_on(f, w, x, ctx, n, dequantize, seed);
    nf_ws_free(w);
    return v;
}

void nf_trainer_free(nf_trainer *t) {
    if (!t) return;
    nf_ws_free(t->ws);
    nf_ws_free(t->sws);
    nf_adam_free(&t->opt);
    nf_free(t->xb);
    nf_free(t->cb);
    nf_free(t->dlogp);
    nf_free(t->logp);
    nf_free(t->logdet);
    nf_free(t->keep_buffers);
    nf_free(t->best_params);
    nf_free(t->best_buffers);
    nf_free(t->perm);
    nf_ws_free(t->qws);
    if (t->q) nf_adam_free(&t->qopt);
    nf_free(t->eps);
    nf_free(t->vscratch);
    nf_free(t->qkeep_buffers);
    nf_free(t->qbest_params);
    nf_free(t->qbest_buffers);
    nf_free(t);
}

int nf_trainer_create(nf_flow *f, const nf_train_config *cfg, const nf_real *train,
                      int64_t ntrain, const nf_real *val, int64_t nval, nf_trainer **out,
                      char *err, size_t errlen) {
    *out = NULL;
    if (ntrain < 1 || !train) {
        nf_set_err(err, errlen, "no training rows");
        return NF_EINVAL;
    }
    /* lr <= 10 keeps every Adam update (about lr per parameter) far from
     * float overflow, so divergence shows as a non-finite loss, caught by the
     * guard, never as non-finite parameters */
    if (cfg->epochs < 1 || cfg->batch_size < 1 || !(cfg->lr > 0) || !(cfg->lr <= 10) ||
        cfg->warmup_steps < 0 || cfg->max_bad_batches < 1 || cfg->log_every < 0 ||
        cfg->val_every < 0 || cfg->es_patience < 0 || !(cfg->plateau_factor > 0) ||
        !(cfg->plateau_factor < 1) || cfg->plateau_patience < 0 || cfg->weight_decay < 0 ||
        cfg->clip_grad_norm < 0 || cfg->jacobian_l2 < 0 || cfg->lr_min < 0 ||
        !(cfg->max_seconds >= 0) ||
        (unsigned)cfg->schedule >= NF_SCHED_COUNT || (unsigned)cfg->optimizer >= NF_OPT_COUNT) {
        nf_set_err(err, errlen, "invalid training configuration");
        return NF_EINVAL;
    }
    int shape[3];
    if (cfg->hflip && !nf_flow_shape(f, shape)) {
        nf_set_err(err, errlen, "hflip augmentation needs an image shape: the flow has no \"shape\"");
        return NF_EINVAL;
    }
    nf_trainer *t = nf_calloc(1, sizeof *t);
    if (!t) return NF_ENOMEM;
    t->f = f;
    nf_flow_shape(f, t->shape);
    t->cfg = *cfg;
    t->train = train;
    t->ntrain = ntrain;
    t->val = val;
    t->nval = val ? nval : 0;
    t->D = nf_flow_dim(f);
    t->C = nf_flow_context_dim(f);
    t->B = cfg->batch_size < ntrain ? cfg->batch_size : (int)ntrain;
    t->spe = ntrain / t->B;
    t->total_steps = t->spe * cfg->epochs;
    size_t P = nf_flow_num_params(f), NB = f->nbuffers;
    int rc = nf_ws_create_threads(f, t->B, cfg->threads > 1 ? cfg->threads : 1, &t->ws);
    t->ode = nf_flow_num_ode(f); /* cnf layers */
    if (!rc && nf_flow_zero_grad(f)) rc = NF_ENOMEM; /* the gradient buffer, once */
    if (!rc) rc = nf_adam_init(&t->opt, cfg->optimizer, P, cfg->weight_decay);
    t->xb = nf_malloc((size_t)t->B * t->D * sizeof *t->xb);
    t->dlogp = nf_malloc((size_t)t->B * sizeof *t->dlogp);
    t->logp = nf_malloc((size_t)t->B * sizeof *t->logp);
    t->logdet = nf_malloc((size_t)t->B * sizeof *t->logdet);
    t->keep_buffers = nf_malloc((NB + 1) * sizeof(nf_real));
    /* zeroed: a state saved before the first validation writes them out
     * (valgrind found uninitialised bytes in the blob) */
    t->best_params = nf_calloc(P + 1, sizeof(nf_real));
    t->best_buffers = nf_calloc(NB + 1, sizeof(nf_real));
    t->perm = nf_malloc((size_t)ntrain * sizeof *t->perm);
    if (rc || !t->xb || !t->dlogp || !t->logp || !t->logdet || !t->keep_buffers ||
        !t->best_params || !t->best_buffers || !t->perm) {
        if (rc == NF_ERANGE)
            nf_set_err(err, errlen, "the training workspace for batch_size %d would exceed %zu GiB: use a smaller batch_size or a smaller flow",
                       t->B, NF_WS_MAX_BYTES >> 30);
        else
            nf_set_err(err, errlen, "out of memory");
        nf_trainer_free(t);
        return rc ? rc : NF_ENOMEM;
    }
    for (int i = 0; i < t->B; i++) t->dlogp[i] = (nf_real)(-1.0 / t->B);
    t->perm_epoch = -1;
    t->best_val = INFINITY;
    t->plateau_best = INFINITY;
    t->lr_scale = 1;
    t->val_loss = NAN;
    t->val_bpd = NAN;
    t->nonfinite_frac = NAN;
    *out = t;
    return 0;
}

const char *nf_trainer_error(const nf_trainer *t) { return t->err; }

int nf_trainer_set_context(nf_trainer *t, const nf_real *train_ctx, const nf_real *val_ctx,
                           char *err, size_t errlen) {
    if (t->C < 1 || !train_ctx || (t->nval > 0 && !val_ctx) || t->step > 0 || t->cb) {
        nf_set_err(err, errlen, t->C < 1 ? "the flow takes no context (context_dim 0)"
                                         : "the context needs training (and validation) rows, "
                                           "set once before training starts");
        return NF_EINVAL;
    }
    if (!(t->cb = nf_malloc((size_t)t->B * t->C * sizeof *t->cb))) {
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    t->tctx = train_ctx;
    t->vctx = val_ctx;
    return 0;
}

int nf_trainer_set_dequantizer(nf_trainer *t, nf_flow *q, char *err, size_t errlen) {
    if (t->q || t->step > 0) {
        nf_set_err(err, errlen, "the dequantizer must be set once, before training starts");
        return NF_EINVAL;
    }
    if (!t->cfg.dequantize || t->cfg.levels < 2) {
        nf_set_err(err, errlen, "variational dequantization needs dequantize and levels >= 2");
        return NF_EINVAL;
    }
    if (nf_flow_dim(q) != t->D || nf_flow_context_dim(q) != t->D) {
        nf_set_err(err, errlen, "the dequantizer flow needs dim %d and context_dim %d (has %d, %d)",
                   t->D, t->D, nf_flow_dim(q), nf_flow_context_dim(q));
        return NF_EINVAL;
    }
    size_t P = nf_flow_num_params(q), NB = q->nbuffers, BD = (size_t)t->B * t->D;
    int rc = nf_ws_create_threads(q, t->B, t->cfg.threads > 1 ? t->cfg.threads : 1, &t->qws);
    if (!rc && nf_flow_zero_grad(q)) rc = NF_ENOMEM;
    if (!rc) rc = nf_adam_init(&t->qopt, t->cfg.optimizer, P, t->cfg.weight_decay);
    if (rc) {
        nf_ws_free(t->qws);
        t->qws = NULL;
        nf_set_err(err, errlen, "out of memory");
        return rc;
    }
    t->q = q;
    t->eps = nf_malloc(BD * sizeof(nf_real));
    t->vscratch = nf_malloc(nf_vdeq_scratch_size(t->B, t->D) * sizeof(nf_real));
    t->qkeep_buffers = nf_malloc((NB + 1) * sizeof(nf_real));
    t->qbest_params = nf_calloc(P + 1, sizeof(nf_real)); /* zeroed, as best_params */
    t->qbest_buffers = nf_calloc(NB + 1, sizeof(nf_real));
    if (!t->eps || !t->vscratch || !t->qkeep_buffers || !t->qbest_params || !t->qbest_buffers) {
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM; /* the trainer stays consistent: nf_trainer_free releases it all */
    }
    return 0;
}

static double lr_at(const nf_trainer *t, int64_t step) {
    const nf_train_config *c = &t->cfg;
    double lr = c->lr;
    if (step < c->warmup_steps) {
        lr = c->lr * (double)(step + 1) / c->warmup_steps;
    } else if (c->schedule == NF_SCHED_COSINE) {
        double S = (double)(t->total_steps - c->warmup_steps), s = (double)(step - c->warmup_steps);
        double fr = S > 0 ? s / S : 1;
        if (fr > 1) fr = 1;
        lr = c->lr_min + (c->lr - c->lr_min) * 0.5 * (1 + cos(3.141592653589793 * fr));
    }
    return lr * t->lr_scale;
}

static void build_perm(nf_trainer *t) {
    if (t->perm_epoch == t->epoch) return;
    nf_rng r;
    nf_rng_seed(&r, t->cfg.seed * 0x9E3779B97F4A7C15ULL + 0x1000 + (uint64_t)t->epoch);
    for (int64_t i = 0; i < t->ntrain; i++) t->perm[i] = i;
    for (int64_t i = t->ntrain - 1; i > 0; i--) {
        int64_t j = (int64_t)(nf_rng_u64(&r) % (uint64_t)(i + 1)), k = t->perm[i];
        t->perm[i] = t->perm[j];
        t->perm[j] = k;
    }
    t->perm_epoch = t->epoch;
}

void nf_trainer_metrics(const nf_trainer *t, nf_train_metrics *m) {
    memset(m, 0, sizeof *m);
    m->step = t->step;
    m->total_steps = t->total_steps;
    m->epoch = t->epoch;
    m->epochs = t->cfg.epochs;
    m->train_loss = t->acc_n ? t->acc_loss / t->acc_n : NAN;
    m->val_loss = t->val_loss;
    m->val_bits_per_dim = t->val_bpd;
    m->best_val_loss = t->best_val;
    m->lr = t->last_lr;
    m->grad_norm = t->last_gn;
    m->nonfinite_sample_fraction = t->nonfinite_frac;
    m->skipped_batches = t->skipped;
    double now = nf_mono_s(), dt = now - t->rep_time;
    int64_t ds = t->step - t->rep_step;
    m->samples_per_second = dt > 0 && ds > 0 ? (double)ds * t->B / dt : 0;
    m->held_seconds = (double)__atomic_load_n(&t->held_ns, __ATOMIC_RELAXED) * 1e-9 /
                      (t->cfg.threads > 1 ? t->cfg.threads : 1);
    if (t->ode) { /* since the last report, or that report's figures */
        const nf_ode_stats *o = &t->ode_acc;
        m->ode = t->ode;
        /* per solve times the cnf layers: what one batch costs, whatever the
         * threads (each thread's part of a batch solves its rows) */
        double per = o->solves ? (double)t->ode / (double)o->solves : 0,
               rows = (double)o->reg_rows;
        m->nfe = per > 0 ? (double)(o->nfe + o->nfe_backward) * per : t->ode_last[0];
        m->nfe_forward = per > 0 ? (double)o->nfe * per : t->ode_last[1];
        m->kinetic = rows ? o->kinetic / rows : t->ode_last[2];
        m->jacobian = rows ? o->jacobian / rows : t->ode_last[3];
    }
    double el = now - t->t_start;
    int64_t done = t->step, left = t->total_steps - t->step;
    m->eta_seconds = done > 0 && el > 0 ? el / done * (left > 0 ? left : 0) : NAN;
}

static void report(nf_trainer *t, const nf_train_hooks *h, int is_val) {
    if (!h || !h->progress) return;
    nf_train_metrics m;
    nf_trainer_metrics(t, &m);
    m.is_validation = is_val;
    h->progress(h->user, &m);
    if (!is_val) {
        t->acc_loss = 0;
        t->acc_n = 0;
        t->ode_last[0] = m.nfe;
        t->ode_last[1] = m.nfe_forward;
        t->ode_last[2] = m.kinetic;
        t->ode_last[3] = m.jacobian;
        memset(&t->ode_acc, 0, sizeof t->ode_acc);
        t->rep_step = t->step;
        t->rep_time = nf_mono_s();
    }
}

/* the workspaces' pace (nf_ws_set_pace): the caller's hook, timed */
static void trainer_pace(void *user, double work_s) {
    nf_trainer *t = user;
    double t0 = nf_mono_s();
    t->pace_fn(t->pace_user, work_s);
    __atomic_fetch_add(&t->held_ns, (int64_t)((nf_mono_s() - t0) * 1e9), __ATOMIC_RELAXED);
}

static void set_pace(nf_trainer *t, const nf_train_hooks *h) {
    int on = h && h->pace;
    t->pace_fn = on ? h->pace : NULL;
    t->pace_user = on ? h->user : NULL;
    nf_ws *ws[] = {t->ws, t->sws, t->qws};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        if (ws[i]) nf_ws_set_pace(ws[i], on ? trainer_pace : NULL, on ? t : NULL);
}

/* validation; returns 1 when early stopping says stop, NF_ENOMEM (t->err
 * set) when an allocation failed: the scores would be NaN, not the model's;
 * NF_EIO when the broadcast of rank 0's scores failed */
static int validate(nf_trainer *t) {
    nf_flow *f = t->f;
    size_t P = nf_flow_num_params(f), NB = f->nbuffers;
    if (t->nval <= 0) return 0;
    unsigned fails = nf_alloc_failures;
    if (t->dist && t->dist->rank != 0) goto scores; /* rank 0 validates */
    nf_ws_set_noise_seed(t->ws, t->cfg.seed + 777); /* Hutchinson scoring (dim > 64): fixed probes */
    t->val_loss = t->q ? nf_eval_nll_vdeq_ctx(f, t->q, t->val, t->vctx, t->nval, t->cfg.levels,
                                              t->cfg.seed + 777)
                       : eval_nll_on(f, t->ws, t->val, t->vctx, t->nval, t->cfg.dequantize,
                                     t->cfg.seed + 777);
    t->val_bpd = t->cfg.dequantize ? nf_bits_per_dim(t->val_loss, t->D) : NAN;
    /* fraction of non-finite values in 256 samples at T = 1 */
    int n = 256;
    nf_real *s = nf_malloc((size_t)n * t->D * sizeof *s), *sc = NULL;
    if (s && t->C > 0) { /* a conditional flow: the contexts of the first validation rows, cycled */
        sc = nf_malloc((size_t)n * t->C * sizeof *sc);
        for (int i = 0; sc && i < n; i++)
            memcpy(sc + (size_t)i * t->C, t->vctx + (size_t)(i % t->nval) * t->C,
                   (size_t)t->C * sizeof *sc);
        if (!sc) {
            nf_free(s);
            s = NULL;
        }
    }
    if (s && !t->sws)
        nf_ws_create_ex(f, n, t->cfg.threads > 1 ? t->cfg.threads : 1, NF_WS_INFERENCE, &t->sws);
    if (t->sws && t->pace_fn) nf_ws_set_pace(t->sws, trainer_pace, t);
    if (s && t->sws) {
        nf_flow_sample(f, t->sws, n, 1.0, t->cfg.seed + (uint64_t)t->step, sc, s, NULL);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)n * t->D; i++) bad += !isfinite(s[i]);
        t->nonfinite_frac = (double)bad / ((double)n * t->D);
    }
    nf_free(s);
    nf_free(sc);
scores:;
    int oom = nf_alloc_failures != fails;
    if (t->dist) { /* every rank keeps the books on rank 0's scores */
        double sv[3] = {t->val_loss, t->nonfinite_frac, oom};
        if (t->dist->bcast_f64(t->dist->user, sv, 3)) {
            snprintf(t->err, sizeof t->err, "the validation broadcast across ranks failed at step %lld",
                     (long long)t->step);
            return NF_EIO;
        }
        t->val_loss = sv[0];
        t->val_bpd = t->cfg.dequantize ? nf_bits_per_dim(t->val_loss, t->D) : NAN;
        t->nonfinite_frac = sv[1];
        oom = sv[2] != 0;
    }
    if (oom) {
        snprintf(t->err, sizeof t->err, "out of memory in validation at step %lld", (long long)t->step);
        return NF_ENOMEM;
    }
    double v = t->val_loss;
    if (v < t->best_val - t->cfg.es_min_delta || (!t->have_best && isfinite(v))) {
        t->best_val = v;
        memcpy(t->best_params, f->params, P * sizeof *f->params);
        memcpy(t->best_buffers, f->buffers, NB * sizeof *f->buffers);
        if (t->q) {
            memcpy(t->qbest_params, t->q->params, t->q->nparams * sizeof(nf_real));
            memcpy(t->qbest_buffers, t->q->buffers, t->q->nbuffers * sizeof(nf_real));
        }
        t->have_best = 1;
        t->es_bad = 0;
    } else {
        t->es_bad++;
    }
    if (t->cfg.schedule == NF_SCHED_PLATEAU) {
        if (v < t->plateau_best - t->cfg.es_min_delta) {
            t->plateau_best = v;
            t->plateau_bad = 0;
        } else if (++t->plateau_bad > t->cfg.plateau_patience) {
            t->lr_scale *= t->cfg.plateau_factor;
            t->plateau_bad = 0;
        }
    }
    return t->cfg.es_patience > 0 && t->es_bad >= t->cfg.es_patience;
}

/* a time-based checkpoint is due: checkpoint_seconds passed and the
 * caller's checkpoint_due, if any, agrees */
static int ckpt_time_due(const nf_trainer *t, const nf_train_hooks *h) {
    if (!h || !(h->checkpoint_seconds > 0)) return 0;
    double since = nf_mono_s() - t->last_ckpt;
    if (since < h->checkpoint_seconds) return 0;
    return !h->checkpoint_due || h->checkpoint_due(h->user, since);
}

static int checkpoint(nf_trainer *t, const nf_train_hooks *h) {
    if (!h || !h->checkpoint) return 0;
    void *buf;
    size_t len;
    int rc = nf_trainer_save_state(t, &buf, &len);
    if (rc) return rc;
    rc = h->checkpoint(h->user, buf, len, t->step);
    if (!h->checkpoint_takes_state) nf_free(buf);
    return rc;
}

/* global L2 norm over both gradient buffers, clipped as nf_clip_grad_norm */
static double clip_both(nf_real *g1, size_t n1, nf_real *g2, size_t n2, double max_norm) {
    double ss = 0;
    for (size_t i = 0; i < n1; i++) ss += (double)g1[i] * g1[i];
    for (size_t i = 0; i < n2; i++) ss += (double)g2[i] * g2[i];
    double norm = sqrt(ss);
    if (!isfinite(norm)) return NAN;
    if (max_norm > 0 && norm > max_norm) {
        double s = max_norm / norm;
        for (size_t i = 0; i < n1; i++) g1[i] = (nf_real)(g1[i] * s);
        for (size_t i = 0; i < n2; i++) g2[i] = (nf_real)(g2[i] * s);
    }
    return norm;
}

/* The end of a step, for both objectives: a non-finite loss or gradient
 * (or rows outside the support, rc != 0) restores the layer state, counts
 * the batch, and after max_bad_batches in a row stops the run with a
 * message naming what went wrong; otherwise the optimizer step(s) of the
 * flow and, with variational dequantization, of q. */
/* fused: the flow's step is nf_adam_step_scaled_ws with the clip's factor
 * t->gscale, leaving f->grad zero for the next step (the plain objective;
 * clipping in place and a separate zeroing pass otherwise) */
static int step_outcome(nf_trainer *t, int rc, double loss, double gn, const char *outside, int fused) {
    nf_flow *f = t->f, *q = t->q;
    if (rc || !isfinite(loss) || !isfinite(gn)) {
        memcpy(f->buffers, t->keep_buffers, f->nbuffers * sizeof *f->buffers);
        if (q) memcpy(q->buffers, t->qkeep_buffers, q->nbuffers * sizeof *q->buffers);
        t->skipped++;
        if (++t->consecutive_bad >= t->cfg.max_bad_batches) {
            snprintf(t->err, sizeof t->err,
                     "training diverged: %d consecutive batches with a non-finite %s at step "
                     "%lld (epoch %d, lr %.3g); parameters are the last finite ones; lower the "
                     "learning rate, enable clip_grad_norm or standardize the data",
                     t->consecutive_bad, rc ? outside : !isfinite(loss) ? "loss" : "gradient",
                     (long long)t->step, t->epoch, lr_at(t, t->step));
            return NF_ENONFINITE;
        }
    } else {
        t->consecutive_bad = 0;
        double lr = lr_at(t, t->step);
        if (fused) {
            nf_adam_step_scaled_ws(&t->opt, t->ws, f->params, f->grad, lr, t->gscale);
            t->grad_zero = 1;
        } else {
            nf_adam_step_ws(&t->opt, t->ws, f->params, f->grad, lr);
        }
        if (q) nf_adam_step_ws(&t->qopt, t->qws, q->params, q->grad, lr);
        t->acc_loss += loss;
        t->acc_n++;
        t->last_lr = lr;
        t->last_gn = gn;
    }
    t->step++;
    t->batch_in_epoch++;
    return 0;
}

int nf_augment_hflip(nf_real *x, int B, const int shape[3], nf_rng *rng) {
    int C = shape[0], H = shape[1], W = shape[2], flipped = 0;
    size_t D = (size_t)C * H * W;
    for (int b = 0; b < B; b++) {
        if (!(nf_rng_u64(rng) >> 63)) continue; /* the top bit: probability 1/2 */
        flipped++;
        nf_real *row = x + (size_t)b * D;
        for (size_t ci = 0; ci < (size_t)C * H; ci++) { /* channel c, image row i */
            nf_real *line = row + ci * W;
            for (int j = 0, k = W - 1; j < k; j++, k--) {
                nf_real v = line[j];
                line[j] = line[k];
                line[k] = v;
            }
        }
    }
    return flipped;
}

/* data parallelism: act-norm data initialisation sees the whole global
 * batch, as in one process (a one-off workspace of B rows, only while a
 * layer has a data_init and only for the first step of a run: later calls
 * are no-ops once the layers are initialised, and a resumed state is) */
static int dist_data_init(nf_trainer *t) {
    if (t->dist_inited) return 0;
    t->dist_inited = 1;
    int need = 0;
    for (int k = 0; k < t->f->nlayers; k++) need |= t->f->layers[k].ops->data_init != NULL;
    if (!need) return 0;
    nf_ws *w = NULL;
    if (nf_ws_create_threads(t->f, t->B, 1, &w)) {
        snprintf(t->err, sizeof t->err, "out of memory (act-norm initialisation on %d rows)", t->B);
        return NF_ENOMEM;
    }
    nf_flow_data_init(t->f, w, t->xb, t->cb, t->B);
    nf_ws_free(w);
    return 0;
}

/* data parallelism: the sum of the ranks' gradients and of the step's loss,
 * non-finite flags and stop votes, the same on every rank afterwards */
static int dist_reduce(nf_trainer *t, const nf_train_hooks *h, int *rc, double *loss) {
    const nf_train_dist *d = t->dist;
    double v[5] = {*loss, *rc != 0, *rc == NF_ESTEPS,
                   h && h->cancel && __atomic_load_n(h->cancel, __ATOMIC_RELAXED),
                   t->cfg.max_seconds > 0 && nf_mono_s() - t->t_start > t->cfg.max_seconds};
    if (d->sum(d->user, t->f->grad, nf_flow_num_params(t->f)) || d->sum_f64(d->user, v, 5)) {
        snprintf(t->err, sizeof t->err, "the gradient reduction across ranks failed at step %lld",
                 (long long)t->step);
        return NF_EIO;
    }
    *loss = v[0];
    *rc = v[2] > 0 ? NF_ESTEPS : v[1] > 0 ? (*rc ? *rc : NF_ENONFINITE) : 0;
    t->vote_cancel = v[3] > 0;
    t->vote_time = v[4] > 0;
    return 0;
}

/* data parallelism: this rank's rows and a workspace sized for them */
static int use_dist(nf_trainer *t, const nf_train_dist *d) {
    if (!d || d->size <= 1) {
        if (t->dist) {
            snprintf(t->err, sizeof t->err, "a data-parallel trainer runs data-parallel");
            return NF_EINVAL;
        }
        return 0;
    }
    if (d->rank < 0 || d->rank >= d->size || d->size > t->B || !d->sum || !d->sum_f64 || !d->bcast_f64) {
        snprintf(t->err, sizeof t->err, "data parallelism: %d ranks need a batch of at least %d rows (batch %d)",
                 d->size, d->size, t->B);
        return NF_EINVAL;
    }
    if (t->q) {
        snprintf(t->err, sizeof t->err, "data parallelism: not with a variational dequantizer");
        return NF_EUNSUPPORTED;
    }
    for (int k = 0; k < t->f->nlayers; k++)
        if (!strcmp(t->f->layers[k].ops->type, "batchnorm")) {
            snprintf(t->err, sizeof t->err, "data parallelism: not with batchnorm layers (batch "
                     "statistics would be per rank); use actnorm");
            return NF_EUNSUPPORTED;
        }
    int lo = (int)((int64_t)d->rank * t->B / d->size), hi = (int)((int64_t)(d->rank + 1) * t->B / d->size);
    if (!t->dist || t->nb != hi - lo) {
        nf_ws *w = NULL;
        if (nf_ws_create_threads(t->f, hi - lo, t->cfg.threads > 1 ? t->cfg.threads : 1, &w)) {
            snprintf(t->err, sizeof t->err, "out of memory");
            return NF_ENOMEM;
        }
        nf_ws_free(t->ws);
        t->ws = w;
    }
    t->dist = d;
    t->lo = lo;
    t->nb = hi - lo;
    t->vote_cancel = t->vote_time = t->dist_inited = 0;
    return 0;
}

/* one optimisation step on batch batch_in_epoch of the current epoch;
 * returns 0, or NF_ENONFINITE after max_bad_batches bad batches in a row */
static int train_step(nf_trainer *t, const nf_train_hooks *h) {
    nf_flow *f = t->f;
    int B = t->B, D = t->D;
    size_t P = nf_flow_num_params(f), NB = f->nbuffers;
    build_perm(t);
    const int C = t->C;
    for (int r = 0; r < B; r++) {
        int64_t i = t->perm[t->batch_in_epoch * B + r];
        memcpy(t->xb + (size_t)r * D, t->train + i * D, (size_t)D * sizeof *t->xb);
        if (t->cb) memcpy(t->cb + (size_t)r * C, t->tctx + i * C, (size_t)C * sizeof *t->cb);
    }
    if (t->cfg.hflip) { /* the flips of this step: from (seed, step), so a resume draws them again */
        nf_rng r;
        nf_rng_seed(&r, t->cfg.seed * 0x94D049BB133111EBULL + 0x4000 + (uint64_t)t->step);
        nf_augment_hflip(t->xb, B, t->shape, &r);
    }
    if (t->q) {
        nf_flow *q = t->q;
        memcpy(t->keep_buffers, f->buffers, NB * sizeof *f->buffers);
        memcpy(t->qkeep_buffers, q->buffers, q->nbuffers * sizeof(nf_real));
        double loss = NAN;
        nf_rng r;
        nf_rng_seed(&r, t->cfg.seed * 0xBF58476D1CE4E5B9ULL + 0x3000 + (uint64_t)t->step);
        for (size_t i = 0; i < (size_t)B * D; i++) t->eps[i] = (nf_real)nf_rng_normal(&r);
        if (h && h->batch) h->batch(h->user, t->xb, B, D, t->step);
        nf_flow_zero_grad_ws(f, t->ws);
        nf_flow_zero_grad_ws(q, t->qws);
        int rc = nf_vdeq_grad_ctx(f, t->ws, q, t->qws, t->xb, t->cb, t->eps, B, t->cfg.levels, 1,
                                  t->cfg.jacobian_l2, t->vscratch, &loss);
        double gn = rc ? NAN : clip_both(f->grad, P, q->grad, q->nparams, t->cfg.clip_grad_norm);
        return step_outcome(t, rc, loss, gn, "bound (rows outside the support)", 0);
    }
    if (t->cfg.dequantize) {
        nf_rng r;
        nf_rng_seed(&r, t->cfg.seed * 0xBF58476D1CE4E5B9ULL + 0x2000 + (uint64_t)t->step);
        nf_deq_uniform(t->xb, (size_t)B * D, &r, t->xb);
    }
    if (h && h->batch) h->batch(h->user, t->xb, B, D, t->step);
    int lo = t->dist ? t->lo : 0, nb = t->dist ? t->nb : B;
    if (!t->dist) nf_flow_data_init(f, t->ws, t->xb, t->cb, B); /* no-op once act-norms are initialised */
    else if (dist_data_init(t)) return NF_ENOMEM;
    memcpy(t->keep_buffers, f->buffers, NB * sizeof *f->buffers);
    if (!t->grad_zero) nf_flow_zero_grad_ws(f, t->ws);
    t->grad_zero = 0;
    nf_ode_stats o0, o1;
    if (t->ode) { /* the probes of this step: from (seed, step), so a resume draws them again */
        nf_ws_set_noise_seed(t->ws, t->cfg.seed * 0xD6E8FEB86659FD93ULL + 0x5000 + (uint64_t)t->step);
        nf_ws_ode_stats(t->ws, &o0);
    }
    /* this rank's rows (all of them in one process); the weights -1/B and
     * lambda/B are the global batch's */
    int rc = nf_flow_log_prob_grad_ex(f, t->ws, t->xb + (size_t)lo * D, t->cb ? t->cb + (size_t)lo * C : NULL,
                                      nb, 1, t->dlogp, t->cfg.jacobian_l2 / B, t->logp, t->logdet,
                                      NULL, NULL);
    if (t->ode) {
        nf_ws_ode_stats(t->ws, &o1);
        t->ode_acc.nfe += o1.nfe - o0.nfe;
        t->ode_acc.nfe_backward += o1.nfe_backward - o0.nfe_backward;
        t->ode_acc.kinetic += o1.kinetic - o0.kinetic;
        t->ode_acc.jacobian += o1.jacobian - o0.jacobian;
        t->ode_acc.reg_rows += o1.reg_rows - o0.reg_rows;
        t->ode_acc.solves += o1.solves - o0.solves;
    }
    double loss = 0;
    for (int r = 0; r < nb; r++)
        loss += -(double)t->logp[r] + t->cfg.jacobian_l2 * (double)t->logdet[r] * t->logdet[r];
    if (t->dist) {
        int drc = dist_reduce(t, h, &rc, &loss);
        nf_ws_grad_changed(t->ws); /* the allreduce rewrote the gradient */
        if (drc) return drc;
    }
    loss /= B;
    /* the norm (from the threads' reduction where it took it), the clip's
     * factor folded into the optimizer's pass */
    double gn = rc ? NAN : nf_grad_norm_ws(t->ws, f->grad, P);
    double clip = t->cfg.clip_grad_norm;
    t->gscale = isfinite(gn) && clip > 0 && gn > clip ? clip / gn : 1;
    return step_outcome(t, rc, loss, gn,
                        rc == NF_ESTEPS ? "ODE solve (more than max_steps steps: stiff dynamics; "
                                          "raise max_steps, loosen rtol/atol or add reg_kinetic/"
                                          "reg_jacobian)"
                                        : "log-likelihood (rows outside the support)",
                        1);
}

int nf_trainer_run(nf_trainer *t, const nf_train_hooks *h) {
    nf_flow *f = t->f;
    size_t P = nf_flow_num_params(f), NB = f->nbuffers;
    int rc = 0, every = h ? h->checkpoint_every : 0;
    t->t_start = t->rep_time = t->last_ckpt = nf_mono_s();
    t->rep_step = t->step;
    t->err[0] = 0;
    t->grad_zero = 0; /* the caller may have used the gradient since */
    if (t->C > 0 && !t->cb) {
        snprintf(t->err, sizeof t->err, "a conditional flow (context_dim %d) needs its context rows: "
                 "nf_trainer_set_context", t->C);
        return NF_EINVAL;
    }
    if ((rc = use_dist(t, h ? h->dist : NULL))) return rc;
    t->held_ns = 0;
    set_pace(t, h);
    while (!t->done && t->epoch < t->cfg.epochs) {
        while (t->batch_in_epoch < t->spe) {
            /* atomic: another thread sets the flag while we train */
            if (t->dist ? t->vote_cancel : h && h->cancel && __atomic_load_n(h->cancel, __ATOMIC_RELAXED)) {
                rc = NF_ECANCELLED;
                snprintf(t->err, sizeof t->err, "cancelled at step %lld", (long long)t->step);
                if (h->checkpoint_on_cancel) {
                    int crc = checkpoint(t, h);
                    if (crc) rc = crc;
                }
                goto finish;
            }
            if ((rc = train_step(t, h))) goto finish;
            if (t->dist ? t->vote_time : t->cfg.max_seconds > 0 && nf_mono_s() - t->t_start > t->cfg.max_seconds) {
                int v = validate(t); /* score the final parameters too */
                if (v < 0) {
                    rc = v;
                    goto finish;
                }
                t->done = 1;
                report(t, h, 1);
                goto finish;
            }
            if (t->cfg.log_every && t->step % t->cfg.log_every == 0) report(t, h, 0);
            if (t->cfg.val_every && t->step % t->cfg.val_every == 0) {
                int v = validate(t);
                if (v < 0) {
                    rc = v;
                    goto finish;
                }
                if (v) t->done = 1;
                report(t, h, 1);
                if (t->done) goto finish;
            }
            if ((every && t->step % every == 0) || ckpt_time_due(t, h)) {
                t->last_ckpt = nf_mono_s();
                if ((rc = checkpoint(t, h))) goto finish;
            }
        }
        t->epoch++;
        t->batch_in_epoch = 0;
        if (!t->cfg.val_every) {
            int v = validate(t);
            if (v < 0) {
                rc = v;
                goto finish;
            }
            if (v) t->done = 1;
            report(t, h, 1);
            if (!every && !(h && h->checkpoint_seconds > 0)) {
                t->last_ckpt = nf_mono_s();
                if ((rc = checkpoint(t, h))) goto finish;
            }
        }
    }
    t->done = 1;
finish:
    if (t->acc_n) report(t, h, 0);
    set_pace(t, NULL);
    /* whatever ended the run, the flow holds the best parameters seen */
    if (t->have_best) {
        memcpy(f->params, t->best_params, P * sizeof *f->params);
        memcpy(f->buffers, t->best_buffers, NB * sizeof *f->buffers);
        if (t->q) {
            memcpy(t->q->params, t->qbest_params, t->q->nparams * sizeof(nf_real));
            memcpy(t->q->buffers, t->qbest_buffers, t->q->nbuffers * sizeof(nf_real));
        }
    }
    return rc;
}

/* ---- state blob -------------------------------------------------------------------------- */
/* little-endian host assumed for the raw arrays (x86-64/aarch64); the
 * header records sizeof(nf_real) so a float/double mismatch is refused */
static uint64_t fingerprint(const nf_trainer *t) {
    uint64_t h = 1469598103934665603ULL;
    uint64_t v[] = {nf_flow_num_params(t->f), t->f->nbuffers, (uint64_t)t->ntrain,
                    (uint64_t)t->nval, (uint64_t)t->D, (uint64_t)t->B, t->cfg.seed,
                    (uint64_t)t->cfg.epochs, sizeof(nf_real)};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) h = (h ^ v[i]) * 1099511628211ULL;
    if (t->q) {
        uint64_t w[] = {nf_flow_num_params(t->q), t->q->nbuffers, (uint64_t)t->cfg.levels};
        for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) h = (h ^ w[i]) * 1099511628211ULL;
    }
    if (t->C) h = (h ^ (0x43540000u + (uint64_t)t->C)) * 1099511628211ULL; /* "CT": conditional */
    if (t->cfg.hflip) h = (h ^ 0x4846u) * 1099511628211ULL; /* "HF": a run with flips (without: as before) */
    return h;
}

/* a flow's section: params, buffers, best params, best buffers (raw
 * nf_real), u64 length, its Adam blob */
static void put_flow_section(nf_blob_writer *b, const nf_flow *f, const nf_real *best_params,
                             const nf_real *best_buffers, const nf_adam *opt) {
    size_t P = f->nparams * sizeof(nf_real), NB = f->nbuffers * sizeof(nf_real);
    nf_blob_put(b, f->params, P);
    nf_blob_put(b, f->buffers, NB);
    nf_blob_put(b, best_params, P);
    nf_blob_put(b, best_buffers, NB);
    nf_blob_put_u64(b, nf_adam_blob_size(opt));
    nf_adam_put(opt, b); /* the optimizer's own blob, in place */
}

/* bytes of put_flow_section */
static size_t flow_section_size(const nf_flow *f, const nf_adam *opt) {
    return 2 * (f->nparams + f->nbuffers) * sizeof(nf_real) + 8 + nf_adam_blob_size(opt);
}

int nf_trainer_save_state(const nf_trainer *t, void **buf, size_t *len) {
    if (nf_adam_blob_size(&t->opt) == SIZE_MAX || (t->q && nf_adam_blob_size(&t->qopt) == SIZE_MAX))
        return NF_ENOMEM;
    /* one allocation of the exact size: a large model's state is hundreds
     * of MB, and growing it by doubling copies and faults it in again */
    nf_blob_writer b = nf_blob_writer_init(4 + 11 * 8 + 6 * 8 + flow_section_size(t->f, &t->opt) +
                                           (t->q ? flow_section_size(t->q, &t->qopt) : 0) + 4);
    nf_blob_put(&b, "NFTS", 4);
    nf_blob_put_u64(&b, t->q ? 2 : 1); /* version: 2 appends the dequantizer's section */
    nf_blob_put_u64(&b, fingerprint(t));
    nf_blob_put_u64(&b, (uint64_t)t->step);
    nf_blob_put_u64(&b, (uint64_t)t->batch_in_epoch);
    nf_blob_put_u64(&b, (uint64_t)t->skipped);
    nf_blob_put_u64(&b, (uint64_t)t->epoch);
    nf_blob_put_u64(&b, (uint64_t)t->done);
    nf_blob_put_u64(&b, (uint64_t)t->have_best);
    nf_blob_put_u64(&b, (uint64_t)t->consecutive_bad);
    nf_blob_put_u64(&b, (uint64_t)t->es_bad);
    nf_blob_put_u64(&b, (uint64_t)t->plateau_bad);
    nf_blob_put_f64(&b, t->best_val);
    nf_blob_put_f64(&b, t->plateau_best);
    nf_blob_put_f64(&b, t->lr_scale);
    nf_blob_put_f64(&b, t->val_loss);
    nf_blob_put_f64(&b, t->val_bpd);
    nf_blob_put_f64(&b, t->nonfinite_frac);
    put_flow_section(&b, t->f, t->best_params, t->best_buffers, &t->opt);
    if (t->q) /* version 2: the same section for q */
        put_flow_section(&b, t->q, t->qbest_params, t->qbest_buffers, &t->qopt);
    return nf_blob_finish(&b, buf, len);
}

int nf_trainer_load_state(nf_trainer *t, const void *buf, size_t len) {
    const unsigned char *p = buf;
    if (!p || len < 8 + 4 || memcmp(p, "NFTS", 4)) return NF_EFORMAT;
    if (!nf_blob_crc_ok(p, len)) return NF_ECORRUPT;
    nf_blob_reader b = nf_blob_reader_init(p, len - 4);
    b.off = 4;
    if (nf_blob_u64(&b) != (t->q ? 2u : 1u) || nf_blob_u64(&b) != fingerprint(t)) return NF_EFORMAT;
    size_t P = nf_flow_num_params(t->f), NB = t->f->nbuffers;
    int64_t step = (int64_t)nf_blob_u64(&b), bie = (int64_t)nf_blob_u64(&b), skipped = (int64_t)nf_blob_u64(&b);
    int epoch = (int)nf_blob_u64(&b), done = (int)nf_blob_u64(&b), have_best = (int)nf_blob_u64(&b);
    int cbad = (int)nf_blob_u64(&b), esb = (int)nf_blob_u64(&b), plb = (int)nf_blob_u64(&b);
    double bv = nf_blob_f64(&b), pb = nf_blob_f64(&b), ls = nf_blob_f64(&b), vl = nf_blob_f64(&b), vb = nf_blob_f64(&b),
           nf = nf_blob_f64(&b);
    size_t off_arrays = b.off, need = 2 * (P + NB) * sizeof(nf_real);
    if (b.bad || nf_blob_left(&b) < need + 8) return NF_ECORRUPT;
    b.off += need;
    uint64_t olen = nf_blob_u64(&b);
    size_t off_opt = b.off, off_q = 0, off_qopt = 0;
    uint64_t qolen = 0;
    size_t QP = t->q ? nf_flow_num_params(t->q) : 0, QB = t->q ? t->q->nbuffers : 0;
    if (t->q) {
        /* the dequantizer's section follows the model's Adam blob */
        size_t qneed = 2 * (QP + QB) * sizeof(nf_real);
        if (b.bad || nf_blob_left(&b) < olen || nf_blob_left(&b) - olen < qneed + 8) return NF_ECORRUPT;
        off_q = b.off + olen;
        b.off = off_q + qneed;
        qolen = nf_blob_u64(&b);
        off_qopt = b.off;
        if (b.bad || qolen != nf_blob_left(&b)) return NF_ECORRUPT;
    } else if (b.bad || olen != nf_blob_left(&b)) {
        return NF_ECORRUPT;
    }
    /* counters as a run leaves them: step <= total steps (so step + 1 cannot
     * overflow), skipped batches among the steps, flags 0/1, the plateau
     * learning-rate scale in [0, 1] */
    if (epoch < 0 || epoch > t->cfg.epochs || bie < 0 || bie > t->spe || step < 0 ||
        step > t->total_steps || skipped < 0 || skipped > step || (unsigned)done > 1 ||
        (unsigned)have_best > 1 || cbad < 0 || cbad > t->cfg.max_bad_batches || esb < 0 ||
        plb < 0 || !(ls >= 0 && ls <= 1))
        return NF_ECORRUPT;
    nf_adam qtmp = {0};
    int rc = 0;
    if (t->q) {
        rc = nf_adam_init(&qtmp, t->cfg.optimizer, QP, t->cfg.weight_decay);
        if (!rc) rc = nf_adam_load(&qtmp, b.p + off_qopt, qolen);
        if (rc) {
            nf_adam_free(&qtmp);
            return rc;
        }
    }
    rc = nf_adam_load(&t->opt, b.p + off_opt, olen);
    if (rc) {
        if (t->q) nf_adam_free(&qtmp);
        return rc;
    }
    if (t->q) {
        nf_adam_free(&t->qopt);
        t->qopt = qtmp;
        const unsigned char *a = p + off_q;
        memcpy(t->q->params, a, QP * sizeof(nf_real));
        a += QP * sizeof(nf_real);
        memcpy(t->q->buffers, a, QB * sizeof(nf_real));
        a += QB * sizeof(nf_real);
        memcpy(t->qbest_params, a, QP * sizeof(nf_real));
        a += QP * sizeof(nf_real);
        memcpy(t->qbest_buffers, a, QB * sizeof(nf_real));
    }
    const unsigned char *a = p + off_arrays;
    memcpy(t->f->params, a, P * sizeof(nf_real));
    a += P * sizeof(nf_real);
    memcpy(t->f->buffers, a, NB * sizeof(nf_real));
    a += NB * sizeof(nf_real);
    memcpy(t->best_params, a, P * sizeof(nf_real));
    a += P * sizeof(nf_real);
    memcpy(t->best_buffers, a, NB * sizeof(nf_real));
    t->step = step;
    t->batch_in_epoch = bie;
    t->skipped = skipped;
    t->epoch = epoch;
    t->done = done;
    t->have_best = have_best;
    t->consecutive_bad = cbad;
    t->es_bad = esb;
    t->plateau_bad = plb;
    t->best_val = bv;
    t->plateau_best = pb;
    t->lr_scale = ls;
    t->val_loss = vl;
    t->val_bpd = vb;
    t->nonfinite_frac = nf;
    t->perm_epoch = -1;
    return 0;
}

int nf_trainer_save_optimizer(const nf_trainer *t, void **buf, size_t *len) {
    return nf_adam_save(&t->opt, buf, len);
}

int nf_trainer_load_optimizer(nf_trainer *t, const void *buf, size_t len) {
    nf_adam tmp = {0};
    int rc = nf_adam_load(&tmp, buf, len);
    if (rc) return rc;
    if (tmp.kind != t->opt.kind || tmp.n != t->opt.n) {
        nf_adam_free(&tmp);
        return NF_EFORMAT;
    }
    tmp.weight_decay = t->opt.weight_decay; /* this run's setting */
    nf_adam_free(&t->opt);
    t->opt = tmp;
    return 0;
}
