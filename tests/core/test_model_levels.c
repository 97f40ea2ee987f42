/* test_model_levels.c: a model header's preprocess.dequantize.levels is
 * range-checked at load (issue 15): an integer in [2, 65536], as a job's.
 * Before, (int)1e300 was an out-of-range conversion and 0, -3 or 1.5 loaded
 * as a dequantized model with a meaningless floor. */
#include "../test.h"

#include "../../core/model.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int load_with_levels(const char *levels, char *err, size_t errlen) {
    nf_flow *f = NULL;
    char e[200];
    if (nf_flow_create("{\"dim\":2,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]}", &f, e, sizeof e)) return -999;
    char pp[160];
    snprintf(pp, sizeof pp, "{\"dequantize\":{\"kind\":\"uniform\",\"levels\":%s}}", levels);
    cJSON *p = cJSON_Parse(pp);
    void *buf = NULL;
    size_t len = 0;
    int rc = nf_model_save(f, p, NULL, NULL, &buf, &len);
    cJSON_Delete(p);
    nf_flow_free(f);
    if (rc) return -998;
    nf_model *m = NULL;
    rc = nf_model_load(buf, len, &m, err, errlen);
    if (!rc && m->levels != atoi(levels)) rc = -997;
    nf_model_free(m);
    free(buf);
    return rc;
}

TEST(model_levels_range_checked) {
    const char *bad[] = {"1e300", "-1e300", "-3", "0", "1", "1.5", "70000", "\"256\"", "true"};
    char err[300];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = load_with_levels(bad[i], err, sizeof err);
        CHECK_MSG(rc == NF_EFORMAT && strstr(err, "levels"), "levels %s: rc %d, %s", bad[i], rc, err);
    }
    CHECK_EQ_INT(load_with_levels("2", err, sizeof err), 0);
    CHECK_EQ_INT(load_with_levels("256", err, sizeof err), 0);
    CHECK_EQ_INT(load_with_levels("65536", err, sizeof err), 0);
}
