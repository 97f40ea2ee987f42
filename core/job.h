/* job.h: the training-job JSON of the HTTP API (../shared/API.md), parsed
 * and run in the core so `flowd train` and the daemon's workers do exactly
 * the same thing.
 *
 *   {"submission_id"?, "model", "dataset": {"id"} | {"builtin","n","noise"?,"seed"?}
 *                                          | {"path","format"?} (offline CLI only),
 *    (any dataset may add "context_columns": [i,...] or "labels": {"column": k,
 *     "classes"?} | {"id": "ds_...", "classes"?} (daemon) | true (built-ins):
 *     a conditional flow p(x | c), see "Conditional flows" below),
 *    "flow": {"preset", ...overrides} | {"layers":[...], "base"?}, either with
 *            "shape"? [C,H,W] (default: the dataset's shape, when it has one),
 *    "train": {"epochs","batch_size","lr","optimizer","weight_decay","clip_grad_norm",
 *              "warmup_steps","schedule","early_stopping":{"patience","min_delta"},
 *              "val_fraction","seed", and the extras "lr_min","plateau_factor",
 *              "plateau_patience","jacobian_l2","test_fraction","log_every",
 *              "max_bad_batches","max_seconds","augment":{"hflip"},"eval_samples"},
 *    "preprocess": {"standardize", "dequantize":{"kind":"uniform"|"variational","levels",
 *                                               "flow"? (variational only)},
 *                   "logit":{"alpha"}, "center"}}
 *
 * Unknown fields are errors (typos are caught, not ignored).
 *
 * Preprocessing becomes fixed layers in front of the flow (density order):
 *   logit:       elementwise_affine(shift 0, scale L or 1) -> logit(alpha),
 *                mapping [0,L] (dequantized levels) or [0,1] into R;
 *   standardize: elementwise_affine(shift mean, scale std) from the training
 *                split (dequantized data: mean + 1/2, the noise's mean);
 *   center:      elementwise_affine(shift L/2, scale L) mapping [0,L]
 *                (dequantized levels, else L = 1) to [-1/2, 1/2], as Glow;
 * so log p is always reported in the data's own units.  Dequantization adds
 * U[0,1) noise to integer rows; the trained likelihood of the noisy rows is a
 * lower bound on the discrete likelihood, and bits/dim = NLL/(D ln 2) in
 * pixel units is the figure papers report.
 *
 * "variational" dequantization (Flow++, see train.h) trains a conditional
 * flow q(u|x) alongside the model; its "flow" is a spec like the model's
 * ({"preset",...} or {"layers":[...]}, dim and context_dim are set to D),
 * by default 4 affine couplings with MLP [64,64] conditioned on the row
 * (2 MAF layers for D = 1), then a fixed x1.6 scale so that sigmoid(v)
 * starts close to uniform.  The model file stores q as its dequantizer.
 *
 * Conditional flows.  "context_columns" names the columns of the dataset's
 * rows that are the context c; the flow learns p(x | c) of the other
 * columns, with context_dim set to their number.  "labels" names a class
 * label instead (a column, a separate one-column dataset of as many rows,
 * such as an IDX label file, or for a built-in set its generator's
 * component, nf_data_builtin_ex): c is its one-hot vector of "classes"
 * values (default: the largest label + 1).  A labels dataset is appended
 * to the rows as their last column (nf_job_attach_labels) before the run.
 * Preprocessing and dequantization apply to x only.  The model file keeps
 * the layout as preprocess.context (context.h), so scorers can split raw
 * rows the same way. */
#ifndef NF_JOB_H
#define NF_JOB_H

#include "context.h"
#include "data.h"
#include "nf_json.h"
#include "train.h"

#include <cjson/cJSON.h>

