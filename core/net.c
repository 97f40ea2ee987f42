/* net.c: conditioner networks (MLP, residual MLP, MADE) with hand-written
 * backward passes.  Every dense product goes through nf_gemm (cblas); bias
 * and activation are fused into one pass over the GEMM output.
 *
 * Layout of the scratch ws for a batch of B rows:
 *   [activations written by forward, read by backward][gradient scratch]
 * mlp/made: for each hidden layer l: pre_l (B,h_l) then post_l (B,h_l);
 *           gradient scratch 2 x (B,maxw).
 * resnet:   s_0 (B,H); per block b: a_b = act(s_b), u_b, au_b = act(u_b),
 *           s_{b+1}; then af = act(s_nb); gradient scratch 3 x (B,maxw).
 *
 * MADE (Germain et al. 2015): input i has degree deg(i) in 1..D, hidden unit
 * k of layer l a degree m_l(k) in [lo, D-1]; weight masks keep hidden
 * connections with m_l(k) >= m_{l-1}(j) and output connections with
 * deg(i) > m_L(k), so output i depends only on inputs of lower degree.
 * Context columns have degree 0 and feed every unit of the first layer. */
#include "alloc.h"
#include "nf_internal.h"
#include "made_inc.h"
#include "kern.h"

#include <limits.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const act_names[NF_ACT_COUNT] = {"relu", "tanh", "elu"};
static const char *const order_names[NF_ORDER_COUNT] = {"asc", "desc", "random"};
_Static_assert(sizeof act_names / sizeof act_names[0] == NF_ACT_COUNT, "act names");
_Static_assert(sizeof order_names / sizeof order_names[0] == NF_ORDER_COUNT, "order names");

int nf_act_parse(const char *s, nf_act *out) {
    for (int i = 0; s && i < NF_ACT_COUNT; i++)
        if (!strcmp(s, act_names[i])) {
            *out = (nf_act)i;
            return 0;
        }
    return NF_EINVAL;
}
const char *nf_act_name(nf_act a) { return a < NF_ACT_COUNT ? act_names[a] : "?"; }

/* ---- construction ---------------------------------------------------------- */
/* A conditioner holds at most this many parameters (512 MiB of float32), checked
 * before any allocation: widths come from user specs (hidden <= 65536, dim
 * <= 65536) and a product of two of them would otherwise be allocated. */
#define NF_NET_MAX_PARAMS ((size_t)1 << 27)

static void add_linear(nf_net *n, int in, int out) {
    nf_linear *l = &n->lin[n->nlin++];
    l->in = in;
    l->out = out;
    l->w_off = n->nparams;
    l->b_off = n->nparams + (size_t)in * out;
    l->mask = NULL;
    n->nparams += (size_t)in * out + out;
}

static int max_width(const nf_net *n) {
    int m = n->out;
    for (int i = 0; i < n->nlin; i++) m = n->lin[i].out > m ? n->lin[i].out : m;
    return m;
}

static void finish_ws(nf_net *n) {
    size_t act = 0;
    if (n->kind == NF_NET_RESNET)
        act = (size_t)n->hidden[0] * (2 + 4 * (size_t)n->nblocks);
    else
        for (int i = 0; i < n->nhidden; i++) act += 2 * (size_t)n->hidden[i];
    n->ws_per_row = act + 3 * (size_t)max_width(n);
}

int nf_net_mlp(nf_net *n, int in, int ctx, int out, const int *hidden, int nh, nf_act act) {
    memset(n, 0, sizeof *n);
    if (in < 0 || ctx < 0 || out < 1 || nh < 1 || nh > 16 || in + ctx < 1) return NF_EINVAL;
    n->kind = NF_NET_MLP;
    n->act = act;
    n->in = in;
    n->ctx = ctx;
    n->out = out;
    n->nhidden = nh;
    int prev = in + ctx;
    for (int i = 0; i < nh; i++) {
        if (hidden[i] < 1) return NF_EINVAL;
        n->hidden[i] = hidden[i];
        add_linear(n, prev, hidden[i]);
        prev = hidden[i];
    }
    add_linear(n, prev, out);
    if (n->nparams > NF_NET_MAX_PARAMS) return NF_ERANGE;
    finish_ws(n);
    return 0;
}

int nf_net_resnet(nf_net *n, int in, int ctx, int out, int hidden, int nblocks, nf_act act) {
    memset(n, 0, sizeof *n);
    if (in < 0 || ctx < 0 || out < 1 || hidden < 1 || nblocks < 1 || nblocks > 16 ||
        in + ctx < 1)
        return NF_EINVAL;
    n->kind = NF_NET_RESNET;
    n->act = act;
    n->in = in;
    n->ctx = ctx;
    n->out = out;
    n->nhidden = 1;
    n->hidden[0] = hidden;
    n->nblocks = nblocks;
    add_linear(n, in + ctx, hidden);
    for (int b = 0; b < nblocks; b++) {
        add_linear(n, hidden, hidden);
        add_linear(n, hidden, hidden);
    }
    add_linear(n, hidden, out);
    if (n->nparams > NF_NET_MAX_PARAMS) return NF_ERANGE;
    finish_ws(n);
    return 0;
}

/* ---- MADE masks as staircases (nf_stair, nf_internal.h) ---------------------------- */
int nf_stair_tile = NF_STAIR_TILE;

static void stair_free(nf_stair *st) {
    if (!st) return;
    nf_free(st->cs);
    nf_free(st->len);
    nf_free(st->ts);
    nf_free(st->tlen);
    nf_free(st);
}

/* The staircase of a layer whose row k keeps the columns j < ncols with
 * coldeg[j] <= theta[k].  NULL (no error) when the columns fall into more
 * than 8 runs or the tiles would save less than a fifth of the dense
 * products; *oom set when an allocation failed. */
