/* nf.h: the public API of flowd's core, a leaf library of normalizing flows.
 *
 * A flow is a base distribution p_Z and a stack of invertible layers.  Layers
 * are kept in *density order*: layer 0 touches the data, the last layer
 * touches the base.
 *
 *     inverse (density, x -> z):  x = h_0 -> L_0^-1 -> h_1 -> ... -> h_K = z
 *     forward (sampling, z -> x): the same chain run backwards.
 *
 *     log p(x) = log p_Z(z) + sum_k log|det d h_{k+1} / d h_k|
 *
 * Size letters used in shape comments: B batch rows, D data dimension,
 * C context dimension, P parameters, H hidden width.  All row data is
 * row-major (B,D).  nf_real is float (the product); the test suite also
 * builds the same sources with -DNF_DOUBLE so gradients and Jacobians can be
 * checked against finite differences in double precision.
 *
 * Conventions:
 *  - Every function that can fail returns 0 or a negative NF_E* status;
 *    nf_strerror() names it.  Core never prints and never exits.
 *  - Pointers are borrowed unless a comment says "takes" or "caller frees".
 *  - The flow object (config + parameters) is read-only during log_prob,
 *    sample, encode and decode, so many threads may share one flow as long as
 *    each has its own nf_ws workspace.  Training calls mutate the flow.
 *  - No allocation happens inside forward/inverse/backward: an nf_ws is sized
 *    once for a maximum batch; larger requests are processed in chunks.
 */
#ifndef NF_H
#define NF_H

#include <stddef.h>
#include <stdint.h>

#ifdef NF_DOUBLE
typedef double nf_real;
#else
typedef float nf_real;
#endif

/* ---- status codes ------------------------------------------------------ */
enum {
    NF_OK = 0,
    NF_EINVAL = -1,       /* bad argument or config */
    NF_ENOMEM = -2,       /* allocation failed */
    NF_ENONFINITE = -3,   /* NaN or Inf produced or given */
    NF_ECORRUPT = -4,     /* checksum mismatch / truncated data */
    NF_EFORMAT = -5,      /* malformed file or unsupported version */
    NF_ERANGE = -6,       /* value outside the allowed range (batch, dim) */
    NF_EIO = -7,          /* read/write failure */
    NF_ECANCELLED = -8,   /* cancelled by the caller */
    NF_EUNSUPPORTED = -9, /* operation not available for this flow */
    NF_ESTEPS = -10,      /* an ODE solver (cnf layer) passed its max_steps */
    NF_ERR_COUNT = 11     /* number of codes, keep in step with nf_strerror */
};
const char *nf_strerror(int status);

/* ---- random numbers (xoshiro256**, seeded by splitmix64) --------------- */
typedef struct nf_rng {
    uint64_t s[4];
    int has_spare;     /* Box-Muller keeps its second value */
    double spare;
} nf_rng;
void nf_rng_seed(nf_rng *r, uint64_t seed);
uint64_t nf_rng_u64(nf_rng *r);
double nf_rng_uniform(nf_rng *r);  /* [0,1) */
double nf_rng_normal(nf_rng *r);   /* N(0,1) */

/* ---- flows -------------------------------------------------------------- */
typedef struct nf_flow nf_flow;
typedef struct nf_ws nf_ws;

/* Build a flow from a JSON spec (see core/spec.md for the schema):
 *   {"dim":D, "context_dim":C?, "base":{"type":"normal"|"diag_normal"|"mixture",...}?,
 *    "layers":[{"type":"actnorm"},{"type":"affine_coupling","hidden":[64,64]},...]}
 * or a preset:
 *   {"dim":D, "preset":"realnvp"|"maf"|"nsf"|"nsf_ar"|"glow"|"nice"|"iaf", "depth":..,...}
 * Parameters are initialised from "seed" (default 0).  On failure *out is NULL
 * and err (if non-NULL) holds a message.  Caller frees with nf_flow_free. */
int nf_flow_create(const char *spec_json, nf_flow **out, char *err, size_t errlen);
void nf_flow_free(nf_flow *f); /* NULL is a no-op */

int nf_flow_dim(const nf_flow *f);
/* A flow may declare the shape of its rows, "shape": [C, H, W] (C*H*W ==
 * dim, which may then be left out): rows are images stored flat in C-H-W
 * order, and image layers (squeeze, split, conv couplings...) need it.
 * Returns 1 and fills shape when declared, 0 (shape all zero) when not;
 * shape may be NULL. */
