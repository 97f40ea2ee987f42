/* oapi.c: OpenAPI schema checks for the server tests (see oapi.h). */
#include "oapi.h"

#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* ---- YAML to cJSON --------------------------------------------------------------- */
static cJSON *plain_scalar(const char *s, size_t n) {
    if (!strcmp(s, "true")) return cJSON_CreateTrue();
    if (!strcmp(s, "false")) return cJSON_CreateFalse();
    if (!strcmp(s, "null") || !strcmp(s, "~") || n == 0) return cJSON_CreateNull();
    /* YAML 1.2 core numbers: [-+]?digits[.digits][e[-+]digits] */
    const char *p = s;
    if (*p == '-' || *p == '+') p++;
    int digits = 0;
    while (*p >= '0' && *p <= '9') p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') p++, digits++;
    }
    if (digits && (*p == 'e' || *p == 'E')) {
        p++;
        if (*p == '-' || *p == '+') p++;
        int ed = 0;
        while (*p >= '0' && *p <= '9') p++, ed++;
        if (!ed) digits = 0;
    }
    if (digits && !*p) return cJSON_CreateNumber(strtod(s, NULL));
    return cJSON_CreateString(s);
}

static cJSON *node_json(yaml_document_t *doc, yaml_node_t *n, int depth) {
    if (!n || depth > 64) return NULL;
    if (n->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)n->data.scalar.value;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) return plain_scalar(s, n->data.scalar.length);
        return cJSON_CreateString(s);
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        cJSON *a = cJSON_CreateArray();
        for (yaml_node_item_t *i = n->data.sequence.items.start; a && i < n->data.sequence.items.top; i++) {
            cJSON *e = node_json(doc, yaml_document_get_node(doc, *i), depth + 1);
            if (!e) {
                cJSON_Delete(a);
                return NULL;
            }
            cJSON_AddItemToArray(a, e);
        }
        return a;
    }
    if (n->type == YAML_MAPPING_NODE) {
        cJSON *o = cJSON_CreateObject();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; o && p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(doc, p->key);
            cJSON *v = node_json(doc, yaml_document_get_node(doc, p->value), depth + 1);
            if (!k || k->type != YAML_SCALAR_NODE || !v) {
                cJSON_Delete(v);
                cJSON_Delete(o);
                return NULL;
            }
            cJSON_AddItemToObject(o, (const char *)k->data.scalar.value, v);
        }
        return o;
    }
    return NULL;
}

cJSON *oapi_parse(const char *yaml, size_t len, char *err, size_t errlen) {
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) {
        snprintf(err, errlen, "yaml_parser_initialize failed");
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    cJSON *out = NULL;
    if (!yaml_parser_load(&p, &doc)) {
        snprintf(err, errlen, "YAML error at line %zu: %s", p.problem_mark.line + 1,
                 p.problem ? p.problem : "?");
    } else {
        out = node_json(&doc, yaml_document_get_root_node(&doc), 0);
        if (!out) snprintf(err, errlen, "empty or unsupported YAML document");
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&p);
    return out;
}

/* ---- checks ---------------------------------------------------------------------- */
typedef struct {
    const cJSON *doc;
    char *err;
    size_t errlen;
} ctx;

static int fail(ctx *c, const char *path, const char *fmt, ...) {
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s", path, msg);
    return -1;
}

/* "#/components/schemas/X" in the document */
static const cJSON *resolve(const cJSON *doc, const char *ref) {
    if (strncmp(ref, "#/", 2)) return NULL;
    const cJSON *o = doc;
    char part[128];
    for (const char *p = ref + 2; o && *p;) {
        size_t n = strcspn(p, "/");
        if (n >= sizeof part) return NULL;
        memcpy(part, p, n);
        part[n] = 0;
        o = cJSON_GetObjectItemCaseSensitive(o, part);
        p += n + (p[n] == '/');
    }
    return o;
}

static const char *kind(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsArray(v)) return "array";
    return "object";
}

static int is_true(const cJSON *s, const char *k) { return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, k)); }

static int check(ctx *c, const cJSON *s, const cJSON *v, const char *path, int depth);

static int check_object(ctx *c, const cJSON *s, const cJSON *v, const char *path, int depth) {
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required"), *e;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    char sub[512];
    cJSON_ArrayForEach(e, req) {
        if (cJSON_IsString(e) && !cJSON_GetObjectItemCaseSensitive(v, e->valuestring))
            return fail(c, path, "required property \"%s\" is missing", e->valuestring);
    }
    cJSON_ArrayForEach(e, v) {
        snprintf(sub, sizeof sub, "%s.%s", path, e->string);
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props, e->string);
        if (ps) {
            if (check(c, ps, e, sub, depth + 1)) return -1;
        } else if (cJSON_IsFalse(addl)) {
            return fail(c, path, "property \"%s\" is not in the schema (additionalProperties: false)", e->string);
        } else if (cJSON_IsObject(addl) && check(c, addl, e, sub, depth + 1)) {
            return -1;
        }
    }
    return 0;
}

