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

#include "nf.h"

#include <cjson/cJSON.h>

typedef struct nf_model {
    nf_flow *flow;   /* owned */
    cJSON *header;   /* owned: the whole header object */
    int dequantize;  /* 1 if rows are integer levels to be dequantized */
    int levels;
    nf_flow *dequantizer; /* owned: q(u|x) for "variational", else NULL */
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

/* A forward-only workspace of m->flow for batches of at most max_batch
 * rows (nf_ws_create_inference) that also holds what scoring a dequantized
 * model needs (the noisy rows; q's workspace and scratch), so that
 * nf_model_log_prob allocates nothing.  Free with nf_ws_free. */
int nf_model_ws_create(const nf_model *m, int max_batch, nf_ws **out);

/* log p(x) for raw rows (B,D): dequantized models get fixed-seed U[0,1)
 * noise per row (the seed makes scores reproducible); with a dequantizer,
 * the variational bound with fixed-seed eps.  out (B) as for
 * nf_flow_log_prob.  w is a workspace of m->flow; any kind works, and one
 * from nf_model_ws_create allocates nothing here (another gets the
 * dequantizer's state attached on its first dequantized call, once, freed
 * with it: core/dequant.c). */
int nf_model_log_prob(const nf_model *m, nf_ws *w, const nf_real *x, const nf_real *ctx, int B,
                      nf_real *out);

int nf_file_read(const char *path, void **buf, size_t *len);   /* NF_EIO */
int nf_file_write(const char *path, const void *buf, size_t len); /* via temp + rename */

#endif
