/* test_flowctl_more.c: flowctl's newer commands and options against the
 * real daemon (started with a token file): --version and `version` on both
 * binaries, --token-file, errors as JSON under --json, datasets, delete,
 * wait, metrics (the loss curve as CSV) and encode/decode (CSV and .npy),
 * each compared with the server's own JSON answer. */
#include "../test.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *flowctl_bin(void) {
    static char buf[4200];
    snprintf(buf, sizeof buf, "%s", dmn_bin());
    char *s = strrchr(buf, '/');
    if (s) strcpy(s + 1, "flowctl");
    return buf;
}

/* runs `flowctl ARGS > out` (a shell line; the token file and URL given
 * here); returns the exit status, the output in *text (malloc'd) */
static int ctl(dmn *d, const char *args, char **text) {
    char cmd[8192];
    const char *out = dmn_path(d, "ctl.out");
    snprintf(cmd, sizeof cmd, "'%s' --url http://127.0.0.1:%d %s > '%s'", flowctl_bin(), d->port, args, out);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int rc = dmn_run(d, argv, NULL, 60);
    if (text) {
        FILE *f = fopen(out, "r");
        size_t cap = 1 << 20, n = 0;
        *text = calloc(1, cap);
        if (f && *text) {
            n = fread(*text, 1, cap - 1, f);
            (*text)[n] = 0;
        }
        if (f) fclose(f);
    }
    return rc;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

static void more_body(dmn *d) {
    FILE *f = fopen(dmn_path(d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "write wtok-ctl-0123456789\nread rtok-ctl-0123456789\n");
    fclose(f);
    f = fopen(dmn_path(d, "mytoken"), "w");
    REQUIRE(f);
    fprintf(f, "# my token\n\nwrite wtok-ctl-0123456789\n");
    fclose(f);
    char tf[300], ro[300], *t = NULL;
    snprintf(tf, sizeof tf, "--token-file '%s'", dmn_path(d, "mytoken"));
    f = fopen(dmn_path(d, "readtoken"), "w");
    REQUIRE(f);
    fprintf(f, "rtok-ctl-0123456789\n");
    fclose(f);
    snprintf(ro, sizeof ro, "--token-file='%s'", dmn_path(d, "readtoken"));
    REQUIRE(dmn_make_model(d, "m", 0, NULL) == 0);
    const char *args[] = {"--token-file", dmn_path(d, "tokens"), NULL};
    REQUIRE(dmn_start(d, args, NULL) == 0);
    d->token = "wtok-ctl-0123456789";

    /* versions */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "'%s' --version > '%s'", dmn_bin(), dmn_path(d, "v.out"));
    const char *sh[] = {"/bin/sh", "-c", cmd, NULL};
    CHECK_EQ_INT(dmn_run(d, sh, NULL, 30), 0);
    FILE *vf = fopen(dmn_path(d, "v.out"), "r");
    char line[256] = "";
    if (vf && fgets(line, sizeof line, vf)) CHECK_MSG(!strcmp(line, "flowd 0.1.0\n"), "flowd --version: %s", line);
    if (vf) fclose(vf);
    CHECK_EQ_INT(ctl(d, "--version", &t), 0);
    CHECK_MSG(t && !strcmp(t, "flowctl 0.1.0\n"), "flowctl --version: %s", t);
    free(t);
    CHECK_EQ_INT(ctl(d, "version", &t), 2); /* no token: the server part is a 401 */
    CHECK_MSG(t && strstr(t, "flowctl 0.1.0"), "%s", t);
    free(t);
    char a[900];
    snprintf(a, sizeof a, "%s --json version", ro);
    CHECK_EQ_INT(ctl(d, a, &t), 0);
    cJSON *o = cJSON_Parse(t ? t : "");
    CHECK_MSG(o && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(o, "client")), "0.1.0") &&
                  !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "server"), "version")), "0.1.0"),
              "version --json: %s", t);
    cJSON_Delete(o);
    free(t);

    /* errors as JSON under --json: a 401, a usage error, a missing token file */
    CHECK_EQ_INT(ctl(d, "--json datasets", &t), 2);
    o = cJSON_Parse(t ? t : "");
    CHECK_MSG(o && cJSON_GetObjectItem(o, "status")->valuedouble == 401 &&
                  !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "code")), "unauthenticated"),
              "401 under --json: %s", t);
    cJSON_Delete(o);
    free(t);
    CHECK_EQ_INT(ctl(d, "--json wait notanumber", &t), 1);
    o = cJSON_Parse(t ? t : "");
    CHECK_MSG(o && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "code")), "usage"),
              "usage error under --json: %s", t);
    cJSON_Delete(o);
    free(t);
    CHECK_EQ_INT(ctl(d, "--token-file /nonexistent/file models", NULL), 1);
    /* a read token may not delete: 403 */
    snprintf(a, sizeof a, "%s --json delete model m", ro);
    CHECK_EQ_INT(ctl(d, a, &t), 2);
    CHECK_MSG(t && strstr(t, "\"permission_denied\""), "%s", t);
    free(t);

    /* datasets */
    f = fopen(dmn_path(d, "rows.csv"), "w");
    REQUIRE(f);
    fprintf(f, "x,y\n0.5,0.25\n-1,2\n0,0\n3,-0.75\n");
    fclose(f);
    snprintf(a, sizeof a, "%s --json upload '%s' --name rows", tf, dmn_path(d, "rows.csv"));
    CHECK_EQ_INT(ctl(d, a, &t), 0);
    o = cJSON_Parse(t ? t : "");
    char dsid[64];
    snprintf(dsid, sizeof dsid, "%s", o && cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")) ? cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")) : "?");
    cJSON_Delete(o);
    free(t);
    snprintf(a, sizeof a, "%s datasets", ro);
    CHECK_EQ_INT(ctl(d, a, &t), 0);
    CHECK_MSG(t && strstr(t, dsid) && strstr(t, "rows") && strstr(t, "ID"), "datasets: %s", t);
    free(t);

    /* encode: CSV out equals the server's JSON answer; decode goes back */
    hresp r;
    http_post_json(d, "/v1/models/m/encode", "{\"inputs\":[[0.5,0.25],[-1,2],[0,0],[3,-0.75]]}", &r);
    REQUIRE(r.status == 200);
    snprintf(a, sizeof a, "%s encode m '%s' -o '%s'", ro, dmn_path(d, "rows.csv"), dmn_path(d, "z.csv"));
    CHECK_EQ_INT(ctl(d, a, NULL), 0);
    FILE *zf = fopen(dmn_path(d, "z.csv"), "r");
    REQUIRE(zf);
    CHECK(fgets(line, sizeof line, zf) && !strcmp(line, "z0,z1,log_det\n"));
    const cJSON *lat = cJSON_GetObjectItem(r.json, "latents"), *ld = cJSON_GetObjectItem(r.json, "log_det");
    for (int i = 0; i < 4; i++) {
        double z0, z1, l;
        REQUIRE(fscanf(zf, "%lf,%lf,%lf", &z0, &z1, &l) == 3);
        CHECK_CLOSE(z0, cJSON_GetArrayItem(cJSON_GetArrayItem(lat, i), 0)->valuedouble, 1e-6, 1e-6);
        CHECK_CLOSE(z1, cJSON_GetArrayItem(cJSON_GetArrayItem(lat, i), 1)->valuedouble, 1e-6, 1e-6);
        CHECK_CLOSE(l, cJSON_GetArrayItem(ld, i)->valuedouble, 1e-6, 1e-6);
    }
    fclose(zf);
    hresp_free(&r);
    /* z.csv's z columns back through decode (.npy out: n x 3) */
    f = fopen(dmn_path(d, "z.csv"), "r");
    FILE *g = fopen(dmn_path(d, "z2.csv"), "w");
    REQUIRE(f && g);
    while (fgets(line, sizeof line, f)) {
        char *c = strrchr(line, ',');
        if (c) *c = 0;
        fprintf(g, "%s\n", line);
    }
    fclose(f);
    fclose(g);
    snprintf(a, sizeof a, "%s decode m '%s'", ro, dmn_path(d, "z2.csv"));
    CHECK_EQ_INT(ctl(d, a, &t), 0);
    double xs[8] = {0.5, 0.25, -1, 2, 0, 0, 3, -0.75}, x0, x1, l;
    const char *p = t ? strchr(t, '\n') : NULL;
    CHECK_MSG(t && !strncmp(t, "x0,x1,log_det\n", 14), "decode: %s", t ? t : "");
    for (int i = 0; p && i < 4; i++) {
        CHECK(sscanf(p + 1, "%lf,%lf,%lf", &x0, &x1, &l) == 3);
        CHECK_CLOSE(x0, xs[2 * i], 1e-5, 1e-5);
        CHECK_CLOSE(x1, xs[2 * i + 1], 1e-5, 1e-5);
        p = strchr(p + 1, '\n');
    }
    free(t);
    snprintf(a, sizeof a, "%s encode m '%s' -o '%s'", ro, dmn_path(d, "rows.csv"), dmn_path(d, "z.npy"));
    CHECK_EQ_INT(ctl(d, a, NULL), 0);
    f = fopen(dmn_path(d, "z.npy"), "rb");
    char magic[8] = "";
    CHECK(f && fread(magic, 1, 6, f) == 6 && !memcmp(magic, "\x93NUMPY", 6));
    if (f) fclose(f);

    /* a job: wait, then its loss curve as CSV */
    long long job = submit_job(d, "{\"model\":\"w\",\"dataset\":{\"builtin\":\"moons\",\"n\":512,\"seed\":1},"
                                  "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},"
                                  "\"train\":{\"epochs\":2,\"batch_size\":64,\"log_every\":1}}");
    REQUIRE(job > 0);
    snprintf(a, sizeof a, "%s wait %lld", ro, job);
    CHECK_EQ_INT(ctl(d, a, NULL), 0);
    char mp[96];
    snprintf(mp, sizeof mp, "/v1/jobs/%lld/metrics?limit=10000", job);
    http_get(d, mp, &r);
    int rows = cJSON_GetArraySize(cJSON_GetObjectItem(r.json, "metrics"));
    hresp_free(&r);
    snprintf(a, sizeof a, "%s metrics %lld", ro, job);
    CHECK_EQ_INT(ctl(d, a, &t), 0);
    CHECK_MSG(t && !strncmp(t, "step,epoch,kind,train_loss,val_loss,lr,grad_norm,time\n", 54), "metrics: %.200s",
              t ? t : "");
    CHECK_MSG(rows > 3 && count_lines(t) == rows + 1, "metrics: %d lines for %d rows", count_lines(t), rows);
    free(t);

    /* delete: a dataset, a model; again: 2 with the error as JSON */
    snprintf(a, sizeof a, "%s delete dataset %s", tf, dsid);
    CHECK_EQ_INT(ctl(d, a, NULL), 0);
    snprintf(a, sizeof a, "%s delete model w", tf);
    CHECK_EQ_INT(ctl(d, a, NULL), 0);
    snprintf(a, sizeof a, "%s --json delete model w", tf);
    CHECK_EQ_INT(ctl(d, a, &t), 2);
    CHECK_MSG(t && strstr(t, "\"status\":404") && strstr(t, "\"not_found\""), "%s", t);
    free(t);
    http_get(d, "/v1/models/w", &r);
    CHECK_EQ_INT(r.status, 404);
    hresp_free(&r);
}

TEST_T(flowctl_more_commands, 120) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    more_body(&d);
    dmn_cleanup(&d);
}
