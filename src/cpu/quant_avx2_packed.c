/*
 * quant_avx2_packed.c: AVX2 kernels over the interleaved 8-row layouts of
 * repack.h. Lane r of every vector belongs to weight row r of the group: the
 * quants of a 4-byte chunk meet a broadcast of the matching 4 activation
 * bytes (maddubs, then madd: exact integer sums, as in quant_avx2.c), and each
 * block ends with one f32 multiply-add per lane (K-quants: two, with the mins).
 * One token and RK_DOT_ROWS tokens run the same per-lane operations in the same
 * order, so a token's outputs do not depend on how a batch is split. Zen 1 runs
 * one 256-bit maddubs/madd per two cycles: the K-quant kernels sum as many
 * chunks in i16 as the bounds allow before the madd that applies the scale.
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
#include "quant_packed_x86.h"

/* Unroll counts for the K-quant chunk loops (GCC 12). Fully unrolled, GCC reassociates their
 * integer sums into trees and computes all products first, spilling them to the stack; not
 * unrolled, it copies each accumulator once per step (a loop-exit artefact). The counts below
 * avoid both (measured: callgrind instructions per block and time on one core, the packed Q4_K
 * kernel 8% faster for 4 tokens, Q6_K 8% for 4 tokens and 20% for one). Q5_0's four chunks run
 * fastest fully unrolled. */
#if defined(__GNUC__) && !defined(__clang__)
#define PRAGMA(x) _Pragma(#x)
#define UNROLL(n) PRAGMA(GCC unroll n)
#else
#define UNROLL(n)
#endif

/* y[t][r] = sum_b d_w[r] d_a[t] isum + m_w[r] s_a[t]  (Q4_1 x Q8_1) */
INLINE void q4_1x8(int64_t n, const int nt, float *s, size_t ss, const blk_q4_1x8 *w, const uint8_t *a,
                   size_t as) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i sum[RK_DOT_ROWS];
        prefetch_ahead(w + b, sizeof w[b]);
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            nibbles(load256(w[b].qs + 32 * c), &lo, &hi);
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

/* y[t][r] = sum_b d_w[r] d_a[t] sum((q - z) a)  (Q4_0 or Q5_0 x Q8_0; z = 8 or 16) */
INLINE void q45_0x8(int64_t n, const int nt, const int five, float *s, size_t ss, const void *vw, const uint8_t *a,
                    size_t as) {
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t bsize = five ? sizeof(blk_q5_0x8) : sizeof(blk_q4_0x8);
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i sum[RK_DOT_ROWS];
        prefetch_ahead((const uint8_t *)vw + (size_t)b * bsize, bsize);
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        const __m256i qh = five ? load256(((const blk_q5_0x8 *)vw)[b].qh) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            signed_quants(vw, five, b, qh, c, &lo, &hi);
            const __m256i alo = _mm256_sign_epi8(lo, lo), ahi = _mm256_sign_epi8(hi, hi);
            for (int t = 0; t < nt; t++) {
                const blk_q8_0 *x = (const blk_q8_0 *)(a + (size_t)t * as) + b;
                /* |q - z| <= 16 and |a| <= 127 (Q8_0 scales by amax / 127): pairs <= 4064,
                 * eight of them (4 chunks, low and high) still inside i16 */
                const __m256i pl = _mm256_maddubs_epi16(alo, _mm256_sign_epi8(bcast4(x->qs + 4 * c), lo));
                const __m256i ph = _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(bcast4(x->qs + 16 + 4 * c), hi));
                sum[t] = _mm256_add_epi16(sum[t], _mm256_add_epi16(pl, ph));
            }
        }
        const __m256 dw = cvt8h(five ? ((const blk_q5_0x8 *)vw)[b].d : ((const blk_q4_0x8 *)vw)[b].d);
        for (int t = 0; t < nt; t++) {
            const __m128 ds = halves2((const blk_q8_0 *)(a + (size_t)t * as) + b);
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[t], ones));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), isum, acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}
INLINE void q4_0x8(int64_t n, const int nt, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_0x8(n, nt, 0, s, ss, w, a, as);
}
INLINE void q5_0x8(int64_t n, const int nt, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_0x8(n, nt, 1, s, ss, w, a, as);
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

/* ---- K-quants against Q8_K: 256-element super-blocks, f32 activation scale, and bsums
 * (sums of 16 activations) for the terms that do not depend on the weight's quants ---- */

#define Q8K(t) ((const blk_q8_K *)(a + (size_t)(t) * as) + b)

/* y[t][r] = sum_b d_a[t] (d_w[r] sum_j sc_j[r] sum(q a) - dmin_w[r] sum_j mn_j[r] sum(a))
 * (Q4_K or, with the fifth bits of qh, Q5_K x Q8_K). Group g of 64 elements is chunks
 * 8g..8g+7: low nibbles sub-block 2g, high nibbles 2g + 1. */
INLINE void q45_Kx8(int64_t n, const int nt, const int five, float *s, size_t ss, const void *vw,
                    const uint8_t *a, size_t as) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const size_t bytes = five ? sizeof(blk_q5_Kx8) : sizeof(blk_q4_Kx8);
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        /* the layouts agree up to the scales; q5_K then has qh before qs */
        const uint8_t *blk = (const uint8_t *)vw + (size_t)b * bytes;
        const blk_q4_Kx8 *w4 = (const blk_q4_Kx8 *)blk;
        const blk_q5_Kx8 *w5 = (const blk_q5_Kx8 *)blk;
        const uint8_t *qs = five ? w5->qs : w4->qs;
        prefetch_ahead(blk, bytes);
        __m256i sc[2], mn[2];
        k_scales8(w4->scales, sc, mn);
        const __m256 dw = cvt8h(w4->d), mw = cvt8h(w4->dmin);
        /* the mins first: mn is then free before the main loop */
        for (int t = 0; t < nt; t++) {
            const __m256 da = _mm256_set1_ps(Q8K(t)->d);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(mw, da), _mm256_cvtepi32_ps(k_mins8(mn, Q8K(t))), acc[t]);
        }
        __m256i isum[RK_DOT_ROWS];
        for (int t = 0; t < nt; t++) isum[t] = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            const __m256i sc_lo = shuffle(sc[g / 2], ctl_same[(2 * g) % 4]);
            const __m256i sc_hi = shuffle(sc[g / 2], ctl_same[(2 * g + 1) % 4]);
            /* u4 x s8 pairs <= 3810: the 8 chunks' sums fit i16; u5 pairs <= 7874: 4 chunks. The low
             * and the high nibbles in passes of their own: 4 accumulators live, not 8 (with 8, GCC
             * spills one and copies the others each step) */
            const int run = five ? 4 : 8;
            for (int nib = 0; nib < 2; nib++)
                for (int c0 = 0; c0 < 8; c0 += run) {
                    __m256i sum[RK_DOT_ROWS];
                    for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
                    UNROLL(4)
                    for (int c = c0; c < c0 + run; c++) {
                        const __m256i q = load256(qs + 256 * g + 32 * c);
                        __m256i v = _mm256_and_si256(nib ? _mm256_srli_epi16(q, 4) : q, m4);
                        if (five) v = _mm256_or_si256(v, bit_to_4(load256(w5->qh + 32 * c), 2 * g + nib));
                        for (int t = 0; t < nt; t++) {
                            const int8_t *x = Q8K(t)->qs + 64 * g + 32 * nib + 4 * c;
                            sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(v, bcast4(x)));
                        }
                    }
                    const __m256i scale = nib ? sc_hi : sc_lo;
                    for (int t = 0; t < nt; t++) isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(sum[t], scale));
                }
        }
        for (int t = 0; t < nt; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(Q8K(t)->d)), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

