/*
 * restkv.c: ReST-KV (an-yongqi/rest-kv, RestKVCluster.update_kv with metric_mode='after', use_wo,
 * use_ema, pooling='adaptive', tau 1; docs/eviction-policies.md b.4-b.7, b.11-b.14), GQA-native.
 *
 * Per layer, per query head h (kv-head g = h / group), with w = n_win observation queries (the last
 * evaluated tokens, oldest first; w < window early on) and A[i][slot] = v->win_attn (softmax of query i
 * over the slots of g it may see, i.e. pos <= win_pos[i]; 0 elsewhere):
 *   1. EMA weights, oldest -> newest: om_0 = (1-a)^(w-1), om_i = a (1-a)^(w-1-i) for i >= 1
 *      (a = ema_alpha; they sum to 1).
 *   2. prefix = slots with pos < win_pos[0] (older than every observation query).
 *      abar_j = sum_i om_i A[i][j] for prefix slots j.
 *   3. obar = sum_{prefix j} abar_j v_j (window tokens excluded, not renormalised: the code's 'after').
 *   4. r_j = abar_j / (1 - abar_j) * ||W_o^(h) (obar - v_j)||, the norm taken as sqrt(x^T G_h x) with the
 *      Gram matrix G_h = W_o^(h)T W_o^(h) (rk_model.wo_gram; b.14), computed once per model when a policy
 *      that uses it is set (prepare hook: rk_restkv_prepare -> rk_wo_gram_prepare, src/model/gram.c).
 *      abar_j >= 1 gives +inf (kept). abar, obar, r are double; G_h x is a float product.
 *   5. adaptive spatial pooling (b.7) over the prefix scores in slot order:
 *      R = budget - w, h2 = floor(w / 2); for i < h2, F_i / S_i = the R slots with the largest A[i] /
 *      A[i + h2] over ALL the head's slots (prefix and window); t = mean over i < h2 and ranks r < R of
 *      (F_i[r] - S_i[r]) = sum_i (sum F_i - sum S_i) / (h2 R), so only the top-R SETS matter, never their
 *      order. Unit: slot index (= position until something was evicted; slots are what the pool
 *      slides over). Ties in the argsort are broken by slot: the sort key is (A, slot), so among equal
 *      weights (e.g. the zeros of slots a query may not see) the newer slot ranks higher.
 *      t = 0 when R < 1 or h2 < 1 (nothing to pair). R is clamped to the slot count.
 *      k_h = max(k0, 2 floor(|t|/beta) + 1); s_h = floor(t/beta) if t > 0, else floor(t/beta) + 1
 *      (so t == 0 gives s_h = +1, the code's quirk);
 *      rt_j = (1/k_h) sum_{u = -floor(k_h/2)}^{floor(k_h/2)} r[clamp(j + s_h + u, 0, P-1)]
 *      (replicate padding; j indexes the P prefix slots in slot order).
 *   6. GQA (b.11 guess): the kv-head's score is the mean of rt over the group's query heads;
 *      one keep-set per kv-head, no expanded KV.
 *   7. window tokens (pos >= win_pos[0]): the shared code protects the newest min(window, floor(c/2))
 *      of a budget c, so below c = 2 w some window tokens compete with the prefix. Their score: the
 *      same formula restricted to the queries that see the token: abar_j = sum_{i: win_pos[i] >= pos_j}
 *      om_i A[i][j] / sum_{those i} om_i (EMA weights renormalised over those queries), r_j =
 *      abar_j/(1-abar_j) ||W_o^(h)(obar - v_j)|| with the same prefix obar as step 3, no pooling (the pool
 *      is defined on the prefix axis), then the group mean of step 6. A slot no query sees (cannot
 *      happen: the queries are the newest tokens) scores +inf.
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
 * quickselect on (A, slot); the pool is a direct sum over the clamped window (prefix sums, with a
 * count of infinite scores, only for kernels over 1025). rk_restkv_scores is the same scorer for
 * AdaKV's ada_base = "restkv".
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "gram.h"
#include "policy.h"
#include "session.h"

typedef struct {
    float   a;
    int32_t slot;
} key_t_;

/* (a, slot) total order: x before y when x ranks higher */
static int higher(key_t_ x, key_t_ y) { return x.a > y.a || (x.a == y.a && x.slot > y.slot); }

