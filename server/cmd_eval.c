/* cmd_eval.c: `flowd eval --model M.flow --data FILE`, the held-out score of
 * a trained model: mean negative log-likelihood per row and, for models of
 * dequantized pixel data, bits per dimension.  With --samples N it also
 * judges N samples against the rows (core/evaluate.h: non-finite share,
 * MMD^2, and with --reference the training rows, the nearest-training-row
 * ratio), the figures POST /v1/models/{name}/evaluate answers.
 *
 * Rows where log p is not finite (outside the support: a logit model given
 * a value past its range, or a value the flow cannot invert) are counted and
 * left out of the mean, so one bad row does not turn the figure into inf;
 * the count is printed next to it and must be read with it. */
#include "cli.h"
#include "cmd.h"

#include "../core/data.h"
#include "../core/evaluate.h"
#include "../core/model.h"
#include "../core/nf_json.h"
#include "../core/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct {
    const char *model, *data, *format, *per_row, *reference;
    int json;
    double samples, temperature, seed, max_rows, max_ref_rows, iw;
} eo;

static const fd_opt eval_options[] = {
    {"model", 'm', FD_OPT_STR, &eo.model, .required = 1, .arg = "FILE", .help = "a model file written by 'flowd train'"},
    {"data", 'd', FD_OPT_STR, &eo.data, .required = 1, .arg = "FILE",
     .help = "rows to score: CSV, .npy, IDX (gzipped or not) or JSON"},
    {"format", 'f', FD_OPT_STR, &eo.format, .def_str = "auto", .arg = "FMT", .help = "auto, csv, npy, idx or json"},
    {"json", 'j', FD_OPT_FLAG, &eo.json, .help = "one JSON object on stdout instead of text"},
    {"per-row", 'r', FD_OPT_STR, &eo.per_row, .arg = "FILE",
     .help = "also write each row's NLL (nats; inf outside the support), one per line, in the data's row order"},
    {"samples", 'n', FD_OPT_NUM, &eo.samples, .def = 0, .lo = 0, .hi = 1000000, .whole = 1, .arg = "N",
     .help = "also draw N samples and judge them against the rows: non-finite share, MMD^2, and with "
             "--reference the nearest-training-row ratio (0: no samples)",
     .must = "an integer in 0..1000000"},
    {"temperature", 't', FD_OPT_NUM, &eo.temperature, .def = 1, .lo = 0, .hi = 1000, .open_lo = 1, .arg = "T",
     .help = "the samples' temperature (scale of the base distribution's std)"},
    {"seed", 's', FD_OPT_NUM, &eo.seed, .def = 0, .lo = 0, .hi = NF_JSON_SEED_MAX, .whole = 1, .arg = "S",
     .help = "seed of the samples and subsamples (the samples 'flowd sample --seed S' draws)",
     .must = "a non-negative integer"},
    {"reference", 'R', FD_OPT_STR, &eo.reference, .arg = "FILE",
     .help = "the training rows (any --format) for the nearest-neighbour ratio; needs --samples"},
    {"max-rows", 0, FD_OPT_NUM, &eo.max_rows, .def = 1000, .lo = 2, .hi = 1000000, .whole = 1, .arg = "M",
     .help = "samples and rows used for MMD and the nearest-neighbour means (a seeded subsample of the rows)",
     .must = "an integer in 2..1000000"},
    {"iw-samples", 'k', FD_OPT_NUM, &eo.iw, .def = 1, .lo = 1, .hi = NF_MODEL_MAX_IW_SAMPLES, .whole = 1,
     .arg = "K", .help = "dequantized models: the importance-weighted estimate over K noise draws per "
                         "row, log (1/K) sum_k p(x+u_k)/q(u_k|x) (1: the plain bound)",
     .must = "an integer in 1..64"},
    {"max-reference-rows", 0, FD_OPT_NUM, &eo.max_ref_rows, .def = 10000, .lo = 1, .hi = 1e9, .whole = 1,
     .arg = "R", .help = "reference rows searched (a seeded subsample beyond)", .must = "an integer in 1..1000000000"},
};

