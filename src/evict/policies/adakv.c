/*
 * adakv.c: AdaKV, SnapKV-style scores with the layer's budget shared unevenly
 * among its kv-heads: heads whose scores are concentrated give budget to heads
 * whose scores are spread out.
 *
 * Reference: Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive
 * Budget Allocation for Efficient LLM Inference" (arXiv 2407.11550); code
 * FFY0/AdaKV (adaptive_snapkv/snapkv_utils.py::AdaptiveSnapKVCluster, with
 * gqa_support: H' = n_kv_heads); eviction-policies.md c.6 and (e).5.
 *
 * Parameters (the shared window w as snapkv):
 *   ada_floor  α: share of each head's scored budget guaranteed to it (0.2).
 *   ada_base:  "snapkv" (rk_snapkv_scores, snapkv.c) or "restkv"
 *              (rk_restkv_scores, restkv.c) scores to rank and allocate with.
 *   kernel, ema_alpha, aws_beta: the base scorer's (ema_alpha and aws_beta: restkv only).
 * Preparation: with ada_base "restkv", the W_o Gram matrices (rk_restkv_prepare).
 *
 * Statistics: RK_NEED_WINDOW (through the base scorer).
 *
 * Allocation (allocate), per layer, with B = v->budget, H' = n_kv_heads and
 * w' = min(w, floor(B/2)) (the window the shared code protects at budget B;
 * w' = w whenever B >= 2w):
 *   base  = B − w' ;  floor = int(base · α)
 *   prefix slots of head g: all but its newest w' (slots are in position order)
 *   restkv base only: each head's scores are divided by their sum over its
 *     prefix slots (when that sum is positive and finite; restkv gives +inf to
 *     a token with all the attention) so that heads compare on one scale
 *     (eviction-policies.md (e).5); this changes only the allocation, never
 *     the order within a head
 *   T = H' · base; the layer-global top T of the prefix scores, ranked by score,
 *     ties to the newer position, then to the lower head, gives
 *     count_g = entries of head g among them (all prefix slots if fewer than T)
 *   x_g = count_g · (1 − α) ;  cap_g = round_half_even(x_g) + floor
 *   exact total: cap_g is clamped to [0, prefix_g]; the heads are ranked by
 *     x_g − round(x_g) descending (the most rounded down first; ties: lower g
 *     first). While Σ cap_g < T the heads get +1 in ranking order, skipping
 *     full ones (cap_g = prefix_g), cycling if needed; while Σ cap_g > T they
 *     give −1 in reverse ranking order (the most rounded up first), skipping
 *     empty ones. Without clamping this is largest-remainder rounding of the
 *     x_g, and a surplus only takes back units that rounding added, so every
 *     head keeps at least floor scored tokens (when it holds that many).
 *   keep_g = cap_g + w'.
 * So Σ_g keep_g = H' · B exactly whenever the layer's heads hold at least
 * T prefix slots in all (otherwise every prefix slot is kept). The shared code
 * then keeps keep_g tokens in head g: it protects the newest
 * min(w, floor(keep_g / 2)) (a head with keep_g < 2w' ranks part of its window
 * by score) and fills the rest with the head's top scores, i.e. its top cap_g
 * prefix tokens whenever the protected window is w'.
 * If the scratch of the global ranking cannot be allocated, every head keeps B.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef struct {
    float   s;
    int32_t pos, g;
} entry;

static int cmp_entry(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    if (x->pos != y->pos) return x->pos > y->pos ? -1 : 1;
    return x->g - y->g;
}

enum { BASE_SNAPKV = 0, BASE_RESTKV = 1 };

typedef struct {
    rk_restkv_cfg base;  /* kernel, ema_alpha, aws_beta (snapkv reads kernel only) */
    float   ada_floor;
    int32_t ada_base;    /* BASE_* */
} adakv_cfg;

static const rk_param_def params[] = {
    RK_PARAM_INT_AS("kernel", adakv_cfg, base.kernel, 5, 1, 2147483647, "pooling kernel of the base scores (odd)"),
    RK_PARAM_FLOAT_AS("ema_alpha", adakv_cfg, base.ema_alpha, 0.3, 0.0, 1, 1.0, 0, "EMA coefficient over the window queries (restkv base scores)"),
    RK_PARAM_FLOAT_AS("aws_beta", adakv_cfg, base.aws_beta, 2000.0, 0.0, 1, RK_INF, 0, "adaptive pooling scale (restkv base scores)"),
    RK_PARAM_FLOAT(adakv_cfg, ada_floor, 0.2, 0.0, 0, 1.0, 0, "share of each head's budget guaranteed to it"),
    RK_PARAM_CHOICE(adakv_cfg, ada_base, BASE_SNAPKV, 2, "snapkv|restkv", "scores to rank and allocate with"),
};

static const adakv_cfg *cfg_of(const rk_policy_view *v) { return v->cfg; }

static int use_restkv(const rk_policy_view *v) { return cfg_of(v)->ada_base == BASE_RESTKV; }

