/* cmd_train.c: `flowd train --config job.json --out model.flow`, one training
 * job in the foreground from the same job JSON the HTTP API accepts, with a
 * progress bar on a terminal and plain lines otherwise.
 *
 * Under `mpirun -n P` (a flowd built with MPI, server/mpi.h) the ranks train
 * data-parallel: each takes its share of every global batch, the gradients
 * are summed with MPI_Allreduce before the identical optimizer step, and
 * rank 0 alone reports, validates, checkpoints and writes the model. */
#include "cli.h"
#include "cmd.h"
#include "launcher.h"
#include "mpi.h"

#include "../core/job.h"
#include "../core/model.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int cancel_flag;
static void on_sigint(int sig) {
    (void)sig;
    cancel_flag = 1;
}

typedef struct {
    int tty;
    FILE *out;     /* NULL: nothing on stderr (--quiet) */
    int fd;        /* --progress FILE, or -1 */
    double last;   /* when reports last went to fd */
    int held[2];   /* the latest training [0] and validation [1] report not written yet */
    nf_train_metrics pending[2];
} progress_ctx;

#define PROGRESS_GAP_S 0.1

/* one JSON object as one line of the --progress file, in one write(2), so
 * that a reader never sees half a line after a whole one (launcher.h) */
static void progress_line(int fd, cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return;
    size_t n = strlen(s);
    s[n] = '\n'; /* the terminator's place: written, not kept */
    ssize_t w = write(fd, s, n + 1);
    (void)w;
    free(s);
}

static void fmt_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

static void progress_write(int fd, const nf_train_metrics *m) {
    cJSON *o = fd_train_metrics_json(m);
    if (o) {
        cJSON_AddStringToObject(o, "event", "progress");
        cJSON_AddBoolToObject(o, "is_validation", m->is_validation);
    }
    progress_line(fd, o);
}

/* --progress: the latest training and validation reports, at most every
 * PROGRESS_GAP_S (a small flow reports thousands a second, and the daemon
 * stores each line); what is held back goes out at the next gap or at the
 * end (progress_flush), in step order */
static void progress_flush(progress_ctx *p) {
    int first = p->held[0] && p->held[1] && p->pending[1].step < p->pending[0].step ? 1 : 0;
    for (int k = 0; k < 2; k++)
        if (p->fd >= 0 && p->held[first ^ k]) progress_write(p->fd, &p->pending[first ^ k]);
    p->held[0] = p->held[1] = 0;
}

static void progress_event(progress_ctx *p, const nf_train_metrics *m) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    int k = m->is_validation ? 1 : 0;
    p->pending[k] = *m;
    p->held[k] = 1;
    if (now - p->last < PROGRESS_GAP_S) return;
    progress_flush(p);
    p->last = now;
}

static void on_progress(void *user, const nf_train_metrics *m) {
    progress_ctx *p = user;
    if (p->fd >= 0) progress_event(p, m);
    if (!p->out) return;
    char eta[32];
    fmt_eta(m->eta_seconds, eta, sizeof eta);
    if (p->tty) {
        int width = 24, fill = m->total_steps ? (int)(width * m->step / m->total_steps) : 0;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(p->out, "\r[%s] epoch %d/%d step %lld loss %.4f val %.4f%s lr %.2e %.0f/s ETA %s  ",
                bar, m->epoch, m->epochs, (long long)m->step, m->train_loss, m->val_loss,
                isfinite(m->val_bits_per_dim) ? "" : "", m->lr, m->samples_per_second, eta);
        if (m->is_validation && isfinite(m->val_bits_per_dim))
            fprintf(p->out, "bpd %.4f ", m->val_bits_per_dim);
        if (m->ode) fprintf(p->out, "nfe %.0f ", m->nfe);
        fflush(p->out);
    } else {
        fprintf(p->out,
                "%s epoch=%d/%d step=%lld/%lld train_loss=%.6g val_loss=%.6g val_bpd=%.6g "
                "best_val=%.6g lr=%.3g grad_norm=%.3g samples_per_s=%.0f eta_s=%.0f\n",
                m->is_validation ? "val " : "step", m->epoch, m->epochs, (long long)m->step,
                (long long)m->total_steps, m->train_loss, m->val_loss, m->val_bits_per_dim,
                m->best_val_loss, m->lr, m->grad_norm, m->samples_per_second,
                isfinite(m->eta_seconds) ? m->eta_seconds : -1.0);
        if (m->ode)
            fprintf(p->out, "     nfe=%.1f nfe_forward=%.1f kinetic=%.4g jacobian=%.4g\n", m->nfe,
                    m->nfe_forward, m->kinetic, m->jacobian);
    }
}

