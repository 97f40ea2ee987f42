/* http.c: libmicrohttpd glue: request life cycle, routing, authentication,
 * admission control, responses, event streams, logging.  The only file that
 * builds or queues an MHD response: handlers answer through the fd_send_*
 * helpers (server.h).
 *
 * libmicrohttpd calls the access handler (on_request) several times per
 * request; its phases are one function each:
 *   1. route            *con_cls == NULL: headers are in.  Find the route
 *                       row, keep the captured {x} segments (r->args).
 *   2. authorize        the row's scope against the bearer token.
 *   3. check_body_limit Content-Length against the body limit.
 *   4. admit            an inflight slot (non-public routes), given back
 *                       once the request is answered (an event stream:
 *                       when it ends).
 *      Any refusal in 1-4 is answered right there, before a byte of body
 *      is read.
 *   5. accumulate       *upload_data_size > 0: a piece of the body,
 *                       appended with a hard cap.
 *   6. dispatch         *upload_data_size == 0 again: the body is complete;
 *                       run the row's handler with r->args.
 *   7. on_completed     the completion callback logs the request, records
 *                       metrics under the row's label and frees it. */
#include "server.h"
#include "stream.h"

#include "../core/data.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <pthread.h>

double fd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- routes ------------------------------------------------------------------ */
enum { SCOPE_PUBLIC = 0, SCOPE_READ = 1, SCOPE_WRITE = 2 };

static enum MHD_Result h_healthz(fd_req *r, char **a);
static enum MHD_Result h_readyz(fd_req *r, char **a);
static enum MHD_Result h_metrics(fd_req *r, char **a);
static enum MHD_Result h_version(fd_req *r, char **a);

/* One row per route.  The pattern is also the route's metric label
 * (flowd_http_requests_total{route=...}): a "{x}" segment matches any
 * non-empty segment and is captured, in order, into the handler's args.
 * The row's index is the route number in metrics (the id label of the
 * latency histogram): append new rows, do not reorder. */
typedef struct {
    const char *method, *pattern;
    fd_handler fn;
    int scope;
    int body; /* accepts a body */
} route;

static const route routes[] = {
    {"GET", "/healthz", h_healthz, SCOPE_PUBLIC, 0},
    {"GET", "/readyz", h_readyz, SCOPE_PUBLIC, 0},
    {"GET", "/metrics", h_metrics, SCOPE_PUBLIC, 0},
    {"GET", "/openapi.yaml", fd_api_openapi, SCOPE_PUBLIC, 0},
    {"GET", "/v1/version", h_version, SCOPE_READ, 0},
    {"GET", "/v1/models", fd_api_models_list, SCOPE_READ, 0},
    {"GET", "/v1/models/{name}", fd_api_model_get, SCOPE_READ, 0},
    {"DELETE", "/v1/models/{name}", fd_api_model_delete, SCOPE_WRITE, 0},
    {"POST", "/v1/models/{name}/log_prob", fd_api_log_prob, SCOPE_READ, 1},
    {"POST", "/v1/models/{name}/sample", fd_api_sample, SCOPE_READ, 1},
    {"POST", "/v1/models/{name}/encode", fd_api_encode, SCOPE_READ, 1},
    {"POST", "/v1/models/{name}/decode", fd_api_decode, SCOPE_READ, 1},
    {"GET", "/v1/models/{name}/versions/{v}/checkpoint", fd_api_checkpoint, SCOPE_READ, 0},
    {"POST", "/v1/datasets", fd_api_datasets_create, SCOPE_WRITE, 1},
    {"GET", "/v1/datasets", fd_api_datasets_list, SCOPE_READ, 0},
    {"GET", "/v1/datasets/{id}", fd_api_dataset_get, SCOPE_READ, 0},
    {"DELETE", "/v1/datasets/{id}", fd_api_dataset_delete, SCOPE_WRITE, 0},
    {"POST", "/v1/jobs", fd_api_jobs_create, SCOPE_WRITE, 1},
    {"GET", "/v1/jobs", fd_api_jobs_list, SCOPE_READ, 0},
    {"GET", "/v1/jobs/{id}", fd_api_job_get, SCOPE_READ, 0},
    {"GET", "/v1/jobs/{id}/metrics", fd_api_job_metrics, SCOPE_READ, 0},
    {"GET", "/v1/jobs/{id}/events", fd_api_job_events, SCOPE_READ, 0},
    {"POST", "/v1/jobs/{id}/cancel", fd_api_job_cancel, SCOPE_WRITE, 0},
    {"POST", "/v1/models/{name}/evaluate", fd_api_evaluate, SCOPE_READ, 1},
    /* Open Inference Protocol v2 (api_v2.c) */
    {"GET", "/v2/health/live", fd_api_v2_live, SCOPE_PUBLIC, 0},
    {"GET", "/v2/health/ready", fd_api_v2_ready, SCOPE_PUBLIC, 0},
    {"GET", "/v2", fd_api_v2_server, SCOPE_READ, 0},
    {"GET", "/v2/models/{name}", fd_api_v2_model, SCOPE_READ, 0},
    {"GET", "/v2/models/{name}/versions/{v}", fd_api_v2_model, SCOPE_READ, 0},
    {"GET", "/v2/models/{name}/ready", fd_api_v2_model_ready, SCOPE_READ, 0},
    {"GET", "/v2/models/{name}/versions/{v}/ready", fd_api_v2_model_ready, SCOPE_READ, 0},
    {"POST", "/v2/models/{name}/infer", fd_api_v2_infer, SCOPE_READ, 1},
    {"POST", "/v2/models/{name}/versions/{v}/infer", fd_api_v2_infer, SCOPE_READ, 1},
    /* TF Serving / KServe v1 */
    {"POST", "/v1/models/{name}:predict", fd_api_v1_predict, SCOPE_READ, 1},
    {"POST", "/v1/models/{name}/versions/{v}:predict", fd_api_v1_predict, SCOPE_READ, 1},
    {"GET", "/openapi.json", fd_api_openapi_json, SCOPE_PUBLIC, 0},
    {"PUT", "/v1/models/{name}/aliases/{alias}", fd_api_alias_put, SCOPE_WRITE, 1},
    {"DELETE", "/v1/models/{name}/aliases/{alias}", fd_api_alias_delete, SCOPE_WRITE, 0},
    {"POST", "/v1/models/{name}/versions", fd_api_versions_create, SCOPE_WRITE, 1},
    {"DELETE", "/v1/models/{name}/versions/{v}", fd_api_version_delete, SCOPE_WRITE, 0},
    {"POST", "/v1/jobs/{id}/resume", fd_api_job_resume, SCOPE_WRITE, 0},
};
#define NROUTES (int)(sizeof routes / sizeof routes[0])
_Static_assert(NROUTES + 1 <= FD_MAX_ROUTES, "more routes than the metrics keep (FD_MAX_ROUTES)");

