/*
 * repack.h: weight matrices re-laid out at load for the AVX2 kernels.
 *
 * GGUF stores a Q4_0/Q4_1/Q8_0 matrix row after row, each block with its f16
 * scale(s) in front of its quants. A decode step (one token) is then one dot
 * product per row, each ending in a horizontal sum, with the scales of every
 * block converted one at a time. Here eight consecutive rows are interleaved
 * block by block: the eight scales of block b sit side by side (one F16C
 * conversion), and the quants are stored in 4-byte chunks, rows 0..7 of chunk
 * c together, so one 256-bit register holds the same 4 (Q8_0) or 8 (Q4_x,
 * low and high nibble) elements of all eight rows. A broadcast of the matching
 * 4 activation bytes then yields in lane r the partial sum of row r: eight rows
 * finish with no horizontal sum (the layout llama.cpp uses for Q4_0 on x86,
 * "Q4_0_8x8", applied here to the formats SmolLM2 and its peers ship).
 *
 * Packing is exact (same bytes, moved); the sums change order, so outputs
 * differ from the row kernels in the last bits. Internal header.
 */
#ifndef RK_REPACK_H
#define RK_REPACK_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define RK_PACK_ROWS 8

/* chunk c (0..3) of 4 bytes of qs, row r: at qs[32 c + 4 r] */
typedef struct { uint16_t d[RK_PACK_ROWS]; uint8_t qs[RK_PACK_ROWS * 16]; } blk_q4_0x8;
typedef struct { uint16_t d[RK_PACK_ROWS], m[RK_PACK_ROWS]; uint8_t qs[RK_PACK_ROWS * 16]; } blk_q4_1x8;
/* chunk c (0..7) of 4 bytes of qs, row r: at qs[32 c + 4 r] */
typedef struct { uint16_t d[RK_PACK_ROWS]; int8_t qs[RK_PACK_ROWS * 32]; } blk_q8_0x8;

_Static_assert(sizeof(blk_q4_0x8) == 8 * 18, "q4_0x8 layout");
_Static_assert(sizeof(blk_q4_1x8) == 8 * 20, "q4_1x8 layout");
_Static_assert(sizeof(blk_q8_0x8) == 8 * 34, "q8_0x8 layout");

/* 1 if w's type has a packed layout, packed kernels are active and n_out is a multiple of 8 */
int rk_repack_supported(const rk_weight *w);
/* Fills dst (w->n_out * w->row_bytes bytes) with w's rows in the packed layout. */
void rk_repack(const rk_weight *w, void *dst);
/* Row r of a packed matrix as f32 (the embedding lookup of a tied, packed matrix). */
void rk_packed_row_to_float(const rk_weight *w, int64_t r, float *dst);
/* Repacks every supported matrix m multiplies (output, which may be the tied token_embd,
 * and the layers') into memory of its own (m->packed) and lets the kernel drop the file
 * pages they came from. Off with RK_REPACK=0 (for A/B measurements). */
rk_status rk_model_repack(rk_model *m);

#endif
