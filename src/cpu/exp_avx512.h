/*
 * exp_avx512.h: exp_avx2.h's two exponentials on 512-bit registers, lane for lane the same
 * operations in the same order, so the same bits (the VNNI tier's softmax and SwiGLU,
 * attention_avx512.c and glu_avx512.c). Include after <immintrin.h> in a file compiled for
 * AVX-512F. Internal header.
 */
#ifndef RK_EXP_AVX512_H
#define RK_EXP_AVX512_H

#include <immintrin.h>

#include "exp_avx2.h" /* the constants */

/* rk_exp8 for 16 lanes (Cephes' expf, a float polynomial) */
static inline __m512 rk_exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(RK_EXPF_MIN)), _mm512_set1_ps(RK_EXPF_MAX));
    const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(RK_EXPF_LOG2E), _mm512_set1_ps(0.5f)),
                                          _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(RK_EXPF_LN2_HI), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(RK_EXPF_LN2_LO), x);
    __m512 y = _mm512_set1_ps(rk_expf_poly[0]);
    for (int k = 1; k < 6; k++) y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(rk_expf_poly[k]));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

/* rk_exp4d for 8 lanes: e^x in double (libm's rounding once converted to float) */
static inline __m512d rk_exp8d(__m256 xf) {
    __m512d x = _mm512_cvtps_pd(xf);
    x = _mm512_min_pd(_mm512_max_pd(x, _mm512_set1_pd(RK_EXPD_MIN)), _mm512_set1_pd(RK_EXPD_MAX));
    const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(RK_EXPD_LOG2E)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(RK_EXPD_LN2_HI), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(RK_EXPD_LN2_LO), r);
    __m512d p = _mm512_set1_pd(rk_expd_inv_fact[12]);
    for (int k = 11; k >= 0; k--) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(rk_expd_inv_fact[k]));
    const __m512i e = _mm512_slli_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_cvtpd_epi32(n)),
                                                         _mm512_set1_epi64(1023)), 52);
    return _mm512_mul_pd(p, _mm512_castsi512_pd(e));
}

/* rk_expf8 for 16 lanes */
static inline __m512 rk_expf16(__m512 x) {
    const __m256 lo = _mm512_cvtpd_ps(rk_exp8d(_mm512_castps512_ps256(x)));
    const __m256 hi = _mm512_cvtpd_ps(rk_exp8d(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

#endif
