/* cmd_serve.c: `flowd serve`, `flowd migrate`, `flowd export`, `flowd import`. */
#include "cmd.h"
#include "server.h"

#include "../core/job.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern void openblas_set_num_threads(int);

static const char *env_or(const char *name, const char *def) {
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static int parse_listen(const char *s, fd_config *c) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof c->listen_host) return -1;
    memcpy(c->listen_host, s, (size_t)(colon - s));
    c->listen_host[colon - s] = 0;
    if (!strcmp(c->listen_host, "localhost")) strcpy(c->listen_host, "127.0.0.1");
    int64_t p;
    if (nf_parse_i64(colon + 1, 0, 65535, &p)) return -1;
    c->port = (int)p;
    return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    int64_t v;
    if (nf_parse_i64(s, lo, hi, &v)) return -1;
    *out = (long)v;
    return 0;
}

/* Token file: one "SCOPE TOKEN" a line (read or write), # comments. */
static int load_tokens(fd_server *s, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read token file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        size_t n = strlen(p);
        while (n && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ')) p[--n] = 0;
        if (!*p || *p == '#') continue;
        char scope[16], tok[900];
        if (sscanf(p, "%15s %899s", scope, tok) != 2 || (strcmp(scope, "read") && strcmp(scope, "write")) ||
            strlen(tok) < 16) {
            snprintf(err, errlen, "%s line %d: expected \"read TOKEN\" or \"write TOKEN\" (tokens of at least 16 characters)",
                     path, ln);
            fclose(f);
            return -1;
        }
        fd_token *t = realloc(s->tokens, (size_t)(s->ntokens + 1) * sizeof *t);
        if (!t) {
            fclose(f);
            return -1;
        }
        s->tokens = t;
        fd_sha256_hex(tok, strlen(tok), t[s->ntokens].hash);
        t[s->ntokens].write = !strcmp(scope, "write");
        s->ntokens++;
    }
    fclose(f);
    if (s->ntokens == 0) {
        snprintf(err, errlen, "token file %s has no tokens", path);
        return -1;
    }
    return 0;
}

static int is_loopback(const char *host) { return !strncmp(host, "127.", 4); }

static void serve_usage(FILE *f) {
    fprintf(f,
"usage: flowd serve [OPTIONS]\n"
"\n"
"Runs the flowd HTTP daemon in the foreground.  Every option also reads an\n"
"environment variable (shown); the flag wins.\n"
"\n"
"  --db PATH              SQLite database, created and migrated if needed\n"
"                         (FLOWD_DB, default data/flowd.db)\n"
"  --listen HOST:PORT     address to bind (FLOWD_LISTEN, default 127.0.0.1:8080);\n"
"                         port 0 picks a free port (see --port-file)\n"
"  --workers N            training worker threads (FLOWD_WORKERS, default 1)\n"
"  --train-threads N      threads that share each training batch\n"
"                         (FLOWD_TRAIN_THREADS, default: the CPUs divided among\n"
"                         the workers, 1 with --blas-threads above 1)\n"
"  --train-nice N         nice value of training threads, run under SCHED_BATCH\n"
"                         so that request threads preempt them (FLOWD_TRAIN_NICE,\n"
"                         0..19, default 19; 0 = same priority as requests)\n"
"  --http-threads N       request threads (FLOWD_HTTP_THREADS, default: one per CPU,\n"
"                         at least 2; event streams hold none)\n"
"  --token-file FILE      bearer tokens, one \"read TOKEN\" or \"write TOKEN\" a line\n"
"                         (FLOWD_TOKEN_FILE); without it the daemon serves\n"
"                         loopback only, with no authentication\n"
"  --max-body BYTES       largest request body (FLOWD_MAX_BODY, default 67108864)\n"
"  --max-rows N           rows per log_prob/encode/decode (FLOWD_MAX_ROWS, default 100000)\n"
"  --max-sample N         n per sample request (FLOWD_MAX_SAMPLE, default 100000)\n"
"  --max-connections N    open connections (FLOWD_MAX_CONNECTIONS, default 512)\n"
"  --conn-timeout S       idle connection timeout (FLOWD_CONN_TIMEOUT, default 30)\n"
"  --max-inflight N       requests handled at once before 503 (FLOWD_MAX_INFLIGHT, default 256)\n"
"  --max-queued-jobs N    queued jobs before 429 (FLOWD_MAX_QUEUED_JOBS, default 64)\n"
"  --cache-models N       model versions kept loaded (FLOWD_CACHE_MODELS, default 16)\n"
"  --blas-threads N       OpenBLAS threads per call (FLOWD_BLAS_THREADS, default 1;\n"
"                         more oversubscribes the cores, see README)\n"
"  --port-file FILE       write the bound port there once listening\n"
"  --quiet                no per-request log lines\n"
"\n"
"SIGTERM or SIGINT drains: /readyz turns 503, running jobs checkpoint (and\n"
"resume at the next start), then the database is closed.\n");
}

