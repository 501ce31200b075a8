/*
 * attention_avx512.c: the key-query scores and value sums of attention_avx2.c on 512-bit
 * registers, for the CPUs of the AVX512-VNNI tier (attention.c picks them with those tiles).
 * Their results are the AVX2 kernels' bit for bit, so decode, prefill and the AVX2 runs keep
 * agreeing (tests/golden_digests.py checks the "vnni" configuration against the "avx2" digests):
 * - scores: a zmm holds two query rows' 8-lane accumulators of one key (rows 2p and 2p+1 in its
 *   halves), so each lane sums the elements the AVX2 lane sums, in the same order, and the lanes
 *   are added by the AVX2 tree ((0+1)+(2+3))+((4+5)+(6+7)) with shuffles inside 128-bit lanes;
 * - value sums: one FMA per (slot, element) in slot order, whatever the vector width.
 * Why: on Ice Lake a zmm FMA or f16 conversion does twice the work of a ymm one for the same
 * issue slot, and the AVX2 tiles were bound by those ports (prefill 2048 of Qwen2.5-Coder-1.5B
 * spent a fifth of its time in attention).
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__))
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw")
#endif

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "exp_avx512.h"
#include "quant_avx2.h"

#define ATT_INLINE static inline __attribute__((always_inline))
#define PF_KEYS 16    /* K/V rows prefetched ahead (as attention_avx2.c) */
#define MAX_ROWS 16   /* rows of a call the scores pack into pairs on the stack ... */
#define MAX_HD 256    /* ... of at most this head dimension; larger calls go to the AVX2 kernel */
#define VAL_SLOTS 64  /* slots per pass over the value tiles: their V rows stay in L1 */

/* ---- scores ---- */

/* a score tile: 4 keys x at most 6 row pairs, 24 accumulators, the pairs of a call split evenly
 * (timed against 4 x 4-5, 3 x 8 and 2 x 8 on 6-16 rows x 2048 keys: as fast or faster) */
#define SC_KEYS 4
#define SC_PAIRS 6

/* elements [i, i + 8) of a stored row, in both 256-bit halves */
ATT_INLINE __m512 chunk_x2(const void *k, size_t i, int f16) {
    if (f16)
        return _mm512_cvtph_ps(
            _mm512_castsi512_si256(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)((const uint16_t *)k + i)))));
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd((const double *)((const float *)k + i))));
}

/* _mm256_hadd_ps inside each 256-bit half (float addition commutes: the same bits) */
ATT_INLINE __m512 hadd(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xdd));
}

/* Dots of keys key[0..K) (K <= 4) with the row pairs [p0, p0 + P) of qq (chunk c of pair p at
 * qq + (p * hd + c) * 2: row 2p's 8 elements, then row 2p+1's), into res[2p'] and res[2p' + 1]:
 * the rows' 4 key lanes (keys past K repeat key 0) */
ATT_INLINE void dots(int K, int P, int f16, int hd, const void *k, const int *key, const float *qq, int p0,
                     __m128 *res) {
    __m512 acc[SC_KEYS * SC_PAIRS];
    for (int a = 0; a < K * P; a++) acc[a] = _mm512_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
        __m512 kc[4];
        for (int i = 0; i < K; i++) kc[i] = chunk_x2(k, (size_t)key[i] * hd + c, f16);
        for (int p = 0; p < P; p++) {
            const __m512 qv = _mm512_loadu_ps(qq + ((size_t)(p0 + p) * hd + c) * 2);
            for (int i = 0; i < K; i++) acc[p * K + i] = _mm512_fmadd_ps(kc[i], qv, acc[p * K + i]);
        }
    }
    for (int p = 0; p < P; p++) {
        const __m512 *a = acc + p * K;
        const __m512 h = hadd(hadd(a[0], K > 1 ? a[1] : a[0]), hadd(K > 2 ? a[2] : a[0], K > 3 ? a[3] : a[0]));
        /* 128-bit lanes: row 2p's elements 0-3 and 4-7, row 2p+1's: add lanes 0 + 1 and 2 + 3 */
        const __m512 s = _mm512_add_ps(h, _mm512_shuffle_f32x4(h, h, _MM_SHUFFLE(2, 3, 0, 1)));
        res[2 * p] = _mm512_castps512_ps128(s);
        res[2 * p + 1] = _mm512_extractf32x4_ps(s, 2);
    }
}

