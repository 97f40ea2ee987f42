/* test_bounded.c: what one request may cost the daemon, beyond its body
 * (issue 15):
 *  - server/stream.c writes, in blocks of any size from 1 byte, the text
 *    cJSON prints for the whole document (non-finite numbers as null);
 *  - a job is stored as its parsed request printed compactly: a body padded
 *    with 10 MB of whitespace stores a row of its fields' size, and GET
 *    /v1/jobs/{id} gives the same request back;
 *  - a sample answer of 2 Mi rows (JSON and CSV) and an encode answer of
 *    100,000 rows are written as they are sent: valid JSON that matches
 *    openapi.yaml, every row there, and the daemon's peak RSS grows by the
 *    numbers (8 bytes a row), not by a document of them;
 *  - an answer whose numbers do not fit --max-memory is refused before any
 *    work: 413 naming the limit and the bytes it needed (also a /v2 infer
 *    sample, whose answer is printed whole: its numbers and text). */
#include "../test.h"

#include "../../server/stream.h"
#include "daemon.h"
#include "oapi.h"

#include "../../core/data.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* an answer of n rows of D reals, log_prob, labels and a tail, read in
 * blocks of blk bytes; and the same document printed whole by cJSON */
static char *stream_text(int n, int D, size_t blk, int csv) {
    nf_real *x = malloc((size_t)n * D * sizeof *x), *lp = malloc((size_t)n * sizeof *lp);
    int *lb = malloc((size_t)n * sizeof *lb);
    for (int i = 0; i < n * D; i++) x[i] = (nf_real)(i % 7 == 3 ? NAN : (i - 40) * 1.37e-3 * (i % 5 ? 1 : -1e30));
    for (int i = 0; i < n; i++) lp[i] = i % 9 == 2 ? INFINITY : -(nf_real)i / 3, lb[i] = i % 4;
    fd_answer *a;
    if (csv) {
        free(lp);
        free(lb);
        a = fd_answer_csv();
        fd_answer_reals(a, NULL, x, (size_t)n, D);
        fd_answer_tail(a, NULL);
    } else {
        cJSON *h = cJSON_CreateObject();
        cJSON_AddStringToObject(h, "model", "m\"q");
        cJSON_AddNumberToObject(h, "version", 3);
        a = fd_answer_json(h);
        fd_answer_reals(a, "samples", x, (size_t)n, D);
        fd_answer_ints(a, "labels", lb, (size_t)n);
        cJSON *mid = cJSON_CreateObject();
        cJSON_AddStringToObject(mid, "trace", "exact");
        fd_answer_members(a, mid);
        fd_answer_reals(a, "log_prob", lp, (size_t)n, 0);
        fd_answer_tail(a, cJSON_CreateObject());
    }
    if (!fd_answer_ok(a)) {
        fd_answer_free(a);
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    char *t = malloc(cap);
    ssize_t k;
    while ((k = fd_answer_read(a, t + len, blk)) != -1) {
        if (k <= 0 || len + blk + 1 > cap) break;
        len += (size_t)k;
    }
    t[len] = 0;
    fd_answer_free(a);
    return t;
}

static char *whole_text(int n, int D) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", "m\"q");
    cJSON_AddNumberToObject(o, "version", 3);
    cJSON *s = cJSON_AddArrayToObject(o, "samples"), *l, *p;
    char num[32];
    for (int i = 0; i < n; i++) {
        cJSON *row = cJSON_CreateArray();
        for (int j = 0; j < D; j++) {
            int q = i * D + j;
            double v = (nf_real)(q % 7 == 3 ? NAN : (q - 40) * 1.37e-3 * (q % 5 ? 1 : -1e30));
            snprintf(num, sizeof num, "%.9g", v);
            cJSON_AddItemToArray(row, isfinite(v) ? cJSON_CreateRaw(num) : cJSON_CreateNull());
        }
        cJSON_AddItemToArray(s, row);
    }
    l = cJSON_AddArrayToObject(o, "labels");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(l, cJSON_CreateNumber(i % 4));
    cJSON_AddStringToObject(o, "trace", "exact");
    p = cJSON_AddArrayToObject(o, "log_prob");
    for (int i = 0; i < n; i++) {
        double v = i % 9 == 2 ? INFINITY : -(nf_real)i / 3;
        snprintf(num, sizeof num, "%.9g", v);
        cJSON_AddItemToArray(p, isfinite(v) ? cJSON_CreateRaw(num) : cJSON_CreateNull());
    }
    char *t = cJSON_PrintUnformatted(o), *u = malloc(strlen(t) + 2);
    sprintf(u, "%s\n", t);
    free(t);
    cJSON_Delete(o);
    return u;
}

