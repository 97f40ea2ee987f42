/* db.c: flowd's storage on SQLite (the contract is db.h).
 *
 * Assumptions this file relies on:
 * - One fd_db is one connection used by one thread at a time; concurrency
 *   between connections (threads or processes) is SQLite's: WAL, a 5 s busy
 *   timeout, and BEGIN IMMEDIATE for every read-modify-write, so two
 *   writers serialise instead of failing on a stale snapshot.
 * - Every statement is a compile-time string literal: Q(db, "...") only
 *   accepts a literal (the "" lit "" concatenation does not compile with a
 *   variable), and the statement is prepared once per connection with
 *   SQLITE_PREPARE_PERSISTENT, cached by the literal's address, and reset
 *   after use.  Values are always bound, never formatted into SQL
 *   (tests/server/test_db.c greps for it).  The only other SQL text run is
 *   the migrations compiled into the binary.
 * - Checkpoints and dataset rows are stored as BLOBs; datasets as float32
 *   little-endian (rows, dim).  A model file, optimizer state or training
 *   state longer than one chunk (server/blobs.h) is stored in chunk rows
 *   instead, its own column then empty and its *_chunks column the count. */
#include "db.h"
#include "blobs.h"
#include "../core/nf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

typedef struct { int version; const char *name; const char *sql; size_t len; } fd_migration;
extern const fd_migration fd_migrations[]; /* build/<v>/gen/migrations.c */
extern const int fd_migrations_count;

#define STMT_CACHE 128

struct fd_db {
    sqlite3 *h;
    struct { const char *lit; sqlite3_stmt *st; } cache[STMT_CACHE];
    int ncache;
};

/* ---- errors ---------------------------------------------------------------- */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int map_rc(int rc) {
    switch (rc & 0xff) {
    case SQLITE_FULL: return FD_EFULL;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return FD_EBUSY;
    case SQLITE_NOMEM: return FD_ENOMEM;
    default: return FD_EDB;
    }
}

int fd_db_sqlite_code(int rc) { return map_rc(rc); }

/* An SQLite failure (rc) while doing `what`: message into err, FD_* code back. */
static int fail(fd_db *db, int rc, char *err, size_t errlen, const char *what) {
    const char *msg = db && db->h && sqlite3_errcode(db->h) != SQLITE_OK ? sqlite3_errmsg(db->h)
                                                                        : sqlite3_errstr(rc);
    seterr(err, errlen, "%s: %s", what, msg);
    return map_rc(rc);
}

/* ---- statements ---------------------------------------------------------------- */

#define Q(db, lit) stmt_lit((db), "" lit "")

/* The cached statement for the literal lit, prepared on first use; NULL on
 * failure (the error is in sqlite3_errcode/errmsg of db->h). */
static sqlite3_stmt *stmt_lit(fd_db *db, const char *lit) {
    for (int i = 0; i < db->ncache; i++)
        if (db->cache[i].lit == lit) return db->cache[i].st;
    sqlite3_stmt *st = NULL;
    unsigned flags = db->ncache < STMT_CACHE ? SQLITE_PREPARE_PERSISTENT : 0;
    if (sqlite3_prepare_v3(db->h, lit, -1, flags, &st, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return NULL;
    }
    if (db->ncache < STMT_CACHE) {
        db->cache[db->ncache].lit = lit;
        db->cache[db->ncache].st = st;
        db->ncache++;
    }
    /* a full cache would leak here; STMT_CACHE is well above the number of
     * literals in this file */
    return st;
}

static void done(sqlite3_stmt *st) {
    if (!st) return;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* prepare failed: report it */
static int prep_fail(fd_db *db, char *err, size_t errlen) {
    return fail(db, sqlite3_errcode(db->h), err, errlen, "prepare");
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
    if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

static void bind_real(sqlite3_stmt *st, int i, double v) {
    if (isfinite(v)) sqlite3_bind_double(st, i, v);
    else sqlite3_bind_null(st, i);
}

/* Step a statement that returns no rows and reset it. */
static int step_done(fd_db *db, sqlite3_stmt *st, char *err, size_t errlen, const char *what) {
    int rc = sqlite3_step(st);
    int r = rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : fail(db, rc, err, errlen, what);
    done(st);
    return r;
}

static int begin(fd_db *db, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "BEGIN IMMEDIATE");
    if (!st) return prep_fail(db, err, errlen);
    return step_done(db, st, err, errlen, "begin");
}

static int commit(fd_db *db, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "COMMIT");
    if (!st) return prep_fail(db, err, errlen);
    return step_done(db, st, err, errlen, "commit");
}

/* Roll back if a transaction is still open (SQLite may have rolled it back
 * already, e.g. after SQLITE_FULL). */
static void rollback(fd_db *db) {
    if (sqlite3_get_autocommit(db->h)) return;
    sqlite3_stmt *st = Q(db, "ROLLBACK");
    if (st) {
        sqlite3_step(st);
        done(st);
    }
}

static char *xstrdup(const char *s) {
    if (!s) s = "";
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static const char *col_text(sqlite3_stmt *st, int i) {
    return (const char *)sqlite3_column_text(st, i);
}

/* Parsed JSON from column i; an empty object for NULL or unparsable text. */
static cJSON *col_json(sqlite3_stmt *st, int i) {
    const char *s = col_text(st, i);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    return j ? j : cJSON_CreateObject();
}

static void add_text_if(cJSON *o, const char *key, sqlite3_stmt *st, int i) {
    if (sqlite3_column_type(st, i) != SQLITE_NULL) cJSON_AddStringToObject(o, key, col_text(st, i));
}

static void add_real_or_null(cJSON *o, const char *key, sqlite3_stmt *st, int i) {
    if (sqlite3_column_type(st, i) == SQLITE_NULL) cJSON_AddNullToObject(o, key);
    else cJSON_AddNumberToObject(o, key, sqlite3_column_double(st, i));
}

static void add_id_string(cJSON *o, const char *key, int64_t id) {
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    cJSON_AddStringToObject(o, key, buf);
}

/* ---- sha256 ------------------------------------------------------------------ */

void fd_sha256_hex(const void *buf, size_t len, char hex[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char digits[] = "0123456789abcdef";
    if (!EVP_Digest(buf ? buf : "", len, md, &n, EVP_sha256(), NULL) || n != 32) {
        memset(hex, '0', 64);
        hex[64] = 0;
        return;
    }
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = 0;
}

/* replicas (docs/scale-out.md): "sha256", the latest version's model-file
 * digest (null without versions), and "versions_sha256", the digest of the
 * lines "VERSION SHA256\n" of every version, oldest first: two databases
 * hold the same model files under the same numbers iff it agrees */
static void add_content_hashes(cJSON *root, const cJSON *versions) {
    int n = cJSON_GetArraySize(versions);
    char *lines = malloc((size_t)n * 80 + 1), hex[65];
    size_t len = 0;
    const char *last = NULL;
    for (int i = 0; lines && i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(versions, i);
        const cJSON *num = cJSON_GetObjectItemCaseSensitive(v, "version"),
                    *h = cJSON_GetObjectItemCaseSensitive(v, "sha256");
        last = cJSON_IsString(h) ? h->valuestring : "";
        len += (size_t)snprintf(lines + len, 80, "%d %.64s\n", cJSON_IsNumber(num) ? num->valueint : 0,
                                last);
    }
    if (last) cJSON_AddStringToObject(root, "sha256", last);
    else cJSON_AddNullToObject(root, "sha256");
    if (!lines) { /* out of memory: null rather than a wrong digest */
        cJSON_AddNullToObject(root, "versions_sha256");
        return;
    }
    fd_sha256_hex(lines, len, hex);
    free(lines);
    cJSON_AddStringToObject(root, "versions_sha256", hex);
}


/* ---- open / close ----------------------------------------------------------------- */

int fd_db_open(const char *path, fd_db **out, char *err, size_t errlen) {
    *out = NULL;
    if (!path) {
        seterr(err, errlen, "no database path");
        return FD_EINVAL;
    }
    fd_db *db = calloc(1, sizeof *db);
    if (!db) return FD_ENOMEM;
    int rc = sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        seterr(err, errlen, "open %s: %s", path, db->h ? sqlite3_errmsg(db->h) : sqlite3_errstr(rc));
        int code = map_rc(rc);
        fd_db_close(db);
        return code;
    }
    sqlite3_extended_result_codes(db->h, 1);
    sqlite3_busy_timeout(db->h, 5000);
    /* FULL: in WAL mode every commit fsyncs the log, so a write answered
     * 201/202, or a published version, survives a power loss; NORMAL syncs
     * only at checkpoints and can lose the last commits (the cost is
     * measured in docs/reliability.md).  FLOWD_DB_SYNCHRONOUS=NORMAL opts
     * out. */
    const char *sync = getenv("FLOWD_DB_SYNCHRONOUS");
    int normal = sync && !strcasecmp(sync, "NORMAL");
    sqlite3_stmt *prag[4] = {Q(db, "PRAGMA journal_mode=WAL"), Q(db, "PRAGMA foreign_keys=ON"),
                             Q(db, "PRAGMA busy_timeout=5000"),
                             normal ? Q(db, "PRAGMA synchronous=NORMAL") : Q(db, "PRAGMA synchronous=FULL")};
    for (int i = 0; i < 4; i++) {
        /* switching a fresh file to WAL needs an exclusive lock, and SQLite
         * returns BUSY there without calling the busy handler when another
         * connection is opening the same file at the same moment: retry for
         * up to the busy timeout */
        for (int tries = 0;; tries++) {
            rc = prag[i] ? sqlite3_step(prag[i]) : sqlite3_errcode(db->h);
            while (rc == SQLITE_ROW) rc = sqlite3_step(prag[i]);
            if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) break;
            if (!prag[i] || tries >= 500) break;
            sqlite3_reset(prag[i]);
            sqlite3_sleep(10);
        }
        if (rc != SQLITE_DONE) {
            seterr(err, errlen, "open %s: %s", path, sqlite3_errmsg(db->h));
            int code = map_rc(rc);
            fd_db_close(db);
            return code;
        }
        done(prag[i]);
    }
    /* tests only (tests/server/test_faults.c): FLOWD_DB_NO_GROWTH=1 stops
     * the database file from growing, so that a write needing a new page
     * fails with SQLITE_FULL as on a full disk (SQLite clamps max_page_count
     * to the current size; pages on the freelist are still reused).  Per
     * connection. */
    const char *ng = getenv("FLOWD_DB_NO_GROWTH");
    if (ng && !strcmp(ng, "1")) sqlite3_exec(db->h, "PRAGMA max_page_count = 1", NULL, NULL, NULL);
    /* tests only (tests/server/test_blobs.c): FLOWD_DB_MAX_LENGTH=N lowers
     * this connection's SQLITE_LIMIT_LENGTH (the longest string, blob or
     * row) to N bytes, so that a model or training state of a few MB is
     * stored in many chunks (server/blobs.h) as one over 1e9 bytes is in a
     * default build.  Values below 64 KiB are ignored. */
    const char *ml = getenv("FLOWD_DB_MAX_LENGTH");
    if (ml && atol(ml) >= 65536 && atol(ml) <= INT_MAX)
        sqlite3_limit(db->h, SQLITE_LIMIT_LENGTH, (int)atol(ml));
    *out = db;
    return 0;
}

void fd_db_close(fd_db *db) {
    if (!db) return;
    for (int i = 0; i < db->ncache; i++) sqlite3_finalize(db->cache[i].st);
    sqlite3_close_v2(db->h);
    free(db);
}

/* ---- migrations ------------------------------------------------------------------- */

int fd_db_binary_schema_version(void) {
    int v = 0;
    for (int i = 0; i < fd_migrations_count; i++)
        if (fd_migrations[i].version > v) v = fd_migrations[i].version;
    return v;
}

static const fd_migration *find_migration(int version) {
    for (int i = 0; i < fd_migrations_count; i++)
        if (fd_migrations[i].version == version) return &fd_migrations[i];
    return NULL;
}

/* Inside the migration transaction: the recorded migrations must all be
 * known to this binary with the same checksum.  *applied_max gets the
 * highest recorded version. */
static int check_recorded(fd_db *db, int *applied_max, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "SELECT version, name, sha256 FROM flowd_migrations ORDER BY version");
    if (!st) return prep_fail(db, err, errlen);
    int r = 0, rc, bin = fd_db_binary_schema_version();
    *applied_max = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int v = sqlite3_column_int(st, 0);
        const char *name = col_text(st, 1), *sha = col_text(st, 2);
        if (v > *applied_max) *applied_max = v;
        if (v > bin) {
            seterr(err, errlen,
                   "database schema version %d (%s) is newer than this binary's (%d): "
                   "upgrade flowd or use another database",
                   v, name ? name : "?", bin);
            r = FD_EDB;
            break;
        }
        const fd_migration *m = find_migration(v);
        if (!m) {
            seterr(err, errlen, "database has migration %d (%s) that this binary does not know", v,
                   name ? name : "?");
            r = FD_EDB;
            break;
        }
        char hex[65];
        fd_sha256_hex(m->sql, m->len, hex);
        if (!sha || strcmp(sha, hex)) {
            seterr(err, errlen,
                   "migration %s was changed after it was applied: recorded sha256 %s, binary %s",
                   m->name, sha ? sha : "(null)", hex);
            r = FD_EDB;
            break;
        }
    }
    if (!r && rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "read flowd_migrations");
    done(st);
    return r;
}

