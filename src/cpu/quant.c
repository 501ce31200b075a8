/*
 * quant.c: tensor block formats (GGUF layouts, see quant_avx2.h), portable
 * kernels, half/bfloat16 conversion, and the run-time choice between these
 * kernels and the AVX2 ones.
 *
 * Quantisation of activations (Q8_0/Q8_1/Q8_K from_float) rounds exactly like
 * GGML's reference quantisers, and the AVX2 versions produce the same bytes,
 * so the scalar and AVX2 paths differ only in float accumulation order.
 * Blocks are read in place; GGUF is little-endian and so must the host be.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "quant_avx2.h"
#include "restkv.h"

#if defined(__x86_64__) || defined(__i386__)
#define RK_X86 1
#include <cpuid.h>
#else
#define RK_X86 0
#endif

/* ---- half and bfloat16 ---- */

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) return u2f(sign | 0x7F800000 | (man << 13));     /* inf, nan */
    if (exp != 0) return u2f(sign | ((exp + 112) << 23) | (man << 13)); /* rebias 15 -> 127 */
    return u2f(sign | f2u((float)man * 0x1p-24f));                      /* zero, subnormal: exact */
}

/* The same without branches, for loops over arrays of halves (about twice as
 * fast there, slower for one block scale). No float subnormal is ever an
 * operand, so a DAZ/FTZ floating-point mode cannot change the result. */
static inline float h2f_array(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, em = h & 0x7FFF;
    const uint32_t normal = (em << 13) + (112u << 23)                  /* rebias 15 -> 127 */
                            + (uint32_t)(em >= 0x7C00) * (112u << 23); /* inf, nan: exponent 255 */
    const uint32_t sub = f2u((float)em * 0x1p-24f);                     /* zero, subnormal */
    const uint32_t is_sub = 0u - (uint32_t)(em < 0x400);
    return u2f(sign | (sub & is_sub) | (normal & ~is_sub));
}

static inline uint16_t f2h(float f) {
    const uint32_t u = f2u(f), sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFF;
    if (a > 0x7F800000) return (uint16_t)(sign | 0x7E00 | ((a >> 13) & 0x3FF)); /* quiet nan */
    if (a >= 0x47800000) return (uint16_t)(sign | 0x7C00);                     /* >= 2^16: inf */
    if (a < 0x38800000) {
        /* below 2^-14: a subnormal half, i.e. an integer count of 2^-24.
         * Adding 2^23 rounds to an integer, ties to even (default FP mode). */
        const float t = (u2f(a) * 0x1p24f + 0x1p23f) - 0x1p23f;
        return (uint16_t)(sign | (uint32_t)t);
    }
    uint32_t h = (a >> 13) - (112u << 10);          /* rebias 127 -> 15, truncate */
    const uint32_t rest = a & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* ties to even; may carry into inf */
    return (uint16_t)(sign | h);
}

static inline uint16_t f2bf(float f) {
    const uint32_t u = f2u(f);
    if ((u & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);               /* ties to even */
}

float rk_fp16_to_fp32(uint16_t h) { return h2f(h); }
uint16_t rk_fp32_to_fp16(float f) { return f2h(f); }
float rk_bf16_to_fp32(uint16_t h) { return u2f((uint32_t)h << 16); }

/* ---- rounding as GGML's reference quantisers do it ---- */

/* roundf(): halves away from zero (Q8_0, Q8_1). Exact for |v| < 2^31, no libm. */
static inline float round_away(float v) {
    const float t = (float)(int32_t)v, r = v - t;
    return t + (float)(r >= 0.5f) - (float)(r <= -0.5f);
}

/* nearest_int(): halves to even (Q8_K); valid for |v| < 2^22 */
static inline int nearest_int(float v) {
    const float t = v + 12582912.f; /* 1.5 * 2^23 */
    return (int)(f2u(t) & 0x007FFFFF) - 0x00400000;
}

static inline float absf(float v) { return v < 0 ? -v : v; }

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* ---- float formats ---- */

static void to_float_f32(const void *src, float *y, int64_t n) { memcpy(y, src, (size_t)n * 4); }
static void from_float_f32(const float *x, void *dst, int64_t n) { memcpy(dst, x, (size_t)n * 4); }

static void to_float_f16(const void *src, float *y, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) y[i] = h2f_array(h[i]);
}
static void from_float_f16(const float *x, void *dst, int64_t n) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = f2h(x[i]);
}
static void to_float_bf16(const void *src, float *y, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) y[i] = u2f((uint32_t)h[i] << 16);
}
static void from_float_bf16(const float *x, void *dst, int64_t n) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = f2bf(x[i]);
}

