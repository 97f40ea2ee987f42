/* data.h: datasets for training flows: loaders for the formats users upload
 * (CSV, NumPy .npy, IDX/MNIST, JSON rows), seeded 2-D toy generators, a
 * seeded train/validation/test split, and column statistics.
 *
 * Part of core, a leaf library: it parses bytes already in memory (the server
 * receives request bodies in memory), so it knows nothing of HTTP or storage.
 * nf_data_load_file is a convenience that reads a file and calls the same
 * parsers.
 *
 * Every loader treats its input as hostile: malformed, truncated or absurd
 * input (declared shapes of 1e12 rows, header lengths past the end, negative
 * or zero dimensions, decompression bombs) gives an error, never a crash, a
 * read past the buffer or an allocation larger than the input justifies.
 * Sizes are checked before any allocation, in overflow-safe arithmetic.
 * A dataset holds at most NF_DATA_MAX_VALUES values (n*d).
 *
 * Every function returns 0 or a negative NF_E* status (nf.h); those taking
 * `char *err, size_t errlen` also write a message there (err may be NULL).
 * Statuses: NF_EFORMAT malformed input, NF_ECORRUPT truncated input,
 * NF_ERANGE a size or value outside the limits, NF_ENONFINITE NaN/Inf,
 * NF_ENOMEM, NF_EIO (files), NF_EINVAL bad arguments.
 */
#ifndef NF_DATA_H
#define NF_DATA_H

#include "nf.h"

#include <stddef.h>
#include <stdint.h>

#define NF_DATA_MAX_VALUES ((int64_t)1 << 31)    /* n*d limit */
#define NF_DATA_MAX_INFLATE ((size_t)1 << 30)    /* gunzip output cap, 1 GiB */

/* A dataset of n rows of d values. */
typedef struct nf_data {
    int64_t n;      /* rows */
    int d;          /* columns */
    nf_real *x;     /* (n,d) row-major, owned: released by nf_data_free */
    int is_integer; /* every value is an integer (pixel data: dequantize) */
    double vmin, vmax; /* smallest and largest value over all of x */
    /* The image shape of a row, (channels, height, width) with C*H*W == d,
     * when the file says it (IDX and .npy with 3 or 4 dimensions, below);
     * all zero when unknown (CSV, JSON rows, flat arrays). */
    int shape[3];
} nf_data;

/* Frees x and zeroes *d.  NULL, or a zeroed struct, is a no-op. */
void nf_data_free(nf_data *d);

/* Allocates out->x for (n,d) values (uninitialised) and sets n, d; the
 * summary fields and the shape are zero until nf_data_summarize (shape:
 * until the caller sets it).  Caller frees with
 * nf_data_free.  NF_ERANGE if n < 1, d < 1 or n*d > NF_DATA_MAX_VALUES. */
int nf_data_alloc(nf_data *out, int64_t n, int d, char *err, size_t errlen);

/* Checks every value is finite and fills is_integer, vmin, vmax.
 * NF_ENONFINITE names the first bad row and column. */
int nf_data_summarize(nf_data *dat, char *err, size_t errlen);

/* ---- loaders --------------------------------------------------------------
 * buf (len bytes) is borrowed and need not be NUL-terminated.  On success
 * *out is filled (summary included) and the caller frees it with
 * nf_data_free; on failure *out is zeroed. */
typedef enum {
    NF_DATA_AUTO = 0, /* detect from the content */
    NF_DATA_CSV,
    NF_DATA_NPY,
    NF_DATA_IDX,
    NF_DATA_JSON,
    NF_DATA_FORMAT_COUNT
} nf_data_format;

/* "auto", "csv", "npy", "idx", "json" (static strings). */
const char *nf_data_format_name(nf_data_format f);
/* Parses one of the names above (case-sensitive).  NF_EINVAL if unknown. */
int nf_data_format_parse(const char *name, nf_data_format *out);
/* Guesses the format of buf: .npy magic, gzip (taken as IDX: MNIST files are
 * shipped gzipped), IDX magic, '[' or '{' first (JSON), else CSV. */
nf_data_format nf_data_detect(const void *buf, size_t len);