static nf_stair *stair_build(const int *coldeg, int ncols, const int *theta, int nrows, int *oom) {
    int nruns = ncols > 0 ? 1 : 0;
    for (int j = 1; j < ncols; j++) nruns += coldeg[j] < coldeg[j - 1];
    if (nruns < 1 || nruns > 8 || nrows < 2) return NULL;
    int T = nf_stair_tile > 0 ? nf_stair_tile : NF_STAIR_TILE, maxtiles = nrows;
    nf_stair *st = nf_calloc(1, sizeof *st);
    if (st) {
        st->nruns = nruns;
        st->cs = nf_malloc((size_t)(nruns + 1) * sizeof *st->cs);
        st->len = nf_malloc((size_t)nrows * nruns * sizeof *st->len);
        st->ts = nf_malloc((size_t)(maxtiles + 1) * sizeof *st->ts);
        st->tlen = nf_malloc((size_t)maxtiles * nruns * sizeof *st->tlen);
    }
    if (!st || !st->cs || !st->len || !st->ts || !st->tlen) {
        stair_free(st);
        *oom = 1;
        return NULL;
    }
    for (int j = 0, r = 0; j < ncols; j++)
        if (j == 0 || coldeg[j] < coldeg[j - 1]) st->cs[r++] = j;
    st->cs[nruns] = ncols;
    for (int k = 0; k < nrows; k++)
        for (int r = 0; r < nruns; r++) {
            int a = st->cs[r], b = st->cs[r + 1]; /* first column of degree > theta */
            while (a < b) {
                int m = a + (b - a) / 2;
                if (coldeg[m] <= theta[k]) a = m + 1;
                else b = m;
            }
            st->len[(size_t)k * nruns + r] = a - st->cs[r];
        }
    /* tiles: at most T rows; an ascending tile also ends where theta falls
     * back (hidden degrees cycle: lo..D-1, lo..), so the next run of rows
     * does not inherit its long prefixes */
    int nt = 0;
    double dense = (double)nrows * ncols, cost = 0;
    for (int k = 0; k < nrows;) {
        int e = k + 1;
        while (e < nrows && e - k < T && !(theta[e] < theta[e - 1] && theta[e - 1] > theta[k]))
            e++;
        st->ts[nt] = k;
        for (int r = 0; r < nruns; r++) {
            int m = 0;
            for (int q = k; q < e; q++) {
                int l = st->len[(size_t)q * nruns + r];
                m = l > m ? l : m;
            }
            st->tlen[(size_t)nt * nruns + r] = m;
            cost += (double)(e - k) * m;
        }
        nt++;
        k = e;
    }
    st->ts[nt] = nrows;
    st->ntiles = nt;
    if (cost > 0.8 * dense) {
        stair_free(st);
        return NULL;
    }
    return st;
}

/* Y (B, out) (ldy) = X[:, :ncols] W^T over the staircase, X (B, ldx), W (out, ldw) */
static void stair_forward(const nf_stair *st, int B, const nf_real *X, int ldx, const nf_real *W,
                          int ldw, nf_real *Y, int ldy) {
    for (int t = 0; t < st->ntiles; t++) {
        int r0 = st->ts[t], rows = st->ts[t + 1] - r0, first = 1;
        for (int r = 0; r < st->nruns; r++) {
            int c0 = st->cs[r], k = st->tlen[(size_t)t * st->nruns + r];
            if (!k) continue;
            nf_gemm(0, 1, B, rows, k, 1, X + c0, ldx, W + (size_t)r0 * ldw + c0, ldw,
                    first ? 0 : 1, Y + r0, ldy);
            first = 0;
        }
        if (first) /* no row of the tile sees any column */
            for (int b = 0; b < B; b++) memset(Y + (size_t)b * ldy + r0, 0, (size_t)rows * sizeof *Y);
    }
}

/* gW (out, ldw) += dY^T X over tiles [t0, t1) of the staircase, masked
 * entries re-zeroed if rezero (the last of several sums into gW) */
static void stair_wgrad(const nf_stair *st, int t0, int t1, int B, const nf_real *dY, int ldy,
                        const nf_real *X, int ldx, nf_real *gW, int ldw, int rezero) {
    for (int t = t0; t < t1; t++) {
        int r0 = st->ts[t], rows = st->ts[t + 1] - r0;
        for (int r = 0; r < st->nruns; r++) {
            int c0 = st->cs[r], k = st->tlen[(size_t)t * st->nruns + r];
            if (!k) continue;
            nf_real *g = gW + (size_t)r0 * ldw + c0;
            nf_gemm(1, 0, rows, k, B, 1, dY + r0, ldy, X + c0, ldx, 1, g, ldw);
            for (int q = 0; q < rows && rezero; q++) {
                int l = st->len[(size_t)(r0 + q) * st->nruns + r];
                if (l < k) memset(g + (size_t)q * ldw + l, 0, (size_t)(k - l) * sizeof *g);
            }
        }
    }
}

/* gW (out, ldw) += dY^T X over the staircase when gW is given;
 * dX[:, :ncols] (ldx) = dY W when dX is given (written, not accumulated). */
static void stair_backward(const nf_stair *st, int B, const nf_real *dY, int ldy,
                           const nf_real *X, int ldx, const nf_real *W, int ldw, nf_real *gW,
                           nf_real *dX, int ldxd) {
    int ncols = st->cs[st->nruns];
    if (gW) stair_wgrad(st, 0, st->ntiles, B, dY, ldy, X, ldx, gW, ldw, 1);
    if (!dX) return;
    for (int b = 0; b < B; b++) memset(dX + (size_t)b * ldxd, 0, (size_t)ncols * sizeof *dX);
    for (int t = 0; t < st->ntiles; t++) {
        int r0 = st->ts[t], rows = st->ts[t + 1] - r0;
        for (int r = 0; r < st->nruns; r++) {
            int c0 = st->cs[r], k = st->tlen[(size_t)t * st->nruns + r];
            if (k)
                nf_gemm(0, 0, B, k, rows, 1, dY + r0, ldy, W + (size_t)r0 * ldw + c0, ldw, 1,
                        dX + c0, ldxd);
        }
    }
}

/* the tiles [*t0, *t1) of thread t of np: contiguous, about equal work */
static void stair_split(const nf_stair *st, int t, int np, int *t0, int *t1) {
    double total = 0, acc = 0;
    for (int i = 0; i < st->ntiles; i++)
        for (int r = 0; r < st->nruns; r++)
            total += (double)(st->ts[i + 1] - st->ts[i]) * st->tlen[(size_t)i * st->nruns + r];
    *t0 = *t1 = st->ntiles;
    int first = 1;
    for (int i = 0; i < st->ntiles; i++) {
        double c = 0;
        for (int r = 0; r < st->nruns; r++)
            c += (double)(st->ts[i + 1] - st->ts[i]) * st->tlen[(size_t)i * st->nruns + r];
        int owner = total > 0 ? (int)((acc + c / 2) * np / total) : i * np / st->ntiles;
        if (owner >= np) owner = np - 1;
        acc += c;
        if (owner == t && first) *t0 = i, first = 0;
        if (owner > t) {
            *t1 = i;
            if (first) *t0 = i;
            return;
        }
    }
}

