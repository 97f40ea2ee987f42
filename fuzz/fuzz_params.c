/* fuzz_params.c: nf_flow_load_params and nf_adam_load on arbitrary bytes,
 * against a fixed small flow (every layer kind with parameters or buffers).
 * Flag byte first (fuzz.h: bit 0 fixes the CRC).  Loaded parameters, however
 * absurd, must still score without a crash. */
#include "fuzz.h"
#include "fixtures.h"

static nf_flow *flow;
static nf_ws *ws;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    flow = fx_flow(FX_PARAMS_SPEC);
    if (nf_ws_create(flow, 4, &ws)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t len = 0;
    unsigned char *buf = fz_blob(data, size, &len);
    if (!buf) return 0;
    nf_flow_init(flow, 0);
    if (!nf_flow_load_params(flow, buf, len)) {
        nf_real x[12], lp[4];
        for (int i = 0; i < 12; i++) x[i] = (nf_real)(i % 5) - 2;
        int rc = nf_flow_log_prob(flow, ws, x, NULL, 4, lp);
        if (rc && rc != NF_ENONFINITE) abort();
        rc = nf_flow_sample(flow, ws, 4, 1.0, 3, NULL, x, lp);
        if (rc && rc != NF_ENONFINITE) abort();
    }
    nf_adam o;
    memset(&o, 0, sizeof o);
    if (nf_adam_init(&o, NF_OPT_ADAM, nf_flow_num_params(flow), 0)) abort();
    if (!nf_adam_load(&o, buf, len) && o.n == nf_flow_num_params(flow)) {
        nf_flow_zero_grad(flow);
        nf_adam_step(&o, nf_flow_params(flow), nf_flow_grad(flow), 1e-3);
    }
    nf_adam_free(&o);
    free(buf);
    return 0;
}