/* CSV: numbers separated by commas (spaces/tabs around a cell are ignored),
 * one row per line, LF or CRLF, an optional UTF-8 BOM.  The first line is a
 * header when one of its cells is not a number.  Blank lines are skipped.
 * Every row must have the header's (or first row's) number of columns.
 * Numbers are decimal ("1", "-2.5", "3e-4"); hex floats, nan and inf are
 * rejected, as are values overflowing double (or float in the float build).
 * Errors name the place: "line 7, column 3: 'abc' is not a number". */
int nf_data_load_csv(const void *buf, size_t len, nf_data *out, char *err, size_t errlen);

/* NumPy .npy, format versions 1.0, 2.0 and 3.0.  dtypes f4, f8, u1, i1, u2,
 * i2, u4, i4, u8, i8 with any byte order, fortran_order False.  Shape (n,)
 * loads as (n,1), (n,d) as is, and (n,a,b,...) flattens to (n,a*b*...).
 * Images: (n,H,W) gets shape [1,H,W] and (n,C,H,W) shape [C,H,W] (rows stay
 * flat in C-H-W order); other ranks get none.
 * The data must be exactly n*prod(rest)*itemsize bytes. */
int nf_data_load_npy(const void *buf, size_t len, nf_data *out, char *err, size_t errlen);

/* IDX (the MNIST family): bytes 00 00, a type (08 u8, 09 i8, 0B i16, 0C i32,
 * 0D f32, 0E f64), the number of dims, big-endian u32 dims, big-endian data.
 * Gzipped input (1f 8b) is inflated first, refusing more than
 * NF_DATA_MAX_INFLATE bytes.  (n) loads as (n,1), (n,28,28) as (n,784).
 * Shapes as for .npy: (n,H,W) gives [1,H,W], (n,C,H,W) gives [C,H,W]. */
int nf_data_load_idx(const void *buf, size_t len, nf_data *out, char *err, size_t errlen);

/* JSON rows: {"rows":[[1,2],[3,4]]} or a bare [[1,2],[3,4]].  A list of plain
 * numbers [1,2,3] loads as (n,1).  Rows must all have the same length and
 * hold only finite numbers; errors name the row. */
int nf_data_load_json(const void *buf, size_t len, nf_data *out, char *err, size_t errlen);

/* Loads buf in format fmt (NF_DATA_AUTO: nf_data_detect).  Gzipped input is
 * inflated first for every format. */
/* Rows as CSV, the one writer of the daemon's text/csv answers and `flowd
 * sample -o x.csv`: a header line (header, or x0,x1,... when NULL), then n
 * lines of d comma-separated values printed %.9g.  A non-finite value
 * (NaN, +-inf: a row outside the support) is an empty field, as the API
 * documents for log_prob, so the file reads back (nf_data_load_csv reports
 * the row instead of misreading a word).  malloc'd (caller free()s), NULL
 * when out of memory; *len its length (no NUL counted, one is written). */
char *nf_data_csv(const nf_real *v, int64_t n, int d, const char *header, size_t *len);

int nf_data_load(const void *buf, size_t len, nf_data_format fmt, nf_data *out, char *err,
                 size_t errlen);

/* Limits for a load from an untrusted source (the daemon's uploads), all
 * checked before the memory they guard is taken:
 *   max_inflate  bytes a gzip body may inflate to, checked while inflating
 *                (0: NF_DATA_MAX_INFLATE, which is also the ceiling);
 *   max_ratio    inflated bytes per compressed byte consumed, checked while
 *                inflating once more than NF_DATA_RATIO_FLOOR bytes are out
 *                (0: no check; deflate itself tops out near 1032:1);
 *   max_memory   what the parse may allocate, estimated by
 *                nf_data_parse_cost before it starts, plus the inflated
 *                bytes (0: no check).
 * A limit that is hit gives NF_ERANGE with a message naming it, and sets
 * exceeded (NF_DATA_LIMIT_*) and, for memory, cost (the estimate). */
#define NF_DATA_RATIO_FLOOR ((size_t)1 << 20)
enum { NF_DATA_LIMIT_INFLATE = 1, NF_DATA_LIMIT_RATIO, NF_DATA_LIMIT_MEMORY, NF_DATA_LIMIT_BUDGET };
/* reserve (may be NULL): asked before each allocation of the load (the
 * inflate buffer and its growths, then the parse's estimate) with the bytes
 * it will take; non-zero refuses: NF_ENOMEM, exceeded NF_DATA_LIMIT_BUDGET
 * (the daemon's shared request memory, released by the caller after). */
