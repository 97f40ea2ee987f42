/* test_hostile.c: hostile HTTP against the real flowd binary.  Each test
 * starts its own daemon (daemon.c) over a fresh database holding two
 * imported models: "m" (realnvp, D=2, random parameters) and "c" (the same
 * with context_dim 1).  Requests that libcurl would refuse to send or would
 * repair (truncated or overlong bodies, stalled or trickling clients,
 * oversized headers, odd request lines) go over raw TCP sockets.
 *
 * Every attack checks the documented answer (or a clean close where HTTP
 * allows nothing else) and then that the daemon still serves: /healthz 200
 * and log_prob of four fixed rows on "m" equal, to the float, to the score
 * computed in-process from the same model file. */
#include "../test.h"

#include "daemon.h"

#include "../../core/model.h"
#include "../../core/nf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the models ---------------------------------------------------------------- */
static const float REF_X[8] = {0.5f, 0.25f, -1.0f, 2.0f, 0.0f, 0.0f, 3.0f, -0.75f};
static float ref_lp[4]; /* log_prob of REF_X under "m", in-process */

/* realnvp of depth 2 on D=2 with C context columns; parameters set to a
 * fixed non-zero pattern so the flow is not the identity.  Writes the model
 * file to path; for C == 0 also fills ref_lp. */
static int write_model(const char *path, int C) {
    char spec[160], err[300] = "";
    snprintf(spec, sizeof spec, "{\"dim\":2,\"context_dim\":%d,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}", C);
    nf_flow *f = NULL;
    if (nf_flow_create(spec, &f, err, sizeof err)) {
        fprintf(stderr, "    nf_flow_create: %s\n", err);
        return -1;
    }
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] = (nf_real)(0.3 * sin(0.7 * (double)i + C));
    void *buf = NULL;
    size_t len = 0;
    int rc = nf_model_save(f, NULL, NULL, NULL, &buf, &len);
    nf_flow_free(f);
    if (!rc) rc = nf_file_write(path, buf, len);
    if (!rc && C == 0) {
        nf_model *m = NULL;
        nf_ws *w = NULL;
        rc = nf_model_load(buf, len, &m, err, sizeof err);
        if (!rc) rc = nf_ws_create(m->flow, 8, &w);
        if (!rc) rc = nf_model_log_prob(m, w, REF_X, NULL, 4, ref_lp);
        nf_ws_free(w);
        nf_model_free(m);
    }
    free(buf);
    return rc;
}

/* imports "m" and "c", then starts the daemon with args */
static int start_with_models(dmn *d, const char *const *args) {
    const char *fm = dmn_path(d, "m.flow"), *fc = dmn_path(d, "c.flow");
    if (write_model(fm, 0) || write_model(fc, 1)) return -1;
    const char *im[] = {"import", fm, "--name", "m", "--db", d->db, NULL};
    const char *ic[] = {"import", fc, "--name", "c", "--db", d->db, NULL};
    if (run_flowd(d, im, NULL, 30) || run_flowd(d, ic, NULL, 30)) return -1;
    return dmn_start(d, args, NULL);
}

#define REF_BODY "{\"inputs\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]]}"

/* /healthz 200 and log_prob of REF_X on "m" equal to ref_lp; timeout_s for
 * the log_prob request (0: 30 s) */
static int serving_t(dmn *d, double timeout_s, double *latency) {
    if (!dmn_healthy(d)) {
        fprintf(stderr, "    /healthz did not answer 200\n");
        return 0;
    }
    hreq q = {.method = "POST", .path = "/v1/models/m/log_prob", .ctype = "application/json",
              .body = REF_BODY, .len = strlen(REF_BODY), .has_body = 1, .timeout_s = timeout_s};
    hresp r;
    double t0 = dmn_now();
    dmn_http(d, &q, &r);
    if (latency) *latency = dmn_now() - t0;
    const cJSON *a = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "log_prob") : NULL;
    int ok = r.status == 200 && cJSON_GetArraySize(a) == 4;
    for (int i = 0; ok && i < 4; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        ok = cJSON_IsNumber(e) && (float)e->valuedouble == ref_lp[i];
    }
    if (!ok) fprintf(stderr, "    log_prob on m: %ld %s (expected %.9g ...)\n", r.status, r.body, (double)ref_lp[0]);
    hresp_free(&r);
    return ok;
}
static int serving(dmn *d) { return serving_t(d, 0, NULL); }

#define CHECK_SERVING(d, what) CHECK_MSG(serving(d), "the daemon stopped serving after %s", what)

/* flowd_requests_in_flight from /metrics (-1 if absent) */
static int inflight(dmn *d) {
    hresp r;
    http_get(d, "/metrics", &r);
    const char *p = r.body ? strstr(r.body, "\nflowd_requests_in_flight ") : NULL;
    int v = p ? atoi(p + 26) : -1;
    hresp_free(&r);
    return v;
}

/* waits up to 3 s for no request in flight: an aborted request released its slot */
static int inflight_drains(dmn *d) {
    int v = -1;
    for (int i = 0; i < 60; i++) {
        if ((v = inflight(d)) == 0) return 1;
        dmn_sleep_ms(50);
    }
    fprintf(stderr, "    flowd_requests_in_flight stays at %d\n", v);
    return 0;
}

/* ---- raw sockets ------------------------------------------------------------------ */
static int raw_connect(dmn *d) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* writes all of b; -1 when the peer closed or reset (not a failure for an
 * attack the server may cut short) */
static int raw_send(int fd, const void *b, size_t n) {
    const char *p = b;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}
static int raw_sends(int fd, const char *s) { return raw_send(fd, s, strlen(s)); }

