/* daemon.h: end-to-end test helpers: start the real flowd binary on
 * 127.0.0.1 (port 0, --port-file) over a fresh temporary directory, talk to
 * it over HTTP with libcurl, stop it (SIGTERM, then SIGKILL after a
 * timeout) and remove its files.
 *
 * The daemon runs with PR_SET_PDEATHSIG, so a test process that dies (a
 * crash, the runner's timeout) takes its daemon with it; a SIGALRM handler
 * also removes the directory before the test process dies of the timeout.
 *
 * The binary is $FLOWD_BIN, else "flowd" next to the running test binary
 * (/proc/self/exe), so `make asan` tests build/asan/flowd. */
#ifndef FLOWD_TEST_DAEMON_H
#define FLOWD_TEST_DAEMON_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct dmn {
    char dir[96];    /* temporary directory, removed by dmn_cleanup */
    char db[160];    /* dir/flowd.db */
    char log[160];   /* dir/flowd.log: the daemon's stderr */
    char portf[160]; /* dir/port */
    pid_t pid;       /* 0 when not running */
    int port;
    const char *token; /* sent as Bearer by dmn_http when set (borrowed) */
    int log_requests;  /* start without --quiet: one log line per request */
    long rlimit_data;  /* > 0: the daemon starts under RLIMIT_DATA of this many bytes */
} dmn;

const char *dmn_bin(void);
/* Creates the temporary directory and fills the paths. */
int dmn_init(dmn *d);
/* Starts `flowd serve --db DB --listen 127.0.0.1:0 --port-file F --quiet
 * ARGS...` with env (NULL-terminated "K=V" list, may be NULL) added to the
 * environment, and waits (up to 15 s) for the port file.  -1 if the daemon
 * exits or never listens (its log is printed). */
int dmn_start(dmn *d, const char *const *args, const char *const *env);
/* SIGTERM, wait up to 20 s, then SIGKILL.  Returns the exit status (or
 * 128+signal), -1 if none was running. */
int dmn_stop(dmn *d);
/* SIGKILL and reap. */
void dmn_kill9(dmn *d);
/* Stops the daemon if running, prints its log tail when the test failed,
 * removes the directory. */
void dmn_cleanup(dmn *d);
/* 1 when the daemon's log (its stderr, and run_flowd's output) contains
 * needle. */
int dmn_log_has(dmn *d, const char *needle);
/* The daemon's peak resident size (VmHWM of /proc/PID/status), KiB; -1. */
long dmn_peak_kib(dmn *d);
/* A TCP connection to 127.0.0.1:port (a raw socket), or -1. */
int dmn_connect(int port);
/* Path of a file name inside the directory (static buffer rotation of 4). */
const char *dmn_path(dmn *d, const char *name);

/* Runs the flowd binary with argv (after argv[0]) to completion, stdout and
 * stderr appended to the daemon log; returns the exit status (-1 on failure
 * to run, 128+sig if killed by a signal), killed after timeout_s. */
int run_flowd(dmn *d, const char *const *args, const char *const *env, double timeout_s);
/* The same for any program: argv[0] is its path (argv NULL-terminated). */
int dmn_run(dmn *d, const char *const *argv, const char *const *env, double timeout_s);

/* Writes a realnvp model of dimension 2 with C context columns (depth 3,
 * hidden [8], parameters a fixed non-zero pattern) into the directory and
 * imports it as name; *out (may be NULL) gets the same model loaded in
 * this process, for reference values (free with nf_model_free).  0 or -1. */
struct nf_model;
int dmn_make_model(dmn *d, const char *name, int C, struct nf_model **out);

/* ---- HTTP ---------------------------------------------------------------- */
typedef struct hresp {
    long status;      /* 0: transport failure */
    char *body;       /* NUL-terminated, malloc'd */
    size_t len;
    char *headers;    /* raw response headers, NUL-terminated */
    cJSON *json;      /* parsed body when it is JSON, else NULL */
} hresp;

typedef struct hreq {
    const char *method;       /* default GET, or POST when body is set */
    const char *path;         /* e.g. "/v1/models" */
    const char *ctype;        /* Content-Type of the body */
    const void *body;
    size_t len;
    int has_body;             /* send body (even of length 0) */
    int chunked;              /* Transfer-Encoding: chunked */
    const char *accept;
    const char *token;        /* overrides dmn.token; "" sends none */
    const char *const *headers; /* extra "Name: value" lines, NULL-terminated */
    double timeout_s;         /* default 30 */
    int quiet;                /* no message on a transport failure */
    volatile int *abort_flag; /* the transfer is aborted once *abort_flag != 0 */
} hreq;

int dmn_http(dmn *d, const hreq *q, hresp *out);
void hresp_free(hresp *r);
/* Value of a response header (case-insensitive name) into buf; NULL if absent. */
const char *hresp_header(const hresp *r, const char *name, char *buf, size_t n);

/* Shorthands: GET path; POST a JSON text. */
int http_get(dmn *d, const char *path, hresp *out);
int http_post_json(dmn *d, const char *path, const char *json, hresp *out);
/* GET /healthz answers 200 {"status":"ok"} */
int dmn_healthy(dmn *d);
/* The "error.code" of an error body, or "" */
const char *hresp_error_code(const hresp *r);
/* A log_prob body {"inputs":[[0.5,0.25],...]} of at least min_bytes
 * (malloc'd, NUL-terminated; *len its length), NULL when out of memory */
char *rows_body(size_t min_bytes, size_t *len);

/* ---- jobs -------------------------------------------------------------------- */
/* POST /v1/jobs; returns the job id (> 0) or 0 (the response is printed). */
long long submit_job(dmn *d, const char *json);
/* Polls GET /v1/jobs/{id} until the state is terminal (or timeout); writes
 * the final state into state.  Returns 0 when terminal. */
int wait_job(dmn *d, long long id, double timeout_s, char *state, size_t n);
/* The job object (caller deletes), or NULL. */
cJSON *get_job(dmn *d, long long id);

double dmn_now(void);
void dmn_sleep_ms(int ms);

#endif
