/* test_data.c: dataset loaders on valid, truncated, malformed and hostile
 * input (every prefix of each valid binary file is tried), the toy
 * generators, splitting, shuffling and column statistics, and (when Debian's
 * dataset-fashion-mnist is installed) the real Fashion-MNIST test files. */
#include "../test.h"
#include "../../core/data.h"

#include <stdint.h>
#include <unistd.h>
#include <zlib.h>

static char err[512];

#define CHECK_ERR_HAS(sub)                                                           \
    CHECK_MSG(strstr(err, sub) != NULL, "error message '%s' lacks '%s'", err, sub)

/* a .npy file: magic, version, header dict padded to 64 bytes, then data */
static size_t npy_build(unsigned char *out, int major, const char *dict, const void *data,
                        size_t dlen) {
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t hl = dl + 1;
    while ((pre + hl) % 64) hl++;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    out[8] = (unsigned char)(hl & 0xff);
    out[9] = (unsigned char)(hl >> 8);
    if (major != 1) out[10] = (unsigned char)(hl >> 16), out[11] = (unsigned char)(hl >> 24);
    memcpy(out + pre, dict, dl);
    memset(out + pre + dl, ' ', hl - dl - 1);
    out[pre + hl - 1] = '\n';
    if (dlen) memcpy(out + pre + hl, data, dlen);
    return pre + hl + dlen;
}

/* gzip (deflate with windowBits 31) of in; caller frees */
static unsigned char *gz(const void *in, size_t len, size_t *outlen) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) return NULL;
    size_t cap = deflateBound(&z, (uLong)len) + 64;
    unsigned char *out = malloc(cap);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    int r = deflate(&z, Z_FINISH);
    *outlen = cap - z.avail_out;
    deflateEnd(&z);
    if (r != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}

static void be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* Every strict prefix of a valid file must fail cleanly (out zeroed). */
static void check_prefixes(const unsigned char *buf, size_t len, nf_data_format fmt) {
    for (size_t k = 0; k < len; k++) {
        nf_data d;
        unsigned char *copy = malloc(k ? k : 1); /* exact size: ASan sees any over-read */
        memcpy(copy, buf, k);
        int rc = nf_data_load(copy, k, fmt, &d, err, sizeof err);
        CHECK_MSG(rc < 0, "prefix of %zu/%zu bytes loaded", k, len);
        CHECK(d.x == NULL && d.n == 0);
        free(copy);
        nf_data_free(&d);
    }
}

/* ---- CSV ------------------------------------------------------------------ */
TEST(data_csv_valid) {
    static const char *inputs[] = {
        "x,y\n1,2\n3.5, -4e-1\r\n-0.25 ,\t+7\n\n",   /* header, CRLF, blanks */
        "\xEF\xBB\xBF" "1,2\r\n3.5,-0.4\r\n-.25,7.",  /* BOM, no header, no final newline */
    };
    for (int k = 0; k < 2; k++) {
        nf_data d;
        int rc = nf_data_load_csv(inputs[k], strlen(inputs[k]), &d, err, sizeof err);
        CHECK_MSG(rc == 0, "input %d: %s", k, err);
        if (k == 0) {
            CHECK_EQ_INT(d.n, 3);
            CHECK_EQ_INT(d.d, 2);
            REQUIRE(rc == 0 && d.n == 3);
            CHECK_CLOSE(d.x[0], 1, 0, 0);
            CHECK_CLOSE(d.x[3], -0.4, 1e-7, 0);
            CHECK_CLOSE(d.x[4], -0.25, 0, 0);
            CHECK_CLOSE(d.x[5], 7, 0, 0);
            CHECK(!d.is_integer);
            CHECK_CLOSE(d.vmin, -0.4, 1e-7, 0);
            CHECK_CLOSE(d.vmax, 7, 0, 0);
        } else {
            REQUIRE(rc == 0);
            CHECK_EQ_INT(d.n, 3);
            CHECK_CLOSE(d.x[4], -0.25, 0, 0);
        }
        nf_data_free(&d);
    }
    nf_data d;
    REQUIRE(nf_data_load_csv("0\n255\n3\n", 8, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.n, 3);
    CHECK_EQ_INT(d.d, 1);
    CHECK(d.is_integer);
    CHECK(d.vmin == 0 && d.vmax == 255);
    nf_data_free(&d);
    nf_data_free(&d); /* double free of a zeroed struct is a no-op */
    nf_data_free(NULL);
    /* underflow is kept as zero, not an error */
    REQUIRE(nf_data_load_csv("1e-400,1", 8, &d, err, sizeof err) == 0);
    CHECK(d.x[0] == 0);
    nf_data_free(&d);
}

TEST(data_csv_errors) {
    static const struct {
        const char *in;
        int rc;
        const char *msg;
    } cases[] = {
        {"a,b\n1,2\n3,4\n5,6\n7,8\n9,10\n1,2,abc\n", NF_EFORMAT, "line 7: more than 2 columns"},
        {"a,b,c\n1,2,3\n4,5,6\n7,8,9\n1,2,3\n1,2,3\n1,2,abc\n", NF_EFORMAT,
         "line 7, column 3: 'abc' is not a number"},
        {"1,2\n3\n", NF_EFORMAT, "line 2: 1 columns, expected 2"},
        {"1,2\n3,4,5\n", NF_EFORMAT, "line 2: more than 2 columns"},
        {"1,2\n3,nan\n", NF_ENONFINITE, "line 2, column 2: 'nan'"},
        {"1,2\n-Inf,2\n", NF_ENONFINITE, "line 2, column 1"},
        {"1,2\n1e999,2\n", NF_ERANGE, "line 2, column 1: '1e999' is out of"},
        {"1,2\n0x1p3,2\n", NF_EFORMAT, "'0x1p3' is not a number"},
        {"1,2\n1,,\n", NF_EFORMAT, "line 2"},
        {"1,2\n1,\n", NF_EFORMAT, "line 2, column 2: empty cell"},
        {"1,2\n1 2,3\n", NF_EFORMAT, "'1 2' is not a number"},
        {"1,2\n1.2.3,3\n", NF_EFORMAT, "'1.2.3'"},
        {"1,2\n1e,3\n", NF_EFORMAT, "'1e'"},
        {"1,2\n.,3\n", NF_EFORMAT, "'.'"},
        {"x,y\n", NF_EFORMAT, "no data rows"},
        /* pandas' to_csv(): an index column with an empty name, never a feature */
        {",a,b\n0,1.5,2\n1,3,4\n", NF_EFORMAT, "line 1: the first header cell is empty, as pandas"},
        {"\n \t,a\n0,1\n", NF_EFORMAT, "line 2: the first header cell is empty"},
        {"\n\n  \n", NF_EFORMAT, "empty"},
        {"", NF_EFORMAT, "empty"},
    };
#ifndef NF_DOUBLE
    nf_data d0;
    CHECK_EQ_INT(nf_data_load_csv("1e300\n", 6, &d0, err, sizeof err), NF_ERANGE);
#endif
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        nf_data d;
        err[0] = 0;
        int rc = nf_data_load_csv(cases[k].in, strlen(cases[k].in), &d, err, sizeof err);
        CHECK_MSG(rc == cases[k].rc, "case %zu: rc %d, want %d (%s)", k, rc, cases[k].rc, err);
        CHECK_ERR_HAS(cases[k].msg);
        CHECK(d.x == NULL && d.n == 0);
    }
    /* NUL bytes and a huge header of commas followed by blank lines */
    nf_data d;
    CHECK(nf_data_load_csv("1,2\n3,\0\n", 8, &d, err, sizeof err) == NF_EFORMAT);
    size_t big = 1 << 20;
    char *s = malloc(2 * big + 8);
    memset(s, ',', big);
    memset(s + big, '\n', big);
    CHECK(nf_data_load_csv(s, 2 * big, &d, err, sizeof err) < 0);
    free(s);
}

