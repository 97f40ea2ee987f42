/* test_train.c: the training engine: fits, resumes, stops, guards. */
#include "../test.h"
#include "layercheck.h"
#include "../../core/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static nf_flow *make(const char *spec) {
    nf_flow *f = NULL;
    char err[300] = "";
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "nf_flow_create: %s", err);
    return f;
}

/* a default configuration with the few fields short tests set */
static nf_train_config small_cfg(int epochs, int batch, int log_every, uint64_t seed) {
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = epochs;
    c.batch_size = batch;
    c.log_every = log_every;
    c.seed = seed;
    return c;
}

/* rows of N(0, A A^T) with A lower triangular */
static nf_real *gaussian_rows(int n, uint64_t seed, double *entropy) {
    static const double A[3][3] = {{1.5, 0, 0}, {0.8, 0.6, 0}, {-0.5, 0.9, 0.3}};
    nf_real *x = malloc((size_t)n * 3 * sizeof *x);
    nf_rng r;
    nf_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        double e[3] = {nf_rng_normal(&r), nf_rng_normal(&r), nf_rng_normal(&r)};
        for (int a = 0; a < 3; a++) {
            double s = 0;
            for (int b = 0; b < 3; b++) s += A[a][b] * e[b];
            x[i * 3 + a] = (nf_real)s;
        }
    }
    /* H = 0.5 log det(2 pi e Sigma) = 3/2 log(2 pi e) + log|det A| */
    *entropy = 1.5 * log(2 * M_PI * M_E) + log(1.5 * 0.6 * 0.3);
    return x;
}

static void gaussian_entropy(int threads) {
    double H;
    nf_real *tr = gaussian_rows(8000, 1, &H), *te = gaussian_rows(4000, 2, &H);
    nf_flow *f = make("{\"dim\":3,\"preset\":\"maf\",\"depth\":2,\"hidden\":[32]}");
    REQUIRE(f);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 30;
    c.batch_size = 256;
    c.lr = 3e-3;
    c.schedule = NF_SCHED_COSINE;
    c.log_every = 0;
    c.threads = threads;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, tr, 7000, tr + 7000 * 3, 1000, &t, err, sizeof err) == 0);
    CHECK(nf_trainer_run(t, NULL) == 0);
    double nll = nf_eval_nll(f, te, 4000, 0, 0);
    /* a maximum-likelihood fit cannot beat the entropy on fresh data by more
     * than sampling noise (sd ~ sqrt(3/2)/sqrt(4000) ~ 0.02), and should get
     * within 0.05 nats of it */
    CHECK_MSG(nll > H - 0.06 && nll < H + 0.05, "%d thread(s): test NLL %.4f, entropy %.4f",
              threads, nll, H);
    nf_trainer_free(t);
    nf_flow_free(f);
    free(tr);
    free(te);
}

TEST_T(train_gaussian_reaches_entropy, 300) { gaussian_entropy(1); }
/* the same fit with the batch split over two threads (nf_ws_create_threads) */
TEST_T(train_gaussian_reaches_entropy_2_threads, 300) { gaussian_entropy(2); }

typedef struct {
    int reports, vals;
    double last_val;
    double lrs[64];
    int nlr;
} rec;

static void on_progress(void *u, const nf_train_metrics *m) {
    rec *r = u;
    r->reports++;
    if (m->is_validation) {
        r->vals++;
        r->last_val = m->val_loss;
        if (r->nlr < 64) r->lrs[r->nlr++] = m->lr;
    }
}

/* resume equivalence: N steps straight equal N/2 steps, state blob, fresh
 * trainer and flow, N/2 steps.  Float build only: the optimizer blob keeps
 * its moments as float32 (the product's precision), so the double build's
 * resume is close but not bitwise. */
typedef struct {
    void *blob;
    size_t len;
    int64_t at;
    int64_t stop_at;
} ckpt;

static int on_ckpt(void *u, void *state, size_t len, int64_t step) {
    ckpt *c = u;
    if (step == c->at) {
        c->blob = malloc(len);
        memcpy(c->blob, state, len);
        c->len = len;
    }
    return step == c->stop_at ? NF_ECANCELLED : 0;
}

/* hflip: the same with each training row mirrored with probability 1/2
 * (the flow's shape [1,1,2] swaps the two columns); the flips are drawn
 * again on resume, and they change the run */
