/* cnf.c: continuous normalizing flows (FFJORD, Grathwohl et al. 2019), the
 * layer type "cnf".
 *
 * The layer is the flow map of an ODE over t in [0, 1]:
 *     dz/dt = f(z, t; θ)  (a time-conditioned MLP, below)
 *     inverse (density, x -> z): z(0) = x, z = z(1),
 *         logdet = log|det dz/dx| = ∫_0^1 tr(∂f/∂z(z(t), t)) dt   (Liouville)
 *     forward (sampling, z -> x): the same ODE integrated from t = 1 to 0,
 *         logdet = log|det dx/dz| = -∫_0^1 tr(∂f/∂z) dt.
 * Both are solved as one augmented ODE over (z, ℓ) with dℓ/dt = tr; ℓ's
 * step is signed, so the forward pass's ℓ is the second formula.
 *
 * Dynamics: FFJORD's concat-squash layers, for l = 1..nl (the last has no
 * activation and D outputs, the first reads [z, context]):
 *     pre_l = (W_l h_{l-1} + b_l) * sigmoid(a_l t + c_l) + d_l t,
 *     h_l = act(pre_l)  (tanh or softplus: smooth, so the ODE has a unique,
 *                        differentiable solution; ReLU is refused).
 * Parameters per layer: W (out,in) row-major, b, a, c, d (out).  The last
 * layer's W, b and d start at zero, so a fresh layer is the identity.
 *
 * The trace.  Every evaluation carries K tangents through the MLP in forward
 * mode, T_0^k = e_k (exact: K = D, tr = Σ_k (J e_k)_k) or one probe ε
 * (Hutchinson, Rademacher or Gaussian: K = 1, tr ≈ ε^T J ε, unbiased since
 * E[ε ε^T] = I).  Value rows and tangent rows share each layer's GEMM:
 *     tangent:  dpre_l^k = (W_l T_{l-1}^k) * g_l,  T_l^k = act'(pre_l) dpre_l^k.
 * The training trace is the spec's "trace"; passes outside training
 * (log_prob, encode, decode: scoring) use the exact trace whenever
 * D <= NF_CNF_EXACT_MAX, so a stochastic estimate is returned only above it,
 * and nf_flow_log_prob_exact says so.
 *
 * Regularisers (Finlay et al. 2020), training passes only: the kinetic energy
 * K = ∫ |f|^2 dt and the Jacobian Frobenius norm J = ∫ ||∂f/∂z||_F^2 dt
 * (exact with the exact trace, else its estimate |J ε|^2), integrated with
 * ℓ.  nf_flow_log_prob_grad(_ex) with training != 0 differentiates
 *     Σ_b dlogp_b (log p_b - λ_K K_b - λ_J J_b)
 * (the flow passes the per-row weight -dlogp_b as nf_ctx.wreg).
 *
 * Solvers: RK4 with "steps" fixed steps, or Dormand-Prince 5(4) with
 * per-row step-size control: every row has its own t and step, so a row's
 * result does not depend on the other rows of its batch (chunks and threads
 * give the same per-row answers).  The error of a step is the mixed norm
 * max(rms_z(e/s), |e_ℓ|/s_ℓ), s = atol + rtol max(|y0|, |y1|) (the
 * regularisers' integrals take no part); accepted when <= 1, and the next
 * step is h * clamp(0.9 err^(-1/5), 0.2, 10) (at most h after a rejection).
 * The first step is Hairer's (Hairer, Nørsett, Wanner, II.4).  After
 * "max_steps" step attempts of any row the call fails with NF_ESTEPS.
 *
 * Gradients (the backward of the inverse pass):
 *  - "backprop": the inverse pass records every accepted step (row, t, h,
 *    z at the step's start) on a tape in the workspace; backward walks it in
 *    reverse, recomputing each step's stages and differentiating them (the
 *    exact gradient of the discrete map, treating step sizes as constants).
 *    Scratch: max_steps (rk4: steps) x rows x (D floats + 20 bytes).
 *  - "adjoint": the adjoint sensitivity method (Chen et al. 2018): solve
 *    [z, a] backwards from t = 1 with the same solver and tolerances,
 *        da/dt = -a^T ∂F/∂z,  dL/dθ = ∫_0^1 a^T ∂F/∂θ dt,
 *    where F = (f, tr, |f|^2, ||J||^2) carries the cotangents (a, dL/dℓ,
 *    λ_K w, λ_J w); the θ-integral is the RK quadrature of each accepted
 *    step, added straight into the gradient.  Memory does not grow with the
 *    step count; the error norm covers z and a (a seminorm: θ's integral is
 *    left out, Kidger et al. 2021).
 * Both differentiate through the trace: reverse mode over the forward-mode
 * tangents (dyn_vjp below, the second derivatives of the activations).
 *
 * Counters: every solve adds its dynamics evaluations, steps and regulariser
 * integrals to the workspace's nf_ode_stats (nf_ctx.ode).
 */
#include "alloc.h"
#include "kern.h"
#include "nf_internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define CNF_MAXL 17 /* linear layers: up to 16 hidden + output */
#define NACC 3      /* accumulators per row: ℓ, kinetic, Jacobian norm */

enum { ACT_TANH, ACT_SOFTPLUS, ACT_COUNT };
static const char *const act_names[] = {"tanh", "softplus", NULL};
enum { SOLVER_DOPRI5, SOLVER_RK4 };
static const char *const solver_names[] = {"dopri5", "rk4", NULL};
enum { TRACE_EXACT, TRACE_HUTCH };
static const char *const trace_names[] = {"exact", "hutchinson", NULL};
enum { PROBE_RADEMACHER, PROBE_GAUSSIAN };
static const char *const probe_names[] = {"rademacher", "gaussian", NULL};
enum { GRAD_BACKPROP, GRAD_ADJOINT };
static const char *const grad_names[] = {"backprop", "adjoint", NULL};

typedef struct {
    int in, out;
    size_t w, b, a, c, d; /* offsets: W (out,in), then b, a, c, d (out) */
} cs_lin;

typedef struct cnf {
    int D, C, nl, nh, hidden[16];
    cs_lin lin[CNF_MAXL];
    int act, solver, steps, max_steps, trace, probe, grad;
    double rtol, atol, reg_kin, reg_jac;
    int Kmax;  /* tangents the workspace is sized for */
    int maxw;  /* widest layer input or output */
    int iters; /* tape iterations: steps (rk4) or max_steps */
} cnf;

/* ---- Butcher tableaux --------------------------------------------------- */
typedef struct {
    int s, nsol;          /* stages; stages with b != 0 or feeding them */
    int adaptive;
    double c[7], a[7][7], b[7], e[7]; /* e = b - b* (error weights) */
} tableau;

static const tableau TAB_DOPRI5 = {
    7, 6, 1,
    {0, 1. / 5, 3. / 10, 4. / 5, 8. / 9, 1, 1},
    {{0},
     {1. / 5},
     {3. / 40, 9. / 40},
     {44. / 45, -56. / 15, 32. / 9},
     {19372. / 6561, -25360. / 2187, 64448. / 6561, -212. / 729},
     {9017. / 3168, -355. / 33, 46732. / 5247, 49. / 176, -5103. / 18656},
     {35. / 384, 0, 500. / 1113, 125. / 192, -2187. / 6784, 11. / 84}},
    {35. / 384, 0, 500. / 1113, 125. / 192, -2187. / 6784, 11. / 84, 0},
    {35. / 384 - 5179. / 57600, 0, 500. / 1113 - 7571. / 16695, 125. / 192 - 393. / 640,
     -2187. / 6784 + 92097. / 339200, 11. / 84 - 187. / 2100, -1. / 40},
};
static const tableau TAB_RK4 = {
    4, 4, 0, {0, .5, .5, 1}, {{0}, {.5}, {0, .5}, {0, 0, 1}}, {1. / 6, 1. / 3, 1. / 3, 1. / 6}, {0},
};

static const tableau *tab_of(const cnf *c) {
    return c->solver == SOLVER_RK4 ? &TAB_RK4 : &TAB_DOPRI5;
}

/* ---- scratch carving -------------------------------------------------------
 * Every array of the workspace is carved from ws at 64-byte boundaries; a
 * carver with p == NULL only measures. */
typedef struct {
    char *p;
    size_t used;
} carver;

static void *take(carver *cv, size_t bytes) {
    size_t off = (cv->used + 63) & ~(size_t)63;
    cv->used = off + bytes;
    return cv->p ? cv->p + off : NULL;
}
#define TAKE(cv, type, n) ((type *)take(cv, (size_t)(n) * sizeof(type)))