static int check(ctx *c, const cJSON *s, const cJSON *v, const char *path, int depth) {
    if (depth > 64) return fail(c, path, "schema nesting too deep");
    if (!cJSON_IsObject(s)) return fail(c, path, "the schema is not an object");
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    if (cJSON_IsString(ref)) {
        const cJSON *t = resolve(c->doc, ref->valuestring);
        if (!t) return fail(c, path, "unresolved $ref %s", ref->valuestring);
        return check(c, t, v, path, depth + 1);
    }
    if (cJSON_IsNull(v) && is_true(s, "nullable")) return 0;
    const cJSON *e, *sub;
    if ((sub = cJSON_GetObjectItemCaseSensitive(s, "allOf")))
        cJSON_ArrayForEach(e, sub) if (check(c, e, v, path, depth + 1)) return -1;
    if ((sub = cJSON_GetObjectItemCaseSensitive(s, "anyOf")) ||
        (sub = cJSON_GetObjectItemCaseSensitive(s, "oneOf"))) {
        int ok = 0, one = !strcmp(sub->string, "oneOf");
        char first[300] = "";
        cJSON_ArrayForEach(e, sub) {
            if (!check(c, e, v, path, depth + 1)) ok++;
            else if (!first[0]) snprintf(first, sizeof first, "%s", c->err);
        }
        if (!ok) return fail(c, path, "matches none of %s (first: %s)", sub->string, first);
        if (one && ok > 1) return fail(c, path, "matches %d schemas of oneOf", ok);
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_IsString(type)) {
        const char *t = type->valuestring, *k = kind(v);
        int ok = !strcmp(t, k) ||
                 (!strcmp(t, "integer") && cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble));
        if (!ok) return fail(c, path, "expected %s, got %s", t, k);
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (cJSON_IsArray(en)) {
        int ok = 0;
        cJSON_ArrayForEach(e, en) ok |= cJSON_Compare(e, v, 1);
        if (!ok) {
            char *p = cJSON_PrintUnformatted(v);
            int r = fail(c, path, "%s is not in the enum", p ? p : "?");
            free(p);
            return r;
        }
    }
    if (cJSON_IsNumber(v)) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minimum");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maximum");
        double x = v->valuedouble;
        if (cJSON_IsNumber(mn) && (x < mn->valuedouble || (is_true(s, "exclusiveMinimum") && x == mn->valuedouble)))
            return fail(c, path, "%g is below the minimum %g", x, mn->valuedouble);
        if (cJSON_IsNumber(mx) && (x > mx->valuedouble || (is_true(s, "exclusiveMaximum") && x == mx->valuedouble)))
            return fail(c, path, "%g is above the maximum %g", x, mx->valuedouble);
    }
    if (cJSON_IsString(v)) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minLength");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxLength");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
        double n = (double)strlen(v->valuestring);
        if ((cJSON_IsNumber(mn) && n < mn->valuedouble) || (cJSON_IsNumber(mx) && n > mx->valuedouble))
            return fail(c, path, "length %g outside the schema's bounds", n);
        regex_t re;
        if (cJSON_IsString(pat) && !regcomp(&re, pat->valuestring, REG_EXTENDED | REG_NOSUB)) {
            int m = regexec(&re, v->valuestring, 0, NULL, 0);
            regfree(&re);
            if (m) return fail(c, path, "\"%s\" does not match %s", v->valuestring, pat->valuestring);
        }
    }
    if (cJSON_IsArray(v)) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minItems");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
        int n = cJSON_GetArraySize(v), i = 0;
        if ((cJSON_IsNumber(mn) && n < mn->valuedouble) || (cJSON_IsNumber(mx) && n > mx->valuedouble))
            return fail(c, path, "%d items outside the schema's bounds", n);
        char p[512];
        cJSON_ArrayForEach(e, v) {
            snprintf(p, sizeof p, "%s[%d]", path, i++);
            if (items && check(c, items, e, p, depth + 1)) return -1;
        }
    }
    if (cJSON_IsObject(v) && check_object(c, s, v, path, depth)) return -1;
    return 0;
}

int oapi_check(const cJSON *doc, const char *name, const cJSON *value, char *err, size_t errlen) {
    char ref[200];
    snprintf(ref, sizeof ref, "#/components/schemas/%s", name);
    ctx c = {doc, err, errlen};
    const cJSON *s = resolve(doc, ref);
    if (!s) return fail(&c, "$", "no schema %s in the document", name);
    return check(&c, s, value, "$", 0);
}
