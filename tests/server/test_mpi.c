/* test_mpi.c: data-parallel `flowd train` under mpirun (server/mpi.c,
 * core/train.h's nf_train_dist) against one process at the same global
 * batch.
 *
 * Both runs see the same global batches; the only difference is where the
 * gradient's per-row terms are added up: one process sums the 256 rows of a
 * batch in one workspace, two ranks sum 128 rows each and MPI_Allreduce adds
 * the two float32 partial sums.  So the trajectories differ by float32
 * summation order alone: a few ulp (2^-24 = 6e-8 relative) per gradient
 * element per step, which Adam's update (about lr per parameter, whatever
 * the gradient's scale) turns into parameter differences of order
 * lr * 1e-6 per step, growing at most geometrically over the 24 steps on a
 * smooth loss.  The tolerances: per-step training loss (printed to 6
 * significant digits) rtol 2e-5, two print units; gradient norms (3 digits)
 * rtol 1e-2, which catches a gradient summed wrongly by a factor (Adam would
 * hide one in the parameters); final parameters atol 2e-5, about 100 times
 * the differences measured (6e-8 on the MAF job) and far below what a rank
 * training on its half alone moves them (1e-2 and more).
 *
 * Skipped (with a message, counted as passed) when mpirun is not installed
 * (CI installs it: make deps, openmpi-bin and libopenmpi-dev) and in builds
 * left without MPI on purpose (have_mpirun below). */
#include "../test.h"

#include "../../core/model.h"
#include "../../server/mpi.h"

#ifndef FLOWD_TEST_VARIANT /* the Makefile says which */
#define FLOWD_TEST_VARIANT "rel"
#endif

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* a text file, NUL-terminated (nf_file_read's bytes) */
static char *slurp(const char *path, size_t *len) {
    void *b;
    size_t n;
    if (nf_file_read(path, &b, &n)) return NULL;
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, b, n);
        s[n] = 0;
    }
    free(b);
    if (len) *len = n;
    return s;
}

/* flowd next to this test binary, or $FLOWD_BIN */
static const char *flowd_bin(void) {
    static char buf[1100];
    const char *e = getenv("FLOWD_BIN");
    if (e && *e) return e;
    char self[1024];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) return "flowd";
    self[k] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(buf, sizeof buf, "%s/flowd", self);
    return buf;
}

/* the progress lines "step ... step=N/T train_loss=X ... grad_norm=G": up
 * to max of them in order; returns how many */
static int parse_steps(const char *log, double *loss, double *gn, int max) {
    int n = 0;
    for (const char *p = log; p && *p && n < max; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, "step ", 5)) continue;
        const char *l = strstr(p, "train_loss="), *g = strstr(p, "grad_norm=");
        const char *eol = strchr(p, '\n');
        if (!l || !g || (eol && (l > eol || g > eol))) continue;
        loss[n] = strtod(l + 11, NULL);
        gn[n] = strtod(g + 10, NULL);
        n++;
    }
    return n;
}

static nf_model *load_model(const char *path) {
    void *b;
    size_t len;
    char err[256];
    nf_model *m = NULL;
    if (nf_file_read(path, &b, &len)) return NULL;
    if (nf_model_load(b, len, &m, err, sizeof err)) m = NULL;
    free(b);
    return m;
}

/* 1: run the MPI tests; 0: skip (said why).  Without mpirun they skip;
 * with it, a flowd built without MPI skips where that was chosen (MPI=0,
 * or a sanitizer variant: MPI is built into the release variant only) and
 * fails otherwise (libopenmpi-dev missing: make deps installs it). */
static int have_mpirun(void) {
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        printf("    SKIP: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev; "
               "make deps does)\n");
        return 0;
    }
    if (fd_mpi_built()) return 1;
#ifdef FLOWD_MPI_OFF_BY_CHOICE
    printf("    SKIP: built with MPI=0\n");
    return 0;
