/* mpi.c: MPI for data-parallel `flowd train` (mpi.h).  Without FLOWD_MPI
 * only the launcher check is here: a flowd built without MPI refuses to
 * run as one of several mpirun ranks instead of training P times over. */
#include "mpi.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef FLOWD_MPI
#include <limits.h>
#include <mpi.h>

static int g_on, g_rank, g_size = 1;
static double g_reduce_s;
static long g_reduce_n;

static int dt_real(void) { return sizeof(nf_real) == sizeof(double) ? 0 : 1; }

/* in place over MPI_COMM_WORLD, in pieces of at most INT_MAX elements */
static int allreduce(void *buf, size_t n, MPI_Datatype t, size_t esz) {
    char *p = buf;
    while (n) {
        int m = n > INT_MAX ? INT_MAX : (int)n;
        if (MPI_Allreduce(MPI_IN_PLACE, p, m, t, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
        p += (size_t)m * esz;
        n -= (size_t)m;
    }
    return 0;
}

static int op_sum(void *user, nf_real *buf, size_t n) {
    (void)user;
    double t0 = MPI_Wtime();
    int rc = allreduce(buf, n, dt_real() ? MPI_FLOAT : MPI_DOUBLE, sizeof *buf);
    g_reduce_s += MPI_Wtime() - t0;
    g_reduce_n++;
    return rc;
}
static int op_sum_f64(void *user, double *buf, size_t n) {
    (void)user;
    return allreduce(buf, n, MPI_DOUBLE, sizeof *buf);
}
static int op_bcast_f64(void *user, double *buf, size_t n) {
    (void)user;
    return MPI_Bcast(buf, (int)n, MPI_DOUBLE, 0, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}

static nf_train_dist g_dist = {.sum = op_sum, .sum_f64 = op_sum_f64, .bcast_f64 = op_bcast_f64};
#endif

/* started by an MPI launcher */
static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

int fd_mpi_built(void) {
#ifdef FLOWD_MPI
    return 1;
#else
    return 0;
#endif
}

int fd_mpi_local_size(void) {
    const char *s = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int n = s ? atoi(s) : 1;
    return n > 0 ? n : 1;
}

int fd_mpi_init(int *argc, char ***argv, int *rank, int *size) {
    *rank = 0;
    *size = 1;
    if (!launched()) return 0;
#ifdef FLOWD_MPI
    int prov = 0;
    /* the gradient's allreduce: OpenMPI 4.1's fixed decision picks, for a
     * few ranks and tens of MB, an algorithm measured 7-10 times slower
     * here than the ring (docs/scale-out.md); the ring unless the user
     * chose (an OMPI_MCA_ variable or --mca sets these first) */
    if (!getenv("OMPI_MCA_coll_tuned_allreduce_algorithm") &&
        !getenv("OMPI_MCA_coll_tuned_use_dynamic_rules")) {
        setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 0);
        setenv("OMPI_MCA_coll_tuned_allreduce_algorithm", "4", 0);
    }
    /* only the main thread calls MPI (the trainer's hooks); the training
     * threads never do */
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &prov) != MPI_SUCCESS) {
        fprintf(stderr, "flowd: MPI_Init failed\n");
        return -1;
    }
    g_on = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    g_dist.rank = g_rank;
    g_dist.size = g_size;
    *rank = g_rank;
    *size = g_size;
    return 0;
#else
    (void)argc;
    (void)argv;
    const char *s = getenv("OMPI_COMM_WORLD_SIZE");
    if (!s) s = getenv("PMI_SIZE");
    if (s && atoi(s) > 1) {
        fprintf(stderr, "flowd: started as one of %s MPI ranks, but this flowd was built without "
                        "MPI (install libopenmpi-dev and rebuild: make MPI=1)\n", s);
        return -1;
    }
    return 0;
#endif
}

const nf_train_dist *fd_mpi_dist(void) {
#ifdef FLOWD_MPI
    return g_on && g_size > 1 ? &g_dist : NULL;
#else
    return NULL;
#endif
}

double fd_mpi_reduce_seconds(void) {
#ifdef FLOWD_MPI
    return g_reduce_s;
#else
    return 0;
#endif
}
long fd_mpi_reduce_calls(void) {
#ifdef FLOWD_MPI
    return g_reduce_n;
#else
    return 0;
#endif
}

void fd_mpi_abort(int code) {
#ifdef FLOWD_MPI
    if (g_on) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    exit(code);
}

void fd_mpi_finalize(void) {
#ifdef FLOWD_MPI
    if (g_on) MPI_Finalize();
    g_on = 0;
#endif
}