int fd_db_migrate(fd_db *db, int *applied, char *err, size_t errlen) {
    int n = 0, r = 0;
    if (applied) *applied = 0;
    /* one transaction per migration; the recorded state is re-read inside
     * each, so a second process migrating at the same time waits on BEGIN
     * IMMEDIATE and then finds the work done */
    for (int i = 0; i < fd_migrations_count; i++) {
        const fd_migration *m = &fd_migrations[i];
        if ((r = begin(db, err, errlen))) return r;
        sqlite3_stmt *st = Q(db, "CREATE TABLE IF NOT EXISTS flowd_migrations ("
                                 "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                 "sha256 TEXT NOT NULL, applied_at TEXT NOT NULL)");
        if (!st) {
            r = prep_fail(db, err, errlen);
            goto fail;
        }
        if ((r = step_done(db, st, err, errlen, "create flowd_migrations"))) goto fail;
        int have = 0;
        if ((r = check_recorded(db, &have, err, errlen))) goto fail;
        st = Q(db, "SELECT 1 FROM flowd_migrations WHERE version = ?1");
        if (!st) {
            r = prep_fail(db, err, errlen);
            goto fail;
        }
        sqlite3_bind_int(st, 1, m->version);
        int rc = sqlite3_step(st);
        done(st);
        if (rc == SQLITE_ROW) {
            if ((r = commit(db, err, errlen))) goto fail;
            continue;
        }
        if (rc != SQLITE_DONE) {
            r = fail(db, rc, err, errlen, "read flowd_migrations");
            goto fail;
        }
        if (have > m->version) {
            seterr(err, errlen, "migration %s is missing from a database at version %d", m->name,
                   have);
            r = FD_EDB;
            goto fail;
        }
        char *msg = NULL;
        rc = sqlite3_exec(db->h, m->sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
            seterr(err, errlen, "migration %s: %s", m->name, msg ? msg : sqlite3_errstr(rc));
            sqlite3_free(msg);
            r = map_rc(rc);
            goto fail;
        }
        char hex[65];
        fd_sha256_hex(m->sql, m->len, hex);
        st = Q(db, "INSERT INTO flowd_migrations (version, name, sha256, applied_at) "
                   "VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))");
        if (!st) {
            r = prep_fail(db, err, errlen);
            goto fail;
        }
        sqlite3_bind_int(st, 1, m->version);
        bind_text(st, 2, m->name);
        bind_text(st, 3, hex);
        if ((r = step_done(db, st, err, errlen, "record migration"))) goto fail;
        if ((r = commit(db, err, errlen))) goto fail;
        n++;
    }
    if (fd_migrations_count == 0) {
        /* nothing compiled in: still refuse a database from the future */
        if ((r = begin(db, err, errlen))) return r;
        int have = 0;
        sqlite3_stmt *st = Q(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'flowd_migrations'");
        if (!st) {
            r = prep_fail(db, err, errlen);
            goto fail;
        }
        int rc = sqlite3_step(st);
        done(st);
        if (rc == SQLITE_ROW && (r = check_recorded(db, &have, err, errlen))) goto fail;
        if ((r = commit(db, err, errlen))) goto fail;
    }
    if (applied) *applied = n;
    return 0;
fail:
    rollback(db);
    if (applied) *applied = n;
    return r;
}

int fd_db_schema_version(fd_db *db) {
    sqlite3_stmt *st = Q(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                             "AND name = 'flowd_migrations'");
    if (!st) return FD_EDB;
    int rc = sqlite3_step(st);
    done(st);
    if (rc == SQLITE_DONE) return 0;
    if (rc != SQLITE_ROW) return map_rc(rc);
    st = Q(db, "SELECT coalesce(max(version), 0) FROM flowd_migrations");
    if (!st) return FD_EDB;
    rc = sqlite3_step(st);
    int v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : map_rc(rc);
    done(st);
    return v;
}

int fd_db_integrity_check(fd_db *db, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "PRAGMA integrity_check");
    if (!st) return prep_fail(db, err, errlen);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) {
        const char *s = col_text(st, 0);
        if (!s || strcmp(s, "ok")) {
            seterr(err, errlen, "integrity check: %s", s ? s : "(null)");
            r = FD_EDB;
        }
    } else {
        r = fail(db, rc, err, errlen, "integrity check");
    }
    done(st);
    return r;
}

char *fd_db_schema_dump(fd_db *db) {
    sqlite3_stmt *st =
        Q(db, "SELECT type, name, sql FROM sqlite_master WHERE sql NOT NULL ORDER BY type, name");
    if (!st) return NULL;
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    if (!out) {
        done(st);
        return NULL;
    }
    out[0] = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *sql = col_text(st, 2);
        size_t n = strlen(sql);
        if (len + n + 3 > cap) {
            while (len + n + 3 > cap) cap *= 2;
            char *p = realloc(out, cap);
            if (!p) {
                free(out);
                done(st);
                return NULL;
            }
            out = p;
        }
        memcpy(out + len, sql, n);
        len += n;
        memcpy(out + len, ";\n", 3);
        len += 2;
    }
    done(st);
    if (rc != SQLITE_DONE) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- models ------------------------------------------------------------------------ */

int fd_db_models_list(fd_db *db, cJSON **out, char *err, size_t errlen) {
    *out = NULL;
    sqlite3_stmt *st =
        Q(db, "SELECT m.name, m.created_at, v.version, v.dim, v.context_dim, "
              "coalesce((SELECT version FROM model_aliases WHERE model_id = m.id AND alias = 'default'), v.version) "
              "FROM models m LEFT JOIN model_versions v ON v.model_id = m.id AND v.version = "
              "(SELECT max(version) FROM model_versions WHERE model_id = m.id) "
              "ORDER BY m.name");
    if (!st) return prep_fail(db, err, errlen);
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "models");
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", col_text(st, 0));
        if (sqlite3_column_type(st, 2) == SQLITE_NULL) {
            cJSON_AddNullToObject(o, "latest_version");
            cJSON_AddNullToObject(o, "dim");
            cJSON_AddNullToObject(o, "context_dim");
        } else {
            cJSON_AddNumberToObject(o, "latest_version", sqlite3_column_int(st, 2));
            cJSON_AddNumberToObject(o, "dim", sqlite3_column_int(st, 3));
            cJSON_AddNumberToObject(o, "context_dim", sqlite3_column_int(st, 4));
        }
        if (sqlite3_column_type(st, 5) == SQLITE_NULL) cJSON_AddNullToObject(o, "default_version");
        else cJSON_AddNumberToObject(o, "default_version", sqlite3_column_int(st, 5));
        cJSON_AddStringToObject(o, "created_at", col_text(st, 1));
        cJSON_AddItemToArray(arr, o);
    }
    int r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "list models");
    done(st);
    if (r) cJSON_Delete(root);
    else *out = root;
    return r;
}

