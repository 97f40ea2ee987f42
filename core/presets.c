/* presets.c: whole flows from a few numbers.  A preset spec
 *   {"dim":D, "preset":NAME, "depth"?, "hidden"?, "activation"?, "bins"?,
 *    "tail_bound"?, "base"?, "context_dim"?, "seed"?}
 * (ffjord also takes the cnf layer's ODE settings, passed to each block,
 * and "actnorm" between blocks; the other presets refuse them)
 * expands into an explicit layer list (what nf_flow_config_json returns), so
 * a preset model is stored and reloaded like any hand-written spec.
 *
 * Every preset is one row of the table below (presets[]): its name,
 * the layer type it repeats, its default depth and hidden widths, whether
 * it needs dim >= 2 (coupling masks), and a function that appends step k of
 * depth (plus an optional one that appends layers after the last step).
 * All presets take the same overrides (the keys above); those a preset has
 * no use for (bins for realnvp, say) are accepted and ignored.  The rows
 * cite the papers whose tabular/toy settings they follow, scaled to vector
 * data.
 *
 * A flow with a "shape" and preset "glow" or "realnvp" gets the papers'
 * multiscale image architecture instead (image_presets[] below), with the
 * overrides "levels", "depth" (steps per level), "hidden_channels",
 * "blocks" (realnvp's residual blocks), "base" and "seed"; the vector
 * overrides ("hidden", "activation", "bins", "tail_bound") choose the
 * vector form instead, so job files written before the image presets keep
 * their meaning, and the image overrides are refused there.  The other
 * presets on an image shape are their vector selves (the shape is kept, for
 * pictures).
 */
#include "nf_internal.h"

#include <stdio.h>
#include <string.h>

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

/* What the step builders read: the spec's numbers, range-checked. */
typedef struct preset_args {
    const char *layer; /* the preset's layer type */
    int D, depth, bins, nh, hidden[16];
    double tail, seed;
    const char *act;   /* canonical activation name */
    const cJSON *spec; /* the preset spec (ffjord passes its ODE keys on) */
    int actnorm;       /* ffjord: actnorm between blocks */
} preset_args;

typedef void (*preset_step_fn)(cJSON *arr, const preset_args *a, int k, int *bad);
typedef void (*preset_end_fn)(cJSON *arr, const preset_args *a, int *bad);

static const char *mask_of(int k) { return k % 2 ? "odd" : "even"; }

/* a coupling layer (a->layer) with alternating masks and an MLP */
static void step_coupling(cJSON *arr, const preset_args *a, int k, int *bad) {
    cJSON *l = layer(arr, a->layer, bad);
    ADD_STR(l, "mask", mask_of(k));
    add_hidden(l, a->hidden, a->nh, a->act, bad);
}

/* between autoregressive steps: reverse the order of the dimensions */
static void reverse_between(cJSON *arr, const preset_args *a, int k, int *bad) {
    if (k < a->depth - 1 && a->D > 1) {
        cJSON *l = layer(arr, "permute", bad);
        ADD_STR(l, "order", "reverse");
    }
}

/* between coupling steps: a learnt mixing of the dimensions */
static void lu_linear(cJSON *arr, const preset_args *a, int k, int *bad) {
    cJSON *l = layer(arr, "lu_linear", bad);
    ADD_NUM(l, "seed", a->seed + k);
}

/* a MADE layer (a->layer: maf or iaf) */
static void step_made(cJSON *arr, const preset_args *a, int k, int *bad) {
    cJSON *l = layer(arr, a->layer, bad);
    add_hidden(l, a->hidden, a->nh, a->act, bad);
    reverse_between(arr, a, k, bad);
}

static void step_spline_ar(cJSON *arr, const preset_args *a, int k, int *bad) {
    cJSON *l = layer(arr, "spline_ar", bad);
    add_hidden(l, a->hidden, a->nh, a->act, bad);
    ADD_NUM(l, "bins", a->bins);
    ADD_NUM(l, "tail_bound", a->tail);
    reverse_between(arr, a, k, bad);
}

/* a spline coupling with a resnet conditioner (one width), LU between */
static void step_nsf(cJSON *arr, const preset_args *a, int k, int *bad) {
    cJSON *l = layer(arr, "spline_coupling", bad);
    ADD_STR(l, "mask", mask_of(k));
    ADD_STR(l, "net", "resnet");
    add(l, "hidden", cJSON_CreateIntArray(a->hidden, 1), bad);
    ADD_NUM(l, "blocks", 2);
    ADD_STR(l, "activation", a->act);
    ADD_NUM(l, "bins", a->bins);
    ADD_NUM(l, "tail_bound", a->tail);
    if (k < a->depth - 1) lu_linear(arr, a, k, bad);
}

