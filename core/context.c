/* context.c: the raw-row layout of conditional flows (context.h). */
#include "alloc.h"
#include "context.h"

#include "nf_internal.h"

#include <math.h>
#include <string.h>

int nf_context_dim(const nf_context_spec *s) {
    return s->kind == NF_CTX_COLUMNS ? s->ncols : s->kind == NF_CTX_LABELS ? s->classes : 0;
}

int nf_context_data_dim(const nf_context_spec *s) {
    return s->kind == NF_CTX_NONE ? s->width : s->width - s->ncols;
}

int nf_context_check(const nf_context_spec *s, char *err, size_t errlen) {
    if (s->kind == NF_CTX_NONE) return 0;
    if ((unsigned)s->kind >= NF_CTX_KIND_COUNT || s->ncols < 1 || s->ncols > NF_CTX_MAX_COLUMNS ||
        (s->kind == NF_CTX_LABELS && s->ncols != 1)) {
        nf_set_err(err, errlen, "context: bad kind or column count");
        return NF_EINVAL;
    }
    if (s->ncols >= s->width) {
        nf_set_err(err, errlen, "context: %d of the rows' %d columns are context, leaving no data "
                   "columns", s->ncols, s->width);
        return NF_EINVAL;
    }
    for (int i = 0; i < s->ncols; i++) {
        if (s->cols[i] < 0 || s->cols[i] >= s->width) {
            nf_set_err(err, errlen, "context: column %d is outside the rows' %d columns (0 to %d)",
                       s->cols[i], s->width, s->width - 1);
            return NF_EINVAL;
        }
        for (int k = 0; k < i; k++)
            if (s->cols[k] == s->cols[i]) {
                nf_set_err(err, errlen, "context: column %d is listed twice", s->cols[i]);
                return NF_EINVAL;
            }
    }
    if (s->kind == NF_CTX_LABELS && (s->classes < 1 || s->classes > NF_CTX_MAX_CLASSES)) {
        nf_set_err(err, errlen, "context: classes must be in [1, %d] (have %d)", NF_CTX_MAX_CLASSES,
                   s->classes);
        return NF_EINVAL;
    }
    return 0;
}

void nf_context_onehot(int K, int k, nf_real *row) {
    for (int i = 0; i < K; i++) row[i] = (nf_real)(i == k);
}

int nf_context_split(const nf_context_spec *s, const nf_real *rows, int64_t n, nf_real *x,
                     nf_real *ctx, int64_t *bad_row, char *err, size_t errlen) {
    int W = s->width, D = nf_context_data_dim(s), C = nf_context_dim(s);
    for (int64_t r = 0; r < n; r++) {
        const nf_real *row = rows + (size_t)r * W;
        nf_real *xr = x + (size_t)r * D, *cr = ctx + (size_t)r * C;
        for (int j = 0, k = 0; j < W; j++) {
            int c = -1;
            for (int i = 0; i < s->ncols; i++)
                if (s->cols[i] == j) c = i;
            if (c < 0) xr[k++] = row[j];
            else if (s->kind == NF_CTX_COLUMNS) cr[c] = row[j];
        }
        if (s->kind == NF_CTX_LABELS) {
            double v = row[s->cols[0]];
            if (!(v >= 0 && v < s->classes && v == floor(v))) {
                if (bad_row) *bad_row = r;
                nf_set_err(err, errlen, "row %lld: label %g is not a class in [0, %d)", (long long)r, v,
                           s->classes);
                return NF_ERANGE;
            }
            nf_context_onehot(s->classes, (int)v, cr);
        }
    }
    return 0;
}

int nf_context_parse_columns(const cJSON *v, const char *field, int *cols, int *n, char *err,
                             size_t errlen) {
    *n = 0;
    const cJSON *e;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 ||
        cJSON_GetArraySize(v) > NF_CTX_MAX_COLUMNS)
        goto bad;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble < (1 << 30)) ||
            e->valuedouble != floor(e->valuedouble))
            goto bad;
        cols[(*n)++] = (int)e->valuedouble;
    }
    return 0;
bad:
    *n = 0;
    nf_set_err(err, errlen, "%s: must be a list of 1 to %d column indices (integers from 0)", field,
               NF_CTX_MAX_COLUMNS);
    return NF_EINVAL;
}

cJSON *nf_context_to_json(const nf_context_spec *s) {
    if (s->kind == NF_CTX_NONE) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "kind", s->kind == NF_CTX_COLUMNS ? "columns" : "labels");
    cJSON_AddNumberToObject(o, "width", s->width);
    if (s->kind == NF_CTX_COLUMNS) {
        nf_json_attach(o, "columns", cJSON_CreateIntArray(s->cols, s->ncols));
    } else {
        cJSON_AddNumberToObject(o, "column", s->cols[0]);
        cJSON_AddNumberToObject(o, "classes", s->classes);
    }
    return o;
}

int nf_context_from_json(const cJSON *o, nf_context_spec *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    static const char *const kinds[] = {"none", "columns", "labels", NULL};
    int kind = 0;
    if (!cJSON_IsObject(o) || nf_json_enum(o, "kind", kinds, 0, &kind, err, errlen) || kind == 0 ||
        nf_json_int(o, "width", 0, 2, 1 << 30, &s->width, err, errlen))
        goto bad;
    s->kind = (nf_ctx_kind)kind;
    if (s->kind == NF_CTX_COLUMNS) {
        if (nf_context_parse_columns(nf_json_get(o, "columns"), "columns", s->cols, &s->ncols, err,
                                     errlen))
            goto bad;
    } else {
        s->ncols = 1;
        if (nf_json_int(o, "column", 0, 0, 1 << 30, &s->cols[0], err, errlen) ||
            nf_json_int(o, "classes", 0, 1, NF_CTX_MAX_CLASSES, &s->classes, err, errlen))
            goto bad;
    }
    if (nf_context_check(s, err, errlen)) goto bad;
    return 0;
bad:
    if (err && errlen && !err[0]) nf_set_err(err, errlen, "context: malformed");
    memset(s, 0, sizeof *s);
    return NF_EFORMAT;
}
