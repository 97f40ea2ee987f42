/* yaml2json.c: a build tool: the YAML file argv[1] as JSON on stdout (the
 * OpenAPI document, served at GET /openapi.json).  The conversion is the
 * one the server tests read openapi.yaml with (tests/server/oapi.c, libyaml
 * into cJSON), so the two cannot disagree. */
#include "../tests/server/oapi.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: yaml2json FILE.yaml > FILE.json\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) return perror(argv[1]), 1;
    size_t cap = 1 << 16, n = 0, k;
    char *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += k) == cap && !(buf = realloc(buf, cap *= 2))) break;
    fclose(f);
    if (!buf) return fprintf(stderr, "out of memory\n"), 1;
    char err[300] = "";
    cJSON *doc = oapi_parse(buf, n, err, sizeof err);
    free(buf);
    if (!doc) return fprintf(stderr, "%s: %s\n", argv[1], err), 1;
    char *s = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (!s) return fprintf(stderr, "out of memory\n"), 1;
    puts(s);
    free(s);
    return 0;
}
