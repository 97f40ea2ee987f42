/* launcher.c: training jobs as MPI programs (launcher.h, docs/scale-out.md).
 *
 * One job's run, on its worker thread:
 *  1. <dir of the database>/mpi-jobs/job-<id>/ is made afresh (a leftover of
 *     a daemon that died is removed first) holding data.npy (a stored
 *     dataset, float32, its image shape kept), job.json (the request with
 *     "dataset":{"id"} turned into {"path","format":"npy"}) and, to resume,
 *     resume.state (the saved training state from the database);
 *  2. the launcher's words + [this flowd] train --config job.json --out
 *     model.flow --checkpoint ckpt.state --checkpoint-seconds S --progress
 *     progress.jsonl --quiet [--resume resume.state] run in a process group
 *     of their own (fork + exec, no shell), stdin /dev/null, stdout and
 *     stderr to files, the signal mask and handlers of the daemon reset,
 *     and PR_SET_PDEATHSIG so a daemon that dies takes the launcher along;
 *  3. every 100 ms the worker reads the progress file's new complete lines
 *     (a report: the hook stores it as a local job's; a checkpoint: the
 *     file is read and handed to the hook, which stores it in the database)
 *     and checks the child (waitpid WNOHANG) and the cancel flag;
 *  4. a stop (cancel or shutdown) sends SIGUSR1 to the group: mpirun
 *     forwards it to every rank (SIGTERM it does not forward: it kills the
 *     ranks one second later), `flowd train` stops all ranks after the same
 *     step and rank 0 checkpoints.  After FD_LAUNCH_GRACE_S the group gets
 *     SIGTERM, 5 s later SIGKILL;
 *  5. exit 0: model.flow is the result; otherwise the exit status and the
 *     last lines of stderr are the error.  The directory is removed.
 * The job's state lives in the database (the checkpoint events), so the
 * files are temporary: a shutdown leaves the job 'running' with its state
 * and the next start writes it back as resume.state. */
#include "launcher.h"
#include "server.h"

#include "../core/npy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <wordexp.h>

static wordexp_t words;
static int have_words;

int fd_launcher_configure(const char *line, char *err, size_t errlen) {
    if (have_words) wordfree(&words), have_words = 0;
    if (!line || !*line) return 0;
    int rc = wordexp(line, &words, WRDE_NOCMD | WRDE_UNDEF);
    if (rc) {
        const char *why = rc == WRDE_CMDSUB    ? "command substitution is not allowed"
                          : rc == WRDE_BADCHAR ? "an unquoted |, &, ;, <, >, (, ), { or } (no shell runs it)"
                          : rc == WRDE_BADVAL  ? "an undefined shell variable"
                          : rc == WRDE_SYNTAX  ? "a syntax error (unbalanced quotes?)"
                                               : "out of memory";
        snprintf(err, errlen, "--mpi-launcher \"%s\": %s", line, why);
        if (rc == WRDE_NOSPACE) wordfree(&words);
        return -1;
    }
    if (words.we_wordc == 0) {
        wordfree(&words);
        snprintf(err, errlen, "--mpi-launcher \"%s\": no command", line);
        return -1;
    }
    have_words = 1;
    return 0;
}

int fd_launcher_enabled(void) { return have_words; }

int fd_launcher_takes(const nf_job *job, char *why, size_t whylen) {
    if (!have_words) {
        snprintf(why, whylen, "no --mpi-launcher");
        return 0;
    }
    if (job->init_model[0]) {
        snprintf(why, whylen, "a warm start (\"init\") reads a published version, which flowd train cannot");
        return 0;
    }
    if (job->labels_src == NF_LABELS_DATASET) {
        snprintf(why, whylen, "its labels are a separate stored dataset");
        return 0;
    }
    if (job->publish_optimizer) {
        snprintf(why, whylen, "publish.optimizer_state: flowd train writes no optimizer state");
        return 0;
    }
    return 1;
}

