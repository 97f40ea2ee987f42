/* model.c: the model file (see model.h). */
#include "alloc.h"
#include "blob.h"
#include "model.h"

#include "nf_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int nf_model_save(const nf_flow *flow, const cJSON *preprocess, const cJSON *metrics,
                  const char *created_at, void **buf, size_t *len) {
    return nf_model_save_ex(flow, NULL, preprocess, metrics, created_at, buf, len);
}

static cJSON *config_of(const nf_flow *f) {
    char *cfg = nf_flow_config_json(f);
    cJSON *j = cfg ? cJSON_Parse(cfg) : NULL;
    nf_free(cfg);
    return j;
}

int nf_model_save_ex(const nf_flow *flow, const nf_flow *q, const cJSON *preprocess,
                     const cJSON *metrics, const char *created_at, void **buf, size_t *len) {
    unsigned fails = nf_alloc_failures; /* the header's cJSON_Add* calls are unchecked */
    cJSON *h = cJSON_CreateObject(), *flowj = config_of(flow), *qj = q ? config_of(q) : NULL;
    if (!h || !flowj || (q && !qj)) {
        cJSON_Delete(h);
        cJSON_Delete(flowj);
        cJSON_Delete(qj);
        return NF_ENOMEM;
    }
    int version = q ? 2 : 1;
    cJSON_AddStringToObject(h, "format", "flowd-model");
    cJSON_AddNumberToObject(h, "format_version", version);
    nf_json_attach(h, "flow", flowj);
    cJSON *pp = preprocess ? cJSON_Duplicate(preprocess, 1) : cJSON_CreateObject();
    nf_json_attach(h, "preprocess", pp);
    const cJSON *dq = preprocess ? cJSON_GetObjectItemCaseSensitive(preprocess, "dequantize") : NULL;
    cJSON_AddStringToObject(h, "likelihood",
                            dq && cJSON_IsObject(dq) ? "dequantized_lower_bound" : "exact");
    if (q) nf_json_attach(cJSON_AddObjectToObject(h, "dequantizer"), "flow", qj);
    nf_json_attach(h, "metrics", metrics ? cJSON_Duplicate(metrics, 1) : cJSON_CreateObject());
    if (created_at) cJSON_AddStringToObject(h, "created_at", created_at);
    char *hs = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (nf_alloc_failures != fails) {
        nf_free(hs);
        hs = NULL;
    }
    void *pb = NULL, *qb = NULL;
    size_t pl = 0, ql = 0;
    int rc = hs ? nf_flow_save_params(flow, &pb, &pl) : NF_ENOMEM;
    if (!rc && q) rc = nf_flow_save_params(q, &qb, &ql);
    if (rc) {
        nf_free(hs);
        nf_free(pb);
        return rc;
    }
    size_t hl = strlen(hs);
    nf_blob_writer w = nf_blob_writer_init(4 + 4 + 8 + hl + 8 + pl + (q ? 8 + ql : 0) + 4);
    nf_blob_put(&w, "NFMD", 4);
    nf_blob_put_u32(&w, (uint32_t)version);
    nf_blob_put_u64(&w, hl);
    nf_blob_put(&w, hs, hl);
    nf_blob_put_u64(&w, pl);
    nf_blob_put(&w, pb, pl);
    if (q) {
        nf_blob_put_u64(&w, ql);
        nf_blob_put(&w, qb, ql);
    }
    nf_free(hs);
    nf_free(pb);
    nf_free(qb);
    return nf_blob_finish(&w, buf, len);
}

int nf_model_pack(nf_model *m, size_t max_bytes) {
    int rc = nf_flow_pack_max(m->flow, max_bytes);
    if (!rc && m->dequantizer) rc = nf_flow_pack_max(m->dequantizer, max_bytes);
    return rc;
}

void nf_model_free(nf_model *m) {
    if (!m) return;
    nf_flow_free(m->flow);
    nf_flow_free(m->dequantizer);
    cJSON_Delete(m->header);
    nf_free(m);
}