#else
    if (strcmp(FLOWD_TEST_VARIANT, "rel")) {
        printf("    SKIP: the %s variant is built without MPI (the release variant has it)\n",
               FLOWD_TEST_VARIANT);
        return 0;
    }
    CHECK_MSG(0, "mpirun is installed but flowd was built without MPI: install libopenmpi-dev "
                 "(make deps) and rebuild");
    return 0;
#endif
}

#define MPI_STEPS 24 /* 2304 rows, 10% validation: 2074 rows, 8 batches of 256, 3 epochs */

/* one job (flow: its "flow" JSON) trained by one process and by 2 ranks:
 * each one's per-step losses and gradient norms, and the two models */
typedef struct {
    int n1, n2;
    double l1[64], g1[64], l2[64], g2[64];
    nf_model *m1, *m2;
} mpi_pair;

static int run_pair(const char *flow, mpi_pair *r) {
    memset(r, 0, sizeof *r);
    char dir[] = "/tmp/flowd_mpi_XXXXXX";
    if (!mkdtemp(dir)) return -1;
    char job[256], cmd[4096], path[300];
    snprintf(job, sizeof job, "%s/job.json", dir);
    FILE *f = fopen(job, "w");
    if (!f) return -1;
    fprintf(f, "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"n\":2304,\"seed\":1},"
               "\"flow\":%s,"
               "\"train\":{\"epochs\":3,\"batch_size\":256,\"lr\":0.003,\"val_fraction\":0.1,"
               "\"seed\":5,\"log_every\":1}}\n", flow);
    fclose(f);
    const char *bin = flowd_bin();
    snprintf(cmd, sizeof cmd,
             "cd %s && OPENBLAS_NUM_THREADS=1 '%s' train -c job.json -o one.flow --threads 1 "
             ">one.out 2>one.err", dir, bin);
    int rc1 = system(cmd);
    CHECK_EQ_INT(rc1, 0);
    /* as root OpenMPI 4.1 wants both variables (or --allow-run-as-root);
     * --oversubscribe: more ranks than free cores on a busy machine */
    snprintf(cmd, sizeof cmd,
             "cd %s && OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
             "OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe -n 2 '%s' train -c job.json "
             "-o two.flow --threads 1 >two.out 2>two.err", dir, bin);
    int rc = system(cmd);
    snprintf(path, sizeof path, "%s/two.err", dir);
    char *e2 = slurp(path, NULL);
    CHECK_MSG(rc == 0, "mpirun -n 2 flowd train failed (%d):\n%s", rc, e2 ? e2 : "");
    snprintf(path, sizeof path, "%s/one.err", dir);
    char *e1 = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/two.out", dir);
    char *o2 = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/one.out", dir);
    char *o1 = slurp(path, NULL);
    if (e1 && e2 && o1 && o2) {
        CHECK_MSG(strstr(o2, "2 ranks)") && strstr(o2, "\"ranks\":2"), "two.out: %s", o2);
        CHECK_MSG(strstr(o1, "1 rank)") && strstr(o1, "\"ranks\":1"), "one.out: %s", o1);
        r->n1 = parse_steps(e1, r->l1, r->g1, 64);
        r->n2 = parse_steps(e2, r->l2, r->g2, 64);
    }
    snprintf(path, sizeof path, "%s/one.flow", dir);
    r->m1 = load_model(path);
    snprintf(path, sizeof path, "%s/two.flow", dir);
    r->m2 = load_model(path);
    free(e1);
    free(e2);
    free(o1);
    free(o2);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ_INT(system(cmd), 0);
    return r->m1 && r->m2 && r->n1 && r->n2 && !rc && !rc1 ? 0 : -1;
}

/* max |p1 - p2| over the two models' parameters (INFINITY: not comparable) */
static double param_diff(const mpi_pair *r) {
    size_t P = nf_flow_num_params(r->m1->flow);
    if (nf_flow_num_params(r->m2->flow) != P) return INFINITY;
    const nf_real *p1 = nf_flow_params(r->m1->flow), *p2 = nf_flow_params(r->m2->flow);
    double maxd = 0;
    for (size_t i = 0; i < P; i++) {
        double d = fabs((double)p1[i] - p2[i]);
        if (!(d <= maxd)) maxd = d; /* NaN too */
    }
    printf("    %zu parameters: max |one - two| = %.3g\n", P, maxd);
    return maxd;
}

