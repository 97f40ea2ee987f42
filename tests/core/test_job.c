/* test_job.c: job JSON parsing, preprocessing, the model file, and trained
 * flows on every toy set against a single Gaussian. */
#include "../test.h"
#include "layercheck.h"
#include "../../core/job.h"
#include "../../core/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* o[k] as a number, NAN when absent, null or not a number */
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

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
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"preprocess\":{\"center\":true,\"logit\":true}}", "preprocess"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"preprocess\":{\"center\":true,\"standardize\":true}}", "preprocess"},
        {"{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"preprocess\":{\"center\":3}}", "center"},
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
            /* the same split the job used */
            nf_data va = {0};
            REQUIRE(nf_job_split(&j, &all, &tr, &va, &te) == 0);
            CHECK_EQ_INT(te.n, 2400);
            double g = gaussian_nll(&tr, &te);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(res.metrics, "test_nll");
            double f = cJSON_IsNumber(t) ? t->valuedouble : INFINITY;
            /* and what the trained flow generates (500 samples against the
             * test split, the training split as the reference) */
            const cJSON *q = cJSON_GetObjectItemCaseSensitive(res.metrics, "sample_quality");
            double mmd = jnum(q, "mmd2"), ratio = jnum(q, "nn_ratio"), secs = jnum(q, "seconds");
            printf("    %-12s flow test NLL %.4f, Gaussian %.4f; samples: MMD^2 %.4f, NN ratio %.3f "
                   "(%.1f ms)\n", sets[s], f, g, mmd, ratio, 1e3 * secs);
            CHECK_MSG(f < g - 0.1, "%s: flow %.4f does not beat the Gaussian %.4f", sets[s], f, g);
            CHECK(jnum(q, "samples") == 500 && jnum(q, "nonfinite_share") == 0);
            CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(q, "split")), "test"));
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
    /* the samples, floored into the 16 levels, against the validation split
     * (no test split): a near-uniform model's samples are as far from the
     * training rows as held-out rows are */
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(res.metrics, "sample_quality");
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(q, "split")), "validation"));
    CHECK_MSG(jnum(q, "nn_ratio") > 0.8 && jnum(q, "nn_ratio") < 1.25, "ratio %g", jnum(q, "nn_ratio"));
    CHECK_MSG(fabs(jnum(q, "mmd2")) < 0.02, "mmd2 %g", jnum(q, "mmd2"));
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

/* train.eval_samples: the final metrics' sample_quality has that many
 * samples, and is left out at 0 or when the job holds no rows out */
TEST(job_sample_quality_switches) {
    const char *fmt = "{\"model\":\"q\",\"dataset\":{\"builtin\":\"8gaussians\",\"n\":1000},"
                      "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},"
                      "\"train\":{\"epochs\":1,\"batch_size\":100%s}}";
    struct { const char *train; int samples; const char *split; } cases[] = {
        {"", 500, "validation"},
        {",\"eval_samples\":64,\"test_fraction\":0.2", 64, "test"},
        {",\"eval_samples\":0", 0, NULL},
        {",\"val_fraction\":0", 0, NULL},
    };
    for (int c = 0; c < 4; c++) {
        char json[600], err[300] = "";
        snprintf(json, sizeof json, fmt, cases[c].train);
        nf_job j;
        REQUIRE(parse(json, &j, err, sizeof err) == 0);
        nf_data all = {0};
        REQUIRE(nf_job_load_data(&j, &all, err, sizeof err) == 0);
        nf_job_result res;
        REQUIRE(nf_job_run(&j, &all, NULL, NULL, 0, &res, err, sizeof err) == 0);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(res.metrics, "sample_quality");
        if (!cases[c].split) {
            CHECK_MSG(q == NULL, "case %d: sample_quality present", c);
        } else {
            CHECK_EQ_INT(jnum(q, "samples"), cases[c].samples);
            CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(q, "split")), cases[c].split));
            CHECK(isfinite(jnum(q, "mmd2")) && jnum(q, "mmd_bandwidth") > 0 && jnum(q, "nn_ratio") > 0);
            CHECK(jnum(q, "nonfinite_share") == 0 && jnum(q, "seconds") >= 0);
            CHECK_EQ_INT(cJSON_GetArraySize(q), 7);
        }
        nf_job_result_free(&res);
        nf_data_free(&all);
        nf_job_free(&j);
    }
}

