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
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
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
    "ODE solver exceeded max_steps (stiff dynamics or too tight a tolerance)",
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

/* Box-Muller; u1 in (0,1] so log never sees 0.  Exactly two uniforms per
 * pair of values: threaded sampling (par_sample, flow.c) steps a copy of
 * the generator past whole pairs without computing them
 * (tests/core/test_threads.c, threads_sample_draws_exact). */
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
double nf_mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void nf_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- the validation vocabulary (nf_json.h) ----------------------------------- */
const cJSON *nf_json_get(const cJSON *o, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return v && !cJSON_IsNull(v) ? v : NULL;
}

int nf_json_need(const cJSON *o, const char *key, char *err, size_t errlen) {
    if (nf_json_get(o, key)) return 0;
    nf_set_err(err, errlen, "\"%s\" is required", key);
    return NF_EINVAL;
}

/* an integral double in [lo, hi] */
static int integral_in(const cJSON *v, double lo, double hi) {
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= lo &&
           v->valuedouble <= hi;
}

int nf_json_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out,
                char *err, size_t errlen) {
    const cJSON *v = nf_json_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!integral_in(v, lo, hi)) {
        nf_set_err(err, errlen, "\"%s\" must be an integer in [%d, %d]", key, lo, hi);
        return NF_EINVAL;
    }
    *out = (int)v->valuedouble;
    return 0;
}

int nf_json_i64(const cJSON *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                int64_t *out, char *err, size_t errlen) {
    const cJSON *v = nf_json_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!integral_in(v, (double)lo, (double)hi)) {
        nf_set_err(err, errlen, "\"%s\" must be an integer in [%lld, %lld]", key, (long long)lo,
                   (long long)hi);
        return NF_EINVAL;
    }
    *out = (int64_t)v->valuedouble;
    return 0;
}

int nf_json_seed(const cJSON *o, const char *key, uint64_t def, uint64_t *out, char *err,
                 size_t errlen) {
    const cJSON *v = nf_json_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!integral_in(v, 0, NF_JSON_SEED_MAX)) {
        nf_set_err(err, errlen, "\"%s\" must be an integer in [0, 2^53]", key);
        return NF_EINVAL;
    }
    *out = (uint64_t)v->valuedouble;
    return 0;
}

static int num_in(const cJSON *o, const char *key, double def, double lo, double hi, int open,
                  double *out, char *err, size_t errlen) {
    const cJSON *v = nf_json_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        (open && v->valuedouble == lo) || v->valuedouble > hi) {
        nf_set_err(err, errlen, "\"%s\" must be a number in %c%g, %g]", key, open ? '(' : '[',
                   lo, hi);
        return NF_EINVAL;
    }
    *out = v->valuedouble;
    return 0;
}

int nf_json_num(const cJSON *o, const char *key, double def, double lo, double hi,
                double *out, char *err, size_t errlen) {
    return num_in(o, key, def, lo, hi, 0, out, err, errlen);
}

int nf_json_num_open(const cJSON *o, const char *key, double def, double lo, double hi,
                     double *out, char *err, size_t errlen) {
    return num_in(o, key, def, lo, hi, 1, out, err, errlen);
}

