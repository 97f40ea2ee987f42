/* test_memory.c: the request path's memory is bounded (issue 15).
 *
 * A daemon with 16 request threads and a 256 MiB request budget
 * (FLOWD_MAX_MEMORY, so that a daemon from before the budget starts too)
 * gets 48 log_prob bodies of 4 MiB of JSON rows from 24 connections at
 * once, each of which parses into a tree of about 80 MiB.  Every request
 * gets an answer (422: too many rows, or 503 overloaded with
 * details.limit "memory_budget"), never a dropped connection; the daemon
 * stays up and answers log_prob exactly as before; its peak RSS stays within
 * the budget over its resting size.  Without the budget, 16 parses at once
 * took the peak past 1.2 GiB.  A second run does the same under RLIMIT_DATA.
 */
#include "../test.h"

#include "daemon.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUDGET (256L << 20)
#define RLIMIT_MIB 652 /* 140 (resting) + 256 (budget) + 256 MiB */
#define RLIMIT_BYTES ((long)RLIMIT_MIB << 20)
#define STR_(x) #x
#define STR(x) STR_(x)
#define CLIENTS 24
#define EACH 2

typedef struct {
    dmn *d;
    const char *body;
    size_t len;
    long status[EACH];
} client;

static void *run_client(void *p) {
    client *c = p;
    for (int i = 0; i < EACH; i++) {
        hresp r;
        hreq q = {.path = "/v1/models/m/log_prob", .ctype = "application/json", .body = c->body, .len = c->len,
                  .timeout_s = 120, .quiet = 1};
        dmn_http(c->d, &q, &r);
        c->status[i] = r.status;
        hresp_free(&r);
    }
    return NULL;
}

/* the storm, on a daemon started with the budget; rlimit_data > 0: under
 * RLIMIT_DATA of that many bytes (the kernel refuses the daemon's heap past it) */
static void storm(long rlimit_data) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    d.rlimit_data = rlimit_data;
    const char *args[] = {"--http-threads", "16", "--workers", "0", NULL};
    char budget[64];
    snprintf(budget, sizeof budget, "FLOWD_MAX_MEMORY=%ld", BUDGET);
    const char *env[] = {budget, NULL};
    REQUIRE(dmn_start(&d, args, env) == 0);
    hresp r;
    const char *probe = "{\"inputs\":[[0.5,0.25],[-1,2]]}";
    CHECK(http_post_json(&d, "/v1/models/m/log_prob", probe, &r) == 0 && r.status == 200);
    char *before = r.body ? strdup(r.body) : NULL;
    hresp_free(&r);
    long base = dmn_peak_kib(&d);
    size_t k;
    char *body = rows_body(4 << 20, &k);
    REQUIRE(body);
    client c[CLIENTS];
    pthread_t th[CLIENTS];
    double t0 = dmn_now();
    for (int i = 0; i < CLIENTS; i++) {
        c[i] = (client){.d = &d, .body = body, .len = k};
        pthread_create(&th[i], NULL, run_client, &c[i]);
    }
    int counts[4] = {0, 0, 0, 0}; /* 422, 503, 200, other */
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(th[i], NULL);
        for (int j = 0; j < EACH; j++) {
            long st = c[i].status[j];
            counts[st == 422 ? 0 : st == 503 ? 1 : st == 200 ? 2 : 3]++;
            CHECK_MSG(st == 422 || st == 503 || st == 200, "a %zu-byte body: status %ld", k, st);
        }
    }
    long pk = dmn_peak_kib(&d);
    printf("  %d bodies of %zu bytes from %d connections in %.1f s: %d x 422, %d x 503, %d x 200, %d other; "
           "VmHWM %ld KiB (resting %ld, budget %ld KiB)%s\n",
           CLIENTS * EACH, k, CLIENTS, dmn_now() - t0, counts[0], counts[1], counts[2], counts[3], pk, base,
           BUDGET >> 10, rlimit_data > 0 ? " under RLIMIT_DATA " STR(RLIMIT_MIB) " MiB" : "");
    CHECK(counts[0] > 0); /* some were parsed: the budget admits, it does not shut out */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* the sanitizers' allocators keep freed memory resident (ASan's
     * quarantine alone is 256 MiB), so the daemon's RSS says nothing about
     * the budget there; the release build checks it */
    printf("    (RSS bound not checked under a sanitizer: its allocator holds freed memory)\n");
#else
    CHECK_MSG(pk <= base + (BUDGET >> 10) + (48 << 10), "peak RSS %ld KiB, resting %ld KiB, budget %ld KiB", pk,
              base, BUDGET >> 10);
#endif
    CHECK(dmn_healthy(&d));
    CHECK(http_post_json(&d, "/v1/models/m/log_prob", probe, &r) == 0 && r.status == 200);
    CHECK(before && r.body && !strcmp(before, r.body));
    hresp_free(&r);
    free(before);
    free(body);
    dmn_cleanup(&d);
}

TEST_T(memory_budget_bounds_concurrent_large_bodies, 240) { storm(0); }

/* The same storm with the kernel enforcing a bound: RLIMIT_DATA (the
 * daemon's heap, anonymous mappings and thread stacks) at its resting size
 * (~140 MiB with 16 request threads) plus the budget plus 256 MiB.  The
 * daemon stays up and answers every request: with the budget it never asks
 * for what the limit would refuse.  Not under a sanitizer: their shadow
 * memory and allocators count against the limit. */
TEST_T(memory_budget_holds_under_rlimit_data, 240) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    printf("    (skipped under a sanitizer: its shadow memory counts against RLIMIT_DATA)\n");
#else
    storm(RLIMIT_BYTES);
#endif
}

/* A request refused by the budget while its body is on its way is answered
 * once the body has been read (and dropped), not before: an answer queued
 * first made the daemon close with the body unread, and the kernel's reset
 * could destroy the answer before the client read it (the storm above saw
 * one status 0 in 48 under TSan).  Twelve 12 MB bodies, sent whole at once
 * (no Expect), against an 8 MiB budget: every one gets its 413 with
 * details.limit "memory_budget", and the daemon answers as before. */
TEST_T(memory_refusal_reads_the_body_first, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_make_model(&d, "m", 0, NULL) == 0);
    const char *env[] = {"FLOWD_MAX_MEMORY=8388608", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    size_t k;
    char *body = rows_body(12u << 20, &k);
    REQUIRE(body);
    int ok = 0;
    for (int i = 0; i < 12; i++) {
        hresp r;
        hreq q = {.path = "/v1/models/m/log_prob", .ctype = "application/json", .body = body, .len = k,
                  .timeout_s = 60, .quiet = 1};
        dmn_http(&d, &q, &r);
        const cJSON *det = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r.json, "error"), "details");
        int good = r.status == 413 && !strcmp(hresp_error_code(&r), "payload_too_large") &&
                   !strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(det, "limit")) ?: "", "memory_budget");
        CHECK_MSG(good, "body %d of %zu bytes: status %ld %.200s", i, k, r.status, r.body ? r.body : "");
        ok += good;
        hresp_free(&r);
    }
    printf("  %d of 12 bodies of %zu bytes over an 8 MiB budget answered 413 memory_budget\n", ok, k);
    hresp r;
    CHECK(http_post_json(&d, "/v1/models/m/log_prob", "{\"inputs\":[[0.5,0.25]]}", &r) == 0 && r.status == 200);
    hresp_free(&r);
    CHECK(dmn_healthy(&d));
    free(body);
    dmn_cleanup(&d);
}