/* Float weights meet f32 activations. Eight double accumulators: as accurate
 * as the AVX2 path or better, without one long chain of dependent adds. */
#define FLOAT_DOT(name, GET)                                                   \
    static void name(int64_t n, float *s, const void *w, const void *va) {    \
        const float *a = va;                                                  \
        double acc[8] = {0};                                                  \
        int64_t i = 0;                                                        \
        for (; i + 8 <= n; i += 8)                                            \
            for (int k = 0; k < 8; k++) acc[k] += (double)GET(w, i + k) * a[i + k]; \
        for (; i < n; i++) acc[0] += (double)GET(w, i) * a[i];                \
        *s = (float)(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))); \
    }

static inline float get_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }
static inline float get_f16(const void *w, int64_t i) { return h2f_array(((const uint16_t *)w)[i]); }
static inline float get_bf16(const void *w, int64_t i) { return u2f((uint32_t)((const uint16_t *)w)[i] << 16); }

FLOAT_DOT(vec_dot_f32, get_f32)
FLOAT_DOT(vec_dot_f16, get_f16)
FLOAT_DOT(vec_dot_bf16, get_bf16)

/* ---- legacy 32-element blocks ---- */

static void to_float_q4_0(const void *src, float *y, int64_t n) {
    const blk_q4_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = d * ((b[i].qs[j] & 0xF) - 8);
            y[j + QK / 2] = d * ((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void to_float_q4_1(const void *src, float *y, int64_t n) {
    const blk_q4_1 *b = src;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = d * (b[i].qs[j] & 0xF) + m;
            y[j + QK / 2] = d * (b[i].qs[j] >> 4) + m;
        }
    }
}

/* Unpacking first lets the compiler vectorise the dot loops (portable path). */
static inline void q4_unpack(const uint8_t *qs, uint8_t q[QK]) {
    for (int j = 0; j < QK / 2; j++) {
        q[j] = qs[j] & 0xF;
        q[j + QK / 2] = qs[j] >> 4;
    }
}

/* 5-bit values of a q5 block as 0..31 */
static inline void q5_unpack(const uint8_t *qh4, const uint8_t *qs, uint8_t q[QK]) {
    const uint32_t qh = load_u32(qh4);
    for (int j = 0; j < QK / 2; j++) {
        q[j] = (uint8_t)((qs[j] & 0xF) | (((qh >> j) & 1) << 4));
        q[j + QK / 2] = (uint8_t)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
}

static void to_float_q5_0(const void *src, float *y, int64_t n) {
    const blk_q5_0 *b = src;
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d);
        q5_unpack(b[i].qh, b[i].qs, q);
        for (int j = 0; j < QK; j++) y[j] = d * (q[j] - 16);
    }
}

static void to_float_q5_1(const void *src, float *y, int64_t n) {
    const blk_q5_1 *b = src;
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        q5_unpack(b[i].qh, b[i].qs, q);
        for (int j = 0; j < QK; j++) y[j] = d * q[j] + m;
    }
}

static void to_float_q8_0(const void *src, float *y, int64_t n) {
    const blk_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK; j++) y[j] = d * b[i].qs[j];
    }
}

static void to_float_q8_1(const void *src, float *y, int64_t n) {
    const blk_q8_1 *b = src;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK; j++) y[j] = d * b[i].qs[j];
    }
}

/* d = max|x| / 127, q = roundf(x / d); returns sum(q) for Q8_1 */
static int quantize_block_q8(const float *x, int8_t *q, float *d_out) {
    float amax = 0;
    for (int j = 0; j < QK; j++) amax = absf(x[j]) > amax ? absf(x[j]) : amax;
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    int sum = 0;
    for (int j = 0; j < QK; j++) {
        q[j] = (int8_t)round_away(x[j] * id);
        sum += q[j];
    }
    *d_out = d;
    return sum;
}

static void from_float_q8_0(const float *x, void *dst, int64_t n) {
    blk_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float d;
        quantize_block_q8(x, b[i].qs, &d);
        b[i].d = f2h(d);
    }
}

