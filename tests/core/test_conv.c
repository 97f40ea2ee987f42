/* test_conv.c: convolutions and convolutional conditioners (core/conv.c).
 * A convolution against a plain direct convolution written here from the
 * definition (forward and its three gradients, on odd image sizes, and on a
 * batch large enough to run im2col in chunks), against finite differences,
 * and the two networks: gradients by finite differences (float64 build),
 * the zero last convolution, backward twice, the spec. */
#include "../test.h"
#include "../../core/conv.h"
#include "../../core/kern.h"

#include <math.h>
#include <string.h>

#ifdef NF_DOUBLE
#define EXACT_TOL 1e-12 /* two orders of summation, in double */
#else
#define EXACT_TOL 1e-5
#endif

static void randn(nf_rng *r, nf_real *v, size_t n, double s) {
    for (size_t i = 0; i < n; i++) v[i] = (nf_real)(s * nf_rng_normal(r));
}

/* ---- the direct convolution, from the definition ---------------------------------
 * out(co,b,y,x) = bias(co) + sum W(co,ci,ky,kx) in(ci, b, y+ky-p, x+kx-p),
 * p = k/2, zero outside the image; planes layout (c*B + b)*P + y*W + x. */

static double in_at(const nf_conv *cv, const nf_real *in, int B, int ci, int b, int y, int x) {
    if (y < 0 || y >= cv->h || x < 0 || x >= cv->w) return 0;
    return in[((size_t)ci * B + b) * cv->h * cv->w + (size_t)y * cv->w + x];
}

static void direct_forward(const nf_conv *cv, const nf_real *params, const nf_real *in, int B,
                           double *out) {
    int k = cv->k, p = k / 2, H = cv->h, W = cv->w;
    const nf_real *Wt = params + cv->w_off;
    for (int co = 0; co < cv->cout; co++)
        for (int b = 0; b < B; b++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    double s = params[cv->b_off + co];
                    for (int ci = 0; ci < cv->cin; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++)
                                s += Wt[(((size_t)co * cv->cin + ci) * k + ky) * k + kx] *
                                     in_at(cv, in, B, ci, b, y + ky - p, x + kx - p);
                    out[((size_t)co * B + b) * H * W + (size_t)y * W + x] = s;
                }
}

/* gW (cout,cin,k,k), gb (cout), din: the gradients of sum(dout .* out) */
static void direct_backward(const nf_conv *cv, const nf_real *params, const nf_real *in,
                            const nf_real *dout, int B, double *gW, double *gb, double *din) {
    int k = cv->k, p = k / 2, H = cv->h, W = cv->w;
    size_t P = (size_t)H * W;
    const nf_real *Wt = params + cv->w_off;
    memset(gW, 0, (size_t)cv->cout * cv->cin * k * k * sizeof *gW);
    memset(gb, 0, (size_t)cv->cout * sizeof *gb);
    memset(din, 0, (size_t)cv->cin * B * P * sizeof *din);
    for (int co = 0; co < cv->cout; co++)
        for (int b = 0; b < B; b++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    double d = dout[((size_t)co * B + b) * P + (size_t)y * W + x];
                    gb[co] += d;
                    for (int ci = 0; ci < cv->cin; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int yy = y + ky - p, xx = x + kx - p;
                                if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                                size_t wi = (((size_t)co * cv->cin + ci) * k + ky) * k + kx;
                                size_t ii = ((size_t)ci * B + b) * P + (size_t)yy * W + xx;
                                gW[wi] += d * in[ii];
                                din[ii] += d * Wt[wi];
                            }
                }
}

static nf_conv make_conv(int cin, int cout, int k, int h, int w) {
    nf_conv cv = {.cin = cin, .cout = cout, .k = k, .h = h, .w = w};
    cv.w_off = 3; /* not at 0: offsets inside the owner's parameters are honoured */
    cv.b_off = cv.w_off + (size_t)cout * cin * k * k;
    return cv;
}

static size_t conv_nparams(const nf_conv *cv) { return cv->b_off + cv->cout; }

