/* api_v2.c: the standard inference protocols, over the same models, cache
 * and scopes as /v1 (docs/protocols.md):
 *
 *  - Open Inference Protocol v2 (KServe v2 / Triton REST):
 *      GET  /v2/health/live, /v2/health/ready, /v2 (server metadata)
 *      GET  /v2/models/{name}[/versions/{v}]          model metadata
 *      GET  /v2/models/{name}[/versions/{v}]/ready    model readiness
 *      POST /v2/models/{name}[/versions/{v}]/infer    JSON tensors
 *    A model takes input `x` FP32 [-1, D] (and `context` FP32 [-1, C] when
 *    conditional) and answers `log_prob` FP32 [-1].  parameters.op picks
 *    the operation: log_prob (default), sample (parameters n, seed,
 *    temperature; outputs `samples` [n, D] and on request `log_prob`),
 *    encode (x -> outputs `z`, `log_det`), decode (input `z` -> `x`,
 *    `log_det`).  Tensor data is row-major, flat or nested exactly as its
 *    shape; FP64 is taken too (numpy's default) and read as float32.
 *  - TF Serving / KServe v1: POST /v1/models/{name}[/versions/{v}]:predict
 *    with `instances` (rows, or objects {"x", "context"?}) or `inputs`
 *    (rows, or {"x", "context"?} columns), answering {"predictions":
 *    [log_prob...]}.
 *
 * Errors on these routes are the protocols' {"error": "message"} (http.c
 * sets r->plain_errors from the route table), and a 422 of the shared
 * helpers goes out as their 400.  Values that are not finite (a row outside
 * the support) are written as null, as on /v1; their row indices are in the
 * output's parameters.out_of_support. */
#include "server.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define V2_MAX_RANK 4
#define V2_MAX_VALUES (16 * 1024 * 1024) /* as /v1: rows x dim per request */

/* ---- health and server metadata ------------------------------------------------- */
enum MHD_Result fd_api_v2_live(fd_req *r, char **a) {
    (void)a;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "live", 1);
    return fd_send_json(r, 200, o);
}

/* ready: 200; not ready (starting, draining): the spec's "4xx means false",
 * 400 with {"ready": false} */
enum MHD_Result fd_api_v2_ready(fd_req *r, char **a) {
    (void)a;
    int ok = atomic_load(&r->srv->ready) && !atomic_load(&r->srv->draining);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ready", ok);
    return fd_send_json(r, ok ? 200 : 400, o);
}

enum MHD_Result fd_api_v2_server(fd_req *r, char **a) {
    (void)a;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", "flowd");
    cJSON_AddStringToObject(o, "version", FD_VERSION);
    cJSON_AddArrayToObject(o, "extensions");
    return fd_send_json(r, 200, o);
}

/* ---- models ------------------------------------------------------------------------ */
/* The version segment ("3"), or 0 (latest) when the row has none; -1 after
 * a 404 for one that is not a positive integer. */
static int version_arg(fd_req *r, char **a) {
    if (!a[1]) return 0;
    int64_t v;
    if (nf_parse_i64(a[1], 1, INT_MAX, &v)) {
        fd_send_error(r, 404, "not_found", NULL, "model %s has no version %s (versions are positive integers)",
                      a[0], a[1]);
        return -1;
    }
    return (int)v;
}

static cJSON *tensor_meta(const char *name, int64_t d0, int64_t d1, int rank) {
    cJSON *t = cJSON_CreateObject(), *sh;
    cJSON_AddStringToObject(t, "name", name);
    cJSON_AddStringToObject(t, "datatype", "FP32");
    sh = cJSON_AddArrayToObject(t, "shape");
    cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)d0));
    if (rank > 1) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)d1));
    return t;
}

/* the model's versions as strings, oldest first (the protocol's "versions") */
static cJSON *version_list(fd_req *r, const char *name) {
    cJSON *out = cJSON_CreateArray(), *m = NULL;
    char err[300] = "";
    fd_db *db = fd_req_db(r);
    if (db && fd_db_model_get(db, name, &m, err, sizeof err) == 0) {
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(m, "versions")) {
            char s[24];
            snprintf(s, sizeof s, "%d", (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v, "version")));
            cJSON_AddItemToArray(out, cJSON_CreateString(s));
        }
    }
    cJSON_Delete(m);
    return out;
}

