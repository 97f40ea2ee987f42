/* nf_internal.h: how layers, conditioner networks and the flow fit together.
 * Not installed; used by the core sources and the unit tests.
 *
 * A map of core/ (nf.h is its public API), each stage using only those
 * before it.  Runtime: alloc.c/alloc.h (every allocation, and cJSON's,
 * behind a hook tests can fail), util.c (status strings, RNG, CRC-32, the
 * JSON getters of nf_json.h and the BLAS calls declared below),
 * blob.c/blob.h (little-endian blobs with a CRC trailer: every binary
 * format), npy.c/npy.h (.npy headers), pool.c/pool.h (the thread team of a
 * workspace), kern.c/kern.h (hand-written kernels).  Layers: one
 * file per family, each defining the constructor declared below --
 * elementwise.c (actnorm, permute, leaky_relu, batchnorm, logit,
 * elementwise_affine), lu.c, coupling.c, autoregressive.c, cnf.c (continuous
 * flows: ODE solvers and their gradients), spline.c (rqs.h:
 * the scalar spline), conv_coupling.c (image couplings), image.c (squeeze,
 * split, channel_actnorm, invconv: the other image layers) -- on the
 * conditioner networks of net.c (made_inc.h: incremental MADE) and conv.c
 * (conv.h: convolutions and convolutional networks), and base.c for the
 * base distributions.  Flow and presets: flow.c (the layer
 * registry nf_layer_kinds, building a flow from a spec, workspaces, the
 * passes and their gradients, parameter blobs) and presets.c (a table of
 * presets expanded into explicit specs).  Then optim.c (Adam/AdamW and its
 * state), dequant.c (uniform and variational dequantization, shared by the
 * trainer and the model), train.c/train.h (the trainer: batches,
 * validation, checkpoints), model.c/model.h (the model file: spec,
 * preprocessing, parameters) and data.c/data.h (loaders, the CSV writer and
 * toy generators), and evaluate.c/evaluate.h (a model's samples judged by
 * MMD and nearest training rows, next to its test likelihood).  Last,
 * job.c/job.h: a training job of the HTTP API (its train block a field
 * table), which ties data, presets, trainer, model and evaluation
 * together.  docs/architecture.md says which files and tests to
 * touch to add a layer, a preset, a route or a migration.
 *
 * A layer is a struct nf_layer with a table of operations (nf_layer_ops).
 * Parameters of all layers live in one contiguous buffer owned by the flow;
 * a layer sees params + L->param_off.  The gradient buffer mirrors it.
 * Non-trainable state (batch-norm running stats, act-norm flags) lives in a
 * second buffer, "buffers", at L->buf_off.
 *
 * Direction names (see nf.h):
 *   inverse: x -> z (density direction), logdet += log|det dz/dx| per row
 *   forward: z -> x (sampling direction), logdet += log|det dx/dz| per row
 * backward differentiates the *inverse* call (the one training uses):
 *   given x, the z it produced, dz = dL/dz (B,D) and dlogdet = dL/dlogdet (B),
 *   it writes dx = dL/dx (B,D) (=, not +=; may be NULL when not wanted),
 *   accumulates dL/dθ into grad (+=), and accumulates dL/dctx into dctx (+=,
 *   may be NULL).  It may read the scratch that the preceding inverse call on
 *   the same x wrote into ws: callers must call inverse then backward with the
 *   same ws, x, ctx, B and training flag.
 * x and z never alias.  ws holds ops->ws_size(L, B) nf_reals.
 */
#ifndef NF_INTERNAL_H
#define NF_INTERNAL_H

#include "nf.h"
#include "nf_json.h"
#include <cjson/cJSON.h>

typedef struct nf_layer nf_layer;