/* |a - b| <= tol (1 + max |b|) over n entries */
static int close_all(const nf_real *a, const double *b, size_t n, double tol, const char *what) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(b[i]) > m ? fabs(b[i]) : m;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= tol * (1 + m))) {
            test_fail_at(__FILE__, __LINE__, "%s[%zu]: %.10g, direct %.10g", what, i,
                         (double)a[i], b[i]);
            return 0;
        }
    return 1;
}

/* forward and backward of one convolution against the direct loops */
static void check_against_direct(int cin, int cout, int k, int h, int w, int B, uint64_t seed) {
    nf_conv cv = make_conv(cin, cout, k, h, w);
    size_t np = conv_nparams(&cv), P = (size_t)h * w, nin = (size_t)cin * B * P;
    size_t nout = (size_t)cout * B * P, ncol = nf_conv_col_size(&cv, B);
    nf_real *params = malloc(np * sizeof *params), *grad = calloc(np, sizeof *grad);
    nf_real *in = malloc(nin * sizeof *in), *out = malloc(nout * sizeof *out);
    nf_real *dout = malloc(nout * sizeof *dout), *din = malloc(nin * sizeof *din);
    nf_real *col = malloc((ncol + 1) * sizeof *col);
    double *ref = malloc(nout * sizeof *ref), *gW = malloc(np * sizeof *gW);
    double *gb = malloc(cout * sizeof *gb), *rdin = malloc(nin * sizeof *rdin);
    nf_rng r;
    nf_rng_seed(&r, seed);
    nf_conv_init(&cv, params, &r, 0);
    randn(&r, params + cv.b_off, (size_t)cout, 1); /* non-zero biases */
    randn(&r, in, nin, 1);
    randn(&r, dout, nout, 1);
    CHECK(k == 3 || ncol == 0);
    nf_conv_forward(&cv, params, in, out, B, col);
    direct_forward(&cv, params, in, B, ref);
    CHECK(close_all(out, ref, nout, EXACT_TOL, "out"));
    nf_conv_backward(&cv, params, grad, in, dout, din, B, col);
    direct_backward(&cv, params, in, dout, B, gW, gb, rdin);
    CHECK(close_all(grad + cv.w_off, gW, (size_t)cout * cin * k * k, EXACT_TOL, "dW"));
    CHECK(close_all(grad + cv.b_off, gb, (size_t)cout, EXACT_TOL, "dbias"));
    CHECK(close_all(din, rdin, nin, EXACT_TOL, "din"));
    CHECK(grad[0] == 0 && grad[1] == 0 && grad[2] == 0); /* outside the conv's parameters */
    /* grad accumulates; din may be NULL, and grad too */
    nf_conv_backward(&cv, params, grad, in, dout, NULL, B, col);
    for (size_t i = 0; i < (size_t)cout * cin * k * k; i++) gW[i] *= 2;
    CHECK(close_all(grad + cv.w_off, gW, (size_t)cout * cin * k * k, EXACT_TOL, "2 dW"));
    memset(din, 0, nin * sizeof *din);
    nf_conv_backward(&cv, params, NULL, in, dout, din, B, col);
    CHECK(close_all(din, rdin, nin, EXACT_TOL, "din without grad"));
    free(params);
    free(grad);
    free(in);
    free(out);
    free(dout);
    free(din);
    free(col);
    free(ref);
    free(gW);
    free(gb);
    free(rdin);
}

/* Shapes with 9 cout + cin < 9 cin run on the output side (conv.c), the
 * others through im2col: both here. */