/* o["shape"]: the flow config's "shape" ([C,H,W], the image shape of a
 * row), or null when the config has none */
static void add_shape_of(cJSON *o, const cJSON *config) {
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(config, "shape");
    if (cJSON_IsArray(sh) && cJSON_GetArraySize(sh) == 3) cJSON_AddItemToObject(o, "shape", cJSON_Duplicate(sh, 1));
    else cJSON_AddNullToObject(o, "shape");
}

/* a continuous flow's solver, tolerances and scoring trace (nf_config_ode_json) */
static void add_ode_of(cJSON *o, const cJSON *config) {
    char *c = config ? cJSON_PrintUnformatted(config) : NULL;
    char *s = c ? nf_config_ode_json(c) : NULL;
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    if (j) cJSON_AddItemToObject(o, "ode", j);
    free(c);
    free(s);
}

int fd_db_model_get(fd_db *db, const char *name, cJSON **out, char *err, size_t errlen) {
    *out = NULL;
    sqlite3_stmt *st = Q(db, "SELECT id, created_at FROM models WHERE name = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int r = rc == SQLITE_DONE ? FD_ENOTFOUND : fail(db, rc, err, errlen, "get model");
        if (r == FD_ENOTFOUND) seterr(err, errlen, "no model named '%s'", name ? name : "");
        done(st);
        return r;
    }
    int64_t model_id = sqlite3_column_int64(st, 0);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "name", name);
    cJSON_AddStringToObject(root, "created_at", col_text(st, 1));
    done(st);
    st = Q(db, "SELECT version, created_at, dim, context_dim, size_bytes, sha256, config, "
               "preprocess, metrics, job_id, optimizer IS NOT NULL FROM model_versions WHERE model_id = ?1 "
               "ORDER BY version");
    if (!st) {
        cJSON_Delete(root);
        return prep_fail(db, err, errlen);
    }
    sqlite3_bind_int64(st, 1, model_id);
    cJSON *arr = cJSON_CreateArray();
    int latest = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        latest = sqlite3_column_int(st, 0);
        cJSON_AddNumberToObject(o, "version", latest);
        cJSON_AddStringToObject(o, "created_at", col_text(st, 1));
        cJSON_AddNumberToObject(o, "dim", sqlite3_column_int(st, 2));
        cJSON_AddNumberToObject(o, "context_dim", sqlite3_column_int(st, 3));
        cJSON_AddNumberToObject(o, "size_bytes", (double)sqlite3_column_int64(st, 4));
        cJSON_AddStringToObject(o, "sha256", col_text(st, 5));
        cJSON *cfg = col_json(st, 6);
        cJSON_AddItemToObject(o, "config", cfg);
        add_shape_of(o, cfg);
        add_ode_of(o, cfg);
        cJSON_AddItemToObject(o, "preprocess", col_json(st, 7));
        cJSON_AddItemToObject(o, "metrics", col_json(st, 8));
        if (sqlite3_column_type(st, 9) == SQLITE_NULL) cJSON_AddNullToObject(o, "job_id");
        else add_id_string(o, "job_id", sqlite3_column_int64(st, 9));
        cJSON_AddBoolToObject(o, "optimizer_state", sqlite3_column_int(st, 10));
        cJSON_AddItemToObject(o, "aliases", cJSON_CreateArray());
        cJSON_AddItemToArray(arr, o);
    }
    int r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "get model versions");
    done(st);
    /* aliases: {"alias": version} at the top, and each version's names */
    cJSON *aliases = cJSON_AddObjectToObject(root, "aliases");
    int dflt = 0;
    if (!r && !(st = Q(db, "SELECT alias, version FROM model_aliases WHERE model_id = ?1 ORDER BY alias")))
        r = prep_fail(db, err, errlen);
    else if (!r) {
        sqlite3_bind_int64(st, 1, model_id);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *a = col_text(st, 0);
            int av = sqlite3_column_int(st, 1);
            cJSON_AddNumberToObject(aliases, a, av);
            if (!strcmp(a, "default")) dflt = av;
            cJSON *e;
            cJSON_ArrayForEach(e, arr) {
                if (cJSON_GetObjectItemCaseSensitive(e, "version")->valueint == av)
                    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(e, "aliases"), cJSON_CreateString(a));
            }
        }
        if (rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "get aliases");
        done(st);
    }
    if (dflt || latest) cJSON_AddNumberToObject(root, "default_version", dflt ? dflt : latest);
    else cJSON_AddNullToObject(root, "default_version");
    if (latest) cJSON_AddNumberToObject(root, "latest_version", latest);
    else cJSON_AddNullToObject(root, "latest_version");
    add_content_hashes(root, arr);
    /* the latest version's image shape, or null */
    add_shape_of(root, cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1),
                                                        "config"));
    /* ... and how it scores, when it is a continuous flow */
    add_ode_of(root, cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1),
                                                      "config"));
    cJSON_AddItemToObject(root, "versions", arr);
    if (r) cJSON_Delete(root);
    else *out = root;
    return r;
}

int fd_db_model_delete(fd_db *db, const char *name, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "DELETE FROM models WHERE name = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    int r = step_done(db, st, err, errlen, "delete model");
    if (!r && sqlite3_changes(db->h) == 0) {
        seterr(err, errlen, "no model named '%s'", name ? name : "");
        r = FD_ENOTFOUND;
    }
    return r;
}

/* A value of kind longer than one chunk, owned by the model version
 * (model_id, version), into chunk rows, and their number into the
 * version's row; inside the caller's transaction. */
static int chunks_store(fd_db *db, fd_blob_kind kind, int64_t model_id, int version,
                        const void *buf, size_t len, char *err, size_t errlen) {
    int n = 0, r = fd_blob_put(db->h, kind, model_id, version, buf, len, &n, err, errlen);
    if (r) return r;
    sqlite3_stmt *st = kind == FD_BLOB_CHECKPOINT
                           ? Q(db, "UPDATE model_versions SET checkpoint_chunks = ?3 "
                                   "WHERE model_id = ?1 AND version = ?2")
                           : Q(db, "UPDATE model_versions SET optimizer_chunks = ?3 "
                                   "WHERE model_id = ?1 AND version = ?2");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, model_id);
    sqlite3_bind_int(st, 2, version);
    sqlite3_bind_int(st, 3, n);
    return step_done(db, st, err, errlen, "record the chunks");
}

/* The body of fd_db_version_add, inside the caller's transaction. */
static int version_add_tx(fd_db *db, const char *name, const void *checkpoint, size_t len,
                          int dim, int context_dim, const char *config, const char *preprocess,
                          const char *metrics, int64_t job_id, int *version, char *err,
                          size_t errlen) {
    sqlite3_stmt *st = Q(db, "INSERT INTO models (name) VALUES (?1) ON CONFLICT (name) DO NOTHING");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    int r = step_done(db, st, err, errlen, "create model");
    if (r) return r;
    /* the name's high-water mark (model_version_seq) survives a delete of
     * the model, so version numbers never restart */
    st = Q(db, "INSERT INTO model_version_seq (name, last_version) "
               "SELECT ?1, coalesce((SELECT max(v.version) FROM model_versions v JOIN models m "
               "ON m.id = v.model_id WHERE m.name = ?1), 0) + 1 WHERE 1 "
               "ON CONFLICT (name) DO UPDATE SET last_version = max(last_version + 1, "
               "coalesce((SELECT max(v.version) FROM model_versions v JOIN models m "
               "ON m.id = v.model_id WHERE m.name = ?1), 0) + 1)");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    if ((r = step_done(db, st, err, errlen, "number the version"))) return r;
    char hex[65];
    fd_sha256_hex(checkpoint, len, hex);
    /* longer than one chunk: the row gets an empty blob, the bytes go to
     * model_version_chunks below (server/blobs.h) */
    int chunked = len > fd_blob_chunk_bytes(db->h);
    st = Q(db, "INSERT INTO model_versions (model_id, version, checkpoint, sha256, size_bytes, "
               "dim, context_dim, config, preprocess, metrics, job_id) "
               "SELECT m.id, (SELECT last_version FROM model_version_seq WHERE name = ?1), "
               "?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
               "FROM models m WHERE m.name = ?1 RETURNING version, model_id");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    sqlite3_bind_blob64(st, 2, chunked ? "" : checkpoint, chunked ? 0 : (sqlite3_uint64)len,
                        SQLITE_STATIC);
    bind_text(st, 3, hex);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)len);
    sqlite3_bind_int(st, 5, dim);
    sqlite3_bind_int(st, 6, context_dim);
    bind_text(st, 7, config ? config : "{}");
    bind_text(st, 8, preprocess ? preprocess : "{}");
    bind_text(st, 9, metrics ? metrics : "{}");
    if (job_id > 0) sqlite3_bind_int64(st, 10, job_id);
    else sqlite3_bind_null(st, 10);
    int rc = sqlite3_step(st), v = 0;
    int64_t model_id = 0;
    if (rc == SQLITE_ROW) {
        v = sqlite3_column_int(st, 0);
        model_id = sqlite3_column_int64(st, 1);
        if (version) *version = v;
        rc = sqlite3_step(st);
    }
    r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "add model version");
    done(st);
    if (!r && chunked) r = chunks_store(db, FD_BLOB_CHECKPOINT, model_id, v, checkpoint, len, err, errlen);
    return r;
}

