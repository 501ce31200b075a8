/*
 * attention_avx2.c: AVX2/FMA/F16C kernels of attention over keys and values in their stored type
 * (f16 or f32): key-query scores, value sums and the softmax exponentials. Built with
 * -ffp-contract=off, every FMA explicit: the dot products, exp and the value sums (one FMA per slot
 * where the portable twins in attention.c multiply then add: the two sets agree to rounding, each
 * with itself exactly; fused, the value sums took half the arithmetic: Qwen2.5-Coder-1.5B prefill
 * 2048 1.061x, decode at depth 4096 1.065x against the multiply-add, perplexity within 0.09%).
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__GNUC__) && !defined(__clang__) && !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "exp_avx2.h"
#include "quant_avx2.h"

/* Why these shapes (perf, decode at depth 8192 on this 2-core Zen 1): attention was ~85% of a
 * step, a third each in converting K/V blocks into an f32 buffer, the dots, and the value sums
 * reading that buffer back, far from the memory bound (a thread streamed the cache at ~3 GB/s;
 * one reads ~10 GB/s). vcvtph2ps costs ~4 cycles per 8 halves here and competes with the FMAs
 * for the same ports, so each stored element is converted once, in registers, for every row of
 * a tile: 4 keys x up to 3 rows or 2 keys x 6 rows for the scores, up to 3 rows x 32 dimensions
 * or 6 rows x 16 for the value sums (12 accumulators, held across a chunk of slots). A decode
 * step is then bound by the conversions and the FMAs, not by DRAM. Tried and dropped: converting
 * a prefill job's block once into an f32 buffer (slower: the conversions no longer overlap the
 * FMAs), integer f16 decoding (slower), 3 x 24 value tiles (slower than 3 x 32 with 2 spills). */

static inline __m256 load8(const void *p, size_t i, int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)))
               : _mm256_loadu_ps((const float *)p + i);
}

#define ATT_INLINE static inline __attribute__((always_inline))
#ifndef ATT_PF_KEYS
#define ATT_PF_KEYS 16 /* K/V rows prefetched ahead */
#endif

/* Dots of keys key[0..K) with rows q[0..R), K * R <= 12, into res[] by fours in the order
 * (r, i) = (0,0), (0,1), ..., (0,K-1), (1,0), ... Lane j of an accumulator sums elements j,
 * j + 8, ... by FMAs in order, and the lanes are added ((0+1)+(2+3))+((4+5)+(6+7)): the same
 * tree for every (key, row) in every tile shape, so a score does not depend on its tile. */
ATT_INLINE void dots(int K, int R, int f16, int hd, const void *k, const int *key, const float *const *q, __m128 *res) {
    __m256 acc[12];
    for (int a = 0; a < K * R; a++) acc[a] = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
        if (R <= 3) { /* the rows' chunks stay in registers */
            __m256 qc[3];
            for (int r = 0; r < R; r++) qc[r] = _mm256_loadu_ps(q[r] + c);
            for (int i = 0; i < K; i++) {
                const __m256 kc = load8(k, (size_t)key[i] * hd + c, f16);
                for (int r = 0; r < R; r++) acc[r * K + i] = _mm256_fmadd_ps(kc, qc[r], acc[r * K + i]);
            }
        } else { /* the keys' chunks do, the rows' are loaded by each FMA */
            __m256 kc[2];
            for (int i = 0; i < K; i++) kc[i] = load8(k, (size_t)key[i] * hd + c, f16);
            for (int r = 0; r < R; r++) {
                const __m256 qc = _mm256_loadu_ps(q[r] + c);
                for (int i = 0; i < K; i++) acc[r * K + i] = _mm256_fmadd_ps(kc[i], qc, acc[r * K + i]);
            }
        }
    }
    for (int a = 0; a < K * R; a += 4) {
        const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(acc[a], acc[a + 1]), _mm256_hadd_ps(acc[a + 2], acc[a + 3]));
        res[a / 4] = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    }
}

/* scores of keys [s, s + nk), nk <= K, for rows [r0, r0 + R) of tile shape K x R (4 x 1..3 or 2 x 6):
 * each lane of res scaled, or -inf where the key's position is outside the row's window */