TEST(conv_matches_direct_k1_k3) {
    check_against_direct(2, 3, 3, 3, 5, 3, 1);
    check_against_direct(2, 3, 1, 3, 5, 3, 2);
    check_against_direct(5, 2, 3, 3, 5, 3, 3); /* output side */
    check_against_direct(5, 2, 1, 3, 5, 3, 4);
    /* thin images: a flat shift crosses whole planes (1 row, 1 column, 1 pixel) */
    for (int side = 0; side < 2; side++) {
        check_against_direct(3, 3, 3, 1, 4, 2, 5);
        check_against_direct(3, 3, 3, 4, 1, 2, 6);
        check_against_direct(2, 2, 3, 1, 1, 3, 7);
        check_against_direct(4, 1, 3, 1, 4, 2, 8); /* output side */
        check_against_direct(4, 1, 3, 4, 1, 2, 9);
        check_against_direct(4, 1, 3, 1, 1, 3, 10);
    }
    check_against_direct(1, 1, 3, 2, 2, 1, 11);
}

/* A buffer too small for the batch: chunks of rows, the last one shorter,
 * through im2col (3 -> 4 channels: chunks of 3, 3, 1 rows) and on the
 * output side (6 -> 2: Wa and dWa, then chunks of 2, 2, 2, 1) */
TEST(conv_chunked_batch_matches_direct) {
    size_t keep = nf_conv_col_max;
    nf_conv a = make_conv(3, 4, 3, 5, 7), b = make_conv(6, 2, 3, 5, 7);
    nf_conv_col_max = 3 * 27 * 35 + 10;
    CHECK_EQ_INT(nf_conv_col_size(&a, 7), 3 * 27 * 35);
    check_against_direct(3, 4, 3, 5, 7, 7, 12);
    nf_conv_col_max = 2 * 9 * 2 * 6 + 2 * (9 * 2 + 6) * 35 + 5;
    CHECK_EQ_INT(nf_conv_col_size(&b, 7), 2 * 9 * 2 * 6 + 2 * (9 * 2 + 6) * 35);
    check_against_direct(6, 2, 3, 5, 7, 7, 13);
    /* one row per chunk when even one does not fit */
    nf_conv_col_max = 10;
    check_against_direct(3, 4, 3, 5, 7, 3, 14);
    check_against_direct(6, 2, 3, 5, 7, 3, 15);
    nf_conv_col_max = keep;
    /* the default holds a whole batch of Glow's last convolution on 14x14 */
    nf_conv g = make_conv(512, 6, 3, 14, 14);
    CHECK(nf_conv_col_size(&g, 256) < nf_conv_col_max);
}

/* L = sum(r .* out) against central differences in every weight, bias and
 * input: the float64 build at 1e-7; float32 (L is linear in each, so the
 * difference is exact but for rounding) at 1e-3 */
TEST(conv_backward_finite_differences) {
#ifdef NF_DOUBLE
    const double h = 1e-6, tol = 1e-7;
#else
    const double h = 1e-2, tol = 1e-3;
#endif
    for (int k = 1; k <= 3; k += 2) {
        int B = 3, cin = 2, cout = 3, H = 3, W = 5;
        nf_conv cv = make_conv(cin, cout, k, H, W);
        size_t np = conv_nparams(&cv), nin = (size_t)cin * B * H * W;
        size_t nout = (size_t)cout * B * H * W;
        nf_real *params = malloc(np * sizeof *params), *grad = calloc(np, sizeof *grad);
        nf_real *in = malloc(nin * sizeof *in), *out = malloc(nout * sizeof *out);
        nf_real *r1 = malloc(nout * sizeof *r1), *din = malloc(nin * sizeof *din);
        nf_real *col = malloc((nf_conv_col_size(&cv, B) + 1) * sizeof *col);
        nf_rng r;
        nf_rng_seed(&r, 20 + k);
        nf_conv_init(&cv, params, &r, 0);
        randn(&r, params + cv.b_off, (size_t)cout, 1);
        randn(&r, in, nin, 1);
        randn(&r, r1, nout, 1);
        nf_conv_forward(&cv, params, in, out, B, col);
        nf_conv_backward(&cv, params, grad, in, r1, din, B, col);
        /* every parameter (W and bias), then every input */
        for (int pass = 0; pass < 2; pass++) {
            nf_real *v = pass ? in : params + cv.w_off;
            const nf_real *an = pass ? din : grad + cv.w_off;
            size_t n = pass ? nin : np - cv.w_off;
            for (size_t i = 0; i < n; i++) {
                nf_real keep = v[i];
                double l[2];
                for (int s = 0; s < 2; s++) {
                    v[i] = (nf_real)(keep + (s ? -h : h));
                    nf_conv_forward(&cv, params, in, out, B, col);
                    l[s] = 0;
                    for (size_t j = 0; j < nout; j++) l[s] += (double)r1[j] * out[j];
                }
                v[i] = keep;
                double fd = (l[0] - l[1]) / (2 * h);
                CHECK_MSG(fabs(fd - an[i]) <= tol * (1 + fabs(fd)),
                          "k=%d %s[%zu]: analytic %.10g, finite difference %.10g", k,
                          pass ? "din" : "param", i, (double)an[i], fd);
            }
        }
        free(params);
        free(grad);
        free(in);
        free(out);
        free(r1);
        free(din);
        free(col);
    }
}

