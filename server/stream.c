/* stream.c: large answers written as they are sent (stream.h). */
#include "stream.h"
#include "server.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARTS 16

enum { P_TEXT, P_REALS, P_INTS };

typedef struct {
    int kind;
    char *text;   /* P_TEXT: malloc'd */
    size_t tlen;
    void *v;      /* P_REALS (nf_real) / P_INTS (int), malloc'd */
    size_t n;     /* values */
    int D;        /* values a row (P_REALS); 0: a flat array */
} part;

struct fd_answer {
    int csv;          /* CSV: header, then rows; no JSON punctuation */
    int members;      /* JSON members so far (the next needs a comma) */
    int closed;       /* the tail is in */
    int broken;       /* an append failed: the answer must not be sent */
    part p[MAX_PARTS];
    int np;
    /* reading */
    int cur;          /* part being written */
    size_t at;        /* in it: text byte or value index */
    int opened;       /* its '[' is out */
    char pend[64];    /* a value formatted when buf had no room for it */
    size_t plen, poff;
};

static int add_text(fd_answer *a, char *text, size_t len) {
    if (!text || a->np >= MAX_PARTS) {
        free(text);
        a->broken = 1;
        return -1;
    }
    a->p[a->np++] = (part){.kind = P_TEXT, .text = text, .tlen = len};
    return 0;
}

static char *dup_text(const char *s, size_t *len) {
    *len = strlen(s);
    char *t = malloc(*len + 1);
    if (t) memcpy(t, s, *len + 1);
    return t;
}

/* the members of a printed object ("{...}"), or "" for "{}" */
static char *members_of(cJSON *o, size_t *len) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return NULL;
    size_t n = strlen(s);
    if (n < 2 || s[0] != '{' || s[n - 1] != '}') {
        free(s);
        return NULL;
    }
    memmove(s, s + 1, n - 2);
    s[n - 2] = 0;
    *len = n - 2;
    return s;
}

fd_answer *fd_answer_json(cJSON *head) {
    fd_answer *a = calloc(1, sizeof *a);
    size_t len = 0;
    char *m = members_of(head, &len);
    if (!a || !m) {
        free(a);
        free(m);
        return NULL;
    }
    char *t = malloc(len + 2);
    if (t) {
        t[0] = '{';
        memcpy(t + 1, m, len + 1);
    }
    free(m);
    a->members = len > 0;
    if (add_text(a, t, len + 1)) {
        fd_answer_free(a);
        return NULL;
    }
    return a;
}

fd_answer *fd_answer_csv(void) {
    fd_answer *a = calloc(1, sizeof *a);
    if (a) a->csv = 1;
    return a;
}

/* ,"key": before a JSON member */
static int add_key(fd_answer *a, const char *key) {
    size_t n = strlen(key);
    char *t = malloc(n + 5);
    if (!t) return add_text(a, NULL, 0);
    size_t k = 0;
    if (a->members++) t[k++] = ',';
    t[k++] = '"';
    memcpy(t + k, key, n);
    k += n;
    t[k++] = '"';
    t[k++] = ':';
    t[k] = 0;
    return add_text(a, t, k);
}

static int add_values(fd_answer *a, int kind, const char *key, void *v, size_t n, int D) {
    if (!a || a->broken || a->closed || (a->csv && (kind != P_REALS || D < 1 || a->np))) {
        free(v);
        if (a) a->broken = 1;
        return -1;
    }
    if (a->csv) { /* the header line */
        size_t cap = (size_t)D * 12 + 2, k = 0;
        char *h = malloc(cap);
        for (int j = 0; h && j < D; j++) k += (size_t)snprintf(h + k, cap - k, j ? ",x%d" : "x%d", j);
        if (h) h[k++] = '\n';
        if (add_text(a, h, k)) {
            free(v);
            return -1;
        }
    } else if (add_key(a, key)) {
        free(v);
        return -1;
    }
    if (a->np >= MAX_PARTS || (n && !v)) {
        free(v);
        a->broken = 1;
        return -1;
    }
    a->p[a->np++] = (part){.kind = kind, .v = v, .n = D > 0 ? n * (size_t)D : n, .D = D};
    return 0;
}

int fd_answer_ok(const fd_answer *a) { return a && !a->broken && (a->closed || a->csv); }

int fd_answer_reals(fd_answer *a, const char *key, nf_real *v, size_t n, int D) {
    return add_values(a, P_REALS, key, v, n, D);
}

