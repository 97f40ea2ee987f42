/* test_dashboard.c: the dashboard page (server/assets/index.html) in a real
 * browser.  Starts the real flowd binary (next to this test binary) on a
 * free port over a temporary database, trains a small moons model through
 * the API, then loads http://127.0.0.1:PORT/#model=NAME in headless
 * chromium: the dumped DOM must show the model, the job as "succeeded" and
 * <body data-samples-rendered="N"> with N > 0 (the page sets it once it has
 * drawn the samples that the #model= hash asks for).  A 1280x900 screenshot
 * is left in <build>/artifacts/dashboard.png.
 *
 * Without chromium on PATH (or $FLOWD_CHROMIUM) the test prints
 * "skipped: chromium not installed" and passes; CI installs it. */
#include "../test.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODEL "dash-moons"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void msleep(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* directory of the running test binary, e.g. build/rel */
static const char *self_dir(void) {
    static char dir[PATH_MAX];
    if (!dir[0]) {
        ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
        if (n <= 0) return strcpy(dir, "build/rel");
        dir[n] = 0;
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
    }
    return dir;
}

/* chromium on PATH (or $FLOWD_CHROMIUM), else NULL */
static const char *find_chromium(void) {
    static char path[PATH_MAX];
    const char *e = getenv("FLOWD_CHROMIUM");
    if (e && *e) return access(e, X_OK) ? NULL : e;
    const char *names[] = {"chromium", "chromium-browser"};
    const char *p = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", p && *p ? p : "/usr/bin:/bin");
    for (int k = 0; k < 2; k++) {
        char tmp[4096];
        memcpy(tmp, buf, sizeof tmp);
        for (char *save = NULL, *d = strtok_r(tmp, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            snprintf(path, sizeof path, "%s/%s", d, names[k]);
            if (!access(path, X_OK)) return path;
        }
    }
    return NULL;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(p);
    return 0;
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* fork + exec argv with stdout/stderr to files; the child dies with us */
static pid_t spawn(char *const argv[], const char *out, const char *err, const char *home) {
    pid_t parent = getpid(), pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int fe = err ? open(err, O_WRONLY | O_CREAT | O_APPEND, 0600) : fo;
    if (fo >= 0) dup2(fo, 1);
    if (fe >= 0) dup2(fe, 2);
    if (home) { /* keep the browser's profile, caches and crash dumps inside the temp dir */
        setenv("HOME", home, 1);
        setenv("XDG_CONFIG_HOME", home, 1);
        setenv("XDG_CACHE_HOME", home, 1);
    }
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    execv(argv[0], argv);
    _exit(127);
}

/* waits up to timeout_s; kills on timeout.  Returns the exit status, or -1 */
static int wait_for(pid_t pid, double timeout_s) {
    double t0 = now_s();
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0) return -1;
        if (now_s() - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        msleep(50);
    }
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = b ? fread(b, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    fclose(f);
    if (!b) return NULL;
    b[got] = 0;
    if (len) *len = got;
    return b;
}

static void print_tail(const char *what, const char *path) {
    size_t n = 0;
    char *s = slurp(path, &n);
    if (!s) return;
    fprintf(stderr, "    --- %s (%s) ---\n%s\n    ---\n", what, path, n > 3000 ? s + n - 3000 : s);
    free(s);
}

/* ---- HTTP (libcurl) --------------------------------------------------------- */
typedef struct { char *p; size_t n; } buf_t;
static size_t on_data(char *d, size_t sz, size_t nm, void *u) {
    buf_t *b = u;
    char *q = realloc(b->p, b->n + sz * nm + 1);
    if (!q) return 0;
    memcpy(q + b->n, d, sz * nm);
    b->p = q;
    b->n += sz * nm;
    b->p[b->n] = 0;
    return sz * nm;
}
/* GET (body NULL) or POST JSON; returns the parsed JSON (or NULL), status in *code */
static cJSON *http_json_m(int port, const char *method, const char *path, const char *body, long *code);
static cJSON *http_json(int port, const char *path, const char *body, long *code) {
    return http_json_m(port, NULL, path, body, code);
}

/* method NULL: GET, or POST with a body */
static cJSON *http_json_m(int port, const char *method, const char *path, const char *body, long *code) {
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    buf_t b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    if (method) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    *code = 0;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    cJSON *j = b.p ? cJSON_Parse(b.p) : NULL;
    if (!j && b.p) fprintf(stderr, "    %s: %ld %.300s\n", path, *code, b.p);
    free(b.p);
    return j;
}

/* ---- the test ----------------------------------------------------------------- */
typedef struct {
    char dir[64], db[128], log[128], portf[128], home[128];
    pid_t pid;
    int port;
} env_t;

static int start_daemon(env_t *e) {
    char bin[PATH_MAX + 8];
    snprintf(bin, sizeof bin, "%s/flowd", self_dir());
    char *argv[] = {bin, "serve", "--db", e->db, "--listen", "127.0.0.1:0", "--port-file", e->portf, "--quiet", NULL};
    e->pid = spawn(argv, e->log, NULL, NULL);
    for (double t0 = now_s(); now_s() - t0 < 15;) {
        char *s = slurp(e->portf, NULL);
        if (s) {
            e->port = atoi(s);
            free(s);
            if (e->port > 0) return 0;
        }
        if (waitpid(e->pid, NULL, WNOHANG) == e->pid) {
            e->pid = 0;
            break;
        }
        msleep(50);
    }
    print_tail("daemon log", e->log);
    return -1;
}

/* a temporary directory and the daemon on it; -1 (a failure recorded, the
 * directory removed) when it does not start */
static int dash_start(env_t *e) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(e->dir, sizeof e->dir, "/tmp/flowd_dash_XXXXXX");
    if (!mkdtemp(e->dir)) {
        test_fail_at(__FILE__, __LINE__, "mkdtemp failed");
        return -1;
    }
    snprintf(e->db, sizeof e->db, "%s/flowd.db", e->dir);
    snprintf(e->log, sizeof e->log, "%s/flowd.log", e->dir);
    snprintf(e->portf, sizeof e->portf, "%s/port", e->dir);
    snprintf(e->home, sizeof e->home, "%s/home", e->dir);
    mkdir(e->home, 0700);
    if (start_daemon(e)) {
        test_fail_at(__FILE__, __LINE__, "the daemon did not start");
        rm_tree(e->dir);
        return -1;
    }
    return 0;
}

static void stop_daemon(env_t *e) {
    if (e->pid <= 0) return;
    kill(e->pid, SIGTERM);
    if (wait_for(e->pid, 20) < 0) fprintf(stderr, "    daemon did not stop on SIGTERM; killed\n");
    e->pid = 0;
}

/* trains MODEL and waits for the job; returns the job id or 0 */
static long train_moons(env_t *e) {
    const char *job =
        "{\"model\":\"" MODEL "\",\"dataset\":{\"builtin\":\"moons\",\"n\":8000,\"seed\":1},"
        "\"flow\":{\"preset\":\"realnvp\",\"depth\":6,\"hidden\":[64,64]},"
        "\"train\":{\"epochs\":12,\"batch_size\":256,\"lr\":0.003,\"schedule\":\"cosine\","
        "\"val_fraction\":0.1,\"seed\":0,\"log_every\":10}}";
    long code;
    cJSON *r = http_json(e->port, "/v1/jobs", job, &code);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
    long jid = cJSON_IsString(id) ? atol(id->valuestring) : cJSON_IsNumber(id) ? (long)id->valuedouble : 0;
    cJSON_Delete(r);
    if (code != 202 || jid <= 0) {
        fprintf(stderr, "    POST /v1/jobs: %ld\n", code);
        return 0;
    }
    char path[64], state[32] = "";
    snprintf(path, sizeof path, "/v1/jobs/%ld", jid);
    for (double t0 = now_s(); now_s() - t0 < 90; msleep(200)) {
        r = http_json(e->port, path, NULL, &code);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(r, "state");
        snprintf(state, sizeof state, "%s", cJSON_IsString(st) ? st->valuestring : "?");
        cJSON_Delete(r);
        if (!strcmp(state, "succeeded")) return jid;
        if (!strcmp(state, "failed") || !strcmp(state, "cancelled")) break;
    }
    fprintf(stderr, "    job %ld ended as %s\n", jid, state);
    return 0;
}

/* runs headless chromium on url with the extra flags; stdout into out */
static int run_chromium(env_t *e, const char *chromium, const char *url, const char *flag1,
                        const char *flag2, const char *out) {
    char udd[160], errlog[160];
    snprintf(udd, sizeof udd, "--user-data-dir=%s/profile", e->home);
    snprintf(errlog, sizeof errlog, "%s/chromium.log", e->dir);
    char *argv[] = {(char *)chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", udd,
                    "--virtual-time-budget=10000", (char *)flag1, (char *)flag2, (char *)url, NULL};
    if (!flag2) { /* keep the url last */
        argv[14] = (char *)url;
        argv[15] = NULL;
    }
    pid_t pid = spawn(argv, out, errlog, e->home);
    int rc = wait_for(pid, 90);
    if (rc != 0) {
        fprintf(stderr, "    chromium exited with %d\n", rc);
        print_tail("chromium log", errlog);
    }
    return rc;
}

/* value of <body data-samples-rendered="N">, -1 if absent */
static long samples_rendered(const char *dom) {
    const char *p = strstr(dom, "data-samples-rendered=\"");
    return p ? atol(p + strlen("data-samples-rendered=\"")) : -1;
}

TEST_T(dashboard_renders_model_job_and_samples, 300) {
    const char *chromium = find_chromium();
    if (!chromium) {
        printf("dashboard_renders_model_job_and_samples: skipped: chromium not installed "
               "(apt-get install -y chromium)\n");
        return;
    }
    env_t e = {0};
    if (dash_start(&e)) return;
    long jid = train_moons(&e);
    CHECK_MSG(jid > 0, "training " MODEL " through the API failed");
    /* an alias, which the versions table shows with its drop button */
    long acode = 0;
    cJSON_Delete(http_json_m(e.port, "PUT", "/v1/models/" MODEL "/aliases/prod", "{\"version\":1}", &acode));
    CHECK_MSG(acode == 200, "PUT alias: %ld", acode);

    /* GET / serves the embedded page */
    char url[256], dom_path[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/#model=" MODEL, e.port);
    snprintf(dom_path, sizeof dom_path, "%s/dom.html", e.dir);
    if (jid > 0 && run_chromium(&e, chromium, url, "--dump-dom", NULL, dom_path) == 0) {
        char *dom = slurp(dom_path, NULL);
        REQUIRE(dom != NULL);
        long n = samples_rendered(dom);
        CHECK_MSG(strstr(dom, "flowd dashboard") != NULL, "the page title is missing: is GET / the dashboard?");
        CHECK_MSG(strstr(dom, ">" MODEL "<") != NULL, "the model name does not appear in the DOM");
        CHECK_MSG(strstr(dom, ">succeeded<") != NULL, "no job shows \"succeeded\"");
        CHECK_MSG(n > 0, "data-samples-rendered is %ld; the page drew no samples", n);
        CHECK_MSG(strstr(dom, "title=\"alias prod → v1\"") != NULL, "the alias prod is not shown on v1");
        CHECK_MSG(strstr(dom, "title=\"drop alias prod\"") != NULL, "no drop button for the alias");
        CHECK_MSG(strstr(dom, ">alias…<") != NULL && strstr(dom, ">Upload version<") != NULL,
                  "no alias / upload controls");
        CHECK_MSG(strstr(dom, "needs a token") == NULL || strstr(dom, "class=\"banner show\"") == NULL,
                  "the page asks for a token on a server without tokens");
        if (test_failures) fprintf(stderr, "    DOM (first 3000 bytes):\n%.3000s\n", dom);
        free(dom);
    } else if (jid > 0) {
        test_fail_at(__FILE__, __LINE__, "chromium --dump-dom failed");
    }

    /* the screenshot, kept as a build artifact */
    char art[PATH_MAX], shot[PATH_MAX + 32], out[160];
    snprintf(art, sizeof art, "%s/artifacts", self_dir());
    mkdir(art, 0755);
    snprintf(shot, sizeof shot, "--screenshot=%s/dashboard.png", art);
    snprintf(out, sizeof out, "%s/shot.log", e.dir);
    if (jid > 0 && run_chromium(&e, chromium, url, shot, "--window-size=1280,900", out) == 0) {
        size_t len = 0;
        char *png = slurp(shot + strlen("--screenshot="), &len);
        CHECK_MSG(png && len > 10000 && !memcmp(png, "\x89PNG", 4), "no screenshot at %s", shot + 13);
        free(png);
    }

    stop_daemon(&e);
    if (test_failures) print_tail("daemon log", e.log);
    rm_tree(e.dir);
}

/* An image model (a dataset of 8x8 images declared with ?shape=1,8,8): the
 * page shows the server's PNG grid for it, fetched with the API's headers
 * and shown from a blob: URL in <img id="s-img">; data-samples-rendered is
 * set once the picture has loaded.  The screenshot is left in
 * <build>/artifacts/dashboard-images.png. */
TEST_T(dashboard_shows_image_model_picture, 300) {
    const char *chromium = find_chromium();
    if (!chromium) {
        printf("dashboard_shows_image_model_picture: skipped: chromium not installed\n");
        return;
    }
    env_t e = {0};
    if (dash_start(&e)) return;
    /* 256 images: a bright vertical bar at column k % 8 on a dark ground */
    size_t cap = 256 * 64 * 5 + 32, k = 0;
    char *rows = malloc(cap);
    REQUIRE(rows);
    k += (size_t)snprintf(rows, cap, "{\"rows\":[");
    for (int i = 0; i < 256; i++)
        for (int p = 0; p < 64; p++)
            k += (size_t)snprintf(rows + k, cap - k, "%s%d%s", p ? "" : i ? ",[" : "[",
                                  p % 8 == i % 8 ? 200 + i % 50 : 10 + (p * 7 + i) % 30, p == 63 ? "]" : ",");
    snprintf(rows + k, cap - k, "]}");
    long code;
    cJSON *r = http_json(e.port, "/v1/datasets?name=bars&shape=1,8,8", rows, &code);
    free(rows);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
    char job[512] = "";
    if (code == 201 && cJSON_IsString(id))
        snprintf(job, sizeof job,
                 "{\"model\":\"bars\",\"dataset\":{\"id\":\"%s\"},\"flow\":{\"preset\":\"realnvp\",\"depth\":4,"
                 "\"hidden\":[64]},\"train\":{\"epochs\":8,\"batch_size\":32,\"lr\":0.002,\"seed\":1},"
                 "\"preprocess\":{\"dequantize\":{\"levels\":256}}}",
                 id->valuestring);
    cJSON_Delete(r);
    CHECK_MSG(job[0], "upload: %ld", code);
    long jid = 0;
    if (job[0]) {
        r = http_json(e.port, "/v1/jobs", job, &code);
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(r, "id");
        jid = cJSON_IsString(j) ? atol(j->valuestring) : 0;
        cJSON_Delete(r);
        char path[64], state[32] = "";
        snprintf(path, sizeof path, "/v1/jobs/%ld", jid);
        for (double t0 = now_s(); jid > 0 && now_s() - t0 < 90; msleep(200)) {
            r = http_json(e.port, path, NULL, &code);
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(r, "state");
            snprintf(state, sizeof state, "%s", cJSON_IsString(st) ? st->valuestring : "?");
            cJSON_Delete(r);
            if (strcmp(state, "queued") && strcmp(state, "running")) break;
        }
        CHECK_MSG(!strcmp(state, "succeeded"), "job %ld: %s", jid, state);
        if (strcmp(state, "succeeded")) jid = 0;
    }
    char url[256], dom_path[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/#model=bars", e.port);
    snprintf(dom_path, sizeof dom_path, "%s/dom.html", e.dir);
    if (jid > 0 && run_chromium(&e, chromium, url, "--dump-dom", NULL, dom_path) == 0) {
        char *dom = slurp(dom_path, NULL);
        REQUIRE(dom != NULL);
        const char *img = strstr(dom, "id=\"s-img\"");
        const char *end = img ? strchr(img, '>') : NULL;
        char tag[512] = "";
        if (img && end) snprintf(tag, sizeof tag, "%.*s", (int)(end - img), img);
        CHECK_MSG(samples_rendered(dom) == 64, "data-samples-rendered is %ld", samples_rendered(dom));
        CHECK_MSG(strstr(tag, "src=\"blob:") && !strstr(tag, "hidden"), "the picture is not shown: <img %s>", tag);
        CHECK_MSG(strstr(dom, "1×8×8 images"), "no caption for the picture");
        if (test_failures) fprintf(stderr, "    DOM (first 3000 bytes):\n%.3000s\n", dom);
        free(dom);
    } else if (jid > 0) {
        test_fail_at(__FILE__, __LINE__, "chromium --dump-dom failed");
    }
    char art[PATH_MAX], shot[PATH_MAX + 64], out[160];
    snprintf(art, sizeof art, "%s/artifacts", self_dir());
    mkdir(art, 0755);
    snprintf(shot, sizeof shot, "--screenshot=%s/dashboard-images.png", art);
    snprintf(out, sizeof out, "%s/shot.log", e.dir);
    if (jid > 0) run_chromium(&e, chromium, url, shot, "--window-size=1280,900", out);
    stop_daemon(&e);
    if (test_failures) print_tail("daemon log", e.log);
    rm_tree(e.dir);
}

/* A running job: the page follows it over the event stream, read with
 * fetch (the way that also carries a token), and shows "live · stream"
 * with the points it has received. */
TEST_T(dashboard_streams_a_running_job, 300) {
    const char *chromium = find_chromium();
    if (!chromium) {
        printf("dashboard_streams_a_running_job: skipped: chromium not installed (apt-get install -y chromium)\n");
        return;
    }
    env_t e = {0};
    if (dash_start(&e)) return;
    long code = 0;
    cJSON *r = http_json(e.port, "/v1/jobs",
                         "{\"model\":\"live\",\"dataset\":{\"builtin\":\"moons\",\"n\":4096,\"seed\":1},"
                         "\"flow\":{\"preset\":\"realnvp\",\"depth\":2,\"hidden\":[8]},"
                         "\"train\":{\"epochs\":100000,\"batch_size\":64,\"log_every\":1}}",
                         &code);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(r, "id");
    long jid = cJSON_IsString(id) ? atol(id->valuestring) : 0;
    cJSON_Delete(r);
    REQUIRE(code == 202 && jid > 0);
    char path[96], url[256], dom_path[160];
    snprintf(path, sizeof path, "/v1/jobs/%ld/metrics?limit=1", jid);
    int have = 0;
    for (double t0 = now_s(); now_s() - t0 < 30 && !have; msleep(100)) {
        r = http_json(e.port, path, NULL, &code);
        have = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "metrics")) > 0;
        cJSON_Delete(r);
    }
    CHECK_MSG(have, "the job logged nothing in 30 s");
    snprintf(url, sizeof url, "http://127.0.0.1:%d/#job=%ld", e.port, jid);
    snprintf(dom_path, sizeof dom_path, "%s/dom.html", e.dir);
    if (have && run_chromium(&e, chromium, url, "--dump-dom", NULL, dom_path) == 0) {
        char *dom = slurp(dom_path, NULL);
        REQUIRE(dom != NULL);
        const char *pts = strstr(dom, " logged points");
        long n = 0;
        if (pts) {
            const char *q = pts;
            while (q > dom && q[-1] >= '0' && q[-1] <= '9') q--;
            n = atol(q);
        }
        CHECK_MSG(strstr(dom, "live · stream") != NULL, "the running job is not followed over the stream");
        CHECK_MSG(n > 0, "no logged points shown");
        if (test_failures) fprintf(stderr, "    DOM (first 3000 bytes):\n%.3000s\n", dom);
        free(dom);
    } else if (have) {
        test_fail_at(__FILE__, __LINE__, "chromium --dump-dom failed");
    }
    snprintf(path, sizeof path, "/v1/jobs/%ld/cancel", jid);
    cJSON_Delete(http_json(e.port, path, "", &code));
    stop_daemon(&e);
    if (test_failures) print_tail("daemon log", e.log);
    rm_tree(e.dir);
}
