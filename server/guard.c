/* guard.c: what a browser may make the daemon do (issue 15).
 *
 * A web page in the user's browser can send requests to a daemon on
 * loopback: a form posts a body as application/x-www-form-urlencoded,
 * multipart/form-data or text/plain without any CORS check, a fetch from
 * another origin carries an Origin header, and a page whose name has been
 * rebound to 127.0.0.1 (DNS rebinding) talks to the daemon as its own
 * origin, with its own name in Host.  Hence three checks, made from the
 * headers before a body byte is read (http.c, phase "guard"):
 *
 *  - a body sent to a route that takes one must declare a type the route can
 *    parse (fd_guard_ctype_ok): none of the three a form can send, and not
 *    missing;
 *  - an Origin must be the daemon's own (http(s):// and the Host the request
 *    names) or one given with --allow-origin (fd_guard_origin);
 *  - without tokens, Host must name the listen address or localhost
 *    (fd_guard_host). */
#include "server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The media types a body may have; the route itself then picks among them
 * (415 for a type it does not take). */
static const char *const body_types[] = {
    "application/json", "text/csv", "application/x-npy", "application/octet-stream",
    "application/gzip", "application/x-idx", NULL,
};

int fd_guard_ctype_ok(const char *ct) {
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t') ct++;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t')) n--;
    for (const char *const *t = body_types; *t; t++)
        if (strlen(*t) == n && !strncasecmp(ct, *t, n)) return 1;
    return 0;
}

/* host (a Host header's value) split into the name, without brackets, and
 * the port (80 when absent); -1 when malformed */
static int split_host(const char *h, char *name, size_t nlen, long *port) {
    const char *e, *colon;
    if (*h == '[') {
        e = strchr(h, ']');
        if (!e) return -1;
        h++;
        colon = e[1] == ':' ? e + 1 : e[1] ? NULL : e + 1;
        if (!colon) return -1;
    } else {
        colon = strrchr(h, ':');
        e = colon ? colon : h + strlen(h);
    }
    if (e == h || (size_t)(e - h) >= nlen) return -1;
    memcpy(name, h, (size_t)(e - h));
    name[e - h] = 0;
    *port = 80;
    if (colon && *colon == ':') {
        char *end;
        *port = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || *port < 0 || *port > 65535) return -1;
    }
    return 0;
}

int fd_guard_host(const fd_server *s, const char *host) {
    if (s->ntokens > 0 || !host) return 1; /* HTTP/1.0 without Host: no browser */
    char name[256];
    long port;
    /* the name is what a rebound page cannot fake (its own is in Host); the
     * port is not checked: a proxy on loopback may forward from another */
    if (split_host(host, name, sizeof name, &port)) return 0;
    return !strcasecmp(name, s->cfg.listen_host) || !strcasecmp(name, "localhost");
}

/* a or b, each without one trailing '/', equal (case-insensitive) */
static int same(const char *a, size_t an, const char *b) {
    size_t bn = strlen(b);
    if (an && a[an - 1] == '/') an--;
    if (bn && b[bn - 1] == '/') bn--;
    return an == bn && !strncasecmp(a, b, an);
}

int fd_guard_origin(const fd_server *s, const char *origin, const char *host) {
    if (!origin) return 1;
    size_t on = strlen(origin);
    if (host) {
        for (int tls = 0; tls < 2; tls++) {
            const char *sch = tls ? "https://" : "http://";
            size_t k = strlen(sch);
            if (on > k && !strncasecmp(origin, sch, k) && same(origin + k, on - k, host)) return 1;
        }
    }
    for (const char *p = s->cfg.allow_origins; p && *p;) {
        size_t n = strcspn(p, ",");
        char one[512];
        if (n < sizeof one) {
            memcpy(one, p, n);
            one[n] = 0;
            if (same(origin, on, one)) return 2;
        }
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

/* ---- event streams per client ------------------------------------------------
 * FD_MAX_STREAMS streams are open at most (api_jobs.c); one client may hold
 * at most cfg.max_streams_per_client of them, so a reader cannot take every
 * slot for a job's lifetime.  A client is its token (the hash) when tokens
 * are configured, else its address. */
#define CLIENTS 128
static struct {
    char key[72];
    int n;
} clients[CLIENTS];
static pthread_mutex_t clients_mu = PTHREAD_MUTEX_INITIALIZER;

static void client_key(fd_req *r, char key[72]) {
    if (r->client_token[0]) {
        snprintf(key, 72, "t:%s", r->client_token);
        return;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    }
    snprintf(key, 72, "a:%s", ip);
}

int fd_stream_client_take(fd_req *r, char key[72]) {
    client_key(r, key);
    int cap = r->srv->cfg.max_streams_per_client, free_at = -1, rc = -1;
    pthread_mutex_lock(&clients_mu);
    for (int i = 0; i < CLIENTS; i++) {
        if (clients[i].n && !strcmp(clients[i].key, key)) {
            if (clients[i].n < cap) clients[i].n++, rc = 0;
            free_at = -2;
            break;
        }
        if (!clients[i].n && free_at == -1) free_at = i;
    }
    if (free_at >= 0 && cap > 0) {
        snprintf(clients[free_at].key, sizeof clients[free_at].key, "%s", key);
        clients[free_at].n = 1;
        rc = 0;
    }
    pthread_mutex_unlock(&clients_mu);
    return rc;
}

void fd_stream_client_give(const char *key) {
    pthread_mutex_lock(&clients_mu);
    for (int i = 0; i < CLIENTS; i++)
        if (clients[i].n && !strcmp(clients[i].key, key)) {
            clients[i].n--;
            break;
        }
    pthread_mutex_unlock(&clients_mu);
}
