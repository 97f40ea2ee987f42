/* test_v2.c: the standard inference protocols of server/api_v2.c, written
 * from the Open Inference Protocol v2 REST specification (KServe v2 /
 * Triton) and TF Serving's predict API, against the real daemon:
 *  - v2_health_and_metadata: live/ready answer 200 with {"live"|"ready":
 *    true}; server metadata {name, version, extensions}; model metadata
 *    {name, versions, platform, inputs, outputs} with tensor metadata
 *    {name, datatype, shape} (x FP32 [-1, D], context FP32 [-1, C] for a
 *    conditional model, log_prob FP32 [-1]); model ready {name, ready}.
 *  - v2_infer_matches_core: log_prob (flat and nested data, FP32 and FP64),
 *    encode, decode and seeded sample answer the numbers the core computes
 *    in this process from the same model file, in the response shape
 *    {model_name, model_version, id, outputs: [{name, shape, datatype,
 *    data}]}; conditional context as [n, C], [1, C] and [C].
 *  - v2_infer_errors: datatype and shape mismatches, element counts, bad
 *    names, ops and outputs, missing context: each a 4xx whose body is the
 *    protocol's {"error": "<message>"} and nothing else.
 *  - v2_same_scopes_as_v1: health public; metadata and infer need a token,
 *    a read token is enough; errors in the protocol's shape.
 *  - v1_predict_alias: POST /v1/models/{name}[/versions/{v}]:predict with
 *    instances (rows or objects) or inputs (rows or columns) answers
 *    {"predictions": [log_prob...]}; the model's GET says "ready". */
#include "../test.h"

#include "daemon.h"
#include "oapi.h"

#include "../../core/model.h"
#include "../../core/nf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- models: "m" (D=2) and "c" (D=2, one context column), imported by
 * dmn_make_model; the test keeps them loaded to compute references. */
typedef struct {
    nf_model *m;
    nf_ws *w;
} ref_model;
static ref_model ref[2]; /* m, c */

static const float X4[8] = {0.5f, 0.25f, -1.0f, 2.0f, 0.0f, 0.0f, 3.0f, -0.75f};
static const float CTX4[4] = {0.5f, -1.0f, 2.0f, 0.0f};

static int make_model(dmn *d, const char *name, int C, ref_model *out) {
    if (dmn_make_model(d, name, C, &out->m)) return -1;
    return nf_ws_create(out->m->flow, 16, &out->w);
}

static int start(dmn *d, const char *const *args) {
    if (make_model(d, "m", 0, &ref[0]) || make_model(d, "c", 1, &ref[1])) return -1;
    return dmn_start(d, args, NULL);
}

/* ---- JSON helpers ------------------------------------------------------------------ */
static const cJSON *get(const cJSON *o, const char *k) { return o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL; }
static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* the output tensor named name of a v2 response */
static const cJSON *output(const hresp *r, const char *name) {
    const cJSON *t;
    cJSON_ArrayForEach(t, get(r->json, "outputs")) if (!strcmp(str(t, "name"), name)) return t;
    return NULL;
}

/* shape of tensor t equals dims (nd of them) and its datatype is FP32 */
static int shape_is(const cJSON *t, int nd, int d0, int d1) {
    const cJSON *s = get(t, "shape");
    return cJSON_GetArraySize(s) == nd && cJSON_GetArrayItem(s, 0)->valuedouble == d0 &&
           (nd < 2 || cJSON_GetArrayItem(s, 1)->valuedouble == d1) && !strcmp(str(t, "datatype"), "FP32");
}

/* the flat data of tensor t into out (at most n); returns the count */
static int data_of(const cJSON *t, double *out, int n) {
    int k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, get(t, "data")) {
        if (!cJSON_IsNumber(e)) return -1;
        if (k < n) out[k] = e->valuedouble;
        k++;
    }
    return k;
}

static void check_schema(dmn *d, const char *name, const hresp *r);

/* an error answer of the protocols: status, and a body that is exactly
 * {"error": "<non-empty message>"} */