static int check_version_args(const char *name, const void *checkpoint, size_t len, int dim,
                              int context_dim, char *err, size_t errlen) {
    if (!name || !*name) {
        seterr(err, errlen, "empty model name");
        return FD_EINVAL;
    }
    if (!checkpoint || !len) {
        seterr(err, errlen, "empty checkpoint");
        return FD_EINVAL;
    }
    if (dim < 1 || context_dim < 0) {
        seterr(err, errlen, "bad dim %d / context_dim %d", dim, context_dim);
        return FD_EINVAL;
    }
    return 0;
}

static int version_add_default_tx(fd_db *db, const char *model, const void *checkpoint,
                                  size_t len, int dim, int context_dim, const char *config,
                                  const char *preprocess, const char *metrics, int64_t job_id,
                                  int set_default, int *v, char *err, size_t errlen);

/* a version with the default alias handled (fd_db_job_publish_ex), in its own transaction */
static int version_add_own_tx(fd_db *db, const char *name, const void *checkpoint, size_t len,
                              int dim, int context_dim, const char *config, const char *preprocess,
                              const char *metrics, int64_t job_id, int set_default, int *version,
                              char *err, size_t errlen) {
    int r = check_version_args(name, checkpoint, len, dim, context_dim, err, errlen);
    if (r) return r;
    if ((r = begin(db, err, errlen))) return r;
    r = version_add_default_tx(db, name, checkpoint, len, dim, context_dim, config, preprocess,
                               metrics, job_id, set_default, version, err, errlen);
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_version_add(fd_db *db, const char *name, const void *checkpoint, size_t len, int dim,
                      int context_dim, const char *config, const char *preprocess,
                      const char *metrics, int64_t job_id, int *version, char *err,
                      size_t errlen) {
    return version_add_own_tx(db, name, checkpoint, len, dim, context_dim, config, preprocess,
                              metrics, job_id, 1, version, err, errlen);
}

int fd_db_version_get(fd_db *db, const char *name, int version, void **buf, size_t *len,
                      int *version_out, char *err, size_t errlen) {
    *buf = NULL;
    *len = 0;
    sqlite3_stmt *st = Q(db, "SELECT v.version, v.checkpoint, v.sha256, v.size_bytes, "
                             "v.checkpoint_chunks, v.model_id "
                             "FROM model_versions v JOIN models m ON m.id = v.model_id "
                             "WHERE m.name = ?1 AND (?2 = 0 OR v.version = ?2) "
                             "ORDER BY v.version DESC LIMIT 1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    sqlite3_bind_int(st, 2, version);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_DONE) {
        if (version) seterr(err, errlen, "model '%s' has no version %d", name ? name : "", version);
        else seterr(err, errlen, "no model named '%s'", name ? name : "");
        r = FD_ENOTFOUND;
    } else if (rc != SQLITE_ROW) {
        r = fail(db, rc, err, errlen, "get model version");
    } else {
        int v = sqlite3_column_int(st, 0), nchunks = sqlite3_column_int(st, 4);
        const char *sha = col_text(st, 2);
        const void *blob = NULL;
        void *whole = NULL; /* the chunks put together (read while st holds the snapshot) */
        size_t n = 0;
        char hex[65] = "";
        if (nchunks > 0) {
            r = fd_blob_get(db->h, FD_BLOB_CHECKPOINT, sqlite3_column_int64(st, 5), v, nchunks,
                            sqlite3_column_int64(st, 3), &whole, &n, err, errlen);
            blob = whole;
        } else {
            blob = sqlite3_column_blob(st, 1);
            n = (size_t)sqlite3_column_bytes(st, 1);
        }
        if (!r) fd_sha256_hex(blob, n, hex);
        if (r) {
            /* reading the chunks failed; fd_blob_get said why */
        } else if (!sha || strcmp(sha, hex) || (sqlite3_int64)n != sqlite3_column_int64(st, 3)) {
            seterr(err, errlen,
                   "checkpoint of model '%s' version %d is corrupt: sha256 %s, recorded %s", name,
                   v, hex, sha ? sha : "(null)");
            r = FD_ECORRUPT;
        } else if (whole) {
            *buf = whole;
            whole = NULL;
        } else if ((*buf = malloc(n ? n : 1))) {
            memcpy(*buf, blob, n);
        } else {
            r = FD_ENOMEM;
        }
        free(whole);
        if (!r) {
            *len = n;
            if (version_out) *version_out = v;
        }
    }
    done(st);
    return r;
}

int64_t fd_db_data_version(fd_db *db) {
    sqlite3_stmt *st = Q(db, "PRAGMA data_version");
    if (!st) return -1;
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    done(st);
    return v;
}

int fd_db_version_job(fd_db *db, const char *name, int version, int64_t *job_id, char **request,
                      char *err, size_t errlen) {
    *request = NULL;
    sqlite3_stmt *st = Q(db, "SELECT j.id, j.request FROM model_versions v "
                             "JOIN models m ON m.id = v.model_id JOIN jobs j ON j.id = v.job_id "
                             "WHERE m.name = ?1 AND v.version = ?2");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    sqlite3_bind_int(st, 2, version);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) {
        *job_id = sqlite3_column_int64(st, 0);
        if (!(*request = xstrdup(col_text(st, 1)))) r = FD_ENOMEM;
    } else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "model '%s' version %d has no training job", name ? name : "", version);
        r = FD_ENOTFOUND;
    } else {
        r = fail(db, rc, err, errlen, "get the job of a version");
    }
    done(st);
    return r;
}

int fd_db_latest_version(fd_db *db, const char *name, int *version, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "SELECT max(v.version) FROM model_versions v "
                             "JOIN models m ON m.id = v.model_id WHERE m.name = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    int rc = sqlite3_step(st), r = 0;
    if (rc != SQLITE_ROW) r = fail(db, rc, err, errlen, "latest version");
    else if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
        seterr(err, errlen, "no model named '%s'", name ? name : "");
        r = FD_ENOTFOUND;
    } else if (version) *version = sqlite3_column_int(st, 0);
    done(st);
    return r;
}

/* ---- datasets ------------------------------------------------------------------------ */

static int random_hex(char *out, int ndigits) {
    unsigned char b[32];
    int nb = (ndigits + 1) / 2;
    size_t got = 0;
    while (got < (size_t)nb) {
        ssize_t k = getrandom(b + got, (size_t)nb - got, 0);
        if (k < 0) {
            if (errno == EINTR) continue;
            int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
            if (fd < 0) return -1;
            k = read(fd, b + got, (size_t)nb - got);
            close(fd);
            if (k <= 0) return -1;
        }
        got += (size_t)k;
    }
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < ndigits; i++) out[i] = digits[(b[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    out[ndigits] = 0;
    return 0;
}

static int host_is_le(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

static void bswap32_copy(void *dst, const void *src, size_t n) {
    const unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        d[4 * i] = s[4 * i + 3];
        d[4 * i + 1] = s[4 * i + 2];
        d[4 * i + 2] = s[4 * i + 1];
        d[4 * i + 3] = s[4 * i];
    }
}

/* The image shape in columns i, i+1, i+2 (shape_c, shape_h, shape_w) into
 * shape; 1 when stored, 0 (all zero) when NULL. */
static int col_shape(sqlite3_stmt *st, int i, int shape[3]) {
    for (int k = 0; k < 3; k++)
        shape[k] = sqlite3_column_type(st, i + k) == SQLITE_NULL ? 0 : sqlite3_column_int(st, i + k);
    if (shape[0] > 0 && shape[1] > 0 && shape[2] > 0) return 1;
    shape[0] = shape[1] = shape[2] = 0;
    return 0;
}

#define DATASET_COLS "id, name, format, rows, dim, is_integer, vmin, vmax, sha256, created_at, " \
                     "shape_c, shape_h, shape_w"
static cJSON *dataset_row_json(sqlite3_stmt *st) {
    /* columns: DATASET_COLS */
    cJSON *o = cJSON_CreateObject();
    int shape[3];
    cJSON_AddStringToObject(o, "id", col_text(st, 0));
    cJSON_AddStringToObject(o, "name", col_text(st, 1));
    cJSON_AddStringToObject(o, "format", col_text(st, 2));
    cJSON_AddNumberToObject(o, "rows", (double)sqlite3_column_int64(st, 3));
    cJSON_AddNumberToObject(o, "dim", sqlite3_column_int(st, 4));
    if (col_shape(st, 10, shape)) cJSON_AddItemToObject(o, "shape", cJSON_CreateIntArray(shape, 3));
    else cJSON_AddNullToObject(o, "shape");
    cJSON_AddBoolToObject(o, "is_integer", sqlite3_column_int(st, 5) != 0);
    cJSON_AddNumberToObject(o, "min", sqlite3_column_double(st, 6));
    cJSON_AddNumberToObject(o, "max", sqlite3_column_double(st, 7));
    cJSON_AddStringToObject(o, "sha256", col_text(st, 8));
    cJSON_AddStringToObject(o, "created_at", col_text(st, 9));
    return o;
}

int fd_db_dataset_add(fd_db *db, const char *name, const char *format, int64_t rows, int dim,
                      const int shape[3], int is_integer, double vmin, double vmax,
                      const char *sha256, const float *data, cJSON **out, char *err,
                      size_t errlen) {
    if (out) *out = NULL;
    int has_shape = shape && (shape[0] || shape[1] || shape[2]);
    if (!name || !format || !sha256 || !data || rows < 1 || dim < 1 ||
        (uint64_t)rows > (uint64_t)INT64_MAX / 4 / (uint64_t)dim ||
        (has_shape && (shape[0] < 1 || shape[1] < 1 || shape[2] < 1 ||
                       (int64_t)shape[0] * shape[1] * shape[2] != dim))) {
        seterr(err, errlen, "bad dataset arguments");
        return FD_EINVAL;
    }
    size_t nbytes = (size_t)rows * (size_t)dim * 4;
    if (nbytes > (size_t)sqlite3_limit(db->h, SQLITE_LIMIT_LENGTH, -1)) {
        seterr(err, errlen, "dataset of %zu bytes exceeds the database's blob limit", nbytes);
        return FD_EINVAL;
    }
    void *le = NULL;
    const void *blob = data;
    if (!host_is_le()) {
        if (!(le = malloc(nbytes))) return FD_ENOMEM;
        bswap32_copy(le, data, (size_t)rows * (size_t)dim);
        blob = le;
    }
    sqlite3_stmt *st = Q(db, "INSERT INTO datasets (id, name, format, rows, dim, is_integer, "
                             "vmin, vmax, sha256, data, shape_c, shape_h, shape_w) "
                             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
    if (!st) {
        free(le);
        return prep_fail(db, err, errlen);
    }
    char id[3 + 16 + 1];
    int r = 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        memcpy(id, "ds_", 3);
        if (random_hex(id + 3, 16)) {
            seterr(err, errlen, "no randomness for a dataset id");
            r = FD_EDB;
            break;
        }
        bind_text(st, 1, id);
        bind_text(st, 2, name);
        bind_text(st, 3, format);
        sqlite3_bind_int64(st, 4, rows);
        sqlite3_bind_int(st, 5, dim);
        sqlite3_bind_int(st, 6, is_integer ? 1 : 0);
        sqlite3_bind_double(st, 7, isfinite(vmin) ? vmin : 0);
        sqlite3_bind_double(st, 8, isfinite(vmax) ? vmax : 0);
        bind_text(st, 9, sha256);
        sqlite3_bind_blob64(st, 10, blob, (sqlite3_uint64)nbytes, SQLITE_STATIC);
        for (int k = 0; k < 3; k++) {
            if (has_shape) sqlite3_bind_int(st, 11 + k, shape[k]);
            else sqlite3_bind_null(st, 11 + k);
        }
        int rc = sqlite3_step(st);
        /* an id collision (2^-64 per pair) gets a fresh id */
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
            done(st);
            continue;
        }
        r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "add dataset");
        done(st);
        break;
    }
    free(le);
    if (!r && out) r = fd_db_dataset_get(db, id, out, err, errlen);
    return r;
}

