/*
 * glu_avx2.c: the gated units' activations eight lanes at a time, compiled with -ffp-contract=off
 * (every multiply and add rounded on its own, as in ops.c's portable loops).
 *
 * GEGLU (ggml's tabulated GELU times the up projection): each lane does what the portable loop
 * does, with the same bits: x rounded to f16 (F16C rounds to nearest even, as the portable f2h),
 * the table entry at that half read back exactly, one rounded multiply by b, x * b above 10 and 0
 * below -10 (NaN takes the table, as there). Gemma's feed-forward computes 2048 of these per token
 * and layer: the portable loop's branchy conversions were 5-8% of its prefill.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "exp_avx2.h"

/* table: 2^16 halves plus one spare (the 32-bit gather of the last entry reads 2 bytes past it) */
void rk_avx2_geglu(const uint16_t *table, float *a, const float *b, size_t n) {
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    const __m256i low16 = _mm256_set1_epi32(0xFFFF);
    for (size_t i = 0; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(b + i);
        const __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
        const __m256i g = _mm256_and_si256(_mm256_i32gather_epi32((const int *)table, idx, 2), low16);
        const __m128i g16 = _mm_packus_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
        __m256 r = _mm256_mul_ps(_mm256_cvtph_ps(g16), y);
        r = _mm256_blendv_ps(r, _mm256_mul_ps(x, y), _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        r = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), r);
        _mm256_storeu_ps(a + i, r);
    }
}

/* SwiGLU: a = silu(a) * b = a / (1 + expf(-a)) * b, the portable loop's float operations with
 * rk_expf8 for expf (libm's rounding, exp_avx2.h). A tail of n % 8 goes through the same lanes,
 * zero-padded, so an element's bits do not depend on where a range starts or ends. Qwen2.5-1.5B's
 * feed-forward computes 8960 of these per token and layer: with libm's scalar expf they were 4-5%
 * of a prefill. */
static inline __m256 swiglu8(__m256 x, __m256 y) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = rk_expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), y);
}

void rk_avx2_swiglu(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(a + i, swiglu8(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    if (i < n) {
        float x[8] = {0}, y[8] = {0};
        for (size_t k = 0; i + k < n; k++) x[k] = a[i + k], y[k] = b[i + k];
        _mm256_storeu_ps(x, swiglu8(_mm256_loadu_ps(x), _mm256_loadu_ps(y)));
        for (size_t k = 0; i + k < n; k++) a[i + k] = x[k];
    }
}
