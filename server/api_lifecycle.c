/* api_lifecycle.c: the model lifecycle over HTTP (issue 13).
 *
 *   PUT    /v1/models/{name}/aliases/{alias}   {"version": N | "alias"}  -> 200
 *   DELETE /v1/models/{name}/aliases/{alias}                            -> 204
 *   POST   /v1/models/{name}/versions          a .flow body              -> 201
 *   DELETE /v1/models/{name}/versions/{v}                               -> 204 / 409 version_in_use
 *   POST   /v1/jobs/{id}/resume                                         -> 202
 *
 * and the version vocabulary of every route that takes one: a number, or an
 * alias name or "latest" (a JSON string in bodies; in a query or a path
 * segment, digits are a number).  Without one a
 * call uses the model's default (its "default" alias, else the latest).
 *
 * Alias names: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a
 * letter (so never a number), and not "latest" (always the newest
 * version).  Aliases and version deletes change what this thread's
 * connection resolves without moving its data_version, so each write
 * calls fd_cache_forget_default (other threads see the commit). */
#include "server.h"

#include "../core/job.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int fd_alias_name_ok(const char *s) {
    if (!s || !isalpha((unsigned char)s[0]) || !strcmp(s, "latest")) return 0;
    return nf_valid_name(s);
}

/* name/spec -> version number, replying 404 (or 400/422 through bad) on
 * failure: 0 or -1 */
static int resolve_or_reply(fd_req *r, const char *name, const char *spec, int *version,
                            int status_bad, const char *field) {
    fd_db *db = fd_req_db(r);
    if (!db) return -1;
    char err[300] = "";
    int rc = fd_db_resolve_version(db, name, spec, version, err, sizeof err);
    if (!rc) return 0;
    if (rc == FD_EINVAL) {
        cJSON *d = NULL;
        if (field) {
            d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "field", field);
        }
        fd_send_error(r, status_bad, status_bad == 400 ? "invalid_argument" : "invalid_input", d,
                      "%s: a version number or an alias name", field ? field : "version");
        return -1;
    }
    if (rc == FD_ENOTFOUND) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "model", name);
        cJSON_AddStringToObject(d, "version", spec ? spec : "");
        fd_send_error(r, 404, "not_found", d, "%s", err);
        return -1;
    }
    fd_send_db_error(r, rc, err);
    return -1;
}

int fd_body_version_or_reply(fd_req *r, const cJSON *body, const char *name, int *version) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "version");
    *version = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        /* a string names an alias (or "latest"); numbers are JSON numbers,
         * as for every numeric field ("3" is refused, not read as 3) */
        if (!isalpha((unsigned char)v->valuestring[0]) || strlen(v->valuestring) > 64) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "field", "version");
            fd_send_error(r, 422, "invalid_input", d,
                          "\"version\": a version number (a JSON number) or an alias name (a string "
                          "starting with a letter)");
            return -1;
        }
        return resolve_or_reply(r, name, v->valuestring, version, 422, "version");
    }
    return fd_body_int_or_reply(r, body, "version", 0, 1, INT_MAX, version);
}

int fd_query_version_or_reply(fd_req *r, const char *name, int *version) {
    const char *q = fd_req_query(r, "version");
    *version = 0;
    if (!q) return 0;
    if (!*q || strlen(q) > 64) {
        fd_send_error(r, 400, "invalid_argument", NULL, "version: a version number or an alias name");
        return -1;
    }
    return resolve_or_reply(r, name, q, version, 400, "version");
}

int fd_path_version_or_reply(fd_req *r, const char *name, const char *seg, int *version) {
    if (strlen(seg) > 64) {
        fd_send_error(r, 404, "not_found", NULL, "model %s has no version or alias of that name", name);
        return -1;
    }
    return resolve_or_reply(r, name, seg, version, 404, NULL);
}

/* ---- aliases ------------------------------------------------------------------------------ */
static int model_exists_or_reply(fd_req *r, fd_db *db, const char *name) {
    cJSON *m = NULL;
    char err[300] = "";
    int rc = fd_db_model_get(db, name, &m, err, sizeof err);
    cJSON_Delete(m);
    if (!rc) return 0;
    if (rc == FD_ENOTFOUND) fd_send_error(r, 404, "not_found", NULL, "no model named %s", name);
    else fd_send_db_error(r, rc, err);
    return -1;
}

static int alias_or_reply(fd_req *r, const char *alias) {
    if (fd_alias_name_ok(alias)) return 0;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "alias", alias);
    fd_send_error(r, 400, "invalid_argument", d,
                  "alias names are 1-64 characters of A-Z a-z 0-9 . _ -, start with a letter, and "
                  "are not \"latest\"");
    return -1;
}