/* One dynamics evaluation over n rows with K tangents, R = n (K + 1) rows:
 * value row r, tangent k of row r at (k+1) n + r.  Per linear layer l:
 *   Y (R,out): W h + b | W T     (after dyn_vjp: ū | v̄)
 *   G (n,out): gates             (after: ḡ g (1 - g))
 *   P (n,out): pre-activations   (after: P̄, dL/dpre)
 *   O (R,out): h | T (hidden), f | J T_0 (last)
 * x0 (n, D+C): [z, ctx]; cbar (n, C): dL/dctx of the value rows. */
typedef struct {
    int n, K;
    nf_real *x0, *cbar;
    nf_real *Y[CNF_MAXL], *G[CNF_MAXL], *P[CNF_MAXL], *O[CNF_MAXL];
} rec;

static void rec_carve(const cnf *c, carver *cv, int n, int K, rec *R) {
    size_t Rn = (size_t)n * (K + 1);
    R->n = n;
    R->K = K;
    R->x0 = TAKE(cv, nf_real, (size_t)n * (c->D + c->C));
    R->cbar = TAKE(cv, nf_real, (size_t)n * c->C + 1);
    for (int l = 0; l < c->nl; l++) {
        int H = c->lin[l].out;
        R->Y[l] = TAKE(cv, nf_real, Rn * H);
        R->G[l] = TAKE(cv, nf_real, (size_t)n * H);
        R->P[l] = TAKE(cv, nf_real, (size_t)n * H);
        R->O[l] = TAKE(cv, nf_real, Rn * H);
    }
}

static size_t rec_bytes(const cnf *c, int n, int K) {
    carver cv = {NULL, 0};
    rec R;
    rec_carve(c, &cv, n, K, &R);
    return cv.used + 64;
}

/* The layer's scratch (for B rows). */
typedef struct {
    int niter;       /* tape: iterations recorded by the last inverse pass */
    int K;           /* tangents of that pass */
    size_t nent;     /* tape entries */
} tape_hdr;

typedef struct {
    tape_hdr *hdr;
    nf_real *eps;           /* (B,D) probes of the last pass */
    nf_real *y, *a, *k1;    /* (B,D): state z, adjoint, FSAL derivative */
    double *acc, *k1acc;    /* (B,NACC) */
    double *t, *h;          /* (B) */
    int *idx, *fail;        /* (B) */
    /* compact rows of one iteration (n <= B) */
    nf_real *ys, *as, *Ys, *As, *y5, *a5, *cs, *es, *af, *atr, *afro, *wt;
    nf_real *cl, *ck, *cj;  /* (B) cotangents of ℓ, kinetic, Jacobian norm */
    double *ts, *hs, *tst, *tsi[7];
    nf_real *kz[7], *ka[7], *ybar[7];
    double *kacc[7];
    nf_real *tmpA, *tmpB;   /* (B (Kmax+1), maxw) vjp scratch */
    char *recmem[7];        /* evaluation records */
    size_t recsz;
    int nrec;
    /* tape (backprop) */
    int *tstart;            /* (iters+1) */
    int *trow;              /* (iters B) */
    double *tt, *th;
    nf_real *tz;            /* (iters B, D) */
    size_t tcap;
} sws;

static void sws_carve(const cnf *c, carver *cv, int B, int infer, sws *S) {
    const int D = c->D, C = c->C;
    const tableau *T = tab_of(c);
    memset(S, 0, sizeof *S);
    S->hdr = TAKE(cv, tape_hdr, 1);
    S->eps = TAKE(cv, nf_real, (size_t)B * D);
    S->y = TAKE(cv, nf_real, (size_t)B * D);
    S->a = TAKE(cv, nf_real, (size_t)B * D);
    S->k1 = TAKE(cv, nf_real, (size_t)B * D);
    S->acc = TAKE(cv, double, (size_t)B * NACC);
    S->k1acc = TAKE(cv, double, (size_t)B * NACC);
    S->t = TAKE(cv, double, B);
    S->h = TAKE(cv, double, B);
    S->idx = TAKE(cv, int, B);
    S->fail = TAKE(cv, int, B);
    nf_real **vec[] = {&S->ys, &S->as, &S->Ys, &S->As, &S->y5, &S->a5, &S->es, &S->af};
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) *vec[i] = TAKE(cv, nf_real, (size_t)B * D);
    S->cs = TAKE(cv, nf_real, (size_t)B * C + 1);
    S->atr = TAKE(cv, nf_real, B);
    S->cl = TAKE(cv, nf_real, B);
    S->ck = TAKE(cv, nf_real, B);
    S->cj = TAKE(cv, nf_real, B);
    S->afro = TAKE(cv, nf_real, B);
    S->wt = TAKE(cv, nf_real, B);
    S->ts = TAKE(cv, double, B);
    S->hs = TAKE(cv, double, B);
    S->tst = TAKE(cv, double, B);
    for (int i = 0; i < T->s; i++) {
        S->kz[i] = TAKE(cv, nf_real, (size_t)B * D);
        S->kacc[i] = TAKE(cv, double, (size_t)B * NACC);
        S->tsi[i] = TAKE(cv, double, B);
        if (!infer) {
            S->ka[i] = TAKE(cv, nf_real, (size_t)B * D);
            S->ybar[i] = TAKE(cv, nf_real, (size_t)B * D);
        }
    }
    size_t Rn = (size_t)B * (c->Kmax + 1);
    S->nrec = infer ? 1 : (c->grad == GRAD_ADJOINT ? T->s : T->nsol);
    S->recsz = rec_bytes(c, B, c->Kmax);
    if (!infer) {
        S->tmpA = TAKE(cv, nf_real, Rn * c->maxw);
        S->tmpB = TAKE(cv, nf_real, Rn * c->maxw);
    }
    for (int i = 0; i < S->nrec; i++) S->recmem[i] = take(cv, S->recsz);
    if (!infer && c->grad == GRAD_BACKPROP) {
        S->tcap = (size_t)c->iters * B;
        S->tstart = TAKE(cv, int, (size_t)c->iters + 1);
        S->trow = TAKE(cv, int, S->tcap);
        S->tt = TAKE(cv, double, S->tcap);
        S->th = TAKE(cv, double, S->tcap);
        S->tz = TAKE(cv, nf_real, S->tcap * D);
    }
}

static size_t ws_reals(const cnf *c, int B, int infer) {
    carver cv = {NULL, 0};
    sws S;
    sws_carve(c, &cv, B, infer, &S);
    return (cv.used + 64) / sizeof(nf_real) + 1;
}

static size_t cnf_ws_size(const nf_layer *L, int B) { return ws_reals(L->impl, B, 0); }
static size_t cnf_ws_size_infer(const nf_layer *L, int B) { return ws_reals(L->impl, B, 1); }

static sws sws_of(const cnf *c, const nf_ctx *cx) {
    carver cv = {(char *)(((uintptr_t)cx->ws + 63) & ~(uintptr_t)63), 0};
    sws S;
    sws_carve(c, &cv, cx->B, cx->infer, &S);
    return S;
}

static rec rec_at(const cnf *c, char *mem, int n, int K) {
    carver cv = {(char *)(((uintptr_t)mem + 63) & ~(uintptr_t)63), 0};
    rec R;
    rec_carve(c, &cv, n, K, &R);
    return R;
}

/* ---- the dynamics ------------------------------------------------------------ */
static inline double sigm(double x) { return 1 / (1 + exp(-x)); }

/* act(p), act'(p), act''(p) */
static inline void act3(int act, double p, double *s0, double *s1, double *s2) {
    if (act == ACT_TANH) {
        double h = tanh(p);
        *s0 = h;
        *s1 = 1 - h * h;
        *s2 = -2 * h * *s1;
    } else {
        double s = sigm(p);
        *s0 = p > 30 ? p : log1p(exp(p));
        *s1 = s;
        *s2 = s * (1 - s);
    }
}

/* Evaluate f and the tangents for n rows: z (n,D), ctx (n,C) or NULL, t (n),
 * eps (n,D) probes (K = 1) or NULL (K = D identity tangents). */
