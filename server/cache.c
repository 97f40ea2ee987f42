/* cache.c: loaded models, shared read-only by request threads.
 *
 * Entries are (name, version) -> fd_model with a reference count.  The
 * cache holds one reference; each fd_cache_get hands out another.  Eviction
 * (capacity, LRU) and fd_cache_evict drop the cache's reference, so a model
 * is freed only when the last request using it releases it: a new version
 * or a DELETE never frees a model under a running request.  Loading happens
 * outside the lock; if two threads load the same version, the second copy
 * is dropped. */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    fd_model *m;
    uint64_t used;
} slot;

struct fd_cache {
    pthread_mutex_t mu;
    int cap, n;
    slot *slots;
    uint64_t tick;
    uint64_t next_uid;
    uint64_t evictions; /* bumped by fd_cache_evict: a load that raced it is not cached */
    size_t pack_max;    /* nf_model_pack's cap */
};

fd_cache *fd_cache_create(int capacity, size_t pack_max) {
    fd_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->pack_max = pack_max;
    c->cap = capacity > 0 ? capacity : 16;
    c->slots = calloc((size_t)c->cap, sizeof *c->slots);
    if (!c->slots) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void fd_model_release(fd_model *m) {
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) {
        nf_model_free(m->m);
        free(m);
    }
}

void fd_cache_free(fd_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) fd_model_release(c->slots[i].m);
    pthread_mutex_destroy(&c->mu);
    free(c->slots);
    free(c);
}

static fd_model *lookup(fd_cache *c, const char *name, int version) {
    for (int i = 0; i < c->n; i++)
        if (c->slots[i].m->version == version && !strcmp(c->slots[i].m->name, name)) {
            c->slots[i].used = ++c->tick;
            atomic_fetch_add(&c->slots[i].m->refs, 1);
            return c->slots[i].m;
        }
    return NULL;
}

/* The default version (the "default" alias, else the latest) of recently used names, per request thread, valid while
 * the connection's data_version is unchanged (nothing committed by anyone
 * else: the HTTP threads only write through their own connection for
 * deletes and uploads, which never add versions).  Resolving "latest" with
 * a query on every request was a fifth of the daemon's CPU at B = 1. */
#define LATEST_SLOTS 8
typedef struct {
    int64_t data_version;
    struct { char name[65]; int version; } s[LATEST_SLOTS];
    int next;
} latest_cache;
static _Thread_local latest_cache tl_latest = {.data_version = -2};

static int resolve_latest(fd_db *db, const char *name, int *version, char *err, size_t errlen) {
    int64_t dv = fd_db_data_version(db);
    latest_cache *lc = &tl_latest;
    if (dv < 0 || dv != lc->data_version) {
        memset(lc, 0, sizeof *lc);
        lc->data_version = dv;
    } else {
        for (int i = 0; i < LATEST_SLOTS; i++)
            if (lc->s[i].version > 0 && !strcmp(lc->s[i].name, name)) {
                *version = lc->s[i].version;
                return 0;
            }
    }
    int rc = fd_db_default_version(db, name, version, err, errlen);
    if (rc || dv < 0 || strlen(name) >= sizeof lc->s[0].name) return rc;
    int k = lc->next++ % LATEST_SLOTS;
    snprintf(lc->s[k].name, sizeof lc->s[k].name, "%s", name);
    lc->s[k].version = *version;
    return 0;
}