/* The standard protocols' paths (/v2, TF Serving's "{name}:predict")
 * answer errors in their plain {"error": "message"} shape, 422 as 400
 * (send_error_msg). */
static int plain_path(const char *p) {
    return (!strncmp(p, "/v2", 3) && (p[3] == 0 || p[3] == '/')) || strchr(p, ':') != NULL;
}

/* route numbers for metrics: the rows, then one for requests no row matched */
const int fd_route_count = NROUTES + 1;
const char *fd_route_label(int route) {
    return route >= 0 && route < NROUTES ? routes[route].pattern : "unmatched";
}
const char *fd_route_method(int route) { return route >= 0 && route < NROUTES ? routes[route].method : ""; }

/* Split path into segments (in place in buf).  Returns count or -1. */
static int split_path(const char *path, char *buf, size_t bufsz, char **segs) {
    size_t n = strlen(path);
    if (n >= bufsz || path[0] != '/') return -1;
    memcpy(buf, path, n + 1);
    int k = 0;
    char *p = buf + 1;
    if (!*p) return 0;
    for (;;) {
        if (k == FD_MAX_SEGS) return -1;
        segs[k++] = p;
        char *s = strchr(p, '/');
        if (!s) break;
        *s = 0;
        p = s + 1;
    }
    return k;
}

/* Does path match pattern?  Captures "{x}" segments into args.  A pattern
 * segment "{x}:verb" (TF Serving's "/v1/models/m:predict") matches a
 * segment ending in ":verb" with a non-empty rest, captured as x; commit
 * cuts the ":verb" off the segment (done once, for the row chosen, as the
 * segments are shared by the rows tried before it). */
static int match(const char *pattern, char **segs, int nseg, char **args, int commit) {
    char pbuf[128], *ps[FD_MAX_SEGS];
    int np = split_path(pattern, pbuf, sizeof pbuf, ps), na = 0;
    if (np != nseg) return 0;
    for (int i = 0; i < np; i++) {
        if (ps[i][0] == '{') {
            const char *suf = strchr(ps[i], '}') + 1;
            size_t ns = strlen(segs[i]), nsuf = strlen(suf);
            if (ns <= nsuf || strcmp(segs[i] + ns - nsuf, suf)) return 0;
            if (commit && nsuf) segs[i][ns - nsuf] = 0;
            if (na < FD_MAX_ARGS) args[na++] = segs[i];
        } else if (strcmp(ps[i], segs[i])) {
            return 0;
        }
    }
    return 1;
}

/* ---- responses ------------------------------------------------------------------- */
/* The one place a response is queued: Content-Type (when given),
 * X-Request-Id, Cache-Control: no-store and the extra headers (name, value
 * pairs, NULL-terminated; may be NULL) are set, and the status and size are
 * recorded for the log line and metrics.  Takes resp (NULL: MHD_NO). */
static enum MHD_Result queue(fd_req *r, int status, struct MHD_Response *resp, const char *ctype,
                             size_t len, const char *const *extra) {
    if (!resp) return MHD_NO;
    if (ctype) MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (r->cors_origin) { /* an --allow-origin page may read the answer */
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors_origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Request-Id, Location, Retry-After");
        MHD_add_response_header(resp, "Vary", "Origin");
    }
    for (; extra && extra[0]; extra += 2)
        if (extra[1]) MHD_add_response_header(resp, extra[0], extra[1]);
    r->status = status;
    r->sent_bytes = len;
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* buf (taken, free()d; NULL for an empty body) with extra headers */
static enum MHD_Result send_buffer(fd_req *r, int status, const char *ctype, void *buf, size_t len,
                                   const char *const *extra) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, buf, buf ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) free(buf);
    return queue(r, status, resp, ctype, len, extra);
}

enum MHD_Result fd_send_bytes(fd_req *r, int status, const char *ctype, void *buf, size_t len) {
    return send_buffer(r, status, ctype, buf, len, NULL);
}

static enum MHD_Result send_static(fd_req *r, int status, const char *ctype, const void *data, size_t len) {
    return queue(r, status, MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_PERSISTENT), ctype,
                 len, NULL);
}

enum MHD_Result fd_send_static(fd_req *r, const char *ctype, const void *data, size_t len) {
    return send_static(r, 200, ctype, data, len);
}

enum MHD_Result fd_send_download(fd_req *r, const char *ctype, void *buf, size_t len, const char *filename) {
    char cd[192];
    snprintf(cd, sizeof cd, "attachment; filename=\"%s\"", filename);
    const char *const extra[] = {"Content-Disposition", cd, NULL};
    return send_buffer(r, 200, ctype, buf, len, extra);
}

/* body (taken) printed; newline: a trailing newline for terminals.  NULL
 * when it cannot be printed. */
