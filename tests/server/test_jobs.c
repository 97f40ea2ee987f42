/* test_jobs.c: the training workers (server/jobs.c) on a fresh database:
 * builtin and uploaded datasets, a missing dataset, cancellation, queue
 * order, and shutdown mid-training followed by a resume. */
#include "../test.h"

#include "../../server/server.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>

typedef struct {
    char dir[64];
    char path[128];
    fd_db *db;
} tdb;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void msleep(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int tdb_open(tdb *t) {
    char err[256] = "";
    snprintf(t->dir, sizeof t->dir, "/tmp/flowd_jobs_XXXXXX");
    if (!mkdtemp(t->dir)) return -1;
    snprintf(t->path, sizeof t->path, "%s/flowd.db", t->dir);
    if (fd_db_open(t->path, &t->db, err, sizeof err)) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    if (fd_db_migrate(t->db, NULL, err, sizeof err)) {
        fprintf(stderr, "migrate: %s\n", err);
        return -1;
    }
    return 0;
}

static void tdb_close(tdb *t) {
    char p[160];
    fd_db_close(t->db);
    t->db = NULL;
    unlink(t->path);
    snprintf(p, sizeof p, "%s-wal", t->path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", t->path);
    unlink(p);
    rmdir(t->dir);
}

static int64_t submit(tdb *t, const char *model, const char *dataset, int epochs,
                      const char *train_extra) {
    char req[1024], err[256] = "";
    snprintf(req, sizeof req,
             "{\"model\":\"%s\",\"dataset\":%s,"
             "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
             "\"train\":{\"epochs\":%d%s}}",
             model, dataset, epochs, train_extra ? train_extra : "");
    int64_t id = 0;
    int existed = 0;
    int rc = fd_db_job_create(t->db, NULL, model, req, &id, &existed, err, sizeof err);
    if (rc) fprintf(stderr, "job_create: %s\n", err);
    return rc ? 0 : id;
}

#define MOONS "{\"builtin\":\"moons\",\"n\":2000,\"seed\":1}"

/* The job object (caller deletes); NULL if it cannot be read. */
static cJSON *job_get(tdb *t, int64_t id) {
    cJSON *o = NULL;
    char err[256] = "";
    if (fd_db_job_get(t->db, id, &o, err, sizeof err)) return NULL;
    return o;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* ids are JSON strings (64-bit safe) */
static int64_t jid(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsString(v)) return strtoll(v->valuestring, NULL, 10);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
}

static int terminal(const char *s) {
    return !strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
}

/* Polls until the job reaches a final state or `want` (returns the job
 * object, caller deletes), or timeout. */
static cJSON *wait_job(tdb *t, int64_t id, const char *want, double timeout) {
    double t0 = now_s();
    for (;;) {
        cJSON *o = job_get(t, id);
        const char *s = o ? jstr(o, "state") : "";
        if (o && (!strcmp(s, want) || terminal(s))) return o;
        if (now_s() - t0 > timeout) return o;
        cJSON_Delete(o);
        msleep(10);
    }
}

TEST_T(jobs_builtin_moons_succeeds, 90) {
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    fd_jobs *j = NULL;
    CHECK(fd_jobs_start(t.path, 1, 0, 0, &j, err, sizeof err) == FD_EINVAL && !j);
    /* two threads share each batch (--train-threads 2) */
    REQUIRE(fd_jobs_start(t.path, 1, 2, 19, &j, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_jobs_running(j), 0);
    int64_t id = submit(&t, "moons1", MOONS, 3, NULL);
    REQUIRE(id > 0);
    fd_jobs_notify(j);
    cJSON *o = wait_job(&t, id, "succeeded", 60);
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "succeeded"), "state %s error %s", jstr(o, "state"),
              jstr(o, "error"));
    CHECK_EQ_INT(jnum(o, "version"), 1);
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "progress");
    CHECK(cJSON_IsObject(pr));
    CHECK_EQ_INT(jnum(pr, "epochs"), 3);
    CHECK_EQ_INT(jnum(pr, "epoch"), 3);
    CHECK(isfinite(jnum(pr, "train_loss")));
    CHECK(isfinite(jnum(pr, "val_loss")));
    CHECK(cJSON_GetObjectItemCaseSensitive(pr, "val_bits_per_dim") == NULL);
    cJSON_Delete(o);
    fd_jobs_stop(j);

    cJSON *m = NULL;
    REQUIRE(fd_db_model_get(t.db, "moons1", &m, err, sizeof err) == 0);
    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(m, "versions");
    REQUIRE(cJSON_GetArraySize(vs) == 1);
    const cJSON *v = cJSON_GetArrayItem(vs, 0);
    CHECK_EQ_INT(jnum(v, "version"), 1);
    CHECK_EQ_INT(jnum(v, "dim"), 2);
    CHECK_EQ_INT(jnum(v, "context_dim"), 0);
    CHECK_EQ_INT(jid(v, "job_id"), id);
    const cJSON *mm = cJSON_GetObjectItemCaseSensitive(v, "metrics");
    CHECK(isfinite(jnum(mm, "val_nll")));
    CHECK_EQ_INT(jnum(mm, "epochs_run"), 3);
    CHECK_EQ_INT(jnum(mm, "rows_train"), 1800);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(v, "config");
    CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(cfg, "layers")));
    CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(v, "preprocess")));
    cJSON_Delete(m);

    /* the stored checkpoint loads as a model */
    void *buf = NULL;
    size_t len = 0;
    int ver = 0;
    REQUIRE(fd_db_version_get(t.db, "moons1", 0, &buf, &len, &ver, err, sizeof err) == 0);
    nf_model *nm = NULL;
    CHECK(nf_model_load(buf, len, &nm, err, sizeof err) == 0);
    nf_model_free(nm);
    free(buf);

    cJSON *rows = NULL;
    REQUIRE(fd_db_job_metrics(t.db, id, 0, 1000, &rows, err, sizeof err) == 0);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(rows, "metrics");
    int nval = 0, ntrain = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, arr) {
        if (!strcmp(jstr(r, "kind"), "val")) {
            nval++;
            CHECK(isfinite(jnum(r, "val_loss")));
        } else {
            ntrain++;
        }
        CHECK(jnum(r, "time") > 1.6e9);
    }
    CHECK_EQ_INT(nval, 3);
    CHECK(ntrain >= 1);
    cJSON_Delete(rows);
    /* finished jobs keep no training state */
    void *st = NULL;
    size_t sl = 0;
    int64_t step = 0;
    CHECK(fd_db_train_state_get(t.db, id, &st, &sl, &step, err, sizeof err) == FD_ENOTFOUND);
    free(st);
    tdb_close(&t);
}

