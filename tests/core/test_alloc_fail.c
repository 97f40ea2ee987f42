/* test_alloc_fail.c: allocation-failure injection.  For k = 1, 2, ... the
 * k-th allocation (core's nf_malloc/nf_calloc/nf_realloc, and cJSON's, which
 * core routes through them) fails along a full path: create, workspace, data init, a
 * training step (log_prob_grad + Adam), log_prob, sample, model save + load,
 * a short nf_trainer run, free.  Each run must either complete with the
 * reference results or fail with an error, and leave no block live (counted
 * through the hooks).  (An allocation inside a JSON parse may surface as
 * NF_EINVAL/NF_EFORMAT: cJSON reports both as a parse failure.)  The loop ends at the first k that no allocation
 * reaches. */
#include "../test.h"
#include "../../core/alloc.h"
#include "../../core/evaluate.h"
#include "../../core/model.h"
#include "../../core/nf_internal.h"
#include "../../core/train.h"

#include <execinfo.h>
#include <unistd.h>

static long fa_count;   /* allocations so far in this run */
static long fa_fail_at; /* fail the allocation with this number; 0 = never */
static long fa_live;    /* blocks allocated and not freed */
static long fa_failed;  /* allocations refused in this run */

static int fa_refuse(void) {
    if (++fa_count == fa_fail_at) {
        fa_failed++;
        if (getenv("FLOWD_ALLOC_TRACE")) { /* debugging: where the failure was injected */
            void *bt[24];
            backtrace_symbols_fd(bt, backtrace(bt, 24), 2);
        }
        return 1;
    }
    return 0;
}
static void *fa_malloc(size_t n) {
    if (fa_refuse()) return NULL;
    void *p = malloc(n ? n : 1);
    if (p) fa_live++;
    return p;
}
static void *fa_calloc(size_t n, size_t s) {
    if (fa_refuse()) return NULL;
    void *p = calloc(n ? n : 1, s ? s : 1);
    if (p) fa_live++;
    return p;
}
static void *fa_realloc(void *q, size_t n) {
    if (fa_refuse()) return NULL;
    void *p = realloc(q, n ? n : 1);
    if (p && !q) fa_live++;
    return p;
}
static void fa_free(void *p) {
    if (p) fa_live--;
    free(p);
}
static const nf_alloc_hooks fa_hooks = {fa_malloc, fa_calloc, fa_realloc, fa_free};

static void hooks_on(long fail_at) {
    fa_count = fa_live = fa_failed = 0;
    fa_fail_at = fail_at;
    nf_alloc_hook = &fa_hooks; /* cJSON reaches it through core's cJSON hooks (alloc.c) */
}
static void hooks_off(void) { nf_alloc_hook = NULL; }

#define N 64
#define D 3     /* the width of most flows here */
#define DMAX 16 /* the widest (the image flow) */

typedef struct {
    nf_real lp[N], xs[N * DMAX], lp2[N];
    double val;
} results;

/* N rows of width dim.  unit = 0: normal columns of scales 1..dim; unit = 1:
 * inside (0.1, 0.9), for layers defined on (0, 1) only (logit) */
static void data(nf_real *x, int unit, int dim) {
    nf_rng r;
    nf_rng_seed(&r, 11);
    for (int i = 0; i < N * dim; i++) {
        double v = nf_rng_normal(&r);
        x[i] = (nf_real)(unit ? 0.5 + 0.4 * tanh(v) : v * (1 + i % dim));
    }
}

/* The flows the failure paths run.  Every registered layer type is in one of
 * them (alloc_fail_covers_every_layer_type): a new layer family adds its
 * layer to a spec here (or a spec of its own and a TEST_T below). */
typedef struct {
    const char *spec;
    int unit; /* data(x, unit, dim) */
    int dim;  /* the flow's width; 0 for D */
} fa_spec;
enum { FA_COUPLING, FA_AUTOREGRESSIVE, FA_REALNVP, FA_NSF, FA_LOGIT, FA_CONV, FA_IMAGE,
       FA_CNF, FA_NSPECS };
