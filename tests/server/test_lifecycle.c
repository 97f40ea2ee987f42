/* test_lifecycle.c: the model lifecycle end to end against the real daemon
 * (issue 13) and bounded restarts of a job that keeps killing the process
 * (issue 15):
 *  - aliases (PUT/DELETE, "default" used by unpinned calls, readable as
 *    "version" in bodies, ?version= and the checkpoint path), version upload
 *    and delete (409 while an alias points at it), numbers that never
 *    restart after a model is deleted;
 *  - warm starts ("init"): parameters really taken (a job at lr 1e-12 scores
 *    as the published version; a cold one does not), architecture mismatch
 *    and missing optimizer state refused with 422, publish.set_default;
 *  - cancel keeps the saved state and POST /v1/jobs/{id}/resume continues it;
 *  - a job running while the daemon is SIGKILLed again and again is failed
 *    after FD_JOB_MAX_RESTARTS restarts, and the daemon serves on.
 * Every answer (success and error) is held against schema/openapi.yaml. */
#include "../test.h"

#include "daemon.h"
#include "oapi.h"

#include "../../server/server.h"

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static cJSON *load_doc(dmn *d) {
    hresp r;
    http_get(d, "/openapi.yaml", &r);
    char err[300] = "";
    cJSON *doc = r.status == 200 ? oapi_parse(r.body, r.len, err, sizeof err) : NULL;
    if (!doc) fprintf(stderr, "    openapi.yaml: %ld %s\n", r.status, err);
    hresp_free(&r);
    return doc;
}

/* one request: method, path, content type and body (may be NULL) */
static void call(dmn *d, const char *method, const char *path, const char *ctype, const void *body,
                 size_t len, hresp *r) {
    hreq q = {.method = method, .path = path, .ctype = ctype, .body = body, .len = len,
              .has_body = body != NULL};
    dmn_http(d, &q, r);
}

static void call_json(dmn *d, const char *method, const char *path, const char *json, hresp *r) {
    call(d, method, path, json ? "application/json" : NULL, json, json ? strlen(json) : 0, r);
}

/* a success answer: status and the schema */
static int ok_as(const cJSON *doc, hresp *r, long status, const char *schema) {
    char err[400] = "";
    if (r->status != status) {
        fprintf(stderr, "    status %ld, expected %ld: %s\n", r->status, status, r->body ? r->body : "");
        return 0;
    }
    if (schema && oapi_check(doc, schema, r->json, err, sizeof err)) {
        fprintf(stderr, "    %s: %s\n    %s\n", schema, err, r->body);
        return 0;
    }
    return 1;
}

/* an error answer: status, code, the Error schema, details.field when given */
static void check_error(const cJSON *doc, hresp *r, long status, const char *code, const char *field) {
    char err[400] = "";
    CHECK_MSG(r->status == status, "status %ld, expected %ld: %s", r->status, status, r->body);
    CHECK_MSG(!strcmp(hresp_error_code(r), code), "code %s, expected %s: %s", hresp_error_code(r), code, r->body);
    CHECK_MSG(oapi_check(doc, "Error", r->json, err, sizeof err) == 0, "Error: %s", err);
    if (field) {
        const cJSON *det = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r->json, "error"), "details");
        CHECK_MSG(!strcmp(jstr(det, "field"), field), "details.field '%s', expected %s: %s", jstr(det, "field"), field,
                  r->body);
    }
    hresp_free(r);
}

#define JOB(model, extra)                                                                          \
    "{\"model\":\"" model "\",\"dataset\":{\"builtin\":\"moons\",\"n\":600,\"seed\":3},"            \
    "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"                               \
    "\"train\":{\"epochs\":2,\"batch_size\":100,\"seed\":1}" extra "}"

static const char *ROWS = "{\"inputs\":[[0.1,0.2],[1.0,-0.4],[-0.7,0.9],[0.5,0.5],[2.0,0.1]]%s}";

/* log_prob of ROWS with a version field (a JSON fragment like
 * ,"version":"prod" or ""): the answered version and the values */
static int score(dmn *d, const cJSON *doc, const char *model, const char *vfrag, double lp[5]) {
    char path[128], body[256];
    snprintf(path, sizeof path, "/v1/models/%s/log_prob", model);
    snprintf(body, sizeof body, ROWS, vfrag);
    hresp r;
    call_json(d, "POST", path, body, &r);
    int v = -1;
    if (ok_as(doc, &r, 200, "LogProbResponse")) {
        v = (int)jnum(r.json, "version");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(r.json, "log_prob");
        for (int i = 0; i < 5; i++) lp[i] = cJSON_GetArrayItem(a, i)->valuedouble;
    }
    hresp_free(&r);
    return v;
}

static int train(dmn *d, const char *json) {
    long long id = submit_job(d, json);
    char st[32];
    if (!id || wait_job(d, id, 90, st, sizeof st) || strcmp(st, "succeeded")) return -1;
    cJSON *j = get_job(d, id);
    int v = (int)jnum(j, "version");
    cJSON_Delete(j);
    return v;
}

static cJSON *model_get(dmn *d, const cJSON *doc, const char *name) {
    char path[96];
    snprintf(path, sizeof path, "/v1/models/%s", name);
    hresp r;
    http_get(d, path, &r);
    cJSON *o = NULL;
    if (ok_as(doc, &r, 200, "ModelDetail")) o = r.json, r.json = NULL;
    hresp_free(&r);
    return o;
}

