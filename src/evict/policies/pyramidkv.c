/*
 * pyramidkv.c: PyramidKV, SnapKV scores with a per-layer budget that shrinks
 * linearly with depth (lower layers, whose attention is spread out, keep more).
 *
 * Reference: Cai et al., "PyramidKV: Dynamic KV Cache Compression based on
 * Pyramidal Information Funneling" (arXiv 2406.02069); code Zefan-Cai/
 * KVCache-Factory (pyramidkv_utils.py::PyramidKVCluster), eviction-policies.md c.5.
 *
 * Parameters: kernel, as snapkv (pooling kernel; the shared window w as there);
 *   pyramid_beta  β: steepness of the schedule (20).
 *
 * Statistics: RK_NEED_WINDOW; the scores are rk_snapkv_scores() (snapkv.c).
 *
 * Budget schedule (allocate; every kv-head of layer l keeps the same c_l). With
 * B = v->budget (tokens per head, window included), L = v->n_cached (tokens
 * cached), N = n_layers and w' = min(w, floor(B/2)) (the window the shared code
 * protects at budget B; w' = w for every B >= 2w, the range KVCache-Factory
 * targets, and it keeps the schedule defined when B <= w, where B − w <= 0):
 *   b = B − w'                                   (scored part of the budget)
 *   if L <= B:                 nothing to evict (every head keeps all)
 *   elif L < 2b or N == 1:     c_l = B for every layer      (uniform fallback)
 *   else:
 *     min = floor(b / β) ;  max = 2b − min
 *     if max >= L − w':  max = L − w' ;  min = 2b − max
 *     steps = floor((max − min) / (N − 1))
 *     c_l = max − l·steps + w'                     (layer 0 keeps the most)
 * As in KVCache-Factory, min + max = 2b, so the layers' mean of c_l is
 *   B + ((max − min) mod (N − 1)) / 2,
 * i.e. at least B and more by less than (N − 1)/2 tokens per head (the floor of
 * `steps` leaves the top layers a little more); it equals B when N − 1 divides
 * max − min, and in the uniform fallback. 0 <= min keeps c_l >= w'.
 * The shared code then keeps c_l per head: it protects the newest
 * min(w, floor(c_l/2)) tokens of that layer (so a layer with c_l < 2w ranks part
 * of the window by score, unlike KVCache-Factory, which always keeps all w) and
 * fills the rest with the top SnapKV scores.
 */
#include <math.h>

#include "policy.h"

typedef struct {
    int32_t kernel;
    float   pyramid_beta;
} pyramidkv_cfg;

static const rk_param_def params[] = {
    RK_PARAM_INT(pyramidkv_cfg, kernel, 5, 1, 2147483647, "width of the average pooling of the window attention (odd)"),
    RK_PARAM_FLOAT(pyramidkv_cfg, pyramid_beta, 20.0, 1.0, 0, RK_INF, 0, "steepness of the per-layer budget schedule"),
};

static rk_status validate(const void *cfg) { return rk_check_kernel("pyramidkv", ((const pyramidkv_cfg *)cfg)->kernel); }

static rk_status score(const rk_policy_view *v, float *scores) {
    return rk_snapkv_scores(v, ((const pyramidkv_cfg *)v->cfg)->kernel, scores);
}

static void allocate(const rk_policy_view *v, const float *scores, int32_t *keep) {
    (void)scores;
    const int64_t B = v->budget, L = v->n_cached, N = v->n_layers;
    const int64_t w = v->sh->window < B / 2 ? v->sh->window : B / 2, b = B - w;
    if (L <= B || L < 2 * b || N < 2) return; /* keep[] = B already */
    const float beta = ((const pyramidkv_cfg *)v->cfg)->pyramid_beta;
    int64_t mn = (int64_t)floor((double)b / (double)beta), mx = 2 * b - mn;
    if (mx >= L - w) {
        mx = L - w;
        mn = 2 * b - mx;
    }
    const int64_t steps = (mx - mn) / (N - 1);
    const int64_t c = mx - (int64_t)v->il * steps + w;
    for (int32_t g = 0; g < v->n_kv_heads; g++) keep[g] = (int32_t)c;
}

const rk_policy_i rk_policy_pyramidkv = {
    .name = "pyramidkv",
    .help = "SnapKV scores, per-layer budgets falling with depth (PyramidKV)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_WINDOW,
    .needs = RK_NEED_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(pyramidkv_cfg),
    .validate = validate,
    .score = score,
    .allocate = allocate,
};
