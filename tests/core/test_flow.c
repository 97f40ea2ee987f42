/* test_flow.c: whole flows: presets, composition, gradients of log_prob,
 * base distributions, serialisation, sampling, chunking, normalisation. */
#include "../test.h"
#include "layercheck.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef NF_DOUBLE
#define GTOL 1e-5
#else
#define GTOL 0 /* gradients are checked in the double build */
#endif

static nf_flow *make(const char *spec) {
    nf_flow *f = NULL;
    char err[300] = "";
    int rc = nf_flow_create(spec, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "nf_flow_create(%s): %s", spec, err);
    return f;
}

/* ---- the registries against the files that must know every entry ---------
 * A layer type in nf_layer_kinds (core/flow.c) or a preset of core/presets.c
 * must also be in schema/job.schema.json (the Layer union and the preset
 * enum, and nothing else there) and in a seed of fuzz/corpus/flow_spec/; the
 * allocation-failure test checks its own specs (test_alloc_fail.c).  Paths
 * are relative to the repository root, where the tests run. */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = NULL;
    size_t n = 0;
    if (!fseek(f, 0, SEEK_END)) {
        long len = ftell(f);
        if (len >= 0 && !fseek(f, 0, SEEK_SET) && (s = malloc((size_t)len + 1)))
            s[n = fread(s, 1, (size_t)len, f)] = 0;
    }
    fclose(f);
    return s;
}

static cJSON *load_json(const char *path) {
    char *s = slurp(path);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    free(s);
    return j;
}

/* 1 if the JSON array arr holds the string name */
static int str_array_has(const cJSON *arr, const char *name) {
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) if (cJSON_IsString(e) && !strcmp(e->valuestring, name)) return 1;
    return 0;
}

static int is_layer_kind(const char *type) {
    for (const nf_layer_kind *k = nf_layer_kinds; k->type; k++)
        if (!strcmp(k->type, type)) return 1;
    return 0;
}

static int is_preset(const char *name) {
    for (int i = 0; nf_preset_name(i); i++)
        if (!strcmp(nf_preset_name(i), name)) return 1;
    return 0;
}

/* the layer types of the schema's Layer union: the "type" enums of the
 * definitions its oneOf refers to, gathered into one array (caller deletes) */
static cJSON *schema_layer_types(const cJSON *schema) {
    const cJSON *defs = cJSON_GetObjectItemCaseSensitive(schema, "$defs");
    const cJSON *one = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(defs, "Layer"), "oneOf");
    cJSON *types = cJSON_CreateArray(), *alt;
    CHECK_MSG(cJSON_GetArraySize(one) > 0, "schema/job.schema.json: no $defs.Layer.oneOf");
    cJSON_ArrayForEach(alt, one) {
        const char *ref = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(alt, "$ref"));
        const char *pre = "#/$defs/";
        CHECK_MSG(ref && !strncmp(ref, pre, strlen(pre)), "Layer.oneOf: an entry without a $ref");
        if (!ref || strncmp(ref, pre, strlen(pre))) continue;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(defs, ref + strlen(pre)), "properties"),
            "type");
        const cJSON *e, *en = cJSON_GetObjectItemCaseSensitive(type, "enum");
        CHECK_MSG(cJSON_IsArray(en), "%s: no properties.type.enum", ref);
        cJSON_ArrayForEach(e, en) cJSON_AddItemToArray(types, cJSON_Duplicate(e, 0));
    }
    return types;
}

TEST(flow_registry_in_job_schema) {
    cJSON *schema = load_json("schema/job.schema.json");
    REQUIRE(schema != NULL); /* run from the repository root */
    cJSON *types = schema_layer_types(schema);
    const cJSON *e, *presets = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetObjectItemCaseSensitive(schema, "$defs"), "PresetFlow"),
                "properties"),
            "preset"),
        "enum");
    int n = 0;
    for (const nf_layer_kind *k = nf_layer_kinds; k->type; k++, n++)
        CHECK_MSG(str_array_has(types, k->type),
                  "layer type %s is not in schema/job.schema.json ($defs.Layer)", k->type);
    CHECK(n > 0);
    cJSON_ArrayForEach(e, types)
        CHECK_MSG(cJSON_IsString(e) && is_layer_kind(e->valuestring),
                  "schema/job.schema.json: layer type %s is not registered", e->valuestring);
    for (int i = 0; nf_preset_name(i); i++)
        CHECK_MSG(str_array_has(presets, nf_preset_name(i)),
                  "preset %s is not in schema/job.schema.json ($defs.PresetFlow)",
                  nf_preset_name(i));
    CHECK(nf_preset_name(0) != NULL);
    cJSON_ArrayForEach(e, presets)
        CHECK_MSG(cJSON_IsString(e) && is_preset(e->valuestring),
                  "schema/job.schema.json: preset %s is not in core/presets.c", e->valuestring);
    cJSON_Delete(types);
    cJSON_Delete(schema);
}

