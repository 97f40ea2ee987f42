/* test_pack.c: packed weights (nf_flow_pack) and the kernels that read
 * them.  The kernels against the double reference product at every row,
 * column and k remainder; a packed flow's answers against the same flow
 * unpacked for every layer family that has a dense net (affine and additive
 * couplings, spline couplings, MAF and IAF, autoregressive splines), with
 * and without context, on one thread and two; and the pack's lifetime: any
 * way of writing the parameters drops it, gradient workspaces never read it.
 * Float build only: the double build has nothing to pack. */
#include "../test.h"
#include "../../core/kern.h"
#include "../../core/nf_internal.h"
#include "layercheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef NF_DOUBLE

/* nf_gemm_packed on panels from nf_pack_panels: rows 1..13 (each remainder
 * of the six-row tiles, twice), columns across the 16-column panels and
 * their padding, k from 1 up, a wider leading dimension of W, acc 0 and 1 */
TEST(pack_gemm_packed_matches_reference) {
    if (!nf_kern_avx2()) return; /* no AVX2: nf_gemm_packed declines, nf_gemm serves */
    nf_rng r;
    nf_rng_seed(&r, 11);
    static const int Ns[] = {8, 15, 16, 17, 33, 128};
    static const int Ks[] = {1, 2, 7, 8, 15, 128, 131};
    enum { MM = 13, NN = 128, KK = 131 };
    float *A = malloc(sizeof(float) * MM * KK), *W = malloc(sizeof(float) * NN * (KK + 5));
    float *P = malloc(sizeof(float) * nf_packed_floats(NN, KK));
    float *C1 = malloc(sizeof(float) * MM * NN), *C2 = malloc(sizeof(float) * MM * NN);
    REQUIRE(A && W && P && C1 && C2);
    for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (int M = 1; M <= MM; M++)
                for (int acc = 0; acc < 2; acc++) {
                    int N = Ns[ni], K = Ks[ki], ldw = K + 5;
                    lc_randn(&r, A, (size_t)M * K, 1, 0);
                    lc_randn(&r, W, (size_t)N * ldw, 1, 0);
                    lc_randn(&r, C1, (size_t)M * N, 1, 0);
                    memcpy(C2, C1, sizeof(float) * M * N);
                    nf_pack_panels(N, K, W, ldw, P);
                    CHECK(nf_gemm_packed(M, N, K, A, K, P, C1, N, acc) == 1);
                    nf_gemm_ref(0, 1, M, N, K, 1, A, K, W, ldw, (float)acc, C2, N);
                    for (int i = 0; i < M * N; i++)
                        CHECK_MSG(fabsf(C1[i] - C2[i]) <= 1e-5f * (1 + fabsf(C2[i])),
                                  "M=%d N=%d K=%d acc=%d: [%d] %g vs %g", M, N, K, acc, i,
                                  (double)C1[i], (double)C2[i]);
                }
    free(A);
    free(W);
    free(P);
    free(C1);
    free(C2);
}

/* the panels themselves: W^T in 16-column strips, zeros past N */
TEST(pack_panels_layout) {
    float W[3 * 4], P[16 * 4];
    for (int i = 0; i < 12; i++) W[i] = (float)(i + 1);
    CHECK(nf_packed_floats(3, 4) == 64);
    nf_pack_panels(3, 4, W, 4, P);
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 16; j++)
            CHECK_MSG(P[k * 16 + j] == (j < 3 ? W[j * 4 + k] : 0.0f), "k=%d j=%d: %g", k, j,
                      (double)P[k * 16 + j]);
}

/* nf_gemm_nt_small (N < 8) on W as stored: rows 1..9 (the four-row blocks
 * and their remainder), odd and even N, k remainders, acc 0 and 1; out of
 * its range it declines and writes nothing */