static char *print_json(cJSON *body, int newline, size_t *len) {
    char *s = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (!s) return NULL;
    size_t n = strlen(s);
    if (newline) s[n++] = '\n'; /* over the NUL, which is not sent */
    *len = n;
    return s;
}

enum MHD_Result fd_send_json(fd_req *r, int status, cJSON *body) {
    size_t n = 0;
    char *s = print_json(body, 1, &n);
    if (!s) {
        static char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\",\"details\":{}}}";
        return send_static(r, 500, "application/json", oom, sizeof oom - 1);
    }
    return fd_send_bytes(r, status, "application/json", s, n);
}

enum MHD_Result fd_send_json_at(fd_req *r, int status, cJSON *body, const char *location) {
    size_t n = 0;
    char *s = print_json(body, 0, &n);
    if (!s) return MHD_NO;
    const char *const extra[] = {"Location", location, NULL};
    return send_buffer(r, status, "application/json", s, n, extra);
}

/* The error body: {"error":{"code","message","details"}}, or on the routes
 * of the standard protocols (r->plain_errors: /v2/..., :predict) their
 * {"error": "message"}, with 422 answered as their 400. */
static enum MHD_Result send_error_msg(fd_req *r, int status, const char *code, cJSON *details,
                                      const char *msg, const char *retry_after, const char *allow) {
    cJSON *o = cJSON_CreateObject();
    if (r->plain_errors) {
        cJSON_Delete(details);
        cJSON_AddStringToObject(o, "error", msg);
        if (status == 422) status = 400;
    } else {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "code", code);
        cJSON_AddStringToObject(e, "message", msg);
        cJSON_AddItemToObject(e, "details", details ? details : cJSON_CreateObject());
    }
    size_t n = 0;
    char *s = print_json(o, 1, &n);
    if (!s) return MHD_NO;
    /* RFC 6750 §3: a 401 names the scheme (and, for a token refused, why) */
    const char *www = status != 401 ? NULL
                      : r->bad_token ? "Bearer realm=\"flowd\", error=\"invalid_token\""
                                     : "Bearer realm=\"flowd\"";
    const char *const extra[] = {"Retry-After", retry_after, "Allow", allow, "WWW-Authenticate", www, NULL};
    return send_buffer(r, status, "application/json", s, n, extra);
}

enum MHD_Result fd_send_error(fd_req *r, int status, const char *code, cJSON *details,
                              const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_error_msg(r, status, code, details, msg,
                          status == 429 || status == 503 ? "1" : NULL, NULL);
}

enum MHD_Result fd_send_db_error(fd_req *r, int rc, const char *err) {
    switch (rc) {
    case FD_ENOTFOUND: return fd_send_error(r, 404, "not_found", NULL, "%s", err && *err ? err : "not found");
    case FD_ECONFLICT: return fd_send_error(r, 409, "conflict", NULL, "%s", err && *err ? err : "conflict");
    case FD_EINVAL: return fd_send_error(r, 422, "invalid_input", NULL, "%s", err && *err ? err : "invalid input");
    case FD_EBUSY: return fd_send_error(r, 503, "overloaded", NULL, "database busy, retry: %s", err ? err : "");
    case FD_EFULL: return fd_send_error(r, 507, "internal", NULL, "storage full: %s", err ? err : "");
    case FD_ECORRUPT: return fd_send_error(r, 500, "internal", NULL, "stored data is corrupt: %s", err ? err : "");
    default: return fd_send_error(r, 500, "internal", NULL, "storage error: %s", err ? err : "");
    }
}

/* ---- event streams ------------------------------------------------------------------ */
/* An event stream's reader returns bytes, FD_STREAM_END or FD_STREAM_WAIT.
 * On WAIT the connection is parked (MHD_suspend_connection) and the
 * resumer thread wakes every parked stream each 100 ms for its next read,
 * so an open stream holds no request thread. */
typedef struct sse {
    fd_stream_reader read;
    void (*done)(void *cls);
    void *cls;
    struct MHD_Connection *conn;
    struct sse *next; /* in the parked list (under park_mu) */
} sse;

static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;
static sse *parked;
static int park_stop, resumer_running;
static pthread_t resumer;

static void *resumer_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&park_mu);
    while (!park_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&park_cv, &park_mu, &ts);
        for (sse *e = parked; e; e = e->next) MHD_resume_connection(e->conn);
        parked = NULL;
    }
    pthread_mutex_unlock(&park_mu);
    return NULL;
}

int fd_streams_start(void) {
    pthread_mutex_lock(&park_mu);
    park_stop = 0;
    int rc = resumer_running ? 0 : pthread_create(&resumer, NULL, resumer_main, NULL);
    if (!rc) resumer_running = 1;
    pthread_mutex_unlock(&park_mu);
    return rc ? -1 : 0;
}

/* Before MHD_stop_daemon (which must not find suspended connections):
 * every parked stream is woken and ends at its next read. */
void fd_streams_stop(void) {
    pthread_mutex_lock(&park_mu);
    park_stop = 1;
    for (sse *e = parked; e; e = e->next) MHD_resume_connection(e->conn);
    parked = NULL;
    int join = resumer_running;
    resumer_running = 0;
    pthread_cond_broadcast(&park_cv);
    pthread_mutex_unlock(&park_mu);
    if (join) pthread_join(resumer, NULL);
}

