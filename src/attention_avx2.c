/*
 * attention_avx2.c: AVX2/FMA/F16C kernels of attention: value sums (y += a * x over
 * stored V rows) and blocks of key-query dot products. Built with -ffp-contract=off:
 * the value sums multiply then add, never fused, so every element rounds as in the
 * portable loops; the dot products use explicit FMAs.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "quant_avx2.h"

#define AXPY(name, LOAD8, SCALAR)                                                            \
    void name(int64_t n, float a, const void *x, float *y) {                                 \
        const __m256 va = _mm256_set1_ps(a);                                                 \
        int64_t i = 0;                                                                       \
        for (; i + 8 <= n; i += 8)                                                           \
            _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(va, LOAD8(x, i)))); \
        for (; i < n; i++) y[i] += a * SCALAR(x, i);                                         \
    }

static inline __m256 load8_f32(const void *x, int64_t i) { return _mm256_loadu_ps((const float *)x + i); }
static inline float get_f32(const void *x, int64_t i) { return ((const float *)x)[i]; }
static inline __m256 load8_f16(const void *x, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
}
static inline float get_f16(const void *x, int64_t i) { return _cvtsh_ss(((const uint16_t *)x)[i]); }
static inline __m256 load8_bf16(const void *x, int64_t i) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
static inline float get_bf16(const void *x, int64_t i) {
    union { uint32_t u; float f; } v = {(uint32_t)((const uint16_t *)x)[i] << 16};
    return v.f;
}

AXPY(rk_avx2_axpy_f32, load8_f32, get_f32)
AXPY(rk_avx2_axpy_f16, load8_f16, get_f16)
AXPY(rk_avx2_axpy_bf16, load8_bf16, get_bf16)

/* out[i] = dot(k + i * n, q), i < nk <= 8, n a multiple of 8. Lane j of key i's accumulator
 * sums elements j, j + 8, ...; the eight lanes are then added by one fixed tree per key. */
void rk_avx2_dot_block(int n, int nk, const float *k, const float *q, float *out) {
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    for (int c = 0; c < n; c += 8) {
        const __m256 qc = _mm256_loadu_ps(q + c);
        for (int i = 0; i < nk; i++) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(k + (size_t)i * n + c), qc, acc[i]);
    }
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    float tmp[8];
    _mm256_storeu_ps(tmp, sum);
    for (int i = 0; i < nk; i++) out[i] = tmp[i];
}

/* out[0..n) += w[i] * v[i * vs ..] for i < nv in order, skipping w[i] == 0 (a multiply then an add) */
void rk_avx2_accum_block(int n, int nv, const float *w, const float *v, size_t vs, float *out) {
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256 acc = _mm256_loadu_ps(out + c);
        for (int i = 0; i < nv; i++)
            if (w[i] != 0.0f) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(w[i]), _mm256_loadu_ps(v + i * vs + c)));
        _mm256_storeu_ps(out + c, acc);
    }
    for (; c < n; c++)
        for (int i = 0; i < nv; i++)
            if (w[i] != 0.0f) out[c] += w[i] * v[i * vs + c];
}

#endif