TEST(conv_rows_planes_round_trip) {
    int B = 3, C = 4, P = 6, ld = C * P + 5, c0 = 1, nc = 2;
    nf_real x[3 * 29], back[3 * 29], planes[2 * 3 * 6];
    for (int i = 0; i < B * ld; i++) x[i] = (nf_real)i;
    nf_rows_to_planes(x, ld, c0, nc, P, B, planes);
    for (int c = 0; c < nc; c++)
        for (int b = 0; b < B; b++)
            for (int p = 0; p < P; p++)
                CHECK(planes[(c * B + b) * P + p] == x[b * ld + (c0 + c) * P + p]);
    for (int i = 0; i < B * ld; i++) back[i] = -1;
    nf_planes_to_rows(planes, nc, P, B, back, ld, c0);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < ld; j++) {
            int inside = j >= c0 * P && j < (c0 + nc) * P;
            CHECK(back[b * ld + j] == (inside ? x[b * ld + j] : -1));
        }
}

/* ---- networks ---------------------------------------------------------------------- */

typedef struct {
    nf_cnet n;
    int B;
    size_t nin, nout;
    nf_real *params, *grad, *in, *out, *dout, *din, *ws;
} net_case;

static int net_case_make(net_case *c, int resnet, int cin, int cout, int hidden, int h, int w,
                         int B, uint64_t seed, double noise) {
    memset(c, 0, sizeof *c);
    int rc = resnet ? nf_cnet_resnet(&c->n, cin, cout, hidden, 1, h, w)
                    : nf_cnet_glow(&c->n, cin, cout, hidden, h, w);
    if (rc) return rc;
    c->B = B;
    c->nin = (size_t)cin * B * h * w;
    c->nout = (size_t)cout * B * h * w;
    c->params = malloc(c->n.nparams * sizeof *c->params);
    c->grad = calloc(c->n.nparams, sizeof *c->grad);
    c->in = malloc(c->nin * sizeof *c->in);
    c->din = malloc(c->nin * sizeof *c->din);
    c->out = malloc(c->nout * sizeof *c->out);
    c->dout = malloc(c->nout * sizeof *c->dout);
    c->ws = malloc((nf_cnet_ws_size(&c->n, B) + 1) * sizeof *c->ws);
    nf_rng r;
    nf_rng_seed(&r, seed);
    nf_cnet_init(&c->n, c->params, &r);
    for (size_t i = 0; i < c->n.nparams; i++) c->params[i] += (nf_real)(noise * nf_rng_normal(&r));
    randn(&r, c->in, c->nin, 1);
    randn(&r, c->dout, c->nout, 1);
    return 0;
}

static void net_case_free(net_case *c) {
    free(c->params);
    free(c->grad);
    free(c->in);
    free(c->din);
    free(c->out);
    free(c->dout);
    free(c->ws);
}

static double net_loss(net_case *c) {
    nf_cnet_forward(&c->n, c->params, c->in, c->out, c->B, c->ws);
    double l = 0;
    for (size_t j = 0; j < c->nout; j++) l += (double)c->dout[j] * c->out[j];
    return l;
}

