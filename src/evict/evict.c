/*
 * evict.c: the shared half of KV eviction. Policies score (src/evict/policies/); this
 * file configures them, gathers the statistics they need, turns scores into
 * keep-sets (sinks, recent window, top-k, per-head budgets) and compacts the
 * per-(layer, kv-head) buffers, optionally re-rotating kept keys (positions=shift).
 *
 * Keep-set rule, per (layer, kv-head) keeping c of its n tokens:
 *   1. protected: the first n_sink positions (policies with keep_sinks), the newest
 *      token (keep_last), and the newest min(window, floor(c/2)) tokens (keep_window).
 *      Capping the window at half the budget is what makes a small budget (8 of 80
 *      LAMBADA tokens at 10%) still choose by score instead of keeping only the newest.
 *      If the protected tokens alone exceed c: sinks first, then the newest.
 *   2. the rest of the budget: the highest scores among the unprotected tokens;
 *      ties go to the newer token (larger position).
 *   3. compaction keeps the surviving slots in their slot order.
 * Under the streaming schedule no head keeps more than n_ctx - slack - 1 tokens (a
 * per-head allocation above that is cut), so the next tokens always have a slot.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "quant.h"
#include "session.h"

#define MAX_WINDOW 4096

rk_evict_params rk_evict_default_params(void) {
    rk_evict_params p;
    memset(&p, 0, sizeof p);
    strcpy(p.policy, "full");
    p.budget = 1.0f;
    p.schedule = RK_SCHEDULE_PREFIX;
    p.positions = RK_POSITIONS_ORIGINAL;
    p.window = 32;
    p.n_sink = 4;
    p.kernel = 5;
    p.slack = 0;
    p.ema_alpha = 0.3f;
    p.aws_beta = 2000.0f;
    p.pyramid_beta = 20.0f;
    p.ada_floor = 0.2f;
    strcpy(p.ada_base, "snapkv");
    p.lacache_span = 16;
    p.lacache_overlap = 0;
    return p;
}

/* ---- budget ---- */

static int budget_is_fraction(const rk_evict_params *p) { return p->budget <= 1.0f; }

/* tokens to keep per head when n are cached (prefix) or for a cache of n_ctx slots (streaming) */
static int32_t budget_tokens(const rk_evict_params *p, int32_t n) {
    if (!budget_is_fraction(p)) return (int32_t)p->budget;
    int32_t c = (int32_t)((double)p->budget * n + 1e-4); /* floor, as kvpress's int(k_len * (1 - ratio)) */
    return c < 1 ? 1 : c;
}

static int evicting(const rk_session *s) {
    return s->policy && strcmp(s->policy->name, "full") && strcmp(s->policy->name, "topk") &&
           !(budget_is_fraction(&s->evict) && s->evict.budget >= 1.0f);
}

int32_t rk_evict_max_used(const rk_session *s) {
    int32_t mx = 0, heads = s->kv.n_layers * s->kv.n_kv_heads;
    for (int32_t i = 0; i < heads; i++)
        if (s->kv.n_used[i] > mx) mx = s->kv.n_used[i];
    return mx;
}

int rk_evict_streaming(const rk_session *s) { return evicting(s) && s->evict.schedule == RK_SCHEDULE_STREAMING; }

int32_t rk_evict_room(const rk_session *s) {
    int32_t used = rk_evict_max_used(s), room = s->n_ctx - used;
    if (rk_evict_streaming(s)) {
        int32_t r = budget_tokens(&s->evict, s->n_ctx) + s->evict.slack + 1 - used;
        if (r < 1) r = 1; /* a head given more than budget + slack (pyramidkv, adakv): one token at a time */
        if (r < room) room = r;
    }
    return room < 0 ? 0 : room; /* 0: full (only after a failed eviction) */
}

/* ---- configuration ---- */