static void dyn_eval(const cnf *c, const nf_real *prm, rec *R, const nf_real *z,
                     const nf_real *ctx, const double *t, const nf_real *eps) {
    const int n = R->n, K = R->K, D = c->D, C = c->C, I0 = D + C;
    const size_t Rn = (size_t)n * (K + 1);
    for (int r = 0; r < n; r++) {
        memcpy(R->x0 + (size_t)r * I0, z + (size_t)r * D, (size_t)D * sizeof *z);
        if (C) memcpy(R->x0 + (size_t)r * I0 + D, ctx + (size_t)r * C, (size_t)C * sizeof *ctx);
    }
    for (int l = 0; l < c->nl; l++) {
        const cs_lin *L = &c->lin[l];
        const int H = L->out, I = L->in, hidden = l < c->nl - 1;
        const nf_real *W = prm + L->w, *b = prm + L->b, *a = prm + L->a, *cc = prm + L->c,
                      *d = prm + L->d;
        nf_real *Y = R->Y[l], *G = R->G[l], *P = R->P[l], *O = R->O[l];
        if (l == 0) {
            nf_gemm(0, 1, n, H, I, 1, R->x0, I, W, I, 0, Y, H);
            if (eps) {
                nf_gemm(0, 1, n, H, D, 1, eps, D, W, I, 0, Y + (size_t)n * H, H);
            } else {
                for (int k = 0; k < K; k++)
                    for (int r = 0; r < n; r++) {
                        nf_real *y = Y + ((size_t)(k + 1) * n + r) * H;
                        for (int j = 0; j < H; j++) y[j] = W[(size_t)j * I + k];
                    }
            }
        } else {
            nf_gemm(0, 1, (int)Rn, H, I, 1, R->O[l - 1], I, W, I, 0, Y, H);
        }
#ifndef NF_DOUBLE
        if (!hidden || c->act == ACT_TANH) { /* the vectorised float rows (core/kern.h) */
            float sb[256];
            for (int r = 0; r < n; r++)
                for (int j0 = 0; j0 < H; j0 += 256) {
                    const int m = H - j0 < 256 ? H - j0 : 256;
                    const size_t o = (size_t)r * H + j0;
                    nf_cs_row(m, (float)t[r], a + j0, cc + j0, b + j0, d + j0, Y + o, G + o,
                              P + o, O + o, sb, hidden);
                    for (int k = 0; k < K; k++) {
                        const size_t q = ((size_t)(k + 1) * n + r) * H + j0;
                        for (int j = 0; j < m; j++) O[q + j] = sb[j] * Y[q + j];
                    }
                }
            continue;
        }
#endif
        for (int r = 0; r < n; r++) {
            const double tr = t[r];
            nf_real *yr = Y + (size_t)r * H, *gr = G + (size_t)r * H, *pr = P + (size_t)r * H,
                    *or = O + (size_t)r * H;
            for (int j = 0; j < H; j++) {
                double g = sigm((double)a[j] * tr + cc[j]), u = (double)yr[j] + b[j];
                double p = u * g + (double)d[j] * tr, s0 = p, s1 = 1, s2;
                if (hidden) act3(c->act, p, &s0, &s1, &s2);
                yr[j] = (nf_real)u;
                gr[j] = (nf_real)g;
                pr[j] = (nf_real)p;
                or[j] = (nf_real)s0;
                for (int k = 0; k < K; k++) {
                    size_t q = ((size_t)(k + 1) * n + r) * H + j;
                    O[q] = (nf_real)(s1 * g * Y[q]);
                }
            }
        }
    }
}

/* tr, |f|^2 and the Jacobian norm of each row after dyn_eval; f to kz (n,D) */
static void dyn_outputs(const cnf *c, const rec *R, const nf_real *eps, nf_real *kz,
                        double *kacc) {
    const int n = R->n, K = R->K, D = c->D;
    const nf_real *O = R->O[c->nl - 1];
    for (int r = 0; r < n; r++) {
        const nf_real *f = O + (size_t)r * D;
        double kin = 0, tr = 0, fro = 0;
        for (int i = 0; i < D; i++) kin += (double)f[i] * f[i];
        for (int k = 0; k < K; k++) {
            const nf_real *jk = O + ((size_t)(k + 1) * n + r) * D;
            if (eps)
                for (int i = 0; i < D; i++) tr += (double)eps[(size_t)r * D + i] * jk[i];
            else tr += jk[k];
            for (int i = 0; i < D; i++) fro += (double)jk[i] * jk[i];
        }
        memcpy(kz + (size_t)r * D, f, (size_t)D * sizeof *f);
        kacc[(size_t)r * NACC] = tr;
        kacc[(size_t)r * NACC + 1] = kin;
        kacc[(size_t)r * NACC + 2] = fro;
    }
}

/* Reverse mode over a record: cotangents af (n,D) on f, atr (n) on tr and
 * afro (n) on the Jacobian norm give zbar (n,D) = dL/dz (written) and leave
 * in the record what dyn_param_grad needs.  A, B: (R, maxw) scratch. */
static void dyn_vjp(const cnf *c, const nf_real *prm, rec *R, const nf_real *eps,
                    const nf_real *af, const nf_real *atr, const nf_real *afro, nf_real *zbar,
                    nf_real *A, nf_real *Bf) {
    const int n = R->n, K = R->K, D = c->D, C = c->C, I0 = D + C;
    const size_t Rn = (size_t)n * (K + 1);
    const nf_real *O = R->O[c->nl - 1];
    /* the adjoint of the last layer's outputs: f gets af, tangent k of row r
     * atr_r eps_k + 2 afro_r J T_0^k */
    for (int r = 0; r < n; r++) {
        memcpy(A + (size_t)r * D, af + (size_t)r * D, (size_t)D * sizeof *A);
        for (int k = 0; k < K; k++) {
            size_t q = ((size_t)(k + 1) * n + r) * D;
            for (int i = 0; i < D; i++) {
                double e = eps ? eps[(size_t)r * D + i] : (i == k);
                A[q + i] = (nf_real)(atr[r] * e + 2.0 * afro[r] * O[q + i]);
            }
        }
    }
    for (int l = c->nl - 1; l >= 0; l--) {
        const cs_lin *L = &c->lin[l];
        const int H = L->out, I = L->in, hidden = l < c->nl - 1;
        nf_real *Y = R->Y[l], *G = R->G[l], *P = R->P[l];
        const nf_real *Ol = R->O[l];
        /* per row, in blocks of 256 units, tangents in the inner loop over
         * units (contiguous, vectorised); each unit's sums run over k in
         * order, as a unit-at-a-time loop would */
        for (int r = 0; r < n; r++)
            for (int j0 = 0; j0 < H; j0 += 256) {
                const int m = H - j0 < 256 ? H - j0 : 256;
                const size_t v0 = (size_t)r * H + j0;
                nf_real s1[256], s2[256], pb[256], gb[256];
                const nf_real *g = G + v0;
                for (int j = 0; j < m; j++) {
                    nf_real a1 = 1, a2 = 0;
                    if (hidden && c->act == ACT_TANH) {
                        nf_real h = Ol[v0 + j];
                        a1 = 1 - h * h;
                        a2 = -2 * h * a1;
                    } else if (hidden) {
                        double sg = sigm(P[v0 + j]);
                        a1 = (nf_real)sg;
                        a2 = (nf_real)(sg * (1 - sg));
                    }
                    s1[j] = a1;
                    s2[j] = hidden ? a2 : 0;
                    pb[j] = A[v0 + j] * a1;
                    gb[j] = 0;
                }
                for (int k = 0; k < K; k++) {
                    const size_t q = ((size_t)(k + 1) * n + r) * H + j0;
                    nf_real *yq = Y + q;
                    const nf_real *aq = A + q;
                    for (int j = 0; j < m; j++) {
                        nf_real v = yq[j], ab = aq[j], qb = ab * s1[j];
                        pb[j] += ab * s2[j] * v * g[j];
                        gb[j] += qb * v;
                        yq[j] = qb * g[j];
                    }
                }
                for (int j = 0; j < m; j++) {
                    nf_real gj = g[j], t = gb[j] + pb[j] * Y[v0 + j];
                    Y[v0 + j] = pb[j] * gj;
                    P[v0 + j] = pb[j];
                    G[v0 + j] = t * gj * (1 - gj);
                }
            }
        const nf_real *W = prm + L->w;
        if (l > 0) {
            nf_gemm(0, 0, (int)Rn, I, H, 1, Y, H, W, I, 0, Bf, I);
            nf_real *t = A;
            A = Bf;
            Bf = t;
        } else {
            nf_gemm(0, 0, n, I, H, 1, Y, H, W, I, 0, Bf, I);
            for (int r = 0; r < n; r++) {
                memcpy(zbar + (size_t)r * D, Bf + (size_t)r * I0, (size_t)D * sizeof *zbar);
                if (C) memcpy(R->cbar + (size_t)r * C, Bf + (size_t)r * I0 + D, (size_t)C * sizeof *zbar);
            }
        }
    }
}

/* grad += Σ_r w_r dL_r/dθ from a record after dyn_vjp (w NULL: all 1);
 * dctx[idx[r]] += w_r cbar_r when dctx is given.  Consumes the record. */
