/* flow.c: a flow = base distribution + layers in density order.
 *
 * Assumptions this file relies on:
 *  - every layer's params/buffers are slices of the flow's one allocation;
 *    the base distribution's params come last;
 *  - a workspace (nf_ws) holds, for max_batch rows, the intermediate rows
 *    h_1..h_K of one pass (layer k maps h_k -> h_{k+1}, h_0 is the caller's
 *    x), one scratch region per layer (so backward can read what each
 *    inverse stored), two gradient rows for the backward sweep and per-row
 *    accumulators.  Nothing is allocated per call.
 *
 *   log p(x) = log p_Z(h_K) + sum_k logdet_k,   logdet_k = log|det dh_{k+1}/dh_k|
 *   d/dθ sum_b w_b log p(x_b): the base backward seeds dh_K, and every layer
 *   gets the same dlogdet = w, since log p is a plain sum of the log-dets.
 */
#include "alloc.h"
#include "blob.h"
#include "nf_internal.h"
#include "pool.h"
#include "kern.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The layer registry: one row per layer type, naming the constructor that its
 * own file defines (declared in nf_internal.h).  The references are strong,
 * so linking flow.o links every layer family: a new family is its .c file,
 * its constructor's declaration and one row here (docs/architecture.md,
 * "How to add a layer"; flow_registry_* in tests/core/test_flow.c checks
 * that the schema, the fuzz corpus and the allocation-failure test know it). */
const nf_layer_kind nf_layer_kinds[] = {
    {"actnorm", nf_actnorm_create},
    {"permute", nf_permute_create},
    {"lu_linear", nf_lu_linear_create},
    {"additive_coupling", nf_additive_coupling_create},
    {"affine_coupling", nf_affine_coupling_create},
    {"maf", nf_maf_create},
    {"iaf", nf_iaf_create},
    {"spline_coupling", nf_spline_coupling_create},
    {"spline_ar", nf_spline_ar_create},
    {"leaky_relu", nf_leaky_relu_create},
    {"batchnorm", nf_batchnorm_create},
    {"logit", nf_logit_create},
    {"elementwise_affine", nf_elementwise_affine_create},
    {"squeeze", nf_squeeze_create},
    {"split", nf_split_create},
    {"channel_actnorm", nf_channel_actnorm_create},
    {"invconv", nf_invconv_create},
    {"conv_coupling", nf_conv_coupling_create},
    {"cnf", nf_cnf_create},
    {NULL, NULL},
};

#define NF_MAX_LAYERS 512
#define NF_MAX_DIM 65536
/* parameters (and, separately, buffer values) of a whole flow: 512 MiB of
 * float32 each for parameters, gradients and Adam's two moments.  Specs come
 * from users; dim 65536 with an lu_linear layer alone would ask for 16 GiB. */
#define NF_MAX_PARAMS ((size_t)1 << 27)

/* A workspace is either plain (nt = 1: the buffers below) or threaded
 * (nt > 1): then it holds one plain workspace per thread and a pool, and
 * every call splits its rows into nt contiguous parts, part t on thread t
 * with sub[t].  Row-wise results (log p, z, x, dx) are the same as on one
 * thread; parameter gradients are summed part by part: part 0 into the
 * flow's gradient, part t > 0 into pgrad[t], then added in (reduce_part,
 * on the pool), which also re-zeroes pgrad[t] for the next call.  The big
 * dense layers' weight gradients skip that: each part records them in its
 * defer, and after the parts every thread computes a slice of them over
 * all the rows, into the flow's gradient (nf_defer_run, nf_internal.h);
 * reduce_part then only squares those ranges for the norm. */
#define NF_WS_MAX_THREADS NF_PAR_MAX
/* fewer rows than this per thread and a call stays on one thread */
#define PAR_MIN_ROWS 8

struct nf_ws {
    int Bm;
    nf_real *mem;
    nf_real **h;      /* (nlayers+1) row buffers; h[0] unused (caller's x) */
    nf_real **lws;    /* (nlayers) scratch per layer */
    nf_real *g0, *g1; /* (Bm,D) gradient rows */
    nf_real *ld, *bl; /* (Bm) log-det accumulator, base log p */
    nf_real *rw;      /* (Bm) regulariser weights of a training gradient call */
    nf_ode_stats ode; /* cnf layers' counters */
    uint64_t noise_seed;
    int64_t row0;     /* index of this workspace's row 0 in the call (a part's offset) */
    int64_t row_cur;  /* ... and of the current chunk's */
    int nt;           /* threads */
    int infer;        /* forward only (nf_ws_create_inference) */
    nf_ws **sub;      /* (nt) plain workspaces, nt > 1 */
    nf_real **pgrad;  /* (nt) gradients of parts 1..nt-1, allocated on first use */
    nf_defer defer;   /* a part's deferred weight gradients (sub workspaces) */
    size_t *dranges;  /* nf_defer_ranges' output, dranges_cap entries */
    int dranges_cap;
    /* the sum of squares of the gradient gss_grad, per range of
     * nf_ws_parallel_for, taken while the last gradient call summed its
     * parts (nf_ws_grad_sumsq); gss_grad NULL when there is none */
    const nf_real *gss_grad;
    size_t gss_n;
    int gss_np;
    double gss[NF_PAR_MAX];
    nf_pool *pool;
    void (*pace)(void *user, double work_s); /* nf_ws_set_pace, on w and its sub */
    void *pace_user;
    double pace_t;    /* this thread's last pace (or pass start), monotonic seconds */
    void *aux;        /* nf_ws_set_aux */
    void (*aux_free)(void *);
};

/* ---- creation ----------------------------------------------------------------- */
static void free_layers(nf_flow *f) {
    for (int k = 0; k < f->nlayers; k++)
        if (f->layers[k].ops && f->layers[k].ops->destroy) f->layers[k].ops->destroy(&f->layers[k]);
    nf_free(f->layers);
    f->layers = NULL;
    f->nlayers = 0;
}

void nf_flow_free(nf_flow *f) {
    if (!f) return;
    nf_flow_unpack(f);
    free_layers(f);
    nf_free(f->params);
    nf_free(f->grad);
    nf_free(f->buffers);
    nf_free(f);
}

