/* conv.c: 2-D convolutions (stride 1, "same" zero padding, k = 1 or 3) and
 * the convolutional conditioner networks of the image layers.  conv.h holds
 * the contract: layouts, the two networks, initialisation.
 *
 * A 3x3 convolution is im2col and one GEMM over the batch:
 *   col (cin*9, n*P): row ci*9 + t, t = ky*3 + kx, column b*P + y*W + x
 *   holds in(ci, b, y+ky-1, x+kx-1), 0 outside the image;
 *   out (cout, B*P) = W (cout, cin*9) x col + bias.
 * Tap t, shift (dy, dx) = (ky-1, kx-1), of a channel is the channel's n
 * planes, contiguous in planes layout, read as one flat array shifted by
 * off = dy*W + dx.  So im2col copies each (channel, tap) in one memcpy and
 * then zeroes the entries whose source lies outside their own image: row 0
 * (dy = -1) or row H-1 (dy = 1) of every plane, and column 0 (dx = -1) or
 * column W-1 (dx = 1), which the flat shift took from the neighbouring row
 * or plane.  col2im, its transpose, zeroes the same entries of a tap's
 * gradient and adds the rest back shifted the other way.  Both run over long
 * contiguous arrays (no per-pixel index arithmetic), which matters at the
 * small image widths of flows (14, 28, 32).
 *
 * A convolution that narrows the channels (9 cout + cin < 9 cin: the last
 * one of a conditioner, hidden -> a few parameters per channel) runs on the
 * output side instead, so its buffer has 9 cout rows, not 9 cin:
 *   Y (cout*9, n*P) = Wa x in,  Wa[(co*9 + t), ci] = W[co, ci, t],
 *   out(co) = sum_t Y(co, t) read at shift t: a col2im with mirrored taps
 *   (tap 8 - t adds at shift -off_t, i.e. reads at +off_t);
 * backward: G = im2col of dout with mirrored taps (G(co, t) at pixel q is
 * dout(co) at q - off_t), dWa += G x in^T and din = Wa^T G, with no col2im.
 * For Glow's 512 -> 6 convolution that is 60 buffer rows instead of 4608,
 * and GEMMs with 54 rows instead of 6.
 *
 * The buffer holds at most nf_conv_col_max floats (every image layer of a
 * flow has its own workspace): a batch whose columns do not fit runs in
 * chunks of rows, each chunk one GEMM over n*P columns (thousands wide: GEMM
 * speed does not grow past that) writing its block of the output planes in
 * place (ldc = B*P).  A 1x1 convolution multiplies the planes directly: one
 * GEMM, no copy.
 *
 * Backward per chunk (input side): im2col again (nothing is kept from
 * forward), dW += dout x col^T; then col := W^T dout and col2im into din.
 * dbias is a sum over the planes.
 *
 * Networks keep the post-ReLU activations they need for backward (ReLU's
 * derivative is post > 0); a convolution whose input is relu(h) with h kept
 * (resnet) applies the ReLU while building its buffer rather than storing
 * relu(h).
 */
#include "conv.h"

#include "alloc.h"
#include "kern.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* floats of one convolution buffer: 16 MiB in float32 */
size_t nf_conv_col_max = (size_t)1 << 22;
/* parameters of one conditioner (512 MiB of float32), checked before any
 * allocation: "hidden_channels" comes from user specs */
#define CNET_MAX_PARAMS ((size_t)1 << 27)

static size_t conv_P(const nf_conv *cv) { return (size_t)cv->h * cv->w; }

/* 1 when the convolution runs on the output side (see above) */
static int conv_narrow(const nf_conv *cv) {
    return cv->k == 3 && 9 * (size_t)cv->cout + cv->cin < 9 * (size_t)cv->cin;
}

/* Buffer rows per pixel: 9 cin (im2col), or 9 cout (Y or G) and cin (the
 * chunk's relu(in)) on the output side, which also keeps Wa and dWa. */
static size_t conv_rows(const nf_conv *cv) {
    return conv_narrow(cv) ? 9 * (size_t)cv->cout + cv->cin : 9 * (size_t)cv->cin;
}
static size_t conv_fixed(const nf_conv *cv) {
    return conv_narrow(cv) ? 2 * 9 * (size_t)cv->cout * cv->cin : 0;
}

