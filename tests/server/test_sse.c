/* test_sse.c: the job event stream's reconnection contract (api_jobs.c):
 * the stream opens with `retry:`, every progress event carries `id:` (its
 * step, the step in its data), and a client that reconnects with
 * Last-Event-ID gets exactly the events after that step; a Last-Event-ID
 * that is not a step is 400. */
#include "../test.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    long long id; /* -2: none */
    char event[32];
    long long step; /* from the data, -2: none */
} sse_event;

/* parses body into at most max events; returns the count */
static int parse(const char *body, sse_event *ev, int max, int *retry) {
    int n = 0;
    *retry = -1;
    sse_event cur = {.id = -2, .step = -2};
    int has = 0;
    for (const char *p = body; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len == 0) { /* dispatch */
            if (has && n < max) ev[n++] = cur;
            cur = (sse_event){.id = -2, .step = -2};
            has = 0;
        } else if (!strncmp(p, "retry: ", 7)) {
            *retry = atoi(p + 7);
        } else if (!strncmp(p, "id: ", 4)) {
            cur.id = atoll(p + 4);
            has = 1;
        } else if (!strncmp(p, "event: ", 7)) {
            snprintf(cur.event, sizeof cur.event, "%.*s", (int)(len - 7), p + 7);
            has = 1;
        } else if (!strncmp(p, "data: ", 6)) {
            const char *s = strstr(p, "\"step\":");
            if (s && s < p + len) cur.step = atoll(s + 7);
            has = 1;
        }
        p = eol ? eol + 1 : NULL;
    }
    return n;
}

static void sse_body(dmn *d) {
    static const char *const args[] = {NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    long long job = submit_job(d, "{\"model\":\"s\",\"dataset\":{\"builtin\":\"moons\",\"n\":512,\"seed\":1},"
                                  "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},"
                                  "\"train\":{\"epochs\":3,\"batch_size\":64,\"log_every\":1}}");
    REQUIRE(job > 0);
    char state[32], path[96];
    REQUIRE(wait_job(d, job, 60, state, sizeof state) == 0 && !strcmp(state, "succeeded"));
    snprintf(path, sizeof path, "/v1/jobs/%lld/events", job);
    hresp r;
    hreq q = {.path = path, .timeout_s = 20};
    dmn_http(d, &q, &r);
    REQUIRE(r.status == 200 && r.body);
    CHECK_MSG(!strncmp(r.body, "retry: 2000\n\n", 13), "the stream does not open with retry: %.80s", r.body);
    static sse_event all[4096], tail[4096];
    int retry, n = parse(r.body, all, 4096, &retry), progress = 0;
    CHECK_EQ_INT(retry, 2000);
    REQUIRE(n > 5);
    for (int i = 0; i < n; i++) {
        if (!strcmp(all[i].event, "progress")) {
            progress++;
            CHECK_MSG(all[i].id == all[i].step && all[i].id >= 0, "event %d: id %lld, step %lld", i, all[i].id,
                      all[i].step);
        } else {
            CHECK_MSG(all[i].id == -2, "a %s event with an id", all[i].event);
        }
    }
    CHECK_MSG(!strcmp(all[n - 1].event, "state"), "the last event is %s", all[n - 1].event);
    hresp_free(&r);
    /* reconnect in the middle: exactly the events after that step */
    long long mid = all[n / 2].step >= 0 ? all[n / 2].step : all[1].step;
    int want = 0;
    for (int i = 0; i < n; i++) want += !strcmp(all[i].event, "progress") && all[i].step > mid;
    char hdr[64];
    snprintf(hdr, sizeof hdr, "Last-Event-ID: %lld", mid);
    const char *hs[] = {hdr, NULL};
    hreq q2 = {.path = path, .headers = hs, .timeout_s = 20};
    dmn_http(d, &q2, &r);
    REQUIRE(r.status == 200 && r.body);
    int m = parse(r.body, tail, 4096, &retry), got = 0;
    for (int i = 0; i < m; i++) {
        if (strcmp(tail[i].event, "progress")) continue;
        got++;
        CHECK_MSG(tail[i].step > mid, "after Last-Event-ID %lld: step %lld", mid, tail[i].step);
    }
    CHECK_MSG(got == want && want > 0 && want < progress, "resumed with %d progress events, want %d of %d", got, want,
              progress);
    CHECK(m > 0 && !strcmp(tail[m - 1].event, "state"));
    hresp_free(&r);
    /* not a step */
    const char *bad[] = {"Last-Event-ID: abc", NULL};
    hreq q3 = {.path = path, .headers = bad, .timeout_s = 20};
    dmn_http(d, &q3, &r);
    CHECK_MSG(r.status == 400 && !strcmp(hresp_error_code(&r), "invalid_argument"), "%ld %s", r.status, r.body);
    hresp_free(&r);
}

TEST_T(sse_ids_retry_and_last_event_id, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    sse_body(&d);
    dmn_cleanup(&d);
}