int fd_cache_get(fd_cache *c, fd_db *db, const char *name, int version, fd_model **out, char *err,
                 size_t errlen) {
    *out = NULL;
    int rc;
    if (version <= 0 && (rc = resolve_latest(db, name, &version, err, errlen))) return rc;
    pthread_mutex_lock(&c->mu);
    fd_model *m = lookup(c, name, version);
    uint64_t evictions = c->evictions;
    pthread_mutex_unlock(&c->mu);
    if (m) {
        *out = m;
        return 0;
    }
    void *buf = NULL;
    size_t len = 0;
    int got = 0;
    if ((rc = fd_db_version_get(db, name, version, &buf, &len, &got, err, errlen))) return rc;
    nf_model *nm = NULL;
    char lerr[256] = "";
    rc = nf_model_load(buf, len, &nm, lerr, sizeof lerr);
    free(buf);
    if (rc) {
        snprintf(err, errlen, "model %s version %d cannot be loaded: %s", name, version, lerr);
        return FD_ECORRUPT;
    }
    /* the weights packed once for scoring and sampling (core nf_flow_pack),
     * up to --pack-max; out of memory for the copy, the model serves unpacked */
    if (nf_model_pack(nm, c->pack_max))
        fd_log("warn", "model %s version %d serves unpacked: out of memory", name, version);
    m = calloc(1, sizeof *m);
    if (!m) {
        nf_model_free(nm);
        return FD_ENOMEM;
    }
    snprintf(m->name, sizeof m->name, "%s", name);
    m->version = version;
    m->m = nm;
    atomic_init(&m->refs, 2); /* the cache's and the caller's */
    pthread_mutex_lock(&c->mu);
    fd_model *dup = lookup(c, name, version);
    if (dup) { /* another thread loaded it meanwhile */
        pthread_mutex_unlock(&c->mu);
        atomic_store(&m->refs, 1);
        fd_model_release(m);
        *out = dup;
        return 0;
    }
    m->uid = ++c->next_uid;
    if (c->evictions != evictions) {
        /* a DELETE happened while this version was loading: serve this
         * request from the copy it loaded, but do not cache it, so a model
         * later created under the same name is never answered with it */
        pthread_mutex_unlock(&c->mu);
        atomic_store(&m->refs, 1);
        *out = m;
        return 0;
    }
    if (c->n == c->cap) { /* evict the least recently used */
        int lru = 0;
        for (int i = 1; i < c->n; i++)
            if (c->slots[i].used < c->slots[lru].used) lru = i;
        fd_model_release(c->slots[lru].m);
        c->slots[lru] = c->slots[--c->n];
    }
    c->slots[c->n].m = m;
    c->slots[c->n].used = ++c->tick;
    c->n++;
    pthread_mutex_unlock(&c->mu);
    *out = m;
    return 0;
}

void fd_cache_forget_default(void) { tl_latest.data_version = -2; }

void fd_cache_evict(fd_cache *c, const char *name) {
    tl_latest.data_version = -2; /* this thread deleted through its own connection */
    pthread_mutex_lock(&c->mu);
    c->evictions++;
    for (int i = 0; i < c->n;) {
        if (!strcmp(c->slots[i].m->name, name)) {
            fd_model_release(c->slots[i].m);
            c->slots[i] = c->slots[--c->n];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

int fd_cache_count(fd_cache *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

int fd_model_describe(const void *buf, size_t len, fd_model_desc *d, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    nf_model *m = NULL;
    int rc = nf_model_load(buf, len, &m, err, errlen);
    if (rc) return rc;
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(m->header, "preprocess");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(m->header, "metrics");
    d->dim = nf_flow_dim(m->flow);
    d->context_dim = nf_flow_context_dim(m->flow);
    d->config = nf_flow_config_json(m->flow);
    d->preprocess = cJSON_IsObject(pp) ? cJSON_PrintUnformatted(pp) : strdup("{}");
    d->metrics = cJSON_IsObject(mt) ? cJSON_PrintUnformatted(mt) : strdup("{}");
    nf_model_free(m);
    if (!d->config || !d->preprocess || !d->metrics) {
        fd_model_desc_free(d);
        snprintf(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    return 0;
}

void fd_model_desc_free(fd_model_desc *d) {
    free(d->config);
    free(d->preprocess);
    free(d->metrics);
    memset(d, 0, sizeof *d);
}
