/* api_jobs.c: /v1/jobs routes and /v1/datasets routes.
 *
 * Jobs are validated with the same parser the workers use (nf_job_parse),
 * so a job that is accepted (202) can only fail for reasons discovered while
 * training (bad data values, divergence), never for its shape.
 *
 * Events (text/event-stream): the stream polls the job's metric rows and
 * state on its own database connection, sending "progress" events per
 * logged step and one final "state" event.  When a poll finds nothing new,
 * the reader answers FD_STREAM_WAIT and http.c parks the connection until
 * the next 100 ms round (fd_send_event_stream).  So an open stream holds no
 * request thread, and the pool can be sized for scoring (one thread per
 * core).  Streams are capped at
 * FD_MAX_STREAMS (each has its own database connection); beyond, 503. */
#include "server.h"

#include "../core/data.h"
#include "../core/job.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int parse_id(const char *s, int64_t *id) { return nf_parse_i64(s, 1, INT64_MAX, id) ? -1 : 0; }

/* ---- jobs ---------------------------------------------------------------------------- */
/* Was a job submitted with submission_id sid?  Scans the job list, newest
 * first; used only when the queue is full, so that an idempotent retry of a
 * job already accepted finds it instead of getting a 429. */
static int submission_exists(fd_db *db, const char *sid) {
    int64_t page = 0, next = 0;
    char err[200];
    do {
        cJSON *out = NULL, *e;
        if (fd_db_jobs_list(db, NULL, page, 1000, &out, &next, err, sizeof err)) return 0;
        int found = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(out, "jobs")) {
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(e, "submission_id");
            found |= cJSON_IsString(s) && !strcmp(s->valuestring, sid);
        }
        cJSON_Delete(out);
        if (found) return 1;
        page = next;
    } while (next);
    return 0;
}

/* A job's labels dataset (dataset.labels.id): it exists and holds one
 * label per row of the job's dataset (rows); -1 after sending the 422. */
static int labels_or_reply(fd_req *r, fd_db *db, const nf_job *j, int64_t rows) {
    cJSON *ds = NULL;
    char err[300] = "";
    int rc = fd_db_dataset_get(db, j->labels_id, &ds, err, sizeof err);
    if (rc) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "dataset", j->labels_id);
        if (rc == FD_ENOTFOUND)
            fd_send_error(r, 422, "invalid_input", d, "dataset.labels.id: dataset %s does not exist", j->labels_id);
        else
            fd_send_error(r, 422, "invalid_input", d, "dataset.labels.id: %s", err);
        return -1;
    }
    int64_t lrows = 0, ldim = 0;
    nf_json_i64(ds, "rows", 0, 0, INT64_MAX / 2, &lrows, NULL, 0);
    nf_json_i64(ds, "dim", 0, 0, INT_MAX, &ldim, NULL, 0);
    cJSON_Delete(ds);
    if (lrows != rows || ldim != 1) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "rows", (double)lrows);
        cJSON_AddNumberToObject(d, "dim", (double)ldim);
        cJSON_AddNumberToObject(d, "expected_rows", (double)rows);
        fd_send_error(r, 422, "invalid_input", d, "dataset.labels.id: the labels dataset has %lld rows "
                      "of %lld values; it needs %lld rows of one label", (long long)lrows,
                      (long long)ldim, (long long)rows);
        return -1;
    }
    return 0;
}

