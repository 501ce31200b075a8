/*
 * lacache.c: LaCache (GATECH-EIC/LaCache ppl/lacache/kv_cache.py; docs/eviction-policies.md c.7), the
 * ladder-shaped cache: score-free, position pattern per layer, the same for every head of a layer.
 *
 * Ladder constants, with N = n_layers, S = lacache_span, O = lacache_overlap:
 *   Bk = 1 + ceil((N - S) / (S - O))     tokens per ladder block
 *   A  = min(ceil(S / (S - O)), Bk)       tokens a layer keeps per block
 *   R  = Bk - A                           tokens a block frees
 * and layer il keeps, of each compacted block, the A consecutive tokens at offsets
 * o .. o + A - 1 with o = il mod (R + 1) (periodic across depth).
 *
 * One compression of a (layer, kv-head) buffer of n slots to c tokens (slots are in position order;
 * the rule works on slot order, so it is the same with positions "original" or "shift"):
 *   1. protected, exactly as the shared code protects them (keep_sinks, keep_window): the slots with
 *      pos < n_sink (at most c), then the newest min(window, floor(c/2)) other slots (while the total
 *      stays <= c). They are LaCache's start tokens and its uncompacted recent tokens.
 *   2. the other slots, oldest first, form the list L; D = n - c of them must go.
 *   3. pass: the oldest slots of L are cut into consecutive blocks of Bk; nb = min(ceil(D / R),
 *      floor(|L| / Bk)) blocks ("as many blocks as needed") are compacted: block b drops its offsets
 *      outside [o, o + A), oldest first, the last block only as many as still needed (its newest
 *      would-be-dropped tokens stay, so the budget is met exactly rather than undershot as the original's
 *      whole blocks do). Survivors stay in L in order, D decreases.
 *   4. while D > 0, another pass over the new L: the oldest (already compacted) region is compacted
 *      again, the analogue of the original's "startover", which re-compacts the compacted region with
 *      a larger stride. Each pass halves at most (A / Bk), so a small budget takes several passes.
 *   5. fallback when the ladder cannot drop (R == 0, e.g. N <= S, where the original divides by zero;
 *      or |L| < Bk): the oldest D slots of L go (StreamingLLM order).
 * Score: 1 for the slots this keeps, 0 for those it drops; the shared top-k (ties to the newer) then
 * keeps exactly this set.
 *
 * Schedules. Prefix: one compression, as above: the oldest non-sink tokens form the compacted region,
 * as many blocks as needed to reach the budget (several passes below the ladder's ratio A/Bk).
 * Streaming: each compression (a buffer past budget + slack) applies the same rule to the current
 * buffer, so the region compacted is again the oldest one: repeated compressions thin the older part
 * of the cache progressively (a token reaching the front is compacted again at every compression),
 * while the newest tokens stay dense. This replaces the original's persistent ladder cursor (the
 * policy keeps no state between compressions; the original's cursor walks forward over uncompacted
 * tokens and starts over at the sinks when the cache is full of compacted blocks).
 */
#include <stdlib.h>

#include "error.h"
#include "policy.h"

typedef struct {
    int32_t lacache_span, lacache_overlap;
} lacache_cfg;

static const rk_param_def params[] = {
    RK_PARAM_INT(lacache_cfg, lacache_span, 16, 2, 2147483647, "ladder span S (layers a kept token spans)"),
    RK_PARAM_INT(lacache_cfg, lacache_overlap, 0, 0, 2147483647, "ladder overlap O (< lacache_span)"),
};

static rk_status validate(const void *cfg) {
    const lacache_cfg *c = cfg;
    if (c->lacache_overlap >= c->lacache_span)
        return rk_fail(RK_ERR_ARG, "lacache needs lacache_overlap < lacache_span, got %d/%d (parameters of policy 'lacache')",
                       c->lacache_overlap, c->lacache_span);
    return RK_OK;
}

static int32_t ceil_div(int32_t a, int32_t b) { /* b > 0; rounds toward +inf like math.ceil */
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

static void ladder(int32_t n_layers, int32_t span, int32_t overlap, int32_t *bk, int32_t *a, int32_t *r) {
    const int32_t step = span - overlap;
    *bk = 1 + ceil_div(n_layers - span, step);
    if (*bk < 1) *bk = 1;
    *a = ceil_div(span, step);
    if (*a > *bk) *a = *bk;
    *r = *bk - *a;
}

static rk_status score(const rk_policy_view *v, float *scores) {
    const rk_evict_shared *p = v->sh;
    const lacache_cfg *c = v->cfg;
    int32_t Bk, A, R;
    ladder(v->n_layers, c->lacache_span, c->lacache_overlap, &Bk, &A, &R);
    const int32_t o = v->il % (R + 1);
    int32_t *L = malloc((size_t)(v->cap > 0 ? v->cap : 1) * sizeof(int32_t));
    if (!L) return rk_fail(RK_ERR_OOM, "lacache: out of memory");
    for (int32_t g = 0; g < v->n_kv_heads; g++) {
        const int32_t n = v->n_used[g], *pos = v->pos + (size_t)g * v->cap;
        float *sc = scores + (size_t)g * v->cap;
        const int32_t c = v->budget < 1 ? 1 : v->budget;
        for (int32_t sl = 0; sl < n; sl++) sc[sl] = 1.0f;
        if (c >= n) continue;
        /* 1. protection as the shared code does it: sinks, then the newest window (marked 2 meanwhile) */
        int32_t kept = 0, m = 0;
        for (int32_t sl = 0; sl < n && kept < c; sl++)
            if (pos[sl] < p->n_sink) sc[sl] = 2.0f, kept++;
        const int32_t w = p->window < c / 2 ? p->window : c / 2;
        for (int32_t sl = n - 1, taken = 0; sl >= 0 && taken < w && kept < c; sl--)
            if (sc[sl] != 2.0f) sc[sl] = 2.0f, kept++, taken++;
        /* 2. the compactable list, oldest first */
        for (int32_t sl = 0; sl < n; sl++)
            if (sc[sl] != 2.0f) L[m++] = sl;
        int32_t D = n - c;
        /* 3-4. ladder passes */
        while (D > 0 && m > 0) {
            const int32_t blocks = m / Bk;
            if (R == 0 || blocks == 0) { /* 5. fallback: the oldest go */
                for (int32_t i = 0; i < D && i < m; i++) sc[L[i]] = 0.0f;
                D = 0;
                break;
            }
            int32_t nb = ceil_div(D, R);
            if (nb > blocks) nb = blocks;
            for (int32_t b = 0; b < nb && D > 0; b++)
                for (int32_t off = 0; off < Bk && D > 0; off++)
                    if (off < o || off >= o + A) sc[L[b * Bk + off]] = 0.0f, D--;
            int32_t m2 = 0;
            for (int32_t i = 0; i < m; i++)
                if (sc[L[i]] != 0.0f) L[m2++] = L[i];
            m = m2;
        }
        for (int32_t sl = 0; sl < n; sl++)
            if (sc[sl] == 2.0f) sc[sl] = 1.0f;
    }
    free(L);
    return RK_OK;
}

const rk_policy_i rk_policy_lacache = {
    .name = "lacache",
    .help = "a ladder pattern of kept spans across layers (LaCache)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_SINKS | RK_POLICY_KEEPS_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(lacache_cfg),
    .validate = validate,
    .score = score,
};