/* scores of keys [s, s + nk) (nk <= K) for the rows of pairs [p0, p0 + P) that exist (< rw->n):
 * scaled, or -inf where the key's position is outside the row's window */
ATT_INLINE void scores_tile(int K, int P, int f16, int hd, const void *k, const int32_t *pos, int s, int nk,
                            float scale, const float *qq, int p0, const rk_att_rows *rw) {
    int key[4];
    for (int i = 0; i < K; i++) key[i] = s + (i < nk ? i : 0); /* a short tile repeats key s */
    __m128 res[2 * SC_PAIRS];
    dots(K, P, f16, hd, k, key, qq, p0, res);
    const __m128 vscale = _mm_set1_ps(scale), ninf = _mm_set1_ps(-INFINITY);
    const __m128i pv = nk == 4 ? _mm_loadu_si128((const __m128i *)(pos + s))
                               : _mm_setr_epi32(pos[s], pos[s + (nk > 1)], pos[s + 2 * (nk > 2)], pos[s]);
    for (int j = 0; j < 2 * P && 2 * p0 + j < rw->n; j++) {
        const int r = 2 * p0 + j;
        const __m128i out =
            _mm_or_si128(_mm_cmpgt_epi32(pv, _mm_set1_epi32(rw->p[r])), _mm_cmpgt_epi32(_mm_set1_epi32(rw->lo[r]), pv));
        const __m128 v = _mm_blendv_ps(_mm_mul_ps(res[j], vscale), ninf, _mm_castsi128_ps(out));
        if (nk == 4) _mm_storeu_ps(rw->sc[r] + s, v);
        else {
            float b[4];
            _mm_storeu_ps(b, v);
            for (int i = 0; i < nk; i++) rw->sc[r][s + i] = b[i];
        }
    }
}

ATT_INLINE void scores_all(int f16, int hd, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *rw) {
    /* the rows in pairs, an odd last row paired with itself */
    float qq[MAX_ROWS * MAX_HD] __attribute__((aligned(64)));
    const int np = (rw->n + 1) / 2;
    for (int p = 0; p < np; p++) {
        const float *qa = rw->q[2 * p], *qb = rw->q[2 * p + 1 < rw->n ? 2 * p + 1 : 2 * p];
        for (int c = 0; c < hd; c += 8) {
            _mm256_store_ps(qq + ((size_t)p * hd + c) * 2, _mm256_loadu_ps(qa + c));
            _mm256_store_ps(qq + ((size_t)p * hd + c) * 2 + 8, _mm256_loadu_ps(qb + c));
        }
    }
    const int n_tiles = (np + SC_PAIRS - 1) / SC_PAIRS;
    const size_t rb = (size_t)hd * (f16 ? 2 : 4); /* bytes of a key */
    for (int s = 0; s < ns; s += SC_KEYS) {
        const int nk = ns - s < SC_KEYS ? ns - s : SC_KEYS;
        for (size_t b = 0; b < SC_KEYS * rb; b += 64) _mm_prefetch((const char *)k + (s + PF_KEYS) * rb + b, _MM_HINT_T0);
        for (int t = 0, p0 = 0; t < n_tiles; t++) {
            const int P = (np - p0) / (n_tiles - t) + ((np - p0) % (n_tiles - t) != 0);
#define ST(p_) case p_: scores_tile(SC_KEYS, p_, f16, hd, k, pos, s, nk, scale, qq, p0, rw); break
            switch (P) { ST(1); ST(2); ST(3); ST(4); ST(5); ST(6); }
#undef ST
            p0 += P;
        }
    }
}