static struct {
    const char *config, *out, *checkpoint, *resume, *progress;
    int threads, quiet, ckpt_every;
    double ckpt_seconds;
} to;
static int progress_fd = -1;

static int g_rank, g_ranks = 1;

static const fd_opt train_options[] = {
    {"config", 'c', FD_OPT_STR, &to.config, .required = 1, .arg = "FILE",
     .help = "the job JSON of POST /v1/jobs (see README); the dataset may also be "
             "{\"path\":\"data.csv\",\"format\":\"auto\"} here"},
    {"out", 'o', FD_OPT_STR, &to.out, .required = 1, .arg = "FILE",
     .help = "where to write the model (atomically: temp file + rename)"},
    {"threads", 't', FD_OPT_INT, &to.threads, .def = 0, .lo = 1, .hi = 64, .arg = "N",
     .help = "threads that share each batch; BLAS then runs one thread per call",
     .def_text = "the number of CPUs", .must = "1..64"},
    {"quiet", 'q', FD_OPT_FLAG, &to.quiet, .help = "no progress output"},
    {"checkpoint", 0, FD_OPT_STR, &to.checkpoint, .arg = "FILE",
     .help = "write the resumable training state here (atomically) at every validation, "
             "or every --checkpoint-every steps; under MPI rank 0 writes it"},
    {"checkpoint-every", 0, FD_OPT_INT, &to.ckpt_every, .def = 0, .lo = 0, .hi = 1000000000,
     .arg = "N", .help = "steps between checkpoints", .def_text = "0: at every validation",
     .must = "0..1e9"},
    {"checkpoint-seconds", 0, FD_OPT_NUM, &to.ckpt_seconds, .def = 0, .lo = 0, .hi = 1e9, .arg = "S",
     .help = "also checkpoint when S seconds passed since the last one", .def_text = "0: off"},
    {"progress", 0, FD_OPT_STR, &to.progress, .arg = "FILE",
     .help = "append one JSON object a line: {\"event\":\"progress\",...} for the reports (the "
             "fields of a job's \"progress\"; the latest training and validation report at most "
             "every 0.1 s) and {\"event\":\"checkpoint\",\"step\":N} after "
             "every --checkpoint written; rank 0 writes it (flowd serve --mpi-launcher reads it)"},
    {"resume", 0, FD_OPT_STR, &to.resume, .arg = "FILE",
     .help = "continue from a --checkpoint file of the same job and data (every rank reads "
             "it; any number of ranks resumes it exactly)"},
};

static const fd_cli train_cli = {
    "flowd train",
    "usage: flowd train --config JOB.json --out MODEL.flow [--quiet]\n"
    "\n"
    "Runs one training job in the foreground and writes a self-describing model\n"
    "file (flow config, preprocessing, parameters, metrics, checksum), the same\n"
    "bytes the daemon stores as a model version.\n"
    "\n",
    "Ctrl-C, SIGTERM or SIGUSR1 (which mpirun passes on to every rank) stops\n"
    "training after the current step (with --checkpoint, the state is saved\n"
    "first); no model is written and the exit status is 1.\n"
    "Data-parallel: mpirun -n P flowd train ... (docs/scale-out.md).\n",
    train_options, FD_NOPTS(train_options), .bad_rc = 2};

/* the job of the config file: 0 or -1 (said why) */
static int train_job(nf_job *job) {
    void *buf;
    size_t len;
    char err[512] = "";
    if (nf_file_read(to.config, &buf, &len)) {
        fprintf(stderr, "flowd train: cannot read %s\n", to.config);
        return -1;
    }
    int rc = nf_job_parse(buf, len, 1, job, err, sizeof err);
    free(buf);
    if (rc) {
        fprintf(stderr, "flowd train: %s: %s\n", to.config, err);
        return -1;
    }
    return 0;
}

/* --checkpoint: the state blob, atomically (rank 0 only) */
static int on_checkpoint(void *user, void *state, size_t len, int64_t step) {
    (void)user;
    (void)step;
    if (nf_file_write(to.checkpoint, state, len)) {
        fprintf(stderr, "flowd train: cannot write the checkpoint %s\n", to.checkpoint);
        return NF_EIO;
    }
    if (progress_fd >= 0) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "event", "checkpoint");
            cJSON_AddNumberToObject(o, "step", (double)step);
        }
        progress_line(progress_fd, o);
    }
    return 0;
}

