/* api_models.c: /v1/models routes: list, get, delete, log_prob, sample,
 * encode, decode, checkpoint download.
 *
 * Scoring runs on the request thread with a thread-local workspace per
 * loaded model (WS_ROWS rows; larger requests are processed in chunks of
 * that size by the core).  Bodies are JSON, or for log_prob also text/csv
 * and application/x-npy; responses follow Accept the same way.  Float
 * arrays are printed with %.9g, enough to round-trip float32 exactly.
 * sample also answers `Accept: image/png` with the picture of the samples,
 * a tile grid of the model's image shape (common/picture.h); a model
 * without one (2-D or tabular rows) has no picture answer: 406.  (Its
 * scatter plot or legacy square grid is drawn from the samples by `flowd
 * sample` and `flowctl sample`.) */
#include "server.h"
#include "stream.h"

#include "../common/picture.h"
#include "../core/data.h"
#include "../core/npy.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define WS_ROWS 256
#define MAX_VALUES (16 * 1024 * 1024) /* rows x dim per request */
#define MAX_PICTURE_PIXELS (16 * 1024 * 1024) /* an image/png sample answer: 4096 x 4096 */

/* ---- thread-local workspaces ------------------------------------------------- */
typedef struct {
    struct { uint64_t uid; nf_ws *ws; uint64_t used; } s[4];
    uint64_t tick;
} ws_cache;

static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
static void ws_cache_free(void *p) {
    ws_cache *c = p;
    for (int i = 0; i < 4; i++) nf_ws_free(c->s[i].ws);
    free(c);
}
static void ws_key_init(void) { pthread_key_create(&ws_key, ws_cache_free); }

/* a workspace for m on this thread (NULL when out of memory) */
static nf_ws *get_ws(fd_model *m) {
    pthread_once(&ws_once, ws_key_init);
    ws_cache *c = pthread_getspecific(ws_key);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c) return NULL;
        pthread_setspecific(ws_key, c);
    }
    int lru = 0;
    for (int i = 0; i < 4; i++) {
        if (c->s[i].ws && c->s[i].uid == m->uid) {
            c->s[i].used = ++c->tick;
            return c->s[i].ws;
        }
        if (c->s[i].used < c->s[lru].used) lru = i;
    }
    nf_ws_free(c->s[lru].ws);
    c->s[lru].ws = NULL;
    if (nf_model_ws_create(m->m, WS_ROWS, &c->s[lru].ws)) return NULL;
    c->s[lru].uid = m->uid;
    c->s[lru].used = ++c->tick;
    return c->s[lru].ws;
}

/* ---- helpers ---------------------------------------------------------------------- */
typedef enum { FMT_JSON, FMT_CSV, FMT_NPY } fmt;

static fmt accept_fmt(fd_req *r) {
    const char *a = fd_req_header(r, "Accept");
    if (a && strstr(a, "text/csv")) return FMT_CSV;
    if (a && strstr(a, "application/x-npy")) return FMT_NPY;
    return FMT_JSON;
}

/* Accept asks for a PNG picture (sample only) */
static int accept_png(fd_req *r) {
    const char *a = fd_req_header(r, "Accept");
    return a && strcasestr(a, "image/png") != NULL;
}

static int body_fmt(fd_req *r, fmt *out) {
    const char *ct = fd_req_header(r, "Content-Type");
    if (!ct || !strncasecmp(ct, "application/json", 16) ||
        !strncasecmp(ct, "application/x-www-form-urlencoded", 33)) *out = FMT_JSON;
    else if (!strncasecmp(ct, "text/csv", 8)) *out = FMT_CSV;
    else if (!strncasecmp(ct, "application/x-npy", 17) || !strncasecmp(ct, "application/octet-stream", 24)) *out = FMT_NPY;
    else return -1;
    return 0;
}

/* "[v,v,...]" with %.9g; non-finite as null */
static cJSON *raw_floats(const nf_real *v, size_t n) {
    size_t cap = n * 16 + 3, k = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[k++] = '[';
    for (size_t i = 0; i < n; i++) {
        if (i) s[k++] = ',';
        if (isfinite(v[i])) k += (size_t)snprintf(s + k, cap - k, "%.9g", (double)v[i]);
        else k += (size_t)snprintf(s + k, cap - k, "null");
    }
    s[k++] = ']';
    s[k] = 0;
    cJSON *o = cJSON_CreateRaw(s);
    free(s);
    return o;
}

/* The model named in the path at the version given (0 = latest); sends the
 * error itself and returns NULL on failure. */
static fd_model *load_model(fd_req *r, const char *name, int version) {
    fd_db *db = fd_req_db(r);
    if (!db) return NULL;
    fd_model *m = NULL;
    char err[300] = "";
    int rc = fd_cache_get(r->srv->cache, db, name, version, &m, err, sizeof err);
    if (rc == FD_ENOTFOUND) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "model", name);
        if (version) cJSON_AddNumberToObject(d, "version", version);
        fd_send_error(r, 404, "not_found", d, version ? "model %s has no version %d" : "no model named %s",
                      name, version);
        return NULL;
    }
    if (rc) {
        fd_send_db_error(r, rc, err);
        return NULL;
    }
    return m;
}

