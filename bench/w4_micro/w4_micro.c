/* w4_micro: single-call timings of W4 (bench/README.md), best of N, for
 * profiling and before/after comparisons on a busy machine: log_prob of
 * 256 rows and sampling of 256 rows (forward-only workspaces of 256 rows)
 * and a training step of 64 rows, on W4's flow after data init and 5 Adam
 * steps (or the parameters of PARAMS_IN, a nf_flow_save_params blob;
 * PARAMS_OUT writes them).  Times are process CPU time (WALL=1: wall
 * clock), which time slices taken by other processes do not inflate.
 *
 *   make build/rel/w4_micro
 *   OPENBLAS_NUM_THREADS=1 build/rel/w4_micro [all|lp|sample|train] [N=7] [threads=1] [dump]
 *
 * dump: a file for comparing two builds' outputs (log_prob, samples at T 1
 * and 0.7 with their log p, a batch's log p and gradient, float32).
 * WSB=rows sizes the log_prob/sample workspaces; CCF sets
 * nf_cc_chunk_floats, FUSED nf_conv_fused.  The flow is bench_core.c's w4_spec. */
#include "../../core/nf.h"
#include "../w4_spec.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
void openblas_set_num_threads(int);
static double now(void) {
    struct timespec t;
    clock_gettime(getenv("WALL") ? CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void die(const char *m, int rc) {
    fprintf(stderr, "%s: %s\n", m, nf_strerror(rc));
    exit(1);
}
extern size_t nf_cc_chunk_floats; /* core/conv.h */
extern int nf_conv_fused;
int main(int argc, char **argv) {
    openblas_set_num_threads(1);
    if (getenv("FUSED")) nf_conv_fused = atoi(getenv("FUSED"));
    if (getenv("CCF")) nf_cc_chunk_floats = (size_t)atol(getenv("CCF"));
    const char *what = argc > 1 ? argv[1] : "all";   /* all | lp | sample | train */
    int N = argc > 2 ? atoi(argv[2]) : 7;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    const char *dump = argc > 4 ? argv[4] : NULL;
    char err[256]; nf_flow *f; int rc;
    char *spec = w4_spec();
    if (!spec) { fprintf(stderr, "W4 spec: out of memory\n"); return 1; }
    if ((rc = nf_flow_create(spec, &f, err, sizeof err))) { fprintf(stderr, "%s\n", err); return 1; }
    const int D = 784, npool = 512;
    nf_real *pool = malloc(sizeof(nf_real) * npool * D);
    nf_rng r; nf_rng_seed(&r, 1234);
    for (size_t i = 0; i < (size_t)npool * D; i++) pool[i] = (nf_real)((double)(nf_rng_u64(&r) >> 56) + nf_rng_uniform(&r));
    nf_ws *tw; if ((rc = nf_ws_create(f, 64, &tw))) die("ws", rc);
    if ((rc = nf_flow_data_init(f, tw, pool, NULL, 64))) die("init", rc);
    nf_adam opt; nf_adam_init(&opt, NF_OPT_ADAM, nf_flow_num_params(f), 0);
    nf_real dlogp[64], logp[64];
    for (int i = 0; i < 64; i++) dlogp[i] = -1.0f / 64;
    /* a few deterministic steps so the zero-initialised convs are not zero */
    for (int s = 0; s < 5; s++) {
        nf_flow_zero_grad(f);
        if ((rc = nf_flow_log_prob_grad(f, tw, pool + (size_t)(s % 8) * 64 * D, NULL, 64, 1, dlogp, logp, NULL, NULL))) die("grad", rc);
        nf_adam_step(&opt, nf_flow_params(f), nf_flow_grad(f), 1e-3);
    }
    if (getenv("PARAMS_IN")) {
        FILE *pf = fopen(getenv("PARAMS_IN"), "rb"); static char buf[1 << 22]; size_t len = fread(buf, 1, sizeof buf, pf); fclose(pf);
        if ((rc = nf_flow_load_params(f, buf, len))) die("load", rc);
    } else if (getenv("PARAMS_OUT")) {
        void *buf; size_t len; nf_flow_save_params(f, &buf, &len);
        FILE *pf = fopen(getenv("PARAMS_OUT"), "wb"); fwrite(buf, 1, len, pf); fclose(pf);
    }
    nf_real *out = malloc(sizeof(nf_real) * 256), *xs = malloc(sizeof(nf_real) * 256 * D), *slp = malloc(sizeof(nf_real) * 256);
    if (!strcmp(what, "all") || !strcmp(what, "lp")) {
        int wsb = getenv("WSB") ? atoi(getenv("WSB")) : 256; nf_ws *w; if ((rc = nf_ws_create_ex(f, wsb, threads, NF_WS_INFERENCE, &w))) die("ws", rc);
        double best = 1e9;
        for (int i = 0; i < N; i++) { double t = now(); nf_flow_log_prob(f, w, pool, NULL, 256, out); t = now() - t; if (t < best) best = t; }
        printf("log_prob 256 rows, %d thr: best %.2f ms  (%.0f rows/s)\n", threads, best * 1e3, 256 / best);
        nf_ws_free(w);
    }
    if (!strcmp(what, "all") || !strcmp(what, "sample")) {
        int wsb = getenv("WSB") ? atoi(getenv("WSB")) : 256; nf_ws *w; if ((rc = nf_ws_create_ex(f, wsb, threads, NF_WS_INFERENCE, &w))) die("ws", rc);
        double best = 1e9;
        for (int i = 0; i < N; i++) { double t = now(); nf_flow_sample(f, w, 256, 1.0, 99, NULL, xs, slp); t = now() - t; if (t < best) best = t; }
        printf("sample 256 rows, %d thr: best %.2f ms  (%.0f rows/s)\n", threads, best * 1e3, 256 / best);
        nf_ws_free(w);
    }
    if (!strcmp(what, "all") || !strcmp(what, "train")) {
        nf_ws *w; if ((rc = nf_ws_create_threads(f, 64, threads, &w))) die("ws", rc);
        nf_real *save = malloc(sizeof(nf_real) * nf_flow_num_params(f));
        memcpy(save, nf_flow_params(f), sizeof(nf_real) * nf_flow_num_params(f));
        double best = 1e9;
        for (int i = 0; i < N; i++) {
            double t = now();
            nf_flow_zero_grad_ws(f, w);
            nf_flow_log_prob_grad(f, w, pool + (size_t)(i % 8) * 64 * D, NULL, 64, 1, dlogp, logp, NULL, NULL);
            nf_adam_step_ws(&opt, w, nf_flow_params(f), nf_flow_grad(f), 1e-4);
            t = now() - t; if (t < best) best = t;
        }
        printf("train step 64 rows, %d thr: best %.2f ms  (%.0f rows/s)\n", threads, best * 1e3, 64 / best);
        memcpy(nf_flow_params(f), save, sizeof(nf_real) * nf_flow_num_params(f));
        nf_ws_free(w);
    }
    if (dump) {
        /* reference outputs on a plain workspace: log_prob, sample + log_prob, grad */
        nf_ws *w; nf_ws_create_ex(f, 256, threads, NF_WS_INFERENCE, &w);
        FILE *fp = fopen(dump, "wb");
        nf_flow_log_prob(f, w, pool, NULL, 256, out); fwrite(out, sizeof(nf_real), 256, fp);
        nf_flow_sample(f, w, 256, 1.0, 99, NULL, xs, slp); fwrite(xs, sizeof(nf_real), 256 * D, fp); fwrite(slp, sizeof(nf_real), 256, fp);
        nf_flow_sample(f, w, 256, 0.7, 7, NULL, xs, slp); fwrite(xs, sizeof(nf_real), 256 * D, fp); fwrite(slp, sizeof(nf_real), 256, fp);
        nf_ws_free(w);
        nf_ws *gw; nf_ws_create_threads(f, 64, threads, &gw);
        nf_flow_zero_grad(f);
        nf_flow_log_prob_grad(f, gw, pool, NULL, 64, 1, dlogp, logp, NULL, NULL);
        fwrite(logp, sizeof(nf_real), 64, fp);
        fwrite(nf_flow_grad(f), sizeof(nf_real), nf_flow_num_params(f), fp);
        fclose(fp);
        nf_ws_free(gw);
    }
    return 0;
}