TEST(flow_registry_in_fuzz_corpus) {
    const char *dir = "fuzz/corpus/flow_spec";
    DIR *d = opendir(dir);
    REQUIRE(d != NULL); /* run from the repository root */
    cJSON *layers = cJSON_CreateArray(), *presets = cJSON_CreateArray();
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (de->d_name[0] == '.' || !strstr(de->d_name, ".json")) continue;
        cJSON *spec = load_json(path), *l;
        CHECK_MSG(spec != NULL, "%s is not JSON", path);
        const char *preset = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spec, "preset"));
        if (preset) cJSON_AddItemToArray(presets, cJSON_CreateString(preset));
        cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(spec, "layers")) {
            const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(l, "type"));
            if (type) cJSON_AddItemToArray(layers, cJSON_CreateString(type));
        }
        cJSON_Delete(spec);
    }
    closedir(d);
    for (const nf_layer_kind *k = nf_layer_kinds; k->type; k++)
        CHECK_MSG(str_array_has(layers, k->type), "layer type %s is in no seed of %s/", k->type,
                  dir);
    for (int i = 0; nf_preset_name(i); i++)
        CHECK_MSG(str_array_has(presets, nf_preset_name(i)), "preset %s is in no seed of %s/",
                  nf_preset_name(i), dir);
    cJSON_Delete(layers);
    cJSON_Delete(presets);
}

TEST(flow_gemm_matches_reference) {
    nf_rng r;
    nf_rng_seed(&r, 1);
    int M = 7, N = 5, K = 9;
    nf_real A[81], Bm[81], C1[81], C2[81];
    for (int one = 0; one < 2; one++, M = 1) /* M = 1 takes the GEMV path */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            lc_randn(&r, A, 81, 1, 0);
            lc_randn(&r, Bm, 81, 1, 0);
            lc_randn(&r, C1, 81, 1, 0);
            memcpy(C2, C1, sizeof C1);
            int lda = ta ? M : K, ldb = tb ? K : N;
            nf_gemm(ta, tb, M, N, K, 0.7f, A, lda, Bm, ldb, 0.3f, C1, N);
            nf_gemm_ref(ta, tb, M, N, K, 0.7f, A, lda, Bm, ldb, 0.3f, C2, N);
            for (int i = 0; i < M * N; i++) CHECK_CLOSE(C1[i], C2[i], 1e-5, 1e-5);
        }
}

/* the one-row kernel (core/kern.c) that nf_gemm takes for B = 1 dense layers:
 * every row/column remainder of the 4-row x 8-column blocking, the K < 8
 * and K = 1 paths, a leading dimension wider than K, beta 0 and 1 */
TEST(flow_gemv_rows_matches_reference) {
    nf_rng r;
    nf_rng_seed(&r, 2);
    static const int Ns[] = {1, 2, 3, 4, 5, 7, 8, 13, 128};
    static const int Ks[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 128, 131};
    nf_real *A = malloc(sizeof(nf_real) * 140), *W = malloc(sizeof(nf_real) * 128 * 140);
    nf_real *C1 = malloc(sizeof(nf_real) * 128), *C2 = malloc(sizeof(nf_real) * 128);
    REQUIRE(A && W && C1 && C2);
    for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (int pad = 0; pad < 2; pad++)
                for (int beta = 0; beta < 2; beta++) {
                    int N = Ns[ni], K = Ks[ki], ld = K + 3 * pad;
                    lc_randn(&r, A, K, 1, 0);
                    lc_randn(&r, W, (size_t)N * ld, 1, 0);
                    lc_randn(&r, C1, N, 1, 0);
                    memcpy(C2, C1, sizeof(nf_real) * N);
                    nf_gemm(0, 1, 1, N, K, 1, A, K, W, ld, (nf_real)beta, C1, N);
                    nf_gemm_ref(0, 1, 1, N, K, 1, A, K, W, ld, (nf_real)beta, C2, N);
                    for (int i = 0; i < N; i++)
                        CHECK_MSG(fabs(C1[i] - C2[i]) <= 1e-5 * (1 + fabs(C2[i])),
                                  "N=%d K=%d ld=%d beta=%d: [%d] %g vs %g", N, K, ld, beta, i,
                                  (double)C1[i], (double)C2[i]);
                }
    free(A);
    free(W);
    free(C1);
    free(C2);
}

