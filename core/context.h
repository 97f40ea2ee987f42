/* context.h: where the context c of a conditional flow p(x | c) comes from
 * in a row of raw data.
 *
 * A conditional model is trained on rows of width W that hold both x and
 * c, and is scored on rows of the same layout (a CSV or .npy body, `flowd
 * eval` files).  Two kinds:
 *
 *   columns  c is the listed columns of the row (in the listed order), x
 *            the other W - C columns in their order.  Context values are
 *            fed to the conditioners as given.
 *   labels   one column holds a class label, an integer in [0, K); c is its
 *            one-hot vector of width K (context_dim K), x the other W - 1
 *            columns.
 *
 * As JSON (the model file keeps it as preprocess.context):
 *   {"kind":"columns","width":W,"columns":[i,...]}
 *   {"kind":"labels","width":W,"column":k,"classes":K}
 * Core, leaf: no I/O. */
#ifndef NF_CONTEXT_H
#define NF_CONTEXT_H

#include "nf.h"

#include <cjson/cJSON.h>
#include <stdint.h>

#define NF_CTX_MAX_COLUMNS 256   /* context columns of a "columns" context */
#define NF_CTX_MAX_CLASSES 1024  /* classes of a "labels" context */

typedef enum { NF_CTX_NONE = 0, NF_CTX_COLUMNS, NF_CTX_LABELS, NF_CTX_KIND_COUNT } nf_ctx_kind;

typedef struct nf_context_spec {
    nf_ctx_kind kind;
    int width;                      /* W: values in a raw row */
    int ncols;                      /* context columns: C (columns) or 1 (labels) */
    int cols[NF_CTX_MAX_COLUMNS];   /* their indices in the raw row */
    int classes;                    /* labels: K */
} nf_context_spec;

/* The flow's context_dim (0 for NF_CTX_NONE) and data dim W - ncols. */
int nf_context_dim(const nf_context_spec *s);
int nf_context_data_dim(const nf_context_spec *s);

/* Checks a spec: columns distinct and in [0, W), at least one x column,
 * classes in [1, NF_CTX_MAX_CLASSES].  NF_EINVAL with a message. */
int nf_context_check(const nf_context_spec *s, char *err, size_t errlen);

/* Split n raw rows (n, W) into x (n, W - ncols) and ctx (n, C).  A label
 * that is not an integer in [0, K) is NF_ERANGE: *bad_row (may be NULL)
 * is the row and err names it. */
int nf_context_split(const nf_context_spec *s, const nf_real *rows, int64_t n, nf_real *x,
                     nf_real *ctx, int64_t *bad_row, char *err, size_t errlen);

/* The one-hot row (K) of label k (0 <= k < K). */
void nf_context_onehot(int K, int k, nf_real *row);

/* A JSON list of 1..NF_CTX_MAX_COLUMNS column indices (integers >= 0)
 * into cols; field names it in the message.  NF_EINVAL. */
int nf_context_parse_columns(const cJSON *v, const char *field, int *cols, int *n, char *err,
                             size_t errlen);

/* JSON forms (above).  to_json: NULL when out of memory or kind NONE;
 * caller cJSON_Deletes.  from_json: NF_EFORMAT with a message. */
cJSON *nf_context_to_json(const nf_context_spec *s);
int nf_context_from_json(const cJSON *o, nf_context_spec *s, char *err, size_t errlen);

#endif