/* buf holds at least one whole response (headers and Content-Length bytes) */
static int response_complete(const char *buf, size_t n) {
    const char *end = strstr(buf, "\r\n\r\n"), *cl = strcasestr(buf, "\r\nContent-Length:");
    if (!end) return 0;
    size_t need = (size_t)(end + 4 - buf) + (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
    return n >= need;
}

/* Reads into buf (NUL-terminated) until the peer closes or resets (*closed
 * = 1), or timeout_s passes with the connection still open (*closed = 0),
 * or with one_response, as soon as one whole response is in.  Returns the
 * bytes read. */
static size_t raw_recv_ex(int fd, char *buf, size_t cap, double timeout_s, int *closed, int one_response) {
    size_t n = 0;
    double t0 = dmn_now();
    *closed = 0;
    for (;;) {
        double left = timeout_s - (dmn_now() - t0);
        if (left <= 0) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int k = poll(&p, 1, (int)(left * 1000) + 1);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        char tmp[4096];
        ssize_t got = recv(fd, tmp, sizeof tmp, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            *closed = 1;
            break;
        }
        size_t keep = (size_t)got < cap - 1 - n ? (size_t)got : cap - 1 - n;
        memcpy(buf + n, tmp, keep);
        n += keep;
        buf[n] = 0;
        if (one_response && response_complete(buf, n)) break;
    }
    buf[n] = 0;
    return n;
}
static size_t raw_recv(int fd, char *buf, size_t cap, double timeout_s, int *closed) {
    return raw_recv_ex(fd, buf, cap, timeout_s, closed, 0);
}

/* status codes of the responses in buf, in order; returns their count */
static int statuses(const char *buf, int *st, int max) {
    int k = 0;
    for (const char *p = buf; (p = strstr(p, "HTTP/1.")) && k < max; p += 7)
        if (p == buf || p[-1] == '\n') st[k++] = atoi(p + 9);
    return k;
}

/* one raw request, the connection then half-closed; status of the first
 * response (0 if none); *closed: the server closed within timeout_s
 * without a whole response */
static int raw_exchange(dmn *d, const char *req, size_t len, double timeout_s, char *buf, size_t cap, int *closed) {
    int fd = raw_connect(d);
    if (fd < 0) return -1;
    raw_send(fd, req, len);
    shutdown(fd, SHUT_WR);
    raw_recv_ex(fd, buf, cap, timeout_s, closed, 1);
    close(fd);
    int st[4];
    return statuses(buf, st, 4) ? st[0] : 0;
}

/* ---- 1 and 3: truncated and misframed bodies -------------------------------------------- */
#define LP_HEAD "POST /v1/models/m/log_prob HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"

static void framing_body(dmn *d) {
    const char *args[] = {"--conn-timeout", "2", "--max-inflight", "4", NULL};
    REQUIRE(start_with_models(d, args) == 0);
    REQUIRE(serving(d));
    static char buf[65536];
    int closed;

    /* 1. Content-Length 1000, 10 bytes, then EOF: an aborted request.  Twelve
     * at once, three times --max-inflight: the ones admitted must give their
     * slot back (the in-flight gauge returns to 0); the others get 503. */
    enum { NT = 12 };
    int fds[NT], refused = 0;
    double t0 = dmn_now(), worst = 0;
    for (int i = 0; i < NT; i++) {
        fds[i] = raw_connect(d);
        REQUIRE(fds[i] >= 0);
        raw_sends(fds[i], LP_HEAD "Content-Length: 1000\r\n\r\n{\"inputs\":");
        shutdown(fds[i], SHUT_WR);
    }
    for (int i = 0; i < NT; i++) {
        raw_recv(fds[i], buf, sizeof buf, 6 - (dmn_now() - t0), &closed);
        close(fds[i]);
        double dt = dmn_now() - t0;
        int st[2], k = statuses(buf, st, 2);
        CHECK_MSG(closed && dt < 4, "truncated body: connection %s after %.2f s", closed ? "closed" : "still open", dt);
        CHECK_MSG(k == 0 || st[0] == 503 || (st[0] >= 400 && st[0] < 500), "truncated body answered %d", st[0]);
        refused += k > 0 && st[0] == 503;
        worst = dt > worst ? dt : worst;
    }
    fprintf(stderr, "    %d truncated bodies at once: %d refused 503, the last connection closed after %.2f s\n", NT,
            refused, worst);
    CHECK_SERVING(d, "truncated bodies");
    CHECK(inflight_drains(d));

    /* 3. Content-Length shorter than the bytes sent: the first request is
     * the declared bytes; the rest is parsed as the next request */
    {
        const char *body = "{\"inputs\":[[0.5,0.25]]}";
        snprintf(buf, sizeof buf, LP_HEAD "Content-Length: %zu\r\n\r\n%sGARBAGE garbage\r\n\r\n", strlen(body), body);
        int fd = raw_connect(d);
        REQUIRE(fd >= 0);
        raw_sends(fd, buf);
        raw_recv(fd, buf, sizeof buf, 3, &closed);
        close(fd);
        int st[4], k = statuses(buf, st, 4);
        CHECK_MSG(k >= 1 && st[0] == 200 && strstr(buf, "\"log_prob\":[") != NULL, "first of two: %s", buf);
        CHECK_MSG(k < 2 || (st[1] >= 400 && st[1] < 500), "trailing garbage answered %d", st[1]);
        CHECK_MSG(closed, "the connection stayed open after a malformed request line");
        fprintf(stderr, "    Content-Length short by garbage: %d responses (%d, %d), closed %d\n", k,
                k > 0 ? st[0] : 0, k > 1 ? st[1] : 0, closed);
        /* the trailing bytes a valid request: answered in order (pipelining) */
        snprintf(buf, sizeof buf,
                 LP_HEAD "Content-Length: %zu\r\n\r\n%sGET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                 strlen(body), body);
        fd = raw_connect(d);
        REQUIRE(fd >= 0);
        raw_sends(fd, buf);
        raw_recv(fd, buf, sizeof buf, 3, &closed);
        close(fd);
        k = statuses(buf, st, 4);
        CHECK_MSG(k == 2 && st[0] == 200 && st[1] == 200 && strstr(buf, "\"status\":\"ok\""), "pipelined: %s", buf);
    }
    CHECK_SERVING(d, "an overlong body");

    /* malformed framing headers: refused with a 4xx (or the connection
     * closed), never a 5xx; ambiguous framing exactly 400 */
    static const struct { const char *hdr; int want; } bad_cl[] = {
        {"Content-Length: -1\r\n", 400},
        {"Content-Length: abc\r\n", 400},
        {"Content-Length: 1e3\r\n", 400},
        {"Content-Length: 99999999999999999999999999\r\n", 0},
        {"Content-Length: 18446744073709551615\r\n", 413},
        {"Content-Length: 2\r\nContent-Length: 200\r\n", 400},
        {"Content-Length: 2\r\nContent-Length: 2\r\n", 400},
        {"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400},
        {"Transfer-Encoding: gzip, chunked\r\n", 0},
        {"Transfer-Encoding: chunked\r\n", 400}, /* with a malformed chunk size below */
    };
    for (size_t i = 0; i < sizeof bad_cl / sizeof bad_cl[0]; i++) {
        char req[512], what[96];
        snprintf(req, sizeof req, LP_HEAD "%s\r\n%s", bad_cl[i].hdr,
                 strstr(bad_cl[i].hdr, "chunked\r\n") == bad_cl[i].hdr + 19 ? "zz\r\n{}\r\n0\r\n\r\n" : "{}");
        snprintf(what, sizeof what, "%s", bad_cl[i].hdr);
        for (char *p = what; (p = strstr(p, "\r\n"));) memmove(p, p[2] ? "; " : "", p[2] ? 2 : 1), p += 2;
        int st = raw_exchange(d, req, strlen(req), 4, buf, sizeof buf, &closed);
        int good = bad_cl[i].want ? st == bad_cl[i].want : (st >= 400 && st < 500) || (st == 0 && closed);
        CHECK_MSG(good, "%s: status %d, %s", what, st, closed ? "closed" : "open");
    }
    CHECK_SERVING(d, "malformed Content-Length and Transfer-Encoding");
    CHECK(inflight_drains(d));
}

TEST_T(hostile_truncated_and_misframed_bodies, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    framing_body(&d);
    dmn_cleanup(&d);
}

/* ---- 2: a stalled upload, the connection kept open ------------------------------------------------ */
static void stalled_body(dmn *d) {
    const char *args[] = {"--conn-timeout", "2", "--max-inflight", "4", NULL};
    REQUIRE(start_with_models(d, args) == 0);
    REQUIRE(serving(d));
    enum { NS = 3 };
    int fds[NS];
    double t0 = dmn_now();
    for (int i = 0; i < NS; i++) {
        fds[i] = raw_connect(d);
        REQUIRE(fds[i] >= 0);
        raw_sends(fds[i], LP_HEAD "Content-Length: 1000\r\n\r\n{\"inputs\":");
    }
    /* the three stalled requests hold three of the four admission slots;
     * other clients are served meanwhile through the fourth */
    int served = 0, tries = 0;
    while (dmn_now() - t0 < 1.5) {
        served += serving(d);
        tries++;
        dmn_sleep_ms(100);
    }
    CHECK_MSG(served == tries, "%d of %d requests served while 3 uploads stalled", served, tries);
    /* a fourth stalled upload takes the last slot: /v1 routes answer 503
     * (health stays public) until the idle timeout frees the slots */
    int fd4 = raw_connect(d);
    REQUIRE(fd4 >= 0);
    raw_sends(fd4, LP_HEAD "Content-Length: 1000\r\n\r\n{\"inputs\":");
    for (int i = 0; i < 100 && inflight(d) < 4; i++) dmn_sleep_ms(10);
    hresp r;
    http_post_json(d, "/v1/models/m/log_prob", REF_BODY, &r);
    CHECK_MSG(r.status == 503 && !strcmp(hresp_error_code(&r), "overloaded"), "with every slot stalled: %ld %s",
              r.status, r.body);
    hresp_free(&r);
    CHECK(dmn_healthy(d));
    char buf[4096];
    for (int i = 0; i <= NS; i++) {
        int closed, fd = i < NS ? fds[i] : fd4;
        raw_recv(fd, buf, sizeof buf, 6 - (dmn_now() - t0), &closed);
        double dt = dmn_now() - t0;
        CHECK_MSG(closed && dt > 1.5 && dt < 5, "stalled upload %d: %s after %.2f s", i,
                  closed ? "closed" : "still open", dt);
        if (i == 0) fprintf(stderr, "    stalled upload closed by the server after %.2f s (%zu bytes answered)\n", dt, strlen(buf));
        close(fd);
    }
    CHECK(inflight_drains(d));
    CHECK_SERVING(d, "stalled uploads");
}

TEST_T(hostile_stalled_upload_times_out, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    stalled_body(&d);
    dmn_cleanup(&d);
}

/* ---- 4: slowloris --------------------------------------------------------------------------------- */
enum { NLORIS = 50 };

typedef struct {
    dmn *d;
    int fds[NLORIS];
    double trickle_s;   /* how long to send a byte every 500 ms */
    int closed_during;  /* connections the server closed while they trickled */
} loris;

static void *loris_run(void *p) {
    loris *L = p;
    double t0 = dmn_now();
    for (int i = 0; i < NLORIS; i++) {
        L->fds[i] = raw_connect(L->d);
        if (L->fds[i] >= 0) raw_sends(L->fds[i], "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
    }
    while (dmn_now() - t0 < L->trickle_s) {
        dmn_sleep_ms(500);
        for (int i = 0; i < NLORIS; i++)
            if (L->fds[i] >= 0 && raw_sends(L->fds[i], "a")) {
                close(L->fds[i]);
                L->fds[i] = -1;
                L->closed_during++;
            }
    }
    return NULL;
}

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void slowloris_body(dmn *d) {
    const char *args[] = {"--conn-timeout", "2", NULL};
    REQUIRE(start_with_models(d, args) == 0);
    REQUIRE(serving(d));
    static loris L;
    L.d = d;
    L.trickle_s = 4;
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, loris_run, &L) == 0);
    /* a normal client throughout the attack */
    static double lat[1000];
    int n = 0, ok = 0;
    double t0 = dmn_now();
    while (dmn_now() - t0 < L.trickle_s && n < 1000) {
        double dt;
        ok += serving_t(d, 5, &dt);
        lat[n++] = dt;
        dmn_sleep_ms(20);
    }
    pthread_join(th, NULL);
    CHECK_MSG(ok == n, "%d of %d normal requests served during the slowloris", ok, n);
    qsort(lat, (size_t)n, sizeof lat[0], cmp_dbl);
    fprintf(stderr, "    slowloris (%d connections, a byte every 500 ms for %.0f s): normal client %d/%d served, "
                    "log_prob latency p50 %.2f ms, p99 %.2f ms, max %.2f ms; %d closed by the server while trickling\n",
            NLORIS, L.trickle_s, ok, n, lat[n / 2] * 1e3, lat[n * 99 / 100] * 1e3, lat[n - 1] * 1e3, L.closed_during);
    CHECK_MSG(lat[n - 1] < 1.0, "a normal request took %.2f s during the slowloris", lat[n - 1]);
    /* the trickle stops: the idle timeout (2 s) closes every connection */
    double t1 = dmn_now(), last = 0;
    int still_open = 0;
    for (int i = 0; i < NLORIS; i++) {
        if (L.fds[i] < 0) continue;
        char buf[2048];
        int closed;
        raw_recv(L.fds[i], buf, sizeof buf, 5 - (dmn_now() - t1), &closed);
        if (!closed) still_open++;
        else if (dmn_now() - t1 > last) last = dmn_now() - t1;
        close(L.fds[i]);
    }
    CHECK_MSG(still_open == 0, "%d slowloris connections still open 5 s after they went quiet", still_open);
    fprintf(stderr, "    after the trickle stopped, the last slowloris connection was closed after %.2f s\n", last);
    CHECK(inflight_drains(d));
    CHECK_SERVING(d, "the slowloris");
}

TEST_T(hostile_slowloris, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    slowloris_body(&d);
    dmn_cleanup(&d);
}

/* ---- 5 and 8: oversized headers, long and odd URLs ------------------------------------------------- */
static void headers_urls_body(dmn *d) {
    REQUIRE(start_with_models(d, NULL) == 0);
    REQUIRE(serving(d));
    size_t cap = 400 * 1024;
    char *req = malloc(cap), *buf = malloc(65536);
    REQUIRE(req && buf);
    int closed;

    /* 300 KB of headers, many lines and one line: over the 256 KiB per
     * connection memory limit */
    for (int variant = 0; variant < 2; variant++) {
        size_t k = (size_t)snprintf(req, cap, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
        if (variant == 0) {
            for (int i = 0; k < 300 * 1024; i++) {
                k += (size_t)snprintf(req + k, cap - k, "X-Pad-%d: ", i);
                memset(req + k, 'a', 1000);
                k += 1000;
                k += (size_t)snprintf(req + k, cap - k, "\r\n");
            }
        } else {
            k += (size_t)snprintf(req + k, cap - k, "X-Pad: ");
            memset(req + k, 'a', 300 * 1024);
            k += 300 * 1024;
            k += (size_t)snprintf(req + k, cap - k, "\r\n");
        }
        k += (size_t)snprintf(req + k, cap - k, "\r\n");
        int st = raw_exchange(d, req, k, 5, buf, 65536, &closed);
        CHECK_MSG(st == 431 || st == 413 || (st == 0 && closed), "300 KB of headers (%s): status %d, %s",
                  variant ? "one line" : "many lines", st, closed ? "closed" : "open");
        fprintf(stderr, "    300 KB of headers (%s): status %d, closed %d\n", variant ? "one line" : "300 lines", st, closed);
        CHECK_SERVING(d, "300 KB of headers");
    }

    /* a 10 KB URL */
    {
        size_t k = (size_t)snprintf(req, cap, "GET /v1/models/");
        memset(req + k, 'a', 10 * 1024);
        k += 10 * 1024;
        k += (size_t)snprintf(req + k, cap - k, " HTTP/1.1\r\nHost: localhost\r\n\r\n");
        int st = raw_exchange(d, req, k, 5, buf, 65536, &closed);
        CHECK_MSG(st == 404 || st == 414 || st == 400, "10 KB URL: status %d", st);
        k = (size_t)snprintf(req, cap, "GET /healthz?");
        memset(req + k, 'q', 10 * 1024);
        k += 10 * 1024;
        k += (size_t)snprintf(req + k, cap - k, "=1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
        st = raw_exchange(d, req, k, 5, buf, 65536, &closed);
        CHECK_MSG(st == 200 || st == 414 || st == 400, "10 KB query: status %d", st);
    }
    CHECK_SERVING(d, "a 10 KB URL");

    /* %00, '..', and other odd paths: 404 or 400 (405 where the cut path
     * names a route with another method), never a 5xx, never the route the
     * path only resembles */
    static const struct { const char *line; int allow200; } odd[] = {
        {"GET /v1/models/m%00/../../healthz HTTP/1.1", 0},
        {"GET /healthz%00 HTTP/1.1", 0},
        {"GET /healthz%00.html HTTP/1.1", 0},
        {"GET /v1/models/m%00x HTTP/1.1", 0},
        {"POST /v1/models/m%00/log_prob HTTP/1.1", 0},
        {"GET /v1/datasets?name=a%00b HTTP/1.1", 1},
        {"GET /../../../etc/passwd HTTP/1.1", 0},
        {"GET /v1/../healthz HTTP/1.1", 0},
        {"GET /v1/models/.. HTTP/1.1", 0},
        {"GET /v1/models/../models HTTP/1.1", 0},
        {"POST /v1/models/../log_prob HTTP/1.1", 0},
        {"GET /v1/models/%2e%2e/versions/1/checkpoint HTTP/1.1", 0},
        {"GET /v1/models/m/versions/../checkpoint HTTP/1.1", 0},
        {"GET //healthz HTTP/1.1", 0},
        {"GET /v1//models HTTP/1.1", 0},
        {"GET /v1/models/m/x/y/z/a/b/c/d/e/f/g HTTP/1.1", 0},
        {"GET healthz HTTP/1.1", 0},
        {"GET * HTTP/1.1", 0},
        {"GET http://evil/healthz HTTP/1.1", 1},
        {"GET /%ff%fe%fd HTTP/1.1", 0},
        {"GET /v1/jobs/99999999999999999999999 HTTP/1.1", 0},
        {"GET /v1/jobs/-1/events HTTP/1.1", 0},
        {"GET /v1/models/m/versions/99999999999/checkpoint HTTP/1.1", 0},
    };
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        int k = snprintf(req, cap, "%s\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", odd[i].line);
        int st = raw_exchange(d, req, (size_t)k, 5, buf, 65536, &closed);
        int good = st == 404 || st == 400 || st == 405 || (odd[i].allow200 && st == 200) || (st == 0 && closed);
        CHECK_MSG(good, "%s: status %d: %.200s", odd[i].line, st, buf);
    }
    CHECK_SERVING(d, "odd request lines");
    /* %00 in a query value: not cut short to a valid name */
    hresp r;
    hreq q = {.method = "POST", .path = "/v1/datasets?name=a%00b", .ctype = "text/csv", .body = "x,y\n1,2\n3,4\n",
              .len = 12};
    dmn_http(d, &q, &r);
    CHECK_MSG(r.status == 400 && !strcmp(hresp_error_code(&r), "invalid_argument"), "?name=a%%00b: %ld %s", r.status,
              r.body);
    hresp_free(&r);
    free(req);
    free(buf);
}

TEST_T(hostile_oversized_headers_and_odd_urls, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    headers_urls_body(&d);
    dmn_cleanup(&d);
}

/* ---- 6: deeply nested JSON --------------------------------------------------------------------- */
/* prefix, depth '[' , core, depth ']' , suffix */
static char *nested(const char *prefix, int depth, const char *core, const char *suffix) {
    size_t n = strlen(prefix) + 2 * (size_t)depth + strlen(core) + strlen(suffix) + 1;
    char *s = malloc(n), *p = s;
    p += sprintf(p, "%s", prefix);
    memset(p, '[', (size_t)depth);
    p += depth;
    p += sprintf(p, "%s", core);
    memset(p, ']', (size_t)depth);
    p += depth;
    sprintf(p, "%s", suffix);
    return s;
}

static void post(dmn *d, const char *path, const char *ctype, const char *body, hresp *r) {
    hreq q = {.method = "POST", .path = path, .ctype = ctype, .body = body, .len = strlen(body), .has_body = 1};
    dmn_http(d, &q, r);
}

static void deep_json_body(dmn *d) {
    REQUIRE(start_with_models(d, NULL) == 0);
    REQUIRE(serving(d));
    static const char *const routes[] = {"/v1/models/m/log_prob", "/v1/models/m/sample", "/v1/models/m/encode",
                                         "/v1/models/m/decode", "/v1/models/c/log_prob", "/v1/jobs",
                                         "/v1/models/m/evaluate"};
    hresp r;
    /* 100,000 deep: over cJSON's nesting limit (1000): 400 invalid_json */
    char *deep = nested("{\"inputs\":", 100000, "1", "}");
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        post(d, routes[i], "application/json", deep, &r);
        CHECK_MSG(r.status == 400 && !strcmp(hresp_error_code(&r), "invalid_json"), "%s, 100k deep: %ld %.200s",
                  routes[i], r.status, r.body);
        hresp_free(&r);
    }
    free(deep);
    /* the same as a dataset upload (its own JSON rows reader) and as CSV */
    deep = nested("", 100000, "1", "");
    post(d, "/v1/datasets?name=deep", "application/json", deep, &r);
    CHECK_MSG(r.status == 422 || r.status == 400, "dataset, 100k deep: %ld %.200s", r.status, r.body);
    hresp_free(&r);
    post(d, "/v1/models/m/log_prob", "text/csv", deep, &r);
    CHECK_MSG(r.status == 422, "CSV of brackets: %ld %.200s", r.status, r.body);
    hresp_free(&r);
    free(deep);
    deep = nested("{\"a\":", 100000, "", "}"); /* unclosed object nesting: {"a":{"a":... */
    for (char *p = strchr(deep, '['); p && *p == '['; p++) *p = '{';
    post(d, "/v1/jobs", "application/json", deep, &r);
    CHECK_MSG(r.status == 400, "100k deep objects: %ld %.200s", r.status, r.body);
    hresp_free(&r);
    free(deep);
    CHECK_SERVING(d, "100,000-deep JSON");

    /* 900 deep, under the limit: valid JSON of the wrong shape, 422 */
    struct { const char *path, *pre, *suf; } shallow[] = {
        {"/v1/models/m/log_prob", "{\"inputs\":", "}"},
        {"/v1/models/m/log_prob", "{\"inputs\":[[0.5,0.5]],\"version\":", "}"},
        {"/v1/models/c/log_prob", "{\"inputs\":[[0.5,0.5]],\"context\":", "}"},
        {"/v1/models/m/sample", "{\"n\":", "}"},
        {"/v1/models/m/encode", "{\"inputs\":", "}"},
        {"/v1/models/m/decode", "{\"latents\":", "}"},
        {"/v1/jobs", "{\"model\":\"j\",\"dataset\":{\"builtin\":\"moons\",\"n\":200},\"flow\":{\"preset\":\"realnvp\",\"hidden\":", "}}"},
        {"/v1/jobs", "{\"model\":\"j\",\"dataset\":{\"builtin\":\"moons\",\"n\":200},\"flow\":{\"layers\":", "}}"},
        {"/v1/jobs", "{\"model\":\"j\",\"dataset\":{\"builtin\":\"moons\",\"n\":", "},\"flow\":{\"preset\":\"realnvp\"}}"},
    };
    for (size_t i = 0; i < sizeof shallow / sizeof shallow[0]; i++) {
        char *b = nested(shallow[i].pre, 900, "1", shallow[i].suf);
        post(d, shallow[i].path, "application/json", b, &r);
        CHECK_MSG(r.status == 422 && !strcmp(hresp_error_code(&r), "invalid_input"), "%s %.60s..., 900 deep: %ld %.200s",
                  shallow[i].path, shallow[i].pre, r.status, r.body);
        hresp_free(&r);
        free(b);
    }
    CHECK_SERVING(d, "900-deep JSON");
}

TEST_T(hostile_deeply_nested_json, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    deep_json_body(&d);
    dmn_cleanup(&d);
}

/* ---- 7: non-finite and string numbers in every numeric field --------------------------------------- */
#define JOB_DS "\"dataset\":{\"builtin\":\"moons\",\"n\":200,\"seed\":1}"
#define JOB_FLOW "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}"
#define JOB(ds, flow, rest) "{\"model\":\"j\"," ds "," flow rest "}"
#define JOB_TRAIN(t) JOB(JOB_DS, JOB_FLOW, ",\"train\":{" t "}")

static const struct { const char *path, *tmpl, *field; } numeric_fields[] = {
    /* log_prob */
    {"/v1/models/m/log_prob", "{\"inputs\":[[@,0.5]]}", "inputs"},
    {"/v1/models/m/log_prob", "{\"inputs\":[[0.5,0.5],[0.5,@]]}", "inputs"},
    {"/v1/models/m/log_prob", "{\"inputs\":[[0.5,0.5]],\"version\":@}", "version"},
    {"/v1/models/c/log_prob", "{\"inputs\":[[0.5,0.5]],\"context\":[[@]]}", "context"},
    {"/v1/models/c/log_prob", "{\"inputs\":[[0.5,0.5]],\"context\":[@]}", "context"},
    {"/v1/models/c/log_prob", "{\"inputs\":[[0.5,0.5],[1,1]],\"context\":[[1],[@]]}", "context"},
    /* sample */
    {"/v1/models/m/sample", "{\"n\":@}", "\"n\""},
    {"/v1/models/m/sample", "{\"n\":2,\"temperature\":@}", "temperature"},
    {"/v1/models/m/sample", "{\"n\":2,\"seed\":@}", "seed"},
    {"/v1/models/m/sample", "{\"n\":2,\"version\":@}", "version"},
    {"/v1/models/c/sample", "{\"n\":2,\"context\":[@]}", "context"},
    {"/v1/models/c/sample", "{\"n\":2,\"context\":[[0],[@]]}", "context"},
    /* encode / decode */
    {"/v1/models/m/encode", "{\"inputs\":[[0.5,@]]}", "inputs"},
    {"/v1/models/m/encode", "{\"inputs\":[[0.5,0.5]],\"version\":@}", "version"},
    {"/v1/models/c/encode", "{\"inputs\":[[0.5,0.5]],\"context\":[[@]]}", "context"},
    {"/v1/models/m/decode", "{\"latents\":[[@,0.5]]}", "latents"},
    {"/v1/models/m/decode", "{\"latents\":[[0.5,0.5]],\"version\":@}", "version"},
    {"/v1/models/c/decode", "{\"latents\":[[0.5,0.5]],\"context\":[@]}", "context"},
    /* jobs: train */
    {"/v1/jobs", JOB_TRAIN("\"epochs\":@"), "epochs"},
    {"/v1/jobs", JOB_TRAIN("\"batch_size\":@"), "batch_size"},
    {"/v1/jobs", JOB_TRAIN("\"lr\":@"), "lr"},
    {"/v1/jobs", JOB_TRAIN("\"weight_decay\":@"), "weight_decay"},
    {"/v1/jobs", JOB_TRAIN("\"clip_grad_norm\":@"), "clip_grad_norm"},
    {"/v1/jobs", JOB_TRAIN("\"warmup_steps\":@"), "warmup_steps"},
    {"/v1/jobs", JOB_TRAIN("\"val_fraction\":@"), "val_fraction"},
    {"/v1/jobs", JOB_TRAIN("\"test_fraction\":@"), "test_fraction"},
    {"/v1/jobs", JOB_TRAIN("\"seed\":@"), "seed"},
    {"/v1/jobs", JOB_TRAIN("\"lr_min\":@"), "lr_min"},
    {"/v1/jobs", JOB_TRAIN("\"schedule\":\"plateau\",\"plateau_factor\":@"), "plateau_factor"},
    {"/v1/jobs", JOB_TRAIN("\"plateau_patience\":@"), "plateau_patience"},
    {"/v1/jobs", JOB_TRAIN("\"jacobian_l2\":@"), "jacobian_l2"},
    {"/v1/jobs", JOB_TRAIN("\"log_every\":@"), "log_every"},
    {"/v1/jobs", JOB_TRAIN("\"max_bad_batches\":@"), "max_bad_batches"},
    {"/v1/jobs", JOB_TRAIN("\"max_seconds\":@"), "max_seconds"},
    {"/v1/jobs", JOB_TRAIN("\"early_stopping\":{\"patience\":@}"), "patience"},
    {"/v1/jobs", JOB_TRAIN("\"early_stopping\":{\"min_delta\":@}"), "min_delta"},
    /* jobs: dataset */
    {"/v1/jobs", JOB("\"dataset\":{\"builtin\":\"moons\",\"n\":@}", JOB_FLOW, ""), "\"n\""},
    {"/v1/jobs", JOB("\"dataset\":{\"builtin\":\"moons\",\"n\":200,\"noise\":@}", JOB_FLOW, ""), "noise"},
    {"/v1/jobs", JOB("\"dataset\":{\"builtin\":\"moons\",\"n\":200,\"seed\":@}", JOB_FLOW, ""), "seed"},
    /* jobs: flow */
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"realnvp\",\"depth\":@}", ""), "depth"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"realnvp\",\"hidden\":@}", ""), "hidden"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"realnvp\",\"hidden\":[8,@]}", ""), "hidden"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"nsf\",\"depth\":1,\"bins\":@}", ""), "bins"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"nsf\",\"depth\":1,\"tail_bound\":@}", ""), "tail_bound"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"realnvp\",\"seed\":@}", ""), "seed"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"preset\":\"realnvp\",\"context_dim\":@}", ""), "context_dim"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"layers\":[{\"type\":\"affine_coupling\",\"hidden\":[@]}]}", ""), "hidden"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"layers\":[{\"type\":\"spline_coupling\",\"bins\":@}]}", ""), "bins"},
    {"/v1/jobs", JOB(JOB_DS, "\"flow\":{\"layers\":[{\"type\":\"actnorm\"}],\"base\":{\"type\":\"mixture\",\"components\":@}}", ""), "components"},
    /* jobs: preprocess */
    {"/v1/jobs", JOB(JOB_DS, JOB_FLOW, ",\"preprocess\":{\"dequantize\":{\"levels\":@}}"), "levels"},
    {"/v1/jobs", JOB(JOB_DS, JOB_FLOW, ",\"preprocess\":{\"logit\":{\"alpha\":@}}"), "alpha"},
};