static void pair_free(mpi_pair *r) {
    nf_model_free(r->m1);
    nf_model_free(r->m2);
}

/* MAF (MADE blocks): no layer whose gradient is analytically zero, so
 * summation order is the only difference and the tolerances of the file
 * comment hold */
TEST_T(mpi_train_two_ranks_match_one_process, 300) {
    if (!have_mpirun()) return;
    mpi_pair r;
    REQUIRE(!run_pair("{\"preset\":\"maf\",\"depth\":3,\"hidden\":[32]}", &r));
    CHECK_EQ_INT(r.n1, MPI_STEPS);
    CHECK_EQ_INT(r.n2, MPI_STEPS); /* rank 0 alone reports */
    for (int i = 0; i < r.n1 && i < r.n2; i++) {
        CHECK_CLOSE(r.l2[i], r.l1[i], 0, 2e-5);
        CHECK_CLOSE(r.g2[i], r.g1[i], 0, 1e-2);
    }
    CHECK(r.n1 > 1 && r.l1[r.n1 - 1] < r.l1[0]); /* it trained */
    double d = param_diff(&r);
    CHECK_MSG(d <= 2e-5, "parameters differ by %.3g", d);
    pair_free(&r);
}

/* glow: actnorm data-initialised on the first global batch, then LU linear
 * and coupling.  The first step's loss is the initialised flow's on the
 * whole batch (an initialisation on a rank's half would differ in the
 * fourth digit).  Later steps agree less tightly than MAF's: right after
 * the data initialisation the actnorm gradients are zero up to rounding,
 * and Adam's first update (lr * g/|g|) turns their rounding noise into
 * +-lr steps; the same happens between one process at 1 and 2 threads.  So
 * here: the losses to 1e-4 and the parameters to 10 lr. */
TEST_T(mpi_train_actnorm_initialised_on_the_global_batch, 300) {
    if (!have_mpirun()) return;
    mpi_pair r;
    REQUIRE(!run_pair("{\"preset\":\"glow\",\"depth\":3,\"hidden\":[32]}", &r));
    CHECK_EQ_INT(r.n1, MPI_STEPS);
    CHECK_EQ_INT(r.n2, MPI_STEPS);
    if (r.n1 > 0 && r.n2 > 0) CHECK_CLOSE(r.l2[0], r.l1[0], 0, 2e-6);
    for (int i = 0; i < r.n1 && i < r.n2; i++) CHECK_CLOSE(r.l2[i], r.l1[i], 0, 1e-4);
    double d = param_diff(&r);
    CHECK_MSG(d <= 0.03, "parameters differ by %.3g", d);
    pair_free(&r);
}

/* the same models, byte for byte */
static int same_params(const nf_model *a, const nf_model *b) {
    size_t P = nf_flow_num_params(a->flow);
    return P == nf_flow_num_params(b->flow) &&
           !memcmp(nf_flow_params(a->flow), nf_flow_params(b->flow), P * sizeof(nf_real));
}

/* --checkpoint / --resume across rank counts: a state written by one
 * process (at step 20 of 24) resumed by 2 ranks, and one written by rank 0
 * of 2 resumed by one process, end where the uninterrupted runs end (to
 * the summation-order tolerance of the first test); one process resuming
 * its own state ends bit for bit where it would have. */