typedef struct nf_ctx {
    const nf_real *params;  /* this layer's parameters */
    nf_real *grad;          /* this layer's gradient (backward only), may be NULL */
    nf_real *buffers;       /* this layer's non-trainable state */
    const nf_real *ctx;     /* (B,C) context rows or NULL */
    nf_real *dctx;          /* (B,C) context gradient (+=) or NULL */
    nf_real *ws;            /* scratch of ws_size(B) */
    int B;
    int training;           /* batch-norm: batch stats + running-average update */
    int infer;              /* forward-only workspace: no backward will follow,
                               so keep nothing for it */
    nf_ode_stats *ode;      /* the workspace's ODE counters (cnf layers) or NULL */
    uint64_t noise_seed;    /* stochastic layers' seed (nf_ws_set_noise_seed) */
    int64_t row0;           /* index of row 0 of this call in the caller's rows */
    const nf_real *wreg;    /* backward of a training log_prob_grad: (B) weights
                               -dlogp_b of the layers' regularisers, else NULL */
    int no_logdet;          /* forward (sampling) only: nobody reads the log-det,
                               so a layer may leave it out (cnf: no trace) */
    const nf_real *wt;      /* the packed weights of this layer's net
                               (nf_flow_pack; inference workspaces only) or NULL */
} nf_ctx;

typedef struct nf_layer_ops {
    const char *type;
    size_t (*ws_size)(const nf_layer *L, int B);
    /* optional: the scratch of a forward-only workspace (nf_ctx.infer: no
     * backward follows, so nothing need be kept for it) when smaller than
     * ws_size; NULL: ws_size */
    size_t (*ws_size_infer)(const nf_layer *L, int B);
    void (*init)(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng);
    /* Return 0, or NF_ENONFINITE if a row left the domain (the row's logdet is
     * then -INFINITY for inverse; callers treat such rows as out of support). */
    int (*inverse)(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z, nf_real *logdet);
    int (*forward)(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x, nf_real *logdet);
    void (*backward)(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                     const nf_real *dz, const nf_real *dlogdet, nf_real *dx);
    /* optional: data-dependent init from a batch x (B,D) in the density direction */
    void (*data_init)(const nf_layer *L, nf_real *params, nf_real *buffers, const nf_real *x, int B);
    /* optional: enforce structural zeros (masks) on params */
    void (*constrain)(const nf_layer *L, nf_real *params);
    /* add this layer's canonical spec fields to obj (type is added by caller) */
    void (*to_json)(const nf_layer *L, cJSON *obj);
    void (*destroy)(nf_layer *L); /* frees L->impl, not L */
    /* optional: multiply-adds per row of one density pass in dense products;
     * executed = 0 counts masked weights too (nf_flow_macs_per_row) */
    double (*macs)(const nf_layer *L, int executed);
    /* optional: the layer's conditioner net, whose dense weights
     * nf_flow_pack transposes once (nf_ctx.wt then points at them) */
    struct nf_net *(*net)(const nf_layer *L);
} nf_layer_ops;

struct nf_layer {
    const nf_layer_ops *ops;
    int D, C;              /* data and context dimensions */
    /* Image layers (flows with a "shape"): the layer acts on the first
     * shape[0]*shape[1]*shape[2] entries of each row, an image of
     * (channels, height, width) stored C-H-W, and copies the rest of the row
     * (channels factored out by earlier splits) unchanged.  build() sets
     * shape and out_shape to the current shape before the constructor (all
     * zero in flows without one); a constructor that changes the shape
     * (squeeze, split) sets out_shape, and later layers see it.  Vector
     * layers ignore both and act on the whole row. */
    int shape[3], out_shape[3];
    size_t nparams, param_off;
    size_t nbuffers, buf_off;
    void *impl;            /* layer-specific, owned */
};

/* Layer constructors: parse spec (borrowed) and fill L (ops, nparams,
 * nbuffers, impl); D, C are already set.  Return 0 or NF_EINVAL with a
 * message in err.  Unknown fields in spec are an error (caught by the
 * caller's key check), missing ones take defaults. */
