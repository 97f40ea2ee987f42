/* picture.h: PNG pictures of samples, shared by `flowd sample -o out.png`,
 * the daemon's `Accept: image/png` sample answer and `flowctl sample -o
 * out.png` (common/ is compiled into flowd and flowctl; core/ stays free of
 * libpng): an 8-bit grayscale or RGB PNG writer over libpng (to a file or
 * to memory), two renderers, a scatter plot for 2-D rows and a tile grid
 * for image rows, and fdpic_render_samples / fdpic_write_samples, which pick
 * one for the rows.  Names carry the fdpic_ prefix (libpng owns png_).
 *
 * Image rows.  A row of shape (C, H, W) is an image stored flat in C-H-W
 * order: value (c, i, j) at index (c*H + i)*W + j.  The grid draws
 *   C = 1  one grayscale H x W tile per row;
 *   C = 3  one RGB H x W tile per row (channels 0, 1, 2 = red, green, blue);
 *   other C  one strip per row: its C channels as grayscale H x W tiles side
 *          by side, 1 pixel apart (so a 2- or 4-channel image shows every
 *          channel; nothing is refused for its channel count).
 * A flow without a declared shape keeps the old rule: a square D >= 4 is
 * one grayscale side x side tile (784 = 28x28).
 *
 * Every function returns 0 or a negative NF_E* status (core/nf.h):
 * NF_EINVAL bad sizes, NF_ERANGE a picture too large, NF_ENOMEM, NF_EIO
 * write failure, NF_EUNSUPPORTED rows with no picture form. */
#ifndef FLOWD_PICTURE_H
#define FLOWD_PICTURE_H

#include "../core/nf.h"

#include <stddef.h>

/* The largest picture side, in pixels. */
#define FDPIC_MAX_SIDE 65536

/* Writes pixels (h, w, channels) row-major, channels interleaved (1: gray,
 * 0 black .. 255 white; 3: RGB), as an 8-bit PNG at path (through a
 * temporary file and rename, so a reader never sees half a picture).
 * 1 <= w, h <= FDPIC_MAX_SIDE. */
int fdpic_write_png(const char *path, int w, int h, int channels, const unsigned char *pixels);
/* fdpic_write_png with channels 1. */
int fdpic_write_gray(const char *path, int w, int h, const unsigned char *pixels);
/* The same PNG in memory: *png malloc'd (caller free()s), *len its size. */
int fdpic_png_encode(int w, int h, int channels, const unsigned char *pixels, void **png,
                     size_t *len);

/* Scatter plot of n rows xy (n,2) on a size x size light canvas, points as
 * small dark dots (overlaps darken).  The axes span each coordinate's
 * 0.5%..99.5% quantiles plus a 5% margin, so a few far outliers don't shrink
 * the picture to a dot; the lines x=0 and y=0 are drawn faintly when inside.
 * Non-finite rows are skipped.  *pixels (size,size) gray is malloc'd, caller
 * free()s.  16 <= size <= 8192, n >= 1. */
int fdpic_render_scatter(const nf_real *x, int n, int size, unsigned char **pixels);

/* The size of the tile grid of n rows of shape (C, H, W), without drawing
 * it: cols = ceil(sqrt(n)) tiles (strips for C other than 1 and 3), rows =
 * ceil(n/cols), 1-pixel mid-grey gaps and border; *channels 1 or 3.
 * NF_ERANGE past FDPIC_MAX_SIDE, NF_EINVAL for n < 1 or a shape dim < 1. */
int fdpic_grid_size(int n, const int shape[3], int *w, int *h, int *channels);
/* The same with want_cols tiles a row (0: ceil(sqrt(n))): a class-
 * conditional model's samples, one row of tiles per class. */
int fdpic_grid_size_cols(int n, int want_cols, const int shape[3], int *w, int *h, int *channels);

/* Tile grid of n images x (n, C*H*W) of shape (C, H, W), laid out as
 * fdpic_grid_size says.  A value v maps to 255 * (clamp(v, lo, hi) - lo) /
 * (hi - lo); dequantized pixel models pass lo = 0, hi = levels - 1 and
 * floor values first (floor_values != 0).  Non-finite values render as mid
 * grey (128).  *pixels is (*h, *w, *channels), malloc'd, caller free()s. */
int fdpic_render_grid(const nf_real *x, int n, const int shape[3], double lo, double hi,
                      int floor_values, unsigned char **pixels, int *w, int *h, int *channels);
int fdpic_render_grid_cols(const nf_real *x, int n, int want_cols, const int shape[3], double lo,
                           double hi, int floor_values, unsigned char **pixels, int *w, int *h,
                           int *channels);

/* How n sample rows x (n, D) are drawn, given the flow's image shape
 * (shape NULL or all zero: none declared):
 *   a declared shape   the tile grid of that shape;
 *   D = 2 (no shape)   a scatter plot (512 x 512);
 *   D a square >= 4    a grayscale grid of side x side tiles;
 *   anything else      no picture (fdpic_picture_kind returns 0).
 * fdpic_picture_kind: 1 scatter, 2 grid, 0 none; with a grid, *grid_shape
 * (may be NULL) gets the tile shape used. */
int fdpic_picture_kind(int D, const int shape[3], int grid_shape[3]);

/* The picture of n sample rows x (n, D) (kinds as above), each pixel
 * enlarged scale times (1 = none).  The grid maps [lo, hi] to
 * black..white, with floor_values as fdpic_render_grid; have_range = 0
 * takes the samples' own finite range instead.  *pixels (*h, *w,
 * *channels) malloc'd, caller free()s.  0, or a negative NF_E* status with
 * a message in err (NF_EUNSUPPORTED for rows with no picture form). */
int fdpic_render_samples(const nf_real *x, int n, int D, const int shape[3], int have_range,
                         double lo, double hi, int floor_values, int scale,
                         unsigned char **pixels, int *w, int *h, int *channels, char *err,
                         size_t errlen);
/* The same with cols tiles a row in a grid (0: the default layout). */
int fdpic_render_samples_cols(const nf_real *x, int n, int cols, int D, const int shape[3],
                              int have_range, double lo, double hi, int floor_values, int scale,
                              unsigned char **pixels, int *w, int *h, int *channels, char *err,
                              size_t errlen);
/* fdpic_render_samples, then the PNG at path. */
int fdpic_write_samples(const char *path, const nf_real *x, int n, int D, const int shape[3],
                        int have_range, double lo, double hi, int floor_values, int scale,
                        char *err, size_t errlen);

#endif
