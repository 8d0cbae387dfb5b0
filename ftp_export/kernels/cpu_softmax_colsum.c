/* Masked softmax with the router's column-sum signal, one pass per row in cache, for eager
 * PyTorch on the CPU (ftp_export/kernels/cpu_signal.py builds and calls it).
 *
 * ATen does the same work as separate passes over the whole score tensor: the mask's bias is
 * formed and added, softmax reads and writes it three times, and the column sums are a matrix-
 * vector product over the probabilities; each pass streams the scores through memory. Here every
 * score row (a few KiB) is masked, exponentiated, normalised and added into its key columns while
 * it sits in L1. Same arithmetic as ftp_export.routed.attention._one_shot: a masked score is
 * float32's minimum (what adding the bias gives), softmax is exp(x - max) / sum, and a fully masked
 * row is uniform over its keys.
 *
 * Plain C (no PyTorch headers, so it compiles in a second); loaded with ctypes. OpenMP threads
 * over rows, as many as the caller passes (torch.get_num_threads()).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MASKED (-3.4028234663852886e38f)

/* exp(x) for x <= 0 to about 2 ulp, branch free so the row loops vectorise: 2^n * p(r) with
 * x = n ln2 + r, |r| <= ln2 / 2 (Cephes' expf polynomial); 0 below float32's normal range. n is
 * rounded by adding 1.5 * 2^23 (no floorf call), whose low mantissa bits then hold n. */
typedef union {
    float f;
    int32_t i;
} bits32;

static inline float exp_nonpos(float x) {
    const float lo = -87.33654f, shifter = 12582912.0f;
    float xc = x < lo ? lo : x;
    bits32 t = {.f = xc * 1.44269504088896341f + shifter};
    float n = t.f - shifter;
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    bits32 scale = {.i = (t.i - 0x4B400000 + 127) << 23};
    float e = p * scale.f;
    return x < lo ? 0.0f : e;
}

/* One row: the masked exponentials exp(x - max) in place, and col[s] += w * p[s] with the
 * probabilities p = e / sum when col is not NULL. Key s is allowed where allowed[s] is non-zero and
 * lo <= s <= hi. Returns 1 / sum: the caller scales the row's attention output instead of the row
 * (one pass fewer over the scores). */
static float row_softmax(float *x, const uint8_t *allowed, int64_t lo, int64_t hi, int64_t n, float w, float *col) {
    float m = MASKED;
#pragma omp simd reduction(max : m)
    for (int64_t s = 0; s < n; s++) {
        float v = (allowed[s] && s >= lo && s <= hi) ? x[s] : MASKED;
        m = v > m ? v : m;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t s = 0; s < n; s++) {
        float e = exp_nonpos(((allowed[s] && s >= lo && s <= hi) ? x[s] : MASKED) - m);
        x[s] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    if (col != NULL) {
        float wi = w * inv;
#pragma omp simd
        for (int64_t s = 0; s < n; s++) col[s] += wi * x[s];
    }
    return inv;
}

/* scores: [G, HKV, R * NQ, N] contiguous, the grouped-query layout of _one_shot (row j * NQ + q
 * of K/V head kv is query q of head kv * R + j); they become the unnormalised exponentials, and
 * inv_sum [G, HKV, R * NQ] gets each row's 1 / sum. allowed: uint8 rows of N keys, row (g, q) at
 * allowed + g * a_sg + q * a_sq. With q_index ([G, NQ] contiguous, the queries' cache indices) the
 * mask is structured instead: allowed is then each row's key validity (a_sq = 0) and key s is
 * also required to satisfy s <= q_index and, with window > 0, s > q_index - window (Hugging
 * Face's causal and sliding-window masks; no [G, NQ, N] tensor). weight: [G, NQ] at
 * weight + g * w_sg (NULL: no column sums).
 * colsum: [G, N] at colsum + g * c_sg, added to; each row contributes weight[g, q] * inv_heads.
 * `threads` OpenMP threads take contiguous row ranges and sum into their own scratch, reduced in
 * thread order afterwards (deterministic for a given thread count). Returns 0, or -1 when the
 * scratch could not be allocated (nothing written then). */
int ftp_softmax_colsum_f32(float *scores, float *inv_sum, const uint8_t *allowed, const int64_t *q_index,
                           int64_t window, const float *weight, float *colsum, int64_t G, int64_t HKV, int64_t R,
                           int64_t NQ, int64_t N, int64_t a_sg, int64_t a_sq, int64_t w_sg, int64_t c_sg,
                           float inv_heads, int threads) {
    int64_t per_g = HKV * R * NQ;
    int64_t rows = G * per_g;
    int nt = 1;
#ifdef _OPENMP
    nt = threads < 1 ? 1 : threads;
    if (nt > rows) nt = rows > 0 ? (int)rows : 1;
#endif
    float *scratch = NULL;
    if (weight != NULL) {
        scratch = (float *)calloc((size_t)nt * (size_t)(G * N), sizeof(float));
        if (scratch == NULL) return -1;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0, n_threads = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        n_threads = omp_get_num_threads();
#endif
        int64_t first = rows * t / n_threads, last = rows * (t + 1) / n_threads;
        for (int64_t i = first; i < last; i++) {
            int64_t g = i / per_g;
            int64_t q = (i % per_g) % NQ;
            float *col = NULL;
            float w = 0.0f;
            if (scratch != NULL) {
                col = scratch + ((int64_t)t * G + g) * N;
                w = weight[g * w_sg + q] * inv_heads;
            }
            int64_t lo = 0, hi = N;
            if (q_index != NULL) {
                hi = q_index[g * NQ + q];
                lo = window > 0 ? hi - window + 1 : 0;
            }
            inv_sum[i] = row_softmax(scores + i * N, allowed + g * a_sg + q * a_sq, lo, hi, N, w, col);
        }
    }
    if (scratch != NULL) {
        for (int t = 0; t < nt; t++)
            for (int64_t g = 0; g < G; g++) {
                const float *part = scratch + ((int64_t)t * G + g) * N;
                float *out = colsum + g * c_sg;
                for (int64_t s = 0; s < N; s++) out[s] += part[s];
            }
        free(scratch);
    }
    return 0;
}
