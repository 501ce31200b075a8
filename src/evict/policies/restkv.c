/*
 * restkv.c: ReST-KV (an-yongqi/rest-kv, RestKVCluster.update_kv; docs/eviction-policies.md b.4-b.8,
 * b.11-b.14), GQA-native, with the reference code's ablation flags as choice parameters. Each default is
 * the published setting (metric_mode='after', use_wo, use_ema, pooling='adaptive', tau 1), so the
 * defaults are the paper's method:
 *   restkv_distance   wo (use_wo=True) | value (use_wo=False) | none (the attention odds alone)
 *   restkv_smoothing  ema (use_ema) | mean | inv-ema | last (b.6, whose `none` is `last` here)
 *   restkv_pooling    adaptive | avgpool | maxpool | none (b.7)
 *   restkv_metric     after | before (b.8)
 *
 * Per layer, per query head h (kv-head g = h / group), with w = n_win observation queries (the last
 * evaluated tokens, oldest first; w < window early on) and A[i][slot] = v->win_attn (softmax of query i
 * over the slots of g it may see, i.e. pos <= win_pos[i]; 0 elsewhere):
 *   1. query weights, oldest -> newest (a = ema_alpha; each set sums to 1):
 *        ema      om_0 = (1-a)^(w-1), om_i = a (1-a)^(w-1-i) for i >= 1 (the newest weighs most)
 *        inv-ema  the EMA run newest -> oldest: om_i = ema's om_{w-1-i} (the oldest weighs most)
 *        mean     om_i = 1/w
 *        last     om_{w-1} = 1, the others 0
 *   2. prefix = slots with pos < win_pos[0] (older than every observation query).
 *      abar_j = sum_i om_i A[i][j] for prefix slots j.
 *   3. obar = sum_{prefix j} abar_j v_j (window tokens excluded, not renormalised: the code's 'after').
 *   4. r_j = abar_j / (1 - abar_j) * dist(obar - v_j), abar_j >= 1 giving +inf (kept), with dist(x) =
 *        wo     ||W_o^(h) x||, taken as sqrt(x^T G_h x) with the Gram matrix G_h = W_o^(h)T W_o^(h)
 *               (rk_model.wo_gram; b.14), computed once per model when a policy that uses it is set
 *               (prepare hook: only for wo; rk_restkv_prepare -> rk_wo_gram_prepare, src/model/gram.c);
 *               G_h x is a float product
 *        value  ||x|| (double)
 *        none   1, so r_j is the odds abar_j / (1 - abar_j) and obar is not needed
 *      abar, obar, r are double.
 *      restkv_metric=before (b.8) replaces 2-4: per query, r_ij = A[i][j]/(1 - A[i][j]) dist(o_i - v_j)
 *      with o_i = sum over ALL slots of A[i][slot] v_slot (query i's full output, window included), then
 *      r_j = sum_i om_i r_ij; a term whose om_i or A[i][j] is 0 is 0 even where the other factor is +inf.
 *      The code's chunking, tau and use_norm are not modelled (tau 1, no norm).
 *   5. spatial pooling of the prefix scores in slot order (restkv_pool.c), into rt:
 *      adaptive (b.7): R = budget - w, h2 = floor(w / 2); for i < h2, F_i / S_i = the R slots with the
 *      largest A[i] / A[i + h2] over ALL the head's slots (prefix and window); t = mean over i < h2 and
 *      ranks r < R of (F_i[r] - S_i[r]) = sum_i (sum F_i - sum S_i) / (h2 R), so only the top-R SETS
 *      matter, never their order. Unit: slot index (= position until something was evicted; slots are
 *      what the pool slides over). Ties in the argsort are broken by slot: the sort key is (A, slot), so
 *      among equal weights (e.g. the zeros of slots a query may not see) the newer slot ranks higher.
 *      t = 0 when R < 1 or h2 < 1 (nothing to pair). R is clamped to the slot count.
 *      k_h = max(k0, 2 floor(|t|/beta) + 1); s_h = floor(t/beta) if t > 0, else floor(t/beta) + 1
 *      (so t == 0 gives s_h = +1, the code's quirk);
 *      rt_j = (1/k_h) sum_{u = -floor(k_h/2)}^{floor(k_h/2)} r[clamp(j + s_h + u, 0, P-1)]
 *      (replicate padding; j indexes the P prefix slots in slot order).
 *      avgpool: rt_j = (1/k0) sum_{u = -floor(k0/2)}^{floor(k0/2)} r[j + u], r = 0 outside the prefix
 *      (zero padding, divisor always k0: avg_pool1d with count_include_pad); maxpool: the max over the
 *      same window (a zero pad never wins: r >= 0); none: rt_j = r_j. k0 = kernel. A +inf in the
 *      window gives +inf.
 *   6. GQA (b.11 guess): the kv-head's score is the mean of rt over the group's query heads;
 *      one keep-set per kv-head, no expanded KV.
 *   7. window tokens (pos >= win_pos[0]): the shared code protects the newest min(window, floor(c/2))
 *      of a budget c, so below c = 2 w some window tokens compete with the prefix. Their score: the
 *      variant's own formula with the query weights restricted to the queries that see the token
 *      (win_pos[i] >= pos_j) and renormalised over them: after: abar_j = sum_{those i} om_i A[i][j] /
 *      sum_{those i} om_i, r_j = abar_j/(1-abar_j) dist(obar - v_j) with the same prefix obar as step 3;
 *      before: r_j = sum_{those i} om_i r_ij / sum_{those i} om_i. Never pooled (every pool is defined
 *      on the prefix axis), then the group mean of step 6. A slot that no query of positive weight
 *      sees scores +inf (only inv-ema with ema_alpha 1 can do that: it weighs the oldest query alone;
 *      the newest query sees every slot).
 *   8. RK_POLICY_KEEPS_WINDOW (shared code keeps the newest min(window, c/2) tokens); no sinks.
 *
 * Decode-time variant (b.12; the paper has none): under the streaming schedule the shared code calls
 * the same scoring whenever a buffer passes budget + slack, with the buffered post-RoPE queries of the
 * last w evaluated tokens (generated or streamed) as the observation window and the cache's current
 * slots as keys; "prefix" is then every cached slot older than the oldest of those queries. Nothing
 * else differs, so the prefill compressor and the streaming one are one code path. (With positions
 * "shift" the buffered query positions are not re-numbered by the shift, so the window's visibility
 * and the prefix boundary are only right when the window's queries all came after the last shift,
 * i.e. slack + 1 >= window.)
 *
 * Implementation: budget = v->budget (R above uses it, as the code uses max_capacity_prompt); slots
 * of a buffer are in position order (appends are newest, compaction keeps order), so the prefix is
 * the first P slots. Query heads run in parallel on the session's pool; the top-R sets come from a
 * quickselect on (A, slot); the pools are direct sums over the clamped window (prefix sums, with a
 * count of infinite scores, only for kernels over 1025) and a running max. rk_restkv_scores is the
 * same scorer for AdaKV's ada_base = "restkv", whose table declares none of the choices: it scores with
 * their defaults (index 0 of each, the zeroes of its calloc'd settings).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "gram.h"
#include "policy.h"
#include "restkv_pool.h"
#include "session.h"

/* the choices, in their tables' order; 0 is the published method (AdaKV relies on it) */
enum { DIST_WO, DIST_VALUE, DIST_NONE };
enum { SMOOTH_EMA, SMOOTH_MEAN, SMOOTH_INV_EMA, SMOOTH_LAST };
enum { POOL_ADAPTIVE, POOL_AVG, POOL_MAX, POOL_NONE };
enum { METRIC_AFTER, METRIC_BEFORE };