static int build(nf_flow *f, const cJSON *spec, char *err, size_t errlen) {
    static const char *const keys[] = {"dim", "context_dim", "shape", "base", "layers", "seed",
                                       NULL};
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    if ((rc = nf_json_int(spec, "dim", 0, 1, NF_MAX_DIM, &f->D, err, errlen))) return rc;
    if ((rc = nf_shape_parse(spec, f->D, f->shape, err, errlen))) return rc;
    if (!f->D && f->shape[0]) f->D = f->shape[0] * f->shape[1] * f->shape[2];
    if (!f->D) {
        nf_set_err(err, errlen, "\"dim\" is required");
        return NF_EINVAL;
    }
    if ((rc = nf_json_int(spec, "context_dim", 0, 0, NF_MAX_DIM, &f->C, err, errlen))) return rc;
    double seed;
    if ((rc = nf_json_num(spec, "seed", 0, 0, NF_JSON_SEED_MAX, &seed, err, errlen))) return rc;
    f->seed = (uint64_t)seed;
    if ((rc = nf_base_parse(&f->base, f->D, cJSON_GetObjectItemCaseSensitive(spec, "base"), err,
                            errlen)))
        return rc;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(spec, "layers");
    if (!cJSON_IsArray(layers)) {
        nf_set_err(err, errlen, "\"layers\" must be a list of layer objects (or give a \"preset\")");
        return NF_EINVAL;
    }
    int n = cJSON_GetArraySize(layers);
    if (n > NF_MAX_LAYERS) {
        nf_set_err(err, errlen, "at most %d layers", NF_MAX_LAYERS);
        return NF_EINVAL;
    }
    f->layers = nf_calloc(n ? (size_t)n : 1, sizeof *f->layers);
    if (!f->layers) return NF_ENOMEM;
    const cJSON *ls;
    size_t poff = 0, boff = 0;
    int cur[3] = {f->shape[0], f->shape[1], f->shape[2]};
    cJSON_ArrayForEach(ls, layers) {
        int k = f->nlayers;
        const char *type = nf_json_str(ls, "type", NULL);
        nf_layer_ctor ctor = NULL;
        for (const nf_layer_kind *lk = nf_layer_kinds; type && lk->type; lk++)
            if (!strcmp(type, lk->type)) ctor = lk->ctor;
        if (!cJSON_IsObject(ls) || !type || !ctor) {
            nf_set_err(err, errlen, "layer %d: unknown or missing \"type\"%s%s", k,
                       type ? ": " : "", type ? type : "");
            return NF_EINVAL;
        }
        nf_layer *L = &f->layers[k];
        L->D = f->D;
        L->C = f->C;
        memcpy(L->shape, cur, sizeof cur);
        memcpy(L->out_shape, cur, sizeof cur);
        char lerr[200] = "";
        rc = ctor(L, ls, lerr, sizeof lerr);
        if (rc) {
            if (L->ops && L->ops->destroy) L->ops->destroy(L);
            L->ops = NULL;
            nf_set_err(err, errlen, "layer %d (%s): %s", k, type,
                       lerr[0] ? lerr : nf_strerror(rc));
            return rc;
        }
        f->nlayers++;
        memcpy(cur, L->out_shape, sizeof cur);
        if (L->nparams > NF_MAX_PARAMS - poff || L->nbuffers > NF_MAX_PARAMS - boff) {
            nf_set_err(err, errlen, "layer %d (%s): the flow would exceed %zu parameters", k, type,
                       NF_MAX_PARAMS);
            return NF_ERANGE;
        }
        L->param_off = poff;
        L->buf_off = boff;
        poff += L->nparams;
        boff += L->nbuffers;
    }
    f->base.param_off = poff;
    f->nparams = poff + f->base.nparams;
    f->nbuffers = boff;
    f->params = nf_calloc(f->nparams + 1, sizeof *f->params);
    f->buffers = nf_calloc(f->nbuffers + 1, sizeof *f->buffers);
    if (!f->params || !f->buffers) return NF_ENOMEM;
    /* f->grad is allocated on first use (nf_flow_grad, nf_flow_zero_grad or a
     * gradient call): a flow that only serves never pays for it */
    return 0;
}

int nf_flow_create(const char *spec_json, nf_flow **out, char *err, size_t errlen) {
    *out = NULL;
    if (err && errlen) err[0] = 0;
    unsigned fails = nf_alloc_failures;
    cJSON *spec = spec_json ? cJSON_Parse(spec_json) : NULL;
    if (!spec && nf_alloc_failures != fails) {
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    if (!spec) {
        nf_set_err(err, errlen, "flow spec is not valid JSON");
        return NF_EINVAL;
    }
    cJSON *expanded = NULL;
    int rc = 0;
    if (cJSON_GetObjectItemCaseSensitive(spec, "preset")) {
        rc = nf_preset_expand(spec, &expanded, err, errlen);
        if (rc) {
            cJSON_Delete(spec);
            return rc;
        }
    }
    nf_flow *f = nf_calloc(1, sizeof *f);
    if (!f) rc = NF_ENOMEM;
    else rc = build(f, expanded ? expanded : spec, err, errlen);
    cJSON_Delete(spec);
    cJSON_Delete(expanded);
    if (rc) {
        if (rc == NF_ENOMEM && err && !err[0]) nf_set_err(err, errlen, "out of memory");
        nf_flow_free(f);
        return rc;
    }
    nf_flow_init(f, f->seed);
    *out = f;
    return 0;
}

double nf_flow_macs_per_row(const nf_flow *f, int executed) {
    double m = 0;
    for (int k = 0; k < f->nlayers; k++)
        if (f->layers[k].ops->macs) m += f->layers[k].ops->macs(&f->layers[k], executed);
    return m;
}

int nf_flow_dim(const nf_flow *f) { return f->D; }
int nf_flow_shape(const nf_flow *f, int shape[3]) {
    if (shape) memcpy(shape, f->shape, sizeof f->shape);
    return f->shape[0] > 0;
}

int nf_layer_need_shape(const nf_layer *L, char *err, size_t errlen) {
    if (L->shape[0] > 0) return 0;
    nf_set_err(err, errlen, "an image layer: the flow needs \"shape\": [channels, height, width]");
    return NF_EINVAL;
}

int nf_shape_parse(const cJSON *spec, int D, int shape[3], char *err, size_t errlen) {
    shape[0] = shape[1] = shape[2] = 0;
    const cJSON *s = nf_json_get(spec, "shape");
    if (!s) return 0;
    int n = cJSON_IsArray(s) ? cJSON_GetArraySize(s) : 0;
    const cJSON *e;
    int k = 0, bad = n != 3;
    cJSON_ArrayForEach(e, s) {
        if (k >= 3 || !cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
            e->valuedouble < 1 || e->valuedouble > NF_MAX_DIM)
            bad = 1;
        else shape[k] = (int)e->valuedouble;
        k++;
    }
    if (bad) {
        shape[0] = shape[1] = shape[2] = 0;
        nf_set_err(err, errlen, "\"shape\" must be [channels, height, width], positive integers");
        return NF_EINVAL;
    }
    long long p = (long long)shape[0] * shape[1] * shape[2];
    if (p > NF_MAX_DIM || (D && p != D)) {
        nf_set_err(err, errlen, "\"shape\" [%d, %d, %d] holds %lld values but \"dim\" is %d",
                   shape[0], shape[1], shape[2], p, D);
        shape[0] = shape[1] = shape[2] = 0;
        return NF_EINVAL;
    }
    return 0;
}
int nf_flow_context_dim(const nf_flow *f) { return f->C; }
int nf_flow_num_layers(const nf_flow *f) { return f->nlayers; }
const char *nf_flow_layer_type(const nf_flow *f, int k) {
    return k >= 0 && k < f->nlayers ? f->layers[k].ops->type : NULL;
}
size_t nf_flow_num_params(const nf_flow *f) { return f->nparams; }
nf_real *nf_flow_params(nf_flow *f) {
    nf_flow_unpack(f); /* the caller may write them */
    return f->params;
}

void nf_flow_unpack(nf_flow *f) {
    nf_free(f->pack);
    nf_free(f->pack_off);
    f->pack = NULL;
    f->pack_off = NULL;
    f->pack_n = 0;
}

size_t nf_flow_packed_bytes(const nf_flow *f) { return f->pack_n * sizeof(nf_real); }

int nf_flow_pack(nf_flow *f) { return nf_flow_pack_max(f, SIZE_MAX); }

int nf_flow_pack_max(nf_flow *f, size_t max_bytes) {
    nf_flow_unpack(f);
#ifdef NF_DOUBLE
    (void)max_bytes;
    return 0;
#else
    if (!f->nlayers || !nf_kern_avx2()) return 0; /* no kernel to read a pack */
    size_t *off = nf_malloc((size_t)f->nlayers * sizeof *off), total = 0;
    if (!off) return NF_ENOMEM;
    for (int k = 0; k < f->nlayers; k++) {
        const nf_layer *L = &f->layers[k];
        size_t n = L->ops->net ? nf_net_pack_layout(L->ops->net(L)) : 0;
        off[k] = n ? total : NF_NO_PACK;
        total += n;
    }
    if (!total || total > max_bytes / sizeof(nf_real)) { /* nothing, or over the cap */
        nf_free(off);
        return 0;
    }
    nf_real *pack = nf_malloc(total * sizeof *pack);
    if (!pack) {
        nf_free(off);
        return NF_ENOMEM;
    }
    for (int k = 0; k < f->nlayers; k++)
        if (off[k] != NF_NO_PACK)
            nf_net_pack(f->layers[k].ops->net(&f->layers[k]), f->params + f->layers[k].param_off,
                        pack + off[k]);
    f->pack = pack;
    f->pack_off = off;
    f->pack_n = total;
    return 0;
#endif
}
static int ensure_grad(nf_flow *f) {
    if (!f->grad) f->grad = nf_calloc(f->nparams + 1, sizeof *f->grad);
    return f->grad ? 0 : NF_ENOMEM;
}
nf_real *nf_flow_grad(nf_flow *f) { return ensure_grad(f) ? NULL : f->grad; }
int nf_flow_zero_grad(nf_flow *f) {
    if (ensure_grad(f)) return NF_ENOMEM;
    memset(f->grad, 0, f->nparams * sizeof *f->grad);
    return 0;
}

void nf_flow_init(nf_flow *f, uint64_t seed) {
    nf_flow_unpack(f);
    nf_rng rng;
    for (int k = 0; k < f->nlayers; k++) {
        nf_layer *L = &f->layers[k];
        /* each layer its own stream, so adding a layer does not shift the others */
        nf_rng_seed(&rng, seed * 0x9E3779B97F4A7C15ULL + (uint64_t)k + 1);
        if (L->ops->init) L->ops->init(L, f->params + L->param_off, f->buffers + L->buf_off, &rng);
    }
    nf_base_init(&f->base, f->params + f->base.param_off);
    nf_flow_constrain(f);
    if (f->grad) memset(f->grad, 0, f->nparams * sizeof *f->grad);
}

void nf_flow_constrain(nf_flow *f) {
    nf_flow_unpack(f);
    for (int k = 0; k < f->nlayers; k++) {
        nf_layer *L = &f->layers[k];
        if (L->ops->constrain) L->ops->constrain(L, f->params + L->param_off);
    }
}

char *nf_flow_config_json(const nf_flow *f) {
    /* the cJSON_Add* calls here and in the layers' to_json are unchecked: a
     * failed allocation anywhere shows in the thread's failure count */
    unsigned fails = nf_alloc_failures;
    cJSON *o = cJSON_CreateObject(), *base = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!o || !base || !arr) {
        cJSON_Delete(o);
        cJSON_Delete(base);
        cJSON_Delete(arr);
        return NULL;
    }
    cJSON_AddNumberToObject(o, "dim", f->D);
    cJSON_AddNumberToObject(o, "context_dim", f->C);
    if (f->shape[0]) nf_json_attach(o, "shape", cJSON_CreateIntArray(f->shape, 3));
    nf_base_to_json(&f->base, base);
    nf_json_attach(o, "base", base);
    for (int k = 0; k < f->nlayers; k++) {
        cJSON *l = cJSON_CreateObject();
        if (!l) break; /* counted: the result is dropped below */
        cJSON_AddStringToObject(l, "type", f->layers[k].ops->type);
        if (f->layers[k].ops->to_json) f->layers[k].ops->to_json(&f->layers[k], l);
        nf_json_append(arr, l);
    }
    nf_json_attach(o, "layers", arr);
    cJSON_AddNumberToObject(o, "seed", (double)f->seed);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (nf_alloc_failures != fails) {
        nf_free(s);
        return NULL;
    }
    return s;
}

