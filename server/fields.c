/* fields.c: the field vocabulary of the HTTP handlers, one call per field:
 * core's getters (core/nf_json.h) for the value, then the reply when it is
 * wrong (a body field 422 invalid_input naming it, a query parameter 400
 * invalid_argument).  Apart from http.c so the request fuzzer
 * (fuzz/fuzz_request.c) compiles it with the handlers, against its stubs of
 * fd_send_error and fd_req_query. */
#include "server.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- validation: one call per field (core/nf_json.h, then the reply) ----------------
 * Each returns 0, or -1 after sending the error: 422 invalid_input naming
 * the field for a body field, 400 invalid_argument for a query parameter. */
static int field_reply(fd_req *r, int rc, const char *key, const char *err) {
    if (!rc) return 0;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "field", key);
    fd_send_error(r, 422, "invalid_input", d, "%s", err);
    return -1;
}

int fd_body_keys_or_reply(fd_req *r, const cJSON *body, const char *const *allowed) {
    char err[200] = "";
    if (!nf_json_check_keys(body, allowed, err, sizeof err)) return 0;
    fd_send_error(r, 422, "invalid_input", NULL, "%s", err);
    return -1;
}

int fd_body_int_or_reply(fd_req *r, const cJSON *body, const char *key, int def, int lo, int hi,
                         int *out) {
    char err[200] = "";
    return field_reply(r, nf_json_int(body, key, def, lo, hi, out, err, sizeof err), key, err);
}

int fd_body_count_or_reply(fd_req *r, const cJSON *body, const char *key, int max, int *out) {
    const cJSON *v = nf_json_get(body, key);
    if (v && cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= 1 &&
        v->valuedouble <= max) {
        *out = (int)v->valuedouble;
        return 0;
    }
    char mk[64];
    snprintf(mk, sizeof mk, "max_%s", key);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "field", key);
    cJSON_AddNumberToObject(d, mk, max);
    fd_send_error(r, 422, "invalid_input", d, "\"%s\" must be an integer from 1 to %d", key, max);
    return -1;
}

int fd_body_num_or_reply(fd_req *r, const cJSON *body, const char *key, double def, double lo,
                         double hi, int open_lo, double *out) {
    char err[200] = "";
    int rc = open_lo ? nf_json_num_open(body, key, def, lo, hi, out, err, sizeof err)
                     : nf_json_num(body, key, def, lo, hi, out, err, sizeof err);
    return field_reply(r, rc, key, err);
}

int fd_body_seed_or_reply(fd_req *r, const cJSON *body, const char *key, uint64_t def,
                          uint64_t *out) {
    char err[200] = "";
    return field_reply(r, nf_json_seed(body, key, def, out, err, sizeof err), key, err);
}

int fd_body_bool_or_reply(fd_req *r, const cJSON *body, const char *key, int def, int *out) {
    char err[200] = "";
    return field_reply(r, nf_json_bool(body, key, def, out, err, sizeof err), key, err);
}

int fd_query_i64_or_reply(fd_req *r, const char *key, int64_t def, int64_t lo, int64_t hi,
                          int64_t *out) {
    const char *q = fd_req_query(r, key);
    if (!q) {
        *out = def;
        return 0;
    }
    if (!nf_parse_i64(q, lo, hi, out)) return 0;
    fd_send_error(r, 400, "invalid_argument", NULL, "%s must be an integer in %lld..%lld", key,
                  (long long)lo, (long long)hi);
    return -1;
}

int fd_query_int_or_reply(fd_req *r, const char *key, int def, int lo, int hi, int *out) {
    int64_t v;
    if (fd_query_i64_or_reply(r, key, def, lo, hi, &v)) return -1;
    *out = (int)v;
    return 0;
}

int fd_query_shape_or_reply(fd_req *r, const char *key, int shape[3]) {
    const char *q = fd_req_query(r, key);
    shape[0] = shape[1] = shape[2] = 0;
    if (!q) return 0;
    char buf[64];
    int k = 0, ok = strlen(q) < sizeof buf;
    if (ok) {
        snprintf(buf, sizeof buf, "%s", q);
        char *save = NULL;
        for (char *t = strtok_r(buf, ",", &save); t && ok; t = strtok_r(NULL, ",", &save)) {
            int64_t v;
            if (k >= 3 || nf_parse_i64(t, 1, INT32_MAX, &v)) ok = 0;
            else shape[k++] = (int)v;
        }
    }
    if (ok && k == 3 && q[strlen(q) - 1] != ',' && !strstr(q, ",,")) return 0;
    shape[0] = shape[1] = shape[2] = 0;
    fd_send_error(r, 400, "invalid_argument", NULL,
                  "%s must be three positive integers C,H,W (channels, height, width), e.g. 1,28,28", key);
    return -1;
}

int fd_query_bool_or_reply(fd_req *r, const char *key, int def, int *out) {
    const char *q = fd_req_query(r, key);
    if (!q) {
        *out = def;
        return 0;
    }
    if (!nf_parse_bool(q, out)) return 0;
    fd_send_error(r, 400, "invalid_argument", NULL, "%s must be true, false, 1 or 0", key);
    return -1;
}