TEST(cnet_last_conv_zero_at_init) {
    for (int resnet = 0; resnet < 2; resnet++) {
        net_case c;
        REQUIRE(net_case_make(&c, resnet, 3, 4, 6, 5, 3, 2, 9, 0) == 0);
        net_loss(&c);
        for (size_t j = 0; j < c.nout; j++) CHECK(c.out[j] == 0);
        /* the other convolutions are not zero, the biases are */
        const nf_conv *first = &c.n.conv[0];
        int nz = 0;
        for (size_t i = first->w_off; i < first->b_off; i++) nz += c.params[i] != 0;
        CHECK(nz > 0);
        for (int k = 0; k < c.n.nconv; k++)
            for (int o = 0; o < c.n.conv[k].cout; o++) CHECK(c.params[c.n.conv[k].b_off + o] == 0);
        CHECK_EQ_INT(c.n.nconv, resnet ? 4 : 3);
        net_case_free(&c);
    }
}

/* every parameter and input gradient of L = sum(dout .* out), perturbed
 * parameters so that the last convolution is not zero */
TEST(cnet_backward_finite_differences) {
#ifndef NF_DOUBLE
    return; /* float32: ReLU networks need double for an honest difference */
#else
    const double h = 1e-6, tol = 1e-6;
    size_t keep = nf_conv_col_max;
    /* the last convolution (4 -> 3 channels) runs on the output side; the
     * second round runs every 3x3 convolution in chunks of one row */
    for (int k = 0; k < 4; k++) {
        int resnet = k % 2;
        nf_conv_col_max = k < 2 ? keep : 300;
        net_case c;
        REQUIRE(net_case_make(&c, resnet, 2, 3, 4, 3, 5, 3, 30 + resnet, 0.3) == 0);
        net_loss(&c);
        nf_cnet_backward(&c.n, c.params, c.grad, c.in, c.dout, c.din, c.B, c.ws);
        int fails = 0;
        for (int pass = 0; pass < 2; pass++) {
            nf_real *v = pass ? c.in : c.params;
            const nf_real *an = pass ? c.din : c.grad;
            size_t n = pass ? c.nin : c.n.nparams;
            for (size_t i = 0; i < n && fails < 5; i++) {
                nf_real keep = v[i];
                v[i] = keep + h;
                double lp = net_loss(&c);
                v[i] = keep - h;
                double lm = net_loss(&c);
                v[i] = keep;
                double fd = (lp - lm) / (2 * h);
                if (!(fabs(fd - an[i]) <= tol * (1 + fabs(fd)))) {
                    fails++;
                    CHECK_MSG(0, "%s %s[%zu]: analytic %.10g, finite difference %.10g",
                              resnet ? "resnet" : "glow", pass ? "din" : "param", i,
                              (double)an[i], fd);
                }
            }
        }
        net_case_free(&c);
    }
    nf_conv_col_max = keep;
#endif
}

/* backward leaves forward's activations alone: twice gives the same */
TEST(cnet_backward_twice_same) {
    for (int resnet = 0; resnet < 2; resnet++) {
        net_case c;
        REQUIRE(net_case_make(&c, resnet, 2, 3, 5, 4, 3, 3, 40 + resnet, 0.2) == 0);
        net_loss(&c);
        nf_cnet_backward(&c.n, c.params, c.grad, c.in, c.dout, c.din, c.B, c.ws);
        nf_real *g1 = malloc(c.n.nparams * sizeof *g1), *d1 = malloc(c.nin * sizeof *d1);
        memcpy(g1, c.grad, c.n.nparams * sizeof *g1);
        memcpy(d1, c.din, c.nin * sizeof *d1);
        memset(c.grad, 0, c.n.nparams * sizeof *c.grad);
        nf_cnet_backward(&c.n, c.params, c.grad, c.in, c.dout, c.din, c.B, c.ws);
        CHECK(!memcmp(g1, c.grad, c.n.nparams * sizeof *g1));
        CHECK(!memcmp(d1, c.din, c.nin * sizeof *d1));
        /* without din, and without grad */
        memset(c.grad, 0, c.n.nparams * sizeof *c.grad);
        nf_cnet_backward(&c.n, c.params, c.grad, c.in, c.dout, NULL, c.B, c.ws);
        CHECK(!memcmp(g1, c.grad, c.n.nparams * sizeof *g1));
        nf_cnet_backward(&c.n, c.params, NULL, c.in, c.dout, c.din, c.B, c.ws);
        CHECK(!memcmp(d1, c.din, c.nin * sizeof *d1));
        free(g1);
        free(d1);
        net_case_free(&c);
    }
}

