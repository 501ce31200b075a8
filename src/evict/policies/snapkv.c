/*
 * snapkv.c: SnapKV, score each cached token by the attention the last `window`
 * queries (the observation window) pay to it, smoothed along the sequence.
 *
 * Reference: Li et al., "SnapKV: LLM Knows What You Are Looking for Before
 * Generation" (arXiv 2404.14469); code FasterDecoding/SnapKV
 * (snapkv_utils.py::SnapKVCluster), KVCache-Factory SnapKVCluster, and kvpress
 * SnapKVPress (mean over window queries, average pooling, mean over the query
 * heads of a kv-head; eviction-policies.md c.4).
 *
 * Parameters: kernel k, width of the 1-D average pooling (5, odd); the shared window w:
 *   observation queries = the last w evaluated tokens (32).
 *
 * Statistics: RK_NEED_WINDOW, i.e. v->win_attn, the softmax of each window query
 * i over the slots it may see (pos <= win_pos[i]), 0 elsewhere.
 *
 * Score of slot j of kv-head g (slots are in increasing position order):
 *   1. per query head h of the group:
 *        a_h[j] = Σ_i A[h, i, j] / n_j,   n_j = #{i : win_pos[i] >= pos[j]}
 *      i.e. the mean attention over the window queries that can see the slot.
 *      For a slot older than the window this is the plain mean over the w
 *      queries (ranks like SnapKV's sum); for a slot inside the window it is the
 *      mean over the queries that see it (our rule: a budget smaller than the
 *      window still ranks window tokens by a comparable score). n_j = 0 (a
 *      slot newer than every window query, impossible with original positions)
 *      gives 0.
 *   2. 1-D average pooling along the slots with kernel k, stride 1, zero padding
 *      of k/2 on both sides, divisor always k (torch avg_pool1d with
 *      padding=k//2, count_include_pad=True). Pooling runs over all of the
 *      head's slots, window slots included.
 *   3. the mean over the G = n_heads / n_kv_heads query heads of the kv-head
 *      (steps 2 and 3 are linear, so they are applied in the order mean, pool).
 * Selection (evict.c): RK_POLICY_KEEPS_WINDOW, so the newest min(w, floor(c/2)) tokens
 * are protected and the rest of the budget c goes to the highest scores.
 *
 * rk_snapkv_scores() is this scorer; pyramidkv.c and adakv.c reuse it.
 */
#include <stdlib.h>

#include "error.h"
#include "policy.h"

#include <stdio.h>

rk_status rk_check_kernel(const char *policy, int32_t kernel) {
    if (kernel < 1 || kernel % 2 == 0)
        return rk_fail(RK_ERR_ARG, "kernel must be odd and >= 1, got %d (parameter of policy '%s')", kernel, policy);
    return RK_OK;
}

rk_status rk_snapkv_scores(const rk_policy_view *v, int32_t kernel, float *scores) {
    const int32_t G = v->group, half = kernel / 2;
    const double inv_k = 1.0 / (double)kernel;
    double *mean = malloc((size_t)v->cap * sizeof(double));
    int32_t *seen = malloc((size_t)v->cap * sizeof(int32_t));
    if (!mean || !seen) {
        free(mean);
        free(seen);
        return rk_fail(RK_ERR_OOM, "snapkv: cannot allocate scoring scratch");
    }
    for (int32_t g = 0; g < v->n_kv_heads; g++) {
        const int32_t n = v->n_used[g];
        const int32_t *pos = v->pos + (size_t)g * v->cap;
        float *out = scores + (size_t)g * v->cap;
        for (int32_t sl = 0; sl < n; sl++) {
            int32_t c = 0;
            for (int32_t i = 0; i < v->n_win; i++) c += v->win_pos[i] >= pos[sl];
            seen[sl] = c;
            mean[sl] = 0.0;
        }
        /* group mean of the per-head window means */
        for (int32_t h = g * G; h < (g + 1) * G; h++)
            for (int32_t i = 0; i < v->n_win; i++) {
                const float *a = v->win_attn + ((size_t)h * v->n_win + i) * v->cap;
                for (int32_t sl = 0; sl < n; sl++) mean[sl] += a[sl];
            }
        for (int32_t sl = 0; sl < n; sl++) mean[sl] = seen[sl] ? mean[sl] / ((double)seen[sl] * G) : 0.0;
        /* average pooling, zero padded, divisor k */
        for (int32_t sl = 0; sl < n; sl++) {
            const int32_t lo = sl - half < 0 ? 0 : sl - half, hi = sl + half >= n ? n - 1 : sl + half;
            double sum = 0.0;
            for (int32_t t = lo; t <= hi; t++) sum += mean[t];
            out[sl] = (float)(sum * inv_k);
        }
    }
    free(mean);
    free(seen);
    return RK_OK;
}

typedef struct {
    int32_t kernel;
} snapkv_cfg;

static const rk_param_def params[] = {
    RK_PARAM_INT(snapkv_cfg, kernel, 5, 1, 2147483647, "width of the average pooling of the window attention (odd)"),
};

static rk_status validate(const void *cfg) { return rk_check_kernel("snapkv", ((const snapkv_cfg *)cfg)->kernel); }

static rk_status score(const rk_policy_view *v, float *scores) {
    return rk_snapkv_scores(v, ((const snapkv_cfg *)v->cfg)->kernel, scores);
}

const rk_policy_i rk_policy_snapkv = {
    .name = "snapkv",
    .help = "the window, then the highest pooled window attention (SnapKV)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_WINDOW,
    .needs = RK_NEED_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(snapkv_cfg),
    .validate = validate,
    .score = score,
};
