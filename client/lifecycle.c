/* lifecycle.c: flowctl's model-lifecycle commands: alias (list, show, set,
 * delete), delete-version, push (upload a model file), resume (a cancelled
 * or failed job), and the --version vocabulary (number or alias) that score
 * and sample share. */
#include "flowctl.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int is_number(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

static int is_name(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64 || s[0] == '.') return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-') return 0;
    return 1;
}

int fc_check_version(const char *opt, const char *s) {
    long v;
    if (is_number(s)) return fc_parse_long(opt, s, 1, 2147483647L, &v);
    if (is_name(s)) return 0;
    fprintf(stderr, "flowctl: %s: give a version number or an alias name, not '%s'\n", opt, s);
    return FC_USAGE;
}

void fc_add_version(cJSON *body, const char *s) {
    if (is_number(s)) cJSON_AddNumberToObject(body, "version", atof(s));
    else cJSON_AddStringToObject(body, "version", s);
}

long fc_model_version(const cJSON *model, const char *spec) {
    const cJSON *v = NULL;
    if (!spec) v = cJSON_GetObjectItemCaseSensitive(model, "default_version");
    else if (is_number(spec)) return atol(spec);
    else if (!strcmp(spec, "latest")) v = cJSON_GetObjectItemCaseSensitive(model, "latest_version");
    else v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(model, "aliases"), spec);
    return cJSON_IsNumber(v) ? (long)v->valuedouble : 0;
}

/* ---- alias -------------------------------------------------------------------------------- */
static const char *help_alias =
    "usage: flowctl alias NAME                  list the aliases of a model\n"
    "       flowctl alias NAME ALIAS            the version ALIAS points at\n"
    "       flowctl alias NAME ALIAS VERSION    point ALIAS at VERSION (a number or an alias)\n"
    "       flowctl alias NAME ALIAS --delete   drop ALIAS\n"
    "\n"
    "An alias names a version wherever one is accepted (--version prod).  The\n"
    "alias 'default' is the version every call without a version uses; without\n"
    "it, the latest.  Alias names start with a letter; 'latest' is reserved.\n";

int fc_cmd_alias(int argc, char **argv) {
    static const fc_optdef defs[] = {{"delete", 'd', 0}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_alias);
    if (rc) return rc;
    int del = fc_opt(&a, defs, "delete") != NULL;
    if (a.npos < 1 || a.npos > 3 || (del && a.npos != 2))
        return fc_usage_error(help_alias, "alias takes NAME [ALIAS [VERSION]], or NAME ALIAS --delete");
    char path[800];
    fc_resp r;
    memset(&r, 0, sizeof r);
    if (del || a.npos == 3) {
        snprintf(path, sizeof path, "/v1/models/%s/aliases/%s", fc_esc(a.pos[0]), fc_esc(a.pos[1]));
        char *body = NULL;
        if (!del) {
            if (fc_check_version("VERSION", a.pos[2])) return FC_USAGE;
            cJSON *b = cJSON_CreateObject();
            fc_add_version(b, a.pos[2]);
            body = cJSON_PrintUnformatted(b);
            cJSON_Delete(b);
        }
        fc_req q = {.method = del ? "DELETE" : "PUT", .path = path, .ctype = body ? "application/json" : NULL,
                    .body = body, .len = body ? strlen(body) : 0};
        if (!(rc = fc_http(&q, &r))) {
            if (fc.json && r.json) fc_print_json(r.json);
            else if (del) printf("alias %s of %s deleted\n", a.pos[1], a.pos[0]);
            else printf("%s: %s -> version %s\n", a.pos[0], a.pos[1], fc_str(r.json, "version"));
        }
        free(body);
        fc_resp_free(&r);
        return rc;
    }
    snprintf(path, sizeof path, "/v1/models/%s", fc_esc(a.pos[0]));
    if ((rc = fc_get(path, &r))) goto out;
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(r.json, "aliases"), *e;
    if (a.npos == 2) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(al, a.pos[1]);
        if (!cJSON_IsNumber(v)) {
            fprintf(stderr, "flowctl: model %s has no alias %s\n", a.pos[0], a.pos[1]);
            rc = FC_API;
        } else if (fc.json) {
            printf("{\"model\":\"%s\",\"alias\":\"%s\",\"version\":%d}\n", a.pos[0], a.pos[1], v->valueint);
        } else {
            printf("%d\n", v->valueint);
        }
        goto out;
    }
    if (fc.json) {
        fc_print_json(al);
        goto out;
    }
    fc_table t;
    fc_table_init(&t, 2);
    fc_table_add(&t, (const char *[]){"ALIAS", "VERSION"});
    cJSON_ArrayForEach(e, al) {
        char v[32];
        snprintf(v, sizeof v, "%d", e->valueint);
        fc_table_add(&t, (const char *[]){e->string, v});
    }
    if (!cJSON_GetObjectItemCaseSensitive(al, "default")) {
        char v[64];
        snprintf(v, sizeof v, "%s (the latest)", fc_str(r.json, "default_version"));
        fc_table_add(&t, (const char *[]){"(default)", v});
    }
    fc_table_print(&t, stdout);
    fc_table_free(&t);
