/* fixtures.h: the fixed flows and trainer the blob harnesses load into, shared
 * with gen_seeds.c so the seed corpus matches them. */
#ifndef FLOWD_FUZZ_FIXTURES_H
#define FLOWD_FUZZ_FIXTURES_H

#include "../core/train.h"

#include <stdio.h>
#include <stdlib.h>

/* every layer kind that has parameters or buffers */
#define FX_PARAMS_SPEC                                                                     \
    "{\"dim\":3,\"layers\":[{\"type\":\"actnorm\"},{\"type\":\"batchnorm\"},"              \
    "{\"type\":\"lu_linear\"},{\"type\":\"affine_coupling\",\"hidden\":[4]},"              \
    "{\"type\":\"maf\",\"hidden\":[6]},{\"type\":\"spline_coupling\",\"hidden\":[4]}],"    \
    "\"base\":{\"type\":\"diag_normal\"}}"

#define FX_TRAIN_SPEC                                                                      \
    "{\"dim\":2,\"layers\":[{\"type\":\"actnorm\"},"                                       \
    "{\"type\":\"affine_coupling\",\"hidden\":[4]}]}"
#define FX_NTRAIN 16
#define FX_NVAL 4

static inline nf_flow *fx_flow(const char *spec) {
    nf_flow *f = NULL;
    char err[256] = "";
    if (nf_flow_create(spec, &f, err, sizeof err)) {
        fprintf(stderr, "fixture flow: %s\n", err);
        abort();
    }
    return f;
}

static nf_real fx_rows[(FX_NTRAIN + FX_NVAL) * 2];

static inline void fx_train_config(nf_train_config *c) {
    nf_train_config_default(c);
    c->epochs = 2;
    c->batch_size = 4;
    c->log_every = 0;
    c->es_patience = 2;
    c->seed = 7;
}

/* a trainer on 16 fixed training rows and 4 validation rows */
static inline nf_trainer *fx_trainer(nf_flow *f) {
    for (int i = 0; i < (FX_NTRAIN + FX_NVAL) * 2; i++)
        fx_rows[i] = (nf_real)(((i * 13) % 17) / 8.0 - 1.0);
    nf_train_config c;
    fx_train_config(&c);
    nf_trainer *t = NULL;
    char err[256] = "";
    if (nf_trainer_create(f, &c, fx_rows, FX_NTRAIN, fx_rows + FX_NTRAIN * 2, FX_NVAL, &t, err,
                          sizeof err)) {
        fprintf(stderr, "fixture trainer: %s\n", err);
        abort();
    }
    return t;
}

#endif
