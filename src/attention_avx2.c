/*
 * attention_avx2.c: AVX2/F16C kernels for attention's value sums, y += a * x
 * over one stored V row. Built with -ffp-contract=off: a multiply then an add,
 * never fused, so every element rounds as in quant.c's portable loops.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX2__) && defined(__F16C__))
#pragma GCC target("avx2,f16c")
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

#endif
