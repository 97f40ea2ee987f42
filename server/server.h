/* server.h: the flowd daemon's internals.
 *
 * Threads:
 *  - libmicrohttpd's internal thread pool (epoll) runs request handlers;
 *    each pool thread lazily opens its own fd_db connection and keeps its own
 *    core workspaces (thread-local), so handlers share nothing mutable but the
 *    model cache (reference-counted, mutex-protected) and atomic counters.
 *  - fd_jobs runs training on its own worker threads; HTTP threads never
 *    train.  BLAS runs single-threaded everywhere in the daemon (see README:
 *    with 2 cores, request threads and one training worker are the
 *    parallelism; BLAS threads on top would oversubscribe).
 *
 * A request's life (http.c): the first callback checks Host and Origin
 * (guard.c), routes (keeping the captured path segments), authenticates,
 * checks the body's type (415), checks Content-Length against the body
 * limit (413 before reading) and admits, by count and by bytes (budget.c); following callbacks append the
 * body (hard limit); the last one runs the route's handler, which validates
 * input and either sends an error itself and returns, or sends the success
 * response.  Every response goes out through the fd_send_* helpers of
 * http.c, carries X-Request-Id and Cache-Control: no-store, and is logged in
 * one line. */
#ifndef FD_SERVER_H
#define FD_SERVER_H

#include "db.h"

#include "../core/model.h"
#include "../core/nf_json.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/version.h"
#define FD_VERSION FLOWD_VERSION

typedef struct fd_config {
    const char *db_path;
    char listen_host[64];
    int port;
    int workers;           /* training worker threads, default 1 */
    int http_threads;      /* MHD pool size, default 4 */
    size_t max_body;       /* bytes, default 64 MiB */
    size_t max_inflate;    /* bytes a gzip upload may inflate to, default 256 MiB */
    int max_inflate_ratio; /* inflated:compressed, default 200 */
    size_t max_request_memory; /* estimated parse memory of one body, default 2 GiB */
    int max_rows;          /* rows per log_prob/encode/decode request, default 100000 */
    int max_sample;        /* n per sample request, default 100000 */
    int max_connections;   /* default 512 */
    size_t conn_memory;    /* per-connection memory limit, default 256 KiB */
    int conn_timeout;      /* idle seconds, default 30 */
    int max_inflight;      /* requests being handled at once before 503, default 256 */
    int max_queued_jobs;   /* queued jobs before 429, default 64 */
    int cache_models;      /* models kept loaded, default 16 */
    size_t pack_max;       /* bytes of packed weights per model (nf_model_pack), default 4 MiB */
    const char *token_file;
    char *allow_origins;   /* --allow-origin: comma-separated origins, or NULL */
    int quiet;             /* no per-request log lines */
    int reuse_port;        /* SO_REUSEPORT on the listening socket (--reuse-port) */
    int drain_timeout;
    int max_streams_per_client;
    size_t max_memory;     /* request-path memory budget (bodies, parses), default 1 GiB; 0: none */ /* event streams one token or address may hold, default 8 */     /* seconds the drain waits for requests in flight, default 30 */
} fd_config;

typedef struct fd_token {
    char hash[65];         /* sha256 hex */
    int write;             /* scope */
} fd_token;

/* ---- model cache ---------------------------------------------------------- */
typedef struct fd_model {
    char name[65];
    int version;
    nf_model *m;           /* owned, read-only after load */
    uint64_t uid;          /* unique per load: keys thread-local workspaces */
    atomic_int refs;
} fd_model;

typedef struct fd_cache fd_cache;
/* pack_max: each loaded model's packed weights up to that many bytes
 * (nf_model_pack; a larger model serves unpacked) */
fd_cache *fd_cache_create(int capacity, size_t pack_max);
void fd_cache_free(fd_cache *c);
/* Get (loading from db on a miss) model name at version (0 = the model's
 * default: its "default" alias, else the latest).  The
 * returned model holds a reference: release with fd_model_release.  Errors:
 * FD_ENOTFOUND, FD_ECORRUPT (checksum or parse failure; never loaded). */
int fd_cache_get(fd_cache *c, fd_db *db, const char *name, int version, fd_model **out,
                 char *err, size_t errlen);
