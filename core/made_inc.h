/* made_inc.h: incremental MADE evaluation for autoregressive inversion
 * (core/net.c), and the naive D-pass inverters kept as test references.
 *
 * Inverting y = f(u) where f's parameters for input i come from a MADE needs
 * the MADE outputs of degree j once the inputs of degree < j are known.  The
 * naive way runs the whole MADE D times.  A hidden unit of degree m depends
 * only on inputs of degree <= m, so it is final as soon as those are known:
 *
 *     nf_made_inc st;
 *     nf_made_inc_begin(&st, net, params, ctx, B, ws);   ctx: degree 0
 *     for (j = 1; j <= D; j++) {
 *         i = nf_made_inc_input(&st, j);                 input of degree j
 *         nf_made_inc_outputs(&st, j, out);              out (B,P) = outputs
 *                                                        i*P..i*P+P-1
 *         ... compute u[:, i] from out ...
 *         nf_made_inc_feed(&st, j, u + i, D);            finalise degree j
 *     }
 *
 * Every weight is used once over the D steps: the cost of one forward pass.
 * ws holds nf_made_inc_ws_size(net, B) nf_reals; nothing is allocated.
 * (To move into nf_internal.h once that file is open for edits.) */
#ifndef NF_MADE_INC_H
#define NF_MADE_INC_H

#include "nf_internal.h"

typedef struct nf_made_inc {
    const nf_net *n;
    const nf_real *params;
    int B;
    int lo, span;          /* hidden unit k has degree lo + k % span */
    nf_real *x0;           /* (B, in+ctx) [inputs | context]; unknown inputs 0 */
    nf_real *h[16];        /* (B, h_l) post-activations; units not yet final 0 */
    nf_real *tmp;          /* (B, max units of one degree in one layer) */
    int *index;            /* (D) index[j-1] = the input of degree j */
} nf_made_inc;

size_t nf_made_inc_ws_size(const nf_net *n, int B);
/* n must be a MADE.  ctx (B,ctx) or NULL; finalises every degree-0 unit. */
void nf_made_inc_begin(nf_made_inc *s, const nf_net *n, const nf_real *params,
                       const nf_real *ctx, int B, nf_real *ws);
static inline int nf_made_inc_input(const nf_made_inc *s, int j) { return s->index[j - 1]; }
/* out (B,P): the P outputs of the input of degree j; valid once every input of
 * degree < j has been fed. */
void nf_made_inc_outputs(const nf_made_inc *s, int j, nf_real *out);
/* Feed the input of degree j, x[b*incx] for row b, and finalise every hidden
 * unit of degree j in every layer. */
void nf_made_inc_feed(nf_made_inc *s, int j, const nf_real *x, int incx);

/* Naive references (D full MADE passes), for tests:
 *   MAF/IAF: u = F^-1(y), logdet (B) -= sum_i s_i(u)  (MAF forward, IAF inverse)
 *   spline_ar: forward (sampling) x = g^-1(z), logdet += log|dx/dz| */
void nf_ar_solve_naive(const nf_layer *L, nf_ctx *c, const nf_real *y, nf_real *u,
                       nf_real *logdet);
int nf_spline_ar_forward_naive(const nf_layer *L, nf_ctx *c, const nf_real *z, nf_real *x,
                               nf_real *logdet);

#endif
