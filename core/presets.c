/* presets.c: whole flows from a few numbers.  A preset spec
 *   {"dim":D, "preset":NAME, "depth"?, "hidden"?, "activation"?, "bins"?,
 *    "tail_bound"?, "base"?, "context_dim"?, "seed"?}
 * expands into an explicit layer list (what nf_flow_config_json returns), so
 * a preset model is stored and reloaded like any hand-written spec.
 *
 * Defaults follow the papers' tabular/toy settings, scaled to vector data:
 *   realnvp  (Dinh 2016):   depth 8 affine couplings, alternating even/odd
 *                           masks, MLP [128,128]
 *   nice     (Dinh 2014):   depth 4 additive couplings, MLP [128,128,128],
 *                           then a learnable diagonal scaling (actnorm
 *                           without data init)
 *   maf      (Papamakarios 2017): depth 5 MADE affine layers [512,512],
 *                           reversing the order between layers
 *   iaf      (Kingma 2016): as maf with inverse autoregressive layers
 *   nsf      (Durkan 2019): depth 5 rational-quadratic spline couplings,
 *                           8 bins, tail bound 3, resnet [256] x 2 blocks,
 *                           alternating masks, LU linear between steps
 *   nsf_ar   (Durkan 2019): depth 5 autoregressive RQ splines, MADE
 *                           [128,128], reversed between layers
 *   glow     (Kingma 2018): depth 8 steps of actnorm, LU linear, affine
 *                           coupling [256,256]
 */
#include "nf_internal.h"

#include <string.h>

int nf_preset_expand(const cJSON *spec, cJSON **out, char *err, size_t errlen);

/* The builders below count failed allocations in *bad instead of checking
 * each call: an item that could not be attached is deleted (cJSON leaves it
 * to the caller), and the caller gives up with NF_ENOMEM at the end. */
static void add(cJSON *o, const char *k, cJSON *item, int *bad) {
    if (!item || !o || !cJSON_AddItemToObject(o, k, item)) {
        cJSON_Delete(item);
        ++*bad;
    }
}
#define ADD_NUM(o, k, v) add(o, k, cJSON_CreateNumber(v), bad)
#define ADD_STR(o, k, v) add(o, k, cJSON_CreateString(v), bad)

static cJSON *layer(cJSON *arr, const char *type, int *bad) {
    cJSON *l = cJSON_CreateObject();
    if (!l || !cJSON_AddItemToArray(arr, l)) {
        cJSON_Delete(l);
        ++*bad;
        return NULL;
    }
    ADD_STR(l, "type", type);
    return l;
}

static void add_hidden(cJSON *l, const int *h, int nh, const char *act, int *bad) {
    add(l, "hidden", cJSON_CreateIntArray(h, nh), bad);
    ADD_STR(l, "activation", act);
}

