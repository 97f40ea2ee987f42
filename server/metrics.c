/* metrics.c: Prometheus counters and latency histograms.
 *
 * Every series has one label set of its own (a scrape with a duplicate is
 * invalid; tests/python/check_metrics.py parses one with prometheus_client
 * and fails on duplicates):
 *  - HTTP: {method, route, code} and histograms {method, route}, one slot
 *    per route-table row (a row is one method and pattern), lock-free with
 *    relaxed atomics (a scrape may see one request's counters a moment
 *    apart, which Prometheus tolerates);
 *  - inference by model: {model, version, op, code} and histograms {model,
 *    version, op}, for requests that reached a loaded model, in a table of
 *    at most INF_MAX (model, version, op) rows under a mutex (new rows past
 *    it are counted in flowd_inference_series_dropped_total, so a flood of
 *    versions cannot grow the scrape without bound);
 *  - flowd_build_info, and the process_* metrics of the Prometheus client
 *    conventions, read from /proc/self at scrape time. */
#include "server.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const int codes[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 406, 409,
                            413, 415, 422, 429, 500, 503, 507, 0};
#define NCODES (int)(sizeof codes / sizeof codes[0]) /* last: any other */
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NB (int)(sizeof buckets / sizeof buckets[0])
#define MAXR FD_MAX_ROUTES /* route numbers: labels from the route table */

#define INF_MAX 1024 /* (model, version, op) rows of the inference table */

static const char *const op_names[FD_OP_COUNT] = {"log_prob", "sample", "encode", "decode", "evaluate"};
_Static_assert(sizeof op_names / sizeof op_names[0] == FD_OP_COUNT, "an fd_op without a name");

typedef struct {
    char model[65];
    int version, op;
    long req[NCODES];
    long hist[NB + 1];
    double sum;
} inf_row;

struct fd_metrics {
    atomic_long req[MAXR][NCODES];
    atomic_long hist[MAXR][NB + 1];
    _Atomic double sum[MAXR];
    atomic_long rows_scored, samples_drawn;
    pthread_mutex_t inf_mu; /* guards inf, ninf, inf_dropped */
    inf_row *inf;
    int ninf;
    long inf_dropped;
    double start_time; /* process start, seconds since the epoch */
};

static double process_start_time(void) {
    /* field 22 of /proc/self/stat: start time in clock ticks after boot */
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[1024];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long start = 0;
    for (int field = 2; p && *p && field < 22; p++)
        if (*p == ' ') field++;
    if (p) start = strtoull(p, NULL, 10);
    struct timespec now, up;
    clock_gettime(CLOCK_REALTIME, &now);
    clock_gettime(CLOCK_BOOTTIME, &up);
    double boot = now.tv_sec + now.tv_nsec * 1e-9 - (up.tv_sec + up.tv_nsec * 1e-9);
    return start ? boot + (double)start / (double)sysconf(_SC_CLK_TCK) : now.tv_sec;
}

fd_metrics *fd_metrics_create(void) {
    fd_metrics *m = calloc(1, sizeof(fd_metrics));
    if (!m) return NULL;
    m->inf = calloc(INF_MAX, sizeof *m->inf);
    if (!m->inf || pthread_mutex_init(&m->inf_mu, NULL)) {
        free(m->inf);
        free(m);
        return NULL;
    }
    m->start_time = process_start_time();
    return m;
}

void fd_metrics_free(fd_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->inf_mu);
    free(m->inf);
    free(m);
}

static int code_slot(int status) {
    for (int i = 0; i < NCODES - 1; i++)
        if (codes[i] == status) return i;
    return NCODES - 1;
}

static int bucket_slot(double seconds) {
    for (int i = 0; i < NB; i++)
        if (seconds <= buckets[i]) return i;
    return NB;
}