static const fa_spec fa_specs[FA_NSPECS] = {
    [FA_COUPLING] = {"{\"dim\":3,\"layers\":[{\"type\":\"actnorm\"},{\"type\":\"lu_linear\"},"
                     "{\"type\":\"affine_coupling\",\"hidden\":[8]},{\"type\":\"permute\"},"
                     "{\"type\":\"additive_coupling\",\"net\":\"resnet\",\"hidden\":[6],\"blocks\":1},"
                     "{\"type\":\"batchnorm\"},{\"type\":\"leaky_relu\"},"
                     "{\"type\":\"elementwise_affine\"}],\"base\":{\"type\":\"mixture\",\"components\":2}}"},
    [FA_AUTOREGRESSIVE] = {"{\"dim\":3,\"layers\":[{\"type\":\"maf\",\"hidden\":[8]},{\"type\":\"iaf\",\"hidden\":[6]},"
                           "{\"type\":\"spline_coupling\",\"hidden\":[8],\"bins\":4},"
                           "{\"type\":\"spline_ar\",\"hidden\":[8],\"bins\":4}],\"base\":\"diag_normal\"}"},
    [FA_REALNVP] = {"{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}"},
    [FA_NSF] = {"{\"dim\":3,\"preset\":\"nsf\",\"depth\":1,\"hidden\":[8],\"bins\":4}"},
    [FA_LOGIT] = {"{\"dim\":3,\"layers\":[{\"type\":\"logit\",\"alpha\":0.01},"
                  "{\"type\":\"affine_coupling\",\"hidden\":[8]}]}", 1},
    /* an image of 3 channels of one pixel: the rows of D = 3 */
    [FA_CONV] = {"{\"dim\":3,\"shape\":[3,1,1],\"layers\":[{\"type\":\"conv_coupling\","
                 "\"hidden_channels\":4},{\"type\":\"conv_coupling\",\"mask\":\"channel_odd\","
                 "\"transform\":\"spline\",\"bins\":4,\"net\":\"resnet\",\"hidden_channels\":3,"
                 "\"blocks\":1}]}"},
    [FA_IMAGE] = {"{\"shape\":[1,4,4],\"layers\":[{\"type\":\"squeeze\"},"
                  "{\"type\":\"channel_actnorm\"},{\"type\":\"invconv\",\"seed\":2},"
                  "{\"type\":\"split\"},{\"type\":\"invconv\"},{\"type\":\"channel_actnorm\"}]}",
                  0, DMAX},
    [FA_CNF] = {"{\"dim\":3,\"preset\":\"ffjord\",\"depth\":2,\"hidden\":[4],\"rtol\":1e-3,"
                "\"atol\":1e-3}"},
};

/* One full life of a flow; everything it allocates is freed on every path.
 * Returns 0 or the first error. */
static int path(const fa_spec *fs, results *res) {
    const char *spec = fs->spec;
    nf_flow *f = NULL, *g = NULL;
    nf_ws *w = NULL;
    nf_adam opt = {0};
    int have_opt = 0;
    void *blob = NULL;
    char *cfg = NULL;
    nf_model *m = NULL;
    nf_trainer *t = NULL;
    char err[256];
    const int dim = fs->dim ? fs->dim : D;
    nf_real x[N * DMAX], dlogp[N];
    data(x, fs->unit, dim);
    for (int i = 0; i < N; i++) dlogp[i] = (nf_real)(-1.0 / N);

    int rc = nf_flow_create(spec, &f, err, sizeof err);
    if (!rc) {
        nf_flow_init(f, 3);
        rc = nf_ws_create(f, 32, &w);
    }
    if (!rc) rc = nf_flow_data_init(f, w, x, NULL, 32);
    if (!rc) rc = nf_adam_init(&opt, NF_OPT_ADAM, nf_flow_num_params(f), 0);
    if (!rc) {
        have_opt = 1;
        nf_flow_zero_grad(f);
        rc = nf_flow_log_prob_grad(f, w, x, NULL, 32, 1, dlogp, NULL, NULL, NULL);
    }
    if (!rc) {
        nf_adam_step(&opt, nf_flow_params(f), nf_flow_grad(f), 1e-2);
        nf_flow_constrain(f);
        rc = nf_flow_log_prob(f, w, x, NULL, N, res->lp);
    }
    if (!rc) rc = nf_flow_sample(f, w, N, 0.8, 5, NULL, res->xs, NULL);
    /* the model file round trip: header JSON, params blob, parse, re-create */
    size_t len = 0;
    if (!rc) rc = nf_model_save(f, NULL, NULL, "2024-01-01T00:00:00Z", &blob, &len);
    if (!rc) rc = nf_model_load(blob, len, &m, err, sizeof err);
    if (!rc) {
        nf_ws_free(w);
        w = NULL;
        rc = nf_ws_create(m->flow, 16, &w);
    }
    if (!rc) rc = nf_model_log_prob(m, w, x, NULL, N, res->lp2);
    /* the canonical config, and a short training run on a copy */
    if (!rc) rc = (cfg = nf_flow_config_json(f)) ? 0 : NF_ENOMEM;
    if (!rc) rc = nf_flow_create(cfg, &g, err, sizeof err);
    if (!rc) {
        nf_flow_init(g, 4);
        nf_train_config c;
        nf_train_config_default(&c);
        c.epochs = 2;
        c.batch_size = 16;
        c.log_every = 0;
        c.val_every = 2;
        rc = nf_trainer_create(g, &c, x, 48, x + 48 * dim, 16, &t, err, sizeof err);
    }
    if (!rc) rc = nf_trainer_run(t, NULL);
    if (!rc) {
        void *st = NULL;
        size_t sl = 0;
        rc = nf_trainer_save_state(t, &st, &sl);
        if (!rc) rc = nf_trainer_load_state(t, st, sl);
        nf_free(st);
    }
    if (!rc) {
        nf_train_metrics mt;
        nf_trainer_metrics(t, &mt);
        res->val = mt.best_val_loss;
    }
    nf_trainer_free(t);
    nf_flow_free(g);
    nf_free(cfg);
    nf_model_free(m);
    nf_free(blob);
    if (have_opt) nf_adam_free(&opt);
    nf_ws_free(w);
    nf_flow_free(f);
    return rc;
}

