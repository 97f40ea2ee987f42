/* data.c: dataset loaders (CSV, .npy, IDX, JSON rows), 2-D toy generators,
 * seeded splitting and column statistics.  See data.h for the contracts.
 *
 * Assumptions the parsers rely on:
 *  - input bytes are untrusted and need not be NUL-terminated; every read is
 *    bounds-checked against the buffer end before it happens;
 *  - sizes are multiplied only through mul_cap(), which refuses anything past
 *    NF_DATA_MAX_VALUES, so no product can overflow;
 *  - the value array is allocated only after the input is known to hold that
 *    many values (binary formats: exact byte count; CSV/JSON: at most one value
 *    per input byte), so a tiny hostile input cannot ask for gigabytes;
 *  - binary values are assembled byte by byte with explicit endianness, so
 *    neither host byte order nor alignment matters.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* strtod_l, newlocale */
#endif
#include "alloc.h"
#include "data.h"
#include "blob.h"
#include "npy.h"
#include "nf_internal.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <cjson/cJSON.h>

#ifdef NF_DOUBLE
#define REAL_MAX DBL_MAX
#define REAL_NAME "double"
#else
#define REAL_MAX FLT_MAX
#define REAL_NAME "float32"
#endif

#define PI 3.14159265358979323846

/* err helper: writes the message, returns status so callers can `return fail(...)`. */
#define fail(status, ...) (nf_set_err(err, errlen, __VA_ARGS__), (status))

/* a*b if both >= 0 and the product is <= cap, else -1. */
static int64_t mul_cap(int64_t a, int64_t b, int64_t cap) {
    if (a < 0 || b < 0) return -1;
    if (a == 0 || b == 0) return 0;
    if (a > cap / b) return -1;
    return a * b;
}

/* ---- the dataset ------------------------------------------------------------ */
void nf_data_free(nf_data *d) {
    if (!d) return;
    nf_free(d->x);
    memset(d, 0, sizeof *d);
}

int nf_data_alloc(nf_data *out, int64_t n, int d, char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "nf_data_alloc: out is NULL");
    memset(out, 0, sizeof *out);
    if (n < 1 || d < 1) return fail(NF_ERANGE, "empty dataset (%lld rows, %d columns)", (long long)n, d);
    int64_t cnt = mul_cap(n, d, NF_DATA_MAX_VALUES);
    if (cnt < 0)
        return fail(NF_ERANGE, "%lld rows x %d columns exceeds the limit of %lld values",
                    (long long)n, d, (long long)NF_DATA_MAX_VALUES);
    out->x = nf_malloc((size_t)cnt * sizeof(nf_real));
    if (!out->x) return fail(NF_ENOMEM, "out of memory for %lld values", (long long)cnt);
    out->n = n;
    out->d = d;
    return 0;
}

int nf_data_summarize(nf_data *dat, char *err, size_t errlen) {
    if (!dat || !dat->x || dat->n < 1 || dat->d < 1) return fail(NF_EINVAL, "empty dataset");
    int64_t cnt = dat->n * dat->d;
    double lo = INFINITY, hi = -INFINITY;
    int integer = 1;
    for (int64_t i = 0; i < cnt; i++) {
        double v = (double)dat->x[i];
        if (!isfinite(v))
            return fail(NF_ENONFINITE,
                        "row %lld, column %d (0-based): value is NaN, infinite or outside the "
                        REAL_NAME " range",
                        (long long)(i / dat->d), (int)(i % dat->d));
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        if (integer && v != floor(v)) integer = 0;
    }
    dat->vmin = lo;
    dat->vmax = hi;
    dat->is_integer = integer;
    return 0;
}

/* ---- gzip ------------------------------------------------------------------- */
static int is_gzip(const unsigned char *p, size_t len) {
    return len >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

/* Inflates a gzip stream (concatenated members allowed) into a growing
 * buffer that never exceeds NF_DATA_MAX_INFLATE.  *out is malloc'd. */
/* lim->reserve(bytes) before an allocation of the load (no callback: yes) */
static int reserve(nf_data_limits *lim, size_t bytes, char *err, size_t errlen) {
    if (!lim || !lim->reserve || !lim->reserve(lim->reserve_ctx, bytes)) return 0;
    lim->exceeded = NF_DATA_LIMIT_BUDGET;
    lim->cost = bytes;
    return fail(NF_ENOMEM, "the server's request memory is taken by other requests (%zu bytes wanted); retry shortly",
                bytes);
}

static int gunzip_limited(const unsigned char *in, size_t len, size_t cap, unsigned ratio, int *exceeded,
                          nf_data_limits *lim, unsigned char **out, size_t *outlen, char *err, size_t errlen) {
    const size_t chunk = (size_t)1 << 30;
    if (!cap || cap > NF_DATA_MAX_INFLATE) cap = NF_DATA_MAX_INFLATE;
    *out = NULL;
    *outlen = 0;
    /* Initial size: the trailer's ISIZE (length mod 2^32) when it is plausible
     * for deflate's 1032:1 ceiling, else 4x the input; grown by doubling. */
    size_t size = len < cap / 4 ? len * 4 : cap;
    if (len >= 18) {
        const unsigned char *t = in + len - 4;
        size_t isize = (size_t)nf_le_get(t, 4);
        if (isize > 0 && isize <= cap && isize / 1032 <= len && !(ratio && isize / ratio > len)) size = isize;
    }
    if (size < 4096) size = 4096;
    if (reserve(lim, size, err, errlen)) return NF_ENOMEM;
    unsigned char *buf = nf_malloc(size);
    if (!buf) return fail(NF_ENOMEM, "out of memory inflating gzip data");
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) {
        nf_free(buf);
        return fail(NF_ENOMEM, "zlib inflateInit2 failed");
    }
    const unsigned char *end = in + len;
    z.next_in = (Bytef *)in;
    size_t have = 0;
    int rc = 0;
    for (;;) {
        if (z.avail_in == 0) {
            size_t rem = (size_t)(end - (const unsigned char *)z.next_in);
            z.avail_in = (uInt)(rem > chunk ? chunk : rem);
        }
        if (have == size) {
            if (size >= cap) {
                if (exceeded) *exceeded = NF_DATA_LIMIT_INFLATE;
                rc = fail(NF_ERANGE, "gzip data inflates to more than %zu bytes (the inflated-size limit)", cap);
                break;
            }
            size_t ns = size > cap / 2 ? cap : size * 2;
            if (reserve(lim, ns - size, err, errlen)) {
                rc = NF_ENOMEM;
                break;
            }
            unsigned char *nb = nf_realloc(buf, ns);
            if (!nb) {
                rc = fail(NF_ENOMEM, "out of memory inflating gzip data");
                break;
            }
            buf = nb;
            size = ns;
        }
        size_t room = size - have;
        z.next_out = buf + have;
        z.avail_out = (uInt)(room > chunk ? chunk : room);
        uInt before = z.avail_out;
        int r = inflate(&z, Z_NO_FLUSH);
        have += before - z.avail_out;
        /* a bomb is stopped by its ratio long before the size cap: checked
         * on every round, past a floor that small files never reach */
        size_t used = (size_t)((const unsigned char *)z.next_in - in);
        if (ratio && have > NF_DATA_RATIO_FLOOR && have / ratio > used) {
            if (exceeded) *exceeded = NF_DATA_LIMIT_RATIO;
            rc = fail(NF_ERANGE, "gzip data inflates more than %u:1 (%zu bytes from the first %zu; the ratio limit)",
                      ratio, have, used);
            break;
        }
        if (r == Z_STREAM_END) {
            size_t rem = (size_t)(end - (const unsigned char *)z.next_in);
            if (rem >= 2 && is_gzip(z.next_in, rem)) { /* another member */
                inflateReset(&z);
                continue;
            }
            break; /* trailing bytes after the last member are ignored, as gzip does */
        }
        if (r == Z_OK || r == Z_BUF_ERROR) {
            if (z.avail_out > 0 && z.avail_in == 0 && (const unsigned char *)z.next_in == end) {
                rc = fail(NF_ECORRUPT, "gzip data is truncated");
                break;
            }
            continue;
        }
        rc = fail(r == Z_MEM_ERROR ? NF_ENOMEM : NF_ECORRUPT, "gzip data is corrupt (%s)",
                  z.msg ? z.msg : "inflate error");
        break;
    }
    inflateEnd(&z);
    if (rc) {
        nf_free(buf);
        return rc;
    }
    *out = buf;
    *outlen = have;
    return 0;
}

