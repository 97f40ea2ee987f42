/* test_blobs.c: model files, optimizer and training states longer than
 * one SQLite blob (issue 15; server/blobs.h, migrations/0004_blob_chunks.sql).
 *
 * FLOWD_DB_MAX_LENGTH lowers SQLITE_LIMIT_LENGTH on every connection, as a
 * build's limit would, so that values of a few MB must go into many chunks
 * (a single blob over the limit is SQLITE_TOOBIG):
 *  - through fd_db: a chunked model file, optimizer state and training
 *    state read back byte for byte; a replaced state leaves no old chunks;
 *    a missing chunk is FD_ECORRUPT, not a short value; deleting a version
 *    or a job takes its chunks; the integrity check is clean;
 *  - a database written before migration 0004 (single-blob rows) migrates
 *    and still reads;
 *  - the real daemon: a job whose training state is chunked is killed -9,
 *    resumes at exactly the saved step and ends with the same parameters
 *    as an uninterrupted run; the chunked model file downloads byte for byte and
 *    its sha256 is the one GET /v1/models/{name} reports. */
#include "../test.h"

#include "../../core/model.h"
#include "../../core/nf.h"
#include "../../server/db.h"
#include "daemon.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REQUIRE_MSG(cond, ...)                                                                     \
    do {                                                                                           \
        int ok_ = (cond);                                                                          \
        CHECK_MSG(ok_, __VA_ARGS__);                                                               \
        REQUIRE(ok_);                                                                              \
    } while (0)
#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        CHECK_MSG(a_ && b_ && !strcmp(a_, b_), "'%s' != '%s'", a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
    } while (0)

#define LIMIT 262144 /* FLOWD_DB_MAX_LENGTH in these tests: chunks of 240 KiB */

static long long raw_int(const char *path, const char *sql, long long arg) {
    sqlite3 *h = NULL;
    long long v = -1;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(h, 5000);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK) {
            if (sqlite3_bind_parameter_count(st) >= 1) sqlite3_bind_int64(st, 1, arg);
            if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return v;
}

static int raw_exec(const char *path, const char *sql) {
    sqlite3 *h = NULL;
    int rc = sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_exec(h, sql, NULL, NULL, NULL);
    sqlite3_close(h);
    return rc;
}

/* the chunks of owner concatenated, read with plain SQL (malloc'd) */
static unsigned char *raw_chunks(const char *path, const char *owner, size_t *len) {
    sqlite3 *h = NULL;
    unsigned char *buf = NULL;
    *len = 0;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "SELECT data FROM blob_chunks WHERE owner = ?1 ORDER BY idx", -1,
                               &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
            while (sqlite3_step(st) == SQLITE_ROW) {
                size_t m = (size_t)sqlite3_column_bytes(st, 0);
                unsigned char *t = realloc(buf, *len + m + 1);
                if (!t) break;
                buf = t;
                memcpy(buf + *len, sqlite3_column_blob(st, 0), m);
                *len += m;
            }
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return buf;
}

static int integrity_ok(const char *path) {
    sqlite3 *h = NULL;
    int ok = 0;
    if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            ok = !strcmp((const char *)sqlite3_column_text(st, 0), "ok");
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return ok;
}

static unsigned char *pattern(size_t n, unsigned seed) {
    unsigned char *p = malloc(n);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; p && i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
    return p;
}

static void tmp_db(char path[64]) {
    snprintf(path, 64, "/tmp/flowd_test_blobs_XXXXXX");
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
}

