/* forward.c: the layer loop over a batch of tokens, written once for every architecture of arch.c's
 * table: it reads each layer's rk_layer_hparams and runs an optional piece only where the layer has
 * its tensor (NULL otherwise). Every operation is the backend's (backend.h); the eviction state is
 * told what it records (queries, new slots) and says where attention writes statistics. */
#include "session.h"

void rk_forward(rk_session *s, const int32_t *tokens, int n) {
    const rk_model *m = s->model;
    const rk_backend_i *be = s->be;
    rk_backend_ctx *c = s->bctx;
    rk_acts *a = &s->a;
    const int d = m->n_embd, hd = m->head_dim;
    const int32_t pos0 = s->next_pos;

    /* the looked-up rows are scaled, never the table: a tied output layer reads it unscaled */
    be->embed(c, &m->tok_embd, tokens, n, m->embd_scale, a->x);
    for (int il = 0; il < m->n_layers; il++) {
        const rk_layer *L = &m->layers[il];
        const rk_layer_hparams *hp = &L->hp;
        /* attention block. hp->n_swa, hp->attn_scale and per-layer head sizes: the loader refuses
         * files that need them (model.c check_implemented) until attention takes them. */
        be->rmsnorm(c, a->xb, a->x, L->attn_norm, n, d, m->rms_eps);
        const rk_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *const qkv_out[3] = {a->q, a->k, a->v};
        if (L->wq.type == L->wk.type && L->wk.type == L->wv.type) {
            be->matmul(c, a->xb, n, qkv, qkv_out, 3);
        } else {
            for (int i = 0; i < 3; i++) be->matmul(c, a->xb, n, &qkv[i], &qkv_out[i], 1);
        }
        /* optional pieces before RoPE, in llama.cpp's order: biases, then per-head Q/K RMSNorm */
        if (L->bq) be->add(c, a->q, L->bq, n, 1, m->n_heads * hd);
        if (L->bk) be->add(c, a->k, L->bk, n, 1, m->n_kv_heads * hd);
        if (L->bv) be->add(c, a->v, L->bv, n, 1, m->n_kv_heads * hd);
        if (L->q_norm) be->rmsnorm(c, a->q, a->q, L->q_norm, n * m->n_heads, hd, m->rms_eps);
        if (L->k_norm) be->rmsnorm(c, a->k, a->k, L->k_norm, n * m->n_kv_heads, hd, m->rms_eps);
        be->rope(c, a->q, n, m->n_heads, hd, pos0, hp, m->rope_freqs);
        be->rope(c, a->k, n, m->n_kv_heads, hd, pos0, hp, m->rope_freqs);
        be->kv_append(c, &s->kv, il, a->k, a->v, n, pos0);
        rk_evict_on_append(s, il, n);
        rk_evict_record_queries(s, il, a->q, n, pos0);
        const rk_attn_args att = {&s->kv, il, n, pos0, m->n_heads, hp->attn_scale, hp->n_swa, a->q, a->att,
                                  s->ev.topk, s->ev.topk_frac, rk_evict_stats_sink(s, il)};
        be->attention(c, &att);
        const rk_weight *wo = &L->wo;
        be->matmul(c, a->att, n, &wo, &a->proj, 1);
        if (L->bo) be->add(c, a->proj, L->bo, n, 1, d);
        if (L->post_attn_norm) be->rmsnorm(c, a->proj, a->proj, L->post_attn_norm, n, d, m->rms_eps);
        be->add(c, a->x, a->proj, n, n, d);

        /* feed-forward block: act(x W_gate) * (x W_up), then W_down; SwiGLU fused with its matmul */
        be->rmsnorm(c, a->xb, a->x, L->ffn_norm, n, d, m->rms_eps);
        if (m->arch->act == RK_ACT_GEGLU_TANH) {
            const rk_weight *gu[2] = {&L->w_gate, &L->w_up};
            float *const gu_out[2] = {a->hb, a->hb2};
            if (L->w_gate.type == L->w_up.type) be->matmul(c, a->xb, n, gu, gu_out, 2);
            else for (int i = 0; i < 2; i++) be->matmul(c, a->xb, n, &gu[i], &gu_out[i], 1);
            be->geglu(c, a->hb, a->hb2, (size_t)n * m->n_ff);
        } else if (L->w_gate.type == L->w_up.type) {
            be->matmul_swiglu(c, a->xb, n, &L->w_gate, &L->w_up, a->hb, a->hb2);
        } else {
            const rk_weight *gu[2] = {&L->w_gate, &L->w_up};
            float *const gu_out[2] = {a->hb, a->hb2};
            for (int i = 0; i < 2; i++) be->matmul(c, a->xb, n, &gu[i], &gu_out[i], 1);
            be->swiglu(c, a->hb, a->hb2, (size_t)n * m->n_ff);
        }
        const rk_weight *wd = &L->w_down;
        be->matmul(c, a->hb, n, &wd, &a->proj, 1);
        if (L->post_ffn_norm) be->rmsnorm(c, a->proj, a->proj, L->post_ffn_norm, n, d, m->rms_eps);
        be->add(c, a->x, a->proj, n, n, d);
    }
    be->rmsnorm(c, a->xb, a->x, m->output_norm, n, d, m->rms_eps);
    be->to_host(c, a->last_h, a->xb + (size_t)(n - 1) * d, (size_t)d);
    s->n_past += n;
    s->next_pos += n;
}

/* logits may be the caller's host buffer (rk_session_eval writes there directly) */
void rk_logits(rk_session *s, const float *hidden, int n_rows, float *logits) {
    const rk_weight *w = &s->model->output;
    s->be->matmul(s->bctx, hidden, n_rows, &w, &logits, 1);
    if (s->model->final_softcap > 0)
        s->be->softcap(s->bctx, logits, (size_t)n_rows * (size_t)s->model->n_vocab, s->model->final_softcap);
}
