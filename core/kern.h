/* kern.h: core's hand-written numeric kernels, where OpenBLAS or the
 * compiler's plain output leaves time on the table.
 *
 * Which instruction set: the core is built for baseline x86-64 (the binary
 * runs on any machine the Debian package runs on).  Each hot kernel is
 * compiled twice, for baseline and for AVX2+FMA, and the AVX2 version is
 * picked once at run time (__builtin_cpu_supports).  Non-x86 builds get the
 * plain C versions.
 *
 *  - nf_gemv_rows: y = W x (+ y when acc), W (N,K) row-major with leading
 *    dimension ld.  The one-row product of a dense layer (B = 1 log_prob,
 *    what a single HTTP request computes).  OpenBLAS 0.3.21's sgemv spends
 *    20-40% more than this kernel on the 128x128 layers of a RealNVP net
 *    and starts its thread pool for products this small when it has more
 *    than one thread.  The AVX2 kernel takes four rows at a time with one
 *    8-lane accumulator each, then reduces them horizontally (a one-column
 *    product is vectorised along the rows; 2-7 columns take the plain
 *    loop); the sums are
 *    in a different order from a scalar loop (results differ in the last
 *    bits, never in more: tests compare against nf_gemm_ref at 1e-5).
 *    float only; the NF_DOUBLE build (tests) keeps cblas_dgemv.
 *
 * Elementwise loops (bias + activation, Adam) are plain C with NF_VEC on the
 * function: GCC/clang clone it for AVX2 and dispatch through an ifunc, and
 * -O3 vectorises it (Makefile: core is built with -O3 -fno-math-errno). */
#ifndef NF_KERN_H
#define NF_KERN_H

#include "nf.h"

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__) && !defined(NF_NO_CLONES)
#define NF_VEC __attribute__((target_clones("avx2", "default")))
#else
#define NF_VEC
#endif

/* s[i] = sigmoid(a), d[i] = 1 + exp(-|a|) for a = h[i] + c, in double
 * (log sigmoid(a) = min(a, 0) - log d[i]): a polynomial exp, vectorised,
 * within 1e-13 relative of libm's (log d: + 2^-52 absolute, d being
 * rounded; tests/core/test_conv_coupling.c); libm beyond |a| = 700 and for
 * inf and NaN. */
void nf_sigmoid_parts(const nf_real *h, double c, int n, double *s, double *d);

#ifndef NF_DOUBLE
/* One row of a concat-squash layer (core/cnf.c) in float, for j < H:
 *     g_j = sigmoid(a_j t + c_j), u_j = y_j + b_j, p_j = u_j g_j + d_j t,
 *     o_j = tanh(p_j) (act_tanh) or p_j,  s_j = act'(p_j) g_j,
 * y becoming u.  A polynomial exp (degree 7 on |r| <= ln 2 / 2) and, for
 * |p| < 0.2, tanh's odd series to p^9; vectorised.  Within 4e-7 relative of
 * libm's sigmoid and tanh (tests/core/test_cnf.c); arguments below -87 are
 * clamped (exp underflows to 0 in float there anyway). */
void nf_cs_row(int H, float t, const float *a, const float *c, const float *b, const float *d,
               float *y, float *g, float *p, float *o, float *s, int act_tanh);
/* One row of MAF's affine step, for i < D: h = o[2i], m = o[2i+1],
 *     s = S tanh(h / S),  y_i = u_i exp(s) + m;
 * e[i] = exp(s) and dsdh[i] = ds/dh = 1 - tanh^2 when e is non-NULL (what
 * the backward reads).  Returns sum_i s.  The polynomial exp and tanh of
 * nf_cs_row, vectorised: libm's expf and tanhf, one call per entry, were 4%
 * of a W2 (784-D MAF) training step.  Within 1e-6 relative of libm
 * (tests/core/test_autoregressive.c). */
float nf_maf_row(int D, float S, const float *o, const float *u, float *y, float *e, float *dsdh);
void nf_gemv_rows(int N, int K, const float *W, int ld, const float *x, float *y, int acc);
/* The portable twin, exposed for tests. */
void nf_gemv_rows_ref(int N, int K, const float *W, int ld, const float *x, float *y, int acc);
/* C (M,N) = act(A B + bias): A (M,K), B (K,N), C row-major with leading
 * dimensions lda, ldb, ldc; bias (M) or NULL; act the ReLU when relu.  The
 * AVX2 kernel (6x16 tiles, no packing, the bias and ReLU fused into the
 * store) of the conv networks' forward GEMMs (core/conv.c).  Returns 1, or
 * 0 having done nothing where it does not run (no AVX2, K < 1): the caller
 * then takes nf_gemm and its own epilogue.  Sums in k order with FMAs:
 * results differ from sgemm's in the last bits (tests/core/test_conv.c
 * compares it with plain loops). */
int nf_gemm_bias_act(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float *C, int ldc, const float *bias, int relu);
/* C (M,N) = A W^T (+ C when acc): a dense layer's product x W^T with W
 * (N,K) packed once (nf_flow_pack: a served model's weights) into panels of
 * 16 columns of W^T: panel p holds W^T[k][16p..16p+15] for k = 0..K-1,
 * 16 floats per k, contiguous, the last panel padded with zeros
 * (nf_pack_panels; nf_packed_floats(N, K) in all).  Contiguous panels keep a
 * strip in L1; W^T with a leading dimension of 128 floats maps a strip's
 * rows onto an eighth of L1's sets, and a 32-row product ran 10% slower on
 * one thread than on the other.  The same 6x16 kernel as nf_gemm_bias_act:
 * nothing packed per call (OpenBLAS packs both operands on every call: a
 * third of a 32-row 128x128 product's time), sums in k order.  Returns 1,
 * or 0 having done nothing where it does not run (no AVX2, K < 1): the
 * caller then takes nf_gemm with W. */
int nf_gemm_packed(int M, int N, int K, const float *A, int lda, const float *WT, float *C,
                   int ldc, int acc);
size_t nf_packed_floats(int N, int K);
/* WT = W (N,K) row-major with leading dimension ldw, in panels */
void nf_pack_panels(int N, int K, const float *W, int ldw, float *WT);
/* C (M,N) = A W^T (+ C when acc) for a narrow product (1 <= N < 8: the
 * last layer of a 2-D coupling's net, scale and shift of one coordinate),
 * W (N,K) row-major as stored, K >= 8: four rows of A against one or two of
 * W, dot products along k.  OpenBLAS packs both operands for these and, in
 * its pthread build, takes a lock per call that two threads scoring at
 * once contend for.  Returns 1, or 0 having done nothing (no AVX2, N or K
 * out of range). */
int nf_gemm_nt_small(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                     float *C, int ldc, int acc);
/* 1 where nf_gemm_bias_act beats OpenBLAS + a bias pass: AVX2 here, and
 * OpenBLAS running AVX2 kernels (with its AVX-512 kernels, as its own
 * detection picks on AVX-512 machines unless OPENBLAS_CORETYPE says
 * otherwise, OpenBLAS is faster: measured on W4, bench/README.md). */
int nf_kern_fused_gemm_wins(void);
/* 1 if nf_gemv_rows runs the AVX2 kernel on this machine */
int nf_kern_avx2(void);
#endif

#endif
