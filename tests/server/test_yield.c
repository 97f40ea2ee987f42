/* test_yield.c: `flowd serve --train-yield`: requests hold training back.
 * The real daemon with a long quiet time (1.5 s) and no share: while
 * requests keep coming (job polls, every 0.2 s) no training step
 * completes; once they stop, training goes on; a client watching the job's
 * event stream does not hold it back; the job's progress says how long it
 * was held. */
#include "../test.h"

#include "daemon.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static double step_of(dmn *d, long long id, double *held) {
    cJSON *o = get_job(d, id);
    cJSON *pr = o ? cJSON_GetObjectItemCaseSensitive(o, "progress") : NULL;
    cJSON *s = cJSON_GetObjectItemCaseSensitive(pr, "step");
    cJSON *h = cJSON_GetObjectItemCaseSensitive(pr, "held_seconds");
    double v = cJSON_IsNumber(s) ? s->valuedouble : -1;
    if (held) *held = cJSON_IsNumber(h) ? h->valuedouble : -1;
    cJSON_Delete(o);
    return v;
}

TEST_T(yield_requests_hold_training, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    static const char *const args[] = {"--train-yield", "1500", "--train-share", "0", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    long long id = submit_job(&d, "{\"model\":\"y\",\"dataset\":{\"builtin\":\"moons\",\"n\":2000,\"seed\":1},"
                                  "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                                  "\"train\":{\"epochs\":100000,\"batch_size\":64,\"log_every\":1}}");
    REQUIRE(id > 0);
    /* 2 s without requests between polls: the job starts and trains */
    double s1 = -1, s2, t0 = dmn_now();
    while (s1 <= 0 && dmn_now() - t0 < 40) {
        dmn_sleep_ms(2000);
        s1 = step_of(&d, id, NULL);
    }
    s2 = s1;
    CHECK_MSG(s1 > 0, "step %g after %.0f s with 2 quiet seconds between polls", s1, dmn_now() - t0);
    /* requests every 0.2 s for 2 s: at most the step under way completes */
    for (int i = 0; i < 10; i++) {
        dmn_sleep_ms(200);
        s2 = step_of(&d, id, NULL);
    }
    CHECK_MSG(s2 - s1 <= 1, "steps %g then %g while requests kept coming", s1, s2);
    /* quiet again, with a client watching the event stream: it trains */
    int fd = dmn_connect(d.port);
    REQUIRE(fd >= 0);
    char req[160];
    int n = snprintf(req, sizeof req, "GET /v1/jobs/%lld/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id);
    CHECK(write(fd, req, (size_t)n) == n);
    double held = -1, s3 = s2;
    t0 = dmn_now();
    while (s3 <= s2 + 5 && dmn_now() - t0 < 40) {
        dmn_sleep_ms(2000);
        s3 = step_of(&d, id, &held);
    }
    CHECK_MSG(s3 > s2 + 5, "step %g with a watcher and 2 quiet seconds between polls, %g before", s3, s2);
    /* it was held for at least most of the 2 s of requests (1.5 s of quiet after the last too) */
    CHECK_MSG(held > 1.5, "held_seconds %g", held);
    close(fd);
    hresp r;
    char path[64];
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", id);
    CHECK(http_post_json(&d, path, "{}", &r) == 0);
    CHECK_MSG(r.status == 200 || r.status == 202, "cancel answered %ld", r.status);
    hresp_free(&r);
    char state[32];
    CHECK(wait_job(&d, id, 20, state, sizeof state) == 0 && !strcmp(state, "cancelled"));
    dmn_cleanup(&d);
}