void fd_model_release(fd_model *m);
/* What a model version's row records, from a model file (which must load):
 * dim, context_dim, and the flow config, preprocess and metrics as JSON
 * texts (malloc'd; metrics "{}" when the file has none).  Used by import
 * and by a job's publish.  0 or the NF_E* status of nf_model_load. */
typedef struct fd_model_desc {
    int dim, context_dim;
    char *config, *preprocess, *metrics;
} fd_model_desc;
int fd_model_describe(const void *buf, size_t len, fd_model_desc *d, char *err, size_t errlen);
void fd_model_desc_free(fd_model_desc *d);
/* Forget every version of name (after DELETE); running requests keep theirs. */
void fd_cache_evict(fd_cache *c, const char *name);
/* This thread changed aliases or versions through its own connection
 * (which does not move its data_version): resolve defaults afresh. */
void fd_cache_forget_default(void);
int fd_cache_count(fd_cache *c);

/* ---- training jobs ------------------------------------------------------------ */
typedef struct fd_jobs fd_jobs;
/* Start n worker threads on db_path.  Jobs found running (the daemon died
 * under them) resume from their saved state; queued ones run in order. */
/* n worker threads; each job's batch is split over train_threads threads
 * (nf_train_config.threads), which run under SCHED_BATCH (or SCHED_IDLE,
 * fd_jobs_set_train_sched) at nice train_nice (0: as the daemon's other threads; at most 19).  Snapshots of
 * the training state are written by a writer thread per job (jobs.c). */
#define FD_JOB_MAX_RESTARTS 3 /* starts of a job found running at start-up, in a row (jobs.c) */
int fd_jobs_start(const char *db_path, int n, int train_threads, int train_nice, fd_jobs **out,
                  char *err, size_t errlen);
/* The scheduling policy of training threads when train_nice > 0: "batch"
 * (SCHED_BATCH, the default) or "idle" (SCHED_IDLE); -1 for another name.
 * Set before fd_jobs_start (`flowd serve --train-sched`). */
int fd_jobs_set_train_sched(const char *name);
/* Training yields to requests (`flowd serve --train-yield MS`): a training
 * step (or validation chunk) starts only when no request is being answered
 * and none ended in the last quiet_ms milliseconds (0: never holds back).
 * A step already running finishes; a job held back this way waits without
 * limit while requests keep coming (its metrics count held_seconds).
 * http.c reports each request's start and end. */
#define FD_TRAIN_YIELD_MS 2.0 /* the defaults of --train-yield and --train-share */
#define FD_TRAIN_SHARE 0.1
void fd_jobs_set_train_yield(double quiet_ms, double share);
void fd_jobs_request_begin(void);
void fd_jobs_request_end(void);
/* Seconds a job's publish is retried (backoff 0.1 s doubling to 5 s) on a
 * transient database error, the trained model kept in memory; set by
 * `flowd serve --publish-retry` (default 300). */
extern double fd_publish_retry_s;
/* Wake a worker: a job was queued. */
void fd_jobs_notify(fd_jobs *j);
/* Cancel a running job now (the HTTP handler has already flagged it in the
 * database); a no-op if this daemon is not running it. */
void fd_jobs_cancel(fd_jobs *j, int64_t id);
/* Graceful stop: running jobs checkpoint and stay 'running' in the database,
 * to resume at the next start; waits for the workers. */
void fd_jobs_stop(fd_jobs *j);
int fd_jobs_running(fd_jobs *j); /* workers currently training */
/* The rows of stored dataset dsid as an nf_data (out zeroed on failure;
 * free with nf_data_free): 0, FD_ENOTFOUND, FD_ENOMEM or another FD_E*
 * code, with a message naming the dataset in msg. */
struct nf_data;
int fd_dataset_load(fd_db *db, const char *dsid, struct nf_data *out, char *msg, size_t msglen);

/* ---- the server ------------------------------------------------------------------ */
typedef struct fd_metrics fd_metrics;

