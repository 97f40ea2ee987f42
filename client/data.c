/* data.c: `flowctl score` (log_prob of every row of a CSV or .npy file,
 * streamed: the file is read a chunk of rows at a time and each chunk is
 * posted on its own, so files larger than memory work) and `flowctl sample`
 * (CSV or .npy from the server, or a PNG: a scatter plot for 2-D models, an
 * image grid for square-dimension models, drawn with common/picture.c). */
#include "flowctl.h"
#include "../common/picture.h"
#include "../core/npy.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>


/* ---- .npy headers (core/npy.c) ------------------------------------------------------------- */
/* Checks what flowctl streams: a dtype of kind f, i, u or b in 1 to 16
 * bytes, 1 to 8 dimensions, C order unless 1-D.  0 or -1 (err set). */
static int npy_check(const nf_npy_header *h, size_t *itemsize, char *err, size_t errlen) {
    const char *d = h->descr;
    *itemsize = strlen(d) >= 3 ? (size_t)atoi(d + 2) : 0;
    if (strlen(d) < 3 || !strchr("<>|=", d[0]) || !strchr("fiub", d[1])) {
        snprintf(err, errlen, "unsupported .npy dtype '%s'", d);
        return -1;
    }
    if (*itemsize < 1 || *itemsize > 16 || h->ndim > 8) {
        snprintf(err, errlen, "malformed .npy header");
        return -1;
    }
    if (h->ndim < 1) {
        snprintf(err, errlen, ".npy: a scalar is not a table of rows");
        return -1;
    }
    if (h->fortran && h->ndim > 1) {
        snprintf(err, errlen, ".npy: fortran_order arrays cannot be streamed by rows; save with C order");
        return -1;
    }
    return 0;
}

/* Header of a .npy file; leaves f at the data. */
static int npy_read_header(FILE *f, nf_npy_header *h, size_t *itemsize, char *err, size_t errlen) {
    unsigned char b[12];
    size_t n = fread(b, 1, sizeof b, f);
    int rc = nf_npy_parse_header(b, n, h, err, errlen);
    if (rc == NF_ECORRUPT && h->data_off > n && h->data_off <= (1 << 20) + 12) {
        unsigned char *all = malloc(h->data_off);
        if (!all) return -1;
        memcpy(all, b, n);
        size_t want = h->data_off - n;
        rc = fread(all + n, 1, want, f) == want ? nf_npy_parse_header(all, h->data_off, h, err, errlen)
                                                : NF_ECORRUPT;
        free(all);
    } else if (!rc && h->data_off < n) {
        rc = fseek(f, (long)h->data_off, SEEK_SET) ? NF_EIO : 0;
    }
    if (rc == NF_ECORRUPT) snprintf(err, errlen, "truncated .npy header");
    return rc || npy_check(h, itemsize, err, errlen) ? -1 : 0;
}

static const char *ext_of(const char *path) {
    const char *d = path ? strrchr(path, '.') : NULL;
    return d && !strchr(d, '/') ? d : "";
}

/* ---- score --------------------------------------------------------------------------------- */
static const char *help_score =
    "usage: flowctl score NAME FILE [-o out.csv] [--batch 10000] [--version V|ALIAS] [--samples K] [--json]\n"
    "\n"
    "Writes the log-density log p(x) of every row of FILE under model NAME, one\n"
    "value a line after a 'log_prob' header, to -o (default stdout).  FILE is CSV\n"
    "(an optional header line; '-' reads stdin) or .npy.  The file is streamed: rows\n"
    "are read and posted --batch at a time (text/csv, Accept text/csv), so files\n"
    "larger than memory work.  A row outside the model's support is written as nan.\n"
    "A dequantized model's rows get noise seeded by the row, so the scores do not\n"
    "depend on --batch; --samples K (1..64) asks for the importance-weighted\n"
    "estimate over K draws.  A conditional model reads rows of its training layout\n"
    "(data and context columns, or the label, together).\n"
    "With --json and -o, a summary {\"rows\",\"output\"} is printed.\n";

typedef struct scorer {
    char path[700];
    fc_outfile out;
    long long rows; /* written so far */
    int progress;   /* stderr is a terminal */
} scorer;

