/* test_formats.c: the blob, .npy and CSV modules (core/blob.c, npy.c,
 * data.c's nf_data_csv): blobs written before them re-written byte for
 * byte, truncation refused cleanly, the .npy header and the CSV text. */
#include "../test.h"
#include "../../core/blob.h"
#include "../../core/data.h"
#include "../../core/model.h"
#include "../../core/npy.h"
#include "../../core/train.h"

#include <math.h>

static int read_fixture(const char *name, void **buf, size_t *len) {
    char path[256];
    snprintf(path, sizeof path, "tests/core/fixtures/%s", name);
    return nf_file_read(path, buf, len);
}

/* model files: load, save again from what was loaded, same bytes; every
 * truncation is refused */
TEST(formats_model_fixtures_rewrite_byte_identical) {
    const char *names[] = {"model_v1.flow", "model_v2.flow"};
    for (int k = 0; k < 2; k++) {
        void *buf = NULL, *out = NULL;
        size_t len = 0, olen = 0;
        char err[300];
        REQUIRE(read_fixture(names[k], &buf, &len) == 0);
        nf_model *m = NULL;
        int lrc = nf_model_load(buf, len, &m, err, sizeof err);
        CHECK_MSG(lrc == 0, "%s", err);
        REQUIRE(lrc == 0);
        CHECK((m->dequantizer != NULL) == k);
        const cJSON *h = m->header;
        const cJSON *ca = cJSON_GetObjectItemCaseSensitive(h, "created_at");
        CHECK(nf_model_save_ex(m->flow, m->dequantizer, cJSON_GetObjectItemCaseSensitive(h, "preprocess"),
                               cJSON_GetObjectItemCaseSensitive(h, "metrics"),
                               cJSON_IsString(ca) ? ca->valuestring : NULL, &out, &olen) == 0);
        CHECK(olen == len && out && memcmp(out, buf, len) == 0);
        nf_model_free(m);
        for (size_t n = 0; n < len; n += 7) {
            nf_model *t = NULL;
            int rc = nf_model_load(buf, n, &t, err, sizeof err);
            CHECK_MSG(rc == NF_ECORRUPT || (n < 4 && rc == NF_EFORMAT), "%s: %zu bytes: %d", names[k], n, rc);
            CHECK(t == NULL);
        }
        free(out);
        free(buf);
    }
}

TEST(formats_adam_fixture_rewrite_byte_identical) {
    void *buf = NULL, *out = NULL;
    size_t len = 0, olen = 0;
    REQUIRE(read_fixture("adam.bin", &buf, &len) == 0);
    nf_adam o = {0};
    REQUIRE(nf_adam_load(&o, buf, len) == 0);
    CHECK(o.kind == NF_OPT_ADAMW && o.n == 5 && o.t == 2);
    CHECK(nf_adam_save(&o, &out, &olen) == 0);
    CHECK(olen == len && memcmp(out, buf, len) == 0);
    for (size_t n = 0; n < len; n++) CHECK(nf_adam_load(&o, buf, n) == NF_ECORRUPT || n < 4);
    nf_adam_free(&o);
    free(out);
    free(buf);
}

#ifndef NF_DOUBLE /* the trainer state stores nf_real as the build has it */
TEST(formats_trainer_state_fixture_rewrite_byte_identical) {
    enum { N = 40, D = 2 };
    nf_real x[N * D];
    for (int i = 0; i < N * D; i++) x[i] = (nf_real)((i * 7 + i / 3) % 16);
    nf_flow *f = NULL, *q = NULL;
    char err[300];
    REQUIRE(nf_flow_create("{\"dim\":2,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8],\"seed\":3}", &f,
                           err, sizeof err) == 0);
    REQUIRE(nf_flow_create("{\"dim\":2,\"context_dim\":2,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8],"
                           "\"seed\":5}", &q, err, sizeof err) == 0);
    nf_train_config c;
    nf_train_config_default(&c);
    c.epochs = 2, c.batch_size = 8, c.log_every = 0, c.dequantize = 1, c.levels = 16, c.seed = 11;
    c.lr = 1e-2;
    nf_trainer *t = NULL;
    REQUIRE(nf_trainer_create(f, &c, x, 32, x + 64, 8, &t, err, sizeof err) == 0);
    REQUIRE(nf_trainer_set_dequantizer(t, q, err, sizeof err) == 0);
    void *buf = NULL, *out = NULL;
    size_t len = 0, olen = 0;
    REQUIRE(read_fixture("train_state_v2.bin", &buf, &len) == 0);
    CHECK(nf_trainer_load_state(t, buf, len) == 0);
    CHECK(nf_trainer_save_state(t, &out, &olen) == 0);
    CHECK(olen == len && out && memcmp(out, buf, len) == 0);
    for (size_t n = 0; n < len; n += 5) CHECK(nf_trainer_load_state(t, buf, n) != 0);
    free(out);
    free(buf);
    nf_trainer_free(t);
    nf_flow_free(q);
    nf_flow_free(f);
}
#endif

