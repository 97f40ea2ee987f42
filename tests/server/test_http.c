/* test_http.c: end-to-end tests of the real flowd binary over HTTP: each
 * test starts its own daemon on 127.0.0.1 (port 0) over a fresh database in
 * a temporary directory, drives it only through HTTP (libcurl) and the CLI,
 * and stops it and removes its files however the test ends (daemon.c). */
#include "../test.h"

#include "daemon.h"

#include "../../core/data.h"
#include "../../core/model.h"

#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_2PI 1.8378770664093453

/* ---- helpers ------------------------------------------------------------------ */
/* n moons rows (float, (n,2)), caller frees */
static float *moons(int n, uint64_t seed) {
    nf_data d = {0};
    char err[200] = "";
    if (nf_data_builtin("moons", n, -1, seed, &d, err, sizeof err)) {
        fprintf(stderr, "    nf_data_builtin: %s\n", err);
        return NULL;
    }
    float *x = malloc((size_t)n * 2 * sizeof *x);
    for (int i = 0; x && i < n * 2; i++) x[i] = (float)d.x[i];
    nf_data_free(&d);
    return x;
}

/* {"<field>":[[..],..]<extra>} with %.9g (float round trip), malloc'd */
static char *rows_json(const char *field, const float *x, int n, int D, const char *extra) {
    size_t cap = (size_t)n * D * 20 + 64 + (extra ? strlen(extra) : 0), k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s + k, cap - k, "{\"%s\":[", field);
    for (int i = 0; i < n; i++) {
        k += (size_t)snprintf(s + k, cap - k, "%s[", i ? "," : "");
        for (int j = 0; j < D; j++) k += (size_t)snprintf(s + k, cap - k, "%s%.9g", j ? "," : "", (double)x[i * D + j]);
        k += (size_t)snprintf(s + k, cap - k, "]");
    }
    snprintf(s + k, cap - k, "]%s}", extra ? extra : "");
    return s;
}

static char *rows_csv(const float *x, int n, int D, size_t *len) {
    size_t cap = (size_t)n * D * 20 + 64, k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s + k, cap - k, "x,y\n");
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++)
            k += (size_t)snprintf(s + k, cap - k, "%.9g%s", (double)x[i * D + j], j == D - 1 ? "\n" : ",");
    *len = k;
    return s;
}

/* .npy v1.0, <f4, C order, shape (n,D), header by hand */
static char *rows_npy(const float *x, int n, int D, size_t *len) {
    char hdr[128];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", n, D);
    int H = 10 + hl + 1;
    H += (64 - H % 64) % 64;
    char *p = malloc((size_t)H + (size_t)n * D * 4);
    memcpy(p, "\x93NUMPY\x01\x00", 8);
    p[8] = (char)((H - 10) & 255);
    p[9] = (char)((H - 10) >> 8);
    memset(p + 10, ' ', (size_t)(H - 10));
    memcpy(p + 10, hdr, (size_t)hl);
    p[H - 1] = '\n';
    memcpy(p + H, x, (size_t)n * D * 4); /* little-endian host */
    *len = (size_t)H + (size_t)n * D * 4;
    return p;
}

/* numbers of a JSON array field into out (max n); returns the count, -1 if
 * not an array of numbers */
static int json_floats(const cJSON *o, const char *field, double *out, int n) {
    const cJSON *a = o ? cJSON_GetObjectItemCaseSensitive(o, field) : NULL, *e;
    if (!cJSON_IsArray(a)) return -1;
    int k = 0;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsNumber(e)) return -1;
        if (k < n) out[k] = e->valuedouble;
        k++;
    }
    return k;
}

/* rows of a JSON array-of-arrays field into out (n,D); returns rows or -1 */
static int json_rows(const cJSON *o, const char *field, int D, double *out, int n) {
    const cJSON *a = o ? cJSON_GetObjectItemCaseSensitive(o, field) : NULL, *row, *e;
    if (!cJSON_IsArray(a)) return -1;
    int i = 0;
    cJSON_ArrayForEach(row, a) {
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != D) return -1;
        int j = 0;
        cJSON_ArrayForEach(e, row) {
            if (!cJSON_IsNumber(e)) return -1;
            if (i < n) out[i * D + j] = e->valuedouble;
            j++;
        }
        i++;
    }
    return i;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *const QUIET[] = {NULL};

/* a succeeded training job; returns 0 */
static int train(dmn *d, const char *model, const char *dataset, const char *flow, const char *train_opts) {
    char req[1024], state[32];
    snprintf(req, sizeof req, "{\"model\":\"%s\",\"dataset\":%s,\"flow\":%s,\"train\":%s}", model, dataset, flow,
             train_opts);
    long long id = submit_job(d, req);
    if (!id) return -1;
    if (wait_job(d, id, 60, state, sizeof state)) return -1;
    if (strcmp(state, "succeeded")) return -1;
    return 0;
}

#define SMALL_FLOW "{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]}"
#define MOONS_DS "{\"builtin\":\"moons\",\"n\":2000,\"seed\":1}"

/* POST log_prob of rows (JSON); out (n); returns 0 on a 200 with n values */
static int log_prob_json(dmn *d, const char *model, const float *x, int n, double *out) {
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/log_prob", model);
    char *body = rows_json("inputs", x, n, 2, NULL);
    hresp r;
    http_post_json(d, path, body, &r);
    free(body);
    int ok = r.status == 200 && json_floats(r.json, "log_prob", out, n) == n;
    if (!ok) fprintf(stderr, "    log_prob: %ld %s\n", r.status, r.body);
    hresp_free(&r);
    return ok ? 0 : -1;
}

/* Checks an error answer: status, error.code, and that the daemon is still
 * up afterwards. */
#define CHECK_ERROR(d, r, st, code)                                                                \
    do {                                                                                           \
        CHECK_MSG((r).status == (st) && !strcmp(hresp_error_code(&(r)), (code)),                  \
                  "expected %d %s, got %ld %s", (st), (code), (r).status, (r).body);              \
        CHECK_MSG(dmn_healthy(d), "the daemon stopped answering /healthz after a %d", (st));       \
    } while (0)

