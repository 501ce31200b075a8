/* session.h: the mutable state behind rk_session (KV cache, scratch, thread pool). */
#ifndef RK_SESSION_H
#define RK_SESSION_H

#include <stdatomic.h>

#include "kv.h"
#include "model.h"
#include "policy.h"
#include "threadpool.h"

struct rk_session {
    rk_model *model;               /* retained: the weights outlive rk_model_free() while the session lives */
    atomic_int busy;               /* 1 while a call runs (rk_session_enter) */
    rk_pool  *pool;
    int32_t   n_ctx, n_batch, n_threads;
    rk_kv     kv;
    int32_t   n_past;
    /* scratch, sized for n_batch tokens */
    float    *x;        /* [n_batch][n_embd] residual stream */
    float    *xb;       /* [n_batch][n_embd] normed input of a block */
    float    *q;        /* [n_batch][n_heads*head_dim] */
    float    *k, *v;    /* [n_batch][n_kv_heads*head_dim] */
    float    *att;      /* [n_batch][n_heads*head_dim] attention output */
    float    *proj;     /* [n_batch][n_embd] output of attn_output / ffn_down */
    float    *hb, *hb2; /* [n_batch][n_ff] */
    float    *cos_sin;  /* [n_batch][n_rot] */
    float    *att_ws;   /* [n_threads][rk_attention_scratch_floats] per-thread scores and rows */
    float    *att_dec;  /* [n_heads][n_ctx + 1] one decoded token's scores, then 1/sum per head */
    float    *logit_rows; /* [RK_LOGIT_BLOCK][n_vocab] */
    void     *act;      /* quantised activations for rk_matmul */
    float    *last_h;   /* [n_embd] final-normed hidden state of the last evaluated token */

    /* KV eviction (evict.c) */
    rk_evict_shared    evict;      /* the shared settings (budget, schedule, window, ...) */
    const rk_policy_i *policy;     /* the policy set (flags say whether it evicts or masks attention) */
    void              *ev_cfg;     /* its settings struct (policy->cfg_size bytes), or NULL */
    int32_t   next_pos;            /* position of the next token (differs from n_past after a shift) */
    int32_t   topk;                /* "topk" sparse attention: > 0 = keep this many keys per query; */
    float     topk_frac;           /*   or this fraction of the visible keys (when topk == 0) */
    /* the last `window` evaluated tokens' post-RoPE queries, a ring per layer */
    int32_t   win;                 /* ring size (evict.window), 0 = not kept */
    float    *q_win;               /* [n_layers][win][n_heads*head_dim] */
    int32_t  *q_win_pos;           /* [win] */
    int32_t   q_win_head, q_win_n; /* next ring slot, valid entries */
    /* RK_NEED_ACC statistics, moved along with their slots on compaction */
    float    *acc;                 /* [n_layers][n_heads][n_ctx] attention received */
    float    *acc_cnt;             /* [n_layers][n_kv_heads][n_ctx] queries that saw the slot */
    /* scratch of compression */
    float    *ev_kv;               /* [2][n_kv_heads][n_ctx][head_dim] f32 keys and values of one layer */
    float    *ev_attn;             /* [n_heads][win][n_ctx] window attention */
    float    *ev_scores;           /* [n_kv_heads][n_ctx] */
    int32_t  *ev_idx;              /* [n_ctx] */
    uint8_t  *ev_keep;             /* [n_ctx] */
    float    *ev_qwin;             /* [win][n_heads*head_dim] window queries, oldest first */
};

#define RK_LOGIT_BLOCK 32

/* Every public call that reads or changes the session's state runs between these two:
 * a second thread gets RK_ERR_BUSY instead of two forward passes sharing one scratch and
 * cache (which crashed). `fn` names the call in the message. */
rk_status rk_session_enter(rk_session *s, const char *fn);
void      rk_session_leave(rk_session *s);

/* Runs the transformer over tokens[0..n) (n <= n_batch) at positions n_past..,
 * appending their K/V to the cache; leaves the final-normed hidden states in
 * s->xb. The caller has validated tokens and capacity. */
void rk_forward(rk_session *s, const int32_t *tokens, int n);

/* evict.c: the streaming schedule's bookkeeping around eval */
int32_t   rk_evict_max_used(const rk_session *s);
/* tokens the next forward may take without passing budget + slack (streaming schedule), or the free
 * slots; 0 when the cache is full (a streaming eviction failed) */
int32_t   rk_evict_room(const rk_session *s);
/* after a forward: evict down to the budget where a buffer holds more than budget + slack */
rk_status rk_evict_after_forward(rk_session *s);
/* records the queries of a forward's tokens (called by rk_forward per layer) */
void      rk_evict_record_queries(rk_session *s, int il, const float *q, int n, int32_t pos0);
/* 1 when the streaming schedule is evicting (eval then never runs out of slots) */
int       rk_evict_streaming(const rk_session *s);
void      rk_evict_free(rk_session *s);

/* logits[r][:] for rows hidden[r] (r < n_rows <= RK_LOGIT_BLOCK or n_batch) */
void rk_logits(rk_session *s, const float *hidden, int n_rows, float *logits);

/* Causal attention of n query tokens at positions pos0.. over layer il's cache. */
void rk_attention(rk_session *s, int il, int n, int32_t pos0);
/* query rows attention handles together (tokens x heads of a GQA group), and tokens per job */
#define RK_ATT_ROWS 16
#define RK_ATT_TOKENS 4
/* floats of attention scratch per thread */
size_t rk_attention_scratch_floats(int n_ctx, int head_dim);

#endif