fd_model *fd_model_or_reply(fd_req *r, const char *name, int version) {
    return load_model(r, name, version);
}

/* Parse a JSON array of rows of width D into a new (n,D) buffer.  Sends 422
 * (with the row and column) itself and returns NULL on failure. */
static nf_real *json_rows(fd_req *r, const cJSON *arr, const char *field, int D, int *n_out,
                          int max_rows) {
    if (!cJSON_IsArray(arr)) {
        fd_send_error(r, 422, "invalid_input", NULL, "\"%s\" must be a list of rows", field);
        return NULL;
    }
    int n = cJSON_GetArraySize(arr);
    if (n < 1 || n > max_rows || (size_t)n * D > MAX_VALUES) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "rows", n);
        cJSON_AddNumberToObject(d, "max_rows", max_rows);
        fd_send_error(r, 422, "invalid_input", d, n < 1 ? "\"%s\" has no rows" : "\"%s\" has too many rows", field);
        return NULL;
    }
    nf_real *x = malloc((size_t)n * D * sizeof *x);
    if (!x) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        return NULL;
    }
    int i = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, arr) {
        int w = cJSON_IsArray(row) ? cJSON_GetArraySize(row) : -1;
        if (w != D) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "row", i);
            cJSON_AddNumberToObject(d, "expected_width", D);
            if (w >= 0) cJSON_AddNumberToObject(d, "width", w);
            free(x);
            fd_send_error(r, 422, "invalid_input", d, w < 0 ? "%s row %d is not a list" : "%s row %d has %d values; the model takes %d",
                          field, i, w, D);
            return NULL;
        }
        int j = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, row) {
            if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || fabs(e->valuedouble) > 3.4e38) {
                cJSON *d = cJSON_CreateObject();
                cJSON_AddNumberToObject(d, "row", i);
                cJSON_AddNumberToObject(d, "column", j);
                free(x);
                fd_send_error(r, 422, "invalid_input", d, "%s row %d column %d is not a finite number", field, i, j);
                return NULL;
            }
            x[(size_t)i * D + j++] = (nf_real)e->valuedouble;
        }
        i++;
    }
    *n_out = n;
    return x;
}

/* The one-hot contexts of n class labels for a model trained on labels
 * ("labels": one integer for every row, or a list of n): 0 and *ctx
 * (malloc'd), or -1 after sending the error. */
static int json_labels(fd_req *r, const cJSON *lb, const nf_model *m, int n, nf_real **ctx) {
    int K = m->context.classes;
    if (m->context.kind != NF_CTX_LABELS) {
        fd_send_error(r, 422, "invalid_input", NULL,
                      "this model was not trained on class labels: give \"context\" rows");
        return -1;
    }
    int list = cJSON_IsArray(lb);
    if (list && cJSON_GetArraySize(lb) != n) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "labels", cJSON_GetArraySize(lb));
        cJSON_AddNumberToObject(d, "rows", n);
        fd_send_error(r, 422, "invalid_input", d, "\"labels\" has %d labels for %d rows",
                      cJSON_GetArraySize(lb), n);
        return -1;
    }
    nf_real *buf = malloc((size_t)n * K * sizeof *buf);
    if (!buf) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    for (int i = 0; i < n; i++) {
        const cJSON *e = list ? cJSON_GetArrayItem(lb, i) : lb;
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < K) ||
            e->valuedouble != floor(e->valuedouble)) {
            cJSON *d = cJSON_CreateObject();
            if (list) cJSON_AddNumberToObject(d, "row", i);
            cJSON_AddNumberToObject(d, "classes", K);
            free(buf);
            fd_send_error(r, 422, "invalid_input", d, "\"labels\"%s must be a class, an integer in [0, %d)",
                          list ? " entries" : "", K);
            return -1;
        }
        nf_context_onehot(K, (int)e->valuedouble, buf + (size_t)i * K);
    }
    *ctx = buf;
    return 0;
}

/* context rows for n inputs: absent (model C must be 0), one row (applied to
 * all), or n rows; or, for a model trained on class labels, "labels".
 * Returns 0 and *ctx (malloc'd or NULL), or -1 after sending an error. */
