/* flowctl.c: command-line client for the flowd HTTP API.  main, argument
 * parsing, output helpers and the small commands (models, model, jobs, job,
 * cancel, upload); train.c and data.c hold the larger ones. */
#include "flowctl.h"

#include "../common/version.h"
#include "../core/model.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

fc_global fc;

static const char *help_main =
    "usage: flowctl [--url URL] [--token TOKEN | --token-file F] [--json] COMMAND [ARGS]\n"
    "\n"
    "Command-line client for flowd, the normalizing-flow daemon.\n"
    "\n"
    "commands:\n"
    "  models                      list the models\n"
    "  model NAME                  one model: its versions and training metrics\n"
    "  jobs [--state S]            list training jobs, newest first\n"
    "  job ID                      one job and its progress\n"
    "  cancel ID                   cancel a queued or running job\n"
    "  wait ID                     follow a job until it ends\n"
    "  metrics ID [-o F.csv]       a job's loss curve (logged metrics) as CSV\n"
    "  upload FILE --name NAME     store a dataset (CSV, .npy, IDX, JSON; --shape C,H,W)\n"
    "  datasets                    list the stored datasets\n"
    "  delete model NAME | dataset ID   delete a model (all versions) or a dataset\n"
    "  resume ID                   continue a cancelled (or failed, with state) job\n"
    "  alias NAME [ALIAS [VERSION]] list, show or set aliases (--delete drops one)\n"
    "  delete-version NAME VERSION delete one version of a model\n"
    "  push FILE --name NAME       upload a model file (.flow) as a new version\n"
    "  train ...                   start a training job (--wait follows it)\n"
    "  score NAME FILE             log_prob of every row of a CSV/.npy file (streamed)\n"
    "  sample NAME -n N            draw samples (CSV, .npy or a PNG picture)\n"
    "  encode NAME FILE            x to z (and log|det|) of every row\n"
    "  decode NAME FILE            z to x (and log|det|) of every row\n"
    "  version                     this client's and the server's versions\n"
    "\n"
    "global options (anywhere on the line):\n"
    "  --url URL       server (env FLOWD_URL, default http://127.0.0.1:8080)\n"
    "  --token TOKEN   bearer token (env FLOWD_TOKEN)\n"
    "  --token-file F  read the token from F (a bare token, or a 'read TOKEN' line)\n"
    "  --json          machine-readable JSON on stdout instead of tables; errors too:\n"
    "                  {\"status\":N,\"error\":{\"code\",\"message\",...}} on stdout\n"
    "  --version       print flowctl's version\n"
    "  --help          help of a command: flowctl COMMAND --help\n"
    "\n"
    "exit codes:\n"
    "  0    ok\n"
    "  1    usage error (bad arguments, unreadable input or unwritable output file)\n"
    "  2    HTTP/API error: the server's error code and message are printed\n"
    "  3    connection failure: no answer from the server\n"
    "  4    train --wait: the job failed\n"
    "  5    train --wait: the job was cancelled\n"
    "  130  train --wait: interrupted and detached (the job keeps running)\n";

/* ---- arguments ---------------------------------------------------------------------- */
int fc_usage_error(const char *help, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "flowctl: %s\n", msg);
    fc_print_json_error(0, "usage", msg, NULL);
    if (help) {
        const char *nl = strchr(help, '\n');
        fprintf(stderr, "%.*s\n(see --help)\n", nl ? (int)(nl - help) : (int)strlen(help), help);
    }
    return FC_USAGE;
}

