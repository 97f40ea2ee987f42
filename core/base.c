/* base.c: base distributions p_Z over (B,D) rows.
 *
 *  normal:      log p(z) = -0.5 |z|^2 - D/2 log(2 pi)                 (no params)
 *  diag_normal: params mu (D), log_sigma (D);
 *               log p(z) = sum_d -0.5 ((z_d-mu_d)/sigma_d)^2 - log sigma_d - 0.5 log 2pi
 *  mixture:     K components, params logits (K), mu (K,D), log_sigma (K,D);
 *               log p(z) = logsumexp_k [log softmax(logits)_k + log N(z; mu_k, sigma_k)]
 *
 * Temperature T scales every standard deviation when sampling (z = mu + T
 * sigma eps).  Mixture means start spread on a seeded grid-free pattern: the
 * init is deterministic (means at +-1 along alternating axes scaled by k), so
 * a fresh mixture is not degenerate. */
#include "alloc.h"
#include "nf_internal.h"

#include <math.h>
#include <string.h>

#define LOG_2PI 1.8378770664093453

int nf_base_parse(nf_base *b, int D, const cJSON *spec, char *err, size_t errlen) {
    memset(b, 0, sizeof *b);
    b->D = D;
    b->kind = NF_BASE_NORMAL;
    if (!spec) return 0;
    if (cJSON_IsString(spec)) { /* "base":"normal" shorthand */
        unsigned fails = nf_alloc_failures;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", spec->valuestring);
        if (nf_alloc_failures != fails) { /* else parsed as the default base */
            cJSON_Delete(o);
            nf_set_err(err, errlen, "out of memory");
            return NF_ENOMEM;
        }
        int rc = nf_base_parse(b, D, o, err, errlen);
        cJSON_Delete(o);
        return rc;
    }
    static const char *const keys[] = {"type", "components", NULL};
    int rc = nf_json_check_keys(spec, keys, err, errlen);
    if (rc) return rc;
    const char *t = nf_json_str(spec, "type", "normal");
    if (t && !strcmp(t, "normal")) {
        b->kind = NF_BASE_NORMAL;
    } else if (t && !strcmp(t, "diag_normal")) {
        b->kind = NF_BASE_DIAG;
        b->nparams = 2 * (size_t)D;
    } else if (t && !strcmp(t, "mixture")) {
        b->kind = NF_BASE_MIXTURE;
        if ((rc = nf_json_int(spec, "components", 8, 1, 1024, &b->K, err, errlen))) return rc;
        b->nparams = (size_t)b->K * (1 + 2 * (size_t)D);
    } else {
        nf_set_err(err, errlen, "base \"type\" must be \"normal\", \"diag_normal\" or \"mixture\"");
        return NF_EINVAL;
    }
    return 0;
}

void nf_base_to_json(const nf_base *b, cJSON *obj) {
    static const char *const names[NF_BASE_COUNT] = {"normal", "diag_normal", "mixture"};
    cJSON_AddStringToObject(obj, "type", names[b->kind]);
    if (b->kind == NF_BASE_MIXTURE) cJSON_AddNumberToObject(obj, "components", b->K);
}

void nf_base_init(const nf_base *b, nf_real *p) {
    int D = b->D;
    if (b->kind == NF_BASE_DIAG) {
        memset(p, 0, 2 * (size_t)D * sizeof *p);
    } else if (b->kind == NF_BASE_MIXTURE) {
        int K = b->K;
        nf_real *logits = p, *mu = p + K, *ls = mu + (size_t)K * D;
        for (int k = 0; k < K; k++) {
            logits[k] = 0;
            for (int d = 0; d < D; d++) {
                /* component k sits at distance ~1 from the origin, each on
                 * its own direction pattern */
                double ang = 6.283185307179586 * (k + 0.5) / K + d;
                mu[(size_t)k * D + d] = K == 1 ? 0 : (nf_real)(cos(ang) * (d % 2 ? 1 : -1) * 1.0);
                ls[(size_t)k * D + d] = 0;
            }
        }
    }
}

/* log N(z; mu, exp(ls)) for one row */
static double diag_logp(const nf_real *z, const nf_real *mu, const nf_real *ls, int D) {
    double s = 0;
    for (int d = 0; d < D; d++) {
        double e = ((double)z[d] - mu[d]) * exp(-(double)ls[d]);
        s += -0.5 * e * e - ls[d];
    }
    return s - 0.5 * D * LOG_2PI;
}

static double mixture_row(const nf_base *b, const nf_real *p, const nf_real *z, double *comp) {
    int K = b->K, D = b->D;
    const nf_real *logits = p, *mu = p + K, *ls = mu + (size_t)K * D;
    double lmax = -INFINITY, lse = 0, cmax = -INFINITY, csum = 0;
    for (int k = 0; k < K; k++) lmax = logits[k] > lmax ? logits[k] : lmax;
    for (int k = 0; k < K; k++) lse += exp(logits[k] - lmax);
    lse = lmax + log(lse);
    for (int k = 0; k < K; k++) {
        comp[k] = logits[k] - lse + diag_logp(z, mu + (size_t)k * D, ls + (size_t)k * D, D);
        cmax = comp[k] > cmax ? comp[k] : cmax;
    }
    if (!isfinite(cmax)) return cmax;
    for (int k = 0; k < K; k++) csum += exp(comp[k] - cmax);
    return cmax + log(csum);
}

