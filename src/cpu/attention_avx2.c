/*
 * attention_avx2.c: AVX2/FMA kernels of attention over f32 blocks of keys and values:
 * key-query dot products, value sums and the softmax exponentials. Built with
 * -ffp-contract=off: the value sums multiply then add, never fused, as the portable
 * twins in attention.c do; the dot products and exp use explicit FMAs.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <math.h>

#include "quant_avx2.h"

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

/* exp(x) for 8 lanes, Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for
 * e^r, then 2^n put into the exponent bits (relative error ~2e-7, inputs clamped to +-88.38) */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647950f));
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* sc[i] = exp(sc[i] - mx), 0 where sc[i] is -inf; returns the sum, in double: four lanes over
 * elements i = j mod 4, added (0 + 1) + (2 + 3), then the tail in order */
double rk_avx2_softmax_exp(float *sc, int n, float mx) {
    const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(sc + i);
        const __m256 w = _mm256_andnot_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ), exp8(_mm256_sub_ps(x, vmx)));
        _mm256_storeu_ps(sc + i, w);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(w)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1)));
    }
    double l[4];
    _mm256_storeu_pd(l, _mm256_add_pd(s0, s1));
    double sum = (l[0] + l[1]) + (l[2] + l[3]);
    if (i < n) { /* the tail through the same polynomial, zero-padded */
        float buf[8];
        for (int k = 0; k < 8; k++) buf[k] = i + k < n ? sc[i + k] : -INFINITY;
        const __m256 x = _mm256_loadu_ps(buf);
        _mm256_storeu_ps(buf, _mm256_andnot_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ), exp8(_mm256_sub_ps(x, vmx))));
        for (int k = 0; i + k < n; k++) {
            sc[i + k] = buf[k];
            sum += buf[k];
        }
    }
    return sum;
}

#endif
