/* forward.c: the layer loop over a batch of tokens, written once for every architecture of arch.c's
 * table: it reads each layer's rk_layer_hparams and runs an optional piece only where the layer has
 * its tensor (NULL otherwise); the ops do the work. */
#include <string.h>

#include "ops.h"
#include "quant.h"
#include "repack.h"
#include "session.h"

static void embed(const rk_session *s, const int32_t *tokens, int n) {
    const rk_weight *e = &s->model->tok_embd;
    const rk_type_traits *tr = rk_get_type_traits(e->type);
    for (int t = 0; t < n; t++) {
        float *x = s->x + (size_t)t * e->n_in;
        if (e->packed) /* the file's rows were dropped from memory once repacked */
            rk_packed_row_to_float(e, tokens[t], x);
        else
            tr->to_float((const uint8_t *)e->data + (size_t)tokens[t] * e->row_bytes, x, e->n_in);
        /* the looked-up row, never the table: a tied output layer reads the table unscaled */
        if (s->model->embd_scale != 1.0f)
            for (int64_t i = 0; i < e->n_in; i++) x[i] *= s->model->embd_scale;
    }
}

/* a new slot's accumulated-attention statistics start at zero */
static void zero_stats(rk_session *s, int il, int g) {
    const rk_model *m = s->model;
    const size_t C = (size_t)s->n_ctx, group = (size_t)(m->n_heads / m->n_kv_heads);
    const int32_t sl = s->kv.n_used[rk_kv_head_index(&s->kv, il, g)] - 1;
    for (size_t h = (size_t)g * group; h < ((size_t)g + 1) * group; h++) s->acc[((size_t)il * m->n_heads + h) * C + sl] = 0;
    s->acc_cnt[((size_t)il * m->n_kv_heads + g) * C + sl] = 0;
}