enum MHD_Result fd_api_v2_model(fd_req *r, char **a) {
    int version = version_arg(r, a);
    if (version < 0) return MHD_YES;
    fd_model *m = fd_model_or_reply(r, a[0], version);
    if (!m) return MHD_YES;
    int D = nf_flow_dim(m->m->flow), C = nf_flow_context_dim(m->m->flow);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddItemToObject(o, "versions", version_list(r, m->name));
    cJSON_AddStringToObject(o, "platform", "flowd");
    cJSON *in = cJSON_AddArrayToObject(o, "inputs"), *out = cJSON_AddArrayToObject(o, "outputs");
    cJSON_AddItemToArray(in, tensor_meta("x", -1, D, 2));
    if (C) cJSON_AddItemToArray(in, tensor_meta("context", -1, C, 2));
    cJSON_AddItemToArray(out, tensor_meta("log_prob", -1, 0, 1));
    /* the other operations' tensors, for clients that look */
    cJSON *p = cJSON_AddObjectToObject(o, "parameters");
    char ver[24];
    snprintf(ver, sizeof ver, "%d", m->version);
    cJSON_AddStringToObject(p, "version", ver);
    cJSON_AddNumberToObject(p, "dim", D);
    cJSON_AddNumberToObject(p, "context_dim", C);
    cJSON *ops = cJSON_AddArrayToObject(p, "ops");
    static const char *const opnames[] = {"log_prob", "sample", "encode", "decode"};
    for (int i = 0; i < 4; i++) cJSON_AddItemToArray(ops, cJSON_CreateString(opnames[i]));
    fd_model_release(m);
    return fd_send_json(r, 200, o);
}

enum MHD_Result fd_api_v2_model_ready(fd_req *r, char **a) {
    int version = version_arg(r, a);
    if (version < 0) return MHD_YES;
    fd_model *m = fd_model_or_reply(r, a[0], version);
    if (!m) return MHD_YES;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddBoolToObject(o, "ready", 1);
    fd_model_release(m);
    return fd_send_json(r, 200, o);
}

/* the version segment and the JSON body of an infer or predict request;
 * NULL after sending the error */
static cJSON *versioned_body(fd_req *r, char **a, int *version) {
    if ((*version = version_arg(r, a)) < 0) return NULL;
    return fd_req_json(r);
}

/* ---- tensors ------------------------------------------------------------------------------ */
typedef struct {
    const char *name;
    int64_t shape[V2_MAX_RANK];
    int rank;
    nf_real *v;     /* (prod shape), malloc'd */
    size_t count;
} tensor;

/* Reads nested data exactly as shape[0..rank) into out at *k.  0, or -1
 * with a message. */
static int read_nested(const cJSON *a, const int64_t *shape, int rank, nf_real *out, size_t *k, char *msg,
                       size_t ml) {
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != shape[0]) {
        snprintf(msg, ml, "data does not match the shape: expected a list of %lld at element %zu",
                 (long long)shape[0], *k);
        return -1;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (rank > 1) {
            if (read_nested(e, shape + 1, rank - 1, out, k, msg, ml)) return -1;
            continue;
        }
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || fabs(e->valuedouble) > 3.4e38) {
            snprintf(msg, ml, "element %zu is not a finite FP32 number", *k);
            return -1;
        }
        out[(*k)++] = (nf_real)e->valuedouble;
    }
    return 0;
}

/* One request tensor {name, shape, datatype, data, parameters?}.  0, or -1
 * after sending a 400. */