static int gunzip(const unsigned char *in, size_t len, unsigned char **out, size_t *outlen, char *err,
                  size_t errlen) {
    return gunzip_limited(in, len, NF_DATA_MAX_INFLATE, 0, NULL, NULL, out, outlen, err, errlen);
}

/* ---- binary element decoding (npy, idx) ------------------------------------ */
typedef struct {
    char kind; /* 'f' float, 'i' signed, 'u' unsigned */
    int size;  /* bytes */
    int big;   /* big-endian */
} elem_type;

static double read_elem(const unsigned char *p, elem_type t) {
    uint64_t u = 0;
    for (int k = 0; k < t.size; k++) {
        int b = t.big ? k : t.size - 1 - k;
        u = u << 8 | p[b];
    }
    if (t.kind == 'u') return (double)u;
    if (t.kind == 'i') {
        int sh = 64 - 8 * t.size;
        return (double)((int64_t)(u << sh) >> sh); /* sign-extend */
    }
    if (t.size == 4) {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        return f;
    }
    double dv;
    memcpy(&dv, &u, 8);
    return dv;
}

/* Fills out (n,d) from cnt packed elements at p and summarises it. */
static int decode_into(nf_data *out, const unsigned char *p, elem_type t, int64_t n, int d,
                       char *err, size_t errlen) {
    int rc = nf_data_alloc(out, n, d, err, errlen);
    if (rc) return rc;
    int64_t cnt = n * d;
    for (int64_t i = 0; i < cnt; i++) out->x[i] = (nf_real)read_elem(p + i * t.size, t);
    rc = nf_data_summarize(out, err, errlen);
    if (rc) nf_data_free(out);
    return rc;
}

/* The image shape of an array of ndim dims (dims[0] the rows): (n,H,W) is
 * [1,H,W], (n,C,H,W) is [C,H,W]; other ranks have none.  The row size was
 * checked to fit an int, so each dim does. */
static void image_shape(const int64_t *dims, int ndim, int shape[3]) {
    shape[0] = shape[1] = shape[2] = 0;
    if (ndim == 3) shape[0] = 1, shape[1] = (int)dims[1], shape[2] = (int)dims[2];
    else if (ndim == 4) shape[0] = (int)dims[1], shape[1] = (int)dims[2], shape[2] = (int)dims[3];
}

/* ---- CSV -------------------------------------------------------------------- */
static int is_blank(char c) { return c == ' ' || c == '\t'; }

typedef enum { CELL_OK, CELL_EMPTY, CELL_NAN, CELL_BAD, CELL_RANGE } cell_status;

/* Parses the trimmed cell s[0..n) as a decimal number:
 *   [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?
 * The grammar is checked by hand first so strtod never sees hex floats,
 * "nan"/"inf" or locale-specific forms; conversion uses the C locale. */
static cell_status parse_cell(const char *s, size_t n, locale_t cloc, double *v) {
    if (n == 0) return CELL_EMPTY;
    size_t i = 0, digits = 0;
    if (s[i] == '+' || s[i] == '-') i++;
    if (n - i >= 3 && (strncasecmp(s + i, "nan", 3) == 0 || strncasecmp(s + i, "inf", 3) == 0))
        return CELL_NAN;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, digits++;
    }
    if (digits == 0) return CELL_BAD;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        size_t ed = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, ed++;
        if (ed == 0) return CELL_BAD;
    }
    if (i != n) return CELL_BAD;
    char tmp[128];
    if (n >= sizeof tmp) return CELL_BAD;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    errno = 0;
    char *endp;
    double x = cloc ? strtod_l(tmp, &endp, cloc) : strtod(tmp, &endp);
    if (endp != tmp + n) return CELL_BAD;
    /* ERANGE with a tiny result is underflow: keep the (sub)normal or zero. */
    if (!isfinite(x) || fabs(x) > REAL_MAX || (errno == ERANGE && fabs(x) >= 1.0))
        return CELL_RANGE;
    *v = x;
    return CELL_OK;
}

