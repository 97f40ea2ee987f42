/* fuzz.h: helpers shared by the libFuzzer harnesses (fuzz_*.c).
 *
 * Checksummed blobs (model files, parameter, optimizer and trainer-state
 * blobs) end with a CRC-32 of every byte before it, which a mutator almost
 * never gets right.  Harnesses of those formats read a flag byte first: with
 * bit 0 set the trailing CRC is recomputed before parsing, so the fuzzer
 * reaches the structure behind the checksum; with it clear the bytes are
 * parsed as given (the checksum path itself). */
#ifndef FLOWD_FUZZ_H
#define FLOWD_FUZZ_H

#include "../core/data.h"

#include <math.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* an exact-size heap copy, so ASan sees any read past the end (len 0 gives
 * a 1-byte allocation that is never read) */
static inline unsigned char *fz_dup(const uint8_t *d, size_t n) {
    unsigned char *p = malloc(n ? n : 1);
    if (!p) abort();
    if (n) memcpy(p, d, n);
    return p;
}

/* a NUL-terminated copy for APIs taking C strings */
static inline char *fz_str(const uint8_t *d, size_t n) {
    char *p = malloc(n + 1);
    if (!p) abort();
    if (n) memcpy(p, d, n);
    p[n] = 0;
    return p;
}

/* strip the flag byte; with bit 0 set, recompute the trailing CRC-32 */
static inline unsigned char *fz_blob(const uint8_t *d, size_t n, size_t *len) {
    if (n < 1) return NULL;
    unsigned char *p = fz_dup(d + 1, n - 1);
    *len = n - 1;
    if ((d[0] & 1) && *len >= 4) {
        uint32_t c = nf_crc32(p, *len - 4);
        p[*len - 4] = c & 255;
        p[*len - 3] = (c >> 8) & 255;
        p[*len - 2] = (c >> 16) & 255;
        p[*len - 1] = c >> 24;
    }
    return p;
}

/* what every loader promises: on success a non-empty (n,d) table of finite
 * values with a consistent summary, on failure a zeroed struct */
static inline void fz_check_data(int rc, const nf_data *d, const char *err) {
    if (rc) {
        if (d->x || d->n || d->d) abort();
        if (!err[0]) abort(); /* every failure explains itself */
        return;
    }
    if (d->n < 1 || d->d < 1 || !d->x || d->n * (int64_t)d->d > NF_DATA_MAX_VALUES) abort();
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < d->n * (int64_t)d->d; i++) {
        double v = d->x[i];
        if (!isfinite(v)) abort();
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (lo != d->vmin || hi != d->vmax) abort();
}

#endif
