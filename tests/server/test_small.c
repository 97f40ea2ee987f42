/* test_small.c: the smaller items of issue 15 against the real daemon.
 *  - a path with a newline and an escape sequence is logged escaped: one
 *    line, no raw control byte;
 *  - one client holds at most --max-streams-per-client event streams (a
 *    token, or an address without tokens); others still get theirs;
 *  - a token longer than 512 characters is refused at start, not cut; a
 *    token file others can read is warned about; a 401 carries
 *    WWW-Authenticate (with error="invalid_token" for a wrong token);
 *  - a job submission meets the queue limit before its dry run, and the dry
 *    run builds the variational dequantizer too. */
#include "../test.h"

#include "daemon.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define FLOW "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}"

TEST(small_log_escapes_control_characters) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    d.log_requests = 1;
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    hresp r;
    CHECK(http_get(&d, "/v1/models/a%0Ats=forged%20level=error%1B%5B2J", &r) == 0);
    hresp_free(&r);
    dmn_stop(&d);
    FILE *f = fopen(d.log, "r");
    REQUIRE(f);
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        CHECK_MSG(strncmp(line, "ts=forged", 9) != 0, "a forged log line: %s", line);
        CHECK_MSG(!strchr(line, 0x1b), "a raw escape byte in: %s", line);
        if (strstr(line, "path=\"/v1/models/a\\nts=forged level=error\\x1b[2J\"")) found = 1;
    }
    fclose(f);
    CHECK(found);
    dmn_cleanup(&d);
}

static int open_stream(int port, long long id, const char *token) {
    int fd = dmn_connect(port);
    if (fd < 0) return -1;
    char req[256];
    int n = snprintf(req, sizeof req, "GET /v1/jobs/%lld/events HTTP/1.1\r\nHost: localhost\r\n%s%s%s\r\n", id,
                     token ? "Authorization: Bearer " : "", token ? token : "", token ? "\r\n" : "");
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    return fd;
}

static int status_of(int fd) {
    char buf[512] = "";
    size_t have = 0;
    for (int i = 0; i < 50 && !strstr(buf, "\r\n"); i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t k = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (k <= 0) break;
        have += (size_t)k;
        buf[have] = 0;
    }
    return !strncmp(buf, "HTTP/1.1 ", 9) ? atoi(buf + 9) : 0;
}

#define TOK_A "streamerAstreamerAstreamerA"
#define TOK_B "streamerBstreamerBstreamerB"

TEST(small_event_streams_capped_per_client) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    FILE *f = fopen(dmn_path(&d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "write " TOK_A "\nwrite " TOK_B "\n");
    fclose(f);
    chmod(dmn_path(&d, "tokens"), 0600);
    const char *args[] = {"--token-file", dmn_path(&d, "tokens"), "--workers", "0", NULL};
    const char *env[] = {"FLOWD_MAX_STREAMS_PER_CLIENT=2", NULL};
    REQUIRE(dmn_start(&d, args, env) == 0);
    d.token = TOK_A;
    long long id = submit_job(&d, "{\"model\":\"s\",\"dataset\":{\"builtin\":\"moons\",\"n\":100}," FLOW "}");
    REQUIRE(id > 0);
    int fa[3], fb;
    for (int i = 0; i < 3; i++) {
        fa[i] = open_stream(d.port, id, TOK_A);
        CHECK_EQ_INT(status_of(fa[i]), i < 2 ? 200 : 503); /* the third of one client: 503 */
    }
    fb = open_stream(d.port, id, TOK_B);
    CHECK_EQ_INT(status_of(fb), 200); /* another client is not affected */
    close(fa[0]);
    int again = -1, st = 0;
    /* the slot is back once the stream has ended: its next keep-alive
     * (every 5 s) finds the connection closed */
    for (int tries = 0; tries < 120 && st != 200; tries++) {
        dmn_sleep_ms(100);
        if (again >= 0) close(again);
        again = open_stream(d.port, id, TOK_A);
        st = status_of(again);
    }
    CHECK_EQ_INT(st, 200);
    close(again);
    close(fa[1]);
    close(fa[2]);
    close(fb);
    dmn_cleanup(&d);
}