static const fd_cli eval_cli = {
    "flowd eval",
    "usage: flowd eval --model MODEL.flow --data FILE [--format FMT] [--json] [--iw-samples K]\n"
    "                  [--samples N [--temperature T] [--seed S] [--reference TRAIN]]\n"
    "\n"
    "Scores every row of FILE under the model: mean negative log-likelihood in\n"
    "nats per row (in the data's own units) and, for models trained on\n"
    "dequantized integer data, bits per dimension = NLL / (D ln 2), an upper\n"
    "bound on the discrete model's bits/dim (each row gets U[0,1) noise seeded\n"
    "by the row, so the figure is reproducible).  Rows outside the model's support\n"
    "are counted and left out of the mean.\n"
    "\n"
    "With --samples N it draws N samples and judges them against the rows of\n"
    "FILE (held-out rows): the share of non-finite samples, the kernel MMD^2\n"
    "(Gaussian kernel, median-distance bandwidth; ~0 for the same\n"
    "distribution) and, given --reference with the training rows, the mean\n"
    "distance of a sample to its nearest training row over that of a held-out\n"
    "row (well under 1: memorised; ~1: healthy; above 1: off the data).\n"
    "Samples of dequantized models are floored into the levels first.\n"
    "\n"
    "--iw-samples K scores dequantized models by the importance-weighted\n"
    "estimate over K noise draws per row (a tighter bound; 1 is the plain\n"
    "bound).  A row's noise is seeded by the row, so its score does not depend\n"
    "on the file's order.  A conditional model reads rows of its training\n"
    "data's layout: the data and context columns (or the label) together.\n"
    "\n",
    NULL, eval_options, FD_NOPTS(eval_options), .bad_rc = 2};

/* what eval reports of the scores */
typedef struct {
    int n, D;
    int64_t inside, outside;
    double nll, med, worst, bpd, secs;
    const char *likelihood;
    nf_eval_result q; /* the samples, when --samples */
    int iw;           /* --iw-samples of a dequantized model (1 otherwise) */
    /* continuous flows (ode): the scoring trace, and NFE per solve
     * (batched) and per row */
    int ode;
    const char *trace;
    double nfe, nfe_row;
} eval_summary;

