/*
 * attention.c: softmax attention of a batch of queries over the per-head KV
 * buffers of one layer. A query at position p sees exactly the slots whose
 * stored position is <= p, wherever those slots are in the buffer.
 */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "session.h"

typedef struct {
    rk_session *s;
    int il, n;
    int32_t pos0;
} att_job;

static void attention_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    rk_session *s = j->s;
    const rk_model *m = s->model;
    const rk_kv *kv = &s->kv;
    const int hd = m->head_dim, group = m->n_heads / m->n_kv_heads, dq = m->n_heads * hd;
    const rk_type_traits *kt = rk_get_type_traits(kv->type);
    const size_t row = (size_t)hd * kv->elt_size;
    const float scale = 1.0f / sqrtf((float)hd);
    float *scores = s->att_ws + (size_t)ith * (size_t)(2 * s->n_ctx + hd);
    float *vrow = scores + s->n_ctx;
    long b, e;
    /* with accumulated statistics a thread owns whole heads (no two threads add to one slot) */
    const int by_head = s->acc != NULL;
    rk_split_range(by_head ? m->n_heads : (long)j->n * m->n_heads, ith, nth, 1, &b, &e);
    if (by_head) {
        b *= j->n;
        e *= j->n;
    }
    for (long job = b; job < e; job++) {
        const int t = by_head ? (int)(job % j->n) : (int)(job / m->n_heads);
        const int h = by_head ? (int)(job / j->n) : (int)(job % m->n_heads), g = h / group;
        const int32_t p = j->pos0 + t;
        const float *q = s->q + (size_t)t * dq + (size_t)h * hd;
        float *out = s->att + (size_t)t * dq + (size_t)h * hd;
        const uint8_t *K = rk_kv_k(kv, j->il, g), *V = rk_kv_v(kv, j->il, g);
        const int32_t *pos = rk_kv_pos(kv, j->il, g);
        const int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
        float mx = -INFINITY;
        for (int32_t sl = 0; sl < n_used; sl++) {
            if (pos[sl] > p) {
                scores[sl] = -INFINITY;
                continue;
            }
            float d;
            kt->vec_dot(hd, &d, K + (size_t)sl * row, q);
            scores[sl] = d * scale;
            if (scores[sl] > mx) mx = scores[sl];
        }
        if (s->topk || s->topk_frac > 0) rk_topk_mask(s->topk, s->topk_frac, scores, n_used, vrow + hd);
        double sum = 0.0;
        for (int32_t sl = 0; sl < n_used; sl++) {
            const float w = scores[sl] == -INFINITY ? 0.0f : expf(scores[sl] - mx);
            scores[sl] = w;
            sum += w;
        }
        const float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
        memset(out, 0, (size_t)hd * sizeof(float));
        if (s->acc) {
            float *acc = s->acc + ((size_t)j->il * m->n_heads + h) * (size_t)s->n_ctx;
            float *cnt = s->acc_cnt + ((size_t)j->il * m->n_kv_heads + g) * (size_t)s->n_ctx;
            for (int32_t sl = 0; sl < n_used; sl++) {
                if (pos[sl] > p) continue;
                acc[sl] += scores[sl] * inv;
                if (h % group == 0) cnt[sl] += 1.0f;
            }
        }
        for (int32_t sl = 0; sl < n_used; sl++) {
            const float w = scores[sl] * inv;
            if (w == 0.0f) continue;
            const float *vr;
            if (kv->type == RK_TYPE_F32) {
                vr = (const float *)(V + (size_t)sl * row);
            } else {
                kt->to_float(V + (size_t)sl * row, vrow, hd);
                vr = vrow;
            }
            for (int d = 0; d < hd; d++) out[d] += w * vr[d];
        }
    }
}

void rk_attention(rk_session *s, int il, int n, int32_t pos0) {
    att_job j = {s, il, n, pos0};
    rk_pool_run(s->pool, attention_task, &j);
}