int nf_preset_expand(const cJSON *spec, cJSON **out, char *err, size_t errlen) {
    static const char *const keys[] = {"dim", "context_dim", "preset", "depth", "hidden",
                                       "activation", "bins", "tail_bound", "base", "seed",
                                       NULL};
    *out = NULL;
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    const char *name = nf_json_str(spec, "preset", NULL);
    if (!name) {
        nf_set_err(err, errlen, "\"preset\" must be a string");
        return NF_EINVAL;
    }
    struct {
        const char *name;
        int depth;
        int hidden[2], nh;
    } presets[] = {
        {"realnvp", 8, {128, 128}, 2}, {"nice", 4, {128, 128}, 2}, {"maf", 5, {512, 512}, 2},
        {"iaf", 5, {512, 512}, 2},     {"nsf", 5, {256, 0}, 1},    {"nsf_ar", 5, {128, 128}, 2},
        {"glow", 8, {256, 256}, 2},
    };
    int p = -1;
    for (int i = 0; i < (int)(sizeof presets / sizeof presets[0]); i++)
        if (!strcmp(name, presets[i].name)) p = i;
    if (p < 0) {
        nf_set_err(err, errlen,
                   "unknown preset \"%s\" (realnvp, nice, maf, iaf, nsf, nsf_ar, glow)", name);
        return NF_EINVAL;
    }
    int D, depth, bins, hidden[16], nh;
    double tail, seed;
    nf_act act;
    if ((rc = nf_json_int(spec, "dim", 0, 1, 65536, &D, err, errlen))) return rc;
    if ((rc = nf_json_int(spec, "depth", presets[p].depth, 1, 128, &depth, err, errlen)))
        return rc;
    if ((rc = nf_json_int(spec, "bins", 8, 2, 64, &bins, err, errlen))) return rc;
    if ((rc = nf_json_num(spec, "tail_bound", 3.0, 1e-3, 1e6, &tail, err, errlen))) return rc;
    if ((rc = nf_json_num(spec, "seed", 0, 0, 9007199254740992.0, &seed, err, errlen))) return rc;
    nh = nf_json_int_list(spec, "hidden", presets[p].hidden, presets[p].nh, hidden, 16, err,
                          errlen);
    if (nh < 0) return nh;
    const char *as = nf_json_str(spec, "activation", "relu");
    if (!as || nf_act_parse(as, &act)) {
        nf_set_err(err, errlen, "\"activation\" must be \"relu\", \"tanh\" or \"elu\"");
        return NF_EINVAL;
    }
    int coupling = strcmp(name, "maf") && strcmp(name, "iaf") && strcmp(name, "nsf_ar");
    if (coupling && D < 2) {
        nf_set_err(err, errlen, "preset \"%s\" uses coupling layers and needs dim >= 2", name);
        return NF_EINVAL;
    }
    if (!nf_json_get(spec, "dim")) {
        nf_set_err(err, errlen, "\"dim\" is required");
        return NF_EINVAL;
    }
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!o || !arr) {
        cJSON_Delete(o);
        cJSON_Delete(arr);
        return NF_ENOMEM;
    }
    int nbad = 0, *bad = &nbad;
    ADD_NUM(o, "dim", D);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(spec, "context_dim");
    if (c) add(o, "context_dim", cJSON_Duplicate(c, 1), bad);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(spec, "base");
    if (b) add(o, "base", cJSON_Duplicate(b, 1), bad);
    ADD_NUM(o, "seed", seed);
    add(o, "layers", arr, bad);
    if (nbad) arr = NULL; /* deleted by add() */
    const char *an = nf_act_name(act);
    for (int k = 0; k < depth; k++) {
        cJSON *l;
        const char *mask = k % 2 ? "odd" : "even";
        if (!strcmp(name, "realnvp") || !strcmp(name, "nice")) {
            l = layer(arr, name[0] == 'r' ? "affine_coupling" : "additive_coupling", bad);
            ADD_STR(l, "mask", mask);
            add_hidden(l, hidden, nh, an, bad);
        } else if (!strcmp(name, "maf") || !strcmp(name, "iaf") || !strcmp(name, "nsf_ar")) {
            l = layer(arr, name[0] == 'n' ? "spline_ar" : name, bad);
            add_hidden(l, hidden, nh, an, bad);
            if (name[0] == 'n') {
                ADD_NUM(l, "bins", bins);
                ADD_NUM(l, "tail_bound", tail);
            }
            if (k < depth - 1 && D > 1) {
                l = layer(arr, "permute", bad);
                ADD_STR(l, "order", "reverse");
            }
        } else if (!strcmp(name, "nsf")) {
            l = layer(arr, "spline_coupling", bad);
            ADD_STR(l, "mask", mask);
            ADD_STR(l, "net", "resnet");
            add(l, "hidden", cJSON_CreateIntArray(hidden, 1), bad);
            ADD_NUM(l, "blocks", 2);
            ADD_STR(l, "activation", an);
            ADD_NUM(l, "bins", bins);
            ADD_NUM(l, "tail_bound", tail);
            if (k < depth - 1) {
                l = layer(arr, "lu_linear", bad);
                ADD_NUM(l, "seed", seed + k);
            }
        } else { /* glow */
            layer(arr, "actnorm", bad);
            l = layer(arr, "lu_linear", bad);
            ADD_NUM(l, "seed", seed + k);
            l = layer(arr, "affine_coupling", bad);
            ADD_STR(l, "mask", mask);
            add_hidden(l, hidden, nh, an, bad);
        }
    }
    if (!strcmp(name, "nice")) {
        cJSON *l = layer(arr, "actnorm", bad);
        add(l, "data_init", cJSON_CreateFalse(), bad);
    }
    if (nbad) {
        cJSON_Delete(o);
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    *out = o;
    return 0;
}
