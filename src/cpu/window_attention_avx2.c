/*
 * window_attention_avx2.c: the raw scores of the window attention (window_attention.c) with eight
 * window queries in the lanes of a vector, one key at a time. Each lane does what the portable loop
 * does for its query: d = 0, then d += q[k] * key[k] for k in order, one rounded multiply and one
 * rounded add (this file is compiled with -ffp-contract=off, the portable one has no FMA), then
 * d * scale; so the scores, and the kept sets of every policy, are bit for bit the portable ones.
 * The portable loop's dots are one dependency chain of head_dim adds each (latency-bound: at a
 * 4k-token prompt, 2.5 s of every SnapKV-family compression of Qwen2.5-Coder-0.5B); here eight
 * chains run side by side in each of four registers.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "backend_cpu.h"

#define QB 32 /* window queries per pass: four vectors of accumulators */

/* out[i * out_stride + sl] = (q_i . key_sl) * scale for queries i < nq (<= QB) and slots sl < n:
 * q_i = q + i * q_stride, key_sl = K + sl * D; qt: scratch of D * QB floats */
void rk_avx2_window_scores(const float *q, size_t q_stride, int nq, const float *K, int n, int D, float scale,
                           float *out, size_t out_stride, float *qt) {
    /* the queries transposed: qt[k * QB + i] = q_i[k], lanes past nq zero */
    for (int k = 0; k < D; k++)
        for (int i = 0; i < QB; i++) qt[(size_t)k * QB + i] = i < nq ? q[(size_t)i * q_stride + k] : 0.0f;
    const int nv = (nq + 7) / 8;
    const __m256 sc = _mm256_set1_ps(scale);
    _Alignas(32) float lane[QB];
    for (int sl = 0; sl < n; sl++) {
        const float *key = K + (size_t)sl * D;
        __m256 acc[QB / 8];
        for (int v = 0; v < QB / 8; v++) acc[v] = _mm256_setzero_ps();
        for (int k = 0; k < D; k++) {
            const __m256 kb = _mm256_set1_ps(key[k]);
            const float *col = qt + (size_t)k * QB;
            for (int v = 0; v < nv; v++) acc[v] = _mm256_add_ps(acc[v], _mm256_mul_ps(_mm256_loadu_ps(col + 8 * v), kb));
        }
        for (int v = 0; v < nv; v++) _mm256_store_ps(lane + 8 * v, _mm256_mul_ps(acc[v], sc));
        for (int i = 0; i < nq; i++) out[(size_t)i * out_stride + sl] = lane[i];
    }
}
