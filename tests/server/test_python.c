/* test_python.c: the Python client (client/python/flowd_client.py) against
 * the real daemon, and the other checks written in Python (tests/python/:
 * the /metrics scrape through prometheus_client's parser, every route
 * against the contract with jsonschema), in `make test`.
 * Each starts flowd on a fresh database with the models "m" and "c"
 * (dmn_make_model) and runs its script with Debian's python3 (FLOWD_PYTHON,
 * else /usr/bin/python3, else python3 on PATH), FLOWD_URL naming the daemon.
 *
 * Without any python3 the test says so and skips (passes).  With python3
 * but without the modules a script needs it fails, naming `make deps`:
 * those are build dependencies, not options. */
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

/* tests/python/NAME in the repository: the test binary is
 * build/<variant>/test_server */
static const char *script(const char *name) {
    static char buf[4200];
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    for (int up = 0; up < 3; up++) {
        char *s = strrchr(exe, '/');
        if (s) *s = 0;
    }
    snprintf(buf, sizeof buf, "%s/tests/python/%s", exe, name);
    if (n <= 0 || access(buf, R_OK) != 0) snprintf(buf, sizeof buf, "tests/python/%s", name);
    return buf;
}

/* Starts the daemon with the models "m" and "c" and runs
 * tests/python/<name> with FLOWD_URL; mods: the python modules it needs. */
static void run_script(dmn *d, const char *name, const char *mods, const char *const *args) {
    const char *py = python();
    if (!py) {
        fprintf(stderr, "    SKIP %s: no python3 on this machine (install python3, or run 'make deps')\n", name);
        return;
    }
    REQUIRE(dmn_make_model(d, "m", 0, NULL) == 0);
    REQUIRE(dmn_make_model(d, "c", 1, NULL) == 0);
    REQUIRE(dmn_start(d, args, NULL) == 0);
    /* the packages first, for a clear message */
    char imp[200];
    snprintf(imp, sizeof imp, "import %s", mods);
    const char *chk[] = {py, "-c", imp, NULL};
    int rc = dmn_run(d, chk, NULL, 60);
    CHECK_MSG(rc == 0, "%s cannot '%s' (exit %d): run 'make deps' (Debian's python3-* packages)", py, imp, rc);
    if (rc) return;
    char url[64];
    snprintf(url, sizeof url, "FLOWD_URL=http://127.0.0.1:%d", d->port);
    const char *env[] = {url, "PYTHONDONTWRITEBYTECODE=1", NULL};
    const char *argv[] = {py, script(name), NULL};
    rc = dmn_run(d, argv, env, 150);
    CHECK_MSG(rc == 0, "tests/python/%s failed (exit %d); its output is in the log below", name, rc);
}

static const char *const NO_ARGS[] = {NULL};

/* the client: client/python/flowd_client.py */
TEST_T(python_client, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    run_script(&d, "test_client.py", "numpy, requests, pandas", NO_ARGS);
    dmn_cleanup(&d);
}

/* /metrics through prometheus_client's parser */
TEST_T(python_metrics_scrape, 60) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    run_script(&d, "check_metrics.py", "requests, prometheus_client", NO_ARGS);
    dmn_cleanup(&d);
}

/* every route's real requests and responses against openapi.yaml and
 * job.schema.json with jsonschema */
TEST_T(python_contract, 180) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    run_script(&d, "check_contract.py", "requests, jsonschema", NO_ARGS);
    dmn_cleanup(&d);
}
