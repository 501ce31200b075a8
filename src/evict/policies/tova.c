/*
 * tova.c: TOVA (Token Omission Via Attention), keep the tokens the newest query
 * attends to most, averaged over all query heads of the layer.
 *
 * Reference: Oren et al., "Transformers are Multi-State RNNs" (arXiv
 * 2401.06104), code schwartz-lab-NLP/TOVA (TOVACache.reduce); kvpress TOVAPress
 * (eviction-policies.md c.3).
 *
 * Parameters: none besides the budget (only the newest observation query is
 * used, whatever `window` is).
 *
 * Statistics: RK_NEED_WINDOW, of which only the last observation query
 * i = n_win − 1 (the newest evaluated token) is read: v->win_attn[h][i][slot].
 *
 * Score of the token at position p in layer l (one score per layer, per TOVA):
 *   m[p] = (1 / n_heads) Σ_{h < n_heads} A[h, i, slot of p in kv-head h/G]
 * the mean over ALL query heads of the layer. The same m[p] is written into the
 * row of every kv-head that holds p. When TOVA alone evicts, every kv-head of a
 * layer holds the same positions (all start equal and get the same keep-set),
 * so this is one keep-set per layer, as in TOVA and kvpress. If the heads of a
 * layer hold different positions (another policy compressed per head earlier),
 * a query head whose kv-head no longer holds p attends 0 to it and contributes
 * 0 to the mean; each kv-head then keeps its top tokens by these layer scores,
 * so the keep-sets may differ between heads.
 *
 * Selection: RK_POLICY_KEEPS_LAST (kvpress forces the newest token), no sinks, no
 * window; the rest of the budget goes to the top scores, ties to the newer token.
 */
#include "policy.h"

/* slot holding position p in the increasing pos[0..n), or -1 */
static int32_t find_pos(const int32_t *pos, int32_t n, int32_t p) {
    int32_t lo = 0, hi = n - 1;
    while (lo <= hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (pos[mid] == p) return mid;
        if (pos[mid] < p) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static rk_status score(const rk_policy_view *v, float *scores) {
    const int32_t G = v->group, i = v->n_win - 1;
    const double inv_h = 1.0 / (double)v->n_heads;
    for (int32_t g = 0; g < v->n_kv_heads; g++) {
        const int32_t n = v->n_used[g];
        const int32_t *pos = v->pos + (size_t)g * v->cap;
        float *out = scores + (size_t)g * v->cap;
        for (int32_t sl = 0; sl < n; sl++) out[sl] = 0.0f;
        if (i < 0) continue;
        for (int32_t sl = 0; sl < n; sl++) {
            double sum = 0.0;
            for (int32_t g2 = 0; g2 < v->n_kv_heads; g2++) {
                const int32_t *pos2 = v->pos + (size_t)g2 * v->cap;
                const int32_t n2 = v->n_used[g2];
                /* same slot when the buffers hold the same positions (the usual case) */
                const int32_t sl2 = g2 == g || (sl < n2 && pos2[sl] == pos[sl]) ? sl : find_pos(pos2, n2, pos[sl]);
                if (sl2 < 0) continue;
                for (int32_t h = g2 * G; h < (g2 + 1) * G; h++)
                    sum += v->win_attn[((size_t)h * v->n_win + i) * v->cap + sl2];
            }
            out[sl] = (float)(sum * inv_h);
        }
    }
    return RK_OK;
}

const rk_policy_i rk_policy_tova = {
    .name = "tova",
    .help = "highest attention of the last query, one keep-set per layer (TOVA)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_LAST,
    .needs = RK_NEED_WINDOW,
    .score = score,
};