static void tmp_db_remove(const char *path) {
    char p[80];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

TEST(blobs_db_chunked_roundtrip) {
    char path[64], err[512] = "", lim[32];
    tmp_db(path);
    snprintf(lim, sizeof lim, "%d", LIMIT);
    setenv("FLOWD_DB_MAX_LENGTH", lim, 1);
    fd_db *db = NULL;
    REQUIRE(fd_db_open(path, &db, err, sizeof err) == 0);
    REQUIRE_MSG(fd_db_migrate(db, NULL, err, sizeof err) == 0, "%s", err);
    size_t ck_len = 3 * 1000 * 1000 + 17, opt_len = 1500000, st_len = 5 * 1000 * 1000 + 3;
    unsigned char *ck = pattern(ck_len, 1), *opt = pattern(opt_len, 2), *stb = pattern(st_len, 3);
    REQUIRE(ck && opt && stb);
    /* one blob over the limit is refused by SQLite itself: the chunks are needed */
    {
        sqlite3 *h = NULL;
        REQUIRE(sqlite3_open(path, &h) == SQLITE_OK);
        sqlite3_limit(h, SQLITE_LIMIT_LENGTH, LIMIT);
        sqlite3_stmt *st = NULL;
        REQUIRE(sqlite3_prepare_v2(h, "SELECT length(?1)", -1, &st, NULL) == SQLITE_OK);
        CHECK_EQ_INT(sqlite3_bind_blob64(st, 1, ck, ck_len, SQLITE_STATIC), SQLITE_TOOBIG);
        sqlite3_finalize(st);
        sqlite3_close(h);
    }
    /* a job that publishes the chunked model file and optimizer state */
    int64_t id = 0;
    int existed = 0, v = 0;
    REQUIRE(fd_db_job_create(db, NULL, "big", "{}", &id, &existed, err, sizeof err) == 0);
    int64_t claimed = 0;
    char *req = NULL;
    REQUIRE(fd_db_job_claim(db, &claimed, &req, err, sizeof err) == 0);
    free(req);
    CHECK_EQ_INT(claimed, id);
    /* the training state, twice: the second replaces the first's chunks */
    REQUIRE_MSG(fd_db_train_state_put(db, id, 7, stb, st_len, err, sizeof err) == 0, "%s", err);
    REQUIRE_MSG(fd_db_train_state_put(db, id, 9, stb, st_len - 300000, err, sizeof err) == 0, "%s", err);
    long long nst = raw_int(path, "SELECT chunks FROM job_train_state WHERE job_id = ?1", id);
    CHECK_MSG(nst >= 20, "training state in %lld chunks", nst);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM blob_chunks WHERE owner LIKE 'train_state/%'", 0), nst);
    void *got = NULL;
    size_t got_len = 0;
    int64_t step = 0;
    REQUIRE_MSG(fd_db_train_state_get(db, id, &got, &got_len, &step, err, sizeof err) == 0, "%s", err);
    CHECK(step == 9 && got_len == st_len - 300000 && !memcmp(got, stb, got_len));
    free(got);
    REQUIRE_MSG(fd_db_job_publish_ex(db, id, "big", ck, ck_len, 2, 0, "{}", "{}", "{}", 1, opt,
                                     opt_len, &v, err, sizeof err) == 0,
                "%s", err);
    CHECK_EQ_INT(v, 1);
    /* publishing dropped the state, and its chunks with it */
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM blob_chunks WHERE owner LIKE 'train_state/%'", 0), 0);
    long long nck = raw_int(path, "SELECT checkpoint_chunks FROM model_versions", 0);
    long long nopt = raw_int(path, "SELECT optimizer_chunks FROM model_versions", 0);
    CHECK_MSG(nck == 13 && nopt == 7, "chunks: checkpoint %lld, optimizer %lld", nck, nopt);
    CHECK_EQ_INT(raw_int(path, "SELECT length(checkpoint) FROM model_versions", 0), 0);
    CHECK_EQ_INT(raw_int(path, "SELECT max(length(data)) FROM blob_chunks", 0), LIMIT - LIMIT / 16);
    int gv = 0;
    REQUIRE_MSG(fd_db_version_get(db, "big", 0, &got, &got_len, &gv, err, sizeof err) == 0, "%s", err);
    CHECK(gv == 1 && got_len == ck_len && !memcmp(got, ck, ck_len));
    free(got);
    REQUIRE_MSG(fd_db_version_optimizer(db, "big", 1, &got, &got_len, err, sizeof err) == 0, "%s", err);
    CHECK(got_len == opt_len && !memcmp(got, opt, opt_len));
    free(got);
    /* the recorded sha256 is the whole file's */
    cJSON *m = NULL;
    REQUIRE(fd_db_model_get(db, "big", &m, err, sizeof err) == 0);
    char hex[65];
    fd_sha256_hex(ck, ck_len, hex);
    const cJSON *v0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "versions"), 0);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v0, "sha256")), hex);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v0, "size_bytes")) == (double)ck_len);
    cJSON_Delete(m);
    CHECK(integrity_ok(path));
    /* a lost chunk is corruption, never a short model */
    REQUIRE(raw_exec(path, "DELETE FROM blob_chunks WHERE owner LIKE 'checkpoint/%' AND idx = 5") == SQLITE_OK);
    got = NULL;
    CHECK_EQ_INT(fd_db_version_get(db, "big", 1, &got, &got_len, &gv, err, sizeof err), FD_ECORRUPT);
    CHECK_MSG(strstr(err, "corrupt") && !got, "err: %s", err);
    /* a second, small version is one blob as before; deleting the model
     * takes every chunk */
    REQUIRE(fd_db_version_add(db, "big", ck, 1000, 2, 0, "{}", "{}", "{}", 0, &v, err, sizeof err) == 0);
    CHECK_EQ_INT(raw_int(path, "SELECT checkpoint_chunks FROM model_versions WHERE version = 2", 0), 0);
    REQUIRE(fd_db_version_get(db, "big", 2, &got, &got_len, &gv, err, sizeof err) == 0);
    CHECK(got_len == 1000 && !memcmp(got, ck, 1000));
    free(got);
    REQUIRE(fd_db_model_delete(db, "big", err, sizeof err) == 0);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM blob_chunks", 0), 0);
    CHECK(integrity_ok(path));
    fd_db_close(db);
    free(ck);
    free(opt);
    free(stb);
    tmp_db_remove(path);
}