TEST_T(jobs_missing_dataset_fails, 60) {
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    int64_t id = submit(&t, "nods", "{\"id\":\"ds_0123456789abcdef\"}", 3, NULL);
    REQUIRE(id > 0);
    fd_jobs *j = NULL;
    REQUIRE(fd_jobs_start(t.path, 1, 1, 0, &j, err, sizeof err) == 0);
    cJSON *o = wait_job(&t, id, "failed", 20);
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "failed"), "state %s", jstr(o, "state"));
    CHECK_MSG(strstr(jstr(o, "error"), "dataset ds_0123456789abcdef not found (deleted?)"),
              "error '%s'", jstr(o, "error"));
    cJSON_Delete(o);
    fd_jobs_stop(j);
    cJSON *m = NULL;
    CHECK(fd_db_model_get(t.db, "nods", &m, err, sizeof err) == FD_ENOTFOUND);
    cJSON_Delete(m);
    tdb_close(&t);
}

/* Waits until the job is running and has reported progress. */
static int wait_training(tdb *t, fd_jobs *j, int64_t id, double timeout) {
    double t0 = now_s();
    while (now_s() - t0 < timeout) {
        cJSON *o = job_get(t, id);
        /* at least one step taken: a cancel then keeps a state past step 0
         * (under sanitizers the first report can come before any step) */
        cJSON *pr = o ? cJSON_GetObjectItemCaseSensitive(o, "progress") : NULL;
        cJSON *st = cJSON_GetObjectItemCaseSensitive(pr, "step");
        int ok = o && !strcmp(jstr(o, "state"), "running") && cJSON_IsObject(pr) &&
                 cJSON_IsNumber(st) && st->valuedouble > 0 && fd_jobs_running(j) == 1;
        cJSON_Delete(o);
        if (ok) return 1;
        msleep(5);
    }
    return 0;
}