static int json_context(fd_req *r, const cJSON *body, const nf_model *mm, int n, nf_real **ctx) {
    int C = nf_flow_context_dim(mm->flow);
    *ctx = NULL;
    if ((size_t)n * C > MAX_VALUES) { /* the contexts of every row, one-hot labels included */
        fd_send_error(r, 422, "invalid_input", NULL, "rows x context_dim = %zu values exceeds the "
                      "limit of %d per request", (size_t)n * C, MAX_VALUES);
        return -1;
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(body, "context");
    const cJSON *lb = nf_json_get(body, "labels");
    if (lb && c && !cJSON_IsNull(c)) {
        fd_send_error(r, 422, "invalid_input", NULL, "give \"context\" or \"labels\", not both");
        return -1;
    }
    if (lb) return json_labels(r, lb, mm, n, ctx);
    if (!c || cJSON_IsNull(c)) {
        if (C > 0 && mm->context.kind == NF_CTX_LABELS)
            fd_send_error(r, 422, "invalid_input", NULL, "this model is conditional: \"labels\" "
                          "(classes 0 to %d) or \"context\" (width %d) is required",
                          mm->context.classes - 1, C);
        else if (C > 0)
            fd_send_error(r, 422, "invalid_input", NULL, "this model is conditional: \"context\" (width %d) is required", C);
        if (C > 0) return -1;
        return 0;
    }
    if (C == 0) {
        fd_send_error(r, 422, "invalid_input", NULL, "this model takes no \"context\"");
        return -1;
    }
    nf_real *buf = malloc((size_t)n * C * sizeof *buf);
    if (!buf) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    const cJSON *first = cJSON_GetArrayItem(c, 0);
    if (cJSON_IsArray(c) && first && cJSON_IsNumber(first)) { /* one vector for all rows */
        int m = 0;
        cJSON *wrap = cJSON_CreateArray();
        cJSON_AddItemReferenceToArray(wrap, (cJSON *)c);
        nf_real *v = json_rows(r, wrap, "context", C, &m, 1);
        cJSON_Delete(wrap);
        if (!v) {
            free(buf);
            return -1;
        }
        for (int i = 0; i < n; i++) memcpy(buf + (size_t)i * C, v, (size_t)C * sizeof *v);
        free(v);
    } else {
        int m = 0;
        nf_real *v = json_rows(r, c, "context", C, &m, n);
        if (!v) {
            free(buf);
            return -1;
        }
        if (m != n) {
            free(v);
            free(buf);
            fd_send_error(r, 422, "invalid_input", NULL, "\"context\" has %d rows for %d inputs", m, n);
            return -1;
        }
        memcpy(buf, v, (size_t)n * C * sizeof *v);
        free(v);
    }
    *ctx = buf;
    return 0;
}

/* A CSV or .npy body of rows.  A conditional model's rows have its training
 * data's layout: x and the context columns (or the class label) in one row,
 * where the model's preprocess.context puts them (docs/conditional.md); an
 * unconditional model's rows are its D values.  0 with x (n, D) and ctx
 * (n, C) (NULL when C == 0) malloc'd, or -1 after sending a 422. */
static int tabular_rows(fd_req *r, fmt in, const nf_model *mm, nf_real **x, nf_real **ctx, int *n) {
    const int D = nf_flow_dim(mm->flow), C = nf_flow_context_dim(mm->flow);
    *x = *ctx = NULL;
    int W = C > 0 ? mm->context.width : D;
    if (C > 0 && mm->context.kind == NF_CTX_NONE) { /* over NF_CTX_MAX_COLUMNS: no layout */
        fd_send_error(r, 422, "invalid_input", NULL, "this model's %d context columns have no "
                      "row layout: send JSON with \"context\"", C);
        return -1;
    }
    nf_data dat = {0};
    char err[300] = "";
    int rc = in == FMT_CSV ? nf_data_load_csv(r->body ? r->body : "", r->len, &dat, err, sizeof err)
                           : nf_data_load_npy(r->body ? r->body : "", r->len, &dat, err, sizeof err);
    if (rc) return fd_send_error(r, 422, "invalid_input", NULL, "%s", err), -1;
    if (dat.d != W || dat.n > r->srv->cfg.max_rows) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "expected_width", W);
        cJSON_AddNumberToObject(d, "width", dat.d);
        cJSON_AddNumberToObject(d, "max_rows", r->srv->cfg.max_rows);
        if (dat.d != W && C)
            fd_send_error(r, 422, "invalid_input", d, "rows have %d values; the model takes %d (its "
                          "data and context columns, as trained)", dat.d, W);
        else if (dat.d != W)
            fd_send_error(r, 422, "invalid_input", d, "rows have %d values; the model takes %d", dat.d, W);
        else
            fd_send_error(r, 422, "invalid_input", d, "too many rows (%d > %d)", (int)dat.n,
                          r->srv->cfg.max_rows);
        nf_data_free(&dat);
        return -1;
    }
    *n = (int)dat.n;
    if (!C) {
        *x = dat.x; /* take ownership */
        return 0;
    }
    if ((size_t)*n * C > MAX_VALUES) {
        nf_data_free(&dat);
        fd_send_error(r, 422, "invalid_input", NULL, "rows x context_dim = %zu values exceeds the "
                      "limit of %d per request", (size_t)*n * C, MAX_VALUES);
        return -1;
    }
    *x = malloc((size_t)*n * D * sizeof **x);
    *ctx = malloc((size_t)*n * C * sizeof **ctx);
    char e2[200] = "";
    int64_t bad = -1;
    int src = !*x || !*ctx ? NF_ENOMEM : nf_context_split(&mm->context, dat.x, *n, *x, *ctx, &bad, e2, sizeof e2);
    nf_data_free(&dat);
    if (src) {
        free(*x);
        free(*ctx);
        *x = *ctx = NULL;
    }
    if (src == NF_ENOMEM) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    if (src) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "row", (double)bad);
        cJSON_AddNumberToObject(d, "column", mm->context.cols[0]);
        fd_send_error(r, 422, "invalid_input", d, "%s", e2);
        return -1;
    }
    return 0;
}