void fd_metrics_request(fd_metrics *m, int route, int status, double seconds) {
    if (!m || route < 0 || route >= MAXR || route >= fd_route_count) return;
    atomic_fetch_add_explicit(&m->req[route][code_slot(status)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->hist[route][bucket_slot(seconds)], 1, memory_order_relaxed);
    double old = atomic_load_explicit(&m->sum[route], memory_order_relaxed);
    while (!atomic_compare_exchange_weak(&m->sum[route], &old, old + seconds)) {
    }
}

void fd_metrics_inference(fd_metrics *m, const char *model, int version, fd_op op, int status, double seconds) {
    if (!m || !model || !*model || op < 0 || op >= FD_OP_COUNT) return;
    pthread_mutex_lock(&m->inf_mu);
    inf_row *row = NULL;
    for (int i = 0; i < m->ninf && !row; i++)
        if (m->inf[i].version == version && m->inf[i].op == (int)op && !strcmp(m->inf[i].model, model))
            row = &m->inf[i];
    if (!row && m->ninf < INF_MAX) {
        row = &m->inf[m->ninf++];
        snprintf(row->model, sizeof row->model, "%s", model);
        row->version = version;
        row->op = (int)op;
    }
    if (row) {
        row->req[code_slot(status)]++;
        row->hist[bucket_slot(seconds)]++;
        row->sum += seconds;
    } else {
        m->inf_dropped++;
    }
    pthread_mutex_unlock(&m->inf_mu);
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

/* a label value: backslash, quote and newline escaped (the text format) */
static void sb_label(sbuf *b, const char *v) {
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"') sb(b, "\\%c", *v);
        else if (*v == '\n') sb(b, "\\n");
        else sb(b, "%c", *v);
    }
}

static void sb_code(sbuf *b, int c) {
    if (codes[c]) sb(b, "code=\"%d\"", codes[c]);
    else sb(b, "code=\"other\"");
}

/* one histogram's _bucket, _sum and _count lines; labels: its label
 * pairs ("k=\"v\",...") */
static void sb_hist(sbuf *b, const char *name, const char *labels, const long *h, double sum) {
    long cum = 0, tot = 0;
    for (int i = 0; i <= NB; i++) tot += h[i];
    for (int i = 0; i < NB; i++) {
        cum += h[i];
        sb(b, "%s_bucket{%s,le=\"%g\"} %ld\n", name, labels, buckets[i], cum);
    }
    sb(b, "%s_bucket{%s,le=\"+Inf\"} %ld\n", name, labels, tot);
    sb(b, "%s_sum{%s} %.6f\n", name, labels, sum);
    sb(b, "%s_count{%s} %ld\n", name, labels, tot);
}

/* the HTTP labels of route number r: method="GET",route="/v1/models" (the
 * row that matched no route: method="any",route="unmatched") */
static void route_labels(int r, char *out, size_t n) {
    const char *method = fd_route_method(r);
    snprintf(out, n, "method=\"%s\",route=\"%s\"", *method ? method : "any", fd_route_label(r));
}

static void render_process(sbuf *b, const fd_metrics *m) {
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[1024];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    /* after "pid (comm) ": fields 3..; utime 14, stime 15, threads 20,
     * vsize 23, rss 24 (pages) */
    unsigned long long v[25] = {0};
    char *p = strrchr(buf, ')');
    for (int field = 3; p && field <= 24; field++) {
        p = strchr(p + 1, ' ');
        if (p) v[field] = strtoull(p + 1, NULL, 10);
    }
    double tck = (double)sysconf(_SC_CLK_TCK);
    int fds = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));) fds += e->d_name[0] != '.';
    if (d) closedir(d), fds--; /* the directory's own descriptor */
    struct rlimit rl = {0};
    getrlimit(RLIMIT_NOFILE, &rl);
    sb(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
          "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n",
       (double)(v[14] + v[15]) / tck);
    sb(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
          "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n",
       v[24] * (unsigned long long)sysconf(_SC_PAGESIZE));
    sb(b, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
          "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %llu\n", v[23]);
    sb(b, "# HELP process_open_fds Number of open file descriptors.\n"
          "# TYPE process_open_fds gauge\nprocess_open_fds %d\n", fds);
    sb(b, "# HELP process_max_fds Maximum number of open file descriptors.\n"
          "# TYPE process_max_fds gauge\nprocess_max_fds %.0f\n",
       rl.rlim_cur == RLIM_INFINITY ? 1e9 : (double)rl.rlim_cur);
    sb(b, "# HELP process_threads Number of OS threads in the process.\n"
          "# TYPE process_threads gauge\nprocess_threads %llu\n", v[20]);
    sb(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
          "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n", m->start_time);
}

