/* lu.c: "lu_linear", an invertible dense linear layer in LU form (Glow).
 *
 *     W = P M P^T,  M = L (U + diag(s)),  s = exp(log_s)
 *     inverse (density):  z = W x + bias   (rows: z = x W^T + bias)
 *     logdet = log|det W| = sum_k log_s_k                   O(D)
 *     forward (sampling): x = W^-1 (z - bias) = P (U+diag s)^-1 L^-1 P^T (z - bias),
 *                         two triangular solves, no inverse is formed.
 *
 * L is unit lower triangular, U strictly upper, P a fixed permutation drawn
 * from the spec's "seed" (P_{i,p[i]} = 1, so W_ij = M_{p[i],p[j]}).  P is
 * applied on both sides so the zero-initialised parameters give W = I: a
 * fresh layer is the identity whatever the seed; P only chooses the order in
 * which the LU factorisation runs.  The signs of s are fixed at +1.
 *
 * Parameters (D(D+1)): L strict lower packed row-major (D(D-1)/2), U strict
 * upper packed row-major (D(D-1)/2), log_s (D), bias (D).
 *
 * The LU maths (dense factors from the packed parameters, the gradient
 * through M = L (U + diag(s)), and the partial-pivoting factorisation that
 * invconv's initialisation needs) are the nf_lu_* helpers of nf_internal.h,
 * shared with the image layer invconv (core/image.c).
 */
#include "alloc.h"
#include "nf_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef NF_DOUBLE
#define LU_EXP exp
#else
#define LU_EXP expf
#endif

typedef struct lu_layer {
    int *perm;     /* (D) p, keep first: tests read it */
    uint64_t seed;
} lu_layer;

typedef struct lu_view {
    const nf_real *l, *u, *log_s, *bias;
} lu_view;

static lu_view lu_params(const nf_layer *L, const nf_real *p) {
    const size_t ntri = (size_t)L->D * (L->D - 1) / 2;
    lu_view v = {p, p + ntri, p + 2 * ntri, p + 2 * ntri + L->D};
    return v;
}

/* ws: [W][M][dW][dM][Lf][Ut] (D,D) each, then Y (B,D) */
static size_t lu_ws_size(const nf_layer *L, int B) {
    return (size_t)6 * L->D * L->D + (size_t)B * L->D;
}

/* ---- the shared LU maths (nf_internal.h) ---------------------------------- */
void nf_lu_factors(int n, const nf_real *l, const nf_real *u, const nf_real *log_s,
                   const nf_real *sign, nf_real *Lf, nf_real *Ut) {
    for (int i = 0; i < n; i++) {
        nf_real d = LU_EXP(log_s[i]);
        if (sign) d *= sign[i];
        for (int j = 0; j < n; j++) {
            Lf[(size_t)i * n + j] = j < i ? l[nf_lu_lidx(i, j)] : j == i ? 1 : 0;
            Ut[(size_t)i * n + j] = j > i ? u[nf_lu_uidx(n, i, j)] : j == i ? d : 0;
        }
    }
}

/* dLf = dM Ut^T (strictly lower part), dUt = Lf^T dM (upper part), and
 * dlog_s_k = dUt_kk sign_k exp(log_s_k) + dld.  The two n x n x n products
 * run in BLAS. */
void nf_lu_factors_backward(int n, const nf_real *Lf, const nf_real *Ut, const nf_real *dM,
                            const nf_real *log_s, const nf_real *sign, double dld, nf_real *dLf,
                            nf_real *dUt, nf_real *gl, nf_real *gu, nf_real *gls) {
    nf_gemm(0, 1, n, n, n, (nf_real)1, dM, n, Ut, n, (nf_real)0, dLf, n);
    nf_gemm(1, 0, n, n, n, (nf_real)1, Lf, n, dM, n, (nf_real)0, dUt, n);
    for (int i = 1; i < n; i++)
        for (int j = 0; j < i; j++) gl[nf_lu_lidx(i, j)] += dLf[(size_t)i * n + j];
    for (int k = 0; k < n; k++) {
        double sg = sign ? (double)sign[k] : 1.0;
        gls[k] += (nf_real)((double)dUt[(size_t)k * n + k] * sg * exp((double)log_s[k]) + dld);
        for (int j = k + 1; j < n; j++) gu[nf_lu_uidx(n, k, j)] += dUt[(size_t)k * n + j];
    }
}

/* Doolittle with partial pivoting, in double: row k takes the largest
 * remaining entry of column k, so every |L_ij| <= 1. */