ATT_INLINE void scores_tile(int K, int R, int f16, int hd, const void *k, const int32_t *pos, int s, int nk, float scale,
                            const rk_att_rows *rw, int r0) {
    int key[4];
    for (int i = 0; i < K; i++) key[i] = s + (i < nk ? i : 0); /* a short tile repeats key s */
    __m128 res[3];
    dots(K, R, f16, hd, k, key, rw->q + r0, res);
    const __m128 vscale = _mm_set1_ps(scale), ninf = _mm_set1_ps(-INFINITY);
    for (int g = 0; g < (K * R + 3) / 4; g++) {
        __m128i pv, ph, pl; /* per lane: the key's position, the row's p and lo */
        const int ra = r0 + g * (4 / K), rb = K == 2 ? ra + 1 : ra;
        if (K == 4) pv = nk == 4 ? _mm_loadu_si128((const __m128i *)(pos + s))
                                 : _mm_setr_epi32(pos[key[0]], pos[key[1]], pos[key[2]], pos[key[3]]);
        else pv = _mm_setr_epi32(pos[key[0]], pos[key[1]], pos[key[0]], pos[key[1]]);
        ph = _mm_setr_epi32(rw->p[ra], rw->p[ra], rw->p[rb], rw->p[rb]);
        pl = _mm_setr_epi32(rw->lo[ra], rw->lo[ra], rw->lo[rb], rw->lo[rb]);
        const __m128i out = _mm_or_si128(_mm_cmpgt_epi32(pv, ph), _mm_cmpgt_epi32(pl, pv));
        const __m128 v = _mm_blendv_ps(_mm_mul_ps(res[g], vscale), ninf, _mm_castsi128_ps(out));
        if (K == 4 && nk == 4) _mm_storeu_ps(rw->sc[ra] + s, v);
        else if (K == 2 && nk == 2) {
            _mm_storel_pi((__m64 *)(rw->sc[ra] + s), v);
            _mm_storeh_pi((__m64 *)(rw->sc[rb] + s), v);
        } else { /* a short tile: its first nk keys */
            float b[4];
            _mm_storeu_ps(b, v);
            for (int i = 0; i < nk; i++) {
                rw->sc[ra][s + i] = b[i];
                if (K == 2) rw->sc[rb][s + i] = b[2 + i];
            }
        }
    }
}

/* rows in 2 x 6 tiles (scores) or 6 x 16-dimension tiles (value sums); the rest go in 3s */
static int six_rows(int n) { return n >= 6 ? n - n % 6 : 0; }

ATT_INLINE void scores_all(int f16, int hd, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *rw) {
    const size_t rb = (size_t)hd * (f16 ? 2 : 4); /* bytes of a key */
    const int r6 = six_rows(rw->n);
    for (int s = 0; s < ns; s += 4) {
        const int nk = ns - s < 4 ? ns - s : 4;
        for (size_t b = 0; b < 4 * rb; b += 64) _mm_prefetch((const char *)k + (s + ATT_PF_KEYS) * rb + b, _MM_HINT_T0);
        for (int r0 = 0; r0 < r6; r0 += 6) {
            scores_tile(2, 6, f16, hd, k, pos, s, nk < 2 ? nk : 2, scale, rw, r0);
            if (nk > 2) scores_tile(2, 6, f16, hd, k, pos, s + 2, nk - 2, scale, rw, r0);
        }
        int r0 = r6;
        for (; r0 + 3 <= rw->n; r0 += 3) scores_tile(4, 3, f16, hd, k, pos, s, nk, scale, rw, r0);
        if (rw->n - r0 == 2) scores_tile(4, 2, f16, hd, k, pos, s, nk, scale, rw, r0);
        else if (rw->n - r0 == 1) scores_tile(4, 1, f16, hd, k, pos, s, nk, scale, rw, r0);
    }
}

void rk_avx2_att_scores(int hd, int f16, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *r) {
    if (f16) scores_all(1, hd, ns, k, pos, scale, r);
    else scores_all(0, hd, ns, k, pos, scale, r);
}

#define VAL_SLOTS 64 /* slots per pass over the tiles: their V rows stay in L1 */

/* rows [r0, r0 + R) x dimensions [d0, d0 + 8D) over slots [s0, s1): out += w * v, one FMA, slot
 * by slot; each V chunk converted once for the R rows. `check`: some weight of the
 * chunk is exactly 0 (a masked slot), which must add nothing, not even 0 * inf. */
