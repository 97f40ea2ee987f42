/* nf_json.h: the one validation vocabulary of flowd.  Reading fields of a
 * JSON object (a flow spec, a job, a request body) or a text value (a query
 * parameter, a command-line option) with type and range checks.  Used by the
 * core's spec and job parsers, and by the daemon, whose handlers reach it
 * through the fd_*_or_reply wrappers of server/http.c (422 for a body field,
 * 400 for a query parameter).
 *
 * Absent and null.  An optional field given as JSON null means exactly what
 * leaving it out means: the getter returns its default.  So "seed": null in a
 * sample request draws a fresh seed, "version": null serves the latest, and
 * "early_stopping": null in a job turns early stopping off.  A required field
 * that is null is missing.  nf_json_get is the test every caller uses for
 * "was this field given".
 *
 * Ranges are closed, [lo, hi].  Integers are JSON numbers with no fraction
 * (3.0 is 3); seeds are integers in [0, NF_JSON_SEED_MAX].  Every getter
 * returns 0, or NF_EINVAL with a message in err that names the field, e.g.
 * "\"epochs\" must be an integer in [1, 100000]". */
#ifndef NF_JSON_H
#define NF_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* 2^53: the largest integer that a JSON number (an IEEE double) holds
 * exactly at the top of a run of exact integers, and the bound of every
 * seed of the API (flow specs, jobs, datasets, sample requests). */
#define NF_JSON_SEED_MAX 9007199254740992.0

/* o[key], or NULL when o is NULL, the key is absent or its value is null. */
const cJSON *nf_json_get(const cJSON *o, const char *key);

/* NF_EINVAL with "\"key\" is required" unless key is given (not null). */
int nf_json_need(const cJSON *o, const char *key, char *err, size_t errlen);

int nf_json_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out,
                char *err, size_t errlen);
/* integers past the range of int (counts, seeds), as a double's exact
 * integers: lo and hi within +-2^53 */
int nf_json_i64(const cJSON *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                int64_t *out, char *err, size_t errlen);
int nf_json_seed(const cJSON *o, const char *key, uint64_t def, uint64_t *out, char *err,
                 size_t errlen);
/* finite numbers in [lo, hi]; nf_json_num_open: in (lo, hi] */
int nf_json_num(const cJSON *o, const char *key, double def, double lo, double hi,
                double *out, char *err, size_t errlen);
int nf_json_num_open(const cJSON *o, const char *key, double def, double lo, double hi,
                     double *out, char *err, size_t errlen);
int nf_json_bool(const cJSON *o, const char *key, int def, int *out, char *err, size_t errlen);
/* the string, def when absent, NULL when not a string */
const char *nf_json_str(const cJSON *o, const char *key, const char *def);
/* one of names (NULL-terminated); *out is its index, def when absent */
int nf_json_enum(const cJSON *o, const char *key, const char *const *names, int def, int *out,
                 char *err, size_t errlen);
/* "hidden": int or list of ints (each 1..65536), at most maxn.  Returns the
 * count or <0. */
int nf_json_int_list(const cJSON *o, const char *key, const int *def, int ndef, int *out,
                     int maxn, char *err, size_t errlen);
/* Reject keys of o not in the NULL-terminated allowed list (and an o that
 * is not an object). */
int nf_json_check_keys(const cJSON *o, const char *const *allowed, char *err, size_t errlen);

/* NF_EINVAL naming the field when a number anywhere inside o is not finite
 * (1e999 parses to infinity, and prints back as null). */
int nf_json_check_finite(const cJSON *o, char *err, size_t errlen);

/* ---- field tables ----------------------------------------------------------
 * A block of optional fields described once as data: the parser reads it
 * (nf_json_fields) and tests hold it against the JSON schema.  Each row
 * stores its value at target + off; a field left out stores its default,
 * except an object row, which leaves its sub-table's targets alone unless
 * the object is given. */
typedef enum {
    NF_FIELD_INT,    /* int, integer in [lo, hi] */
    NF_FIELD_SEED,   /* uint64_t, integer in [0, NF_JSON_SEED_MAX] (lo, hi ignored) */
    NF_FIELD_NUM,    /* double, number in [lo, hi] */
    NF_FIELD_ENUM,   /* int (or an int-sized enum): the index of the name in names;
                        def is the default's index */
    NF_FIELD_OBJECT, /* an object read with the sub table (null or absent: left alone) */
    NF_FIELD_BOOL,   /* int 0/1, true or false; def is 0 or 1 */
} nf_field_type;

typedef struct nf_field {
    const char *name;
    nf_field_type type;
    double lo, hi, def;
    size_t off;
    const char *const *names;      /* ENUM */
    const struct nf_field *sub;    /* OBJECT, terminated by a row with name NULL */
} nf_field;

/* Check o's keys against the table (terminated by name NULL) and read every
 * row.  o may be NULL or null (every field takes its default). */
int nf_json_fields(const cJSON *o, const nf_field *fields, void *target, char *err,
                   size_t errlen);

/* ---- text values (query parameters, command-line options) ----------------
 * The whole string must be the value: no blanks, no trailing characters. */
int nf_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int nf_parse_num(const char *s, double lo, double hi, double *out);
/* Writing: o[key] = v, or null when v is not finite (JSON has no inf or
 * NaN). */
void nf_json_add_num(cJSON *o, const char *key, double v);

/* "true" or "1", "false" or "0" */
int nf_parse_bool(const char *s, int *out);

#endif
