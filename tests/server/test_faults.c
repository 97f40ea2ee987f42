/* test_faults.c: storage faults against the real daemon.
 *  - disk full: the database file may not grow (FLOWD_DB_NO_GROWTH=1, read
 *    by fd_db_open: max_page_count clamped to the current size; SQLITE_FULL
 *    as on a full disk), with a few free pages left for small writes: an upload answers 507 with a message, a training job ends failed
 *    with a message, the daemon keeps serving, and what was stored before is
 *    intact; without the cap the same upload works again.
 *  - a corrupted checkpoint (bytes flipped in model_versions.checkpoint):
 *    log_prob and the checkpoint download answer 500 "stored data is
 *    corrupt", and the daemon keeps serving the other models. */
#include "../test.h"

#include "daemon.h"

#include "../../core/model.h"
#include "../../server/db.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_FLOW "{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]}"
#define SCORE_BODY "{\"inputs\":[[0.5,0.25],[-1,0.5],[1.5,-0.3]]}"

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : "";
}
static const char *err_msg(const hresp *r) {
    return jstr(r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "error") : NULL, "message");
}

/* a training job to its end; its final state into state, the job object back */
static cJSON *train_job(dmn *d, const char *model, const char *flow, int epochs, char *state, size_t n) {
    char req[512];
    snprintf(req, sizeof req,
             "{\"model\":\"%s\",\"dataset\":{\"builtin\":\"moons\",\"n\":1000,\"seed\":1},\"flow\":%s,"
             "\"train\":{\"epochs\":%d,\"batch_size\":100}}",
             model, flow, epochs);
    long long id = submit_job(d, req);
    snprintf(state, n, "?");
    if (!id || wait_job(d, id, 60, state, n)) return NULL;
    return get_job(d, id);
}

static char *csv_rows(int n, size_t *len) {
    char *s = malloc((size_t)n * 24 + 8);
    size_t k = (size_t)sprintf(s, "a,b\n");
    for (int i = 0; i < n; i++) k += (size_t)sprintf(s + k, "%d.25,%d.5\n", i % 97, i % 13);
    *len = k;
    return s;
}

static long upload(dmn *d, const char *name, int rows, hresp *r) {
    size_t len;
    char *csv = csv_rows(rows, &len);
    char path[96];
    snprintf(path, sizeof path, "/v1/datasets?name=%s", name);
    hreq q = {.path = path, .ctype = "text/csv", .body = csv, .len = len};
    dmn_http(d, &q, r);
    free(csv);
    return r->status;
}