int cmd_serve(int argc, char **argv) {
    fd_server s;
    memset(&s, 0, sizeof s);
    fd_config *c = &s.cfg;
    c->db_path = env_or("FLOWD_DB", "data/flowd.db");
    const char *listen = env_or("FLOWD_LISTEN", "127.0.0.1:8080"), *port_file = NULL;
    c->token_file = getenv("FLOWD_TOKEN_FILE");
    struct { const char *flag, *env; long def, lo, hi; long val; } nums[] = {
        {"workers", "FLOWD_WORKERS", 1, 0, 64, 0},
        {"http-threads", "FLOWD_HTTP_THREADS", 2, 1, 256, 0},
        {"max-body", "FLOWD_MAX_BODY", 64L << 20, 1024, 1L << 34, 0},
        {"max-rows", "FLOWD_MAX_ROWS", 100000, 1, 10000000, 0},
        {"max-sample", "FLOWD_MAX_SAMPLE", 100000, 1, 10000000, 0},
        {"max-connections", "FLOWD_MAX_CONNECTIONS", 512, 1, 100000, 0},
        {"conn-timeout", "FLOWD_CONN_TIMEOUT", 30, 1, 3600, 0},
        {"max-inflight", "FLOWD_MAX_INFLIGHT", 256, 1, 100000, 0},
        {"max-queued-jobs", "FLOWD_MAX_QUEUED_JOBS", 64, 1, 100000, 0},
        {"cache-models", "FLOWD_CACHE_MODELS", 16, 1, 4096, 0},
        {"blas-threads", "FLOWD_BLAS_THREADS", 1, 1, 64, 0},
        {"train-threads", "FLOWD_TRAIN_THREADS", 0, 1, 64, 0},
        {"train-nice", "FLOWD_TRAIN_NICE", 19, 0, 19, 0},
    };
    enum { NNUM = sizeof nums / sizeof nums[0] };
    /* one request thread per core: scoring is CPU-bound, and more threads
     * than cores only queue behind each other (on 2 cores, 4 threads took
     * the p99 of 1-row requests from ~2.2 ms to 5-7 ms) */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    nums[1].def = ncpu > 2 ? (ncpu < 256 ? ncpu : 256) : 2;
    for (int i = 0; i < NNUM; i++) {
        nums[i].val = nums[i].def;
        const char *e = getenv(nums[i].env);
        if (e && *e && parse_int(e, nums[i].lo, nums[i].hi, &nums[i].val)) {
            fprintf(stderr, "flowd serve: %s=%s is not an integer in [%ld, %ld]\n", nums[i].env, e, nums[i].lo, nums[i].hi);
            return 2;
        }
    }
    struct option opts[NNUM + 8];
    memset(opts, 0, sizeof opts);
    for (int i = 0; i < NNUM; i++) opts[i] = (struct option){nums[i].flag, required_argument, 0, 1000 + i};
    opts[NNUM + 0] = (struct option){"db", required_argument, 0, 'd'};
    opts[NNUM + 1] = (struct option){"listen", required_argument, 0, 'l'};
    opts[NNUM + 2] = (struct option){"token-file", required_argument, 0, 't'};
    opts[NNUM + 3] = (struct option){"port-file", required_argument, 0, 'p'};
    opts[NNUM + 4] = (struct option){"quiet", no_argument, 0, 'q'};
    opts[NNUM + 5] = (struct option){"help", no_argument, 0, 'h'};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o >= 1000 && o < 1000 + NNUM) {
            int i = o - 1000;
            if (parse_int(optarg, nums[i].lo, nums[i].hi, &nums[i].val)) {
                fprintf(stderr, "flowd serve: --%s must be an integer in [%ld, %ld]\n", nums[i].flag, nums[i].lo, nums[i].hi);
                return 2;
            }
            continue;
        }
        switch (o) {
        case 'd': c->db_path = optarg; break;
        case 'l': listen = optarg; break;
        case 't': c->token_file = optarg; break;
        case 'p': port_file = optarg; break;
        case 'q': c->quiet = 1; break;
        case 'h': serve_usage(stdout); return 0;
        default: serve_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        serve_usage(stderr);
        return 2;
    }
    if (!nums[11].val) {
        /* auto: the cores shared by the workers' training pools.  The
         * request threads are not counted: training runs at a lower
         * priority (--train-nice), so requests take a core when they come */
        long per = ncpu / (nums[0].val > 0 ? nums[0].val : 1);
        nums[11].val = nums[10].val > 1 ? 1 : per < 1 ? 1 : per > 64 ? 64 : per;
    }
    if (nums[11].val > 1 && nums[10].val > 1) {
        /* each of a job's threads calls BLAS: both > 1 oversubscribes the
         * cores (a W2 training step ran ~10x slower on 2 cores) */
        fprintf(stderr, "flowd serve: --train-threads %ld splits each batch over threads that each "
                        "call BLAS; use it with --blas-threads 1\n", nums[11].val);
        return 2;
    }
    c->workers = (int)nums[0].val;
    c->http_threads = (int)nums[1].val;
    c->max_body = (size_t)nums[2].val;
    c->max_rows = (int)nums[3].val;
    c->max_sample = (int)nums[4].val;
    c->max_connections = (int)nums[5].val;
    c->conn_timeout = (int)nums[6].val;
    c->max_inflight = (int)nums[7].val;
    c->max_queued_jobs = (int)nums[8].val;
    c->cache_models = (int)nums[9].val;
    c->conn_memory = 256 * 1024;
    if (parse_listen(listen, c)) {
        fprintf(stderr, "flowd serve: --listen wants HOST:PORT (IPv4), got %s\n", listen);
        return 2;
    }
    char err[512] = "";
    if (c->token_file && load_tokens(&s, c->token_file, err, sizeof err)) {
        fprintf(stderr, "flowd serve: %s\n", err);
        return 1;
    }
    if (!s.ntokens && !is_loopback(c->listen_host)) {
        fprintf(stderr, "flowd serve: refusing to listen on %s without tokens: give --token-file, or "
                        "listen on 127.0.0.1\n", c->listen_host);
        return 2;
    }
    /* one BLAS thread by default: request threads and the training
     * worker(s) are the parallelism; BLAS threads on top oversubscribe the
     * cores (README "Threads and BLAS" has the measurement) */
    openblas_set_num_threads((int)nums[10].val);
    signal(SIGPIPE, SIG_IGN);
    fd_db *db = NULL;
    int applied = 0;
    if (fd_db_open(c->db_path, &db, err, sizeof err) || fd_db_migrate(db, &applied, err, sizeof err)) {
        fprintf(stderr, "flowd serve: database %s: %s\n", c->db_path, err);
        fd_db_close(db);
        return 1;
    }
    if (s.ntokens) {
        const char **h = calloc((size_t)s.ntokens, sizeof *h), **sc = calloc((size_t)s.ntokens, sizeof *sc);
        for (int i = 0; h && sc && i < s.ntokens; i++) {
            h[i] = s.tokens[i].hash;
            sc[i] = s.tokens[i].write ? "write" : "read";
        }
        if (!h || !sc || fd_db_tokens_replace(db, h, sc, s.ntokens, err, sizeof err))
            fprintf(stderr, "flowd serve: warning: cannot record tokens: %s\n", err);
        free(h);
        free(sc);
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread started below inherits this */
    if (c->workers > 0 && fd_jobs_start(c->db_path, c->workers, (int)nums[11].val, (int)nums[12].val, &s.jobs,
                                       err, sizeof err)) {
        fprintf(stderr, "flowd serve: cannot start training workers: %s\n", err);
        fd_db_close(db);
        return 1;
    }
    if (fd_server_start(&s, err, sizeof err)) {
        fprintf(stderr, "flowd serve: %s\n", err);
        if (s.jobs) fd_jobs_stop(s.jobs);
        fd_db_close(db);
        return 1;
    }
    atomic_store(&s.ready, 1);
    if (port_file) {
        FILE *pf = fopen(port_file, "w");
        if (pf) {
            fprintf(pf, "%d\n", c->port);
            fclose(pf);
        }
    }
    fprintf(stderr,
            "flowd %s listening on http://%s:%d (database %s, schema %d, %d training worker%s of %ld "
            "thread%s at nice %ld, %d request threads)\n",
            FD_VERSION, c->listen_host, c->port, c->db_path, fd_db_schema_version(db), c->workers,
            c->workers == 1 ? "" : "s", nums[11].val, nums[11].val == 1 ? "" : "s", nums[12].val,
            c->http_threads);
    if (!s.ntokens)
        fprintf(stderr, "no --token-file: serving loopback only, without authentication\n");
    fprintf(stderr, "try: curl -s http://%s:%d/v1/models\n", c->listen_host, c->port);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "flowd: %s received, draining\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    atomic_store(&s.draining, 1);
    /* HTTP first: a request admitted before the drain may still call
     * fd_jobs_notify/fd_jobs_cancel on s.jobs, so the workers are stopped and
     * freed only once libmicrohttpd has finished every handler.  (The other
     * order was a use-after-free race, found by make tsan.) */
    fd_server_stop(&s);
    if (s.jobs) fd_jobs_stop(s.jobs); /* running jobs checkpoint and stay resumable */
    s.jobs = NULL;
    char ierr[200] = "";
    if (fd_db_integrity_check(db, ierr, sizeof ierr)) fprintf(stderr, "flowd: integrity check: %s\n", ierr);
    fd_db_close(db);
    free(s.tokens);
    fprintf(stderr, "flowd: stopped\n");
    return 0;
}