typedef int (*nf_layer_ctor)(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
typedef struct { const char *type; nf_layer_ctor ctor; } nf_layer_kind;
extern const nf_layer_kind nf_layer_kinds[]; /* terminated by {NULL,NULL} */

int nf_actnorm_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_permute_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_lu_linear_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_additive_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_affine_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_maf_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_iaf_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_spline_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_spline_ar_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_leaky_relu_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_batchnorm_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_logit_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_elementwise_affine_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
/* image layers (core/image.c): flows with a "shape" */
int nf_squeeze_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_split_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_channel_actnorm_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_invconv_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
int nf_conv_coupling_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
/* continuous flows (core/cnf.c) */
int nf_cnf_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen);
typedef struct nf_cnf_desc {
    const char *solver, *train_trace, *score_trace, *probe, *gradient;
    int steps, max_steps;
    double rtol, atol, reg_kinetic, reg_jacobian;
} nf_cnf_desc;
/* 1 and d filled when L is a cnf layer, else 0 */
int nf_cnf_info(const nf_layer *L, nf_cnf_desc *d);

/* ---- LU-parameterised matrices (core/lu.c) --------------------------------
 * lu_linear and invconv hold an invertible (n,n) matrix through M = Lf Ut,
 * Lf unit lower triangular and Ut = U + diag(sign * exp(log_s)) with U
 * strictly upper.  Packed parameters: l, the strict lower part row-major
 * (n(n-1)/2, L_ij at nf_lu_lidx(i,j), j < i), u, the strict upper part
 * row-major (n(n-1)/2, U_ij at nf_lu_uidx(n,i,j), j > i), log_s (n); sign
 * (n) holds +-1, or is NULL for all +1.  log|det M| = sum log_s. */
static inline size_t nf_lu_lidx(int i, int j) { return (size_t)i * (i - 1) / 2 + j; }
static inline size_t nf_lu_uidx(int n, int i, int j) {
    return (size_t)i * (n - 1) - (size_t)i * (i - 1) / 2 + (size_t)(j - i - 1);
}
/* the dense factors Lf, Ut (n,n) */
void nf_lu_factors(int n, const nf_real *l, const nf_real *u, const nf_real *log_s,
                   const nf_real *sign, nf_real *Lf, nf_real *Ut);
/* Through M = Lf Ut: given dM = dL/dM (n,n), gl, gu, gls += dL/dl, dL/du,
 * dL/dlog_s, where dld (the weight of sum log_s in L: the log-det's term)
 * is added to every gls.  dLf, dUt: (n,n) scratch each. */
void nf_lu_factors_backward(int n, const nf_real *Lf, const nf_real *Ut, const nf_real *dM,
                            const nf_real *log_s, const nf_real *sign, double dld, nf_real *dLf,
                            nf_real *dUt, nf_real *gl, nf_real *gu, nf_real *gls);
/* A (n,n) row-major, double = P L U by partial pivoting: A is overwritten
 * with L's strict lower part and U (diagonal included), and row i of L U is
 * row perm[i] of the original A.  NF_EINVAL when A is singular. */
int nf_lu_decompose(int n, double *A, int *perm);

/* ---- presets (core/presets.c) ---------------------------------------------
 * Expand {"dim", "preset", "depth"?, "hidden"?, ...} into an explicit flow
 * spec {"dim", "seed", "layers":[...], ...} (*out, the caller's to delete).
 * Returns 0, NF_EINVAL with a message in err, or NF_ENOMEM. */
int nf_preset_expand(const cJSON *spec, cJSON **out, char *err, size_t errlen);
/* 1 when a flow spec ({"preset"...} or {"layers":[...]}) is an image
 * architecture given a shape: an image preset without vector overrides, or
 * a layer list holding an image layer */
int nf_flow_spec_is_image(const cJSON *spec);
/* the name of preset i (0, 1, ...; table order), NULL past the last */
const char *nf_preset_name(int i);

/* ---- conditioner networks (core/net.c) ------------------------------------
 * A net maps an input row u (in) plus an optional context row c (ctx) to an
 * output row (out).  Weights of a linear layer are W (out,in) row-major then
 * b (out); the first linear layer has in + ctx columns, the input columns
 * first.  The final linear layer is initialised to zero.
 *   mlp:    h = act(W1 [u,c] + b1); ...; out = Wk h + bk
 *   resnet: h = W0 [u,c] + b0; h += W2 act(W1 act(h) + b1) + b2 (nblocks
 *           times); out = Wf act(h) + bf
 *   made:   an mlp whose weights are masked so out unit (i,p) (index i*P+p)
 *           depends only on inputs j with deg(j) < deg(i); context columns
 *           have degree 0 and reach every hidden unit.
 * Masked weights are kept at exactly zero: init zeroes them, backward masks
 * their gradient, nf_net_constrain re-zeroes after a load.
 */