enum MHD_Result fd_api_jobs_create(fd_req *r, char **a) {
    (void)a;
    cJSON *body = fd_req_json(r); /* 400/415 for non-JSON */
    if (!body) return MHD_YES;
    fd_db *db = fd_req_db(r);
    nf_job j;
    char err[512] = "";
    int rc = db ? nf_job_from_json(body, 0, &j, err, sizeof err) : 0;
    if (!db || rc) cJSON_Delete(body);
    if (!db) return MHD_YES;
    if (rc) return fd_send_error(r, 422, "invalid_input", NULL, "%s", err);
    /* from here every return deletes body (kept: the stored request is
     * this tree printed compactly, not the bytes as sent) */
    /* the queue limit first: a full queue refuses at the cost of a count,
     * before the dataset lookup and the dry run build anything */
    int64_t counts[5];
    if (fd_db_job_counts(db, counts, err, sizeof err) == 0 && counts[0] >= r->srv->cfg.max_queued_jobs &&
        !(j.submission_id[0] && submission_exists(db, j.submission_id))) {
        nf_job_free(&j);
        cJSON_Delete(body);
        return fd_send_error(r, 429, "overloaded", NULL, "%lld jobs are queued (limit %d); retry later",
                             (long long)counts[0], r->srv->cfg.max_queued_jobs);
    }
    /* the dataset (once), then the dry run on its shape: a bad preset,
     * layer or preprocessing choice is a 422 here, not a failed job later */
    int dim = 0, is_int = 0, shape[3] = {0, 0, 0};
    double vmin = 0, vmax = 0;
    if (j.dataset_id[0]) {
        cJSON *ds = NULL;
        rc = fd_db_dataset_get(db, j.dataset_id, &ds, err, sizeof err);
        if (rc == FD_ENOTFOUND) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "dataset", j.dataset_id);
            enum MHD_Result ret = fd_send_error(r, 422, "invalid_input", d, "dataset %s does not exist", j.dataset_id);
            nf_job_free(&j); /* zeroes j: after the message that names the id */
            cJSON_Delete(body);
            return ret;
        }
        if (rc) {
            nf_job_free(&j);
            cJSON_Delete(body);
            return fd_send_db_error(r, rc, err);
        }
        int64_t d64 = 2;
        double lo = -4, hi = 4;
        nf_json_i64(ds, "dim", 2, 1, INT_MAX, &d64, NULL, 0);
        nf_json_bool(ds, "is_integer", 0, &is_int, NULL, 0);
        nf_json_num(ds, "min", -4, -HUGE_VAL, HUGE_VAL, &lo, NULL, 0);
        nf_json_num(ds, "max", 4, -HUGE_VAL, HUGE_VAL, &hi, NULL, 0);
        dim = (int)d64;
        vmin = lo;
        vmax = hi;
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(ds, "shape");
        for (int k = 0; k < 3 && cJSON_GetArraySize(sh) == 3; k++)
            shape[k] = cJSON_GetArrayItem(sh, k)->valueint;
        int64_t rows = 0;
        nf_json_i64(ds, "rows", 0, 0, INT64_MAX / 2, &rows, NULL, 0);
        cJSON_Delete(ds);
        if (j.labels_id[0] && labels_or_reply(r, db, &j, rows)) {
            nf_job_free(&j);
            cJSON_Delete(body);
            return MHD_YES;
        }
    }
    if (nf_job_check(&j, dim, shape, is_int, vmin, vmax, err, sizeof err)) {
        nf_job_free(&j);
        cJSON_Delete(body);
        return fd_send_error(r, 422, "invalid_input", NULL, "%s", err);
    }
    int init_version = 0; /* a warm start: checked here, pinned in the stored request */
    if (fd_job_init_or_reply(r, db, &j, dim, shape, is_int, vmin, vmax, &init_version)) {
        nf_job_free(&j);
        cJSON_Delete(body);
        return MHD_YES;
    }
    /* stored: the parsed request printed compactly (no padding; a job
     * carries no data rows, only a dataset's id or a generator's name), so
     * a row is the size of its fields whatever the body's size, and
     * listing jobs parses small texts */
    cJSON *in = cJSON_GetObjectItemCaseSensitive(body, "init");
    if (init_version > 0 && cJSON_IsObject(in)) {
        cJSON_DeleteItemFromObjectCaseSensitive(in, "version");
        cJSON_AddNumberToObject(in, "version", init_version);
    }
    char *stored = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (!stored) {
        nf_job_free(&j);
        return fd_send_db_error(r, FD_ENOMEM, "out of memory printing the job");
    }
    int64_t id = 0;
    int existed = 0;
    rc = fd_db_job_create(db, j.submission_id[0] ? j.submission_id : NULL, j.model, stored, &id,
                          &existed, err, sizeof err);
    free(stored);
    nf_job_free(&j);
    if (rc) return fd_send_db_error(r, rc, err);
    if (!existed && r->srv->jobs) fd_jobs_notify(r->srv->jobs);
    cJSON *job = NULL;
    if ((rc = fd_db_job_get(db, id, &job, err, sizeof err))) return fd_send_db_error(r, rc, err);
    cJSON *o = cJSON_CreateObject();
    char ids[32], loc[64];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    snprintf(loc, sizeof loc, "/v1/jobs/%lld", (long long)id);
    cJSON_AddStringToObject(o, "id", ids);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(job, "state");
    cJSON_AddStringToObject(o, "state", cJSON_IsString(st) ? st->valuestring : "queued");
    if (existed) cJSON_AddBoolToObject(o, "duplicate", 1);
    cJSON_Delete(job);
    return fd_send_json_at(r, 202, o, loc);
}