TEST_T(jobs_cancel_running, 60) {
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    fd_jobs *j = NULL;
    REQUIRE(fd_jobs_start(t.path, 1, 1, 0, &j, err, sizeof err) == 0);
    /* through fd_jobs_cancel, as the HTTP handler does */
    int64_t id = submit(&t, "long", MOONS, 10000, NULL);
    REQUIRE(id > 0);
    fd_jobs_notify(j);
    REQUIRE(wait_training(&t, j, id, 20));
    double t0 = now_s();
    CHECK(fd_db_job_cancel(t.db, id, err, sizeof err) == 0);
    fd_jobs_cancel(j, id);
    cJSON *o = wait_job(&t, id, "cancelled", 10);
    double dt = now_s() - t0;
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "cancelled"), "state %s", jstr(o, "state"));
    CHECK_MSG(dt < 2.0, "cancelled after %.2f s", dt);
    cJSON_Delete(o);

    /* flagged in the database only: the worker notices on its own */
    int64_t id2 = submit(&t, "long", MOONS, 10000, NULL);
    REQUIRE(id2 > 0);
    fd_jobs_notify(j);
    REQUIRE(wait_training(&t, j, id2, 20));
    t0 = now_s();
    CHECK(fd_db_job_cancel(t.db, id2, err, sizeof err) == 0);
    o = wait_job(&t, id2, "cancelled", 10);
    dt = now_s() - t0;
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "cancelled"), "state %s", jstr(o, "state"));
    CHECK_MSG(dt < 2.0, "cancelled after %.2f s", dt);
    cJSON_Delete(o);

    /* the worker idles again; nothing was published; the cancelled job
     * kept its saved state (POST /v1/jobs/{id}/resume continues it) */
    double t1 = now_s();
    while (fd_jobs_running(j) && now_s() - t1 < 5) msleep(5);
    CHECK_EQ_INT(fd_jobs_running(j), 0);
    fd_jobs_stop(j);
    cJSON *m = NULL;
    CHECK(fd_db_model_get(t.db, "long", &m, err, sizeof err) == FD_ENOTFOUND);
    cJSON_Delete(m);
    void *st = NULL;
    size_t sl = 0;
    int64_t step = 0;
    CHECK(fd_db_train_state_get(t.db, id, &st, &sl, &step, err, sizeof err) == 0);
    CHECK(sl > 0 && step > 0);
    free(st);
    tdb_close(&t);
}

TEST_T(jobs_run_in_order, 90) {
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    int64_t a = submit(&t, "ord", MOONS, 3, NULL);
    int64_t b = submit(&t, "ord", MOONS, 2, NULL);
    REQUIRE(a > 0 && b > a);
    fd_jobs *j = NULL;
    REQUIRE(fd_jobs_start(t.path, 1, 1, 0, &j, err, sizeof err) == 0);
    cJSON *ob = wait_job(&t, b, "succeeded", 60);
    cJSON *oa = wait_job(&t, a, "succeeded", 60);
    REQUIRE(oa && ob);
    CHECK_MSG(!strcmp(jstr(oa, "state"), "succeeded"), "a: %s %s", jstr(oa, "state"), jstr(oa, "error"));
    CHECK_MSG(!strcmp(jstr(ob, "state"), "succeeded"), "b: %s %s", jstr(ob, "state"), jstr(ob, "error"));
    CHECK_EQ_INT(jnum(oa, "version"), 1);
    CHECK_EQ_INT(jnum(ob, "version"), 2);
    /* ISO-8601 UTC with milliseconds compares as text */
    CHECK_MSG(strcmp(jstr(oa, "finished_at"), jstr(ob, "started_at")) <= 0, "a finished %s, b started %s",
              jstr(oa, "finished_at"), jstr(ob, "started_at"));
    cJSON_Delete(oa);
    cJSON_Delete(ob);
    fd_jobs_stop(j);
    tdb_close(&t);
}

