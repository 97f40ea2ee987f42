/* gen_seeds.c: writes the binary seed corpus (valid inputs) under
 * fuzz/corpus/<harness>/.  Build and run from the repository root with
 *   make fuzz-seeds
 * The text seeds (CSV, JSON) are committed as written by hand. */
#include "fuzz.h"
#include "fixtures.h"
#include "../core/model.h"

#include <zlib.h>

static void put(const char *dir, const char *name, int flag, const void *p, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "fuzz/corpus/%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    if (flag >= 0) fputc(flag, f);
    if (n && fwrite(p, 1, n, f) != n) exit(1);
    fclose(f);
}

/* .npy: magic, version, header dict padded to 64 bytes, data */
static size_t npy(unsigned char *out, int major, const char *dict, const void *data, size_t dlen) {
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict), hl = dl + 1;
    while ((pre + hl) % 64) hl++;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    out[8] = hl & 255;
    out[9] = (hl >> 8) & 255;
    if (major != 1) out[10] = (hl >> 16) & 255, out[11] = (hl >> 24) & 255;
    memcpy(out + pre, dict, dl);
    memset(out + pre + dl, ' ', hl - dl - 1);
    out[pre + hl - 1] = '\n';
    memcpy(out + pre + hl, data, dlen);
    return pre + hl + dlen;
}

static size_t gzip(const void *in, size_t len, unsigned char *out, size_t cap) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) exit(1);
    z.next_in = (unsigned char *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) exit(1);
    size_t n = z.total_out;
    deflateEnd(&z);
    return n;
}