static void from_float_q8_1(const float *x, void *dst, int64_t n) {
    blk_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float d;
        const int sum = quantize_block_q8(x, b[i].qs, &d);
        b[i].d = f2h(d);
        b[i].s = f2h((float)sum * d);
    }
}

static void vec_dot_q4_0(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q4_0 *w = vw;
    const blk_q8_0 *a = va;
    uint8_t q[QK];
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        q4_unpack(w[i].qs, q);
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += (q[j] - 8) * a[i].qs[j];
        sum += h2f(w[i].d) * h2f(a[i].d) * (float)isum;
    }
    *s = sum;
}

/* sum(x*y) = d_x d_y sum(qx*qy) + m_x * s_y, with s_y = d_y sum(qy) */
static void vec_dot_q4_1(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q4_1 *w = vw;
    const blk_q8_1 *a = va;
    uint8_t q[QK];
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        q4_unpack(w[i].qs, q);
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += q[j] * a[i].qs[j];
        sum += h2f(w[i].d) * h2f(a[i].d) * (float)isum + h2f(w[i].m) * h2f(a[i].s);
    }
    *s = sum;
}

static void vec_dot_q5_0(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *a = va;
    uint8_t q[QK];
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        q5_unpack(w[i].qh, w[i].qs, q);
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += (q[j] - 16) * a[i].qs[j];
        sum += h2f(w[i].d) * h2f(a[i].d) * (float)isum;
    }
    *s = sum;
}

static void vec_dot_q5_1(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q5_1 *w = vw;
    const blk_q8_1 *a = va;
    uint8_t q[QK];
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        q5_unpack(w[i].qh, w[i].qs, q);
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += q[j] * a[i].qs[j];
        sum += h2f(w[i].d) * h2f(a[i].d) * (float)isum + h2f(w[i].m) * h2f(a[i].s);
    }
    *s = sum;
}

static void vec_dot_q8_0(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q8_0 *w = vw;
    const blk_q8_0 *a = va;
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += w[i].qs[j] * a[i].qs[j];
        sum += h2f(w[i].d) * h2f(a[i].d) * (float)isum;
    }
    *s = sum;
}

/* ---- K-quants: 256-element super-blocks ---- */

static void to_float_q4_K(const void *src, float *y, int64_t n) {
    const blk_q4_K *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        uint8_t sc[8], mn[8];
        k_scale_min(b[i].scales, sc, mn);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            const float d1 = d * sc[2 * c], m1 = dmin * mn[2 * c];
            const float d2 = d * sc[2 * c + 1], m2 = dmin * mn[2 * c + 1];
            for (int l = 0; l < 32; l++) {
                y[l] = d1 * (q[l] & 0xF) - m1;
                y[l + 32] = d2 * (q[l] >> 4) - m2;
            }
        }
    }
}

static void to_float_q5_K(const void *src, float *y, int64_t n) {
    const blk_q5_K *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        uint8_t sc[8], mn[8];
        k_scale_min(b[i].scales, sc, mn);
        const uint8_t *q = b[i].qs, *qh = b[i].qh;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            const float d1 = d * sc[2 * c], m1 = dmin * mn[2 * c];
            const float d2 = d * sc[2 * c + 1], m2 = dmin * mn[2 * c + 1];
            for (int l = 0; l < 32; l++) {
                y[l] = d1 * ((q[l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4)) - m1;
                y[l + 32] = d2 * ((q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
            }
        }
    }
}

/* The 256 6-bit values of a q6_K block, offset removed (-32..31). Each half of
 * 128 elements takes 64 bytes of ql and 32 of qh: element 32g + l (g = 0..3)
 * has its low nibble in ql[l + 32*(g&1)] (low nibble for g < 2, high for g >= 2)
 * and its top two bits at bit 2g of qh[l]. */
static inline void q6_unpack(const blk_q6_K *b, int8_t q[QK_K]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

static void to_float_q6_K(const void *src, float *y, int64_t n) {
    const blk_q6_K *b = src;
    int8_t q[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = h2f(b[i].d);
        q6_unpack(&b[i], q);
        for (int j = 0; j < QK_K; j++) y[j] = d * b[i].scales[j / 16] * q[j];
    }
}

static void to_float_q8_K(const void *src, float *y, int64_t n) {
    const blk_q8_K *b = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        for (int j = 0; j < QK_K; j++) y[j] = b[i].d * b[i].qs[j];
}

/* GGML's Q8_K: scale by the signed element of largest magnitude (the first
 * one on ties) so that it maps to -127, round halves to even. */
static void from_float_q8_K(const float *x, void *dst, int64_t n) {
    blk_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK_K; j++)
            if (absf(x[j]) > amax) { amax = absf(x[j]); max = x[j]; }
        if (amax == 0) { memset(&b[i], 0, sizeof b[i]); continue; }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            b[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int k = 0; k < QK_K / 16; k++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += b[i].qs[16 * k + j];
            b[i].bsums[k] = (int16_t)sum;
        }
        b[i].d = 1 / iscale;
    }
}

