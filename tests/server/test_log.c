/* test_log.c: the daemon's log is logfmt, every line (server/log.c):
 * `ts=<ISO-8601 UTC ms> level=<info|warn|error> msg=<value>` and then
 * key=value pairs, values bare or quoted with \" and \\ escaped.  The
 * daemon is started with request logging, asked for a path with spaces,
 * quotes and an equals sign, trained once and stopped; each line of its
 * stderr is parsed back. */
#include "../test.h"

#include "daemon.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* parses one logfmt line into up to 16 key/value pairs (values unescaped
 * into vals); returns the count, -1 when the line is not logfmt */
static int parse(const char *p, char keys[][32], char vals[][512]) {
    int n = 0;
    while (*p && *p != '\n') {
        if (n == 16) return -1;
        int k = 0;
        while (*p && (isalnum((unsigned char)*p) || *p == '_')) {
            if (k < 31) keys[n][k++] = *p;
            p++;
        }
        keys[n][k] = 0;
        if (!k || *p++ != '=') return -1;
        int v = 0;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\') {
                    p++;
                    if (*p != '"' && *p != '\\' && *p != 'n' && *p != 't' && *p != 'x') return -1;
                }
                if (v < 511) vals[n][v++] = *p;
            }
            if (*p++ != '"') return -1;
        } else {
            while (*p && *p != ' ' && *p != '\n') {
                if (*p == '"' || *p == '=') return -1;
                if (v < 511) vals[n][v++] = *p;
                p++;
            }
            if (!v) return -1;
        }
        vals[n][v] = 0;
        n++;
        if (*p == ' ') p++;
        else if (*p && *p != '\n') return -1;
    }
    return n;
}

static void log_body(dmn *d) {
    d->log_requests = 1;
    static const char *const args[] = {NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    hresp r;
    http_get(d, "/v1/models/a%20b%22c=d", &r); /* a name with a space, a quote, an equals sign */
    CHECK_EQ_INT(r.status, 404);
    hresp_free(&r);
    long long job = submit_job(d, "{\"model\":\"lg\",\"dataset\":{\"builtin\":\"moons\",\"n\":256,\"seed\":1},"
                                  "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},\"train\":{\"epochs\":1}}");
    char state[32];
    REQUIRE(job > 0 && wait_job(d, job, 60, state, sizeof state) == 0);
    CHECK_EQ_INT(dmn_stop(d), 0);
    FILE *f = fopen(d->log, "r");
    REQUIRE(f);
    char line[4096], keys[16][32], vals[16][512];
    int lines = 0, requests = 0, odd_path = 0, listening = 0, stopped = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "imported ", 9)) continue; /* flowd import's own output, not the daemon's */
        int n = parse(line, keys, vals);
        CHECK_MSG(n >= 3, "not logfmt: %s", line);
        if (n < 3) continue;
        lines++;
        CHECK_MSG(!strcmp(keys[0], "ts") && strlen(vals[0]) == 24 && vals[0][23] == 'Z', "ts: %s", line);
        CHECK_MSG(!strcmp(keys[1], "level") && (!strcmp(vals[1], "info") || !strcmp(vals[1], "warn") ||
                                                 !strcmp(vals[1], "error")),
                  "level: %s", line);
        CHECK_MSG(!strcmp(keys[2], "msg"), "msg: %s", line);
        if (!strcmp(vals[2], "request")) {
            requests++;
            CHECK_MSG(n >= 9 && !strcmp(keys[3], "method") && !strcmp(keys[4], "path") && !strcmp(keys[5], "status"),
                      "request line: %s", line);
            if (!strcmp(vals[4], "/v1/models/a b\"c=d") && !strcmp(vals[5], "404")) odd_path++;
        }
        listening += strstr(vals[2], "listening on http://127.0.0.1:") != NULL;
        stopped += !strcmp(vals[2], "stopped");
    }
    fclose(f);
    CHECK_MSG(lines > 5 && requests >= 3, "%d lines, %d requests", lines, requests);
    CHECK_EQ_INT(odd_path, 1);
    CHECK_EQ_INT(listening, 1);
    CHECK_EQ_INT(stopped, 1);
}

TEST_T(log_lines_are_logfmt, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    log_body(&d);
    dmn_cleanup(&d);
}