int nf_json_bool(const cJSON *o, const char *key, int def, int *out, char *err, size_t errlen) {
    const cJSON *v = nf_json_get(o, key);
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
    const cJSON *v = nf_json_get(o, key);
    if (!v) return def;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int nf_json_enum(const cJSON *o, const char *key, const char *const *names, int def, int *out,
                 char *err, size_t errlen) {
    const char *s = nf_json_str(o, key, names[def]);
    for (int i = 0; s && names[i]; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    char list[200] = "";
    size_t n = 0;
    for (int i = 0; names[i] && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s\"%s\"",
                              i == 0 ? "" : names[i + 1] ? ", " : " or ", names[i]);
    nf_set_err(err, errlen, "\"%s\" must be %s", key, list);
    return NF_EINVAL;
}

int nf_json_int_list(const cJSON *o, const char *key, const int *def, int ndef, int *out,
                     int maxn, char *err, size_t errlen) {
    const cJSON *v = nf_json_get(o, key);
    if (!v) {
        if (ndef > maxn) ndef = maxn;
        memcpy(out, def, (size_t)ndef * sizeof *out);
        return ndef;
    }
    if (cJSON_IsNumber(v)) {
        if (!integral_in(v, 1, 65536)) goto bad;
        out[0] = (int)v->valuedouble;
        return 1;
    }
    if (!cJSON_IsArray(v)) goto bad;
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (n >= maxn || !integral_in(e, 1, 65536)) goto bad;
        out[n++] = (int)e->valuedouble;
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

int nf_json_fields(const cJSON *o, const nf_field *fields, void *target, char *err,
                   size_t errlen) {
    if (o && cJSON_IsNull(o)) o = NULL;
    if (o && !cJSON_IsObject(o)) {
        nf_set_err(err, errlen, "expected a JSON object");
        return NF_EINVAL;
    }
    if (o) { /* unknown keys: those not in the table */
        const cJSON *e;
        cJSON_ArrayForEach(e, o) {
            const nf_field *f = fields;
            while (f->name && (!e->string || strcmp(f->name, e->string))) f++;
            if (!f->name) {
                nf_set_err(err, errlen, "unknown field \"%s\"", e->string ? e->string : "?");
                return NF_EINVAL;
            }
        }
    }
    char *t = target;
    for (const nf_field *f = fields; f->name; f++) {
        int rc = 0;
        switch (f->type) {
        case NF_FIELD_INT:
            rc = nf_json_int(o, f->name, (int)f->def, (int)f->lo, (int)f->hi, (int *)(t + f->off),
                             err, errlen);
            break;
        case NF_FIELD_SEED:
            rc = nf_json_seed(o, f->name, (uint64_t)f->def, (uint64_t *)(t + f->off), err, errlen);
            break;
        case NF_FIELD_NUM:
            rc = nf_json_num(o, f->name, f->def, f->lo, f->hi, (double *)(t + f->off), err, errlen);
            break;
        case NF_FIELD_ENUM:
            rc = nf_json_enum(o, f->name, f->names, (int)f->def, (int *)(t + f->off), err, errlen);
            break;
        case NF_FIELD_BOOL:
            rc = nf_json_bool(o, f->name, f->def != 0, (int *)(t + f->off), err, errlen);
            break;
        case NF_FIELD_OBJECT: {
            const cJSON *v = nf_json_get(o, f->name);
            if (v && (rc = nf_json_fields(v, f->sub, target, err, errlen))) {
                char tmp[300];
                snprintf(tmp, sizeof tmp, "%s: %s", f->name, err);
                nf_set_err(err, errlen, "%s", tmp);
            }
            break;
        }
        }
        if (rc) return rc;
    }
    return 0;
}

static const char *nonfinite_at(const cJSON *o, const char *name) {
    if (cJSON_IsNumber(o) && !isfinite(o->valuedouble)) return name ? name : "?";
    const cJSON *e;
    if (cJSON_IsArray(o) || cJSON_IsObject(o))
        cJSON_ArrayForEach(e, o) {
            const char *k = nonfinite_at(e, e->string ? e->string : name);
            if (k) return k;
        }
    return NULL;
}

int nf_json_check_finite(const cJSON *o, char *err, size_t errlen) {
    const char *k = nonfinite_at(o, NULL);
    if (!k) return 0;
    nf_set_err(err, errlen, "\"%s\" must be a finite number", k);
    return NF_EINVAL;
}

/* ---- text values ------------------------------------------------------------ */
int nf_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s || isspace((unsigned char)*s)) return NF_EINVAL;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return NF_EINVAL;
    *out = v;
    return 0;
}

int nf_parse_num(const char *s, double lo, double hi, double *out) {
    if (!s || !*s || isspace((unsigned char)*s)) return NF_EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi) return NF_EINVAL;
    *out = v;
    return 0;
}

void nf_json_add_num(cJSON *o, const char *key, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

int nf_parse_bool(const char *s, int *out) {
    if (!s) return NF_EINVAL;
    if (!strcmp(s, "true") || !strcmp(s, "1")) *out = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "0")) *out = 0;
    else return NF_EINVAL;
    return 0;
}

int nf_mask_parse(const cJSON *spec, int D, int *mask, char *err, size_t errlen) {
    const cJSON *v = nf_json_get(spec, "mask");
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
