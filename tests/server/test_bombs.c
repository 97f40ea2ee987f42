/* test_bombs.c: decompression bombs and parse-memory limits against the real
 * daemon (issue 15).
 *
 * Each bomb is a real gzip stream of zeros dressed as one upload format
 * (CSV, JSON rows, IDX, .npy) that inflates to 300 MiB from about 300 KB.
 * With the default limits it must be refused with 413 payload_too_large
 * (details.limit "inflate_ratio") after about a megabyte of inflation: the
 * daemon's peak RSS (VmHWM) stays far below the inflated size.  Before the
 * fix each was inflated whole (up to 1 GiB) and parsed.
 *
 * The inflated-size limit (--max-inflate) is checked with a body whose
 * ratio is ordinary (pseudo-random digits), and the parse estimate
 * (--max-request-memory) with plain JSON bodies, on an upload and on
 * log_prob; bodies under each limit are still accepted. */
#include "../test.h"

#include "daemon.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define INFLATED ((size_t)300 << 20)

/* gzip of head, then `total` bytes of the repeated unit, then tail */
static unsigned char *gzip_bomb(const char *head, size_t hlen, const char *unit, size_t ulen, size_t total,
                                const char *tail, size_t tlen, size_t *outlen) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) return NULL;
    size_t cap = total / 500 + 65536, have = 0;
    unsigned char *out = malloc(cap);
    size_t blk = 1 << 20;
    char *chunk = malloc(blk);
    for (size_t i = 0; i < blk; i++) chunk[i] = unit[i % ulen];
    size_t sent = 0;
    for (int phase = 0; phase < 3; phase++) {
        const char *src;
        size_t n;
        for (;;) {
            if (phase == 0) src = head, n = hlen;
            else if (phase == 2) src = tail, n = tlen;
            else {
                size_t left = total - sent;
                n = left > blk ? blk : left;
                src = chunk;
                sent += n;
            }
            z.next_in = (Bytef *)src;
            z.avail_in = (uInt)n;
            int flush = phase == 2 ? Z_FINISH : Z_NO_FLUSH;
            int r;
            do {
                if (cap - have < 65536) out = realloc(out, cap *= 2);
                z.next_out = out + have;
                z.avail_out = (uInt)(cap - have);
                r = deflate(&z, flush);
                have = cap - z.avail_out;
            } while (z.avail_out == 0 || (flush == Z_FINISH && r != Z_STREAM_END));
            if (phase != 1 || sent >= total) break;
        }
    }
    deflateEnd(&z);
    free(chunk);
    *outlen = have;
    return out;
}

static unsigned char *gzip_buf(const void *buf, size_t len, size_t *outlen) {
    return gzip_bomb(buf, len, "", 1, 0, "", 0, outlen);
}

static const char *limit_of(const hresp *r) {
    const cJSON *e = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "error") : NULL;
    const cJSON *d = e ? cJSON_GetObjectItemCaseSensitive(e, "details") : NULL;
    const cJSON *l = d ? cJSON_GetObjectItemCaseSensitive(d, "limit") : NULL;
    return cJSON_IsString(l) ? l->valuestring : "";
}

static long post(dmn *d, const char *path, const char *ctype, const void *body, size_t len, hresp *r) {
    hreq q = {.path = path, .ctype = ctype, .body = body, .len = len, .has_body = 1, .timeout_s = 60};
    dmn_http(d, &q, r);
    return r->status;
}

