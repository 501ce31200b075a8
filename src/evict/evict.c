/*
 * evict.c: the shared half of KV eviction. Policies score (src/evict/policies/); this
 * file holds the shared settings, parses and validates every policy's settings against the
 * tables the policies declare (policy.h), serves those tables to the API, gathers the
 * statistics they need, turns scores into keep-sets (sinks, recent window, top-k, per-head
 * budgets) and compacts the per-(layer, kv-head) buffers, optionally re-rotating kept keys (positions=shift).
 *
 * Keep-set rule, per (layer, kv-head) keeping c of its n tokens:
 *   1. protected: the first n_sink positions (policies flagged RK_POLICY_KEEPS_SINKS), the newest
 *      token (KEEPS_LAST), and the newest min(window, floor(c/2)) tokens (KEEPS_WINDOW).
 *      Capping the window at half the budget is what makes a small budget (8 of 80
 *      LAMBADA tokens at 10%) still choose by score instead of keeping only the newest.
 *      If the protected tokens alone exceed c: sinks first, then the newest.
 *   2. the rest of the budget: the highest scores among the unprotected tokens;
 *      ties go to the newer token (larger position).
 *   3. compaction keeps the surviving slots in their slot order.
 * Under the streaming schedule no head keeps more than n_ctx - slack - 1 tokens (a
 * per-head allocation above that is cut), so the next tokens always have a slot.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "quant.h"
#include "session.h"

#define MAX_WINDOW 4096

/* ---- the shared settings ---- */

static const rk_param_def shared_params[] = {
    {{"budget", RK_PARAM_FLOAT, 1.0, 0.0, 2147483647.0, 1, 0, NULL,
      "a fraction in (0, 1] of the entries each (layer, kv-head) keeps (prefix: of those cached when compressing; "
      "streaming: of n_ctx), or an integer >= 2, a number of tokens; 1 = everything"},
     offsetof(rk_evict_shared, budget)},
    RK_PARAM_CHOICE(rk_evict_shared, schedule, RK_SCHEDULE_PREFIX, 2, "prefix|streaming",
                    "prefix: compress on rk_session_compress; streaming: evict during eval past budget + slack"),
    RK_PARAM_CHOICE(rk_evict_shared, positions, RK_POSITIONS_ORIGINAL, 2, "original|shift",
                    "kept keys keep their RoPE positions (original) or are re-rotated to contiguous ones (shift)"),
    RK_PARAM_INT(rk_evict_shared, window, 32, 1, MAX_WINDOW,
                 "observation window: recent queries that score, recent keys kept"),
    RK_PARAM_INT(rk_evict_shared, n_sink, 4, 0, 2147483647, "first positions always kept (policies that keep sinks)"),
    RK_PARAM_INT(rk_evict_shared, slack, 0, 0, 2147483647,
                 "streaming: evict when a buffer holds budget + slack (0 = every token)"),
};

/* ---- budget ---- */

static int budget_is_fraction(const rk_evict_shared *p) { return p->budget <= 1.0f; }

/* tokens to keep per head when n are cached (prefix) or for a cache of n_ctx slots (streaming) */
static int32_t budget_tokens(const rk_evict_shared *p, int32_t n) {
    if (!budget_is_fraction(p)) return (int32_t)p->budget;
    int32_t c = (int32_t)((double)p->budget * n + 1e-4); /* floor, as kvpress's int(k_len * (1 - ratio)) */
    return c < 1 ? 1 : c;
}

/* a policy that evicts, with a budget that can cut something */
static int evicts(const rk_policy_i *pol, const rk_evict_shared *p) {
    return (pol->flags & RK_POLICY_EVICTS) && !(budget_is_fraction(p) && p->budget >= 1.0f);
}

static int evicting(const rk_session *s) { return s->policy && evicts(s->policy, &s->evict); }

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

/* ---- the policy table (public introspection) ---- */

int32_t rk_policy_count(void) { return rk_policy_registry_size(); }