/* Posts one chunk and appends its k values to the output. */
static int score_chunk(scorer *s, const char *ctype, const char *body, size_t len, long long k) {
    fc_req q = {.method = "POST", .path = s->path, .ctype = ctype, .body = body, .len = len,
                .accept = "text/csv"};
    fc_resp r;
    int rc = fc_http(&q, &r);
    if (rc) {
        if (rc == FC_API)
            fprintf(stderr, "flowctl: (in the chunk of rows %lld..%lld)\n", s->rows + 1, s->rows + k);
        fc_resp_free(&r);
        return rc;
    }
    long long got = 0;
    const char *p = r.body, *end = r.body + r.len;
    int first = 1;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n && p[n - 1] == '\r') n--;
        if (first) {
            first = 0;
            if (n && !strchr("-+.0123456789", p[0])) { /* the "log_prob" header */
                p = nl ? nl + 1 : end;
                continue;
            }
        }
        if (n == 0) fputs("nan\n", s->out.f);
        else fprintf(s->out.f, "%.*s\n", (int)n, p);
        got++;
        p = nl ? nl + 1 : end;
    }
    fc_resp_free(&r);
    if (got != k) {
        fprintf(stderr, "flowctl: the server returned %lld values for %lld rows (rows %lld..%lld)\n", got, k,
                s->rows + 1, s->rows + k);
        return FC_API;
    }
    s->rows += k;
    if (s->progress) fprintf(stderr, "\rscored %lld rows", s->rows);
    return FC_OK;
}

/* 1 when every comma-separated cell of the line is a number */
static int numeric_line(const char *l, size_t n) {
    const char *p = l, *end = l + n;
    while (p <= end) {
        const char *c = memchr(p, ',', (size_t)(end - p));
        const char *ce = c ? c : end;
        while (p < ce && (*p == ' ' || *p == '\t')) p++;
        const char *q = ce;
        while (q > p && (q[-1] == ' ' || q[-1] == '\t' || q[-1] == '\r')) q--;
        if (q == p) return 0;
        char tmp[64];
        size_t k = (size_t)(q - p);
        if (k >= sizeof tmp) return 0;
        memcpy(tmp, p, k);
        tmp[k] = 0;
        char *e;
        strtod(tmp, &e);
        if (*e) return 0;
        if (!c) break;
        p = c + 1;
    }
    return 1;
}