static void resume_bit_identical(int threads, int hflip) {
#ifdef NF_DOUBLE
    return;
#endif
    const char *spec = hflip ? "{\"shape\":[1,1,2],\"preset\":\"glow\",\"depth\":2,\"hidden\":[16],\"base\":\"diag_normal\"}"
                             : "{\"dim\":2,\"preset\":\"glow\",\"depth\":2,\"hidden\":[16],\"base\":\"diag_normal\"}";
    double H;
    nf_real *x = gaussian_rows(3000, 5, &H), *x2 = malloc(2000 * 2 * sizeof *x2);
    for (int i = 0; i < 2000; i++) {
        x2[2 * i] = x[3 * i];
        x2[2 * i + 1] = x[3 * i + 2];
    }
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 4;
    c.batch_size = 64;
    c.lr = 2e-3;
    c.schedule = NF_SCHED_COSINE;
    c.warmup_steps = 10;
    c.clip_grad_norm = 5;
    c.optimizer = NF_OPT_ADAMW;
    c.weight_decay = 1e-3;
    c.dequantize = 0;
    c.es_patience = 10;
    c.log_every = 0;
    c.seed = 11;
    c.threads = threads;
    c.hflip = hflip;
    /* straight run */
    nf_flow *a = make(spec);
    nf_trainer *ta;
    char err[200];
    REQUIRE(nf_trainer_create(a, &c, x2, 1700, x2 + 1700 * 2, 300, &ta, err, sizeof err) == 0);
    CHECK(nf_trainer_run(ta, NULL) == 0);
    /* interrupted at step 37 (mid-epoch: 26 steps per epoch) */
    nf_flow *b = make(spec);
    nf_trainer *tb;
    REQUIRE(nf_trainer_create(b, &c, x2, 1700, x2 + 1700 * 2, 300, &tb, err, sizeof err) == 0);
    ckpt k = {.at = 37, .stop_at = 37};
    nf_train_hooks h = {.user = &k, .checkpoint = on_ckpt, .checkpoint_every = 1};
    CHECK(nf_trainer_run(tb, &h) == NF_ECANCELLED);
    REQUIRE(k.blob);
    nf_trainer_free(tb);
    nf_flow_free(b);
    /* resume in a fresh flow and trainer */
    nf_flow *d = make(spec);
    nf_trainer *td;
    REQUIRE(nf_trainer_create(d, &c, x2, 1700, x2 + 1700 * 2, 300, &td, err, sizeof err) == 0);
    CHECK(nf_trainer_load_state(td, k.blob, k.len) == 0);
    CHECK(nf_trainer_run(td, NULL) == 0);
    CHECK(nf_flow_num_params(a) == nf_flow_num_params(d));
    CHECK(memcmp(nf_flow_params(a), nf_flow_params(d), nf_flow_num_params(a) * sizeof(nf_real)) == 0);
    if (hflip) { /* the flips changed the run: without them the parameters differ */
        nf_train_config c0 = c;
        c0.hflip = 0;
        nf_flow *e = make(spec);
        nf_trainer *te;
        REQUIRE(nf_trainer_create(e, &c0, x2, 1700, x2 + 1700 * 2, 300, &te, err, sizeof err) == 0);
        CHECK(nf_trainer_run(te, NULL) == 0);
        CHECK(memcmp(nf_flow_params(a), nf_flow_params(e), nf_flow_num_params(a) * sizeof(nf_real)) != 0);
        /* and a state of the run without flips does not resume one with them */
        void *blob;
        size_t len;
        REQUIRE(nf_trainer_save_state(te, &blob, &len) == 0);
        CHECK(nf_trainer_load_state(td, blob, len) == NF_EFORMAT);
        free(blob);
        nf_trainer_free(te);
        nf_flow_free(e);
    }
    /* a corrupted or foreign state blob is refused */
    ((unsigned char *)k.blob)[k.len / 2] ^= 1;
    CHECK(nf_trainer_load_state(td, k.blob, k.len) == NF_ECORRUPT);
    CHECK(nf_trainer_load_state(td, k.blob, k.len - 1) == NF_ECORRUPT);
    CHECK(nf_trainer_load_state(td, k.blob, 10) == NF_EFORMAT);
    free(k.blob);
    nf_trainer_free(ta);
    nf_trainer_free(td);
    nf_flow_free(a);
    nf_flow_free(d);
    free(x);
    free(x2);
}

TEST_T(train_resume_is_bit_identical, 300) { resume_bit_identical(1, 0); }
/* with the batch split over three threads: still bit for bit */
TEST_T(train_resume_is_bit_identical_3_threads, 300) { resume_bit_identical(3, 0); }
/* with hflip augmentation */
TEST_T(train_resume_is_bit_identical_hflip, 300) { resume_bit_identical(1, 1); }

