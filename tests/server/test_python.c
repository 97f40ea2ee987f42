/* test_python.c: the Python client (client/python/flowd_client.py) against
 * the real daemon, in `make test`.  Starts flowd on a fresh database with
 * the models "m" and "c" (dmn_make_model) and runs
 * tests/python/test_client.py with Debian's python3 (FLOWD_PYTHON, else
 * /usr/bin/python3, else python3 on PATH), FLOWD_URL naming the daemon.
 *
 * Without any python3 the test says so and skips (passes).  With python3
 * but without numpy, requests or pandas it fails, naming `make deps`: those
 * are build dependencies, not options. */
#include "../test.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the python3 to use, or NULL when there is none */
static const char *python(void) {
    const char *p = getenv("FLOWD_PYTHON");
    if (p && *p) return p;
    if (access("/usr/bin/python3", X_OK) == 0) return "/usr/bin/python3";
    const char *path = getenv("PATH");
    static char buf[1024];
    while (path && *path) {
        const char *c = strchr(path, ':');
        int n = c ? (int)(c - path) : (int)strlen(path);
        snprintf(buf, sizeof buf, "%.*s/python3", n, path);
        if (access(buf, X_OK) == 0) return buf;
        path = c ? c + 1 : NULL;
    }
    return NULL;
}

/* the repository root: the test binary is build/<variant>/test_server */
static const char *script(void) {
    static char buf[4200];
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return "tests/python/test_client.py";
    exe[n] = 0;
    for (int up = 0; up < 3; up++) {
        char *s = strrchr(exe, '/');
        if (s) *s = 0;
    }
    snprintf(buf, sizeof buf, "%s/tests/python/test_client.py", exe);
    return access(buf, R_OK) == 0 ? buf : "tests/python/test_client.py";
}

static void client_body(dmn *d) {
    const char *py = python();
    if (!py) {
        fprintf(stderr, "    SKIP python_client: no python3 on this machine (install python3, or run 'make deps')\n");
        return;
    }
    static const char *const args[] = {NULL};
    REQUIRE(dmn_make_model(d, "m", 0, NULL) == 0);
    REQUIRE(dmn_make_model(d, "c", 1, NULL) == 0);
    REQUIRE(dmn_start(d, args, NULL) == 0);
    /* the packages first, for a clear message */
    const char *chk[] = {py, "-c", "import numpy, requests, pandas", NULL};
    int rc = dmn_run(d, chk, NULL, 60);
    CHECK_MSG(rc == 0, "%s cannot import numpy, requests and pandas (exit %d): run 'make deps' "
                       "(python3-numpy, python3-requests, python3-pandas)", py, rc);
    if (rc) return;
    char url[64];
    snprintf(url, sizeof url, "FLOWD_URL=http://127.0.0.1:%d", d->port);
    const char *env[] = {url, "PYTHONDONTWRITEBYTECODE=1", NULL};
    const char *argv[] = {py, script(), NULL};
    rc = dmn_run(d, argv, env, 150);
    CHECK_MSG(rc == 0, "tests/python/test_client.py failed (exit %d); its output is in the log below", rc);
}

TEST_T(python_client, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    client_body(&d);
    dmn_cleanup(&d);
}
