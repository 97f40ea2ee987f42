/* test_cnf.c: continuous flows over HTTP: an ffjord job trains, its model
 * page says how it scores (solver, tolerances, trace), every scoring answer
 * names the trace, the job's progress and metrics count NFE, and bad ODE
 * settings are 422s that name the field. */
#include "../test.h"
#include "daemon.h"
#include "oapi.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const cJSON *get(const cJSON *o, const char *k) {
    return o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}
static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void check_schema(const cJSON *doc, const char *name, const cJSON *v) {
    char err[400] = "";
    CHECK_MSG(oapi_check(doc, name, v, err, sizeof err) == 0, "%s: %s", name, err);
}

TEST_T(http_cnf_job_model_and_scoring, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *args[] = {NULL};
    REQUIRE(dmn_start(&d, args, NULL) == 0);
    hresp r;
    http_get(&d, "/openapi.yaml", &r);
    REQUIRE(r.status == 200);
    char err[400] = "";
    cJSON *doc = oapi_parse(r.body, r.len, err, sizeof err);
    hresp_free(&r);
    REQUIRE(doc);

    /* bad ODE settings: 422 naming the field, at submission */
    static const struct { const char *flow, *field; } bad[] = {
        {"{\"preset\":\"ffjord\",\"rtol\":-1e-5}", "rtol"},
        {"{\"preset\":\"ffjord\",\"solver\":\"rk4\",\"steps\":0}", "steps"},
        {"{\"preset\":\"ffjord\",\"trace\":\"sometimes\"}", "trace"},
        {"{\"preset\":\"ffjord\",\"activation\":\"relu\"}", "activation"},
        {"{\"layers\":[{\"type\":\"cnf\",\"atol\":0}]}", "atol"},
        {"{\"preset\":\"realnvp\",\"max_steps\":10}", "max_steps"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char job[400];
        snprintf(job, sizeof job, "{\"model\":\"bad\",\"dataset\":{\"builtin\":\"moons\",\"n\":500},\"flow\":%s}",
                 bad[i].flow);
        http_post_json(&d, "/v1/jobs", job, &r);
        CHECK_MSG(r.status == 422 && strstr(r.body, bad[i].field), "%s: %ld %s", bad[i].flow, r.status, r.body);
        hresp_free(&r);
    }

    long long id = submit_job(&d, "{\"model\":\"c\",\"dataset\":{\"builtin\":\"moons\",\"n\":1000},"
                                  "\"flow\":{\"preset\":\"ffjord\",\"hidden\":[16,16],\"depth\":2,"
                                  "\"reg_kinetic\":0.01},"
                                  "\"train\":{\"epochs\":2,\"batch_size\":128,\"log_every\":2,"
                                  "\"test_fraction\":0.1,\"eval_samples\":50}}");
    REQUIRE(id > 0);
    char state[32];
    REQUIRE(wait_job(&d, id, 90, state, sizeof state) == 0);
    CHECK_MSG(!strcmp(state, "succeeded"), "state %s", state);
    cJSON *job = get_job(&d, id);
    const cJSON *prog = get(job, "progress");
    CHECK_MSG(jnum(prog, "nfe") > 0 && jnum(prog, "nfe_forward") > 0 && jnum(prog, "kinetic") > 0,
              "progress without NFE");
    check_schema(doc, "JobProgress", prog);
    cJSON_Delete(job);

    /* the model page: solver, tolerances, scoring trace */
    http_get(&d, "/v1/models/c", &r);
    REQUIRE(r.status == 200);
    check_schema(doc, "ModelDetail", r.json);
    const cJSON *ode = get(r.json, "ode");
    CHECK(!strcmp(jstr(ode, "trace"), "exact") && cJSON_IsTrue(get(ode, "log_prob_exact")));
    const cJSON *l0 = cJSON_GetArrayItem(get(ode, "layers"), 0);
    CHECK(!strcmp(jstr(l0, "solver"), "dopri5") && jnum(l0, "rtol") == 1e-5 && jnum(l0, "atol") == 1e-5);
    CHECK_EQ_INT(cJSON_GetArraySize(get(ode, "layers")), 2);
    const cJSON *met = get(cJSON_GetArrayItem(get(r.json, "versions"), 0), "metrics");
    CHECK(!strcmp(jstr(met, "likelihood"), "exact"));
    CHECK(jnum(get(met, "ode"), "score_nfe") > 0 && jnum(get(met, "ode"), "train_nfe") > 0);
    hresp_free(&r);

    /* every scoring answer names the trace */
    http_post_json(&d, "/v1/models/c/log_prob", "{\"inputs\":[[0.5,0.2],[1.5,-0.3]]}", &r);
    CHECK_MSG(r.status == 200 && !strcmp(jstr(r.json, "trace"), "exact"), "%ld %s", r.status, r.body);
    check_schema(doc, "LogProbResponse", r.json);
    hresp_free(&r);
    http_post_json(&d, "/v1/models/c/encode", "{\"inputs\":[[0.5,0.2]]}", &r);
    CHECK(r.status == 200 && !strcmp(jstr(r.json, "trace"), "exact"));
    check_schema(doc, "EncodeResponse", r.json);
    hresp_free(&r);
    http_post_json(&d, "/v1/models/c/decode", "{\"latents\":[[0.1,-0.2]]}", &r);
    CHECK(r.status == 200 && !strcmp(jstr(r.json, "trace"), "exact"));
    check_schema(doc, "DecodeResponse", r.json);
    hresp_free(&r);
    http_post_json(&d, "/v1/models/c/sample", "{\"n\":5,\"seed\":1,\"return_log_prob\":true,\"temperature\":0.7}", &r);
    CHECK(r.status == 200 && !strcmp(jstr(r.json, "trace"), "exact"));
    check_schema(doc, "SampleResponse", r.json);
    hresp_free(&r);
    cJSON_Delete(doc);
    dmn_cleanup(&d);
}