int fd_db_datasets_list(fd_db *db, cJSON **out, char *err, size_t errlen) {
    *out = NULL;
    sqlite3_stmt *st = Q(db, "SELECT " DATASET_COLS " FROM datasets "
                             "ORDER BY created_at DESC, rowid DESC");
    if (!st) return prep_fail(db, err, errlen);
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "datasets");
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) cJSON_AddItemToArray(arr, dataset_row_json(st));
    int r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "list datasets");
    done(st);
    if (r) cJSON_Delete(root);
    else *out = root;
    return r;
}

int fd_db_dataset_get(fd_db *db, const char *id, cJSON **out, char *err, size_t errlen) {
    *out = NULL;
    sqlite3_stmt *st = Q(db, "SELECT " DATASET_COLS " FROM datasets WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, id);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) *out = dataset_row_json(st);
    else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "no dataset '%s'", id ? id : "");
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "get dataset");
    done(st);
    return r;
}

int fd_db_dataset_data(fd_db *db, const char *id, float **data, int64_t *rows, int *dim,
                       int shape[3], int *is_integer, double *vmin, double *vmax, char *err,
                       size_t errlen) {
    *data = NULL;
    sqlite3_stmt *st = Q(db, "SELECT rows, dim, is_integer, vmin, vmax, data, shape_c, shape_h, "
                             "shape_w FROM datasets WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, id);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_DONE) {
        seterr(err, errlen, "no dataset '%s'", id ? id : "");
        r = FD_ENOTFOUND;
    } else if (rc != SQLITE_ROW) {
        r = fail(db, rc, err, errlen, "read dataset");
    } else {
        int64_t nr = sqlite3_column_int64(st, 0);
        int d = sqlite3_column_int(st, 1);
        const void *blob = sqlite3_column_blob(st, 5);
        size_t n = (size_t)sqlite3_column_bytes(st, 5);
        if (nr < 1 || d < 1 || (uint64_t)nr > (uint64_t)INT64_MAX / 4 / (uint64_t)d ||
            n != (size_t)nr * (size_t)d * 4) {
            seterr(err, errlen, "dataset '%s' is corrupt: %zu bytes for (%lld, %d) float32", id, n,
                   (long long)nr, d);
            r = FD_ECORRUPT;
        } else if (!(*data = malloc(n))) {
            r = FD_ENOMEM;
        } else {
            if (host_is_le()) memcpy(*data, blob, n);
            else bswap32_copy(*data, blob, n / 4);
            if (rows) *rows = nr;
            if (dim) *dim = d;
            if (is_integer) *is_integer = sqlite3_column_int(st, 2);
            if (vmin) *vmin = sqlite3_column_double(st, 3);
            if (vmax) *vmax = sqlite3_column_double(st, 4);
            if (shape) col_shape(st, 6, shape);
        }
    }
    done(st);
    return r;
}

int fd_db_dataset_delete(fd_db *db, const char *id, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "DELETE FROM datasets WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, id);
    int r = step_done(db, st, err, errlen, "delete dataset");
    if (!r && sqlite3_changes(db->h) == 0) {
        seterr(err, errlen, "no dataset '%s'", id ? id : "");
        r = FD_ENOTFOUND;
    }
    return r;
}

/* ---- jobs ------------------------------------------------------------------------- */

static const char *const job_states[5] = {"queued", "running", "succeeded", "failed",
                                          "cancelled"};

int fd_db_job_create(fd_db *db, const char *submission_id, const char *model,
                     const char *request_json, int64_t *id, int *existed, char *err,
                     size_t errlen) {
    *id = 0;
    if (existed) *existed = 0;
    if (!model || !request_json) {
        seterr(err, errlen, "a job needs a model and a request");
        return FD_EINVAL;
    }
    if (submission_id && !*submission_id) submission_id = NULL;
    int r = begin(db, err, errlen);
    if (r) return r;
    sqlite3_stmt *st = Q(db, "INSERT INTO jobs (submission_id, model, request) VALUES (?1, ?2, ?3) "
                             "ON CONFLICT (submission_id) DO NOTHING RETURNING id");
    if (!st) {
        r = prep_fail(db, err, errlen);
        goto out;
    }
    bind_text(st, 1, submission_id);
    bind_text(st, 2, model);
    bind_text(st, 3, request_json);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
    }
    r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "create job");
    done(st);
    if (r) goto out;
    if (!*id) {
        st = Q(db, "SELECT id FROM jobs WHERE submission_id = ?1");
        if (!st) {
            r = prep_fail(db, err, errlen);
            goto out;
        }
        bind_text(st, 1, submission_id);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *id = sqlite3_column_int64(st, 0);
            if (existed) *existed = 1;
        } else {
            r = fail(db, rc == SQLITE_DONE ? SQLITE_INTERNAL : rc, err, errlen,
                     "find job by submission_id");
        }
        done(st);
        if (r) goto out;
    }
    r = commit(db, err, errlen);
out:
    if (r) rollback(db);
    return r;
}

/* Columns of every job query, in the order job_row_json reads them. */
#define JOB_COLS                                                                                \
    "id, state, model, version, progress, error, created_at, started_at, finished_at, "       \
    "submission_id, request, cancel_requested"

static cJSON *job_row_json(sqlite3_stmt *st) {
    cJSON *o = cJSON_CreateObject();
    add_id_string(o, "id", sqlite3_column_int64(st, 0));
    cJSON_AddStringToObject(o, "state", col_text(st, 1));
    cJSON_AddStringToObject(o, "model", col_text(st, 2));
    if (sqlite3_column_type(st, 3) != SQLITE_NULL)
        cJSON_AddNumberToObject(o, "version", sqlite3_column_int(st, 3));
    cJSON_AddItemToObject(o, "progress", col_json(st, 4));
    add_text_if(o, "error", st, 5);
    add_text_if(o, "created_at", st, 6);
    add_text_if(o, "started_at", st, 7);
    add_text_if(o, "finished_at", st, 8);
    add_text_if(o, "submission_id", st, 9);
    cJSON_AddItemToObject(o, "request", col_json(st, 10));
    if (sqlite3_column_int(st, 11)) cJSON_AddBoolToObject(o, "cancel_requested", 1);
    return o;
}

int fd_db_job_get(fd_db *db, int64_t id, cJSON **out, char *err, size_t errlen) {
    *out = NULL;
    sqlite3_stmt *st = Q(db, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) *out = job_row_json(st);
    else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "no job %lld", (long long)id);
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "get job");
    done(st);
    return r;
}