int fd_streams_stopping(void) {
    pthread_mutex_lock(&park_mu);
    int stopping = park_stop;
    pthread_mutex_unlock(&park_mu);
    return stopping;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    sse *e = cls;
    ssize_t n = e->read(e->cls, buf, max);
    if (n == FD_STREAM_END) return MHD_CONTENT_READER_END_OF_STREAM;
    if (n != FD_STREAM_WAIT) return n;
    /* nothing new: park until the resumer's next round (100 ms) */
    pthread_mutex_lock(&park_mu);
    if (park_stop) {
        pthread_mutex_unlock(&park_mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    MHD_suspend_connection(e->conn);
    e->next = parked;
    parked = e;
    pthread_mutex_unlock(&park_mu);
    return 0;
}

static void sse_free(void *cls) {
    sse *e = cls;
    pthread_mutex_lock(&park_mu); /* not parked any more, but be sure */
    for (sse **q = &parked; *q; q = &(*q)->next)
        if (*q == e) {
            *q = e->next;
            break;
        }
    pthread_mutex_unlock(&park_mu);
    e->done(e->cls);
    free(e);
}

static void end_busy(fd_req *r);

enum MHD_Result fd_send_event_stream(fd_req *r, fd_stream_reader read, void *cls, void (*done)(void *cls)) {
    sse *e = calloc(1, sizeof *e);
    struct MHD_Response *resp =
        e ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, e, sse_free) : NULL;
    if (!resp) {
        free(e);
        done(cls);
        return MHD_NO;
    }
    *e = (sse){.read = read, .done = done, .cls = cls, .conn = r->conn};
    r->streaming = 1; /* keeps its inflight slot until it ends */
    end_busy(r);      /* but a watcher does not hold training back */
    return queue(r, 200, resp, "text/event-stream", 0, NULL);
}

/* ---- answers written as they are sent (server/stream.h) ------------------------------ */
static ssize_t answer_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    ssize_t n = fd_answer_read(cls, buf, max);
    return n == FD_STREAM_END ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

enum MHD_Result fd_send_answer(fd_req *r, int status, const char *ctype, fd_answer *a) {
    if (!fd_answer_ok(a)) {
        fd_answer_free(a);
        return fd_send_error(r, 500, "internal", NULL, "out of memory");
    }
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 << 10, answer_read, a, fd_answer_free);
    if (!resp) {
        fd_answer_free(a);
        return MHD_NO;
    }
    return queue(r, status, resp, ctype, 0, NULL);
}

/* ---- request helpers --------------------------------------------------------------- */
const char *fd_req_query(fd_req *r, const char *key) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}
const char *fd_req_header(fd_req *r, const char *key) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, key);
}

enum MHD_Result fd_send_limit_error(fd_req *r, const nf_data_limits *lim, const char *msg) {
    cJSON *d = cJSON_CreateObject();
    const fd_config *c = &r->srv->cfg;
    if (lim->exceeded == NF_DATA_LIMIT_RATIO) {
        cJSON_AddStringToObject(d, "limit", "inflate_ratio");
        cJSON_AddNumberToObject(d, "max_ratio", c->max_inflate_ratio);
    } else if (lim->exceeded == NF_DATA_LIMIT_INFLATE) {
        cJSON_AddStringToObject(d, "limit", "inflate");
        cJSON_AddNumberToObject(d, "max_bytes", (double)c->max_inflate);
    } else {
        cJSON_AddStringToObject(d, "limit", "memory");
        cJSON_AddNumberToObject(d, "max_bytes", (double)c->max_request_memory);
    }
    return fd_send_error(r, 413, "payload_too_large", d, "%s", msg);
}

