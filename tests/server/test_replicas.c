/* test_replicas.c: serving replicas (docs/scale-out.md): two flowd serve
 * processes, each with its own database, loaded with the same model file by
 * `flowd import`, agree on GET /v1/models/{name}'s "sha256" (the file's
 * digest) and "versions_sha256" and score rows identically; a version only
 * one of them has makes "versions_sha256" differ.  Then the same two behind
 * tools/replica_proxy.py, the tiny round-robin proxy of the recipe: requests
 * alternate between the replicas and get the same answers. */
#include "../test.h"

#include "../../core/model.h"
#include "daemon.h"
#include "oapi.h"

#include <openssl/evp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* sha256 of a file, lower-case hex; 0 or -1 */
static int file_sha256(const char *path, char hex[65]) {
    void *buf;
    size_t len;
    if (nf_file_read(path, &buf, &len)) return -1;
    unsigned char md[32];
    unsigned n = 0;
    int ok = EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL) && n == 32;
    free(buf);
    for (int i = 0; ok && i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return ok ? 0 : -1;
}

/* two replicas: the model file "moons" made in a's directory (a's
 * database gets it), imported into b's database, both daemons started */
static int start_two(dmn *a, dmn *b) {
    if (dmn_init(a) || dmn_init(b) || dmn_make_model(a, "moons", 0, NULL)) return -1;
    const char *mig[] = {"migrate", "--db", b->db, NULL};
    const char *im[] = {"import", dmn_path(a, "moons"), "--name", "moons", "--db", b->db, NULL};
    const char *args[] = {NULL};
    if (run_flowd(b, mig, NULL, 60) || run_flowd(b, im, NULL, 60)) return -1;
    return dmn_start(a, args, NULL) || dmn_start(b, args, NULL) ? -1 : 0;
}

TEST_T(replicas_agree_on_content_hash, 120) {
    dmn a, b;
    REQUIRE(start_two(&a, &b) == 0);
    const char *file = dmn_path(&a, "moons");
    char want[65];
    REQUIRE(file_sha256(file, want) == 0);

    hresp r;
    http_get(&a, "/openapi.yaml", &r);
    REQUIRE(r.status == 200);
    char err[400] = "";
    cJSON *doc = oapi_parse(r.body, r.len, err, sizeof err);
    hresp_free(&r);
    REQUIRE(doc);

    hresp ra, rb;
    http_get(&a, "/v1/models/moons", &ra);
    http_get(&b, "/v1/models/moons", &rb);
    REQUIRE(ra.status == 200 && rb.status == 200 && ra.json && rb.json);
    CHECK_MSG(oapi_check(doc, "ModelDetail", ra.json, err, sizeof err) == 0, "ModelDetail: %s", err);
    const char *ha = jstr(ra.json, "sha256"), *hb = jstr(rb.json, "sha256");
    CHECK_MSG(ha && !strcmp(ha, want), "replica a: sha256 %s, file %s", ha ? ha : "(none)", want);
    CHECK_MSG(hb && !strcmp(hb, want), "replica b: sha256 %s, file %s", hb ? hb : "(none)", want);
    /* ... equal to the version's own digest */
    const cJSON *v1 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ra.json, "versions"), 0);
    CHECK(jstr(v1, "sha256") && !strcmp(jstr(v1, "sha256"), want));
    /* versions_sha256: sha256("1 <digest>\n") */
    char line[80], vh[65];
    int n = snprintf(line, sizeof line, "1 %s\n", want);
    unsigned char md[32];
    unsigned mlen = 0;
    REQUIRE(EVP_Digest(line, (size_t)n, md, &mlen, EVP_sha256(), NULL) && mlen == 32);
    for (int i = 0; i < 32; i++) snprintf(vh + 2 * i, 3, "%02x", md[i]);
    const char *va = jstr(ra.json, "versions_sha256"), *vb = jstr(rb.json, "versions_sha256");
    CHECK_MSG(va && !strcmp(va, vh), "versions_sha256 %s, want %s", va ? va : "(none)", vh);
    CHECK(vb && va && !strcmp(va, vb));
    /* the creation times differ between the replicas' imports, or may: they
     * are not part of either digest */
    hresp_free(&ra);
    hresp_free(&rb);

    /* the same rows score the same on both */
    const char *rows = "{\"inputs\":[[0.5,0.2],[-1,0.3],[2,-0.5]]}";
    http_post_json(&a, "/v1/models/moons/log_prob", rows, &ra);
    http_post_json(&b, "/v1/models/moons/log_prob", rows, &rb);
    CHECK(ra.status == 200 && rb.status == 200);
    CHECK_MSG(ra.body && rb.body && !strcmp(ra.body, rb.body), "a: %s\nb: %s", ra.body, rb.body);
    hresp_free(&ra);
    hresp_free(&rb);

    /* a second version on b only: b's latest digest is still the same
     * file's, versions_sha256 now differs */
    const char *im2[] = {"import", file, "--name", "moons", "--db", b.db, NULL};
    CHECK_EQ_INT(run_flowd(&b, im2, NULL, 60), 0);
    http_get(&a, "/v1/models/moons", &ra);
    http_get(&b, "/v1/models/moons", &rb);
    REQUIRE(ra.json && rb.json);
    CHECK(jstr(rb.json, "sha256") && !strcmp(jstr(rb.json, "sha256"), want));
    CHECK(jstr(ra.json, "versions_sha256") && jstr(rb.json, "versions_sha256") &&
          strcmp(jstr(ra.json, "versions_sha256"), jstr(rb.json, "versions_sha256")));
    hresp_free(&ra);
    hresp_free(&rb);
    cJSON_Delete(doc);
    dmn_cleanup(&a);
    dmn_cleanup(&b);
}


