/* fuzz_job.c: nf_job_parse on arbitrary bytes (POST /v1/jobs bodies and
 * `flowd train --config`).  The first byte picks allow_path (bit 0).  A job
 * that parses has its flow spec built for a small 2-D training split, and
 * that spec must create a flow (or fail with a message). */
#include "fuzz.h"
#include "../core/job.h"

#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int allow_path = data[0] & 1;
    char *json = fz_str(data + 1, size - 1);
    nf_job j;
    char err[512] = "";
    int rc = nf_job_parse(json, size - 1, allow_path, &j, err, sizeof err);
    free(json);
    if (rc) {
        if (!err[0]) abort();
        nf_job_free(&j);
        return 0;
    }
    nf_data tr = {0};
    if (nf_data_alloc(&tr, 8, 2, NULL, 0)) abort();
    for (int i = 0; i < 16; i++) tr.x[i] = (nf_real)(i % 4);
    if (nf_data_summarize(&tr, NULL, 0)) abort();
    cJSON *pre = NULL;
    err[0] = 0;
    char *spec = nf_job_flow_spec(&j, &tr, &pre, err, sizeof err);
    if (spec) {
        nf_flow *f = NULL;
        rc = nf_flow_create(spec, &f, err, sizeof err);
        if (rc && !err[0]) abort();
        nf_flow_free(f);
        free(spec);
    } else if (!err[0]) {
        abort();
    }
    cJSON_Delete(pre);
    nf_data_free(&tr);
    nf_job_free(&j);
    return 0;
}