/* ---- .npy ------------------------------------------------------------------ */
TEST(data_npy_valid) {
    unsigned char buf[512];
    float f[6] = {1, 2, 3, 4.5f, -5, 6};
    size_t len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f,
                           sizeof f);
    CHECK_EQ_INT(len % 64, 24); /* header padded to 64, data follows */
    nf_data d;
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.d, 3);
    for (int i = 0; i < 6; i++) CHECK(d.x[i] == (nf_real)f[i]);
    CHECK(!d.is_integer && d.vmin == -5 && d.vmax == 6);
    nf_data_free(&d);
    check_prefixes(buf, len, NF_DATA_NPY);

    double g[3] = {0.125, -1e-3, 2};
    len = npy_build(buf, 2, "{\"descr\":\"<f8\",\"fortran_order\":False,\"shape\":(3,)}", g, sizeof g);
    REQUIRE(nf_data_load(buf, len, NF_DATA_AUTO, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.n, 3);
    CHECK_EQ_INT(d.d, 1);
    CHECK_CLOSE(d.x[1], -1e-3, 1e-10, 1e-6);
    nf_data_free(&d);

    unsigned char u[8] = {0, 1, 2, 3, 250, 251, 252, 255};
    len = npy_build(buf, 3, "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2, 2), }", u,
                    sizeof u);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.d, 4);
    CHECK(d.is_integer && d.vmin == 0 && d.vmax == 255);
    CHECK(d.x[5] == 251);
    nf_data_free(&d);

    int32_t iv[2] = {-7, 100000};
    len = npy_build(buf, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", iv, sizeof iv);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK(d.x[0] == -7 && d.x[1] == 100000 && d.is_integer);
    nf_data_free(&d);

    int64_t lv[2] = {-3, 1LL << 40};
    len = npy_build(buf, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1), }", lv, sizeof lv);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK(d.x[0] == -3 && (double)d.x[1] == 1099511627776.0);
    nf_data_free(&d);

    unsigned char bef[4] = {0x3f, 0xc0, 0, 0}; /* 1.5f big-endian */
    len = npy_build(buf, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1), }", bef, 4);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK(d.x[0] == 1.5);
    nf_data_free(&d);
}

