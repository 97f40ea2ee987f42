/* cmd_sample.c: `flowd sample --model M.flow -n N -o out.{csv,npy,png}`,
 * draws from a trained model: z ~ base with its standard deviations scaled
 * by the temperature, x = T(z), in the data's own units (preprocessing
 * layers are part of the flow).
 *
 * The output format follows the file's extension:
 *   .csv  a header x0,x1,... and one row per sample (%.9g)
 *   .npy  NumPy format 1.0, dtype <f4, shape (N, D)
 *   .png  2-D models: a scatter plot; models whose D is a square (784 =
 *         28x28): a grid of ceil(sqrt N) tiles, dequantized pixel models'
 *         values floored and clamped to [0, levels-1], other models scaled
 *         from the samples' own min..max. */
#include "cmd.h"
#include "png.h"

#include "../core/data.h"
#include "../core/model.h"
#include "../core/nf_json.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: flowd sample --model MODEL.flow -n N -o OUT [--temperature T] [--seed S]\n"
            "\n"
            "Draws N samples from a trained model and writes them to OUT, whose\n"
            "extension picks the format: .csv, .npy (float32) or .png (a scatter plot\n"
            "for 2-D models, an image grid for models whose dimension is a square,\n"
            "e.g. 784 = 28x28).\n"
            "\n"
            "  --model FILE        a model file written by 'flowd train'\n"
            "  -n, --num N         number of samples, 1..10000000 (default 1000)\n"
            "  -o, --out FILE      output file (.csv, .npy or .png)\n"
            "  --temperature T     scale of the base distribution's std, > 0 (default 1)\n"
            "  --seed S            random seed (default 0); the same seed gives the same\n"
            "                      samples\n"
            "  --scale K           PNG only: enlarge the picture K times, 1..16 (default 1)\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static const char *ext_of(const char *path) {
    const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
    return dot && (!slash || dot > slash) ? dot + 1 : "";
}

static int parse_num(const char *s, double *out) { return nf_parse_num(s, -HUGE_VAL, HUGE_VAL, out) ? -1 : 0; }

static int write_csv(const char *path, const nf_real *x, int n, int D) {
    /* through nf_file_write (temp file + rename) like every other output */
    size_t cap = (size_t)n * D * 18 + (size_t)D * 12 + 64, len = 0;
    char *b = malloc(cap);
    if (!b) return NF_ENOMEM;
    for (int j = 0; j < D; j++) len += (size_t)snprintf(b + len, cap - len, j ? ",x%d" : "x%d", j);
    b[len++] = '\n';
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < D; j++) {
            if (j) b[len++] = ',';
            len += (size_t)snprintf(b + len, cap - len, "%.9g", (double)x[(size_t)i * D + j]);
        }
        b[len++] = '\n';
    }
    int rc = nf_file_write(path, b, len);
    free(b);
    return rc;
}

static int write_npy(const char *path, const nf_real *x, int n, int D) {
    /* magic, version 1.0, u16 header length, a Python dict literal padded
     * with spaces and ended by '\n' so the data starts 64-byte aligned */
    char hdr[128];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }",
                      n, D);
    int total = 10 + hl + 1;
    int pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)hl + pad + 1, len = 10 + hlen + (size_t)n * D * 4;
    unsigned char *b = malloc(len);
    if (!b) return NF_ENOMEM;
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = (unsigned char)(hlen & 0xff);
    b[9] = (unsigned char)(hlen >> 8);
    memcpy(b + 10, hdr, (size_t)hl);
    memset(b + 10 + hl, ' ', (size_t)pad);
    b[10 + hlen - 1] = '\n';
    unsigned char *p = b + 10 + hlen;
    for (size_t i = 0; i < (size_t)n * D; i++, p += 4) {
        float v = (float)x[i];
        uint32_t u;
        memcpy(&u, &v, 4);
        p[0] = u & 0xff, p[1] = (u >> 8) & 0xff, p[2] = (u >> 16) & 0xff, p[3] = u >> 24;
    }
    int rc = nf_file_write(path, b, len);
    free(b);
    return rc;
}

/* nearest-neighbour enlargement by an integer factor k: (h,w) -> (h*k,w*k) */
static unsigned char *zoom(const unsigned char *p, int w, int h, int k) {
    unsigned char *q = malloc((size_t)w * k * h * k);
    if (!q) return NULL;
    for (int r = 0; r < h * k; r++)
        for (int c = 0; c < w * k; c++) q[(size_t)r * w * k + c] = p[(size_t)(r / k) * w + c / k];
    return q;
}

static int write_png(const char *path, const nf_model *m, const nf_real *x, int n, int D,
                     int scale, char *err, size_t errlen) {
    unsigned char *pix = NULL;
    int w, h, rc;
    int side = (int)lround(sqrt((double)D));
    if (D == 2) {
        w = h = 512;
        rc = png_render_scatter(x, n, 512, &pix);
    } else if (side * side == D && D >= 4) {
        double lo, hi;
        int fl = 0;
        if (m->dequantize) {
            lo = 0, hi = m->levels - 1, fl = 1;
        } else {
            /* the samples' own range */
            size_t N = (size_t)n * D, k = 0;
            nf_real *v = malloc(N * sizeof *v);
            if (!v) return NF_ENOMEM;
            for (size_t i = 0; i < N; i++)
                if (isfinite(x[i])) v[k++] = x[i];
            lo = 0, hi = 1;
            if (k) {
                nf_real mn = v[0], mx = v[0];
                for (size_t i = 1; i < k; i++) mn = v[i] < mn ? v[i] : mn, mx = v[i] > mx ? v[i] : mx;
                lo = mn, hi = mx > mn ? mx : mn + 1;
            }
            free(v);
        }
        rc = png_render_grid(x, n, side, lo, hi, fl, &pix, &w, &h);
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
            snprintf(err, errlen, "--scale %d makes the picture too large", scale);
            return NF_ERANGE;
        }
        unsigned char *z = zoom(pix, w, h, scale);
        free(pix);
        if (!z) return NF_ENOMEM;
        pix = z, w *= scale, h *= scale;
    }
    rc = png_write_gray(path, w, h, pix);
    free(pix);
    if (rc) snprintf(err, errlen, "cannot write %s", path);
    return rc;
}