int fc_parse(int argc, char **argv, const fc_optdef *defs, fc_args *a, const char *help) {
    memset(a, 0, sizeof *a);
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        char *s = argv[i];
        if (only_pos || s[0] != '-' || !s[1]) {
            if (a->npos == FC_MAXPOS) return fc_usage_error(help, "too many arguments");
            a->pos[a->npos++] = s;
            continue;
        }
        if (!strcmp(s, "--")) {
            only_pos = 1;
            continue;
        }
        char name[64];
        const char *val = NULL;
        if (s[1] == '-') {
            const char *eq = strchr(s + 2, '=');
            size_t n = eq ? (size_t)(eq - s - 2) : strlen(s + 2);
            if (n >= sizeof name) return fc_usage_error(help, "unknown option %s", s);
            memcpy(name, s + 2, n);
            name[n] = 0;
            if (eq) val = eq + 1;
        } else {
            if (s[2]) return fc_usage_error(help, "unknown option %s", s);
            name[0] = 0;
            for (int k = 0; defs && defs[k].name; k++)
                if (defs[k].shortc == s[1]) snprintf(name, sizeof name, "%s", defs[k].name);
            if (s[1] == 'h') snprintf(name, sizeof name, "help");
            if (!name[0]) return fc_usage_error(help, "unknown option %s", s);
        }
        if (!strcmp(name, "help")) {
            fputs(help, stdout);
            exit(FC_OK);
        }
        if (!strcmp(name, "json")) {
            fc.json = 1;
            continue;
        }
        if (!strcmp(name, "url") || !strcmp(name, "token") || !strcmp(name, "token-file")) {
            if (!val) {
                if (i + 1 >= argc) return fc_usage_error(help, "--%s needs a value", name);
                val = argv[++i];
            }
            if (name[0] == 'u') fc.url = val;
            else if (!strcmp(name, "token")) fc.token = val;
            else if (!(fc.token = fc_read_token_file(val))) return FC_USAGE;
            continue;
        }
        int k = 0;
        while (defs && defs[k].name && strcmp(defs[k].name, name)) k++;
        if (!defs || !defs[k].name) return fc_usage_error(help, "unknown option %s", s);
        if (defs[k].has_arg) {
            if (!val) {
                if (i + 1 >= argc) return fc_usage_error(help, "--%s needs a value", name);
                val = argv[++i];
            }
        } else if (val) {
            return fc_usage_error(help, "--%s takes no value", name);
        } else {
            val = "";
        }
        a->val[k] = val;
    }
    return FC_OK;
}

const char *fc_opt(const fc_args *a, const fc_optdef *defs, const char *name) {
    for (int k = 0; defs[k].name; k++)
        if (!strcmp(defs[k].name, name)) return a->val[k];
    return NULL;
}

int fc_parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        return fc_usage_error(NULL, "%s: expected an integer from %ld to %ld, got '%s'", opt, lo, hi, s);
    *out = v;
    return FC_OK;
}

int fc_parse_double(const char *opt, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || v != v)
        return fc_usage_error(NULL, "%s: expected a number, got '%s'", opt, s);
    *out = v;
    return FC_OK;
}

/* ---- output ---------------------------------------------------------------------------- */
void fc_print_json(const cJSON *o) {
    char *s = cJSON_Print(o);
    if (s) printf("%s\n", s);
    free(s);
}

void fc_table_init(fc_table *t, int ncol) {
    memset(t, 0, sizeof *t);
    t->ncol = ncol;
}

void fc_table_add(fc_table *t, const char *const *row) {
    if (t->nrow == t->cap) {
        int cap = t->cap ? 2 * t->cap : 16;
        char **c = realloc(t->cells, (size_t)cap * t->ncol * sizeof *c);
        if (!c) return;
        t->cells = c;
        t->cap = cap;
    }
    for (int j = 0; j < t->ncol; j++) t->cells[t->nrow * t->ncol + j] = strdup(row[j] ? row[j] : "-");
    t->nrow++;
}

void fc_table_print(fc_table *t, FILE *f) {
    int w[32] = {0};
    for (int i = 0; i < t->nrow; i++)
        for (int j = 0; j < t->ncol && j < 32; j++) {
            int n = (int)strlen(t->cells[i * t->ncol + j]);
            if (n > w[j]) w[j] = n;
        }
    for (int i = 0; i < t->nrow; i++) {
        for (int j = 0; j < t->ncol; j++) {
            const char *c = t->cells[i * t->ncol + j];
            if (j == t->ncol - 1) fprintf(f, "%s", c);
            else fprintf(f, "%-*s  ", w[j < 32 ? j : 31], c);
        }
        fputc('\n', f);
    }
}

