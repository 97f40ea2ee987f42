/* cli.c: the option table of a flowd subcommand (cli.h). */
#include "cli.h"

#include "../core/model.h"
#include "../core/nf_json.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { LONG_ONLY = 256, MAX_OPTS = 48, WIDTH = 80 };

static void store_default(const fd_opt *o) {
    switch (o->kind) {
    case FD_OPT_FLAG: *(int *)o->dest = 0; break;
    case FD_OPT_STR: *(const char **)o->dest = o->def_str; break;
    case FD_OPT_INT: *(int *)o->dest = (int)o->def; break;
    case FD_OPT_SIZE: *(size_t *)o->dest = (size_t)o->def; break;
    case FD_OPT_NUM: *(double *)o->dest = o->def; break;
    case FD_OPT_LIST: *(char **)o->dest = NULL; break;
    }
}

/* the text of a value into its row's destination; -1 when it is out of range */
static int store_value(const fd_opt *o, const char *s) {
    int64_t i;
    double d;
    switch (o->kind) {
    case FD_OPT_FLAG: *(int *)o->dest = 1; return 0;
    case FD_OPT_STR: *(const char **)o->dest = s; return 0;
    case FD_OPT_INT:
    case FD_OPT_SIZE:
        if (nf_parse_i64(s, (int64_t)o->lo, (int64_t)o->hi, &i)) return -1;
        if (o->kind == FD_OPT_INT) *(int *)o->dest = (int)i;
        else *(size_t *)o->dest = (size_t)i;
        return 0;
    case FD_OPT_NUM:
        if (nf_parse_num(s, o->lo, o->hi, &d) || (o->whole && d != floor(d)) || (o->open_lo && d == o->lo))
            return -1;
        *(double *)o->dest = d;
        return 0;
    case FD_OPT_LIST: {
        if (!*s) return -1;
        char **l = o->dest, *old = *l;
        size_t a = old ? strlen(old) + 1 : 0, b = strlen(s);
        char *n = malloc(a + b + 1); /* kept for the life of the process */
        if (!n) return -1;
        if (old) memcpy(n, old, a - 1), n[a - 1] = ',';
        memcpy(n + a, s, b + 1);
        free(old);
        *l = n;
        return 0;
    }
    }
    return -1;
}

/* "lo..hi" for integers, "[lo, hi]" or "(lo, hi]" for numbers */
static void range_text(const fd_opt *o, char *buf, size_t n) {
    if (o->kind == FD_OPT_NUM && !o->whole)
        snprintf(buf, n, "%c%.17g, %.17g]", o->open_lo ? '(' : '[', o->lo, o->hi);
    else snprintf(buf, n, "%.17g..%.17g", o->lo, o->hi);
}

static void must_text(const fd_opt *o, char *buf, size_t n) {
    if (o->must) snprintf(buf, n, "%s", o->must);
    else if (o->kind == FD_OPT_NUM && !o->whole) {
        char r[96];
        range_text(o, r, sizeof r);
        snprintf(buf, n, "a number in %s", r);
    } else snprintf(buf, n, "an integer in [%.17g, %.17g]", o->lo, o->hi);
}

static int env_values(const fd_cli *cli) {
    for (int i = 0; i < cli->nopts; i++) {
        const fd_opt *o = &cli->opts[i];
        const char *e = o->env ? getenv(o->env) : NULL;
        if (e && !*e && o->env_nonempty) {
            fprintf(stderr, "%s: %s is set but empty; unset it or give a value\n", cli->prog, o->env);
            return -1;
        }
        if (!e || !*e || !store_value(o, e)) continue;
        char must[160];
        must_text(o, must, sizeof must);
        fprintf(stderr, "%s: %s=%s is not %s\n", cli->prog, o->env, e, must);
        return -1;
    }
    return 0;
}

static void bad_value(const fd_cli *cli, const fd_opt *o, int as_letter, const char *value) {
    char must[160];
    must_text(o, must, sizeof must);
    if (as_letter) fprintf(stderr, "%s: -%c must be %s", cli->prog, o->letter, must);
    else fprintf(stderr, "%s: --%s must be %s", cli->prog, o->name, must);
    if (cli->quote_bad) fprintf(stderr, ", not '%s'", value);
    fputc('\n', stderr);
}

/* the getopt_long tables of the rows; val is the letter, or LONG_ONLY + row */
static void getopt_tables(const fd_cli *cli, struct option *lo, char *shorts) {
    char *s = shorts;
    for (int i = 0; i < cli->nopts; i++) {
        const fd_opt *o = &cli->opts[i];
        int has_arg = o->kind == FD_OPT_FLAG ? no_argument : required_argument;
        lo[i] = (struct option){o->name, has_arg, 0, o->letter ? o->letter : LONG_ONLY + i};
        if (o->letter) {
            *s++ = o->letter;
            if (has_arg) *s++ = ':';
        }
    }
    lo[cli->nopts] = (struct option){"help", no_argument, 0, 'h'};
    lo[cli->nopts + 1] = (struct option){0, 0, 0, 0};
    *s++ = 'h';
    *s = 0;
}

static int row_of(const fd_cli *cli, int val) {
    if (val >= LONG_ONLY) return val - LONG_ONLY < cli->nopts ? val - LONG_ONLY : -1;
    for (int i = 0; i < cli->nopts; i++)
        if (cli->opts[i].letter == val) return i;
    return -1;
}