/* ---- hflip augmentation -------------------------------------------------------------- */
/* rows of shape (2,2,3): value(b, c, i, j) = 100 b + 10 (3 c + i) + j; each
 * row comes back as it was or mirrored in every channel and image row, and
 * about half are mirrored */
TEST(train_hflip_mirrors_rows) {
    enum { B = 1000, C = 2, H = 2, W = 3, D = C * H * W };
    static const int shape[3] = {C, H, W};
    nf_real *x = malloc((size_t)B * D * sizeof *x);
    REQUIRE(x);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < D; k++) x[b * D + k] = (nf_real)(100 * (b % 50) + 10 * (k / W) + k % W);
    nf_rng r;
    nf_rng_seed(&r, 5);
    int n = nf_augment_hflip(x, B, shape, &r), seen = 0;
    CHECK_MSG(n > 450 && n < 550, "%d of %d rows mirrored", n, B);
    for (int b = 0; b < B; b++) {
        int same = 1, mirrored = 1;
        for (int ci = 0; ci < C * H; ci++)
            for (int j = 0; j < W; j++) {
                nf_real v = x[b * D + ci * W + j];
                same &= v == (nf_real)(100 * (b % 50) + 10 * ci + j);
                mirrored &= v == (nf_real)(100 * (b % 50) + 10 * ci + (W - 1 - j));
            }
        CHECK_MSG(same || mirrored, "row %d is neither itself nor its mirror image", b);
        seen += mirrored;
    }
    CHECK_EQ_INT(seen, n);
    /* known positions: channel 1, image row 0 (index 2W..3W-1) of a mirrored row is 22, 21, 20 */
    int b = 0;
    while (b < B && x[b * D + 2 * W] == 20 + 100 * (b % 50)) b++; /* the first mirrored row */
    REQUIRE(b < B);
    CHECK(x[b * D + 2 * W] == 100 * (b % 50) + 22 && x[b * D + 2 * W + 1] == 100 * (b % 50) + 21 &&
          x[b * D + 2 * W + 2] == 100 * (b % 50) + 20);
    CHECK(x[b * D + 0] == 100 * (b % 50) + 2 && x[b * D + 5] == 100 * (b % 50) + 10); /* channel 0 too */
    /* the same seed draws the same flips; W = 1 changes nothing */
    nf_rng_seed(&r, 5);
    CHECK_EQ_INT(nf_augment_hflip(x, B, shape, &r), n);
    for (int k = 0; k < B * D; k++) CHECK(x[k] == (nf_real)(100 * ((k / D) % 50) + 10 * ((k % D) / W) + k % W));
    static const int one[3] = {1, 4, 1};
    nf_real y[4] = {1, 2, 3, 4};
    nf_rng_seed(&r, 1);
    nf_augment_hflip(y, 1, one, &r);
    CHECK(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[3] == 4);
    free(x);
}

/* the batches the trainer sees: images (1,2,4) whose left half is 0 and
 * right half 1 come in both orientations with hflip, one without; the
 * training rows themselves are never changed */
typedef struct { long orig, mirrored, other; } orient;
static void on_batch(void *u, const nf_real *x, int B, int D, int64_t step) {
    orient *o = u;
    for (int b = 0; b < B; b++) {
        const nf_real *row = x + (size_t)b * D;
        int l = 1, m = 1;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 4; j++) {
                l &= row[i * 4 + j] == (j < 2 ? 0 : 1);
                m &= row[i * 4 + j] == (j < 2 ? 1 : 0);
            }
        if (l) o->orig++;
        else if (m) o->mirrored++;
        else o->other++;
    }
}

