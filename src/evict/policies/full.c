/* full.c: no eviction (the full cache). Scores are never asked for: budget is forced to 1. */
#include "policy.h"

static rk_status score(const rk_policy_view *v, float *scores) {
    for (int32_t g = 0; g < v->n_kv_heads; g++)
        for (int32_t sl = 0; sl < v->n_used[g]; sl++) scores[g * v->cap + sl] = 1.0f;
    return RK_OK;
}

const rk_policy_i rk_policy_full = {"full", 0, 0, 0, 0, score, NULL};