TEST(data_npy_hostile) {
    unsigned char buf[512];
    float f[4] = {1, 2, 3, 4};
    static const struct {
        const char *dict;
        int rc;
        const char *msg;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 2), }", NF_ERANGE, "exceeds"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1000000000000, 1000000000000), }", NF_ERANGE, "exceeds"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", NF_ECORRUPT, "truncated"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", NF_EFORMAT, "after the data"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", NF_EFORMAT, "shape"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2), }", NF_ERANGE, "empty"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 0), }", NF_ERANGE, "empty"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", NF_EFORMAT, "scalar"},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", NF_EUNSUPPORTED, "fortran"},
        {"{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", NF_EUNSUPPORTED, "dtype"},
        {"{'descr': '|f4', 'fortran_order': False, 'shape': (4,), }", NF_EUNSUPPORTED, "dtype"},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }", NF_EFORMAT, "dtype"},
        {"{'descr': '<f4', 'shape': (4,), }", NF_EFORMAT, "fortran_order"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", NF_EFORMAT, "unknown"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,", NF_EFORMAT, "shape"},
        {"['descr']", NF_EFORMAT, "dict"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), } junk", NF_EFORMAT, "junk"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t len = npy_build(buf, 1, cases[k].dict, f, sizeof f);
        nf_data d;
        err[0] = 0;
        int rc = nf_data_load_npy(buf, len, &d, err, sizeof err);
        CHECK_MSG(rc == cases[k].rc, "case %zu: rc %d, want %d (%s)", k, rc, cases[k].rc, err);
        CHECK_ERR_HAS(cases[k].msg);
        CHECK(d.x == NULL);
    }
    /* header length past the end, bad magic, bad version, NaN values */
    size_t len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", f, sizeof f);
    nf_data d;
    buf[9] = 0x7f;
    CHECK(nf_data_load_npy(buf, len, &d, err, sizeof err) == NF_ECORRUPT);
    CHECK_ERR_HAS("past the end");
    len = npy_build(buf, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", f, sizeof f);
    buf[11] = 0xff;
    CHECK(nf_data_load_npy(buf, len, &d, err, sizeof err) == NF_ECORRUPT);
    buf[0] = 'X';
    CHECK(nf_data_load_npy(buf, len, &d, err, sizeof err) == NF_EFORMAT);
    CHECK_ERR_HAS("magic");
    len = npy_build(buf, 7, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", f, sizeof f);
    CHECK(nf_data_load_npy(buf, len, &d, err, sizeof err) == NF_EFORMAT);
    CHECK_ERR_HAS("version 7.0");
    float bad[4] = {1, NAN, 3, 4};
    len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", bad, sizeof bad);
    CHECK(nf_data_load_npy(buf, len, &d, err, sizeof err) == NF_ENONFINITE);
    CHECK_ERR_HAS("row 0, column 1");
#ifndef NF_DOUBLE
    double huge[1] = {1e300};
    len = npy_build(buf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", huge, 8);
    CHECK(nf_data_load_npy(buf, len, &d, err, sizeof err) == NF_ENONFINITE);
#endif
    CHECK(nf_data_load_npy(buf, 3, &d, err, sizeof err) == NF_ECORRUPT);
    CHECK(nf_data_load_npy(NULL, 0, &d, err, sizeof err) < 0);
}

/* ---- IDX ------------------------------------------------------------------- */
/* (n,rows,cols) u8 images in IDX, pixel = (i*7 + j) % 256 */
static size_t idx_images(unsigned char *buf, uint32_t n, uint32_t h, uint32_t w) {
    buf[0] = buf[1] = 0, buf[2] = 0x08, buf[3] = 3;
    be32(buf + 4, n), be32(buf + 8, h), be32(buf + 12, w);
    size_t cnt = (size_t)n * h * w;
    for (size_t i = 0; i < cnt; i++) buf[16 + i] = (unsigned char)((i * 7) % 256);
    return 16 + cnt;
}

TEST(data_idx_valid) {
    unsigned char buf[4096];
    size_t len = idx_images(buf, 3, 28, 28);
    nf_data d;
    for (int zipped = 0; zipped < 2; zipped++) {
        size_t zl = len;
        unsigned char *z = zipped ? gz(buf, len, &zl) : buf;
        REQUIRE(z);
        int rc = nf_data_load_idx(z, zl, &d, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
        REQUIRE(rc == 0);
        CHECK_EQ_INT(d.n, 3);
        CHECK_EQ_INT(d.d, 784);
        CHECK(d.is_integer && d.vmin == 0 && d.vmax == 255);
        CHECK(d.x[1000] == (nf_real)((1000 * 7) % 256));
        nf_data_free(&d);
        REQUIRE(nf_data_load(z, zl, NF_DATA_AUTO, &d, err, sizeof err) == 0);
        CHECK_EQ_INT(d.d, 784);
        nf_data_free(&d);
        if (zipped) {
            check_prefixes(z, zl, NF_DATA_IDX);
            free(z);
        }
    }
    check_prefixes(buf, 16 + 2 * 4, NF_DATA_IDX); /* header + a few bytes: cheap */

    /* labels (n) -> (n,1) */
    unsigned char lab[8 + 5] = {0, 0, 8, 1, 0, 0, 0, 5, 9, 0, 3, 1, 7};
    REQUIRE(nf_data_load_idx(lab, sizeof lab, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.n, 5);
    CHECK_EQ_INT(d.d, 1);
    CHECK(d.x[0] == 9 && d.x[4] == 7);
    nf_data_free(&d);

    /* big-endian float32 and signed int16 */
    unsigned char fl[12 + 8] = {0, 0, 0x0D, 2, 0, 0, 0, 1, 0, 0, 0, 2};
    memcpy(fl + 12, "\x3f\xc0\x00\x00\xc0\x20\x00\x00", 8); /* 1.5, -2.5 */
    REQUIRE(nf_data_load_idx(fl, 20, &d, err, sizeof err) == 0);
    CHECK(d.n == 1 && d.d == 2 && d.x[0] == 1.5 && d.x[1] == -2.5);
    nf_data_free(&d);
    unsigned char sh[8 + 4] = {0, 0, 0x0B, 1, 0, 0, 0, 2, 0xff, 0xfe, 0x01, 0x00};
    REQUIRE(nf_data_load_idx(sh, sizeof sh, &d, err, sizeof err) == 0);
    CHECK(d.x[0] == -2 && d.x[1] == 256);
    nf_data_free(&d);
}

TEST(data_idx_hostile) {
    unsigned char buf[64];
    nf_data d;
    /* declared 1e9 x 28 x 28 with no data */
    buf[0] = buf[1] = 0, buf[2] = 8, buf[3] = 3;
    be32(buf + 4, 1000000000u), be32(buf + 8, 28), be32(buf + 12, 28);
    CHECK(nf_data_load_idx(buf, 16, &d, err, sizeof err) == NF_ERANGE);
    CHECK_ERR_HAS("exceeds");
    be32(buf + 4, 0xffffffffu), be32(buf + 8, 0xffffffffu), be32(buf + 12, 0xffffffffu);
    CHECK(nf_data_load_idx(buf, 16, &d, err, sizeof err) == NF_ERANGE);
    be32(buf + 4, 10), be32(buf + 8, 2), be32(buf + 12, 2);
    CHECK(nf_data_load_idx(buf, 16 + 39, &d, err, sizeof err) == NF_ECORRUPT);
    CHECK_ERR_HAS("truncated");
    memset(buf + 16, 1, 41);
    CHECK(nf_data_load_idx(buf, 16 + 41, &d, err, sizeof err) == NF_EFORMAT);
    be32(buf + 4, 0);
    CHECK(nf_data_load_idx(buf, 16, &d, err, sizeof err) == NF_ERANGE);
    buf[3] = 0;
    CHECK(nf_data_load_idx(buf, 16, &d, err, sizeof err) == NF_EFORMAT);
    buf[3] = 200;
    CHECK(nf_data_load_idx(buf, 64, &d, err, sizeof err) == NF_EFORMAT);
    buf[3] = 3, buf[2] = 0x07;
    CHECK(nf_data_load_idx(buf, 16, &d, err, sizeof err) == NF_EFORMAT);
    CHECK_ERR_HAS("magic");
    buf[2] = 8, buf[1] = 1;
    CHECK(nf_data_load_idx(buf, 16, &d, err, sizeof err) == NF_EFORMAT);
    buf[1] = 0, buf[3] = 3;
    CHECK(nf_data_load_idx(buf, 10, &d, err, sizeof err) == NF_ECORRUPT);
    CHECK(nf_data_load_idx(buf, 2, &d, err, sizeof err) == NF_ECORRUPT);
    /* corrupt gzip: valid header, garbage body */
    unsigned char zb[32] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    memset(zb + 10, 0xff, 22);
    CHECK(nf_data_load_idx(zb, sizeof zb, &d, err, sizeof err) == NF_ECORRUPT);
    CHECK(d.x == NULL);
}

/* ---- image shapes ------------------------------------------------------------ */
#define CHECK_SHAPE(d, c, h, w)                                                          \
    CHECK_MSG((d).shape[0] == (c) && (d).shape[1] == (h) && (d).shape[2] == (w),       \
              "shape [%d,%d,%d], want [%d,%d,%d]", (d).shape[0], (d).shape[1], (d).shape[2], \
              c, h, w)

/* IDX (n,H,W) is [1,H,W] and (n,C,H,W) [C,H,W]; .npy the same; other ranks,
 * CSV and JSON rows have none; gzip keeps it, and the split parts copy it */
TEST(data_image_shapes) {
    unsigned char buf[1024];
    nf_data d;
    size_t len = idx_images(buf, 2, 3, 5); /* non-square: H 3, W 5 */
    REQUIRE(nf_data_load_idx(buf, len, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.d, 15);
    CHECK_SHAPE(d, 1, 3, 5);
    nf_data_free(&d);
    size_t zl;
    unsigned char *z = gz(buf, len, &zl);
    REQUIRE(z);
    REQUIRE(nf_data_load(z, zl, NF_DATA_AUTO, &d, err, sizeof err) == 0);
    CHECK_SHAPE(d, 1, 3, 5);
    nf_data_free(&d);
    free(z);
    /* IDX with 4 dims: (2, 3, 2, 2) */
    buf[3] = 4;
    be32(buf + 4, 2), be32(buf + 8, 3), be32(buf + 12, 2), be32(buf + 16, 2);
    memset(buf + 20, 9, 24);
    REQUIRE(nf_data_load_idx(buf, 20 + 24, &d, err, sizeof err) == 0);
    CHECK_EQ_INT(d.d, 12);
    CHECK_SHAPE(d, 3, 2, 2);
    nf_data_free(&d);
    /* IDX (n, d): a table, no shape */
    buf[3] = 2;
    be32(buf + 4, 3), be32(buf + 8, 4);
    REQUIRE(nf_data_load_idx(buf, 12 + 12, &d, err, sizeof err) == 0);
    CHECK_SHAPE(d, 0, 0, 0);
    nf_data_free(&d);

    float f[2 * 3 * 2 * 4];
    for (int i = 0; i < 48; i++) f[i] = (float)i;
    len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 2, 4), }", f, sizeof f);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK(d.n == 2 && d.d == 24);
    CHECK_SHAPE(d, 3, 2, 4);
    CHECK(d.x[24 + 2 * 8 + 1 * 4 + 3] == 24 + 2 * 8 + 1 * 4 + 3); /* C-H-W order, flat */
    nf_data_free(&d);
    len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 6), }", f, sizeof f);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK_SHAPE(d, 1, 2, 6);
    {
        nf_data tr, va;
        REQUIRE(nf_data_split(&d, 0.25, 0, 1, &tr, &va, NULL) == 0);
        CHECK_SHAPE(tr, 1, 2, 6);
        CHECK_SHAPE(va, 1, 2, 6);
        nf_data_free(&tr), nf_data_free(&va);
    }
    nf_data_free(&d);
    len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 12), }", f, sizeof f);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK_SHAPE(d, 0, 0, 0);
    nf_data_free(&d);
    len = npy_build(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2, 3, 4), }", f, sizeof f);
    REQUIRE(nf_data_load_npy(buf, len, &d, err, sizeof err) == 0);
    CHECK(d.d == 48);
    CHECK_SHAPE(d, 0, 0, 0); /* 5-D: no image shape */
    nf_data_free(&d);

    REQUIRE(nf_data_load("1,2,3,4\n5,6,7,8\n", 16, NF_DATA_CSV, &d, err, sizeof err) == 0);
    CHECK_SHAPE(d, 0, 0, 0);
    nf_data_free(&d);
    REQUIRE(nf_data_load("[[1,2,3,4]]", 11, NF_DATA_JSON, &d, err, sizeof err) == 0);
    CHECK_SHAPE(d, 0, 0, 0);
    nf_data_free(&d);
}