static rk_status validate(const rk_session *s, const rk_evict_params *p, const rk_policy_i **out) {
    if (!memchr(p->policy, 0, sizeof p->policy) || !memchr(p->ada_base, 0, sizeof p->ada_base))
        return rk_fail(RK_ERR_ARG, "policy names must be NUL-terminated");
    const rk_policy_i *pol = rk_policy_find(p->policy);
    if (!pol) {
        char names[256] = "";
        for (int32_t i = 0; rk_policy_name(i); i++) {
            strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, rk_policy_name(i), sizeof names - strlen(names) - 1);
        }
        return rk_fail(RK_ERR_ARG, "unknown policy '%s' (known: %s)", p->policy, names);
    }
    if (!(p->budget > 0.0f) || !isfinite(p->budget))
        return rk_fail(RK_ERR_ARG, "budget must be a fraction in (0, 1] or a token count >= 2, got %g", p->budget);
    if (p->budget > 1.0f && (p->budget < 2.0f || p->budget != floorf(p->budget) || p->budget > (float)INT32_MAX))
        return rk_fail(RK_ERR_ARG, "budget %g: a budget above 1 is a token count and must be an integer >= 2",
                       p->budget);
    if (p->schedule != RK_SCHEDULE_PREFIX && p->schedule != RK_SCHEDULE_STREAMING)
        return rk_fail(RK_ERR_ARG, "unknown schedule %d (0 = prefix, 1 = streaming)", p->schedule);
    if (p->positions != RK_POSITIONS_ORIGINAL && p->positions != RK_POSITIONS_SHIFT)
        return rk_fail(RK_ERR_ARG, "unknown positions mode %d (0 = original, 1 = shift)", p->positions);
    if (p->window < 1 || p->window > MAX_WINDOW)
        return rk_fail(RK_ERR_ARG, "window must be in 1..%d, got %d", MAX_WINDOW, p->window);
    if (p->n_sink < 0) return rk_fail(RK_ERR_ARG, "n_sink must be >= 0, got %d", p->n_sink);
    if (p->kernel < 1 || p->kernel % 2 == 0) return rk_fail(RK_ERR_ARG, "kernel must be odd and >= 1, got %d", p->kernel);
    if (p->slack < 0) return rk_fail(RK_ERR_ARG, "slack must be >= 0, got %d", p->slack);
    if (!(p->ema_alpha > 0.0f && p->ema_alpha <= 1.0f))
        return rk_fail(RK_ERR_ARG, "ema_alpha must be in (0, 1], got %g", p->ema_alpha);
    if (!(p->aws_beta > 0.0f)) return rk_fail(RK_ERR_ARG, "aws_beta must be > 0, got %g", p->aws_beta);
    if (!(p->pyramid_beta >= 1.0f)) return rk_fail(RK_ERR_ARG, "pyramid_beta must be >= 1, got %g", p->pyramid_beta);
    if (!(p->ada_floor >= 0.0f && p->ada_floor <= 1.0f))
        return rk_fail(RK_ERR_ARG, "ada_floor must be in [0, 1], got %g", p->ada_floor);
    if (strcmp(p->ada_base, "snapkv") && strcmp(p->ada_base, "restkv"))
        return rk_fail(RK_ERR_ARG, "ada_base must be 'snapkv' or 'restkv', got '%s'", p->ada_base);
    if (p->lacache_span < 2 || p->lacache_overlap < 0 || p->lacache_overlap >= p->lacache_span)
        return rk_fail(RK_ERR_ARG, "lacache needs span >= 2 and 0 <= overlap < span, got %d/%d", p->lacache_span,
                       p->lacache_overlap);
    if (p->positions == RK_POSITIONS_SHIFT && pol->allocate)
        return rk_fail(RK_ERR_ARG, "positions=shift needs the same number of tokens in every head; "
                                   "policy '%s' varies it", pol->name);
    if (p->schedule == RK_SCHEDULE_STREAMING && strcmp(pol->name, "full") && strcmp(pol->name, "topk") &&
        !(budget_is_fraction(p) && p->budget >= 1.0f)) {
        int64_t need = (int64_t)budget_tokens(p, s->n_ctx) + p->slack + 1;
        if (need > s->n_ctx)
            return rk_fail(RK_ERR_ARG, "streaming schedule needs n_ctx >= budget + slack + 1 = %lld, the session has %d",
                           (long long)need, s->n_ctx);
    }
    *out = pol;
    return RK_OK;
}

void rk_evict_free(rk_session *s) {
    free(s->q_win); free(s->q_win_pos); free(s->acc); free(s->acc_cnt);
    free(s->ev_kv); free(s->ev_attn); free(s->ev_scores); free(s->ev_idx); free(s->ev_keep); free(s->ev_qwin);
    s->q_win = s->acc = s->acc_cnt = s->ev_kv = s->ev_attn = s->ev_scores = s->ev_qwin = NULL;
    s->q_win_pos = s->ev_idx = NULL;
    s->ev_keep = NULL;
    s->win = 0;
}