/* ---- the train table against schema/job.schema.json -------------------------------------- */
static cJSON *load_json_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cJSON *o = NULL;
    if (b && fread(b, 1, (size_t)n, f) == (size_t)n) o = cJSON_ParseWithLength(b, (size_t)n);
    free(b);
    fclose(f);
    return o;
}

/* "#/$defs/X" in the schema root */
static const cJSON *schema_ref(const cJSON *root, const cJSON *prop) {
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(prop, "$ref");
    if (!cJSON_IsString(ref)) return prop;
    if (strncmp(ref->valuestring, "#/$defs/", 8)) return NULL;
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "$defs"),
                                            ref->valuestring + 8);
}

static int schema_type_is(const cJSON *prop, const char *t) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(prop, "type"), *e;
    if (cJSON_IsString(ty)) return !strcmp(ty->valuestring, t);
    cJSON_ArrayForEach(e, ty) if (cJSON_IsString(e) && !strcmp(e->valuestring, t)) return 1;
    return 0;
}

static double schema_num(const cJSON *prop, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(prop, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void check_fields(const cJSON *root, const cJSON *obj, const nf_field *rows, const char *path) {
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(obj, "properties"), *p;
    REQUIRE(cJSON_IsObject(props));
    for (const nf_field *f = rows; f->name; f++) {
        const cJSON *prop = schema_ref(root, cJSON_GetObjectItemCaseSensitive(props, f->name));
        CHECK_MSG(prop != NULL, "%s.%s: in the table, not in the schema", path, f->name);
        if (!prop) continue;
        switch (f->type) {
        case NF_FIELD_INT:
        case NF_FIELD_SEED:
        case NF_FIELD_NUM: {
            const char *t = f->type == NF_FIELD_NUM ? "number" : "integer";
            CHECK_MSG(schema_type_is(prop, t), "%s.%s: the schema's type is not %s", path, f->name, t);
            CHECK_MSG(schema_num(prop, "minimum") == f->lo, "%s.%s: minimum %g in the schema, %g in the table",
                      path, f->name, schema_num(prop, "minimum"), f->lo);
            CHECK_MSG(schema_num(prop, "maximum") == f->hi, "%s.%s: maximum %.17g in the schema, %.17g in the table",
                      path, f->name, schema_num(prop, "maximum"), f->hi);
            CHECK_MSG(schema_num(prop, "default") == f->def, "%s.%s: default %g in the schema, %g in the table",
                      path, f->name, schema_num(prop, "default"), f->def);
            if (f->type == NF_FIELD_SEED) CHECK(f->lo == 0 && f->hi == NF_JSON_SEED_MAX);
            break;
        }
        case NF_FIELD_ENUM: {
            CHECK_MSG(schema_type_is(prop, "string"), "%s.%s: the schema's type is not string", path, f->name);
            const cJSON *en = cJSON_GetObjectItemCaseSensitive(prop, "enum"), *def = cJSON_GetObjectItemCaseSensitive(prop, "default");
            int n = 0;
            while (f->names[n]) n++;
            CHECK_MSG(cJSON_GetArraySize(en) == n, "%s.%s: %d names in the schema, %d in the table", path, f->name,
                      cJSON_GetArraySize(en), n);
            for (int i = 0; i < n && i < cJSON_GetArraySize(en); i++) {
                const cJSON *e = cJSON_GetArrayItem(en, i);
                CHECK_MSG(cJSON_IsString(e) && !strcmp(e->valuestring, f->names[i]), "%s.%s: name %d differs", path,
                          f->name, i);
            }
            CHECK_MSG(cJSON_IsString(def) && !strcmp(def->valuestring, f->names[(int)f->def]),
                      "%s.%s: the defaults differ", path, f->name);
            break;
        }
        case NF_FIELD_BOOL: {
            CHECK_MSG(schema_type_is(prop, "boolean"), "%s.%s: the schema's type is not boolean", path, f->name);
            const cJSON *def = cJSON_GetObjectItemCaseSensitive(prop, "default");
            CHECK_MSG(cJSON_IsBool(def) && cJSON_IsTrue(def) == (f->def != 0), "%s.%s: the defaults differ", path,
                      f->name);
            break;
        }
        case NF_FIELD_OBJECT: {
            CHECK_MSG(schema_type_is(prop, "object"), "%s.%s: the schema's type is not object", path, f->name);
            char sub[120];
            snprintf(sub, sizeof sub, "%s.%s", path, f->name);
            check_fields(root, prop, f->sub, sub);
            break;
        }
        }
    }
    /* and nothing in the schema that the table lacks */
    cJSON_ArrayForEach(p, props) {
        const nf_field *f = rows;
        while (f->name && strcmp(f->name, p->string)) f++;
        CHECK_MSG(f->name != NULL, "%s.%s: in the schema, not in the table", path, p->string);
    }
}

TEST(job_train_table_matches_the_schema) {
    cJSON *root = load_json_file("schema/job.schema.json");
    REQUIRE(root != NULL);
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(root, "properties");
    const cJSON *train = schema_ref(root, cJSON_GetObjectItemCaseSensitive(props, "train"));
    REQUIRE(train != NULL);
    CHECK(schema_type_is(train, "object"));
    check_fields(root, train, nf_job_train_fields, "train");
    cJSON_Delete(root);
}

/* null is absent: a train block of nulls, an empty one and none at all are the same job,
 * and they agree with the trainer's own defaults */
TEST(job_null_means_absent) {
    static const char *const bodies[] = {
        "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"}}",
        "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},\"train\":{}}",
        "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\",\"n\":null,\"seed\":null},\"flow\":{\"preset\":\"maf\"},"
        "\"train\":null,\"preprocess\":null}",
        "{\"model\":\"m\",\"submission_id\":null,\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},"
        "\"train\":{\"epochs\":null,\"lr\":null,\"optimizer\":null,\"schedule\":null,\"early_stopping\":null,"
        "\"seed\":null,\"val_fraction\":null},\"preprocess\":{\"standardize\":null,\"dequantize\":null,\"logit\":null}}",
    };
    nf_job j0;
    char err[300] = "";
    REQUIRE(parse(bodies[0], &j0, err, sizeof err) == 0);
    nf_train_config def;
    nf_train_config_default(&def);
    def.dequantize = j0.train.dequantize; /* the job sets these from preprocess */
    def.levels = j0.train.levels;
    CHECK(!memcmp(&def, &j0.train, sizeof def));
    CHECK(j0.val_fraction == 0.1 && j0.test_fraction == 0 && j0.standardize == 1 && !j0.dequantize && !j0.logit);
    CHECK(j0.builtin_n == 10000 && j0.builtin_seed == 0 && j0.builtin_noise == -1);
    for (size_t i = 1; i < sizeof bodies / sizeof bodies[0]; i++) {
        nf_job j;
        if (parse(bodies[i], &j, err, sizeof err)) {
            CHECK_MSG(0, "body %zu refused: %s", i, err);
            continue;
        }
        CHECK_MSG(!memcmp(&j.train, &j0.train, sizeof j.train), "body %zu: other train settings", i);
        CHECK(j.val_fraction == j0.val_fraction && j.standardize == j0.standardize && j.builtin_n == j0.builtin_n);
        nf_job_free(&j);
    }
    nf_job_free(&j0);
    /* a required field that is null is missing */
    nf_job j;
    const char *nullmodel = "{\"model\":null,\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"}}";
    CHECK(parse(nullmodel, &j, err, sizeof err) == NF_EINVAL && strstr(err, "model"));
    /* the seed bound: 2^53 is taken, the next integer a double holds is not */
    const char *s53 = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},"
                      "\"train\":{\"seed\":9007199254740992}}";
    REQUIRE(parse(s53, &j, err, sizeof err) == 0);
    CHECK(j.train.seed == 9007199254740992ull);
    nf_job_free(&j);
    const char *s54 = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":{\"preset\":\"maf\"},"
                      "\"train\":{\"seed\":9007199254740994}}";
    CHECK(parse(s54, &j, err, sizeof err) == NF_EINVAL && strstr(err, "seed"));
    /* 1e999 is infinity, which would print back as null (= the default): refused, named */
    const char *inf = "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},"
                      "\"flow\":{\"layers\":[{\"type\":\"spline_coupling\",\"bins\":1e999}]}}";
    CHECK(parse(inf, &j, err, sizeof err) == NF_EINVAL && strstr(err, "bins"));
}