static void add_rows(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* x[t][i] += b[i] for each of the n rows of width w */
static void add_bias(float *x, const float *b, int n, int w) {
    for (int t = 0; t < n; t++) add_rows(x + (size_t)t * w, b, (size_t)w);
}

/* the angles of positions pos0.. for hp's RoPE, into s->cos_sin [n][n_rot] */
static void rope_angles(rk_session *s, const rk_layer_hparams *hp, int32_t pos0, int n) {
    const rk_model *m = s->model;
    for (int t = 0; t < n; t++)
        rk_rope_angles(s->cos_sin + (size_t)t * m->n_rot, pos0 + t, hp->n_rot, hp->rope_base, hp->rope_freq_scale,
                       m->rope_freqs);
}

static int same_rope(const rk_layer_hparams *a, const rk_layer_hparams *b) {
    return a->rope_base == b->rope_base && a->rope_freq_scale == b->rope_freq_scale && a->n_rot == b->n_rot;
}

void rk_forward(rk_session *s, const int32_t *tokens, int n) {
    const rk_model *m = s->model;
    const int d = m->n_embd, hd = m->head_dim, dq = m->n_heads * hd, dkv = m->n_kv_heads * hd;
    const int32_t pos0 = s->next_pos;

    embed(s, tokens, n);
    /* the angles are computed again only when a layer's RoPE differs from the previous one's
     * (gemma3's local/global layers); llama computes them once, as before */
    const rk_layer_hparams *rope_hp = NULL;

    for (int il = 0; il < m->n_layers; il++) {
        const rk_layer *L = &m->layers[il];
        const rk_layer_hparams *hp = &L->hp;
        if (!rope_hp || !same_rope(rope_hp, hp)) rope_angles(s, rope_hp = hp, pos0, n);
        /* attention block. hp->n_swa, hp->attn_scale and per-layer head sizes: the loader refuses
         * files that need them (model.c check_implemented) until attention takes them. */
        rk_rmsnorm(s->xb, s->x, L->attn_norm, n, d, m->rms_eps);
        const rk_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *const qkv_out[3] = {s->q, s->k, s->v};
        if (L->wq.type == L->wk.type && L->wk.type == L->wv.type) {
            rk_matmul(s->pool, s->xb, n, qkv, qkv_out, 3, s->act);
        } else {
            for (int i = 0; i < 3; i++) rk_matmul(s->pool, s->xb, n, &qkv[i], &qkv_out[i], 1, s->act);
        }
        /* optional pieces before RoPE, in llama.cpp's order: biases, then per-head Q/K RMSNorm */
        if (L->bq) add_bias(s->q, L->bq, n, dq);
        if (L->bk) add_bias(s->k, L->bk, n, dkv);
        if (L->bv) add_bias(s->v, L->bv, n, dkv);
        if (L->q_norm) rk_rmsnorm(s->q, s->q, L->q_norm, n * m->n_heads, hd, m->rms_eps);
        if (L->k_norm) rk_rmsnorm(s->k, s->k, L->k_norm, n * m->n_kv_heads, hd, m->rms_eps);
        for (int t = 0; t < n; t++) {
            const float *cs = s->cos_sin + (size_t)t * m->n_rot;
            float *kt = s->k + (size_t)t * dkv, *vt = s->v + (size_t)t * dkv;
            rk_rope_apply(s->q + (size_t)t * dq, m->n_heads, hd, hp->n_rot, cs);
            rk_rope_apply(kt, m->n_kv_heads, hd, hp->n_rot, cs);
            for (int h = 0; h < m->n_kv_heads; h++) {
                rk_kv_append(&s->kv, il, h, pos0 + t, kt + (size_t)h * hd, vt + (size_t)h * hd);
                if (s->acc) zero_stats(s, il, h);
            }
        }
        rk_evict_record_queries(s, il, s->q, n, pos0);
        rk_attention(s, il, n, pos0);
        const rk_weight *wo = &L->wo;
        rk_matmul(s->pool, s->att, n, &wo, &s->proj, 1, s->act);
        if (L->bo) add_bias(s->proj, L->bo, n, d);
        if (L->post_attn_norm) rk_rmsnorm(s->proj, s->proj, L->post_attn_norm, n, d, m->rms_eps);
        add_rows(s->x, s->proj, (size_t)n * d);

        /* feed-forward block (the row's activation: check_implemented admits SwiGLU only so far) */
        rk_rmsnorm(s->xb, s->x, L->ffn_norm, n, d, m->rms_eps);
        if (L->w_gate.type == L->w_up.type) {
            rk_matmul_swiglu(s->pool, s->xb, n, &L->w_gate, &L->w_up, s->hb, s->hb2, s->act);
        } else {
            const rk_weight *gu[2] = {&L->w_gate, &L->w_up};
            float *const gu_out[2] = {s->hb, s->hb2};
            for (int i = 0; i < 2; i++) rk_matmul(s->pool, s->xb, n, &gu[i], &gu_out[i], 1, s->act);
            rk_swiglu(s->hb, s->hb2, (size_t)n * m->n_ff);
        }
        const rk_weight *wd = &L->w_down;
        rk_matmul(s->pool, s->hb, n, &wd, &s->proj, 1, s->act);
        if (L->post_ffn_norm) rk_rmsnorm(s->proj, s->proj, L->post_ffn_norm, n, d, m->rms_eps);
        add_rows(s->x, s->proj, (size_t)n * d);
    }
    rk_rmsnorm(s->xb, s->x, m->output_norm, n, d, m->rms_eps);
    memcpy(s->last_h, s->xb + (size_t)(n - 1) * d, (size_t)d * sizeof(float));
    s->n_past += n;
    s->next_pos += n;
}

void rk_logits(rk_session *s, const float *hidden, int n_rows, float *logits) {
    const rk_weight *w = &s->model->output;
    rk_matmul(s->pool, hidden, n_rows, &w, &logits, 1, s->act);
}