extern char *openblas_get_config(void);

char *fd_metrics_render(fd_server *s, fd_db *db) {
    fd_metrics *m = s->metrics;
    sbuf b = {0};
    char lab[400];
    sb(&b, "# HELP flowd_build_info The build: flowd version, libmicrohttpd and BLAS; always 1.\n"
           "# TYPE flowd_build_info gauge\nflowd_build_info{version=\"");
    sb_label(&b, FD_VERSION);
    sb(&b, "\",microhttpd=\"");
    sb_label(&b, MHD_get_version());
    sb(&b, "\",blas=\"");
    sb_label(&b, openblas_get_config());
    sb(&b, "\",schema=\"%d\"} 1\n", db ? fd_db_schema_version(db) : 0);
    sb(&b, "# HELP flowd_http_requests_total HTTP requests by method, route and status code.\n"
           "# TYPE flowd_http_requests_total counter\n");
    for (int r = 0; r < fd_route_count && r < MAXR; r++) {
        route_labels(r, lab, sizeof lab);
        for (int c = 0; c < NCODES; c++) {
            long v = atomic_load_explicit(&m->req[r][c], memory_order_relaxed);
            if (!v) continue;
            sb(&b, "flowd_http_requests_total{%s,", lab);
            sb_code(&b, c);
            sb(&b, "} %ld\n", v);
        }
    }
    sb(&b, "# HELP flowd_http_request_duration_seconds Request latency by method and route.\n"
           "# TYPE flowd_http_request_duration_seconds histogram\n");
    for (int r = 0; r < fd_route_count && r < MAXR; r++) {
        long h[NB + 1], tot = 0;
        for (int i = 0; i <= NB; i++) tot += h[i] = atomic_load_explicit(&m->hist[r][i], memory_order_relaxed);
        if (!tot) continue;
        route_labels(r, lab, sizeof lab);
        sb_hist(&b, "flowd_http_request_duration_seconds", lab, h,
                atomic_load_explicit(&m->sum[r], memory_order_relaxed));
    }
    /* inference by model: a copy of the table, rendered outside the lock */
    pthread_mutex_lock(&m->inf_mu);
    int ninf = m->ninf;
    long dropped = m->inf_dropped;
    inf_row *rows = malloc((size_t)(ninf ? ninf : 1) * sizeof *rows);
    if (rows) memcpy(rows, m->inf, (size_t)ninf * sizeof *rows);
    pthread_mutex_unlock(&m->inf_mu);
    if (!rows) ninf = 0;
    sb(&b, "# HELP flowd_inference_requests_total Requests that reached a model, by model, version, operation "
           "and status code.\n# TYPE flowd_inference_requests_total counter\n");
    for (int i = 0; i < ninf; i++) {
        snprintf(lab, sizeof lab, "model=\"%s\",version=\"%d\",op=\"%s\"", rows[i].model, rows[i].version,
                 op_names[rows[i].op]);
        for (int c = 0; c < NCODES; c++) {
            if (!rows[i].req[c]) continue;
            sb(&b, "flowd_inference_requests_total{%s,", lab);
            sb_code(&b, c);
            sb(&b, "} %ld\n", rows[i].req[c]);
        }
    }
    sb(&b, "# HELP flowd_inference_duration_seconds Latency of requests that reached a model, by model, "
           "version and operation.\n# TYPE flowd_inference_duration_seconds histogram\n");
    for (int i = 0; i < ninf; i++) {
        snprintf(lab, sizeof lab, "model=\"%s\",version=\"%d\",op=\"%s\"", rows[i].model, rows[i].version,
                 op_names[rows[i].op]);
        sb_hist(&b, "flowd_inference_duration_seconds", lab, rows[i].hist, rows[i].sum);
    }
    free(rows);
    sb(&b, "# HELP flowd_inference_series_dropped_total Inference requests not recorded by model: the table "
           "of (model, version, op) series was full.\n# TYPE flowd_inference_series_dropped_total counter\n"
           "flowd_inference_series_dropped_total %ld\n", dropped);
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
    render_process(&b, m);
    return b.p;
}