static int cell_error(cell_status st, int64_t line, int64_t col, const char *s, size_t n,
                      char *err, size_t errlen) {
    int m = n > 40 ? 40 : (int)n;
    const char *more = n > 40 ? "..." : "";
    switch (st) {
    case CELL_EMPTY:
        return fail(NF_EFORMAT, "line %lld, column %lld: empty cell", (long long)line,
                    (long long)col);
    case CELL_NAN:
        return fail(NF_ENONFINITE, "line %lld, column %lld: '%.*s%s' is not finite (NaN and Inf are not allowed)",
                    (long long)line, (long long)col, m, s, more);
    case CELL_RANGE:
        return fail(NF_ERANGE, "line %lld, column %lld: '%.*s%s' is out of the " REAL_NAME " range",
                    (long long)line, (long long)col, m, s, more);
    default:
        return fail(NF_EFORMAT, "line %lld, column %lld: '%.*s%s' is not a number",
                    (long long)line, (long long)col, m, s, more);
    }
}

int nf_data_load_csv(const void *buf, size_t len, nf_data *out, char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!buf || !len) return fail(NF_EFORMAT, "CSV is empty");
    const char *p = buf, *end = p + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;
    locale_t cloc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    int64_t lines = 1, line = 0, n = 0, cap = 0;
    for (const char *q = p; (q = memchr(q, '\n', (size_t)(end - q))); q++) lines++;
    int d = 0, rc = 0;
    int64_t header_line = 0, first_line = 0;
    nf_real *x = NULL;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end, *next = eol ? eol + 1 : end;
        line++;
        if (le > p && le[-1] == '\r') le--;
        const char *a = p;
        while (a < le && is_blank(*a)) a++;
        if (a == le) { /* blank line */
            p = next;
            continue;
        }
        if (d == 0) { /* first non-blank line: columns, and is it a header? */
            int64_t cols = 1;
            int header = 0, first_empty = 0;
            for (const char *c = p; c < le; c++) cols += *c == ',';
            if (cols > INT_MAX) {
                rc = fail(NF_ERANGE, "line %lld: too many columns", (long long)line);
                goto done;
            }
            for (const char *c = p; c < le;) {
                const char *ce = memchr(c, ',', (size_t)(le - c));
                if (!ce) ce = le;
                const char *s = c, *e = ce;
                while (s < e && is_blank(*s)) s++;
                while (e > s && is_blank(e[-1])) e--;
                double v;
                cell_status st = parse_cell(s, (size_t)(e - s), cloc, &v);
                if (st == CELL_BAD) header = 1; /* a name; "nan" or "" stay data (and fail there) */
                if (c == p && s == e) first_empty = 1;
                c = ce + 1;
            }
            /* pandas' DataFrame.to_csv() writes its index as a first column
             * with an empty name: trained on, it would be a feature that
             * counts rows.  Refused rather than guessed. */
            if (header && first_empty) {
                rc = fail(NF_EFORMAT,
                          "line %lld: the first header cell is empty, as pandas writes its index column "
                          "(DataFrame.to_csv()); write the file with index=False or drop that column",
                          (long long)line);
                goto done;
            }
            d = (int)cols;
            /* at most one value per two input bytes ("1," per cell), plus one row */
            int64_t rows = lines - line + 1, bound = (int64_t)((size_t)(end - p) / (2 * (size_t)d - 1)) + 1;
            if (bound < rows) rows = bound;
            if (rows > NF_DATA_MAX_VALUES / d) rows = NF_DATA_MAX_VALUES / d;
            cap = rows;
            if (cap < 1 || !(x = nf_malloc((size_t)cap * d * sizeof(nf_real)))) {
                rc = fail(NF_ENOMEM, "out of memory for %lld rows of %d values", (long long)cap, d);
                goto done;
            }
            if (header) {
                header_line = line;
                p = next;
                continue;
            }
            first_line = line;
        }
        if (n >= cap) {
            rc = fail(NF_ERANGE, "line %lld: more than %lld values", (long long)line,
                      (long long)NF_DATA_MAX_VALUES);
            goto done;
        }
        nf_real *row = x + n * d;
        int64_t col = 0;
        for (const char *c = p;;) {
            const char *ce = memchr(c, ',', (size_t)(le - c));
            if (!ce) ce = le;
            col++;
            if (col > d) {
                rc = fail(NF_EFORMAT, "line %lld: more than %d columns, expected %d (as on line %lld)",
                          (long long)line, d, d, (long long)(header_line ? header_line : first_line));
                goto done;
            }
            const char *s = c, *e = ce;
            while (s < e && is_blank(*s)) s++;
            while (e > s && is_blank(e[-1])) e--;
            double v = 0;
            cell_status st = parse_cell(s, (size_t)(e - s), cloc, &v);
            if (st != CELL_OK) {
                rc = cell_error(st, line, col, s, (size_t)(e - s), err, errlen);
                goto done;
            }
            row[col - 1] = (nf_real)v;
            if (ce == le) break;
            c = ce + 1;
        }
        if (col != d) {
            rc = fail(NF_EFORMAT, "line %lld: %lld columns, expected %d (as on line %lld)",
                      (long long)line, (long long)col, d,
                      (long long)(header_line ? header_line : first_line));
            goto done;
        }
        n++;
        p = next;
    }
    if (n == 0) {
        rc = fail(NF_EFORMAT, d ? "CSV has a header but no data rows" : "CSV is empty");
        goto done;
    }
    if (n < cap) {
        nf_real *s = nf_realloc(x, (size_t)n * d * sizeof(nf_real));
        if (s) x = s;
    }
    out->x = x;
    out->n = n;
    out->d = d;
    x = NULL;
    rc = nf_data_summarize(out, err, errlen);
    if (rc) nf_data_free(out);
done:
    nf_free(x);
    if (cloc) freelocale(cloc);
    return rc;
}