typedef struct nf_job {
    char submission_id[129];
    char model[65];
    /* dataset: exactly one of id, builtin, path */
    char dataset_id[65];
    char builtin[32];
    int64_t builtin_n;
    double builtin_noise;  /* < 0: the set's default */
    uint64_t builtin_seed;
    char *path;            /* owned, offline CLI only */
    nf_data_format path_format;
    cJSON *flow;           /* owned copy of the "flow" object */
    nf_train_config train;
    double val_fraction, test_fraction;
    int eval_samples;      /* samples for the final "sample_quality", 0: none */
    int standardize;       /* -1 unset: on unless logit */
    int dequantize, levels;
    int variational;       /* dequantize kind "variational" */
    cJSON *dequantizer;    /* owned copy of preprocess.dequantize.flow, or NULL */
    int logit;
    double logit_alpha;
    int center;            /* preprocess.center: [0, levels] or [0, 1] to [-1/2, 1/2] */
    /* conditional flows: dataset.context_columns or dataset.labels */
    nf_ctx_kind ctx_kind;
    int ctx_cols[NF_CTX_MAX_COLUMNS], nctx; /* context columns; labels: the column */
    int labels_src;        /* NF_LABELS_* */
    char labels_id[65];    /* NF_LABELS_DATASET: the labels dataset */
    int classes;           /* labels: K, 0 = the largest label + 1 */
    int context_dim;       /* set by the run for the flow spec (nf_job_flow_spec) */
    /* what the job gave, for the defaults of image flows (nf_job_image_defaults) */
    int dequantize_given, scaling_given, batch_given;
    /* lifecycle (the daemon's; the offline CLI refuses "init"):
     *   "init": {"model", "version"? (integer or alias; absent: the model's
     *            default), "optimizer"? (false)} -- start from a published
     *            version's parameters (and its stored optimizer state);
     *   "publish": {"set_default"? (true), "optimizer_state"? (false)} --
     *            whether the new version becomes the model's default, and
     *            whether the final optimizer state is stored with it. */
    char init_model[65];
    char init_version[65];   /* "" = the default; digits or an alias name */
    int init_optimizer;
    int publish_set_default;
    int publish_optimizer;
    /* borrowed, set by the runner before nf_job_run (not parsed): the model
     * file to start from and its optimizer blob (nf_trainer_save_optimizer).
     * The flow trained is the file's (its preprocessing constants kept);
     * a run resuming from a trainer state takes only that flow from it,
     * parameters and optimizer coming from the state. */
    const void *init_file;
    size_t init_file_len;
    const void *init_opt;
    size_t init_opt_len;
} nf_job;

enum { NF_LABELS_NONE = 0, NF_LABELS_COLUMN, NF_LABELS_DATASET, NF_LABELS_BUILTIN };

/* allow_path: accept {"path":...} datasets (offline CLI).  On failure the
 * message in err names the field.  Free with nf_job_free.  nf_job_from_json
 * reads an already parsed body (o borrowed).  Optional fields given as null
 * take their defaults (nf_json.h). */
int nf_job_parse(const char *json, size_t len, int allow_path, nf_job *out, char *err,
                 size_t errlen);
int nf_job_from_json(const cJSON *o, int allow_path, nf_job *out, char *err, size_t errlen);

/* The "train" block: one row per field (name, type, range, default, where
 * it lands in nf_job), terminated by name NULL.  nf_job_parse reads it;
 * tests/core/test_job.c holds it against schema/job.schema.json. */
extern const nf_field nf_job_train_fields[];

/* The dry run of a submitted job: build the flow it would train (presets,
 * layers, preprocessing) on a two-row stand-in for its dataset, so that a
 * bad preset, layer or preprocessing choice is refused at submission and not
 * discovered by a worker.  dim, shape (the image shape [C,H,W] of a row, or
 * NULL / all zero), is_integer, vmin, vmax describe a stored dataset; dim 0
 * takes the built-in sets' (2 columns within [-4, 4], no shape).  So image
 * layers are built on the shape the job would train (a squeeze of an odd
 * height is refused here with the layer's message).  A variational
 * dequantizer (preprocess.dequantize.flow, or the default) is built too.
 * Returns 0 or an NF_E* status with the message in err. */
int nf_job_check(const nf_job *j, int dim, const int shape[3], int is_integer, double vmin,
                 double vmax, char *err, size_t errlen);
void nf_job_free(nf_job *j);
/* The warm-start check of a job with "init": the flow the job would train
 * (built as nf_job_check does) against the model file (file, len) it starts
 * from: dim, context_dim, layer count, each layer's type and the parameter
 * and buffer counts must agree.  NF_EINVAL with err naming the first thing
 * that differs ("init: ..."); NF_EFORMAT/NF_ECORRUPT for a file that does
 * not load. */
