/* train.c: `flowctl train`: builds a job body from flags (over an optional
 * --config file), posts it, and with --wait follows the job by polling
 * GET /v1/jobs/{id} twice a second: a progress bar redrawn in place on a
 * terminal, plain lines otherwise.  Ctrl-C asks whether to cancel the job or
 * detach (no terminal: detach). */
#include "flowctl.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static const char *help_train =
    "usage: flowctl train (--dataset ID | --builtin NAME [--n N]) --preset P --model NAME\n"
    "                     [--epochs E] [--batch-size B] [--lr LR] [--seed S]\n"
    "                     [--depth D] [--hidden 64,64] [--config job.json] [--wait] [--json]\n"
    "\n"
    "Starts a training job that publishes its best parameters as the next version\n"
    "of model NAME.\n"
    "\n"
    "  --dataset ID      a stored dataset (see 'flowctl upload')\n"
    "  --builtin NAME    a generated 2-D set: moons, circles, 8gaussians, checkerboard,\n"
    "                    pinwheel, 2spirals, rings; --n rows (server default 10000)\n"
    "  --preset P        realnvp, maf, nsf, ... ; --depth and --hidden override the\n"
    "                    preset's number of steps and conditioner widths\n"
    "  --epochs, --batch-size, --lr, --seed   the job's \"train\" settings\n"
    "  --config FILE     a full job body (JSON, see the API); flags override its fields\n"
    "  --wait            follow the job until it ends: a live progress bar on a\n"
    "                    terminal, one line per epoch otherwise.  Ctrl-C asks whether\n"
    "                    to cancel the job (c) or detach (d); without a terminal it detaches.\n"
    "\n"
    "Without --wait it prints the job id.  --json prints the server's answer (with\n"
    "--wait: the finished job) instead of text.\n"
    "exit codes: 0 submitted (with --wait: succeeded), 1 usage, 2 API error,\n"
    "3 connection failure, 4 job failed, 5 job cancelled, 130 detached.\n";

static cJSON *obj_child(cJSON *o, const char *key) {
    cJSON *c = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsObject(c)) return c;
    cJSON_DeleteItemFromObjectCaseSensitive(o, key);
    c = cJSON_CreateObject();
    cJSON_AddItemToObject(o, key, c);
    return c;
}

static void set_item(cJSON *o, const char *key, cJSON *v) {
    if (cJSON_GetObjectItemCaseSensitive(o, key)) cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
    else cJSON_AddItemToObject(o, key, v);
}

