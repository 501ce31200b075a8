/*
 * quant_packed_x86.h: the pieces the x86 kernels over the interleaved layouts of repack.h share
 * (quant_avx2_packed.c: AVX2; quant_vnni_packed.c: the same sums with AVX512-VNNI's dpbusd):
 * loads and broadcasts, the pshufb controls, and the unpacking of quants and scales for 8 rows.
 * Include after <immintrin.h>, in a file compiled for AVX2, FMA and F16C. Internal header.
 */
#ifndef RK_QUANT_PACKED_X86_H
#define RK_QUANT_PACKED_X86_H

#include <immintrin.h>
#include <string.h>

#include "quant_avx2.h"
#include "repack.h"

#define INLINE static inline __attribute__((always_inline))
/* each file uses a subset of the controls */
#define UNUSED __attribute__((unused))

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

/* pshufb controls CTL(k0, k1, k2, k3): in every 32-bit lane, byte i of the result is byte
 * k_i of the same lane, or 0 where k_i < 0 */
#define SEL(r, k) ((k) < 0 ? 0x80 : 4 * (r) + (k))
#define LANE(r, k0, k1, k2, k3) SEL(r, k0), SEL(r, k1), SEL(r, k2), SEL(r, k3)
#define CTL(k0, k1, k2, k3)                                                                                 \
    {LANE(0, k0, k1, k2, k3), LANE(1, k0, k1, k2, k3), LANE(2, k0, k1, k2, k3), LANE(3, k0, k1, k2, k3),   \
     LANE(0, k0, k1, k2, k3), LANE(1, k0, k1, k2, k3), LANE(2, k0, k1, k2, k3), LANE(3, k0, k1, k2, k3)}
/* byte k repeated in the whole lane */
static _Alignas(32) UNUSED const uint8_t ctl_rep[4][32] = {CTL(0, 0, 0, 0), CTL(1, 1, 1, 1), CTL(2, 2, 2, 2), CTL(3, 3, 3, 3)};
/* i16 pair (byte k, byte k), zero-extended: a 6-bit scale for madd against two i16 sums */
static _Alignas(32) UNUSED const uint8_t ctl_same[4][32] = {CTL(0, -1, 0, -1), CTL(1, -1, 1, -1), CTL(2, -1, 2, -1),
                                                     CTL(3, -1, 3, -1)};
/* i16 pair (byte 2k, byte 2k + 1), zero-extended */
static _Alignas(32) UNUSED const uint8_t ctl_next[2][32] = {CTL(0, -1, 1, -1), CTL(2, -1, 3, -1)};
/* as ctl_same / ctl_next with the bytes in the high half of each i16, for sign extension */
static _Alignas(32) UNUSED const uint8_t ctl_same_hi[4][32] = {CTL(-1, 0, -1, 0), CTL(-1, 1, -1, 1), CTL(-1, 2, -1, 2),
                                                        CTL(-1, 3, -1, 3)};
static _Alignas(32) UNUSED const uint8_t ctl_next_hi[2][32] = {CTL(-1, 0, -1, 1), CTL(-1, 2, -1, 3)};
/* byte k zero-extended to the whole 32-bit lane / sign-extended after a >> 24: a scale for
 * the i32 sums of dpbusd */
static _Alignas(32) UNUSED const uint8_t ctl_word[4][32] = {CTL(0, -1, -1, -1), CTL(1, -1, -1, -1), CTL(2, -1, -1, -1),
                                                         CTL(3, -1, -1, -1)};
static _Alignas(32) UNUSED const uint8_t ctl_word_hi[4][32] = {CTL(-1, -1, -1, 0), CTL(-1, -1, -1, 1),
                                                            CTL(-1, -1, -1, 2), CTL(-1, -1, -1, 3)};
#undef CTL
#undef LANE
#undef SEL

INLINE __m256i shuffle(__m256i v, const uint8_t ctl[32]) { return _mm256_shuffle_epi8(v, load256(ctl)); }
/* the int8 bytes picked by a *_hi control, sign-extended to i16 */
INLINE __m256i shuffle_s8(__m256i v, const uint8_t ctl[32]) { return _mm256_srai_epi16(shuffle(v, ctl), 8); }

/* Q5_0's fifth bits for the 4 elements of lane r in a chunk: byte i = 0xFF where bit
 * 4 nib + i of byte k of qh's lane r is set (elements 4c..4c+3 are bits 4c..4c+3 of the
 * u32: byte c / 2, nibble c % 2; elements 16 + 4c.. two bytes further on) */
INLINE __m256i fifth_bits(__m256i qh, int k, int nib) {
    const __m256i bit = _mm256_set1_epi32(nib ? (int)0x80402010 : 0x08040201);
    return _mm256_cmpeq_epi8(_mm256_and_si256(shuffle(qh, ctl_rep[k]), bit), bit);
}

/* the low and high nibbles of every byte of q, each in 0..15 */
INLINE void nibbles(__m256i q, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
}

/* chunk c of block b of a Q4_0 or Q5_0 matrix in the packed layout: 8 rows' nibbles */
INLINE __m256i q45_0_chunk(const void *vw, int five, int64_t b, int c) {
    return load256(five ? ((const blk_q5_0x8 *)vw)[b].qs + 32 * c : ((const blk_q4_0x8 *)vw)[b].qs + 32 * c);
}

/* the signed quants of chunk c of block b, low and high nibbles: q - 8 (Q4_0), or q - 16
 * with the fifth bits from qh (Q5_0) */
