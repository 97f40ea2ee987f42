/* http.c: the client's HTTP layer.  One libcurl easy handle is reused for
 * every request so that a stream of requests (score's chunks, job polling)
 * keeps one connection alive. */
#include "flowctl.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static CURL *handle;

typedef struct {
    char *p;
    size_t len, cap;
} buf;

static size_t on_body(char *data, size_t sz, size_t nm, void *ud) {
    buf *b = ud;
    size_t n = sz * nm;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return n;
}

static size_t on_header(char *data, size_t sz, size_t nm, void *ud) {
    fc_resp *r = ud;
    size_t n = sz * nm;
    if (n > 13 && !strncasecmp(data, "Content-Type:", 13)) {
        const char *v = data + 13;
        while (*v == ' ') v++;
        size_t k = n - (size_t)(v - data);
        while (k && (v[k - 1] == '\r' || v[k - 1] == '\n')) k--;
        if (k >= sizeof r->ctype) k = sizeof r->ctype - 1;
        memcpy(r->ctype, v, k);
        r->ctype[k] = 0;
    }
    return n;
}

static size_t on_upload(char *dst, size_t sz, size_t nm, void *ud) {
    return fread(dst, 1, sz * nm, (FILE *)ud);
}

/* the upload's progress bar on a terminal (stderr): percent, MB, MB/s */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)ud, (void)dltotal, (void)dlnow;
    static double t0, last;
    static int finished;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = ts.tv_sec + ts.tv_nsec * 1e-9;
    if (ulnow == 0) t0 = now, finished = 0;
    if (ultotal <= 0 || finished || (now - last < 0.1 && ulnow < ultotal)) return 0;
    finished = ulnow >= ultotal;
    last = now;
    int w = 30, fill = (int)((double)ulnow / (double)ultotal * w);
    char bar[64];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    double mb = (double)ulnow / 1e6, rate = now > t0 ? mb / (now - t0) : 0;
    fprintf(stderr, "\rupload [%s] %3.0f%%  %.1f / %.1f MB  %.1f MB/s%s", bar, 100.0 * (double)ulnow / (double)ultotal,
            mb, (double)ultotal / 1e6, rate, ulnow >= ultotal ? "\n" : "");
    return 0;
}

int fc_http_raw(const fc_req *q, fc_resp *r) {
    memset(r, 0, sizeof *r);
    if (!handle && !(handle = curl_easy_init())) {
        snprintf(r->err, sizeof r->err, "curl_easy_init failed");
        return FC_CONN;
    }
    CURL *c = handle;
    curl_easy_reset(c);
    size_t ul = strlen(fc.url), pl = strlen(q->path);
    while (ul && fc.url[ul - 1] == '/') ul--;
    char *url = malloc(ul + pl + 1);
    if (!url) return FC_CONN;
    memcpy(url, fc.url, ul);
    memcpy(url + ul, q->path, pl + 1);
    struct curl_slist *h = NULL;
    char line[512];
    if (fc.token && *fc.token) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", fc.token);
        h = curl_slist_append(h, line);
    }
    if (q->ctype) {
        snprintf(line, sizeof line, "Content-Type: %s", q->ctype);
        h = curl_slist_append(h, line);
    }
    snprintf(line, sizeof line, "Accept: %s", q->accept ? q->accept : "application/json");
    h = curl_slist_append(h, line);
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip */
    buf b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "flowctl/1");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)((q->timeout_s > 0 ? q->timeout_s : 300) * 1000));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    const char *method = q->method ? q->method : (q->body || q->upload) ? "POST" : "GET";
    if (q->upload && isatty(STDERR_FILENO) && !fc.json && q->len > (1 << 20)) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, NULL);
    }
    if (q->upload) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_upload);
        curl_easy_setopt(c, CURLOPT_READDATA, q->upload);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->len);
    } else if (q->body || !strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body ? (const char *)q->body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(q->body ? q->len : 0));
    }
    if (strcmp(method, "GET") && strcmp(method, "POST")) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    free(url);
    if (rc != CURLE_OK) {
        snprintf(r->err, sizeof r->err, "%s", curl_easy_strerror(rc));
        free(b.p);
        return FC_CONN;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    r->body = b.p ? b.p : calloc(1, 1);
    r->len = b.len;
    if (!strncasecmp(r->ctype, "application/json", 16) && r->len) r->json = cJSON_ParseWithLength(r->body, r->len);
    return FC_OK;
}

