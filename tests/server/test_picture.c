/* test_picture.c: common/picture.c, the PNG pictures of samples: the grid
 * layout and pixel values at known positions for grayscale, non-square,
 * RGB and many-channel image rows, the picture each kind of model gets,
 * and the PNG bytes themselves (decoded back with libpng, in memory and
 * from a file). */
#include "../test.h"

#include "../../common/picture.h"

#include <png.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* pixel (row y, column x, channel k) of a (h, w, ch) picture */
#define PX(p, w, ch, y, x, k) ((p)[((size_t)(y) * (w) + (x)) * (ch) + (k)])

/* decodes png (len bytes) as 8-bit gray (channels 1) or RGB (3): pixels
 * malloc'd, NULL on failure */
static unsigned char *png_decode(const void *png, size_t len, int channels, int *w, int *h) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&img, png, len)) return NULL;
    img.format = channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    unsigned char *p = malloc(PNG_IMAGE_SIZE(img));
    if (!p || !png_image_finish_read(&img, NULL, p, 0, NULL)) {
        free(p);
        png_image_free(&img);
        return NULL;
    }
    *w = (int)img.width;
    *h = (int)img.height;
    return p;
}

/* grayscale non-square tiles: 5 images of (1, 2, 5) on a 3 x 2 grid, values
 * 0..255 with floor; a gap and the unused sixth cell stay mid grey */
TEST(picture_grid_gray_non_square) {
    enum { N = 5, TH = 2, TW = 5, D = TH * TW };
    static const int shape[3] = {1, TH, TW};
    nf_real x[N * D];
    for (int s = 0; s < N; s++)
        for (int k = 0; k < D; k++) x[s * D + k] = (nf_real)(s * 40 + k * 3) + 0.75f; /* floors to s*40 + 3k */
    int w, h, ch;
    CHECK(fdpic_grid_size(N, shape, &w, &h, &ch) == 0);
    CHECK(w == 3 * (TW + 1) + 1 && h == 2 * (TH + 1) + 1 && ch == 1);
    unsigned char *p = NULL;
    REQUIRE(fdpic_render_grid(x, N, shape, 0, 255, 1, &p, &w, &h, &ch) == 0);
    CHECK(w == 19 && h == 7 && ch == 1);
    for (int s = 0; s < N; s++) {
        int r0 = 1 + (s / 3) * (TH + 1), c0 = 1 + (s % 3) * (TW + 1);
        for (int i = 0; i < TH; i++)
            for (int j = 0; j < TW; j++)
                CHECK_MSG(PX(p, w, 1, r0 + i, c0 + j, 0) == s * 40 + (i * TW + j) * 3, "image %d (%d,%d): %d", s, i,
                          j, PX(p, w, 1, r0 + i, c0 + j, 0));
    }
    /* image 4 is the second cell of row 1: its pixel (1, 4) at (5, 11) */
    CHECK(PX(p, w, 1, 5, 11, 0) == 4 * 40 + 9 * 3);
    CHECK(PX(p, w, 1, 0, 0, 0) == 128 && PX(p, w, 1, 3, 2, 0) == 128 && PX(p, w, 1, 1, 6, 0) == 128); /* gaps */
    CHECK(PX(p, w, 1, 4, 13, 0) == 128 && PX(p, w, 1, 5, 17, 0) == 128); /* the empty sixth cell */
    free(p);
}

/* RGB: 2 images of (3, 2, 3) side by side, channels 0/1/2 = red/green/blue;
 * the range clamps and non-finite values are mid grey */
