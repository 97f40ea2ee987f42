/* test_flowctl.c: the flowctl client end to end.  Each test starts the real
 * daemon (flowd serve --listen 127.0.0.1:0 --port-file F over a temporary
 * database) and runs the flowctl binary, both found next to this test
 * binary (or $FLOWD_BIN / $FLOWCTL_BIN), as subprocesses: listing on an
 * empty server, train --wait, streamed scoring of 25,000 CSV rows in chunks
 * against one-shot log_prob, sampling to CSV/.npy/PNG, and the exit codes
 * (usage 1, API error 2, server down 3, job failed 4, job cancelled 5).
 * The daemon runs with its default single training worker, which the
 * failed-job case relies on to keep a job queued. */
#include "../test.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct fct_srv {
    char dir[64], db[128], portf[128], log[128];
    char url[64];
    pid_t pid;
} fct_srv;

static double fct_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fct_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* $env, else NAME next to this test binary */
static const char *fct_bin(const char *env, const char *name, char *buf, size_t n) {
    const char *e = getenv(env);
    if (e && *e) return e;
    char self[1024];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) return name;
    self[k] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(buf, n, "%s/%s", self, name);
    return buf;
}

static char *fct_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap + 1);
    for (size_t k; s && (k = fread(s + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) s = realloc(s, (cap *= 2) + 1);
    }
    fclose(f);
    if (s) s[n] = 0;
    if (len) *len = n;
    return s;
}

static const char *fct_path(fct_srv *s, const char *name) {
    static char bufs[4][192];
    static int k;
    char *b = bufs[k++ & 3];
    snprintf(b, 192, "%s/%s", s->dir, name);
    return b;
}

static int fct_start(fct_srv *s) {
    memset(s, 0, sizeof s[0]);
    snprintf(s->dir, sizeof s->dir, "/tmp/flowctl_test_XXXXXX");
    if (!mkdtemp(s->dir)) return -1;
    snprintf(s->db, sizeof s->db, "%s/flowd.db", s->dir);
    snprintf(s->portf, sizeof s->portf, "%s/port", s->dir);
    snprintf(s->log, sizeof s->log, "%s/flowd.log", s->dir);
    char bb[1100];
    const char *bin = fct_bin("FLOWD_BIN", "flowd", bb, sizeof bb);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, "flowd", "serve", "--db", s->db, "--listen", "127.0.0.1:0", "--port-file", s->portf,
              "--quiet", (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    for (double t0 = fct_now(); fct_now() - t0 < 15; fct_sleep_ms(20)) {
        char *p = fct_slurp(s->portf, NULL);
        int port = p ? atoi(p) : 0;
        free(p);
        if (port > 0) {
            snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", port);
            return 0;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            break;
        }
    }
    char *log = fct_slurp(s->log, NULL);
    fprintf(stderr, "flowd did not start (%s):\n%s\n", bin, log ? log : "");
    free(log);
    return -1;
}

static void fct_stop(fct_srv *s) {
    if (s->pid <= 0) return;
    kill(s->pid, SIGTERM);
    int st;
    for (double t0 = fct_now(); fct_now() - t0 < 15; fct_sleep_ms(20))
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return;
        }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
}

static void fct_cleanup(fct_srv *s) {
    fct_stop(s);
    if (test_failures) {
        char *e = fct_slurp(fct_path(s, "flowctl.err"), NULL);
        if (e) fprintf(stderr, "--- flowctl stderr ---\n%s\n", e);
        free(e);
    }
    if (s->dir[0]) {
        char cmd[160];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd)) {
        }
    }
}

/* Starts flowctl ARGS with FLOWD_URL = the server, stdout to out (NULL:
 * /dev/null), stderr appended to dir/flowctl.err. */