/* trains and writes the model: 0 or an NF_ status (said why) */
static int train_run(const nf_job *job, const nf_data *data, int threads) {
    char err[512] = "";
    int lead = g_rank == 0, quiet = to.quiet || !lead;
    progress_ctx pc = {.tty = isatty(fileno(stderr)), .out = quiet ? NULL : stderr,
                       .fd = lead ? progress_fd : -1};
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    signal(SIGUSR1, on_sigint);
    nf_train_hooks hooks = {.user = &pc, .progress = pc.out || pc.fd >= 0 ? on_progress : NULL,
                            .cancel = &cancel_flag, .dist = fd_mpi_dist()};
    if (to.checkpoint && lead) {
        hooks.checkpoint = on_checkpoint;
        hooks.checkpoint_every = to.ckpt_every;
        hooks.checkpoint_seconds = to.ckpt_seconds;
        hooks.checkpoint_on_cancel = 1;
    }
    void *resume = NULL;
    size_t resume_len = 0;
    if (to.resume && nf_file_read(to.resume, &resume, &resume_len)) {
        fprintf(stderr, "flowd train: cannot read %s\n", to.resume);
        return NF_EIO;
    }
    nf_job_result res;
    int rc;
    if (!quiet) {
        fprintf(stderr, "training %s on %lld rows x %d dims (%d thread%s", job->model,
                (long long)data->n, data->d, threads, threads == 1 ? "" : "s");
        if (g_ranks > 1) fprintf(stderr, " on each of %d ranks", g_ranks);
        fprintf(stderr, ")\n");
    }
    rc = nf_job_run(job, data, &hooks, resume, resume_len, &res, err, sizeof err);
    progress_flush(&pc);
    free(resume);
    if (pc.tty && !quiet) fputc('\n', stderr);
    if (rc == NF_ECANCELLED) {
        if (lead) fprintf(stderr, "flowd train: cancelled; no model written\n");
    } else if (rc) {
        if (g_ranks > 1) fprintf(stderr, "flowd train: rank %d: %s\n", g_rank, err);
        else fprintf(stderr, "flowd train: %s\n", err);
    } else if (!lead) {
        /* rank 0 writes the model */
    } else if (nf_file_write(to.out, res.model, res.model_len)) {
        fprintf(stderr, "flowd train: cannot write %s\n", to.out);
        rc = NF_EIO;
    } else {
        cJSON_AddNumberToObject(res.metrics, "ranks", g_ranks);
        long nred = fd_mpi_reduce_calls();
        if (g_ranks > 1 && nred > 0) /* time in the gradient's MPI_Allreduce, waits included */
            cJSON_AddNumberToObject(res.metrics, "allreduce_ms_per_step",
                                    1e3 * fd_mpi_reduce_seconds() / (double)nred);
        char *ms = cJSON_PrintUnformatted(res.metrics);
        printf("wrote %s (%zu bytes, %d rank%s)\nmetrics %s\n", to.out, res.model_len, g_ranks,
               g_ranks == 1 ? "" : "s", ms ? ms : "{}");
        free(ms);
    }
    nf_job_result_free(&res);
    return rc;
}

static int train_main(void);

int cmd_train(int argc, char **argv) {
    int rc;
    if (fd_cli_parse(&train_cli, argc, argv, &rc)) return rc;
    if (fd_mpi_init(&argc, &argv, &g_rank, &g_ranks)) return 1;
    if (to.progress && g_rank == 0 &&
        (progress_fd = open(to.progress, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "flowd train: cannot open %s: %s\n", to.progress, strerror(errno));
        rc = NF_EIO;
    } else {
        rc = train_main();
    }
    if (progress_fd >= 0) close(progress_fd);
    if (rc && g_ranks > 1 && rc != NF_ENONFINITE && rc != NF_ESTEPS && rc != NF_ECANCELLED)
        fd_mpi_abort(1); /* a failure of one rank: the others may be waiting in a collective */
    fd_mpi_finalize();
    return rc ? 1 : 0;
}

/* parsed options to a written model: 0 or an NF_ status */
static int train_main(void) {
    int rc;
    nf_job job;
    if (train_job(&job)) return NF_EINVAL;
    /* the CPUs are shared by the ranks of this node */
    long threads = to.threads ? to.threads : sysconf(_SC_NPROCESSORS_ONLN) / fd_mpi_local_size();
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    job.train.threads = (int)threads;
    /* the batch is split over our threads: one BLAS thread under each */
    if (threads > 1) openblas_set_num_threads(1);
    nf_data data = {0};
    char err[512] = "";
    if ((rc = nf_job_load_data(&job, &data, err, sizeof err))) {
        fprintf(stderr, "flowd train: dataset: %s\n", err);
        nf_job_free(&job);
        return rc;
    }
    rc = train_run(&job, &data, (int)threads);
    nf_data_free(&data);
    nf_job_free(&job);
    return rc;
}
