/*
 * quant_avx2.h: GGUF block layouts shared by the portable kernels (quant.c)
 * and the AVX2/FMA/F16C kernels (quant_avx2.c), plus the AVX2 entry points.
 *
 * The layouts are GGML's, byte for byte: a block stores its scales first
 * (IEEE half unless noted) and then its packed integers. Internal header.
 */
#ifndef RK_QUANT_AVX2_H
#define RK_QUANT_AVX2_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

#define QK   32    /* elements per block of the legacy formats */
#define QK_K 256   /* elements per super-block of the K-quants */

typedef uint16_t rk_half;

/* x = d * (q - 8); element j in the low nibble of qs[j], j+16 in its high nibble */
typedef struct { rk_half d; uint8_t qs[QK / 2]; } blk_q4_0;
/* x = d * q + m */
typedef struct { rk_half d, m; uint8_t qs[QK / 2]; } blk_q4_1;
/* as q4_0 with a fifth bit: bit j of qh (little-endian u32) is bit 4 of element j; x = d * (q - 16) */
typedef struct { rk_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_0;
/* x = d * q + m, 5-bit q as in q5_0 */
typedef struct { rk_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_1;
typedef struct { rk_half d; int8_t qs[QK]; } blk_q8_0;
/* s = d * sum(qs), with d still in f32 when the product is taken */
typedef struct { rk_half d, s; int8_t qs[QK]; } blk_q8_1;

/* 8 sub-blocks of 32 with 6-bit scale and min packed in `scales` (see k_scale_min);
 * x = d * sc * q - dmin * m. Each 32 bytes of qs hold 64 elements: low nibbles
 * first, then high nibbles. */
typedef struct { rk_half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } blk_q4_K;
/* as q4_K plus a fifth bit: for the 64 elements of chunk c, bit 2c of qh[l] goes
 * with the low nibble of qs[32c + l], bit 2c+1 with its high nibble */
typedef struct { rk_half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } blk_q5_K;
/* 16 sub-blocks of 16 with int8 scales; x = d * scales[i/16] * (q - 32), q 6-bit:
 * 4 low bits in ql, 2 high bits in qh (layout in quant.c's dequant_q6_K) */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; rk_half d; } blk_q6_K;
/* activation format of the K-quants: f32 d, bsums[i] = sum of qs[16i .. 16i+15] */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } blk_q8_K;