/* zero every weight outside the staircase (columns [0, ncols) only) */
static void stair_constrain(const nf_stair *st, int out, nf_real *W, int ldw) {
    for (int k = 0; k < out; k++)
        for (int r = 0; r < st->nruns; r++) {
            int a = st->cs[r] + st->len[(size_t)k * st->nruns + r], b = st->cs[r + 1];
            if (a < b) memset(W + (size_t)k * ldw + a, 0, (size_t)(b - a) * sizeof *W);
        }
}

int nf_net_made(nf_net *n, int D, int ctx, int P, const int *hidden, int nh, nf_act act,
                nf_order order, uint64_t seed) {
    if (D < 1 || P < 1 || D > INT_MAX / P) return NF_ERANGE;
    int rc = nf_net_mlp(n, D, ctx, D * P, hidden, nh, act);
    if (rc) return rc;
    n->kind = NF_NET_MADE;
    n->order = order;
    n->order_seed = seed;
    n->degrees = nf_malloc((size_t)D * sizeof *n->degrees);
    int maxh = 0;
    for (int i = 0; i < nh; i++) maxh = hidden[i] > maxh ? hidden[i] : maxh;
    int *prevdeg = nf_malloc((size_t)(D + ctx + maxh) * sizeof(int));
    int *theta = nf_malloc((size_t)(D * P > maxh ? D * P : maxh) * sizeof(int));
    int oom = 0;
    if (!n->degrees || !prevdeg || !theta) goto oom;
    for (int i = 0; i < D; i++)
        n->degrees[i] = order == NF_ORDER_DESC ? D - i : i + 1;
    if (order == NF_ORDER_RANDOM) { /* Fisher-Yates on 1..D */
        nf_rng r;
        nf_rng_seed(&r, seed);
        for (int i = D - 1; i > 0; i--) {
            int j = (int)(nf_rng_u64(&r) % (uint64_t)(i + 1));
            int t = n->degrees[i];
            n->degrees[i] = n->degrees[j];
            n->degrees[j] = t;
        }
    }
    int lo = D;
    for (int i = 0; i < D; i++) prevdeg[i] = n->degrees[i];
    for (int j = 0; j < ctx; j++) prevdeg[D + j] = 0;
    for (int l = 0; l <= nh; l++) {
        nf_linear *L = &n->lin[l];
        /* row k keeps the columns j with prevdeg[j] <= theta[k]: a hidden
         * unit sees degrees up to its own, output (i,p) degrees below deg(i);
         * context columns (degree 0) feed every unit */
        if (l < nh) {
            /* hidden degrees cycle through [lo, D-1]; lo = min previous degree
             * (capped at D-1) so every unit can see something valid */
            int minprev = D;
            for (int j = 0; j < D && l == 0; j++) minprev = prevdeg[j] < minprev ? prevdeg[j] : minprev;
            if (l > 0) minprev = lo;
            lo = minprev < D - 1 ? minprev : D - 1;
            int span = D - lo;
            for (int k = 0; k < L->out; k++) theta[k] = lo + k % span; /* the units' degrees */
        } else {
            for (int o = 0; o < L->out; o++) theta[o] = n->degrees[o / P] - 1;
        }
        /* the staircase when it pays (context columns stay outside it), else
         * a byte mask: never both, so building a big MADE does not touch
         * (in x out) bytes it then frees */
        L->stair = stair_build(prevdeg, l == 0 ? D : L->in, theta, L->out, &oom);
        if (oom) goto oom;
        if (!L->stair) {
            L->mask = nf_malloc((size_t)L->in * L->out * sizeof *L->mask);
            if (!L->mask) goto oom;
            for (int k = 0; k < L->out; k++)
                for (int j = 0; j < L->in; j++)
                    L->mask[(size_t)k * L->in + j] = prevdeg[j] <= theta[k] ? 1 : 0;
        }
        if (l < nh) {
            for (int k = 0; k < L->out; k++) prevdeg[k] = theta[k];
            int mn = D;
            for (int k = 0; k < L->out; k++) mn = theta[k] < mn ? theta[k] : mn;
            lo = mn;
        }
    }
    nf_free(prevdeg);
    nf_free(theta);
    return 0;
oom:
    nf_free(prevdeg);
    nf_free(theta);
    nf_net_free(n);
    return NF_ENOMEM;
}

void nf_net_free(nf_net *n) {
    if (!n) return;
    for (int i = 0; i < n->nlin; i++) {
        nf_free(n->lin[i].mask);
        stair_free(n->lin[i].stair);
    }
    nf_free(n->degrees);
    memset(n, 0, sizeof *n);
}

void nf_net_constrain(const nf_net *n, nf_real *params) {
    for (int l = 0; l < n->nlin; l++) {
        const nf_linear *L = &n->lin[l];
        if (L->stair) stair_constrain(L->stair, L->out, params + L->w_off, L->in);
        if (!L->mask) continue;
        nf_real *W = params + L->w_off;
        for (size_t i = 0; i < (size_t)L->in * L->out; i++)
            if (!L->mask[i]) W[i] = 0;
    }
}

/* PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and
 * b; the final layer is zero so the conditioner starts at output 0. */
void nf_net_init(const nf_net *n, nf_real *params, nf_rng *rng) {
    for (int l = 0; l < n->nlin; l++) {
        const nf_linear *L = &n->lin[l];
        size_t nw = (size_t)L->in * L->out;
        int last = l == n->nlin - 1;
        double bound = 1.0 / sqrt((double)L->in);
        for (size_t i = 0; i < nw; i++)
            params[L->w_off + i] = last ? 0 : (nf_real)((2 * nf_rng_uniform(rng) - 1) * bound);
        for (int i = 0; i < L->out; i++)
            params[L->b_off + i] = last ? 0 : (nf_real)((2 * nf_rng_uniform(rng) - 1) * bound);
    }
    nf_net_constrain(n, params);
}

size_t nf_net_ws_size(const nf_net *n, int B) { return n->ws_per_row * (size_t)B; }

/* ---- forward ------------------------------------------------------------------ */
/* y = act(x + b) over (B,H), keeping pre (= x + b) in place; both arrays may
 * be NULL-distinct. */
NF_VEC static void bias_act(nf_act act, nf_real *pre, nf_real *post, const nf_real *b, int B, int H) {
    for (int r = 0; r < B; r++) {
        nf_real *p = pre + (size_t)r * H, *q = post + (size_t)r * H;
        switch (act) {
        case NF_ACT_RELU:
            for (int j = 0; j < H; j++) {
                nf_real v = p[j] + b[j];
                p[j] = v;
                q[j] = v > 0 ? v : 0;
            }
            break;
        case NF_ACT_TANH:
            for (int j = 0; j < H; j++) {
                nf_real v = p[j] + b[j];
                p[j] = v;
                q[j] = (nf_real)tanh(v);
            }
            break;
        default: /* ELU, alpha = 1 */
            for (int j = 0; j < H; j++) {
                nf_real v = p[j] + b[j];
                p[j] = v;
                q[j] = v > 0 ? v : (nf_real)expm1(v);
            }
            break;
        }
    }
}