TEST(bounded_stream_text_in_any_block_size) {
    static const size_t blocks[] = {1, 2, 7, 63, 64, 65, 100, 4096, 65536};
    char *want = whole_text(200, 3);
    REQUIRE(want);
    char *csv_want = NULL;
    for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++) {
        char *got = stream_text(200, 3, blocks[b], 0);
        CHECK_MSG(got && !strcmp(got, want), "block %zu: %.200s\n    want %.200s", blocks[b], got, want);
        free(got);
        got = stream_text(200, 3, blocks[b], 1);
        if (!csv_want) csv_want = got;
        else {
            CHECK_MSG(got && !strcmp(got, csv_want), "CSV in blocks of %zu differs", blocks[b]);
            free(got);
        }
    }
    /* the CSV as nf_data_csv writes it */
    nf_real *x = malloc(600 * sizeof *x);
    for (int i = 0; i < 600; i++) x[i] = (nf_real)(i % 7 == 3 ? NAN : (i - 40) * 1.37e-3 * (i % 5 ? 1 : -1e30));
    size_t len = 0;
    char *c = nf_data_csv(x, 200, 3, NULL, &len);
    CHECK(c && csv_want && !strcmp(c, csv_want));
    free(c);
    free(x);
    free(csv_want);
    /* empty arrays */
    char *e = stream_text(0, 3, 5, 0);
    CHECK_MSG(e && !strcmp(e, "{\"model\":\"m\\\"q\",\"version\":3,\"samples\":[],\"labels\":[],\"trace\":\"exact\",\"log_prob\":[]}\n"), "%s", e);
    free(e);
    free(want);
}

static long long raw_len(const char *db, long long id) {
    sqlite3 *h = NULL;
    long long v = -1;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "SELECT length(request) FROM jobs WHERE id = ?1", -1, &st, NULL) ==
            SQLITE_OK) {
            sqlite3_bind_int64(st, 1, id);
            if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return v;
}

TEST_T(bounded_job_body_stored_compact, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    static const char *const parts[] = {
        "{", "\"model\"", ":", "\"pad\"", ",", "\"dataset\"", ":", "{", "\"builtin\"", ":",
        "\"moons\"", ",", "\"n\"", ":", "500", "}", ",", "\"flow\"", ":", "{", "\"preset\"", ":",
        "\"realnvp\"", ",", "\"depth\"", ":", "2", ",", "\"hidden\"", ":", "[", "8", "]", "}", ",",
        "\"train\"", ":", "{", "\"epochs\"", ":", "1", "}", "}"};
    size_t np = sizeof parts / sizeof parts[0], pad = 10u << 20, each = pad / (np - 1);
    char *body = malloc(pad + 4096), *p = body;
    REQUIRE(body);
    for (size_t i = 0; i < np; i++) {
        p += sprintf(p, "%s", parts[i]);
        if (i + 1 < np) {
            for (size_t k = 0; k < each; k++) *p++ = " \n\t\r"[k & 3];
        }
    }
    *p = 0;
    size_t len = (size_t)(p - body);
    CHECK(len > pad);
    hresp r;
    hreq q = {.method = "POST", .path = "/v1/jobs", .ctype = "application/json", .body = body,
              .len = len, .has_body = 1, .timeout_s = 60};
    REQUIRE(dmn_http(&d, &q, &r) == 0);
    CHECK_MSG(r.status == 202, "%ld %s", r.status, r.body);
    long long id = atoll(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.json, "id")) ?: "0");
    hresp_free(&r);
    free(body);
    REQUIRE(id > 0);
    long long stored = raw_len(d.db, id);
    CHECK_MSG(stored > 0 && stored < 200, "the stored request is %lld bytes", stored);
    cJSON *j = get_job(&d, id);
    char *req = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "request"));
    CHECK_MSG(req && !strcmp(req, "{\"model\":\"pad\",\"dataset\":{\"builtin\":\"moons\",\"n\":500},"
                                  "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},"
                                  "\"train\":{\"epochs\":1}}"),
              "request: %s", req);
    free(req);
    cJSON_Delete(j);
    char st[32];
    CHECK(wait_job(&d, id, 60, st, sizeof st) == 0 && !strcmp(st, "succeeded"));
    dmn_cleanup(&d);
}

