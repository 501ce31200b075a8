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
#include "ops.h" /* RoPE of the buffered observation queries (host memory) on a position shift */
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

static int evicting(const rk_session *s) { return s->ev.policy && evicts(s->ev.policy, &s->ev.evict); }

/* the most tokens a buffer of a global layer holds (sliding-window layers are bounded rings: never
 * full, never evicted from, not in budgets) */
int32_t rk_evict_max_used(const rk_session *s) {
    int32_t mx = 0;
    for (int il = 0; il < s->kv.n_layers; il++) {
        if (s->kv.swa[il]) continue;
        for (int g = 0; g < s->kv.n_kv_heads; g++) {
            const int32_t u = s->kv.n_used[rk_kv_head_index(&s->kv, il, g)];
            if (u > mx) mx = u;
        }
    }
    return mx;
}

int rk_evict_streaming(const rk_session *s) { return evicting(s) && s->ev.evict.schedule == RK_SCHEDULE_STREAMING; }

int32_t rk_evict_room(const rk_session *s) {
    int32_t used = rk_evict_max_used(s), room = s->n_ctx - used;
    if (rk_evict_streaming(s)) {
        int32_t r = budget_tokens(&s->ev.evict, s->n_ctx) + s->ev.evict.slack + 1 - used;
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

void rk_evict_free(rk_evict_state *e) {
    free(e->q_win); free(e->q_win_pos); free(e->acc); free(e->acc_cnt);
    free(e->ev_kv); free(e->ev_attn); free(e->ev_scores); free(e->ev_idx); free(e->ev_keep); free(e->ev_qwin);
    free(e->ev_cfg);
    e->q_win = e->acc = e->acc_cnt = e->ev_kv = e->ev_attn = e->ev_scores = e->ev_qwin = NULL;
    e->q_win_pos = e->ev_idx = NULL;
    e->ev_keep = NULL;
    e->ev_cfg = NULL;
    e->win = 0;
}

void rk_evict_reset(rk_evict_state *e) { e->q_win_n = e->q_win_head = 0; }

rk_status rk_evict_set(rk_session *s, const char *policy, const char *settings) {
    const rk_policy_i *pol = find_policy(policy);
    if (!pol) return RK_ERR_ARG;
    rk_evict_state n = {0};
    if (pol->cfg_size && !(n.ev_cfg = calloc(1, pol->cfg_size))) return rk_fail(RK_ERR_OOM, "out of memory");
    rk_evict_shared sh;
    rk_status st = parse_settings(pol, settings, &sh, n.ev_cfg);
    if (!st && sh.schedule == RK_SCHEDULE_STREAMING && evicts(pol, &sh)) {
        const int64_t need = (int64_t)budget_tokens(&sh, s->n_ctx) + sh.slack + 1;
        if (need > s->n_ctx)
            st = rk_fail(RK_ERR_ARG, "streaming schedule needs n_ctx >= budget + slack + 1 = %lld, the session has %d",
                         (long long)need, s->n_ctx);
    }
    if (!st && sh.positions == RK_POSITIONS_SHIFT && evicts(pol, &sh))
        for (int il = 0; il < s->kv.n_layers; il++)
            if (s->kv.swa[il]) {
                st = rk_fail(RK_ERR_UNSUPPORTED, "positions=shift re-numbers the kept tokens of the global layers, "
                                                 "which the sliding-window layers of this model cannot follow; use positions=original");
                break;
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
    rk_evict_free(&s->ev);
    s->ev.q_win = n.q_win; s->ev.q_win_pos = n.q_win_pos; s->ev.win = n.win; s->ev.q_win_head = s->ev.q_win_n = 0;
    s->ev.ev_attn = n.ev_attn; s->ev.ev_qwin = n.ev_qwin; s->ev.ev_kv = n.ev_kv; s->ev.ev_scores = n.ev_scores;
    s->ev.ev_idx = n.ev_idx; s->ev.ev_keep = n.ev_keep; s->ev.acc = n.acc; s->ev.acc_cnt = n.acc_cnt;
    s->ev.ev_cfg = n.ev_cfg;
    s->ev.evict = sh;
    s->ev.policy = pol;
    s->ev.topk = 0;
    s->ev.topk_frac = 0;
    if (pol->flags & RK_POLICY_MASKS_ATTN) { /* the budget is the keys each query attends to */
        if (budget_is_fraction(&sh)) s->ev.topk_frac = sh.budget;
        else s->ev.topk = (int32_t)sh.budget;
    }
    return RK_OK;
}

/* ---- statistics ---- */

void rk_evict_record_queries(rk_session *s, int il, const float *q, int n, int32_t pos0) {
    if (!s->ev.win) return;
    const size_t dq = (size_t)s->model->n_heads * s->model->head_dim;
    for (int t = n > s->ev.win ? n - s->ev.win : 0; t < n; t++) {
        int slot = (s->ev.q_win_head + t) % s->ev.win;
        s->be->to_host(s->bctx, s->ev.q_win + ((size_t)il * s->ev.win + slot) * dq, q + (size_t)t * dq, dq);
        if (il == 0) s->ev.q_win_pos[slot] = pos0 + t;
    }
    if (il == s->model->n_layers - 1) {
        s->ev.q_win_head = (s->ev.q_win_head + n) % s->ev.win;
        s->ev.q_win_n = s->ev.q_win_n + n > s->ev.win ? s->ev.win : s->ev.q_win_n + n;
    }
}

/* a new slot's accumulated-attention statistics start at zero */
void rk_evict_on_append(rk_session *s, int il, int n) {
    if (!s->ev.acc || s->kv.swa[il]) return;
    const rk_model *m = s->model;
    const size_t C = (size_t)s->n_ctx, group = (size_t)(m->n_heads / m->n_kv_heads);
    for (int g = 0; g < m->n_kv_heads; g++)
        for (int32_t sl = s->kv.n_used[rk_kv_head_index(&s->kv, il, g)] - n; sl < s->kv.n_used[rk_kv_head_index(&s->kv, il, g)]; sl++) {
            for (size_t h = (size_t)g * group; h < ((size_t)g + 1) * group; h++)
                s->ev.acc[((size_t)il * m->n_heads + h) * C + sl] = 0;
            s->ev.acc_cnt[((size_t)il * m->n_kv_heads + g) * C + sl] = 0;
        }
}

rk_attn_stats rk_evict_stats_sink(rk_session *s, int il) {
    rk_attn_stats st = {NULL, NULL};
    if (s->ev.acc && !s->kv.swa[il]) {
        const rk_model *m = s->model;
        st.acc = s->ev.acc + (size_t)il * m->n_heads * s->n_ctx;
        st.cnt = s->ev.acc_cnt + (size_t)il * m->n_kv_heads * s->n_ctx;
    }
    return st;
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
    const rk_policy_i *pol = s->ev.policy;
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
            if (pos[sl] < s->ev.evict.n_sink) keep[sl] = 1, kept++;
    int32_t w = (pol->flags & RK_POLICY_KEEPS_WINDOW) ? (s->ev.evict.window < c / 2 ? s->ev.evict.window : c / 2) : 0;
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

/* keeps the marked slots of (il, g): the statistics move with their slots, the backend moves the cache */
static void compact_head(rk_session *s, int il, int g, const uint8_t *keep) {
    const rk_model *m = s->model;
    if (s->ev.acc) {
        const size_t hi = rk_kv_head_index(&s->kv, il, g), C = (size_t)s->n_ctx;
        const int group = m->n_heads / m->n_kv_heads;
        float *cnt = s->ev.acc_cnt + hi * C;
        int32_t w = 0;
        for (int32_t sl = 0; sl < s->kv.n_used[hi]; sl++) {
            if (!keep[sl]) continue;
            if (w != sl) {
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float *a = s->ev.acc + ((size_t)il * m->n_heads + h) * C;
                    a[w] = a[sl];
                }
                cnt[w] = cnt[sl];
            }
            w++;
        }
    }
    s->be->kv_gather(s->bctx, &s->kv, il, g, keep);
}

/* re-rotates the kept keys of every buffer to positions 0..n-1 (StreamingLLM's pos-shift) */
static void shift_positions(rk_session *s) {
    rk_kv *kv = &s->kv;
    const rk_model *m = s->model;
    float cs[1024];
    s->be->kv_reposition(s->bctx, kv, m);
    int32_t n_max = 0;
    for (size_t hi = 0; hi < (size_t)kv->n_layers * kv->n_kv_heads; hi++)
        if (kv->n_used[hi] > n_max) n_max = kv->n_used[hi];
    /* the buffered observation queries move with the text: rotate them by the same
     * offset as the newest tokens, so query-key distances (and causality) are kept */
    const int32_t dq_shift = n_max - s->next_pos;
    if (s->ev.win && dq_shift) {
        const size_t dq = (size_t)m->n_heads * m->head_dim;
        rk_rope_angles(cs, dq_shift, m->n_rot, m->rope_base, m->rope_freq_scale, m->rope_freqs);
        for (int il = 0; il < m->n_layers; il++)
            for (int w = 0; w < s->ev.win; w++)
                rk_rope_apply_kind(m->rope_neox, s->ev.q_win + ((size_t)il * s->ev.win + w) * dq, m->n_heads, m->head_dim,
                                   m->n_rot, cs);
        for (int w = 0; w < s->ev.win; w++) s->ev.q_win_pos[w] += dq_shift;
    }
    s->next_pos = n_max;
}

static rk_status compress_to(rk_session *s, int32_t budget) {
    const rk_model *m = s->model;
    rk_kv *kv = &s->kv;
    const rk_policy_i *pol = s->ev.policy;
    const int G = m->n_kv_heads, H = m->n_heads, D = m->head_dim, C = kv->capacity;
    int32_t keep_n[1024];
    int32_t win_pos[MAX_WINDOW];
    const int32_t n_cached = rk_evict_max_used(s);
    rk_policy_view v = {m, s->be, s->bctx, &s->ev.evict, s->ev.ev_cfg, 0, m->n_layers, H, G, H / G, D, C, NULL, NULL, s->ev.ev_kv,
                        s->ev.ev_kv + (size_t)G * C * D, 0, win_pos, s->ev.ev_attn, s->ev.ev_qwin, NULL, NULL, budget, n_cached};
    if (s->ev.win && (pol->needs & RK_NEED_WINDOW)) {
        v.n_win = s->ev.q_win_n;
        for (int i = 0; i < v.n_win; i++)
            win_pos[i] = s->ev.q_win_pos[(s->ev.q_win_head - v.n_win + i + s->ev.win) % s->ev.win];
    }
    for (int il = 0; il < m->n_layers; il++) {
        if (kv->swa[il]) continue; /* a sliding-window layer holds its window only: nothing to evict */
        v.il = il;
        v.n_used = kv->n_used + rk_kv_head_index(kv, il, 0);
        v.pos = rk_kv_pos(kv, il, 0);
        if (s->ev.acc) {
            v.acc = s->ev.acc + (size_t)il * H * C;
            v.acc_cnt = s->ev.acc_cnt + (size_t)il * G * C;
        }
        s->be->kv_to_f32(s->bctx, kv, il, s->ev.ev_kv, s->ev.ev_kv + (size_t)G * C * D);
        if (v.n_win) {
            const size_t dq = (size_t)H * D;
            for (int i = 0; i < v.n_win; i++) {
                const int slot = (s->ev.q_win_head - v.n_win + i + s->ev.win) % s->ev.win;
                memcpy(s->ev.ev_qwin + i * dq, s->ev.q_win + ((size_t)il * s->ev.win + slot) * dq, dq * sizeof(float));
            }
            const rk_window_args wa = {H, G, D, C, v.n_win, v.k, v.n_used, v.pos, s->ev.ev_qwin, win_pos, s->ev.ev_attn};
            s->be->window_attention(s->bctx, &wa);
        }
        rk_status st = pol->score(&v, s->ev.ev_scores);
        if (st) return st;
        for (int g = 0; g < G; g++) keep_n[g] = budget;
        if (pol->allocate) pol->allocate(&v, s->ev.ev_scores, keep_n);
        if (rk_evict_streaming(s)) /* leave room for slack + 1 new tokens, whatever a head was given */
            for (int g = 0; g < G; g++)
                if (keep_n[g] > C - s->ev.evict.slack - 1) keep_n[g] = C - s->ev.evict.slack - 1;
        for (int g = 0; g < G; g++) {
            const int32_t n = v.n_used[g];
            int32_t c = keep_n[g] < 1 ? 1 : keep_n[g];
            select_keep(s, v.pos + (size_t)g * C, s->ev.ev_scores + (size_t)g * C, n, c, s->ev.ev_keep, s->ev.ev_idx);
            compact_head(s, il, g, s->ev.ev_keep);
        }
    }
    if (s->ev.evict.positions == RK_POSITIONS_SHIFT) shift_positions(s);
    return RK_OK;
}

rk_status rk_evict_compress(rk_session *s) {
    if (!evicting(s)) return RK_OK;
    if (s->ev.policy->needs & RK_NEED_WINDOW && s->ev.q_win_n == 0)
        return rk_fail(RK_ERR_ARG, "rk_session_compress: policy '%s' scores with the last evaluated tokens; "
                                   "evaluate some first", s->ev.policy->name);
    return compress_to(s, budget_tokens(&s->ev.evict, rk_evict_max_used(s)));
}

rk_status rk_evict_after_forward(rk_session *s) {
    if (!rk_evict_streaming(s)) return RK_OK;
    const int32_t budget = budget_tokens(&s->ev.evict, s->n_ctx);
    if (rk_evict_max_used(s) > budget + s->ev.evict.slack) return compress_to(s, budget);
    return RK_OK;
}
