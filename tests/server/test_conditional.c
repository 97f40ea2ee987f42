/* test_conditional.c: conditional flows over HTTP (docs/conditional.md),
 * against the real daemon: a job conditioned on a toy set's labels
 * separates its classes; labels, classes and context on log_prob, sample,
 * encode and decode; CSV and .npy bodies in the training layout; a labels
 * dataset and a class grid of an image model; context columns; and the
 * stable, importance-weighted scores of a dequantized model. */
#include "../test.h"
#include "daemon.h"
#include "oapi.h"
#include "../../core/data.h"
#include "../../core/npy.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static const cJSON *get(const cJSON *o, const char *k) {
    return o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}
static double item(const cJSON *a, int i) {
    const cJSON *v = cJSON_GetArrayItem(a, i);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void check_schema(const cJSON *doc, const char *name, const cJSON *v) {
    char err[400] = "";
    CHECK_MSG(oapi_check(doc, name, v, err, sizeof err) == 0, "%s: %s", name, err);
}

static cJSON *openapi(dmn *d) {
    hresp r;
    http_get(d, "/openapi.yaml", &r);
    char err[400] = "";
    cJSON *doc = r.status == 200 ? oapi_parse(r.body, r.len, err, sizeof err) : NULL;
    hresp_free(&r);
    return doc;
}

static void post(dmn *d, const char *path, const char *ctype, const char *accept, const void *body,
                 size_t len, hresp *r) {
    hreq q = {.method = "POST", .path = path, .ctype = ctype, .accept = accept, .body = body,
              .len = len, .has_body = 1};
    dmn_http(d, &q, r);
}

/* a dataset from CSV text; its id into id */
static void upload_csv(dmn *d, const char *query, const char *csv, char *id, size_t n) {
    char path[200];
    snprintf(path, sizeof path, "/v1/datasets?%s", query);
    hresp r;
    post(d, path, "text/csv", NULL, csv, strlen(csv), &r);
    CHECK_MSG(r.status == 201 || r.status == 200, "upload %s: %ld %s", query, r.status, r.body);
    const cJSON *v = get(r.json, "id");
    snprintf(id, n, "%s", cJSON_IsString(v) ? v->valuestring : "");
    hresp_free(&r);
}

/* POST a sample request (200 expected); the mean of its n 2-D samples */
static void sample_mean(dmn *d, const char *path, const char *body, int n, double *mx, double *my) {
    hresp r;
    http_post_json(d, path, body, &r);
    CHECK_MSG(r.status == 200, "%s: %ld %s", body, r.status, r.body);
    *mx = *my = 0;
    for (int i = 0; i < n && r.status == 200; i++) {
        const cJSON *row = cJSON_GetArrayItem(get(r.json, "samples"), i);
        *mx += item(row, 0) / n;
        *my += item(row, 1) / n;
    }
    hresp_free(&r);
}

/* POST a CSV or .npy body to log_prob: the scores match ref's n */
static void scores_match(dmn *d, const char *path, const char *ctype, const void *body, size_t len,
                         const cJSON *ref, int n) {
    hresp c;
    post(d, path, ctype, NULL, body, len, &c);
    CHECK_MSG(c.status == 200, "%s: %ld %s", ctype, c.status, c.body);
    for (int i = 0; i < n && c.status == 200; i++)
        CHECK_CLOSE(item(get(c.json, "log_prob"), i), item(get(ref, "log_prob"), i), 1e-4, 1e-5);
    hresp_free(&c);
}

/* flowctl (next to the flowd the tests run) against d: its exit status */
static int flowctl(dmn *d, const char *args) {
    char bin[600], cmd[1600];
    snprintf(bin, sizeof bin, "%s", dmn_bin());
    char *slash = strrchr(bin, '/');
    if (slash) snprintf(slash + 1, sizeof bin - (size_t)(slash + 1 - bin), "flowctl");
    else snprintf(bin, sizeof bin, "build/rel/flowctl");
    snprintf(cmd, sizeof cmd, "%s --url http://127.0.0.1:%d %s", bin, d->port, args);
    int st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

/* the values of a flowctl score output file (after its header), at most n */
static int read_scores(const char *path, double *v, int n) {
    FILE *f = fopen(path, "r");
    char line[128];
    int k = 0;
    if (!f) return -1;
    if (!fgets(line, sizeof line, f)) k = -1;
    while (k >= 0 && k < n && fgets(line, sizeof line, f)) v[k++] = strtod(line, NULL);
    fclose(f);
    return k;
}

/* a daemon on a fresh database: 0 or -1 */
static int start(dmn *d) {
    const char *args[] = {NULL};
    return dmn_init(d) == 0 && dmn_start(d, args, NULL) == 0 ? 0 : -1;
}

static void run_job(dmn *d, const char *json) {
    long long id = submit_job(d, json);
    REQUIRE(id > 0);
    char state[32] = "";
    REQUIRE(wait_job(d, id, 120, state, sizeof state) == 0);
    CHECK_MSG(!strcmp(state, "succeeded"), "job %lld: %s", id, state);
    if (strcmp(state, "succeeded")) {
        cJSON *j = get_job(d, id);
        char *s = cJSON_PrintUnformatted(j);
        fprintf(stderr, "%s\n", s ? s : "");
        free(s);
        cJSON_Delete(j);
    }
}

/* "[[x,y],...]" of n rows (D = 2) and "[l,...]" of their labels, shifted by
 * `shift` (mod 8): the wrong labels */
static char *rows_json(const nf_data *h, int n) {
    size_t cap = (size_t)n * 64 + 16, k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s + k, cap - k, "[");
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(s + k, cap - k, "%s[%.9g,%.9g]", i ? "," : "", (double)h->x[i * 3],
                              (double)h->x[i * 3 + 1]);
    snprintf(s + k, cap - k, "]");
    return s;
}
static char *labels_json(const nf_data *h, int n, int shift) {
    size_t cap = (size_t)n * 8 + 16, k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s + k, cap - k, "[");
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(s + k, cap - k, "%s%d", i ? "," : "", ((int)h->x[i * 3 + 2] + shift) % 8);
    snprintf(s + k, cap - k, "]");
    return s;
}

