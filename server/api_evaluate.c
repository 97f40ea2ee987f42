/* api_evaluate.c: POST /v1/models/{name}/evaluate, a model version judged
 * on a stored dataset: the test rows' likelihood (as log_prob and `flowd
 * eval` report it) and what the model generates (core/evaluate.h: the
 * share of non-finite samples, MMD^2 against the test rows, the
 * nearest-training-row ratio).
 *
 * The reference rows of the ratio are the "reference" dataset when given;
 * otherwise the training split of the job that trained the version (the
 * job's request is stored: its dataset, stored or built in, split as the
 * job split it, nf_job_split), and none for an imported version (the ratio
 * is then null).  When the test dataset is the job's own dataset, its rows
 * are not held out: the test rows are then the job's test split, else its
 * validation split ("test_rows_from" says which).
 *
 * It runs on the request thread, under the read scope and the in-flight
 * admission of every scoring route; the body's limits bound its cost: the
 * dataset's rows (at most --max-rows), samples (at most 10000 and
 * --max-sample), max_rows (M, at most 5000) and max_reference_rows (at most
 * 100000). */
#include "server.h"

#include "../core/data.h"
#include "../core/evaluate.h"
#include "../core/job.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SAMPLES 10000
#define MAX_M 5000
#define MAX_REF_ROWS 100000
#define MAX_VALUES (16 * 1024 * 1024) /* samples x dim, as for /sample */

/* The rows of the dataset named by body[field], checked against the
 * model's width D; sends the error (422 for a missing or malformed id or a
 * wrong width, 404 for an unknown dataset) and returns -1 on failure. */
static int dataset_or_reply(fd_req *r, fd_db *db, const cJSON *body, const char *field, int D,
                            nf_data *out, const char **id) {
    const cJSON *v = nf_json_get(body, field);
    *id = NULL;
    if (!cJSON_IsString(v) || !v->valuestring[0] || strlen(v->valuestring) > 64) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", field);
        fd_send_error(r, 422, "invalid_input", d,
                      v ? "\"%s\" must be a dataset id (\"ds_...\")"
                        : "\"%s\" is required: the id of a stored dataset (\"ds_...\")",
                      field);
        return -1;
    }
    char msg[300] = "";
    int rc = fd_dataset_load(db, v->valuestring, out, msg, sizeof msg);
    if (rc == FD_ENOTFOUND) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", field);
        cJSON_AddStringToObject(d, "dataset", v->valuestring);
        fd_send_error(r, 404, "not_found", d, "no dataset %s", v->valuestring);
        return -1;
    }
    if (rc) {
        fd_send_db_error(r, rc, msg);
        return -1;
    }
    if (out->d != D) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", field);
        cJSON_AddStringToObject(d, "dataset", v->valuestring);
        cJSON_AddNumberToObject(d, "width", out->d);
        cJSON_AddNumberToObject(d, "expected_width", D);
        fd_send_error(r, 422, "invalid_input", d, "dataset %s has %d columns; the model takes %d",
                      v->valuestring, out->d, D);
        nf_data_free(out);
        return -1;
    }
    *id = v->valuestring;
    return 0;
}

/* The default reference: the training split of the job that trained the
 * version, and its held-out rows (test split, else validation split).
 * 0 with *job_id set, or -1 when the version has no job or its data cannot
 * be had any more (deleted): then there is no reference, not an error. */
typedef struct {
    int64_t job_id;
    char dataset[65]; /* the job's stored dataset, "" for a built-in set */
    nf_data train, val, test;
} job_rows;