TEST_T(train_hflip_batches_see_both_orientations, 120) {
    enum { N = 400, D = 8 };
    nf_real *x = malloc((size_t)N * D * sizeof *x), *keep = malloc((size_t)N * D * sizeof *keep);
    REQUIRE(x && keep);
    for (int i = 0; i < N * D; i++) x[i] = (nf_real)((i % 4) >= 2);
    memcpy(keep, x, (size_t)N * D * sizeof *x);
    const char *spec = "{\"shape\":[1,2,4],\"layers\":[{\"type\":\"affine_coupling\",\"hidden\":[8]}]}";
    for (int hflip = 0; hflip < 2; hflip++) {
        nf_flow *f = make(spec);
        REQUIRE(f);
        nf_train_config c = small_cfg(2, 50, 0, 3);
        c.hflip = hflip;
        nf_trainer *t;
        char err[200];
        REQUIRE(nf_trainer_create(f, &c, x, 300, x + 300 * D, 100, &t, err, sizeof err) == 0);
        orient o = {0, 0, 0};
        nf_train_hooks h = {.user = &o, .batch = on_batch};
        CHECK(nf_trainer_run(t, &h) == 0);
        CHECK_EQ_INT(o.orig + o.mirrored + o.other, 2 * 300);
        CHECK_EQ_INT(o.other, 0);
        if (hflip) CHECK_MSG(o.orig > 200 && o.mirrored > 200, "%ld as stored, %ld mirrored", o.orig, o.mirrored);
        else CHECK_EQ_INT(o.mirrored, 0);
        CHECK(memcmp(x, keep, (size_t)N * D * sizeof *x) == 0);
        nf_trainer_free(t);
        nf_flow_free(f);
    }
    /* a flow without a shape cannot mirror: refused */
    nf_flow *f = make("{\"dim\":8,\"layers\":[{\"type\":\"actnorm\"}]}");
    nf_train_config c;
    nf_train_config_default(&c);
    c.hflip = 1;
    nf_trainer *t = NULL;
    char err[200] = "";
    CHECK(nf_trainer_create(f, &c, x, 300, NULL, 0, &t, err, sizeof err) == NF_EINVAL && t == NULL);
    CHECK_MSG(strstr(err, "hflip") && strstr(err, "shape"), "%s", err);
    nf_flow_free(f);
    free(x);
    free(keep);
}

/* Early stopping keeps the best: train on data, validate on a shifted set
 * so validation worsens as training fits; the final parameters give the
 * best validation loss recorded. */
TEST_T(train_early_stopping_restores_best, 300) {
    double H;
    nf_real *tr = gaussian_rows(2000, 3, &H), *va = gaussian_rows(300, 4, &H);
    for (int i = 0; i < 300 * 3; i++) va[i] = va[i] * 0.3f + 2.0f;
    nf_flow *f = make("{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]}");
    REQUIRE(f);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 200;
    c.batch_size = 200;
    c.lr = 5e-3;
    c.es_patience = 3;
    c.es_min_delta = 0;
    c.log_every = 0;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, tr, 2000, va, 300, &t, err, sizeof err) == 0);
    rec r = {0};
    nf_train_hooks h = {.user = &r, .progress = on_progress};
    CHECK(nf_trainer_run(t, &h) == 0);
    nf_train_metrics m;
    nf_trainer_metrics(t, &m);
    CHECK_MSG(m.epoch < 200, "early stopping never fired (epoch %d)", m.epoch);
    CHECK(r.vals == m.epoch);
    double now = nf_eval_nll(f, va, 300, 0, 0);
    CHECK_CLOSE(now, m.best_val_loss, 1e-4, 1e-5);
    CHECK(m.best_val_loss < r.last_val); /* the last validation was worse */
    nf_trainer_free(t);
    nf_flow_free(f);
    free(tr);
    free(va);
}

/* plateau: with validation that cannot improve, the rate halves every
 * patience+1 evaluations */
TEST_T(train_plateau_lowers_lr, 120) {
    double H;
    nf_real *tr = gaussian_rows(512, 3, &H), *va = gaussian_rows(64, 4, &H);
    nf_flow *f = make("{\"dim\":3,\"layers\":[{\"type\":\"actnorm\",\"data_init\":false}]}");
    REQUIRE(f);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 12;
    c.batch_size = 512;
    c.lr = 1e-12; /* effectively frozen: validation never improves past min_delta */
    c.schedule = NF_SCHED_PLATEAU;
    c.plateau_patience = 2;
    c.plateau_factor = 0.5;
    c.es_min_delta = 1e-3;
    c.log_every = 1;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, tr, 512, va, 64, &t, err, sizeof err) == 0);
    rec r = {0};
    nf_train_hooks h = {.user = &r, .progress = on_progress};
    CHECK(nf_trainer_run(t, &h) == 0);
    REQUIRE(r.nlr == 12);
    /* eval 1 sets the reference; evals 2,3,4 are bad: the third bad one
     * (> patience) halves the rate, which the step after eval 4 uses */
    CHECK_CLOSE(r.lrs[3], 1e-12, 1e-20, 1e-9);
    CHECK_CLOSE(r.lrs[4], 0.5e-12, 1e-20, 1e-9);
    CHECK_CLOSE(r.lrs[7], 0.25e-12, 1e-20, 1e-9);
    nf_trainer_free(t);
    nf_flow_free(f);
    free(tr);
    free(va);
}

typedef struct { double lr[200]; int n; } lrs;
static void lr_cb(void *u, const nf_train_metrics *m) {
    lrs *l = u;
    if (!m->is_validation && l->n < 200) l->lr[l->n++] = m->lr;
}