static void numeric_body(dmn *d) {
    REQUIRE(start_with_models(d, NULL) == 0);
    REQUIRE(serving(d));
    /* bare: not JSON at all, 400 invalid_json; else valid JSON the field
     * must refuse, 422 invalid_input naming the field */
    static const struct { const char *v; int bare; } values[] = {
        {"1e999", 0}, {"-1e999", 0}, {"\"3\"", 0}, {"NaN", 1}, {"Infinity", 1}, {"-Infinity", 1}, {"nan", 1}};
    int sent = 0;
    for (size_t f = 0; f < sizeof numeric_fields / sizeof numeric_fields[0]; f++) {
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            char body[1024], *at = strchr(numeric_fields[f].tmpl, '@');
            snprintf(body, sizeof body, "%.*s%s%s", (int)(at - numeric_fields[f].tmpl), numeric_fields[f].tmpl,
                     values[v].v, at + 1);
            hresp r;
            post(d, numeric_fields[f].path, "application/json", body, &r);
            sent++;
            const cJSON *e = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "error") : NULL;
            const cJSON *msg = e ? cJSON_GetObjectItemCaseSensitive(e, "message") : NULL;
            if (values[v].bare) {
                CHECK_MSG(r.status == 400 && !strcmp(hresp_error_code(&r), "invalid_json"), "%s %s: %ld %s",
                          numeric_fields[f].path, body, r.status, r.body);
            } else {
                CHECK_MSG(r.status == 422 && !strcmp(hresp_error_code(&r), "invalid_input"), "%s %s: %ld %s",
                          numeric_fields[f].path, body, r.status, r.body);
                CHECK_MSG(cJSON_IsString(msg) && strstr(msg->valuestring, numeric_fields[f].field),
                          "%s %s: the message does not name %s: %s", numeric_fields[f].path, body,
                          numeric_fields[f].field, r.body);
            }
            hresp_free(&r);
        }
    }
    /* nothing was queued */
    hresp r;
    http_get(d, "/v1/jobs", &r);
    CHECK_MSG(r.status == 200 && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "jobs")) == 0,
              "jobs were accepted: %.300s", r.body);
    hresp_free(&r);
    fprintf(stderr, "    %d requests over %zu numeric fields\n", sent, sizeof numeric_fields / sizeof numeric_fields[0]);
    CHECK_SERVING(d, "non-finite numbers");
}

