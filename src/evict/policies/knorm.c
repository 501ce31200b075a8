/*
 * knorm.c: KNorm, keep the keys with the smallest L2 norm.
 *
 * Reference: Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
 * Compression" (arXiv 2406.11430); code NVIDIA/kvpress KnormPress
 * (kvpress/presses/knorm_press.py @ 8bb29b9):
 *     def score(...): return -keys.norm(dim=-1)
 * a ScorerPress, so kvpress keeps the int(k_len * (1 - compression_ratio)) highest scores of
 * each kv-head, with no sinks and no protected window.
 *
 * Parameters: none besides the budget.
 *
 * Statistics: none; only this layer's keys (v->k, the f32 copy of the cache; post-RoPE, as in
 * kvpress's cache: a RoPE rotation does not change a norm, so pre- or post-RoPE is the same).
 *
 * Score of slot j of kv-head g:
 *   s[g][j] = -||k_{g,j}||_2    (sum of squares in double, stored as float)
 * i.e. per kv-head, as kvpress (keys are per kv-head there too; no group reduction is needed).
 *
 * Selection (evict.c): RK_POLICY_EVICTS with no RK_POLICY_KEEPS_* flag, as KnormPress protects nothing;
 * the budget c goes to the c highest scores (smallest norms), ties to the newer position.
 */
#include <math.h>

#include "policy.h"

static double key_norm(const float *k, int32_t d) {
    double ss = 0.0;
    for (int32_t i = 0; i < d; i++) ss += (double)k[i] * k[i];
    return sqrt(ss);
}

static rk_status score(const rk_policy_view *v, float *scores) {
    for (int32_t g = 0; g < v->n_kv_heads; g++) {
        const float *K = v->k + (size_t)g * v->cap * v->head_dim;
        float *out = scores + (size_t)g * v->cap;
        for (int32_t sl = 0; sl < v->n_used[g]; sl++)
            out[sl] = (float)-key_norm(K + (size_t)sl * v->head_dim, v->head_dim);
    }
    return RK_OK;
}

const rk_policy_i rk_policy_knorm = {
    .name = "knorm",
    .help = "keys with the smallest L2 norm (KNorm)",
    .flags = RK_POLICY_EVICTS,
    .score = score,
};
