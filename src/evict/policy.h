/*
 * policy.h: the interface between eviction policies (one file each in src/evict/policies/) and the
 * shared eviction code (evict.c).
 *
 * A policy only scores: for one layer it writes a score per (kv-head, slot), higher = keep. The
 * shared code turns scores into keep-sets: it protects the sinks and the recent window the policy
 * asks for (flags), takes the top-scored rest up to each head's budget (optionally reallocated
 * across heads by the policy), and compacts the buffers. The statistics a policy needs (needs) are
 * prepared by the shared code from the session (window attention recomputed from the buffered
 * queries of the last `window` tokens; accumulated attention kept by the attention kernel).
 *
 * A policy declares, in its own file:
 *   - name, one-line help, flags (RK_POLICY_*: EVICTS, or MASKS_ATTN for an attention mask that
 *     evicts nothing; KEEPS_* for the protection the shared code applies), needs (RK_NEED_*);
 *   - its parameters: a settings struct (cfg_size bytes, any layout) and a table of rk_param_def,
 *     each entry the public description (name, type, default, range, help) plus the offset of the
 *     value in the struct (int32_t for INT and CHOICE, float for FLOAT). The shared code parses
 *     "key=value" settings against the table, checks types and ranges, fills the struct with the
 *     defaults first, and hands the policy `v->cfg`;
 *   - (optional) validate(cfg): rules the table cannot say (kernel odd, overlap < span), as an
 *     rk_fail message naming the parameter;
 *   - (optional) prepare(model, cfg): what the policy needs from the model, computed lazily when
 *     the policy is set (ReST-KV's W_o Gram matrices: rk_wo_gram_prepare, once per model);
 *   - score, and (optional) allocate.
 * Registration: one line in registry.c (and the file in CMakeLists.txt).
 *
 * The shared settings (budget, schedule, positions, window, n_sink, slack) are not a policy's:
 * they live in rk_evict_shared (v->sh) and are parsed by evict.c.
 */
#ifndef RK_POLICY_H
#define RK_POLICY_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "restkv.h"

/* The shared settings, parsed by evict.c. */
typedef struct {
    float   budget;
    int32_t schedule;   /* rk_schedule */
    int32_t positions;  /* rk_positions */
    int32_t window;     /* observation window w: recent queries that score, recent keys kept */
    int32_t n_sink;     /* first positions kept by RK_POLICY_KEEPS_SINKS policies */
    int32_t slack;      /* streaming schedule: evict when a buffer holds budget + slack */
} rk_evict_shared;

/* One parameter: its public description and where its value lives in the settings struct. */
typedef struct {
    rk_param_info info;
    size_t        offset;
} rk_param_def;

#define RK_INF ((double)INFINITY)
/* table entries: struct type, field, default, range (closed unless stated), help; the _AS forms
 * name the key when it differs from the field (a field of a nested struct) */
#define RK_PARAM_INT_AS(key, T, f, def, lo, hi, help) {{key, RK_PARAM_INT, def, lo, hi, 0, 0, NULL, help}, offsetof(T, f)}
#define RK_PARAM_FLOAT_AS(key, T, f, def, lo, lo_open, hi, hi_open, help) \
    {{key, RK_PARAM_FLOAT, def, lo, hi, lo_open, hi_open, NULL, help}, offsetof(T, f)}