/* progress with every field of the contract present (null when unknown) */
static void fill_progress(cJSON *job) {
    cJSON *p = cJSON_GetObjectItemCaseSensitive(job, "progress");
    if (!cJSON_IsObject(p)) {
        cJSON_DeleteItemFromObjectCaseSensitive(job, "progress");
        p = cJSON_AddObjectToObject(job, "progress");
    }
    static const char *const keys[] = {"epoch", "epochs", "step", "train_loss", "val_loss",
                                       "best_val_loss", "lr", "samples_per_second", "eta_seconds"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!cJSON_GetObjectItemCaseSensitive(p, keys[i])) {
            if (i == 0 || i == 2) cJSON_AddNumberToObject(p, keys[i], 0);
            else cJSON_AddNullToObject(p, keys[i]);
        }
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(p, "epochs");
    if (cJSON_IsNull(ep)) { /* before the first report: from the request */
        const cJSON *rq = cJSON_GetObjectItemCaseSensitive(job, "request");
        const cJSON *tr = rq ? cJSON_GetObjectItemCaseSensitive(rq, "train") : NULL;
        const cJSON *e = tr ? cJSON_GetObjectItemCaseSensitive(tr, "epochs") : NULL;
        cJSON_ReplaceItemInObjectCaseSensitive(p, "epochs", cJSON_CreateNumber(cJSON_IsNumber(e) ? e->valuedouble : 100));
    }
}

enum MHD_Result fd_api_jobs_list(fd_req *r, char **a) {
    (void)a;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    const char *state = fd_req_query(r, "state"), *tok = fd_req_query(r, "page_token");
    static const char *const states[] = {"queued", "running", "succeeded", "failed", "cancelled"};
    if (state) {
        int ok = 0;
        for (int i = 0; i < 5; i++) ok |= !strcmp(state, states[i]);
        if (!ok)
            return fd_send_error(r, 400, "invalid_argument", NULL,
                                 "state must be queued, running, succeeded, failed or cancelled");
    }
    int64_t page = 0;
    if (tok && *tok && parse_id(tok, &page))
        return fd_send_error(r, 400, "invalid_argument", NULL, "bad page_token");
    int limit;
    if (fd_query_int_or_reply(r, "limit", 50, 1, 1000, &limit)) return MHD_YES;
    cJSON *out = NULL;
    int64_t next = 0;
    char err[300] = "";
    int rc = fd_db_jobs_list(db, state, page, limit, &out, &next, err, sizeof err);
    if (rc) return fd_send_db_error(r, rc, err);
    cJSON *e, *jobs = cJSON_GetObjectItemCaseSensitive(out, "jobs");
    cJSON_ArrayForEach(e, jobs) {
        fill_progress(e);
        cJSON_DeleteItemFromObjectCaseSensitive(e, "request");
    }
    if (next) {
        char t[32];
        snprintf(t, sizeof t, "%lld", (long long)next);
        cJSON_AddStringToObject(out, "next_page_token", t);
    }
    return fd_send_json(r, 200, out);
}

static int job_id_or_404(fd_req *r, const char *s, int64_t *id) {
    if (parse_id(s, id)) {
        fd_send_error(r, 404, "not_found", NULL, "no job %s", s);
        return -1;
    }
    return 0;
}