static rk_status set_evict(rk_session *s, const rk_evict_params *params) {
    if (!params) return rk_fail(RK_ERR_ARG, "rk_session_set_evict: params is NULL");
    const rk_policy_i *pol = NULL;
    rk_status st = validate(s, params, &pol);
    if (st) return st;
    const rk_model *m = s->model;
    const size_t L = (size_t)m->n_layers, H = (size_t)m->n_heads, G = (size_t)m->n_kv_heads, C = (size_t)s->n_ctx,
                 D = (size_t)m->head_dim, W = (size_t)params->window;
    const int scores = strcmp(pol->name, "full") && strcmp(pol->name, "topk");
    /* allocate everything first, so a failure leaves the session as it was */
    rk_session n = {0};
    n.win = scores ? (int32_t)W : 0;
    int ok = 1;
    if (n.win) {
        ok &= !!(n.q_win = malloc(L * W * H * D * sizeof(float)));
        ok &= !!(n.q_win_pos = malloc(W * sizeof(int32_t)));
        ok &= !!(n.ev_attn = malloc(H * W * C * sizeof(float)));
        ok &= !!(n.ev_qwin = malloc(W * H * D * sizeof(float)));
    }
    if (scores) {
        ok &= !!(n.ev_kv = malloc(2 * G * C * D * sizeof(float)));
        ok &= !!(n.ev_scores = malloc(G * C * sizeof(float)));
        ok &= !!(n.ev_idx = malloc(C * sizeof(int32_t)));
        ok &= !!(n.ev_keep = malloc(C));
    }
    if (pol->needs & RK_NEED_ACC) {
        ok &= !!(n.acc = calloc(L * H * C, sizeof(float)));
        ok &= !!(n.acc_cnt = calloc(L * G * C, sizeof(float)));
    }
    if (!ok) {
        rk_evict_free(&n);
        return rk_fail(RK_ERR_OOM, "cannot allocate eviction buffers");
    }
    rk_evict_free(s);
    s->q_win = n.q_win; s->q_win_pos = n.q_win_pos; s->win = n.win; s->q_win_head = s->q_win_n = 0;
    s->ev_attn = n.ev_attn; s->ev_qwin = n.ev_qwin; s->ev_kv = n.ev_kv; s->ev_scores = n.ev_scores;
    s->ev_idx = n.ev_idx; s->ev_keep = n.ev_keep; s->acc = n.acc; s->acc_cnt = n.acc_cnt;
    s->evict = *params;
    s->policy = strcmp(pol->name, "full") ? pol : NULL;
    s->topk = 0;
    s->topk_frac = 0;
    if (!strcmp(pol->name, "topk")) {
        if (budget_is_fraction(params)) s->topk_frac = params->budget;
        else s->topk = (int32_t)params->budget;
    }
    return RK_OK;
}

/* ---- statistics ---- */

void rk_evict_record_queries(rk_session *s, int il, const float *q, int n, int32_t pos0) {
    if (!s->win) return;
    const size_t dq = (size_t)s->model->n_heads * s->model->head_dim;
    for (int t = n > s->win ? n - s->win : 0; t < n; t++) {
        int slot = (s->q_win_head + t) % s->win;
        memcpy(s->q_win + ((size_t)il * s->win + slot) * dq, q + (size_t)t * dq, dq * sizeof(float));
        if (il == 0) s->q_win_pos[slot] = pos0 + t;
    }
    if (il == s->model->n_layers - 1) {
        s->q_win_head = (s->q_win_head + n) % s->win;
        s->q_win_n = s->q_win_n + n > s->win ? s->win : s->q_win_n + n;
    }
}

typedef struct {
    rk_session *s;
    rk_policy_view *v;
    int32_t *win_pos;
} win_job;