typedef struct fd_server {
    fd_config cfg;
    fd_token *tokens;
    int ntokens;
    struct MHD_Daemon *mhd;
    fd_cache *cache;
    fd_jobs *jobs;
    fd_metrics *metrics;
    atomic_int ready;      /* /readyz */
    atomic_int draining;
    int quiesced;    /* a drain took the listening socket: quiesced_fd, */
    int quiesced_fd; /* closed after MHD_stop_daemon (MHD may still use it) */
    atomic_int inflight;
    atomic_int active;
    atomic_size_t mem_used, mem_peak; /* of cfg.max_memory (budget.c) */     /* requests between their headers and completion (the drain waits for them) */
    pthread_key_t db_key;  /* per-thread fd_db */
} fd_server;

#define FD_MAX_SEGS 8 /* path segments a route can have */
#define FD_MAX_ARGS 4 /* captured {x} segments a route can have */

/* One request. */
typedef struct fd_req {
    fd_server *srv;
    struct MHD_Connection *conn;
    const char *method, *url;
    char rid[40];          /* X-Request-Id */
    char *body;            /* accumulated, NUL-terminated */
    size_t len, cap;
    int too_large;
    int counted;           /* holds an inflight slot */
    int busy;              /* counted in fd_jobs_request_begin/end */
    int streaming;         /* answered with an event stream: keeps the slot */
    int route;             /* index into the route table, for metrics */
    char path[1024];       /* the URL split into segments by routing */
    char *args[FD_MAX_ARGS]; /* captured {x} segments (into path), in order */
    double t0;
    int status;            /* sent status */
    size_t sent_bytes;
    int write_scope;       /* authenticated with a write token (or no tokens) */
    int plain_errors;      /* errors as {"error": "message"} (http.c) */
    char inf_model[65];    /* fd_req_inference: the model reached, "" if none */
    int inf_version, inf_op;
    size_t reserved;         /* bytes of the memory budget held (budget.c) */
    int mem_refused;         /* a chunked body outgrew the budget: 503 at dispatch */
    int refused;             /* refused at admission with a body to come (1: in-flight
                                limit, 2: memory budget): answered 503 once the body
                                is drained, never before (http.c, admit) */
    size_t refused_bytes;    /* what the budget was asked for (2) */
    char client_token[65];   /* sha256 hex of the token that authenticated, or "" */
    int bad_token;           /* a token was given and is not known (401 invalid_token) */
    const char *cors_origin; /* an --allow-origin Origin: echoed in Access-Control-Allow-Origin */
} fd_req;

/* Browser safety (guard.c).  fd_guard_ctype_ok: ct is a body type some
 * route takes (not missing, not a form encoding).  fd_guard_host: Host
 * names the listen address or localhost with the listen port, or tokens are
 * configured, or there is no Host.  fd_guard_origin: 0 refused, 1 no Origin
 * or the request's own (http(s):// + Host), 2 on --allow-origin. */
int fd_guard_ctype_ok(const char *ct);
int fd_guard_host(const fd_server *s, const char *host);
int fd_guard_origin(const fd_server *s, const char *origin, const char *host);
/* A slot of the requesting client's event streams (its token, or its
 * address without tokens): 0 and key filled, or -1 when it holds
 * cfg.max_streams_per_client already.  Give it back with the same key. */
int fd_stream_client_take(fd_req *r, char key[72]);
void fd_stream_client_give(const char *key);

/* The request-path memory budget (budget.c): fd_req_reserve takes bytes of
 * cfg.max_memory for r (0, or -1 when they do not fit; nothing sent);
 * fd_req_release gives back all r holds (at completion);
 * fd_send_budget_error answers a refusal: 503 overloaded, or 413 when
 * bytes exceed the whole budget (details.limit "memory_budget");
 * fd_req_reserve_cb is the nf_data_limits.reserve callback (ctx: r). */
int fd_req_reserve(fd_req *r, size_t bytes);
void fd_req_release(fd_req *r);
enum MHD_Result fd_send_budget_error(fd_req *r, size_t bytes);
int fd_req_reserve_cb(void *ctx, size_t bytes);

/* Per-thread database connection of the calling HTTP thread (opened on first
 * use); NULL with a 500 sent if it cannot be opened. */
fd_db *fd_req_db(fd_req *r);

/* Responses.  All return MHD_YES/MHD_NO for the MHD callback to return. */
enum MHD_Result fd_send_json(fd_req *r, int status, cJSON *body); /* takes body */
enum MHD_Result fd_send_bytes(fd_req *r, int status, const char *content_type, void *buf,
                              size_t len); /* takes buf (free()d) */
