/* test_db.c: server/db.c against a fresh SQLite file per test: migrations
 * (schema snapshot, idempotence, concurrent migrators, refusal of future or
 * changed migrations), models and checkpoints, datasets, jobs (dedupe, claim
 * order and atomicity across connections, progress, metrics paging, cancel,
 * publish), train state, tokens, and a source scan that no SQL is built
 * from values.
 *
 * FLOWD_UPDATE_SNAPSHOT=1 rewrites schema/schema.sql from a freshly migrated
 * database instead of comparing against it. */
#include "../test.h"
#include "../../server/db.h"

#include <dirent.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------------- */

typedef struct { char path[64]; } tmpdb;

static void tmp_make(tmpdb *t) {
    snprintf(t->path, sizeof t->path, "/tmp/flowd_test_db_XXXXXX");
    int fd = mkstemp(t->path);
    if (fd >= 0) close(fd);
}

static void tmp_remove(tmpdb *t) {
    char p[80];
    unlink(t->path);
    snprintf(p, sizeof p, "%s-wal", t->path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", t->path);
    unlink(p);
}

static fd_db *open_migrated(tmpdb *t) {
    fd_db *db = NULL;
    char err[512] = "";
    tmp_make(t);
    if (fd_db_open(t->path, &db, err, sizeof err)) {
        fprintf(stderr, "    open: %s\n", err);
        return NULL;
    }
    if (fd_db_migrate(db, NULL, err, sizeof err)) {
        fprintf(stderr, "    migrate: %s\n", err);
        fd_db_close(db);
        return NULL;
    }
    return db;
}

/* Run literal SQL on a separate raw connection (what an operator or a disk
 * fault would do behind flowd's back). */
static int raw_exec(const char *path, const char *sql) {
    sqlite3 *h = NULL;
    char *msg = NULL;
    if (sqlite3_open(path, &h) != SQLITE_OK) return -1;
    sqlite3_busy_timeout(h, 5000);
    int rc = sqlite3_exec(h, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) fprintf(stderr, "    raw_exec: %s\n", msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(h);
    return rc;
}

static long long raw_count(const char *path, const char *sql) {
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open(path, &h) != SQLITE_OK) return -1;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -12345;
}

static int jhas(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k) != NULL;
}

/* ---- migrations ------------------------------------------------------------------ */

TEST(db_schema_snapshot) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    CHECK_EQ_INT(fd_db_schema_version(db), fd_db_binary_schema_version());
    CHECK(fd_db_binary_schema_version() >= 1);
    char *dump = fd_db_schema_dump(db);
    REQUIRE(dump);
    CHECK(strstr(dump, "CREATE TABLE flowd_migrations") != NULL);
    CHECK(strstr(dump, "CREATE TABLE jobs") != NULL);
    const char *snap = "schema/schema.sql";
    const char *upd = getenv("FLOWD_UPDATE_SNAPSHOT");
    if (upd && !strcmp(upd, "1")) {
        FILE *f = fopen(snap, "wb");
        REQUIRE(f);
        fputs(dump, f);
        fclose(f);
        fprintf(stderr, "    wrote %s\n", snap);
    } else {
        char *want = read_file(snap);
        CHECK_MSG(want != NULL, "%s missing: run FLOWD_UPDATE_SNAPSHOT=1 FLOWD_TEST=db_schema "
                                "make test from the repository root", snap);
        if (want && strcmp(want, dump)) {
            int line = 1;
            size_t i = 0;
            while (want[i] && want[i] == dump[i]) {
                if (want[i] == '\n') line++;
                i++;
            }
            size_t ls = i;
            while (ls > 0 && dump[ls - 1] != '\n') ls--;
            const char *a = want + ls, *b = dump + ls;
            CHECK_MSG(0,
                      "a fresh database's schema differs from %s at line %d:\n"
                      "      snapshot: %.*s\n      migrated: %.*s\n"
                      "    (diff: sqlite3 DB .schema; after an intended change rerun with "
                      "FLOWD_UPDATE_SNAPSHOT=1)",
                      snap, line, (int)strcspn(a, "\n"), a, (int)strcspn(b, "\n"), b);
        }
        free(want);
    }
    free(dump);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_migrate_twice_is_noop) {
    tmpdb t;
    fd_db *db = NULL;
    char err[512] = "";
    int applied = -1;
    tmp_make(&t);
    REQUIRE(fd_db_open(t.path, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_schema_version(db), 0);
    CHECK_EQ_INT(fd_db_migrate(db, &applied, err, sizeof err), 0);
    CHECK_EQ_INT(applied, fd_db_binary_schema_version());
    char *d1 = fd_db_schema_dump(db);
    CHECK_EQ_INT(fd_db_migrate(db, &applied, err, sizeof err), 0);
    CHECK_EQ_INT(applied, 0);
    fd_db_close(db);
    /* and from another connection */
    REQUIRE(fd_db_open(t.path, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_migrate(db, &applied, err, sizeof err), 0);
    CHECK_EQ_INT(applied, 0);
    char *d2 = fd_db_schema_dump(db);
    CHECK(d1 && d2 && !strcmp(d1, d2));
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM flowd_migrations"),
                 fd_db_binary_schema_version());
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM flowd_migrations WHERE "
                                   "length(sha256) = 64 AND applied_at LIKE '20%Z'"),
                 fd_db_binary_schema_version());
    free(d1);
    free(d2);
    fd_db_close(db);
    tmp_remove(&t);
}

typedef struct { const char *path; int rc, applied; char err[256]; } migrator;

static void *migrate_thread(void *p) {
    migrator *m = p;
    fd_db *db = NULL;
    m->rc = fd_db_open(m->path, &db, m->err, sizeof m->err);
    if (!m->rc) m->rc = fd_db_migrate(db, &m->applied, m->err, sizeof m->err);
    fd_db_close(db);
    return NULL;
}

TEST(db_migrate_concurrent) {
    for (int round = 0; round < 5; round++) {
        tmpdb t;
        tmp_make(&t);
        migrator m[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            memset(&m[i], 0, sizeof m[i]);
            m[i].path = t.path;
            pthread_create(&th[i], NULL, migrate_thread, &m[i]);
        }
        int total = 0;
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            CHECK_MSG(m[i].rc == 0, "migrator %d: %d %s", i, m[i].rc, m[i].err);
            total += m[i].applied;
        }
        CHECK_EQ_INT(total, fd_db_binary_schema_version());
        CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM flowd_migrations"),
                     fd_db_binary_schema_version());
        tmp_remove(&t);
    }
}

