/* util.c: status strings, the random number generator, CRC-32, spec/JSON
 * helpers shared by the layer constructors, coupling masks, and the GEMM
 * wrapper (with its plain-loop reference twin).
 *
 * The RNG is xoshiro256** seeded through splitmix64: fast, 2^256 period, and
 * identical on every platform, so a seed fully determines parameters and
 * samples. */
#include "alloc.h"
#include "nf_internal.h"
#include "kern.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

static const char *const nf_err_names[NF_ERR_COUNT] = {
    "ok",
    "invalid argument",
    "out of memory",
    "non-finite value",
    "corrupt data (checksum mismatch or truncated)",
    "bad format or unsupported version",
    "value out of range",
    "input/output error",
    "cancelled",
    "unsupported operation",
};
_Static_assert(sizeof nf_err_names / sizeof nf_err_names[0] == NF_ERR_COUNT,
               "nf_err_names out of step with the status codes");

const char *nf_strerror(int status) {
    int i = -status;
    if (i < 0 || i >= NF_ERR_COUNT) return "unknown error";
    return nf_err_names[i];
}

/* ---- rng ---------------------------------------------------------------- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void nf_rng_seed(nf_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
    r->has_spare = 0;
    r->spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t nf_rng_u64(nf_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double nf_rng_uniform(nf_rng *r) { return (double)(nf_rng_u64(r) >> 11) * 0x1.0p-53; }

/* Box-Muller; u1 in (0,1] so log never sees 0. */
double nf_rng_normal(nf_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = 1.0 - nf_rng_uniform(r), u2 = nf_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

uint32_t nf_crc32(const void *buf, size_t len) {
    uLong c = crc32(0L, Z_NULL, 0);
    const unsigned char *p = buf;
    while (len > 0) { /* zlib takes uInt lengths */
        uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
        c = crc32(c, p, n);
        p += n;
        len -= n;
    }
    return (uint32_t)c;
}

/* ---- spec helpers --------------------------------------------------------- */
void nf_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int nf_json_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out,
                char *err, size_t errlen) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi) {
        nf_set_err(err, errlen, "\"%s\" must be an integer in [%d, %d]", key, lo, hi);
        return NF_EINVAL;
    }
    *out = (int)v->valuedouble;
    return 0;
}

int nf_json_num(const cJSON *o, const char *key, double def, double lo, double hi,
                double *out, char *err, size_t errlen) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        nf_set_err(err, errlen, "\"%s\" must be a number in [%g, %g]", key, lo, hi);
        return NF_EINVAL;
    }
    *out = v->valuedouble;
    return 0;
}

int nf_json_bool(const cJSON *o, const char *key, int def, int *out, char *err, size_t errlen) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        nf_set_err(err, errlen, "\"%s\" must be true or false", key);
        return NF_EINVAL;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

const char *nf_json_str(const cJSON *o, const char *key, const char *def) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) return def;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int nf_json_int_list(const cJSON *o, const char *key, const int *def, int ndef, int *out,
                     int maxn, char *err, size_t errlen) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) {
        if (ndef > maxn) ndef = maxn;
        memcpy(out, def, (size_t)ndef * sizeof *out);
        return ndef;
    }
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d != floor(d) || d < 1 || d > 65536) goto bad;
        out[0] = (int)d;
        return 1;
    }
    if (!cJSON_IsArray(v)) goto bad;
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (n >= maxn || !cJSON_IsNumber(e)) goto bad;
        double d = e->valuedouble;
        if (d != floor(d) || d < 1 || d > 65536) goto bad;
        out[n++] = (int)d;
    }
    if (n == 0) goto bad;
    return n;
bad:
    nf_set_err(err, errlen, "\"%s\" must be an integer or a list of 1..%d integers in [1, 65536]",
               key, maxn);
    return NF_EINVAL;
}

int nf_json_check_keys(const cJSON *o, const char *const *allowed, char *err, size_t errlen) {
    if (!cJSON_IsObject(o)) {
        nf_set_err(err, errlen, "expected a JSON object");
        return NF_EINVAL;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, o) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (e->string && strcmp(e->string, *a) == 0) ok = 1;
        if (!ok) {
            nf_set_err(err, errlen, "unknown field \"%s\"", e->string ? e->string : "?");
            return NF_EINVAL;
        }
    }
    return 0;
}