INLINE void signed_quants(const void *vw, int five, int64_t b, __m256i qh, int c, __m256i *lo, __m256i *hi) {
    nibbles(q45_0_chunk(vw, five, b, c), lo, hi);
    if (!five) {
        const __m256i eight = _mm256_set1_epi8(8);
        *lo = _mm256_sub_epi8(*lo, eight);
        *hi = _mm256_sub_epi8(*hi, eight);
        return;
    }
    /* a clear fifth bit means q - 16 < 0: OR-ing 0xF0 into the nibble gives that value as int8 */
    const __m256i hi4 = _mm256_set1_epi8((char)0xF0);
    *lo = _mm256_or_si256(*lo, _mm256_andnot_si256(fifth_bits(qh, c / 2, c % 2), hi4));
    *hi = _mm256_or_si256(*hi, _mm256_andnot_si256(fifth_bits(qh, 2 + c / 2, c % 2), hi4));
}

/* the quants of chunk c of block b taken unsigned, low and high nibbles: q (Q4_0: 0..15; Q5_0:
 * 0..31 with the fifth bits from qh), to be offset by -8 or -16 after the integer sums */
INLINE void unsigned_quants(const void *vw, int five, int64_t b, __m256i qh, int c, __m256i *lo, __m256i *hi) {
    nibbles(q45_0_chunk(vw, five, b, c), lo, hi);
    if (five) {
        const __m256i b4 = _mm256_set1_epi8(0x10);
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(fifth_bits(qh, c / 2, c % 2), b4));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(fifth_bits(qh, 2 + c / 2, c % 2), b4));
    }
}

/* The 8 rows' 6-bit (scale, min) pairs of a q4_K/q5_K block, k_scale_min on 8 lanes at once:
 * lane r of sc[0] holds row r's scales 0-3 (one byte each), sc[1] scales 4-7, mn the mins.
 * Scales/mins 0-3 are the low 6 bits of bytes 0-3/4-7 (chunks 0 and 1); 4-7 keep their low 4
 * bits in the nibbles of bytes 8-11 (chunk 2) and their top 2 in the top bits of 0-3/4-7. */
INLINE void k_scales8(const uint8_t *p, __m256i sc[2], __m256i mn[2]) {
    const __m256i c0 = load256(p), c1 = load256(p + 32), c2 = load256(p + 64);
    const __m256i m6 = _mm256_set1_epi8(63), m4 = _mm256_set1_epi8(0x0F), top = _mm256_set1_epi8(0x30);
    sc[0] = _mm256_and_si256(c0, m6);
    mn[0] = _mm256_and_si256(c1, m6);
    sc[1] = _mm256_or_si256(_mm256_and_si256(c2, m4), _mm256_and_si256(_mm256_srli_epi16(c0, 2), top));
    mn[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c2, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(c1, 2), top));
}

/* lane r: sum_j mn_j[r] (bsums[2j] + bsums[2j+1]) (the activations' sum over sub-block j) */
INLINE __m256i k_mins8(const __m256i mn[2], const blk_q8_K *x) {
    const __m256i bs = load256(x->bsums);
    const __m128i sub = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)); /* 8 sums */
    __m256i m = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) { /* sub-blocks 2k and 2k + 1: one madd */
        /* lane k of sub in every lane (vpermd takes k from a register: _mm_shuffle_epi32 needs an
         * immediate, which only an unrolled loop gives, and -O0/-O2 builds do not unroll it) */
        const __m256i pair = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(sub), _mm256_set1_epi32(k));
        m = _mm256_add_epi32(m, _mm256_madd_epi16(shuffle(mn[k / 2], ctl_next[k % 2]), pair));
    }
    return m;
}

/* bit `bit` of each byte of h moved to bit 4, the rest cleared (q5_K's fifth bit) */
INLINE __m256i bit_to_4(__m256i h, int bit) {
    const __m256i v = bit < 4 ? _mm256_slli_epi16(h, 4 - bit) : bit > 4 ? _mm256_srli_epi16(h, bit - 4) : h;
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* lane r: 32 sum_j sc_j[r] bsums[j] over the 16 sub-blocks: q6_K's quants are stored as
 * q + 32 in 0..63, which maddubs takes unsigned; this is the offset to take back out */
INLINE __m256i q6_offset8(const __m256i sc[4], const blk_q8_K *x) {
    __m256i m = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) { /* sub-blocks 2j and 2j + 1: one madd */
        int32_t pair;
        memcpy(&pair, x->bsums + 2 * j, 4);
        m = _mm256_add_epi32(m, _mm256_madd_epi16(shuffle_s8(sc[j / 2], ctl_next_hi[j % 2]), _mm256_set1_epi32(pair)));
    }
    return _mm256_slli_epi32(m, 5);
}

/* the 6-bit quants (q + 32) of chunk k (elements 4k..4k+3 of the 32) of group m in half h, 8 rows */
INLINE __m256i q6_chunk(const blk_q6_Kx8 *w, int h, int m, int k) {
    const __m256i l = load256(w->ql + 32 * (16 * h + 8 * (m % 2) + k)), qh = load256(w->qh + 32 * (8 * h + k));
    const __m256i nib = _mm256_and_si256(m < 2 ? l : _mm256_srli_epi16(l, 4), _mm256_set1_epi8(0x0F));
    /* bits 2m, 2m+1 of each qh byte to bits 4, 5 */
    const __m256i top = m < 2 ? _mm256_slli_epi16(qh, 4 - 2 * m) : m > 2 ? _mm256_srli_epi16(qh, 2) : qh;
    return _mm256_or_si256(nib, _mm256_and_si256(top, _mm256_set1_epi8(0x30)));
}


#endif