const char *rk_policy_name(int32_t i) {
    const rk_policy_i *p = rk_policy_at(i);
    return p ? p->name : NULL;
}

int32_t rk_policy_index(const char *name) {
    if (!name) return -1;
    for (int32_t i = 0; rk_policy_at(i); i++)
        if (!strcmp(rk_policy_at(i)->name, name)) return i;
    return -1;
}

static uint32_t gathers(const rk_policy_i *p) {
    return p->needs | ((p->flags & RK_POLICY_EVICTS) ? RK_NEED_WINDOW : 0u);
}

rk_status rk_policy_get_info(int32_t i, rk_policy_info *out) {
    const rk_policy_i *p = rk_policy_at(i);
    if (!p) return rk_fail(RK_ERR_ARG, "rk_policy_get_info: no policy %d (there are %d)", i, rk_policy_count());
    if (!out) return rk_fail(RK_ERR_ARG, "rk_policy_get_info: out is NULL");
    *out = (rk_policy_info){p->name, p->help, p->flags, p->needs, gathers(p), p->n_params};
    return RK_OK;
}

static int table_of(int32_t policy, const rk_param_def **defs, int32_t *n) {
    if (policy == RK_EVICT_SHARED) {
        *defs = shared_params;
        *n = RK_N_PARAMS(shared_params);
        return 1;
    }
    const rk_policy_i *p = rk_policy_at(policy);
    if (!p) return 0;
    *defs = p->params;
    *n = p->n_params;
    return 1;
}

int32_t rk_policy_n_params(int32_t policy) {
    const rk_param_def *d;
    int32_t n;
    return table_of(policy, &d, &n) ? n : -1;
}

rk_status rk_policy_param_info(int32_t policy, int32_t i, rk_param_info *out) {
    const rk_param_def *d;
    int32_t n;
    if (!table_of(policy, &d, &n))
        return rk_fail(RK_ERR_ARG, "rk_policy_param_info: no policy %d (there are %d; %d = the shared settings)",
                       policy, rk_policy_count(), RK_EVICT_SHARED);
    if (i < 0 || i >= n) return rk_fail(RK_ERR_ARG, "rk_policy_param_info: parameter %d of %d", i, n);
    if (!out) return rk_fail(RK_ERR_ARG, "rk_policy_param_info: out is NULL");
    *out = d[i].info;
    return RK_OK;
}

/* ---- settings: parsing and validation ---- */

static void set_defaults(const rk_param_def *d, int32_t n, void *base) {
    for (int32_t i = 0; i < n; i++) {
        char *at = (char *)base + d[i].offset;
        if (d[i].info.type == RK_PARAM_FLOAT) *(float *)at = (float)d[i].info.default_value;
        else *(int32_t *)at = (int32_t)d[i].info.default_value;
    }
}

/* choice k of "a|b|c" into buf; returns 0 past the end */
static int choice_at(const char *choices, int32_t k, char *buf, size_t size) {
    const char *p = choices;
    for (int32_t i = 0; i < k; i++) {
        p = strchr(p, '|');
        if (!p) return 0;
        p++;
    }
    size_t len = strcspn(p, "|");
    if (len >= size) len = size - 1;
    memcpy(buf, p, len);
    buf[len] = 0;
    return 1;
}

static void range_text(const rk_param_info *in, char *buf, size_t size) {
    if (in->type == RK_PARAM_INT) {
        if (in->max >= 2147483647.0) snprintf(buf, size, "an integer >= %.0f", in->min);
        else snprintf(buf, size, "an integer in [%.0f, %.0f]", in->min, in->max);
    } else if (isinf(in->max)) {
        snprintf(buf, size, "%s %g", in->min_open ? ">" : ">=", in->min);
    } else {
        snprintf(buf, size, "in %c%g, %g%c", in->min_open ? '(' : '[', in->min, in->max, in->max_open ? ')' : ']');
    }
}

/* "(policy 'x')" or "(shared setting, policy 'x')" */
#define WHO_FMT " (%s of policy '%s')"
#define WHO(shared, pol) (shared) ? "shared setting" : "parameter", (pol)->name