/* the dry run of a submission: a flow that cannot be built is refused */
TEST(job_check_builds_the_flow) {
    nf_job j;
    char err[300] = "";
    const char *ok = "{\"model\":\"m\",\"dataset\":{\"id\":\"d1\"},\"flow\":{\"preset\":\"realnvp\",\"depth\":2}}";
    REQUIRE(parse(ok, &j, err, sizeof err) == 0);
    CHECK_MSG(nf_job_check(&j, 3, NULL, 0, -1, 1, err, sizeof err) == 0, "%s", err);
    CHECK(nf_job_check(&j, 0, NULL, 0, 0, 0, err, sizeof err) == 0);
    CHECK(nf_job_check(&j, 1, NULL, 0, -1, 1, err, sizeof err) == NF_EINVAL); /* couplings need dim >= 2 */
    nf_job_free(&j);
    const char *dq = "{\"model\":\"m\",\"dataset\":{\"id\":\"d1\"},\"flow\":{\"preset\":\"maf\"},"
                     "\"preprocess\":{\"dequantize\":{\"levels\":4}}}";
    REQUIRE(parse(dq, &j, err, sizeof err) == 0);
    CHECK(nf_job_check(&j, 2, NULL, 1, 0, 3, err, sizeof err) == 0);
    CHECK(nf_job_check(&j, 2, NULL, 1, 0, 9, err, sizeof err) == NF_EINVAL && strstr(err, "dequantize"));
    nf_job_free(&j);
}