/* softmax of each observation query over the slots of its kv-head that it may see */
static void window_attention_task(void *ctx, int ith, int nth) {
    win_job *j = ctx;
    const rk_policy_view *v = j->v;
    const int D = v->head_dim, dq = v->n_heads * D;
    const float scale = 1.0f / sqrtf((float)D);
    long b, e;
    rk_split_range(v->n_heads, ith, nth, 1, &b, &e);
    for (long h = b; h < e; h++) {
        const int g = (int)h / v->group;
        const float *K = v->k + (size_t)g * v->cap * D;
        const int32_t *pos = v->pos + (size_t)g * v->cap;
        for (int i = 0; i < v->n_win; i++) {
            const float *q = v->win_q + (size_t)i * dq + (size_t)h * D;
            float *a = j->s->ev_attn + ((size_t)h * v->n_win + i) * v->cap;
            float mx = -INFINITY;
            for (int sl = 0; sl < v->n_used[g]; sl++) {
                if (pos[sl] > j->win_pos[i]) { a[sl] = -INFINITY; continue; }
                float d = 0;
                for (int k = 0; k < D; k++) d += q[k] * K[(size_t)sl * D + k];
                a[sl] = d * scale;
                if (a[sl] > mx) mx = a[sl];
            }
            double sum = 0;
            for (int sl = 0; sl < v->n_used[g]; sl++) {
                a[sl] = a[sl] == -INFINITY ? 0.0f : expf(a[sl] - mx);
                sum += a[sl];
            }
            const float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
            for (int sl = 0; sl < v->n_used[g]; sl++) a[sl] *= inv;
        }
    }
}

/* f32 copies of layer il's keys and values, for scoring */
static void layer_kv_f32(rk_session *s, int il) {
    const rk_kv *kv = &s->kv;
    const rk_type_traits *tr = rk_get_type_traits(kv->type);
    const size_t D = (size_t)kv->head_dim, C = (size_t)kv->capacity, G = (size_t)kv->n_kv_heads;
    for (int g = 0; g < kv->n_kv_heads; g++) {
        const int32_t n = kv->n_used[rk_kv_head_index(kv, il, g)];
        tr->to_float(rk_kv_k(kv, il, g), s->ev_kv + (size_t)g * C * D, (int64_t)n * (int64_t)D);
        tr->to_float(rk_kv_v(kv, il, g), s->ev_kv + (G + (size_t)g) * C * D, (int64_t)n * (int64_t)D);
    }
}

/* ---- selection and compaction ---- */

/* qsort has no context argument: the comparators read these, per thread, since sessions in
 * other threads may be evicting at the same time (a session evicts on its calling thread) */
static _Thread_local const float *sel_scores;
static _Thread_local const int32_t *sel_pos;

/* higher score first; ties: newer position first */
static int cmp_keep(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const float sx = isnan(sel_scores[x]) ? -INFINITY : sel_scores[x];
    const float sy = isnan(sel_scores[y]) ? -INFINITY : sel_scores[y];
    if (sx != sy) return sx > sy ? -1 : 1;
    return sel_pos[y] - sel_pos[x];
}

static int cmp_pos_desc(const void *a, const void *b) {
    return sel_pos[*(const int32_t *)b] - sel_pos[*(const int32_t *)a];
}

/* marks keep[slot] for one kv-head keeping c of n slots */
static void select_keep(const rk_session *s, const int32_t *pos, const float *scores, int32_t n, int32_t c,
                        uint8_t *keep, int32_t *idx) {
    const rk_policy_i *pol = s->policy;
    memset(keep, 0, (size_t)n);
    if (c >= n) {
        memset(keep, 1, (size_t)n);
        return;
    }
    sel_scores = scores;
    sel_pos = pos;
    int32_t kept = 0;
    if (pol->keep_sinks)
        for (int32_t sl = 0; sl < n && kept < c; sl++)
            if (pos[sl] < s->evict.n_sink) keep[sl] = 1, kept++;
    int32_t w = pol->keep_window ? (s->evict.window < c / 2 ? s->evict.window : c / 2) : 0;
    if (pol->keep_last && w < 1) w = 1;
    if (w > 0) { /* the newest w unprotected tokens */
        for (int32_t sl = 0; sl < n; sl++) idx[sl] = sl;
        qsort(idx, (size_t)n, sizeof *idx, cmp_pos_desc);
        for (int32_t i = 0, taken = 0; i < n && taken < w && kept < c; i++)
            if (!keep[idx[i]]) keep[idx[i]] = 1, kept++, taken++;
    }
    int32_t m = 0;
    for (int32_t sl = 0; sl < n; sl++)
        if (!keep[sl]) idx[m++] = sl;
    qsort(idx, (size_t)m, sizeof *idx, cmp_keep);
    for (int32_t i = 0; i < m && kept < c; i++) keep[idx[i]] = 1, kept++;
}