/* parses one value of parameter d into base; key/val are NUL-terminated */
static rk_status parse_value(const rk_param_def *d, const char *val, void *base, int shared, const rk_policy_i *pol) {
    const rk_param_info *in = &d->info;
    char *at = (char *)base + d->offset, *end = NULL, range[96];
    if (in->type == RK_PARAM_CHOICE) {
        char name[64], names[256] = "";
        for (int32_t k = 0; choice_at(in->choices, k, name, sizeof name); k++) {
            if (!strcmp(name, val)) {
                *(int32_t *)at = k;
                return RK_OK;
            }
            strncat(names, k ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, name, sizeof names - strlen(names) - 1);
        }
        return rk_fail(RK_ERR_ARG, "unknown %s '%s' (expected one of: %s)" WHO_FMT, in->name, val, names,
                       WHO(shared, pol));
    }
    range_text(in, range, sizeof range);
    errno = 0;
    if (in->type == RK_PARAM_INT) {
        const long long x = strtoll(val, &end, 10);
        if (end == val || *end || errno)
            return rk_fail(RK_ERR_ARG, "%s must be %s, got '%s'" WHO_FMT, in->name, range, val, WHO(shared, pol));
        if ((double)x < in->min || (double)x > in->max)
            return rk_fail(RK_ERR_ARG, "%s must be %s, got %lld" WHO_FMT, in->name, range, x, WHO(shared, pol));
        *(int32_t *)at = (int32_t)x;
        return RK_OK;
    }
    const double x = strtod(val, &end);
    if (end == val || *end)
        return rk_fail(RK_ERR_ARG, "%s must be a number %s, got '%s'" WHO_FMT, in->name, range, val, WHO(shared, pol));
    const float f = (float)x;
    if (shared && d->offset == offsetof(rk_evict_shared, budget)) { /* the budget's own rules */
        if (!(f > 0.0f) || !isfinite(f))
            return rk_fail(RK_ERR_ARG, "budget must be a fraction in (0, 1] or a token count >= 2, got %s" WHO_FMT,
                           val, WHO(shared, pol));
        if (f > 1.0f && (f < 2.0f || f != floorf(f) || f > (float)INT32_MAX))
            return rk_fail(RK_ERR_ARG, "budget %s: a budget above 1 is a token count and must be an integer >= 2"
                           WHO_FMT, val, WHO(shared, pol));
        *(float *)at = f;
        return RK_OK;
    }
    if (isnan(f) || f < in->min || (in->min_open && f == in->min) || f > in->max || (in->max_open && f == in->max))
        return rk_fail(RK_ERR_ARG, "%s must be %s, got %s" WHO_FMT, in->name, range, val, WHO(shared, pol));
    *(float *)at = f;
    return RK_OK;
}

static const rk_param_def *find_param(const rk_param_def *d, int32_t n, const char *key) {
    for (int32_t i = 0; i < n; i++)
        if (!strcmp(d[i].info.name, key)) return &d[i];
    return NULL;
}

static void names_of(const rk_param_def *d, int32_t n, char *buf, size_t size) {
    buf[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        strncat(buf, i ? ", " : "", size - strlen(buf) - 1);
        strncat(buf, d[i].info.name, size - strlen(buf) - 1);
    }
    if (!n) strncat(buf, "none", size - strlen(buf) - 1);
}

static const rk_policy_i *find_policy(const char *name) {
    const rk_policy_i *pol = name ? rk_policy_lookup(name) : NULL;
    if (!pol) {
        char names[512] = "";
        for (int32_t i = 0; rk_policy_name(i); i++) {
            strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, rk_policy_name(i), sizeof names - strlen(names) - 1);
        }
        rk_fail(RK_ERR_ARG, "unknown policy '%s' (known: %s)", name ? name : "(NULL)", names);
    }
    return pol;
}

#define MAX_SETTINGS 4096