static int read_tensor(fd_req *r, const cJSON *o, tensor *t) {
    static const char *const keys[] = {"name", "shape", "datatype", "data", "parameters", NULL};
    char err[300] = "";
    memset(t, 0, sizeof *t);
    if (!cJSON_IsObject(o)) return fd_send_error(r, 400, "invalid_input", NULL, "each input must be an object"), -1;
    t->name = nf_json_str(o, "name", NULL);
    if (!t->name) return fd_send_error(r, 400, "invalid_input", NULL, "an input has no \"name\" string"), -1;
    if (nf_json_check_keys(o, keys, err, sizeof err))
        return fd_send_error(r, 400, "invalid_input", NULL, "input %s: %s", t->name, err), -1;
    const char *dt = nf_json_str(o, "datatype", NULL);
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(o, "shape"), *data = nf_json_get(o, "data");
    if (!dt) return fd_send_error(r, 400, "invalid_input", NULL, "input %s has no \"datatype\" string", t->name), -1;
    static const char *const known[] = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                        "INT32", "INT64", "FP16", "BF16", "BYTES", NULL};
    if (strcmp(dt, "FP32") && strcmp(dt, "FP64")) {
        int k = 0;
        while (known[k] && strcmp(known[k], dt)) k++;
        return fd_send_error(r, 400, "invalid_input", NULL,
                             known[k] ? "input %s: datatype %s does not match the model's FP32 (FP64 is also taken)"
                                      : "input %s: unknown datatype %s (the model takes FP32)",
                             t->name, dt),
               -1;
    }
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) < 1 || cJSON_GetArraySize(sh) > V2_MAX_RANK)
        return fd_send_error(r, 400, "invalid_input", NULL, "input %s: \"shape\" must be a list of 1 to %d sizes",
                             t->name, V2_MAX_RANK),
               -1;
    size_t total = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        double v = cJSON_IsNumber(d) ? d->valuedouble : -1;
        if (v < 0 || v != floor(v) || v > V2_MAX_VALUES)
            return fd_send_error(r, 400, "invalid_input", NULL, "input %s: shape sizes are integers >= 0", t->name), -1;
        t->shape[t->rank++] = (int64_t)v;
        total *= (size_t)v;
        if (total > V2_MAX_VALUES)
            return fd_send_error(r, 400, "invalid_input", NULL, "input %s holds more than %d values", t->name,
                                 V2_MAX_VALUES),
                   -1;
    }
    if (!cJSON_IsArray(data))
        return fd_send_error(r, 400, "invalid_input", NULL, "input %s: \"data\" must be a list", t->name), -1;
    t->count = total;
    t->v = malloc((total ? total : 1) * sizeof *t->v);
    if (!t->v) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    size_t k = 0;
    int rc;
    const cJSON *first = data->child;
    if (t->rank > 1 && first && cJSON_IsArray(first)) {
        rc = read_nested(data, t->shape, t->rank, t->v, &k, err, sizeof err);
    } else { /* flat, row-major */
        int64_t flat = (int64_t)total;
        rc = cJSON_GetArraySize(data) == (int)total ? read_nested(data, &flat, 1, t->v, &k, err, sizeof err) : -1;
        if (rc && !*err)
            snprintf(err, sizeof err, "shape holds %zu values; data has %d", total, cJSON_GetArraySize(data));
    }
    if (rc) {
        free(t->v);
        t->v = NULL;
        return fd_send_error(r, 400, "invalid_input", NULL, "input %s: %s", t->name, err), -1;
    }
    return 0;
}

/* {name, datatype FP32, shape [n] or [n, d], data flat}; oos: out-of-support
 * row indices in parameters (rows whose value is not finite) */
static cJSON *out_tensor(const char *name, const nf_real *v, int n, int d, int rank) {
    cJSON *t = tensor_meta(name, n, d, rank);
    cJSON *data = fd_json_floats(v, (size_t)n * (rank > 1 ? d : 1));
    if (!data) {
        cJSON_Delete(t);
        return NULL;
    }
    cJSON_AddItemToObject(t, "data", data);
    cJSON *oos = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        int bad = 0;
        for (int j = 0; j < (rank > 1 ? d : 1); j++) bad |= !isfinite(v[(size_t)i * (rank > 1 ? d : 1) + j]);
        if (bad) cJSON_AddItemToArray(oos, cJSON_CreateNumber(i));
    }
    if (cJSON_GetArraySize(oos)) cJSON_AddItemToObject(cJSON_AddObjectToObject(t, "parameters"), "out_of_support", oos);
    else cJSON_Delete(oos);
    return t;
}

/* ---- infer ------------------------------------------------------------------------------- */
enum { OP_LOG_PROB, OP_SAMPLE, OP_ENCODE, OP_DECODE, OP_COUNT };
_Static_assert(OP_LOG_PROB == (int)FD_OP_LOG_PROB && OP_SAMPLE == (int)FD_OP_SAMPLE && OP_ENCODE == (int)FD_OP_ENCODE &&
                   OP_DECODE == (int)FD_OP_DECODE,
               "the v2 ops are the metrics' ops");
