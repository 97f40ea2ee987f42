/* alloc.h: core's heap entry points.  Every allocation in core/ goes through
 * nf_malloc / nf_calloc / nf_realloc / nf_strdup and every release through
 * nf_free, so a test can fail the k-th allocation and count live blocks
 * (tests/core/test_alloc_fail.c).
 *
 * cJSON allocates through them too (alloc.c installs cJSON hooks before
 * main), and every failed allocation bumps the thread's nf_alloc_failures:
 * code that builds JSON with unchecked cJSON_Add* calls compares the counter
 * before and after instead of checking each call.
 *
 * In production nf_alloc_hook is NULL and these are malloc, calloc, realloc
 * and free behind one well-predicted branch.  Core allocates when objects
 * are created, and a threaded workspace on its first gradient call (the
 * parts' gradient buffers and records, kept for the next calls), never in
 * a call's steady state, so the branch is not measurable (docs/reliability.md).  Memory from nf_malloc is plain
 * malloc memory: buffers that the API hands back are still released with
 * free(). */
#ifndef NF_ALLOC_H
#define NF_ALLOC_H

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

typedef struct nf_alloc_hooks {
    void *(*malloc_fn)(size_t n);
    void *(*calloc_fn)(size_t n, size_t size);
    void *(*realloc_fn)(void *p, size_t n);
    void (*free_fn)(void *p);
} nf_alloc_hooks;

/* NULL (libc) unless a test installs hooks; set it only while no other
 * thread is inside core. */
extern const nf_alloc_hooks *nf_alloc_hook;
/* allocations that failed on this thread so far */
extern _Thread_local unsigned nf_alloc_failures;

static inline void *nf_malloc(size_t n) {
    void *p = nf_alloc_hook ? nf_alloc_hook->malloc_fn(n) : malloc(n);
    if (!p) nf_alloc_failures++;
    return p;
}
static inline void *nf_calloc(size_t n, size_t size) {
    void *p = nf_alloc_hook ? nf_alloc_hook->calloc_fn(n, size) : calloc(n, size);
    if (!p) nf_alloc_failures++;
    return p;
}
static inline void *nf_realloc(void *p, size_t n) {
    void *q = nf_alloc_hook ? nf_alloc_hook->realloc_fn(p, n) : realloc(p, n);
    if (!q) nf_alloc_failures++;
    return q;
}
static inline void nf_free(void *p) {
    if (nf_alloc_hook) nf_alloc_hook->free_fn(p);
    else free(p);
}
static inline char *nf_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)nf_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* cJSON_AddItemToObject / cJSON_AddItemToArray that never leak: the item is
 * deleted when it cannot be attached (cJSON leaves it to the caller when the
 * key's copy fails or the target is NULL).  Failures count as above. */
static inline void nf_json_attach(cJSON *o, const char *key, cJSON *item) {
    if (!o || !item || !cJSON_AddItemToObject(o, key, item)) cJSON_Delete(item);
}
static inline void nf_json_append(cJSON *arr, cJSON *item) {
    if (!arr || !item || !cJSON_AddItemToArray(arr, item)) cJSON_Delete(item);
}

#endif
