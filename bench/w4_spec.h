/* w4_spec.h: the W4 image Glow as an explicit layer list (1x28x28, 2
 * levels x 8 steps of channel_actnorm, invconv, conv affine coupling with
 * 64 hidden channels, a split between, preprocessing x/256 - 1/2), shared
 * by bench_core.c and bench/w4_micro so both time the same flow.  Returns
 * the spec text (caller frees) or NULL when out of memory. */
#ifndef W4_SPEC_H
#define W4_SPEC_H

#include <cjson/cJSON.h>
#include <stdio.h>

#define W4_LEVELS 2
#define W4_K 8
#define W4_HIDDEN 64

static inline char *w4_spec(void) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "shape", cJSON_CreateIntArray((const int[]){1, 28, 28}, 3));
    cJSON_AddNumberToObject(root, "seed", 1);
    cJSON *layers = cJSON_AddArrayToObject(root, "layers");
    double shift[784], scale[784];
    for (int i = 0; i < 784; i++) shift[i] = 128, scale[i] = 256;
    cJSON *pre = cJSON_CreateObject();
    cJSON_AddStringToObject(pre, "type", "elementwise_affine");
    cJSON_AddItemToObject(pre, "shift", cJSON_CreateDoubleArray(shift, 784));
    cJSON_AddItemToObject(pre, "scale", cJSON_CreateDoubleArray(scale, 784));
    cJSON_AddItemToArray(layers, pre);
    int seed = 1;
    for (int lv = 0; lv < W4_LEVELS; lv++) {
        cJSON_AddItemToArray(layers, cJSON_Parse("{\"type\":\"squeeze\"}"));
        for (int k = 0; k < W4_K; k++) {
            char inv[64], cc[256];
            snprintf(inv, sizeof inv, "{\"type\":\"invconv\",\"seed\":%d}", seed++);
            snprintf(cc, sizeof cc,
                     "{\"type\":\"conv_coupling\",\"transform\":\"affine\",\"mask\":\"channel\","
                     "\"net\":\"glow\",\"hidden_channels\":%d,\"scale\":\"sigmoid\"}", W4_HIDDEN);
            cJSON_AddItemToArray(layers, cJSON_Parse("{\"type\":\"channel_actnorm\"}"));
            cJSON_AddItemToArray(layers, cJSON_Parse(inv));
            cJSON_AddItemToArray(layers, cJSON_Parse(cc));
        }
        if (lv < W4_LEVELS - 1) cJSON_AddItemToArray(layers, cJSON_Parse("{\"type\":\"split\"}"));
    }
    char *txt = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return txt;
}

#endif
