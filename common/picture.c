/* picture.c: grayscale PNG writing over libpng's simplified API, the
 * scatter and tile-grid renderers, and the samples picture of `flowd sample`
 * and `flowctl sample`.  See picture.h. */
#include "picture.h"

#include <png.h> /* libpng: the -I path from pkg-config, not this folder */

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fdpic_write_gray(const char *path, int w, int h, const unsigned char *pixels) {
    if (!path || !pixels || w < 1 || h < 1 || w > 65536 || h > 65536) return NF_EINVAL;
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
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = PNG_FORMAT_GRAY;
    int ok = png_image_write_to_stdio(&img, f, 0, pixels, w, NULL);
    png_image_free(&img);
    ok = fflush(f) == 0 && ok;
    ok = fchmod(fd, 0644) == 0 && ok; /* mkstemp creates 0600 */
    ok = fclose(f) == 0 && ok;
    if (ok && rename(tmp, path) != 0) ok = 0;
    if (!ok) unlink(tmp);
    free(tmp);
    return ok ? 0 : NF_EIO;
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

int fdpic_render_grid(const nf_real *x, int n, int side, double lo, double hi, int floor_values,
                    unsigned char **pixels, int *w, int *h) {
    *pixels = NULL;
    if (!x || n < 1 || side < 1 || side > 4096 || !(hi > lo)) return NF_EINVAL;
    int cols = (int)ceil(sqrt((double)n));
    while ((int64_t)cols * cols < n) cols++;
    while (cols > 1 && (int64_t)(cols - 1) * (cols - 1) >= n) cols--;
    int rows = (n + cols - 1) / cols;
    int64_t W = (int64_t)cols * (side + 1) + 1, H = (int64_t)rows * (side + 1) + 1;
    if (W > 65536 || H > 65536) return NF_ERANGE;
    unsigned char *p = malloc((size_t)W * (size_t)H);
    if (!p) return NF_ENOMEM;
    memset(p, 128, (size_t)W * (size_t)H);
    size_t D = (size_t)side * side;
    for (int i = 0; i < n; i++) {
        int r0 = 1 + (i / cols) * (side + 1), c0 = 1 + (i % cols) * (side + 1);
        for (int r = 0; r < side; r++)
            for (int c = 0; c < side; c++) {
                double v = x[(size_t)i * D + (size_t)r * side + c];
                unsigned char g = 128;
                if (isfinite(v)) {
                    if (floor_values) v = floor(v);
                    v = v < lo ? lo : v > hi ? hi : v;
                    g = (unsigned char)lround(255.0 * (v - lo) / (hi - lo));
                }
                p[(size_t)(r0 + r) * W + c0 + c] = g;
            }
    }
    *pixels = p;
    *w = (int)W;
    *h = (int)H;
    return 0;
}

/* nearest-neighbour enlargement by an integer factor k: (h,w) -> (h*k,w*k) */
static unsigned char *zoom(const unsigned char *p, int w, int h, int k) {
    unsigned char *q = malloc((size_t)w * k * h * k);
    if (!q) return NULL;
    for (int r = 0; r < h * k; r++)
        for (int c = 0; c < w * k; c++) q[(size_t)r * w * k + c] = p[(size_t)(r / k) * w + c / k];
    return q;
}

int fdpic_write_samples(const char *path, const nf_real *x, int n, int D, int have_range,
                        double lo, double hi, int floor_values, int scale, char *err,
                        size_t errlen) {
    unsigned char *pix = NULL;
    int w = 0, h = 0, rc;
    int side = (int)lround(sqrt((double)D));
    if (D == 2) {
        w = h = 512;
        rc = fdpic_render_scatter(x, n, 512, &pix);
    } else if (side * side == D && D >= 4) {
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
        rc = fdpic_render_grid(x, n, side, lo, hi, floor_values, &pix, &w, &h);
    } else {
        snprintf(err, errlen, "PNG output needs a 2-D model (scatter plot) or one whose dimension "
                              "is a square number (image grid); this model has %d dims", D);
        return NF_EUNSUPPORTED;
    }
    if (rc) {
        snprintf(err, errlen, "cannot render the picture: %s", nf_strerror(rc));
        return rc;
    }
    if (scale > 1) {
        if ((int64_t)w * scale > 65536 || (int64_t)h * scale > 65536) {
            free(pix);
            snprintf(err, errlen, "scale %d makes the picture too large", scale);
            return NF_ERANGE;
        }
        unsigned char *z = zoom(pix, w, h, scale);
        free(pix);
        if (!z) return NF_ENOMEM;
        pix = z, w *= scale, h *= scale;
    }
    rc = fdpic_write_gray(path, w, h, pix);
    free(pix);
    if (rc) snprintf(err, errlen, "cannot write %s", path);
    return rc;
}
