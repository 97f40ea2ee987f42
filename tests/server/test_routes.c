/* test_routes.c: the route table and the HTTP plumbing of server/http.c.
 *  - routes_labels_from_table: every route row has a method and a label
 *    (its pattern), no two rows share method and label, and the Prometheus
 *    output names each route number with its method and the label it has
 *    always had (the metric contract: dashboards and alerts key on these
 *    strings), one series per (method, route, code).
 *  - http_responses_share_headers: one of each kind of response (JSON,
 *    error, 405, static file, download, JSON with Location, event stream,
 *    empty 204) from the real daemon carries X-Request-Id (echoing the
 *    request's), Cache-Control: no-store exactly once and its own headers. */
#include "../test.h"

#include "daemon.h"
#include "oapi.h"

#include "../../server/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* the labels of flowd_http_* metrics by route number, as published */
static const char *const published[] = {
    "/healthz", "/readyz", "/metrics", "/openapi.yaml", "/v1/version", "/v1/models",
    "/v1/models/{name}", "/v1/models/{name}", "/v1/models/{name}/log_prob",
    "/v1/models/{name}/sample", "/v1/models/{name}/encode", "/v1/models/{name}/decode",
    "/v1/models/{name}/versions/{v}/checkpoint", "/v1/datasets", "/v1/datasets",
    "/v1/datasets/{id}", "/v1/datasets/{id}", "/v1/jobs", "/v1/jobs", "/v1/jobs/{id}",
    "/v1/jobs/{id}/metrics", "/v1/jobs/{id}/events", "/v1/jobs/{id}/cancel",
    "/v1/models/{name}/evaluate", "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}",
    "/v2/models/{name}/versions/{v}", "/v2/models/{name}/ready", "/v2/models/{name}/versions/{v}/ready",
    "/v2/models/{name}/infer", "/v2/models/{name}/versions/{v}/infer", "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{v}:predict", "/openapi.json", "unmatched",
};

TEST(routes_labels_from_table) {
    int n = fd_route_count;
    REQUIRE(n >= 2 && n <= FD_MAX_ROUTES);
    CHECK(!strcmp(fd_route_label(n - 1), "unmatched"));
    for (int i = 0; i < n - 1; i++) {
        const char *l = fd_route_label(i), *m = fd_route_method(i);
        CHECK_MSG(l && l[0] == '/', "route %d has no label", i);
        CHECK_MSG(m && *m, "route %d has no method", i);
        for (int j = 0; j < i; j++)
            CHECK_MSG(strcmp(l, fd_route_label(j)) || strcmp(m, fd_route_method(j)),
                      "routes %d and %d are both %s %s", j, i, m, l);
    }
    /* new routes are appended: the published numbers keep their labels */
    int np = (int)(sizeof published / sizeof published[0]);
    CHECK_MSG(n >= np, "%d routes, %d published", n, np);
    for (int i = 0; i < np - 1 && i < n - 1; i++)
        CHECK_MSG(!strcmp(fd_route_label(i), published[i]), "route %d: %s, published %s", i, fd_route_label(i),
                  published[i]);

    /* the rendered metrics carry the table's labels, byte for byte */
    char path[] = "/tmp/flowd_test_routes_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    fd_db *db = NULL;
    char err[256] = "";
    REQUIRE(fd_db_open(path, &db, err, sizeof err) == 0);
    fd_server s;
    memset(&s, 0, sizeof s);
    s.metrics = fd_metrics_create();
    s.cache = fd_cache_create(1, 0);
    REQUIRE(s.metrics && s.cache);
    for (int i = 0; i < n; i++) fd_metrics_request(s.metrics, i, 200 + i % 2, 0.001);
    char *text = fd_metrics_render(&s, db);
    REQUIRE(text);
    for (int i = 0; i < n; i++) {
        const char *l = i == n - 1 ? "unmatched" : i < np - 1 ? published[i] : fd_route_label(i);
        char want[256];
        const char *m = i == n - 1 ? "any" : fd_route_method(i);
        snprintf(want, sizeof want, "flowd_http_request_duration_seconds_count{method=\"%s\",route=\"%s\"} 1\n", m, l);
        CHECK_MSG(strstr(text, want) != NULL, "missing: %s", want);
        snprintf(want, sizeof want, "flowd_http_requests_total{method=\"%s\",route=\"%s\",code=\"%d\"} 1\n", m, l,
                 200 + i % 2);
        CHECK_MSG(strstr(text, want) != NULL, "missing: %s", want);
    }
    free(text);
    fd_cache_free(s.cache);
    fd_metrics_free(s.metrics);
    fd_db_close(db);
    unlink(path);
}

