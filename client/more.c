/* more.c: flowctl's commands beyond the core set: version, delete,
 * datasets, wait, encode, decode, metrics (a job's loss curve as CSV), and
 * the --token-file option's reader. */
#include "flowctl.h"

#include "../common/version.h"
#include "../core/data.h"
#include "../core/npy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- --token-file ------------------------------------------------------------------------ */
/* The token in file path: the first line that is not blank or a '#'
 * comment; a line "SCOPE TOKEN" (the daemon's token-file format) gives its
 * last word.  NULL with a message on stderr when there is none. */
const char *fc_read_token_file(const char *path) {
    static char tok[512];
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "flowctl: --token-file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char line[600];
    const char *found = NULL;
    while (!found && fgets(line, sizeof line, f)) {
        char *s = line, *e;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '#' || *s == '\n' || *s == '\r' || !*s) continue;
        for (e = s + strlen(s); e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t');) *--e = 0;
        char *last = strrchr(s, ' ');
        if (!last) last = strrchr(s, '\t');
        snprintf(tok, sizeof tok, "%s", last ? last + 1 : s);
        found = tok;
    }
    fclose(f);
    if (!found) fprintf(stderr, "flowctl: --token-file %s: no token in it\n", path);
    return found;
}

/* ---- version ----------------------------------------------------------------------------------- */
static const char *help_version =
    "usage: flowctl version [--json]\n"
    "\n"
    "Prints this client's version and the server's (GET /v1/version: build,\n"
    "database schema, BLAS).  Without a server, the client's version and exit 3.\n"
    "'flowctl --version' prints the client's version only.\n";

int fc_cmd_version(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_version);
    if (rc) return rc;
    if (a.npos) return fc_usage_error(help_version, "version takes no arguments");
    fc_resp r;
    fc_req q = {.path = "/v1/version", .timeout_s = 10};
    int got = fc_http_raw(&q, &r) == FC_OK && r.status == 200 && r.json;
    if (fc.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "client", FLOWD_VERSION);
        if (got) cJSON_AddItemToObject(o, "server", cJSON_Duplicate(r.json, 1));
        else cJSON_AddNullToObject(o, "server");
        fc_print_json(o);
        cJSON_Delete(o);
    } else {
        printf("flowctl %s\n", FLOWD_VERSION);
        if (got)
            printf("server  flowd %s at %s (schema %s, %s)\n", fc_str(r.json, "version"), fc.url,
                   fc_str(r.json, "schema_version"), fc_str(r.json, "blas"));
    }
    if (!got) {
        rc = r.status ? FC_API : FC_CONN;
        if (r.status) fc_print_api_error(&r);
        else fprintf(stderr, "flowctl: cannot reach %s: %s\n", fc.url, r.err);
    }
    fc_resp_free(&r);
    return rc;
}

/* ---- delete ------------------------------------------------------------------------------------- */
static const char *help_delete =
    "usage: flowctl delete model NAME | dataset ID [--json]\n"
    "\n"
    "Deletes a model with all its versions, or a stored dataset (a write token).\n";

int fc_cmd_delete(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_delete);
    if (rc) return rc;
    if (a.npos != 2 || (strcmp(a.pos[0], "model") && strcmp(a.pos[0], "dataset")))
        return fc_usage_error(help_delete, "delete takes 'model NAME' or 'dataset ID'");
    char path[600];
    snprintf(path, sizeof path, "/v1/%ss/%s", a.pos[0], fc_esc(a.pos[1]));
    fc_req q = {.method = "DELETE", .path = path};
    fc_resp r;
    if (!(rc = fc_http(&q, &r))) {
        if (fc.json) printf("{\"deleted\":\"%s\",\"%s\":\"%s\"}\n", a.pos[0], !strcmp(a.pos[0], "model") ? "name" : "id",
                            a.pos[1]);
        else printf("deleted %s %s\n", a.pos[0], a.pos[1]);
    }
    fc_resp_free(&r);
    return rc;
}

/* ---- datasets ----------------------------------------------------------------------------------- */
static const char *help_datasets =
    "usage: flowctl datasets [--json]\n"
    "\n"
    "Lists the stored datasets: id, name, rows, dimension, image shape, creation time.\n";

