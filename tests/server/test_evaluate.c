/* test_evaluate.c: POST /v1/models/{name}/evaluate and the jobs'
 * sample_quality, end to end: a small model trained through the API on an
 * uploaded dataset, a held-out dataset uploaded beside it, every answer
 * held against schema/openapi.yaml as the daemon serves it (oapi.c), and
 * each error status. */
#include "../test.h"

#include "daemon.h"
#include "oapi.h"

#include "../../core/data.h"
#include "../../core/evaluate.h"
#include "../../core/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const QUIET[] = {NULL};

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static int jnull(const cJSON *o, const char *k) {
    return cJSON_IsNull(o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL);
}

/* n rows of a correlated 2-D Gaussian, or of D independent columns */
static float *gauss(int n, int D, uint64_t seed) {
    float *x = malloc((size_t)n * D * sizeof *x);
    nf_rng g;
    nf_rng_seed(&g, seed);
    for (int i = 0; i < n; i++) {
        double a = nf_rng_normal(&g), b = nf_rng_normal(&g);
        for (int k = 0; k < D; k++)
            x[i * D + k] = (float)(k == 0 ? 1 + a : k == 1 ? -2 + 0.8 * a + 0.3 * b : nf_rng_normal(&g));
    }
    return x;
}

/* {"<field>":[[..],..]} (%.9g) malloc'd */
static char *rows_json(const char *field, const float *x, int n, int D) {
    size_t cap = (size_t)n * D * 20 + 32, k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s + k, cap - k, "{\"%s\":[", field);
    for (int i = 0; i < n; i++) {
        k += (size_t)snprintf(s + k, cap - k, "%s[", i ? "," : "");
        for (int j = 0; j < D; j++) k += (size_t)snprintf(s + k, cap - k, "%s%.9g", j ? "," : "", (double)x[i * D + j]);
        k += (size_t)snprintf(s + k, cap - k, "]");
    }
    snprintf(s + k, cap - k, "]}");
    return s;
}

/* POST /v1/datasets?name=name with JSON rows; the id into id (64+) */
static int upload(dmn *d, const char *name, const float *x, int n, int D, char *id) {
    char path[128];
    snprintf(path, sizeof path, "/v1/datasets?name=%s", name);
    char *body = rows_json("rows", x, n, D);
    hreq q = {.path = path, .ctype = "application/json", .body = body, .len = strlen(body)};
    hresp r;
    dmn_http(d, &q, &r);
    free(body);
    int ok = r.status == 201 && jnum(r.json, "rows") == n && jnum(r.json, "dim") == D;
    if (ok) snprintf(id, 65, "%s", jstr(r.json, "id"));
    else fprintf(stderr, "    upload %s: %ld %s\n", name, r.status, r.body);
    hresp_free(&r);
    return ok ? 0 : -1;
}

/* POST /v1/models/{model}/evaluate with body; the answer in r */
static void evaluate(dmn *d, const char *model, const char *body, hresp *r) {
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/evaluate", model);
    http_post_json(d, path, body, r);
}

/* the answer is 200 and satisfies EvaluateResponse */
static int check_ok(const cJSON *doc, const hresp *r) {
    char err[400] = "";
    if (r->status != 200) {
        fprintf(stderr, "    evaluate: %ld %s\n", r->status, r->body);
        return 0;
    }
    if (oapi_check(doc, "EvaluateResponse", r->json, err, sizeof err)) {
        fprintf(stderr, "    EvaluateResponse: %s\n    %s\n", err, r->body);
        return 0;
    }
    return 1;
}

/* an error answer: status, code, the Error schema, and details.field when given */
static void check_error(const cJSON *doc, const hresp *r, long status, const char *code, const char *field) {
    char err[400] = "";
    CHECK_MSG(r->status == status, "status %ld, expected %ld: %s", r->status, status, r->body);
    CHECK_MSG(!strcmp(hresp_error_code(r), code), "code %s, expected %s", hresp_error_code(r), code);
    CHECK_MSG(oapi_check(doc, "Error", r->json, err, sizeof err) == 0, "Error: %s", err);
    if (field) {
        const cJSON *det = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r->json, "error"), "details");
        CHECK_MSG(!strcmp(jstr(det, "field"), field), "details.field '%s', expected %s: %s", jstr(det, "field"), field,
                  r->body);
    }
}

