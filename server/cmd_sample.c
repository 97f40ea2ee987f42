/* cmd_sample.c: `flowd sample --model M.flow -n N -o out.{csv,npy,png}`,
 * draws from a trained model: z ~ base with its standard deviations scaled
 * by the temperature, x = T(z), in the data's own units (preprocessing
 * layers are part of the flow).
 *
 * The output format follows the file's extension:
 *   .csv  a header x0,x1,... and one row per sample (%.9g; a non-finite
 *         value is an empty field: nf_data_csv)
 *   .npy  NumPy format 1.0, dtype <f4, shape (N, D)
 *   .png  models with an image shape ("shape": [C,H,W]): a grid of
 *         ceil(sqrt N) tiles of that shape (C = 1 grayscale, C = 3 RGB,
 *         other C each channel as its own grayscale tile, side by side);
 *         2-D models: a scatter plot; other models whose D is a square (784
 *         = 28x28): a grid of grayscale tiles.  Dequantized pixel models'
 *         values are floored and clamped to [0, levels-1], other models'
 *         scaled from the samples' own min..max (common/picture.h). */
#include "cli.h"
#include "cmd.h"
#include "../common/picture.h"

#include "../core/data.h"
#include "../core/npy.h"
#include "../core/model.h"
#include "../core/nf_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static struct {
    const char *model, *out;
    double n, temperature, seed, scale;
} so;

static const fd_opt sample_options[] = {
    {"model", 'm', FD_OPT_STR, &so.model, .required = 1, .arg = "FILE", .help = "a model file written by 'flowd train'"},
    {"num", 'n', FD_OPT_NUM, &so.n, .def = 1000, .lo = 1, .hi = 10000000, .whole = 1, .arg = "N",
     .help = "number of samples", .must = "an integer in 1..10000000"},
    {"out", 'o', FD_OPT_STR, &so.out, .required = 1, .arg = "FILE", .help = "output file (.csv, .npy or .png)"},
    {"temperature", 't', FD_OPT_NUM, &so.temperature, .def = 1, .lo = 0, .hi = 1000, .open_lo = 1, .arg = "T",
     .help = "scale of the base distribution's std"},
    {"seed", 's', FD_OPT_NUM, &so.seed, .def = 0, .lo = 0, .hi = NF_JSON_SEED_MAX, .whole = 1, .arg = "S",
     .help = "random seed; the same seed gives the same samples", .must = "a non-negative integer"},
    {"scale", 0, FD_OPT_NUM, &so.scale, .def = 1, .lo = 1, .hi = 16, .whole = 1, .arg = "K",
     .help = "PNG only: enlarge the picture K times", .must = "an integer in 1..16"},
};

static const fd_cli sample_cli = {
    "flowd sample",
    "usage: flowd sample --model MODEL.flow -n N -o OUT [--temperature T] [--seed S]\n"
    "\n"
    "Draws N samples from a trained model and writes them to OUT, whose\n"
    "extension picks the format: .csv, .npy (float32) or .png (an image grid\n"
    "for models with an image shape [C,H,W]: gray for C = 1, RGB for C = 3,\n"
    "one gray tile per channel otherwise; a scatter plot for 2-D models; a\n"
    "gray grid for other models whose dimension is a square, e.g. 784 = 28x28).\n"
    "\n",
    NULL, sample_options, FD_NOPTS(sample_options), .bad_rc = 1, .quote_bad = 1};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static const char *ext_of(const char *path) {
    const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
    return dot && (!slash || dot > slash) ? dot + 1 : "";
}

/* CSV (core's writer) or float32 .npy, through nf_file_write (temp file +
 * rename) like every other output */
static int write_table(const char *path, int npy, const nf_real *x, int n, int D) {
    size_t len = 0;
    void *b = npy ? nf_npy_f32(x, n, D, &len) : nf_data_csv(x, n, D, NULL, &len);
    if (!b) return NF_ENOMEM;
    int rc = nf_file_write(path, b, len);
    free(b);
    return rc;
}

static int write_png(const char *path, const nf_model *m, const nf_real *x, int n, int D,
                     int scale, char *err, size_t errlen) {
    /* the model's image shape; a dequantized pixel model: its levels;
     * otherwise the samples' range */
    int pix = m->dequantize, shape[3];
    nf_flow_shape(m->flow, shape);
    return fdpic_write_samples(path, x, n, D, shape, pix, 0, pix ? m->levels - 1 : 1, pix, scale,
                               err, errlen);
}

/* an unconditional model whose n samples fit: 0 or -1 (said why) */
static int sample_load(nf_model **m, int n) {
    if (fd_cli_load_model("flowd sample", so.model, "sample draws from", m)) return -1;
    int D = nf_flow_dim((*m)->flow);
    if ((int64_t)n * D > NF_DATA_MAX_VALUES) {
        fprintf(stderr, "flowd sample: %d samples x %d dims is too many values\n", n, D);
        return -1;
    }
    return 0;
}

/* kind 1 csv, 2 npy, 3 png: 0 or -1 (said why) */
static int sample_write(int kind, const nf_model *m, const nf_real *x, int n, int D) {
    char err[512] = "";
    int st = kind == 3 ? write_png(so.out, m, x, n, D, (int)so.scale, err, sizeof err)
                       : write_table(so.out, kind == 2, x, n, D);
    if (!st) return 0;
    if (kind == 3 && err[0]) fprintf(stderr, "flowd sample: %s\n", err);
    else fprintf(stderr, "flowd sample: cannot write %s: %s\n", so.out, nf_strerror(st));
    return -1;
}

int cmd_sample(int argc, char **argv) {
    int rc;
    if (fd_cli_parse(&sample_cli, argc, argv, &rc)) return rc;
    const char *ext = ext_of(so.out);
    int kind = !strcasecmp(ext, "csv") ? 1 : !strcasecmp(ext, "npy") ? 2 : !strcasecmp(ext, "png") ? 3 : 0;
    if (!kind) {
        fprintf(stderr, "flowd sample: %s: the output must end in .csv, .npy or .png\n", so.out);
        return 1;
    }
    int n = (int)so.n, st;
    rc = 1;
    nf_model *m = NULL;
    nf_ws *w = NULL;
    nf_real *x = NULL;
    if (sample_load(&m, n)) goto out;
    int D = nf_flow_dim(m->flow);
    x = malloc((size_t)n * D * sizeof *x);
    if (!x || nf_ws_create_inference(m->flow, n < 256 ? n : 256, &w)) {
        fprintf(stderr, "flowd sample: out of memory\n");
        goto out;
    }
    double t0 = now_s();
    if ((st = nf_flow_sample(m->flow, w, n, so.temperature, (uint64_t)so.seed, NULL, x, NULL))) {
        fprintf(stderr, "flowd sample: sampling failed: %s\n", nf_strerror(st));
        goto out;
    }
    double secs = now_s() - t0;
    size_t bad = 0;
    for (size_t i = 0; i < (size_t)n * D; i++) bad += !isfinite(x[i]);
    if (sample_write(kind, m, x, n, D)) goto out;
    printf("wrote %d samples x %d dims to %s (T=%g, seed %.0f): %.2f s, %.1f samples/s\n", n, D,
           so.out, so.temperature, so.seed, secs, secs > 0 ? n / secs : 0.0);
    if (bad)
        fprintf(stderr, "flowd sample: warning: %zu of %zu values are not finite%s\n", bad,
                (size_t)n * D, kind == 1 ? " (written as empty fields)" : "");
    rc = 0;
out:
    free(x);
    nf_ws_free(w);
    nf_model_free(m);
    return rc;
}
