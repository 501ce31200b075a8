/*
 * expected_attention.c: Expected Attention, score each cached token by the attention that future
 * queries are expected to pay to it, estimated from the statistics of recent queries with RoPE
 * averaged over the next positions, times the norm of its value.
 *
 * Reference: Devoto et al., "Expected Attention: KV Cache Compression by Estimating Attention from
 * Future Queries Distribution" (arXiv 2510.00636); code NVIDIA/kvpress ExpectedAttentionPress
 * (kvpress/presses/expected_attention_press.py @ 8bb29b9; eviction-policies.md c.9), defaults
 * n_future_positions = 512, n_sink = 4, use_covariance = True, use_vnorm = True, epsilon = 0.
 *
 * Parameters (declared below; kvpress's defaults): n_future_positions F (512), use_covariance (1),
 * use_vnorm (1), epsilon (0). Shared settings it reads:
 *   n_sink  s: the first s positions are neither scored nor used as queries, and are kept (4,
 *              kvpress's n_sink default).
 *   window  w: observation queries = the last w evaluated tokens (32); see deviation 1.
 *
 * Statistics: RK_NEED_WINDOW, for v->win_q (post-RoPE queries of the last w evaluated tokens) and
 * v->win_pos; the window attention the shared code also computes is not used.
 *
 * Score, per layer, with d = head_dim, G = group, for query head h of kv-head g = h / G:
 *   1. Q_h = { q_{h,i} pre-RoPE : window query i with win_pos[i] >= s }  (N of them)
 *      kvpress get_query_statistics: h = hidden_states[:, n_sink:];
 *      query_states = get_prerope_query_states(module, h). Our ring holds post-RoPE queries, so
 *      q_pre = R(win_pos[i])^T q_post, the inverse of the forward's rotation with the same float
 *      cos/sin (rk_rope_angles), applied in double.
 *   2. mu_h = (1/N) sum q,   Sigma_h = (1/N) sum (q - mu_h)(q - mu_h)^T   (biased, as kvpress:
 *      einsum(centered, centered) / h.shape[1]).
 *   3. Rbar = (1/F) sum_{p = P0}^{P0+F-1} R(p), F = EA_N_FUTURE, P0 = win_pos[newest] + 1 (kvpress
 *      apply_avg_rope: position_ids = arange(q_len, q_len + n_future_positions), R = cos*Id + sin*P,
 *      R = R.mean(dim=0)). R(p) is block-diagonal over the rotated pairs, so Rbar is too: per pair i
 *      [[cbar_i, -sbar_i], [sbar_i, cbar_i]], cbar_i / sbar_i = the means of the forward's cos / sin
 *      of pair i over those positions; identity on dims >= n_rot.
 *      mu'_h = Rbar mu_h (kvpress: mu @ R.T), Sigma'_h = Rbar Sigma_h Rbar^T (kvpress: R @ cov @ R.T;
 *      note: the averaged rotation applied once, not the average of R Sigma R^T).
 *   4. for the non-sink slots j of kv-head g (pos[j] >= s):
 *        z_h[j] = k_j . mu'_h / sqrt(d) + k_j^T Sigma'_h k_j / (2 d)
 *        a_h = softmax over those slots of z_h
 *      (kvpress: matmul(mean_query, keys) / sqrt(d) + einsum(keys, cov, keys) / d / 2; softmax).
 *   5. a_g[j] = (1/G) sum_{h in g} a_h[j]    (kvpress: scores.view(..., groups, q_len).mean(dim=2):
 *      per query head statistics and softmax, then the mean over the group).
 *   6. score[g][j] = (a_g[j] + eps) * ||v_j||_2   (kvpress use_vnorm: (scores + epsilon) * values.norm).
 *   7. sink slots (pos < s) score max + 1 over the kv-head (kvpress pads them with scores.max() + 1;
 *      here KEEPS_SINKS protects them anyway).
 * Statistics, rotations and scores are double; the stored score is a float.
 *
 * Selection (evict.c): RK_POLICY_KEEPS_SINKS (the first n_sink positions, counted in the budget like
 * kvpress's padded sinks); no KEEPS_WINDOW / KEEPS_LAST (ScorerPress protects no window).
 *
 * Deviations required by our buffers (1, 2, 4, 5 reproduced by tests/policy_ref_new.py, 3 tested there):
 *   1. Query set. kvpress takes the statistics of every query of the compressed prefill but the first
 *      n_sink; we only have the ring of the last w evaluated tokens, so the statistics come from those
 *      (minus any at a position < n_sink). With w >= the prompt length the two sets are the same,
 *      i.e. exactly kvpress's estimator (window up to 4096). If every window query is a sink
 *      position (a prompt of <= n_sink tokens, where kvpress asserts), all window queries are used.
 *   2. Pre-RoPE queries are recovered by un-rotating the ring's post-RoPE queries (step 1) instead of
 *      recomputing them from hidden states; equal up to float32 rounding. Under positions=shift the
 *      ring's queries and win_pos are re-numbered together (evict.c), so the un-rotation stays right.
 *   3. RoPE layout: GGUF rotates adjacent pairs (2i, 2i+1) where HF rotates (i, i + d/2); the converter
 *      permutes the Q/K rows, so kvpress's Rbar in HF layout is our Rbar up to that permutation and
 *      every dot product above is unchanged. NEOX architectures (qwen2, qwen3, gemma3) keep HF's
 *      (i, i + n_rot/2) pairs, and so does the rotation here for them.
 *   4. Future positions start after the newest evaluated token (= q_len at a prefill compression,
 *      the next position under the streaming schedule, where kvpress has no equivalent: each
 *      streaming eviction re-estimates from the current ring).
 *   5. Per-(layer, kv-head) buffers: after an earlier compression the kv-heads of a layer hold
 *      different slots; the softmax of step 4 runs over the non-sink slots of that head's buffer.
 *      Sinks are positions < n_sink (kvpress: the first n_sink cache slots, the same at prefill).
 *   6. kvpress computes in the model dtype (often bf16); we use double, so near ties may differ.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "policy.h"
#include "session.h"

/* the declared parameters, with kvpress ExpectedAttentionPress's defaults */
typedef struct {
    int32_t n_future_positions, use_covariance, use_vnorm;
    float   epsilon;
} ea_cfg;