TEST(db_future_version_refused) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    fd_db_close(db);
    REQUIRE(raw_exec(t.path, "INSERT INTO flowd_migrations VALUES "
                             "(9999, '9999_future', 'abc', '2030-01-01T00:00:00.000Z')") == 0);
    char err[512] = "";
    REQUIRE(fd_db_open(t.path, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_schema_version(db), 9999);
    CHECK_EQ_INT(fd_db_migrate(db, NULL, err, sizeof err), FD_EDB);
    CHECK_MSG(strstr(err, "9999") && strstr(err, "newer"), "message: %s", err);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_changed_checksum_refused) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    fd_db_close(db);
    REQUIRE(raw_exec(t.path, "UPDATE flowd_migrations SET sha256 = "
                             "'0000000000000000000000000000000000000000000000000000000000000000' "
                             "WHERE version = 1") == 0);
    char err[512] = "";
    REQUIRE(fd_db_open(t.path, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_migrate(db, NULL, err, sizeof err), FD_EDB);
    CHECK_MSG(strstr(err, "migration 0001_init was changed after it was applied") &&
                  strstr(err, "recorded sha256 0000000000"),
              "message: %s", err);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_open_not_a_database) {
    tmpdb t;
    tmp_make(&t);
    FILE *f = fopen(t.path, "wb");
    REQUIRE(f);
    for (int i = 0; i < 4096; i++) fputc("garbage!"[i % 8], f);
    fclose(f);
    fd_db *db = NULL;
    char err[512] = "";
    int r = fd_db_open(t.path, &db, err, sizeof err);
    if (r == 0) r = fd_db_migrate(db, NULL, err, sizeof err);
    CHECK_EQ_INT(r, FD_EDB);
    CHECK_MSG(strstr(err, "not a database") != NULL, "message: %s", err);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_sha256_vectors) {
    char hex[65];
    fd_sha256_hex("abc", 3, hex);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    fd_sha256_hex("", 0, hex);
    CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
}

TEST(db_integrity_check_ok) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[256] = "";
    CHECK_EQ_INT(fd_db_integrity_check(db, err, sizeof err), 0);
    fd_db_close(db);
    tmp_remove(&t);
}

/* ---- models ------------------------------------------------------------------------ */

TEST(db_model_versions) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int v = 0;
    unsigned char ck[3][100];
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 100; i++) ck[k][i] = (unsigned char)(i * 7 + k);
    CHECK_EQ_INT(fd_db_latest_version(db, "m", &v, err, sizeof err), FD_ENOTFOUND);
    for (int k = 0; k < 3; k++) {
        CHECK_EQ_INT(fd_db_version_add(db, "m", ck[k], 100 - k, 2, k, "{\"preset\":\"maf\"}",
                                       "{\"standardize\":true}", "{\"val_loss\":1.5}", 0, &v,
                                       err, sizeof err),
                     0);
        CHECK_EQ_INT(v, k + 1);
    }
    CHECK_EQ_INT(fd_db_version_add(db, "other", ck[0], 10, 5, 0, NULL, NULL, NULL, 0, &v, err,
                                   sizeof err),
                 0);
    CHECK_EQ_INT(v, 1);
    CHECK_EQ_INT(fd_db_version_add(db, "", ck[0], 10, 5, 0, NULL, NULL, NULL, 0, &v, err,
                                   sizeof err),
                 FD_EINVAL);
    CHECK_EQ_INT(fd_db_latest_version(db, "m", &v, err, sizeof err), 0);
    CHECK_EQ_INT(v, 3);
    /* latest and a named version, bytes intact */
    void *buf = NULL;
    size_t len = 0;
    int vo = 0;
    CHECK_EQ_INT(fd_db_version_get(db, "m", 0, &buf, &len, &vo, err, sizeof err), 0);
    CHECK_EQ_INT(vo, 3);
    CHECK(len == 98 && !memcmp(buf, ck[2], 98));
    free(buf);
    CHECK_EQ_INT(fd_db_version_get(db, "m", 1, &buf, &len, &vo, err, sizeof err), 0);
    CHECK_EQ_INT(vo, 1);
    CHECK(len == 100 && !memcmp(buf, ck[0], 100));
    free(buf);
    CHECK_EQ_INT(fd_db_version_get(db, "m", 4, &buf, &len, &vo, err, sizeof err), FD_ENOTFOUND);
    CHECK_EQ_INT(fd_db_version_get(db, "nope", 0, &buf, &len, &vo, err, sizeof err),
                 FD_ENOTFOUND);
    /* list */
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_models_list(db, &o, err, sizeof err), 0);
    REQUIRE(o);
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(o, "models"), *it;
    CHECK_EQ_INT(cJSON_GetArraySize(models), 2);
    int seen = 0;
    cJSON_ArrayForEach(it, models) {
        if (seen == 0) {
            CHECK(jstr(it, "name") && !strcmp(jstr(it, "name"), "m"));
            CHECK_EQ_INT(jnum(it, "latest_version"), 3);
            CHECK_EQ_INT(jnum(it, "dim"), 2);
            CHECK_EQ_INT(jnum(it, "context_dim"), 2);
            CHECK(jstr(it, "created_at") != NULL);
        } else {
            CHECK(jstr(it, "name") && !strcmp(jstr(it, "name"), "other"));
            CHECK_EQ_INT(jnum(it, "dim"), 5);
        }
        seen++;
    }
    cJSON_Delete(o);
    /* model detail */
    CHECK_EQ_INT(fd_db_model_get(db, "m", &o, err, sizeof err), 0);
    REQUIRE(o);
    CHECK_EQ_INT(jnum(o, "latest_version"), 3);
    const cJSON *versions = cJSON_GetObjectItemCaseSensitive(o, "versions");
    CHECK_EQ_INT(cJSON_GetArraySize(versions), 3);
    int want = 1;
    cJSON_ArrayForEach(it, versions) {
        char hex[65];
        fd_sha256_hex(ck[want - 1], (size_t)(101 - want), hex);
        CHECK_EQ_INT(jnum(it, "version"), want);
        CHECK_EQ_INT(jnum(it, "size_bytes"), 101 - want);
        CHECK(jstr(it, "sha256") && !strcmp(jstr(it, "sha256"), hex));
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(it, "config");
        CHECK(cfg && jstr(cfg, "preset") && !strcmp(jstr(cfg, "preset"), "maf"));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(it, "preprocess"), "standardize")));
        CHECK_CLOSE(jnum(cJSON_GetObjectItemCaseSensitive(it, "metrics"), "val_loss"), 1.5, 0, 0);
        CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(it, "job_id")));
        want++;
    }
    cJSON_Delete(o);
    CHECK_EQ_INT(fd_db_model_get(db, "nope", &o, err, sizeof err), FD_ENOTFOUND);
    /* delete cascades to versions */
    CHECK_EQ_INT(fd_db_model_delete(db, "m", err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_model_delete(db, "m", err, sizeof err), FD_ENOTFOUND);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM model_versions"), 1);
    CHECK_EQ_INT(fd_db_latest_version(db, "m", &v, err, sizeof err), FD_ENOTFOUND);
    /* a re-created model goes on from the name's highest number (3): a
     * number once given never names another file (migration 0003) */
    CHECK_EQ_INT(fd_db_version_add(db, "m", ck[0], 10, 2, 0, NULL, NULL, NULL, 0, &v, err,
                                   sizeof err),
                 0);
    CHECK_EQ_INT(v, 4);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_checkpoint_corruption) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    unsigned char ck[256];
    for (int i = 0; i < 256; i++) ck[i] = (unsigned char)i;
    int v = 0;
    REQUIRE(fd_db_version_add(db, "m", ck, sizeof ck, 2, 0, "{}", "{}", "{}", 0, &v, err,
                              sizeof err) == 0);
    /* flip one bit of byte 10 behind flowd's back */
    {
        sqlite3 *h = NULL;
        sqlite3_stmt *st = NULL;
        REQUIRE(sqlite3_open(t.path, &h) == SQLITE_OK);
        unsigned char bad[256];
        memcpy(bad, ck, sizeof bad);
        bad[10] ^= 1;
        REQUIRE(sqlite3_prepare_v2(h, "UPDATE model_versions SET checkpoint = ?1", -1, &st,
                                   NULL) == SQLITE_OK);
        sqlite3_bind_blob(st, 1, bad, sizeof bad, SQLITE_STATIC);
        CHECK_EQ_INT(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
        sqlite3_close(h);
    }
    CHECK_EQ_INT(raw_count(t.path, "SELECT length(checkpoint) FROM model_versions"), 256);
    void *buf = NULL;
    size_t len = 0;
    CHECK_EQ_INT(fd_db_version_get(db, "m", 1, &buf, &len, &v, err, sizeof err), FD_ECORRUPT);
    CHECK(buf == NULL);
    CHECK_MSG(strstr(err, "corrupt") != NULL, "message: %s", err);
    fd_db_close(db);
    tmp_remove(&t);
}