static int default_version(dmn *d, const cJSON *doc, const char *name) {
    cJSON *m = model_get(d, doc, name);
    int v = (int)jnum(m, "default_version");
    cJSON_Delete(m);
    return v;
}

static void *download(dmn *d, const char *path, size_t *len) {
    hresp r;
    http_get(d, path, &r);
    void *b = NULL;
    *len = 0;
    if (r.status == 200) {
        b = r.body;
        *len = r.len;
        r.body = NULL;
    } else {
        fprintf(stderr, "    GET %s: %ld %s\n", path, r.status, r.body);
    }
    hresp_free(&r);
    return b;
}

/* POST a model file; the new version or -1 */
static int upload(dmn *d, const cJSON *doc, const char *path, const void *buf, size_t len) {
    hresp r;
    call(d, "POST", path, "application/octet-stream", buf, len, &r);
    int v = -1;
    char loc[160];
    if (ok_as(doc, &r, 201, "VersionUploaded") && hresp_header(&r, "Location", loc, sizeof loc)) v = (int)jnum(r.json, "version");
    hresp_free(&r);
    return v;
}

TEST_T(lifecycle_aliases_versions_upload, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const args[] = {"--max-body", "65536", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    cJSON *doc = load_doc(&d);
    REQUIRE(doc);
    hresp r;
    double lp[5], lp2[5];

    /* v1 by a job; unpinned calls get it (no default alias: the latest) */
    REQUIRE(train(&d, JOB("m", ",\"publish\":{\"optimizer_state\":true}")) == 1);
    cJSON *m = model_get(&d, doc, "m");
    REQUIRE(m);
    CHECK_EQ_INT((int)jnum(m, "default_version"), 1);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "aliases")), 0);
    const cJSON *v0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "versions"), 0);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v0, "optimizer_state")));
    cJSON_Delete(m);

    /* upload: the downloaded file as v2 (becomes the default), then v3
     * with set_default=false (the default is pinned at 2) */
    size_t flen = 0;
    char *file = download(&d, "/v1/models/m/versions/1/checkpoint", &flen);
    REQUIRE(file && flen > 100);
    CHECK_EQ_INT(upload(&d, doc, "/v1/models/m/versions", file, flen), 2);
    CHECK_EQ_INT(default_version(&d, doc, "m"), 2);
    CHECK_EQ_INT(upload(&d, doc, "/v1/models/m/versions?set_default=false", file, flen), 3);
    m = model_get(&d, doc, "m");
    REQUIRE(m);
    CHECK_EQ_INT((int)jnum(m, "latest_version"), 3);
    CHECK_EQ_INT((int)jnum(m, "default_version"), 2);
    CHECK_EQ_INT((int)jnum(cJSON_GetObjectItemCaseSensitive(m, "aliases"), "default"), 2);
    const cJSON *v1 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "versions"), 1);
    CHECK(!strcmp(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(v1, "aliases"), 0)->valuestring, "default"));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(v1, "optimizer_state")));
    cJSON_Delete(m);
    /* the models list says the default too */
    http_get(&d, "/v1/models", &r);
    CHECK(ok_as(doc, &r, 200, "ModelList"));
    CHECK_EQ_INT((int)jnum(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "models"), 0), "default_version"), 2);
    hresp_free(&r);
    /* an upload is the same model: same scores as v1 */
    CHECK_EQ_INT(score(&d, doc, "m", "", lp), 2);
    CHECK_EQ_INT(score(&d, doc, "m", ",\"version\":1", lp2), 1);
    for (int i = 0; i < 5; i++) CHECK_CLOSE(lp[i], lp2[i], 0, 0);
    CHECK_EQ_INT(score(&d, doc, "m", ",\"version\":\"latest\"", lp), 3);
    CHECK_EQ_INT(score(&d, doc, "m", ",\"version\":\"default\"", lp), 2);

    /* aliases */
    call_json(&d, "PUT", "/v1/models/m/aliases/prod", "{\"version\":3}", &r);
    CHECK(ok_as(doc, &r, 200, "Alias"));
    CHECK_EQ_INT((int)jnum(r.json, "version"), 3);
    hresp_free(&r);
    call_json(&d, "PUT", "/v1/models/m/aliases/canary", "{\"version\":\"prod\"}", &r);
    CHECK(ok_as(doc, &r, 200, "Alias"));
    CHECK_EQ_INT((int)jnum(r.json, "version"), 3);
    hresp_free(&r);
    CHECK_EQ_INT(score(&d, doc, "m", ",\"version\":\"prod\"", lp), 3);
    CHECK_EQ_INT(score(&d, doc, "m", "", lp), 2);
    /* moving default moves unpinned calls (this connection and others) */
    call_json(&d, "PUT", "/v1/models/m/aliases/default", "{\"version\":1}", &r);
    CHECK(ok_as(doc, &r, 200, "Alias"));
    hresp_free(&r);
    for (int k = 0; k < 4; k++) CHECK_EQ_INT(score(&d, doc, "m", "", lp), 1);
    /* ?version= on a CSV body, sample and the checkpoint path take aliases */
    const char *csv = "a,b\n0.1,0.2\n";
    call(&d, "POST", "/v1/models/m/log_prob?version=prod", "text/csv", csv, strlen(csv), &r);
    CHECK(ok_as(doc, &r, 200, "LogProbResponse"));
    CHECK_EQ_INT((int)jnum(r.json, "version"), 3);
    hresp_free(&r);
    call_json(&d, "POST", "/v1/models/m/sample", "{\"n\":3,\"seed\":1,\"version\":\"canary\"}", &r);
    CHECK(ok_as(doc, &r, 200, "SampleResponse"));
    CHECK_EQ_INT((int)jnum(r.json, "version"), 3);
    hresp_free(&r);
    call_json(&d, "POST", "/v1/models/m/encode", "{\"inputs\":[[0.1,0.2]],\"version\":\"prod\"}", &r);
    CHECK(ok_as(doc, &r, 200, "EncodeResponse"));
    CHECK_EQ_INT((int)jnum(r.json, "version"), 3);
    hresp_free(&r);
    size_t plen = 0;
    char *pf = download(&d, "/v1/models/m/versions/prod/checkpoint", &plen);
    CHECK(pf && plen == flen && !memcmp(pf, file, flen));
    free(pf);

    /* alias errors */
    call_json(&d, "PUT", "/v1/models/m/aliases/1abc", "{\"version\":1}", &r);
    check_error(doc, &r, 400, "invalid_argument", NULL);
    call_json(&d, "PUT", "/v1/models/m/aliases/latest", "{\"version\":1}", &r);
    check_error(doc, &r, 400, "invalid_argument", NULL);
    call_json(&d, "PUT", "/v1/models/m/aliases/x", "{\"version\":99}", &r);
    check_error(doc, &r, 422, "invalid_input", "version");
    call_json(&d, "PUT", "/v1/models/m/aliases/x", "{}", &r);
    check_error(doc, &r, 422, "invalid_input", "version");
    call_json(&d, "PUT", "/v1/models/m/aliases/x", "{\"version\":1,\"extra\":1}", &r);
    check_error(doc, &r, 422, "invalid_input", NULL);
    call_json(&d, "PUT", "/v1/models/m/aliases/x", "{\"version\":0}", &r);
    check_error(doc, &r, 422, "invalid_input", "version");
    call_json(&d, "PUT", "/v1/models/m/aliases/x", "{\"version\":\"nope\"}", &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call_json(&d, "PUT", "/v1/models/m/aliases/x", "[1]", &r);
    check_error(doc, &r, 400, "invalid_json", NULL);
    call_json(&d, "PUT", "/v1/models/ghost/aliases/x", "{\"version\":1}", &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call_json(&d, "POST", "/v1/models/m/aliases/x", "{\"version\":1}", &r);
    check_error(doc, &r, 405, "method_not_allowed", NULL);
    /* unknown versions and aliases wherever they are read */
    call_json(&d, "POST", "/v1/models/m/log_prob", "{\"inputs\":[[0,0]],\"version\":\"nope\"}", &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call_json(&d, "POST", "/v1/models/m/log_prob", "{\"inputs\":[[0,0]],\"version\":\"\"}", &r);
    check_error(doc, &r, 422, "invalid_input", "version");
    call_json(&d, "POST", "/v1/models/m/log_prob", "{\"inputs\":[[0,0]],\"version\":\"1\"}", &r);
    check_error(doc, &r, 422, "invalid_input", "version"); /* numbers are JSON numbers */
    call(&d, "POST", "/v1/models/m/log_prob?version=77", "text/csv", csv, strlen(csv), &r);
    check_error(doc, &r, 404, "not_found", NULL);
    http_get(&d, "/v1/models/m/versions/2/checkpoint", &r);
    CHECK_EQ_INT((int)r.status, 200);
    hresp_free(&r);
    call(&d, "POST", "/v1/models/m/log_prob?version=nope", "text/csv", csv, strlen(csv), &r);
    check_error(doc, &r, 404, "not_found", NULL);
    http_get(&d, "/v1/models/m/versions/nope/checkpoint", &r);
    check_error(doc, &r, 404, "not_found", NULL);

    /* version delete: refused while an alias points at it */
    call(&d, "DELETE", "/v1/models/m/versions/3", NULL, NULL, 0, &r);
    CHECK_MSG(!strcmp(jstr(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r.json, "error"), "details"), "alias"),
                      "canary"),
              "%s", r.body);
    check_error(doc, &r, 409, "version_in_use", NULL);
    call(&d, "DELETE", "/v1/models/m/versions/1", NULL, NULL, 0, &r);
    check_error(doc, &r, 409, "version_in_use", NULL); /* default */
    call(&d, "DELETE", "/v1/models/m/aliases/prod", NULL, NULL, 0, &r);
    CHECK_EQ_INT((int)r.status, 204);
    hresp_free(&r);
    call(&d, "DELETE", "/v1/models/m/aliases/prod", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call(&d, "DELETE", "/v1/models/m/aliases/canary", NULL, NULL, 0, &r);
    CHECK_EQ_INT((int)r.status, 204);
    hresp_free(&r);
    call(&d, "DELETE", "/v1/models/m/versions/3", NULL, NULL, 0, &r);
    CHECK_EQ_INT((int)r.status, 204);
    hresp_free(&r);
    call(&d, "DELETE", "/v1/models/m/versions/3", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call(&d, "DELETE", "/v1/models/m/versions/abc", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call(&d, "DELETE", "/v1/models/ghost/versions/1", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    CHECK_EQ_INT(score(&d, doc, "m", ",\"version\":\"latest\"", lp), 2);
    call_json(&d, "POST", "/v1/models/m/log_prob", "{\"inputs\":[[0,0]],\"version\":3}", &r);
    check_error(doc, &r, 404, "not_found", NULL);
    /* dropping default: unpinned calls get the latest again */
    call(&d, "DELETE", "/v1/models/m/aliases/default", NULL, NULL, 0, &r);
    CHECK_EQ_INT((int)r.status, 204);
    hresp_free(&r);
    CHECK_EQ_INT(score(&d, doc, "m", "", lp), 2);

    /* numbers never restart: after v3 was deleted the next is 4; after the
     * model is deleted and created again, 5 */
    CHECK_EQ_INT(upload(&d, doc, "/v1/models/m/versions", file, flen), 4);
    call(&d, "DELETE", "/v1/models/m", NULL, NULL, 0, &r);
    CHECK_EQ_INT((int)r.status, 204);
    hresp_free(&r);
    CHECK_EQ_INT(upload(&d, doc, "/v1/models/m/versions", file, flen), 5);
    CHECK_EQ_INT(default_version(&d, doc, "m"), 5);
    http_get(&d, "/v1/models/m/versions/latest/checkpoint", &r);
    CHECK_EQ_INT((int)r.status, 200);
    hresp_free(&r);

    /* upload errors */
    call(&d, "POST", "/v1/models/m/versions", "application/octet-stream", "NFMDgarbage", 11, &r);
    check_error(doc, &r, 422, "invalid_model", NULL);
    file[flen / 2] ^= 0x20; /* a flipped bit: the CRC catches it */
    call(&d, "POST", "/v1/models/m/versions", "application/octet-stream", file, flen, &r);
    check_error(doc, &r, 422, "invalid_model", NULL);
    file[flen / 2] ^= 0x20;
    call(&d, "POST", "/v1/models/m/versions", "application/octet-stream", "", 0, &r);
    check_error(doc, &r, 422, "invalid_input", NULL);
    call(&d, "POST", "/v1/models/m/versions", "text/csv", file, flen, &r);
    check_error(doc, &r, 415, "unsupported_media_type", NULL);
    call(&d, "POST", "/v1/models/m/versions?set_default=maybe", "application/octet-stream", file, flen, &r);
    check_error(doc, &r, 400, "invalid_argument", NULL);
    call(&d, "POST", "/v1/models/.bad/versions", "application/octet-stream", file, flen, &r);
    check_error(doc, &r, 400, "invalid_argument", NULL);
    size_t big = 65536 + 10;
    char *huge = calloc(1, big);
    REQUIRE(huge);
    call(&d, "POST", "/v1/models/m/versions", "application/octet-stream", huge, big, &r);
    check_error(doc, &r, 413, "payload_too_large", NULL);
    free(huge);
    CHECK_EQ_INT(default_version(&d, doc, "m"), 5); /* nothing stored by the failures */

    free(file);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}

static int job_step(dmn *d, long long id);

TEST_T(lifecycle_warm_start, 240) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const env[] = {"FLOWD_CHECKPOINT_SECONDS=0.1", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    cJSON *doc = load_doc(&d);
    REQUIRE(doc);
    hresp r;
    double lp1[5], lpw[5], lpc[5];
    /* trained well away from its initialisation (so a cold start differs) */
    REQUIRE(train(&d, "{\"model\":\"base\",\"dataset\":{\"builtin\":\"moons\",\"n\":600,\"seed\":3},"
                      "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                      "\"train\":{\"epochs\":40,\"batch_size\":100,\"lr\":0.005,\"seed\":1},"
                      "\"publish\":{\"optimizer_state\":true}}") == 1);
    REQUIRE(train(&d, JOB("plain", "")) == 1); /* published without optimizer state */
    CHECK_EQ_INT(score(&d, doc, "base", "", lp1), 1);

    /* at lr 1e-12 a warm start keeps the published parameters (and the
     * optimizer state loads); a cold start at the same settings does not */
#define TINY(model, extra)                                                                         \
    "{\"model\":\"" model "\",\"dataset\":{\"builtin\":\"moons\",\"n\":600,\"seed\":3},"            \
    "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"                               \
    "\"train\":{\"epochs\":1,\"batch_size\":100,\"lr\":1e-12,\"seed\":9}" extra "}"
    long long id = submit_job(&d, TINY("base", ",\"init\":{\"model\":\"base\",\"version\":\"latest\",\"optimizer\":true},"
                                               "\"publish\":{\"set_default\":false}"));
    REQUIRE(id > 0);
    char st[32];
    REQUIRE(wait_job(&d, id, 90, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "succeeded"), "state %s", st);
    cJSON *j = get_job(&d, id);
    /* the stored request pins the version it resolved */
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "request"), "init");
    CHECK_EQ_INT((int)jnum(in, "version"), 1);
    CHECK_EQ_INT((int)jnum(j, "version"), 2);
    cJSON_Delete(j);
    /* set_default false: unpinned calls stay on 1 */
    CHECK_EQ_INT(default_version(&d, doc, "base"), 1);
    CHECK_EQ_INT(score(&d, doc, "base", "", lpc), 1);
    CHECK_EQ_INT(score(&d, doc, "base", ",\"version\":2", lpw), 2);
    for (int i = 0; i < 5; i++) CHECK_CLOSE(lpw[i], lp1[i], 1e-4, 0);
    REQUIRE(train(&d, TINY("cold", "")) == 1);
    CHECK_EQ_INT(score(&d, doc, "cold", "", lpc), 1);
    double diff = 0;
    for (int i = 0; i < 5; i++) diff += fabs(lpc[i] - lp1[i]);
    CHECK_MSG(diff > 0.5, "a cold start scores as the trained model (sum |diff| %g): the warm-start check proves nothing", diff);

    /* refusals at submission, each naming what is wrong */
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":{\"model\":\"ghost\"}"), &r);
    check_error(doc, &r, 422, "invalid_input", "init.model");
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":{\"model\":\"base\",\"version\":99}"), &r);
    check_error(doc, &r, 422, "invalid_input", "init.version");
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":{\"model\":\"base\",\"version\":\"nope\"}"), &r);
    check_error(doc, &r, 422, "invalid_input", "init.version");
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":{\"model\":\"base\",\"version\":0}"), &r);
    check_error(doc, &r, 422, "invalid_input", NULL);
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":5"), &r);
    check_error(doc, &r, 422, "invalid_input", NULL);
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":{\"model\":\"base\",\"typo\":1}"), &r);
    check_error(doc, &r, 422, "invalid_input", NULL);
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"publish\":{\"set_default\":\"no\"}"), &r);
    check_error(doc, &r, 422, "invalid_input", NULL);
    http_post_json(&d, "/v1/jobs",
                   "{\"model\":\"w\",\"dataset\":{\"builtin\":\"moons\",\"n\":600},"
                   "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[32]},\"init\":{\"model\":\"base\"}}",
                   &r);
    CHECK_MSG(r.body && strstr(r.body, "parameters"), "%s", r.body);
    check_error(doc, &r, 422, "invalid_input", "init");
    http_post_json(&d, "/v1/jobs",
                   "{\"model\":\"w\",\"dataset\":{\"builtin\":\"moons\",\"n\":600},"
                   "\"flow\":{\"preset\":\"realnvp\",\"depth\":3,\"hidden\":[16]},\"init\":{\"model\":\"base\"}}",
                   &r);
    CHECK_MSG(r.body && strstr(r.body, "layer"), "%s", r.body);
    check_error(doc, &r, 422, "invalid_input", "init");
    http_post_json(&d, "/v1/jobs",
                   "{\"model\":\"w\",\"dataset\":{\"builtin\":\"moons\",\"n\":600},"
                   "\"flow\":{\"preset\":\"maf\",\"depth\":2,\"hidden\":[16]},\"init\":{\"model\":\"base\"}}",
                   &r);
    check_error(doc, &r, 422, "invalid_input", "init");
    http_post_json(&d, "/v1/jobs", JOB("w", ",\"init\":{\"model\":\"plain\",\"optimizer\":true}"), &r);
    CHECK_MSG(r.body && strstr(r.body, "optimizer"), "%s", r.body);
    check_error(doc, &r, 422, "invalid_input", "init.optimizer");
    /* a warm start cancelled and resumed still trains the published flow
     * (its standardisation, not the one of this job's split: seed 9's split
     * differs from seed 1's, which moves scores by ~0.01 nats) */
    id = submit_job(&d, "{\"model\":\"again\",\"dataset\":{\"builtin\":\"moons\",\"n\":600,\"seed\":3},"
                        "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                        "\"train\":{\"epochs\":400,\"batch_size\":100,\"lr\":1e-12,\"seed\":9,\"log_every\":5},"
                        "\"init\":{\"model\":\"base\",\"version\":1}}");
    REQUIRE(id > 0);
    double t0 = dmn_now();
    while (job_step(&d, id) < 300 && dmn_now() - t0 < 60) dmn_sleep_ms(20);
    char path[64];
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", id);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    hresp_free(&r);
    REQUIRE(wait_job(&d, id, 30, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "cancelled"), "state %s", st);
    snprintf(path, sizeof path, "/v1/jobs/%lld/resume", id);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    CHECK(ok_as(doc, &r, 202, "JobResumed") && jnum(r.json, "resume_step") > 0);
    hresp_free(&r);
    REQUIRE(wait_job(&d, id, 120, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "succeeded"), "state %s", st);
    CHECK_EQ_INT(score(&d, doc, "again", "", lpw), 1);
    for (int i = 0; i < 5; i++) CHECK_CLOSE(lpw[i], lp1[i], 1e-4, 0);

    /* without the optimizer, plain warm-starts fine */
    id = submit_job(&d, JOB("plain", ",\"init\":{\"model\":\"plain\"}"));
    CHECK(id > 0 && wait_job(&d, id, 90, st, sizeof st) == 0 && !strcmp(st, "succeeded"));
    CHECK_EQ_INT(default_version(&d, doc, "plain"), 2); /* set_default true by default */
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}

