/* cli.h: the option table of a flowd subcommand.
 *
 * A subcommand declares one row per option (name, letter, environment
 * variable, kind, default, range, destination, help) and calls
 * fd_cli_parse once: it stores the defaults, then the environment variables
 * that are set and not empty, then the flags (the flag wins), checks every
 * value against its range with nf_parse_i64 / nf_parse_num, and prints the
 * usage from the same rows, so the help and the parser cannot drift.
 *
 *   --help, -h      the usage on stdout, exit status 0
 *   an unknown option, a missing required one, a stray argument
 *                   the usage on stderr, exit status 2
 *   a bad value     "PROG: --name must be MUST" (", not 'VALUE'" with
 *                   quote_bad), exit status bad_rc; from the environment
 *                   "PROG: ENV=VALUE is not MUST"
 *
 * MUST is the row's `must`, or "an integer in [lo, hi]" / "a number in
 * [lo, hi]" from its range. */
#ifndef FLOWD_CLI_H
#define FLOWD_CLI_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
    FD_OPT_FLAG, /* no value: *(int *)dest = 1 */
    FD_OPT_STR,  /* *(const char **)dest = the text (def_str by default) */
    FD_OPT_INT,  /* *(int *)dest, an integer in [lo, hi] (def by default) */
    FD_OPT_SIZE, /* *(size_t *)dest, likewise */
    FD_OPT_NUM,  /* *(double *)dest, a number in [lo, hi]; see whole, open_lo */
    FD_OPT_LIST, /* *(char **)dest, a comma-separated list (NULL when empty): the
                  * environment's list, then each occurrence of the flag added */
} fd_opt_kind;

typedef struct {
    const char *name;     /* --name */
    char letter;          /* -x as well, or 0 */
    fd_opt_kind kind;
    void *dest;
    const char *env;      /* read before the flags when set and not empty, or NULL */
    double def;           /* INT, SIZE, NUM: the default */
    const char *def_str;  /* STR: the default (NULL: none) */
    double lo, hi;        /* INT, SIZE, NUM: the accepted range */
    unsigned whole : 1;   /* NUM: an integral value (written as strtod reads it: 1e3) */
    unsigned open_lo : 1; /* NUM: lo itself is refused */
    unsigned required : 1;
    unsigned env_nonempty : 1; /* the env var set but empty is an error, not "unset" */
    const char *arg;      /* the value's name in the usage: N, FILE */
    const char *help;     /* one or more sentences, wrapped in the usage */
    const char *def_text; /* the usage's "default: ..." in words, when def is worked out later */
    const char *must;     /* a bad value's "must be ...", when not the one from the range */
} fd_opt;

typedef struct {
    const char *prog;     /* "flowd serve": the prefix of every message */
    const char *synopsis; /* the usage before the options, ending in a blank line */
    const char *epilog;   /* the usage after the options, or NULL */
    const fd_opt *opts;
    int nopts;
    int bad_rc;           /* exit status for a bad value */
    int quote_bad;        /* a bad value's message ends in ", not 'VALUE'" */
} fd_cli;

#define FD_NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Returns 0 to go on, or 1 with *exit_code the status the subcommand
 * returns (0 after --help). */
int fd_cli_parse(const fd_cli *cli, int argc, char **argv, int *exit_code);
void fd_cli_usage(const fd_cli *cli, FILE *f);

/* The unconditional model in the file at path, for `flowd eval` and `flowd
 * sample`: 0, or -1 with why on stderr ("PROG: ..."); use names what the
 * subcommand does with unconditional models ("eval scores"). */
struct nf_model;
int fd_cli_load_model(const char *prog, const char *path, const char *use, struct nf_model **m);

#endif