TEST_T(jobs_shutdown_resumes, 90) {
    setenv("FLOWD_CHECKPOINT_SECONDS", "0.2", 1);
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    const int epochs = 1500;
    int64_t id = submit(&t, "res", MOONS, epochs, NULL);
    REQUIRE(id > 0);
    fd_jobs *j = NULL;
    REQUIRE(fd_jobs_start(t.path, 1, 1, 0, &j, err, sizeof err) == 0);
    /* wait for a checkpoint well into the run */
    void *st = NULL;
    size_t sl = 0;
    int64_t step = 0;
    double t0 = now_s();
    int have = 0;
    while (now_s() - t0 < 30) {
        if (fd_db_train_state_get(t.db, id, &st, &sl, &step, err, sizeof err) == 0) {
            free(st);
            st = NULL;
            if (step >= 500) {
                have = 1;
                break;
            }
        }
        cJSON *o = job_get(&t, id);
        int done = o && terminal(jstr(o, "state"));
        cJSON_Delete(o);
        if (done) break;
        msleep(10);
    }
    REQUIRE(have);
    fd_jobs_stop(j);

    /* still running in the database, with the shutdown checkpoint */
    cJSON *o = job_get(&t, id);
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "running"), "state %s", jstr(o, "state"));
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "progress");
    double total = jnum(pr, "total_steps");
    char *old_progress = cJSON_PrintUnformatted(pr);
    cJSON_Delete(o);
    int64_t saved = 0;
    REQUIRE(fd_db_train_state_get(t.db, id, &st, &sl, &saved, err, sizeof err) == 0);
    free(st);
    st = NULL;
    CHECK(saved >= step);
    CHECK(saved < total);

    /* a new start resumes it from there: every progress report after the
     * restart is past the saved step (from scratch it would start at 50) */
    REQUIRE(fd_jobs_start(t.path, 1, 1, 0, &j, err, sizeof err) == 0);
    int64_t min_new = INT64_MAX;
    t0 = now_s();
    for (;;) {
        o = job_get(&t, id);
        REQUIRE(o);
        if (terminal(jstr(o, "state"))) break;
        pr = cJSON_GetObjectItemCaseSensitive(o, "progress");
        char *p = pr ? cJSON_PrintUnformatted(pr) : NULL;
        if (p && old_progress && strcmp(p, old_progress)) {
            double s = jnum(pr, "step");
            if (s < (double)min_new) min_new = (int64_t)s;
        }
        free(p);
        cJSON_Delete(o);
        o = NULL; /* a timeout must not read the freed object below */
        if (now_s() - t0 > 60) break;
        msleep(1);
    }
    free(old_progress);
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "succeeded"), "state %s error %s", jstr(o, "state"),
              jstr(o, "error"));
    cJSON_Delete(o);
    CHECK_MSG(min_new == INT64_MAX || min_new > saved, "progress at step %lld after resuming at %lld",
              (long long)min_new, (long long)saved);
    fd_jobs_stop(j);

    cJSON *m = NULL;
    REQUIRE(fd_db_model_get(t.db, "res", &m, err, sizeof err) == 0);
    const cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "versions"), 0);
    const cJSON *mm = cJSON_GetObjectItemCaseSensitive(v, "metrics");
    CHECK_EQ_INT(jnum(mm, "epochs_run"), epochs);
    CHECK_EQ_INT(jnum(mm, "steps"), total);
    cJSON_Delete(m);
    tdb_close(&t);
}

