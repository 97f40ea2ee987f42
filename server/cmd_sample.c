/* cmd_sample.c: `flowd sample --model M.flow -n N -o out.{csv,npy,png}`,
 * draws from a trained model: z ~ base with its standard deviations scaled
 * by the temperature, x = T(z), in the data's own units (preprocessing
 * layers are part of the flow).
 *
 * The output format follows the file's extension:
 *   .csv  a header x0,x1,... and one row per sample (%.9g; a non-finite
 *         value is an empty field: nf_data_csv)
 *   .npy  NumPy format 1.0, dtype <f4, shape (N, D)
 *   .png  2-D models: a scatter plot; models whose D is a square (784 =
 *         28x28): a grid of ceil(sqrt N) tiles, dequantized pixel models'
 *         values floored and clamped to [0, levels-1], other models scaled
 *         from the samples' own min..max. */
#include "cmd.h"
#include "../common/picture.h"

#include "../core/data.h"
#include "../core/npy.h"
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
    /* a dequantized pixel model: its levels; otherwise the samples' range */
    int pix = m->dequantize;
    return fdpic_write_samples(path, x, n, D, pix, 0, pix ? m->levels - 1 : 1, pix, scale, err,
                               errlen);
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
    if (kind == 1 || kind == 2) st = write_table(out_path, kind == 2, x, n, D);
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
                (size_t)n * D, kind == 1 ? " (written as empty fields)" : "");
    rc = 0;
out:
    free(buf);
    free(x);
    nf_ws_free(w);
    nf_model_free(m);
    return rc;
}
