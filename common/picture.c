/* picture.c: grayscale and RGB PNG writing (file or memory) over libpng's
 * simplified API, the scatter and tile-grid renderers, and the samples
 * picture of `flowd sample`, the daemon's image/png sample answer and
 * `flowctl sample`.  See picture.h. */
#include "picture.h"

#include "../core/model.h"

#include <png.h> /* libpng: the -I path from pkg-config, not this folder */

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* the simplified API's image header for (w, h, channels) */
static void png_header(png_image *img, int w, int h, int channels) {
    memset(img, 0, sizeof *img);
    img->version = PNG_IMAGE_VERSION;
    img->width = (png_uint_32)w;
    img->height = (png_uint_32)h;
    img->format = channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
}

static int png_args_ok(int w, int h, int channels, const unsigned char *pixels) {
    return pixels && w >= 1 && h >= 1 && w <= FDPIC_MAX_SIDE && h <= FDPIC_MAX_SIDE &&
           (channels == 1 || channels == 3);
}

int fdpic_write_png(const char *path, int w, int h, int channels, const unsigned char *pixels) {
    if (!path || !png_args_ok(w, h, channels, pixels)) return NF_EINVAL;
    size_t n = strlen(path);
    char *tmp = malloc(n + 16);
    if (!tmp) return NF_ENOMEM;
    snprintf(tmp, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        free(tmp);
        return NF_EIO;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return NF_EIO;
    }
    png_image img;
    png_header(&img, w, h, channels);
    int ok = png_image_write_to_stdio(&img, f, 0, pixels, w * channels, NULL);
    png_image_free(&img);
    ok = fflush(f) == 0 && ok;
    ok = fchmod(fd, 0644) == 0 && ok; /* mkstemp creates 0600 */
    ok = fsync(fd) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (ok && rename(tmp, path) != 0) ok = 0;
    if (ok && nf_fsync_dir(path)) ok = 0; /* the rename itself, on disk */
    if (!ok) unlink(tmp);
    free(tmp);
    return ok ? 0 : NF_EIO;
}

int fdpic_write_gray(const char *path, int w, int h, const unsigned char *pixels) {
    return fdpic_write_png(path, w, h, 1, pixels);
}

int fdpic_png_encode(int w, int h, int channels, const unsigned char *pixels, void **png,
                     size_t *len) {
    *png = NULL;
    *len = 0;
    if (!png_args_ok(w, h, channels, pixels)) return NF_EINVAL;
    png_image img;
    png_header(&img, w, h, channels);
    png_alloc_size_t size = 0;
    /* the first call sizes the buffer, the second writes it */
    if (!png_image_write_to_memory(&img, NULL, &size, 0, pixels, w * channels, NULL) || !size) {
        png_image_free(&img);
        return NF_ENOMEM;
    }
    void *buf = malloc(size);
    if (!buf) {
        png_image_free(&img);
        return NF_ENOMEM;
    }
    png_header(&img, w, h, channels);
    if (!png_image_write_to_memory(&img, buf, &size, 0, pixels, w * channels, NULL)) {
        png_image_free(&img);
        free(buf);
        return NF_ENOMEM;
    }
    png_image_free(&img);
    *png = buf;
    *len = size;
    return 0;
}

static int cmp_real(const void *a, const void *b) {
    nf_real x = *(const nf_real *)a, y = *(const nf_real *)b;
    return (x > y) - (x < y);
}

/* [lo, hi]: the q and 1-q quantiles of the m finite values v (sorted in
 * place), widened by a margin and never empty. */
static void robust_range(nf_real *v, int m, double *lo, double *hi) {
    qsort(v, (size_t)m, sizeof *v, cmp_real);
    int a = (int)floor(0.005 * (m - 1)), b = (int)ceil(0.995 * (m - 1));
    double l = v[a], u = v[b];
    double pad = 0.05 * (u - l);
    if (!(pad > 1e-9 * (fabs(l) + fabs(u))) || pad < 1e-12) pad = 0.5 * (fabs(l) + 1.0);
    *lo = l - pad;
    *hi = u + pad;
}