TEST_T(jobs_uploaded_dataset, 60) {
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    /* 1000 rows of a correlated 2-D Gaussian */
    enum { N = 1000 };
    float *x = malloc(sizeof(float) * 2 * N);
    REQUIRE(x);
    uint64_t s = 12345;
    double vmin = INFINITY, vmax = -INFINITY;
    for (int i = 0; i < N; i++) {
        double u[2];
        for (int k = 0; k < 2; k++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            u[k] = ((s >> 11) + 0.5) / 9007199254740992.0;
        }
        double g1 = sqrt(-2 * log(u[0])) * cos(2 * M_PI * u[1]);
        double g2 = sqrt(-2 * log(u[0])) * sin(2 * M_PI * u[1]);
        x[2 * i] = (float)(1 + g1);
        x[2 * i + 1] = (float)(-2 + 0.8 * g1 + 0.3 * g2);
        for (int k = 0; k < 2; k++) {
            vmin = fmin(vmin, x[2 * i + k]);
            vmax = fmax(vmax, x[2 * i + k]);
        }
    }
    char sha[65];
    fd_sha256_hex(x, sizeof(float) * 2 * N, sha);
    cJSON *ds = NULL;
    int rc = fd_db_dataset_add(t.db, "gauss", "csv", N, 2, NULL, 0, vmin, vmax, sha, x, &ds, err,
                               sizeof err);
    free(x);
    REQUIRE(rc == 0);
    char dsj[128];
    snprintf(dsj, sizeof dsj, "{\"id\":\"%s\"}", jstr(ds, "id"));
    cJSON_Delete(ds);
    int64_t id = submit(&t, "gauss", dsj, 3, NULL);
    REQUIRE(id > 0);
    fd_jobs *j = NULL;
    REQUIRE(fd_jobs_start(t.path, 1, 1, 0, &j, err, sizeof err) == 0);
    cJSON *o = wait_job(&t, id, "succeeded", 60);
    REQUIRE(o);
    CHECK_MSG(!strcmp(jstr(o, "state"), "succeeded"), "state %s error %s", jstr(o, "state"),
              jstr(o, "error"));
    cJSON_Delete(o);
    fd_jobs_stop(j);
    cJSON *m = NULL;
    REQUIRE(fd_db_model_get(t.db, "gauss", &m, err, sizeof err) == 0);
    const cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "versions"), 0);
    CHECK_EQ_INT(jnum(v, "dim"), 2);
    const cJSON *mm = cJSON_GetObjectItemCaseSensitive(v, "metrics");
    CHECK_EQ_INT(jnum(mm, "rows_train"), 900);
    CHECK(jnum(mm, "val_nll") < 4.0); /* a fitted Gaussian is ~2.3 nats */
    cJSON_Delete(m);
    tdb_close(&t);
}

/* The threads of this process at nice n under SCHED_BATCH (Linux keeps
 * both per thread: /proc/self/task/TID/stat field 19, sched_getscheduler). */
static int g_want_policy = SCHED_BATCH; /* fd_jobs_set_train_sched's default */

static int threads_at_nice(int n) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[320], buf[1024];
        snprintf(p, sizeof p, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = 0;
        char *s = strrchr(buf, ')');
        if (!s) continue;
        /* after ')': field 3 (state) ... field 19 (nice) is the 17th */
        char *tok = strtok(s + 1, " ");
        for (int i = 1; tok && i < 17; i++) tok = strtok(NULL, " ");
        if (tok && atoi(tok) == n && sched_getscheduler(atoi(e->d_name)) == g_want_policy) count++;
    }
    closedir(d);
    return count;
}

static double job_progress_num(tdb *t, int64_t id, const char *key) {
    cJSON *o = job_get(t, id);
    cJSON *pr = o ? cJSON_GetObjectItemCaseSensitive(o, "progress") : NULL;
    cJSON *v = cJSON_GetObjectItemCaseSensitive(pr, key);
    double x = cJSON_IsNumber(v) ? v->valuedouble : -1;
    cJSON_Delete(o);
    return x;
}

/* --train-yield: while a request is being answered (and for the quiet time
 * after), training threads wait between layers: no step completes; after
 * it, training goes on; with a share, it goes on anyway, more slowly; a
 * held job still cancels at once, and reports the time it was held */