static int cmp_real(const void *a, const void *b) {
    nf_real x = *(const nf_real *)a, y = *(const nf_real *)b;
    return (x > y) - (x < y);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* rows of a data file (--format), D columns: 0 or -1 (said why) */
static int load_rows(const char *path, int D, nf_data *out) {
    char err[512] = "";
    nf_data_format fmt;
    nf_data_format_parse(eo.format, &fmt); /* checked in cmd_eval */
    if (nf_data_load_file(path, fmt, out, err, sizeof err)) {
        fprintf(stderr, "flowd eval: %s: %s\n", path, err);
        return -1;
    }
    if (out->d != D) {
        fprintf(stderr, "flowd eval: %s has %d columns but the model's dimension is %d\n", path,
                out->d, D);
        return -1;
    }
    return 0;
}

/* the model and data of its dimension: 0 or -1 (said why).  A conditional
 * model's rows (its training layout, context.h) are split: data keeps x,
 * *ctx (malloc'd) the contexts. */
static int eval_load(nf_model **m, nf_data *data, nf_real **ctx) {
    *ctx = NULL;
    if (fd_cli_load_model("flowd eval", eo.model, "eval scores", m)) return -1;
    int C = nf_flow_context_dim((*m)->flow), D = nf_flow_dim((*m)->flow);
    if (load_rows(eo.data, C ? (*m)->context.width : D, data)) return -1;
    if (C) {
        nf_data x = {0};
        char err[300] = "";
        int rc = nf_data_alloc(&x, data->n, D, err, sizeof err);
        *ctx = rc ? NULL : malloc((size_t)data->n * C * sizeof **ctx);
        if (!rc && !*ctx) rc = NF_ENOMEM;
        if (!rc) rc = nf_context_split(&(*m)->context, data->x, data->n, x.x, *ctx, NULL, err, sizeof err);
        if (!rc) rc = nf_data_summarize(&x, err, sizeof err);
        if (rc) {
            fprintf(stderr, "flowd eval: %s: %s\n", eo.data, err[0] ? err : nf_strerror(rc));
            nf_data_free(&x);
            return -1;
        }
        nf_data_free(data);
        *data = x;
    }
    if (data->n > 0x7fffffff) {
        fprintf(stderr, "flowd eval: %s: too many rows (%lld)\n", eo.data, (long long)data->n);
        return -1;
    }
    if ((*m)->dequantize && !data->is_integer)
        fprintf(stderr, "flowd eval: warning: the model was trained on dequantized integer data "
                        "but %s holds non-integer values; bits/dim is not meaningful\n",
                eo.data);
    return 0;
}

/* each row's NLL, one a line: 0 or -1 */
static int write_per_row(const char *path, const nf_real *lp, int n) {
    FILE *f = fopen(path, "w");
    int ok = f != NULL;
    for (int i = 0; ok && i < n; i++)
        ok = fprintf(f, isfinite(lp[i]) ? "%.9g\n" : "inf\n", -(double)lp[i]) > 0;
    if (f) ok = fclose(f) == 0 && ok;
    if (ok) return 0;
    fprintf(stderr, "flowd eval: cannot write %s\n", path);
    return -1;
}

/* mean, median and worst NLL of the rows inside the support; reorders lp */
static void summarize(const nf_model *m, nf_real *lp, eval_summary *r) {
    double sum = 0;
    r->outside = 0;
    for (int i = 0; i < r->n; i++) {
        if (isfinite(lp[i])) sum -= lp[i];
        else r->outside++;
    }
    r->inside = r->n - r->outside;
    r->nll = r->inside ? sum / (double)r->inside : NAN;
    /* the median and worst row show whether a few rows dominate the mean */
    r->med = r->worst = NAN;
    if (r->inside) {
        int64_t k = 0;
        for (int i = 0; i < r->n; i++)
            if (isfinite(lp[i])) lp[k++] = -lp[i];
        qsort(lp, (size_t)k, sizeof *lp, cmp_real);
        r->med = k % 2 ? lp[k / 2] : 0.5 * ((double)lp[k / 2 - 1] + lp[k / 2]);
        r->worst = lp[k - 1];
    }
    r->bpd = m->dequantize && r->inside ? nf_bits_per_dim(r->nll, r->D) : NAN;
    const cJSON *lk = cJSON_GetObjectItemCaseSensitive(m->header, "likelihood");
    r->likelihood = cJSON_IsString(lk) ? lk->valuestring : "exact";
    if (!nf_flow_log_prob_exact(m->flow) && !m->dequantize) r->likelihood = "hutchinson_estimate";
}

static void print_json(const eval_summary *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", eo.model);
    cJSON_AddStringToObject(o, "data", eo.data);
    cJSON_AddNumberToObject(o, "rows", r->n);
    cJSON_AddNumberToObject(o, "dim", r->D);
    cJSON_AddNumberToObject(o, "rows_scored", (double)r->inside);
    cJSON_AddNumberToObject(o, "outside_support", (double)r->outside);
    nf_json_add_num(o, "nll_mean", r->nll);
    nf_json_add_num(o, "nll_median", r->med);
    nf_json_add_num(o, "nll_max", r->worst);
    nf_json_add_num(o, "bits_per_dim", r->bpd);
    cJSON_AddStringToObject(o, "likelihood", r->likelihood);
    cJSON_AddNumberToObject(o, "seconds", r->secs);
    if (r->ode) {
        cJSON_AddStringToObject(o, "trace", r->trace);
        nf_json_add_num(o, "nfe", r->nfe);
        nf_json_add_num(o, "nfe_per_row", r->nfe_row);
    }
    if (r->iw > 1) cJSON_AddNumberToObject(o, "iw_samples", r->iw);
    if (eo.samples > 0) { /* the names of POST /v1/models/{name}/evaluate */
        const nf_eval_result *q = &r->q;
        cJSON_AddNumberToObject(o, "samples", q->samples);
        cJSON_AddNumberToObject(o, "temperature", eo.temperature);
        cJSON_AddNumberToObject(o, "seed", eo.seed);
        nf_json_add_num(o, "nonfinite_share", q->nonfinite_share);
        nf_json_add_num(o, "sample_min", q->sample_min);
        nf_json_add_num(o, "sample_max", q->sample_max);
        nf_json_add_num(o, "mmd2", q->mmd2);
        nf_json_add_num(o, "mmd_bandwidth", q->mmd_bandwidth);
        cJSON_AddNumberToObject(o, "mmd_samples", q->mmd_samples);
        cJSON_AddNumberToObject(o, "mmd_test_rows", q->mmd_test_rows);
        if (eo.reference) cJSON_AddStringToObject(o, "reference", eo.reference);
        else cJSON_AddNullToObject(o, "reference");
        cJSON_AddNumberToObject(o, "reference_rows_used", (double)q->nn_ref_rows);
        nf_json_add_num(o, "nn_ratio", q->nn_ratio);
        nf_json_add_num(o, "nn_sample_mean", q->nn_sample_mean);
        nf_json_add_num(o, "nn_test_mean", q->nn_test_mean);
        cJSON_AddNumberToObject(o, "sample_seconds", q->seconds);
    }
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s ? s : "{}");
    free(s);
    cJSON_Delete(o);
}

