/* pool.c: see pool.h. */
#include "pool.h"

#include "alloc.h"
#include "nf.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

/* spin this long for the next run (worker) or for the workers to finish
 * (caller) before blocking on the condition variable */
#define SPIN_NS 50000

struct nf_pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    atomic_uint gen;     /* bumped once per run */
    atomic_int pending;  /* workers still running the current run */
    atomic_int stop;
    atomic_int sleepers; /* workers blocked (or about to block) on work_cv */
    atomic_int caller_asleep; /* the caller blocked (or about to) on done_cv */
    nf_pool_fn fn;       /* the current run, published by gen */
    void *arg;
    struct worker { nf_pool *p; int t; } *w;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    nf_pool *p = w->p;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g == seen && !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            long long t0 = now_ns();
            int spins = 0;
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
                   !atomic_load_explicit(&p->stop, memory_order_acquire)) {
                cpu_relax();
                if (++spins % 64 == 0 && now_ns() - t0 > SPIN_NS) break;
            }
            if (g == seen) {
                /* counted as asleep before gen is read again: the caller
                 * bumps gen, then reads sleepers (both sequentially
                 * consistent), so either it sees us and broadcasts under
                 * the mutex or we see its run here */
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleepers, 1);
                while ((g = atomic_load(&p->gen)) == seen &&
                       !atomic_load_explicit(&p->stop, memory_order_acquire))
                    pthread_cond_wait(&p->work_cv, &p->mu);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        seen = g;
        p->fn(p->arg, w->t);
        /* the last one out wakes the caller only if it sleeps: a caller
         * still spinning sees pending reach 0, and no mutex is taken
         * (taking it every run collided with the caller's next run) */
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_asleep)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int nf_pool_create(int n, nf_pool **out) {
    *out = NULL;
    if (n < 2 || n > 256) return NF_EINVAL;
    nf_pool *p = nf_calloc(1, sizeof *p);
    if (!p) return NF_ENOMEM;
    p->th = nf_calloc((size_t)n, sizeof *p->th);
    p->w = nf_calloc((size_t)n, sizeof *p->w);
    if (!p->th || !p->w) {
        nf_free(p->th);
        nf_free(p->w);
        nf_free(p);
        return NF_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_asleep, 0);
    for (int t = 1; t < n; t++) {
        p->w[t].p = p;
        p->w[t].t = t;
        if (pthread_create(&p->th[t], NULL, worker_main, &p->w[t])) {
            p->n = t; /* workers 1..t-1 exist: stop and join those */
            nf_pool_free(p);
            return NF_EINVAL;
        }
    }
    p->n = n;
    *out = p;
    return 0;
}

void nf_pool_free(nf_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++) pthread_join(p->th[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    nf_free(p->th);
    nf_free(p->w);
    nf_free(p);
}

int nf_pool_size(const nf_pool *p) { return p ? p->n : 1; }

void nf_pool_run(nf_pool *p, nf_pool_fn fn, void *arg) {
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); /* publishes fn and arg */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0);
    long long t0 = now_ns();
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        cpu_relax();
        if (++spins % 64 == 0 && now_ns() - t0 > SPIN_NS) break;
    }
    if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_asleep, 1); /* then pending read again: see worker_main */
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done_cv, &p->mu);
        atomic_store(&p->caller_asleep, 0);
        pthread_mutex_unlock(&p->mu);
    }
}
