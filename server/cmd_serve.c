/* cmd_serve.c: `flowd serve`, `flowd migrate`, `flowd export`, `flowd import`. */
#include "cli.h"
#include "cmd.h"
#include "launcher.h"
#include "server.h"

#include "../core/job.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

extern void openblas_set_num_threads(int);

static const char *env_or(const char *name, const char *def) {
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* HOST:PORT, or [IPV6]:PORT ("[::1]:8080", "[::]:8080"); the host is kept
 * without brackets (an IPv6 address is the one with a ':') */
static int parse_listen(const char *s, fd_config *c) {
    const char *colon = strrchr(s, ':'), *h = s, *he = colon;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':') return -1;
        h = s + 1, he = rb, colon = rb + 1;
    }
    if (!colon || he == h || (size_t)(he - h) >= sizeof c->listen_host) return -1;
    memcpy(c->listen_host, h, (size_t)(he - h));
    c->listen_host[he - h] = 0;
    if ((s[0] == '[') != (strchr(c->listen_host, ':') != NULL)) return -1; /* IPv6 needs its brackets */
    if (!strcmp(c->listen_host, "localhost")) strcpy(c->listen_host, "127.0.0.1");
    int64_t p;
    if (nf_parse_i64(colon + 1, 0, 65535, &p)) return -1;
    c->port = (int)p;
    return 0;
}

/* Token file: one "SCOPE TOKEN" a line (read or write), # comments.  A
 * token is 16 to FD_TOKEN_MAX characters; a longer one (or a longer line)
 * is refused, not cut: cut, it would be a different, shorter token.  A file
 * that others can read is warned about. */
