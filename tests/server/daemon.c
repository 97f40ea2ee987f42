/* daemon.c: start/stop the real flowd binary and talk to it over HTTP
 * (see daemon.h). */
#include "daemon.h"

#include "../test.h"

#include "../../core/model.h"
#include "../../core/nf.h"

#include <math.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

double dmn_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void dmn_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

const char *dmn_bin(void) {
    static char path[PATH_MAX + 16];
    const char *e = getenv("FLOWD_BIN");
    if (e && *e) return e;
    if (!path[0]) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = 0;
            char *slash = strrchr(self, '/');
            if (slash) *slash = 0;
            snprintf(path, sizeof path, "%s/flowd", self);
        }
        if (!path[0] || access(path, X_OK)) snprintf(path, sizeof path, "build/rel/flowd");
    }
    return path;
}

/* ---- cleanup on the runner's timeout ---------------------------------------- */
static dmn *live[8];

static void rm_dir(const char *dir) {
    DIR *dd = opendir(dir);
    if (dd) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(dd))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(dd);
    }
    rmdir(dir);
}

static void on_alarm(int sig) {
    for (int i = 0; i < 8; i++) {
        dmn *d = live[i];
        if (!d) continue;
        if (d->pid > 0) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
        }
        rm_dir(d->dir);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

int dmn_init(dmn *d) {
    static int once;
    memset(d, 0, sizeof *d);
    if (!once) {
        once = 1;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        signal(SIGALRM, on_alarm);
        signal(SIGPIPE, SIG_IGN);
    }
    snprintf(d->dir, sizeof d->dir, "/tmp/flowd_http_XXXXXX");
    if (!mkdtemp(d->dir)) return -1;
    snprintf(d->db, sizeof d->db, "%s/flowd.db", d->dir);
    snprintf(d->log, sizeof d->log, "%s/flowd.log", d->dir);
    snprintf(d->portf, sizeof d->portf, "%s/port", d->dir);
    for (int i = 0; i < 8; i++)
        if (!live[i]) {
            live[i] = d;
            break;
        }
    return 0;
}

const char *dmn_path(dmn *d, const char *name) {
    static _Thread_local char bufs[4][256];
    static _Thread_local int k;
    char *b = bufs[k++ & 3];
    snprintf(b, 256, "%s/%s", d->dir, name);
    return b;
}

static void print_log_tail(dmn *d) {
    FILE *f = fopen(d->log, "r");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f), from = sz > 4000 ? sz - 4000 : 0;
    fseek(f, from, SEEK_SET);
    char buf[4001];
    size_t n = fread(buf, 1, 4000, f);
    buf[n] = 0;
    fclose(f);
    fprintf(stderr, "    --- daemon log (%s, last %zu bytes) ---\n%s    ---\n", d->log, n, buf);
}

/* child side of a fork: log redirect, environment (drop inherited FLOWD_*
 * settings but FLOWD_BIN, add env), die with the parent */
static void child_setup(dmn *d, const char *const *env, pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (d->rlimit_data > 0) {
        struct rlimit rl = {(rlim_t)d->rlimit_data, (rlim_t)d->rlimit_data};
        if (setrlimit(RLIMIT_DATA, &rl)) _exit(126);
    }
    int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    for (;;) {
        char name[128] = "";
        for (char **e = environ; *e; e++)
            if (!strncmp(*e, "FLOWD_", 6) && strncmp(*e, "FLOWD_BIN=", 10)) {
                const char *eq = strchr(*e, '=');
                snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - *e) : (int)strlen(*e), *e);
                break;
            }
        if (!name[0]) break;
        unsetenv(name);
    }
    for (const char *const *e = env; e && *e; e++) putenv((char *)*e);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
}