void fc_table_free(fc_table *t) {
    for (int i = 0; i < t->nrow * t->ncol; i++) free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

static char *rot(void) {
    static char bufs[32][256];
    static int k;
    return bufs[k++ & 31];
}

const char *fc_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsNumber(v)) {
        char *b = rot();
        snprintf(b, 256, "%.15g", v->valuedouble);
        return b;
    }
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? "true" : "false";
    return "-";
}

const char *fc_num(const cJSON *o, const char *key, const char *fmt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return "-";
    char *b = rot();
    snprintf(b, 256, fmt, v->valuedouble);
    return b;
}

const char *fc_time(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) return "-";
    char *b = rot();
    snprintf(b, 256, "%.19s", v->valuestring);
    if (strlen(b) > 10 && b[10] == 'T') b[10] = ' ';
    return b;
}

int fc_out_open(fc_outfile *o, const char *path) {
    memset(o, 0, sizeof *o);
    o->path = path;
    if (!path || !strcmp(path, "-")) {
        o->path = NULL;
        o->f = stdout;
        return FC_OK;
    }
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%d", path, (int)getpid());
    if (!(o->f = fopen(o->tmp, "wb"))) {
        fprintf(stderr, "flowctl: cannot write %s: %s\n", path, strerror(errno));
        return FC_USAGE;
    }
    return FC_OK;
}

int fc_out_close(fc_outfile *o, int ok) {
    if (!o->f) return FC_USAGE;
    int bad = ferror(o->f);
    if (!o->path) {
        bad |= fflush(o->f) != 0;
        o->f = NULL;
        if (bad && ok) fprintf(stderr, "flowctl: write error on stdout\n");
        return bad ? FC_USAGE : FC_OK;
    }
    bad |= fflush(o->f) != 0 || fsync(fileno(o->f)) != 0;
    bad |= fclose(o->f) != 0;
    o->f = NULL;
    if (ok && !bad && rename(o->tmp, o->path) == 0 && nf_fsync_dir(o->path) == 0) return FC_OK;
    if (ok) fprintf(stderr, "flowctl: cannot write %s: %s\n", o->path, strerror(errno));
    unlink(o->tmp);
    return FC_USAGE;
}

/* ---- models ---------------------------------------------------------------------------- */
static const char *help_models =
    "usage: flowctl models [--json]\n"
    "\n"
    "Lists the models: name, latest version, dimension, context dimension, creation time.\n"
    "--json prints the server's {\"models\":[...]} unchanged.\n";

static int cmd_models(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_models);
    if (rc) return rc;
    if (a.npos) return fc_usage_error(help_models, "models takes no arguments");
    fc_resp r;
    if ((rc = fc_get("/v1/models", &r))) goto out;
    if (fc.json) {
        fc_print_json(r.json);
        goto out;
    }
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(r.json, "models"), *m;
    if (!cJSON_GetArraySize(ms)) {
        printf("no models\n");
        goto out;
    }
    fc_table t;
    fc_table_init(&t, 5);
    fc_table_add(&t, (const char *[]){"NAME", "VERSION", "DIM", "CONTEXT", "CREATED"});
    cJSON_ArrayForEach(m, ms) {
        fc_table_add(&t, (const char *[]){fc_str(m, "name"), fc_str(m, "latest_version"), fc_str(m, "dim"),
                                          fc_str(m, "context_dim"), fc_time(m, "created_at")});
    }
    fc_table_print(&t, stdout);
    fc_table_free(&t);
out:
    fc_resp_free(&r);
    return rc;
}

static const char *help_model =
    "usage: flowctl model NAME [--json]\n"
    "\n"
    "Shows a model: its versions with their size, parameter count and training\n"
    "metrics, and the layers of the latest version.\n";