ATT_INLINE void values_tile(int R, int D, int f16, const void *v, size_t vs, const rk_att_rows *rw, int r0, int d0,
                            int s0, int s1, int check, int pf_bytes) {
    __m256 acc[12];
    const float *w[6]; /* the rows' weights, in registers rather than re-read through rw */
    for (int r = 0; r < R; r++) w[r] = rw->sc[r0 + r];
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) acc[r * D + d] = _mm256_loadu_ps(rw->o[r0 + r] + d0 + 8 * d);
    const size_t es = f16 ? 2 : 4;
    for (int s = s0; s < s1; s++) {
        for (int b = 0; b < pf_bytes; b += 64) /* (past the buffer: harmless, a prefetch never faults) */
            _mm_prefetch((const char *)v + ((s + ATT_PF_KEYS) * vs + d0) * es + b, _MM_HINT_T0);
        int zero = 0;
        if (check)
            for (int r = 0; r < R; r++) zero |= w[r][s] == 0.0f;
        if (!zero) {
            for (int d = 0; d < D; d++) {
                const __m256 x = load8(v, (size_t)s * vs + d0 + 8 * d, f16);
                for (int r = 0; r < R; r++)
                    acc[r * D + d] = _mm256_fmadd_ps(_mm256_broadcast_ss(w[r] + s), x, acc[r * D + d]);
            }
        } else {
            for (int d = 0; d < D; d++) {
                const __m256 x = load8(v, (size_t)s * vs + d0 + 8 * d, f16);
                for (int r = 0; r < R; r++)
                    if (w[r][s] != 0.0f) acc[r * D + d] = _mm256_fmadd_ps(_mm256_broadcast_ss(w[r] + s), x, acc[r * D + d]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) _mm256_storeu_ps(rw->o[r0 + r] + d0 + 8 * d, acc[r * D + d]);
}

/* does a weight of rows [0, n) over slots [s0, s1) equal 0? */
static int any_zero(const rk_att_rows *rw, int s0, int s1) {
    const __m256 z = _mm256_setzero_ps();
    for (int r = 0; r < rw->n; r++) {
        int s = s0;
        for (; s + 8 <= s1; s += 8)
            if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(rw->sc[r] + s), z, _CMP_EQ_OQ))) return 1;
        for (; s < s1; s++)
            if (rw->sc[r][s] == 0.0f) return 1;
    }
    return 0;
}

ATT_INLINE void values_all(int f16, int nd, int ns, const void *v, size_t vs, const rk_att_rows *rw) {
    const int r6 = six_rows(rw->n);
    for (int s0 = 0; s0 < ns; s0 += VAL_SLOTS) {
        const int s1 = ns - s0 < VAL_SLOTS ? ns : s0 + VAL_SLOTS, check = any_zero(rw, s0, s1);
        for (int r0 = 0; r0 < rw->n;) {
            const int six = r0 < r6, R = six ? 6 : rw->n - r0 < 3 ? rw->n - r0 : 3, width = six ? 16 : 32;
            for (int d0 = 0; d0 < nd; d0 += width) {
                const int D = nd - d0 < width ? (nd - d0) / 8 : width / 8;
                /* the chunk's first tile prefetches the next slots' [0, nd) */
                const int pf = r0 == 0 && d0 == 0 ? nd * (f16 ? 2 : 4) : 0;
#define VT(r_, d_) case r_ * 8 + d_: values_tile(r_, d_, f16, v, vs, rw, r0, d0, s0, s1, check, pf); break
                switch (R * 8 + D) {
                    VT(1, 1); VT(1, 2); VT(1, 3); VT(1, 4);
                    VT(2, 1); VT(2, 2); VT(2, 3); VT(2, 4);
                    VT(3, 1); VT(3, 2); VT(3, 3); VT(3, 4);
                    VT(6, 1); VT(6, 2);
                }
#undef VT
            }
            r0 += R;
        }
    }
}

void rk_avx2_att_values(int nd, int f16, int ns, const void *v, size_t vs, const rk_att_rows *r) {
    if (f16) values_all(1, nd, ns, v, vs, r);
    else values_all(0, nd, ns, v, vs, r);
}

/* the largest of sc[0..n) (-inf for none); NaNs skipped, as the portable loop's `>` does */
float rk_avx2_att_max(const float *sc, int n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) { /* max(x, m) returns m where x is NaN */
        m0 = _mm256_max_ps(_mm256_loadu_ps(sc + i), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(sc + i + 8), m1);
    }
    float b[8], mx = -INFINITY;
    _mm256_storeu_ps(b, _mm256_max_ps(m0, m1));
    for (int k = 0; k < 8; k++)
        if (b[k] > mx) mx = b[k];
    for (; i < n; i++)
        if (sc[i] > mx) mx = sc[i];
    return mx;
}

/* sc[i] = exp(sc[i] - mx), 0 where sc[i] is -inf; returns the sum, in double: four lanes over
 * elements i = j mod 4, added (0 + 1) + (2 + 3), then the tail in order */
double rk_avx2_softmax_exp(float *sc, int n, float mx) {
    const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(sc + i);
        const __m256 w = _mm256_andnot_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ), rk_exp8(_mm256_sub_ps(x, vmx)));
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
        _mm256_storeu_ps(buf, _mm256_andnot_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ), rk_exp8(_mm256_sub_ps(x, vmx))));
        for (int k = 0; i + k < n; k++) {
            sc[i + k] = buf[k];
            sum += buf[k];
        }
    }
    return sum;
}

#endif