/* ---- .npy ------------------------------------------------------------------- */
char *nf_data_csv(const nf_real *v, int64_t n, int d, const char *header, size_t *len) {
    if (n < 0 || d < 1 || (uint64_t)n > SIZE_MAX / 32 / (size_t)d) return NULL;
    /* %.9g is at most 16 characters ("-1.23456789e-308"), the comma or
     * newline one more; a generated header at most 12 a column */
    size_t cap = (header ? strlen(header) : (size_t)d * 12) + 2 + (size_t)n * ((size_t)d * 17 + 1), k = 0;
    char *s = nf_malloc(cap);
    if (!s) return NULL;
    if (header) k += (size_t)snprintf(s, cap, "%s", header);
    else
        for (int j = 0; j < d; j++) k += (size_t)snprintf(s + k, cap - k, j ? ",x%d" : "x%d", j);
    s[k++] = '\n';
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < d; j++) {
            double x = v[(size_t)i * d + j];
            if (j) s[k++] = ',';
            if (isfinite(x)) k += (size_t)snprintf(s + k, cap - k, "%.9g", x);
        }
        s[k++] = '\n';
    }
    s[k] = 0;
    *len = k;
    return s;
}

int nf_data_load_npy(const void *buf, size_t len, nf_data *out, char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    const unsigned char *b = buf;
    nf_npy_header h;
    int rc = nf_npy_parse_header(b, len, &h, err, errlen);
    if (rc) return rc;
    const char *descr = h.descr;
    int fortran = h.fortran, ndim = h.ndim;
    const int64_t *shape = h.shape;
    if (fortran) return fail(NF_EUNSUPPORTED, ".npy: fortran_order True is not supported (save a C-ordered array)");

    /* dtype: byte order, kind, size, e.g. "<f4", "|u1", ">i8" */
    elem_type t = {0, 0, 0};
    size_t dl = strlen(descr);
    if (dl >= 3 && strchr("<>|=", descr[0]) && strchr("fiu", descr[1]) && descr[2] >= '1' && descr[2] <= '8' && dl == 3) {
        t.kind = descr[1];
        t.size = descr[2] - '0';
        t.big = descr[0] == '>';
    }
    int ok = (t.kind == 'f' && (t.size == 4 || t.size == 8)) ||
             ((t.kind == 'i' || t.kind == 'u') && (t.size == 1 || t.size == 2 || t.size == 4 || t.size == 8));
    if (ok && descr[0] == '|' && t.size != 1) ok = 0;
    if (!ok) return fail(NF_EUNSUPPORTED, ".npy: unsupported dtype '%s' (want f4, f8 or an integer type)", descr);

    if (ndim == 0) return fail(NF_EFORMAT, ".npy: a scalar (shape ()) is not a dataset");
    int64_t n = shape[0], d = 1;
    for (int k = 1; k < ndim; k++) {
        d = mul_cap(d, shape[k], INT_MAX);
        if (d < 0) return fail(NF_ERANGE, ".npy: row size exceeds %d values", INT_MAX);
    }
    if (n == 0 || d == 0) return fail(NF_ERANGE, ".npy: array is empty (no values)");
    int64_t cnt = mul_cap(n, d, NF_DATA_MAX_VALUES);
    if (cnt < 0)
        return fail(NF_ERANGE, ".npy: shape (%lld rows x %lld) exceeds the limit of %lld values",
                    (long long)n, (long long)d, (long long)NF_DATA_MAX_VALUES);
    size_t need = (size_t)cnt * (size_t)t.size, avail = len - h.data_off;
    if (avail < need)
        return fail(NF_ECORRUPT, ".npy: truncated: shape needs %zu data bytes, %zu present", need, avail);
    if (avail > need)
        return fail(NF_EFORMAT, ".npy: %zu bytes after the data (shape needs %zu)", avail - need, need);
    rc = decode_into(out, b + h.data_off, t, n, (int)d, err, errlen);
    if (!rc) image_shape(shape, ndim, out->shape);
    return rc;
}

/* ---- IDX -------------------------------------------------------------------- */
static int load_idx_raw(const unsigned char *b, size_t len, nf_data *out, char *err, size_t errlen) {
    if (len < 4) return fail(NF_ECORRUPT, "IDX: %zu bytes is too short for a header", len);
    if (b[0] || b[1]) return fail(NF_EFORMAT, "IDX: bad magic (must start with two zero bytes)");
    elem_type t = {0, 0, 1};
    switch (b[2]) {
    case 0x08: t.kind = 'u', t.size = 1; break;
    case 0x09: t.kind = 'i', t.size = 1; break;
    case 0x0B: t.kind = 'i', t.size = 2; break;
    case 0x0C: t.kind = 'i', t.size = 4; break;
    case 0x0D: t.kind = 'f', t.size = 4; break;
    case 0x0E: t.kind = 'f', t.size = 8; break;
    default: return fail(NF_EFORMAT, "IDX: bad magic (unknown type code 0x%02X)", b[2]);
    }
    int nd = b[3];
    if (nd < 1 || nd > 16) return fail(NF_EFORMAT, "IDX: %d dimensions (want 1 to 16)", nd);
    size_t hdr = 4 + 4 * (size_t)nd;
    if (len < hdr) return fail(NF_ECORRUPT, "IDX: truncated header (%d dimensions need %zu bytes)", nd, hdr);
    int64_t dims[16], d = 1;
    for (int k = 0; k < nd; k++) {
        const unsigned char *q = b + 4 + 4 * k;
        dims[k] = (int64_t)((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3]);
    }
    for (int k = 1; k < nd; k++) {
        d = mul_cap(d, dims[k], INT_MAX);
        if (d < 0) return fail(NF_ERANGE, "IDX: row size exceeds %d values", INT_MAX);
    }
    int64_t n = dims[0];
    if (n == 0 || d == 0) return fail(NF_ERANGE, "IDX: array is empty (a dimension is 0)");
    int64_t cnt = mul_cap(n, d, NF_DATA_MAX_VALUES);
    if (cnt < 0)
        return fail(NF_ERANGE, "IDX: %lld rows x %lld exceeds the limit of %lld values", (long long)n,
                    (long long)d, (long long)NF_DATA_MAX_VALUES);
    size_t need = (size_t)cnt * (size_t)t.size, avail = len - hdr;
    if (avail < need)
        return fail(NF_ECORRUPT, "IDX: truncated: dimensions need %zu data bytes, %zu present", need, avail);
    if (avail > need)
        return fail(NF_EFORMAT, "IDX: %zu bytes after the data (dimensions need %zu)", avail - need, need);
    int rc = decode_into(out, b + hdr, t, n, (int)d, err, errlen);
    if (!rc) image_shape(dims, nd, out->shape);
    return rc;
}