static int score_csv(scorer *s, FILE *f, long batch) {
    char *line = NULL, *chunk = NULL;
    size_t lcap = 0, ccap = 0, clen = 0;
    long long k = 0, lineno = 0;
    ssize_t n;
    int rc = FC_OK, seen_first = 0;
    while ((n = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        char *l = line;
        if (lineno == 1 && n >= 3 && !memcmp(l, "\xEF\xBB\xBF", 3)) l += 3, n -= 3; /* BOM */
        while (n && (l[n - 1] == '\n' || l[n - 1] == '\r')) n--;
        size_t i = 0;
        while (i < (size_t)n && (l[i] == ' ' || l[i] == '\t')) i++;
        if (i == (size_t)n) continue; /* blank */
        if (!seen_first) {
            seen_first = 1;
            if (!numeric_line(l, (size_t)n)) continue; /* header */
        }
        if (clen + (size_t)n + 2 > ccap) {
            size_t cap = ccap ? ccap : 1 << 20;
            while (cap < clen + (size_t)n + 2) cap *= 2;
            char *c = realloc(chunk, cap);
            if (!c) {
                fprintf(stderr, "flowctl: out of memory\n");
                rc = FC_USAGE;
                break;
            }
            chunk = c;
            ccap = cap;
        }
        memcpy(chunk + clen, l, (size_t)n);
        clen += (size_t)n;
        chunk[clen++] = '\n';
        if (++k == batch) {
            if ((rc = score_chunk(s, "text/csv", chunk, clen, k))) break;
            clen = 0;
            k = 0;
        }
    }
    if (!rc && ferror(f)) {
        fprintf(stderr, "flowctl: read error: %s\n", strerror(errno));
        rc = FC_USAGE;
    }
    if (!rc && k) rc = score_chunk(s, "text/csv", chunk, clen, k);
    free(line);
    free(chunk);
    return rc;
}

static int score_npy(scorer *s, FILE *f, long batch) {
    nf_npy_header h;
    char err[200];
    size_t rowb;
    if (npy_read_header(f, &h, &rowb, err, sizeof err)) {
        fprintf(stderr, "flowctl: %s\n", err);
        return FC_USAGE;
    }
    for (int i = 1; i < h.ndim; i++) rowb *= (size_t)h.shape[i];
    if (!rowb) {
        fprintf(stderr, "flowctl: .npy rows are empty\n");
        return FC_USAGE;
    }
    char *chunk = malloc(256 + rowb * (size_t)batch);
    if (!chunk) {
        fprintf(stderr, "flowctl: out of memory (try a smaller --batch)\n");
        return FC_USAGE;
    }
    int rc = FC_OK;
    for (long long done = 0; done < h.shape[0];) {
        long long k = h.shape[0] - done < batch ? h.shape[0] - done : batch;
        int64_t shape[8];
        memcpy(shape, h.shape, sizeof shape);
        shape[0] = k;
        size_t H = nf_npy_write_header(chunk, h.descr, shape, h.ndim);
        if (fread(chunk + H, rowb, (size_t)k, f) != (size_t)k) {
            fprintf(stderr, "flowctl: the .npy file ends before its %lld rows\n", (long long)h.shape[0]);
            rc = FC_USAGE;
            break;
        }
        if ((rc = score_chunk(s, "application/x-npy", chunk, H + rowb * (size_t)k, k))) break;
        done += k;
    }
    free(chunk);
    return rc;
}

int fc_cmd_score(int argc, char **argv) {
    static const fc_optdef defs[] = {{"output", 'o', 1}, {"batch", 'b', 1}, {"version", 0, 1},
                                     {"samples", 'k', 1}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_score);
    if (rc) return rc;
    if (a.npos != 2) return fc_usage_error(help_score, "score takes NAME and FILE");
    long batch = 10000, iw = 0;
    const char *bs = fc_opt(&a, defs, "batch"), *vs = fc_opt(&a, defs, "version"), *out = fc_opt(&a, defs, "output"),
               *ks = fc_opt(&a, defs, "samples");
    if (bs && fc_parse_long("--batch", bs, 1, 10000000, &batch)) return FC_USAGE;
    if (vs && fc_check_version("--version", vs)) return FC_USAGE;
    if (ks && fc_parse_long("--samples", ks, 1, 64, &iw)) return FC_USAGE;
    const char *file = a.pos[1];
    FILE *f = strcmp(file, "-") ? fopen(file, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "flowctl: cannot read %s: %s\n", file, strerror(errno));
        return FC_USAGE;
    }
    int is_npy = 0;
    if (f != stdin) {
        unsigned char m[6] = {0};
        is_npy = fread(m, 1, 6, f) == 6 && !memcmp(m, "\x93NUMPY", 6);
        rewind(f);
    }
    scorer s;
    memset(&s, 0, sizeof s);
    int k = snprintf(s.path, sizeof s.path, "/v1/models/%s/log_prob", fc_esc(a.pos[0]));
    if (vs) k += snprintf(s.path + k, sizeof s.path - k, "?version=%s", fc_esc(vs));
    if (iw) snprintf(s.path + k, sizeof s.path - k, "%csamples=%ld", vs ? '&' : '?', iw);
    s.progress = isatty(STDERR_FILENO) && out;
    if ((rc = fc_out_open(&s.out, out))) {
        if (f != stdin) fclose(f);
        return rc;
    }
    fputs("log_prob\n", s.out.f);
    rc = is_npy ? score_npy(&s, f, batch) : score_csv(&s, f, batch);
    if (f != stdin) fclose(f);
    if (s.progress) fprintf(stderr, "\n");
    int wrc = fc_out_close(&s.out, rc == FC_OK);
    if (!rc) rc = wrc;
    if (!rc && fc.json && out) printf("{\"rows\":%lld,\"output\":\"%s\"}\n", s.rows, out);
    return rc;
}

/* ---- sample ---------------------------------------------------------------------------------- */
static const char *help_sample =
    "usage: flowctl sample NAME -n N [--temperature T] [--seed S] [--version V|ALIAS]\n"
    "                      [--label K | --classes K1,K2,...] [-o out.csv|out.npy|out.png] [--json]\n"
    "\n"
    "Draws N samples from model NAME.  The output format follows the -o extension:\n"
    ".csv (default, also for stdout), .npy (float32), or .png: for a model with an\n"
    "image shape [C,H,W] the server's picture (Accept: image/png: a grid of gray\n"
    "tiles for C = 1, RGB for C = 3, one gray tile per channel otherwise); for\n"
    "other models drawn here: a scatter plot for 2-D models, an image grid for\n"
    "models whose dimension is a square (784 = 28x28).\n"
    "--temperature scales the base distribution (default 1); --seed makes the draw\n"
    "reproducible.  --json without -o prints the server's JSON answer.\n"
    "A model trained on class labels: --label K draws N samples of class K;\n"
    "--classes K1,K2,... draws N of each (an image model's picture: one row per class).\n";