int fd_db_jobs_list(fd_db *db, const char *state, int64_t page_token, int limit, cJSON **out,
                    int64_t *next, char *err, size_t errlen) {
    *out = NULL;
    if (next) *next = 0;
    if (limit <= 0) limit = 50;
    if (limit > 1000) limit = 1000;
    sqlite3_stmt *st = Q(db, "SELECT " JOB_COLS " FROM jobs "
                             "WHERE (?1 IS NULL OR state = ?1) AND (?2 <= 0 OR id < ?2) "
                             "ORDER BY id DESC LIMIT ?3");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, state);
    sqlite3_bind_int64(st, 2, page_token);
    sqlite3_bind_int(st, 3, limit + 1);
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "jobs");
    int rc, n = 0;
    int64_t last = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == limit) { /* one more exists: the page continues below the last id */
            if (next) *next = last;
            continue;
        }
        last = sqlite3_column_int64(st, 0);
        cJSON_AddItemToArray(arr, job_row_json(st));
        n++;
    }
    int r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "list jobs");
    done(st);
    if (r) cJSON_Delete(root);
    else *out = root;
    return r;
}

int fd_db_job_claim(fd_db *db, int64_t *id, char **request, char *err, size_t errlen) {
    *id = 0;
    if (request) *request = NULL;
    /* one statement: the write lock is taken before the oldest queued job is
     * chosen, so two connections never claim the same one */
    sqlite3_stmt *st = Q(db, "UPDATE jobs SET state = 'running', start_attempts = 1, "
                             "started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                             "WHERE id = (SELECT id FROM jobs WHERE state = 'queued' "
                             "ORDER BY id LIMIT 1) RETURNING id, request");
    if (!st) return prep_fail(db, err, errlen);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        if (request && !(*request = xstrdup(col_text(st, 1)))) r = FD_ENOMEM;
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE && !r) r = fail(db, rc, err, errlen, "claim job");
    done(st);
    if (r == FD_ENOMEM) {
        /* the job is running with nobody on it: put it back */
        st = Q(db, "UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ?1");
        if (st) {
            sqlite3_bind_int64(st, 1, *id);
            step_done(db, st, NULL, 0, "unclaim");
        }
        *id = 0;
    } else if (r && request) {
        free(*request);
        *request = NULL;
    }
    if (r) *id = 0;
    return r;
}

int fd_db_jobs_running(fd_db *db, int64_t **ids, int *n, char *err, size_t errlen) {
    *ids = NULL;
    *n = 0;
    sqlite3_stmt *st = Q(db, "SELECT id FROM jobs WHERE state = 'running' ORDER BY id");
    if (!st) return prep_fail(db, err, errlen);
    int rc, cap = 0, r = 0;
    int64_t *v = NULL;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            int64_t *p = realloc(v, (size_t)cap * sizeof *v);
            if (!p) {
                r = FD_ENOMEM;
                break;
            }
            v = p;
        }
        v[(*n)++] = sqlite3_column_int64(st, 0);
    }
    if (!r && rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "list running jobs");
    done(st);
    if (r) {
        free(v);
        *n = 0;
        return r;
    }
    *ids = v;
    return 0;
}

int fd_db_job_request(fd_db *db, int64_t id, char **request, char *err, size_t errlen) {
    *request = NULL;
    sqlite3_stmt *st = Q(db, "SELECT request FROM jobs WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) {
        if (!(*request = xstrdup(col_text(st, 0)))) r = FD_ENOMEM;
    } else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "no job %lld", (long long)id);
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "get job request");
    done(st);
    return r;
}

int fd_db_job_progress(fd_db *db, int64_t id, const char *progress_json, char *err,
                       size_t errlen) {
    sqlite3_stmt *st = Q(db, "UPDATE jobs SET progress = ?2 WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    bind_text(st, 2, progress_json);
    int r = step_done(db, st, err, errlen, "job progress");
    if (!r && sqlite3_changes(db->h) == 0) {
        seterr(err, errlen, "no job %lld", (long long)id);
        r = FD_ENOTFOUND;
    }
    return r;
}

int fd_db_job_metric_add(fd_db *db, int64_t id, int64_t step, const char *kind, int epoch,
                         double train_loss, double val_loss, double lr, double grad_norm,
                         double time, char *err, size_t errlen) {
    /* a resumed job logs the steps after its checkpoint again: replace */
    sqlite3_stmt *st = Q(db, "INSERT OR REPLACE INTO job_metrics (job_id, step, kind, epoch, "
                             "train_loss, val_loss, lr, grad_norm, time) "
                             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, step);
    bind_text(st, 3, kind ? kind : "train");
    sqlite3_bind_int(st, 4, epoch);
    bind_real(st, 5, train_loss);
    bind_real(st, 6, val_loss);
    bind_real(st, 7, lr);
    bind_real(st, 8, grad_norm);
    sqlite3_bind_double(st, 9, isfinite(time) ? time : 0);
    return step_done(db, st, err, errlen, "add job metric");
}

int fd_db_job_metrics(fd_db *db, int64_t id, int64_t after_step, int limit, cJSON **out,
                      char *err, size_t errlen) {
    *out = NULL;
    if (limit <= 0) limit = 1000;
    if (limit > 100000) limit = 100000;
    /* limit counts steps, so the train and val rows of one step are never
     * split across pages */
    sqlite3_stmt *st = Q(db, "SELECT step, epoch, kind, train_loss, val_loss, lr, grad_norm, time "
                             "FROM job_metrics WHERE job_id = ?1 AND step > ?2 AND step <= "
                             "(SELECT max(step) FROM (SELECT DISTINCT step FROM job_metrics "
                             "WHERE job_id = ?1 AND step > ?2 ORDER BY step LIMIT ?3)) "
                             "ORDER BY step, kind");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, after_step);
    sqlite3_bind_int(st, 3, limit);
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "metrics");
    int rc, have = 0;
    int64_t last = after_step;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        last = sqlite3_column_int64(st, 0);
        have = 1;
        cJSON_AddNumberToObject(o, "step", (double)last);
        cJSON_AddNumberToObject(o, "epoch", sqlite3_column_int(st, 1));
        cJSON_AddStringToObject(o, "kind", col_text(st, 2));
        add_real_or_null(o, "train_loss", st, 3);
        add_real_or_null(o, "val_loss", st, 4);
        add_real_or_null(o, "lr", st, 5);
        add_real_or_null(o, "grad_norm", st, 6);
        add_real_or_null(o, "time", st, 7);
        cJSON_AddItemToArray(arr, o);
    }
    int r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "job metrics");
    done(st);
    if (r) {
        cJSON_Delete(root);
        return r;
    }
    /* next_after_step: where the next page starts (null when none is left now) */
    int more = 0;
    if (have) {
        st = Q(db, "SELECT 1 FROM job_metrics WHERE job_id = ?1 AND step > ?2 LIMIT 1");
        if (!st) {
            cJSON_Delete(root);
            return prep_fail(db, err, errlen);
        }
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, last);
        rc = sqlite3_step(st);
        more = rc == SQLITE_ROW;
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "job metrics");
        done(st);
    }
    if (r) {
        cJSON_Delete(root);
        return r;
    }
    if (more) cJSON_AddNumberToObject(root, "next_after_step", (double)last);
    else cJSON_AddNullToObject(root, "next_after_step");
    *out = root;
    return 0;
}

/* The state of job id inside a transaction: 0..4 (job_states), or FD_ENOTFOUND. */
static int job_state(fd_db *db, int64_t id, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "SELECT state FROM jobs WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), r = FD_EDB;
    if (rc == SQLITE_ROW) {
        const char *s = col_text(st, 0);
        for (int i = 0; i < 5; i++)
            if (s && !strcmp(s, job_states[i])) r = i;
        if (r < 0) seterr(err, errlen, "job %lld has unknown state '%s'", (long long)id, s ? s : "");
    } else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "no job %lld", (long long)id);
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "job state");
    done(st);
    return r;
}