/* ---- list / get / delete ------------------------------------------------------------- */
enum MHD_Result fd_api_models_list(fd_req *r, char **a) {
    (void)a;
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *out = NULL;
    char err[300] = "";
    int rc = fd_db_models_list(db, &out, err, sizeof err);
    if (rc) return fd_send_db_error(r, rc, err);
    return fd_send_json(r, 200, out);
}

enum MHD_Result fd_api_model_get(fd_req *r, char **a) {
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    cJSON *out = NULL;
    char err[300] = "";
    int rc = fd_db_model_get(db, a[0], &out, err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no model named %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    /* KServe v1's "ready": the latest version loads (and is now cached) */
    fd_model *m = NULL;
    int ready = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(out, "latest_version")) &&
                fd_cache_get(r->srv->cache, db, a[0], 0, &m, err, sizeof err) == 0;
    fd_model_release(m);
    cJSON_AddBoolToObject(out, "ready", ready);
    return fd_send_json(r, 200, out);
}

enum MHD_Result fd_api_model_delete(fd_req *r, char **a) {
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    char err[300] = "";
    int rc = fd_db_model_delete(db, a[0], err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no model named %s", a[0]);
    if (rc) return fd_send_db_error(r, rc, err);
    fd_cache_evict(r->srv->cache, a[0]);
    return fd_send_bytes(r, 204, NULL, NULL, 0);
}

enum MHD_Result fd_api_checkpoint(fd_req *r, char **a) {
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    int vi;
    if (fd_path_version_or_reply(r, a[0], a[1], &vi)) return MHD_YES;
    long v = vi;
    void *buf = NULL;
    size_t len = 0;
    int got = 0;
    char err[300] = "";
    int rc = fd_db_version_get(db, a[0], (int)v, &buf, &len, &got, err, sizeof err);
    if (rc == FD_ENOTFOUND)
        return fd_send_error(r, 404, "not_found", NULL, "model %s has no version %ld", a[0], v);
    if (rc) return fd_send_db_error(r, rc, err);
    char fname[128];
    snprintf(fname, sizeof fname, "%s-v%ld.flow", a[0], v);
    return fd_send_download(r, "application/octet-stream", buf, len, fname);
}

/* ---- continuous flows ------------------------------------------------------------------------
 * Every answer of a model with cnf layers says which trace scored it
 * ("trace": "exact", or "hutchinson" above dim 64: log p is then an
 * unbiased estimate, and "likelihood" says so).  A solve past its
 * max_steps is the input's doing (rows far from the data make the ODE
 * stiff): 422 naming max_steps. */
static void add_trace(cJSON *o, const nf_flow *f) {
    if (nf_flow_num_ode(f)) cJSON_AddStringToObject(o, "trace", nf_flow_log_prob_exact(f) ? "exact" : "hutchinson");
}

static enum MHD_Result send_solve_error(fd_req *r, int rc, const char *what) {
    if (rc == NF_ESTEPS) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "max_steps");
        return fd_send_error(r, 422, "invalid_input", d,
                             "%s: the ODE solver passed the model's max_steps on these rows (stiff "
                             "dynamics, often rows far from the training data); score fewer or "
                             "nearer rows, or retrain with a larger max_steps or looser rtol/atol",
                             what);
    }
    return fd_send_error(r, 500, "internal", NULL, "%s failed: %s", what, nf_strerror(rc));
}

/* ---- log_prob ------------------------------------------------------------------------------ */
nf_real *fd_log_prob_or_reply(fd_req *r, fd_model *m, const nf_real *x, const nf_real *ctx, int n,
                              int K) {
    nf_ws *w = get_ws(m);
    nf_real *lp = malloc((size_t)n * sizeof *lp);
    if (!w || !lp) {
        free(lp);
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        return NULL;
    }
    int rc = nf_model_log_prob_iw(m->m, w, x, ctx, n, K, lp);
    if (rc) {
        free(lp);
        send_solve_error(r, rc, "scoring");
        return NULL;
    }
    fd_metrics_rows(r->srv->metrics, n, 0);
    return lp;
}

