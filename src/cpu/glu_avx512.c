/*
 * glu_avx512.c: glu_avx2.c's SwiGLU sixteen lanes at a time, for the CPUs of the AVX512-VNNI tier:
 * each lane the same float operations (exp in double, rounded once: exp_avx512.h), so the same
 * bits. Compiled with -ffp-contract=off.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !defined(__AVX512F__)
#pragma GCC target("avx2,fma,f16c,avx512f")
#endif

#include <immintrin.h>
#include <stddef.h>

#include "exp_avx512.h"

void rk_avx2_swiglu(float *a, const float *b, size_t n);

static inline __m512 swiglu16(__m512 x, __m512 y) {
    const __m512 e = rk_expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), y);
}

void rk_avx512_swiglu(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(a + i, swiglu16(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
    if (i < n) rk_avx2_swiglu(a + i, b + i, n - i); /* the same lanes' operations */
}

#endif