static pid_t fct_spawn(fct_srv *s, const char *out, const char *const *args) {
    char bb[1100];
    const char *bin = fct_bin("FLOWCTL_BIN", "flowctl", bb, sizeof bb);
    const char *argv[40] = {"flowctl"};
    int n = 1;
    for (; args[n - 1] && n < 39; n++) argv[n] = args[n - 1];
    argv[n] = NULL;
    char errp[192];
    snprintf(errp, sizeof errp, "%s/flowctl.err", s->dir);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(errp, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fo >= 0) dup2(fo, 1);
        if (fe >= 0) dup2(fe, 2);
        int fi = open("/dev/null", O_RDONLY); /* no terminal: Ctrl-C would detach */
        if (fi >= 0) dup2(fi, 0);
        setenv("FLOWD_URL", s->url, 1);
        unsetenv("FLOWD_TOKEN");
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Exit status of pid (128+signal when killed; -1 on timeout, after killing it). */
static int fct_wait(pid_t pid, double timeout_s) {
    int st;
    for (double t0 = fct_now(); fct_now() - t0 < timeout_s; fct_sleep_ms(10))
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

static int fct_run(fct_srv *s, const char *out, const char *const *args) {
    pid_t pid = fct_spawn(s, out, args);
    return pid > 0 ? fct_wait(pid, 30) : -1;
}

/* ---- a direct HTTP call for reference values ------------------------------------------------ */
typedef struct fct_buf {
    char *p;
    size_t len, cap;
} fct_buf;

static size_t fct_on_body(char *d, size_t sz, size_t nm, void *ud) {
    fct_buf *b = ud;
    size_t n = sz * nm;
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 65536;
        char *p = realloc(b->p, b->cap);
        if (!p) return 0;
        b->p = p;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = 0;
    return n;
}

/* body NULL: DELETE path; returns the HTTP status through *status */
static cJSON *fct_call(fct_srv *s, const char *path, const char *body, long *status) {
    char url[256];
    snprintf(url, sizeof url, "%s%s", s->url, path);
    fct_buf b = {0};
    CURL *c = curl_easy_init();
    if (!c) return NULL;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    else curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fct_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    CURLcode rc = curl_easy_perform(c);
    *status = 0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    cJSON *o = rc == CURLE_OK && b.p ? cJSON_Parse(b.p) : NULL;
    free(b.p);
    return o;
}

/* Lines of a text file (malloc'd array of pointers into *text). */
static int fct_lines(char *text, char ***out) {
    int n = 0, cap = 1024;
    char **v = malloc(cap * sizeof *v);
    for (char *sv, *l = strtok_r(text, "\n", &sv); l; l = strtok_r(NULL, "\n", &sv)) {
        if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[n++] = l;
    }
    *out = v;
    return n;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- tests ------------------------------------------------------------------------------------ */
TEST_T(flowctl_empty_server_and_errors, 60) {
    fct_srv s;
    REQUIRE(fct_start(&s) == 0);
    const char *out = fct_path(&s, "out.txt");

    CHECK_EQ_INT(fct_run(&s, out, ARGS("models", "--json")), 0);
    char *txt = fct_slurp(out, NULL);
    cJSON *o = txt ? cJSON_Parse(txt) : NULL;
    CHECK_MSG(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(o, "models")) &&
                  cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "models")) == 0,
              "models --json: %s", txt ? txt : "(none)");
    cJSON_Delete(o);
    free(txt);

    CHECK_EQ_INT(fct_run(&s, out, ARGS("models")), 0);
    txt = fct_slurp(out, NULL);
    CHECK(txt && strstr(txt, "no models"));
    free(txt);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("jobs", "--json")), 0);

    /* API errors: 2, with the server's code on stderr */
    CHECK_EQ_INT(fct_run(&s, out, ARGS("model", "nope")), 2);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("sample", "nope", "-n", "5")), 2);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("job", "999")), 2);
    char *err = fct_slurp(fct_path(&s, "flowctl.err"), NULL);
    CHECK_MSG(err && strstr(err, "not_found"), "stderr: %s", err ? err : "");
    free(err);

    /* usage: 1 */
    CHECK_EQ_INT(fct_run(&s, out, ARGS("frobnicate")), 1);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("train", "--builtin", "moons", "--preset", "realnvp")), 1);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("sample", "m", "-n", "ten")), 1);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("score", "m", fct_path(&s, "missing.csv"))), 1);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("models", "--help")), 0);

    /* server down: 3 (the same URL, and an explicit --url) */
    fct_stop(&s);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("models")), 3);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("--url", s.url, "jobs")), 3);
    fct_cleanup(&s);
}