int fd_answer_ints(fd_answer *a, const char *key, int *v, size_t n) {
    return add_values(a, P_INTS, key, v, n, 0);
}

/* o's members (taken; may be NULL), then with close the end of the object */
static int add_members(fd_answer *a, cJSON *o, int close) {
    if (!a || a->broken || a->closed) {
        cJSON_Delete(o);
        if (a) a->broken = 1;
        return -1;
    }
    a->closed = close;
    if (a->csv) {
        cJSON_Delete(o);
        return 0;
    }
    size_t len = 0;
    char *m = o ? members_of(o, &len) : dup_text("", &len);
    if (!m) return add_text(a, NULL, 0);
    char *t = malloc(len + 4);
    size_t k = 0;
    if (t) {
        if (len && a->members) t[k++] = ',';
        memcpy(t + k, m, len);
        k += len;
        if (close) {
            t[k++] = '}';
            t[k++] = '\n';
        }
        t[k] = 0;
    }
    free(m);
    if (len) a->members = 1;
    return add_text(a, t, k);
}

int fd_answer_members(fd_answer *a, cJSON *o) { return add_members(a, o, 0); }
int fd_answer_tail(fd_answer *a, cJSON *tail) { return add_members(a, tail, 1); }

/* one value of part p (index i) with the punctuation around it, into out
 * (at least 64 bytes); the bytes written */
static size_t put_value(const fd_answer *a, const part *p, size_t i, char *out) {
    size_t k = 0;
    int D = p->D > 0 ? p->D : 0;
    size_t col = D ? i % (size_t)D : 0;
    if (a->csv) {
        double x = ((const nf_real *)p->v)[i];
        if (isfinite(x)) k += (size_t)snprintf(out, 32, "%.9g", x);
        out[k++] = col + 1 == (size_t)D ? '\n' : ',';
        return k;
    }
    if (!D) {
        if (i) out[k++] = ',';
    } else if (col == 0) { /* a row begins */
        if (i) out[k++] = ',';
        out[k++] = '[';
    } else {
        out[k++] = ',';
    }
    if (p->kind == P_INTS) {
        k += (size_t)snprintf(out + k, 32, "%d", ((const int *)p->v)[i]);
    } else {
        double x = ((const nf_real *)p->v)[i];
        if (isfinite(x)) k += (size_t)snprintf(out + k, 32, "%.9g", x);
        else {
            memcpy(out + k, "null", 4);
            k += 4;
        }
    }
    if (D && col + 1 == (size_t)D) out[k++] = ']';
    return k;
}

ssize_t fd_answer_read(void *cls, char *buf, size_t max) {
    fd_answer *a = cls;
    size_t k = 0;
    /* the rest of a value cut at the end of the last buf */
    while (a->poff < a->plen && k < max) buf[k++] = a->pend[a->poff++];
    if (a->poff < a->plen) return (ssize_t)k;
    while (a->cur < a->np) {
        part *p = &a->p[a->cur];
        if (p->kind == P_TEXT) {
            size_t m = p->tlen - a->at < max - k ? p->tlen - a->at : max - k;
            memcpy(buf + k, p->text + a->at, m);
            k += m;
            a->at += m;
            if (a->at < p->tlen) break; /* buf is full */
        } else {
            if (!a->csv && !a->opened) {
                if (max - k < 1) break;
                buf[k++] = '[';
                a->opened = 1;
            }
            while (a->at < p->n && max - k >= 64) k += put_value(a, p, a->at++, buf + k);
            if (a->at < p->n) {
                if (k < max) { /* a value in what room is left: the rest next time */
                    a->plen = put_value(a, p, a->at++, a->pend);
                    a->poff = 0;
                    while (a->poff < a->plen && k < max) buf[k++] = a->pend[a->poff++];
                }
                break;
            }
            if (!a->csv) {
                if (max - k < 1 || a->poff < a->plen) break;
                buf[k++] = ']';
            }
        }
        a->cur++;
        a->at = 0;
        a->opened = 0;
    }
    if (!k && a->cur >= a->np) return FD_STREAM_END;
    return (ssize_t)k;
}

void fd_answer_free(void *cls) {
    fd_answer *a = cls;
    if (!a) return;
    for (int i = 0; i < a->np; i++) {
        free(a->p[i].text);
        free(a->p[i].v);
    }
    free(a);
}
