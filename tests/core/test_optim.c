/* test_optim.c: Adam/AdamW against a plain double reference, gradient
 * clipping, and the optimizer state blob (round trip, corruption). */
#include "../test.h"
#include "../../core/nf.h"

/* Two steps of Adam (L2 in the gradient) or AdamW (decoupled decay) written
 * out in double, straight from the formulas. */
static void ref_adam(int adamw, double *p, const double g[2][3], double lr, double wd, int n) {
    double m[3] = {0}, v[3] = {0}, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int t = 1; t <= 2; t++) {
        for (int i = 0; i < n; i++) {
            double gi = g[t - 1][i];
            if (adamw)
                p[i] = p[i] - lr * wd * p[i];
            else
                gi = gi + wd * p[i];
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            double mh = m[i] / (1 - pow(b1, t)), vh = v[i] / (1 - pow(b2, t));
            p[i] = p[i] - lr * mh / (sqrt(vh) + eps);
        }
    }
}

TEST(optim_adam_reference) {
    static const double g[2][3] = {{0.5, -1.5, 1e-3}, {-0.25, 2.0, 0.0}};
    for (int kind = 0; kind < 2; kind++) {
        for (int k = 0; k < 2; k++) {
            double wd = k ? 0.1 : 0.0;
            double pref[3] = {1.0, -2.0, 0.3};
            nf_real p[3] = {1.0f, -2.0f, 0.3f}, gr[3];
            for (int i = 0; i < 3; i++) pref[i] = p[i];
            nf_adam o;
            REQUIRE(nf_adam_init(&o, (nf_opt_kind)kind, 3, wd) == 0);
            CHECK(o.beta1 == 0.9 && o.beta2 == 0.999 && o.eps == 1e-8 && o.t == 0);
            for (int t = 0; t < 2; t++) {
                for (int i = 0; i < 3; i++) gr[i] = (nf_real)g[t][i];
                nf_adam_step(&o, p, gr, 0.01);
            }
            CHECK_EQ_INT(o.t, 2);
            ref_adam(kind, pref, g, 0.01, wd, 3);
            for (int i = 0; i < 3; i++)
                CHECK_MSG(fabs(p[i] - pref[i]) <= 1e-6 * (1 + fabs(pref[i])),
                          "kind %d wd %g p[%d] %.9g vs %.9g", kind, wd, i, (double)p[i], pref[i]);
            nf_adam_free(&o);
        }
    }
}

/* Zero gradient: AdamW shrinks by (1 - lr wd) per step, moments stay 0. */
TEST(optim_adamw_decay_zero_grad) {
    nf_adam o;
    REQUIRE(nf_adam_init(&o, NF_OPT_ADAMW, 2, 0.5) == 0);
    nf_real p[2] = {2.0f, -4.0f}, g[2] = {0, 0};
    for (int t = 0; t < 3; t++) nf_adam_step(&o, p, g, 0.1);
    double f = pow(1 - 0.1 * 0.5, 3);
    CHECK_CLOSE(p[0], 2.0 * f, 1e-6, 1e-6);
    CHECK_CLOSE(p[1], -4.0 * f, 1e-6, 1e-6);
    CHECK(o.m[0] == 0 && o.v[1] == 0);
    nf_adam_free(&o);
    nf_adam_free(&o); /* second free is harmless */
    nf_adam_free(NULL);
}

TEST(optim_adam_init_rejects) {
    nf_adam o;
    CHECK_EQ_INT(nf_adam_init(&o, NF_OPT_COUNT, 3, 0), NF_EINVAL);
    CHECK_EQ_INT(nf_adam_init(&o, NF_OPT_ADAM, 3, -1), NF_EINVAL);
    CHECK_EQ_INT(nf_adam_init(&o, NF_OPT_ADAM, 3, NAN), NF_EINVAL);
    REQUIRE(nf_adam_init(&o, NF_OPT_ADAM, 0, 0) == 0);
    nf_adam_step(&o, NULL, NULL, 0.1);
    nf_adam_free(&o);
}