/* A gzip stream inflating past NF_DATA_MAX_INFLATE is refused (not loaded). */
TEST_T(data_idx_gzip_bomb, 300) {
    z_stream z;
    memset(&z, 0, sizeof z);
    REQUIRE(deflateInit2(&z, 1, Z_DEFLATED, 31, 9, Z_RLE) == Z_OK);
    size_t chunk = 1 << 20, nchunks = NF_DATA_MAX_INFLATE / chunk + 1, cap = 16 << 20, have = 0;
    unsigned char *zero = calloc(chunk, 1), *out = malloc(cap);
    unsigned char hdr[16] = {0, 0, 8, 3};
    be32(hdr + 4, 1400000), be32(hdr + 8, 28), be32(hdr + 12, 28);
    for (size_t k = 0; k <= nchunks; k++) {
        int last = k == nchunks;
        z.next_in = k ? zero : hdr, z.avail_in = (uInt)(k ? chunk : 16);
        int r;
        do {
            z.next_out = out + have, z.avail_out = (uInt)(cap - have);
            r = deflate(&z, last ? Z_FINISH : Z_NO_FLUSH);
            have = cap - z.avail_out;
        } while (have < cap && (z.avail_in || (last && r != Z_STREAM_END)));
    }
    deflateEnd(&z);
    REQUIRE(have < cap);
    nf_data d;
    int rc = nf_data_load_idx(out, have, &d, err, sizeof err);
    CHECK_MSG(rc == NF_ERANGE, "rc %d (%s)", rc, err);
    CHECK_ERR_HAS("inflates to more than");
    free(zero);
    free(out);
}