TEST_T(bombs_gzip_zeros_each_format_refused, 180) {
    dmn d;
    CHECK(dmn_init(&d) == 0);
    CHECK(dmn_start(&d, NULL, NULL) == 0);
    long base = dmn_peak_kib(&d);
    /* IDX u8 (n, 1) and .npy |u1 (n, 1) headers declaring 300 Mi rows */
    unsigned char idx[12] = {0, 0, 0x08, 2, 0, 0, 0, 0, 0, 0, 0, 1};
    uint32_t n = (uint32_t)INFLATED;
    idx[4] = (unsigned char)(n >> 24), idx[5] = (unsigned char)(n >> 16), idx[6] = (unsigned char)(n >> 8),
    idx[7] = (unsigned char)n;
    char npy[128];
    char dict[100];
    int dl = snprintf(dict, sizeof dict, "{'descr': '|u1', 'fortran_order': False, 'shape': (%u, 1), }", n);
    int hl = 10 + dl + 1;
    int pad = (64 - hl % 64) % 64;
    memcpy(npy, "\x93NUMPY\x01\x00", 8);
    npy[8] = (char)((dl + 1 + pad) & 0xff), npy[9] = (char)((dl + 1 + pad) >> 8);
    memcpy(npy + 10, dict, (size_t)dl);
    memset(npy + 10 + dl, ' ', (size_t)pad);
    npy[10 + dl + pad] = '\n';
    size_t npylen = (size_t)(11 + dl + pad);
    struct {
        const char *what, *ctype, *head, *unit, *tail;
        size_t hlen, ulen, tlen;
    } bombs[] = {
        {"CSV", "text/csv", "x\n", "0\n", "", 2, 2, 0},
        {"JSON", "application/json", "[", "0,", "0]", 1, 2, 2},
        {"IDX", "application/gzip", (const char *)idx, "\0", "", 12, 1, 0},
        {".npy", "application/x-npy", npy, "\0", "", npylen, 1, 0},
    };
    for (size_t i = 0; i < sizeof bombs / sizeof bombs[0]; i++) {
        size_t blen;
        unsigned char *b = gzip_bomb(bombs[i].head, bombs[i].hlen, bombs[i].unit, bombs[i].ulen, INFLATED,
                                     bombs[i].tail, bombs[i].tlen, &blen);
        CHECK(b != NULL);
        double t0 = dmn_now();
        hresp r;
        post(&d, "/v1/datasets?name=bomb", bombs[i].ctype, b, blen, &r);
        double dt = dmn_now() - t0;
        long pk = dmn_peak_kib(&d);
        printf("  %s bomb: %zu bytes -> %zu inflated: %ld %s limit=%s in %.3f s, VmHWM %ld KiB (start %ld)\n",
               bombs[i].what, blen, INFLATED + bombs[i].hlen + bombs[i].tlen, r.status, hresp_error_code(&r),
               limit_of(&r), dt, pk, base);
        CHECK_EQ_INT(r.status, 413);
        CHECK(!strcmp(hresp_error_code(&r), "payload_too_large"));
        CHECK(!strcmp(limit_of(&r), "inflate_ratio"));
        /* inflated whole, any of these would have taken 300 MiB or more */
        CHECK_MSG(pk < base + 64 * 1024, "peak RSS %ld KiB after the %s bomb (start %ld)", pk, bombs[i].what,
                  base);
        hresp_free(&r);
        free(b);
    }
    hresp r;
    CHECK(http_get(&d, "/v1/datasets", &r) == 0 && r.status == 200);
    CHECK(r.json && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "datasets")) == 0);
    hresp_free(&r);
    CHECK(dmn_healthy(&d));
    dmn_cleanup(&d);
}

/* pseudo-random rows: compress only about 2.5:1 */
static char *noisy_csv(size_t bytes, size_t *len) {
    char *s = malloc(bytes + 64);
    size_t k = (size_t)sprintf(s, "a,b\n");
    uint64_t x = 88172645463325252ull;
    while (k < bytes) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        k += (size_t)sprintf(s + k, "%u.%03u,%u.%03u\n", (unsigned)(x % 1000), (unsigned)(x >> 10) % 1000,
                             (unsigned)(x >> 20) % 1000, (unsigned)(x >> 30) % 1000);
    }
    *len = k;
    return s;
}