static cJSON *load_config(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "flowctl: cannot read %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    for (size_t k; s && (k = fread(s + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) {
            char *p = realloc(s, cap *= 2);
            if (!p) {
                free(s);
                s = NULL;
            }
            s = p;
        }
    }
    fclose(f);
    cJSON *o = s ? cJSON_ParseWithLength(s, n) : NULL;
    free(s);
    if (!cJSON_IsObject(o)) {
        fprintf(stderr, "flowctl: %s is not a JSON object\n", path);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

int fc_cmd_train(int argc, char **argv) {
    static const fc_optdef defs[] = {
        {"dataset", 0, 1}, {"builtin", 0, 1}, {"n", 'n', 1},     {"preset", 0, 1},
        {"model", 0, 1},   {"epochs", 0, 1},  {"batch-size", 0, 1}, {"lr", 0, 1},
        {"seed", 0, 1},    {"depth", 0, 1},   {"hidden", 0, 1},  {"config", 0, 1},
        {"wait", 'w', 0},  {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_train);
    if (rc) return rc;
#define OPT(n) fc_opt(&a, defs, n)
    if (a.npos) return fc_usage_error(help_train, "train takes no positional arguments ('%s')", a.pos[0]);
    if (OPT("dataset") && OPT("builtin")) return fc_usage_error(help_train, "give --dataset or --builtin, not both");
    cJSON *job = OPT("config") ? load_config(OPT("config")) : cJSON_CreateObject();
    if (!job) return FC_USAGE;
    rc = FC_USAGE;
    if (OPT("model")) set_item(job, "model", cJSON_CreateString(OPT("model")));
    if (OPT("dataset")) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "id", OPT("dataset"));
        set_item(job, "dataset", d);
    } else if (OPT("builtin")) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "builtin", OPT("builtin"));
        set_item(job, "dataset", d);
    }
    if (OPT("n")) {
        long n;
        cJSON *d = cJSON_GetObjectItemCaseSensitive(job, "dataset");
        if (fc_parse_long("--n", OPT("n"), 1, 100000000, &n)) goto out;
        if (!cJSON_GetObjectItemCaseSensitive(d, "builtin")) {
            fc_usage_error(help_train, "--n goes with --builtin");
            goto out;
        }
        set_item(d, "n", cJSON_CreateNumber((double)n));
    }
    if (OPT("preset")) {
        cJSON *fl = obj_child(job, "flow");
        if (cJSON_GetObjectItemCaseSensitive(fl, "layers")) {
            fc_usage_error(help_train, "--preset conflicts with the \"layers\" of the config's flow");
            goto out;
        }
        set_item(fl, "preset", cJSON_CreateString(OPT("preset")));
    }
    if (OPT("depth") || OPT("hidden")) {
        cJSON *fl = cJSON_GetObjectItemCaseSensitive(job, "flow");
        if (!cJSON_GetObjectItemCaseSensitive(fl, "preset")) {
            fc_usage_error(help_train, "--depth and --hidden override a preset: give --preset");
            goto out;
        }
        long v;
        if (OPT("depth")) {
            if (fc_parse_long("--depth", OPT("depth"), 1, 1000, &v)) goto out;
            set_item(fl, "depth", cJSON_CreateNumber((double)v));
        }
        if (OPT("hidden")) {
            cJSON *h = cJSON_CreateArray();
            set_item(fl, "hidden", h);
            char tmp[256];
            snprintf(tmp, sizeof tmp, "%s", OPT("hidden"));
            for (char *sv, *t = strtok_r(tmp, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
                if (fc_parse_long("--hidden", t, 1, 1 << 20, &v)) goto out;
                cJSON_AddItemToArray(h, cJSON_CreateNumber((double)v));
            }
            if (!cJSON_GetArraySize(h)) {
                fc_usage_error(help_train, "--hidden: give widths like 64,64");
                goto out;
            }
        }
    }
    static const struct {
        const char *opt, *key;
        int integer;
    } tr[] = {{"epochs", "epochs", 1}, {"batch-size", "batch_size", 1}, {"lr", "lr", 0}, {"seed", "seed", 1}};
    for (size_t k = 0; k < sizeof tr / sizeof tr[0]; k++) {
        const char *s = OPT(tr[k].opt);
        if (!s) continue;
        char on[32];
        snprintf(on, sizeof on, "--%s", tr[k].opt);
        double v;
        long l;
        if (tr[k].integer) {
            if (fc_parse_long(on, s, tr[k].opt[0] == 's' ? 0 : 1, 2147483647L, &l)) goto out;
            v = (double)l;
        } else if (fc_parse_double(on, s, &v)) {
            goto out;
        }
        set_item(obj_child(job, "train"), tr[k].key, cJSON_CreateNumber(v));
    }
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(job, "model"))) {
        fc_usage_error(help_train, "--model NAME is required");
        goto out;
    }
    if (!cJSON_GetObjectItemCaseSensitive(job, "dataset")) {
        fc_usage_error(help_train, "--dataset ID or --builtin NAME is required");
        goto out;
    }
    if (!cJSON_GetObjectItemCaseSensitive(job, "flow")) {
        fc_usage_error(help_train, "--preset P (or a config with \"flow\") is required");
        goto out;
    }
#undef OPT
    fc_resp r;
    rc = fc_post_json("/v1/jobs", job, &r);
    if (rc == FC_OK) {
        const char *id = fc_str(r.json, "id");
        if (!fc_opt(&a, defs, "wait")) {
            if (fc.json) fc_print_json(r.json);
            else printf("job %s %s (model %s)\n", id, fc_str(r.json, "state"),
                        fc_str(job, "model"));
        } else {
            char idb[64];
            snprintf(idb, sizeof idb, "%s", id);
            if (!fc.json) {
                printf("job %s submitted (model %s)\n", idb, fc_str(job, "model"));
                fflush(stdout);
            }
            rc = fc_follow_job(idb);
        }
    }
    fc_resp_free(&r);
out:
    cJSON_Delete(job);
    return rc;
}