/* ---- parameter blobs -------------------------------------------------------------- */
#define PB_HEADER (4 + 4 + 8 + 8)

int nf_flow_save_params(const nf_flow *f, void **buf, size_t *len) {
    nf_blob_writer w = nf_blob_writer_init(PB_HEADER + 4 * (f->nparams + f->nbuffers) + 4);
    nf_blob_put(&w, "NFPB", 4);
    nf_blob_put_u32(&w, 1);
    nf_blob_put_u64(&w, f->nparams);
    nf_blob_put_u64(&w, f->nbuffers);
    nf_blob_put_f32s(&w, f->params, f->nparams);
    nf_blob_put_f32s(&w, f->buffers, f->nbuffers);
    return nf_blob_finish(&w, buf, len);
}

int nf_flow_load_params(nf_flow *f, const void *buf, size_t len) {
    const unsigned char *p = buf;
    if (!p || len < PB_HEADER + 4 || memcmp(p, "NFPB", 4)) return NF_EFORMAT;
    nf_blob_reader r = nf_blob_reader_init(p + 4, len - 4 - 4);
    if (nf_blob_u32(&r) != 1) return NF_EFORMAT;
    uint64_t np = nf_blob_u64(&r), nb = nf_blob_u64(&r);
    if (np != f->nparams || nb != f->nbuffers) return NF_EFORMAT;
    if (len != PB_HEADER + 4 * (np + nb) + 4) return NF_ECORRUPT;
    if (!nf_blob_crc_ok(p, len)) return NF_ECORRUPT;
    nf_blob_f32s(&r, f->params, np);
    nf_blob_f32s(&r, f->buffers, nb);
    nf_flow_constrain(f);
    return 0;
}

/* ---- workspaces ----------------------------------------------------------------------- */
/* infer: a forward-only workspace.  No backward will read what a layer left
 * behind, so every layer shares one scratch region (the largest layer's) and
 * the rows ping-pong between two buffers (h_k for odd k in one, even k in
 * the other), instead of one scratch and one row buffer per layer. */
static size_t layer_ws_size(const nf_layer *L, int B, int infer) {
    if (infer && L->ops->ws_size_infer) return L->ops->ws_size_infer(L, B);
    return L->ops->ws_size ? L->ops->ws_size(L, B) : 0;
}

static int ws_create(const nf_flow *f, int max_batch, int infer, nf_ws **out) {
    *out = NULL;
    if (max_batch < 1 || max_batch > (1 << 24)) return NF_ERANGE;
    size_t B = (size_t)max_batch, D = (size_t)f->D, total = 0, maxl = 0;
    int nh = infer ? (f->nlayers < 2 ? f->nlayers : 2) : f->nlayers;
    total += (size_t)nh * B * D; /* h_1..h_K */
    for (int k = 0; k < f->nlayers; k++) {
        size_t l = layer_ws_size(&f->layers[k], max_batch, infer);
        total += infer ? 0 : l;
        maxl = l > maxl ? l : maxl;
    }
    total += infer ? maxl : 0;
    total += 2 * B * D + 3 * B;
    /* a flow under the parameter cap can still ask for a huge workspace
     * (many parameter-free layers on wide rows): refuse rather than let an
     * overcommitted allocation be killed later */
    if (total > NF_WS_MAX_BYTES / sizeof(nf_real)) return NF_ERANGE;
    nf_ws *w = nf_calloc(1, sizeof *w);
    if (!w) return NF_ENOMEM;
    w->Bm = max_batch;
    w->infer = infer;
    w->mem = nf_malloc((total + 1) * sizeof *w->mem);
    w->h = nf_calloc((size_t)f->nlayers + 1, sizeof *w->h);
    w->lws = nf_calloc((size_t)f->nlayers + 1, sizeof *w->lws);
    if (!w->mem || !w->h || !w->lws) {
        nf_ws_free(w);
        return NF_ENOMEM;
    }
    nf_real *p = w->mem;
    for (int k = 1; k <= f->nlayers; k++) w->h[k] = p + (size_t)(infer ? (k - 1) % 2 : k - 1) * B * D;
    p += (size_t)nh * B * D;
    for (int k = 0; k < f->nlayers; k++) {
        w->lws[k] = p;
        if (!infer) p += layer_ws_size(&f->layers[k], max_batch, 0);
    }
    if (infer) p += maxl;
    w->g0 = p;
    w->g1 = p + B * D;
    w->ld = p + 2 * B * D;
    w->bl = w->ld + B;
    w->rw = w->bl + B;
    *out = w;
    return 0;
}

int nf_ws_create(const nf_flow *f, int max_batch, nf_ws **out) {
    return ws_create(f, max_batch, 0, out);
}

int nf_ws_create_inference(const nf_flow *f, int max_batch, nf_ws **out) {
    return nf_ws_create_ex(f, max_batch, 1, NF_WS_INFERENCE, out);
}