TEST_T(mpi_train_resume_across_rank_counts, 300) {
    if (!have_mpirun()) return;
    char dir[] = "/tmp/flowd_mpi_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char job[256], cmd[4096], path[300];
    snprintf(job, sizeof job, "%s/job.json", dir);
    FILE *f = fopen(job, "w");
    REQUIRE(f);
    fputs("{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"n\":2304,\"seed\":1},"
          "\"flow\":{\"preset\":\"maf\",\"depth\":3,\"hidden\":[32]},"
          "\"train\":{\"epochs\":3,\"batch_size\":256,\"lr\":0.003,\"val_fraction\":0.1,"
          "\"seed\":5,\"log_every\":1}}\n", f);
    fclose(f);
    const char *bin = flowd_bin();
    const char *mpi = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -n 2";
    /* label, launcher ("" or mpirun), extra options */
    const char *runs[][3] = {
        {"one", "", "--checkpoint ck1 --checkpoint-every 10"},
        {"two", mpi, "--checkpoint ck2 --checkpoint-every 10"},
        {"one_from_one", "", "--resume ck1"},
        {"two_from_one", mpi, "--resume ck1"},
        {"one_from_two", "", "--resume ck2"},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        snprintf(cmd, sizeof cmd,
                 "cd %s && OPENBLAS_NUM_THREADS=1 %s '%s' train -c job.json -o %s.flow --threads 1 "
                 "%s >%s.out 2>%s.err", dir, runs[i][1], bin, runs[i][0], runs[i][2], runs[i][0],
                 runs[i][0]);
        int rc = system(cmd);
        snprintf(path, sizeof path, "%s/%s.err", dir, runs[i][0]);
        char *e = slurp(path, NULL);
        CHECK_MSG(rc == 0, "%s failed (%d): %s", runs[i][0], rc, e ? e : "");
        /* a resumed run starts at step 21 */
        if (strstr(runs[i][2], "--resume") && e) {
            double l[64], g[64];
            CHECK_EQ_INT(parse_steps(e, l, g, 64), 4);
        }
        free(e);
    }
    nf_model *m[5];
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/%s.flow", dir, runs[i][0]);
        m[i] = load_model(path);
    }
    if (m[0] && m[1] && m[2] && m[3] && m[4]) {
        CHECK(same_params(m[2], m[0]));
        mpi_pair a = {.m1 = m[0], .m2 = m[3]}, b = {.m1 = m[1], .m2 = m[4]}, c = {.m1 = m[0], .m2 = m[1]};
        CHECK(param_diff(&a) <= 2e-5);
        CHECK(param_diff(&b) <= 2e-5);
        CHECK(param_diff(&c) <= 2e-5);
    } else {
        CHECK_MSG(0, "a model is missing");
    }
    for (int i = 0; i < 5; i++) nf_model_free(m[i]);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ_INT(system(cmd), 0);
}

/* ---- flowd serve --mpi-launcher (server/launcher.c) --------------------------
 * The real daemon with the launcher "mpirun -n 2 --oversubscribe" (as root
 * OpenMPI wants the two variables of run_pair in the daemon's environment,
 * which the launcher inherits). */
#include "daemon.h"

#include "../../core/data.h"

#include <signal.h>
#include <sys/stat.h>

static const char *const mpi_env[] = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                      "OPENBLAS_NUM_THREADS=1", NULL};
static const char *const mpi_args[] = {"--mpi-launcher", "mpirun -n 2 --oversubscribe", NULL};

/* a number field of the job's progress, or NAN */
static double job_progress(dmn *d, long long id, const char *field, char *state, size_t n) {
    cJSON *j = get_job(d, id);
    const cJSON *p = j ? cJSON_GetObjectItemCaseSensitive(j, "progress") : NULL;
    const cJSON *v = p ? cJSON_GetObjectItemCaseSensitive(p, field) : NULL;
    const cJSON *st = j ? cJSON_GetObjectItemCaseSensitive(j, "state") : NULL;
    snprintf(state, n, "%s", cJSON_IsString(st) ? st->valuestring : "");
    double r = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    cJSON_Delete(j);
    return r;
}

/* the "error" of a job, malloc'd ("" when none) */
static char *job_error(dmn *d, long long id) {
    cJSON *j = get_job(d, id);
    const cJSON *e = j ? cJSON_GetObjectItemCaseSensitive(j, "error") : NULL;
    char *s = strdup(cJSON_IsString(e) ? e->valuestring : "");
    cJSON_Delete(j);
    return s;
}

