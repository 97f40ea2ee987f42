/* test_listen.c: IPv6 listen addresses (flowd serve --listen [ADDR]:PORT):
 * [::1] serves over IPv6 loopback without tokens; [::] (dual stack) needs a
 * token file and then answers on both ::1 and 127.0.0.1; an IPv6 address
 * without brackets is refused at start (exit 2). */
#include "../test.h"

#include "daemon.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

static size_t sink(char *p, size_t s, size_t n, void *ud) {
    (void)p, (void)ud;
    return s * n;
}

/* GET url's status (0: no answer), with a bearer token when tok */
static long get_status(const char *url, const char *tok) {
    CURL *c = curl_easy_init();
    if (!c) return 0;
    struct curl_slist *h = NULL;
    char auth[128];
    if (tok) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", tok);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    long st = 0;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return st;
}

static void listen_body(dmn *d) {
    char url[128];
    static const char *const v6[] = {"--listen", "[::1]:0", NULL};
    REQUIRE(dmn_start(d, v6, NULL) == 0);
    snprintf(url, sizeof url, "http://[::1]:%d/healthz", d->port);
    CHECK_MSG(get_status(url, NULL) == 200, "GET %s", url);
    snprintf(url, sizeof url, "http://[::1]:%d/v1/models", d->port);
    CHECK_MSG(get_status(url, NULL) == 200, "GET %s without tokens on loopback", url);
    CHECK_EQ_INT(dmn_stop(d), 0);

    FILE *f = fopen(dmn_path(d, "tokens"), "w");
    REQUIRE(f);
    fprintf(f, "read rtok-listen-0123456789\n");
    fclose(f);
    const char *cli[] = {"serve", "--db", d->db, "--listen", "[::]:0", NULL};
    CHECK_EQ_INT(run_flowd(d, cli, NULL, 30), 2); /* every interface without tokens: refused */
    const char *dual[] = {"--listen", "[::]:0", "--token-file", dmn_path(d, "tokens"), NULL};
    REQUIRE(dmn_start(d, dual, NULL) == 0);
    snprintf(url, sizeof url, "http://[::1]:%d/v1/models", d->port);
    CHECK_MSG(get_status(url, "rtok-listen-0123456789") == 200, "GET %s", url);
    CHECK_MSG(get_status(url, NULL) == 401, "GET %s without a token", url);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/models", d->port);
    CHECK_MSG(get_status(url, "rtok-listen-0123456789") == 200, "GET %s on the dual-stack socket", url);
    CHECK_EQ_INT(dmn_stop(d), 0);

    static const char *const bad[] = {"::1:8080", "[::1]8080", "[::1", "[]:80", "[127.0.0.1]:80", NULL};
    for (int i = 0; bad[i]; i++) {
        const char *a[] = {"serve", "--db", d->db, "--listen", bad[i], NULL};
        CHECK_MSG(run_flowd(d, a, NULL, 30) == 2, "--listen %s was not refused", bad[i]);
    }
}

TEST_T(listen_ipv6, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    listen_body(&d);
    dmn_cleanup(&d);
}
