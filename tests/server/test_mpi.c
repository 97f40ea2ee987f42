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
