/* mpi.h: data-parallel training over MPI for `flowd train` (docs/scale-out.md).
 *
 * Built with MPI when the Makefile finds OpenMPI (pkg-config ompi-c) or is
 * told MPI=1; it then defines FLOWD_MPI.  core/ never sees MPI: it gets a
 * nf_train_dist (core/train.h) whose ops are MPI_Allreduce / MPI_Bcast on
 * MPI_COMM_WORLD.  MPI is initialised only when the process was started by a
 * launcher (mpirun sets OMPI_COMM_WORLD_SIZE, PMIx and Hydra set PMIX_RANK /
 * PMI_SIZE); a plain `flowd train` stays one process without MPI_Init. */
#ifndef FLOWD_MPI_H
#define FLOWD_MPI_H

#include "../core/train.h"

/* Starts MPI when launched by mpirun: 0 with *rank and *size set (0 and 1
 * without a launcher), -1 (said why on stderr) when launched by mpirun with
 * several ranks but built without MPI. */
int fd_mpi_init(int *argc, char ***argv, int *rank, int *size);
/* the hooks' dist for this run, NULL with one rank */
const nf_train_dist *fd_mpi_dist(void);
/* ranks on this node (OMPI_COMM_WORLD_LOCAL_SIZE), 1 without a launcher */
int fd_mpi_local_size(void);
/* seconds spent in the gradient's MPI_Allreduce and how many, so far */
double fd_mpi_reduce_seconds(void);
long fd_mpi_reduce_calls(void);
/* ends every rank (a rank failed alone: the others would wait forever) */
void fd_mpi_abort(int code);
void fd_mpi_finalize(void);
/* 1 when this flowd was built with MPI */
int fd_mpi_built(void);

#endif