int nf_data_load_idx(const void *buf, size_t len, nf_data *out, char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!buf && len) return fail(NF_EINVAL, "buffer is NULL");
    if (!is_gzip(buf, len)) return load_idx_raw(buf, len, out, err, errlen);
    unsigned char *raw;
    size_t rlen;
    int rc = gunzip(buf, len, &raw, &rlen, err, errlen);
    if (rc) return rc;
    rc = load_idx_raw(raw, rlen, out, err, errlen);
    nf_free(raw);
    return rc;
}

/* ---- JSON rows -------------------------------------------------------------- */
int nf_data_load_json(const void *buf, size_t len, nf_data *out, char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!buf || !len) return fail(NF_EFORMAT, "JSON: empty input");
    const char *endp = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &endp, 0);
    if (!root) {
        size_t off = endp && endp >= (const char *)buf ? (size_t)(endp - (const char *)buf) : 0;
        return fail(NF_EFORMAT, "JSON: parse error near byte %zu (NaN, Infinity and comments are not JSON)", off);
    }
    int rc = 0;
    for (const char *q = endp; q && q < (const char *)buf + len; q++)
        if (!(*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r' || *q == 0)) {
            rc = fail(NF_EFORMAT, "JSON: trailing content at byte %zu", (size_t)(q - (const char *)buf));
            goto done;
        }
    const cJSON *rows = root;
    if (cJSON_IsObject(root)) rows = cJSON_GetObjectItemCaseSensitive(root, "rows");
    if (!cJSON_IsArray(rows)) {
        rc = fail(NF_EFORMAT, "JSON: expected {\"rows\":[[...],...]} or [[...],...]");
        goto done;
    }
    int64_t n = 0;
    for (const cJSON *r = rows->child; r; r = r->next) n++;
    if (n == 0) {
        rc = fail(NF_ERANGE, "JSON: no rows");
        goto done;
    }
    int scalar = cJSON_IsNumber(rows->child), d = 0;
    if (!scalar) {
        if (!cJSON_IsArray(rows->child)) {
            rc = fail(NF_EFORMAT, "JSON: rows[0] is not an array of numbers");
            goto done;
        }
        for (const cJSON *v = rows->child->child; v; v = v->next)
            if (++d == INT_MAX) break;
        if (d == 0) {
            rc = fail(NF_ERANGE, "JSON: rows[0] is empty");
            goto done;
        }
    } else {
        d = 1;
    }
    if ((rc = nf_data_alloc(out, n, d, err, errlen))) goto done;
    int64_t i = 0;
    for (const cJSON *r = rows->child; r; r = r->next, i++) {
        int j = 0;
        const cJSON *v = r;
        if (!scalar) {
            if (!cJSON_IsArray(r)) {
                rc = fail(NF_EFORMAT, "JSON: rows[%lld] is not an array", (long long)i);
                goto done;
            }
            v = r->child;
        }
        for (; v; v = scalar ? NULL : v->next, j++) {
            if (j >= d) break;
            if (!cJSON_IsNumber(v)) {
                rc = fail(NF_EFORMAT, "JSON: rows[%lld][%d] is not a number", (long long)i, j);
                goto done;
            }
            double x = v->valuedouble;
            if (!isfinite(x) || fabs(x) > REAL_MAX) {
                rc = fail(isfinite(x) ? NF_ERANGE : NF_ENONFINITE,
                          "JSON: rows[%lld][%d] is %s", (long long)i, j,
                          isfinite(x) ? "out of the " REAL_NAME " range" : "not finite");
                goto done;
            }
            out->x[i * d + j] = (nf_real)x;
        }
        if (!scalar && (j != d || v)) {
            int64_t cnt = 0;
            for (const cJSON *w = r->child; w; w = w->next) cnt++;
            rc = fail(NF_EFORMAT, "JSON: rows[%lld] has %lld values, expected %d (ragged rows)",
                      (long long)i, (long long)cnt, d);
            goto done;
        }
    }
    rc = nf_data_summarize(out, err, errlen);
done:
    if (rc) nf_data_free(out);
    cJSON_Delete(root);
    return rc;
}

/* ---- dispatch --------------------------------------------------------------- */
static const char *const format_names[NF_DATA_FORMAT_COUNT] = {"auto", "csv", "npy", "idx", "json"};
_Static_assert(sizeof format_names / sizeof format_names[0] == NF_DATA_FORMAT_COUNT,
               "format_names out of step with nf_data_format");

const char *nf_data_format_name(nf_data_format f) {
    return (unsigned)f < NF_DATA_FORMAT_COUNT ? format_names[f] : "unknown";
}

int nf_data_format_parse(const char *name, nf_data_format *out) {
    for (int i = 0; name && i < NF_DATA_FORMAT_COUNT; i++)
        if (strcmp(name, format_names[i]) == 0) {
            *out = (nf_data_format)i;
            return 0;
        }
    return NF_EINVAL;
}

nf_data_format nf_data_detect(const void *buf, size_t len) {
    const unsigned char *b = buf;
    if (!b || !len) return NF_DATA_CSV;
    if (len >= 6 && memcmp(b, "\x93NUMPY", 6) == 0) return NF_DATA_NPY;
    if (is_gzip(b, len)) return NF_DATA_IDX;
    if (len >= 4 && b[0] == 0 && b[1] == 0) return NF_DATA_IDX;
    size_t i = 0;
    if (len >= 3 && memcmp(b, "\xEF\xBB\xBF", 3) == 0) i = 3;
    while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r')) i++;
    if (i < len && (b[i] == '[' || b[i] == '{')) return NF_DATA_JSON;
    return NF_DATA_CSV;
}

static int load_plain(const void *buf, size_t len, nf_data_format fmt, nf_data *out, char *err,
                      size_t errlen) {
    if (fmt == NF_DATA_AUTO) fmt = nf_data_detect(buf, len);
    switch (fmt) {
    case NF_DATA_CSV: return nf_data_load_csv(buf, len, out, err, errlen);
    case NF_DATA_NPY: return nf_data_load_npy(buf, len, out, err, errlen);
    case NF_DATA_IDX: return nf_data_load_idx(buf, len, out, err, errlen);
    case NF_DATA_JSON: return nf_data_load_json(buf, len, out, err, errlen);
    default: return fail(NF_EINVAL, "unknown data format %d", (int)fmt);
    }
}