enum MHD_Result fd_api_job_get(fd_req *r, char **a) {
    int64_t id;
    if (job_id_or_404(r, a[0], &id)) return MHD_YES;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *out = NULL;
    char err[300] = "";
    int rc = fd_db_job_get(db, id, &out, err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no job %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    fill_progress(out);
    return fd_send_json(r, 200, out);
}

enum MHD_Result fd_api_job_metrics(fd_req *r, char **a) {
    int64_t id;
    if (job_id_or_404(r, a[0], &id)) return MHD_YES;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    int64_t after;
    int limit;
    if (fd_query_i64_or_reply(r, "after_step", -1, -1, INT64_MAX, &after) ||
        fd_query_int_or_reply(r, "limit", 1000, 1, 10000, &limit))
        return MHD_YES;
    cJSON *job = NULL, *out = NULL;
    char err[300] = "";
    int rc = fd_db_job_get(db, id, &job, err, sizeof err);
    cJSON_Delete(job);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no job %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    if ((rc = fd_db_job_metrics(db, id, after, limit, &out, err, sizeof err))) return fd_send_db_error(r, rc, err);
    return fd_send_json(r, 200, out);
}

enum MHD_Result fd_api_job_cancel(fd_req *r, char **a) {
    int64_t id;
    if (job_id_or_404(r, a[0], &id)) return MHD_YES;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    char err[300] = "";
    int rc = fd_db_job_cancel(db, id, err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no job %s", a[0]);
    if (rc == FD_ECONFLICT) return fd_send_error(r, 409, "conflict", NULL, "job %s has already finished", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    if (r->srv->jobs) fd_jobs_cancel(r->srv->jobs, id);
    cJSON *job = NULL, *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", a[0]);
    if (fd_db_job_get(db, id, &job, err, sizeof err) == 0) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(job, "state");
        cJSON_AddStringToObject(o, "state", cJSON_IsString(st) ? st->valuestring : "running");
        cJSON_AddBoolToObject(o, "cancel_requested", 1);
    }
    cJSON_Delete(job);
    return fd_send_json(r, 202, o);
}

/* ---- events -------------------------------------------------------------------------------- */
static atomic_int streams;
#define FD_MAX_STREAMS 64

typedef struct stream {
    fd_db *db;
    int64_t id, after;
    char *pend;
    size_t plen, poff;
    int final_sent, done;
    double last_send;
    char client[72];   /* its slot of the client's streams */
} stream;

static void stream_free(void *p) {
    stream *s = p;
    fd_stream_client_give(s->client);
    fd_db_close(s->db);
    free(s->pend);
    free(s);
    atomic_fetch_sub(&streams, 1);
}

/* SSE_RETRY_MS: the reconnection delay the stream asks of clients (its
 * first line, `retry:`); a reconnecting client sends the last `id:` it saw
 * (a progress event's step) as Last-Event-ID and the stream resumes after
 * that step. */
#define SSE_RETRY_MS 2000

/* queues one event: event, id (a step; < -1: no id line) and data */
static void stream_append(stream *s, const char *event, int64_t id, cJSON *data) {
    char *d = cJSON_PrintUnformatted(data);
    if (!d) return;
    size_t need = strlen(event) + strlen(d) + 64, have = s->plen - s->poff;
    char *p = malloc(have + need);
    if (!p) {
        free(d);
        return;
    }
    memcpy(p, s->pend ? s->pend + s->poff : "", have);
    int k = id >= -1 ? snprintf(p + have, need, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)id, event, d)
                     : snprintf(p + have, need, "event: %s\ndata: %s\n\n", event, d);
    free(d);
    free(s->pend);
    s->pend = p;
    s->plen = have + (size_t)k;
    s->poff = 0;
}

/* the stream's reader (fd_send_event_stream): pending events, else one poll */
static ssize_t stream_read(void *cls, char *buf, size_t max) {
    stream *s = cls;
    char err[200];
    do { /* one poll when nothing is pending */
        if (s->poff != s->plen) break;
        if (s->done) return FD_STREAM_END;
        if (fd_streams_stopping()) return FD_STREAM_END; /* the daemon drains */
        cJSON *m = NULL, *e;
        if (fd_db_job_metrics(s->db, s->id, s->after, 100, &m, err, sizeof err) == 0) {
            cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(m, "metrics")) {
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "step");
                stream_append(s, "progress", cJSON_IsNumber(st) ? (int64_t)st->valuedouble : -2, e);
                if (cJSON_IsNumber(st) && st->valuedouble > s->after) s->after = (int64_t)st->valuedouble;
            }
        }
        cJSON_Delete(m);
        if (s->poff < s->plen) break;
        cJSON *job = NULL;
        if (fd_db_job_get(s->db, s->id, &job, err, sizeof err) == 0) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(job, "state");
            const char *sv = cJSON_IsString(st) ? st->valuestring : "";
            if (strcmp(sv, "queued") && strcmp(sv, "running")) {
                cJSON_DeleteItemFromObjectCaseSensitive(job, "request");
                stream_append(s, "state", -2, job);
                s->done = 1;
            }
        } else {
            s->done = 1;
        }
        cJSON_Delete(job);
        if (s->poff < s->plen) break;
        if (s->poff == s->plen && fd_now() - s->last_send > 5) { /* keep-alive */
            cJSON *ping = cJSON_CreateObject();
            stream_append(s, "ping", -2, ping);
            cJSON_Delete(ping);
        }
    } while (0);
    size_t n = s->plen - s->poff;
    if (n == 0) return FD_STREAM_WAIT; /* parked until the next round */
    if (n > max) n = max;
    memcpy(buf, s->pend + s->poff, n);
    s->poff += n;
    s->last_send = fd_now();
    return (ssize_t)n;
}