#define FD_TOKEN_MAX 512
static int load_tokens(fd_server *s, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read token file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        fd_log("warn", "token file %s is readable or writable by others (mode %03o): chmod 600 it", path,
               (unsigned)(st.st_mode & 0777));
    char line[FD_TOKEN_MAX + 64];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *p = line;
        size_t n = strlen(p);
        if (n == sizeof line - 1 && p[n - 1] != '\n' && !feof(f)) {
            snprintf(err, errlen, "%s line %d: longer than %zu characters (tokens are at most %d)", path, ln,
                     sizeof line - 2, FD_TOKEN_MAX);
            fclose(f);
            return -1;
        }
        while (*p == ' ' || *p == '\t') p++;
        n = strlen(p);
        while (n && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ')) p[--n] = 0;
        if (!*p || *p == '#') continue;
        char scope[16], tok[FD_TOKEN_MAX + 2], extra[2];
        int got = sscanf(p, "%15s %513s %1s", scope, tok, extra);
        if (got >= 2 && strlen(tok) > FD_TOKEN_MAX) {
            snprintf(err, errlen, "%s line %d: the token is longer than %d characters", path, ln, FD_TOKEN_MAX);
            fclose(f);
            return -1;
        }
        if (got != 2 || (strcmp(scope, "read") && strcmp(scope, "write")) || strlen(tok) < 16) {
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

static int is_loopback(const char *host) { return !strncmp(host, "127.", 4) || !strcmp(host, "::1"); }

/* The daemon of this process, and what `flowd serve` is told beyond its
 * fd_config: where the option table below writes. */
static fd_server server;
static struct {
    const char *listen, *port_file, *train_sched, *mpi_launcher;
    int blas_threads, train_threads, train_nice;
    double train_yield_ms, train_share;
} so;

static const fd_opt serve_options[] = {
    {"db", 0, FD_OPT_STR, &server.cfg.db_path, "FLOWD_DB", .def_str = "data/flowd.db", .arg = "PATH",
     .help = "SQLite database, created and migrated if needed"},
    {"listen", 0, FD_OPT_STR, &so.listen, "FLOWD_LISTEN", .def_str = "127.0.0.1:8080", .arg = "HOST:PORT",
     .help = "address to bind, IPv4 HOST:PORT or IPv6 [ADDRESS]:PORT ([::] takes IPv4 too); port 0 picks a "
             "free port, see --port-file"},
    {"workers", 0, FD_OPT_INT, &server.cfg.workers, "FLOWD_WORKERS", 1, .lo = 0, .hi = 64, .arg = "N",
     .help = "training worker threads"},
    {"train-threads", 0, FD_OPT_INT, &so.train_threads, "FLOWD_TRAIN_THREADS", 0, .lo = 1, .hi = 64, .arg = "N",
     .help = "threads that share each training batch",
     .def_text = "the CPUs divided among the workers, 1 with --blas-threads above 1"},
    {"train-nice", 0, FD_OPT_INT, &so.train_nice, "FLOWD_TRAIN_NICE", 19, .lo = 0, .hi = 19, .arg = "N",
     .help = "nice value of training threads, run under --train-sched so that request threads preempt "
             "them; 0 = same priority as requests"},
    {"train-sched", 0, FD_OPT_STR, &so.train_sched, "FLOWD_TRAIN_SCHED", .def_str = "batch", .arg = "batch|idle",
     .help = "scheduling policy of training threads: batch (SCHED_BATCH at --train-nice) or idle "
             "(SCHED_IDLE: a waking request preempts them at once, and they get a core only when nothing "
             "else wants it)"},
    {"train-yield", 0, FD_OPT_NUM, &so.train_yield_ms, "FLOWD_TRAIN_YIELD", FD_TRAIN_YIELD_MS, .lo = 0, .hi = 10000, .arg = "MS",
     .help = "training yields to requests: its threads wait between layers until MS milliseconds have "
             "passed with no request being answered; 0 = train alongside requests"},
    {"train-share", 0, FD_OPT_NUM, &so.train_share, "FLOWD_TRAIN_SHARE", FD_TRAIN_SHARE, .lo = 0, .hi = 1, .arg = "F",
     .def_text = "0.1",
     .help = "the share of time training keeps while requests never pause (--train-yield): a thread "
             "goes on after waiting (1-F)/F times the work it just did; 0 = held back as long as "
             "requests keep coming"},
    {"mpi-launcher", 0, FD_OPT_STR, &so.mpi_launcher, "FLOWD_MPI_LAUNCHER", .arg = "COMMAND",
     .help = "run training jobs as MPI programs: COMMAND (split into words as a shell would, but no "
             "shell runs it) followed by this flowd's `train` over the job's dataset exported under "
             "the database's directory (mpi-jobs/), e.g. \"mpirun -n 4 --hostfile hosts\"; jobs that "
             "flowd train cannot run (init, labels from a stored dataset, publish.optimizer_state) "
             "still train in-process.  See docs/scale-out.md"},
    {"http-threads", 0, FD_OPT_INT, &server.cfg.http_threads, "FLOWD_HTTP_THREADS", 0, .lo = 1, .hi = 256,
     .arg = "N", .help = "request threads; event streams hold none", .def_text = "one per CPU, at least 2"},
    {"token-file", 0, FD_OPT_STR, &server.cfg.token_file, "FLOWD_TOKEN_FILE", .arg = "FILE", .env_nonempty = 1,
     .help = "bearer tokens, one \"read TOKEN\" or \"write TOKEN\" a line; without it the daemon serves "
             "loopback only, with no authentication"},
    {"allow-origin", 0, FD_OPT_LIST, &server.cfg.allow_origins, "FLOWD_ALLOW_ORIGIN", .arg = "ORIGIN",
     .help = "a web origin (https://app.example:8443) whose pages may call the API from a browser; repeat "
             "the flag, or list them with commas in the variable.  Requests with any other Origin than the "
             "server's own are refused (403)"},
    {"max-body", 0, FD_OPT_SIZE, &server.cfg.max_body, "FLOWD_MAX_BODY", 64 << 20, .lo = 1024, .hi = 1LL << 34,
     .arg = "BYTES", .help = "largest request body"},
    {"max-inflate", 0, FD_OPT_SIZE, &server.cfg.max_inflate, "FLOWD_MAX_INFLATE", 256 << 20, .lo = 1024,
     .hi = 1 << 30, .arg = "BYTES",
     .help = "largest size a gzipped dataset upload may inflate to, checked while inflating (413 beyond)"},
    {"max-inflate-ratio", 0, FD_OPT_INT, &server.cfg.max_inflate_ratio, "FLOWD_MAX_INFLATE_RATIO", 200, .lo = 2,
     .hi = 2000, .arg = "N",
     .help = "largest inflated:compressed ratio of a gzipped upload once past 1 MiB inflated (413 beyond); "
             "deflate tops out near 1032"},
    {"max-request-memory", 0, FD_OPT_SIZE, &server.cfg.max_request_memory, "FLOWD_MAX_REQUEST_MEMORY",
     2048.0 * (1 << 20), .lo = 1 << 20, .hi = 1LL << 40, .arg = "BYTES",
     .help = "most memory the parse of one request body may take, estimated from the body before "
             "parsing (JSON about 40 bytes per body byte, CSV/.npy/IDX 4, plus the inflated bytes); 413 "
             "beyond"},
    {"max-memory", 0, FD_OPT_SIZE, &server.cfg.max_memory, "FLOWD_MAX_MEMORY", 1024.0 * (1 << 20), .lo = 0,
     .hi = 1LL << 42, .arg = "BYTES",
     .help = "memory all requests together may hold for bodies and their parses, reserved before it is "
             "taken (a body at admission, a parse before parsing); a request that does not fit gets 503 "
             "and one that never could 413; 0 = no budget"},
    {"max-rows", 0, FD_OPT_INT, &server.cfg.max_rows, "FLOWD_MAX_ROWS", 100000, .lo = 1, .hi = 10000000,
     .arg = "N", .help = "rows per log_prob/encode/decode"},
    {"max-sample", 0, FD_OPT_INT, &server.cfg.max_sample, "FLOWD_MAX_SAMPLE", 100000, .lo = 1, .hi = 10000000,
     .arg = "N", .help = "n per sample request"},
    {"max-connections", 0, FD_OPT_INT, &server.cfg.max_connections, "FLOWD_MAX_CONNECTIONS", 512, .lo = 1,
     .hi = 100000, .arg = "N", .help = "open connections"},
    {"conn-timeout", 0, FD_OPT_INT, &server.cfg.conn_timeout, "FLOWD_CONN_TIMEOUT", 30, .lo = 1, .hi = 3600,
     .arg = "S", .help = "idle connection timeout, seconds"},
    {"max-inflight", 0, FD_OPT_INT, &server.cfg.max_inflight, "FLOWD_MAX_INFLIGHT", 256, .lo = 1, .hi = 100000,
     .arg = "N", .help = "requests handled at once before 503"},
    {"max-queued-jobs", 0, FD_OPT_INT, &server.cfg.max_queued_jobs, "FLOWD_MAX_QUEUED_JOBS", 64, .lo = 1,
     .hi = 100000, .arg = "N", .help = "queued jobs before 429"},
    {"cache-models", 0, FD_OPT_INT, &server.cfg.cache_models, "FLOWD_CACHE_MODELS", 16, .lo = 1, .hi = 4096,
     .arg = "N", .help = "model versions kept loaded"},
    {"pack-max", 0, FD_OPT_SIZE, &server.cfg.pack_max, "FLOWD_PACK_MAX", (double)NF_PACK_MAX_BYTES, .lo = 0,
     .hi = 1LL << 34, .arg = "BYTES",
     .help = "a loaded model's dense weights are packed once for scoring and sampling (a second copy, "
             "up to 1.5x faster on small batches) when the copy takes at most BYTES; larger models "
             "serve unpacked; 0 = never pack"},
    {"blas-threads", 0, FD_OPT_INT, &so.blas_threads, "FLOWD_BLAS_THREADS", 1, .lo = 1, .hi = 64, .arg = "N",
     .help = "OpenBLAS threads per call; more oversubscribes the cores, see README"},
    {"port-file", 0, FD_OPT_STR, &so.port_file, .arg = "FILE", .help = "write the bound port there once listening"},
    {"drain-timeout", 0, FD_OPT_INT, &server.cfg.drain_timeout, "FLOWD_DRAIN_TIMEOUT", 30, .lo = 0, .hi = 3600,
     .arg = "S", .help = "at SIGTERM, seconds to wait for requests in flight (uploads, answers) before they are cut"},
    {"publish-retry", 0, FD_OPT_NUM, &fd_publish_retry_s, "FLOWD_PUBLISH_RETRY", 300, .lo = 0, .hi = 86400,
     .arg = "S", .help = "seconds a trained model's publish is retried on a transient database error (busy, "
                         "disk full) before its job fails; a shutdown meanwhile leaves the job to resume"},
    {"max-streams-per-client", 0, FD_OPT_INT, &server.cfg.max_streams_per_client, "FLOWD_MAX_STREAMS_PER_CLIENT",
     8, .lo = 1, .hi = 64, .arg = "N",
     .help = "job event streams one client (a token, or an address without tokens) may hold of the 64; "
             "503 beyond"},
    {"reuse-port", 0, FD_OPT_FLAG, &server.cfg.reuse_port,
     .help = "set SO_REUSEPORT, so that several daemons (on different databases) may share the port; "
             "without it a second daemon on a port in use fails to start"},
    {"quiet", 0, FD_OPT_FLAG, &server.cfg.quiet, .help = "no per-request log lines"},
};

static const fd_cli serve_cli = {
    "flowd serve",
    "usage: flowd serve [OPTIONS]\n"
    "\n"
    "Runs the flowd HTTP daemon in the foreground.  Every option also reads an\n"
    "environment variable (shown); the flag wins.\n"
    "\n",
    "SIGTERM or SIGINT drains: /readyz turns 503, new connections are refused,\n"
    "requests in flight finish (up to --drain-timeout), running jobs checkpoint\n"
    "(and resume at the next start), then the database is closed.\n",
    serve_options, FD_NOPTS(serve_options), .bad_rc = 2};

/* The automatic defaults, then the checks across options: 0 or an exit status. */
static int serve_settle(fd_server *s) {
    fd_config *c = &s->cfg;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    /* one request thread per core: scoring is CPU-bound, and more threads
     * than cores only queue behind each other (on 2 cores, 4 threads took
     * the p99 of 1-row requests from ~2.2 ms to 5-7 ms) */
    if (!c->http_threads) c->http_threads = ncpu > 2 ? (ncpu < 256 ? (int)ncpu : 256) : 2;
    if (!so.train_threads) {
        /* auto: the cores shared by the workers' training pools.  The
         * request threads are not counted: training runs at a lower
         * priority (--train-nice), so requests take a core when they come */
        long per = ncpu / (c->workers > 0 ? c->workers : 1);
        so.train_threads = so.blas_threads > 1 ? 1 : per < 1 ? 1 : per > 64 ? 64 : (int)per;
    }
    if (so.train_threads > 1 && so.blas_threads > 1) {
        /* each of a job's threads calls BLAS: both > 1 oversubscribes the
         * cores (a W2 training step ran ~10x slower on 2 cores) */
        fprintf(stderr, "flowd serve: --train-threads %d splits each batch over threads that each "
                        "call BLAS; use it with --blas-threads 1\n", so.train_threads);
        return 2;
    }
    fd_jobs_set_train_yield(so.train_yield_ms, so.train_share);
    if (fd_jobs_set_train_sched(so.train_sched)) {
        fprintf(stderr, "flowd serve: --train-sched wants batch or idle, got %s\n", so.train_sched);
        return 2;
    }
    c->conn_memory = 256 * 1024;
    if (parse_listen(so.listen, c)) {
        fprintf(stderr, "flowd serve: --listen wants HOST:PORT (IPv4) or [ADDRESS]:PORT (IPv6), got %s\n",
                so.listen);
        return 2;
    }
    char err[512] = "";
    if (fd_launcher_configure(so.mpi_launcher, err, sizeof err)) {
        fprintf(stderr, "flowd serve: %s\n", err);
        return 2;
    }
    if (c->token_file && load_tokens(s, c->token_file, err, sizeof err)) {
        fprintf(stderr, "flowd serve: %s\n", err);
        return 1;
    }
    if (!s->ntokens && !is_loopback(c->listen_host)) {
        fprintf(stderr, "flowd serve: refusing to listen on %s without tokens: give --token-file, or "
                        "listen on 127.0.0.1 or [::1]\n", c->listen_host);
        return 2;
    }
    return 0;
}

/* the tokens' hashes into the database, for the audit of who may write */
static void record_tokens(fd_server *s, fd_db *db) {
    char err[512] = "";
    const char **h = calloc((size_t)s->ntokens, sizeof *h), **sc = calloc((size_t)s->ntokens, sizeof *sc);
    for (int i = 0; h && sc && i < s->ntokens; i++) {
        h[i] = s->tokens[i].hash;
        sc[i] = s->tokens[i].write ? "write" : "read";
    }
    if (!h || !sc || fd_db_tokens_replace(db, h, sc, s->ntokens, err, sizeof err))
        fd_log("warn", "cannot record tokens: %s", err);
    free(h);
    free(sc);
}

static void announce(const fd_server *s, fd_db *db) {
    const fd_config *c = &s->cfg;
    int v6 = strchr(c->listen_host, ':') != NULL;
    if (so.port_file) {
        FILE *pf = fopen(so.port_file, "w");
        if (pf) {
            fprintf(pf, "%d\n", c->port);
            fclose(pf);
        }
    }
    fd_log("info",
           "flowd %s listening on http://%s%s%s:%d (database %s, schema %d, %d training worker%s of %d "
           "thread%s at nice %d %s, %d request threads)",
            FD_VERSION, v6 ? "[" : "", c->listen_host, v6 ? "]" : "", c->port, c->db_path, fd_db_schema_version(db), c->workers,
            c->workers == 1 ? "" : "s", so.train_threads, so.train_threads == 1 ? "" : "s", so.train_nice,
            so.train_nice > 0 ? (strcmp(so.train_sched, "batch") ? "SCHED_IDLE" : "SCHED_BATCH") : "(as requests)",
            c->http_threads);
    if (fd_launcher_enabled())
        fd_log("info", "training jobs run on the MPI launcher: %s ... flowd train", so.mpi_launcher);
    if (!s->ntokens)
        fd_log("warn", "no --token-file: serving loopback only, without authentication");
    fd_log("info", "try: curl -s http://%s%s%s:%d/v1/models", v6 ? "[" : "", c->listen_host, v6 ? "]" : "", c->port);
}

/* Started, it waits for SIGTERM or SIGINT, then drains. */
static int serve_run(fd_server *s, fd_db *db) {
    fd_config *c = &s->cfg;
    char err[512] = "";
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread started below inherits this */
    if (c->workers > 0 && fd_jobs_start(c->db_path, c->workers, so.train_threads, so.train_nice, &s->jobs,
                                       err, sizeof err)) {
        fd_log("error", "cannot start training workers: %s", err);
        return 1;
    }
    if (fd_server_start(s, err, sizeof err)) {
        fd_log("error", "%s", err);
        if (s->jobs) fd_jobs_stop(s->jobs);
        return 1;
    }
    atomic_store(&s->ready, 1);
    announce(s, db);
    int sig = 0;
    sigwait(&set, &sig);
    fd_log("info", "%s received, draining (up to %d s for requests in flight)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
           c->drain_timeout);
    int left = fd_server_drain(s, c->drain_timeout);
    if (left) fd_log("warn", "drain timeout: %d request%s still in flight are cut", left, left == 1 ? "" : "s");
    /* HTTP first: a request admitted before the drain may still call
     * fd_jobs_notify/fd_jobs_cancel on s.jobs, so the workers are stopped and
     * freed only once libmicrohttpd has finished every handler.  (The other
     * order was a use-after-free race, found by make tsan.) */
    fd_server_stop(s);
    if (s->jobs) fd_jobs_stop(s->jobs); /* running jobs checkpoint and stay resumable */
    s->jobs = NULL;
    char ierr[200] = "";
    if (fd_db_integrity_check(db, ierr, sizeof ierr)) fd_log("error", "integrity check: %s", ierr);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    fd_server *s = &server;
    int rc;
    if (fd_cli_parse(&serve_cli, argc, argv, &rc)) return rc;
    if ((rc = serve_settle(s))) return rc;
    /* one BLAS thread by default: request threads and the training
     * worker(s) are the parallelism; BLAS threads on top oversubscribe the
     * cores (README "Threads and BLAS" has the measurement) */
    openblas_set_num_threads(so.blas_threads);
    signal(SIGPIPE, SIG_IGN);
    fd_db *db = NULL;
    char err[512] = "";
    int applied = 0;
    if (fd_db_open(s->cfg.db_path, &db, err, sizeof err)) {
        fprintf(stderr, "flowd serve: database %s: %s\n", s->cfg.db_path, err);
        fd_db_close(db);
        return 1;
    }
    /* one daemon per database, taken before any migration or job (dblock.c) */
    if (fd_db_lock_exclusive(s->cfg.db_path, err, sizeof err) == -1) {
        fprintf(stderr, "flowd serve: %s\n", err);
        fd_db_close(db);
        return 1;
    }
    if (fd_db_migrate(db, &applied, err, sizeof err)) {
        fprintf(stderr, "flowd serve: database %s: %s\n", s->cfg.db_path, err);
        fd_db_close(db);
        return 1;
    }
    if (s->ntokens) record_tokens(s, db);
    rc = serve_run(s, db);
    fd_db_close(db);
    if (rc) return rc;
    free(s->tokens);
    fd_log("info", "stopped");
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