static void dyn_param_grad(const cnf *c, rec *R, const double *t, const nf_real *eps,
                           const nf_real *w, nf_real *grad, nf_real *dctx, const int *idx) {
    const int n = R->n, K = R->K, D = c->D, C = c->C;
    const size_t Rn = (size_t)n * (K + 1);
    for (int l = 0; grad && l < c->nl; l++) {
        const cs_lin *L = &c->lin[l];
        const int H = L->out, I = L->in;
        nf_real *Y = R->Y[l], *G = R->G[l], *P = R->P[l];
        if (w)
            for (int r = 0; r < n; r++) {
                nf_real s = w[r];
                for (int k = 0; k <= K; k++) {
                    nf_real *y = Y + ((size_t)k * n + r) * H;
                    for (int j = 0; j < H; j++) y[j] *= s;
                }
                for (int j = 0; j < H; j++) {
                    G[(size_t)r * H + j] *= s;
                    P[(size_t)r * H + j] *= s;
                }
            }
        nf_real *gW = grad + L->w, *gb = grad + L->b, *ga = grad + L->a, *gc = grad + L->c,
                *gd = grad + L->d;
        if (l == 0) {
            nf_gemm(1, 0, H, I, n, 1, Y, H, R->x0, I, 1, gW, I);
            if (eps) {
                nf_gemm(1, 0, H, D, n, 1, Y + (size_t)n * H, H, eps, D, 1, gW, I);
            } else {
                for (int k = 0; k < K; k++)
                    for (int r = 0; r < n; r++) {
                        const nf_real *y = Y + ((size_t)(k + 1) * n + r) * H;
                        for (int j = 0; j < H; j++) gW[(size_t)j * I + k] += y[j];
                    }
            }
        } else {
            nf_gemm(1, 0, H, I, (int)Rn, 1, Y, H, R->O[l - 1], I, 1, gW, I);
        }
        for (int r = 0; r < n; r++) {
            const nf_real *y = Y + (size_t)r * H, *g = G + (size_t)r * H, *p = P + (size_t)r * H;
            nf_real tr = (nf_real)t[r];
            for (int j = 0; j < H; j++) {
                gb[j] += y[j];
                ga[j] += tr * g[j];
                gc[j] += g[j];
                gd[j] += tr * p[j];
            }
        }
    }
    if (dctx && C)
        for (int r = 0; r < n; r++) {
            nf_real s = w ? w[r] : 1, *o = dctx + (size_t)(idx ? idx[r] : r) * C;
            for (int i = 0; i < C; i++) o[i] += s * R->cbar[(size_t)r * C + i];
        }
}

/* ---- solving ------------------------------------------------------------------ */
typedef struct {
    const cnf *c;
    nf_ctx *cx;
    sws *S;
    int K;
    const nf_real *eps; /* (B,D) probes or NULL */
} solve_ctx;

static void count_eval(solve_ctx *sc, int n, int backward) {
    nf_ode_stats *st = sc->cx->ode;
    if (!st) return;
    if (backward) st->nfe_backward++;
    else st->nfe++;
    st->row_nfe += (uint64_t)n;
}

/* gather rows idx of src (B,w) into dst (n,w) */
static void gather(nf_real *dst, const nf_real *src, const int *idx, int n, int w) {
    for (int r = 0; r < n; r++)
        memcpy(dst + (size_t)r * w, src + (size_t)idx[r] * w, (size_t)w * sizeof *dst);
}


/* one stage on record ri: f (kz, (n,D)) and the accumulators' rates (kacc)
 * at the compact rows Y (n,D), t (n); context and probes from S->cs, S->es */
static rec stage(solve_ctx *sc, int ri, const nf_real *Y, const double *t, int n, nf_real *kz,
                 double *kacc, int backward) {
    const cnf *c = sc->c;
    rec R = rec_at(c, sc->S->recmem[ri], n, sc->K);
    const nf_real *es = sc->eps ? sc->S->es : NULL;
    dyn_eval(c, sc->cx->params, &R, Y, c->C ? sc->S->cs : NULL, t, es);
    dyn_outputs(c, &R, es, kz, kacc);
    count_eval(sc, n, backward);
    return R;
}

/* the compact rows' context and probes */
static void gather_rows(solve_ctx *sc, int n) {
    const cnf *c = sc->c;
    if (c->C) gather(sc->S->cs, sc->cx->ctx, sc->S->idx, n, c->C);
    if (sc->eps) gather(sc->S->es, sc->eps, sc->S->idx, n, c->D);
}

/* Y (n,D) = y + h_r Σ_{j<i} a_ij k_j */
static void stage_input(const tableau *T, int i, nf_real *const *k, const nf_real *y,
                        const double *h, int n, int D, nf_real *Y) {
    for (int r = 0; r < n; r++)
        for (int q = 0; q < D; q++) {
            size_t o = (size_t)r * D + q;
            double s = 0;
            for (int j = 0; j < i; j++)
                if (T->a[i][j] != 0) s += T->a[i][j] * k[j][o];
            Y[o] = (nf_real)(y[o] + h[r] * s);
        }
}

/* rms over D of e / (atol + rtol max(|y0|, |y1|)) */
static double scaled_rms(const double *e, const nf_real *y0, const nf_real *y1, int D,
                         double rtol, double atol) {
    double s = 0;
    for (int q = 0; q < D; q++) {
        double m = fabs((double)y0[q]) > fabs((double)y1[q]) ? fabs((double)y0[q]) : fabs((double)y1[q]);
        double v = e[q] / (atol + rtol * m);
        s += v * v;
    }
    return sqrt(s / D);
}

/* the next step after one of size h with error ratio err (Hairer's controller,
 * exponent 1/5 for the 4th-order error of Dormand-Prince) */
static double next_step(double h, double err, int accepted) {
    double f = err == 0 ? 10 : 0.9 * pow(err, -0.2);
    f = f < 0.2 ? 0.2 : f > 10 ? 10 : f;
    if (!accepted && f > 1) f = 1;
    return h * f;
}

/* Hairer's first step for rows with derivative f0 (n,D) and rate l0 of ℓ,
 * from the second evaluation f1 (n,D), l1 at y0 + h0 f0 (see first_step_h0) */
static double first_step_h0(const nf_real *y0, const nf_real *f0, double l0, int D, double rtol,
                            double atol) {
    double d0 = 0, d1 = 0;
    for (int q = 0; q < D; q++) {
        double sc = atol + rtol * fabs((double)y0[q]);
        d0 += (y0[q] / sc) * (y0[q] / sc);
        d1 += (f0[q] / sc) * (f0[q] / sc);
    }
    d0 = sqrt(d0 / D);
    d1 = sqrt(d1 / D);
    if (fabs(l0) / atol > d1) d1 = fabs(l0) / atol;
    return d0 < 1e-5 || d1 < 1e-5 ? 1e-6 : 0.01 * d0 / d1;
}

static double first_step(const nf_real *y0, const nf_real *f0, double l0, const nf_real *f1,
                         double l1, double h0, int D, double rtol, double atol) {
    double d1 = 0, d2 = 0;
    for (int q = 0; q < D; q++) {
        double sc = atol + rtol * fabs((double)y0[q]);
        d1 += (f0[q] / sc) * (f0[q] / sc);
        d2 += ((f1[q] - f0[q]) / sc) * ((f1[q] - f0[q]) / sc);
    }
    d1 = sqrt(d1 / D);
    d2 = sqrt(d2 / D);
    if (fabs(l0) / atol > d1) d1 = fabs(l0) / atol;
    if (fabs(l1 - l0) / atol > d2) d2 = fabs(l1 - l0) / atol;
    d2 /= h0;
    double m = d1 > d2 ? d1 : d2;
    double h1 = m <= 1e-15 ? (h0 * 1e-3 > 1e-6 ? h0 * 1e-3 : 1e-6) : pow(0.01 / m, 0.2);
    return 100 * h0 < h1 ? 100 * h0 : h1;
}

static void snap(double *t, double t1, double span) {
    if (fabs(t1 - *t) <= 1e-12 * span) *t = t1;
}

/* Solve the (z, ℓ, kinetic, Jacobian) system from t0 to t1 for the B rows of
 * z (in place; S->acc gets the integrals).  tape: record the accepted steps.
 * Returns 0, NF_ENONFINITE (failed rows flagged in S->fail, z left at their
 * last finite state), or NF_ESTEPS. */
