/* blobs.h: values longer than one SQLite blob, stored in chunks
 * (migrations/0004_blob_chunks.sql).
 *
 * SQLite refuses a string or blob longer than SQLITE_LIMIT_LENGTH (1e9
 * bytes in a default build, lower when a build or sqlite3_limit says so)
 * with SQLITE_TOOBIG.  A model file, a version's optimizer state or a
 * job's training state longer than fd_blob_chunk_bytes is therefore
 * written as numbered chunk rows in the caller's transaction, and read
 * back, chunk by chunk, into one buffer.  Used by server/db.c only; the
 * functions take db.c's SQLite connection and return 0 or an FD_E* code
 * (db.h) with a message in err. */
#ifndef FD_BLOBS_H
#define FD_BLOBS_H

#include <stddef.h>
#include <stdint.h>

struct sqlite3;

typedef enum {
    FD_BLOB_CHECKPOINT, /* a version's model file: a = model_id, b = version */
    FD_BLOB_OPTIMIZER,  /* a version's optimizer state: a = model_id, b = version */
    FD_BLOB_TRAIN_STATE /* a job's training state: a = job_id, b unused */
} fd_blob_kind;

/* The largest value stored whole in its row, and the size of each chunk
 * of a longer one: the connection's SQLITE_LIMIT_LENGTH less 1/16 (room
 * for the rest of the row), at most 256 MiB (so that reading back holds
 * the whole value plus one chunk, not two copies). */
size_t fd_blob_chunk_bytes(struct sqlite3 *h);

/* In the caller's transaction: delete the owner's chunks, then, when len >
 * chunk (fd_blob_chunk_bytes), insert buf as ceil(len / chunk) chunks.
 * *nchunks gets their number, 0 when the value fits its row (nothing is
 * inserted then: the caller stores it in the row). */
int fd_blob_put(struct sqlite3 *h, fd_blob_kind kind, int64_t a, int64_t b, const void *buf,
                size_t len, int *nchunks, char *err, size_t errlen);

/* The owner's nchunks chunks (nchunks >= 1), in order, into a malloc'd
 * buffer *out of *len bytes.  expect_len > 0: the total must be that.  A
 * missing chunk, an index out of place or a total other than expected is
 * FD_ECORRUPT.  Run it while the statement that read the owner's row is
 * still active (not reset), so both read one snapshot. */
int fd_blob_get(struct sqlite3 *h, fd_blob_kind kind, int64_t a, int64_t b, int nchunks,
                int64_t expect_len, void **out, size_t *len, char *err, size_t errlen);

/* db.c: the FD_E* code of an SQLite result code. */
int fd_db_sqlite_code(int rc);

#endif
