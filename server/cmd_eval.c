/* cmd_eval.c: `flowd eval --model M.flow --data FILE`, the held-out score of
 * a trained model: mean negative log-likelihood per row and, for models of
 * dequantized pixel data, bits per dimension.
 *
 * Rows where log p is not finite (outside the support: a logit model given
 * a value past its range, or a value the flow cannot invert) are counted and
 * left out of the mean, so one bad row does not turn the figure into inf;
 * the count is printed next to it and must be read with it. */
#include "cmd.h"

#include "../core/data.h"
#include "../core/model.h"
#include "../core/train.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: flowd eval --model MODEL.flow --data FILE [--format FMT] [--json]\n"
            "\n"
            "Scores every row of FILE under the model: mean negative log-likelihood in\n"
            "nats per row (in the data's own units) and, for models trained on\n"
            "dequantized integer data, bits per dimension = NLL / (D ln 2), an upper\n"
            "bound on the discrete model's bits/dim (each row gets fixed-seed U[0,1)\n"
            "noise, so the figure is reproducible).  Rows outside the model's support\n"
            "are counted and left out of the mean.\n"
            "\n"
            "  --model FILE    a model file written by 'flowd train'\n"
            "  --data FILE     rows to score: CSV, .npy, IDX (gzipped or not) or JSON\n"
            "  --format FMT    auto (default), csv, npy, idx or json\n"
            "  --json          one JSON object on stdout instead of text\n"
            "  --per-row FILE  also write each row's NLL (nats; inf outside the support),\n"
            "                  one per line, in the data's row order\n");
}

