/* db.h: flowd's storage on SQLite.
 *
 * One fd_db is one SQLite connection; it is used by one thread at a time
 * (each HTTP worker thread and each training worker opens its own).  Every
 * connection runs with journal_mode=WAL, foreign_keys=ON, busy_timeout 5 s,
 * synchronous=NORMAL, and uses prepared statements only (cached per
 * connection).  Writes that belong together run in one transaction.
 *
 * Migrations: migrations/NNNN_name.sql are compiled into the binary
 * (build/.../gen_migrations.c) and applied in order, each in its own
 * transaction, recording (version, name, sha256 of the SQL, applied_at) in
 * table flowd_migrations.  A database that has a version this binary does
 * not know, or whose recorded checksum differs from the binary's file, is
 * refused with a message saying which.
 *
 * Return values: 0, or a negative FD_E* code; messages go to err when given.
 * JSON results are cJSON trees the caller deletes. */
#ifndef FD_DB_H
#define FD_DB_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

enum {
    FD_OK = 0,
    FD_ENOTFOUND = -100, /* no such model / version / dataset / job */
    FD_ECONFLICT = -101, /* state does not allow it (e.g. cancel a finished job) */
    FD_EDB = -102,       /* SQLite error (message in err) */
    FD_ECORRUPT = -103,  /* stored checkpoint fails its checksum */
    FD_EINVAL = -104,
    FD_ENOMEM = -105,
    FD_EFULL = -106,     /* disk full / SQLITE_FULL */
    FD_EBUSY = -107,     /* database locked beyond the busy timeout */
};

typedef struct fd_db fd_db;

/* Open (creating the file if needed) and set the pragmas.  Does not migrate. */
int fd_db_open(const char *path, fd_db **out, char *err, size_t errlen);
/* The connection's PRAGMA synchronous: 2 (FULL, the default: every commit
 * is on disk before it is acknowledged) or 1 (NORMAL, with
 * FLOWD_DB_SYNCHRONOUS=NORMAL); -1 on error. */
int fd_db_synchronous(fd_db *db);
void fd_db_close(fd_db *db); /* NULL is a no-op */
/* Apply pending migrations (see above).  *applied (may be NULL) gets how many. */
int fd_db_migrate(fd_db *db, int *applied, char *err, size_t errlen);
/* Highest applied migration version (0 for an empty database; a negative
 * FD_E* code when it cannot be read). */
int fd_db_schema_version(fd_db *db);
/* Highest migration version compiled into this binary. */
int fd_db_binary_schema_version(void);
/* "ok" from PRAGMA integrity_check → 0; otherwise FD_EDB with the first line. */
int fd_db_integrity_check(fd_db *db, char *err, size_t errlen);
/* The schema as `sqlite3 db .schema` would list it, objects sorted by
 * type then name, for the schema snapshot test.  Caller free()s. */
char *fd_db_schema_dump(fd_db *db);

/* ---- models ---------------------------------------------------------------- */
/* {"models":[{"name","latest_version","dim","context_dim","created_at"}]} by name */
int fd_db_models_list(fd_db *db, cJSON **out, char *err, size_t errlen);
/* {"name","created_at","latest_version","shape","versions":[{"version","created_at",
 *  "dim","context_dim","shape","size_bytes","sha256","config":{},"preprocess":{},
 *  "metrics":{},"job_id"}]}; versions ascending; job_id is the job's id as a string,
 *  or null; "shape" is the config's image shape [C,H,W] or null (at the top:
 *  the latest version's). */
int fd_db_model_get(fd_db *db, const char *name, cJSON **out, char *err, size_t errlen);
/* Deletes the model and all its versions.  FD_ENOTFOUND if absent. */
int fd_db_model_delete(fd_db *db, const char *name, char *err, size_t errlen);
/* Store checkpoint (a model file, borrowed) as the next version of model
 * `name` (created if absent) in one transaction; config/preprocess/metrics
 * are JSON texts; job_id 0 = none.  *version gets the new number (never
 * one given before under this name).  An explicit "default" alias moves to
 * it (as fd_db_version_upload with set_default 1). */