int fd_db_job_cancel(fd_db *db, int64_t id, char *err, size_t errlen) {
    int r = begin(db, err, errlen);
    if (r) return r;
    int s = job_state(db, id, err, errlen);
    sqlite3_stmt *st = NULL;
    if (s < 0) {
        r = s;
    } else if (s == 0) {
        st = Q(db, "UPDATE jobs SET state = 'cancelled', "
                   "finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1");
    } else if (s == 1) {
        st = Q(db, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1");
    } else {
        seterr(err, errlen, "job %lld already finished (%s)", (long long)id, job_states[s]);
        r = FD_ECONFLICT;
    }
    if (!r) {
        if (!st) r = prep_fail(db, err, errlen);
        else {
            sqlite3_bind_int64(st, 1, id);
            r = step_done(db, st, err, errlen, "cancel job");
        }
    }
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_job_cancel_requested(fd_db *db, int64_t id) {
    sqlite3_stmt *st = Q(db, "SELECT cancel_requested FROM jobs WHERE id = ?1");
    if (!st) return 0;
    sqlite3_bind_int64(st, 1, id);
    int v = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) != 0;
    done(st);
    return v;
}

/* Inside a transaction: the job leaves queued/running for a final state. */
static int job_finish_tx(fd_db *db, int64_t id, const char *state, int version,
                         const char *error, int keep_state, char *err, size_t errlen) {
    int s = job_state(db, id, err, errlen);
    if (s < 0) return s;
    if (s >= 2) {
        seterr(err, errlen, "job %lld already finished (%s)", (long long)id, job_states[s]);
        return FD_ECONFLICT;
    }
    sqlite3_stmt *st = Q(db, "UPDATE jobs SET state = ?2, version = ?3, error = ?4, "
                             "finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    bind_text(st, 2, state);
    if (version > 0) sqlite3_bind_int(st, 3, version);
    else sqlite3_bind_null(st, 3);
    bind_text(st, 4, error);
    int r = step_done(db, st, err, errlen, "finish job");
    if (r || keep_state) return r;
    st = Q(db, "DELETE FROM job_train_state WHERE job_id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    return step_done(db, st, err, errlen, "delete train state");
}

int fd_db_job_finish(fd_db *db, int64_t id, const char *state, int version, const char *error,
                     char *err, size_t errlen) {
    return fd_db_job_finish_ex(db, id, state, version, error, state && !strcmp(state, "cancelled"),
                               err, errlen);
}

int fd_db_job_finish_ex(fd_db *db, int64_t id, const char *state, int version, const char *error,
                        int keep_state, char *err, size_t errlen) {
    if (!state || (strcmp(state, "succeeded") && strcmp(state, "failed") &&
                   strcmp(state, "cancelled"))) {
        seterr(err, errlen, "'%s' is not a final job state", state ? state : "(null)");
        return FD_EINVAL;
    }
    int r = begin(db, err, errlen);
    if (r) return r;
    r = job_finish_tx(db, id, state, version, error, keep_state && strcmp(state, "succeeded"),
                      err, errlen);
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_job_publish(fd_db *db, int64_t id, const char *model, const void *checkpoint,
                      size_t len, int dim, int context_dim, const char *config,
                      const char *preprocess, const char *metrics, int *version, char *err,
                      size_t errlen) {
    return fd_db_job_publish_ex(db, id, model, checkpoint, len, dim, context_dim, config,
                                preprocess, metrics, 1, NULL, 0, version, err, errlen);
}

static int alias_put_tx(fd_db *db, const char *name, const char *alias, int version, char *err,
                        size_t errlen);

/* version_add_tx and the default alias (fd_db_job_publish_ex says how) */
static int version_add_default_tx(fd_db *db, const char *model, const void *checkpoint,
                                  size_t len, int dim, int context_dim, const char *config,
                                  const char *preprocess, const char *metrics, int64_t job_id,
                                  int set_default, int *v, char *err, size_t errlen) {
    /* set_default 0 on a model whose default is "the latest": pin it to
     * the version that is the latest now, before adding the new one */
    int prev = 0, cur = 0, has_default = 0, r = fd_db_alias_get(db, model, "default", &cur, err, errlen);
    if (!r) has_default = 1;
    else if (r != FD_ENOTFOUND) return r;
    else if (!set_default) {
        r = fd_db_latest_version(db, model, &prev, err, errlen);
        if (r == FD_ENOTFOUND) prev = 0; /* the first version: nothing to keep */
        else if (r) return r;
    }
    if ((r = version_add_tx(db, model, checkpoint, len, dim, context_dim, config, preprocess,
                            metrics, job_id, v, err, errlen)))
        return r;
    if (set_default && has_default) return alias_put_tx(db, model, "default", *v, err, errlen);
    if (!set_default && !has_default && prev > 0) return alias_put_tx(db, model, "default", prev, err, errlen);
    return 0;
}

int fd_db_version_upload(fd_db *db, const char *name, const void *checkpoint, size_t len, int dim,
                         int context_dim, const char *config, const char *preprocess,
                         const char *metrics, int set_default, int *version, char *err,
                         size_t errlen) {
    return version_add_own_tx(db, name, checkpoint, len, dim, context_dim, config, preprocess,
                              metrics, 0, set_default, version, err, errlen);
}

int fd_db_job_publish_ex(fd_db *db, int64_t id, const char *model, const void *checkpoint,
                         size_t len, int dim, int context_dim, const char *config,
                         const char *preprocess, const char *metrics, int set_default,
                         const void *optimizer, size_t optimizer_len, int *version, char *err,
                         size_t errlen) {
    int r = check_version_args(model, checkpoint, len, dim, context_dim, err, errlen);
    if (r) return r;
    if ((r = begin(db, err, errlen))) return r;
    int v = 0;
    int s = job_state(db, id, err, errlen);
    if (s < 0) r = s;
    else if (s >= 2) {
        seterr(err, errlen, "job %lld already finished (%s)", (long long)id, job_states[s]);
        r = FD_ECONFLICT;
    }
    if (!r)
        r = version_add_default_tx(db, model, checkpoint, len, dim, context_dim, config,
                                   preprocess, metrics, id, set_default, &v, err, errlen);
    if (!r && optimizer && optimizer_len) {
        /* longer than one chunk: an empty blob here, the bytes in chunks */
        int chunked = optimizer_len > fd_blob_chunk_bytes(db->h);
        sqlite3_stmt *st = Q(db, "UPDATE model_versions SET optimizer = ?3 WHERE version = ?2 AND "
                                 "model_id = (SELECT id FROM models WHERE name = ?1) "
                                 "RETURNING model_id");
        if (!st) r = prep_fail(db, err, errlen);
        else {
            bind_text(st, 1, model);
            sqlite3_bind_int(st, 2, v);
            sqlite3_bind_blob64(st, 3, chunked ? "" : optimizer,
                                chunked ? 0 : (sqlite3_uint64)optimizer_len, SQLITE_STATIC);
            int rc = sqlite3_step(st);
            int64_t model_id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
            while (rc == SQLITE_ROW) rc = sqlite3_step(st);
            r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "store the optimizer state");
            done(st);
            if (!r && chunked)
                r = chunks_store(db, FD_BLOB_OPTIMIZER, model_id, v, optimizer, optimizer_len, err,
                                 errlen);
        }
    }
    if (!r) r = job_finish_tx(db, id, "succeeded", v, NULL, 0, err, errlen);
    if (!r) r = commit(db, err, errlen);
    if (r) {
        rollback(db);
        return r;
    }
    if (version) *version = v;
    return 0;
}

int fd_db_train_state_put(fd_db *db, int64_t id, int64_t step, const void *state, size_t len,
                          char *err, size_t errlen) {
    if (!state || !len) {
        seterr(err, errlen, "empty train state");
        return FD_EINVAL;
    }
    /* one transaction: the row, then (longer than one chunk) its chunks
     * replacing the previous state's, so a crash keeps one whole state */
    int r = begin(db, err, errlen);
    if (r) return r;
    int chunked = len > fd_blob_chunk_bytes(db->h), n = 0;
    sqlite3_stmt *st = Q(db, "INSERT INTO job_train_state (job_id, step, state, chunks) "
                             "VALUES (?1, ?2, ?3, 0) ON CONFLICT (job_id) DO UPDATE SET "
                             "step = excluded.step, state = excluded.state, chunks = 0, "
                             "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')");
    if (!st) r = prep_fail(db, err, errlen);
    else {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, step);
        sqlite3_bind_blob64(st, 3, chunked ? "" : state, chunked ? 0 : (sqlite3_uint64)len,
                            SQLITE_STATIC);
        r = step_done(db, st, err, errlen, "save train state");
    }
    /* deletes the previous state's chunks in any case */
    if (!r) r = fd_blob_put(db->h, FD_BLOB_TRAIN_STATE, id, 0, state, len, &n, err, errlen);
    if (!r && n) {
        if (!(st = Q(db, "UPDATE job_train_state SET chunks = ?2 WHERE job_id = ?1")))
            r = prep_fail(db, err, errlen);
        else {
            sqlite3_bind_int64(st, 1, id);
            sqlite3_bind_int(st, 2, n);
            r = step_done(db, st, err, errlen, "record the chunks");
        }
    }
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_train_state_get(fd_db *db, int64_t id, void **state, size_t *len, int64_t *step,
                          char *err, size_t errlen) {
    *state = NULL;
    *len = 0;
    sqlite3_stmt *st = Q(db, "SELECT step, state, chunks FROM job_train_state WHERE job_id = ?1");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW && sqlite3_column_int(st, 2) > 0) {
        /* in chunks, read while st holds the snapshot */
        r = fd_blob_get(db->h, FD_BLOB_TRAIN_STATE, id, 0, sqlite3_column_int(st, 2), 0, state,
                        len, err, errlen);
        if (!r && step) *step = sqlite3_column_int64(st, 0);
    } else if (rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_bytes(st, 1);
        const void *b = sqlite3_column_blob(st, 1);
        if (!(*state = malloc(n ? n : 1))) r = FD_ENOMEM;
        else {
            if (n) memcpy(*state, b, n);
            *len = n;
            if (step) *step = sqlite3_column_int64(st, 0);
        }
    } else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "job %lld has no train state", (long long)id);
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "get train state");
    done(st);
    return r;
}

int fd_db_job_counts(fd_db *db, int64_t counts[5], char *err, size_t errlen) {
    for (int i = 0; i < 5; i++) counts[i] = 0;
    sqlite3_stmt *st = Q(db, "SELECT state, count(*) FROM jobs GROUP BY state");
    if (!st) return prep_fail(db, err, errlen);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *s = col_text(st, 0);
        for (int i = 0; i < 5; i++)
            if (s && !strcmp(s, job_states[i])) counts[i] = sqlite3_column_int64(st, 1);
    }
    int r = rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "job counts");
    done(st);
    return r;
}

/* ---- tokens ------------------------------------------------------------------------- */

int fd_db_tokens_replace(fd_db *db, const char *const *hashes, const char *const *scopes, int n,
                         char *err, size_t errlen) {
    if (n < 0 || (n > 0 && (!hashes || !scopes))) {
        seterr(err, errlen, "bad token list");
        return FD_EINVAL;
    }
    int r = begin(db, err, errlen);
    if (r) return r;
    sqlite3_stmt *st = Q(db, "DELETE FROM api_tokens");
    if (!st) r = prep_fail(db, err, errlen);
    else r = step_done(db, st, err, errlen, "clear tokens");
    for (int i = 0; i < n && !r; i++) {
        st = Q(db, "INSERT INTO api_tokens (token_hash, scope) VALUES (?1, ?2) "
                   "ON CONFLICT (token_hash) DO UPDATE SET scope = excluded.scope");
        if (!st) {
            r = prep_fail(db, err, errlen);
            break;
        }
        bind_text(st, 1, hashes[i]);
        bind_text(st, 2, scopes[i]);
        r = step_done(db, st, err, errlen, "store token");
    }
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_token_scope(fd_db *db, const char *hash, char scope[8], char *err, size_t errlen) {
    scope[0] = 0;
    sqlite3_stmt *st = Q(db, "SELECT scope FROM api_tokens WHERE token_hash = ?1");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, hash);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) snprintf(scope, 8, "%s", col_text(st, 0) ? col_text(st, 0) : "");
    else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "unknown token");
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "token lookup");
    done(st);
    return r;
}

