/*
 * quant_avx2.c: AVX2/FMA/F16C kernels. Built with -mavx2 -mfma -mf16c (the
 * pragma below covers a build without them) and called only after quant.c has
 * checked the CPU. Products of quantised values are summed exactly in integer
 * lanes (maddubs: u8 x s8 -> i16 pairs, then madd -> i32) and scaled in f32
 * once per block. The from_float kernels reproduce quant.c's bytes exactly.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <string.h>

#include "quant.h"
#include "quant_avx2.h"

static inline float h2f(rk_half h) { return _cvtsh_ss(h); }
static inline rk_half f2h(float f) { return (rk_half)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* u8 x s8 products summed in fours: 8 i32 lanes. Exact while each pair sum
 * fits i16: holds for |u| <= 128, |s| <= 127. */
static inline __m256i dot_us8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* s8 x s8: move the sign of a onto b so that a can go in unsigned */
static inline __m256i dot_ss8(__m256i a, __m256i b) {
    return dot_us8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* 16 packed bytes -> 32 nibbles: low nibbles in bytes 0-15, high in 16-31
 * (the bytes in both halves, the upper half shifted right by 4) */
static inline __m256i unpack_nibbles(const uint8_t *p) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* byte j = 0xFF where bit j of bits is set, else 0 */
static inline __m256i bits_to_bytes(const uint8_t *p) {
    uint32_t bits;
    memcpy(&bits, p, 4);
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), pick);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

static inline __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* ---- float weights x f32 activations ---- */

#define FLOAT_DOT(name, LOAD8, SCALAR)                                                  \
    void name(int64_t n, float *s, const void *vw, const void *va) {                    \
        const float *a = va;                                                            \
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), \
                         _mm256_setzero_ps()};                                          \
        int64_t i = 0;                                                                  \
        for (; i + 32 <= n; i += 32)                                                    \
            for (int k = 0; k < 4; k++)                                                 \
                acc[k] = _mm256_fmadd_ps(LOAD8(vw, i + 8 * k),                          \
                                         _mm256_loadu_ps(a + i + 8 * k), acc[k]);       \
        for (; i + 8 <= n; i += 8)                                                      \
            acc[0] = _mm256_fmadd_ps(LOAD8(vw, i), _mm256_loadu_ps(a + i), acc[0]);     \
        float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]),                \
                                          _mm256_add_ps(acc[2], acc[3])));              \
        for (; i < n; i++) sum += SCALAR(vw, i) * a[i];                                 \
        *s = sum;                                                                       \
    }

static inline __m256 load8_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
static inline float get_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }
static inline __m256 load8_f16(const void *w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}
static inline float get_f16(const void *w, int64_t i) { return h2f(((const uint16_t *)w)[i]); }
static inline __m256 load8_bf16(const void *w, int64_t i) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
static inline float get_bf16(const void *w, int64_t i) {
    const uint32_t u = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

FLOAT_DOT(rk_avx2_vec_dot_f32, load8_f32, get_f32)
FLOAT_DOT(rk_avx2_vec_dot_f16, load8_f16, get_f16)
FLOAT_DOT(rk_avx2_vec_dot_bf16, load8_bf16, get_bf16)

void rk_avx2_to_float_f16(const void *src, float *y, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) y[i] = h2f(h[i]);
}

void rk_avx2_from_float_f16(const float *x, void *dst, int64_t n) {
    uint16_t *h = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = f2h(x[i]);
}

/* ---- legacy 32-element blocks ----
 * Two accumulators over alternate blocks hide the FMA latency. */

#define BLOCK_LOOP(nb, ACC_BLOCK)                                  \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(); \
    int64_t i = 0;                                                 \
    for (; i + 1 < (nb); i += 2) {                                 \
        acc0 = ACC_BLOCK(i, acc0);                                 \
        acc1 = ACC_BLOCK(i + 1, acc1);                             \
    }                                                              \
    if (i < (nb)) acc0 = ACC_BLOCK(i, acc0);

static inline __m256 scale_acc(float d, __m256i isum, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
}