void nf_ws_free(nf_ws *w) {
    if (!w) return;
    nf_ws_set_aux(w, NULL, NULL);
    nf_pool_free(w->pool); /* joins the workers first */
    if (w->sub)
        for (int t = 0; t < w->nt; t++) nf_ws_free(w->sub[t]);
    if (w->pgrad)
        for (int t = 0; t < w->nt; t++) nf_free(w->pgrad[t]);
    nf_free(w->sub);
    nf_free(w->pgrad);
    nf_defer_free(&w->defer);
    nf_free(w->dranges);
    nf_free(w->mem);
    nf_free(w->h);
    nf_free(w->lws);
    nf_free(w);
}

int nf_ws_create_threads(const nf_flow *f, int max_batch, int threads, nf_ws **out) {
    return nf_ws_create_ex(f, max_batch, threads, 0, out);
}

int nf_ws_create_ex(const nf_flow *f, int max_batch, int threads, unsigned flags, nf_ws **out) {
    *out = NULL;
    int infer = (flags & NF_WS_INFERENCE) != 0;
    if (max_batch < 1 || max_batch > (1 << 24) || threads < 1) return NF_ERANGE;
    if (threads > NF_WS_MAX_THREADS) threads = NF_WS_MAX_THREADS;
    if (threads > max_batch) threads = max_batch;
    int whole_batch = 0, data_init = 0;
    for (int k = 0; k < f->nlayers; k++) {
        /* batch-norm's training statistics span the batch: one thread */
        if (!strcmp(f->layers[k].ops->type, "batchnorm")) whole_batch = 1;
        if (f->layers[k].ops->data_init) data_init = 1;
    }
    if (threads == 1 || whole_batch) return ws_create(f, max_batch, infer, out);
    nf_ws *w = nf_calloc(1, sizeof *w);
    if (!w) return NF_ENOMEM;
    w->Bm = max_batch;
    w->nt = threads;
    w->infer = infer;
    w->sub = nf_calloc((size_t)threads, sizeof *w->sub);
    w->pgrad = nf_calloc((size_t)threads, sizeof *w->pgrad);
    int rc = w->sub && w->pgrad ? 0 : NF_ENOMEM;
    int part = (max_batch + threads - 1) / threads;
    /* nf_flow_data_init runs on sub[0] and wants the whole batch */
    for (int t = 0; t < threads && !rc; t++)
        rc = ws_create(f, t == 0 && data_init && !infer ? max_batch : part, infer, &w->sub[t]);
    if (!rc) rc = nf_pool_create(threads, &w->pool);
    if (rc) {
        nf_ws_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

int nf_ws_max_batch(const nf_ws *w) { return w->Bm; }
void *nf_ws_aux(const nf_ws *w) { return w->aux; }
void nf_ws_set_aux(nf_ws *w, void *aux, void (*free_fn)(void *)) {
    if (w->aux_free) w->aux_free(w->aux);
    w->aux = aux;
    w->aux_free = free_fn;
}
int nf_ws_threads(const nf_ws *w) { return w->nt > 1 ? w->nt : 1; }

static nf_ctx layer_ctx(const nf_flow *f, const nf_ws *w, nf_real *grad, int k,
                        const nf_real *ctx, int B, int training) {
    const nf_layer *L = &f->layers[k];
    nf_ctx c = {
        .params = f->params + L->param_off,
        .grad = grad ? grad + L->param_off : NULL,
        .buffers = f->buffers + L->buf_off,
        .ctx = ctx,
        .dctx = NULL,
        .ws = w->lws[k],
        .B = B,
        .training = training,
        .infer = w->infer,
        .ode = (nf_ode_stats *)&w->ode,
        .noise_seed = w->noise_seed,
        .row0 = w->row_cur,
        .wt = w->infer && f->pack && f->pack_off[k] != NF_NO_PACK ? f->pack + f->pack_off[k]
                                                                   : NULL,
    };
    return c;
}

/* before layer k of a pass (k counted in the pass' order): the pace hook,
 * if any, after the pass' first layer */
static inline void ws_pace(nf_ws *w, int k) {
    if (!w->pace) return;
    double now = nf_mono_s();
    if (k > 0) {
        w->pace(w->pace_user, now - w->pace_t);
        now = nf_mono_s();
    }
    w->pace_t = now;
}

/* density pass over one chunk; leaves h_1..h_K in w and the log-det sum in w->ld */
static int inverse_chunk(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                         int training) {
    int bad = 0;
    memset(w->ld, 0, (size_t)B * sizeof *w->ld);
    const nf_real *in = x;
    for (int k = 0; k < f->nlayers; k++) {
        ws_pace(w, k);
        nf_ctx c = layer_ctx(f, w, f->grad, k, ctx, B, training);
        int rc = f->layers[k].ops->inverse(&f->layers[k], &c, in, w->h[k + 1], w->ld);
        if (rc == NF_ENONFINITE) bad = 1;
        else if (rc) return rc;
        in = w->h[k + 1];
    }
    return bad ? NF_ENONFINITE : 0;
}

static const nf_real *top(const nf_flow *f, const nf_ws *w, const nf_real *x) {
    return f->nlayers ? w->h[f->nlayers] : x;
}

static int check_args(const nf_flow *f, const nf_ws *w, const nf_real *ctx, int B) {
    if (!f || !w || B < 0) return NF_EINVAL;
    if (f->C > 0 && !ctx && B > 0) return NF_EINVAL;
    return 0;
}

/* threaded workspaces: the same calls, rows split over the threads (below) */
typedef struct par_job par_job;
static int par_rows(par_job *j);
static int par_log_prob(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                        nf_real *out);
static int par_map(int kind, const nf_flow *f, nf_ws *w, const nf_real *in, const nf_real *ctx,
                   int B, nf_real *out, nf_real *logdet);
enum { JOB_LOG_PROB, JOB_ENCODE, JOB_DECODE, JOB_SAMPLE, JOB_GRAD_FWD, JOB_GRAD_BWD };
static int par_sample(const nf_flow *f, nf_ws *w, int n, double T, uint64_t seed,
                      const nf_real *ctx, nf_real *x, nf_real *log_prob);
static int par_grad(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                    int training, int transform, const nf_real *dlogp, double ld_l2,
                    const nf_real *dout, nf_real *logp, nf_real *logdet, nf_real *out,
                    nf_real *dx, nf_real *dctx);

int nf_flow_log_prob(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                     nf_real *out) {
    int rc = check_args(f, w, ctx, B);
    if (rc) return rc;
    if (w->nt > 1) return par_log_prob(f, w, x, ctx, B, out);
    for (int s = 0; s < B; s += w->Bm) {
        int n = B - s < w->Bm ? B - s : w->Bm;
        const nf_real *xs = x + (size_t)s * f->D, *cs = ctx ? ctx + (size_t)s * f->C : NULL;
        w->row_cur = w->row0 + s;
        rc = inverse_chunk(f, w, xs, cs, n, 0);
        if (rc && rc != NF_ENONFINITE) return rc;
        nf_base_log_prob(&f->base, f->params + f->base.param_off, top(f, w, xs), n, w->bl);
        for (int r = 0; r < n; r++) {
            double lp = (double)w->bl[r] + (double)w->ld[r];
            out[s + r] = (w->ld[r] == -INFINITY) ? (nf_real)-INFINITY : (nf_real)lp;
        }
    }
    return 0;
}

int nf_flow_encode(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                   nf_real *z, nf_real *logdet) {
    int rc = check_args(f, w, ctx, B), bad = 0;
    if (rc) return rc;
    if (w->nt > 1) return par_map(JOB_ENCODE, f, w, x, ctx, B, z, logdet);
    for (int s = 0; s < B; s += w->Bm) {
        int n = B - s < w->Bm ? B - s : w->Bm;
        const nf_real *xs = x + (size_t)s * f->D;
        w->row_cur = w->row0 + s;
        rc = inverse_chunk(f, w, xs, ctx ? ctx + (size_t)s * f->C : NULL, n, 0);
        if (rc == NF_ENONFINITE) bad = 1;
        else if (rc) return rc;
        memcpy(z + (size_t)s * f->D, top(f, w, xs), (size_t)n * f->D * sizeof *z);
        if (logdet) memcpy(logdet + s, w->ld, (size_t)n * sizeof *logdet);
    }
    return bad ? NF_ENONFINITE : 0;
}

/* sampling pass over one chunk: z (n,D) -> x (n,D), w->ld = log|det dx/dz| */
/* sampling pass over one chunk; need_ld 0: the caller ignores w->ld, so
 * layers may skip the log-det where it costs (cnf: the trace) */
static int forward_chunk(const nf_flow *f, nf_ws *w, const nf_real *z, const nf_real *ctx, int n,
                         nf_real *x, int need_ld) {
    int bad = 0;
    memset(w->ld, 0, (size_t)n * sizeof *w->ld);
    if (f->nlayers == 0) {
        memcpy(x, z, (size_t)n * f->D * sizeof *x);
        return 0;
    }
    const nf_real *in = z;
    for (int k = f->nlayers - 1; k >= 0; k--) {
        ws_pace(w, f->nlayers - 1 - k);
        nf_ctx c = layer_ctx(f, w, f->grad, k, ctx, n, 0);
        c.no_logdet = !need_ld;
        /* write into h[k] (h[0] is the caller's x) */
        nf_real *out = k == 0 ? x : w->h[k];
        int rc = f->layers[k].ops->forward(&f->layers[k], &c, in, out, w->ld);
        if (rc == NF_ENONFINITE) bad = 1;
        else if (rc) return rc;
        in = out;
    }
    return bad ? NF_ENONFINITE : 0;
}

int nf_flow_decode(const nf_flow *f, nf_ws *w, const nf_real *z, const nf_real *ctx, int B,
                   nf_real *x, nf_real *logdet) {
    int rc = check_args(f, w, ctx, B), bad = 0;
    if (rc) return rc;
    if (w->nt > 1) return par_map(JOB_DECODE, f, w, z, ctx, B, x, logdet);
    for (int s = 0; s < B; s += w->Bm) {
        int n = B - s < w->Bm ? B - s : w->Bm;
        /* z may be h[K]'s source; copy through g0 so layers never alias */
        memcpy(w->g0, z + (size_t)s * f->D, (size_t)n * f->D * sizeof *z);
        w->row_cur = w->row0 + s;
        rc = forward_chunk(f, w, w->g0, ctx ? ctx + (size_t)s * f->C : NULL, n,
                           x + (size_t)s * f->D, logdet != NULL);
        if (rc == NF_ENONFINITE) bad = 1;
        else if (rc) return rc;
        if (logdet) memcpy(logdet + s, w->ld, (size_t)n * sizeof *logdet);
    }
    return bad ? NF_ENONFINITE : 0;
}

int nf_flow_sample(const nf_flow *f, nf_ws *w, int n, double T, uint64_t seed,
                   const nf_real *ctx, nf_real *x, nf_real *log_prob) {
    int rc = check_args(f, w, ctx, n);
    if (rc) return rc;
    if (!(T > 0) || !isfinite(T)) return NF_EINVAL;
    if (w->nt > 1) return par_sample(f, w, n, T, seed, ctx, x, log_prob);
    nf_rng rng;
    nf_rng_seed(&rng, seed);
    for (int s = 0; s < n; s += w->Bm) {
        int m = n - s < w->Bm ? n - s : w->Bm;
        nf_base_sample(&f->base, f->params + f->base.param_off, &rng, T, m, w->g0);
        if (log_prob) nf_base_log_prob(&f->base, f->params + f->base.param_off, w->g0, m, w->bl);
        w->row_cur = w->row0 + s;
        rc = forward_chunk(f, w, w->g0, ctx ? ctx + (size_t)s * f->C : NULL, m,
                           x + (size_t)s * f->D, log_prob != NULL);
        if (rc && rc != NF_ENONFINITE) return rc;
        if (log_prob)
            for (int r = 0; r < m; r++)
                log_prob[s + r] = (nf_real)((double)w->bl[r] - (double)w->ld[r]);
    }
    return 0;
}

/* ---- training ---------------------------------------------------------------------------- */
/* The layer backward sweep of one pass, from dz in w->g0 (on the top
 * rows) and per-row log-det weights in w->bl; ping-pongs w->g0/w->g1,
 * writes dx (may be NULL) and accumulates dctx (may be NULL). */
static void backward_chain(const nf_flow *f, nf_ws *w, nf_real *grad, const nf_real *x,
                           const nf_real *ctx, int B, int training, nf_real *dctx, nf_real *dx,
                           const nf_real *wreg) {
    nf_real *dz = w->g0, *dnext = w->g1;
    for (int k = f->nlayers - 1; k >= 0; k--) {
        ws_pace(w, f->nlayers - 1 - k);
        nf_ctx c = layer_ctx(f, w, grad, k, ctx, B, training);
        c.dctx = dctx;
        c.wreg = wreg;
        const nf_real *xin = k == 0 ? x : w->h[k];
        nf_real *dout = k == 0 ? dx : dnext;
        f->layers[k].ops->backward(&f->layers[k], &c, xin, w->h[k + 1], dz, w->bl, dout);
        nf_real *t = dz;
        dz = dnext;
        dnext = t;
    }
    if (f->nlayers == 0 && dx) memcpy(dx, dz, (size_t)B * f->D * sizeof *dx);
}

int nf_flow_log_prob_grad(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                          int training, const nf_real *dlogp, nf_real *logp, nf_real *dx,
                          nf_real *dctx) {
    return nf_flow_log_prob_grad_ex(f, w, x, ctx, B, training, dlogp, 0, logp, NULL, dx, dctx);
}

int nf_flow_log_prob_grad_ex(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                             int training, const nf_real *dlogp, double ld_l2, nf_real *logp,
                             nf_real *logdet, nf_real *dx, nf_real *dctx) {
    int rc = check_args(f, w, ctx, B);
    if (rc) return rc;
    if (B > w->Bm) return NF_ERANGE;
    if (w->infer && dlogp) return NF_EUNSUPPORTED;
    if (w->nt > 1)
        return par_grad(f, w, x, ctx, B, training, 0, dlogp, ld_l2, NULL, logp, logdet, NULL, dx,
                        dctx);
    w->row_cur = w->row0;
    rc = inverse_chunk(f, w, x, ctx, B, training);
    if (rc) return rc; /* out of support: no gradient */
    const nf_real *z = top(f, w, x);
    nf_base_log_prob(&f->base, f->params + f->base.param_off, z, B, w->bl);
    if (logp)
        for (int r = 0; r < B; r++) logp[r] = (nf_real)((double)w->bl[r] + (double)w->ld[r]);
    if (logdet) memcpy(logdet, w->ld, (size_t)B * sizeof *logdet);
    if (!dlogp) return 0;
    if (ensure_grad(f)) return NF_ENOMEM;
    memset(w->g0, 0, (size_t)B * f->D * sizeof *w->g0);
    nf_base_log_prob_backward(&f->base, f->params + f->base.param_off,
                              f->grad + f->base.param_off, z, B, dlogp, w->g0);
    /* every layer's log-det enters log p with weight dlogp_b, and the
     * penalty adds d(ld_l2 LD_b^2)/dLD_b = 2 ld_l2 LD_b (bl is free now) */
    nf_real *dld = w->bl;
    for (int r = 0; r < B; r++) {
        dld[r] = (nf_real)(dlogp[r] + 2 * ld_l2 * (double)w->ld[r]);
        w->rw[r] = -dlogp[r];
    }
    w->row_cur = w->row0;
    backward_chain(f, w, f->grad, x, ctx, B, training, dctx, dx, training ? w->rw : NULL);
    return 0;
}

int nf_flow_data_init(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B) {
    nf_flow_unpack(f); /* the layers write parameters */
    int rc = check_args(f, w, ctx, B);
    if (rc) return rc;
    if (w->nt > 1) w = w->sub[0]; /* sized for the whole batch when a layer has data_init */
    if (B > w->Bm) B = w->Bm;
    w->row_cur = w->row0;
    memset(w->ld, 0, (size_t)B * sizeof *w->ld);
    const nf_real *in = x;
    for (int k = 0; k < f->nlayers; k++) {
        nf_layer *L = &f->layers[k];
        if (L->ops->data_init)
            L->ops->data_init(L, f->params + L->param_off, f->buffers + L->buf_off, in, B);
        nf_ctx c = layer_ctx(f, w, f->grad, k, ctx, B, 0);
        rc = L->ops->inverse(L, &c, in, w->h[k + 1], w->ld);
        if (rc && rc != NF_ENONFINITE) return rc;
        in = w->h[k + 1];
    }
    return 0;
}

/* ---- a flow as a conditional transformation ------------------------------------------------
 * The density pass used as a plain map v = T(z_in | ctx) with log|det dv/dz_in|
 * (variational dequantization samples v this way: a flow is a bijection in
 * either direction, and only this one has a backward).  No base
 * distribution: the caller supplies dL/dv (dout) and per-row weights on the
 * log-det (dlogdet_w: dL/dlogdet_b), and backward differentiates
 *   L = sum_b dout_b . v_b + dlogdet_w_b logdet_b
 * through the chain, accumulating into nf_flow_grad(f). */
int nf_flow_transform_grad(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                           int training, const nf_real *dout, const nf_real *dlogdet_w,
                           nf_real *out, nf_real *logdet, nf_real *dx, nf_real *dctx) {
    int rc = check_args(f, w, ctx, B);
    if (rc) return rc;
    if (B > w->Bm) return NF_ERANGE;
    if (w->infer && dout) return NF_EUNSUPPORTED;
    if (w->nt > 1)
        return par_grad(f, w, x, ctx, B, training, 1, dlogdet_w, 0, dout, NULL, logdet, out,
                        dx, dctx);
    w->row_cur = w->row0;
    rc = inverse_chunk(f, w, x, ctx, B, training);
    if (rc) return rc;
    if (out) memcpy(out, top(f, w, x), (size_t)B * f->D * sizeof *out);
    if (logdet) memcpy(logdet, w->ld, (size_t)B * sizeof *logdet);
    if (!dout) return 0;
    return nf_flow_transform_backward(f, w, x, ctx, B, training, dout, dlogdet_w, dx, dctx);
}

/* The backward half alone, after nf_flow_transform_grad (dout NULL) with the
 * same w, x, ctx, B and training flag: the layers read what that pass left
 * in the workspace.  Other flows' workspaces may be used in between. */
int nf_flow_transform_backward(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                               int training, const nf_real *dout, const nf_real *dlogdet_w,
                               nf_real *dx, nf_real *dctx) {
    int rc = check_args(f, w, ctx, B);
    if (rc) return rc;
    if (B > w->Bm || !dout) return B > w->Bm ? NF_ERANGE : NF_EINVAL;
    if (w->infer) return NF_EUNSUPPORTED;
    if (w->nt > 1)
        return par_grad(f, w, x, ctx, B, training, 2, dlogdet_w, 0, dout, NULL, NULL, NULL, dx,
                        dctx);
    if (ensure_grad(f)) return NF_ENOMEM;
    memcpy(w->g0, dout, (size_t)B * f->D * sizeof *w->g0);
    for (int r = 0; r < B; r++) w->bl[r] = dlogdet_w ? dlogdet_w[r] : 0;
    w->row_cur = w->row0;
    backward_chain(f, w, f->grad, x, ctx, B, training, dctx, dx, NULL);
    return 0;
}

/* ---- threaded workspaces ----------------------------------------------------------------------
 * One job splits B rows into np <= nt contiguous parts (the first B % np
 * parts one row longer) and runs part t on thread t with sub[t].  Parts are
 * never smaller than PAR_MIN_ROWS rows unless the rows would not fit the
 * parts' workspaces otherwise (gradient calls are one pass, no chunking). */
struct par_job {
    int kind;
    const nf_flow *f;
    nf_ws *w;
    int B, np, training, mode;
    const nf_real *x, *ctx, *wts, *dout;
    double ld_l2;
    nf_real *out, *out2, *logp, *dx, *dctx;
    int rc[NF_WS_MAX_THREADS];
    /* sampling from a normal base: the parts draw their own rows, part t
     * from rngs[t] (odd[t]: skipping the first value of its first pair) */
    const nf_rng *rngs;
    const unsigned char *odd;
    double temp;
};

static void part_range(const par_job *j, int t, int *start, int *n) {
    int base = j->B / j->np, rem = j->B % j->np;
    *start = t * base + (t < rem ? t : rem);
    *n = base + (t < rem);
}

#define ROWS(p, s, width) ((p) ? (p) + (size_t)(s) * (size_t)(width) : NULL)

static void par_part(void *arg, int t) {
    par_job *j = arg;
    if (t >= j->np) return;
    const nf_flow *f = j->f;
    nf_ws *w = j->w->sub[t];
    const int D = f->D, C = f->C;
    int s, n, rc = 0;
    part_range(j, t, &s, &n);
    w->row0 = j->w->row0 + s;
    w->row_cur = w->row0;
    const nf_real *xs = ROWS(j->x, s, D), *cs = ROWS(j->ctx, s, C);
    switch (j->kind) {
    case JOB_LOG_PROB:
        rc = nf_flow_log_prob(f, w, xs, cs, n, j->out + s);
        break;
    case JOB_ENCODE:
        rc = nf_flow_encode(f, w, xs, cs, n, ROWS(j->out, s, D), ROWS(j->out2, s, 1));
        break;
    case JOB_DECODE:
        rc = nf_flow_decode(f, w, xs, cs, n, ROWS(j->out, s, D), ROWS(j->out2, s, 1));
        break;
    case JOB_SAMPLE: {
        /* out holds the base draws z (or the part draws them: par_sample);
         * x = T(z) in place, through g0 */
        int bad = 0;
        if (j->rngs) {
            const nf_real *bp = f->params + f->base.param_off;
            nf_rng r = j->rngs[t];
            if (j->odd[t]) (void)nf_rng_normal(&r); /* the pair's first value: the part before's */
            nf_base_sample(&f->base, bp, &r, j->temp, n, j->out + (size_t)s * D);
            if (j->logp) nf_base_log_prob(&f->base, bp, j->out + (size_t)s * D, n, j->logp + s);
        }
        for (int c = 0; c < n && !rc; c += w->Bm) {
            int m = n - c < w->Bm ? n - c : w->Bm;
            nf_real *xr = j->out + (size_t)(s + c) * D;
            memcpy(w->g0, xr, (size_t)m * D * sizeof *xr);
            w->row_cur = w->row0 + c;
            rc = forward_chunk(f, w, w->g0, ROWS(j->ctx, s + c, C), m, xr, j->logp != NULL);
            if (rc == NF_ENONFINITE) bad = 1, rc = 0;
            if (!rc && j->logp)
                for (int r = 0; r < m; r++)
                    j->logp[s + c + r] = (nf_real)((double)j->logp[s + c + r] - (double)w->ld[r]);
        }
        if (!rc && bad) rc = NF_ENONFINITE;
        break;
    }
    case JOB_GRAD_FWD:
        rc = inverse_chunk(f, w, xs, cs, n, j->training);
        if (rc) break;
        if (j->mode == 0) {
            nf_base_log_prob(&f->base, f->params + f->base.param_off, top(f, w, xs), n, w->bl);
            if (j->logp)
                for (int r = 0; r < n; r++)
                    j->logp[s + r] = (nf_real)((double)w->bl[r] + (double)w->ld[r]);
        } else if (j->out) {
            memcpy(j->out + (size_t)s * D, top(f, w, xs), (size_t)n * D * sizeof *j->out);
        }
        if (j->out2) memcpy(j->out2 + s, w->ld, (size_t)n * sizeof *w->ld);
        break;
    case JOB_GRAD_BWD: {
        nf_real *grad = t == 0 ? f->grad : j->w->pgrad[t];
        if (j->mode == 0) {
            memset(w->g0, 0, (size_t)n * D * sizeof *w->g0);
            nf_base_log_prob_backward(&f->base, f->params + f->base.param_off,
                                      grad + f->base.param_off, top(f, w, xs), n, j->wts + s,
                                      w->g0);
            for (int r = 0; r < n; r++) {
                w->bl[r] = (nf_real)(j->wts[s + r] + 2 * j->ld_l2 * (double)w->ld[r]);
                w->rw[r] = -j->wts[s + r];
            }
        } else {
            memcpy(w->g0, j->dout + (size_t)s * D, (size_t)n * D * sizeof *w->g0);
            for (int r = 0; r < n; r++) w->bl[r] = j->wts ? j->wts[s + r] : 0;
        }
        w->row_cur = w->row0;
        if (j->np > 1) nf_defer_begin(&w->defer, grad);
        backward_chain(f, w, grad, xs, cs, n, j->training, ROWS(j->dctx, s, C),
                       ROWS(j->dx, s, D), j->mode == 0 && j->training ? w->rw : NULL);
        nf_defer_cur = NULL;
        break;
    }
    }
    j->rc[t] = rc;
}

/* Run j over its parts; the first hard error, else NF_ENONFINITE if a part
 * had one, else 0. */
static int par_rows(par_job *j) {
    if (j->np == 1) par_part(j, 0);
    else nf_pool_run(j->w->pool, par_part, j);
    int bad = 0;
    for (int t = 0; t < j->np; t++) {
        if (j->rc[t] == NF_ENONFINITE) bad = 1;
        else if (j->rc[t]) return j->rc[t];
    }
    return bad ? NF_ENONFINITE : 0;
}

/* parts for B rows: all threads once each gets PAR_MIN_ROWS rows; with
 * one-pass (gradient) calls at least enough parts to fit the rows */
static int parts_for(const nf_ws *w, int B, int one_pass) {
    int np = B / PAR_MIN_ROWS < w->nt ? B / PAR_MIN_ROWS : w->nt;
    if (np < 1) np = 1;
    if (one_pass)
        while (np < w->nt && (B + np - 1) / np > w->sub[np > 1 ? 1 : 0]->Bm) np++;
    return np;
}

static par_job job_init(int kind, const nf_flow *f, nf_ws *w, int B, int one_pass) {
    par_job j;
    memset(&j, 0, sizeof j);
    j.kind = kind;
    j.f = f;
    j.w = w;
    j.B = B;
    j.np = parts_for(w, B, one_pass);
    return j;
}

static int par_log_prob(const nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                        nf_real *out) {
    par_job j = job_init(JOB_LOG_PROB, f, w, B, 0);
    j.x = x;
    j.ctx = ctx;
    j.out = out;
    int rc = par_rows(&j);
    return rc == NF_ENONFINITE ? 0 : rc; /* log_prob reports those rows as -inf */
}

/* encode (JOB_ENCODE: in = x, out = z) or decode (JOB_DECODE: in = z, out = x) */
static int par_map(int kind, const nf_flow *f, nf_ws *w, const nf_real *in, const nf_real *ctx,
                   int B, nf_real *out, nf_real *logdet) {
    par_job j = job_init(kind, f, w, B, 0);
    j.x = in;
    j.ctx = ctx;
    j.out = out;
    j.out2 = logdet;
    return par_rows(&j);
}

/* The base draws come from one stream in row order, exactly as a plain
 * workspace draws them chunk by chunk, so a seed gives the same samples
 * whatever the workspace; then the rows are transformed in parallel.
 * A normal or diagonal-normal base takes one Box-Muller value per entry in
 * order (two per pair of uniforms, nf_rng_normal), so value v of the stream
 * is value v % 2 of pair v / 2: this thread only steps the generator to
 * each part's first pair (two uniforms a pair, no log, sine or cosine), and
 * each part draws its own rows from there, the same values in parallel. */
static int par_sample(const nf_flow *f, nf_ws *w, int n, double T, uint64_t seed,
                      const nf_real *ctx, nf_real *x, nf_real *log_prob) {
    nf_rng rng;
    nf_rng_seed(&rng, seed);
    const nf_real *bp = f->params + f->base.param_off;
    par_job j = job_init(JOB_SAMPLE, f, w, n, 0);
    nf_rng rngs[NF_WS_MAX_THREADS];
    unsigned char odd[NF_WS_MAX_THREADS];
    if (f->base.kind == NF_BASE_NORMAL || f->base.kind == NF_BASE_DIAG) {
        uint64_t pair = 0; /* pairs the generator has stepped past */
        for (int t = 0; t < j.np; t++) {
            int s0, m;
            part_range(&j, t, &s0, &m);
            uint64_t v0 = (uint64_t)s0 * (uint64_t)f->D;
            for (; pair < v0 / 2; pair++) {
                (void)nf_rng_u64(&rng);
                (void)nf_rng_u64(&rng);
            }
            rngs[t] = rng;
            odd[t] = (unsigned char)(v0 % 2);
        }
        j.rngs = rngs;
        j.odd = odd;
        j.temp = T;
    } else {
        for (int s = 0; s < n; s += w->Bm) {
            int m = n - s < w->Bm ? n - s : w->Bm;
            nf_base_sample(&f->base, bp, &rng, T, m, x + (size_t)s * f->D);
            if (log_prob) nf_base_log_prob(&f->base, bp, x + (size_t)s * f->D, m, log_prob + s);
        }
    }
    j.ctx = ctx;
    j.out = x;
    j.logp = log_prob;
    int rc = par_rows(&j);
    return rc == NF_ENONFINITE ? 0 : rc;
}

/* flow gradient += the parts' gradients, over parameter ranges on the
 * pool; the parts' buffers are left zero for the next call.  The ranges
 * the parts deferred (rg: nrg sorted [start, end) pairs) hold the final
 * values already and the parts' buffers are zero there: they are only
 * squared.  Each pass also takes the sum of squares of its range of the
 * result exactly as nf_clip_grad_norm_ws does (four partial sums in
 * double, lane (i - i0) % 4, the last (i1 - i0) % 4 entries into the
 * first, added in this order), which saves the trainer's norm a pass. */
typedef struct reduce_job {
    nf_real *g, **pgrad;
    int nparts;
    const size_t *rg;
    int nrg;
    double ss[NF_PAR_MAX];
} reduce_job;

/* [a, b) of the range that started at i0; entries at or past q into s[0] */
NF_VEC static void reduce_seg(const reduce_job *r, size_t a, size_t b, int add, size_t i0,
                              size_t q, double *s) {
    nf_real *restrict g = r->g;
    if (add) {
        for (int u = 1; u < r->nparts; u++) {
            nf_real *restrict pg = r->pgrad[u];
            for (size_t i = a; i < b; i++) {
                g[i] += pg[i];
                pg[i] = 0;
            }
        }
    }
    size_t i = a, qe = b < q ? b : q;
    for (; i < qe && ((i - i0) & 3); i++) s[(i - i0) & 3] += (double)g[i] * g[i];
    double s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    for (; i + 4 <= qe; i += 4) {
        s0 += (double)g[i] * g[i];
        s1 += (double)g[i + 1] * g[i + 1];
        s2 += (double)g[i + 2] * g[i + 2];
        s3 += (double)g[i + 3] * g[i + 3];
    }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
    for (; i < qe; i++) s[(i - i0) & 3] += (double)g[i] * g[i];
    for (; i < b; i++) s[0] += (double)g[i] * g[i];
}

static void reduce_part(void *arg, size_t i0, size_t i1, int t) {
    reduce_job *r = arg;
    double s[4] = {0, 0, 0, 0};
    size_t q = i0 + ((i1 - i0) & ~(size_t)3), i = i0;
    int k = 0;
    while (k < r->nrg && r->rg[2 * k + 1] <= i0) k++;
    while (i < i1) {
        if (k < r->nrg && r->rg[2 * k] <= i) { /* inside deferred range k */
            size_t e = r->rg[2 * k + 1] < i1 ? r->rg[2 * k + 1] : i1;
            reduce_seg(r, i, e, 0, i0, q, s);
            i = e;
            k++;
        } else {
            size_t e = k < r->nrg && r->rg[2 * k] < i1 ? r->rg[2 * k] : i1;
            reduce_seg(r, i, e, 1, i0, q, s);
            i = e;
        }
    }
    r->ss[t] = (s[0] + s[1]) + (s[2] + s[3]);
}

typedef struct defer_job {
    nf_defer *parts[NF_WS_MAX_THREADS];
    int np;
    nf_real *grad;
} defer_job;

static void defer_part(void *arg, int t) {
    defer_job *d = arg;
    if (t < d->np) nf_defer_run(d->parts, d->np, d->grad, t, d->np);
}

/* the parts' deferred weight gradients into f->grad, then the parts'
 * buffers summed in (all but the deferred ranges) with the norm's squares */
static void par_reduce(nf_flow *f, nf_ws *w, int np) {
    defer_job d = {.np = np, .grad = f->grad};
    int recorded = 0, failed = 0;
    for (int t = 0; t < np; t++) {
        d.parts[t] = &w->sub[t]->defer;
        recorded += d.parts[t]->n;
        failed |= d.parts[t]->failed;
    }
    int nrg = 0;
    if (recorded) {
        nf_pool_run(w->pool, defer_part, &d);
        if (!failed && 4 * recorded > w->dranges_cap) {
            size_t *r = nf_realloc(w->dranges, 4 * (size_t)recorded * sizeof *r);
            if (r) w->dranges = r, w->dranges_cap = 4 * recorded;
        }
        /* a part that computed a product in place (no memory to record
         * it) left it in its buffer: sum everything then */
        if (!failed && w->dranges_cap >= 4 * recorded)
            nrg = nf_defer_ranges(d.parts, np, w->dranges, w->dranges_cap);
        if (nrg < 0) nrg = 0;
    }
    reduce_job r = {.g = f->grad, .pgrad = w->pgrad, .nparts = np, .rg = w->dranges, .nrg = nrg};
    w->gss_np = nf_ws_parallel_for(w, f->nparams, reduce_part, &r);
    memcpy(w->gss, r.ss, sizeof r.ss);
    w->gss_grad = f->grad;
    w->gss_n = f->nparams;
}

int nf_ws_grad_sumsq(const nf_ws *w, const nf_real *grad, size_t n, double *ss) {
    if (!w || !grad || w->gss_grad != grad || w->gss_n != n) return 0;
    double s = 0;
    for (int t = 0; t < w->gss_np; t++) s += w->gss[t];
    *ss = s;
    return 1;
}

void nf_ws_grad_changed(nf_ws *w) {
    if (w) w->gss_grad = NULL;
}

/* mode 0: log_prob_grad_ex (wts = dlogp); 1: transform_grad (wts =
 * dlogdet_w); 2: transform_backward alone, after a mode-1 call without dout
 * on the same rows (the parts' workspaces still hold that pass). */
static int par_grad(nf_flow *f, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                    int training, int mode, const nf_real *wts, double ld_l2,
                    const nf_real *dout, nf_real *logp, nf_real *logdet, nf_real *out,
                    nf_real *dx, nf_real *dctx) {
    par_job j = job_init(JOB_GRAD_FWD, f, w, B, 1);
    w->gss_grad = NULL;
    j.x = x;
    j.ctx = ctx;
    j.training = training;
    j.mode = mode;
    j.wts = wts;
    j.ld_l2 = ld_l2;
    j.dout = dout;
    if (mode != 2) {
        j.logp = logp;
        j.out = out;
        j.out2 = logdet;
        int rc = par_rows(&j);
        if (rc) return rc; /* out of support: no gradient */
        if (mode == 0 ? !wts : !dout) return 0;
    }
    if (ensure_grad(f)) return NF_ENOMEM;
    for (int t = 1; t < j.np; t++)
        if (!w->pgrad[t] && !(w->pgrad[t] = nf_calloc(f->nparams + 1, sizeof(nf_real))))
            return NF_ENOMEM;
    j.kind = JOB_GRAD_BWD;
    j.dx = dx;
    j.dctx = dctx;
    par_rows(&j);
    if (j.np > 1) par_reduce(f, w, j.np);
    return 0;
}

/* ---- element ranges on a workspace's threads (nf_internal.h) -------------------------------- */
typedef struct range_job {
    size_t n, per;
    void (*fn)(void *arg, size_t i0, size_t i1, int t);
    void *arg;
    int np;
} range_job;

static void range_part(void *arg, int t) {
    range_job *r = arg;
    if (t >= r->np) return;
    size_t i0 = r->per * (size_t)t, i1 = i0 + r->per < r->n ? i0 + r->per : r->n;
    r->fn(r->arg, i0, i1, t);
}

int nf_ws_parallel_for(nf_ws *w, size_t n, void (*fn)(void *arg, size_t i0, size_t i1, int t),
                       void *arg) {
    int nt = w && w->nt > 1 ? w->nt : 1;
    size_t min = (size_t)1 << 16;
    int np = n / min < (size_t)nt ? (int)(n / min) : nt;
    if (np <= 1) {
        fn(arg, 0, n, 0);
        return 1;
    }
    range_job r = {n, (n / (size_t)np + 15) & ~(size_t)15, fn, arg, np};
    while (r.per * (size_t)(r.np - 1) >= n) r.np--; /* every part non-empty */
    nf_pool_run(w->pool, range_part, &r);
    return r.np;
}

static void zero_part(void *arg, size_t i0, size_t i1, int t) {
    (void)t;
    memset((nf_real *)arg + i0, 0, (i1 - i0) * sizeof(nf_real));
}

int nf_flow_zero_grad_ws(nf_flow *f, nf_ws *w) {
    if (ensure_grad(f)) return NF_ENOMEM;
    nf_ws_grad_changed(w);
    nf_ws_parallel_for(w, f->nparams, zero_part, f->grad);
    return 0;
}

/* ---- continuous flows' counters and descriptions (nf.h) ------------------------------ */
void nf_ws_ode_stats(const nf_ws *w, nf_ode_stats *out) {
    *out = w->ode;
    for (int t = 0; w->sub && t < w->nt; t++) {
        const nf_ode_stats *s = &w->sub[t]->ode;
        out->solves += s->solves;
        out->rows += s->rows;
        out->nfe += s->nfe;
        out->nfe_backward += s->nfe_backward;
        out->row_nfe += s->row_nfe;
        out->accepted += s->accepted;
        out->rejected += s->rejected;
        out->kinetic += s->kinetic;
        out->jacobian += s->jacobian;
        out->reg_rows += s->reg_rows;
    }
}

void nf_ws_ode_stats_reset(nf_ws *w) {
    memset(&w->ode, 0, sizeof w->ode);
    for (int t = 0; w->sub && t < w->nt; t++) memset(&w->sub[t]->ode, 0, sizeof w->ode);
}

void nf_ws_set_pace(nf_ws *w, void (*pace)(void *user, double work_s), void *user) {
    w->pace = pace;
    w->pace_user = user;
    for (int t = 0; w->sub && t < w->nt; t++) nf_ws_set_pace(w->sub[t], pace, user);
}

void nf_ws_set_noise_seed(nf_ws *w, uint64_t seed) {
    w->noise_seed = seed;
    for (int t = 0; w->sub && t < w->nt; t++) w->sub[t]->noise_seed = seed;
}

int nf_flow_num_ode(const nf_flow *f) {
    nf_cnf_desc d;
    int n = 0;
    for (int k = 0; k < f->nlayers; k++) n += nf_cnf_info(&f->layers[k], &d);
    return n;
}

int nf_flow_log_prob_exact(const nf_flow *f) {
    nf_cnf_desc d;
    for (int k = 0; k < f->nlayers; k++)
        if (nf_cnf_info(&f->layers[k], &d) && strcmp(d.score_trace, "exact")) return 0;
    return 1;
}

char *nf_flow_ode_json(const nf_flow *f) {
    if (!nf_flow_num_ode(f)) return NULL;
    char *cfg = nf_flow_config_json(f);
    char *o = cfg ? nf_config_ode_json(cfg) : NULL;
    nf_free(cfg);
    return o;
}