/* the conditioner's GEMM + fused bias/activation path against plain loops */
TEST(flow_net_matches_plain_loops) {
    for (int act = 0; act < NF_ACT_COUNT; act++) {
        nf_net n;
        int hidden[2] = {6, 4};
        REQUIRE(nf_net_mlp(&n, 3, 2, 5, hidden, 2, (nf_act)act) == 0);
        nf_rng r;
        nf_rng_seed(&r, 5);
        nf_real *p = malloc(n.nparams * sizeof *p), *ws = malloc(nf_net_ws_size(&n, 4) * sizeof *p);
        lc_randn(&r, p, n.nparams, 0.7, 0);
        nf_real in[12], ctx[8], out[20];
        lc_randn(&r, in, 12, 1, 0);
        lc_randn(&r, ctx, 8, 1, 0);
        nf_net_forward(&n, p, in, ctx, out, 4, ws, NULL);
        for (int b = 0; b < 4; b++) {
            double h0[8], h1[8], o[8];
            int w0 = 5;
            for (int k = 0; k < 6; k++) {
                double s = p[n.lin[0].b_off + k];
                for (int j = 0; j < w0; j++)
                    s += p[n.lin[0].w_off + k * w0 + j] * (j < 3 ? in[b * 3 + j] : ctx[b * 2 + j - 3]);
                h0[k] = act == 0 ? (s > 0 ? s : 0) : act == 1 ? tanh(s) : (s > 0 ? s : expm1(s));
            }
            for (int k = 0; k < 4; k++) {
                double s = p[n.lin[1].b_off + k];
                for (int j = 0; j < 6; j++) s += p[n.lin[1].w_off + k * 6 + j] * h0[j];
                h1[k] = act == 0 ? (s > 0 ? s : 0) : act == 1 ? tanh(s) : (s > 0 ? s : expm1(s));
            }
            for (int k = 0; k < 5; k++) {
                double s = p[n.lin[2].b_off + k];
                for (int j = 0; j < 4; j++) s += p[n.lin[2].w_off + k * 4 + j] * h1[j];
                o[k] = s;
                CHECK_CLOSE(out[b * 5 + k], o[k], 1e-5, 1e-5);
            }
        }
        free(p);
        free(ws);
        nf_net_free(&n);
    }
}

/* MADE: output unit (i,p) must not depend on inputs of degree >= deg(i). */
TEST(flow_made_autoregressive_property) {
    for (int order = 0; order < NF_ORDER_COUNT; order++) {
        nf_net n;
        int hidden[2] = {9, 7};
        int D = 5, P = 2;
        REQUIRE(nf_net_made(&n, D, 1, P, hidden, 2, NF_ACT_TANH, (nf_order)order, 3) == 0);
        nf_rng r;
        nf_rng_seed(&r, 2);
        nf_real *p = malloc(n.nparams * sizeof *p), *ws = malloc(nf_net_ws_size(&n, 1) * sizeof *p);
        nf_net_init(&n, p, &r);
        lc_randn(&r, p, n.nparams, 0.5, 0); /* final layer non-zero too */
        nf_net_constrain(&n, p);
        nf_real x[5], c[1] = {0.3f}, o1[10], o2[10];
        lc_randn(&r, x, 5, 1, 0);
        nf_net_forward(&n, p, x, c, o1, 1, ws, NULL);
        int seen_dep = 0;
        for (int j = 0; j < D; j++) {
            nf_real keep = x[j];
            x[j] += 0.5f;
            nf_net_forward(&n, p, x, c, o2, 1, ws, NULL);
            x[j] = keep;
            for (int i = 0; i < D; i++)
                for (int q = 0; q < P; q++) {
                    int changed = o1[i * P + q] != o2[i * P + q];
                    if (n.degrees[i] <= n.degrees[j])
                        CHECK_MSG(!changed, "order %d: out %d depends on input %d", order, i, j);
                    else
                        seen_dep |= changed;
                }
        }
        CHECK(seen_dep);
        free(p);
        free(ws);
        nf_net_free(&n);
    }
}