static const char *const op_names[OP_COUNT + 1] = {"log_prob", "sample", "encode", "decode", NULL};
/* per op: its main input, and its outputs (default: all but sample's log_prob) */
static const char *const op_input[OP_COUNT] = {"x", NULL, "x", "z"};
static const char *const op_outputs[OP_COUNT][3] = {
    {"log_prob", NULL}, {"samples", "log_prob", NULL}, {"z", "log_det", NULL}, {"x", "log_det", NULL}};

/* context rows for n inputs from tensor c (NULL: absent): [n, C], or one
 * vector [1, C] / [C] for every row.  0 and *ctx (malloc'd or NULL), or -1
 * after a 400. */
static int context_rows(fd_req *r, const tensor *c, int C, int n, nf_real **ctx) {
    *ctx = NULL;
    if (!c) {
        if (C) return fd_send_error(r, 400, "invalid_input", NULL, "this model is conditional: input \"context\" FP32 [-1, %d] is required", C), -1;
        return 0;
    }
    if (!C) return fd_send_error(r, 400, "invalid_input", NULL, "this model takes no input \"context\""), -1;
    int one = (c->rank == 1 && c->shape[0] == C) || (c->rank == 2 && c->shape[0] == 1 && c->shape[1] == C);
    if (!one && !(c->rank == 2 && c->shape[0] == n && c->shape[1] == C))
        return fd_send_error(r, 400, "invalid_input", NULL,
                             "input context: shape mismatch: expected [%d, %d] (or [1, %d]) for %d rows", n, C, C, n),
               -1;
    nf_real *b = malloc((size_t)n * C * sizeof *b);
    if (!b) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    for (int i = 0; i < n; i++) memcpy(b + (size_t)i * C, c->v + (one ? 0 : (size_t)i * C), (size_t)C * sizeof *b);
    *ctx = b;
    return 0;
}

/* the request's parameters: op, and sample's n, seed, temperature.  0, or
 * -1 after a 400. */
typedef struct {
    int op, n, has_n;
    double T;
    uint64_t seed;
} infer_params;

static int read_params(fd_req *r, const cJSON *p, infer_params *ip) {
    char err[300] = "";
    nf_rng g;
    nf_rng_seed(&g, (uint64_t)(fd_now() * 1e9) ^ (uint64_t)(uintptr_t)r);
    ip->has_n = nf_json_get(p, "n") != NULL;
    if (p && !cJSON_IsObject(p)) return fd_send_error(r, 400, "invalid_input", NULL, "\"parameters\" must be an object"), -1;
    if (nf_json_enum(p, "op", op_names, OP_LOG_PROB, &ip->op, err, sizeof err) ||
        nf_json_int(p, "n", 0, 1, r->srv->cfg.max_sample, &ip->n, err, sizeof err) ||
        nf_json_num_open(p, "temperature", 1, 0, 100, &ip->T, err, sizeof err) ||
        nf_json_seed(p, "seed", nf_rng_u64(&g) >> 11, &ip->seed, err, sizeof err))
        return fd_send_error(r, 400, "invalid_input", NULL, "parameters: %s", err), -1;
    return 0;
}

/* which outputs to answer (bit i: op_outputs[op][i]): the request's
 * "outputs" names, else the op's defaults.  -1 after a 400. */
static int wanted_outputs(fd_req *r, const cJSON *outs, int op) {
    if (!outs) return op == OP_SAMPLE ? 1 : 3;
    if (!cJSON_IsArray(outs)) return fd_send_error(r, 400, "invalid_input", NULL, "\"outputs\" must be a list"), -1;
    int mask = 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, outs) {
        static const char *const keys[] = {"name", "parameters", NULL};
        char err[200] = "";
        const char *name = nf_json_str(o, "name", NULL);
        if (!cJSON_IsObject(o) || !name || nf_json_check_keys(o, keys, err, sizeof err))
            return fd_send_error(r, 400, "invalid_input", NULL, "each requested output is {\"name\": ...}%s%s",
                                 *err ? ": " : "", err),
                   -1;
        int k = 0;
        while (op_outputs[op][k] && strcmp(op_outputs[op][k], name)) k++;
        if (!op_outputs[op][k])
            return fd_send_error(r, 400, "invalid_input", NULL, "op %s has no output %s", op_names[op], name), -1;
        mask |= 1 << k;
    }
    return mask;
}