void rk_avx2_vec_dot_q4_0(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q4_0 *w = vw;
    const blk_q8_0 *a = va;
#define Q4_0_BLOCK(i, acc)                                                                  \
    scale_acc(h2f(w[i].d) * h2f(a[i].d),                                                    \
              dot_ss8(_mm256_sub_epi8(unpack_nibbles(w[i].qs), _mm256_set1_epi8(8)), load256(a[i].qs)), acc)
    BLOCK_LOOP(n / QK, Q4_0_BLOCK)
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

void rk_avx2_vec_dot_q8_0(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q8_0 *w = vw;
    const blk_q8_0 *a = va;
#define Q8_0_BLOCK(i, acc) scale_acc(h2f(w[i].d) * h2f(a[i].d), dot_ss8(load256(w[i].qs), load256(a[i].qs)), acc)
    BLOCK_LOOP(n / QK, Q8_0_BLOCK)
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

void rk_avx2_vec_dot_q5_0(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *a = va;
    /* a clear fifth bit means q - 16 < 0: OR-ing 0xF0 into the nibble gives that value as int8 */
#define Q5_0_BLOCK(i, acc)                                                                      \
    scale_acc(h2f(w[i].d) * h2f(a[i].d),                                                        \
              dot_ss8(_mm256_or_si256(unpack_nibbles(w[i].qs),                                  \
                                      _mm256_andnot_si256(bits_to_bytes(w[i].qh), _mm256_set1_epi8((char)0xF0))), \
                      load256(a[i].qs)), acc)
    BLOCK_LOOP(n / QK, Q5_0_BLOCK)
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* Q4_1 and Q5_1 blocks start with halves (d, m), Q8_1 with (d, s): one F16C
 * conversion yields [d_w, m_w, d_a, s_a], then [d_w d_a, m_w s_a]. */
static inline __m128 dm_products(const void *w, const void *a) {
    uint32_t dw, da;
    memcpy(&dw, w, 4);
    memcpy(&da, a, 4);
    const __m128 f = _mm_cvtph_ps(_mm_set_epi32(0, 0, (int)da, (int)dw));
    return _mm_mul_ps(f, _mm_movehl_ps(f, f));
}

static inline __m256 acc_q_1(__m128 dm, __m256i isum, __m256 acc, __m128 *ms) {
    *ms = _mm_add_ps(*ms, dm); /* lane 1 gathers m_w * s_a */
    return _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(isum), acc);
}

void rk_avx2_vec_dot_q4_1(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q4_1 *w = vw;
    const blk_q8_1 *a = va;
    __m128 ms = _mm_setzero_ps();
#define Q4_1_BLOCK(i, acc) \
    acc_q_1(dm_products(&w[i], &a[i]), dot_us8(unpack_nibbles(w[i].qs), load256(a[i].qs)), acc, &ms)
    BLOCK_LOOP(n / QK, Q4_1_BLOCK)
    *s = hsum_ps(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(ms));
}

void rk_avx2_vec_dot_q5_1(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q5_1 *w = vw;
    const blk_q8_1 *a = va;
    __m128 ms = _mm_setzero_ps();
#define Q5_1_BLOCK(i, acc)                                                                        \
    acc_q_1(dm_products(&w[i], &a[i]),                                                            \
            dot_us8(_mm256_or_si256(unpack_nibbles(w[i].qs),                                      \
                                    _mm256_and_si256(bits_to_bytes(w[i].qh), _mm256_set1_epi8(0x10))), \
                    load256(a[i].qs)), acc, &ms)
    BLOCK_LOOP(n / QK, Q5_1_BLOCK)
    *s = hsum_ps(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(ms));
}

/* ---- K-quants ---- */

/* sum_j mins_j * (bsums[2j] + bsums[2j+1]) as 4 i32 lanes */
static inline __m128i k_mins_dot(const uint8_t mn[8], const int16_t *bsums) {
    const __m256i bs = load256(bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn)), pairs);
}