static void compact_head(rk_session *s, int il, int g, const uint8_t *keep) {
    rk_kv *kv = &s->kv;
    const rk_model *m = s->model;
    const size_t hi = rk_kv_head_index(kv, il, g), row = (size_t)kv->head_dim * kv->elt_size, C = (size_t)kv->capacity;
    const int group = m->n_heads / m->n_kv_heads;
    uint8_t *K = rk_kv_k(kv, il, g), *V = rk_kv_v(kv, il, g);
    int32_t *pos = rk_kv_pos(kv, il, g);
    int32_t w = 0;
    for (int32_t sl = 0; sl < kv->n_used[hi]; sl++) {
        if (!keep[sl]) continue;
        if (w != sl) {
            memcpy(K + (size_t)w * row, K + (size_t)sl * row, row);
            memcpy(V + (size_t)w * row, V + (size_t)sl * row, row);
            pos[w] = pos[sl];
            if (s->acc) {
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float *a = s->acc + ((size_t)il * m->n_heads + h) * C;
                    a[w] = a[sl];
                }
                float *cnt = s->acc_cnt + hi * C;
                cnt[w] = cnt[sl];
            }
        }
        w++;
    }
    kv->n_used[hi] = w;
}

/* re-rotates the kept keys of every buffer to positions 0..n-1 (StreamingLLM's pos-shift) */
static void shift_positions(rk_session *s) {
    rk_kv *kv = &s->kv;
    const rk_model *m = s->model;
    const rk_type_traits *tr = rk_get_type_traits(kv->type);
    float krow[1024], cs[1024];
    int32_t n_max = 0;
    for (int il = 0; il < kv->n_layers; il++)
        for (int g = 0; g < kv->n_kv_heads; g++) {
            const size_t hi = rk_kv_head_index(kv, il, g), row = (size_t)kv->head_dim * kv->elt_size;
            int32_t *pos = rk_kv_pos(kv, il, g);
            uint8_t *K = rk_kv_k(kv, il, g);
            for (int32_t sl = 0; sl < kv->n_used[hi]; sl++) {
                const int32_t delta = sl - pos[sl];
                if (delta) {
                    tr->to_float(K + (size_t)sl * row, krow, kv->head_dim);
                    rk_rope_angles(cs, delta, m->n_rot, m->rope_base, m->rope_freq_scale, m->rope_freqs);
                    rk_rope_apply(krow, 1, kv->head_dim, m->n_rot, cs);
                    rk_get_type_traits(kv->type)->from_float(krow, K + (size_t)sl * row, kv->head_dim);
                    pos[sl] = sl;
                }
            }
            if (kv->n_used[hi] > n_max) n_max = kv->n_used[hi];
        }
    /* the buffered observation queries move with the text: rotate them by the same
     * offset as the newest tokens, so query-key distances (and causality) are kept */
    const int32_t dq_shift = n_max - s->next_pos;
    if (s->win && dq_shift) {
        const size_t dq = (size_t)m->n_heads * m->head_dim;
        rk_rope_angles(cs, dq_shift, m->n_rot, m->rope_base, m->rope_freq_scale, m->rope_freqs);
        for (int il = 0; il < m->n_layers; il++)
            for (int w = 0; w < s->win; w++)
                rk_rope_apply(s->q_win + ((size_t)il * s->win + w) * dq, m->n_heads, m->head_dim, m->n_rot, cs);
        for (int w = 0; w < s->win; w++) s->q_win_pos[w] += dq_shift;
    }
    s->next_pos = n_max;
}