enum MHD_Result fd_api_log_prob(fd_req *r, char **a) {
    fmt in;
    if (body_fmt(r, &in))
        return fd_send_error(r, 415, "unsupported_media_type", NULL,
                             "log_prob takes application/json, text/csv or application/x-npy");
    cJSON *body = NULL;
    nf_real *x = NULL, *ctx = NULL, *lp = NULL;
    int n = 0, version = 0, bpd = 0, K = 1;
    fd_model *m = NULL;
    enum MHD_Result ret = MHD_YES;
    if (in == FMT_JSON) {
        if (!(body = fd_req_json(r))) return MHD_YES;
        static const char *const keys[] = {"inputs", "context", "labels", "version", "bits_per_dim",
                                           "samples", NULL};
        if (fd_body_keys_or_reply(r, body, keys) ||
            fd_body_version_or_reply(r, body, a[0], &version) ||
            fd_body_bool_or_reply(r, body, "bits_per_dim", 0, &bpd) ||
            fd_body_int_or_reply(r, body, "samples", 1, 1, NF_MODEL_MAX_IW_SAMPLES, &K))
            goto out;
    } else {
        if (fd_query_bool_or_reply(r, "bits_per_dim", 0, &bpd) ||
            fd_query_version_or_reply(r, a[0], &version) ||
            fd_query_int_or_reply(r, "samples", 1, 1, NF_MODEL_MAX_IW_SAMPLES, &K))
            goto out;
    }
    if (!(m = load_model(r, a[0], version))) goto out;
    fd_req_inference(r, m, FD_OP_LOG_PROB);
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f);
    if (in == FMT_JSON) {
        if (!(x = json_rows(r, cJSON_GetObjectItemCaseSensitive(body, "inputs"), "inputs", D, &n, r->srv->cfg.max_rows)))
            goto out;
        if (json_context(r, body, m->m, n, &ctx)) goto out;
    } else if (tabular_rows(r, in, m->m, &x, &ctx, &n)) {
        goto out;
    }
    if (!(lp = fd_log_prob_or_reply(r, m, x, ctx, n, K))) goto out;
    fmt outf = accept_fmt(r);
    if (outf == FMT_CSV || outf == FMT_NPY) {
        size_t len = 0;
        char *b = outf == FMT_CSV ? nf_data_csv(lp, n, 1, "log_prob", &len) : nf_npy_f32(lp, n, 0, &len);
        if (!b) fd_send_error(r, 500, "internal", NULL, "out of memory");
        else ret = fd_send_bytes(r, 200, outf == FMT_CSV ? "text/csv" : "application/x-npy", b, len);
        goto out;
    }
    cJSON *o = cJSON_CreateObject(), *oos = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "model", m->name);
    cJSON_AddNumberToObject(o, "version", m->version);
    cJSON_AddItemToObject(o, "log_prob", raw_floats(lp, (size_t)n));
    for (int i = 0; i < n; i++)
        if (!isfinite(lp[i])) cJSON_AddItemToArray(oos, cJSON_CreateNumber(i));
    if (bpd) {
        for (int i = 0; i < n; i++) lp[i] = (nf_real)(-(double)lp[i] / (D * 0.6931471805599453));
        cJSON_AddItemToObject(o, "bits_per_dim", raw_floats(lp, (size_t)n));
    }
    if (cJSON_GetArraySize(oos)) cJSON_AddItemToObject(o, "out_of_support", oos);
    else cJSON_Delete(oos);
    if (m->m->dequantize) {
        cJSON_AddStringToObject(o, "likelihood", "dequantized_lower_bound");
        cJSON_AddNumberToObject(o, "samples", K);
    } else if (!nf_flow_log_prob_exact(f)) cJSON_AddStringToObject(o, "likelihood", "hutchinson_estimate");
    add_trace(o, f);
    ret = fd_send_json(r, 200, o);
out:
    cJSON_Delete(body);
    free(x);
    free(ctx);
    free(lp);
    fd_model_release(m);
    return ret;
}

/* ---- sample ------------------------------------------------------------------------------------- */
/* Before sampling, for Accept: image/png: 406 for a model without an image
 * shape (its rows have no picture form), 422 for a grid over
 * MAX_PICTURE_PIXELS (too many samples for one picture).  0, or -1 after
 * sending the error. */
static int picture_or_reply(fd_req *r, const fd_model *m, int n, int cols, int D, const int shape[3]) {
    int gs[3], w = 0, h = 0, ch = 1;
    if (!shape[0] || fdpic_picture_kind(D, shape, gs) != 2) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "dim", D);
        fd_send_error(r, 406, "not_acceptable", d,
                      "model %s has no picture form: its %d-dim rows have no image shape, and image/png "
                      "answers are grids of images; ask for application/json, text/csv or "
                      "application/x-npy",
                      m->name, D);
        return -1;
    }
    if (fdpic_grid_size_cols(n, cols, gs, &w, &h, &ch) || (int64_t)w * h > MAX_PICTURE_PIXELS) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "n", n);
        cJSON_AddNumberToObject(d, "max_pixels", MAX_PICTURE_PIXELS);
        fd_send_error(r, 422, "invalid_input", d,
                      "%d samples of %dx%dx%d make a picture over %d pixels: ask for fewer samples", n,
                      gs[0], gs[1], gs[2], MAX_PICTURE_PIXELS);
        return -1;
    }
    return 0;
}

