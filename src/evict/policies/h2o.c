/*
 * h2o.c: H2O (Heavy-Hitter Oracle), keep the tokens that received the most
 * attention, averaged over the queries that could see them.
 *
 * Reference: Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative
 * Inference of Large Language Models" (arXiv 2306.14048), code
 * FMInference/H2O (H2OKVCache_LayerWise); the score is kvpress's
 * ObservedAttentionPress (eviction-policies.md c.2).
 *
 * Parameters: none besides the budget (window, kernel, n_sink are not used).
 *
 * Statistics: RK_NEED_ACC. attention.c adds, for every evaluated query (prefill
 * batches and decode steps alike, every query head h), its softmax weight on
 * each slot it may see to acc[h][slot], and for each kv-head counts the queries
 * that saw the slot in acc_cnt[g][slot] (once per query, not per query head).
 * A new slot starts at 0 (forward.c) and compaction (evict.c compact_head) moves
 * both with their slot, so the statistics of a kept token keep accumulating
 * across evictions, as in H2O's hh_score.
 *
 * Score of slot j of kv-head g:
 *   s[j] = mean over the G query heads h of the group of acc[h][j] / acc_cnt[g][j]
 *        = Σ_h acc[h][j] / (G · acc_cnt[g][j])      (0 when acc_cnt is 0)
 * i.e. the average attention the token received per query that saw it
 * (kvpress: Σ_q A[q, j] / (L − j), then the mean over the group).
 *
 * Selection: no sink, window or last-token protection (no RK_POLICY_KEEPS_* flag): the
 * whole budget goes to the top scores, ties to the newer token. This follows the
 * project's spec and kvpress ObservedAttentionPress, not H2O's own split of the
 * budget into heavy hitters plus a recent window. Under the streaming schedule
 * the newest token competes like any other (its score is its self-attention).
 */
#include "policy.h"

static rk_status score(const rk_policy_view *v, float *scores) {
    const int32_t G = v->group;
    for (int32_t g = 0; g < v->n_kv_heads; g++) {
        const float *cnt = v->acc_cnt + (size_t)g * v->cap;
        float *out = scores + (size_t)g * v->cap;
        for (int32_t sl = 0; sl < v->n_used[g]; sl++) {
            double sum = 0.0;
            for (int32_t h = g * G; h < (g + 1) * G; h++) sum += v->acc[(size_t)h * v->cap + sl];
            out[sl] = cnt[sl] > 0 ? (float)(sum / ((double)G * cnt[sl])) : 0.0f;
        }
    }
    return RK_OK;
}

const rk_policy_i rk_policy_h2o = {
    .name = "h2o",
    .help = "highest accumulated attention, normalised by how many queries saw the key (H2O)",
    .flags = RK_POLICY_EVICTS,
    .needs = RK_NEED_ACC,
    .score = score,
};