TEST(pack_gemm_nt_small_matches_reference) {
    if (!nf_kern_avx2()) return; /* no AVX2: nf_gemm_nt_small declines */
    nf_rng r;
    nf_rng_seed(&r, 12);
    static const int Ks[] = {8, 9, 15, 16, 128, 131};
    float A[9 * 131], W[7 * 134], C1[9 * 7], C2[9 * 7];
    for (int N = 1; N < 8; N++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (int M = 1; M <= 9; M++)
                for (int acc = 0; acc < 2; acc++) {
                    int K = Ks[ki], ldw = K + 3;
                    lc_randn(&r, A, (size_t)M * K, 1, 0);
                    lc_randn(&r, W, (size_t)N * ldw, 1, 0);
                    lc_randn(&r, C1, (size_t)M * N, 1, 0);
                    memcpy(C2, C1, sizeof(float) * M * N);
                    CHECK(nf_gemm_nt_small(M, N, K, A, K, W, ldw, C1, N, acc) == 1);
                    nf_gemm_ref(0, 1, M, N, K, 1, A, K, W, ldw, (float)acc, C2, N);
                    for (int i = 0; i < M * N; i++)
                        CHECK_MSG(fabsf(C1[i] - C2[i]) <= 1e-5f * (1 + fabsf(C2[i])),
                                  "M=%d N=%d K=%d acc=%d: [%d] %g vs %g", M, N, K, acc, i,
                                  (double)C1[i], (double)C2[i]);
                }
    C1[0] = 42;
    CHECK(nf_gemm_nt_small(2, 8, 16, A, 16, W, 16, C1, 8, 0) == 0);
    CHECK(nf_gemm_nt_small(2, 3, 7, A, 7, W, 7, C1, 3, 0) == 0);
    CHECK(C1[0] == 42);
}

/* ---- flows ---------------------------------------------------------------------- */
static const struct {
    const char *name, *spec;
    int D, C;
} pack_flows[] = {
    {"realnvp", "{\"dim\":2,\"preset\":\"realnvp\",\"depth\":4,\"hidden\":[32,32],\"seed\":3}", 2, 0},
    {"additive", "{\"dim\":6,\"layers\":[{\"type\":\"additive_coupling\",\"hidden\":[24]},"
                 "{\"type\":\"permute\"},{\"type\":\"additive_coupling\",\"hidden\":[24]}]}", 6, 0},
    {"resnet", "{\"dim\":5,\"layers\":[{\"type\":\"affine_coupling\",\"net\":\"resnet\","
               "\"hidden\":[40],\"blocks\":2},{\"type\":\"permute\"},"
               "{\"type\":\"affine_coupling\",\"net\":\"resnet\",\"hidden\":[40],\"blocks\":2}]}",
     5, 0},
    {"nsf", "{\"dim\":7,\"preset\":\"nsf\",\"depth\":2,\"hidden\":[48],\"bins\":6,\"seed\":4}", 7, 0},
    {"maf", "{\"dim\":9,\"preset\":\"maf\",\"depth\":2,\"hidden\":[40],\"seed\":5}", 9, 0},
    {"iaf", "{\"dim\":6,\"layers\":[{\"type\":\"iaf\",\"hidden\":[30]},{\"type\":\"permute\"},"
            "{\"type\":\"iaf\",\"hidden\":[30]}]}", 6, 0},
    {"spline_ar", "{\"dim\":5,\"layers\":[{\"type\":\"spline_ar\",\"hidden\":[32],\"bins\":5}]}",
     5, 0},
    {"realnvp context", "{\"dim\":3,\"context_dim\":4,\"preset\":\"realnvp\",\"depth\":3,"
                        "\"hidden\":[20,20],\"seed\":6}", 3, 4},
    {"maf context", "{\"dim\":4,\"context_dim\":3,\"preset\":\"maf\",\"depth\":2,"
                    "\"hidden\":[24],\"seed\":7}", 4, 3},
};
#define NPF (sizeof pack_flows / sizeof *pack_flows)

/* non-zero weights everywhere (a fresh flow's last layers are zero, which
 * would hide a wrong pack of them) */
static nf_flow *pack_flow(int i) {
    nf_flow *f = NULL;
    char err[256] = "";
    if (nf_flow_create(pack_flows[i].spec, &f, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", pack_flows[i].name, err);
        return NULL;
    }
    nf_rng r;
    nf_rng_seed(&r, 100 + (uint64_t)i);
    nf_real *p = nf_flow_params(f);
    for (size_t k = 0; k < nf_flow_num_params(f); k++)
        p[k] += (nf_real)(0.05 * nf_rng_normal(&r));
    nf_flow_constrain(f);
    return f;
}

typedef struct { nf_real *lp, *z, *ld, *x, *xl, *s, *sl; } pack_out;

static int pack_run(nf_flow *f, int threads, const nf_real *x, const nf_real *ctx, int B,
                    pack_out *o) {
    nf_ws *w = NULL;
    int rc = nf_ws_create_ex(f, B, threads, NF_WS_INFERENCE, &w);
    if (!rc) rc = nf_flow_log_prob(f, w, x, ctx, B, o->lp);
    if (!rc || rc == NF_ENONFINITE) rc = nf_flow_encode(f, w, x, ctx, B, o->z, o->ld);
    if (!rc || rc == NF_ENONFINITE) rc = nf_flow_decode(f, w, o->z, ctx, B, o->x, o->xl);
    if (!rc || rc == NF_ENONFINITE) rc = nf_flow_sample(f, w, B, 0.8, 9, ctx, o->s, o->sl);
    nf_ws_free(w);
    return rc == NF_ENONFINITE ? 0 : rc;
}

static pack_out pack_alloc(int B, int D) {
    pack_out o = {malloc(sizeof(nf_real) * B), malloc(sizeof(nf_real) * B * D),
                  malloc(sizeof(nf_real) * B), malloc(sizeof(nf_real) * B * D),
                  malloc(sizeof(nf_real) * B), malloc(sizeof(nf_real) * B * D),
                  malloc(sizeof(nf_real) * B)};
    return o;
}

static void pack_free(pack_out *o) {
    free(o->lp), free(o->z), free(o->ld), free(o->x), free(o->xl), free(o->s), free(o->sl);
}

static int close_all(const nf_real *a, const nf_real *b, size_t n, double tol) {
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - (double)b[i]) <= tol * (1 + fabs((double)b[i])))) return 0;
    return 1;
}