/* actnorm, LU linear, affine coupling */
static void step_glow(cJSON *arr, const preset_args *a, int k, int *bad) {
    layer(arr, "actnorm", bad);
    lu_linear(arr, a, k, bad);
    step_coupling(arr, a, k, bad);
}

/* The ODE settings the ffjord preset passes to each of its cnf layers
 * (core/cnf.c checks them) */
static const char *const ode_keys[] = {"solver", "steps", "rtol", "atol", "max_steps", "trace",
                                       "probe", "gradient", "reg_kinetic", "reg_jacobian", NULL};

/* Grathwohl 2019: CNF blocks, actnorm between them (their tabular models'
 * batch norm, without batch statistics) */
static void step_cnf(cJSON *arr, const preset_args *a, int k, int *bad) {
    if (k > 0 && a->actnorm) layer(arr, "actnorm", bad);
    cJSON *l = layer(arr, "cnf", bad);
    add_hidden(l, a->hidden, a->nh, a->act, bad);
    for (int i = 0; l && ode_keys[i]; i++) {
        const cJSON *v = nf_json_get(a->spec, ode_keys[i]);
        if (v) add(l, ode_keys[i], cJSON_Duplicate(v, 1), bad);
    }
}

/* NICE's final learnable diagonal scaling: actnorm without data init */
static void end_nice(cJSON *arr, const preset_args *a, int *bad) {
    cJSON *l = layer(arr, "actnorm", bad);
    add(l, "data_init", cJSON_CreateFalse(), bad);
}

/* ---- image presets: flows with a "shape" ----------------------------------
 * The multiscale architectures of the papers, on the image layers
 * (core/image.c, core/conv_coupling.c).  Each level squeezes (2x2
 * space-to-depth), runs its steps, and, except the last, factors half of its
 * channels out (split, Glow's learned prior).  levels defaults to as many as
 * the height and width allow, at most 3; each level needs both even. */
typedef struct image_args {
    int C, H, W, levels, depth, hidden, blocks;
    double seed;
} image_args;
typedef void (*preset_image_fn)(cJSON *arr, const image_args *a, int *bad);

static void conv_coupling(cJSON *arr, const char *mask, const char *net, const char *scale,
                          const image_args *a, int *bad) {
    cJSON *l = layer(arr, "conv_coupling", bad);
    ADD_STR(l, "transform", "affine");
    ADD_STR(l, "mask", mask);
    ADD_STR(l, "scale", scale);
    ADD_STR(l, "net", net);
    ADD_NUM(l, "hidden_channels", a->hidden);
    if (!strcmp(net, "resnet")) ADD_NUM(l, "blocks", a->blocks);
}

/* Kingma 2018: L levels of squeeze, K x [actnorm, invertible 1x1 conv,
 * affine coupling (Glow's network, sigmoid scale)], split */
static void image_glow(cJSON *arr, const image_args *a, int *bad) {
    for (int l = 0; l < a->levels; l++) {
        layer(arr, "squeeze", bad);
        for (int k = 0; k < a->depth; k++) {
            layer(arr, "channel_actnorm", bad);
            cJSON *inv = layer(arr, "invconv", bad);
            ADD_NUM(inv, "seed", a->seed + l * 1000 + k);
            conv_coupling(arr, "channel", "glow", "sigmoid", a, bad);
        }
        if (l < a->levels - 1) layer(arr, "split", bad);
    }
}

/* Dinh 2016: at each scale `depth` (3 in the paper) checkerboard couplings,
 * squeeze, `depth` channel couplings, split; the last scale 4 checkerboard
 * couplings.  Masks alternate; residual networks; actnorm in place of the
 * paper's batch normalisation (batch statistics would make a row's density
 * depend on its batch). */