static void npy_seeds(void) {
    unsigned char b[1024];
    float f4[6] = {0.5f, -1, 2.25f, 3, 1e-3f, -7};
    double f8[3] = {1.5, -2, 3e10};
    unsigned char u1[12] = {0, 1, 2, 255, 4, 5, 6, 7, 8, 9, 10, 11};
    unsigned char i2be[8] = {0, 1, 255, 254, 0, 3, 1, 0};
    int64_t i8[4] = {1, -2, 3, 4};
    put("npy", "f4_2d.npy", -1, b, npy(b, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", f4, sizeof f4));
    put("npy", "f8_1d.npy", -1, b, npy(b, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", f8, sizeof f8));
    put("npy", "u1_3d.npy", -1, b, npy(b, 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 2), }", u1, sizeof u1));
    put("npy", "i2_be_v2.npy", -1, b, npy(b, 2, "{'descr': '>i2', 'fortran_order': False, 'shape': (2, 2), }", i2be, sizeof i2be));
    put("npy", "i8_v3.npy", -1, b, npy(b, 3, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }", i8, sizeof i8));
    /* log_prob bodies (route 0, NPY content type) of width 2 */
    unsigned char r[1024];
    size_t n = npy(b, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", f4, sizeof f4);
    r[0] = 0, r[1] = 3;
    memcpy(r + 2, b, n);
    put("request", "log_prob.npy", -1, r, n + 2);
    r[1] = 3 | (2 << 3);
    put("request", "log_prob_accept_npy.npy", -1, r, n + 2);
    r[0] = 4, r[1] = 2 << 5;
    put("request", "dataset_npy", -1, r, n + 2);
}

static void idx_seeds(void) {
    unsigned char b[256], g[512];
    /* u8 images (2,3,3) */
    unsigned char u8[4 + 12 + 18] = {0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3};
    for (int i = 0; i < 18; i++) u8[16 + i] = (unsigned char)(i * 14);
    put("idx", "u8_images.idx", -1, u8, sizeof u8);
    put("idx", "u8_images.idx.gz", -1, g, gzip(u8, sizeof u8, g, sizeof g));
    /* u8 labels (4,) */
    unsigned char lab[8 + 4] = {0, 0, 0x08, 1, 0, 0, 0, 4, 3, 1, 4, 1};
    put("idx", "u8_labels.idx", -1, lab, sizeof lab);
    /* f32 (2,2), i16 (3,1), i32 (1,2), f64 (1,1), i8 (2,) big-endian */
    unsigned char f32[12 + 16] = {0, 0, 0x0D, 2, 0, 0, 0, 2, 0, 0, 0, 2,
                                  0x3f, 0x80, 0, 0, 0xc0, 0, 0, 0, 0x40, 0x40, 0, 0, 0, 0, 0, 0};
    put("idx", "f32.idx", -1, f32, sizeof f32);
    unsigned char i16[12 + 6] = {0, 0, 0x0B, 2, 0, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xfe, 0, 7, 1, 0};
    put("idx", "i16.idx", -1, i16, sizeof i16);
    unsigned char i32[12 + 8] = {0, 0, 0x0C, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xfd};
    put("idx", "i32.idx", -1, i32, sizeof i32);
    unsigned char f64[12 + 8] = {0, 0, 0x0E, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0};
    put("idx", "f64.idx", -1, f64, sizeof f64);
    unsigned char i8[8 + 2] = {0, 0, 0x09, 1, 0, 0, 0, 2, 0x80, 0x7f};
    put("idx", "i8.idx", -1, i8, sizeof i8);
    b[0] = 4, b[1] = 0; /* datasets route, auto-detected gzip */
    size_t n = gzip(u8, sizeof u8, b + 2, sizeof b - 2);
    put("request", "dataset_idx_gz", -1, b, n + 2);
}

static void model_seeds(void) {
    static const char *const specs[] = {
        FX_TRAIN_SPEC,
        "{\"dim\":3,\"context_dim\":2,\"layers\":[{\"type\":\"maf\",\"hidden\":[5]},"
        "{\"type\":\"permute\"},{\"type\":\"spline_coupling\",\"hidden\":[4]}]}",
        "{\"dim\":2,\"layers\":[{\"type\":\"elementwise_affine\",\"shift\":[0,0],\"scale\":[256,256]},"
        "{\"type\":\"logit\",\"alpha\":0.05},{\"type\":\"lu_linear\"},{\"type\":\"batchnorm\"}],"
        "\"base\":{\"type\":\"mixture\",\"components\":2}}",
    };
    for (int i = 0; i < 3; i++) {
        nf_flow *f = fx_flow(specs[i]);
        nf_flow_init(f, 11);
        cJSON *pre = cJSON_Parse(i == 2 ? "{\"standardize\":false,\"dequantize\":{\"kind\":\"uniform\","
                                          "\"levels\":256},\"logit\":{\"alpha\":0.05}}"
                                        : "{\"standardize\":true,\"dequantize\":null,\"logit\":null}");
        cJSON *met = cJSON_Parse("{\"val_nll\":1.5,\"epochs\":3}");
        void *buf = NULL;
        size_t len = 0;
        if (nf_model_save(f, pre, met, "2024-01-01T00:00:00Z", &buf, &len)) exit(1);
        char name[32];
        snprintf(name, sizeof name, "model%d.flow", i);
        put("model", name, 1, buf, len);
        if (i == 0) put("model", "model0_nofix.flow", 0, buf, len);
        free(buf);
        cJSON_Delete(pre);
        cJSON_Delete(met);
        nf_flow_free(f);
    }
}

static void params_seeds(void) {
    nf_flow *f = fx_flow(FX_PARAMS_SPEC);
    nf_flow_init(f, 5);
    void *buf = NULL;
    size_t len = 0;
    if (nf_flow_save_params(f, &buf, &len)) exit(1);
    put("params", "params.nfpb", 1, buf, len);
    put("params", "params_nofix.nfpb", 0, buf, len);
    free(buf);
    nf_adam o;
    if (nf_adam_init(&o, NF_OPT_ADAMW, nf_flow_num_params(f), 0.01)) exit(1);
    for (size_t i = 0; i < nf_flow_num_params(f); i++) nf_flow_grad(f)[i] = (nf_real)(0.01 * (i % 7));
    nf_adam_step(&o, nf_flow_params(f), nf_flow_grad(f), 1e-3);
    if (nf_adam_save(&o, &buf, &len)) exit(1);
    put("params", "adam.nfop", 1, buf, len);
    free(buf);
    nf_adam_free(&o);
    nf_flow_free(f);
}

static int ck_n;
static int keep(void *user, const void *state, size_t len, int64_t step) {
    char name[32];
    snprintf(name, sizeof name, "state_step%lld.nfts", (long long)step);
    if (ck_n++ < 3) put("train_state", name, 1, state, len);
    return 0;
}

static void train_seeds(void) {
    nf_flow *f = fx_flow(FX_TRAIN_SPEC);
    nf_trainer *t = fx_trainer(f);
    void *buf = NULL;
    size_t len = 0;
    if (nf_trainer_save_state(t, &buf, &len)) exit(1);
    put("train_state", "state_fresh.nfts", 1, buf, len);
    free(buf);
    nf_train_hooks h;
    memset(&h, 0, sizeof h);
    h.checkpoint = keep;
    h.checkpoint_every = 3;
    nf_trainer_run(t, &h);
    if (nf_trainer_save_state(t, &buf, &len)) exit(1);
    put("train_state", "state_done.nfts", 1, buf, len);
    free(buf);
    nf_trainer_free(t);
    nf_flow_free(f);
}

int main(void) {
    npy_seeds();
    idx_seeds();
    model_seeds();
    params_seeds();
    train_seeds();
    return 0;
}