static rk_status validate(const void *cfg) { return rk_check_kernel("adakv", ((const adakv_cfg *)cfg)->base.kernel); }

static rk_status prepare(rk_model *m, const void *cfg) {
    return ((const adakv_cfg *)cfg)->ada_base == BASE_RESTKV ? rk_restkv_prepare(m, cfg) : RK_OK;
}

static rk_status score(const rk_policy_view *v, float *scores) {
    return use_restkv(v) ? rk_restkv_scores(v, &cfg_of(v)->base, scores)
                         : rk_snapkv_scores(v, cfg_of(v)->base.kernel, scores);
}

/* heads ranked by rem descending, ties: lower head first (insertion sort, stable) */
static void rounding_order(const double *rem, int32_t n, int32_t *ord) {
    for (int32_t g = 0; g < n; g++) ord[g] = g;
    for (int32_t a = 1; a < n; a++) {
        const int32_t t = ord[a];
        int32_t b = a;
        while (b > 0 && rem[ord[b - 1]] < rem[t]) ord[b] = ord[b - 1], b--;
        ord[b] = t;
    }
}

static void allocate(const rk_policy_view *v, const float *scores, int32_t *keep) {
    const int32_t Hk = v->n_kv_heads, B = v->budget;
    const int32_t w = v->sh->window < B / 2 ? v->sh->window : B / 2, base = B - w;
    const double alpha = (double)cfg_of(v)->ada_floor;
    const int32_t fl = (int32_t)((double)base * alpha);
    const int64_t T = (int64_t)Hk * base;
    int32_t *prefix = malloc((size_t)Hk * sizeof(int32_t)), *count = calloc((size_t)Hk, sizeof(int32_t)),
            *ord = malloc((size_t)Hk * sizeof(int32_t)), *cap = malloc((size_t)Hk * sizeof(int32_t));
    double *rem = malloc((size_t)Hk * sizeof(double)), *xs = malloc((size_t)Hk * sizeof(double));
    int64_t total = 0;
    for (int32_t g = 0; prefix && g < Hk; g++) {
        prefix[g] = v->n_used[g] > w ? v->n_used[g] - w : 0;
        total += prefix[g];
    }
    entry *e = prefix ? malloc((size_t)(total ? total : 1) * sizeof(entry)) : NULL;
    if (!prefix || !count || !ord || !cap || !rem || !xs || !e) goto done; /* keep[] = B */
    int64_t m = 0;
    for (int32_t g = 0; g < Hk; g++) {
        const float *sc = scores + (size_t)g * v->cap;
        const int32_t *pos = v->pos + (size_t)g * v->cap;
        double norm = 1.0;
        if (use_restkv(v)) {
            double sum = 0.0;
            for (int32_t sl = 0; sl < prefix[g]; sl++) sum += isnan(sc[sl]) ? 0.0 : sc[sl];
            if (sum > 0 && isfinite(sum)) norm = 1.0 / sum;
        }
        for (int32_t sl = 0; sl < prefix[g]; sl++) {
            const float s = isnan(sc[sl]) ? -INFINITY : (float)(sc[sl] * norm);
            e[m++] = (entry){s, pos[sl], g};
        }
    }
    if (total > T) {
        qsort(e, (size_t)total, sizeof *e, cmp_entry);
        for (int64_t i = 0; i < T; i++) count[e[i].g]++;
    } else {
        for (int32_t g = 0; g < Hk; g++) count[g] = prefix[g];
    }
    int64_t sum = 0;
    for (int32_t g = 0; g < Hk; g++) {
        xs[g] = (double)count[g] * (1.0 - alpha);
        const double r = nearbyint(xs[g]); /* round half to even, as torch.round */
        rem[g] = xs[g] - r;
        int64_t c = (int64_t)r + fl;
        if (c > prefix[g]) c = prefix[g];
        if (c < 0) c = 0;
        cap[g] = (int32_t)c;
        sum += c;
    }
    const int64_t target = total < T ? total : T;
    if (sum != target) {
        const int up = sum < target;
        rounding_order(rem, Hk, ord);
        while (sum != target) {
            int moved = 0;
            for (int32_t k = 0; k < Hk && sum != target; k++) {
                const int32_t g = up ? ord[k] : ord[Hk - 1 - k];
                if (up && cap[g] < prefix[g]) cap[g]++, sum++, moved = 1;
                else if (!up && cap[g] > 0) cap[g]--, sum--, moved = 1;
            }
            if (!moved) break;
        }
    }
    for (int32_t g = 0; g < Hk; g++) keep[g] = cap[g] + w;
done:
    free(prefix); free(count); free(ord); free(cap); free(rem); free(xs); free(e);
}

const rk_policy_i rk_policy_adakv = {
    .name = "adakv",
    .help = "per-head budgets within a layer over snapkv or restkv scores (AdaKV)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_WINDOW,
    .needs = RK_NEED_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(adakv_cfg),
    .validate = validate,
    .prepare = prepare,
    .score = score,
    .allocate = allocate,
};
