/* session.h: a session = a model + a backend context + a KV cache + an eviction state, and the
 * activation buffers of one batch. Each part is its own module (backend.h, kv.h, evict_state.h);
 * this struct only holds them together. */
#ifndef RK_SESSION_H
#define RK_SESSION_H

#include <stdatomic.h>

#include "backend.h"
#include "evict_state.h"
#include "kv.h"
#include "model.h"

/* the activations of one batch of up to n_batch tokens (device buffers of the backend) */
typedef struct {
    float *x;          /* [n_batch][n_embd] residual stream */
    float *xb;         /* [n_batch][n_embd] normed input of a block; the final-normed states after a forward */
    float *q;          /* [n_batch][n_heads*head_dim] */
    float *k, *v;      /* [n_batch][n_kv_heads*head_dim] */
    float *att;        /* [n_batch][n_heads*head_dim] attention output */
    float *proj;       /* [n_batch][n_embd] output of attn_output / ffn_down */
    float *hb, *hb2;   /* [n_batch][n_ff] */
    float *logit_rows; /* [RK_LOGIT_BLOCK][n_vocab] */
    float *last_h;     /* [n_embd] final-normed hidden state of the last evaluated token */
} rk_acts;

struct rk_session {
    rk_model           *model;  /* retained: the weights outlive rk_model_free() while the session lives */
    atomic_int          busy;   /* 1 while a call runs (rk_session_enter) */
    const rk_backend_i *be;
    rk_backend_ctx     *bctx;
    int32_t             n_ctx, n_batch, n_threads;
    int32_t             n_past;
    int32_t             next_pos; /* position of the next token (differs from n_past after a shift) */
    rk_kv               kv;
    rk_acts             a;
    rk_evict_state      ev;
};

#define RK_LOGIT_BLOCK 32

/* Every public call that reads or changes the session's state runs between these two:
 * a second thread gets RK_ERR_BUSY instead of two forward passes sharing one scratch and
 * cache (which crashed). `fn` names the call in the message. */
rk_status rk_session_enter(rk_session *s, const char *fn);
void      rk_session_leave(rk_session *s);

/* forward.c: runs the transformer over tokens[0..n) (n <= n_batch) at positions next_pos..,
 * appending their K/V to the cache; leaves the final-normed hidden states in s->a.xb.
 * The caller has validated tokens and capacity. */
void rk_forward(rk_session *s, const int32_t *tokens, int n);
/* logits[r][:] for rows hidden[r] (r < n_rows <= RK_LOGIT_BLOCK or n_batch) */
void rk_logits(rk_session *s, const float *hidden, int n_rows, float *logits);

#endif