int dmn_start(dmn *d, const char *const *args, const char *const *env) {
    const char *argv[64];
    int k = 0;
    argv[k++] = dmn_bin();
    argv[k++] = "serve";
    argv[k++] = "--db";
    argv[k++] = d->db;
    argv[k++] = "--listen";
    argv[k++] = "127.0.0.1:0";
    argv[k++] = "--port-file";
    argv[k++] = d->portf;
    if (!d->log_requests) argv[k++] = "--quiet";
    for (const char *const *a = args; a && *a && k < 62; a++) argv[k++] = *a;
    argv[k] = NULL;
    unlink(d->portf);
    d->port = 0;
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        child_setup(d, env, parent);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    d->pid = pid;
    double t0 = dmn_now();
    while (dmn_now() - t0 < 15) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            d->pid = 0;
            fprintf(stderr, "    flowd exited at start (status %d)\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            print_log_tail(d);
            return -1;
        }
        FILE *f = fopen(d->portf, "r");
        if (f) {
            int p = 0;
            if (fscanf(f, "%d", &p) == 1 && p > 0) d->port = p;
            fclose(f);
            if (d->port) return 0;
        }
        dmn_sleep_ms(10);
    }
    fprintf(stderr, "    flowd did not write its port file in 15 s\n");
    dmn_kill9(d);
    print_log_tail(d);
    return -1;
}

static int wait_status(pid_t pid, double timeout_s, int *status) {
    double t0 = dmn_now();
    for (;;) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            return 0;
        }
        if (w < 0 && errno != EINTR) {
            *status = -1;
            return 0;
        }
        if (dmn_now() - t0 > timeout_s) return -1;
        dmn_sleep_ms(5);
    }
}

int dmn_stop(dmn *d) {
    if (d->pid <= 0) return -1;
    int st = -1;
    kill(d->pid, SIGTERM);
    if (wait_status(d->pid, 20, &st)) {
        fprintf(stderr, "    flowd did not stop within 20 s of SIGTERM; killing it\n");
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        st = 128 + SIGKILL;
    }
    d->pid = 0;
    return st;
}