/* What a picture of version (a number, an alias, "latest"; NULL = the
 * model's default) of the model needs: whether it
 * has an image shape (then the server draws it), and the pixel range of
 * image grids drawn here (have_range: set from the model's preprocessing). */
typedef struct {
    int has_shape, have_range, floor_values;
    double lo, hi;
} model_picture;

static void model_picture_info(const char *name, const char *vspec, model_picture *mp) {
    char path[600];
    snprintf(path, sizeof path, "/v1/models/%s", fc_esc(name));
    fc_req q = {.path = path};
    fc_resp r;
    memset(mp, 0, sizeof *mp);
    if (fc_http_raw(&q, &r) == FC_OK && r.status == 200) {
        const cJSON *v, *pick = NULL;
        long version = fc_model_version(r.json, vspec);
        cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(r.json, "versions")) {
            const cJSON *vn = cJSON_GetObjectItemCaseSensitive(v, "version");
            if (!version || (cJSON_IsNumber(vn) && vn->valuedouble == version)) pick = v;
        }
        mp->has_shape = cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(pick, "shape"));
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(pick, "preprocess");
        const cJSON *dq = cJSON_GetObjectItemCaseSensitive(pp, "dequantize");
        const cJSON *lv = cJSON_GetObjectItemCaseSensitive(dq, "levels");
        if (cJSON_IsNumber(lv) && lv->valuedouble > 1) {
            mp->lo = 0, mp->hi = lv->valuedouble - 1, mp->floor_values = 1, mp->have_range = 1;
        } else if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(pp, "logit"))) {
            mp->lo = 0, mp->hi = 1, mp->floor_values = 0, mp->have_range = 1;
        }
    }
    fc_resp_free(&r);
}

/* the server's image/png answer, as is */
static int write_png_answer(const char *out, const fc_resp *r) {
    if (r->len < 8 || memcmp(r->body, "\x89PNG\r\n\x1a\n", 8)) {
        fprintf(stderr, "flowctl: unexpected sample answer (%s, not a PNG)\n", r->ctype[0] ? r->ctype : "no type");
        return FC_API;
    }
    fc_outfile o;
    int rc = fc_out_open(&o, out);
    if (rc) return rc;
    int ok = fwrite(r->body, 1, r->len, o.f) == r->len;
    return fc_out_close(&o, ok);
}

/* samples (.npy answer) drawn here: models without an image shape */
static int write_png(const model_picture *mp, const char *out, const fc_resp *r) {
    nf_npy_header h;
    char err[200] = "";
    if (nf_npy_parse_header(r->body, r->len, &h, err, sizeof err) || strcmp(h.descr, "<f4") ||
        h.ndim != 2 || r->len < h.data_off + (size_t)(h.shape[0] * h.shape[1]) * 4) {
        fprintf(stderr, "flowctl: unexpected sample answer (%s)\n", err);
        return FC_API;
    }
    int n = (int)h.shape[0], D = (int)h.shape[1];
    nf_real *x = malloc((size_t)n * D * sizeof *x);
    if (!x) return FC_USAGE;
    for (size_t i = 0; i < (size_t)n * D; i++) {
        float v;
        memcpy(&v, r->body + h.data_off + 4 * i, 4);
        x[i] = (nf_real)v;
    }
    int have = D != 2 && mp->have_range;
    int rc = fdpic_write_samples(out, x, n, D, NULL, have, mp->lo, mp->hi, mp->floor_values, 1, err, sizeof err);
    free(x);
    if (rc) {
        fprintf(stderr, "flowctl: %s\n", err);
        return FC_USAGE;
    }
    return FC_OK;
}

/* Writes the server's CSV; replaces a first line that is not a header of
 * one name per column ("x0,x1,...") so the file loads back as a table. */
static int write_csv(fc_outfile *o, const char *b, size_t len) {
    const char *nl1 = memchr(b, '\n', len);
    if (nl1) {
        size_t l1 = (size_t)(nl1 - b);
        const char *r2 = nl1 + 1, *nl2 = memchr(r2, '\n', len - l1 - 1);
        size_t l2 = nl2 ? (size_t)(nl2 - r2) : len - l1 - 1;
        int c1 = 1, c2 = 1;
        for (size_t i = 0; i < l1; i++) c1 += b[i] == ',';
        for (size_t i = 0; i < l2; i++) c2 += r2[i] == ',';
        if (l2 && !numeric_line(b, l1) && c1 != c2) {
            for (int j = 0; j < c2; j++) fprintf(o->f, "%sx%d", j ? "," : "", j);
            fputc('\n', o->f);
            b = r2;
            len -= l1 + 1;
        }
    }
    fwrite(b, 1, len, o->f);
    return FC_OK;
}