static int solve_fwd(solve_ctx *sc, nf_real *z, double t0, double t1, int tape) {
    const cnf *c = sc->c;
    sws *S = sc->S;
    const tableau *T = tab_of(c);
    const int B = sc->cx->B, D = c->D;
    const double dir = t1 > t0 ? 1 : -1, span = fabs(t1 - t0);
    const int cap = c->solver == SOLVER_RK4 ? c->steps : c->max_steps;
    nf_ode_stats *st = sc->cx->ode;
    int bad = 0;
    if (st) {
        st->solves++;
        st->rows += (uint64_t)B;
    }
    for (int r = 0; r < B; r++) {
        S->t[r] = t0;
        S->fail[r] = 0;
        S->idx[r] = r;
        for (int q = 0; q < NACC; q++) S->acc[(size_t)r * NACC + q] = 0;
    }
    if (tape) {
        S->hdr->niter = 0;
        S->hdr->nent = 0;
        S->hdr->K = sc->K;
    }
    if (T->adaptive) { /* FSAL's first derivative and Hairer's first step */
        gather_rows(sc, B);
        stage(sc, 0, z, S->t, B, S->k1, S->k1acc, 0);
        for (int r = 0; r < B; r++) {
            const nf_real *y = z + (size_t)r * D, *f = S->k1 + (size_t)r * D;
            double h0 = first_step_h0(y, f, S->k1acc[(size_t)r * NACC], D, c->rtol, c->atol);
            S->h[r] = h0;
            S->tst[r] = t0 + dir * h0;
            for (int q = 0; q < D; q++) S->Ys[(size_t)r * D + q] = (nf_real)(y[q] + dir * h0 * f[q]);
        }
        stage(sc, 0, S->Ys, S->tst, B, S->kz[0], S->kacc[0], 0);
        for (int r = 0; r < B; r++) {
            double h = first_step(z + (size_t)r * D, S->k1 + (size_t)r * D, S->k1acc[(size_t)r * NACC],
                                  S->kz[0] + (size_t)r * D, S->kacc[0][(size_t)r * NACC], S->h[r],
                                  D, c->rtol, c->atol);
            S->h[r] = h;
            if (!isfinite(h) || !(h > 0)) S->fail[r] = bad = 1;
        }
    } else {
        for (int r = 0; r < B; r++) S->h[r] = span / c->steps;
    }
    for (int it = 0;; it++) {
        int n = 0;
        for (int r = 0; r < B; r++)
            if (!S->fail[r] && S->t[r] != t1) S->idx[n++] = r;
        if (!n) break;
        if (it >= cap) return NF_ESTEPS;
        if (tape) {
            S->tstart[it] = (int)S->hdr->nent;
            S->hdr->niter = it + 1;
        }
        gather(S->ys, z, S->idx, n, D);
        gather_rows(sc, n);
        for (int r = 0; r < n; r++) {
            int g = S->idx[r];
            double left = fabs(t1 - S->t[g]);
            S->ts[r] = S->t[g];
            S->hs[r] = dir * (S->h[g] < left ? S->h[g] : left);
        }
        int i0 = 0;
        if (T->adaptive) {
            gather(S->kz[0], S->k1, S->idx, n, D);
            for (int r = 0; r < n; r++)
                memcpy(S->kacc[0] + (size_t)r * NACC, S->k1acc + (size_t)S->idx[r] * NACC, NACC * sizeof(double));
            i0 = 1;
        }
        for (int i = i0; i < T->s; i++) {
            stage_input(T, i, S->kz, S->ys, S->hs, n, D, S->Ys);
            for (int r = 0; r < n; r++) S->tst[r] = S->ts[r] + T->c[i] * S->hs[r];
            stage(sc, 0, S->Ys, S->tst, n, S->kz[i], S->kacc[i], 0);
        }
        for (int r = 0; r < n; r++) {
            const int g = S->idx[r];
            const double h = S->hs[r];
            nf_real *y5 = S->y5 + (size_t)r * D;
            const nf_real *ys = S->ys + (size_t)r * D;
            double ez[256], dacc[NACC] = {0, 0, 0}, el = 0, ratio = 0;
            int finite = 1;
            for (int q = 0; q < D; q++) {
                size_t o = (size_t)r * D + q;
                double s = 0, es = 0;
                for (int j = 0; j < T->s; j++) {
                    if (T->b[j] != 0) s += T->b[j] * S->kz[j][o];
                    if (T->adaptive && T->e[j] != 0) es += T->e[j] * S->kz[j][o];
                }
                y5[q] = (nf_real)(ys[q] + h * s);
                finite &= isfinite(y5[q]);
                if (q < 256) ez[q] = h * es;
            }
            for (int j = 0; j < T->s; j++)
                for (int q = 0; q < NACC; q++) {
                    double v = S->kacc[j][(size_t)r * NACC + q];
                    dacc[q] += h * T->b[j] * v;
                    if (q == 0 && T->adaptive) el += h * T->e[j] * v;
                }
            for (int q = 0; q < NACC; q++) finite &= isfinite(dacc[q]);
            if (T->adaptive) {
                double rz = 0;
                if (D <= 256) {
                    rz = scaled_rms(ez, ys, y5, D, c->rtol, c->atol);
                } else { /* wide rows: the error again, component by component */
                    double s2 = 0;
                    for (int q = 0; q < D; q++) {
                        size_t o = (size_t)r * D + q;
                        double es = 0;
                        for (int j = 0; j < T->s; j++) es += T->e[j] * S->kz[j][o];
                        double m = fabs((double)ys[q]) > fabs((double)y5[q]) ? fabs((double)ys[q]) : fabs((double)y5[q]);
                        double v = h * es / (c->atol + c->rtol * m);
                        s2 += v * v;
                    }
                    rz = sqrt(s2 / D);
                }
                double l0 = S->acc[(size_t)g * NACC], l1 = l0 + dacc[0];
                double rl = fabs(el) / (c->atol + c->rtol * (fabs(l0) > fabs(l1) ? fabs(l0) : fabs(l1)));
                ratio = rz > rl ? rz : rl;
                finite &= isfinite(ratio);
            }
            if (!finite) {
                S->fail[g] = bad = 1;
                continue;
            }
            int accept = ratio <= 1;
            if (accept) {
                if (tape) {
                    size_t en = S->hdr->nent++;
                    S->trow[en] = g;
                    S->tt[en] = S->ts[r];
                    S->th[en] = h;
                    memcpy(S->tz + en * D, ys, (size_t)D * sizeof *ys);
                }
                memcpy(z + (size_t)g * D, y5, (size_t)D * sizeof *y5);
                for (int q = 0; q < NACC; q++) S->acc[(size_t)g * NACC + q] += dacc[q];
                S->t[g] = S->ts[r] + h;
                snap(&S->t[g], t1, span);
                if (T->adaptive) {
                    memcpy(S->k1 + (size_t)g * D, S->kz[T->s - 1] + (size_t)r * D, (size_t)D * sizeof *y5);
                    memcpy(S->k1acc + (size_t)g * NACC, S->kacc[T->s - 1] + (size_t)r * NACC, NACC * sizeof(double));
                }
                if (st) st->accepted++;
            } else if (st) {
                st->rejected++;
            }
            if (T->adaptive) S->h[g] = next_step(fabs(h), ratio, accept);
        }
    }
    return bad ? NF_ENONFINITE : 0;
}

/* the cotangents of ℓ, kinetic energy and Jacobian norm of the compact rows:
 * dL/dlogdet, and λ w_b for the regularisers (w = wreg, NULL: none) */
static void gather_cot(solve_ctx *sc, int n, const nf_real *dlogdet, const nf_real *wreg) {
    const cnf *c = sc->c;
    sws *S = sc->S;
    for (int r = 0; r < n; r++) {
        int g = S->idx[r];
        S->cl[r] = dlogdet ? dlogdet[g] : 0;
        S->ck[r] = wreg ? (nf_real)(c->reg_kin * wreg[g]) : 0;
        S->cj[r] = wreg ? (nf_real)(c->reg_jac * wreg[g]) : 0;
    }
}

/* Backprop through the taped steps: a (B,D) holds dL/dz(1) and ends holding
 * dL/dx.  Per step y' = y + h Σ b_i k_i, k_i = F(t + c_i h, Y_i),
 * Y_i = y + h Σ_j a_ij k_j, in reverse:
 *   k̄_i = h b_i ȳ' + Σ_{m>i} h a_mi Ȳ_m,  Ȳ_i = (∂F/∂Y)^T (k̄_i, h b_i (ā_ℓ, ā_K, ā_J)),
 *   ȳ = ȳ' + Σ_i Ȳ_i. */
