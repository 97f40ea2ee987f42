/* jobs.c: training workers.
 *
 * n worker threads, each with its own database connection.  At start the
 * jobs left 'running' by a daemon that died under them are handed out first
 * (each resumes from its saved trainer state, or from scratch without one);
 * then every worker claims the oldest queued job, or sleeps on a condition
 * variable (woken by fd_jobs_notify, or after 500 ms to poll the database).
 *
 * A running job has a slot in a small table (under the mutex) holding its
 * cancel flag, which the trainer reads every step.  Two reasons set it:
 *  - the user (fd_jobs_cancel, or cancel_requested seen in the database):
 *    the trainer checkpoints and the job ends 'cancelled' keeping that
 *    state, so POST /v1/jobs/{id}/resume continues it;
 *  - shutdown (fd_jobs_stop): the trainer checkpoints on cancellation and the
 *    job stays 'running' in the database, to resume at the next start.
 * A job found running at start-up counts a start attempt; after
 * FD_JOB_MAX_RESTARTS restarts in a row without a clean stop it fails with
 * the reason instead (start_allowed).
 * Database errors while reporting progress or checkpointing are logged and
 * training goes on.  Publishing is retried with backoff for up to
 * fd_publish_retry_s (--publish-retry) while the trained model stays in
 * memory; a shutdown meanwhile leaves the job 'running' (it resumes and
 * publishes at the next start); only a permanent error, or the deadline,
 * fails it. */
#include "launcher.h"
#include "server.h"

#include "../core/job.h"
#include "../core/model.h"

#include <errno.h>
#include <sched.h>
#include <sys/resource.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The flags of a slot are read without the mutex (the trainer every step,
 * on_progress, on_checkpoint) while an HTTP thread (cancel) or the main
 * thread (stop) sets them: every access is a relaxed atomic.  Plain volatile
 * accesses were a data race (found by make tsan). */
#define FLAG(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define SET_FLAG(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

typedef struct fd_slot {
    int64_t id;             /* 0: idle */
    volatile int cancel;    /* the trainer's stop flag */
    volatile int user_cancel; /* set with cancel by the user: end 'cancelled', no checkpoint */
} fd_slot;

typedef struct fd_worker {
    struct fd_jobs *j;
    int index;
    fd_db *db;
    pthread_t th;
    int started;
    double last_err_log; /* rate limit for progress-error lines */
    struct ckpt_writer *cw; /* its checkpoint writer (below) */
} fd_worker;

struct fd_jobs {
    int n;
    fd_worker *w;
    fd_slot *slots;         /* one per worker, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;           /* under mu */
    int pending;            /* a notify not yet seen by an idle worker, under mu */
    int64_t *resume;        /* ids left 'running' at start, under mu */
    int nresume, resume_next;
    double ckpt_seconds;    /* the least time between two snapshots */
    int max_restarts;       /* start_allowed */
    int train_threads;   /* threads per job's training workspace */
    int train_nice;      /* nice value of the training threads (SCHED_BATCH); 0 = as the daemon */
    char *db_path;       /* for the checkpoint writers' connections */
    atomic_int running;
};

/* ---- helpers ------------------------------------------------------------------ */
static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* ---- checkpoint writer ------------------------------------------------------------
 * A snapshot of a big model's training state is large (parameters, Adam's
 * two moments and the best parameters: 16 bytes a parameter, ~190 MB for a
 * 12M-parameter MAF), and writing it into SQLite takes a while.  The trainer
 * only serialises it and hands the buffer over (checkpoint_takes_state); a
 * writer thread of the job, with its own connection, stores it while
 * training goes on.  One snapshot waits at most: a newer one replaces a
 * waiting one (only the latest is worth resuming from).
 *
 * Spacing: a snapshot is taken when --checkpoint-seconds (default 10) have
 * passed AND the writer is idle AND the time since the last snapshot is at
 * least CKPT_WRITE_RATIO times the last write's duration and
 * CKPT_SER_RATIO times the last serialisation's (the part the training
 * thread pays).  So a small model checkpoints every 10 s, and a large one
 * spends at most ~1/CKPT_SER_RATIO of its time serialising and keeps the
 * disk busy at most ~1/CKPT_WRITE_RATIO of the time.
 *
 * Each worker has one writer, started with the workers by the daemon's
 * main thread, so it runs at normal priority: it holds SQLite's write
 * lock while it stores a snapshot, and at the training threads' nice 19 a
 * busy daemon's request threads could starve it inside that transaction
 * while other writers (uploads, submissions) time out waiting. */
#define CKPT_SER_RATIO 50.0
#define CKPT_WRITE_RATIO 10.0