static int cmd_model(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_model);
    if (rc) return rc;
    if (a.npos != 1) return fc_usage_error(help_model, "model takes one NAME");
    char path[600];
    snprintf(path, sizeof path, "/v1/models/%s", fc_esc(a.pos[0]));
    fc_resp r;
    if ((rc = fc_get(path, &r))) goto out;
    if (fc.json) {
        fc_print_json(r.json);
        goto out;
    }
    const cJSON *m = r.json, *v, *latest = NULL;
    printf("model    %s\nlatest   version %s\ndefault  version %s (what calls without --version use)\n"
           "created  %s\n\n",
           fc_str(m, "name"), fc_str(m, "latest_version"), fc_str(m, "default_version"), fc_time(m, "created_at"));
    fc_table t;
    fc_table_init(&t, 10);
    fc_table_add(&t, (const char *[]){"VERSION", "ALIASES", "DIM", "CONTEXT", "PARAMS", "TRAIN_NLL", "VAL_NLL",
                                      "EPOCHS", "JOB", "CREATED"});
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(m, "versions")) {
        const cJSON *met = cJSON_GetObjectItemCaseSensitive(v, "metrics"), *al;
        char aliases[256] = "";
        size_t k = 0;
        cJSON_ArrayForEach(al, cJSON_GetObjectItemCaseSensitive(v, "aliases"))
            if (cJSON_IsString(al) && k < sizeof aliases)
                k += (size_t)snprintf(aliases + k, sizeof aliases - k, "%s%s", k ? "," : "", al->valuestring);
        fc_table_add(&t, (const char *[]){fc_str(v, "version"), k ? aliases : NULL, fc_str(v, "dim"),
                                          fc_str(v, "context_dim"), fc_str(met, "num_params"),
                                          fc_num(met, "train_nll", "%.4f"), fc_num(met, "val_nll", "%.4f"),
                                          fc_str(met, "epochs_run"), fc_str(v, "job_id"), fc_time(v, "created_at")});
        latest = v;
    }
    fc_table_print(&t, stdout);
    fc_table_free(&t);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(latest, "config"), "layers"), *l;
    if (cJSON_GetArraySize(layers)) {
        printf("\nlayers of version %s:", fc_str(latest, "version"));
        int i = 0;
        cJSON_ArrayForEach(l, layers) printf("%s%s", i++ % 6 ? ", " : "\n  ", fc_str(l, "type"));
        printf("\n");
    }
out:
    fc_resp_free(&r);
    return rc;
}

/* ---- jobs ----------------------------------------------------------------------------- */
static const char *help_jobs =
    "usage: flowctl jobs [--state S] [--limit N] [--page-token T] [--json]\n"
    "\n"
    "Lists training jobs, newest first.  --state filters by queued, running,\n"
    "succeeded, failed or cancelled.  --limit (default 50) is the page size; when\n"
    "there are more, the next page's token is printed.\n";