TEST_T(flowctl_train_score_sample, 90) {
    fct_srv s;
    REQUIRE(fct_start(&s) == 0);
    const char *out = fct_path(&s, "out.txt");

    CHECK_EQ_INT(fct_run(&s, out,
                         ARGS("train", "--builtin", "moons", "--n", "2000", "--preset", "realnvp", "--depth", "2",
                              "--hidden", "16", "--epochs", "3", "--model", "moons", "--wait")),
                 0);
    char *txt = fct_slurp(out, NULL);
    CHECK_MSG(txt && strstr(txt, "succeeded"), "train output: %s", txt ? txt : "");
    free(txt);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("models", "--json")), 0);
    txt = fct_slurp(out, NULL);
    cJSON *o = txt ? cJSON_Parse(txt) : NULL;
    cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "models"), 0);
    CHECK_MSG(m0 && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m0, "name")), "moons"),
              "models: %s", txt ? txt : "");
    cJSON_Delete(o);
    free(txt);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("model", "moons")), 0);

    /* 25,000 rows scored in chunks of 1000 = one-shot log_prob */
    enum { N = 25000 };
    const char *csv = fct_path(&s, "in.csv");
    FILE *f = fopen(csv, "w");
    REQUIRE(f);
    size_t cap = (size_t)N * 40 + 64, k = 0;
    char *json = malloc(cap);
    k += (size_t)snprintf(json, cap, "{\"inputs\":[");
    fprintf(f, "x,y\n");
    uint64_t st = 12345;
    for (int i = 0; i < N; i++) {
        double v[2];
        for (int d = 0; d < 2; d++) {
            st = st * 6364136223846793005ULL + 1442695040888963407ULL;
            v[d] = ((double)(st >> 11) / 9007199254740992.0) * 5 - 2.5;
        }
        fprintf(f, "%.6f,%.6f\n", v[0], v[1]);
        k += (size_t)snprintf(json + k, cap - k, "%s[%.6f,%.6f]", i ? "," : "", v[0], v[1]);
    }
    snprintf(json + k, cap - k, "]}");
    fclose(f);
    long hs;
    cJSON *ref = fct_call(&s, "/v1/models/moons/log_prob", json, &hs);
    free(json);
    cJSON *lp = cJSON_GetObjectItemCaseSensitive(ref, "log_prob");
    REQUIRE(cJSON_GetArraySize(lp) == N);

    const char *scored = fct_path(&s, "scores.csv");
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("score", "moons", csv, "--batch", "1000", "-o", scored)), 0);
    txt = fct_slurp(scored, NULL);
    REQUIRE(txt);
    char **lines;
    int nl = fct_lines(txt, &lines);
    CHECK_EQ_INT(nl, N + 1);
    CHECK(nl > 0 && !strcmp(lines[0], "log_prob"));
    int bad = 0;
    for (int i = 0; i + 1 < nl && i < N; i++) {
        double a = strtod(lines[i + 1], NULL), b = cJSON_GetArrayItem(lp, i)->valuedouble;
        if (!(fabs(a - b) <= 1e-5 + 1e-5 * fabs(b)) && bad++ < 5) CHECK_CLOSE(a, b, 1e-5, 1e-5);
    }
    CHECK_EQ_INT(bad, 0);
    free(lines);
    free(txt);

    /* the same rows from a .npy file (float64, 3000 rows, chunks of 512) */
    const char *npy = fct_path(&s, "in.npy");
    txt = fct_slurp(csv, NULL);
    REQUIRE(txt);
    nl = fct_lines(txt, &lines);
    f = fopen(npy, "wb");
    REQUIRE(f);
    char hdr[128];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f8', 'fortran_order': False, 'shape': (3000, 2), }");
    int pad = (64 - (10 + hl + 1) % 64) % 64;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((hl + pad + 1) & 255, f);
    fputc((hl + pad + 1) >> 8, f);
    fprintf(f, "%s%*s\n", hdr, pad, "");
    for (int i = 1; i <= 3000; i++) {
        double v[2];
        sscanf(lines[i], "%lf,%lf", &v[0], &v[1]);
        fwrite(v, sizeof v[0], 2, f);
    }
    fclose(f);
    free(lines);
    free(txt);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("score", "moons", npy, "--batch", "512")), 0);
    txt = fct_slurp(out, NULL);
    REQUIRE(txt);
    nl = fct_lines(txt, &lines);
    CHECK_EQ_INT(nl, 3001);
    for (int i = 0; i + 1 < nl && i < 3000; i++)
        if (fabs(strtod(lines[i + 1], NULL) - cJSON_GetArrayItem(lp, i)->valuedouble) > 1e-5 * (1 + fabs(cJSON_GetArrayItem(lp, i)->valuedouble))) {
            CHECK_MSG(0, "npy row %d: %s vs %g", i, lines[i + 1], cJSON_GetArrayItem(lp, i)->valuedouble);
            break;
        }
    free(lines);
    free(txt);
    cJSON_Delete(ref);

    /* samples: CSV and .npy with the same seed hold the same values; PNG */
    const char *xc = fct_path(&s, "x.csv"), *xn = fct_path(&s, "x.npy"), *xp = fct_path(&s, "x.png");
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("sample", "moons", "-n", "100", "--seed", "7", "-o", xc)), 0);
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("sample", "moons", "-n", "100", "--seed", "7", "-o", xn)), 0);
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("sample", "moons", "-n", "500", "-o", xp)), 0);
    txt = fct_slurp(xc, NULL);
    size_t nlen = 0;
    char *nb = fct_slurp(xn, &nlen);
    REQUIRE(txt && nb);
    CHECK(nlen > 10 && !memcmp(nb, "\x93NUMPY", 6) && strstr(nb + 10, "(100, 2)"));
    size_t H = nlen >= 10 ? 10 + ((unsigned char)nb[8] | (size_t)(unsigned char)nb[9] << 8) : 0;
    CHECK_EQ_INT(nlen, H + 100 * 2 * 4);
    nl = fct_lines(txt, &lines);
    CHECK_EQ_INT(nl, 101);
    for (int i = 1; i < nl && nlen == H + 800; i++) {
        double a, b;
        float fa, fb;
        CHECK_EQ_INT(sscanf(lines[i], "%lf,%lf", &a, &b), 2);
        memcpy(&fa, nb + H + 8 * (i - 1), 4);
        memcpy(&fb, nb + H + 8 * (i - 1) + 4, 4);
        CHECK_CLOSE(a, fa, 1e-6, 1e-6);
        CHECK_CLOSE(b, fb, 1e-6, 1e-6);
    }
    free(lines);
    free(txt);
    free(nb);
    size_t plen = 0;
    char *png = fct_slurp(xp, &plen);
    CHECK(png && plen > 8 && !memcmp(png, "\x89PNG\r\n\x1a\n", 8));
    free(png);
    fct_cleanup(&s);
}