/* ---- JSON ------------------------------------------------------------------ */
TEST(data_json_valid) {
    static const char *in[] = {"{\"rows\":[[1,2.5],[-3,4e2]]}", " [[1,2.5],[-3,400]] \n", "[1,2,3]"};
    nf_data d;
    for (int k = 0; k < 2; k++) {
        REQUIRE(nf_data_load_json(in[k], strlen(in[k]), &d, err, sizeof err) == 0);
        CHECK(d.n == 2 && d.d == 2 && d.x[1] == 2.5 && d.x[3] == 400 && d.vmin == -3);
        nf_data_free(&d);
        REQUIRE(nf_data_load(in[k], strlen(in[k]), NF_DATA_AUTO, &d, err, sizeof err) == 0);
        CHECK(d.n == 2);
        nf_data_free(&d);
    }
    REQUIRE(nf_data_load_json(in[2], strlen(in[2]), &d, err, sizeof err) == 0);
    CHECK(d.n == 3 && d.d == 1 && d.x[2] == 3 && d.is_integer);
    nf_data_free(&d);
}

TEST(data_json_errors) {
    static const struct {
        const char *in;
        int rc;
        const char *msg;
    } cases[] = {
        {"{\"rows\":[[1,2],[3,4],[5]]}", NF_EFORMAT, "rows[2] has 1 values, expected 2"},
        {"[[1,2],[3,4,5]]", NF_EFORMAT, "rows[1] has 3 values"},
        {"[[1,2],[3,NaN]]", NF_EFORMAT, "parse error"},
        {"[[1,2],[3,1e999]]", NF_ENONFINITE, "rows[1][1]"},
        {"[[1,2],[3,\"4\"]]", NF_EFORMAT, "rows[1][1] is not a number"},
        {"[[1,2],3]", NF_EFORMAT, "rows[1] is not an array"},
        {"[1,[2]]", NF_EFORMAT, "rows[1]"},
        {"[]", NF_ERANGE, "no rows"},
        {"[[]]", NF_ERANGE, "empty"},
        {"{\"data\":[[1]]}", NF_EFORMAT, "expected"},
        {"[[1]] x", NF_EFORMAT, "trailing"},
        {"[[1,2],[3,", NF_EFORMAT, "parse error"},
        {"", NF_EFORMAT, "empty"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        nf_data d;
        err[0] = 0;
        int rc = nf_data_load_json(cases[k].in, strlen(cases[k].in), &d, err, sizeof err);
        CHECK_MSG(rc == cases[k].rc, "case %zu: rc %d, want %d (%s)", k, rc, cases[k].rc, err);
        CHECK_ERR_HAS(cases[k].msg);
        CHECK(d.x == NULL);
    }
#ifndef NF_DOUBLE
    nf_data d;
    CHECK(nf_data_load_json("[[1e300]]", 9, &d, err, sizeof err) == NF_ERANGE);
#endif
}

/* ---- dispatch and files ----------------------------------------------------- */
TEST(data_load_auto_and_file) {
    const char *csv = "a,b\n1,2\n3,4\n";
    size_t zl;
    unsigned char *z = gz(csv, strlen(csv), &zl);
    REQUIRE(z);
    nf_data d;
    CHECK(nf_data_detect(csv, strlen(csv)) == NF_DATA_CSV);
    CHECK(nf_data_detect("[[1]]", 5) == NF_DATA_JSON);
    REQUIRE(nf_data_load(z, zl, NF_DATA_AUTO, &d, err, sizeof err) == 0); /* gzipped CSV */
    CHECK(d.n == 2 && d.d == 2 && d.x[3] == 4);
    nf_data_free(&d);
    REQUIRE(nf_data_load(z, zl, NF_DATA_CSV, &d, err, sizeof err) == 0);
    nf_data_free(&d);
    nf_data_format f;
    CHECK(nf_data_format_parse("npy", &f) == 0 && f == NF_DATA_NPY);
    CHECK(nf_data_format_parse("xls", &f) == NF_EINVAL);
    CHECK(strcmp(nf_data_format_name(NF_DATA_IDX), "idx") == 0);

    char path[] = "/tmp/flowd_test_data_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, z, zl) == (ssize_t)zl);
    close(fd);
    REQUIRE(nf_data_load_file(path, NF_DATA_AUTO, &d, err, sizeof err) == 0);
    CHECK(d.n == 2 && d.x[0] == 1);
    nf_data_free(&d);
    unlink(path);
    CHECK(nf_data_load_file(path, NF_DATA_AUTO, &d, err, sizeof err) == NF_EIO);
    CHECK_ERR_HAS("cannot open");
    free(z);
}

/* ---- generators ------------------------------------------------------------- */
TEST(data_builtin_generators) {
    const char *const *names = nf_data_builtin_names();
    int count = 0;
    for (; names[count]; count++) {
        const char *nm = names[count];
        nf_data a, b, c;
        int64_t n = 2000;
        REQUIRE(nf_data_builtin(nm, n, -1, 42, &a, err, sizeof err) == 0);
        REQUIRE(nf_data_builtin(nm, n, -1, 42, &b, err, sizeof err) == 0);
        REQUIRE(nf_data_builtin(nm, n, -1, 43, &c, err, sizeof err) == 0);
        CHECK_EQ_INT(a.n, n);
        CHECK_EQ_INT(a.d, 2);
        CHECK_MSG(memcmp(a.x, b.x, (size_t)n * 2 * sizeof(nf_real)) == 0, "%s: same seed differs", nm);
        CHECK_MSG(memcmp(a.x, c.x, (size_t)n * 2 * sizeof(nf_real)) != 0, "%s: seeds 42, 43 agree", nm);
        double m[2], s[2];
        REQUIRE(nf_data_stats(&a, m, s) == 0);
        for (int64_t i = 0; i < 2 * n; i++)
            CHECK_MSG(isfinite(a.x[i]) && fabs(a.x[i]) <= 5, "%s: value %g", nm, (double)a.x[i]);
        CHECK_MSG(a.vmin >= -5 && a.vmax <= 5 && !a.is_integer, "%s range", nm);
        /* roughly standardized: spread like a unit-ish scale, not collapsed */
        for (int j = 0; j < 2; j++) CHECK_MSG(s[j] > 0.5 && s[j] < 4 && fabs(m[j]) < 1.5, "%s: mean %g std %g", nm, m[j], s[j]);
        nf_data_free(&a);
        nf_data_free(&b);
        nf_data_free(&c);
        for (int64_t small = 1; small <= 5; small++) {
            REQUIRE(nf_data_builtin(nm, small, 0.0, 1, &a, err, sizeof err) == 0);
            CHECK_EQ_INT(a.n, small);
            nf_data_free(&a);
        }
    }
    CHECK_EQ_INT(count, 7);
    nf_data a;
    CHECK(nf_data_builtin("swissroll", 10, -1, 0, &a, err, sizeof err) == NF_EINVAL);
    CHECK_ERR_HAS("8gaussians");
    CHECK(nf_data_builtin("moons", 0, -1, 0, &a, err, sizeof err) == NF_ERANGE);
    CHECK(nf_data_builtin("moons", (int64_t)1 << 40, -1, 0, &a, err, sizeof err) == NF_ERANGE);
    CHECK(nf_data_builtin("moons", 10, NAN, 0, &a, err, sizeof err) == NF_EINVAL);
    CHECK(a.x == NULL);
}

/* Shape checks of a few sets against their definitions. */
TEST(data_builtin_shapes) {
    nf_data a;
    /* 8gaussians: every point near one of 8 centres at radius 4/1.414 */
    REQUIRE(nf_data_builtin("8gaussians", 1000, 0.0, 5, &a, err, sizeof err) == 0);
    for (int64_t i = 0; i < a.n; i++) CHECK_CLOSE(hypot(a.x[2 * i], a.x[2 * i + 1]), 4 / 1.414, 1e-5, 0);
    nf_data_free(&a);
    /* rings without noise: radii 3, 2.25, 1.5, .75, a quarter each */
    REQUIRE(nf_data_builtin("rings", 400, 0.0, 5, &a, err, sizeof err) == 0);
    int cnt[4] = {0};
    for (int64_t i = 0; i < a.n; i++) {
        double r = hypot(a.x[2 * i], a.x[2 * i + 1]);
        for (int k = 0; k < 4; k++) cnt[k] += fabs(r - 3 * (1 - 0.25 * k)) < 1e-5;
    }
    for (int k = 0; k < 4; k++) CHECK_EQ_INT(cnt[k], 100);
    nf_data_free(&a);
    /* checkerboard: floor(x/2) + floor(y/2) even on [-4,4)^2 */
    REQUIRE(nf_data_builtin("checkerboard", 1000, -1, 5, &a, err, sizeof err) == 0);
    for (int64_t i = 0; i < a.n; i++) {
        double x = a.x[2 * i], y = a.x[2 * i + 1];
        CHECK(x >= -4 && x < 4 && y >= -4 && y < 4);
        CHECK_MSG(((long)floor(x / 2) + (long)floor(y / 2)) % 2 == 0, "(%g,%g) on a white square", x, y);
    }
    nf_data_free(&a);
    /* circles without noise: radii 3 and 1.5, half each */
    REQUIRE(nf_data_builtin("circles", 101, 0.0, 5, &a, err, sizeof err) == 0);
    int outer = 0;
    for (int64_t i = 0; i < a.n; i++) {
        double r = hypot(a.x[2 * i], a.x[2 * i + 1]);
        CHECK(fabs(r - 3) < 1e-5 || fabs(r - 1.5) < 1e-5);
        outer += fabs(r - 3) < 1e-5;
    }
    CHECK_EQ_INT(outer, 50);
    nf_data_free(&a);
}

/* ---- split, shuffle, stats ----------------------------------------------------- */
TEST(data_split_and_shuffle) {
    nf_data all;
    REQUIRE(nf_data_alloc(&all, 100, 3, err, sizeof err) == 0);
    for (int i = 0; i < 100; i++)
        for (int j = 0; j < 3; j++) all.x[i * 3 + j] = (nf_real)(i * 10 + j);
    REQUIRE(nf_data_summarize(&all, err, sizeof err) == 0);
    nf_data tr, va, te, tr2, va2, te2;
    REQUIRE(nf_data_split(&all, 0.1, 0.2, 7, &tr, &va, &te) == 0);
    CHECK_EQ_INT(tr.n, 70);
    CHECK_EQ_INT(va.n, 10);
    CHECK_EQ_INT(te.n, 20);
    CHECK(tr.d == 3 && tr.is_integer && tr.vmax == all.vmax && te.vmin == all.vmin);
    int seen[100] = {0};
    const nf_data *parts[3] = {&tr, &va, &te};
    for (int p = 0; p < 3; p++)
        for (int64_t i = 0; i < parts[p]->n; i++) {
            int r = (int)parts[p]->x[i * 3] / 10;
            REQUIRE(r >= 0 && r < 100);
            seen[r]++;
            CHECK(parts[p]->x[i * 3 + 2] == (nf_real)(r * 10 + 2)); /* whole rows copied */
        }
    for (int i = 0; i < 100; i++) CHECK_EQ_INT(seen[i], 1);
    REQUIRE(nf_data_split(&all, 0.1, 0.2, 7, &tr2, &va2, &te2) == 0);
    CHECK(memcmp(tr.x, tr2.x, 70 * 3 * sizeof(nf_real)) == 0);
    int in_order = 1;
    for (int64_t i = 1; i < tr.n; i++) in_order &= tr.x[i * 3] > tr.x[(i - 1) * 3];
    CHECK(!in_order);
    nf_data_free(&tr), nf_data_free(&va), nf_data_free(&te);
    nf_data_free(&tr2), nf_data_free(&va2), nf_data_free(&te2);
    REQUIRE(nf_data_split(&all, 0, 0, 1, &tr, NULL, NULL) == 0);
    CHECK_EQ_INT(tr.n, 100);
    nf_data_free(&tr);
    REQUIRE(nf_data_split(&all, 0, 0.5, 1, &tr, &va, &te) == 0);
    CHECK(va.n == 0 && va.x == NULL && te.n == 50);
    nf_data_free(&tr), nf_data_free(&va), nf_data_free(&te);
    CHECK(nf_data_split(&all, 0.5, 0.5, 1, &tr, &va, &te) == NF_EINVAL);
    CHECK(nf_data_split(&all, -0.1, 0, 1, &tr, &va, &te) == NF_EINVAL);
    CHECK(nf_data_split(&all, NAN, 0, 1, &tr, &va, &te) == NF_EINVAL);
    CHECK(nf_data_split(&all, 0.1, 0, 1, &tr, NULL, &te) == NF_EINVAL);
    CHECK(tr.x == NULL);
    nf_data_free(&all);

    /* Fisher-Yates: each of the 6 orders of 3 items about 1/6 of the time */
    nf_rng r;
    nf_rng_seed(&r, 3);
    int counts[6] = {0};
    for (int t = 0; t < 6000; t++) {
        int64_t idx[3] = {0, 1, 2};
        REQUIRE(nf_data_shuffle_index(idx, 3, &r) == 0);
        CHECK(idx[0] + idx[1] + idx[2] == 3 && idx[0] != idx[1] && idx[1] != idx[2] && idx[0] != idx[2]);
        counts[idx[0] * 2 + (idx[1] > idx[2])]++;
    }
    for (int k = 0; k < 6; k++) CHECK_MSG(counts[k] > 850 && counts[k] < 1150, "order %d: %d", k, counts[k]);
    CHECK(nf_data_shuffle_index(NULL, 0, &r) == 0);
    CHECK(nf_data_shuffle_index(NULL, -1, &r) == NF_EINVAL);
}

TEST(data_stats) {
    nf_data d;
    REQUIRE(nf_data_alloc(&d, 4, 2, err, sizeof err) == 0);
    nf_real v[8] = {1, 1e4f, 2, 1e4f, 3, 1e4f, 4, 1e4f};
    memcpy(d.x, v, sizeof v);
    double m[2], s[2];
    REQUIRE(nf_data_stats(&d, m, s) == 0);
    CHECK_CLOSE(m[0], 2.5, 1e-12, 0);
    CHECK_CLOSE(s[0], sqrt(1.25), 1e-12, 0);
    CHECK_CLOSE(m[1], 1e4, 1e-9, 0);
    CHECK(s[1] == 0);
    nf_data_free(&d);
    /* large offset, small spread: the two-pass form keeps the digits */
    REQUIRE(nf_data_builtin("moons", 1000, -1, 9, &d, err, sizeof err) == 0);
    double mref[2] = {0}, sref[2] = {0};
    for (int64_t i = 0; i < d.n; i++)
        for (int j = 0; j < 2; j++) mref[j] += d.x[i * 2 + j];
    for (int j = 0; j < 2; j++) mref[j] /= (double)d.n;
    for (int64_t i = 0; i < d.n; i++)
        for (int j = 0; j < 2; j++) sref[j] += pow(d.x[i * 2 + j] - mref[j], 2);
    REQUIRE(nf_data_stats(&d, m, s) == 0);
    for (int j = 0; j < 2; j++) {
        CHECK_CLOSE(m[j], mref[j], 1e-12, 1e-12);
        CHECK_CLOSE(s[j], sqrt(sref[j] / (double)d.n), 1e-12, 1e-12);
    }
    nf_data_free(&d);
    CHECK(nf_data_stats(&d, m, s) == NF_EINVAL);
    CHECK(nf_data_alloc(&d, 1 << 20, 1 << 12, err, sizeof err) == NF_ERANGE);
    CHECK(nf_data_alloc(&d, 0, 1, err, sizeof err) == NF_ERANGE);
}

/* ---- the real thing ------------------------------------------------------------ */
#define FMNIST "/usr/share/datasets/fashion-mnist/"
TEST(data_fashion_mnist) {
    if (access(FMNIST "t10k-images-idx3-ubyte.gz", R_OK) != 0) {
        printf("data_fashion_mnist: skipped (apt-get install dataset-fashion-mnist)\n");
        return;
    }
    nf_data im, lab;
    int rc = nf_data_load_file(FMNIST "t10k-images-idx3-ubyte.gz", NF_DATA_AUTO, &im, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    REQUIRE(rc == 0);
    CHECK_EQ_INT(im.n, 10000);
    CHECK_EQ_INT(im.d, 784);
    CHECK(im.is_integer && im.vmin == 0 && im.vmax == 255);
    rc = nf_data_load_file(FMNIST "t10k-labels-idx1-ubyte.gz", NF_DATA_IDX, &lab, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    REQUIRE(rc == 0);
    CHECK_EQ_INT(lab.n, 10000);
    CHECK_EQ_INT(lab.d, 1);
    CHECK(lab.is_integer && lab.vmin == 0 && lab.vmax == 9);
    int hist[10] = {0};
    for (int64_t i = 0; i < lab.n; i++) hist[(int)lab.x[i]]++;
    for (int k = 0; k < 10; k++) CHECK_EQ_INT(hist[k], 1000); /* balanced test set */
    nf_data_free(&im);
    nf_data_free(&lab);
}