TEST(bombs_inflate_limit_checked_while_inflating) {
    dmn d;
    CHECK(dmn_init(&d) == 0);
    const char *args[] = {"--max-inflate", "2097152", NULL};
    CHECK(dmn_start(&d, args, NULL) == 0);
    size_t len, glen;
    char *csv = noisy_csv(3 << 20, &len);
    unsigned char *gz = gzip_buf(csv, len, &glen);
    hresp r;
    post(&d, "/v1/datasets?name=big", "text/csv", gz, glen, &r);
    printf("  %zu bytes of gzip inflating to %zu: %ld %s\n", glen, len, r.status, hresp_error_code(&r));
    CHECK_EQ_INT(r.status, 413);
    CHECK(!strcmp(limit_of(&r), "inflate"));
    const cJSON *e = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "error") : NULL;
    const cJSON *m = e ? cJSON_GetObjectItemCaseSensitive(e, "message") : NULL;
    CHECK(cJSON_IsString(m) && strstr(m->valuestring, "2097152"));
    hresp_free(&r);
    free(gz);
    free(csv);
    /* under the limit, the same kind of body is stored */
    csv = noisy_csv(1 << 20, &len);
    gz = gzip_buf(csv, len, &glen);
    post(&d, "/v1/datasets?name=fits", "text/csv", gz, glen, &r);
    CHECK_EQ_INT(r.status, 201);
    hresp_free(&r);
    free(gz);
    free(csv);
    dmn_cleanup(&d);
}

TEST(bombs_parse_memory_estimated_before_parsing) {
    dmn d;
    CHECK(dmn_init(&d) == 0);
    CHECK(dmn_make_model(&d, "m", 0, NULL) == 0);
    const char *args[] = {"--max-request-memory", "8388608", NULL};
    CHECK(dmn_start(&d, args, NULL) == 0);
    /* 1 MiB of [[0,0],[0,0],...]: ~350,000 tree nodes, about 24 MiB parsed */
    size_t cap = (1 << 20) + 64, k = 0;
    char *js = malloc(cap + 32);
    k += (size_t)sprintf(js, "{\"inputs\":[");
    while (k < (1 << 20)) k += (size_t)sprintf(js + k, "[0,0],");
    k += (size_t)sprintf(js + k - 1, "]}") - 1;
    hresp r;
    post(&d, "/v1/models/m/log_prob", "application/json", js, k, &r);
    printf("  log_prob, %zu bytes of JSON: %ld %s limit=%s\n", k, r.status, hresp_error_code(&r), limit_of(&r));
    CHECK_EQ_INT(r.status, 413);
    CHECK(!strcmp(limit_of(&r), "memory"));
    hresp_free(&r);
    /* the same rows as a dataset upload */
    post(&d, "/v1/datasets?name=rows", "application/json", js + 10, k - 11, &r);
    printf("  dataset upload, %zu bytes of JSON: %ld %s limit=%s\n", k - 11, r.status, hresp_error_code(&r),
           limit_of(&r));
    CHECK_EQ_INT(r.status, 413);
    CHECK(!strcmp(limit_of(&r), "memory"));
    hresp_free(&r);
    /* ... and gzipped: the inflated bytes and the parse are counted */
    size_t glen;
    unsigned char *gz = gzip_buf(js + 10, k - 11, &glen);
    post(&d, "/v1/datasets?name=rows", "application/json", gz, glen, &r);
    CHECK_EQ_INT(r.status, 413);
    CHECK(!strcmp(limit_of(&r), "memory"));
    hresp_free(&r);
    free(gz);
    free(js);
    /* small bodies pass */
    CHECK(http_post_json(&d, "/v1/models/m/log_prob", "{\"inputs\":[[0.5,0.25]]}", &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    hresp_free(&r);
    post(&d, "/v1/datasets?name=small", "application/json", "[[1,2],[3,4],[5,6]]", 19, &r);
    CHECK_EQ_INT(r.status, 201);
    hresp_free(&r);
    dmn_cleanup(&d);
}