/* post = act(pre) without bias (resnet pre-activations) */
NF_VEC static void act_only(nf_act act, const nf_real *pre, nf_real *post, size_t n) {
    for (size_t i = 0; i < n; i++) {
        nf_real v = pre[i];
        post[i] = act == NF_ACT_RELU ? (v > 0 ? v : 0)
                  : act == NF_ACT_TANH ? (nf_real)tanh(v)
                                       : (v > 0 ? v : (nf_real)expm1(v));
    }
}

/* d *= act'(pre) using pre and post = act(pre). */
NF_VEC static void act_grad(nf_act act, const nf_real *pre, const nf_real *post, nf_real *d, size_t n) {
    switch (act) {
    case NF_ACT_RELU:
        for (size_t i = 0; i < n; i++) d[i] = pre[i] > 0 ? d[i] : 0;
        break;
    case NF_ACT_TANH:
        for (size_t i = 0; i < n; i++) d[i] *= 1 - post[i] * post[i];
        break;
    default:
        for (size_t i = 0; i < n; i++) d[i] *= pre[i] > 0 ? 1 : post[i] + 1;
        break;
    }
}

NF_VEC static void add_bias(nf_real *y, const nf_real *b, int B, int H) {
    for (int r = 0; r < B; r++)
        for (int j = 0; j < H; j++) y[(size_t)r * H + j] += b[j];
}

/* y = x + b over (B,H) (x NULL: y = b in every row).  A product then added
 * onto y (acc) gives fl(xW^T + b) as adding b after it would: one pass over y
 * fewer, and no zeroing of y inside OpenBLAS (beta 0). */
NF_VEC static void set_bias(nf_real *y, const nf_real *x, const nf_real *b, int B, int H) {
    for (int r = 0; r < B; r++) {
        nf_real *q = y + (size_t)r * H;
        if (x)
            for (int j = 0; j < H; j++) q[j] = x[(size_t)r * H + j] + b[j];
        else
            memcpy(q, b, (size_t)H * sizeof *q);
    }
}

/* y (B,out) = x W^T (+ y when acc) for a dense layer (no staircase; a
 * byte-masked layer's weights are zero where masked) whose weights read x
 * whole (ldw = in): the packed product when the flow is packed (wt) and
 * this layer is in the pack, the narrow kernel for < 8 outputs, else
 * nf_gemm.  One row keeps nf_gemm's GEMV, which streams W once. */
static void dense(const nf_linear *L, const nf_real *params, const nf_real *wt, int B,
                  const nf_real *x, nf_real *y, int acc) {
#ifndef NF_DOUBLE
    if (wt && B > 1 && L->wt_off != NF_NO_PACK &&
        nf_gemm_packed(B, L->out, L->in, x, L->in, wt + L->wt_off, y, L->out, acc))
        return;
    if (B > 1 && L->out < 8 &&
        nf_gemm_nt_small(B, L->out, L->in, x, L->in, params + L->w_off, L->in, y, L->out, acc))
        return;
#else
    (void)wt;
#endif
    nf_gemm(0, 1, B, L->out, L->in, 1, x, L->in, params + L->w_off, L->in, acc, y, L->out);
}

/* y (B,out) = [in, ctx] W^T for the first linear layer (two GEMMs over the
 * column blocks of W so the input is never copied; packed, one block each). */
static void first_linear(const nf_net *n, const nf_linear *L, const nf_real *params,
                         const nf_real *wt, const nf_real *in, const nf_real *ctx, nf_real *y,
                         int B, int acc) {
    const nf_real *W = params + L->w_off;
    int ld = n->in + n->ctx;
#ifndef NF_DOUBLE
    if (wt && B > 1 && L->wt_off != NF_NO_PACK) {
        const nf_real *T = wt + L->wt_off;
        int done = n->in == 0 || nf_gemm_packed(B, L->out, n->in, in, n->in, T, y, L->out, acc);
        if (done && n->ctx > 0)
            done = nf_gemm_packed(B, L->out, n->ctx, ctx, n->ctx,
                                  T + (n->in > 0 ? nf_packed_floats(L->out, n->in) : 0), y,
                                  L->out, n->in > 0 || acc);
        if (done) return;
    }
#else
    (void)wt;
#endif
    if (n->in > 0 && L->stair)
        stair_forward(L->stair, B, in, n->in, W, ld, y, L->out); /* never acc (MLPs only) */
    else if (n->in > 0)
        nf_gemm(0, 1, B, L->out, n->in, 1, in, n->in, W, ld, acc, y, L->out);
    if (n->ctx > 0)
        nf_gemm(0, 1, B, L->out, n->ctx, 1, ctx, n->ctx, W + n->in, ld, n->in > 0 || acc, y,
                L->out);
}

void nf_net_forward(const nf_net *n, const nf_real *params, const nf_real *in,
                    const nf_real *ctx, nf_real *out, int B, nf_real *ws, const nf_real *wt) {
    if (n->kind != NF_NET_RESNET) {
        const nf_real *x = NULL;
        nf_real *p = ws;
        for (int l = 0; l < n->nlin; l++) {
            const nf_linear *L = &n->lin[l];
            int last = l == n->nlin - 1;
            nf_real *pre = last ? out : p, *post = p + (size_t)B * L->out;
            if (l == 0)
                first_linear(n, L, params, wt, in, ctx, pre, B, 0);
            else if (L->stair)
                stair_forward(L->stair, B, x, L->in, params + L->w_off, L->in, pre, L->out);
            else
                dense(L, params, wt, B, x, pre, 0);
            if (last) {
                add_bias(out, params + L->b_off, B, L->out);
            } else {
                bias_act(n->act, pre, post, params + L->b_off, B, L->out);
                x = post;
                p = post + (size_t)B * L->out;
            }
        }
        return;
    }
    int H = n->hidden[0];
    size_t BH = (size_t)B * H;
    nf_real *s = ws;
    set_bias(s, NULL, params + n->lin[0].b_off, B, H);
    first_linear(n, &n->lin[0], params, wt, in, ctx, s, B, 1);
    for (int b = 0; b < n->nblocks; b++) {
        const nf_linear *L1 = &n->lin[1 + 2 * b], *L2 = &n->lin[2 + 2 * b];
        nf_real *a = s + BH, *u = a + BH, *au = u + BH, *s2 = au + BH;
        act_only(n->act, s, a, BH);
        dense(L1, params, wt, B, a, u, 0);
        bias_act(n->act, u, au, params + L1->b_off, B, H);
        /* s2 = (s + b2) + au W2^T */
        set_bias(s2, s, params + L2->b_off, B, H);
        dense(L2, params, wt, B, au, s2, 1);
        s = s2;
    }
    const nf_linear *Lf = &n->lin[n->nlin - 1];
    nf_real *af = s + BH;
    act_only(n->act, s, af, BH);
    set_bias(out, NULL, params + Lf->b_off, B, n->out);
    dense(Lf, params, wt, B, af, out, 1);
}