/* waits for the job to end and checks it ended in want (its error said) */
static void expect_end(dmn *d, long long id, const char *want, double timeout_s) {
    char state[32] = "";
    CHECK(wait_job(d, id, timeout_s, state, sizeof state) == 0);
    char *e = job_error(d, id);
    CHECK_MSG(!strcmp(state, want), "job %lld: state %s, not %s: %s", id, state, want, e);
    free(e);
}

/* waits until the running job reports a step past after; its step, or -1 */
static double wait_step_past(dmn *d, long long id, double after, double timeout_s) {
    char st[32];
    for (double t0 = dmn_now(); dmn_now() - t0 < timeout_s; dmn_sleep_ms(50)) {
        double s = job_progress(d, id, "step", st, sizeof st);
        if (!strcmp(st, "running") && s > after) return s;
        if (strcmp(st, "running") && strcmp(st, "queued")) return -1;
    }
    return -1;
}

/* the pid of "job N: started on the MPI launcher (..., pid P)" in the log, or 0 */
static long launcher_pid(dmn *d, long long id) {
    size_t len;
    char *log = slurp(d->log, &len), needle[64], *p, *last = NULL;
    snprintf(needle, sizeof needle, "job %lld: started on the MPI launcher", id);
    for (p = log; p && (p = strstr(p, needle)); p++) last = p;
    long pid = 0;
    if (last && (p = strstr(last, ", pid "))) pid = strtol(p + 6, NULL, 10);
    free(log);
    return pid;
}

static int path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* a moons job over a stored dataset (exported to .npy for the ranks) to
 * 'succeeded', progress seen while it ran, the version scoring rows */