TEST(picture_grid_rgb) {
    enum { N = 2, C = 3, TH = 2, TW = 3, D = C * TH * TW };
    static const int shape[3] = {C, TH, TW};
    nf_real x[N * D];
    /* value(s, c, i, j) = 10 + 100 c + 20 s + 5 (i*TW + j), on a range of 0..510 */
    for (int s = 0; s < N; s++)
        for (int c = 0; c < C; c++)
            for (int k = 0; k < TH * TW; k++) x[s * D + c * TH * TW + k] = (nf_real)(10 + 100 * c + 20 * s + 5 * k);
    x[1 * D + 2 * TH * TW + 5] = NAN;     /* image 1, blue, (1, 2) */
    x[0 * D + 0 * TH * TW + 0] = -1000;   /* clamps to 0 */
    x[0 * D + 1 * TH * TW + 0] = 1e6;     /* clamps to 510 */
    unsigned char *p = NULL;
    int w, h, ch;
    REQUIRE(fdpic_render_grid(x, N, shape, 0, 510, 0, &p, &w, &h, &ch) == 0);
    CHECK(w == 2 * (TW + 1) + 1 && h == TH + 2 && ch == 3);
    for (int s = 0; s < N; s++)
        for (int i = 0; i < TH; i++)
            for (int j = 0; j < TW; j++)
                for (int c = 0; c < C; c++) {
                    int want = (int)lround(255.0 * (10 + 100 * c + 20 * s + 5 * (i * TW + j)) / 510);
                    if (s == 1 && c == 2 && i == 1 && j == 2) want = 128;
                    if (s == 0 && i == 0 && j == 0 && c == 0) want = 0;
                    if (s == 0 && i == 0 && j == 0 && c == 1) want = 255;
                    int got = PX(p, w, 3, 1 + i, 1 + s * (TW + 1) + j, c);
                    CHECK_MSG(got == want, "image %d (%d,%d) channel %d: %d, want %d", s, i, j, c, got, want);
                }
    CHECK(PX(p, w, 3, 1, 4, 0) == 128 && PX(p, w, 3, 1, 4, 1) == 128 && PX(p, w, 3, 1, 4, 2) == 128); /* the gap */
    /* the same pixels through an RGB PNG in memory */
    void *png = NULL;
    size_t len = 0;
    REQUIRE(fdpic_png_encode(w, h, 3, p, &png, &len) == 0);
    CHECK(len > 8 && !memcmp(png, "\x89PNG\r\n\x1a\n", 8));
    CHECK(((unsigned char *)png)[25] == 2); /* IHDR colour type 2: truecolour */
    int dw, dh;
    unsigned char *q = png_decode(png, len, 3, &dw, &dh);
    REQUIRE(q);
    CHECK(dw == w && dh == h && !memcmp(p, q, (size_t)w * h * 3));
    free(q);
    free(png);
    free(p);
}

/* other channel counts: each image is a strip of its channels as gray
 * tiles, 1 pixel apart */
TEST(picture_grid_channels_as_strips) {
    static const int shape[3] = {2, 2, 2};
    nf_real x[8] = {0, 1, 2, 3, 4, 5, 6, 7}; /* channel 0: 0..3, channel 1: 4..7 */
    unsigned char *p = NULL;
    int w, h, ch;
    REQUIRE(fdpic_render_grid(x, 1, shape, 0, 7, 0, &p, &w, &h, &ch) == 0);
    CHECK(w == 2 * 2 + 1 + 2 && h == 4 && ch == 1);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                CHECK(PX(p, w, 1, 1 + i, 1 + c * 3 + j, 0) == (int)lround(255.0 * (c * 4 + i * 2 + j) / 7));
    CHECK(PX(p, w, 1, 1, 3, 0) == 128); /* between the channels */
    free(p);
    static const int four[3] = {4, 3, 1};
    CHECK(fdpic_grid_size(10, four, &w, &h, &ch) == 0);
    CHECK(w == 4 * (4 * 1 + 3 + 1) + 1 && h == 3 * 4 + 1 && ch == 1);
    static const int huge[3] = {1, 70000, 1}, bad[3] = {1, 0, 3};
    CHECK(fdpic_grid_size(1, huge, &w, &h, &ch) == NF_ERANGE);
    CHECK(fdpic_grid_size(1, bad, &w, &h, &ch) == NF_EINVAL);
    CHECK(fdpic_grid_size(0, four, &w, &h, &ch) == NF_EINVAL);
}