typedef struct {
    const rk_policy_view *v;
    const rk_restkv_cfg *c;
    const float *gram;    /* this layer's [n_heads][d][d] (distance wo only) */
    const double *om;     /* [n_win] query weights */
    double *rt;           /* [n_heads][cap] per-head scores (pooled on the prefix) */
    double *scratch;      /* per thread: [cap] r, [n_win][d] outputs (obar alone for 'after'), 2 d floats x, y */
    char *pool_scratch;   /* per thread: pool_stride bytes for restkv_pool.c */
    size_t stride, pool_stride;
} rk_job;

/* one query head being scored */
typedef struct {
    const float *A, *V, *G;   /* its window attention, its kv-head's values, its Gram matrix (or NULL) */
    const int32_t *pos;
    int32_t n, P;             /* slots, prefix slots */
    double *r, *o, *out;      /* prefix scores, outputs, scores of the head (rt) */
    float *x, *y;
} head_t;

/* sqrt(x^T G x), G symmetric d x d: y = G x as float axpys (vectorisable), then x . y in double */
static double gram_norm(const float *G, const float *x, float *y, int d) {
    for (int b = 0; b < d; b++) y[b] = 0;
    for (int a = 0; a < d; a++) {
        const float *ga = G + (size_t)a * d, xa = x[a];
        for (int b = 0; b < d; b++) y[b] += ga[b] * xa;
    }
    double q = 0;
    for (int b = 0; b < d; b++) q += (double)x[b] * y[b];
    return q > 0 ? sqrt(q) : 0.0;
}