int fdpic_render_scatter(const nf_real *x, int n, int size, unsigned char **pixels) {
    *pixels = NULL;
    if (!x || n < 1 || size < 16 || size > 8192) return NF_EINVAL;
    nf_real *cx = malloc((size_t)n * sizeof *cx), *cy = malloc((size_t)n * sizeof *cy);
    unsigned char *p = malloc((size_t)size * size);
    if (!cx || !cy || !p) {
        free(cx);
        free(cy);
        free(p);
        return NF_ENOMEM;
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(x[2 * i]) && isfinite(x[2 * i + 1])) {
            cx[m] = x[2 * i];
            cy[m] = x[2 * i + 1];
            m++;
        }
    double x0 = -1, x1 = 1, y0 = -1, y1 = 1;
    if (m > 0) {
        robust_range(cx, m, &x0, &x1);
        robust_range(cy, m, &y0, &y1);
    }
    free(cx);
    free(cy);
    memset(p, 248, (size_t)size * size);
    /* pixel column c covers x0 + (c+0.5) * sx; rows run top (y1) to bottom (y0) */
    double sx = (x1 - x0) / size, sy = (y1 - y0) / size;
    if (x0 < 0 && x1 > 0) {
        int c = (int)((0 - x0) / sx);
        for (int r = 0; r < size; r++) p[(size_t)r * size + c] = 215;
    }
    if (y0 < 0 && y1 > 0) {
        int r = (int)((y1 - 0) / sy);
        memset(p + (size_t)r * size, 215, (size_t)size);
    }
    for (int i = 0; i < size; i++) {
        p[i] = p[(size_t)(size - 1) * size + i] = 150;
        p[(size_t)i * size] = p[(size_t)i * size + size - 1] = 150;
    }
    /* a dot is a 3x3 plus; each hit keeps 35% of the brightness at the centre, 60% on the arms, so dense
     * regions go dark and single points stay visible */
    static const int dr[5] = {0, -1, 1, 0, 0}, dc[5] = {0, 0, 0, -1, 1};
    for (int i = 0; i < n; i++) {
        double px = x[2 * i], py = x[2 * i + 1];
        if (!isfinite(px) || !isfinite(py)) continue;
        double fc = (px - x0) / sx, fr = (y1 - py) / sy;
        if (fc < 0 || fr < 0 || fc >= size || fr >= size) continue;
        int c = (int)fc, r = (int)fr;
        for (int k = 0; k < 5; k++) {
            int rr = r + dr[k], cc = c + dc[k];
            if (rr < 1 || cc < 1 || rr >= size - 1 || cc >= size - 1) continue;
            unsigned char *q = p + (size_t)rr * size + cc;
            *q = (unsigned char)(*q * (k ? 0.6 : 0.35));
        }
    }
    *pixels = p;
    return 0;
}

/* tiles across and down for n: cols = want when given (> 0), else
 * ceil(sqrt(n)) exactly; rows = ceil(n/cols) */
static void grid_layout(int n, int want, int *cols, int *rows) {
    int c = (int)ceil(sqrt((double)n));
    while ((int64_t)c * c < n) c++;
    while (c > 1 && (int64_t)(c - 1) * (c - 1) >= n) c--;
    if (want > 0) c = want;
    *cols = c;
    *rows = (n + c - 1) / c;
}

/* a tile's width and the picture's channels for shape (C,H,W): C = 1 and
 * C = 3 one tile, any other C a strip of C gray tiles 1 pixel apart */
static int64_t tile_width(const int shape[3], int *channels) {
    int C = shape[0], W = shape[2];
    *channels = C == 3 ? 3 : 1;
    return C == 1 || C == 3 ? W : (int64_t)C * W + (C - 1);
}

int fdpic_grid_size(int n, const int shape[3], int *w, int *h, int *channels) {
    return fdpic_grid_size_cols(n, 0, shape, w, h, channels);
}