/* sum(x*y) = y.d (x.d sum_j sc_j sum(q_j*qy_j) - x.dmin sum_j m_j sum(qy_j)) */
static void vec_dot_q4_K(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q4_K *w = vw;
    const blk_q8_K *a = va;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], mn[8];
        k_scale_min(w[i].scales, sc, mn);
        const uint8_t *q = w[i].qs;
        const int8_t *y = a[i].qs;
        int32_t sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += (q[l] & 0xF) * y[l];
                hi += (q[l] >> 4) * y[l + 32];
            }
            sumi += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        for (int j = 0; j < 8; j++) summ += mn[j] * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
        sum += a[i].d * h2f(w[i].d) * (float)sumi - a[i].d * h2f(w[i].dmin) * (float)summ;
    }
    *s = sum;
}

static void vec_dot_q5_K(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q5_K *w = vw;
    const blk_q8_K *a = va;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], mn[8];
        k_scale_min(w[i].scales, sc, mn);
        const uint8_t *q = w[i].qs, *qh = w[i].qh;
        const int8_t *y = a[i].qs;
        int32_t sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += ((q[l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4)) * y[l];
                hi += ((q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4)) * y[l + 32];
            }
            sumi += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        for (int j = 0; j < 8; j++) summ += mn[j] * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
        sum += a[i].d * h2f(w[i].d) * (float)sumi - a[i].d * h2f(w[i].dmin) * (float)summ;
    }
    *s = sum;
}

static void vec_dot_q6_K(int64_t n, float *s, const void *vw, const void *va) {
    const blk_q6_K *w = vw;
    const blk_q8_K *a = va;
    int8_t q[QK_K];
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q6_unpack(&w[i], q);
        int32_t sumi = 0;
        for (int k = 0; k < QK_K / 16; k++) {
            int part = 0;
            for (int j = 16 * k; j < 16 * k + 16; j++) part += q[j] * a[i].qs[j];
            sumi += w[i].scales[k] * part;
        }
        sum += a[i].d * h2f(w[i].d) * (float)sumi;
    }
    *s = sum;
}

/* ---- tiles: several weight rows x RK_DOT_ROWS activation rows (vec_dot_tile) ----
 * The portable twins of the AVX2 tile kernels: each weight block is unpacked
 * once for RK_DOT_ROWS activation rows, and every output then takes exactly
 * the float steps of the single-row kernel above (same expression, same order
 * of blocks). */

#define NR RK_DOT_ROWS
#define ROW(p, t, ba, T) ((const T *)((const uint8_t *)(p) + (size_t)(t) * (ba)))