int nf_model_load(const void *buf, size_t len, nf_model **out, char *err, size_t errlen) {
    const unsigned char *p = buf;
    *out = NULL;
    if (!p || len < 4 || memcmp(p, "NFMD", 4)) {
        nf_set_err(err, errlen, "not a flowd model file (bad magic)");
        return NF_EFORMAT;
    }
    if (len < 16 + 8 + 4) {
        nf_set_err(err, errlen, "model file truncated");
        return NF_ECORRUPT;
    }
    nf_blob_reader r = nf_blob_reader_init(p + 4, len - 4 - 4); /* magic, crc */
    unsigned version = nf_blob_u32(&r);
    if (version != 1 && version != 2) {
        nf_set_err(err, errlen, "model format version %u is not supported (this build reads 1 and 2)",
                   version);
        return NF_EFORMAT;
    }
    if (!nf_blob_crc_ok(p, len)) {
        nf_set_err(err, errlen, "model checksum mismatch: the file is corrupt or truncated");
        return NF_ECORRUPT;
    }
    uint64_t hl = nf_blob_u64(&r);
    const char *hs = hl <= len - 28 ? nf_blob_bytes(&r, hl) : NULL;
    if (!hs) {
        nf_set_err(err, errlen, "model header length out of range");
        return NF_ECORRUPT;
    }
    unsigned fails = nf_alloc_failures;
    cJSON *h = cJSON_ParseWithLength(hs, hl);
    if (!h && nf_alloc_failures != fails) {
        nf_set_err(err, errlen, "out of memory");
        return NF_ENOMEM;
    }
    const cJSON *fj = h ? cJSON_GetObjectItemCaseSensitive(h, "flow") : NULL;
    if (!fj || !cJSON_IsObject(fj)) {
        cJSON_Delete(h);
        nf_set_err(err, errlen, "model header is not valid JSON with a \"flow\" object");
        return NF_EFORMAT;
    }
    const cJSON *dqr = version >= 2 ? cJSON_GetObjectItemCaseSensitive(h, "dequantizer") : NULL;
    const cJSON *qj = dqr ? cJSON_GetObjectItemCaseSensitive(dqr, "flow") : NULL;
    if (dqr && !cJSON_IsObject(qj)) {
        cJSON_Delete(h);
        nf_set_err(err, errlen, "model header: \"dequantizer\" needs a \"flow\" object");
        return NF_EFORMAT;
    }
    /* the blobs: the model's, then (with a dequantizer) q's */
    uint64_t pl = nf_blob_u64(&r), ql = 0;
    const void *pblob = nf_blob_bytes(&r, pl), *qblob = NULL;
    if (qj) {
        ql = nf_blob_u64(&r);
        qblob = nf_blob_bytes(&r, ql);
    }
    if (r.bad || nf_blob_left(&r)) {
        cJSON_Delete(h);
        nf_set_err(err, errlen, "model parameter length out of range");
        return NF_ECORRUPT;
    }
    char *fs = cJSON_PrintUnformatted(fj);
    nf_model *m = nf_calloc(1, sizeof *m);
    char ferr[200] = "";
    int rc = !fs || !m ? NF_ENOMEM : nf_flow_create(fs, &m->flow, ferr, sizeof ferr);
    nf_free(fs);
    if (rc) {
        nf_set_err(err, errlen, "model flow config: %s", ferr[0] ? ferr : nf_strerror(rc));
        cJSON_Delete(h);
        nf_model_free(m);
        return rc == NF_ENOMEM ? rc : NF_EFORMAT;
    }
    rc = nf_flow_load_params(m->flow, pblob, pl);
    if (rc) {
        nf_set_err(err, errlen, "model parameters: %s", nf_strerror(rc));
        cJSON_Delete(h);
        nf_model_free(m);
        return rc;
    }
    m->header = h;
    /* the model's part of its rows' noise seeds: its bytes, through the CRC */
    {
        uint32_t crc;
        memcpy(&crc, p + len - 4, 4);
        m->noise_key = ((uint64_t)crc << 32 | 0x4E4B) ^ ((uint64_t)len * 0x9E3779B97F4A7C15ULL);
    }
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(h, "preprocess");
    {
        int D = nf_flow_dim(m->flow), C = nf_flow_context_dim(m->flow);
        const cJSON *cj = pp ? cJSON_GetObjectItemCaseSensitive(pp, "context") : NULL;
        char cerr[200] = "";
        if (cj && !cJSON_IsNull(cj)) {
            if (nf_context_from_json(cj, &m->context, cerr, sizeof cerr) ||
                nf_context_dim(&m->context) != C || nf_context_data_dim(&m->context) != D) {
                nf_set_err(err, errlen, "model preprocess.context: %s",
                           cerr[0] ? cerr : "does not match the flow's dim and context_dim");
                nf_model_free(m);
                return NF_EFORMAT;
            }
        } else if (C > 0) { /* a conditional flow without a layout: the context trails x */
            m->context.kind = C <= NF_CTX_MAX_COLUMNS ? NF_CTX_COLUMNS : NF_CTX_NONE;
            m->context.width = D + C;
            m->context.ncols = C;
            for (int i = 0; i < C && i < NF_CTX_MAX_COLUMNS; i++) m->context.cols[i] = D + i;
        }
    }
    const cJSON *dq = pp ? cJSON_GetObjectItemCaseSensitive(pp, "dequantize") : NULL;
    if (dq && cJSON_IsObject(dq)) {
        m->dequantize = 1;
        /* the range of a job's levels (core/job.c): a hostile header's 1e300
         * or -3 would be an out-of-range conversion, then a bogus floor */
        char e2[160];
        if (nf_json_int(dq, "levels", 256, 2, 65536, &m->levels, e2, sizeof e2)) {
            nf_set_err(err, errlen, "model: preprocess.dequantize: %s", e2);
            nf_model_free(m);
            return NF_EFORMAT;
        }
    }
    const char *kind = dq ? nf_json_str(dq, "kind", "uniform") : NULL;
    int variational = kind && !strcmp(kind, "variational");
    if (variational != (qj != NULL) || (variational && m->levels < 2)) {
        nf_set_err(err, errlen, variational ? "model: variational dequantization without a "
                                              "dequantizer flow (or levels < 2)"
                                            : "model: a dequantizer flow but no variational "
                                              "dequantization in \"preprocess\"");
        nf_model_free(m);
        return NF_EFORMAT;
    }
    if (qj) {
        fs = cJSON_PrintUnformatted(qj);
        rc = fs ? nf_flow_create(fs, &m->dequantizer, ferr, sizeof ferr) : NF_ENOMEM;
        nf_free(fs);
        if (!rc && (nf_flow_dim(m->dequantizer) != nf_flow_dim(m->flow) ||
                    nf_flow_context_dim(m->dequantizer) != nf_flow_dim(m->flow))) {
            snprintf(ferr, sizeof ferr, "needs dim and context_dim equal to the model's dim");
            rc = NF_EFORMAT;
        }
        if (rc) {
            nf_set_err(err, errlen, "model dequantizer config: %s", ferr[0] ? ferr : nf_strerror(rc));
            nf_model_free(m);
            return rc == NF_ENOMEM ? rc : NF_EFORMAT;
        }
        rc = nf_flow_load_params(m->dequantizer, qblob, ql);
        if (rc) {
            nf_set_err(err, errlen, "model dequantizer parameters: %s", nf_strerror(rc));
            nf_model_free(m);
            return rc;
        }
    }
    *out = m;
    return 0;
}