/* tools/replica_proxy.py in the repository (the test binary is
 * build/<variant>/test_server) */
static const char *proxy_script(void) {
    static char buf[1100];
    char self[1024];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) return "tools/replica_proxy.py";
    self[k] = 0;
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
    }
    snprintf(buf, sizeof buf, "%s/tools/replica_proxy.py", self);
    return buf;
}

/* the replica that answered through the proxy (X-Flowd-Replica), or -1 */
static int replica_of(const hresp *r) {
    char rep[16];
    const char *h = hresp_header(r, "X-Flowd-Replica", rep, sizeof rep);
    return h && (!strcmp(h, "0") || !strcmp(h, "1")) ? h[0] - '0' : -1;
}

TEST_T(replicas_behind_the_tiny_proxy, 120) {
    if (access("/usr/bin/python3", X_OK)) {
        printf("    SKIP: no /usr/bin/python3 for tools/replica_proxy.py\n");
        return;
    }
    dmn a, b, p;
    REQUIRE(dmn_init(&p) == 0);
    REQUIRE(start_two(&a, &b) == 0);
    char ua[64], ub[64];
    snprintf(ua, sizeof ua, "http://127.0.0.1:%d", a.port);
    snprintf(ub, sizeof ub, "http://127.0.0.1:%d", b.port);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl("/usr/bin/python3", "python3", proxy_script(), "--listen", "127.0.0.1:0", "--port-file",
              p.portf, "--backend", ua, "--backend", ub, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 300 && !p.port; i++) { /* up to 15 s */
        FILE *f = fopen(p.portf, "r");
        int port = 0;
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
        }
        if (port > 0) p.port = port;
        else nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    CHECK_MSG(p.port > 0, "the proxy did not start (%s)", proxy_script());
    int seen[2] = {0, 0};
    char first[65] = "";
    for (int i = 0; p.port && i < 4; i++) {
        hresp r;
        http_get(&p, "/v1/models/moons", &r);
        CHECK_EQ_INT(r.status, 200);
        int k = replica_of(&r);
        if (k >= 0) seen[k]++;
        const char *sha = jstr(r.json, "sha256");
        CHECK(sha);
        if (sha && !first[0]) snprintf(first, sizeof first, "%s", sha);
        else if (sha) CHECK(!strcmp(sha, first));
        hresp_free(&r);
        hresp lp;
        http_post_json(&p, "/v1/models/moons/log_prob", "{\"inputs\":[[0.5,0.2]]}", &lp);
        CHECK_EQ_INT(lp.status, 200);
        if ((k = replica_of(&lp)) >= 0) seen[k]++;
        hresp_free(&lp);
    }
    /* 8 requests in turn: each replica answered 4 */
    CHECK_EQ_INT(seen[0], 4);
    CHECK_EQ_INT(seen[1], 4);
    /* one replica down: the proxy answers from the other */
    dmn_stop(&b);
    for (int i = 0; p.port && i < 2; i++) {
        hresp r;
        http_get(&p, "/v1/models/moons", &r);
        CHECK_EQ_INT(r.status, 200);
        CHECK_EQ_INT(replica_of(&r), 0);
        hresp_free(&r);
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    p.pid = 0;
    dmn_cleanup(&a);
    dmn_cleanup(&b);
    dmn_cleanup(&p);
}