size_t nf_data_parse_cost(const void *buf, size_t len, nf_data_format fmt) {
    const unsigned char *b = buf;
    if (!b || !len) return 0;
    if (fmt == NF_DATA_AUTO) fmt = nf_data_detect(buf, len);
    if (fmt != NF_DATA_JSON) /* CSV: at most one value a byte; .npy/IDX: u8 widens to a 4-byte value */
        return len > SIZE_MAX / 4 ? SIZE_MAX : len * 4;
    /* JSON: a tree node per value, and every value follows '[' '{' ',' or
     * ':' (or is the document); keys and strings copy at most the text */
    size_t nodes = 1;
    for (size_t i = 0; i < len; i++) nodes += b[i] == ',' || b[i] == '[' || b[i] == '{' || b[i] == ':';
    /* a node is a malloc'd chunk: its size rounded up with malloc's header */
    const size_t node = (sizeof(struct cJSON) + 8 + 15) / 16 * 16;
    return nodes * (node + sizeof(nf_real)) + len;
}

/* cost: what the parse allocates (held: what is already reserved, the
 * inflated bytes) */
static int over_memory(nf_data_limits *lim, size_t cost, size_t held, const char *what, char *err, size_t errlen) {
    if (!lim) return 0;
    size_t all = cost > SIZE_MAX - held ? SIZE_MAX : cost + held;
    if (!lim->max_memory || all <= lim->max_memory) return reserve(lim, cost, err, errlen);
    cost = all;
    lim->exceeded = NF_DATA_LIMIT_MEMORY;
    lim->cost = cost;
    return fail(NF_ERANGE, "parsing %s would take about %zu bytes of memory; the limit is %zu", what, cost,
                lim->max_memory);
}

int nf_data_load_limited(const void *buf, size_t len, nf_data_format fmt, nf_data_limits *lim, nf_data *out,
                         char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (lim) lim->exceeded = 0, lim->cost = 0;
    if ((unsigned)fmt >= NF_DATA_FORMAT_COUNT) return fail(NF_EINVAL, "unknown data format %d", (int)fmt);
    if (!buf && len) return fail(NF_EINVAL, "buffer is NULL");
    if (!is_gzip(buf, len)) {
        nf_data_format f = fmt == NF_DATA_AUTO ? nf_data_detect(buf, len) : fmt;
        int rc = over_memory(lim, nf_data_parse_cost(buf, len, f), 0, "the body", err, errlen);
        return rc ? rc : load_plain(buf, len, fmt, out, err, errlen);
    }
    /* the inflated bytes are held through the parse: they count too */
    size_t cap = lim && lim->max_inflate ? lim->max_inflate : NF_DATA_MAX_INFLATE;
    if (lim && lim->max_memory && lim->max_memory < cap) cap = lim->max_memory;
    unsigned char *raw;
    size_t rlen;
    int exceeded = 0;
    int rc = gunzip_limited(buf, len, cap, lim ? lim->max_ratio : 0, &exceeded, lim, &raw, &rlen, err, errlen);
    if (rc) {
        if (lim && lim->exceeded != NF_DATA_LIMIT_BUDGET) {
            lim->exceeded = exceeded;
            /* the cap was the memory limit, not the inflate limit */
            if (exceeded == NF_DATA_LIMIT_INFLATE && lim->max_memory && cap == lim->max_memory &&
                (!lim->max_inflate || lim->max_memory < lim->max_inflate))
                lim->exceeded = NF_DATA_LIMIT_MEMORY;
        }
        return rc;
    }
    if (is_gzip(raw, rlen)) {
        rc = fail(NF_EFORMAT, "gzip inside gzip is not supported");
    } else {
        nf_data_format f = fmt == NF_DATA_AUTO ? nf_data_detect(raw, rlen) : fmt;
        size_t pc = nf_data_parse_cost(raw, rlen, f);
        rc = over_memory(lim, pc, rlen, "the inflated body", err, errlen);
        if (!rc) rc = load_plain(raw, rlen, fmt, out, err, errlen);
    }
    nf_free(raw);
    return rc;
}

int nf_data_load(const void *buf, size_t len, nf_data_format fmt, nf_data *out, char *err,
                 size_t errlen) {
    return nf_data_load_limited(buf, len, fmt, NULL, out, err, errlen);
}

int nf_data_load_file(const char *path, nf_data_format fmt, nf_data *out, char *err,
                      size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return fail(NF_EINVAL, "path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return fail(NF_EIO, "cannot open %s: %s", path, strerror(errno));
    size_t size = 1 << 16, have = 0;
    unsigned char *buf = nf_malloc(size);
    int rc = 0;
    for (;;) {
        if (!buf) {
            rc = fail(NF_ENOMEM, "out of memory reading %s", path);
            break;
        }
        have += fread(buf + have, 1, size - have, f);
        if (have < size) {
            if (ferror(f)) rc = fail(NF_EIO, "error reading %s", path);
            break;
        }
        if (size > SIZE_MAX / 2) {
            rc = fail(NF_ERANGE, "%s is too large", path);
            break;
        }
        unsigned char *nb = nf_realloc(buf, size * 2);
        if (!nb) nf_free(buf);
        buf = nb;
        size *= 2;
    }
    fclose(f);
    if (!rc) rc = nf_data_load(buf, have, fmt, out, err, errlen);
    nf_free(buf);
    return rc;
}

/* ---- built-in toy sets ------------------------------------------------------- */
static const char *const builtin_names[] = {"moons",    "circles",  "8gaussians", "checkerboard",
                                            "pinwheel", "2spirals", "rings",      NULL};

const char *const *nf_data_builtin_names(void) { return builtin_names; }

/* uniform integer in [0, bound), unbiased (rejection of the short last block) */
static uint64_t rng_below(nf_rng *r, uint64_t bound) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % bound, u;
    do u = nf_rng_u64(r);
    while (u >= lim);
    return u % bound;
}