/* ---- following a job ------------------------------------------------------------------------ */
static volatile sig_atomic_t got_sigint;
static void on_sigint(int sig) {
    (void)sig;
    got_sigint = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fmt_dur(char *b, size_t n, double s) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(b, n, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(b, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(b, n, "%ld:%02ld", t / 60, t % 60);
}

static double num(const cJSON *o, const char *k, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* "epoch 3/10 step 120/400 train 1.2345 val 1.3000 55.3k samples/s ETA 0:12" */
static void progress_text(char *b, size_t n, const cJSON *p, int tty) {
    double ep = num(p, "epoch", NAN), eps = num(p, "epochs", NAN), st = num(p, "step", NAN),
           tot = num(p, "total_steps", NAN), tl = num(p, "train_loss", NAN), vl = num(p, "val_loss", NAN),
           sps = num(p, "samples_per_second", NAN), eta = num(p, "eta_seconds", NAN);
    size_t k = 0;
#define ADD(...) k += (size_t)snprintf(b + k, k < n ? n - k : 0, __VA_ARGS__)
    b[0] = 0;
    if (!isnan(ep)) ADD("epoch %.0f/%.0f", ep, eps);
    if (!isnan(st)) {
        if (!isnan(tot) && tot > 0) ADD(" step %.0f/%.0f", st, tot);
        else ADD(" step %.0f", st);
    }
    if (!isnan(tl)) ADD(tty ? " train %.4f" : " train_loss %.6g", tl);
    if (!isnan(vl)) ADD(tty ? " val %.4f" : " val_loss %.6g", vl);
    if (!isnan(sps)) {
        if (tty && sps >= 1e6) ADD(" %.1fM/s", sps / 1e6);
        else if (tty && sps >= 1e3) ADD(" %.0fk/s", sps / 1e3);
        else ADD(tty ? " %.0f/s" : " %.0f samples/s", sps);
    }
    if (!isnan(eta)) {
        char d[32];
        fmt_dur(d, sizeof d, eta);
        ADD(" ETA %s", d);
    }
#undef ADD
    if (k >= n) b[n - 1] = 0;
}

static void draw_bar(const char *id, const char *state, const cJSON *p) {
    double ep = num(p, "epoch", 0), eps = num(p, "epochs", 0), st = num(p, "step", 0), tot = num(p, "total_steps", 0);
    double frac = tot > 0 ? st / tot : eps > 0 ? ep / eps : 0;
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    struct winsize ws;
    int cols = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10 ? ws.ws_col : 100;
    char text[256], line[512], bar[40];
    progress_text(text, sizeof text, p, 1);
    if (strcmp(state, "running")) {
        snprintf(line, sizeof line, "job %s %s...", id, state);
    } else {
        /* the bar takes what the numbers leave of the width, up to 30 */
        int w = cols - 1 - (int)strlen(text) - 8, fill;
        if (w > 30) w = 30;
        if (w >= 5) {
            fill = (int)(frac * w + 0.5);
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '-';
            bar[w] = 0;
            snprintf(line, sizeof line, "[%s] %3.0f%% %s", bar, frac * 100, text);
        } else {
            snprintf(line, sizeof line, "%3.0f%% %s", frac * 100, text);
        }
    }
    if ((int)strlen(line) > cols - 1) line[cols - 1] = 0; /* a wrapped line could not be redrawn */
    printf("\r%s\033[K", line);
    fflush(stdout);
}

/* Ctrl-C while following: returns 'c', 'd' or 0 (keep following). */
static int ask_cancel_or_detach(int tty_out) {
    if (!isatty(STDIN_FILENO)) return 'd';
    if (tty_out) printf("\n");
    fflush(stdout);
    for (;;) {
        fprintf(stderr, "cancel the job (c) or detach (d)? [c/d, Enter resumes] ");
        char ans[64];
        ssize_t n = read(STDIN_FILENO, ans, sizeof ans - 1);
        if (n <= 0) { /* EOF, or a second Ctrl-C */
            fprintf(stderr, "\n");
            return 'd';
        }
        ans[n] = 0;
        char *c = ans;
        while (*c == ' ' || *c == '\t') c++;
        if (*c == 'c' || *c == 'C') return 'c';
        if (*c == 'd' || *c == 'D') return 'd';
        if (*c == '\n' || *c == '\r') return 0;
    }
}

int fc_follow_job(const char *id) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; /* no SA_RESTART: the poll sleep and the prompt wake up */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    int tty = isatty(STDOUT_FILENO) && !fc.json, drawn = 0, rc = FC_CONN;
    char path[128], last_key[64] = "", last_line[512] = "";
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    double t0 = now_s(), down_since = 0, last_print = 0;
    for (;;) {
        fc_req q = {.path = path, .timeout_s = 30};
        fc_resp r;
        int hr = fc_http_raw(&q, &r);
        if (hr == FC_CONN || r.status == 429 || r.status == 503) {
            /* the daemon may be restarting (jobs resume): retry for a while */
            if (!down_since) down_since = now_s();
            if (now_s() - down_since > 30) {
                if (drawn) printf("\n");
                if (hr == FC_CONN) fprintf(stderr, "flowctl: lost %s: %s\n", fc.url, r.err);
                else fc_print_api_error(&r);
                fprintf(stderr, "flowctl: job %s may still be running (flowctl job %s)\n", id, id);
                fc_resp_free(&r);
                rc = hr == FC_CONN ? FC_CONN : FC_API;
                break;
            }
        } else if (r.status < 200 || r.status >= 300) {
            if (drawn) printf("\n");
            fc_print_api_error(&r);
            fc_resp_free(&r);
            rc = FC_API;
            break;
        } else {
            down_since = 0;
            const cJSON *j = r.json, *p = cJSON_GetObjectItemCaseSensitive(j, "progress");
            const char *state = fc_str(j, "state");
            int done = !strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "cancelled");
            if (tty && !done) {
                draw_bar(id, state, p);
                drawn = 1;
            } else if (!fc.json && !tty) {
                char text[256], line[512], key[64];
                progress_text(text, sizeof text, p, 0);
                snprintf(line, sizeof line, "job %s %s %s", id, state, text);
                /* a line per state change or epoch, and at most every 5 s in between */
                snprintf(key, sizeof key, "%s %s", state, fc_str(p, "epoch"));
                if (!done && (strcmp(key, last_key) || (now_s() - last_print > 5 && strcmp(line, last_line)))) {
                    printf("%s\n", line);
                    fflush(stdout);
                    snprintf(last_key, sizeof last_key, "%s", key);
                    snprintf(last_line, sizeof last_line, "%s", line);
                    last_print = now_s();
                }
            }
            if (done) {
                if (drawn) printf("\r\033[K");
                fflush(stdout);
                char d[32];
                fmt_dur(d, sizeof d, now_s() - t0);
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
                const char *emsg = cJSON_IsString(e) ? e->valuestring : cJSON_IsObject(e) ? fc_str(e, "message") : "";
                if (fc.json) fc_print_json(j);
                if (!strcmp(state, "succeeded")) {
                    if (!fc.json)
                        printf("job %s succeeded in %s: model %s version %s, val_loss %s\n", id, d,
                               fc_str(j, "model"), fc_str(j, "version"), fc_num(p, "best_val_loss", "%.6g"));
                    rc = FC_OK;
                } else if (!strcmp(state, "failed")) {
                    fprintf(stderr, "flowctl: job %s failed: %s\n", id, *emsg ? emsg : "(no message)");
                    rc = FC_JOB_FAILED;
                } else {
                    fprintf(stderr, "flowctl: job %s cancelled\n", id);
                    rc = FC_JOB_CANCELLED;
                }
                fc_resp_free(&r);
                break;
            }
        }
        fc_resp_free(&r);
        if (!got_sigint) {
            struct timespec ts = {0, 500000000L};
            nanosleep(&ts, NULL);
        }
        if (got_sigint) {
            got_sigint = 0;
            int ans = ask_cancel_or_detach(drawn);
            drawn = 0;
            if (ans == 'd') {
                fprintf(stderr, "flowctl: detached; job %s keeps running (flowctl job %s)\n", id, id);
                rc = FC_DETACHED;
                break;
            }
            if (ans == 'c') {
                char cp[160];
                snprintf(cp, sizeof cp, "/v1/jobs/%s/cancel", id);
                fc_resp cr;
                if (fc_post_json(cp, NULL, &cr) == FC_OK) fprintf(stderr, "flowctl: cancelling job %s...\n", id);
                fc_resp_free(&cr);
            }
        }
    }
    sigaction(SIGINT, &old, NULL);
    fflush(stdout);
    return rc;
}