void rk_avx512_att_scores(int hd, int f16, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *r) {
    /* one row would fill half of each register */
    if (r->n < 2 || r->n > MAX_ROWS || hd > MAX_HD) rk_avx2_att_scores(hd, f16, ns, k, pos, scale, r);
    else if (f16) scores_all(1, hd, ns, k, pos, scale, r);
    else scores_all(0, hd, ns, k, pos, scale, r);
}

/* ---- value sums ---- */

/* a value tile: at most 6 rows x 64 dimensions, 24 accumulators (timed against 8 x 48, 8 x 32,
 * 12 x 32, 16 x 16 and 4 x 64 on 6-16 rows x 2048 slots: 4-43% faster than them) */
#define VAL_ROWS 6
#define VAL_DIMS 64

/* 16 elements of a stored row from i, those past the mask's lanes 0 (never read) */
ATT_INLINE __m512 load16(const void *v, size_t i, int f16, __mmask16 m) {
    return f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)v + i))
               : _mm512_maskz_loadu_ps(m, (const float *)v + i);
}

/* rows [r0, r0 + R) x dimensions [d0, d0 + nd) (16(D - 1) < nd <= 16D) over slots [s0, s1): out +=
 * w * v, one FMA, slot by slot, each V chunk converted once for the R rows. `check`: some weight
 * of the chunk is exactly 0 (a masked slot), which must add nothing, not even 0 * inf. */