static const char *preset_specs[] = {
    "{\"dim\":4,\"preset\":\"realnvp\",\"depth\":3,\"hidden\":[8]}",
    "{\"dim\":4,\"preset\":\"nice\",\"depth\":2,\"hidden\":[8]}",
    "{\"dim\":4,\"preset\":\"maf\",\"depth\":2,\"hidden\":[8]}",
    "{\"dim\":4,\"preset\":\"iaf\",\"depth\":2,\"hidden\":[8]}",
    "{\"dim\":4,\"preset\":\"nsf\",\"depth\":2,\"hidden\":[8],\"bins\":4}",
    "{\"dim\":4,\"preset\":\"nsf_ar\",\"depth\":2,\"hidden\":[8],\"bins\":4}",
    "{\"dim\":4,\"preset\":\"glow\",\"depth\":2,\"hidden\":[8]}",
    "{\"dim\":3,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8],\"context_dim\":2,\"base\":\"diag_normal\"}",
    "{\"dim\":3,\"preset\":\"maf\",\"depth\":2,\"hidden\":[8],\"context_dim\":2,\"base\":{\"type\":\"mixture\",\"components\":3}}",
    /* the multiscale image architectures */
    "{\"shape\":[1,4,4],\"preset\":\"glow\",\"levels\":2,\"depth\":1,\"hidden_channels\":4}",
    "{\"shape\":[1,4,4],\"preset\":\"realnvp\",\"levels\":2,\"depth\":1,\"hidden_channels\":4,\"blocks\":1}",
    /* continuous flows: tolerances the round trip's can hold */
#ifdef NF_DOUBLE
    "{\"dim\":3,\"preset\":\"ffjord\",\"depth\":2,\"hidden\":[8],\"context_dim\":1,\"rtol\":1e-11,\"atol\":1e-11}",
#else
    "{\"dim\":3,\"preset\":\"ffjord\",\"depth\":2,\"hidden\":[8],\"context_dim\":1,\"rtol\":1e-6,\"atol\":1e-6}",
#endif
};
#define NPRESETS (int)(sizeof preset_specs / sizeof preset_specs[0])

/* whole-flow round trip and Jacobian for every preset */
TEST(flow_presets_invert_and_jacobian) {
    for (int i = 0; i < NPRESETS; i++) {
        nf_flow *f = make(preset_specs[i]);
        if (!f) continue;
        lc_perturb(f, 0.2, (uint64_t)i);
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f), B = 5;
        nf_real x[5 * 16], ctx[20];
        nf_rng r;
        nf_rng_seed(&r, 77);
        lc_randn(&r, x, (size_t)B * D, 1, 0);
        lc_randn(&r, ctx, (size_t)B * C, 1, 0);
        CHECK_MSG(lc_check_roundtrip(f, x, C ? ctx : NULL, B,
#ifdef NF_DOUBLE
                                     1e-8
#else
                                     5e-3
#endif
                                     ) == 0, "preset %s", preset_specs[i]);
        CHECK_MSG(lc_check_jacobian(f, x, C ? ctx : NULL, B,
#ifdef NF_DOUBLE
                                    1e-6
#else
                                    5e-2
#endif
                                    ) == 0, "preset %s", preset_specs[i]);
        nf_flow_free(f);
    }
}

/* a fresh flow is the identity: log p(x) equals the base density */
TEST(flow_fresh_is_identity) {
    for (int i = 0; i < NPRESETS; i++) {
        if (strstr(preset_specs[i], "base")) continue;
        /* Glow's sigmoid couplings start as a fixed scale sigmoid(2), not the identity */
        if (strstr(preset_specs[i], "shape") && strstr(preset_specs[i], "glow")) continue;
        nf_flow *f = make(preset_specs[i]);
        if (!f) continue;
        nf_ws *w;
        REQUIRE(nf_ws_create(f, 8, &w) == 0);
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
        nf_real x[8 * 16], z[8 * 16], ld[8], ctx[16] = {0};
        nf_rng r;
        nf_rng_seed(&r, 1);
        lc_randn(&r, x, 8 * (size_t)D, 1, 0);
        CHECK(nf_flow_encode(f, w, x, C ? ctx : NULL, 8, z, ld) == 0);
        for (int k = 0; k < 8 * D; k++) {
            /* permutations reorder; compare sorted magnitudes per row instead */
            double sx = 0, sz = 0;
            if (k % D == 0) {
                for (int j = 0; j < D; j++) {
                    sx += (double)x[k + j] * x[k + j];
                    sz += (double)z[k + j] * z[k + j];
                }
                CHECK_CLOSE(sz, sx, 1e-5, 1e-4);
            }
        }
        for (int k = 0; k < 8; k++) CHECK_CLOSE(ld[k], 0, 1e-5, 0);
        nf_ws_free(w);
        nf_flow_free(f);
    }
}

