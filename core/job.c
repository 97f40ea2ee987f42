/* job.c: parse and run a training job (see job.h). */
#include "alloc.h"
#include "evaluate.h"
#include "job.h"

#include "model.h"
#include "nf_internal.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int nf_preset_expand(const cJSON *spec, cJSON **out, char *err, size_t errlen); /* presets.c */

int nf_valid_name(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64 || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

void nf_job_free(nf_job *j) {
    if (!j) return;
    nf_free(j->path);
    cJSON_Delete(j->flow);
    cJSON_Delete(j->dequantizer);
    memset(j, 0, sizeof *j);
}

/* prefix field errors with their path */
#define FAIL(...)                                                               \
    do {                                                                        \
        nf_set_err(err, errlen, __VA_ARGS__);                                   \
        rc = NF_EINVAL;                                                         \
        goto out;                                                               \
    } while (0)
#define TRY(call, path)                                                         \
    do {                                                                        \
        char e_[200];                                                           \
        if ((call_rc = (call))) {                                               \
            (void)e_;                                                           \
            rc = call_rc;                                                       \
            prefix(err, errlen, path);                                          \
            goto out;                                                           \
        }                                                                       \
    } while (0)

static void prefix(char *err, size_t errlen, const char *path) {
    if (!err || !errlen) return;
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s: %s", path, err);
    snprintf(err, errlen, "%s", tmp);
}

/* ---- the train block, as a table (job.h) ------------------------------------ */
static const char *const optimizer_names[] = {"adam", "adamw", NULL};
static const char *const schedule_names[] = {"constant", "cosine", "plateau", NULL};
_Static_assert(sizeof(nf_opt_kind) == sizeof(int) && sizeof(nf_sched_kind) == sizeof(int),
               "enum rows are stored as int");
_Static_assert(NF_OPT_ADAMW == 1 && NF_SCHED_COSINE == 1 && NF_SCHED_PLATEAU == 2,
               "enum rows are indices into their names");

#define TR(f) offsetof(nf_job, train.f)
static const nf_field early_stopping_fields[] = {
    {"patience", NF_FIELD_INT, 1, 1000000, 20, TR(es_patience), NULL, NULL},
    {"min_delta", NF_FIELD_NUM, 0, 1e6, 1e-4, TR(es_min_delta), NULL, NULL},
    {NULL, 0, 0, 0, 0, 0, NULL, NULL},
};
static const nf_field augment_fields[] = {
    {"hflip", NF_FIELD_BOOL, 0, 1, 0, TR(hflip), NULL, NULL},
    {NULL, 0, 0, 0, 0, 0, NULL, NULL},
};

const nf_field nf_job_train_fields[] = {
    {"epochs", NF_FIELD_INT, 1, 100000, 100, TR(epochs), NULL, NULL},
    {"batch_size", NF_FIELD_INT, 1, 65536, 256, TR(batch_size), NULL, NULL},
    {"lr", NF_FIELD_NUM, 1e-12, 10, 1e-3, TR(lr), NULL, NULL},
    {"optimizer", NF_FIELD_ENUM, 0, 0, NF_OPT_ADAM, TR(optimizer), optimizer_names, NULL},
    {"weight_decay", NF_FIELD_NUM, 0, 10, 0, TR(weight_decay), NULL, NULL},
    {"clip_grad_norm", NF_FIELD_NUM, 0, 1e9, 0, TR(clip_grad_norm), NULL, NULL},
    {"warmup_steps", NF_FIELD_INT, 0, 100000000, 0, TR(warmup_steps), NULL, NULL},
    {"schedule", NF_FIELD_ENUM, 0, 0, NF_SCHED_CONSTANT, TR(schedule), schedule_names, NULL},
    {"early_stopping", NF_FIELD_OBJECT, 0, 0, 0, 0, NULL, early_stopping_fields},
    {"val_fraction", NF_FIELD_NUM, 0, 0.9, 0.1, offsetof(nf_job, val_fraction), NULL, NULL},
    {"test_fraction", NF_FIELD_NUM, 0, 0.9, 0, offsetof(nf_job, test_fraction), NULL, NULL},
    {"seed", NF_FIELD_SEED, 0, NF_JSON_SEED_MAX, 0, TR(seed), NULL, NULL},
    {"lr_min", NF_FIELD_NUM, 0, 10, 0, TR(lr_min), NULL, NULL},
    {"plateau_factor", NF_FIELD_NUM, 1e-6, 0.999999, 0.5, TR(plateau_factor), NULL, NULL},
    {"plateau_patience", NF_FIELD_INT, 0, 1000000, 5, TR(plateau_patience), NULL, NULL},
    {"jacobian_l2", NF_FIELD_NUM, 0, 1e6, 0, TR(jacobian_l2), NULL, NULL},
    {"log_every", NF_FIELD_INT, 1, 1000000, 50, TR(log_every), NULL, NULL},
    {"max_bad_batches", NF_FIELD_INT, 1, 1000000, 10, TR(max_bad_batches), NULL, NULL},
    {"max_seconds", NF_FIELD_NUM, 0, 1e9, 0, TR(max_seconds), NULL, NULL},
    {"augment", NF_FIELD_OBJECT, 0, 0, 0, 0, NULL, augment_fields},
    {"eval_samples", NF_FIELD_INT, 0, 10000, 500, offsetof(nf_job, eval_samples), NULL, NULL},
    {NULL, 0, 0, 0, 0, 0, NULL, NULL},
};
#undef TR

/* ---- the other blocks ---------------------------------------------------------- */
/* "context_columns" and "labels" of any dataset object (job.h) */
static int parse_context(const cJSON *ds, nf_job *j, char *err, size_t errlen) {
    int rc = 0, call_rc;
    const cJSON *cc = nf_json_get(ds, "context_columns"), *lb = nf_json_get(ds, "labels");
    if (cc && lb) FAIL("dataset: give context_columns or labels, not both");
    if (cc) {
        if ((rc = nf_context_parse_columns(cc, "dataset.context_columns", j->ctx_cols, &j->nctx, err,
                                           errlen)))
            goto out;
        j->ctx_kind = NF_CTX_COLUMNS;
        return 0;
    }
    if (!lb || cJSON_IsFalse(lb)) return 0;
    j->ctx_kind = NF_CTX_LABELS;
    j->nctx = 1;
    if (j->builtin[0]) {
        if (!cJSON_IsTrue(lb))
            FAIL("dataset.labels: for a built-in set, true (each row's component is its label)");
        j->labels_src = NF_LABELS_BUILTIN;
        return 0;
    }
    static const char *const k[] = {"column", "id", "classes", NULL};
    if (!cJSON_IsObject(lb)) FAIL("dataset.labels: must be {\"column\": k} or {\"id\": \"ds_...\"}");
    TRY(nf_json_check_keys(lb, k, err, errlen), "dataset.labels");
    const cJSON *col = nf_json_get(lb, "column"), *id = nf_json_get(lb, "id");
    if (!col == !id) FAIL("dataset.labels: give \"column\" (a column of the dataset) or \"id\" (a labels dataset)");
    if (col) {
        TRY(nf_json_int(lb, "column", 0, 0, 1 << 30, &j->ctx_cols[0], err, errlen), "dataset.labels");
        j->labels_src = NF_LABELS_COLUMN;
    } else {
        if (!cJSON_IsString(id) || strlen(id->valuestring) < 1 || strlen(id->valuestring) > 64)
            FAIL("dataset.labels.id: must be a dataset id string");
        strcpy(j->labels_id, id->valuestring);
        j->labels_src = NF_LABELS_DATASET;
    }
    TRY(nf_json_int(lb, "classes", 0, 1, NF_CTX_MAX_CLASSES, &j->classes, err, errlen), "dataset.labels");
out:
    return rc;
}

static int parse_dataset(const cJSON *ds, int allow_path, nf_job *j, char *err, size_t errlen) {
    int rc = 0, call_rc;
    const cJSON *v;
    if (!cJSON_IsObject(ds)) FAIL("dataset: required object, {\"id\":...} or {\"builtin\":...}");
    if (nf_json_get(ds, "id")) {
        static const char *const k[] = {"id", "context_columns", "labels", NULL};
        TRY(nf_json_check_keys(ds, k, err, errlen), "dataset");
        v = nf_json_get(ds, "id");
        if (!cJSON_IsString(v) || strlen(v->valuestring) < 1 || strlen(v->valuestring) > 64)
            FAIL("dataset.id: must be a dataset id string");
        strcpy(j->dataset_id, v->valuestring);
    } else if (nf_json_get(ds, "builtin")) {
        static const char *const k[] = {"builtin", "n", "noise", "seed", "context_columns", "labels", NULL};
        TRY(nf_json_check_keys(ds, k, err, errlen), "dataset");
        v = nf_json_get(ds, "builtin");
        int ok = 0;
        for (const char *const *nm = nf_data_builtin_names(); cJSON_IsString(v) && *nm; nm++)
            ok |= !strcmp(*nm, v->valuestring);
        if (!ok)
            FAIL("dataset.builtin: must be one of moons, circles, 8gaussians, checkerboard, "
                 "pinwheel, 2spirals, rings");
        snprintf(j->builtin, sizeof j->builtin, "%s", v->valuestring);
        TRY(nf_json_i64(ds, "n", 10000, 1, 10000000, &j->builtin_n, err, errlen), "dataset");
        TRY(nf_json_num(ds, "noise", -1, 0, 10, &j->builtin_noise, err, errlen), "dataset");
        TRY(nf_json_seed(ds, "seed", 0, &j->builtin_seed, err, errlen), "dataset");
    } else if (allow_path && nf_json_get(ds, "path")) {
        static const char *const k[] = {"path", "format", "context_columns", "labels", NULL};
        TRY(nf_json_check_keys(ds, k, err, errlen), "dataset");
        v = nf_json_get(ds, "path");
        if (!cJSON_IsString(v)) FAIL("dataset.path: must be a string");
        if (!(j->path = nf_strdup(v->valuestring))) FAIL("out of memory");
        const char *fmt = nf_json_str(ds, "format", "auto");
        if (!fmt || nf_data_format_parse(fmt, &j->path_format))
            FAIL("dataset.format: must be auto, csv, npy, idx or json");
    } else {
        FAIL(allow_path ? "dataset: give {\"id\"}, {\"builtin\"} or {\"path\"}"
                        : "dataset: give {\"id\":...} or {\"builtin\":...}");
    }
    rc = parse_context(ds, j, err, errlen);
    if (!rc && j->labels_src == NF_LABELS_DATASET && j->path)
        FAIL("dataset.labels.id: labels datasets are resolved by the daemon; offline, give "
             "\"column\"");
out:
    return rc;
}

static int parse_flow(const cJSON *fl, nf_job *j, char *err, size_t errlen) {
    int rc = 0;
    if (!cJSON_IsObject(fl)) FAIL("flow: required object, {\"preset\":...} or {\"layers\":[...]}");
    if (cJSON_GetObjectItemCaseSensitive(fl, "dim"))
        FAIL("flow.dim: set by the dataset, leave it out");
    if (!nf_json_get(fl, "preset") && !nf_json_get(fl, "layers"))
        FAIL("flow: needs \"preset\" or \"layers\"");
    if ((rc = nf_json_check_finite(fl, err, errlen))) {
        prefix(err, errlen, "flow");
        goto out;
    }
    const cJSON *v = nf_json_get(fl, "context_dim");
    if (v && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        FAIL("flow.context_dim: set by the dataset's context_columns or labels, leave it out");
    int shape[3]; /* its form here; that it holds a row is checked against the dataset */
    if ((rc = nf_shape_parse(fl, 0, shape, err, errlen))) {
        prefix(err, errlen, "flow");
        goto out;
    }
    if (!(j->flow = cJSON_Duplicate(fl, 1))) FAIL("out of memory");
out:
    return rc;
}

static int parse_dequantize(const cJSON *dq, nf_job *j, char *err, size_t errlen) {
    int rc = 0, call_rc;
    static const char *const dk[] = {"kind", "levels", "flow", NULL};
    TRY(nf_json_check_keys(dq, dk, err, errlen), "preprocess.dequantize");
    const char *kind = nf_json_str(dq, "kind", "uniform");
    if (!kind || (strcmp(kind, "uniform") && strcmp(kind, "variational")))
        FAIL("preprocess.dequantize.kind: must be \"uniform\" or \"variational\"");
    j->variational = !strcmp(kind, "variational");
    const cJSON *qf = nf_json_get(dq, "flow");
    if (qf && !j->variational) FAIL("preprocess.dequantize.flow: only for \"kind\":\"variational\"");
    if (qf) {
        if (!cJSON_IsObject(qf) || (!nf_json_get(qf, "preset") && !nf_json_get(qf, "layers")))
            FAIL("preprocess.dequantize.flow: needs \"preset\" or \"layers\"");
        TRY(nf_json_check_finite(qf, err, errlen), "preprocess.dequantize.flow");
        if (cJSON_GetObjectItemCaseSensitive(qf, "dim") ||
            cJSON_GetObjectItemCaseSensitive(qf, "context_dim"))
            FAIL("preprocess.dequantize.flow: dim and context_dim are set by the dataset, leave them out");
        if (!(j->dequantizer = cJSON_Duplicate(qf, 1))) FAIL("out of memory");
    }
    TRY(nf_json_int(dq, "levels", 256, 2, 65536, &j->levels, err, errlen), "preprocess.dequantize");
    j->dequantize = 1;
out:
    return rc;
}

static int parse_preprocess(const cJSON *pp, nf_job *j, char *err, size_t errlen) {
    int rc = 0, call_rc;
    if (!pp) return 0;
    static const char *const k[] = {"standardize", "dequantize", "logit", "center", NULL};
    TRY(nf_json_check_keys(pp, k, err, errlen), "preprocess");
    TRY(nf_json_bool(pp, "standardize", -1, &j->standardize, err, errlen), "preprocess");
    const cJSON *dq = nf_json_get(pp, "dequantize");
    if (dq && !cJSON_IsFalse(dq) && (rc = parse_dequantize(dq, j, err, errlen))) goto out;
    const cJSON *lg = nf_json_get(pp, "logit");
    if (lg && !cJSON_IsFalse(lg)) {
        static const char *const lk[] = {"alpha", NULL};
        if (!cJSON_IsTrue(lg)) {
            TRY(nf_json_check_keys(lg, lk, err, errlen), "preprocess.logit");
            TRY(nf_json_num(lg, "alpha", 1e-6, 0, 0.1, &j->logit_alpha, err, errlen), "preprocess.logit");
        }
        j->logit = 1;
    }
    TRY(nf_json_bool(pp, "center", 0, &j->center, err, errlen), "preprocess");
    if (j->logit + (j->standardize == 1) + j->center > 1)
        FAIL("preprocess: choose one of standardize, logit and center");
out:
    return rc;
}

/* "init": {"model", "version"?, "optimizer"?} */
static int parse_init(const cJSON *in, int allow_path, nf_job *j, char *err, size_t errlen) {
    int rc = 0, call_rc;
    if (!in || cJSON_IsNull(in)) return 0;
    if (allow_path) FAIL("init: warm starts from published versions are the daemon's (submit the job over HTTP)");
    if (!cJSON_IsObject(in)) FAIL("init: must be an object {\"model\", \"version\"?, \"optimizer\"?}");
    static const char *const keys[] = {"model", "version", "optimizer", NULL};
    TRY(nf_json_check_keys(in, keys, err, errlen), "init");
    const cJSON *v = nf_json_get(in, "model");
    if (!cJSON_IsString(v) || !nf_valid_name(v->valuestring))
        FAIL("init.model: required, a model name (1-64 characters of A-Z a-z 0-9 . _ -)");
    strcpy(j->init_model, v->valuestring);
    v = nf_json_get(in, "version");
    if (cJSON_IsNumber(v)) {
        if (v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 || v->valuedouble > 2147483647.0)
            FAIL("init.version: a version number (an integer >= 1) or an alias name");
        snprintf(j->init_version, sizeof j->init_version, "%d", (int)v->valuedouble);
    } else if (cJSON_IsString(v)) {
        char c0 = v->valuestring[0];
        if (!nf_valid_name(v->valuestring) || !((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z')))
            FAIL("init.version: a version number (a JSON integer >= 1) or an alias name (a string "
                 "starting with a letter)");
        strcpy(j->init_version, v->valuestring);
    } else if (v) {
        FAIL("init.version: a version number (an integer >= 1) or an alias name");
    }
    TRY(nf_json_bool(in, "optimizer", 0, &j->init_optimizer, err, errlen), "init");
out:
    return rc;
}

/* "publish": {"set_default"?, "optimizer_state"?} */
static int parse_publish(const cJSON *pu, nf_job *j, char *err, size_t errlen) {
    int rc = 0, call_rc;
    j->publish_set_default = 1;
    if (!pu || cJSON_IsNull(pu)) return 0;
    if (!cJSON_IsObject(pu)) FAIL("publish: must be an object {\"set_default\"?, \"optimizer_state\"?}");
    static const char *const keys[] = {"set_default", "optimizer_state", NULL};
    TRY(nf_json_check_keys(pu, keys, err, errlen), "publish");
    TRY(nf_json_bool(pu, "set_default", 1, &j->publish_set_default, err, errlen), "publish");
    TRY(nf_json_bool(pu, "optimizer_state", 0, &j->publish_optimizer, err, errlen), "publish");
out:
    return rc;
}

int nf_job_from_json(const cJSON *o, int allow_path, nf_job *j, char *err, size_t errlen) {
    memset(j, 0, sizeof *j);
    nf_train_config_default(&j->train);
    j->standardize = -1;
    j->builtin_noise = -1;
    j->logit_alpha = 1e-6;
    int rc = 0, call_rc;
    const cJSON *v;
    static const char *const top[] = {"submission_id", "model", "dataset", "flow", "train",
                                      "preprocess", "init", "publish", NULL};
    TRY(nf_json_check_keys(o, top, err, errlen), "job");
    if ((v = nf_json_get(o, "submission_id"))) {
        if (!cJSON_IsString(v) || strlen(v->valuestring) < 1 || strlen(v->valuestring) > 128)
            FAIL("submission_id: must be a string of 1 to 128 characters");
        strcpy(j->submission_id, v->valuestring);
    }
    v = nf_json_get(o, "model");
    if (!cJSON_IsString(v) || !nf_valid_name(v->valuestring))
        FAIL("model: required, 1-64 characters of A-Z a-z 0-9 . _ - (not starting with .)");
    strcpy(j->model, v->valuestring);
    if ((rc = parse_dataset(nf_json_get(o, "dataset"), allow_path, j, err, errlen)) ||
        (rc = parse_flow(nf_json_get(o, "flow"), j, err, errlen)))
        goto out;
    TRY(nf_json_fields(nf_json_get(o, "train"), nf_job_train_fields, j, err, errlen), "train");
    if (j->val_fraction + j->test_fraction >= 0.95)
        FAIL("train: val_fraction + test_fraction must leave rows to train on");
    if ((rc = parse_preprocess(nf_json_get(o, "preprocess"), j, err, errlen)) ||
        (rc = parse_init(nf_json_get(o, "init"), allow_path, j, err, errlen)) ||
        (rc = parse_publish(nf_json_get(o, "publish"), j, err, errlen)))
        goto out;
    const cJSON *pp = nf_json_get(o, "preprocess");
    j->dequantize_given = nf_json_get(pp, "dequantize") != NULL;
    j->scaling_given = nf_json_get(pp, "standardize") || nf_json_get(pp, "logit") ||
                       nf_json_get(pp, "center");
    j->batch_given = nf_json_get(nf_json_get(o, "train"), "batch_size") != NULL;
    if (j->standardize < 0) j->standardize = !j->logit && !j->center;
    j->train.dequantize = j->dequantize;
    j->train.levels = j->levels;
out:
    if (rc) nf_job_free(j);
    return rc;
}

int nf_job_parse(const char *json, size_t len, int allow_path, nf_job *j, char *err,
                 size_t errlen) {
    cJSON *o = cJSON_ParseWithLength(json, len);
    if (!o) {
        memset(j, 0, sizeof *j);
        nf_set_err(err, errlen, "the job is not valid JSON");
        return NF_EINVAL;
    }
    int rc = nf_job_from_json(o, allow_path, j, err, errlen);
    cJSON_Delete(o);
    return rc;
}

/* The layers preprocessing puts in front of the job's flow (nf_job_flow_spec). */
static int preprocess_layers(const nf_job *j) {
    return j->logit ? 2 : j->center || j->standardize ? 1 : 0;
}

/* "flow: " and the flow builder's message, whose "layer K (type)" counts the
 * preprocessing layers in front: renumbered to the job's own flow. */
static void flow_error(const nf_job *j, const char *ferr, char *err, size_t errlen) {
    int k, n = 0, npre = preprocess_layers(j);
    if (npre && sscanf(ferr, "layer %d %n", &k, &n) == 1 && n > 0 && ferr[n] == '(') {
        if (k >= npre) nf_set_err(err, errlen, "flow: layer %d %s", k - npre, ferr + n);
        else nf_set_err(err, errlen, "preprocess: layer %d %s", k, ferr + n);
        return;
    }
    nf_set_err(err, errlen, "flow: %s", ferr);
}

const nf_job *nf_job_image_defaults(const nf_job *j, const nf_data *d, nf_job *tmp) {
    int shape[3];
    int has_shape = d->shape[0] > 0 || (nf_shape_parse(j->flow, 0, shape, NULL, 0) == 0 && shape[0]);
    if (!has_shape || !nf_flow_spec_is_image(j->flow)) return j;
    *tmp = *j;
    if (!j->dequantize_given && d->is_integer && d->vmin >= 0 && d->vmax <= 255) {
        tmp->dequantize = 1;
        tmp->levels = 256;
        tmp->train.dequantize = 1;
        tmp->train.levels = 256;
    }
    if (!j->scaling_given) {
        tmp->center = 1;
        tmp->standardize = 0;
        tmp->logit = 0;
    }
    if (!j->batch_given) tmp->train.batch_size = 64;
    return tmp;
}

/* nf_job_check's build: the flow the job would train on a two-row stand-in
 * for its dataset, into *out (may be NULL: freed) */
static int check_build(const nf_job *j, int dim, const int shape[3], int is_integer, double vmin,
                       double vmax, nf_flow **out, char *err, size_t errlen) {
    if (out) *out = NULL;
    if (dim <= 0) { /* the built-in sets: two columns within [-4, 4] (and a label) */
        dim = j->labels_src == NF_LABELS_BUILTIN ? 3 : 2;
        shape = NULL;
        is_integer = 0;
        vmin = -4;
        vmax = 4;
    } else if (j->labels_src == NF_LABELS_DATASET) {
        dim++; /* the labels dataset becomes the last column */
    }
    nf_context_spec cs;
    int rc = nf_job_context_spec(j, dim, NULL, &cs, err, errlen);
    if (rc) return rc;
    nf_job cj = *j; /* shallow: owns nothing, not freed */
    cj.context_dim = nf_context_dim(&cs);
    j = &cj;
    dim = nf_context_data_dim(&cs);
    if (shape && (int64_t)shape[0] * shape[1] * shape[2] != dim) shape = NULL;
    nf_data probe = {0};
    rc = nf_data_alloc(&probe, 2, dim, err, errlen);
    if (rc) return rc;
    if (shape) memcpy(probe.shape, shape, sizeof probe.shape);
    for (int i = 0; i < dim; i++) {
        probe.x[i] = (nf_real)vmin;
        probe.x[dim + i] = (nf_real)vmax;
    }
    probe.is_integer = is_integer;
    probe.vmin = vmin;
    probe.vmax = vmax;
    nf_job img;
    j = nf_job_image_defaults(j, &probe, &img);
    cJSON *pp = NULL;
    nf_flow *f = NULL;
    char ferr[300] = "";
    char *spec = nf_job_flow_spec(j, &probe, &pp, err, errlen);
    if (!spec) {
        rc = NF_EINVAL;
    } else if ((rc = nf_flow_create(spec, &f, ferr, sizeof ferr))) {
        flow_error(j, ferr, err, errlen);
    } else if (j->train.hflip && !nf_flow_shape(f, NULL)) {
        nf_set_err(err, errlen, "train.augment.hflip: mirrors images, and this job's rows have no "
                   "image shape: use a dataset with a shape (IDX, .npy images, ?shape= on "
                   "upload) or give the flow a \"shape\"");
        rc = NF_EINVAL;
    } else if (j->variational) { /* the dequantizer q is built too, as the run will */
        char *qs = nf_job_dequantizer_spec(j, dim, err, errlen);
        nf_flow *q = NULL;
        if (!qs) rc = NF_EINVAL;
        else if ((rc = nf_flow_create(qs, &q, ferr, sizeof ferr)))
            nf_set_err(err, errlen, "preprocess.dequantize.flow: %s", ferr);
        nf_flow_free(q);
        nf_free(qs);
    }
    if (out && !rc) *out = f;
    else nf_flow_free(f);
    nf_free(spec);
    cJSON_Delete(pp);
    nf_data_free(&probe);
    return rc;
}

int nf_job_check(const nf_job *j, int dim, const int shape[3], int is_integer, double vmin,
                 double vmax, char *err, size_t errlen) {
    return check_build(j, dim, shape, is_integer, vmin, vmax, NULL, err, errlen);
}

/* Does flow f (the job's) take the parameters of g (the published one)?
 * 0, or NF_EINVAL with err naming the first difference. */
static int same_architecture(const nf_flow *f, const nf_flow *g, char *err, size_t errlen) {
    if (nf_flow_dim(f) != nf_flow_dim(g)) {
        nf_set_err(err, errlen, "init: the job's rows have dim %d, the published version's %d",
                   nf_flow_dim(f), nf_flow_dim(g));
        return NF_EINVAL;
    }
    if (nf_flow_context_dim(f) != nf_flow_context_dim(g)) {
        nf_set_err(err, errlen, "init: context_dim differs (job %d, published version %d)",
                   nf_flow_context_dim(f), nf_flow_context_dim(g));
        return NF_EINVAL;
    }
    int nf = nf_flow_num_layers(f), ng = nf_flow_num_layers(g);
    for (int k = 0; k < nf && k < ng; k++)
        if (strcmp(nf_flow_layer_type(f, k), nf_flow_layer_type(g, k))) {
            nf_set_err(err, errlen,
                       "init: layer %d (preprocessing layers included) is %s in the job and %s in "
                       "the published version",
                       k, nf_flow_layer_type(f, k), nf_flow_layer_type(g, k));
            return NF_EINVAL;
        }
    if (nf != ng) {
        nf_set_err(err, errlen, "init: the job's flow has %d layers, the published version's %d "
                   "(preprocessing layers included)", nf, ng);
        return NF_EINVAL;
    }
    if (nf_flow_num_params(f) != nf_flow_num_params(g)) {
        nf_set_err(err, errlen, "init: the job's flow has %zu parameters, the published version's "
                   "%zu (hidden sizes, bins or base differ)",
                   nf_flow_num_params(f), nf_flow_num_params(g));
        return NF_EINVAL;
    }
    return 0;
}

/* Copy g's parameters and buffers into f (same architecture). */
static int copy_params(nf_flow *f, const nf_flow *g, char *err, size_t errlen) {
    void *pb = NULL;
    size_t len = 0;
    int rc = nf_flow_save_params(g, &pb, &len);
    if (!rc) rc = nf_flow_load_params(f, pb, len);
    nf_free(pb);
    if (rc) nf_set_err(err, errlen, "init: the published parameters do not fit the job's flow (%s)",
                       nf_strerror(rc));
    return rc == NF_EFORMAT ? NF_EINVAL : rc;
}

int nf_job_check_init(const nf_job *j, int dim, const int shape[3], int is_integer, double vmin,
                      double vmax, const void *file, size_t len, char *err, size_t errlen) {
    nf_model *m = NULL;
    char merr[300] = "";
    int rc = nf_model_load(file, len, &m, merr, sizeof merr);
    if (rc) {
        nf_set_err(err, errlen, "init: the published version does not load: %s", merr);
        return rc;
    }
    nf_flow *f = NULL;
    rc = check_build(j, dim, shape, is_integer, vmin, vmax, &f, err, errlen);
    if (!rc) rc = same_architecture(f, m->flow, err, errlen);
    if (!rc) rc = copy_params(f, m->flow, err, errlen);
    nf_flow_free(f);
    nf_model_free(m);
    return rc;
}

int nf_job_load_data(const nf_job *j, nf_data *out, char *err, size_t errlen) {
    if (j->builtin[0])
        return nf_data_builtin_ex(j->builtin, j->builtin_n, j->builtin_noise, j->builtin_seed,
                                  j->labels_src == NF_LABELS_BUILTIN, out, err, errlen);
    if (j->path) return nf_data_load_file(j->path, j->path_format, out, err, errlen);
    nf_set_err(err, errlen, "dataset ids are resolved by the daemon");
    return NF_EINVAL;
}

int nf_job_context_spec(const nf_job *j, int W, const nf_data *all, nf_context_spec *s,
                        char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    s->width = W;
    if (j->ctx_kind == NF_CTX_NONE) return 0;
    s->kind = j->ctx_kind;
    s->ncols = j->nctx;
    memcpy(s->cols, j->ctx_cols, sizeof s->cols);
    /* labels of a labels dataset or a built-in set: the last column */
    if (j->labels_src == NF_LABELS_DATASET || j->labels_src == NF_LABELS_BUILTIN) s->cols[0] = W - 1;
    if (s->kind == NF_CTX_LABELS) {
        s->classes = j->classes ? j->classes : 2;
        if (!j->classes && all && s->cols[0] >= 0 && s->cols[0] < W) {
            double mx = 0;
            for (int64_t r = 0; r < all->n; r++) {
                double v = all->x[(size_t)r * W + s->cols[0]];
                if (!(v >= 0 && v < NF_CTX_MAX_CLASSES && v == floor(v))) {
                    nf_set_err(err, errlen, "dataset.labels: row %lld has label %g; labels are "
                               "integers in [0, %d)", (long long)r, v, NF_CTX_MAX_CLASSES);
                    return NF_EINVAL;
                }
                if (v > mx) mx = v;
            }
            s->classes = (int)mx + 1;
        }
    }
    char e[300] = "";
    if (nf_context_check(s, e, sizeof e)) {
        nf_set_err(err, errlen, "dataset.%s: %s", s->kind == NF_CTX_COLUMNS ? "context_columns" : "labels", e);
        return NF_EINVAL;
    }
    return 0;
}

int nf_job_attach_labels(const nf_job *j, nf_data *all, const nf_data *labels, char *err,
                         size_t errlen) {
    (void)j;
    if (labels->d != 1 || labels->n != all->n) {
        nf_set_err(err, errlen, "dataset.labels.id: the labels dataset has %lld rows of %d values; "
                   "it needs %lld rows of one label", (long long)labels->n, labels->d, (long long)all->n);
        return NF_EINVAL;
    }
    nf_data out = {0};
    int W = all->d, rc = nf_data_alloc(&out, all->n, W + 1, err, errlen);
    if (rc) return rc;
    for (int64_t r = 0; r < all->n; r++) {
        memcpy(out.x + (size_t)r * (W + 1), all->x + (size_t)r * W, (size_t)W * sizeof *out.x);
        out.x[(size_t)r * (W + 1) + W] = labels->x[r];
    }
    out.is_integer = all->is_integer && labels->is_integer;
    out.vmin = all->vmin < labels->vmin ? all->vmin : labels->vmin;
    out.vmax = all->vmax > labels->vmax ? all->vmax : labels->vmax;
    memcpy(out.shape, all->shape, sizeof out.shape); /* the image rows keep their shape */
    nf_data_free(all);
    *all = out;
    return 0;
}

/* The job's rows all split into x and the context (context.h): x gets its
 * own summary (dequantization and scaling look at x only) and keeps all's
 * shape when that still holds one row. */
static int split_context(const nf_context_spec *cs, const nf_data *all, nf_data *x, nf_data *c,
                         char *err, size_t errlen) {
    int D = nf_context_data_dim(cs), C = nf_context_dim(cs);
    int rc = nf_data_alloc(x, all->n, D, err, errlen);
    if (!rc) rc = nf_data_alloc(c, all->n, C, err, errlen);
    char e[300] = "";
    if (!rc && (rc = nf_context_split(cs, all->x, all->n, x->x, c->x, NULL, e, sizeof e)))
        nf_set_err(err, errlen, "dataset.labels: %s", e);
    if (!rc) rc = nf_data_summarize(x, err, errlen);
    if (!rc && (int64_t)all->shape[0] * all->shape[1] * all->shape[2] == D)
        memcpy(x->shape, all->shape, sizeof x->shape);
    if (rc) {
        nf_data_free(x);
        nf_data_free(c);
    }
    return rc;
}

void nf_job_result_free(nf_job_result *r) {
    if (r) nf_free(r->optimizer);
    if (!r) return;
    nf_free(r->model);
    cJSON_Delete(r->metrics);
    memset(r, 0, sizeof *r);
}

static cJSON *affine_layer(int D, const double *shift, const double *scale) {
    cJSON *l = cJSON_CreateObject();
    cJSON_AddStringToObject(l, "type", "elementwise_affine");
    nf_json_attach(l, "shift", cJSON_CreateDoubleArray(shift, D));
    nf_json_attach(l, "scale", cJSON_CreateDoubleArray(scale, D));
    return l;
}

char *nf_job_flow_spec(const nf_job *j, const nf_data *train, cJSON **preprocess, char *err,
                       size_t errlen) {
    int D = train->d;
    cJSON *spec = cJSON_Duplicate(j->flow, 1), *layers = NULL, *pre = cJSON_CreateArray();
    cJSON *pp = cJSON_CreateObject();
    double *a = nf_malloc(2 * (size_t)D * sizeof *a);
    char *out = NULL;
    if (!spec || !pre || !pp || !a) goto fail_oom;
    cJSON_AddNumberToObject(spec, "dim", D);
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "context_dim"); /* 0 if given */
    if (j->context_dim > 0) cJSON_AddNumberToObject(spec, "context_dim", j->context_dim);
    /* the image shape: the flow's own, which must hold one row, else the
     * dataset's (the preprocessing layers in front are vector layers; the
     * image layers see it) */
    int fs[3];
    const int *ds = train->shape;
    if (nf_shape_parse(spec, 0, fs, err, errlen)) {
        prefix(err, errlen, "flow");
        goto fail;
    }
    if (fs[0] && (int64_t)fs[0] * fs[1] * fs[2] != D) {
        if (ds[0])
            nf_set_err(err, errlen, "flow.shape [%d, %d, %d] holds %lld values, but the dataset's rows "
                       "have %d (dataset shape [%d, %d, %d])", fs[0], fs[1], fs[2],
                       (long long)fs[0] * fs[1] * fs[2], D, ds[0], ds[1], ds[2]);
        else
            nf_set_err(err, errlen, "flow.shape [%d, %d, %d] holds %lld values, but the dataset's rows "
                       "have %d (the dataset has no shape)", fs[0], fs[1], fs[2],
                       (long long)fs[0] * fs[1] * fs[2], D);
        goto fail;
    }
    if (!fs[0] && ds[0] && (int64_t)ds[0] * ds[1] * ds[2] == D)
        nf_json_attach(spec, "shape", cJSON_CreateIntArray(ds, 3));
    if (cJSON_GetObjectItemCaseSensitive(spec, "preset")) {
        if (!cJSON_GetObjectItemCaseSensitive(spec, "seed"))
            cJSON_AddNumberToObject(spec, "seed", (double)j->train.seed);
        cJSON *exp = NULL;
        if (nf_preset_expand(spec, &exp, err, errlen)) goto fail;
        cJSON_Delete(spec);
        spec = exp;
    } else if (!cJSON_GetObjectItemCaseSensitive(spec, "seed")) {
        cJSON_AddNumberToObject(spec, "seed", (double)j->train.seed);
    }
    layers = cJSON_DetachItemFromObjectCaseSensitive(spec, "layers");
    if (!cJSON_IsArray(layers)) {
        nf_set_err(err, errlen, "flow.layers: must be a list");
        goto fail;
    }
    /* data checks and the preprocessing layers */
    double L = j->dequantize ? j->levels : 1;
    if (j->dequantize && (!train->is_integer || train->vmin < 0 || train->vmax > j->levels - 1)) {
        nf_set_err(err, errlen,
                   "preprocess.dequantize: needs integer data in [0, %d] (found values in [%g, %g]%s)",
                   j->levels - 1, train->vmin, train->vmax, train->is_integer ? "" : ", not all integers");
        goto fail;
    }
    if (j->logit) {
        if (!j->dequantize && (train->vmin < 0 || train->vmax > 1)) {
            nf_set_err(err, errlen, "preprocess.logit: needs data in [0,1] or dequantize with levels "
                       "(found values in [%g, %g])", train->vmin, train->vmax);
            goto fail;
        }
        for (int d = 0; d < D; d++) {
            a[d] = 0;
            a[D + d] = L;
        }
        nf_json_append(pre, affine_layer(D, a, a + D));
        cJSON *lg = cJSON_CreateObject();
        cJSON_AddStringToObject(lg, "type", "logit");
        cJSON_AddNumberToObject(lg, "alpha", j->logit_alpha);
        nf_json_append(pre, lg);
    } else if (j->center) {
        if (!j->dequantize && (train->vmin < 0 || train->vmax > 1)) {
            nf_set_err(err, errlen, "preprocess.center: needs data in [0,1] or dequantize with levels "
                       "(found values in [%g, %g])", train->vmin, train->vmax);
            goto fail;
        }
        for (int d = 0; d < D; d++) {
            a[d] = L / 2;
            a[D + d] = L;
        }
        nf_json_append(pre, affine_layer(D, a, a + D));
    } else if (j->standardize) {
        double *mean = a, *sd = a + D;
        nf_data_stats(train, mean, sd);
        for (int d = 0; d < D; d++) {
            if (j->dequantize) mean[d] += 0.5; /* the noise's mean; its variance 1/12 */
            if (j->dequantize) sd[d] = sqrt(sd[d] * sd[d] + 1.0 / 12);
            if (!(sd[d] > 1e-12)) sd[d] = 1;
        }
        nf_json_append(pre, affine_layer(D, mean, sd));
    }
    cJSON *l;
    while ((l = cJSON_DetachItemFromArray(layers, 0))) nf_json_append(pre, l);
    nf_json_attach(spec, "layers", pre);
    pre = NULL;
    cJSON_AddBoolToObject(pp, "standardize", j->standardize && !j->logit && !j->center);
    cJSON_AddBoolToObject(pp, "center", j->center);
    if (j->dequantize) {
        cJSON *dq = cJSON_AddObjectToObject(pp, "dequantize");
        cJSON_AddStringToObject(dq, "kind", j->variational ? "variational" : "uniform");
        cJSON_AddNumberToObject(dq, "levels", j->levels);
    } else {
        cJSON_AddNullToObject(pp, "dequantize");
    }
    if (j->logit) {
        cJSON *lg = cJSON_AddObjectToObject(pp, "logit");
        cJSON_AddNumberToObject(lg, "alpha", j->logit_alpha);
    } else {
        cJSON_AddNullToObject(pp, "logit");
    }
    out = cJSON_PrintUnformatted(spec);
    if (!out) goto fail_oom;
    cJSON_Delete(spec);
    cJSON_Delete(layers);
    nf_free(a);
    *preprocess = pp;
    return out;
fail_oom:
    nf_set_err(err, errlen, "out of memory");
fail:
    cJSON_Delete(spec);
    cJSON_Delete(layers);
    cJSON_Delete(pre);
    cJSON_Delete(pp);
    nf_free(a);
    return NULL;
}

char *nf_job_dequantizer_spec(const nf_job *j, int D, char *err, size_t errlen) {
    cJSON *spec = NULL;
    if (j->dequantizer) {
        spec = cJSON_Duplicate(j->dequantizer, 1);
    } else {
        /* couplings need D >= 2; for D = 1 a MADE sees only the context */
        spec = cJSON_CreateObject();
        cJSON *ls = cJSON_AddArrayToObject(spec, "layers");
        static const int hidden[2] = {64, 64};
        for (int k = 0; ls && k < (D >= 2 ? 4 : 2); k++) {
            cJSON *l = cJSON_CreateObject();
            cJSON_AddStringToObject(l, "type", D >= 2 ? "affine_coupling" : "maf");
            if (D >= 2) cJSON_AddStringToObject(l, "mask", k % 2 ? "odd" : "even");
            nf_json_attach(l, "hidden", cJSON_CreateIntArray(hidden, 2));
            nf_json_append(ls, l);
        }
        /* v = 1.6 h: sigmoid of N(0, 1.6^2) is close to U(0,1) (a logistic
         * has sd pi/sqrt(3) ~ 1.8), so a fresh q starts near uniform noise */
        double *a = nf_malloc(2 * (size_t)D * sizeof *a);
        if (a) {
            for (int d = 0; d < D; d++) {
                a[d] = 0;
                a[D + d] = 1 / 1.6;
            }
            nf_json_append(ls, affine_layer(D, a, a + D));
        }
        nf_free(a);
    }
    if (!spec) {
        nf_set_err(err, errlen, "out of memory");
        return NULL;
    }
    cJSON_AddNumberToObject(spec, "dim", D);
    cJSON_AddNumberToObject(spec, "context_dim", D);
    if (!cJSON_GetObjectItemCaseSensitive(spec, "seed"))
        cJSON_AddNumberToObject(spec, "seed", (double)(j->train.seed + 1));
    char *out = cJSON_PrintUnformatted(spec);
    cJSON_Delete(spec);
    if (!out) nf_set_err(err, errlen, "out of memory");
    return out;
}

static void iso_now(char *buf, size_t n) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}


int nf_job_split(const nf_job *j, const nf_data *all, nf_data *train, nf_data *val,
                 nf_data *test) {
    return nf_data_split(all, j->val_fraction, j->test_fraction, j->train.seed ^ 0x5711, train,
                         j->val_fraction > 0 ? val : NULL, j->test_fraction > 0 ? test : NULL);
}

/* "sample_quality" of the final metrics (job.h): samples of the trained
 * flow f against the held-out rows, the training rows as the reference.
 * Nothing is added when it is off, when no rows are held out, or when it
 * fails (out of memory): the trained model is not lost over a figure. */
static void sample_quality(const nf_job *j, const nf_flow *f, const nf_data *tr,
                           const nf_data *va, const nf_data *te, cJSON *m) {
    const nf_data *held = te->n ? te : va->n ? va : NULL;
    if (j->eval_samples <= 0 || !held) return;
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    o.samples = j->eval_samples;
    o.seed = j->train.seed;
    /* as many held-out rows as samples (at most 1000 a side): cheap, and
     * the two sets of MMD the same size */
    o.max_rows = j->eval_samples < 2 ? 2 : j->eval_samples < 1000 ? j->eval_samples : 1000;
    nf_eval_result r;
    nf_eval_result_init(&r);
    if (nf_eval_flow_samples(f, j->dequantize ? j->levels : 0, held->x, held->n, tr->x, tr->n, &o,
                             &r))
        return;
    cJSON *q = cJSON_AddObjectToObject(m, "sample_quality");
    cJSON_AddNumberToObject(q, "samples", r.samples);
    cJSON_AddStringToObject(q, "split", held == te ? "test" : "validation");
    nf_json_add_num(q, "nonfinite_share", r.nonfinite_share);
    nf_json_add_num(q, "mmd2", r.mmd2);
    nf_json_add_num(q, "mmd_bandwidth", r.mmd_bandwidth);
    nf_json_add_num(q, "nn_ratio", r.nn_ratio);
    cJSON_AddNumberToObject(q, "seconds", r.seconds);
}

/* A continuous flow's costs in the final metrics: "ode" {"solver"...
 * (nf_flow_ode_json), "train_nfe" and "train_nfe_forward" (per step, the
 * last report's), "score_nfe" (batched evaluations per solve) and
 * "score_nfe_per_row" scoring up to 256 held-out rows} */
static void ode_metrics(const nf_flow *f, const nf_train_metrics *last, const nf_data *held,
                        const nf_real *hctx, cJSON *m) {
    char *js = nf_flow_ode_json(f);
    cJSON *o = js ? cJSON_Parse(js) : NULL;
    nf_free(js);
    if (!o) return;
    nf_json_add_num(o, "train_nfe", last->nfe);
    nf_json_add_num(o, "train_nfe_forward", last->nfe_forward);
    int n = held->n < 256 ? (int)held->n : 256;
    nf_ws *w = NULL;
    nf_real *lp = n > 0 ? nf_malloc((size_t)n * sizeof *lp) : NULL;
    if (lp && !nf_ws_create_inference(f, n, &w) &&
        !nf_flow_log_prob(f, w, held->x, hctx, n, lp)) {
        nf_ode_stats st;
        nf_ws_ode_stats(w, &st);
        nf_json_add_num(o, "score_nfe", st.solves ? (double)st.nfe / st.solves : NAN);
        nf_json_add_num(o, "score_nfe_per_row", st.rows ? (double)st.row_nfe / st.rows : NAN);
    }
    nf_ws_free(w);
    nf_free(lp);
    nf_json_attach(m, "ode", o);
}

int nf_job_run(const nf_job *j, const nf_data *all, const nf_train_hooks *hooks,
               const void *resume, size_t resume_len, nf_job_result *res, char *err,
               size_t errlen) {
    memset(res, 0, sizeof *res);
    nf_job img, cj;
    nf_data tr = {0}, va = {0}, te = {0}, xall = {0}, call = {0}, ctr = {0}, cva = {0}, cte = {0};
    nf_flow *f = NULL, *q = NULL;
    nf_trainer *t = NULL;
    nf_model *init = NULL;
    cJSON *pp = NULL;
    char *spec = NULL, ferr[300] = "";
    /* a conditional job: x and the context split apart, the split of both
     * by the same permutation (the same seed and row count) */
    nf_context_spec cs;
    int rc = nf_job_context_spec(j, all->d, all, &cs, err, errlen);
    if (rc) goto out;
    if (cs.kind != NF_CTX_NONE) {
        if ((rc = split_context(&cs, all, &xall, &call, err, errlen))) goto out;
        all = &xall;
        cj = *j; /* shallow: owns nothing, not freed */
        cj.context_dim = nf_context_dim(&cs);
        j = &cj;
    }
    j = nf_job_image_defaults(j, all, &img);
    rc = nf_job_split(j, all, &tr, &va, &te);
    if (!rc && cs.kind != NF_CTX_NONE) rc = nf_job_split(j, &call, &ctr, &cva, &cte);
    if (rc) {
        nf_set_err(err, errlen, "dataset: too few rows to split (%lld rows)", (long long)all->n);
        goto out;
    }
    spec = nf_job_flow_spec(j, &tr, &pp, err, errlen);
    if (!spec) {
        rc = NF_EINVAL;
        goto out;
    }
    if (cs.kind != NF_CTX_NONE) nf_json_attach(pp, "context", nf_context_to_json(&cs));
    if ((rc = nf_flow_create(spec, &f, ferr, sizeof ferr))) {
        flow_error(j, ferr, err, errlen);
        goto out;
    }
    if (j->init_file) { /* warm start: the published flow (its parameters unless resuming) */
        char merr[300] = "";
        if ((rc = nf_model_load(j->init_file, j->init_file_len, &init, merr, sizeof merr))) {
            nf_set_err(err, errlen, "init: the published version does not load: %s", merr);
            goto out;
        }
        if ((rc = same_architecture(f, init->flow, err, errlen))) goto out;
        /* train the published flow as it is: its preprocessing constants
         * (standardisation from its own training split) and settings, which
         * its parameters were learnt with, not the ones of this job's split */
        char *pub = nf_flow_config_json(init->flow);
        nf_flow *g = NULL;
        if (!pub || nf_flow_create(pub, &g, ferr, sizeof ferr)) {
            nf_free(pub);
            nf_set_err(err, errlen, "init: cannot rebuild the published flow: %s", ferr);
            rc = NF_EINVAL;
            goto out;
        }
        nf_free(pub);
        nf_flow_free(f);
        f = g;
        if (!resume && (rc = copy_params(f, init->flow, err, errlen))) goto out;
    }
    if ((rc = nf_trainer_create(f, &j->train, tr.x, tr.n, va.n ? va.x : NULL, va.n, &t, err, errlen)))
        goto out;
    if (ctr.n && (rc = nf_trainer_set_context(t, ctr.x, cva.n ? cva.x : NULL, err, errlen))) goto out;
    if (j->variational) {
        char *qs = nf_job_dequantizer_spec(j, tr.d, err, errlen);
        if (!qs) {
            rc = NF_ENOMEM;
            goto out;
        }
        rc = nf_flow_create(qs, &q, ferr, sizeof ferr);
        nf_free(qs);
        if (rc) {
            nf_set_err(err, errlen, "preprocess.dequantize.flow: %s", ferr);
            goto out;
        }
        /* a warm start takes the published dequantizer too, when it fits */
        if (init && init->dequantizer && nf_flow_num_params(init->dequantizer) == nf_flow_num_params(q) &&
            !same_architecture(q, init->dequantizer, NULL, 0))
            copy_params(q, init->dequantizer, NULL, 0);
        if ((rc = nf_trainer_set_dequantizer(t, q, err, errlen))) goto out;
    }
    if (!resume && init && j->init_opt && (rc = nf_trainer_load_optimizer(t, j->init_opt, j->init_opt_len))) {
        nf_set_err(err, errlen, "init: the published optimizer state does not fit this job (%s): "
                   "same optimizer and architecture needed", nf_strerror(rc));
        goto out;
    }
    if (resume && (rc = nf_trainer_load_state(t, resume, resume_len))) {
        nf_set_err(err, errlen, "cannot resume from the saved training state: %s", nf_strerror(rc));
        goto out;
    }
    nf_train_metrics m0;
    nf_trainer_metrics(t, &m0); /* a resumed run starts past step 0 */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = nf_trainer_run(t, hooks);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double run_s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    nf_trainer_metrics(t, &res->last);
    if (rc) {
        nf_set_err(err, errlen, "%s", nf_trainer_error(t)[0] ? nf_trainer_error(t) : nf_strerror(rc));
        goto out;
    }
    /* final figures on the best parameters */
    cJSON *m = cJSON_CreateObject();
    int D = tr.d;
    int64_t ntr = tr.n < 20000 ? tr.n : 20000;
    double trn = q ? nf_eval_nll_vdeq_ctx(f, q, tr.x, ctr.x, ntr, j->levels, 1)
                   : nf_eval_nll_ctx(f, tr.x, ctr.x, ntr, j->dequantize, 1);
    nf_json_add_num(m, "train_nll", trn);
    nf_json_add_num(m, "val_nll", res->last.best_val_loss);
    if (te.n) {
        double ten = q ? nf_eval_nll_vdeq_ctx(f, q, te.x, cte.x, te.n, j->levels, 2)
                       : nf_eval_nll_ctx(f, te.x, cte.x, te.n, j->dequantize, 2);
        nf_json_add_num(m, "test_nll", ten);
        if (j->dequantize) nf_json_add_num(m, "test_bits_per_dim", nf_bits_per_dim(ten, D));
    }
    if (j->dequantize && va.n)
        nf_json_add_num(m, "val_bits_per_dim", nf_bits_per_dim(res->last.best_val_loss, D));
    cJSON_AddNumberToObject(m, "epochs_run", res->last.epoch);
    cJSON_AddNumberToObject(m, "steps", (double)res->last.step);
    cJSON_AddNumberToObject(m, "skipped_batches", (double)res->last.skipped_batches);
    /* this run's training loop (validations and checkpoints included; a
     * resumed job counts from where it resumed) */
    cJSON_AddNumberToObject(m, "train_seconds", run_s);
    /* of which held back by the caller's pace hook (a daemon answering requests) */
    cJSON_AddNumberToObject(m, "held_seconds", res->last.held_seconds);
    if (run_s > 0)
        cJSON_AddNumberToObject(m, "samples_per_second",
                                (double)(res->last.step - m0.step) * j->train.batch_size / run_s);
    cJSON_AddNumberToObject(m, "rows_train", (double)tr.n);
    cJSON_AddNumberToObject(m, "rows_val", (double)va.n);
    cJSON_AddNumberToObject(m, "rows_test", (double)te.n);
    cJSON_AddNumberToObject(m, "dim", D);
    cJSON_AddNumberToObject(m, "num_params", (double)nf_flow_num_params(f));
    cJSON_AddStringToObject(m, "likelihood", j->dequantize      ? "dequantized_lower_bound"
                                             : !nf_flow_log_prob_exact(f) ? "hutchinson_estimate"
                                                                       : "exact");
    if (nf_flow_num_ode(f)) ode_metrics(f, &res->last, te.n ? &te : &va, te.n ? cte.x : cva.x, m);
    if (cs.kind != NF_CTX_NONE) {
        cJSON_AddNumberToObject(m, "context_dim", nf_context_dim(&cs));
        if (cs.kind == NF_CTX_LABELS) cJSON_AddNumberToObject(m, "classes", cs.classes);
    }
    if (j->dequantize) {
        cJSON *dq = cJSON_AddObjectToObject(m, "dequantize");
        cJSON_AddStringToObject(dq, "kind", q ? "variational" : "uniform");
        cJSON_AddNumberToObject(dq, "levels", j->levels);
        if (q) cJSON_AddNumberToObject(dq, "num_params", (double)nf_flow_num_params(q));
    }
    if (cs.kind == NF_CTX_NONE) sample_quality(j, f, &tr, &va, &te, m); /* unconditional only */
    res->metrics = m;
    char now[32];
    iso_now(now, sizeof now);
    if ((rc = nf_model_save_ex(f, q, pp, m, now, &res->model, &res->model_len)))
        nf_set_err(err, errlen, "cannot serialise the model: %s", nf_strerror(rc));
    else if (j->publish_optimizer &&
             (rc = nf_trainer_save_optimizer(t, &res->optimizer, &res->optimizer_len)))
        nf_set_err(err, errlen, "cannot serialise the optimizer state: %s", nf_strerror(rc));
out:
    nf_model_free(init);
    nf_trainer_free(t);
    nf_flow_free(f);
    nf_flow_free(q);
    nf_free(spec);
    cJSON_Delete(pp);
    nf_data_free(&tr);
    nf_data_free(&va);
    nf_data_free(&te);
    nf_data_free(&xall);
    nf_data_free(&call);
    nf_data_free(&ctr);
    nf_data_free(&cva);
    nf_data_free(&cte);
    return rc;
}