/* Waits for "job N submitted" in a train --wait output file; N or 0. */
static long long fct_submitted(const char *path) {
    for (double t0 = fct_now(); fct_now() - t0 < 10; fct_sleep_ms(20)) {
        char *txt = fct_slurp(path, NULL);
        const char *p = txt ? strstr(txt, "job ") : NULL;
        long long id = p && strstr(p, "submitted") ? atoll(p + 4) : 0;
        free(txt);
        if (id) return id;
    }
    return 0;
}

TEST_T(flowctl_job_exit_codes, 60) {
    fct_srv s;
    REQUIRE(fct_start(&s) == 0);
    const char *out = fct_path(&s, "out.txt"), *o1 = fct_path(&s, "o1.txt"), *o2 = fct_path(&s, "o2.txt");

    /* a job the server refuses (unknown preset, 422): 2 */
    CHECK_EQ_INT(fct_run(&s, out, ARGS("train", "--builtin", "moons", "--n", "500", "--preset", "no_such_preset",
                                       "--model", "bad", "--wait")),
                 2);

    /* an uploaded dataset */
    const char *csv = fct_path(&s, "d.csv");
    FILE *f = fopen(csv, "w");
    REQUIRE(f);
    for (int i = 0; i < 500; i++) fprintf(f, "%d.5,%d.25\n", i % 7, i % 5);
    fclose(f);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("upload", csv, "--name", "small", "--json")), 0);
    char *txt = fct_slurp(out, NULL);
    cJSON *o = txt ? cJSON_Parse(txt) : NULL;
    char ds[64] = "";
    const char *dsid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "id"));
    snprintf(ds, sizeof ds, "%s", dsid ? dsid : "");
    CHECK_MSG(ds[0] && cJSON_GetObjectItemCaseSensitive(o, "rows") &&
                  cJSON_GetObjectItemCaseSensitive(o, "rows")->valuedouble == 500,
              "upload: %s", txt ? txt : "");
    cJSON_Delete(o);
    free(txt);

    /* one worker: a long job A runs, job B on the dataset waits behind it;
       the dataset is deleted, A is cancelled (A's follower: 5), B then fails
       for want of its data (B's follower: 4) */
    pid_t pa = fct_spawn(&s, o1, ARGS("train", "--builtin", "moons", "--n", "200000", "--preset", "realnvp",
                                      "--epochs", "500", "--model", "long", "--wait"));
    long long a = fct_submitted(o1);
    CHECK(a > 0);
    pid_t pb = fct_spawn(&s, o2, ARGS("train", "--dataset", ds, "--preset", "realnvp", "--depth", "2", "--hidden",
                                      "8", "--epochs", "2", "--model", "doomed", "--wait"));
    long long b = fct_submitted(o2);
    CHECK(b > 0);
    char path[128], ids[32];
    snprintf(path, sizeof path, "/v1/datasets/%s", ds);
    long hs = 0;
    cJSON_Delete(fct_call(&s, path, NULL, &hs));
    CHECK_EQ_INT(hs, 204);
    snprintf(ids, sizeof ids, "%lld", a);
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("cancel", ids)), 0);
    CHECK_EQ_INT(fct_wait(pa, 30), 5);
    CHECK_EQ_INT(fct_wait(pb, 30), 4);
    /* cancelling a finished job is a 409: 2 */
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("cancel", ids)), 2);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("jobs", "--state", "cancelled", "--json")), 0);
    txt = fct_slurp(out, NULL);
    CHECK(txt && strstr(txt, "\"long\""));
    free(txt);
    char *err = fct_slurp(fct_path(&s, "flowctl.err"), NULL);
    CHECK_MSG(err && strstr(err, "failed") && strstr(err, "cancelled"), "stderr: %s", err ? err : "");
    free(err);
    fct_cleanup(&s);
}