/* which picture a model gets; no shape keeps the old rule */
TEST(picture_kinds_and_samples) {
    int gs[3];
    static const int s3[3] = {3, 4, 4}, wrong[3] = {1, 3, 3};
    CHECK(fdpic_picture_kind(48, s3, gs) == 2 && gs[0] == 3 && gs[1] == 4 && gs[2] == 4);
    CHECK(fdpic_picture_kind(2, NULL, gs) == 1);
    CHECK(fdpic_picture_kind(16, NULL, gs) == 2 && gs[0] == 1 && gs[1] == 4 && gs[2] == 4);
    CHECK(fdpic_picture_kind(5, NULL, gs) == 0);
    CHECK(fdpic_picture_kind(3, NULL, gs) == 0);
    CHECK(fdpic_picture_kind(16, wrong, gs) == 2 && gs[1] == 4); /* a shape that does not hold D is ignored */
    nf_real x[5 * 4];
    for (int i = 0; i < 20; i++) x[i] = (nf_real)i;
    unsigned char *p = NULL;
    int w, h, ch;
    char err[300] = "";
    CHECK(fdpic_render_samples(x, 4, 5, NULL, 0, 0, 1, 0, 1, &p, &w, &h, &ch, err, sizeof err) == NF_EUNSUPPORTED);
    CHECK_MSG(strstr(err, "5 dims") && strstr(err, "shape"), "%s", err);
    CHECK(p == NULL);
    /* the samples' own range: the smallest value black, the largest white */
    static const int s1[3] = {1, 1, 4};
    REQUIRE(fdpic_render_samples(x, 5, 4, s1, 0, 0, 1, 0, 1, &p, &w, &h, &ch, err, sizeof err) == 0);
    CHECK(w == 3 * 5 + 1 && h == 2 * 2 + 1 && ch == 1);
    CHECK(PX(p, w, 1, 1, 1, 0) == 0 && PX(p, w, 1, 3, 1 + 5 + 3, 0) == 255); /* x[0] and x[19] */
    free(p);
    /* a 2-D model: a 512 x 512 scatter plot; scale enlarges */
    REQUIRE(fdpic_render_samples(x, 10, 2, NULL, 0, 0, 1, 0, 2, &p, &w, &h, &ch, err, sizeof err) == 0);
    CHECK(w == 1024 && h == 1024 && ch == 1);
    free(p);
    static const int rgb[3] = {3, 1, 1};
    nf_real c[3] = {0, 1, 2};
    REQUIRE(fdpic_render_samples(c, 1, 3, rgb, 1, 0, 2, 0, 3, &p, &w, &h, &ch, err, sizeof err) == 0);
    CHECK(w == 9 && h == 9 && ch == 3);
    CHECK(PX(p, w, 3, 4, 4, 0) == 0 && PX(p, w, 3, 4, 4, 1) == 128 && PX(p, w, 3, 4, 4, 2) == 255);
    free(p);
}

/* the file writer: an RGB grid through fdpic_write_samples reads back */
TEST(picture_write_samples_rgb_file) {
    char path[] = "/tmp/flowd_test_picture_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    static const int shape[3] = {3, 2, 2};
    nf_real x[4 * 12];
    for (int i = 0; i < 48; i++) x[i] = (nf_real)(i % 4); /* dequantized levels 0..3 */
    char err[300] = "";
    CHECK_MSG(fdpic_write_samples(path, x, 4, 12, shape, 1, 0, 3, 1, 1, err, sizeof err) == 0, "%s", err);
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    REQUIRE(png_image_begin_read_from_file(&img, path));
    CHECK(img.width == 2 * 3 + 1 && img.height == 2 * 3 + 1);
    CHECK(img.format & PNG_FORMAT_FLAG_COLOR);
    img.format = PNG_FORMAT_RGB;
    unsigned char *p = malloc(PNG_IMAGE_SIZE(img));
    REQUIRE(p && png_image_finish_read(&img, NULL, p, 0, NULL));
    /* image 3 (row 1, col 1), pixel (1, 0): channel c holds value index c*4 + 2 -> level 2 -> 170 */
    for (int c = 0; c < 3; c++) CHECK(PX(p, 7, 3, 4 + 1, 4 + 0, c) == 170);
    free(p);
    unlink(path);
    CHECK(fdpic_write_samples("/nonexistent-dir/x.png", x, 4, 12, shape, 1, 0, 3, 1, 1, err, sizeof err) == NF_EIO);
}
