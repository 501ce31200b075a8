/*
 * quant.h: tensor block formats (GGML layout) and the dot products the matmul uses.
 *
 * Every supported weight type has a trait record. A matmul of a weight row of
 * type T with an f32 activation row x first converts x to T's `vec_dot_type`
 * (Q8_0, Q8_1 or Q8_K for the quantised types, as GGML does; F32 for float
 * weights), then calls `vec_dot`. Implementations are chosen once at run time
 * (rk_quant_init): AVX2/FMA/F16C where the CPU has them, portable C otherwise.
 */
#ifndef RK_QUANT_H
#define RK_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*rk_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*rk_from_float_fn)(const float *src, void *dst, int64_t n);
/* s = dot(w[0..n), a[0..n)); w of the weight type, a of its vec_dot_type */
typedef void (*rk_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);
/* A tile: nr weight rows (w_stride bytes apart) against RK_DOT_ROWS activation
 * rows (a_stride bytes apart):
 *   s[t * s_stride + r] = dot(w + r * w_stride, a + t * a_stride),  r < nr, t < RK_DOT_ROWS,
 * each output bit for bit what vec_dot gives for that pair (the same float
 * operations in the same order); only the unpacking of each weight block, the
 * conversion of the activation scales and the integer work are shared. */
#define RK_DOT_ROWS 4
typedef void (*rk_vec_dot_tile_fn)(int64_t n, int nr, float *s, size_t s_stride, const void *w, size_t w_stride,
                                   const void *a, size_t a_stride);

/* Eight weight rows in the interleaved layout of repack.h against nt (1..RK_DOT_ROWS)
 * activation rows: s[t * s_stride + r], r < 8. */
typedef void (*rk_vec_dot_packed_fn)(int64_t n, int nt, float *s, size_t s_stride, const void *w, const void *a,
                                     size_t a_stride);

/* Sixteen rows (two groups of 8, group_bytes apart) against exactly RK_DOT_ROWS activation rows:
 * s[t * s_stride + r], r < 16, the bits of vec_dot_packed on each group */
typedef void (*rk_vec_dot_packed16_fn)(int64_t n, float *s, size_t s_stride, const void *w, size_t group_bytes,
                                       const void *a, size_t a_stride);

typedef struct {
    const char      *name;
    int32_t          blck;          /* elements per block */
    int32_t          type_size;     /* bytes per block */
    int32_t          vec_dot_type;  /* activation format for vec_dot; -1 if not a weight type */
    rk_to_float_fn   to_float;      /* dequantise (NULL if unsupported) */
    rk_from_float_fn from_float;    /* quantise (set for activation formats at least) */
    rk_vec_dot_fn    vec_dot;       /* NULL if not a weight type */
    rk_vec_dot_tile_fn vec_dot_tile; /* several rows x RK_DOT_ROWS tokens; NULL: use vec_dot */
    rk_vec_dot_packed_fn vec_dot_packed; /* over repacked rows (repack.h); NULL: no packed layout */
    rk_vec_dot_packed16_fn vec_dot_packed16; /* two groups at once; NULL: vec_dot_packed on each */
    int32_t packed_act_sums; /* vec_dot_packed's full tiles read the activation rows' block sums (below) */
} rk_type_traits;

/* An activation row as the matmul stores it: the blocks of its type, then, for Q8_0, one int32
 * per block holding minus the sum of its 32 quants. Tiles that take the weights' quants unsigned
 * (q + offset, quant_vnni_packed.c) take offset * sum back out with it: the same integers as
 * signed quants give. rk_act_block_sums writes that tail (when the type has one). */
size_t rk_act_row_bytes(int32_t act_type, int64_t n);
void rk_act_block_sums(int32_t act_type, void *row, int64_t n);
/* ggml's Q8_0 block: 32 quants and an f16 scale (quant_avx2.h asserts blk_q8_0's size against it) */
#define RK_Q8_0_ELEMS 32
#define RK_Q8_0_BYTES 34
/* block b's entry of that tail, in a Q8_0 activation row of n elements */
static inline int32_t rk_act_neg_sum_q8_0(const void *row, int64_t n, int64_t b) {
    int32_t s;
    memcpy(&s, (const uint8_t *)row + (size_t)(n / RK_Q8_0_ELEMS) * RK_Q8_0_BYTES + (size_t)b * sizeof s, sizeof s);
    return s;
}

/* NULL for a type this engine does not handle. Calls rk_quant_init() itself. */
const rk_type_traits *rk_get_type_traits(int32_t type);
/* Detects CPU features and selects kernels; thread-safe, idempotent. */
void rk_quant_init(void);
/* "avx2 fma f16c avx512vnni", "avx2 fma f16c" or "scalar" */
const char *rk_quant_features(void);
/* 1 when the AVX2 kernels (with or without the VNNI tiles) are the active set */
int rk_quant_avx2_active(void);
/* the AVX512-VNNI tier is active (its CPUs also run the AVX-512 attention kernels) */
int rk_quant_avx512_active(void);
/* Force the portable scalar kernels (tests call this to exercise the fallback). 1 = scalar. */
void rk_quant_force_scalar(int on);

/* Bytes of a row of n elements of `type` (n a multiple of the block size). */
size_t rk_row_bytes(int32_t type, int64_t n);

/* IEEE half and bfloat16 conversion (portable) */
float    rk_fp16_to_fp32(uint16_t h);
uint16_t rk_fp32_to_fp16(float f);
float    rk_bf16_to_fp32(uint16_t h);

#endif