TEST_T(mpi_launcher_trains_a_stored_dataset_job, 300) {
    if (!have_mpirun()) return;
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, mpi_args, mpi_env) == 0);
    /* 3000 moons rows as CSV */
    nf_data m = {0};
    char err[256];
    REQUIRE(nf_data_builtin("moons", 3000, -1, 7, &m, err, sizeof err) == 0);
    size_t cap = (size_t)m.n * 64, len = 0;
    char *csv = malloc(cap);
    REQUIRE(csv);
    for (int64_t i = 0; i < m.n; i++)
        len += (size_t)snprintf(csv + len, cap - len, "%.7g,%.7g\n", (double)m.x[2 * i], (double)m.x[2 * i + 1]);
    nf_data_free(&m);
    hreq q = {.method = "POST", .path = "/v1/datasets?name=moons3k", .ctype = "text/csv", .body = csv,
              .len = len, .has_body = 1};
    hresp r;
    REQUIRE(dmn_http(&d, &q, &r) == 0);
    free(csv);
    CHECK_EQ_INT(r.status, 201);
    const cJSON *dsid = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "id") : NULL;
    char job[512];
    snprintf(job, sizeof job,
             "{\"model\":\"mpimoons\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"maf\",\"depth\":3,"
             "\"hidden\":[32]},\"train\":{\"epochs\":100000,\"batch_size\":256,\"lr\":0.003,"
             "\"log_every\":5,\"max_seconds\":4,\"seed\":3}}",
             cJSON_IsString(dsid) ? dsid->valuestring : "missing");
    hresp_free(&r);
    long long id = submit_job(&d, job);
    REQUIRE(id > 0);
    /* progress while it runs */
    CHECK_MSG(wait_step_past(&d, id, 0, 60) > 0, "no progress seen while the job ran");
    expect_end(&d, id, "succeeded", 120);
    CHECK(dmn_log_has(&d, "started on the MPI launcher (mpirun"));
    CHECK_MSG(dmn_log_has(&d, "2 ranks)"), "flowd train did not report 2 ranks");
    /* the loss curve went into the job's metrics, and went down */
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%lld/metrics?after_step=0&limit=10000", id);
    REQUIRE(http_get(&d, path, &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    const cJSON *arr = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "metrics") : NULL;
    int n = cJSON_GetArraySize(arr);
    CHECK_MSG(n >= 3, "%d metric rows", n);
    double first = NAN, last = NAN;
    const cJSON *row;
    cJSON_ArrayForEach(row, arr) {
        const cJSON *tl = cJSON_GetObjectItemCaseSensitive(row, "train_loss");
        if (!cJSON_IsNumber(tl)) continue;
        if (isnan(first)) first = tl->valuedouble;
        last = tl->valuedouble;
    }
    CHECK_MSG(last < first - 0.1, "train loss %g -> %g", first, last);
    hresp_free(&r);
    /* the published version scores rows */
    REQUIRE(http_post_json(&d, "/v1/models/mpimoons/log_prob", "{\"inputs\":[[0.5,0.25],[8,8]]}", &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    const cJSON *lp = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "log_prob") : NULL;
    CHECK(cJSON_GetArraySize(lp) == 2);
    if (cJSON_GetArraySize(lp) == 2) /* on the moons, far more likely than far off */
        CHECK(cJSON_GetArrayItem(lp, 0)->valuedouble > cJSON_GetArrayItem(lp, 1)->valuedouble + 5);
    hresp_free(&r);
    snprintf(path, sizeof path, "mpi-jobs/job-%lld", id);
    CHECK_MSG(!path_exists(dmn_path(&d, path)), "the job's files were left behind");
    dmn_cleanup(&d);
}

/* a shutdown stops the ranks with a checkpoint; the next start resumes from
 * it on the launcher; a cancel stops them and leaves nothing running */
TEST_T(mpi_launcher_shutdown_resumes_and_cancel_stops, 300) {
    if (!have_mpirun()) return;
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, mpi_args, mpi_env) == 0);
    long long id = submit_job(&d, "{\"model\":\"long\",\"dataset\":{\"builtin\":\"moons\",\"n\":4000,\"seed\":1},"
                                  "\"flow\":{\"preset\":\"maf\",\"depth\":3,\"hidden\":[32]},"
                                  "\"train\":{\"epochs\":100000,\"batch_size\":256,\"log_every\":5}}");
    REQUIRE(id > 0);
    double s1 = wait_step_past(&d, id, 0, 60);
    CHECK_MSG(s1 > 0, "no progress");
    long pid1 = launcher_pid(&d, id);
    CHECK(pid1 > 0);
    CHECK_EQ_INT(dmn_stop(&d), 0);
    if (pid1 > 0) CHECK_MSG(kill((pid_t)pid1, 0) != 0, "mpirun (pid %ld) outlived the daemon", pid1);
    CHECK(dmn_log_has(&d, "stopped for shutdown; it resumes at the next start"));
    REQUIRE(dmn_start(&d, mpi_args, mpi_env) == 0);
    char st[32];
    double before = job_progress(&d, id, "step", st, sizeof st); /* stored before the stop */
    CHECK_MSG(!strcmp(st, "running"), "state %s after the restart", st);
    double s2 = wait_step_past(&d, id, before, 60); /* the resumed run reports */
    CHECK_MSG(s2 > before, "no progress after the restart (step %g)", before);
    CHECK(dmn_log_has(&d, "resuming from its saved state"));
    /* it went on from the checkpoint taken at the stop, not from step 0 */
    size_t len;
    char *log = slurp(d.log, &len);
    const char *rs = log ? strstr(log, "resuming at step ") : NULL;
    double from = rs ? strtod(rs + 17, NULL) : -1;
    free(log);
    CHECK_MSG(from >= s1, "resumed at step %g, but step %g was reported before the stop", from, s1);
    long pid2 = launcher_pid(&d, id);
    CHECK(pid2 > 0 && pid2 != pid1);
    hresp r;
    char path[96];
    snprintf(path, sizeof path, "/v1/jobs/%lld/cancel", id);
    REQUIRE(http_post_json(&d, path, "{}", &r) == 0);
    CHECK_EQ_INT(r.status, 202);
    hresp_free(&r);
    expect_end(&d, id, "cancelled", 60);
    if (pid2 > 0) CHECK_MSG(kill((pid_t)pid2, 0) != 0, "mpirun (pid %ld) still runs", pid2);
    snprintf(path, sizeof path, "mpi-jobs/job-%lld", id);
    CHECK_MSG(!path_exists(dmn_path(&d, path)), "the job's files were left behind");
    dmn_cleanup(&d);
}

