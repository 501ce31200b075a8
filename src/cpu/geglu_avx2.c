/*
 * geglu_avx2.c: ops.c's GEGLU (ggml's tabulated GELU times the up projection) eight lanes at a
 * time. Each lane does what the portable loop does, with the same bits: x rounded to f16 (F16C
 * rounds to nearest even, as the portable f2h), the table entry at that half read back exactly,
 * one rounded multiply by b (no FMA: this file is compiled with -ffp-contract=off), x * b above
 * 10 and 0 below -10 (NaN takes the table, as there). Gemma's feed-forward computes 2048 of these
 * per token and layer: the portable loop's branchy conversions were 5-8% of its prefill.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

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