/* ---- a class-conditional job on a toy set ------------------------------------ */
TEST_T(http_conditional_labels, 240) {
    dmn d;
    REQUIRE(start(&d) == 0);
    cJSON *doc = openapi(&d);
    REQUIRE(doc);
    hresp r;
    /* refused at submission, with the field named */
    http_post_json(&d, "/v1/jobs", "{\"model\":\"x\",\"dataset\":{\"builtin\":\"moons\",\"labels\":{\"column\":2}},\"flow\":{\"preset\":\"realnvp\"}}", &r);
    CHECK_MSG(r.status == 422 && strstr(r.body, "dataset.labels"), "%ld %s", r.status, r.body);
    hresp_free(&r);
    http_post_json(&d, "/v1/jobs", "{\"model\":\"x\",\"dataset\":{\"builtin\":\"moons\",\"context_columns\":[0,1]},\"flow\":{\"preset\":\"realnvp\"}}", &r);
    CHECK_MSG(r.status == 422 && strstr(r.body, "no data"), "%ld %s", r.status, r.body);
    hresp_free(&r);

    run_job(&d, "{\"model\":\"g8\",\"dataset\":{\"builtin\":\"8gaussians\",\"n\":6000,\"labels\":true},"
                "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]},"
                "\"train\":{\"epochs\":15,\"batch_size\":128,\"lr\":0.003,\"seed\":1}}");
    http_get(&d, "/v1/models/g8", &r);
    check_schema(doc, "ModelDetail", r.json);
    const cJSON *v0 = cJSON_GetArrayItem(get(r.json, "versions"), 0);
    CHECK_MSG(r.status == 200 && jnum(v0, "context_dim") == 8, "%ld %s", r.status, r.body);
    const cJSON *pctx = get(get(v0, "preprocess"), "context");
    CHECK(jnum(pctx, "classes") == 8 && jnum(pctx, "column") == 2 && jnum(pctx, "width") == 3);
    hresp_free(&r);

    /* held-out rows score higher under their own label than under another */
    enum { N = 200 };
    nf_data h = {0};
    REQUIRE(nf_data_builtin_ex("8gaussians", N, -1, 4242, 1, &h, NULL, 0) == 0);
    char *rows = rows_json(&h, N), *right = labels_json(&h, N, 0), *wrong = labels_json(&h, N, 3);
    size_t cap = strlen(rows) + strlen(right) + 100;
    char *body = malloc(cap);
    snprintf(body, cap, "{\"inputs\":%s,\"labels\":%s}", rows, right);
    hresp a, b;
    http_post_json(&d, "/v1/models/g8/log_prob", body, &a);
    snprintf(body, cap, "{\"inputs\":%s,\"labels\":%s}", rows, wrong);
    http_post_json(&d, "/v1/models/g8/log_prob", body, &b);
    REQUIRE(a.status == 200 && b.status == 200);
    check_schema(doc, "LogProbResponse", a.json);
    int better = 0;
    for (int i = 0; i < N; i++) better += item(get(a.json, "log_prob"), i) > item(get(b.json, "log_prob"), i);
    CHECK_MSG(better >= N * 95 / 100, "%d of %d rows score higher under their own label", better, N);

    /* the same rows as CSV and .npy in the training layout (x, y, label) */
    size_t ccap = (size_t)N * 64 + 32, k = 0;
    char *csv = malloc(ccap);
    for (int i = 0; i < N; i++)
        k += (size_t)snprintf(csv + k, ccap - k, "%.9g,%.9g,%d\n", (double)h.x[i * 3], (double)h.x[i * 3 + 1],
                              (int)h.x[i * 3 + 2]);
    hresp c;
    scores_match(&d, "/v1/models/g8/log_prob", "text/csv", csv, k, a.json, N);
    size_t nlen = 0;
    char *npy = nf_npy_f32(h.x, N, 3, &nlen);
    REQUIRE(npy);
    scores_match(&d, "/v1/models/g8/log_prob", "application/x-npy", npy, nlen, a.json, N);
    free(npy);
    /* width 2 (no label) and a label outside the classes: 422 */
    post(&d, "/v1/models/g8/log_prob", "text/csv", NULL, "1,2\n3,4\n", 8, &c);
    CHECK_MSG(c.status == 422 && strstr(c.body, "expected_width"), "%ld %s", c.status, c.body);
    hresp_free(&c);
    post(&d, "/v1/models/g8/log_prob", "text/csv", NULL, "1,2,0\n3,4,9\n", 12, &c);
    CHECK_MSG(c.status == 422 && strstr(c.body, "row 1"), "%ld %s", c.status, c.body);
    hresp_free(&c);
    hresp_free(&a);
    hresp_free(&b);

    /* sampling: one label for all, a class list (n of each) */
    double mx, my;
    sample_mean(&d, "/v1/models/g8/sample", "{\"n\":200,\"seed\":3,\"labels\":3}", 200, &mx, &my);
    /* Gaussian 3 is centred at (0, -4) / 1.414 */
    CHECK_MSG(fabs(mx) < 0.5 && fabs(my + 4 / 1.414) < 0.5, "samples of class 3 centred at (%g, %g)", mx, my);
    http_post_json(&d, "/v1/models/g8/sample", "{\"n\":4,\"seed\":3,\"classes\":[0,5],\"return_log_prob\":true}", &r);
    CHECK_MSG(r.status == 200, "%ld %s", r.status, r.body);
    check_schema(doc, "SampleResponse", r.json);
    CHECK_EQ_INT(cJSON_GetArraySize(get(r.json, "samples")), 8);
    CHECK(item(get(r.json, "labels"), 0) == 0 && item(get(r.json, "labels"), 3) == 0 &&
          item(get(r.json, "labels"), 4) == 5 && item(get(r.json, "labels"), 7) == 5);
    hresp_free(&r);
    /* flowctl sample --label / --classes */
    {
        char o[300], args[600], line[256];
        snprintf(o, sizeof o, "%s/c.csv", d.dir);
        snprintf(args, sizeof args, "sample g8 -n 5 --seed 1 --classes 0,5 -o %s", o);
        CHECK_EQ_INT(flowctl(&d, args), 0);
        FILE *f = fopen(o, "r");
        int lines = 0;
        while (f && fgets(line, sizeof line, f)) lines++;
        if (f) fclose(f);
        CHECK_EQ_INT(lines, 11); /* a header and 5 samples of each class */
        snprintf(args, sizeof args, "sample g8 -n 5 --label 9 -o %s 2>/dev/null", o);
        CHECK_EQ_INT(flowctl(&d, args), 2); /* the server's 422 */
    }
    /* encode, decode with labels: the round trip */
    http_post_json(&d, "/v1/models/g8/encode", "{\"inputs\":[[0.5,2.1],[-2,0]],\"labels\":[2,1]}", &r);
    CHECK_MSG(r.status == 200, "%ld %s", r.status, r.body);
    check_schema(doc, "EncodeResponse", r.json);
    char *lat = cJSON_PrintUnformatted(get(r.json, "latents"));
    hresp_free(&r);
    char db[400];
    snprintf(db, sizeof db, "{\"latents\":%s,\"labels\":[2,1]}", lat ? lat : "[]");
    free(lat);
    http_post_json(&d, "/v1/models/g8/decode", db, &r);
    CHECK(r.status == 200);
    const cJSON *out = get(r.json, "outputs");
    CHECK_CLOSE(item(cJSON_GetArrayItem(out, 0), 0), 0.5, 1e-4, 1e-4);
    CHECK_CLOSE(item(cJSON_GetArrayItem(out, 1), 1), 0.0, 1e-4, 1e-4);
    hresp_free(&r);
    /* errors: 422 with a stable code */
    static const struct { const char *path, *body, *want; } bad[] = {
        {"/v1/models/g8/log_prob", "{\"inputs\":[[0,0]]}", "labels"},
        {"/v1/models/g8/log_prob", "{\"inputs\":[[0,0]],\"labels\":8}", "classes"},
        {"/v1/models/g8/log_prob", "{\"inputs\":[[0,0],[1,1]],\"labels\":[1]}", "2 rows"},
        {"/v1/models/g8/log_prob", "{\"inputs\":[[0,0]],\"labels\":1,\"context\":[0,0,0,0,0,0,0,1]}", "not both"},
        {"/v1/models/g8/log_prob", "{\"inputs\":[[0,0]],\"labels\":1,\"samples\":65}", "samples"},
        {"/v1/models/g8/sample", "{\"n\":2,\"classes\":[1,8]}", "classes"},
        {"/v1/models/g8/sample", "{\"n\":2,\"classes\":[1],\"labels\":1}", "not two"},
        {"/v1/models/g8/sample", "{\"n\":60000,\"classes\":[1,2]}", "exceeds"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_post_json(&d, bad[i].path, bad[i].body, &r);
        CHECK_MSG(r.status == 422 && !strcmp(hresp_error_code(&r), "invalid_input") && strstr(r.body, bad[i].want),
                  "%s %s: %ld %s", bad[i].path, bad[i].body, r.status, r.body);
        hresp_free(&r);
    }
    /* a model without labels refuses them */
    run_job(&d, "{\"model\":\"plain\",\"dataset\":{\"builtin\":\"moons\",\"n\":500},"
                "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},\"train\":{\"epochs\":1}}");
    http_post_json(&d, "/v1/models/plain/log_prob", "{\"inputs\":[[0,0]],\"labels\":1}", &r);
    CHECK_MSG(r.status == 422 && strstr(r.body, "class labels"), "%ld %s", r.status, r.body);
    hresp_free(&r);
    free(csv);
    free(body);
    free(rows);
    free(right);
    free(wrong);
    nf_data_free(&h);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}

/* ---- a labels dataset and the class grid of an image model ---------------------- */
TEST_T(http_conditional_labels_dataset_image_grid, 240) {
    dmn d;
    REQUIRE(start(&d) == 0);
    /* 300 4x4 images of 0..255: class 0 dark, class 1 bright; labels apart */
    enum { N = 300 };
    size_t cap = (size_t)N * 80, k = 0, lk = 0;
    char *img = malloc(cap), *lab = malloc((size_t)N * 4 + 16);
    nf_rng g;
    nf_rng_seed(&g, 9);
    for (int i = 0; i < N; i++) {
        int c = i % 2;
        for (int p = 0; p < 16; p++)
            k += (size_t)snprintf(img + k, cap - k, "%s%d", p ? "," : "",
                                  (int)(c ? 160 + nf_rng_u64(&g) % 96 : nf_rng_u64(&g) % 96));
        k += (size_t)snprintf(img + k, cap - k, "\n");
        lk += (size_t)sprintf(lab + lk, "%d\n", c);
    }
    char ids[64], idl[64], idshort[64];
    upload_csv(&d, "name=img&shape=1,4,4", img, ids, sizeof ids);
    upload_csv(&d, "name=lab", lab, idl, sizeof idl);
    upload_csv(&d, "name=short", "0\n1\n", idshort, sizeof idshort);
    char job[600];
    hresp r;
    snprintf(job, sizeof job, "{\"model\":\"bad\",\"dataset\":{\"id\":\"%s\",\"labels\":{\"id\":\"%s\"}},"
             "\"flow\":{\"preset\":\"glow\"}}", ids, idshort);
    http_post_json(&d, "/v1/jobs", job, &r);
    CHECK_MSG(r.status == 422 && strstr(r.body, "labels"), "%ld %s", r.status, r.body);
    hresp_free(&r);
    snprintf(job, sizeof job, "{\"model\":\"bad\",\"dataset\":{\"id\":\"%s\",\"labels\":{\"id\":\"ds_0000000000000000\"}},"
             "\"flow\":{\"preset\":\"glow\"}}", ids);
    http_post_json(&d, "/v1/jobs", job, &r);
    CHECK_MSG(r.status == 422 && strstr(r.body, "does not exist"), "%ld %s", r.status, r.body);
    hresp_free(&r);
    snprintf(job, sizeof job, "{\"model\":\"pix\",\"dataset\":{\"id\":\"%s\",\"labels\":{\"id\":\"%s\"}},"
             "\"flow\":{\"preset\":\"glow\",\"depth\":2,\"levels\":1,\"hidden_channels\":8},"
             "\"train\":{\"epochs\":12,\"batch_size\":32,\"lr\":0.003,\"eval_samples\":0}}", ids, idl);
    run_job(&d, job);
    /* 3 samples of each of 2 classes: a grid of 2 rows of 3 tiles of 4x4,
     * 1-pixel gaps: 16 x 11 */
    hreq q = {.method = "POST", .path = "/v1/models/pix/sample", .ctype = "application/json",
              .accept = "image/png", .body = "{\"n\":3,\"seed\":1,\"classes\":[0,1]}", .has_body = 1};
    q.len = strlen(q.body);
    dmn_http(&d, &q, &r);
    CHECK_MSG(r.status == 200 && r.len > 24 && !memcmp(r.body + 1, "PNG", 3), "%ld", r.status);
    if (r.status == 200 && r.len > 24) {
        const unsigned char *p = (const unsigned char *)r.body + 16;
        unsigned w = (unsigned)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
        unsigned h = (unsigned)p[4] << 24 | p[5] << 16 | p[6] << 8 | p[7];
        CHECK_MSG(w == 16 && h == 11, "class grid %ux%u", w, h);
    }
    hresp_free(&r);
    /* the class shows in the samples: bright class 1, dark class 0 */
    http_post_json(&d, "/v1/models/pix/sample", "{\"n\":20,\"seed\":2,\"classes\":[0,1]}", &r);
    REQUIRE(r.status == 200);
    double m0 = 0, m1 = 0;
    for (int i = 0; i < 40; i++) {
        const cJSON *row = cJSON_GetArrayItem(get(r.json, "samples"), i);
        for (int p = 0; p < 16; p++) {
            if (i < 20) m0 += item(row, p) / (20 * 16);
            else m1 += item(row, p) / (20 * 16);
        }
    }
    CHECK_MSG(m1 > m0 + 40, "class means %g (0) and %g (1)", m0, m1);
    hresp_free(&r);
    free(img);
    free(lab);
    dmn_cleanup(&d);
}

/* ---- context columns, and stable importance-weighted scores ----------------------- */
TEST_T(http_conditional_columns_and_stable_scores, 240) {
    dmn d;
    REQUIRE(start(&d) == 0);
    cJSON *doc = openapi(&d);
    REQUIRE(doc);
    /* x | c ~ N((2c, -c), 0.3^2 I): c in the middle column */
    enum { N = 3000 };
    size_t cap = (size_t)N * 60, k = 0;
    char *csv = malloc(cap);
    nf_rng g;
    nf_rng_seed(&g, 3);
    k += (size_t)snprintf(csv + k, cap - k, "a,c,b\n");
    for (int i = 0; i < N; i++) {
        double c = nf_rng_normal(&g);
        k += (size_t)snprintf(csv + k, cap - k, "%.6f,%.6f,%.6f\n", 2 * c + 0.3 * nf_rng_normal(&g), c,
                              -c + 0.3 * nf_rng_normal(&g));
    }
    char id[64];
    upload_csv(&d, "name=cg", csv, id, sizeof id);
    char job[600];
    snprintf(job, sizeof job, "{\"model\":\"cg\",\"dataset\":{\"id\":\"%s\",\"context_columns\":[1]},"
             "\"flow\":{\"preset\":\"maf\",\"depth\":2,\"hidden\":[32,32]},"
             "\"train\":{\"epochs\":10,\"batch_size\":128,\"lr\":0.003}}", id);
    run_job(&d, job);
    hresp r, c;
    /* a row scores the same from JSON with context and from the raw CSV layout */
    http_post_json(&d, "/v1/models/cg/log_prob", "{\"inputs\":[[2,-1],[2,1]],\"context\":[[1],[1]]}", &r);
    REQUIRE(r.status == 200);
    check_schema(doc, "LogProbResponse", r.json);
    /* (2, -1) is where c = 1 puts x; (2, 1) is far off */
    CHECK(item(get(r.json, "log_prob"), 0) > item(get(r.json, "log_prob"), 1) + 5);
    scores_match(&d, "/v1/models/cg/log_prob", "text/csv", "2,1,-1\n2,1,1\n", 13, r.json, 2);
    hresp_free(&r);
    /* sampling with one context for all rows: x near (2c, -c) */
    double mx, my;
    sample_mean(&d, "/v1/models/cg/sample", "{\"n\":300,\"seed\":1,\"context\":[1.5]}", 300, &mx, &my);
    CHECK_MSG(fabs(mx - 3) < 0.3 && fabs(my + 1.5) < 0.3, "samples at c = 1.5 centred at (%g, %g)", mx, my);
    http_post_json(&d, "/v1/models/cg/sample", "{\"n\":3,\"context\":[[1],[2]]}", &r);
    CHECK_MSG(r.status == 422, "%ld %s", r.status, r.body);
    hresp_free(&r);

    /* stable scores: a dequantized model on integer rows (columns 0..15) */
    k = 0;
    for (int i = 0; i < N; i++) {
        double t = nf_rng_uniform(&g) * 3.14159;
        int a = (int)floor(8 + 6 * cos(t) + nf_rng_normal(&g)), b = (int)floor(3 + 8 * sin(t) + nf_rng_normal(&g));
        a = a < 0 ? 0 : a > 15 ? 15 : a;
        b = b < 0 ? 0 : b > 15 ? 15 : b;
        k += (size_t)snprintf(csv + k, cap - k, "%d,%d\n", a, b);
    }
    upload_csv(&d, "name=ints", csv, id, sizeof id);
    snprintf(job, sizeof job, "{\"model\":\"dq\",\"dataset\":{\"id\":\"%s\"},"
             "\"flow\":{\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32]},"
             "\"train\":{\"epochs\":3,\"batch_size\":128,\"lr\":0.003},"
             "\"preprocess\":{\"dequantize\":{\"levels\":16}}}", id);
    run_job(&d, job);
    /* rows [a, b, c] and [c, a, b] and [b] alone: each row its own score */
    http_post_json(&d, "/v1/models/dq/log_prob", "{\"inputs\":[[3,4],[8,9],[12,2]]}", &r);
    http_post_json(&d, "/v1/models/dq/log_prob", "{\"inputs\":[[12,2],[3,4],[8,9]]}", &c);
    REQUIRE(r.status == 200 && c.status == 200);
    const cJSON *lr = get(r.json, "log_prob"), *lc = get(c.json, "log_prob");
    CHECK_CLOSE(item(lc, 1), item(lr, 0), 1e-4, 1e-5);
    CHECK_CLOSE(item(lc, 2), item(lr, 1), 1e-4, 1e-5);
    CHECK_CLOSE(item(lc, 0), item(lr, 2), 1e-4, 1e-5);
    CHECK(jnum(r.json, "samples") == 1);
    hresp_free(&c);
    http_post_json(&d, "/v1/models/dq/log_prob", "{\"inputs\":[[8,9]]}", &c);
    CHECK(c.status == 200);
    CHECK_CLOSE(item(get(c.json, "log_prob"), 0), item(lr, 1), 1e-4, 1e-5);
    hresp_free(&c);
    /* the importance-weighted estimate: K = 16 over 300 training rows uses
     * other draws than K = 1 (most rows differ), estimates the same
     * quantity (within a nat for 90% of rows: a 3-epoch model's single
     * uniform draw has a spread of about a nat), and the row's first entry alone gives the
     * same figure (stable).  That it is at least the mean of its draws'
     * bounds, row by row, is checked in tests/core/test_conditional.c,
     * where the single draws can be rebuilt. */
    size_t body_cap = 300 * 16 + 64, bk = 0;
    char *body = malloc(body_cap);
    bk += (size_t)snprintf(body + bk, body_cap - bk, "{\"inputs\":[");
    const char *p = csv;
    for (int i = 0; i < 300; i++) {
        int a, b, used;
        sscanf(p, "%d,%d\n%n", &a, &b, &used);
        p += used;
        bk += (size_t)snprintf(body + bk, body_cap - bk, "%s[%d,%d]", i ? "," : "", a, b);
    }
    snprintf(body + bk, body_cap - bk, "],\"samples\":16}");
    hresp_free(&r);
    http_post_json(&d, "/v1/models/dq/log_prob", body, &r);
    CHECK_MSG(r.status == 200 && jnum(r.json, "samples") == 16, "%ld %s", r.status, r.body);
    check_schema(doc, "LogProbResponse", r.json);
    body[strlen(body) - 15] = 0;
    strcat(body, "]}");
    http_post_json(&d, "/v1/models/dq/log_prob", body, &c);
    REQUIRE(c.status == 200);
    int differ = 0, near = 0;
    for (int i = 0; i < 300; i++) {
        double a16 = item(get(r.json, "log_prob"), i), a1 = item(get(c.json, "log_prob"), i);
        differ += fabs(a16 - a1) > 1e-6;
        near += fabs(a16 - a1) < 1;
    }
    CHECK_MSG(differ > 250 && near >= 270, "K=16 vs K=1: %d rows differ, %d within a nat", differ, near);
    char one[80];
    const cJSON *r0 = cJSON_GetArrayItem(get(r.json, "log_prob"), 0);
    int a0, b0;
    sscanf(csv, "%d,%d", &a0, &b0);
    snprintf(one, sizeof one, "{\"inputs\":[[%d,%d]],\"samples\":16}", a0, b0);
    hresp_free(&c);
    http_post_json(&d, "/v1/models/dq/log_prob", one, &c);
    CHECK(c.status == 200);
    CHECK_CLOSE(item(get(c.json, "log_prob"), 0), cJSON_IsNumber(r0) ? r0->valuedouble : NAN, 1e-4, 1e-5);
    hresp_free(&r);
    hresp_free(&c);
    /* flowctl score: the scores do not depend on --batch (they did: the
     * noise came from one generator per request, by row position) */
    {
        char file[300], o1[300], o2[300], o3[300], args[1200];
        snprintf(file, sizeof file, "%s/ints.csv", d.dir);
        snprintf(o1, sizeof o1, "%s/s1.csv", d.dir);
        snprintf(o2, sizeof o2, "%s/s2.csv", d.dir);
        snprintf(o3, sizeof o3, "%s/s3.csv", d.dir);
        FILE *f = fopen(file, "w");
        REQUIRE(f);
        const char *q = csv;
        for (int i = 0; i < 200; i++) { /* the first 200 rows */
            size_t l = strcspn(q, "\n") + 1;
            fwrite(q, 1, l, f);
            q += l;
        }
        fclose(f);
        snprintf(args, sizeof args, "score dq %s --batch 1 -o %s", file, o1);
        CHECK_EQ_INT(flowctl(&d, args), 0);
        snprintf(args, sizeof args, "score dq %s --batch 77 -o %s", file, o2);
        CHECK_EQ_INT(flowctl(&d, args), 0);
        snprintf(args, sizeof args, "score dq %s --batch 77 --samples 8 -o %s", file, o3);
        CHECK_EQ_INT(flowctl(&d, args), 0);
        double s1[200], s2[200], s3[200];
        CHECK_EQ_INT(read_scores(o1, s1, 200), 200);
        CHECK_EQ_INT(read_scores(o2, s2, 200), 200);
        CHECK_EQ_INT(read_scores(o3, s3, 200), 200);
        int diff8 = 0;
        for (int i = 0; i < 200; i++) {
            CHECK_CLOSE(s1[i], s2[i], 1e-4, 1e-5);
            diff8 += fabs(s3[i] - s2[i]) > 1e-6;
        }
        CHECK_MSG(diff8 > 150, "--samples 8 changed %d of 200 scores", diff8);
    }
    /* ?samples= for CSV bodies; above the cap: 400 (query) */
    post(&d, "/v1/models/dq/log_prob?samples=4", "text/csv", NULL, "3,4\n8,9\n", 8, &r);
    CHECK_MSG(r.status == 200 && jnum(r.json, "samples") == 4, "%ld %s", r.status, r.body);
    hresp_free(&r);
    post(&d, "/v1/models/dq/log_prob?samples=65", "text/csv", NULL, "3,4\n", 4, &r);
    CHECK_MSG(r.status == 400 || r.status == 422, "%ld %s", r.status, r.body);
    hresp_free(&r);
    free(body);
    free(csv);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}
