/* test_bounded.c: what one request may cost the daemon, beyond its body
 * (issue 15):
 *  - a job is stored as its parsed request printed compactly: a body padded
 *    with 10 MB of whitespace stores a row of its fields' size, and GET
 *    /v1/jobs/{id} gives the same request back. */
#include "../test.h"

#include "daemon.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long raw_len(const char *db, long long id) {
    sqlite3 *h = NULL;
    long long v = -1;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "SELECT length(request) FROM jobs WHERE id = ?1", -1, &st, NULL) ==
            SQLITE_OK) {
            sqlite3_bind_int64(st, 1, id);
            if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return v;
}

TEST_T(bounded_job_body_stored_compact, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    static const char *const parts[] = {
        "{", "\"model\"", ":", "\"pad\"", ",", "\"dataset\"", ":", "{", "\"builtin\"", ":",
        "\"moons\"", ",", "\"n\"", ":", "500", "}", ",", "\"flow\"", ":", "{", "\"preset\"", ":",
        "\"realnvp\"", ",", "\"depth\"", ":", "2", ",", "\"hidden\"", ":", "[", "8", "]", "}", ",",
        "\"train\"", ":", "{", "\"epochs\"", ":", "1", "}", "}"};
    size_t np = sizeof parts / sizeof parts[0], pad = 10u << 20, each = pad / (np - 1);
    char *body = malloc(pad + 4096), *p = body;
    REQUIRE(body);
    for (size_t i = 0; i < np; i++) {
        p += sprintf(p, "%s", parts[i]);
        if (i + 1 < np) {
            for (size_t k = 0; k < each; k++) *p++ = " \n\t\r"[k & 3];
        }
    }
    *p = 0;
    size_t len = (size_t)(p - body);
    CHECK(len > pad);
    hresp r;
    hreq q = {.method = "POST", .path = "/v1/jobs", .ctype = "application/json", .body = body,
              .len = len, .has_body = 1, .timeout_s = 60};
    REQUIRE(dmn_http(&d, &q, &r) == 0);
    CHECK_MSG(r.status == 202, "%ld %s", r.status, r.body);
    long long id = atoll(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.json, "id")) ?: "0");
    hresp_free(&r);
    free(body);
    REQUIRE(id > 0);
    long long stored = raw_len(d.db, id);
    CHECK_MSG(stored > 0 && stored < 200, "the stored request is %lld bytes", stored);
    cJSON *j = get_job(&d, id);
    char *req = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "request"));
    CHECK_MSG(req && !strcmp(req, "{\"model\":\"pad\",\"dataset\":{\"builtin\":\"moons\",\"n\":500},"
                                  "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},"
                                  "\"train\":{\"epochs\":1}}"),
              "request: %s", req);
    free(req);
    cJSON_Delete(j);
    char st[32];
    CHECK(wait_job(&d, id, 60, st, sizeof st) == 0 && !strcmp(st, "succeeded"));
    dmn_cleanup(&d);
}