/* sum over one 64-element chunk: lo/hi are the chunk's two halves of 32 values */
static inline __m256i k_chunk(__m256i lo, __m256i hi, const int8_t *y, int sc_lo, int sc_hi) {
    const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(y)), _mm256_set1_epi16((short)sc_lo));
    const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(y + 32)), _mm256_set1_epi16((short)sc_hi));
    return _mm256_add_epi32(p_lo, p_hi);
}

static inline float q45_K_dot(int64_t n, const void *vw, const blk_q8_K *a, int five) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        /* the layouts agree up to the scales; q5_K then has qh before qs */
        const void *blk = (const uint8_t *)vw + i * (int64_t)(five ? sizeof(blk_q5_K) : sizeof(blk_q4_K));
        const blk_q4_K *w4 = blk;
        const blk_q5_K *w5 = blk;
        const uint8_t *q = five ? w5->qs : w4->qs;
        uint8_t sc[8], mn[8];
        k_scale_min(w4->scales, sc, mn);
        const float d = a[i].d * h2f(w4->d), dmin = -a[i].d * h2f(w4->dmin);
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(k_mins_dot(mn, a[i].bsums)), accm);

        const __m256i qh = five ? load256(w5->qh) : _mm256_setzero_si256();
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i x = load256(q + 32 * c);
            __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            if (five) {
                const __m256i hlo = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one);
                const __m256i hhi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(hlo, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(hhi, 4));
            }
            sumi = _mm256_add_epi32(sumi, k_chunk(lo, hi, a[i].qs + 64 * c, sc[2 * c], sc[2 * c + 1]));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return hsum_ps(acc) + _mm_cvtss_f32(accm);
}

void rk_avx2_vec_dot_q4_K(int64_t n, float *s, const void *w, const void *a) { *s = q45_K_dot(n, w, a, 0); }
void rk_avx2_vec_dot_q5_K(int64_t n, float *s, const void *w, const void *a) { *s = q45_K_dot(n, w, a, 1); }

/* q6_K stores q + 32 in 0..63, which maddubs takes unsigned; the offset comes
 * back out as 32 * sum_j scale_j * bsums_j (bsums cover the same 16 elements). */