TEST_T(hostile_nonfinite_and_string_numbers, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    numeric_body(&d);
    dmn_cleanup(&d);
}

/* ---- 9: random bodies to every POST route ------------------------------------------------------- */
static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

static void random_body(dmn *d) {
    const char *args[] = {"--workers", "0", NULL}; /* an accepted job is queued, never trained */
    REQUIRE(start_with_models(d, args) == 0);
    REQUIRE(serving(d));
    static const struct { const char *path, *ctype; } routes[] = {
        {"/v1/models/m/log_prob", "application/json"}, {"/v1/models/m/log_prob", "text/csv"},
        {"/v1/models/m/log_prob", "application/x-npy"}, {"/v1/models/m/log_prob", NULL},
        {"/v1/models/c/log_prob", "application/json"}, {"/v1/models/m/sample", "application/json"},
        {"/v1/models/m/encode", "application/json"}, {"/v1/models/m/decode", NULL},
        {"/v1/models/c/decode", "application/json"}, {"/v1/datasets?name=r", NULL},
        {"/v1/datasets?name=r", "text/csv"}, {"/v1/datasets?name=r", "application/json"},
        {"/v1/datasets?name=r", "application/x-npy"}, {"/v1/datasets?name=r", "application/x-idx"},
        {"/v1/datasets?name=r", "application/gzip"}, {"/v1/jobs", "application/json"},
        {"/v1/jobs", NULL}, {"/v1/jobs/1/cancel", "application/json"},
    };
    enum { NR = sizeof routes / sizeof routes[0] };
    static char body[4096];
    int bad = 0, counts[6] = {0};
    /* 1000 bodies of random bytes: only 4xx */
    for (int i = 0; i < 1000; i++) {
        size_t len = rnd() % sizeof body;
        for (size_t k = 0; k < len; k++) body[k] = (char)rnd();
        int ri = i % NR;
        hreq q = {.method = "POST", .path = routes[ri].path, .ctype = routes[ri].ctype, .body = body, .len = len,
                  .has_body = 1};
        hresp r;
        dmn_http(d, &q, &r);
        counts[r.status / 100 < 6 ? r.status / 100 : 0]++;
        if (!(r.status >= 400 && r.status < 500) && bad++ < 5)
            CHECK_MSG(0, "random body #%d (%zu bytes) to %s (%s): %ld %.200s", i, len, routes[ri].path,
                      routes[ri].ctype ? routes[ri].ctype : "no type", r.status, r.body);
        hresp_free(&r);
    }
    CHECK_EQ_INT(counts[4], 1000);
    CHECK_SERVING(d, "1000 random bodies");
    /* 500 valid bodies with 1 to 4 random bytes changed: any answer but a
     * 5xx or a dropped connection */
    static const struct { const char *path, *body; } valid[] = {
        {"/v1/models/m/log_prob", "{\"inputs\":[[0.5,0.25],[1,2]],\"bits_per_dim\":true}"},
        {"/v1/models/c/log_prob", "{\"inputs\":[[0.5,0.25]],\"context\":[[1]],\"version\":1}"},
        {"/v1/models/m/sample", "{\"n\":3,\"temperature\":0.5,\"seed\":4,\"return_log_prob\":true}"},
        {"/v1/models/c/sample", "{\"n\":3,\"context\":[0.5]}"},
        {"/v1/models/m/encode", "{\"inputs\":[[0.5,0.25]]}"},
        {"/v1/models/m/decode", "{\"latents\":[[0.5,0.25]]}"},
        {"/v1/jobs", JOB_TRAIN("\"epochs\":1,\"lr\":0.001,\"early_stopping\":{\"patience\":2}")},
        {"/v1/jobs", JOB(JOB_DS, JOB_FLOW, ",\"preprocess\":{\"dequantize\":{\"levels\":16},\"logit\":{\"alpha\":0.01}}")},
    };
    enum { NV = sizeof valid / sizeof valid[0] };
    int mutated[6] = {0};
    bad = 0;
    for (int i = 0; i < 500; i++) {
        int vi = i % NV;
        size_t len = strlen(valid[vi].body);
        memcpy(body, valid[vi].body, len);
        for (int m = 0, nm = 1 + (int)(rnd() % 4); m < nm; m++) body[rnd() % len] = (char)rnd();
        hreq q = {.method = "POST", .path = valid[vi].path, .ctype = "application/json", .body = body, .len = len,
                  .has_body = 1};
        hresp r;
        dmn_http(d, &q, &r);
        mutated[r.status / 100 < 6 ? r.status / 100 : 0]++;
        if ((r.status < 200 || r.status >= 500) && bad++ < 5)
            CHECK_MSG(0, "mutated body #%d to %s: %ld %.200s (%.*s)", i, valid[vi].path, r.status, r.body, (int)len, body);
        hresp_free(&r);
    }
    fprintf(stderr, "    random bodies: %d 4xx of 1000; mutated valid bodies: %d 2xx, %d 4xx, %d 5xx, %d failed of 500\n",
            counts[4], mutated[2], mutated[4], mutated[5], mutated[0]);
    CHECK(inflight_drains(d));
    CHECK_SERVING(d, "500 mutated bodies");
}

TEST_T(hostile_random_bodies, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    random_body(&d);
    dmn_cleanup(&d);
}
