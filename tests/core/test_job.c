/* test_job.c: job JSON parsing, preprocessing, the model file, and trained
 * flows on every toy set against a single Gaussian. */
#include "../test.h"
#include "layercheck.h"
#include "../../core/job.h"
#include "../../core/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *s, nf_job *j, char *err, size_t n) {
    return nf_job_parse(s, strlen(s), 0, j, err, n);
}

TEST(job_parse_full_example) {
    const char *s =
        "{\"submission_id\":\"abc\",\"model\":\"m1\",\"dataset\":{\"builtin\":\"moons\",\"n\":2000,"
        "\"seed\":1},\"flow\":{\"preset\":\"nsf\",\"depth\":3,\"hidden\":[32],\"bins\":6},"
        "\"train\":{\"epochs\":7,\"batch_size\":64,\"lr\":0.002,\"optimizer\":\"adamw\","
        "\"weight_decay\":0.01,\"clip_grad_norm\":1.0,\"warmup_steps\":5,\"schedule\":\"cosine\","
        "\"early_stopping\":{\"patience\":4,\"min_delta\":0.001},\"val_fraction\":0.2,\"seed\":9},"
        "\"preprocess\":{\"standardize\":true}}";
    nf_job j;
    char err[300] = "";
    REQUIRE(parse(s, &j, err, sizeof err) == 0);
    CHECK(!strcmp(j.model, "m1"));
    CHECK(!strcmp(j.submission_id, "abc"));
    CHECK(!strcmp(j.builtin, "moons"));
    CHECK_EQ_INT(j.builtin_n, 2000);
    CHECK_EQ_INT(j.train.epochs, 7);
    CHECK_EQ_INT(j.train.batch_size, 64);
    CHECK_EQ_INT(j.train.optimizer, NF_OPT_ADAMW);
    CHECK_EQ_INT(j.train.schedule, NF_SCHED_COSINE);
    CHECK_EQ_INT(j.train.es_patience, 4);
    CHECK_EQ_INT(j.train.warmup_steps, 5);
    CHECK_CLOSE(j.val_fraction, 0.2, 0, 0);
    CHECK_EQ_INT(j.train.seed, 9);
    CHECK_EQ_INT(j.standardize, 1);
    nf_job_free(&j);
}

TEST(job_parse_errors_name_the_field) {
    struct { const char *json, *needle; } bad[] = {
        {"{", "not valid JSON"},
        {"{\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"}}", "model"},
        {"{\"model\":\"../x\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"}}", "model"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"swirl\"},\"flow\":{\"preset\":\"maf\"}}", "dataset.builtin"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"n\":-3},\"flow\":{\"preset\":\"maf\"}}", "dataset"},
        {"{\"model\":\"m\",\"dataset\":{\"path\":\"/etc/passwd\"},\"flow\":{\"preset\":\"maf\"}}", "dataset"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{}}", "flow"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"train\":{\"lr\":\"big\"}}", "train"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"train\":{\"epochs\":0}}", "epochs"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"train\":{\"optimizer\":\"sgd\"}}", "optimizer"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"train\":{\"epoch\":3}}", "epoch"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"preprocess\":{\"dequantize\":{\"kind\":\"fancy\"}}}", "dequantize.kind"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"preprocess\":{\"standardize\":true,\"logit\":{\"alpha\":0.01}}}", "preprocess"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"train\":{\"val_fraction\":0.6,\"test_fraction\":0.4}}", "val_fraction"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\",\"context_dim\":2}}", "context_dim"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nf_job j;
        char err[300] = "";
        int rc = parse(bad[i].json, &j, err, sizeof err);
        CHECK_MSG(rc == NF_EINVAL, "case %zu accepted: %s", i, bad[i].json);
        CHECK_MSG(strstr(err, bad[i].needle) != NULL, "case %zu: message '%s' lacks '%s'", i, err,
                  bad[i].needle);
    }
    /* the offline CLI may name a file */
    nf_job j;
    char err[300];
    const char *p = "{\"model\":\"m\",\"dataset\":{\"path\":\"x.csv\"},\"flow\":{\"preset\":\"maf\"}}";
    CHECK(nf_job_parse(p, strlen(p), 1, &j, err, sizeof err) == 0);
    nf_job_free(&j);
}