int nf_lu_decompose(int n, double *A, int *perm) {
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(A[(size_t)i * n + k]) > fabs(A[(size_t)p * n + k])) p = i;
        if (A[(size_t)p * n + k] == 0) return NF_EINVAL;
        if (p != k) {
            for (int j = 0; j < n; j++) {
                double t = A[(size_t)k * n + j];
                A[(size_t)k * n + j] = A[(size_t)p * n + j];
                A[(size_t)p * n + j] = t;
            }
            int t = perm[k];
            perm[k] = perm[p];
            perm[p] = t;
        }
        const double *rk = A + (size_t)k * n;
        for (int i = k + 1; i < n; i++) {
            double *ri = A + (size_t)i * n, m = ri[k] / rk[k];
            ri[k] = m;
            for (int j = k + 1; j < n; j++) ri[j] -= m * rk[j];
        }
    }
    return 0;
}

/* ---- lu_linear ------------------------------------------------------------ */
/* Dense factors: Lf (D,D) unit lower triangular, Ut (D,D) = U + diag(s). */
static void lu_factors(const nf_layer *L, const nf_real *params, nf_real *Lf, nf_real *Ut) {
    lu_view v = lu_params(L, params);
    nf_lu_factors(L->D, v.l, v.u, v.log_s, NULL, Lf, Ut);
}

/* M = Lf Ut (one GEMM, O(D^3) flops in BLAS), then W_ij = M_{p[i],p[j]}. */
static void lu_build(const nf_layer *L, const nf_real *params, nf_real *W, nf_real *M,
                     nf_real *Lf, nf_real *Ut) {
    const lu_layer *A = L->impl;
    const int D = L->D;
    lu_factors(L, params, Lf, Ut);
    nf_gemm(0, 0, D, D, D, (nf_real)1, Lf, D, Ut, D, (nf_real)0, M, D);
    for (int i = 0; i < D; i++) {
        const nf_real *mr = M + (size_t)A->perm[i] * D;
        nf_real *wr = W + (size_t)i * D;
        for (int j = 0; j < D; j++) wr[j] = mr[A->perm[j]];
    }
}

static nf_real lu_logdet(const nf_layer *L, const nf_real *params) {
    lu_view v = lu_params(L, params);
    double acc = 0;
    for (int k = 0; k < L->D; k++) acc += v.log_s[k];
    return (nf_real)acc;
}

/* z (B,D) = x (B,D) W^T + bias;  logdet (B) += sum log_s */
static int lu_inverse(const nf_layer *L, nf_ctx *c, const nf_real *x, nf_real *z,
                      nf_real *logdet) {
    const int D = L->D, B = c->B;
    const size_t DD = (size_t)D * D;
    nf_real *W = c->ws, *M = W + DD, *Lf = M + 3 * DD, *Ut = Lf + DD;
    lu_view v = lu_params(L, c->params);
    lu_build(L, c->params, W, M, Lf, Ut);
    nf_gemm(0, 1, B, D, D, (nf_real)1, x, D, W, D, (nf_real)0, z, D);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) z[(size_t)b * D + i] += v.bias[i];
    if (logdet) {
        nf_real ld = lu_logdet(L, c->params);
        for (int b = 0; b < B; b++) logdet[b] += ld;
    }
    return 0;
}

/* x = P Ut^-1 Lf^-1 P^T (z - bias) for every row: two triangular solves over
 * the whole batch (cblas trsm);  logdet (B) -= sum log_s */
static int lu_forward(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                      nf_real *logdet) {
    const lu_layer *A = L->impl;
    const int D = L->D, B = c->B;
    const size_t DD = (size_t)D * D;
    nf_real *Lf = c->ws + 4 * DD, *Ut = Lf + DD, *Y = Ut + DD;
    lu_view v = lu_params(L, c->params);
    lu_factors(L, c->params, Lf, Ut);
    for (int b = 0; b < B; b++) {
        const nf_real *zr = z + (size_t)b * D;
        nf_real *y = Y + (size_t)b * D;
        for (int i = 0; i < D; i++) y[A->perm[i]] = zr[i] - v.bias[i];
    }
    nf_trsm_rt(0, 1, B, D, Lf, D, Y, D); /* rows: y <- Lf^-1 y */
    nf_trsm_rt(1, 0, B, D, Ut, D, Y, D); /* rows: y <- Ut^-1 y */
    for (int b = 0; b < B; b++) {
        const nf_real *y = Y + (size_t)b * D;
        nf_real *xr = x + (size_t)b * D;
        for (int i = 0; i < D; i++) xr[i] = y[A->perm[i]];
    }
    if (logdet) {
        nf_real ld = lu_logdet(L, c->params);
        for (int b = 0; b < B; b++) logdet[b] -= ld;
    }
    return 0;
}