int nf_data_shuffle_index(int64_t *idx, int64_t n, nf_rng *rng) {
    if (n < 0 || (n > 0 && (!idx || !rng))) return NF_EINVAL;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(rng, (uint64_t)i + 1);
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    return 0;
}

/* numpy.linspace(0, stop, m, endpoint) at index i */
static double linspace(double stop, int64_t m, int64_t i, int endpoint) {
    if (endpoint) return m > 1 ? stop * (double)i / (double)(m - 1) : 0.0;
    return stop * (double)i / (double)m;
}

/* Each generator writes row i of (n,2) in double; rows are shuffled after. */
static void gen_moons(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* sklearn.make_moons: outer half circle and an inner one shifted by (1,-0.5);
     * FFJORD then maps it by *2 + (-1,-0.2). */
    int64_t nout = n / 2, nin = n - nout;
    for (int64_t i = 0; i < n; i++) {
        double a, b;
        if (i < nout) {
            double t = linspace(PI, nout, i, 1);
            a = cos(t), b = sin(t);
        } else {
            double t = linspace(PI, nin, i - nout, 1);
            a = 1 - cos(t), b = 1 - sin(t) - 0.5;
        }
        a += noise * nf_rng_normal(r);
        b += noise * nf_rng_normal(r);
        x[2 * i] = 2 * a - 1;
        x[2 * i + 1] = 2 * b - 0.2;
        lab[i] = i >= nout; /* 0 the outer moon, 1 the inner */
    }
}

static void gen_circles(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* sklearn.make_circles(factor=0.5), scaled by 3 */
    int64_t nout = n / 2, nin = n - nout;
    for (int64_t i = 0; i < n; i++) {
        double t = i < nout ? linspace(2 * PI, nout, i, 0) : linspace(2 * PI, nin, i - nout, 0);
        double rad = i < nout ? 1.0 : 0.5;
        x[2 * i] = 3 * (rad * cos(t) + noise * nf_rng_normal(r));
        x[2 * i + 1] = 3 * (rad * sin(t) + noise * nf_rng_normal(r));
        lab[i] = i >= nout; /* 0 the outer circle, 1 the inner */
    }
}

static void gen_rings(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* four rings of radii 1, .75, .5, .25 (x3), n/4 points each (the
     * innermost takes the remainder), then Gaussian noise */
    int64_t q = n / 4, counts[4] = {q, q, q, n - 3 * q}, i = 0;
    for (int k = 0; k < 4; k++)
        for (int64_t j = 0; j < counts[k]; j++, i++) {
            double t = linspace(2 * PI, counts[k], j, 0), rad = 3.0 * (1.0 - 0.25 * k);
            x[2 * i] = rad * cos(t) + noise * nf_rng_normal(r);
            x[2 * i + 1] = rad * sin(t) + noise * nf_rng_normal(r);
            lab[i] = k; /* the ring, outermost 0 */
        }
}

static void gen_8gaussians(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* centres at radius 4 on the 8 compass points, std noise, all / 1.414 */
    const double s = 1.0 / sqrt(2.0);
    const double c[8][2] = {{1, 0}, {-1, 0}, {0, 1}, {0, -1}, {s, s}, {s, -s}, {-s, s}, {-s, -s}};
    for (int64_t i = 0; i < n; i++) {
        double a = nf_rng_normal(r) * noise, b = nf_rng_normal(r) * noise;
        int k = (int)rng_below(r, 8);
        x[2 * i] = (a + 4 * c[k][0]) / 1.414;
        x[2 * i + 1] = (b + 4 * c[k][1]) / 1.414;
        lab[i] = k; /* the Gaussian */
    }
}

static void gen_checkerboard(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* x1 ~ U[-2,2); x2 on the squares where floor(x1)+floor(x2) is even; x2 */
    for (int64_t i = 0; i < n; i++) {
        double x1 = nf_rng_uniform(r) * 4 - 2;
        double x2 = nf_rng_uniform(r) - 2.0 * (double)rng_below(r, 2);
        double f = floor(x1);
        x2 += f - 2 * floor(f / 2); /* Python's floor(x1) % 2 */
        lab[i] = (int)f + 2; /* the column of squares, 0..3 */
        x[2 * i] = 2 * x1 + (noise > 0 ? noise * nf_rng_normal(r) : 0);
        x[2 * i + 1] = 2 * x2 + (noise > 0 ? noise * nf_rng_normal(r) : 0);
    }
}

static void gen_pinwheel(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* 5 arms: radial ~ 1 + 3*noise*N, tangential ~ noise*N, rotated by
     * arm angle + 0.25*exp(radial), all x2 (FFJORD: radial_std .3, tangential .1) */
    for (int64_t i = 0; i < n; i++) {
        double f0 = 1.0 + 3 * noise * nf_rng_normal(r), f1 = noise * nf_rng_normal(r);
        double ang = 2 * PI * (double)(i % 5) / 5 + 0.25 * exp(f0);
        double c = cos(ang), s = sin(ang);
        lab[i] = (int)(i % 5); /* the arm */
        x[2 * i] = 2 * (f0 * c + f1 * s);
        x[2 * i + 1] = 2 * (-f0 * s + f1 * c);
    }
}

static void gen_2spirals(double *x, int *lab, int64_t n, double noise, nf_rng *r) {
    /* t = sqrt(u) * 540 degrees; arm (-cos t * t, sin t * t) + U[0,.5)^2 and
     * its mirror image, /3, plus Gaussian noise */
    for (int64_t i = 0; i < n; i++) {
        double t = sqrt(nf_rng_uniform(r)) * 540.0 * (2 * PI) / 360.0;
        double a = -cos(t) * t + nf_rng_uniform(r) * 0.5;
        double b = sin(t) * t + nf_rng_uniform(r) * 0.5;
        double sg = (i & 1) ? -1.0 : 1.0;
        lab[i] = (int)(i & 1); /* the spiral */
        x[2 * i] = sg * a / 3 + noise * nf_rng_normal(r);
        x[2 * i + 1] = sg * b / 3 + noise * nf_rng_normal(r);
    }
}

