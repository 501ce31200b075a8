/* kv.c: allocation and slot bookkeeping of the per-(layer, kv-head) KV buffers. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "kv.h"
#include "quant.h"

rk_status rk_kv_init(rk_kv *kv, const rk_backend_i *be, rk_backend_ctx *bctx, int32_t n_layers, int32_t n_kv_heads,
                     int32_t head_dim, int32_t capacity, int32_t type, const int32_t *layer_swa, int32_t n_batch) {
    memset(kv, 0, sizeof *kv);
    if (type != RK_TYPE_F16 && type != RK_TYPE_F32)
        return rk_fail(RK_ERR_ARG, "kv_type must be F16 (%d) or F32 (%d), got %d", RK_TYPE_F16, RK_TYPE_F32, type);
    kv->be = be;
    kv->bctx = bctx;
    kv->n_layers = n_layers;
    kv->n_kv_heads = n_kv_heads;
    kv->head_dim = head_dim;
    kv->capacity = capacity;
    kv->type = type;
    kv->elt_size = type == RK_TYPE_F16 ? 2 : 4;
    const size_t heads = (size_t)n_layers * (size_t)n_kv_heads;
    kv->cap = malloc((size_t)n_layers * sizeof(int32_t));
    kv->swa = calloc((size_t)n_layers, sizeof(int32_t));
    kv->off = malloc((size_t)n_layers * sizeof(size_t));
    kv->ring = calloc(heads, sizeof(int32_t));
    kv->n_used = calloc(heads, sizeof(int32_t));
    if (!kv->cap || !kv->swa || !kv->off || !kv->ring || !kv->n_used) {
        rk_kv_free(kv);
        return rk_fail(RK_ERR_OOM, "out of memory");
    }
    size_t slots = 0;
    for (int il = 0; il < n_layers; il++) {
        const int32_t w = layer_swa ? layer_swa[il] : 0;
        kv->swa[il] = w;
        /* not capped at capacity: once a policy evicts from the global layers, positions run past
         * n_ctx while a window layer must still hold its whole window */
        kv->cap[il] = w > 0 ? rk_kv_window_slots(w, n_batch) : capacity;
        kv->off[il] = slots;
        slots += (size_t)n_kv_heads * (size_t)kv->cap[il];
    }
    const size_t bytes = slots * (size_t)head_dim * kv->elt_size;
    kv->k = be->alloc(bctx, bytes);
    kv->v = be->alloc(bctx, bytes);
    kv->pos = malloc(slots * sizeof(int32_t));
    if (!kv->k || !kv->v || !kv->pos) {
        rk_kv_free(kv);
        return rk_fail(RK_ERR_OOM, "cannot allocate a KV cache of %zu bytes", 2 * bytes);
    }
    return RK_OK;
}

void rk_kv_free(rk_kv *kv) {
    if (kv->be) {
        kv->be->dealloc(kv->bctx, kv->k);
        kv->be->dealloc(kv->bctx, kv->v);
    }
    free(kv->pos);
    free(kv->n_used);
    free(kv->cap);
    free(kv->swa);
    free(kv->off);
    free(kv->ring);
    memset(kv, 0, sizeof *kv);
}

void rk_kv_clear(rk_kv *kv) {
    memset(kv->n_used, 0, (size_t)kv->n_layers * (size_t)kv->n_kv_heads * sizeof(int32_t));
    memset(kv->ring, 0, (size_t)kv->n_layers * (size_t)kv->n_kv_heads * sizeof(int32_t));
}

static size_t slot_bytes(const rk_kv *kv) { return 2 * (size_t)kv->head_dim * kv->elt_size + sizeof(int32_t); }

size_t rk_kv_bytes_alloc_of(const rk_kv *kv, int which) {
    size_t slots = 0;
    for (int il = 0; il < kv->n_layers; il++)
        if (which < 0 || (kv->swa[il] > 0) == which) slots += (size_t)kv->n_kv_heads * (size_t)kv->cap[il];
    return slots * slot_bytes(kv);
}

size_t rk_kv_bytes_used_of(const rk_kv *kv, int which) {
    size_t slots = 0;
    for (int il = 0; il < kv->n_layers; il++)
        if (which < 0 || (kv->swa[il] > 0) == which)
            for (int h = 0; h < kv->n_kv_heads; h++) slots += (size_t)kv->n_used[rk_kv_head_index(kv, il, h)];
    return slots * slot_bytes(kv);
}

size_t rk_kv_bytes_alloc(const rk_kv *kv) { return rk_kv_bytes_alloc_of(kv, -1); }
size_t rk_kv_bytes_used(const rk_kv *kv) { return rk_kv_bytes_used_of(kv, -1); }

void rk_kv_append(rk_kv *kv, int il, int h, int32_t pos, const float *k, const float *v) {
    const size_t hi = rk_kv_head_index(kv, il, h);
    int32_t s;
    if (kv->n_used[hi] < kv->cap[il]) {
        s = kv->n_used[hi]++;
    } else { /* a full sliding-window ring: the oldest slot */
        s = kv->ring[hi];
        kv->ring[hi] = (s + 1) % kv->cap[il];
    }
    size_t off = (size_t)s * (size_t)kv->head_dim * kv->elt_size;
    if (kv->type == RK_TYPE_F32) {
        memcpy(rk_kv_k(kv, il, h) + off, k, (size_t)kv->head_dim * 4);
        memcpy(rk_kv_v(kv, il, h) + off, v, (size_t)kv->head_dim * 4);
    } else {
        uint16_t *kd = (uint16_t *)(rk_kv_k(kv, il, h) + off), *vd = (uint16_t *)(rk_kv_v(kv, il, h) + off);
        for (int i = 0; i < kv->head_dim; i++) {
            kd[i] = rk_fp32_to_fp16(k[i]);
            vd[i] = rk_fp32_to_fp16(v[i]);
        }
    }
    rk_kv_pos(kv, il, h)[s] = pos;
}