static long long sql_int(const char *dbpath, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int integrity_ok(const char *dbpath) {
    fd_db *db = NULL;
    char err[256] = "";
    int ok = fd_db_open(dbpath, &db, err, sizeof err) == 0 && fd_db_integrity_check(db, err, sizeof err) == 0;
    if (!ok) fprintf(stderr, "    integrity: %s\n", err);
    fd_db_close(db);
    return ok;
}

TEST_T(faults_disk_full_fails_cleanly, 120) {
    static const char *const quiet[] = {NULL};
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, quiet, NULL) == 0);
    char state[32];
    cJSON *j = train_job(&d, "before", SMALL_FLOW, 2, state, sizeof state);
    cJSON_Delete(j);
    REQUIRE(!strcmp(state, "succeeded"));
    hresp r, r0;
    REQUIRE(upload(&d, "small", 200, &r) == 201);
    char ds_id[64];
    snprintf(ds_id, sizeof ds_id, "%s", jstr(r.json, "id"));
    hresp_free(&r);
    http_post_json(&d, "/v1/models/before/log_prob", SCORE_BODY, &r0);
    REQUIRE(r0.status == 200);
    CHECK_EQ_INT(dmn_stop(&d), 0);

    /* a few free pages (of 4 KiB) for small writes, then no growth: small rows
     * still fit, a 20000-row dataset (160 KB of floats) or a checkpoint does
     * not */
    long long pages = sql_int(d.db, "PRAGMA page_count");
    REQUIRE(pages > 0);
    sqlite3 *db = NULL;
    REQUIRE(sqlite3_open(d.db, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "CREATE TABLE pad (x); INSERT INTO pad VALUES (zeroblob(48000)); DROP TABLE pad",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    long long free_pages = sql_int(d.db, "PRAGMA freelist_count");
    fprintf(stderr, "    database %lld pages, %lld free\n", sql_int(d.db, "PRAGMA page_count"), free_pages);
    /* disk full is retried like any transient error: 2 s here, not 300 */
    const char *env[] = {"FLOWD_DB_NO_GROWTH=1", "FLOWD_PUBLISH_RETRY=2", NULL};
    REQUIRE(dmn_start(&d, quiet, env) == 0);

    CHECK(upload(&d, "big", 20000, &r) == 507);
    CHECK_MSG(r.status == 507 && strstr(err_msg(&r), "full"), "upload on a full disk: %ld %s", r.status, r.body);
    hresp_free(&r);
    CHECK_MSG(dmn_healthy(&d), "the daemon stopped answering after a 507");

    j = train_job(&d, "during", "{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[64,64]}", 2, state, sizeof state);
    CHECK_MSG(!strcmp(state, "failed"), "job on a full disk ended %s", state);
    const char *msg = jstr(j, "error");
    CHECK_MSG(strstr(msg, "full") != NULL, "job error: %s", msg);
    fprintf(stderr, "    full disk: job error \"%s\"\n", msg);
    cJSON_Delete(j);
    CHECK_MSG(dmn_healthy(&d), "the daemon stopped answering after the failed job");

    /* what was stored before still serves, unchanged */
    http_post_json(&d, "/v1/models/before/log_prob", SCORE_BODY, &r);
    CHECK_MSG(r.status == 200 && r.len == r0.len && !memcmp(r.body, r0.body, r.len), "log_prob: %ld %s", r.status,
              r.body);
    hresp_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/v1/datasets/%s", ds_id);
    http_get(&d, path, &r);
    CHECK_MSG(r.status == 200 && !strcmp(jstr(r.json, "name"), "small"), "dataset: %ld %s", r.status, r.body);
    hresp_free(&r);
    CHECK_EQ_INT(dmn_stop(&d), 0);
    CHECK(integrity_ok(d.db));

    /* room again: the same upload succeeds */
    REQUIRE(dmn_start(&d, quiet, NULL) == 0);
    CHECK(upload(&d, "big", 20000, &r) == 201);
    hresp_free(&r);
    http_post_json(&d, "/v1/models/before/log_prob", SCORE_BODY, &r);
    CHECK(r.status == 200 && r.len == r0.len && !memcmp(r.body, r0.body, r.len));
    hresp_free(&r);
    hresp_free(&r0);
    dmn_cleanup(&d);
}

TEST_T(faults_corrupt_checkpoint_refused, 120) {
    static const char *const quiet[] = {NULL};
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, quiet, NULL) == 0);
    char state[32];
    cJSON *j = train_job(&d, "good", SMALL_FLOW, 2, state, sizeof state);
    cJSON_Delete(j);
    REQUIRE(!strcmp(state, "succeeded"));
    j = train_job(&d, "bad", SMALL_FLOW, 2, state, sizeof state);
    cJSON_Delete(j);
    REQUIRE(!strcmp(state, "succeeded"));
    hresp r0, r;
    http_post_json(&d, "/v1/models/good/log_prob", SCORE_BODY, &r0);
    REQUIRE(r0.status == 200);
    CHECK_EQ_INT(dmn_stop(&d), 0);

    /* flip a few bytes in the middle of bad's checkpoint (the parameters) */
    sqlite3 *db = NULL;
    REQUIRE(sqlite3_open(d.db, &db) == SQLITE_OK);
    char *e = NULL;
    int rc = sqlite3_exec(db,
                          "UPDATE model_versions SET checkpoint = "
                          "substr(checkpoint, 1, length(checkpoint) / 2) || x'deadbeef' || "
                          "substr(checkpoint, length(checkpoint) / 2 + 5) "
                          "WHERE model_id = (SELECT id FROM models WHERE name = 'bad')",
                          NULL, NULL, &e);
    CHECK_MSG(rc == SQLITE_OK && sqlite3_changes(db) == 1, "update: %s", e ? e : "");
    sqlite3_free(e);
    sqlite3_close(db);

    REQUIRE(dmn_start(&d, quiet, NULL) == 0);
    for (int rep = 0; rep < 2; rep++) { /* twice: a refused load is not cached */
        http_post_json(&d, "/v1/models/bad/log_prob", SCORE_BODY, &r);
        CHECK_MSG(r.status == 500 && !strcmp(hresp_error_code(&r), "internal") && strstr(err_msg(&r), "corrupt"),
                  "log_prob of a corrupt checkpoint: %ld %s", r.status, r.body);
        if (rep == 0) fprintf(stderr, "    log_prob: %ld %s\n", r.status, r.body);
        hresp_free(&r);
    }
    http_get(&d, "/v1/models/bad/versions/1/checkpoint", &r);
    CHECK_MSG(r.status == 500 && strstr(err_msg(&r), "corrupt"), "download of a corrupt checkpoint: %ld %.300s",
              r.status, r.body);
    fprintf(stderr, "    download: %ld %.300s\n", r.status, r.body);
    hresp_free(&r);
    http_post_json(&d, "/v1/models/bad/sample", "{\"n\":3,\"seed\":1}", &r);
    CHECK_MSG(r.status == 500 && strstr(err_msg(&r), "corrupt"), "sample: %ld %s", r.status, r.body);
    hresp_free(&r);
    /* the daemon keeps serving the other model, unchanged */
    CHECK(dmn_healthy(&d));
    http_post_json(&d, "/v1/models/good/log_prob", SCORE_BODY, &r);
    CHECK_MSG(r.status == 200 && r.len == r0.len && !memcmp(r.body, r0.body, r.len), "good log_prob: %ld %s",
              r.status, r.body);
    hresp_free(&r);
    http_get(&d, "/v1/models/good/versions/1/checkpoint", &r);
    nf_model *m = NULL;
    char err[256] = "";
    CHECK_MSG(r.status == 200 && nf_model_load(r.body, r.len, &m, err, sizeof err) == 0, "good download: %ld %s",
              r.status, err);
    nf_model_free(m);
    hresp_free(&r);
    hresp_free(&r0);
    dmn_cleanup(&d);
}