/* Parses "key=value,..." into sh (shared) and cfg (the policy's struct, cfg_size bytes), defaults
 * first, then validates; writes nothing else. */
static rk_status parse_settings(const rk_policy_i *pol, const char *settings, rk_evict_shared *sh, void *cfg) {
    set_defaults(shared_params, RK_N_PARAMS(shared_params), sh);
    if (cfg) set_defaults(pol->params, pol->n_params, cfg);
    if (!settings) settings = "";
    const size_t len = strlen(settings);
    if (len >= MAX_SETTINGS)
        return rk_fail(RK_ERR_ARG, "eviction settings of policy '%s' are too long (%zu characters, at most %d)",
                       pol->name, len, MAX_SETTINGS - 1);
    char buf[MAX_SETTINGS], seen[64] = {0};
    memcpy(buf, settings, len + 1);
    for (char *item = buf, *next; item; item = next) {
        next = strchr(item, ',');
        if (next) *next++ = 0;
        while (*item == ' ') item++;
        char *e = item + strlen(item);
        while (e > item && e[-1] == ' ') *--e = 0;
        if (!*item) continue;
        char *eq = strchr(item, '=');
        if (!eq)
            return rk_fail(RK_ERR_ARG, "eviction setting '%s' of policy '%s' is not key=value", item, pol->name);
        char *val = eq + 1;
        for (*eq = 0; eq > item && eq[-1] == ' ';) *--eq = 0;
        while (*val == ' ') val++;
        const rk_param_def *d = find_param(shared_params, RK_N_PARAMS(shared_params), item);
        const int shared = d != NULL;
        if (!d) d = find_param(pol->params, pol->n_params, item);
        if (!d) {
            char own[512], common[256];
            names_of(pol->params, pol->n_params, own, sizeof own);
            names_of(shared_params, RK_N_PARAMS(shared_params), common, sizeof common);
            return rk_fail(RK_ERR_ARG, "policy '%s' has no parameter '%s' (its parameters: %s; shared settings: %s)",
                           pol->name, item, own, common);
        }
        if (!shared && !cfg)
            return rk_fail(RK_ERR_INTERNAL, "policy '%s' declares parameters but no settings struct (cfg_size)",
                           pol->name);
        const size_t k = shared ? (size_t)(d - shared_params) : 16 + (size_t)(d - pol->params);
        if (k < sizeof seen) {
            if (seen[k])
                return rk_fail(RK_ERR_ARG, "eviction setting '%s' is given twice (policy '%s')", item, pol->name);
            seen[k] = 1;
        }
        rk_status st = parse_value(d, val, shared ? (void *)sh : cfg, shared, pol);
        if (st) return st;
    }
    if (pol->validate && cfg) {
        rk_status st = pol->validate(cfg);
        if (st) return st;
    }
    if (sh->positions == RK_POSITIONS_SHIFT && pol->allocate)
        return rk_fail(RK_ERR_ARG, "positions=shift needs the same number of tokens in every head; "
                                   "policy '%s' varies it", pol->name);
    return RK_OK;
}

rk_status rk_evict_check(const char *policy, const char *settings) {
    const rk_policy_i *pol = find_policy(policy);
    if (!pol) return RK_ERR_ARG;
    rk_evict_shared sh;
    void *cfg = pol->cfg_size ? calloc(1, pol->cfg_size) : NULL;
    if (pol->cfg_size && !cfg) return rk_fail(RK_ERR_OOM, "out of memory");
    rk_status st = parse_settings(pol, settings, &sh, cfg);
    free(cfg);
    return st;
}

void rk_evict_free(rk_session *s) {
    free(s->q_win); free(s->q_win_pos); free(s->acc); free(s->acc_cnt);
    free(s->ev_kv); free(s->ev_attn); free(s->ev_scores); free(s->ev_idx); free(s->ev_keep); free(s->ev_qwin);
    free(s->ev_cfg);
    s->q_win = s->acc = s->acc_cnt = s->ev_kv = s->ev_attn = s->ev_scores = s->ev_qwin = NULL;
    s->q_win_pos = s->ev_idx = NULL;
    s->ev_keep = NULL;
    s->ev_cfg = NULL;
    s->win = 0;
}