TEST(cnet_macs_and_params) {
    nf_cnet n;
    REQUIRE(nf_cnet_glow(&n, 2, 4, 64, 14, 14) == 0);
    CHECK_EQ_INT(n.nparams, (2 * 9 + 1) * 64 + (64 + 1) * 64 + (64 * 9 + 1) * 4);
    CHECK_CLOSE(nf_cnet_macs(&n), 196.0 * (2 * 9 * 64 + 64 * 64 + 64 * 9 * 4), 0, 1e-12);
    REQUIRE(nf_cnet_resnet(&n, 3, 6, 8, 2, 4, 4) == 0);
    CHECK_EQ_INT(n.nconv, 6);
    CHECK_EQ_INT(n.nparams, (3 * 9 + 1) * 8 + 4 * (8 * 9 + 1) * 8 + (8 * 9 + 1) * 6);
    CHECK(nf_cnet_glow(&n, 0, 4, 8, 4, 4) == NF_EINVAL);
    CHECK(nf_cnet_resnet(&n, 2, 4, 8, 0, 4, 4) == NF_EINVAL);
    CHECK(nf_cnet_resnet(&n, 2, 4, 4096, 1, 4, 4) == NF_ERANGE);
}

static int from_spec(const char *json, nf_cnet *n, char *err, size_t errlen) {
    cJSON *s = cJSON_Parse(json);
    int rc = nf_cnet_from_spec(n, s, 2, 4, 5, 6, 64, err, errlen);
    cJSON_Delete(s);
    return rc;
}