int nf_mask_parse(const cJSON *spec, int D, int *mask, char *err, size_t errlen) {
    const cJSON *v = spec ? cJSON_GetObjectItemCaseSensitive(spec, "mask") : NULL;
    if (D < 2) {
        nf_set_err(err, errlen, "coupling layers need dim >= 2");
        return NF_EINVAL;
    }
    if (!v || (cJSON_IsString(v) && (!strcmp(v->valuestring, "even") ||
                                      !strcmp(v->valuestring, "odd")))) {
        int odd = v && !strcmp(v->valuestring, "odd");
        for (int i = 0; i < D; i++) mask[i] = (i % 2 == 0) != odd;
        return 0;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != D) goto bad;
    int i = 0, ones = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || (e->valuedouble != 0 && e->valuedouble != 1)) goto bad;
        mask[i] = e->valuedouble == 1;
        ones += mask[i++];
    }
    if (ones == 0 || ones == D) goto bad;
    return 0;
bad:
    nf_set_err(err, errlen,
               "\"mask\" must be \"even\", \"odd\" or a list of %d zeros and ones with at "
               "least one of each", D);
    return NF_EINVAL;
}

void nf_mask_to_json(const int *mask, int D, cJSON *obj) {
    nf_json_attach(obj, "mask", cJSON_CreateIntArray(mask, D));
}

/* ---- gemm ------------------------------------------------------------------ */
void nf_gemm(int transA, int transB, int M, int N, int K, nf_real alpha, const nf_real *A,
             int lda, const nf_real *Bm, int ldb, nf_real beta, nf_real *C, int ldc) {
    if (M == 0 || N == 0) return;
    /* one row: a matrix-vector product.  GEMM would first repack the whole
     * weight matrix for a single row (over half the time of a B = 1
     * log_prob); GEMV streams it once. */
#ifndef NF_DOUBLE
    if (M == 1 && !transA && transB && K > 0 && alpha == 1 && (beta == 0 || beta == 1)) {
        nf_gemv_rows(N, K, Bm, ldb, A, C, beta == 1);
        return;
    }
#endif
    if (M == 1 && !transA && K > 0) {
        /* GEMV scales y by beta with a SCAL that may keep a NaN of
         * uninitialised memory when beta = 0: clear it first */
        if (beta == 0) memset(C, 0, (size_t)N * sizeof *C);
#ifdef NF_DOUBLE
        if (transB) cblas_dgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, Bm, ldb, A, 1, beta, C, 1);
        else cblas_dgemv(CblasRowMajor, CblasTrans, K, N, alpha, Bm, ldb, A, 1, beta, C, 1);
#else
        if (transB) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, Bm, ldb, A, 1, beta, C, 1);
        else cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, Bm, ldb, A, 1, beta, C, 1);
#endif
        return;
    }
#ifdef NF_DOUBLE
    cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, Bm, ldb, beta, C,
                ldc);
#else
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, Bm, ldb, beta, C,
                ldc);
#endif
}

void nf_trsm_rt(int upper, int unit, int M, int N, const nf_real *A, int lda, nf_real *Bm,
                int ldb) {
    if (M == 0 || N == 0) return;
#ifdef NF_DOUBLE
    cblas_dtrsm(CblasRowMajor, CblasRight, upper ? CblasUpper : CblasLower, CblasTrans,
                unit ? CblasUnit : CblasNonUnit, M, N, 1.0, A, lda, Bm, ldb);
#else
    cblas_strsm(CblasRowMajor, CblasRight, upper ? CblasUpper : CblasLower, CblasTrans,
                unit ? CblasUnit : CblasNonUnit, M, N, 1.0f, A, lda, Bm, ldb);
#endif
}

void nf_gemm_ref(int transA, int transB, int M, int N, int K, nf_real alpha, const nf_real *A,
                 int lda, const nf_real *Bm, int ldb, nf_real beta, nf_real *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                double a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = transB ? Bm[(size_t)j * ldb + k] : Bm[(size_t)k * ldb + j];
                s += a * b;
            }
            nf_real *c = &C[(size_t)i * ldc + j];
            *c = (nf_real)(alpha * s + (beta == 0 ? 0.0 : beta * (double)*c));
        }
}