/* ---- datasets ------------------------------------------------------------------------ */

TEST(db_datasets_roundtrip) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    enum { R = 300, D = 3 };
    float *x = malloc(sizeof(float) * R * D);
    REQUIRE(x);
    uint32_t special[] = {0x80000000u /* -0 */, 0x00000001u /* denormal */,
                          0x7fc01234u /* NaN payload */, 0x7f7fffffu /* FLT_MAX */};
    for (int i = 0; i < R * D; i++) x[i] = (float)(i * 0.37 - 50) / 3.0f;
    memcpy(x, special, sizeof special);
    char sha[65];
    fd_sha256_hex("raw upload bytes", 16, sha);
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_dataset_add(db, "moons-ish", "csv", R, D, NULL, 0, -17.0, 20.5, sha, x, &o, err,
                                   sizeof err),
                 0);
    REQUIRE(o);
    const char *id0 = jstr(o, "id");
    REQUIRE(id0);
    char id[32];
    snprintf(id, sizeof id, "%s", id0);
    CHECK_EQ_INT(strlen(id), 19);
    CHECK(!strncmp(id, "ds_", 3) && strspn(id + 3, "0123456789abcdef") == 16);
    CHECK_EQ_INT(jnum(o, "rows"), R);
    CHECK_EQ_INT(jnum(o, "dim"), D);
    CHECK(jstr(o, "sha256") && !strcmp(jstr(o, "sha256"), sha));
    CHECK(jstr(o, "name") && !strcmp(jstr(o, "name"), "moons-ish"));
    CHECK(jstr(o, "format") && !strcmp(jstr(o, "format"), "csv"));
    CHECK(jstr(o, "created_at") != NULL);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "shape")));
    cJSON_Delete(o);
    float y8[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    static const int px_shape[3] = {1, 2, 2};
    CHECK_EQ_INT(fd_db_dataset_add(db, "pixels", "idx", 2, 4, px_shape, 1, 0, 255, sha, y8, NULL, err,
                                   sizeof err),
                 0);
    static const int bad_shape[3] = {1, 2, 3}; /* 6 values, the rows hold 4 */
    CHECK_EQ_INT(fd_db_dataset_add(db, "pixels", "idx", 2, 4, bad_shape, 1, 0, 255, sha, y8, NULL, err,
                                   sizeof err),
                 FD_EINVAL);
    CHECK_EQ_INT(fd_db_datasets_list(db, &o, err, sizeof err), 0);
    REQUIRE(o);
    const cJSON *it, *arr = cJSON_GetObjectItemCaseSensitive(o, "datasets");
    CHECK_EQ_INT(cJSON_GetArraySize(arr), 2);
    int k = 0;
    cJSON_ArrayForEach(it, arr) {
        CHECK(!jhas(it, "data"));
        if (k == 0) { /* newest */
            CHECK(jstr(it, "name") && !strcmp(jstr(it, "name"), "pixels"));
            const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
            CHECK(cJSON_GetArraySize(sh) == 3 && cJSON_GetArrayItem(sh, 0)->valueint == 1 &&
                  cJSON_GetArrayItem(sh, 1)->valueint == 2 && cJSON_GetArrayItem(sh, 2)->valueint == 2);
        } else {
            CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(it, "shape")));
        }
        k++;
    }
    cJSON_Delete(o);
    CHECK_EQ_INT(fd_db_dataset_get(db, id, &o, err, sizeof err), 0);
    CHECK(o && jstr(o, "id") && !strcmp(jstr(o, "id"), id));
    cJSON_Delete(o);
    float *y = NULL;
    int64_t rows = 0;
    int dim = 0, isint = -1, shape[3] = {9, 9, 9};
    double lo = 0, hi = 0;
    CHECK_EQ_INT(fd_db_dataset_data(db, id, &y, &rows, &dim, shape, &isint, &lo, &hi, err, sizeof err), 0);
    REQUIRE(y);
    CHECK_EQ_INT(rows, R);
    CHECK_EQ_INT(dim, D);
    CHECK_EQ_INT(isint, 0);
    CHECK_CLOSE(lo, -17.0, 0, 0);
    CHECK_CLOSE(hi, 20.5, 0, 0);
    CHECK(!memcmp(x, y, sizeof(float) * R * D));
    CHECK(shape[0] == 0 && shape[1] == 0 && shape[2] == 0);
    free(y);
    CHECK_EQ_INT(fd_db_dataset_delete(db, id, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_dataset_delete(db, id, err, sizeof err), FD_ENOTFOUND);
    CHECK_EQ_INT(fd_db_dataset_get(db, id, &o, err, sizeof err), FD_ENOTFOUND);
    CHECK_EQ_INT(fd_db_dataset_data(db, id, &y, &rows, &dim, shape, &isint, &lo, &hi, err, sizeof err),
                 FD_ENOTFOUND);
    free(x);
    fd_db_close(db);
    tmp_remove(&t);
}

