/* api_misc.c: the OpenAPI document (YAML and JSON) and the root page. */
#include "server.h"

#include <stdlib.h>
#include <string.h>

extern const char fd_asset_openapi[], fd_asset_openapi_json[], fd_asset_index[];
extern const unsigned long fd_asset_openapi_len, fd_asset_openapi_json_len, fd_asset_index_len;

enum MHD_Result fd_api_openapi(fd_req *r, char **a) {
    (void)a;
    return fd_send_static(r, "application/yaml", fd_asset_openapi, fd_asset_openapi_len);
}

/* the same document as JSON (converted at build time: tools/yaml2json.c) */
enum MHD_Result fd_api_openapi_json(fd_req *r, char **a) {
    (void)a;
    return fd_send_static(r, "application/json", fd_asset_openapi_json, fd_asset_openapi_json_len);
}

/* GET /: the dashboard page when it is built in, else a JSON index of the
 * service's entry points. */
enum MHD_Result fd_api_dashboard(fd_req *r, char **a) {
    (void)a;
    if (fd_asset_index_len > 0) return fd_send_static(r, "text/html; charset=utf-8", fd_asset_index, fd_asset_index_len);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "service", "flowd");
    cJSON_AddStringToObject(o, "version", FD_VERSION);
    cJSON_AddStringToObject(o, "openapi", "/openapi.yaml");
    cJSON_AddStringToObject(o, "models", "/v1/models");
    cJSON_AddStringToObject(o, "jobs", "/v1/jobs");
    cJSON_AddStringToObject(o, "health", "/healthz");
    return fd_send_json(r, 200, o);
}