typedef struct nf_data_limits {
    size_t max_inflate;
    unsigned max_ratio;
    size_t max_memory;
    int (*reserve)(void *ctx, size_t bytes);
    void *reserve_ctx;
    int exceeded; /* out */
    size_t cost;  /* out */
} nf_data_limits;
int nf_data_load_limited(const void *buf, size_t len, nf_data_format fmt, nf_data_limits *lim, nf_data *out,
                         char *err, size_t errlen);

/* An upper bound of the bytes parsing buf (not gzipped) as fmt allocates,
 * from a scan that allocates nothing: JSON a tree node (sizeof(cJSON) as
 * malloc rounds it, 80 bytes on x86-64) and a value per ',' '[' '{' ':',
 * plus the text (about 20-45 bytes per body byte for rows of numbers); CSV, .npy and IDX 4 bytes per body byte
 * (a u8 pixel becomes a 4-byte float). */
size_t nf_data_parse_cost(const void *buf, size_t len, nf_data_format fmt);

/* Reads the file at path (borrowed) into memory and calls nf_data_load.
 * NF_EIO if it cannot be read. */
int nf_data_load_file(const char *path, nf_data_format fmt, nf_data *out, char *err,
                      size_t errlen);

/* ---- built-in 2-D toy sets -------------------------------------------------
 * The usual toy densities of the flow literature (FFJORD / nflows toy data):
 *   moons        two interleaved half circles (sklearn), *2 + (-1,-0.2)
 *   circles      two concentric circles, radii 3 and 1.5
 *   8gaussians   eight Gaussians on a circle of radius 2*sqrt(2)
 *   checkerboard uniform on the black squares of a checkerboard on [-4,4]^2
 *   pinwheel     five curved arms
 *   2spirals     two interleaved spirals
 *   rings        four concentric rings, radii 3, 2.25, 1.5, 0.75
 * All lie roughly in [-4,4]^2.  noise < 0 picks each set's usual noise level
 * (the std of the Gaussian jitter, in the set's own units before scaling;
 * for checkerboard the default is 0).  The same (name, n, noise, seed) gives
 * the same rows.  1 <= n <= NF_DATA_MAX_VALUES/2.  out as for the loaders. */
int nf_data_builtin(const char *name, int64_t n, double noise, uint64_t seed, nf_data *out,
                    char *err, size_t errlen);
/* The same with labels != 0: a third column holds each row's component,
 * an integer label (the rows and first two columns are nf_data_builtin's):
 *   moons, circles: 0 outer, 1 inner; rings: 0..3 from the outside in;
 *   8gaussians: the Gaussian 0..7; checkerboard: the column of squares
 *   0..3 (floor(x1 / 2) + 2); pinwheel: the arm 0..4; 2spirals: 0 or 1.
 * For class-conditional flows p(x | label). */
int nf_data_builtin_ex(const char *name, int64_t n, double noise, uint64_t seed, int labels,
                       nf_data *out, char *err, size_t errlen);
/* The names above, NULL-terminated (static). */
const char *const *nf_data_builtin_names(void);

/* ---- splitting and shuffling ---------------------------------------------- */
/* Shuffles idx (n) in place with Fisher-Yates (uniform, unbiased).  idx is
 * borrowed; to draw a permutation, fill it with 0..n-1 first. */
int nf_data_shuffle_index(int64_t *idx, int64_t n, nf_rng *rng);

/* Splits all (borrowed) into train/val/test by a seeded random permutation,
 * copying rows.  n_test = round(n*test_fraction), n_val = round(n*val_fraction),
 * the rest is train and must be at least one row.  Fractions in [0,1).
 * val/test may be NULL when their fraction is 0; a split with no rows gets
 * n = 0, x = NULL.  Each part copies all's is_integer, vmin, vmax and shape (a
 * property of the dataset, so that dequantization and scaling agree across
 * the parts).  Caller frees each part with nf_data_free. */
int nf_data_split(const nf_data *all, double val_fraction, double test_fraction, uint64_t seed,
                  nf_data *train, nf_data *val, nf_data *test);

/* ---- statistics ------------------------------------------------------------ */
/* Column means and population standard deviations (divisor n), two passes in
 * double.  mean (d) and std (d) are caller-owned.  A constant column has
 * std 0: a caller standardising should divide by 1 there.  NF_EINVAL if n < 1. */
int nf_data_stats(const nf_data *dat, double *mean, double *std);

#endif
