/* train.h: maximum-likelihood training of a flow.
 *
 * The objective is the mean negative log-likelihood over mini-batches,
 *     L(θ) = -1/B sum_b log p_θ(y_b) + λ 1/B sum_b LD_b^2
 * where y_b is the batch row (plus dequantization noise u ~ U[0,1)^D for
 * integer data, or u ~ q(u|x) from a variational dequantizer, below, with
 * + log q(u_b|x_b) added to the loss), LD_b the flow's total log-det for
 * that row, and λ the optional Jacobian (log-det) L2 penalty.
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
 * run is a pure function of (seed, data, config, BLAS and training thread
 * counts), and the state blob (nf_trainer_save_state) resumes it bit for
 * bit (with the same thread counts): a run stopped at
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
    int hflip;                /* augmentation: each training row is mirrored
                                 left-right with probability 1/2 (per step,
                                 from (seed, step)); needs the flow's image
                                 shape (nf_flow_shape), see nf_augment_hflip.
                                 Validation and test rows never are */
    int threads;              /* threads of the training workspace
                                 (nf_ws_create_threads), default 1; set by the
                                 process (flowd train --threads, the daemon's
                                 --train-threads), not by the job JSON.  A run
                                 is reproducible for a given thread count */
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
    double held_seconds;      /* this run's time held back by the pace hook (a thread's average) */
    double nonfinite_sample_fraction;
    int64_t skipped_batches;
    int is_validation;        /* this report follows a validation */
    /* continuous flows (ode: the number of cnf layers; 0 and the rest 0
     * without them): per
     * training step since the last report, the batched dynamics
     * evaluations of the density pass (nfe_forward) and of pass plus
     * gradient (nfe), summed over the cnf layers (a threaded workspace's
     * parts each solve their rows: the figures are per part), and the
     * regularisers' integrals averaged over rows */
    int ode;
    double nfe, nfe_forward, kinetic, jacobian;
} nf_train_metrics;

/* Data parallelism (docs/scale-out.md): P processes ("ranks") each hold the
 * whole flow and train on the same data; every rank gathers the same global
 * batch of B rows (permutation, flips and dequantization noise from (seed,
 * step) as always) and takes rows [r B/P, (r+1) B/P) of it.  The per-row
 * gradient weights stay -1/B, so the sum of the ranks' gradients is the
 * one-process gradient of the global batch; sum() adds it up in place
 * (an MPI_Allreduce in flowd; core/ knows nothing of MPI), sum_f64() the
 * loss sum and the step's flags, and every rank then takes the identical
 * optimizer step.  Rank 0 alone validates and hands its scores to the others
 * with bcast_f64(), so early stopping and the plateau schedule agree.
 * Cancellation and the max_seconds budget are decided together: each rank
 * votes in the step's sum, and all stop after the same step.
 * The ops must give bit-identical results on every rank (MPI_Allreduce does
 * with OpenMPI's algorithms: each element is reduced once and the result
 * copied, or reduced in the same order everywhere).  They return 0, or
 * non-zero to stop the run with NF_EIO.
 * Not with a variational dequantizer or batchnorm layers (their batch
 * statistics would be per rank): nf_trainer_run answers NF_EUNSUPPORTED.
 * Continuous flows train, but the Hutchinson probes differ from one
 * process's (each rank draws them for its rows). */
typedef struct nf_train_dist {
    int rank, size;           /* 0 <= rank < size; size <= batch_size */
    void *user;
    int (*sum)(void *user, nf_real *buf, size_t n);
    int (*sum_f64)(void *user, double *buf, size_t n);
    int (*bcast_f64)(void *user, double *buf, size_t n); /* from rank 0 */
} nf_train_dist;

