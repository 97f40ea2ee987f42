/* test_images.c: image shapes end to end, against the real flowd binary
 * over HTTP (daemon.c): a dataset's shape from its file (IDX, .npy) or
 * declared on upload (?shape=C,H,W), in GET /v1/datasets and the list; a
 * job on it trains a flow of that shape (or refuses a flow shape that does
 * not hold a row), with hflip augmentation (refused without a shape), and
 * GET /v1/models/{name} says the shape; POST /v1/models/{name}/sample with
 * Accept: image/png answers the PNG grid of those samples (pixels checked
 * against the JSON samples of the same seed), 406 for a model without a
 * shape, 422 for a picture over the pixel limit. */
#include "../test.h"

#include "daemon.h"

#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const QUIET[] = {NULL};

#define CHECK_ERROR(d, r, st, code)                                                                \
    do {                                                                                           \
        CHECK_MSG((r).status == (st) && !strcmp(hresp_error_code(&(r)), (code)),                  \
                  "expected %d %s, got %ld %s", (st), (code), (r).status, (r).body);              \
        CHECK_MSG(dmn_healthy(d), "the daemon stopped answering /healthz after a %d", (st));       \
    } while (0)

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* o[k] is the array [c,h,w] (c 0: is null) */
static int shape_is(const cJSON *o, const char *k, int c, int h, int w) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    if (!c) return cJSON_IsNull(v);
    return cJSON_GetArraySize(v) == 3 && cJSON_GetArrayItem(v, 0)->valuedouble == c &&
           cJSON_GetArrayItem(v, 1)->valuedouble == h && cJSON_GetArrayItem(v, 2)->valuedouble == w;
}

static void be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* IDX u8 images (n, h, w): pixel (i, r, c) = 16 * ((i + r + c) % 16) (so
 * integers in 0..240), malloc'd */
static unsigned char *idx_images(int n, int h, int w, size_t *len) {
    *len = 16 + (size_t)n * h * w;
    unsigned char *b = malloc(*len);
    b[0] = b[1] = 0, b[2] = 0x08, b[3] = 3;
    be32(b + 4, (uint32_t)n), be32(b + 8, (uint32_t)h), be32(b + 12, (uint32_t)w);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++) b[16 + ((size_t)i * h + r) * w + c] = (unsigned char)(16 * ((i + r + c) % 16));
    return b;
}

/* .npy <f4 of shape (n, c, h, w) (c 0: (n, h, w)), values v(i, k) = (i*7 + k) % 5 / 4, malloc'd */
static char *npy_images(int n, int c, int h, int w, size_t *len) {
    char hdr[128];
    int hl = c ? snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, %d, %d), }", n,
                          c, h, w)
               : snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, %d), }", n, h, w);
    size_t D = (size_t)(c ? c : 1) * h * w;
    int H = 10 + hl + 1;
    H += (64 - H % 64) % 64;
    char *p = malloc((size_t)H + (size_t)n * D * 4);
    memcpy(p, "\x93NUMPY\x01\x00", 8);
    p[8] = (char)((H - 10) & 255);
    p[9] = (char)((H - 10) >> 8);
    memset(p + 10, ' ', (size_t)(H - 10));
    memcpy(p + 10, hdr, (size_t)hl);
    p[H - 1] = '\n';
    for (size_t i = 0; i < (size_t)n; i++)
        for (size_t k = 0; k < D; k++) {
            float v = (float)((i * 7 + k) % 5) / 4.0f;
            memcpy(p + H + (i * D + k) * 4, &v, 4); /* little-endian host */
        }
    *len = (size_t)H + (size_t)n * D * 4;
    return p;
}

/* POST /v1/datasets?<query> with body; r filled */
static void upload(dmn *d, const char *query, const char *ctype, const void *body, size_t len, hresp *r) {
    char path[256];
    snprintf(path, sizeof path, "/v1/datasets?%s", query);
    hreq q = {.method = "POST", .path = path, .ctype = ctype, .body = body, .len = len, .has_body = 1};
    dmn_http(d, &q, r);
}