/* a layer's error at submission counts the job's own layers, not the
 * preprocessing layers put in front of them */
TEST(job_check_names_the_jobs_layer) {
    nf_job j;
    char err[300] = "";
    static const int sh[3] = {1, 7, 7};
    const char *js = "{\"model\":\"m\",\"dataset\":{\"id\":\"d1\"},\"flow\":{\"layers\":"
                     "[{\"type\":\"channel_actnorm\"},{\"type\":\"squeeze\"}]}}";
    REQUIRE(parse(js, &j, err, sizeof err) == 0);
    CHECK(nf_job_check(&j, 49, sh, 1, 0, 255, err, sizeof err) == NF_EINVAL);
    CHECK_MSG(strstr(err, "flow: layer 1 (squeeze)") && strstr(err, "1x7x7"), "%s", err);
    nf_job_free(&j);
    js = "{\"model\":\"m\",\"dataset\":{\"id\":\"d1\"},\"flow\":{\"layers\":"
         "[{\"type\":\"squeeze\"}]},\"preprocess\":{\"logit\":true}}";
    REQUIRE(parse(js, &j, err, sizeof err) == 0);
    CHECK(nf_job_check(&j, 49, sh, 0, 0, 1, err, sizeof err) == NF_EINVAL);
    CHECK_MSG(strstr(err, "flow: layer 0 (squeeze)"), "%s", err);
    nf_job_free(&j);
}

/* center maps [0, levels] to [-1/2, 1/2] with one fixed layer (Glow's
 * x/levels - 1/2), and needs data it can map */