/* ---- progress JSON ----------------------------------------------------------- */
cJSON *fd_train_metrics_json(const nf_train_metrics *m) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "epoch", m->epoch);
    cJSON_AddNumberToObject(o, "epochs", m->epochs);
    cJSON_AddNumberToObject(o, "step", (double)m->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)m->total_steps);
    nf_json_add_num(o, "train_loss", m->train_loss);
    nf_json_add_num(o, "val_loss", m->val_loss);
    if (isfinite(m->val_bits_per_dim)) nf_json_add_num(o, "val_bits_per_dim", m->val_bits_per_dim);
    nf_json_add_num(o, "best_val_loss", m->best_val_loss);
    nf_json_add_num(o, "lr", m->lr);
    nf_json_add_num(o, "grad_norm", m->grad_norm);
    nf_json_add_num(o, "samples_per_second", m->samples_per_second);
    nf_json_add_num(o, "eta_seconds", m->eta_seconds);
    nf_json_add_num(o, "held_seconds", m->held_seconds);
    if (m->ode) { /* continuous flows: what the ODE solves cost */
        nf_json_add_num(o, "nfe", m->nfe);
        nf_json_add_num(o, "nfe_forward", m->nfe_forward);
        nf_json_add_num(o, "kinetic", m->kinetic);
        nf_json_add_num(o, "jacobian", m->jacobian);
    }
    return o;
}

static double num_or_nan(const cJSON *o, const char *key) {
    const cJSON *v = nf_json_get(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

void fd_train_metrics_from_json(const cJSON *o, nf_train_metrics *m) {
    memset(m, 0, sizeof *m);
    double v;
    m->epoch = isfinite(v = num_or_nan(o, "epoch")) ? (int)v : 0;
    m->epochs = isfinite(v = num_or_nan(o, "epochs")) ? (int)v : 0;
    m->step = isfinite(v = num_or_nan(o, "step")) ? (int64_t)v : 0;
    m->total_steps = isfinite(v = num_or_nan(o, "total_steps")) ? (int64_t)v : 0;
    m->train_loss = num_or_nan(o, "train_loss");
    m->val_loss = num_or_nan(o, "val_loss");
    m->val_bits_per_dim = num_or_nan(o, "val_bits_per_dim");
    m->best_val_loss = num_or_nan(o, "best_val_loss");
    m->lr = num_or_nan(o, "lr");
    m->grad_norm = num_or_nan(o, "grad_norm");
    m->samples_per_second = num_or_nan(o, "samples_per_second");
    m->eta_seconds = num_or_nan(o, "eta_seconds");
    m->held_seconds = isfinite(v = num_or_nan(o, "held_seconds")) ? v : 0;
    m->is_validation = cJSON_IsTrue(nf_json_get(o, "is_validation"));
    if (nf_json_get(o, "nfe")) {
        m->ode = 1;
        m->nfe = num_or_nan(o, "nfe");
        m->nfe_forward = num_or_nan(o, "nfe_forward");
        m->kinetic = num_or_nan(o, "kinetic");
        m->jacobian = num_or_nan(o, "jacobian");
    }
}

/* ---- files ---------------------------------------------------------------------- */
typedef struct {
    char dir[3000];
    char path[3200]; /* scratch for file() */
} job_dir;

static const char *file(job_dir *d, const char *name) {
    snprintf(d->path, sizeof d->path, "%s/%s", d->dir, name);
    return d->path;
}

/* the directory and the plain files in it (it holds nothing else) */
static void remove_dir(const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) return;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(dp))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p)) fd_log("warn", "cannot remove %s: %s", p, strerror(errno));
    }
    closedir(dp);
    if (rmdir(dir) && errno != ENOENT) fd_log("warn", "cannot remove %s: %s", dir, strerror(errno));
}

static int make_dir(job_dir *d, const char *db_path, int64_t id, char *err, size_t errlen) {
    /* <dir of the database>/mpi-jobs, absolute: the ranks may start elsewhere */
    char base[2800], cwd[2000];
    const char *slash = strrchr(db_path, '/');
    int dl = slash ? (int)(slash - db_path) : 0;
    if (db_path[0] == '/') snprintf(base, sizeof base, "%.*s/mpi-jobs", dl, db_path);
    else if (!getcwd(cwd, sizeof cwd)) {
        snprintf(err, errlen, "cannot read the working directory: %s", strerror(errno));
        return -1;
    } else if (slash) snprintf(base, sizeof base, "%s/%.*s/mpi-jobs", cwd, dl, db_path);
    else snprintf(base, sizeof base, "%s/mpi-jobs", cwd);
    if (mkdir(base, 0700) && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", base, strerror(errno));
        return -1;
    }
    snprintf(d->dir, sizeof d->dir, "%s/job-%" PRId64, base, id);
    remove_dir(d->dir); /* what a daemon that died left */
    if (mkdir(d->dir, 0700)) {
        snprintf(err, errlen, "cannot create %s: %s", d->dir, strerror(errno));
        d->dir[0] = 0;
        return -1;
    }
    return 0;
}