int nf_job_check_init(const nf_job *j, int dim, const int shape[3], int is_integer, double vmin,
                      double vmax, const void *file, size_t len, char *err, size_t errlen);
/* Image flows (the image presets, or layer lists with image layers, on rows
 * with a shape from the flow or the dataset) have their own defaults for
 * what the job leaves out: uniform dequantization with 256 levels for
 * integer data in [0, 255], "center" scaling, and batch_size 64 -- what
 * Glow and RealNVP train with.  Returns j itself, or tmp filled as a
 * shallow copy of j with those defaults (owning nothing: not to be freed)
 * when they apply to rows of dataset d (its shape, integrality and range). */
const nf_job *nf_job_image_defaults(const nf_job *j, const nf_data *d, nf_job *tmp);
/* "model" names: 1-64 of [A-Za-z0-9._-], not starting with '.' */
int nf_valid_name(const char *s);

/* The raw-row layout of the job's context for its rows all (borrowed; NULL
 * at submission, when only the width W is known): labels without "classes"
 * count them from all's label column (2 when all is NULL).  NF_EINVAL with
 * a message naming the field.  kind NF_CTX_NONE for an unconditional job. */
int nf_job_context_spec(const nf_job *j, int W, const nf_data *all, nf_context_spec *s,
                        char *err, size_t errlen);
/* Append the labels dataset (n rows of one column, as many rows as all) to
 * all as its last column, in place.  NF_EINVAL with a message. */
int nf_job_attach_labels(const nf_job *j, nf_data *all, const nf_data *labels, char *err,
                         size_t errlen);

/* Load the job's dataset (builtin or path; NF_EINVAL for an id, which only
 * the daemon resolves). */
int nf_job_load_data(const nf_job *j, nf_data *out, char *err, size_t errlen);

/* The job's split of all (borrowed) into train, val and test rows, the one
 * nf_job_run trains on (the same job and data give the same rows): val or
 * test gets n = 0 when its fraction is 0.  All three pointers are
 * required; the caller frees each with nf_data_free.  NF_EINVAL when all
 * has too few rows to split. */
int nf_job_split(const nf_job *j, const nf_data *all, nf_data *train, nf_data *val,
                 nf_data *test);

/* Everything a finished run produced. */
typedef struct nf_job_result {
    void *model;           /* model file bytes (model.h), malloc'd */
    size_t model_len;
    cJSON *metrics;        /* owned: final metrics object */
    nf_train_metrics last;
    void *optimizer;       /* with publish.optimizer_state: nf_trainer_save_optimizer's blob */
    size_t optimizer_len;
} nf_job_result;
void nf_job_result_free(nf_job_result *r);

/* Split all (borrowed), build the flow with preprocessing, train with hooks,
 * and serialise the best parameters as a model file.  The final metrics
 * hold, besides the likelihoods, "sample_quality" (core/evaluate.h):
 * {"samples","split","nonfinite_share","mmd2","mmd_bandwidth","nn_ratio",
 * "seconds"} for train.eval_samples samples (default 500) against as many
 * rows (at most 1000) of the test split, or of the validation split when
 * there is no test split, with the training split as the reference; absent
 * when eval_samples is 0 or no rows are held out.  resume (may be NULL)
 * is a trainer state blob from a checkpoint hook of the same job and data.
 * Returns 0 or the trainer's status (NF_ECANCELLED, NF_ENONFINITE, ...),
 * with err set. */
int nf_job_run(const nf_job *j, const nf_data *all, const nf_train_hooks *hooks,
               const void *resume, size_t resume_len, nf_job_result *res, char *err,
               size_t errlen);

/* The spec of the variational dequantizer q for D-dimensional rows (the
 * job's "flow" or the default), as JSON text (caller frees); NULL with err
 * set on failure. */
char *nf_job_dequantizer_spec(const nf_job *j, int D, char *err, size_t errlen);

/* The flow spec (with dim and preprocessing layers) the job trains, as JSON
 * text (caller frees), given the training split.  Its image shape: the
 * flow's "shape" when given (NF_EINVAL unless it holds one row of train,
 * the message naming both shapes), else train->shape when the dataset has
 * one, else none.  Exposed for tests. */
char *nf_job_flow_spec(const nf_job *j, const nf_data *train, cJSON **preprocess, char *err,
                       size_t errlen);

#endif