/* NLL of test rows under the maximum-likelihood Gaussian of train rows */
static double gaussian_nll(const nf_data *tr, const nf_data *te) {
    double m[2] = {0}, S[3] = {0};
    for (int64_t i = 0; i < tr->n; i++)
        for (int d = 0; d < 2; d++) m[d] += tr->x[i * 2 + d] / (double)tr->n;
    for (int64_t i = 0; i < tr->n; i++) {
        double a = tr->x[i * 2] - m[0], b = tr->x[i * 2 + 1] - m[1];
        S[0] += a * a / tr->n;
        S[1] += a * b / tr->n;
        S[2] += b * b / tr->n;
    }
    double det = S[0] * S[2] - S[1] * S[1], tot = 0;
    for (int64_t i = 0; i < te->n; i++) {
        double a = te->x[i * 2] - m[0], b = te->x[i * 2 + 1] - m[1];
        double q = (S[2] * a * a - 2 * S[1] * a * b + S[0] * b * b) / det;
        tot += 0.5 * q + 0.5 * log(det) + log(2 * M_PI);
    }
    return tot / te->n;
}

/* Every toy set: a trained flow beats the best single Gaussian on held-out
 * rows by a clear margin (0.1 nats).  realnvp on the smooth sets, nsf on
 * the ones with sharp edges. */
TEST_T(job_toy_sets_beat_a_gaussian, 600) {
#ifdef NF_DOUBLE
    return; /* a float32 product test: training in double only costs time */
#endif
    const char *sets[] = {"moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings"};
    for (int s = 0; s < 7; s++) {
        char json[600];
        snprintf(json, sizeof json,
                 "{\"model\":\"t\",\"dataset\":{\"builtin\":\"%s\",\"n\":12000,\"seed\":3},"
                 "\"flow\":{\"preset\":\"%s\",\"depth\":%d,\"hidden\":[64%s]},"
                 "\"train\":{\"epochs\":12,\"batch_size\":256,\"lr\":3e-3,\"schedule\":\"cosine\","
                 "\"val_fraction\":0.1,\"test_fraction\":0.2,\"log_every\":1000}}",
                 sets[s], s >= 3 ? "nsf" : "realnvp", s >= 3 ? 4 : 6, s >= 3 ? "" : ",64");
        nf_job j;
        char err[300] = "";
        REQUIRE(parse(json, &j, err, sizeof err) == 0);
        nf_data all = {0}, tr = {0}, te = {0};
        REQUIRE(nf_job_load_data(&j, &all, err, sizeof err) == 0);
        nf_job_result res;
        int rc = nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err);
        CHECK_MSG(rc == 0, "%s: %s", sets[s], err);
        if (rc == 0) {
            /* the same split the job used: val 0.1, test 0.2, seed ^ 0x5711 */
            nf_data va = {0};
            nf_data_split(&all, 0.1, 0.2, 0 ^ 0x5711, &tr, &va, &te);
            double g = gaussian_nll(&tr, &te);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(res.metrics, "test_nll");
            double f = cJSON_IsNumber(t) ? t->valuedouble : INFINITY;
            printf("    %-12s flow test NLL %.4f, Gaussian %.4f\n", sets[s], f, g);
            CHECK_MSG(f < g - 0.1, "%s: flow %.4f does not beat the Gaussian %.4f", sets[s], f, g);
            nf_data_free(&va);
        }
        nf_job_result_free(&res);
        nf_data_free(&all);
        nf_data_free(&tr);
        nf_data_free(&te);
        nf_job_free(&j);
    }
}