static void check_plain_error(dmn *d, const hresp *r, long status, const char *what) {
    CHECK_MSG(r->status == status, "%s: status %ld, want %ld: %s", what, r->status, status, r->body);
    const cJSON *e = get(r->json, "error");
    CHECK_MSG(cJSON_IsObject(r->json) && cJSON_GetArraySize(r->json) == 1 && cJSON_IsString(e) && *e->valuestring,
              "%s: not {\"error\": \"...\"}: %s", what, r->body);
    CHECK_MSG(dmn_healthy(d), "%s: the daemon stopped answering", what);
    check_schema(d, "V2Error", r);
}

static void post(dmn *d, const char *path, const char *json, hresp *r) { http_post_json(d, path, json, r); }

/* the response body holds to components.schemas.<name> of the openapi.yaml
 * the daemon serves */
static void check_schema(dmn *d, const char *name, const hresp *r) {
    static cJSON *doc;
    char err[300] = "";
    if (!doc) {
        hresp y;
        http_get(d, "/openapi.yaml", &y);
        doc = oapi_parse(y.body ? y.body : "", y.len, err, sizeof err);
        hresp_free(&y);
        CHECK_MSG(doc != NULL, "openapi.yaml: %s", err);
        if (!doc) return;
    }
    CHECK_MSG(r->json && oapi_check(doc, name, r->json, err, sizeof err) == 0, "%s: %s: %.300s", name, err,
              r->body ? r->body : "");
}

/* ---- 1. health and metadata ---------------------------------------------------------- */
static void health_body(dmn *d) {
    static const char *const args[] = {NULL};
    REQUIRE(start(d, args) == 0);
    hresp r;
    http_get(d, "/v2/health/live", &r);
    CHECK_MSG(r.status == 200 && cJSON_IsTrue(get(r.json, "live")), "live: %ld %s", r.status, r.body);
    hresp_free(&r);
    http_get(d, "/v2/health/ready", &r);
    CHECK_MSG(r.status == 200 && cJSON_IsTrue(get(r.json, "ready")), "ready: %ld %s", r.status, r.body);
    hresp_free(&r);
    http_get(d, "/v2", &r);
    check_schema(d, "V2ServerMetadata", &r);
    CHECK_MSG(r.status == 200 && !strcmp(str(r.json, "name"), "flowd") && *str(r.json, "version") &&
                  cJSON_IsArray(get(r.json, "extensions")),
              "server metadata: %s", r.body);
    hresp_free(&r);

    static const char *const paths[] = {"/v2/models/m", "/v2/models/m/versions/1"};
    for (int i = 0; i < 2; i++) {
        http_get(d, paths[i], &r);
        CHECK_MSG(r.status == 200, "%s: %ld %s", paths[i], r.status, r.body);
        check_schema(d, "V2ModelMetadata", &r);
        CHECK(!strcmp(str(r.json, "name"), "m") && !strcmp(str(r.json, "platform"), "flowd"));
        const cJSON *v = get(r.json, "versions"), *in = get(r.json, "inputs"), *out = get(r.json, "outputs");
        CHECK_MSG(cJSON_GetArraySize(v) == 1 && !strcmp(cJSON_GetArrayItem(v, 0)->valuestring, "1"), "versions: %s", r.body);
        CHECK_MSG(cJSON_GetArraySize(in) == 1 && !strcmp(str(cJSON_GetArrayItem(in, 0), "name"), "x") &&
                      shape_is(cJSON_GetArrayItem(in, 0), 2, -1, 2),
                  "inputs: %s", r.body);
        CHECK_MSG(cJSON_GetArraySize(out) == 1 && !strcmp(str(cJSON_GetArrayItem(out, 0), "name"), "log_prob") &&
                      shape_is(cJSON_GetArrayItem(out, 0), 1, -1, 0),
                  "outputs: %s", r.body);
        hresp_free(&r);
    }
    http_get(d, "/v2/models/c", &r);
    const cJSON *in = get(r.json, "inputs");
    CHECK_MSG(r.status == 200 && cJSON_GetArraySize(in) == 2 &&
                  !strcmp(str(cJSON_GetArrayItem(in, 1), "name"), "context") && shape_is(cJSON_GetArrayItem(in, 1), 2, -1, 1),
              "conditional inputs: %s", r.body);
    hresp_free(&r);
    http_get(d, "/v2/models/m/ready", &r);
    CHECK_MSG(r.status == 200 && !strcmp(str(r.json, "name"), "m") && cJSON_IsTrue(get(r.json, "ready")), "ready: %s", r.body);
    check_schema(d, "V2ModelReady", &r);
    hresp_free(&r);
    http_get(d, "/v2/models/m/versions/1/ready", &r);
    CHECK_MSG(r.status == 200 && cJSON_IsTrue(get(r.json, "ready")), "version ready: %s", r.body);
    hresp_free(&r);
    /* absent models and versions: 404 in the protocol's error shape */
    static const char *const missing[] = {"/v2/models/nosuch", "/v2/models/m/versions/2", "/v2/models/m/versions/abc",
                                          "/v2/models/nosuch/ready", "/v2/models/m/versions/7/ready", "/v2/nosuch"};
    for (int i = 0; i < 6; i++) {
        http_get(d, missing[i], &r);
        check_plain_error(d, &r, 404, missing[i]);
        hresp_free(&r);
    }
    hreq q = {.method = "DELETE", .path = "/v2/models/m"};
    dmn_http(d, &q, &r);
    check_plain_error(d, &r, 405, "DELETE metadata");
    char allow[64];
    CHECK_MSG(hresp_header(&r, "Allow", allow, sizeof allow) && !strcmp(allow, "GET"), "Allow: %s", r.headers);
    hresp_free(&r);
}

