/* train.h: maximum-likelihood training of a flow.
 *
 * The objective is the mean negative log-likelihood over mini-batches,
 *     L(θ) = -1/B sum_b log p_θ(y_b) + λ 1/B sum_b LD_b^2
 * where y_b is the batch row (plus dequantization noise u ~ U[0,1)^D for
 * integer data), LD_b the flow's total log-det for that row, and λ the
 * optional Jacobian (log-det) L2 penalty.
 *
 * One step: gather a shuffled batch, dequantize, log_prob + exact backward,
 * guard against non-finite loss/gradient (skip the batch, restore layer
 * state, count; after max_bad_batches in a row stop with NF_ENONFINITE),
 * clip by global norm, Adam/AdamW step at the scheduled learning rate.
 * Validation runs every epoch (or every val_every steps): validation NLL,
 * bits/dim for discrete data, and the fraction of non-finite values in 256
 * samples.  Early stopping keeps the best parameters (lowest validation NLL)
 * and restores them at the end, whatever ended the run.
 *
 * Reproducibility: the epoch permutation and the dequantization noise are
 * derived from (seed, epoch) and (seed, step), never from a running RNG, so a
 * run is a pure function of (seed, data, config, BLAS thread count), and the
 * state blob (nf_trainer_save_state) resumes it bit for bit: a run stopped at
 * any checkpoint and resumed gives exactly the parameters of an uninterrupted
 * run.
 *
 * Learning rate at step t (0-based), before plateau reductions:
 *   warm-up:  lr * (t+1)/warmup_steps      for t < warmup_steps
 *   constant: lr
 *   cosine:   lr_min + (lr - lr_min) (1 + cos(pi * s/S)) / 2, s = t - warmup,
 *             S = total steps - warmup
 *   plateau:  lr * factor^k after k reductions (patience evaluations with no
 *             improvement larger than min_delta each)
 */
#ifndef NF_TRAIN_H
#define NF_TRAIN_H

#include "nf.h"

typedef enum {
    NF_SCHED_CONSTANT = 0,
    NF_SCHED_COSINE,
    NF_SCHED_PLATEAU,
    NF_SCHED_COUNT
} nf_sched_kind;

typedef struct nf_train_config {
    int epochs;               /* default 100 */
    int batch_size;           /* default 256 */
    double lr;                /* default 1e-3, at most 10 */
    nf_opt_kind optimizer;    /* default adam */
    double weight_decay;      /* default 0 */
    double clip_grad_norm;    /* 0 = off; default 0 */
    int warmup_steps;         /* default 0 */
    nf_sched_kind schedule;   /* default constant */
    double lr_min;            /* cosine floor, default 0 */
    double plateau_factor;    /* default 0.5 */
    int plateau_patience;     /* evaluations, default 5 */
    int es_patience;          /* evaluations without improvement; 0 = off */
    double es_min_delta;      /* default 1e-4 */
    double jacobian_l2;       /* λ, default 0 */
    int max_bad_batches;      /* K consecutive non-finite batches, default 10 */
    int log_every;            /* steps between progress reports, default 50 */
    int val_every;            /* steps between validations, 0 = every epoch */
    int dequantize;           /* add U[0,1) noise to integer-valued data */
    int levels;               /* discrete levels (for bits/dim), e.g. 256 */
    double max_seconds;       /* wall-clock budget, 0 = none: when spent, the
                                 run ends like an early stop (best params kept);
                                 counted per nf_trainer_run call */
    uint64_t seed;
} nf_train_config;

void nf_train_config_default(nf_train_config *c);

/* One progress report. */
typedef struct nf_train_metrics {
    int64_t step, total_steps;
    int epoch, epochs;
    double train_loss;        /* mean NLL over the batches since the last report */
    double val_loss;          /* latest validation NLL (NAN before the first) */
    double val_bits_per_dim;  /* NAN unless discrete data */
    double best_val_loss;
    double lr, grad_norm;
    double samples_per_second;
    double eta_seconds;
    double nonfinite_sample_fraction;
    int64_t skipped_batches;
    int is_validation;        /* this report follows a validation */
} nf_train_metrics;

typedef struct nf_train_hooks {
    void *user;
    /* after every log_every steps and every validation */
    void (*progress)(void *user, const nf_train_metrics *m);
    /* non-zero stops the run at the next step with NF_ECANCELLED */
    volatile int *cancel;
    /* receives the full state blob (borrowed for the call) every
     * checkpoint_every steps (0 = at every validation); a non-zero return
     * stops the run with that status */
    int (*checkpoint)(void *user, const void *state, size_t len, int64_t step);
    int checkpoint_every;
    /* also checkpoint when this many seconds passed since the last one (0 = off) */
    double checkpoint_seconds;
    /* on cancellation, checkpoint the current state before returning (a
     * daemon shutting down keeps the job resumable) */
    int checkpoint_on_cancel;
} nf_train_hooks;

typedef struct nf_trainer nf_trainer;

/* f, train and val are borrowed and must outlive the trainer; train (ntrain,
 * D) and val (nval, D) rows, nval may be 0 (then no validation, early
 * stopping off).  err gets a message on failure. */
int nf_trainer_create(nf_flow *f, const nf_train_config *cfg, const nf_real *train,
                      int64_t ntrain, const nf_real *val, int64_t nval, nf_trainer **out,
                      char *err, size_t errlen);
void nf_trainer_free(nf_trainer *t);

/* Train until epochs are done, early stopping, cancellation or an error.
 * The flow ends holding the best parameters seen (by validation NLL; the
 * last parameters without validation).  Returns 0, NF_ECANCELLED,
 * NF_ENONFINITE (with a message in nf_trainer_error), or a hook's status. */
int nf_trainer_run(nf_trainer *t, const nf_train_hooks *hooks);
const char *nf_trainer_error(const nf_trainer *t);
/* Metrics at the end (or now). */
void nf_trainer_metrics(const nf_trainer *t, nf_train_metrics *m);

/* The full resumable state: parameters, layer buffers, optimizer moments,
 * best parameters, schedule/early-stopping counters, step and epoch.
 * "NFTS" u32 version ... u32 crc32.  Caller free()s. */
int nf_trainer_save_state(const nf_trainer *t, void **buf, size_t *len);
/* Restore into a trainer created with the same flow architecture, config and
 * data; NF_ECORRUPT / NF_EFORMAT on a bad blob (the trainer is unchanged). */
int nf_trainer_load_state(nf_trainer *t, const void *buf, size_t len);

/* Mean NLL (nats/row) of rows under f, evaluation mode; with dequantize the
 * rows get fixed-seed uniform noise (an unbiased estimate of the
 * dequantization bound).  Rows outside the support count as +inf. */
double nf_eval_nll(const nf_flow *f, const nf_real *x, int64_t n, int dequantize, uint64_t seed);

/* Bits per dimension of a discrete-data NLL measured in the data's own units
 * (pixel units, bins of width 1):  bpd = nll / (D ln 2).  The dequantized NLL
 * upper-bounds the discrete -log P(x), so bpd is an upper bound too. */
double nf_bits_per_dim(double nll, int D);

int nf_sched_parse(const char *s, nf_sched_kind *out);
const char *nf_sched_name(nf_sched_kind k);

#endif
