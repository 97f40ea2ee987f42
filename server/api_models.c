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

/* [[row],[row],...] */
static cJSON *raw_rows(const nf_real *v, size_t n, int D) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++) {
        cJSON *row = raw_floats(v + i * D, (size_t)D);
        if (!row) {
            cJSON_Delete(a);
            return NULL;
        }
        cJSON_AddItemToArray(a, row);
    }
    return a;
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

/* context rows for n inputs: absent (model C must be 0), one row (applied to
 * all), or n rows.  Returns 0 and *ctx (malloc'd or NULL), or -1 after
 * sending an error. */
static int json_context(fd_req *r, const cJSON *body, int C, int n, nf_real **ctx) {
    *ctx = NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(body, "context");
    if (!c || cJSON_IsNull(c)) {
        if (C > 0) {
            fd_send_error(r, 422, "invalid_input", NULL, "this model is conditional: \"context\" (width %d) is required", C);
            return -1;
        }
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
enum MHD_Result fd_api_log_prob(fd_req *r, char **a) {
    fmt in;
    if (body_fmt(r, &in))
        return fd_send_error(r, 415, "unsupported_media_type", NULL,
                             "log_prob takes application/json, text/csv or application/x-npy");
    cJSON *body = NULL;
    nf_real *x = NULL, *ctx = NULL, *lp = NULL;
    int n = 0, version = 0, bpd = 0;
    fd_model *m = NULL;
    enum MHD_Result ret = MHD_YES;
    if (in == FMT_JSON) {
        if (!(body = fd_req_json(r))) return MHD_YES;
        static const char *const keys[] = {"inputs", "context", "version", "bits_per_dim", NULL};
        if (fd_body_keys_or_reply(r, body, keys) ||
            fd_body_version_or_reply(r, body, a[0], &version) ||
            fd_body_bool_or_reply(r, body, "bits_per_dim", 0, &bpd))
            goto out;
    } else {
        if (fd_query_bool_or_reply(r, "bits_per_dim", 0, &bpd) ||
            fd_query_version_or_reply(r, a[0], &version))
            goto out;
    }
    if (!(m = load_model(r, a[0], version))) goto out;
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    if (in == FMT_JSON) {
        if (!(x = json_rows(r, cJSON_GetObjectItemCaseSensitive(body, "inputs"), "inputs", D, &n, r->srv->cfg.max_rows)))
            goto out;
        if (json_context(r, body, C, n, &ctx)) goto out;
    } else {
        if (C > 0) {
            fd_send_error(r, 422, "invalid_input", NULL, "conditional models take JSON bodies (with \"context\")");
            goto out;
        }
        nf_data dat = {0};
        char err[300] = "";
        int rc = in == FMT_CSV ? nf_data_load_csv(r->body ? r->body : "", r->len, &dat, err, sizeof err)
                               : nf_data_load_npy(r->body ? r->body : "", r->len, &dat, err, sizeof err);
        if (rc) {
            fd_send_error(r, 422, "invalid_input", NULL, "%s", err);
            goto out;
        }
        if (dat.d != D || dat.n > r->srv->cfg.max_rows) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "expected_width", D);
            cJSON_AddNumberToObject(d, "width", dat.d);
            cJSON_AddNumberToObject(d, "max_rows", r->srv->cfg.max_rows);
            fd_send_error(r, 422, "invalid_input", d, dat.d != D ? "rows have %d values; the model takes %d"
                                                                 : "too many rows (%d > %d)", dat.d != D ? dat.d : (int)dat.n,
                          dat.d != D ? D : r->srv->cfg.max_rows);
            nf_data_free(&dat);
            goto out;
        }
        x = dat.x; /* take ownership */
        n = (int)dat.n;
    }
    nf_ws *w = get_ws(m);
    lp = malloc((size_t)n * sizeof *lp);
    if (!w || !lp) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int rc = nf_model_log_prob(m->m, w, x, ctx, n, lp);
    if (rc) {
        send_solve_error(r, rc, "scoring");
        goto out;
    }
    fd_metrics_rows(r->srv->metrics, n, 0);
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
    if (m->m->dequantize) cJSON_AddStringToObject(o, "likelihood", "dequantized_lower_bound");
    else if (!nf_flow_log_prob_exact(f)) cJSON_AddStringToObject(o, "likelihood", "hutchinson_estimate");
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
static int picture_or_reply(fd_req *r, const fd_model *m, int n, int D, const int shape[3]) {
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
    if (fdpic_grid_size(n, gs, &w, &h, &ch) || (int64_t)w * h > MAX_PICTURE_PIXELS) {
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
static enum MHD_Result send_picture(fd_req *r, const fd_model *m, const nf_real *x, int n, int D,
                                    const int shape[3]) {
    unsigned char *pix = NULL;
    void *png = NULL;
    size_t len = 0;
    int w, h, ch, dq = m->m->dequantize;
    char err[300] = "";
    int rc = fdpic_render_samples(x, n, D, shape, dq, 0, dq ? m->m->levels - 1 : 1, dq, 1, &pix, &w, &h,
                                  &ch, err, sizeof err);
    if (!rc) rc = fdpic_png_encode(w, h, ch, pix, &png, &len);
    free(pix);
    if (rc) return fd_send_error(r, 500, "internal", NULL, "cannot draw the picture: %s", err[0] ? err : nf_strerror(rc));
    return fd_send_bytes(r, 200, "image/png", png, len);
}

enum MHD_Result fd_api_sample(fd_req *r, char **a) {
    cJSON *body = fd_req_json(r);
    if (!body) return MHD_YES;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    nf_real *x = NULL, *lp = NULL, *ctx = NULL;
    static const char *const keys[] = {"n", "temperature", "seed", "context", "version", "return_log_prob", NULL};
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
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    if ((size_t)n * D > MAX_VALUES) {
        fd_send_error(r, 422, "invalid_input", NULL, "n x dim = %zu values exceeds the limit of %d per request",
                      (size_t)n * D, MAX_VALUES);
        goto out;
    }
    int png = accept_png(r), shape[3];
    nf_flow_shape(f, shape);
    if (png && picture_or_reply(r, m, n, D, shape)) goto out;
    if (json_context(r, body, C, n, &ctx)) goto out;
    nf_ws *w = get_ws(m);
    x = malloc((size_t)n * D * sizeof *x);
    lp = want_lp ? malloc((size_t)n * sizeof *lp) : NULL;
    if (!w || !x || (want_lp && !lp)) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int rc = nf_flow_sample(f, w, n, T, seed, ctx, x, lp);
    if (rc) {
        send_solve_error(r, rc, "sampling");
        goto out;
    }
    fd_metrics_rows(r->srv->metrics, 0, n);
    if (png) {
        ret = send_picture(r, m, x, n, D, shape);
        goto out;
    }
    fmt outf = accept_fmt(r);
    if (outf != FMT_JSON) {
        size_t len = 0;
        /* header x0,x1,...: the CSV reads back as a dataset or a log_prob body */
        char *b = outf == FMT_CSV ? nf_data_csv(x, n, D, NULL, &len) : nf_npy_f32(x, n, D, &len);
        if (!b) fd_send_error(r, 500, "internal", NULL, "out of memory");
        else ret = fd_send_bytes(r, 200, outf == FMT_CSV ? "text/csv" : "application/x-npy", b, len);
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", m->name);
    cJSON_AddNumberToObject(o, "version", m->version);
    cJSON_AddNumberToObject(o, "seed", (double)seed);
    cJSON_AddNumberToObject(o, "temperature", T);
    cJSON_AddItemToObject(o, "samples", raw_rows(x, (size_t)n, D));
    if (want_lp) cJSON_AddItemToObject(o, "log_prob", raw_floats(lp, (size_t)n));
    if (want_lp) add_trace(o, f);
    ret = fd_send_json(r, 200, o);
out:
    cJSON_Delete(body);
    free(x);
    free(lp);
    free(ctx);
    fd_model_release(m);
    return ret;
}

/* ---- encode / decode ----------------------------------------------------------------------------------- */
static enum MHD_Result code(fd_req *r, char **a, int enc) {
    cJSON *body = fd_req_json(r);
    if (!body) return MHD_YES;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    nf_real *x = NULL, *y = NULL, *ld = NULL, *ctx = NULL;
    static const char *const ekeys[] = {"inputs", "context", "version", NULL};
    static const char *const dkeys[] = {"latents", "context", "version", NULL};
    int version, n = 0;
    if (fd_body_keys_or_reply(r, body, enc ? ekeys : dkeys) ||
        fd_body_version_or_reply(r, body, a[0], &version))
        goto out;
    if (!(m = load_model(r, a[0], version))) goto out;
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    const char *field = enc ? "inputs" : "latents";
    if (!(x = json_rows(r, cJSON_GetObjectItemCaseSensitive(body, field), field, D, &n, r->srv->cfg.max_rows)))
        goto out;
    if (json_context(r, body, C, n, &ctx)) goto out;
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
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", m->name);
    cJSON_AddNumberToObject(o, "version", m->version);
    cJSON_AddItemToObject(o, enc ? "latents" : "outputs", raw_rows(y, (size_t)n, D));
    cJSON_AddItemToObject(o, "log_det", raw_floats(ld, (size_t)n));
    add_trace(o, f);
    if (rc == NF_ENONFINITE) {
        cJSON *oos = cJSON_AddArrayToObject(o, "out_of_support");
        for (int i = 0; i < n; i++)
            if (!isfinite(ld[i])) cJSON_AddItemToArray(oos, cJSON_CreateNumber(i));
    }
    ret = fd_send_json(r, 200, o);
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