ATT_INLINE void values_tile(int R, int D, int f16, const void *v, size_t vs, const rk_att_rows *rw, int r0, int d0,
                            int nd, int s0, int s1, int check, int pf_bytes) {
    __m512 acc[24];
    __mmask16 m[4];
    for (int d = 0; d < D; d++) m[d] = nd - 16 * d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nd - 16 * d)) - 1);
    const float *w[VAL_ROWS];
    for (int r = 0; r < R; r++) w[r] = rw->sc[r0 + r];
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) acc[r * D + d] = _mm512_maskz_loadu_ps(m[d], rw->o[r0 + r] + d0 + 16 * d);
    const size_t es = f16 ? 2 : 4;
    for (int s = s0; s < s1; s++) {
        for (int b = 0; b < pf_bytes; b += 64) /* (past the buffer: harmless, a prefetch never faults) */
            _mm_prefetch((const char *)v + ((s + PF_KEYS) * vs + d0) * es + b, _MM_HINT_T0);
        int zero = 0;
        if (check)
            for (int r = 0; r < R; r++) zero |= w[r][s] == 0.0f;
        if (!zero) {
            for (int d = 0; d < D; d++) {
                const __m512 x = load16(v, (size_t)s * vs + d0 + 16 * d, f16, m[d]);
                for (int r = 0; r < R; r++)
                    acc[r * D + d] = _mm512_fmadd_ps(_mm512_set1_ps(w[r][s]), x, acc[r * D + d]);
            }
        } else {
            for (int d = 0; d < D; d++) {
                const __m512 x = load16(v, (size_t)s * vs + d0 + 16 * d, f16, m[d]);
                for (int r = 0; r < R; r++)
                    if (w[r][s] != 0.0f) acc[r * D + d] = _mm512_fmadd_ps(_mm512_set1_ps(w[r][s]), x, acc[r * D + d]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) _mm512_mask_storeu_ps(rw->o[r0 + r] + d0 + 16 * d, m[d], acc[r * D + d]);
}

/* does a weight of rows [0, n) over slots [s0, s1) equal 0? */
static int any_zero(const rk_att_rows *rw, int s0, int s1) {
    const __m512 z = _mm512_setzero_ps();
    for (int r = 0; r < rw->n; r++) {
        int s = s0;
        for (; s + 16 <= s1; s += 16)
            if (_mm512_cmp_ps_mask(_mm512_loadu_ps(rw->sc[r] + s), z, _CMP_EQ_OQ)) return 1;
        for (; s < s1; s++)
            if (rw->sc[r][s] == 0.0f) return 1;
    }
    return 0;
}

ATT_INLINE void values_all(int f16, int nd, int ns, const void *v, size_t vs, const rk_att_rows *rw) {
    const int n_tiles = (rw->n + VAL_ROWS - 1) / VAL_ROWS;
    for (int s0 = 0; s0 < ns; s0 += VAL_SLOTS) {
        const int s1 = ns - s0 < VAL_SLOTS ? ns : s0 + VAL_SLOTS, check = any_zero(rw, s0, s1);
        for (int t = 0, r0 = 0; t < n_tiles; t++) { /* rows in tiles of even sizes */
            const int R = (rw->n - r0) / (n_tiles - t) + ((rw->n - r0) % (n_tiles - t) != 0);
            for (int d0 = 0; d0 < nd; d0 += VAL_DIMS) {
                const int w = nd - d0 < VAL_DIMS ? nd - d0 : VAL_DIMS, D = (w + 15) / 16;
                /* the chunk's first tile prefetches the next slots' [0, nd) */
                const int pf = r0 == 0 && d0 == 0 ? nd * (f16 ? 2 : 4) : 0;
#define VT(r_, d_) case r_ * 8 + d_: values_tile(r_, d_, f16, v, vs, rw, r0, d0, w, s0, s1, check, pf); break
                switch (R * 8 + D) {
                    VT(1, 1); VT(1, 2); VT(1, 3); VT(1, 4); VT(2, 1); VT(2, 2); VT(2, 3); VT(2, 4);
                    VT(3, 1); VT(3, 2); VT(3, 3); VT(3, 4); VT(4, 1); VT(4, 2); VT(4, 3); VT(4, 4);
                    VT(5, 1); VT(5, 2); VT(5, 3); VT(5, 4); VT(6, 1); VT(6, 2); VT(6, 3); VT(6, 4);
                }
#undef VT
            }
            r0 += R;
        }
    }
}

void rk_avx512_att_values(int nd, int f16, int ns, const void *v, size_t vs, const rk_att_rows *r) {
    if (f16) values_all(1, nd, ns, v, vs, r);
    else values_all(0, nd, ns, v, vs, r);
}

/* ---- softmax ---- */

/* rk_avx2_softmax_exp 16 lanes at a time, its sum in its order: a double accumulator per lane of
 * an 8-float chunk (lanes 0-3 its s0, 4-7 its s1), chunk after chunk, then (l0 + l1) + (l2 + l3)
 * with l = s0 + s1, then the tail in order */
double rk_avx512_softmax_exp(float *sc, int n, float mx) {
    const __m512 vmx = _mm512_set1_ps(mx), ninf = _mm512_set1_ps(-INFINITY);
    __m512d s = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(sc + i);
        const __mmask16 keep = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_UQ);
        const __m512 w = _mm512_maskz_mov_ps(keep, rk_exp16(_mm512_sub_ps(x, vmx)));
        _mm512_storeu_ps(sc + i, w);
        s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm512_castps512_ps256(w)));
        s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1))));
    }
    if (i + 8 <= n) { /* one chunk of 8 left: the same lanes */
        const __m512 x = _mm512_maskz_loadu_ps(0xff, sc + i);
        const __mmask16 keep = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_UQ) & 0xff;
        const __m512 w = _mm512_maskz_mov_ps(keep, rk_exp16(_mm512_sub_ps(x, vmx)));
        _mm512_mask_storeu_ps(sc + i, 0xff, w);
        s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm512_castps512_ps256(w)));
        i += 8;
    }
    double l[8];
    _mm512_storeu_pd(l, s);
    double sum = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    if (i < n) { /* the tail through the same polynomial, zero-padded */
        float buf[16];
        for (int k = 0; k < 16; k++) buf[k] = i + k < n ? sc[i + k] : -INFINITY;
        const __m512 x = _mm512_loadu_ps(buf);
        const __mmask16 keep = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_UQ);
        _mm512_storeu_ps(buf, _mm512_maskz_mov_ps(keep, rk_exp16(_mm512_sub_ps(x, vmx))));
        for (int k = 0; i + k < n; k++) {
            sc[i + k] = buf[k];
            sum += buf[k];
        }
    }
    return sum;
}

#endif