typedef enum { NF_ACT_RELU = 0, NF_ACT_TANH, NF_ACT_ELU, NF_ACT_COUNT } nf_act;
typedef enum { NF_NET_MLP = 0, NF_NET_RESNET, NF_NET_MADE, NF_NET_COUNT } nf_net_kind;
typedef enum { NF_ORDER_ASC = 0, NF_ORDER_DESC, NF_ORDER_RANDOM, NF_ORDER_COUNT } nf_order;

/* A MADE weight mask in staircase form.  The columns (a layer's inputs,
 * context columns excluded) fall into runs, contiguous blocks whose degrees
 * do not decrease; row k keeps, in each run r, the first len[k*nruns+r]
 * columns (those of degree up to the row's).  Rows are cut into tiles of at
 * most NF_STAIR_TILE rows; a tile multiplies, per run, the prefix its
 * longest row needs (tlen), so a MADE layer costs about half a dense one.
 * Entries inside a tile's prefix but outside a row's are masked weights:
 * exactly zero, and their gradients are re-zeroed. */
#define NF_STAIR_TILE 64
extern int nf_stair_tile;  /* rows per tile for MADEs built from now on (tests) */
typedef struct nf_stair {
    int nruns, ntiles;
    int *cs;               /* (nruns+1) first column of each run; cs[nruns] = columns */
    int *len;              /* (out*nruns) */
    int *ts;               /* (ntiles+1) first row of each tile */
    int *tlen;             /* (ntiles*nruns) the tile's longest prefix per run */
} nf_stair;

typedef struct nf_linear {
    int in, out;
    size_t w_off, b_off;   /* offsets inside the net's parameters */
    uint8_t *mask;         /* (out,in) 0/1 or NULL (bytes: a quarter of a float mask) */
    nf_stair *stair;       /* MADE layers whose mask is a staircase (then mask is
                              NULL and context columns are unmasked) */
    size_t wt_off;         /* where W^T sits in the net's packed weights
                              (nf_net_pack_layout), or NF_NO_PACK */
} nf_linear;

#define NF_NO_PACK ((size_t)-1)

typedef struct nf_net {
    nf_net_kind kind;
    nf_act act;
    int in, ctx, out;
    int nhidden;
    int hidden[16];
    int nblocks;           /* resnet */
    int nlin;
    nf_linear lin[40];
    size_t nparams;
    int *degrees;          /* made: (in) input degrees 1..in */
    nf_order order;        /* made */
    uint64_t order_seed;   /* made, random order */
    size_t ws_per_row;     /* scratch floats per batch row */
} nf_net;

int nf_act_parse(const char *s, nf_act *out);
const char *nf_act_name(nf_act a);

int nf_net_mlp(nf_net *n, int in, int ctx, int out, const int *hidden, int nh, nf_act act);
int nf_net_resnet(nf_net *n, int in, int ctx, int out, int hidden, int nblocks, nf_act act);
/* MADE over D inputs with P outputs per input; order gives input degrees. */
int nf_net_made(nf_net *n, int D, int ctx, int P, const int *hidden, int nh, nf_act act,
                nf_order order, uint64_t seed);
void nf_net_free(nf_net *n);
void nf_net_init(const nf_net *n, nf_real *params, nf_rng *rng);
void nf_net_constrain(const nf_net *n, nf_real *params);
size_t nf_net_ws_size(const nf_net *n, int B);
/* in (B,in), ctx (B,ctx) or NULL, out (B,out); stores activations in ws.
 * wt: the net's packed weights (nf_ctx.wt) or NULL. */