int nf_file_read(const char *path, void **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NF_EIO;
    unsigned char *p = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 65536;
            unsigned char *q = nf_realloc(p, nc);
            if (!q) {
                nf_free(p);
                fclose(f);
                return NF_ENOMEM;
            }
            p = q;
            cap = nc;
        }
        size_t r = fread(p + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        nf_free(p);
        return NF_EIO;
    }
    *buf = p;
    *len = n;
    return 0;
}

int nf_fsync_dir(const char *path) {
    size_t n = strlen(path);
    while (n && path[n - 1] != '/') n--;
    char *dir = nf_malloc(n + 2);
    if (!dir) return NF_ENOMEM;
    if (n) memcpy(dir, path, n), dir[n] = 0;
    else strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    nf_free(dir);
    if (fd < 0) return NF_EIO;
    int rc = fsync(fd) == 0 ? 0 : NF_EIO;
    close(fd);
    return rc;
}

int nf_file_write(const char *path, const void *buf, size_t len) {
    size_t pl = strlen(path);
    char *tmp = nf_malloc(pl + 16);
    if (!tmp) return NF_ENOMEM;
    snprintf(tmp, pl + 16, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        nf_free(tmp);
        return NF_EIO;
    }
    int ok = fwrite(buf, 1, len, f) == len;
    ok &= fflush(f) == 0;
    ok &= fsync(fileno(f)) == 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        nf_free(tmp);
        return NF_EIO;
    }
    nf_free(tmp);
    /* the rename is in the directory: synced, the file is there after a
     * power loss, not only its data */
    return nf_fsync_dir(path);
}
