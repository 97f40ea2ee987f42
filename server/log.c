/* log.c: the daemon's log, one format: logfmt, one line per event on
 * stderr (docs/operations.md "Logs"):
 *
 *   ts=2026-11-23T08:13:12.126Z level=info msg="job 3: resuming at step 340"
 *   ts=2026-11-23T08:13:12.127Z level=info msg=request method=POST path=/v1/jobs status=202 bytes=27 us=411 rid=371aff9f306258ff
 *
 * Keys are fixed words; a value is written bare when it is a non-empty run
 * of characters other than space, '"', '=' and control characters, else
 * quoted with '"' and '\' escaped and control characters as \n, \t or \xHH.
 * Each line is built in a buffer and written with one call, so lines of
 * concurrent threads do not interleave. */
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct {
    char b[2048];
    size_t n;
} line;

static void put(line *l, const char *s, size_t n) {
    if (l->n + n >= sizeof l->b - 2) n = sizeof l->b - 2 - l->n;
    memcpy(l->b + l->n, s, n);
    l->n += n;
}

static void put_value(line *l, const char *v) {
    int bare = *v != 0;
    for (const char *p = v; *p && bare; p++) bare = (unsigned char)*p > ' ' && *p != '"' && *p != '=' && *p != 0x7f;
    if (bare) return put(l, v, strlen(v));
    put(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') esc[0] = '\\', esc[1] = (char)*p, esc[2] = 0;
        else if (*p == '\n') strcpy(esc, "\\n");
        else if (*p == '\t') strcpy(esc, "\\t");
        else if (*p < ' ' || *p == 0x7f) snprintf(esc, sizeof esc, "\\x%02x", *p);
        else esc[0] = (char)*p, esc[1] = 0;
        put(l, esc, strlen(esc));
    }
    put(l, "\"", 1);
}

static void begin(line *l, const char *level) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t k = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + k, sizeof when - k, ".%03ldZ", ts.tv_nsec / 1000000);
    l->n = 0;
    put(l, "ts=", 3);
    put(l, when, strlen(when));
    put(l, " level=", 7);
    put(l, level, strlen(level));
}

static void end(line *l) {
    l->b[l->n++] = '\n';
    fwrite(l->b, 1, l->n, stderr);
}

void fd_log(const char *level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    line l;
    begin(&l, level);
    put(&l, " msg=", 5);
    put_value(&l, msg);
    end(&l);
}

void fd_log_kv(const char *level, const char *msg, const char *const *kv) {
    line l;
    begin(&l, level);
    put(&l, " msg=", 5);
    put_value(&l, msg);
    for (; kv && kv[0]; kv += 2) {
        put(&l, " ", 1);
        put(&l, kv[0], strlen(kv[0]));
        put(&l, "=", 1);
        put_value(&l, kv[1] ? kv[1] : "");
    }
    end(&l);
}