/* The picture of the samples x (n, D) as image/png: a dequantized pixel
 * model's values floored and clamped to 0..levels-1, other models' scaled
 * from the samples' own finite range. */
static enum MHD_Result send_picture(fd_req *r, const fd_model *m, const nf_real *x, int n, int cols,
                                    int D, const int shape[3]) {
    unsigned char *pix = NULL;
    void *png = NULL;
    size_t len = 0;
    int w, h, ch, dq = m->m->dequantize;
    char err[300] = "";
    int rc = fdpic_render_samples_cols(x, n, cols, D, shape, dq, 0, dq ? m->m->levels - 1 : 1, dq, 1,
                                       &pix, &w, &h, &ch, err, sizeof err);
    if (!rc) rc = fdpic_png_encode(w, h, ch, pix, &png, &len);
    free(pix);
    if (rc) return fd_send_error(r, 500, "internal", NULL, "cannot draw the picture: %s", err[0] ? err : nf_strerror(rc));
    return fd_send_bytes(r, 200, "image/png", png, len);
}

/* "classes" of a sample request: a list of 1..NF_CTX_MAX_CLASSES classes
 * of a model trained on labels, n samples of each.  0 and *out (malloc'd,
 * *nc entries), or -1 after sending the error. */
static int json_classes(fd_req *r, const cJSON *cl, const nf_model *mm, int **out, int *nc) {
    *out = NULL;
    *nc = 0;
    if (mm->context.kind != NF_CTX_LABELS) {
        fd_send_error(r, 422, "invalid_input", NULL, "\"classes\" needs a model trained on class labels");
        return -1;
    }
    int k = cJSON_IsArray(cl) ? cJSON_GetArraySize(cl) : 0, K = mm->context.classes;
    if (k < 1 || k > NF_CTX_MAX_CLASSES) {
        fd_send_error(r, 422, "invalid_input", NULL, "\"classes\" must be a list of 1 to %d classes",
                      NF_CTX_MAX_CLASSES);
        return -1;
    }
    int *v = malloc((size_t)k * sizeof *v);
    if (!v) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    for (int i = 0; i < k; i++) {
        const cJSON *e = cJSON_GetArrayItem(cl, i);
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < K) ||
            e->valuedouble != floor(e->valuedouble)) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "index", i);
            cJSON_AddNumberToObject(d, "classes", K);
            free(v);
            fd_send_error(r, 422, "invalid_input", d, "\"classes\" entry %d is not a class in [0, %d)", i, K);
            return -1;
        }
        v[i] = (int)e->valuedouble;
    }
    *out = v;
    *nc = k;
    return 0;
}