TEST(cnet_spec_round_trip_and_errors) {
    nf_cnet n, m;
    char err[200];
    REQUIRE(from_spec("{}", &n, err, sizeof err) == 0);
    CHECK(n.kind == NF_CNET_GLOW && n.hidden == 64 && n.cin == 2 && n.cout == 4 && n.h == 5 &&
          n.w == 6);
    REQUIRE(from_spec("{\"net\":\"resnet\",\"hidden_channels\":7}", &n, err, sizeof err) == 0);
    CHECK(n.kind == NF_CNET_RESNET && n.hidden == 7 && n.nblocks == 2);
    REQUIRE(from_spec("{\"net\":\"resnet\",\"hidden_channels\":5,\"blocks\":3}", &n, err,
                      sizeof err) == 0);
    cJSON *o = cJSON_CreateObject();
    nf_cnet_to_json(&n, o);
    char *txt = cJSON_PrintUnformatted(o);
    REQUIRE(from_spec(txt, &m, err, sizeof err) == 0);
    CHECK(m.kind == n.kind && m.hidden == n.hidden && m.nblocks == n.nblocks &&
          m.nparams == n.nparams);
    free(txt);
    cJSON_Delete(o);
    struct {
        const char *spec, *msg;
    } bad[] = {
        {"{\"net\":\"mlp\"}", "image layers take"},
        {"{\"net\":\"unet\"}", "\"net\" must be \"glow\" or \"resnet\""},
        {"{\"hidden_channels\":0}", "hidden_channels"},
        {"{\"hidden_channels\":2.5}", "hidden_channels"},
        {"{\"blocks\":2}", "\"resnet\" only"},
        {"{\"net\":\"resnet\",\"blocks\":17}", "blocks"},
        {"{\"net\":\"resnet\",\"hidden_channels\":4096}", "parameters"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK_MSG(from_spec(bad[i].spec, &n, err, sizeof err) != 0, "%s accepted", bad[i].spec);
        CHECK_MSG(strstr(err, bad[i].msg) != NULL, "%s: message \"%s\"", bad[i].spec, err);
    }
}

/* ---- the fused forward GEMM ---------------------------------------------------------
 * kern.c's nf_gemm_bias_act against plain loops: every row remainder of its
 * 6-row tiles, column remainders of its 16-column tiles (masked), leading
 * dimensions wider than the matrices, bias or none, ReLU or none; then
 * whole networks (glow and resnet, their 1x1, im2col and output-side
 * convolutions, in chunks too) fused against OpenBLAS + epilogue. */
TEST(conv_fused_gemm_matches_loops) {
#ifdef NF_DOUBLE
    return; /* float32 only: the double build multiplies with BLAS */
#else
    if (!nf_gemm_bias_act(1, 1, 1, (const float[]){1}, 1, (const float[]){1}, 1,
                          (float[]){0}, 1, NULL, 0))
        return; /* no AVX2 here: conv.c takes nf_gemm */
    static const int Ms[] = {1, 2, 5, 6, 7, 12, 13, 64};
    static const int Ns[] = {1, 7, 8, 9, 15, 16, 17, 33, 100};
    static const int Ks[] = {1, 3, 18, 64};
    nf_rng r;
    nf_rng_seed(&r, 21);
    float *A = malloc(sizeof(float) * 64 * 70), *Bm = malloc(sizeof(float) * 64 * 110);
    float *C = malloc(sizeof(float) * 64 * 110), bias[64];
    REQUIRE(A && Bm && C);
    randn(&r, A, 64 * 70, 1);
    randn(&r, Bm, 64 * 110, 1);
    randn(&r, bias, 64, 1);
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
                for (int v = 0; v < 4; v++) {
                    int M = Ms[mi], N = Ns[ni], K = Ks[ki], lda = K + 3, ldb = N + 5,
                        ldc = N + 7, relu = v & 1;
                    const float *bi = v & 2 ? bias : NULL;
                    for (int i = 0; i < 64 * 110; i++) C[i] = -7;
                    CHECK(nf_gemm_bias_act(M, N, K, A, lda, Bm, ldb, C, ldc, bi, relu) == 1);
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < ldc; j++) {
                            if (j >= N) { /* past the columns: untouched */
                                CHECK(C[i * ldc + j] == -7);
                                continue;
                            }
                            double e = bi ? bi[i] : 0;
                            for (int k = 0; k < K; k++)
                                e += (double)A[i * lda + k] * Bm[k * ldb + j];
                            if (relu && e < 0) e = 0;
                            CHECK_MSG(fabs(C[i * ldc + j] - e) <= 1e-5 * (1 + fabs(e)),
                                      "M=%d N=%d K=%d v=%d [%d,%d]: %g vs %g", M, N, K, v, i, j,
                                      (double)C[i * ldc + j], e);
                        }
                    for (int i = M * ldc; i < 64 * 110; i++) CHECK(C[i] == -7); /* rows past M */
                }
    free(A);
    free(Bm);
    free(C);
    size_t keep = nf_conv_col_max;
    for (int k = 0; k < 4; k++) {
        int resnet = k % 2;
        nf_conv_col_max = k < 2 ? keep : 300; /* then 3x3 convolutions in chunks */
        net_case c;
        REQUIRE(net_case_make(&c, resnet, 3, 4, 8, 5, 6, 3, 40 + k, 0.3) == 0);
        nf_real *ref = malloc(c.nout * sizeof *ref);
        REQUIRE(ref);
        nf_conv_fused = 0;
        nf_cnet_forward(&c.n, c.params, c.in, ref, c.B, c.ws);
        nf_conv_fused = 1;
        nf_cnet_forward(&c.n, c.params, c.in, c.out, c.B, c.ws);
        for (size_t j = 0; j < c.nout; j++) CHECK_CLOSE(c.out[j], ref[j], 1e-5, 1e-5);
        free(ref);
        net_case_free(&c);
    }
    nf_conv_col_max = keep;
#endif
}