/* ---- migrate / export / import ------------------------------------------------------ */
static const char *db_arg(int argc, char **argv, int *i) {
    if (!strcmp(argv[*i], "--db") && *i + 1 < argc) return argv[++*i];
    if (!strncmp(argv[*i], "--db=", 5)) return argv[*i] + 5;
    return NULL;
}

int cmd_migrate(int argc, char **argv) {
    const char *path = env_or("FLOWD_DB", "data/flowd.db");
    for (int i = 1; i < argc; i++) {
        const char *d = db_arg(argc, argv, &i);
        if (d) path = d;
        else {
            fprintf(stderr, "usage: flowd migrate [--db PATH]\n\nCreates the database if needed and applies pending migrations.\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
    }
    fd_db *db = NULL;
    char err[512] = "";
    int applied = 0;
    if (fd_db_open(path, &db, err, sizeof err) || fd_db_migrate(db, &applied, err, sizeof err)) {
        fprintf(stderr, "flowd migrate: %s: %s\n", path, err);
        fd_db_close(db);
        return 1;
    }
    printf("%s: schema version %d (%d migration%s applied)\n", path, fd_db_schema_version(db), applied,
           applied == 1 ? "" : "s");
    fd_db_close(db);
    return 0;
}

int cmd_export(int argc, char **argv) {
    const char *path = env_or("FLOWD_DB", "data/flowd.db"), *spec = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *d = db_arg(argc, argv, &i);
        if (d) path = d;
        else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (argv[i][0] != '-' && !spec) spec = argv[i];
        else {
            fprintf(stderr, "usage: flowd export MODEL[:VERSION] -o FILE [--db PATH]\n");
            return 2;
        }
    }
    if (!spec || !out) {
        fprintf(stderr, "usage: flowd export MODEL[:VERSION] -o FILE [--db PATH]\n");
        return 2;
    }
    char name[80];
    int version = 0;
    const char *colon = strchr(spec, ':');
    snprintf(name, sizeof name, "%.*s", colon ? (int)(colon - spec) : (int)strlen(spec), spec);
    if (colon && (version = atoi(colon + 1)) < 1) {
        fprintf(stderr, "flowd export: version must be a positive integer\n");
        return 2;
    }
    fd_db *db = NULL;
    char err[512] = "";
    void *buf = NULL;
    size_t len = 0;
    int got = 0, rc;
    if (fd_db_open(path, &db, err, sizeof err) || fd_db_migrate(db, NULL, err, sizeof err) ||
        (rc = fd_db_version_get(db, name, version, &buf, &len, &got, err, sizeof err))) {
        fprintf(stderr, "flowd export: %s\n", *err ? err : "model not found");
        fd_db_close(db);
        return 1;
    }
    fd_db_close(db);
    rc = nf_file_write(out, buf, len);
    free(buf);
    if (rc) {
        fprintf(stderr, "flowd export: cannot write %s\n", out);
        return 1;
    }
    printf("exported %s version %d to %s (%zu bytes)\n", name, got, out, len);
    return 0;
}

int cmd_import(int argc, char **argv) {
    const char *path = env_or("FLOWD_DB", "data/flowd.db"), *file = NULL, *name = NULL;
    for (int i = 1; i < argc; i++) {
        const char *d = db_arg(argc, argv, &i);
        if (d) path = d;
        else if (!strcmp(argv[i], "--name") && i + 1 < argc) name = argv[++i];
        else if (argv[i][0] != '-' && !file) file = argv[i];
        else {
            fprintf(stderr, "usage: flowd import FILE --name MODEL [--db PATH]\n");
            return 2;
        }
    }
    if (!file || !name) {
        fprintf(stderr, "usage: flowd import FILE --name MODEL [--db PATH]\n");
        return 2;
    }
    if (!nf_valid_name(name)) {
        fprintf(stderr, "flowd import: --name must be 1-64 characters of A-Z a-z 0-9 . _ -\n");
        return 2;
    }
    void *buf = NULL;
    size_t len = 0;
    if (nf_file_read(file, &buf, &len)) {
        fprintf(stderr, "flowd import: cannot read %s\n", file);
        return 1;
    }
    fd_model_desc d;
    char err[512] = "";
    if (fd_model_describe(buf, len, &d, err, sizeof err)) {
        fprintf(stderr, "flowd import: %s: %s\n", file, err);
        free(buf);
        return 1;
    }
    fd_db *db = NULL;
    int version = 0, rc = 1;
    if (fd_db_open(path, &db, err, sizeof err) || fd_db_migrate(db, NULL, err, sizeof err) ||
        fd_db_version_add(db, name, buf, len, d.dim, d.context_dim, d.config, d.preprocess,
                          d.metrics, 0, &version, err, sizeof err)) {
        fprintf(stderr, "flowd import: %s\n", err);
    } else {
        printf("imported %s as %s version %d\n", file, name, version);
        rc = 0;
    }
    fd_db_close(db);
    free(buf);
    fd_model_desc_free(&d);
    return rc;
}