void nf_net_forward(const nf_net *n, const nf_real *params, const nf_real *in,
                    const nf_real *ctx, nf_real *out, int B, nf_real *ws, const nf_real *wt);
/* Packed weights (nf_flow_pack, float build only): the dense layers a
 * packed product serves (no staircase, >= 8 outputs, <= 1024 inputs) get
 * their weights in nf_gemm_packed's panels at lin[l].wt_off, the others
 * NF_NO_PACK.  Layout returns the floats needed (0: nothing to pack); pack
 * writes them from the net's params. */
size_t nf_net_pack_layout(nf_net *n);
void nf_net_pack(const nf_net *n, const nf_real *params, nf_real *wt);
/* Deferred weight gradients (threaded gradient calls; flow.c runs them).
 * A threaded gradient call splits its rows over the threads.  Each part
 * used to add its rows' dW = dy^T x into a private copy of the gradient,
 * and the copies were summed afterwards: for a 12M-parameter MAF that sum
 * is four streams of 48 MB per step, 7% of W2's training time.  Instead,
 * while a part runs with nf_defer_cur set on its thread, the weight
 * gradient of a dense layer (or staircase) with at least nf_defer_min
 * weights, and more weights than the part's rows hold inputs and outputs
 * (B (in + out): below that the rows' copy costs more than the sum it
 * saves; W1's 128 x 128 layers at 256 rows a part), is only recorded: the part's dy rows and input rows are
 * copied into the part's arena (B (in + out) floats, against in x out
 * gradient entries) and nothing is computed.  Once all parts are done,
 * nf_defer_run on each thread t of np computes rows [out t / np,
 * out (t+1) / np) of every recorded product over every part's rows,
 * straight into the flow's gradient: the bias sums and the MADE mask too.
 * No private copy, no sum, and the threads' GEMMs never write the same
 * rows.  A part whose arena cannot grow computes that product in place (as
 * before) and sets failed, so the caller sums its copies over the whole
 * gradient.  The ranges the recorded products cover: nf_defer_ranges. */
#define NF_DEFER_MIN 16384
extern size_t nf_defer_min; /* NF_DEFER_MIN; tests set 0: record every product */
typedef struct nf_defer_item {
    const nf_linear *L;
    size_t w_goff, b_goff; /* dW and db in the gradient vector */
    size_t dy, x;          /* arena offsets: dy (B,out), input rows (B,in) */
    int B;
} nf_defer_item;
typedef struct nf_defer {
    const nf_real *grad_base; /* the part's gradient vector */
    nf_real *arena;
    size_t acap, aused;
    nf_defer_item *items;
    int n, icap;
    int failed;
} nf_defer;
extern _Thread_local nf_defer *nf_defer_cur;
void nf_defer_begin(nf_defer *d, const nf_real *grad_base); /* set nf_defer_cur, empty d */
void nf_defer_free(nf_defer *d);
void nf_defer_run(nf_defer *const *parts, int nparts, nf_real *grad, int t, int np);
/* the gradient ranges [r[2i], r[2i+1]) the parts' records cover, sorted and
 * merged, into r (room for 4 per record); returns their count, -1 if r is
 * too small */
int nf_defer_ranges(nf_defer *const *parts, int nparts, size_t *r, int cap);

/* After nf_net_forward with the same in/ctx/ws: dout (B,out) given;
 * grad (+=, may be NULL), din (B,in) (=, may be NULL), dctx (B,ctx) (+=, may
 * be NULL).  The activations stored by forward are not modified (backward
 * uses a separate part of ws), so backward may be called several times.
 * dout may not alias ws. */
void nf_net_backward(const nf_net *n, const nf_real *params, nf_real *grad,
                     const nf_real *in, const nf_real *ctx, const nf_real *dout,
                     nf_real *din, nf_real *dctx, int B, nf_real *ws);
/* Canonical JSON for the conditioner part of a layer spec:
 *   mlp:    "net":"mlp", "hidden":[h1,...], "activation":"relu"
 *   resnet: "net":"resnet", "hidden":[h], "blocks":n, "activation":...
 *   made:   "hidden":[h1,...], "activation", "order":"asc"|"desc"|"random",
 *           "order_seed":s  (no "net" key: autoregressive layers are MADE) */