extern const char fd_asset_openapi[];
extern const unsigned long fd_asset_openapi_len;

static void check_schema(const char *name, const cJSON *v) {
    char err[512] = "";
    cJSON *doc = oapi_parse(fd_asset_openapi, fd_asset_openapi_len, err, sizeof err);
    CHECK_MSG(doc, "%s", err);
    if (doc) CHECK_MSG(oapi_check(doc, name, v, err, sizeof err) == 0, "%s: %s", name, err);
    cJSON_Delete(doc);
}

/* a copy of an answer with each array member cut to its first 100 items */
static cJSON *cut_arrays(const cJSON *o) {
    cJSON *c = cJSON_CreateObject();
    for (const cJSON *m = o ? o->child : NULL; m; m = m->next) {
        if (!cJSON_IsArray(m)) {
            cJSON_AddItemToObject(c, m->string, cJSON_Duplicate(m, 1));
            continue;
        }
        cJSON *a = cJSON_AddArrayToObject(c, m->string);
        int k = 0;
        for (const cJSON *e = m->child; e && k < 100; e = e->next, k++)
            cJSON_AddItemToArray(a, cJSON_Duplicate(e, 1));
    }
    return c;
}

#define BIG_N 2000000

TEST_T(bounded_large_answers_streamed, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const args[] = {"--max-sample", "2000000", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    hresp r;
    /* warm up (the model loaded, the first answer's buffers), then the resting peak */
    http_post_json(&d, "/v1/models/m/sample", "{\"n\":1000,\"seed\":3}", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    long rest = dmn_peak_kib(&d);
    char body[128];
    snprintf(body, sizeof body, "{\"n\":%d,\"seed\":7,\"return_log_prob\":true}", BIG_N);
    hreq q = {.method = "POST", .path = "/v1/models/m/sample", .ctype = "application/json",
              .body = body, .len = strlen(body), .has_body = 1, .timeout_s = 120};
    REQUIRE(dmn_http(&d, &q, &r) == 0);
    CHECK_MSG(r.status == 200, "%ld %.300s", r.status, r.body);
    char te[64];
    CHECK(hresp_header(&r, "Transfer-Encoding", te, sizeof te) && strstr(te, "chunked"));
    CHECK_MSG(r.json != NULL, "the answer (%zu bytes) is not JSON", r.len);
    const cJSON *smp = cJSON_GetObjectItemCaseSensitive(r.json, "samples");
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(r.json, "log_prob");
    CHECK_EQ_INT(cJSON_GetArraySize(smp), BIG_N);
    CHECK_EQ_INT(cJSON_GetArraySize(lp), BIG_N);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetArrayItem(smp, BIG_N - 1)), 2);
    CHECK(r.len > 30u * BIG_N && r.body[r.len - 1] == '\n');
    /* the schema, on a copy cut to its first rows (the checker walks every item) */
    cJSON *cut = cut_arrays(r.json);
    check_schema("SampleResponse", cut);
    cJSON_Delete(cut);
    /* the same draw again, as CSV: the same numbers, row for row */
    char *json_first = cJSON_PrintUnformatted(cJSON_GetArrayItem(smp, 12345));
    hresp_free(&r);
    hreq qc = q;
    qc.accept = "text/csv";
    snprintf(body, sizeof body, "{\"n\":%d,\"seed\":7}", BIG_N);
    qc.len = strlen(body);
    REQUIRE(dmn_http(&d, &qc, &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    long lines = 0;
    const char *row = NULL;
    for (size_t i = 0; i < r.len; i++)
        if (r.body[i] == '\n' && ++lines == 12346) row = r.body + i + 1;
    CHECK_EQ_INT(lines, BIG_N + 1);
    CHECK(!strncmp(r.body, "x0,x1\n", 6));
    char want[96];
    if (json_first) {
        snprintf(want, sizeof want, "%s", json_first + 1); /* "[a,b]" as "a,b" */
        want[strlen(want) - 1] = 0;
    }
    CHECK_MSG(row && json_first && !strncmp(row, want, strlen(want)) && row[strlen(want)] == '\n',
              "CSV row %.40s, JSON row %s", row ? row : "", json_first ? json_first : "");
    free(json_first);
    hresp_free(&r);
    /* encode 100,000 rows */
    size_t cap = 100000 * 24 + 64, k = 0;
    char *eb = malloc(cap);
    REQUIRE(eb);
    k += (size_t)snprintf(eb, cap, "{\"inputs\":[");
    for (int i = 0; i < 100000; i++)
        k += (size_t)snprintf(eb + k, cap - k, "%s[%.3f,%.3f]", i ? "," : "", (i % 200) / 50.0 - 2, (i % 77) / 30.0 - 1);
    k += (size_t)snprintf(eb + k, cap - k, "]}");
    hreq qe = {.method = "POST", .path = "/v1/models/m/encode", .ctype = "application/json",
               .body = eb, .len = k, .has_body = 1, .timeout_s = 60};
    REQUIRE(dmn_http(&d, &qe, &r) == 0);
    free(eb);
    CHECK_MSG(r.status == 200 && r.json, "%ld %.200s", r.status, r.body);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "latents")), 100000);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "log_det")), 100000);
    cut = cut_arrays(r.json);
    check_schema("EncodeResponse", cut);
    cJSON_Delete(cut);
    hresp_free(&r);
    /* the peak: the 2 Mi samples' numbers are 16 MiB, log_prob 8 MiB; the
     * text (some 60 MB) was never whole in the daemon */
    long peak = dmn_peak_kib(&d);
    fprintf(stderr, "    peak RSS %ld KiB, %ld KiB before the large answers\n", peak, rest);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* a sanitizer's allocator holds freed memory: the bound is the release build's */
    (void)rest;
