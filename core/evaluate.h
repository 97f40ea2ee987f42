/* evaluate.h: judging what a model generates, next to how well it scores.
 *
 * Given a model, held-out test rows and (optionally) the training rows, it
 * reports
 *   - the test rows' mean log-likelihood in the data's own units and, for
 *     dequantized models, bits per dimension: exactly what `flowd eval`
 *     reports (nf_model_log_prob, noise seeded per row; rows outside
 *     the support are counted and left out of the mean; nf_bits_per_dim);
 *   - for n samples drawn at temperature T with a seed (nf_flow_sample: the
 *     same seed gives the samples POST /sample gives):
 *       the share of non-finite samples (a row with any NaN or Inf) and the
 *       value range of the finite ones (before the flooring below);
 *       the kernel MMD^2 between samples and test rows;
 *       the nearest-training-row distance of samples relative to that of
 *       test rows (the "NN ratio").
 *     Non-finite samples are counted and left out of MMD and distances.
 *
 * MMD^2 (Gretton et al. 2012, the unbiased estimator) of samples X (n rows)
 * and test rows Y (m rows), n, m >= 2:
 *     MMD^2_u = 1/(n(n-1)) sum_{i!=j} k(x_i,x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i,y_j)
 *               - 2/(nm) sum_{i,j} k(x_i,y_j)
 * with the Gaussian kernel k(a,b) = exp(-||a-b||^2 / (2 s^2)).  The
 * bandwidth s is the median heuristic: the median of the Euclidean distances
 * ||a-b|| over all pairs (i<j) of the pooled rows X u Y (for an even number of
 * pairs, the mean of the two middle ones; the squared distances are ranked
 * as float, so s is good to ~1e-7 relative).  The median is taken over at most
 * NF_EVAL_MEDIAN_ROWS rows of each side (the first ones of each subsample,
 * which are in random order), so at the default M = 1000 it is exact.  When
 * the median is 0 (more than half the pairs are duplicates) s is the mean
 * distance, and 1 when every row is the same.  The unbiased estimator can be
 * slightly negative when the two sets come from one distribution.  Each side
 * is subsampled to at most M rows (max_rows): the first M finite samples, a
 * seeded random M of the test rows.
 *
 * NN ratio = mean over samples s of min_j ||s - r_j||
 *          / mean over test rows t of min_j ||t - r_j||
 * (Euclidean, in the data's own units, r_j the reference = training rows;
 * the same (at most M) samples and test rows as MMD).  Well under 1: the
 * samples sit on training rows (memorisation); near 1: healthy; above 1:
 * samples away from the data.  The test rows must be held out (not among
 * the reference rows), else the denominator is ~0: a denominator of 0 gives
 * a ratio of NAN.  At most max_ref_rows reference rows are used (a seeded
 * random subset): with a share f of the training rows, a sample that copies
 * a training row outside the subset counts like a fresh one, so a
 * memorising model's ratio reads about 1 - f x (its memorised share);
 * raise the cap to see all of it.
 *
 * Dequantized models (integer levels 0..L-1 plus U[0,1) noise during
 * training): a sample y of the continuous density p is turned into the
 * discrete model's sample x = floor(y), clamped to [0, L-1], before MMD and
 * distances, and compared with the integer test and training rows as they
 * are.  P(x) = integral of p over the unit cell [x, x+1), so floor(y) is
 * exactly a draw of the discrete model that bits/dim scores, and a sample
 * that reproduces a training image lands at distance 0 from it.  (Comparing
 * continuous samples with test rows plus fresh noise instead would put
 * every copy of a training row ~sqrt(D/3) away from it and mix the noise
 * into both means.)  The value range is reported before flooring, so
 * samples outside [0, L) still show.
 *
 * Distances come from GEMMs in double precision, ||a-b||^2 = ||a||^2 +
 * ||b||^2 - 2 a.b, where a value within the GEMM's rounding error
 * (2 (D+2) eps (||a||^2 + ||b||^2)) counts as 0, so a duplicate row is
 * exactly 0 away whatever order BLAS sums in.  Blocks of at most
 * 128 x 256 rows keep memory at O((128 + 256) D + 128 x 256) for the
 * nearest-neighbour search and O(M D + NF_EVAL_MEDIAN_ROWS^2) for MMD,
 * whatever the row counts.  Cost: MMD ~ (2M)^2 D multiply-adds (the bandwidth pass and the
 * kernel pass), NN ~ 2 M R D for R reference rows.  Measured on one shared
 * core (OPENBLAS_NUM_THREADS=1, D = 784): M = 1000, R = 10000: MMD 0.45 s,
 * NN 1.4 s; M = 500: 0.09 s and 0.4 s.  Rows of D = 2, M = 350: MMD 14 ms.
 *
 * Part of core: no HTTP, no SQLite.  Returns 0 or a negative NF_E* status;
 * all pointers are borrowed. */