enum MHD_Result fd_api_v2_infer(fd_req *r, char **a) {
    int version;
    cJSON *body = versioned_body(r, a, &version);
    if (!body) return MHD_YES;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    tensor in[2] = {{0}}; /* main input, context */
    nf_real *ctx = NULL, *y = NULL, *lp = NULL;
    char err[300] = "";
    static const char *const keys[] = {"id", "parameters", "inputs", "outputs", NULL};
    infer_params ip;
    const cJSON *id = nf_json_get(body, "id");
    if (nf_json_check_keys(body, keys, err, sizeof err)) {
        fd_send_error(r, 400, "invalid_input", NULL, "%s", err);
        goto out;
    }
    if (id && !cJSON_IsString(id)) {
        fd_send_error(r, 400, "invalid_input", NULL, "\"id\" must be a string");
        goto out;
    }
    if (read_params(r, nf_json_get(body, "parameters"), &ip)) goto out;
    int op = ip.op, mask = wanted_outputs(r, nf_json_get(body, "outputs"), op);
    if (mask < 0) goto out;
    const cJSON *inputs = nf_json_get(body, "inputs");
    if (!cJSON_IsArray(inputs)) {
        fd_send_error(r, 400, "invalid_input", NULL, "\"inputs\" must be a list of tensors");
        goto out;
    }
    if (!(m = fd_model_or_reply(r, a[0], version))) goto out;
    fd_req_inference(r, m, (fd_op)op); /* OP_* are FD_OP_* (asserted at their enum) */
    nf_flow *f = m->m->flow;
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    const cJSON *t;
    cJSON_ArrayForEach(t, inputs) {
        tensor tmp;
        if (read_tensor(r, t, &tmp)) goto out;
        int slot = op_input[op] && !strcmp(tmp.name, op_input[op]) ? 0 : !strcmp(tmp.name, "context") ? 1 : -1;
        if (slot < 0 || in[slot].v) {
            fd_send_error(r, 400, "invalid_input", NULL,
                          slot < 0 ? "op %s takes no input %s (inputs: %s%scontext)"
                                   : "op %s: input %s is given twice (inputs: %s%scontext)",
                          op_names[op], tmp.name, op_input[op] ? op_input[op] : "", op_input[op] ? ", " : "");
            free(tmp.v);
            goto out;
        }
        in[slot] = tmp;
    }
    int n;
    if (op == OP_SAMPLE) {
        n = ip.has_n ? ip.n : in[1].v && in[1].rank == 2 ? (int)in[1].shape[0] : 0;
        if (n < 1 || n > r->srv->cfg.max_sample || (size_t)n * D > V2_MAX_VALUES) {
            fd_send_error(r, 400, "invalid_input", NULL,
                          "sample: parameters.n (1 to %d, at most %d values) is required%s", r->srv->cfg.max_sample,
                          V2_MAX_VALUES, C ? " unless context gives one row per sample" : "");
            goto out;
        }
    } else {
        const tensor *x = &in[0];
        if (!x->v) {
            fd_send_error(r, 400, "invalid_input", NULL, "op %s needs input %s FP32 [-1, %d]", op_names[op], op_input[op], D);
            goto out;
        }
        if (x->rank != 2 || x->shape[1] != D || x->shape[0] < 1) {
            char got[96] = "[";
            for (int i = 0; i < x->rank; i++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)x->shape[i]);
            strcat(got, "]");
            fd_send_error(r, 400, "invalid_input", NULL, "input %s: shape mismatch: the model takes [-1, %d], got %s",
                          x->name, D, got);
            goto out;
        }
        n = (int)x->shape[0];
        if (n > r->srv->cfg.max_rows) {
            fd_send_error(r, 400, "invalid_input", NULL, "input %s has %d rows; the limit is %d", x->name, n,
                          r->srv->cfg.max_rows);
            goto out;
        }
    }
    if (context_rows(r, in[1].v ? &in[1] : NULL, C, n, &ctx)) goto out;
    /* the answer, from --max-memory before it is computed: its numbers
     * (n x (D + 1)) and their text as out_tensor prints it (%.9g, at most
     * 17 bytes a value) twice, in the tensor and in the printed document */
    size_t need = (size_t)n * (D + 1) * (sizeof *y + 2 * 17);
    if (fd_req_reserve(r, need)) {
        ret = fd_send_budget_error(r, need);
        goto out;
    }
    nf_ws *w = fd_model_ws(m);
    y = malloc((size_t)n * D * sizeof *y);
    lp = malloc((size_t)n * sizeof *lp);
    if (!w || !y || !lp) {
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    int rc;
    switch (op) {
    case OP_LOG_PROB: rc = nf_model_log_prob(m->m, w, in[0].v, ctx, n, lp); break;
    case OP_SAMPLE: rc = nf_flow_sample(f, w, n, ip.T, ip.seed, ctx, y, (mask & 2) ? lp : NULL); break;
    case OP_ENCODE: rc = nf_flow_encode(f, w, in[0].v, ctx, n, y, lp); break;
    default: rc = nf_flow_decode(f, w, in[0].v, ctx, n, y, lp); break;
    }
    if (rc && !(rc == NF_ENONFINITE && (op == OP_ENCODE || op == OP_DECODE))) {
        if (rc == NF_ESTEPS)
            fd_send_error(r, 400, "invalid_input", NULL,
                          "%s: the ODE solver passed the model's max_steps on these rows", op_names[op]);
        else
            fd_send_error(r, 500, "internal", NULL, "%s failed: %s", op_names[op], nf_strerror(rc));
        goto out;
    }
    fd_metrics_rows(r->srv->metrics, op == OP_LOG_PROB ? n : 0, op == OP_SAMPLE ? n : 0);
    cJSON *o = cJSON_CreateObject(), *outs;
    char ver[24];
    snprintf(ver, sizeof ver, "%d", m->version);
    cJSON_AddStringToObject(o, "model_name", m->name);
    cJSON_AddStringToObject(o, "model_version", ver);
    if (id) cJSON_AddStringToObject(o, "id", id->valuestring);
    cJSON *p = cJSON_AddObjectToObject(o, "parameters");
    cJSON_AddStringToObject(p, "op", op_names[op]);
    if (op == OP_SAMPLE) {
        fd_json_add_u64(p, "seed", ip.seed);
        cJSON_AddNumberToObject(p, "temperature", ip.T);
    }
    outs = cJSON_AddArrayToObject(o, "outputs");
    for (int k = 0; op_outputs[op][k]; k++) {
        if (!(mask & (1 << k))) continue;
        int rows = !strcmp(op_outputs[op][k], "log_prob") || !strcmp(op_outputs[op][k], "log_det") ? 0 : 1;
        cJSON *ot = rows ? out_tensor(op_outputs[op][k], y, n, D, 2) : out_tensor(op_outputs[op][k], lp, n, 0, 1);
        if (!ot) {
            cJSON_Delete(o);
            fd_send_error(r, 500, "internal", NULL, "out of memory");
            goto out;
        }
        cJSON_AddItemToArray(outs, ot);
    }
    ret = fd_send_json(r, 200, o);
out:
    cJSON_Delete(body);
    free(in[0].v);
    free(in[1].v);
    free(ctx);
    free(y);
    free(lp);
    fd_model_release(m);
    return ret;
}