typedef struct nf_train_hooks {
    void *user;
    /* data-parallel training (NULL: one process); read at the start of
     * nf_trainer_run, borrowed for the run */
    const nf_train_dist *dist;
    /* after every log_every steps and every validation */
    void (*progress)(void *user, const nf_train_metrics *m);
    /* non-zero stops the run at the next step with NF_ECANCELLED */
    volatile int *cancel;
    /* receives the full state blob every checkpoint_every steps (0 = at
     * every validation); a non-zero return stops the run with that status.
     * The blob is borrowed for the call, unless checkpoint_takes_state is
     * set: then the hook owns it and must free() it, now or
     * later (a daemon hands it to a writer thread and trains on). */
    int (*checkpoint)(void *user, void *state, size_t len, int64_t step);
    int checkpoint_every;
    int checkpoint_takes_state;
    /* also checkpoint when this many seconds passed since the last one (0 = off) */
    double checkpoint_seconds;
    /* optional: asked when a time-based checkpoint falls due (after
     * checkpoint_seconds); 0 puts it off, and it is asked again at the next
     * step.  Lets the caller space snapshots by what they cost it. */
    int (*checkpoint_due)(void *user, double seconds_since_last);
    /* on cancellation, checkpoint the current state before returning (a
     * daemon shutting down keeps the job resumable) */
    int checkpoint_on_cancel;
    /* optional: each training batch x (B,D) as the step is about to use it,
     * after augmentation and uniform dequantization noise (borrowed for
     * the call; for tests and diagnostics) */
    void (*batch)(void *user, const nf_real *x, int B, int D, int64_t step);
    /* optional: installed on the run's workspaces (nf_ws_set_pace): each
     * training thread calls it between the layers of every pass (steps,
     * validation, the sample check) with the seconds of work since its
     * last call; it may block (a daemon holds training back there while it
     * answers requests).  Called from several threads at once.  The time
     * spent in it shows as held_seconds. */
    void (*pace)(void *user, double work_s);
} nf_train_hooks;

typedef struct nf_trainer nf_trainer;

/* f, train and val are borrowed and must outlive the trainer; train (ntrain,
 * D) and val (nval, D) rows, nval may be 0 (then no validation, early
 * stopping off).  err gets a message on failure. */
int nf_trainer_create(nf_flow *f, const nf_train_config *cfg, const nf_real *train,
                      int64_t ntrain, const nf_real *val, int64_t nval, nf_trainer **out,
                      char *err, size_t errlen);
void nf_trainer_free(nf_trainer *t);

/* A conditional flow (context_dim C > 0) trains on p(x | c): train_ctx
 * (ntrain, C) and val_ctx (nval, C; NULL when nval is 0) hold the context
 * row of each training and validation row (borrowed, must outlive the
 * trainer).  Set once, before nf_trainer_run, which refuses a conditional
 * flow without it (NF_EINVAL).  The validation's sample check draws with
 * the validation rows' contexts.  The state blob records that the run is
 * conditional. */
int nf_trainer_set_context(nf_trainer *t, const nf_real *train_ctx, const nf_real *val_ctx,
                           char *err, size_t errlen);

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

/* The optimizer state of the model flow alone (Adam/AdamW moments and step
 * count: nf_adam_save's blob), published with a version for warm starts.
 * load: into a trainer of a flow with the same number of parameters and
 * the same optimizer kind; NF_EFORMAT otherwise (the trainer unchanged). */
int nf_trainer_save_optimizer(const nf_trainer *t, void **buf, size_t *len);
int nf_trainer_load_optimizer(nf_trainer *t, const void *buf, size_t len);

/* Horizontal-flip augmentation of B image rows x (B, C*H*W), C-H-W order:
 * each row, with probability 1/2 (one nf_rng_u64 draw of rng per row, in
 * row order), is mirrored left-right in every channel and image row,
 *     x[c][i][j] <-> x[c][i][W-1-j].
 * A flow's density of a mirrored image is learnt from the same data, so the
 * augmented training set is the data plus its mirror images.  The trainer
 * calls it on each training batch (cfg.hflip) with an rng seeded from
 * (seed, step), so a resumed run draws the same flips.  Returns the number
 * of rows mirrored. */
int nf_augment_hflip(nf_real *x, int B, const int shape[3], nf_rng *rng);

/* Mean NLL (nats/row) of rows under f, evaluation mode; with dequantize the
 * rows get fixed-seed uniform noise (an unbiased estimate of the
 * dequantization bound).  Rows outside the support count as +inf. */
double nf_eval_nll(const nf_flow *f, const nf_real *x, int64_t n, int dequantize, uint64_t seed);
/* The same for a conditional flow: ctx (n,C) the rows' contexts (NULL when
 * C == 0; NAN when missing). */
double nf_eval_nll_ctx(const nf_flow *f, const nf_real *x, const nf_real *ctx, int64_t n,
                       int dequantize, uint64_t seed);

/* Bits per dimension of a discrete-data NLL measured in the data's own units
 * (pixel units, bins of width 1):  bpd = nll / (D ln 2).  The dequantized NLL
 * upper-bounds the discrete -log P(x), so bpd is an upper bound too. */