int fd_cli_parse(const fd_cli *cli, int argc, char **argv, int *exit_code) {
    struct option lo[MAX_OPTS + 2];
    char shorts[2 * MAX_OPTS + 2];
    if (cli->nopts > MAX_OPTS) abort(); /* a table too long for this file: raise MAX_OPTS */
    getopt_tables(cli, lo, shorts);
    for (int i = 0; i < cli->nopts; i++) store_default(&cli->opts[i]);
    *exit_code = cli->bad_rc;
    if (env_values(cli)) return 1;
    int c, li;
    optind = 1;
    while ((li = -1, c = getopt_long(argc, argv, shorts, lo, &li)) != -1) {
        if (c == 'h') {
            fd_cli_usage(cli, stdout);
            *exit_code = 0;
            return 1;
        }
        int row = row_of(cli, c);
        if (row < 0) break; /* '?': getopt has said what is wrong */
        const fd_opt *o = &cli->opts[row];
        if (store_value(o, optarg)) {
            bad_value(cli, o, li < 0, optarg); /* li < 0: given as -x */
            return 1;
        }
    }
    int ok = c == -1 && optind == argc;
    for (int i = 0; ok && i < cli->nopts; i++) {
        const fd_opt *o = &cli->opts[i];
        if (o->required && o->kind == FD_OPT_STR && !*(const char **)o->dest) ok = 0;
    }
    if (ok) return 0;
    fd_cli_usage(cli, stderr);
    *exit_code = 2;
    return 1;
}

/* ---- usage ---------------------------------------------------------------------------------------- */
static int left_width(const fd_opt *o) {
    int w = (int)strlen(o->name) + 2;
    if (o->letter) w += 4;
    if (o->kind != FD_OPT_FLAG) w += 1 + (int)strlen(o->arg ? o->arg : "X");
    return w;
}

/* "(ENV, lo..hi, default D)", the parts that apply, or "" */
static void suffix_text(const fd_opt *o, char *buf, size_t n) {
    char range[96] = "", def[160] = "";
    if (o->kind == FD_OPT_INT || o->kind == FD_OPT_SIZE || o->kind == FD_OPT_NUM) {
        range_text(o, range, sizeof range);
        if (!o->def_text) snprintf(def, sizeof def, "default %.17g", o->def);
    }
    if (o->def_text) snprintf(def, sizeof def, "default: %s", o->def_text);
    else if (o->kind == FD_OPT_STR && o->def_str) snprintf(def, sizeof def, "default %s", o->def_str);
    const char *parts[3] = {o->env, *range ? range : NULL, *def ? def : NULL};
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < 3; i++) {
        if (!parts[i]) continue;
        k += (size_t)snprintf(buf + k, k < n ? n - k : 0, "%s%s", k ? ", " : "(", parts[i]);
    }
    if (k && k + 1 < n) strcat(buf, ")");
}

/* the words of text from column col (where the line already is), wrapped
 * before WIDTH */
static void wrap(FILE *f, const char *text, int col) {
    const char *p = text;
    int at = col;
    while (*p) {
        while (*p == ' ') p++;
        size_t w = strcspn(p, " ");
        if (!w) break;
        if (at > col && at + 1 + (int)w > WIDTH) {
            fprintf(f, "\n%*s", col, "");
            at = col;
        } else if (at > col) {
            fputc(' ', f);
            at++;
        }
        fprintf(f, "%.*s", (int)w, p);
        at += (int)w;
        p += w;
    }
    fputc('\n', f);
}

void fd_cli_usage(const fd_cli *cli, FILE *f) {
    int col = 0;
    for (int i = 0; i < cli->nopts; i++) {
        int w = left_width(&cli->opts[i]);
        if (w > col) col = w;
    }
    col += 4; /* two spaces before, two after */
    fputs(cli->synopsis, f);
    for (int i = 0; i < cli->nopts; i++) {
        const fd_opt *o = &cli->opts[i];
        int at = fprintf(f, "  ");
        if (o->letter) at += fprintf(f, "-%c, ", o->letter);
        at += fprintf(f, "--%s", o->name);
        if (o->kind != FD_OPT_FLAG) at += fprintf(f, " %s", o->arg ? o->arg : "X");
        at += fprintf(f, "%*s", col - at, "");
        char suffix[320], text[1024];
        suffix_text(o, suffix, sizeof suffix);
        snprintf(text, sizeof text, "%s%s%s", o->help, *suffix ? " " : "", suffix);
        wrap(f, text, col);
    }
    if (cli->epilog) fprintf(f, "\n%s", cli->epilog);
}

/* ---- shared by the subcommands ------------------------------------------------------------------------ */
int fd_cli_load_model(const char *prog, const char *path, const char *use, nf_model **m) {
    void *buf = NULL;
    size_t len;
    char err[512] = "";
    if (nf_file_read(path, &buf, &len)) {
        fprintf(stderr, "%s: cannot read model %s\n", prog, path);
        return -1;
    }
    int st = nf_model_load(buf, len, m, err, sizeof err);
    free(buf);
    if (st) {
        fprintf(stderr, "%s: %s: not a valid model file: %s\n", prog, path, err);
        return -1;
    }
    (void)nf_model_pack(*m, NF_PACK_MAX_BYTES); /* as the daemon's default; out of memory: unpacked */
    int cd = nf_flow_context_dim((*m)->flow);
    if (cd > 0) {
        fprintf(stderr, "%s: %s is a conditional model (context_dim %d); %s unconditional models only\n",
                prog, path, cd, use);
        return -1;
    }
    return 0;
}