#ifndef NF_DOUBLE
/* The first layer's input and context columns are packed apart (a block
 * each, the context's after the input's), as first_linear multiplies them. */
size_t nf_net_pack_layout(nf_net *n) {
    size_t total = 0;
    for (int l = 0; l < n->nlin; l++) {
        nf_linear *L = &n->lin[l];
        L->wt_off = NF_NO_PACK;
        if (L->stair || L->out < 8 || L->in > 1024) continue;
        L->wt_off = total;
        if (l == 0 && n->in > 0 && n->ctx > 0)
            total += nf_packed_floats(L->out, n->in) + nf_packed_floats(L->out, n->ctx);
        else
            total += nf_packed_floats(L->out, L->in);
    }
    return total;
}

void nf_net_pack(const nf_net *n, const nf_real *params, nf_real *wt) {
    for (int l = 0; l < n->nlin; l++) {
        const nf_linear *L = &n->lin[l];
        if (L->wt_off == NF_NO_PACK) continue;
        const nf_real *W = params + L->w_off;
        nf_real *T = wt + L->wt_off;
        if (l == 0 && n->in > 0 && n->ctx > 0) {
            nf_pack_panels(L->out, n->in, W, L->in, T);
            nf_pack_panels(L->out, n->ctx, W + n->in, L->in, T + nf_packed_floats(L->out, n->in));
        } else {
            nf_pack_panels(L->out, L->in, W, L->in, T);
        }
    }
}
#endif

/* ---- deferred weight gradients (nf_internal.h) ---------------------------------- */
_Thread_local nf_defer *nf_defer_cur;
size_t nf_defer_min = NF_DEFER_MIN;

void nf_defer_begin(nf_defer *d, const nf_real *grad_base) {
    d->grad_base = grad_base;
    d->aused = 0;
    d->n = 0;
    d->failed = 0;
    nf_defer_cur = d;
}

void nf_defer_free(nf_defer *d) {
    nf_free(d->arena);
    nf_free(d->items);
    memset(d, 0, sizeof *d);
}

/* Record grad W += dy^T [x | c], grad b += colsum(dy) for the current part
 * (x: B rows of nin, c: B rows of nctx, nin + nctx = L->in).  1 when
 * recorded, 0 when the caller computes it now. */
static int defer_push(const nf_linear *L, nf_real *grad, const nf_real *dy, const nf_real *x,
                      int nin, const nf_real *c, int nctx, int B) {
    nf_defer *d = nf_defer_cur;
    if (!d || B < 1) return 0;
    /* worth it where summing a copy of dW costs more than copying the rows */
    size_t wn = (size_t)L->in * L->out, need = (size_t)B * ((size_t)L->in + (size_t)L->out);
    if (nf_defer_min && (wn < nf_defer_min || wn < need)) return 0;
    if (d->n == d->icap) {
        int cap = d->icap ? 2 * d->icap : 16;
        nf_defer_item *it = nf_realloc(d->items, (size_t)cap * sizeof *it);
        if (!it) return d->failed = 1, 0;
        d->items = it;
        d->icap = cap;
    }
    if (d->aused + need > d->acap) {
        size_t cap = d->acap ? d->acap : (size_t)1 << 16;
        while (cap < d->aused + need) cap *= 2;
        nf_real *a = nf_realloc(d->arena, cap * sizeof *a);
        if (!a) return d->failed = 1, 0;
        d->arena = a;
        d->acap = cap;
    }
    nf_defer_item *it = &d->items[d->n++];
    it->L = L;
    it->w_goff = (size_t)(grad + L->w_off - d->grad_base);
    it->b_goff = (size_t)(grad + L->b_off - d->grad_base);
    it->B = B;
    it->dy = d->aused;
    it->x = d->aused + (size_t)B * L->out;
    d->aused += need;
    memcpy(d->arena + it->dy, dy, (size_t)B * L->out * sizeof *dy);
    nf_real *xr = d->arena + it->x;
    if (nctx == 0) {
        memcpy(xr, x, (size_t)B * nin * sizeof *x);
        return 1;
    }
    for (int r = 0; r < B; r++, xr += L->in) {
        if (nin) memcpy(xr, x + (size_t)r * nin, (size_t)nin * sizeof *x);
        memcpy(xr + nin, c + (size_t)r * nctx, (size_t)nctx * sizeof *c);
    }
    return 1;
}

NF_VEC static void colsum_rows(nf_real *restrict gb, const nf_real *restrict dy, int B, int ld,
                               int n) {
    for (int r = 0; r < B; r++)
        for (int j = 0; j < n; j++) gb[j] += dy[(size_t)r * ld + j];
}

void nf_defer_run(nf_defer *const *parts, int nparts, nf_real *grad, int t, int np) {
    for (int p = 0; p < nparts; p++) {
        const nf_defer *d = parts[p];
        for (int i = 0; i < d->n; i++) {
            const nf_defer_item *it = &d->items[i];
            const nf_linear *L = it->L;
            const nf_real *dy = d->arena + it->dy, *x = d->arena + it->x;
            /* the mask once per product: after its last record */
            int last = 1;
            for (int q = p; q < nparts && last; q++)
                for (int k = q == p ? i + 1 : 0; k < parts[q]->n && last; k++)
                    if (parts[q]->items[k].L == L && parts[q]->items[k].w_goff == it->w_goff)
                        last = 0;
            int o0, o1;
            if (L->stair) { /* its tiles; context columns (past the stair's) dense */
                const nf_stair *st = L->stair;
                int t0, t1, nc = st->cs[st->nruns];
                stair_split(st, t, np, &t0, &t1);
                o0 = st->ts[t0], o1 = st->ts[t1];
                if (o0 == o1) continue;
                stair_wgrad(st, t0, t1, it->B, dy, L->out, x, L->in, grad + it->w_goff, L->in,
                            last);
                if (nc < L->in)
                    nf_gemm(1, 0, o1 - o0, L->in - nc, it->B, 1, dy + o0, L->out, x + nc, L->in,
                            1, grad + it->w_goff + (size_t)o0 * L->in + nc, L->in);
            } else {
                o0 = (int)((int64_t)L->out * t / np), o1 = (int)((int64_t)L->out * (t + 1) / np);
                if (o0 == o1) continue;
                nf_gemm(1, 0, o1 - o0, L->in, it->B, 1, dy + o0, L->out, x, L->in, 1,
                        grad + it->w_goff + (size_t)o0 * L->in, L->in);
            }
            nf_real *gW = grad + it->w_goff + (size_t)o0 * L->in;
            colsum_rows(grad + it->b_goff + o0, dy + o0, it->B, L->out, o1 - o0);
            if (last && L->mask) {
                const uint8_t *m = L->mask + (size_t)o0 * L->in;
                for (size_t e = 0; e < (size_t)(o1 - o0) * L->in; e++)
                    if (!m[e]) gW[e] = 0;
            }
        }
    }
}