TEST(train_warmup_and_cosine_schedule) {
    double H;
    nf_real *tr = gaussian_rows(100, 3, &H);
    nf_flow *f = make("{\"dim\":3,\"layers\":[{\"type\":\"actnorm\",\"data_init\":false}]}");
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 20;
    c.batch_size = 10; /* 10 steps/epoch, 200 steps */
    c.lr = 1e-2;
    c.lr_min = 1e-4;
    c.warmup_steps = 20;
    c.schedule = NF_SCHED_COSINE;
    c.log_every = 1;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, tr, 100, NULL, 0, &t, err, sizeof err) == 0);
    lrs L = {{0}, 0};
    nf_train_hooks h = {.user = &L, .progress = lr_cb};
    CHECK(nf_trainer_run(t, &h) == 0);
    REQUIRE(L.n == 200);
    CHECK_CLOSE(L.lr[0], 1e-2 / 20, 1e-12, 1e-9);
    CHECK_CLOSE(L.lr[19], 1e-2, 1e-12, 1e-9);
    CHECK_CLOSE(L.lr[20], 1e-2, 1e-12, 1e-9);
    CHECK_CLOSE(L.lr[110], 1e-4 + (1e-2 - 1e-4) * 0.5, 1e-12, 1e-6);
    CHECK(L.lr[199] < 1e-4 * 1.01);
    nf_trainer_free(t);
    nf_flow_free(f);
    free(tr);
}

/* Float build only: in double precision the same setup grows huge but stays
 * finite, which is the point of the soft clamps. */
TEST_T(train_exploding_lr_stops_cleanly, 120) {
#ifdef NF_DOUBLE
    return;
#endif
    double H;
    nf_real *tr = gaussian_rows(2000, 3, &H);
    for (int i = 0; i < 2000 * 3; i++) tr[i] *= 1000;
    nf_flow *f = make("{\"dim\":3,\"preset\":\"glow\",\"depth\":2,\"hidden\":[32],\"base\":\"diag_normal\"}");
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 50;
    c.batch_size = 100;
    c.lr = 10; /* the largest rate the trainer accepts */
    c.max_bad_batches = 5;
    c.log_every = 0;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, tr, 2000, NULL, 0, &t, err, sizeof err) == 0);
    int rc = nf_trainer_run(t, NULL);
    CHECK_EQ_INT(rc, NF_ENONFINITE);
    CHECK_MSG(strstr(nf_trainer_error(t), "non-finite") != NULL, "message: %s", nf_trainer_error(t));
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) REQUIRE(isfinite(p[i]));
    nf_trainer_free(t);
    nf_flow_free(f);
    free(tr);
}

/* The dequantized NLL under N(0,1) of integer data is analytic:
 *   E[-log N(x+u)] = 0.5 (E x^2 + E x + 1/3) + 0.5 log(2 pi)   per dim. */
TEST(train_dequantized_nll_analytic) {
    int n = 200000;
    nf_real *x = malloc((size_t)n * sizeof *x);
    nf_rng r;
    nf_rng_seed(&r, 1);
    double ex = 0, ex2 = 0;
    for (int i = 0; i < n; i++) {
        int k = (int)(nf_rng_uniform(&r) * 4) - 2; /* uniform on {-2,-1,0,1} */
        x[i] = (nf_real)k;
    }
    for (int k = -2; k <= 1; k++) {
        ex += k / 4.0;
        ex2 += k * k / 4.0;
    }
    nf_flow *f = make("{\"dim\":1,\"layers\":[]}");
    double nll = nf_eval_nll(f, x, n, 1, 3);
    double want = 0.5 * (ex2 + ex + 1.0 / 3) + 0.5 * log(2 * M_PI);
    CHECK_CLOSE(nll, want, 0.01, 0);
    CHECK_CLOSE(nf_bits_per_dim(nll, 1), want / log(2), 0.015, 0);
    nf_flow_free(f);
    free(x);
}

/* Training on uniformly distributed 4-level data: the dequantized bits/dim
 * bounds the true entropy (2 bits) from above and gets near it. */