int fdpic_grid_size_cols(int n, int want_cols, const int shape[3], int *w, int *h, int *channels) {
    if (n < 1 || want_cols < 0 || !shape || shape[0] < 1 || shape[1] < 1 || shape[2] < 1)
        return NF_EINVAL;
    int cols, rows;
    grid_layout(n, want_cols, &cols, &rows);
    int64_t tw = tile_width(shape, channels);
    int64_t W = (int64_t)cols * (tw + 1) + 1, H = (int64_t)rows * ((int64_t)shape[1] + 1) + 1;
    if (tw > FDPIC_MAX_SIDE || shape[1] > FDPIC_MAX_SIDE || W > FDPIC_MAX_SIDE || H > FDPIC_MAX_SIDE)
        return NF_ERANGE;
    *w = (int)W;
    *h = (int)H;
    return 0;
}

/* v in [lo, hi] to 0..255 (floored first if asked); non-finite: mid grey */
static unsigned char level(double v, double lo, double hi, int floor_values) {
    if (!isfinite(v)) return 128;
    if (floor_values) v = floor(v);
    v = v < lo ? lo : v > hi ? hi : v;
    return (unsigned char)lround(255.0 * (v - lo) / (hi - lo));
}

int fdpic_render_grid(const nf_real *x, int n, const int shape[3], double lo, double hi,
                      int floor_values, unsigned char **pixels, int *w, int *h, int *channels) {
    return fdpic_render_grid_cols(x, n, 0, shape, lo, hi, floor_values, pixels, w, h, channels);
}

int fdpic_render_grid_cols(const nf_real *x, int n, int want_cols, const int shape[3], double lo,
                           double hi, int floor_values, unsigned char **pixels, int *w, int *h,
                           int *channels) {
    *pixels = NULL;
    int W, H, ch;
    if (!x || !(hi > lo)) return NF_EINVAL;
    int rc = fdpic_grid_size_cols(n, want_cols, shape, &W, &H, &ch);
    if (rc) return rc;
    int cols, rows, C = shape[0], th = shape[1], tw = shape[2];
    grid_layout(n, want_cols, &cols, &rows);
    int stride = (int)tile_width(shape, &ch) + 1; /* one tile (or strip) and its gap */
    unsigned char *p = malloc((size_t)W * (size_t)H * (size_t)ch);
    if (!p) return NF_ENOMEM;
    memset(p, 128, (size_t)W * (size_t)H * (size_t)ch);
    size_t D = (size_t)C * th * tw;
    for (int s = 0; s < n; s++) {
        const nf_real *img = x + (size_t)s * D;
        int r0 = 1 + (s / cols) * (th + 1), c0 = 1 + (s % cols) * stride;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < th; i++)
                for (int j = 0; j < tw; j++) {
                    unsigned char g = level(img[((size_t)c * th + i) * tw + j], lo, hi, floor_values);
                    if (ch == 3) /* RGB: channel c of pixel (i, j) */
                        p[((size_t)(r0 + i) * W + c0 + j) * 3 + c] = g;
                    else /* gray: channel c is the c-th tile of the strip */
                        p[(size_t)(r0 + i) * W + c0 + c * (tw + 1) + j] = g;
                }
    }
    *pixels = p;
    *w = W;
    *h = H;
    *channels = ch;
    return 0;
}

/* nearest-neighbour enlargement by an integer factor k: (h,w,ch) -> (h*k,w*k,ch) */
static unsigned char *zoom(const unsigned char *p, int w, int h, int ch, int k) {
    unsigned char *q = malloc((size_t)w * k * h * k * ch);
    if (!q) return NULL;
    for (int r = 0; r < h * k; r++)
        for (int c = 0; c < w * k; c++)
            memcpy(q + ((size_t)r * w * k + c) * ch, p + ((size_t)(r / k) * w + c / k) * ch, (size_t)ch);
    return q;
}