static int cmp_range(const void *a, const void *b) {
    const size_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

int nf_defer_ranges(nf_defer *const *parts, int nparts, size_t *r, int cap) {
    int n = 0;
    for (int p = 0; p < nparts; p++)
        for (int i = 0; i < parts[p]->n; i++) {
            const nf_defer_item *it = &parts[p]->items[i];
            if (2 * n + 4 > cap) return -1;
            r[2 * n] = it->w_goff;
            r[2 * n + 1] = it->w_goff + (size_t)it->L->in * it->L->out;
            r[2 * n + 2] = it->b_goff;
            r[2 * n + 3] = it->b_goff + (size_t)it->L->out;
            n += 2;
        }
    if (!n) return 0;
    qsort(r, (size_t)n, 2 * sizeof *r, cmp_range);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m && r[2 * i] <= r[2 * m - 1]) {
            if (r[2 * i + 1] > r[2 * m - 1]) r[2 * m - 1] = r[2 * i + 1];
        } else {
            r[2 * m] = r[2 * i];
            r[2 * m + 1] = r[2 * i + 1];
            m++;
        }
    }
    return m;
}

/* ---- backward ----------------------------------------------------------------- */
/* grad b += colsum(dy) */
NF_VEC static void linear_bias_grad(const nf_linear *L, nf_real *grad, const nf_real *dy, int B) {
    nf_real *gb = grad + L->b_off;
    for (int r = 0; r < B; r++)
        for (int j = 0; j < L->out; j++) gb[j] += dy[(size_t)r * L->out + j];
}

/* grad W += dy^T x, grad b += colsum(dy), then mask. */
static void linear_param_grad(const nf_linear *L, nf_real *grad, const nf_real *dy,
                              const nf_real *x, int B) {
    if (defer_push(L, grad, dy, x, L->in, NULL, 0, B)) return;
    nf_real *gW = grad + L->w_off;
    nf_gemm(1, 0, L->out, L->in, B, 1, dy, L->out, x, L->in, 1, gW, L->in);
    linear_bias_grad(L, grad, dy, B);
    if (L->mask)
        for (size_t i = 0; i < (size_t)L->in * L->out; i++)
            if (!L->mask[i]) gW[i] = 0;
}

/* The first layer: param grads split over the [in | ctx] column blocks, din
 * written, dctx accumulated. */
static void first_linear_backward(const nf_net *n, const nf_linear *L, const nf_real *params,
                                  nf_real *grad, const nf_real *in, const nf_real *ctx,
                                  const nf_real *dy, nf_real *din, nf_real *dctx, int B) {
    int ld = n->in + n->ctx;
    const nf_real *W = params + L->w_off;
    if (grad && defer_push(L, grad, dy, in, n->in, ctx, n->ctx, B)) grad = NULL;
    if (L->stair && n->in > 0) { /* stairs: dW and din together, tile by tile */
        stair_backward(L->stair, B, dy, L->out, in, n->in, W, ld, grad ? grad + L->w_off : NULL,
                       din, n->in);
        din = NULL;
    }
    if (grad) {
        nf_real *gW = grad + L->w_off, *gb = grad + L->b_off;
        if (n->in > 0 && !L->stair)
            nf_gemm(1, 0, L->out, n->in, B, 1, dy, L->out, in, n->in, 1, gW, ld);
        if (n->ctx > 0)
            nf_gemm(1, 0, L->out, n->ctx, B, 1, dy, L->out, ctx, n->ctx, 1, gW + n->in, ld);
        for (int r = 0; r < B; r++)
            for (int j = 0; j < L->out; j++) gb[j] += dy[(size_t)r * L->out + j];
        if (L->mask)
            for (size_t i = 0; i < (size_t)L->in * L->out; i++)
                if (!L->mask[i]) gW[i] = 0;
    }
    if (din && n->in > 0) nf_gemm(0, 0, B, n->in, L->out, 1, dy, L->out, W, ld, 0, din, n->in);
    if (dctx && n->ctx > 0)
        nf_gemm(0, 0, B, n->ctx, L->out, 1, dy, L->out, W + n->in, ld, 1, dctx, n->ctx);
}

