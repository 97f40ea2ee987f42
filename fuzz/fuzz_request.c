/* fuzz_request.c: the HTTP request-body validation of /v1/models/{name}/
 * log_prob, sample, encode and decode, the POST /v1/datasets body parse,
 * and the standard protocols' POST /v2/models/{name}/infer and
 * /v1/models/{name}:predict (server/api_v2.c).
 *
 * The handlers of server/api_models.c are compiled into this harness (their
 * helpers json_rows, json_context, ... are static) against stubs of the rest
 * of the daemon: no HTTP, no database; the model cache hands out one of two
 * small in-memory models (unconditional, and conditional with dequantization).
 * Each handler must send exactly one response, whatever the body.
 *
 * Input: byte 0 picks the route (mod 7: log_prob, sample, encode, decode,
 * datasets, v2 infer, predict), byte 1 the options (bits 0-1 Content-Type: JSON, none, CSV,
 * NPY; bit 2 the conditional model; bits 3-4 Accept: JSON, CSV, NPY, any;
 * for sample, bit 7 Accept: image/png; bits 5-7 the dataset format, mod 5;
 * for v2 infer and predict, bit 6 the /versions/1 path),
 * the rest is the body. */
#include "../server/api_models.c"
#include "../server/api_v2.c"
#include "../server/fields.c"
#include "../server/stream.c"
#include "../common/picture.c"

#include "fuzz.h"

#include <stdarg.h>

static int sends;  /* responses sent by the current request */
static fd_server srv;
static fd_model models[2];
static const char *content_type, *accept_type;

/* ---- stubs of the daemon ----------------------------------------------------- */
double fd_now(void) { return 1.0; }
void fd_metrics_rows(fd_metrics *m, int64_t scored, int64_t sampled) { (void)m, (void)scored, (void)sampled; }
void fd_req_inference(fd_req *r, const fd_model *m, fd_op op) { (void)r, (void)m, (void)op; }
fd_db *fd_req_db(fd_req *r) { return (fd_db *)r; } /* never dereferenced by the stubs */
const char *fd_req_query(fd_req *r, const char *key) { return NULL; }
const char *fd_req_header(fd_req *r, const char *key) {
    if (!strcmp(key, "Content-Type")) return content_type;
    if (!strcmp(key, "Accept")) return accept_type;
    return NULL;
}

enum MHD_Result fd_send_json(fd_req *r, int status, cJSON *body) {
    sends++;
    char *s = cJSON_PrintUnformatted(body);
    if (!s) abort();
    free(s);
    cJSON_Delete(body);
    return MHD_YES;
}
enum MHD_Result fd_send_bytes(fd_req *r, int status, const char *ct, void *buf, size_t len) {
    sends++;
    free(buf);
    return MHD_YES;
}
/* a streamed answer (server/stream.h): read to its end, in blocks of an
 * odd size; JSON must parse */
enum MHD_Result fd_send_answer(fd_req *r, int status, const char *ct, fd_answer *a) {
    sends++;
    if (!fd_answer_ok(a)) {
        fd_answer_free(a);
        return MHD_YES;
    }
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    ssize_t n;
    while (text && (n = fd_answer_read(a, text + len, cap - len - 1 < 777 ? cap - len - 1 : 777)) != FD_STREAM_END) {
        if (n <= 0) abort(); /* no progress */
        len += (size_t)n;
        if (cap - len < 1024) {
            char *t = realloc(text, cap *= 2);
            if (!t) break;
            text = t;
        }
    }
    fd_answer_free(a);
    if (text && !strcmp(ct, "application/json")) {
        text[len] = 0;
        cJSON *o = cJSON_ParseWithLength(text, len);
        if (!o || !cJSON_IsObject(o) || text[len - 1] != '\n') abort();
        cJSON_Delete(o);
    }
    free(text);
    return MHD_YES;
}
int fd_req_reserve(fd_req *r, size_t bytes) { return bytes > ((size_t)1 << 30) ? -1 : 0; }
enum MHD_Result fd_send_budget_error(fd_req *r, size_t bytes) {
    return fd_send_error(r, 413, "payload_too_large", NULL, "%zu bytes", bytes);
}
enum MHD_Result fd_send_error(fd_req *r, int status, const char *code, cJSON *details, const char *fmt, ...) {
    sends++;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (status < 400 || status > 599) abort();
    cJSON_Delete(details);
    return MHD_YES;
}
enum MHD_Result fd_send_db_error(fd_req *r, int rc, const char *err) {
    return fd_send_error(r, 500, "internal", NULL, "%s", err);
}
cJSON *fd_req_json(fd_req *r) { /* as server/http.c */
    const char *ct = content_type;
    if (r->len && (!ct || strncasecmp(ct, "application/json", 16) != 0)) {
        fd_send_error(r, 415, "unsupported_media_type", NULL, "expected JSON, got %s", ct ? ct : "none");
        return NULL;
    }
    cJSON *o = r->body ? cJSON_ParseWithLengthOpts(r->body, r->len, NULL, 0) : NULL;
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        fd_send_error(r, 400, "invalid_json", NULL, "the body is not a JSON object");
        return NULL;
    }
    return o;
}
int fd_cache_get(fd_cache *c, fd_db *db, const char *name, int version, fd_model **out, char *err,
                 size_t errlen) {
    if (version > 1) return FD_ENOTFOUND;
    *out = &models[strcmp(name, "cond") == 0];
    return 0;
}
void fd_model_release(fd_model *m) { (void)m; }
void fd_cache_evict(fd_cache *c, const char *name) { (void)c, (void)name; }
int fd_db_models_list(fd_db *db, cJSON **out, char *err, size_t errlen) { return FD_EDB; }
int fd_db_model_get(fd_db *db, const char *name, cJSON **out, char *err, size_t errlen) { return FD_EDB; }
int fd_db_model_delete(fd_db *db, const char *name, char *err, size_t errlen) { return FD_EDB; }
int fd_db_version_get(fd_db *db, const char *name, int version, void **buf, size_t *len, int *got,
                      char *err, size_t errlen) {
    return FD_EDB;
}