TEST(job_center_preprocessing) {
    nf_job j;
    char err[300] = "";
    const char *js = "{\"model\":\"m\",\"dataset\":{\"id\":\"d1\"},\"flow\":{\"layers\":[]},"
                     "\"preprocess\":{\"center\":true,\"dequantize\":{\"levels\":4}}}";
    REQUIRE(parse(js, &j, err, sizeof err) == 0);
    CHECK(j.center == 1 && j.standardize == 0);
    nf_data d = {0};
    REQUIRE(nf_data_alloc(&d, 2, 2, err, sizeof err) == 0);
    nf_real v[4] = {0, 3, 1, 2};
    memcpy(d.x, v, sizeof v);
    REQUIRE(nf_data_summarize(&d, err, sizeof err) == 0);
    cJSON *pp = NULL;
    char *spec = nf_job_flow_spec(&j, &d, &pp, err, sizeof err);
    CHECK_MSG(spec, "%s", err);
    REQUIRE(spec);
    nf_flow *f = NULL;
    REQUIRE(nf_flow_create(spec, &f, err, sizeof err) == 0);
    nf_ws *w = NULL;
    REQUIRE(nf_ws_create(f, 2, &w) == 0);
    nf_real x[4] = {0, 4, 2, 1}, z[4], ld[2];
    REQUIRE(nf_flow_encode(f, w, x, NULL, 2, z, ld) == 0);
    CHECK_CLOSE(z[0], -0.5, 1e-6, 0);
    CHECK_CLOSE(z[1], 0.5, 1e-6, 0);
    CHECK_CLOSE(z[2], 0, 1e-6, 0);
    CHECK_CLOSE(z[3], -0.25, 1e-6, 0);
    CHECK_CLOSE(ld[0], -2 * log(4.0), 1e-5, 0);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(pp, "center")));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(pp, "standardize")));
    cJSON_Delete(pp);
    free(spec);
    nf_ws_free(w);
    nf_flow_free(f);
    nf_job_free(&j);
    /* without dequantization the data must lie in [0, 1] */
    js = "{\"model\":\"m\",\"dataset\":{\"id\":\"d1\"},\"flow\":{\"layers\":[]},"
         "\"preprocess\":{\"center\":true}}";
    REQUIRE(parse(js, &j, err, sizeof err) == 0);
    CHECK(nf_job_flow_spec(&j, &d, &pp, err, sizeof err) == NULL && strstr(err, "center"));
    nf_job_free(&j);
    nf_data_free(&d);
}

/* the flow a job trains gets the dataset's image shape unless the flow
 * gives its own, which must hold one row; a wrong one names both shapes */
static int spec_shape(const char *job, const nf_data *tr, int shape[3], char *err, size_t n) {
    nf_job j;
    shape[0] = shape[1] = shape[2] = -1;
    if (parse(job, &j, err, n)) return -1;
    cJSON *pp = NULL;
    char *spec = nf_job_flow_spec(&j, tr, &pp, err, n);
    nf_job_free(&j);
    cJSON_Delete(pp);
    if (!spec) return -1;
    nf_flow *f = NULL;
    int rc = nf_flow_create(spec, &f, err, n);
    free(spec);
    if (rc) return -1;
    nf_flow_shape(f, shape);
    CHECK(nf_flow_dim(f) == tr->d);
    nf_flow_free(f);
    return 0;
}