TEST_T(train_uniform_dequantization_bits_per_dim, 300) {
    int n = 6000, D = 2;
    nf_real *x = malloc((size_t)n * D * sizeof *x);
    nf_rng r;
    nf_rng_seed(&r, 2);
    for (int i = 0; i < n * D; i++) x[i] = (nf_real)(int)(nf_rng_uniform(&r) * 4);
    nf_flow *f = make("{\"dim\":2,\"layers\":[{\"type\":\"elementwise_affine\",\"shift\":[0,0],\"scale\":[4,4]},{\"type\":\"logit\",\"alpha\":0},{\"type\":\"spline_ar\",\"hidden\":[16],\"bins\":12,\"tail_bound\":12},{\"type\":\"permute\"},{\"type\":\"spline_ar\",\"hidden\":[16],\"bins\":12,\"tail_bound\":12}]}");
    REQUIRE(f);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 40;
    c.batch_size = 200;
    c.lr = 5e-3;
    c.schedule = NF_SCHED_COSINE;
    c.dequantize = 1;
    c.levels = 4;
    c.log_every = 0;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, x, 5000, x + 5000 * D, 1000, &t, err, sizeof err) == 0);
    CHECK(nf_trainer_run(t, NULL) == 0);
    nf_train_metrics m;
    nf_trainer_metrics(t, &m);
    CHECK_MSG(m.val_bits_per_dim > 2.0 - 0.01 && m.val_bits_per_dim < 2.02,
              "bits/dim %.4f, entropy 2 bits", m.val_bits_per_dim);
    nf_trainer_free(t);
    nf_flow_free(f);
    free(x);
}

TEST(train_rejects_bad_config) {
    nf_flow *f = make("{\"dim\":2,\"layers\":[]}");
    nf_real x[4] = {0};
    nf_train_config c;
    nf_trainer *t = NULL;
    char err[200];
    nf_train_config_default(&c);
    c.lr = -1;
    CHECK(nf_trainer_create(f, &c, x, 2, NULL, 0, &t, err, sizeof err) == NF_EINVAL);
    nf_train_config_default(&c);
    c.plateau_factor = 1.5;
    CHECK(nf_trainer_create(f, &c, x, 2, NULL, 0, &t, err, sizeof err) == NF_EINVAL);
    nf_train_config_default(&c);
    CHECK(nf_trainer_create(f, &c, x, 0, NULL, 0, &t, err, sizeof err) == NF_EINVAL);
    CHECK(t == NULL);
    nf_flow_free(f);
}

/* a wall-clock budget ends the run like an early stop, keeping the best */
TEST_T(train_time_budget_stops, 120) {
    double H;
    nf_real *tr = gaussian_rows(4000, 3, &H);
    nf_flow *f = make("{\"dim\":3,\"preset\":\"maf\",\"depth\":2,\"hidden\":[64]}");
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 100000;
    c.batch_size = 100;
    c.max_seconds = 0.3;
    c.log_every = 0;
    nf_trainer *t;
    char err[200];
    REQUIRE(nf_trainer_create(f, &c, tr, 3500, tr + 3500 * 3, 500, &t, err, sizeof err) == 0);
    CHECK(nf_trainer_run(t, NULL) == 0);
    nf_train_metrics m;
    nf_trainer_metrics(t, &m);
    CHECK(m.epoch < 100000);
    CHECK(isfinite(m.best_val_loss));
    CHECK_CLOSE(nf_eval_nll(f, tr + 3500 * 3, 500, 0, 0), m.best_val_loss, 1e-4, 1e-5);
    nf_trainer_free(t);
    nf_flow_free(f);
    free(tr);
}

/* a cancelled run with checkpoint_on_cancel saves its exact state: resuming
 * it gives the uninterrupted run's parameters (the daemon's shutdown path) */
typedef struct { volatile int cancel; int64_t at; void *blob; size_t len; } cancel_ctx;
static void cancel_progress(void *u, const nf_train_metrics *m) {
    cancel_ctx *c = u;
    if (m->step >= c->at) c->cancel = 1;
}
static int cancel_ckpt(void *u, void *state, size_t len, int64_t step) {
    cancel_ctx *c = u;
    (void)step;
    free(c->blob);
    c->blob = malloc(len);
    memcpy(c->blob, state, len);
    c->len = len;
    return 0;
}

