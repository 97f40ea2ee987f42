/* npy.h: the NumPy .npy format (version 1.0 written; 1.0, 2.0 and 3.0 read),
 * one module for every reader and writer of it: the dataset loader
 * (data.c), the daemon's responses and `flowd sample -o x.npy`, and
 * flowctl, which streams a file's rows in chunks.
 *
 *   "\x93NUMPY" u8 major u8 minor, u16 (1.0) or u32 (2.0, 3.0) header length,
 *   a Python dict literal {'descr': '<f4', 'fortran_order': False,
 *   'shape': (n, d), } padded with spaces to a multiple of 64 and ended by
 *   '\n', then the values in C order.
 * Part of core, a leaf library: bytes in memory only. */
#ifndef NF_NPY_H
#define NF_NPY_H

#include "nf.h"

#include <stddef.h>
#include <stdint.h>

#define NF_NPY_MAX_DIMS 32
/* the longest header nf_npy_write_header writes (<= 8 dimensions) */
#define NF_NPY_HEADER_MAX 256

typedef struct nf_npy_header {
    char descr[16];   /* the dtype string as written, e.g. "<f4", "|u1" */
    int fortran;      /* fortran_order True */
    int ndim;
    int64_t shape[NF_NPY_MAX_DIMS];
    size_t data_off;  /* bytes before the data (the header's full size) */
} nf_npy_header;

/* Parse magic, version and header dict from the first len bytes of a .npy
 * (the data need not be there).  NF_ECORRUPT when the header does not fit
 * in len bytes: then h->data_off is its full size if the first 12 bytes
 * (10 for version 1.0) told it, else 0.  NF_EFORMAT for anything
 * malformed, NF_ERANGE for a dimension past 2^50.  The dtype and order
 * are reported, not judged.  err gets a message starting ".npy: ". */
int nf_npy_parse_header(const void *buf, size_t len, nf_npy_header *h, char *err, size_t errlen);

/* Write a version 1.0 header for an array of dtype descr and shape (ndim
 * dims, 1 to 8) into out (NF_NPY_HEADER_MAX bytes); returns its length, a
 * multiple of 64. */
size_t nf_npy_write_header(char *out, const char *descr, const int64_t *shape, int ndim);

/* v as a little-endian float32 .npy of shape (n,) when d == 0, else (n, d).
 * malloc'd (caller free()s), NULL when out of memory; *len its size. */
void *nf_npy_f32(const nf_real *v, int64_t n, int d, size_t *len);

#endif