#else
    CHECK_MSG(peak - rest < 48 * 1024, "peak RSS grew by %ld KiB", peak - rest);
#endif
    CHECK(dmn_healthy(&d));
    dmn_cleanup(&d);
}

TEST_T(bounded_answer_over_memory_refused, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const args[] = {"--max-sample", "2000000", NULL};
    static const char *const env[] = {"FLOWD_MAX_MEMORY=8388608", NULL};
    REQUIRE(dmn_start(&d, args, env) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    hresp r;
    char body[96];
    snprintf(body, sizeof body, "{\"n\":%d}", BIG_N);
    http_post_json(&d, "/v1/models/m/sample", body, &r);
    CHECK_MSG(r.status == 413, "%ld %s", r.status, r.body);
    CHECK(!strcmp(hresp_error_code(&r), "payload_too_large"));
    const cJSON *det = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r.json, "error"), "details");
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(det, "limit")) ?: "", "memory_budget"));
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(det, "max_bytes")) == 8388608);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(det, "wanted_bytes")) >= 16e6);
    hresp_free(&r);
    /* the same through the standard protocol (its plain error body) */
    snprintf(body, sizeof body, "{\"inputs\":[],\"parameters\":{\"op\":\"sample\",\"n\":%d}}", BIG_N);
    http_post_json(&d, "/v2/models/m/infer", body, &r);
    CHECK_MSG(r.status == 413 && strstr(r.body, "--max-memory"), "%ld %s", r.status, r.body);
    hresp_free(&r);
    http_post_json(&d, "/v2/models/m/infer", "{\"inputs\":[],\"parameters\":{\"op\":\"sample\",\"n\":1000}}", &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    /* what fits is answered */
    http_post_json(&d, "/v1/models/m/sample", "{\"n\":100000}", &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "samples")), 100000);
    hresp_free(&r);
    dmn_cleanup(&d);
}