/* Rows written under schema 0001 survive 0002 (the dataset shape columns):
 * a 0001 database with a dataset migrates, the old row reads back with
 * shape null, and a shaped dataset stored after it reads back its shape. */
typedef struct { int version; const char *name; const char *sql; size_t len; } fd_migration;
extern const fd_migration fd_migrations[]; /* build/<v>/gen/migrations.c */
extern const int fd_migrations_count;

TEST(db_datasets_survive_shape_migration) {
    REQUIRE(fd_migrations_count >= 2 && fd_migrations[0].version == 1 && fd_migrations[1].version == 2);
    tmpdb t;
    tmp_make(&t);
    char hex[65], sql[1024];
    fd_sha256_hex(fd_migrations[0].sql, fd_migrations[0].len, hex);
    REQUIRE(raw_exec(t.path, fd_migrations[0].sql) == SQLITE_OK);
    snprintf(sql, sizeof sql,
             "CREATE TABLE flowd_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
             "sha256 TEXT NOT NULL, applied_at TEXT NOT NULL);"
             "INSERT INTO flowd_migrations VALUES (1, '%s', '%s', '2026-01-01T00:00:00.000Z');"
             "INSERT INTO datasets (id, name, format, rows, dim, is_integer, vmin, vmax, sha256, data) "
             "VALUES ('ds_00000000000000aa', 'old', 'csv', 2, 1, 1, 1, 2, 'x', x'0000803f00000040');",
             fd_migrations[0].name, hex);
    REQUIRE(raw_exec(t.path, sql) == SQLITE_OK);
    fd_db *db = NULL;
    char err[512] = "";
    REQUIRE(fd_db_open(t.path, &db, err, sizeof err) == 0);
    int applied = -1;
    CHECK_MSG(fd_db_migrate(db, &applied, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(applied, fd_migrations_count - 1);
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_dataset_get(db, "ds_00000000000000aa", &o, err, sizeof err), 0);
    CHECK(o && jnum(o, "rows") == 2 && jnum(o, "dim") == 1);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "shape")));
    cJSON_Delete(o);
    float *y = NULL;
    int64_t rows = 0;
    int dim = 0, shape[3] = {7, 7, 7};
    CHECK_EQ_INT(fd_db_dataset_data(db, "ds_00000000000000aa", &y, &rows, &dim, shape, NULL, NULL, NULL, err,
                                    sizeof err), 0);
    CHECK(y && y[0] == 1.0f && y[1] == 2.0f && shape[0] == 0 && shape[2] == 0);
    free(y);
    /* a shaped dataset next to it */
    static const int sh[3] = {3, 1, 2};
    float x6[12] = {0};
    char id[32] = "";
    CHECK_EQ_INT(fd_db_dataset_add(db, "rgb", "npy", 2, 6, sh, 0, 0, 0, hex, x6, &o, err, sizeof err), 0);
    if (o && jstr(o, "id")) snprintf(id, sizeof id, "%s", jstr(o, "id"));
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(o, "shape");
    CHECK(cJSON_GetArraySize(js) == 3 && cJSON_GetArrayItem(js, 0)->valueint == 3 &&
          cJSON_GetArrayItem(js, 2)->valueint == 2);
    cJSON_Delete(o);
    CHECK_EQ_INT(fd_db_dataset_data(db, id, &y, &rows, &dim, shape, NULL, NULL, NULL, err, sizeof err), 0);
    CHECK(shape[0] == 3 && shape[1] == 1 && shape[2] == 2 && dim == 6);
    free(y);
    fd_db_close(db);
    tmp_remove(&t);
}

/* ---- jobs ----------------------------------------------------------------------------- */

TEST(db_jobs_create_dedupe) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t a = 0, b = 0, c = 0, d = 0;
    int existed = -1;
    CHECK_EQ_INT(fd_db_job_create(db, "sub-1", "m", "{\"model\":\"m\"}", &a, &existed, err,
                                  sizeof err),
                 0);
    CHECK(a > 0);
    CHECK_EQ_INT(existed, 0);
    CHECK_EQ_INT(fd_db_job_create(db, "sub-1", "m", "{\"model\":\"m\",\"x\":1}", &b, &existed,
                                  err, sizeof err),
                 0);
    CHECK_EQ_INT(b, a);
    CHECK_EQ_INT(existed, 1);
    /* no submission_id: always new */
    CHECK_EQ_INT(fd_db_job_create(db, NULL, "m", "{}", &c, &existed, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_job_create(db, NULL, "m", "{}", &d, &existed, err, sizeof err), 0);
    CHECK(c != d && c != a && existed == 0);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM jobs"), 3);
    char *req = NULL;
    CHECK_EQ_INT(fd_db_job_request(db, a, &req, err, sizeof err), 0);
    CHECK(req && !strcmp(req, "{\"model\":\"m\"}"));
    free(req);
    CHECK_EQ_INT(fd_db_job_request(db, 999, &req, err, sizeof err), FD_ENOTFOUND);
    /* the fresh job as the API shows it */
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_job_get(db, a, &o, err, sizeof err), 0);
    REQUIRE(o);
    char ida[24];
    snprintf(ida, sizeof ida, "%lld", (long long)a);
    CHECK(jstr(o, "id") && !strcmp(jstr(o, "id"), ida));
    CHECK(jstr(o, "state") && !strcmp(jstr(o, "state"), "queued"));
    CHECK(jstr(o, "model") && !strcmp(jstr(o, "model"), "m"));
    CHECK(jstr(o, "submission_id") && !strcmp(jstr(o, "submission_id"), "sub-1"));
    CHECK(jstr(o, "created_at") != NULL);
    CHECK(!jhas(o, "started_at") && !jhas(o, "finished_at") && !jhas(o, "error") &&
          !jhas(o, "version"));
    CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(o, "progress")));
    CHECK(jstr(cJSON_GetObjectItemCaseSensitive(o, "request"), "model") != NULL);
    cJSON_Delete(o);
    CHECK_EQ_INT(fd_db_job_get(db, 12345, &o, err, sizeof err), FD_ENOTFOUND);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_claim_order) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t ids[3], id = 0;
    for (int i = 0; i < 3; i++) {
        char req[32];
        snprintf(req, sizeof req, "{\"n\":%d}", i);
        REQUIRE(fd_db_job_create(db, NULL, "m", req, &ids[i], NULL, err, sizeof err) == 0);
    }
    char *req = NULL;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(fd_db_job_claim(db, &id, &req, err, sizeof err), 0);
        CHECK_EQ_INT(id, ids[i]);
        char want[32];
        snprintf(want, sizeof want, "{\"n\":%d}", i);
        CHECK(req && !strcmp(req, want));
        free(req);
    }
    CHECK_EQ_INT(fd_db_job_claim(db, &id, &req, err, sizeof err), 0);
    CHECK_EQ_INT(id, 0);
    CHECK(req == NULL);
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_job_get(db, ids[0], &o, err, sizeof err), 0);
    CHECK(o && jstr(o, "state") && !strcmp(jstr(o, "state"), "running") &&
          jstr(o, "started_at"));
    cJSON_Delete(o);
    fd_db_close(db);
    tmp_remove(&t);
}

