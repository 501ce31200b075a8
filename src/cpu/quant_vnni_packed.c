/*
 * quant_vnni_packed.c: the prefill tiles of quant_avx2_packed.c (RK_DOT_ROWS tokens against 8
 * interleaved weight rows) with AVX512-VNNI's 256-bit dpbusd, which sums four u8 x s8 products
 * into each i32 lane in one instruction where AVX2 needs maddubs, an i16 add and a madd. The
 * integer sums are exact either way (AVX2's i16 partial sums never saturate: see the bounds
 * there), and every float operation is the AVX2 kernel's, in its order: the outputs are the
 * AVX2 kernels' bit for bit (tests/golden_digests.py checks the "vnni" configuration against the
 * "avx2" digests). Each token keeps two independent accumulators (low and high nibbles, or two
 * chunks) so that dpbusd's 5-cycle latency does not serialise the tile. Fewer tokens (decode)
 * run the AVX2 kernels: they are bound by memory there, and their i16 adds have no such latency.
 * The K-quants also have 16-row tiles (two 8-row groups against the same activation broadcasts,
 * rk_vec_dot_packed16_fn): +18% prefill on Qwen2.5-Coder-1.5B; the same pairing for the 32-element
 * types was slower (their blocks are short and the unrolled tile spills), so they keep 8 rows.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX512VNNI__) && defined(__AVX512VL__))
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#endif

#include <immintrin.h>

#include "quant.h"
#include "quant_packed_x86.h"

#define NT RK_DOT_ROWS

/* in asm, accumulating in place: with the intrinsic GCC copies each accumulator into another
 * register and back around every dpbusd, and spills some inside the loop of the 16-row tile */
INLINE __m256i dot4(__m256i acc, __m256i u, __m256i s) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
    return acc;
}
/* v in a register: GCC otherwise folds a load into both nibbles' instructions, and the
 * load ports, not dpbusd, then bound the tile */
INLINE __m256i in_reg(__m256i v) {
    __asm__("" : "+v"(v));
    return v;
}