/* a / (1 - a) * dist(o - v_j) (+inf when a >= 1) */
static double odds_dist(const rk_job *j, const head_t *e, double a, const double *o, const float *vj, int d) {
    if (!(a < 1.0)) return INFINITY;
    if (j->c->restkv_distance == DIST_NONE) return a / (1.0 - a);
    if (j->c->restkv_distance == DIST_VALUE) {
        double q = 0;
        for (int k = 0; k < d; k++) q += (o[k] - vj[k]) * (o[k] - vj[k]);
        return a / (1.0 - a) * sqrt(q);
    }
    for (int k = 0; k < d; k++) e->x[k] = (float)(o[k] - (double)vj[k]);
    return a / (1.0 - a) * gram_norm(e->G, e->x, e->y, d);
}

/* 2-4 and 7 as published: the smoothed attention against the one prefix output obar */
static void scores_after(const rk_job *j, const head_t *e) {
    const rk_policy_view *v = j->v;
    const int D = v->head_dim, W = v->n_win, cap = v->cap, need_obar = j->c->restkv_distance != DIST_NONE;
    for (int k = 0; k < D; k++) e->o[k] = 0;
    for (int32_t sl = 0; sl < e->P; sl++) {
        double a = 0;
        for (int i = 0; i < W; i++) a += j->om[i] * e->A[(size_t)i * cap + sl];
        e->out[sl] = a;
        for (int k = 0; need_obar && k < D; k++) e->o[k] += a * e->V[(size_t)sl * D + k];
    }
    for (int32_t sl = 0; sl < e->P; sl++) e->r[sl] = odds_dist(j, e, e->out[sl], e->o, e->V + (size_t)sl * D, D);
    for (int32_t sl = e->P; sl < e->n; sl++) {
        double a = 0, wsum = 0;
        for (int i = 0; i < W; i++)
            if (v->win_pos[i] >= e->pos[sl]) {
                a += j->om[i] * e->A[(size_t)i * cap + sl];
                wsum += j->om[i];
            }
        e->out[sl] = wsum > 0 ? odds_dist(j, e, a / wsum, e->o, e->V + (size_t)sl * D, D) : INFINITY;
    }
}

/* b.8 'before': each query's removal cost against its own full output, then the weighted sum of step 1
 * (renormalised over the queries that see a window token, as in 'after') */
static void scores_before(const rk_job *j, const head_t *e) {
    const rk_policy_view *v = j->v;
    const int D = v->head_dim, W = v->n_win, cap = v->cap;
    for (int i = 0; i < W && j->c->restkv_distance != DIST_NONE; i++) { /* o_i, window included */
        double *oi = e->o + (size_t)i * D;
        for (int k = 0; k < D; k++) oi[k] = 0;
        for (int32_t sl = 0; sl < e->n; sl++)
            for (int k = 0; k < D; k++) oi[k] += e->A[(size_t)i * cap + sl] * (double)e->V[(size_t)sl * D + k];
    }
    for (int32_t sl = 0; sl < e->n; sl++) {
        double s = 0, wsum = 0;
        for (int i = 0; i < W; i++) {
            const double a = e->A[(size_t)i * cap + sl];
            if (v->win_pos[i] < e->pos[sl] || !(j->om[i] > 0)) continue;
            wsum += j->om[i];
            if (a > 0) s += j->om[i] * odds_dist(j, e, a, e->o + (size_t)i * D, e->V + (size_t)sl * D, D);
        }
        if (sl < e->P) e->r[sl] = s;
        else e->out[sl] = wsum > 0 ? s / wsum : INFINITY;
    }
}

