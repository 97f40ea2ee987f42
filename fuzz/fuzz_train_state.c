/* fuzz_train_state.c: nf_trainer_load_state on arbitrary bytes (checkpoints
 * come back from the database when a job resumes) into a fixed small trainer
 * (fixtures.h).  Flag byte first (fuzz.h: bit 0 fixes the CRC).  A state that
 * loads must resume: the rest of the run (at most 8 steps) has to finish or
 * fail with a status, never crash. */
#include "fuzz.h"
#include "fixtures.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t len = 0;
    unsigned char *buf = fz_blob(data, size, &len);
    if (!buf) return 0;
    nf_flow *f = fx_flow(FX_TRAIN_SPEC);
    nf_trainer *t = fx_trainer(f);
    if (!nf_trainer_load_state(t, buf, len)) {
        int rc = nf_trainer_run(t, NULL);
        if (rc && rc != NF_ENONFINITE) abort();
        nf_train_metrics m;
        nf_trainer_metrics(t, &m);
        void *out = NULL;
        size_t olen = 0;
        if (nf_trainer_save_state(t, &out, &olen)) abort();
        free(out);
    }
    nf_trainer_free(t);
    nf_flow_free(f);
    free(buf);
    return 0;
}