/* A packed flow answers what it answers unpacked (to float rounding, the
 * sums running in another order), and the pack is in use: the flows that
 * have something to pack report its bytes */
TEST_T(pack_flow_matches_unpacked, 120) {
    for (size_t i = 0; i < NPF; i++) {
        nf_flow *f = pack_flow((int)i);
        REQUIRE(f);
        int D = pack_flows[i].D, C = pack_flows[i].C;
        for (int B = 1; B <= 70; B += 23) {
            nf_rng r;
            nf_rng_seed(&r, 50 + (uint64_t)B);
            nf_real *x = malloc(sizeof(nf_real) * B * D), *ctx = C ? malloc(sizeof(nf_real) * B * C) : NULL;
            lc_randn(&r, x, (size_t)B * D, 0.8, 0);
            if (ctx) lc_randn(&r, ctx, (size_t)B * C, 1, 0);
            for (int threads = 1; threads <= 2; threads++) {
                pack_out u = pack_alloc(B, D), p = pack_alloc(B, D);
                nf_flow_unpack(f);
                CHECK(nf_flow_packed_bytes(f) == 0);
                REQUIRE(pack_run(f, threads, x, ctx, B, &u) == 0);
                REQUIRE(nf_flow_pack(f) == 0);
                CHECK_MSG(nf_flow_packed_bytes(f) > 0 || !nf_kern_avx2(), "%s: nothing packed",
                          pack_flows[i].name);
                REQUIRE(pack_run(f, threads, x, ctx, B, &p) == 0);
                size_t BD = (size_t)B * D;
                CHECK_MSG(close_all(p.lp, u.lp, B, 2e-5), "%s B=%d threads=%d: log_prob",
                          pack_flows[i].name, B, threads);
                CHECK_MSG(close_all(p.z, u.z, BD, 2e-5) && close_all(p.ld, u.ld, B, 2e-5),
                          "%s B=%d threads=%d: encode", pack_flows[i].name, B, threads);
                CHECK_MSG(close_all(p.x, u.x, BD, 2e-5) && close_all(p.xl, u.xl, B, 2e-5),
                          "%s B=%d threads=%d: decode", pack_flows[i].name, B, threads);
                CHECK_MSG(close_all(p.s, u.s, BD, 2e-5) && close_all(p.sl, u.sl, B, 2e-5),
                          "%s B=%d threads=%d: sample", pack_flows[i].name, B, threads);
                pack_free(&u);
                pack_free(&p);
            }
            free(x);
            free(ctx);
        }
        nf_flow_free(f);
    }
}

/* The pack is a snapshot that every way of changing the parameters drops:
 * after nf_flow_params (then a write), nf_flow_load_params, nf_flow_init
 * and nf_flow_constrain a packed flow scores what a fresh unpacked flow
 * with those parameters scores.  A gradient (training) workspace never
 * reads it: with the parameters changed behind the pack's back (through
 * a pointer kept from before, outside the contract), a training workspace
 * scores the new parameters and an inference one does not. */
