/* evict_state.h: a session's eviction state (the policy set, its settings, the statistics it
 * needs, the scratch of compression) and the calls the session makes into evict.c. */
#ifndef RK_EVICT_STATE_H
#define RK_EVICT_STATE_H

#include <stdint.h>

#include "backend.h"
#include "policy.h"

typedef struct {
    rk_evict_shared    evict;      /* the shared settings (budget, schedule, window, ...) */
    const rk_policy_i *policy;     /* the policy set (flags say whether it evicts or masks attention) */
    void              *ev_cfg;     /* its settings struct (policy->cfg_size bytes), or NULL */
    int32_t   topk;                /* attention-mask policies: > 0 = keep this many keys per query; */
    float     topk_frac;           /*   or this fraction of the visible keys (when topk == 0) */
    /* the last `window` evaluated tokens' post-RoPE queries, a ring per layer (host memory) */
    int32_t   win;                 /* ring size (evict.window), 0 = not kept */
    float    *q_win;               /* [n_layers][win][n_heads*head_dim] */
    int32_t  *q_win_pos;           /* [win] */
    int32_t   q_win_head, q_win_n; /* next ring slot, valid entries */
    /* RK_NEED_ACC statistics, written by attention (rk_attn_stats), moved along with their slots */
    float    *acc;                 /* [n_layers][n_heads][n_ctx] attention received */
    float    *acc_cnt;             /* [n_layers][n_kv_heads][n_ctx] queries that saw the slot */
    /* scratch of compression */
    float    *ev_kv;               /* [2][n_kv_heads][n_ctx][head_dim] f32 keys and values of one layer */
    float    *ev_attn;             /* [n_heads][win][n_ctx] window attention */
    float    *ev_scores;           /* [n_kv_heads][n_ctx] */
    int32_t  *ev_idx;              /* [n_ctx] */
    uint8_t  *ev_keep;             /* [n_ctx] */
    float    *ev_qwin;             /* [win][n_heads*head_dim] window queries, oldest first */
} rk_evict_state;

/* the streaming schedule's bookkeeping around eval */
int32_t   rk_evict_max_used(const rk_session *s);
/* tokens the next forward may take without passing budget + slack (streaming schedule), or the free
 * slots; 0 when the cache is full (a streaming eviction failed) */
int32_t   rk_evict_room(const rk_session *s);
/* after a forward: evict down to the budget where a buffer holds more than budget + slack */
rk_status rk_evict_after_forward(rk_session *s);
/* 1 when the streaming schedule is evicting (eval then never runs out of slots) */
int       rk_evict_streaming(const rk_session *s);
/* sets the policy (validated, buffers allocated first: a failure leaves the state as it was) */
rk_status rk_evict_set(rk_session *s, const char *policy, const char *settings);
/* compresses the cache to the budget now (prefix schedule) */
rk_status rk_evict_compress(rk_session *s);
void      rk_evict_free(rk_evict_state *e);
void      rk_evict_reset(rk_evict_state *e);

/* what the forward pass tells the eviction state, per layer */
/* the queries of a forward's tokens (device buffer, [n][n_heads*head_dim]) */
void rk_evict_record_queries(rk_session *s, int il, const float *q, int n, int32_t pos0);
/* n tokens were appended to every kv-head of layer il: their statistics start at zero */
void rk_evict_on_append(rk_session *s, int il, int n);
/* where attention on layer il writes statistics (NULL pointers: none needed) */
rk_attn_stats rk_evict_stats_sink(rk_session *s, int il);

#endif