static void backward_backprop(solve_ctx *sc, nf_real *a, const nf_real *dlogdet,
                              const nf_real *wreg, nf_real *grad, nf_real *dctx) {
    const cnf *c = sc->c;
    sws *S = sc->S;
    const tableau *T = tab_of(c);
    const int D = c->D, ns = T->nsol;
    rec R[7];
    for (int it = S->hdr->niter - 1; it >= 0; it--) {
        int e0 = S->tstart[it], e1 = it + 1 < S->hdr->niter ? S->tstart[it + 1] : (int)S->hdr->nent;
        int n = e1 - e0;
        if (n <= 0) continue;
        for (int r = 0; r < n; r++) {
            S->idx[r] = S->trow[e0 + r];
            S->ts[r] = S->tt[e0 + r];
            S->hs[r] = S->th[e0 + r];
        }
        memcpy(S->ys, S->tz + (size_t)e0 * D, (size_t)n * D * sizeof *S->ys);
        gather(S->as, a, S->idx, n, D);
        gather_rows(sc, n);
        gather_cot(sc, n, dlogdet, wreg);
        for (int i = 0; i < ns; i++) {
            stage_input(T, i, S->kz, S->ys, S->hs, n, D, S->Ys);
            for (int r = 0; r < n; r++) S->tsi[i][r] = S->ts[r] + T->c[i] * S->hs[r];
            R[i] = stage(sc, i, S->Ys, S->tsi[i], n, S->kz[i], S->kacc[i], 1);
        }
        for (int i = ns - 1; i >= 0; i--) {
            for (int r = 0; r < n; r++) {
                double h = S->hs[r], hb = h * T->b[i];
                for (int q = 0; q < D; q++) {
                    size_t o = (size_t)r * D + q;
                    double kb = hb * S->as[o];
                    for (int m = i + 1; m < ns; m++)
                        if (T->a[m][i] != 0) kb += h * T->a[m][i] * S->ybar[m][o];
                    S->af[o] = (nf_real)(kb + 2 * hb * S->ck[r] * S->kz[i][o]);
                }
                S->atr[r] = (nf_real)(hb * S->cl[r]);
                S->afro[r] = (nf_real)(hb * S->cj[r]);
            }
            dyn_vjp(c, sc->cx->params, &R[i], sc->eps ? S->es : NULL, S->af, S->atr, S->afro,
                    S->ybar[i], S->tmpA, S->tmpB);
            dyn_param_grad(c, &R[i], S->tsi[i], sc->eps ? S->es : NULL, NULL, grad, dctx, S->idx);
        }
        for (int r = 0; r < n; r++) {
            nf_real *ar = a + (size_t)S->idx[r] * D;
            for (int q = 0; q < D; q++) {
                size_t o = (size_t)r * D + q;
                double s = S->as[o];
                for (int i = 0; i < ns; i++) s += S->ybar[i][o];
                ar[q] = (nf_real)s;
            }
        }
    }
}

/* One stage of the adjoint system at compact rows (Z, A) (n,D), times t:
 * kz = f, ka = -(∂F/∂z)^T (A + 2 λ_K w f, ā_ℓ, λ_J w); the record stays
 * ready for dyn_param_grad. */
static rec adj_stage(solve_ctx *sc, int ri, const nf_real *Z, const nf_real *A, const double *t,
                     int n, nf_real *kz, nf_real *ka, double *kacc) {
    const cnf *c = sc->c;
    sws *S = sc->S;
    const int D = c->D;
    rec R = stage(sc, ri, Z, t, n, kz, kacc, 1);
    for (int r = 0; r < n; r++)
        for (int q = 0; q < D; q++) {
            size_t o = (size_t)r * D + q;
            S->af[o] = (nf_real)(A[o] + 2.0 * S->ck[r] * kz[o]);
        }
    dyn_vjp(c, sc->cx->params, &R, sc->eps ? S->es : NULL, S->af, S->cl, S->cj, ka, S->tmpA,
            S->tmpB);
    for (size_t o = 0; o < (size_t)n * D; o++) ka[o] = -ka[o];
    return R;
}

/* The adjoint method: [z, a] from t = 1 back to 0, z starting at the pass's
 * output z1 (B,D), a (B,D) at dL/dz(1), ending at dL/dx.  θ's and the
 * context's integrals are the accepted steps' quadratures (weights -h b_i,
 * h < 0), added into grad and dctx.  Past max_steps: a and grad get NaN (a
 * batch the trainer skips). */
static void backward_adjoint(solve_ctx *sc, const nf_real *z1, nf_real *a, const nf_real *dlogdet,
                             const nf_real *wreg, nf_real *grad, nf_real *dctx) {
    const cnf *c = sc->c;
    sws *S = sc->S;
    const tableau *T = tab_of(c);
    const int B = sc->cx->B, D = c->D;
    const double t0 = 1, t1 = 0, dir = -1, span = 1;
    const int cap = c->solver == SOLVER_RK4 ? c->steps : c->max_steps;
    rec R[7];
    nf_real *y = S->y;
    memcpy(y, z1, (size_t)B * D * sizeof *y);
    for (int r = 0; r < B; r++) {
        S->t[r] = t0;
        S->fail[r] = 0;
        S->idx[r] = r;
    }
    if (T->adaptive) { /* Hairer's first step on the norm max(rms z, rms a) */
        gather_rows(sc, B);
        gather_cot(sc, B, dlogdet, wreg);
        adj_stage(sc, 0, y, a, S->t, B, S->kz[0], S->ka[0], S->kacc[0]);
        for (int r = 0; r < B; r++) {
            size_t o = (size_t)r * D;
            double h0 = first_step_h0(y + o, S->kz[0] + o, 0, D, c->rtol, c->atol),
                   h0a = first_step_h0(a + o, S->ka[0] + o, 0, D, c->rtol, c->atol);
            h0 = h0 < h0a ? h0 : h0a;
            S->h[r] = h0;
            S->tst[r] = t0 + dir * h0;
            for (int q = 0; q < D; q++) {
                S->Ys[o + q] = (nf_real)(y[o + q] + dir * h0 * S->kz[0][o + q]);
                S->As[o + q] = (nf_real)(a[o + q] + dir * h0 * S->ka[0][o + q]);
            }
        }
        adj_stage(sc, 1, S->Ys, S->As, S->tst, B, S->kz[1], S->ka[1], S->kacc[1]);
        for (int r = 0; r < B; r++) {
            size_t o = (size_t)r * D;
            double h = first_step(y + o, S->kz[0] + o, 0, S->kz[1] + o, 0, S->h[r], D, c->rtol, c->atol),
                   ha = first_step(a + o, S->ka[0] + o, 0, S->ka[1] + o, 0, S->h[r], D, c->rtol, c->atol);
            S->h[r] = h < ha ? h : ha;
            if (!isfinite(S->h[r]) || !(S->h[r] > 0)) S->fail[r] = 1;
        }
    } else {
        for (int r = 0; r < B; r++) S->h[r] = span / c->steps;
    }
    for (int it = 0;; it++) {
        int n = 0;
        for (int r = 0; r < B; r++)
            if (!S->fail[r] && S->t[r] != t1) S->idx[n++] = r;
        if (!n) break;
        if (it >= cap) {
            for (size_t o = 0; o < (size_t)B * D; o++) a[o] = NAN;
            if (grad) grad[0] = NAN;
            return;
        }
        gather(S->ys, y, S->idx, n, D);
        gather(S->as, a, S->idx, n, D);
        gather_rows(sc, n);
        gather_cot(sc, n, dlogdet, wreg);
        for (int r = 0; r < n; r++) {
            int g = S->idx[r];
            double left = fabs(t1 - S->t[g]);
            S->ts[r] = S->t[g];
            S->hs[r] = dir * (S->h[g] < left ? S->h[g] : left);
        }
        for (int i = 0; i < T->s; i++) {
            stage_input(T, i, S->kz, S->ys, S->hs, n, D, S->Ys);
            stage_input(T, i, S->ka, S->as, S->hs, n, D, S->As);
            for (int r = 0; r < n; r++) S->tsi[i][r] = S->ts[r] + T->c[i] * S->hs[r];
            R[i] = adj_stage(sc, i, S->Ys, S->As, S->tsi[i], n, S->kz[i], S->ka[i], S->kacc[i]);
        }
        int nacc = 0;
        for (int r = 0; r < n; r++) {
            const int g = S->idx[r];
            const double h = S->hs[r];
            nf_real *y5 = S->y5 + (size_t)r * D, *a5 = S->a5 + (size_t)r * D;
            const nf_real *ys = S->ys + (size_t)r * D, *as = S->as + (size_t)r * D;
            double sz = 0, sa = 0;
            int finite = 1;
            for (int q = 0; q < D; q++) {
                size_t o = (size_t)r * D + q;
                double s1 = 0, s2 = 0, e1 = 0, e2 = 0;
                for (int j = 0; j < T->s; j++) {
                    s1 += T->b[j] * S->kz[j][o];
                    s2 += T->b[j] * S->ka[j][o];
                    e1 += T->e[j] * S->kz[j][o];
                    e2 += T->e[j] * S->ka[j][o];
                }
                y5[q] = (nf_real)(ys[q] + h * s1);
                a5[q] = (nf_real)(as[q] + h * s2);
                finite &= isfinite(y5[q]) && isfinite(a5[q]);
                double my = fabs((double)ys[q]) > fabs((double)y5[q]) ? fabs((double)ys[q]) : fabs((double)y5[q]);
                double ma = fabs((double)as[q]) > fabs((double)a5[q]) ? fabs((double)as[q]) : fabs((double)a5[q]);
                double v1 = h * e1 / (c->atol + c->rtol * my), v2 = h * e2 / (c->atol + c->rtol * ma);
                sz += v1 * v1;
                sa += v2 * v2;
            }
            double ratio = 0;
            if (T->adaptive) {
                sz = sqrt(sz / D);
                sa = sqrt(sa / D);
                ratio = sz > sa ? sz : sa;
            }
            int accept = finite && isfinite(ratio) && ratio <= 1;
            S->wt[r] = accept ? (nf_real)(-h) : 0;
            if (!finite || !isfinite(ratio)) {
                S->fail[g] = 1; /* NaN into its gradient below */
                for (int q = 0; q < D; q++) a[(size_t)g * D + q] = NAN;
                continue;
            }
            if (accept) {
                nacc++;
                memcpy(y + (size_t)g * D, y5, (size_t)D * sizeof *y5);
                memcpy(a + (size_t)g * D, a5, (size_t)D * sizeof *a5);
                S->t[g] = S->ts[r] + h;
                snap(&S->t[g], t1, span);
            }
            if (T->adaptive) S->h[g] = next_step(fabs(h), ratio, accept);
        }
        if (!nacc) continue;
        for (int i = 0; i < T->s; i++) {
            if (T->b[i] == 0) continue;
            nf_real *w = S->atr; /* free here: per-row weights -h b_i */
            for (int r = 0; r < n; r++) w[r] = (nf_real)(S->wt[r] * T->b[i]);
            dyn_param_grad(c, &R[i], S->tsi[i], sc->eps ? S->es : NULL, w, grad, dctx, S->idx);
        }
    }
}

