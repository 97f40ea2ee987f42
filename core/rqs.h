/* rqs.h: the rational-quadratic spline of core/spline.c (Durkan et al.
 * 2019), shared by the spline layers there and the image coupling
 * (core/conv_coupling.c).  Not installed.
 *
 * One spline maps [-B, B] onto itself through K bins and is the identity
 * outside; its 3K-1 unnormalised parameters theta = [uw (K), uh (K),
 * ud (K-1)] give the bin widths, heights and interior derivatives
 * (spline.c's header has the formulas).  theta = 0 is exactly the identity.
 * All arithmetic is in double. */
#ifndef NF_RQS_H
#define NF_RQS_H

#include "nf_internal.h"

#define NF_RQS_KMAX 64

typedef struct nf_rqs_cfg {
    int K;
    double B, min_w, min_h, min_d;
    double dconst; /* log(exp(1 - min_d) - 1): softplus(dconst) + min_d = 1 */
} nf_rqs_cfg;

/* Knots of one spline, built from its theta. */
typedef struct nf_rqs_knots {
    double xs[NF_RQS_KMAX + 1], ys[NF_RQS_KMAX + 1], ds[NF_RQS_KMAX + 1];
    double smw[NF_RQS_KMAX], smh[NF_RQS_KMAX]; /* softmaxes, kept for backward */
} nf_rqs_knots;

/* parameters per spline */
static inline int nf_rqs_P(const nf_rqs_cfg *cf) { return 3 * cf->K - 1; }

void nf_rqs_cfg_set(nf_rqs_cfg *cf, int K, double B, double min_w, double min_h, double min_d);
void nf_rqs_build(const nf_rqs_cfg *cf, const nf_real *theta, nf_rqs_knots *kn);
/* 1 (default): nf_rqs_build takes its exps and softpluses four at a time
 * through libmvec where the CPU has AVX2 (within a few ulp of the scalar
 * libm path); 0: always the scalar path (tests compare the two) */
extern int nf_rqs_vector;
/* density direction: g(x), *ld = log g'(x) */
double nf_rqs_eval(const nf_rqs_cfg *cf, const nf_rqs_knots *kn, double x, double *ld);
/* sampling direction: g^-1(y), *ld = -log g'(g^-1(y)) */
double nf_rqs_solve(const nf_rqs_cfg *cf, const nf_rqs_knots *kn, double y, double *ld);
/* n splines at once: spline e's parameter q is th[e*es + q*qs]; y[e] =
 * g(x[e]) and ld[e] = log g' (dir 0), or nf_rqs_solve's inverse and -log g'
 * (dir 1).  On AVX2 CPUs (and nf_rqs_vector) four splines go side by side,
 * within a few ulp of the one-at-a-time path, which other CPUs take. */
void nf_rqs_run(const nf_rqs_cfg *cf, const nf_real *th, size_t es, size_t qs, int n,
                const double *x, double *y, double *ld, int dir);
/* backward of nf_rqs_run's dir 0: gz[e] = dJ/dy (gz NULL: 0), gl[e] =
 * dJ/d(log g'); writes dJ/dtheta to gth[e*es + q*qs] (rounded to nf_real)
 * and gx[e] = dJ/dx.  Four at a time on AVX2 CPUs, as nf_rqs_run. */
void nf_rqs_run_backward(const nf_rqs_cfg *cf, const nf_real *th, size_t es, size_t qs, int n,
                         const double *x, const double *gz, const double *gl, nf_real *gth,
                         double *gx);
/* backward of nf_rqs_eval at x: gz = dJ/dz, gl = dJ/d(log g'); writes
 * gth (3K-1) = dJ/dtheta and returns dJ/dx */
double nf_rqs_backward(const nf_rqs_cfg *cf, const nf_rqs_knots *kn, const nf_real *theta,
                       double x, double gz, double gl, double *gth);

/* The spec keys NF_RQS_KEYS (defaults: 8 bins, tail bound 3, minimum bin
 * width, height and derivative 1e-3); 0 or NF_EINVAL with the message. */
int nf_rqs_parse(nf_rqs_cfg *cf, const cJSON *spec, char *err, size_t errlen);
void nf_rqs_to_json(const nf_rqs_cfg *cf, cJSON *obj);
#define NF_RQS_KEYS "bins", "tail_bound", "min_bin_width", "min_bin_height", "min_derivative"

#endif