void nf_net_to_json(const nf_net *n, cJSON *obj);
/* multiply-adds per row of nf_net_forward: executed = 1 counts what the
 * staircases multiply, 0 every weight */
double nf_net_macs(const nf_net *n, int executed);
/* Build a coupling conditioner from those keys (defaults: mlp, hidden
 * def_hidden, relu, blocks 2). */
int nf_net_from_spec(nf_net *n, const cJSON *spec, int in, int ctx, int out,
                     const int *def_hidden, int ndef, char *err, size_t errlen);
/* Build a MADE from those keys (defaults: hidden def_hidden, relu, asc). */
int nf_net_made_from_spec(nf_net *n, const cJSON *spec, int D, int ctx, int P,
                          const int *def_hidden, int ndef, char *err, size_t errlen);
/* Keys the two functions above read, for nf_json_check_keys lists. */
#define NF_NET_KEYS "net", "hidden", "blocks", "activation"
#define NF_MADE_KEYS "hidden", "activation", "order", "order_seed"

/* Coupling masks: "mask":"even" (default; dims 0,2,4,... pass through and
 * condition the others), "odd", or a list of D 0/1 ints (1 = passes
 * through).  Needs at least one 1 and one 0, so D >= 2.  mask (D) out. */
int nf_mask_parse(const cJSON *spec, int D, int *mask, char *err, size_t errlen);
void nf_mask_to_json(const int *mask, int D, cJSON *obj); /* always the list form */

/* ---- threads (core/flow.c, core/pool.c) -----------------------------------
 * fn(arg, i0, i1, t) over [0, n) cut into one range per thread of w (cut at
 * 16-element boundaries, ranges of at least 64Ki elements), t = 0..parts-1;
 * a plain or NULL workspace runs fn(arg, 0, n, 0) on the caller.  Returns
 * the number of parts. */
#define NF_PAR_MAX 64
int nf_ws_parallel_for(nf_ws *w, size_t n, void (*fn)(void *arg, size_t i0, size_t i1, int t),
                       void *arg);

/* An attachment of a workspace, freed with it by free_fn (a workspace
 * belongs to one calling thread, so is its attachment).  Setting one frees
 * the previous. */
void *nf_ws_aux(const nf_ws *w);
void nf_ws_set_aux(nf_ws *w, void *aux, void (*free_fn)(void *));

/* ---- optimizer state nested in the trainer's (core/optim.c) --------------
 * The bytes nf_adam_save returns, written straight into another blob (no
 * intermediate buffer: a 12M-parameter model's moments are 96 MB). */
struct nf_blob_writer;
size_t nf_adam_blob_size(const nf_adam *o); /* SIZE_MAX when too large */
void nf_adam_put(const nf_adam *o, struct nf_blob_writer *w);

/* ---- dequantization (core/dequant.c) --------------------------------------
 * y (n) = x + u, u ~ U[0,1) element by element from r (y may be x).  The
 * trainer, its validation and the model's scorer draw the noise this way. */
void nf_deq_uniform(const nf_real *x, size_t n, nf_rng *r, nf_real *y);
/* The scorer's state on a workspace w of f: the rows (and with a
 * dequantizer q, q's forward-only workspace and the bound's scratch) for
 * nf_ws_max_batch(w) rows, attached to w on the first call for q and
 * reused after; NULL with *rc set when allocation fails. */
typedef struct nf_deq_ws nf_deq_ws;
nf_deq_ws *nf_deq_attach(const nf_flow *f, nf_ws *w, const nf_flow *q, int *rc);

/* ---- image shapes (core/flow.c) -------------------------------------------
 * spec's optional "shape": [C, H, W] into shape (all zero when absent);
 * D > 0 must equal C*H*W.  0 or NF_EINVAL with the message in err. */
int nf_shape_parse(const cJSON *spec, int D, int shape[3], char *err, size_t errlen);
/* An image layer's constructor calls this first: NF_EINVAL with "needs an
 * image shape" when the flow declares none (L->shape all zero). */