static const rk_param_def params[] = {
    RK_PARAM_INT(ea_cfg, n_future_positions, 512, 1, 1048576, "future positions the RoPE rotation is averaged over"),
    RK_PARAM_INT(ea_cfg, use_covariance, 1, 0, 1, "1: add the queries' covariance term to the expected logits"),
    RK_PARAM_INT(ea_cfg, use_vnorm, 1, 0, 1, "1: multiply the expected attention by the value norm"),
    RK_PARAM_FLOAT(ea_cfg, epsilon, 0.0, 0.0, 0, RK_INF, 0, "added to the expected attention before the value norm"),
};

typedef struct {
    int32_t n_future, use_covariance, use_vnorm;
    double  epsilon;
    int32_t n_sink;
} ea_params;

typedef struct {
    double *mu, *cov, *q, *cbar, *sbar, *acc, *z;
    double *cov_t, *t; /* the covariance transposed, and k's products with its rows */
    float  *cs;  /* [n_win][n_rot] the forward's cos/sin of each window query */
} ea_scratch;

/* y = R x for the pair rotation (c_i, s_i) of the first n_rot dims (identity after), in place;
 * x[k * stride] is element k. sign = -1 applies R^T. */
static void rotate_pairs(double *x, size_t stride, int32_t n_rot, int neox, const double *c, const double *s,
                         double sign) {
    for (int32_t i = 0; i < n_rot / 2; i++) { /* pair i: (2i, 2i+1), or NEOX (i, i + n_rot/2) */
        double *a = x + (size_t)(neox ? i : 2 * i) * stride, *b = x + (size_t)(neox ? i + n_rot / 2 : 2 * i + 1) * stride;
        const double x0 = *a, x1 = *b, si = sign * s[i];
        *a = c[i] * x0 - si * x1;
        *b = si * x0 + c[i] * x1;
    }
}

/* step 3: cbar_i, sbar_i = the mean cos / sin of pair i over positions p0 .. p0 + n_future - 1 */
static void avg_rope(const rk_model *m, int32_t p0, int32_t n_future, float *cs, double *cbar, double *sbar) {
    const int32_t np = m->n_rot / 2;
    for (int32_t i = 0; i < np; i++) cbar[i] = sbar[i] = 0.0;
    for (int32_t t = 0; t < n_future; t++) {
        rk_rope_angles(cs, p0 + t, m->n_rot, m->rope_base, m->rope_freq_scale, m->rope_freqs);
        for (int32_t i = 0; i < np; i++) cbar[i] += cs[2 * i], sbar[i] += cs[2 * i + 1];
    }
    for (int32_t i = 0; i < np; i++) cbar[i] /= n_future, sbar[i] /= n_future;
}

/* steps 1-3 for query head h: mu = Rbar mean(q_pre), cov = Rbar Cov(q_pre) Rbar^T over the window
 * queries `use` marks (n_q of them) */