TEST(job_image_shape_from_dataset_or_flow) {
    char err[400] = "";
    nf_data tr;
    REQUIRE(nf_data_alloc(&tr, 3, 4, err, sizeof err) == 0);
    for (int i = 0; i < 12; i++) tr.x[i] = (nf_real)(i % 5) / 4;
    REQUIRE(nf_data_summarize(&tr, err, sizeof err) == 0);
    int s[3];
#define JOB(flow, pre) "{\"model\":\"m\",\"dataset\":{\"id\":\"d\"},\"flow\":" flow pre "}"
    /* no shape anywhere: none */
    REQUIRE(spec_shape(JOB("{\"preset\":\"realnvp\",\"depth\":1,\"hidden\":[8]}", ""), &tr, s, err, sizeof err) == 0);
    CHECK(s[0] == 0);
    /* the dataset's, through a preset, with standardisation and with logit in front */
    tr.shape[0] = 1, tr.shape[1] = 2, tr.shape[2] = 2;
    REQUIRE(spec_shape(JOB("{\"preset\":\"realnvp\",\"depth\":1,\"hidden\":[8]}", ""), &tr, s, err, sizeof err) == 0);
    CHECK(s[0] == 1 && s[1] == 2 && s[2] == 2);
    CHECK_MSG(spec_shape(JOB("{\"layers\":[{\"type\":\"actnorm\"}]}", ",\"preprocess\":{\"logit\":true}"), &tr, s,
                         err, sizeof err) == 0, "%s", err);
    CHECK(s[0] == 1 && s[1] == 2 && s[2] == 2);
    /* the flow's own wins when it holds a row */
    REQUIRE(spec_shape(JOB("{\"preset\":\"maf\",\"depth\":1,\"hidden\":[8],\"shape\":[4,1,1]}", ""), &tr, s, err,
                       sizeof err) == 0);
    CHECK(s[0] == 4 && s[1] == 1 && s[2] == 1);
    /* one that does not: refused, naming both */
    CHECK(spec_shape(JOB("{\"layers\":[],\"shape\":[1,3,3]}", ""), &tr, s, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "flow.shape [1, 3, 3]") && strstr(err, "9 values") && strstr(err, "[1, 2, 2]") &&
              strstr(err, "have 4"), "%s", err);
    tr.shape[0] = tr.shape[1] = tr.shape[2] = 0;
    CHECK(spec_shape(JOB("{\"layers\":[],\"shape\":[1,3,3]}", ""), &tr, s, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "no shape"), "%s", err);
    /* a malformed one is refused when the job is parsed */
    nf_job j;
    CHECK(parse(JOB("{\"layers\":[],\"shape\":[1,2]}", ""), &j, err, sizeof err) == NF_EINVAL);
    CHECK_MSG(strstr(err, "flow") && strstr(err, "shape"), "%s", err);
    /* nf_job_check with a shape: the same */
    REQUIRE(parse(JOB("{\"layers\":[],\"shape\":[1,3,3]}", ""), &j, err, sizeof err) == 0);
    static const int sh4[3] = {1, 2, 2}, sh9[3] = {1, 3, 3};
    CHECK(nf_job_check(&j, 4, sh4, 0, 0, 1, err, sizeof err) == NF_EINVAL && strstr(err, "[1, 2, 2]"));
    CHECK_MSG(nf_job_check(&j, 9, sh9, 0, 0, 1, err, sizeof err) == 0, "%s", err);
    CHECK(nf_job_check(&j, 0, NULL, 0, 0, 0, err, sizeof err) == NF_EINVAL); /* built-ins: 2 columns */
    nf_job_free(&j);
#undef JOB
    nf_data_free(&tr);
}

/* train.augment.hflip: parsed from the table, and refused at submission for
 * rows without an image shape */
TEST(job_hflip_needs_a_shape) {
    nf_job j;
    char err[400] = "";
    const char *job = "{\"model\":\"m\",\"dataset\":{\"id\":\"d\"},\"flow\":{\"preset\":\"realnvp\",\"depth\":1},"
                      "\"train\":{\"augment\":{\"hflip\":true}}}";
    REQUIRE(parse(job, &j, err, sizeof err) == 0);
    CHECK(j.train.hflip == 1);
    static const int sh[3] = {1, 2, 2};
    CHECK_MSG(nf_job_check(&j, 4, sh, 0, 0, 1, err, sizeof err) == 0, "%s", err);
    CHECK(nf_job_check(&j, 4, NULL, 0, 0, 1, err, sizeof err) == NF_EINVAL);
    CHECK_MSG(strstr(err, "train.augment.hflip") && strstr(err, "shape"), "%s", err);
    CHECK(nf_job_check(&j, 0, NULL, 0, 0, 0, err, sizeof err) == NF_EINVAL); /* built-in sets: no shape */
    nf_job_free(&j);
    const char *off = "{\"model\":\"m\",\"dataset\":{\"id\":\"d\"},\"flow\":{\"preset\":\"realnvp\"},"
                      "\"train\":{\"augment\":{\"hflip\":false}}}";
    REQUIRE(parse(off, &j, err, sizeof err) == 0);
    CHECK(j.train.hflip == 0 && nf_job_check(&j, 4, NULL, 0, 0, 1, err, sizeof err) == 0);
    nf_job_free(&j);
    const char *bad = "{\"model\":\"m\",\"dataset\":{\"id\":\"d\"},\"flow\":{\"preset\":\"realnvp\"},"
                      "\"train\":{\"augment\":{\"hflip\":1}}}";
    CHECK(parse(bad, &j, err, sizeof err) == NF_EINVAL && strstr(err, "hflip"));
    const char *typo = "{\"model\":\"m\",\"dataset\":{\"id\":\"d\"},\"flow\":{\"preset\":\"realnvp\"},"
                       "\"train\":{\"augment\":{\"vflip\":true}}}";
    CHECK(parse(typo, &j, err, sizeof err) == NF_EINVAL && strstr(err, "vflip"));
}