static int job_rows_of(fd_db *db, const fd_model *m, int D, job_rows *jr) {
    char *req = NULL, err[300] = "";
    memset(jr, 0, sizeof *jr);
    if (fd_db_version_job(db, m->name, m->version, &jr->job_id, &req, err, sizeof err)) return -1;
    nf_job j;
    nf_data all = {0};
    int rc = nf_job_parse(req, strlen(req), 0, &j, err, sizeof err);
    free(req);
    if (rc) return -1;
    rc = j.dataset_id[0] ? fd_dataset_load(db, j.dataset_id, &all, err, sizeof err)
                         : nf_job_load_data(&j, &all, err, sizeof err);
    if (!rc && all.d == D) rc = nf_job_split(&j, &all, &jr->train, &jr->val, &jr->test);
    else rc = -1;
    snprintf(jr->dataset, sizeof jr->dataset, "%s", j.dataset_id);
    nf_data_free(&all);
    nf_job_free(&j);
    return rc ? -1 : 0;
}

static void job_rows_free(job_rows *jr) {
    nf_data_free(&jr->train);
    nf_data_free(&jr->val);
    nf_data_free(&jr->test);
}

enum MHD_Result fd_api_evaluate(fd_req *r, char **a) {
    cJSON *body = fd_req_json(r);
    if (!body) return MHD_YES;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    nf_data test = {0}, ref = {0};
    job_rows jr;
    memset(&jr, 0, sizeof jr);
    int have_job = 0;
    static const char *const keys[] = {"dataset", "reference", "version", "samples", "temperature",
                                       "seed", "max_rows", "max_reference_rows", NULL};
    int version, samples, M, max_ref, maxs = r->srv->cfg.max_sample < MAX_SAMPLES ? r->srv->cfg.max_sample : MAX_SAMPLES;
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    if (fd_body_keys_or_reply(r, body, keys) ||
        fd_body_version_or_reply(r, body, a[0], &version) ||
        fd_body_int_or_reply(r, body, "samples", o.samples < maxs ? o.samples : maxs, 0, maxs, &samples) ||
        fd_body_num_or_reply(r, body, "temperature", 1, 0, 100, 1, &o.temperature) ||
        fd_body_seed_or_reply(r, body, "seed", 0, &o.seed) ||
        fd_body_int_or_reply(r, body, "max_rows", o.max_rows, 2, MAX_M, &M) ||
        fd_body_int_or_reply(r, body, "max_reference_rows", (int)o.max_ref_rows, 1, MAX_REF_ROWS, &max_ref))
        goto out;
    o.samples = samples;
    o.max_rows = M;
    o.max_ref_rows = max_ref;
    fd_db *db = fd_req_db(r);
    if (!db) goto out;
    if (!nf_json_get(body, "dataset")) { /* before the model: the body is wrong whatever it names */
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "dataset");
        fd_send_error(r, 422, "invalid_input", d, "\"dataset\" is required: the id of a stored dataset (\"ds_...\")");
        goto out;
    }
    if (!(m = fd_model_or_reply(r, a[0], version))) goto out;
    fd_req_inference(r, m, FD_OP_EVALUATE);
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f);
    if (nf_flow_context_dim(f) > 0) {
        fd_send_error(r, 422, "invalid_input", NULL,
                      "model %s is conditional (context_dim %d): evaluate judges unconditional models", m->name,
                      nf_flow_context_dim(f));
        goto out;
    }
    if ((size_t)samples * D > MAX_VALUES) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "samples");
        fd_send_error(r, 422, "invalid_input", d, "samples x dim = %zu values exceeds the limit of %d per request",
                      (size_t)samples * D, MAX_VALUES);
        goto out;
    }
    const char *test_id = NULL, *ref_id = NULL;
    if (dataset_or_reply(r, db, body, "dataset", D, &test, &test_id)) goto out;
    if (test.n > r->srv->cfg.max_rows) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "dataset");
        cJSON_AddNumberToObject(d, "rows", (double)test.n);
        cJSON_AddNumberToObject(d, "max_rows", r->srv->cfg.max_rows);
        fd_send_error(r, 422, "invalid_input", d, "dataset %s has %lld rows; evaluate scores at most %d (--max-rows)",
                      test_id, (long long)test.n, r->srv->cfg.max_rows);
        goto out;
    }
    if (nf_json_get(body, "reference")) {
        if (dataset_or_reply(r, db, body, "reference", D, &ref, &ref_id)) goto out;
    } else {
        have_job = !job_rows_of(db, m, D, &jr);
    }
    /* which rows are the test rows, which the reference */
    const nf_real *tx = test.x, *rx = ref.x;
    int64_t tn = test.n, rn = ref.n;
    const char *from = "dataset";
    if (have_job) {
        rx = jr.train.x;
        rn = jr.train.n;
        const nf_data *held = jr.test.n ? &jr.test : jr.val.n ? &jr.val : NULL;
        if (!strcmp(jr.dataset, test_id) && held) {
            tx = held->x;
            tn = held->n;
            from = held == &jr.test ? "job_test_split" : "job_validation_split";
        }
    }
    nf_eval_result e;
    int rc = nf_model_evaluate(m->m, tx, tn, rx, rn, &o, &e);
    if (rc) {
        fd_send_error(r, 500, "internal", NULL, "evaluation failed: %s", nf_strerror(rc));
        goto out;
    }
    fd_metrics_rows(r->srv->metrics, tn, e.samples);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "model", m->name);
    cJSON_AddNumberToObject(out, "version", m->version);
    cJSON_AddStringToObject(out, "dataset", test_id);
    cJSON_AddNumberToObject(out, "test_rows", (double)tn);
    cJSON_AddStringToObject(out, "test_rows_from", from);
    cJSON_AddNumberToObject(out, "outside_support", (double)e.outside_support);
    nf_json_add_num(out, "mean_log_prob", e.mean_log_prob);
    nf_json_add_num(out, "bits_per_dim", e.bits_per_dim);
    cJSON_AddStringToObject(out, "likelihood", m->m->dequantize ? "dequantized_lower_bound" : "exact");
    cJSON_AddNumberToObject(out, "samples", e.samples);
    cJSON_AddNumberToObject(out, "temperature", o.temperature);
    fd_json_add_u64(out, "seed", o.seed);
    nf_json_add_num(out, "nonfinite_share", e.nonfinite_share);
    nf_json_add_num(out, "sample_min", e.sample_min);
    nf_json_add_num(out, "sample_max", e.sample_max);
    nf_json_add_num(out, "mmd2", e.mmd2);
    nf_json_add_num(out, "mmd_bandwidth", e.mmd_bandwidth);
    cJSON_AddNumberToObject(out, "mmd_samples", e.mmd_samples);
    cJSON_AddNumberToObject(out, "mmd_test_rows", e.mmd_test_rows);
    if (rx) {
        cJSON *rf = cJSON_AddObjectToObject(out, "reference");
        if (ref_id) cJSON_AddStringToObject(rf, "dataset", ref_id);
        else if (jr.dataset[0]) cJSON_AddStringToObject(rf, "dataset", jr.dataset);
        else cJSON_AddNullToObject(rf, "dataset");
        if (have_job) {
            char jid[24];
            snprintf(jid, sizeof jid, "%lld", (long long)jr.job_id);
            cJSON_AddStringToObject(rf, "job_id", jid);
        } else {
            cJSON_AddNullToObject(rf, "job_id");
        }
        cJSON_AddNumberToObject(rf, "rows", (double)rn);
        cJSON_AddNumberToObject(rf, "rows_used", (double)e.nn_ref_rows);
    } else {
        cJSON_AddNullToObject(out, "reference");
    }
    nf_json_add_num(out, "nn_ratio", e.nn_ratio);
    nf_json_add_num(out, "nn_sample_mean", e.nn_sample_mean);
    nf_json_add_num(out, "nn_test_mean", e.nn_test_mean);
    cJSON_AddNumberToObject(out, "seconds", e.seconds);
    ret = fd_send_json(r, 200, out);
out:
    cJSON_Delete(body);
    nf_data_free(&test);
    nf_data_free(&ref);
    job_rows_free(&jr);
    fd_model_release(m);
    return ret;
}