/* ---- TF Serving / KServe v1 :predict ------------------------------------------------------- */
/* rows of width D from a JSON list (instances in row format, or the "x"
 * column), into x (n, D) malloc'd; context the same with width C.  0, or
 * -1 after a 400. */
static int predict_rows(fd_req *r, const cJSON *list, const char *what, int D, int max_rows, nf_real **x, int *n) {
    *x = NULL;
    int rows = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
    if (rows < 1 || rows > max_rows || (size_t)rows * D > V2_MAX_VALUES)
        return fd_send_error(r, 400, "invalid_input", NULL, "\"%s\" must be a list of 1 to %d rows", what, max_rows), -1;
    int64_t shape[2] = {rows, D};
    size_t k = 0;
    char err[200] = "";
    *x = malloc((size_t)rows * D * sizeof **x);
    if (!*x) return fd_send_error(r, 500, "internal", NULL, "out of memory"), -1;
    if (read_nested(list, shape, 2, *x, &k, err, sizeof err)) {
        free(*x);
        *x = NULL;
        return fd_send_error(r, 400, "invalid_input", NULL, "%s: rows of %d numbers expected: %s", what, D, err), -1;
    }
    *n = rows;
    return 0;
}

enum MHD_Result fd_api_v1_predict(fd_req *r, char **a) {
    int version;
    cJSON *body = versioned_body(r, a, &version);
    if (!body) return MHD_YES;
    enum MHD_Result ret = MHD_YES;
    fd_model *m = NULL;
    nf_real *x = NULL, *ctx = NULL, *lp = NULL, *cx = NULL;
    cJSON *xs = NULL, *cs = NULL; /* row lists gathered from instance objects */
    char err[300] = "";
    static const char *const keys[] = {"instances", "inputs", "signature_name", NULL};
    if (nf_json_check_keys(body, keys, err, sizeof err)) {
        fd_send_error(r, 400, "invalid_input", NULL, "%s", err);
        goto out;
    }
    const cJSON *inst = nf_json_get(body, "instances"), *cols = nf_json_get(body, "inputs");
    if (!inst == !cols) {
        fd_send_error(r, 400, "invalid_input", NULL, "give exactly one of \"instances\" (rows) and \"inputs\" (columns)");
        goto out;
    }
    if (!(m = fd_model_or_reply(r, a[0], version))) goto out;
    fd_req_inference(r, m, FD_OP_LOG_PROB);
    int D = nf_flow_dim(m->m->flow), C = nf_flow_context_dim(m->m->flow), n = 0, nc = 0;
    const cJSON *xl, *cl = NULL;
    if (inst && cJSON_IsObject(cJSON_GetArrayItem(inst, 0))) { /* [{"x": [...], "context": [...]}, ...] */
        xs = cJSON_CreateArray();
        cs = cJSON_CreateArray();
        const cJSON *e;
        cJSON_ArrayForEach(e, inst) {
            static const char *const ikeys[] = {"x", "context", NULL};
            if (nf_json_check_keys(e, ikeys, err, sizeof err) || !nf_json_get(e, "x")) {
                fd_send_error(r, 400, "invalid_input", NULL, "each instance is {\"x\": [...], \"context\"?: [...]}%s%s",
                              *err ? ": " : "", err);
                goto out;
            }
            cJSON_AddItemReferenceToArray(xs, cJSON_GetObjectItemCaseSensitive(e, "x"));
            if (nf_json_get(e, "context")) cJSON_AddItemReferenceToArray(cs, cJSON_GetObjectItemCaseSensitive(e, "context"));
        }
        xl = xs;
        cl = cJSON_GetArraySize(cs) ? cs : NULL;
    } else if (cols && cJSON_IsObject(cols)) { /* {"x": [[...]], "context": [[...]]} */
        static const char *const ckeys[] = {"x", "context", NULL};
        if (nf_json_check_keys(cols, ckeys, err, sizeof err)) {
            fd_send_error(r, 400, "invalid_input", NULL, "inputs: %s", err);
            goto out;
        }
        xl = nf_json_get(cols, "x");
        cl = nf_json_get(cols, "context");
    } else {
        xl = inst ? inst : cols;
    }
    if (predict_rows(r, xl, "x", D, r->srv->cfg.max_rows, &x, &n)) goto out;
    if (cl && !C) {
        fd_send_error(r, 400, "invalid_input", NULL, "this model takes no context");
        goto out;
    }
    if (C && !cl) {
        fd_send_error(r, 400, "invalid_input", NULL, "this model is conditional: give \"context\" (width %d) with each row", C);
        goto out;
    }
    if (cl) {
        if (predict_rows(r, cl, "context", C, r->srv->cfg.max_rows, &cx, &nc)) goto out;
        tensor ct = {.rank = 2, .shape = {nc, C}, .v = cx};
        if (context_rows(r, &ct, C, n, &ctx)) goto out;
    }
    if (!(lp = fd_log_prob_or_reply(r, m, x, ctx, n, 1))) goto out;
    cJSON *o = cJSON_CreateObject();
    cJSON *pred = fd_json_floats(lp, (size_t)n);
    if (!pred) {
        cJSON_Delete(o);
        fd_send_error(r, 500, "internal", NULL, "out of memory");
        goto out;
    }
    cJSON_AddItemToObject(o, "predictions", pred);
    ret = fd_send_json(r, 200, o);
out:
    cJSON_Delete(body);
    cJSON_Delete(xs);
    cJSON_Delete(cs);
    free(x);
    free(cx);
    free(ctx);
    free(lp);
    fd_model_release(m);
    return ret;
}