double nf_bits_per_dim(double nll, int D);

/* ---- variational dequantization (Ho et al. 2019, Flow++) ----------------
 * Instead of u ~ U[0,1)^D, the noise comes from a conditional flow q(u|x)
 * trained jointly with the model p, maximising the bound
 *     log P(x) >= E_{u~q(.|x)} [ log p(x + u) - log q(u|x) ].
 * q is an nf_flow over D dims with context_dim D (context c = x/levels - 1/2)
 * whose density pass is used as the sampler:
 *     eps ~ N(0,I),  v = q^-1(eps | c),  ld = log|det dv/deps|,  u = sigmoid(v)
 *     log q(u|x) = log N(eps) - ld - sum_d log(s_d (1 - s_d)),  s = sigmoid(v)
 * (q's own base distribution is not used.)  The training loss per batch is
 * L = -1/B sum_b [log p(x_b + u_b) - log q(u_b|x_b)]; the model's gradient
 * dL/dy (y = x + u) reaches q through
 *     dL/dv = dL/dy s(1-s) - (1-2s)/B,   dL/d ld = -1/B.
 * With a dequantizer the validation NLL is minus the mean bound (fixed-seed
 * eps), still an upper bound on -log P(x). */

/* Attach q (borrowed, must outlive the trainer) before nf_trainer_run or
 * nf_trainer_load_state.  Needs cfg.dequantize, q's dim == D and
 * context_dim == D.  q gets its own Adam state with the same optimizer
 * settings and schedule; gradient clipping is by the global norm over both
 * flows; q is part of the state blob and of the best-parameter snapshot. */
int nf_trainer_set_dequantizer(nf_trainer *t, nf_flow *q, char *err, size_t errlen);

/* The bound log p(x+u) - log q(u|x) for n integer rows x (n,D) with one
 * eps draw per row from rng (rows in order, so the result does not depend
 * on chunking); ctx is the model's context (n,C) or NULL.  wf is a
 * workspace of f (rows are processed in chunks of its size).  out (n); a
 * row outside the support gets -INFINITY. */
int nf_vdeq_log_prob(const nf_flow *f, nf_ws *wf, const nf_flow *q, const nf_real *x,
                     const nf_real *ctx, int64_t n, int levels, nf_rng *rng, nf_real *out);
/* Mean negative bound (nats/row), fixed seed; NAN on failure, +inf if a row
 * is outside the support. */
double nf_eval_nll_vdeq(const nf_flow *f, const nf_flow *q, const nf_real *x, int64_t n,
                        int levels, uint64_t seed);
/* ... with the model's context rows ctx (n,C), or NULL when C == 0 */
double nf_eval_nll_vdeq_ctx(const nf_flow *f, const nf_flow *q, const nf_real *x,
                            const nf_real *ctx, int64_t n, int levels, uint64_t seed);

/* One batch of the joint objective, the trainer's step without the
 * optimizer (exposed for tests):  x (B,D) integer rows, eps (B,D) the
 * N(0,I) draws;  *loss = 1/B sum_b [ -(log p(y_b) - log q(u_b|x_b))
 * + jacobian_l2 LD_b^2 ] (LD: the model's log-det), and its gradient is
 * accumulated (+=) into nf_flow_grad(f) and nf_flow_grad(q).  wf and wq are
 * workspaces of f and q for at least B rows; scratch holds
 * nf_vdeq_scratch_size(B, D) reals and is malloc'd (aligned for double).  training: batch statistics (and
 * act-norm data init of f).  NF_ENONFINITE if a row left the support. */
size_t nf_vdeq_scratch_size(int B, int D);
int nf_vdeq_grad(nf_flow *f, nf_ws *wf, nf_flow *q, nf_ws *wq, const nf_real *x,
                 const nf_real *eps, int B, int levels, int training, double jacobian_l2,
                 nf_real *scratch, double *loss);
/* The same for a conditional model p(x | c): ctx (B,C) its context rows
 * (NULL when C == 0).  q's own context stays x/levels - 1/2. */
int nf_vdeq_grad_ctx(nf_flow *f, nf_ws *wf, nf_flow *q, nf_ws *wq, const nf_real *x,
                     const nf_real *ctx, const nf_real *eps, int B, int levels, int training,
                     double jacobian_l2, nf_real *scratch, double *loss);

int nf_sched_parse(const char *s, nf_sched_kind *out);
const char *nf_sched_name(nf_sched_kind k);

#endif