enum MHD_Result fd_api_job_events(fd_req *r, char **a) {
    int64_t id;
    if (job_id_or_404(r, a[0], &id)) return MHD_YES;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *job = NULL;
    char err[300] = "";
    int rc = fd_db_job_get(db, id, &job, err, sizeof err);
    cJSON_Delete(job);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no job %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    int cap = FD_MAX_STREAMS;
    if (atomic_fetch_add(&streams, 1) >= cap) {
        atomic_fetch_sub(&streams, 1);
        return fd_send_error(r, 503, "overloaded", NULL, "too many event streams open (%d); poll GET /v1/jobs/%s instead", cap, a[0]);
    }
    char client[72];
    if (fd_stream_client_take(r, client)) {
        atomic_fetch_sub(&streams, 1);
        return fd_send_error(r, 503, "overloaded", NULL,
                             "this client has %d event streams open (--max-streams-per-client); poll GET "
                             "/v1/jobs/%s instead", r->srv->cfg.max_streams_per_client, a[0]);
    }
    stream *s = calloc(1, sizeof *s);
    if (!s || fd_db_open(r->srv->cfg.db_path, &s->db, err, sizeof err)) {
        free(s);
        fd_stream_client_give(client);
        atomic_fetch_sub(&streams, 1);
        return fd_send_error(r, 500, "internal", NULL, "cannot open the event stream");
    }
    memcpy(s->client, client, sizeof client);
    s->id = id;
    s->after = -1;
    if (fd_query_i64_or_reply(r, "after_step", -1, -1, INT64_MAX, &s->after)) {
        stream_free(s);
        return MHD_YES;
    }
    /* a reconnect: resume after the last event the client saw */
    const char *last = fd_req_header(r, "Last-Event-ID");
    int64_t seen;
    if (last && *last) {
        if (nf_parse_i64(last, -1, INT64_MAX, &seen)) {
            stream_free(s);
            return fd_send_error(r, 400, "invalid_argument", NULL,
                                 "Last-Event-ID must be a step this stream sent (an integer), got %.60s", last);
        }
        if (seen > s->after) s->after = seen;
    }
    char retry[32];
    int k = snprintf(retry, sizeof retry, "retry: %d\n\n", SSE_RETRY_MS);
    if (!(s->pend = malloc((size_t)k + 1))) {
        stream_free(s);
        return fd_send_error(r, 500, "internal", NULL, "out of memory");
    }
    memcpy(s->pend, retry, (size_t)k + 1);
    s->plen = (size_t)k;
    s->last_send = fd_now();
    return fd_send_event_stream(r, stream_read, s, stream_free);
}