#define RK_PARAM_INT(T, f, def, lo, hi, help) RK_PARAM_INT_AS(#f, T, f, def, lo, hi, help)
#define RK_PARAM_FLOAT(T, f, def, lo, lo_open, hi, hi_open, help) \
    RK_PARAM_FLOAT_AS(#f, T, f, def, lo, lo_open, hi, hi_open, help)
#define RK_PARAM_CHOICE(T, f, def_index, n_choices, choices, help) \
    {{#f, RK_PARAM_CHOICE, def_index, 0, (n_choices) - 1, 0, 0, choices, help}, offsetof(T, f)}
#define RK_N_PARAMS(table) ((int32_t)(sizeof(table) / sizeof((table)[0])))

/* What a policy sees of one layer when scoring. Slots are those of each kv-head's
 * buffer, [0, n_used[g]). */
typedef struct {
    const rk_model        *model;
    const rk_backend_i    *be;    /* be->parallel(bctx, fn, job): host threads for scoring */
    rk_backend_ctx        *bctx;
    const rk_evict_shared *sh;    /* the shared settings */
    const void            *cfg;   /* the policy's settings struct */
    int32_t        il;            /* layer */
    int32_t        n_layers, n_heads, n_kv_heads, group, head_dim, cap;
    const int32_t *n_used;        /* [n_kv_heads] */
    const int32_t *pos;           /* [n_kv_heads][cap] original positions */
    const float   *k, *v;         /* [n_kv_heads][cap][head_dim], f32 copies of this layer's keys/values */
    /* RK_NEED_WINDOW: observation queries are the last n_win evaluated tokens, at positions win_pos[i];
     * win_attn[(h * n_win + i) * cap + slot] = softmax over the slots of kv-head h/group that query i
     * may see (pos <= win_pos[i]); 0 where it may not. */
    int32_t        n_win;
    const int32_t *win_pos;       /* [n_win], oldest first */
    const float   *win_attn;      /* [n_heads][n_win][cap] */
    const float   *win_q;         /* [n_win][n_heads][head_dim] post-RoPE queries */
    /* RK_NEED_ACC: acc[h * cap + slot] = Σ attention of query head h on the slot over all
     * queries since it was cached; acc_cnt[g * cap + slot] = how many queries saw it. */
    const float   *acc;
    const float   *acc_cnt;
    int32_t        budget;        /* tokens each kv-head keeps on average in this compression */
    int32_t        n_cached;      /* tokens cached per head before this compression (max over heads) */
} rk_policy_view;

typedef struct {
    const char *name;
    const char *help;         /* one line: what it keeps (tools' --help) */
    uint32_t    flags;        /* RK_POLICY_* */
    uint32_t    needs;        /* RK_NEED_* */
    const rk_param_def *params;
    int32_t     n_params;
    size_t      cfg_size;     /* bytes of the settings struct (0 = none) */
    /* (optional) checks beyond the table's ranges; an rk_fail message naming the parameter */
    rk_status (*validate)(const void *cfg);
    /* (optional) model data the policy needs, prepared when it is set (idempotent, thread-safe) */
    rk_status (*prepare)(rk_model *m, const void *cfg);
    /* scores[g * cap + slot] for g < n_kv_heads, slot < n_used[g]; higher = keep (EVICTS policies). */
    rk_status (*score)(const rk_policy_view *v, float *scores);
    /* (optional) keep[g] = tokens kv-head g keeps (default: budget each); the shared code clamps. */
    void (*allocate)(const rk_policy_view *v, const float *scores, int32_t *keep);
} rk_policy_i;

/* topk.c: keeps the k largest of a query's attention logits (k = topk, or
 * floor(topk_frac * visible) when topk is 0; ties at the threshold all stay),
 * setting the others to -inf. `tmp` has n_used floats. */
void rk_topk_mask(int32_t topk, float topk_frac, float *scores, int32_t n_used, float *tmp);

/* Shared scorers that several policies build on (defined in snapkv.c and restkv.c), with the
 * settings they read. */
typedef struct {
    int32_t kernel;     /* base pooling kernel k0 (odd) */
    float   ema_alpha;  /* EMA coefficient over the window queries */
    float   aws_beta;   /* adaptive pooling scale */
    /* ablation choices (restkv.c); 0 is the published method, so a struct whose table does not declare
     * them (AdaKV's, zeroed by calloc) scores as ReST-KV */
    int32_t restkv_distance;   /* wo | value | none */
    int32_t restkv_smoothing;  /* ema | mean | inv-ema | last */
    int32_t restkv_pooling;    /* adaptive | avgpool | maxpool | none */
    int32_t restkv_metric;     /* after | before */
} rk_restkv_cfg;
rk_status rk_snapkv_scores(const rk_policy_view *v, int32_t kernel, float *scores);
rk_status rk_restkv_scores(const rk_policy_view *v, const rk_restkv_cfg *c, float *scores);
rk_status rk_restkv_prepare(rk_model *m, const void *cfg);
/* a pooling kernel must be odd (snapkv, pyramidkv, adakv, restkv) */
rk_status rk_check_kernel(const char *policy, int32_t kernel);

/* registry.c */
int32_t            rk_policy_registry_size(void);
const rk_policy_i *rk_policy_at(int32_t i);
const rk_policy_i *rk_policy_lookup(const char *name);

#endif