typedef struct ckpt_writer {
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *buf;              /* the waiting snapshot (nf_malloc'd), under mu */
    size_t len;
    int64_t step;
    int busy, stop;         /* under mu */
    fd_db *db;              /* the writer's own connection */
    struct fd_worker *w;
    int64_t id;             /* the running job (0: none), under mu */
    double write_s, ser_s;  /* the job's last durations, under mu */
    double due_at;          /* mono time a due snapshot was granted (trainer thread) */
    double last_err_log;    /* the writer's own rate limit for error lines */
    int progressed;         /* this run of the job stored a state (writer thread) */
} ckpt_writer;

typedef struct run_ctx {
    fd_worker *w;
    fd_slot *slot;
    int64_t id;
} run_ctx;

/* Requests being answered, and when the last one ended (fd_now, as
 * nanoseconds): the pace hook holds training steps back while either says
 * the daemon is busy.  Even at SCHED_IDLE, any training work on the cores
 * doubled the p99 of scoring requests on the 2-core test machine (so did
 * two plain SCHED_IDLE spin loops: bench/README.md), so training waits for
 * gaps in the requests instead of only running behind them. */
static atomic_int g_busy;
static _Atomic int64_t g_last_end_ns;
static _Atomic double g_yield_quiet_s = FD_TRAIN_YIELD_MS * 1e-3, g_yield_share = FD_TRAIN_SHARE; /* set while jobs run (tests) */

void fd_jobs_set_train_yield(double quiet_ms, double share) {
    atomic_store(&g_yield_quiet_s, quiet_ms > 0 ? quiet_ms * 1e-3 : 0);
    atomic_store(&g_yield_share, share);
}
void fd_jobs_request_begin(void) { atomic_fetch_add(&g_busy, 1); }
void fd_jobs_request_end(void) {
    atomic_store(&g_last_end_ns, (int64_t)(fd_now() * 1e9));
    atomic_fetch_sub(&g_busy, 1);
}

/* nf_train_hooks.pace, on each training thread between layers: waits
 * until the daemon has been without requests for the quiet time, or (with
 * a share F) for at most (1-F)/F times the work just done, so training
 * keeps F of the time while requests never pause */
static void on_pace(void *user, double work_s) {
    run_ctx *r = user;
    double quiet = atomic_load(&g_yield_quiet_s), share = atomic_load(&g_yield_share);
    if (quiet <= 0) return;
    double t0 = fd_now(), most = share > 0 ? work_s * (1 - share) / share : INFINITY;
    for (;;) {
        if (FLAG(r->slot->cancel)) return; /* cancelled, or the daemon stops */
        double now = fd_now(), since = now - (double)atomic_load(&g_last_end_ns) * 1e-9;
        int busy = atomic_load(&g_busy) > 0;
        if (!busy && since >= quiet) return;
        double left = most - (now - t0), nap = busy ? quiet : quiet - since;
        if (left <= 0) return;
        sleep_s(nap < left ? nap : left);
    }
}

/* last: the caller's rate-limit clock (the worker's, or its writer's) */
static void log_db_error_at(double *last, int64_t id, const char *what, const char *err) {
    double now = mono_now();
    if (now - *last < 5) return;
    *last = now;
    fd_log("warn", "job %" PRId64 ": %s: %s (training continues)", id, what, err);
}

static void log_db_error(fd_worker *w, int64_t id, const char *what, const char *err) {
    log_db_error_at(&w->last_err_log, id, what, err);
}

static void on_progress(void *user, const nf_train_metrics *m) {
    run_ctx *r = user;
    char err[256] = "";
    cJSON *o = fd_train_metrics_json(m);
    if (o) {
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (s && fd_db_job_progress(r->w->db, r->id, s, err, sizeof err))
            log_db_error(r->w, r->id, "cannot store progress", err);
        free(s);
    }
    if (fd_db_job_metric_add(r->w->db, r->id, m->step, m->is_validation ? "val" : "train",
                             m->epoch, m->train_loss, m->is_validation ? m->val_loss : NAN, m->lr,
                             m->grad_norm, wall_now(), err, sizeof err))
        log_db_error(r->w, r->id, "cannot store metrics", err);
    /* a cancellation recorded in the database but not signalled to us */
    if (!FLAG(r->slot->cancel) && fd_db_job_cancel_requested(r->w->db, r->id) == 1) {
        SET_FLAG(r->slot->user_cancel, 1);
        SET_FLAG(r->slot->cancel, 1);
    }
}