void dmn_kill9(dmn *d) {
    if (d->pid <= 0) return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

void dmn_cleanup(dmn *d) {
    if (d->pid > 0) {
        int st = dmn_stop(d);
        if (st != 0) test_fail_at(__FILE__, __LINE__, "flowd exited with status %d after SIGTERM", st);
    }
    if (test_failures) print_log_tail(d);
    rm_dir(d->dir);
    for (int i = 0; i < 8; i++)
        if (live[i] == d) live[i] = NULL;
}

int run_flowd(dmn *d, const char *const *args, const char *const *env, double timeout_s) {
    const char *argv[64];
    int k = 0;
    argv[k++] = dmn_bin();
    for (const char *const *a = args; a && *a && k < 62; a++) argv[k++] = *a;
    argv[k] = NULL;
    return dmn_run(d, argv, env, timeout_s);
}

int dmn_run(dmn *d, const char *const *argv, const char *const *env, double timeout_s) {
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        child_setup(d, env, parent);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = -1;
    if (wait_status(pid, timeout_s, &st)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 128 + SIGKILL;
    }
    return st;
}

/* ---- HTTP ------------------------------------------------------------------------ */
typedef struct { char *p; size_t n, cap; } buf_t;

static size_t buf_add(buf_t *b, const void *data, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
    return n;
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud) {
    return buf_add(ud, ptr, size * nmemb);
}

typedef struct { const char *p; size_t n, off; } rd_t;

/* the chunked upload reader: at most 1000 bytes a call, so several chunks */
static size_t on_read(char *ptr, size_t size, size_t nmemb, void *ud) {
    rd_t *r = ud;
    size_t n = size * nmemb, left = r->n - r->off;
    if (n > left) n = left;
    if (n > 1000) n = 1000;
    memcpy(ptr, r->p + r->off, n);
    r->off += n;
    return n;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return __atomic_load_n((volatile int *)ud, __ATOMIC_RELAXED) != 0; /* set by another thread */
}

int dmn_http(dmn *d, const hreq *q, hresp *out) {
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    if (!c) return -1;
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", d->port, q->path);
    buf_t body = {0}, hdr = {0};
    struct curl_slist *hl = NULL;
    char line[1024];
    const char *tok = q->token ? q->token : d->token;
    if (tok && *tok) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", tok);
        hl = curl_slist_append(hl, line);
    }
    if (q->ctype) {
        snprintf(line, sizeof line, "Content-Type: %s", q->ctype);
        hl = curl_slist_append(hl, line);
    }
    if (q->accept) {
        snprintf(line, sizeof line, "Accept: %s", q->accept);
        hl = curl_slist_append(hl, line);
    }
    hl = curl_slist_append(hl, "Expect:");
    for (const char *const *h = q->headers; h && *h; h++) hl = curl_slist_append(hl, *h);
    rd_t rd = {q->body, q->len, 0};
    int send_body = q->has_body || q->body;
    const char *method = q->method ? q->method : send_body ? "POST" : "GET";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)((q->timeout_s > 0 ? q->timeout_s : 30) * 1000));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hdr);
    if (q->abort_flag) {
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)q->abort_flag);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }
    if (send_body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        if (q->chunked) {
            hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
            curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
            curl_easy_setopt(c, CURLOPT_READDATA, &rd);
        } else {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body ? (const char *)q->body : "");
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->len);
        }
        if (strcmp(method, "POST")) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET")) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    else if (!q->quiet) fprintf(stderr, "    curl %s %s: %s\n", method, q->path, curl_easy_strerror(rc));
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    if (!body.p) buf_add(&body, "", 0);
    if (!hdr.p) buf_add(&hdr, "", 0);
    out->body = body.p ? body.p : calloc(1, 1);
    out->len = body.n;
    out->headers = hdr.p ? hdr.p : calloc(1, 1);
    if (out->len && (out->body[0] == '{' || out->body[0] == '['))
        out->json = cJSON_ParseWithLength(out->body, out->len);
    return rc == CURLE_OK ? 0 : -1;
}

void hresp_free(hresp *r) {
    free(r->body);
    free(r->headers);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

const char *hresp_header(const hresp *r, const char *name, char *buf, size_t n) {
    const char *found = NULL;
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strstr(p, "\n");
        if (!strncasecmp(p, name, nl) && p[nl] == ':') found = p + nl + 1;
        if (!eol) break;
        p = eol + 1;
    }
    if (!found) return NULL;
    while (*found == ' ') found++;
    size_t k = 0;
    while (found[k] && found[k] != '\r' && found[k] != '\n' && k + 1 < n) k++;
    memcpy(buf, found, k);
    buf[k] = 0;
    return buf;
}

int http_get(dmn *d, const char *path, hresp *out) {
    hreq q = {.path = path};
    return dmn_http(d, &q, out);
}

int http_post_json(dmn *d, const char *path, const char *json, hresp *out) {
    hreq q = {.method = "POST", .path = path, .ctype = "application/json", .body = json,
              .len = strlen(json), .has_body = 1};
    return dmn_http(d, &q, out);
}

int dmn_healthy(dmn *d) {
    hresp r;
    hreq q = {.path = "/healthz", .token = ""};
    dmn_http(d, &q, &r);
    const cJSON *s = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "status") : NULL;
    int ok = r.status == 200 && cJSON_IsString(s) && !strcmp(s->valuestring, "ok");
    hresp_free(&r);
    return ok;
}

const char *hresp_error_code(const hresp *r) {
    const cJSON *e = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "error") : NULL;
    const cJSON *c = e ? cJSON_GetObjectItemCaseSensitive(e, "code") : NULL;
    return cJSON_IsString(c) ? c->valuestring : "";
}