int fd_db_version_add(fd_db *db, const char *name, const void *checkpoint, size_t len, int dim,
                      int context_dim, const char *config, const char *preprocess,
                      const char *metrics, int64_t job_id, int *version, char *err,
                      size_t errlen);
/* The checkpoint bytes of version (0 = latest); *version gets the number.
 * The sha256 is verified: FD_ECORRUPT if it does not match.  *buf malloc'd. */
int fd_db_version_get(fd_db *db, const char *name, int version, void **buf, size_t *len,
                      int *version_out, char *err, size_t errlen);
/* PRAGMA data_version of this connection: it changes whenever another
 * connection (or process) has committed since the last call, so a caller
 * can keep results read through this connection until it changes; -1 on
 * error.  Commits made through this same connection do not change it. */
int64_t fd_db_data_version(fd_db *db);
/* The request JSON (malloc'd) of the job that trained version `version`
 * (>= 1) of model name, and the job's id; FD_ENOTFOUND when there is no
 * such version or it has no job (imported, or the job was deleted). */
int fd_db_version_job(fd_db *db, const char *name, int version, int64_t *job_id, char **request,
                      char *err, size_t errlen);
/* Latest version number of a model, FD_ENOTFOUND if no such model/version. */
int fd_db_latest_version(fd_db *db, const char *name, int *version, char *err, size_t errlen);

/* ---- lifecycle (migration 0003) ---------------------------------------------------
 * Aliases name versions of a model; "default" is the version unpinned calls
 * use (fd_db_default_version: the alias, else the latest).  Alias names are
 * checked by the API (fd_alias_name_ok), not here. */
int fd_db_alias_get(fd_db *db, const char *name, const char *alias, int *version, char *err,
                    size_t errlen);
/* Create or move alias to version (FD_ENOTFOUND when the model has no such version). */
int fd_db_alias_set(fd_db *db, const char *name, const char *alias, int version, char *err,
                    size_t errlen);
int fd_db_alias_delete(fd_db *db, const char *name, const char *alias, char *err, size_t errlen);
int fd_db_default_version(fd_db *db, const char *name, int *version, char *err, size_t errlen);
/* spec: NULL/"" the default, "latest", a decimal version number (which
 * must exist) or an alias.  FD_ENOTFOUND (message names which), FD_EINVAL
 * for a malformed number. */
int fd_db_resolve_version(fd_db *db, const char *name, const char *spec, int *version, char *err,
                          size_t errlen);
/* Delete one version; FD_ECONFLICT while an alias points at it (alias gets
 * its name), FD_ENOTFOUND when absent.  The number is never given again. */
int fd_db_version_delete(fd_db *db, const char *name, int version, char alias[65], char *err,
                         size_t errlen);
/* The optimizer state stored with a version: *buf NULL (len 0) when it has
 * none; FD_ENOTFOUND for no such version. */
int fd_db_version_optimizer(fd_db *db, const char *name, int version, void **buf, size_t *len,
                            char *err, size_t errlen);
/* publish with the lifecycle options: set_default 1 moves an explicit
 * "default" alias to the new version (none: the default stays "the
 * latest", which is the new one); 0 leaves the default where it is (a
 * model whose default was "the latest" gets "default" pinned to the
 * previous latest).  optimizer (may be NULL) is stored with the version. */
int fd_db_job_publish_ex(fd_db *db, int64_t id, const char *model, const void *checkpoint,
                         size_t len, int dim, int context_dim, const char *config,
                         const char *preprocess, const char *metrics, int set_default,
                         const void *optimizer, size_t optimizer_len, int *version, char *err,
                         size_t errlen);
/* An uploaded model file as the next version, the default as for
 * fd_db_job_publish_ex. */
int fd_db_version_upload(fd_db *db, const char *name, const void *checkpoint, size_t len, int dim,
                         int context_dim, const char *config, const char *preprocess,
                         const char *metrics, int set_default, int *version, char *err,
                         size_t errlen);