TEST_T(train_checkpoint_on_cancel_resumes_exactly, 300) {
#ifdef NF_DOUBLE
    return; /* optimizer moments are stored as float32 */
#endif
    const char *spec = "{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]}";
    double H;
    nf_real *x = gaussian_rows(2000, 8, &H);
    nf_train_config c = small_cfg(3, 50, 1, 4);
    nf_flow *a = make(spec), *b = make(spec), *d = make(spec);
    nf_trainer *ta, *tb, *td;
    char err[200];
    REQUIRE(nf_trainer_create(a, &c, x, 1800, x + 1800 * 3, 200, &ta, err, sizeof err) == 0);
    CHECK(nf_trainer_run(ta, NULL) == 0);
    REQUIRE(nf_trainer_create(b, &c, x, 1800, x + 1800 * 3, 200, &tb, err, sizeof err) == 0);
    cancel_ctx cc = {.at = 45};
    nf_train_hooks h = {.user = &cc, .progress = cancel_progress, .cancel = &cc.cancel,
                        .checkpoint = cancel_ckpt, .checkpoint_seconds = 1e9,
                        .checkpoint_on_cancel = 1};
    CHECK(nf_trainer_run(tb, &h) == NF_ECANCELLED);
    REQUIRE(cc.blob);
    REQUIRE(nf_trainer_create(d, &c, x, 1800, x + 1800 * 3, 200, &td, err, sizeof err) == 0);
    CHECK(nf_trainer_load_state(td, cc.blob, cc.len) == 0);
    CHECK(nf_trainer_run(td, NULL) == 0);
    CHECK(memcmp(nf_flow_params(a), nf_flow_params(d), nf_flow_num_params(a) * sizeof(nf_real)) == 0);
    free(cc.blob);
    nf_trainer_free(ta);
    nf_trainer_free(tb);
    nf_trainer_free(td);
    nf_flow_free(a);
    nf_flow_free(b);
    nf_flow_free(d);
    free(x);
}

/* time-based checkpoints ask checkpoint_due and skip when it says no; with
 * checkpoint_takes_state the hook owns the blob (keeps it past the call) */
typedef struct { int asked, granted, calls; void *kept[64]; size_t kept_len[64]; } due_ctx;
static int due_every_other(void *u, double since) {
    due_ctx *c = u;
    CHECK(since >= 1e-9);
    c->asked++;
    return c->asked % 2 == 0 ? (c->granted++, 1) : 0;
}
static int due_keep(void *u, void *state, size_t len, int64_t step) {
    due_ctx *c = u;
    (void)step;
    if (c->calls < 64) c->kept[c->calls] = state, c->kept_len[c->calls] = len;
    else free(state);
    c->calls++;
    return 0;
}

TEST_T(train_checkpoint_due_and_ownership, 120) {
    const char *spec = "{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}";
    double H;
    nf_real *x = gaussian_rows(600, 9, &H);
    nf_train_config c = small_cfg(2, 50, 0, 5);
    nf_flow *a = make(spec), *d = make(spec);
    nf_trainer *ta, *td;
    char err[200];
    REQUIRE(nf_trainer_create(a, &c, x, 500, x + 500 * 3, 100, &ta, err, sizeof err) == 0);
    due_ctx dc = {0};
    nf_train_hooks h = {.user = &dc, .checkpoint = due_keep, .checkpoint_takes_state = 1,
                        .checkpoint_seconds = 1e-9, .checkpoint_due = due_every_other};
    CHECK(nf_trainer_run(ta, &h) == 0);
    /* asked at every step (20 of them); half granted, each one a checkpoint */
    CHECK_EQ_INT(dc.asked, 20);
    CHECK_EQ_INT(dc.granted, 10);
    CHECK_EQ_INT(dc.calls, 10);
    /* the kept blobs are alive and valid after the run: the last one loads */
    REQUIRE(nf_trainer_create(d, &c, x, 500, x + 500 * 3, 100, &td, err, sizeof err) == 0);
    CHECK(nf_trainer_load_state(td, dc.kept[9], dc.kept_len[9]) == 0);
    for (int i = 0; i < dc.calls && i < 64; i++) free(dc.kept[i]);
    /* no checkpoint_due: every due time checkpoints (the old behaviour) */
    due_ctx d2 = {0};
    nf_train_hooks h2 = {.user = &d2, .checkpoint = due_keep, .checkpoint_takes_state = 1,
                         .checkpoint_seconds = 1e-9};
    nf_trainer *tb;
    nf_flow *b = make(spec);
    REQUIRE(nf_trainer_create(b, &c, x, 500, x + 500 * 3, 100, &tb, err, sizeof err) == 0);
    CHECK(nf_trainer_run(tb, &h2) == 0);
    CHECK_EQ_INT(d2.calls, 20);
    for (int i = 0; i < d2.calls && i < 64; i++) free(d2.kept[i]);
    nf_trainer_free(ta);
    nf_trainer_free(tb);
    nf_trainer_free(td);
    nf_flow_free(a);
    nf_flow_free(b);
    nf_flow_free(d);
    free(x);
}

/* ---- pacing (nf_ws_set_pace, nf_train_hooks.pace) ---- */
typedef struct {
    int calls;   /* atomic: threads call at once */
    int bad;     /* a work_s that is negative or not finite */
    int sleep_us;
} pace_ctx;