enum MHD_Result fd_api_sample(fd_req *r, char **a) {
    cJSON *body = fd_req_json(r);
    if (!body) return MHD_YES;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    nf_real *x = NULL, *lp = NULL, *ctx = NULL;
    int *cls = NULL, ncls = 0;
    static const char *const keys[] = {"n", "temperature", "seed", "context", "labels", "classes",
                                       "version", "return_log_prob", NULL};
    int version, want_lp, n;
    double T;
    uint64_t seed;
    nf_rng g; /* absent seed: a fresh one, returned so the draw can be repeated */
    nf_rng_seed(&g, (uint64_t)(fd_now() * 1e9) ^ (uint64_t)(uintptr_t)r);
    if (fd_body_keys_or_reply(r, body, keys) ||
        fd_body_version_or_reply(r, body, a[0], &version) ||
        fd_body_bool_or_reply(r, body, "return_log_prob", 0, &want_lp) ||
        fd_body_count_or_reply(r, body, "n", r->srv->cfg.max_sample, &n) ||
        fd_body_num_or_reply(r, body, "temperature", 1, 0, 100, 1, &T) ||
        fd_body_seed_or_reply(r, body, "seed", nf_rng_u64(&g) >> 11, &seed))
        goto out;
    if (!(m = load_model(r, a[0], version))) goto out;
    fd_req_inference(r, m, FD_OP_SAMPLE);
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f), N = n, cols = 0;
    const cJSON *cj = nf_json_get(body, "classes");
    if (cj) { /* n samples of each class, one row of the picture per class */
        if (nf_json_get(body, "context") || nf_json_get(body, "labels")) {
            fd_send_error(r, 422, "invalid_input", NULL, "give \"classes\", \"labels\" or \"context\", not two");
            goto out;
        }
        if (json_classes(r, cj, m->m, &cls, &ncls)) goto out;
        if ((int64_t)n * ncls > r->srv->cfg.max_sample) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "max_n", r->srv->cfg.max_sample);
            fd_send_error(r, 422, "invalid_input", d, "n x classes = %lld samples exceeds the limit of %d",
                          (long long)n * ncls, r->srv->cfg.max_sample);
            goto out;
        }
        N = n * ncls;
        cols = n;
        if ((size_t)N * m->m->context.classes > MAX_VALUES) {
            fd_send_error(r, 422, "invalid_input", NULL, "samples x classes = %zu context values "
                          "exceeds the limit of %d per request",
                          (size_t)N * m->m->context.classes, MAX_VALUES);
            goto out;
        }
    }
    if ((size_t)N * D > MAX_VALUES) {
        fd_send_error(r, 422, "invalid_input", NULL, "n x dim = %zu values exceeds the limit of %d per request",
                      (size_t)N * D, MAX_VALUES);
        goto out;
    }
    int png = accept_png(r), shape[3];
    nf_flow_shape(f, shape);
    if (png && picture_or_reply(r, m, N, cols, D, shape)) goto out;
    if (cls) {
        int K = m->m->context.classes;
        if (!(ctx = malloc((size_t)N * K * sizeof *ctx))) {
            fd_send_error(r, 500, "internal", NULL, "out of memory");
            goto out;
        }
        for (int i = 0; i < N; i++) nf_context_onehot(K, cls[i / n], ctx + (size_t)i * K);
    } else if (json_context(r, body, m->m, n, &ctx)) {
        goto out;
    }
    /* the answer's numbers (and the .npy copy) come out of --max-memory;
     * the text is written as it is sent (server/stream.h) */
    fmt outf = accept_fmt(r);
    size_t need = (size_t)N * D * sizeof *x * (outf == FMT_NPY ? 2 : 1) +
                  (size_t)N * (want_lp ? sizeof *lp : 0) + (cls ? (size_t)N * sizeof(int) : 0);
    if (!png && fd_req_reserve(r, need)) {
        ret = fd_send_budget_error(r, need);
        goto out;
    }
    nf_ws *w = get_ws(m);
    x = malloc((size_t)N * D * sizeof *x);
    lp = want_lp ? malloc((size_t)N * sizeof *lp) : NULL;
    if (!w || !x || (want_lp && !lp)) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int rc = nf_flow_sample(f, w, N, T, seed, ctx, x, lp);
    if (rc) {
        send_solve_error(r, rc, "sampling");
        goto out;
    }
    fd_metrics_rows(r->srv->metrics, 0, N);
    if (png) {
        ret = send_picture(r, m, x, N, cols, D, shape);
        goto out;
    }
    if (outf == FMT_NPY) {
        size_t len = 0;
        char *b = nf_npy_f32(x, N, D, &len);
        if (!b) fd_send_error(r, 500, "internal", NULL, "out of memory");
        else ret = fd_send_bytes(r, 200, "application/x-npy", b, len);
        goto out;
    }
    if (outf == FMT_CSV) { /* header x0,x1,...: it reads back as a dataset or a log_prob body */
        fd_answer *ans = fd_answer_csv();
        fd_answer_reals(ans, NULL, x, (size_t)N, D);
        x = NULL;
        fd_answer_tail(ans, NULL);
        ret = fd_send_answer(r, 200, "text/csv", ans);
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", m->name);
    cJSON_AddNumberToObject(o, "version", m->version);
    fd_json_add_u64(o, "seed", seed);
    cJSON_AddNumberToObject(o, "temperature", T);
    fd_answer *ans = fd_answer_json(o);
    fd_answer_reals(ans, "samples", x, (size_t)N, D);
    x = NULL;
    if (cls) { /* each sample's class, in the order drawn */
        int *l = malloc((size_t)N * sizeof *l);
        for (int i = 0; l && i < N; i++) l[i] = cls[i / n];
        fd_answer_ints(ans, "labels", l, (size_t)N);
    }
    if (want_lp) {
        fd_answer_reals(ans, "log_prob", lp, (size_t)N, 0);
        lp = NULL;
    }
    cJSON *t = cJSON_CreateObject();
    if (want_lp) add_trace(t, f);
    fd_answer_tail(ans, t);
    ret = fd_send_answer(r, 200, "application/json", ans);
out:
    cJSON_Delete(body);
    free(x);
    free(lp);
    free(ctx);
    free(cls);
    fd_model_release(m);
    return ret;
}

/* ---- encode / decode ----------------------------------------------------------------------------------- */
/* encode (enc) or decode.  Bodies: JSON, or CSV / .npy rows (the context
 * in their last columns; the version as ?version=); Accept
 * application/x-npy answers one (n, D + 1) float32 array: the D output
 * columns, then log_det. */
