/* metrics.c: Prometheus counters and latency histograms, lock-free
 * (relaxed atomics: a scrape may see one request's counters a moment apart,
 * which Prometheus tolerates). */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>

static const int codes[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409,
                            413, 415, 422, 429, 500, 503, 507, 0};
#define NCODES (int)(sizeof codes / sizeof codes[0]) /* last: any other */
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NB (int)(sizeof buckets / sizeof buckets[0])
#define MAXR FD_MAX_ROUTES /* route numbers: labels from the route table */

struct fd_metrics {
    atomic_long req[MAXR][NCODES];
    atomic_long hist[MAXR][NB + 1];
    _Atomic double sum[MAXR];
    atomic_long rows_scored, samples_drawn;
};

fd_metrics *fd_metrics_create(void) { return calloc(1, sizeof(fd_metrics)); }
void fd_metrics_free(fd_metrics *m) { free(m); }

void fd_metrics_request(fd_metrics *m, int route, int status, double seconds) {
    if (!m || route < 0 || route >= MAXR || route >= fd_route_count) return;
    int c = NCODES - 1;
    for (int i = 0; i < NCODES - 1; i++)
        if (codes[i] == status) c = i;
    atomic_fetch_add_explicit(&m->req[route][c], 1, memory_order_relaxed);
    int b = NB;
    for (int i = 0; i < NB; i++)
        if (seconds <= buckets[i]) {
            b = i;
            break;
        }
    atomic_fetch_add_explicit(&m->hist[route][b], 1, memory_order_relaxed);
    double old = atomic_load_explicit(&m->sum[route], memory_order_relaxed);
    while (!atomic_compare_exchange_weak(&m->sum[route], &old, old + seconds)) {
    }
}

void fd_metrics_rows(fd_metrics *m, int64_t scored, int64_t sampled) {
    if (!m) return;
    atomic_fetch_add_explicit(&m->rows_scored, scored, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->samples_drawn, sampled, memory_order_relaxed);
}

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;
__attribute__((format(printf, 2, 3))) static void sb(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 8192;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return;
        b->p = q;
        b->cap = cap;
    }
}

char *fd_metrics_render(fd_server *s, fd_db *db) {
    fd_metrics *m = s->metrics;
    sbuf b = {0};
    sb(&b, "# HELP flowd_http_requests_total HTTP requests by route and status code.\n"
           "# TYPE flowd_http_requests_total counter\n");
    for (int r = 0; r < fd_route_count && r < MAXR; r++)
        for (int c = 0; c < NCODES; c++) {
            const char *label = fd_route_label(r);
            long v = atomic_load_explicit(&m->req[r][c], memory_order_relaxed);
            if (!v) continue;
            if (codes[c])
                sb(&b, "flowd_http_requests_total{route=\"%s\",code=\"%d\"} %ld\n", label, codes[c], v);
            else
                sb(&b, "flowd_http_requests_total{route=\"%s\",code=\"other\"} %ld\n", label, v);
        }
    sb(&b, "# HELP flowd_http_request_duration_seconds Request latency by route.\n"
           "# TYPE flowd_http_request_duration_seconds histogram\n");
    for (int r = 0; r < fd_route_count && r < MAXR; r++) {
        long cum = 0, tot = 0;
        for (int i = 0; i <= NB; i++) tot += atomic_load_explicit(&m->hist[r][i], memory_order_relaxed);
        if (!tot) continue;
        const char *label = fd_route_label(r);
        /* the same route name can label two table rows (GET and DELETE of a
         * model); their histograms are emitted under the same labels plus
         * the row number to keep series distinct */
        for (int i = 0; i < NB; i++) {
            cum += atomic_load_explicit(&m->hist[r][i], memory_order_relaxed);
            sb(&b, "flowd_http_request_duration_seconds_bucket{route=\"%s\",id=\"%d\",le=\"%g\"} %ld\n",
               label, r, buckets[i], cum);
        }
        sb(&b, "flowd_http_request_duration_seconds_bucket{route=\"%s\",id=\"%d\",le=\"+Inf\"} %ld\n",
           label, r, tot);
        sb(&b, "flowd_http_request_duration_seconds_sum{route=\"%s\",id=\"%d\"} %.6f\n", label, r,
           atomic_load_explicit(&m->sum[r], memory_order_relaxed));
        sb(&b, "flowd_http_request_duration_seconds_count{route=\"%s\",id=\"%d\"} %ld\n", label, r, tot);
    }
    sb(&b, "# HELP flowd_rows_scored_total Rows scored by log_prob.\n# TYPE flowd_rows_scored_total counter\n"
           "flowd_rows_scored_total %ld\n", atomic_load(&m->rows_scored));
    sb(&b, "# HELP flowd_samples_drawn_total Samples drawn.\n# TYPE flowd_samples_drawn_total counter\n"
           "flowd_samples_drawn_total %ld\n", atomic_load(&m->samples_drawn));
    int64_t counts[5] = {0};
    static const char *const states[5] = {"queued", "running", "succeeded", "failed", "cancelled"};
    char err[200];
    if (fd_db_job_counts(db, counts, err, sizeof err) == 0) {
        sb(&b, "# HELP flowd_jobs Training jobs by state.\n# TYPE flowd_jobs gauge\n");
        for (int i = 0; i < 5; i++) sb(&b, "flowd_jobs{state=\"%s\"} %lld\n", states[i], (long long)counts[i]);
    }
    sb(&b, "# HELP flowd_models_loaded Model versions loaded in memory.\n# TYPE flowd_models_loaded gauge\n"
           "flowd_models_loaded %d\n", fd_cache_count(s->cache));
    sb(&b, "# HELP flowd_requests_in_flight Requests being handled.\n# TYPE flowd_requests_in_flight gauge\n"
           "flowd_requests_in_flight %d\n", atomic_load(&s->inflight));
    sb(&b, "# HELP flowd_jobs_training Workers training right now.\n# TYPE flowd_jobs_training gauge\n"
           "flowd_jobs_training %d\n", s->jobs ? fd_jobs_running(s->jobs) : 0);
    return b.p;
}