TEST_T(jobs_training_waits_for_requests, 60) {
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    fd_jobs_set_train_yield(50, 0);
    fd_jobs *j = NULL;
    REQUIRE(fd_jobs_start(t.path, 1, 2, 0, &j, err, sizeof err) == 0);
    int64_t id = submit(&t, "held", MOONS, 10000, ",\"log_every\":1");
    REQUIRE(id > 0);
    fd_jobs_notify(j);
    REQUIRE(wait_training(&t, j, id, 20));
    fd_jobs_request_begin(); /* a request, answered for as long as it takes */
    msleep(200);             /* the step under way stops at its next layer */
    double s1 = job_progress_num(&t, id, "step");
    msleep(600);
    double s2 = job_progress_num(&t, id, "step");
    /* (the step under way may still report) */
    CHECK_MSG(s1 > 0 && s2 - s1 <= 1, "steps %g then %g while a request was being answered", s1, s2);
    fd_jobs_request_end();
    double t0 = now_s(), s3 = s2;
    while (s3 <= s2 + 2 && now_s() - t0 < 10) {
        msleep(20);
        s3 = job_progress_num(&t, id, "step");
    }
    CHECK_MSG(s3 > s2 + 2, "step %g, %g before the request ended", s3, s2);
    /* a share: training keeps some of the time while requests never end */
    fd_jobs_set_train_yield(50, 0.5);
    fd_jobs_request_begin();
    double s4 = job_progress_num(&t, id, "step"), s5 = s4;
    t0 = now_s();
    while (s5 <= s4 + 2 && now_s() - t0 < 10) {
        msleep(20);
        s5 = job_progress_num(&t, id, "step");
    }
    CHECK_MSG(s5 > s4 + 2, "step %g, %g when the request began (share 0.5)", s5, s4);
    /* held again (share 0), the job cancels at once */
    fd_jobs_set_train_yield(50, 0);
    msleep(200);
    CHECK(job_progress_num(&t, id, "held_seconds") > 0.4);
    t0 = now_s();
    CHECK(fd_db_job_cancel(t.db, id, err, sizeof err) == 0);
    fd_jobs_cancel(j, id);
    cJSON *o = wait_job(&t, id, "cancelled", 10);
    CHECK(o != NULL);
    cJSON_Delete(o);
    CHECK_MSG(now_s() - t0 < 5, "cancelled after %.1f s while held", now_s() - t0);
    fd_jobs_request_end();
    fd_jobs_stop(j);
    tdb_close(&t);
}

/* --train-nice, --train-sched: a job's threads (the worker and the other
 * training thread) run at the nice value under SCHED_BATCH (the default) or
 * SCHED_IDLE; the calling (request)
 * threads and the checkpoint writer, which holds the database's write lock
 * while it stores a snapshot, stay as they were; 0 leaves them all alone */
TEST_T(jobs_training_threads_yield_to_requests, 60) {
    setenv("FLOWD_CHECKPOINT_SECONDS", "0.2", 1);
    tdb t;
    REQUIRE(tdb_open(&t) == 0);
    char err[256] = "";
    CHECK_EQ_INT(threads_at_nice(19), 0);
    errno = 0;
    int own_nice = getpriority(PRIO_PROCESS, 0); /* `nice make test` runs us at 10 or 19 */
    static const struct {
        int nice;
        const char *sched;
        int policy;
    } cases[] = {{19, "batch", SCHED_BATCH}, {19, "idle", SCHED_IDLE}, {0, "batch", SCHED_BATCH}};
    CHECK(fd_jobs_set_train_sched("fifo") == -1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int nice_val = cases[c].nice;
        REQUIRE(fd_jobs_set_train_sched(cases[c].sched) == 0);
        g_want_policy = cases[c].policy;
        fd_jobs *j = NULL;
        REQUIRE(fd_jobs_start(t.path, 1, 2, nice_val, &j, err, sizeof err) == 0);
        int64_t id = submit(&t, "nice", MOONS, 10000, NULL);
        REQUIRE(id > 0);
        fd_jobs_notify(j);
        REQUIRE(wait_training(&t, j, id, 20));
        /* a checkpoint was written meanwhile, by the writer thread */
        void *st = NULL;
        size_t sl = 0;
        int64_t step = 0;
        double t0 = now_s();
        while (fd_db_train_state_get(t.db, id, &st, &sl, &step, err, sizeof err) && now_s() - t0 < 10)
            msleep(20);
        CHECK(st != NULL);
        free(st);
        int n = threads_at_nice(19);
        if (nice_val)
            CHECK_MSG(n >= 2, "%d threads at nice 19 under %s (the worker and its pool thread)", n,
                      cases[c].sched);
        else CHECK_EQ_INT(n, 0);
        CHECK_EQ_INT(getpriority(PRIO_PROCESS, 0), own_nice); /* this thread untouched */
        CHECK(fd_db_job_cancel(t.db, id, err, sizeof err) == 0);
        fd_jobs_cancel(j, id);
        cJSON *o = wait_job(&t, id, "cancelled", 10);
        CHECK(o != NULL);
        cJSON_Delete(o);
        fd_jobs_stop(j);
        CHECK_EQ_INT(threads_at_nice(19), 0);
    }
    REQUIRE(fd_jobs_set_train_sched("batch") == 0);
    g_want_policy = SCHED_BATCH;
    unsetenv("FLOWD_CHECKPOINT_SECONDS");
    tdb_close(&t);
}