cJSON *fd_req_json(fd_req *r) {
    const char *ct = fd_req_header(r, "Content-Type");
    /* a form's encoding (curl -d sends application/x-www-form-urlencoded)
     * is what a web page can post without CORS: refused, as is none */
    if (r->len && (!ct || strncasecmp(ct, "application/json", 16) != 0)) {
        fd_send_error(r, 415, "unsupported_media_type", NULL,
                      "expected Content-Type application/json, got %s", ct ? ct : "none");
        return NULL;
    }
    /* the tree costs tens of bytes per body byte: bounded before it is built */
    size_t cost = nf_data_parse_cost(r->body, r->len, NF_DATA_JSON), max = r->srv->cfg.max_request_memory;
    if (r->body && cost > max - (r->len < max ? r->len : max)) {
        char msg[200];
        snprintf(msg, sizeof msg, "parsing this %zu-byte JSON body would take about %zu bytes of memory; the limit is %zu "
                 "(--max-request-memory)", r->len, cost + r->len, max);
        nf_data_limits lim = {.exceeded = NF_DATA_LIMIT_MEMORY};
        fd_send_limit_error(r, &lim, msg);
        return NULL;
    }
    if (r->body && fd_req_reserve(r, cost)) {
        fd_send_budget_error(r, cost);
        return NULL;
    }
    const char *end = NULL;
    cJSON *o = r->body ? cJSON_ParseWithLengthOpts(r->body, r->len, &end, 0) : NULL;
    if (o && end) { /* only whitespace may follow the value */
        const char *e = r->body + r->len;
        while (end < e && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
        if (end < e) {
            cJSON_Delete(o);
            o = NULL;
        }
    }
    if (!o) {
        cJSON *d = cJSON_CreateObject();
        size_t at = end && r->body ? (size_t)(end - r->body) : 0;
        cJSON_AddNumberToObject(d, "offset", (double)at);
        fd_send_error(r, 400, "invalid_json", d, r->len ? "the body is not valid JSON (near byte %zu)"
                                                         : "the body is empty; a JSON object is required", at);
        return NULL;
    }
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        fd_send_error(r, 400, "invalid_json", NULL, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

void fd_req_inference(fd_req *r, const fd_model *m, fd_op op) {
    snprintf(r->inf_model, sizeof r->inf_model, "%s", m->name);
    r->inf_version = m->version;
    r->inf_op = op;
}

static void db_destroy(void *p) { fd_db_close(p); }

fd_db *fd_req_db(fd_req *r) {
    fd_db *db = pthread_getspecific(r->srv->db_key);
    if (db) return db;
    char err[256] = "";
    if (fd_db_open(r->srv->cfg.db_path, &db, err, sizeof err)) {
        fd_send_error(r, 500, "internal", NULL, "cannot open the database: %s", err);
        return NULL;
    }
    pthread_setspecific(r->srv->db_key, db);
    return db;
}

/* ---- built-in handlers ---------------------------------------------------------------- */
static enum MHD_Result h_healthz(fd_req *r, char **a) {
    (void)a;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return fd_send_json(r, 200, o);
}

static enum MHD_Result h_readyz(fd_req *r, char **a) {
    (void)a;
    fd_server *s = r->srv;
    int ok = atomic_load(&s->ready) && !atomic_load(&s->draining);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", ok ? "ready" : atomic_load(&s->draining) ? "draining" : "starting");
    if (!ok) { /* no trailing newline on this one */
        size_t n = 0;
        char *t = print_json(o, 0, &n);
        return fd_send_bytes(r, 503, "application/json", t, n);
    }
    return fd_send_json(r, 200, o);
}

static enum MHD_Result h_metrics(fd_req *r, char **a) {
    (void)a;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    char *t = fd_metrics_render(r->srv, db);
    if (!t) return fd_send_error(r, 500, "internal", NULL, "out of memory");
    return fd_send_bytes(r, 200, "text/plain; version=0.0.4", t, strlen(t));
}

extern char *openblas_get_config(void);
extern int openblas_get_num_threads(void);

static enum MHD_Result h_version(fd_req *r, char **a) {
    (void)a;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", FD_VERSION);
    cJSON_AddNumberToObject(o, "schema_version", fd_db_schema_version(db));
    cJSON_AddStringToObject(o, "blas", openblas_get_config());
    cJSON_AddNumberToObject(o, "blas_threads", openblas_get_num_threads());
    cJSON_AddStringToObject(o, "microhttpd", MHD_get_version());
    return fd_send_json(r, 200, o);
}

/* ---- authentication --------------------------------------------------------------------- */
/* Returns the scope granted by the Authorization header: 0 none, 1 read,
 * 2 write; -1 when a token was given but matches nothing.  Compares the
 * SHA-256 of the presented token with every stored hash in constant time
 * (CRYPTO_memcmp), visiting all of them, so neither timing nor position
 * tells anything about a near miss. */
static int authenticate(fd_req *r) {
    fd_server *s = r->srv;
    const char *h = fd_req_header(r, "Authorization");
    if (!h) return 0;
    if (strncasecmp(h, "Bearer ", 7) != 0) return -1;
    const char *tok = h + 7;
    while (*tok == ' ') tok++;
    char hex[65];
    fd_sha256_hex(tok, strlen(tok), hex);
    int scope = -1;
    for (int i = 0; i < s->ntokens; i++) {
        int eq = CRYPTO_memcmp(hex, s->tokens[i].hash, 64) == 0;
        int sc = s->tokens[i].write ? 2 : 1;
        scope = eq && sc > scope ? sc : scope;
    }
    if (scope > 0) memcpy(r->client_token, hex, sizeof hex);
    return scope;
}

/* ---- the access handler ----------------------------------------------------------------- */
/* URI unescaping as libmicrohttpd's default (%HH), except that %00 is left
 * as its three characters: a decoded NUL would end the path early, so
 * "/v1/models/m%00x" would be served as "/v1/models/m".  Such a path then
 * matches no route (404), and a query value with it is an invalid name. */
static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static size_t unescape_uri(void *cls, struct MHD_Connection *c, char *s) {
    (void)cls, (void)c;
    char *w = s;
    for (const char *p = s; *p;) {
        int hi = p[0] == '%' ? hexval(p[1]) : -1, lo = hi >= 0 ? hexval(p[2]) : -1;
        if (lo >= 0 && (hi | lo)) {
            *w++ = (char)(hi * 16 + lo);
            p += 3;
        } else {
            *w++ = *p++;
        }
    }
    *w = 0;
    return (size_t)(w - s);
}

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind, (void)value;
    int *n = cls;
    n[0] += !strcasecmp(key, "Content-Length");
    n[1] += !strcasecmp(key, "Transfer-Encoding");
    return MHD_YES;
}

static void make_rid(fd_req *r) {
    const char *in = fd_req_header(r, "X-Request-Id");
    if (in) {
        size_t n = strlen(in), ok = n > 0 && n < sizeof r->rid;
        for (size_t i = 0; ok && i < n; i++)
            ok = isalnum((unsigned char)in[i]) || in[i] == '-' || in[i] == '_' || in[i] == '.';
        if (ok) {
            memcpy(r->rid, in, n + 1);
            return;
        }
    }
    static _Thread_local uint64_t state;
    if (!state) state = (uint64_t)time(NULL) ^ ((uint64_t)(uintptr_t)&state << 16) ^ (uint64_t)getpid();
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    snprintf(r->rid, sizeof r->rid, "%016llx", (unsigned long long)state);
}

/* Phase 0, guard (guard.c): without tokens, Host must name the listen
 * address (DNS rebinding); an Origin must be the request's own or on
 * --allow-origin (a page elsewhere in the user's browser).  An OPTIONS
 * preflight from an allowed origin is answered here, 204. */
static enum MHD_Result guard(fd_req *r) {
    fd_server *s = r->srv;
    const char *host = fd_req_header(r, "Host"), *origin = fd_req_header(r, "Origin");
    if (!fd_guard_host(s, host)) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "reason", "host");
        return fd_send_error(r, 403, "permission_denied", d,
                             "Host %.100s is not this server's address; without --token-file only "
                             "%s and localhost are answered", host, s->cfg.listen_host);
    }
    int o = fd_guard_origin(s, origin, host);
    if (!o) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "reason", "origin");
        return fd_send_error(r, 403, "permission_denied", d,
                             "requests from the web origin %.100s are refused; allow it with --allow-origin", origin);
    }
    if (o == 2) r->cors_origin = origin;
    if (!strcmp(r->method, "OPTIONS") && origin) {
        const char *const extra[] = {"Access-Control-Allow-Methods", "GET, POST, DELETE",
                                     "Access-Control-Allow-Headers",
                                     "Authorization, Content-Type, Accept, Last-Event-ID, X-Request-Id",
                                     "Access-Control-Max-Age", "600", NULL, NULL};
        return send_buffer(r, 204, NULL, NULL, 0, extra);
    }
    return MHD_YES;
}

