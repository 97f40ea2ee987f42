/* flowctl.h: shared pieces of the flowd command-line client: exit codes,
 * global options, the HTTP layer over libcurl, argument parsing and small
 * output helpers.  Commands live in flowctl.c (models, jobs, upload),
 * train.c (train, following a job) and data.c (score, sample). */
#ifndef FLOWCTL_H
#define FLOWCTL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>

/* Exit codes a script can rely on. */
enum {
    FC_OK = 0,
    FC_USAGE = 1,         /* bad arguments, or a local file that cannot be read/written */
    FC_API = 2,           /* the server answered with an HTTP error */
    FC_CONN = 3,          /* no answer: connection refused, timeout, DNS */
    FC_JOB_FAILED = 4,    /* train --wait: the job failed */
    FC_JOB_CANCELLED = 5, /* train --wait: the job was cancelled */
    FC_DETACHED = 130     /* train --wait: interrupted and detached; the job keeps running */
};

typedef struct fc_global {
    const char *url;   /* base URL without trailing slash */
    const char *token; /* bearer token or NULL */
    int json;          /* --json: machine output on stdout */
} fc_global;
extern fc_global fc;

/* ---- HTTP ---------------------------------------------------------------- */
typedef struct fc_resp {
    long status;   /* 0: no answer */
    char *body;    /* NUL-terminated, malloc'd */
    size_t len;
    char ctype[128];
    cJSON *json;   /* body parsed when it is JSON */
    char err[256]; /* transport error text when status is 0 */
} fc_resp;

typedef struct fc_req {
    const char *method;  /* default GET, POST with a body */
    const char *path;    /* "/v1/models", appended to fc.url */
    const char *ctype;   /* Content-Type of the body */
    const void *body;
    size_t len;
    FILE *upload;        /* stream the body from this file instead (len bytes) */
    const char *accept;
    double timeout_s;    /* 0: 300 s */
} fc_req;

/* Performs the request.  FC_OK when any HTTP answer came (check status),
 * FC_CONN when none did (r->err says why). */
int fc_http_raw(const fc_req *q, fc_resp *r);
/* fc_http_raw, then prints the failure (stderr) and maps it to an exit
 * code: FC_OK for 2xx, FC_API for an HTTP error, FC_CONN for no answer. */
int fc_http(const fc_req *q, fc_resp *r);
/* Prints "flowctl: HTTP 404 not_found: message" for an error response
 * (stderr), and under --json also {"status","error":{...}} on stdout. */
void fc_print_api_error(const fc_resp *r);
/* Under --json, one error object on stdout: {"status":N,"error":{"code",
 * "message","details"}} (details taken; may be NULL).  A no-op otherwise. */
void fc_print_json_error(long status, const char *code, const char *message, cJSON *details);
void fc_resp_free(fc_resp *r);
/* Shorthands. */
int fc_get(const char *path, fc_resp *r);
int fc_post_json(const char *path, const cJSON *body, fc_resp *r);
/* Percent-escapes a path segment (static buffer rotation of 4). */
const char *fc_esc(const char *s);

/* ---- arguments ------------------------------------------------------------- */
typedef struct fc_optdef {
    const char *name; /* long name without dashes, e.g. "epochs" */
    char shortc;      /* single-letter alias or 0 */
    int has_arg;
} fc_optdef;

#define FC_MAXOPT 32
#define FC_MAXPOS 8
typedef struct fc_args {
    const char *pos[FC_MAXPOS];
    int npos;
    const char *val[FC_MAXOPT]; /* value per optdef index ("" for flags that are set) */
} fc_args;

/* Parses argv (after the command word) against defs (terminated by a NULL
 * name); also takes the global --url, --token, --json.  --help prints help
 * and exits 0.  Returns 0, or FC_USAGE after printing the problem. */
int fc_parse(int argc, char **argv, const fc_optdef *defs, fc_args *a, const char *help);
/* Value of option name (NULL when not given). */
const char *fc_opt(const fc_args *a, const fc_optdef *defs, const char *name);
/* Number parsing for option values: 0 or FC_USAGE (message printed). */
int fc_parse_long(const char *opt, const char *s, long lo, long hi, long *out);
int fc_parse_double(const char *opt, const char *s, double *out);
int fc_usage_error(const char *help, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- output ------------------------------------------------------------------ */
/* Prints a JSON item on stdout (pretty), newline-terminated. */
void fc_print_json(const cJSON *o);
/* A text table: add cells row by row, then print with aligned columns. */
typedef struct fc_table {
    int ncol, nrow, cap;
    char **cells; /* nrow*ncol, malloc'd strings */
} fc_table;
void fc_table_init(fc_table *t, int ncol);
void fc_table_add(fc_table *t, const char *const *row); /* ncol cells, NULL prints "-" */
void fc_table_print(fc_table *t, FILE *f);
void fc_table_free(fc_table *t);
/* Field access with "-" fallbacks, into a static buffer rotation of 32. */
const char *fc_str(const cJSON *o, const char *key);
const char *fc_num(const cJSON *o, const char *key, const char *fmt);
/* "2026-11-23T08:16:28.769Z" -> "2026-11-23 08:16:28" */
const char *fc_time(const cJSON *o, const char *key);

/* ---- versions (lifecycle.c) ---------------------------------------------------- */
/* --version values: a number >= 1 or an alias name (1-64 of A-Z a-z 0-9 . _ -);
 * 0 or FC_USAGE (message printed). */
int fc_check_version(const char *opt, const char *s);
/* body["version"] = s as a number when it is one, else as a string (an alias) */
void fc_add_version(cJSON *body, const char *s);
/* The version number spec (NULL: the default) names in a GET /v1/models/{name}
 * answer; 0 when it names none. */
long fc_model_version(const cJSON *model, const char *spec);
int fc_cmd_alias(int argc, char **argv);
int fc_cmd_delete_version(int argc, char **argv);
int fc_cmd_push(int argc, char **argv);
int fc_cmd_resume(int argc, char **argv);

/* ---- commands ----------------------------------------------------------------- */
int fc_cmd_train(int argc, char **argv);
/* more.c */
int fc_cmd_version(int argc, char **argv);
int fc_cmd_delete(int argc, char **argv);
int fc_cmd_datasets(int argc, char **argv);
int fc_cmd_wait(int argc, char **argv);
int fc_cmd_encode(int argc, char **argv);
int fc_cmd_decode(int argc, char **argv);
int fc_cmd_metrics(int argc, char **argv);
/* The token of a --token-file (a bare token, or the daemon's "SCOPE
 * TOKEN" line); NULL after a message when there is none. */
const char *fc_read_token_file(const char *path);
int fc_cmd_score(int argc, char **argv);
int fc_cmd_sample(int argc, char **argv);
/* Follows job id until it ends (train --wait); returns the exit code. */
int fc_follow_job(const char *id);

/* Temporary output file next to path, renamed over it on success. */
typedef struct fc_outfile {
    FILE *f;
    char tmp[4096];
    const char *path; /* NULL: stdout */
} fc_outfile;
int fc_out_open(fc_outfile *o, const char *path);
/* Closes; on ok renames into place, else removes the temporary.  Returns
 * FC_OK or FC_USAGE on a write error. */
int fc_out_close(fc_outfile *o, int ok);

#endif