typedef void (*gen_fn)(double *, int *, int64_t, double, nf_rng *);
static const struct {
    const char *name;
    gen_fn fn;
    double noise;
} generators[] = {
    {"moons", gen_moons, 0.1},       {"circles", gen_circles, 0.08},
    {"8gaussians", gen_8gaussians, 0.5}, {"checkerboard", gen_checkerboard, 0.0},
    {"pinwheel", gen_pinwheel, 0.1}, {"2spirals", gen_2spirals, 0.1},
    {"rings", gen_rings, 0.08},
};
_Static_assert(sizeof generators / sizeof generators[0] + 1 ==
                   sizeof builtin_names / sizeof builtin_names[0],
               "generators out of step with builtin_names");

int nf_data_builtin(const char *name, int64_t n, double noise, uint64_t seed, nf_data *out,
                    char *err, size_t errlen) {
    return nf_data_builtin_ex(name, n, noise, seed, 0, out, err, errlen);
}

int nf_data_builtin_ex(const char *name, int64_t n, double noise, uint64_t seed, int labels,
                       nf_data *out, char *err, size_t errlen) {
    if (!out) return fail(NF_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    int g = -1;
    for (int k = 0; name && builtin_names[k]; k++)
        if (strcmp(name, builtin_names[k]) == 0) g = k;
    if (g < 0) {
        char list[160] = "";
        for (int k = 0; builtin_names[k]; k++) {
            if (k) strcat(list, ", ");
            strcat(list, builtin_names[k]);
        }
        return fail(NF_EINVAL, "unknown built-in dataset '%s' (have %s)", name ? name : "(null)", list);
    }
    if (n < 1 || n > NF_DATA_MAX_VALUES / 2)
        return fail(NF_ERANGE, "n = %lld rows is outside 1..%lld", (long long)n,
                    (long long)(NF_DATA_MAX_VALUES / 2));
    if (isnan(noise) || noise > 1e6) return fail(NF_EINVAL, "noise must be a finite number");
    if (noise < 0) noise = generators[g].noise;
    double *tmp = nf_malloc((size_t)n * 2 * sizeof(double));
    int64_t *idx = nf_malloc((size_t)n * sizeof(int64_t));
    int *lab = nf_malloc((size_t)n * sizeof(int));
    int rc = 0, W = labels ? 3 : 2;
    if (!tmp || !idx || !lab) {
        rc = fail(NF_ENOMEM, "out of memory for %lld rows", (long long)n);
        goto done;
    }
    if ((rc = nf_data_alloc(out, n, W, err, errlen))) goto done;
    nf_rng r;
    nf_rng_seed(&r, seed);
    generators[g].fn(tmp, lab, n, noise, &r);
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    nf_data_shuffle_index(idx, n, &r);
    for (int64_t i = 0; i < n; i++) {
        out->x[W * i] = (nf_real)tmp[2 * idx[i]];
        out->x[W * i + 1] = (nf_real)tmp[2 * idx[i] + 1];
        if (labels) out->x[W * i + 2] = (nf_real)lab[idx[i]];
    }
    rc = nf_data_summarize(out, err, errlen);
done:
    if (rc) nf_data_free(out);
    nf_free(tmp);
    nf_free(idx);
    nf_free(lab);
    return rc;
}

/* ---- split and statistics ---------------------------------------------------- */
static int take_rows(const nf_data *all, const int64_t *idx, int64_t m, nf_data *part) {
    memset(part, 0, sizeof *part);
    part->d = all->d;
    part->is_integer = all->is_integer;
    part->vmin = all->vmin;
    part->vmax = all->vmax;
    memcpy(part->shape, all->shape, sizeof part->shape);
    if (m == 0) return 0;
    part->x = nf_malloc((size_t)m * all->d * sizeof(nf_real));
    if (!part->x) return NF_ENOMEM;
    part->n = m;
    for (int64_t i = 0; i < m; i++)
        memcpy(part->x + i * all->d, all->x + idx[i] * all->d, (size_t)all->d * sizeof(nf_real));
    return 0;
}

int nf_data_split(const nf_data *all, double val_fraction, double test_fraction, uint64_t seed,
                  nf_data *train, nf_data *val, nf_data *test) {
    if (!train) return NF_EINVAL;
    memset(train, 0, sizeof *train);
    if (val) memset(val, 0, sizeof *val);
    if (test) memset(test, 0, sizeof *test);
    if (!all || !all->x || all->n < 1 || all->d < 1) return NF_EINVAL;
    if (!(val_fraction >= 0 && val_fraction < 1) || !(test_fraction >= 0 && test_fraction < 1))
        return NF_EINVAL;
    int64_t n = all->n;
    int64_t nt = (int64_t)llround((double)n * test_fraction);
    int64_t nv = (int64_t)llround((double)n * val_fraction);
    if (nt + nv >= n || (nv && !val) || (nt && !test)) return NF_EINVAL;
    int64_t *idx = nf_malloc((size_t)n * sizeof(int64_t));
    if (!idx) return NF_ENOMEM;
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    nf_rng r;
    nf_rng_seed(&r, seed);
    nf_data_shuffle_index(idx, n, &r);
    int rc = 0;
    if (test && (rc = take_rows(all, idx, nt, test))) goto bad;
    if (val && (rc = take_rows(all, idx + nt, nv, val))) goto bad;
    if ((rc = take_rows(all, idx + nt + nv, n - nt - nv, train))) goto bad;
    nf_free(idx);
    return 0;
bad:
    nf_free(idx);
    nf_data_free(train);
    nf_data_free(val);
    nf_data_free(test);
    return rc;
}

int nf_data_stats(const nf_data *dat, double *mean, double *std) {
    if (!dat || !dat->x || dat->n < 1 || dat->d < 1 || !mean || !std) return NF_EINVAL;
    int64_t n = dat->n;
    int d = dat->d;
    for (int j = 0; j < d; j++) mean[j] = std[j] = 0;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) mean[j] += dat->x[i * d + j];
    for (int j = 0; j < d; j++) mean[j] /= (double)n;
    /* second pass on deviations: no cancellation from sum(x^2) - n*mean^2 */
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double e = dat->x[i * d + j] - mean[j];
            std[j] += e * e;
        }
    for (int j = 0; j < d; j++) std[j] = sqrt(std[j] / (double)n);
    return 0;
}