/* Phase 2b, body type: a body sent to a route that takes one declares a
 * type some route parses; a form's encodings, and none at all, are refused
 * before the body is read. */
static enum MHD_Result check_body_type(fd_req *r) {
    if (!routes[r->route].body) return MHD_YES;
    const char *cl = fd_req_header(r, "Content-Length"), *te = fd_req_header(r, "Transfer-Encoding");
    if (!te && (!cl || !strcmp(cl, "0"))) return MHD_YES; /* no body: the handler says what is missing */
    const char *ct = fd_req_header(r, "Content-Type");
    if (fd_guard_ctype_ok(ct)) return MHD_YES;
    return fd_send_error(r, 415, "unsupported_media_type", NULL,
                         "%s%.100s: a body is application/json, text/csv, application/x-npy, application/x-idx, "
                         "application/gzip or application/octet-stream, as the route takes",
                         ct ? "a body cannot be " : "the body has no Content-Type", ct ? ct : "");
}

/* Phase 1, route: find the row for method and path, keeping the captured
 * segments in r->args.  405 (with Allow) when the path has rows for other
 * methods only; GET / is the dashboard; else 404. */
static enum MHD_Result route_request(fd_req *r) {
    char *segs[FD_MAX_SEGS];
    int nseg = split_path(r->url, r->path, sizeof r->path, segs), found = -1;
    char allow[128] = "";
    for (int i = 0; nseg >= 0 && i < NROUTES; i++) {
        char *args[FD_MAX_ARGS] = {0};
        if (!match(routes[i].pattern, segs, nseg, args, 0)) continue;
        if (!strcmp(routes[i].method, r->method)) {
            match(routes[i].pattern, segs, nseg, args, 1);
            found = i;
            memcpy(r->args, args, sizeof args);
            break;
        }
        if (!strstr(allow, routes[i].method)) {
            if (*allow) strcat(allow, ", ");
            strcat(allow, routes[i].method);
        }
    }
    if (found < 0 && *allow) {
        char msg[300];
        snprintf(msg, sizeof msg, "%s is not allowed here; allowed: %s", r->method, allow);
        return send_error_msg(r, 405, "method_not_allowed", NULL, msg, NULL, allow);
    }
    if (found < 0) {
        if (!strcmp(r->method, "GET") && !strcmp(r->url, "/")) return fd_api_dashboard(r, NULL);
        return fd_send_error(r, 404, "not_found", NULL, "no route for %s %s", r->method, r->url);
    }
    r->route = found;
    r->plain_errors |= plain_path(routes[found].pattern);
    return MHD_YES;
}

/* Phase 2, auth: the route's scope against the bearer token (when tokens
 * are configured); a draining server then refuses all but public routes. */
static enum MHD_Result authorize(fd_req *r) {
    fd_server *s = r->srv;
    int scope = routes[r->route].scope;
    if (scope != SCOPE_PUBLIC && s->ntokens > 0) {
        int sc = authenticate(r);
        r->bad_token = sc < 0;
        if (sc <= 0)
            return fd_send_error(r, 401, "unauthenticated", NULL,
                                 sc < 0 ? "invalid token" : "an Authorization: Bearer token is required");
        if (scope == SCOPE_WRITE && sc < 2)
            return fd_send_error(r, 403, "permission_denied", NULL,
                                 "this route needs a write token; the token given has read scope");
        r->write_scope = sc == 2;
    } else {
        r->write_scope = 1;
    }
    if (atomic_load(&s->draining) && scope != SCOPE_PUBLIC)
        return fd_send_error(r, 503, "overloaded", NULL, "the server is shutting down");
    return MHD_YES;
}

/* Phase 3, body limit: refused from the headers, before a byte is read. */
static enum MHD_Result check_body_limit(fd_req *r) {
    size_t max = r->srv->cfg.max_body;
    /* two Content-Lengths, or one with Transfer-Encoding, leave the body's
     * end ambiguous (a proxy in front may read it differently): refused */
    int framing[2] = {0, 0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_framing, framing);
    if (framing[0] > 1 || (framing[0] && framing[1]))
        return fd_send_error(r, 400, "invalid_argument", NULL,
                             framing[1] ? "Content-Length and Transfer-Encoding together"
                                        : "more than one Content-Length");
    const char *cl = fd_req_header(r, "Content-Length");
    if (!cl) return MHD_YES;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(cl, &end, 10);
    if (errno || *end || end == cl) return fd_send_error(r, 400, "invalid_argument", NULL, "bad Content-Length");
    if (v > max) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "max_bytes", (double)max);
        return fd_send_error(r, 413, "payload_too_large", d, "the body is %llu bytes; the limit is %zu", v, max);
    }
    return MHD_YES;
}

/* a request counted for the training yield (admit) is answered, or is an
 * event stream that has started */
static void end_busy(fd_req *r) {
    if (!r->busy) return;
    r->busy = 0;
    fd_jobs_request_end();
}

/* Phase 4, admission: an inflight slot (health, readiness and metrics stay
 * answerable without one). */