/* ---- 1. train on moons, score, sample, encode/decode ------------------------------ */
static void train_moons_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    REQUIRE(dmn_healthy(d));
    REQUIRE(train(d, "moons", "{\"builtin\":\"moons\",\"n\":4000,\"seed\":1}",
                  "{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]}",
                  "{\"epochs\":8,\"batch_size\":256}") == 0);
    hresp r;
    http_get(d, "/v1/models", &r);
    CHECK_EQ_INT(r.status, 200);
    const cJSON *ms = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "models") : NULL;
    const cJSON *m0 = cJSON_GetArrayItem(ms, 0);
    CHECK_MSG(cJSON_GetArraySize(ms) == 1 && !strcmp(jstr(m0, "name"), "moons") && jnum(m0, "latest_version") == 1 &&
                  jnum(m0, "dim") == 2,
              "models list: %s", r.body);
    hresp_free(&r);

    /* held-out points: another seed */
    enum { NH = 64 };
    float *x = moons(NH, 987654);
    REQUIRE(x);
    double lp[NH], ref = 0, mean = 0;
    CHECK(log_prob_json(d, "moons", x, NH, lp) == 0);
    for (int i = 0; i < NH; i++) {
        CHECK(isfinite(lp[i]));
        mean += lp[i] / NH;
        ref += (-0.5 * ((double)x[2 * i] * x[2 * i] + (double)x[2 * i + 1] * x[2 * i + 1]) - LOG_2PI) / NH;
    }
    CHECK_MSG(mean > ref + 0.3, "mean log_prob %.4f is not above the standard normal's %.4f", mean, ref);

    /* samples */
    enum { NS = 1000 };
    static double s[NS * 2], s2[NS * 2];
    http_post_json(d, "/v1/models/moons/sample", "{\"n\":1000,\"seed\":7,\"return_log_prob\":true}", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(json_rows(r.json, "samples", 2, s, NS), NS);
    double slp[NS];
    CHECK_EQ_INT(json_floats(r.json, "log_prob", slp, NS), NS);
    CHECK(!strcmp(jstr(r.json, "model"), "moons") && jnum(r.json, "version") == 1);
    hresp_free(&r);
    float *big = moons(4000, 1);
    REQUIRE(big);
    for (int j = 0; j < 2; j++) {
        double lo = 1e9, hi = -1e9, dm = 0, dv = 0, sm = 0, sv = 0;
        for (int i = 0; i < 4000; i++) {
            double v = big[2 * i + j];
            lo = fmin(lo, v);
            hi = fmax(hi, v);
            dm += v / 4000;
        }
        for (int i = 0; i < 4000; i++) dv += (big[2 * i + j] - dm) * (big[2 * i + j] - dm) / 4000;
        int finite = 1;
        for (int i = 0; i < NS; i++) {
            finite &= isfinite(s[2 * i + j]);
            sm += s[2 * i + j] / NS;
        }
        for (int i = 0; i < NS; i++) sv += (s[2 * i + j] - sm) * (s[2 * i + j] - sm) / NS;
        CHECK(finite);
        CHECK_MSG(sm > lo && sm < hi, "column %d: sample mean %.3f outside the data range [%.3f, %.3f]", j, sm, lo, hi);
        CHECK_MSG(fabs(sm - dm) < 0.5 * sqrt(dv) + 0.1, "column %d: sample mean %.3f, data mean %.3f", j, sm, dm);
        CHECK_MSG(sqrt(sv) > 0.3 * sqrt(dv) && sqrt(sv) < 3 * sqrt(dv), "column %d: sample std %.3f, data std %.3f", j,
                  sqrt(sv), sqrt(dv));
    }
    free(big);
    /* the same seed draws the same samples */
    http_post_json(d, "/v1/models/moons/sample", "{\"n\":1000,\"seed\":7}", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(json_rows(r.json, "samples", 2, s2, NS), NS);
    CHECK(!memcmp(s, s2, sizeof s));
    hresp_free(&r);
    /* the log_prob returned with samples agrees with log_prob of them */
    {
        float xs[32];
        double lps[16];
        for (int i = 0; i < 32; i++) xs[i] = (float)s[i];
        CHECK(log_prob_json(d, "moons", xs, 16, lps) == 0);
        for (int i = 0; i < 16; i++) CHECK_CLOSE(lps[i], slp[i], 1e-3, 1e-4);
    }

    /* encode then decode returns the input; log p(x) = log N(z) + log_det */
    char *body = rows_json("inputs", x, NH, 2, NULL);
    http_post_json(d, "/v1/models/moons/encode", body, &r);
    free(body);
    CHECK_EQ_INT(r.status, 200);
    double z[NH * 2], ld[NH], xr[NH * 2];
    CHECK_EQ_INT(json_rows(r.json, "latents", 2, z, NH), NH);
    CHECK_EQ_INT(json_floats(r.json, "log_det", ld, NH), NH);
    hresp_free(&r);
    for (int i = 0; i < NH; i++)
        CHECK_CLOSE(-0.5 * (z[2 * i] * z[2 * i] + z[2 * i + 1] * z[2 * i + 1]) - LOG_2PI + ld[i], lp[i], 1e-3, 1e-4);
    float zf[NH * 2];
    for (int i = 0; i < NH * 2; i++) zf[i] = (float)z[i];
    body = rows_json("latents", zf, NH, 2, NULL);
    http_post_json(d, "/v1/models/moons/decode", body, &r);
    free(body);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(json_rows(r.json, "outputs", 2, xr, NH), NH);
    hresp_free(&r);
    for (int i = 0; i < NH * 2; i++) CHECK_CLOSE(xr[i], x[i], 1e-4, 1e-4);
    free(x);
}

TEST_T(http_train_moons_log_prob_sample_encode, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    train_moons_body(&d);
    dmn_cleanup(&d);
}

/* ---- 2. CSV and .npy datasets and bodies ---------------------------------------------- */
/* log_prob of x via JSON, CSV and .npy bodies: all three agree */
static void three_formats(dmn *d, const char *model, const float *x, int n) {
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/log_prob", model);
    double *lj = calloc((size_t)n, sizeof *lj), *lc = calloc((size_t)n, sizeof *lc), *ln = calloc((size_t)n, sizeof *ln);
    CHECK(log_prob_json(d, model, x, n, lj) == 0);
    /* CSV in, CSV out */
    size_t len;
    char *csv = rows_csv(x, n, 2, &len);
    hreq q = {.path = path, .ctype = "text/csv", .accept = "text/csv", .body = csv, .len = len};
    hresp r;
    dmn_http(d, &q, &r);
    free(csv);
    char ct[128];
    CHECK_MSG(r.status == 200, "csv log_prob: %ld %s", r.status, r.body);
    CHECK(hresp_header(&r, "Content-Type", ct, sizeof ct) && !strncmp(ct, "text/csv", 8));
    {
        char *p = r.body, *eol = strchr(p, '\n');
        CHECK(eol && !strncmp(p, "log_prob", 8));
        int k = 0;
        while (eol && *(p = eol + 1)) {
            if (k < n) lc[k] = strtod(p, NULL);
            k++;
            eol = strchr(p, '\n');
        }
        CHECK_EQ_INT(k, n);
    }
    hresp_free(&r);
    /* .npy in, .npy out */
    char *npy = rows_npy(x, n, 2, &len);
    hreq qn = {.path = path, .ctype = "application/x-npy", .accept = "application/x-npy", .body = npy, .len = len};
    dmn_http(d, &qn, &r);
    free(npy);
    CHECK_MSG(r.status == 200, "npy log_prob: %ld %s", r.status, r.body);
    CHECK(hresp_header(&r, "Content-Type", ct, sizeof ct) && !strcmp(ct, "application/x-npy"));
    if (r.len > 10 && !memcmp(r.body, "\x93NUMPY", 6)) {
        size_t H = 10 + ((unsigned char)r.body[8] | (size_t)(unsigned char)r.body[9] << 8);
        CHECK(strstr(r.body + 10, "'<f4'") != NULL);
        CHECK_EQ_INT((r.len - H) / 4, n);
        for (int i = 0; i < n && H + 4 * (size_t)i + 4 <= r.len; i++) {
            float f;
            memcpy(&f, r.body + H + 4 * i, 4);
            ln[i] = f;
        }
    } else {
        CHECK_MSG(0, "not an .npy answer");
    }
    hresp_free(&r);
    for (int i = 0; i < n; i++) {
        CHECK_CLOSE(lc[i], lj[i], 1e-6, 1e-6);
        CHECK_CLOSE(ln[i], lj[i], 1e-6, 1e-6);
    }
    free(lj);
    free(lc);
    free(ln);
}

/* POST /v1/datasets?name=name; the id into id */
static int upload(dmn *d, const char *name, const char *ctype, const void *buf, size_t len, char *id, size_t idn) {
    char path[128];
    snprintf(path, sizeof path, "/v1/datasets?name=%s", name);
    hreq q = {.path = path, .ctype = ctype, .body = buf, .len = len};
    hresp r;
    dmn_http(d, &q, &r);
    int ok = r.status == 201 && jnum(r.json, "rows") == 2000 && jnum(r.json, "dim") == 2 && *jstr(r.json, "id") &&
             strlen(jstr(r.json, "sha256")) == 64;
    if (ok) snprintf(id, idn, "%s", jstr(r.json, "id"));
    else fprintf(stderr, "    upload %s: %ld %s\n", name, r.status, r.body);
    hresp_free(&r);
    return ok ? 0 : -1;
}

static void datasets_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    float *x = moons(2000, 3);
    REQUIRE(x);
    size_t lc, ln;
    char *csv = rows_csv(x, 2000, 2, &lc), *npy = rows_npy(x, 2000, 2, &ln);
    char id_csv[64] = "", id_npy[64] = "";
    CHECK(upload(d, "moons_csv", "text/csv", csv, lc, id_csv, sizeof id_csv) == 0);
    CHECK(upload(d, "moons_npy", "application/x-npy", npy, ln, id_npy, sizeof id_npy) == 0);
    free(csv);
    free(npy);
    free(x);
    REQUIRE(*id_csv && *id_npy);
    hresp r;
    char path[128], ds[128];
    snprintf(path, sizeof path, "/v1/datasets/%s", id_npy);
    http_get(d, path, &r);
    CHECK_MSG(r.status == 200 && !strcmp(jstr(r.json, "name"), "moons_npy"), "%ld %s", r.status, r.body);
    hresp_free(&r);
    http_get(d, "/v1/datasets", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    snprintf(ds, sizeof ds, "{\"id\":\"%s\"}", id_csv);
    REQUIRE(train(d, "from_csv", ds, SMALL_FLOW, "{\"epochs\":4,\"batch_size\":128}") == 0);
    snprintf(ds, sizeof ds, "{\"id\":\"%s\"}", id_npy);
    REQUIRE(train(d, "from_npy", ds, SMALL_FLOW, "{\"epochs\":4,\"batch_size\":128}") == 0);
    float *h = moons(40, 4242);
    REQUIRE(h);
    three_formats(d, "from_csv", h, 40);
    three_formats(d, "from_npy", h, 40);
    /* the same rows through either format train the same model */
    double a[40], b[40];
    CHECK(log_prob_json(d, "from_csv", h, 40, a) == 0);
    CHECK(log_prob_json(d, "from_npy", h, 40, b) == 0);
    for (int i = 0; i < 40; i++) CHECK_CLOSE(a[i], b[i], 1e-4, 1e-4);
    free(h);
    /* samples as CSV go straight back into log_prob as CSV */
    hreq qs = {.path = "/v1/models/from_csv/sample", .ctype = "application/json", .accept = "text/csv",
               .body = "{\"n\":25,\"seed\":3}", .len = 17};
    hresp r2;
    dmn_http(d, &qs, &r2);
    CHECK_MSG(r2.status == 200, "sample csv: %ld %s", r2.status, r2.body);
    hreq ql = {.path = "/v1/models/from_csv/log_prob", .ctype = "text/csv", .body = r2.body, .len = r2.len};
    dmn_http(d, &ql, &r);
    CHECK_MSG(r.status == 200 && json_floats(r.json, "log_prob", a, 40) == 25, "csv samples to log_prob: %ld %s",
              r.status, r.body);
    hresp_free(&r);
    hresp_free(&r2);
    /* and as .npy */
    qs.accept = "application/x-npy";
    dmn_http(d, &qs, &r2);
    CHECK_EQ_INT(r2.status, 200);
    hreq qn = {.path = "/v1/models/from_csv/log_prob", .ctype = "application/x-npy", .body = r2.body, .len = r2.len};
    dmn_http(d, &qn, &r);
    CHECK_MSG(r.status == 200 && json_floats(r.json, "log_prob", b, 40) == 25, "npy samples to log_prob: %ld %s",
              r.status, r.body);
    for (int i = 0; i < 25; i++) CHECK_CLOSE(a[i], b[i], 1e-6, 1e-6);
    hresp_free(&r);
    hresp_free(&r2);
}

TEST_T(http_datasets_csv_npy_formats_agree, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    datasets_body(&d);
    dmn_cleanup(&d);
}

/* ---- 3. cancel, submission ids -------------------------------------------------------------- */
static int wait_running(dmn *d, long long id, double timeout_s, int min_step) {
    double t0 = dmn_now();
    while (dmn_now() - t0 < timeout_s) {
        cJSON *j = get_job(d, id);
        const cJSON *p = j ? cJSON_GetObjectItemCaseSensitive(j, "progress") : NULL;
        int ok = !strcmp(jstr(j, "state"), "running") && jnum(p, "step") >= min_step;
        int over = j && strcmp(jstr(j, "state"), "running") && strcmp(jstr(j, "state"), "queued");
        cJSON_Delete(j);
        if (ok) return 0;
        if (over) return -1;
        dmn_sleep_ms(20);
    }
    return -1;
}

static void cancel_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    const char *job = "{\"submission_id\":\"client-key-1\",\"model\":\"long\",\"dataset\":" MOONS_DS
                      ",\"flow\":" SMALL_FLOW ",\"train\":{\"epochs\":100000}}";
    hresp r;
    http_post_json(d, "/v1/jobs", job, &r);
    CHECK_EQ_INT(r.status, 202);
    char loc[128];
    CHECK(hresp_header(&r, "Location", loc, sizeof loc) != NULL);
    long long id = atoll(jstr(r.json, "id"));
    CHECK(id > 0);
    hresp_free(&r);
    http_post_json(d, "/v1/jobs", job, &r);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_INT(atoll(jstr(r.json, "id")), id);
    hresp_free(&r);
    REQUIRE(wait_running(d, id, 20, 1) == 0);
    char path[96], state[32];
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", id);
    hreq q = {.method = "POST", .path = path};
    dmn_http(d, &q, &r);
    CHECK_MSG(r.status == 202, "cancel: %ld %s", r.status, r.body);
    hresp_free(&r);
    CHECK(wait_job(d, id, 20, state, sizeof state) == 0);
    CHECK_MSG(!strcmp(state, "cancelled"), "state %s", state);
    dmn_http(d, &q, &r);
    CHECK_ERROR(d, r, 409, "conflict");
    hresp_free(&r);
    /* the key still names the first job */
    http_post_json(d, "/v1/jobs", job, &r);
    CHECK_EQ_INT(atoll(jstr(r.json, "id")), id);
    hresp_free(&r);
    http_get(d, "/v1/jobs?state=cancelled", &r);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "jobs")), 1);
    hresp_free(&r);
}

