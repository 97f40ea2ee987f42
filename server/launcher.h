/* launcher.h: `flowd serve --mpi-launcher "mpirun -n 4 --hostfile hosts"`:
 * training jobs run as an MPI program (`flowd train` under the launcher)
 * instead of on the daemon's in-process trainer (docs/scale-out.md,
 * "Jobs on an MPI launcher").
 *
 * The protocol between the daemon and the `flowd train` it starts is a
 * progress file: `flowd train --progress FILE` (rank 0) appends one JSON
 * object a line, written with one write(2) each:
 *   {"event":"progress", the fields of fd_train_metrics_json, "is_validation"}
 *   {"event":"checkpoint","step":N}   after --checkpoint FILE was replaced
 * The worker tails it (complete lines only), so it works wherever the data
 * directory is a shared file system, as the dataset and model files need. */
#ifndef FD_LAUNCHER_H
#define FD_LAUNCHER_H

#include "../core/job.h"
#include "../core/train.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* Splits the launcher command line into words (quotes and backslashes as a
 * shell reads them, no command substitution, no shell run).  An empty or
 * NULL line turns the launcher off.  0, or -1 with the reason in err. */
int fd_launcher_configure(const char *line, char *err, size_t errlen);
/* 1 when a launcher is configured */
int fd_launcher_enabled(void);
/* 1 when job goes to the launcher; 0 when it runs in-process (no launcher,
 * or a job `flowd train` cannot run: why says which). */
int fd_launcher_takes(const nf_job *job, char *why, size_t whylen);

/* Runs the job under the launcher as nf_job_run would run it in-process:
 * data is the job's loaded dataset (exported when the job names a stored
 * one), state a saved training state to resume (or NULL).  hooks: progress
 * gets each report, checkpoint each checkpoint the child writes (as a
 * malloc'd blob when checkpoint_takes_state), checkpoint_seconds is passed
 * on, and *cancel stops the child (SIGUSR1 to its process group, then
 * SIGTERM and SIGKILL: FD_LAUNCH_GRACE_S).  Files live in
 * <dir of db_path>/mpi-jobs/job-<id>/ and are removed before it returns.
 * Returns 0 with res->model set, NF_ECANCELLED after a stop, or NF_EIO with
 * the launcher's exit status and last stderr lines in err. */
int fd_launcher_run(const char *db_path, int64_t id, const char *request, const nf_job *job,
                    const nf_data *data, const nf_train_hooks *hooks, const void *state,
                    size_t state_len, nf_job_result *res, char *err, size_t errlen);

/* seconds between the stop request (SIGUSR1) and SIGTERM; SIGKILL 5 s later */
#define FD_LAUNCH_GRACE_S 10.0

/* A progress report as the job's "progress" object (GET /v1/jobs/{id}),
 * and back; shared by the workers, `flowd train --progress` and the
 * launcher.  from_json: fields absent or null read as NAN (0 for counts). */
cJSON *fd_train_metrics_json(const nf_train_metrics *m);
void fd_train_metrics_from_json(const cJSON *o, nf_train_metrics *m);

#endif