void nf_base_log_prob(const nf_base *b, const nf_real *p, const nf_real *z, int B, nf_real *logp) {
    int D = b->D;
    double comp[1024];
    for (int r = 0; r < B; r++) {
        const nf_real *zr = z + (size_t)r * D;
        double s;
        if (b->kind == NF_BASE_NORMAL) {
            s = 0;
            for (int d = 0; d < D; d++) s += (double)zr[d] * zr[d];
            s = -0.5 * s - 0.5 * D * LOG_2PI;
        } else if (b->kind == NF_BASE_DIAG) {
            s = diag_logp(zr, p, p + D, D);
        } else {
            s = mixture_row(b, p, zr, comp);
        }
        logp[r] = (nf_real)s;
    }
}

void nf_base_log_prob_backward(const nf_base *b, const nf_real *p, nf_real *grad,
                               const nf_real *z, int B, const nf_real *w, nf_real *dz) {
    int D = b->D;
    double comp[1024];
    for (int r = 0; r < B; r++) {
        const nf_real *zr = z + (size_t)r * D;
        nf_real *dzr = dz ? dz + (size_t)r * D : NULL;
        double wr = w[r];
        if (wr == 0) continue;
        if (b->kind == NF_BASE_NORMAL) {
            if (dzr)
                for (int d = 0; d < D; d++) dzr[d] += (nf_real)(-wr * zr[d]);
        } else if (b->kind == NF_BASE_DIAG) {
            const nf_real *mu = p, *ls = p + D;
            for (int d = 0; d < D; d++) {
                double is = exp(-(double)ls[d]), e = ((double)zr[d] - mu[d]) * is;
                /* d/dz = -e/sigma; d/dmu = e/sigma; d/dls = e^2 - 1 */
                if (dzr) dzr[d] += (nf_real)(-wr * e * is);
                if (grad) {
                    grad[d] += (nf_real)(wr * e * is);
                    grad[D + d] += (nf_real)(wr * (e * e - 1));
                }
            }
        } else {
            int K = b->K;
            const nf_real *logits = p, *mu = p + K, *ls = mu + (size_t)K * D;
            double tot = mixture_row(b, p, zr, comp);
            double lmax = -INFINITY, lse = 0;
            for (int k = 0; k < K; k++) lmax = logits[k] > lmax ? logits[k] : lmax;
            for (int k = 0; k < K; k++) lse += exp(logits[k] - lmax);
            lse = lmax + log(lse);
            for (int k = 0; k < K; k++) {
                /* responsibility r_k = p(k | z); d/dlogit_k = r_k - pi_k */
                double resp = exp(comp[k] - tot), pik = exp(logits[k] - lse);
                if (grad) grad[k] += (nf_real)(wr * (resp - pik));
                for (int d = 0; d < D; d++) {
                    size_t i = (size_t)k * D + d;
                    double is = exp(-(double)ls[i]), e = ((double)zr[d] - mu[i]) * is;
                    if (dzr) dzr[d] += (nf_real)(-wr * resp * e * is);
                    if (grad) {
                        grad[K + i] += (nf_real)(wr * resp * e * is);
                        grad[K + (size_t)K * D + i] += (nf_real)(wr * resp * (e * e - 1));
                    }
                }
            }
        }
    }
}

void nf_base_sample(const nf_base *b, const nf_real *p, nf_rng *rng, double T, int B, nf_real *z) {
    int D = b->D;
    for (int r = 0; r < B; r++) {
        nf_real *zr = z + (size_t)r * D;
        if (b->kind == NF_BASE_NORMAL) {
            for (int d = 0; d < D; d++) zr[d] = (nf_real)(T * nf_rng_normal(rng));
        } else if (b->kind == NF_BASE_DIAG) {
            for (int d = 0; d < D; d++)
                zr[d] = (nf_real)(p[d] + T * exp((double)p[D + d]) * nf_rng_normal(rng));
        } else {
            int K = b->K, k;
            const nf_real *logits = p, *mu = p + K, *ls = mu + (size_t)K * D;
            double lmax = -INFINITY, tot = 0, u;
            for (k = 0; k < K; k++) lmax = logits[k] > lmax ? logits[k] : lmax;
            for (k = 0; k < K; k++) tot += exp(logits[k] - lmax);
            u = nf_rng_uniform(rng) * tot;
            for (k = 0; k < K - 1; k++) {
                u -= exp(logits[k] - lmax);
                if (u < 0) break;
            }
            for (int d = 0; d < D; d++) {
                size_t i = (size_t)k * D + d;
                zr[d] = (nf_real)(mu[i] + T * exp((double)ls[i]) * nf_rng_normal(rng));
            }
        }
    }
}