int fc_cmd_sample(int argc, char **argv) {
    static const fc_optdef defs[] = {{"n", 'n', 1},      {"temperature", 't', 1}, {"seed", 's', 1},
                                     {"version", 0, 1},  {"output", 'o', 1},      {"label", 'l', 1},
                                     {"classes", 0, 1},  {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_sample);
    if (rc) return rc;
    if (a.npos != 1) return fc_usage_error(help_sample, "sample takes one model NAME");
    const char *ns = fc_opt(&a, defs, "n"), *ts = fc_opt(&a, defs, "temperature"), *ss = fc_opt(&a, defs, "seed"),
               *vs = fc_opt(&a, defs, "version"), *out = fc_opt(&a, defs, "output");
    if (!ns) return fc_usage_error(help_sample, "-n N is required");
    long n, seed = 0;
    double T = 1;
    if (fc_parse_long("-n", ns, 1, 100000000, &n) || (ts && fc_parse_double("--temperature", ts, &T)) ||
        (ss && fc_parse_long("--seed", ss, 0, 0x7fffffffffffffffL, &seed)) ||
        (vs && fc_check_version("--version", vs)))
        return FC_USAGE;
    const char *ext = ext_of(out);
    int png = !strcasecmp(ext, ".png"), npy = !strcasecmp(ext, ".npy"), json_out = fc.json && !out;
    if (out && !png && !npy && strcasecmp(ext, ".csv") && strcmp(out, "-"))
        return fc_usage_error(help_sample, "-o: give a .csv, .npy or .png file");
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "n", (double)n);
    if (ts) cJSON_AddNumberToObject(body, "temperature", T);
    if (ss) cJSON_AddNumberToObject(body, "seed", (double)seed);
    if (vs) fc_add_version(body, vs);
    const char *ls = fc_opt(&a, defs, "label"), *cs = fc_opt(&a, defs, "classes");
    long label;
    if (ls && cs) {
        cJSON_Delete(body);
        return fc_usage_error(help_sample, "give --label or --classes, not both");
    }
    if (ls) {
        if (fc_parse_long("--label", ls, 0, 1023, &label)) {
            cJSON_Delete(body);
            return FC_USAGE;
        }
        cJSON_AddNumberToObject(body, "labels", (double)label);
    }
    if (cs) { /* "0,3,7": n samples of each, one picture row per class */
        cJSON *cl = cJSON_AddArrayToObject(body, "classes");
        char buf[64];
        for (const char *p = cs; *p;) {
            size_t l = strcspn(p, ",");
            snprintf(buf, sizeof buf, "%.*s", (int)(l < 63 ? l : 63), p);
            if (fc_parse_long("--classes", buf, 0, 1023, &label)) {
                cJSON_Delete(body);
                return FC_USAGE;
            }
            cJSON_AddItemToArray(cl, cJSON_CreateNumber((double)label));
            p += l + (p[l] == ',');
        }
    }
    char *bs = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    char path[600];
    snprintf(path, sizeof path, "/v1/models/%s/sample", fc_esc(a.pos[0]));
    model_picture mp = {0};
    if (png) model_picture_info(a.pos[0], vs, &mp);
    fc_req q = {.method = "POST", .path = path, .ctype = "application/json", .body = bs, .len = strlen(bs),
                .accept = json_out ? "application/json"
                          : png && mp.has_shape ? "image/png" /* an image model: the server draws it */
                          : (png || npy) ? "application/x-npy" : "text/csv"};
    fc_resp r;
    rc = fc_http(&q, &r);
    free(bs);
    if (rc) goto done;
    if (json_out) {
        fc_print_json(r.json);
    } else if (png) {
        rc = mp.has_shape ? write_png_answer(out, &r) : write_png(&mp, out, &r);
    } else {
        fc_outfile o;
        if (!(rc = fc_out_open(&o, out))) {
            if (npy) fwrite(r.body, 1, r.len, o.f);
            else write_csv(&o, r.body, r.len);
            rc = fc_out_close(&o, 1);
        }
    }
    if (!rc && fc.json && out) printf("{\"n\":%ld,\"output\":\"%s\"}\n", n, out);
done:
    fc_resp_free(&r);
    return rc;
}