int nf_flow_shape(const nf_flow *f, int shape[3]);
int nf_flow_context_dim(const nf_flow *f);
int nf_flow_num_layers(const nf_flow *f);
const char *nf_flow_layer_type(const nf_flow *f, int k);
size_t nf_flow_num_params(const nf_flow *f);
/* Multiply-adds per row of one density pass in the flow's dense products
 * (conditioner networks, LU layers; element-wise work not counted).
 * executed = 0 counts MADE weights as dense, as a masked dense product
 * does; 1 counts what flowd multiplies (MADE staircases skip most masked
 * weights).  For throughput figures: 2 flops per multiply-add. */
double nf_flow_macs_per_row(const nf_flow *f, int executed);
/* (P) contiguous, all layers + base.  The caller may write them: a packed
 * flow (nf_flow_pack) drops its pack here. */
nf_real *nf_flow_params(nf_flow *f);
/* Pack a flow for serving: the conditioner networks' dense weights are
 * transposed once into a second copy that forward-only workspaces
 * (nf_ws_create_inference, NF_WS_INFERENCE) multiply with a kernel that
 * packs nothing per call (core/kern.h nf_gemm_packed).  What a loaded
 * model is for: on W1 (2-D RealNVP, 128x128 layers) a 64-row log_prob
 * spends a third of its products' time in OpenBLAS repacking weights that
 * never change.  Answers agree with an unpacked flow's to float rounding
 * (the sums run in another order).  Costs the packed weights' size again
 * (nf_flow_packed_bytes); layers without a dense net, staircase MADE layers
 * and products with fewer than 8 outputs or more than 1024 inputs stay as
 * they were.  Gradient calls and training workspaces never read the pack.
 * The pack is a snapshot: nf_flow_params, nf_flow_load_params,
 * nf_flow_init, nf_flow_constrain and the gradient calls drop it, and
 * writing the parameters through a pointer kept from before the pack needs
 * nf_flow_pack again.  Call it before the flow is shared between threads.
 * NF_ENOMEM (the flow stays unpacked); 0 and nothing done in the NF_DOUBLE
 * build, without AVX2 (no kernel to read it) or on a flow with nothing to
 * pack. */
int nf_flow_pack(nf_flow *f);
/* The same, unless the packed weights would take more than max_bytes: then
 * the flow stays unpacked (0 returned, nf_flow_packed_bytes 0).  The
 * daemon's cap per model (flowd serve --pack-max-mb). */
int nf_flow_pack_max(nf_flow *f, size_t max_bytes);
void nf_flow_unpack(nf_flow *f);
size_t nf_flow_packed_bytes(const nf_flow *f);
/* (P) mirrors params; allocated on first use (NULL if that fails), so flows
 * that only serve do not carry a gradient buffer. */
nf_real *nf_flow_grad(nf_flow *f);
int nf_flow_zero_grad(nf_flow *f); /* allocates on first use: NF_ENOMEM */
/* The same on a workspace's threads (nf_ws_create_threads; any workspace). */
int nf_flow_zero_grad_ws(nf_flow *f, nf_ws *w);
/* Re-initialise every parameter from seed (final conditioner layers zero, so
 * a fresh flow is the identity map with the base distribution's density). */
void nf_flow_init(nf_flow *f, uint64_t seed);
/* Re-apply structural constraints to parameters (MADE masks zeroed).  Called
 * after loading; training keeps them by masking gradients. */
void nf_flow_constrain(nf_flow *f);

/* The canonical JSON config (explicit layer list, every default filled in);
 * creating a flow from it gives the same architecture.  Caller free()s. */
char *nf_flow_config_json(const nf_flow *f);

/* Parameters and layer state (batch-norm running statistics, act-norm
 * initialised flags) as a versioned little-endian blob with a CRC-32:
 *   "NFPB" u32 version=1 u64 nparams u64 nbuffers f32[nparams] f32[nbuffers] u32 crc32
 * Values are always stored as float32.  *buf is malloc'd, caller free()s. */
int nf_flow_save_params(const nf_flow *f, void **buf, size_t *len);
int nf_flow_load_params(nf_flow *f, const void *buf, size_t len); /* NF_ECORRUPT, NF_EFORMAT */

/* Workspace for batches of at most max_batch rows.  One per thread.
 * NF_ERANGE when it would exceed NF_WS_MAX_BYTES (use fewer rows). */