TEST(optim_clip_grad_norm) {
    nf_real g[4] = {3, 0, -4, 0};
    double n = nf_clip_grad_norm(g, 4, 1.0);
    CHECK_CLOSE(n, 5.0, 1e-6, 0);
    double s = 0;
    for (int i = 0; i < 4; i++) s += (double)g[i] * g[i];
    CHECK_CLOSE(sqrt(s), 1.0, 1e-6, 0);
    CHECK_CLOSE(g[0], 0.6, 1e-6, 0);
    CHECK_CLOSE(g[2], -0.8, 1e-6, 0);

    nf_real h[3] = {0.1f, -0.2f, 0.2f}, keep[3];
    memcpy(keep, h, sizeof h);
    CHECK_CLOSE(nf_clip_grad_norm(h, 3, 1.0), 0.3, 1e-6, 0);
    CHECK(memcmp(h, keep, sizeof h) == 0);
    /* max_norm <= 0: report only */
    nf_real big[2] = {30, 40};
    CHECK_CLOSE(nf_clip_grad_norm(big, 2, 0), 50, 1e-6, 0);
    CHECK(big[0] == 30 && big[1] == 40);

    nf_real bad[3] = {1, NAN, 2};
    CHECK(isnan(nf_clip_grad_norm(bad, 3, 1.0)));
    nf_real inf[2] = {1, INFINITY};
    CHECK(isnan(nf_clip_grad_norm(inf, 2, 1.0)));
}

static void make_state(nf_adam *o, size_t n) {
    nf_real *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    REQUIRE(nf_adam_init(o, NF_OPT_ADAMW, n, 0.01) == 0);
    for (size_t i = 0; i < n; i++) p[i] = (nf_real)(0.1 * i), g[i] = (nf_real)(sin(i) + 0.01);
    for (int t = 0; t < 3; t++) nf_adam_step(o, p, g, 1e-3);
    free(p), free(g);
}

TEST(optim_save_load_roundtrip) {
    nf_adam a, b;
    make_state(&a, 17);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nf_adam_save(&a, &buf, &len) == 0);
    CHECK_EQ_INT(len, 4 + 4 + 4 + 32 + 8 + 8 + 8 * 17 + 4);
    CHECK(memcmp(buf, "NFOP", 4) == 0);
    REQUIRE(nf_adam_init(&b, NF_OPT_ADAM, 5, 0) == 0); /* different n: reallocated */
    REQUIRE(nf_adam_load(&b, buf, len) == 0);
    CHECK(b.kind == a.kind && b.n == a.n && b.t == a.t);
    CHECK(b.beta1 == a.beta1 && b.beta2 == a.beta2 && b.eps == a.eps &&
          b.weight_decay == a.weight_decay);
    for (size_t i = 0; i < a.n; i++) {
        CHECK((float)b.m[i] == (float)a.m[i]);
        CHECK((float)b.v[i] == (float)a.v[i]);
    }
    void *buf2 = NULL;
    size_t len2 = 0;
    REQUIRE(nf_adam_save(&b, &buf2, &len2) == 0);
    CHECK(len2 == len && memcmp(buf, buf2, len) == 0);
    /* a zeroed struct can be loaded into too */
    nf_adam c;
    memset(&c, 0, sizeof c);
    CHECK(nf_adam_load(&c, buf, len) == 0 && c.n == 17 && c.t == 3);
    nf_adam_free(&c);
    free(buf), free(buf2);
    nf_adam_free(&a), nf_adam_free(&b);
}

TEST(optim_load_corrupt) {
    nf_adam a, b;
    make_state(&a, 6);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nf_adam_save(&a, &buf, &len) == 0);
    REQUIRE(nf_adam_init(&b, NF_OPT_ADAM, 6, 0) == 0);
    unsigned char *bytes = buf;
    for (size_t i = 0; i < len; i++) {
        bytes[i] ^= 0x10;
        CHECK_MSG(nf_adam_load(&b, buf, len) == NF_ECORRUPT, "flipped byte %zu", i);
        bytes[i] ^= 0x10;
    }
    for (size_t cut = 0; cut < len; cut++) {
        int rc = nf_adam_load(&b, buf, cut);
        CHECK_MSG(rc == NF_ECORRUPT || rc == NF_EFORMAT, "truncated to %zu: %d", cut, rc);
    }
    /* failed loads leave the state alone */
    CHECK(b.kind == NF_OPT_ADAM && b.t == 0 && b.n == 6 && b.m[0] == 0);
    CHECK(nf_adam_load(&b, buf, len) == 0 && b.t == 3);
    free(buf);
    nf_adam_free(&a), nf_adam_free(&b);
}