static void *ckpt_writer_main(void *arg) {
    ckpt_writer *cw = arg;
    pthread_mutex_lock(&cw->mu);
    for (;;) {
        while (!cw->buf && !cw->stop) pthread_cond_wait(&cw->cv, &cw->mu);
        if (!cw->buf) break; /* stop, nothing waiting */
        void *buf = cw->buf;
        size_t len = cw->len;
        int64_t step = cw->step, id = cw->id;
        cw->buf = NULL;
        cw->busy = 1;
        pthread_mutex_unlock(&cw->mu);
        char err[256] = "";
        double t0 = mono_now();
        if (fd_db_train_state_put(cw->db, id, step, buf, len, err, sizeof err))
            log_db_error_at(&cw->last_err_log, id, "cannot store the training state", err);
        else if (!cw->progressed && !fd_db_job_reset_attempts(cw->db, id, 1, err, sizeof err))
            cw->progressed = 1; /* durable progress: the restart count starts again */
        double dt = mono_now() - t0;
        free(buf);
        pthread_mutex_lock(&cw->mu);
        cw->write_s = dt;
        cw->busy = 0;
        /* a state large enough to stretch the interval says so: operators
         * see what a SIGKILL would lose */
        double gap = CKPT_WRITE_RATIO * dt > CKPT_SER_RATIO * cw->ser_s ? CKPT_WRITE_RATIO * dt
                                                                        : CKPT_SER_RATIO * cw->ser_s;
        if (gap > cw->w->j->ckpt_seconds)
            fd_log("info", "job %" PRId64 ": training state of step %" PRId64 " (%.0f MB) "
                            "serialised in %.2f s, stored in %.2f s; snapshots at least %.0f s apart",
                    id, step, len / 1e6, cw->ser_s, dt, gap);
        pthread_cond_broadcast(&cw->cv);
    }
    pthread_mutex_unlock(&cw->mu);
    return NULL;
}

/* The worker's writer, started with it (fd_jobs_start, on the main
 * thread); without one (no thread or connection) the snapshots are written
 * on the training thread. */
static void ckpt_writer_start(ckpt_writer *cw, fd_worker *w, const char *db_path) {
    memset(cw, 0, sizeof *cw);
    cw->w = w;
    cw->last_err_log = -1e9;
    char err[256] = "";
    if (fd_db_open(db_path, &cw->db, err, sizeof err)) {
        fd_log("warn", "worker %d: no checkpoint writer (%s); writing inline", w->index, err);
        cw->db = NULL;
        return;
    }
    pthread_mutex_init(&cw->mu, NULL);
    pthread_cond_init(&cw->cv, NULL);
    if (pthread_create(&cw->th, NULL, ckpt_writer_main, cw)) {
        pthread_cond_destroy(&cw->cv);
        pthread_mutex_destroy(&cw->mu);
        fd_db_close(cw->db);
        cw->db = NULL;
        return;
    }
    cw->started = 1;
}

/* after the workers stopped */
static void ckpt_writer_stop(ckpt_writer *cw) {
    if (!cw->started) return;
    pthread_mutex_lock(&cw->mu);
    cw->stop = 1;
    pthread_cond_broadcast(&cw->cv);
    pthread_mutex_unlock(&cw->mu);
    pthread_join(cw->th, NULL);
    free(cw->buf);
    pthread_cond_destroy(&cw->cv);
    pthread_mutex_destroy(&cw->mu);
    fd_db_close(cw->db);
    cw->started = 0;
}

static void ckpt_writer_begin(ckpt_writer *cw, int64_t id) {
    if (!cw->started) return;
    pthread_mutex_lock(&cw->mu);
    cw->id = id;
    cw->progressed = 0;
    cw->write_s = cw->ser_s = 0;
    pthread_mutex_unlock(&cw->mu);
    cw->due_at = 0;
}

/* The job's end: keep = 1 writes a waiting snapshot first (shutdown: the
 * job resumes from it); 0 drops it (the job ended: its state is deleted,
 * not resumed).  Returns when nothing of the job is left to write. */
static void ckpt_writer_end(ckpt_writer *cw, int keep) {
    if (!cw->started) return;
    pthread_mutex_lock(&cw->mu);
    if (!keep && cw->buf) {
        free(cw->buf);
        cw->buf = NULL;
    }
    while (cw->busy || cw->buf) pthread_cond_wait(&cw->cv, &cw->mu);
    cw->id = 0;
    pthread_mutex_unlock(&cw->mu);
}