static void print_text(const nf_model *m, const eval_summary *r) {
    printf("model            %s (%d dims, %d layers, %s likelihood)\n", eo.model, r->D,
           nf_flow_num_layers(m->flow), r->likelihood);
    printf("data             %s\n", eo.data);
    printf("rows             %d\n", r->n);
    printf("outside support  %lld\n", (long long)r->outside);
    if (isfinite(r->nll)) printf("mean NLL         %.4f nats/row (over %lld rows)\n", r->nll, (long long)r->inside);
    else printf("mean NLL         n/a (no row inside the support)\n");
    if (isfinite(r->med)) printf("median NLL       %.4f nats/row (worst row %.4g)\n", r->med, r->worst);
    if (r->iw > 1) printf("estimate         importance-weighted, %d draws per row\n", r->iw);
    if (m->dequantize) {
        if (isfinite(r->bpd)) printf("bits/dim         %.4f\n", r->bpd);
        else printf("bits/dim         n/a\n");
    }
    printf("time             %.2f s (%.0f rows/s)\n", r->secs, r->secs > 0 ? r->n / r->secs : 0.0);
    if (r->ode)
        printf("ODE              %s trace; %.1f evaluations per solve (batched), %.1f per row\n",
               r->trace, r->nfe, r->nfe_row);
    if (eo.samples <= 0) return;
    const nf_eval_result *q = &r->q;
    printf("samples          %d (temperature %g, seed %.0f), %d non-finite (%.2f%%)\n", q->samples,
           eo.temperature, eo.seed, q->nonfinite, 100 * q->nonfinite_share);
    if (q->nonfinite < q->samples) printf("sample range     [%.6g, %.6g]\n", q->sample_min, q->sample_max);
    if (isfinite(q->mmd2))
        printf("MMD^2            %.6g (bandwidth %.4g; %d samples vs %d rows)\n", q->mmd2, q->mmd_bandwidth,
               q->mmd_samples, q->mmd_test_rows);
    else printf("MMD^2            n/a (fewer than 2 finite samples or rows)\n");
    if (!eo.reference) printf("NN ratio         n/a (no --reference)\n");
    else if (isfinite(q->nn_ratio))
        printf("NN ratio         %.4f (nearest training row: samples %.4g, rows %.4g; %lld training rows)\n",
               q->nn_ratio, q->nn_sample_mean, q->nn_test_mean, (long long)q->nn_ref_rows);
    else printf("NN ratio         n/a (the rows are among the training rows, or no finite sample)\n");
    printf("sample time      %.2f s\n", q->seconds);
}