int fc_cmd_datasets(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_datasets);
    if (rc) return rc;
    if (a.npos) return fc_usage_error(help_datasets, "datasets takes no arguments");
    fc_resp r;
    if ((rc = fc_get("/v1/datasets", &r))) goto out;
    if (fc.json) {
        fc_print_json(r.json);
        goto out;
    }
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(r.json, "datasets"), *d;
    if (!cJSON_GetArraySize(ds)) {
        printf("no datasets\n");
        goto out;
    }
    fc_table t;
    fc_table_init(&t, 6);
    fc_table_add(&t, (const char *[]){"ID", "NAME", "ROWS", "DIM", "SHAPE", "CREATED"});
    cJSON_ArrayForEach(d, ds) {
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(d, "shape");
        char shp[64] = "-";
        if (cJSON_GetArraySize(sh) == 3)
            snprintf(shp, sizeof shp, "%dx%dx%d", cJSON_GetArrayItem(sh, 0)->valueint,
                     cJSON_GetArrayItem(sh, 1)->valueint, cJSON_GetArrayItem(sh, 2)->valueint);
        fc_table_add(&t, (const char *[]){fc_str(d, "id"), fc_str(d, "name"), fc_str(d, "rows"), fc_str(d, "dim"), shp,
                                          fc_time(d, "created_at")});
    }
    fc_table_print(&t, stdout);
    fc_table_free(&t);
out:
    fc_resp_free(&r);
    return rc;
}

/* ---- wait ---------------------------------------------------------------------------------------- */
static const char *help_wait =
    "usage: flowctl wait ID [--json]\n"
    "\n"
    "Follows a job until it ends, as 'train --wait' does (a progress bar on a\n"
    "terminal); exit 0 when it succeeded, 4 failed, 5 cancelled.\n";

int fc_cmd_wait(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_wait);
    if (rc) return rc;
    if (a.npos != 1 || !*a.pos[0] || strspn(a.pos[0], "0123456789") != strlen(a.pos[0]) || strlen(a.pos[0]) > 18)
        return fc_usage_error(help_wait, "wait takes one numeric job ID");
    return fc_follow_job(a.pos[0]);
}

/* ---- encode / decode --------------------------------------------------------------------------- */
static const char *help_encode =
    "usage: flowctl encode NAME FILE [-o out.csv|out.npy] [--version V] [--json]\n"
    "       flowctl decode NAME FILE [-o out.csv|out.npy] [--version V] [--json]\n"
    "\n"
    "Maps the rows of a CSV or .npy file (FILE, or '-' for CSV on stdin) through\n"
    "the model: encode x to z, decode z to x, exactly, with log|det| per row.  A\n"
    "conditional model's rows carry the context in their last columns.  Output:\n"
    "CSV (header z0,...,log_det or x0,...,log_det; stdout by default), or with\n"
    "-o FILE.npy one float32 array (n, D+1): the D columns, then log_det.\n";

static int code_cmd(int argc, char **argv, int enc) {
    static const fc_optdef defs[] = {{"output", 'o', 1}, {"version", 0, 1}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_encode);
    if (rc) return rc;
    if (a.npos != 2) return fc_usage_error(help_encode, "%s takes NAME and FILE", enc ? "encode" : "decode");
    const char *out = fc_opt(&a, defs, "output"), *vs = fc_opt(&a, defs, "version");
    long version = 0;
    if (vs && fc_parse_long("--version", vs, 1, 2147483647L, &version)) return FC_USAGE;
    /* the input, whole (encode/decode answers are as large as their input) */
    FILE *f = strcmp(a.pos[1], "-") ? fopen(a.pos[1], "rb") : stdin;
    if (!f) {
        fprintf(stderr, "flowctl: cannot read %s: %s\n", a.pos[1], strerror(errno));
        return FC_USAGE;
    }
    size_t cap = 1 << 16, n = 0, k;
    char *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += k) == cap) {
            char *b2 = realloc(buf, cap *= 2);
            if (!b2) free(buf);
            buf = b2;
        }
    if (f != stdin) fclose(f);
    if (!buf) {
        fprintf(stderr, "flowctl: out of memory reading %s\n", a.pos[1]);
        return FC_USAGE;
    }
    int npy = n >= 6 && !memcmp(buf, "\x93NUMPY", 6);
    char path[700];
    int pk = snprintf(path, sizeof path, "/v1/models/%s/%s", fc_esc(a.pos[0]), enc ? "encode" : "decode");
    if (version) snprintf(path + pk, sizeof path - pk, "?version=%ld", version);
    fc_req q = {.method = "POST", .path = path, .ctype = npy ? "application/x-npy" : "text/csv", .body = buf,
                .len = n, .accept = "application/x-npy", .timeout_s = 3600};
    fc_resp r;
    rc = fc_http(&q, &r);
    free(buf);
    if (rc) goto done;
    const char *ext = out ? strrchr(out, '.') : NULL;
    fc_outfile o;
    if ((rc = fc_out_open(&o, out))) goto done;
    if (ext && !strcasecmp(ext, ".npy")) {
        fwrite(r.body, 1, r.len, o.f);
        rc = fc_out_close(&o, 1);
        goto done;
    }
    nf_data d = {0};
    char err[300] = "";
    if (nf_data_load_npy(r.body, r.len, &d, err, sizeof err) || d.d < 2) {
        fprintf(stderr, "flowctl: the server's answer is not an (n, D+1) array: %s\n", err);
        fc_out_close(&o, 0);
        nf_data_free(&d);
        rc = FC_API;
        goto done;
    }
    size_t hcap = (size_t)d.d * 16 + 16, hk = 0;
    char *header = malloc(hcap);
    for (int j = 0; header && j < d.d - 1; j++) hk += (size_t)snprintf(header + hk, hcap - hk, "%s%d,", enc ? "z" : "x", j);
    if (header) snprintf(header + hk, hcap - hk, "log_det");
    size_t len = 0;
    char *csv = header ? nf_data_csv(d.x, (int64_t)d.n, d.d, header, &len) : NULL;
    if (csv) fwrite(csv, 1, len, o.f);
    rc = fc_out_close(&o, csv != NULL);
    free(csv);
    free(header);
    nf_data_free(&d);
