/* conv.h: 2-D convolutions and the convolutional conditioner networks of
 * image layers (core/conv.c).  Not installed; used by the image layers
 * (core/image.c, core/conv_coupling.c) and the unit tests.
 *
 * Layouts.  A flow row is an image of (C, H, W) stored C-H-W (nf_layer's
 * shape); a batch of rows is "rows" layout (B, C, P) with P = H*W and a row
 * stride ld (>= C*P: the row may be longer, see nf_layer.shape).  Inside a
 * network activations are in "planes" layout (C, B, P): element (c, b, p)
 * at (c*B + b)*P + p, so that one convolution over the whole batch is one
 * GEMM
 *     out (cout, B*P) = W (cout, cin*k*k) x col (cin*k*k, B*P) + bias,
 * with col built by im2col from planes (column b*P + p).  B here is the rows
 * of one call on one thread (a threaded workspace already splits rows over
 * threads, each part with its own scratch), so no function here starts
 * threads; BLAS stays single-threaded (nf.h).
 *
 * Convolutions are stride 1 with "same" zero padding (k = 1 or 3, pad
 * k/2), as in Glow and RealNVP.  Weights of a convolution are W (cout, cin,
 * k, k) row-major, then bias (cout), at offsets inside the owner's
 * parameters.
 *
 * Networks (nf_cnet), all taking in (cin planes) to out (cout planes):
 *   glow:   h1 = relu(conv3x3(in) ); h2 = relu(conv1x1(h1)); out = conv3x3(h2)
 *           (Glow's coupling network; hidden channels, last conv zero-initialised)
 *   resnet: h = conv3x3(in); nblocks x [h += conv3x3(relu(conv3x3(relu(h))))];
 *           out = conv3x3(relu(h))   (RealNVP's residual network, last conv zero)
 * Other weights take PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
 * biases zero.  The zero last layer makes a fresh coupling the identity (or
 * a fixed scale, see conv_coupling.c).
 */
#ifndef NF_CONV_H
#define NF_CONV_H

#include "nf_internal.h"

typedef struct nf_conv {
    int cin, cout, k;      /* k = 1 or 3 */
    int h, w;              /* image size (P = h*w) */
    size_t w_off, b_off;   /* offsets of W and bias inside the owner's parameters */
} nf_conv;

/* Scratch floats the two calls below need for B rows (the im2col buffer;
 * 0 for k = 1, which multiplies the planes directly). */
size_t nf_conv_col_size(const nf_conv *cv, int B);
/* The most floats that buffer takes (16 MiB of float32 by default): more
 * rows run in chunks of rows (conv.c).  Tests lower it to run small
 * convolutions in chunks; set it before sizing any workspace. */
extern size_t nf_conv_col_max;
/* The most floats of scratch one chunk of rows of a conv_coupling layer
 * takes (2 MiB of float32 by default: its activations then stay in the
 * caches, conv_coupling.c): more rows run in chunks.  Tests change it to
 * compare chunked against whole-batch passes; set it before sizing any
 * workspace. */
extern size_t nf_cc_chunk_floats;
/* The rows per chunk of a conv_coupling layer L for a call of B rows. */
int nf_conv_coupling_chunk_rows(const nf_layer *L, int B);
/* 1 (the default): forward convolutions multiply with kern.c's fused
 * GEMM + bias + ReLU kernel where it runs (float32 on AVX2); 0: OpenBLAS and
 * a separate pass, the way before it (tests compare the two). */
extern int nf_conv_fused;
/* out (cout planes of B rows) = conv(in) + bias; col: nf_conv_col_size floats.
 * out may not alias in. */
void nf_conv_forward(const nf_conv *cv, const nf_real *params, const nf_real *in, nf_real *out,
                     int B, nf_real *col);
/* Given dout (cout planes): grad[W, bias] += (grad may be NULL), din (cin
 * planes) = (may be NULL). */