static int same(const results *a, const results *b) {
    return !memcmp(a->lp, b->lp, sizeof a->lp) && !memcmp(a->xs, b->xs, sizeof a->xs) &&
           !memcmp(a->lp2, b->lp2, sizeof a->lp2) &&
           (a->val == b->val || (a->val != a->val && b->val != b->val));
}

static void run_all_k(const fa_spec *fs) {
    const char *spec = fs->spec;
    results ref, res;
    memset(&ref, 0, sizeof ref);
    hooks_on(0);
    int rc = path(fs, &ref);
    long total = fa_count, live = fa_live;
    hooks_off();
    CHECK_MSG(rc == 0, "%s: reference run: %s", spec, nf_strerror(rc));
    CHECK_MSG(live == 0, "%s: reference run leaves %ld blocks", spec, live);
    REQUIRE(rc == 0 && total > 0);
    int bad = 0;
    long nomem = 0, other = 0, absorbed = 0;
    long k0 = getenv("FLOWD_ALLOC_K") ? atol(getenv("FLOWD_ALLOC_K")) : 1; /* debugging */
    for (long k = k0; k <= total + 1 && bad < 5; k++) {
        memset(&res, 0, sizeof res);
        hooks_on(k);
        rc = path(fs, &res);
        long failed = fa_failed;
        live = fa_live;
        hooks_off();
        if (live != 0) {
            bad++;
            CHECK_MSG(0, "%s: failing allocation %ld of %ld: %ld blocks leaked (rc %d)", spec, k,
                      total, live, rc);
        }
        if (!failed) {
            CHECK_MSG(k == total + 1, "%s: allocation %ld of %ld never reached", spec, k, total);
            CHECK(rc == 0 && same(&res, &ref));
        } else if (rc == 0) {
            absorbed++;
            /* a failure absorbed on purpose must not change any result */
            if (!same(&res, &ref)) {
                bad++;
                CHECK_MSG(0, "%s: failing allocation %ld of %ld: success with different results",
                          spec, k, total);
            }
        } else if (rc == NF_ENOMEM) {
            nomem++;
        } else {
            /* cJSON cannot tell a failed allocation from bad JSON, so an
             * allocation inside a parse surfaces as NF_EINVAL / NF_EFORMAT:
             * still an error, returned cleanly */
            other++;
            if (other <= 3)
                fprintf(stderr, "    allocation %ld of %ld: %s\n", k, total, nf_strerror(rc));
        }
    }
    fprintf(stderr, "    %s: %ld allocations, each failed once: %ld NF_ENOMEM, %ld other errors, %ld absorbed\n",
            spec, total, nomem, other, absorbed);
}

TEST(alloc_fail_covers_every_layer_type) {
    for (const nf_layer_kind *lk = nf_layer_kinds; lk->type; lk++) {
        int found = 0;
        for (int s = 0; s < FA_NSPECS && !found; s++) {
            nf_flow *f = NULL;
            char err[256];
            int rc = nf_flow_create(fa_specs[s].spec, &f, err, sizeof err);
            CHECK_MSG(rc == 0, "%s: %s", fa_specs[s].spec, err);
            for (int k = 0; !rc && k < f->nlayers; k++)
                if (!strcmp(f->layers[k].ops->type, lk->type)) found = 1;
            nf_flow_free(f);
        }
        CHECK_MSG(found, "layer type %s is in no spec of fa_specs (test_alloc_fail.c)", lk->type);
    }
}

