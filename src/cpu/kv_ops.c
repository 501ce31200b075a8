/* kv_ops.c: the CPU backend's KV-cache operations (backend.h): append, f32 copies for scoring,
 * compaction of kept slots, re-rotation of kept keys. */
#include <string.h>

#include "backend_cpu.h"
#include "ops.h"
#include "quant.h"

void rk_cpu_kv_append(rk_backend_ctx *c, rk_kv *kv, int il, const float *k, const float *v, int n, int32_t pos0) {
    const size_t dkv = (size_t)kv->n_kv_heads * kv->head_dim;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < kv->n_kv_heads; h++)
            rk_kv_append(kv, il, h, pos0 + t, k + (size_t)t * dkv + (size_t)h * kv->head_dim,
                         v + (size_t)t * dkv + (size_t)h * kv->head_dim);
}

void rk_cpu_kv_to_f32(rk_backend_ctx *c, const rk_kv *kv, int il, float *k, float *v) {
    const rk_type_traits *tr = rk_get_type_traits(kv->type);
    const size_t D = (size_t)kv->head_dim, C = (size_t)kv->capacity;
    for (int g = 0; g < kv->n_kv_heads; g++) {
        const int32_t n = kv->n_used[rk_kv_head_index(kv, il, g)];
        tr->to_float(rk_kv_k(kv, il, g), k + (size_t)g * C * D, (int64_t)n * (int64_t)D);
        tr->to_float(rk_kv_v(kv, il, g), v + (size_t)g * C * D, (int64_t)n * (int64_t)D);
    }
}

void rk_cpu_kv_gather(rk_backend_ctx *c, rk_kv *kv, int il, int g, const uint8_t *keep) {
    const size_t hi = rk_kv_head_index(kv, il, g), row = (size_t)kv->head_dim * kv->elt_size;
    uint8_t *K = rk_kv_k(kv, il, g), *V = rk_kv_v(kv, il, g);
    int32_t *pos = rk_kv_pos(kv, il, g);
    int32_t w = 0;
    for (int32_t sl = 0; sl < kv->n_used[hi]; sl++) {
        if (!keep[sl]) continue;
        if (w != sl) {
            memcpy(K + (size_t)w * row, K + (size_t)sl * row, row);
            memcpy(V + (size_t)w * row, V + (size_t)sl * row, row);
            pos[w] = pos[sl];
        }
        w++;
    }
    kv->n_used[hi] = w;
}

void rk_cpu_kv_reposition(rk_backend_ctx *c, rk_kv *kv, const rk_model *m) {
    const rk_type_traits *tr = rk_get_type_traits(kv->type);
    const size_t row = (size_t)kv->head_dim * kv->elt_size;
    float krow[1024], cs[1024];
    for (int il = 0; il < kv->n_layers; il++)
        for (int g = 0; g < kv->n_kv_heads && !kv->swa[il]; g++) { /* (eviction refuses shift with windows) */
            const size_t hi = rk_kv_head_index(kv, il, g);
            int32_t *pos = rk_kv_pos(kv, il, g);
            uint8_t *K = rk_kv_k(kv, il, g);
            for (int32_t sl = 0; sl < kv->n_used[hi]; sl++) {
                const int32_t delta = sl - pos[sl];
                if (!delta) continue;
                tr->to_float(K + (size_t)sl * row, krow, kv->head_dim);
                rk_rope_angles(cs, delta, m->n_rot, m->rope_base, m->rope_freq_scale, m->rope_freqs);
                rk_rope_apply_kind(m->rope_neox, krow, 1, kv->head_dim, m->n_rot, cs);
                tr->from_float(krow, K + (size_t)sl * row, kv->head_dim);
                pos[sl] = sl;
            }
        }
}

void rk_cpu_kv_copy(rk_backend_ctx *c, rk_kv *b, const rk_kv *a) {
    const size_t row = (size_t)a->head_dim * a->elt_size;
    for (int il = 0; il < a->n_layers; il++)
        for (int h = 0; h < a->n_kv_heads; h++) {
            const size_t hi = rk_kv_head_index(a, il, h), n = (size_t)a->n_used[hi];
            memcpy(rk_kv_k(b, il, h), rk_kv_k(a, il, h), n * row);
            memcpy(rk_kv_v(b, il, h), rk_kv_v(a, il, h), n * row);
            memcpy(rk_kv_pos(b, il, h), rk_kv_pos(a, il, h), n * sizeof(int32_t));
            b->n_used[hi] = a->n_used[hi];
            b->ring[hi] = a->ring[hi];
        }
}