/* one integer the query (with %lld for the job id) reads from the daemon's
 * database, opened read-only beside it; -1 when there is none */
static long long db_int(dmn *d, const char *sql, long long id) {
    sqlite3 *h = NULL;
    long long v = -1;
    if (sqlite3_open_v2(d->db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(h, 5000);
        sqlite3_stmt *st = NULL;
        char q[160];
        snprintf(q, sizeof q, sql, id);
        if (sqlite3_prepare_v2(h, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return v;
}
static int db_attempts(dmn *d, long long id) {
    return (int)db_int(d, "SELECT start_attempts FROM jobs WHERE id = %lld", id);
}
/* the step of the job's saved training state, -1 without one */
static long long db_saved_step(dmn *d, long long id) {
    return db_int(d, "SELECT step FROM job_train_state WHERE job_id = %lld", id);
}

#define LONG_JOB(model)                                                                            \
    "{\"model\":\"" model "\",\"dataset\":{\"builtin\":\"moons\",\"n\":2000,\"seed\":3},"           \
    "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"                               \
    "\"train\":{\"epochs\":%d,\"batch_size\":100,\"log_every\":5}}"

static int job_step(dmn *d, long long id) {
    cJSON *j = get_job(d, id);
    int s = (int)jnum(cJSON_GetObjectItemCaseSensitive(j, "progress"), "step");
    cJSON_Delete(j);
    return s;
}

TEST_T(lifecycle_cancel_resume, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const env[] = {"FLOWD_CHECKPOINT_SECONDS=0.1", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    cJSON *doc = load_doc(&d);
    REQUIRE(doc);
    hresp r;
    char body[512], path[64], st[32];
    snprintf(body, sizeof body, LONG_JOB("res"), 150);
    long long id = submit_job(&d, body);
    REQUIRE(id > 0);
    /* running well past a checkpoint, then cancelled */
    double t0 = dmn_now();
    while (job_step(&d, id) < 200 && dmn_now() - t0 < 60) dmn_sleep_ms(20);
    REQUIRE(job_step(&d, id) >= 200);
    snprintf(path, sizeof path, "/v1/jobs/%lld/resume", id);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    check_error(doc, &r, 409, "not_resumable", NULL); /* running */
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", id);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    CHECK_EQ_INT((int)r.status, 202);
    hresp_free(&r);
    REQUIRE(wait_job(&d, id, 30, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "cancelled"), "state %s", st);
    int at_cancel = job_step(&d, id);

    /* resumed: continues from the saved step (not from 0) and succeeds */
    snprintf(path, sizeof path, "/v1/jobs/%lld/resume", id);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    CHECK(ok_as(doc, &r, 202, "JobResumed"));
    double rs = jnum(r.json, "resume_step");
    CHECK_MSG(rs >= 100 && rs <= at_cancel + 1, "resume_step %g, cancelled at %d", rs, at_cancel);
    hresp_free(&r);
    int min_step = 1 << 30;
    t0 = dmn_now();
    for (;;) {
        cJSON *j = get_job(&d, id);
        const char *s = jstr(j, "state");
        int step = (int)jnum(cJSON_GetObjectItemCaseSensitive(j, "progress"), "step");
        int fin = strcmp(s, "queued") && strcmp(s, "running");
        if (!strcmp(s, "running") && step > 0 && step != at_cancel && step < min_step) min_step = step;
        snprintf(st, sizeof st, "%s", s);
        cJSON_Delete(j);
        if (fin || dmn_now() - t0 > 90) break;
        dmn_sleep_ms(10);
    }
    CHECK_MSG(!strcmp(st, "succeeded"), "state %s", st);
    CHECK_MSG(min_step == 1 << 30 || min_step > rs, "progress at step %d after resuming at %g", min_step, rs);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    check_error(doc, &r, 409, "not_resumable", NULL); /* succeeded */

    /* a job cancelled while queued resumes from scratch (resume_step null) */
    snprintf(body, sizeof body, LONG_JOB("q1"), 400);
    long long a = submit_job(&d, body);
    snprintf(body, sizeof body, LONG_JOB("q2"), 2);
    long long b = submit_job(&d, body);
    REQUIRE(a > 0 && b > 0);
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", b);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    hresp_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", a);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    hresp_free(&r);
    REQUIRE(wait_job(&d, b, 30, st, sizeof st) == 0);
    CHECK(!strcmp(st, "cancelled"));
    snprintf(path, sizeof path, "/v1/jobs/%lld/resume", b);
    call(&d, "POST", path, NULL, NULL, 0, &r);
    CHECK(ok_as(doc, &r, 202, "JobResumed"));
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(r.json, "resume_step")));
    hresp_free(&r);
    CHECK(wait_job(&d, b, 60, st, sizeof st) == 0 && !strcmp(st, "succeeded"));

    /* a failed job without state, unknown and malformed ids */
    long long f = submit_job(&d, "{\"model\":\"f\",\"dataset\":{\"builtin\":\"moons\",\"n\":600},"
                                 "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                                 "\"train\":{\"epochs\":3,\"lr\":10,\"max_bad_batches\":1}}");
    REQUIRE(f > 0);
    REQUIRE(wait_job(&d, f, 60, st, sizeof st) == 0);
    if (!strcmp(st, "failed")) {
        snprintf(path, sizeof path, "/v1/jobs/%lld/resume", f);
        call(&d, "POST", path, NULL, NULL, 0, &r);
        check_error(doc, &r, 409, "no_saved_state", NULL);
    }
    call(&d, "POST", "/v1/jobs/99999/resume", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call(&d, "POST", "/v1/jobs/abc/resume", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    call(&d, "GET", "/v1/jobs/1/resume", NULL, NULL, 0, &r);
    check_error(doc, &r, 405, "method_not_allowed", NULL);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}

/* A job that is running whenever the daemon dies (SIGKILL, as the kernel's
 * OOM killer does) without saving progress: restarted FD_JOB_MAX_RESTARTS
 * times, then failed with the reason at the next start; the daemon serves
 * on and runs other jobs. */
TEST_T(lifecycle_bounded_restarts_after_sigkill, 240) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    /* no snapshot in the test's time: every start dies without progress */
    static const char *const env[] = {"FLOWD_CHECKPOINT_SECONDS=1000", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    char body[512], st[32];
    snprintf(body, sizeof body, LONG_JOB("oom"), 100000);
    long long id = submit_job(&d, body);
    REQUIRE(id > 0);
    for (int start = 1; start <= 1 + FD_JOB_MAX_RESTARTS; start++) {
        /* this start has taken the job (its attempt counted) and trains */
        double t0 = dmn_now();
        int steps0 = job_step(&d, id);
        while ((db_attempts(&d, id) != start || job_step(&d, id) == steps0) && dmn_now() - t0 < 30)
            dmn_sleep_ms(20);
        CHECK_EQ_INT(db_attempts(&d, id), start);
        cJSON *j = get_job(&d, id);
        CHECK_MSG(!strcmp(jstr(j, "state"), "running"), "start %d: state %s", start, jstr(j, "state"));
        cJSON_Delete(j);
        dmn_kill9(&d);
        REQUIRE(dmn_start(&d, NULL, env) == 0);
    }
    /* this start finds it has died 4 times in a row: failed, with why */
    REQUIRE(wait_job(&d, id, 30, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "failed"), "state %s", st);
    cJSON *j = get_job(&d, id);
    const char *e = jstr(j, "error");
    CHECK_MSG(strstr(e, "died 4 times") && strstr(e, "resume"), "error: %s", e);
    cJSON_Delete(j);
    CHECK(dmn_healthy(&d));
    /* it does not come back at the next start either, and others run */
    dmn_kill9(&d);
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    j = get_job(&d, id);
    CHECK(!strcmp(jstr(j, "state"), "failed"));
    cJSON_Delete(j);
    CHECK(train(&d, JOB("after", "")) == 1);
    dmn_cleanup(&d);
}

/* A job that saves progress between the kills is not a crash loop: it is
 * restarted as often as it takes and succeeds. */
TEST_T(lifecycle_restarts_with_progress_go_on, 240) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const env[] = {"FLOWD_CHECKPOINT_SECONDS=0.05", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    char body[512], st[32];
    snprintf(body, sizeof body, LONG_JOB("prog"), 600);
    long long id = submit_job(&d, body);
    REQUIRE(id > 0);
    long long saved = -1;
    for (int k = 0; k < 2 + FD_JOB_MAX_RESTARTS; k++) {
        double t0 = dmn_now();
        /* this start stored a newer state, and that reset the count to 1
         * (a start counts itself first: 2 until then) */
        while (!(db_saved_step(&d, id) > saved && db_attempts(&d, id) == 1) && dmn_now() - t0 < 30)
            dmn_sleep_ms(5);
        dmn_kill9(&d);
        long long now = db_saved_step(&d, id);
        CHECK_MSG(now > saved, "kill %d: no new snapshot (step %lld, before %lld)", k, now, saved);
        saved = now;
        CHECK_EQ_INT(db_attempts(&d, id), 1);
        REQUIRE(dmn_start(&d, NULL, env) == 0);
    }
    REQUIRE(wait_job(&d, id, 120, st, sizeof st) == 0);
    CHECK_MSG(!strcmp(st, "succeeded"), "state %s", st);
    dmn_cleanup(&d);
}

/* A read token cannot change aliases, versions or jobs. */
TEST_T(lifecycle_write_scope, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    FILE *f = fopen(dmn_path(&d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "read rtok-0123456789abcdef\nwrite wtok-0123456789abcdef\n");
    fclose(f);
    const char *args[] = {"--token-file", dmn_path(&d, "tokens"), NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    d.token = "rtok-0123456789abcdef";
    cJSON *doc = load_doc(&d);
    REQUIRE(doc);
    hresp r;
    call_json(&d, "PUT", "/v1/models/m/aliases/prod", "{\"version\":1}", &r);
    check_error(doc, &r, 403, "permission_denied", NULL);
    call(&d, "DELETE", "/v1/models/m/aliases/prod", NULL, NULL, 0, &r);
    check_error(doc, &r, 403, "permission_denied", NULL);
    call(&d, "POST", "/v1/models/m/versions", "application/octet-stream", "x", 1, &r);
    check_error(doc, &r, 403, "permission_denied", NULL);
    call(&d, "DELETE", "/v1/models/m/versions/1", NULL, NULL, 0, &r);
    check_error(doc, &r, 403, "permission_denied", NULL);
    call(&d, "POST", "/v1/jobs/1/resume", NULL, NULL, 0, &r);
    check_error(doc, &r, 403, "permission_denied", NULL);
    d.token = "wtok-0123456789abcdef";
    call(&d, "DELETE", "/v1/models/m/versions/1", NULL, NULL, 0, &r);
    check_error(doc, &r, 404, "not_found", NULL);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}

/* ---- flowctl --------------------------------------------------------------------------------- */
/* Runs the flowctl next to this binary against d with args (NULL-ended);
 * stdout into out (NUL-terminated, at most n bytes).  The exit status. */
static int flowctl(dmn *d, char *out, size_t n, const char *const *args) {
    char bin[1100], self[1024], url[64], outp[200];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) return -1;
    self[k] = 0;
    *strrchr(self, '/') = 0;
    snprintf(bin, sizeof bin, "%s/flowctl", self);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", d->port);
    snprintf(outp, sizeof outp, "%s", dmn_path(d, "flowctl.out"));
    const char *argv[24] = {"flowctl", "--url", url};
    int a = 3;
    for (int i = 0; args[i] && a < 23; i++) argv[a++] = args[i];
    argv[a] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo >= 0) dup2(fo, 1);
        unsetenv("FLOWD_TOKEN");
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    FILE *f = fopen(outp, "r");
    size_t got = f ? fread(out, 1, n - 1, f) : 0;
    out[got] = 0;
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

TEST_T(lifecycle_flowctl, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const env[] = {"FLOWD_CHECKPOINT_SECONDS=0.1", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    cJSON *doc = load_doc(&d);
    REQUIRE(doc);
    char out[8192];
    REQUIRE(train(&d, JOB("m", "")) == 1);
    size_t flen = 0;
    char *file = download(&d, "/v1/models/m/versions/1/checkpoint", &flen);
    REQUIRE(file);
    FILE *f = fopen(dmn_path(&d, "m.flow"), "wb");
    REQUIRE(f);
    fwrite(file, 1, flen, f);
    fclose(f);
    free(file);
    char mpath[200];
    snprintf(mpath, sizeof mpath, "%s", dmn_path(&d, "m.flow"));

    /* push: v2 the default; --no-default: v3 is not */
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"push", mpath, "--name", "m", NULL}), 0);
    CHECK_MSG(strstr(out, "m version 2") && strstr(out, "default version 2"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"push", mpath, "--name", "m", "--no-default", NULL}), 0);
    CHECK_MSG(strstr(out, "m version 3") && strstr(out, "default version 2"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"push", "/nonexistent.flow", "--name", "m", NULL}), 1);
    /* aliases: set, show, list, model shows them, score with one */
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"alias", "m", "prod", "3", NULL}), 0);
    CHECK_MSG(strstr(out, "prod -> version 3"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"alias", "m", "prod", NULL}), 0);
    CHECK_MSG(!strcmp(out, "3\n"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"alias", "m", NULL}), 0);
    CHECK_MSG(strstr(out, "default") && strstr(out, "prod"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"model", "m", NULL}), 0);
    CHECK_MSG(strstr(out, "default  version 2") && strstr(out, "prod"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"alias", "m", "x", "99", NULL}), 2);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"alias", "m", "x", "no/pe", NULL}), 1);
    f = fopen(dmn_path(&d, "rows.csv"), "w");
    REQUIRE(f);
    fprintf(f, "a,b\n0.1,0.2\n");
    fclose(f);
    char rpath[200];
    snprintf(rpath, sizeof rpath, "%s", dmn_path(&d, "rows.csv"));
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"score", "m", rpath, "--version", "prod", NULL}), 0);
    CHECK_MSG(strstr(out, "log_prob"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"score", "m", rpath, "--version", "nope", NULL}), 2);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"sample", "m", "-n", "2", "--version", "prod", NULL}), 0);
    /* delete-version: refused while aliased, then done */
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"delete-version", "m", "3", NULL}), 2);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"alias", "m", "prod", "--delete", NULL}), 0);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"delete-version", "m", "3", NULL}), 0);
    CHECK_MSG(strstr(out, "version 3 of m deleted"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"delete-version", "m", "x", NULL}), 1);
    /* resume a cancelled job */
    char body[512], path[64], st[32];
    snprintf(body, sizeof body, LONG_JOB("r"), 400);
    long long id = submit_job(&d, body);
    REQUIRE(id > 0);
    double t0 = dmn_now();
    while (job_step(&d, id) < 100 && dmn_now() - t0 < 60) dmn_sleep_ms(20);
    snprintf(path, sizeof path, "%lld", id);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"cancel", path, NULL}), 0);
    REQUIRE(wait_job(&d, id, 30, st, sizeof st) == 0);
    CHECK(!strcmp(st, "cancelled"));
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"resume", path, NULL}), 0);
    CHECK_MSG(strstr(out, "resumes at step"), "%s", out);
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"resume", path, NULL}), 2); /* queued/running now */
    CHECK_EQ_INT(flowctl(&d, out, sizeof out, (const char *[]){"cancel", path, NULL}), 0);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}