/* d/dθ sum_b w_b log p(x_b) against central differences, every preset */
TEST_T(flow_presets_log_prob_gradient, 300) {
#ifndef NF_DOUBLE
    return;
#endif
    for (int i = 0; i < NPRESETS; i++) {
        nf_flow *f = make(preset_specs[i]);
        if (!f) continue;
        lc_perturb(f, 0.2, 100 + (uint64_t)i);
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f), B = 6;
        nf_ws *w;
        REQUIRE(nf_ws_create(f, B, &w) == 0);
        nf_real x[6 * 16], ctx[24], wts[6], lp[6], dx[6 * 16], dctx[24] = {0};
        nf_rng r;
        nf_rng_seed(&r, 8);
        lc_randn(&r, x, (size_t)B * D, 1, 0);
        lc_randn(&r, ctx, (size_t)B * C, 1, 0);
        lc_randn(&r, wts, B, 1, 0);
        const nf_real *cx = C ? ctx : NULL;
        /* act-norm data init first, so those params are in their trained regime */
        nf_flow_data_init(f, w, x, cx, B);
        nf_flow_zero_grad(f);
        REQUIRE(nf_flow_log_prob_grad(f, w, x, cx, B, 1, wts, lp, dx, C ? dctx : NULL) == 0);
        size_t P = nf_flow_num_params(f);
        nf_real *g = malloc(P * sizeof *g);
        memcpy(g, nf_flow_grad(f), P * sizeof *g);
        double h = 1e-6;
        int bad = 0;
        for (size_t q = 0; q < 150 && !bad; q++) {
            size_t k = P <= 150 ? q : (size_t)(nf_rng_u64(&r) % P);
            if (k >= P) break;
            nf_real *p = nf_flow_params(f) + k, keep = *p;
            double s[2];
            for (int sg = 0; sg < 2; sg++) {
                *p = keep + (sg ? -h : h);
                nf_flow_constrain(f);
                nf_flow_log_prob_grad(f, w, x, cx, B, 1, NULL, lp, NULL, NULL);
                s[sg] = 0;
                for (int b = 0; b < B; b++) s[sg] += (double)wts[b] * lp[b];
            }
            *p = keep;
            double fd = (s[0] - s[1]) / (2 * h);
            if (!(fabs(fd - g[k]) <= GTOL * (1 + fabs(fd)))) {
                bad = 1;
                CHECK_MSG(0, "%s: param %zu analytic %.10g fd %.10g", preset_specs[i], k, (double)g[k], fd);
            }
        }
        for (int k = 0; k < B * D && !bad; k++) {
            nf_real keep = x[k];
            double s[2];
            for (int sg = 0; sg < 2; sg++) {
                x[k] = keep + (sg ? -h : h);
                nf_flow_log_prob_grad(f, w, x, cx, B, 1, NULL, lp, NULL, NULL);
                s[sg] = 0;
                for (int b = 0; b < B; b++) s[sg] += (double)wts[b] * lp[b];
            }
            x[k] = keep;
            double fd = (s[0] - s[1]) / (2 * h);
            if (!(fabs(fd - dx[k]) <= GTOL * (1 + fabs(fd)))) {
                bad = 1;
                CHECK_MSG(0, "%s: dx[%d] analytic %.10g fd %.10g", preset_specs[i], k, (double)dx[k], fd);
            }
        }
        free(g);
        nf_ws_free(w);
        nf_flow_free(f);
    }
}