TEST_T(v2_health_and_metadata, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    health_body(&d);
    dmn_cleanup(&d);
}

/* ---- 2. infer against the core --------------------------------------------------------- */
static void infer_body(dmn *d) {
    static const char *const args[] = {NULL};
    REQUIRE(start(d, args) == 0);
    nf_real lp[4], z[8], ld[4], xb[8], ldb[4];
    REQUIRE(nf_model_log_prob(ref[0].m, ref[0].w, X4, NULL, 4, lp) == 0);
    REQUIRE(nf_flow_encode(ref[0].m->flow, ref[0].w, X4, NULL, 4, z, ld) == 0);
    hresp r;
    double got[16];
    /* log_prob: flat FP32, nested FP32, flat FP64: the same numbers */
    static const char *const bodies[] = {
        "{\"id\":\"req-1\",\"inputs\":[{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP32\","
        "\"data\":[0.5,0.25,-1,2,0,0,3,-0.75]}]}",
        "{\"id\":\"req-1\",\"inputs\":[{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP32\","
        "\"data\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]]}],\"parameters\":{\"op\":\"log_prob\"}}",
        "{\"id\":\"req-1\",\"inputs\":[{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP64\","
        "\"data\":[0.5,0.25,-1,2,0,0,3,-0.75]}],\"outputs\":[{\"name\":\"log_prob\"}]}",
    };
    for (int b = 0; b < 3; b++) {
        post(d, b == 1 ? "/v2/models/m/versions/1/infer" : "/v2/models/m/infer", bodies[b], &r);
        CHECK_MSG(r.status == 200, "log_prob %d: %ld %s", b, r.status, r.body);
        check_schema(d, "V2InferResponse", &r);
        CHECK_MSG(!strcmp(str(r.json, "model_name"), "m") && !strcmp(str(r.json, "model_version"), "1") &&
                      !strcmp(str(r.json, "id"), "req-1") && cJSON_GetArraySize(get(r.json, "outputs")) == 1,
                  "response: %s", r.body);
        const cJSON *t = output(&r, "log_prob");
        CHECK_MSG(shape_is(t, 1, 4, 0), "log_prob tensor: %s", r.body);
        REQUIRE(data_of(t, got, 4) == 4);
        for (int i = 0; i < 4; i++) CHECK_CLOSE(got[i], lp[i], 0, 1e-6);
        hresp_free(&r);
    }
    /* encode: z and log_det of the core */
    post(d, "/v2/models/m/infer",
         "{\"parameters\":{\"op\":\"encode\"},\"inputs\":[{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP32\","
         "\"data\":[0.5,0.25,-1,2,0,0,3,-0.75]}]}",
         &r);
    CHECK_MSG(r.status == 200 && shape_is(output(&r, "z"), 2, 4, 2) && shape_is(output(&r, "log_det"), 1, 4, 0),
              "encode: %ld %s", r.status, r.body);
    check_schema(d, "V2InferResponse", &r);
    REQUIRE(data_of(output(&r, "z"), got, 8) == 8);
    for (int i = 0; i < 8; i++) CHECK_CLOSE(got[i], z[i], 1e-6, 1e-6);
    REQUIRE(data_of(output(&r, "log_det"), got, 4) == 4);
    for (int i = 0; i < 4; i++) CHECK_CLOSE(got[i], ld[i], 1e-6, 1e-6);
    hresp_free(&r);
    /* decode of those z: back to x, log_det negated */
    char body[1024];
    int k = snprintf(body, sizeof body, "{\"parameters\":{\"op\":\"decode\"},\"inputs\":[{\"name\":\"z\",\"shape\":[4,2],"
                                        "\"datatype\":\"FP32\",\"data\":[");
    for (int i = 0; i < 8; i++) k += snprintf(body + k, sizeof body - k, "%s%.9g", i ? "," : "", (double)z[i]);
    snprintf(body + k, sizeof body - k, "]}],\"outputs\":[{\"name\":\"x\"},{\"name\":\"log_det\"}]}");
    post(d, "/v2/models/m/infer", body, &r);
    CHECK_MSG(r.status == 200 && shape_is(output(&r, "x"), 2, 4, 2), "decode: %ld %s", r.status, r.body);
    REQUIRE(nf_flow_decode(ref[0].m->flow, ref[0].w, z, NULL, 4, xb, ldb) == 0);
    REQUIRE(data_of(output(&r, "x"), got, 8) == 8);
    for (int i = 0; i < 8; i++) CHECK_CLOSE(got[i], X4[i], 1e-5, 1e-5);
    REQUIRE(data_of(output(&r, "log_det"), got, 4) == 4);
    for (int i = 0; i < 4; i++) CHECK_CLOSE(got[i], -ld[i], 1e-5, 1e-5);
    hresp_free(&r);
    /* sample: seeded draws are the core's, and their log_prob too */
    nf_real sx[6], slp[3];
    REQUIRE(nf_flow_sample(ref[0].m->flow, ref[0].w, 3, 1.0, 42, NULL, sx, slp) == 0);
    post(d, "/v2/models/m/infer",
         "{\"inputs\":[],\"parameters\":{\"op\":\"sample\",\"n\":3,\"seed\":42},"
         "\"outputs\":[{\"name\":\"samples\"},{\"name\":\"log_prob\"}]}",
         &r);
    CHECK_MSG(r.status == 200 && shape_is(output(&r, "samples"), 2, 3, 2) && shape_is(output(&r, "log_prob"), 1, 3, 0),
              "sample: %ld %s", r.status, r.body);
    check_schema(d, "V2InferResponse", &r);
    REQUIRE(data_of(output(&r, "samples"), got, 6) == 6);
    for (int i = 0; i < 6; i++) CHECK_CLOSE(got[i], sx[i], 1e-6, 1e-6);
    REQUIRE(data_of(output(&r, "log_prob"), got, 3) == 3);
    for (int i = 0; i < 3; i++) CHECK_CLOSE(got[i], slp[i], 1e-5, 1e-6);
    hresp_free(&r);
    /* a seed past 2^31 goes back as the integer it is, not 6.19180164853787e+15
     * (cJSON's %.15g), on /v1 and /v2 alike (a regression: the contract check
     * failed on one fresh seed in ten) */
    post(d, "/v1/models/m/sample", "{\"n\":1,\"seed\":6191801648537870}", &r);
    CHECK_MSG(r.status == 200 && strstr(r.body, "\"seed\":6191801648537870,"), "v1 seed: %s", r.body);
    hresp_free(&r);
    post(d, "/v2/models/m/infer", "{\"inputs\":[],\"parameters\":{\"op\":\"sample\",\"n\":1,\"seed\":6191801648537870}}", &r);
    CHECK_MSG(r.status == 200 && strstr(r.body, "\"seed\":6191801648537870,"), "v2 seed: %s", r.body);
    hresp_free(&r);
    /* sample's default outputs: samples only */
    post(d, "/v2/models/m/infer", "{\"inputs\":[],\"parameters\":{\"op\":\"sample\",\"n\":2}}", &r);
    CHECK_MSG(r.status == 200 && cJSON_GetArraySize(get(r.json, "outputs")) == 1 && output(&r, "samples"), "%s", r.body);
    hresp_free(&r);

    /* conditional: context as [4, 1], and one vector for all rows as [1, 1] and [1] */
    nf_real clp[4], clp0[4];
    nf_real c0[4] = {CTX4[0], CTX4[0], CTX4[0], CTX4[0]};
    REQUIRE(nf_model_log_prob(ref[1].m, ref[1].w, X4, CTX4, 4, clp) == 0);
    REQUIRE(nf_model_log_prob(ref[1].m, ref[1].w, X4, c0, 4, clp0) == 0);
    static const char *const cbodies[] = {
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP32\",\"data\":[0.5,0.25,-1,2,0,0,3,-0.75]},"
        "{\"name\":\"context\",\"shape\":[4,1],\"datatype\":\"FP32\",\"data\":[0.5,-1,2,0]}]}",
        "{\"inputs\":[{\"name\":\"context\",\"shape\":[1,1],\"datatype\":\"FP32\",\"data\":[[0.5]]},"
        "{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP32\",\"data\":[0.5,0.25,-1,2,0,0,3,-0.75]}]}",
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[4,2],\"datatype\":\"FP32\",\"data\":[0.5,0.25,-1,2,0,0,3,-0.75]},"
        "{\"name\":\"context\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[0.5]}]}",
    };
    for (int b = 0; b < 3; b++) {
        post(d, "/v2/models/c/infer", cbodies[b], &r);
        CHECK_MSG(r.status == 200, "conditional %d: %ld %s", b, r.status, r.body);
        REQUIRE(data_of(output(&r, "log_prob"), got, 4) == 4);
        for (int i = 0; i < 4; i++) CHECK_CLOSE(got[i], b ? clp0[i] : clp[i], 0, 1e-6);
        hresp_free(&r);
    }
    /* the context changes the answer (the test above can fail) */
    CHECK(fabs((double)clp[1] - (double)clp0[1]) > 1e-3);
}