TEST_T(alloc_fail_coupling_actnorm_lu, 300) { run_all_k(&fa_specs[FA_COUPLING]); }

TEST_T(alloc_fail_autoregressive_spline, 300) { run_all_k(&fa_specs[FA_AUTOREGRESSIVE]); }

TEST_T(alloc_fail_presets, 300) {
    run_all_k(&fa_specs[FA_REALNVP]);
    run_all_k(&fa_specs[FA_NSF]);
}

TEST_T(alloc_fail_logit_unit_data, 300) { run_all_k(&fa_specs[FA_LOGIT]); }

TEST_T(alloc_fail_conv_coupling, 300) { run_all_k(&fa_specs[FA_CONV]); }

TEST_T(alloc_fail_image, 300) { run_all_k(&fa_specs[FA_IMAGE]); }

TEST_T(alloc_fail_cnf, 300) { run_all_k(&fa_specs[FA_CNF]); }
/* nf_model_evaluate (core/evaluate.c): the likelihood, a workspace, the
 * samples, the subsamples, the MMD and nearest-neighbour blocks.  Every
 * failing allocation is NF_ENOMEM with nothing leaked; the run that fails
 * none gives the reference figures. */
static int eval_same(const nf_eval_result *a, const nf_eval_result *b) {
    return a->mean_log_prob == b->mean_log_prob && a->nonfinite == b->nonfinite &&
           a->mmd2 == b->mmd2 && a->mmd_bandwidth == b->mmd_bandwidth && a->nn_ratio == b->nn_ratio;
}

TEST_T(alloc_fail_evaluate, 120) {
    nf_flow *f = NULL;
    char err[256];
    REQUIRE(nf_flow_create("{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}", &f, err,
                           sizeof err) == 0);
    void *buf = NULL;
    size_t len = 0;
    nf_model *m = NULL;
    REQUIRE(nf_model_save(f, NULL, NULL, NULL, &buf, &len) == 0);
    REQUIRE(nf_model_load(buf, len, &m, err, sizeof err) == 0);
    free(buf);
    nf_flow_free(f);
    nf_real x[N * D];
    data(x, 0, D);
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    o.samples = 40;
    nf_eval_result ref, r;
    hooks_on(0);
    int rc = nf_model_evaluate(m, x, N, x + 8 * D, N - 8, &o, &ref);
    long total = fa_count;
    hooks_off();
    REQUIRE(rc == 0 && total > 0 && isfinite(ref.mmd2) && isfinite(ref.nn_sample_mean));
    for (long k = 1; k <= total + 1; k++) {
        hooks_on(k);
        rc = nf_model_evaluate(m, x, N, x + 8 * D, N - 8, &o, &r);
        long failed = fa_failed, live = fa_live;
        hooks_off();
        CHECK_MSG(live == 0, "allocation %ld of %ld: %ld blocks leaked", k, total, live);
        if (failed) CHECK_MSG(rc == NF_ENOMEM, "allocation %ld of %ld: %s", k, total, nf_strerror(rc));
        else CHECK(k == total + 1 && rc == 0 && eval_same(&r, &ref));
    }
    nf_model_free(m);
}

/* The hook costs one branch per allocation, and the per-batch calls make
 * none: log_prob, sample, log_prob_grad and the Adam step run on the
 * workspace alone. */
TEST(alloc_hot_path_allocates_nothing) {
    const char *spec = "{\"dim\":3,\"preset\":\"nsf\",\"depth\":2,\"hidden\":[8],\"bins\":4}";
    nf_flow *f = NULL;
    nf_ws *w = NULL;
    nf_adam opt;
    char err[256];
    REQUIRE(nf_flow_create(spec, &f, err, sizeof err) == 0);
    REQUIRE(nf_ws_create(f, 32, &w) == 0);
    REQUIRE(nf_adam_init(&opt, NF_OPT_ADAM, nf_flow_num_params(f), 0) == 0);
    nf_real x[N * D], lp[N], dl[32], xs[N * D];
    data(x, 0, D);
    for (int i = 0; i < 32; i++) dl[i] = (nf_real)(-1.0 / 32);
    REQUIRE(nf_flow_data_init(f, w, x, NULL, 32) == 0);
    REQUIRE(nf_flow_zero_grad(f) == 0); /* the gradient buffer: allocated once, on first use */
    hooks_on(0);
    for (int rep = 0; rep < 3; rep++) {
        CHECK(nf_flow_log_prob(f, w, x, NULL, N, lp) == 0);
        nf_flow_zero_grad(f);
        CHECK(nf_flow_log_prob_grad(f, w, x, NULL, 32, 1, dl, NULL, NULL, NULL) == 0);
        nf_adam_step(&opt, nf_flow_params(f), nf_flow_grad(f), 1e-3);
        CHECK(nf_flow_sample(f, w, N, 1.0, 3, NULL, xs, NULL) == 0);
    }
    long n = fa_count;
    hooks_off();
    CHECK_MSG(n == 0, "%ld allocations in the per-batch calls", n);
    nf_adam_free(&opt);
    nf_ws_free(w);
    nf_flow_free(f);
}

