/*
 * attention.c: softmax attention of a batch of queries over the per-head KV
 * buffers of one layer. A query at position p sees exactly the slots whose
 * stored position is <= p, wherever those slots are in the buffer.
 *
 * Work is cut into jobs of several query rows that share one kv-head (up to
 * RK_ATT_TOKENS tokens x the heads of a GQA group), so each K and V row is read
 * and converted to f32 once per job instead of once per query row. Every output
 * is computed with the same float operations in the same order as a one-row
 * loop would use (dot of the f32 key with the query, softmax, V rows added in
 * slot order), so the grouping changes speed, not results.
 */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "session.h"

typedef struct {
    rk_session *s;
    int il, n;
    int32_t pos0;
    int tokens, heads;        /* rows of a job: `tokens` query tokens x `heads` query heads */
    long n_tb, n_hb;          /* token blocks, head blocks per kv-head */
    int whole_heads;          /* accumulated statistics: a job owns one head for every token */
} att_job;

size_t rk_attention_scratch_floats(int n_ctx, int head_dim) {
    return (size_t)(RK_ATT_ROWS + 1) * (size_t)n_ctx + (size_t)(RK_ATT_ROWS + 2) * (size_t)head_dim + RK_ATT_ROWS;
}

/* rows r = (t - t0) * nh + (h - h0) for tokens [t0, t1) and query heads [h0, h0 + nh) of kv-head g */
static void attend_rows(const att_job *j, float *ws, int g, int h0, int nh, int t0, int t1) {
    rk_session *s = j->s;
    const rk_model *m = s->model;
    const rk_kv *kv = &s->kv;
    const int hd = m->head_dim, dq = m->n_heads * hd, group = m->n_heads / m->n_kv_heads;
    const size_t C = (size_t)s->n_ctx;
    const rk_type_traits *kt = rk_get_type_traits(kv->type);
    const rk_vec_dot_fn dot = rk_get_type_traits(RK_TYPE_F32)->vec_dot;
    const size_t row = (size_t)hd * kv->elt_size;
    const float scale = 1.0f / sqrtf((float)hd);
    const int R = (t1 - t0) * nh;
    float *scores = ws;                        /* [R][C] */
    float *tmp = ws + (size_t)RK_ATT_ROWS * C; /* [C] top-k scratch */
    float *kf = tmp + C, *vf = kf + hd;        /* [hd] each */
    float *inv = vf + hd;                      /* [R] */
    const uint8_t *K = rk_kv_k(kv, j->il, g), *V = rk_kv_v(kv, j->il, g);
    const int32_t *pos = rk_kv_pos(kv, j->il, g);
    const int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
    const int32_t p_last = j->pos0 + t1 - 1;

    for (int32_t sl = 0; sl < n_used; sl++) {
        if (pos[sl] > p_last) { /* after every query of the job */
            for (int r = 0; r < R; r++) scores[(size_t)r * C + sl] = -INFINITY;
            continue;
        }
        const float *k = (const float *)(K + (size_t)sl * row);
        if (kv->type != RK_TYPE_F32) {
            kt->to_float(K + (size_t)sl * row, kf, hd);
            k = kf;
        }
        for (int t = t0, r = 0; t < t1; t++) {
            const int vis = pos[sl] <= j->pos0 + t;
            for (int h = h0; h < h0 + nh; h++, r++) {
                float d = -INFINITY;
                if (vis) {
                    dot(hd, &d, k, s->q + (size_t)t * dq + (size_t)h * hd);
                    d *= scale;
                }
                scores[(size_t)r * C + sl] = d;
            }
        }
    }
    for (int t = t0, r = 0; t < t1; t++) {
        for (int h = h0; h < h0 + nh; h++, r++) {
            float *sc = scores + (size_t)r * C;
            float mx = -INFINITY;
            for (int32_t sl = 0; sl < n_used; sl++)
                if (sc[sl] > mx) mx = sc[sl];
            if (s->topk || s->topk_frac > 0) rk_topk_mask(s->topk, s->topk_frac, sc, n_used, tmp);
            double sum = 0.0;
            for (int32_t sl = 0; sl < n_used; sl++) {
                const float w = sc[sl] == -INFINITY ? 0.0f : expf(sc[sl] - mx);
                sc[sl] = w;
                sum += w;
            }
            inv[r] = sum > 0 ? (float)(1.0 / sum) : 0.0f;
            memset(s->att + (size_t)t * dq + (size_t)h * hd, 0, (size_t)hd * sizeof(float));
            if (s->acc) {
                const int32_t p = j->pos0 + t;
                float *acc = s->acc + ((size_t)j->il * m->n_heads + h) * C;
                float *cnt = s->acc_cnt + ((size_t)j->il * m->n_kv_heads + g) * C;
                for (int32_t sl = 0; sl < n_used; sl++) {
                    if (pos[sl] > p) continue;
                    acc[sl] += sc[sl] * inv[r];
                    if (h % group == 0) cnt[sl] += 1.0f;
                }
            }
        }
    }
    for (int32_t sl = 0; sl < n_used; sl++) {
        if (pos[sl] > p_last) continue;
        const float *v = NULL;
        for (int t = t0, r = 0; t < t1; t++) {
            for (int h = h0; h < h0 + nh; h++, r++) {
                const float w = scores[(size_t)r * C + sl] * inv[r];
                if (w == 0.0f) continue;
                if (!v) {
                    v = (const float *)(V + (size_t)sl * row);
                    if (kv->type != RK_TYPE_F32) {
                        kt->to_float(V + (size_t)sl * row, vf, hd);
                        v = vf;
                    }
                }
                float *out = s->att + (size_t)t * dq + (size_t)h * hd;
                for (int d = 0; d < hd; d++) out[d] += w * v[d];
            }
        }
    }
}

