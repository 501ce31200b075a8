/*
 * kv.h: the KV cache: one buffer per (layer, kv-head).
 *
 * Each buffer of layer il has cap[il] slots; a slot holds one token's key and value
 * (head_dim elements each, F16 or F32, RoPE already applied to the key at the
 * token's position) and that position in `pos`. Attention is order-free over
 * slots once keys are rotated, and causality is decided from `pos`, never from
 * slot order, so eviction may free any slot and later writes may reuse it.
 * Slots [0, n_used) are live; eviction compacts live slots to the front.
 *
 * A sliding-window layer (swa[il] = n_swa > 0) holds only what a batch can still see, as
 * llama.cpp's iSWA cache does: cap[il] = n_swa - 1 + n_batch slots used as a
 * ring (once full, a new token overwrites the oldest slot, ring[] says which); such layers
 * are never evicted from and never counted in budgets.
 *
 * Layout: k, v  per layer il, from slot offset off[il]: [n_kv_heads][cap[il]][head_dim]
 *         pos   the same slots
 *         n_used[n_layers][n_kv_heads], ring[n_layers][n_kv_heads]
 */
#ifndef RK_KV_H
#define RK_KV_H

#include <stddef.h>
#include <stdint.h>

#include "restkv.h"

struct rk_backend_i;
typedef struct rk_backend_ctx rk_backend_ctx;

typedef struct {
    const struct rk_backend_i *be; /* k and v are its memory (the positions and counts are the host's) */
    rk_backend_ctx *bctx;
    int32_t  n_layers, n_kv_heads, head_dim, capacity; /* capacity: of a global layer's buffers (n_ctx) */
    int32_t  type;       /* RK_TYPE_F16 or RK_TYPE_F32 */
    size_t   elt_size;   /* bytes per element */
    uint8_t *k, *v;
    int32_t *pos;
    int32_t *n_used;
    int32_t *cap;        /* [n_layers] slots per buffer */
    int32_t *swa;        /* [n_layers] the layer's window n_swa, 0 = global */
    size_t  *off;        /* [n_layers] first slot of the layer's first buffer */
    int32_t *ring;       /* [n_layers][n_kv_heads] next slot a full sliding-window buffer overwrites */
} rk_kv;

/* slots of a sliding-window layer's ring: what the first query of a batch of n_batch tokens still
 * sees (n_swa - 1 earlier positions) plus the batch */
static inline int32_t rk_kv_window_slots(int32_t n_swa, int32_t n_batch) { return n_swa - 1 + n_batch; }
/* layer_swa: [n_layers] each layer's window (0 = global), or NULL for none; a windowed layer
 * gets rk_kv_window_slots(n_swa, n_batch) slots, whatever the capacity */
rk_status rk_kv_init(rk_kv *kv, const struct rk_backend_i *be, rk_backend_ctx *bctx, int32_t n_layers,
                     int32_t n_kv_heads, int32_t head_dim, int32_t capacity, int32_t type, const int32_t *layer_swa,
                     int32_t n_batch);
void      rk_kv_free(rk_kv *kv);
void      rk_kv_clear(rk_kv *kv);
size_t    rk_kv_bytes_alloc(const rk_kv *kv);
size_t    rk_kv_bytes_used(const rk_kv *kv);
/* the same, of the global (which = 0) or the sliding-window (which = 1) layers only */
size_t    rk_kv_bytes_alloc_of(const rk_kv *kv, int which);
size_t    rk_kv_bytes_used_of(const rk_kv *kv, int which);

static inline size_t rk_kv_head_index(const rk_kv *kv, int il, int h) {
    return (size_t)il * (size_t)kv->n_kv_heads + (size_t)h;
}
/* First slot of the (layer, head) buffer. */
static inline size_t rk_kv_slot0(const rk_kv *kv, int il, int h) { return kv->off[il] + (size_t)h * (size_t)kv->cap[il]; }
static inline uint8_t *rk_kv_k(const rk_kv *kv, int il, int h) {
    return kv->k + rk_kv_slot0(kv, il, h) * (size_t)kv->head_dim * kv->elt_size;
}
static inline uint8_t *rk_kv_v(const rk_kv *kv, int il, int h) {
    return kv->v + rk_kv_slot0(kv, il, h) * (size_t)kv->head_dim * kv->elt_size;
}
static inline int32_t *rk_kv_pos(const rk_kv *kv, int il, int h) { return kv->pos + rk_kv_slot0(kv, il, h); }

/* (the CPU backend's kv_append) Appends one token's key and value (f32, head_dim each) to the (layer, head)
 * buffer; the caller has checked there is room (a full sliding-window buffer overwrites its oldest slot). */
void rk_kv_append(rk_kv *kv, int il, int h, int32_t pos, const float *k, const float *v);

#endif