void rk_avx2_vec_dot_q6_K(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q6_K *w = vw;
    const blk_q8_K *a = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const int8_t *sc = w[i].scales;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(a[i].bsums)), 5);
        sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w[i].ql + 64 * h;
            const __m256i l0 = load256(ql), l1 = load256(ql + 32), qh = load256(w[i].qh + 32 * h);
            __m256i v[4];
            v[0] = _mm256_and_si256(l0, m4);
            v[1] = _mm256_and_si256(l1, m4);
            v[2] = _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4);
            v[3] = _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4);
            for (int g = 0; g < 4; g++) {
                const __m256i top = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m2);
                const __m256i q = _mm256_or_si256(v[g], _mm256_slli_epi16(top, 4));
                const __m256i p = _mm256_maddubs_epi16(q, load256(a[i].qs + 128 * h + 32 * g));
                /* i16 lanes 0-7 hold elements 0-15 (one scale), lanes 8-15 the next 16 */
                const int k = 8 * h + 2 * g;
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[k + 1]), _mm_set1_epi16(sc[k]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * h2f(w[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- tiles: several weight rows x four activation rows (vec_dot_tile) ----
 *
 * Each weight block is unpacked once and met with four activation rows, and
 * the activation scales are converted to float once per tile. Integer sums
 * are exact in any order, so only the float work must match the single-row
 * kernels above, and it does output by output: the same products (operands in
 * the same order), the same FMAs into the same accumulators (two alternating
 * ones for the 32-element formats), the same final reductions. The block
 * scales of the four rows are multiplied in one vector: IEEE operations are
 * lane-wise, so each lane holds exactly the scalar kernel's value. Per-row
 * state lives in structs with named fields (not arrays), which GCC keeps in
 * registers. */

#define AI static inline __attribute__((always_inline))
_Static_assert(RK_DOT_ROWS == 4, "the AVX2 vec_dot_tile kernels take four activation rows");

typedef struct { __m256 r0, r1, r2, r3; } f8x4;
typedef struct { __m128 r0, r1, r2, r3; } f4x4;
typedef struct { __m256i r0, r1, r2, r3; } i8x4;
/* X(k, field) for each of the four activation rows */
#define FOR_ROWS(X) X(0, r0) X(1, r1) X(2, r2) X(3, r3)

AI f8x4 zero_f8x4(void) { const __m256 z = _mm256_setzero_ps(); return (f8x4){z, z, z, z}; }

/* [hsum_ps(v.r0), hsum_ps(v.r1), hsum_ps(v.r2), hsum_ps(v.r3)], each summed in
 * hsum_ps's tree ((x0+x4) + (x2+x6)) + ((x1+x5) + (x3+x7)), four at a time */
AI __m128 hsum4_ps(f8x4 v) {
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(v.r0, v.r1, 0x20), _mm256_permute2f128_ps(v.r0, v.r1, 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(v.r2, v.r3, 0x20), _mm256_permute2f128_ps(v.r2, v.r3, 0x31));
    /* per half: [x0+x2, x1+x3] of rows 0 and 2 (low), 1 and 3 (high) */
    const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(t, t, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(t, t, _MM_SHUFFLE(3, 1, 3, 1)));
    /* r = [h0 h2 h0 h2 | h1 h3 h1 h3] */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
}

AI f8x4 add_f8x4(f8x4 a, f8x4 b) {
    return (f8x4){_mm256_add_ps(a.r0, b.r0), _mm256_add_ps(a.r1, b.r1), _mm256_add_ps(a.r2, b.r2),
                  _mm256_add_ps(a.r3, b.r3)};
}

/* s[k * bs] = lane k of v */
AI void store4(float *s, size_t bs, __m128 v) {
    _mm_store_ss(s, v);
    _mm_store_ss(s + bs, _mm_movehdup_ps(v));
    _mm_store_ss(s + 2 * bs, _mm_movehl_ps(v, v));
    _mm_store_ss(s + 3 * bs, _mm_shuffle_ps(v, v, _MM_SHUFFLE(3, 3, 3, 3)));
}

AI uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
AI uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
AI float ldf(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

/* the two halves at p + k * stride (k = 0..3) as floats [p0 q0 p1 q1 p2 q2 p3 q3] */
AI __m256 half_pairs4(const uint8_t *p, size_t stride) {
    return _mm256_cvtph_ps(_mm_setr_epi32((int)ld32(p), (int)ld32(p + stride), (int)ld32(p + 2 * stride),
                                          (int)ld32(p + 3 * stride)));
}

/* Scales of the four activation rows, per block, as floats. q8_1 (pairs = 1):
 * 8 per block, [d0 s0 d1 s1 d2 s2 d3 s3]; q8_0: 4 per block, [d0 d1 d2 d3].
 * Rows longer than TAB_BLOCKS blocks convert them block by block instead. */
#define TAB_BLOCKS 512
AI void legacy_scale_table(float *tab, int pairs, size_t ablk, int64_t nb, const uint8_t *a, size_t ba) {
    for (int64_t i = 0; i < nb; i++) {
        const __m256 v = half_pairs4(a + i * (int64_t)ablk, ba);
        if (pairs)
            _mm256_storeu_ps(tab + 8 * i, v);
        else
            _mm_storeu_ps(tab + 4 * i, _mm256_castps256_ps128(
                                           _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6))));
    }
}

/* "_0" formats against q8_0: signed weights, one scale. kind: 0 q4_0, 1 q5_0, 2 q8_0 */
AI __m256i legacy0_weights(const uint8_t *blk, int kind) {
    if (kind == 0) return _mm256_sub_epi8(unpack_nibbles(blk + 2), _mm256_set1_epi8(8));
    if (kind == 1)
        return _mm256_or_si256(unpack_nibbles(blk + 6),
                               _mm256_andnot_si256(bits_to_bytes(blk + 2), _mm256_set1_epi8((char)0xF0)));
    return load256(blk + 2);
}

/* block i of one weight row; tab: the scale table, or NULL to convert here */
AI f8x4 legacy0_block(int kind, size_t wsize, const uint8_t *w, const uint8_t *a, size_t ba, const float *tab,
                      int64_t i, f8x4 acc) {
    const uint8_t *wb = w + i * (int64_t)wsize, *ab = a + i * (int64_t)sizeof(blk_q8_0);
    const __m256i wq = legacy0_weights(wb, kind);
    const __m256i wabs = _mm256_sign_epi8(wq, wq);
    const __m128 wd = _mm_cvtph_ps(_mm_set1_epi16((short)ld16(wb)));
    /* lanes 2k (no table) or k (table): h2f(w.d) * h2f(a_k.d) */
    float d[8];
    int step = 1;
    if (tab) {
        _mm_storeu_ps(d, _mm_mul_ps(wd, _mm_loadu_ps(tab + 4 * i)));
    } else {
        _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_set_m128(wd, wd), half_pairs4(ab, ba)));
        step = 2;
    }
#define ROW(k, f)                                                                                          \
    acc.f = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[step * (k)]),                                           \
                            _mm256_cvtepi32_ps(dot_us8(wabs, _mm256_sign_epi8(load256(ab + (k) * ba + 2), wq))), \
                            acc.f);
    FOR_ROWS(ROW)