/* 5. the prefix scores r, pooled into out */
static void pool(const rk_job *j, int32_t h, const head_t *e, void *scratch) {
    const rk_restkv_cfg *c = j->c;
    if (c->restkv_pooling == POOL_ADAPTIVE) rk_restkv_pool_adaptive(j->v, h, c, e->r, e->P, scratch, e->out);
    else if (c->restkv_pooling == POOL_NONE) memcpy(e->out, e->r, (size_t)e->P * sizeof(double));
    else rk_restkv_pool_fixed(e->r, e->P, c->kernel, c->restkv_pooling == POOL_MAX, scratch, e->out);
}

static void head_task(void *ctx, int ith, int nth) {
    rk_job *j = ctx;
    const rk_policy_view *v = j->v;
    const int D = v->head_dim, W = v->n_win, cap = v->cap;
    head_t e;
    e.r = j->scratch + (size_t)ith * j->stride;
    e.o = e.r + cap;
    e.x = (float *)(e.o + (size_t)W * D);
    e.y = e.x + D;
    void *ps = j->pool_scratch + (size_t)ith * j->pool_stride;
    long hb, he;
    rk_split_range(v->n_heads, ith, nth, 1, &hb, &he);
    for (long h = hb; h < he; h++) {
        const int g = (int)h / v->group;
        e.n = v->n_used[g];
        e.pos = v->pos + (size_t)g * cap;
        e.V = v->v + (size_t)g * cap * D;
        e.G = j->gram ? j->gram + (size_t)h * D * D : NULL;
        e.A = v->win_attn + (size_t)h * W * cap;
        e.out = j->rt + (size_t)h * cap;
        e.P = 0; /* prefix slots: pos < win_pos[0]; slots are in position order */
        while (e.P < e.n && e.pos[e.P] < v->win_pos[0]) e.P++;
        if (j->c->restkv_metric == METRIC_BEFORE) scores_before(j, &e);
        else scores_after(j, &e);
        if (e.P > 0) pool(j, (int32_t)h, &e, ps);
    }
}

/* 1. the weight of each window query, oldest first */
static void query_weights(const rk_restkv_cfg *c, int W, double *om) {
    const double a = c->ema_alpha;
    for (int i = 0; i < W; i++) {
        const int e = c->restkv_smoothing == SMOOTH_INV_EMA ? W - 1 - i : i;
        if (c->restkv_smoothing == SMOOTH_MEAN) om[i] = 1.0 / W;
        else if (c->restkv_smoothing == SMOOTH_LAST) om[i] = i == W - 1;
        else om[i] = (e == 0 ? 1.0 : a) * pow(1.0 - a, W - 1 - e);
    }
}