void fc_print_json_error(long status, const char *code, const char *message, cJSON *details) {
    if (!fc.json) {
        cJSON_Delete(details);
        return;
    }
    cJSON *o = cJSON_CreateObject(), *e;
    cJSON_AddNumberToObject(o, "status", (double)status);
    e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddItemToObject(e, "details", details ? details : cJSON_CreateObject());
    char *s = cJSON_PrintUnformatted(o);
    if (s) printf("%s\n", s);
    fflush(stdout);
    free(s);
    cJSON_Delete(o);
}

void fc_print_api_error(const fc_resp *r) {
    const cJSON *e = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "error") : NULL;
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
    if (fc.json) {
        char http[32], body[320];
        snprintf(http, sizeof http, "http_%ld", r->status);
        snprintf(body, sizeof body, "%.300s", r->body ? r->body : "");
        fc_print_json_error(r->status, cJSON_IsString(code) ? code->valuestring : http,
                            cJSON_IsString(msg) ? msg->valuestring : cJSON_IsString(e) ? e->valuestring : body,
                            cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(e, "details"), 1));
    }
    if (cJSON_IsString(code)) {
        fprintf(stderr, "flowctl: HTTP %ld %s: %s\n", r->status, code->valuestring,
                cJSON_IsString(msg) ? msg->valuestring : "");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "details");
        if (d && d->child) {
            char *s = cJSON_PrintUnformatted(d);
            if (s) fprintf(stderr, "flowctl:   details: %s\n", s);
            free(s);
        }
    } else {
        int n = r->len > 300 ? 300 : (int)r->len;
        fprintf(stderr, "flowctl: HTTP %ld%s%.*s\n", r->status, n ? ": " : "", n, r->body ? r->body : "");
    }
}

int fc_http(const fc_req *q, fc_resp *r) {
    if (fc_http_raw(q, r)) {
        fprintf(stderr, "flowctl: cannot reach %s: %s\n", fc.url, r->err);
        char msg[400];
        snprintf(msg, sizeof msg, "cannot reach %s: %s", fc.url, r->err);
        fc_print_json_error(0, "unavailable", msg, NULL);
        return FC_CONN;
    }
    if (r->status >= 200 && r->status < 300) return FC_OK;
    fc_print_api_error(r);
    return FC_API;
}

void fc_resp_free(fc_resp *r) {
    free(r->body);
    cJSON_Delete(r->json);
    r->body = NULL;
    r->json = NULL;
}

int fc_get(const char *path, fc_resp *r) {
    fc_req q = {.path = path};
    return fc_http(&q, r);
}

int fc_post_json(const char *path, const cJSON *body, fc_resp *r) {
    char *s = body ? cJSON_PrintUnformatted(body) : NULL;
    fc_req q = {.method = "POST", .path = path, .ctype = "application/json", .body = s ? s : "{}",
                .len = s ? strlen(s) : 2};
    int rc = fc_http(&q, r);
    free(s);
    return rc;
}

const char *fc_esc(const char *s) {
    static char bufs[4][512];
    static int k;
    char *o = bufs[k++ & 3];
    size_t n = 0;
    for (; *s && n + 4 < sizeof bufs[0]; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || strchr("-._~", ch))
            o[n++] = (char)ch;
        else
            n += (size_t)snprintf(o + n, 4, "%%%02X", ch);
    }
    o[n] = 0;
    return o;
}