static int cmd_jobs(int argc, char **argv) {
    static const fc_optdef defs[] = {{"state", 's', 1}, {"limit", 0, 1}, {"page-token", 0, 1}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_jobs);
    if (rc) return rc;
    if (a.npos) return fc_usage_error(help_jobs, "jobs takes no positional arguments");
    char path[1024];
    int k = snprintf(path, sizeof path, "/v1/jobs");
    const char *sep = "?", *st = fc_opt(&a, defs, "state"), *lim = fc_opt(&a, defs, "limit"),
               *pt = fc_opt(&a, defs, "page-token");
    long limv;
    if (lim && fc_parse_long("--limit", lim, 1, 1000, &limv)) return FC_USAGE;
    if (st) k += snprintf(path + k, sizeof path - k, "%sstate=%s", sep, fc_esc(st)), sep = "&";
    if (lim) k += snprintf(path + k, sizeof path - k, "%slimit=%ld", sep, limv), sep = "&";
    if (pt) k += snprintf(path + k, sizeof path - k, "%spage_token=%s", sep, fc_esc(pt)), sep = "&";
    fc_resp r;
    if ((rc = fc_get(path, &r))) goto out;
    if (fc.json) {
        fc_print_json(r.json);
        goto out;
    }
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(r.json, "jobs"), *j;
    if (!cJSON_GetArraySize(js)) {
        printf("no jobs\n");
    } else {
        fc_table t;
        fc_table_init(&t, 8);
        fc_table_add(&t, (const char *[]){"ID", "STATE", "MODEL", "VERSION", "EPOCH", "TRAIN_LOSS", "VAL_LOSS",
                                          "CREATED"});
        cJSON_ArrayForEach(j, js) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "progress");
            char ep[64] = "-";
            if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(p, "epoch")))
                snprintf(ep, sizeof ep, "%s/%s", fc_str(p, "epoch"), fc_str(p, "epochs"));
            fc_table_add(&t, (const char *[]){fc_str(j, "id"), fc_str(j, "state"), fc_str(j, "model"),
                                              fc_str(j, "version"), ep, fc_num(p, "train_loss", "%.4f"),
                                              fc_num(p, "val_loss", "%.4f"), fc_time(j, "created_at")});
        }
        fc_table_print(&t, stdout);
        fc_table_free(&t);
    }
    const cJSON *nt = cJSON_GetObjectItemCaseSensitive(r.json, "next_page_token");
    if (cJSON_IsString(nt) && *nt->valuestring) printf("(more: --page-token %s)\n", nt->valuestring);
out:
    fc_resp_free(&r);
    return rc;
}

static int valid_id(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return 0;
    return 1;
}

static const char *help_job =
    "usage: flowctl job ID [--json]\n"
    "\n"
    "Shows a job: state, model, progress (epoch, step, losses, speed, ETA),\n"
    "times and the error of a failed job.\n";

static int cmd_job(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_job);
    if (rc) return rc;
    if (a.npos != 1 || !valid_id(a.pos[0])) return fc_usage_error(help_job, "job takes one numeric ID");
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", a.pos[0]);
    fc_resp r;
    if ((rc = fc_get(path, &r))) goto out;
    if (fc.json) {
        fc_print_json(r.json);
        goto out;
    }
    const cJSON *j = r.json, *p = cJSON_GetObjectItemCaseSensitive(j, "progress");
    fc_table t;
    fc_table_init(&t, 2);
    char ep[64], st[64];
    snprintf(ep, sizeof ep, "%s / %s", fc_str(p, "epoch"), fc_str(p, "epochs"));
    snprintf(st, sizeof st, "%s / %s", fc_str(p, "step"), fc_str(p, "total_steps"));
    const char *rows[][2] = {
        {"id", fc_str(j, "id")},
        {"state", fc_str(j, "state")},
        {"model", fc_str(j, "model")},
        {"version", fc_str(j, "version")},
        {"epoch", ep},
        {"step", st},
        {"train_loss", fc_num(p, "train_loss", "%.6g")},
        {"val_loss", fc_num(p, "val_loss", "%.6g")},
        {"best_val_loss", fc_num(p, "best_val_loss", "%.6g")},
        {"lr", fc_num(p, "lr", "%.3g")},
        {"samples/s", fc_num(p, "samples_per_second", "%.0f")},
        {"eta", fc_num(p, "eta_seconds", "%.0f s")},
        {"held for requests", fc_num(p, "held_seconds", "%.1f s")},
        {"created", fc_time(j, "created_at")},
        {"started", fc_time(j, "started_at")},
        {"finished", fc_time(j, "finished_at")},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) fc_table_add(&t, rows[i]);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (cJSON_IsString(e)) fc_table_add(&t, (const char *[]){"error", e->valuestring});
    else if (cJSON_IsObject(e)) fc_table_add(&t, (const char *[]){"error", fc_str(e, "message")});
    fc_table_print(&t, stdout);
    fc_table_free(&t);