/* versions (api_lifecycle.c): numbers as the real ones; an alias never
 * resolves here (404), as for an unknown alias */
static int version_spec_reply(fd_req *r, const char *spec, int *version) {
    int64_t v;
    if (!nf_parse_i64(spec, 1, INT_MAX, &v)) {
        *version = (int)v;
        return 0;
    }
    fd_send_error(r, 404, "not_found", NULL, "no version or alias %s", spec);
    return -1;
}
int fd_body_version_or_reply(fd_req *r, const cJSON *body, const char *name, int *version) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "version");
    *version = 0;
    if (cJSON_IsString(v)) return version_spec_reply(r, v->valuestring, version);
    return fd_body_int_or_reply(r, body, "version", 0, 1, INT_MAX, version);
}
int fd_query_version_or_reply(fd_req *r, const char *name, int *version) {
    const char *q = fd_req_query(r, "version");
    *version = 0;
    return q ? version_spec_reply(r, q, version) : 0;
}
int fd_path_version_or_reply(fd_req *r, const char *name, const char *seg, int *version) {
    return version_spec_reply(r, seg, version);
}

/* ---- harness -------------------------------------------------------------------------- */
static void make_model(fd_model *m, const char *name, const char *spec, int dequantize) {
    char err[256] = "";
    nf_flow *f = NULL;
    if (nf_flow_create(spec, &f, err, sizeof err)) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        abort();
    }
    nf_flow_init(f, 3);
    m->m = calloc(1, sizeof *m->m);
    m->m->flow = f;
    m->m->header = cJSON_CreateObject();
    m->m->dequantize = dequantize;
    m->m->levels = 256;
    snprintf(m->name, sizeof m->name, "%s", name);
    m->version = 1;
    m->uid = (uint64_t)(m - models) + 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    srv.cfg.max_rows = 64;
    srv.cfg.max_sample = 64;
    make_model(&models[0], "plain",
               "{\"dim\":2,\"layers\":[{\"type\":\"actnorm\"},{\"type\":\"logit\"},"
               "{\"type\":\"affine_coupling\",\"hidden\":[4]}]}",
               0);
    make_model(&models[1], "cond",
               "{\"dim\":2,\"context_dim\":2,\"layers\":[{\"type\":\"affine_coupling\",\"hidden\":[4]},"
               "{\"type\":\"maf\",\"hidden\":[4]}]}",
               1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int route = data[0] % 7, opt = data[1];
    static const char *const cts[] = {"application/json", NULL, "text/csv", "application/x-npy"};
    static const char *const acc[] = {NULL, "text/csv", "application/x-npy", "*/*"};
    content_type = cts[opt & 3];
    accept_type = route == 1 && (opt & 0x80) ? "image/png" : acc[(opt >> 3) & 3];
    fd_req r;
    memset(&r, 0, sizeof r);
    r.srv = &srv;
    r.len = size - 2;
    r.body = fz_str(data + 2, r.len); /* the daemon NUL-terminates bodies too */
    char name[8];
    snprintf(name, sizeof name, "%s", opt & 4 ? "cond" : "plain");
    char one[] = "1";
    char *args[2] = {name, route >= 5 && (opt & 0x40) ? one : NULL};
    r.plain_errors = route >= 5;
    sends = 0;
    switch (route) {
    case 0: fd_api_log_prob(&r, args); break;
    case 1: fd_api_sample(&r, args); break;
    case 2: fd_api_encode(&r, args); break;
    case 3: fd_api_decode(&r, args); break;
    case 5: fd_api_v2_infer(&r, args); break;
    case 6: fd_api_v1_predict(&r, args); break;
    default: { /* POST /v1/datasets: the body parse */
        nf_data d;
        char err[400] = "";
        nf_data_format fmt = (nf_data_format)((opt >> 5) % NF_DATA_FORMAT_COUNT);
        int rc = nf_data_load(r.body, r.len, fmt, &d, err, sizeof err);
        fz_check_data(rc, &d, err);
        if (!rc && !nf_data_format_name(fmt == NF_DATA_AUTO ? nf_data_detect(r.body, r.len) : fmt))
            abort();
        nf_data_free(&d);
        sends = 1;
    }
    }
    if (sends != 1) {
        fprintf(stderr, "route %d sent %d responses\n", route, sends);
        abort();
    }
    free(r.body);
    return 0;
}