static void pace_count(void *user, double work_s) {
    pace_ctx *p = user;
    __atomic_fetch_add(&p->calls, 1, __ATOMIC_RELAXED);
    if (!(work_s >= 0) || !isfinite(work_s)) __atomic_store_n(&p->bad, 1, __ATOMIC_RELAXED);
    if (p->sleep_us) {
        struct timespec ts = {0, p->sleep_us * 1000L};
        nanosleep(&ts, NULL);
    }
}

/* the hook runs before every layer of a pass but the first, on every
 * thread that has rows, and changes nothing the pass computes */
TEST(ws_pace_between_layers) {
    nf_flow *f = make("{\"dim\":3,\"preset\":\"realnvp\",\"depth\":3,\"hidden\":[8]}");
    REQUIRE(f);
    int L = nf_flow_num_layers(f);
    REQUIRE(L > 2);
    double H;
    nf_real *x = gaussian_rows(64, 4, &H);
    nf_real a[64], b[64 * 3];
    for (int threads = 1; threads <= 2; threads++) {
        nf_ws *w;
        REQUIRE(nf_ws_create_threads(f, 64, threads, &w) == 0);
        CHECK(nf_flow_log_prob(f, w, x, NULL, 64, a) == 0);
        pace_ctx p = {0, 0, 0};
        nf_ws_set_pace(w, pace_count, &p);
        CHECK(nf_flow_log_prob(f, w, x, NULL, 64, b) == 0);
        CHECK_EQ_INT(p.calls, threads * (L - 1));
        CHECK(!memcmp(a, b, sizeof a));
        p.calls = 0; /* a gradient pass: forward and backward */
        nf_flow_zero_grad_ws(f, w);
        nf_real dl[64];
        for (int i = 0; i < 64; i++) dl[i] = -1.0f / 64;
        CHECK(nf_flow_log_prob_grad(f, w, x, NULL, 64, 1, dl, b, NULL, NULL) == 0);
        CHECK_EQ_INT(p.calls, threads * 2 * (L - 1));
        p.calls = 0; /* sampling */
        CHECK(nf_flow_sample(f, w, 64, 1.0, 7, NULL, b, NULL) == 0);
        CHECK_EQ_INT(p.calls, threads * (L - 1));
        CHECK(!p.bad);
        nf_ws_set_pace(w, NULL, NULL); /* off again */
        p.calls = 0;
        CHECK(nf_flow_log_prob(f, w, x, NULL, 64, b) == 0);
        CHECK_EQ_INT(p.calls, 0);
        nf_ws_free(w);
    }
    nf_flow_free(f);
    free(x);
}

/* a trainer with a pace hook that holds every call: the same parameters
 * bit for bit, the hook called between layers on each thread, and the
 * held time reported */
static void pace_run(int threads) {
    const char *spec = "{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}";
    double H;
    nf_real *x = gaussian_rows(600, 9, &H);
    nf_train_config c = small_cfg(2, 50, 0, 5);
    c.threads = threads;
    nf_flow *a = make(spec), *b = make(spec);
    REQUIRE(a && b);
    int L = nf_flow_num_layers(a);
    nf_trainer *ta, *tb;
    char err[200];
    REQUIRE(nf_trainer_create(a, &c, x, 500, x + 500 * 3, 100, &ta, err, sizeof err) == 0);
    REQUIRE(nf_trainer_create(b, &c, x, 500, x + 500 * 3, 100, &tb, err, sizeof err) == 0);
    CHECK(nf_trainer_run(ta, NULL) == 0);
    pace_ctx p = {0, 0, 100};
    nf_train_hooks h = {.user = &p, .pace = pace_count};
    CHECK(nf_trainer_run(tb, &h) == 0);
    CHECK(!memcmp(nf_flow_params(a), nf_flow_params(b), nf_flow_num_params(a) * sizeof(nf_real)));
    /* 20 steps, each a forward and a backward pass on every thread (and
     * validations and sample checks besides) */
    CHECK(p.calls >= 20 * 2 * (L - 1) * threads);
    CHECK(!p.bad);
    nf_train_metrics ma, mb;
    nf_trainer_metrics(ta, &ma);
    nf_trainer_metrics(tb, &mb);
    CHECK(ma.held_seconds == 0);
    /* each call slept at least 100 us, a thread's share of them */
    CHECK_MSG(mb.held_seconds >= 0.9 * p.calls / threads * 100e-6, "held %g s for %d calls", mb.held_seconds,
              p.calls);
    nf_trainer_free(ta);
    nf_trainer_free(tb);
    nf_flow_free(a);
    nf_flow_free(b);
    free(x);
}

TEST_T(train_pace_hook_holds_between_layers, 120) { pace_run(1); }
TEST_T(train_pace_hook_holds_between_layers_2_threads, 120) { pace_run(2); }