out:
    fc_resp_free(&r);
    return rc;
}

/* ---- delete-version ------------------------------------------------------------------------ */
static const char *help_delete_version =
    "usage: flowctl delete-version NAME VERSION\n"
    "\n"
    "Deletes one version of a model.  Refused (exit 2, version_in_use) while an\n"
    "alias points at it: move or drop the alias first.  Its number is never\n"
    "given again.\n";

int fc_cmd_delete_version(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_delete_version);
    if (rc) return rc;
    if (a.npos != 2 || !is_number(a.pos[1]))
        return fc_usage_error(help_delete_version, "delete-version takes NAME and a version number");
    char path[800];
    snprintf(path, sizeof path, "/v1/models/%s/versions/%s", fc_esc(a.pos[0]), a.pos[1]);
    fc_req q = {.method = "DELETE", .path = path};
    fc_resp r;
    if (!(rc = fc_http(&q, &r))) {
        if (fc.json) printf("{\"model\":\"%s\",\"version\":%s,\"deleted\":true}\n", a.pos[0], a.pos[1]);
        else printf("version %s of %s deleted\n", a.pos[1], a.pos[0]);
    }
    fc_resp_free(&r);
    return rc;
}

/* ---- push ------------------------------------------------------------------------------------ */
static const char *help_push =
    "usage: flowctl push FILE --name NAME [--no-default] [--json]\n"
    "\n"
    "Uploads a model file (what 'flowd train --out' writes and the checkpoint\n"
    "route downloads) as the next version of model NAME.  The server checks it\n"
    "as 'flowd import' does.  It becomes the default version unless\n"
    "--no-default is given.\n";

int fc_cmd_push(int argc, char **argv) {
    static const fc_optdef defs[] = {{"name", 0, 1}, {"no-default", 0, 0}, {NULL, 0, 0}};
    fc_args a;
    int rc = fc_parse(argc, argv, defs, &a, help_push);
    if (rc) return rc;
    const char *name = fc_opt(&a, defs, "name");
    if (a.npos != 1 || !name) return fc_usage_error(help_push, "push takes FILE and --name NAME");
    FILE *f = fopen(a.pos[0], "rb");
    struct stat sb;
    if (!f || fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "flowctl: cannot read %s: %s\n", a.pos[0], f ? "not a regular file" : strerror(errno));
        if (f) fclose(f);
        return FC_USAGE;
    }
    char path[700];
    snprintf(path, sizeof path, "/v1/models/%s/versions%s", fc_esc(name),
             fc_opt(&a, defs, "no-default") ? "?set_default=false" : "");
    fc_req q = {.method = "POST", .path = path, .ctype = "application/octet-stream", .upload = f,
                .len = (size_t)sb.st_size, .timeout_s = 3600};
    fc_resp r;
    rc = fc_http(&q, &r);
    fclose(f);
    if (!rc) {
        if (fc.json) fc_print_json(r.json);
        else
            printf("%s version %s (dim %s, %s bytes); default version %s\n", fc_str(r.json, "model"),
                   fc_str(r.json, "version"), fc_str(r.json, "dim"), fc_str(r.json, "size_bytes"),
                   fc_str(r.json, "default_version"));
    }
    fc_resp_free(&r);
    return rc;
}

/* ---- resume ---------------------------------------------------------------------------------- */
static const char *help_resume =
    "usage: flowctl resume ID [--json]\n"
    "\n"
    "Queues a cancelled job again (or a failed one that kept its training\n"
    "state): it continues from its last saved step.  Follow it with\n"
    "'flowctl job ID'.\n";

int fc_cmd_resume(int argc, char **argv) {
    fc_args a;
    int rc = fc_parse(argc, argv, NULL, &a, help_resume);
    if (rc) return rc;
    if (a.npos != 1 || !is_number(a.pos[0])) return fc_usage_error(help_resume, "resume takes one numeric ID");
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/resume", a.pos[0]);
    fc_resp r;
    if (!(rc = fc_post_json(path, NULL, &r))) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(r.json, "resume_step");
        if (fc.json) fc_print_json(r.json);
        else if (cJSON_IsNumber(s)) printf("job %s queued again; it resumes at step %.0f\n", a.pos[0], s->valuedouble);
        else printf("job %s queued again; it starts from scratch (no saved state)\n", a.pos[0]);
    }
    fc_resp_free(&r);
    return rc;
}