static rk_status set_evict(rk_session *s, const char *policy, const char *settings) {
    const rk_policy_i *pol = find_policy(policy);
    if (!pol) return RK_ERR_ARG;
    rk_session n = {0};
    if (pol->cfg_size && !(n.ev_cfg = calloc(1, pol->cfg_size))) return rk_fail(RK_ERR_OOM, "out of memory");
    rk_evict_shared sh;
    rk_status st = parse_settings(pol, settings, &sh, n.ev_cfg);
    if (!st && sh.schedule == RK_SCHEDULE_STREAMING && evicts(pol, &sh)) {
        const int64_t need = (int64_t)budget_tokens(&sh, s->n_ctx) + sh.slack + 1;
        if (need > s->n_ctx)
            st = rk_fail(RK_ERR_ARG, "streaming schedule needs n_ctx >= budget + slack + 1 = %lld, the session has %d",
                         (long long)need, s->n_ctx);
    }
    if (!st && pol->prepare) st = pol->prepare(s->model, n.ev_cfg);
    if (st) {
        free(n.ev_cfg);
        return st;
    }
    const rk_model *m = s->model;
    const size_t L = (size_t)m->n_layers, H = (size_t)m->n_heads, G = (size_t)m->n_kv_heads, C = (size_t)s->n_ctx,
                 D = (size_t)m->head_dim, W = (size_t)sh.window;
    const uint32_t keeps = gathers(pol);
    /* allocate everything first, so a failure leaves the session as it was */
    n.win = (keeps & RK_NEED_WINDOW) ? (int32_t)W : 0;
    int ok = 1;
    if (n.win) {
        ok &= !!(n.q_win = malloc(L * W * H * D * sizeof(float)));
        ok &= !!(n.q_win_pos = malloc(W * sizeof(int32_t)));
        ok &= !!(n.ev_attn = malloc(H * W * C * sizeof(float)));
        ok &= !!(n.ev_qwin = malloc(W * H * D * sizeof(float)));
    }
    if (pol->flags & RK_POLICY_EVICTS) {
        ok &= !!(n.ev_kv = malloc(2 * G * C * D * sizeof(float)));
        ok &= !!(n.ev_scores = malloc(G * C * sizeof(float)));
        ok &= !!(n.ev_idx = malloc(C * sizeof(int32_t)));
        ok &= !!(n.ev_keep = malloc(C));
    }
    if (keeps & RK_NEED_ACC) {
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
    s->ev_cfg = n.ev_cfg;
    s->evict = sh;
    s->policy = pol;
    s->topk = 0;
    s->topk_frac = 0;
    if (pol->flags & RK_POLICY_MASKS_ATTN) { /* the budget is the keys each query attends to */
        if (budget_is_fraction(&sh)) s->topk_frac = sh.budget;
        else s->topk = (int32_t)sh.budget;
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
    if (pol->flags & RK_POLICY_KEEPS_SINKS)
        for (int32_t sl = 0; sl < n && kept < c; sl++)
            if (pos[sl] < s->evict.n_sink) keep[sl] = 1, kept++;
    int32_t w = (pol->flags & RK_POLICY_KEEPS_WINDOW) ? (s->evict.window < c / 2 ? s->evict.window : c / 2) : 0;
    if ((pol->flags & RK_POLICY_KEEPS_LAST) && w < 1) w = 1;
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
    rk_policy_view v = {s, &s->evict, s->ev_cfg, 0, m->n_layers, H, G, H / G, D, C, NULL, NULL, s->ev_kv,
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

rk_status rk_session_set_eviction(rk_session *s, const char *policy, const char *settings) {
    rk_status st = rk_session_enter(s, "rk_session_set_eviction");
    if (st) return st;
    st = set_evict(s, policy, settings);
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
