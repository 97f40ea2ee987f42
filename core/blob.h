/* blob.h: the little-endian binary blobs of core (internal): the model file
 * and its parameter blobs (model.c, flow.c), optimizer state (optim.c),
 * trainer state (train.c) and .npy headers (npy.c).
 *
 * A writer appends to a buffer that grows (nf_blob_writer_init) or to a
 * fixed one (nf_blob_writer_fixed); a failed growth or overflow sets bad and
 * later puts do nothing, so a whole blob is written unchecked and its
 * status taken once at the end (nf_blob_finish, which appends the CRC-32
 * trailer that every core blob ends with).  A reader fails cleanly: a read
 * past the end sets bad and yields zeros (NULL for bytes), so a truncated
 * blob is one check after the reads.  Integers and floats are stored
 * little-endian whatever the host; float32 arrays are converted from and to
 * nf_real. */
#ifndef NF_BLOB_H
#define NF_BLOB_H

#include "nf.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- little-endian helpers ---------------------------------------------- */
static inline void nf_le_put(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint64_t nf_le_get(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static inline void nf_blob_le_f32(unsigned char *p, nf_real v) {
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    nf_le_put(p, u, 4);
}
static inline nf_real nf_blob_get_f32(const unsigned char *p) {
    uint32_t u = (uint32_t)nf_le_get(p, 4);
    float f;
    memcpy(&f, &u, 4);
    return (nf_real)f;
}

/* ---- writer ----------------------------------------------------------------- */
typedef struct nf_blob_writer {
    unsigned char *p;
    size_t n, cap;
    size_t hint; /* first allocation (growing), e.g. the blob's known size */
    int fixed; /* p is the caller's, cap bytes */
    int bad;   /* out of memory (growing) or of room (fixed) */
} nf_blob_writer;

/* growing, first to size_hint bytes (0: 4096); the buffer is nf_malloc'd
 * and handed over by nf_blob_finish */
static inline nf_blob_writer nf_blob_writer_init(size_t size_hint) {
    nf_blob_writer w = {NULL, 0, 0, size_hint, 0, 0};
    return w;
}
static inline nf_blob_writer nf_blob_writer_fixed(void *buf, size_t cap) {
    nf_blob_writer w = {buf, 0, cap, 0, 1, 0};
    return w;
}
void nf_blob_put(nf_blob_writer *w, const void *src, size_t n);
void nf_blob_put_u16(nf_blob_writer *w, uint16_t v);
void nf_blob_put_u32(nf_blob_writer *w, uint32_t v);
void nf_blob_put_u64(nf_blob_writer *w, uint64_t v);
void nf_blob_put_f64(nf_blob_writer *w, double v);
void nf_blob_put_f32s(nf_blob_writer *w, const nf_real *v, size_t n); /* as float32 */
/* Appends the CRC-32 of everything written, hands the buffer over (caller
 * frees with nf_free/free); NF_ENOMEM (buffer released) if a put failed. */
int nf_blob_finish(nf_blob_writer *w, void **buf, size_t *len);
/* Appends the CRC-32 of the bytes written from offset start on: a blob
 * nested in another (a trainer state holds the optimizer's) */
void nf_blob_put_crc_since(nf_blob_writer *w, size_t start);
void nf_blob_writer_free(nf_blob_writer *w); /* drop a growing writer's buffer */

/* ---- reader ------------------------------------------------------------------- */
typedef struct nf_blob_reader {
    const unsigned char *p;
    size_t len, off;
    int bad; /* a read ran past len */
} nf_blob_reader;

static inline nf_blob_reader nf_blob_reader_init(const void *buf, size_t len) {
    nf_blob_reader r = {buf, buf ? len : 0, 0, 0};
    return r;
}
/* n bytes at the cursor (advancing it), or NULL (bad set) if fewer remain */
const void *nf_blob_bytes(nf_blob_reader *r, uint64_t n);
unsigned nf_blob_u8(nf_blob_reader *r);
unsigned nf_blob_u16(nf_blob_reader *r);
uint32_t nf_blob_u32(nf_blob_reader *r);
uint64_t nf_blob_u64(nf_blob_reader *r);
double nf_blob_f64(nf_blob_reader *r);
void nf_blob_f32s(nf_blob_reader *r, nf_real *out, size_t n); /* float32 -> nf_real */
static inline size_t nf_blob_left(const nf_blob_reader *r) { return r->len - r->off; }

/* 1 if buf (len >= 4) ends with the CRC-32 of the bytes before it */
int nf_blob_crc_ok(const void *buf, size_t len);

#endif