static int on_checkpoint_due(void *user, double since) {
    run_ctx *r = user;
    ckpt_writer *cw = r->w->cw;
    if (!cw->started) return 1;
    pthread_mutex_lock(&cw->mu);
    int idle = !cw->busy && !cw->buf;
    double wait = CKPT_WRITE_RATIO * cw->write_s;
    if (CKPT_SER_RATIO * cw->ser_s > wait) wait = CKPT_SER_RATIO * cw->ser_s;
    pthread_mutex_unlock(&cw->mu);
    if (!idle || since < wait) return 0;
    cw->due_at = mono_now();
    return 1;
}

static int on_checkpoint(void *user, void *state, size_t len, int64_t step) {
    run_ctx *r = user;
    ckpt_writer *cw = r->w->cw;
    double ser = cw->due_at > 0 ? mono_now() - cw->due_at : -1;
    cw->due_at = 0;
    if (cw->started) {
        pthread_mutex_lock(&cw->mu);
        if (ser >= 0) cw->ser_s = ser;
        free(cw->buf); /* a newer snapshot replaces one still waiting */
        cw->buf = state;
        cw->len = len;
        cw->step = step;
        pthread_cond_broadcast(&cw->cv);
        pthread_mutex_unlock(&cw->mu);
        return 0;
    }
    char err[256] = "";
    if (fd_db_train_state_put(r->w->db, r->id, step, state, len, err, sizeof err))
        log_db_error(r->w, r->id, "cannot store the training state", err);
    else fd_db_job_reset_attempts(r->w->db, r->id, 1, err, sizeof err);
    free(state);
    return 0;
}

/* ---- one job --------------------------------------------------------------------- */
/* Final state with a few retries: a locked database must not leave the job
 * 'running' forever. */
static void finish(fd_worker *w, int64_t id, const char *state, const char *msg) {
    char err[256] = "";
    for (int a = 0; a < 5; a++) {
        int rc = fd_db_job_finish(w->db, id, state, 0, msg, err, sizeof err);
        if (!rc || rc == FD_ENOTFOUND || rc == FD_ECONFLICT) return;
        fd_log("warn", "job %" PRId64 ": cannot mark it %s: %s", id, state, err);
        sleep_s(0.2 * (a + 1));
    }
}

int fd_dataset_load(fd_db *db, const char *dsid, nf_data *out, char *msg, size_t msglen) {
    float *x = NULL;
    int64_t rows = 0;
    int dim = 0, is_int = 0, shape[3];
    double vmin = 0, vmax = 0;
    char err[256] = "";
    int rc = fd_db_dataset_data(db, dsid, &x, &rows, &dim, shape, &is_int, &vmin, &vmax, err,
                                sizeof err);
    if (rc == FD_ENOTFOUND) {
        snprintf(msg, msglen, "dataset %s not found (deleted?)", dsid);
        return rc;
    }
    if (rc) {
        snprintf(msg, msglen, "dataset %s: cannot read it: %s", dsid, err);
        return rc;
    }
    if (nf_data_alloc(out, rows, dim, err, sizeof err)) {
        snprintf(msg, msglen, "dataset %s: %s", dsid, err);
        free(x);
        return FD_ENOMEM;
    }
    for (size_t i = 0; i < (size_t)rows * (size_t)dim; i++) out->x[i] = (nf_real)x[i];
    free(x);
    out->is_integer = is_int;
    out->vmin = vmin;
    out->vmax = vmax;
    memcpy(out->shape, shape, sizeof out->shape);
    return 0;
}

double fd_publish_retry_s = 300;

/* FLOWD_FAULT_PUBLISH_FAILS=N (tests only): the first N publish attempts of
 * the process fail as if the database were busy */
static int injected_publish_fault(char *err, size_t errlen) {
    static atomic_int left = -1;
    if (atomic_load(&left) == -1) {
        const char *e = getenv("FLOWD_FAULT_PUBLISH_FAILS");
        int expect = -1;
        atomic_compare_exchange_strong(&left, &expect, e ? atoi(e) : 0);
    }
    if (atomic_fetch_sub(&left, 1) <= 0) {
        atomic_fetch_add(&left, 1);
        return 0;
    }
    snprintf(err, errlen, "database is locked (injected by FLOWD_FAULT_PUBLISH_FAILS)");
    return FD_EBUSY;
}