TEST_T(v2_infer_matches_core, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    infer_body(&d);
    dmn_cleanup(&d);
}

/* ---- 3. errors ------------------------------------------------------------------------------ */
#define X_OK "{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}"
static const struct {
    const char *path, *body;
    long status;
    const char *says; /* a word the message must hold */
} bad[] = {
    /* datatype mismatches */
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"INT32\",\"data\":[1,2,3,4]}]}", 400, "INT32"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"BYTES\",\"data\":[1,2,3,4]}]}", 400, "BYTES"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"float\",\"data\":[1,2,3,4]}]}", 400, "datatype"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"data\":[1,2,3,4]}]}", 400, "datatype"},
    /* shape mismatches */
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,3],\"datatype\":\"FP32\",\"data\":[1,2,3,4,5,6]}]}", 400, "shape"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[4],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}", 400, "shape"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[0,2],\"datatype\":\"FP32\",\"data\":[]}]}", 400, "shape"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,-2],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}", 400, "shape"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}", 400, "shape"},
    /* data against shape */
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,3]}]}", 400, "data"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[[1,2],[3]]}]}", 400, "shape"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,\"3\",4]}]}", 400, "element 2"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,1e39,4]}]}", 400, "FP32"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\"}]}", 400, "data"},
    /* names, ops, outputs, body */
    {"m", "{\"inputs\":[{\"name\":\"y\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}", 400, "y"},
    {"m", "{\"inputs\":[" X_OK "," X_OK "]}", 400, "twice"},
    {"m", "{\"inputs\":[]}", 400, "x"},
    {"m", "{}", 400, "inputs"},
    {"m", "{\"inputs\":[" X_OK "],\"parameters\":{\"op\":\"explain\"}}", 400, "op"},
    {"m", "{\"inputs\":[" X_OK "],\"outputs\":[{\"name\":\"z\"}]}", 400, "z"},
    {"m", "{\"inputs\":[" X_OK "],\"extra\":1}", 400, "extra"},
    {"m", "{\"inputs\":[" X_OK "],\"id\":7}", 400, "id"},
    {"m", "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,3,4],\"size\":4}]}", 400, "size"},
    {"m", "{\"inputs\":[],\"parameters\":{\"op\":\"sample\"}}", 400, "n"},
    {"m", "{\"inputs\":[],\"parameters\":{\"op\":\"sample\",\"n\":0}}", 400, "n"},
    {"m", "{\"inputs\":[" X_OK "],\"parameters\":{\"op\":\"decode\"}}", 400, "x"},
    {"m", "{\"inputs\":[" X_OK "", 400, "JSON"},
    /* context */
    {"c", "{\"inputs\":[" X_OK "]}", 400, "context"},
    {"m", "{\"inputs\":[" X_OK ",{\"name\":\"context\",\"shape\":[2,1],\"datatype\":\"FP32\",\"data\":[1,2]}]}", 400, "context"},
    {"c", "{\"inputs\":[" X_OK ",{\"name\":\"context\",\"shape\":[3,1],\"datatype\":\"FP32\",\"data\":[1,2,3]}]}", 400, "context"},
    /* model and version */
    {"nosuch", "{\"inputs\":[" X_OK "]}", 404, "nosuch"},
    {"m/versions/3", "{\"inputs\":[" X_OK "]}", 404, "3"},
};