enum { CLAIM_JOBS = 300 };
typedef struct { const char *path; int64_t got[CLAIM_JOBS]; int n, rc; } claimer;

static void *claim_thread(void *p) {
    claimer *c = p;
    fd_db *db = NULL;
    char err[256];
    if ((c->rc = fd_db_open(c->path, &db, err, sizeof err))) return NULL;
    for (;;) {
        int64_t id = 0;
        if ((c->rc = fd_db_job_claim(db, &id, NULL, err, sizeof err))) break;
        if (!id) break;
        c->got[c->n++] = id;
    }
    fd_db_close(db);
    return NULL;
}

TEST(db_jobs_claim_concurrent) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    for (int i = 0; i < CLAIM_JOBS; i++) {
        int64_t id;
        REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &id, NULL, err, sizeof err) == 0);
    }
    static claimer c[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        c[i].path = t.path;
        pthread_create(&th[i], NULL, claim_thread, &c[i]);
    }
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    static int seen[CLAIM_JOBS + 1];
    int total = 0;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(c[i].rc, 0);
        for (int k = 0; k < c[i].n; k++) {
            int64_t id = c[i].got[k];
            REQUIRE(id >= 1 && id <= CLAIM_JOBS);
            CHECK_MSG(!seen[id], "job %lld claimed twice", (long long)id);
            seen[id] = 1;
            total++;
            /* each claimer sees ids in increasing order (oldest first) */
            if (k) CHECK(c[i].got[k] > c[i].got[k - 1]);
        }
    }
    CHECK_EQ_INT(total, CLAIM_JOBS);
    int64_t counts[5];
    CHECK_EQ_INT(fd_db_job_counts(db, counts, err, sizeof err), 0);
    CHECK_EQ_INT(counts[1], CLAIM_JOBS);
    CHECK_EQ_INT(counts[0], 0);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_progress) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t id = 0, cid = 0;
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &id, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_claim(db, &cid, NULL, err, sizeof err) == 0 && cid == id);
    CHECK_EQ_INT(fd_db_job_progress(db, id, "{\"epoch\":3,\"epochs\":10,\"step\":120,"
                                            "\"train_loss\":1.25}",
                                    err, sizeof err),
                 0);
    CHECK_EQ_INT(fd_db_job_progress(db, id, "{\"epoch\":4,\"epochs\":10,\"step\":160,"
                                            "\"train_loss\":1.0}",
                                    err, sizeof err),
                 0);
    CHECK_EQ_INT(fd_db_job_progress(db, 777, "{}", err, sizeof err), FD_ENOTFOUND);
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_job_get(db, id, &o, err, sizeof err), 0);
    REQUIRE(o);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "progress");
    CHECK_EQ_INT(jnum(p, "epoch"), 4);
    CHECK_EQ_INT(jnum(p, "step"), 160);
    CHECK_CLOSE(jnum(p, "train_loss"), 1.0, 0, 0);
    cJSON_Delete(o);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_metrics_paging) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t id = 0;
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &id, NULL, err, sizeof err) == 0);
    /* steps 10, 20, ..., 100 with train rows, a val row every 30 steps */
    for (int s = 10; s <= 100; s += 10) {
        CHECK_EQ_INT(fd_db_job_metric_add(db, id, s, "train", s / 30, 2.0 - s * 0.01, NAN, 1e-3,
                                          0.5, 1.7e9 + s, err, sizeof err),
                     0);
        if (s % 30 == 0)
            CHECK_EQ_INT(fd_db_job_metric_add(db, id, s, "val", s / 30, NAN, 1.9 - s * 0.01, NAN,
                                              NAN, 1.7e9 + s, err, sizeof err),
                         0);
    }
    /* re-logging a step (after a resume) replaces it */
    CHECK_EQ_INT(fd_db_job_metric_add(db, id, 10, "train", 0, 1.5, NAN, 1e-3, 0.5, 1.7e9, err,
                                      sizeof err),
                 0);
    CHECK_EQ_INT(fd_db_job_metric_add(db, id, 10, "bogus", 0, 1, 1, 1, 1, 1, err, sizeof err),
                 FD_EDB);
    int64_t after = 0;
    int pages = 0, rows = 0, steps_seen = 0;
    int64_t last_step = 0;
    for (;;) {
        cJSON *o = NULL;
        REQUIRE(fd_db_job_metrics(db, id, after, 4, &o, err, sizeof err) == 0);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "metrics"), *it;
        int64_t prev = -1;
        int nsteps = 0;
        cJSON_ArrayForEach(it, m) {
            int64_t s = (int64_t)jnum(it, "step");
            CHECK(s > after);
            CHECK(s >= last_step);
            if (s != prev) nsteps++;
            if (s == 10 && !strcmp(jstr(it, "kind"), "train"))
                CHECK_CLOSE(jnum(it, "train_loss"), 1.5, 0, 0);
            if (!strcmp(jstr(it, "kind"), "train")) {
                CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(it, "val_loss")));
                CHECK(prev != s); /* train comes first within a step */
            } else {
                CHECK_EQ_INT(s % 30, 0);
                CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(it, "lr")));
                CHECK_CLOSE(jnum(it, "val_loss"), 1.9 - s * 0.01, 1e-12, 0);
            }
            CHECK(jhas(it, "epoch") && jhas(it, "grad_norm") && jhas(it, "time"));
            prev = s;
            last_step = s;
            rows++;
        }
        CHECK(nsteps <= 4);
        steps_seen += nsteps;
        pages++;
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(o, "next_after_step");
        REQUIRE(next);
        if (cJSON_IsNull(next)) {
            cJSON_Delete(o);
            break;
        }
        CHECK_EQ_INT(next->valuedouble, last_step);
        after = (int64_t)next->valuedouble;
        cJSON_Delete(o);
        REQUIRE(pages < 10);
    }
    CHECK_EQ_INT(pages, 3);
    CHECK_EQ_INT(steps_seen, 10);
    CHECK_EQ_INT(rows, 13);
    /* past the end: empty, next null */
    cJSON *o = NULL;
    CHECK_EQ_INT(fd_db_job_metrics(db, id, 100, 10, &o, err, sizeof err), 0);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "metrics")), 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "next_after_step")));
    cJSON_Delete(o);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_cancel) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t a = 0, b = 0, c = 0, got = 0;
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &a, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &b, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &c, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_claim(db, &got, NULL, err, sizeof err) == 0 && got == a);
    /* running: flag only */
    CHECK_EQ_INT(fd_db_job_cancel_requested(db, a), 0);
    CHECK_EQ_INT(fd_db_job_cancel(db, a, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_job_cancel_requested(db, a), 1);
    cJSON *o = NULL;
    REQUIRE(fd_db_job_get(db, a, &o, err, sizeof err) == 0);
    CHECK(!strcmp(jstr(o, "state"), "running"));
    cJSON_Delete(o);
    /* queued: cancelled at once, never claimed */
    CHECK_EQ_INT(fd_db_job_cancel(db, b, err, sizeof err), 0);
    REQUIRE(fd_db_job_get(db, b, &o, err, sizeof err) == 0);
    CHECK(!strcmp(jstr(o, "state"), "cancelled") && jstr(o, "finished_at"));
    cJSON_Delete(o);
    CHECK_EQ_INT(fd_db_job_claim(db, &got, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(got, c);
    /* finished: conflict */
    CHECK_EQ_INT(fd_db_job_cancel(db, b, err, sizeof err), FD_ECONFLICT);
    CHECK_EQ_INT(fd_db_job_finish(db, a, "cancelled", 0, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_job_cancel(db, a, err, sizeof err), FD_ECONFLICT);
    CHECK_EQ_INT(fd_db_job_finish(db, a, "failed", 0, "x", err, sizeof err), FD_ECONFLICT);
    CHECK_EQ_INT(fd_db_job_finish(db, c, "running", 0, NULL, err, sizeof err), FD_EINVAL);
    CHECK_EQ_INT(fd_db_job_finish(db, c, "failed", 0, "diverged: loss is NaN", err, sizeof err),
                 0);
    REQUIRE(fd_db_job_get(db, c, &o, err, sizeof err) == 0);
    CHECK(!strcmp(jstr(o, "state"), "failed"));
    CHECK(jstr(o, "error") && !strcmp(jstr(o, "error"), "diverged: loss is NaN"));
    cJSON_Delete(o);
    CHECK_EQ_INT(fd_db_job_cancel(db, 4242, err, sizeof err), FD_ENOTFOUND);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_publish) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t id = 0, got = 0, id2 = 0;
    unsigned char ck[64] = {1, 2, 3};
    int v = 0;
    REQUIRE(fd_db_version_add(db, "m", ck, 10, 2, 0, "{}", "{}", "{}", 0, &v, err, sizeof err) ==
            0);
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &id, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &id2, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_claim(db, &got, NULL, err, sizeof err) == 0 && got == id);
    REQUIRE(fd_db_train_state_put(db, id, 50, "state", 5, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_job_publish(db, id, "m", ck, sizeof ck, 2, 0, "{\"preset\":\"nsf\"}",
                                   "{}", "{\"best_val_loss\":0.5}", &v, err, sizeof err),
                 0);
    CHECK_EQ_INT(v, 2);
    cJSON *o = NULL;
    REQUIRE(fd_db_job_get(db, id, &o, err, sizeof err) == 0);
    CHECK(!strcmp(jstr(o, "state"), "succeeded"));
    CHECK_EQ_INT(jnum(o, "version"), 2);
    CHECK(jstr(o, "finished_at") != NULL);
    cJSON_Delete(o);
    void *st = NULL;
    size_t len = 0;
    int64_t step = 0;
    CHECK_EQ_INT(fd_db_train_state_get(db, id, &st, &len, &step, err, sizeof err), FD_ENOTFOUND);
    REQUIRE(fd_db_model_get(db, "m", &o, err, sizeof err) == 0);
    const cJSON *it;
    char ids[24];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "versions")) {
        if (jnum(it, "version") == 2) CHECK(jstr(it, "job_id") && !strcmp(jstr(it, "job_id"), ids));
    }
    cJSON_Delete(o);
    /* publishing a finished job again: conflict, nothing added */
    CHECK_EQ_INT(fd_db_job_publish(db, id, "m", ck, sizeof ck, 2, 0, "{}", "{}", "{}", &v, err,
                                   sizeof err),
                 FD_ECONFLICT);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM model_versions"), 2);
    /* a failure after the version insert rolls the version back too */
    REQUIRE(fd_db_job_claim(db, &got, NULL, err, sizeof err) == 0 && got == id2);
    REQUIRE(raw_exec(t.path, "CREATE TRIGGER test_fail BEFORE UPDATE OF state ON jobs "
                             "BEGIN SELECT RAISE(ABORT, 'injected failure'); END") == 0);
    CHECK(fd_db_job_publish(db, id2, "fresh", ck, sizeof ck, 2, 0, "{}", "{}", "{}", &v, err,
                            sizeof err) != 0);
    CHECK_MSG(strstr(err, "injected failure") != NULL, "message: %s", err);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM model_versions"), 2);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM models WHERE name = 'fresh'"), 0);
    REQUIRE(fd_db_job_get(db, id2, &o, err, sizeof err) == 0);
    CHECK(!strcmp(jstr(o, "state"), "running") && !jhas(o, "version"));
    cJSON_Delete(o);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_train_state) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t id = 0, step = 0;
    REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &id, NULL, err, sizeof err) == 0);
    void *st = NULL;
    size_t len = 0;
    CHECK_EQ_INT(fd_db_train_state_get(db, id, &st, &len, &step, err, sizeof err), FD_ENOTFOUND);
    unsigned char a[1000], b[300];
    for (int i = 0; i < 1000; i++) a[i] = (unsigned char)(i * 13);
    for (int i = 0; i < 300; i++) b[i] = (unsigned char)(i * 31 + 1);
    CHECK_EQ_INT(fd_db_train_state_put(db, id, 100, a, sizeof a, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_train_state_get(db, id, &st, &len, &step, err, sizeof err), 0);
    CHECK(len == sizeof a && step == 100 && !memcmp(st, a, len));
    free(st);
    CHECK_EQ_INT(fd_db_train_state_put(db, id, 200, b, sizeof b, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_train_state_get(db, id, &st, &len, &step, err, sizeof err), 0);
    CHECK(len == sizeof b && step == 200 && !memcmp(st, b, len));
    free(st);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM job_train_state"), 1);
    /* a job that does not exist has no place for state */
    CHECK(fd_db_train_state_put(db, 999, 1, a, 10, err, sizeof err) != 0);
    /* finishing deletes it */
    CHECK_EQ_INT(fd_db_job_finish(db, id, "failed", 0, "stopped", err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_train_state_get(db, id, &st, &len, &step, err, sizeof err), FD_ENOTFOUND);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_running_and_counts) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t ids[6], got;
    for (int i = 0; i < 6; i++)
        REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &ids[i], NULL, err, sizeof err) == 0);
    for (int i = 0; i < 4; i++) REQUIRE(fd_db_job_claim(db, &got, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_finish(db, ids[0], "failed", 0, "e", err, sizeof err) == 0);
    REQUIRE(fd_db_job_finish(db, ids[1], "succeeded", 0, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_cancel(db, ids[5], err, sizeof err) == 0);
    int64_t *run = NULL;
    int n = 0;
    CHECK_EQ_INT(fd_db_jobs_running(db, &run, &n, err, sizeof err), 0);
    CHECK_EQ_INT(n, 2);
    if (n == 2) CHECK(run[0] == ids[2] && run[1] == ids[3]);
    free(run);
    int64_t c[5];
    CHECK_EQ_INT(fd_db_job_counts(db, c, err, sizeof err), 0);
    CHECK(c[0] == 1 && c[1] == 2 && c[2] == 1 && c[3] == 1 && c[4] == 1);
    fd_db_close(db);
    tmp_remove(&t);
}

TEST(db_jobs_list_paging) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "";
    int64_t ids[7], got;
    for (int i = 0; i < 7; i++)
        REQUIRE(fd_db_job_create(db, NULL, "m", "{}", &ids[i], NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_claim(db, &got, NULL, err, sizeof err) == 0);
    /* all, 3 per page, newest first */
    int64_t tok = 0, next = 0, expect = ids[6];
    int total = 0, pages = 0;
    do {
        cJSON *o = NULL;
        REQUIRE(fd_db_jobs_list(db, NULL, tok, 3, &o, &next, err, sizeof err) == 0);
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "jobs")) {
            CHECK_EQ_INT(atoll(jstr(it, "id")), expect);
            expect--;
            total++;
        }
        cJSON_Delete(o);
        tok = next;
        pages++;
    } while (next && pages < 10);
    CHECK_EQ_INT(total, 7);
    CHECK_EQ_INT(pages, 3);
    /* by state */
    cJSON *o = NULL;
    REQUIRE(fd_db_jobs_list(db, "running", 0, 10, &o, &next, err, sizeof err) == 0);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "jobs")), 1);
    CHECK_EQ_INT(next, 0);
    cJSON_Delete(o);
    REQUIRE(fd_db_jobs_list(db, "queued", 0, 10, &o, &next, err, sizeof err) == 0);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "jobs")), 6);
    cJSON_Delete(o);
    fd_db_close(db);
    tmp_remove(&t);
}