static inline void rows_q4_0(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q4_0 *w = vw;
    uint8_t q[QK];
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK; i++) {
        q4_unpack(w[i].qs, q);
        for (int t = 0; t < NR; t++) {
            const blk_q8_0 *a = ROW(va, t, ba, blk_q8_0);
            int isum = 0;
            for (int j = 0; j < QK; j++) isum += (q[j] - 8) * a[i].qs[j];
            sum[t] += h2f(w[i].d) * h2f(a[i].d) * (float)isum;
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

static inline void rows_q4_1(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q4_1 *w = vw;
    uint8_t q[QK];
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK; i++) {
        q4_unpack(w[i].qs, q);
        for (int t = 0; t < NR; t++) {
            const blk_q8_1 *a = ROW(va, t, ba, blk_q8_1);
            int isum = 0;
            for (int j = 0; j < QK; j++) isum += q[j] * a[i].qs[j];
            sum[t] += h2f(w[i].d) * h2f(a[i].d) * (float)isum + h2f(w[i].m) * h2f(a[i].s);
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

static inline void rows_q5_0(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q5_0 *w = vw;
    uint8_t q[QK];
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK; i++) {
        q5_unpack(w[i].qh, w[i].qs, q);
        for (int t = 0; t < NR; t++) {
            const blk_q8_0 *a = ROW(va, t, ba, blk_q8_0);
            int isum = 0;
            for (int j = 0; j < QK; j++) isum += (q[j] - 16) * a[i].qs[j];
            sum[t] += h2f(w[i].d) * h2f(a[i].d) * (float)isum;
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

static inline void rows_q5_1(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q5_1 *w = vw;
    uint8_t q[QK];
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK; i++) {
        q5_unpack(w[i].qh, w[i].qs, q);
        for (int t = 0; t < NR; t++) {
            const blk_q8_1 *a = ROW(va, t, ba, blk_q8_1);
            int isum = 0;
            for (int j = 0; j < QK; j++) isum += q[j] * a[i].qs[j];
            sum[t] += h2f(w[i].d) * h2f(a[i].d) * (float)isum + h2f(w[i].m) * h2f(a[i].s);
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

static inline void rows_q8_0(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q8_0 *w = vw;
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK; i++) {
        for (int t = 0; t < NR; t++) {
            const blk_q8_0 *a = ROW(va, t, ba, blk_q8_0);
            int isum = 0;
            for (int j = 0; j < QK; j++) isum += w[i].qs[j] * a[i].qs[j];
            sum[t] += h2f(w[i].d) * h2f(a[i].d) * (float)isum;
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

/* q4_K and q5_K (five = 1) */
static inline void q45_K_rows(int five, int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const size_t wsize = five ? sizeof(blk_q5_K) : sizeof(blk_q4_K);
    uint8_t lo[QK_K / 2], hi[QK_K / 2];
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK_K; i++) {
        const blk_q4_K *w4 = (const blk_q4_K *)((const uint8_t *)vw + (size_t)i * wsize);
        const blk_q5_K *w5 = (const blk_q5_K *)w4;
        const uint8_t *q = five ? w5->qs : w4->qs;
        uint8_t sc[8], mn[8];
        k_scale_min(w4->scales, sc, mn);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                lo[32 * c + l] = (uint8_t)(q[32 * c + l] & 0xF);
                hi[32 * c + l] = (uint8_t)(q[32 * c + l] >> 4);
                if (five) {
                    lo[32 * c + l] |= (uint8_t)(((w5->qh[l] >> (2 * c)) & 1) << 4);
                    hi[32 * c + l] |= (uint8_t)(((w5->qh[l] >> (2 * c + 1)) & 1) << 4);
                }
            }
        for (int t = 0; t < NR; t++) {
            const blk_q8_K *a = ROW(va, t, ba, blk_q8_K);
            const int8_t *y = a[i].qs;
            int32_t sumi = 0, summ = 0;
            for (int c = 0; c < 4; c++, y += 64) {
                int l0 = 0, h0 = 0;
                for (int l = 0; l < 32; l++) {
                    l0 += lo[32 * c + l] * y[l];
                    h0 += hi[32 * c + l] * y[l + 32];
                }
                sumi += sc[2 * c] * l0 + sc[2 * c + 1] * h0;
            }
            for (int j = 0; j < 8; j++) summ += mn[j] * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
            sum[t] += a[i].d * h2f(w4->d) * (float)sumi - a[i].d * h2f(w4->dmin) * (float)summ;
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

static inline void rows_q4_K(int64_t n, float *s, size_t bs, const void *w, const void *a, size_t ba) {
    q45_K_rows(0, n, s, bs, w, a, ba);
}
static inline void rows_q5_K(int64_t n, float *s, size_t bs, const void *w, const void *a, size_t ba) {
    q45_K_rows(1, n, s, bs, w, a, ba);
}

static inline void rows_q6_K(int64_t n, float *s, size_t bs, const void *vw, const void *va, size_t ba) {
    const blk_q6_K *w = vw;
    int8_t q[QK_K];
    float sum[NR] = {0};
    for (int64_t i = 0; i < n / QK_K; i++) {
        q6_unpack(&w[i], q);
        for (int t = 0; t < NR; t++) {
            const blk_q8_K *a = ROW(va, t, ba, blk_q8_K);
            int32_t sumi = 0;
            for (int k = 0; k < QK_K / 16; k++) {
                int part = 0;
                for (int j = 16 * k; j < 16 * k + 16; j++) part += q[j] * a[i].qs[j];
                sumi += w[i].scales[k] * part;
            }
            sum[t] += a[i].d * h2f(w[i].d) * (float)sumi;
        }
    }
    for (int t = 0; t < NR; t++) s[(size_t)t * bs] = sum[t];
}

#define TILE(t)                                                                                         \
    static void vec_dot_tile_##t(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw,     \
                                 const void *a, size_t ba) {                                           \
        for (int r = 0; r < nr; r++) rows_##t(n, s + r, bs, (const uint8_t *)w + (size_t)r * bw, a, ba); \
    }
TILE(q4_0) TILE(q4_1) TILE(q5_0) TILE(q5_1) TILE(q8_0) TILE(q4_K) TILE(q5_K) TILE(q6_K)
#undef TILE
#undef ROW
#undef NR

/* ---- traits and kernel selection ---- */

#define N_TYPES (RK_TYPE_BF16 + 1)

static const rk_type_traits scalar_traits[N_TYPES] = {
    [RK_TYPE_F32]  = {"F32",  1,    4,   RK_TYPE_F32,  to_float_f32,  from_float_f32,  vec_dot_f32},
    [RK_TYPE_F16]  = {"F16",  1,    2,   RK_TYPE_F32,  to_float_f16,  from_float_f16,  vec_dot_f16},
    [RK_TYPE_BF16] = {"BF16", 1,    2,   RK_TYPE_F32,  to_float_bf16, from_float_bf16, vec_dot_bf16},
    [RK_TYPE_Q4_0] = {"Q4_0", QK,   18,  RK_TYPE_Q8_0, to_float_q4_0, NULL,            vec_dot_q4_0, vec_dot_tile_q4_0},
    [RK_TYPE_Q4_1] = {"Q4_1", QK,   20,  RK_TYPE_Q8_1, to_float_q4_1, NULL,            vec_dot_q4_1, vec_dot_tile_q4_1},
    [RK_TYPE_Q5_0] = {"Q5_0", QK,   22,  RK_TYPE_Q8_0, to_float_q5_0, NULL,            vec_dot_q5_0, vec_dot_tile_q5_0},
    [RK_TYPE_Q5_1] = {"Q5_1", QK,   24,  RK_TYPE_Q8_1, to_float_q5_1, NULL,            vec_dot_q5_1, vec_dot_tile_q5_1},
    [RK_TYPE_Q8_0] = {"Q8_0", QK,   34,  RK_TYPE_Q8_0, to_float_q8_0, from_float_q8_0, vec_dot_q8_0, vec_dot_tile_q8_0},
    [RK_TYPE_Q8_1] = {"Q8_1", QK,   36,  -1,           to_float_q8_1, from_float_q8_1, NULL},
    [RK_TYPE_Q4_K] = {"Q4_K", QK_K, 144, RK_TYPE_Q8_K, to_float_q4_K, NULL,            vec_dot_q4_K, vec_dot_tile_q4_K},
    [RK_TYPE_Q5_K] = {"Q5_K", QK_K, 176, RK_TYPE_Q8_K, to_float_q5_K, NULL,            vec_dot_q5_K, vec_dot_tile_q5_K},
    [RK_TYPE_Q6_K] = {"Q6_K", QK_K, 210, RK_TYPE_Q8_K, to_float_q6_K, NULL,            vec_dot_q6_K, vec_dot_tile_q6_K},
    [RK_TYPE_Q8_K] = {"Q8_K", QK_K, 292, -1,           to_float_q8_K, from_float_q8_K, NULL},
};

static rk_type_traits avx2_traits[N_TYPES];
static rk_type_traits vnni_traits[N_TYPES]; /* avx2_traits with the AVX512-VNNI prefill tiles */
static const rk_type_traits *_Atomic active = scalar_traits;
static const rk_type_traits *chosen = scalar_traits; /* what RK_CPU and the CPU select */
static int have_avx2, have_vnni;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_kernels(void) {
#if RK_X86
    __builtin_cpu_init();
    /* F16C straight from CPUID (leaf 1, ECX bit 29): older clangs do not know "f16c" as a feature name */
    unsigned a, b, c, d;
    const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#if RK_HAVE_VNNI
    /* libgcc and compiler-rt also check that the OS saves the AVX-512 state (XCR0) */
    have_vnni = have_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#endif
#endif
    if (have_avx2) {
#if RK_X86
        rk_type_traits *t = avx2_traits;
        memcpy(t, scalar_traits, sizeof scalar_traits);
        t[RK_TYPE_F32].vec_dot = rk_avx2_vec_dot_f32;
        t[RK_TYPE_F16].vec_dot = rk_avx2_vec_dot_f16;
        t[RK_TYPE_F16].to_float = rk_avx2_to_float_f16;
        t[RK_TYPE_F16].from_float = rk_avx2_from_float_f16;
        t[RK_TYPE_BF16].vec_dot = rk_avx2_vec_dot_bf16;
        t[RK_TYPE_Q4_0].vec_dot = rk_avx2_vec_dot_q4_0;
        t[RK_TYPE_Q4_1].vec_dot = rk_avx2_vec_dot_q4_1;
        t[RK_TYPE_Q5_0].vec_dot = rk_avx2_vec_dot_q5_0;
        t[RK_TYPE_Q5_1].vec_dot = rk_avx2_vec_dot_q5_1;
        t[RK_TYPE_Q8_0].vec_dot = rk_avx2_vec_dot_q8_0;
        t[RK_TYPE_Q8_0].from_float = rk_avx2_from_float_q8_0;
        t[RK_TYPE_Q8_1].from_float = rk_avx2_from_float_q8_1;
        t[RK_TYPE_Q4_K].vec_dot = rk_avx2_vec_dot_q4_K;
        t[RK_TYPE_Q5_K].vec_dot = rk_avx2_vec_dot_q5_K;
        t[RK_TYPE_Q6_K].vec_dot = rk_avx2_vec_dot_q6_K;
        /* the tile kernels, each paired with the vec_dot it reproduces */
        t[RK_TYPE_Q4_0].vec_dot_tile = rk_avx2_vec_dot_tile_q4_0;
        t[RK_TYPE_Q4_1].vec_dot_tile = rk_avx2_vec_dot_tile_q4_1;
        t[RK_TYPE_Q5_0].vec_dot_tile = rk_avx2_vec_dot_tile_q5_0;
        t[RK_TYPE_Q5_1].vec_dot_tile = rk_avx2_vec_dot_tile_q5_1;
        t[RK_TYPE_Q8_0].vec_dot_tile = rk_avx2_vec_dot_tile_q8_0;
        t[RK_TYPE_Q4_K].vec_dot_tile = rk_avx2_vec_dot_tile_q4_K;
        t[RK_TYPE_Q5_K].vec_dot_tile = rk_avx2_vec_dot_tile_q5_K;
        t[RK_TYPE_Q6_K].vec_dot_tile = rk_avx2_vec_dot_tile_q6_K;
        t[RK_TYPE_Q8_K].from_float = rk_avx2_from_float_q8_K;
        t[RK_TYPE_Q4_0].vec_dot_packed = rk_avx2_vec_dot_packed_q4_0;
        t[RK_TYPE_Q4_1].vec_dot_packed = rk_avx2_vec_dot_packed_q4_1;
        t[RK_TYPE_Q5_0].vec_dot_packed = rk_avx2_vec_dot_packed_q5_0;
        t[RK_TYPE_Q8_0].vec_dot_packed = rk_avx2_vec_dot_packed_q8_0;
        t[RK_TYPE_Q4_K].vec_dot_packed = rk_avx2_vec_dot_packed_q4_K;
        t[RK_TYPE_Q5_K].vec_dot_packed = rk_avx2_vec_dot_packed_q5_K;
        t[RK_TYPE_Q6_K].vec_dot_packed = rk_avx2_vec_dot_packed_q6_K;
#if RK_HAVE_VNNI
        rk_type_traits *v = vnni_traits;
        memcpy(v, avx2_traits, sizeof avx2_traits);
        v[RK_TYPE_Q4_0].vec_dot_packed = rk_vnni_vec_dot_packed_q4_0;
        v[RK_TYPE_Q4_1].vec_dot_packed = rk_vnni_vec_dot_packed_q4_1;
        v[RK_TYPE_Q5_0].vec_dot_packed = rk_vnni_vec_dot_packed_q5_0;
        v[RK_TYPE_Q8_0].vec_dot_packed = rk_vnni_vec_dot_packed_q8_0;
        v[RK_TYPE_Q4_0].packed_act_sums = v[RK_TYPE_Q5_0].packed_act_sums = v[RK_TYPE_Q8_0].packed_act_sums = 1;
        v[RK_TYPE_Q4_K].vec_dot_packed = rk_vnni_vec_dot_packed_q4_K;
        v[RK_TYPE_Q5_K].vec_dot_packed = rk_vnni_vec_dot_packed_q5_K;
        v[RK_TYPE_Q6_K].vec_dot_packed = rk_vnni_vec_dot_packed_q6_K;
        v[RK_TYPE_Q4_K].vec_dot_packed16 = rk_vnni_vec_dot_packed16_q4_K;
        v[RK_TYPE_Q5_K].vec_dot_packed16 = rk_vnni_vec_dot_packed16_q5_K;
        v[RK_TYPE_Q6_K].vec_dot_packed16 = rk_vnni_vec_dot_packed16_q6_K;
#endif
#endif
    }
    /* RK_CPU=scalar: the portable fallback; RK_CPU=avx2: AVX2 without the VNNI tiles (A/B runs;
     * the same bits) */
    const char *env = getenv("RK_CPU");
    if (!have_avx2 || (env && strcmp(env, "scalar") == 0))
        chosen = scalar_traits;
    else if (have_vnni && !(env && strcmp(env, "avx2") == 0))
        chosen = vnni_traits;
    else
        chosen = avx2_traits;
    atomic_store(&active, chosen);
}

void rk_quant_init(void) { pthread_once(&init_once, init_kernels); }

int rk_quant_avx2_active(void) {
    rk_quant_init();
    return atomic_load(&active) != scalar_traits;
}

int rk_quant_avx512_active(void) {
    rk_quant_init();
    return atomic_load(&active) == vnni_traits;
}

const char *rk_quant_features(void) {
    rk_quant_init();
    const rk_type_traits *a = atomic_load(&active);
    return a == vnni_traits ? "avx2 fma f16c avx512vnni" : a == avx2_traits ? "avx2 fma f16c" : "scalar";
}

void rk_quant_force_scalar(int on) {
    rk_quant_init();
    /* off: the kernels RK_CPU chose, or under RK_CPU=scalar the CPU's best (the tests compare
     * both sets) */
    atomic_store(&active, on || !have_avx2         ? scalar_traits
                          : chosen != scalar_traits ? chosen
                          : have_vnni               ? vnni_traits
                                                    : avx2_traits);
}

const rk_type_traits *rk_get_type_traits(int32_t type) {
    rk_quant_init();
    if (type < 0 || type >= N_TYPES) return NULL;
    const rk_type_traits *t = &atomic_load_explicit(&active, memory_order_acquire)[type];
    return t->name ? t : NULL;
}

size_t rk_act_row_bytes(int32_t act_type, int64_t n) {
    const size_t blocks = rk_row_bytes(act_type, n);
    return act_type == RK_TYPE_Q8_0 && blocks ? blocks + (size_t)(n / QK) * sizeof(int32_t) : blocks;
}

void rk_act_block_sums(int32_t act_type, void *row, int64_t n) {
    if (act_type != RK_TYPE_Q8_0) return;
    const blk_q8_0 *x = row;
    uint8_t *tail = (uint8_t *)row + rk_row_bytes(act_type, n);
    for (int64_t b = 0; b < n / QK; b++) {
        int32_t s = 0;
        for (int i = 0; i < QK; i++) s += x[b].qs[i];
        s = -s;
        memcpy(tail + (size_t)b * sizeof s, &s, sizeof s); /* the tail is not 4-byte aligned for every n */
    }
}

size_t rk_row_bytes(int32_t type, int64_t n) {
    if (type < 0 || type >= N_TYPES || !scalar_traits[type].name || n < 0) return 0;
    const rk_type_traits *t = &scalar_traits[type];
    if (n % t->blck) return 0;
    return (size_t)(n / t->blck) * (size_t)t->type_size;
}
