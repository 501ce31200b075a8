/*
 * streaming.c: StreamingLLM (Xiao et al., arXiv 2309.17453): keep n_sink attention
 * sinks (the first positions) and the most recent tokens. Reference:
 * mit-han-lab/streaming-llm StartRecentKVCache; kvpress StreamingLLMPress(n_sink=4).
 * Score = position, so the newest tokens win the budget left after the sinks.
 * Needs no statistics. With positions="shift" this is the paper's pos-shift variant.
 */
#include "policy.h"

static rk_status score(const rk_policy_view *v, float *scores) {
    for (int32_t g = 0; g < v->n_kv_heads; g++)
        for (int32_t sl = 0; sl < v->n_used[g]; sl++) scores[g * v->cap + sl] = (float)v->pos[g * v->cap + sl];
    return RK_OK;
}

const rk_policy_i rk_policy_streaming = {
    .name = "streaming",
    .help = "the first n_sink tokens and the most recent ones (StreamingLLM)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_SINKS,
    .score = score,
};