static void evaluate_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    hresp r;
    http_get(d, "/openapi.yaml", &r);
    REQUIRE(r.status == 200);
    char err[400] = "";
    cJSON *doc = oapi_parse(r.body, r.len, err, sizeof err);
    hresp_free(&r);
    CHECK_MSG(doc != NULL, "openapi.yaml: %s", err);
    REQUIRE(doc);

    /* the training data, a held-out set of the same distribution, a wider set */
    enum { NTR = 1200, NTE = 300 };
    float *xtr = gauss(NTR, 2, 1), *xte = gauss(NTE, 2, 2), *xw = gauss(50, 3, 3);
    char ds_tr[65], ds_te[65], ds_w[65];
    REQUIRE(upload(d, "train", xtr, NTR, 2, ds_tr) == 0);
    REQUIRE(upload(d, "test", xte, NTE, 2, ds_te) == 0);
    REQUIRE(upload(d, "wide", xw, 50, 3, ds_w) == 0);

    /* a small model trained through the API, with a test split */
    char job[512], state[32];
    snprintf(job, sizeof job,
             "{\"model\":\"g\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"realnvp\",\"depth\":2,"
             "\"hidden\":[16]},\"train\":{\"epochs\":40,\"batch_size\":100,\"lr\":0.003,\"test_fraction\":0.1,"
             "\"eval_samples\":200}}",
             ds_tr);
    long long id = submit_job(d, job);
    REQUIRE(id > 0);
    REQUIRE(wait_job(d, id, 60, state, sizeof state) == 0);
    CHECK_MSG(!strcmp(state, "succeeded"), "job %s", state);
    REQUIRE(!strcmp(state, "succeeded"));
    char jid[24];
    snprintf(jid, sizeof jid, "%lld", id);

    /* the version's metrics carry sample_quality */
    http_get(d, "/v1/models/g", &r);
    REQUIRE(r.status == 200);
    const cJSON *v1 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "versions"), 0);
    const cJSON *met = cJSON_GetObjectItemCaseSensitive(v1, "metrics");
    CHECK_MSG(oapi_check(doc, "TrainingMetrics", met, err, sizeof err) == 0, "TrainingMetrics: %s", err);
    const cJSON *sq = cJSON_GetObjectItemCaseSensitive(met, "sample_quality");
    CHECK_MSG(cJSON_IsObject(sq), "no sample_quality: %s", r.body);
    CHECK_EQ_INT(jnum(sq, "samples"), 200);
    CHECK(!strcmp(jstr(sq, "split"), "test"));
    CHECK(jnum(sq, "nonfinite_share") == 0 && jnum(sq, "nn_ratio") > 0);
    hresp_free(&r);

    /* the held-out dataset; the reference defaults to the job's training split */
    char body[512];
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"samples\":400,\"seed\":3}", ds_te);
    evaluate(d, "g", body, &r);
    REQUIRE(check_ok(doc, &r));
    const cJSON *o = r.json, *ref = cJSON_GetObjectItemCaseSensitive(o, "reference");
    CHECK(!strcmp(jstr(o, "model"), "g") && jnum(o, "version") == 1 && !strcmp(jstr(o, "dataset"), ds_te));
    CHECK_EQ_INT(jnum(o, "test_rows"), NTE);
    CHECK(!strcmp(jstr(o, "test_rows_from"), "dataset"));
    CHECK_EQ_INT(jnum(o, "outside_support"), 0);
    CHECK(jnull(o, "bits_per_dim") && !strcmp(jstr(o, "likelihood"), "exact"));
    CHECK_EQ_INT(jnum(o, "samples"), 400);
    CHECK_EQ_INT(jnum(o, "seed"), 3);
    CHECK(jnum(o, "nonfinite_share") == 0);
    CHECK(jnum(o, "sample_min") < jnum(o, "sample_max"));
    CHECK_EQ_INT(jnum(o, "mmd_samples"), 400);
    CHECK_EQ_INT(jnum(o, "mmd_test_rows"), NTE);
    CHECK_MSG(fabs(jnum(o, "mmd2")) < 0.1 && jnum(o, "mmd_bandwidth") > 0, "%s", r.body);
    CHECK(!strcmp(jstr(ref, "dataset"), ds_tr) && !strcmp(jstr(ref, "job_id"), jid));
    CHECK_EQ_INT(jnum(ref, "rows"), NTR - 120 - 120); /* val 0.1, test 0.1 */
    CHECK_EQ_INT(jnum(ref, "rows_used"), NTR - 240);
    double ratio = jnum(o, "nn_ratio");
    CHECK_MSG(ratio > 0.6 && ratio < 2, "nn_ratio %g", ratio);
    CHECK_CLOSE(ratio, jnum(o, "nn_sample_mean") / jnum(o, "nn_test_mean"), 0, 1e-12);
    double mlp = jnum(o, "mean_log_prob"), mmd = jnum(o, "mmd2");
    hresp_free(&r);

    /* mean_log_prob is the mean of what log_prob answers for those rows */
    char *lb = rows_json("inputs", xte, NTE, 2);
    http_post_json(d, "/v1/models/g/log_prob", lb, &r);
    free(lb);
    REQUIRE(r.status == 200);
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(r.json, "log_prob"), *e;
    double s = 0;
    int n = 0;
    cJSON_ArrayForEach(e, lp) s += e->valuedouble, n++;
    CHECK_EQ_INT(n, NTE);
    CHECK_CLOSE(mlp, s / NTE, 1e-6, 1e-6);
    hresp_free(&r);

    /* the same seed, the same figures */
    evaluate(d, "g", body, &r);
    REQUIRE(check_ok(doc, &r));
    CHECK(jnum(r.json, "mmd2") == mmd && jnum(r.json, "nn_ratio") == ratio);
    hresp_free(&r);

    /* the job's own dataset: its test split is what is held out */
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"samples\":100,\"version\":1,\"max_rows\":50}", ds_tr);
    evaluate(d, "g", body, &r);
    REQUIRE(check_ok(doc, &r));
    CHECK(!strcmp(jstr(r.json, "test_rows_from"), "job_test_split"));
    CHECK_EQ_INT(jnum(r.json, "test_rows"), 120);
    CHECK_EQ_INT(jnum(r.json, "mmd_samples"), 50);
    CHECK_EQ_INT(jnum(r.json, "mmd_test_rows"), 50);
    CHECK(jnum(r.json, "nn_ratio") > 0);
    hresp_free(&r);

    /* an explicit reference, capped; samples 0 scores only */
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"reference\":\"%s\",\"max_reference_rows\":500}", ds_te, ds_tr);
    evaluate(d, "g", body, &r);
    REQUIRE(check_ok(doc, &r));
    ref = cJSON_GetObjectItemCaseSensitive(r.json, "reference");
    CHECK(!strcmp(jstr(ref, "dataset"), ds_tr) && jnull(ref, "job_id"));
    CHECK(jnum(ref, "rows") == NTR && jnum(ref, "rows_used") == 500);
    CHECK_EQ_INT(jnum(r.json, "samples"), 1000); /* the default */
    hresp_free(&r);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"samples\":0}", ds_te);
    evaluate(d, "g", body, &r);
    REQUIRE(check_ok(doc, &r));
    CHECK(jnum(r.json, "samples") == 0 && jnull(r.json, "mmd2") && jnull(r.json, "nonfinite_share") &&
          jnull(r.json, "nn_ratio"));
    CHECK_CLOSE(jnum(r.json, "mean_log_prob"), mlp, 0, 0);
    hresp_free(&r);

    /* a version with no job (imported): no reference, no ratio */
    http_get(d, "/v1/models/g/versions/1/checkpoint", &r);
    REQUIRE(r.status == 200);
    const char *file = dmn_path(d, "g.flow");
    FILE *f = fopen(file, "wb");
    REQUIRE(f && fwrite(r.body, 1, r.len, f) == r.len && fclose(f) == 0);
    hresp_free(&r);
    const char *imp[] = {"import", file, "--name", "imp", "--db", d->db, NULL};
    REQUIRE(run_flowd(d, imp, NULL, 30) == 0);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"samples\":100}", ds_te);
    evaluate(d, "imp", body, &r);
    REQUIRE(check_ok(doc, &r));
    CHECK(jnull(r.json, "reference") && jnull(r.json, "nn_ratio") && isfinite(jnum(r.json, "mmd2")));
    hresp_free(&r);

    /* errors */
    evaluate(d, "g", "{\"samples\":10}", &r); /* no dataset */
    check_error(doc, &r, 422, "invalid_input", "dataset");
    hresp_free(&r);
    evaluate(d, "g", "{\"dataset\":17}", &r);
    check_error(doc, &r, 422, "invalid_input", "dataset");
    hresp_free(&r);
    evaluate(d, "g", "{\"dataset\":\"ds_0123456789abcdef\"}", &r); /* unknown dataset */
    check_error(doc, &r, 404, "not_found", "dataset");
    hresp_free(&r);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\"}", ds_w); /* 3 columns for a 2-D model */
    evaluate(d, "g", body, &r);
    check_error(doc, &r, 422, "invalid_input", "dataset");
    const cJSON *det = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r.json, "error"), "details");
    CHECK(jnum(det, "width") == 3 && jnum(det, "expected_width") == 2 && !strcmp(jstr(det, "dataset"), ds_w));
    hresp_free(&r);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"reference\":\"%s\"}", ds_te, ds_w);
    evaluate(d, "g", body, &r);
    check_error(doc, &r, 422, "invalid_input", "reference");
    hresp_free(&r);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"reference\":\"ds_00000000000000ff\"}", ds_te);
    evaluate(d, "g", body, &r);
    check_error(doc, &r, 404, "not_found", "reference");
    hresp_free(&r);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\"}", ds_te);
    evaluate(d, "nosuch", body, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    hresp_free(&r);
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"version\":7}", ds_te);
    evaluate(d, "g", body, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    hresp_free(&r);
    static const char *const bad[][2] = {
        {"\"samples\":10001", "samples"}, {"\"samples\":-1", "samples"},  {"\"temperature\":0", "temperature"},
        {"\"max_rows\":1", "max_rows"},   {"\"seed\":-2", "seed"},        {"\"max_reference_rows\":0", "max_reference_rows"},
        {"\"n\":5", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(body, sizeof body, "{\"dataset\":\"%s\",%s}", ds_te, bad[i][0]);
        evaluate(d, "g", body, &r);
        check_error(doc, &r, 422, "invalid_input", bad[i][1]);
        hresp_free(&r);
    }
    hreq q = {.path = "/v1/models/g/evaluate", .ctype = "text/csv", .body = "x,y\n1,2\n", .len = 8};
    dmn_http(d, &q, &r);
    check_error(doc, &r, 415, "unsupported_media_type", NULL);
    hresp_free(&r);
    http_get(d, "/v1/models/g/evaluate", &r);
    check_error(doc, &r, 405, "method_not_allowed", NULL);
    hresp_free(&r);

    /* counted as a scoring route in /metrics */
    http_get(d, "/metrics", &r);
    CHECK_MSG(strstr(r.body, "route=\"/v1/models/{name}/evaluate\"") != NULL, "no evaluate route in /metrics");
    hresp_free(&r);
    cJSON_Delete(doc);
    free(xtr);
    free(xte);
    free(xw);
}

TEST_T(http_evaluate_samples_and_errors, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    evaluate_body(&d);
    dmn_cleanup(&d);
}

/* A read token may evaluate (a scoring route), and none may not. */
TEST_T(http_evaluate_read_scope, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *tf = dmn_path(&d, "tokens");
    FILE *f = fopen(tf, "w");
    REQUIRE(f);
    fprintf(f, "write w-token-0123456789\nread r-token-0123456789\n");
    fclose(f);
    const char *args[] = {"--token-file", tf, NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    d.token = "w-token-0123456789";
    float *x = gauss(400, 2, 5);
    char ds[65];
    REQUIRE(upload(&d, "s", x, 400, 2, ds) == 0);
    char job[300], state[32], body[128];
    snprintf(job, sizeof job,
             "{\"model\":\"s\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"realnvp\",\"depth\":2,"
             "\"hidden\":[8]},\"train\":{\"epochs\":1}}",
             ds);
    long long id = submit_job(&d, job);
    REQUIRE(id > 0 && wait_job(&d, id, 60, state, sizeof state) == 0 && !strcmp(state, "succeeded"));
    snprintf(body, sizeof body, "{\"dataset\":\"%s\",\"samples\":50}", ds);
    d.token = "r-token-0123456789";
    hresp r;
    evaluate(&d, "s", body, &r);
    CHECK_MSG(r.status == 200, "%ld %s", r.status, r.body);
    CHECK(!strcmp(jstr(r.json, "test_rows_from"), "job_validation_split"));
    CHECK_EQ_INT(jnum(r.json, "test_rows"), 40);
    hresp_free(&r);
    d.token = NULL;
    evaluate(&d, "s", body, &r);
    CHECK_EQ_INT(r.status, 401);
    hresp_free(&r);
    free(x);
    dmn_cleanup(&d);
}

/* ---- flowd eval --samples ----------------------------------------------------------- */
/* The last line of the daemon log that starts with '{' (run_flowd appends
 * the command's stdout there), parsed; NULL if none. */
static cJSON *last_json_line(dmn *d) {
    void *buf = NULL;
    size_t len = 0;
    if (nf_file_read(d->log, &buf, &len)) return NULL;
    char *s = realloc(buf, len + 1), *last = NULL;
    if (!s) {
        free(buf);
        return NULL;
    }
    s[len] = 0;
    for (char *p = s; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (*p == '{') last = p;
    cJSON *o = last ? cJSON_Parse(last) : NULL;
    free(s);
    return o;
}

/* rows of a built-in set into a CSV file */
static int write_builtin(const char *path, const char *set, int n, uint64_t seed) {
    nf_data x = {0};
    char err[200];
    if (nf_data_builtin(set, n, -1, seed, &x, err, sizeof err)) return -1;
    size_t len = 0;
    char *csv = nf_data_csv(x.x, x.n, x.d, NULL, &len);
    int rc = csv ? nf_file_write(path, csv, len) : -1;
    free(csv);
    nf_data_free(&x);
    return rc;
}

/* flowd eval --samples: the figures of core/evaluate.c on the files, in the
 * names of the HTTP answer; --reference adds the ratio; text output; the
 * option errors */
TEST_T(cli_eval_samples, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *cfg = dmn_path(&d, "cfg.json"), *model = dmn_path(&d, "m.flow");
    const char *test = dmn_path(&d, "test.csv"), *train = dmn_path(&d, "train.csv");
    const char *job = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"n\":3000,\"seed\":1},"
                      "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                      "\"train\":{\"epochs\":3,\"batch_size\":128}}";
    REQUIRE(nf_file_write(cfg, job, strlen(job)) == 0);
    static const char *const env[] = {"OPENBLAS_NUM_THREADS=1", NULL};
    const char *targs[] = {"train", "--quiet", "--config", cfg, "--out", model, NULL};
    REQUIRE(run_flowd(&d, targs, env, 60) == 0);
    REQUIRE(write_builtin(test, "moons", 400, 7) == 0 && write_builtin(train, "moons", 2000, 8) == 0);

    const char *eargs[] = {"eval", "--model", model, "--data", test, "--samples", "300", "--seed", "4",
                           "--reference", train, "--json", NULL};
    REQUIRE(run_flowd(&d, eargs, env, 60) == 0);
    cJSON *o = last_json_line(&d);
    REQUIRE(o);
    /* the same figures in-process */
    void *buf = NULL;
    size_t len = 0;
    nf_model *m = NULL;
    nf_data te = {0}, tr = {0};
    char err[300];
    REQUIRE(nf_file_read(model, &buf, &len) == 0 && nf_model_load(buf, len, &m, err, sizeof err) == 0);
    free(buf);
    REQUIRE(nf_data_load_file(test, NF_DATA_AUTO, &te, err, sizeof err) == 0);
    REQUIRE(nf_data_load_file(train, NF_DATA_AUTO, &tr, err, sizeof err) == 0);
    nf_eval_opts eo;
    nf_eval_opts_default(&eo);
    eo.samples = 300;
    eo.seed = 4;
    nf_eval_result e;
    nf_eval_result_init(&e);
    REQUIRE(nf_eval_flow_samples(m->flow, 0, te.x, te.n, tr.x, tr.n, &eo, &e) == 0);
    CHECK_EQ_INT(jnum(o, "rows"), 400);
    CHECK_EQ_INT(jnum(o, "samples"), 300);
    CHECK_EQ_INT(jnum(o, "seed"), 4);
    CHECK(jnum(o, "nonfinite_share") == 0);
    CHECK_CLOSE(jnum(o, "mmd2"), e.mmd2, 1e-12, 1e-9);
    CHECK_CLOSE(jnum(o, "mmd_bandwidth"), e.mmd_bandwidth, 0, 1e-9);
    CHECK_CLOSE(jnum(o, "nn_ratio"), e.nn_ratio, 0, 1e-9);
    CHECK_CLOSE(jnum(o, "sample_min"), e.sample_min, 0, 1e-7);
    CHECK_EQ_INT(jnum(o, "reference_rows_used"), 2000);
    CHECK(!strcmp(jstr(o, "reference"), train) && isfinite(jnum(o, "nll_mean")));
    cJSON_Delete(o);

    /* without --reference: no ratio; without --samples: the old answer */
    const char *nargs[] = {"eval", "--model", model, "--data", test, "--samples", "50", "--json", NULL};
    REQUIRE(run_flowd(&d, nargs, env, 60) == 0);
    o = last_json_line(&d);
    CHECK(o && jnull(o, "nn_ratio") && jnull(o, "reference") && isfinite(jnum(o, "mmd2")));
    cJSON_Delete(o);
    const char *pargs[] = {"eval", "--model", model, "--data", test, "--json", NULL};
    REQUIRE(run_flowd(&d, pargs, env, 60) == 0);
    o = last_json_line(&d);
    CHECK(o && !cJSON_GetObjectItemCaseSensitive(o, "samples") && !cJSON_GetObjectItemCaseSensitive(o, "mmd2"));
    cJSON_Delete(o);
    /* the text output names the figures */
    const char *xargs[] = {"eval", "--model", model, "--data", test, "-n", "100", "-R", train, NULL};
    REQUIRE(run_flowd(&d, xargs, env, 60) == 0);
    REQUIRE(nf_file_read(d.log, &buf, &len) == 0);
    char *logtxt = realloc(buf, len + 1);
    logtxt[len] = 0;
    CHECK(strstr(logtxt, "MMD^2 ") && strstr(logtxt, "NN ratio ") && strstr(logtxt, "non-finite"));
    free(logtxt);
    /* option errors: --reference without --samples, a reference of another width, a bad count */
    const char *wide = dmn_path(&d, "wide.csv");
    REQUIRE(nf_file_write(wide, "a,b,c\n1,2,3\n4,5,6\n", 18) == 0);
    const char *b1[] = {"eval", "--model", model, "--data", test, "--reference", train, NULL};
    CHECK_EQ_INT(run_flowd(&d, b1, env, 30), 1);
    const char *b2[] = {"eval", "--model", model, "--data", test, "--samples", "10", "--reference", wide, NULL};
    CHECK_EQ_INT(run_flowd(&d, b2, env, 30), 1);
    const char *b3[] = {"eval", "--model", model, "--data", test, "--samples", "-3", NULL};
    CHECK_EQ_INT(run_flowd(&d, b3, env, 30), 2);
    REQUIRE(nf_file_read(d.log, &buf, &len) == 0);
    logtxt = realloc(buf, len + 1);
    logtxt[len] = 0;
    CHECK(strstr(logtxt, "give --samples N too") && strstr(logtxt, "wide.csv has 3 columns"));
    free(logtxt);
    nf_model_free(m);
    nf_data_free(&te);
    nf_data_free(&tr);
    dmn_cleanup(&d);
}