int cmd_sample(int argc, char **argv) {
    const char *model_path = NULL, *out_path = NULL;
    double n_d = 1000, temp = 1.0, seed_d = 0, scale_d = 1;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"num", required_argument, 0, 'n'},
                                         {"out", required_argument, 0, 'o'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"seed", required_argument, 0, 's'},
                                         {"scale", required_argument, 0, 'z'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:n:o:t:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'n':
            if (parse_num(optarg, &n_d) || n_d != floor(n_d) || n_d < 1 || n_d > 10000000) {
                fprintf(stderr, "flowd sample: -n must be an integer in 1..10000000, not '%s'\n", optarg);
                return 1;
            }
            break;
        case 't':
            if (parse_num(optarg, &temp) || !(temp > 0) || temp > 1e3) {
                fprintf(stderr, "flowd sample: --temperature must be a number in (0, 1000], not '%s'\n", optarg);
                return 1;
            }
            break;
        case 's':
            if (parse_num(optarg, &seed_d) || seed_d != floor(seed_d) || seed_d < 0 ||
                seed_d > NF_JSON_SEED_MAX) {
                fprintf(stderr, "flowd sample: --seed must be a non-negative integer, not '%s'\n", optarg);
                return 1;
            }
            break;
        case 'z':
            if (parse_num(optarg, &scale_d) || scale_d != floor(scale_d) || scale_d < 1 || scale_d > 16) {
                fprintf(stderr, "flowd sample: --scale must be an integer in 1..16, not '%s'\n", optarg);
                return 1;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !out_path || optind != argc) {
        usage(stderr);
        return 2;
    }
    const char *ext = ext_of(out_path);
    int kind = !strcasecmp(ext, "csv") ? 1 : !strcasecmp(ext, "npy") ? 2 : !strcasecmp(ext, "png") ? 3 : 0;
    if (!kind) {
        fprintf(stderr, "flowd sample: %s: the output must end in .csv, .npy or .png\n", out_path);
        return 1;
    }
    int n = (int)n_d, scale = (int)scale_d, rc = 1, st;
    char err[512] = "";
    void *buf = NULL;
    size_t len;
    nf_model *m = NULL;
    nf_ws *w = NULL;
    nf_real *x = NULL;
    if (nf_file_read(model_path, &buf, &len)) {
        fprintf(stderr, "flowd sample: cannot read model %s\n", model_path);
        goto out;
    }
    if ((st = nf_model_load(buf, len, &m, err, sizeof err))) {
        fprintf(stderr, "flowd sample: %s: not a valid model file: %s\n", model_path, err);
        goto out;
    }
    int D = nf_flow_dim(m->flow);
    if (nf_flow_context_dim(m->flow) > 0) {
        fprintf(stderr, "flowd sample: %s is a conditional model (context_dim %d); sample draws "
                        "from unconditional models only\n",
                model_path, nf_flow_context_dim(m->flow));
        goto out;
    }
    if ((int64_t)n * D > NF_DATA_MAX_VALUES) {
        fprintf(stderr, "flowd sample: %d samples x %d dims is too many values\n", n, D);
        goto out;
    }
    x = malloc((size_t)n * D * sizeof *x);
    if (!x || nf_ws_create_inference(m->flow, n < 256 ? n : 256, &w)) {
        fprintf(stderr, "flowd sample: out of memory\n");
        goto out;
    }
    double t0 = now_s();
    if ((st = nf_flow_sample(m->flow, w, n, temp, (uint64_t)seed_d, NULL, x, NULL))) {
        fprintf(stderr, "flowd sample: sampling failed: %s\n", nf_strerror(st));
        goto out;
    }
    double secs = now_s() - t0;
    size_t bad = 0;
    for (size_t i = 0; i < (size_t)n * D; i++) bad += !isfinite(x[i]);
    if (kind == 1) st = write_csv(out_path, x, n, D);
    else if (kind == 2) st = write_npy(out_path, x, n, D);
    else st = write_png(out_path, m, x, n, D, scale, err, sizeof err);
    if (st) {
        if (kind == 3 && err[0]) fprintf(stderr, "flowd sample: %s\n", err);
        else fprintf(stderr, "flowd sample: cannot write %s: %s\n", out_path, nf_strerror(st));
        goto out;
    }
    printf("wrote %d samples x %d dims to %s (T=%g, seed %.0f): %.2f s, %.1f samples/s\n", n, D,
           out_path, temp, seed_d, secs, secs > 0 ? n / secs : 0.0);
    if (bad)
        fprintf(stderr, "flowd sample: warning: %zu of %zu values are not finite%s\n", bad,
                (size_t)n * D, kind == 1 ? " (written as nan/inf, which CSV loaders reject)" : "");
    rc = 0;
out:
    free(buf);
    free(x);
    nf_ws_free(w);
    nf_model_free(m);
    return rc;
}