/* the rows as a float32 .npy: (n, C, H, W) with an image shape, else (n, d) */
static int write_npy(const char *path, const nf_data *data, char *err, size_t errlen) {
    int64_t shape[4] = {data->n, data->d};
    int ndim = 2;
    if (data->shape[0] > 0 && (int64_t)data->shape[0] * data->shape[1] * data->shape[2] == data->d)
        shape[1] = data->shape[0], shape[2] = data->shape[1], shape[3] = data->shape[2], ndim = 4;
    char hdr[NF_NPY_HEADER_MAX];
    size_t hl = nf_npy_write_header(hdr, "<f4", shape, ndim);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(hdr, 1, hl, f) == hl;
    float buf[1024];
    size_t total = (size_t)data->n * (size_t)data->d;
    for (size_t i = 0; ok && i < total; i += 1024) {
        size_t k = total - i < 1024 ? total - i : 1024;
        for (size_t j = 0; j < k; j++) buf[j] = (float)data->x[i + j];
        ok = fwrite(buf, sizeof *buf, k, f) == k;
    }
    if (f && fclose(f)) ok = 0;
    if (!ok) snprintf(err, errlen, "cannot write the dataset to %s: %s", path, strerror(errno));
    return ok ? 0 : -1;
}

/* job.json: the request, its stored dataset replaced by the exported file */
static int write_job(job_dir *d, const char *request, const nf_job *job, char *err, size_t errlen) {
    cJSON *o = cJSON_Parse(request);
    cJSON *ds = o ? cJSON_GetObjectItemCaseSensitive(o, "dataset") : NULL;
    if (!cJSON_IsObject(ds)) {
        cJSON_Delete(o);
        snprintf(err, errlen, "the job's request has no dataset object");
        return -1;
    }
    char npy[4200];
    snprintf(npy, sizeof npy, "%s/data.npy", d->dir);
    if (job->dataset_id[0]) {
        cJSON_DeleteItemFromObjectCaseSensitive(ds, "id");
        cJSON_AddStringToObject(ds, "path", npy);
        cJSON_AddStringToObject(ds, "format", "npy");
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    int rc = !s || nf_file_write(file(d, "job.json"), s, strlen(s));
    free(s);
    if (rc) snprintf(err, errlen, "cannot write %s", d->path);
    return rc ? -1 : 0;
}

/* ---- the child ---------------------------------------------------------------- */
/* argv: the launcher's words, then flowd train and its options (NULL-terminated) */
static char **child_argv(job_dir *d, const nf_train_hooks *hooks, int resume, char *self) {
    static const char *const names[] = {"config", "job.json", "out", "model.flow", "checkpoint",
                                        "ckpt.state", "progress", "progress.jsonl", "resume",
                                        "resume.state"};
    size_t n = words.we_wordc, k = 0;
    char **argv = calloc(n + 20, sizeof *argv);
    if (!argv) return NULL;
    for (size_t i = 0; i < n; i++) argv[k++] = strdup(words.we_wordv[i]);
    argv[k++] = strdup(self);
    argv[k++] = strdup("train");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i += 2) {
        if (!strcmp(names[i], "resume") && !resume) continue;
        char opt[64];
        snprintf(opt, sizeof opt, "--%s", names[i]);
        argv[k++] = strdup(opt);
        argv[k++] = strdup(file(d, names[i + 1]));
    }
    char secs[64];
    snprintf(secs, sizeof secs, "%g", hooks->checkpoint_seconds > 0 ? hooks->checkpoint_seconds : 0);
    argv[k++] = strdup("--checkpoint-seconds");
    argv[k++] = strdup(secs);
    argv[k++] = strdup("--quiet");
    for (size_t i = 0; i < k; i++)
        if (!argv[i]) {
            for (size_t j = 0; j < k; j++) free(argv[j]);
            free(argv);
            return NULL;
        }
    return argv;
}

static void argv_free(char **argv) {
    for (size_t i = 0; argv && argv[i]; i++) free(argv[i]);
    free(argv);
}

/* fork + exec in a new process group; only async-signal-safe calls in the
 * child before exec (the daemon has other threads) */