/* ---- datasets ---------------------------------------------------------------------------------- */
enum MHD_Result fd_api_datasets_create(fd_req *r, char **a) {
    (void)a;
    const char *name = fd_req_query(r, "name");
    if (!name || !nf_valid_name(name))
        return fd_send_error(r, 400, "invalid_argument", NULL,
                             "?name= is required: 1-64 characters of A-Z a-z 0-9 . _ -");
    const char *ct = fd_req_header(r, "Content-Type");
    nf_data_format fmt;
    const char *fname;
    if (!ct) {
        return fd_send_error(r, 415, "unsupported_media_type", NULL,
                             "the upload has no Content-Type: send text/csv, application/x-npy, application/json, "
                             "application/x-idx, or application/octet-stream (detected)");
    } else if (!strncasecmp(ct, "application/octet-stream", 24) || !strncasecmp(ct, "application/gzip", 16)) {
        fmt = NF_DATA_AUTO;
    } else if (!strncasecmp(ct, "text/csv", 8)) {
        fmt = NF_DATA_CSV;
    } else if (!strncasecmp(ct, "application/x-npy", 17)) {
        fmt = NF_DATA_NPY;
    } else if (!strncasecmp(ct, "application/json", 16)) {
        fmt = NF_DATA_JSON;
    } else if (!strncasecmp(ct, "application/x-idx", 17)) {
        fmt = NF_DATA_IDX;
    } else {
        return fd_send_error(r, 415, "unsupported_media_type", NULL,
                             "datasets are text/csv, application/x-npy, application/json, application/x-idx "
                             "or application/octet-stream (detected); got %s", ct);
    }
    int shape[3]; /* ?shape=C,H,W: the image shape of a row, for formats that cannot say it */
    if (fd_query_shape_or_reply(r, "shape", shape)) return MHD_YES;
    if (!r->len) return fd_send_error(r, 422, "invalid_input", NULL, "the body is empty");
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    nf_data d = {0};
    char err[400] = "";
    const fd_config *cfg = &r->srv->cfg;
    nf_data_limits lim = {.max_inflate = cfg->max_inflate, .max_ratio = (unsigned)cfg->max_inflate_ratio,
                          .max_memory = cfg->max_request_memory > r->len ? cfg->max_request_memory - r->len : 1,
                          .reserve = fd_req_reserve_cb, .reserve_ctx = r};
    int rc = nf_data_load_limited(r->body, r->len, fmt, &lim, &d, err, sizeof err);
    if (rc && lim.exceeded == NF_DATA_LIMIT_BUDGET) return fd_send_budget_error(r, lim.cost);
    if (rc && lim.exceeded) return fd_send_limit_error(r, &lim, err);
    if (rc) return fd_send_error(r, 422, "invalid_input", NULL, "%s", err);
    if (shape[0]) { /* declared: overrides the file's own, and must hold one row */
        int64_t p = (int64_t)shape[0] * shape[1];
        if (p <= d.d) p *= shape[2];
        if (p != d.d) {
            cJSON *det = cJSON_CreateObject();
            cJSON_AddItemToObject(det, "shape", cJSON_CreateIntArray(shape, 3));
            cJSON_AddNumberToObject(det, "dim", d.d);
            enum MHD_Result ret = fd_send_error(
                r, 422, "invalid_input", det,
                "?shape=%d,%d,%d holds %.0f values a row, but the rows have %d values (dim %d)",
                shape[0], shape[1], shape[2], (double)shape[0] * shape[1] * shape[2], d.d, d.d);
            nf_data_free(&d);
            return ret;
        }
        memcpy(d.shape, shape, sizeof d.shape);
    }
    fname = nf_data_format_name(fmt == NF_DATA_AUTO ? nf_data_detect(r->body, r->len) : fmt);
    char sha[65];
    fd_sha256_hex(r->body, r->len, sha);
    float *rows = (float *)d.x;
#ifdef NF_DOUBLE
#error "the daemon is built in float32"
#endif
    cJSON *out = NULL;
    rc = fd_db_dataset_add(db, name, fname, d.n, d.d, d.shape, d.is_integer, d.vmin, d.vmax, sha, rows, &out, err, sizeof err);
    nf_data_free(&d);
    if (rc) return fd_send_db_error(r, rc, err);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(out, "id");
    char loc[96];
    snprintf(loc, sizeof loc, "/v1/datasets/%s", cJSON_IsString(id) ? id->valuestring : "");
    return fd_send_json_at(r, 201, out, loc);
}

enum MHD_Result fd_api_datasets_list(fd_req *r, char **a) {
    (void)a;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *out = NULL;
    char err[300] = "";
    int rc = fd_db_datasets_list(db, &out, err, sizeof err);
    if (rc) return fd_send_db_error(r, rc, err);
    return fd_send_json(r, 200, out);
}

enum MHD_Result fd_api_dataset_get(fd_req *r, char **a) {
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *out = NULL;
    char err[300] = "";
    int rc = fd_db_dataset_get(db, a[0], &out, err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no dataset %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    return fd_send_json(r, 200, out);
}

enum MHD_Result fd_api_dataset_delete(fd_req *r, char **a) {
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    char err[300] = "";
    int rc = fd_db_dataset_delete(db, a[0], err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no dataset %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    return fd_send_bytes(r, 204, NULL, NULL, 0);
}