static void errors_body(dmn *d) {
    static const char *const args[] = {NULL};
    REQUIRE(start(d, args) == 0);
    hresp r;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[96], what[64];
        snprintf(path, sizeof path, "/v2/models/%s/infer", bad[i].path);
        snprintf(what, sizeof what, "case %zu", i);
        post(d, path, bad[i].body, &r);
        check_plain_error(d, &r, bad[i].status, what);
        const char *msg = str(r.json, "error");
        CHECK_MSG(strstr(msg, bad[i].says) != NULL, "%s: \"%s\" does not say %s", what, msg, bad[i].says);
        hresp_free(&r);
    }
    /* a body that is not JSON by its Content-Type */
    hreq q = {.path = "/v2/models/m/infer", .ctype = "text/csv", .body = "1,2\n", .len = 4, .has_body = 1};
    dmn_http(d, &q, &r);
    check_plain_error(d, &r, 415, "text/csv");
    hresp_free(&r);
    /* the /v1 routes keep their own error shape */
    post(d, "/v1/models/m/log_prob", "{\"inputs\":[[1,2,3]]}", &r);
    CHECK_MSG(r.status == 422 && !strcmp(hresp_error_code(&r), "invalid_input"), "/v1: %ld %s", r.status, r.body);
    hresp_free(&r);
}