static enum MHD_Result admit(fd_req *r) {
    fd_server *s = r->srv;
    if (routes[r->route].scope == SCOPE_PUBLIC) return MHD_YES;
    /* A refusal while the client is still sending its body waits for the
     * body (read and dropped): a response queued before it makes
     * libmicrohttpd close with the body unread, the kernel then resets the
     * connection, and the reset can destroy the response before the
     * client reads it (RFC 9112 section 9.6).  A client that asked
     * "Expect: 100-continue" has sent no body yet and waits: answered at
     * once.  Bodies past --max-body are refused at once (check_body_limit):
     * those are not read. */
    const char *te = fd_req_header(r, "Transfer-Encoding"), *cl = fd_req_header(r, "Content-Length");
    const char *ex = fd_req_header(r, "Expect"); /* 100-continue: the client waits for the answer */
    unsigned long long v = cl && routes[r->route].body ? strtoull(cl, NULL, 10) : 0; /* declared */
    int body_follows = routes[r->route].body && (v > 0 || te) && !(ex && !strcasecmp(ex, "100-continue"));
    if (atomic_fetch_add(&s->inflight, 1) >= s->cfg.max_inflight) {
        atomic_fetch_sub(&s->inflight, 1);
        if (body_follows) {
            r->refused = 1;
            return MHD_YES;
        }
        return fd_send_error(r, 503, "overloaded", NULL, "too many requests in flight; retry shortly");
    }
    r->counted = 1;
    r->busy = 1; /* training waits until it is answered (fd_jobs_set_train_yield) */
    fd_jobs_request_begin();
    /* and by bytes: the declared body is reserved and allocated now, whole */
    if (v > 0 && v <= s->cfg.max_body) {
        if (fd_req_reserve(r, (size_t)v + 1)) {
            if (!body_follows) return fd_send_budget_error(r, (size_t)v + 1);
            r->refused = 2;
            r->refused_bytes = (size_t)v + 1;
            return MHD_YES;
        }
        if (!(r->body = malloc((size_t)v + 1))) return MHD_NO;
        r->cap = (size_t)v + 1;
        r->body[0] = 0;
    }
    return MHD_YES;
}

/* The first call: the request, then phases 1-4 until one answers. */
static enum MHD_Result on_headers(fd_server *s, struct MHD_Connection *conn, const char *url,
                                  const char *method, void **con_cls) {
    fd_req *r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    atomic_fetch_add(&s->active, 1);
    *con_cls = r;
    r->srv = s;
    r->conn = conn;
    r->method = method;
    r->url = url;
    r->t0 = fd_now();
    r->route = NROUTES;
    r->plain_errors = !strncmp(url, "/v2", 3) && (url[3] == 0 || url[3] == '/'); /* also unrouted */
    make_rid(r);
    static enum MHD_Result (*const phases[])(fd_req *) = {guard, route_request, authorize, check_body_type,
                                                         check_body_limit, admit};
    enum MHD_Result ret = MHD_YES;
    for (size_t i = 0; i < sizeof phases / sizeof phases[0] && ret == MHD_YES && !r->status; i++)
        ret = phases[i](r);
    return ret;
}

/* Phase 5, body accumulation: a piece of the body, kept up to the limit;
 * beyond it (or on a route without a body) only counted.  Drained
 * unread once the request has been answered. */
static enum MHD_Result accumulate(fd_req *r, const char *data, size_t *size) {
    size_t n = *size;
    *size = 0;
    if (r->status || r->refused) return MHD_YES;
    if (!routes[r->route < NROUTES ? r->route : 0].body || r->len + n > r->srv->cfg.max_body) {
        r->too_large = r->len + n > r->srv->cfg.max_body;
        r->len += n; /* count, do not keep */
        free(r->body);
        r->body = NULL;
        r->cap = 0;
        return MHD_YES;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1) cap *= 2;
        if (r->mem_refused || fd_req_reserve(r, cap - r->cap)) { /* a chunked body past the budget */
            r->mem_refused = 1;
            r->len += n;
            free(r->body);
            r->body = NULL;
            r->cap = 0;
            return MHD_YES;
        }
        char *b = realloc(r->body, cap);
        if (!b) return MHD_NO;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = 0;
    return MHD_YES;
}

/* The inflight slot goes back as soon as the request is answered: its
 * response may still be on the wire, but its work is done, and a client
 * that reads the answer and sends its next request at once must find the
 * slot free (released at completion, that next request could get a 503
 * from its own previous one).  An event stream keeps its slot until it
 * ends. */
static void release_slot(fd_req *r) {
    if (!r->counted) return;
    atomic_fetch_sub(&r->srv->inflight, 1);
    r->counted = 0;
}

/* Phase 6, dispatch: the body is complete; the route's handler answers
 * with the segments captured by routing. */
static enum MHD_Result handle(fd_req *r) {
    if (r->refused == 1)
        return fd_send_error(r, 503, "overloaded", NULL, "too many requests in flight; retry shortly");
    if (r->refused == 2) return fd_send_budget_error(r, r->refused_bytes);
    if (r->too_large) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "max_bytes", (double)r->srv->cfg.max_body);
        return fd_send_error(r, 413, "payload_too_large", d, "the body exceeds the limit of %zu bytes",
                             r->srv->cfg.max_body);
    }
    if (r->mem_refused) return fd_send_budget_error(r, r->len);
    if (r->route >= NROUTES) return fd_send_error(r, 404, "not_found", NULL, "no route");
    enum MHD_Result ret = routes[r->route].fn(r, r->args);
    if (!r->status) /* a handler that forgot to answer is a bug: answer 500 */
        ret = fd_send_error(r, 500, "internal", NULL, "no response produced");
    return ret;
}