static void query_stats(const rk_policy_view *v, const rk_model *m, const ea_params *ep, int32_t h,
                        const uint8_t *use, int32_t n_q, ea_scratch *w) {
    const int32_t D = v->head_dim, np = m->n_rot / 2;
    double c[512], s[512]; /* n_rot / 2 <= head_dim / 2; checked by the caller */
    memset(w->mu, 0, (size_t)D * sizeof(double));
    for (int32_t i = 0, r = 0; i < v->n_win; i++) {
        if (!use[i]) continue;
        const float *qp = v->win_q + ((size_t)i * v->n_heads + h) * D;
        double *q = w->q + (size_t)r++ * D;
        for (int32_t k = 0; k < D; k++) q[k] = qp[k];
        const float *cs = w->cs + (size_t)i * m->n_rot;
        for (int32_t k = 0; k < np; k++) c[k] = cs[2 * k], s[k] = cs[2 * k + 1];
        rotate_pairs(q, 1, m->n_rot, m->rope_neox, c, s, -1.0); /* un-rotate: q_pre = R(pos)^T q_post */
        for (int32_t k = 0; k < D; k++) w->mu[k] += q[k];
    }
    for (int32_t k = 0; k < D; k++) w->mu[k] /= n_q;
    if (ep->use_covariance) {
        memset(w->cov, 0, (size_t)D * D * sizeof(double));
        for (int32_t r = 0; r < n_q; r++) {
            double *q = w->q + (size_t)r * D;
            for (int32_t k = 0; k < D; k++) q[k] -= w->mu[k];
            for (int32_t a = 0; a < D; a++)
                for (int32_t b = 0; b < D; b++) w->cov[(size_t)a * D + b] += q[a] * q[b];
        }
        for (size_t k = 0; k < (size_t)D * D; k++) w->cov[k] /= n_q;
    }
    /* averaged rotation: mu' = Rbar mu; cov' = Rbar cov Rbar^T (columns, then rows) */
    rotate_pairs(w->mu, 1, m->n_rot, m->rope_neox, w->cbar, w->sbar, 1.0);
    if (ep->use_covariance) {
        for (int32_t col = 0; col < D; col++)
            rotate_pairs(w->cov + col, (size_t)D, m->n_rot, m->rope_neox, w->cbar, w->sbar, 1.0);
        for (int32_t row = 0; row < D; row++)
            rotate_pairs(w->cov + (size_t)row * D, 1, m->n_rot, m->rope_neox, w->cbar, w->sbar, 1.0);
    }
}

/* steps 4-5 for query head h of kv-head g: acc[j] += softmax_j(z_h) / G over the non-sink slots */
static void add_expected_attention(const rk_policy_view *v, const ea_params *ep, int32_t g, ea_scratch *w) {
    const int32_t D = v->head_dim, n = v->n_used[g];
    const int32_t *pos = v->pos + (size_t)g * v->cap;
    const float *K = v->k + (size_t)g * v->cap * D;
    const double inv_sqrt_d = 1.0 / sqrt((double)D);
    double mx = -INFINITY;
    /* t_a = sum_b cov[a][b] k[b] summed b by b for all a at once: the D sums are independent chains
     * (one chain per a, as written first, made this policy's scoring latency-bound), same bits */
    if (ep->use_covariance)
        for (int32_t a = 0; a < D; a++)
            for (int32_t b = 0; b < D; b++) w->cov_t[(size_t)b * D + a] = w->cov[(size_t)a * D + b];
    for (int32_t sl = 0; sl < n; sl++) {
        if (pos[sl] < ep->n_sink) continue;
        const float *k = K + (size_t)sl * D;
        double dot = 0.0;
        for (int32_t a = 0; a < D; a++) dot += w->mu[a] * k[a];
        double z = dot * inv_sqrt_d;
        if (ep->use_covariance) {
            double *t = w->t, quad = 0.0;
            for (int32_t a = 0; a < D; a++) t[a] = 0.0;
            for (int32_t b = 0; b < D; b++) {
                const double kb = k[b], *col = w->cov_t + (size_t)b * D;
                for (int32_t a = 0; a < D; a++) t[a] += col[a] * kb;
            }
            for (int32_t a = 0; a < D; a++) quad += k[a] * t[a];
            z += quad / D / 2.0;
        }
        w->z[sl] = z;
        if (z > mx) mx = z;
    }
    double sum = 0.0;
    for (int32_t sl = 0; sl < n; sl++)
        if (pos[sl] >= ep->n_sink) sum += (w->z[sl] = exp(w->z[sl] - mx));
    for (int32_t sl = 0; sl < n; sl++)
        if (pos[sl] >= ep->n_sink) w->acc[sl] += w->z[sl] / sum / v->group;
}