static pid_t spawn(char **argv, const char *out, const char *errf) {
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int fe = open(errf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    pid_t parent = getpid();
    pid_t pid = in < 0 || fo < 0 || fe < 0 ? -1 : fork();
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(126);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        for (int s = 1; s < 32; s++)
            if (s != SIGKILL && s != SIGSTOP) sigaction(s, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(in, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        if (close_range(3, ~0U, 0)) /* sockets, the database: not the child's */
            for (int fd = 3; fd < 4096; fd++) close(fd);
        execvp(argv[0], argv);
        static const char msg[] = "flowd: cannot execute the MPI launcher\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    int saved = errno;
    if (pid > 0) setpgid(pid, pid); /* the parent too: no race with the first kill */
    if (in >= 0) close(in);
    if (fo >= 0) close(fo);
    if (fe >= 0) close(fe);
    errno = saved;
    return pid;
}

/* the last lines of the child's stderr (at most ~cap bytes), one line */
static void stderr_tail(const char *path, char *out, size_t cap) {
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f), want = (long)cap - 1;
    if (size > want) fseek(f, size - want, SEEK_SET);
    else fseek(f, 0, SEEK_SET);
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    out[n] = 0;
    while (n && (out[n - 1] == '\n' || out[n - 1] == ' ')) out[--n] = 0;
    char *start = out;
    if (size > want) { /* drop the partial first line */
        char *nl = strchr(out, '\n');
        if (nl) start = nl + 1;
    }
    memmove(out, start, strlen(start) + 1);
    for (char *p = out; *p; p++)
        if (*p == '\n') *p = '|';
}

/* flowd train's "wrote model.flow (N bytes, P ranks)" line into the log */
static void log_summary(int64_t id, const char *path) {
    void *buf;
    size_t len;
    if (nf_file_read(path, &buf, &len)) return;
    char *s = realloc(buf, len + 1);
    if (!s) {
        free(buf);
        return;
    }
    s[len] = 0;
    char *w = strstr(s, "wrote "), *nl = w ? strchr(w, '\n') : NULL;
    if (w) fd_log("info", "job %" PRId64 ": flowd train %.*s", id, nl ? (int)(nl - w) : 200, w);
    free(s);
}

typedef struct {
    job_dir *d;
    const nf_train_hooks *hooks;
    int64_t id;
    FILE *pf;
    char line[1 << 16];
    size_t have;
    int held[2];          /* the latest training [0] and validation [1] report read */
    nf_train_metrics m[2];
} tail;

/* The reports read in one poll, the latest of each kind in step order: at
 * most 20 a second reach the database (flowd train writes no more either) */
static void tail_deliver(tail *t) {
    int first = t->held[0] && t->held[1] && t->m[1].step < t->m[0].step ? 1 : 0;
    for (int k = 0; k < 2; k++)
        if (t->held[first ^ k] && t->hooks->progress) t->hooks->progress(t->hooks->user, &t->m[first ^ k]);
    t->held[0] = t->held[1] = 0;
}

static void on_line(tail *t, char *s) {
    cJSON *o = cJSON_Parse(s);
    const char *ev = o ? nf_json_str(o, "event", "") : NULL;
    if (!ev) {
        fd_log("warn", "job %" PRId64 ": unreadable progress line from flowd train", t->id);
    } else if (!strcmp(ev, "progress")) { /* kept for tail_deliver */
        nf_train_metrics m;
        fd_train_metrics_from_json(o, &m);
        t->held[m.is_validation] = 1;
        t->m[m.is_validation] = m;
    } else if (!strcmp(ev, "checkpoint") && t->hooks->checkpoint) {
        void *buf = NULL;
        size_t len = 0;
        double step = num_or_nan(o, "step");
        if (nf_file_read(file(t->d, "ckpt.state"), &buf, &len)) {
            fd_log("warn", "job %" PRId64 ": cannot read the checkpoint of flowd train", t->id);
        } else {
            t->hooks->checkpoint(t->hooks->user, buf, len, isfinite(step) ? (int64_t)step : 0);
            if (!t->hooks->checkpoint_takes_state) free(buf);
        }
    }
    cJSON_Delete(o);
}

/* the progress file's new complete lines */
static void tail_read(tail *t) {
    if (!t->pf) t->pf = fopen(file(t->d, "progress.jsonl"), "rb");
    if (!t->pf) return;
    for (;;) {
        clearerr(t->pf);
        size_t n = fread(t->line + t->have, 1, sizeof t->line - 1 - t->have, t->pf);
        if (!n) break;
        t->have += n;
        t->line[t->have] = 0;
        char *p = t->line, *nl;
        while ((nl = memchr(p, '\n', t->have - (size_t)(p - t->line)))) {
            *nl = 0;
            on_line(t, p);
            p = nl + 1;
        }
        t->have -= (size_t)(p - t->line);
        memmove(t->line, p, t->have);
        if (t->have == sizeof t->line - 1) t->have = 0; /* a line too long: dropped */
    }
    tail_deliver(t);
}

int fd_launcher_run(const char *db_path, int64_t id, const char *request, const nf_job *job,
                    const nf_data *data, const nf_train_hooks *hooks, const void *state,
                    size_t state_len, nf_job_result *res, char *err, size_t errlen) {
    memset(res, 0, sizeof *res);
    job_dir *d = calloc(1, sizeof *d);
    tail *t = calloc(1, sizeof *t);
    char **argv = NULL, self[4096];
    int rc = NF_EIO;
    if (!d || !t) {
        snprintf(err, errlen, "out of memory");
        rc = NF_ENOMEM;
        goto out;
    }
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        snprintf(err, errlen, "cannot find the flowd binary (/proc/self/exe): %s", strerror(errno));
        goto out;
    }
    self[sl] = 0;
    if (make_dir(d, db_path, id, err, errlen)) goto out;
    if (job->dataset_id[0] && write_npy(file(d, "data.npy"), data, err, errlen)) goto out;
    if (write_job(d, request, job, err, errlen)) goto out;
    if (state && nf_file_write(file(d, "resume.state"), state, state_len)) {
        snprintf(err, errlen, "cannot write %s", d->path);
        goto out;
    }
    if (!(argv = child_argv(d, hooks, state != NULL, self))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    char outp[4200], errp[4200];
    snprintf(outp, sizeof outp, "%s/stdout.log", d->dir);
    snprintf(errp, sizeof errp, "%s/stderr.log", d->dir);
    pid_t pid = spawn(argv, outp, errp);
    if (pid < 0) {
        snprintf(err, errlen, "cannot start the MPI launcher %s: %s", argv[0], strerror(errno));
        goto out;
    }
    fd_log("info", "job %" PRId64 ": started on the MPI launcher (%s ..., pid %d)%s", id, argv[0],
           (int)pid, state ? ", resuming from its saved state" : "");
    t->d = d;
    t->hooks = hooks;
    t->id = id;
    int status = 0, exited = 0, stage = 0; /* stage: 1 SIGUSR1, 2 SIGTERM, 3 SIGKILL sent */
    double t_stop = 0;
    for (;;) {
        tail_read(t);
        if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = 1;
        if (exited && (stage == 0 || kill(-pid, 0))) break; /* stopped: until the group is gone */
        double now = fd_now();
        if (stage == 0 && hooks->cancel && __atomic_load_n(hooks->cancel, __ATOMIC_RELAXED)) {
            kill(-pid, SIGUSR1);
            stage = 1, t_stop = now;
        } else if (stage == 1 && now - t_stop > FD_LAUNCH_GRACE_S) {
            fd_log("warn", "job %" PRId64 ": the MPI launcher did not stop in %.0f s: SIGTERM", id,
                   FD_LAUNCH_GRACE_S);
            kill(-pid, SIGTERM);
            stage = 2;
        } else if (stage == 2 && now - t_stop > FD_LAUNCH_GRACE_S + 5) {
            kill(-pid, SIGKILL);
            stage = 3;
        } else if (stage == 3 && now - t_stop > FD_LAUNCH_GRACE_S + 10) {
            if (!exited) waitpid(pid, &status, 0), exited = 1;
            break;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    tail_read(t); /* the last lines */
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        if (nf_file_read(file(d, "model.flow"), &res->model, &res->model_len)) {
            snprintf(err, errlen, "the MPI launcher exited with status 0 but wrote no model (%s)",
                     d->path);
            goto out;
        }
        log_summary(id, outp);
        rc = 0;
    } else if (stage > 0) {
        snprintf(err, errlen, "cancelled");
        rc = NF_ECANCELLED;
    } else {
        char tailbuf[400], what[64];
        stderr_tail(errp, tailbuf, sizeof tailbuf);
        if (WIFSIGNALED(status)) snprintf(what, sizeof what, "was killed by signal %d", WTERMSIG(status));
        else snprintf(what, sizeof what, "exited with status %d", WEXITSTATUS(status));
        snprintf(err, errlen, "the MPI launcher (%s) %s%s%s", argv[0], what,
                 tailbuf[0] ? "; its last stderr lines: " : " and wrote nothing to stderr", tailbuf);
    }
out:
    if (t && t->pf) fclose(t->pf);
    if (d && d->dir[0]) remove_dir(d->dir);
    argv_free(argv);
    free(t);
    free(d);
    return rc;
}