static void publish(fd_worker *w, fd_slot *slot, int64_t id, const nf_job *job, nf_job_result *res) {
    int version = 0;
    char err[256] = "", msg[400];
    fd_model_desc d;
    if (fd_model_describe(res->model, res->model_len, &d, err, sizeof err)) {
        snprintf(msg, sizeof msg, "internal error: the trained model file does not load: %s", err);
        finish(w, id, "failed", msg);
        return;
    }
    int rc = FD_ENOMEM;
    double t0 = mono_now(), wait = 0.1;
    for (int a = 0;; a++) {
        rc = injected_publish_fault(err, sizeof err);
        if (!rc)
            rc = fd_db_job_publish_ex(w->db, id, job->model, res->model, res->model_len, d.dim,
                                      d.context_dim, d.config, d.preprocess, d.metrics,
                                      job->publish_set_default, res->optimizer, res->optimizer_len,
                                      &version, err, sizeof err);
        if (!rc || rc == FD_ENOTFOUND || rc == FD_ECONFLICT || rc == FD_EINVAL) break;
        if (mono_now() - t0 + wait > fd_publish_retry_s) break;
        fd_log("warn", "job %" PRId64 ": publishing failed (try %d, next in %.1f s; the trained model is kept): %s",
               id, a + 1, wait, err);
        /* in slices: a shutdown or a cancel is seen within 50 ms */
        for (double slept = 0; slept < wait && !FLAG(slot->cancel); slept += 0.05) sleep_s(0.05);
        if (FLAG(slot->cancel)) break;
        wait = wait * 2 > 5 ? 5 : wait * 2;
    }
    if (rc && FLAG(slot->cancel) && !FLAG(slot->user_cancel)) {
        fd_log("info", "job %" PRId64 ": stopped for shutdown before its model was published; it resumes "
                       "and publishes at the next start", id);
    } else if (rc && FLAG(slot->user_cancel)) {
        finish(w, id, "cancelled", NULL);
    } else if (rc == FD_ENOTFOUND) {
        fd_log("warn", "job %" PRId64 ": gone before publishing", id);
    } else if (rc) {
        snprintf(msg, sizeof msg, "cannot publish the model: %s", err[0] ? err : "out of memory");
        finish(w, id, "failed", msg);
    }
    fd_model_desc_free(&d);
}

