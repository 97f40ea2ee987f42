/* alloc.c: the allocation hook of alloc.h (NULL: libc), and cJSON routed
 * through nf_malloc/nf_free so that its failures are counted (and can be
 * injected by tests) like core's own. */
#include "alloc.h"

#include <cjson/cJSON.h>

const nf_alloc_hooks *nf_alloc_hook;
_Thread_local unsigned nf_alloc_failures;

static void *cjson_malloc(size_t n) { return nf_malloc(n); }
static void cjson_free(void *p) { nf_free(p); }

/* before main, while the process has one thread (cJSON's hooks are global) */
__attribute__((constructor)) static void nf_alloc_install_cjson_hooks(void) {
    cJSON_Hooks h = {cjson_malloc, cjson_free};
    cJSON_InitHooks(&h);
}