TEST_T(http_cancel_and_submission_id, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    cancel_body(&d);
    dmn_cleanup(&d);
}

/* ---- 4. kill -9 mid-training, restart, resume -------------------------------------------------- */
static long long count_rows(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static int db_counts(const char *path, long long *versions, long long *metrics, char *integrity, size_t n) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, 5000);
    *versions = count_rows(db, "SELECT count(*) FROM model_versions");
    *metrics = count_rows(db, "SELECT count(*) FROM job_metrics");
    if (integrity) {
        sqlite3_stmt *st = NULL;
        snprintf(integrity, n, "?");
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            snprintf(integrity, n, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return 0;
}

static void kill9_body(dmn *d) {
    static const char *const env[] = {"FLOWD_CHECKPOINT_SECONDS=0.2", NULL};
    REQUIRE(dmn_start(d, QUIET, env) == 0);
    REQUIRE(train(d, "before", MOONS_DS, SMALL_FLOW, "{\"epochs\":2}") == 0);
    long long id = submit_job(d, "{\"model\":\"resumed\",\"dataset\":{\"builtin\":\"moons\",\"n\":4000,\"seed\":2},"
                                 "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]},"
                                 "\"train\":{\"epochs\":300,\"batch_size\":256}}");
    REQUIRE(id > 0);
    REQUIRE(wait_running(d, id, 20, 1) == 0);
    dmn_sleep_ms(600);
    /* the rows the API reports before the kill */
    char path[96];
    snprintf(path, sizeof path, "/v1/jobs/%lld/metrics?limit=10000", id);
    hresp r;
    http_get(d, path, &r);
    CHECK_EQ_INT(r.status, 200);
    long long api_metrics = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "metrics"));
    hresp_free(&r);
    cJSON *j = get_job(d, id);
    double step_before = jnum(cJSON_GetObjectItemCaseSensitive(j, "progress"), "step");
    int was_running = !strcmp(jstr(j, "state"), "running");
    cJSON_Delete(j);
    dmn_kill9(d);
    REQUIRE(was_running);
    CHECK(step_before > 0);
    long long v0 = -1, m0 = -1;
    char integ[128];
    REQUIRE(db_counts(d->db, &v0, &m0, integ, sizeof integ) == 0);
    CHECK_MSG(!strcmp(integ, "ok"), "integrity after kill -9: %s", integ);
    CHECK_EQ_INT(v0, 1);
    CHECK_MSG(m0 >= api_metrics, "metric rows after the kill %lld < %lld reported before", m0, api_metrics);

    REQUIRE(dmn_start(d, QUIET, env) == 0);
    char state[32];
    CHECK(wait_job(d, id, 90, state, sizeof state) == 0);
    {
        void *lg = NULL;
        size_t ll = 0;
        CHECK(nf_file_read(d->log, &lg, &ll) == 0);
        char *t = lg ? realloc(lg, ll + 1) : NULL;
        if (t) t[ll] = 0;
        const char *at = t ? strstr(t, "resuming at step ") : NULL;
        CHECK_MSG(at && atol(at + 17) > 0, "the job did not resume from a checkpoint");
        free(t ? t : lg);
    }
    CHECK_MSG(!strcmp(state, "succeeded"), "resumed job ended %s", state);
    j = get_job(d, id);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "progress");
    CHECK_EQ_INT(jnum(j, "version"), 1);
    CHECK_MSG(jnum(p, "epoch") == 300, "epoch %g", jnum(p, "epoch"));
    cJSON_Delete(j);
    http_get(d, "/v1/models/resumed", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    CHECK_EQ_INT(dmn_stop(d), 0);
    long long v1 = -1, m1 = -1;
    REQUIRE(db_counts(d->db, &v1, &m1, integ, sizeof integ) == 0);
    CHECK_MSG(!strcmp(integ, "ok"), "integrity: %s", integ);
    CHECK_EQ_INT(v1, 2);
    CHECK_MSG(m1 >= m0, "metric rows %lld after the restart < %lld before", m1, m0);
}

