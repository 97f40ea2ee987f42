/* mpi_allreduce.c: the cost of data-parallel training's one collective per
 * step, MPI_Allreduce(MPI_SUM) in place over a float32 gradient buffer of
 * N elements (default 12055200: W2's parameters), timed alone (a barrier
 * before each call, so no rank's compute is counted).  Prints per size the
 * median and minimum over the repeats, and the algorithmic bandwidth
 * 2 (P-1)/P * bytes / t of a ring (docs/scale-out.md).
 *   make bench-mpi (bench/mpi/scale.sh)   or
 *   mpirun -n 2 build/rel/mpi_allreduce [N] [repeats] */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    long N = argc > 1 ? atol(argv[1]) : 12055200;
    int reps = argc > 2 ? atoi(argv[2]) : 20;
    if (N < 1 || reps < 1 || reps > 1000) MPI_Abort(MPI_COMM_WORLD, 2);
    float *g = malloc((size_t)N * sizeof *g);
    double *t = malloc((size_t)reps * sizeof *t);
    if (!g || !t) MPI_Abort(MPI_COMM_WORLD, 1);
    for (long n = 1000; n <= N; n = n * 10 > N && n != N ? N : n * 10) {
        for (long i = 0; i < n; i++) g[i] = (float)(rank + 1) * 1e-3f;
        MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* warm-up */
        for (int r = 0; r < reps; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            t[r] = MPI_Wtime() - t0;
        }
        /* the slowest rank's time is the step's */
        MPI_Allreduce(MPI_IN_PLACE, t, reps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        qsort(t, (size_t)reps, sizeof *t, cmp);
        if (rank == 0) {
            double bytes = (double)n * sizeof(float), med = t[reps / 2];
            printf("allreduce ranks=%d floats=%ld bytes=%.0f median_ms=%.3f min_ms=%.3f "
                   "ring_busbw_GBps=%.2f\n", P, n, bytes, med * 1e3, t[0] * 1e3,
                   2.0 * (P - 1) / P * bytes / med / 1e9);
        }
        if (n == N) break;
    }
    free(g);
    free(t);
    MPI_Finalize();
    return 0;
}