static int cmp_real(const void *a, const void *b) {
    nf_real x = *(const nf_real *)a, y = *(const nf_real *)b;
    return (x > y) - (x < y);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int cmd_eval(int argc, char **argv) {
    const char *model_path = NULL, *data_path = NULL, *fmt_name = "auto", *rows_path = NULL;
    int as_json = 0;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"data", required_argument, 0, 'd'},
                                         {"format", required_argument, 0, 'f'},
                                         {"json", no_argument, 0, 'j'},
                                         {"per-row", required_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:d:f:jr:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'd': data_path = optarg; break;
        case 'f': fmt_name = optarg; break;
        case 'j': as_json = 1; break;
        case 'r': rows_path = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_path || !data_path || optind != argc) {
        usage(stderr);
        return 2;
    }
    nf_data_format fmt;
    if (nf_data_format_parse(fmt_name, &fmt)) {
        fprintf(stderr, "flowd eval: --format must be auto, csv, npy, idx or json, not '%s'\n",
                fmt_name);
        return 1;
    }

    int rc = 1;
    char err[512] = "";
    void *buf = NULL;
    size_t len;
    nf_model *m = NULL;
    nf_data data = {0};
    nf_ws *w = NULL;
    nf_real *lp = NULL;
    int st = nf_file_read(model_path, &buf, &len);
    if (st) {
        fprintf(stderr, "flowd eval: cannot read model %s\n", model_path);
        goto out;
    }
    if ((st = nf_model_load(buf, len, &m, err, sizeof err))) {
        fprintf(stderr, "flowd eval: %s: not a valid model file: %s\n", model_path, err);
        goto out;
    }
    free(buf);
    buf = NULL;
    int D = nf_flow_dim(m->flow);
    if (nf_flow_context_dim(m->flow) > 0) {
        fprintf(stderr, "flowd eval: %s is a conditional model (context_dim %d); eval scores "
                        "unconditional models only\n",
                model_path, nf_flow_context_dim(m->flow));
        goto out;
    }
    if ((st = nf_data_load_file(data_path, fmt, &data, err, sizeof err))) {
        fprintf(stderr, "flowd eval: %s: %s\n", data_path, err);
        goto out;
    }
    if (data.d != D) {
        fprintf(stderr, "flowd eval: %s has %d columns but the model's dimension is %d\n",
                data_path, data.d, D);
        goto out;
    }
    if (data.n > 0x7fffffff) {
        fprintf(stderr, "flowd eval: %s: too many rows (%lld)\n", data_path, (long long)data.n);
        goto out;
    }
    if (m->dequantize && !data.is_integer)
        fprintf(stderr, "flowd eval: warning: the model was trained on dequantized integer data "
                        "but %s holds non-integer values; bits/dim is not meaningful\n",
                data_path);
    int n = (int)data.n;
    lp = malloc((size_t)n * sizeof *lp);
    if (!lp || nf_model_ws_create(m, n < 1024 ? n : 1024, &w)) {
        fprintf(stderr, "flowd eval: out of memory\n");
        goto out;
    }
    double t0 = now_s();
    /* one call for all rows: the model seeds its dequantization noise once
     * per call, so chunking here would repeat the same noise per chunk */
    if ((st = nf_model_log_prob(m, w, data.x, NULL, n, lp))) {
        fprintf(stderr, "flowd eval: scoring failed: %s\n", nf_strerror(st));
        goto out;
    }
    double secs = now_s() - t0;
    double sum = 0;
    int64_t outside = 0;
    for (int i = 0; i < n; i++) {
        if (isfinite(lp[i])) sum -= lp[i];
        else outside++;
    }
    int64_t inside = n - outside;
    double nll = inside ? sum / (double)inside : NAN;
    if (rows_path) {
        FILE *f = fopen(rows_path, "w");
        int ok = f != NULL;
        for (int i = 0; ok && i < n; i++)
            ok = fprintf(f, isfinite(lp[i]) ? "%.9g\n" : "inf\n", -(double)lp[i]) > 0;
        if (f) ok = fclose(f) == 0 && ok;
        if (!ok) {
            fprintf(stderr, "flowd eval: cannot write %s\n", rows_path);
            goto out;
        }
    }
    /* the median and worst row show whether a few rows dominate the mean */
    double med = NAN, worst = NAN;
    if (inside) {
        int64_t k = 0;
        for (int i = 0; i < n; i++)
            if (isfinite(lp[i])) lp[k++] = -lp[i];
        qsort(lp, (size_t)k, sizeof *lp, cmp_real);
        med = k % 2 ? lp[k / 2] : 0.5 * ((double)lp[k / 2 - 1] + lp[k / 2]);
        worst = lp[k - 1];
    }
    double bpd = m->dequantize && inside ? nf_bits_per_dim(nll, D) : NAN;
    const cJSON *lk = cJSON_GetObjectItemCaseSensitive(m->header, "likelihood");
    const char *likelihood = cJSON_IsString(lk) ? lk->valuestring : "exact";
    if (as_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model_path);
        cJSON_AddStringToObject(o, "data", data_path);
        cJSON_AddNumberToObject(o, "rows", n);
        cJSON_AddNumberToObject(o, "dim", D);
        cJSON_AddNumberToObject(o, "rows_scored", (double)inside);
        cJSON_AddNumberToObject(o, "outside_support", (double)outside);
        if (isfinite(nll)) cJSON_AddNumberToObject(o, "nll_mean", nll);
        else cJSON_AddNullToObject(o, "nll_mean");
        if (isfinite(med)) cJSON_AddNumberToObject(o, "nll_median", med);
        else cJSON_AddNullToObject(o, "nll_median");
        if (isfinite(worst)) cJSON_AddNumberToObject(o, "nll_max", worst);
        else cJSON_AddNullToObject(o, "nll_max");
        if (isfinite(bpd)) cJSON_AddNumberToObject(o, "bits_per_dim", bpd);
        else cJSON_AddNullToObject(o, "bits_per_dim");
        cJSON_AddStringToObject(o, "likelihood", likelihood);
        cJSON_AddNumberToObject(o, "seconds", secs);
        char *s = cJSON_PrintUnformatted(o);
        printf("%s\n", s ? s : "{}");
        free(s);
        cJSON_Delete(o);
    } else {
        printf("model            %s (%d dims, %d layers, %s likelihood)\n", model_path, D,
               nf_flow_num_layers(m->flow), likelihood);
        printf("data             %s\n", data_path);
        printf("rows             %d\n", n);
        printf("outside support  %lld\n", (long long)outside);
        if (isfinite(nll)) printf("mean NLL         %.4f nats/row (over %lld rows)\n", nll, (long long)inside);
        else printf("mean NLL         n/a (no row inside the support)\n");
        if (isfinite(med)) printf("median NLL       %.4f nats/row (worst row %.4g)\n", med, worst);
        if (m->dequantize) {
            if (isfinite(bpd)) printf("bits/dim         %.4f\n", bpd);
            else printf("bits/dim         n/a\n");
        }
        printf("time             %.2f s (%.0f rows/s)\n", secs, secs > 0 ? n / secs : 0.0);
    }
    rc = 0;
out:
    free(buf);
    free(lp);
    nf_ws_free(w);
    nf_data_free(&data);
    nf_model_free(m);
    return rc;
}