#ifndef NF_EVALUATE_H
#define NF_EVALUATE_H

#include "model.h"
#include "nf.h"

#include <stdint.h>

#define NF_EVAL_MEDIAN_ROWS 1024 /* rows of each side that set the MMD bandwidth */

typedef struct nf_eval_opts {
    int samples;          /* samples to draw, default 1000; 0: no sample figures */
    double temperature;   /* scale of the base's std, > 0, default 1 */
    uint64_t seed;        /* the samples' seed (and of the subsamples), default 0 */
    int max_rows;         /* M: samples and test rows for MMD and NN, default 1000 */
    int64_t max_ref_rows; /* reference rows for NN, default 10000 */
} nf_eval_opts;

void nf_eval_opts_default(nf_eval_opts *o);

typedef struct nf_eval_result {
    /* the test rows' likelihood (nf_model_evaluate; NAN / 0 otherwise) */
    int64_t test_rows;       /* rows given */
    int64_t outside_support; /* rows whose log p is not finite, left out of the mean */
    double mean_log_prob;    /* nats per row in the data's own units */
    double bits_per_dim;     /* dequantized models: -mean_log_prob / (D ln 2); else NAN */
    /* the samples */
    int samples;             /* drawn */
    int nonfinite;           /* rows with a NaN or Inf */
    double nonfinite_share;  /* nonfinite / samples (NAN when none drawn) */
    double sample_min, sample_max; /* over the finite rows' values, before flooring */
    double mmd2;             /* NAN with fewer than 2 finite samples or test rows */
    double mmd_bandwidth;    /* s of the kernel */
    int mmd_samples, mmd_test_rows; /* rows of each side used (<= M) */
    double nn_sample_mean, nn_test_mean; /* mean nearest-reference distances */
    double nn_ratio;         /* their ratio; NAN without reference rows */
    int64_t nn_ref_rows;     /* reference rows used (<= max_ref_rows) */
    double seconds;          /* wall time of the call */
} nf_eval_result;

/* Fills every figure of r with NAN and every count with 0. */
void nf_eval_result_init(nf_eval_result *r);

/* The unbiased MMD^2 of x (nx,D) and y (ny,D), all rows used, nx, ny >= 2
 * (NF_EINVAL otherwise), finite values (the caller filters).  *bandwidth
 * gets s (see above).  NF_ENOMEM. */
int nf_eval_mmd2(const nf_real *x, int nx, const nf_real *y, int ny, int D, double *mmd2,
                 double *bandwidth);

/* mean over the rows q (nq,D) of the distance to the nearest row of ref
 * (nref,D), all rows used; nq, nref >= 1.  min_dist (nq), if non-NULL,
 * receives each row's distance. */
int nf_eval_nn_mean(const nf_real *q, int nq, const nf_real *ref, int64_t nref, int D,
                    double *mean, double *min_dist);

/* The sample figures of given samples s (ns,D) (the likelihood fields are
 * left alone): non-finite share, range, MMD against test (nt,D), NN ratio
 * against ref (nref,D) (ref may be NULL: NN fields NAN).  levels > 0: the
 * samples are of a dequantized model with that many levels (floored and
 * clamped, see above); 0: continuous.  Only o->max_rows, o->max_ref_rows
 * and o->seed are read; r->samples = ns.  nt >= 1. */
int nf_eval_sample_set(const nf_real *s, int ns, int levels, const nf_real *test, int64_t nt,
                       const nf_real *ref, int64_t nref, int D, const nf_eval_opts *o,
                       nf_eval_result *r);

/* Draws o->samples samples from the unconditional flow f (NF_EUNSUPPORTED
 * for a conditional one) and fills the sample figures as
 * nf_eval_sample_set; r->seconds is this call's time.  test (nt,D),
 * nt >= 1, and ref (nref,D) or NULL, D = f's dimension. */
int nf_eval_flow_samples(const nf_flow *f, int levels, const nf_real *test, int64_t nt,
                         const nf_real *ref, int64_t nref, const nf_eval_opts *o,
                         nf_eval_result *r);

/* Everything: the test rows' likelihood under m (as `flowd eval`), then
 * nf_eval_flow_samples with m's levels when it is dequantized (skipped when
 * o->samples is 0).  r->seconds covers both. */
int nf_model_evaluate(const nf_model *m, const nf_real *test, int64_t nt, const nf_real *ref,
                      int64_t nref, const nf_eval_opts *o, nf_eval_result *r);

#endif