static rk_status restkv_scores(const rk_policy_view *v, const rk_restkv_cfg *c, float *scores) {
    if (v->n_win < 1 || !v->win_attn || !v->win_pos)
        return rk_fail(RK_ERR_ARG, "restkv: no observation queries (evaluate some tokens first)");
    const rk_model *m = v->model;
    const int wo = c->restkv_distance == DIST_WO;
    if (wo && !m->wo_gram) /* set by the prepare hook when the policy was set */
        return rk_fail(RK_ERR_INTERNAL, "restkv: the model has no W_o Gram matrices");
    const int nth = v->be->n_threads(v->bctx), D = v->head_dim, W = v->n_win;
    const size_t cap = (size_t)v->cap, H = (size_t)v->n_heads;
    rk_job j = {v, c, wo ? m->wo_gram + (size_t)v->il * H * D * D : NULL, NULL, NULL, NULL, NULL,
                cap + (size_t)(W + 1) * D, rk_restkv_pool_scratch(v->cap)};
    double *om = malloc((size_t)W * sizeof(double));
    j.rt = malloc(H * cap * sizeof(double));
    j.scratch = malloc((size_t)nth * j.stride * sizeof(double));
    j.pool_scratch = malloc((size_t)nth * j.pool_stride);
    if (!om || !j.rt || !j.scratch || !j.pool_scratch) {
        free(om); free(j.rt); free(j.scratch); free(j.pool_scratch);
        return rk_fail(RK_ERR_OOM, "restkv: cannot allocate scoring buffers");
    }
    query_weights(c, W, om);
    j.om = om;
    v->be->parallel(v->bctx, head_task, &j);
    /* 6. mean over the query heads of each kv-head */
    for (int32_t g = 0; g < v->n_kv_heads; g++)
        for (int32_t sl = 0; sl < v->n_used[g]; sl++) {
            double s = 0;
            for (int32_t h = g * v->group; h < (g + 1) * v->group; h++) s += j.rt[(size_t)h * cap + sl];
            scores[(size_t)g * cap + sl] = (float)(s / v->group);
        }
    free(om); free(j.rt); free(j.scratch); free(j.pool_scratch);
    return RK_OK;
}

rk_status rk_restkv_scores(const rk_policy_view *v, const rk_restkv_cfg *c, float *scores) {
    return restkv_scores(v, c, scores);
}

static rk_status score(const rk_policy_view *v, float *scores) { return restkv_scores(v, v->cfg, scores); }

/* the W_o Gram matrices, computed once per model on first need (src/model/gram.c) */
rk_status rk_restkv_prepare(rk_model *m, const void *cfg) {
    (void)cfg;
    return rk_wo_gram_prepare(m);
}

/* only the output-space distance reads the Gram matrices */
static rk_status prepare(rk_model *m, const void *cfg) {
    return ((const rk_restkv_cfg *)cfg)->restkv_distance == DIST_WO ? rk_restkv_prepare(m, cfg) : RK_OK;
}

static const rk_param_def params[] = {
    RK_PARAM_INT(rk_restkv_cfg, kernel, 5, 1, 2147483647,
                 "base kernel k0 of the adaptive pooling, the kernel of avgpool/maxpool (odd)"),
    RK_PARAM_FLOAT(rk_restkv_cfg, ema_alpha, 0.3, 0.0, 1, 1.0, 0,
                   "EMA coefficient over the window queries (smoothing ema, inv-ema)"),
    RK_PARAM_FLOAT(rk_restkv_cfg, aws_beta, 2000.0, 0.0, 1, RK_INF, 0, "adaptive pooling scale (pooling adaptive)"),
    RK_PARAM_CHOICE(rk_restkv_cfg, restkv_distance, DIST_WO, 3, "wo|value|none",
                    "reconstruction distance: ||W_o^(h)(obar - v_j)|| (wo), ||obar - v_j|| (value), "
                    "none (attention odds alone)"),
    RK_PARAM_CHOICE(rk_restkv_cfg, restkv_smoothing, SMOOTH_EMA, 4, "ema|mean|inv-ema|last",
                    "weights of the window queries: EMA (newest most), mean, reversed EMA (oldest most), last only"),
    RK_PARAM_CHOICE(rk_restkv_cfg, restkv_pooling, POOL_ADAPTIVE, 4, "adaptive|avgpool|maxpool|none",
                    "pooling of the prefix scores: adaptive kernel and shift, average or max of width kernel "
                    "(zero padded), none"),
    RK_PARAM_CHOICE(rk_restkv_cfg, restkv_metric, METRIC_AFTER, 2, "after|before",
                    "after: reconstruction of the smoothed attention; before: per window query against its "
                    "full output, then smoothed"),
};

static rk_status validate(const void *cfg) { return rk_check_kernel("restkv", ((const rk_restkv_cfg *)cfg)->kernel); }

const rk_policy_i rk_policy_restkv = {
    .name = "restkv",
    .help = "ReST-KV: EMA of window attention times output-space distance, adaptive pooling (restkv_*: ablations)",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_WINDOW,
    .needs = RK_NEED_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(rk_restkv_cfg),
    .validate = validate,
    .prepare = prepare,
    .score = score,
};