out:
    fc_resp_free(&r);
    return rc;
}

static const char *help_cancel =
    "usage: flowctl cancel ID [--json]\n"
    "\n"
    "Asks the server to cancel a queued or running job (exit 2 with 'conflict'\n"
    "when it has already finished).\n";

static int cmd_cancel(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_cancel);
    if (rc) return rc;
    if (a.npos != 1 || !valid_id(a.pos[0])) return fc_usage_error(help_cancel, "cancel takes one numeric ID");
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", a.pos[0]);
    fc_resp r;
    if (!(rc = fc_post_json(path, NULL, &r))) {
        if (fc.json && r.json) fc_print_json(r.json);
        else if (fc.json) printf("{\"id\":\"%s\",\"cancel_requested\":true}\n", a.pos[0]);
        else printf("cancel requested for job %s\n", a.pos[0]);
    }
    fc_resp_free(&r);
    return rc;
}

/* ---- upload ----------------------------------------------------------------------------- */
static const char *help_upload =
    "usage: flowctl upload FILE --name NAME [--shape C,H,W] [--json]\n"
    "\n"
    "Stores a dataset on the server and prints its id (use it with\n"
    "'flowctl train --dataset ID').  The format comes from the extension, else\n"
    "from the content: .csv/.txt (CSV, an optional header line), .npy (NumPy),\n"
    ".json ({\"rows\":[[...]]}), .idx/*-ubyte (IDX, MNIST style), .gz (gzipped IDX).\n"
    "The file is streamed, not read into memory.  Images: IDX and .npy files of\n"
    "(n,H,W) or (n,C,H,W) keep their shape; --shape C,H,W declares it for rows\n"
    "of other files (C*H*W values a row, flat in C-H-W order).\n";

static const char *ends(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcasecmp(s + n - m, suf) ? s + n - m : NULL;
}

static const char *upload_ctype(const char *path, FILE *f) {
    if (ends(path, ".csv") || ends(path, ".txt")) return "text/csv";
    if (ends(path, ".npy")) return "application/x-npy";
    if (ends(path, ".json")) return "application/json";
    if (ends(path, ".gz")) return "application/gzip";
    if (ends(path, ".idx") || ends(path, "-ubyte") || strstr(path, "-idx")) return "application/x-idx";
    unsigned char b[8] = {0};
    size_t n = fread(b, 1, sizeof b, f);
    rewind(f);
    if (n >= 6 && !memcmp(b, "\x93NUMPY", 6)) return "application/x-npy";
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) return "application/gzip";
    if (n >= 4 && b[0] == 0 && b[1] == 0 && b[2] >= 8 && b[2] <= 0x0e) return "application/x-idx";
    size_t i = 0;
    while (i < n && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t')) i++;
    if (i < n && (b[i] == '{' || b[i] == '[')) return "application/json";
    return "text/csv";
}