/* ---- datasets ------------------------------------------------------------------ */
static void datasets_body(dmn *d) {
    REQUIRE(dmn_start(d, QUIET, NULL) == 0);
    hresp r;
    char id[64], path[128];
    size_t len;
    unsigned char *idx = idx_images(6, 3, 5, &len);
    upload(d, "name=idx", "application/octet-stream", idx, len, &r);
    free(idx);
    CHECK_MSG(r.status == 201 && shape_is(r.json, "shape", 1, 3, 5), "IDX: %ld %s", r.status, r.body);
    snprintf(id, sizeof id, "%s", jstr(r.json, "id"));
    hresp_free(&r);
    snprintf(path, sizeof path, "/v1/datasets/%s", id);
    http_get(d, path, &r);
    CHECK_MSG(r.status == 200 && shape_is(r.json, "shape", 1, 3, 5), "GET: %s", r.body);
    hresp_free(&r);

    char *npy = npy_images(4, 3, 2, 2, &len);
    upload(d, "name=npy4", "application/x-npy", npy, len, &r);
    free(npy);
    CHECK_MSG(r.status == 201 && shape_is(r.json, "shape", 3, 2, 2), "4-D npy: %ld %s", r.status, r.body);
    hresp_free(&r);
    npy = npy_images(4, 0, 2, 3, &len);
    upload(d, "name=npy3", "application/x-npy", npy, len, &r);
    free(npy);
    CHECK_MSG(r.status == 201 && shape_is(r.json, "shape", 1, 2, 3), "3-D npy: %ld %s", r.status, r.body);
    hresp_free(&r);

    /* CSV rows have none, unless declared */
    const char *csv = "a,b,c,d\n1,2,3,4\n5,6,7,8\n";
    upload(d, "name=csv", "text/csv", csv, strlen(csv), &r);
    CHECK_MSG(r.status == 201 && shape_is(r.json, "shape", 0, 0, 0), "CSV: %ld %s", r.status, r.body);
    hresp_free(&r);
    upload(d, "name=csv2&shape=1,2,2", "text/csv", csv, strlen(csv), &r);
    CHECK_MSG(r.status == 201 && shape_is(r.json, "shape", 1, 2, 2), "CSV ?shape: %ld %s", r.status, r.body);
    hresp_free(&r);
    /* a declared shape overrides the file's (same width) */
    idx = idx_images(2, 2, 2, &len);
    upload(d, "name=idx2&shape=4,1,1", "application/x-idx", idx, len, &r);
    free(idx);
    CHECK_MSG(r.status == 201 && shape_is(r.json, "shape", 4, 1, 1), "IDX ?shape: %ld %s", r.status, r.body);
    hresp_free(&r);

    /* a shape that does not hold a row: 422 naming both */
    upload(d, "name=csv3&shape=1,2,3", "text/csv", csv, strlen(csv), &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    CHECK_MSG(strstr(r.body, "1,2,3") && strstr(r.body, "6 values") && strstr(r.body, "4 values"), "%s", r.body);
    hresp_free(&r);
    static const char *const bad[] = {"shape=1,2", "shape=1,2,2,1", "shape=0,2,2", "shape=a,b,c", "shape=1,,4",
                                      "shape=1,2,2,", "shape=-1,2,2", "shape="};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char q[64];
        snprintf(q, sizeof q, "name=x&%s", bad[i]);
        upload(d, q, "text/csv", csv, strlen(csv), &r);
        CHECK_ERROR(d, r, 400, "invalid_argument");
        CHECK_MSG(strstr(r.body, "C,H,W"), "%s: %s", bad[i], r.body);
        hresp_free(&r);
    }

    /* the list: every dataset with "shape" */
    http_get(d, "/v1/datasets", &r);
    REQUIRE(r.status == 200);
    const cJSON *e;
    int n = 0, shaped = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r.json, "datasets")) {
        n++;
        CHECK_MSG(cJSON_GetObjectItemCaseSensitive(e, "shape") != NULL, "no shape in %s", jstr(e, "name"));
        shaped += cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(e, "shape"));
        if (!strcmp(jstr(e, "name"), "csv")) CHECK(shape_is(e, "shape", 0, 0, 0));
        if (!strcmp(jstr(e, "name"), "npy4")) CHECK(shape_is(e, "shape", 3, 2, 2));
    }
    CHECK_EQ_INT(n, 6);
    CHECK_EQ_INT(shaped, 5);
    hresp_free(&r);
}

TEST_T(images_dataset_shapes, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    datasets_body(&d);
    dmn_cleanup(&d);
}

/* ---- jobs and models ------------------------------------------------------------- */
/* a succeeded training job (the job's JSON); 0 */
static int train(dmn *d, const char *job) {
    char state[32];
    long long id = submit_job(d, job);
    if (!id) return -1;
    if (wait_job(d, id, 90, state, sizeof state)) return -1;
    CHECK_MSG(!strcmp(state, "succeeded"), "job %lld: %s", id, state);
    return strcmp(state, "succeeded") ? -1 : 0;
}