enum MHD_Result fd_api_alias_put(fd_req *r, char **a) {
    if (alias_or_reply(r, a[1])) return MHD_YES;
    cJSON *body = fd_req_json(r);
    if (!body) return MHD_YES;
    static const char *const keys[] = {"version", NULL};
    int version = 0;
    fd_db *db = fd_req_db(r);
    if (!db || fd_body_keys_or_reply(r, body, keys) || model_exists_or_reply(r, db, a[0])) goto out;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "version");
    if (!v || cJSON_IsNull(v)) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "version");
        fd_send_error(r, 422, "invalid_input", d, "\"version\" is required: a version number or an alias name");
        goto out;
    }
    if (fd_body_version_or_reply(r, body, a[0], &version)) goto out;
    char err[300] = "";
    int rc = fd_db_alias_set(db, a[0], a[1], version, err, sizeof err);
    if (rc == FD_ENOTFOUND) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "version");
        cJSON_AddNumberToObject(d, "version", version);
        fd_send_error(r, 422, "invalid_input", d, "model %s has no version %d", a[0], version);
        goto out;
    }
    if (rc) {
        fd_send_db_error(r, rc, err);
        goto out;
    }
    fd_cache_forget_default();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", a[0]);
    cJSON_AddStringToObject(o, "alias", a[1]);
    cJSON_AddNumberToObject(o, "version", version);
    cJSON_Delete(body);
    return fd_send_json(r, 200, o);
out:
    cJSON_Delete(body);
    return MHD_YES;
}

enum MHD_Result fd_api_alias_delete(fd_req *r, char **a) {
    if (alias_or_reply(r, a[1])) return MHD_YES;
    fd_db *db = fd_req_db(r);
    if (!db || model_exists_or_reply(r, db, a[0])) return MHD_YES;
    char err[300] = "";
    int rc = fd_db_alias_delete(db, a[0], a[1], err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "model %s has no alias %s", a[0], a[1]);
    if (rc) return fd_send_db_error(r, rc, err);
    fd_cache_forget_default();
    return fd_send_bytes(r, 204, NULL, NULL, 0);
}

/* ---- versions ------------------------------------------------------------------------------ */
enum MHD_Result fd_api_version_delete(fd_req *r, char **a) {
    int64_t v;
    if (nf_parse_i64(a[1], 1, INT_MAX, &v))
        return fd_send_error(r, 404, "not_found", NULL, "versions are deleted by number (an integer >= 1)");
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    char err[300] = "", alias[65] = "";
    int rc = fd_db_version_delete(db, a[0], (int)v, alias, err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "model %s has no version %lld", a[0], (long long)v);
    if (rc == FD_ECONFLICT) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "alias", alias);
        cJSON_AddNumberToObject(d, "version", (double)v);
        return fd_send_error(r, 409, "version_in_use", d,
                             "alias %s points at version %lld of %s: move or delete the alias first",
                             alias, (long long)v, a[0]);
    }
    if (rc) return fd_send_db_error(r, rc, err);
    fd_cache_evict(r->srv->cache, a[0]);
    return fd_send_bytes(r, 204, NULL, NULL, 0);
}

enum MHD_Result fd_api_versions_create(fd_req *r, char **a) {
    if (!nf_valid_name(a[0]))
        return fd_send_error(r, 400, "invalid_argument", NULL,
                             "model names are 1-64 characters of A-Z a-z 0-9 . _ - (not starting with .)");
    const char *ct = fd_req_header(r, "Content-Type");
    if (ct && strncasecmp(ct, "application/octet-stream", 24) && strncasecmp(ct, "application/x-flowd-model", 25))
        return fd_send_error(r, 415, "unsupported_media_type", NULL,
                             "a model file is application/octet-stream (or application/x-flowd-model); got %s", ct);
    int set_default;
    if (fd_query_bool_or_reply(r, "set_default", 1, &set_default)) return MHD_YES;
    if (!r->len) return fd_send_error(r, 422, "invalid_input", NULL, "the body is empty: send a .flow model file");
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    fd_model_desc d;
    char err[400] = "";
    int rc = fd_model_describe(r->body, r->len, &d, err, sizeof err);
    if (rc) return fd_send_error(r, 422, "invalid_model", NULL, "not a valid model file: %s", err);
    int version = 0;
    rc = fd_db_version_upload(db, a[0], r->body, r->len, d.dim, d.context_dim, d.config, d.preprocess,
                              d.metrics, set_default, &version, err, sizeof err);
    int dim = d.dim, cdim = d.context_dim;
    fd_model_desc_free(&d);
    if (rc) return fd_send_db_error(r, rc, err);
    fd_cache_forget_default();
    int dv = 0;
    fd_db_default_version(db, a[0], &dv, err, sizeof err);
    char sha[65], loc[160];
    fd_sha256_hex(r->body, r->len, sha);
    snprintf(loc, sizeof loc, "/v1/models/%s/versions/%d/checkpoint", a[0], version);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", a[0]);
    cJSON_AddNumberToObject(o, "version", version);
    cJSON_AddNumberToObject(o, "default_version", dv);
    cJSON_AddNumberToObject(o, "dim", dim);
    cJSON_AddNumberToObject(o, "context_dim", cdim);
    cJSON_AddNumberToObject(o, "size_bytes", (double)r->len);
    cJSON_AddStringToObject(o, "sha256", sha);
    return fd_send_json_at(r, 201, o, loc);
}