static void run_job(fd_worker *w, fd_slot *slot, int64_t id, const char *request, int resumed) {
    fd_jobs *j = w->j;
    char err[512] = "", msg[600];
    nf_job job;
    memset(&job, 0, sizeof job);
    nf_data data = {0};
    void *state = NULL, *init_file = NULL, *init_opt = NULL;
    size_t state_len = 0, init_len = 0, init_opt_len = 0;
    if (nf_job_parse(request, strlen(request), 0, &job, err, sizeof err)) {
        snprintf(msg, sizeof msg, "invalid job: %s", err);
        finish(w, id, "failed", msg);
        return;
    }
    job.train.threads = j->train_threads;
    if (job.dataset_id[0]) {
        if (fd_dataset_load(w->db, job.dataset_id, &data, msg, sizeof msg)) {
            finish(w, id, "failed", msg);
            goto out;
        }
    } else if (nf_job_load_data(&job, &data, err, sizeof err)) {
        snprintf(msg, sizeof msg, "dataset: %s", err);
        finish(w, id, "failed", msg);
        goto out;
    }
    if (job.labels_id[0]) { /* a labels dataset: the rows' last column (core/job.h) */
        nf_data lab = {0};
        int lrc = fd_dataset_load(w->db, job.labels_id, &lab, msg, sizeof msg);
        if (!lrc && (lrc = nf_job_attach_labels(&job, &data, &lab, err, sizeof err)))
            snprintf(msg, sizeof msg, "%s", err);
        nf_data_free(&lab);
        if (lrc) {
            finish(w, id, "failed", msg);
            goto out;
        }
    }
    /* a saved state: the daemon died under the job, or it was cancelled and
     * resumed (POST /v1/jobs/{id}/resume); a fresh job has none */
    {
        int64_t step = 0;
        char e2[256] = "";
        int rc = fd_db_train_state_get(w->db, id, &state, &state_len, &step, e2, sizeof e2);
        if (rc && rc != FD_ENOTFOUND)
            fd_log("warn", "job %" PRId64 ": saved training state unusable (%s); "
                            "restarting from scratch", id, e2);
        if (rc) state = NULL, state_len = 0;
        else fd_log("info", "job %" PRId64 ": resuming at step %" PRId64 "%s", id, step,
                    resumed ? "" : " (resumed by request)");
    }
    /* a warm start: the published version's file (and optimizer state),
     * pinned to a number at submission; a resumed run still needs the
     * file (the flow it trains is the published one) */
    if (job.init_model[0]) {
        int iv = 0;
        char e2[256] = "";
        int rc = fd_db_resolve_version(w->db, job.init_model, job.init_version, &iv, e2, sizeof e2);
        int got = 0;
        if (!rc) rc = fd_db_version_get(w->db, job.init_model, iv, &init_file, &init_len, &got, e2, sizeof e2);
        if (!rc && job.init_optimizer && !state) {
            rc = fd_db_version_optimizer(w->db, job.init_model, iv, &init_opt, &init_opt_len, e2, sizeof e2);
            if (!rc && !init_opt) snprintf(e2, sizeof e2, "it has no stored optimizer state"), rc = FD_ENOTFOUND;
        }
        if (rc) {
            snprintf(msg, sizeof msg, "init: cannot read version %s of model %s: %s",
                     job.init_version[0] ? job.init_version : "(default)", job.init_model, e2);
            finish(w, id, "failed", msg);
            goto out;
        }
        job.init_file = init_file;
        job.init_file_len = init_len;
        job.init_opt = init_opt;
        job.init_opt_len = init_opt_len;
    }
    ckpt_writer_begin(w->cw, id);
    run_ctx rc_ = {w, slot, id};
    nf_train_hooks hooks = {.user = &rc_,
                            .progress = on_progress,
                            .cancel = &slot->cancel,
                            .checkpoint = on_checkpoint,
                            .checkpoint_takes_state = 1,
                            .checkpoint_every = 0,
                            .checkpoint_seconds = j->ckpt_seconds,
                            .checkpoint_due = on_checkpoint_due,
                            .checkpoint_on_cancel = 1,
                            .pace = on_pace};
    nf_job_result res;
    int rc;
    char why[200];
    /* --mpi-launcher: the job as an MPI program (launcher.c), with these hooks */
    if (fd_launcher_takes(&job, why, sizeof why)) {
        rc = fd_launcher_run(j->db_path, id, request, &job, &data, &hooks, state, state_len, &res,
                             err, sizeof err);
        goto ran;
    }
    if (fd_launcher_enabled())
        fd_log("info", "job %" PRId64 ": trained in-process, not on the MPI launcher: %s", id, why);
    rc = nf_job_run(&job, &data, &hooks, state, state_len, &res, err, sizeof err);
    if (state && (rc == NF_ECORRUPT || rc == NF_EFORMAT) && !FLAG(slot->cancel)) {
        fd_log("warn", "job %" PRId64 ": %s; restarting from scratch", id, err);
        nf_job_result_free(&res);
        rc = nf_job_run(&job, &data, &hooks, NULL, 0, &res, err, sizeof err);
    }
ran:
    /* a shutdown keeps the last snapshot (the job resumes from it); any
     * other end deletes the state, so a waiting one is dropped */
    ckpt_writer_end(w->cw, rc == NF_ECANCELLED);
    if (!rc) {
        publish(w, slot, id, &job, &res);
    } else if (rc == NF_ECANCELLED && !FLAG(slot->user_cancel)) {
        /* shutdown: stays 'running' with its checkpoint, resumes next start;
         * a clean stop is not a failed start (its attempts restart) */
        char e2[256] = "";
        if (fd_db_job_reset_attempts(w->db, id, 0, e2, sizeof e2))
            fd_log("error", "job %" PRId64 ": cannot record the clean stop: %s", id, e2);
        fd_log("info", "job %" PRId64 ": stopped for shutdown; it resumes at the next start", id);
    } else if (rc == NF_ECANCELLED) { /* keeps its saved state: resumable */
        finish(w, id, "cancelled", NULL);
    } else {
        finish(w, id, "failed", err[0] ? err : nf_strerror(rc));
    }
    nf_job_result_free(&res);
out:
    free(state);
    free(init_file);
    free(init_opt);
    nf_data_free(&data);
    nf_job_free(&job);
}

/* ---- workers -------------------------------------------------------------------- */
/* Training runs behind the request threads.  SCHED_BATCH at nice
 * train_nice (the default): a request thread that wakes takes the core.
 * SCHED_IDLE (--train-sched idle): preempted at once whatever slice the
 * training thread has left, at a weight below any nice value; on this
 * machine it gave the same p99 of scoring requests while a W2-sized job
 * trained (6.0 against 6.4 ms, bench/README.md), so it stays a choice.
 * Linux keeps
 * both per thread, and the threads the job creates (its training pool)
 * inherit them.  Lowering one's own priority needs no privilege. */
static int g_train_sched = SCHED_BATCH;

int fd_jobs_set_train_sched(const char *name) {
    if (!strcmp(name, "idle")) g_train_sched = SCHED_IDLE;
    else if (!strcmp(name, "batch")) g_train_sched = SCHED_BATCH;
    else return -1;
    return 0;
}