/* uploads 64 IDX images of 4x4 (pixels 0..240); the dataset id into id */
static int upload_idx_4x4(dmn *d, char *id, size_t n) {
    size_t len;
    hresp r;
    unsigned char *idx = idx_images(64, 4, 4, &len);
    upload(d, "name=px", "application/octet-stream", idx, len, &r);
    free(idx);
    int ok = r.status == 201 && shape_is(r.json, "shape", 1, 4, 4);
    CHECK_MSG(ok, "upload: %ld %s", r.status, r.body);
    snprintf(id, n, "%s", jstr(r.json, "id"));
    hresp_free(&r);
    return ok ? 0 : -1;
}

#define PX_FLOW "{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]}"
#define PX_TRAIN "{\"epochs\":2,\"batch_size\":16,\"seed\":3}"
#define PX_TRAIN_HFLIP "{\"epochs\":2,\"batch_size\":16,\"seed\":3,\"augment\":{\"hflip\":true}}"
#define PX_PRE "{\"dequantize\":{\"levels\":256}}"

/* big-endian u32 at p */
static uint32_t get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* POST sample of model with body, Accept image/png */
static void sample_png(dmn *d, const char *model, const char *body, hresp *r) {
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/sample", model);
    hreq q = {.method = "POST", .path = path, .ctype = "application/json", .body = body, .len = strlen(body),
              .has_body = 1, .accept = "image/png"};
    dmn_http(d, &q, r);
}

/* the PNG grid of 10 samples of the 4x4 dequantized model: IHDR 21 x 16
 * gray (cols 4, rows 3, 1-pixel gaps), each tile the JSON samples of the
 * same seed floored and clamped to 0..255 */
static void check_png_grid(dmn *d) {
    hresp r, js;
    char ct[128];
    sample_png(d, "px", "{\"n\":10,\"seed\":5}", &r);
    REQUIRE(r.status == 200);
    CHECK_MSG(hresp_header(&r, "Content-Type", ct, sizeof ct) && !strcmp(ct, "image/png"), "%s", r.headers);
    const unsigned char *b = (const unsigned char *)r.body;
    REQUIRE(r.len > 33 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8) && !memcmp(b + 12, "IHDR", 4));
    CHECK_EQ_INT(get_be32(b + 16), 4 * 5 + 1);
    CHECK_EQ_INT(get_be32(b + 20), 3 * 5 + 1);
    CHECK(b[24] == 8 && b[25] == 0); /* 8-bit grayscale */
    http_post_json(d, "/v1/models/px/sample", "{\"n\":10,\"seed\":5}", &js);
    REQUIRE(js.status == 200);
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    REQUIRE(png_image_begin_read_from_memory(&img, r.body, r.len));
    img.format = PNG_FORMAT_GRAY;
    unsigned char *p = malloc(PNG_IMAGE_SIZE(img));
    REQUIRE(p && png_image_finish_read(&img, NULL, p, 0, NULL));
    int s = 0, bad = 0;
    const cJSON *row, *v;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(js.json, "samples")) {
        int k = 0, r0 = 1 + (s / 4) * 5, c0 = 1 + (s % 4) * 5;
        cJSON_ArrayForEach(v, row) {
            double x = floor(v->valuedouble);
            int want = x < 0 ? 0 : x > 255 ? 255 : (int)x;
            int got = p[(size_t)(r0 + k / 4) * 21 + c0 + k % 4];
            if (got != want && bad++ < 3) CHECK_MSG(0, "sample %d pixel %d: %d, want %d (%g)", s, k, got, want, v->valuedouble);
            k++;
        }
        s++;
    }
    CHECK_EQ_INT(s, 10);
    CHECK(p[0] == 128 && p[21 * 15 + 20] == 128); /* the border; cells 10 and 11 are empty */
    free(p);
    hresp_free(&js);
    hresp_free(&r);
}