static int cmd_upload(int argc, char **argv) {
    static const fc_optdef defs[] = {{"name", 0, 1}, {"shape", 0, 1}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_upload);
    if (rc) return rc;
    const char *name = fc_opt(&a, defs, "name"), *shape = fc_opt(&a, defs, "shape");
    if (shape && (strlen(shape) > 64 || strspn(shape, "0123456789,") != strlen(shape)))
        return fc_usage_error(help_upload, "--shape: give C,H,W, e.g. 1,28,28");
    if (a.npos != 1 || !name) return fc_usage_error(help_upload, "upload takes FILE and --name NAME");
    FILE *f = fopen(a.pos[0], "rb");
    struct stat sb;
    if (!f || fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "flowctl: cannot read %s: %s\n", a.pos[0], f ? "not a regular file" : strerror(errno));
        if (f) fclose(f);
        return FC_USAGE;
    }
    char path[700];
    snprintf(path, sizeof path, "/v1/datasets?name=%s%s%s", fc_esc(name), shape ? "&shape=" : "",
             shape ? shape : "");
    fc_req q = {.method = "POST", .path = path, .ctype = upload_ctype(a.pos[0], f), .upload = f,
                .len = (size_t)sb.st_size, .timeout_s = 3600};
    fc_resp r;
    rc = fc_http(&q, &r);
    fclose(f);
    if (!rc) {
        if (fc.json) {
            fc_print_json(r.json);
        } else {
            const cJSON *d = r.json, *sh = cJSON_GetObjectItemCaseSensitive(d, "shape");
            char shp[64] = "";
            if (cJSON_GetArraySize(sh) == 3)
                snprintf(shp, sizeof shp, ", images %dx%dx%d", cJSON_GetArrayItem(sh, 0)->valueint,
                         cJSON_GetArrayItem(sh, 1)->valueint, cJSON_GetArrayItem(sh, 2)->valueint);
            printf("dataset %s: name %s, %s rows x %s%s, format %s\n", fc_str(d, "id"), fc_str(d, "name"),
                   fc_str(d, "rows"), fc_str(d, "dim"), shp, fc_str(d, "format"));
        }
    }
    fc_resp_free(&r);
    return rc;
}

/* ---- main -------------------------------------------------------------------------------- */
int main(int argc, char **argv) {
    fc.url = getenv("FLOWD_URL");
    if (!fc.url || !*fc.url) fc.url = "http://127.0.0.1:8080";
    fc.token = getenv("FLOWD_TOKEN");
    /* global options before the command */
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            fputs(help_main, stdout);
            return FC_OK;
        } else if (!strcmp(s, "--version")) {
            printf("flowctl %s\n", FLOWD_VERSION);
            return FC_OK;
        } else if (!strcmp(s, "--json")) {
            fc.json = 1;
        } else if ((!strcmp(s, "--url") || !strcmp(s, "--token")) && i + 1 < argc) {
            if (s[2] == 'u') fc.url = argv[++i];
            else fc.token = argv[++i];
        } else if (!strncmp(s, "--url=", 6)) {
            fc.url = s + 6;
        } else if (!strncmp(s, "--token=", 8)) {
            fc.token = s + 8;
        } else if (!strcmp(s, "--token-file") || !strncmp(s, "--token-file=", 13)) {
            const char *tf = s[12] == '=' ? s + 13 : i + 1 < argc ? argv[++i] : NULL;
            if (!tf) return fc_usage_error(help_main, "--token-file needs a value");
            if (!(fc.token = fc_read_token_file(tf))) return FC_USAGE;
        } else {
            return fc_usage_error(help_main, "unknown option %s", s);
        }
    }
    if (i >= argc) return fc_usage_error(help_main, "no command given");
    const char *cmd = argv[i];
    if (!strcmp(cmd, "help")) {
        fputs(help_main, stdout);
        return FC_OK;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"models", cmd_models},         {"model", cmd_model},       {"jobs", cmd_jobs},
                {"job", cmd_job},               {"cancel", cmd_cancel},     {"upload", cmd_upload},
                {"train", fc_cmd_train},        {"score", fc_cmd_score},    {"sample", fc_cmd_sample},
                {"version", fc_cmd_version},    {"delete", fc_cmd_delete},  {"datasets", fc_cmd_datasets},
                {"wait", fc_cmd_wait},          {"encode", fc_cmd_encode},  {"decode", fc_cmd_decode},
                {"metrics", fc_cmd_metrics},    {"alias", fc_cmd_alias},    {"push", fc_cmd_push},
                {"delete-version", fc_cmd_delete_version},                  {"resume", fc_cmd_resume}};
    for (size_t k = 0; k < sizeof cmds / sizeof cmds[0]; k++) {
        if (strcmp(cmd, cmds[k].name)) continue;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int rc = cmds[k].fn(argc - i - 1, argv + i + 1);
        fflush(stdout);
        return rc;
    }
    return fc_usage_error(help_main, "unknown command '%s'", cmd);
}
