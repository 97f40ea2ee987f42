/* blobs.c: values longer than one SQLite blob, in chunks (blobs.h).
 *
 * The statements are string literals (PREP only compiles with one); values
 * are bound, never formatted into SQL (as everywhere in server/db.c).  They
 * are prepared per call: a chunked value is megabytes to gigabytes, next to
 * which a prepare costs nothing. */
#include "blobs.h"
#include "db.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_CAP ((size_t)256 << 20)

static const char *const kind_name[] = {"checkpoint", "optimizer state", "training state"};

/* a message into err (when given) */
#define seterr(err, errlen, ...) ((err) && (errlen) ? (void)snprintf((err), (errlen), __VA_ARGS__) : (void)0)

static int fail(sqlite3 *h, int rc, char *err, size_t errlen, const char *what) {
    seterr(err, errlen, "%s: %s", what, sqlite3_errmsg(h));
    return fd_db_sqlite_code(rc);
}

size_t fd_blob_chunk_bytes(sqlite3 *h) {
    int lim = sqlite3_limit(h, SQLITE_LIMIT_LENGTH, -1);
    size_t c = lim > 0 ? (size_t)lim - (size_t)lim / 16 : 1;
    if (c > CHUNK_CAP) c = CHUNK_CAP;
    return c ? c : 1;
}

/* The owner key of blob_chunks (migrations/0004_blob_chunks.sql). */
static void owner_key(fd_blob_kind kind, int64_t a, int64_t b, char out[64]) {
    if (kind == FD_BLOB_TRAIN_STATE) snprintf(out, 64, "train_state/%lld", (long long)a);
    else
        snprintf(out, 64, "%s/%lld/%lld", kind == FD_BLOB_CHECKPOINT ? "checkpoint" : "optimizer",
                 (long long)a, (long long)b);
}

/* PREP(h, "SQL", owner): the statement with ?1 = owner bound, or NULL;
 * the "" lit "" only compiles with a string literal */
#define PREP(h, blob_lit, owner) prep_owner((h), "" blob_lit "", (owner))
static sqlite3_stmt *prep_owner(sqlite3 *h, const char *blob_lit, const char *owner) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h, blob_lit, -1, &st, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return NULL;
    }
    sqlite3_bind_text(st, 1, owner, -1, SQLITE_TRANSIENT);
    return st;
}

int fd_blob_put(sqlite3 *h, fd_blob_kind kind, int64_t a, int64_t b, const void *buf, size_t len,
                int *nchunks, char *err, size_t errlen) {
    *nchunks = 0;
    char owner[64];
    owner_key(kind, a, b, owner);
    sqlite3_stmt *st = PREP(h, "DELETE FROM blob_chunks WHERE owner = ?1", owner);
    if (!st) return fail(h, sqlite3_errcode(h), err, errlen, "prepare");
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return fail(h, rc, err, errlen, "delete old chunks");
    size_t chunk = fd_blob_chunk_bytes(h);
    if (len <= chunk) return 0;
    size_t n = (len + chunk - 1) / chunk;
    if (n > INT32_MAX) {
        seterr(err, errlen, "%s of %zu bytes needs too many chunks", kind_name[kind], len);
        return FD_EINVAL;
    }
    if (!(st = PREP(h, "INSERT INTO blob_chunks (owner, idx, data) VALUES (?1, ?2, ?3)", owner)))
        return fail(h, sqlite3_errcode(h), err, errlen, "prepare");
    const unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        size_t off = i * chunk, m = len - off < chunk ? len - off : chunk;
        sqlite3_bind_int64(st, 2, (sqlite3_int64)i);
        sqlite3_bind_blob64(st, 3, p + off, (sqlite3_uint64)m, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            int r = fail(h, rc, err, errlen, "store a chunk");
            sqlite3_finalize(st);
            return r;
        }
    }
    sqlite3_finalize(st);
    *nchunks = (int)n;
    return 0;
}

int fd_blob_get(sqlite3 *h, fd_blob_kind kind, int64_t a, int64_t b, int nchunks,
                int64_t expect_len, void **out, size_t *len, char *err, size_t errlen) {
    *out = NULL;
    *len = 0;
    char owner[64];
    owner_key(kind, a, b, owner);
    sqlite3_stmt *st = PREP(h, "SELECT count(*), coalesce(sum(length(data)), 0) FROM blob_chunks "
                               "WHERE owner = ?1", owner);
    if (!st) return fail(h, sqlite3_errcode(h), err, errlen, "prepare");
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int r = fail(h, rc, err, errlen, "size the chunks");
        sqlite3_finalize(st);
        return r;
    }
    int64_t count = sqlite3_column_int64(st, 0), total = sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    if (count != nchunks || total <= 0 || (expect_len > 0 && total != expect_len) ||
        (uint64_t)total > (uint64_t)SIZE_MAX) {
        seterr(err, errlen, "%s is corrupt: %lld chunks of %lld bytes stored, %d chunks%s recorded",
               kind_name[kind], (long long)count, (long long)total, nchunks,
               expect_len > 0 ? " and another size" : "");
        return FD_ECORRUPT;
    }
    unsigned char *buf = malloc((size_t)total);
    if (!buf) {
        seterr(err, errlen, "out of memory for a %s of %lld bytes", kind_name[kind], (long long)total);
        return FD_ENOMEM;
    }
    if (!(st = PREP(h, "SELECT idx, data FROM blob_chunks WHERE owner = ?1 ORDER BY idx", owner))) {
        free(buf);
        return fail(h, sqlite3_errcode(h), err, errlen, "prepare");
    }
    size_t at = 0;
    int64_t want = 0;
    int r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 1);
        size_t m = (size_t)sqlite3_column_bytes(st, 1);
        if (sqlite3_column_int64(st, 0) != want++ || m > (size_t)total - at || (m && !p)) {
            seterr(err, errlen, "%s is corrupt: chunk %lld out of place", kind_name[kind],
                   (long long)(want - 1));
            r = FD_ECORRUPT;
            break;
        }
        memcpy(buf + at, p, m);
        at += m;
    }
    if (!r && rc != SQLITE_DONE) r = fail(h, rc, err, errlen, "read a chunk");
    sqlite3_finalize(st);
    if (!r && at != (size_t)total) {
        seterr(err, errlen, "%s is corrupt: %zu of %lld bytes read", kind_name[kind], at,
               (long long)total);
        r = FD_ECORRUPT;
    }
    if (r) {
        free(buf);
        return r;
    }
    *out = buf;
    *len = at;
    return 0;
}