/* ---- tokens ------------------------------------------------------------------------- */

TEST(db_tokens_replace) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[512] = "", h1[65], h2[65], h3[65], scope[8];
    fd_sha256_hex("tok-a", 5, h1);
    fd_sha256_hex("tok-b", 5, h2);
    fd_sha256_hex("tok-c", 5, h3);
    const char *hs[] = {h1, h2}, *ss[] = {"read", "write"};
    CHECK_EQ_INT(fd_db_tokens_replace(db, hs, ss, 2, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_token_scope(db, h1, scope, err, sizeof err), 0);
    CHECK(!strcmp(scope, "read"));
    CHECK_EQ_INT(fd_db_token_scope(db, h2, scope, err, sizeof err), 0);
    CHECK(!strcmp(scope, "write"));
    const char *hs2[] = {h3}, *ss2[] = {"write"};
    CHECK_EQ_INT(fd_db_tokens_replace(db, hs2, ss2, 1, err, sizeof err), 0);
    CHECK_EQ_INT(fd_db_token_scope(db, h1, scope, err, sizeof err), FD_ENOTFOUND);
    CHECK_EQ_INT(fd_db_token_scope(db, h3, scope, err, sizeof err), 0);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM api_tokens"), 1);
    /* a bad scope fails the whole replacement and keeps the old set */
    const char *hs3[] = {h1, h2}, *ss3[] = {"read", "admin"};
    CHECK(fd_db_tokens_replace(db, hs3, ss3, 2, err, sizeof err) != 0);
    CHECK_EQ_INT(fd_db_token_scope(db, h3, scope, err, sizeof err), 0);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM api_tokens"), 1);
    CHECK_EQ_INT(fd_db_tokens_replace(db, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_EQ_INT(raw_count(t.path, "SELECT count(*) FROM api_tokens"), 0);
    fd_db_close(db);
    tmp_remove(&t);
}

/* ---- source scan: SQL is never built from values --------------------------------------- */

/* The source with comments blanked, string literals kept. */
static char *strip_comments(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(n + 1);
    size_t i = 0;
    while (i < n) {
        if (s[i] == '"' || s[i] == '\'') {
            char q = s[i];
            o[i] = s[i];
            i++;
            while (i < n && s[i] != q) {
                if (s[i] == '\\' && i + 1 < n) {
                    o[i] = s[i];
                    i++;
                }
                o[i] = s[i];
                i++;
            }
            if (i < n) {
                o[i] = s[i];
                i++;
            }
        } else if (s[i] == '/' && s[i + 1] == '*') {
            while (i < n && !(s[i] == '*' && s[i + 1] == '/')) {
                o[i] = s[i] == '\n' ? '\n' : ' ';
                i++;
            }
            if (i < n) {
                o[i++] = ' ';
                o[i++] = ' ';
            }
        } else if (s[i] == '/' && s[i + 1] == '/') {
            while (i < n && s[i] != '\n') o[i++] = ' ';
        } else {
            o[i] = s[i];
            i++;
        }
    }
    o[n] = 0;
    return o;
}

/* Copy the argno-th (0-based) top-level argument of the call whose '(' is
 * at p into out, trimmed. */
static int call_arg(const char *p, int argno, char *out, size_t outlen) {
    int depth = 0, arg = 0;
    size_t k = 0;
    for (p++; *p; p++) {
        if (*p == '"') {
            if (arg == argno && k + 1 < outlen) out[k++] = *p;
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\') {
                    if (arg == argno && k + 1 < outlen) out[k++] = *p;
                    p++;
                }
                if (arg == argno && k + 1 < outlen) out[k++] = *p;
            }
            if (arg == argno && k + 1 < outlen) out[k++] = '"';
            continue;
        }
        if (*p == '(') depth++;
        if (*p == ')') {
            if (!depth) break;
            depth--;
        }
        if (*p == ',' && !depth) {
            if (++arg > argno) break;
            continue;
        }
        if (arg == argno && k + 1 < outlen) out[k++] = *p;
    }
    out[k] = 0;
    char *a = out;
    while (*a == ' ' || *a == '\n' || *a == '\t') a++;
    memmove(out, a, strlen(a) + 1);
    k = strlen(out);
    while (k && (out[k - 1] == ' ' || out[k - 1] == '\n' || out[k - 1] == '\t')) out[--k] = 0;
    return arg >= argno;
}

