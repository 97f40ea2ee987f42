/* pool.h: a fixed team of threads for splitting one call's rows.
 *
 * nf_pool_run(p, fn, arg) runs fn(arg, t) for t = 0..n-1 at once: t = 0 on
 * the calling thread, the others on the pool's n-1 workers, and returns when
 * all n are done.  Workers are created once (nf_pool_create) and wait on a
 * condition variable between runs, after spinning briefly so back-to-back
 * runs (one per layer pass of a training step) do not pay a futex wake-up
 * each time.  One run at a time: a pool belongs to one workspace, and a
 * workspace to one thread (nf.h).  Everything fn touches is published to
 * the workers by the run counter and back to the caller by the count of
 * workers still running; the mutex and condition variables are touched only
 * by a side that goes to sleep and by whoever then has to wake it. */
#ifndef NF_POOL_H
#define NF_POOL_H

typedef struct nf_pool nf_pool;
typedef void (*nf_pool_fn)(void *arg, int t);

/* n >= 2 threads in all (n-1 workers).  NF_ENOMEM, or NF_EINVAL when a
 * thread cannot be created. */
int nf_pool_create(int n, nf_pool **out);
void nf_pool_free(nf_pool *p); /* joins the workers; NULL is a no-op */
int nf_pool_size(const nf_pool *p);
void nf_pool_run(nf_pool *p, nf_pool_fn fn, void *arg);

#endif