#undef ROW
    return acc;
}

AI void legacy0_row(int kind, size_t wsize, int64_t nb, float *s, size_t bs, const uint8_t *w, const uint8_t *a,
                    size_t ba, const float *tab) {
    f8x4 acc0 = zero_f8x4(), acc1 = zero_f8x4();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        acc0 = legacy0_block(kind, wsize, w, a, ba, tab, i, acc0);
        acc1 = legacy0_block(kind, wsize, w, a, ba, tab, i + 1, acc1);
    }
    if (i < nb) acc0 = legacy0_block(kind, wsize, w, a, ba, tab, i, acc0);
    store4(s, bs, hsum4_ps(add_f8x4(acc0, acc1))); /* hsum_ps(acc0 + acc1) */
}

AI void legacy0_tile(int kind, size_t wsize, int64_t n, int nr, float *s, size_t bs, const void *vw, size_t bw,
                     const void *va, size_t ba) {
    const uint8_t *w = vw, *a = va;
    const int64_t nb = n / QK;
    if (nb > TAB_BLOCKS) {
        for (int r = 0; r < nr; r++) legacy0_row(kind, wsize, nb, s + r, bs, w + (size_t)r * bw, a, ba, NULL);
        return;
    }
    float tab[4 * TAB_BLOCKS];
    legacy_scale_table(tab, 0, sizeof(blk_q8_0), nb, a, ba);
    for (int r = 0; r < nr; r++) legacy0_row(kind, wsize, nb, s + r, bs, w + (size_t)r * bw, a, ba, tab);
}

void rk_avx2_vec_dot_tile_q4_0(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    legacy0_tile(0, sizeof(blk_q4_0), n, nr, s, bs, w, bw, a, ba);
}
void rk_avx2_vec_dot_tile_q5_0(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    legacy0_tile(1, sizeof(blk_q5_0), n, nr, s, bs, w, bw, a, ba);
}
void rk_avx2_vec_dot_tile_q8_0(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    legacy0_tile(2, sizeof(blk_q8_0), n, nr, s, bs, w, bw, a, ba);
}

/* "_1" formats against q8_1: unsigned weights, scale d and offset m. The
 * (d, s) pairs of the four activation blocks, [d0 s0 d1 s1 d2 s2 d3 s3], times
 * [dw mw dw mw ...] are dm_products' [d_w d_a, m_w s_a] for each row, and one
 * vector add gathers m_w s_a of all four rows in the odd lanes. */