int fdpic_picture_kind(int D, const int shape[3], int grid_shape[3]) {
    int gs[3] = {0, 0, 0}, kind = 0;
    int side = (int)lround(sqrt((double)D));
    if (shape && shape[0] > 0 && shape[1] > 0 && shape[2] > 0 &&
        (int64_t)shape[0] * shape[1] * shape[2] == D) {
        memcpy(gs, shape, sizeof gs);
        kind = 2;
    } else if (D == 2) {
        kind = 1;
    } else if (D >= 4 && side * side == D) {
        gs[0] = 1, gs[1] = gs[2] = side;
        kind = 2;
    }
    if (grid_shape) memcpy(grid_shape, gs, sizeof gs);
    return kind;
}

int fdpic_render_samples(const nf_real *x, int n, int D, const int shape[3], int have_range,
                         double lo, double hi, int floor_values, int scale,
                         unsigned char **pixels, int *w, int *h, int *channels, char *err,
                         size_t errlen) {
    return fdpic_render_samples_cols(x, n, 0, D, shape, have_range, lo, hi, floor_values, scale,
                                     pixels, w, h, channels, err, errlen);
}

int fdpic_render_samples_cols(const nf_real *x, int n, int cols, int D, const int shape[3],
                              int have_range, double lo, double hi, int floor_values, int scale,
                              unsigned char **pixels, int *w, int *h, int *channels, char *err,
                              size_t errlen) {
    *pixels = NULL;
    unsigned char *pix = NULL;
    int gs[3], ch = 1, rc, kind = fdpic_picture_kind(D, shape, gs);
    if (kind == 1) {
        *w = *h = 512;
        rc = fdpic_render_scatter(x, n, 512, &pix);
    } else if (kind == 2) {
        if (!have_range) { /* the samples' own finite range */
            lo = INFINITY, hi = -INFINITY, floor_values = 0;
            for (size_t i = 0; i < (size_t)n * D; i++)
                if (isfinite(x[i])) {
                    if (x[i] < lo) lo = x[i];
                    if (x[i] > hi) hi = x[i];
                }
            if (!(lo <= hi)) lo = 0, hi = 1;
            else if (!(hi > lo)) hi = lo + 1;
        }
        rc = fdpic_render_grid_cols(x, n, cols, gs, lo, hi, floor_values, &pix, w, h, &ch);
    } else {
        snprintf(err, errlen, "a picture needs an image shape (\"shape\": [C,H,W]), a 2-D model "
                              "(scatter plot) or a dimension that is a square number (image grid); "
                              "this model has %d dims and no shape", D);
        return NF_EUNSUPPORTED;
    }
    if (rc) {
        snprintf(err, errlen, "cannot render the picture: %s", nf_strerror(rc));
        return rc;
    }
    if (scale > 1) {
        if ((int64_t)*w * scale > FDPIC_MAX_SIDE || (int64_t)*h * scale > FDPIC_MAX_SIDE) {
            free(pix);
            snprintf(err, errlen, "scale %d makes the picture too large", scale);
            return NF_ERANGE;
        }
        unsigned char *z = zoom(pix, *w, *h, ch, scale);
        free(pix);
        if (!z) {
            snprintf(err, errlen, "out of memory");
            return NF_ENOMEM;
        }
        pix = z, *w *= scale, *h *= scale;
    }
    *pixels = pix;
    *channels = ch;
    return 0;
}

int fdpic_write_samples(const char *path, const nf_real *x, int n, int D, const int shape[3],
                        int have_range, double lo, double hi, int floor_values, int scale,
                        char *err, size_t errlen) {
    unsigned char *pix = NULL;
    int w = 0, h = 0, ch = 1;
    int rc = fdpic_render_samples(x, n, D, shape, have_range, lo, hi, floor_values, scale, &pix, &w,
                                  &h, &ch, err, errlen);
    if (rc) return rc;
    rc = fdpic_write_png(path, w, h, ch, pix);
    free(pix);
    if (rc) snprintf(err, errlen, "cannot write %s", path);
    return rc;
}
