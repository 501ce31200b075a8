/* gram.h: per-head Gram matrices of a matrix's column blocks (ReST-KV's W_o Gram matrices). */
#ifndef RK_GRAM_H
#define RK_GRAM_H

#include <stddef.h>
#include <stdint.h>

#include "restkv.h"

/* acc[h][a][b] += sum over r < n_rows of rows[r][h*d + a] * rows[r][h*d + b], in double, for
 * b >= a (the upper triangle; other entries are left as they are), h < H. rows is [n_rows][H*d].
 * Each entry adds its products in row order and a product of two floats is exact in double, so
 * the result has the same bits as the plain triple loop, on every code path. scratch holds
 * n_rows * d doubles. */
/* rows per call that model.c dequantises at once (a block that stays in L2) */
#define RK_GRAM_ROWS 32

void rk_gram_accumulate(double *acc, const float *rows, int64_t n_rows, size_t H, size_t d, double *scratch);

typedef struct rk_model rk_model;
/* ReST-KV's W_o Gram matrices, m->wo_gram: computed on the first call for a model (the policies that
 * score with them call it from their prepare hook when they are set), then returned as they are.
 * Thread-safe: sessions of one model in different threads may ask at once; one computes, the others
 * wait for it (a process-wide lock, held only while computing or checking). Bit-identical to the
 * computation at load it replaces. On failure nothing is kept and a later call tries again. */
rk_status rk_wo_gram_prepare(rk_model *m);

#endif
