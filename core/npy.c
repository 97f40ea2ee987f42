/* npy.c: the .npy format (see npy.h). */
#include "alloc.h"
#include "npy.h"

#include "blob.h"
#include "nf_internal.h"

#include <stdio.h>
#include <string.h>

#define fail(status, ...) (nf_set_err(err, errlen, __VA_ARGS__), (status))

/* The header is a Python dict literal parsed by a small strict scanner over [p, e). */
typedef struct {
    const char *p, *e;
} scan;

static void sc_ws(scan *s) {
    while (s->p < s->e && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}
static int sc_ch(scan *s, char c) {
    sc_ws(s);
    if (s->p < s->e && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}
/* quoted string (single or double quotes, no escapes) into out[outsz] */
static int sc_str(scan *s, char *out, size_t outsz) {
    sc_ws(s);
    if (s->p >= s->e || (*s->p != '\'' && *s->p != '"')) return 0;
    char q = *s->p++;
    const char *b = s->p;
    while (s->p < s->e && *s->p != q) s->p++;
    if (s->p >= s->e) return 0;
    size_t n = (size_t)(s->p - b);
    s->p++;
    if (n >= outsz) return 0;
    memcpy(out, b, n);
    out[n] = 0;
    return 1;
}
static int sc_word(scan *s, const char *w) {
    sc_ws(s);
    size_t n = strlen(w);
    if ((size_t)(s->e - s->p) >= n && memcmp(s->p, w, n) == 0) {
        s->p += n;
        return 1;
    }
    return 0;
}

static int parse_shape(scan *s, nf_npy_header *h, char *err, size_t errlen) {
    if (!sc_ch(s, '(')) return fail(NF_EFORMAT, ".npy: shape must be a tuple");
    h->ndim = 0;
    for (;;) {
        if (sc_ch(s, ')')) break;
        sc_ws(s);
        if (s->p >= s->e || *s->p < '0' || *s->p > '9')
            return fail(NF_EFORMAT, ".npy: shape holds a value that is not a non-negative integer");
        int64_t v = 0;
        while (s->p < s->e && *s->p >= '0' && *s->p <= '9') {
            if (v > ((int64_t)1 << 50)) return fail(NF_ERANGE, ".npy: shape dimension too large");
            v = v * 10 + (*s->p++ - '0');
        }
        sc_word(s, "L"); /* Python 2 longs */
        if (h->ndim == NF_NPY_MAX_DIMS)
            return fail(NF_EFORMAT, ".npy: more than %d dimensions", NF_NPY_MAX_DIMS);
        h->shape[h->ndim++] = v;
        if (sc_ch(s, ')')) break;
        if (!sc_ch(s, ',')) return fail(NF_EFORMAT, ".npy: malformed shape tuple");
    }
    return 0;
}

int nf_npy_parse_header(const void *buf, size_t len, nf_npy_header *h, char *err, size_t errlen) {
    memset(h, 0, sizeof *h);
    const unsigned char *b = buf;
    if (!b || len < 10) return fail(NF_ECORRUPT, ".npy: %zu bytes is too short for a header", len);
    if (memcmp(b, "\x93NUMPY", 6) != 0) return fail(NF_EFORMAT, ".npy: bad magic (not a .npy file)");
    int major = b[6], minor = b[7];
    size_t hlen, hoff;
    if (major == 1) {
        hlen = (size_t)nf_le_get(b + 8, 2);
        hoff = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) return fail(NF_ECORRUPT, ".npy: truncated header");
        hlen = (size_t)nf_le_get(b + 8, 4);
        hoff = 12;
    } else {
        return fail(NF_EFORMAT, ".npy: unsupported format version %d.%d", major, minor);
    }
    h->data_off = hoff + hlen;
    if (hlen > len - hoff)
        return fail(NF_ECORRUPT, ".npy: header length %zu runs past the end of the %zu-byte buffer",
                    hlen, len);
    const char *dict = (const char *)b + hoff;
    scan s = {dict, dict + hlen};
    char key[32];
    int have_descr = 0, have_fo = 0, have_shape = 0;
    if (!sc_ch(&s, '{')) return fail(NF_EFORMAT, ".npy: header is not a dict");
    for (;;) {
        if (sc_ch(&s, '}')) break;
        if (!sc_str(&s, key, sizeof key) || !sc_ch(&s, ':'))
            return fail(NF_EFORMAT, ".npy: malformed header dict");
        if (strcmp(key, "descr") == 0) {
            if (!sc_str(&s, h->descr, sizeof h->descr))
                return fail(NF_EFORMAT, ".npy: unsupported dtype (descr must be a simple type string)");
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (sc_word(&s, "True")) h->fortran = 1;
            else if (sc_word(&s, "False")) h->fortran = 0;
            else return fail(NF_EFORMAT, ".npy: fortran_order must be True or False");
            have_fo = 1;
        } else if (strcmp(key, "shape") == 0) {
            int rc = parse_shape(&s, h, err, errlen);
            if (rc) return rc;
            have_shape = 1;
        } else {
            return fail(NF_EFORMAT, ".npy: unknown header key '%s'", key);
        }
        if (sc_ch(&s, '}')) break;
        if (!sc_ch(&s, ',')) return fail(NF_EFORMAT, ".npy: malformed header dict");
    }
    sc_ws(&s);
    while (s.p < s.e && *s.p == '\0') s.p++; /* tolerate NUL padding */
    if (s.p != s.e) return fail(NF_EFORMAT, ".npy: junk after the header dict");
    if (!have_descr || !have_fo || !have_shape)
        return fail(NF_EFORMAT, ".npy: header lacks %s",
                    !have_descr ? "'descr'" : !have_fo ? "'fortran_order'" : "'shape'");
    return 0;
}

size_t nf_npy_write_header(char *out, const char *descr, const int64_t *shape, int ndim) {
    char dict[200];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld,",
                     descr, (long long)shape[0]);
    for (int i = 1; i < ndim && i < 8; i++)
        n += snprintf(dict + n, sizeof dict - n, "%s%lld", i > 1 ? ", " : " ", (long long)shape[i]);
    n += snprintf(dict + n, sizeof dict - n, "), }");
    /* magic, version 1.0, u16 length, the dict padded with spaces and
     * ended by '\n' so the data starts 64-byte aligned */
    size_t total = 10 + (size_t)n + 1, pad = (64 - total % 64) % 64, H = total + pad;
    nf_blob_writer w = nf_blob_writer_fixed(out, NF_NPY_HEADER_MAX);
    nf_blob_put(&w, "\x93NUMPY\x01\x00", 8);
    nf_blob_put_u16(&w, (uint16_t)(H - 10));
    nf_blob_put(&w, dict, (size_t)n);
    memset(out + 10 + n, ' ', pad);
    out[H - 1] = '\n';
    return H;
}

void *nf_npy_f32(const nf_real *v, int64_t n, int d, size_t *len) {
    int64_t shape[2] = {n, d};
    char hdr[NF_NPY_HEADER_MAX];
    size_t H = nf_npy_write_header(hdr, "<f4", shape, d ? 2 : 1), nv = (size_t)n * (d ? d : 1);
    unsigned char *p = nf_malloc(H + nv * 4);
    if (!p) return NULL;
    memcpy(p, hdr, H);
    for (size_t i = 0; i < nv; i++) nf_blob_le_f32(p + H + 4 * i, v[i]);
    *len = H + nv * 4;
    return p;
}