/* ---- resume ---------------------------------------------------------------------------------- */
enum MHD_Result fd_api_job_resume(fd_req *r, char **a) {
    int64_t id;
    if (nf_parse_i64(a[0], 1, INT64_MAX, &id)) return fd_send_error(r, 404, "not_found", NULL, "no job %s", a[0]);
    fd_db *db = fd_req_db(r);
    if (!db) return MHD_YES;
    char err[300] = "";
    int64_t counts[5];
    if (fd_db_job_counts(db, counts, err, sizeof err) == 0 && counts[0] >= r->srv->cfg.max_queued_jobs)
        return fd_send_error(r, 429, "overloaded", NULL, "%lld jobs are queued (limit %d); retry later",
                             (long long)counts[0], r->srv->cfg.max_queued_jobs);
    int64_t step = -1;
    int rc = fd_db_job_resume(db, id, &step, err, sizeof err);
    if (rc == FD_ENOTFOUND) return fd_send_error(r, 404, "not_found", NULL, "no job %s", a[0]);
    if (rc == FD_ECONFLICT) return fd_send_error(r, 409, "not_resumable", NULL, "%s", err);
    if (rc == FD_EINVAL) return fd_send_error(r, 409, "no_saved_state", NULL, "%s", err);
    if (rc) return fd_send_db_error(r, rc, err);
    if (r->srv->jobs) fd_jobs_notify(r->srv->jobs);
    cJSON *o = cJSON_CreateObject();
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/jobs/%lld", (long long)id);
    cJSON_AddStringToObject(o, "id", a[0]);
    cJSON_AddStringToObject(o, "state", "queued");
    if (step >= 0) cJSON_AddNumberToObject(o, "resume_step", (double)step);
    else cJSON_AddNullToObject(o, "resume_step");
    return fd_send_json_at(r, 202, o, loc);
}

/* ---- warm starts at submission ------------------------------------------------------------------ */
int fd_job_init_or_reply(fd_req *r, fd_db *db, const nf_job *j, int dim, const int shape[3],
                         int is_int, double vmin, double vmax, int *version) {
    *version = 0;
    if (!j->init_model[0]) return 0;
    char err[512] = "";
    int rc = fd_db_resolve_version(db, j->init_model, j->init_version, version, err, sizeof err);
    if (rc == FD_ENOTFOUND || rc == FD_EINVAL) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", j->init_version[0] ? "init.version" : "init.model");
        fd_send_error(r, 422, "invalid_input", d, "init: %s", err);
        return -1;
    }
    if (rc) return fd_send_db_error(r, rc, err), -1;
    void *buf = NULL, *opt = NULL;
    size_t len = 0, olen = 0;
    int got = 0;
    if ((rc = fd_db_version_get(db, j->init_model, *version, &buf, &len, &got, err, sizeof err)))
        return fd_send_db_error(r, rc, err), -1;
    rc = nf_job_check_init(j, dim, shape, is_int, vmin, vmax, buf, len, err, sizeof err);
    free(buf);
    if (rc) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "field", "init");
        cJSON_AddStringToObject(d, "model", j->init_model);
        cJSON_AddNumberToObject(d, "version", *version);
        fd_send_error(r, 422, "invalid_input", d, "%s", err);
        return -1;
    }
    if (j->init_optimizer) {
        if ((rc = fd_db_version_optimizer(db, j->init_model, *version, &opt, &olen, err, sizeof err)))
            return fd_send_db_error(r, rc, err), -1;
        free(opt);
        if (!olen) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "field", "init.optimizer");
            fd_send_error(r, 422, "invalid_input", d,
                          "init.optimizer: version %d of %s has no stored optimizer state (publish "
                          "with \"publish\": {\"optimizer_state\": true} to keep it), or start "
                          "with \"optimizer\": false",
                          *version, j->init_model);
            return -1;
        }
    }
    return 0;
}
