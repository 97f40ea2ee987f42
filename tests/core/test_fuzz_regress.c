/* test_fuzz_regress.c: one test per problem the fuzz harnesses (fuzz/,
 * docs/reliability.md) turned up, feeding the input that triggered it.
 * Blobs are rebuilt here (valid, then patched with a fresh CRC) so the tests
 * hold in the float64 build too. */
#include "../test.h"
#include "../../core/nf.h"
#include "../../core/train.h"

#include <stdint.h>

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_f64(unsigned char *p, double d) {
    uint64_t v;
    memcpy(&v, &d, 8);
    put_u64(p, v);
}
static void fix_crc(unsigned char *p, size_t len) {
    uint32_t c = nf_crc32(p, len - 4);
    for (int i = 0; i < 4; i++) p[len - 4 + i] = (unsigned char)(c >> (8 * i));
}

/* fuzz_flow_spec: {"dim":65536,"layers":[{"type":"lu_linear"}]} asked for a
 * 16 GiB parameter block, a MADE of dim 60000 with hidden [60000] for a
 * 14 GiB mask, a preset with hidden [65536,65536] for 16 GiB per coupling
 * (libFuzzer: out-of-memory).  Now refused before allocating. */
TEST(fuzz_regress_flow_size_caps) {
    static const char *const huge[] = {
        "{\"dim\":65536,\"layers\":[{\"type\":\"lu_linear\"}]}",
        "{\"dim\":60000,\"layers\":[{\"type\":\"maf\",\"hidden\":[60000]}]}",
        "{\"dim\":2,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[65536,65536]}",
        "{\"dim\":65536,\"context_dim\":65536,\"layers\":[{\"type\":\"affine_coupling\","
        "\"hidden\":[65536,65536]}]}",
    };
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        char err[256] = "";
        nf_flow *f = (nf_flow *)1;
        int rc = nf_flow_create(huge[i], &f, err, sizeof err);
        CHECK_MSG(rc == NF_ERANGE, "spec %zu: rc %d (%s)", i, rc, err);
        CHECK(f == NULL);
        CHECK(err[0] != 0);
    }
    /* sizes people use still build: an 784x784 LU (615k parameters) */
    nf_flow *f = NULL;
    char err[256] = "";
    CHECK_EQ_INT(nf_flow_create("{\"dim\":784,\"layers\":[{\"type\":\"lu_linear\"},"
                                "{\"type\":\"affine_coupling\",\"hidden\":[64]}]}",
                                &f, err, sizeof err),
                 0);
    nf_flow_free(f);
}

/* fuzz_params: an optimizer blob with t = INT64_MAX loaded, and the next
 * nf_adam_step overflowed t + 1 (UBSan: signed integer overflow). */
TEST(fuzz_regress_adam_step_count) {
    nf_adam o;
    REQUIRE(nf_adam_init(&o, NF_OPT_ADAM, 3, 0) == 0);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nf_adam_save(&o, &buf, &len) == 0);
    unsigned char *p = buf;
    put_u64(p + 4 + 4 + 4 + 4 * 8 + 8, (uint64_t)INT64_MAX); /* t */
    fix_crc(p, len);
    CHECK_EQ_INT(nf_adam_load(&o, p, len), NF_EFORMAT);
    put_u64(p + 4 + 4 + 4 + 4 * 8 + 8, 1000); /* an ordinary count still loads */
    fix_crc(p, len);
    CHECK_EQ_INT(nf_adam_load(&o, p, len), 0);
    CHECK_EQ_INT(o.t, 1000);
    free(buf);
    nf_adam_free(&o);
}

/* fuzz_train_state: a trainer state with step = INT64_MAX resumed and the
 * next step overflowed (UBSan); negative or NaN learning-rate scales and
 * counters outside what a run can leave were accepted too. */
TEST(fuzz_regress_trainer_state_counters) {
    nf_flow *f = NULL;
    char err[256] = "";
    REQUIRE(nf_flow_create("{\"dim\":2,\"layers\":[{\"type\":\"actnorm\"},"
                           "{\"type\":\"affine_coupling\",\"hidden\":[4]}]}",
                           &f, err, sizeof err) == 0);
    nf_real x[40];
    for (int i = 0; i < 40; i++) x[i] = (nf_real)(((i * 13) % 17) / 8.0 - 1.0);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 2;
    c.batch_size = 4;
    c.log_every = 0;
    nf_trainer *t = NULL;
    REQUIRE(nf_trainer_create(f, &c, x, 16, x + 32, 4, &t, err, sizeof err) == 0);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nf_trainer_save_state(t, &buf, &len) == 0);
    unsigned char *p = buf, *q = malloc(len);
    REQUIRE(q != NULL);
    /* "NFTS" u64 version u64 fingerprint, then u64 step bie skipped epoch done
     * have_best cbad esb plb, then f64 best_val plateau_best lr_scale ... */
    enum { STEP = 20, SKIPPED = 36, DONE = 52, CBAD = 68, LR_SCALE = 20 + 9 * 8 + 16 };
    struct { int off; int is_f64; double v; } bad[] = {
        {STEP, 0, 9.2233720368547758e18}, /* INT64_MAX */
        {STEP, 0, 1e6},                   /* past the run's 8 steps */
        {SKIPPED, 0, 3},                  /* more skipped batches than steps */
        {DONE, 0, 2},
        {CBAD, 0, 1e9},
        {LR_SCALE, 1, -1},
        {LR_SCALE, 1, NAN},
        {LR_SCALE, 1, 1e300},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(q, p, len);
        if (bad[i].is_f64) put_f64(q + bad[i].off, bad[i].v);
        else put_u64(q + bad[i].off, bad[i].v >= 9.2e18 ? (uint64_t)INT64_MAX : (uint64_t)bad[i].v);
        fix_crc(q, len);
        CHECK_MSG(nf_trainer_load_state(t, q, len) == NF_ECORRUPT, "case %zu accepted", i);
    }
    CHECK_EQ_INT(nf_trainer_load_state(t, p, len), 0);
    CHECK_EQ_INT(nf_trainer_run(t, NULL), 0);
    free(q);
    free(buf);
    nf_trainer_free(t);
    nf_flow_free(f);
}

/* a flow under the parameter cap whose workspace would be huge (many
 * parameter-free layers on wide rows) is refused by nf_ws_create, and the
 * trainer says why */
TEST(fuzz_regress_workspace_cap) {
    char spec[64 * 1024];
    size_t k = (size_t)snprintf(spec, sizeof spec, "{\"dim\":65536,\"layers\":[");
    for (int i = 0; i < 400; i++)
        k += (size_t)snprintf(spec + k, sizeof spec - k, "%s{\"type\":\"permute\"}", i ? "," : "");
    snprintf(spec + k, sizeof spec - k, "]}");
    nf_flow *f = NULL;
    char err[300] = "";
    REQUIRE(nf_flow_create(spec, &f, err, sizeof err) == 0);
    nf_ws *w = NULL;
    CHECK(nf_ws_create(f, 256, &w) == NF_ERANGE);
    CHECK(w == NULL);
    CHECK(nf_ws_create(f, 1, &w) == 0); /* one row fits */
    nf_ws_free(w);
    nf_flow_free(f);
}