#define NF_WS_MAX_BYTES ((size_t)4 << 30)
int nf_ws_create(const nf_flow *f, int max_batch, nf_ws **out);
void nf_ws_free(nf_ws *w);
int nf_ws_max_batch(const nf_ws *w);
/* A workspace whose calls split their rows over `threads` threads: the
 * caller's and threads-1 workers that the workspace starts and owns.  Every
 * call below takes it in place of a plain one.  Part t of a call (contiguous
 * rows) runs on thread t with its own scratch, so per-row results are the
 * ones a plain workspace gives (to BLAS's rounding of edge rows, as with
 * chunking), and sampling draws the same base rows for a seed; parameter
 * gradients are summed per part and then added, so they
 * differ from a plain workspace's in the last bits (a training run is
 * reproducible for a given thread count).  Calls with fewer than 8 rows per
 * thread use fewer threads.  Flows with batch-norm layers get a plain
 * workspace (batch statistics span the batch); nf_ws_threads says which.
 * Each part calls BLAS, so keep BLAS to one thread
 * (openblas_set_num_threads(1)) or the two kinds of threads fight for the
 * cores.  A threaded workspace still belongs to one calling thread. */
int nf_ws_create_threads(const nf_flow *f, int max_batch, int threads, nf_ws **out);
int nf_ws_threads(const nf_ws *w);
/* A forward-only workspace: log_prob, encode, decode and sample (and the
 * gradient calls without weights) work; a gradient asked of it is
 * NF_EUNSUPPORTED.  Layers share one scratch region and the rows two
 * buffers, so it holds the largest layer's scratch instead of every
 * layer's: what a server keeps per thread and model (W2, a 5-layer MAF on
 * 784 dims, at 256 rows: ~12 MB instead of ~70). */
int nf_ws_create_inference(const nf_flow *f, int max_batch, nf_ws **out);
/* The general form: threads as nf_ws_create_threads, flags NF_WS_INFERENCE. */
#define NF_WS_INFERENCE 1u
int nf_ws_create_ex(const nf_flow *f, int max_batch, int threads, unsigned flags, nf_ws **out);

/* log p(x | ctx) for B rows (any B: chunked by the workspace size).
 * x (B,D), ctx (B,C) or NULL when C == 0, out (B).  A row where the density is
 * not defined (outside the support, e.g. logit of a value outside (0,1)) gets
 * -INFINITY; the call still succeeds. */
int nf_flow_log_prob(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx,
                     int B, nf_real *out);

/* Exact encode: z = T^-1(x) (B,D), logdet (B) = log|det dz/dx| (may be NULL). */
int nf_flow_encode(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx,
                   int B, nf_real *z, nf_real *logdet);
/* Exact decode: x = T(z) (B,D), logdet (B) = log|det dx/dz| (may be NULL). */
int nf_flow_decode(const nf_flow *f, nf_ws *w, const nf_real *z, const nf_real *ctx,
                   int B, nf_real *x, nf_real *logdet);

/* Draw n samples: z ~ base with its standard deviations scaled by temperature
 * T > 0, x = T(z).  ctx (n,C) or NULL.  log_prob (n), if non-NULL, receives
 * the model's (untempered) log p(x) = log p_Z(z) - log|det dx/dz|.  The same
 * seed gives the same samples whatever the workspace size. */
int nf_flow_sample(const nf_flow *f, nf_ws *w, int n, double temperature, uint64_t seed,
                   const nf_real *ctx, nf_real *x, nf_real *log_prob);

/* ---- continuous flows (cnf layers, core/cnf.c) ---------------------------
 * A cnf layer solves an ODE per pass.  Each workspace counts what its
 * solves cost; a threaded workspace sums its threads'.  NFE is counted per
 * batched evaluation of the dynamics (one evaluation of the rows still
 * integrating, the figure a batch-stepping solver such as torchdiffeq
 * reports) and per row. */
typedef struct nf_ode_stats {
    uint64_t solves;        /* ODE solves: one per cnf layer, pass and chunk */
    uint64_t rows;          /* rows those solves integrated */
    uint64_t nfe;           /* batched dynamics evaluations of passes */
    uint64_t nfe_backward;  /* the same in gradient passes (backprop's
                               recomputation, adjoint solves), each also a
                               vector-Jacobian product */
    uint64_t row_nfe;       /* evaluations counted per row, both kinds */
    uint64_t accepted, rejected; /* steps, counted per row */
    double kinetic;         /* training passes: sum over rows of ∫|f|^2 dt */
    double jacobian;        /* ... and of ∫||df/dz||_F^2 dt (an estimate
                               with the Hutchinson trace) */
    uint64_t reg_rows;      /* rows those two sums are over */
} nf_ode_stats;
/* Sum of w's counters since its creation or the last reset. */
void nf_ws_ode_stats(const nf_ws *w, nf_ode_stats *out);
void nf_ws_ode_stats_reset(nf_ws *w);
/* The seed of stochastic trace probes (Hutchinson) for the next calls on w:
 * a row's probe is a function of (seed, layer, row index in the call), so
 * it does not depend on chunking or threads.  Default 0.  The trainer sets
 * it from (seed, step) so a resumed run draws the same probes. */