/* the sample figures against the rows of data (and ref when given): 0 or -1 (said why) */
static int eval_samples(const nf_model *m, const nf_data *data, const nf_data *ref, eval_summary *r) {
    nf_eval_opts o;
    nf_eval_opts_default(&o);
    o.samples = (int)eo.samples;
    o.temperature = eo.temperature;
    o.seed = (uint64_t)eo.seed;
    o.max_rows = (int)eo.max_rows;
    o.max_ref_rows = (int64_t)eo.max_ref_rows;
    nf_eval_result_init(&r->q);
    int st = nf_eval_flow_samples(m->flow, m->dequantize ? m->levels : 0, data->x, data->n,
                                  ref->n ? ref->x : NULL, ref->n, &o, &r->q);
    if (st) fprintf(stderr, "flowd eval: judging the samples failed: %s\n", nf_strerror(st));
    return st ? -1 : 0;
}


int cmd_eval(int argc, char **argv) {
    int rc;
    if (fd_cli_parse(&eval_cli, argc, argv, &rc)) return rc;
    nf_data_format fmt;
    if (nf_data_format_parse(eo.format, &fmt)) {
        fprintf(stderr, "flowd eval: --format must be auto, csv, npy, idx or json, not '%s'\n", eo.format);
        return 1;
    }
    if (eo.reference && eo.samples <= 0) {
        fprintf(stderr, "flowd eval: --reference is for the samples' nearest-neighbour ratio: give --samples N too\n");
        return 1;
    }
    rc = 1;
    nf_model *m = NULL;
    nf_data data = {0}, ref = {0};
    nf_ws *w = NULL;
    nf_real *lp = NULL, *ctx = NULL;
    if (eval_load(&m, &data, &ctx)) goto out;
    if (ctx && eo.samples > 0) {
        fprintf(stderr, "flowd eval: --samples judges unconditional models only\n");
        goto out;
    }
    if (eo.reference && load_rows(eo.reference, data.d, &ref)) goto out;
    eval_summary r = {.n = (int)data.n, .D = data.d, .iw = m->dequantize ? (int)eo.iw : 1};
    lp = malloc((size_t)r.n * sizeof *lp);
    if (!lp || nf_model_ws_create(m, r.n < 1024 ? r.n : 1024, &w)) {
        fprintf(stderr, "flowd eval: out of memory\n");
        goto out;
    }
    double t0 = now_s();
    /* each row's noise is seeded by the row (model.h): any chunking gives
     * the same scores */
    int st = nf_model_log_prob_iw(m, w, data.x, ctx, r.n, r.iw, lp);
    if (st) {
        fprintf(stderr, "flowd eval: scoring failed: %s\n",
                st == NF_ESTEPS ? "the ODE solver passed the model's max_steps (rows far from the "
                                  "training data make the dynamics stiff)"
                                : nf_strerror(st));
        goto out;
    }
    r.secs = now_s() - t0;
    if ((r.ode = nf_flow_num_ode(m->flow) > 0)) {
        nf_ode_stats os;
        nf_ws_ode_stats(w, &os);
        r.trace = nf_flow_log_prob_exact(m->flow) ? "exact" : "hutchinson";
        r.nfe = os.solves ? (double)os.nfe / os.solves : NAN;
        r.nfe_row = os.rows ? (double)os.row_nfe / os.rows : NAN;
    }
    if (eo.per_row && write_per_row(eo.per_row, lp, r.n)) goto out;
    summarize(m, lp, &r);
    if (eo.samples > 0 && eval_samples(m, &data, &ref, &r)) goto out;
    if (eo.json) print_json(&r);
    else print_text(m, &r);
    rc = 0;
out:
    free(lp);
    free(ctx);
    nf_ws_free(w);
    nf_data_free(&data);
    nf_data_free(&ref);
    nf_model_free(m);
    return rc;
}