/* a read past the end sets bad and yields zeros; the writer's CRC trailer */
TEST(formats_blob_reader_fails_cleanly) {
    nf_blob_writer w = nf_blob_writer_init(0);
    nf_blob_put(&w, "ABCD", 4);
    nf_blob_put_u16(&w, 0x1234);
    nf_blob_put_u32(&w, 0xdeadbeef);
    nf_blob_put_u64(&w, 0x0102030405060708ULL);
    nf_blob_put_f64(&w, -2.5);
    nf_real v[3] = {1, -0.5f, 3};
    nf_blob_put_f32s(&w, v, 3);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nf_blob_finish(&w, &buf, &len) == 0);
    CHECK_EQ_INT((int)len, 4 + 2 + 4 + 8 + 8 + 12 + 4);
    const unsigned char *p = buf;
    CHECK(p[4] == 0x34 && p[5] == 0x12 && p[10] == 0x08 && p[17] == 0x01); /* little-endian */
    CHECK(nf_blob_crc_ok(buf, len) && !nf_blob_crc_ok(buf, len - 1));
    nf_blob_reader r = nf_blob_reader_init(buf, len - 4);
    CHECK(memcmp(nf_blob_bytes(&r, 4), "ABCD", 4) == 0);
    CHECK(nf_blob_u16(&r) == 0x1234 && nf_blob_u32(&r) == 0xdeadbeef);
    CHECK(nf_blob_u64(&r) == 0x0102030405060708ULL && nf_blob_f64(&r) == -2.5);
    nf_real u[3];
    nf_blob_f32s(&r, u, 3);
    CHECK(!r.bad && u[0] == 1 && u[1] == -0.5f && u[2] == 3 && nf_blob_left(&r) == 0);
    CHECK(nf_blob_u32(&r) == 0 && r.bad && nf_blob_bytes(&r, 0) == NULL);
    r = nf_blob_reader_init(buf, 5);
    CHECK(nf_blob_bytes(&r, (uint64_t)1 << 62) == NULL && r.bad);
    free(buf);
    char small[4];
    w = nf_blob_writer_fixed(small, sizeof small);
    nf_blob_put_u64(&w, 1);
    CHECK(w.bad);
}

/* the .npy writer's bytes (what the daemon and flowd sample send), read
 * back through the header parser and the loader */
TEST(formats_npy_write_parse) {
    nf_real x[6] = {1, 2, 3, 4, 5, NAN};
    size_t len = 0;
    unsigned char *b = nf_npy_f32(x, 3, 2, &len);
    REQUIRE(b);
    CHECK_EQ_INT((int)len, 128 + 24);
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
    CHECK(memcmp(b, "\x93NUMPY\x01\x00\x76\x00", 10) == 0);
    CHECK(memcmp(b + 10, dict, strlen(dict)) == 0 && b[126] == ' ' && b[127] == '\n');
    nf_npy_header h;
    char err[200];
    CHECK(nf_npy_parse_header(b, len, &h, err, sizeof err) == 0);
    CHECK(!strcmp(h.descr, "<f4") && h.ndim == 2 && h.shape[0] == 3 && h.shape[1] == 2 && h.data_off == 128);
    CHECK(nf_npy_parse_header(b, 40, &h, err, sizeof err) == NF_ECORRUPT && h.data_off == 128);
    free(b);
    b = nf_npy_f32(x, 5, 0, &len);
    REQUIRE(b);
    CHECK(nf_npy_parse_header(b, len, &h, err, sizeof err) == 0 && h.ndim == 1 && h.shape[0] == 5);
    nf_data d;
    CHECK(nf_data_load_npy(b, len, &d, err, sizeof err) == 0 && d.n == 5 && d.d == 1 && d.x[4] == 5);
    nf_data_free(&d);
    free(b);
}

/* one CSV writer: %.9g, a non-finite value an empty field (the API's
 * "empty for out-of-support rows"), the header given or x0,x1,... */
TEST(formats_csv_writer_non_finite_is_empty) {
    nf_real v[6] = {1.5f, -INFINITY, NAN, 0.1f, 2, INFINITY};
    size_t len = 0;
    char *s = nf_data_csv(v, 3, 2, NULL, &len);
    REQUIRE(s);
    CHECK_MSG(!strcmp(s, "x0,x1\n1.5,\n,0.100000001\n2,\n"), "%s", s);
    CHECK(len == strlen(s));
    free(s);
    s = nf_data_csv(v, 6, 1, "log_prob", &len);
    REQUIRE(s);
    CHECK_MSG(!strcmp(s, "log_prob\n1.5\n\n\n0.100000001\n2\n\n"), "%s", s);
    free(s);
}