/* an image model: upload an IDX file (and a CSV with --shape), train on it,
 * and `sample -o grid.png` writes the server's image/png grid (IHDR of 9
 * tiles of 4x4: 3 x 3 cells, 16 x 16 pixels, gray) */
TEST_T(flowctl_sample_image_model_png, 90) {
    fct_srv s;
    REQUIRE(fct_start(&s) == 0);
    const char *out = fct_path(&s, "out.txt"), *idx = fct_path(&s, "px.idx");
    FILE *f = fopen(idx, "wb");
    REQUIRE(f);
    unsigned char hdr[16] = {0, 0, 8, 3, 0, 0, 0, 64, 0, 0, 0, 4, 0, 0, 0, 4};
    fwrite(hdr, 1, 16, f);
    for (int i = 0; i < 64 * 16; i++) fputc((i * 37) % 256, f);
    fclose(f);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("upload", idx, "--name", "px", "--json")), 0);
    char *txt = fct_slurp(out, NULL);
    cJSON *o = txt ? cJSON_Parse(txt) : NULL;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "id"));
    CHECK_MSG(id && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "shape")) == 3, "upload: %s",
              txt ? txt : "");
    char dsid[64] = "";
    if (id) snprintf(dsid, sizeof dsid, "%s", id);
    cJSON_Delete(o);
    free(txt);
    CHECK_EQ_INT(fct_run(&s, out,
                         ARGS("train", "--dataset", dsid, "--preset", "realnvp", "--depth", "2", "--hidden", "16",
                              "--epochs", "2", "--batch-size", "16", "--model", "px", "--wait")),
                 0);
    const char *grid = fct_path(&s, "grid.png");
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("sample", "px", "-n", "9", "--seed", "2", "-o", grid)), 0);
    size_t plen = 0;
    unsigned char *png = (unsigned char *)fct_slurp(grid, &plen);
    REQUIRE(png && plen > 33);
    CHECK(!memcmp(png, "\x89PNG\r\n\x1a\n", 8) && !memcmp(png + 12, "IHDR", 4));
    CHECK(png[16] == 0 && png[17] == 0 && png[18] == 0 && png[19] == 16); /* width 16 */
    CHECK(png[20] == 0 && png[21] == 0 && png[22] == 0 && png[23] == 16); /* height 16 */
    CHECK(png[25] == 0);                                                 /* gray */
    free(png);
    /* --shape declares it for CSV rows; a wrong one is the server's 422 (exit 2) */
    const char *csv = fct_path(&s, "rows.csv");
    f = fopen(csv, "w");
    REQUIRE(f);
    fprintf(f, "1,2,3,4,5,6\n7,8,9,10,11,12\n");
    fclose(f);
    CHECK_EQ_INT(fct_run(&s, out, ARGS("upload", csv, "--name", "c", "--shape", "3,1,2")), 0);
    txt = fct_slurp(out, NULL);
    CHECK_MSG(txt && strstr(txt, "images 3x1x2"), "%s", txt ? txt : "");
    free(txt);
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("upload", csv, "--name", "c", "--shape", "2,2,2")), 2);
    CHECK_EQ_INT(fct_run(&s, NULL, ARGS("upload", csv, "--name", "c", "--shape", "3x1x2")), 1);
    fct_cleanup(&s);
}