/* how many times a header appears */
static int header_count(const hresp *r, const char *name) {
    int k = 0;
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        if (!strncasecmp(p, name, nl) && p[nl] == ':') k++;
        const char *eol = strchr(p, '\n');
        if (!eol) break;
        p = eol + 1;
    }
    return k;
}

#define RID "routes-test-1"
static const char *const rid_hdr[] = {"X-Request-Id: " RID, NULL};

/* the headers every response carries; ctype: expected Content-Type prefix
 * (NULL: none expected) */
static void check_common(const char *what, const hresp *r, long status, const char *ctype) {
    char v[256];
    CHECK_MSG(r->status == status, "%s: status %ld, want %ld: %.200s", what, r->status, status,
              r->body ? r->body : "");
    CHECK_MSG(hresp_header(r, "X-Request-Id", v, sizeof v) && !strcmp(v, RID), "%s: X-Request-Id: %s", what,
              r->headers);
    CHECK_MSG(header_count(r, "X-Request-Id") == 1, "%s: X-Request-Id twice: %s", what, r->headers);
    CHECK_MSG(hresp_header(r, "Cache-Control", v, sizeof v) && !strcmp(v, "no-store"), "%s: Cache-Control: %s",
              what, r->headers);
    CHECK_MSG(header_count(r, "Cache-Control") == 1, "%s: Cache-Control twice: %s", what, r->headers);
    if (ctype)
        CHECK_MSG(hresp_header(r, "Content-Type", v, sizeof v) && !strncmp(v, ctype, strlen(ctype)),
                  "%s: Content-Type: %s", what, r->headers);
}

static void fetch(dmn *d, const char *method, const char *path, const char *ctype, const char *body, hresp *r) {
    hreq q = {.method = method, .path = path, .headers = rid_hdr, .ctype = ctype, .body = body,
              .len = body ? strlen(body) : 0, .has_body = body != NULL};
    dmn_http(d, &q, r);
}

static void responses_body(dmn *d) {
    static const char *const args[] = {NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    hresp r;
    char v[256];
    fetch(d, "GET", "/healthz", NULL, NULL, &r);
    check_common("json", &r, 200, "application/json");
    hresp_free(&r);
    fetch(d, "GET", "/v1/models/nosuch", NULL, NULL, &r);
    check_common("error", &r, 404, "application/json");
    hresp_free(&r);
    fetch(d, "PUT", "/v1/models", NULL, NULL, &r);
    check_common("405", &r, 405, "application/json");
    CHECK_MSG(hresp_header(&r, "Allow", v, sizeof v) && !strcmp(v, "GET"), "Allow: %s", r.headers);
    hresp_free(&r);
    fetch(d, "GET", "/openapi.yaml", NULL, NULL, &r);
    check_common("openapi", &r, 200, "application/yaml");
    CHECK(r.len > 100 && strstr(r.body, "openapi:"));
    hresp_free(&r);
    fetch(d, "GET", "/", NULL, NULL, &r);
    check_common("dashboard", &r, 200, NULL);
    CHECK_MSG(hresp_header(&r, "Content-Type", v, sizeof v) &&
                  (!strcmp(v, "text/html; charset=utf-8") || !strcmp(v, "application/json")),
              "dashboard: %s", r.headers);
    hresp_free(&r);
    /* JSON with Location: a dataset (201) and a job (202) */
    fetch(d, "POST", "/v1/datasets?name=pts", "text/csv", "x,y\n0,1\n1,0\n2,2\n", &r);
    check_common("dataset", &r, 201, "application/json");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r.json, "id");
    char loc[128];
    snprintf(loc, sizeof loc, "/v1/datasets/%s", cJSON_IsString(id) ? id->valuestring : "?");
    CHECK_MSG(hresp_header(&r, "Location", v, sizeof v) && !strcmp(v, loc), "Location: %s", r.headers);
    hresp_free(&r);
    fetch(d, "DELETE", loc, NULL, NULL, &r);
    check_common("204", &r, 204, NULL);
    CHECK_EQ_INT(r.len, 0);
    hresp_free(&r);
    fetch(d, "POST", "/v1/jobs", "application/json",
          "{\"model\":\"rt\",\"dataset\":{\"builtin\":\"moons\",\"n\":256,\"seed\":1},"
          "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},\"train\":{\"epochs\":1,\"batch_size\":128}}",
          &r);
    check_common("job", &r, 202, "application/json");
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(r.json, "id");
    REQUIRE(cJSON_IsString(jid));
    long long job = atoll(jid->valuestring);
    snprintf(loc, sizeof loc, "/v1/jobs/%lld", job);
    CHECK_MSG(hresp_header(&r, "Location", v, sizeof v) && !strcmp(v, loc), "Location: %s", r.headers);
    hresp_free(&r);
    char state[32] = "";
    REQUIRE(wait_job(d, job, 60, state, sizeof state) == 0);
    REQUIRE(!strcmp(state, "succeeded"));
    /* the event stream of the finished job ends with its state */
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%lld/events", job);
    fetch(d, "GET", path, NULL, NULL, &r);
    check_common("events", &r, 200, "text/event-stream");
    CHECK_MSG(r.body && strstr(r.body, "event: state\n"), "events: %.300s", r.body ? r.body : "");
    hresp_free(&r);
    /* a download: the model file as an attachment */
    fetch(d, "GET", "/v1/models/rt/versions/1/checkpoint", NULL, NULL, &r);
    check_common("download", &r, 200, "application/octet-stream");
    CHECK_MSG(hresp_header(&r, "Content-Disposition", v, sizeof v) &&
                  !strcmp(v, "attachment; filename=\"rt-v1.flow\""),
              "Content-Disposition: %s", r.headers);
    CHECK(r.len > 0);
    hresp_free(&r);
}