/* {"error":{"code","message","details"}}; details taken (may be NULL). */
enum MHD_Result fd_send_error(fd_req *r, int status, const char *code, cJSON *details,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* 413 payload_too_large for a body refused by a limit of
 * nf_data_load_limited (lim->exceeded set): details.limit is "inflate",
 * "inflate_ratio" or "memory", with the limit's value; msg is the loader's. */
struct nf_data_limits;
enum MHD_Result fd_send_limit_error(fd_req *r, const struct nf_data_limits *lim, const char *msg);
/* Map an FD_E* storage error to a response. */
enum MHD_Result fd_send_db_error(fd_req *r, int rc, const char *err);
/* 200 with a built-in file (data is static, not taken): dashboard, OpenAPI. */
enum MHD_Result fd_send_static(fd_req *r, const char *content_type, const void *data, size_t len);
/* 200 with buf (taken) as an attachment: Content-Disposition names filename. */
enum MHD_Result fd_send_download(fd_req *r, const char *content_type, void *buf, size_t len,
                                 const char *filename);
/* body (taken) as JSON, no trailing newline, with a Location header: the
 * 201/202 replies that create a resource. */
enum MHD_Result fd_send_json_at(fd_req *r, int status, cJSON *body, const char *location);

/* Event streams (text/event-stream, 200).  The reader fills buf (at most
 * max bytes) and returns the count, FD_STREAM_END to finish, or
 * FD_STREAM_WAIT when it has nothing yet: the connection is then parked
 * (MHD_suspend_connection) and the reader is called again after the next
 * tick (100 ms) of the resumer thread, so an open stream holds no request
 * thread.  done(cls) runs once when the stream ends (also when it cannot
 * be started).  fd_streams_start/stop run the resumer thread with the
 * daemon: stop wakes every parked stream (they end) before MHD stops;
 * fd_streams_stopping() tells a reader that the daemon drains. */
#define FD_STREAM_WAIT ((ssize_t)0)
#define FD_STREAM_END ((ssize_t)-1)
typedef ssize_t (*fd_stream_reader)(void *cls, char *buf, size_t max);
enum MHD_Result fd_send_event_stream(fd_req *r, fd_stream_reader read, void *cls, void (*done)(void *cls));
/* A large answer (server/stream.h, taken): 200 with chunked transfer
 * encoding, its text written a block at a time as it is sent; a broken
 * one (an append failed) is a 500 instead. */
struct fd_answer;
enum MHD_Result fd_send_answer(fd_req *r, int status, const char *ctype, struct fd_answer *a);
int fd_streams_start(void);
void fd_streams_stop(void);
int fd_streams_stopping(void);

/* Query-string and header access. */
const char *fd_req_query(fd_req *r, const char *key);
const char *fd_req_header(fd_req *r, const char *key);
/* Parse the body as a JSON object: sends 400 invalid_json / 415 itself and
 * returns NULL on failure. */
cJSON *fd_req_json(fd_req *r);

/* Field validation (server/fields.c): one call per field, through the
 * getters of core/nf_json.h (null = absent = the default).  Each returns 0,
 * or -1 after sending the error: a body field 422 invalid_input with a
 * message naming it (details.field), a query parameter 400
 * invalid_argument.  count: a required integer 1..max (details.max_KEY). */
int fd_body_keys_or_reply(fd_req *r, const cJSON *body, const char *const *allowed);
int fd_body_int_or_reply(fd_req *r, const cJSON *body, const char *key, int def, int lo, int hi,
                         int *out);
int fd_body_count_or_reply(fd_req *r, const cJSON *body, const char *key, int max, int *out);
/* open_lo: the range is (lo, hi] */
int fd_body_num_or_reply(fd_req *r, const cJSON *body, const char *key, double def, double lo,
                         double hi, int open_lo, double *out);
int fd_body_seed_or_reply(fd_req *r, const cJSON *body, const char *key, uint64_t def,
                          uint64_t *out);
int fd_body_bool_or_reply(fd_req *r, const cJSON *body, const char *key, int def, int *out);
int fd_query_i64_or_reply(fd_req *r, const char *key, int64_t def, int64_t lo, int64_t hi,
                          int64_t *out);
int fd_query_int_or_reply(fd_req *r, const char *key, int def, int lo, int hi, int *out);
int fd_query_bool_or_reply(fd_req *r, const char *key, int def, int *out);
/* key=C,H,W (an image shape): three integers >= 1; all zero when absent */
int fd_query_shape_or_reply(fd_req *r, const char *key, int shape[3]);

/* Route handlers (api_*.c).  args: the {x} segments captured by routing,
 * in the order of the route's pattern. */
typedef enum MHD_Result (*fd_handler)(fd_req *r, char **args);
enum MHD_Result fd_api_models_list(fd_req *r, char **a);
enum MHD_Result fd_api_model_get(fd_req *r, char **a);
enum MHD_Result fd_api_model_delete(fd_req *r, char **a);
enum MHD_Result fd_api_log_prob(fd_req *r, char **a);
enum MHD_Result fd_api_sample(fd_req *r, char **a);
enum MHD_Result fd_api_encode(fd_req *r, char **a);
enum MHD_Result fd_api_decode(fd_req *r, char **a);
enum MHD_Result fd_api_checkpoint(fd_req *r, char **a);
enum MHD_Result fd_api_datasets_create(fd_req *r, char **a);
enum MHD_Result fd_api_datasets_list(fd_req *r, char **a);
enum MHD_Result fd_api_dataset_get(fd_req *r, char **a);
enum MHD_Result fd_api_dataset_delete(fd_req *r, char **a);
enum MHD_Result fd_api_jobs_create(fd_req *r, char **a);
enum MHD_Result fd_api_jobs_list(fd_req *r, char **a);
enum MHD_Result fd_api_job_get(fd_req *r, char **a);
enum MHD_Result fd_api_job_metrics(fd_req *r, char **a);
enum MHD_Result fd_api_job_events(fd_req *r, char **a);
enum MHD_Result fd_api_job_cancel(fd_req *r, char **a);
enum MHD_Result fd_api_openapi(fd_req *r, char **a);
enum MHD_Result fd_api_openapi_json(fd_req *r, char **a);
enum MHD_Result fd_api_dashboard(fd_req *r, char **a);
enum MHD_Result fd_api_evaluate(fd_req *r, char **a);
/* Open Inference Protocol v2 and TF Serving's :predict (api_v2.c); a[1]
 * is the version segment of the /versions/{v} rows, NULL on the others. */
enum MHD_Result fd_api_v2_live(fd_req *r, char **a);
enum MHD_Result fd_api_v2_ready(fd_req *r, char **a);
enum MHD_Result fd_api_v2_server(fd_req *r, char **a);
enum MHD_Result fd_api_v2_model(fd_req *r, char **a);
enum MHD_Result fd_api_v2_model_ready(fd_req *r, char **a);
enum MHD_Result fd_api_v2_infer(fd_req *r, char **a);
enum MHD_Result fd_api_v1_predict(fd_req *r, char **a);
/* A thread-local workspace for m (api_models.c), NULL when out of memory;
 * borrowed: valid while m is held on this thread. */
nf_ws *fd_model_ws(fd_model *m);
/* log p(x) of the n rows x (n, D) with ctx (n, C) or NULL under m, counted
 * in the rows metric: a malloc'd (n) array, or NULL after sending the
 * error (500, or 422 for an ODE solve past max_steps) (api_models.c). */
/* log p of n rows (K > 1: the importance-weighted estimate over K
 * dequantization draws, nf_model_log_prob_iw), or NULL after replying */
nf_real *fd_log_prob_or_reply(fd_req *r, fd_model *m, const nf_real *x, const nf_real *ctx, int n,
                              int K);
/* o[key] = v as an integer literal: cJSON prints a double past 2^31 with
 * %.15g when that round-trips, so a seed such as 6191801648537870 would
 * go out as 6.19180164853787e+15, which clients read as a float
 * (api_models.c). */
void fd_json_add_u64(cJSON *o, const char *key, uint64_t v);
/* [v,...] printed with %.9g, non-finite as null (api_models.c); NULL when
 * out of memory. */
cJSON *fd_json_floats(const nf_real *v, size_t n);
/* The lifecycle (api_lifecycle.c): aliases, version upload and delete,
 * job resume. */
enum MHD_Result fd_api_alias_put(fd_req *r, char **a);
enum MHD_Result fd_api_alias_delete(fd_req *r, char **a);
enum MHD_Result fd_api_versions_create(fd_req *r, char **a);
enum MHD_Result fd_api_version_delete(fd_req *r, char **a);
enum MHD_Result fd_api_job_resume(fd_req *r, char **a);
/* alias names: as model names, starting with a letter, not "latest" */
int fd_alias_name_ok(const char *s);
/* "version" of a body / ?version= / a path segment of model name: an
 * integer, or a string (alias, "latest", a number) resolved through the
 * database.  *version 0 when absent (the model's default).  0, or -1 after
 * sending the error (404 for an unknown alias or version). */
int fd_body_version_or_reply(fd_req *r, const cJSON *body, const char *name, int *version);
int fd_query_version_or_reply(fd_req *r, const char *name, int *version);
int fd_path_version_or_reply(fd_req *r, const char *name, const char *seg, int *version);
/* A submitted job's "init" (warm start): resolve the version (*version,
 * 0 when the job has no init), check the architecture against the job's
 * flow and that asked-for optimizer state exists.  0, or -1 after a 422. */
struct nf_job;
int fd_job_init_or_reply(fd_req *r, fd_db *db, const struct nf_job *j, int dim, const int shape[3],
                         int is_int, double vmin, double vmax, int *version);
/* The model name at version (0 = latest) from the cache (api_models.c): a
 * reference the caller releases with fd_model_release, or NULL after
 * sending the error (404 naming the model or version). */
fd_model *fd_model_or_reply(fd_req *r, const char *name, int version);

/* Metrics (metrics.c): counters are lock-free. */
fd_metrics *fd_metrics_create(void);
void fd_metrics_free(fd_metrics *m);
void fd_metrics_request(fd_metrics *m, int route, int status, double seconds);
void fd_metrics_rows(fd_metrics *m, int64_t scored, int64_t sampled);
/* Per-model inference series (flowd_inference_*): recorded at completion
 * for a request whose handler called fd_req_inference. */
typedef enum { FD_OP_LOG_PROB, FD_OP_SAMPLE, FD_OP_ENCODE, FD_OP_DECODE, FD_OP_EVALUATE, FD_OP_COUNT } fd_op;
void fd_metrics_inference(fd_metrics *m, const char *model, int version, fd_op op, int status, double seconds);
/* The request reached model m for op: its answer is counted under the
 * model's name and version (http.c, at completion). */
void fd_req_inference(fd_req *r, const fd_model *m, fd_op op);
/* Prometheus text (malloc'd). */
char *fd_metrics_render(fd_server *s, fd_db *db);

/* The exclusive lock of `flowd serve` on DB.lock (dblock.c): the lock's fd
 * (kept open for the life of the process), -2 when there is no file to lock
 * beside (":memory:", a URI, a directory not yet created), or -1 with a
 * message when another daemon holds it. */
int fd_db_lock_exclusive(const char *db_path, char *err, size_t errlen);

/* Server lifecycle (http.c). */
int fd_server_start(fd_server *s, char *err, size_t errlen);
/* The first half of a graceful stop: /readyz turns 503, the listening
 * socket is closed (new connections are refused), event streams end, and
 * requests in flight (an upload whose headers came before) are waited for,
 * up to timeout_s.  Returns how many were still running. */
int fd_server_drain(fd_server *s, double timeout_s);
void fd_server_stop(fd_server *s);

/* Routes for metrics: route numbers 0..fd_route_count-1, the rows of the
 * route table and then one for requests that matched none.  The label is
 * the row's pattern ("/v1/models/{name}"), "unmatched" for the last;
 * fd_route_method is "" for it. */
#define FD_MAX_ROUTES 80
extern const int fd_route_count;
const char *fd_route_label(int route);
const char *fd_route_method(int route);

double fd_now(void); /* monotonic seconds */

/* The daemon's log (log.c): logfmt lines on stderr, `ts=... level=...
 * msg=...` then, for fd_log_kv, the key=value pairs of kv (NULL-terminated
 * name, value list).  level: "info", "warn" or "error". */
void fd_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fd_log_kv(const char *level, const char *msg, const char *const *kv);

#endif