TEST(pack_dropped_when_params_change) {
    if (!nf_kern_avx2()) return; /* no AVX2: nothing is packed */
    nf_flow *f = pack_flow(0), *g = pack_flow(0);
    REQUIRE(f && g);
    enum { B = 40 };
    nf_real x[B * 2], a[B], b[B];
    nf_rng r;
    nf_rng_seed(&r, 3);
    lc_randn(&r, x, B * 2, 0.8, 0);
    nf_ws *w = NULL, *wg = NULL, *wt = NULL;
    REQUIRE(nf_ws_create_inference(f, B, &w) == 0);
    REQUIRE(nf_ws_create_inference(g, B, &wg) == 0);
    REQUIRE(nf_ws_create(f, B, &wt) == 0);
    size_t np = nf_flow_num_params(f);

    /* write through nf_flow_params after packing */
    REQUIRE(nf_flow_pack(f) == 0);
    nf_real *p = nf_flow_params(f);
    CHECK(nf_flow_packed_bytes(f) == 0);
    for (size_t k = 0; k < np; k++) p[k] *= 1.5f;
    memcpy(nf_flow_params(g), p, np * sizeof *p);
    REQUIRE(nf_flow_log_prob(f, w, x, NULL, B, a) == 0);
    REQUIRE(nf_flow_log_prob(g, wg, x, NULL, B, b) == 0);
    CHECK(close_all(a, b, B, 1e-6));

    /* load_params, init, constrain */
    void *blob = NULL;
    size_t len = 0;
    REQUIRE(nf_flow_save_params(g, &blob, &len) == 0);
    for (size_t k = 0; k < np; k++) p[k] = 0;
    REQUIRE(nf_flow_pack(f) == 0);
    REQUIRE(nf_flow_load_params(f, blob, len) == 0);
    CHECK(nf_flow_packed_bytes(f) == 0);
    REQUIRE(nf_flow_log_prob(f, w, x, NULL, B, a) == 0);
    CHECK(close_all(a, b, B, 1e-6));
    free(blob);
    REQUIRE(nf_flow_pack(f) == 0);
    nf_flow_init(f, 8);
    CHECK(nf_flow_packed_bytes(f) == 0);
    REQUIRE(nf_flow_pack(f) == 0);
    nf_flow_constrain(f);
    CHECK(nf_flow_packed_bytes(f) == 0);

    /* behind the pack's back: a training workspace scores what an unpacked
     * flow with the new parameters scores; an inference one reads the
     * (stale) pack and does not */
    p = nf_flow_params(f);
    memcpy(p, nf_flow_params(g), np * sizeof *p);
    REQUIRE(nf_flow_pack(f) == 0);
    nf_real stale[B], train[B];
    for (size_t k = 0; k < np; k++) p[k] *= 0.5f;
    memcpy(nf_flow_params(g), p, np * sizeof *p);
    REQUIRE(nf_flow_log_prob(f, w, x, NULL, B, stale) == 0);
    REQUIRE(nf_flow_log_prob(f, wt, x, NULL, B, train) == 0);
    REQUIRE(nf_flow_log_prob(g, wg, x, NULL, B, b) == 0);
    CHECK_MSG(close_all(train, b, B, 1e-5), "a training workspace read the pack");
    int differs = 0;
    for (int i = 0; i < B; i++) differs |= fabs((double)stale[i] - (double)b[i]) > 1e-3;
    CHECK_MSG(differs, "an inference workspace of a packed flow did not read the pack");
    nf_ws_free(w);
    nf_ws_free(wg);
    nf_ws_free(wt);
    nf_flow_free(f);
    nf_flow_free(g);
}

/* nothing to pack: a flow without a dense net */
TEST(pack_nothing_to_pack) {
    nf_flow *f = NULL;
    char err[256];
    REQUIRE(nf_flow_create("{\"dim\":4,\"layers\":[{\"type\":\"actnorm\"},{\"type\":\"permute\"}]}",
                           &f, err, sizeof err) == 0);
    CHECK(nf_flow_pack(f) == 0);
    CHECK(nf_flow_packed_bytes(f) == 0);
    nf_flow_free(f);
}

#else

TEST(pack_double_build_packs_nothing) {
    nf_flow *f = NULL;
    char err[256];
    REQUIRE(nf_flow_create("{\"dim\":2,\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16],\"seed\":1}",
                           &f, err, sizeof err) == 0);
    CHECK(nf_flow_pack(f) == 0);
    CHECK(nf_flow_packed_bytes(f) == 0);
    nf_flow_free(f);
}

#endif