static void lower_priority(int nice_val) {
    if (nice_val <= 0) return;
    struct sched_param sp = {0};
    int pol = g_train_sched;
    if (pthread_setschedparam(pthread_self(), pol, &sp))
        fd_log("warn", "training worker: cannot switch to %s", pol == SCHED_IDLE ? "SCHED_IDLE" : "SCHED_BATCH");
    /* also under SCHED_IDLE (whose weight is below any nice value): the
     * value shows in ps and top, and stays if the policy is changed back */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), nice_val))
        fd_log("warn", "training worker: cannot set nice %d: %s", nice_val, strerror(errno));
}

/* A job found running at start-up is started again at most max_restarts
 * (FD_JOB_MAX_RESTARTS, or $FLOWD_MAX_JOB_RESTARTS) times in a row without
 * progress: a start that stores a training state, or a graceful shutdown,
 * resets the count.  A job that kills the process (out of memory) would
 * otherwise take the daemon down at every start; it fails with the reason
 * instead, keeping its saved state (POST /v1/jobs/{id}/resume retries it). */
static int start_allowed(fd_worker *w, int64_t id) {
    int attempts = 0;
    char err[256] = "", msg[400];
    if (fd_db_job_start_attempt(w->db, id, &attempts, err, sizeof err)) {
        fd_log("error", "job %" PRId64 ": cannot count its start: %s", id, err);
        return 1;
    }
    int max_restarts = w->j->max_restarts;
    if (attempts <= 1 + max_restarts) return 1;
    snprintf(msg, sizeof msg,
             "the daemon died %d times in a row while running this job without it saving "
             "progress (killed, e.g. out of memory?); not restarted again (limit %d restarts). "
             "Its saved state is kept: POST /v1/jobs/%" PRId64 "/resume retries it",
             attempts - 1, max_restarts, id);
    fd_log("error", "job %" PRId64 ": %s", id, msg);
    for (int a = 0; a < 5; a++) {
        int rc = fd_db_job_finish_ex(w->db, id, "failed", 0, msg, 1, err, sizeof err);
        if (!rc || rc == FD_ENOTFOUND || rc == FD_ECONFLICT) break;
        sleep_s(0.2 * (a + 1));
    }
    return 0;
}

