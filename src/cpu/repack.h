/*
 * repack.h: weight matrices re-laid out at load for the AVX2 kernels.
 *
 * GGUF stores a matrix row after row, each block with its f16 scale(s) next
 * to its quants. A decode step (one token) is then one dot product per row,
 * each ending in a horizontal sum, with the scales of every block converted
 * one at a time. Here eight consecutive rows are interleaved block by block:
 * the eight values of each f16 field of block b sit side by side (one F16C
 * conversion), and every other byte of the block is moved in 4-byte chunks,
 * rows 0..7 of chunk c together, so one 256-bit register holds the same 4
 * (Q8_0, Q6_K) or 8 (Q4_x, Q5_x, low and high nibble) elements of all eight
 * rows, or the same 4 scale bytes (K-quants), or row r's 32 fifth bits (Q5_0)
 * in lane r. A broadcast of the matching 4 activation bytes then yields in
 * lane r the partial sum of row r: eight rows finish with no horizontal sum
 * (the idea of llama.cpp's x86 layout "Q4_0_8x8", applied here to every
 * format the supported models ship).
 *
 * The chunks are the file's bytes in order, so a field whose length is a
 * multiple of 4 stays one run of chunks: in each struct below, an array of
 * 32 * k bytes holds that field's k chunks, chunk c of row r at [32 c + 4 r].
 * The K-quants' 6-bit scales stay packed (12 bytes, three chunks); the kernels
 * decode them for eight rows at once with a few vector operations.
 *
 * Packing is exact (same bytes, moved); the sums change order, so outputs
 * differ from the row kernels in the last bits. Internal header.
 */
#ifndef RK_REPACK_H
#define RK_REPACK_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "quant_avx2.h"

#define RK_PACK_ROWS 8

typedef struct { uint16_t d[RK_PACK_ROWS]; uint8_t qs[RK_PACK_ROWS * 16]; } blk_q4_0x8;
typedef struct { uint16_t d[RK_PACK_ROWS], m[RK_PACK_ROWS]; uint8_t qs[RK_PACK_ROWS * 16]; } blk_q4_1x8;
/* qh: lane r = row r's 32 fifth bits (bit j with element j) */
typedef struct { uint16_t d[RK_PACK_ROWS]; uint8_t qh[RK_PACK_ROWS * 4]; uint8_t qs[RK_PACK_ROWS * 16]; } blk_q5_0x8;
typedef struct { uint16_t d[RK_PACK_ROWS]; int8_t qs[RK_PACK_ROWS * 32]; } blk_q8_0x8;
/* scales: the 12 bytes of k_scale_min in three chunks; qs: chunk c (0..31), i.e. byte
 * 4 (c % 8) of the 64-element group c / 8, low nibbles sub-block 2 (c / 8), high the next */
typedef struct {
    uint16_t d[RK_PACK_ROWS], dmin[RK_PACK_ROWS];
    uint8_t scales[RK_PACK_ROWS * 12];
    uint8_t qs[RK_PACK_ROWS * QK_K / 2];
} blk_q4_Kx8;
/* as q4_Kx8, with the fifth bits: qh chunk k goes with qs chunk k of every group */
typedef struct {
    uint16_t d[RK_PACK_ROWS], dmin[RK_PACK_ROWS];
    uint8_t scales[RK_PACK_ROWS * 12];
    uint8_t qh[RK_PACK_ROWS * QK_K / 8];
    uint8_t qs[RK_PACK_ROWS * QK_K / 2];
} blk_q5_Kx8;
/* the file's d moves to the front; ql, qh and the 16 int8 scales in chunks */
typedef struct {
    uint16_t d[RK_PACK_ROWS];
    uint8_t ql[RK_PACK_ROWS * QK_K / 2];
    uint8_t qh[RK_PACK_ROWS * QK_K / 4];
    int8_t scales[RK_PACK_ROWS * QK_K / 16];
} blk_q6_Kx8;

_Static_assert(sizeof(blk_q4_0x8) == 8 * 18, "q4_0x8 layout");
_Static_assert(sizeof(blk_q4_1x8) == 8 * 20, "q4_1x8 layout");
_Static_assert(sizeof(blk_q5_0x8) == 8 * 22, "q5_0x8 layout");
_Static_assert(sizeof(blk_q8_0x8) == 8 * 34, "q8_0x8 layout");
_Static_assert(sizeof(blk_q4_Kx8) == 8 * 144, "q4_Kx8 layout");
_Static_assert(sizeof(blk_q5_Kx8) == 8 * 176, "q5_Kx8 layout");
_Static_assert(sizeof(blk_q6_Kx8) == 8 * 210, "q6_Kx8 layout");

/* 1 if w's type has a packed layout, packed kernels are active and n_out is a multiple of 8 */
int rk_repack_supported(const rk_weight *w);
/* Fills dst (w->n_out * w->row_bytes bytes: a packed block is as large as the 8 file blocks)
 * with w's rows in the packed layout. */
void rk_repack(const rk_weight *w, void *dst);
/* Row r of a packed matrix as f32 (the embedding lookup of a tied, packed matrix). */
void rk_packed_row_to_float(const rk_weight *w, int64_t r, float *dst);
/* Repacks every supported matrix m multiplies (output, which may be the tied token_embd,
 * and the layers') into memory of its own (m->packed) and lets the kernel drop the file
 * pages they came from. Off with RK_REPACK=0 (for A/B measurements). */
rk_status rk_model_repack(rk_model *m);

#endif