/* ---- the layer ------------------------------------------------------------------ */
static int trace_of(const cnf *c, const nf_ctx *cx) {
    if (cx->training) return c->trace;
    return c->D <= NF_CNF_EXACT_MAX ? TRACE_EXACT : TRACE_HUTCH;
}

/* Probe of row g (cx->row0 + r) from (noise seed, layer, row): the same row
 * gets the same probe whatever the chunking or the threads. */
static void draw_probes(const nf_layer *L, const cnf *c, const nf_ctx *cx, nf_real *eps) {
    for (int r = 0; r < cx->B; r++) {
        nf_rng g;
        uint64_t row = (uint64_t)(cx->row0 + r);
        nf_rng_seed(&g, cx->noise_seed ^ (0x9E3779B97F4A7C15ULL * (L->param_off + 1)) ^
                            (row * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL));
        for (int q = 0; q < c->D; q++)
            eps[(size_t)r * c->D + q] = c->probe == PROBE_GAUSSIAN
                                            ? (nf_real)nf_rng_normal(&g)
                                            : (nf_rng_u64(&g) >> 63 ? (nf_real)1 : (nf_real)-1);
    }
}

static solve_ctx solve_setup(const nf_layer *L, nf_ctx *cx, sws *S) {
    const cnf *c = L->impl;
    int tr = trace_of(c, cx);
    solve_ctx sc = {c, cx, S, tr == TRACE_EXACT ? c->D : 1, tr == TRACE_EXACT ? NULL : S->eps};
    return sc;
}

/* x -> z over t in [0, 1]; the probes (Hutchinson) and, for backprop, the
 * tape stay in ws for backward */
static int cnf_inverse(const nf_layer *L, nf_ctx *cx, const nf_real *x, nf_real *z,
                       nf_real *logdet) {
    const cnf *c = L->impl;
    sws S = sws_of(c, cx);
    solve_ctx sc = solve_setup(L, cx, &S);
    if (sc.eps) draw_probes(L, c, cx, S.eps);
    memcpy(z, x, (size_t)cx->B * c->D * sizeof *z);
    int rc = solve_fwd(&sc, z, 0, 1, !cx->infer && c->grad == GRAD_BACKPROP);
    if (rc && rc != NF_ENONFINITE) return rc;
    for (int r = 0; r < cx->B; r++)
        logdet[r] = S.fail[r] ? (nf_real)-INFINITY
                              : (nf_real)((double)logdet[r] + S.acc[(size_t)r * NACC]);
    if (cx->training && cx->ode) {
        for (int r = 0; r < cx->B; r++) {
            cx->ode->kinetic += S.acc[(size_t)r * NACC + 1];
            cx->ode->jacobian += S.acc[(size_t)r * NACC + 2];
        }
        cx->ode->reg_rows += (uint64_t)cx->B;
    }
    return rc;
}

/* z -> x over t from 1 back to 0; ℓ's signed steps give log|det dx/dz| */
static int cnf_forward(const nf_layer *L, nf_ctx *cx, const nf_real *z, nf_real *x,
                       nf_real *logdet) {
    const cnf *c = L->impl;
    sws S = sws_of(c, cx);
    solve_ctx sc = solve_setup(L, cx, &S);
    if (cx->no_logdet) { /* z alone: no tangents, and ℓ (0) leaves the error norm */
        sc.K = 0;
        sc.eps = NULL;
    }
    if (sc.eps) draw_probes(L, c, cx, S.eps);
    memcpy(x, z, (size_t)cx->B * c->D * sizeof *x);
    int rc = solve_fwd(&sc, x, 1, 0, 0);
    if (rc && rc != NF_ENONFINITE) return rc;
    for (int r = 0; r < cx->B; r++)
        logdet[r] = S.fail[r] ? (nf_real)-INFINITY
                              : (nf_real)((double)logdet[r] + S.acc[(size_t)r * NACC]);
    return rc;
}

static void cnf_backward(const nf_layer *L, nf_ctx *cx, const nf_real *x, const nf_real *z,
                         const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    (void)x;
    const cnf *c = L->impl;
    sws S = sws_of(c, cx);
    solve_ctx sc = solve_setup(L, cx, &S);
    const nf_real *wreg = cx->training && (c->reg_kin > 0 || c->reg_jac > 0) ? cx->wreg : NULL;
    memcpy(S.a, dz, (size_t)cx->B * c->D * sizeof *dz);
    if (c->grad == GRAD_BACKPROP)
        backward_backprop(&sc, S.a, dlogdet, wreg, cx->grad, cx->dctx);
    else backward_adjoint(&sc, z, S.a, dlogdet, wreg, cx->grad, cx->dctx);
    if (dx) memcpy(dx, S.a, (size_t)cx->B * c->D * sizeof *dx);
}

/* PyTorch's nn.Linear default: W, b ~ U(±1/sqrt(in)); the gate and bias
 * hyper-networks are Linear(1, out): a, c, d ~ U(±1).  The last layer's W, b
 * and d are zero: f = 0, the identity map. */
static void cnf_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)buffers;
    const cnf *c = L->impl;
    for (int l = 0; l < c->nl; l++) {
        const cs_lin *s = &c->lin[l];
        int last = l == c->nl - 1;
        double bw = 1 / sqrt((double)s->in);
        for (size_t i = 0; i < (size_t)s->in * s->out; i++)
            params[s->w + i] = last ? 0 : (nf_real)((2 * nf_rng_uniform(rng) - 1) * bw);
        for (int j = 0; j < s->out; j++) {
            params[s->b + j] = last ? 0 : (nf_real)((2 * nf_rng_uniform(rng) - 1) * bw);
            params[s->a + j] = (nf_real)(2 * nf_rng_uniform(rng) - 1);
            params[s->c + j] = (nf_real)(2 * nf_rng_uniform(rng) - 1);
            params[s->d + j] = last ? 0 : (nf_real)(2 * nf_rng_uniform(rng) - 1);
        }
    }
}

static void cnf_to_json(const nf_layer *L, cJSON *o) {
    const cnf *c = L->impl;
    nf_json_attach(o, "hidden", cJSON_CreateIntArray(c->hidden, c->nh));
    cJSON_AddStringToObject(o, "activation", act_names[c->act]);
    cJSON_AddStringToObject(o, "solver", solver_names[c->solver]);
    if (c->solver == SOLVER_RK4) {
        cJSON_AddNumberToObject(o, "steps", c->steps);
    } else {
        cJSON_AddNumberToObject(o, "rtol", c->rtol);
        cJSON_AddNumberToObject(o, "atol", c->atol);
        cJSON_AddNumberToObject(o, "max_steps", c->max_steps);
    }
    cJSON_AddStringToObject(o, "trace", trace_names[c->trace]);
    cJSON_AddStringToObject(o, "probe", probe_names[c->probe]);
    cJSON_AddStringToObject(o, "gradient", grad_names[c->grad]);
    cJSON_AddNumberToObject(o, "reg_kinetic", c->reg_kin);
    cJSON_AddNumberToObject(o, "reg_jacobian", c->reg_jac);
}

/* multiply-adds per row of one dynamics evaluation with the exact trace (a
 * pass costs this times its evaluations, which the solver decides) */