char *rows_body(size_t min_bytes, size_t *len) {
    char *b = malloc(min_bytes + 64);
    if (!b) return NULL;
    size_t k = (size_t)sprintf(b, "{\"inputs\":[");
    while (k < min_bytes) k += (size_t)sprintf(b + k, "[0.5,0.25],");
    k += (size_t)sprintf(b + k - 1, "]}") - 1; /* over the last comma */
    *len = k;
    return b;
}

/* ---- jobs ------------------------------------------------------------------------------ */
long long submit_job(dmn *d, const char *json) {
    hresp r;
    http_post_json(d, "/v1/jobs", json, &r);
    const cJSON *id = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "id") : NULL;
    long long v = r.status == 202 && cJSON_IsString(id) ? atoll(id->valuestring) : 0;
    if (!v) fprintf(stderr, "    POST /v1/jobs: %ld %s\n", r.status, r.body);
    hresp_free(&r);
    return v;
}

cJSON *get_job(dmn *d, long long id) {
    char path[64];
    snprintf(path, sizeof path, "/v1/jobs/%lld", id);
    hresp r;
    http_get(d, path, &r);
    cJSON *j = NULL;
    if (r.status == 200 && r.json) {
        j = r.json;
        r.json = NULL;
    }
    hresp_free(&r);
    return j;
}

int wait_job(dmn *d, long long id, double timeout_s, char *state, size_t n) {
    double t0 = dmn_now();
    snprintf(state, n, "?");
    while (dmn_now() - t0 < timeout_s) {
        cJSON *j = get_job(d, id);
        const cJSON *s = j ? cJSON_GetObjectItemCaseSensitive(j, "state") : NULL;
        if (cJSON_IsString(s)) snprintf(state, n, "%s", s->valuestring);
        int done = cJSON_IsString(s) && strcmp(s->valuestring, "queued") && strcmp(s->valuestring, "running");
        if (done && !strcmp(s->valuestring, "failed")) {
            char *t = cJSON_PrintUnformatted(j);
            fprintf(stderr, "    job %lld: %s\n", id, t ? t : "");
            free(t);
        }
        cJSON_Delete(j);
        if (done) return 0;
        dmn_sleep_ms(50);
    }
    fprintf(stderr, "    job %lld still %s after %.0f s\n", id, state, timeout_s);
    return -1;
}

/* ---- models ------------------------------------------------------------------ */
int dmn_make_model(dmn *d, const char *name, int C, struct nf_model **out) {
    char spec[160], err[300] = "";
    snprintf(spec, sizeof spec, "{\"dim\":2,\"context_dim\":%d,\"preset\":\"realnvp\",\"depth\":3,\"hidden\":[8]}", C);
    nf_flow *f = NULL;
    if (nf_flow_create(spec, &f, err, sizeof err)) return fprintf(stderr, "    %s\n", err), -1;
    nf_real *p = nf_flow_params(f);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) p[i] = (nf_real)(0.25 * cos(1.3 * (double)i - C));
    void *buf = NULL;
    size_t len = 0;
    int rc = nf_model_save(f, NULL, NULL, NULL, &buf, &len);
    nf_flow_free(f);
    const char *file = dmn_path(d, name);
    if (!rc) rc = nf_file_write(file, buf, len);
    if (!rc && out) rc = nf_model_load(buf, len, out, err, sizeof err);
    free(buf);
    const char *im[] = {"import", file, "--name", name, "--db", d->db, NULL};
    return rc ? -1 : run_flowd(d, im, NULL, 30) ? -1 : 0;
}

int dmn_log_has(dmn *d, const char *needle) {
    FILE *f = fopen(d->log, "r");
    if (!f) return 0;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (size_t k; buf && (k = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) {
            char *b = realloc(buf, 2 * cap + 1);
            if (!b) break;
            buf = b, cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return 0;
    buf[n] = 0;
    int found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

long dmn_peak_kib(dmn *d) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)d->pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kb;
}

int dmn_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}