/* The model file: round trip, identical scores, corruption refused. */
TEST(job_model_file_round_trip) {
    const char *json = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"8gaussians\",\"n\":1500},"
                       "\"flow\":{\"preset\":\"maf\",\"depth\":2,\"hidden\":[16]},"
                       "\"train\":{\"epochs\":2,\"batch_size\":128}}";
    nf_job j;
    char err[300] = "";
    REQUIRE(parse(json, &j, err, sizeof err) == 0);
    nf_data all = {0};
    REQUIRE(nf_job_load_data(&j, &all, err, sizeof err) == 0);
    nf_job_result res;
    REQUIRE(nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err) == 0);
    nf_model *m = NULL;
    REQUIRE(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
    CHECK_EQ_INT(nf_flow_dim(m->flow), 2);
    CHECK(!strcmp(nf_flow_layer_type(m->flow, 0), "elementwise_affine")); /* standardisation */
    const cJSON *lk = cJSON_GetObjectItemCaseSensitive(m->header, "likelihood");
    CHECK(cJSON_IsString(lk) && !strcmp(lk->valuestring, "exact"));
    nf_ws *w;
    REQUIRE(nf_ws_create(m->flow, 64, &w) == 0);
    nf_real lp1[64], lp2[64];
    CHECK(nf_model_log_prob(m, w, all.x, NULL, 64, lp1) == 0);
    /* the same bytes loaded twice score identically */
    nf_model *m2 = NULL;
    REQUIRE(nf_model_load(res.model, res.model_len, &m2, err, sizeof err) == 0);
    CHECK(nf_model_log_prob(m2, w, all.x, NULL, 64, lp2) == 0);
    CHECK(memcmp(lp1, lp2, sizeof lp1) == 0);
    for (int i = 0; i < 64; i++) CHECK(isfinite(lp1[i]));
    /* flipped byte, truncation, bad magic */
    unsigned char *b = res.model;
    for (size_t pos = 0; pos < res.model_len; pos += res.model_len / 7 + 1) {
        b[pos] ^= 0x40;
        nf_model *bad = NULL;
        int rc = nf_model_load(b, res.model_len, &bad, err, sizeof err);
        CHECK_MSG(rc == NF_ECORRUPT || rc == NF_EFORMAT, "flip at %zu: rc %d", pos, rc);
        CHECK(bad == NULL);
        b[pos] ^= 0x40;
    }
    nf_model *bad = NULL;
    CHECK(nf_model_load(b, res.model_len - 3, &bad, err, sizeof err) != 0);
    CHECK(nf_model_load(b, 10, &bad, err, sizeof err) != 0);
    CHECK(nf_model_load("NFMDxxxx", 8, &bad, err, sizeof err) != 0);
    nf_ws_free(w);
    nf_model_free(m);
    nf_model_free(m2);
    nf_job_result_free(&res);
    nf_data_free(&all);
    nf_job_free(&j);
}

/* Dequantized integer data: bits/dim reported, log_prob in pixel units, and
 * data outside [0, levels-1] refused with a message. */
TEST_T(job_dequantized_pixels, 120) {
    nf_data all = {0};
    char err[300] = "";
    REQUIRE(nf_data_alloc(&all, 3000, 4, err, sizeof err) == 0);
    nf_rng r;
    nf_rng_seed(&r, 5);
    for (int64_t i = 0; i < all.n * 4; i++) all.x[i] = (nf_real)(int)(nf_rng_uniform(&r) * 16);
    REQUIRE(nf_data_summarize(&all, err, sizeof err) == 0);
    const char *json = "{\"model\":\"px\",\"dataset\":{\"builtin\":\"moons\"},"
                       "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},"
                       "\"train\":{\"epochs\":3,\"batch_size\":100},"
                       "\"preprocess\":{\"dequantize\":{\"kind\":\"uniform\",\"levels\":16},\"logit\":{\"alpha\":0.01}}}";
    nf_job j;
    REQUIRE(parse(json, &j, err, sizeof err) == 0);
    nf_job_result res;
    REQUIRE(nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err) == 0);
    const cJSON *bpd = cJSON_GetObjectItemCaseSensitive(res.metrics, "val_bits_per_dim");
    CHECK(cJSON_IsNumber(bpd) && bpd->valuedouble > 4 - 0.05 && bpd->valuedouble < 6);
    nf_model *m = NULL;
    REQUIRE(nf_model_load(res.model, res.model_len, &m, err, sizeof err) == 0);
    CHECK(m->dequantize == 1 && m->levels == 16);
    nf_job_result_free(&res);
    nf_model_free(m);
    /* 16 levels, but a value of 16 */
    all.x[5] = 16;
    REQUIRE(nf_data_summarize(&all, err, sizeof err) == 0);
    CHECK(nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err) == NF_EINVAL);
    CHECK_MSG(strstr(err, "dequantize") != NULL, "message: %s", err);
    nf_job_free(&j);
    nf_data_free(&all);
}
