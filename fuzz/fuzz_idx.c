/* fuzz_idx.c: nf_data_load_idx on arbitrary bytes, then the same bytes through
 * nf_data_load with the format named (the upload path: gunzip first). */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    unsigned char *buf = fz_dup(data, size);
    char err[512] = "";
    nf_data d;
    memset(&d, 0xab, sizeof d);
    int rc = nf_data_load_idx(buf, size, &d, err, sizeof err);
    fz_check_data(rc, &d, err);
    nf_data_free(&d);
    err[0] = 0;
    memset(&d, 0xab, sizeof d);
    rc = nf_data_load(buf, size, NF_DATA_IDX, &d, err, sizeof err);
    fz_check_data(rc, &d, err);
    nf_data_free(&d);
    free(buf);
    return 0;
}