/* steps 6-7 */
static void finish_scores(const rk_policy_view *v, const ea_params *ep, int32_t g, const double *acc, float *out) {
    const int32_t D = v->head_dim, n = v->n_used[g];
    const int32_t *pos = v->pos + (size_t)g * v->cap;
    const float *V = v->v + (size_t)g * v->cap * D;
    double mx = -INFINITY;
    for (int32_t sl = 0; sl < n; sl++) {
        if (pos[sl] < ep->n_sink) continue;
        double sc = acc[sl];
        if (ep->use_vnorm) {
            double ss = 0.0;
            for (int32_t a = 0; a < D; a++) ss += (double)V[(size_t)sl * D + a] * V[(size_t)sl * D + a];
            sc = (sc + ep->epsilon) * sqrt(ss);
        }
        out[sl] = (float)sc;
        if (sc > mx) mx = sc;
    }
    for (int32_t sl = 0; sl < n; sl++)
        if (pos[sl] < ep->n_sink) out[sl] = isfinite(mx) ? (float)(mx + 1.0) : 0.0f;
}

static rk_status score(const rk_policy_view *v, float *scores) {
    const rk_model *m = v->model;
    const ea_cfg *c = v->cfg;
    const ea_params ep = {c->n_future_positions, c->use_covariance, c->use_vnorm, c->epsilon, v->sh->n_sink};
    const int32_t D = v->head_dim;
    if (v->n_win < 1)
        return rk_fail(RK_ERR_ARG, "expected_attention: no observation queries (evaluate some tokens first)");
    if (m->n_rot > D || m->n_rot > 1024)
        return rk_fail(RK_ERR_ARG, "expected_attention: n_rot %d above head_dim %d", m->n_rot, D);
    uint8_t use[4096]; /* n_win <= MAX_WINDOW (evict.c) */
    if (v->n_win > (int32_t)sizeof use)
        return rk_fail(RK_ERR_ARG, "expected_attention: %d observation queries, at most %d", v->n_win,
                       (int)sizeof use);
    /* step 1: the window queries after the sinks; all of them if none is (deviation 1) */
    int32_t n_q = 0;
    for (int32_t i = 0; i < v->n_win; i++) n_q += (use[i] = v->win_pos[i] >= ep.n_sink);
    if (n_q == 0) {
        memset(use, 1, (size_t)v->n_win);
        n_q = v->n_win;
    }
    ea_scratch w = {0};
    w.mu = malloc((size_t)D * sizeof(double));
    w.cov = malloc((size_t)D * D * sizeof(double));
    w.q = malloc((size_t)n_q * D * sizeof(double));
    w.cbar = malloc((size_t)(m->n_rot / 2 + 1) * sizeof(double));
    w.sbar = malloc((size_t)(m->n_rot / 2 + 1) * sizeof(double));
    w.acc = malloc((size_t)v->cap * sizeof(double));
    w.z = malloc((size_t)v->cap * sizeof(double));
    w.cov_t = malloc((size_t)D * D * sizeof(double));
    w.t = malloc((size_t)D * sizeof(double));
    w.cs = malloc(((size_t)v->n_win + 1) * (m->n_rot + 1) * sizeof(float));
    rk_status st = RK_OK;
    if (!w.mu || !w.cov || !w.q || !w.cbar || !w.sbar || !w.acc || !w.z || !w.cs || !w.cov_t || !w.t) {
        st = rk_fail(RK_ERR_OOM, "expected_attention: cannot allocate scoring scratch");
        goto done;
    }
    for (int32_t i = 0; i < v->n_win; i++)
        rk_rope_angles(w.cs + (size_t)i * m->n_rot, v->win_pos[i], m->n_rot, m->rope_base, m->rope_freq_scale,
                       m->rope_freqs);
    /* step 3's Rbar is the same for every head; w.cs row n_win is its scratch */
    avg_rope(m, v->win_pos[v->n_win - 1] + 1, ep.n_future, w.cs + (size_t)v->n_win * m->n_rot, w.cbar, w.sbar);
    for (int32_t g = 0; g < v->n_kv_heads; g++) {
        for (int32_t sl = 0; sl < v->n_used[g]; sl++) w.acc[sl] = 0.0;
        for (int32_t h = g * v->group; h < (g + 1) * v->group; h++) {
            query_stats(v, m, &ep, h, use, n_q, &w);
            add_expected_attention(v, &ep, g, &w);
        }
        finish_scores(v, &ep, g, w.acc, scores + (size_t)g * v->cap);
    }
done:
    free(w.mu); free(w.cov); free(w.q); free(w.cbar); free(w.sbar); free(w.acc); free(w.z); free(w.cs);
    free(w.cov_t); free(w.t);
    return st;
}

const rk_policy_i rk_policy_expected_attention = {
    .name = "expected_attention",
    .help = "highest attention expected from future queries (window query statistics, averaged RoPE) "
            "times the value norm (Expected Attention)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_SINKS,
    .needs = RK_NEED_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(ea_cfg),
    .score = score,
};
