/* budget.c: the request path's memory, admitted by bytes (issue 15).
 *
 * --max-inflight bounds how many requests run at once, not what they hold:
 * 256 requests of 64 MiB bodies, each parsed into a tree of ~40 bytes a
 * byte, would want terabytes.  So every request also reserves, from one
 * budget of --max-memory bytes, what it will hold before it takes it: its
 * body at admission (the Content-Length, or each growth of a chunked body),
 * then the parse of a JSON body (nf_data_parse_cost) and every allocation
 * of a dataset upload (the inflate buffer, then the parse).  A reservation
 * that does not fit is refused with 503 overloaded (Retry-After: 1): the
 * memory comes back as the requests holding it complete.  One that could
 * never fit is 413.  Everything a request reserved is given back at its
 * completion. */
#include "server.h"

#include "../core/data.h"

int fd_req_reserve(fd_req *r, size_t bytes) {
    fd_server *s = r->srv;
    size_t max = s->cfg.max_memory;
    if (!max || !bytes) return 0;
    size_t used = atomic_load(&s->mem_used);
    do {
        if (bytes > max || used > max - bytes) return -1;
    } while (!atomic_compare_exchange_weak(&s->mem_used, &used, used + bytes));
    r->reserved += bytes;
    size_t peak = atomic_load(&s->mem_peak);
    while (used + bytes > peak && !atomic_compare_exchange_weak(&s->mem_peak, &peak, used + bytes)) {
    }
    return 0;
}

void fd_req_release(fd_req *r) {
    if (!r->reserved) return;
    atomic_fetch_sub(&r->srv->mem_used, r->reserved);
    r->reserved = 0;
}

enum MHD_Result fd_send_budget_error(fd_req *r, size_t bytes) {
    const fd_config *c = &r->srv->cfg;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "limit", "memory_budget");
    cJSON_AddNumberToObject(d, "max_bytes", (double)c->max_memory);
    cJSON_AddNumberToObject(d, "wanted_bytes", (double)bytes);
    if (bytes > c->max_memory)
        return fd_send_error(r, 413, "payload_too_large", d,
                             "this request needs about %zu bytes of memory; the server's request memory is %zu "
                             "(--max-memory)", bytes, c->max_memory);
    return fd_send_error(r, 503, "overloaded", d,
                         "the server's request memory (--max-memory %zu) is taken by other requests; retry shortly",
                         c->max_memory);
}

int fd_req_reserve_cb(void *ctx, size_t bytes) { return fd_req_reserve(ctx, bytes); }