TEST_T(v2_infer_errors, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    errors_body(&d);
    dmn_cleanup(&d);
}

/* ---- 4. scopes ------------------------------------------------------------------------------ */
static void scopes_body(dmn *d) {
    FILE *f = fopen(dmn_path(d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "read rtok-v2-0123456789\nwrite wtok-v2-0123456789\n");
    fclose(f);
    const char *args[] = {"--token-file", dmn_path(d, "tokens"), NULL};
    REQUIRE(start(d, args) == 0);
    static const char *const body = "{\"inputs\":[" X_OK "]}";
    hresp r;
    hreq live = {.path = "/v2/health/live", .token = ""}, ready = {.path = "/v2/health/ready", .token = ""};
    dmn_http(d, &live, &r);
    CHECK_MSG(r.status == 200, "live without a token: %ld", r.status);
    hresp_free(&r);
    dmn_http(d, &ready, &r);
    CHECK_MSG(r.status == 200, "ready without a token: %ld", r.status);
    hresp_free(&r);
    static const char *const toks[] = {"", "wrong-token", "rtok-v2-0123456789", "wtok-v2-0123456789"};
    for (int t = 0; t < 4; t++) {
        hreq meta = {.path = "/v2/models/m", .token = toks[t]};
        hreq inf = {.path = "/v2/models/m/infer", .token = toks[t], .ctype = "application/json", .body = body,
                    .len = strlen(body), .has_body = 1};
        hreq pred = {.path = "/v1/models/m:predict", .token = toks[t], .ctype = "application/json",
                     .body = "{\"instances\":[[1,2]]}", .len = 21, .has_body = 1};
        const hreq *qs[] = {&meta, &inf, &pred};
        for (int i = 0; i < 3; i++) {
            dmn_http(d, qs[i], &r);
            if (t < 2) check_plain_error(d, &r, 401, qs[i]->path);
            else CHECK_MSG(r.status == 200, "%s with token %d: %ld %s", qs[i]->path, t, r.status, r.body);
            hresp_free(&r);
        }
    }
}

TEST_T(v2_same_scopes_as_v1, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    scopes_body(&d);
    dmn_cleanup(&d);
}

/* ---- 5. TF Serving's :predict ---------------------------------------------------------------- */
static void predict_body(dmn *d) {
    static const char *const args[] = {NULL};
    REQUIRE(start(d, args) == 0);
    nf_real lp[4], clp[4];
    REQUIRE(nf_model_log_prob(ref[0].m, ref[0].w, X4, NULL, 4, lp) == 0);
    REQUIRE(nf_model_log_prob(ref[1].m, ref[1].w, X4, CTX4, 4, clp) == 0);
    static const struct {
        const char *path, *body;
        int cond;
    } ok[] = {
        {"/v1/models/m:predict", "{\"instances\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]]}", 0},
        {"/v1/models/m/versions/1:predict", "{\"signature_name\":\"serving_default\",\"inputs\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]]}", 0},
        {"/v1/models/m:predict", "{\"inputs\":{\"x\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]]}}", 0},
        {"/v1/models/c:predict", "{\"instances\":[{\"x\":[0.5,0.25],\"context\":[0.5]},{\"x\":[-1,2],\"context\":[-1]},"
                                 "{\"x\":[0,0],\"context\":[2]},{\"x\":[3,-0.75],\"context\":[0]}]}", 1},
        {"/v1/models/c:predict", "{\"inputs\":{\"x\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]],\"context\":[[0.5],[-1],[2],[0]]}}", 1},
    };
    hresp r;
    double got[4];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        post(d, ok[i].path, ok[i].body, &r);
        CHECK_MSG(r.status == 200 && cJSON_GetArraySize(r.json) == 1, "predict %zu: %ld %s", i, r.status, r.body);
        check_schema(d, "PredictResponse", &r);
        int k = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, get(r.json, "predictions")) if (k < 4) got[k++] = e->valuedouble;
        CHECK_EQ_INT(k, 4);
        for (int j = 0; j < k; j++) CHECK_CLOSE(got[j], ok[i].cond ? clp[j] : lp[j], 0, 1e-6);
        hresp_free(&r);
    }
    static const struct {
        const char *path, *body;
        long status;
    } no[] = {
        {"/v1/models/m:predict", "{\"instances\":[[1,2,3]]}", 400},
        {"/v1/models/m:predict", "{\"instances\":[[1,2]],\"inputs\":[[1,2]]}", 400},
        {"/v1/models/m:predict", "{\"instances\":[]}", 400},
        {"/v1/models/m:predict", "{\"rows\":[[1,2]]}", 400},
        {"/v1/models/c:predict", "{\"instances\":[[1,2]]}", 400},
        {"/v1/models/m:predict", "{\"instances\":[{\"x\":[1,2],\"context\":[1]}]}", 400},
        {"/v1/models/nosuch:predict", "{\"instances\":[[1,2]]}", 404},
        {"/v1/models/m/versions/9:predict", "{\"instances\":[[1,2]]}", 404},
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "predict error %zu", i);
        post(d, no[i].path, no[i].body, &r);
        check_plain_error(d, &r, no[i].status, what);
        hresp_free(&r);
    }
    /* KServe v1's model status: the model's GET says ready */
    http_get(d, "/v1/models/m", &r);
    CHECK_MSG(r.status == 200 && cJSON_IsTrue(get(r.json, "ready")), "%s", r.body);
    check_schema(d, "ModelDetail", &r);
    hresp_free(&r);
    /* a model name with the suffix is still a model name on GET (no such model) */
    http_get(d, "/v1/models/m:predict", &r);
    CHECK_MSG(r.status == 404 && !strcmp(hresp_error_code(&r), "not_found"), "%ld %s", r.status, r.body);
    hresp_free(&r);
}

TEST_T(v1_predict_alias, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    predict_body(&d);
    dmn_cleanup(&d);
}