AI f8x4 legacy1_block(int five, size_t wsize, const uint8_t *w, const uint8_t *a, size_t ba, const float *tab,
                      int64_t i, f8x4 acc, __m256 *ms) {
    const uint8_t *wb = w + i * (int64_t)wsize, *ab = a + i * (int64_t)sizeof(blk_q8_1);
    __m256i wq = unpack_nibbles(wb + (five ? 8 : 4));
    if (five) wq = _mm256_or_si256(wq, _mm256_and_si256(bits_to_bytes(wb + 4), _mm256_set1_epi8(0x10)));
    const __m256 dm = _mm256_mul_ps(_mm256_cvtph_ps(_mm_castps_si128(_mm_set1_ps(ldf(wb)))),
                                    tab ? _mm256_loadu_ps(tab + 8 * i) : half_pairs4(ab, ba));
    *ms = _mm256_add_ps(*ms, dm);
    float d[8];
    _mm256_storeu_ps(d, dm);
#define ROW(k, f)                                                                                          \
    acc.f = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[2 * (k)]),                                              \
                            _mm256_cvtepi32_ps(dot_us8(wq, load256(ab + (k) * ba + 4))), acc.f);
    FOR_ROWS(ROW)
#undef ROW
    return acc;
}

AI void legacy1_row(int five, size_t wsize, int64_t nb, float *s, size_t bs, const uint8_t *w, const uint8_t *a,
                    size_t ba, const float *tab) {
    f8x4 acc0 = zero_f8x4(), acc1 = zero_f8x4();
    __m256 ms = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        acc0 = legacy1_block(five, wsize, w, a, ba, tab, i, acc0, &ms);
        acc1 = legacy1_block(five, wsize, w, a, ba, tab, i + 1, acc1, &ms);
    }
    if (i < nb) acc0 = legacy1_block(five, wsize, w, a, ba, tab, i, acc0, &ms);
    /* hsum_ps(acc0 + acc1) + m_w s_a summed, the latter in the odd lanes of ms */
    const __m128 m = _mm_shuffle_ps(_mm256_castps256_ps128(ms), _mm256_extractf128_ps(ms, 1), _MM_SHUFFLE(3, 1, 3, 1));
    store4(s, bs, _mm_add_ps(hsum4_ps(add_f8x4(acc0, acc1)), m));
}

AI void legacy1_tile(int five, size_t wsize, int64_t n, int nr, float *s, size_t bs, const void *vw, size_t bw,
                     const void *va, size_t ba) {
    const uint8_t *w = vw, *a = va;
    const int64_t nb = n / QK;
    if (nb > TAB_BLOCKS) {
        for (int r = 0; r < nr; r++) legacy1_row(five, wsize, nb, s + r, bs, w + (size_t)r * bw, a, ba, NULL);
        return;
    }
    float tab[8 * TAB_BLOCKS];
    legacy_scale_table(tab, 1, sizeof(blk_q8_1), nb, a, ba);
    for (int r = 0; r < nr; r++) legacy1_row(five, wsize, nb, s + r, bs, w + (size_t)r * bw, a, ba, tab);
}

void rk_avx2_vec_dot_tile_q4_1(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    legacy1_tile(0, sizeof(blk_q4_1), n, nr, s, bs, w, bw, a, ba);
}
void rk_avx2_vec_dot_tile_q5_1(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    legacy1_tile(1, sizeof(blk_q5_1), n, nr, s, bs, w, bw, a, ba);
}

/* the f32 scales d of four q8_K rows */
AI __m128 q8K_d4(const uint8_t *ab, size_t ba) {
    return _mm_setr_ps(ldf(ab), ldf(ab + ba), ldf(ab + 2 * ba), ldf(ab + 3 * ba));
}
#define Q8K(ab, k, ba) ((const blk_q8_K *)((ab) + (size_t)(k) * (ba)))