/* sum of the slots of the R highest-ranked keys (quickselect; reorders k) */
static int64_t top_r_slot_sum(key_t_ *k, int32_t n, int32_t R) {
    int32_t lo = 0, hi = n - 1, want = R - 1; /* put the R highest in k[0..R) */
    while (lo < hi) {
        const key_t_ pivot = k[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (higher(k[i], pivot)) i++;
            while (higher(pivot, k[j])) j--;
            if (i <= j) {
                const key_t_ t = k[i];
                k[i++] = k[j];
                k[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    int64_t sum = 0;
    for (int32_t i = 0; i < R; i++) sum += k[i].slot;
    return sum;
}

typedef struct {
    const rk_policy_view *v;
    const rk_restkv_cfg *c;
    const float *gram;    /* this layer's [n_heads][d][d] */
    const double *om;     /* [n_win] EMA weights */
    double *rt;           /* [n_heads][cap] per-head scores (pooled on the prefix) */
    double *scratch;      /* per thread: [cap] r, [cap + 1] prefix sums, [d] obar, then 2 d floats x, y */
    int32_t *scratch_i;   /* per thread: [cap + 1] inf counts */
    key_t_ *keys;         /* per thread: [cap] */
    size_t stride, stride_i;
} rk_job;

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

/* abar / (1 - abar) * ||W_o^(h) (obar - v_j)|| (+inf when abar >= 1); x, y: d floats of scratch */
static double odds_norm(double abar, const float *G, const double *obar, const float *vj, float *x, float *y, int d) {
    if (!(abar < 1.0)) return INFINITY;
    for (int k = 0; k < d; k++) x[k] = (float)(obar[k] - (double)vj[k]);
    return abar / (1.0 - abar) * gram_norm(G, x, y, d);
}

static void head_task(void *ctx, int ith, int nth) {
    rk_job *j = ctx;
    const rk_policy_view *v = j->v;
    const int D = v->head_dim, W = v->n_win, cap = v->cap;
    double *r = j->scratch + (size_t)ith * j->stride, *cum = r + cap, *obar = cum + cap + 1;
    float *x = (float *)(obar + D), *y = x + D;
    int32_t *ninf = j->scratch_i + (size_t)ith * j->stride_i;
    key_t_ *keys = j->keys + (size_t)ith * cap;
    long hb, he;
    rk_split_range(v->n_heads, ith, nth, 1, &hb, &he);
    for (long h = hb; h < he; h++) {
        const int g = (int)h / v->group;
        const int32_t n = v->n_used[g], *pos = v->pos + (size_t)g * cap;
        const float *V = v->v + (size_t)g * cap * D, *G = j->gram + (size_t)h * D * D;
        const float *A = v->win_attn + (size_t)h * W * cap;
        double *out = j->rt + (size_t)h * cap;
        int32_t P = 0; /* prefix slots: pos < win_pos[0]; slots are in position order */
        while (P < n && pos[P] < v->win_pos[0]) P++;
        /* 2-3. EMA attention of the prefix and the prefix output */
        for (int k = 0; k < D; k++) obar[k] = 0;
        for (int32_t sl = 0; sl < P; sl++) {
            double a = 0;
            for (int i = 0; i < W; i++) a += j->om[i] * A[(size_t)i * cap + sl];
            out[sl] = a;
            for (int k = 0; k < D; k++) obar[k] += a * V[(size_t)sl * D + k];
        }
        /* 4. output-reconstruction scores of the prefix */
        for (int32_t sl = 0; sl < P; sl++) r[sl] = odds_norm(out[sl], G, obar, V + (size_t)sl * D, x, y, D);
        /* 7. window tokens: EMA renormalised over the queries that see the token, no pooling */
        for (int32_t sl = P; sl < n; sl++) {
            double a = 0, wsum = 0;
            for (int i = 0; i < W; i++)
                if (v->win_pos[i] >= pos[sl]) {
                    a += j->om[i] * A[(size_t)i * cap + sl];
                    wsum += j->om[i];
                }
            out[sl] = wsum > 0 ? odds_norm(a / wsum, G, obar, V + (size_t)sl * D, x, y, D) : INFINITY;
        }
        if (P == 0) continue;
        /* 5. adaptive kernel and shift from the drift of the paired top-R sets */
        const int h2 = W / 2;
        int32_t R = v->budget - W;
        if (R > n) R = n;
        double t = 0;
        if (R >= 1 && h2 >= 1) {
            int64_t diff = 0;
            for (int i = 0; i < h2; i++)
                for (int half = 0; half < 2; half++) {
                    const float *Ai = A + (size_t)(i + half * h2) * cap;
                    for (int32_t sl = 0; sl < n; sl++) keys[sl] = (key_t_){Ai[sl], sl};
                    const int64_t s = top_r_slot_sum(keys, n, R);
                    diff += half ? -s : s;
                }
            t = (double)diff / ((double)h2 * (double)R);
        }
        const double beta = j->c->aws_beta, q = floor(fabs(t) / beta);
        const double half_k = fmax(floor(j->c->kernel / 2), q > 1e15 ? 1e15 : q); /* k = max(k0, 2q + 1) */
        double shift = t > 0 ? floor(t / beta) : floor(t / beta) + 1;
        if (shift > half_k + 1) shift = half_k + 1; /* s lies in [-q, max(q, 1)]; this only bounds absurd beta */
        if (shift < -half_k) shift = -half_k;
        const double k = 2 * half_k + 1;
        /* replicate-padded average over [sl + s - k/2, sl + s + k/2]: copies of r[0] / r[P-1] for the
         * indices outside the prefix, a direct sum inside (prefix sums, with a count of the infinite
         * scores, only for kernels over 1025, where a direct sum would cost P k) */
        const int direct = k <= 1025;
        if (!direct) {
            cum[0] = 0;
            ninf[0] = 0;
            for (int32_t sl = 0; sl < P; sl++) {
                const int inf = isinf(r[sl]);
                cum[sl + 1] = cum[sl] + (inf ? 0.0 : r[sl]);
                ninf[sl + 1] = ninf[sl] + inf;
            }
        }
        for (int32_t sl = 0; sl < P; sl++) {
            const double lo = sl + shift - half_k, hi = sl + shift + half_k;
            const double nlo = lo < 0 ? fmin(-lo, k) : 0;             /* copies of r[0] */
            const double nhi = hi > P - 1 ? fmin(hi - (P - 1), k) : 0; /* copies of r[P-1] */
            const int32_t a = lo < 0 ? 0 : lo > P - 1 ? P : (int32_t)lo;
            const int32_t b = hi > P - 1 ? P - 1 : hi < 0 ? -1 : (int32_t)hi;
            double sum = 0;
            int infs = 0;
            if (nlo > 0) { if (isinf(r[0])) infs = 1; else sum += nlo * r[0]; }
            if (nhi > 0) { if (isinf(r[P - 1])) infs = 1; else sum += nhi * r[P - 1]; }
            if (b >= a && direct) {
                for (int32_t u = a; u <= b; u++) {
                    if (isinf(r[u])) infs = 1;
                    else sum += r[u];
                }
            } else if (b >= a) {
                sum += cum[b + 1] - cum[a];
                if (ninf[b + 1] - ninf[a]) infs = 1;
            }
            out[sl] = infs ? INFINITY : sum / k;
        }
    }
}

static rk_status restkv_scores(const rk_policy_view *v, const rk_restkv_cfg *c, float *scores) {
    if (v->n_win < 1 || !v->win_attn || !v->win_pos)
        return rk_fail(RK_ERR_ARG, "restkv: no observation queries (evaluate some tokens first)");
    const rk_model *m = v->model;
    if (!m->wo_gram) /* set by rk_restkv_prepare when the policy was set */
        return rk_fail(RK_ERR_INTERNAL, "restkv: the model has no W_o Gram matrices");
    const int nth = v->be->n_threads(v->bctx), D = v->head_dim, W = v->n_win;
    const size_t cap = (size_t)v->cap, H = (size_t)v->n_heads;
    rk_job j = {v, c, m->wo_gram + (size_t)v->il * H * D * D, NULL, NULL, NULL, NULL, NULL, 2 * cap + 1 + 2 * (size_t)D,
                cap + 1};
    double *om = malloc((size_t)W * sizeof(double));
    j.rt = malloc(H * cap * sizeof(double));
    j.scratch = malloc((size_t)nth * j.stride * sizeof(double));
    j.scratch_i = malloc((size_t)nth * j.stride_i * sizeof(int32_t));
    j.keys = malloc((size_t)nth * cap * sizeof(key_t_));
    if (!om || !j.rt || !j.scratch || !j.scratch_i || !j.keys) {
        free(om); free(j.rt); free(j.scratch); free(j.scratch_i); free(j.keys);
        return rk_fail(RK_ERR_OOM, "restkv: cannot allocate scoring buffers");
    }
    /* 1. EMA weights over the window queries, oldest first */
    const double a = c->ema_alpha;
    for (int i = 0; i < W; i++) om[i] = (i == 0 ? 1.0 : a) * pow(1.0 - a, W - 1 - i);
    j.om = om;
    v->be->parallel(v->bctx, head_task, &j);
    /* 6. mean over the query heads of each kv-head */
    for (int32_t g = 0; g < v->n_kv_heads; g++)
        for (int32_t sl = 0; sl < v->n_used[g]; sl++) {
            double s = 0;
            for (int32_t h = g * v->group; h < (g + 1) * v->group; h++) s += j.rt[(size_t)h * cap + sl];
            scores[(size_t)g * cap + sl] = (float)(s / v->group);
        }
    free(om); free(j.rt); free(j.scratch); free(j.scratch_i); free(j.keys);
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

static const rk_param_def params[] = {
    RK_PARAM_INT(rk_restkv_cfg, kernel, 5, 1, 2147483647, "base kernel k0 of the adaptive pooling (odd)"),
    RK_PARAM_FLOAT(rk_restkv_cfg, ema_alpha, 0.3, 0.0, 1, 1.0, 0, "EMA coefficient over the window queries"),
    RK_PARAM_FLOAT(rk_restkv_cfg, aws_beta, 2000.0, 0.0, 1, RK_INF, 0, "adaptive pooling scale"),
};

static rk_status validate(const void *cfg) { return rk_check_kernel("restkv", ((const rk_restkv_cfg *)cfg)->kernel); }

const rk_policy_i rk_policy_restkv = {
    .name = "restkv",
    .help = "ReST-KV: EMA of window attention times output-space distance, adaptive pooling",
    .flags = RK_POLICY_EVICTS | RK_POLICY_KEEPS_WINDOW,
    .needs = RK_NEED_WINDOW,
    .params = params,
    .n_params = RK_N_PARAMS(params),
    .cfg_size = sizeof(rk_restkv_cfg),
    .validate = validate,
    .prepare = rk_restkv_prepare,
    .score = score,
};