static void attention_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    rk_session *s = j->s;
    const rk_model *m = s->model;
    const int group = m->n_heads / m->n_kv_heads;
    float *ws = s->att_ws + (size_t)ith * rk_attention_scratch_floats(s->n_ctx, m->head_dim);
    long b, e;
    if (j->whole_heads) { /* job = one query head, all tokens, in blocks */
        rk_split_range(m->n_heads, ith, nth, 1, &b, &e);
        for (long h = b; h < e; h++)
            for (int t0 = 0; t0 < j->n; t0 += RK_ATT_ROWS) {
                const int t1 = t0 + RK_ATT_ROWS < j->n ? t0 + RK_ATT_ROWS : j->n;
                attend_rows(j, ws, (int)h / group, (int)h, 1, t0, t1);
            }
        return;
    }
    /* job = (kv-head, head block, token block) */
    rk_split_range((long)m->n_kv_heads * j->n_hb * j->n_tb, ith, nth, 1, &b, &e);
    for (long job = b; job < e; job++) {
        const int tb = (int)(job % j->n_tb), hb = (int)(job / j->n_tb % j->n_hb), g = (int)(job / j->n_tb / j->n_hb);
        const int h0 = g * group + hb * j->heads;
        const int nh = h0 + j->heads <= (g + 1) * group ? j->heads : (g + 1) * group - h0;
        const int t0 = tb * j->tokens, t1 = t0 + j->tokens < j->n ? t0 + j->tokens : j->n;
        attend_rows(j, ws, g, h0, nh, t0, t1);
    }
}

void rk_attention(rk_session *s, int il, int n, int32_t pos0) {
    const rk_model *m = s->model;
    const int group = m->n_heads / m->n_kv_heads;
    att_job j = {s, il, n, pos0, 1, 1, 0, 0, s->acc != NULL};
    if (n >= RK_ATT_TOKENS) { /* prefill: share each K/V row among tokens and the group's heads */
        j.heads = group * RK_ATT_TOKENS <= RK_ATT_ROWS ? group : (RK_ATT_ROWS / RK_ATT_TOKENS > 0 ? RK_ATT_ROWS / RK_ATT_TOKENS : 1);
        j.tokens = RK_ATT_ROWS / j.heads < RK_ATT_TOKENS ? RK_ATT_ROWS / j.heads : RK_ATT_TOKENS;
    } /* decode and short batches: one row a job, so the threads split the heads evenly */
    j.n_tb = (n + j.tokens - 1) / j.tokens;
    j.n_hb = (group + j.heads - 1) / j.heads;
    rk_pool_run(s->pool, attention_task, &j);
}
