/* restkv_pool.h: ReST-KV's spatial pooling of one query head's prefix scores (restkv_pool.c, step 5 of
 * restkv.c) */
#ifndef RESTKV_POOL_H
#define RESTKV_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h"

/* bytes of per-thread scratch the pools need for a buffer of cap slots */
size_t rk_restkv_pool_scratch(int32_t cap);
/* the published pool: kernel and shift from head h's window attention (drift of the paired top-R sets) */
void rk_restkv_pool_adaptive(const rk_policy_view *v, int32_t h, const rk_restkv_cfg *c, const double *r,
                             int32_t P, void *scratch, double *out);
/* avg_pool1d / max_pool1d (max != 0) of width k0, zero padding k0 / 2, stride 1 */
void rk_restkv_pool_fixed(const double *r, int32_t P, int32_t k0, int max, void *scratch, double *out);

#endif