void nf_ws_set_noise_seed(nf_ws *w, uint64_t seed);
/* Pacing: with pace set, every thread working on a pass of w calls
 * pace(user, work_s) before each layer after the pass' first, work_s the
 * seconds since its previous call (or the pass' start).  pace may block:
 * a daemon holds training back there while it answers requests, so a
 * held step costs the requests at most one layer's work.  It is called
 * from several threads at once.  NULL (the default) turns it off. */
void nf_ws_set_pace(nf_ws *w, void (*pace)(void *user, double work_s), void *user);
/* 1 when log_prob, encode and decode of f are exact up to solver tolerance
 * (no cnf layer scores with a stochastic trace: dim above
 * NF_CNF_EXACT_MAX), 0 when log_prob is a Hutchinson estimate. */
int nf_flow_log_prob_exact(const nf_flow *f);
/* Number of cnf layers of f. */
int nf_flow_num_ode(const nf_flow *f);
/* How the flow's cnf layers score, as JSON text (caller free()s; NULL when
 * f has no cnf layer or on allocation failure):
 *   {"layers":[{"layer":k,"solver","rtol","atol","max_steps" | "steps",
 *               "trace" (scoring),"train_trace","probe","gradient",
 *               "reg_kinetic","reg_jacobian"}...],
 *    "trace":"exact"|"hutchinson","log_prob_exact":bool} */
char *nf_flow_ode_json(const nf_flow *f);
/* The same from a flow's canonical config (nf_flow_config_json, what a
 * model file and the model registry store), without building the flow. */
char *nf_config_ode_json(const char *config_json);
/* Exact traces: the default training trace of a cnf layer up to this dim;
 * scoring (log_prob, encode, decode) uses the exact trace up to
 * NF_CNF_EXACT_MAX (the largest dim "trace": "exact" accepts) and the
 * Hutchinson estimate above (docs/cnf.md has the measurements). */
#define NF_CNF_EXACT_DEFAULT 8
#define NF_CNF_EXACT_MAX 64

/* ---- training primitives ------------------------------------------------ */
/* One pass of log p(x|ctx) and its exact gradient.  B <= max_batch.
 * training != 0: batch-norm layers use batch statistics and update their
 * running averages.  logp (B) is written if non-NULL.  With upstream weights
 * dlogp (B) (e.g. -1/B for mean NLL), accumulates d(sum_b dlogp_b logp_b)/dθ
 * into nf_flow_grad(f) (caller zeroes), writes dx (B,D) if non-NULL and
 * accumulates dctx (B,C) if non-NULL. */
int nf_flow_log_prob_grad(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                          int training, const nf_real *dlogp, nf_real *logp,
                          nf_real *dx, nf_real *dctx);
/* The same with a log-det L2 penalty: differentiates
 *   sum_b dlogp_b log p(x_b) + ld_l2 * sum_b LD_b^2
 * (with training != 0, cnf layers' regularisers are part of log p here:
 * sum_b dlogp_b (log p(x_b) - λ_K K_b - λ_J J_b), see core/cnf.c)
 * where LD_b is the row's total log|det dz/dx|; logdet (B) receives LD if
 * non-NULL. */
int nf_flow_log_prob_grad_ex(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                             int training, const nf_real *dlogp, double ld_l2, nf_real *logp,
                             nf_real *logdet, nf_real *dx, nf_real *dctx);
/* Data-dependent initialisation (act-norm): run x through the layers in
 * density order, letting each not-yet-initialised act-norm set its scale and
 * bias so its output has zero mean and unit variance on this batch. */
int nf_flow_data_init(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B);
/* The density pass as a plain conditional map, no base distribution:
 * out (B,D) = T^-1(x | ctx), logdet (B) = log|det d out/dx| (either may be
 * NULL).  With dout (B,D) = dL/dout given, also differentiates
 *   L = sum_b dout_b . out_b + dlogdet_w_b logdet_b   (dlogdet_w (B) or NULL = 0)
 * accumulating dL/dθ into nf_flow_grad(f), writing dx (B,D) and accumulating
 * dctx (B,C) (each may be NULL).  B <= max_batch.  Variational
 * dequantization uses it to sample u given x. */