TEST_T(http_kill9_resumes_and_keeps_rows, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    kill9_body(&d);
    dmn_cleanup(&d);
}

/* ---- 5. the error rows of the contract ------------------------------------------------------------ */
static void post_raw(dmn *d, const char *path, const char *ctype, const char *body, hresp *r) {
    hreq q = {.method = "POST", .path = path, .ctype = ctype, .body = body, .len = strlen(body), .has_body = 1};
    dmn_http(d, &q, r);
}

static void errors_input_body(dmn *d) {
    static const char *const args[] = {"--max-body", "4096", "--max-sample", "1000", NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    REQUIRE(train(d, "m", MOONS_DS, SMALL_FLOW, "{\"epochs\":2}") == 0);
    const char *lp = "/v1/models/m/log_prob";
    hresp r;
    post_raw(d, lp, "application/json", "{\"inputs\":[[1,2]", &r);
    CHECK_ERROR(d, r, 400, "invalid_json");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "", &r);
    CHECK_ERROR(d, r, 400, "invalid_json");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[1,2]]} trailing", &r);
    CHECK_ERROR(d, r, 400, "invalid_json");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[NaN,2]]}", &r);
    CHECK_ERROR(d, r, 400, "invalid_json");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "[[1,2]]", &r);
    CHECK_ERROR(d, r, 400, "invalid_json");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[1,2],[3,4],[1,2,3]]}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(r.json, "error");
        CHECK_MSG(jnum(cJSON_GetObjectItemCaseSensitive(e, "details"), "row") == 2, "details: %s", r.body);
    }
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[1,2],[\"1.5\",2]]}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(r.json, "error");
        CHECK_MSG(jnum(cJSON_GetObjectItemCaseSensitive(e, "details"), "row") == 1, "details: %s", r.body);
    }
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[1e999,0]]}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[1,2]],\"bogus\":1}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);
    post_raw(d, lp, "text/csv", "a,b,c\n1,2,3\n", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);
    post_raw(d, "/v1/models/nope/log_prob", "application/json", "{\"inputs\":[[1,2]]}", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    http_get(d, "/v1/models/nope", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    post_raw(d, lp, "application/json", "{\"inputs\":[[1,2]],\"version\":7}", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    http_get(d, "/v1/nothing/here", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);

    /* bodies over --max-body: declared, and chunked */
    size_t big = 10 * 1024;
    char *b = malloc(big + 1);
    memset(b, ' ', big);
    b[0] = '{';
    b[big - 1] = '}';
    b[big] = 0;
    hreq q = {.method = "POST", .path = lp, .ctype = "application/json", .body = b, .len = big};
    dmn_http(d, &q, &r);
    CHECK_ERROR(d, r, 413, "payload_too_large");
    hresp_free(&r);
    q.chunked = 1;
    dmn_http(d, &q, &r);
    CHECK_ERROR(d, r, 413, "payload_too_large");
    hresp_free(&r);
    q.path = "/v1/jobs";
    dmn_http(d, &q, &r);
    CHECK_ERROR(d, r, 413, "payload_too_large");
    hresp_free(&r);
    free(b);
    /* a chunked body under the limit is fine */
    const char *ok = "{\"inputs\":[[0.5,0.25]]}";
    hreq qc = {.method = "POST", .path = lp, .ctype = "application/json", .body = ok, .len = strlen(ok), .chunked = 1};
    dmn_http(d, &qc, &r);
    CHECK_MSG(r.status == 200, "chunked log_prob: %ld %s", r.status, r.body);
    hresp_free(&r);

    /* wrong method: 405 with Allow */
    char allow[128];
    hreq qm = {.method = "DELETE", .path = "/healthz"};
    dmn_http(d, &qm, &r);
    CHECK_ERROR(d, r, 405, "method_not_allowed");
    CHECK_MSG(hresp_header(&r, "Allow", allow, sizeof allow) && strstr(allow, "GET"), "Allow: %s", r.headers);
    hresp_free(&r);
    hreq qg = {.method = "GET", .path = lp};
    dmn_http(d, &qg, &r);
    CHECK_ERROR(d, r, 405, "method_not_allowed");
    CHECK_MSG(hresp_header(&r, "Allow", allow, sizeof allow) && strstr(allow, "POST"), "Allow: %s", r.headers);
    hresp_free(&r);
    hreq qp = {.method = "PUT", .path = "/v1/jobs", .ctype = "application/json", .body = "{}", .len = 2};
    dmn_http(d, &qp, &r);
    CHECK_ERROR(d, r, 405, "method_not_allowed");
    CHECK_MSG(hresp_header(&r, "Allow", allow, sizeof allow) && strstr(allow, "GET") && strstr(allow, "POST"),
              "Allow: %s", r.headers);
    hresp_free(&r);

    /* wrong media type */
    post_raw(d, lp, "application/xml", "<x/>", &r);
    CHECK_ERROR(d, r, 415, "unsupported_media_type");
    hresp_free(&r);
    post_raw(d, "/v1/jobs", "text/plain", "hello", &r);
    CHECK_ERROR(d, r, 415, "unsupported_media_type");
    hresp_free(&r);
    post_raw(d, "/v1/models/m/sample", "image/png", "x", &r);
    CHECK_ERROR(d, r, 415, "unsupported_media_type");
    hresp_free(&r);

    /* n over the limit; bad n */
    post_raw(d, "/v1/models/m/sample", "application/json", "{\"n\":1001}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);
    post_raw(d, "/v1/models/m/sample", "application/json", "{\"n\":1000,\"seed\":1}", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    post_raw(d, "/v1/models/m/sample", "application/json", "{\"n\":\"5\"}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);
    post_raw(d, "/v1/models/m/decode", "application/json", "{\"latents\":[[1]]}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);

    /* jobs: invalid, unknown, finished */
    post_raw(d, "/v1/jobs", "application/json", "{\"model\":\"x\"}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    hresp_free(&r);
    post_raw(d, "/v1/jobs", "application/json",
             "{\"model\":\"x\",\"dataset\":{\"id\":\"does-not-exist\"},\"flow\":" SMALL_FLOW "}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    CHECK_MSG(strstr(r.body, "dataset does-not-exist does not exist") != NULL, "%s", r.body);
    hresp_free(&r);
    http_get(d, "/v1/jobs/999", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    http_get(d, "/v1/jobs/abc", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    hreq qc2 = {.method = "POST", .path = "/v1/jobs/999/cancel"};
    dmn_http(d, &qc2, &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    qc2.path = "/v1/jobs/1/cancel"; /* the training job above, succeeded */
    dmn_http(d, &qc2, &r);
    CHECK_ERROR(d, r, 409, "conflict");
    hresp_free(&r);
    http_get(d, "/v1/jobs?state=bogus", &r);
    CHECK_ERROR(d, r, 400, "invalid_argument");
    hresp_free(&r);
    /* the model still serves */
    double v[1];
    float x[2] = {0.5f, 0.25f};
    CHECK(log_prob_json(d, "m", x, 1, v) == 0);
}

TEST_T(http_errors_input_limits_methods, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    errors_input_body(&d);
    dmn_cleanup(&d);
}

#define READ_TOK "r3adr3adr3adr3adr3adr3adr3adr3ad"
#define WRITE_TOK "wr1tewr1tewr1tewr1tewr1tewr1tew1"
#define WRITE_TOK_1 "wr1tewr1tewr1tewr1tewr1tewr1tew2" /* differs in the last byte */

static void errors_auth_body(dmn *d) {
    FILE *f = fopen(dmn_path(d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "# scopes\nread " READ_TOK "\nwrite " WRITE_TOK "\n");
    fclose(f);
    const char *args[] = {"--token-file", dmn_path(d, "tokens"), NULL};
    d->log_requests = 1; /* the log is checked for tokens at the end */
    REQUIRE(dmn_start(d, args, NULL) == 0);
    hresp r;
    /* public routes need no token */
    hreq q = {.path = "/healthz", .token = ""};
    dmn_http(d, &q, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    q.path = "/readyz";
    dmn_http(d, &q, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    q.path = "/metrics";
    dmn_http(d, &q, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    /* read routes */
    q.path = "/v1/models";
    dmn_http(d, &q, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    q.token = READ_TOK;
    dmn_http(d, &q, &r);
    CHECK_MSG(r.status == 200, "GET /v1/models with the read token: %ld %s", r.status, r.body);
    hresp_free(&r);
    q.token = WRITE_TOK;
    dmn_http(d, &q, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    /* a write route */
    const char *job = "{\"model\":\"t\",\"dataset\":" MOONS_DS ",\"flow\":" SMALL_FLOW ",\"train\":{\"epochs\":1}}";
    hreq w = {.method = "POST", .path = "/v1/jobs", .ctype = "application/json", .body = job, .len = strlen(job),
              .token = ""};
    dmn_http(d, &w, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    w.token = READ_TOK;
    dmn_http(d, &w, &r);
    CHECK_ERROR(d, r, 403, "permission_denied");
    hresp_free(&r);
    w.token = "not-a-token-at-all-not-a-token-at-all";
    dmn_http(d, &w, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    w.token = WRITE_TOK_1;
    dmn_http(d, &w, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    w.token = WRITE_TOK "x"; /* a prefix match is no match */
    dmn_http(d, &w, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    static const char *const basic[] = {"Authorization: Basic dXNlcjpwYXNz", NULL};
    hreq wb = w;
    wb.token = "";
    wb.headers = basic;
    dmn_http(d, &wb, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    /* a wrong token on a read route */
    q.token = WRITE_TOK_1;
    dmn_http(d, &q, &r);
    CHECK_ERROR(d, r, 401, "unauthenticated");
    hresp_free(&r);
    /* the write token is accepted */
    w.token = WRITE_TOK;
    dmn_http(d, &w, &r);
    CHECK_MSG(r.status == 202, "POST /v1/jobs with the write token: %ld %s", r.status, r.body);
    long long id = atoll(jstr(r.json, "id"));
    hresp_free(&r);
    d->token = READ_TOK;
    char state[32];
    CHECK(wait_job(d, id, 30, state, sizeof state) == 0 && !strcmp(state, "succeeded"));
    hreq del = {.method = "DELETE", .path = "/v1/models/t"};
    dmn_http(d, &del, &r);
    CHECK_ERROR(d, r, 403, "permission_denied");
    hresp_free(&r);
    del.token = WRITE_TOK;
    dmn_http(d, &del, &r);
    CHECK_EQ_INT(r.status, 204);
    hresp_free(&r);
    http_get(d, "/v1/models/t", &r);
    CHECK_ERROR(d, r, 404, "not_found");
    hresp_free(&r);
    /* the daemon logged every one of these requests, and no token.  A
     * request's line is written after its response is sent, so the last one
     * may land a moment after the client has its answer: read until it is
     * there (at most 5 s). */
    static char logbuf[1 << 20];
    for (int tries = 0; tries < 100; tries++) {
        FILE *lf = fopen(d->log, "r");
        REQUIRE(lf);
        size_t ln = fread(logbuf, 1, sizeof logbuf - 1, lf);
        fclose(lf);
        logbuf[ln] = 0;
        if (strstr(logbuf, "method=DELETE path=/v1/models/t status=204")) break;
        usleep(50 * 1000);
    }
    CHECK_MSG(strstr(logbuf, "method=DELETE path=/v1/models/t status=204") != NULL,
              "request lines missing from the log");
    CHECK_MSG(!strstr(logbuf, READ_TOK) && !strstr(logbuf, WRITE_TOK) && !strstr(logbuf, WRITE_TOK_1),
              "a token appears in the daemon's log");
}

TEST_T(http_errors_tokens, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    errors_auth_body(&d);
    dmn_cleanup(&d);
}

static void errors_queue_body(dmn *d) {
    static const char *const args[] = {"--workers", "0", "--max-queued-jobs", "1", NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    const char *job = "{\"model\":\"q\",\"dataset\":" MOONS_DS ",\"flow\":" SMALL_FLOW ",\"train\":{\"epochs\":1}}";
    const char *keyed = "{\"submission_id\":\"q-1\",\"model\":\"q\",\"dataset\":" MOONS_DS ",\"flow\":" SMALL_FLOW
                        ",\"train\":{\"epochs\":1}}";
    long long id = submit_job(d, keyed);
    CHECK(id > 0);
    hresp r;
    http_post_json(d, "/v1/jobs", job, &r);
    CHECK_ERROR(d, r, 429, "overloaded");
    char ra[32];
    CHECK_MSG(hresp_header(&r, "Retry-After", ra, sizeof ra) && atoi(ra) >= 1, "headers: %s", r.headers);
    hresp_free(&r);
    /* a retry of the accepted job still finds it while the queue is full */
    http_post_json(d, "/v1/jobs", keyed, &r);
    CHECK_MSG(r.status == 202 && atoll(jstr(r.json, "id")) == id, "retry: %ld %s", r.status, r.body);
    hresp_free(&r);
    /* a queued job cancels at once, which frees the queue */
    char path[64];
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", id);
    hreq q = {.method = "POST", .path = path};
    dmn_http(d, &q, &r);
    CHECK_EQ_INT(r.status, 202);
    hresp_free(&r);
    cJSON *j = get_job(d, id);
    CHECK_MSG(!strcmp(jstr(j, "state"), "cancelled"), "state %s", jstr(j, "state"));
    cJSON_Delete(j);
    CHECK(submit_job(d, job) > 0);
    /* readiness with no workers still answers */
    http_get(d, "/readyz", &r);
    CHECK(r.status == 200 || r.status == 503);
    hresp_free(&r);
}

TEST_T(http_errors_queue_full, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    errors_queue_body(&d);
    dmn_cleanup(&d);
}

/* --max-inflight 1: an open event stream holds the one slot, so an API
 * request is refused with 503 overloaded + Retry-After while /healthz,
 * /readyz and /metrics still answer */
static volatile int events_stop;

static void *events_main(void *p) {
    dmn *d = p;
    hreq q = {.path = "/v1/jobs/1/events", .timeout_s = 60, .quiet = 1, .abort_flag = &events_stop};
    hresp r;
    /* the stream itself may be refused (503) while the main thread's probe
     * holds the one slot: retry until it is admitted, then it holds the slot
     * until aborted (the job runs on) */
    for (int k = 0; k < 400 && !__atomic_load_n(&events_stop, __ATOMIC_RELAXED); k++) {
        dmn_http(d, &q, &r);
        long st = r.status;
        hresp_free(&r);
        if (st != 503) break;
        dmn_sleep_ms(10);
    }
    return NULL;
}

static void overload_body(dmn *d) {
    static const char *const args[] = {"--max-inflight", "1", NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    long long id = submit_job(d, "{\"model\":\"o\",\"dataset\":" MOONS_DS ",\"flow\":" SMALL_FLOW
                                 ",\"train\":{\"epochs\":100000}}");
    REQUIRE(id == 1);
    REQUIRE(wait_running(d, id, 20, 1) == 0);
    pthread_t th;
    events_stop = 0;
    pthread_create(&th, NULL, events_main, d);
    hresp r;
    double t0 = dmn_now();
    long st = 0;
    while (dmn_now() - t0 < 15) { /* until the stream holds the slot */
        http_get(d, "/v1/models", &r);
        st = r.status;
        if (st == 503) break;
        hresp_free(&r);
        dmn_sleep_ms(20);
    }
    char ra[32];
    CHECK_ERROR(d, r, 503, "overloaded");
    CHECK_MSG(hresp_header(&r, "Retry-After", ra, sizeof ra) && atoi(ra) >= 1, "headers: %s", r.headers);
    hresp_free(&r);
    /* refused with a 4 MB body on its way (sent whole, no Expect): the
     * answer comes once the body is read, so the client always gets it (an
     * answer before it left the body unread, and the close reset the
     * connection, sometimes before the client had read the answer) */
    {
        size_t k;
        char *big = rows_body(4u << 20, &k);
        REQUIRE(big);
        for (int i = 0; i < 8; i++) {
            hreq q = {.path = "/v1/models/o/log_prob", .ctype = "application/json", .body = big, .len = k,
                      .timeout_s = 30, .quiet = 1};
            dmn_http(d, &q, &r);
            CHECK_MSG(r.status == 503 && !strcmp(hresp_error_code(&r), "overloaded") &&
                          hresp_header(&r, "Retry-After", ra, sizeof ra),
                      "a %zu-byte body while overloaded: status %ld", k, r.status);
            hresp_free(&r);
        }
        free(big);
    }
    http_get(d, "/readyz", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    http_get(d, "/metrics", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    __atomic_store_n(&events_stop, 1, __ATOMIC_RELAXED); /* read by the curl thread */
    pthread_join(th, NULL);
    /* the slot is free again once the stream is gone */
    t0 = dmn_now();
    while (dmn_now() - t0 < 15) {
        http_get(d, "/v1/models", &r);
        st = r.status;
        hresp_free(&r);
        if (st == 200) break;
        dmn_sleep_ms(50);
    }
    CHECK_EQ_INT(st, 200);
    /* the previous request's slot is released only after its response went
     * out, so the next request may still find it taken: retry a 503 briefly */
    hreq q = {.method = "POST", .path = "/v1/jobs/1/cancel"};
    for (int k = 0; k < 40; k++) {
        dmn_http(d, &q, &r);
        if (r.status != 503) break;
        hresp_free(&r);
        dmn_sleep_ms(25);
    }
    CHECK_EQ_INT(r.status, 202);
    hresp_free(&r);
}

TEST_T(http_overloaded_inflight_limit, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    overload_body(&d);
    dmn_cleanup(&d);
}

/* ---- 6. concurrent scoring while training ---------------------------------------------------------- */
enum { CT_THREADS = 8, CT_REQS = 50, CT_ROWS = 16, CT_POOL = 400 };

typedef struct {
    dmn *d;
    int t;
    const float *x;         /* (CT_POOL,2) */
    const double *expect;   /* (CT_POOL) */
    int bad_status, bad_value, bad_rid, done;
    char first_err[256];
} ct_arg;

static void *ct_main(void *p) {
    ct_arg *a = p;
    for (int k = 0; k < CT_REQS; k++) {
        int off = ((a->t * CT_REQS + k) * 7) % (CT_POOL - CT_ROWS);
        char *body = rows_json("inputs", a->x + 2 * off, CT_ROWS, 2, NULL);
        char rid[64], hdr[96], got[64];
        snprintf(rid, sizeof rid, "t%d-r%d", a->t, k);
        snprintf(hdr, sizeof hdr, "X-Request-Id: %s", rid);
        const char *hs[] = {hdr, NULL};
        hreq q = {.method = "POST", .path = "/v1/models/a/log_prob", .ctype = "application/json", .body = body,
                  .len = strlen(body), .headers = hs};
        hresp r;
        dmn_http(a->d, &q, &r);
        free(body);
        double lp[CT_ROWS];
        if (r.status != 200 || json_floats(r.json, "log_prob", lp, CT_ROWS) != CT_ROWS) {
            if (!a->bad_status++) snprintf(a->first_err, sizeof a->first_err, "%ld %.200s", r.status, r.body);
        } else {
            for (int i = 0; i < CT_ROWS; i++) {
                double e = a->expect[off + i];
                if (!(fabs(lp[i] - e) <= 1e-5 + 1e-5 * fabs(e))) {
                    if (!a->bad_value++)
                        snprintf(a->first_err, sizeof a->first_err, "row %d: %.9g vs %.9g", off + i, lp[i], e);
                }
            }
        }
        if (!hresp_header(&r, "X-Request-Id", got, sizeof got) || strcmp(got, rid)) a->bad_rid++;
        a->done++;
        hresp_free(&r);
    }
    return NULL;
}

static void concurrent_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    REQUIRE(train(d, "a", MOONS_DS, "{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]}", "{\"epochs\":3}") == 0);
    /* the exported model, scored in-process */
    hresp r;
    http_get(d, "/v1/models/a/versions/1/checkpoint", &r);
    REQUIRE(r.status == 200 && r.len > 0);
    nf_model *m = NULL;
    char err[256] = "";
    int rc = nf_model_load(r.body, r.len, &m, err, sizeof err);
    hresp_free(&r);
    REQUIRE(rc == 0);
    float *x = moons(CT_POOL, 555);
    REQUIRE(x);
    static double expect[CT_POOL];
    nf_ws *ws = NULL;
    REQUIRE(nf_ws_create(m->flow, CT_POOL, &ws) == 0);
    nf_real lp[CT_POOL];
    REQUIRE(nf_model_log_prob(m, ws, x, NULL, CT_POOL, lp) == 0);
    for (int i = 0; i < CT_POOL; i++) expect[i] = lp[i];
    nf_ws_free(ws);
    nf_model_free(m);

    long long bg = submit_job(d, "{\"model\":\"b\",\"dataset\":" MOONS_DS ",\"flow\":" SMALL_FLOW
                                 ",\"train\":{\"epochs\":100000}}");
    REQUIRE(bg > 0);
    REQUIRE(wait_running(d, bg, 20, 1) == 0);

    pthread_t th[CT_THREADS];
    ct_arg args[CT_THREADS];
    for (int t = 0; t < CT_THREADS; t++) {
        args[t] = (ct_arg){.d = d, .t = t, .x = x, .expect = expect};
        pthread_create(&th[t], NULL, ct_main, &args[t]);
    }
    for (int t = 0; t < CT_THREADS; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < CT_THREADS; t++) {
        CHECK_EQ_INT(args[t].done, CT_REQS);
        CHECK_MSG(!args[t].bad_status && !args[t].bad_value, "thread %d: %d bad answers, %d bad values; first: %s", t,
                  args[t].bad_status, args[t].bad_value, args[t].first_err);
        CHECK_MSG(!args[t].bad_rid, "thread %d: X-Request-Id not echoed %d times", t, args[t].bad_rid);
    }
    cJSON *j = get_job(d, bg);
    CHECK_MSG(!strcmp(jstr(j, "state"), "running"), "the background job is %s", jstr(j, "state"));
    cJSON_Delete(j);
    /* a request id we did not send is made up */
    http_get(d, "/healthz", &r);
    char rid[64];
    CHECK(hresp_header(&r, "X-Request-Id", rid, sizeof rid) && strlen(rid) > 0);
    hresp_free(&r);
    char path[64];
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", bg);
    hreq q = {.method = "POST", .path = path};
    dmn_http(d, &q, &r);
    CHECK_EQ_INT(r.status, 202);
    hresp_free(&r);
    free(x);
}

TEST_T(http_concurrent_log_prob_while_training, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    concurrent_body(&d);
    dmn_cleanup(&d);
}

/* ---- 7. operations endpoints, export/import through the CLI ----------------------------------------- */
static void ops_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    REQUIRE(train(d, "e", MOONS_DS, SMALL_FLOW, "{\"epochs\":2}") == 0);
    hresp r;
    http_get(d, "/readyz", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    http_get(d, "/v1/version", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_MSG(jnum(r.json, "schema_version") >= 1, "%s", r.body);
    hresp_free(&r);
    http_get(d, "/openapi.yaml", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK(r.len > 100 && strstr(r.body, "openapi") != NULL);
    hresp_free(&r);
    http_get(d, "/metrics", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_MSG(strstr(r.body, "flowd_http_requests_total") != NULL, "no flowd_http_requests_total");
    CHECK_MSG(strstr(r.body, "flowd_jobs{state=\"succeeded\"}") != NULL, "no flowd_jobs{state=\"succeeded\"}");
    hresp_free(&r);
    /* the finished job's event stream: progress events, then the final state */
    char ct[64];
    hreq qe = {.path = "/v1/jobs/1/events", .timeout_s = 20};
    dmn_http(d, &qe, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK(hresp_header(&r, "Content-Type", ct, sizeof ct) && !strncmp(ct, "text/event-stream", 17));
    CHECK_MSG(strstr(r.body, "event: progress") && strstr(r.body, "event: state") && strstr(r.body, "\"succeeded\""),
              "events: %.300s", r.body);
    hresp_free(&r);
    /* metrics pages */
    http_get(d, "/v1/jobs/1/metrics?limit=1", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "metrics")), 1);
    double next = jnum(r.json, "next_after_step");
    hresp_free(&r);
    CHECK(next >= 0);
    char mp[96];
    snprintf(mp, sizeof mp, "/v1/jobs/1/metrics?after_step=%.0f&limit=1000", next);
    http_get(d, mp, &r);
    CHECK_EQ_INT(r.status, 200);
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(r.json, "metrics"), *m1 = cJSON_GetArrayItem(ms, 0);
    CHECK_MSG(cJSON_GetArraySize(ms) >= 1 && jnum(m1, "step") > next, "%.300s", r.body);
    hresp_free(&r);

    http_get(d, "/v1/models/e/versions/1/checkpoint", &r);
    REQUIRE(r.status == 200 && r.len > 0);
    size_t dl_len = r.len;
    char *dl = malloc(dl_len);
    memcpy(dl, r.body, dl_len);
    hresp_free(&r);
    float x[8] = {0.1f, 0.2f, -1.0f, 0.5f, 1.5f, -0.3f, 0.0f, 0.0f};
    double lp_e[4], lp_e2[4];
    CHECK(log_prob_json(d, "e", x, 4, lp_e) == 0);
    CHECK_EQ_INT(dmn_stop(d), 0);

    const char *file = dmn_path(d, "e.flow");
    const char *exp_args[] = {"export", "e:1", "-o", file, "--db", d->db, NULL};
    CHECK_EQ_INT(run_flowd(d, exp_args, NULL, 30), 0);
    void *buf = NULL;
    size_t len = 0;
    CHECK(nf_file_read(file, &buf, &len) == 0);
    CHECK_MSG(len == dl_len && buf && !memcmp(buf, dl, len), "exported %zu bytes differ from the %zu downloaded",
              len, dl_len);
    free(buf);
    free(dl);
    const char *imp_args[] = {"import", file, "--name", "e2", "--db", d->db, NULL};
    CHECK_EQ_INT(run_flowd(d, imp_args, NULL, 30), 0);
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    http_get(d, "/v1/models/e2", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    CHECK(log_prob_json(d, "e2", x, 4, lp_e2) == 0);
    for (int i = 0; i < 4; i++) CHECK_CLOSE(lp_e2[i], lp_e[i], 0, 0);
}

TEST_T(http_ops_metrics_and_cli_export_import, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    ops_body(&d);
    dmn_cleanup(&d);
}

/* ---- 8. no public listening without tokens ----------------------------------------------------------- */
TEST_T(http_refuses_public_listen_without_tokens, 30) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *args[] = {"serve", "--db", d.db, "--listen", "0.0.0.0:0", "--port-file", d.portf, NULL};
    int st = run_flowd(&d, args, NULL, 10);
    CHECK_MSG(st == 2, "flowd serve --listen 0.0.0.0:0 without tokens exited %d", st);
    struct stat sb;
    CHECK_MSG(stat(d.portf, &sb) != 0, "it wrote a port file");
    const char *help[] = {"serve", "--help", NULL};
    CHECK_EQ_INT(run_flowd(&d, help, NULL, 10), 0);
    /* threads that split a batch each call BLAS: with BLAS threads too, refused */
    const char *over[] = {"serve", "--db", d.db, "--train-threads", "2", "--blas-threads", "2",
                          "--port-file", d.portf, NULL};
    st = run_flowd(&d, over, NULL, 10);
    CHECK_MSG(st == 2, "flowd serve --train-threads 2 --blas-threads 2 exited %d", st);
    CHECK_MSG(stat(d.portf, &sb) != 0, "it wrote a port file");
    /* an empty FLOWD_TOKEN_FILE is a mistake, not "no tokens" (it would
     * serve without authentication): refused, nothing listens */
    const char *loop[] = {"serve", "--db", d.db, "--listen", "127.0.0.1:0", "--port-file", d.portf, NULL};
    static const char *const empty_tokens[] = {"FLOWD_TOKEN_FILE=", NULL};
    st = run_flowd(&d, loop, empty_tokens, 10);
    CHECK_MSG(st != 0 && st < 128, "flowd serve with FLOWD_TOKEN_FILE empty exited %d", st);
    CHECK_MSG(stat(d.portf, &sb) != 0, "it wrote a port file");
    dmn_cleanup(&d);
}

/* ---- 9. flowd train in the foreground, batches split over threads ----------------------------------- */
TEST_T(http_cli_train_threads, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    char cfg[256], out1[256], out2[256];
    snprintf(cfg, sizeof cfg, "%s/job.json", d.dir);
    snprintf(out1, sizeof out1, "%s/m1.flow", d.dir);
    snprintf(out2, sizeof out2, "%s/m2.flow", d.dir);
    FILE *fp = fopen(cfg, "w");
    REQUIRE(fp);
    fputs("{\"model\":\"t\",\"dataset\":{\"builtin\":\"moons\",\"n\":3000,\"seed\":2},"
          "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]},"
          "\"train\":{\"epochs\":3,\"batch_size\":128,\"seed\":3}}", fp);
    fclose(fp);
    const char *a1[] = {"train", "--config", cfg, "--out", out1, "--threads", "1", "--quiet", NULL};
    const char *a2[] = {"train", "--config", cfg, "--out", out2, "--threads", "2", "--quiet", NULL};
    CHECK_EQ_INT(run_flowd(&d, a1, NULL, 60), 0);
    CHECK_EQ_INT(run_flowd(&d, a2, NULL, 60), 0);
    /* both models exist and fit alike: the same data, seed and steps, the
     * gradients summed in two parts (last-bit differences only) */
    nf_model *m1 = NULL, *m2 = NULL;
    char err[256];
    void *b1 = NULL, *b2 = NULL;
    size_t n1 = 0, n2 = 0;
    REQUIRE(nf_file_read(out1, &b1, &n1) == 0 && nf_file_read(out2, &b2, &n2) == 0);
    REQUIRE(nf_model_load(b1, n1, &m1, err, sizeof err) == 0);
    REQUIRE(nf_model_load(b2, n2, &m2, err, sizeof err) == 0);
    free(b1);
    free(b2);
    nf_real x[6] = {0.5f, 0.2f, -0.8f, 0.6f, 1.9f, 0.1f}, l1[3], l2[3];
    nf_ws *w1, *w2;
    REQUIRE(nf_ws_create(m1->flow, 3, &w1) == 0 && nf_ws_create(m2->flow, 3, &w2) == 0);
    CHECK(nf_model_log_prob(m1, w1, x, NULL, 3, l1) == 0);
    CHECK(nf_model_log_prob(m2, w2, x, NULL, 3, l2) == 0);
    for (int i = 0; i < 3; i++)
        CHECK_MSG(fabs((double)l1[i] - (double)l2[i]) < 0.05, "row %d: %g (1 thread) vs %g (2)", i,
                  (double)l1[i], (double)l2[i]);
    nf_ws_free(w1);
    nf_ws_free(w2);
    nf_model_free(m1);
    nf_model_free(m2);
    const char *bad[] = {"train", "--config", cfg, "--out", out1, "--threads", "0", NULL};
    CHECK_EQ_INT(run_flowd(&d, bad, NULL, 10), 2);
    dmn_cleanup(&d);
}

/* ---- 10. event streams hold no request thread ----------------------------------------------------- */
/* With one request thread and three open event streams on a training job,
 * other requests are still answered at once (a stream parks its connection
 * between polls), the streams get progress events, and a drain with the
 * streams open ends them promptly. */
static volatile int streams_stop;
typedef struct {
    dmn *d;
    long status;
    int progress;
} stream_arg;

static void *stream_main(void *p) {
    stream_arg *a = p;
    hreq q = {.path = "/v1/jobs/1/events", .timeout_s = 60, .quiet = 1, .abort_flag = &streams_stop};
    hresp r;
    dmn_http(a->d, &q, &r);
    a->status = r.status;
    a->progress = r.body && strstr(r.body, "event: progress") != NULL;
    hresp_free(&r);
    return NULL;
}

TEST_T(http_event_streams_hold_no_thread, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const args[] = {"--http-threads", "1", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    long long id = submit_job(&d, "{\"model\":\"s\",\"dataset\":" MOONS_DS ",\"flow\":" SMALL_FLOW
                                  ",\"train\":{\"epochs\":100000,\"log_every\":5}}");
    REQUIRE(id == 1);
    REQUIRE(wait_running(&d, id, 20, 1) == 0);
    streams_stop = 0;
    pthread_t th[3];
    stream_arg sa[3];
    for (int i = 0; i < 3; i++) {
        sa[i] = (stream_arg){&d, 0, 0};
        pthread_create(&th[i], NULL, stream_main, &sa[i]);
    }
    dmn_sleep_ms(1500); /* the streams are open and have polled many times */
    double worst = 0;
    for (int i = 0; i < 20; i++) {
        hresp r;
        double t0 = dmn_now();
        http_get(&d, i % 2 ? "/v1/models" : "/v1/jobs/1", &r);
        double dt = dmn_now() - t0;
        worst = dt > worst ? dt : worst;
        CHECK_MSG(r.status == 200, "request %d with 3 streams open: %ld", i, r.status);
        hresp_free(&r);
    }
    /* the old streams slept up to 100 ms at a time on the one thread, up to
     * 5 s per read; a parked stream holds it for one database poll */
    CHECK_MSG(worst < 1.0, "slowest request %.3f s with 3 event streams on 1 request thread", worst);
    __atomic_store_n(&streams_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(sa[i].progress, "stream %d: no progress event (status %ld)", i, sa[i].status);
    }
    /* a drain with a stream open (a 4th, not aborted) stops promptly */
    streams_stop = 0;
    stream_arg last = {&d, 0, 0};
    pthread_t t4;
    pthread_create(&t4, NULL, stream_main, &last);
    dmn_sleep_ms(500);
    double t0 = dmn_now();
    dmn_cleanup(&d); /* SIGTERM, waits for the exit */
    double dt = dmn_now() - t0;
    CHECK_MSG(dt < 10, "drain with an open event stream took %.1f s", dt);
    __atomic_store_n(&streams_stop, 1, __ATOMIC_RELAXED);
    pthread_join(t4, NULL);
    CHECK_MSG(last.progress, "the drained stream had no progress event");
}