/* ---- lifecycle: aliases, version delete, start attempts, resume ------------------------ */

int fd_db_alias_get(fd_db *db, const char *name, const char *alias, int *version, char *err,
                    size_t errlen) {
    sqlite3_stmt *st = Q(db, "SELECT a.version FROM model_aliases a JOIN models m ON m.id = a.model_id "
                             "WHERE m.name = ?1 AND a.alias = ?2");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    bind_text(st, 2, alias);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) *version = sqlite3_column_int(st, 0);
    else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "model '%s' has no alias '%s'", name ? name : "", alias ? alias : "");
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "get alias");
    done(st);
    return r;
}

/* 1 if model name has version v, 0 if not, or an FD_E* code */
static int version_exists(fd_db *db, const char *name, int v, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "SELECT 1 FROM model_versions x JOIN models m ON m.id = x.model_id "
                             "WHERE m.name = ?1 AND x.version = ?2");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    sqlite3_bind_int(st, 2, v);
    int rc = sqlite3_step(st);
    int r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : fail(db, rc, err, errlen, "find version");
    done(st);
    return r;
}

static int alias_put_tx(fd_db *db, const char *name, const char *alias, int version, char *err,
                        size_t errlen) {
    sqlite3_stmt *st = Q(db, "INSERT INTO model_aliases (model_id, alias, version) "
                             "SELECT id, ?2, ?3 FROM models WHERE name = ?1 "
                             "ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, "
                             "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    bind_text(st, 2, alias);
    sqlite3_bind_int(st, 3, version);
    return step_done(db, st, err, errlen, "set alias");
}

int fd_db_alias_set(fd_db *db, const char *name, const char *alias, int version, char *err,
                    size_t errlen) {
    int r = begin(db, err, errlen);
    if (r) return r;
    int e = version_exists(db, name, version, err, errlen);
    if (e == 0) {
        seterr(err, errlen, "model '%s' has no version %d", name, version);
        r = FD_ENOTFOUND;
    } else if (e < 0) r = e;
    if (!r) r = alias_put_tx(db, name, alias, version, err, errlen);
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_alias_delete(fd_db *db, const char *name, const char *alias, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "DELETE FROM model_aliases WHERE alias = ?2 AND "
                             "model_id = (SELECT id FROM models WHERE name = ?1)");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    bind_text(st, 2, alias);
    int r = step_done(db, st, err, errlen, "delete alias");
    if (!r && sqlite3_changes(db->h) == 0) {
        seterr(err, errlen, "model '%s' has no alias '%s'", name, alias);
        r = FD_ENOTFOUND;
    }
    return r;
}

int fd_db_default_version(fd_db *db, const char *name, int *version, char *err, size_t errlen) {
    int r = fd_db_alias_get(db, name, "default", version, err, errlen);
    if (r != FD_ENOTFOUND) return r;
    return fd_db_latest_version(db, name, version, err, errlen);
}

int fd_db_resolve_version(fd_db *db, const char *name, const char *spec, int *version, char *err,
                          size_t errlen) {
    if (!spec || !*spec) return fd_db_default_version(db, name, version, err, errlen);
    if (!strcmp(spec, "latest")) return fd_db_latest_version(db, name, version, err, errlen);
    if (*spec >= '0' && *spec <= '9') {
        char *end;
        long v = strtol(spec, &end, 10);
        if (*end || v < 1 || v > INT_MAX) {
            seterr(err, errlen, "'%s' is neither a version number nor an alias", spec);
            return FD_EINVAL;
        }
        int e = version_exists(db, name, (int)v, err, errlen);
        if (e < 0) return e;
        if (!e) {
            seterr(err, errlen, "model '%s' has no version %ld", name, v);
            return FD_ENOTFOUND;
        }
        *version = (int)v;
        return 0;
    }
    return fd_db_alias_get(db, name, spec, version, err, errlen);
}

int fd_db_version_delete(fd_db *db, const char *name, int version, char alias[65], char *err,
                         size_t errlen) {
    if (alias) alias[0] = 0;
    int r = begin(db, err, errlen);
    if (r) return r;
    int e = version_exists(db, name, version, err, errlen);
    if (e == 0) {
        seterr(err, errlen, "model '%s' has no version %d", name, version);
        r = FD_ENOTFOUND;
    } else if (e < 0) r = e;
    sqlite3_stmt *st;
    if (!r) {
        st = Q(db, "SELECT a.alias FROM model_aliases a JOIN models m ON m.id = a.model_id "
                   "WHERE m.name = ?1 AND a.version = ?2 ORDER BY a.alias LIMIT 1");
        if (!st) r = prep_fail(db, err, errlen);
        else {
            bind_text(st, 1, name);
            sqlite3_bind_int(st, 2, version);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                seterr(err, errlen, "alias '%s' points at version %d", col_text(st, 0), version);
                if (alias) snprintf(alias, 65, "%s", col_text(st, 0));
                r = FD_ECONFLICT;
            } else if (rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "find aliases");
            done(st);
        }
    }
    if (!r) {
        st = Q(db, "DELETE FROM model_versions WHERE version = ?2 AND "
                   "model_id = (SELECT id FROM models WHERE name = ?1)");
        if (!st) r = prep_fail(db, err, errlen);
        else {
            bind_text(st, 1, name);
            sqlite3_bind_int(st, 2, version);
            r = step_done(db, st, err, errlen, "delete version");
        }
    }
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_version_optimizer(fd_db *db, const char *name, int version, void **buf, size_t *len,
                            char *err, size_t errlen) {
    *buf = NULL;
    *len = 0;
    sqlite3_stmt *st = Q(db, "SELECT v.optimizer, v.optimizer_chunks, v.model_id FROM model_versions v "
                             "JOIN models m ON m.id = v.model_id "
                             "WHERE m.name = ?1 AND v.version = ?2");
    if (!st) return prep_fail(db, err, errlen);
    bind_text(st, 1, name);
    sqlite3_bind_int(st, 2, version);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW && sqlite3_column_int(st, 1) > 0) {
        /* in chunks, read while st holds the snapshot */
        r = fd_blob_get(db->h, FD_BLOB_OPTIMIZER, sqlite3_column_int64(st, 2), version,
                        sqlite3_column_int(st, 1), 0, buf, len, err, errlen);
    } else if (rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (sqlite3_column_type(st, 0) != SQLITE_NULL && n) {
            if (!(*buf = malloc(n))) r = FD_ENOMEM;
            else {
                memcpy(*buf, sqlite3_column_blob(st, 0), n);
                *len = n;
            }
        }
    } else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "model '%s' has no version %d", name, version);
        r = FD_ENOTFOUND;
    } else r = fail(db, rc, err, errlen, "get optimizer state");
    done(st);
    return r;
}

int fd_db_job_start_attempt(fd_db *db, int64_t id, int *attempts, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "UPDATE jobs SET start_attempts = start_attempts + 1 "
                             "WHERE id = ?1 AND state = 'running' RETURNING start_attempts");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) {
        *attempts = sqlite3_column_int(st, 0);
        rc = sqlite3_step(st);
    } else if (rc == SQLITE_DONE) {
        seterr(err, errlen, "job %lld is not running", (long long)id);
        r = FD_ENOTFOUND;
    }
    if (!r && rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "count a start attempt");
    done(st);
    return r;
}

int fd_db_job_reset_attempts(fd_db *db, int64_t id, int attempts, char *err, size_t errlen) {
    sqlite3_stmt *st = Q(db, "UPDATE jobs SET start_attempts = ?2 WHERE id = ?1 AND state = 'running'");
    if (!st) return prep_fail(db, err, errlen);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, attempts);
    return step_done(db, st, err, errlen, "record a clean stop");
}

int fd_db_job_resume(fd_db *db, int64_t id, int64_t *step, char *err, size_t errlen) {
    *step = -1;
    int r = begin(db, err, errlen);
    if (r) return r;
    int s = job_state(db, id, err, errlen);
    sqlite3_stmt *st;
    if (s < 0) r = s;
    else if (s != 3 && s != 4) {
        seterr(err, errlen, "job %lld is %s: only cancelled or failed jobs resume", (long long)id,
               job_states[s]);
        r = FD_ECONFLICT;
    }
    if (!r) {
        st = Q(db, "SELECT step FROM job_train_state WHERE job_id = ?1");
        if (!st) r = prep_fail(db, err, errlen);
        else {
            sqlite3_bind_int64(st, 1, id);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) *step = sqlite3_column_int64(st, 0);
            else if (rc != SQLITE_DONE) r = fail(db, rc, err, errlen, "get train state");
            done(st);
        }
    }
    if (!r && s == 3 && *step < 0) {
        seterr(err, errlen, "job %lld failed without a saved training state: submit it again",
               (long long)id);
        r = FD_EINVAL;
    }
    if (!r) {
        st = Q(db, "UPDATE jobs SET state = 'queued', cancel_requested = 0, error = NULL, "
                   "finished_at = NULL, started_at = NULL, start_attempts = 0 WHERE id = ?1");
        if (!st) r = prep_fail(db, err, errlen);
        else {
            sqlite3_bind_int64(st, 1, id);
            r = step_done(db, st, err, errlen, "resume job");
        }
    }
    if (!r) r = commit(db, err, errlen);
    if (r) rollback(db);
    return r;
}

int fd_db_synchronous(fd_db *db) {
    sqlite3_stmt *st = Q(db, "PRAGMA synchronous");
    int v = st && sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_reset(st);
    return v;
}
