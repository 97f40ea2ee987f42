/* test_browser.c: what a web page in the user's browser can make a
 * no-token daemon do (issue 15).
 *
 *  - A form can post a body as application/x-www-form-urlencoded,
 *    multipart/form-data or text/plain without a CORS check: each is 415 on
 *    every write route, as is a body with no Content-Type, and nothing is
 *    queued or stored.  The declared types still work (with parameters).
 *  - A fetch from another origin carries Origin: 403 (reason "origin"), and
 *    nothing changes; the daemon's own origin passes (the dashboard), and
 *    an --allow-origin one passes with Access-Control-Allow-Origin, its
 *    preflight answered 204.
 *  - DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own
 *    name in Host: 403 (reason "host") on every route without tokens;
 *    127.0.0.1 and localhost pass, and with tokens Host is not checked. */
#include "../test.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOB "{\"model\":\"b\",\"dataset\":{\"builtin\":\"moons\",\"n\":200},\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},\"train\":{\"epochs\":1}}"

static const char *reason_of(const hresp *r) {
    const cJSON *e = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "error") : NULL;
    const cJSON *d = e ? cJSON_GetObjectItemCaseSensitive(e, "details") : NULL;
    const cJSON *l = d ? cJSON_GetObjectItemCaseSensitive(d, "reason") : NULL;
    return cJSON_IsString(l) ? l->valuestring : "";
}

static long send(dmn *d, const char *method, const char *path, const char *ctype, const char *body,
                 const char *const *headers, hresp *r) {
    hreq q = {.method = method, .path = path, .ctype = ctype, .body = body, .len = body ? strlen(body) : 0,
              .has_body = body != NULL, .headers = headers};
    dmn_http(d, &q, r);
    return r->status;
}

static int count_of(dmn *d, const char *path, const char *key) {
    hresp r;
    int n = -1;
    if (http_get(d, path, &r) == 0 && r.status == 200 && r.json)
        n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, key));
    hresp_free(&r);
    return n;
}

TEST(browser_form_encodings_refused) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    const char *forms[] = {"application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain",
                           NULL};
    hresp r;
    for (int i = 0; i < 4; i++) {
        const char *ct = forms[i];
        const char *none[] = {"Content-Type:", NULL}; /* curl leaves the header out */
        const char *const *hd = ct ? NULL : none;
        send(&d, "POST", "/v1/jobs", ct, JOB, hd, &r);
        CHECK_MSG(r.status == 415, "job as %s: %ld", ct ? ct : "(none)", r.status);
        CHECK(!strcmp(hresp_error_code(&r), "unsupported_media_type"));
        hresp_free(&r);
        send(&d, "POST", "/v1/datasets?name=x", ct, "a,b\n1,2\n3,4\n", hd, &r);
        CHECK_MSG(r.status == 415, "dataset as %s: %ld", ct ? ct : "(none)", r.status);
        hresp_free(&r);
        send(&d, "POST", "/v1/models/m/log_prob", ct, "{\"inputs\":[[1,2]]}", hd, &r);
        CHECK_MSG(r.status == 415, "log_prob as %s: %ld", ct ? ct : "(none)", r.status);
        hresp_free(&r);
    }
    CHECK_EQ_INT(count_of(&d, "/v1/jobs", "jobs"), 0);
    CHECK_EQ_INT(count_of(&d, "/v1/datasets", "datasets"), 0);
    /* the declared types, parameters allowed */
    send(&d, "POST", "/v1/models/m/log_prob", "application/json; charset=utf-8", "{\"inputs\":[[1,2]]}", NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    send(&d, "POST", "/v1/datasets?name=x", "text/csv", "a,b\n1,2\n3,4\n", NULL, &r);
    CHECK_EQ_INT(r.status, 201);
    hresp_free(&r);
    /* a POST without a body needs no type (cancel); an empty one is the handler's error */
    send(&d, "POST", "/v1/jobs/999/cancel", NULL, NULL, NULL, &r);
    CHECK_EQ_INT(r.status, 404);
    hresp_free(&r);
    dmn_cleanup(&d);
}