static enum MHD_Result dispatch(fd_req *r) {
    if (r->status) return MHD_YES;
    enum MHD_Result ret = handle(r);
    if (!r->streaming) release_slot(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls) {
    (void)version;
    fd_req *r = *con_cls;
    if (!r) return on_headers(cls, conn, url, method, con_cls);
    if (*upload_size > 0) return accumulate(r, upload_data, upload_size);
    return dispatch(r);
}

#define FD_TRIM_AFTER ((size_t)16 << 20)

/* Phase 7, completion: release the inflight slot, record metrics, log the
 * request in one line, free it. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    fd_server *s = cls;
    fd_req *r = *con_cls;
    if (!r) return;
    double dt = fd_now() - r->t0;
    release_slot(r);
    end_busy(r);
    fd_metrics_request(s->metrics, r->route, r->status, dt);
    if (r->inf_model[0]) fd_metrics_inference(s->metrics, r->inf_model, r->inf_version, r->inf_op, r->status, dt);
    if (!s->cfg.quiet) {
        char status[16], bytes[24], us[24];
        snprintf(status, sizeof status, "%d", r->status);
        snprintf(bytes, sizeof bytes, "%zu", r->sent_bytes);
        snprintf(us, sizeof us, "%.0f", dt * 1e6);
        const char *kv[] = {"method", r->method, "path", r->url, "status", status, "bytes", bytes, "us", us,
                            "rid", r->rid, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? NULL : "aborted", "1", NULL};
        fd_log_kv("info", "request", kv);
    }
    free(r->body);
    /* a request that held much: its pages go back to the system now.  The
     * allocator keeps freed memory in the thread's arena, so without this
     * each request thread's largest parse stays resident and the peak
     * grows with the thread count, not the budget (test_memory.c) */
    if (r->reserved >= FD_TRIM_AFTER) malloc_trim(0);
    fd_req_release(r);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&s->active, 1);
}

int fd_server_start(fd_server *s, char *err, size_t errlen) {
    /* an IPv4 address, or an IPv6 one (it has a ':'); the IPv6 wildcard ::
     * takes IPv4 connections too (dual stack) */
    struct sockaddr_in addr;
    struct sockaddr_in6 addr6;
    memset(&addr, 0, sizeof addr);
    memset(&addr6, 0, sizeof addr6);
    int v6 = strchr(s->cfg.listen_host, ':') != NULL;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->cfg.port);
    addr6.sin6_family = AF_INET6;
    addr6.sin6_port = htons((uint16_t)s->cfg.port);
    if (v6 ? inet_pton(AF_INET6, s->cfg.listen_host, &addr6.sin6_addr) != 1
           : inet_pton(AF_INET, s->cfg.listen_host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "cannot parse listen address %s (an IPv4 or IPv6 address expected)",
                 s->cfg.listen_host);
        return -1;
    }
    if (pthread_key_create(&s->db_key, db_destroy)) {
        snprintf(err, errlen, "pthread_key_create failed");
        return -1;
    }
    s->metrics = fd_metrics_create();
    s->cache = fd_cache_create(s->cfg.cache_models, s->cfg.pack_max);
    if (!s->metrics || !s->cache) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* suspend/resume: event streams park their connection between polls
     * (api_jobs.c), so they hold no request thread.  poll(), not epoll:
     * MHD_quiesce_daemon (the drain) on an epoll daemon with its own threads
     * races the workers' removal of the listening socket from their epoll
     * sets, and libmicrohttpd aborts the process ("Failed to remove listen
     * FD from epoll set", an open defect; seen here at SIGTERM in make
     * test).  With poll() the quiesce reaches the workers through their
     * inter-thread channel (MHD_ALLOW_SUSPEND_RESUME brings it). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG |
                     MHD_ALLOW_SUSPEND_RESUME;
    if (v6) flags |= IN6_IS_ADDR_UNSPECIFIED(&addr6.sin6_addr) ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    if (fd_streams_start()) {
        snprintf(err, errlen, "cannot start the event-stream thread");
        return -1;
    }
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, v6 ? (struct sockaddr *)&addr6 : (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->cfg.http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, s->cfg.conn_memory,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg.conn_timeout,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)0,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        /* 1 would set SO_REUSEPORT: a second daemon could bind the same
         * port and take half the connections.  0 is SO_REUSEADDR only (a
         * restart binds at once over TIME_WAIT); --reuse-port asks for 1 */
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)(s->cfg.reuse_port ? 1 : 0),
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_uri, NULL,
        MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen, "cannot listen on %s%s%s:%d (%s)", v6 ? "[" : "", s->cfg.listen_host, v6 ? "]" : "",
                 s->cfg.port, strerror(errno));
        return -1;
    }
    if (s->cfg.port == 0) {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
        if (di) s->cfg.port = di->port;
    }
    return 0;
}

int fd_server_drain(fd_server *s, double timeout_s) {
    atomic_store(&s->draining, 1); /* /readyz 503; requests not yet admitted: 503 */
    if (!s->mhd) return 0;
    /* no new connections: shutdown() of the listening socket makes connect()
     * fail; connections already open stay, to finish their requests.  The
     * descriptor itself is closed only after MHD_stop_daemon (MHD's threads
     * may still hold it) */
    MHD_socket ls = MHD_quiesce_daemon(s->mhd);
    if (ls != MHD_INVALID_SOCKET) {
        shutdown(ls, SHUT_RDWR);
        s->quiesced_fd = ls;
        s->quiesced = 1;
    }
    fd_streams_stop(); /* event streams end: they would run until their job does */
    double t0 = fd_now();
    while (atomic_load(&s->active) > 0 && fd_now() - t0 < timeout_s) usleep(10000);
    return atomic_load(&s->active);
}

void fd_server_stop(fd_server *s) {
    fd_streams_stop(); /* MHD_stop_daemon must find no suspended connection */
    if (s->mhd) MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    if (s->quiesced) close(s->quiesced_fd);
    s->quiesced = 0;
    fd_cache_free(s->cache);
    s->cache = NULL;
    fd_metrics_free(s->metrics);
    s->metrics = NULL;
}