static void image_realnvp(cJSON *arr, const image_args *a, int *bad) {
    static const char *const cb[2] = {"checkerboard", "checkerboard_odd"};
    static const char *const ch[2] = {"channel", "channel_odd"};
    for (int l = 0; l < a->levels; l++) {
        int last = l == a->levels - 1, n = last ? a->depth + 1 : a->depth;
        for (int k = 0; k < n; k++) {
            layer(arr, "channel_actnorm", bad);
            conv_coupling(arr, cb[k % 2], "resnet", "exp", a, bad);
        }
        if (last) break;
        layer(arr, "squeeze", bad);
        for (int k = 0; k < a->depth; k++) {
            layer(arr, "channel_actnorm", bad);
            conv_coupling(arr, ch[k % 2], "resnet", "exp", a, bad);
        }
        layer(arr, "split", bad);
    }
}

static const struct image_preset {
    const char *name;
    int depth, hidden, blocks;
    preset_image_fn build;
    int squeeze_first; /* the first level squeezes before its steps (glow) */
    int min_pixels;    /* the last level's image needs this many (checkerboards: 2) */
} image_presets[] = {
    {"glow", 8, 64, 0, image_glow, 1, 1},
    {"realnvp", 3, 64, 2, image_realnvp, 0, 2},
};

static const struct preset {
    const char *name;
    const char *layer;   /* the layer type it repeats (preset_args.layer) */
    int depth;           /* default depth */
    int hidden[3], nh;   /* default hidden widths */
    int coupling;        /* needs dim >= 2 */
    const char *act;     /* default activation (NULL: relu) */
    preset_step_fn step; /* appends step k of depth */
    preset_end_fn end;   /* optional: appends layers after the last step */
} presets[] = {
    /* Dinh 2016: alternating even/odd masks */
    {"realnvp", "affine_coupling", 8, {128, 128}, 2, 1, NULL, step_coupling, NULL},
    /* Dinh 2014: then a learnable diagonal scaling */
    {"nice", "additive_coupling", 4, {128, 128}, 2, 1, NULL, step_coupling, end_nice},
    /* Papamakarios 2017: reversing the order between layers */
    {"maf", "maf", 5, {512, 512}, 2, 0, NULL, step_made, NULL},
    /* Kingma 2016: as maf with inverse autoregressive layers */
    {"iaf", "iaf", 5, {512, 512}, 2, 0, NULL, step_made, NULL},
    /* Durkan 2019: 8 bins, tail bound 3, resnet [256] x 2 blocks,
     * alternating masks, LU linear between steps */
    {"nsf", "spline_coupling", 5, {256, 0}, 1, 1, NULL, step_nsf, NULL},
    /* Durkan 2019: autoregressive RQ splines, reversed between layers */
    {"nsf_ar", "spline_ar", 5, {128, 128}, 2, 0, NULL, step_spline_ar, NULL},
    /* Kingma 2018: steps of actnorm, LU linear, affine coupling */
    {"glow", "affine_coupling", 8, {256, 256}, 2, 1, NULL, step_glow, NULL},
    /* Grathwohl 2019: CNF blocks of concat-squash MLPs [64,64,64] (their 2-D
     * toy models), tanh, dopri5 at rtol = atol = 1e-5, actnorm between */
    {"ffjord", "cnf", 1, {64, 64, 64}, 3, 0, "tanh", step_cnf, NULL},
};
#define NPRESETS ((int)(sizeof presets / sizeof presets[0]))

const char *nf_preset_name(int i) { return i >= 0 && i < NPRESETS ? presets[i].name : NULL; }

static const struct preset *find_preset(const char *name, char *err, size_t errlen) {
    char names[200] = "";
    size_t n = 0;
    for (int i = 0; i < NPRESETS; i++) {
        if (!strcmp(name, presets[i].name)) return &presets[i];
        n += (size_t)snprintf(names + n, n < sizeof names ? sizeof names - n : 0, "%s%s",
                              i ? ", " : "", presets[i].name);
    }
    nf_set_err(err, errlen, "unknown preset \"%s\" (%s)", name, names);
    return NULL;
}

/* the spec's fields common to every preset's output: dim, shape, context_dim,
 * base, seed */
static cJSON *preset_head(const cJSON *spec, int D, const int *shape, double seed, int *bad) {
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        ++*bad;
        return NULL;
    }
    ADD_NUM(o, "dim", D);
    if (shape[0]) add(o, "shape", cJSON_CreateIntArray(shape, 3), bad);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(spec, "context_dim");
    if (c) add(o, "context_dim", cJSON_Duplicate(c, 1), bad);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(spec, "base");
    if (b) add(o, "base", cJSON_Duplicate(b, 1), bad);
    ADD_NUM(o, "seed", seed);
    return o;
}

