/* fuzz_flow_spec.c: nf_flow_create on arbitrary JSON (flow specs arrive in
 * job submissions).  A flow that builds must re-create from its canonical
 * config with the same parameter count; a small one also scores, encodes,
 * decodes and samples a few rows. */
#include "fuzz.h"

#include <math.h>
#include <stdio.h>

#define ROWS 3

static void exercise(nf_flow *f) {
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    if ((size_t)D * ROWS > 4096 || (size_t)C * ROWS > 4096 || nf_flow_num_params(f) > 200000)
        return;
    nf_ws *w = NULL;
    if (nf_ws_create(f, 2, &w)) abort(); /* 2 < ROWS: the chunked path too */
    nf_real x[4096], z[4096], y[4096], ctx[4096], lp[ROWS], ld[ROWS];
    for (int i = 0; i < D * ROWS; i++) x[i] = (nf_real)(0.1 + 0.8 * ((i * 37) % 11) / 11.0);
    for (int i = 0; i < C * ROWS; i++) ctx[i] = (nf_real)(0.25 * (i % 5) - 0.5);
    const nf_real *cp = C ? ctx : NULL;
    int rc = nf_flow_log_prob(f, w, x, cp, ROWS, lp);
    if (rc && rc != NF_ENONFINITE && rc != NF_EUNSUPPORTED) abort();
    rc = nf_flow_encode(f, w, x, cp, ROWS, z, ld);
    if (rc && rc != NF_ENONFINITE && rc != NF_EUNSUPPORTED) abort();
    rc = nf_flow_decode(f, w, x, cp, ROWS, y, ld);
    if (rc && rc != NF_ENONFINITE && rc != NF_EUNSUPPORTED) abort();
    rc = nf_flow_sample(f, w, ROWS, 0.7, 1, cp, y, lp);
    if (rc && rc != NF_ENONFINITE && rc != NF_EUNSUPPORTED) abort();
    nf_ws_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *spec = fz_str(data, size);
    char err[256];
    nf_flow *f = NULL;
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    free(spec);
    if (rc) {
        if (f) abort();
        return 0;
    }
    char *cfg = nf_flow_config_json(f);
    if (!cfg) abort();
    nf_flow *g = NULL;
    rc = nf_flow_create(cfg, &g, err, sizeof err);
    if (rc || nf_flow_num_params(g) != nf_flow_num_params(f) ||
        nf_flow_num_layers(g) != nf_flow_num_layers(f)) {
        fprintf(stderr, "canonical config does not re-create the flow: %s\n%s\n", err, cfg);
        abort();
    }
    free(cfg);
    nf_flow_free(g);
    exercise(f);
    nf_flow_free(f);
    return 0;
}