static void models_body(dmn *d) {
    static const char *const args[] = {"--max-sample", "1000000", NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    char id[64], job[1024];
    hresp r;
    REQUIRE(upload_idx_4x4(d, id, sizeof id) == 0);
    /* the flow gets the dataset's shape (and can mirror it) */
    snprintf(job, sizeof job, "{\"model\":\"px\",\"dataset\":{\"id\":\"%s\"},\"flow\":%s,\"train\":%s,"
             "\"preprocess\":%s}", id, PX_FLOW, PX_TRAIN_HFLIP, PX_PRE);
    REQUIRE(train(d, job) == 0);
    http_get(d, "/v1/models/px", &r);
    REQUIRE(r.status == 200);
    CHECK_MSG(shape_is(r.json, "shape", 1, 4, 4), "%s", r.body);
    const cJSON *v0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "versions"), 0);
    CHECK_MSG(shape_is(v0, "shape", 1, 4, 4), "%s", r.body);
    CHECK(shape_is(cJSON_GetObjectItemCaseSensitive(v0, "config"), "shape", 1, 4, 4));
    hresp_free(&r);
    check_png_grid(d);
    /* a picture over 16M pixels: refused before sampling */
    sample_png(d, "px", "{\"n\":1000000}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    CHECK_MSG(strstr(r.body, "pixels"), "%s", r.body);
    hresp_free(&r);
    /* a flow shape that does not hold a row: 422 naming both */
    snprintf(job, sizeof job, "{\"model\":\"px2\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"maf\","
             "\"shape\":[1,3,3]}}", id);
    http_post_json(d, "/v1/jobs", job, &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    CHECK_MSG(strstr(r.body, "[1, 3, 3]") && strstr(r.body, "[1, 4, 4]"), "%s", r.body);
    hresp_free(&r);
    /* one that does (another factorisation of the 16 values) is the model's */
    snprintf(job, sizeof job, "{\"model\":\"px2\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"maf\","
             "\"depth\":1,\"hidden\":[8],\"shape\":[1,2,8]},\"train\":%s}", id, PX_TRAIN);
    REQUIRE(train(d, job) == 0);
    http_get(d, "/v1/models/px2", &r);
    CHECK_MSG(shape_is(r.json, "shape", 1, 2, 8), "%s", r.body);
    hresp_free(&r);
    /* RGB: a 4-D .npy of (n, 3, 2, 2) images; its picture is an RGB grid */
    size_t len;
    char *npy = npy_images(64, 3, 2, 2, &len);
    upload(d, "name=rgb", "application/x-npy", npy, len, &r);
    free(npy);
    REQUIRE(r.status == 201);
    snprintf(id, sizeof id, "%s", jstr(r.json, "id"));
    hresp_free(&r);
    snprintf(job, sizeof job, "{\"model\":\"rgb\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"maf\","
             "\"depth\":1,\"hidden\":[8]},\"train\":%s}", id, PX_TRAIN_HFLIP);
    REQUIRE(train(d, job) == 0);
    sample_png(d, "rgb", "{\"n\":4,\"seed\":1}", &r);
    REQUIRE(r.status == 200 && r.len > 33);
    const unsigned char *b = (const unsigned char *)r.body;
    CHECK(!memcmp(b, "\x89PNG\r\n\x1a\n", 8) && get_be32(b + 16) == 7 && get_be32(b + 20) == 7);
    CHECK_MSG(b[24] == 8 && b[25] == 2, "bit depth %d, colour type %d", b[24], b[25]); /* 8-bit RGB */
    hresp_free(&r);
    /* hflip without an image shape: 422 */
    http_post_json(d, "/v1/jobs", "{\"model\":\"m\",\"dataset\":{\"builtin\":\"moons\"},\"flow\":" PX_FLOW
                   ",\"train\":" PX_TRAIN_HFLIP "}", &r);
    CHECK_ERROR(d, r, 422, "invalid_input");
    CHECK_MSG(strstr(r.body, "hflip") && strstr(r.body, "shape"), "%s", r.body);
    hresp_free(&r);
    /* a 2-D model has none */
    REQUIRE(train(d, "{\"model\":\"moons\",\"dataset\":{\"builtin\":\"moons\",\"n\":256},\"flow\":" PX_FLOW
                     ",\"train\":" PX_TRAIN "}") == 0);
    http_get(d, "/v1/models/moons", &r);
    CHECK_MSG(shape_is(r.json, "shape", 0, 0, 0), "%s", r.body);
    CHECK(shape_is(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r.json, "versions"), 0), "shape", 0, 0, 0));
    hresp_free(&r);
    /* ... and no picture answer: 406 with a JSON error */
    sample_png(d, "moons", "{\"n\":10}", &r);
    CHECK_ERROR(d, r, 406, "not_acceptable");
    char ct[128];
    CHECK_MSG(hresp_header(&r, "Content-Type", ct, sizeof ct) && !strncmp(ct, "application/json", 16), "%s",
              r.headers);
    CHECK_MSG(strstr(r.body, "shape"), "%s", r.body);
    hresp_free(&r);
}

TEST_T(images_job_and_model_shapes, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    models_body(&d);
    dmn_cleanup(&d);
}