/* one q4_K / q5_K weight row against four activation rows, as q45_K_dot for each */
AI void q45_K_rows(int five, int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const uint8_t *a = va;
    f8x4 acc = zero_f8x4();
    f4x4 accm = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int64_t i = 0; i < n / QK_K; i++) {
        const void *blk = (const uint8_t *)vw + i * (int64_t)(five ? sizeof(blk_q5_K) : sizeof(blk_q4_K));
        const blk_q4_K *w4 = blk;
        const blk_q5_K *w5 = blk;
        const uint8_t *q = five ? w5->qs : w4->qs;
        const uint8_t *ab = a + i * (int64_t)sizeof(blk_q8_K);
        uint8_t sc[8], mn[8];
        k_scale_min(w4->scales, sc, mn);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
        const __m128 ad = q8K_d4(ab, ba);
        float d[4], dmin[4];
        _mm_storeu_ps(d, _mm_mul_ps(ad, _mm_set1_ps(h2f(w4->d))));                                /* a.d * h2f(w.d) */
        _mm_storeu_ps(dmin, _mm_mul_ps(_mm_xor_ps(ad, _mm_set1_ps(-0.0f)), _mm_set1_ps(h2f(w4->dmin)))); /* -a.d * h2f(w.dmin) */
#define ROW(k, f)                                                                                           \
    {                                                                                                       \
        const __m256i bs16 = load256(Q8K(ab, k, ba)->bsums);                                                \
        const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs16), _mm256_extracti128_si256(bs16, 1)); \
        accm.f = _mm_fmadd_ps(_mm_broadcast_ss(&dmin[k]), _mm_cvtepi32_ps(_mm_madd_epi16(mn16, pairs)), accm.f); \
    }
        FOR_ROWS(ROW)
#undef ROW
        const __m256i qh = five ? load256(w5->qh) : _mm256_setzero_si256();
        const __m256i z = _mm256_setzero_si256();
        i8x4 sumi = {z, z, z, z};
        for (int c = 0; c < 4; c++) {
            const __m256i x = load256(q + 32 * c);
            __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            if (five) {
                const __m256i hlo = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one);
                const __m256i hhi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(hlo, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(hhi, 4));
            }
            const __m256i slo = _mm256_set1_epi16((short)sc[2 * c]), shi = _mm256_set1_epi16((short)sc[2 * c + 1]);
#define ROW(k, f)                                                                                          \
    {                                                                                                      \
        const int8_t *y = Q8K(ab, k, ba)->qs + 64 * c;                                                     \
        const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(y)), slo);                 \
        const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(y + 32)), shi);            \
        sumi.f = _mm256_add_epi32(sumi.f, _mm256_add_epi32(p_lo, p_hi));                                   \
    }
            FOR_ROWS(ROW)
#undef ROW
        }
#define ROW(k, f) acc.f = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[k]), _mm256_cvtepi32_ps(sumi.f), acc.f);
        FOR_ROWS(ROW)
#undef ROW
    }
    /* hsum_ps(acc) + ((m0 + m2) + (m1 + m3)) with m = accm, per row */
    __m128 m[4] = {accm.r0, accm.r1, accm.r2, accm.r3};
    _MM_TRANSPOSE4_PS(m[0], m[1], m[2], m[3]);
    const __m128 msum = _mm_add_ps(_mm_add_ps(m[0], m[2]), _mm_add_ps(m[1], m[3]));
    store4(s, bs, _mm_add_ps(hsum4_ps(acc), msum));
}

void rk_avx2_vec_dot_tile_q4_K(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    for (int r = 0; r < nr; r++) q45_K_rows(0, n, s + r, bs, (const uint8_t *)w + (size_t)r * bw, a, ba);
}
void rk_avx2_vec_dot_tile_q5_K(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    for (int r = 0; r < nr; r++) q45_K_rows(1, n, s + r, bs, (const uint8_t *)w + (size_t)r * bw, a, ba);
}

AI void q6_K_rows(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q6_K *w = vw;
    const uint8_t *a = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    f8x4 acc = zero_f8x4();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const int8_t *sc = w[i].scales;
        const uint8_t *ab = a + i * (int64_t)sizeof(blk_q8_K);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        i8x4 sumi;
#define ROW(k, f)                                                                                     \
    sumi.f = _mm256_sub_epi32(_mm256_setzero_si256(),                                                 \
                              _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(Q8K(ab, k, ba)->bsums)), 5));
        FOR_ROWS(ROW)
