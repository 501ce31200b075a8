/*
 * exp_avx2.h: expf for 8 lanes (AVX2 + FMA), shared by the softmax (attention_avx2.c) and the
 * SiLU of SwiGLU (glu_avx2.c). Include after <immintrin.h> in a file compiled for AVX2 and FMA.
 * Internal header.
 */
#ifndef RK_EXP_AVX2_H
#define RK_EXP_AVX2_H

#include <immintrin.h>

/* exp(x) for 8 lanes, Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for
 * e^r, then 2^n put into the exponent bits (relative error ~2e-7, inputs clamped to +-88.38) */
/* the constants of both exponentials, shared with exp_avx512.h's wider twins (the same bits) */
#define RK_EXPF_MIN (-88.3762626647949f)
#define RK_EXPF_MAX 88.3762626647950f
#define RK_EXPF_LOG2E 1.44269504088896341f
#define RK_EXPF_LN2_HI 0.693359375f
#define RK_EXPF_LN2_LO (-2.12194440e-4f)
static const float rk_expf_poly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                      4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
#define RK_EXPD_MIN (-104.0)
#define RK_EXPD_MAX 89.0
#define RK_EXPD_LOG2E 1.4426950408889634074
#define RK_EXPD_LN2_HI 6.93147180369123816490e-01 /* n ln2_hi: exact */
#define RK_EXPD_LN2_LO 1.90821492927058770002e-10
static const double rk_expd_inv_fact[13] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                            1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600};

static inline __m256 rk_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(RK_EXPF_MIN)), _mm256_set1_ps(RK_EXPF_MAX));
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(RK_EXPF_LOG2E), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(RK_EXPF_LN2_HI), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(RK_EXPF_LN2_LO), x);
    __m256 y = _mm256_set1_ps(rk_expf_poly[0]);
    for (int k = 1; k < 6; k++) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(rk_expf_poly[k]));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* expf for 8 lanes as libm rounds it: e^x computed in double (Cody-Waite reduction, |r| <= ln2/2,
 * a degree-12 Taylor polynomial: relative error < 1e-15) and rounded once to float, so the result
 * is the correctly rounded expf, which glibc's expf also returns but for rare near-ties. Twice the
 * work of rk_exp8; for the SiLU, whose outputs are quantised to 8 bits downstream, where a
 * last-bit difference moves perplexity measurably (0.1-0.16% with rk_exp8 against libm's expf). */
static inline __m256d rk_exp4d(__m128 xf) {
    __m256d x = _mm256_cvtps_pd(xf);
    x = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(RK_EXPD_MIN)), _mm256_set1_pd(RK_EXPD_MAX));
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(RK_EXPD_LOG2E)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(RK_EXPD_LN2_HI), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(RK_EXPD_LN2_LO), r);
    __m256d p = _mm256_set1_pd(rk_expd_inv_fact[12]);
    for (int k = 11; k >= 0; k--) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(rk_expd_inv_fact[k]));
    const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)),
                                                         _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
}
static inline __m256 rk_expf8(__m256 x) {
    const __m128 lo = _mm256_cvtpd_ps(rk_exp4d(_mm256_castps256_ps128(x)));
    const __m128 hi = _mm256_cvtpd_ps(rk_exp4d(_mm256_extractf128_ps(x, 1)));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

#endif