/* Q4_1 x Q8_1: as q4_1x8 */
static void q4_1x8(int64_t n, float *s, size_t ss, const blk_q4_1x8 *w, const uint8_t *a, size_t as) {
    __m256 acc[NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i lo_sum[NT], hi_sum[NT];
        prefetch_ahead(w + b, sizeof w[b]);
        for (int t = 0; t < NT; t++) lo_sum[t] = hi_sum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            nibbles(in_reg(load256(w[b].qs + 32 * c)), &lo, &hi);
            for (int t = 0; t < NT; t++) {
                const blk_q8_1 *x = (const blk_q8_1 *)(a + (size_t)t * as) + b;
                lo_sum[t] = dot4(lo_sum[t], lo, bcast4(x->qs + 4 * c));
                hi_sum[t] = dot4(hi_sum[t], hi, bcast4(x->qs + 16 + 4 * c));
            }
        }
        const __m256 dw = cvt8h(w[b].d), mw = cvt8h(w[b].m);
        for (int t = 0; t < NT; t++) {
            const __m128 ds = halves2((const blk_q8_1 *)(a + (size_t)t * as) + b);
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_add_epi32(lo_sum[t], hi_sum[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), isum, acc[t]);
            acc[t] = _mm256_fmadd_ps(mw, _mm256_broadcastss_ps(_mm_movehdup_ps(ds)), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

/* The "_0" types against Q8_0 take the weights' quants unsigned (Q4_0 q, Q5_0 q, Q8_0 q + 128) and
 * start each token's integer sum at -offset * (the sum of its activation quants), which the matmul
 * stores after each activation row (rk_act_row_bytes): the integers the AVX2 kernels reach with
 * the sign trick (|q - z| against the activation with q - z's sign), with two instructions per
 * chunk and token instead of four. Bounds: |sum| <= 255 * 128 * 32 < 2^31. */
INLINE __m256i offset_start(const uint8_t *a, size_t as, int t, int64_t n, int64_t b, int shift) {
    return _mm256_slli_epi32(_mm256_set1_epi32(rk_act_neg_sum_q8_0(a + (size_t)t * as, n, b)), shift);
}

/* Q4_0 or Q5_0 x Q8_0: as q45_0x8 */
INLINE void q45_0x8(int64_t n, const int five, float *s, size_t ss, const void *vw, const uint8_t *a, size_t as) {
    const size_t bsize = five ? sizeof(blk_q5_0x8) : sizeof(blk_q4_0x8);
    __m256 acc[NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i lo_sum[NT], hi_sum[NT];
        prefetch_ahead((const uint8_t *)vw + (size_t)b * bsize, bsize);
        for (int t = 0; t < NT; t++) {
            lo_sum[t] = offset_start(a, as, t, n, b, five ? 4 : 3);
            hi_sum[t] = _mm256_setzero_si256();
        }
        const __m256i qh = five ? load256(((const blk_q5_0x8 *)vw)[b].qh) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            unsigned_quants(vw, five, b, qh, c, &lo, &hi);
            for (int t = 0; t < NT; t++) {
                const blk_q8_0 *x = (const blk_q8_0 *)(a + (size_t)t * as) + b;
                lo_sum[t] = dot4(lo_sum[t], lo, bcast4(x->qs + 4 * c));
                hi_sum[t] = dot4(hi_sum[t], hi, bcast4(x->qs + 16 + 4 * c));
            }
        }
        const __m256 dw = cvt8h(five ? ((const blk_q5_0x8 *)vw)[b].d : ((const blk_q4_0x8 *)vw)[b].d);
        for (int t = 0; t < NT; t++) {
            const __m128 ds = halves2((const blk_q8_0 *)(a + (size_t)t * as) + b);
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_add_epi32(lo_sum[t], hi_sum[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), isum, acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

/* Q8_0 x Q8_0: as q8_0x8; even and odd chunks in two accumulators */
static void q8_0x8(int64_t n, float *s, size_t ss, const blk_q8_0x8 *w, const uint8_t *a, size_t as) {
    const __m256i flip = _mm256_set1_epi8((char)0x80); /* q + 128 as u8 */
    __m256 acc[NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK; b++) {
        __m256i sum[2][NT];
        prefetch_ahead(w + b, sizeof w[b]);
        for (int t = 0; t < NT; t++) {
            sum[0][t] = offset_start(a, as, t, n, b, 7);
            sum[1][t] = _mm256_setzero_si256();
        }
        for (int c = 0; c < 8; c++) {
            const __m256i u = _mm256_xor_si256(load256(w[b].qs + 32 * c), flip);
            for (int t = 0; t < NT; t++) {
                const blk_q8_0 *x = (const blk_q8_0 *)(a + (size_t)t * as) + b;
                sum[c % 2][t] = dot4(sum[c % 2][t], u, bcast4(x->qs + 4 * c));
            }
        }
        const __m256 dw = cvt8h(w[b].d);
        for (int t = 0; t < NT; t++) {
            const __m128 ds = halves2((const blk_q8_0 *)(a + (size_t)t * as) + b);
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_add_epi32(sum[0][t], sum[1][t]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcastss_ps(ds)), isum, acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(s + (size_t)t * ss, acc[t]);
}

#define Q8K(t) ((const blk_q8_K *)(a + (size_t)(t) * as) + b)

/* Q4_K or Q5_K x Q8_K: as q45_Kx8, for G (1 or 2) groups of 8 rows, vw[0] and vw[1]. Group g's
 * chunk c feeds sub-block 2g (low nibbles) and 2g + 1 (high); each sub-block's i32 sum takes its
 * 6-bit scale with one multiply. Two groups share each activation broadcast: the tile's loop is
 * bound by its loads (9 per 8 dpbusd with one group, 5 with two). Q4_K takes its high nibbles
 * in place (q & 0xF0, one instruction where the shift made two, on the ports dpbusd needs) and
 * its low sums' scales times 16, so the block's sum is 16x the integer, shifted back before it
 * is converted: the same integers (|16 sum| <= 16 * 8 * 63 * 32 * 15 * 127 < 2^31), +7% on
 * the tile; unrolling g (the scale shuffles' controls then immediates) is part of that. */
INLINE void q45_Kx8(int64_t n, const int five, const int G, float *s, size_t ss, const void *const *vw,
                    const uint8_t *a, size_t as) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const size_t bytes = five ? sizeof(blk_q5_Kx8) : sizeof(blk_q4_Kx8);
    __m256 acc[2][NT];
    for (int k = 0; k < G; k++)
        for (int t = 0; t < NT; t++) acc[k][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const uint8_t *blk[2];
        const uint8_t *qs[2];
        __m256i sc[2][2];
        for (int k = 0; k < G; k++) {
            blk[k] = (const uint8_t *)vw[k] + (size_t)b * bytes;
            qs[k] = five ? ((const blk_q5_Kx8 *)blk[k])->qs : ((const blk_q4_Kx8 *)blk[k])->qs;
            prefetch_ahead(blk[k], bytes);
            const blk_q4_Kx8 *w4 = (const blk_q4_Kx8 *)blk[k];
            __m256i mn[2];
            k_scales8(w4->scales, sc[k], mn);
            const __m256 mw = cvt8h(w4->dmin);
            for (int t = 0; t < NT; t++) {
                const __m256 da = _mm256_set1_ps(Q8K(t)->d);
                acc[k][t] = _mm256_fnmadd_ps(_mm256_mul_ps(mw, da), _mm256_cvtepi32_ps(k_mins8(mn, Q8K(t))), acc[k][t]);
            }
        }
        __m256i isum[2][NT];
        for (int k = 0; k < G; k++)
            for (int t = 0; t < NT; t++) isum[k][t] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m256i lo_sum[2][NT], hi_sum[2][NT];
            for (int k = 0; k < G; k++)
                for (int t = 0; t < NT; t++) lo_sum[k][t] = hi_sum[k][t] = _mm256_setzero_si256();
            for (int c = 0; c < 8; c++) {
                __m256i lo[2], hi[2];
                for (int k = 0; k < G; k++) {
                    const __m256i q = in_reg(load256(qs[k] + 256 * g + 32 * c));
                    lo[k] = _mm256_and_si256(q, m4);
                    if (five) {
                        const __m256i h = load256(((const blk_q5_Kx8 *)blk[k])->qh + 32 * c);
                        lo[k] = _mm256_or_si256(lo[k], bit_to_4(h, 2 * g));
                        hi[k] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), bit_to_4(h, 2 * g + 1));
                    } else {
                        hi[k] = _mm256_andnot_si256(m4, q); /* 16 x the high nibble */
                    }
                }
                for (int t = 0; t < NT; t++) {
                    const int8_t *x = Q8K(t)->qs + 64 * g + 4 * c;
                    const __m256i xl = bcast4(x), xh = bcast4(x + 32);
                    for (int k = 0; k < G; k++) {
                        lo_sum[k][t] = dot4(lo_sum[k][t], lo[k], xl);
                        hi_sum[k][t] = dot4(hi_sum[k][t], hi[k], xh);
                    }
                }
            }
            for (int k = 0; k < G; k++) {
                /* Q4_K's high-nibble sums are 16x: the low ones' scale takes the same factor */
                const __m256i sc_lo = _mm256_slli_epi32(shuffle(sc[k][g / 2], ctl_word[(2 * g) % 4]), five ? 0 : 4);
                const __m256i sc_hi = shuffle(sc[k][g / 2], ctl_word[(2 * g + 1) % 4]);
                for (int t = 0; t < NT; t++)
                    isum[k][t] = _mm256_add_epi32(isum[k][t], _mm256_add_epi32(_mm256_mullo_epi32(lo_sum[k][t], sc_lo),
                                                                               _mm256_mullo_epi32(hi_sum[k][t], sc_hi)));
            }
        }
        for (int k = 0; k < G; k++) {
            const __m256 dw = cvt8h(((const blk_q4_Kx8 *)blk[k])->d);
            for (int t = 0; t < NT; t++)
                acc[k][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(Q8K(t)->d)),
                                            _mm256_cvtepi32_ps(_mm256_srai_epi32(isum[k][t], five ? 0 : 4)), acc[k][t]);
        }
    }
    for (int k = 0; k < G; k++)
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(s + (size_t)t * ss + 8 * k, acc[k][t]);
}

/* Q6_K x Q8_K: as q6_Kx8, for G (1 or 2) groups of 8 rows. The two sub-blocks of group m
 * (chunks 0-3 and 4-7) in two accumulators. */
INLINE void q6_Kx8_g(int64_t n, const int G, float *s, size_t ss, const void *const *vw, const uint8_t *a, size_t as) {
    __m256 acc[2][NT];
    for (int k = 0; k < G; k++)
        for (int t = 0; t < NT; t++) acc[k][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const blk_q6_Kx8 *w[2];
        __m256i sc[2][4], isum[2][NT];
        for (int k = 0; k < G; k++) {
            w[k] = (const blk_q6_Kx8 *)vw[k] + b;
            prefetch_ahead(w[k], sizeof *w[k]);
            for (int i = 0; i < 4; i++) sc[k][i] = load256(w[k]->scales + 32 * i);
            for (int t = 0; t < NT; t++) isum[k][t] = _mm256_sub_epi32(_mm256_setzero_si256(), q6_offset8(sc[k], Q8K(t)));
        }
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < 4; m++) {
                __m256i sum[2][2][NT];
                for (int k = 0; k < G; k++)
                    for (int t = 0; t < NT; t++) sum[k][0][t] = sum[k][1][t] = _mm256_setzero_si256();
                for (int i = 0; i < 4; i++) {
                    __m256i q0[2], q1[2];
                    for (int k = 0; k < G; k++) {
                        q0[k] = q6_chunk(w[k], h, m, i);
                        q1[k] = q6_chunk(w[k], h, m, i + 4);
                    }
                    for (int t = 0; t < NT; t++) {
                        const int8_t *x = Q8K(t)->qs + 128 * h + 32 * m + 4 * i;
                        const __m256i x0 = bcast4(x), x1 = bcast4(x + 16);
                        for (int k = 0; k < G; k++) {
                            sum[k][0][t] = dot4(sum[k][0][t], q0[k], x0);
                            sum[k][1][t] = dot4(sum[k][1][t], q1[k], x1);
                        }
                    }
                }
                for (int k = 0; k < G; k++) {
                    /* row r's int8 scales of sub-blocks 8h + 2m and 8h + 2m + 1, sign-extended */
                    const __m256i sc0 = _mm256_srai_epi32(shuffle(sc[k][2 * h + m / 2], ctl_word_hi[2 * (m % 2)]), 24);
                    const __m256i sc1 = _mm256_srai_epi32(shuffle(sc[k][2 * h + m / 2], ctl_word_hi[2 * (m % 2) + 1]), 24);
                    for (int t = 0; t < NT; t++)
                        isum[k][t] = _mm256_add_epi32(isum[k][t], _mm256_add_epi32(_mm256_mullo_epi32(sum[k][0][t], sc0),
                                                                                   _mm256_mullo_epi32(sum[k][1][t], sc1)));
                }
            }
        for (int k = 0; k < G; k++) {
            const __m256 dw = cvt8h(w[k]->d);
            for (int t = 0; t < NT; t++)
                acc[k][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(Q8K(t)->d)), _mm256_cvtepi32_ps(isum[k][t]),
                                            acc[k][t]);
        }
    }
    for (int k = 0; k < G; k++)
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(s + (size_t)t * ss + 8 * k, acc[k][t]);
}
static void q6_Kx8(int64_t n, float *s, size_t ss, const void *vw, const uint8_t *a, size_t as) {
    q6_Kx8_g(n, 1, s, ss, &vw, a, as);
}

#undef Q8K

static void q4_0x8(int64_t n, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_0x8(n, 0, s, ss, w, a, as);
}
static void q5_0x8(int64_t n, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_0x8(n, 1, s, ss, w, a, as);
}
static void q4_Kx8(int64_t n, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_Kx8(n, 0, 1, s, ss, &w, a, as);
}
static void q5_Kx8(int64_t n, float *s, size_t ss, const void *w, const uint8_t *a, size_t as) {
    q45_Kx8(n, 1, 1, s, ss, &w, a, as);
}

/* a full tile here; fewer tokens on the AVX2 kernel (the same bits) */
#define VNNI_ENTRY(name, kernel, blk, avx2)                                                       \
    void name(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as) {  \
        if (nt == NT)                                                                             \
            kernel(n, s, ss, (const blk *)w, (const uint8_t *)a, as);                             \
        else                                                                                      \
            avx2(n, nt, s, ss, w, a, as);                                                         \
    }

VNNI_ENTRY(rk_vnni_vec_dot_packed_q4_0, q4_0x8, void, rk_avx2_vec_dot_packed_q4_0)
VNNI_ENTRY(rk_vnni_vec_dot_packed_q4_1, q4_1x8, blk_q4_1x8, rk_avx2_vec_dot_packed_q4_1)
VNNI_ENTRY(rk_vnni_vec_dot_packed_q5_0, q5_0x8, void, rk_avx2_vec_dot_packed_q5_0)
VNNI_ENTRY(rk_vnni_vec_dot_packed_q8_0, q8_0x8, blk_q8_0x8, rk_avx2_vec_dot_packed_q8_0)
VNNI_ENTRY(rk_vnni_vec_dot_packed_q4_K, q4_Kx8, void, rk_avx2_vec_dot_packed_q4_K)
VNNI_ENTRY(rk_vnni_vec_dot_packed_q5_K, q5_Kx8, void, rk_avx2_vec_dot_packed_q5_K)
VNNI_ENTRY(rk_vnni_vec_dot_packed_q6_K, q6_Kx8, void, rk_avx2_vec_dot_packed_q6_K)

/* 16 rows (two groups, group_bytes apart) x RK_DOT_ROWS tokens: s[t * ss + r], r < 16 */
#define VNNI_ENTRY16(name, call)                                                                                \
    void name(int64_t n, float *s, size_t ss, const void *w, size_t group_bytes, const void *a, size_t as) {    \
        const void *vw[2] = {w, (const uint8_t *)w + group_bytes};                                              \
        call;                                                                                                   \
    }

VNNI_ENTRY16(rk_vnni_vec_dot_packed16_q4_K, q45_Kx8(n, 0, 2, s, ss, vw, (const uint8_t *)a, as))
VNNI_ENTRY16(rk_vnni_vec_dot_packed16_q5_K, q45_Kx8(n, 1, 2, s, ss, vw, (const uint8_t *)a, as))
VNNI_ENTRY16(rk_vnni_vec_dot_packed16_q6_K, q6_Kx8_g(n, 2, s, ss, vw, (const uint8_t *)a, as))

#endif