#undef ROW
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w[i].ql + 64 * h;
            const __m256i l0 = load256(ql), l1 = load256(ql + 32), qh = load256(w[i].qh + 32 * h);
            for (int g = 0; g < 4; g++) {
                const __m256i l = g & 1 ? l1 : l0;
                const __m256i v = _mm256_and_si256(g < 2 ? l : _mm256_srli_epi16(l, 4), m4);
                const __m256i top = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m2);
                const __m256i q = _mm256_or_si256(v, _mm256_slli_epi16(top, 4));
                const int k = 8 * h + 2 * g;
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[k + 1]), _mm_set1_epi16(sc[k]));
#define ROW(r, f)                                                                                      \
    sumi.f = _mm256_add_epi32(                                                                         \
        sumi.f, _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(Q8K(ab, r, ba)->qs + 128 * h + 32 * g)), scv));
                FOR_ROWS(ROW)
#undef ROW
            }
        }
        float d[4];
        _mm_storeu_ps(d, _mm_mul_ps(q8K_d4(ab, ba), _mm_set1_ps(h2f(w[i].d)))); /* a.d * h2f(w.d) */
#define ROW(k, f) acc.f = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[k]), _mm256_cvtepi32_ps(sumi.f), acc.f);
        FOR_ROWS(ROW)
#undef ROW
    }
    store4(s, bs, hsum4_ps(acc));
}

void rk_avx2_vec_dot_tile_q6_K(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba) {
    for (int r = 0; r < nr; r++) q6_K_rows(n, s + r, bs, (const uint8_t *)w + (size_t)r * bw, a, ba);
}

#undef Q8K
#undef FOR_ROWS
#undef AI

/* ---- activation quantisation ---- */

static inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* roundf(): truncate, then step away from zero when the dropped part is >= 1/2 (exact) */
static inline __m256i round_away_epi32(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 half = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
    return _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(half, step)));
}

/* 32 i32 (four vectors) -> 32 int8 in order */
static inline void store_i8x32(int8_t *dst, const __m256i v[4]) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256((__m256i *)dst, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/* as quant.c's quantize_block_q8; returns sum(q) */
static inline int quantize_block_q8(const float *x, int8_t *q, float *d_out) {
    __m256 f[4];
    for (int k = 0; k < 4; k++) f[k] = _mm256_loadu_ps(x + 8 * k);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(f[0]), abs_ps(f[1])), _mm256_max_ps(abs_ps(f[2]), abs_ps(f[3])));
    const float d = hmax_ps(m) / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i v[4];
    for (int k = 0; k < 4; k++) v[k] = round_away_epi32(_mm256_mul_ps(f[k], vid));
    store_i8x32(q, v);
    *d_out = d;
    return hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
}

void rk_avx2_from_float_q8_0(const float *x, void *dst, int64_t n) {
    blk_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float d;
        quantize_block_q8(x, b[i].qs, &d);
        b[i].d = f2h(d);
    }
}

void rk_avx2_from_float_q8_1(const float *x, void *dst, int64_t n) {
    blk_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float d;
        const int sum = quantize_block_q8(x, b[i].qs, &d);
        b[i].d = f2h(d);
        b[i].s = f2h((float)sum * d);
    }
}

void rk_avx2_from_float_q8_K(const float *x, void *dst, int64_t n) {
    blk_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + k)));
        const float amax = hmax_ps(m);
        if (amax == 0) { memset(&b[i], 0, sizeof b[i]); continue; }
        /* the signed value of the first element reaching amax, as the scalar loop picks it */
        const __m256 vmax = _mm256_set1_ps(amax);
        int first = 0;
        for (int k = 0; k < QK_K; k += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + k)), vmax, _CMP_EQ_OQ));
            if (hit) { first = k + __builtin_ctz((unsigned)hit); break; }
        }
        const float iscale = -127.f / x[first];
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i lim = _mm256_set1_epi32(127);
        for (int k = 0; k < QK_K; k += 32) {
            __m256i v[4];
            for (int j = 0; j < 4; j++) {
                const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), vs),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                v[j] = _mm256_min_epi32(_mm256_cvtps_epi32(r), lim);
            }
            store_i8x32(b[i].qs + k, v);
            b[i].bsums[k / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(v[0], v[1]));
            b[i].bsums[k / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(v[2], v[3]));
        }
        b[i].d = 1 / iscale;
    }
}

#else
/* Not x86: quant.c never selects these kernels. */
typedef int rk_quant_avx2_unused;
#endif
