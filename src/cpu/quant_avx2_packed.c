/*
 * quant_avx2_packed.c: AVX2 kernels over the interleaved 8-row layouts of
 * repack.h. Lane r of every vector belongs to weight row r of the group: the
 * quants of a 4-byte chunk meet a broadcast of the matching 4 activation
 * bytes (maddubs, then madd: exact integer sums, as in quant_avx2.c), and each
 * block ends with one f32 multiply-add per lane. One token and RK_DOT_ROWS
 * tokens run the same per-lane operations in the same order, so a token's
 * outputs do not depend on how a batch is split.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <string.h>

#include "quant.h"
#include "quant_avx2.h"
#include "repack.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
/* 4 activation bytes at p, in every lane */
INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
/* the f16 pair at p (d and s of a Q8_1 block, or d and the next half) as two floats */
INLINE __m128 halves2(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)v));
}
/* A decode step streams each matrix once, in short runs (a thread's share of one matmul):
 * asking for the bytes 1.5 KiB ahead keeps the loads in flight where the hardware prefetcher
 * is still learning the stream (+17% decode tokens/s on SmolLM2, 2 threads, A/B in one process) */
#define PREFETCH_BYTES 1536
INLINE void prefetch_ahead(const void *blk, size_t size) {
    for (size_t k = 0; k < size; k += 64) _mm_prefetch((const char *)blk + PREFETCH_BYTES + k, _MM_HINT_T0);
}
INLINE __m256 cvt8h(const uint16_t *h) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)); }

/* y[t][r] = sum_b d_w[r] d_a[t] isum + m_w[r] s_a[t]  (Q4_1 x Q8_1) */
INLINE void q4_1x8(int64_t n, const int nt, float *s, size_t ss, const blk_q4_1x8 *w, const uint8_t *a,
                   size_t as) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i sum[RK_DOT_ROWS];
        prefetch_ahead(w + b, sizeof w[b]);
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = load256(w[b].qs + 32 * c);
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            for (int t = 0; t < nt; t++) {
                const blk_q8_1 *x = (const blk_q8_1 *)(a + (size_t)t * as) + b;
                /* u4 x s8 pairs <= 3840: eight of them stay inside i16 */
                sum[t] = _mm256_add_epi16(sum[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(x->qs + 4 * c)),
                                                                   _mm256_maddubs_epi16(hi, bcast4(x->qs + 16 + 4 * c))));
            }
        }
        const __m256 dw = cvt8h(w[b].d), mw = cvt8h(w[b].m);
        for (int t = 0; t < nt; t++) {
            const __m128 ds = halves2((const blk_q8_1 *)(a + (size_t)t * as) + b);
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[t], ones));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), isum, acc[t]);
            acc[t] = _mm256_fmadd_ps(mw, _mm256_broadcastss_ps(_mm_movehdup_ps(ds)), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

/* y[t][r] = sum_b d_w[r] d_a[t] sum((q - 8) a)  (Q4_0 x Q8_0) */
INLINE void q4_0x8(int64_t n, const int nt, float *s, size_t ss, const blk_q4_0x8 *w, const uint8_t *a,
                   size_t as) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i sum[RK_DOT_ROWS];
        prefetch_ahead(w + b, sizeof w[b]);
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = load256(w[b].qs + 32 * c);
            const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(q, m4), eight);
            const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), eight);
            const __m256i alo = _mm256_sign_epi8(lo, lo), ahi = _mm256_sign_epi8(hi, hi);
            for (int t = 0; t < nt; t++) {
                const blk_q8_0 *x = (const blk_q8_0 *)(a + (size_t)t * as) + b;
                /* |q - 8| <= 8: pairs <= 2048, eight of them inside i16 */
                const __m256i pl = _mm256_maddubs_epi16(alo, _mm256_sign_epi8(bcast4(x->qs + 4 * c), lo));
                const __m256i ph = _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(bcast4(x->qs + 16 + 4 * c), hi));
                sum[t] = _mm256_add_epi16(sum[t], _mm256_add_epi16(pl, ph));
            }
        }
        const __m256 dw = cvt8h(w[b].d);
        for (int t = 0; t < nt; t++) {
            const __m128 ds = halves2((const blk_q8_0 *)(a + (size_t)t * as) + b);
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[t], ones));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), isum, acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

/* y[t][r] = sum_b d_w[r] d_a[t] sum(q a)  (Q8_0 x Q8_0) */
INLINE void q8_0x8(int64_t n, const int nt, float *s, size_t ss, const blk_q8_0x8 *w, const uint8_t *a,
                   size_t as) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i sum[RK_DOT_ROWS];
        prefetch_ahead(w + b, sizeof w[b]);
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            const __m256i q = load256(w[b].qs + 32 * c);
            const __m256i aq = _mm256_sign_epi8(q, q);
            for (int t = 0; t < nt; t++) {
                const blk_q8_0 *x = (const blk_q8_0 *)(a + (size_t)t * as) + b;
                /* pairs of s8 x s8 can reach 2 * 127 * 128: to i32 at once */
                const __m256i p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(bcast4(x->qs + 4 * c), q));
                sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(p, ones));
            }
        }
        const __m256 dw = cvt8h(w[b].d);
        for (int t = 0; t < nt; t++) {
            const __m128 ds = halves2((const blk_q8_0 *)(a + (size_t)t * as) + b);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), _mm256_cvtepi32_ps(sum[t]), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

/* nt = RK_DOT_ROWS in one pass; any other count token by token (the same bits) */
#define PACKED_ENTRY(name, kernel, blk)                                                                   \
    void name(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as) {          \
        if (nt == RK_DOT_ROWS) {                                                                          \
            kernel(n, RK_DOT_ROWS, s, ss, (const blk *)w, (const uint8_t *)a, as);                        \
            return;                                                                                       \
        }                                                                                                 \
        for (int t = 0; t < nt; t++) kernel(n, 1, s + (size_t)t * ss, ss, (const blk *)w, (const uint8_t *)a + (size_t)t * as, as); \
    }

PACKED_ENTRY(rk_avx2_vec_dot_packed_q4_0, q4_0x8, blk_q4_0x8)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q4_1, q4_1x8, blk_q4_1x8)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q8_0, q8_0x8, blk_q8_0x8)

#endif