/* A launcher that fails: the job fails with its exit status and its last
 * stderr lines.  No MPI needed (the launcher is a shell here), so it runs in
 * every variant.  The variable FLOWD_MPI_LAUNCHER sets it as the flag does;
 * a launcher line with command substitution is refused at start. */
TEST_T(mpi_launcher_failure_is_reported, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *env[] = {"FLOWD_MPI_LAUNCHER=sh -c 'echo launcher broke: no hosts >&2; exit 3'", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    const char *job = "{\"model\":\"x\",\"dataset\":{\"builtin\":\"moons\",\"n\":500},"
                      "\"flow\":{\"preset\":\"maf\",\"depth\":2,\"hidden\":[8]},\"train\":{\"epochs\":1}}";
    long long id = submit_job(&d, job);
    REQUIRE(id > 0);
    expect_end(&d, id, "failed", 60);
    char *e = job_error(&d, id);
    CHECK_MSG(strstr(e, "exited with status 3") && strstr(e, "launcher broke: no hosts"), "error: %s", e);
    free(e);
    CHECK_EQ_INT(dmn_stop(&d), 0);
    /* a launcher that cannot be executed at all */
    const char *args[] = {"--mpi-launcher", "/nonexistent/mpirun -n 2", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    id = submit_job(&d, job);
    REQUIRE(id > 0);
    expect_end(&d, id, "failed", 60);
    e = job_error(&d, id);
    CHECK_MSG(strstr(e, "exited with status 127") && strstr(e, "cannot execute"), "error: %s", e);
    free(e);
    char path[64];
    snprintf(path, sizeof path, "mpi-jobs/job-%lld", id);
    CHECK_MSG(!path_exists(dmn_path(&d, path)), "the job's files were left behind");
    CHECK_EQ_INT(dmn_stop(&d), 0);
    /* refused at start: no shell runs the line */
    const char *bad[] = {"serve", "--db", d.db, "--mpi-launcher", "mpirun $(touch /tmp/x) -n 2", NULL};
    CHECK_EQ_INT(run_flowd(&d, bad, NULL, 30), 2);
    CHECK(dmn_log_has(&d, "command substitution is not allowed"));
    dmn_cleanup(&d);
}

/* Any command line is a launcher: "env" runs flowd train as one process, so
 * the launcher's machinery (export, progress file, publish, cleanup) runs
 * in every variant, the sanitizers' included, without MPI. */
TEST_T(mpi_launcher_plain_command_trains, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *args[] = {"--mpi-launcher", "env FLOWD_LAUNCHED=1", NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    long long id = submit_job(&d, "{\"model\":\"plain\",\"dataset\":{\"builtin\":\"moons\",\"n\":1000,\"seed\":2},"
                                  "\"flow\":{\"preset\":\"maf\",\"depth\":2,\"hidden\":[16]},"
                                  "\"train\":{\"epochs\":3,\"batch_size\":100,\"log_every\":1}}");
    REQUIRE(id > 0);
    expect_end(&d, id, "succeeded", 150);
    CHECK(dmn_log_has(&d, "started on the MPI launcher (env"));
    CHECK(dmn_log_has(&d, "1 rank)"));
    char st[32];
    CHECK_EQ_INT((long long)job_progress(&d, id, "step", st, sizeof st), 27); /* 900 rows / 100, 3 epochs */
    hresp r;
    REQUIRE(http_post_json(&d, "/v1/models/plain/log_prob", "{\"inputs\":[[0.5,0.25]]}", &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    char path[64];
    snprintf(path, sizeof path, "mpi-jobs/job-%lld", id);
    CHECK_MSG(!path_exists(dmn_path(&d, path)), "the job's files were left behind");
    dmn_cleanup(&d);
}