/* Only string literals (adjacent ones concatenated) and whitespace. */
static int only_literals(const char *a) {
    if (!*a) return 0;
    while (*a) {
        if (*a == ' ' || *a == '\n' || *a == '\t') {
            a++;
            continue;
        }
        if (*a != '"') return 0;
        for (a++; *a && *a != '"'; a++)
            if (*a == '\\' && a[1]) a++;
        if (!*a) return 0;
        a++;
    }
    return 1;
}

static int count_str(const char *s, const char *w) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, w)); p += strlen(w)) n++;
    return n;
}

TEST(db_no_sql_built_from_values) {
    DIR *d = opendir("server");
    REQUIRE(d);
    struct dirent *e;
    int files = 0, calls = 0;
    static const char *const banned[] = {"sqlite3_mprintf", "sqlite3_vmprintf",
                                         "sqlite3_snprintf", "sqlite3_vsnprintf",
                                         "sqlite3_str_new", "sqlite3_str_appendf"};
    static const char *const funcs[] = {"sqlite3_prepare(", "sqlite3_prepare_v2(",
                                        "sqlite3_prepare_v3(", "sqlite3_prepare16(",
                                        "sqlite3_prepare16_v2(", "sqlite3_prepare16_v3(",
                                        "sqlite3_exec("};
    while ((e = readdir(d))) {
        size_t nl = strlen(e->d_name);
        if (nl < 3 || strcmp(e->d_name + nl - 2, ".c")) continue;
        char path[512];
        snprintf(path, sizeof path, "server/%s", e->d_name);
        char *raw = read_file(path);
        REQUIRE(raw);
        char *src = strip_comments(raw);
        free(raw);
        files++;
        for (size_t b = 0; b < sizeof banned / sizeof banned[0]; b++)
            CHECK_MSG(!strstr(src, banned[b]), "%s uses %s", path, banned[b]);
        for (size_t f = 0; f < sizeof funcs / sizeof funcs[0]; f++) {
            for (const char *p = src; (p = strstr(p, funcs[f])); p += strlen(funcs[f])) {
                if (p > src && (p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z'))) continue;
                char arg[4096];
                call_arg(p + strlen(funcs[f]) - 1, 1, arg, sizeof arg);
                calls++;
                if (only_literals(arg)) continue;
                if (!strcmp(arg, "lit")) {
                    /* the statement cache: reachable only through Q(), whose
                     * "" lit "" only compiles with a literal */
                    CHECK_MSG(strstr(src, "#define Q(db, lit) stmt_lit((db), \"\" lit \"\")") &&
                                  count_str(src, "stmt_lit(") == 2,
                              "%s: stmt_lit must be called only through the Q() macro", path);
                    continue;
                }
                if (!strcmp(arg, "blob_lit")) {
                    /* server/blobs.c: reachable only through PREP() */
                    CHECK_MSG(strstr(src, "#define PREP(h, blob_lit, owner) prep_owner((h), \"\" "
                                          "blob_lit \"\", (owner))") &&
                                  count_str(src, "prep_owner(") == 2,
                              "%s: prep_owner must be called only through the PREP() macro", path);
                    continue;
                }
                if (!strcmp(arg, "m->sql")) {
                    CHECK_MSG(strstr(src, "= &fd_migrations[i]"),
                              "%s: m->sql must be an embedded migration", path);
                    continue;
                }
                int line = 1;
                for (const char *q = src; q < p; q++) line += *q == '\n';
                CHECK_MSG(0, "%s:%d: %.*s SQL argument '%s' is not a string literal", path, line,
                          (int)strlen(funcs[f]) - 1, funcs[f], arg);
            }
        }
        free(src);
    }
    closedir(d);
    CHECK(files >= 1);
    CHECK(calls >= 2); /* the statement cache and the migrations at least */
}

/* fd_db_version_job: the request of the job behind a version; none for an
 * imported version, an unknown version, or once the job is deleted */
TEST(db_version_job) {
    tmpdb t;
    fd_db *db = open_migrated(&t);
    REQUIRE(db);
    char err[256] = "", *req = NULL;
    int64_t id = 0, jid = 0;
    int v = 0;
    const char ck[] = "checkpoint";
    REQUIRE(fd_db_job_create(db, NULL, "m", "{\"model\":\"m\",\"x\":1}", &id, NULL, err, sizeof err) == 0);
    REQUIRE(fd_db_job_claim(db, &jid, &req, err, sizeof err) == 0 && jid == id);
    free(req);
    req = NULL;
    REQUIRE(fd_db_job_publish(db, id, "m", ck, sizeof ck, 2, 0, "{}", "{}", "{}", &v, err, sizeof err) == 0);
    CHECK_EQ_INT(v, 1);
    REQUIRE(fd_db_version_add(db, "m", ck, sizeof ck, 2, 0, "{}", "{}", "{}", 0, &v, err, sizeof err) == 0);
    CHECK_EQ_INT(v, 2);
    jid = 0;
    CHECK_EQ_INT(fd_db_version_job(db, "m", 1, &jid, &req, err, sizeof err), 0);
    CHECK(jid == id && req && !strcmp(req, "{\"model\":\"m\",\"x\":1}"));
    free(req);
    req = NULL;
    CHECK_EQ_INT(fd_db_version_job(db, "m", 2, &jid, &req, err, sizeof err), FD_ENOTFOUND);
    CHECK(req == NULL && strstr(err, "no training job"));
    CHECK_EQ_INT(fd_db_version_job(db, "m", 3, &jid, &req, err, sizeof err), FD_ENOTFOUND);
    CHECK_EQ_INT(fd_db_version_job(db, "nope", 1, &jid, &req, err, sizeof err), FD_ENOTFOUND);
    fd_db_close(db);
    REQUIRE(raw_exec(t.path, "PRAGMA foreign_keys=ON; DELETE FROM jobs;") == SQLITE_OK);
    REQUIRE(fd_db_open(t.path, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_version_job(db, "m", 1, &jid, &req, err, sizeof err), FD_ENOTFOUND);
    fd_db_close(db);
    tmp_remove(&t);
}
