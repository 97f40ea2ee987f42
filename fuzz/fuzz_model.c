/* fuzz_model.c: nf_model_load on arbitrary bytes (model files come from
 * uploads/imports and the database).  Flag byte first (fuzz.h: bit 0 fixes
 * the CRC).  A model that loads and is small scores a few rows. */
#include "fuzz.h"
#include "../core/model.h"

#define ROWS 3

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t len = 0;
    unsigned char *buf = fz_blob(data, size, &len);
    if (!buf) return 0;
    nf_model *m = NULL;
    char err[256] = "";
    int rc = nf_model_load(buf, len, &m, err, sizeof err);
    free(buf);
    if (rc) {
        if (m || !err[0]) abort();
        return 0;
    }
    nf_flow *f = m->flow;
    int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
    if ((size_t)D * ROWS <= 4096 && (size_t)C * ROWS <= 4096 && nf_flow_num_params(f) <= 200000) {
        nf_ws *w = NULL;
        if (nf_ws_create(f, 2, &w)) abort();
        nf_real x[4096], ctx[4096], lp[ROWS];
        for (int i = 0; i < D * ROWS; i++) x[i] = (nf_real)((i * 7) % 5);
        for (int i = 0; i < C * ROWS; i++) ctx[i] = (nf_real)(0.5 * (i % 3));
        rc = nf_model_log_prob(m, w, x, C ? ctx : NULL, ROWS, lp);
        if (rc && rc != NF_ENONFINITE) abort();
        nf_ws_free(w);
    }
    nf_model_free(m);
    return 0;
}