INLINE void q4_Kx8(int64_t n, const int nt, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_Kx8(n, nt, 0, s, ss, w, a, as);
}
INLINE void q5_Kx8(int64_t n, const int nt, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_Kx8(n, nt, 1, s, ss, w, a, as);
}

/* y[t][r] = sum_b d_w[r] d_a[t] sum_j sc_j[r] sum((q - 32) a)  (Q6_K x Q8_K). In each half h
 * of 128 elements, element 32m + l (m = 0..3, l = 0..31) takes nibble m / 2 of ql byte
 * 64h + 32(m % 2) + l and bits 2m, 2m+1 of qh byte 32h + l; sub-block j = 8h + 2m + l / 16. */
INLINE void q6_Kx8(int64_t n, const int nt, float *s, size_t ss, const void *vw, const uint8_t *a, size_t as) {
    const blk_q6_Kx8 *w = vw;
    __m256 acc[RK_DOT_ROWS];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        prefetch_ahead(w + b, sizeof w[b]);
        __m256i sc[4], isum[RK_DOT_ROWS];
        for (int k = 0; k < 4; k++) sc[k] = load256(w[b].scales + 32 * k); /* lane r: row r's scales 4k..4k+3 */
        for (int t = 0; t < nt; t++) isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), q6_offset8(sc, Q8K(t)));
        for (int h = 0; h < 2; h++)
            UNROLL(4)
            for (int m = 0; m < 4; m++)
                UNROLL(2)
                for (int half = 0; half < 2; half++) {
                    /* lane r: row r's scale of sub-block 8h + 2m + half, in both i16 */
                    const __m256i scj = shuffle_s8(sc[2 * h + m / 2], ctl_same_hi[2 * (m % 2) + half]);
                    UNROLL(1)
                    for (int k = 4 * half; k < 4 * half + 4; k += 2) { /* chunks k, k + 1 of the 8 in 32 bytes */
                        const __m256i q0 = q6_chunk(&w[b], h, m, k), q1 = q6_chunk(&w[b], h, m, k + 1);
                        for (int t = 0; t < nt; t++) {
                            const int8_t *x = Q8K(t)->qs + 128 * h + 32 * m + 4 * k;
                            /* u6 x s8 pairs <= 16002: two of them inside i16 */
                            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(q0, bcast4(x)),
                                                               _mm256_maddubs_epi16(q1, bcast4(x + 4)));
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, scj));
                        }
                    }
                }
        const __m256 dw = cvt8h(w[b].d);
        for (int t = 0; t < nt; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(Q8K(t)->d)), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

#undef Q8K

/* nt = RK_DOT_ROWS in one pass; any other count token by token (the same bits) */
#define PACKED_ENTRY(name, kernel, blk)                                                                   \
    void name(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as) {          \
        if (nt == RK_DOT_ROWS) {                                                                          \
            kernel(n, RK_DOT_ROWS, s, ss, (const blk *)w, (const uint8_t *)a, as);                        \
            return;                                                                                       \
        }                                                                                                 \
        for (int t = 0; t < nt; t++) kernel(n, 1, s + (size_t)t * ss, ss, (const blk *)w, (const uint8_t *)a + (size_t)t * as, as); \
    }

PACKED_ENTRY(rk_avx2_vec_dot_packed_q4_0, q4_0x8, void)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q4_1, q4_1x8, blk_q4_1x8)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q5_0, q5_0x8, void)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q8_0, q8_0x8, blk_q8_0x8)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q4_K, q4_Kx8, void)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q5_K, q5_Kx8, void)
PACKED_ENTRY(rk_avx2_vec_dot_packed_q6_K, q6_Kx8, void)

#endif