/* Rows of the batch per chunk: as many as nf_conv_col_max floats hold, at
 * least one. */
static int conv_chunk_rows(const nf_conv *cv, int B) {
    size_t per_row = conv_rows(cv) * conv_P(cv), fixed = conv_fixed(cv);
    size_t room = nf_conv_col_max > fixed ? nf_conv_col_max - fixed : 0;
    size_t n = room / (per_row ? per_row : 1);
    if (n < 1) n = 1;
    return n > (size_t)B ? B : (int)n;
}

size_t nf_conv_col_size(const nf_conv *cv, int B) {
    if (cv->k == 1 || B < 1) return 0;
    return conv_fixed(cv) + conv_rows(cv) * conv_P(cv) * (size_t)conv_chunk_rows(cv, B);
}

double nf_conv_macs(const nf_conv *cv) {
    return (double)cv->cout * cv->cin * cv->k * cv->k * (double)conv_P(cv);
}

void nf_conv_init(const nf_conv *cv, nf_real *params, nf_rng *rng, int zero) {
    size_t nw = (size_t)cv->cout * cv->cin * cv->k * cv->k;
    double bound = 1.0 / sqrt((double)cv->cin * cv->k * cv->k);
    for (size_t i = 0; i < nw; i++)
        params[cv->w_off + i] = zero ? 0 : (nf_real)((2 * nf_rng_uniform(rng) - 1) * bound);
    memset(params + cv->b_off, 0, (size_t)cv->cout * sizeof *params);
}

/* ---- im2col / col2im -------------------------------------------------------- */

/* The flat shift of tap t (0..8) and the range [lo, hi) of the n*P entries
 * of a buffer row whose shifted source stays inside the n planes; the
 * entries outside it are all border entries (zeroed by tap_border). */
static void tap_range(int t, int W, size_t N, ptrdiff_t *off, size_t *lo, size_t *hi) {
    int dy = t / 3 - 1, dx = t % 3 - 1;
    ptrdiff_t o = (ptrdiff_t)dy * W + dx;
    size_t a = (size_t)(o < 0 ? -o : o);
    *off = o;
    if (a >= N) {
        *lo = *hi = 0;
        return;
    }
    *lo = o < 0 ? a : 0;
    *hi = o > 0 ? N - a : N;
}

/* Zero the entries of tap t's buffer row (n planes of H x W) whose source
 * is outside their image: a border row and/or column of every plane. */
static void tap_border(int t, nf_real *row, int n, int H, int W) {
    int dy = t / 3 - 1, dx = t % 3 - 1;
    size_t P = (size_t)H * W, N = P * (size_t)n;
    if (dy)
        for (int b = 0; b < n; b++)
            memset(row + b * P + (dy < 0 ? 0 : (size_t)(H - 1) * W), 0, (size_t)W * sizeof *row);
    if (dx)
        for (size_t i = dx < 0 ? 0 : (size_t)W - 1; i < N; i += (size_t)W) row[i] = 0;
}

NF_VEC static void copy_relu(nf_real *dst, const nf_real *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i] > 0 ? src[i] : 0;
}