TEST(flow_serialise_round_trip_bitwise) {
    for (int i = 0; i < NPRESETS; i++) {
        nf_flow *f = make(preset_specs[i]);
        if (!f) continue;
        lc_perturb(f, 0.1, 5);
        char *cfg = nf_flow_config_json(f);
        REQUIRE(cfg);
        void *blob;
        size_t len;
        /* blobs hold float32: in the double build, round f's params first */
        REQUIRE(nf_flow_save_params(f, &blob, &len) == 0);
        REQUIRE(nf_flow_load_params(f, blob, len) == 0);
        free(blob);
        REQUIRE(nf_flow_save_params(f, &blob, &len) == 0);
        nf_flow *g = make(cfg);
        REQUIRE(g);
        char *cfg2 = nf_flow_config_json(g);
        CHECK_MSG(!strcmp(cfg, cfg2), "config round trip:\n%s\n%s", cfg, cfg2);
        CHECK(nf_flow_load_params(g, blob, len) == 0);
        int D = nf_flow_dim(f), C = nf_flow_context_dim(f);
        nf_ws *wf, *wg;
        REQUIRE(nf_ws_create(f, 16, &wf) == 0);
        REQUIRE(nf_ws_create(g, 16, &wg) == 0);
        nf_real x1[16 * 16], x2[16 * 16], l1[16], l2[16], ctx[32];
        nf_rng r;
        nf_rng_seed(&r, 4);
        lc_randn(&r, ctx, 16 * (size_t)C, 1, 0);
        const nf_real *cx = C ? ctx : NULL;
        CHECK(nf_flow_sample(f, wf, 16, 0.8, 42, cx, x1, l1) == 0);
        CHECK(nf_flow_sample(g, wg, 16, 0.8, 42, cx, x2, l2) == 0);
        CHECK(memcmp(x1, x2, 16 * (size_t)D * sizeof *x1) == 0);
        CHECK(memcmp(l1, l2, sizeof l1) == 0);
        CHECK(nf_flow_log_prob(f, wf, x1, cx, 16, l1) == 0);
        CHECK(nf_flow_log_prob(g, wg, x1, cx, 16, l2) == 0);
        CHECK(memcmp(l1, l2, sizeof l1) == 0);
        /* corrupt one byte: refused, and the flow is untouched */
        ((unsigned char *)blob)[len / 2] ^= 0x10;
        CHECK(nf_flow_load_params(g, blob, len) == NF_ECORRUPT);
        CHECK(nf_flow_load_params(g, blob, len - 1) == NF_ECORRUPT);
        CHECK(nf_flow_load_params(g, "NFPX", 4) == NF_EFORMAT);
        CHECK(nf_flow_log_prob(g, wg, x1, cx, 16, l2) == 0);
        CHECK(memcmp(l1, l2, sizeof l1) == 0);
        /* a smaller workspace chunks the batch: the same values up to BLAS
         * blocking (GEMM kernels may round edge rows differently) */
        nf_ws *w3;
        REQUIRE(nf_ws_create(g, 3, &w3) == 0);
        CHECK(nf_flow_sample(g, w3, 16, 0.8, 42, cx, x2, l2) == 0);
        for (int k = 0; k < 16 * D; k++) CHECK_CLOSE(x2[k], x1[k], 1e-4, 1e-4);
        CHECK(nf_flow_log_prob(g, w3, x1, cx, 16, l2) == 0);
        for (int k = 0; k < 16; k++) CHECK_CLOSE(l2[k], l1[k], 1e-4, 1e-4);
        nf_ws_free(w3);
        free(blob);
        free(cfg);
        free(cfg2);
        nf_ws_free(wf);
        nf_ws_free(wg);
        nf_flow_free(f);
        nf_flow_free(g);
    }
}

/* the log_prob returned with samples is the model's density at them */
TEST(flow_sample_log_prob_consistent) {
    nf_flow *f = make("{\"dim\":3,\"preset\":\"glow\",\"depth\":2,\"hidden\":[8],\"base\":\"diag_normal\"}");
    REQUIRE(f);
    lc_perturb(f, 0.2, 9);
    nf_ws *w;
    REQUIRE(nf_ws_create(f, 32, &w) == 0);
    nf_real x[300], lp[100], lp2[100];
    for (int t = 0; t < 2; t++) {
        double T = t ? 0.5 : 1.0;
        CHECK(nf_flow_sample(f, w, 100, T, 7, NULL, x, lp) == 0);
        CHECK(nf_flow_log_prob(f, w, x, NULL, 100, lp2) == 0);
        for (int i = 0; i < 100; i++) CHECK_CLOSE(lp[i], lp2[i], 1e-3, 1e-3);
    }
    CHECK(nf_flow_sample(f, w, 10, 0, 7, NULL, x, NULL) == NF_EINVAL);
    CHECK(nf_flow_sample(f, w, 10, NAN, 7, NULL, x, NULL) == NF_EINVAL);
    nf_ws_free(w);
    nf_flow_free(f);
}

/* temperature scales the base spread: sample std of a standard-normal-base
 * identity flow is T */
TEST(flow_temperature_scales_std) {
    nf_flow *f = make("{\"dim\":2,\"layers\":[]}");
    REQUIRE(f);
    nf_ws *w;
    REQUIRE(nf_ws_create(f, 1000, &w) == 0);
    int n = 20000;
    nf_real *x = malloc((size_t)n * 2 * sizeof *x);
    double Ts[] = {1.0, 0.7, 0.3};
    for (int t = 0; t < 3; t++) {
        CHECK(nf_flow_sample(f, w, n, Ts[t], 3, NULL, x, NULL) == 0);
        double s = 0, s2 = 0;
        for (int i = 0; i < 2 * n; i++) {
            s += x[i];
            s2 += (double)x[i] * x[i];
        }
        double m = s / (2 * n), sd = sqrt(s2 / (2 * n) - m * m);
        CHECK_CLOSE(m, 0, 0.02, 0);
        CHECK_CLOSE(sd, Ts[t], 0.01 * Ts[t] + 0.005, 0);
    }
    free(x);
    nf_ws_free(w);
    nf_flow_free(f);
}

