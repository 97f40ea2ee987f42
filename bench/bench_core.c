/* bench_core.c: throughput of flowd's core on three reference workloads.
 *
 *   W1  realnvp, 8 affine couplings, MLP [128,128], 2-D moons,  train batch 512
 *   W2  maf, 5 MADE layers [1024], reverse permutations, 784-D, train batch 128
 *   W3  nsf, 5 RQ-spline couplings (8 bins, tail 3, resnet [256] x 2 blocks)
 *       with the preset's lu_linear between them, 30-D,            train batch 512
 *   W4  glow on 1x28x28 images: preprocessing x/256 - 0.5, 2 levels of squeeze
 *       + 8 steps (channel actnorm, invconv, conv affine coupling, Glow net
 *       with 64 hidden channels, sigmoid scale), a split between them,
 *       uniformly dequantized random images,                      train batch 64
 *   W5  ffjord: one CNF block, concat-squash MLP [64,64,64], dopri5 1e-5,
 *       exact trace, 2-D moons,                                  train batch 256
 *
 * Per workload: training samples/s (zero_grad + log_prob_grad with dlogp = -1/B
 * + clip_grad_norm + adam_step; W4: no clipping, Adam lr 1e-3), log_prob rows/s
 * at batch 1, 64, 256, 4096 (W4: 256 only; a workspace of exactly that size),
 * sampling rows/s, parameter bytes, peak RSS and achieved GFLOP/s (W4: the
 * convolutions) against the machine's cblas_sgemm peak.
 *
 * Timing: one warm-up phase (>= 0.1 s, or one call if a call is longer), then
 * NREP repeats of ITERS calls, ITERS chosen so a repeat lasts >= MIN_S; the
 * figure is the median repeat, reported with the fastest and slowest repeat
 * (JSON "min", "max") and every repeat's rate (JSON "repeats", in the order
 * run).  CLOCK_MONOTONIC throughout.
 *
 * Environment: FLOWD_BENCH_QUICK=1 (short repeats, ~15 s in all),
 * FLOWD_BENCH_W2_SAMPLE_N (rows per W2 sampling call, see below),
 * FLOWD_BENCH_OUT (JSON path, default build/bench/results.json),
 * FLOWD_BENCH_PACK_MAX (bytes; after the training figure the flow is packed
 * for scoring and sampling as the daemon packs a model it loads,
 * nf_flow_pack_max, when the copy takes at most that, default 4 MiB as
 * flowd serve --pack-max; 0 = unpacked; JSON "packed_bytes"),
 * FLOWD_BENCH_ONLY (comma list of W1, W2, W3, W4, W5, sgemm, serve, cnf_trace: run only
 * those, no table; "serve" builds the W1-W3 models in one process, scores 256
 * rows with each and reports that process's peak RSS; bench/compare.py uses
 * it; "cnf_trace", only when named, prints the CNF trace sweep below).  A workload whose flow cannot be built (W4 before the image layers
 * exist) is skipped with a message and an "error" in its JSON object.
 * The thread count is OpenBLAS's (OPENBLAS_NUM_THREADS; `make bench` sets 2).
 */
#include "../core/model.h"
#include "../core/nf.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define NREP_MAX 5