static int expand_image(const cJSON *spec, const struct image_preset *p, cJSON **out, char *err,
                        size_t errlen) {
    image_args a = {0};
    int shape[3], rc, D = 0;
    if ((rc = nf_json_int(spec, "dim", 0, 1, 65536, &D, err, errlen))) return rc;
    if ((rc = nf_shape_parse(spec, D, shape, err, errlen))) return rc;
    a.C = shape[0], a.H = shape[1], a.W = shape[2];
    /* context_dim: the convolutional couplings read the context (as
     * constant planes, core/conv_coupling.c); the others ignore it */
    /* levels: each squeeze halves height and width; glow squeezes at every
     * level, realnvp between levels */
    int maxl = 0;
    for (int l = 1; l <= 3; l++) {
        int sq = p->squeeze_first ? l : l - 1;
        if (a.H % (1 << sq) || a.W % (1 << sq) || (a.H >> sq) * (a.W >> sq) < p->min_pixels) break;
        maxl = l;
    }
    if (maxl == 0) {
        nf_set_err(err, errlen, "preset \"%s\" squeezes 2x2: the image %dx%dx%d needs an even height "
                   "and width", p->name, a.C, a.H, a.W);
        return NF_EINVAL;
    }
    if ((rc = nf_json_int(spec, "levels", maxl, 1, 8, &a.levels, err, errlen))) return rc;
    int sq = p->squeeze_first ? a.levels : a.levels - 1;
    if (a.levels > maxl && (a.H % (1 << sq) || a.W % (1 << sq))) {
        nf_set_err(err, errlen, "\"levels\": %d levels of preset \"%s\" squeeze %d times, which "
                   "needs height and width divisible by %d; the image is %dx%dx%d (at most %d levels)",
                   a.levels, p->name, sq, 1 << sq, a.C, a.H, a.W, maxl);
        return NF_EINVAL;
    }
    if ((rc = nf_json_int(spec, "depth", p->depth, 1, 64, &a.depth, err, errlen))) return rc;
    if ((rc = nf_json_int(spec, "hidden_channels", p->hidden, 1, 1024, &a.hidden, err, errlen)))
        return rc;
    if ((rc = nf_json_int(spec, "blocks", p->blocks ? p->blocks : 1, 1, 16, &a.blocks, err, errlen)))
        return rc;
    if (!p->blocks && nf_json_get(spec, "blocks")) {
        nf_set_err(err, errlen, "\"blocks\" is for the realnvp preset's residual networks");
        return NF_EINVAL;
    }
    if ((rc = nf_json_num(spec, "seed", 0, 0, NF_JSON_SEED_MAX, &a.seed, err, errlen))) return rc;
    int nbad = 0, *bad = &nbad;
    cJSON *o = preset_head(spec, a.C * a.H * a.W, shape, a.seed, bad), *arr = cJSON_CreateArray();
    add(o, "layers", arr, bad);
    if (!nbad) p->build(arr, &a, bad);
    if (nbad) {
        cJSON_Delete(o);
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    *out = o;
    return 0;
}

/* the vector presets' overrides, which choose the vector form on an image */
static int has_vector_overrides(const cJSON *spec) {
    static const char *const keys[] = {"hidden", "activation", "bins", "tail_bound", NULL};
    for (int i = 0; keys[i]; i++)
        if (nf_json_get(spec, keys[i])) return 1;
    return 0;
}

int nf_flow_spec_is_image(const cJSON *spec) {
    static const char *const image_layers[] = {"squeeze", "split", "channel_actnorm", "invconv",
                                               "conv_coupling", NULL};
    const char *name = nf_json_str(spec, "preset", NULL);
    if (name) {
        if (has_vector_overrides(spec)) return 0;
        for (size_t i = 0; i < sizeof image_presets / sizeof image_presets[0]; i++)
            if (!strcmp(name, image_presets[i].name)) return 1;
        return 0;
    }
    const cJSON *l;
    cJSON_ArrayForEach(l, nf_json_get(spec, "layers")) {
        const char *t = nf_json_str(l, "type", NULL);
        for (int i = 0; t && image_layers[i]; i++)
            if (!strcmp(t, image_layers[i])) return 1;
    }
    return 0;
}

int nf_preset_expand(const cJSON *spec, cJSON **out, char *err, size_t errlen) {
    static const char *const keys[] = {"dim", "context_dim", "shape", "preset", "depth",
                                       "hidden", "activation", "bins", "tail_bound", "base",
                                       "seed", "levels", "hidden_channels", "blocks", "solver",
                                       "steps", "rtol", "atol", "max_steps", "trace", "probe",
                                       "gradient", "reg_kinetic", "reg_jacobian", "actnorm", NULL};
    *out = NULL;
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    const char *name = nf_json_str(spec, "preset", NULL);
    if (!name) {
        nf_set_err(err, errlen, "\"preset\" must be a string");
        return NF_EINVAL;
    }
    /* the vector overrides choose the vector form on an image too (job files
     * written before the image presets keep their meaning) */
    if (nf_json_get(spec, "shape") && !has_vector_overrides(spec))
        for (size_t i = 0; i < sizeof image_presets / sizeof image_presets[0]; i++)
            if (!strcmp(name, image_presets[i].name))
                return expand_image(spec, &image_presets[i], out, err, errlen);
    static const char *const image_only[] = {"levels", "hidden_channels", "blocks", NULL};
    for (int i = 0; image_only[i]; i++)
        if (nf_json_get(spec, image_only[i])) {
            nf_set_err(err, errlen, "\"%s\" is for the image presets (glow, realnvp on a flow "
                       "with a \"shape\", without the vector overrides hidden, activation, bins, "
                       "tail_bound)", image_only[i]);
            return NF_EINVAL;
        }
    const struct preset *p = find_preset(name, err, errlen);
    if (!p) return NF_EINVAL;
    preset_args a = {.layer = p->layer, .spec = spec};
    for (int i = 0; p->step != step_cnf && (i == 0 || ode_keys[i - 1]); i++) {
        const char *k = ode_keys[i] ? ode_keys[i] : "actnorm";
        if (nf_json_get(spec, k)) {
            nf_set_err(err, errlen, "\"%s\" is for the ffjord preset (continuous flows)", k);
            return NF_EINVAL;
        }
    }
    if ((rc = nf_json_bool(spec, "actnorm", 1, &a.actnorm, err, errlen))) return rc;
    nf_act act;
    if ((rc = nf_json_int(spec, "dim", 0, 1, 65536, &a.D, err, errlen))) return rc;
    int shape[3];
    if ((rc = nf_shape_parse(spec, a.D, shape, err, errlen))) return rc;
    if (!a.D && shape[0]) a.D = shape[0] * shape[1] * shape[2];
    if ((rc = nf_json_int(spec, "depth", p->depth, 1, 128, &a.depth, err, errlen))) return rc;
    if ((rc = nf_json_int(spec, "bins", 8, 2, 64, &a.bins, err, errlen))) return rc;
    if ((rc = nf_json_num(spec, "tail_bound", 3.0, 1e-3, 1e6, &a.tail, err, errlen))) return rc;
    if ((rc = nf_json_num(spec, "seed", 0, 0, NF_JSON_SEED_MAX, &a.seed, err, errlen)))
        return rc;
    a.nh = nf_json_int_list(spec, "hidden", p->hidden, p->nh, a.hidden, 16, err, errlen);
    if (a.nh < 0) return a.nh;
    const char *as = nf_json_str(spec, "activation", p->act ? p->act : "relu");
    if (p->step == step_cnf && as) {
        a.act = as; /* tanh or softplus: the cnf layer checks it */
    } else if (!as || nf_act_parse(as, &act)) {
        nf_set_err(err, errlen, "\"activation\" must be \"relu\", \"tanh\" or \"elu\"");
        return NF_EINVAL;
    } else {
        a.act = nf_act_name(act);
    }
    if (p->coupling && a.D < 2) {
        nf_set_err(err, errlen, "preset \"%s\" uses coupling layers and needs dim >= 2", name);
        return NF_EINVAL;
    }
    if (!a.D) {
        nf_set_err(err, errlen, "\"dim\" is required");
        return NF_EINVAL;
    }
    int nbad = 0, *bad = &nbad;
    cJSON *o = preset_head(spec, a.D, shape, a.seed, bad), *arr = cJSON_CreateArray();
    if (!o || !arr) {
        cJSON_Delete(o);
        cJSON_Delete(arr);
        return NF_ENOMEM;
    }
    add(o, "layers", arr, bad);
    if (nbad) arr = NULL; /* deleted by add() */
    for (int k = 0; k < a.depth; k++) p->step(arr, &a, k, bad);
    if (p->end) p->end(arr, &a, bad);
    if (nbad) {
        cJSON_Delete(o);
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    *out = o;
    return 0;
}
