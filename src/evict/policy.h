/*
 * policy.h: the interface between eviction policies (one file each in src/evict/policies/) and the shared eviction code (evict.c).
 *
 * A policy only scores: for one layer it writes a score per (kv-head, slot),
 * higher = keep. The shared code turns scores into keep-sets: it protects the
 * sinks and the recent window the policy asks for, takes the top-scored rest up
 * to each head's budget (optionally reallocated across heads by the policy),
 * and compacts the buffers. The statistics a policy needs are prepared by the
 * shared code from the session (window attention recomputed from the buffered
 * queries of the last `window` tokens; accumulated attention kept by the
 * attention kernel when asked for).
 */
#ifndef RK_POLICY_H
#define RK_POLICY_H

#include <stdint.h>

#include "restkv.h"

enum {
    RK_NEED_WINDOW = 1 << 0, /* window attention: softmax of the last w queries over the layer's slots */
    RK_NEED_ACC    = 1 << 1, /* accumulated attention each slot received, and how many queries saw it */
};

typedef struct rk_session rk_session;

/* What a policy sees of one layer when scoring. Slots are those of each kv-head's
 * buffer, [0, n_used[g]). */
typedef struct {
    const rk_session      *s;
    const rk_evict_params *p;
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
    uint32_t    needs;        /* RK_NEED_* */
    int32_t     keep_window;  /* shared code keeps the newest `window` tokens (see evict.c for budgets < 2 w) */
    int32_t     keep_sinks;   /* shared code keeps the first n_sink positions */
    int32_t     keep_last;    /* shared code keeps the newest token */
    /* scores[g * cap + slot] for g < n_kv_heads, slot < n_used[g]; higher = keep. */
    rk_status (*score)(const rk_policy_view *v, float *scores);
    /* (optional) keep[g] = tokens kv-head g keeps (default: budget each); the shared code clamps. */
    void (*allocate)(const rk_policy_view *v, const float *scores, int32_t *keep);
} rk_policy_i;

/* topk.c: keeps the k largest of a query's attention logits (k = topk, or
 * floor(topk_frac * visible) when topk is 0; ties at the threshold all stay),
 * setting the others to -inf. `tmp` has n_used floats. */
void rk_topk_mask(int32_t topk, float topk_frac, float *scores, int32_t n_used, float *tmp);

/* Shared scorers that several policies build on (defined in snapkv.c and restkv.c). */
rk_status rk_snapkv_scores(const rk_policy_view *v, float *scores);
rk_status rk_restkv_scores(const rk_policy_view *v, float *scores);

/* registry.c */
const rk_policy_i *rk_policy_find(const char *name);

#endif