static struct {
    int quick;
    double min_s;    /* shortest repeat */
    double warm_s;   /* warm-up time */
    int nrep;        /* repeats (median reported) */
    double max_s;    /* soft cap on one measurement: fewer repeats if a call is long */
} cfg;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, int rc) {
    fprintf(stderr, "bench_core: %s: %s\n", what, nf_strerror(rc));
    exit(1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Largest (max - min) / median over the repeats of the measurements taken
 * since it was last zeroed: how noisy the machine was. */
static double g_spread;

/* One measurement: seconds per call of each repeat, in the order run, and
 * the median, the fastest (min) and the slowest (max) of them. */
typedef struct timing {
    int n;
    double rep[NREP_MAX];
    double med, min, max;
} timing;

/* Seconds per call of fn(arg), NREP repeats (fewer if a call is long). */
typedef int (*op_fn)(void *arg);
static timing time_op(op_fn fn, void *arg, const char *what) {
    int rc, calls = 0;
    double t0 = now_s(), t;
    do {
        if ((rc = fn(arg))) die(what, rc);
        calls++;
        t = now_s() - t0;
    } while (t < cfg.warm_s);
    double per = t / calls;
    int iters = per >= cfg.min_s ? 1 : (int)ceil(cfg.min_s / per);
    int nrep = cfg.nrep;
    while (nrep > 1 && per * iters * nrep > cfg.max_s) nrep--;
    timing tm = {.n = nrep};
    for (int r = 0; r < nrep; r++) {
        t0 = now_s();
        for (int i = 0; i < iters; i++)
            if ((rc = fn(arg))) die(what, rc);
        tm.rep[r] = (now_s() - t0) / iters;
    }
    double s[NREP_MAX];
    memcpy(s, tm.rep, (size_t)nrep * sizeof s[0]);
    qsort(s, (size_t)nrep, sizeof s[0], cmp_double);
    tm.med = nrep % 2 ? s[nrep / 2] : 0.5 * (s[nrep / 2 - 1] + s[nrep / 2]);
    tm.min = s[0];
    tm.max = s[nrep - 1];
    double spread = (tm.max - tm.min) / tm.med;
    g_spread = spread > g_spread ? spread : g_spread;
    return tm;
}

/* A throughput figure: work / seconds per call, for the median repeat, the
 * slowest (min) and fastest (max) repeat, and each repeat in the order run. */
typedef struct rate {
    int n;
    double rep[NREP_MAX];
    double med, min, max;
} rate;

static rate rate_of(const timing *t, double work) {
    rate r = {.n = t->n, .med = work / t->med, .min = work / t->max, .max = work / t->min};
    for (int i = 0; i < t->n; i++) r.rep[i] = work / t->rep[i];
    return r;
}

/* ---- peak RSS ------------------------------------------------------------------
 * VmHWM from /proc/self/status.  Writing "5" to /proc/self/clear_refs resets
 * the high-water mark to the current RSS (Linux >= 4.0), so each workload's
 * figure is its own peak (plus the process baseline: binary, OpenBLAS). */
static long long vm_hwm_bytes(void) {
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    if (!fp) return -1;
    while (fgets(line, sizeof line, fp))
        if (!strncmp(line, "VmHWM:", 6)) kb = atoll(line + 6);
    fclose(fp);
    return kb < 0 ? -1 : kb * 1024;
}

static int reset_hwm(void) {
    FILE *fp = fopen("/proc/self/clear_refs", "w");
    if (!fp) return -1;
    int ok = fputs("5", fp) >= 0;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* Threads: the bench's thread count T is OpenBLAS's at start
 * (OPENBLAS_NUM_THREADS; `make bench` sets 2).  The sgemm peak is measured
 * with T BLAS threads.  The workloads split each call's rows over T threads
 * (nf_ws_create_threads, as `flowd train` does) with one BLAS thread under
 * each; FLOWD_BENCH_SPLIT=0 instead runs them on one thread with T BLAS
 * threads (the library's behaviour before workspaces had threads). */
static int g_threads = 1, g_core_threads = 1;

static void blas_for_workloads(void) { openblas_set_num_threads(g_core_threads > 1 ? 1 : g_threads); }

/* the daemon's cap on a model's packed weights (flowd serve --pack-max,
 * core/model.h NF_PACK_MAX_BYTES), or FLOWD_BENCH_PACK_MAX bytes (0: unpacked) */
static size_t bench_pack_max(void) {
    const char *e = getenv("FLOWD_BENCH_PACK_MAX");
    return e && *e ? (size_t)strtoull(e, NULL, 10) : NF_PACK_MAX_BYTES;
}

/* ---- sgemm peak ------------------------------------------------------------------ */
static double sgemm_gflops(int n, int runs) {
    openblas_set_num_threads(g_threads);
    size_t nn = (size_t)n * n;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    if (!a || !b || !c) die("sgemm buffers", NF_ENOMEM);
    nf_rng r;
    nf_rng_seed(&r, 7);
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)nf_rng_uniform(&r) - 0.5f;
        b[i] = (float)nf_rng_uniform(&r) - 0.5f;
        c[i] = 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                n); /* warm-up (thread pool, page faults) */
    double best = 1e30;
    for (int i = 0; i < runs; i++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    free(a);
    free(b);
    free(c);
    blas_for_workloads();
    return 2.0 * n * (double)n * n / best / 1e9;
}

/* ---- data ------------------------------------------------------------------------ */
/* Two interleaved half circles (as sklearn's make_moons): upper arc
 * (cos t, sin t), lower arc (1 - cos t, 0.5 - sin t), t ~ U[0, pi], plus
 * N(0, 0.05^2) noise on both coordinates. */
static void gen_moons(nf_rng *r, nf_real *x, int n, int D) {
    (void)D;
    for (int i = 0; i < n; i++) {
        double t = M_PI * nf_rng_uniform(r);
        int lower = nf_rng_uniform(r) < 0.5;
        double a = lower ? 1.0 - cos(t) : cos(t);
        double b = lower ? 0.5 - sin(t) : sin(t);
        x[2 * i] = (nf_real)(a + 0.05 * nf_rng_normal(r));
        x[2 * i + 1] = (nf_real)(b + 0.05 * nf_rng_normal(r));
    }
}

/* Standardized Gaussian data, N(0, I). */
static void gen_gauss(nf_rng *r, nf_real *x, int n, int D) {
    for (size_t i = 0; i < (size_t)n * D; i++) x[i] = (nf_real)nf_rng_normal(r);
}

/* Uniformly dequantized random images: integer pixels 0..255 plus U[0,1)
 * (bench/torch_glow.py's gen_images). */
static void gen_pixels(nf_rng *r, nf_real *x, int n, int D) {
    for (size_t i = 0; i < (size_t)n * D; i++)
        x[i] = (nf_real)((double)(nf_rng_u64(r) >> 56) + nf_rng_uniform(r));
}

/* ---- analytic dense-layer counts ------------------------------------------------
 * A linear layer in -> out over B rows costs 2*B*in*out flops forward.  For
 * training we count 3x that: the forward GEMM plus the two backward GEMMs
 * (dW = X^T dY and dX = dY W^T), i.e.
 *     flops_train = 3 * 2 * B * sum_linear(in*out),
 *     flops_log_prob = 2 * B * sum_linear(in*out).
 * Biases, activations, the transforms themselves and masks are not counted.
 * (flowd's maf backward recomputes the MADE forward, so it does 4 GEMM passes
 * for W2; the count stays at the conventional 3.)
 * mac = sum of in*out over all linears; par = weights + biases, checked
 * against nf_flow_num_params so the counts describe the flow actually built. */
typedef struct dense_count {
    double mac;
    double par;
} dense_count;

static void add_lin(dense_count *c, int in, int out, int bias) {
    c->mac += (double)in * out;
    c->par += (double)in * out + (bias ? out : 0);
}

static void add_mlp(dense_count *c, int in, const int *h, int nh, int out) {
    for (int i = 0; i < nh; i++) {
        add_lin(c, in, h[i], 1);
        in = h[i];
    }
    add_lin(c, in, out, 1);
}

/* resnet conditioner: in -> H, nblocks x (H -> H, H -> H), H -> out */
static void add_resnet(dense_count *c, int in, int H, int nblocks, int out) {
    add_lin(c, in, H, 1);
    for (int b = 0; b < 2 * nblocks; b++) add_lin(c, H, H, 1);
    add_lin(c, H, out, 1);
}

/* W4 counts convolutions: a k x k convolution cin -> cout, stride 1, 'same'
 * zero padding, on P = H*W pixels, is cout*cin*k*k*P multiply-adds per row
 * (the padded zeros counted as multiplied, as an im2col GEMM does); training
 * counts 3x, as for the dense layers (forward, dW, dX). */
static void add_conv(dense_count *c, int cin, int cout, int k, int P, int bias) {
    c->mac += (double)cout * cin * k * k * P;
    c->par += (double)cout * cin * k * k + (bias ? cout : 0);
}

/* One W4 step on C channels of P pixels: channel actnorm (2C parameters),
 * invconv (a 1x1 convolution; LU parameters: C(C-1)/2 + C(C-1)/2 + C = C*C),
 * affine coupling with Glow's net on the first C/2 channels:
 * conv3x3 (C/2 -> 64) relu conv1x1 (64 -> 64) relu conv3x3 (64 -> 2*(C - C/2)). */
static void add_glow_step(dense_count *c, int C, int P, int hidden) {
    int ca = C / 2, cb = C - C / 2;
    c->par += 2.0 * C;
    add_conv(c, C, C, 1, P, 0);
    add_conv(c, ca, hidden, 3, P, 1);
    add_conv(c, hidden, hidden, 1, P, 1);
    add_conv(c, hidden, 2 * cb, 3, P, 1);
}

/* ---- workloads ------------------------------------------------------------------- */
typedef struct workload {
    const char *key, *name, *spec, *data_desc;
    int D, train_batch, sample_n;
    void (*gen)(nf_rng *, nf_real *, int, int);
    dense_count dc;
    unsigned lp_mask;  /* bit k: measure log_prob at lp_batches[k] */
    double lr, clip;   /* Adam's learning rate; gradient-norm clip (0: none) */
    int data_init;     /* act-norm data-dependent init on the first batch */
    void (*init)(nf_flow *); /* sets the parameters after creation (W5), or NULL */
} workload;

typedef struct result {
    int ok;              /* 0: the flow could not be built (err says why) */
    char err[256];
    rate train_sps, lp_rps[4], sample_rps, gflops;
    double gflops_lp;    /* forward GFLOP/s at the largest log_prob batch */
    size_t packed_bytes; /* nf_flow_packed_bytes when scoring and sampling */
    int lp_top;          /* that batch */
    unsigned lp_mask;    /* the log_prob batches measured (workload's lp_mask) */
    double exec_mac;     /* multiply-adds per row flowd executes (MADE stairs) */
    double gflops_exec;  /* training GFLOP/s on exec_mac */
    long long rss;
    double spread;
    size_t nparams;
    int sample_n;
    /* ODE workloads (W5): mean dynamics evaluations per row and pass, from the
     * workspace counters (nf_ws_ode_stats); train: forward, and the gradient's */
    int ode;
    double nfe_train, nfe_train_bwd, nfe_lp[4], nfe_sample;
    double check_lp[4]; /* log_prob of W5_CHECK_X at the initial parameters */
} result;

#define NLP 4
static const int lp_batches[NLP] = {1, 64, 256, 4096};

typedef struct train_arg {
    nf_flow *f;
    nf_ws *w;
    nf_adam *opt;
    const nf_real *pool; /* (npool,D) */
    int npool, D, B, next;
    nf_real *dlogp;      /* (B) = -1/B */
    nf_real *logp;       /* (B), checked when there is no clipping */
    double lr, clip;
    int grad_zero; /* the last step's fused Adam left the gradient zero */
} train_arg;

/* the trainer's step (core/train.c): the gradient zeroed only when the
 * last step's optimizer did not leave it zero, the norm from the threads'
 * reduction where it took it, the clip folded into the optimizer's pass */
static int train_step(void *p) {
    train_arg *a = p;
    if (a->next + a->B > a->npool) a->next = 0;
    const nf_real *x = a->pool + (size_t)a->next * a->D;
    a->next += a->B;
    if (!a->grad_zero) nf_flow_zero_grad_ws(a->f, a->w);
    a->grad_zero = 0;
    int rc = nf_flow_log_prob_grad(a->f, a->w, x, NULL, a->B, 1, a->dlogp,
                                   a->clip > 0 ? NULL : a->logp, NULL, NULL);
    if (rc) return rc;
    nf_real *g = nf_flow_grad(a->f);
    double gs = 1;
    if (a->clip > 0) {
        double norm = nf_grad_norm_ws(a->w, g, nf_flow_num_params(a->f));
        if (!isfinite(norm)) return NF_ENONFINITE;
        if (norm > a->clip) gs = a->clip / norm;
    } else {
        for (int i = 0; i < a->B; i++)
            if (!isfinite(a->logp[i])) return NF_ENONFINITE;
    }
    nf_adam_step_scaled_ws(a->opt, a->w, nf_flow_params(a->f), g, a->lr, gs);
    a->grad_zero = 1;
    return 0;
}

typedef struct lp_arg {
    const nf_flow *f;
    nf_ws *w;
    const nf_real *x;
    int B;
    nf_real *out;
} lp_arg;

static int lp_call(void *p) {
    lp_arg *a = p;
    int rc = nf_flow_log_prob(a->f, a->w, a->x, NULL, a->B, a->out);
    if (rc) return rc;
    for (int i = 0; i < a->B; i++)
        if (!isfinite(a->out[i])) return NF_ENONFINITE;
    return 0;
}

typedef struct sample_arg {
    const nf_flow *f;
    nf_ws *w;
    int n;
    uint64_t seed;
    nf_real *x;
} sample_arg;

static int sample_call(void *p) {
    sample_arg *a = p;
    return nf_flow_sample(a->f, a->w, a->n, 1.0, a->seed++, NULL, a->x, NULL);
}

/* mean dynamics evaluations per row and solve counted on w (0 without ODEs) */
static double ode_row_nfe(const nf_ws *w) {
    nf_ode_stats st;
    nf_ws_ode_stats(w, &st);
    return st.rows ? (double)st.row_nfe / (double)st.rows : 0;
}

/* ---- W5: an ffjord CNF, hidden [64,64,64], tanh, dopri5 at rtol = atol = 1e-5.
 * A fresh cnf layer is the identity (its last layer starts at zero), which an
 * ODE solver crosses in one step; so W5 starts both sides from the same
 * non-trivial parameters instead, a function of the index alone that
 * bench/torch_cnf.py computes too: parameter i (in flowd's order: per
 * concat-squash layer W (out,in), b, a, c, d) is bound * (2u - 1), u the top
 * 53 bits of splitmix64 at W5_SEED + (i + 1) * golden, bound 1/sqrt(in) for
 * W and b (PyTorch's nn.Linear default), 1 for a, c, d (nn.Linear(1, out)).
 * Both sides also score W5_CHECK_X at these parameters: the JSON's
 * "check_log_prob" must agree to the solver tolerance (compare.py checks). */
#define W5_SEED 5u
static const int w5_hidden[] = {64, 64, 64};
static const double W5_CHECK_X[4][2] = {{0.5, 0.25}, {-0.5, 0.5}, {1.5, -0.2}, {0.0, 0.0}};

static double splitmix_unit(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

/* w5_init's parameters for a CNF of dim D, hidden [64,64,64] (no context) */
static void cnf_init_dim(nf_flow *f, int D) {
    nf_real *p = nf_flow_params(f);
    size_t i = 0;
    int in = D;
    for (int l = 0; l < 4; l++) {
        int out = l < 3 ? w5_hidden[l] : D;
        double bw = 1.0 / sqrt((double)in);
        size_t n[5] = {(size_t)in * out, (size_t)out, (size_t)out, (size_t)out, (size_t)out};
        double bound[5] = {bw, bw, 1, 1, 1};
        for (int k = 0; k < 5; k++)
            for (size_t j = 0; j < n[k]; j++, i++)
                p[i] = (nf_real)(bound[k] * (2 * splitmix_unit(W5_SEED, i) - 1));
        in = out;
    }
    if (i != nf_flow_num_params(f)) {
        fprintf(stderr, "bench_core: the CNF has %zu parameters, cnf_init_dim set %zu\n",
                nf_flow_num_params(f), i);
        exit(1);
    }
}

static void w5_init(nf_flow *f) { cnf_init_dim(f, 2); }

/* ---- the CNF trace sweep (FLOWD_BENCH_ONLY=cnf_trace): what the exact trace
 * costs against Hutchinson's by dimension, for NF_CNF_EXACT_DEFAULT (the
 * training default) and NF_CNF_EXACT_MAX (exact scoring).  Per D: an ffjord
 * block, hidden [64,64,64], cnf_init_dim's parameters, N(0, I) rows; the
 * training step (log_prob_grad, batch 256) and log_prob (256 rows) with each
 * trace, timed as every figure; reported per row and per dynamics evaluation
 * (row evaluations from the counters), since the two traces take different
 * steps.  Scoring always uses the exact trace up to NF_CNF_EXACT_MAX, so the
 * log_prob columns are exact only; the Hutchinson scoring column is what a
 * stochastic estimate would cost (a training-mode pass without gradient). */
typedef struct sweep_arg {
    nf_flow *f;
    nf_ws *w;
    const nf_real *x;
    nf_real *dlogp, *logp;
    int B, grad;
} sweep_arg;

static int sweep_call(void *p) {
    sweep_arg *a = p;
    if (!a->grad) return nf_flow_log_prob(a->f, a->w, a->x, NULL, a->B, a->logp);
    nf_flow_zero_grad_ws(a->f, a->w);
    return nf_flow_log_prob_grad(a->f, a->w, a->x, NULL, a->B, 1, a->dlogp, a->logp, NULL, NULL);
}

static cJSON *cnf_trace_sweep(void) {
    static const int dims[] = {2, 4, 8, 16, 32, 64};
    const int B = 256;
    cJSON *arr = cJSON_CreateArray();
    printf("\nCNF trace sweep: ffjord [64,64,64], batch %d, %d thread(s); us per row / per row-evaluation\n",
           B, g_core_threads);
    printf("%4s %24s %24s %9s %22s\n", "D", "train exact", "train hutchinson", "ratio",
           "log_prob exact");
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        const int D = dims[di];
        double us[3], ev[3];
        nf_real *x = malloc((size_t)B * D * sizeof *x), *dl = malloc((size_t)B * sizeof *dl),
                *lp = malloc((size_t)B * sizeof *lp);
        if (!x || !dl || !lp) die("sweep", NF_ENOMEM);
        nf_rng r;
        nf_rng_seed(&r, 77);
        gen_gauss(&r, x, B, D);
        for (int i = 0; i < B; i++) dl[i] = (nf_real)(-1.0 / B);
        for (int k = 0; k < 3; k++) { /* train exact, train hutchinson, log_prob (exact) */
            char spec[256];
            snprintf(spec, sizeof spec,
                     "{\"dim\":%d,\"layers\":[{\"type\":\"cnf\",\"hidden\":[64,64,64],"
                     "\"trace\":\"%s\"}]}", D, k == 1 ? "hutchinson" : "exact");
            nf_flow *f;
            char err[256];
            int rc = nf_flow_create(spec, &f, err, sizeof err);
            if (rc) die(err, rc);
            cnf_init_dim(f, D);
            sweep_arg a = {.f = f, .x = x, .dlogp = dl, .logp = lp, .B = B, .grad = k < 2};
            if ((rc = nf_ws_create_ex(f, B, g_core_threads, k < 2 ? 0 : NF_WS_INFERENCE, &a.w)))
                die("ws", rc);
            nf_ws_ode_stats_reset(a.w);
            timing t = time_op(sweep_call, &a, "cnf sweep");
            nf_ode_stats st;
            nf_ws_ode_stats(a.w, &st);
            us[k] = 1e6 * t.med / B;
            /* row evaluations per row and call: pass + gradient */
            double calls = st.rows ? (double)st.rows / B : 1;
            ev[k] = st.row_nfe / calls / B;
            nf_ws_free(a.w);
            nf_flow_free(f);
        }
        printf("%4d %12.1f / %9.3f %12.1f / %9.3f %9.2f %10.1f / %9.3f\n", D, us[0], us[0] / ev[0],
               us[1], us[1] / ev[1], (us[0] / ev[0]) / (us[1] / ev[1]), us[2], us[2] / ev[2]);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "dim", D);
        cJSON_AddNumberToObject(o, "train_exact_us_per_row", us[0]);
        cJSON_AddNumberToObject(o, "train_exact_evals_per_row", ev[0]);
        cJSON_AddNumberToObject(o, "train_hutchinson_us_per_row", us[1]);
        cJSON_AddNumberToObject(o, "train_hutchinson_evals_per_row", ev[1]);
        cJSON_AddNumberToObject(o, "log_prob_exact_us_per_row", us[2]);
        cJSON_AddNumberToObject(o, "log_prob_exact_evals_per_row", ev[2]);
        cJSON_AddItemToArray(arr, o);
        free(x);
        free(dl);
        free(lp);
    }
    return arr;
}

static void w5_check(const nf_flow *f, double out[4]) {
    nf_real x[8], lp[4];
    nf_ws *w;
    int rc;
    for (int i = 0; i < 8; i++) x[i] = (nf_real)W5_CHECK_X[i / 2][i % 2];
    if ((rc = nf_ws_create_ex(f, 4, 1, NF_WS_INFERENCE, &w))) die("ws", rc);
    if ((rc = nf_flow_log_prob(f, w, x, NULL, 4, lp))) die("W5 check", rc);
    for (int i = 0; i < 4; i++) out[i] = lp[i];
    nf_ws_free(w);
}

static void run_workload(const workload *wl, result *res) {
    char err[256] = "";
    nf_flow *f;
    int rc = nf_flow_create(wl->spec, &f, err, sizeof err);
    if (rc) {
        /* not fatal: W4 needs the image layers (squeeze, split, ...) */
        snprintf(res->err, sizeof res->err, "%s (%s)", err, nf_strerror(rc));
        fprintf(stderr, "bench_core: %s: cannot build the flow: %s; skipped\n", wl->key, res->err);
        return;
    }
    res->ok = 1;
    res->lp_mask = wl->lp_mask;
    res->ode = nf_flow_num_ode(f) > 0;
    if (wl->init) {
        wl->init(f);
        w5_check(f, res->check_lp);
    }
    const int D = wl->D;
    g_spread = 0;
    res->nparams = nf_flow_num_params(f);
    if ((double)res->nparams != wl->dc.par)
        fprintf(stderr, "bench_core: %s: warning: flow has %zu params, the flop model %.0f\n",
                wl->key, res->nparams, wl->dc.par);
    /* (an ODE's flow counts one evaluation with its trace tangents) */
    if (!res->ode && nf_flow_macs_per_row(f, 0) != wl->dc.mac)
        fprintf(stderr, "bench_core: %s: warning: the flow counts %.0f dense MACs/row, the flop "
                "model %.0f\n", wl->key, nf_flow_macs_per_row(f, 0), wl->dc.mac);
    res->exec_mac = nf_flow_macs_per_row(f, 1);

    const int npool = 4096;
    nf_real *pool = malloc((size_t)npool * D * sizeof *pool);
    nf_real *out = malloc((size_t)npool * sizeof *out);
    if (!pool || !out) die("data", NF_ENOMEM);
    nf_rng r;
    nf_rng_seed(&r, 1234);
    wl->gen(&r, pool, npool, D);

    /* training */
    {
        train_arg a = {.f = f, .pool = pool, .npool = npool, .D = D, .B = wl->train_batch,
                       .lr = wl->lr, .clip = wl->clip};
        nf_adam opt;
        if ((rc = nf_ws_create_threads(f, a.B, g_core_threads, &a.w))) die("ws", rc);
        /* act-norms: data-dependent init on the first batch, as training does */
        if (wl->data_init && (rc = nf_flow_data_init(f, a.w, pool, NULL, a.B))) die("data init", rc);
        if ((rc = nf_adam_init(&opt, NF_OPT_ADAM, res->nparams, 0))) die("adam", rc);
        a.opt = &opt;
        a.dlogp = malloc((size_t)a.B * sizeof *a.dlogp);
        a.logp = malloc((size_t)a.B * sizeof *a.logp);
        if (!a.dlogp || !a.logp) die("train buffers", NF_ENOMEM);
        for (int i = 0; i < a.B; i++) a.dlogp[i] = (nf_real)(-1.0 / a.B);
        nf_ws_ode_stats_reset(a.w);
        timing t = time_op(train_step, &a, "train step");
        if (res->ode) {
            nf_ode_stats st;
            nf_ws_ode_stats(a.w, &st);
            res->nfe_train = st.solves ? (double)st.nfe / (double)st.solves : 0;
            res->nfe_train_bwd = st.solves ? (double)st.nfe_backward / (double)st.solves : 0;
        }
        res->train_sps = rate_of(&t, a.B);
        res->gflops = rate_of(&t, 3.0 * 2.0 * a.B * wl->dc.mac / 1e9);
        res->gflops_exec = 3.0 * 2.0 * a.B * res->exec_mac / t.med / 1e9;
        free(a.dlogp);
        free(a.logp);
        nf_adam_free(&opt);
        nf_ws_free(a.w);
    }

    /* scoring and sampling as the daemon serves a loaded model: packed
     * (nf_flow_pack), unless FLOWD_BENCH_PACK=0 (for the figures before) */
    if ((rc = nf_flow_pack_max(f, bench_pack_max()))) die("pack", rc);
    res->packed_bytes = nf_flow_packed_bytes(f);

    /* log_prob at each batch size, each with a workspace of that size */
    for (int k = 0; k < NLP; k++) {
        if (!(wl->lp_mask & 1u << k)) continue;
        lp_arg a = {.f = f, .x = pool, .B = lp_batches[k], .out = out};
        if ((rc = nf_ws_create_ex(f, a.B, g_core_threads, NF_WS_INFERENCE, &a.w))) die("ws", rc);
        nf_ws_ode_stats_reset(a.w);
        timing t = time_op(lp_call, &a, "log_prob");
        res->nfe_lp[k] = ode_row_nfe(a.w);
        res->lp_rps[k] = rate_of(&t, a.B);
        res->gflops_lp = 2.0 * a.B * wl->dc.mac / t.med / 1e9; /* batches ascend */
        res->lp_top = a.B;
        nf_ws_free(a.w);
    }

    /* sampling */
    {
        sample_arg a = {.f = f, .n = wl->sample_n, .seed = 99};
        a.x = malloc((size_t)a.n * D * sizeof *a.x);
        if (!a.x) die("sample buffer", NF_ENOMEM);
        if ((rc = nf_ws_create_ex(f, a.n, g_core_threads, NF_WS_INFERENCE, &a.w))) die("ws", rc);
        nf_ws_ode_stats_reset(a.w);
        timing t = time_op(sample_call, &a, "sample");
        res->nfe_sample = ode_row_nfe(a.w);
        res->sample_rps = rate_of(&t, a.n);
        res->sample_n = a.n;
        nf_ws_free(a.w);
        free(a.x);
    }

    nf_flow_free(f);
    free(pool);
    free(out);
    res->rss = vm_hwm_bytes();
    res->spread = g_spread;
}

/* ---- output ------------------------------------------------------------------------ */
static int mkdir_p(const char *path) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return 0;
}

static void fmt_rate(char *buf, size_t n, double v) {
    if (v >= 1e6) snprintf(buf, n, "%.2fM", v / 1e6);
    else if (v >= 1e4) snprintf(buf, n, "%.1fk", v / 1e3);
    else if (v >= 100) snprintf(buf, n, "%.0f", v);
    else snprintf(buf, n, "%.2f", v);
}

/* "min..max" of a figure, for the table */
static void fmt_range(char *buf, size_t n, const rate *r) {
    char a[16], b[16];
    fmt_rate(a, sizeof a, r->min);
    fmt_rate(b, sizeof b, r->max);
    snprintf(buf, n, "%s..%s", a, b);
}

/* which: 0 median, 1 min, 2 max */
static double rate_pick(const rate *r, int which) {
    return which == 1 ? r->min : which == 2 ? r->max : r->med;
}

static void add_rate(cJSON *o, const char *key, const rate *r, int which) {
    if (which == 3) cJSON_AddItemToObject(o, key, cJSON_CreateDoubleArray(r->rep, r->n));
    else cJSON_AddNumberToObject(o, key, rate_pick(r, which));
}

/* The rate keys of a "flowd" object: which 0 median, 1 min, 2 max, 3 the
 * list of per-repeat rates.  The median object adds its other keys around. */
static void add_rates(cJSON *o, const result *res, int which) {
    add_rate(o, "train_samples_per_s", &res->train_sps, which);
    cJSON *lp = cJSON_AddObjectToObject(o, "log_prob_rows_per_s");
    for (int k = 0; k < NLP; k++) {
        if (!(res->lp_mask & 1u << k)) continue;
        char key[16];
        snprintf(key, sizeof key, "%d", lp_batches[k]);
        add_rate(lp, key, &res->lp_rps[k], which);
    }
    add_rate(o, "sample_rows_per_s", &res->sample_rps, which);
    if (which && !res->ode) add_rate(o, "gflops", &res->gflops, which);
}

/* 1 if key is in the comma list only (NULL or empty: everything but "serve") */
static int wanted(const char *only, const char *key) {
    if (!only || !*only) return strcmp(key, "serve") != 0;
    size_t n = strlen(key);
    for (const char *p = only; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, key, n)) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* Serving footprint: the W1-W3 models built in one process, each scoring a
 * batch of 256 rows with its own workspace.  Returns the peak RSS. */
static long long serve_rss(const workload *wl) {
    nf_flow *f[3];
    nf_ws *w[3];
    const int B = 256;
    char err[256];
    int rc;
    nf_real *out = malloc((size_t)B * sizeof *out);
    for (int i = 0; i < 3; i++) {
        if ((rc = nf_flow_create(wl[i].spec, &f[i], err, sizeof err))) die(err, rc);
        /* as the server does: packed, a forward-only workspace of 256 rows */
        if ((rc = nf_flow_pack_max(f[i], bench_pack_max()))) die("pack", rc);
        if ((rc = nf_ws_create_inference(f[i], B, &w[i]))) die("ws", rc);
    }
    for (int i = 0; i < 3; i++) {
        nf_real *x = malloc((size_t)B * wl[i].D * sizeof *x);
        nf_rng r;
        nf_rng_seed(&r, 5);
        wl[i].gen(&r, x, B, wl[i].D);
        if ((rc = nf_flow_log_prob(f[i], w[i], x, NULL, B, out))) die("log_prob", rc);
        free(x);
    }
    long long rss = vm_hwm_bytes();
    for (int i = 0; i < 3; i++) {
        nf_ws_free(w[i]);
        nf_flow_free(f[i]);
    }
    free(out);
    return rss;
}

/* W4's flow spec (caller frees): the image Glow of bench/torch_glow.py as an
 * explicit layer list.  Preprocessing y = x/256 - 0.5 is elementwise_affine
 * z = (x - shift) / scale with shift 128, scale 256 on every pixel (log-det
 * -784 ln 256); then per level a squeeze, K steps of channel_actnorm,
 * invconv (seed 1, 2, ...: one rotation per layer) and conv_coupling, and a
 * split between the levels. */
#include "w4_spec.h"
/* W4's analytic count (bench/torch_glow.py's w4_formula): per level C
 * channels of P pixels after the squeeze, K steps; the split's prior is a
 * conv3x3 (C/2 -> C, bias) on the kept half. */
static void w4_count(dense_count *c) {
    int C = 1, H = 28, W = 28;
    for (int lv = 0; lv < W4_LEVELS; lv++) {
        C *= 4, H /= 2, W /= 2;
        for (int k = 0; k < W4_K; k++) add_glow_step(c, C, H * W, W4_HIDDEN);
        if (lv < W4_LEVELS - 1) {
            add_conv(c, C / 2, 2 * (C - C / 2), 3, H * W, 1);
            C /= 2;
        }
    }
}

#define NW 5
int main(void) {
    const char *q = getenv("FLOWD_BENCH_QUICK");
    cfg.quick = q && *q && strcmp(q, "0");
    if (cfg.quick) {
        cfg.min_s = 0.05;
        cfg.warm_s = 0.02;
        cfg.nrep = 3;
        cfg.max_s = 0.6;
    } else {
        cfg.min_s = 0.3;
        cfg.warm_s = 0.1;
        cfg.nrep = 5;
        cfg.max_s = 4.0;
    }
    /* W2 sampling: each MADE is inverted by the incremental evaluator
     * (core/net.c nf_made_inc_*: every hidden unit computed once, in degree
     * order), about one density pass per layer.  64 rows per call matches
     * the PyTorch reference, which does the D = 784 full passes its
     * libraries do (FLOWD_BENCH_W2_SAMPLE_N overrides). */
    int w2_sample_n = 64;
    const char *e = getenv("FLOWD_BENCH_W2_SAMPLE_N");
    if (e && atoi(e) > 0) w2_sample_n = atoi(e);

    char *spec4 = w4_spec();
    if (!spec4) die("W4 spec", NF_ENOMEM);
    const unsigned all_lp = (1u << NLP) - 1, lp256 = 1u << 2;
    workload wl[NW] = {
        {"W1", "realnvp moons",
         "{\"dim\":2,\"preset\":\"realnvp\",\"depth\":8,\"hidden\":[128,128],\"seed\":1}",
         "2-D two moons, noise 0.05", 2, 512, 4096, gen_moons, {0, 0}, all_lp, 1e-4, 10, 0, NULL},
        {"W2", "maf 784-D",
         "{\"dim\":784,\"preset\":\"maf\",\"depth\":5,\"hidden\":[1024],\"seed\":1}",
         "784-D standard Gaussian", 784, 128, w2_sample_n, gen_gauss, {0, 0}, all_lp, 1e-4, 10,
         0, NULL},
        {"W3", "nsf 30-D",
         "{\"dim\":30,\"preset\":\"nsf\",\"depth\":5,\"hidden\":[256],\"bins\":8,"
         "\"tail_bound\":3,\"seed\":1}",
         "30-D standard Gaussian", 30, 512, 4096, gen_gauss, {0, 0}, all_lp, 1e-4, 10, 0, NULL},
        {"W4", "glow 1x28x28", spec4,
         "1x28x28 random images, pixels 0..255 + U[0,1)", 784, 64, 256,
         gen_pixels, {0, 0}, lp256, 1e-3, 0, 1, NULL},
        {"W5", "ffjord moons",
         "{\"dim\":2,\"preset\":\"ffjord\",\"hidden\":[64,64,64],\"solver\":\"dopri5\","
         "\"rtol\":1e-5,\"atol\":1e-5,\"seed\":1}",
         "2-D two moons, noise 0.05", 2, 256, 4096, gen_moons, {0, 0}, all_lp, 1e-4, 0, 0,
         w5_init},
    };
    /* W1: 8 couplings, conditioner 1 -> [128,128] -> 2 (scale, shift of 1 dim) */
    for (int k = 0; k < 8; k++) add_mlp(&wl[0].dc, 1, (const int[]){128, 128}, 2, 2);
    /* W2: 5 MADEs 784 -> [1024] -> 2*784, counted as dense (masked entries too) */
    for (int k = 0; k < 5; k++) add_mlp(&wl[1].dc, 784, (const int[]){1024}, 1, 2 * 784);
    /* W3: 5 couplings, resnet 15 -> 256, 2 blocks, 256 -> 15*(3*8-1) spline params;
     * 4 lu_linear 30x30 (params: D*D + D bias) */
    for (int k = 0; k < 5; k++) add_resnet(&wl[2].dc, 15, 256, 2, 15 * (3 * 8 - 1));
    for (int k = 0; k < 4; k++) {
        add_lin(&wl[2].dc, 30, 30, 0);
        wl[2].dc.par += 30;
    }
    /* W4: every convolution (couplings, invconvs, the split's prior) */
    w4_count(&wl[3].dc);
    /* W5: per dynamics evaluation and row, concat-squash (W, b, a, c, d) */
    add_mlp(&wl[4].dc, 2, w5_hidden, 3, 2);
    wl[4].dc.par += 3.0 * (64 * 3 + 2);

    int threads = g_threads = openblas_get_num_threads();
    const char *split = getenv("FLOWD_BENCH_SPLIT");
    g_core_threads = split && !strcmp(split, "0") ? 1 : threads;
    blas_for_workloads();
    const char *only = getenv("FLOWD_BENCH_ONLY");
    int partial = only && *only;
    double t_start = now_s();
    /* sgemm peak measured before and after the workloads, best kept, so a
     * busy moment on a shared host does not lower the reference */
    int do_sgemm = wanted(only, "sgemm");
    double g1024 = 0, g2048 = 0;
    if (do_sgemm) {
        g1024 = sgemm_gflops(1024, cfg.quick ? 3 : 10);
        g2048 = sgemm_gflops(2048, cfg.quick ? 1 : 3);
    }
    int hwm_reset = reset_hwm() == 0;
    long long serve = wanted(only, "serve") ? serve_rss(wl) : -1;
    cJSON *sweep = only && wanted(only, "cnf_trace") ? cnf_trace_sweep() : NULL;
    result res[NW];
    int ran[NW];
    memset(res, 0, sizeof res);
    for (int i = 0; i < NW; i++) {
        if (!(ran[i] = wanted(only, wl[i].key))) continue;
        if (hwm_reset) reset_hwm();
        fprintf(stderr, "bench_core: %s %s ...\n", wl[i].key, wl[i].name);
        double t0 = now_s();
        run_workload(&wl[i], &res[i]);
        if (res[i].ok && !partial)
            fprintf(stderr, "bench_core: %s took %.1f s\n", wl[i].key, now_s() - t0);
    }
    if (do_sgemm) {
        g1024 = fmax(g1024, sgemm_gflops(1024, cfg.quick ? 3 : 10));
        g2048 = fmax(g2048, sgemm_gflops(2048, cfg.quick ? 1 : 3));
    }
    double peak = g1024 > g2048 ? g1024 : g2048;
    double elapsed = now_s() - t_start;
    if (partial) goto json;

    /* table: a column per workload; "-" where a figure was not measured */
    printf("\nflowd core benchmark (%s mode, %d thread%s: %s, float32)\n",
           cfg.quick ? "quick" : "full", threads, threads == 1 ? "" : "s",
           g_core_threads > 1 ? "rows split over threads, 1 BLAS thread each"
                              : "one thread calling OpenBLAS with all of them");
    printf("sgemm peak: %.1f GFLOP/s (n=1024 %.1f, n=2048 %.1f; best of runs before and after)\n\n", peak, g1024,
           g2048);
    printf("%-26s %15s %15s %15s %15s %15s\n", "", "W1 realnvp", "W2 maf", "W3 nsf", "W4 glow",
           "W5 ffjord");
    char c[NW][40];
#define PRINT_ROW(label)                                                              \
    printf("%-26s %15s %15s %15s %15s %15s\n", label, c[0], c[1], c[2], c[3], c[4])
    /* a rate row (median) and under it the range min..max over the repeats */
#define ROW(label, field, have)                                                   \
    do {                                                                          \
        for (int i = 0; i < NW; i++)                                              \
            if (have) fmt_rate(c[i], sizeof c[i], res[i].field.med);              \
            else snprintf(c[i], sizeof c[i], "-");                                \
        PRINT_ROW(label);                                                         \
        for (int i = 0; i < NW; i++)                                              \
            if (have) fmt_range(c[i], sizeof c[i], &res[i].field);                \
            else snprintf(c[i], sizeof c[i], "-");                                \
        PRINT_ROW("  min..max");                                                  \
    } while (0)
#define EACH_IF(cond, ...)                                                        \
    for (int i = 0; i < NW; i++)                                                  \
        if (res[i].ok && (cond)) snprintf(c[i], sizeof c[i], __VA_ARGS__);       \
        else snprintf(c[i], sizeof c[i], "-")
#define EACH(...) EACH_IF(1, __VA_ARGS__)
#define EACH_DENSE(...) EACH_IF(!res[i].ode, __VA_ARGS__)
    ROW("train samples/s", train_sps, res[i].ok);
    ROW("log_prob rows/s  B=1", lp_rps[0], res[i].ok && res[i].lp_mask & 1u);
    ROW("log_prob rows/s  B=64", lp_rps[1], res[i].ok && res[i].lp_mask & 2u);
    ROW("log_prob rows/s  B=256", lp_rps[2], res[i].ok && res[i].lp_mask & 4u);
    ROW("log_prob rows/s  B=4096", lp_rps[3], res[i].ok && res[i].lp_mask & 8u);
    ROW("sample rows/s", sample_rps, res[i].ok);
#undef ROW
    EACH("%d", res[i].sample_n);
    PRINT_ROW("  (sample batch)");
    EACH("%.2f MB", 4.0 * (double)res[i].nparams / 1e6);
    PRINT_ROW("param bytes");
    EACH("%.1f MB", res[i].rss / 1e6);
    PRINT_ROW(hwm_reset ? "peak RSS (per workload)" : "peak RSS (cumulative)");
    EACH_DENSE("%.2f", 6.0 * wl[i].dc.mac / 1e6);
    PRINT_ROW("train MFLOP/row (3x fwd)");
    EACH_DENSE("%.2f (%.0f%%)", res[i].gflops.med, 100 * res[i].gflops.med / peak);
    PRINT_ROW("train GFLOP/s (% of peak)");
    EACH_DENSE("%.2f..%.2f", res[i].gflops.min, res[i].gflops.max);
    PRINT_ROW("  min..max");
    EACH_DENSE("%.2f (%.0f%%)", res[i].gflops_lp, 100 * res[i].gflops_lp / peak);
    PRINT_ROW("log_prob GFLOP/s (top B)");
    EACH_DENSE("%d", res[i].lp_top);
    PRINT_ROW("  (at B)");
    EACH_DENSE("%.2f (%.0f%%)", res[i].gflops_exec, 100 * res[i].gflops_exec / peak);
    PRINT_ROW("train GFLOP/s executed");
    EACH_IF(res[i].ode, "%.1f + %.1f", res[i].nfe_train, res[i].nfe_train_bwd);
    PRINT_ROW("ODE: train NFE fwd + grad");
    EACH_IF(res[i].ode, "%.1f / %.1f", res[i].nfe_lp[2], res[i].nfe_lp[3]);
    PRINT_ROW("  log_prob 256 / 4096");
    EACH_IF(res[i].ode, "%.1f", res[i].nfe_sample);
    PRINT_ROW("  sample (per row)");
    EACH("%.0f%%", 100 * res[i].spread);
    PRINT_ROW("max repeat spread");
#undef EACH
#undef EACH_DENSE
#undef EACH_IF
#undef PRINT_ROW
    printf("\nW1: realnvp, 8 affine couplings, MLP [128,128], %s; train batch 512\n",
           wl[0].data_desc);
    printf("W2: maf, 5 MADE [1024] + reverse permutations, %s; train batch 128;\n"
           "    sampling inverts each MADE in one incremental pass, %d rows per call\n",
           wl[1].data_desc, res[1].sample_n);
    printf("W3: nsf preset = 5 RQ-spline couplings (8 bins, tail 3, resnet [256] x 2 blocks)\n"
           "    with lu_linear layers between them (4), %s; train batch 512\n",
           wl[2].data_desc);
    printf("W4: glow, 2 levels x 8 steps (channel actnorm, invconv, conv affine coupling,\n"
           "    glow net 64 channels), split between; %s;\n"
           "    train batch 64 (Adam 1e-3, no clipping), log_prob 256 rows, sampling 256%s%s\n",
           wl[3].data_desc, res[3].ok ? "" : "\n    NOT RUN: ", res[3].ok ? "" : res[3].err);
    printf("W5: ffjord, one CNF block (concat-squash MLP [64,64,64], tanh), dopri5 at\n"
           "    rtol = atol = 1e-5, exact trace, backprop through the solver, %s; train\n"
           "    batch 256 (Adam 1e-4, no clipping) from fixed non-trivial parameters (see w5_init);\n"
           "    NFE: dynamics evaluations per row and solve (train: per batched solve)\n",
           wl[4].data_desc);
    printf("GFLOP/s counts dense layers only: 2*B*in*out per linear (x3 for training),\n"
           "MADE masks as dense (what PyTorch multiplies); \"executed\" counts what flowd\n"
           "multiplies (MADE staircases skip most masked weights).  W4 counts every\n"
           "convolution, 2*B*cout*cin*k*k*H*W (x3 for training).\n");
    printf("Median of %d repeats of >= %.2f s after warm-up (fewer repeats where one call\n"
           "is long), min..max the slowest and fastest repeat; total %.1f s.\n",
           cfg.nrep, cfg.min_s, elapsed);

    /* JSON: per workload {"flowd":{...}} so a "torch" object can sit beside it */
json:;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "mode", cfg.quick ? "quick" : "full");
    cJSON_AddNumberToObject(root, "blas_threads", threads);
    cJSON_AddNumberToObject(root, "core_threads", g_core_threads);
    if (do_sgemm) {
        cJSON_AddNumberToObject(root, "sgemm_peak_gflops", peak);
        cJSON *sg = cJSON_AddObjectToObject(root, "sgemm_gflops");
        cJSON_AddNumberToObject(sg, "1024", g1024);
        cJSON_AddNumberToObject(sg, "2048", g2048);
    }
    cJSON_AddBoolToObject(root, "peak_rss_per_workload", hwm_reset);
    if (serve >= 0) cJSON_AddNumberToObject(root, "serve_peak_rss_bytes", (double)serve);
    if (sweep) cJSON_AddItemToObject(root, "cnf_trace_sweep", sweep);
    for (int i = 0; i < NW; i++) {
        if (!ran[i]) continue;
        cJSON *w = cJSON_AddObjectToObject(root, wl[i].key);
        cJSON_AddStringToObject(w, "spec", wl[i].spec);
        cJSON_AddStringToObject(w, "data", wl[i].data_desc);
        cJSON_AddNumberToObject(w, "train_batch", wl[i].train_batch);
        cJSON_AddNumberToObject(w, "dense_flops_per_row_fwd", 2.0 * wl[i].dc.mac);
        if (!res[i].ok) {
            cJSON_AddStringToObject(w, "error", res[i].err);
            continue;
        }
        cJSON_AddNumberToObject(w, "sample_batch", res[i].sample_n);
        cJSON_AddNumberToObject(w, "exec_flops_per_row_fwd", 2.0 * res[i].exec_mac);
        cJSON *o = cJSON_AddObjectToObject(w, "flowd");
        add_rates(o, &res[i], 0);
        if (res[i].ode) {
            cJSON *n = cJSON_AddObjectToObject(o, "nfe");
            cJSON_AddNumberToObject(n, "train_forward", res[i].nfe_train);
            cJSON_AddNumberToObject(n, "train_gradient", res[i].nfe_train_bwd);
            for (int k = 0; k < NLP; k++) {
                char key[24];
                snprintf(key, sizeof key, "log_prob_%d", lp_batches[k]);
                cJSON_AddNumberToObject(n, key, res[i].nfe_lp[k]);
            }
            cJSON_AddNumberToObject(n, "sample", res[i].nfe_sample);
            cJSON_AddItemToObject(o, "check_log_prob", cJSON_CreateDoubleArray(res[i].check_lp, 4));
        }
        cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)res[i].rss);
        cJSON_AddNumberToObject(o, "param_bytes", 4.0 * (double)res[i].nparams);
        cJSON_AddNumberToObject(o, "max_repeat_spread", res[i].spread);
        add_rates(cJSON_AddObjectToObject(o, "min"), &res[i], 1);
        add_rates(cJSON_AddObjectToObject(o, "max"), &res[i], 2);
        add_rates(cJSON_AddObjectToObject(o, "repeats"), &res[i], 3);
        cJSON_AddNumberToObject(o, "packed_bytes", (double)res[i].packed_bytes);
        if (res[i].ode) continue; /* GFLOP/s: per evaluation, not per row */
        cJSON_AddNumberToObject(o, "gflops", res[i].gflops.med);
        if (do_sgemm) cJSON_AddNumberToObject(o, "gflops_frac_peak", res[i].gflops.med / peak);
        char key[40];
        snprintf(key, sizeof key, "gflops_log_prob_%d", res[i].lp_top);
        cJSON_AddNumberToObject(o, key, res[i].gflops_lp);
        cJSON_AddNumberToObject(o, "gflops_executed", res[i].gflops_exec);
        if (do_sgemm)
            cJSON_AddNumberToObject(o, "gflops_executed_frac_peak", res[i].gflops_exec / peak);
    }
    free(spec4);
    const char *path = getenv("FLOWD_BENCH_OUT");
    if (!path || !*path) path = "build/bench/results.json";
    char *txt = cJSON_Print(root);
    FILE *fp = NULL;
    if (txt && mkdir_p(path) == 0) fp = fopen(path, "w");
    if (!fp || fputs(txt, fp) < 0 || fputc('\n', fp) < 0) {
        fprintf(stderr, "bench_core: cannot write %s\n", path);
        if (fp) fclose(fp);
        free(txt);
        cJSON_Delete(root);
        return 1;
    }
    fclose(fp);
    if (!partial) printf("JSON: %s\n", path);
    free(txt);
    cJSON_Delete(root);
    return 0;
}