static rk_status compress_to(rk_session *s, int32_t budget) {
    const rk_model *m = s->model;
    rk_kv *kv = &s->kv;
    const rk_policy_i *pol = s->policy;
    const int G = m->n_kv_heads, H = m->n_heads, D = m->head_dim, C = kv->capacity;
    int32_t keep_n[1024];
    int32_t win_pos[MAX_WINDOW];
    const int32_t n_cached = rk_evict_max_used(s);
    rk_policy_view v = {s, &s->evict, 0, m->n_layers, H, G, H / G, D, C, NULL, NULL, s->ev_kv,
                        s->ev_kv + (size_t)G * C * D, 0, win_pos, s->ev_attn, s->ev_qwin, NULL, NULL, budget, n_cached};
    if (s->win && (pol->needs & RK_NEED_WINDOW)) {
        v.n_win = s->q_win_n;
        for (int i = 0; i < v.n_win; i++)
            win_pos[i] = s->q_win_pos[(s->q_win_head - v.n_win + i + s->win) % s->win];
    }
    for (int il = 0; il < m->n_layers; il++) {
        v.il = il;
        v.n_used = kv->n_used + rk_kv_head_index(kv, il, 0);
        v.pos = rk_kv_pos(kv, il, 0);
        if (s->acc) {
            v.acc = s->acc + (size_t)il * H * C;
            v.acc_cnt = s->acc_cnt + (size_t)il * G * C;
        }
        layer_kv_f32(s, il);
        if (v.n_win) {
            const size_t dq = (size_t)H * D;
            for (int i = 0; i < v.n_win; i++) {
                const int slot = (s->q_win_head - v.n_win + i + s->win) % s->win;
                memcpy(s->ev_qwin + i * dq, s->q_win + ((size_t)il * s->win + slot) * dq, dq * sizeof(float));
            }
            win_job j = {s, &v, win_pos};
            rk_pool_run(s->pool, window_attention_task, &j);
        }
        rk_status st = pol->score(&v, s->ev_scores);
        if (st) return st;
        for (int g = 0; g < G; g++) keep_n[g] = budget;
        if (pol->allocate) pol->allocate(&v, s->ev_scores, keep_n);
        if (rk_evict_streaming(s)) /* leave room for slack + 1 new tokens, whatever a head was given */
            for (int g = 0; g < G; g++)
                if (keep_n[g] > C - s->evict.slack - 1) keep_n[g] = C - s->evict.slack - 1;
        for (int g = 0; g < G; g++) {
            const int32_t n = v.n_used[g];
            int32_t c = keep_n[g] < 1 ? 1 : keep_n[g];
            select_keep(s, v.pos + (size_t)g * C, s->ev_scores + (size_t)g * C, n, c, s->ev_keep, s->ev_idx);
            compact_head(s, il, g, s->ev_keep);
        }
    }
    if (s->evict.positions == RK_POSITIONS_SHIFT) shift_positions(s);
    return RK_OK;
}

rk_status rk_session_set_evict(rk_session *s, const rk_evict_params *params) {
    rk_status st = rk_session_enter(s, "rk_session_set_evict");
    if (st) return st;
    st = set_evict(s, params);
    rk_session_leave(s);
    return st;
}

static rk_status compress(rk_session *s) {
    if (!evicting(s)) return RK_OK;
    if (s->policy->needs & RK_NEED_WINDOW && s->q_win_n == 0)
        return rk_fail(RK_ERR_ARG, "rk_session_compress: policy '%s' scores with the last evaluated tokens; "
                                   "evaluate some first", s->policy->name);
    return compress_to(s, budget_tokens(&s->evict, rk_evict_max_used(s)));
}

rk_status rk_session_compress(rk_session *s) {
    rk_status st = rk_session_enter(s, "rk_session_compress");
    if (st) return st;
    st = compress(s);
    rk_session_leave(s);
    return st;
}

rk_status rk_evict_after_forward(rk_session *s) {
    if (!rk_evict_streaming(s)) return RK_OK;
    const int32_t budget = budget_tokens(&s->evict, s->n_ctx);
    if (rk_evict_max_used(s) > budget + s->evict.slack) return compress_to(s, budget);
    return RK_OK;
}

/* ---- inspection ---- */

int32_t rk_session_kv_count(const rk_session *s, int32_t il, int32_t g) {
    if (!s || il < 0 || il >= s->kv.n_layers || g < 0 || g >= s->kv.n_kv_heads) return -1;
    return s->kv.n_used[rk_kv_head_index(&s->kv, il, g)];
}

int32_t rk_session_kv_positions(const rk_session *s, int32_t il, int32_t g, int32_t *out, int32_t cap) {
    int32_t n = rk_session_kv_count(s, il, g);
    if (n < 0 || (!out && cap > 0)) return -1;
    const int32_t *pos = rk_kv_pos(&s->kv, il, g);
    for (int32_t i = 0; i < n && i < cap; i++) out[i] = pos[i];
    return n;
}

int32_t rk_session_next_pos(const rk_session *s) { return s ? s->next_pos : 0; }