/* fd_db_job_finish keeping (keep_state 1) or deleting the job's saved
 * training state; fd_db_job_finish keeps it for 'cancelled' only. */
int fd_db_job_finish_ex(fd_db *db, int64_t id, const char *state, int version, const char *error,
                        int keep_state, char *err, size_t errlen);
/* A worker starts a job found running at start-up: start_attempts + 1 into
 * *attempts (a claim sets it to 1).  FD_ENOTFOUND unless running. */
int fd_db_job_start_attempt(fd_db *db, int64_t id, int *attempts, char *err, size_t errlen);
/* Set a running job's start_attempts: 0 after a graceful shutdown stopped
 * it, 1 once the current start stored a training state (durable progress:
 * only starts in a row that die before saving anything count). */
int fd_db_job_reset_attempts(fd_db *db, int64_t id, int attempts, char *err, size_t errlen);
/* A cancelled or failed job back to queued (its saved state kept, to
 * resume from); *step the saved state's step or -1.  FD_ECONFLICT for
 * other states, FD_EINVAL for a failed job without saved state. */
int fd_db_job_resume(fd_db *db, int64_t id, int64_t *step, char *err, size_t errlen);

/* ---- datasets ----------------------------------------------------------------- */
/* Store rows (rows, dim) float32 (borrowed); sha256 of the uploaded bytes (hex).
 * shape: the image shape [C,H,W] of a row (C*H*W == dim), or NULL / all
 * zero when it has none.  out gets {"id","name","rows","dim","shape",
 * "sha256","format","created_at"} ("shape" [C,H,W] or null). */
int fd_db_dataset_add(fd_db *db, const char *name, const char *format, int64_t rows, int dim,
                      const int shape[3], int is_integer, double vmin, double vmax,
                      const char *sha256, const float *data, cJSON **out, char *err,
                      size_t errlen);
/* {"datasets":[...]} newest first, without the data */
int fd_db_datasets_list(fd_db *db, cJSON **out, char *err, size_t errlen);
int fd_db_dataset_get(fd_db *db, const char *id, cJSON **out, char *err, size_t errlen);
/* The rows: *data malloc'd float32 (rows, dim); shape (may be NULL) gets
 * the stored image shape, all zero when none. */
int fd_db_dataset_data(fd_db *db, const char *id, float **data, int64_t *rows, int *dim,
                       int shape[3], int *is_integer, double *vmin, double *vmax, char *err,
                       size_t errlen);
int fd_db_dataset_delete(fd_db *db, const char *id, char *err, size_t errlen);

/* ---- jobs ------------------------------------------------------------------------- */
/* Insert a queued job.  With a submission_id already present, nothing is
 * inserted: *id gets the existing job and *existed = 1. */
int fd_db_job_create(fd_db *db, const char *submission_id, const char *model,
                     const char *request_json, int64_t *id, int *existed, char *err,
                     size_t errlen);
/* {"id","state","model","version"?,"progress":{...},"error"?,"created_at",
 *  "started_at"?,"finished_at"?,"submission_id"?,"request":{...},
 *  "cancel_requested"?:true}.  "id" is the integer id as a string ("17");
 *  "progress" is the last object given to fd_db_job_progress, {} before. */
int fd_db_job_get(fd_db *db, int64_t id, cJSON **out, char *err, size_t errlen);
/* {"jobs":[...]} newest first (objects as fd_db_job_get); state NULL = all;
 * page_token: the id to continue below (0 = from the newest); limit <= 0
 * means 50, at most 1000; *next gets the next token or 0 on the last page. */
int fd_db_jobs_list(fd_db *db, const char *state, int64_t page_token, int limit, cJSON **out,
                    int64_t *next, char *err, size_t errlen);
/* The oldest queued job becomes running (started_at set) atomically:
 * *id 0 when none.  *request malloc'd JSON text. */
