/* test_drain.c: SIGTERM drains (issue 15).
 *
 * An 8 MB CSV upload is sent over a raw socket in pieces; SIGTERM arrives
 * after its first megabyte.  Then:
 *  - a new connection is refused (the listening socket is closed);
 *  - /readyz on a connection opened before answers 503 "draining";
 *  - with the default-sized --drain-timeout the upload finishes, answers
 *    201, and its rows are there after a restart;
 *  - with --drain-timeout 1 and an upload that stalls, the daemon cuts it
 *    after a second and exits 0, and nothing of it is stored.
 * Before the drain, libmicrohttpd stopped at once and cut every upload. */
#include "../test.h"

#include "daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

/* the status of the response read from fd within timeout_s (0: none) */
static int read_status(int fd, double timeout_s, char *buf, size_t cap) {
    size_t have = 0;
    double t0 = dmn_now();
    buf[0] = 0;
    while (have + 1 < cap && dmn_now() - t0 < timeout_s) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t k = recv(fd, buf + have, cap - 1 - have, 0);
        if (k <= 0) break;
        have += (size_t)k;
        buf[have] = 0;
        if (strstr(buf, "\r\n\r\n")) {
            const char *cl = strcasestr(buf, "Content-Length:");
            const char *body = strstr(buf, "\r\n\r\n") + 4;
            if (!cl || (size_t)(buf + have - body) >= (size_t)atol(cl + 15)) break;
        }
    }
    int st = 0;
    if (!strncmp(buf, "HTTP/1.1 ", 9)) st = atoi(buf + 9);
    return st;
}

static char *csv(size_t bytes, size_t *len, long *rows) {
    char *s = malloc(bytes + 64);
    size_t k = (size_t)sprintf(s, "a,b\n");
    long n = 0;
    while (k < bytes) k += (size_t)sprintf(s + k, "%ld.5,%ld.25\n", n % 1000, n % 77), n++;
    *len = k;
    *rows = n;
    return s;
}

static int datasets(dmn *d, long *rows) {
    hresp r;
    int n = -1;
    *rows = -1;
    if (http_get(d, "/v1/datasets", &r) == 0 && r.status == 200 && r.json) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(r.json, "datasets");
        n = cJSON_GetArraySize(a);
        const cJSON *x = n > 0 ? cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(a, 0), "rows") : NULL;
        if (cJSON_IsNumber(x)) *rows = (long)x->valuedouble;
    }
    hresp_free(&r);
    return n;
}

static void drain_case(int cut) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    /* the variable, not the flag: a daemon from before the drain starts too */
    const char *env[] = {cut ? "FLOWD_DRAIN_TIMEOUT=1" : "FLOWD_DRAIN_TIMEOUT=20", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    size_t len;
    long rows;
    char *body = csv(8 << 20, &len, &rows);
    int up = dmn_connect(d.port), idle = dmn_connect(d.port);
    REQUIRE(up >= 0 && idle >= 0);
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "POST /v1/datasets?name=big HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/csv\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n", len);
    CHECK(send_all(up, head, (size_t)hl) == 0);
    size_t first = 1 << 20;
    CHECK(send_all(up, body, first) == 0);
    dmn_sleep_ms(200);
    CHECK(kill(d.pid, SIGTERM) == 0);
    dmn_sleep_ms(300);
    /* new connections are refused */
    int fresh = dmn_connect(d.port);
    CHECK_MSG(fresh < 0, "a new connection was accepted during the drain");
    if (fresh >= 0) close(fresh);
    /* readiness on a connection opened before */
    char buf[4096];
    const char *rq = "GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    CHECK(send_all(idle, rq, strlen(rq)) == 0);
    int st = read_status(idle, 5, buf, sizeof buf);
    CHECK_MSG(st == 503 && strstr(buf, "draining"), "/readyz during the drain: %d", st);
    close(idle);
    int status;
    if (!cut) { /* the rest, in pieces, over about a second */
        for (size_t at = first; at < len;) {
            size_t n = len - at < (512 << 10) ? len - at : (512 << 10);
            if (send_all(up, body + at, n)) break;
            at += n;
            dmn_sleep_ms(70);
        }
        status = read_status(up, 20, buf, sizeof buf);
        printf("  upload of %zu bytes in flight at SIGTERM: %d\n", len, status);
        CHECK_EQ_INT(status, 201);
    } else { /* stalls: cut after --drain-timeout */
        double t0 = dmn_now();
        status = read_status(up, 10, buf, sizeof buf);
        printf("  stalled upload at SIGTERM, --drain-timeout 1: status %d after %.2f s\n", status, dmn_now() - t0);
        CHECK(status == 0 || status >= 500);
    }
    close(up);
    CHECK_EQ_INT(dmn_stop(&d), 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    long got;
    int n = datasets(&d, &got);
    if (!cut) {
        CHECK_EQ_INT(n, 1);
        CHECK_EQ_INT(got, rows);
    } else {
        CHECK_EQ_INT(n, 0);
    }
    free(body);
    dmn_cleanup(&d);
}

TEST_T(drain_upload_in_flight_completes, 90) { drain_case(0); }

TEST_T(drain_timeout_cuts_and_leaves_nothing, 90) { drain_case(1); }