static double cnf_macs(const nf_layer *L, int executed) {
    (void)executed;
    const cnf *c = L->impl;
    double m = 0;
    for (int l = 0; l < c->nl; l++)
        m += (double)c->lin[l].out * (l == 0 ? c->lin[l].in : c->lin[l].in * (1.0 + c->D));
    return m;
}

static void cnf_destroy(nf_layer *L) {
    nf_free(L->impl);
    L->impl = NULL;
}

static const nf_layer_ops cnf_ops = {
    .type = "cnf", .ws_size = cnf_ws_size, .ws_size_infer = cnf_ws_size_infer,
    .init = cnf_init, .inverse = cnf_inverse, .forward = cnf_forward,
    .backward = cnf_backward, .to_json = cnf_to_json, .destroy = cnf_destroy,
    .macs = cnf_macs,
};

int nf_cnf_info(const nf_layer *L, nf_cnf_desc *d) {
    if (L->ops != &cnf_ops) return 0;
    const cnf *c = L->impl;
    d->solver = solver_names[c->solver];
    d->steps = c->solver == SOLVER_RK4 ? c->steps : 0;
    d->rtol = c->solver == SOLVER_RK4 ? 0 : c->rtol;
    d->atol = c->solver == SOLVER_RK4 ? 0 : c->atol;
    d->max_steps = c->solver == SOLVER_RK4 ? c->steps : c->max_steps;
    d->train_trace = trace_names[c->trace];
    d->score_trace = trace_names[c->D <= NF_CNF_EXACT_MAX ? TRACE_EXACT : TRACE_HUTCH];
    d->probe = probe_names[c->probe];
    d->gradient = grad_names[c->grad];
    d->reg_kinetic = c->reg_kin;
    d->reg_jacobian = c->reg_jac;
    return 1;
}

int nf_cnf_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "hidden", "activation", "solver", "steps",
                                       "rtol", "atol", "max_steps", "trace", "probe",
                                       "gradient", "reg_kinetic", "reg_jacobian", NULL};
    static const int def_hidden[] = {64, 64, 64};
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    cnf *c = nf_calloc(1, sizeof *c);
    if (!c) return NF_ENOMEM;
    L->impl = c;
    L->ops = &cnf_ops;
    c->D = L->D;
    c->C = L->C;
    c->nh = nf_json_int_list(spec, "hidden", def_hidden, 3, c->hidden, 16, err, errlen);
    if (c->nh < 0) return c->nh;
    const char *as = nf_json_str(spec, "activation", "tanh");
    if (as && !strcmp(as, "relu")) {
        nf_set_err(err, errlen, "\"activation\": \"relu\" is not smooth, so the ODE's flow map "
                   "would not be differentiable; use \"tanh\" or \"softplus\"");
        return NF_EINVAL;
    }
    if ((rc = nf_json_enum(spec, "activation", act_names, ACT_TANH, &c->act, err, errlen)) ||
        (rc = nf_json_enum(spec, "solver", solver_names, SOLVER_DOPRI5, &c->solver, err, errlen)) ||
        (rc = nf_json_enum(spec, "probe", probe_names, PROBE_RADEMACHER, &c->probe, err, errlen)))
        return rc;
    int rk4 = c->solver == SOLVER_RK4;
    static const char *const adaptive_only[] = {"rtol", "atol", "max_steps", NULL};
    for (int i = 0; rk4 && adaptive_only[i]; i++)
        if (nf_json_get(spec, adaptive_only[i])) {
            nf_set_err(err, errlen, "\"%s\" is for the adaptive solver \"dopri5\"; \"rk4\" takes "
                       "\"steps\"", adaptive_only[i]);
            return NF_EINVAL;
        }
    if (!rk4 && nf_json_get(spec, "steps")) {
        nf_set_err(err, errlen, "\"steps\" is for the fixed-step solver \"rk4\"; \"dopri5\" takes "
                   "\"rtol\", \"atol\" and \"max_steps\"");
        return NF_EINVAL;
    }
    if ((rc = nf_json_int(spec, "steps", 10, 1, 10000, &c->steps, err, errlen)) ||
        (rc = nf_json_num(spec, "rtol", 1e-5, 1e-12, 1, &c->rtol, err, errlen)) ||
        (rc = nf_json_num(spec, "atol", 1e-5, 1e-12, 1, &c->atol, err, errlen)) ||
        (rc = nf_json_int(spec, "max_steps", 1000, 1, 100000, &c->max_steps, err, errlen)) ||
        (rc = nf_json_num(spec, "reg_kinetic", 0, 0, 1e6, &c->reg_kin, err, errlen)) ||
        (rc = nf_json_num(spec, "reg_jacobian", 0, 0, 1e6, &c->reg_jac, err, errlen)))
        return rc;
    int def_trace = c->D <= NF_CNF_EXACT_DEFAULT ? TRACE_EXACT : TRACE_HUTCH;
    if ((rc = nf_json_enum(spec, "trace", trace_names, def_trace, &c->trace, err, errlen)))
        return rc;
    if (c->trace == TRACE_EXACT && c->D > NF_CNF_EXACT_MAX) {
        nf_set_err(err, errlen, "\"trace\": \"exact\" costs %d Jacobian-vector products per "
                   "evaluation at dim %d; at most dim %d (use \"hutchinson\")", c->D, c->D,
                   NF_CNF_EXACT_MAX);
        return NF_EINVAL;
    }
    if ((rc = nf_json_enum(spec, "gradient", grad_names,
                           c->D <= NF_CNF_EXACT_MAX ? GRAD_BACKPROP : GRAD_ADJOINT, &c->grad, err,
                           errlen)))
        return rc;
    c->iters = rk4 ? c->steps : c->max_steps;
    c->nl = c->nh + 1;
    int prev = c->D + c->C;
    size_t off = 0;
    c->maxw = prev;
    for (int l = 0; l < c->nl; l++) {
        int out = l < c->nh ? c->hidden[l] : c->D;
        cs_lin *s = &c->lin[l];
        s->in = prev;
        s->out = out;
        s->w = off;
        off += (size_t)prev * out;
        s->b = off;
        s->a = off + out;
        s->c = off + 2 * (size_t)out;
        s->d = off + 3 * (size_t)out;
        off += 4 * (size_t)out;
        if (off > ((size_t)1 << 27)) {
            nf_set_err(err, errlen, "the dynamics network would exceed 2^27 parameters");
            return NF_ERANGE;
        }
        c->maxw = out > c->maxw ? out : c->maxw;
        prev = out;
    }
    int ks = c->D <= NF_CNF_EXACT_MAX ? c->D : 1, kt = c->trace == TRACE_EXACT ? c->D : 1;
    c->Kmax = ks > kt ? ks : kt;
    L->nparams = off;
    return 0;
}

char *nf_config_ode_json(const char *config_json) {
    cJSON *cfg = config_json ? cJSON_Parse(config_json) : NULL;
    if (!cfg) return NULL;
    unsigned fails = nf_alloc_failures;
    int D = 0, n = 0, exact = 1;
    nf_json_int(cfg, "dim", 0, 0, 1 << 30, &D, NULL, 0);
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    const cJSON *l;
    int k = 0;
    cJSON_ArrayForEach(l, nf_json_get(cfg, "layers")) {
        const char *t = nf_json_str(l, "type", NULL);
        if (t && !strcmp(t, "cnf") && arr) {
            cJSON *e = cJSON_CreateObject();
            static const char *const keys[] = {"solver", "steps", "rtol", "atol", "max_steps",
                                               "probe", "gradient", "reg_kinetic",
                                               "reg_jacobian", NULL};
            cJSON_AddNumberToObject(e, "layer", k);
            for (int i = 0; keys[i]; i++) {
                const cJSON *v = nf_json_get(l, keys[i]);
                if (v) nf_json_attach(e, keys[i], cJSON_Duplicate(v, 1));
            }
            int score_exact = D <= NF_CNF_EXACT_MAX;
            exact &= score_exact;
            cJSON_AddStringToObject(e, "trace", score_exact ? "exact" : "hutchinson");
            const char *tt = nf_json_str(l, "trace", NULL);
            if (tt) cJSON_AddStringToObject(e, "train_trace", tt);
            nf_json_append(arr, e);
            n++;
        }
        k++;
    }
    nf_json_attach(o, "layers", arr);
    cJSON_AddStringToObject(o, "trace", exact ? "exact" : "hutchinson");
    cJSON_AddBoolToObject(o, "log_prob_exact", exact);
    char *s = n && o && nf_alloc_failures == fails ? cJSON_PrintUnformatted(o) : NULL;
    if (s && nf_alloc_failures != fails) {
        nf_free(s);
        s = NULL;
    }
    cJSON_Delete(o);
    cJSON_Delete(cfg);
    return s;
}
