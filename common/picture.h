/* picture.h: PNG pictures of samples, shared by `flowd sample -o out.png`
 * and `flowctl sample -o out.png` (common/ is compiled into both binaries;
 * core/ stays free of libpng): an 8-bit grayscale writer over libpng, two
 * renderers, a scatter plot for 2-D rows and a tile grid for rows that are
 * square images (D = side*side, e.g. 784 = 28x28), and
 * fdpic_write_samples, which picks one for the rows and writes the file.
 * Names carry the fdpic_ prefix (libpng owns png_).
 *
 * Every function returns 0 or a negative NF_E* status (core/nf.h):
 * NF_EINVAL bad sizes, NF_ENOMEM, NF_EIO write failure. */
#ifndef FLOWD_PICTURE_H
#define FLOWD_PICTURE_H

#include "../core/nf.h"

/* Writes pixels (h,w) row-major, 0 black .. 255 white, as an 8-bit
 * grayscale PNG at path (through a temporary file and rename, so a reader
 * never sees half a picture).  1 <= w, h <= 65536. */
int fdpic_write_gray(const char *path, int w, int h, const unsigned char *pixels);

/* Scatter plot of n rows xy (n,2) on a size x size light canvas, points as
 * small dark dots (overlaps darken).  The axes span each coordinate's
 * 0.5%..99.5% quantiles plus a 5% margin, so a few far outliers don't shrink
 * the picture to a dot; the lines x=0 and y=0 are drawn faintly when inside.
 * Non-finite rows are skipped.  *pixels (size,size) is malloc'd, caller
 * free()s.  16 <= size <= 8192, n >= 1. */
int fdpic_render_scatter(const nf_real *x, int n, int size, unsigned char **pixels);

/* Tile grid of n square images x (n, side*side): cols = ceil(sqrt(n)),
 * rows = ceil(n/cols), 1-pixel mid-grey gaps and border.  A value v maps to
 * 255 * clamp(v, lo, hi) / (hi - lo) after subtracting lo; dequantized
 * pixel models pass lo = 0, hi = levels - 1 and floor values first
 * (floor_values != 0).  Non-finite values render as mid grey.  *pixels is
 * (*h,*w), malloc'd, caller free()s. */
int fdpic_render_grid(const nf_real *x, int n, int side, double lo, double hi, int floor_values,
                    unsigned char **pixels, int *w, int *h);

/* The picture of n sample rows x (n, D) at path: a scatter plot (512 x 512)
 * for D = 2, a tile grid for a square D >= 4, each pixel enlarged scale
 * times (1 = none).  The grid maps [lo, hi] to black..white, with
 * floor_values as fdpic_render_grid; have_range = 0 takes the samples' own
 * finite range instead.  0, or a negative NF_E* status with a message in err
 * (NF_EUNSUPPORTED for any other D). */
int fdpic_write_samples(const char *path, const nf_real *x, int n, int D, int have_range,
                        double lo, double hi, int floor_values, int scale, char *err,
                        size_t errlen);

#endif