/* A dequantized model (uniform, or variational with its q) loaded from its
 * file; NULL on failure. */
static nf_model *dequantized_model(int variational) {
    nf_flow *f = NULL, *q = NULL;
    nf_model *m = NULL;
    void *blob = NULL;
    size_t len = 0;
    char err[256];
    cJSON *pp = cJSON_Parse(variational
                                ? "{\"dequantize\":{\"kind\":\"variational\",\"levels\":16}}"
                                : "{\"dequantize\":{\"kind\":\"uniform\",\"levels\":16}}");
    int rc = nf_flow_create("{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8],\"seed\":2}",
                            &f, err, sizeof err);
    if (!rc && variational)
        rc = nf_flow_create("{\"dim\":3,\"context_dim\":3,\"preset\":\"realnvp\",\"depth\":2,"
                            "\"hidden\":[8],\"seed\":4}", &q, err, sizeof err);
    if (!rc) rc = nf_model_save_ex(f, q, pp, NULL, NULL, &blob, &len);
    if (!rc) rc = nf_model_load(blob, len, &m, err, sizeof err);
    cJSON_Delete(pp);
    free(blob);
    nf_flow_free(f);
    nf_flow_free(q);
    return rc ? NULL : m;
}

/* Scoring a dequantized model allocates nothing per call: on a workspace
 * from nf_model_ws_create nothing at all, on a plain one only on its first
 * dequantized call (the state it then keeps); the scores agree.  Failed
 * allocations in both leave nothing live. */
TEST(alloc_dequantized_scoring_allocates_nothing) {
    nf_real x[N * D];
    for (int i = 0; i < N * D; i++) x[i] = (nf_real)((i * 7) % 16);
    for (int variational = 0; variational < 2; variational++) {
        nf_model *m = dequantized_model(variational);
        REQUIRE(m && m->dequantize && (m->dequantizer != NULL) == variational);
        nf_ws *wm = NULL, *wp = NULL;
        REQUIRE(nf_model_ws_create(m, 16, &wm) == 0);
        REQUIRE(nf_ws_create(m->flow, 16, &wp) == 0);
        nf_real lm[N], lp[N];
        hooks_on(0);
        for (int rep = 0; rep < 3; rep++) CHECK(nf_model_log_prob(m, wm, x, NULL, N, lm) == 0);
        long n = fa_count;
        hooks_off();
        CHECK_MSG(n == 0, "%ld allocations scoring (variational %d)", n, variational);
        CHECK(nf_model_log_prob(m, wp, x, NULL, N, lp) == 0); /* attaches the state */
        hooks_on(0);
        for (int rep = 0; rep < 3; rep++) CHECK(nf_model_log_prob(m, wp, x, NULL, N, lp) == 0);
        n = fa_count;
        hooks_off();
        CHECK_MSG(n == 0, "%ld allocations scoring on a plain workspace (variational %d)", n,
                  variational);
        for (int i = 0; i < N; i++) CHECK_CLOSE(lm[i], lp[i], 1e-5, 1e-5);
        nf_ws_free(wp);
        nf_ws_free(wm);
        for (long k = 1;; k++) {
            nf_ws *w = NULL, *w2 = NULL;
            hooks_on(k);
            int rc = nf_model_ws_create(m, 16, &w);
            if (!rc) rc = nf_model_log_prob(m, w, x, NULL, N, lp);
            if (!nf_ws_create(m->flow, 8, &w2)) nf_model_log_prob(m, w2, x, NULL, N, lp);
            nf_ws_free(w);
            nf_ws_free(w2);
            long live = fa_live, failed = fa_failed;
            hooks_off();
            CHECK_MSG(live == 0, "k=%ld: %ld blocks live", k, live);
            if (!failed || k > 200) break;
        }
        nf_model_free(m);
    }
}