/* The density integrates to one: 1-D (trapezoid on a fine grid) and 2-D. */
static double integrate(nf_flow *f, int D, double L, int n) {
    nf_ws *w;
    if (nf_ws_create(f, 4096, &w)) return -1;
    double h = 2 * L / (n - 1), tot = 0;
    if (D == 1) {
        nf_real *x = malloc((size_t)n * sizeof *x), *lp = malloc((size_t)n * sizeof *lp);
        for (int i = 0; i < n; i++) x[i] = (nf_real)(-L + i * h);
        nf_flow_log_prob(f, w, x, NULL, n, lp);
        for (int i = 0; i < n; i++) tot += (i == 0 || i == n - 1 ? 0.5 : 1) * exp(lp[i]);
        tot *= h;
        free(x);
        free(lp);
    } else {
        nf_real *x = malloc((size_t)n * 2 * sizeof *x), *lp = malloc((size_t)n * sizeof *lp);
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                x[2 * j] = (nf_real)(-L + i * h);
                x[2 * j + 1] = (nf_real)(-L + j * h);
            }
            nf_flow_log_prob(f, w, x, NULL, n, lp);
            double wi = i == 0 || i == n - 1 ? 0.5 : 1;
            for (int j = 0; j < n; j++) tot += wi * (j == 0 || j == n - 1 ? 0.5 : 1) * exp(lp[j]);
        }
        tot *= h * h;
        free(x);
        free(lp);
    }
    nf_ws_free(w);
    return tot;
}

TEST_T(flow_density_integrates_to_one, 300) {
    const char *one_d[] = {
        "{\"dim\":1,\"layers\":[{\"type\":\"spline_ar\",\"hidden\":[8],\"bins\":6},{\"type\":\"actnorm\"},{\"type\":\"leaky_relu\",\"alpha\":0.5},{\"type\":\"maf\",\"hidden\":[8]}],\"base\":{\"type\":\"mixture\",\"components\":3}}",
        "{\"dim\":1,\"layers\":[{\"type\":\"lu_linear\"},{\"type\":\"batchnorm\"},{\"type\":\"iaf\",\"hidden\":[4]}],\"base\":\"diag_normal\"}",
    };
    for (int i = 0; i < 2; i++) {
        nf_flow *f = make(one_d[i]);
        if (!f) continue;
        lc_perturb(f, 0.4, 3);
        double tot = integrate(f, 1, 40, 400001);
        CHECK_MSG(fabs(tot - 1) < 1e-3, "1-D flow %d integrates to %.6f", i, tot);
        nf_flow_free(f);
    }
    const char *two_d[] = {
        "{\"dim\":2,\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[16]}",
        "{\"dim\":2,\"preset\":\"nsf\",\"depth\":2,\"hidden\":[16],\"bins\":5}",
        "{\"dim\":2,\"preset\":\"maf\",\"depth\":2,\"hidden\":[16],\"base\":{\"type\":\"mixture\",\"components\":4}}",
    };
    for (int i = 0; i < 3; i++) {
        nf_flow *f = make(two_d[i]);
        if (!f) continue;
        lc_perturb(f, 0.1, 4);
        /* far from the identity: the density differs from N(0,I) */
        nf_ws *w;
        REQUIRE(nf_ws_create(f, 4, &w) == 0);
        nf_real pts[8] = {0, 0, 1, -1, -1.5f, 0.5f, 2, 2}, lp[4];
        nf_flow_log_prob(f, w, pts, NULL, 4, lp);
        double dev = 0;
        for (int k = 0; k < 4; k++) {
            double ref = -0.5 * (pts[2 * k] * pts[2 * k] + pts[2 * k + 1] * pts[2 * k + 1]) - 1.8378770664093453;
            dev = fmax(dev, fabs(lp[k] - ref));
        }
        CHECK_MSG(dev > 0.1, "2-D flow %d is too close to the base to be a test (%g)", i, dev);
        nf_ws_free(w);
        double tot = integrate(f, 2, 12, 1001);
        CHECK_MSG(fabs(tot - 1) < 1e-3, "2-D flow %d integrates to %.6f", i, tot);
        nf_flow_free(f);
    }
}

