/*
 * topk.c: top-k sparse attention. Nothing is evicted: the whole cache stays, and each
 * query attends only to its top budget-fraction (or budget count) of keys per head,
 * the others masked before the softmax. This is the engine's stand-in for
 * retrieval-style long-context memory (LongLLaMA/Focused Transformer attend to a kNN
 * selection of a memory cache): it measures how much a query loses when it sees
 * only its k best keys, with no memory saved. Flagged RK_POLICY_MASKS_ATTN: setting it
 * sets the session's top-k from the budget, and attention.c calls rk_topk_mask for
 * every query; k = floor(budget * visible keys), at least 1.
 */
#include <math.h>

#include "policy.h"

/* k-th largest of x[0..n) (quickselect; reorders x) */
static float kth_largest(float *x, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        const float pivot = x[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > pivot) i++;
            while (x[j] < pivot) j--;
            if (i <= j) {
                const float t = x[i];
                x[i++] = x[j];
                x[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return x[want];
}

void rk_topk_mask(int32_t topk, float topk_frac, float *scores, int32_t n_used, float *tmp) {
    int32_t visible = 0;
    for (int32_t sl = 0; sl < n_used; sl++)
        if (scores[sl] != -INFINITY) tmp[visible++] = scores[sl];
    int32_t k = topk ? topk : (int32_t)((double)topk_frac * visible + 1e-4);
    if (k < 1) k = 1;
    if (k >= visible) return;
    const float thr = kth_largest(tmp, visible, k);
    for (int32_t sl = 0; sl < n_used; sl++)
        if (scores[sl] < thr) scores[sl] = -INFINITY;
}

/* RK_POLICY_MASKS_ATTN: the shared code sets the session's top-k from the budget; no scores, no eviction */
const rk_policy_i rk_policy_topk = {
    .name = "topk",
    .help = "evicts nothing: each query attends to its top budget-fraction of keys (sparse attention)",
    .flags = RK_POLICY_MASKS_ATTN,
};