void nf_conv_backward(const nf_conv *cv, const nf_real *params, nf_real *grad, const nf_real *in,
                      const nf_real *dout, nf_real *din, int B, nf_real *col);
/* Multiply-adds per row. */
double nf_conv_macs(const nf_conv *cv);
/* U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and zero bias, or all zero. */
void nf_conv_init(const nf_conv *cv, nf_real *params, nf_rng *rng, int zero);

/* rows <-> planes: channels c0 .. c0+nc-1 of B rows (stride ld, P pixels
 * per channel) to/from nc planes. */
void nf_rows_to_planes(const nf_real *x, int ld, int c0, int nc, int P, int B, nf_real *planes);
void nf_planes_to_rows(const nf_real *planes, int nc, int P, int B, nf_real *x, int ld, int c0);

typedef enum { NF_CNET_GLOW = 0, NF_CNET_RESNET, NF_CNET_COUNT } nf_cnet_kind;
#define NF_CNET_MAX_CONV 40

typedef struct nf_cnet {
    nf_cnet_kind kind;
    int cin, cout, hidden, nblocks, h, w;
    int nconv;
    nf_conv conv[NF_CNET_MAX_CONV];
    size_t nparams;
} nf_cnet;

int nf_cnet_glow(nf_cnet *n, int cin, int cout, int hidden, int h, int w);
int nf_cnet_resnet(nf_cnet *n, int cin, int cout, int hidden, int nblocks, int h, int w);
void nf_cnet_init(const nf_cnet *n, nf_real *params, nf_rng *rng);
/* Scratch for B rows: the activations forward keeps for backward, and
 * backward's own part (forward's activations are left intact, so backward
 * may run more than once after one forward). */
size_t nf_cnet_ws_size(const nf_cnet *n, int B);
/* in (cin planes), out (cout planes); out may not alias in or ws. */
void nf_cnet_forward(const nf_cnet *n, const nf_real *params, const nf_real *in, nf_real *out,
                     int B, nf_real *ws);
/* After nf_cnet_forward with the same in, B and ws: dout (cout planes);
 * grad += (may be NULL), din = (cin planes, may be NULL). */
void nf_cnet_backward(const nf_cnet *n, const nf_real *params, nf_real *grad, const nf_real *in,
                      const nf_real *dout, nf_real *din, int B, nf_real *ws);
/* The same with the workspace in two parts: ws, the activations forward
 * keeps for backward (nf_cnet_act_size floats), and scratch, which neither
 * call needs to find as the other left it (nf_cnet_scratch_size: the
 * gradient planes and the im2col buffer), so passes over several chunks of
 * rows may keep one ws per chunk and share one scratch.  The plain calls
 * take ws followed by scratch (nf_cnet_ws_size = the sum). */
size_t nf_cnet_act_size(const nf_cnet *n, int B);
size_t nf_cnet_scratch_size(const nf_cnet *n, int B);
void nf_cnet_forward_ex(const nf_cnet *n, const nf_real *params, const nf_real *in, nf_real *out,
                        int B, nf_real *ws, nf_real *scratch);
void nf_cnet_backward_ex(const nf_cnet *n, const nf_real *params, nf_real *grad,
                         const nf_real *in, const nf_real *dout, nf_real *din, int B,
                         nf_real *ws, nf_real *scratch);
double nf_cnet_macs(const nf_cnet *n); /* per row */
/* From a layer spec's keys "net" ("glow" | "resnet"), "hidden_channels"
 * (default def_hidden), "blocks" (resnet, default 2); the message in err. */
int nf_cnet_from_spec(nf_cnet *n, const cJSON *spec, int cin, int cout, int h, int w,
                      int def_hidden, char *err, size_t errlen);
void nf_cnet_to_json(const nf_cnet *n, cJSON *obj);
#define NF_CNET_KEYS "net", "hidden_channels", "blocks"

#endif