int nf_flow_transform_grad(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                           int training, const nf_real *dout, const nf_real *dlogdet_w,
                           nf_real *out, nf_real *logdet, nf_real *dx, nf_real *dctx);
/* Its backward half alone, after nf_flow_transform_grad with dout NULL and the
 * same w, x, ctx, B, training (dL/dout is often known only once out is). */
int nf_flow_transform_backward(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                               int training, const nf_real *dout, const nf_real *dlogdet_w,
                               nf_real *dx, nf_real *dctx);

/* ---- optimisation -------------------------------------------------------- */
typedef enum { NF_OPT_ADAM = 0, NF_OPT_ADAMW = 1, NF_OPT_COUNT } nf_opt_kind;
typedef struct nf_adam {
    nf_opt_kind kind;
    double beta1, beta2, eps;
    double weight_decay; /* Adam: L2 added to the gradient; AdamW: decoupled */
    size_t n;
    int64_t t;           /* steps taken */
    nf_real *m, *v;      /* (n) first and second moments */
} nf_adam;
/* Defaults beta1 0.9, beta2 0.999, eps 1e-8.  Free with nf_adam_free. */
int nf_adam_init(nf_adam *o, nf_opt_kind kind, size_t n, double weight_decay);
void nf_adam_free(nf_adam *o);
/* Bias-corrected Adam/AdamW step with learning rate lr. */
void nf_adam_step(nf_adam *o, nf_real *params, const nf_real *grad, double lr);
/* The same step on the threads of w (w may be plain or NULL: one thread);
 * the same result as nf_adam_step. */
void nf_adam_step_ws(nf_adam *o, nf_ws *w, nf_real *params, const nf_real *grad, double lr);
/* Global L2 norm of grad; if max_norm > 0 and the norm exceeds it, grad is
 * scaled to max_norm.  Returns the norm before clipping (NaN if non-finite). */
double nf_clip_grad_norm(nf_real *grad, size_t n, double max_norm);
/* The same on the threads of w (plain or NULL: one thread).  The sum of
 * squares is taken in one part per thread and the parts added in order, so
 * the norm can differ from nf_clip_grad_norm's in the last bits. */
double nf_clip_grad_norm_ws(nf_ws *w, nf_real *grad, size_t n, double max_norm);
/* The training step's passes over the parameters, fused (the trainer's
 * path; bench_core's too).  A threaded gradient call sums its threads'
 * parts into the gradient and takes its sum of squares on the way:
 * nf_ws_grad_sumsq gives it (1, *ss: bit for bit what
 * nf_clip_grad_norm_ws(w, grad, n, ...) would square and add) when the last
 * gradient call on w left it for this buffer of n values, else 0.  A
 * change to grad other than through w's gradient calls is not seen: say
 * so with nf_ws_grad_changed (the trainer does after an MPI allreduce).
 * nf_grad_norm_ws is that norm, or nf_clip_grad_norm_ws(w, grad, n, 0)'s
 * pass where there is none.  nf_adam_step_scaled_ws is nf_adam_step_ws on
 * the gradient scaled by gscale (as nf_clip_grad_norm_ws scales it:
 * rounded to nf_real) that leaves the gradient zero, so the next step
 * needs no zeroing pass: clip + step + zeroing in one pass, with the same
 * parameters and moments. */
int nf_ws_grad_sumsq(const nf_ws *w, const nf_real *grad, size_t n, double *ss);
void nf_ws_grad_changed(nf_ws *w);
double nf_grad_norm_ws(nf_ws *w, nf_real *grad, size_t n);
void nf_adam_step_scaled_ws(nf_adam *o, nf_ws *w, nf_real *params, nf_real *grad, double lr,
                            double gscale);
/* Optimizer state as a blob: "NFOP" u32 version u32 kind f64 b1 b2 eps wd u64 n
 * i64 t f32 m[n] f32 v[n] u32 crc32.  Caller free()s. */
int nf_adam_save(const nf_adam *o, void **buf, size_t *len);
int nf_adam_load(nf_adam *o, const void *buf, size_t len);

/* CRC-32 (zlib polynomial) used by every blob format. */
uint32_t nf_crc32(const void *buf, size_t len);

#endif
