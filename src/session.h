/* session.h: the mutable state behind rk_session (KV cache, scratch, thread pool). */
#ifndef RK_SESSION_H
#define RK_SESSION_H

#include "kv.h"
#include "model.h"
#include "threadpool.h"

struct rk_session {
    rk_model *model;
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
    float    *att_ws;   /* [n_threads][n_ctx + head_dim] per-thread scores and a V row */
    float    *logit_rows; /* [RK_LOGIT_BLOCK][n_vocab] */
    void     *act;      /* quantised activations for rk_matmul */
};

#define RK_LOGIT_BLOCK 32

/* Runs the transformer over tokens[0..n) (n <= n_batch) at positions n_past..,
 * appending their K/V to the cache; leaves the final-normed hidden states in
 * s->xb. The caller has validated tokens and capacity. */
void rk_forward(rk_session *s, const int32_t *tokens, int n);

/* logits[r][:] for rows hidden[r] (r < n_rows <= RK_LOGIT_BLOCK or n_batch) */
void rk_logits(rk_session *s, const float *hidden, int n_rows, float *logits);

/* Causal attention of n query tokens at positions pos0.. over layer il's cache. */
void rk_attention(rk_session *s, int il, int n, int32_t pos0);

#endif
