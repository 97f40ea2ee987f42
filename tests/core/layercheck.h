/* layercheck.h: the generic checks every transform must pass.
 *
 * lc_check_layer builds a flow holding just one layer (the given JSON layer
 * spec, on dimension D with context C, or on an image of opts->shape; the
 * spec may also be several layers separated by commas), perturbs every parameter with N(0,
 * param_noise^2) noise (then re-applies masks) so conditioners are not the
 * identity, and checks on B random rows of scale in_scale:
 *   1. inverse(forward(z)) == z and forward(inverse(x)) == x, and the two
 *      log-dets sum to zero;
 *   2. the inverse log-det equals log|det| of the dense Jacobian dz/dx built by
 *      central finite differences (LU with partial pivoting in the test);
 *   3. (NF_DOUBLE builds only) backward's dx, dctx and every parameter
 *      gradient of L = sum(r1 .* z) + sum(r2 .* logdet), r1, r2 random, equal
 *      central finite differences (several layers: their backwards chained,
 *      as nf_flow_transform_grad runs them).  Float32 builds skip this check: step
 *      sizes that beat float32 rounding are too coarse for curvature, so only
 *      double gives an honest 1e-6-level comparison;
 *   4. rows of magnitude up to 1e3 give finite outputs and log-dets (unless
 *      opts->skip_large, for transforms not defined there, e.g. logit).
 * Failures are reported through CHECK with the layer type in the message. */
#ifndef LAYERCHECK_H
#define LAYERCHECK_H

#include "../../core/nf_internal.h"

typedef struct lc_opts {
    int D, C, B;            /* defaults 5, 0, 7 when 0 */
    int shape[3];           /* image layers: the flow's [C,H,W] (then D is their product) */
    double in_scale;        /* inputs ~ in_scale * N(0,1); default 1 */
    double in_offset;       /* added to inputs (e.g. 0.5 for logit with small scale) */
    double param_noise;     /* default 0.3 */
    int training;           /* backward checked with training=1 (batch-norm) */
    int skip_large;         /* skip check 4 */
    uint64_t seed;
    double tol;             /* relative tolerance override for checks 1-3 */
} lc_opts;

/* Runs all checks; returns the number of failed checks. */
int lc_check_layer(const char *layer_spec_json, const lc_opts *o);

/* Pieces, for tests that want only one.  f must have exactly the layers to
 * test; x (B,D) inputs, ctx (B,C) or NULL. */
int lc_check_roundtrip(nf_flow *f, const nf_real *x, const nf_real *ctx, int B, double tol);
int lc_check_jacobian(nf_flow *f, const nf_real *x, const nf_real *ctx, int B, double tol);
int lc_check_grads(nf_flow *f, const nf_real *x, const nf_real *ctx, int B, int training,
                   double tol);
/* Fill buf (n) with scale*N(0,1)+offset from rng. */
void lc_randn(nf_rng *rng, nf_real *buf, size_t n, double scale, double offset);
/* Adds s N(0,1) noise (seeded) to every parameter of f, then projects them
 * back into the valid domain (nf_flow_constrain): a fresh flow made generic. */
void lc_perturb(nf_flow *f, double s, uint64_t seed);

#endif