TEST(small_tokens_checked_at_start_and_401_says_bearer) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *path = dmn_path(&d, "tokens");
    char *longtok = malloc(1201);
    memset(longtok, 'k', 1200);
    longtok[1200] = 0;
    const char *args[] = {"serve", "--db", d.db, "--listen", "127.0.0.1:0", "--token-file", path, NULL};
    for (int len = 540; len <= 1200; len += 660) { /* past the token limit, and past a line */
        FILE *f = fopen(path, "w");
        REQUIRE(f);
        fprintf(f, "write %.*s\n", len, longtok);
        fclose(f);
        chmod(path, 0600);
        int rc = run_flowd(&d, args, NULL, 5);
        CHECK_MSG(rc == 1, "a %d-character token: exit %d", len, rc);
    }
    CHECK(dmn_log_has(&d, "the token is longer than 512 characters"));
    CHECK(dmn_log_has(&d, "longer than"));
    free(longtok);
    /* readable by others: a warning, and it serves */
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "read r3adr3adr3adr3adr3adr3adr3ad\n");
    fclose(f);
    chmod(path, 0644);
    const char *serve[] = {"--token-file", path, NULL};
    REQUIRE(dmn_start(&d, serve, NULL) == 0);
    CHECK(dmn_log_has(&d, "is readable or writable by others (mode 644)"));
    hresp r;
    hreq q = {.path = "/v1/models", .token = ""};
    dmn_http(&d, &q, &r);
    char v[128];
    CHECK_EQ_INT(r.status, 401);
    CHECK(hresp_header(&r, "WWW-Authenticate", v, sizeof v) && !strcmp(v, "Bearer realm=\"flowd\""));
    hresp_free(&r);
    q.token = "not-the-token-not-the-token";
    dmn_http(&d, &q, &r);
    CHECK_EQ_INT(r.status, 401);
    CHECK(hresp_header(&r, "WWW-Authenticate", v, sizeof v) && strstr(v, "error=\"invalid_token\""));
    hresp_free(&r);
    dmn_cleanup(&d);
}

TEST(small_job_dry_run_queue_first_and_dequantizer) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *args[] = {"--workers", "0", "--max-queued-jobs", "1", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    /* integer rows for a dequantized job */
    char csv[4096];
    size_t k = (size_t)sprintf(csv, "a,b\n");
    for (int i = 0; i < 200; i++) k += (size_t)sprintf(csv + k, "%d,%d\n", (i * 37) % 256, (i * 11) % 256);
    hresp r;
    hreq up = {.path = "/v1/datasets?name=px", .ctype = "text/csv", .body = csv, .len = k};
    dmn_http(&d, &up, &r);
    REQUIRE(r.status == 201);
    char dsid[64];
    snprintf(dsid, sizeof dsid, "%s", cJSON_GetObjectItemCaseSensitive(r.json, "id")->valuestring);
    hresp_free(&r);
    char job[1024];
    /* a dequantizer flow that cannot be built: refused at submission */
    snprintf(job, sizeof job,
             "{\"model\":\"v\",\"dataset\":{\"id\":\"%s\"}," FLOW ",\"preprocess\":{\"dequantize\":{\"kind\":"
             "\"variational\",\"flow\":{\"layers\":[{\"type\":\"no_such_layer\"}]}}}}", dsid);
    CHECK(http_post_json(&d, "/v1/jobs", job, &r) == 0);
    printf("  a variational job with a bad dequantizer: %ld %s\n", r.status, r.body);
    CHECK_EQ_INT(r.status, 422);
    CHECK(r.body && strstr(r.body, "preprocess.dequantize.flow"));
    hresp_free(&r);
    /* fill the queue; then even a bad job meets the limit first */
    snprintf(job, sizeof job, "{\"model\":\"q\",\"dataset\":{\"builtin\":\"moons\",\"n\":100}," FLOW "}");
    CHECK(http_post_json(&d, "/v1/jobs", job, &r) == 0 && r.status == 202);
    hresp_free(&r);
    CHECK(http_post_json(&d, "/v1/jobs", "{\"model\":\"q2\",\"dataset\":{\"id\":\"ds_nope\"},"
                                         "\"flow\":{\"preset\":\"no_such_preset\"}}", &r) == 0);
    CHECK_EQ_INT(r.status, 429);
    hresp_free(&r);
    dmn_cleanup(&d);
}