/* dx = dz W;  dW = dz^T x, dM_{p[i],p[j]} = dW_ij, and through M = Lf Ut
 * (nf_lu_factors_backward): dlog_s_k = dUt_kk s_k + sum_b dlogdet_b;
 * dbias = sum_b dz_b. */
static void lu_backward(const nf_layer *L, nf_ctx *c, const nf_real *x, const nf_real *z,
                        const nf_real *dz, const nf_real *dlogdet, nf_real *dx) {
    (void)z;
    const lu_layer *A = L->impl;
    const int D = L->D, B = c->B;
    const size_t DD = (size_t)D * D;
    nf_real *W = c->ws, *M = W + DD, *dW = M + DD, *dM = dW + DD, *Lf = dM + DD, *Ut = Lf + DD;
    lu_view v = lu_params(L, c->params);
    /* W, M, Lf and Ut are still in ws from the inverse pass on this x (the
     * backward contract in nf_internal.h), so they are not rebuilt here */
    (void)M;
    if (dx) nf_gemm(0, 0, B, D, D, (nf_real)1, dz, D, W, D, (nf_real)0, dx, D);
    if (!c->grad) return;

    const size_t ntri = (size_t)D * (D - 1) / 2;
    nf_real *gl = c->grad, *gu = gl + ntri, *gls = gu + ntri, *gb = gls + D;
    nf_gemm(1, 0, D, D, B, (nf_real)1, dz, D, x, D, (nf_real)0, dW, D);
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) dM[(size_t)A->perm[i] * D + A->perm[j]] = dW[(size_t)i * D + j];
    double dlsum = 0;
    for (int b = 0; b < B; b++) dlsum += dlogdet ? (double)dlogdet[b] : 0.0;
    /* dLf into W's space and dUt into M's (both free now) */
    nf_lu_factors_backward(D, Lf, Ut, dM, v.log_s, NULL, dlsum, W, M, gl, gu, gls);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) gb[i] += dz[(size_t)b * D + i];
}

static void lu_init(const nf_layer *L, nf_real *params, nf_real *buffers, nf_rng *rng) {
    (void)buffers;
    (void)rng;
    memset(params, 0, sizeof(nf_real) * L->nparams);
}

static void lu_to_json(const nf_layer *L, cJSON *obj) {
    const lu_layer *A = L->impl;
    cJSON_AddNumberToObject(obj, "seed", (double)A->seed);
}

static void lu_destroy(nf_layer *L) {
    lu_layer *A = L->impl;
    if (!A) return;
    nf_free(A->perm);
    nf_free(A);
    L->impl = NULL;
}

/* z = W x + b as one (D,D) product */
static double lu_macs(const nf_layer *L, int executed) {
    (void)executed;
    return (double)L->D * L->D;
}

static const nf_layer_ops lu_ops = {
    .type = "lu_linear",
    .ws_size = lu_ws_size,
    .init = lu_init,
    .inverse = lu_inverse,
    .forward = lu_forward,
    .backward = lu_backward,
    .data_init = NULL,
    .constrain = NULL,
    .to_json = lu_to_json,
    .destroy = lu_destroy,
    .macs = lu_macs,
};

int nf_lu_linear_create(nf_layer *L, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"type", "seed", NULL};
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    double seed;
    rc = nf_json_num(spec, "seed", 0, 0, NF_JSON_SEED_MAX, &seed, err, errlen);
    if (rc) return rc;
    if (seed != floor(seed)) {
        nf_set_err(err, errlen, "\"seed\" must be a non-negative integer");
        return NF_EINVAL;
    }
    if (L->D < 1) {
        nf_set_err(err, errlen, "lu_linear needs dim >= 1");
        return NF_EINVAL;
    }
    lu_layer *A = nf_calloc(1, sizeof(*A));
    int *perm = nf_malloc(sizeof(int) * (size_t)L->D);
    if (!A || !perm) {
        nf_free(A);
        nf_free(perm);
        return NF_ENOMEM;
    }
    A->seed = (uint64_t)seed;
    A->perm = perm;
    nf_rng r;
    nf_rng_seed(&r, A->seed);
    for (int i = 0; i < L->D; i++) perm[i] = i;
    for (int i = L->D - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)(nf_rng_u64(&r) % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    L->ops = &lu_ops;
    L->nparams = (size_t)L->D * (L->D + 1);
    L->nbuffers = 0;
    L->impl = A;
    return 0;
}