TEST_T(http_responses_share_headers, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    responses_body(&d);
    dmn_cleanup(&d);
}

/* ---- the route table against schema/openapi.yaml -------------------------------------------- */
/* pattern with every "{x}" as "{}" (the table says {v}, the document {version}) */
static void norm(const char *p, char *out, size_t n) {
    size_t k = 0;
    for (; *p && k + 3 < n; p++) {
        out[k++] = *p;
        if (*p == '{') {
            while (*p && *p != '}') p++;
            if (!*p) break;
            out[k++] = '}';
        }
    }
    out[k] = 0;
}

extern const char fd_asset_openapi[], fd_asset_openapi_json[];
extern const unsigned long fd_asset_openapi_len, fd_asset_openapi_json_len;

/* Every row of the route table is an operation of the built-in
 * openapi.yaml and every operation a row (a route added without its
 * contract, or a documented one that is gone, fails); /openapi.json is the
 * same document. */
TEST(routes_match_openapi) {
    char err[300] = "";
    cJSON *doc = oapi_parse(fd_asset_openapi, fd_asset_openapi_len, err, sizeof err);
    REQUIRE(doc);
    cJSON *json = cJSON_ParseWithLength(fd_asset_openapi_json, fd_asset_openapi_json_len);
    CHECK_MSG(json && cJSON_Compare(doc, json, 1), "/openapi.json is not openapi.yaml");
    cJSON_Delete(json);
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(doc, "paths"), *p;
    int ops = 0;
    cJSON_ArrayForEach(p, paths) {
        static const char *const methods[] = {"get", "post", "put", "delete", "patch"};
        for (int m = 0; m < 5; m++) {
            if (!cJSON_GetObjectItemCaseSensitive(p, methods[m])) continue;
            ops++;
            char want[256], got[256];
            norm(p->string, want, sizeof want);
            int found = 0;
            for (int i = 0; i < fd_route_count - 1 && !found; i++) {
                norm(fd_route_label(i), got, sizeof got);
                found = !strcmp(got, want) && !strcasecmp(fd_route_method(i), methods[m]);
            }
            CHECK_MSG(found, "openapi.yaml documents %s %s, which no route serves", methods[m], p->string);
        }
    }
    for (int i = 0; i < fd_route_count - 1; i++) {
        char want[256], got[256];
        norm(fd_route_label(i), want, sizeof want);
        int found = 0;
        cJSON_ArrayForEach(p, paths) {
            norm(p->string, got, sizeof got);
            char m[16];
            snprintf(m, sizeof m, "%s", fd_route_method(i));
            for (char *c = m; *c; c++) *c = (char)(*c - 'A' + 'a');
            found |= !strcmp(got, want) && cJSON_GetObjectItemCaseSensitive(p, m) != NULL;
        }
        CHECK_MSG(found, "route %s %s is not in openapi.yaml", fd_route_method(i), fd_route_label(i));
    }
    CHECK_EQ_INT(ops, fd_route_count - 1);
    cJSON_Delete(doc);
}