TEST(flow_rejects_bad_specs) {
    const char *bad[] = {
        "", "{", "[]", "{\"layers\":[]}", "{\"dim\":0,\"layers\":[]}", "{\"dim\":2}",
        "{\"dim\":2,\"layers\":[{\"type\":\"nope\"}]}", "{\"dim\":2,\"layers\":[3]}",
        "{\"dim\":2,\"preset\":\"nope\"}", "{\"dim\":2,\"preset\":\"maf\",\"depth\":0}",
        "{\"dim\":2,\"preset\":\"maf\",\"hidden\":\"big\"}", "{\"dim\":2,\"preset\":\"maf\",\"x\":1}",
        "{\"dim\":2,\"layers\":[],\"base\":\"cauchy\"}", "{\"dim\":2.5,\"layers\":[]}",
        "{\"dim\":1,\"preset\":\"realnvp\"}", "{\"dim\":2,\"context_dim\":-1,\"layers\":[]}",
        "{\"dim\":5,\"shape\":[1,2,3],\"layers\":[]}", "{\"shape\":[1,2],\"layers\":[]}",
        "{\"shape\":[1,2,0],\"layers\":[]}", "{\"shape\":[1,2.5,2],\"layers\":[]}",
        "{\"shape\":\"1x2x3\",\"layers\":[]}", "{\"shape\":[1,2,3,1],\"layers\":[]}",
        "{\"shape\":[1,512,512],\"layers\":[]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nf_flow *f = (nf_flow *)1;
        char err[200] = "";
        int rc = nf_flow_create(bad[i], &f, err, sizeof err);
        CHECK_MSG(rc == NF_EINVAL && f == NULL && err[0], "spec %zu (%s): rc %d err '%s'", i, bad[i], rc, err);
    }
    nf_flow_free(NULL);
    nf_ws_free(NULL);
}

/* "shape" declares the image of a row: dim may be left out, the canonical
 * config keeps it, and a flow without one says so */
TEST(flow_shape_declared_and_kept) {
    nf_flow *f = make("{\"shape\":[2,3,4],\"layers\":[{\"type\":\"actnorm\"}]}");
    REQUIRE(f);
    int s[3];
    CHECK(nf_flow_dim(f) == 24);
    CHECK(nf_flow_shape(f, s) == 1 && s[0] == 2 && s[1] == 3 && s[2] == 4);
    char *cfg = nf_flow_config_json(f);
    REQUIRE(cfg);
    CHECK_MSG(strstr(cfg, "\"shape\":[2,3,4]"), "%s", cfg);
    nf_flow *g = make(cfg);
    REQUIRE(g);
    CHECK(nf_flow_shape(g, s) == 1 && s[0] == 2 && s[1] == 3 && s[2] == 4);
    free(cfg);
    nf_flow_free(g);
    nf_flow_free(f);
    f = make("{\"dim\":24,\"layers\":[]}");
    REQUIRE(f);
    CHECK(nf_flow_shape(f, s) == 0 && s[0] == 0);
    CHECK(nf_flow_shape(f, NULL) == 0);
    nf_flow_free(f);
}

TEST(flow_context_required_when_conditional) {
    nf_flow *f = make("{\"dim\":2,\"context_dim\":1,\"preset\":\"realnvp\",\"depth\":1,\"hidden\":[4]}");
    REQUIRE(f);
    nf_ws *w;
    REQUIRE(nf_ws_create(f, 4, &w) == 0);
    nf_real x[4] = {0}, lp[2];
    CHECK(nf_flow_log_prob(f, w, x, NULL, 2, lp) == NF_EINVAL);
    nf_ws_free(w);
    nf_flow_free(f);
}

/* act-norm data init standardises its output on the first batch (glow) */
TEST(flow_data_init_standardises) {
    nf_flow *f = make("{\"dim\":3,\"layers\":[{\"type\":\"actnorm\"}]}");
    REQUIRE(f);
    nf_ws *w;
    REQUIRE(nf_ws_create(f, 500, &w) == 0);
    nf_real x[1500], z[1500];
    nf_rng r;
    nf_rng_seed(&r, 2);
    for (int i = 0; i < 1500; i++) x[i] = (nf_real)(3 + (i % 3 + 1) * 2.5 * nf_rng_normal(&r));
    CHECK(nf_flow_data_init(f, w, x, NULL, 500) == 0);
    CHECK(nf_flow_encode(f, w, x, NULL, 500, z, NULL) == 0);
    for (int d = 0; d < 3; d++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < 500; i++) {
            s += z[i * 3 + d];
            s2 += (double)z[i * 3 + d] * z[i * 3 + d];
        }
        CHECK_CLOSE(s / 500, 0, 1e-4, 0);
        CHECK_CLOSE(s2 / 500, 1, 1e-3, 0);
    }
    nf_ws_free(w);
    nf_flow_free(f);
}