void nf_net_backward(const nf_net *n, const nf_real *params, nf_real *grad,
                     const nf_real *in, const nf_real *ctx, const nf_real *dout,
                     nf_real *din, nf_real *dctx, int B, nf_real *ws) {
    size_t maxw = (size_t)max_width(n);
    nf_real *scratch = ws + (n->ws_per_row - 3 * maxw) * (size_t)B;
    nf_real *g0 = scratch, *g1 = scratch + maxw * B, *g2 = g1 + maxw * B;
    if (n->kind != NF_NET_RESNET) {
        /* locate pre_l/post_l of each hidden layer */
        const nf_real *pre[17], *post[17];
        nf_real *p = ws;
        for (int l = 0; l < n->nhidden; l++) {
            pre[l] = p;
            post[l] = p + (size_t)B * n->hidden[l];
            p += 2 * (size_t)B * n->hidden[l];
        }
        const nf_real *dy = dout;
        for (int l = n->nlin - 1; l >= 0; l--) {
            const nf_linear *L = &n->lin[l];
            if (l == 0) {
                first_linear_backward(n, L, params, grad, in, ctx, dy, din, dctx, B);
                break;
            }
            nf_real *dx = dy == g0 ? g1 : g0;
            if (L->stair) {
                nf_real *g = grad && !defer_push(L, grad, dy, post[l - 1], L->in, NULL, 0, B)
                                 ? grad : NULL;
                stair_backward(L->stair, B, dy, L->out, post[l - 1], L->in, params + L->w_off,
                               L->in, g ? g + L->w_off : NULL, dx, L->in);
                if (g) linear_bias_grad(L, g, dy, B);
            } else {
                if (grad) linear_param_grad(L, grad, dy, post[l - 1], B);
                nf_gemm(0, 0, B, L->in, L->out, 1, dy, L->out, params + L->w_off, L->in, 0, dx,
                        L->in);
            }
            act_grad(n->act, pre[l - 1], post[l - 1], dx, (size_t)B * L->in);
            dy = dx;
        }
        return;
    }
    int H = n->hidden[0];
    size_t BH = (size_t)B * H;
    /* stream tensors: s_0 at ws, block b occupies 4 BH starting at ws + BH + 4b BH */
    const nf_real *s_last = ws + 4 * BH * n->nblocks, *af = s_last + BH;
    const nf_linear *Lf = &n->lin[n->nlin - 1];
    nf_real *ds = g0, *du = g1, *da = g2;
    if (grad) linear_param_grad(Lf, grad, dout, af, B);
    nf_gemm(0, 0, B, H, n->out, 1, dout, n->out, params + Lf->w_off, H, 0, ds, H);
    act_grad(n->act, s_last, af, ds, BH);
    for (int b = n->nblocks - 1; b >= 0; b--) {
        const nf_linear *L1 = &n->lin[1 + 2 * b], *L2 = &n->lin[2 + 2 * b];
        const nf_real *s = ws + 4 * BH * b, *a = s + BH, *u = a + BH, *au = u + BH;
        /* s' = s + W2 act(W1 act(s) + b1) + b2 */
        if (grad) linear_param_grad(L2, grad, ds, au, B);
        nf_gemm(0, 0, B, H, H, 1, ds, H, params + L2->w_off, H, 0, du, H);
        act_grad(n->act, u, au, du, BH);
        if (grad) linear_param_grad(L1, grad, du, a, B);
        nf_gemm(0, 0, B, H, H, 1, du, H, params + L1->w_off, H, 0, da, H);
        act_grad(n->act, s, a, da, BH);
        for (size_t i = 0; i < BH; i++) ds[i] += da[i];
    }
    first_linear_backward(n, &n->lin[0], params, grad, in, ctx, ds, din, dctx, B);
}

double nf_net_macs(const nf_net *n, int executed) {
    double m = 0;
    for (int l = 0; l < n->nlin; l++) {
        const nf_linear *L = &n->lin[l];
        const nf_stair *st = L->stair;
        if (!executed || !st) {
            m += (double)L->in * L->out;
            continue;
        }
        for (int t = 0; t < st->ntiles; t++)
            for (int r = 0; r < st->nruns; r++)
                m += (double)(st->ts[t + 1] - st->ts[t]) * st->tlen[(size_t)t * st->nruns + r];
        m += (double)(L->in - st->cs[st->nruns]) * L->out; /* context columns */
    }
    return m;
}

/* ---- spec ---------------------------------------------------------------------- */
void nf_net_to_json(const nf_net *n, cJSON *obj) {
    if (n->kind == NF_NET_MADE) {
        nf_json_attach(obj, "hidden", cJSON_CreateIntArray(n->hidden, n->nhidden));
        cJSON_AddStringToObject(obj, "activation", nf_act_name(n->act));
        cJSON_AddStringToObject(obj, "order", order_names[n->order]);
        cJSON_AddNumberToObject(obj, "order_seed", (double)n->order_seed);
        return;
    }
    cJSON_AddStringToObject(obj, "net", n->kind == NF_NET_RESNET ? "resnet" : "mlp");
    nf_json_attach(obj, "hidden", cJSON_CreateIntArray(n->hidden, n->nhidden));
    if (n->kind == NF_NET_RESNET) cJSON_AddNumberToObject(obj, "blocks", n->nblocks);
    cJSON_AddStringToObject(obj, "activation", nf_act_name(n->act));
}

static int parse_act(const cJSON *spec, nf_act *act, char *err, size_t errlen) {
    const char *s = nf_json_str(spec, "activation", "relu");
    if (!s || nf_act_parse(s, act)) {
        nf_set_err(err, errlen, "\"activation\" must be \"relu\", \"tanh\" or \"elu\"");
        return NF_EINVAL;
    }
    return 0;
}

int nf_net_from_spec(nf_net *n, const cJSON *spec, int in, int ctx, int out,
                     const int *def_hidden, int ndef, char *err, size_t errlen) {
    int hidden[16], nh, blocks, rc;
    nf_act act;
    memset(n, 0, sizeof *n);
    nh = nf_json_int_list(spec, "hidden", def_hidden, ndef, hidden, 16, err, errlen);
    if (nh < 0) return nh;
    if ((rc = parse_act(spec, &act, err, errlen))) return rc;
    if ((rc = nf_json_int(spec, "blocks", 2, 1, 16, &blocks, err, errlen))) return rc;
    const char *kind = nf_json_str(spec, "net", "mlp");
    if (kind && !strcmp(kind, "mlp")) {
        rc = nf_net_mlp(n, in, ctx, out, hidden, nh, act);
    } else if (kind && !strcmp(kind, "resnet")) {
        for (int i = 1; i < nh; i++)
            if (hidden[i] != hidden[0]) {
                nf_set_err(err, errlen, "resnet conditioners have one width: \"hidden\":[H]");
                return NF_EINVAL;
            }
        rc = nf_net_resnet(n, in, ctx, out, hidden[0], blocks, act);
    } else {
        nf_set_err(err, errlen, "\"net\" must be \"mlp\" or \"resnet\"");
        return NF_EINVAL;
    }
    if (rc) nf_set_err(err, errlen, "cannot build conditioner network (%s)", nf_strerror(rc));
    return rc;
}

int nf_net_made_from_spec(nf_net *n, const cJSON *spec, int D, int ctx, int P,
                          const int *def_hidden, int ndef, char *err, size_t errlen) {
    int hidden[16], nh, rc;
    double seed;
    nf_act act;
    nf_order order = NF_ORDER_ASC;
    memset(n, 0, sizeof *n);
    nh = nf_json_int_list(spec, "hidden", def_hidden, ndef, hidden, 16, err, errlen);
    if (nh < 0) return nh;
    if ((rc = parse_act(spec, &act, err, errlen))) return rc;
    if ((rc = nf_json_num(spec, "order_seed", 0, 0, NF_JSON_SEED_MAX, &seed, err, errlen)))
        return rc;
    const char *o = nf_json_str(spec, "order", "asc");
    int found = 0;
    for (int i = 0; o && i < NF_ORDER_COUNT; i++)
        if (!strcmp(o, order_names[i])) {
            order = (nf_order)i;
            found = 1;
        }
    if (!found) {
        nf_set_err(err, errlen, "\"order\" must be \"asc\", \"desc\" or \"random\"");
        return NF_EINVAL;
    }
    if (D < 1) {
        nf_set_err(err, errlen, "autoregressive layers need dim >= 1");
        return NF_EINVAL;
    }
    rc = nf_net_made(n, D, ctx, P, hidden, nh, act, order, (uint64_t)seed);
    if (rc) nf_set_err(err, errlen, "cannot build MADE (%s)", nf_strerror(rc));
    return rc;
}

