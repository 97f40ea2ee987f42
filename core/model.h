/* model.h: the self-describing model file, one format for `flowd train
 * --out`, the daemon's stored model versions, downloads and imports.
 *
 *   "NFMD"  u32 format version (1, or 2 with a dequantizer)
 *   u64 header length, header: UTF-8 JSON
 *       {"format":"flowd-model","format_version":1|2,
 *        "flow": <nf_flow_config_json: dim, context_dim, base, layers, seed>,
 *        "preprocess": {"standardize":bool, "dequantize":{"kind","levels"}|null,
 *                       "logit":{"alpha"}|null},
 *        "likelihood": "exact" | "dequantized_lower_bound",
 *        "dequantizer": {"flow": <config of q>}   (version 2 only),
 *        "metrics": {...training figures...}, "created_at": ISO-8601}
 *   u64 parameter blob length, parameter blob (nf_flow_save_params: NFPB)
 *   version 2 with "dequantizer": u64 length, q's parameter blob (NFPB)
 *   u32 CRC-32 of every byte before it
 * All integers little-endian.  Preprocessing is also *inside* the flow as
 * fixed layers (elementwise_affine, logit), so log_prob of raw rows is exact
 * in the data's own units; the "preprocess" object records what was done,
 * and "dequantize" tells scorers to add U[0,1) noise to integer rows, or,
 * for {"kind":"variational"}, noise drawn from the stored dequantizer flow
 * q(u|x) (train.h), scoring the bound log p(x+u) - log q(u|x).  Models
 * without a dequantizer are written as version 1, readable by older builds;
 * version 1 files stay readable. */
#ifndef NF_MODEL_H
#define NF_MODEL_H

#include "context.h"
#include "nf.h"

#include <cjson/cJSON.h>

typedef struct nf_model {
    nf_flow *flow;   /* owned */
    cJSON *header;   /* owned: the whole header object */
    int dequantize;  /* 1 if rows are integer levels to be dequantized */
    int levels;
    nf_flow *dequantizer; /* owned: q(u|x) for "variational", else NULL */
    uint64_t noise_key;   /* the model's part of each row's noise seed (nf_model_load: from
                             the file's CRC-32 and length; 0 for a model built in memory) */
    nf_context_spec context; /* raw-row layout of a conditional model (preprocess.context;
                                for a conditional flow without one: the context as the
                                last C columns); kind NF_CTX_NONE when C == 0 */
} nf_model;

/* Serialise flow + header fields.  preprocess and metrics are borrowed
 * (may be NULL); created_at is an ISO-8601 string or NULL.  *buf malloc'd,
 * caller free()s. */
int nf_model_save(const nf_flow *flow, const cJSON *preprocess, const cJSON *metrics,
                  const char *created_at, void **buf, size_t *len);
/* The same with a variational dequantizer q (may be NULL: then exactly
 * nf_model_save).  preprocess.dequantize should say {"kind":"variational"}. */
int nf_model_save_ex(const nf_flow *flow, const nf_flow *dequantizer, const cJSON *preprocess,
                     const cJSON *metrics, const char *created_at, void **buf, size_t *len);
/* Parse and verify (magic, version, CRC, header, flow config, parameter
 * blob).  NF_ECORRUPT for a checksum mismatch or truncation, NF_EFORMAT for
 * anything else malformed; err says which.  Caller frees with nf_model_free. */
int nf_model_load(const void *buf, size_t len, nf_model **out, char *err, size_t errlen);
void nf_model_free(nf_model *m);
/* nf_flow_pack_max on the model's flow and dequantizer (each capped at
 * max_bytes): what a model loaded to serve wants (the daemon's cache and
 * the CLI's scoring do it, NF_PACK_MAX_BYTES unless told otherwise).  On
 * NF_ENOMEM the model stays usable, unpacked. */
#define NF_PACK_MAX_BYTES ((size_t)4 << 20)
int nf_model_pack(nf_model *m, size_t max_bytes);

/* A forward-only workspace of m->flow for batches of at most max_batch
 * rows (nf_ws_create_inference) that also holds what scoring a dequantized
 * model needs (the noisy rows; q's workspace and scratch), so that
 * nf_model_log_prob allocates nothing.  Free with nf_ws_free. */
int nf_model_ws_create(const nf_model *m, int max_batch, nf_ws **out);

/* log p(x | ctx) for raw rows (B,D): dequantized models get U[0,1) noise
 * per row; with a dequantizer, the variational bound log p(x+u) -
 * log q(u|x) with u from eps ~ N(0,I).  Each row's noise is drawn from a
 * generator seeded by nf_model_row_seed(m, row, its context row, 0): a
 * function of the row's values, its context and the model alone, so a
 * row's score does not depend on its index, the batch or the chunking.
 * out (B) as for nf_flow_log_prob.  w is a workspace of m->flow; any kind works, and one
 * from nf_model_ws_create allocates nothing here (another gets the
 * dequantizer's state attached on its first dequantized call, once, freed
 * with it: core/dequant.c). */
int nf_model_log_prob(const nf_model *m, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                      nf_real *out);
/* The importance-weighted estimate with K draws (1 <= K <= NF_MODEL_MAX_IW_SAMPLES):
 *   out_b = log (1/K) sum_k p(x_b + u_k | c_b) / q(u_k | x_b)
 * (q = 1 for uniform noise), u_k from nf_model_row_seed(m, x_b, c_b, k), by
 * a log-sum-exp.  K = 1 is nf_model_log_prob's bound; its expectation
 * grows with K towards log P(x) (Burda et al.'s IWAE bound), and for
 * uniform noise the estimate's variance falls.  Exact models ignore K.
 * NF_EINVAL for K out of range. */
#define NF_MODEL_MAX_IW_SAMPLES 64
int nf_model_log_prob_iw(const nf_model *m, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                         int K, nf_real *out);
/* The seed of row x's (D values) noise draw k with context row ctx (C
 * values, NULL when C == 0). */
uint64_t nf_model_row_seed(const nf_model *m, const nf_real *x, const nf_real *ctx, int k);

int nf_file_read(const char *path, void **buf, size_t *len);   /* NF_EIO */
int nf_file_write(const char *path, const void *buf, size_t len); /* via temp + fsync + rename + fsync of the directory */
/* fsync of the directory holding path (after a rename into it): 0 or NF_EIO */
int nf_fsync_dir(const char *path);

#endif
