/* blob.c: little-endian blob writer and bounds-checked reader (blob.h). */
#include "alloc.h"
#include "blob.h"

void nf_blob_put(nf_blob_writer *w, const void *src, size_t n) {
    if (w->bad) return;
    if (n > w->cap - w->n) {
        if (w->fixed || n > SIZE_MAX / 2 - w->n) {
            w->bad = 1;
            return;
        }
        size_t cap = w->cap ? w->cap * 2 : w->hint ? w->hint : 4096;
        while (cap < w->n + n) cap *= 2;
        unsigned char *q = nf_realloc(w->p, cap);
        if (!q) {
            w->bad = 1;
            return;
        }
        w->p = q;
        w->cap = cap;
    }
    if (n) memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void put_le(nf_blob_writer *w, uint64_t v, int n) {
    unsigned char c[8];
    nf_le_put(c, v, n);
    nf_blob_put(w, c, (size_t)n);
}
void nf_blob_put_u16(nf_blob_writer *w, uint16_t v) { put_le(w, v, 2); }
void nf_blob_put_u32(nf_blob_writer *w, uint32_t v) { put_le(w, v, 4); }
void nf_blob_put_u64(nf_blob_writer *w, uint64_t v) { put_le(w, v, 8); }
void nf_blob_put_f64(nf_blob_writer *w, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    put_le(w, u, 8);
}
void nf_blob_put_f32s(nf_blob_writer *w, const nf_real *v, size_t n) {
#if !defined(NF_DOUBLE) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* float32 on a little-endian host: the bytes are already the format's */
    if (n <= SIZE_MAX / 4) {
        nf_blob_put(w, v, n * 4);
        return;
    }
#endif
    unsigned char c[256];
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; i < n && k < sizeof c; i++, k += 4) nf_blob_le_f32(c + k, v[i]);
        nf_blob_put(w, c, k);
    }
}

void nf_blob_put_crc_since(nf_blob_writer *w, size_t start) {
    if (!w->bad && start <= w->n) nf_blob_put_u32(w, nf_crc32(w->p + start, w->n - start));
}

int nf_blob_finish(nf_blob_writer *w, void **buf, size_t *len) {
    nf_blob_put_crc_since(w, 0);
    if (w->bad) {
        nf_blob_writer_free(w);
        return NF_ENOMEM;
    }
    *buf = w->p;
    *len = w->n;
    w->p = NULL;
    w->n = w->cap = 0;
    return 0;
}

void nf_blob_writer_free(nf_blob_writer *w) {
    if (!w->fixed) nf_free(w->p);
    w->p = NULL;
    w->n = w->cap = 0;
}

const void *nf_blob_bytes(nf_blob_reader *r, uint64_t n) {
    if (r->bad || n > r->len - r->off) {
        r->bad = 1;
        return NULL;
    }
    const void *p = r->p + r->off;
    r->off += (size_t)n;
    return p;
}
static uint64_t get_le(nf_blob_reader *r, int n) {
    const unsigned char *p = nf_blob_bytes(r, (uint64_t)n);
    return p ? nf_le_get(p, n) : 0;
}
unsigned nf_blob_u8(nf_blob_reader *r) { return (unsigned)get_le(r, 1); }
unsigned nf_blob_u16(nf_blob_reader *r) { return (unsigned)get_le(r, 2); }
uint32_t nf_blob_u32(nf_blob_reader *r) { return (uint32_t)get_le(r, 4); }
uint64_t nf_blob_u64(nf_blob_reader *r) { return get_le(r, 8); }
double nf_blob_f64(nf_blob_reader *r) {
    uint64_t u = get_le(r, 8);
    double v;
    memcpy(&v, &u, 8);
    return v;
}
void nf_blob_f32s(nf_blob_reader *r, nf_real *out, size_t n) {
    const unsigned char *p = n <= SIZE_MAX / 4 ? nf_blob_bytes(r, (uint64_t)n * 4) : NULL;
    if (!p) {
        r->bad = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = nf_blob_get_f32(p + 4 * i);
}

int nf_blob_crc_ok(const void *buf, size_t len) {
    return buf && len >= 4 && nf_le_get((const unsigned char *)buf + len - 4, 4) == nf_crc32(buf, len - 4);
}
