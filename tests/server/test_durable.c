/* test_durable.c: acknowledged writes survive (issue 15).
 *  - Every connection runs PRAGMA synchronous=FULL: in WAL mode a commit
 *    (an upload's 201, a job's 202, a published version) is fsynced before
 *    it is answered; FLOWD_DB_SYNCHRONOUS=NORMAL opts out.
 *  - A publish that fails transiently is retried with the trained model
 *    kept: with the first 6 attempts failing (FLOWD_FAULT_PUBLISH_FAILS, a
 *    busy database) the job still succeeds and its version loads.  Before,
 *    the job failed after 4 tries and the training was thrown away.
 *  - A shutdown while the publish is being retried leaves the job 'running';
 *    the next start resumes it and publishes. */
#include "../test.h"

#include "daemon.h"

#include "../../core/model.h"
#include "../../server/db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOB "{\"model\":\"dur\",\"dataset\":{\"builtin\":\"moons\",\"n\":1000,\"seed\":1}," \
            "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[16]},\"train\":{\"epochs\":3,\"batch_size\":100}}"

static void version_loads(dmn *d) {
    hresp r;
    CHECK(http_get(d, "/v1/models/dur/versions/1/checkpoint", &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    nf_model *m = NULL;
    char err[200] = "";
    CHECK(r.len > 0 && nf_model_load(r.body, r.len, &m, err, sizeof err) == 0);
    nf_model_free(m);
    hresp_free(&r);
}

TEST(durable_sqlite_synchronous_full) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    fd_db *db = NULL;
    char err[200];
    REQUIRE(fd_db_open(d.db, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_synchronous(db), 2);
    fd_db_close(db);
    setenv("FLOWD_DB_SYNCHRONOUS", "NORMAL", 1);
    REQUIRE(fd_db_open(d.db, &db, err, sizeof err) == 0);
    CHECK_EQ_INT(fd_db_synchronous(db), 1);
    fd_db_close(db);
    unsetenv("FLOWD_DB_SYNCHRONOUS");
    dmn_cleanup(&d);
}

TEST_T(durable_publish_retried_keeps_model, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *env[] = {"FLOWD_FAULT_PUBLISH_FAILS=6", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    long long id = submit_job(&d, JOB);
    REQUIRE(id > 0);
    char state[32];
    CHECK(wait_job(&d, id, 60, state, sizeof state) == 0);
    CHECK_MSG(!strcmp(state, "succeeded"), "job ended %s", state);
    CHECK(dmn_log_has(&d, "publishing failed (try 6"));
    version_loads(&d);
    dmn_cleanup(&d);
}

TEST_T(durable_publish_interrupted_resumes, 90) {
    dmn d;
    REQUIRE(dmn_init(&d) == 0);
    const char *env[] = {"FLOWD_FAULT_PUBLISH_FAILS=1000000", NULL};
    REQUIRE(dmn_start(&d, NULL, env) == 0);
    long long id = submit_job(&d, JOB);
    REQUIRE(id > 0);
    double t0 = dmn_now();
    while (!dmn_log_has(&d, "publishing failed (try 2") && dmn_now() - t0 < 60) dmn_sleep_ms(50);
    CHECK(dmn_log_has(&d, "publishing failed (try 2"));
    CHECK_EQ_INT(dmn_stop(&d), 0);
    CHECK(dmn_log_has(&d, "before its model was published"));
    REQUIRE(dmn_start(&d, NULL, NULL) == 0);
    char state[32];
    CHECK(wait_job(&d, id, 60, state, sizeof state) == 0);
    CHECK_MSG(!strcmp(state, "succeeded"), "job ended %s", state);
    version_loads(&d);
    dmn_cleanup(&d);
}