int fd_db_job_claim(fd_db *db, int64_t *id, char **request, char *err, size_t errlen);
/* Jobs in state running (the daemon died under them): ids into *ids
 * (malloc'd), count in *n. */
int fd_db_jobs_running(fd_db *db, int64_t **ids, int *n, char *err, size_t errlen);
/* The request JSON of a job (malloc'd). */
int fd_db_job_request(fd_db *db, int64_t id, char **request, char *err, size_t errlen);
/* Latest progress object (JSON text) of a running job. */
int fd_db_job_progress(fd_db *db, int64_t id, const char *progress_json, char *err,
                       size_t errlen);
/* Append one metrics row (kind "train" or "val"); NAN values stored as NULL. */
int fd_db_job_metric_add(fd_db *db, int64_t id, int64_t step, const char *kind, int epoch,
                         double train_loss, double val_loss, double lr, double grad_norm,
                         double time, char *err, size_t errlen);
/* {"metrics":[{"step","epoch","kind","train_loss","val_loss","lr","grad_norm","time"}],
 *  "next_after_step"} rows with step > after_step ordered by step (train before
 *  val), at most limit distinct steps (so a step's train and val rows are never
 *  split across pages; limit <= 0 means 1000).  next_after_step is the last
 *  step returned when more rows follow, null when none is left now.  Unset
 *  (NaN) values are null. */
int fd_db_job_metrics(fd_db *db, int64_t id, int64_t after_step, int limit, cJSON **out,
                      char *err, size_t errlen);
/* Ask for cancellation: a queued job is cancelled at once; a running one gets
 * cancel_requested = 1 (the worker sees it within a step).  FD_ECONFLICT for
 * a finished job, FD_ENOTFOUND if absent. */
int fd_db_job_cancel(fd_db *db, int64_t id, char *err, size_t errlen);
/* 1 if cancellation was requested for a running job. */
int fd_db_job_cancel_requested(fd_db *db, int64_t id);
/* Final states: succeeded (with the published version), failed (error
 * message), cancelled.  Deletes the job's train state in the same
 * transaction.  finished_at set.  From queued or running only: FD_ECONFLICT
 * for a job already finished, FD_EINVAL for a state that is not final. */
int fd_db_job_finish(fd_db *db, int64_t id, const char *state, int version, const char *error,
                     char *err, size_t errlen);
/* Publish: add the model version AND mark the job succeeded in ONE
 * transaction, so a crash never leaves a job succeeded without its version
 * or a version whose job is still running. */
int fd_db_job_publish(fd_db *db, int64_t id, const char *model, const void *checkpoint,
                      size_t len, int dim, int context_dim, const char *config,
                      const char *preprocess, const char *metrics, int *version, char *err,
                      size_t errlen);
/* Resumable training state (replaces the previous one). */
int fd_db_train_state_put(fd_db *db, int64_t id, int64_t step, const void *state, size_t len,
                          char *err, size_t errlen);
/* FD_ENOTFOUND when the job has none. *state malloc'd. */
int fd_db_train_state_get(fd_db *db, int64_t id, void **state, size_t *len, int64_t *step,
                          char *err, size_t errlen);
/* Job counts by state for /metrics: counts[0..4] = queued, running, succeeded,
 * failed, cancelled. */
int fd_db_job_counts(fd_db *db, int64_t counts[5], char *err, size_t errlen);

/* ---- tokens ------------------------------------------------------------------------- */
/* Replace the stored tokens with these (sha256 hex hashes and scopes). */
int fd_db_tokens_replace(fd_db *db, const char *const *hashes, const char *const *scopes, int n,
                         char *err, size_t errlen);

/* The scope ("read"/"write") of the token whose sha256 hex is hash;
 * FD_ENOTFOUND when no such token is stored. */
int fd_db_token_scope(fd_db *db, const char *hash, char scope[8], char *err, size_t errlen);

/* SHA-256 of buf as 64 lowercase hex digits + NUL into hex (65 bytes). */
void fd_sha256_hex(const void *buf, size_t len, char hex[65]);

#endif