/* ---- incremental MADE evaluation (see made_inc.h) ------------------------------
 * nf_net_made gives hidden unit k of every layer the degree lo + k % span,
 * lo = min(1, D-1), span = D - lo (the lo of the first layer is the smallest
 * input degree, 1, capped at D-1; later layers inherit it).  The units of
 * degree m in layer l are therefore k = m - lo + r span, r = 0, 1, ...: rows
 * of W_l at a fixed stride, so one strided product per (layer, degree)
 * computes them all:  h_l[:, units(m)] = act(h_{l-1} W_l[units(m), :]^T + b).
 * Units not yet final hold exactly 0 and meet only masked (exactly zero)
 * weights, so full-width rows give the same sums as the dense forward. */

static int inc_count(const nf_made_inc *s, int m, int h) {
    int first = m - s->lo;
    if (first < 0 || first >= s->span || first >= h) return 0;
    return (h - first + s->span - 1) / s->span;
}

static int inc_max_count(const nf_net *n) {
    int D = n->in, lo = D > 1 ? 1 : 0, span = D - lo, g = 0;
    for (int l = 0; l < n->nhidden; l++) {
        int c = (n->hidden[l] + span - 1) / span;
        g = c > g ? c : g;
    }
    return g;
}

size_t nf_made_inc_ws_size(const nf_net *n, int B) {
    size_t per_row = (size_t)(n->in + n->ctx) + (size_t)inc_max_count(n);
    for (int l = 0; l < n->nhidden; l++) per_row += (size_t)n->hidden[l];
    size_t idx = ((size_t)n->in * sizeof(int) + sizeof(nf_real) - 1) / sizeof(nf_real);
    return per_row * (size_t)B + idx;
}

/* Y (M,g) = A (M,K) W^T for g rows of W at stride ldw.  For a wide MADE g is
 * 1 or 2 (MAF outputs, hidden units of one degree): one GEMV per row of W,
 * since OpenBLAS (0.3.21) sgemm packs A on every call and ran about 2x slower
 * on these shapes.  Larger g (small D, spline parameters) goes to GEMM. */
static void inc_rows(int M, int K, const nf_real *A, const nf_real *W, size_t ldw, int g,
                     nf_real *Y) {
    if (g > 4) {
        nf_gemm(0, 1, M, g, K, 1, A, K, W, (int)ldw, 0, Y, g);
        return;
    }
    for (int q = 0; q < g; q++)
#ifdef NF_DOUBLE
        cblas_dgemv(CblasRowMajor, CblasNoTrans, M, K, 1, A, K, W + q * ldw, 1, 0, Y + q, g);
#else
        cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, 1, A, K, W + q * ldw, 1, 0, Y + q, g);
#endif
}

static inline nf_real act1(nf_act act, nf_real v) {
    return act == NF_ACT_RELU   ? (v > 0 ? v : 0)
           : act == NF_ACT_TANH ? (nf_real)tanh(v)
                                : (v > 0 ? v : (nf_real)expm1(v));
}

/* Finalise the units of degree m in every hidden layer, first to last. */
static void inc_finalise(const nf_made_inc *s, int m) {
    const nf_net *n = s->n;
    const int B = s->B;
    for (int l = 0; l < n->nhidden; l++) {
        const nf_linear *L = &n->lin[l];
        int g = inc_count(s, m, L->out);
        if (!g) continue;
        int first = m - s->lo, K = L->in, H = L->out;
        const nf_real *X = l == 0 ? s->x0 : s->h[l - 1]; /* (B,K) */
        const nf_real *b = s->params + L->b_off;
        inc_rows(B, K, X, s->params + L->w_off + (size_t)first * K, (size_t)s->span * K, g,
                 s->tmp);
        for (int r = 0; r < B; r++) {
            nf_real *hr = s->h[l] + (size_t)r * H;
            const nf_real *t = s->tmp + (size_t)r * g;
            for (int q = 0; q < g; q++) {
                int k = first + q * s->span;
                hr[k] = act1(n->act, t[q] + b[k]);
            }
        }
    }
}

void nf_made_inc_begin(nf_made_inc *s, const nf_net *n, const nf_real *params,
                       const nf_real *ctx, int B, nf_real *ws) {
    const int D = n->in, W = n->in + n->ctx;
    s->n = n;
    s->params = params;
    s->B = B;
    s->lo = D > 1 ? 1 : 0;
    s->span = D - s->lo;
    s->x0 = ws;
    nf_real *p = ws + (size_t)B * W;
    for (int l = 0; l < n->nhidden; l++) {
        s->h[l] = p;
        p += (size_t)B * n->hidden[l];
    }
    memset(ws, 0, (size_t)(p - ws) * sizeof *ws);
    s->tmp = p;
    s->index = (int *)(p + (size_t)B * inc_max_count(n));
    for (int i = 0; i < D; i++) s->index[n->degrees[i] - 1] = i;
    if (ctx)
        for (int r = 0; r < B; r++)
            memcpy(s->x0 + (size_t)r * W + D, ctx + (size_t)r * n->ctx,
                   (size_t)n->ctx * sizeof *ctx);
    inc_finalise(s, 0);
}

/* out (B,P) = h_L W_out[i*P .. i*P+P-1, :]^T + b: the rows of input i's
 * outputs see only units of degree < j, all final. */
void nf_made_inc_outputs(const nf_made_inc *s, int j, nf_real *out) {
    const nf_net *n = s->n;
    const nf_linear *L = &n->lin[n->nlin - 1];
    const int P = n->out / n->in, i = s->index[j - 1], H = L->in;
    const nf_real *b = s->params + L->b_off + (size_t)i * P;
    inc_rows(s->B, H, s->h[n->nhidden - 1], s->params + L->w_off + (size_t)i * P * H,
             (size_t)H, P, out);
    add_bias(out, b, s->B, P);
}

void nf_made_inc_feed(nf_made_inc *s, int j, const nf_real *x, int incx) {
    const int i = s->index[j - 1], W = s->n->in + s->n->ctx;
    for (int r = 0; r < s->B; r++) s->x0[(size_t)r * W + i] = x[(size_t)r * incx];
    inc_finalise(s, j);
}