TEST(browser_cross_origin_refused) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    const char *args[] = {"--allow-origin", "https://app.example:8443", "--allow-origin", "http://two.example",
                          "--workers", "0", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    hresp r;
    const char *evil[] = {"Origin: http://evil.example", NULL};
    const char *null_origin[] = {"Origin: null", NULL};
    send(&d, "POST", "/v1/jobs", "application/json", JOB, evil, &r);
    CHECK_EQ_INT(r.status, 403);
    CHECK(!strcmp(hresp_error_code(&r), "permission_denied") && !strcmp(reason_of(&r), "origin"));
    hresp_free(&r);
    send(&d, "POST", "/v1/jobs", "application/json", JOB, null_origin, &r);
    CHECK_EQ_INT(r.status, 403);
    hresp_free(&r);
    send(&d, "DELETE", "/v1/models/m", NULL, NULL, evil, &r);
    CHECK_EQ_INT(r.status, 403);
    hresp_free(&r);
    send(&d, "GET", "/v1/models", NULL, NULL, evil, &r);
    CHECK_EQ_INT(r.status, 403);
    hresp_free(&r);
    send(&d, "OPTIONS", "/v1/jobs", NULL, NULL, evil, &r);
    CHECK_EQ_INT(r.status, 403);
    hresp_free(&r);
    CHECK_EQ_INT(count_of(&d, "/v1/jobs", "jobs"), 0);
    CHECK_EQ_INT(count_of(&d, "/v1/models", "models"), 1);
    /* the daemon's own origin: the dashboard's fetches */
    char own[96];
    snprintf(own, sizeof own, "Origin: http://127.0.0.1:%d", d.port);
    const char *same[] = {own, NULL};
    send(&d, "POST", "/v1/models/m/log_prob", "application/json", "{\"inputs\":[[1,2]]}", same, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    /* an allowed origin: answered, and told so */
    const char *app[] = {"Origin: https://app.example:8443", NULL};
    send(&d, "POST", "/v1/jobs", "application/json", JOB, app, &r);
    CHECK_EQ_INT(r.status, 202);
    char v[128];
    CHECK(hresp_header(&r, "Access-Control-Allow-Origin", v, sizeof v) && !strcmp(v, "https://app.example:8443"));
    hresp_free(&r);
    const char *pre[] = {"Origin: http://two.example", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: content-type", NULL};
    send(&d, "OPTIONS", "/v1/jobs", NULL, NULL, pre, &r);
    CHECK_EQ_INT(r.status, 204);
    CHECK(hresp_header(&r, "Access-Control-Allow-Methods", v, sizeof v) && strstr(v, "POST"));
    CHECK(hresp_header(&r, "Access-Control-Allow-Headers", v, sizeof v) && strstr(v, "Content-Type"));
    hresp_free(&r);
    CHECK_EQ_INT(count_of(&d, "/v1/jobs", "jobs"), 1);
    dmn_cleanup(&d);
}

TEST(browser_dns_rebinding_host_checked) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    hresp r;
    char h[96];
    snprintf(h, sizeof h, "Host: rebind.example:%d", d.port);
    const char *rebound[] = {h, NULL};
    const char *paths[] = {"/v1/models", "/v1/jobs", "/metrics", "/v1/models/m/versions/1/checkpoint", "/"};
    for (int i = 0; i < 5; i++) {
        send(&d, "GET", paths[i], NULL, NULL, rebound, &r);
        CHECK_MSG(r.status == 403 && !strcmp(reason_of(&r), "host"), "GET %s with %s: %ld", paths[i], h, r.status);
        hresp_free(&r);
    }
    /* with the page's own origin too, as a rebound page sends it */
    char o[96];
    snprintf(o, sizeof o, "Origin: http://rebind.example:%d", d.port);
    const char *both[] = {h, o, NULL};
    send(&d, "POST", "/v1/jobs", "application/json", JOB, both, &r);
    CHECK_EQ_INT(r.status, 403);
    hresp_free(&r);
    CHECK_EQ_INT(count_of(&d, "/v1/jobs", "jobs"), 0);
    const char *okh[] = {"Host: localhost", NULL};
    snprintf(h, sizeof h, "Host: 127.0.0.1:%d", d.port);
    const char *okh2[] = {h, NULL};
    send(&d, "GET", "/v1/models", NULL, NULL, okh, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    send(&d, "GET", "/v1/models", NULL, NULL, okh2, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    dmn_stop(&d);
    /* with tokens the daemon may sit behind any name: Host is not checked */
    FILE *f = fopen(dmn_path(&d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "read r3adr3adr3adr3adr3adr3adr3ad\n");
    fclose(f);
    const char *args[] = {"--token-file", dmn_path(&d, "tokens"), NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    d.token = "r3adr3adr3adr3adr3adr3adr3ad";
    const char *named[] = {"Host: flowd.internal", NULL};
    send(&d, "GET", "/v1/models", NULL, NULL, named, &r);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    dmn_cleanup(&d);
}