NF_VEC static void add_to(nf_real *dst, const nf_real *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* col (nch*9, n*P) from rows b0 .. b0+n-1 of src (nch planes of B rows),
 * relu(src) when relu is set; mirror: row t takes tap 8 - t's shift. */
static void im2col(const nf_conv *cv, const nf_real *src, int nch, int B, int b0, int n,
                   int relu, int mirror, nf_real *col) {
    size_t P = conv_P(cv), N = P * (size_t)n;
    for (int ci = 0; ci < nch; ci++) {
        const nf_real *s = src + ((size_t)ci * B + b0) * P;
        for (int t = 0; t < 9; t++) {
            int u = mirror ? 8 - t : t;
            nf_real *dst = col + ((size_t)ci * 9 + t) * N;
            ptrdiff_t off;
            size_t lo, hi;
            tap_range(u, cv->w, N, &off, &lo, &hi);
            if (hi > lo) {
                if (relu) copy_relu(dst + lo, s + lo + off, hi - lo);
                else memcpy(dst + lo, s + lo + off, (hi - lo) * sizeof *dst);
            }
            /* the entries outside [lo, hi) are border entries: cleared here */
            tap_border(u, dst, n, cv->h, cv->w);
        }
    }
}

/* dst rows b0 .. b0+n-1 (nch planes of B rows) = col2im(col), written;
 * mirror as in im2col.  col is scratch: its border entries get zeroed. */
static void col2im(const nf_conv *cv, nf_real *col, int nch, int B, int b0, int n, int mirror,
                   nf_real *dst) {
    size_t P = conv_P(cv), N = P * (size_t)n;
    for (int ci = 0; ci < nch; ci++) {
        nf_real *d = dst + ((size_t)ci * B + b0) * P, *rows = col + (size_t)ci * 9 * N;
        memcpy(d, rows + 4 * N, N * sizeof *d); /* the centre tap: no shift, no border */
        for (int t = 0; t < 9; t++) {
            if (t == 4) continue;
            int u = mirror ? 8 - t : t;
            ptrdiff_t off;
            size_t lo, hi;
            tap_range(u, cv->w, N, &off, &lo, &hi);
            tap_border(u, rows + t * N, n, cv->h, cv->w);
            if (hi > lo) add_to(d + lo + off, rows + t * N + lo, hi - lo);
        }
    }
}

/* ---- one convolution ------------------------------------------------------------ */

/* out = act(conv(in') + bias (+ res)) over C planes of N entries:
 * the bias, residual and ReLU of a convolution in one pass over its output. */
NF_VEC static void epilogue(nf_real *out, const nf_real *bias, const nf_real *res, int relu,
                            int C, size_t N) {
    for (int c = 0; c < C; c++) {
        nf_real bc = bias[c], *o = out + (size_t)c * N;
        const nf_real *r = res ? res + (size_t)c * N : NULL;
        if (r && relu)
            for (size_t i = 0; i < N; i++) {
                nf_real v = o[i] + bc + r[i];
                o[i] = v > 0 ? v : 0;
            }
        else if (r)
            for (size_t i = 0; i < N; i++) o[i] += bc + r[i];
        else if (relu)
            for (size_t i = 0; i < N; i++) {
                nf_real v = o[i] + bc;
                o[i] = v > 0 ? v : 0;
            }
        else
            for (size_t i = 0; i < N; i++) o[i] += bc;
    }
}

/* The output side's scratch: Wa, dWa (9 cout, cin), then Y or G (9 cout
 * rows) and x (cin rows) of a chunk of m rows. */
typedef struct { nf_real *Wa, *dWa, *Y, *x; } narrow_bufs;

static narrow_bufs narrow_layout(const nf_conv *cv, nf_real *col, int m) {
    size_t nw = 9 * (size_t)cv->cout * cv->cin, mP = conv_P(cv) * (size_t)m;
    narrow_bufs nb = {col, col + nw, col + 2 * nw, col + 2 * nw + 9 * (size_t)cv->cout * mP};
    return nb;
}

/* Wa[(co*9 + t), ci] = W[co, ci, t] */
static void weights_by_tap(const nf_conv *cv, const nf_real *W, nf_real *Wa) {
    for (int co = 0; co < cv->cout; co++)
        for (int ci = 0; ci < cv->cin; ci++)
            for (int t = 0; t < 9; t++)
                Wa[((size_t)co * 9 + t) * cv->cin + ci] = W[((size_t)co * cv->cin + ci) * 9 + t];
}

/* The chunk [b0, b0+m) of the convolution's input, in (ld B*P) or relu(in)
 * copied into x (ld m*P); *ld set. */
static const nf_real *chunk_input(const nf_conv *cv, const nf_real *in, int relu, int B, int b0,
                                  int m, nf_real *x, int *ld) {
    size_t P = conv_P(cv), mP = P * (size_t)m;
    if (!relu) {
        *ld = (int)(P * (size_t)B);
        return in + (size_t)b0 * P;
    }
    for (int ci = 0; ci < cv->cin; ci++)
        copy_relu(x + (size_t)ci * mP, in + ((size_t)ci * B + b0) * P, mP);
    *ld = (int)mP;
    return x;
}

/* C = act(A B + bias) by kern.c's fused kernel (float, AVX2, where it beats
 * OpenBLAS: nf_kern_fused_gemm_wins); 0 where it does not run, and then the
 * caller multiplies with nf_gemm. */
static int fused_gemm(int M, int N, int K, const nf_real *A, int lda, const nf_real *B, int ldb,
                      nf_real *C, int ldc, const nf_real *bias, int relu) {
#ifdef NF_DOUBLE
    (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)C, (void)ldc,
        (void)bias, (void)relu;
    return 0;
#else
    return nf_conv_fused && nf_kern_fused_gemm_wins() &&
           nf_gemm_bias_act(M, N, K, A, lda, B, ldb, C, ldc, bias, relu);
#endif
}

int nf_conv_fused = 1;

/* out (cout planes) = act(conv(x) + bias (+ res)), x = relu(in) when relu_in
 * (3x3 only: the ReLU is applied while building the buffer).  Without res,
 * the bias and ReLU go into the GEMM's store where the fused kernel runs
 * (fused_gemm); otherwise one pass over out after the GEMMs (epilogue). */
static void conv_run(const nf_conv *cv, const nf_real *params, const nf_real *in, int relu_in,
                     const nf_real *res, int relu_out, nf_real *out, int B, nf_real *col) {
    const nf_real *Wt = params + cv->w_off, *bias = params + cv->b_off;
    size_t P = conv_P(cv);
    int BP = (int)(P * (size_t)B), narrow = conv_narrow(cv), fused = 0;
    if (cv->k == 1) {
        fused = !res && fused_gemm(cv->cout, BP, cv->cin, Wt, cv->cin, in, BP, out, BP, bias,
                                   relu_out);
        if (!fused) nf_gemm(0, 0, cv->cout, BP, cv->cin, 1, Wt, cv->cin, in, BP, 0, out, BP);
    } else {
        int K = cv->cin * 9, n = conv_chunk_rows(cv, B);
        if (narrow) weights_by_tap(cv, Wt, col);
        for (int b0 = 0; b0 < B; b0 += n) {
            int m = B - b0 < n ? B - b0 : n, mP = (int)(P * (size_t)m), ld;
            if (narrow) {
                narrow_bufs nb = narrow_layout(cv, col, m);
                const nf_real *x = chunk_input(cv, in, relu_in, B, b0, m, nb.x, &ld);
                if (!fused_gemm(9 * cv->cout, mP, cv->cin, nb.Wa, cv->cin, x, ld, nb.Y, mP, NULL,
                                0))
                    nf_gemm(0, 0, 9 * cv->cout, mP, cv->cin, 1, nb.Wa, cv->cin, x, ld, 0, nb.Y,
                            mP);
                col2im(cv, nb.Y, cv->cout, B, b0, m, 1, out);
            } else {
                im2col(cv, in, cv->cin, B, b0, m, relu_in, 0, col);
                /* every chunk or none: the kernel's availability does not change */
                fused = !res && fused_gemm(cv->cout, mP, K, Wt, K, col, mP, out + (size_t)b0 * P,
                                           BP, bias, relu_out);
                if (!fused)
                    nf_gemm(0, 0, cv->cout, mP, K, 1, Wt, K, col, mP, 0, out + (size_t)b0 * P, BP);
            }
        }
    }
    if (!fused) epilogue(out, bias, res, relu_out, cv->cout, (size_t)BP);
}

/* grad bias += the sum of each dout plane, in double (B*P terms) over 16
 * running sums: one sum in order is a chain of dependent additions the
 * compiler may not reorder (no -ffast-math), 4x slower than the GEMMs of
 * a 1x1 convolution's backward; 16 lanes vectorise. */
#define BIAS_LANES 16
NF_VEC static void bias_grad(nf_real *gb, const nf_real *dout, int C, size_t N) {
    for (int c = 0; c < C; c++) {
        const nf_real *d = dout + (size_t)c * N;
        double acc[BIAS_LANES] = {0}, s = 0;
        size_t i = 0;
        for (; i + BIAS_LANES <= N; i += BIAS_LANES)
            for (int j = 0; j < BIAS_LANES; j++) acc[j] += d[i + j];
        for (; i < N; i++) s += d[i];
        for (int j = 0; j < BIAS_LANES; j++) s += acc[j];
        gb[c] += (nf_real)s;
    }
}

/* The output side's backward: G = mirrored im2col of dout per chunk,
 * dWa += G x^T, din = Wa^T G; dWa is added into grad's (cout, cin, 9). */
static void narrow_back(const nf_conv *cv, const nf_real *params, nf_real *gW,
                        const nf_real *in, int relu_in, const nf_real *dout, nf_real *din,
                        int B, nf_real *col) {
    size_t P = conv_P(cv), nw = 9 * (size_t)cv->cout * cv->cin;
    int BP = (int)(P * (size_t)B), M = 9 * cv->cout, n = conv_chunk_rows(cv, B);
    weights_by_tap(cv, params + cv->w_off, col);
    if (gW) memset(col + nw, 0, nw * sizeof *col);
    for (int b0 = 0; b0 < B; b0 += n) {
        int m = B - b0 < n ? B - b0 : n, mP = (int)(P * (size_t)m), ld;
        narrow_bufs nb = narrow_layout(cv, col, m);
        im2col(cv, dout, cv->cout, B, b0, m, 0, 1, nb.Y);
        if (gW) {
            const nf_real *x = chunk_input(cv, in, relu_in, B, b0, m, nb.x, &ld);
            nf_gemm(0, 1, M, cv->cin, mP, 1, nb.Y, mP, x, ld, 1, nb.dWa, cv->cin);
        }
        if (din)
            nf_gemm(1, 0, cv->cin, mP, M, 1, nb.Wa, cv->cin, nb.Y, mP, 0, din + (size_t)b0 * P,
                    BP);
    }
    if (!gW) return;
    const nf_real *dWa = col + nw;
    for (int co = 0; co < cv->cout; co++)
        for (int ci = 0; ci < cv->cin; ci++)
            for (int t = 0; t < 9; t++)
                gW[((size_t)co * cv->cin + ci) * 9 + t] += dWa[((size_t)co * 9 + t) * cv->cin + ci];
}

/* Backward of conv_run's convolution (before its epilogue): given dout,
 * grad[W, bias] += (grad may be NULL) and din = d/d(x) (may be NULL), x the
 * convolution's input (relu(in) when relu_in: the caller applies relu'). */
static void conv_back(const nf_conv *cv, const nf_real *params, nf_real *grad,
                      const nf_real *in, int relu_in, const nf_real *dout, nf_real *din, int B,
                      nf_real *col) {
    const nf_real *Wt = params + cv->w_off;
    nf_real *gW = grad ? grad + cv->w_off : NULL;
    size_t P = conv_P(cv);
    int BP = (int)(P * (size_t)B);
    if (grad) bias_grad(grad + cv->b_off, dout, cv->cout, (size_t)BP);
    if (cv->k == 1) {
        if (gW) nf_gemm(0, 1, cv->cout, cv->cin, BP, 1, dout, BP, in, BP, 1, gW, cv->cin);
        if (din) nf_gemm(1, 0, cv->cin, BP, cv->cout, 1, Wt, cv->cin, dout, BP, 0, din, BP);
        return;
    }
    if (conv_narrow(cv)) {
        narrow_back(cv, params, gW, in, relu_in, dout, din, B, col);
        return;
    }
    int K = cv->cin * 9, n = conv_chunk_rows(cv, B);
    for (int b0 = 0; b0 < B; b0 += n) {
        int m = B - b0 < n ? B - b0 : n, mP = (int)(P * (size_t)m);
        const nf_real *dch = dout + (size_t)b0 * P;
        if (gW) {
            im2col(cv, in, cv->cin, B, b0, m, relu_in, 0, col);
            nf_gemm(0, 1, cv->cout, K, mP, 1, dch, BP, col, mP, 1, gW, K);
        }
        if (din) {
            nf_gemm(1, 0, K, mP, cv->cout, 1, Wt, K, dch, BP, 0, col, mP);
            col2im(cv, col, cv->cin, B, b0, m, 0, din);
        }
    }
}

void nf_conv_forward(const nf_conv *cv, const nf_real *params, const nf_real *in, nf_real *out,
                     int B, nf_real *col) {
    conv_run(cv, params, in, 0, NULL, 0, out, B, col);
}

void nf_conv_backward(const nf_conv *cv, const nf_real *params, nf_real *grad, const nf_real *in,
                      const nf_real *dout, nf_real *din, int B, nf_real *col) {
    conv_back(cv, params, grad, in, 0, dout, din, B, col);
}

/* ---- rows <-> planes ------------------------------------------------------------ */

void nf_rows_to_planes(const nf_real *x, int ld, int c0, int nc, int P, int B, nf_real *planes) {
    for (int c = 0; c < nc; c++)
        for (int b = 0; b < B; b++)
            memcpy(planes + ((size_t)c * B + b) * P, x + (size_t)b * ld + (size_t)(c0 + c) * P,
                   (size_t)P * sizeof *planes);
}

void nf_planes_to_rows(const nf_real *planes, int nc, int P, int B, nf_real *x, int ld, int c0) {
    for (int c = 0; c < nc; c++)
        for (int b = 0; b < B; b++)
            memcpy(x + (size_t)b * ld + (size_t)(c0 + c) * P, planes + ((size_t)c * B + b) * P,
                   (size_t)P * sizeof *x);
}

/* ---- networks ---------------------------------------------------------------------- */

static void add_conv(nf_cnet *n, int cin, int cout, int k) {
    nf_conv *cv = &n->conv[n->nconv++];
    cv->cin = cin;
    cv->cout = cout;
    cv->k = k;
    cv->h = n->h;
    cv->w = n->w;
    cv->w_off = n->nparams;
    cv->b_off = n->nparams + (size_t)cout * cin * k * k;
    n->nparams = cv->b_off + (size_t)cout;
}

/* The parameter count of a network before building it (doubles: no
 * overflow for any int widths). */
static double cnet_count(int cin, int cout, int hidden, int nconv_hh3, int nconv_hh1) {
    double H = hidden;
    return (cin * 9.0 + 1) * H + nconv_hh3 * (H * 9 + 1) * H + nconv_hh1 * (H + 1) * H +
           (H * 9 + 1) * cout;
}

static int cnet_begin(nf_cnet *n, nf_cnet_kind kind, int cin, int cout, int hidden, int h, int w,
                      double count) {
    memset(n, 0, sizeof *n);
    if (cin < 1 || cout < 1 || hidden < 1 || h < 1 || w < 1) return NF_EINVAL;
    if (count > (double)CNET_MAX_PARAMS) return NF_ERANGE;
    n->kind = kind;
    n->cin = cin;
    n->cout = cout;
    n->hidden = hidden;
    n->h = h;
    n->w = w;
    return 0;
}

int nf_cnet_glow(nf_cnet *n, int cin, int cout, int hidden, int h, int w) {
    int rc = cnet_begin(n, NF_CNET_GLOW, cin, cout, hidden, h, w,
                        cnet_count(cin, cout, hidden, 0, 1));
    if (rc) return rc;
    add_conv(n, cin, hidden, 3);
    add_conv(n, hidden, hidden, 1);
    add_conv(n, hidden, cout, 3);
    return 0;
}

int nf_cnet_resnet(nf_cnet *n, int cin, int cout, int hidden, int nblocks, int h, int w) {
    if (nblocks < 1 || 2 + 2 * nblocks > NF_CNET_MAX_CONV) {
        memset(n, 0, sizeof *n);
        return NF_EINVAL;
    }
    int rc = cnet_begin(n, NF_CNET_RESNET, cin, cout, hidden, h, w,
                        cnet_count(cin, cout, hidden, 2 * nblocks, 0));
    if (rc) return rc;
    n->nblocks = nblocks;
    add_conv(n, cin, hidden, 3);
    for (int b = 0; b < nblocks; b++) {
        add_conv(n, hidden, hidden, 3);
        add_conv(n, hidden, hidden, 3);
    }
    add_conv(n, hidden, cout, 3);
    return 0;
}

void nf_cnet_init(const nf_cnet *n, nf_real *params, nf_rng *rng) {
    for (int i = 0; i < n->nconv; i++) nf_conv_init(&n->conv[i], params, rng, i == n->nconv - 1);
}

double nf_cnet_macs(const nf_cnet *n) {
    double m = 0;
    for (int i = 0; i < n->nconv; i++) m += nf_conv_macs(&n->conv[i]);
    return m;
}

/* Hidden planes of B rows, and the largest im2col buffer of the network. */
static size_t hidden_size(const nf_cnet *n, int B) {
    return (size_t)n->hidden * B * n->h * n->w;
}
static size_t cnet_col_size(const nf_cnet *n, int B) {
    size_t m = 0;
    for (int i = 0; i < n->nconv; i++) {
        size_t c = nf_conv_col_size(&n->conv[i], B);
        m = c > m ? c : m;
    }
    return m;
}

/* Activations kept by forward, in hidden planes:
 *   glow:   h1, h2 (post-ReLU)
 *   resnet: s_0, then u_b, s_{b+1} per block (pre-ReLU: the convolutions
 *           read them through im2col's ReLU)
 * then the gradient scratch (glow 2, resnet 3 hidden planes), then col. */
static int cnet_nact(const nf_cnet *n) {
    return n->kind == NF_CNET_GLOW ? 2 : 1 + 2 * n->nblocks;
}
static int cnet_ngrad(const nf_cnet *n) { return n->kind == NF_CNET_GLOW ? 2 : 3; }

size_t nf_cnet_act_size(const nf_cnet *n, int B) {
    return (size_t)cnet_nact(n) * hidden_size(n, B);
}

size_t nf_cnet_scratch_size(const nf_cnet *n, int B) {
    return (size_t)cnet_ngrad(n) * hidden_size(n, B) + cnet_col_size(n, B);
}

size_t nf_cnet_ws_size(const nf_cnet *n, int B) {
    return nf_cnet_act_size(n, B) + nf_cnet_scratch_size(n, B);
}

void nf_cnet_forward(const nf_cnet *n, const nf_real *params, const nf_real *in, nf_real *out,
                     int B, nf_real *ws) {
    nf_cnet_forward_ex(n, params, in, out, B, ws, ws + nf_cnet_act_size(n, B));
}

void nf_cnet_forward_ex(const nf_cnet *n, const nf_real *params, const nf_real *in, nf_real *out,
                        int B, nf_real *ws, nf_real *scratch) {
    size_t HN = hidden_size(n, B);
    nf_real *col = scratch + (size_t)cnet_ngrad(n) * HN;
    const nf_conv *cv = n->conv;
    if (n->kind == NF_CNET_GLOW) {
        nf_real *h1 = ws, *h2 = ws + HN;
        conv_run(&cv[0], params, in, 0, NULL, 1, h1, B, col);
        conv_run(&cv[1], params, h1, 0, NULL, 1, h2, B, col);
        conv_run(&cv[2], params, h2, 0, NULL, 0, out, B, col);
        return;
    }
    nf_real *s = ws;
    conv_run(&cv[0], params, in, 0, NULL, 0, s, B, col);
    for (int b = 0; b < n->nblocks; b++) {
        nf_real *u = s + HN, *s2 = u + HN;
        conv_run(&cv[1 + 2 * b], params, s, 1, NULL, 0, u, B, col);
        conv_run(&cv[2 + 2 * b], params, u, 1, s, 0, s2, B, col);
        s = s2;
    }
    conv_run(&cv[n->nconv - 1], params, s, 1, NULL, 0, out, B, col);
}

/* d *= (h > 0): the ReLU derivative from its output (or its input) */
NF_VEC static void relu_mask(nf_real *d, const nf_real *h, size_t N) {
    for (size_t i = 0; i < N; i++) d[i] = h[i] > 0 ? d[i] : 0;
}

/* ds += da * (s > 0) */
NF_VEC static void add_masked(nf_real *ds, const nf_real *da, const nf_real *s, size_t N) {
    for (size_t i = 0; i < N; i++) ds[i] += s[i] > 0 ? da[i] : 0;
}

void nf_cnet_backward(const nf_cnet *n, const nf_real *params, nf_real *grad, const nf_real *in,
                      const nf_real *dout, nf_real *din, int B, nf_real *ws) {
    nf_cnet_backward_ex(n, params, grad, in, dout, din, B, ws, ws + nf_cnet_act_size(n, B));
}

void nf_cnet_backward_ex(const nf_cnet *n, const nf_real *params, nf_real *grad,
                         const nf_real *in, const nf_real *dout, nf_real *din, int B,
                         nf_real *ws, nf_real *scratch) {
    size_t HN = hidden_size(n, B);
    nf_real *g = scratch, *col = g + (size_t)cnet_ngrad(n) * HN;
    const nf_conv *cv = n->conv;
    if (n->kind == NF_CNET_GLOW) {
        const nf_real *h1 = ws, *h2 = ws + HN;
        nf_real *dh2 = g, *dh1 = g + HN;
        conv_back(&cv[2], params, grad, h2, 0, dout, dh2, B, col);
        relu_mask(dh2, h2, HN);
        conv_back(&cv[1], params, grad, h1, 0, dh2, dh1, B, col);
        relu_mask(dh1, h1, HN);
        conv_back(&cv[0], params, grad, in, 0, dh1, din, B, col);
        return;
    }
    nf_real *ds = g, *du = g + HN, *da = g + 2 * HN;
    /* s_b at ws + 2b HN, u_b right after it */
    const nf_real *s_last = ws + 2 * (size_t)n->nblocks * HN;
    conv_back(&cv[n->nconv - 1], params, grad, s_last, 1, dout, ds, B, col);
    relu_mask(ds, s_last, HN);
    for (int b = n->nblocks - 1; b >= 0; b--) {
        const nf_real *s = ws + 2 * (size_t)b * HN, *u = s + HN;
        /* s_{b+1} = s_b + conv2(relu(u_b)), u_b = conv1(relu(s_b)) */
        conv_back(&cv[2 + 2 * b], params, grad, u, 1, ds, du, B, col);
        relu_mask(du, u, HN);
        conv_back(&cv[1 + 2 * b], params, grad, s, 1, du, da, B, col);
        add_masked(ds, da, s, HN);
    }
    conv_back(&cv[0], params, grad, in, 0, ds, din, B, col);
}

/* ---- spec ------------------------------------------------------------------------------- */

void nf_cnet_to_json(const nf_cnet *n, cJSON *obj) {
    cJSON_AddStringToObject(obj, "net", n->kind == NF_CNET_RESNET ? "resnet" : "glow");
    cJSON_AddNumberToObject(obj, "hidden_channels", n->hidden);
    if (n->kind == NF_CNET_RESNET) cJSON_AddNumberToObject(obj, "blocks", n->nblocks);
}

int nf_cnet_from_spec(nf_cnet *n, const cJSON *spec, int cin, int cout, int h, int w,
                      int def_hidden, char *err, size_t errlen) {
    static const char *const kinds[] = {"glow", "resnet", NULL};
    int kind, hidden, blocks, rc;
    memset(n, 0, sizeof *n);
    const char *s = nf_json_str(spec, "net", "glow");
    if (s && !strcmp(s, "mlp")) {
        nf_set_err(err, errlen, "\"net\": \"mlp\" is a vector conditioner; image layers take "
                                "\"glow\" or \"resnet\"");
        return NF_EINVAL;
    }
    if ((rc = nf_json_enum(spec, "net", kinds, NF_CNET_GLOW, &kind, err, errlen))) return rc;
    if ((rc = nf_json_int(spec, "hidden_channels", def_hidden, 1, 4096, &hidden, err, errlen)))
        return rc;
    if ((rc = nf_json_int(spec, "blocks", 2, 1, 16, &blocks, err, errlen)))
        return rc;
    if (kind == NF_CNET_GLOW && nf_json_get(spec, "blocks")) {
        nf_set_err(err, errlen, "\"blocks\" applies to \"net\": \"resnet\" only");
        return NF_EINVAL;
    }
    rc = kind == NF_CNET_GLOW ? nf_cnet_glow(n, cin, cout, hidden, h, w)
                              : nf_cnet_resnet(n, cin, cout, hidden, blocks, h, w);
    if (rc == NF_ERANGE)
        nf_set_err(err, errlen,
                   "the conditioner would exceed %zu parameters: lower \"hidden_channels\" (%d)",
                   CNET_MAX_PARAMS, hidden);
    else if (rc)
        nf_set_err(err, errlen, "cannot build the %s conditioner for %d -> %d channels on %dx%d",
                   kinds[kind], cin, cout, h, w);
    return rc;
}