int nf_layer_need_shape(const nf_layer *L, char *err, size_t errlen);

/* ---- small shared helpers (core/util.c) --------------------------------- */
void nf_set_err(char *err, size_t errlen, const char *fmt, ...);
/* CLOCK_MONOTONIC in seconds (timings, the pace hook's work time) */
double nf_mono_s(void);
/* the JSON field getters (nf_json_int, nf_json_check_keys, ...): nf_json.h */

/* C = alpha * A(M,K) * op(B) + beta * C, row-major; transA/transB 0 or 1.
 * Goes to cblas_sgemm/dgemm; nf_gemm_ref is the plain-loop twin for tests. */
void nf_gemm(int transA, int transB, int M, int N, int K, nf_real alpha,
             const nf_real *A, int lda, const nf_real *Bm, int ldb, nf_real beta,
             nf_real *C, int ldc);
/* B (M,N) := B * inv(A^T), A (N,N) row-major lower (upper = 0) or upper
 * (upper = 1) triangular, unit diagonal when unit = 1 (cblas_?trsm, right
 * side): solves every row b of B for y in A y = b. */
void nf_trsm_rt(int upper, int unit, int M, int N, const nf_real *A, int lda, nf_real *Bm,
                int ldb);
void nf_gemm_ref(int transA, int transB, int M, int N, int K, nf_real alpha,
                 const nf_real *A, int lda, const nf_real *Bm, int ldb, nf_real beta,
                 nf_real *C, int ldc);

/* log-scale soft clamp used by affine couplings and MAF/IAF:
 * s = bound * tanh(h / bound), ds/dh = 1 - (s/bound)^2; s(0) = 0 so a zero
 * conditioner output is the identity. */
#define NF_SCALE_BOUND 3.0

/* The scalar rational-quadratic spline (core/spline.c): theta holds the
 * 3K-1 unnormalised numbers of one dimension.  dir 0 returns g(in) with
 * *ld = log g'(in); dir 1 returns g^-1(in) with *ld = -log g'(g^-1(in)). */
double nf_rqs_apply(const nf_real *theta, int K, double B, double min_w, double min_h,
                    double min_d, double in, int dir, double *ld);

/* ---- the flow object ----------------------------------------------------- */
typedef enum { NF_BASE_NORMAL = 0, NF_BASE_DIAG, NF_BASE_MIXTURE, NF_BASE_COUNT } nf_base_kind;

typedef struct nf_base {
    nf_base_kind kind;
    int D;
    int K;                  /* mixture components */
    size_t nparams, param_off;
} nf_base;

struct nf_flow {
    int D, C;
    int shape[3];           /* declared (C,H,W) of a row, or all zero */
    int nlayers;
    nf_layer *layers;       /* (nlayers) density order */
    nf_base base;
    size_t nparams, nbuffers;
    nf_real *params, *grad, *buffers;
    uint64_t seed;
    nf_real *pack;          /* nf_flow_pack's weights, or NULL */
    size_t *pack_off;       /* (nlayers) each layer's block in pack, or NF_NO_PACK */
    size_t pack_n;          /* floats in pack */
};

/* base distribution (core/base.c) */
int nf_base_parse(nf_base *b, int D, const cJSON *spec, char *err, size_t errlen);
void nf_base_to_json(const nf_base *b, cJSON *obj);
void nf_base_init(const nf_base *b, nf_real *params);
/* logp (B) = log p(z); with dz (B,D) (+=, may be NULL) and grad (+=, may be
 * NULL) for upstream weights w (B) when w != NULL. */
void nf_base_log_prob(const nf_base *b, const nf_real *params, const nf_real *z, int B,
                      nf_real *logp);
void nf_base_log_prob_backward(const nf_base *b, const nf_real *params, nf_real *grad,
                               const nf_real *z, int B, const nf_real *w, nf_real *dz);
/* z (B,D) ~ base with stds scaled by T. */
void nf_base_sample(const nf_base *b, const nf_real *params, nf_rng *rng, double T, int B,
                    nf_real *z);

#endif