static enum MHD_Result code(fd_req *r, char **a, int enc) {
    fmt in;
    if (body_fmt(r, &in))
        return fd_send_error(r, 415, "unsupported_media_type", NULL,
                             "%s takes application/json, text/csv or application/x-npy", enc ? "encode" : "decode");
    cJSON *body = NULL;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    nf_real *x = NULL, *y = NULL, *ld = NULL, *ctx = NULL;
    static const char *const ekeys[] = {"inputs", "context", "labels", "version", NULL};
    static const char *const dkeys[] = {"latents", "context", "labels", "version", NULL};
    int version, n = 0;
    if (in == FMT_JSON) {
        if (!(body = fd_req_json(r))) return MHD_YES;
        if (fd_body_keys_or_reply(r, body, enc ? ekeys : dkeys) ||
            fd_body_version_or_reply(r, body, a[0], &version))
            goto out;
    } else if (fd_query_version_or_reply(r, a[0], &version)) {
        goto out;
    }
    if (!(m = load_model(r, a[0], version))) goto out;
    fd_req_inference(r, m, enc ? FD_OP_ENCODE : FD_OP_DECODE);
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f);
    const char *field = enc ? "inputs" : "latents";
    if (in != FMT_JSON) {
        if (tabular_rows(r, in, m->m, &x, &ctx, &n)) goto out;
    } else {
        if (!(x = json_rows(r, cJSON_GetObjectItemCaseSensitive(body, field), field, D, &n, r->srv->cfg.max_rows)))
            goto out;
        if (json_context(r, body, m->m, n, &ctx)) goto out;
    }
    /* the answer's numbers (and the .npy copy) come out of --max-memory;
     * the text is written as it is sent (server/stream.h) */
    int npy = accept_fmt(r) == FMT_NPY;
    size_t need = (size_t)n * (D + 1) * sizeof *y * (npy ? 2 : 1) + (size_t)n * sizeof(int);
    if (fd_req_reserve(r, need)) {
        ret = fd_send_budget_error(r, need);
        goto out;
    }
    nf_ws *w = get_ws(m);
    y = malloc((size_t)n * D * sizeof *y);
    ld = malloc((size_t)n * sizeof *ld);
    if (!w || !y || !ld) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int rc = enc ? nf_flow_encode(f, w, x, ctx, n, y, ld) : nf_flow_decode(f, w, x, ctx, n, y, ld);
    if (rc && rc != NF_ENONFINITE) {
        send_solve_error(r, rc, enc ? "encode" : "decode");
        goto out;
    }
    if (npy) {
        nf_real *yl = malloc((size_t)n * (D + 1) * sizeof *yl);
        size_t len = 0;
        char *b = NULL;
        if (yl) {
            for (int i = 0; i < n; i++) {
                memcpy(yl + (size_t)i * (D + 1), y + (size_t)i * D, (size_t)D * sizeof *yl);
                yl[(size_t)i * (D + 1) + D] = ld[i];
            }
            b = nf_npy_f32(yl, n, D + 1, &len);
            free(yl);
        }
        if (!b) fd_send_error(r, 500, "internal", NULL, "out of memory");
        else ret = fd_send_bytes(r, 200, "application/x-npy", b, len);
        goto out;
    }
    int *oos = NULL, noos = 0; /* the rows out of the flow's support */
    if (rc == NF_ENONFINITE && (oos = malloc((size_t)n * sizeof *oos)))
        for (int i = 0; i < n; i++)
            if (!isfinite(ld[i])) oos[noos++] = i;
    if (rc == NF_ENONFINITE && !oos) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", m->name);
    cJSON_AddNumberToObject(o, "version", m->version);
    fd_answer *ans = fd_answer_json(o);
    fd_answer_reals(ans, enc ? "latents" : "outputs", y, (size_t)n, D);
    fd_answer_reals(ans, "log_det", ld, (size_t)n, 0);
    y = ld = NULL;
    cJSON *t = cJSON_CreateObject();
    add_trace(t, f);
    fd_answer_members(ans, t);
    if (rc == NF_ENONFINITE) fd_answer_ints(ans, "out_of_support", oos, (size_t)noos);
    fd_answer_tail(ans, NULL);
    ret = fd_send_answer(r, 200, "application/json", ans);
out:
    cJSON_Delete(body);
    free(x);
    free(y);
    free(ld);
    free(ctx);
    fd_model_release(m);
    return ret;
}

enum MHD_Result fd_api_encode(fd_req *r, char **a) { return code(r, a, 1); }
enum MHD_Result fd_api_decode(fd_req *r, char **a) { return code(r, a, 0); }

nf_ws *fd_model_ws(fd_model *m) { return get_ws(m); }
cJSON *fd_json_floats(const nf_real *v, size_t n) { return raw_floats(v, n); }

void fd_json_add_u64(cJSON *o, const char *key, uint64_t v) {
    char s[24];
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    cJSON_AddRawToObject(o, key, s);
}