done:
    fc_resp_free(&r);
    return rc;
}

int fc_cmd_encode(int argc, char **argv) { return code_cmd(argc, argv, 1); }
int fc_cmd_decode(int argc, char **argv) { return code_cmd(argc, argv, 0); }

/* ---- metrics --------------------------------------------------------------------------------------- */
static const char *help_metrics =
    "usage: flowctl metrics ID [-o curve.csv] [--json]\n"
    "\n"
    "Exports a job's logged metrics (its loss curve), every page: CSV with the\n"
    "header step,epoch,kind,train_loss,val_loss,lr,grad_norm,time\n"
    "(stdout by default; empty cells where a row has no value), or with --json\n"
    "one JSON array of the rows.\n";

int fc_cmd_metrics(int argc, char **argv) {
    static const fc_optdef defs[] = {{"output", 'o', 1}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_metrics);
    if (rc) return rc;
    if (a.npos != 1 || !*a.pos[0] || strspn(a.pos[0], "0123456789") != strlen(a.pos[0]) || strlen(a.pos[0]) > 18)
        return fc_usage_error(help_metrics, "metrics takes one numeric job ID");
    static const char *const cols[] = {"step", "epoch", "kind", "train_loss", "val_loss", "lr", "grad_norm", "time"};
    enum { NCOL = sizeof cols / sizeof cols[0] };
    cJSON *all = cJSON_CreateArray();
    long long after = -1;
    for (int page = 0; page < 100000; page++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/jobs/%s/metrics?limit=10000&after_step=%lld", a.pos[0], after);
        fc_resp r;
        if ((rc = fc_get(path, &r))) {
            fc_resp_free(&r);
            cJSON_Delete(all);
            return rc;
        }
        cJSON *rows = cJSON_DetachItemFromObjectCaseSensitive(r.json, "metrics"), *row;
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(r.json, "next_after_step");
        int nrows = cJSON_GetArraySize(rows);
        while (rows && (row = cJSON_DetachItemFromArray(rows, 0))) cJSON_AddItemToArray(all, row);
        cJSON_Delete(rows);
        long long nx = cJSON_IsNumber(next) ? (long long)next->valuedouble : -2;
        fc_resp_free(&r);
        if (!nrows || nx <= after) break;
        after = nx;
    }
    fc_outfile o;
    if ((rc = fc_out_open(&o, fc_opt(&a, defs, "output")))) {
        cJSON_Delete(all);
        return rc;
    }
    if (fc.json) {
        char *s = cJSON_Print(all);
        if (s) fprintf(o.f, "%s\n", s);
        free(s);
    } else {
        for (int j = 0; j < NCOL; j++) fprintf(o.f, "%s%s", j ? "," : "", cols[j]);
        fputc('\n', o.f);
        const cJSON *row;
        cJSON_ArrayForEach(row, all) {
            for (int j = 0; j < NCOL; j++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, cols[j]);
                if (j) fputc(',', o.f);
                if (cJSON_IsNumber(v)) fprintf(o.f, "%.9g", v->valuedouble);
                else if (cJSON_IsString(v) && !strpbrk(v->valuestring, ",\"\n")) fputs(v->valuestring, o.f);
            }
            fputc('\n', o.f);
        }
    }
    cJSON_Delete(all);
    return fc_out_close(&o, 1);
}