_Static_assert(sizeof(blk_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(blk_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(blk_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(blk_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(blk_q8_0) == RK_Q8_0_BYTES && QK == RK_Q8_0_ELEMS, "q8_0 layout");
_Static_assert(sizeof(blk_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(blk_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(blk_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(blk_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(blk_q8_K) == 292, "q8_K layout");

/* Unpacks the 8 six-bit (scale, min) pairs of a q4_K/q5_K super-block. Pairs
 * 0-3 sit in the low 6 bits of bytes 0-3 / 4-7; pairs 4-7 keep their low 4
 * bits in the nibbles of bytes 8-11 and their top 2 bits in the spare top
 * bits of bytes 0-3 / 4-7. */
static inline void k_scale_min(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (uint8_t)((q[j + 8] & 0xF) | ((q[j] >> 6) << 4));
        mn[j + 4] = (uint8_t)((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4));
    }
}

/* AVX2 kernels: call only after the CPU has been checked for AVX2+FMA+F16C. */
void rk_avx2_vec_dot_f32(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_f16(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_bf16(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q4_0(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q4_1(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q5_0(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q5_1(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q8_0(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q4_K(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q5_K(int64_t n, float *s, const void *w, const void *a);
void rk_avx2_vec_dot_q6_K(int64_t n, float *s, const void *w, const void *a);

/* nr weight rows x RK_DOT_ROWS activation rows (rk_vec_dot_tile_fn), bit-identical to the above */
void rk_avx2_vec_dot_tile_q4_0(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q4_1(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q5_0(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q5_1(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q8_0(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q4_K(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q5_K(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);
void rk_avx2_vec_dot_tile_q6_K(int64_t n, int nr, float *s, size_t bs, const void *w, size_t bw, const void *a,
                               size_t ba);

/* 8 repacked rows x nt tokens (rk_vec_dot_packed_fn, quant_avx2_packed.c) */
void rk_avx2_vec_dot_packed_q4_0(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_avx2_vec_dot_packed_q4_1(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_avx2_vec_dot_packed_q5_0(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_avx2_vec_dot_packed_q8_0(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_avx2_vec_dot_packed_q4_K(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_avx2_vec_dot_packed_q5_K(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_avx2_vec_dot_packed_q6_K(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);

/* the same tiles with AVX512-VNNI (quant_vnni_packed.c; call only where the CPU has AVX512F/VL/BW
 * and VNNI): the AVX2 kernels' bits */
void rk_vnni_vec_dot_packed_q4_0(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_vnni_vec_dot_packed_q4_1(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_vnni_vec_dot_packed_q5_0(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_vnni_vec_dot_packed_q8_0(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_vnni_vec_dot_packed_q4_K(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_vnni_vec_dot_packed_q5_K(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
void rk_vnni_vec_dot_packed_q6_K(int64_t n, int nt, float *s, size_t ss, const void *w, const void *a, size_t as);
/* 16 rows, two 8-row groups sharing each activation load (rk_vec_dot_packed16_fn) */
void rk_vnni_vec_dot_packed16_q4_K(int64_t n, float *s, size_t ss, const void *w, size_t group_bytes, const void *a,
                                   size_t as);
void rk_vnni_vec_dot_packed16_q5_K(int64_t n, float *s, size_t ss, const void *w, size_t group_bytes, const void *a,
                                   size_t as);
void rk_vnni_vec_dot_packed16_q6_K(int64_t n, float *s, size_t ss, const void *w, size_t group_bytes, const void *a,
                                   size_t as);

/* attention (att_kernels in attention.c, attention_avx2.c): the query rows a kernel call serves
 * together, each K/V row read once, in its stored type (f16 or f32), for all of them */
typedef struct {
    int n;                 /* rows */
    const float *const *q; /* [n] query rows (head_dim floats) */
    float *const *sc;      /* [n] the row's scores, then its weights, from the call's first slot */
    float *const *o;       /* [n] output rows, from the call's first dimension */
    const int32_t *p, *lo; /* [n] the row sees the slots whose position is in [lo, p] */
} rk_att_rows;
/* sc[r][i] = dot(key i, q[r]) * scale, -inf where pos[i] is outside the row's [lo, p]; i < ns */
void rk_avx2_att_scores(int hd, int f16, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *r);
/* o[r][0..nd) += sc[r][i] * v_i for i < ns in order, zero weights skipped; v_i = v + i * vs elements */
void rk_avx2_att_values(int nd, int f16, int ns, const void *v, size_t vs, const rk_att_rows *r);
/* the same two on 512-bit registers, the same bits (attention_avx512.c; CPUs of the VNNI tier) */
void rk_avx512_att_scores(int hd, int f16, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *r);
void rk_avx512_att_values(int nd, int f16, int ns, const void *v, size_t vs, const rk_att_rows *r);
double rk_avx512_softmax_exp(float *sc, int n, float mx);
float rk_avx2_att_max(const float *sc, int n);
double rk_avx2_softmax_exp(float *sc, int n, float mx);

void rk_avx2_to_float_f16(const void *src, float *dst, int64_t n);
void rk_avx2_from_float_f16(const float *src, void *dst, int64_t n);
void rk_avx2_from_float_q8_0(const float *src, void *dst, int64_t n);
void rk_avx2_from_float_q8_1(const float *src, void *dst, int64_t n);
void rk_avx2_from_float_q8_K(const float *src, void *dst, int64_t n);

#endif
