/* test_exclusive.c: one daemon per port, one daemon per database
 * (issue 15).
 *  - A second `flowd serve` on a port in use (another database) exits 1
 *    with "cannot listen": the listening socket has no SO_REUSEPORT unless
 *    --reuse-port asks for it.  Before, both listened and shared the
 *    connections.
 *  - A second `flowd serve` on the same database (another port) exits 1
 *    naming the first one's pid, so two daemons never run the same jobs;
 *    once the first has stopped (or was killed -9) the database is free. */
#include "../test.h"

#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TEST_T(exclusive_port_and_database, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", d.port);
    /* the same port, another database */
    const char *same_port[] = {"serve", "--db", dmn_path(&d, "other.db"), "--listen", listen, "--quiet", NULL};
    int rc = run_flowd(&d, same_port, NULL, 5);
    printf("  second daemon on port %d: exit %d\n", d.port, rc);
    CHECK_EQ_INT(rc, 1);
    CHECK(dmn_log_has(&d, "cannot listen on 127.0.0.1:"));
    /* the same database, another port */
    const char *same_db[] = {"serve", "--db", d.db, "--listen", "127.0.0.1:0", "--quiet", NULL};
    rc = run_flowd(&d, same_db, NULL, 5);
    printf("  second daemon on the same database: exit %d\n", rc);
    CHECK_EQ_INT(rc, 1);
    char msg[64];
    snprintf(msg, sizeof msg, "another flowd serve (pid %d)", (int)d.pid);
    CHECK_MSG(dmn_log_has(&d, msg), "no \"%s\" in the log", msg);
    CHECK(dmn_healthy(&d));
    /* free again once the first is gone, also after a SIGKILL */
    dmn_kill9(&d);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    CHECK(dmn_healthy(&d));
    CHECK_EQ_INT(dmn_stop(&d), 0);
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    dmn_cleanup(&d);
}

TEST_T(exclusive_reuse_port_when_asked, 60) {
    dmn a, b;
    REQUIRE(dmn_init(&a) == 0 && dmn_init(&b) == 0);
    const char *args[] = {"--reuse-port", NULL};
    REQUIRE(dmn_start(&a, args, NULL) == 0);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", a.port);
    const char *both[] = {"serve", "--db", b.db, "--listen", listen, "--reuse-port", "--quiet", NULL};
    /* asked for on both: the second listens too, until the timeout ends it */
    int rc = run_flowd(&b, both, NULL, 2);
    CHECK_MSG(rc >= 128, "the second --reuse-port daemon exited %d", rc);
    dmn_cleanup(&a);
    dmn_cleanup(&b);
}