static void *worker_main(void *arg) {
    fd_worker *w = arg;
    fd_jobs *j = w->j;
    lower_priority(j->train_nice);
    fd_slot *slot = &j->slots[w->index];
    char err[256];
    pthread_mutex_lock(&j->mu);
    while (!j->stopping) {
        int64_t id = 0;
        char *request = NULL;
        int resumed = 0;
        if (j->resume_next < j->nresume) {
            id = j->resume[j->resume_next++];
            resumed = 1;
            pthread_mutex_unlock(&j->mu);
            err[0] = 0;
            int rc = fd_db_job_request(w->db, id, &request, err, sizeof err);
            if (rc) {
                fd_log("warn", "job %" PRId64 ": cannot read it to resume: %s", id, err);
                if (rc != FD_ENOTFOUND) finish(w, id, "failed", "cannot read the job to resume it");
                id = 0;
            } else if (!start_allowed(w, id)) {
                free(request);
                request = NULL;
                id = 0;
            }
        } else {
            pthread_mutex_unlock(&j->mu);
            err[0] = 0;
            int rc = fd_db_job_claim(w->db, &id, &request, err, sizeof err);
            if (rc) {
                fd_log("warn", "worker %d: cannot claim a job: %s", w->index, err);
                id = 0;
            }
            if (!id) {
                free(request);
                request = NULL;
                pthread_mutex_lock(&j->mu);
                if (!j->pending && !j->stopping) {
                    struct timespec ts;
                    clock_gettime(CLOCK_MONOTONIC, &ts);
                    ts.tv_nsec += 500000000L;
                    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
                    pthread_cond_timedwait(&j->cv, &j->mu, &ts);
                }
                j->pending = 0;
                continue;
            }
        }
        pthread_mutex_lock(&j->mu);
        if (!id) continue;
        slot->id = id;
        SET_FLAG(slot->user_cancel, 0);
        SET_FLAG(slot->cancel, j->stopping); /* a stop that came meanwhile */
        atomic_fetch_add(&j->running, 1);
        pthread_mutex_unlock(&j->mu);

        /* a cancellation that reached the database before we registered */
        if (fd_db_job_cancel_requested(w->db, id) == 1) {
            pthread_mutex_lock(&j->mu);
            SET_FLAG(slot->user_cancel, 1);
            SET_FLAG(slot->cancel, 1);
            pthread_mutex_unlock(&j->mu);
        }
        if (FLAG(slot->user_cancel)) finish(w, id, "cancelled", NULL);
        else run_job(w, slot, id, request ? request : "", resumed);
        free(request);

        pthread_mutex_lock(&j->mu);
        slot->id = 0;
        SET_FLAG(slot->cancel, 0);
        SET_FLAG(slot->user_cancel, 0);
        atomic_fetch_sub(&j->running, 1);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* ---- API -------------------------------------------------------------------------- */
static void jobs_free(fd_jobs *j) {
    if (!j) return;
    for (int i = 0; i < j->n; i++) {
        if (j->w[i].cw) ckpt_writer_stop(j->w[i].cw);
        free(j->w[i].cw);
        fd_db_close(j->w[i].db);
    }
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j->w);
    free(j->slots);
    free(j->resume);
    free(j->db_path);
    free(j);
}

int fd_jobs_start(const char *db_path, int n, int train_threads, int train_nice, fd_jobs **out,
                  char *err, size_t errlen) {
    *out = NULL;
    if (n < 0 || n > 256) {
        if (err) snprintf(err, errlen, "training workers: %d is out of range (0..256)", n);
        return FD_EINVAL;
    }
    if (train_threads < 1 || train_threads > 64) {
        if (err) snprintf(err, errlen, "training threads: %d is out of range (1..64)", train_threads);
        return FD_EINVAL;
    }
    fd_jobs *j = calloc(1, sizeof *j);
    if (!j) return FD_ENOMEM;
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&j->running, 0);
    j->ckpt_seconds = 10;
    j->train_threads = train_threads;
    j->train_nice = train_nice < 0 ? 0 : train_nice > 19 ? 19 : train_nice;
    const char *cs = getenv("FLOWD_CHECKPOINT_SECONDS");
    double v;
    if (cs && !nf_parse_num(cs, 0, HUGE_VAL, &v)) j->ckpt_seconds = v;
    j->max_restarts = FD_JOB_MAX_RESTARTS;
    const char *mr = getenv("FLOWD_MAX_JOB_RESTARTS");
    int64_t mrv;
    if (mr && !nf_parse_i64(mr, 0, 1000, &mrv)) j->max_restarts = (int)mrv;
    j->w = calloc(n ? (size_t)n : 1, sizeof *j->w);
    j->slots = calloc(n ? (size_t)n : 1, sizeof *j->slots);
    j->db_path = strdup(db_path);
    if (!j->w || !j->slots || !j->db_path) {
        jobs_free(j);
        return FD_ENOMEM;
    }
    j->n = n;
    for (int i = 0; i < n; i++) {
        j->w[i].j = j;
        j->w[i].index = i;
        j->w[i].last_err_log = -1e9;
        int rc = fd_db_open(db_path, &j->w[i].db, err, errlen);
        if (rc) {
            jobs_free(j);
            return rc;
        }
        /* here, on the daemon's thread: the writer keeps normal priority */
        j->w[i].cw = malloc(sizeof *j->w[i].cw);
        if (!j->w[i].cw) {
            jobs_free(j);
            return FD_ENOMEM;
        }
        ckpt_writer_start(j->w[i].cw, &j->w[i], db_path);
    }
    if (n > 0) {
        int rc = fd_db_jobs_running(j->w[0].db, &j->resume, &j->nresume, err, errlen);
        if (rc) {
            jobs_free(j);
            return rc;
        }
        if (j->nresume)
            fd_log("info", "%d training job(s) were running when the daemon stopped; "
                            "resuming", j->nresume);
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&j->w[i].th, NULL, worker_main, &j->w[i])) {
            if (err) snprintf(err, errlen, "cannot start training worker %d", i);
            fd_jobs_stop(j);
            return FD_ENOMEM;
        }
        j->w[i].started = 1;
    }
    *out = j;
    return 0;
}

void fd_jobs_notify(fd_jobs *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    j->pending = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void fd_jobs_cancel(fd_jobs *j, int64_t id) {
    if (!j || id <= 0) return;
    pthread_mutex_lock(&j->mu);
    for (int i = 0; i < j->n; i++)
        if (j->slots[i].id == id) {
            SET_FLAG(j->slots[i].user_cancel, 1);
            SET_FLAG(j->slots[i].cancel, 1);
        }
    pthread_mutex_unlock(&j->mu);
}

void fd_jobs_stop(fd_jobs *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    j->stopping = 1;
    for (int i = 0; i < j->n; i++)
        if (j->slots[i].id) SET_FLAG(j->slots[i].cancel, 1);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    for (int i = 0; i < j->n; i++)
        if (j->w[i].started) pthread_join(j->w[i].th, NULL);
    jobs_free(j);
}

int fd_jobs_running(fd_jobs *j) {
    return j ? atomic_load(&j->running) : 0;
}