/* the layout of migrations 0001-0003, as a database written before 0004 */
extern const struct { int version; const char *name; const char *sql; size_t len; } fd_migrations[];
extern const int fd_migrations_count;

TEST(blobs_db_pre_0004_rows_still_read) {
    char path[64], err[512] = "";
    tmp_db(path);
    sqlite3 *h = NULL;
    REQUIRE(sqlite3_open(path, &h) == SQLITE_OK);
    REQUIRE(sqlite3_exec(h, "PRAGMA journal_mode=WAL; CREATE TABLE flowd_migrations (version "
                            "INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL, "
                            "applied_at TEXT NOT NULL)",
                         NULL, NULL, NULL) == SQLITE_OK);
    int old = 0;
    for (int i = 0; i < fd_migrations_count; i++) {
        if (fd_migrations[i].version > 3) continue;
        REQUIRE(sqlite3_exec(h, fd_migrations[i].sql, NULL, NULL, NULL) == SQLITE_OK);
        char hex[65];
        fd_sha256_hex(fd_migrations[i].sql, fd_migrations[i].len, hex);
        sqlite3_stmt *st = NULL;
        REQUIRE(sqlite3_prepare_v2(h, "INSERT INTO flowd_migrations VALUES (?1, ?2, ?3, 'x')", -1,
                                   &st, NULL) == SQLITE_OK);
        sqlite3_bind_int(st, 1, fd_migrations[i].version);
        sqlite3_bind_text(st, 2, fd_migrations[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, hex, -1, SQLITE_STATIC);
        CHECK_EQ_INT(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
        old++;
    }
    CHECK_EQ_INT(old, 3);
    size_t ck_len = 2000000, st_len = 700000;
    unsigned char *ck = pattern(ck_len, 4), *stb = pattern(st_len, 5);
    char hex[65];
    fd_sha256_hex(ck, ck_len, hex);
    sqlite3_stmt *st = NULL;
    REQUIRE(sqlite3_exec(h, "INSERT INTO models (id, name) VALUES (1, 'old'); INSERT INTO jobs "
                            "(id, model, request, state) VALUES (1, 'old', '{}', 'running')",
                         NULL, NULL, NULL) == SQLITE_OK);
    REQUIRE(sqlite3_prepare_v2(h, "INSERT INTO model_versions (model_id, version, checkpoint, sha256, "
                                  "size_bytes, dim, context_dim, config, preprocess, metrics, "
                                  "optimizer) VALUES (1, 1, ?1, ?2, ?3, 2, 0, '{}', '{}', '{}', ?4)",
                               -1, &st, NULL) == SQLITE_OK);
    sqlite3_bind_blob64(st, 1, ck, ck_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, hex, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)ck_len);
    sqlite3_bind_blob64(st, 4, stb, 1234, SQLITE_STATIC);
    CHECK_EQ_INT(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    REQUIRE(sqlite3_prepare_v2(h, "INSERT INTO job_train_state (job_id, step, state) VALUES (1, 5, ?1)",
                               -1, &st, NULL) == SQLITE_OK);
    sqlite3_bind_blob64(st, 1, stb, st_len, SQLITE_STATIC);
    CHECK_EQ_INT(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(h);

    fd_db *db = NULL;
    int applied = 0;
    REQUIRE(fd_db_open(path, &db, err, sizeof err) == 0);
    REQUIRE_MSG(fd_db_migrate(db, &applied, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(applied, fd_db_binary_schema_version() - 3);
    void *got = NULL;
    size_t got_len = 0;
    int gv = 0;
    int64_t step = 0;
    REQUIRE_MSG(fd_db_version_get(db, "old", 0, &got, &got_len, &gv, err, sizeof err) == 0, "%s", err);
    CHECK(gv == 1 && got_len == ck_len && !memcmp(got, ck, ck_len));
    free(got);
    REQUIRE(fd_db_version_optimizer(db, "old", 1, &got, &got_len, err, sizeof err) == 0);
    CHECK(got_len == 1234 && !memcmp(got, stb, 1234));
    free(got);
    REQUIRE(fd_db_train_state_get(db, 1, &got, &got_len, &step, err, sizeof err) == 0);
    CHECK(step == 5 && got_len == st_len && !memcmp(got, stb, st_len));
    free(got);
    /* a new state of the old job, stored in chunks under a low limit, replaces the blob */
    fd_db_close(db);
    setenv("FLOWD_DB_MAX_LENGTH", "262144", 1);
    REQUIRE(fd_db_open(path, &db, err, sizeof err) == 0);
    REQUIRE_MSG(fd_db_train_state_put(db, 1, 6, ck, ck_len, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(raw_int(path, "SELECT length(state) FROM job_train_state", 0), 0);
    REQUIRE(fd_db_train_state_get(db, 1, &got, &got_len, &step, err, sizeof err) == 0);
    CHECK(step == 6 && got_len == ck_len && !memcmp(got, ck, ck_len));
    free(got);
    CHECK(fd_db_integrity_check(db, err, sizeof err) == 0);
    fd_db_close(db);
    free(ck);
    free(stb);
    tmp_db_remove(path);
}

/* ---- the daemon ----------------------------------------------------------------------------- */

/* realnvp, 4 couplings of hidden [320,320] on 2-D data: a 1.7 MB model
 * file and a training state about 4 times that */
#define BIG_JOB(model, epochs)                                                                     \
    "{\"model\":\"" model "\",\"dataset\":{\"builtin\":\"moons\",\"n\":2000,\"seed\":3},"           \
    "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[320,320]},"                          \
    "\"train\":{\"epochs\":" #epochs ",\"batch_size\":250,\"seed\":5,\"log_every\":4}}"

static char *get_bytes(dmn *d, const char *path, size_t *len) {
    hresp r;
    hreq q = {.path = path, .timeout_s = 60};
    if (dmn_http(d, &q, &r) || r.status != 200) {
        fprintf(stderr, "    GET %s: %ld\n", path, r.status);
        hresp_free(&r);
        return NULL;
    }
    char *b = r.body;
    *len = r.len;
    r.body = NULL;
    hresp_free(&r);
    return b;
}

static const char *version_sha(dmn *d, const char *model, char out[65]) {
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", model);
    hresp r;
    out[0] = 0;
    if (!http_get(d, path, &r) && r.status == 200) {
        const cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "versions"), 0);
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "sha256"));
        if (s) snprintf(out, 65, "%s", s);
    }
    hresp_free(&r);
    return out;
}

TEST_T(blobs_daemon_kill9_resumes_from_chunks, 240) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    char lim[48];
    snprintf(lim, sizeof lim, "FLOWD_DB_MAX_LENGTH=%d", LIMIT);
    const char *const env[] = {lim, "FLOWD_CHECKPOINT_SECONDS=0.2", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    long long id = submit_job(&d, BIG_JOB("big", 24));
    REQUIRE(id > 0);
    /* a saved state in chunks, some steps in */
    double t0 = dmn_now();
    long long chunks = 0, saved = -1;
    while (dmn_now() - t0 < 90) {
        chunks = raw_int(d.db, "SELECT chunks FROM job_train_state WHERE job_id = ?1", id);
        saved = raw_int(d.db, "SELECT step FROM job_train_state WHERE job_id = ?1", id);
        if (chunks > 1 && saved >= 8) break;
        dmn_sleep_ms(20);
    }
    dmn_kill9(&d);
    CHECK_MSG(chunks >= 10 && saved >= 8, "saved state: step %lld in %lld chunks", saved, chunks);
    CHECK(integrity_ok(d.db));
    saved = raw_int(d.db, "SELECT step FROM job_train_state WHERE job_id = ?1", id);
    chunks = raw_int(d.db, "SELECT chunks FROM job_train_state WHERE job_id = ?1", id);
    char owner[64];
    snprintf(owner, sizeof owner, "train_state/%lld", id);
    size_t sl = 0;
    unsigned char *sb = raw_chunks(d.db, owner, &sl);
    CHECK_MSG(sb && sl > 4 * 1000 * 1000, "training state of %zu bytes", sl);
    free(sb);

    REQUIRE(dmn_start(&d, NULL, env) == 0);
    char st[32], want[64];
    REQUIRE(wait_job(&d, id, 150, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "succeeded"), "state %s", st);
    snprintf(want, sizeof want, "resuming at step %lld", saved);
    CHECK_MSG(dmn_log_has(&d, want), "no '%s' in the log", want);
    /* the same job without the kill: the same model file */
    long long ref = submit_job(&d, BIG_JOB("ref", 24));
    REQUIRE(ref > 0);
    REQUIRE(wait_job(&d, ref, 150, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "succeeded"), "reference state %s", st);
    /* (the model files differ in their names' noise keys; the parameters
     * must not: the same scores, to the last digit) */
    const char *rows = "{\"inputs\":[[0.5,0.25],[-1,0.5],[2,-0.3],[0.1,0.9]]}";
    hresp a, b;
    http_post_json(&d, "/v1/models/big/log_prob", rows, &a);
    http_post_json(&d, "/v1/models/ref/log_prob", rows, &b);
    char *la = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(a.json, "log_prob"));
    char *lb = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(b.json, "log_prob"));
    CHECK_MSG(a.status == 200 && b.status == 200 && la && lb && !strcmp(la, lb),
              "resumed: %s\n    uninterrupted: %s", a.body, b.body);
    free(la);
    free(lb);
    hresp_free(&a);
    hresp_free(&b);
    char sha_big[65];
    version_sha(&d, "big", sha_big);
    /* the model file is chunked, and downloads byte for byte */
    long long nck = raw_int(d.db, "SELECT checkpoint_chunks FROM model_versions v JOIN models m "
                                  "ON m.id = v.model_id WHERE m.name = 'big'", 0);
    long long size = raw_int(d.db, "SELECT size_bytes FROM model_versions v JOIN models m "
                                   "ON m.id = v.model_id WHERE m.name = 'big'", 0);
    CHECK_MSG(nck >= 6 && size > 1500000, "model file of %lld bytes in %lld chunks", size, nck);
    fprintf(stderr, "    state of step %lld in %lld chunks; model file %lld bytes in %lld chunks; peak RSS %ld KiB\n",
            saved, chunks, size, nck, dmn_peak_kib(&d));
    size_t dl = 0, cl = 0;
    char *file = get_bytes(&d, "/v1/models/big/versions/1/checkpoint", &dl);
    long long mid = raw_int(d.db, "SELECT id FROM models WHERE name = 'big'", 0);
    snprintf(owner, sizeof owner, "checkpoint/%lld/1", mid);
    unsigned char *raw = raw_chunks(d.db, owner, &cl);
    REQUIRE(file && raw);
    CHECK(dl == (size_t)size && cl == dl && !memcmp(file, raw, dl));
    char hex[65];
    fd_sha256_hex(file, dl, hex);
    CHECK_STR_EQ(hex, sha_big);
    nf_model *m = NULL;
    char err[256];
    CHECK_MSG(nf_model_load(file, dl, &m, err, sizeof err) == 0, "%s", err);
    nf_model_free(m);
    free(file);
    free(raw);
    /* it scores after a restart too (read from the chunks, not a cache) */
    CHECK_EQ_INT(dmn_stop(&d), 0);
    CHECK(integrity_ok(d.db));
    CHECK_EQ_INT(raw_int(d.db, "SELECT count(*) FROM blob_chunks WHERE owner LIKE 'train_state/%'", 0), 0);
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    hresp r;
    http_post_json(&d, "/v1/models/big/log_prob", "{\"inputs\":[[0.5,0.25]]}", &r);
    CHECK_MSG(r.status == 200, "log_prob: %ld %s", r.status, r.body);
    hresp_free(&r);
    dmn_cleanup(&d);
}
